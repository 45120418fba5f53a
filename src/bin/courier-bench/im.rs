//! `courier-bench im`: U users, one IM connection each, send 1:1 messages to random other
//! users; every push is acked. Measures durable messages per second (`sent` replies),
//! send → `sent` and send → recipient `msg` latency, and after the load checks that every
//! message that got a `sent` reached its recipient exactly once with gap-free seqs.
//!
//! Each user is driven by the crate's sans-IO client state ([`Session`]): it owns the
//! cursor, the dedupe by seq, gap detection with `sync`, cumulative acks and the cids. The
//! bench adds the load (who sends what when), the clock and the accounting; the rules that
//! decide whether messages were lost live in [`crate::ledger`].
//!
//! A run has four phases. *Load*: warmup then the measured window, sends paced by a token
//! bucket per thread (`--rate R`) or kept `--depth` deep per user (as fast as possible).
//! *Drain*: no new sends; wait until every send has its `sent` and every confirmed message
//! has been pushed to its recipient (or `--drain` runs out). *Verify*: each user replays its
//! inbox with `sync` from the cursor its `welcome` gave, page by page, with a fresh session.
//! *Close*: close 1000 on every connection. Then the ledger is checked.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

use courier::client::session::{Config, ErrorReply, Event, Liveness, Msg, Sent, Session};
use courier::ws::frame::OpCode;
use mio::Events;

use crate::args::{self, Flag};
use crate::client::{self, Client, Target};
use crate::imclient::{self, run_id, splitmix64, user_index, Clock, Ending, Input, Tally};
use crate::ledger::{self, Check, Entry, Inbox, Origin, SendRec, Stamp, UserLog};
use crate::stats::{self, Progress};

pub const FLAGS: &[Flag] = &[
    imclient::URL,
    Flag {
        name: "jwt-secret",
        arg: "S",
        default: "none",
        help: "the server's token secret: each user's token is minted with it (required)",
    },
    Flag {
        name: "users",
        arg: "U",
        default: "1000",
        help: "users, one connection each, all signed in before the clock starts",
    },
    Flag {
        name: "user-prefix",
        arg: "P",
        default: "u",
        help: "user ids are P0 .. P{U-1}",
    },
    Flag {
        name: "rate",
        arg: "R",
        default: "0",
        help: "messages per second offered in total, paced evenly (a token bucket per \
               thread); 0 = as fast as possible with --depth per user",
    },
    Flag {
        name: "depth",
        arg: "D",
        default: "4",
        help: "with --rate 0: messages each user keeps in flight (awaiting `sent`)",
    },
    imclient::SECONDS,
    imclient::WARMUP,
    imclient::SIZE,
    Flag {
        name: "threads",
        arg: "N",
        default: "1",
        help: "client threads, each with its own poll and an interleaved share of the users",
    },
    Flag {
        name: "drain",
        arg: "SECS",
        default: "20",
        help: "after the load: longest wait for outstanding `sent`s and pushes",
    },
    Flag {
        name: "seed",
        arg: "N",
        default: "1",
        help: "seeds who sends to whom (same seed, same pairs)",
    },
    Flag {
        name: "contacts",
        arg: "K",
        default: "0",
        help: "each user writes only to K fixed contacts (the next K users), as people chat with a few; 0 = to anyone, every message a likely new pair",
    },
    imclient::JSON,
];

const ABOUT: &str = "\
IM load: U users, one authenticated connection each (token minted here from --jwt-secret,
sent as ?token=), send 1:1 messages to random other users; every push is acked (one
cumulative ack per batch of input). Each body starts with a stamp (run, sender, message
number, send time) padded to --size. Reports durable msg/s (`sent` replies per second in
the measured window), send -> `sent` and send -> recipient `msg` latency p50/p99/p99.9/max.

Users start from the head their `welcome` gives (inbox_seq), so reruns against the same
data folder work. After the load the bench stops sending, waits for every `sent` and every
push (--drain), then syncs each user's inbox from its starting cursor and checks: every
message that got a `sent` was displayed exactly once at its recipient (after dedupe by
seq; re-pushes are counted, not faulted), is in the recipient's inbox once and in the
sender's at the seq its `sent` named, and every inbox is gap-free from the starting
cursor to its head. A run that lost, duplicated or contradicted anything says so and
exits 1.

The server limits requests per connection (courier serve --rate, default 200/s; sends,
acks and syncs all count). Run it with a limit well above the load, e.g.
  courier serve --jwt-secret S --rate 100000
or the bench measures rate_limited errors instead of the server. The server's group-commit
batch sizes are not visible to a client; read them from the server's own log.

Exits 1 on a failed check, a lost connection, a setup failure (server not there, wrong
secret: 401) or no `sent` in the measured window; 2 on bad flags.";

/// One thread's read buffer.
const READ_BUF: usize = 256 << 10;
/// Longest poll sleep, so counters are published and phase changes noticed.
const MAX_POLL: Duration = Duration::from_millis(100);
/// How often every session's timers run (app pings, retries after transient errors,
/// the server-silence check).
const TICK_NS: u64 = 250_000_000;
/// How long the inbox replays may take, all users together.
/// How often the main thread looks at the workers' counters.
const WATCH_STEP: Duration = Duration::from_millis(10);
/// With --rate: sends a user may have waiting for `sent` before the pacer passes it
/// over (the server is not keeping up; the skipped slots are reported).
const MAX_USER_BACKLOG: usize = 1000;
/// With --rate: the most sends a thread makes up at once after falling behind its
/// schedule, in seconds of its rate. Slots further behind are skipped and reported, so a
/// stalled client shows up as a lower offered rate, not as a burst.
const CATCH_UP_SECS: f64 = 0.05;

const RUN: u8 = 0;
const VERIFY: u8 = 1;
const CLOSE: u8 = 2;

#[derive(Debug)]
pub struct Opts {
    target: Target,
    secret: String,
    users: usize,
    prefix: String,
    rate: u64,
    depth: usize,
    seconds: Duration,
    warmup: Duration,
    size: usize,
    threads: usize,
    drain: Duration,
    seed: u64,
    contacts: usize,
    json: bool,
    /// User i's id, and `user:<id>` to address it.
    names: Vec<String>,
    addresses: Vec<String>,
}

impl Opts {
    /// The bench index of a user id (`None` for ids it did not make).
    fn index_of(&self, id: &str) -> Option<u32> {
        user_index(&self.prefix, self.users, id)
    }
}

fn opts(values: &args::Values) -> Result<Opts, String> {
    let secret = match values.get("jwt-secret") {
        "none" | "" => {
            return Err("--jwt-secret is required: the secret the server signs tokens with".into())
        }
        s => s.to_owned(),
    };
    let users = values.count("users", 2)?;
    let prefix = values.get("user-prefix").to_owned();
    let last = format!("{prefix}{}", users - 1);
    if !courier::im::auth::valid_user_id(&prefix) || !courier::im::auth::valid_user_id(&last) {
        return Err(format!(
            "--user-prefix {prefix:?}: user ids like {last:?} must be 1 to 64 of [A-Za-z0-9_.-]"
        ));
    }
    let seconds = values.duration("seconds")?;
    if seconds.is_zero() {
        return Err("--seconds must be above 0".into());
    }
    let seed = values
        .get("seed")
        .parse()
        .map_err(|_| format!("--seed: {:?} is not a whole number", values.get("seed")))?;
    let contacts: usize = values.get("contacts").parse().map_err(|_| {
        format!(
            "--contacts: {:?} is not a whole number",
            values.get("contacts")
        )
    })?;
    let names: Vec<String> = (0..users).map(|i| format!("{prefix}{i}")).collect();
    Ok(Opts {
        target: Target::parse(values.get("url"))?,
        secret,
        users,
        rate: values.count("rate", 0)? as u64,
        depth: values.count("depth", 1)?,
        seconds,
        warmup: values.duration("warmup")?,
        size: values.size("size")?,
        threads: values.count("threads", 1)?.min(users),
        drain: values.duration("drain")?,
        seed,
        contacts,
        json: values.switch("json"),
        addresses: names.iter().map(|n| format!("user:{n}")).collect(),
        names,
        prefix,
    })
}

/// Entry point; returns the process exit code.
pub fn main(argv: &[String]) -> i32 {
    let opts = match args::options("im", ABOUT, FLAGS, argv, opts) {
        Ok(opts) => opts,
        Err(code) => return code,
    };
    if let Err(e) = client::ensure_fd_limit((opts.users + 16 + 2 * opts.threads) as libc::rlim_t) {
        eprintln!("courier-bench im: {e}");
        return 1;
    }
    run(&opts)
}

/// Counters a worker keeps and publishes for the main thread: the progress line and the
/// phase changes are decided from their sums.
#[derive(Clone, Copy, Default, Debug)]
struct Counters {
    welcomed: u64,
    /// Sends written, and of them those still without a `sent` (or a refusal).
    offered: u64,
    pending: u64,
    /// `sent`s received, and the sum of their latencies.
    sents: u64,
    sent_lat_ns: u64,
    /// This run's messages displayed at their recipients, and their latencies.
    delivered: u64,
    deliver_lat_ns: u64,
    errors: u64,
    lost: u64,
    /// Users whose inbox replay finished, and users done with the verify phase either
    /// way (replayed, lost, or never signed in).
    verified: u64,
    settled: u64,
}

impl Counters {
    fn add(&mut self, o: &Counters) {
        self.welcomed += o.welcomed;
        self.offered += o.offered;
        self.pending += o.pending;
        self.sents += o.sents;
        self.sent_lat_ns += o.sent_lat_ns;
        self.delivered += o.delivered;
        self.deliver_lat_ns += o.deliver_lat_ns;
        self.errors += o.errors;
        self.lost += o.lost;
        self.verified += o.verified;
        self.settled += o.settled;
    }
}

/// A worker's published counters (relaxed stores once per wake-up; the main thread only
/// reads). Padded to its own cache lines.
#[repr(align(128))]
#[derive(Default)]
struct Live([AtomicU64; 11]);

impl Live {
    fn publish(&self, c: &Counters) {
        let v = [
            c.welcomed,
            c.offered,
            c.pending,
            c.sents,
            c.sent_lat_ns,
            c.delivered,
            c.deliver_lat_ns,
            c.errors,
            c.lost,
            c.verified,
            c.settled,
        ];
        for (a, v) in self.0.iter().zip(v) {
            a.store(v, Ordering::Relaxed);
        }
    }

    fn load(&self) -> Counters {
        let v: Vec<u64> = self.0.iter().map(|a| a.load(Ordering::Relaxed)).collect();
        Counters {
            welcomed: v[0],
            offered: v[1],
            pending: v[2],
            sents: v[3],
            sent_lat_ns: v[4],
            delivered: v[5],
            deliver_lat_ns: v[6],
            errors: v[7],
            lost: v[8],
            verified: v[9],
            settled: v[10],
        }
    }

    fn sum(all: &[Live]) -> Counters {
        let mut s = Counters::default();
        for l in all {
            s.add(&l.load());
        }
        s
    }
}

/// What one worker measured: its counters and the counts both IM modes keep.
#[derive(Default)]
struct Totals {
    c: Counters,
    tally: Tally,
}

impl Totals {
    fn merge(&mut self, o: &Totals) {
        self.c.add(&o.c);
        self.tally.merge(&o.tally);
    }
}

imclient::deref_tally!(Totals);

struct Shared {
    /// Every worker has connected (or failed); then the main thread sets `t0`.
    setup: Barrier,
    /// `t0` is set: the clock runs.
    go: Barrier,
    abort: AtomicBool,
    setup_error: Mutex<Option<String>>,
    t0: OnceLock<Instant>,
    phase: AtomicU8,
    live: Vec<Live>,
}

impl Shared {
    fn fail(&self, msg: String) {
        let mut first = self.setup_error.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert(msg);
        self.abort.store(true, Ordering::Relaxed);
    }
}

/// How the run went, from the main thread's side.
#[derive(Default)]
struct Timeline {
    setup: Duration,
    end: Ending,
}

fn run(opts: &Opts) -> i32 {
    let run_id = run_id();
    let shared = Shared {
        setup: Barrier::new(opts.threads + 1),
        go: Barrier::new(opts.threads + 1),
        abort: AtomicBool::new(false),
        setup_error: Mutex::new(None),
        t0: OnceLock::new(),
        phase: AtomicU8::new(RUN),
        live: (0..opts.threads).map(|_| Live::default()).collect(),
    };
    let mut progress = Progress::new();
    if !opts.json {
        progress.line(&format!(
            "signing in {} users to {} ({})...",
            opts.users, opts.target.url, opts.target.addr
        ));
    }
    let mut sum = Totals::default();
    let mut logs: Vec<Option<UserLog>> = vec![None; opts.users];
    let mut timeline = Timeline::default();
    let setup_start = Instant::now();
    std::thread::scope(|scope| {
        let shared = &shared;
        let handles: Vec<_> = (0..opts.threads)
            .map(|k| {
                std::thread::Builder::new()
                    .name(format!("im-{k}"))
                    .spawn_scoped(scope, move || worker(k, opts, shared, run_id))
                    .expect("spawn a bench thread")
            })
            .collect();
        shared.setup.wait();
        let t0 = Instant::now();
        timeline.setup = t0 - setup_start;
        let _ = shared.t0.set(t0);
        shared.go.wait();
        if !shared.abort.load(Ordering::Relaxed) {
            watch(opts, shared, t0, &mut progress, &mut timeline);
        }
        shared.phase.store(CLOSE, Ordering::Release);
        for h in handles {
            let (t, users) = h.join().expect("bench thread");
            sum.merge(&t);
            for (i, log) in users {
                logs[i as usize] = log;
            }
        }
    });
    progress.finish();

    if let Some(e) = shared
        .setup_error
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
    {
        eprintln!("courier-bench im: {e}");
        return 1;
    }
    let check = ledger::check(&logs, |i| opts.names[i as usize].clone());
    report(opts, &sum, &check, &timeline);
    if let Some(p) = &sum.first_problem {
        eprintln!("courier-bench im: first problem: {p}");
    }
    for p in &check.problems {
        eprintln!("courier-bench im: check: {p}");
    }
    if let Some(n) = sum.errors_by_code.get("rate_limited") {
        eprintln!(
            "courier-bench im: {n} requests were refused as rate_limited: run the server with \
             a higher --rate (e.g. courier serve --rate 100000)"
        );
    }
    let mut failed = false;
    if !check.passed() {
        eprintln!(
            "courier-bench im: FAILED: the exactly-once check found {} fault(s){}",
            check.faults(),
            if check.verified_users < check.users {
                format!(
                    " and {} of {} inboxes could not be verified",
                    check.users - check.verified_users,
                    check.users
                )
            } else {
                String::new()
            }
        );
        failed = true;
    }
    if sum.c.welcomed < opts.users as u64 {
        eprintln!(
            "courier-bench im: FAILED: only {} of {} users got a `welcome` (is the URL courier's \
             IM endpoint, /ws?)",
            sum.c.welcomed, opts.users
        );
        failed = true;
    }
    if sum.c.lost > 0 {
        eprintln!(
            "courier-bench im: FAILED: {} connection(s) lost during the run",
            sum.c.lost
        );
        failed = true;
    }
    if sum.sents_w == 0 {
        eprintln!("courier-bench im: FAILED: no `sent` came back during the measured window");
        failed = true;
    }
    i32::from(failed)
}

/// The main thread during the run: the progress line each second, and the phase changes
/// (load → drain happens by the clock in every worker; drain → verify and verify → close
/// are decided here from the workers' counters).
fn watch(
    opts: &Opts,
    shared: &Shared,
    t0: Instant,
    progress: &mut Progress,
    timeline: &mut Timeline,
) {
    let load_end = t0 + opts.warmup + opts.seconds;
    let mut next_line = t0 + Duration::from_secs(1);
    let mut last = Counters::default();
    let mut last_at = t0;
    loop {
        std::thread::sleep(WATCH_STEP);
        let now = Instant::now();
        let s = Live::sum(&shared.live);
        let drained = s.pending == 0 && s.delivered >= s.sents;
        let settled = s.settled >= opts.users as u64;
        let phase = &shared.phase;
        if timeline
            .end
            .step(now, load_end, opts.drain, drained, settled, phase, VERIFY)
        {
            return;
        }
        if now >= next_line && !opts.json {
            let phase = if timeline.end.verifying() {
                "verify"
            } else if now >= load_end {
                "drain"
            } else if now < t0 + opts.warmup {
                "warmup"
            } else {
                "measure"
            };
            progress.line(&progress_line(
                opts,
                phase,
                now - t0,
                &last,
                &s,
                now - last_at,
            ));
            last = s;
            last_at = now;
            next_line += Duration::from_secs(1);
        }
    }
}

fn progress_line(
    opts: &Opts,
    phase: &str,
    elapsed: Duration,
    a: &Counters,
    b: &Counters,
    dt: Duration,
) -> String {
    let secs = dt.as_secs_f64().max(1e-9);
    let sents = b.sents - a.sents;
    let delivered = b.delivered - a.delivered;
    let sent_mean = (b.sent_lat_ns - a.sent_lat_ns)
        .checked_div(sents)
        .map_or(0.0, stats::us);
    let deliver_mean = (b.deliver_lat_ns - a.deliver_lat_ns)
        .checked_div(delivered)
        .map_or(0.0, stats::us);
    let head = format!("{:>6.1}s {phase:<7}", elapsed.as_secs_f64());
    match phase {
        "verify" => format!(
            "{head} inboxes replayed {}/{}  lost {}  errors {}",
            b.verified, opts.users, b.lost, b.errors
        ),
        "drain" => format!(
            "{head} waiting for {} `sent`s and {} pushes  lost {}  errors {}",
            stats::grouped(b.pending),
            stats::grouped(b.sents.saturating_sub(b.delivered)),
            b.lost,
            b.errors
        ),
        _ => format!(
            "{head} {:>9} sent/s {:>9} delivered/s  mean sent {:>8.1} us  recipient {:>8.1} us  \
             in flight {}  users {}/{}  errors {}  lost {}",
            stats::grouped((sents as f64 / secs) as u64),
            stats::grouped((delivered as f64 / secs) as u64),
            sent_mean,
            deliver_mean,
            stats::grouped(b.pending),
            b.welcomed,
            opts.users,
            b.errors,
            b.lost
        ),
    }
}

/// A user other than `from`, uniformly among `users`.
fn pick_other(rng: &mut u64, from: u32, users: usize) -> u32 {
    let r = (splitmix64(rng) % (users as u64 - 1)) as u32;
    if r >= from {
        r + 1
    } else {
        r
    }
}

/// One of `from`'s `k` contacts: the next `k` users after it, wrapping around.
fn pick_contact(rng: &mut u64, from: u32, users: usize, k: usize) -> u32 {
    let k = k.min(users - 1) as u64;
    let step = 1 + splitmix64(rng) % k;
    ((u64::from(from) + step) % users as u64) as u32
}

/// The counter at the end of a cid the session made (`<device>.<epoch>.<n>`): the
/// bench's message number.
fn cid_counter(cid: &str) -> Option<u64> {
    cid.rsplit('.').next()?.parse().ok()
}

/// One user's state besides its socket.
struct State {
    idx: u32,
    /// The live session, from the `welcome` on.
    session: Option<Session>,
    /// The inbox replay, once the verify phase reached this user.
    verify: Option<Box<Verify>>,
    log: UserLog,
    lost: bool,
    /// Done with the verify phase (counted in `settled`).
    settled: bool,
}

struct Verify {
    session: Session,
    inbox: Inbox,
    /// The last `synced` said the replay is complete.
    final_page: bool,
    done: bool,
}

struct User {
    client: Option<Client>,
    st: State,
}

/// A worker's state apart from its users.
struct Ctx<'a> {
    opts: &'a Opts,
    run: u32,
    run_seed: u64,
    clock: Clock,
    /// Measured window and end of the load, ns on `clock`.
    from_ns: u64,
    to_ns: u64,
    rng: u64,
    t: Totals,
    /// Reused for every body and every batch of session events.
    body: String,
    events: Vec<Event>,
}

impl Ctx<'_> {
    #[inline]
    fn measuring(&self, now: u64) -> bool {
        now >= self.from_ns && now < self.to_ns
    }

    #[inline]
    fn loading(&self, now: u64) -> bool {
        now < self.to_ns
    }

    fn name(&self, idx: u32) -> &str {
        &self.opts.names[idx as usize]
    }
}

type UserResult = (u32, Option<UserLog>);

fn worker(k: usize, opts: &Opts, shared: &Shared, run_seed: u64) -> (Totals, Vec<UserResult>) {
    let count = opts.users / opts.threads + usize::from(k < opts.users % opts.threads);
    let global = |j: usize| k + j * opts.threads;
    let token = |j: usize| client::mint_token(&opts.names[global(j)], &opts.secret);
    let seed = (k as u32).wrapping_mul(0x85EB_CA6B) ^ 0x2545_F491;
    let fail = |msg| shared.fail(msg);
    let setup = imclient::connect_share(&opts.target, count, seed, &token, &shared.abort, fail);
    shared.setup.wait();
    shared.go.wait();
    let (Some((mut poll, clients)), false) = (setup, shared.abort.load(Ordering::Relaxed)) else {
        return (Totals::default(), Vec::new());
    };
    let t0 = *shared.t0.get().expect("t0 is set before the go barrier");

    let mut ctx = Ctx {
        opts,
        run: run_seed as u32,
        run_seed,
        clock: Clock(t0),
        from_ns: opts.warmup.as_nanos() as u64,
        to_ns: (opts.warmup + opts.seconds).as_nanos() as u64,
        rng: opts.seed ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        t: Totals::default(),
        body: String::with_capacity(opts.size + 64),
        events: Vec::new(),
    };
    let mut users: Vec<User> = clients
        .into_iter()
        .enumerate()
        .map(|(j, client)| User {
            client: Some(client),
            st: State {
                idx: global(j) as u32,
                session: None,
                verify: None,
                log: UserLog::default(),
                lost: false,
                settled: false,
            },
        })
        .collect();
    let live = &shared.live[k];
    let mut events = Events::with_capacity(1024);
    let mut rbuf = vec![0u8; READ_BUF];

    // Frames that arrived behind the 101 first, then whatever came after it while the
    // handshakes ran (the `welcome` may follow the 101 by a store read): its readiness edge
    // was taken by the handshake's poll, so the socket is read once by hand.
    for u in users.iter_mut() {
        let now = ctx.clock.ns();
        let result = u.client.as_mut().map_or(Ok(()), |c| {
            let mut pending = std::mem::take(&mut c.pending);
            imclient::feed(c, &mut pending, |input| {
                on_input(&mut u.st, &mut ctx, input, now)
            })
        });
        let result = result.and_then(|()| on_readable(u, &mut ctx, &mut rbuf, now));
        after_input(u, &mut ctx, result);
    }

    // --rate: this thread's share of the rate, and the slots scheduled so far.
    let rate = opts.rate as f64 * count as f64 / opts.users as f64;
    let mut paced: u64 = 0;
    let mut rr = 0usize;
    let mut next_tick = TICK_NS;
    let mut verify_left = true;
    loop {
        let now = ctx.clock.ns();
        let phase = shared.phase.load(Ordering::Acquire);
        if phase == CLOSE {
            break;
        }
        if phase == VERIFY && verify_left {
            verify_left = start_verifies(&mut users, &mut ctx, now);
        }
        let mut timeout = MAX_POLL;
        if opts.rate > 0 && ctx.loading(now) {
            pace(&mut users, &mut ctx, now, rate, &mut paced, &mut rr);
            let next_due = ((paced + 1) as f64 * 1e9 / rate) as u64;
            timeout = timeout.min(Duration::from_nanos(next_due.saturating_sub(now)));
        }
        if ctx.loading(now) {
            timeout = timeout.min(Duration::from_nanos(ctx.to_ns - now));
        }
        if phase == VERIFY && verify_left {
            timeout = timeout.min(WATCH_STEP);
        }
        if now >= next_tick {
            tick(&mut users, &mut ctx, now);
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
        for event in events.iter() {
            let Some(u) = users.get_mut(event.token().0) else {
                continue;
            };
            let now = ctx.clock.ns();
            let result = on_readable(u, &mut ctx, &mut rbuf, now);
            after_input(u, &mut ctx, result);
        }
    }

    ctx.t.unclosed = imclient::close_all(
        &mut users,
        |u| &mut u.client,
        &mut poll,
        &mut events,
        &mut rbuf,
    );
    live.publish(&ctx.t.c);
    let results = users
        .into_iter()
        .map(|u| {
            let State {
                idx,
                session,
                verify,
                mut log,
                ..
            } = u.st;
            if session.is_none() {
                return (idx, None);
            }
            log.inbox = verify.filter(|v| v.done).map(|v| v.inbox);
            (idx, Some(log))
        })
        .collect();
    (ctx.t, results)
}

/// Reads a readable socket until it is drained, handing every frame to the user's session.
fn on_readable(u: &mut User, ctx: &mut Ctx<'_>, rbuf: &mut [u8], now: u64) -> Result<(), String> {
    let Some(c) = u.client.as_mut() else {
        return Ok(());
    };
    imclient::read_available(c, rbuf, |input| on_input(&mut u.st, ctx, input, now))
}

fn on_input(st: &mut State, ctx: &mut Ctx<'_>, input: Input<'_>, now: u64) {
    match input {
        Input::Text(text) => on_text(st, ctx, text, now),
        Input::Binary => ctx.t.binary_frame(),
    }
}

/// After a batch of input (or a send): the session's requests (the cumulative ack first)
/// go out in one write; a failure of the batch or the write loses the connection.
fn after_input(u: &mut User, ctx: &mut Ctx<'_>, result: Result<(), String>) {
    let result = result.and_then(|()| write_requests(u));
    if let Err(why) = result {
        lose(u, ctx, &why);
        return;
    }
    if let Some(v) = u.st.verify.as_mut() {
        if v.session.is_syncing() {
            v.final_page = false;
        } else if v.final_page && !v.done {
            v.done = true;
            ctx.t.c.verified += 1;
            settle(&mut u.st, ctx);
        }
    }
}

fn write_requests(u: &mut User) -> Result<(), String> {
    let Some(c) = u.client.as_mut() else {
        return Ok(());
    };
    let session = match (u.st.verify.as_mut(), u.st.session.as_mut()) {
        (Some(v), _) => Some(&mut v.session),
        (None, s) => s,
    };
    if let Some(session) = session {
        for request in session.take_requests() {
            c.ws.send(OpCode::Text, request.as_bytes(), &mut c.out);
        }
    }
    if c.has_output() {
        c.flush().map_err(|e| format!("write: {e}"))?;
    }
    Ok(())
}

fn lose(u: &mut User, ctx: &mut Ctx<'_>, why: &str) {
    if u.st.lost {
        return;
    }
    u.st.lost = true;
    // Dropping the socket closes it and takes it out of the poll set.
    u.client = None;
    ctx.t.c.lost += 1;
    if u.st.verify.is_none() {
        if let Some(s) = &u.st.session {
            ctx.t.c.pending = ctx.t.c.pending.saturating_sub(s.pending_count() as u64);
        }
    }
    let name = ctx.name(u.st.idx).to_owned();
    ctx.t.problem(|| format!("{name}: connection lost: {why}"));
    if u.st.verify.is_some() {
        settle(&mut u.st, ctx);
    }
}

fn settle(st: &mut State, ctx: &mut Ctx<'_>) {
    if !st.settled {
        st.settled = true;
        ctx.t.c.settled += 1;
    }
}

fn on_text(st: &mut State, ctx: &mut Ctx<'_>, text: &[u8], now: u64) {
    let now_ms = now / 1_000_000;
    if let Some(v) = st.verify.as_mut() {
        on_verify_text(v, st.idx, ctx, text, now_ms);
        return;
    }
    let Some(session) = st.session.as_mut() else {
        on_welcome(st, ctx, text, now);
        return;
    };
    session.heard(now_ms);
    let held = session.held_count();
    let mut events = std::mem::take(&mut ctx.events);
    events.clear();
    session.on_text_into(text, &mut events);
    if events.is_empty() && session.held_count() <= held {
        // Nothing new: a `msg` whose seq the session already holds (a re-push).
        st.log.repushes += 1;
    }
    for event in events.drain(..) {
        match event {
            Event::Sent(sent) => on_sent(st, ctx, &sent, now),
            Event::Msg(msg) => on_msg(st, ctx, &msg, now),
            Event::Error(e) => on_error(st, ctx, &e, now),
            Event::Synced(_) | Event::Pong(_) => {}
            Event::Welcome(_) | Event::Other(_) => ctx.t.other_frames += 1,
        }
    }
    ctx.events = events;
}

/// The first frame: a `welcome`, whose `inbox_seq` is where this user's run starts.
fn on_welcome(st: &mut State, ctx: &mut Ctx<'_>, text: &[u8], now: u64) {
    let mut probe = Session::new(Config::new("probe", 0));
    let welcome = match probe.on_text(text).into_iter().next() {
        Some(Event::Welcome(w)) => w,
        other => {
            ctx.t.c.errors += 1;
            let name = ctx.name(st.idx).to_owned();
            ctx.t
                .problem(|| format!("{name}: the first frame was not a `welcome`: {other:?}"));
            return;
        }
    };
    st.log.start = welcome.inbox_seq;
    let mut seed = ctx.run_seed ^ u64::from(st.idx).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    let mut session = Session::with_cursor(
        Config::new("bench", splitmix64(&mut seed)),
        welcome.inbox_seq,
    );
    session.on_connect(now / 1_000_000);
    session.on_text(text);
    st.session = Some(session);
    ctx.t.c.welcomed += 1;
    if ctx.opts.rate == 0 && ctx.loading(now) {
        for _ in 0..ctx.opts.depth {
            send_one(st, ctx, now);
        }
    }
}

/// Queues the user's next message (to a random other user) in its session; the caller
/// writes it out.
fn send_one(st: &mut State, ctx: &mut Ctx<'_>, now: u64) {
    let Some(session) = st.session.as_mut() else {
        return;
    };
    let n = st.log.sends.len() as u64 + 1;
    let to = match ctx.opts.contacts {
        0 => pick_other(&mut ctx.rng, st.idx, ctx.opts.users),
        k => pick_contact(&mut ctx.rng, st.idx, ctx.opts.users, k),
    };
    Stamp {
        run: ctx.run,
        sender: st.idx,
        n,
        t_ns: now,
    }
    .write(ctx.opts.size, &mut ctx.body);
    let cid = session.send(&ctx.opts.addresses[to as usize], &ctx.body);
    debug_assert_eq!(cid_counter(&cid), Some(n));
    st.log.sends.push(SendRec {
        to,
        at_ns: now,
        seq: None,
    });
    ctx.t.c.offered += 1;
    ctx.t.c.pending += 1;
    if ctx.measuring(now) {
        ctx.t.offered_w += 1;
    }
}

fn on_sent(st: &mut State, ctx: &mut Ctx<'_>, sent: &Sent, now: u64) {
    let rec = cid_counter(&sent.cid)
        .and_then(|n| st.log.sends.get_mut((n as usize).wrapping_sub(1)))
        .filter(|rec| rec.seq.is_none());
    let Some(rec) = rec else {
        ctx.t.other_frames += 1;
        return;
    };
    rec.seq = Some(sent.seq);
    let lat = now.saturating_sub(rec.at_ns);
    ctx.t.c.pending = ctx.t.c.pending.saturating_sub(1);
    ctx.t.c.sents += 1;
    ctx.t.c.sent_lat_ns += lat;
    if ctx.measuring(now) {
        ctx.t.sents_w += 1;
        ctx.t.sent_hist.record(lat);
    }
    if ctx.opts.rate == 0 && ctx.loading(now) {
        send_one(st, ctx, now);
    }
}

fn on_msg(st: &mut State, ctx: &mut Ctx<'_>, msg: &Msg, now: u64) {
    let opts = ctx.opts;
    let (origin, stamp) = Origin::of(ctx.run, &msg.kind, &msg.from, &msg.body, |id| {
        opts.index_of(id)
    });
    st.log.live.push((msg.seq, origin));
    if let Some(stamp) = stamp {
        let lat = now.saturating_sub(stamp.t_ns);
        ctx.t.c.delivered += 1;
        ctx.t.c.deliver_lat_ns += lat;
        if ctx.measuring(now) {
            ctx.t.delivered_w += 1;
            ctx.t.deliver_hist.record(lat);
        }
    }
}

fn on_error(st: &mut State, ctx: &mut Ctx<'_>, e: &ErrorReply, now: u64) {
    ctx.t.c.errors += 1;
    *ctx.t.errors_by_code.entry(e.code.clone()).or_default() += 1;
    let name = ctx.name(st.idx).to_owned();
    ctx.t
        .problem(|| format!("{name}: error {}: {}", e.code, e.message));
    // A refusal that a resend cannot cure: the session dropped it from its outbox, so
    // it will never get a `sent`. A transient one is resent by the session's timer.
    if e.cid.is_some() && !e.is_transient() {
        ctx.t.c.pending = ctx.t.c.pending.saturating_sub(1);
        if ctx.opts.rate == 0 && ctx.loading(now) {
            send_one(st, ctx, now);
        }
    }
}

/// --rate: the sends due by now on this thread's schedule, each from the next user in
/// turn that can take one.
fn pace(
    users: &mut [User],
    ctx: &mut Ctx<'_>,
    now: u64,
    rate: f64,
    paced: &mut u64,
    rr: &mut usize,
) {
    if users.is_empty() {
        return;
    }
    let due = (now as f64 * rate / 1e9) as u64;
    let want = imclient::catch_up(due, paced, rate, CATCH_UP_SECS, &mut ctx.t);
    for _ in 0..want {
        *paced += 1;
        let mut sent = false;
        for _ in 0..users.len() {
            *rr = (*rr + 1) % users.len();
            let u = &mut users[*rr];
            let ready = u.client.is_some()
                && u.st.verify.is_none()
                && u.st
                    .session
                    .as_ref()
                    .is_some_and(|s| s.pending_count() < MAX_USER_BACKLOG);
            if ready {
                send_one(&mut u.st, ctx, now);
                after_input(u, ctx, Ok(()));
                sent = true;
                break;
            }
        }
        if !sent {
            ctx.t.skipped_backlog += 1;
        }
    }
}

/// Every session's timers: app pings, resends after transient errors, and the check
/// that the server has not gone silent.
fn tick(users: &mut [User], ctx: &mut Ctx<'_>, now: u64) {
    let now_ms = now / 1_000_000;
    for u in users.iter_mut() {
        if u.client.is_none() {
            continue;
        }
        let session = match (u.st.verify.as_mut(), u.st.session.as_mut()) {
            (Some(v), _) => &mut v.session,
            (None, Some(s)) => s,
            (None, None) => continue,
        };
        if session.tick(now_ms) == Liveness::Dead {
            lose(u, ctx, "the server went silent past the heartbeat");
            continue;
        }
        after_input(u, ctx, Ok(()));
    }
}

/// The verify phase reached this worker: each user replays its inbox from its starting
/// cursor with a fresh session, once its live session has no `sync` of its own in flight
/// (so every `synced` that comes back answers the replay). Returns whether some users
/// still wait for that.
fn start_verifies(users: &mut [User], ctx: &mut Ctx<'_>, now: u64) -> bool {
    let mut left = false;
    for u in users.iter_mut() {
        if u.st.verify.is_some() || u.st.settled {
            continue;
        }
        let Some(session) = u.st.session.as_ref().filter(|_| !u.st.lost) else {
            // Lost, or never signed in: nothing to replay.
            settle(&mut u.st, ctx);
            continue;
        };
        if session.is_syncing() {
            left = true;
            continue;
        }
        u.st.log.live_cursor = session.cursor();
        ctx.t.c.pending = ctx
            .t
            .c
            .pending
            .saturating_sub(session.pending_count() as u64);
        let mut seed = ctx.run_seed ^ u64::from(u.st.idx) ^ 0x5555_5555;
        let mut replay =
            Session::with_cursor(Config::new("verify", splitmix64(&mut seed)), u.st.log.start);
        let requests = replay.after_connect(now / 1_000_000);
        if let Some(c) = u.client.as_mut() {
            for request in requests {
                c.ws.send(OpCode::Text, request.as_bytes(), &mut c.out);
            }
        }
        u.st.verify = Some(Box::new(Verify {
            session: replay,
            inbox: Inbox::default(),
            final_page: false,
            done: false,
        }));
        after_input(u, ctx, Ok(()));
    }
    left
}

fn on_verify_text(v: &mut Verify, idx: u32, ctx: &mut Ctx<'_>, text: &[u8], now_ms: u64) {
    v.session.heard(now_ms);
    let mut events = std::mem::take(&mut ctx.events);
    events.clear();
    v.session.on_text_into(text, &mut events);
    let opts = ctx.opts;
    for event in events.drain(..) {
        match event {
            Event::Msg(m) => {
                let (origin, _) =
                    Origin::of(ctx.run, &m.kind, &m.from, &m.body, |id| opts.index_of(id));
                v.inbox.entries.push(Entry {
                    seq: m.seq,
                    own: opts.index_of(&m.from) == Some(idx),
                    origin,
                });
            }
            Event::Synced(s) => {
                v.inbox.head = s.head;
                v.final_page = !s.more;
            }
            Event::Error(e) => {
                ctx.t.c.errors += 1;
                *ctx.t.errors_by_code.entry(e.code.clone()).or_default() += 1;
                let name = opts.names[idx as usize].clone();
                ctx.t.problem(|| {
                    format!("{name}: the inbox replay failed: {} {}", e.code, e.message)
                });
            }
            _ => {}
        }
    }
    ctx.events = events;
}

/// Close 1000 on every connection, then a bounded wait for the server's close.
fn report(opts: &Opts, t: &Totals, check: &Check, tl: &Timeline) {
    let secs = opts.seconds.as_secs_f64();
    let durable = t.sents_w as f64 / secs;
    let offered = t.offered_w as f64 / secs;
    let delivered = t.delivered_w as f64 / secs;
    let sent = imclient::quantiles(&t.sent_hist);
    let deliver = imclient::quantiles(&t.deliver_hist);
    let load = if opts.rate == 0 {
        format!("as fast as possible, depth {} per user", opts.depth)
    } else {
        format!("{} msg/s offered", stats::grouped(opts.rate))
    };
    if opts.json {
        let lat = imclient::json_latency;
        let errors = imclient::json_errors(t);
        println!(
            "{{\"mode\":\"im\",\"url\":{},\"users\":{},\"rate\":{},\"depth\":{},\"size\":{},\
             \"seconds\":{},\"warmup\":{},\"threads\":{},\"durable_msgs_per_sec\":{durable:.1},\
             \"offered_msgs_per_sec\":{offered:.1},\"delivered_msgs_per_sec\":{delivered:.1},\
             \"sent_us\":{},\"recipient_us\":{},\"messages\":{{\"sent_window\":{},\"sends\":{},\
             \"confirmed\":{},\"delivered_once\":{},\"repushes\":{},\"stored_unconfirmed\":{},\
             \"foreign\":{}}},\"skipped\":{{\"behind\":{},\"backlog\":{}}},\
             \"check\":{{\"passed\":{},\"verified_users\":{},\"not_delivered\":{},\
             \"duplicate_displays\":{},\"missing_from_inbox\":{},\"missing_from_sender\":{},\
             \"inbox_duplicates\":{},\"gaps\":{},\"behind\":{},\"mismatched\":{}}},\
             \"drain_seconds\":{:.3},\"drained\":{},\"verify_seconds\":{:.3},\"errors\":{{{}}},\
             \"lost_connections\":{}}}",
            stats::json_str(&opts.target.url),
            opts.users,
            opts.rate,
            opts.depth,
            opts.size,
            secs,
            opts.warmup.as_secs_f64(),
            opts.threads,
            lat(sent),
            lat(deliver),
            t.sents_w,
            check.sends,
            check.confirmed,
            check.delivered_once,
            check.repushes,
            check.stored_unconfirmed,
            check.foreign,
            t.skipped_behind,
            t.skipped_backlog,
            check.passed(),
            check.verified_users,
            check.not_delivered,
            check.duplicate_displays,
            check.missing_from_inbox,
            check.missing_from_sender,
            check.inbox_duplicates,
            check.gaps,
            check.behind,
            check.mismatched,
            tl.end.drain.as_secs_f64(),
            tl.end.drained,
            tl.end.verify.as_secs_f64(),
            errors.join(","),
            t.c.lost,
        );
        return;
    }
    let threads = if opts.threads == 1 {
        "thread"
    } else {
        "threads"
    };
    println!(
        "courier-bench im  {} ({})",
        opts.target.url, opts.target.addr
    );
    println!(
        "  {} users, {load}, {} B bodies, {} {threads}; signed in in {:.2} s; warmup {} s, \
         measured {} s",
        stats::grouped(opts.users as u64),
        opts.size,
        opts.threads,
        tl.setup.as_secs_f64(),
        opts.warmup.as_secs_f64(),
        secs
    );
    println!();
    println!(
        "  durable msg/s     {:>12}   `sent` replies per second in the measured window",
        stats::grouped(durable.round() as u64)
    );
    if opts.rate > 0 {
        println!(
            "  offered msg/s     {:>12}   sends written per second (target {})",
            stats::grouped(offered.round() as u64),
            stats::grouped(opts.rate)
        );
    }
    println!(
        "  delivered msg/s   {:>12}   `msg` pushes displayed at recipients per second",
        stats::grouped(delivered.round() as u64)
    );
    imclient::print_latency(&[("send -> sent", sent), ("send -> recipient", deliver)]);
    println!();
    println!(
        "  sends             {:>12}   all phases ({} in the window); {} got `sent`",
        stats::grouped(check.sends),
        stats::grouped(t.offered_w),
        stats::grouped(check.confirmed)
    );
    if t.skipped_behind + t.skipped_backlog > 0 {
        println!(
            "  skipped slots     {:>12}   of the --rate schedule: client behind {}, every user \
             backlogged or not signed in {}",
            stats::grouped(t.skipped_behind + t.skipped_backlog),
            stats::grouped(t.skipped_behind),
            stats::grouped(t.skipped_backlog)
        );
    }
    println!(
        "  delivered once    {:>12}   confirmed messages displayed exactly once at the recipient",
        stats::grouped(check.delivered_once)
    );
    println!(
        "  re-pushes         {:>12}   duplicate `msg` pushes dropped by the dedupe by seq (allowed)",
        stats::grouped(check.repushes)
    );
    if check.stored_unconfirmed > 0 {
        println!(
            "  unconfirmed       {:>12}   stored without a `sent` reaching us ({} displayed; allowed)",
            stats::grouped(check.stored_unconfirmed),
            stats::grouped(check.delivered_unconfirmed)
        );
    }
    if check.foreign > 0 {
        println!(
            "  foreign entries   {:>12}   inbox entries not sent by this run (another client on \
             these users?)",
            stats::grouped(check.foreign)
        );
    }
    imclient::print_drain_verify(
        "push",
        &tl.end,
        &format!(
            " to replay {} of {} inboxes with sync",
            check.verified_users, check.users
        ),
    );
    imclient::print_trouble(t, t.c.errors, t.c.lost);
    println!();
    if check.passed() {
        println!(
            "  check             {:>12}   every confirmed message displayed exactly once; every \
             inbox gap-free from its welcome cursor",
            "PASSED"
        );
    } else {
        println!(
            "  check             {:>12}   not delivered {}, displayed twice {}, missing from \
             inbox {}, missing from sender {}, stored twice {}, gaps {}, behind {}, \
             contradictions {}, unverified inboxes {}",
            "FAILED",
            check.not_delivered,
            check.duplicate_displays,
            check.missing_from_inbox,
            check.missing_from_sender,
            check.inbox_duplicates,
            check.gaps,
            check.behind,
            check.mismatched,
            check.users - check.verified_users
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Parsed;

    #[test]
    fn contacts_are_the_next_k_users_never_oneself() {
        let mut rng = 7;
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..1000 {
            seen.insert(pick_contact(&mut rng, 998, 1000, 5));
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), [0, 1, 2, 3, 999]);
        for _ in 0..100 {
            assert_eq!(
                pick_contact(&mut rng, 1, 2, 5),
                0,
                "k is capped at the others"
            );
        }
    }

    #[test]
    fn user_ids_map_back_to_indexes() {
        assert_eq!(user_index("u", 1000, "u0"), Some(0));
        assert_eq!(user_index("u", 1000, "u999"), Some(999));
        assert_eq!(user_index("u", 1000, "u1000"), None);
        assert_eq!(user_index("u", 1000, "u01"), None);
        assert_eq!(user_index("u", 1000, "u"), None);
        assert_eq!(user_index("u", 1000, "v1"), None);
        assert_eq!(user_index("u", 1000, "u+1"), None);
        assert_eq!(user_index("bench-", 10, "bench-7"), Some(7));
    }

    #[test]
    fn others_are_picked_uniformly_and_never_self() {
        let mut rng = 7;
        let mut hits = [0u32; 4];
        for _ in 0..40_000 {
            let to = pick_other(&mut rng, 2, 4);
            assert_ne!(to, 2);
            hits[to as usize] += 1;
        }
        assert_eq!(hits[2], 0);
        for &h in &[hits[0], hits[1], hits[3]] {
            assert!((12_000..14_700).contains(&h), "{hits:?}");
        }
        // Two users: always the other.
        assert_eq!(pick_other(&mut rng, 0, 2), 1);
        assert_eq!(pick_other(&mut rng, 1, 2), 0);
    }

    #[test]
    fn cid_counters() {
        let mut s = Session::new(Config::new("bench", 9));
        let cid = s.send("user:u1", "x");
        assert_eq!(cid_counter(&cid), Some(1));
        let cid = s.send("user:u1", "y");
        assert_eq!(cid_counter(&cid), Some(2));
        assert_eq!(cid_counter("nonsense"), None);
    }

    #[test]
    fn flags() {
        let argv: Vec<String> = ["--jwt-secret", "s", "--users", "10", "--rate", "20k"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let Ok(Parsed::Run(v)) = args::parse(&argv, FLAGS) else {
            panic!("flags rejected");
        };
        let o = opts(&v).unwrap();
        assert_eq!(o.rate, 20_000);
        assert_eq!(o.users, 10);
        assert_eq!(o.addresses[3], "user:u3");
        assert_eq!(o.index_of("u9"), Some(9));
        let no_secret = vec!["--users".to_owned(), "10".to_owned()];
        let Ok(Parsed::Run(v)) = args::parse(&no_secret, FLAGS) else {
            panic!("flags rejected");
        };
        assert!(opts(&v).unwrap_err().contains("--jwt-secret"));
        let one = vec![
            "--jwt-secret".to_owned(),
            "s".to_owned(),
            "--users".to_owned(),
            "1".to_owned(),
        ];
        let Ok(Parsed::Run(v)) = args::parse(&one, FLAGS) else {
            panic!("flags rejected");
        };
        assert!(opts(&v).is_err());
    }
}
