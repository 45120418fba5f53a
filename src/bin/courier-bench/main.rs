//! courier-bench: courier's load generator. A mio client that speaks WebSocket through the
//! crate's own sans-IO codec (`courier::ws`), one poll loop per thread.
//!
//! Modes are subcommands, one module each; `client` (connecting, handshaking, writing)
//! and `stats` (histogram, progress, output) are shared by all of them.

mod args;
mod client;
mod connect;
mod echo;
mod fanout;
mod health;
mod im;
mod imclient;
mod ledger;
mod soak;
mod stats;
mod svg;

const USAGE: &str = "usage: courier-bench MODE [FLAGS]

modes:
  echo      C connections x S-byte messages, D in flight each, against an echo server:
            msg/s, MB/s, round-trip p50/p99/p99.9/max
  connect   N connections opened at R/s, held idle for D s, closed: handshake latency
            p50/p99/max, failures by kind, drops, server RSS per connection (--server-pid);
            with --jwt-secret, authenticated IM connections (user u0, u1, ...)
  im        U IM users (tokens from --jwt-secret), 1:1 traffic at a paced rate or as fast
            as possible, every push acked: durable msg/s, send -> sent and send ->
            recipient p50/p99/p99.9/max, then an exactly-once, gap-free check
            (run the server with a high --rate, e.g. courier serve --rate 100000)
  fanout    a group of G members, all connected, S of them sending to it, every push
            acked: deliveries/s, sends/s, send -> delivery p50/p99/p99.9/max, then the
            same exactly-once, gap-free check (run the server with a high --rate)
  soak      a bounded soak on loopback: users that churn their connections, send, sync
            and change groups beside a few abusive clients; every acknowledged message
            must be in its inboxes once at the end, and (with --server-pid) the server's
            RSS, open files and WAL must stop growing (scripts/soak.sh runs it)

courier-bench MODE --help lists a mode's flags with their defaults.
Exit status: 0 ok, 1 the run failed (cannot connect, handshake rejected, fd limit, a wrong
or missing echo, a lost or dropped connection, a lost or duplicated IM message), 2 bad
command line.
";

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let code = match argv.first().map(String::as_str) {
        Some("echo") => echo::main(&argv[1..]),
        Some("connect") => connect::main(&argv[1..]),
        Some("im") => im::main(&argv[1..]),
        Some("fanout") => fanout::main(&argv[1..]),
        Some("soak") => soak::main(&argv[1..]),
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            0
        }
        Some(other) => {
            eprintln!("courier-bench: unknown mode {other:?}\n\n{USAGE}");
            2
        }
        None => {
            eprint!("{USAGE}");
            2
        }
    };
    std::process::exit(code);
}
