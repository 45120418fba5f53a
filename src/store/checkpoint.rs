//! The checkpointer: copies committed pages from the WAL back into the database file on its
//! own thread, so the writer's commits never pay for it.
//!
//! SQLite's default is an automatic checkpoint inside the `COMMIT` that takes the WAL past
//! 1,000 pages: that commit then also writes those pages to the database and fsyncs it,
//! tens of milliseconds during which the whole batch (and every `sent` in it) waits. Here
//! the writer runs with a high automatic threshold, kept only as a backstop, and after each
//! commit nudges this thread, which runs a PASSIVE checkpoint at most every
//! [`INTERVAL`]. PASSIVE never waits on the writer or the readers: it copies what it can
//! and leaves the rest for the next round. A checkpoint fsyncs the WAL first, so under
//! `synchronous=NORMAL` it also bounds what power loss can take to about one interval of
//! commits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use rusqlite::Connection;

use super::stats::Counters;

/// Longest a burst of commits waits for its checkpoint. Rarer checkpoints write a page that
/// many commits touched (a busy user's inbox leaf, the users rows) once instead of many
/// times, and fsync less; 250 ms keeps the WAL at a few MB at full load.
pub(crate) const INTERVAL: Duration = Duration::from_millis(250);

/// The writer's own automatic checkpoint, in pages (64 MiB at 4 KiB): reached only when
/// this thread cannot keep up.
pub(crate) const WRITER_BACKSTOP_PAGES: i64 = 16384;

pub(crate) struct Checkpointer {
    pub conn: Connection,
    /// One `()` per commit, coalesced by a capacity of 1; disconnected when the writer ends.
    pub nudges: Receiver<()>,
    pub counters: Arc<Counters>,
}

impl Checkpointer {
    pub(crate) fn run(self) {
        // Wait for a commit, checkpoint, then let commits gather for an interval.
        while self.nudges.recv().is_ok() {
            self.checkpoint();
            let deadline = Instant::now() + INTERVAL;
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

    fn checkpoint(&self) {
        let result = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
            });
        // A failed checkpoint loses nothing (the pages stay in the WAL); the next round or
        // the writer's backstop retries. Count it, do not stop.
        match result {
            Ok((wal_frames, _copied)) => self.counters.checkpointed(wal_frames.max(0) as u64),
            Err(_) => self.counters.checkpoint_failed(),
        }
    }
}
