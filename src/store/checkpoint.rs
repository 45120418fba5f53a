//! Checkpoints: copying committed pages from the WAL back into the database file, mostly on
//! a thread of their own so that commits do not wait for it.
//!
//! SQLite's default is an automatic checkpoint inside the `COMMIT` that takes the WAL past
//! 1,000 pages: that commit then also fsyncs the WAL, copies every page and fsyncs the
//! database, tens of milliseconds during which the batch (and every `sent` in it) waits.
//! Moving the copy to another connection is not enough on its own, though: SQLite reuses
//! the WAL from the start only when a write transaction begins while *every* frame has been
//! copied back, and under steady writes a concurrent checkpoint never quite catches up, so
//! the WAL grows until some commit pays for a huge checkpoint anyway (measured: a 64 MiB
//! WAL and a 60 ms commit every quarter second at 20,000 sends/s).
//!
//! So a checkpoint is a hand-off in two steps:
//! 1. The checkpointer thread runs PASSIVE checkpoints (they never wait on the writer or
//!    the readers) back to back until one has little left to copy: it has caught up,
//!    except for what the writer committed during that last round. Then it fsyncs the
//!    database file, which SQLite leaves for the round that completes the WAL.
//! 2. It raises a flag; the writer, between two batches, runs one more PASSIVE checkpoint
//!    itself. That copies only the small remainder, and since no commit can slip in
//!    meanwhile it leaves the WAL fully copied, so the next `BEGIN` starts the WAL over.
//!    Its cost is about three fsyncs of little data (WAL, database, and the new WAL
//!    header on that `BEGIN`): 2 to 5 ms on the 2-core test VM, where SQLite's own
//!    checkpoint stalled a commit for 60 ms.
//!
//! Cycles come as often as it takes to keep the WAL near [`TARGET_FRAMES`], and at most
//! once a second under a trickle of commits. The writer keeps SQLite's automatic
//! checkpoint too, at a high threshold, as a backstop should this thread fall behind. Every
//! checkpoint fsyncs the WAL first, so under `synchronous=NORMAL` it also bounds what a
//! power loss can take to about a second of commits.

use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use rusqlite::Connection;

use super::stats::Counters;

/// WAL size a cycle aims at, in frames (16 MiB at 4 KiB pages). Each cycle costs the writer
/// one short pause (its step 2, a few fsyncs), so cycles should not be too frequent; a
/// smaller WAL keeps each copy short and the WAL file small. At 20,000 sends/s with small
/// batches (each send dirties a few random B-tree pages: two inbox tails, a cid index leaf,
/// the users rows) that is a cycle every ~60 ms.
const TARGET_FRAMES: u64 = 4096;

/// Bounds of the pause between cycles, which adapts to keep cycles near [`TARGET_FRAMES`].
/// The upper bound caps the checkpoint work at a trickle of commits to one cycle a second,
/// and bounds what a power loss can take under `synchronous=NORMAL`.
const MIN_INTERVAL: Duration = Duration::from_millis(10);
const MAX_INTERVAL: Duration = Duration::from_secs(1);
const START_INTERVAL: Duration = Duration::from_millis(100);

/// A PASSIVE round that copied at most this many frames has caught up with the writer:
/// the remainder left for the writer is about what it commits during such a round.
const CAUGHT_UP_FRAMES: u64 = 256;

/// Rounds before handing off anyway, when the writer outruns the copy.
const MAX_ROUNDS: usize = 8;

/// The writer's own automatic checkpoint, in pages (64 MiB at 4 KiB): reached only when
/// the hand-off cannot keep up.
pub(crate) const WRITER_BACKSTOP_PAGES: i64 = 16384;

pub(crate) struct Checkpointer {
    pub conn: Connection,
    /// One `()` per commit, coalesced by a capacity of 1; disconnected when the writer ends.
    pub nudges: Receiver<()>,
    /// Raised for the writer: finish the checkpoint between two batches.
    pub finish: Arc<AtomicBool>,
    /// The database file, opened outside SQLite only to fsync it. Must stay open until
    /// every connection is closed: closing any descriptor of a file drops all of the
    /// process's POSIX locks on it, SQLite's included. The [`Store`](super::Store) holds
    /// the last reference and drops it after joining the threads.
    pub db_file: Arc<File>,
    pub counters: Arc<Counters>,
}

impl Checkpointer {
    pub(crate) fn run(self) {
        let mut interval = START_INTERVAL;
        // Wait for a commit, checkpoint, then let commits gather for an interval.
        while self.nudges.recv().is_ok() {
            let wal = self.catch_up();
            // Aim at TARGET_FRAMES per cycle whatever the load: a bigger WAL means commits
            // came faster than the interval assumed.
            interval = if wal > TARGET_FRAMES {
                (interval / 2).max(MIN_INTERVAL)
            } else if wal < TARGET_FRAMES / 4 {
                (interval * 2).min(MAX_INTERVAL)
            } else {
                interval
            };
            let deadline = Instant::now() + interval;
            loop {
                match self.nudges.recv_deadline(deadline) {
                    Ok(()) => continue,
                    Err(RecvTimeoutError::Timeout) => break,
                    // The writer is gone; closing the last connection checkpoints the rest.
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            // Commits during the pause left a nudge behind, so the outer `recv` returns at
            // once; with none it sleeps until the next commit.
        }
    }

    /// Step 1 of the hand-off; returns the WAL size, in frames, the cycle started from.
    fn catch_up(&self) -> u64 {
        let mut first: Option<Progress> = None;
        let mut before: Option<Progress> = None;
        for _ in 0..MAX_ROUNDS {
            let Some(now) = passive(&self.conn, &self.counters) else {
                // Failed: the frames stay in the WAL for the next cycle or the backstop.
                break;
            };
            let copied = match before {
                // Same WAL generation: the round copied the difference.
                Some(b) if now.wal >= b.wal => now.copied.saturating_sub(b.copied),
                _ => now.copied,
            };
            first.get_or_insert(now);
            before = Some(now);
            if copied <= CAUGHT_UP_FRAMES {
                break;
            }
        }
        let wal = first.map_or(0, |p| p.wal);
        if wal > 0 {
            // A round that leaves frames behind does not fsync the database (SQLite syncs it
            // only when the WAL is fully copied), so the writer's last step would have to
            // write out every page copied here. Flushing them now leaves it only its own.
            // A failure costs nothing but that: the writer's checkpoint syncs anyway.
            let _ = self.db_file.sync_data();
            self.finish.store(true, Relaxed);
        }
        wal
    }
}

/// What a checkpoint reported: WAL size and frames copied back so far, both in frames.
#[derive(Clone, Copy)]
pub(super) struct Progress {
    pub(super) wal: u64,
    pub(super) copied: u64,
}

/// One PASSIVE checkpoint; `None` when it failed (counted, never fatal: nothing is lost,
/// the pages stay in the WAL). A full disk fails it when the database file must grow to
/// take the pages; the WAL is left as it was and the next cycle, after the next commit,
/// tries again, so the thread neither dies nor retries in a loop.
pub(super) fn passive(conn: &Connection, counters: &Counters) -> Option<Progress> {
    let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok(Progress {
            wal: row.get::<_, i64>(1)?.max(0) as u64,
            copied: row.get::<_, i64>(2)?.max(0) as u64,
        })
    });
    match result {
        Ok(progress) => {
            counters.checkpointed(progress.wal);
            Some(progress)
        }
        Err(_) => {
            counters.checkpoint_failed();
            None
        }
    }
}

/// The writer's half of the hand-off: call between batches, never inside a transaction.
pub(crate) fn finish(conn: &Connection, flag: &AtomicBool, counters: &Counters) {
    if flag.swap(false, Relaxed) {
        let started = Instant::now();
        passive(conn, counters);
        counters.finished_checkpoint(started.elapsed());
    }
}
