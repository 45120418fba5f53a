//! `courier-bench fanout`: one group of G members, every member connected, S of them
//! sending to the group; every push is acked. Measures deliveries per second (group
//! messages displayed at the members), `sent`s per second, and send → delivery latency,
//! then checks that every member displayed every message that got a `sent` exactly once,
//! with a gap-free inbox.
//!
//! A run has these phases, driven by the main thread through `Shared::phase`. *Connect*:
//! every member signs in (users `{prefix}{run}-{i}`, fresh for every run, tokens minted
//! from `--jwt-secret`) and waits for its `welcome`. *Group*: member 0 creates the group
//! with `group_create` (and `group_add` for members past the 1000 one request may name);
//! every member waits for its `kind: "group"` inbox entry. *Load*: warmup then the
//! measured window; senders keep `--depth` sends waiting for `sent`, or share a paced
//! `--rate`. *Drain*: no new sends until every `sent` and every push is in. *Verify*:
//! each member syncs from its cursor to the head (filling anything missing) and a few
//! (`--replay`) replay their whole inbox from the run's start, compared seq by seq with
//! what was pushed live. *Close*: close 1000 everywhere, then the accounting.
//!
//! The hot path is the members' input: one read per readable socket, the crate's frame
//! decoder, a borrowed (zero-copy) JSON parse of each frame, a seq check and a bit in a
//! bitset per member, then one cumulative `ack` per member per read. No per-message
//! allocation on the receiving side.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

use courier::ws::frame::OpCode;
use mio::Events;
use serde::Deserialize;

use crate::args::{self, Flag};
use crate::client::{self, Client, Target};
use crate::imclient::{self, run_id, Clock, Ending, Input, Tally};
use crate::ledger::Stamp;
use crate::stats::{self, Progress};
use crate::svg;

pub const FLAGS: &[Flag] = &[
    imclient::URL,
    Flag {
        name: "jwt-secret",
        arg: "S",
        default: "none",
        help: "the server's token secret: each member's token is minted with it (required)",
    },
    Flag {
        name: "members",
        arg: "G",
        default: "1000",
        help: "group members, one connection each (the server's --max-group caps it)",
    },
    Flag {
        name: "senders",
        arg: "S",
        default: "1",
        help: "members that send to the group (members 0 .. S-1)",
    },
    Flag {
        name: "user-prefix",
        arg: "P",
        default: "fan",
        help: "member ids are P{run}-0 .. P{run}-{G-1}, {run} new for every run",
    },
    Flag {
        name: "rate",
        arg: "R",
        default: "0",
        help: "group messages per second offered in total, paced evenly over the senders; \
               0 = as fast as possible with --depth per sender",
    },
    Flag {
        name: "depth",
        arg: "D",
        default: "64",
        help: "with --rate 0: messages each sender keeps in flight (awaiting `sent`)",
    },
    imclient::SECONDS,
    imclient::WARMUP,
    imclient::SIZE,
    Flag {
        name: "threads",
        arg: "N",
        default: "1",
        help: "client threads, each with its own poll and an interleaved share of the members",
    },
    Flag {
        name: "drain",
        arg: "SECS",
        default: "30",
        help: "after the load: longest wait for outstanding `sent`s and deliveries",
    },
    Flag {
        name: "replay",
        arg: "K",
        default: "8",
        help: "members (spread over the group, the senders first) whose whole inbox is \
               replayed with sync at the end and compared seq by seq with the live pushes",
    },
    Flag {
        name: "svg",
        arg: "PATH",
        default: "none",
        help: "write the latency CDF and deliveries per second over time as an SVG chart",
    },
    imclient::JSON,
];

const ABOUT: &str = "\
Group fan-out: G members, one authenticated connection each (tokens minted here from
--jwt-secret), in one group that member 0 creates with group_create. S senders (members
0 .. S-1) send to group:<gid>, as fast as possible with --depth in flight each, or at a
paced total --rate. Every member acks its pushes (one cumulative ack per read). Each body
starts with a stamp (run, sender, message number, send time) padded to --size.

Reports deliveries/s (group messages displayed at the members per second in the measured
window: the headline), sends/s (`sent` replies per second), and send -> `sent` and send ->
delivery latency p50/p99/p99.9/max. Group change entries (kind \"group\") are inbox
entries like any other: they take seqs and are counted, not timed.

After the load the bench stops sending, waits for every `sent` and delivery (--drain),
then every member syncs from its cursor to its inbox head (anything a push missed is
filled in and counted) and --replay members replay their inbox from the start. The check:
every message that got a `sent` was displayed exactly once at every other member, the
sender's own entry sits at the seq its `sent` named, every inbox is gap-free from the
`welcome` cursor to the head, and the replayed inboxes hold what was pushed. A run that
lost, duplicated or contradicted anything says so and exits 1.

Start the server with a request limit above the senders' rate and, for more than 1000
members, a larger group limit:
  courier serve --jwt-secret S --rate 1000000 [--max-group 5000]

Exits 1 on a failed check, a lost connection, a setup failure (server not there, wrong
secret: 401, group refused) or no delivery in the measured window; 2 on bad flags.";

/// One thread's read buffer.
const READ_BUF: usize = 256 << 10;
/// Longest poll sleep during the load and after, and before it (phase changes are
/// noticed sooner).
const MAX_POLL: Duration = Duration::from_millis(100);
const SETUP_POLL: Duration = Duration::from_millis(5);
/// Members one `group_create`/`group_add` may name (the server's MAX_NAMED_MEMBERS).
const NAMED_PER_REQUEST: usize = 1000;
/// How long signing in, and then forming the group, may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the final syncs and replays may take, all members together.
/// How often the main thread looks at the workers' counters.
const WATCH_STEP: Duration = Duration::from_millis(10);
/// How often each worker runs its members' timers (a sync retry, an app ping).
const TICK_NS: u64 = 1_000_000_000;
/// A member that wrote nothing for this long sends an app ping (the server's idle
/// timeout is 75 s by default).
const PING_AFTER_NS: u64 = 20_000_000_000;
/// With --rate: sends a sender may have waiting for `sent` before the pacer passes it over.
const MAX_SENDER_BACKLOG: u32 = 10_000;
/// With --rate: the most slots a thread makes up at once after falling behind, in
/// seconds of its rate; older ones are skipped and reported.
const CATCH_UP_SECS: f64 = 0.05;
/// Entries a member holds above a gap while its sync fills it.
const MAX_HELD: usize = 1 << 16;

const CONNECT: u8 = 0;
const GROUP: u8 = 1;
const LOAD: u8 = 2;
const VERIFY: u8 = 3;
const CLOSE: u8 = 4;

#[derive(Debug)]
pub struct Opts {
    target: Target,
    secret: String,
    members: usize,
    senders: usize,
    prefix: String,
    rate: u64,
    depth: u32,
    seconds: Duration,
    warmup: Duration,
    size: usize,
    threads: usize,
    drain: Duration,
    replay: usize,
    svg: Option<PathBuf>,
    json: bool,
}

fn opts(values: &args::Values) -> Result<Opts, String> {
    let secret = match values.get("jwt-secret") {
        "none" | "" => {
            return Err("--jwt-secret is required: the secret the server signs tokens with".into())
        }
        s => s.to_owned(),
    };
    let members = values.count("members", 2)?;
    let senders = values.count("senders", 1)?;
    if senders > members {
        return Err(format!(
            "--senders {senders} is more than --members {members}"
        ));
    }
    let prefix = values.get("user-prefix").to_owned();
    let longest = format!("{prefix}{:08x}-{}", u32::MAX, members - 1);
    if !courier::im::auth::valid_user_id(&prefix) || !courier::im::auth::valid_user_id(&longest) {
        return Err(format!(
            "--user-prefix {prefix:?}: member ids like {longest:?} must be 1 to 64 of \
             [A-Za-z0-9_.-]"
        ));
    }
    let seconds = values.duration("seconds")?;
    if seconds.is_zero() {
        return Err("--seconds must be above 0".into());
    }
    let depth =
        u32::try_from(values.count("depth", 1)?).map_err(|_| "--depth is too large".to_owned())?;
    let svg = match values.get("svg") {
        "none" | "" => None,
        p => Some(PathBuf::from(p)),
    };
    Ok(Opts {
        target: Target::parse(values.get("url"))?,
        secret,
        members,
        senders,
        prefix,
        rate: values.count("rate", 0)? as u64,
        depth,
        seconds,
        warmup: values.duration("warmup")?,
        size: values.size("size")?,
        threads: values.count("threads", 1)?.min(members),
        drain: values.duration("drain")?,
        replay: values.count("replay", 0)?,
        svg,
        json: values.switch("json"),
    })
}

/// Entry point; returns the process exit code.
pub fn main(argv: &[String]) -> i32 {
    let opts = match args::options("fanout", ABOUT, FLAGS, argv, opts) {
        Ok(opts) => opts,
        Err(code) => return code,
    };
    if let Err(e) = client::ensure_fd_limit((opts.members + 16 + 2 * opts.threads) as libc::rlim_t)
    {
        eprintln!("courier-bench fanout: {e}");
        return 1;
    }
    run(&opts)
}

/// What one run names: its members and how to read their ids back.
struct Names {
    /// `{prefix}{run:08x}-`: every member id starts with it.
    stem: String,
    ids: Vec<String>,
    members: usize,
}

impl Names {
    fn new(prefix: &str, run: u32, members: usize) -> Names {
        let stem = format!("{prefix}{run:08x}-");
        let ids = (0..members).map(|i| format!("{stem}{i}")).collect();
        Names { stem, ids, members }
    }

    /// The member index of a user id (`None` for ids this run did not make).
    fn index_of(&self, id: &str) -> Option<u32> {
        let digits = id.strip_prefix(self.stem.as_str())?;
        if digits.is_empty()
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || (digits.len() > 1 && digits.starts_with('0'))
        {
            return None;
        }
        let i: u32 = digits.parse().ok()?;
        ((i as usize) < self.members).then_some(i)
    }
}

/// Counters a worker publishes for the main thread (progress line, phase changes).
#[derive(Clone, Copy, Default, Debug)]
struct Counters {
    welcomed: u64,
    /// Members that have seen a group entry: they are in the group.
    in_group: u64,
    offered: u64,
    /// Sends without their `sent` (or refusal) yet.
    pending: u64,
    sents: u64,
    sent_lat_ns: u64,
    /// This run's group messages displayed at members other than their sender.
    delivered: u64,
    deliver_lat_ns: u64,
    errors: u64,
    lost: u64,
    /// Members done with the verify phase either way, and those verified.
    settled: u64,
    verified: u64,
}

const N_COUNTERS: usize = 12;

impl Counters {
    fn to_array(self) -> [u64; N_COUNTERS] {
        [
            self.welcomed,
            self.in_group,
            self.offered,
            self.pending,
            self.sents,
            self.sent_lat_ns,
            self.delivered,
            self.deliver_lat_ns,
            self.errors,
            self.lost,
            self.settled,
            self.verified,
        ]
    }

    fn from_array(v: [u64; N_COUNTERS]) -> Counters {
        Counters {
            welcomed: v[0],
            in_group: v[1],
            offered: v[2],
            pending: v[3],
            sents: v[4],
            sent_lat_ns: v[5],
            delivered: v[6],
            deliver_lat_ns: v[7],
            errors: v[8],
            lost: v[9],
            settled: v[10],
            verified: v[11],
        }
    }

    fn add(&mut self, o: &Counters) {
        let mut a = self.to_array();
        for (x, y) in a.iter_mut().zip(o.to_array()) {
            *x += y;
        }
        *self = Counters::from_array(a);
    }
}

/// A worker's published counters: relaxed stores once per wake-up, read by the main
/// thread. Padded to its own cache lines.
#[repr(align(128))]
#[derive(Default)]
struct Live([AtomicU64; N_COUNTERS]);

impl Live {
    fn publish(&self, c: &Counters) {
        for (a, v) in self.0.iter().zip(c.to_array()) {
            a.store(v, Ordering::Relaxed);
        }
    }

    fn sum(all: &[Live]) -> Counters {
        let mut s = Counters::default();
        for l in all {
            let v = std::array::from_fn(|i| l.0[i].load(Ordering::Relaxed));
            s.add(&Counters::from_array(v));
        }
        s
    }
}

struct Shared {
    /// Every worker has connected (or failed).
    setup: Barrier,
    abort: AtomicBool,
    error: Mutex<Option<String>>,
    phase: AtomicU8,
    /// The group's id, set by the owner's worker from the `group` reply.
    gid: OnceLock<String>,
    /// Every `group_create`/`group_add` has been answered.
    group_ready: AtomicBool,
    /// The load's start on the run's clock (ns), set before `phase` becomes LOAD.
    load_start_ns: AtomicU64,
    live: Vec<Live>,
}

impl Shared {
    fn fail(&self, msg: String) {
        let mut first = self.error.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert(msg);
        self.abort.store(true, Ordering::Relaxed);
    }
}

/// One second of the run as the main thread saw it.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// Seconds since the load started, at the end of the interval.
    t: f64,
    deliveries: f64,
    sends: f64,
    /// Mean send → delivery latency in the interval, microseconds.
    mean_us: f64,
}

/// How the run went, from the main thread's side.
#[derive(Default)]
struct Timeline {
    connect: Duration,
    group: Duration,
    end: Ending,
    samples: Vec<Sample>,
}

/// What an inbox entry turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Got {
    /// Message `n` of member `sender` in this run (a member's own message too).
    Ours { sender: u32, n: u64 },
    /// A group change (`kind: "group"`).
    Group,
    /// Not from this run.
    Foreign,
    /// This run's stamp contradicting the entry, or a damaged body.
    Corrupt,
}

/// One send of a sender: when, and the seq its `sent` gave.
#[derive(Clone, Copy, Debug, Default)]
struct SendRec {
    at_ns: u64,
    seq: Option<u64>,
    refused: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SyncKind {
    /// A gap in the live stream, or the rest of a full page.
    Fill,
    /// Verify: from the cursor to the head.
    Final,
    /// Verify: the whole inbox from the run's start.
    Replay,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Live,
    Final,
    Replay,
    Done,
}

/// The owner's part in forming the group: the create and the adds, one at a time.
struct GroupSetup {
    /// Member indexes each request names: the create first, then the adds.
    batches: Vec<std::ops::Range<usize>>,
    next: usize,
    in_flight: bool,
    gid: Option<String>,
}

/// One member's state besides its socket.
struct State {
    idx: u32,
    welcomed: bool,
    /// `welcome.inbox_seq`: the run starts after it.
    start: u64,
    /// The highest seq displayed with none missing below it.
    cursor: u64,
    /// Entries above a gap, with their send time (0 when unknown).
    held: BTreeMap<u64, (Got, u64)>,
    ack_owed: bool,
    /// A sync in flight (its rid number) and the one to send next.
    sync: Option<(u64, SyncKind)>,
    want_sync: Option<SyncKind>,
    next_rid: u64,
    in_group: bool,
    stage: Stage,
    /// The head the final sync reported.
    head: Option<u64>,
    /// Per sender, a bit per message number: displayed here.
    got: Vec<Vec<u64>>,
    duplicates: u64,
    mismatched: u64,
    repushes: u64,
    /// Entries that came by a sync, not by a live push.
    filled: u64,
    group_entries: u64,
    foreign: u64,
    /// Replay members: every entry displayed, in seq order, and the replay's entries.
    log: Option<Vec<(u64, Got)>>,
    replay: Vec<(u64, Got)>,
    /// Sender part: message n is `sends[n - 1]`; sends it may make now.
    sends: Vec<SendRec>,
    pending: u32,
    credit: u32,
    /// Owner only.
    group: Option<GroupSetup>,
    last_write_ns: u64,
    lost: bool,
    settled: bool,
}

struct Member {
    client: Option<Client>,
    st: State,
}

/// What one member leaves for the final accounting.
struct Outcome {
    idx: u32,
    welcomed: bool,
    verified: bool,
    start: u64,
    cursor: u64,
    head: Option<u64>,
    held: usize,
    got: Vec<Vec<u64>>,
    duplicates: u64,
    mismatched: u64,
    replay_gaps: u64,
    replay_mismatched: u64,
    replayed: bool,
    sends: Vec<SendRec>,
}

/// What one worker measured: its counters, the counts both IM modes keep, and the
/// group's own.
#[derive(Default)]
struct Totals {
    c: Counters,
    tally: Tally,
    repushes: u64,
    filled: u64,
    group_entries: u64,
    foreign: u64,
}

impl Totals {
    fn merge(&mut self, o: &Totals) {
        self.c.add(&o.c);
        self.tally.merge(&o.tally);
        self.repushes += o.repushes;
        self.filled += o.filled;
        self.group_entries += o.group_entries;
        self.foreign += o.foreign;
    }
}

imclient::deref_tally!(Totals);

/// The verdict over every member's outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Check {
    members: u64,
    verified: u64,
    sends: u64,
    /// Sends whose `sent` came back: owed to every other member.
    confirmed: u64,
    refused: u64,
    /// (confirmed message, other member) pairs displayed exactly once.
    delivered_once: u64,
    /// (confirmed message, other member) pairs never displayed.
    not_delivered: u64,
    /// Displays of a message beyond its first at one member (it was stored twice).
    duplicates: u64,
    /// Seqs between a member's start and its head that it never got.
    gaps: u64,
    /// Contradictions: an own message at a seq its `sent` did not name, a damaged stamp,
    /// a replayed inbox that differs from what was pushed.
    mismatched: u64,
    /// Displays of messages that got no `sent` (allowed: at-least-once).
    unconfirmed_displays: u64,
    replayed: u64,
    problems: Vec<String>,
}

impl Check {
    fn faults(&self) -> u64 {
        self.not_delivered + self.duplicates + self.gaps + self.mismatched
    }

    fn passed(&self) -> bool {
        self.faults() == 0 && self.verified == self.members
    }

    fn problem(&mut self, what: impl FnOnce() -> String) {
        if self.problems.len() < 8 {
            self.problems.push(what());
        }
    }
}

#[inline]
fn bit_set(bits: &mut Vec<u64>, i: u64) -> bool {
    let (w, b) = ((i / 64) as usize, i % 64);
    if bits.len() <= w {
        bits.resize(w + 1, 0);
    }
    let was = bits[w] & (1 << b) != 0;
    bits[w] |= 1 << b;
    was
}

/// The accounting: every confirmed message at every other verified member exactly once,
/// every verified inbox gap-free to its head.
fn check(outcomes: &[Outcome], senders: usize, name: impl Fn(u32) -> String) -> Check {
    let mut c = Check {
        members: outcomes.len() as u64,
        ..Check::default()
    };
    // Confirmed messages per sender, as bitsets over the message number.
    let mut confirmed: Vec<Vec<u64>> = vec![Vec::new(); senders];
    for o in outcomes.iter().filter(|o| (o.idx as usize) < senders) {
        for (i, rec) in o.sends.iter().enumerate() {
            c.sends += 1;
            if rec.seq.is_some() {
                c.confirmed += 1;
                bit_set(&mut confirmed[o.idx as usize], i as u64 + 1);
            } else if rec.refused {
                c.refused += 1;
            }
        }
    }
    for o in outcomes {
        c.duplicates += o.duplicates;
        c.mismatched += o.mismatched + o.replay_mismatched;
        c.gaps += o.replay_gaps;
        if o.replayed {
            c.replayed += 1;
        }
        if o.duplicates > 0 {
            c.problem(|| {
                format!(
                    "{} displayed {} message(s) twice",
                    name(o.idx),
                    o.duplicates
                )
            });
        }
        if o.mismatched > 0 {
            c.problem(|| format!("{}: {} contradicting entries", name(o.idx), o.mismatched));
        }
        if o.replay_gaps + o.replay_mismatched > 0 {
            c.problem(|| {
                format!(
                    "{}: the replayed inbox differs from the live pushes ({} missing, {} \
                     different)",
                    name(o.idx),
                    o.replay_gaps,
                    o.replay_mismatched
                )
            });
        }
        if !o.verified {
            continue;
        }
        c.verified += 1;
        let head = o.head.unwrap_or(o.cursor);
        if head > o.cursor {
            c.gaps += head - o.cursor;
            c.problem(|| {
                format!(
                    "{}'s inbox stops at seq {} of head {} (the run started after seq {}; {} \
                     entries held above a gap)",
                    name(o.idx),
                    o.cursor,
                    head,
                    o.start,
                    o.held
                )
            });
        }
        for (s, conf) in confirmed.iter().enumerate() {
            let got = o.got.get(s).map_or(&[][..], Vec::as_slice);
            if s == o.idx as usize {
                // The sender's own entries are its `sent`s: the gap check covers them.
                continue;
            }
            let mut missing = 0u64;
            for (w, &cw) in conf.iter().enumerate() {
                let gw = got.get(w).copied().unwrap_or(0);
                c.delivered_once += u64::from((cw & gw).count_ones());
                missing += u64::from((cw & !gw).count_ones());
                c.unconfirmed_displays += u64::from((gw & !cw).count_ones());
            }
            for &gw in got.iter().skip(conf.len()) {
                c.unconfirmed_displays += u64::from(gw.count_ones());
            }
            if missing > 0 {
                c.not_delivered += missing;
                c.problem(|| {
                    let first = (0..conf.len() as u64 * 64)
                        .find(|&n| {
                            let (w, b) = ((n / 64) as usize, n % 64);
                            conf[w] & (1 << b) != 0
                                && got.get(w).copied().unwrap_or(0) & (1 << b) == 0
                        })
                        .unwrap_or(0);
                    format!(
                        "{} never displayed {missing} confirmed message(s) of {} (the first: \
                         #{first})",
                        name(o.idx),
                        name(s as u32)
                    )
                });
            }
        }
    }
    for o in outcomes.iter().filter(|o| !o.verified && o.welcomed) {
        c.problem(|| format!("{}'s inbox could not be verified", name(o.idx)));
    }
    c
}

/// Whether member `idx` replays its whole inbox at the end: the senders first (they see
/// both `sent`s and pushes), then members spread evenly over the rest.
fn replays(idx: usize, members: usize, senders: usize, k: usize) -> bool {
    if k == 0 {
        return false;
    }
    if k >= members {
        return true;
    }
    let from_senders = senders.min(k);
    if idx < senders {
        return idx < from_senders;
    }
    let rest = k - from_senders;
    if rest == 0 {
        return false;
    }
    let span = members - senders;
    let step = span.div_ceil(rest);
    (idx - senders) % step == step - 1 || (idx == members - 1 && rest > 0)
}

fn run(opts: &Opts) -> i32 {
    let run = run_id() as u32;
    let names = Names::new(&opts.prefix, run, opts.members);
    let base = Instant::now();
    let shared = Shared {
        setup: Barrier::new(opts.threads + 1),
        abort: AtomicBool::new(false),
        error: Mutex::new(None),
        phase: AtomicU8::new(CONNECT),
        gid: OnceLock::new(),
        group_ready: AtomicBool::new(false),
        load_start_ns: AtomicU64::new(0),
        live: (0..opts.threads).map(|_| Live::default()).collect(),
    };
    let mut progress = Progress::new();
    if !opts.json {
        progress.line(&format!(
            "signing in {} members to {} ({})...",
            opts.members, opts.target.url, opts.target.addr
        ));
    }
    let mut sum = Totals::default();
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(opts.members);
    let mut timeline = Timeline::default();
    std::thread::scope(|scope| {
        let shared = &shared;
        let names = &names;
        let handles: Vec<_> = (0..opts.threads)
            .map(|k| {
                std::thread::Builder::new()
                    .name(format!("fanout-{k}"))
                    .spawn_scoped(scope, move || {
                        worker(k, opts, names, shared, Clock(base), run)
                    })
                    .expect("spawn a bench thread")
            })
            .collect();
        shared.setup.wait();
        if !shared.abort.load(Ordering::Relaxed) {
            drive(opts, shared, Clock(base), &mut progress, &mut timeline);
        }
        shared.phase.store(CLOSE, Ordering::Release);
        for h in handles {
            let (t, mine) = h.join().expect("bench thread");
            sum.merge(&t);
            outcomes.extend(mine);
        }
    });
    progress.finish();

    if let Some(e) = shared.error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        eprintln!("courier-bench fanout: {e}");
        if let Some(p) = &sum.first_problem {
            eprintln!("courier-bench fanout: first problem: {p}");
        }
        return 1;
    }
    outcomes.sort_by_key(|o| o.idx);
    let check = check(&outcomes, opts.senders, |i| names.ids[i as usize].clone());
    let gid = shared.gid.get().cloned().unwrap_or_default();
    report(opts, &gid, &sum, &check, &timeline);
    if let Some(path) = &opts.svg {
        let doc = chart(opts, &sum, &timeline);
        if let Err(e) = std::fs::write(path, doc) {
            eprintln!("courier-bench fanout: writing {}: {e}", path.display());
            return 1;
        }
    }
    if let Some(p) = &sum.first_problem {
        eprintln!("courier-bench fanout: first problem: {p}");
    }
    for p in &check.problems {
        eprintln!("courier-bench fanout: check: {p}");
    }
    if let Some(n) = sum.errors_by_code.get("rate_limited") {
        eprintln!(
            "courier-bench fanout: {n} requests were refused as rate_limited: run the server \
             with a higher --rate (e.g. courier serve --rate 1000000)"
        );
    }
    let mut failed = false;
    if !check.passed() {
        eprintln!(
            "courier-bench fanout: FAILED: the exactly-once check found {} fault(s){}",
            check.faults(),
            if check.verified < check.members {
                format!(
                    " and {} of {} inboxes could not be verified",
                    check.members - check.verified,
                    check.members
                )
            } else {
                String::new()
            }
        );
        failed = true;
    }
    if sum.c.lost > 0 {
        eprintln!(
            "courier-bench fanout: FAILED: {} connection(s) lost during the run",
            sum.c.lost
        );
        failed = true;
    }
    if sum.delivered_w == 0 {
        eprintln!("courier-bench fanout: FAILED: no delivery during the measured window");
        failed = true;
    }
    i32::from(failed)
}

/// The main thread: moves the phases on from the workers' counters and prints the
/// progress line each second.
fn drive(
    opts: &Opts,
    shared: &Shared,
    clock: Clock,
    progress: &mut Progress,
    timeline: &mut Timeline,
) {
    let members = opts.members as u64;
    let aborted = || shared.abort.load(Ordering::Relaxed);
    // Connect: every member has its `welcome` (the clock started before the first connect).
    let started = clock.0;
    let mut next_line = started + Duration::from_secs(1);
    loop {
        std::thread::sleep(WATCH_STEP);
        let s = Live::sum(&shared.live);
        if aborted() {
            return;
        }
        if s.welcomed >= members {
            break;
        }
        if s.lost > 0 || started.elapsed() > SETUP_TIMEOUT {
            shared.fail(format!(
                "only {} of {} members got a `welcome` ({} connections lost; is the URL \
                 courier's IM endpoint, /ws?)",
                s.welcomed, members, s.lost
            ));
            return;
        }
        if Instant::now() >= next_line && !opts.json {
            progress.line(&format!(
                "{:>6.1}s connect  welcomed {}/{}",
                started.elapsed().as_secs_f64(),
                s.welcomed,
                members
            ));
            next_line += Duration::from_secs(1);
        }
    }
    timeline.connect = started.elapsed();
    // Group: created, every member has seen a group entry.
    shared.phase.store(GROUP, Ordering::Release);
    let group_start = Instant::now();
    loop {
        std::thread::sleep(WATCH_STEP);
        let s = Live::sum(&shared.live);
        if aborted() {
            return;
        }
        if shared.group_ready.load(Ordering::Acquire) && s.in_group >= members {
            break;
        }
        if s.lost > 0 || group_start.elapsed() > SETUP_TIMEOUT {
            shared.fail(format!(
                "the group did not form: {} of {} members saw its entry within {} s ({} \
                 connections lost)",
                s.in_group,
                members,
                SETUP_TIMEOUT.as_secs(),
                s.lost
            ));
            return;
        }
        if Instant::now() >= next_line && !opts.json {
            progress.line(&format!(
                "{:>6.1}s group    group {} members in {}/{}",
                started.elapsed().as_secs_f64(),
                shared.gid.get().map_or("?", String::as_str),
                s.in_group,
                members
            ));
            next_line += Duration::from_secs(1);
        }
    }
    timeline.group = group_start.elapsed();

    // Load.
    let t0 = Instant::now();
    shared.load_start_ns.store(clock.ns(), Ordering::Relaxed);
    shared.phase.store(LOAD, Ordering::Release);
    let load_end = t0 + opts.warmup + opts.seconds;
    let mut next_line = t0 + Duration::from_secs(1);
    let mut last = Live::sum(&shared.live);
    let mut last_at = t0;
    let owed = |s: &Counters| s.sents * (members - 1);
    loop {
        std::thread::sleep(WATCH_STEP);
        let now = Instant::now();
        let s = Live::sum(&shared.live);
        let drained = s.pending == 0 && s.delivered >= owed(&s);
        let settled = s.settled >= members;
        let phase = &shared.phase;
        if timeline
            .end
            .step(now, load_end, opts.drain, drained, settled, phase, VERIFY)
        {
            return;
        }
        if now >= next_line {
            let dt = (now - last_at).as_secs_f64().max(1e-9);
            let deliveries = s.delivered - last.delivered;
            let sample = Sample {
                t: (now - t0).as_secs_f64(),
                deliveries: deliveries as f64 / dt,
                sends: (s.sents - last.sents) as f64 / dt,
                mean_us: (s.deliver_lat_ns - last.deliver_lat_ns)
                    .checked_div(deliveries)
                    .map_or(0.0, stats::us),
            };
            if !timeline.end.verifying() {
                timeline.samples.push(sample);
            }
            if !opts.json {
                let phase = if timeline.end.verifying() {
                    "verify"
                } else if now >= load_end {
                    "drain"
                } else if now < t0 + opts.warmup + Duration::from_millis(1) {
                    "warmup"
                } else {
                    "measure"
                };
                let head = format!("{:>6.1}s {phase:<8}", sample.t);
                let line = match phase {
                    "verify" => format!(
                        "{head} inboxes verified {}/{}  lost {}  errors {}",
                        s.verified, members, s.lost, s.errors
                    ),
                    "drain" => format!(
                        "{head} waiting for {} `sent`s and {} deliveries  lost {}  errors {}",
                        stats::grouped(s.pending),
                        stats::grouped(owed(&s).saturating_sub(s.delivered)),
                        s.lost,
                        s.errors
                    ),
                    _ => format!(
                        "{head} {:>11} deliveries/s {:>8} sends/s  mean latency {:>9.1} us  \
                         in flight {}  errors {}  lost {}",
                        stats::grouped(sample.deliveries as u64),
                        stats::grouped(sample.sends as u64),
                        sample.mean_us,
                        s.pending,
                        s.errors,
                        s.lost
                    ),
                };
                progress.line(&line);
            }
            last = s;
            last_at = now;
            next_line += Duration::from_secs(1);
        }
    }
}

/// The raw fields of a server frame this bench reads; `S` is `&str` on the fast path (no
/// copy, fails on a string with escapes) and `String` on the slow one.
#[derive(Deserialize)]
struct Frame<S> {
    #[serde(rename = "type")]
    ty: S,
    seq: Option<u64>,
    inbox_seq: Option<u64>,
    head: Option<u64>,
    more: Option<bool>,
    from: Option<S>,
    body: Option<S>,
    kind: Option<S>,
    cid: Option<S>,
    gid: Option<S>,
    rid: Option<S>,
    code: Option<S>,
    message: Option<S>,
}

/// A frame's fields, borrowed.
struct View<'a> {
    ty: &'a str,
    seq: Option<u64>,
    inbox_seq: Option<u64>,
    head: Option<u64>,
    more: bool,
    from: &'a str,
    body: &'a str,
    kind: &'a str,
    cid: Option<&'a str>,
    gid: Option<&'a str>,
    rid: Option<&'a str>,
    code: &'a str,
    message: &'a str,
}

impl<S: AsRef<str>> Frame<S> {
    fn view(&self) -> View<'_> {
        fn s<S: AsRef<str>>(v: &Option<S>) -> Option<&str> {
            v.as_ref().map(AsRef::as_ref)
        }
        View {
            ty: self.ty.as_ref(),
            seq: self.seq,
            inbox_seq: self.inbox_seq,
            head: self.head,
            more: self.more.unwrap_or(false),
            from: s(&self.from).unwrap_or(""),
            body: s(&self.body).unwrap_or(""),
            kind: s(&self.kind).unwrap_or("text"),
            cid: s(&self.cid),
            gid: s(&self.gid),
            rid: s(&self.rid),
            code: s(&self.code).unwrap_or(""),
            message: s(&self.message).unwrap_or(""),
        }
    }
}

/// A worker's state apart from its members.
struct Ctx<'a> {
    opts: &'a Opts,
    names: &'a Names,
    shared: &'a Shared,
    run: u32,
    /// `run` as the stamps write it.
    run_hex: String,
    clock: Clock,
    /// `group:<gid>`, once the load starts.
    to: String,
    /// `<run>.`: every cid starts with it, then the message number.
    cid_prefix: String,
    /// The measured window and the end of the load on `clock`; 0 until the load starts.
    from_ns: u64,
    to_ns: u64,
    loading_started: bool,
    t: Totals,
    body: String,
    scratch: String,
}

impl Ctx<'_> {
    #[inline]
    fn measuring(&self, now: u64) -> bool {
        self.loading_started && now >= self.from_ns && now < self.to_ns
    }

    #[inline]
    fn loading(&self, now: u64) -> bool {
        self.loading_started && now < self.to_ns
    }
}

fn worker(
    k: usize,
    opts: &Opts,
    names: &Names,
    shared: &Shared,
    clock: Clock,
    run: u32,
) -> (Totals, Vec<Outcome>) {
    let count = opts.members / opts.threads + usize::from(k < opts.members % opts.threads);
    let global = |j: usize| k + j * opts.threads;
    let token = |j: usize| client::mint_token(&names.ids[global(j)], &opts.secret);
    let seed = (k as u32).wrapping_mul(0x85EB_CA6B) ^ 0x1B87_3593;
    let fail = |msg| shared.fail(msg);
    let setup = imclient::connect_share(&opts.target, count, seed, &token, &shared.abort, fail);
    shared.setup.wait();
    let (Some((mut poll, clients)), false) = (setup, shared.abort.load(Ordering::Relaxed)) else {
        return (Totals::default(), Vec::new());
    };

    let mut ctx = Ctx {
        opts,
        names,
        shared,
        run,
        run_hex: format!("{run:08x}"),
        clock,
        to: String::new(),
        cid_prefix: format!("{run:08x}."),
        from_ns: 0,
        to_ns: 0,
        loading_started: false,
        t: Totals::default(),
        body: String::with_capacity(opts.size + 64),
        scratch: String::with_capacity(opts.size + 256),
    };
    let mut members: Vec<Member> = clients
        .into_iter()
        .enumerate()
        .map(|(j, client)| {
            let idx = global(j);
            let replay = replays(idx, opts.members, opts.senders, opts.replay);
            Member {
                client: Some(client),
                st: State {
                    idx: idx as u32,
                    welcomed: false,
                    start: 0,
                    cursor: 0,
                    held: BTreeMap::new(),
                    ack_owed: false,
                    sync: None,
                    want_sync: None,
                    next_rid: 1,
                    in_group: false,
                    stage: Stage::Live,
                    head: None,
                    got: Vec::new(),
                    duplicates: 0,
                    mismatched: 0,
                    repushes: 0,
                    filled: 0,
                    group_entries: 0,
                    foreign: 0,
                    log: replay.then(Vec::new),
                    replay: Vec::new(),
                    sends: Vec::new(),
                    pending: 0,
                    credit: 0,
                    group: None,
                    last_write_ns: 0,
                    lost: false,
                    settled: false,
                },
            }
        })
        .collect();
    let live = &shared.live[k];
    let mut events = Events::with_capacity(1024);
    let mut rbuf = vec![0u8; READ_BUF];

    // Frames that arrived behind the 101 first, then whatever came after it while the
    // handshakes ran (the `welcome` may follow the 101 by a store read): its readiness edge
    // was taken by the handshake's poll, so the socket is read once by hand.
    for m in members.iter_mut() {
        let now = ctx.clock.ns();
        let result = m.client.as_mut().map_or(Ok(()), |c| {
            let mut pending = std::mem::take(&mut c.pending);
            imclient::feed(c, &mut pending, |input| {
                on_input(&mut m.st, &mut ctx, input, now)
            })
        });
        let result = result.and_then(|()| on_readable(m, &mut ctx, &mut rbuf, now));
        after_input(m, &mut ctx, result, now);
    }

    // Senders on this thread (local indexes), for --rate.
    let local_senders: Vec<usize> = (0..members.len())
        .filter(|&j| (members[j].st.idx as usize) < opts.senders)
        .collect();
    let rate = opts.rate as f64 * local_senders.len() as f64 / opts.senders as f64;
    let mut paced: u64 = 0;
    let mut rr = 0usize;
    let mut next_tick = ctx.clock.ns() + TICK_NS;
    let mut verify_left = true;
    let mut group_started = false;
    loop {
        let now = ctx.clock.ns();
        let phase = shared.phase.load(Ordering::Acquire);
        if phase == CLOSE {
            break;
        }
        if phase >= GROUP && !group_started {
            group_started = true;
            if let Some(m) = members.iter_mut().find(|m| m.st.idx == 0) {
                let named = opts.members - 1;
                let batches = (0..named.div_ceil(NAMED_PER_REQUEST).max(1))
                    .map(|b| {
                        let lo = 1 + b * NAMED_PER_REQUEST;
                        lo..(lo + NAMED_PER_REQUEST).min(opts.members)
                    })
                    .collect();
                m.st.group = Some(GroupSetup {
                    batches,
                    next: 0,
                    in_flight: false,
                    gid: None,
                });
                after_input(m, &mut ctx, Ok(()), now);
            }
        }
        if phase >= LOAD && !ctx.loading_started {
            let start = shared.load_start_ns.load(Ordering::Relaxed);
            ctx.from_ns = start + opts.warmup.as_nanos() as u64;
            ctx.to_ns = ctx.from_ns + opts.seconds.as_nanos() as u64;
            ctx.to = format!("group:{}", shared.gid.get().map_or("", String::as_str));
            ctx.loading_started = true;
            paced = (now.saturating_sub(start) as f64 * rate / 1e9) as u64;
            if opts.rate == 0 {
                for &j in &local_senders {
                    members[j].st.credit = opts.depth;
                    after_input(&mut members[j], &mut ctx, Ok(()), now);
                }
            }
        }
        if phase == VERIFY && verify_left {
            verify_left = start_verifies(&mut members, &mut ctx, now);
        }
        let mut timeout = if phase < LOAD { SETUP_POLL } else { MAX_POLL };
        if opts.rate > 0 && ctx.loading(now) && !local_senders.is_empty() {
            let start = shared.load_start_ns.load(Ordering::Relaxed);
            pace(
                &mut members,
                &local_senders,
                &mut ctx,
                now,
                start,
                rate,
                &mut paced,
                &mut rr,
            );
            let next_due = start + ((paced + 1) as f64 * 1e9 / rate) as u64;
            timeout = timeout.min(Duration::from_nanos(next_due.saturating_sub(now)));
        }
        if ctx.loading(now) {
            timeout = timeout.min(Duration::from_nanos(ctx.to_ns - now));
        }
        if phase == VERIFY && verify_left {
            timeout = timeout.min(WATCH_STEP);
        }
        if now >= next_tick {
            tick(&mut members, &mut ctx, now);
            next_tick = now + TICK_NS;
        }
        live.publish(&ctx.t.c);
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            ctx.t.problem(|| format!("epoll: {e}"));
            ctx.t.c.errors += 1;
            break;
        }
        for (i, event) in events.iter().enumerate() {
            let Some(m) = members.get_mut(event.token().0) else {
                continue;
            };
            let now = ctx.clock.ns();
            let result = on_readable(m, &mut ctx, &mut rbuf, now);
            after_input(m, &mut ctx, result, now);
            // A long batch of input must not starve the --rate schedule.
            if opts.rate > 0 && i % 32 == 31 && ctx.loading(now) && !local_senders.is_empty() {
                let start = shared.load_start_ns.load(Ordering::Relaxed);
                pace(
                    &mut members,
                    &local_senders,
                    &mut ctx,
                    now,
                    start,
                    rate,
                    &mut paced,
                    &mut rr,
                );
            }
        }
    }

    ctx.t.unclosed = imclient::close_all(
        &mut members,
        |m| &mut m.client,
        &mut poll,
        &mut events,
        &mut rbuf,
    );
    live.publish(&ctx.t.c);
    let outcomes = members.into_iter().map(|m| outcome(m.st)).collect();
    (ctx.t, outcomes)
}

/// A member's state turned into what the accounting needs, the replay compared here.
fn outcome(st: State) -> Outcome {
    let mut replay_gaps = 0;
    let mut replay_mismatched = 0;
    let replayed = st.log.is_some() && st.stage == Stage::Done;
    if let (Some(log), true) = (&st.log, replayed) {
        let live: HashMap<u64, Got> = log.iter().copied().collect();
        let mut expect = st.start + 1;
        for &(seq, got) in &st.replay {
            if seq > expect {
                replay_gaps += seq - expect;
            }
            expect = expect.max(seq + 1);
            match live.get(&seq) {
                Some(g) if *g == got => {}
                _ => replay_mismatched += 1,
            }
        }
        let head = st.head.unwrap_or(st.cursor);
        if expect <= head {
            replay_gaps += head + 1 - expect;
        }
    }
    Outcome {
        idx: st.idx,
        welcomed: st.welcomed,
        verified: st.stage == Stage::Done && !st.lost,
        start: st.start,
        cursor: st.cursor,
        head: st.head,
        held: st.held.len(),
        got: st.got,
        duplicates: st.duplicates,
        mismatched: st.mismatched,
        replay_gaps,
        replay_mismatched,
        replayed,
        sends: st.sends,
    }
}

/// Reads a readable socket until it is drained, handing every frame to the member.
fn on_readable(m: &mut Member, ctx: &mut Ctx<'_>, rbuf: &mut [u8], now: u64) -> Result<(), String> {
    let Some(c) = m.client.as_mut() else {
        return Ok(());
    };
    imclient::read_available(c, rbuf, |input| on_input(&mut m.st, ctx, input, now))
}

fn on_input(st: &mut State, ctx: &mut Ctx<'_>, input: Input<'_>, now: u64) {
    match input {
        Input::Text(text) => on_text(st, ctx, text, now),
        Input::Binary => ctx.t.binary_frame(),
    }
}

fn on_text(st: &mut State, ctx: &mut Ctx<'_>, text: &[u8], now: u64) {
    match serde_json::from_slice::<Frame<&str>>(text) {
        Ok(f) => on_frame(st, ctx, &f.view(), now),
        Err(_) => match serde_json::from_slice::<Frame<String>>(text) {
            Ok(f) => on_frame(st, ctx, &f.view(), now),
            Err(_) => {
                ctx.t.other_frames += 1;
                let text = String::from_utf8_lossy(text)
                    .chars()
                    .take(200)
                    .collect::<String>();
                ctx.t
                    .problem(|| format!("a frame that is not a JSON object: {text}"));
            }
        },
    }
}

fn on_frame(st: &mut State, ctx: &mut Ctx<'_>, f: &View<'_>, now: u64) {
    match f.ty {
        "msg" => on_msg(st, ctx, f, now),
        "sent" => on_sent(st, ctx, f, now),
        "synced" => on_synced(st, ctx, f),
        "welcome" if !st.welcomed => {
            st.welcomed = true;
            st.start = f.inbox_seq.unwrap_or(0);
            st.cursor = st.start;
            ctx.t.c.welcomed += 1;
        }
        "group" => on_group_reply(st, ctx, f),
        "error" => on_error(st, ctx, f, now),
        "pong" | "ok" => {}
        _ => ctx.t.other_frames += 1,
    }
}

/// What a `msg` is, and its send time from the stamp (0 for entries without one).
fn classify(ctx: &Ctx<'_>, f: &View<'_>) -> (Got, u64) {
    if f.kind == "group" {
        return (Got::Group, 0);
    }
    match Stamp::parse(f.body) {
        Some(stamp) if stamp.run == ctx.run => {
            let ok = f.kind == "text"
                && (stamp.sender as usize) < ctx.opts.senders
                && ctx.names.index_of(f.from) == Some(stamp.sender);
            if ok {
                let got = Got::Ours {
                    sender: stamp.sender,
                    n: stamp.n,
                };
                (got, stamp.t_ns)
            } else {
                (Got::Corrupt, 0)
            }
        }
        _ if f.body.starts_with("cb1.") && f.body.get(4..12) == Some(&ctx.run_hex) => {
            (Got::Corrupt, 0)
        }
        _ => (Got::Foreign, 0),
    }
}

fn on_msg(st: &mut State, ctx: &mut Ctx<'_>, f: &View<'_>, now: u64) {
    st.ack_owed = true;
    let Some(seq) = f.seq else {
        ctx.t.other_frames += 1;
        return;
    };
    let (got, t_ns) = classify(ctx, f);
    if let Some((_, SyncKind::Replay)) = st.sync {
        // The replay from the start: entries go to their own list (a re-push of an
        // entry already replayed is a repeat of a seq, and dropped).
        if st.replay.last().map_or(true, |&(last, _)| seq > last) {
            st.replay.push((seq, got));
        }
        return;
    }
    let via_sync = st.sync.is_some();
    accept(st, ctx, seq, (got, t_ns), via_sync, now);
}

/// Takes in the entry at `seq`: displays it and everything it frees when it is the next
/// one, holds it above a gap (and asks for a sync) otherwise, drops a repeat.
fn accept(
    st: &mut State,
    ctx: &mut Ctx<'_>,
    seq: u64,
    entry: (Got, u64),
    via_sync: bool,
    now: u64,
) {
    if seq <= st.cursor || st.held.contains_key(&seq) {
        st.repushes += 1;
        ctx.t.repushes += 1;
        return;
    }
    if via_sync {
        st.filled += 1;
        ctx.t.filled += 1;
    }
    if seq == st.cursor + 1 {
        st.cursor = seq;
        display(st, ctx, seq, entry, now);
        while let Some(next) = st.held.remove(&(st.cursor + 1)) {
            st.cursor += 1;
            let at = st.cursor;
            display(st, ctx, at, next, now);
        }
        return;
    }
    if st.held.len() < MAX_HELD {
        st.held.insert(seq, entry);
    }
    if st.sync.is_none() {
        st.want_sync = Some(SyncKind::Fill);
    }
}

/// An entry in seq order, none missing below it. `t_ns`: when it was sent.
fn display(st: &mut State, ctx: &mut Ctx<'_>, seq: u64, (got, t_ns): (Got, u64), now: u64) {
    if let Some(log) = st.log.as_mut() {
        log.push((seq, got));
    }
    match got {
        Got::Ours { sender, n } if sender == st.idx => {
            // Our own message as an entry (a sync, or a push the `sent` raced): it must
            // be at the seq the `sent` named.
            match st.sends.get((n as usize).wrapping_sub(1)) {
                Some(rec) if rec.seq.map_or(true, |q| q == seq) => {}
                _ => {
                    st.mismatched += 1;
                    let name = ctx.names.ids[st.idx as usize].clone();
                    ctx.t.problem(|| {
                        format!(
                            "{name}'s own message #{n} is at seq {seq}, not where its `sent` said"
                        )
                    });
                }
            }
        }
        Got::Ours { sender, n } => {
            let bits = {
                if st.got.len() <= sender as usize {
                    st.got.resize(sender as usize + 1, Vec::new());
                }
                &mut st.got[sender as usize]
            };
            if bit_set(bits, n) {
                st.duplicates += 1;
                return;
            }
            let lat = now.saturating_sub(t_ns);
            ctx.t.c.delivered += 1;
            ctx.t.c.deliver_lat_ns += lat;
            if ctx.measuring(now) {
                ctx.t.delivered_w += 1;
                ctx.t.deliver_hist.record(lat);
            }
        }
        Got::Group => {
            st.group_entries += 1;
            ctx.t.group_entries += 1;
            if !st.in_group {
                st.in_group = true;
                ctx.t.c.in_group += 1;
            }
        }
        Got::Foreign => {
            st.foreign += 1;
            ctx.t.foreign += 1;
        }
        Got::Corrupt => {
            st.mismatched += 1;
            let name = ctx.names.ids[st.idx as usize].clone();
            ctx.t
                .problem(|| format!("{name}'s seq {seq} holds a damaged stamp of this run"));
        }
    }
}

fn on_sent(st: &mut State, ctx: &mut Ctx<'_>, f: &View<'_>, now: u64) {
    let (Some(cid), Some(seq)) = (f.cid, f.seq) else {
        ctx.t.other_frames += 1;
        return;
    };
    let n = cid
        .strip_prefix(ctx.cid_prefix.as_str())
        .and_then(|n| n.parse::<u64>().ok());
    let rec = n.and_then(|n| st.sends.get_mut((n as usize).wrapping_sub(1)));
    let Some(rec) = rec.filter(|r| r.seq.is_none() && !r.refused) else {
        ctx.t.other_frames += 1;
        return;
    };
    let n = n.unwrap_or(0);
    rec.seq = Some(seq);
    let at_ns = rec.at_ns;
    let lat = now.saturating_sub(at_ns);
    st.pending = st.pending.saturating_sub(1);
    ctx.t.c.pending = ctx.t.c.pending.saturating_sub(1);
    ctx.t.c.sents += 1;
    ctx.t.c.sent_lat_ns += lat;
    if ctx.measuring(now) {
        ctx.t.sents_w += 1;
        ctx.t.sent_hist.record(lat);
    }
    if ctx.opts.rate == 0 && ctx.loading(now) {
        st.credit += 1;
    }
    // On the sending connection the `sent` stands in for the entry's push.
    let own = Got::Ours { sender: st.idx, n };
    if let Some((_, SyncKind::Replay)) = st.sync {
        return;
    }
    accept(st, ctx, seq, (own, at_ns), false, now);
}

fn on_synced(st: &mut State, ctx: &mut Ctx<'_>, f: &View<'_>) {
    let ours = match (st.sync, f.rid.and_then(|r| r.strip_prefix('s'))) {
        (Some((rid, kind)), Some(r)) if r.parse::<u64>().ok() == Some(rid) => Some(kind),
        _ => None,
    };
    let Some(kind) = ours else {
        ctx.t.other_frames += 1;
        return;
    };
    st.sync = None;
    match kind {
        SyncKind::Fill => {
            if f.more || !st.held.is_empty() {
                st.want_sync = Some(SyncKind::Fill);
            }
        }
        SyncKind::Final => {
            if f.more {
                st.want_sync = Some(SyncKind::Final);
                return;
            }
            st.head = f.head;
            if st.log.is_some() {
                st.stage = Stage::Replay;
                st.want_sync = Some(SyncKind::Replay);
            } else {
                finish(st, ctx, true);
            }
        }
        SyncKind::Replay => {
            if f.more {
                st.want_sync = Some(SyncKind::Replay);
            } else {
                finish(st, ctx, true);
            }
        }
    }
}

/// This member is done with the verify phase.
fn finish(st: &mut State, ctx: &mut Ctx<'_>, verified: bool) {
    if st.settled {
        return;
    }
    st.settled = true;
    ctx.t.c.settled += 1;
    if verified {
        st.stage = Stage::Done;
        ctx.t.c.verified += 1;
    }
}

fn on_group_reply(st: &mut State, ctx: &mut Ctx<'_>, f: &View<'_>) {
    let Some(g) = st.group.as_mut() else {
        ctx.t.other_frames += 1;
        return;
    };
    if !g.in_flight {
        ctx.t.other_frames += 1;
        return;
    }
    let Some(gid) = f.gid else {
        ctx.shared
            .fail("the `group` reply to group_create has no gid".to_owned());
        return;
    };
    g.in_flight = false;
    g.next += 1;
    if g.gid.is_none() {
        g.gid = Some(gid.to_owned());
        let _ = ctx.shared.gid.set(gid.to_owned());
    }
    if g.next >= g.batches.len() {
        ctx.shared.group_ready.store(true, Ordering::Release);
    }
}

fn on_error(st: &mut State, ctx: &mut Ctx<'_>, f: &View<'_>, now: u64) {
    ctx.t.c.errors += 1;
    *ctx.t.errors_by_code.entry(f.code.to_owned()).or_default() += 1;
    let name = ctx.names.ids[st.idx as usize].clone();
    if let Some(rid) = f.rid {
        if rid.starts_with('g') && st.group.is_some() {
            let hint = match f.code {
                "internal" => {
                    " (an internal error: see the server's log; a server whose store cannot \
                     write groups yet answers this way)"
                }
                "forbidden" => {
                    " (more members than the server's --max-group? start it with a larger \
                     --max-group)"
                }
                "rate_limited" => " (start the server with a higher --rate)",
                _ => "",
            };
            ctx.shared.fail(format!(
                "{name}: the server refused to form the group: {} {}{hint}",
                f.code, f.message
            ));
            return;
        }
        let sync_rid = rid.strip_prefix('s').and_then(|r| r.parse::<u64>().ok());
        if let Some((in_flight, kind)) = st.sync {
            if sync_rid == Some(in_flight) {
                st.sync = None;
                ctx.t
                    .problem(|| format!("{name}: a sync was refused: {} {}", f.code, f.message));
                match kind {
                    // Retried by the tick.
                    SyncKind::Fill => {}
                    SyncKind::Final | SyncKind::Replay => finish(st, ctx, false),
                }
                return;
            }
        }
    }
    if let Some(cid) = f.cid {
        let n = cid
            .strip_prefix(ctx.cid_prefix.as_str())
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(rec) = n.and_then(|n| st.sends.get_mut((n as usize).wrapping_sub(1))) {
            if rec.seq.is_none() && !rec.refused {
                // Not stored, as far as this client knows: owed to nobody (if it was
                // stored after all, its displays count as unconfirmed).
                rec.refused = true;
                st.pending = st.pending.saturating_sub(1);
                ctx.t.c.pending = ctx.t.c.pending.saturating_sub(1);
                if ctx.opts.rate == 0 && ctx.loading(now) {
                    st.credit += 1;
                }
            }
        }
    }
    ctx.t
        .problem(|| format!("{name}: error {}: {}", f.code, f.message));
}

/// After a batch of input (or a decision to send): the member's requests go out in one
/// write; a failure loses the connection.
fn after_input(m: &mut Member, ctx: &mut Ctx<'_>, result: Result<(), String>, now: u64) {
    let result = result.and_then(|()| write_requests(m, ctx, now));
    if let Err(why) = result {
        lose(m, ctx, &why);
    }
}

fn write_requests(m: &mut Member, ctx: &mut Ctx<'_>, now: u64) -> Result<(), String> {
    let Some(c) = m.client.as_mut() else {
        return Ok(());
    };
    let st = &mut m.st;
    let before = c.out.len();
    if st.ack_owed && st.cursor > 0 {
        ctx.scratch.clear();
        let _ = write!(ctx.scratch, "{{\"type\":\"ack\",\"seq\":{}}}", st.cursor);
        c.ws.send(OpCode::Text, ctx.scratch.as_bytes(), &mut c.out);
    }
    st.ack_owed = false;
    if st.sync.is_none() {
        if let Some(kind) = st.want_sync.take() {
            let after = match kind {
                SyncKind::Fill | SyncKind::Final => st.cursor,
                SyncKind::Replay => st.replay.last().map_or(st.start, |&(seq, _)| seq),
            };
            let rid = st.next_rid;
            st.next_rid += 1;
            st.sync = Some((rid, kind));
            ctx.scratch.clear();
            let _ = write!(
                ctx.scratch,
                "{{\"type\":\"sync\",\"after\":{after},\"rid\":\"s{rid}\"}}"
            );
            c.ws.send(OpCode::Text, ctx.scratch.as_bytes(), &mut c.out);
        }
    }
    if let Some(g) = st.group.as_mut() {
        if !g.in_flight && g.next < g.batches.len() {
            let range = g.batches[g.next].clone();
            ctx.scratch.clear();
            match &g.gid {
                None => {
                    let _ = write!(
                        ctx.scratch,
                        "{{\"type\":\"group_create\",\"rid\":\"g{}\",\"name\":\"fanout {:08x}\",\
                         \"members\":[",
                        g.next, ctx.run
                    );
                }
                Some(gid) => {
                    let _ = write!(
                        ctx.scratch,
                        "{{\"type\":\"group_add\",\"rid\":\"g{}\",\"gid\":{},\"members\":[",
                        g.next,
                        stats::json_str(gid)
                    );
                }
            }
            for (i, idx) in range.enumerate() {
                if i > 0 {
                    ctx.scratch.push(',');
                }
                ctx.scratch.push('"');
                ctx.scratch.push_str(&ctx.names.ids[idx]);
                ctx.scratch.push('"');
            }
            ctx.scratch.push_str("]}");
            c.ws.send(OpCode::Text, ctx.scratch.as_bytes(), &mut c.out);
            g.in_flight = true;
        }
    }
    while st.credit > 0 && ctx.loading(now) && st.stage == Stage::Live {
        st.credit -= 1;
        let n = st.sends.len() as u64 + 1;
        Stamp {
            run: ctx.run,
            sender: st.idx,
            n,
            t_ns: now,
        }
        .write(ctx.opts.size, &mut ctx.body);
        ctx.scratch.clear();
        let _ = write!(
            ctx.scratch,
            "{{\"type\":\"send\",\"cid\":\"{}{n}\",\"to\":\"{}\",\"body\":\"{}\"}}",
            ctx.cid_prefix, ctx.to, ctx.body
        );
        c.ws.send(OpCode::Text, ctx.scratch.as_bytes(), &mut c.out);
        st.sends.push(SendRec {
            at_ns: now,
            seq: None,
            refused: false,
        });
        st.pending += 1;
        ctx.t.c.offered += 1;
        ctx.t.c.pending += 1;
        if ctx.measuring(now) {
            ctx.t.offered_w += 1;
        }
    }
    if !ctx.loading(now) {
        st.credit = 0;
    }
    if c.out.len() > before {
        st.last_write_ns = now;
    }
    if c.has_output() {
        c.flush().map_err(|e| format!("write: {e}"))?;
    }
    Ok(())
}

fn lose(m: &mut Member, ctx: &mut Ctx<'_>, why: &str) {
    if m.st.lost {
        return;
    }
    m.st.lost = true;
    m.client = None;
    ctx.t.c.lost += 1;
    ctx.t.c.pending = ctx.t.c.pending.saturating_sub(u64::from(m.st.pending));
    m.st.pending = 0;
    let name = ctx.names.ids[m.st.idx as usize].clone();
    ctx.t.problem(|| format!("{name}: connection lost: {why}"));
    if m.st.stage != Stage::Live {
        finish(&mut m.st, ctx, false);
    }
}

/// --rate: the sends due by now on this thread's schedule, each from the next local
/// sender in turn that can take one.
#[allow(clippy::too_many_arguments)]
fn pace(
    members: &mut [Member],
    senders: &[usize],
    ctx: &mut Ctx<'_>,
    now: u64,
    start: u64,
    rate: f64,
    paced: &mut u64,
    rr: &mut usize,
) {
    let due = (now.saturating_sub(start) as f64 * rate / 1e9) as u64;
    let want = imclient::catch_up(due, paced, rate, CATCH_UP_SECS, &mut ctx.t);
    if want == 0 {
        return;
    }
    for _ in 0..want {
        *paced += 1;
        let mut placed = false;
        for _ in 0..senders.len() {
            *rr = (*rr + 1) % senders.len();
            let m = &mut members[senders[*rr]];
            if m.client.is_some() && m.st.pending < MAX_SENDER_BACKLOG {
                m.st.credit += 1;
                placed = true;
                break;
            }
        }
        if !placed {
            ctx.t.skipped_backlog += 1;
        }
    }
    for &j in senders {
        if members[j].st.credit > 0 {
            after_input(&mut members[j], ctx, Ok(()), now);
        }
    }
}

/// Every member's timers: a sync that a refusal left undone, an app ping for a member
/// that has been quiet.
fn tick(members: &mut [Member], ctx: &mut Ctx<'_>, now: u64) {
    for m in members.iter_mut() {
        let Some(c) = m.client.as_mut() else {
            continue;
        };
        let idle = m.st.sync.is_none() && m.st.want_sync.is_none();
        if idle && m.st.stage == Stage::Live && !m.st.held.is_empty() {
            m.st.want_sync = Some(SyncKind::Fill);
        }
        if now.saturating_sub(m.st.last_write_ns) >= PING_AFTER_NS {
            c.ws.send(OpCode::Text, br#"{"type":"ping"}"#, &mut c.out);
            m.st.last_write_ns = now;
        }
        after_input(m, ctx, Ok(()), now);
    }
}

/// The verify phase reached this worker: each member syncs from its cursor to its head
/// once it has no sync of its own in flight. Returns whether some still wait for that.
fn start_verifies(members: &mut [Member], ctx: &mut Ctx<'_>, now: u64) -> bool {
    let mut left = false;
    for m in members.iter_mut() {
        if m.st.stage != Stage::Live || m.st.settled {
            continue;
        }
        if m.client.is_none() || !m.st.welcomed {
            finish(&mut m.st, ctx, false);
            continue;
        }
        if m.st.sync.is_some() {
            left = true;
            continue;
        }
        m.st.stage = Stage::Final;
        m.st.want_sync = Some(SyncKind::Final);
        after_input(m, ctx, Ok(()), now);
    }
    left
}

/// Close 1000 on every connection, then a bounded wait for the server's close.
fn report(opts: &Opts, gid: &str, t: &Totals, check: &Check, tl: &Timeline) {
    let secs = opts.seconds.as_secs_f64();
    let deliveries = t.delivered_w as f64 / secs;
    let sends = t.sents_w as f64 / secs;
    let offered = t.offered_w as f64 / secs;
    let sent = imclient::quantiles(&t.sent_hist);
    let deliver = imclient::quantiles(&t.deliver_hist);
    let load = if opts.rate == 0 {
        format!("as fast as possible, depth {} per sender", opts.depth)
    } else {
        format!("{} msg/s offered", stats::grouped(opts.rate))
    };
    if opts.json {
        let lat = imclient::json_latency;
        let errors = imclient::json_errors(t);
        let timeline: Vec<String> = tl
            .samples
            .iter()
            .map(|s| {
                format!(
                    "[{:.3},{:.0},{:.0},{:.1}]",
                    s.t, s.deliveries, s.sends, s.mean_us
                )
            })
            .collect();
        println!(
            "{{\"mode\":\"fanout\",\"url\":{},\"members\":{},\"senders\":{},\"gid\":{},\
             \"rate\":{},\"depth\":{},\"size\":{},\"seconds\":{},\"warmup\":{},\"threads\":{},\
             \"deliveries_per_sec\":{deliveries:.1},\"sends_per_sec\":{sends:.1},\
             \"offered_per_sec\":{offered:.1},\"sent_us\":{},\"delivery_us\":{},\
             \"messages\":{{\"sends\":{},\"confirmed\":{},\"refused\":{},\"delivered_once\":{},\
             \"repushes\":{},\"filled_by_sync\":{},\"group_entries\":{},\"foreign\":{},\
             \"unconfirmed_displays\":{}}},\"skipped\":{{\"behind\":{},\"backlog\":{}}},\
             \"check\":{{\"passed\":{},\"verified_members\":{},\"replayed_members\":{},\
             \"not_delivered\":{},\"duplicates\":{},\"gaps\":{},\"mismatched\":{}}},\
             \"connect_seconds\":{:.3},\"group_seconds\":{:.3},\"drain_seconds\":{:.3},\
             \"drained\":{},\"verify_seconds\":{:.3},\"errors\":{{{}}},\"lost_connections\":{},\
             \"timeline\":{{\"columns\":[\"t\",\"deliveries_per_sec\",\"sends_per_sec\",\
             \"mean_delivery_us\"],\"rows\":[{}]}}}}",
            stats::json_str(&opts.target.url),
            opts.members,
            opts.senders,
            stats::json_str(gid),
            opts.rate,
            opts.depth,
            opts.size,
            secs,
            opts.warmup.as_secs_f64(),
            opts.threads,
            lat(sent),
            lat(deliver),
            check.sends,
            check.confirmed,
            check.refused,
            check.delivered_once,
            t.repushes,
            t.filled,
            t.group_entries,
            t.foreign,
            check.unconfirmed_displays,
            t.skipped_behind,
            t.skipped_backlog,
            check.passed(),
            check.verified,
            check.replayed,
            check.not_delivered,
            check.duplicates,
            check.gaps,
            check.mismatched,
            tl.connect.as_secs_f64(),
            tl.group.as_secs_f64(),
            tl.end.drain.as_secs_f64(),
            tl.end.drained,
            tl.end.verify.as_secs_f64(),
            errors.join(","),
            t.c.lost,
            timeline.join(","),
        );
        return;
    }
    let plural = |n: usize, one: &str, many: &str| {
        if n == 1 {
            format!("{n} {one}")
        } else {
            format!("{} {many}", stats::grouped(n as u64))
        }
    };
    println!(
        "courier-bench fanout  {} ({})",
        opts.target.url, opts.target.addr
    );
    println!(
        "  {} in group {gid}, {}, {load}, {} B bodies, {}",
        plural(opts.members, "member", "members"),
        plural(opts.senders, "sender", "senders"),
        opts.size,
        plural(opts.threads, "thread", "threads"),
    );
    println!(
        "  signed in in {:.2} s, group formed in {:.2} s; warmup {} s, measured {} s",
        tl.connect.as_secs_f64(),
        tl.group.as_secs_f64(),
        opts.warmup.as_secs_f64(),
        secs
    );
    println!();
    println!(
        "  deliveries/s      {:>12}   group messages displayed at members per second",
        stats::grouped(deliveries.round() as u64)
    );
    println!(
        "  sends/s           {:>12}   `sent` replies per second (x {} recipients each)",
        stats::grouped(sends.round() as u64),
        stats::grouped(opts.members as u64 - 1)
    );
    if opts.rate > 0 {
        println!(
            "  offered/s         {:>12}   sends written per second (target {})",
            stats::grouped(offered.round() as u64),
            stats::grouped(opts.rate)
        );
    }
    imclient::print_latency(&[("send -> sent", sent), ("send -> delivery", deliver)]);
    println!();
    println!(
        "  sends             {:>12}   all phases; {} got `sent`, {} refused",
        stats::grouped(check.sends),
        stats::grouped(check.confirmed),
        stats::grouped(check.refused)
    );
    println!(
        "  delivered once    {:>12}   (confirmed message, other member) pairs displayed exactly once",
        stats::grouped(check.delivered_once)
    );
    println!(
        "  re-pushes         {:>12}   entries pushed again and dropped by seq (allowed)",
        stats::grouped(t.repushes)
    );
    println!(
        "  filled by sync    {:>12}   entries a member got from a sync instead of a push",
        stats::grouped(t.filled)
    );
    println!(
        "  group entries     {:>12}   kind \"group\" inbox entries (the group's creation)",
        stats::grouped(t.group_entries)
    );
    if check.unconfirmed_displays > 0 {
        println!(
            "  unconfirmed       {:>12}   displays of messages that got no `sent` (allowed)",
            stats::grouped(check.unconfirmed_displays)
        );
    }
    if t.foreign > 0 {
        println!(
            "  foreign entries   {:>12}   inbox entries not from this run",
            stats::grouped(t.foreign)
        );
    }
    if t.skipped_behind + t.skipped_backlog > 0 {
        println!(
            "  skipped slots     {:>12}   of the --rate schedule: client behind {}, senders \
             backlogged {}",
            stats::grouped(t.skipped_behind + t.skipped_backlog),
            stats::grouped(t.skipped_behind),
            stats::grouped(t.skipped_backlog)
        );
    }
    imclient::print_drain_verify(
        "delivery",
        &tl.end,
        &format!(
            ": {} of {} inboxes synced to their head, {} replayed from the start",
            check.verified, check.members, check.replayed
        ),
    );
    imclient::print_trouble(t, t.c.errors, t.c.lost);
    println!();
    if check.passed() {
        println!(
            "  check             {:>12}   every confirmed message displayed exactly once at \
             every other member; every inbox gap-free to its head",
            "PASSED"
        );
    } else {
        println!(
            "  check             {:>12}   not delivered {}, displayed twice {}, gaps {}, \
             contradictions {}, unverified inboxes {}",
            "FAILED",
            check.not_delivered,
            check.duplicates,
            check.gaps,
            check.mismatched,
            check.members - check.verified
        );
    }
}

/// The SVG: the send → delivery CDF, and deliveries per second over the load.
fn chart(opts: &Opts, t: &Totals, tl: &Timeline) -> String {
    let d = imclient::quantiles(&t.deliver_hist);
    let ms = |ns: u64| ns as f64 / 1e6;
    let secs = opts.seconds.as_secs_f64();
    let cdf = svg::Chart {
        title: format!(
            "fan-out latency, send -> delivery ({} members)",
            opts.members
        ),
        notes: vec![format!(
            "p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            ms(d[0]),
            ms(d[1]),
            ms(d[2]),
            ms(d[3])
        )],
        x_label: "latency (log scale)".into(),
        y_label: "deliveries at or below".into(),
        x_unit: svg::Unit::Micros,
        y_unit: svg::Unit::Fraction,
        x_log: true,
        series: vec![svg::Series {
            name: String::new(),
            points: svg::cdf(&t.deliver_hist),
        }],
    };
    let rate = svg::Chart {
        title: "deliveries per second".into(),
        notes: vec![format!(
            "{} deliveries/s over the measured {} s ({} s warmup first)",
            stats::grouped((t.delivered_w as f64 / secs).round() as u64),
            secs,
            opts.warmup.as_secs_f64()
        )],
        x_label: "seconds since the load started".into(),
        y_label: "deliveries/s".into(),
        x_unit: svg::Unit::Seconds,
        y_unit: svg::Unit::Count,
        x_log: false,
        series: vec![svg::Series {
            name: String::new(),
            points: tl.samples.iter().map(|s| (s.t, s.deliveries)).collect(),
        }],
    };
    svg::render(&[cdf, rate])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Parsed;

    fn parse(argv: &[&str]) -> Result<Opts, String> {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        match args::parse(&argv, FLAGS) {
            Ok(Parsed::Run(v)) => opts(&v),
            _ => Err("flags rejected".into()),
        }
    }

    #[test]
    fn flags() {
        let o = parse(&["--jwt-secret", "s", "--members", "50", "--senders", "3"]).unwrap();
        assert_eq!((o.members, o.senders, o.depth, o.rate), (50, 3, 64, 0));
        assert!(parse(&["--members", "5"])
            .unwrap_err()
            .contains("--jwt-secret"));
        assert!(parse(&["--jwt-secret", "s", "--members", "2", "--senders", "3"]).is_err());
        assert!(parse(&["--jwt-secret", "s", "--members", "1"]).is_err());
        assert!(parse(&["--jwt-secret", "s", "--user-prefix", "a b"]).is_err());
        let o = parse(&["--jwt-secret", "s", "--svg", "/tmp/x.svg", "--rate", "2k"]).unwrap();
        assert_eq!(o.rate, 2000);
        assert_eq!(o.svg, Some(PathBuf::from("/tmp/x.svg")));
    }

    #[test]
    fn names_map_back() {
        let n = Names::new("fan", 0xabc, 100);
        assert_eq!(n.ids[7], "fan00000abc-7");
        assert_eq!(n.index_of("fan00000abc-7"), Some(7));
        assert_eq!(n.index_of("fan00000abc-99"), Some(99));
        assert_eq!(n.index_of("fan00000abc-100"), None);
        assert_eq!(n.index_of("fan00000abc-07"), None);
        assert_eq!(n.index_of("fan00000abd-7"), None);
        assert_eq!(n.index_of("fan00000abc-"), None);
    }

    #[test]
    fn replay_members_spread() {
        let chosen: Vec<usize> = (0..1000).filter(|&i| replays(i, 1000, 2, 8)).collect();
        assert!(chosen.contains(&0) && chosen.contains(&1) && chosen.contains(&999));
        assert!((7..=9).contains(&chosen.len()), "{chosen:?}");
        assert_eq!((0..10).filter(|&i| replays(i, 10, 1, 100)).count(), 10);
        assert_eq!((0..10).filter(|&i| replays(i, 10, 1, 0)).count(), 0);
        assert_eq!((0..10).filter(|&i| replays(i, 10, 3, 2)).count(), 2);
    }

    #[test]
    fn frames_parse_fast_and_slow() {
        let text = br#"{"type":"msg","seq":12,"mid":5,"conv":"group:7","from":"fan1-0","body":"cb1.x","ts":1,"kind":"text"}"#;
        let f = serde_json::from_slice::<Frame<&str>>(text).unwrap();
        let v = f.view();
        assert_eq!(
            (v.ty, v.seq, v.from, v.kind),
            ("msg", Some(12), "fan1-0", "text")
        );
        // An escaped string fails the borrowed parse; the owned one reads it.
        let text = br#"{"type":"error","code":"bad_request","message":"no \"x\"","rid":"s3"}"#;
        assert!(serde_json::from_slice::<Frame<&str>>(text).is_err());
        let f = serde_json::from_slice::<Frame<String>>(text).unwrap();
        let v = f.view();
        assert_eq!(
            (v.code, v.message, v.rid),
            ("bad_request", "no \"x\"", Some("s3"))
        );
        // A group entry's nested object is skipped; the group reply's gid is a string.
        let text = br#"{"type":"msg","seq":1,"kind":"group","body":"","group":{"op":"create","members":["a"]}}"#;
        assert_eq!(
            serde_json::from_slice::<Frame<&str>>(text)
                .unwrap()
                .view()
                .kind,
            "group"
        );
        let text =
            br#"{"type":"group","rid":"g0","gid":"7","name":"n","owner":"a","members":["a","b"]}"#;
        assert_eq!(
            serde_json::from_slice::<Frame<&str>>(text)
                .unwrap()
                .view()
                .gid,
            Some("7")
        );
    }

    fn outcome(idx: u32, got: &[(u32, &[u64])]) -> Outcome {
        let mut bits = Vec::new();
        for &(s, ns) in got {
            if bits.len() <= s as usize {
                bits.resize(s as usize + 1, Vec::new());
            }
            for &n in ns {
                bit_set(&mut bits[s as usize], n);
            }
        }
        Outcome {
            idx,
            welcomed: true,
            verified: true,
            start: 0,
            cursor: 10,
            head: Some(10),
            held: 0,
            got: bits,
            duplicates: 0,
            mismatched: 0,
            replay_gaps: 0,
            replay_mismatched: 0,
            replayed: false,
            sends: Vec::new(),
        }
    }

    fn sends(confirmed: &[bool]) -> Vec<SendRec> {
        confirmed
            .iter()
            .enumerate()
            .map(|(i, &c)| SendRec {
                at_ns: 0,
                seq: c.then_some(i as u64 + 2),
                refused: !c,
            })
            .collect()
    }

    fn name(i: u32) -> String {
        format!("m{i}")
    }

    #[test]
    fn a_clean_run_passes() {
        // Member 0 sends #1..#3 (#3 refused); members 1 and 2 display #1 and #2.
        let mut o0 = outcome(0, &[]);
        o0.sends = sends(&[true, true, false]);
        let outs = vec![o0, outcome(1, &[(0, &[1, 2])]), outcome(2, &[(0, &[1, 2])])];
        let c = check(&outs, 1, name);
        assert!(c.passed(), "{c:?}");
        assert_eq!((c.sends, c.confirmed, c.refused), (3, 2, 1));
        assert_eq!(c.delivered_once, 4);
    }

    #[test]
    fn a_missing_delivery_fails() {
        let mut o0 = outcome(0, &[]);
        o0.sends = sends(&[true, true]);
        let outs = vec![o0, outcome(1, &[(0, &[1, 2])]), outcome(2, &[(0, &[2])])];
        let c = check(&outs, 1, name);
        assert!(!c.passed());
        assert_eq!(c.not_delivered, 1);
        assert!(
            c.problems[0].contains("m2 never displayed 1"),
            "{:?}",
            c.problems
        );
        assert!(c.problems[0].contains("#1"), "{:?}", c.problems);
    }

    #[test]
    fn duplicates_gaps_and_unverified_fail() {
        let mut o0 = outcome(0, &[]);
        o0.sends = sends(&[true]);
        let mut o1 = outcome(1, &[(0, &[1])]);
        o1.duplicates = 1;
        let c = check(&[o0, o1], 1, name);
        assert_eq!(c.duplicates, 1);
        assert!(!c.passed());

        let mut o0 = outcome(0, &[]);
        o0.sends = sends(&[true]);
        let mut o1 = outcome(1, &[(0, &[1])]);
        o1.head = Some(12);
        let c = check(&[o0, o1], 1, name);
        assert_eq!(c.gaps, 2);
        assert!(!c.passed());

        let mut o0 = outcome(0, &[]);
        o0.sends = sends(&[true]);
        let mut o1 = outcome(1, &[]);
        o1.verified = false;
        let c = check(&[o0, o1], 1, name);
        assert_eq!(c.faults(), 0);
        assert!(!c.passed());
    }

    #[test]
    fn unconfirmed_displays_are_allowed() {
        let mut o0 = outcome(0, &[]);
        o0.sends = sends(&[true, false]);
        let outs = vec![o0, outcome(1, &[(0, &[1, 2, 70])])];
        let c = check(&outs, 1, name);
        assert!(c.passed(), "{c:?}");
        assert_eq!(c.unconfirmed_displays, 2);
    }
}
