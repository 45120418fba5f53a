//! The server's health as seen from outside, for `courier-bench soak`: its resident memory,
//! open files, WAL and database size, read from `/proc/PID` and the data folder every few
//! seconds, and how long `/healthz` takes to answer. Then the verdict: whether any of them
//! kept growing, comparing the last third of the load with the middle third.
//!
//! The first third is left out of the comparison: it is where the server's memory
//! legitimately grows (SQLite's page caches, the allocator's arenas, the connection slab
//! reaching its working size). What still grows between the middle and the last third at
//! a steady load is what would grow forever. The thirds are compared by their medians, so
//! a spike (an abuser's reply held for a while, then freed) is not taken for growth;
//! spikes have a bound of their own above the last third's median.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// SQLite's WAL and database beside it, in the data folder (src/store: `DB_FILE`).
const DB_FILE: &str = "courier.db";
const WAL_FILE: &str = "courier.db-wal";
/// A `/healthz` answer slower than this counts as the server not answering.
pub const HEALTHZ_TIMEOUT: Duration = Duration::from_secs(5);
const MIB: u64 = 1 << 20;

/// One look at the server.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    /// Seconds since the load started.
    pub t: f64,
    pub rss: u64,
    pub fds: u64,
    /// Bytes; `None` when there is no file (no data folder given, or no WAL yet).
    pub wal: Option<u64>,
    pub db: Option<u64>,
    /// Milliseconds until `/healthz` answered 200; `None` when it did not within
    /// [`HEALTHZ_TIMEOUT`] (or answered something else).
    pub healthz_ms: Option<f64>,
}

/// Where to look.
pub struct Probe {
    pid: u32,
    data: Option<PathBuf>,
    addr: SocketAddr,
}

/// Why a sample could not be taken.
#[derive(Debug, PartialEq, Eq)]
pub enum Gone {
    /// `/proc/PID` is gone: the server exited.
    Exited,
}

impl Probe {
    pub fn new(pid: u32, data: Option<PathBuf>, addr: SocketAddr) -> Probe {
        Probe { pid, data, addr }
    }

    pub fn sample(&self, t: f64) -> Result<Sample, Gone> {
        let proc_dir = PathBuf::from(format!("/proc/{}", self.pid));
        let status = std::fs::read_to_string(proc_dir.join("status")).map_err(|_| Gone::Exited)?;
        // A zombie keeps /proc/PID but has no memory left: it is as good as gone.
        if status_field(&status, "State:").is_some_and(|s| s.starts_with('Z')) {
            return Err(Gone::Exited);
        }
        let rss = status_field(&status, "VmRSS:")
            .and_then(parse_kib)
            .ok_or(Gone::Exited)?;
        let fds = std::fs::read_dir(proc_dir.join("fd"))
            .map_err(|_| Gone::Exited)?
            .count() as u64;
        let size = |name: &str| -> Option<u64> {
            let dir = self.data.as_deref()?;
            std::fs::metadata(dir.join(name)).ok().map(|m| m.len())
        };
        Ok(Sample {
            t,
            rss,
            fds,
            wal: size(WAL_FILE),
            db: size(DB_FILE),
            healthz_ms: healthz(self.addr),
        })
    }
}

fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
}

/// `"43320 kB"` → bytes.
fn parse_kib(v: &str) -> Option<u64> {
    let kib: u64 = v.strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

/// Milliseconds for one `GET /healthz` on a fresh connection, `None` when it failed or
/// took longer than [`HEALTHZ_TIMEOUT`] in all.
pub fn healthz(addr: SocketAddr) -> Option<f64> {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, HEALTHZ_TIMEOUT).ok()?;
    let left = |start: Instant| HEALTHZ_TIMEOUT.checked_sub(start.elapsed());
    s.set_write_timeout(left(start)).ok()?;
    s.write_all(
        format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 512];
    // Only the status line is needed; the body follows on the same read or the next.
    while !head.windows(2).any(|w| w == b"\r\n") {
        s.set_read_timeout(Some(left(start)?.max(Duration::from_millis(1))))
            .ok()?;
        let n = s.read(&mut buf).ok()?;
        if n == 0 || head.len() > 4096 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let ms = start.elapsed().as_secs_f64() * 1e3;
    (head.starts_with(b"HTTP/1.1 200") && ms <= HEALTHZ_TIMEOUT.as_secs_f64() * 1e3).then_some(ms)
}

/// How much growth between the middle and the last third is tolerated.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// RSS may grow by this fraction of the middle third's median, or by `rss_slack`
    /// bytes, whichever is larger.
    pub rss_growth: f64,
    pub rss_slack: u64,
    /// After the first third, RSS may rise this far above the last third's median.
    pub rss_spike: u64,
    /// `/healthz` answers slower than this (ms) fail the run.
    pub healthz_max_ms: f64,
    /// Open files may grow by this many.
    pub fd_slack: u64,
    /// The WAL may never be larger than this after the first third...
    pub wal_max: u64,
    /// ...nor grow by more than this between the middle and the last third.
    pub wal_growth: u64,
}

/// A figure's start, end and peak, its peak after the first third, and its medians and
/// peaks in the middle and the last third.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Figure {
    pub start: u64,
    pub end: u64,
    pub peak: u64,
    pub late_peak: u64,
    pub middle: u64,
    pub last: u64,
    pub middle_peak: u64,
    pub last_peak: u64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Verdict {
    /// Enough samples in the middle and last thirds to compare.
    pub judged: bool,
    pub samples: usize,
    pub rss: Figure,
    pub fds: Figure,
    pub wal: Figure,
    pub db: Figure,
    /// Of the probes during the load: how many `/healthz` did not answer in time, and
    /// the slowest answer (ms).
    pub healthz_failed: u64,
    pub healthz_max_ms: f64,
    /// The slowest answer after the first third.
    pub healthz_late_max_ms: f64,
    pub failures: Vec<String>,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

fn figure(load: &[Sample], a: f64, b: f64, value: impl Fn(&Sample) -> u64) -> Figure {
    let values_in = |from: f64, to: f64| -> Vec<u64> {
        let mut v: Vec<u64> = load
            .iter()
            .filter(|s| s.t >= from && s.t < to)
            .map(&value)
            .collect();
        v.sort_unstable();
        v
    };
    // The lower middle: a third with two samples is judged by the smaller.
    let median = |v: &[u64]| v.get(v.len().saturating_sub(1) / 2).copied().unwrap_or(0);
    let (middle, last) = (values_in(a, b), values_in(b, f64::INFINITY));
    Figure {
        start: load.first().map_or(0, &value),
        end: load.last().map_or(0, &value),
        peak: load.iter().map(&value).max().unwrap_or(0),
        late_peak: values_in(a, f64::INFINITY).last().copied().unwrap_or(0),
        middle: median(&middle),
        last: median(&last),
        middle_peak: middle.last().copied().unwrap_or(0),
        last_peak: last.last().copied().unwrap_or(0),
    }
}

/// Judges the samples taken during a load of `load_secs` seconds (samples after it are
/// ignored). A third with fewer than two samples makes the run too short to judge: then
/// only the `/healthz` probes count.
pub fn judge(samples: &[Sample], load_secs: f64, limits: &Limits) -> Verdict {
    let load: Vec<Sample> = samples
        .iter()
        .copied()
        .filter(|s| s.t <= load_secs + 1e-9)
        .collect();
    let (a, b) = (load_secs / 3.0, 2.0 * load_secs / 3.0);
    let in_third = |from: f64, to: f64| load.iter().filter(|s| s.t >= from && s.t < to).count();
    let judged = in_third(a, b) >= 2 && in_third(b, f64::INFINITY) >= 2;
    let mut v = Verdict {
        judged,
        samples: load.len(),
        rss: figure(&load, a, b, |s| s.rss),
        fds: figure(&load, a, b, |s| s.fds),
        wal: figure(&load, a, b, |s| s.wal.unwrap_or(0)),
        db: figure(&load, a, b, |s| s.db.unwrap_or(0)),
        ..Verdict::default()
    };
    // A slow answer counts after the first third, like the growth: the start is 200
    // sign-ins and the hogs' seeding at once, which a debug build takes a while to parse.
    let mut slow = 0;
    for s in &load {
        match s.healthz_ms {
            Some(ms) => {
                v.healthz_max_ms = v.healthz_max_ms.max(ms);
                if s.t >= a {
                    v.healthz_late_max_ms = v.healthz_late_max_ms.max(ms);
                    slow += u64::from(ms > limits.healthz_max_ms);
                }
            }
            None => v.healthz_failed += 1,
        }
    }
    if v.healthz_failed > 0 {
        v.failures.push(format!(
            "/healthz did not answer 200 within {} s {} time(s) during the load",
            HEALTHZ_TIMEOUT.as_secs(),
            v.healthz_failed
        ));
    }
    if slow > 0 {
        v.failures.push(format!(
            "/healthz took over {:.0} ms {slow} time(s) after the first third (slowest {:.0} \
             ms): the reactor stalled",
            limits.healthz_max_ms, v.healthz_late_max_ms
        ));
    }
    if !judged {
        return v;
    }
    let rss_allowed = ((v.rss.middle as f64 * limits.rss_growth) as u64).max(limits.rss_slack);
    if v.rss.last > v.rss.middle + rss_allowed {
        v.failures.push(format!(
            "RSS kept growing: median {:.1} MiB in the last third against {:.1} MiB in the \
             middle third (+{:.1} MiB; allowed +{:.1} MiB)",
            mib(v.rss.last),
            mib(v.rss.middle),
            mib(v.rss.last - v.rss.middle),
            mib(rss_allowed)
        ));
    }
    if v.rss.late_peak > v.rss.last + limits.rss_spike {
        v.failures.push(format!(
            "RSS spiked to {:.1} MiB after the first third, {:.1} MiB above the last third's \
             median (allowed +{:.1} MiB): something held memory it should not have",
            mib(v.rss.late_peak),
            mib(v.rss.late_peak - v.rss.last),
            mib(limits.rss_spike)
        ));
    }
    if v.fds.last > v.fds.middle + limits.fd_slack {
        v.failures.push(format!(
            "open files kept growing: median {} in the last third against {} in the middle \
             third (allowed +{})",
            v.fds.last, v.fds.middle, limits.fd_slack
        ));
    }
    let wal_after_first = load
        .iter()
        .filter(|s| s.t >= a)
        .filter_map(|s| s.wal)
        .max()
        .unwrap_or(0);
    if wal_after_first > limits.wal_max {
        v.failures.push(format!(
            "the WAL reached {:.1} MiB after the first third (bound {:.1} MiB): checkpoints are \
             not keeping it in check",
            mib(wal_after_first),
            mib(limits.wal_max)
        ));
    }
    if v.wal.last_peak > v.wal.middle_peak + limits.wal_growth {
        v.failures.push(format!(
            "the WAL kept growing: {:.1} MiB in the last third against {:.1} MiB in the middle \
             third (allowed +{:.1} MiB)",
            mib(v.wal.last_peak),
            mib(v.wal.middle_peak),
            mib(limits.wal_growth)
        ));
    }
    v
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

/// Writes the samples as tab-separated lines with a header, for charts and reports.
pub fn write_tsv(path: &Path, samples: &[Sample]) -> std::io::Result<()> {
    let mut out = String::from("t_s\trss_bytes\tfds\twal_bytes\tdb_bytes\thealthz_ms\n");
    for s in samples {
        let opt = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
        out.push_str(&format!(
            "{:.1}\t{}\t{}\t{}\t{}\t{}\n",
            s.t,
            s.rss,
            s.fds,
            opt(s.wal),
            opt(s.db),
            s.healthz_ms.map_or("-".to_owned(), |ms| format!("{ms:.2}"))
        ));
    }
    std::fs::write(path, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        rss_growth: 0.20,
        rss_slack: 16 * MIB,
        rss_spike: 32 * MIB,
        healthz_max_ms: 500.0,
        fd_slack: 64,
        wal_max: 64 * MIB,
        wal_growth: 16 * MIB,
    };

    /// Samples every 2 s over 60 s with `f(t)` giving (rss MiB, fds, wal MiB).
    fn run(f: impl Fn(f64) -> (u64, u64, u64)) -> Vec<Sample> {
        (0..=30)
            .map(|i| {
                let t = f64::from(i) * 2.0;
                let (rss, fds, wal) = f(t);
                Sample {
                    t,
                    rss: rss * MIB,
                    fds,
                    wal: Some(wal * MIB),
                    db: Some(0),
                    healthz_ms: Some(1.0),
                }
            })
            .collect()
    }

    #[test]
    fn a_server_that_settles_passes() {
        // Fast growth in the first third (caches filling), flat afterwards.
        let v = judge(
            &run(|t| (40 + (t.min(20.0) * 2.0) as u64, 230, 4)),
            60.0,
            &LIMITS,
        );
        assert!(v.judged);
        assert!(v.passed(), "{:?}", v.failures);
        assert_eq!(v.rss.start, 40 * MIB);
        assert_eq!(v.rss.end, 80 * MIB);
    }

    #[test]
    fn steady_growth_fails() {
        // 1 MiB/s all along: 20 MiB between the thirds' peaks, over the 16 MiB slack.
        let v = judge(&run(|t| (40 + t as u64, 230, 4)), 60.0, &LIMITS);
        assert_eq!(v.failures.len(), 1, "{:?}", v.failures);
        assert!(v.failures[0].contains("RSS kept growing"));
        // The slack scales with the server: 20 % of a 400 MiB server is 80 MiB.
        let v = judge(&run(|t| (400 + t as u64, 230, 4)), 60.0, &LIMITS);
        assert!(v.passed(), "{:?}", v.failures);
    }

    #[test]
    fn spikes_are_not_growth_but_have_a_bound() {
        // One sample in each third 24 MiB up: the medians do not move.
        let spiky = |t: f64| (50 + if t as u64 % 20 == 10 { 24 } else { 0 }, 230, 4);
        let v = judge(&run(spiky), 60.0, &LIMITS);
        assert!(v.passed(), "{:?}", v.failures);
        assert_eq!(v.rss.late_peak, 74 * MIB);
        // A 500 MiB spike in the last third fails, though the medians stay put.
        let v = judge(
            &run(|t| (50 + if t == 50.0 { 500 } else { 0 }, 230, 4)),
            60.0,
            &LIMITS,
        );
        assert_eq!(v.failures.len(), 1, "{:?}", v.failures);
        assert!(v.failures[0].contains("spiked"));
    }

    #[test]
    fn a_slow_healthz_fails() {
        let mut s = run(|_| (50, 230, 4));
        // At the start (t = 2 s) a slow answer is tolerated; at t = 40 s it is not.
        s[1].healthz_ms = Some(900.0);
        assert!(judge(&s, 60.0, &LIMITS).passed());
        s[20].healthz_ms = Some(800.0);
        let v = judge(&s, 60.0, &LIMITS);
        assert_eq!(v.failures.len(), 1, "{:?}", v.failures);
        assert!(v.failures[0].contains("stalled"));
        assert_eq!(v.healthz_max_ms, 900.0);
        assert_eq!(v.healthz_late_max_ms, 800.0);
    }

    #[test]
    fn leaked_files_and_a_runaway_wal_fail() {
        let v = judge(&run(|t| (50, 200 + (t * 5.0) as u64, 4)), 60.0, &LIMITS);
        assert!(v.failures.iter().any(|f| f.contains("open files")));
        let v = judge(&run(|t| (50, 200, (t * 2.0) as u64)), 60.0, &LIMITS);
        assert!(v.failures.iter().any(|f| f.contains("WAL reached")));
        assert!(v.failures.iter().any(|f| f.contains("WAL kept growing")));
        // A big WAL in the first third only (a burst, then checkpoints) is fine.
        let v = judge(
            &run(|t| (50, 200, if t < 15.0 { 90 } else { 8 })),
            60.0,
            &LIMITS,
        );
        assert!(v.passed(), "{:?}", v.failures);
    }

    #[test]
    fn short_runs_are_not_judged_but_healthz_counts() {
        let mut s = run(|t| (40 + (t * 10.0) as u64, 230, 4));
        s.truncate(3);
        s[1].healthz_ms = None;
        let v = judge(&s, 4.0, &LIMITS);
        assert!(!v.judged);
        assert_eq!(v.healthz_failed, 1);
        assert_eq!(v.failures.len(), 1);
    }

    #[test]
    fn samples_after_the_load_are_ignored() {
        let mut s = run(|_| (50, 230, 4));
        s.push(Sample {
            t: 90.0,
            rss: 900 * MIB,
            fds: 9000,
            wal: Some(900 * MIB),
            db: None,
            healthz_ms: None,
        });
        let v = judge(&s, 60.0, &LIMITS);
        assert!(v.passed(), "{:?}", v.failures);
        assert_eq!(v.samples, 31);
    }

    #[test]
    fn proc_status_fields() {
        let status = "Name:\tcourier\nState:\tS (sleeping)\nVmRSS:\t   43320 kB\n";
        assert_eq!(
            status_field(status, "VmRSS:").and_then(parse_kib),
            Some(43320 * 1024)
        );
        assert_eq!(status_field(status, "State:"), Some("S (sleeping)"));
        assert_eq!(parse_kib("12 MB"), None);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let s = Probe::new(std::process::id(), None, addr)
            .sample(1.0)
            .unwrap();
        assert!(s.rss > 0 && s.fds > 0);
        assert_eq!(s.wal, None);
        assert_eq!(
            Probe::new(u32::MAX - 1, None, addr).sample(0.0),
            Err(Gone::Exited)
        );
    }
}
