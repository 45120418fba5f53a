//! Command line → configuration → run. Nothing else lives here.

use std::io::Write;
use std::process::ExitCode;

use courier::config::{self, NetConfig, Parsed, NET_FLAGS};

const USAGE: &str = "\
courier: a single-binary instant-messaging server

usage:
  courier echo [flags]     WebSocket echo server (benchmark target: every data message comes back)
  courier serve [flags]    the IM server (not built yet: it arrives with the IM delivery core)
  courier --version

`courier echo --help` lists every flag with its default.";

const ECHO_USAGE: &str = "\
usage: courier echo [flags]

Echoes every WebSocket data message with its opcode on any path; answers pings; prints
`listening on ADDR` once it accepts connections; on SIGTERM/SIGINT closes every
connection with 1001 and exits 0 (a second signal exits at once).";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, rest) = match args.split_first() {
        Some((first, rest)) if !first.starts_with('-') => (first.as_str(), rest),
        _ => ("serve", &args[..]),
    };
    let result = match command {
        "echo" => echo(rest),
        "serve" if rest.iter().any(|a| a == "--version" || a == "-V") => {
            println!("courier {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        "serve" if rest.iter().any(|a| a == "--help" || a == "-h") => {
            println!("{USAGE}");
            Ok(())
        }
        "serve" | "token" => Err(format!(
            "`courier {command}` is not built yet: this build has the WebSocket foundation only; try `courier echo`"
        )),
        other => Err(format!("unknown command '{other}'\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("courier: {message}");
            ExitCode::from(2)
        }
    }
}

fn echo(args: &[String]) -> Result<(), String> {
    let env = |name: &str| std::env::var(name).ok();
    let values = match config::parse(args, &[NET_FLAGS], &env)? {
        Parsed::Help => {
            println!("{}", config::help(ECHO_USAGE, &[NET_FLAGS]));
            return Ok(());
        }
        Parsed::Run(values, positional) => {
            if let Some(extra) = positional.first() {
                return Err(format!("unexpected argument '{extra}'"));
            }
            values
        }
    };
    let open_files = courier::net::raise_open_file_limit()
        .map_err(|e| format!("reading the open-file limit: {e}"))?;
    let config = NetConfig::from_values(&values, open_files)?;
    let listen = config.listen;
    courier::net::run(config, |_| Ok(courier::echo::Echo), |addr| {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "listening on {addr}");
        let _ = stdout.flush();
    })
    .map_err(|e| format!("echo on {listen}: {e}"))
}
