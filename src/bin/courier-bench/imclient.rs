//! What the IM modes (`im` and `fanout`) share: the run's clock and id, the counts every
//! worker keeps beyond its own counters, reading a socket frame by frame, the --rate
//! schedule's catch-up rule, the close at the end, and the pieces of the report that read
//! the same in both.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use courier::ws::conn::Event as WsEvent;
use courier::ws::frame::close_code;
use mio::{Events, Poll};

use crate::args::Flag;
use crate::client::{self, Client, Plan, SetupError, Target};
use crate::stats::{self, Histogram};

/// Largest message accepted from the server: far above any one `msg`; a sync page is many
/// frames, never one big one; a `group` reply names up to 1000 members.
const MAX_MESSAGE: usize = 4 << 20;
/// Longest wait for the verify phase.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the close handshakes at the end may take.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

const fn flag(
    name: &'static str,
    arg: &'static str,
    default: &'static str,
    help: &'static str,
) -> Flag {
    Flag {
        name,
        arg,
        default,
        help,
    }
}

/// The flags both modes spell the same.
pub const URL: Flag = flag(
    "url",
    "URL",
    "ws://127.0.0.1:8080/ws",
    "courier's IM endpoint (ws://HOST:PORT/ws)",
);
pub const SECONDS: Flag = flag("seconds", "T", "10", "measured duration");
pub const WARMUP: Flag = flag(
    "warmup",
    "W",
    "1",
    "seconds of load before measuring (checked, not counted)",
);
pub const SIZE: Flag = flag(
    "size",
    "B",
    "64",
    "message body bytes (at least the stamp, 30-45 B)",
);
pub const JSON: Flag = flag(
    "json",
    "",
    "",
    "print the result as one JSON object line instead of a table",
);

/// Nanoseconds since the run's base instant, shared by every thread: a stamp written by
/// one thread is read by another.
#[derive(Clone, Copy)]
pub struct Clock(pub Instant);

impl Clock {
    #[inline]
    pub fn ns(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

/// A run id for the stamps (and the seed of whatever else must be fresh): different on
/// every run, so a rerun on the same data neither mistakes an old message for a new one
/// nor reuses an old id.
pub fn run_id() -> u64 {
    let mut seed = (courier::clock::wall_ms() << 20)
        ^ u64::from(std::process::id())
        ^ Instant::now().elapsed().as_nanos() as u64;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    seed ^= u64::from(nanos) << 32;
    splitmix64(&mut seed)
}

/// The index of user `id` named `<prefix><n>` with `n < users` in canonical decimal (no
/// sign, no leading zero), or `None` for anyone else: how the IM modes tell their own
/// users from the rest.
pub fn user_index(prefix: &str, users: usize, id: &str) -> Option<u32> {
    let digits = id.strip_prefix(prefix)?;
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    let i: u32 = digits.parse().ok()?;
    ((i as usize) < users).then_some(i)
}

pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What one worker measured beyond its mode's counters (each mode's `Totals` derefs to
/// it).
#[derive(Default)]
pub struct Tally {
    pub sent_hist: Histogram,
    pub deliver_hist: Histogram,
    /// In the measured window: sends written, `sent`s and deliveries received.
    pub offered_w: u64,
    pub sents_w: u64,
    pub delivered_w: u64,
    /// --rate: slots skipped because the client fell behind its schedule, and because
    /// no sender could take a send (none ready yet, or all backlogged).
    pub skipped_behind: u64,
    pub skipped_backlog: u64,
    pub errors_by_code: BTreeMap<String, u64>,
    /// Frames the client did not expect (binary, unknown types, ...).
    pub other_frames: u64,
    /// Connections whose close handshake had not finished `CLOSE_WAIT` after ours.
    pub unclosed: u64,
    pub first_problem: Option<String>,
}

impl Tally {
    pub fn problem(&mut self, what: impl FnOnce() -> String) {
        if self.first_problem.is_none() {
            self.first_problem = Some(what());
        }
    }

    pub fn merge(&mut self, o: &Tally) {
        self.sent_hist.merge(&o.sent_hist);
        self.deliver_hist.merge(&o.deliver_hist);
        self.offered_w += o.offered_w;
        self.sents_w += o.sents_w;
        self.delivered_w += o.delivered_w;
        self.skipped_behind += o.skipped_behind;
        self.skipped_backlog += o.skipped_backlog;
        for (code, n) in &o.errors_by_code {
            *self.errors_by_code.entry(code.clone()).or_default() += n;
        }
        self.other_frames += o.other_frames;
        self.unclosed += o.unclosed;
        if self.first_problem.is_none() {
            self.first_problem.clone_from(&o.first_problem);
        }
    }

    /// A binary message: the IM endpoint speaks text only.
    pub fn binary_frame(&mut self) {
        self.other_frames += 1;
        self.problem(|| "a binary message on /ws".into());
    }
}

/// Makes a mode's `Totals` (a `tally: Tally` field beside its own counters) read as its
/// `Tally`.
macro_rules! deref_tally {
    ($totals:ty) => {
        impl std::ops::Deref for $totals {
            type Target = $crate::imclient::Tally;
            fn deref(&self) -> &Self::Target {
                &self.tally
            }
        }

        impl std::ops::DerefMut for $totals {
            fn deref_mut(&mut self) -> &mut Self::Target {
                &mut self.tally
            }
        }
    };
}
pub(crate) use deref_tally;

/// A worker's connections: `count` of them, authenticated with `token(j)` for the j-th,
/// handshaken on a poll of their own (`seed` seeds their masking keys). `None` when it
/// failed (said through `fail`) or another thread aborted.
pub fn connect_share(
    target: &Target,
    count: usize,
    seed: u32,
    token: &(dyn Fn(usize) -> String + Sync),
    abort: &AtomicBool,
    fail: impl FnOnce(String),
) -> Option<(Poll, Vec<Client>)> {
    let plan = &Plan {
        target,
        count,
        max_message: MAX_MESSAGE,
        seed,
        token: Some(token),
    };
    let setup = (|| -> Result<(Poll, Vec<Client>), SetupError> {
        let mut poll = Poll::new().map_err(|e| SetupError::Failed(format!("epoll_create: {e}")))?;
        let mut events = Events::with_capacity(256);
        let mut rbuf = vec![0u8; 16 << 10];
        let clients = client::establish(&mut poll, &mut events, plan, abort, &mut rbuf)?;
        Ok((poll, clients))
    })();
    match setup {
        Ok(s) => Some(s),
        Err(SetupError::Failed(msg)) => {
            fail(msg);
            None
        }
        Err(SetupError::Aborted) => None,
    }
}

/// The end of a run as the main thread steers it: after the load, a drain until every
/// `sent` and delivery is in (or --drain runs out), then the verify phase until every
/// connection has settled (or `VERIFY_TIMEOUT`).
#[derive(Default)]
pub struct Ending {
    pub drain: Duration,
    pub drained: bool,
    pub verify: Duration,
    pub verify_timed_out: bool,
    verify_start: Option<Instant>,
}

impl Ending {
    /// One look at `now`: `drained` says whether everything sent is in, `settled` whether
    /// every connection is done verifying. Moves `phase` to `verify` when the drain ends;
    /// true once the verify phase is over.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        now: Instant,
        load_end: Instant,
        drain_limit: Duration,
        drained: bool,
        settled: bool,
        phase: &AtomicU8,
        verify: u8,
    ) -> bool {
        match self.verify_start {
            None if now >= load_end && (drained || now >= load_end + drain_limit) => {
                self.drain = now - load_end;
                self.drained = drained;
                self.verify_start = Some(now);
                phase.store(verify, Ordering::Release);
                false
            }
            Some(start) if settled || now - start >= VERIFY_TIMEOUT => {
                self.verify = now - start;
                self.verify_timed_out = !settled;
                true
            }
            _ => false,
        }
    }

    /// The verify phase has begun.
    pub fn verifying(&self) -> bool {
        self.verify_start.is_some()
    }
}

/// A message read from a connection.
pub enum Input<'a> {
    Text(&'a [u8]),
    Binary,
}

/// Reads a readable socket until it is drained, handing every message to `on`.
pub fn read_available(
    c: &mut Client,
    rbuf: &mut [u8],
    mut on: impl FnMut(Input<'_>),
) -> Result<(), String> {
    loop {
        let n = match client::read(&mut c.stream, rbuf) {
            Ok(Some(0)) => return Err("the server closed the TCP connection".into()),
            Ok(Some(n)) => n,
            Ok(None) => return Ok(()),
            Err(e) => return Err(format!("read: {e}")),
        };
        feed(c, &mut rbuf[..n], &mut on)?;
        // A short read drained the socket; more data raises a new edge.
        if n < rbuf.len() {
            return Ok(());
        }
    }
}

/// Decodes `input` and hands each message to `on`.
pub fn feed(c: &mut Client, input: &mut [u8], mut on: impl FnMut(Input<'_>)) -> Result<(), String> {
    let mut pos = 0;
    while pos < input.len() {
        let (used, event) =
            c.ws.read(&mut input[pos..], &mut c.out)
                .map_err(|e| format!("protocol error from the server: {e}"))?;
        pos += used;
        match event {
            None => break,
            Some(WsEvent::Text(text)) => on(Input::Text(text)),
            Some(WsEvent::Binary(_)) => on(Input::Binary),
            Some(WsEvent::Closed(code)) => {
                let code = code.map_or("no code".to_owned(), |c| c.to_string());
                return Err(format!("the server closed the connection ({code})"));
            }
        }
    }
    Ok(())
}

/// --rate: how many sends are due now that `due` are due since the start and `paced`
/// were handed out; more than `CATCH_UP_SECS` of them are skipped as behind (counted in
/// `t`) rather than sent in a burst. `paced` moves past the skipped ones, not the due
/// ones: the caller counts those as it hands them out.
pub fn catch_up(due: u64, paced: &mut u64, rate: f64, catch_up_secs: f64, t: &mut Tally) -> u64 {
    if due <= *paced {
        return 0;
    }
    let want = due - *paced;
    let cap = ((rate * catch_up_secs) as u64).max(1);
    if want > cap {
        t.skipped_behind += want - cap;
        *paced += want - cap;
        return cap;
    }
    want
}

/// Closes every open connection and waits up to `CLOSE_WAIT` for the server's side of
/// each close; the number that had not finished by then.
pub fn close_all<T>(
    items: &mut [T],
    client: impl Fn(&mut T) -> &mut Option<Client>,
    poll: &mut Poll,
    events: &mut Events,
    rbuf: &mut [u8],
) -> u64 {
    let mut open = 0u64;
    for item in items.iter_mut() {
        let slot = client(item);
        if let Some(c) = slot.as_mut() {
            c.ws.close(close_code::NORMAL, "", &mut c.out);
            if c.flush().is_ok() {
                open += 1;
            } else {
                *slot = None;
            }
        }
    }
    let deadline = Instant::now() + CLOSE_WAIT;
    while open > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || poll.poll(events, Some(left)).is_err() {
            break;
        }
        for event in events.iter() {
            let Some(item) = items.get_mut(event.token().0) else {
                continue;
            };
            let slot = client(item);
            let Some(c) = slot.as_mut() else {
                continue;
            };
            if !drain_close(c, rbuf) {
                *slot = None;
                open -= 1;
            }
        }
    }
    open
}

/// Reads a closing connection; false once it is done (the server's close or EOF).
fn drain_close(c: &mut Client, rbuf: &mut [u8]) -> bool {
    loop {
        let n = match client::read(&mut c.stream, rbuf) {
            Ok(Some(0)) | Err(_) => return false,
            Ok(Some(n)) => n,
            Ok(None) => return true,
        };
        let mut pos = 0;
        while pos < n {
            match c.ws.read(&mut rbuf[pos..n], &mut c.out) {
                Ok((used, event)) => {
                    pos += used;
                    match event {
                        None => break,
                        Some(WsEvent::Closed(_)) => return false,
                        Some(_) => {}
                    }
                }
                Err(_) => return false,
            }
        }
    }
}

/// Latency quantiles of a histogram: p50, p99, p99.9, max (ns).
pub fn quantiles(h: &Histogram) -> [u64; 4] {
    [
        h.quantile(0.50),
        h.quantile(0.99),
        h.quantile(0.999),
        h.max(),
    ]
}

/// Quantiles as a JSON object in microseconds.
pub fn json_latency(v: [u64; 4]) -> String {
    format!(
        "{{\"p50\":{:.1},\"p99\":{:.1},\"p999\":{:.1},\"max\":{:.1}}}",
        stats::us(v[0]),
        stats::us(v[1]),
        stats::us(v[2]),
        stats::us(v[3])
    )
}

/// The error replies by code as JSON object members.
pub fn json_errors(t: &Tally) -> Vec<String> {
    t.errors_by_code
        .iter()
        .map(|(code, n)| format!("{}:{n}", stats::json_str(code)))
        .collect()
}

/// The latency table: a header, then a row of microseconds for each label.
pub fn print_latency(rows: &[(&str, [u64; 4])]) {
    println!("                       p50 us      p99 us    p99.9 us      max us");
    for (label, v) in rows {
        println!(
            "  {label:<16} {:>10.1}  {:>10.1}  {:>10.1}  {:>10.1}",
            stats::us(v[0]),
            stats::us(v[1]),
            stats::us(v[2]),
            stats::us(v[3])
        );
    }
}

/// The table's drain and verify lines; `verify` says what the verify phase did.
pub fn print_drain_verify(what: &str, end: &Ending, verify: &str) {
    println!(
        "  drain             {:>12.2}   s until every `sent` and {what} was in{}",
        end.drain.as_secs_f64(),
        if end.drained {
            ""
        } else {
            " (gave up: --drain ran out)"
        }
    );
    println!(
        "  verify            {:>12.2}   s{verify}{}",
        end.verify.as_secs_f64(),
        if end.verify_timed_out {
            " (timed out)"
        } else {
            ""
        }
    );
}

/// The table's errors, lost and unexpected lines.
pub fn print_trouble(t: &Tally, errors: u64, lost: u64) {
    let by_code: Vec<String> = t
        .errors_by_code
        .iter()
        .map(|(code, n)| format!("{code} {n}"))
        .collect();
    println!(
        "  errors            {:>12}   {}",
        stats::grouped(errors),
        if by_code.is_empty() {
            "error replies from the server".to_owned()
        } else {
            by_code.join(", ")
        }
    );
    println!(
        "  lost              {:>12}   connections ended before the run did",
        lost
    );
    if t.other_frames > 0 {
        println!(
            "  unexpected        {:>12}   frames the client did not expect (ignored)",
            t.other_frames
        );
    }
}
