//! Reader threads: a pool sharing one job queue, each with its own read-only connection.
//!
//! Under WAL a read transaction sees the database as of its first statement and keeps
//! seeing exactly that while the writer goes on committing, so a page and the head returned
//! beside it always agree: every entry up to that head is committed and visible. And since
//! a completion is sent only after its commit, a page asked for after a `Sent` completion
//! always contains that message.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use rusqlite::{params, Connection, OptionalExtension};

use super::error::{sql, StoreError};
use super::schema::{get_opt_u64, get_u64};
use super::stats::Counters;
use super::views;
use super::{complete, Completion, Entry, Job, Notify, Outcome, Page};

pub(crate) struct Reader {
    pub conn: Connection,
    pub jobs: Receiver<Job>,
    pub done: Sender<Completion>,
    pub notify: Notify,
    pub counters: Arc<Counters>,
}

impl Reader {
    pub(crate) fn run(mut self) {
        // Ends once every sender is gone and the queue is drained.
        while let Ok(job) = self.jobs.recv() {
            let outcome = match &job {
                Job::Page {
                    user,
                    after,
                    limit,
                    max_bytes,
                    ..
                } => page(&mut self.conn, user, *after, *limit, *max_bytes)
                    .map(Outcome::Page)
                    .map_err(sql),
                Job::Convs { user, limit, .. } => {
                    views::convs(&mut self.conn, user, *limit).map(Outcome::Convs)
                }
                Job::History {
                    user,
                    conv,
                    before,
                    limit,
                    max_bytes,
                    ..
                } => views::history(&mut self.conn, user, conv, *before, *limit, *max_bytes)
                    .map(Outcome::History),
                Job::Members { user, gid, .. } => {
                    views::group(&mut self.conn, user, *gid).map(Outcome::Members)
                }
                Job::Blocked { user, .. } => {
                    views::blocked(&mut self.conn, user).map(Outcome::Users)
                }
                Job::Reach { user, audience, .. } => {
                    views::reach(&mut self.conn, user, audience).map(Outcome::Reach)
                }
                _ => Err(StoreError::Internal("write job routed to a reader".into())),
            };
            self.counters.read(outcome.is_ok());
            // Only fails when every receiver is gone: nobody is left to answer.
            let _ = self.done.send(complete(job, outcome));
            (self.notify)();
        }
    }
}

fn page(
    conn: &mut Connection,
    user: &str,
    after: u64,
    limit: u32,
    max_bytes: u64,
) -> rusqlite::Result<Page> {
    // One read transaction for both statements: the snapshot is taken at the first SELECT,
    // so the head and the entries describe the same moment.
    let tx = conn.transaction()?;
    let found: Option<(i64, u64)> = tx
        .prepare_cached("SELECT uid, head FROM users WHERE name = ?1")?
        .query_row([user], |row| Ok((row.get(0)?, get_u64(row, 1)?)))
        .optional()?;
    let Some((uid, head)) = found else {
        // Never sent or received anything: an empty inbox at head 0.
        return Ok(Page {
            entries: Vec::new(),
            head: 0,
        });
    };
    // Seqs are stored as i64; a cursor beyond that has nothing after it.
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let entries = {
        // CROSS JOIN pins the loop order SQLite would most likely pick anyway: a range
        // scan of this user's inbox (its primary key, already in seq order, so no sort),
        // then one rowid lookup per entry in messages and users.
        let mut stmt = tx.prepare_cached(
            "SELECT i.seq, i.mid, m.conv, u.name, m.cid, m.body, m.kind, m.ts, m.ref, m.recalled
             FROM inbox AS i
             CROSS JOIN messages AS m ON m.mid = i.mid
             CROSS JOIN users AS u ON u.uid = m.sender
             WHERE i.uid = ?1 AND i.seq > ?2
             ORDER BY i.seq
             LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![uid, after, i64::from(limit)], |row| {
            Ok(Entry {
                seq: get_u64(row, 0)?,
                mid: get_u64(row, 1)?,
                conv: row.get(2)?,
                from: row.get(3)?,
                cid: row.get(4)?,
                body: row.get(5)?,
                kind: row.get(6)?,
                ts: get_u64(row, 7)?,
                ref_mid: get_opt_u64(row, 8)?,
                recalled: row.get(9)?,
            })
        })?;
        let mut entries = Vec::new();
        let mut bytes = 0u64;
        for row in rows {
            let entry = row?;
            bytes += entry.body.len() as u64;
            entries.push(entry);
            if bytes >= max_bytes {
                break;
            }
        }
        entries
    };
    tx.commit()?;
    Ok(Page { entries, head })
}
