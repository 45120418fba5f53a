//! Counters the store threads bump and [`Store::stats`](super::Store::stats) reads. Plain
//! relaxed atomics: each figure is independent and read for monitoring, so no ordering
//! between them is promised (a snapshot may show a batch counted before its jobs).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Number of power-of-two buckets: bucket 31 catches everything from 2^31 up (35 minutes of
/// microseconds, two billion jobs), far past anything a healthy store shows.
pub const BUCKETS: usize = 32;

/// A power-of-two histogram: bucket `i` counts values in `[2^i, 2^(i+1))`, except bucket 0,
/// which also holds 0, and the last bucket, which holds everything above. With the exact
/// sum of the values (saturating), so a mean needs no guess from bucket tops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    pub buckets: [u64; BUCKETS],
    pub sum: u64,
}

impl Histogram {
    pub fn record(&mut self, value: u64) {
        self.buckets[Histogram::bucket(value)] += 1;
        self.sum = self.sum.saturating_add(value);
    }

    /// The bucket a value falls in.
    pub fn bucket(value: u64) -> usize {
        if value == 0 {
            0
        } else {
            (value.ilog2() as usize).min(BUCKETS - 1)
        }
    }

    /// Total number of values recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// An upper bound for the `q`-quantile (`0.0..=1.0`): the largest value of the bucket
    /// the quantile falls in. 0 when empty. Bucket resolution is a factor of two, which is
    /// what a monitoring line needs ("p99 under 2 ms"), not a benchmark figure.
    pub fn quantile(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        // The rank of the quantile, 1-based, so q = 0 means the smallest value and q = 1
        // the largest.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bucket_max(i);
            }
        }
        bucket_max(BUCKETS - 1)
    }
}

fn bucket_max(i: usize) -> u64 {
    if i == BUCKETS - 1 {
        u64::MAX
    } else {
        (2u64 << i) - 1
    }
}

impl fmt::Display for Histogram {
    /// Non-empty buckets as `low-high:count`, space separated (`1:12 2-3:40 4-7:3`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            let low = if i == 0 { 0 } else { 1u64 << i };
            let high = bucket_max(i);
            match (i, high) {
                (0, _) => write!(f, "0-1:{n}")?,
                (_, u64::MAX) => write!(f, "{low}+:{n}")?,
                _ => write!(f, "{low}-{high}:{n}")?,
            }
        }
        if first {
            f.write_str("-")?;
        }
        Ok(())
    }
}

/// A snapshot of the store's counters and queues.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Write transactions committed (a batch retried job by job counts once per job).
    pub batches: u64,
    /// Write jobs committed and answered with success (duplicates included).
    pub jobs: u64,
    /// Jobs answered with an error, write or read.
    pub failed: u64,
    /// Write transactions rolled back.
    pub rollbacks: u64,
    /// Read jobs served successfully.
    pub reads: u64,
    /// Checkpoints run (see `checkpoint.rs`), by the checkpointer or the writer.
    pub checkpoints: u64,
    /// Background checkpoints that failed (the pages stay in the WAL for the next one).
    pub checkpoint_failures: u64,
    /// WAL size in pages at the last checkpoint: what the last interval of commits wrote,
    /// or more if checkpoints fall behind.
    pub wal_pages: u64,
    /// Microseconds the writer spent finishing a checkpoint between two batches (the part
    /// of checkpointing that delays commits).
    pub checkpoint_finish_us: Histogram,
    /// Jobs per committed write transaction.
    pub batch_sizes: Histogram,
    /// Microseconds per committed write transaction, `BEGIN` to `COMMIT` returned: the
    /// statements, the WAL write and the fsync under `synchronous=FULL` (plus a checkpoint
    /// in the rare commit where the background checkpointer has fallen far behind).
    pub commit_us: Histogram,
    /// The last write transaction failed for a cause outside its jobs (a full disk, an
    /// I/O error): writes are answered `unavailable` until one commits again.
    pub writes_failing: bool,
    /// Jobs waiting for the writer.
    pub writer_queue: usize,
    /// Jobs waiting for a reader.
    pub reader_queue: usize,
    /// Completions the reactor has not taken yet.
    pub completion_queue: usize,
}

#[derive(Default)]
pub(crate) struct Counters {
    batches: AtomicU64,
    jobs: AtomicU64,
    failed: AtomicU64,
    rollbacks: AtomicU64,
    reads: AtomicU64,
    checkpoints: AtomicU64,
    checkpoint_failures: AtomicU64,
    wal_pages: AtomicU64,
    batch_sizes: AtomicHistogram,
    commit_us: AtomicHistogram,
    checkpoint_finish_us: AtomicHistogram,
    writes_failing: AtomicBool,
}

impl Counters {
    pub(crate) fn writes_failing(&self, failing: bool) {
        self.writes_failing.store(failing, Relaxed);
    }

    pub(crate) fn committed(&self, jobs: usize, ok: u64, failed: u64, took: Duration) {
        self.batches.fetch_add(1, Relaxed);
        self.jobs.fetch_add(ok, Relaxed);
        self.failed.fetch_add(failed, Relaxed);
        self.batch_sizes.record(jobs as u64);
        self.commit_us
            .record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }

    pub(crate) fn rolled_back(&self) {
        self.rollbacks.fetch_add(1, Relaxed);
    }

    pub(crate) fn failed(&self, n: u64) {
        self.failed.fetch_add(n, Relaxed);
    }

    pub(crate) fn read(&self, ok: bool) {
        if ok {
            self.reads.fetch_add(1, Relaxed);
        } else {
            self.failed.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn checkpointed(&self, wal_pages: u64) {
        self.checkpoints.fetch_add(1, Relaxed);
        self.wal_pages.store(wal_pages, Relaxed);
    }

    pub(crate) fn finished_checkpoint(&self, took: Duration) {
        self.checkpoint_finish_us
            .record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }

    pub(crate) fn checkpoint_failed(&self) {
        self.checkpoint_failures.fetch_add(1, Relaxed);
    }

    /// The counters; the caller fills in the queue depths it can see.
    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            batches: self.batches.load(Relaxed),
            jobs: self.jobs.load(Relaxed),
            failed: self.failed.load(Relaxed),
            rollbacks: self.rollbacks.load(Relaxed),
            reads: self.reads.load(Relaxed),
            checkpoints: self.checkpoints.load(Relaxed),
            checkpoint_failures: self.checkpoint_failures.load(Relaxed),
            wal_pages: self.wal_pages.load(Relaxed),
            writes_failing: self.writes_failing.load(Relaxed),
            batch_sizes: self.batch_sizes.snapshot(),
            commit_us: self.commit_us.snapshot(),
            checkpoint_finish_us: self.checkpoint_finish_us.snapshot(),
            ..Stats::default()
        }
    }
}

struct AtomicHistogram {
    buckets: [AtomicU64; BUCKETS],
    sum: AtomicU64,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        AtomicHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
        }
    }
}

impl AtomicHistogram {
    fn record(&self, value: u64) {
        self.buckets[Histogram::bucket(value)].fetch_add(1, Relaxed);
        // Saturating rather than wrapping: a duration that saturated to u64::MAX must not
        // turn the sum small. One thread records each histogram, so the loop runs once.
        let _ = self
            .sum
            .fetch_update(Relaxed, Relaxed, |sum| Some(sum.saturating_add(value)));
    }

    fn snapshot(&self) -> Histogram {
        Histogram {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Relaxed)),
            sum: self.sum.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sum_is_exact_and_saturates() {
        let h = AtomicHistogram::default();
        for v in [0, 1, 5, 1000] {
            h.record(v);
        }
        assert_eq!(h.snapshot().sum, 1006);
        assert_eq!(h.snapshot().count(), 4);
        h.record(u64::MAX);
        let snap = h.snapshot();
        assert_eq!(
            snap.sum,
            u64::MAX,
            "a saturated value must not wrap the sum"
        );
        assert_eq!(snap.count(), 5);

        let mut plain = Histogram::default();
        plain.record(u64::MAX);
        plain.record(1);
        assert_eq!(plain.sum, u64::MAX);
        assert_eq!(plain.buckets[BUCKETS - 1], 1);
        assert_eq!(plain.buckets[0], 1);
    }
}
