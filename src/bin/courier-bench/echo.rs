//! `courier-bench echo`: C connections each keep D messages of S bytes in flight against
//! an echo server, for a warmup and then T measured seconds; reports echoes per second,
//! payload throughput and round-trip percentiles, and checks every echo.
//!
//! Per connection the loop is the server's own, mirrored: on each wake-up read until the
//! socket is drained, decode every complete frame in place, answer each echo with the next
//! message, then write everything queued with one `write`. Nothing is allocated per
//! message: one read buffer per thread (the `Conn` keeps any partial frame itself), one
//! output buffer per connection that keeps its capacity, and a payload template whose tag
//! bytes are rewritten for each message.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use courier::ws::conn::Event;
use courier::ws::frame::{close_code, OpCode};
use mio::event::Event as MioEvent;
use mio::{Events, Poll};

use crate::args::{self, Flag};
use crate::client::{self, Client, Plan, SetupError, Target};
use crate::stats::{self, Histogram, Live, LiveSnapshot, Progress};

pub const FLAGS: &[Flag] = &[
    Flag {
        name: "url",
        arg: "URL",
        default: "ws://127.0.0.1:8080/",
        help: "echo server to connect to (ws://HOST:PORT/PATH)",
    },
    Flag {
        name: "connections",
        arg: "C",
        default: "100",
        help: "connections, all opened and handshaken before the clock starts",
    },
    Flag {
        name: "size",
        arg: "S",
        default: "20",
        help: "payload bytes per message (20, 1KiB, 16KiB, ...)",
    },
    Flag {
        name: "depth",
        arg: "D",
        default: "1",
        help: "messages in flight per connection (pipelined)",
    },
    Flag {
        name: "seconds",
        arg: "T",
        default: "10",
        help: "measured duration",
    },
    Flag {
        name: "warmup",
        arg: "W",
        default: "1",
        help: "seconds of load before measuring (not counted)",
    },
    Flag {
        name: "threads",
        arg: "N",
        default: "1",
        help: "client threads, each with its own poll and its share of the connections",
    },
    Flag {
        name: "binary",
        arg: "",
        default: "",
        help: "send binary messages (default: text)",
    },
    Flag {
        name: "json",
        arg: "",
        default: "",
        help: "print the result as one JSON object line instead of a table",
    },
];

const ABOUT: &str = "\
Echo load: every connection keeps D messages of S bytes in flight; each echo that comes back
is checked (length, opcode, sequence tag, tail bytes), timed, and answered with the next
message. Reports echoes/s, MB/s of echoed payload (one way), round-trip p50/p99/p99.9/max in
microseconds, errors and lost connections. Exits 1 on any wrong or missing echo, a lost
connection or a setup failure; 2 on bad flags.";

/// One thread's read buffer: big enough that a busy connection is drained in few reads.
const READ_BUF: usize = 256 << 10;
/// How long the end-of-run close handshake may take before sockets are just dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// An echo outstanding this long at the end of the run counts as lost (half the run when
/// that is shorter, so a one-second smoke test still catches it).
const STALL: Duration = Duration::from_secs(1);
/// Longest poll sleep, so counters are published and the end is noticed on an idle run.
const MAX_POLL: Duration = Duration::from_millis(100);

struct Opts {
    target: Target,
    connections: usize,
    size: usize,
    depth: usize,
    seconds: Duration,
    warmup: Duration,
    threads: usize,
    binary: bool,
    json: bool,
}

fn opts(values: &args::Values) -> Result<Opts, String> {
    let connections = values.count("connections", 1)?;
    let seconds = values.duration("seconds")?;
    if seconds.is_zero() {
        return Err("--seconds must be above 0".into());
    }
    Ok(Opts {
        target: Target::parse(values.get("url"))?,
        connections,
        size: values.size("size")?,
        depth: values.count("depth", 1)?,
        seconds,
        warmup: values.duration("warmup")?,
        threads: values.count("threads", 1)?.min(connections),
        binary: values.switch("binary"),
        json: values.switch("json"),
    })
}

/// Entry point; returns the process exit code.
pub fn main(argv: &[String]) -> i32 {
    let opts = match args::options("echo", ABOUT, FLAGS, argv, opts) {
        Ok(opts) => opts,
        Err(code) => return code,
    };
    // One descriptor per connection, plus an epoll fd per thread and stdio.
    if let Err(e) =
        client::ensure_fd_limit((opts.connections + 16 + 2 * opts.threads) as libc::rlim_t)
    {
        eprintln!("courier-bench echo: {e}");
        return 1;
    }
    run(&opts)
}

/// State every thread shares: the start barrier, the abort flag and the first setup error.
struct Shared {
    barrier: Barrier,
    abort: AtomicBool,
    setup_error: Mutex<Option<String>>,
    live: Vec<Live>,
}

impl Shared {
    fn fail(&self, msg: String) {
        let mut first = self.setup_error.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert(msg);
        self.abort.store(true, Ordering::Relaxed);
    }
}

/// What one thread measured.
#[derive(Default)]
struct Totals {
    hist: Histogram,
    /// Echoes received in the measured window, and their payload bytes.
    messages: u64,
    bytes: u64,
    /// Echoes received at any time (warmup included) and their round-trip sum: progress.
    all: u64,
    rtt_sum_ns: u64,
    /// Wrong echoes, echoes that never came back, and protocol errors.
    errors: u64,
    /// Connections that ended before the run did, for any reason.
    lost: u64,
    open: u64,
    /// Connections whose close handshake had not finished `CLOSE_WAIT` after the run.
    unclosed: u64,
    first_problem: Option<String>,
    /// Measured window, in nanoseconds since the thread's start.
    from_ns: u64,
    to_ns: u64,
}

impl Totals {
    fn problem(&mut self, what: String) {
        self.first_problem.get_or_insert(what);
    }

    fn snapshot(&self) -> LiveSnapshot {
        LiveSnapshot {
            messages: self.all,
            rtt_sum_ns: self.rtt_sum_ns,
            errors: self.errors,
            open: self.open,
            lost: self.lost,
        }
    }

    fn merge(&mut self, o: &Totals) {
        self.hist.merge(&o.hist);
        self.messages += o.messages;
        self.bytes += o.bytes;
        self.all += o.all;
        self.errors += o.errors;
        self.lost += o.lost;
        self.open += o.open;
        self.unclosed += o.unclosed;
        if self.first_problem.is_none() {
            self.first_problem.clone_from(&o.first_problem);
        }
    }
}

fn run(opts: &Opts) -> i32 {
    let shared = Shared {
        barrier: Barrier::new(opts.threads + 1),
        abort: AtomicBool::new(false),
        setup_error: Mutex::new(None),
        live: (0..opts.threads).map(|_| Live::default()).collect(),
    };
    let mut progress = Progress::new();
    progress.line(&format!(
        "connecting {} connections to {} ({})...",
        opts.connections, opts.target.url, opts.target.addr
    ));
    let total = opts.warmup + opts.seconds;
    let mut sum = Totals::default();
    let setup_start = Instant::now();
    let mut setup_time = Duration::ZERO;
    std::thread::scope(|scope| {
        let shared = &shared;
        let handles: Vec<_> = (0..opts.threads)
            .map(|i| {
                // Connections split as evenly as possible; thread i takes the i-th share.
                let count = opts.connections / opts.threads
                    + usize::from(i < opts.connections % opts.threads);
                std::thread::Builder::new()
                    .name(format!("echo-{i}"))
                    .spawn_scoped(scope, move || worker(i, count, opts, shared))
                    .expect("spawn a bench thread")
            })
            .collect();
        shared.barrier.wait();
        if !shared.abort.load(Ordering::Relaxed) {
            let t0 = Instant::now();
            setup_time = t0 - setup_start;
            let mut last = LiveSnapshot::default();
            let mut last_at = t0;
            let mut tick = 1u32;
            loop {
                let at = (t0 + Duration::from_secs(u64::from(tick))).min(t0 + total);
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                let now_snap = Live::sum(&shared.live);
                let now = Instant::now();
                progress.line(&progress_line(
                    opts,
                    now - t0,
                    &last,
                    &now_snap,
                    now - last_at,
                ));
                last = now_snap;
                last_at = now;
                if at >= t0 + total || handles.iter().all(|h| h.is_finished()) {
                    break;
                }
                tick += 1;
            }
        }
        for h in handles {
            let t = h.join().expect("bench thread");
            sum.merge(&t);
        }
    });
    progress.finish();

    if let Some(e) = shared
        .setup_error
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
    {
        eprintln!("courier-bench echo: {e}");
        return 1;
    }
    report(opts, &sum, setup_time);
    if let Some(p) = &sum.first_problem {
        eprintln!("courier-bench echo: first problem: {p}");
    }
    if sum.errors > 0 || sum.lost > 0 {
        return 1;
    }
    if sum.messages == 0 {
        eprintln!("courier-bench echo: no echo came back during the measured window");
        return 1;
    }
    0
}

fn progress_line(
    opts: &Opts,
    elapsed: Duration,
    a: &LiveSnapshot,
    b: &LiveSnapshot,
    dt: Duration,
) -> String {
    let msgs = b.messages - a.messages;
    let secs = dt.as_secs_f64().max(1e-9);
    let rate = msgs as f64 / secs;
    let mean = (b.rtt_sum_ns - a.rtt_sum_ns)
        .checked_div(msgs)
        .map_or(0.0, stats::us);
    // The phase the interval began in: the line at 1.0 s reports the first second.
    let phase = if elapsed.saturating_sub(dt) < opts.warmup {
        "warmup"
    } else {
        "measure"
    };
    format!(
        "{:>6.1}s {phase:<7} {:>12} msg/s {:>9.2} MB/s  rtt mean {:>9.1} us  open {}/{}  errors {}",
        elapsed.as_secs_f64(),
        stats::grouped(rate as u64),
        rate * opts.size as f64 / 1e6,
        mean,
        b.open,
        opts.connections,
        b.errors,
    )
}

fn report(opts: &Opts, t: &Totals, setup: Duration) {
    let secs = opts.seconds.as_secs_f64();
    let rate = t.messages as f64 / secs;
    let mb = t.bytes as f64 / secs / 1e6;
    let h = &t.hist;
    let (p50, p99, p999, max) = (
        h.quantile(0.50),
        h.quantile(0.99),
        h.quantile(0.999),
        h.max(),
    );
    if opts.json {
        println!(
            "{{\"mode\":\"echo\",\"url\":{},\"connections\":{},\"size\":{},\"depth\":{},\"seconds\":{},\
             \"warmup\":{},\"threads\":{},\"binary\":{},\"messages\":{},\"msgs_per_sec\":{:.1},\
             \"mb_per_sec\":{:.3},\"messages_total\":{},\"rtt_us\":{{\"p50\":{:.1},\"p99\":{:.1},\"p999\":{:.1},\"max\":{:.1}}},\
             \"errors\":{},\"lost_connections\":{}}}",
            stats::json_str(&opts.target.url),
            opts.connections,
            opts.size,
            opts.depth,
            secs,
            opts.warmup.as_secs_f64(),
            opts.threads,
            opts.binary,
            t.messages,
            rate,
            mb,
            t.all,
            stats::us(p50),
            stats::us(p99),
            stats::us(p999),
            stats::us(max),
            t.errors,
            t.lost,
        );
        return;
    }
    let kind = if opts.binary { "binary" } else { "text" };
    let threads = if opts.threads == 1 {
        "thread"
    } else {
        "threads"
    };
    println!(
        "courier-bench echo  {} ({})",
        opts.target.url, opts.target.addr
    );
    println!(
        "  {} connections x {} B {kind}, depth {}, {} {threads}; all open in {:.2} s; warmup {} s, measured {} s",
        opts.connections,
        opts.size,
        opts.depth,
        opts.threads,
        setup.as_secs_f64(),
        opts.warmup.as_secs_f64(),
        secs
    );
    println!();
    println!(
        "  messages       {:>14}   echoes received in the measured window",
        stats::grouped(t.messages)
    );
    println!(
        "  msg/s          {:>14}",
        stats::grouped(rate.round() as u64)
    );
    println!("  MB/s           {mb:>14.2}   echoed payload received (one way), 10^6 B/s");
    println!("  rtt p50        {:>14.1}   us", stats::us(p50));
    println!("  rtt p99        {:>14.1}   us", stats::us(p99));
    println!("  rtt p99.9      {:>14.1}   us", stats::us(p999));
    println!("  rtt max        {:>14.1}   us", stats::us(max));
    println!(
        "  errors         {:>14}   wrong, missing or undecodable echoes",
        t.errors
    );
    println!(
        "  lost           {:>14}   connections ended before the run did (of {})",
        t.lost, opts.connections
    );
    if t.unclosed > 0 {
        println!(
            "  unclosed       {:>14}   no close frame back within {} s of ours (not counted as errors)",
            t.unclosed,
            CLOSE_WAIT.as_secs()
        );
    }
}

/// The payload every message carries: ASCII letters (valid UTF-8 for text messages) with
/// a sequence tag in the first min(S, 8) bytes, 4 bits of the sequence number per byte as
/// a hex digit. Echoes preserve order, so each connection expects its tags in sequence;
/// the send instants live in a ring of D slots beside it.
struct Template {
    opcode: OpCode,
    binary: bool,
    payload: Vec<u8>,
    tag_len: usize,
    /// Bytes at the end compared with what was sent: catches truncation and misalignment
    /// without a full compare of large payloads.
    tail_len: usize,
    depth: usize,
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl Template {
    fn new(size: usize, depth: usize, binary: bool) -> Template {
        let tag_len = size.min(8);
        Template {
            opcode: if binary { OpCode::Binary } else { OpCode::Text },
            binary,
            payload: (0..size).map(|i| b'a' + (i % 26) as u8).collect(),
            tag_len,
            tail_len: (size - tag_len).min(8),
            depth,
        }
    }

    #[inline]
    fn tag(&self, seq: u64) -> [u8; 8] {
        let mut tag = [0u8; 8];
        for (i, b) in tag[..self.tag_len].iter_mut().enumerate() {
            *b = HEX[((seq >> (4 * (self.tag_len - 1 - i))) & 15) as usize];
        }
        tag
    }

    #[inline]
    fn send(&mut self, f: &mut Flow, now: u64) {
        let tag = self.tag(f.sent);
        self.payload[..self.tag_len].copy_from_slice(&tag[..self.tag_len]);
        f.client
            .ws
            .send(self.opcode, &self.payload, &mut f.client.out);
        f.sent_at[f.sent as usize % self.depth] = now;
        f.sent += 1;
    }

    /// Is `p` the echo of message `seq`? Formats a reason only on failure.
    #[inline]
    fn check(&self, p: &[u8], binary: bool, seq: u64, sent: u64) -> Result<(), String> {
        if seq >= sent {
            return Err(format!(
                "a message arrived with none in flight ({} bytes)",
                p.len()
            ));
        }
        if binary != self.binary {
            let kind = |b| if b { "binary" } else { "text" };
            return Err(format!(
                "message #{seq} sent as {} came back as {}",
                kind(self.binary),
                kind(binary)
            ));
        }
        let size = self.payload.len();
        if p.len() != size {
            return Err(format!(
                "message #{seq} of {size} bytes came back with {} bytes",
                p.len()
            ));
        }
        let tag = self.tag(seq);
        if p[..self.tag_len] != tag[..self.tag_len] {
            return Err(format!(
                "expected the echo of message #{seq} (tag {:?}), got tag {:?}: lost or reordered",
                String::from_utf8_lossy(&tag[..self.tag_len]),
                String::from_utf8_lossy(&p[..self.tag_len])
            ));
        }
        if p[size - self.tail_len..] != self.payload[size - self.tail_len..] {
            return Err(format!(
                "message #{seq}: the echoed payload differs from what was sent"
            ));
        }
        Ok(())
    }
}

/// One connection's echo state.
struct Flow {
    client: Client,
    /// Send instants (ns since the thread's start) of the messages in flight, by sequence
    /// number modulo depth.
    sent_at: Box<[u64]>,
    sent: u64,
    received: u64,
}

/// How handling a connection's input ended.
enum Outcome {
    Open,
    /// The close handshake finished (or the socket ended) after we asked to close.
    Done,
    /// The connection ended before the run did: closed, reset, or failed a read or write.
    Lost(String),
    /// A wrong echo or a protocol error; the connection is closed.
    Error(String),
}

/// Nanoseconds since the thread's start: the time base of every stamp.
struct Clock(Instant);

impl Clock {
    #[inline]
    fn now(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

fn worker(index: usize, count: usize, opts: &Opts, shared: &Shared) -> Totals {
    let mut t = Totals::default();
    let setup = (|| -> Result<(Poll, Vec<Client>), SetupError> {
        let mut poll = Poll::new().map_err(|e| SetupError::Failed(format!("epoll_create: {e}")))?;
        let mut events = Events::with_capacity(64);
        let mut rbuf = vec![0u8; 16 << 10];
        let plan = Plan {
            target: &opts.target,
            count,
            max_message: opts.size + 1024,
            seed: (index as u32).wrapping_mul(0x85EB_CA6B) ^ 0x2545_F491,
            token: None,
        };
        let clients = client::establish(&mut poll, &mut events, &plan, &shared.abort, &mut rbuf)?;
        Ok((poll, clients))
    })();
    let (mut poll, clients) = match setup {
        Ok(s) => s,
        Err(e) => {
            if let SetupError::Failed(msg) = e {
                shared.fail(msg);
            }
            shared.barrier.wait();
            return t;
        }
    };
    shared.barrier.wait();
    if shared.abort.load(Ordering::Relaxed) {
        return t;
    }

    let clock = Clock(Instant::now());
    t.from_ns = opts.warmup.as_nanos() as u64;
    t.to_ns = (opts.warmup + opts.seconds).as_nanos() as u64;
    let live = &shared.live[index];
    let mut events = Events::with_capacity(1024);
    let mut rbuf = vec![0u8; READ_BUF];
    let mut tmpl = Template::new(opts.size, opts.depth, opts.binary);
    let mut flows: Vec<Option<Flow>> = clients
        .into_iter()
        .map(|client| {
            Some(Flow {
                client,
                sent_at: vec![0; opts.depth].into_boxed_slice(),
                sent: 0,
                received: 0,
            })
        })
        .collect();
    t.open = flows.len() as u64;

    // Start: frame bytes that arrived behind a handshake response first, then D messages
    // on every connection.
    for slot in flows.iter_mut() {
        let f = slot.as_mut().expect("all open");
        let now = clock.now();
        let mut pending = std::mem::take(&mut f.client.pending);
        let mut outcome = feed(f, &mut pending, &mut tmpl, &mut t, now, true);
        if matches!(outcome, Outcome::Open) {
            for _ in 0..opts.depth {
                tmpl.send(f, now);
            }
            if let Err(e) = f.client.flush() {
                outcome = Outcome::Lost(format!("write: {e}"));
            }
        }
        settle(slot, outcome, &mut t);
    }

    // The measured run.
    loop {
        let now = clock.now();
        if now >= t.to_ns {
            break;
        }
        live.publish(t.snapshot());
        let timeout = Duration::from_nanos(t.to_ns - now).min(MAX_POLL);
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            t.problem(format!("epoll: {e}"));
            t.errors += 1;
            break;
        }
        for event in events.iter() {
            let Some(slot) = flows.get_mut(event.token().0) else {
                continue;
            };
            let Some(f) = slot.as_mut() else {
                continue;
            };
            let outcome = on_event(f, event, &mut rbuf, &mut tmpl, &mut t, &clock, true);
            settle(slot, outcome, &mut t);
        }
    }

    // An echo still missing long after its message went out was lost (or the server is
    // stuck); at depth 1 that connection simply went quiet, so look for it explicitly.
    let now = clock.now();
    let stall = (t.to_ns / 2).min(STALL.as_nanos() as u64);
    for f in flows.iter().flatten() {
        if f.received < f.sent {
            let age = now.saturating_sub(f.sent_at[f.received as usize % opts.depth]);
            if age > stall {
                t.errors += 1;
                t.problem(format!(
                    "no echo of message #{} after {:.2} s: lost by the server, or the server stalled",
                    f.received,
                    age as f64 / 1e9
                ));
            }
        }
    }

    // Close: a close frame on every open connection, then wait (bounded) for the server's
    // close or end of stream. Echoes still in flight are dropped by the Conn (§5.5.1).
    for slot in flows.iter_mut() {
        if let Some(f) = slot.as_mut() {
            f.client.ws.close(close_code::NORMAL, "", &mut f.client.out);
            if f.client.flush().is_err() {
                *slot = None;
                t.open -= 1;
            }
        }
    }
    let deadline = Instant::now() + CLOSE_WAIT;
    while t.open > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        if poll.poll(&mut events, Some(left)).is_err() {
            break;
        }
        for event in events.iter() {
            let Some(slot) = flows.get_mut(event.token().0) else {
                continue;
            };
            let Some(f) = slot.as_mut() else {
                continue;
            };
            if !matches!(
                on_event(f, event, &mut rbuf, &mut tmpl, &mut t, &clock, false),
                Outcome::Open
            ) {
                *slot = None;
                t.open -= 1;
            }
        }
    }
    // Whatever is left did not finish the close handshake in time; dropping closes it.
    t.unclosed = t.open;
    live.publish(t.snapshot());
    t
}

/// Books a connection's outcome during the run; a connection that ended is dropped (which
/// closes its socket and takes it out of the poll set).
fn settle(slot: &mut Option<Flow>, outcome: Outcome, t: &mut Totals) {
    match outcome {
        Outcome::Open => return,
        Outcome::Done => {}
        Outcome::Lost(why) => {
            t.lost += 1;
            t.problem(why);
        }
        Outcome::Error(why) => {
            t.errors += 1;
            t.lost += 1;
            t.problem(why);
        }
    }
    *slot = None;
    t.open -= 1;
}

/// One readiness event: read until drained, feeding every chunk to the codec, then write
/// what that queued (echo replies, a pong, a close) with one `write`.
#[inline]
fn on_event(
    f: &mut Flow,
    event: &MioEvent,
    rbuf: &mut [u8],
    tmpl: &mut Template,
    t: &mut Totals,
    clock: &Clock,
    running: bool,
) -> Outcome {
    if event.is_readable() || event.is_read_closed() || event.is_error() {
        loop {
            let n = match client::read(&mut f.client.stream, rbuf) {
                Ok(Some(0)) if running => {
                    return Outcome::Lost("the server closed the TCP connection".into())
                }
                Ok(Some(0)) => return Outcome::Done,
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(e) if running => return Outcome::Lost(format!("read: {e}")),
                Err(_) => return Outcome::Done,
            };
            let now = clock.now();
            match feed(f, &mut rbuf[..n], tmpl, t, now, running) {
                Outcome::Open => {}
                other => {
                    // Best effort: the close frame the codec queued (1002, 1007, ...).
                    let _ = f.client.flush();
                    return other;
                }
            }
            // A short read drained the socket: more data will raise a new edge, so skip
            // the read that would only say WouldBlock (half the read syscalls).
            if n < rbuf.len() {
                break;
            }
        }
    }
    if f.client.has_output() {
        if let Err(e) = f.client.flush() {
            return if running {
                Outcome::Lost(format!("write: {e}"))
            } else {
                Outcome::Done
            };
        }
    }
    Outcome::Open
}

/// Decodes `input` (unmasking in place), checks and times every echo, and queues the next
/// message for each one while the run lasts.
#[inline]
fn feed(
    f: &mut Flow,
    input: &mut [u8],
    tmpl: &mut Template,
    t: &mut Totals,
    now: u64,
    running: bool,
) -> Outcome {
    let mut pos = 0;
    while pos < input.len() {
        let (used, event) = match f.client.ws.read(&mut input[pos..], &mut f.client.out) {
            Ok(r) => r,
            Err(e) if running => {
                return Outcome::Error(format!("protocol error from the server: {e}"))
            }
            Err(_) => return Outcome::Done,
        };
        pos += used;
        let checked = match event {
            None => break,
            Some(Event::Text(p)) => tmpl.check(p, false, f.received, f.sent),
            Some(Event::Binary(p)) => tmpl.check(p, true, f.received, f.sent),
            Some(Event::Closed(code)) if running => {
                let code = code.map_or("no code".to_owned(), |c| c.to_string());
                return Outcome::Lost(format!("the server closed the connection ({code})"));
            }
            Some(Event::Closed(_)) => return Outcome::Done,
        };
        if !running {
            continue;
        }
        if let Err(why) = checked {
            f.client
                .ws
                .close(close_code::POLICY, "echo mismatch", &mut f.client.out);
            return Outcome::Error(why);
        }
        let rtt = now.saturating_sub(f.sent_at[f.received as usize % tmpl.depth]);
        f.received += 1;
        t.all += 1;
        t.rtt_sum_ns += rtt;
        if now < t.to_ns {
            if now >= t.from_ns {
                t.hist.record(rtt);
                t.messages += 1;
                t.bytes += tmpl.payload.len() as u64;
            }
            tmpl.send(f, now);
        }
    }
    Outcome::Open
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_cover_small_sizes() {
        for size in 0..12 {
            let t = Template::new(size, 4, false);
            assert_eq!(t.payload.len(), size);
            assert_eq!(t.tag_len, size.min(8));
            let tag = t.tag(0x1234_5678_9abc);
            assert!(tag[..t.tag_len].iter().all(|b| b.is_ascii_hexdigit()));
        }
        let t = Template::new(20, 1, false);
        assert_eq!(&t.tag(0xabc)[..8], b"00000abc");
    }
}
