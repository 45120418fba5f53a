//! Logging that the reactor can call without blocking.
//!
//! The reactor owns every connection on one thread, so a log call must never wait: not on
//! a full pipe behind stderr, not on a slow terminal, not on a lock another thread holds
//! while writing. A call formats its line (only when the level is on) and hands it to one
//! writer thread over a bounded channel with `try_send`. When the channel is full the line
//! is dropped and counted; the writer reports `N log lines dropped` once it has caught up
//! (or at least once per second while it has not), so a gap in the log is never silent.
//!
//! ```
//! use courier::log::{self, Level};
//!
//! log::init(Level::Info); // or log::init_from_env(), which reads COURIER_LOG
//! courier::log_info!("listening on {}", "127.0.0.1:8080");
//! courier::log_debug!("not formatted at all: {}", 42); // off at info
//! log::shutdown(); // drains what is queued, joins the writer (bounded wait)
//! ```
//!
//! Lines look like `2026-11-23T12:34:56.789Z INFO  listening on 127.0.0.1:8080`: UTC
//! wall-clock time to the millisecond, the level padded to five columns, the message.
//! Control characters in a message are escaped (`\n`, `\u{1b}`), so one event is always one
//! line however hostile the text it quotes; a message is cut at [`MAX_MESSAGE`] bytes.
//!
//! # Before `init` and after `shutdown`
//! There is no writer thread then, and a line is written at once with `eprint!` (same
//! format, level `info` unless [`set_level`] said otherwise). That write can block, which
//! is fine where it happens: unit tests (whose harness captures `eprint!`, so a failing
//! test shows its log), command-line tools, errors before the server starts and messages
//! after it has stopped. The server calls [`init`] before the reactor runs and [`shutdown`]
//! after it returns.

use std::fmt::{self, Write as _};
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};

/// Lines the channel holds before new ones are dropped. At a few hundred bytes a line this
/// is about a megabyte in the worst case, and more than a second of the writer's work.
pub const CAPACITY: usize = 4096;

/// Bytes of message kept per line. Bounds the memory the full channel can hold and the
/// time a line costs the reactor, whatever a caller passes in.
pub const MAX_MESSAGE: usize = 4096;

/// How long [`shutdown`] waits for the writer: long enough to drain a full channel to a
/// live stderr, short enough that a stderr nobody reads cannot hold up the exit.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

/// The most the writer waits before reporting dropped lines while it is behind.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// Severity, most severe first; a line is written when its level is at or above the
/// configured one (`info` writes error, warn and info).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Level {
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
}

impl Level {
    /// The five-column tag of a line.
    pub fn tag(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN ",
            Level::Info => "INFO ",
            Level::Debug => "DEBUG",
        }
    }

    /// Whether a line at `line` is written when the configured level is `self`.
    pub fn allows(self, line: Level) -> bool {
        line <= self
    }

    fn from_u8(n: u8) -> Level {
        match n {
            1 => Level::Error,
            2 => Level::Warn,
            4 => Level::Debug,
            _ => Level::Info,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        })
    }
}

/// The level a `COURIER_LOG` value asks for. Unset or empty means `info`; anything that is
/// not `error`, `warn`, `info` or `debug` (any case, surrounding blanks ignored) also means
/// `info`, and comes back with the warning line to log once the logger runs: a typo in
/// the environment should neither stop the server nor pass unnoticed.
pub fn parse_level(value: Option<&str>) -> (Level, Option<String>) {
    let Some(raw) = value else {
        return (Level::Info, None);
    };
    let level = match raw.trim().to_ascii_lowercase().as_str() {
        "" | "info" => Level::Info,
        "error" => Level::Error,
        "warn" => Level::Warn,
        "debug" => Level::Debug,
        _ => {
            let warning = format!(
                "COURIER_LOG={raw:?} is not one of error, warn, info, debug; logging at info"
            );
            return (Level::Info, Some(warning));
        }
    };
    (level, None)
}

// ---- the process-wide logger -------------------------------------------------------------

/// The configured level, read on every call before anything else: the whole cost of a
/// line that is off is this load and a compare.
static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Starts the writer thread (to stderr) and sets the level. Returns `false`, and only sets
/// the level, if a logger was already started.
pub fn init(level: Level) -> bool {
    set_level(level);
    let mut started = false;
    LOGGER.get_or_init(|| {
        started = true;
        Logger::start(Options::default())
    });
    started
}

/// [`init`] with the level from `COURIER_LOG` (see [`parse_level`]); an unknown value is
/// reported with one `warn` line. Returns the level in force.
pub fn init_from_env() -> Level {
    let value = std::env::var_os("COURIER_LOG");
    let value = value.as_ref().map(|v| v.to_string_lossy());
    let (level, warning) = parse_level(value.as_deref());
    init(level);
    if let Some(warning) = warning {
        write(Level::Warn, format_args!("{warning}"));
    }
    level
}

/// Changes the level at any time, from any thread.
pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Relaxed);
}

/// The level in force.
pub fn level() -> Level {
    Level::from_u8(LEVEL.load(Relaxed))
}

/// Whether a line at `level` would be written. The macros call this before formatting.
#[inline]
pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Relaxed)
}

/// Logs a line at `level` if it is enabled. For a message built with `format_args!`; the
/// macros are shorter.
#[inline]
pub fn log(level: Level, args: fmt::Arguments<'_>) {
    if enabled(level) {
        write(level, args);
    }
}

/// Writes a line without looking at the level (the macros have already checked).
#[doc(hidden)]
pub fn write(level: Level, args: fmt::Arguments<'_>) {
    match LOGGER.get() {
        Some(logger) => logger.log(level, args),
        None => direct(Line::new(level, args)),
    }
}

/// Lines dropped because the channel was full, since the start. Monotonic: what
/// `/metrics` shows as `courier_log_lines_dropped_total`.
pub fn dropped_total() -> u64 {
    LOGGER.get().map_or(0, Logger::dropped_total)
}

/// Writes every line queued so far, reports drops, flushes and stops the writer thread,
/// waiting at most [`SHUTDOWN_WAIT`]. Returns `false` if the writer did not finish in time
/// (stderr blocked), in which case the thread is left behind and what it still held may be
/// lost. Later lines are written directly (see the module docs). Call it after the reactor
/// has returned: it waits.
pub fn shutdown() -> bool {
    shutdown_within(SHUTDOWN_WAIT)
}

/// [`shutdown`] with a chosen bound.
pub fn shutdown_within(wait: Duration) -> bool {
    LOGGER.get().map_or(true, |logger| logger.shutdown(wait))
}

/// Logs at a level given as a value: `log_at!(Level::Warn, "x = {}", x)`. The arguments
/// are neither evaluated nor formatted when the level is off.
#[macro_export]
macro_rules! log_at {
    ($level:expr, $($arg:tt)+) => {{
        let level: $crate::log::Level = $level;
        if $crate::log::enabled(level) {
            $crate::log::write(level, ::std::format_args!($($arg)+));
        }
    }};
}

/// `log_error!("store failed: {e}")`: see [`log`](crate::log).
#[macro_export]
macro_rules! log_error {
    ($($arg:tt)+) => { $crate::log_at!($crate::log::Level::Error, $($arg)+) };
}

/// `log_warn!("auth failed from {addr}")`: see [`log`](crate::log).
#[macro_export]
macro_rules! log_warn {
    ($($arg:tt)+) => { $crate::log_at!($crate::log::Level::Warn, $($arg)+) };
}

/// `log_info!("listening on {addr}")`: see [`log`](crate::log).
#[macro_export]
macro_rules! log_info {
    ($($arg:tt)+) => { $crate::log_at!($crate::log::Level::Info, $($arg)+) };
}

/// `log_debug!("conn {id} closed with {code}")`: see [`log`](crate::log).
#[macro_export]
macro_rules! log_debug {
    ($($arg:tt)+) => { $crate::log_at!($crate::log::Level::Debug, $($arg)+) };
}

// ---- one logger: a channel and its writer thread -------------------------------------------

/// How a [`Logger`] is built. The defaults are the server's; tests shrink them.
pub struct Options {
    /// Lines the channel holds.
    pub capacity: usize,
    /// The most the writer waits before reporting drops while it is behind.
    pub report_every: Duration,
    /// Where lines go.
    pub sink: Box<dyn Write + Send>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            capacity: CAPACITY,
            report_every: REPORT_EVERY,
            // Not `stderr().lock()` held for the thread's life: that would make every
            // other `eprintln!` in the process (main's fatal error, a panic message) wait
            // forever. The buffer is flushed whenever the channel runs empty.
            sink: Box::new(io::BufWriter::with_capacity(64 * 1024, io::stderr())),
        }
    }
}

/// A channel to a writer thread. The process has one, behind [`init`] and the macros; the
/// type is public so its behaviour can be tested with a small channel and a sink of one's
/// own.
pub struct Logger {
    tx: Sender<Msg>,
    drops: Arc<Drops>,
    writer: Mutex<Option<Writer>>,
}

struct Writer {
    thread: JoinHandle<()>,
    done: Receiver<()>,
}

#[derive(Default)]
struct Drops {
    /// Not yet reported by the writer; swapped to 0 when it reports.
    unreported: AtomicU64,
    total: AtomicU64,
}

enum Msg {
    Line(Line),
    Stop,
}

struct Line {
    /// Taken by the caller, so a line's time is when it happened, not when the writer got
    /// to it.
    wall_ms: u64,
    level: Level,
    text: String,
}

impl Line {
    fn new(level: Level, args: fmt::Arguments<'_>) -> Line {
        Line {
            wall_ms: crate::clock::wall_ms(),
            level,
            text: format_capped(args),
        }
    }
}

impl Logger {
    /// Spawns the writer thread.
    pub fn start(options: Options) -> Logger {
        let (tx, rx) = bounded(options.capacity.max(1));
        let (done_tx, done) = bounded(1);
        let drops = Arc::new(Drops::default());
        let shared = Arc::clone(&drops);
        let Options {
            report_every, sink, ..
        } = options;
        let thread = thread::Builder::new()
            .name("courier-log".into())
            .spawn(move || {
                run(&rx, sink, &shared, report_every);
                // The receiver goes with this thread: later lines see a disconnected
                // channel and are written directly instead of piling up unread.
                drop(rx);
                let _ = done_tx.send(());
            })
            .expect("spawning the log writer thread");
        Logger {
            tx,
            drops,
            writer: Mutex::new(Some(Writer { thread, done })),
        }
    }

    /// Formats the line and queues it without waiting; drops and counts it if the channel
    /// is full. Does not look at any level.
    pub fn log(&self, level: Level, args: fmt::Arguments<'_>) {
        match self.tx.try_send(Msg::Line(Line::new(level, args))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.drops.unreported.fetch_add(1, Relaxed);
                self.drops.total.fetch_add(1, Relaxed);
            }
            Err(TrySendError::Disconnected(Msg::Line(line))) => direct(line),
            Err(TrySendError::Disconnected(Msg::Stop)) => {}
        }
    }

    /// Lines dropped since the start.
    pub fn dropped_total(&self) -> u64 {
        self.drops.total.load(Relaxed)
    }

    /// Lets the writer finish what is queued and waits for it, at most `wait` in all.
    /// `true` when it finished (every queued line written and flushed, the thread joined)
    /// or an earlier call already stopped it; `false` when the wait ran out, leaving the
    /// thread behind.
    pub fn shutdown(&self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let Some(writer) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return true;
        };
        // Blocks only while the channel is full, i.e. while the writer is busy making room.
        if self.tx.send_timeout(Msg::Stop, wait).is_err() {
            // Full for the whole wait (stderr is stuck), or the writer is already gone.
            return writer.thread.is_finished() && writer.thread.join().is_ok();
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match writer.done.recv_timeout(left) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => writer.thread.join().is_ok(),
            // Detached: it is stuck in a write and joining would be the unbounded wait
            // this function promises not to make.
            Err(RecvTimeoutError::Timeout) => false,
        }
    }
}

fn run(rx: &Receiver<Msg>, mut sink: Box<dyn Write + Send>, drops: &Drops, report_every: Duration) {
    let mut buf = String::with_capacity(256);
    let mut last_report = Instant::now();
    loop {
        let stop = match rx.recv_timeout(report_every) {
            Ok(Msg::Line(line)) => {
                emit(&mut *sink, &mut buf, &line);
                false
            }
            Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => true,
            Err(RecvTimeoutError::Timeout) => false,
        };
        if stop {
            // Lines other threads queued behind the stop. At most a channel's worth: a
            // thread that keeps logging must not keep the shutdown waiting.
            for msg in rx.try_iter().take(rx.capacity().unwrap_or(0)) {
                if let Msg::Line(line) = msg {
                    emit(&mut *sink, &mut buf, &line);
                }
            }
            report_drops(&mut *sink, &mut buf, drops);
            let _ = sink.flush();
            return;
        }
        // Caught up: the drops go after the lines that made it, and the buffer goes out
        // while there is nothing to batch it with. Still behind after a while: report
        // anyway, so a sustained flood shows its drops as it happens.
        let idle = rx.is_empty();
        if idle || last_report.elapsed() >= report_every {
            report_drops(&mut *sink, &mut buf, drops);
            last_report = Instant::now();
        }
        if idle {
            let _ = sink.flush();
        }
    }
}

fn report_drops(sink: &mut dyn Write, buf: &mut String, drops: &Drops) {
    let n = drops.unreported.swap(0, Relaxed);
    if n > 0 {
        let line = Line {
            wall_ms: crate::clock::wall_ms(),
            level: Level::Warn,
            text: format!("{n} log lines dropped (channel full)"),
        };
        emit(sink, buf, &line);
    }
}

fn emit(sink: &mut dyn Write, buf: &mut String, line: &Line) {
    buf.clear();
    format_line(buf, line.wall_ms, line.level, &line.text);
    // Nowhere to report a failed write to stderr; the next line tries again.
    let _ = sink.write_all(buf.as_bytes());
}

fn direct(line: Line) {
    let mut buf = String::with_capacity(line.text.len() + 32);
    format_line(&mut buf, line.wall_ms, line.level, &line.text);
    eprint!("{buf}");
}

// ---- formatting ---------------------------------------------------------------------------

/// Appends `2026-11-23T12:34:56.789Z INFO  message\n`, with control characters in the
/// message escaped.
pub fn format_line(out: &mut String, wall_ms: u64, level: Level, message: &str) {
    format_timestamp(out, wall_ms);
    out.push(' ');
    out.push_str(level.tag());
    out.push(' ');
    if message.chars().any(needs_escape) {
        for c in message.chars() {
            match c {
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                c if needs_escape(c) => {
                    let _ = write!(out, "\\u{{{:x}}}", c as u32);
                }
                c => out.push(c),
            }
        }
    } else {
        out.push_str(message);
    }
    out.push('\n');
}

fn needs_escape(c: char) -> bool {
    // A tab keeps a line a line; everything else that moves the cursor or the terminal's
    // state does not belong in a log line.
    c.is_control() && c != '\t'
}

/// Appends `wall_ms` (milliseconds since the Unix epoch) as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_timestamp(out: &mut String, wall_ms: u64) {
    let days = wall_ms / 86_400_000;
    let ms_of_day = wall_ms % 86_400_000;
    // u64 milliseconds reach about 584 million years: the day count fits an i64.
    let (year, month, day) = civil_from_days(days as i64);
    let (secs, ms) = (ms_of_day / 1000, ms_of_day % 1000);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
    );
}

/// The proleptic Gregorian date `(year, month 1..=12, day 1..=31)` of a count of days since
/// 1970-01-01 (negative before it). Howard Hinnant's `civil_from_days`: shift the epoch to
/// 0000-03-01 so the leap day is the last day of a year, then split into 400-year eras
/// (146,097 days each, the period of the calendar), years of the era, and a day of the
/// March-based year whose months follow the 153-days-per-5-months pattern.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365], from March 1st
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Formats into a string of at most [`MAX_MESSAGE`] bytes (cut on a character boundary,
/// marked with `…[truncated]`). Formatting stops at the cap, so a huge argument costs no
/// more than a short one.
fn format_capped(args: fmt::Arguments<'_>) -> String {
    struct Capped {
        s: String,
        truncated: bool,
    }
    impl fmt::Write for Capped {
        fn write_str(&mut self, part: &str) -> fmt::Result {
            let room = MAX_MESSAGE - self.s.len();
            if part.len() <= room {
                self.s.push_str(part);
                return Ok(());
            }
            let mut cut = room;
            while !part.is_char_boundary(cut) {
                cut -= 1;
            }
            self.s.push_str(&part[..cut]);
            self.truncated = true;
            Err(fmt::Error)
        }
    }
    // A literal message needs no formatting machinery (and no guess at the capacity).
    if let Some(s) = args.as_str() {
        if s.len() <= MAX_MESSAGE {
            return s.to_owned();
        }
    }
    let mut capped = Capped {
        s: String::new(),
        truncated: false,
    };
    // An error is either the cap (marked below) or a `Display` impl failing, after which
    // what it wrote so far is still the best account of the event.
    let _ = fmt::write(&mut capped, args);
    if capped.truncated {
        capped.s.push_str("…[truncated]");
    }
    capped.s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::process::Command;
    use std::sync::Condvar;

    // ---- levels ----

    #[test]
    fn parse_level_values() {
        assert_eq!(parse_level(None), (Level::Info, None));
        assert_eq!(parse_level(Some("")), (Level::Info, None));
        assert_eq!(parse_level(Some("error")), (Level::Error, None));
        assert_eq!(parse_level(Some("warn")), (Level::Warn, None));
        assert_eq!(parse_level(Some("info")), (Level::Info, None));
        assert_eq!(parse_level(Some("debug")), (Level::Debug, None));
        assert_eq!(parse_level(Some(" DEBUG\n")), (Level::Debug, None));
        assert_eq!(parse_level(Some("Warn")), (Level::Warn, None));
        for bad in ["verbose", "warning", "trace", "4", "info,debug"] {
            let (level, warning) = parse_level(Some(bad));
            assert_eq!(level, Level::Info, "{bad}");
            let warning = warning.expect(bad);
            assert!(warning.contains(&format!("{bad:?}")), "{warning}");
            assert!(warning.contains("logging at info"), "{warning}");
        }
    }

    #[test]
    fn level_filtering() {
        use Level::*;
        let all = [Error, Warn, Info, Debug];
        let expect =
            |max: Level| -> Vec<Level> { all.iter().copied().filter(|&l| max.allows(l)).collect() };
        assert_eq!(expect(Error), [Error]);
        assert_eq!(expect(Warn), [Error, Warn]);
        assert_eq!(expect(Info), [Error, Warn, Info]);
        assert_eq!(expect(Debug), all);
        for l in all {
            assert_eq!(Level::from_u8(l as u8), l);
            assert_eq!(parse_level(Some(&l.to_string())), (l, None));
            assert_eq!(l.tag().len(), 5);
        }
    }

    // ---- time ----

    /// Day by day from 1600-01-01, the slow obvious way.
    fn naive_dates(from_year: i64, to_year: i64) -> impl Iterator<Item = (i64, u32, u32)> {
        fn leap(y: i64) -> bool {
            (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
        }
        (from_year..to_year).flat_map(|y| {
            (1..=12u32).flat_map(move |m| {
                let len = match m {
                    2 if leap(y) => 29,
                    2 => 28,
                    4 | 6 | 9 | 11 => 30,
                    _ => 31,
                };
                (1..=len).map(move |d| (y, m, d))
            })
        })
    }

    #[test]
    fn civil_from_days_matches_a_day_by_day_walk_from_1600_to_2400() {
        // 1970-01-01 is day 0; 1600-01-01 is 135,140 days before it.
        let mut days = -135_140;
        for expected in naive_dates(1600, 2400) {
            assert_eq!(civil_from_days(days), expected, "day {days}");
            days += 1;
        }
        assert_eq!(civil_from_days(days), (2400, 1, 1));
    }

    #[test]
    fn civil_from_days_known_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(789), (1972, 2, 29)); // first leap day after the epoch
        assert_eq!(civil_from_days(11_016), (2000, 2, 29)); // divisible by 400: leap
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(47_540), (2100, 2, 28)); // divisible by 100: not leap
        assert_eq!(civil_from_days(47_541), (2100, 3, 1));
        assert_eq!(civil_from_days(2_932_896), (9999, 12, 31));
        assert_eq!(civil_from_days(-719_468), (0, 3, 1));
    }

    fn ts(ms: u64) -> String {
        let mut s = String::new();
        format_timestamp(&mut s, ms);
        s
    }

    #[test]
    fn timestamps() {
        // Expected values from `date -u -d @SECONDS +%FT%TZ`.
        assert_eq!(ts(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(ts(1_795_437_296_789), "2026-11-23T12:34:56.789Z");
        assert_eq!(ts(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(ts(951_868_800_000), "2000-03-01T00:00:00.000Z");
        assert_eq!(ts(951_868_799_999), "2000-02-29T23:59:59.999Z");
        assert_eq!(ts(1_709_164_800_001), "2024-02-29T00:00:00.001Z");
        assert_eq!(ts(4_107_542_400_000), "2100-03-01T00:00:00.000Z");
        assert_eq!(ts(2_147_483_648_000), "2038-01-19T03:14:08.000Z");
        assert_eq!(ts(68_169_600_000), "1972-02-29T00:00:00.000Z");
        assert_eq!(ts(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
        assert_eq!(ts(253_402_300_800_000), "10000-01-01T00:00:00.000Z");
    }

    // ---- lines ----

    fn line(level: Level, message: &str) -> String {
        let mut s = String::new();
        format_line(&mut s, 1_795_437_296_789, level, message);
        s
    }

    #[test]
    fn line_format() {
        assert_eq!(
            line(Level::Info, "listening on 127.0.0.1:8080"),
            "2026-11-23T12:34:56.789Z INFO  listening on 127.0.0.1:8080\n"
        );
        assert_eq!(
            line(Level::Error, "x"),
            "2026-11-23T12:34:56.789Z ERROR x\n"
        );
        assert_eq!(line(Level::Warn, "x"), "2026-11-23T12:34:56.789Z WARN  x\n");
        assert_eq!(
            line(Level::Debug, "x"),
            "2026-11-23T12:34:56.789Z DEBUG x\n"
        );
        // The date is fixed width until the year 10000, so the level is always at column 25.
        assert_eq!(&line(Level::Warn, "")[24..30], " WARN ");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            line(Level::Warn, "auth failed\nFAKE INFO  line\r\x1b[31m\ttab ünï\u{85}"),
            "2026-11-23T12:34:56.789Z WARN  auth failed\\nFAKE INFO  line\\r\\u{1b}[31m\ttab ünï\\u{85}\n"
        );
    }

    #[test]
    fn messages_are_capped() {
        assert_eq!(format_capped(format_args!("literal")), "literal");
        assert_eq!(format_capped(format_args!("{}-{}", 1, "two")), "1-two");
        let long = "é".repeat(MAX_MESSAGE); // two bytes a char: the cap falls mid-char or not
        for prefix in ["", "x"] {
            let s = format_capped(format_args!("{prefix}{long}"));
            assert!(s.ends_with("…[truncated]"), "{}", &s[s.len() - 20..]);
            let body = s.strip_suffix("…[truncated]").unwrap();
            assert!(body.len() <= MAX_MESSAGE && body.len() >= MAX_MESSAGE - 1);
            assert!(body.starts_with(prefix));
        }
        let exact = "a".repeat(MAX_MESSAGE);
        assert_eq!(format_capped(format_args!("{exact}")), exact);
        // Formatting stops at the cap: an argument past it is never formatted.
        let formatted = Cell::new(false);
        let s = format_capped(format_args!("{exact}x{}", Probe(&formatted)));
        assert!(!formatted.get());
        assert_eq!(s, format!("{exact}…[truncated]"));
    }

    /// Records whether it was formatted.
    struct Probe<'a>(&'a Cell<bool>);

    impl fmt::Display for Probe<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            self.0.set(true);
            f.write_str("probe")
        }
    }

    // ---- the writer ----

    /// A sink tests can read, and can hold shut: while `held`, a write waits, and
    /// `entered` tells the test the writer is inside one.
    #[derive(Clone, Default)]
    struct Sink(Arc<(Mutex<SinkState>, Condvar)>);

    #[derive(Default)]
    struct SinkState {
        bytes: Vec<u8>,
        held: bool,
        entered: bool,
        flushes: usize,
    }

    impl Sink {
        fn held() -> Sink {
            let sink = Sink::default();
            sink.0 .0.lock().unwrap().held = true;
            sink
        }
        fn release(&self) {
            self.0 .0.lock().unwrap().held = false;
            self.0 .1.notify_all();
        }
        fn wait_entered(&self) {
            let (lock, cv) = &*self.0;
            let guard = lock.lock().unwrap();
            let _unused = cv.wait_while(guard, |s| !s.entered).unwrap();
        }
        fn text(&self) -> String {
            String::from_utf8(self.0 .0.lock().unwrap().bytes.clone()).unwrap()
        }
        fn messages(&self) -> Vec<String> {
            self.text()
                .lines()
                .map(|l| {
                    assert_eq!(l.as_bytes()[23], b'Z', "{l}");
                    l[25..].to_owned()
                })
                .collect()
        }
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let (lock, cv) = &*self.0;
            let mut state = lock.lock().unwrap();
            state.entered = true;
            cv.notify_all();
            let mut state = cv.wait_while(state, |s| s.held).unwrap();
            state.bytes.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            self.0 .0.lock().unwrap().flushes += 1;
            Ok(())
        }
    }

    /// A report interval no test reaches, for tests where only catching up may report.
    const LONG: Duration = Duration::from_secs(600);

    fn logger(capacity: usize, report_every: Duration, sink: &Sink) -> Logger {
        Logger::start(Options {
            capacity,
            report_every,
            sink: Box::new(sink.clone()),
        })
    }

    #[test]
    fn lines_arrive_in_order_and_shutdown_drains() {
        let sink = Sink::default();
        let logger = logger(CAPACITY, REPORT_EVERY, &sink);
        for i in 0..1000 {
            logger.log(Level::Info, format_args!("line {i}"));
        }
        assert!(logger.shutdown(Duration::from_secs(10)));
        let expected: Vec<String> = (0..1000).map(|i| format!("INFO  line {i}")).collect();
        assert_eq!(sink.messages(), expected);
        assert_eq!(logger.dropped_total(), 0);
        assert!(sink.0 .0.lock().unwrap().flushes >= 1);
        // A second shutdown has nothing to do.
        assert!(logger.shutdown(Duration::from_secs(1)));
    }

    #[test]
    fn lines_are_timestamped_by_the_caller() {
        let sink = Sink::default();
        let logger = logger(8, REPORT_EVERY, &sink);
        let before = crate::clock::wall_ms();
        logger.log(Level::Error, format_args!("boom"));
        let after = crate::clock::wall_ms();
        assert!(logger.shutdown(Duration::from_secs(10)));
        let text = sink.text();
        assert!(text.ends_with(" ERROR boom\n"), "{text}");
        let stamp = &text[..24];
        // The stamp is between the two readings (to the millisecond).
        assert!(
            ts(before).as_str() <= stamp && stamp <= ts(after).as_str(),
            "{stamp}"
        );
    }

    #[test]
    fn a_full_channel_drops_and_counts_and_the_writer_reports_it() {
        let sink = Sink::held();
        let logger = logger(2, LONG, &sink);
        logger.log(Level::Info, format_args!("first"));
        // The writer has taken "first" and is stuck writing it: the channel is empty.
        sink.wait_entered();
        for i in 0..10 {
            logger.log(Level::Info, format_args!("queued {i}"));
        }
        // Two fit, eight are dropped; the caller never waited.
        assert_eq!(logger.dropped_total(), 8);
        sink.release();
        assert!(logger.shutdown(Duration::from_secs(10)));
        assert_eq!(
            sink.messages(),
            [
                "INFO  first",
                "INFO  queued 0",
                "INFO  queued 1",
                "WARN  8 log lines dropped (channel full)",
            ]
        );
        assert_eq!(logger.dropped_total(), 8);
    }

    #[test]
    fn drops_are_reported_when_the_writer_catches_up() {
        let sink = Sink::held();
        let logger = logger(1, LONG, &sink);
        logger.log(Level::Info, format_args!("first"));
        sink.wait_entered();
        logger.log(Level::Info, format_args!("second"));
        logger.log(Level::Info, format_args!("dropped"));
        logger.log(Level::Info, format_args!("dropped"));
        sink.release();
        // Reported when the writer catches up, with no further line and no shutdown.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sink.text().contains("2 log lines dropped") {
            assert!(Instant::now() < deadline, "{}", sink.text());
            thread::sleep(Duration::from_millis(5));
        }
        // Drops after the report are counted afresh; the total keeps counting.
        assert!(logger.shutdown(Duration::from_secs(10)));
        assert_eq!(
            sink.messages(),
            [
                "INFO  first",
                "INFO  second",
                "WARN  2 log lines dropped (channel full)"
            ]
        );
        assert_eq!(logger.dropped_total(), 2);
    }

    #[test]
    fn drops_are_reported_while_the_writer_is_still_behind() {
        let sink = Sink::held();
        let logger = logger(1, Duration::from_millis(20), &sink);
        logger.log(Level::Info, format_args!("first"));
        sink.wait_entered();
        logger.log(Level::Info, format_args!("second"));
        logger.log(Level::Info, format_args!("dropped"));
        // Longer than the report interval: once "first" is out the writer reports at once,
        // though "second" is still waiting.
        thread::sleep(Duration::from_millis(50));
        sink.release();
        assert!(logger.shutdown(Duration::from_secs(10)));
        assert_eq!(
            sink.messages(),
            [
                "INFO  first",
                "WARN  1 log lines dropped (channel full)",
                "INFO  second"
            ]
        );
    }

    #[test]
    fn dropping_the_logger_lets_the_writer_finish() {
        let sink = Sink::default();
        let logger = logger(8, LONG, &sink);
        logger.log(Level::Info, format_args!("last words"));
        drop(logger);
        let deadline = Instant::now() + Duration::from_secs(10);
        while sink.text().is_empty() {
            assert!(Instant::now() < deadline);
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(sink.messages(), ["INFO  last words"]);
    }

    #[test]
    fn shutdown_wait_is_bounded_when_the_sink_is_stuck() {
        let sink = Sink::held();
        let logger = logger(1, REPORT_EVERY, &sink);
        logger.log(Level::Info, format_args!("stuck"));
        sink.wait_entered();
        logger.log(Level::Info, format_args!("fills the channel"));
        let started = Instant::now();
        assert!(!logger.shutdown(Duration::from_millis(100)));
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "{took:?}");
        // Logging still never waits.
        logger.log(Level::Info, format_args!("dropped"));
        assert_eq!(logger.dropped_total(), 1);
        sink.release();
    }

    #[test]
    fn shutdown_wait_is_bounded_after_the_stop_was_queued() {
        let sink = Sink::held();
        let logger = logger(4, REPORT_EVERY, &sink);
        logger.log(Level::Info, format_args!("stuck"));
        sink.wait_entered();
        // Room for the stop, but the writer never gets to it.
        assert!(!logger.shutdown(Duration::from_millis(50)));
        sink.release();
    }

    // ---- the process-wide logger, in a child process so nothing else in this test binary
    // ---- sees its state ----

    const CHILD: &str = "COURIER_LOG_TEST_CHILD";

    fn run_child(courier_log: &str) -> (String, String) {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "log::tests::global_logger_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .env("COURIER_LOG", courier_log)
            .output()
            .unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert!(stdout.contains("1 passed"), "child ran no test: {stdout}");
        (stdout, stderr)
    }

    /// Runs only as the child of the tests below.
    #[test]
    fn global_logger_child() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        let before_init = Cell::new(false);
        crate::log_debug!("before init {}", Probe(&before_init));
        assert!(!before_init.get(), "debug is off by default");
        crate::log_info!("before init");

        let level = init_from_env();
        assert_eq!(level, super::level());
        assert!(!init(level), "a second init starts nothing");

        let formatted = Cell::new(false);
        crate::log_error!("error {}", 1);
        crate::log_warn!("warn {}", 2);
        crate::log_info!("info {}", 3);
        crate::log_debug!("debug {}", Probe(&formatted));
        crate::log_at!(Level::Warn, "at {}", "warn");
        log(Level::Info, format_args!("fn info"));
        assert_eq!(formatted.get(), level >= Level::Debug);
        assert!(shutdown());
        crate::log_error!("after shutdown");
        assert_eq!(dropped_total(), 0);
    }

    fn messages(stderr: &str) -> Vec<&str> {
        stderr
            .lines()
            .map(|l| {
                let (stamp, rest) = l.split_at(24);
                assert!(stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T', "{l}");
                &rest[1..]
            })
            .collect()
    }

    #[test]
    fn global_logger_at_warn() {
        let (_, stderr) = run_child("warn");
        assert_eq!(
            messages(&stderr),
            [
                "INFO  before init",
                "ERROR error 1",
                "WARN  warn 2",
                "WARN  at warn",
                "ERROR after shutdown"
            ]
        );
    }

    #[test]
    fn global_logger_at_debug() {
        let (_, stderr) = run_child("debug");
        assert_eq!(
            messages(&stderr),
            [
                "INFO  before init",
                "ERROR error 1",
                "WARN  warn 2",
                "INFO  info 3",
                "DEBUG debug probe",
                "WARN  at warn",
                "INFO  fn info",
                "ERROR after shutdown"
            ]
        );
    }

    #[test]
    fn global_logger_with_an_unknown_level_warns_once_and_logs_at_info() {
        let (_, stderr) = run_child("loud");
        assert_eq!(
            messages(&stderr),
            [
                "INFO  before init",
                "WARN  COURIER_LOG=\"loud\" is not one of error, warn, info, debug; logging at info",
                "ERROR error 1",
                "WARN  warn 2",
                "INFO  info 3",
                "WARN  at warn",
                "INFO  fn info",
                "ERROR after shutdown"
            ]
        );
    }
}
