//! Measurement plumbing shared by the modes: a log-linear latency histogram, the live
//! counters each worker thread publishes for the progress line, and output helpers.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Sub-buckets per power of two: 2^7 = 128, so any recorded value is reported within
/// 1/128 (< 0.8 %) of its true value, the same trade HdrHistogram makes with 2 significant
/// digits, in a fixed 58 KiB table with no allocation per sample.
const SUB_BITS: u32 = 7;
const SUB: usize = 1 << SUB_BITS;
/// Enough buckets for any u64: the top value has msb 63, so e = 63 - 7 = 56.
const BUCKETS: usize = (64 - SUB_BITS as usize) * SUB + SUB;

/// Values (nanoseconds here) in log-linear buckets: exact below 256, then 128 linear
/// sub-buckets per power of two.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            max: 0,
        }
    }
}

#[inline]
fn index(v: u64) -> usize {
    // e = how far `v` must be shifted right to leave 8 significant bits (0 below 256).
    let msb = 63 - (v | 1).leading_zeros();
    let e = msb.saturating_sub(SUB_BITS);
    (e as usize) * SUB + (v >> e) as usize
}

/// The largest value that lands in bucket `i`.
fn upper_bound(i: usize) -> u64 {
    if i < 2 * SUB {
        return i as u64;
    }
    let e = (i / SUB - 1) as u32;
    let m = (i - (e as usize) * SUB) as u64;
    (m << e) + ((1u64 << e) - 1)
}

impl Histogram {
    #[inline]
    pub fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The non-empty buckets in ascending order, each as (largest value it holds, never
    /// above the exact maximum; its count): what a CDF is drawn from.
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, &c)| (upper_bound(i).min(self.max), c))
    }

    /// The value at quantile `q` (0..=1): the upper bound of the bucket holding the
    /// ceil(q·n)-th smallest sample, never above the exact maximum. 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper_bound(i).min(self.max);
            }
        }
        self.max
    }
}

/// Counters one worker thread publishes for the progress line. The worker keeps its own
/// plain counters and stores them here once per wake-up (a relaxed store, no contention);
/// the reporting thread only reads. Padded to its own cache lines.
#[repr(align(128))]
#[derive(Default)]
pub struct Live {
    /// Messages received (echoes), warmup included.
    pub messages: AtomicU64,
    /// Sum of their round trips in nanoseconds, for the mean shown each second.
    pub rtt_sum_ns: AtomicU64,
    pub errors: AtomicU64,
    /// Connections open right now.
    pub open: AtomicU64,
    /// Connections lost during the run.
    pub lost: AtomicU64,
}

#[derive(Clone, Copy, Default)]
pub struct LiveSnapshot {
    pub messages: u64,
    pub rtt_sum_ns: u64,
    pub errors: u64,
    pub open: u64,
    pub lost: u64,
}

impl Live {
    pub fn publish(&self, s: LiveSnapshot) {
        self.messages.store(s.messages, Ordering::Relaxed);
        self.rtt_sum_ns.store(s.rtt_sum_ns, Ordering::Relaxed);
        self.errors.store(s.errors, Ordering::Relaxed);
        self.open.store(s.open, Ordering::Relaxed);
        self.lost.store(s.lost, Ordering::Relaxed);
    }

    pub fn sum(all: &[Live]) -> LiveSnapshot {
        let mut s = LiveSnapshot::default();
        for l in all {
            s.messages += l.messages.load(Ordering::Relaxed);
            s.rtt_sum_ns += l.rtt_sum_ns.load(Ordering::Relaxed);
            s.errors += l.errors.load(Ordering::Relaxed);
            s.open += l.open.load(Ordering::Relaxed);
            s.lost += l.lost.load(Ordering::Relaxed);
        }
        s
    }
}

/// The once-a-second progress line on stderr: overwritten in place on a terminal, one
/// plain line per second otherwise (logs, pipes, CI).
pub struct Progress {
    tty: bool,
    dirty: bool,
}

impl Progress {
    pub fn new() -> Progress {
        // SAFETY: isatty only inspects the descriptor number.
        let tty = unsafe { libc::isatty(libc::STDERR_FILENO) } == 1;
        Progress { tty, dirty: false }
    }

    pub fn line(&mut self, text: &str) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            // \r back to column 0, ESC[K clears what a longer previous line left.
            let _ = write!(err, "\r{text}\x1b[K");
            self.dirty = true;
        } else {
            let _ = writeln!(err, "{text}");
        }
        let _ = err.flush();
    }

    /// Ends an overwritten line so what follows starts on a fresh one.
    pub fn finish(&mut self) {
        if self.dirty {
            let _ = writeln!(std::io::stderr());
            self.dirty = false;
        }
    }
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Nanoseconds as microseconds with one decimal.
pub fn us(ns: u64) -> f64 {
    (ns as f64 / 100.0).round() / 10.0
}

/// An integer with thousands separators, for the human table.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_is_monotonic_and_contiguous() {
        let mut last = 0;
        for v in 0..100_000u64 {
            let i = index(v);
            assert!(i == last || i == last + 1, "v={v} i={i} last={last}");
            assert!(upper_bound(i) >= v, "v={v} bound={}", upper_bound(i));
            last = i;
        }
        assert!(index(u64::MAX) < BUCKETS);
        assert_eq!(upper_bound(index(u64::MAX)), u64::MAX);
    }

    #[test]
    fn relative_error_under_one_percent() {
        for v in [300u64, 1_000, 12_345, 999_999, 123_456_789, 1 << 40] {
            let b = upper_bound(index(v));
            assert!(
                b >= v && (b - v) as f64 / v as f64 <= 1.0 / 128.0,
                "v={v} b={b}"
            );
        }
    }

    #[test]
    fn quantiles_of_uniform_samples() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 - 5_000_000.0).abs() / 5_000_000.0 < 0.01, "p50={p50}");
        let p99 = h.quantile(0.99) as f64;
        assert!((p99 - 9_900_000.0).abs() / 9_900_000.0 < 0.01, "p99={p99}");
        assert_eq!(h.quantile(1.0), 10_000_000);
        assert_eq!(h.max(), 10_000_000);
        let mut g = Histogram::default();
        g.record(20_000_000);
        h.merge(&g);
        assert_eq!(h.total, 10_001);
        assert_eq!(h.quantile(1.0), 20_000_000);
        assert_eq!(h.count(), 10_001);
        assert_eq!(h.buckets().map(|(_, c)| c).sum::<u64>(), 10_001);
        assert_eq!(h.buckets().last(), Some((20_000_000, 1)));
        let bounds: Vec<u64> = h.buckets().map(|(b, _)| b).collect();
        assert!(bounds.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn grouping_and_json() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(1234), "1,234");
        assert_eq!(grouped(1_234_567), "1,234,567");
        assert_eq!(json_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
    }
}
