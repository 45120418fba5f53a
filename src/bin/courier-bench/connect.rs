//! `courier-bench connect`: a connection storm. Opens N WebSocket connections at a target
//! rate, times each handshake, holds them all idle for a while, then closes them cleanly;
//! with `--server-pid` it also reads the server's resident memory and open descriptors
//! before, during and after, to give the server's cost per held connection.
//!
//! Connections are scheduled open-loop (connection g is due g/R seconds after the start)
//! so a slow server shows up as handshake latency rather than as a quietly lower rate; a
//! cap on handshakes in flight keeps a stalled server from being flooded without bound.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use courier::ws::conn::{Conn, Event};
use courier::ws::frame::{close_code, OpCode};
use mio::{Events, Interest, Poll, Token};

use crate::args::{self, Flag};
use crate::client::{self, Client, HandshakeError, Phase, Target};
use crate::stats::{self, Histogram, Progress};

pub const FLAGS: &[Flag] = &[
    Flag {
        name: "url",
        arg: "URL",
        default: "ws://127.0.0.1:8080/",
        help: "server to connect to (ws://HOST:PORT/PATH)",
    },
    Flag {
        name: "connections",
        arg: "N",
        default: "1000",
        help: "connections to open and hold",
    },
    Flag {
        name: "rate",
        arg: "R",
        default: "5000",
        help: "connection attempts started per second (open loop)",
    },
    Flag {
        name: "hold",
        arg: "D",
        default: "10",
        help: "seconds to hold every connection open, idle, once all are established",
    },
    Flag {
        name: "timeout",
        arg: "T",
        default: "10",
        help: "seconds from a connection's start to its 101 before it counts as timed out",
    },
    Flag {
        name: "server-pid",
        arg: "PID",
        default: "none",
        help: "server process whose VmRSS and open fds (/proc/PID) are sampled",
    },
    Flag {
        name: "jwt-secret",
        arg: "S",
        default: "none",
        help: "IM mode: connection i signs in as user {prefix}{i} with a token signed with S",
    },
    Flag {
        name: "user-prefix",
        arg: "P",
        default: "u",
        help: "IM mode: user ids are this prefix and the connection's number",
    },
    Flag {
        name: "ping",
        arg: "SECS",
        default: "20",
        help: "IM mode: app {\"type\":\"ping\"} interval per connection when the run is long \
               enough for the server's idle timeout (0 = never)",
    },
    Flag {
        name: "threads",
        arg: "K",
        default: "1",
        help: "client threads, each with its own poll and an interleaved share of the schedule",
    },
    Flag {
        name: "json",
        arg: "",
        default: "",
        help: "print the result as one JSON object line instead of a table",
    },
];

const ABOUT: &str = "\
Connection storm: opens N WebSocket connections at R per second, timing each handshake from
the start of the TCP connect to the parsed 101; failures are counted by kind (refused, reset,
timeout, closed before the response, HTTP status, other). All connections are then held
open without traffic for D seconds (server pings are answered); any the server closes in
that time count as dropped. Finally every connection is closed with 1000.

IM mode (--jwt-secret S, URL ws://HOST:PORT/ws): connection i authenticates as user
{prefix}{i} with a token minted here and signed with S, in ?token= on the request; the
server's `welcome` (and any other text frame) is read and ignored. courier closes a
connection that sends nothing for its idle timeout (75 s by default, 3 x --heartbeat), so
when the storm plus the hold lasts longer than 60 s every connection sends an app ping
every --ping seconds (pongs are ignored too); shorter runs send nothing at all.

With --server-pid, the server's VmRSS is read before connecting, 1 s after the last
handshake and at the end of the hold; (held - baseline) / established is reported as the
server's bytes per connection.

When N exceeds half the ephemeral port range (Linux's connect() slows down sharply once
its preferred even ports are used up), connections to a loopback target are spread round
robin over source addresses 127.0.0.2, 127.0.0.3, ...

Exits 1 when the server cannot be reached, the open-file limit is too low, any connection
failed or was dropped, or (IM mode) an established connection got no `welcome`; 2 on bad
flags.";

/// Descriptors besides the sockets: stdio, epoll per thread, /proc reads, slack.
const RESERVED_FDS: usize = 32;
/// Handshakes in flight per thread before the schedule waits. Far above what a healthy
/// server needs at any sane rate (handshakes take well under a millisecond on loopback);
/// reached only when the server stalls, and then the achieved rate says so.
const MAX_IN_FLIGHT: usize = 1024;
/// Ports per source address kept back for sockets other programs hold and for TIME_WAIT
/// left from earlier runs, so a run near the limit neither hits EADDRNOTAVAIL nor spills
/// into the slow odd ports.
const PORT_HEADROOM: usize = 1024;
/// Linux's default ip_local_port_range (32768-60999), if /proc cannot be read.
const DEFAULT_EPHEMERAL_PORTS: usize = 28_232;
/// How long after the last handshake the "held" RSS sample is taken: lets the server
/// finish whatever each accept left pending (buffers released on idle, timers armed).
const SETTLE: Duration = Duration::from_secs(1);
/// How long the close handshake may take before sockets are just dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// How long the reachability probe waits for the server to accept.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest poll sleep, so counters are published and the phase change is noticed.
const MAX_POLL: Duration = Duration::from_millis(100);
/// How often the main thread checks whether every worker has finished connecting.
const WATCH_STEP: Duration = Duration::from_millis(10);
const READ_BUF: usize = 16 << 10;
/// Largest message accepted from the server; none is expected at all (IM mode: a
/// `welcome`, and `pong`s).
const MAX_MESSAGE: usize = 64 << 10;
/// IM mode pings only when a connection could otherwise stay silent longer than this:
/// under courier's default idle timeout (75 s) with room for a slow storm.
const PING_NEEDED_AFTER: Duration = Duration::from_secs(60);
const APP_PING: &[u8] = br#"{"type":"ping"}"#;

#[derive(Debug)]
struct Opts {
    target: Target,
    connections: usize,
    rate: usize,
    hold: Duration,
    timeout: Duration,
    server_pid: Option<u32>,
    threads: usize,
    json: bool,
    /// IM mode: the secret tokens are signed with, and the user id prefix.
    secret: Option<String>,
    user_prefix: String,
    /// IM mode: app ping interval, when pings are needed at all (see `ping_interval`).
    ping: Option<Duration>,
    /// Source addresses to round-robin over; empty = the kernel's choice.
    sources: Vec<Ipv4Addr>,
    ephemeral_ports: usize,
}

fn opts(values: &args::Values) -> Result<Opts, String> {
    let connections = values.count("connections", 1)?;
    let timeout = values.duration("timeout")?;
    if timeout.is_zero() {
        return Err("--timeout must be above 0".into());
    }
    let server_pid = match values.get("server-pid") {
        "none" | "" => None,
        s => match s.parse::<u32>() {
            Ok(pid) if pid > 0 => Some(pid),
            _ => return Err(format!("--server-pid: {s:?} is not a process id")),
        },
    };
    let secret = match values.get("jwt-secret") {
        "none" | "" => None,
        s => Some(s.to_owned()),
    };
    let user_prefix = values.get("user-prefix").to_owned();
    if secret.is_some() {
        let last = format!("{user_prefix}{}", connections - 1);
        if !courier::im::auth::valid_user_id(&user_prefix)
            || !courier::im::auth::valid_user_id(&last)
        {
            return Err(format!(
                "--user-prefix {user_prefix:?}: user ids like {last:?} must be 1 to 64 of \
                 [A-Za-z0-9_.-]"
            ));
        }
    }
    let rate = values.count("rate", 1)?;
    let hold = values.duration("hold")?;
    let ping = ping_interval(
        secret.is_some(),
        values.duration("ping")?,
        hold,
        connections,
        rate,
    );
    Ok(Opts {
        target: Target::parse(values.get("url"))?,
        connections,
        rate,
        hold,
        timeout,
        server_pid,
        threads: values.count("threads", 1)?.min(connections),
        json: values.switch("json"),
        secret,
        user_prefix,
        ping,
        sources: Vec::new(),
        ephemeral_ports: 0,
    })
}

/// IM mode's app ping interval, or `None` for no pings: only when a connection may stay
/// silent long enough for the server's idle timeout, i.e. when the storm (N / R seconds
/// at the target rate) plus the hold passes `PING_NEEDED_AFTER`. Shorter runs send
/// nothing, so the memory figure is that of a truly idle connection.
fn ping_interval(
    im: bool,
    every: Duration,
    hold: Duration,
    connections: usize,
    rate: usize,
) -> Option<Duration> {
    let storm = Duration::from_secs_f64(connections as f64 / rate.max(1) as f64);
    (im && !every.is_zero() && storm + hold > PING_NEEDED_AFTER).then_some(every)
}

/// Entry point; returns the process exit code.
pub fn main(argv: &[String]) -> i32 {
    let mut opts = match args::options("connect", ABOUT, FLAGS, argv, opts) {
        Ok(opts) => opts,
        Err(code) => return code,
    };
    match prepare(&mut opts) {
        Ok(baseline) => run(&opts, baseline),
        Err(e) => {
            eprintln!("courier-bench connect: {e}");
            1
        }
    }
}

/// Everything that can stop the run before the first connection: the open-file limit, the
/// source addresses, the server's /proc entry and whether anything listens at the target.
/// Returns the server's baseline sample.
fn prepare(opts: &mut Opts) -> Result<Option<Sample>, String> {
    let limit = courier::net::raise_open_file_limit()
        .map_err(|e| format!("reading the open-file limit: {e}"))?;
    check_fd_limit(opts.connections, opts.threads, limit)?;

    opts.ephemeral_ports = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| parse_port_range(&s))
        .map_or(DEFAULT_EPHEMERAL_PORTS, |(lo, hi)| usize::from(hi - lo) + 1);
    opts.sources = source_addresses(
        opts.connections,
        opts.ephemeral_ports,
        opts.target.addr.ip(),
    )?;
    if let Some(w) = slow_connect_warning(opts.connections, opts.ephemeral_ports, &opts.sources) {
        eprintln!("courier-bench connect: {w}");
    }

    probe(&opts.target)?;
    let Some(pid) = opts.server_pid else {
        return Ok(None);
    };
    // The probe's connection is gone on our side; give the server a moment to see its end
    // so the baseline is an idle server.
    std::thread::sleep(Duration::from_millis(100));
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path)
        .map_err(|e| format!("--server-pid {pid}: cannot read {path}: {e}"))?;
    let rss = parse_vmrss(&status)
        .ok_or_else(|| format!("--server-pid {pid}: no VmRSS line in {path}"))?;
    Ok(Some(Sample {
        rss: Some(rss),
        fds: count_fds(pid),
    }))
}

/// One descriptor per connection plus the reserve must fit under the limit now in force
/// (already raised to the hard limit).
fn check_fd_limit(connections: usize, threads: usize, limit: usize) -> Result<(), String> {
    let reserve = RESERVED_FDS + threads;
    let need = connections.saturating_add(reserve);
    if need <= limit {
        return Ok(());
    }
    let max = limit.saturating_sub(reserve);
    let processes = connections.div_ceil(max.max(1)).max(2);
    Err(format!(
        "--connections {connections} needs about {need} open files (one per socket plus \
         {reserve} for epoll, stdio and slack), but this process may open at most {limit} \
         (the hard limit, ulimit -Hn). Use --connections {max} or fewer, or split the load \
         over several courier-bench processes (e.g. {processes} x --connections {})",
        connections.div_ceil(processes)
    ))
}

/// `ip_local_port_range`: two numbers, low and high, inclusive.
fn parse_port_range(s: &str) -> Option<(u16, u16)> {
    let mut it = s.split_whitespace();
    let lo: u16 = it.next()?.parse().ok()?;
    let hi: u16 = it.next()?.parse().ok()?;
    (lo <= hi && it.next().is_none()).then_some((lo, hi))
}

/// Every connection to one server address needs its own (source address, source port)
/// pair, and Linux's connect() tries the even ports first (odd ones are left for bind()).
/// Past half the range, each connect() walks every even port already in use before it
/// finds an odd one, in the kernel, blocking this thread: measured here (28,232 ports),
/// handshake p99 went from under 1 ms to ~550 ms and the rate fell from 5,000/s to ~3,450/s
/// beyond about 14,000 connections from one address. So beyond half the range,
/// loopback targets get source addresses 127.0.0.2, 127.0.0.3, ... (all of 127/8 is local
/// on Linux), round robin; each address's ports are checked against its own connections
/// only. The list is empty when the kernel's default source is enough.
fn source_addresses(n: usize, ports: usize, target: IpAddr) -> Result<Vec<Ipv4Addr>, String> {
    let even = (ports / 2).saturating_sub(PORT_HEADROOM).max(1);
    if n <= even {
        return Ok(Vec::new());
    }
    match target {
        IpAddr::V4(ip) if ip.is_loopback() => {
            let count = n.div_ceil(even);
            let first = u32::from(Ipv4Addr::new(127, 0, 0, 2));
            let last = u32::from(Ipv4Addr::new(127, 255, 255, 254));
            if count as u64 > u64::from(last - first) + 1 {
                return Err(format!("{n} connections need more than all of 127.0.0.0/8"));
            }
            Ok((0..count as u32)
                .map(|i| Ipv4Addr::from(first + i))
                .collect())
        }
        // Not loopback: no spare local addresses to assume. Past the even half the
        // connects are slow (see `slow_connect_warning`) but work, up to the whole range.
        _ if n <= ports.saturating_sub(PORT_HEADROOM) => Ok(Vec::new()),
        _ => Err(format!(
            "{n} connections to one address need more source ports than the ephemeral range \
             holds ({ports}, less {PORT_HEADROOM} headroom); several source addresses are \
             only used for a loopback target. Use fewer connections per process, or run \
             courier-bench on several hosts"
        )),
    }
}

/// Said when connections from the one default source address will spill past the even
/// ports, so slow handshakes at the end of the storm are not blamed on the server.
fn slow_connect_warning(n: usize, ports: usize, sources: &[Ipv4Addr]) -> Option<String> {
    let even = (ports / 2).saturating_sub(PORT_HEADROOM);
    (sources.is_empty() && n > even).then(|| {
        format!(
            "warning: {n} connections from one source address use more than the {even} even \
             ephemeral ports Linux's connect() prefers; connects past that scan every used \
             port in the kernel and handshake latency will include it"
        )
    })
}

/// The source address of global connection `g`: round robin, so every address fills
/// evenly whatever the thread count.
fn source_for(g: usize, sources: &[Ipv4Addr]) -> Option<Ipv4Addr> {
    (!sources.is_empty()).then(|| sources[g % sources.len()])
}

/// One blocking connect before the storm, so "nothing is listening there" is one clear
/// line instead of N refused connections.
fn probe(target: &Target) -> Result<(), String> {
    match std::net::TcpStream::connect_timeout(&target.addr, PROBE_TIMEOUT) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Err(format!(
            "cannot connect to {} ({}): connection refused; is the server running and \
             listening there?",
            target.url, target.addr
        )),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ) =>
        {
            Err(format!(
                "cannot connect to {} ({}): no answer within {} s",
                target.url,
                target.addr,
                PROBE_TIMEOUT.as_secs()
            ))
        }
        Err(e) => Err(format!(
            "cannot connect to {} ({}): {e}",
            target.url, target.addr
        )),
    }
}

/// The server's footprint at one moment; `None` where /proc could not be read.
#[derive(Clone, Copy, Default, Debug)]
struct Sample {
    rss: Option<u64>,
    fds: Option<u64>,
}

fn sample(pid: u32) -> Sample {
    Sample {
        rss: std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| parse_vmrss(&s)),
        fds: count_fds(pid),
    }
}

/// Entries of /proc/PID/fd: readable for our own user's processes only.
fn count_fds(pid: u32) -> Option<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count() as u64)
}

/// VmRSS from /proc/PID/status (`VmRSS:\t  12345 kB`), in bytes.
fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let mut it = line.split_whitespace();
    let value: u64 = it.next()?.parse().ok()?;
    match it.next() {
        Some("kB") => value.checked_mul(1024),
        _ => None,
    }
}

/// (held - baseline) / established, signed: a server that returned memory while the
/// connections arrived would show a negative cost, and that should be visible.
fn bytes_per_connection(baseline: u64, held: u64, established: u64) -> Option<f64> {
    (established > 0).then(|| (held as f64 - baseline as f64) / established as f64)
}

/// What a failed connection attempt is counted as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Refused,
    Reset,
    Timeout,
    /// End of stream before the response head.
    Closed,
    Status(u16),
    Other,
}

fn io_kind(e: &io::Error) -> Kind {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Kind::Refused,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => Kind::Reset,
        io::ErrorKind::TimedOut => Kind::Timeout,
        _ => Kind::Other,
    }
}

fn handshake_kind(e: &HandshakeError) -> Kind {
    match e {
        HandshakeError::Closed => Kind::Closed,
        HandshakeError::Io(e) => io_kind(e),
        HandshakeError::Rejected {
            status: Some(code), ..
        } => Kind::Status(*code),
        HandshakeError::Rejected { status: None, .. } | HandshakeError::Invalid(_) => Kind::Other,
    }
}

/// Failed attempts by kind, with the first one's message for the log.
#[derive(Clone, Default, Debug)]
struct Failures {
    refused: u64,
    reset: u64,
    timeout: u64,
    closed: u64,
    other: u64,
    status: BTreeMap<u16, u64>,
    first: Option<String>,
}

impl Failures {
    fn add(&mut self, kind: Kind, why: impl FnOnce() -> String) {
        match kind {
            Kind::Refused => self.refused += 1,
            Kind::Reset => self.reset += 1,
            Kind::Timeout => self.timeout += 1,
            Kind::Closed => self.closed += 1,
            Kind::Status(code) => *self.status.entry(code).or_default() += 1,
            Kind::Other => self.other += 1,
        }
        if self.first.is_none() {
            self.first = Some(why());
        }
    }

    fn total(&self) -> u64 {
        self.refused
            + self.reset
            + self.timeout
            + self.closed
            + self.other
            + self.status.values().sum::<u64>()
    }

    fn merge(&mut self, o: &Failures) {
        self.refused += o.refused;
        self.reset += o.reset;
        self.timeout += o.timeout;
        self.closed += o.closed;
        self.other += o.other;
        for (code, n) in &o.status {
            *self.status.entry(*code).or_default() += n;
        }
        if self.first.is_none() {
            self.first.clone_from(&o.first);
        }
    }

    fn summary(&self) -> String {
        let mut s = format!(
            "refused {}, reset {}, timeout {}, closed {}, other {}",
            self.refused, self.reset, self.timeout, self.closed, self.other
        );
        for (code, n) in &self.status {
            let _ = write!(s, ", status {code}: {n}");
        }
        s
    }

    fn json(&self) -> String {
        let status: Vec<String> = self
            .status
            .iter()
            .map(|(code, n)| format!("\"{code}\":{n}"))
            .collect();
        format!(
            "{{\"total\":{},\"refused\":{},\"reset\":{},\"timeout\":{},\"closed\":{},\"other\":{},\
             \"status\":{{{}}}}}",
            self.total(),
            self.refused,
            self.reset,
            self.timeout,
            self.closed,
            self.other,
            status.join(",")
        )
    }
}

/// Counters one worker publishes for the progress line (relaxed stores once per wake-up;
/// the main thread only reads). Padded to its own cache lines.
#[repr(align(128))]
#[derive(Default)]
struct Live {
    attempts: AtomicU64,
    established: AtomicU64,
    hs_sum_ns: AtomicU64,
    failed: AtomicU64,
    open: AtomicU64,
    dropped: AtomicU64,
    /// Every attempt of this worker has ended (established or failed).
    connect_done: AtomicBool,
}

#[derive(Clone, Copy, Default)]
struct Snapshot {
    attempts: u64,
    established: u64,
    hs_sum_ns: u64,
    failed: u64,
    open: u64,
    dropped: u64,
}

impl Live {
    fn publish(&self, t: &Totals, open: usize) {
        self.attempts.store(t.attempts, Ordering::Relaxed);
        self.established.store(t.established, Ordering::Relaxed);
        self.hs_sum_ns.store(t.hs_sum_ns, Ordering::Relaxed);
        self.failed.store(t.failures.total(), Ordering::Relaxed);
        self.open.store(open as u64, Ordering::Relaxed);
        self.dropped.store(t.dropped, Ordering::Relaxed);
    }

    fn sum(all: &[Live]) -> Snapshot {
        let mut s = Snapshot::default();
        for l in all {
            s.attempts += l.attempts.load(Ordering::Relaxed);
            s.established += l.established.load(Ordering::Relaxed);
            s.hs_sum_ns += l.hs_sum_ns.load(Ordering::Relaxed);
            s.failed += l.failed.load(Ordering::Relaxed);
            s.open += l.open.load(Ordering::Relaxed);
            s.dropped += l.dropped.load(Ordering::Relaxed);
        }
        s
    }
}

/// What one worker measured.
#[derive(Default)]
struct Totals {
    hist: Histogram,
    attempts: u64,
    established: u64,
    hs_sum_ns: u64,
    failures: Failures,
    /// Established connections the server ended before our close.
    dropped: u64,
    first_drop: Option<String>,
    /// What arrived from the server on established connections.
    incoming: Incoming,
    /// IM mode: app pings sent.
    pings: u64,
    /// Closes answered with the server's close frame, ended by TCP without one, and
    /// still unanswered after `CLOSE_WAIT`.
    close_echoed: u64,
    close_ended: u64,
    close_unanswered: u64,
    /// From the start to this worker's last attempt ending.
    connect_time: Duration,
    fatal: Option<String>,
}

impl Totals {
    fn merge(&mut self, o: &Totals) {
        self.hist.merge(&o.hist);
        self.attempts += o.attempts;
        self.established += o.established;
        self.hs_sum_ns += o.hs_sum_ns;
        self.failures.merge(&o.failures);
        self.dropped += o.dropped;
        if self.first_drop.is_none() {
            self.first_drop.clone_from(&o.first_drop);
        }
        self.incoming.unexpected += o.incoming.unexpected;
        self.incoming.welcomes += o.incoming.welcomes;
        self.incoming.im_text += o.incoming.im_text;
        self.pings += o.pings;
        self.close_echoed += o.close_echoed;
        self.close_ended += o.close_ended;
        self.close_unanswered += o.close_unanswered;
        self.connect_time = self.connect_time.max(o.connect_time);
        if self.fatal.is_none() {
            self.fatal.clone_from(&o.fatal);
        }
    }
}

/// Data messages from established connections.
#[derive(Clone, Copy, Default, Debug)]
struct Incoming {
    /// Plain mode: any data message (an echo or plain WebSocket server has no reason to
    /// send one here). IM mode: binary messages only.
    unexpected: u64,
    /// IM mode: `welcome` frames, one per connection the server signed in.
    welcomes: u64,
    /// IM mode: other text frames (`pong`s, errors), read and ignored.
    im_text: u64,
}

struct Shared {
    start: Barrier,
    /// Raised by the main thread at the end of the hold.
    close: AtomicBool,
    live: Vec<Live>,
}

/// The server samples taken during the run.
#[derive(Default)]
struct Server {
    baseline: Sample,
    held: Sample,
    end: Sample,
}

fn run(opts: &Opts, baseline: Option<Sample>) -> i32 {
    let mut polls = Vec::with_capacity(opts.threads);
    for _ in 0..opts.threads {
        match Poll::new() {
            Ok(p) => polls.push(p),
            Err(e) => {
                eprintln!("courier-bench connect: epoll_create: {e}");
                return 1;
            }
        }
    }
    let shared = Shared {
        start: Barrier::new(opts.threads + 1),
        close: AtomicBool::new(false),
        live: (0..opts.threads).map(|_| Live::default()).collect(),
    };
    let mut server = baseline.map(|baseline| Server {
        baseline,
        ..Server::default()
    });
    let mut progress = Progress::new();
    let sources = match opts.sources.as_slice() {
        [] => String::new(),
        [one] => format!(" from {one}"),
        [first, .., last] => format!(" from {first}..{last}"),
    };
    progress.line(&format!(
        "connecting {} connections to {} ({}){sources} at {}/s...",
        opts.connections, opts.target.url, opts.target.addr, opts.rate
    ));
    let mut sum = Totals::default();
    std::thread::scope(|scope| {
        let shared = &shared;
        let handles: Vec<_> = polls
            .into_iter()
            .enumerate()
            .map(|(k, poll)| {
                std::thread::Builder::new()
                    .name(format!("connect-{k}"))
                    .spawn_scoped(scope, move || worker(k, poll, opts, shared))
                    .expect("spawn a bench thread")
            })
            .collect();
        shared.start.wait();
        let mut ticker = Ticker {
            t0: Instant::now(),
            next: 1,
            last: Snapshot::default(),
            last_at: Instant::now(),
            holding: false,
            progress: &mut progress,
            opts,
            live: &shared.live,
        };
        while !shared
            .live
            .iter()
            .all(|l| l.connect_done.load(Ordering::Acquire))
        {
            ticker.sleep_until(Instant::now() + WATCH_STEP);
        }
        ticker.holding = true;
        // Holding nothing measures nothing: with every attempt failed, close at once.
        if Live::sum(&shared.live).open > 0 {
            let hold_end = Instant::now() + opts.hold;
            ticker.sleep_until(Instant::now() + SETTLE.min(opts.hold));
            if let (Some(s), Some(pid)) = (server.as_mut(), opts.server_pid) {
                s.held = sample(pid);
            }
            ticker.sleep_until(hold_end);
        }
        if let (Some(s), Some(pid)) = (server.as_mut(), opts.server_pid) {
            s.end = sample(pid);
            if s.held.rss.is_none() {
                s.held = s.end;
            }
        }
        shared.close.store(true, Ordering::Release);
        for h in handles {
            sum.merge(&h.join().expect("bench thread"));
        }
    });
    progress.finish();

    report(opts, &sum, server.as_ref());
    if let Some(e) = &sum.fatal {
        eprintln!("courier-bench connect: {e}");
    }
    if let Some(why) = &sum.failures.first {
        eprintln!("courier-bench connect: first failure: {why}");
    }
    if let Some(why) = &sum.first_drop {
        eprintln!("courier-bench connect: first drop: {why}");
    }
    // Every connection the server signed in owes a `welcome`; one that never came means
    // the IM endpoint is not doing its part (or the URL is not /ws).
    let unwelcomed = opts.secret.is_some() && sum.incoming.welcomes < sum.established;
    if unwelcomed {
        eprintln!(
            "courier-bench connect: only {} of {} established IM connections got a `welcome`",
            sum.incoming.welcomes, sum.established
        );
    }
    i32::from(sum.fatal.is_some() || sum.failures.total() > 0 || sum.dropped > 0 || unwelcomed)
}

/// The main thread's clock: sleeps while printing the progress line at every whole second
/// since the start.
struct Ticker<'a> {
    t0: Instant,
    next: u64,
    last: Snapshot,
    last_at: Instant,
    holding: bool,
    progress: &'a mut Progress,
    opts: &'a Opts,
    live: &'a [Live],
}

impl Ticker<'_> {
    fn sleep_until(&mut self, until: Instant) {
        loop {
            let now = Instant::now();
            let tick = self.t0 + Duration::from_secs(self.next);
            if tick <= now {
                self.line(now);
                self.next += 1;
                continue;
            }
            if now >= until {
                return;
            }
            std::thread::sleep(tick.min(until) - now);
        }
    }

    fn line(&mut self, now: Instant) {
        let s = Live::sum(self.live);
        let elapsed = (now - self.t0).as_secs_f64();
        let text = if self.holding {
            let mut text = format!(
                "{elapsed:>6.1}s hold     open {:>7}  dropped {}",
                stats::grouped(s.open),
                s.dropped
            );
            if let Some(pid) = self.opts.server_pid {
                let now = sample(pid);
                if let Some(rss) = now.rss {
                    let _ = write!(text, "  server rss {:.1} MiB", rss as f64 / 1048576.0);
                }
                if let Some(fds) = now.fds {
                    let _ = write!(text, "  fds {}", stats::grouped(fds));
                }
            }
            text
        } else {
            let done = s.established - self.last.established;
            let rate = done as f64 / (now - self.last_at).as_secs_f64().max(1e-9);
            let mean = (s.hs_sum_ns - self.last.hs_sum_ns)
                .checked_div(done)
                .map_or(0.0, stats::us);
            format!(
                "{elapsed:>6.1}s connect  established {:>7}/{}  {:>7}/s  handshake mean {mean:>8.1} us  \
                 in flight {}  failed {}",
                stats::grouped(s.established),
                stats::grouped(self.opts.connections as u64),
                stats::grouped(rate.round() as u64),
                s.attempts.saturating_sub(s.established + s.failed),
                s.failed
            )
        };
        self.progress.line(&text);
        self.last = s;
        self.last_at = now;
    }
}

/// How servicing an established connection ended.
enum Status {
    Open,
    /// The server's close frame arrived (our echo of it, if owed, is flushed).
    Closed(Option<u16>),
    /// End of stream, a read or write error, or a protocol error.
    Ended(String),
}

/// One worker's connections: slot j is global connection `k + j * threads`, registered
/// with `Token(j)`; `None` once it failed or ended.
struct Worker<'a> {
    k: usize,
    opts: &'a Opts,
    poll: Poll,
    slots: Vec<Option<Client>>,
    /// Handshakes started and not yet ended.
    in_flight: usize,
    /// Established and not yet ended.
    open: usize,
    closing: bool,
    rbuf: Vec<u8>,
    t: Totals,
    /// IM mode: app pings sent per slot (the next is due `ping` after the 101 times one
    /// more than this), and when the slots are next looked at.
    pings: Vec<u32>,
    next_ping_scan: Instant,
}

fn worker(k: usize, poll: Poll, opts: &Opts, shared: &Shared) -> Totals {
    let count = opts.connections / opts.threads + usize::from(k < opts.connections % opts.threads);
    let mut w = Worker {
        k,
        opts,
        poll,
        slots: Vec::with_capacity(count),
        in_flight: 0,
        open: 0,
        closing: false,
        rbuf: vec![0u8; READ_BUF],
        t: Totals::default(),
        pings: Vec::new(),
        next_ping_scan: Instant::now(),
    };
    let live = &shared.live[k];
    let mut events = Events::with_capacity(1024);
    // Slots whose handshake has not ended, in start order: oldest first, so timeouts are
    // found at the front without scanning every connection.
    let mut waiting: VecDeque<usize> = VecDeque::new();
    shared.start.wait();
    let t0 = Instant::now();
    let due =
        |j: usize| t0 + Duration::from_secs_f64((k + j * opts.threads) as f64 / opts.rate as f64);

    loop {
        let now = Instant::now();
        while w.slots.len() < count && w.in_flight < MAX_IN_FLIGHT && due(w.slots.len()) <= now {
            if w.start() {
                waiting.push_back(w.slots.len() - 1);
            }
        }
        while let Some(&j) = waiting.front() {
            if let Some(c) = &w.slots[j] {
                if c.phase != Phase::Open {
                    if now.duration_since(c.started()) < opts.timeout {
                        break;
                    }
                    let g = w.global(j);
                    let phase = if c.phase == Phase::Connecting {
                        "TCP connect"
                    } else {
                        "101 response"
                    };
                    w.t.failures.add(Kind::Timeout, || {
                        format!(
                            "connection #{g}: no {phase} within {:.1} s",
                            opts.timeout.as_secs_f64()
                        )
                    });
                    w.slots[j] = None;
                    w.in_flight -= 1;
                }
            }
            waiting.pop_front();
        }
        if w.slots.len() == count && w.in_flight == 0 {
            break;
        }
        let mut wait = MAX_POLL;
        if w.slots.len() < count && w.in_flight < MAX_IN_FLIGHT {
            wait = wait.min(due(w.slots.len()).saturating_duration_since(now));
        }
        if let Some(Some(c)) = waiting.front().map(|&j| &w.slots[j]) {
            wait = wait.min((c.started() + opts.timeout).saturating_duration_since(now));
        }
        if !w.poll_once(&mut events, wait) {
            break;
        }
        w.ping_due();
        live.publish(&w.t, w.open);
    }
    w.t.connect_time = t0.elapsed();
    live.publish(&w.t, w.open);
    live.connect_done.store(true, Ordering::Release);

    // The hold: nothing to send (but IM app pings when the run is long); RFC pings are
    // answered and server closes counted as they come.
    while w.t.fatal.is_none() && !shared.close.load(Ordering::Acquire) {
        if !w.poll_once(&mut events, MAX_POLL) {
            break;
        }
        w.ping_due();
        live.publish(&w.t, w.open);
    }

    w.closing = true;
    for slot in w.slots.iter_mut() {
        if let Some(c) = slot.as_mut() {
            c.ws.close(close_code::NORMAL, "", &mut c.out);
            if c.flush().is_err() {
                *slot = None;
                w.open -= 1;
                w.t.close_ended += 1;
            }
        }
    }
    let deadline = Instant::now() + CLOSE_WAIT;
    while w.open > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !w.poll_once(&mut events, left) {
            break;
        }
    }
    // Whatever is left did not answer in time; dropping the slots closes the sockets.
    w.t.close_unanswered = w.open as u64;
    w.open = 0;
    live.publish(&w.t, w.open);
    w.t
}

impl Worker<'_> {
    fn global(&self, j: usize) -> usize {
        self.k + j * self.opts.threads
    }

    /// IM mode on a long run: an app ping on every established connection whose next
    /// ping is due (each `ping` after its 101). Looks at the slots once a second.
    fn ping_due(&mut self) {
        let Some(every) = self.opts.ping else {
            return;
        };
        let now = Instant::now();
        if now < self.next_ping_scan || self.closing {
            return;
        }
        self.next_ping_scan = now + Duration::from_secs(1);
        for (j, slot) in self.slots.iter_mut().enumerate() {
            let Some(c) = slot.as_mut() else {
                continue;
            };
            if c.phase != Phase::Open {
                continue;
            }
            let due = c.started() + c.handshake_time + every * (self.pings[j] + 1);
            if now < due {
                continue;
            }
            self.pings[j] += 1;
            self.t.pings += 1;
            c.ws.send(OpCode::Text, APP_PING, &mut c.out);
            // A failed write shows up as a drop at the next read of this socket.
            let _ = c.flush();
        }
    }

    /// Starts the next scheduled connection; false when it failed at once.
    fn start(&mut self) -> bool {
        let j = self.slots.len();
        let g = self.global(j);
        self.t.attempts += 1;
        let target = &self.opts.target;
        let seed = (g as u32).wrapping_mul(0x9E37_79B9) ^ 0x2545_F491;
        let source = source_for(g, &self.opts.sources);
        let started = Client::connect(target.addr, source, Conn::client(MAX_MESSAGE, seed))
            .and_then(|mut c| {
                self.poll
                    .registry()
                    .register(
                        &mut c.stream,
                        Token(j),
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .map(|()| c)
            });
        self.pings.push(0);
        match started {
            Ok(c) => {
                self.slots.push(Some(c));
                self.in_flight += 1;
                true
            }
            Err(e) => {
                self.slots.push(None);
                self.t
                    .failures
                    .add(io_kind(&e), || connect_error(target, source, g, &e));
                false
            }
        }
    }

    /// One poll and its events; false on a poll failure (recorded as fatal).
    fn poll_once(&mut self, events: &mut Events, timeout: Duration) -> bool {
        if let Err(e) = self.poll.poll(events, Some(timeout)) {
            if e.kind() == io::ErrorKind::Interrupted {
                return true;
            }
            self.t.fatal.get_or_insert(format!("epoll: {e}"));
            return false;
        }
        for event in events.iter() {
            self.on_event(event.token().0);
        }
        true
    }

    fn on_event(&mut self, j: usize) {
        let g = self.global(j);
        let Some(Some(c)) = self.slots.get_mut(j) else {
            return;
        };
        let target = &self.opts.target;
        if c.phase == Phase::Connecting {
            match c.finish_connect() {
                Ok(true) => {
                    c.phase = Phase::Handshaking;
                    match &self.opts.secret {
                        Some(secret) => {
                            let user = format!("{}{g}", self.opts.user_prefix);
                            let token = client::mint_token(&user, secret);
                            c.out.extend_from_slice(&target.request_with_token(&token));
                        }
                        None => c.out.extend_from_slice(&target.request),
                    }
                }
                Ok(false) => return,
                Err(e) => {
                    let source = source_for(g, &self.opts.sources);
                    self.t
                        .failures
                        .add(io_kind(&e), || connect_error(target, source, g, &e));
                    self.slots[j] = None;
                    self.in_flight -= 1;
                    return;
                }
            }
        }
        if c.phase == Phase::Handshaking {
            let result = c
                .flush()
                .map_err(HandshakeError::Io)
                .and_then(|()| c.read_handshake(&mut self.rbuf));
            match result {
                Ok(false) => return,
                Ok(true) => {
                    let ns = c.handshake_time.as_nanos() as u64;
                    self.t.hist.record(ns);
                    self.t.hs_sum_ns += ns;
                    self.t.established += 1;
                    self.in_flight -= 1;
                    self.open += 1;
                    // Frames that came in behind the 101 first; then the socket may hold
                    // more that no new edge will announce, so `service` drains it below.
                    let mut pending = std::mem::take(&mut c.pending);
                    let im = self.opts.secret.is_some();
                    let status = feed(c, &mut pending, im, &mut self.t.incoming);
                    if !matches!(status, Status::Open) {
                        self.settle(j, status);
                        return;
                    }
                }
                Err(e) => {
                    self.t.failures.add(handshake_kind(&e), || {
                        format!(
                            "{}: connection #{g}: {e}{}",
                            target.url,
                            client::rejection_hint(&e)
                        )
                    });
                    self.slots[j] = None;
                    self.in_flight -= 1;
                    return;
                }
            }
        }
        let Some(Some(c)) = self.slots.get_mut(j) else {
            return;
        };
        let im = self.opts.secret.is_some();
        let status = service(c, &mut self.rbuf, im, &mut self.t.incoming);
        self.settle(j, status);
    }

    /// Books how an established connection's servicing ended; an ended one is dropped,
    /// which closes its socket and takes it out of the poll set.
    fn settle(&mut self, j: usize, status: Status) {
        let g = self.global(j);
        match status {
            Status::Open => return,
            Status::Closed(_) if self.closing => self.t.close_echoed += 1,
            Status::Ended(_) if self.closing => self.t.close_ended += 1,
            Status::Closed(code) => {
                self.t.dropped += 1;
                let code = code.map_or("no code".to_owned(), |c| c.to_string());
                self.t.first_drop.get_or_insert_with(|| {
                    format!("connection #{g}: the server closed it ({code})")
                });
            }
            Status::Ended(why) => {
                self.t.dropped += 1;
                self.t
                    .first_drop
                    .get_or_insert_with(|| format!("connection #{g}: {why}"));
            }
        }
        self.slots[j] = None;
        self.open -= 1;
    }
}

/// Reads an established connection until the socket is drained, handing everything to the
/// codec (which queues pongs and close echoes), then writes what it queued.
fn service(c: &mut Client, rbuf: &mut [u8], im: bool, incoming: &mut Incoming) -> Status {
    loop {
        match client::read(&mut c.stream, rbuf) {
            Ok(Some(0)) => return Status::Ended("the server closed the TCP connection".into()),
            Ok(Some(n)) => match feed(c, &mut rbuf[..n], im, incoming) {
                Status::Open => {}
                other => return other,
            },
            Ok(None) => break,
            Err(e) => return Status::Ended(format!("read: {e}")),
        }
    }
    if c.has_output() {
        if let Err(e) = c.flush() {
            return Status::Ended(format!("write: {e}"));
        }
    }
    Status::Open
}

/// Decodes what arrived. In IM mode text frames are expected (the `welcome` after the
/// 101, `pong`s) and ignored; nothing is ever answered but what RFC 6455 requires.
fn feed(c: &mut Client, input: &mut [u8], im: bool, incoming: &mut Incoming) -> Status {
    let mut pos = 0;
    while pos < input.len() {
        let (used, event) = match c.ws.read(&mut input[pos..], &mut c.out) {
            Ok(r) => r,
            Err(e) => {
                // Best effort: the close frame the codec queued (1002, 1007, ...).
                let _ = c.flush();
                return Status::Ended(format!("protocol error from the server: {e}"));
            }
        };
        pos += used;
        match event {
            None => break,
            Some(Event::Closed(code)) => {
                let _ = c.flush();
                return Status::Closed(code);
            }
            Some(Event::Text(text)) if im => {
                if is_welcome(text) {
                    incoming.welcomes += 1;
                } else {
                    incoming.im_text += 1;
                }
            }
            Some(Event::Text(_) | Event::Binary(_)) => incoming.unexpected += 1,
        }
    }
    Status::Open
}

/// Whether a text frame is courier's `welcome`: a JSON object whose `type` is "welcome".
/// Parsed for real (the server is free to order its fields), but only on the one frame
/// per connection that looks like one.
fn is_welcome(text: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Typed<'a> {
        #[serde(borrow, rename = "type")]
        kind: &'a str,
    }
    text.windows(9).any(|w| w == b"\"welcome\"")
        && serde_json::from_slice::<Typed<'_>>(text).is_ok_and(|t| t.kind == "welcome")
}

fn connect_error(target: &Target, source: Option<Ipv4Addr>, g: usize, e: &io::Error) -> String {
    let from = source.map_or(String::new(), |ip| format!(" from {ip}"));
    let hint = match e.raw_os_error() {
        Some(libc::EMFILE) => " (per-process open-file limit reached)",
        Some(libc::EADDRNOTAVAIL) => " (out of local ports for this source address)",
        _ => "",
    };
    format!(
        "{} ({}): connection #{g}{from}: {e}{hint}",
        target.url, target.addr
    )
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

fn json_opt(v: Option<u64>) -> String {
    v.map_or("null".to_owned(), |v| v.to_string())
}

fn report(opts: &Opts, t: &Totals, server: Option<&Server>) {
    let connect_s = t.connect_time.as_secs_f64();
    let rate = t.established as f64 / connect_s.max(1e-9);
    let h = &t.hist;
    let (p50, p99, max) = (h.quantile(0.50), h.quantile(0.99), h.max());
    let per_conn =
        server.and_then(|s| bytes_per_connection(s.baseline.rss?, s.held.rss?, t.established));
    if opts.json {
        let server_json = match (server, opts.server_pid) {
            (Some(s), Some(pid)) => format!(
                "{{\"pid\":{pid},\"rss_baseline_bytes\":{},\"rss_held_bytes\":{},\
                 \"rss_end_bytes\":{},\"bytes_per_connection\":{},\"fds_baseline\":{},\
                 \"fds_held\":{},\"fds_end\":{}}}",
                json_opt(s.baseline.rss),
                json_opt(s.held.rss),
                json_opt(s.end.rss),
                per_conn.map_or("null".to_owned(), |b| format!("{b:.0}")),
                json_opt(s.baseline.fds),
                json_opt(s.held.fds),
                json_opt(s.end.fds),
            ),
            _ => "null".to_owned(),
        };
        println!(
            "{{\"mode\":\"connect\",\"url\":{},\"connections\":{},\"rate\":{},\"hold\":{},\
             \"threads\":{},\"source_addresses\":{},\"attempts\":{},\"established\":{},\
             \"failures\":{},\"connect_seconds\":{:.3},\"achieved_rate\":{:.1},\
             \"handshake_us\":{{\"p50\":{:.1},\"p99\":{:.1},\"max\":{:.1}}},\"dropped\":{},\
             \"unexpected_messages\":{},\"im\":{},\"close\":{{\"echoed\":{},\"ended\":{},\"unanswered\":{}}},\
             \"server\":{server_json}}}",
            stats::json_str(&opts.target.url),
            opts.connections,
            opts.rate,
            opts.hold.as_secs_f64(),
            opts.threads,
            opts.sources.len().max(1),
            t.attempts,
            t.established,
            t.failures.json(),
            connect_s,
            rate,
            stats::us(p50),
            stats::us(p99),
            stats::us(max),
            t.dropped,
            t.incoming.unexpected,
            match &opts.secret {
                Some(_) => format!(
                    "{{\"user_prefix\":{},\"welcomes\":{},\"other_text\":{},\"pings\":{}}}",
                    stats::json_str(&opts.user_prefix),
                    t.incoming.welcomes,
                    t.incoming.im_text,
                    t.pings
                ),
                None => "null".to_owned(),
            },
            t.close_echoed,
            t.close_ended,
            t.close_unanswered,
        );
        return;
    }
    let threads = if opts.threads == 1 {
        "thread"
    } else {
        "threads"
    };
    let sources = match opts.sources.as_slice() {
        [] => format!(
            "kernel's source address ({} ephemeral ports)",
            stats::grouped(opts.ephemeral_ports as u64)
        ),
        [first, .., last] => format!("{} source addresses {first}..{last}", opts.sources.len()),
        [one] => format!("source address {one}"),
    };
    println!(
        "courier-bench connect  {} ({})",
        opts.target.url, opts.target.addr
    );
    println!(
        "  {} connections at {}/s, {} {threads}, {sources}; hold {} s",
        stats::grouped(opts.connections as u64),
        stats::grouped(opts.rate as u64),
        opts.threads,
        opts.hold.as_secs_f64()
    );
    println!();
    println!(
        "  established    {:>14}   of {}",
        stats::grouped(t.established),
        stats::grouped(opts.connections as u64)
    );
    println!(
        "  failed         {:>14}   {}",
        stats::grouped(t.failures.total()),
        t.failures.summary()
    );
    println!("  connect time   {connect_s:>14.2}   s, first attempt to last attempt ended");
    println!(
        "  rate           {:>14}   handshakes/s achieved (target {})",
        stats::grouped(rate.round() as u64),
        stats::grouped(opts.rate as u64)
    );
    println!(
        "  handshake p50  {:>14.1}   us, TCP connect start to 101 parsed",
        stats::us(p50)
    );
    println!("  handshake p99  {:>14.1}   us", stats::us(p99));
    println!("  handshake max  {:>14.1}   us", stats::us(max));
    println!(
        "  dropped        {:>14}   closed by the server before our close",
        stats::grouped(t.dropped)
    );
    println!(
        "  closed         {:>14}   close 1000 echoed by the server (ended without echo {}, \
         unanswered after {} s {})",
        stats::grouped(t.close_echoed),
        t.close_ended,
        CLOSE_WAIT.as_secs(),
        t.close_unanswered
    );
    if opts.secret.is_some() {
        println!(
            "  welcomed       {:>14}   IM connections greeted with `welcome` (users {}0..{}{})",
            stats::grouped(t.incoming.welcomes),
            opts.user_prefix,
            opts.user_prefix,
            opts.connections - 1
        );
        println!(
            "  app pings      {:>14}   sent (other text frames read and ignored: {})",
            stats::grouped(t.pings),
            stats::grouped(t.incoming.im_text)
        );
    }
    if t.incoming.unexpected > 0 {
        let what = if opts.secret.is_some() {
            "binary messages"
        } else {
            "data messages"
        };
        println!(
            "  unexpected     {:>14}   {what} from the server (ignored)",
            stats::grouped(t.incoming.unexpected)
        );
    }
    let (Some(s), Some(pid)) = (server, opts.server_pid) else {
        return;
    };
    let rss = |v: Option<u64>| v.map_or("n/a".to_owned(), |b| format!("{:.2}", mib(b)));
    let fds = |v: Option<u64>| v.map_or("n/a".to_owned(), stats::grouped);
    println!();
    println!("  server pid {pid}");
    println!(
        "  rss baseline   {:>14}   MiB before connecting (open fds {})",
        rss(s.baseline.rss),
        fds(s.baseline.fds)
    );
    println!(
        "  rss held       {:>14}   MiB {} s after the last handshake (open fds {})",
        rss(s.held.rss),
        SETTLE.min(opts.hold).as_secs_f64(),
        fds(s.held.fds)
    );
    println!(
        "  rss end        {:>14}   MiB at the end of the hold (open fds {})",
        rss(s.end.rss),
        fds(s.end.fds)
    );
    println!(
        "  per connection {:>14}   bytes of server RSS, (held - baseline) / established",
        per_conn.map_or("n/a".to_owned(), |b| stats::grouped(
            b.max(0.0).round() as u64
        ) + if b < 0.0 {
            " (negative)"
        } else {
            ""
        })
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Parsed;

    #[test]
    fn vmrss_parsing() {
        let status =
            "Name:\tcourier\nVmPeak:\t  10000 kB\nVmRSS:\t    2048 kB\nRssAnon:\t 1000 kB\n";
        assert_eq!(parse_vmrss(status), Some(2048 * 1024));
        assert_eq!(parse_vmrss("VmRSS: 7 kB"), Some(7 * 1024));
        assert_eq!(parse_vmrss("Name:\tx\n"), None);
        assert_eq!(parse_vmrss("VmRSS:\tlots kB\n"), None);
        assert_eq!(parse_vmrss("VmRSS:\t12\n"), None);
        assert_eq!(parse_vmrss("VmRSS:\t12 MB\n"), None);
    }

    #[test]
    fn port_range_parsing() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("1024 1024"), Some((1024, 1024)));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("32768"), None);
        assert_eq!(parse_port_range("1 2 3"), None);
        assert_eq!(parse_port_range("x y"), None);
    }

    #[test]
    fn source_addresses_beyond_the_even_ports() {
        let lo: IpAddr = Ipv4Addr::LOCALHOST.into();
        // 28,232 ports: 14,116 even, less 1,024 headroom = 13,092 per source address.
        assert!(source_addresses(13_092, 28_232, lo).unwrap().is_empty());
        let two = source_addresses(13_093, 28_232, lo).unwrap();
        assert_eq!(
            two,
            [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)]
        );
        assert_eq!(source_addresses(19_000, 28_232, lo).unwrap().len(), 2);
        assert_eq!(source_addresses(26_185, 28_232, lo).unwrap().len(), 3);
        // A small range: 100 usable ports per address.
        let many = source_addresses(1_000, 2_248, lo).unwrap();
        assert_eq!(many.len(), 10);
        assert_eq!(many[9], Ipv4Addr::new(127, 0, 0, 11));
        // Crossing an octet boundary stays inside 127/8.
        let lots = source_addresses(300 * 100, 2_248, lo).unwrap();
        assert_eq!(lots[299], Ipv4Addr::new(127, 0, 1, 45));
        // Not loopback: no local source addresses to spread over; slow but possible up to
        // the whole range, refused beyond it.
        let remote: IpAddr = Ipv4Addr::new(10, 0, 0, 1).into();
        assert!(source_addresses(19_000, 28_232, remote).unwrap().is_empty());
        assert!(source_addresses(40_000, 28_232, remote)
            .unwrap_err()
            .contains("loopback"));
        assert!(
            source_addresses(40_000, 28_232, IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])).is_err()
        );
    }

    #[test]
    fn warning_only_for_one_source_past_the_even_ports() {
        assert!(slow_connect_warning(13_092, 28_232, &[]).is_none());
        assert!(slow_connect_warning(19_000, 28_232, &[])
            .unwrap()
            .contains("13092 even"));
        assert!(slow_connect_warning(19_000, 28_232, &[Ipv4Addr::new(127, 0, 0, 2)]).is_none());
    }

    #[test]
    fn round_robin_fills_sources_evenly() {
        assert_eq!(source_for(5, &[]), None);
        let sources = source_addresses(5_000, 4_048, Ipv4Addr::LOCALHOST.into()).unwrap();
        assert_eq!(sources.len(), 5);
        let mut per = [0usize; 5];
        for g in 0..5_000 {
            let ip = source_for(g, &sources).unwrap();
            per[usize::from(ip.octets()[3]) - 2] += 1;
        }
        assert!(per.iter().all(|&n| n == 1_000), "{per:?}");
    }

    #[test]
    fn fd_limit_check() {
        assert!(check_fd_limit(19_000, 1, 20_000).is_ok());
        assert!(check_fd_limit(19_967, 1, 20_000).is_ok());
        let err = check_fd_limit(19_968, 1, 20_000).unwrap_err();
        assert!(err.contains("20000"), "{err}");
        assert!(err.contains("--connections 19967 or fewer"), "{err}");
        assert!(err.contains("several courier-bench processes"), "{err}");
        let err = check_fd_limit(50_000, 1, 20_000).unwrap_err();
        assert!(err.contains("3 x --connections 16667"), "{err}");
    }

    #[test]
    fn failure_kinds() {
        let io = |k| io::Error::from(k);
        assert_eq!(
            io_kind(&io(io::ErrorKind::ConnectionRefused)),
            Kind::Refused
        );
        assert_eq!(io_kind(&io(io::ErrorKind::ConnectionReset)), Kind::Reset);
        assert_eq!(io_kind(&io(io::ErrorKind::BrokenPipe)), Kind::Reset);
        assert_eq!(io_kind(&io(io::ErrorKind::TimedOut)), Kind::Timeout);
        assert_eq!(
            io_kind(&io::Error::from_raw_os_error(libc::EADDRNOTAVAIL)),
            Kind::Other
        );
        assert_eq!(handshake_kind(&HandshakeError::Closed), Kind::Closed);
        let rejected = HandshakeError::Rejected {
            status: Some(503),
            line: "HTTP/1.1 503 Service Unavailable".into(),
        };
        assert_eq!(handshake_kind(&rejected), Kind::Status(503));
        assert_eq!(
            handshake_kind(&HandshakeError::Invalid("x".into())),
            Kind::Other
        );

        let mut f = Failures::default();
        f.add(Kind::Status(503), || "first".into());
        f.add(Kind::Status(503), || {
            unreachable!("only the first message is formatted")
        });
        f.add(Kind::Refused, || unreachable!());
        let mut g = Failures::default();
        g.add(Kind::Status(429), || "second".into());
        g.add(Kind::Timeout, || "third".into());
        f.merge(&g);
        assert_eq!(f.total(), 5);
        assert_eq!(f.first.as_deref(), Some("first"));
        assert_eq!(
            f.summary(),
            "refused 1, reset 0, timeout 1, closed 0, other 0, status 429: 1, status 503: 2"
        );
        assert_eq!(
            f.json(),
            "{\"total\":5,\"refused\":1,\"reset\":0,\"timeout\":1,\"closed\":0,\"other\":0,\
             \"status\":{\"429\":1,\"503\":2}}"
        );
    }

    #[test]
    fn welcome_detection() {
        assert!(is_welcome(
            br#"{"type":"welcome","user":"u1","conn":"7","heartbeat_ms":25000,"inbox_seq":0}"#
        ));
        assert!(is_welcome(br#"{"user":"welcome","type":"welcome"}"#));
        assert!(!is_welcome(br#"{"type":"pong","heartbeat_ms":25000}"#));
        assert!(!is_welcome(br#"{"type":"msg","body":"\"welcome\""}"#));
        assert!(!is_welcome(b"\"welcome\""));
    }

    #[test]
    fn pings_only_when_the_run_outlasts_the_idle_timeout() {
        let s = Duration::from_secs;
        // 10,000 at 5,000/s is a 2 s storm: a 5 s hold needs no ping, a 59 s one does.
        assert_eq!(ping_interval(true, s(20), s(5), 10_000, 5_000), None);
        assert_eq!(
            ping_interval(true, s(20), s(59), 10_000, 5_000),
            Some(s(20))
        );
        // A slow storm counts too.
        assert_eq!(ping_interval(true, s(20), s(10), 19_000, 300), Some(s(20)));
        assert_eq!(ping_interval(false, s(20), s(600), 10, 5_000), None);
        assert_eq!(ping_interval(true, s(0), s(600), 10, 5_000), None);
    }

    #[test]
    fn bytes_per_connection_is_signed() {
        assert_eq!(bytes_per_connection(1_000, 11_000, 10), Some(1_000.0));
        assert_eq!(bytes_per_connection(11_000, 1_000, 10), Some(-1_000.0));
        assert_eq!(bytes_per_connection(1_000, 2_000, 0), None);
    }

    #[test]
    fn flags_parse() {
        let argv: Vec<String> = [
            "--url",
            "ws://127.0.0.1:9/x",
            "--connections",
            "19k",
            "--hold=5",
            "--server-pid",
            "42",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let Ok(Parsed::Run(v)) = args::parse(&argv, FLAGS) else {
            panic!("flags rejected");
        };
        let o = opts(&v).unwrap();
        assert!(o.secret.is_none());
        assert_eq!(o.connections, 19_000);
        assert_eq!(o.rate, 5_000);
        assert_eq!(o.hold, Duration::from_secs(5));
        assert_eq!(o.server_pid, Some(42));
        assert_eq!(o.threads, 1);
        let im: Vec<String> = [
            "--jwt-secret",
            "s",
            "--user-prefix",
            "bench-",
            "--hold",
            "120",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let Ok(Parsed::Run(v)) = args::parse(&im, FLAGS) else {
            panic!("flags rejected");
        };
        let o = opts(&v).unwrap();
        assert_eq!(o.secret.as_deref(), Some("s"));
        assert_eq!(o.user_prefix, "bench-");
        assert_eq!(o.ping, Some(Duration::from_secs(20)));
        let bad: Vec<String> = ["--jwt-secret", "s", "--user-prefix", "a b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let Ok(Parsed::Run(v)) = args::parse(&bad, FLAGS) else {
            panic!("flags rejected");
        };
        assert!(opts(&v).unwrap_err().contains("user ids"));
        let argv = vec!["--server-pid".to_owned(), "0".to_owned()];
        let Ok(Parsed::Run(v)) = args::parse(&argv, FLAGS) else {
            panic!("flags rejected");
        };
        assert!(opts(&v).is_err());
    }
}
