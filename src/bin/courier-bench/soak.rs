//! `courier-bench soak`: a bounded soak against a running `courier serve` on loopback. For
//! `--seconds`, a pool of users connect, chat and drop their connections the way phones do
//! (a clean close, a FIN without a close frame, a reset), resync on every reconnect, and
//! a few groups gain and lose members; beside them a few abusive clients do what issue 13
//! found could hurt the server. Then every user replays its whole inbox once more, and
//! every message the server acknowledged with `sent` must be in its recipients' inboxes and
//! its sender's, once. Meanwhile [`crate::health`] watches the server's memory, open
//! files and WAL from outside (with `--server-pid`) and fails the run if they keep growing.
//!
//! One thread drives every connection on one mio poll: at the soak's modest rates the
//! client is never the bottleneck, and one thread keeps every decision (who is connected,
//! which group has whom) in plain fields without locks. A second thread samples the
//! server, so a slow `/healthz` never stalls the load.
//!
//! The abusers, each on a source address of its own (127.0.0.2-5) so a per-address limit
//! on them never locks out the users on 127.0.0.1:
//! - *hog*: fills its own dm with 16 KB bodies of U+0001 (six bytes each once escaped in
//!   JSON), then, on a connection with a 4 KiB receive buffer, sends 100 `history`
//!   requests at once and more at --hog-rate, and never reads (finding 1);
//! - *drip*: starts an 8 KiB text frame and sends its payload one byte every few seconds
//!   (finding 3's half-received message);
//! - *forge*: upgrades with forged tokens at `--forge-rate` (finding 10); a `101` for any of
//!   them fails the soak;
//! - *flood*: an authenticated connection sending pings and acks with a `rid` at
//!   `--flood-rate`, far past the server's `--rate` (finding 4).
//!
//! How the server treats them (429, 1008, ...) is counted, not judged: the point is that
//! the users and the server stay well. Each reconnects after the server drops it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use courier::client::session::{Config, ErrorReply, Event, Liveness, Sent, Session};
use courier::ws::conn::{Conn, Event as WsEvent};
use courier::ws::frame::{close_code, OpCode};
use mio::{Events, Interest, Poll, Token};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::args::{self, Flag};
use crate::client::{self, Client, HandshakeError, Phase, Target};
use crate::health::{self, Limits, Probe, Sample, Verdict};
use crate::imclient::{self, run_id, splitmix64, user_index};
use crate::stats::{self, Histogram, Progress};

pub const FLAGS: &[Flag] = &[
    imclient::URL,
    Flag {
        name: "jwt-secret",
        arg: "S",
        default: "none",
        help: "the server's token secret: every user's token is minted with it (required)",
    },
    Flag {
        name: "seconds",
        arg: "T",
        default: "60",
        help: "how long the load runs (the final replay and the checks come after)",
    },
    Flag {
        name: "users",
        arg: "U",
        default: "200",
        help: "users in the pool, one connection each at a time",
    },
    Flag {
        name: "user-prefix",
        arg: "P",
        default: "soak",
        help: "user ids are P0 .. P{U-1}; the abusers are P-hog0, P-drip0, ...",
    },
    Flag {
        name: "rate",
        arg: "R",
        default: "100",
        help: "messages per second sent in total (1:1 and group), paced evenly",
    },
    Flag {
        name: "group-share",
        arg: "PCT",
        default: "20",
        help: "percent of the messages that go to a group",
    },
    Flag {
        name: "groups",
        arg: "G",
        default: "4",
        help: "groups; each has a fixed core (its owner and the next --core-members - 1 \
               users) and members who come and go",
    },
    Flag {
        name: "core-members",
        arg: "K",
        default: "4",
        help: "members of each group that never leave: every group message must reach them",
    },
    Flag {
        name: "group-every",
        arg: "SECS",
        default: "0.5",
        help: "one membership change (an add by the owner, or a leave) this often",
    },
    Flag {
        name: "life",
        arg: "MIN-MAX",
        default: "2-20",
        help: "a user's connection lives a random time in this range (seconds), then ends",
    },
    Flag {
        name: "offline",
        arg: "MIN-MAX",
        default: "0.1-3",
        help: "a user stays offline a random time in this range (seconds) before reconnecting",
    },
    Flag {
        name: "abrupt",
        arg: "PCT",
        default: "50",
        help: "percent of the connection ends without a close frame (half of them a FIN, \
               half a reset); the rest close 1000",
    },
    Flag {
        name: "abusers",
        arg: "LIST",
        default: "hog,drip,forge,flood",
        help: "which abusive clients run beside the load (comma-separated; none for none)",
    },
    Flag {
        name: "hogs",
        arg: "N",
        default: "2",
        help: "hog: connections at once, each its own user with its own heavy dm",
    },
    Flag {
        name: "hog-messages",
        arg: "N",
        default: "100",
        help: "hog: messages it stores in its own dm before asking for their history",
    },
    Flag {
        name: "hog-body",
        arg: "B",
        default: "16000",
        help: "hog: bytes per message, all U+0001 (six bytes each in JSON)",
    },
    Flag {
        name: "hog-rate",
        arg: "R",
        default: "20",
        help: "hog: history requests per second after the first 100, which go at once, \
               written as long as the socket takes them",
    },
    Flag {
        name: "drip-every",
        arg: "SECS",
        default: "2",
        help: "drip: seconds between the bytes of the half-sent message",
    },
    Flag {
        name: "forge-rate",
        arg: "R",
        default: "50",
        help: "forge: upgrades with forged tokens per second",
    },
    Flag {
        name: "flood-rate",
        arg: "R",
        default: "1000",
        help: "flood: requests per second (the server's --rate is 200 by default)",
    },
    Flag {
        name: "server-pid",
        arg: "PID",
        default: "0",
        help: "the server's process: sample its RSS and open files and judge their growth \
               (0: no health checks)",
    },
    Flag {
        name: "data",
        arg: "DIR",
        default: "",
        help: "the server's data folder: sample the WAL and database sizes",
    },
    Flag {
        name: "sample-every",
        arg: "SECS",
        default: "2",
        help: "seconds between health samples",
    },
    Flag {
        name: "rss-growth",
        arg: "PCT",
        default: "20",
        help: "RSS may grow this much (percent of the middle third's median) from the \
               middle to the last third's median...",
    },
    Flag {
        name: "rss-slack",
        arg: "B",
        default: "16MiB",
        help: "...or this many bytes, whichever is larger",
    },
    Flag {
        name: "rss-spike",
        arg: "B",
        default: "32MiB",
        help: "after the first third, RSS may rise this far above the last third's median",
    },
    Flag {
        name: "fd-slack",
        arg: "N",
        default: "64",
        help: "open files may grow this much from the middle to the last third (medians)",
    },
    Flag {
        name: "wal-max",
        arg: "B",
        default: "64MiB",
        help: "the WAL may never be larger after the first third",
    },
    Flag {
        name: "wal-growth",
        arg: "B",
        default: "16MiB",
        help: "the WAL may grow this much from the middle to the last third",
    },
    Flag {
        name: "healthz-max",
        arg: "T",
        default: "500ms",
        help: "a /healthz answer slower than this after the first third fails the run",
    },
    Flag {
        name: "rss-ceiling",
        arg: "B",
        default: "1GiB",
        help: "stop the load and fail as soon as the server's RSS passes this (protects \
               the machine from a server that balloons)",
    },
    Flag {
        name: "samples",
        arg: "FILE",
        default: "",
        help: "write every health sample to FILE (tab-separated)",
    },
    Flag {
        name: "seed",
        arg: "N",
        default: "1",
        help: "seeds every random choice of the load",
    },
    imclient::JSON,
];

const ABOUT: &str = "\
A bounded soak of courier's IM server, on loopback only. For --seconds, U users (tokens
minted here from --jwt-secret) connect, send 1:1 and group messages at --rate, and end
their connections after a random --life (a close 1000, a FIN without a close frame, or a
reset), coming back after a random --offline time with a sync from their cursor (every
push acked); group owners add members and members leave. A `sent` is recorded as the
server's acknowledgement. After the load, every user connects once more and replays its
whole inbox with sync: every acknowledged message must be in the inbox of its recipient
(a 1:1 message) or of every core member (a group message), and in its sender's, exactly
once, and every inbox must be gap-free.

Beside them run abusive clients (--abusers), each from its own 127.0.0.x: hog (fills its
own dm with --hog-messages bodies of U+0001, then on a connection with a 4 KiB receive
buffer sends 100 history requests at once, more at --hog-rate, and never reads), drip (a
text frame begun and sent one byte per --drip-every), forge (upgrades with forged tokens
at --forge-rate; a 101 fails the run), flood (pings and acks at --flood-rate). How the
server answers them is counted, not judged; each reconnects when dropped.

With --server-pid (and --data), the server's RSS, open files, WAL and database size and
a /healthz probe are sampled every --sample-every seconds. The run fails when, between the
middle and the last third of the load, the median RSS grew by more than --rss-growth
percent or --rss-slack (whichever is larger), the median of open files by more than
--fd-slack, or the WAL by more than --wal-growth or past --wal-max; when RSS rose more
than --rss-spike above the last third's median after the first third; when /healthz took
over --healthz-max after the first third, or did not answer at all; when the server died;
or when its RSS passed --rss-ceiling (the load stops there). scripts/soak.sh runs it all
against a fresh server.

Exits 1 on a failed check, 2 on bad flags.";

/// Largest message accepted from the server: a sync page is many frames, never one big
/// one; a `group` reply names at most a few dozen members here.
const MAX_MESSAGE: usize = 4 << 20;
const READ_BUF: usize = 256 << 10;
/// The loop's longest sleep, and how often the timers run.
const STEP_MS: u64 = 10;
/// Every session's timers (pings, resends after transient errors, the silence check).
const TICK_MS: u64 = 250;
/// A connect plus handshake that takes longer is dropped and retried.
const CONNECT_LIMIT_MS: u64 = 10_000;
/// How long a clean close may wait for the server's close frame.
const CLOSE_WAIT_MS: u64 = 2_000;
/// After the load: longest wait for every user to be back with nothing pending.
const DRAIN_LIMIT_MS: u64 = 30_000;
/// Longest the final inbox replays may take, all users together.
const VERIFY_LIMIT_MS: u64 = 180_000;
/// Replays running at once.
const VERIFY_PARALLEL: usize = 64;
/// A replay that fails this often (errors, lost connections) gives up.
const VERIFY_RETRIES: u32 = 5;
/// A user with this many sends awaiting `sent` is passed over by the pacer.
const MAX_USER_BACKLOG: usize = 64;
/// The pacer makes up at most this much time of its schedule at once after a stall;
/// further behind, the slots are skipped (and counted), not sent in a burst.
const CATCH_UP_SECS: f64 = 0.1;
/// Members beyond the core a group may have at once (the adds stop there).
const MAX_EXTRAS: usize = 12;
/// Bodies are the stamp padded to a random length up to this.
const MAX_BODY: usize = 256;
/// A reconnect after the server dropped an abuser or refused a user.
const RETRY_MS: u64 = 1_000;
/// The hog's receive buffer (the kernel doubles it): small enough that the server's
/// replies back up into its own queues at once.
const HOG_RCVBUF: usize = 4096;
/// History requests the hog sends at once on a new connection: all of them reach the
/// server before the first reply is ready, which is what finding 1's attacker did.
const HOG_BURST: u64 = 100;
/// The hog drops its connection and starts over this often: a fresh connection gets a
/// fresh per-connection budget from the server, as an attacker's would.
const HOG_LIFE_MS: u64 = 20_000;
/// What the hog and the flood keep queued on their side at most: the kernel's send buffer
/// is the real queue; this only bounds the client's own memory.
const ABUSER_OUT_CAP: usize = 64 << 10;
/// The drip's frame: a length the server must accept for a request, so the frame header
/// alone is no reason to refuse it.
const DRIP_FRAME: usize = 8 << 10;
/// Forged upgrades in flight at once; a forged connection not answered within
/// `FORGE_LIMIT_MS` is dropped.
const FORGE_SLOTS: usize = 64;
const FORGE_LIMIT_MS: u64 = 5_000;
/// Source addresses of the abusers (all of 127/8 is this host on Linux).
const FORGE_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const HOG_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const DRIP_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
const FLOOD_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);
const DRIPPERS: usize = 2;
const FLOODERS: usize = 1;
/// Problems spelled out in the report; counters hold the rest.
const MAX_PROBLEMS: usize = 10;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Abusers {
    hog: bool,
    drip: bool,
    forge: bool,
    flood: bool,
}

#[derive(Debug)]
pub struct Opts {
    target: Target,
    secret: String,
    seconds: Duration,
    users: usize,
    prefix: String,
    rate: f64,
    group_share: u64,
    groups: usize,
    core: usize,
    group_every_ms: u64,
    life_ms: (u64, u64),
    offline_ms: (u64, u64),
    abrupt: u64,
    abusers: Abusers,
    hogs: usize,
    hog_messages: usize,
    hog_body: usize,
    hog_rate: f64,
    drip_every_ms: u64,
    forge_rate: f64,
    flood_rate: f64,
    server_pid: u32,
    data: Option<PathBuf>,
    sample_every: Duration,
    limits: Limits,
    rss_ceiling: u64,
    samples: Option<PathBuf>,
    seed: u64,
    json: bool,
    names: Vec<String>,
}

fn range_ms(values: &args::Values, name: &str) -> Result<(u64, u64), String> {
    let s = values.get(name);
    let bad = || format!("--{name}: {s:?} is not a range of seconds like 2-20");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let secs = |v: &str| -> Result<u64, String> {
        match v.trim().parse::<f64>() {
            Ok(v) if (0.0..1e6).contains(&v) => Ok((v * 1e3) as u64),
            _ => Err(bad()),
        }
    };
    let (a, b) = (secs(a)?, secs(b)?);
    if a > b {
        return Err(bad());
    }
    Ok((a, b))
}

fn percent(values: &args::Values, name: &str) -> Result<u64, String> {
    let n = values.count(name, 0)?;
    if n > 100 {
        return Err(format!("--{name} is a percentage (0 to 100)"));
    }
    Ok(n as u64)
}

fn parse_abusers(list: &str) -> Result<Abusers, String> {
    let mut a = Abusers::default();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match name {
            "none" => {}
            "hog" => a.hog = true,
            "drip" => a.drip = true,
            "forge" => a.forge = true,
            "flood" => a.flood = true,
            other => {
                return Err(format!(
                    "--abusers: unknown {other:?} (hog, drip, forge, flood, none)"
                ))
            }
        }
    }
    Ok(a)
}

fn opts(values: &args::Values) -> Result<Opts, String> {
    let secret = match values.get("jwt-secret") {
        "none" | "" => {
            return Err("--jwt-secret is required: the secret the server signs tokens with".into())
        }
        s => s.to_owned(),
    };
    let target = Target::parse(values.get("url"))?;
    // The abusers are attacks: they go to this machine and nowhere else.
    if !target.addr.ip().is_loopback() {
        return Err(format!(
            "{}: the soak runs against a server on this machine only (a loopback address)",
            target.url
        ));
    }
    let users = values.count("users", 2)?;
    let prefix = values.get("user-prefix").to_owned();
    let longest = format!("{prefix}-drip{DRIPPERS}");
    for id in [format!("{prefix}{}", users - 1), longest] {
        if !courier::im::auth::valid_user_id(&id) {
            return Err(format!(
                "--user-prefix {prefix:?}: user ids like {id:?} must be 1 to 64 of [A-Za-z0-9_.-]"
            ));
        }
    }
    let groups = values.count("groups", 0)?;
    let core = values.count("core-members", 1)?;
    if groups * core + 2 > users {
        return Err(format!(
            "--groups {groups} x --core-members {core} needs at least {} users: the cores \
             are distinct, and the members who come and go are taken from the rest",
            groups * core + 2
        ));
    }
    let seconds = values.duration("seconds")?;
    if seconds.is_zero() {
        return Err("--seconds must be above 0".into());
    }
    let rate = |name: &str| -> Result<f64, String> {
        let s = values.get(name);
        match s.parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
            _ => Err(format!(
                "--{name}: {s:?} is not a rate (a number per second)"
            )),
        }
    };
    let positive_ms = |name: &str| -> Result<u64, String> {
        let ms = values.duration(name)?.as_millis() as u64;
        if ms == 0 {
            return Err(format!("--{name} must be above 0"));
        }
        Ok(ms)
    };
    let server_pid = values.count("server-pid", 0)?;
    let data = match values.get("data") {
        "" => None,
        d => Some(PathBuf::from(d)),
    };
    let samples = match values.get("samples") {
        "" => None,
        f => Some(PathBuf::from(f)),
    };
    let sample_every = values.duration("sample-every")?;
    if sample_every < Duration::from_millis(100) {
        return Err("--sample-every must be at least 0.1".into());
    }
    let seed = values
        .get("seed")
        .parse()
        .map_err(|_| format!("--seed: {:?} is not a whole number", values.get("seed")))?;
    let size = |name: &str| -> Result<u64, String> { Ok(values.size(name)? as u64) };
    let ceiling = {
        // GiB is not among args' suffixes; it is the natural unit here.
        let s = values.get("rss-ceiling");
        match s.strip_suffix("GiB").or_else(|| s.strip_suffix('G')) {
            Some(g) => g
                .trim()
                .parse::<u64>()
                .map(|g| g << 30)
                .map_err(|_| format!("--rss-ceiling: {s:?} is not a size"))?,
            None => size("rss-ceiling")?,
        }
    };
    Ok(Opts {
        secret,
        seconds,
        names: (0..users).map(|i| format!("{prefix}{i}")).collect(),
        users,
        prefix,
        rate: rate("rate")?,
        group_share: percent(values, "group-share")?,
        groups,
        core,
        group_every_ms: positive_ms("group-every")?,
        life_ms: range_ms(values, "life")?,
        offline_ms: range_ms(values, "offline")?,
        abrupt: percent(values, "abrupt")?,
        abusers: parse_abusers(values.get("abusers"))?,
        hogs: values.count("hogs", 1)?,
        hog_messages: values.count("hog-messages", 1)?,
        hog_body: values.size("hog-body")?,
        hog_rate: rate("hog-rate")?,
        drip_every_ms: positive_ms("drip-every")?,
        forge_rate: rate("forge-rate")?,
        flood_rate: rate("flood-rate")?,
        server_pid: u32::try_from(server_pid).map_err(|_| "--server-pid: too large")?,
        data,
        sample_every,
        limits: Limits {
            rss_growth: percent(values, "rss-growth")? as f64 / 100.0,
            rss_slack: size("rss-slack")?,
            rss_spike: size("rss-spike")?,
            healthz_max_ms: values.duration("healthz-max")?.as_secs_f64() * 1e3,
            fd_slack: values.count("fd-slack", 0)? as u64,
            wal_max: size("wal-max")?,
            wal_growth: size("wal-growth")?,
        },
        rss_ceiling: ceiling,
        samples,
        seed,
        json: values.switch("json"),
        target,
    })
}

/// Entry point; returns the process exit code.
pub fn main(argv: &[String]) -> i32 {
    let opts = match args::options("soak", ABOUT, FLAGS, argv, opts) {
        Ok(opts) => opts,
        Err(code) => return code,
    };
    let need = 2 * opts.users + FORGE_SLOTS + VERIFY_PARALLEL + 64;
    if let Err(e) = client::ensure_fd_limit(need as libc::rlim_t) {
        eprintln!("courier-bench soak: {e}");
        return 1;
    }
    run(&opts)
}

// ---------------------------------------------------------------------------------------
// The run: the sampler thread beside the load loop, then the checks.

/// What the sampler and the load loop share.
#[derive(Default)]
struct Watch {
    /// The load loop is done: the sampler stops.
    stop: AtomicBool,
    /// The server exited.
    died: AtomicBool,
    /// The server's RSS passed --rss-ceiling.
    ceiling: AtomicBool,
    samples: Mutex<Vec<Sample>>,
}

impl Watch {
    fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn last(&self) -> Option<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last()
            .copied()
    }
}

fn sampler(opts: &Opts, watch: &Watch, t0: Instant) {
    let probe = Probe::new(opts.server_pid, opts.data.clone(), opts.target.addr);
    let mut next = t0;
    while !watch.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep((next - now).min(Duration::from_millis(100)));
            continue;
        }
        match probe.sample(now.duration_since(t0).as_secs_f64()) {
            Ok(s) => {
                if s.rss > opts.rss_ceiling {
                    watch.ceiling.store(true, Ordering::Relaxed);
                }
                watch
                    .samples
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(s);
            }
            Err(health::Gone::Exited) => {
                watch.died.store(true, Ordering::Relaxed);
                return;
            }
        }
        // A slow /healthz does not make the sampler take a burst of samples after it.
        next = (next + opts.sample_every).max(Instant::now());
    }
}

fn run(opts: &Opts) -> i32 {
    let watch = Watch::default();
    let mut progress = Progress::new();
    let t0 = Instant::now();
    let mut soak = match Soak::new(opts, t0) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("courier-bench soak: {e}");
            return 1;
        }
    };
    std::thread::scope(|scope| {
        if opts.server_pid != 0 {
            std::thread::Builder::new()
                .name("soak-sampler".into())
                .spawn_scoped(scope, || sampler(opts, &watch, t0))
                .expect("spawn the sampler thread");
        }
        soak.drive(&watch, &mut progress);
        watch.stop.store(true, Ordering::Relaxed);
    });
    progress.finish();

    let samples = watch.samples();
    if let Some(path) = &opts.samples {
        if let Err(e) = health::write_tsv(path, &samples) {
            eprintln!("courier-bench soak: writing {}: {e}", path.display());
        }
    }
    let load_secs = soak.load_ms.unwrap_or(soak.now_ms()) as f64 / 1e3;
    let health = (opts.server_pid != 0).then(|| health::judge(&samples, load_secs, &opts.limits));
    let check = soak.check();
    let died = watch.died.load(Ordering::Relaxed);
    let ceiling = watch.ceiling.load(Ordering::Relaxed);
    let mut failures: Vec<String> = Vec::new();
    if died {
        failures.push("the server exited during the soak".into());
    }
    if ceiling {
        failures.push(format!(
            "the server's RSS passed --rss-ceiling ({:.0} MiB) at {:.1} s; the load was \
             stopped there",
            health::mib(opts.rss_ceiling),
            load_secs
        ));
    }
    if let Some(h) = &health {
        failures.extend(h.failures.iter().cloned());
    }
    if !check.passed() {
        failures.push(format!(
            "acknowledged messages: {} missing, {} duplicated, {} stored under another mid, \
             {} inbox gaps, {} damaged entries, {} of {} inboxes not replayed",
            check.missing,
            check.duplicated,
            check.wrong_mid,
            check.gaps,
            check.corrupt,
            check.users - check.verified_users,
            check.users
        ));
    }
    if check.acknowledged == 0 {
        failures.push("no message was acknowledged: the load did not run".into());
    }
    if let Some(n) = soak.c.forge.get("101 (accepted)") {
        failures.push(format!("{n} forged token(s) were ACCEPTED with 101"));
    }
    if soak.c.unauthorized > 0 {
        failures.push(format!(
            "{} user upgrade(s) got 401: is --jwt-secret the server's secret?",
            soak.c.unauthorized
        ));
    }
    if opts.json {
        print_json(opts, &soak, &check, health.as_ref(), &failures, load_secs);
    } else {
        print_report(opts, &soak, &check, health.as_ref(), &failures, load_secs);
    }
    for p in soak.c.problems.iter().chain(&check.problems) {
        eprintln!("courier-bench soak: {p}");
    }
    for f in &failures {
        eprintln!("courier-bench soak: FAILED: {f}");
    }
    i32::from(!failures.is_empty())
}

// ---------------------------------------------------------------------------------------
// State

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Load,
    /// No more churn, sends or abusers: every user comes back until nothing is pending.
    Drain,
    /// Every user replays its inbox on a fresh connection.
    Verify,
    Done,
}

/// Where a connection slot stands (its socket's own handshake phase is the `Client`'s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    /// No connection; the next attempt at `at` (ms).
    Down { at: u64 },
    /// Connecting, handshaking or open since `since`; the load ends it at `until`.
    Up { since: u64, until: u64 },
    /// Our close 1000 is out; dropped when the server's arrives or at `until`.
    Closing { until: u64 },
}

/// Where a message went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dest {
    User(u32),
    Group(u16),
}

/// One message a user sent: message n of user i is `sends[n - 1]`, and its cid ends in
/// `.n` (the session's counter).
struct SendRec {
    dest: Dest,
    at_ms: u64,
    /// The mid of its `sent`.
    mid: Option<u64>,
}

/// A group request in flight on a user's connection, by rid.
#[derive(Clone, Copy, Debug)]
enum Op {
    Create(usize),
    Add(usize),
    Leave(usize),
}

struct User {
    name: String,
    address: String,
    token: String,
    /// One session for the whole run: its cursor and outbox outlive every connection.
    session: Session,
    conn: Option<Client>,
    link: Link,
    welcomed: bool,
    sends: Vec<SendRec>,
    ops: Vec<(String, Op)>,
    next_rid: u64,
    replay: Replay,
}

struct Group {
    gid: Option<String>,
    core: Vec<u32>,
    /// Members beyond the core, as far as the replies told.
    extras: Vec<u32>,
    creating: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Hog,
    Drip,
    Flood,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Hog => "hog",
            Kind::Drip => "drip",
            Kind::Flood => "flood",
        }
    }

    fn source(self) -> Ipv4Addr {
        match self {
            Kind::Hog => HOG_SOURCE,
            Kind::Drip => DRIP_SOURCE,
            Kind::Flood => FLOOD_SOURCE,
        }
    }
}

struct Abuser {
    kind: Kind,
    name: String,
    token: String,
    conn: Option<Client>,
    link: Link,
    /// Hog: every seed message is stored (it then hogs instead).
    seeded: bool,
    seed_acks: usize,
    /// Requests or bytes written on this connection (the pacing's count).
    written: u64,
    /// Hog and flood: when this connection opened; drip: the next byte.
    clock_ms: u64,
}

struct Forge {
    conn: Client,
    since: u64,
}

/// A user's final replay of its inbox.
#[derive(Default)]
struct Replay {
    /// Entries by seq.
    entries: BTreeMap<u64, InboxEntry>,
    head: u64,
    /// The last seq of the pages answered so far: a retry resumes after it.
    after: u64,
    rid: u64,
    done: bool,
    failed: bool,
    tries: u32,
    running: bool,
    /// Two different messages at one seq.
    conflicts: u64,
}

/// An inbox entry as the final replay saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InboxEntry {
    pub mid: u64,
    pub origin: Origin,
}

/// What an entry is to the soak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Message n of user `sender` in this run.
    Ours { sender: u32, n: u64 },
    /// Not this run's: a group change, another run's message, another client's.
    Foreign,
    /// This run's stamp that contradicts the entry (`from` is not the stamped sender).
    Corrupt,
}

/// What the load counted.
#[derive(Default)]
struct Counts {
    connects: u64,
    welcomes: u64,
    /// Our ends of user connections, by how.
    churned: BTreeMap<&'static str, u64>,
    /// User connections that ended otherwise, by why (server close codes, refusals).
    user_ends: BTreeMap<String, u64>,
    unauthorized: u64,
    sends: u64,
    acked: u64,
    acked_group: u64,
    delivered: u64,
    syncs: u64,
    sent_hist: Histogram,
    skipped: u64,
    errors: BTreeMap<String, u64>,
    group_created: u64,
    group_added: u64,
    group_left: u64,
    /// Per abuser kind: connections and how they ended.
    abuse: BTreeMap<String, u64>,
    /// Forged upgrades by answer.
    forge: BTreeMap<String, u64>,
    forge_tries: u64,
    /// Flood: the replies it got, by kind.
    flood_replies: BTreeMap<String, u64>,
    hog_requests: u64,
    drip_bytes: u64,
    unacked_at_end: u64,
    problems: Vec<String>,
}

impl Counts {
    fn problem(&mut self, what: impl FnOnce() -> String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(what());
        }
    }
}

fn bump<K: Ord>(map: &mut BTreeMap<K, u64>, key: K) {
    *map.entry(key).or_default() += 1;
}

/// How a connection ended, from its reading side.
#[derive(Debug)]
enum End {
    Closed(Option<u16>),
    Eof,
    Error(String),
}

impl End {
    fn label(&self) -> String {
        match self {
            End::Closed(Some(code)) => format!("close {code}"),
            End::Closed(None) => "close (no code)".into(),
            End::Eof => "EOF without a close frame".into(),
            End::Error(e) => e.clone(),
        }
    }
}

struct Soak<'a> {
    opts: &'a Opts,
    run: u32,
    rng: u64,
    t0: Instant,
    poll: Poll,
    events: Events,
    rbuf: Vec<u8>,
    texts: Vec<Vec<u8>>,
    users: Vec<User>,
    groups: Vec<Group>,
    abusers: Vec<Abuser>,
    forges: Vec<Option<Forge>>,
    /// Whether binding to 127.0.0.x works here; when not, every client uses the default
    /// source address.
    sources: bool,
    stage: Stage,
    /// When the load ended (ms), and when the drain and the verify began.
    load_ms: Option<u64>,
    stage_ms: u64,
    paced: u64,
    forged: u64,
    /// Replays with a connection now.
    replays: usize,
    next_tick: u64,
    next_group_op: u64,
    next_line: u64,
    hog_body: String,
    c: Counts,
}

fn pick(rng: &mut u64, (lo, hi): (u64, u64)) -> u64 {
    lo + splitmix64(rng) % (hi - lo + 1)
}

/// The counter at the end of a cid the session made (`<device>.<epoch>.<n>`).
fn cid_counter(cid: &str) -> Option<u64> {
    cid.rsplit('.').next()?.parse().ok()
}

/// The stamp at the front of every body: `soak.<run>.<sender>.<n>.`, padded.
fn stamp(run: u32, sender: u32, n: u64, len: usize, out: &mut String) {
    use std::fmt::Write as _;
    out.clear();
    let _ = write!(out, "soak.{run:08x}.{sender}.{n}.");
    while out.len() < len {
        out.push('~');
    }
}

fn parse_stamp(body: &str) -> Option<(u32, u32, u64)> {
    let mut f = body.strip_prefix("soak.")?.splitn(4, '.');
    let run = f.next()?;
    if run.len() != 8 {
        return None;
    }
    let run = u32::from_str_radix(run, 16).ok()?;
    let sender = f.next()?.parse().ok()?;
    let n = f.next()?.parse().ok()?;
    f.next()?;
    Some((run, sender, n))
}

/// Sets SO_LINGER to zero, so closing the socket sends RST instead of FIN.
fn reset_on_close(c: &Client) {
    let lin = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads a linger struct we own, with its size.
    unsafe {
        libc::setsockopt(
            c.stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&lin as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Forged token number `k`, claiming to be `user`: each shape a different fault the
/// server must refuse before the upgrade.
fn forged_token(k: u64, user: &str, secret: &str, now_secs: u64) -> String {
    let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s);
    match k % 5 {
        // Signed with another secret.
        0 => courier::im::auth::issue(user, 3600, b"not-the-servers-secret", now_secs),
        // alg none, no signature.
        1 => format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&format!(r#"{{"sub":"{user}","exp":{}}}"#, now_secs + 3600))
        ),
        // The right secret, expired two hours ago (far past the leeway).
        2 => courier::im::auth::issue(user, 60, secret.as_bytes(), now_secs - 7200),
        // A valid token whose claims were swapped for another user's: the MAC no longer
        // matches.
        3 => {
            let real = courier::im::auth::issue(user, 3600, secret.as_bytes(), now_secs);
            let mut parts: Vec<&str> = real.split('.').collect();
            let claims = b64(&format!(
                r#"{{"sub":"{user}-admin","iat":{now_secs},"exp":{}}}"#,
                now_secs + 3600
            ));
            parts[1] = &claims;
            parts.join(".")
        }
        // Not a JWT at all.
        _ => format!("{}.{}", "A".repeat(20 + (k % 200) as usize), k),
    }
}

/// Reads whatever the socket holds: the complete text messages into `texts`, and how the
/// connection ended when it did.
fn pump(c: &mut Client, rbuf: &mut [u8], texts: &mut Vec<Vec<u8>>) -> Option<End> {
    loop {
        let n = match client::read(&mut c.stream, rbuf) {
            Ok(None) => return None,
            Ok(Some(0)) => return Some(End::Eof),
            Ok(Some(n)) => n,
            Err(e) => return Some(End::Error(io_label(&e))),
        };
        if let Some(end) = feed(c, &mut rbuf[..n], texts) {
            return Some(end);
        }
    }
}

/// Decodes `input` into `texts`; the end of the connection when a close completes.
fn feed(c: &mut Client, input: &mut [u8], texts: &mut Vec<Vec<u8>>) -> Option<End> {
    let mut pos = 0;
    while pos < input.len() {
        match c.ws.read(&mut input[pos..], &mut c.out) {
            Ok((used, event)) => {
                pos += used;
                match event {
                    None => break,
                    Some(WsEvent::Text(t)) => texts.push(t.to_vec()),
                    Some(WsEvent::Binary(_)) => {}
                    Some(WsEvent::Closed(code)) => {
                        // Our answer to the server's close goes out before the socket does.
                        let _ = c.flush();
                        return Some(End::Closed(code));
                    }
                }
            }
            Err(e) => return Some(End::Error(format!("protocol error from the server: {e}"))),
        }
    }
    None
}

fn io_label(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionReset => "reset by the server".into(),
        io::ErrorKind::BrokenPipe => "broken pipe".into(),
        _ => format!("I/O error: {e}"),
    }
}

/// One step of a client's connect and handshake; `Ok(true)` once the `101` is in.
fn handshake(
    c: &mut Client,
    request: impl FnOnce() -> Vec<u8>,
    rbuf: &mut [u8],
) -> Result<bool, HandshakeError> {
    if c.phase == Phase::Connecting {
        match c.finish_connect() {
            Ok(true) => {
                c.out.extend_from_slice(&request());
                c.phase = Phase::Handshaking;
            }
            Ok(false) => return Ok(false),
            Err(e) => return Err(HandshakeError::Io(e)),
        }
    }
    if c.phase == Phase::Handshaking {
        c.flush().map_err(HandshakeError::Io)?;
        return c.read_handshake(rbuf);
    }
    Ok(true)
}

fn handshake_label(e: &HandshakeError) -> String {
    match e {
        HandshakeError::Rejected {
            status: Some(code), ..
        } => format!("http {code}"),
        HandshakeError::Rejected { line, .. } => format!("refused: {line}"),
        HandshakeError::Closed => "closed during the handshake".into(),
        HandshakeError::Io(e) => io_label(e),
        HandshakeError::Invalid(why) => why.clone(),
    }
}

impl<'a> Soak<'a> {
    fn new(opts: &'a Opts, t0: Instant) -> Result<Soak<'a>, String> {
        let run = run_id();
        let mut rng = opts.seed ^ run;
        let users = opts
            .names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let mut seed = run ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                User {
                    name: name.clone(),
                    address: format!("user:{name}"),
                    token: client::mint_token(name, &opts.secret),
                    session: Session::new(Config::new("soak", splitmix64(&mut seed))),
                    conn: None,
                    // The first connections spread over the first two seconds.
                    link: Link::Down {
                        at: splitmix64(&mut rng) % 2_000,
                    },
                    welcomed: false,
                    sends: Vec::new(),
                    ops: Vec::new(),
                    next_rid: 1,
                    replay: Replay::default(),
                }
            })
            .collect();
        let groups = (0..opts.groups)
            .map(|g| Group {
                gid: None,
                core: (0..opts.core).map(|k| (g * opts.core + k) as u32).collect(),
                extras: Vec::new(),
                creating: false,
            })
            .collect();
        let mut abusers = Vec::new();
        let abuser = |kind: Kind, name: String| Abuser {
            kind,
            token: client::mint_token(&name, &opts.secret),
            name,
            conn: None,
            link: Link::Down { at: 500 },
            seeded: false,
            seed_acks: 0,
            written: 0,
            clock_ms: 0,
        };
        let p = &opts.prefix;
        if opts.abusers.hog {
            for k in 0..opts.hogs {
                abusers.push(abuser(Kind::Hog, format!("{p}-hog{k}")));
            }
        }
        if opts.abusers.drip {
            for k in 0..DRIPPERS {
                abusers.push(abuser(Kind::Drip, format!("{p}-drip{k}")));
            }
        }
        if opts.abusers.flood {
            for k in 0..FLOODERS {
                abusers.push(abuser(Kind::Flood, format!("{p}-flood{k}")));
            }
        }
        let poll = Poll::new().map_err(|e| format!("epoll_create: {e}"))?;
        Ok(Soak {
            opts,
            run: run as u32,
            rng,
            t0,
            poll,
            events: Events::with_capacity(1024),
            rbuf: vec![0u8; READ_BUF],
            texts: Vec::new(),
            users,
            groups,
            abusers,
            forges: (0..FORGE_SLOTS).map(|_| None).collect(),
            sources: true,
            stage: Stage::Load,
            load_ms: None,
            stage_ms: 0,
            paced: 0,
            forged: 0,
            replays: 0,
            next_tick: 0,
            next_group_op: 1_000,
            next_line: 5_000,
            hog_body: "\u{1}".repeat(opts.hog_body),
            c: Counts::default(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    fn abuser_token(&self, a: usize) -> Token {
        Token(self.users.len() + a)
    }

    fn forge_token(&self, k: usize) -> Token {
        Token(self.users.len() + self.abusers.len() + k)
    }

    /// A new nonblocking connection registered under `token`, from `source` when the
    /// machine lets us bind it.
    fn open(
        &mut self,
        token: Token,
        source: Option<Ipv4Addr>,
        rcvbuf: Option<usize>,
        seed: u32,
    ) -> io::Result<Client> {
        let addr = self.opts.target.addr;
        let ws = Conn::client(MAX_MESSAGE, seed);
        let mut c = match Client::connect_tuned(addr, source.filter(|_| self.sources), rcvbuf, ws) {
            Err(e) if source.is_some() && e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                // 127.0.0.x other than .1 is not ours here: everyone shares 127.0.0.1.
                self.sources = false;
                let ws = Conn::client(MAX_MESSAGE, seed);
                Client::connect_tuned(addr, None, rcvbuf, ws)?
            }
            other => other?,
        };
        self.poll.registry().register(
            &mut c.stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        Ok(c)
    }

    // -----------------------------------------------------------------------------------
    // The loop

    fn drive(&mut self, watch: &Watch, progress: &mut Progress) {
        let load_end = self.opts.seconds.as_millis() as u64;
        loop {
            let now = self.now_ms();
            if watch.died.load(Ordering::Relaxed) {
                self.load_ms.get_or_insert(now);
                self.c
                    .problem(|| format!("the server exited at {:.1} s", now as f64 / 1e3));
                self.stage = Stage::Done;
            }
            match self.stage {
                Stage::Load if now >= load_end || watch.ceiling.load(Ordering::Relaxed) => {
                    self.start_drain(now);
                }
                Stage::Drain if self.drained() || now >= self.stage_ms + DRAIN_LIMIT_MS => {
                    self.start_verify(now);
                }
                Stage::Verify
                    if self.users.iter().all(|u| u.replay.done || u.replay.failed)
                        || now >= self.stage_ms + VERIFY_LIMIT_MS =>
                {
                    self.stage = Stage::Done;
                }
                _ => {}
            }
            if self.stage == Stage::Done {
                break;
            }
            self.timers(now);
            if now >= self.next_line && !self.opts.json {
                progress.line(&self.progress_line(now, watch.last()));
                self.next_line += 5_000;
            }
            if let Err(e) = self
                .poll
                .poll(&mut self.events, Some(Duration::from_millis(STEP_MS)))
            {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                self.c.problem(|| format!("epoll: {e}"));
                break;
            }
            let tokens: Vec<usize> = self.events.iter().map(|e| e.token().0).collect();
            let now = self.now_ms();
            let (users, abusers) = (self.users.len(), self.abusers.len());
            for t in tokens {
                if t < users {
                    self.user_event(t, now);
                } else if t < users + abusers {
                    self.abuser_event(t - users, now);
                } else if t - users - abusers < FORGE_SLOTS {
                    self.forge_event(t - users - abusers);
                }
            }
        }
        // Whatever is still open goes now; the server sees resets, which it must survive.
        for u in &mut self.users {
            u.conn = None;
        }
        for a in &mut self.abusers {
            a.conn = None;
        }
    }

    fn progress_line(&self, now: u64, sample: Option<Sample>) -> String {
        let open = self
            .users
            .iter()
            .filter(|u| u.welcomed && matches!(u.link, Link::Up { .. }))
            .count();
        let churned: u64 = self.c.churned.values().sum();
        let health = sample.map_or(String::new(), |s| {
            format!(
                "  server rss {:.1} MiB files {} wal {:.1} MiB",
                health::mib(s.rss),
                s.fds,
                health::mib(s.wal.unwrap_or(0))
            )
        });
        let stage = match self.stage {
            Stage::Load => "load",
            Stage::Drain => "drain",
            Stage::Verify => "verify",
            Stage::Done => "done",
        };
        let replayed = self.users.iter().filter(|u| u.replay.done).count();
        let detail = if self.stage == Stage::Verify {
            format!("inboxes replayed {replayed}/{}", self.users.len())
        } else {
            format!(
                "sends {} acked {} online {open}/{} churned {} forged {}",
                stats::grouped(self.c.sends),
                stats::grouped(self.c.acked),
                self.users.len(),
                stats::grouped(churned),
                stats::grouped(self.c.forge_tries)
            )
        };
        format!("{:>7.1}s {stage:<6} {detail}{health}", now as f64 / 1e3)
    }

    fn timers(&mut self, now: u64) {
        for i in 0..self.users.len() {
            self.user_timer(i, now);
        }
        if now >= self.next_tick {
            self.next_tick = now + TICK_MS;
            for i in 0..self.users.len() {
                self.tick_user(i, now);
            }
        }
        if self.stage == Stage::Load {
            self.pace(now);
            if now >= self.next_group_op {
                self.next_group_op = now + self.opts.group_every_ms;
                self.group_op(now);
            }
            for a in 0..self.abusers.len() {
                self.abuser_timer(a, now);
            }
            self.forge_timer(now);
        }
    }

    // -----------------------------------------------------------------------------------
    // Users

    fn user_timer(&mut self, i: usize, now: u64) {
        match self.users[i].link {
            Link::Down { at } if now >= at => match self.stage {
                Stage::Load | Stage::Drain => self.connect_user(i, now),
                Stage::Verify => self.start_replay(i, now),
                Stage::Done => {}
            },
            Link::Up { since, until } => {
                let open = self.users[i]
                    .conn
                    .as_ref()
                    .is_some_and(|c| c.phase == Phase::Open);
                if !open && now >= since + CONNECT_LIMIT_MS {
                    self.user_lost(i, now, "no handshake within 10 s".into());
                } else if open && self.stage == Stage::Load && now >= until {
                    self.churn(i, now);
                }
            }
            Link::Closing { until } if now >= until => {
                self.users[i].conn = None;
                self.user_down(i, now);
            }
            _ => {}
        }
    }

    fn connect_user(&mut self, i: usize, now: u64) {
        let seed = (i as u32).wrapping_mul(0x85EB_CA6B) ^ now as u32;
        match self.open(Token(i), None, None, seed) {
            Ok(c) => {
                self.c.connects += 1;
                let u = &mut self.users[i];
                u.conn = Some(c);
                u.welcomed = false;
                let until = match self.stage {
                    Stage::Load => now + pick(&mut self.rng, self.opts.life_ms),
                    _ => u64::MAX,
                };
                u.link = Link::Up { since: now, until };
            }
            Err(e) => {
                bump(&mut self.c.user_ends, format!("connect: {}", io_label(&e)));
                self.users[i].link = Link::Down { at: now + RETRY_MS };
            }
        }
    }

    /// The load ends user i's connection: a close 1000, a FIN without a close frame, or
    /// a reset, as --abrupt says.
    fn churn(&mut self, i: usize, now: u64) {
        let roll = splitmix64(&mut self.rng) % 200;
        let u = &mut self.users[i];
        u.session.disconnected();
        Self::drop_ops(&mut self.groups, u);
        let Some(c) = u.conn.as_mut() else {
            return;
        };
        if roll >= 2 * self.opts.abrupt {
            bump(&mut self.c.churned, "close 1000");
            c.ws.close(close_code::NORMAL, "", &mut c.out);
            if c.flush().is_ok() {
                u.link = Link::Closing {
                    until: now + CLOSE_WAIT_MS,
                };
                return;
            }
        } else if roll >= self.opts.abrupt {
            bump(&mut self.c.churned, "FIN, no close frame");
            // Unread input would turn the close into a reset: read it first (it is in the
            // inbox; the next connection's sync brings it back).
            let mut scratch = Vec::new();
            let _ = pump(c, &mut self.rbuf, &mut scratch);
        } else {
            bump(&mut self.c.churned, "reset");
            reset_on_close(c);
        }
        u.conn = None;
        self.user_down(i, now);
    }

    /// User i has no connection now: the next one after an offline pause (none while
    /// draining).
    fn user_down(&mut self, i: usize, now: u64) {
        let pause = match self.stage {
            Stage::Load => pick(&mut self.rng, self.opts.offline_ms),
            _ => 0,
        };
        let u = &mut self.users[i];
        u.welcomed = false;
        u.link = Link::Down { at: now + pause };
    }

    /// The group requests that were in flight on a connection that is gone: their fate is
    /// unknown, so creating is allowed again (at worst an orphaned group results).
    fn drop_ops(groups: &mut [Group], u: &mut User) {
        for (_, op) in u.ops.drain(..) {
            if let Op::Create(g) = op {
                groups[g].creating = false;
            }
        }
    }

    fn user_lost(&mut self, i: usize, now: u64, why: String) {
        if self.stage == Stage::Verify {
            self.replay_lost(i, now, &why);
            return;
        }
        bump(&mut self.c.user_ends, why);
        let u = &mut self.users[i];
        u.conn = None;
        u.session.disconnected();
        Self::drop_ops(&mut self.groups, u);
        self.user_down(i, now);
    }

    fn user_event(&mut self, i: usize, now: u64) {
        let u = &mut self.users[i];
        let Some(c) = u.conn.as_mut() else {
            return;
        };
        if c.phase != Phase::Open {
            let token = &u.token;
            let target = &self.opts.target;
            match handshake(c, || target.request_with_token(token), &mut self.rbuf) {
                Ok(true) => self.user_open(i, now),
                Ok(false) => return,
                Err(e) => {
                    if matches!(
                        e,
                        HandshakeError::Rejected {
                            status: Some(401),
                            ..
                        }
                    ) {
                        self.c.unauthorized += 1;
                    }
                    let why = format!("upgrade: {}", handshake_label(&e));
                    if let Link::Up { .. } = self.users[i].link {
                        self.user_lost(i, now, why);
                    }
                    return;
                }
            }
        }
        let mut texts = std::mem::take(&mut self.texts);
        texts.clear();
        let end = match self.users[i].conn.as_mut() {
            Some(c) => pump(c, &mut self.rbuf, &mut texts),
            None => None,
        };
        match self.users[i].link {
            Link::Closing { .. } => {
                // Only the server's close is awaited; what else comes is in the inbox.
                if end.is_some() {
                    self.users[i].conn = None;
                    self.user_down(i, now);
                }
            }
            Link::Up { .. } if self.stage == Stage::Verify => {
                for t in &texts {
                    self.replay_text(i, t);
                }
                if let Some(end) = end {
                    self.replay_lost(i, now, &end.label());
                } else {
                    self.flush_user(i, now);
                }
            }
            Link::Up { .. } => {
                for t in &texts {
                    self.user_text(i, t, now);
                }
                match end {
                    Some(end) => self.user_lost(i, now, format!("server: {}", end.label())),
                    None => self.write_requests(i, now),
                }
            }
            Link::Down { .. } => {}
        }
        self.texts = texts;
    }

    /// The `101` is in: resume with a sync from the cursor and every pending send again.
    fn user_open(&mut self, i: usize, now: u64) {
        if self.stage == Stage::Verify {
            self.replay_open(i, now);
            return;
        }
        let u = &mut self.users[i];
        let Some(c) = u.conn.as_mut() else {
            return;
        };
        for request in u.session.after_connect(now) {
            c.ws.send(OpCode::Text, request.as_bytes(), &mut c.out);
        }
        let mut pending = std::mem::take(&mut c.pending);
        let mut texts = Vec::new();
        let end = feed(c, &mut pending, &mut texts);
        for t in &texts {
            self.user_text(i, t, now);
        }
        match end {
            Some(end) => self.user_lost(i, now, format!("server: {}", end.label())),
            None => self.write_requests(i, now),
        }
    }

    /// Writes the session's requests (the cumulative ack first) and whatever else is queued.
    fn write_requests(&mut self, i: usize, now: u64) {
        let u = &mut self.users[i];
        if !matches!(u.link, Link::Up { .. }) {
            return;
        }
        let Some(c) = u.conn.as_mut().filter(|c| c.phase == Phase::Open) else {
            return;
        };
        for request in u.session.take_requests() {
            c.ws.send(OpCode::Text, request.as_bytes(), &mut c.out);
        }
        self.flush_user(i, now);
    }

    fn flush_user(&mut self, i: usize, now: u64) {
        let Some(c) = self.users[i].conn.as_mut() else {
            return;
        };
        if c.has_output() {
            if let Err(e) = c.flush() {
                self.user_lost(i, now, format!("write: {}", io_label(&e)));
            }
        }
    }

    fn tick_user(&mut self, i: usize, now: u64) {
        let u = &mut self.users[i];
        if !u.welcomed || !matches!(u.link, Link::Up { .. }) || self.stage == Stage::Verify {
            return;
        }
        if u.session.tick(now) == Liveness::Dead {
            self.user_lost(i, now, "the server went silent".into());
            return;
        }
        self.write_requests(i, now);
    }

    fn user_text(&mut self, i: usize, text: &[u8], now: u64) {
        let u = &mut self.users[i];
        u.session.heard(now);
        for event in u.session.on_text(text) {
            match event {
                Event::Welcome(_) => {
                    self.users[i].welcomed = true;
                    self.c.welcomes += 1;
                }
                Event::Sent(sent) => self.on_sent(i, &sent, now),
                Event::Msg(m) => {
                    if m.kind == "text" {
                        self.c.delivered += 1;
                    }
                }
                Event::Synced(_) => self.c.syncs += 1,
                Event::Error(e) => self.on_error(i, &e),
                Event::Pong(_) => {}
                Event::Other(v) => self.on_reply(i, &v),
            }
        }
    }

    fn on_sent(&mut self, i: usize, sent: &Sent, now: u64) {
        let rec = cid_counter(&sent.cid)
            .and_then(|n| self.users[i].sends.get_mut((n as usize).wrapping_sub(1)))
            .filter(|r| r.mid.is_none());
        let Some(rec) = rec else {
            return;
        };
        rec.mid = Some(sent.mid);
        self.c.acked += 1;
        if matches!(rec.dest, Dest::Group(_)) {
            self.c.acked_group += 1;
        }
        self.c
            .sent_hist
            .record(now.saturating_sub(rec.at_ms) * 1_000_000);
    }

    fn take_op(&mut self, i: usize, rid: Option<&Value>) -> Option<Op> {
        let rid = rid?.as_str()?;
        let ops = &mut self.users[i].ops;
        let k = ops.iter().position(|(r, _)| r == rid)?;
        Some(ops.remove(k).1)
    }

    fn on_error(&mut self, i: usize, e: &ErrorReply) {
        bump(&mut self.c.errors, e.code.clone());
        let Some(op) = self.take_op(i, e.rid.as_ref()) else {
            return;
        };
        match op {
            Op::Create(g) => self.groups[g].creating = false,
            // Not a member after all (an add whose reply was lost with a connection).
            Op::Leave(g) => self.groups[g].extras.retain(|&x| x as usize != i),
            Op::Add(..) => {}
        }
    }

    /// `group` and `ok` replies to the group requests.
    fn on_reply(&mut self, i: usize, v: &Value) {
        let Some(op) = self.take_op(i, v.get("rid")) else {
            return;
        };
        let ty = v.get("type").and_then(Value::as_str);
        match (op, ty) {
            (Op::Create(g), Some("group")) => {
                let gid = match v.get("gid") {
                    Some(Value::String(s)) => s.clone(),
                    Some(n @ Value::Number(_)) => n.to_string(),
                    _ => return,
                };
                let group = &mut self.groups[g];
                group.gid = Some(gid);
                group.creating = false;
                self.c.group_created += 1;
            }
            (Op::Add(g), Some("group")) => {
                let (prefix, users) = (&self.opts.prefix, self.users.len());
                let group = &mut self.groups[g];
                if let Some(members) = v.get("members").and_then(Value::as_array) {
                    group.extras = members
                        .iter()
                        .filter_map(Value::as_str)
                        .filter_map(|id| user_index(prefix, users, id))
                        .filter(|x| !group.core.contains(x))
                        .collect();
                }
                self.c.group_added += 1;
            }
            (Op::Leave(g), Some("ok")) => {
                self.groups[g].extras.retain(|&x| x as usize != i);
                self.c.group_left += 1;
            }
            _ => {}
        }
    }

    fn ready(&self, i: usize) -> bool {
        let u = &self.users[i];
        u.welcomed
            && matches!(u.link, Link::Up { .. })
            && u.session.pending_count() < MAX_USER_BACKLOG
    }

    /// The sends due by now on the --rate schedule, each from a random user who is online.
    fn pace(&mut self, now: u64) {
        let due = (now as f64 * self.opts.rate / 1e3) as u64;
        if due <= self.paced {
            return;
        }
        let cap = ((self.opts.rate * CATCH_UP_SECS) as u64).max(1);
        if due - self.paced > cap {
            self.c.skipped += due - self.paced - cap;
            self.paced = due - cap;
        }
        while self.paced < due {
            self.paced += 1;
            let group = splitmix64(&mut self.rng) % 100 < self.opts.group_share;
            // A group slot with no group sender online goes to a 1:1 message instead.
            let sent = (group && self.send_group(now)) || self.send_direct(now);
            if !sent {
                self.c.skipped += 1;
            }
        }
    }

    fn send_direct(&mut self, now: u64) -> bool {
        let users = self.users.len() as u64;
        for _ in 0..16 {
            let from = (splitmix64(&mut self.rng) % users) as usize;
            if !self.ready(from) {
                continue;
            }
            let r = splitmix64(&mut self.rng) % (users - 1);
            let to = if r >= from as u64 { r + 1 } else { r } as u32;
            self.send(from, Dest::User(to), now);
            return true;
        }
        false
    }

    fn send_group(&mut self, now: u64) -> bool {
        let known: Vec<usize> = (0..self.groups.len())
            .filter(|&g| self.groups[g].gid.is_some())
            .collect();
        if known.is_empty() {
            return false;
        }
        let g = known[(splitmix64(&mut self.rng) % known.len() as u64) as usize];
        let core = self.groups[g].core.clone();
        let start = splitmix64(&mut self.rng) as usize;
        for k in 0..core.len() {
            let from = core[(start + k) % core.len()] as usize;
            if self.ready(from) {
                self.send(from, Dest::Group(g as u16), now);
                return true;
            }
        }
        false
    }

    fn send(&mut self, i: usize, dest: Dest, now: u64) {
        let to = match dest {
            Dest::User(to) => self.users[to as usize].address.clone(),
            Dest::Group(g) => format!(
                "group:{}",
                self.groups[g as usize].gid.as_deref().unwrap_or("")
            ),
        };
        let n = self.users[i].sends.len() as u64 + 1;
        let len = 24 + (splitmix64(&mut self.rng) % MAX_BODY as u64) as usize;
        let mut body = String::with_capacity(len);
        stamp(self.run, i as u32, n, len, &mut body);
        let u = &mut self.users[i];
        let cid = u.session.send(&to, &body);
        debug_assert_eq!(cid_counter(&cid), Some(n));
        u.sends.push(SendRec {
            dest,
            at_ms: now,
            mid: None,
        });
        self.c.sends += 1;
        self.write_requests(i, now);
    }

    /// One membership change: a group without a gid is created; otherwise its owner adds
    /// someone, or a member beyond the core leaves.
    fn group_op(&mut self, now: u64) {
        if self.groups.is_empty() {
            return;
        }
        let g = (splitmix64(&mut self.rng) % self.groups.len() as u64) as usize;
        let owner = self.groups[g].core[0] as usize;
        let Some(gid) = self.groups[g].gid.clone() else {
            if self.groups[g].creating || !self.ready(owner) {
                return;
            }
            let members: Vec<&str> = self.groups[g].core[1..]
                .iter()
                .map(|&m| self.users[m as usize].name.as_str())
                .collect();
            let request = json!({"type": "group_create", "name": format!("soak {g}"),
                                 "members": members});
            self.groups[g].creating = true;
            self.group_request(owner, request, Op::Create(g), now);
            return;
        };
        let extras = self.groups[g].extras.clone();
        let add =
            extras.is_empty() || (extras.len() < MAX_EXTRAS && splitmix64(&mut self.rng) % 2 == 0);
        if add {
            if !self.ready(owner) {
                return;
            }
            let first = self.groups.len() * self.opts.core;
            let span = (self.users.len() - first) as u64;
            let who = (first as u64 + splitmix64(&mut self.rng) % span) as u32;
            let name = self.users[who as usize].name.clone();
            let request = json!({"type": "group_add", "gid": gid, "members": [name]});
            self.group_request(owner, request, Op::Add(g), now);
        } else {
            let who = extras[(splitmix64(&mut self.rng) % extras.len() as u64) as usize];
            if !self.ready(who as usize) {
                return;
            }
            let request = json!({"type": "group_leave", "gid": gid});
            self.group_request(who as usize, request, Op::Leave(g), now);
        }
    }

    fn group_request(&mut self, i: usize, mut request: Value, op: Op, now: u64) {
        let u = &mut self.users[i];
        let rid = format!("g{}", u.next_rid);
        u.next_rid += 1;
        request["rid"] = json!(rid);
        u.ops.push((rid, op));
        if let Some(c) = u.conn.as_mut() {
            c.ws.send(OpCode::Text, request.to_string().as_bytes(), &mut c.out);
        }
        self.flush_user(i, now);
    }

    // -----------------------------------------------------------------------------------
    // Drain and verify

    fn start_drain(&mut self, now: u64) {
        self.load_ms = Some(now);
        self.stage = Stage::Drain;
        self.stage_ms = now;
        for a in &mut self.abusers {
            if let Some(c) = a.conn.take() {
                reset_on_close(&c);
            }
        }
        for f in &mut self.forges {
            *f = None;
        }
        for u in &mut self.users {
            match u.link {
                Link::Down { .. } => u.link = Link::Down { at: now },
                Link::Up { since, .. } => {
                    u.link = Link::Up {
                        since,
                        until: u64::MAX,
                    }
                }
                Link::Closing { .. } => {}
            }
        }
    }

    /// Every user is back, with no send awaiting its `sent`, no sync and no group
    /// request in flight.
    fn drained(&self) -> bool {
        self.users.iter().all(|u| {
            u.welcomed
                && matches!(u.link, Link::Up { .. })
                && u.session.pending_count() == 0
                && !u.session.is_syncing()
                && u.ops.is_empty()
        })
    }

    fn start_verify(&mut self, now: u64) {
        self.stage = Stage::Verify;
        self.stage_ms = now;
        for i in 0..self.users.len() {
            let u = &mut self.users[i];
            self.c.unacked_at_end += u.session.pending_count() as u64;
            u.session.disconnected();
            Self::drop_ops(&mut self.groups, u);
            u.welcomed = false;
            match u.conn.as_mut() {
                Some(c) if c.phase == Phase::Open && matches!(u.link, Link::Up { .. }) => {
                    c.ws.close(close_code::NORMAL, "", &mut c.out);
                    let _ = c.flush();
                    u.link = Link::Closing {
                        until: now + CLOSE_WAIT_MS,
                    };
                }
                Some(_) if matches!(u.link, Link::Closing { .. }) => {}
                _ => {
                    u.conn = None;
                    u.link = Link::Down { at: now };
                }
            }
        }
    }

    fn start_replay(&mut self, i: usize, now: u64) {
        let r = &self.users[i].replay;
        if r.done || r.failed || self.replays >= VERIFY_PARALLEL {
            return;
        }
        let seed = (i as u32).wrapping_mul(0xC2B2_AE35) ^ now as u32;
        match self.open(Token(i), None, None, seed) {
            Ok(c) => {
                let u = &mut self.users[i];
                u.conn = Some(c);
                u.replay.running = true;
                self.replays += 1;
                u.link = Link::Up {
                    since: now,
                    until: u64::MAX,
                };
            }
            Err(e) => self.replay_lost(i, now, &format!("connect: {}", io_label(&e))),
        }
    }

    fn replay_open(&mut self, i: usize, now: u64) {
        let mut texts = Vec::new();
        let end = match self.users[i].conn.as_mut() {
            Some(c) => {
                let mut pending = std::mem::take(&mut c.pending);
                feed(c, &mut pending, &mut texts)
            }
            None => return,
        };
        self.replay_sync(i);
        for t in &texts {
            self.replay_text(i, t);
        }
        match end {
            Some(end) => self.replay_lost(i, now, &end.label()),
            None => self.flush_user(i, now),
        }
    }

    fn replay_sync(&mut self, i: usize) {
        let u = &mut self.users[i];
        u.replay.rid += 1;
        let request = json!({"type": "sync", "after": u.replay.after,
                             "rid": format!("v{}", u.replay.rid)});
        if let Some(c) = u.conn.as_mut() {
            c.ws.send(OpCode::Text, request.to_string().as_bytes(), &mut c.out);
        }
    }

    fn replay_text(&mut self, i: usize, text: &[u8]) {
        let Ok(frame) = serde_json::from_slice::<Reply>(text) else {
            return;
        };
        let ours = |rid: &Option<Value>, r: &Replay| {
            rid.as_ref().and_then(Value::as_str) == Some(format!("v{}", r.rid).as_str())
        };
        match frame {
            Reply::Msg(m) => {
                let origin = self.origin(&m);
                let r = &mut self.users[i].replay;
                let entry = InboxEntry { mid: m.mid, origin };
                if let Some(old) = r.entries.insert(m.seq, entry) {
                    if old.mid != m.mid {
                        r.conflicts += 1;
                    }
                }
            }
            Reply::Synced(s) if ours(&s.rid, &self.users[i].replay) => {
                let u = &mut self.users[i];
                u.replay.head = s.head;
                u.replay.after = u.replay.after.max(s.seq);
                if let Some(c) = u.conn.as_mut() {
                    // Acked, or the server would re-push the page and close with 4008.
                    let ack = json!({"type": "ack", "seq": s.seq}).to_string();
                    c.ws.send(OpCode::Text, ack.as_bytes(), &mut c.out);
                }
                if s.more {
                    self.replay_sync(i);
                } else {
                    self.replay_stopped(i);
                    let u = &mut self.users[i];
                    u.replay.done = true;
                    if let Some(c) = u.conn.as_mut() {
                        c.ws.close(close_code::NORMAL, "", &mut c.out);
                        let _ = c.flush();
                    }
                    u.conn = None;
                    u.link = Link::Down { at: u64::MAX };
                }
            }
            Reply::Error(e) if ours(&e.rid, &self.users[i].replay) => {
                bump(&mut self.c.errors, format!("{} (replay)", e.code));
                let r = &mut self.users[i].replay;
                r.tries += 1;
                if r.tries >= VERIFY_RETRIES {
                    self.replay_lost(i, 0, &format!("error {}", e.code));
                } else {
                    self.replay_sync(i);
                }
            }
            _ => {}
        }
    }

    fn replay_stopped(&mut self, i: usize) {
        let r = &mut self.users[i].replay;
        if r.running {
            r.running = false;
            self.replays -= 1;
        }
    }

    /// A replay's connection is gone: it starts again after its last complete page, a
    /// bounded number of times.
    fn replay_lost(&mut self, i: usize, now: u64, why: &str) {
        self.replay_stopped(i);
        let u = &mut self.users[i];
        u.conn = None;
        if u.replay.done {
            return;
        }
        u.replay.tries += 1;
        if u.replay.tries >= VERIFY_RETRIES {
            u.replay.failed = true;
            u.link = Link::Down { at: u64::MAX };
            let name = u.name.clone();
            self.c
                .problem(|| format!("{name}: the final replay failed: {why}"));
        } else {
            u.link = Link::Down { at: now + RETRY_MS };
        }
    }

    fn origin(&self, m: &ReplayMsg) -> Origin {
        match parse_stamp(&m.body) {
            Some((run, sender, n)) if run == self.run => {
                let ok = m.kind == "text"
                    && user_index(&self.opts.prefix, self.users.len(), &m.from) == Some(sender);
                if ok {
                    Origin::Ours { sender, n }
                } else {
                    Origin::Corrupt
                }
            }
            _ => Origin::Foreign,
        }
    }

    fn check(&self) -> Check {
        let acked: Vec<Acked> = self
            .users
            .iter()
            .enumerate()
            .flat_map(|(i, u)| {
                u.sends.iter().enumerate().filter_map(move |(k, s)| {
                    Some(Acked {
                        sender: i as u32,
                        n: k as u64 + 1,
                        mid: s.mid?,
                        dest: s.dest,
                    })
                })
            })
            .collect();
        let inboxes: Vec<Option<Inbox>> = self
            .users
            .iter()
            .map(|u| {
                u.replay.done.then(|| Inbox {
                    head: u.replay.head,
                    entries: u.replay.entries.iter().map(|(&s, &e)| (s, e)).collect(),
                    conflicts: u.replay.conflicts,
                })
            })
            .collect();
        let cores: Vec<Vec<u32>> = self.groups.iter().map(|g| g.core.clone()).collect();
        check(&acked, &inboxes, &cores, |i| {
            self.users[i as usize].name.clone()
        })
    }

    // -----------------------------------------------------------------------------------
    // Abusers

    fn abuser_timer(&mut self, a: usize, now: u64) {
        match self.abusers[a].link {
            Link::Down { at } if now >= at => self.connect_abuser(a, now),
            Link::Up { since, .. } => {
                let ab = &self.abusers[a];
                let open = ab.conn.as_ref().is_some_and(|c| c.phase == Phase::Open);
                if !open {
                    if now >= since + CONNECT_LIMIT_MS {
                        self.abuser_ended(a, now, "no handshake within 10 s".into());
                    }
                    return;
                }
                match ab.kind {
                    Kind::Hog if ab.seeded => self.hog(a, now, since),
                    Kind::Hog => {}
                    Kind::Drip => self.drip(a, now),
                    Kind::Flood => self.flood(a, now),
                }
            }
            _ => {}
        }
    }

    fn connect_abuser(&mut self, a: usize, now: u64) {
        let kind = self.abusers[a].kind;
        // Only the hog's second act needs the small buffer; seeding reads normally.
        let rcvbuf = (kind == Kind::Hog && self.abusers[a].seeded).then_some(HOG_RCVBUF);
        let seed = (a as u32).wrapping_mul(0x27D4_EB2F) ^ now as u32;
        match self.open(self.abuser_token(a), Some(kind.source()), rcvbuf, seed) {
            Ok(c) => {
                let ab = &mut self.abusers[a];
                ab.conn = Some(c);
                ab.written = 0;
                ab.link = Link::Up {
                    since: now,
                    until: u64::MAX,
                };
                bump(&mut self.c.abuse, format!("{}: connections", kind.label()));
            }
            Err(e) => {
                let why = format!("connect: {}", io_label(&e));
                self.abuser_ended(a, now, why);
            }
        }
    }

    fn abuser_ended(&mut self, a: usize, now: u64, why: String) {
        let ab = &mut self.abusers[a];
        ab.conn = None;
        ab.link = Link::Down { at: now + RETRY_MS };
        bump(&mut self.c.abuse, format!("{}: {why}", ab.kind.label()));
    }

    fn abuser_event(&mut self, a: usize, now: u64) {
        if self.stage != Stage::Load {
            return;
        }
        let ab = &mut self.abusers[a];
        let Some(c) = ab.conn.as_mut() else {
            return;
        };
        if c.phase != Phase::Open {
            let target = &self.opts.target;
            let token = &ab.token;
            match handshake(c, || target.request_with_token(token), &mut self.rbuf) {
                Ok(true) => self.abuser_open(a, now),
                Ok(false) => {}
                Err(e) => self.abuser_ended(a, now, format!("upgrade {}", handshake_label(&e))),
            }
            return;
        }
        if ab.kind == Kind::Hog && ab.seeded {
            // The hog never reads; its writes are flushed by its timer.
            if let Err(e) = c.flush() {
                self.abuser_ended(a, now, format!("write: {}", io_label(&e)));
            }
            return;
        }
        let mut texts = std::mem::take(&mut self.texts);
        texts.clear();
        let end = pump(c, &mut self.rbuf, &mut texts);
        let kind = ab.kind;
        for t in &texts {
            self.abuser_text(a, kind, t, now);
        }
        self.texts = texts;
        match end {
            Some(end) => self.abuser_ended(a, now, end.label()),
            None => {
                if let Some(c) = self.abusers[a].conn.as_mut() {
                    if let Err(e) = c.flush() {
                        self.abuser_ended(a, now, format!("write: {}", io_label(&e)));
                    }
                }
            }
        }
    }

    fn abuser_open(&mut self, a: usize, now: u64) {
        let ab = &mut self.abusers[a];
        let Some(c) = ab.conn.as_mut() else {
            return;
        };
        ab.clock_ms = now;
        match ab.kind {
            Kind::Hog if !ab.seeded => {
                // Its own dm, filled with bodies that JSON escapes sixfold; a resend after a
                // lost connection is the same cid, stored once.
                for k in 0..self.opts.hog_messages {
                    let request = json!({"type": "send", "cid": format!("hog.{}.{k}", self.run),
                                         "to": format!("user:{}", ab.name),
                                         "body": self.hog_body});
                    c.ws.send(OpCode::Text, request.to_string().as_bytes(), &mut c.out);
                }
                ab.seed_acks = 0;
            }
            Kind::Hog => {}
            Kind::Drip => {
                // A text frame announcing DRIP_FRAME bytes (masked, key zero: the payload
                // goes as it is), then nothing: the bytes follow one per --drip-every.
                let len = DRIP_FRAME as u16;
                c.out.extend_from_slice(&[0x81, 0x80 | 126]);
                c.out.extend_from_slice(&len.to_be_bytes());
                c.out.extend_from_slice(&[0, 0, 0, 0]);
                ab.clock_ms = now + self.opts.drip_every_ms;
            }
            Kind::Flood => {}
        }
        let mut pending = std::mem::take(&mut c.pending);
        let mut texts = Vec::new();
        let end = feed(c, &mut pending, &mut texts);
        let kind = ab.kind;
        for t in &texts {
            self.abuser_text(a, kind, t, now);
        }
        if let Some(end) = end {
            self.abuser_ended(a, now, end.label());
            return;
        }
        if let Some(c) = self.abusers[a].conn.as_mut() {
            if let Err(e) = c.flush() {
                self.abuser_ended(a, now, format!("write: {}", io_label(&e)));
            }
        }
    }

    fn abuser_text(&mut self, a: usize, kind: Kind, text: &[u8], now: u64) {
        let v: Value = serde_json::from_slice(text).unwrap_or(Value::Null);
        let ty = v.get("type").and_then(Value::as_str).unwrap_or("?");
        match kind {
            Kind::Hog => {
                let ab = &mut self.abusers[a];
                if ty == "sent" || ty == "error" {
                    ab.seed_acks += 1;
                    if ty == "error" {
                        let code = v.get("code").and_then(Value::as_str).unwrap_or("?");
                        bump(&mut self.c.abuse, format!("hog: seeding error {code}"));
                    }
                }
                if !ab.seeded && ab.seed_acks >= self.opts.hog_messages {
                    // Seeded: start over on a connection that does not read.
                    ab.seeded = true;
                    if let Some(c) = ab.conn.as_mut() {
                        c.ws.close(close_code::NORMAL, "", &mut c.out);
                        let _ = c.flush();
                    }
                    ab.conn = None;
                    ab.link = Link::Down { at: now };
                }
            }
            Kind::Flood => {
                let label = match ty {
                    "error" => v.get("code").and_then(Value::as_str).unwrap_or("error"),
                    t => t,
                };
                bump(&mut self.c.flood_replies, label.to_owned());
            }
            Kind::Drip => {}
        }
    }

    /// The hog: history requests for its heavy dm at --hog-rate, never reading, until
    /// the server drops it or its connection has lived `HOG_LIFE_MS`.
    fn hog(&mut self, a: usize, now: u64, since: u64) {
        let rate = self.opts.hog_rate;
        let ab = &mut self.abusers[a];
        let Some(c) = ab.conn.as_mut() else {
            return;
        };
        if now >= since + HOG_LIFE_MS {
            // Unread input makes this close a reset anyway; say so plainly.
            reset_on_close(c);
            self.abuser_ended(a, now, "dropped by us after its lifetime".into());
            return;
        }
        let due = HOG_BURST + ((now - ab.clock_ms) as f64 * rate / 1e3) as u64;
        let conv = format!("dm:{0}:{0}", ab.name);
        let mut wrote = 0;
        while ab.written < due && c.out.len() < ABUSER_OUT_CAP {
            let request = json!({"type": "history", "conv": conv, "limit": 100});
            c.ws.send(OpCode::Text, request.to_string().as_bytes(), &mut c.out);
            ab.written += 1;
            wrote += 1;
        }
        // Past what the socket takes, the schedule is not made up later.
        ab.written = ab.written.max(due);
        self.c.hog_requests += wrote;
        if let Err(e) = c.flush() {
            self.abuser_ended(a, now, format!("write: {}", io_label(&e)));
        }
    }

    fn drip(&mut self, a: usize, now: u64) {
        let every = self.opts.drip_every_ms;
        let ab = &mut self.abusers[a];
        if now < ab.clock_ms {
            return;
        }
        let Some(c) = ab.conn.as_mut() else {
            return;
        };
        if ab.written as usize >= DRIP_FRAME - 1 {
            // Never completes the frame: the last byte is never sent.
            return;
        }
        c.out.push(b'x');
        ab.written += 1;
        ab.clock_ms = now + every;
        self.c.drip_bytes += 1;
        if let Err(e) = c.flush() {
            self.abuser_ended(a, now, format!("write: {}", io_label(&e)));
        }
    }

    fn flood(&mut self, a: usize, now: u64) {
        let rate = self.opts.flood_rate;
        let ab = &mut self.abusers[a];
        let Some(c) = ab.conn.as_mut() else {
            return;
        };
        let due = ((now - ab.clock_ms) as f64 * rate / 1e3) as u64;
        while ab.written < due && c.out.len() < ABUSER_OUT_CAP {
            ab.written += 1;
            // Acks with a rid: exempt from --rate today, yet answered.
            let request = if ab.written % 4 == 0 {
                json!({"type": "ack", "seq": 0, "rid": ab.written})
            } else {
                json!({"type": "ping", "rid": ab.written})
            };
            c.ws.send(OpCode::Text, request.to_string().as_bytes(), &mut c.out);
        }
        ab.written = ab.written.max(due);
        if let Err(e) = c.flush() {
            self.abuser_ended(a, now, format!("write: {}", io_label(&e)));
        }
    }

    // -----------------------------------------------------------------------------------
    // Forged tokens

    fn forge_timer(&mut self, now: u64) {
        for k in 0..FORGE_SLOTS {
            if self.forges[k]
                .as_ref()
                .is_some_and(|f| now >= f.since + FORGE_LIMIT_MS)
            {
                self.forges[k] = None;
                bump(&mut self.c.forge, "no answer within 5 s".into());
            }
        }
        if !self.opts.abusers.forge {
            return;
        }
        let due = (now as f64 * self.opts.forge_rate / 1e3) as u64;
        while self.forged < due {
            self.forged += 1;
            let Some(k) = self.forges.iter().position(Option::is_none) else {
                bump(&mut self.c.forge, "not tried: 64 in flight".into());
                continue;
            };
            let seed = (self.forged as u32).wrapping_mul(0x1656_67B1);
            match self.open(self.forge_token(k), Some(FORGE_SOURCE), None, seed) {
                Ok(conn) => {
                    self.forges[k] = Some(Forge { conn, since: now });
                    self.c.forge_tries += 1;
                }
                Err(e) => bump(&mut self.c.forge, format!("connect: {}", io_label(&e))),
            }
        }
    }

    fn forge_event(&mut self, k: usize) {
        let Some(f) = self.forges[k].as_mut() else {
            return;
        };
        let n = self.forged;
        let user = &self.users[(n % self.users.len() as u64) as usize].name;
        let secret = &self.opts.secret;
        let target = &self.opts.target;
        let now_secs = courier::clock::wall_ms() / 1000;
        let request = || target.request_with_token(&forged_token(n, user, secret, now_secs));
        let outcome = match handshake(&mut f.conn, request, &mut self.rbuf) {
            Ok(false) => return,
            Ok(true) => "101 (accepted)".to_owned(),
            Err(e) => handshake_label(&e),
        };
        bump(&mut self.c.forge, outcome);
        self.forges[k] = None;
    }
}

/// The frames the final replay reads.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Reply {
    Msg(ReplayMsg),
    Synced(ReplaySynced),
    Error(ReplayError),
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct ReplayMsg {
    seq: u64,
    mid: u64,
    #[serde(default)]
    from: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    kind: String,
}

#[derive(Deserialize)]
struct ReplaySynced {
    seq: u64,
    head: u64,
    more: bool,
    #[serde(default)]
    rid: Option<Value>,
}

#[derive(Deserialize)]
struct ReplayError {
    code: String,
    #[serde(default)]
    rid: Option<Value>,
}

// ---------------------------------------------------------------------------------------
// The check: pure, over what the replays found.

/// A message the server acknowledged: message n of `sender`, stored as `mid`.
#[derive(Clone, Copy, Debug)]
pub struct Acked {
    pub sender: u32,
    pub n: u64,
    pub mid: u64,
    pub dest: Dest,
}

/// A user's whole inbox as the final replay saw it.
#[derive(Clone, Debug, Default)]
pub struct Inbox {
    pub head: u64,
    /// By seq, ascending.
    pub entries: Vec<(u64, InboxEntry)>,
    /// Seqs the replay saw holding two different messages.
    pub conflicts: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Check {
    pub users: u64,
    pub verified_users: u64,
    pub acknowledged: u64,
    /// Acknowledged messages absent from at least one inbox they belong in, and the
    /// number of such absences.
    pub missing: u64,
    pub missing_places: u64,
    /// Messages found more than once in one inbox.
    pub duplicated: u64,
    /// Acknowledged messages found under a mid other than their `sent`'s.
    pub wrong_mid: u64,
    /// Seqs from 1 to an inbox's head that the replay did not hand out, and seqs that
    /// held two different messages.
    pub gaps: u64,
    pub corrupt: u64,
    /// This run's messages found in inboxes without an acknowledgement (allowed: their
    /// `sent` was lost with a connection and the load ended before the resend).
    pub stored_unacked: u64,
    pub problems: Vec<String>,
}

impl Check {
    pub fn passed(&self) -> bool {
        self.missing + self.duplicated + self.wrong_mid + self.gaps + self.corrupt == 0
            && self.verified_users == self.users
    }

    fn problem(&mut self, what: impl FnOnce() -> String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(what());
        }
    }
}

/// Every acknowledged message must be, exactly once and under its mid, in its sender's
/// inbox and its recipient's (1:1) or every core member's (group); no inbox may hold one
/// of this run's messages twice, and every inbox must run gap-free from 1 to its head.
/// `inboxes[i]` is user i's (`None`: its replay did not finish).
pub fn check(
    acked: &[Acked],
    inboxes: &[Option<Inbox>],
    cores: &[Vec<u32>],
    name: impl Fn(u32) -> String,
) -> Check {
    let mut c = Check {
        users: inboxes.len() as u64,
        acknowledged: acked.len() as u64,
        ..Check::default()
    };
    // Per inbox: (sender, n) → the mids it was found under.
    let mut found: Vec<HashMap<(u32, u64), Vec<u64>>> = vec![HashMap::new(); inboxes.len()];
    for (u, inbox) in inboxes.iter().enumerate() {
        let Some(inbox) = inbox else {
            continue;
        };
        c.verified_users += 1;
        c.gaps += inbox.conflicts;
        let mut expect = 1;
        for &(seq, entry) in &inbox.entries {
            if seq > expect {
                c.gaps += seq - expect;
                let who = name(u as u32);
                c.problem(|| format!("{who}: inbox gap at seqs {expect}..{}", seq - 1));
            }
            expect = seq + 1;
            match entry.origin {
                Origin::Ours { sender, n } => {
                    found[u].entry((sender, n)).or_default().push(entry.mid)
                }
                Origin::Corrupt => c.corrupt += 1,
                Origin::Foreign => {}
            }
        }
        if inbox.head >= expect {
            c.gaps += inbox.head - expect + 1;
            let who = name(u as u32);
            c.problem(|| {
                format!(
                    "{who}: inbox ends at {} below its head {}",
                    expect - 1,
                    inbox.head
                )
            });
        }
    }
    let mut duplicated: HashSet<(u32, u64)> = HashSet::new();
    for (u, map) in found.iter().enumerate() {
        for (&key, mids) in map {
            if mids.len() > 1 && duplicated.insert(key) {
                let who = name(u as u32);
                let from = name(key.0);
                c.problem(|| {
                    format!(
                        "{who}: message {} of {from} stored {} times (mids {mids:?})",
                        key.1,
                        mids.len()
                    )
                });
            }
        }
    }
    c.duplicated = duplicated.len() as u64;
    let acked_keys: HashSet<(u32, u64)> = acked.iter().map(|a| (a.sender, a.n)).collect();
    let mut unacked: HashSet<(u32, u64)> = HashSet::new();
    for map in &found {
        for key in map.keys() {
            if !acked_keys.contains(key) {
                unacked.insert(*key);
            }
        }
    }
    c.stored_unacked = unacked.len() as u64;
    let mut places: Vec<u32> = Vec::new();
    for a in acked {
        places.clear();
        places.push(a.sender);
        match a.dest {
            Dest::User(to) => places.push(to),
            Dest::Group(g) => places.extend(cores[g as usize].iter().filter(|&&m| m != a.sender)),
        }
        let mut missing_here = 0;
        for &p in &places {
            // An inbox that was not replayed is counted once, in verified_users.
            let Some(map) = inboxes[p as usize].as_ref().map(|_| &found[p as usize]) else {
                continue;
            };
            match map.get(&(a.sender, a.n)) {
                None => {
                    missing_here += 1;
                    let (who, from) = (name(p), name(a.sender));
                    c.problem(|| {
                        format!(
                            "{who}: acknowledged message {} of {from} (mid {}) is missing",
                            a.n, a.mid
                        )
                    });
                }
                Some(mids) if !mids.contains(&a.mid) => {
                    c.wrong_mid += 1;
                    let (who, from) = (name(p), name(a.sender));
                    c.problem(|| {
                        format!("{who}: message {} of {from} is stored as mid {mids:?}, its `sent` said {}", a.n, a.mid)
                    });
                }
                Some(_) => {}
            }
        }
        if missing_here > 0 {
            c.missing += 1;
            c.missing_places += missing_here;
        }
    }
    c
}

// ---------------------------------------------------------------------------------------
// The report

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn join_counts<K: std::fmt::Display>(map: &BTreeMap<K, u64>) -> String {
    if map.is_empty() {
        return "none".into();
    }
    map.iter()
        .map(|(k, n)| format!("{k} x{}", stats::grouped(*n)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn json_counts<K: std::fmt::Display>(map: &BTreeMap<K, u64>) -> String {
    let members: Vec<String> = map
        .iter()
        .map(|(k, n)| format!("{}:{n}", stats::json_str(&k.to_string())))
        .collect();
    format!("{{{}}}", members.join(","))
}

fn abusers_label(opts: &Opts) -> String {
    let a = opts.abusers;
    let mut v = Vec::new();
    if a.hog {
        v.push(format!(
            "hog x{} ({} x {} B, {HOG_BURST} history requests at once, then {}/s)",
            opts.hogs, opts.hog_messages, opts.hog_body, opts.hog_rate
        ));
    }
    if a.drip {
        v.push(format!(
            "drip x{DRIPPERS} (1 B / {} ms)",
            opts.drip_every_ms
        ));
    }
    if a.forge {
        v.push(format!("forge {}/s", opts.forge_rate));
    }
    if a.flood {
        v.push(format!("flood x{FLOODERS} {}/s", opts.flood_rate));
    }
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn print_report(
    opts: &Opts,
    s: &Soak<'_>,
    check: &Check,
    health: Option<&Verdict>,
    failures: &[String],
    load_secs: f64,
) {
    let g = stats::grouped;
    let c = &s.c;
    println!(
        "courier-bench soak  {} ({})",
        opts.target.url, opts.target.addr
    );
    println!(
        "  {} users for {load_secs:.1} s: {} msg/s ({} % to {} groups), connections live {}-{} s, \
         {} % end without a close frame",
        opts.users,
        opts.rate,
        opts.group_share,
        opts.groups,
        opts.life_ms.0 as f64 / 1e3,
        opts.life_ms.1 as f64 / 1e3,
        opts.abrupt
    );
    println!("  abusers: {}", abusers_label(opts));
    println!();
    println!(
        "  messages        {} sent, {} acknowledged ({} to groups), {} still unacknowledged at \
         the end, {} slots skipped",
        g(c.sends),
        g(c.acked),
        g(c.acked_group),
        g(c.unacked_at_end),
        g(c.skipped)
    );
    let verdict = if check.passed() { "PASSED" } else { "FAILED" };
    println!(
        "  check           {verdict}: {} missing ({} places), {} duplicated, {} under another \
         mid, {} gaps, {} damaged; {} stored without a `sent` seen (allowed); {}/{} inboxes \
         replayed",
        g(check.missing),
        g(check.missing_places),
        g(check.duplicated),
        g(check.wrong_mid),
        g(check.gaps),
        g(check.corrupt),
        g(check.stored_unacked),
        check.verified_users,
        check.users
    );
    let q = imclient::quantiles(&c.sent_hist);
    println!(
        "  send -> sent    p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (a send pending across a \
         reconnect counts its offline time)",
        ms(q[0]),
        ms(q[1]),
        ms(q[3])
    );
    println!(
        "  user conns      {} opened, {} welcomed; ended by the load: {}",
        g(c.connects),
        g(c.welcomes),
        join_counts(&c.churned)
    );
    println!("    otherwise     {}", join_counts(&c.user_ends));
    println!(
        "  groups          {} created, {} adds, {} leaves",
        g(c.group_created),
        g(c.group_added),
        g(c.group_left)
    );
    println!("  error replies   {}", join_counts(&c.errors));
    println!("  abusers         {}", join_counts(&c.abuse));
    if opts.abusers.hog {
        println!(
            "    hog           {} history requests written",
            g(c.hog_requests)
        );
    }
    if opts.abusers.drip {
        println!("    drip          {} bytes dripped", g(c.drip_bytes));
    }
    if opts.abusers.forge {
        println!(
            "    forge         {} tried: {}",
            g(c.forge_tries),
            join_counts(&c.forge)
        );
    }
    if opts.abusers.flood {
        println!("    flood replies {}", join_counts(&c.flood_replies));
    }
    if let Some(h) = health {
        let m = health::mib;
        println!(
            "  server RSS      {:.1} MiB at the start, {:.1} at the end, peak {:.1}; median {:.1} \
             in the middle third, {:.1} in the last",
            m(h.rss.start),
            m(h.rss.end),
            m(h.rss.peak),
            m(h.rss.middle),
            m(h.rss.last)
        );
        println!(
            "  open files      {} at the start, {} at the end, peak {}; median {} in the middle \
             third, {} in the last",
            h.fds.start, h.fds.end, h.fds.peak, h.fds.middle, h.fds.last
        );
        println!(
            "  WAL             {:.1} MiB at the start, {:.1} at the end, peak {:.1} (middle third \
             {:.1}, last third {:.1}); database {:.1} -> {:.1} MiB",
            m(h.wal.start),
            m(h.wal.end),
            m(h.wal.peak),
            m(h.wal.middle_peak),
            m(h.wal.last_peak),
            m(h.db.start),
            m(h.db.end)
        );
        println!(
            "  /healthz        slowest {:.1} ms ({:.1} ms after the first third), {} not \
             answered in 5 s; {} samples{}",
            h.healthz_max_ms,
            h.healthz_late_max_ms,
            h.healthz_failed,
            h.samples,
            if h.judged {
                ""
            } else {
                " (too few to judge growth)"
            }
        );
    }
    println!();
    if failures.is_empty() {
        println!("  soak            PASSED");
    } else {
        println!("  soak            FAILED: {}", failures.join("; "));
    }
}

fn print_json(
    opts: &Opts,
    s: &Soak<'_>,
    check: &Check,
    health: Option<&Verdict>,
    failures: &[String],
    load_secs: f64,
) {
    let c = &s.c;
    let q = imclient::quantiles(&c.sent_hist);
    let fig = |f: &health::Figure| {
        format!(
            "{{\"start\":{},\"end\":{},\"peak\":{},\"middle_median\":{},\"last_median\":{},\
             \"middle_peak\":{},\"last_peak\":{}}}",
            f.start, f.end, f.peak, f.middle, f.last, f.middle_peak, f.last_peak
        )
    };
    let health = health.map_or("null".to_owned(), |h| {
        format!(
            "{{\"passed\":{},\"judged\":{},\"samples\":{},\"rss\":{},\"fds\":{},\"wal\":{},\"db\":{},\
             \"healthz_max_ms\":{:.2},\"healthz_late_max_ms\":{:.2},\"healthz_failed\":{}}}",
            h.passed(),
            h.judged,
            h.samples,
            fig(&h.rss),
            fig(&h.fds),
            fig(&h.wal),
            fig(&h.db),
            h.healthz_max_ms,
            h.healthz_late_max_ms,
            h.healthz_failed
        )
    });
    let failures: Vec<String> = failures.iter().map(|f| stats::json_str(f)).collect();
    println!(
        "{{\"mode\":\"soak\",\"url\":{},\"users\":{},\"seconds\":{load_secs:.1},\"rate\":{},\
         \"messages\":{{\"sent\":{},\"acknowledged\":{},\"acknowledged_group\":{},\
         \"unacknowledged_at_end\":{},\"skipped\":{}}},\"check\":{{\"passed\":{},\"missing\":{},\
         \"missing_places\":{},\"duplicated\":{},\"wrong_mid\":{},\"gaps\":{},\"corrupt\":{},\
         \"stored_unacked\":{},\"verified_users\":{}}},\"sent_ms\":{{\"p50\":{:.2},\"p99\":{:.2},\
         \"max\":{:.2}}},\"connections\":{},\"churned\":{},\"ended_by_server\":{},\
         \"groups\":{{\"created\":{},\"added\":{},\"left\":{}}},\"errors\":{},\"abusers\":{},\
         \"forge\":{},\"flood_replies\":{},\"hog_requests\":{},\"drip_bytes\":{},\"health\":{},\
         \"passed\":{},\"failures\":[{}]}}",
        stats::json_str(&opts.target.url),
        opts.users,
        opts.rate,
        c.sends,
        c.acked,
        c.acked_group,
        c.unacked_at_end,
        c.skipped,
        check.passed(),
        check.missing,
        check.missing_places,
        check.duplicated,
        check.wrong_mid,
        check.gaps,
        check.corrupt,
        check.stored_unacked,
        check.verified_users,
        ms(q[0]),
        ms(q[1]),
        ms(q[3]),
        c.connects,
        json_counts(&c.churned),
        json_counts(&c.user_ends),
        c.group_created,
        c.group_added,
        c.group_left,
        json_counts(&c.errors),
        json_counts(&c.abuse),
        json_counts(&c.forge),
        json_counts(&c.flood_replies),
        c.hog_requests,
        c.drip_bytes,
        health,
        failures.is_empty(),
        failures.join(",")
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Parsed;

    fn ours(sender: u32, n: u64, mid: u64) -> InboxEntry {
        InboxEntry {
            mid,
            origin: Origin::Ours { sender, n },
        }
    }

    fn inbox(entries: Vec<InboxEntry>) -> Option<Inbox> {
        Some(Inbox {
            head: entries.len() as u64,
            entries: entries
                .into_iter()
                .enumerate()
                .map(|(k, e)| (k as u64 + 1, e))
                .collect(),
            conflicts: 0,
        })
    }

    fn name(i: u32) -> String {
        format!("u{i}")
    }

    #[test]
    fn every_acknowledged_message_in_place_passes() {
        // u0 → u1 (mid 10), u1 → group 0 {u0, u1, u2} (mid 11).
        let acked = [
            Acked {
                sender: 0,
                n: 1,
                mid: 10,
                dest: Dest::User(1),
            },
            Acked {
                sender: 1,
                n: 1,
                mid: 11,
                dest: Dest::Group(0),
            },
        ];
        let group_change = InboxEntry {
            mid: 9,
            origin: Origin::Foreign,
        };
        let inboxes = [
            inbox(vec![group_change, ours(0, 1, 10), ours(1, 1, 11)]),
            inbox(vec![group_change, ours(0, 1, 10), ours(1, 1, 11)]),
            inbox(vec![group_change, ours(1, 1, 11)]),
            inbox(vec![]),
        ];
        let c = check(&acked, &inboxes, &[vec![0, 1, 2]], name);
        assert!(c.passed(), "{c:?}");
        assert_eq!(c.acknowledged, 2);
        assert_eq!(c.verified_users, 4);
    }

    #[test]
    fn missing_duplicated_and_misfiled_messages_fail() {
        let acked = [
            Acked {
                sender: 0,
                n: 1,
                mid: 10,
                dest: Dest::User(1),
            },
            Acked {
                sender: 0,
                n: 2,
                mid: 12,
                dest: Dest::User(1),
            },
            Acked {
                sender: 1,
                n: 1,
                mid: 11,
                dest: Dest::Group(0),
            },
        ];
        let inboxes = [
            // u0 has its two sends and the group message.
            inbox(vec![ours(0, 1, 10), ours(0, 2, 12), ours(1, 1, 11)]),
            // u1 lacks message 2 of u0, and holds message 1 twice.
            inbox(vec![ours(0, 1, 10), ours(0, 1, 13), ours(1, 1, 11)]),
            // u2 (core) lacks the group message; holds one never acknowledged.
            inbox(vec![ours(2, 1, 14)]),
        ];
        let c = check(&acked, &inboxes, &[vec![0, 1, 2]], name);
        assert!(!c.passed());
        assert_eq!(c.missing, 2, "{c:?}");
        assert_eq!(c.missing_places, 2);
        assert_eq!(c.duplicated, 1);
        assert_eq!(c.stored_unacked, 1);
        assert_eq!(c.wrong_mid, 0);
        assert!(c.problems.iter().any(|p| p.contains("stored 2 times")));

        let misfiled = [inbox(vec![ours(0, 1, 10)]), inbox(vec![ours(0, 1, 99)])];
        let acked = [Acked {
            sender: 0,
            n: 1,
            mid: 10,
            dest: Dest::User(1),
        }];
        let c = check(&acked, &misfiled, &[], name);
        assert_eq!(c.wrong_mid, 1);
        assert!(!c.passed());
    }

    #[test]
    fn gaps_and_unreplayed_inboxes_fail() {
        let mut holes = inbox(vec![ours(0, 1, 10), ours(0, 2, 11)]).unwrap();
        holes.entries[1].0 = 3;
        holes.head = 5;
        let c = check(&[], &[Some(holes), None], &[], name);
        // Seq 2 skipped, and 4..5 below the head never handed out.
        assert_eq!(c.gaps, 3, "{c:?}");
        assert_eq!(c.verified_users, 1);
        assert!(!c.passed());
    }

    #[test]
    fn stamps_round_trip() {
        let mut body = String::new();
        stamp(0xdead_beef, 17, 42, 60, &mut body);
        assert_eq!(body.len(), 60);
        assert_eq!(parse_stamp(&body), Some((0xdead_beef, 17, 42)));
        stamp(1, 2, 3, 0, &mut body);
        assert_eq!(parse_stamp(&body), Some((1, 2, 3)));
        assert_eq!(parse_stamp("soak.1.2.3."), None);
        assert_eq!(parse_stamp("hello"), None);
        assert_eq!(cid_counter("soak.0a1b2c3d.77"), Some(77));
        assert_eq!(user_index("soak", 200, "soak199"), Some(199));
        assert_eq!(user_index("soak", 200, "soak-hog"), None);
    }

    #[test]
    fn every_forged_token_is_refused_by_the_servers_verifier() {
        let now = courier::clock::wall_ms() / 1000;
        for k in 0..10 {
            let t = forged_token(k, "soak3", "s3cret", now);
            assert!(
                courier::im::auth::verify(&t, b"s3cret", now).is_err(),
                "shape {k} verified: {t}"
            );
        }
        // The tampered shape is a real token of the right secret with other claims.
        let real = client::mint_token("soak3", "s3cret");
        assert!(courier::im::auth::verify(&real, b"s3cret", now).is_ok());
    }

    fn parse(argv: &[&str]) -> Result<Opts, String> {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let Ok(Parsed::Run(v)) = args::parse(&argv, FLAGS) else {
            panic!("flags rejected");
        };
        opts(&v)
    }

    #[test]
    fn flags() {
        let o = parse(&["--jwt-secret", "s", "--url", "ws://127.0.0.1:9/ws"]).unwrap();
        assert_eq!(o.users, 200);
        assert_eq!(o.life_ms, (2_000, 20_000));
        assert_eq!(o.offline_ms, (100, 3_000));
        assert_eq!(o.rss_ceiling, 1 << 30);
        assert_eq!(o.limits.rss_slack, 16 << 20);
        assert!(o.abusers.hog && o.abusers.drip && o.abusers.forge && o.abusers.flood);
        let o = parse(&[
            "--jwt-secret",
            "s",
            "--abusers",
            "none",
            "--rss-ceiling",
            "512MiB",
        ])
        .unwrap();
        assert_eq!(o.abusers, Abusers::default());
        assert_eq!(o.rss_ceiling, 512 << 20);
        assert!(
            parse(&["--jwt-secret", "s", "--url", "ws://10.1.2.3:80/ws"])
                .unwrap_err()
                .contains("loopback")
        );
        assert!(parse(&["--jwt-secret", "s", "--abusers", "hog,bomb"]).is_err());
        assert!(parse(&["--jwt-secret", "s", "--users", "10"]).is_err());
        assert!(parse(&["--jwt-secret", "s", "--life", "20-2"]).is_err());
        assert!(parse(&["--users", "10"])
            .unwrap_err()
            .contains("--jwt-secret"));
    }
}
