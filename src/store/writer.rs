//! The writer thread: the one connection that writes, group commit, seq assignment.
//!
//! A batch is every job waiting when the writer comes round, up to `max_batch`: block for
//! the first, drain the rest with `try_recv`, run them all in one `BEGIN IMMEDIATE`
//! transaction, write each touched user's new head once, `COMMIT`, and only then send the
//! completions, in job order, and call `notify` once. Under load the queue refills while a
//! batch commits, so batches grow with the load and the per-commit cost (the WAL append,
//! the fsync under `synchronous=FULL`) is shared by more messages exactly when it matters;
//! at low load a batch is one job and nothing waits for a batch to fill.
//!
//! Failures. A job whose input cannot be stored (say a `ts` past `i64::MAX`), or that the
//! user may not do (not a member, not the sender), is refused before it writes anything and
//! answered with [`StoreError::Invalid`], `Forbidden` or `NotFound`; its batch goes on.
//! Any SQLite error mid-batch rolls the whole transaction back, restores the in-memory
//! heads (and forgets the new users, cached groups and known conversation rows of the
//! transaction, see [`Memory`]), and then runs the jobs of that batch again one
//! transaction each, so one poison job fails alone while the others still commit, in the
//! same order. Retrying is safe because nothing of the failed transaction survives, and
//! cheap because the happy path never pays for it.
//!
//! An error that is not about any job (the disk is full, read-only or failing, the file is
//! locked: [`environmental`]) is not retried job by job, since each job would only meet the
//! same disk again: every job of the batch is answered [`StoreError::Unavailable`] at once,
//! which the client hears as `unavailable` and answers by resending its cid later. The
//! writer itself keeps going: the next batch tries the disk again, so writes resume by
//! themselves once space returns, with the heads (restored by the rollback) continuing
//! exactly where the last commit left them. Such a run of refusals is logged when it starts
//! and when it ends ([`Outage`]), not once per job.

use std::fs::File;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use rusqlite::{params, Connection};

use super::blocks;
use super::budget::{Budget, Budgets};
use super::checkpoint;
use super::conv;
use super::cursor;
use super::dms::KnownDms;
use super::error::{environmental, write_failure, StoreError};
use super::events;
use super::groups::{self, Groups};
use super::recall;
use super::stats::Counters;
use super::tx::{insert_message, stored_ts, Fail};
use super::users::Users;
use super::{complete, dm_conv, Completion, Job, Notify, Outcome};

pub(crate) struct Writer {
    pub conn: Connection,
    pub users: Users,
    pub jobs: Receiver<Job>,
    pub done: Sender<Completion>,
    pub notify: Notify,
    pub counters: Arc<Counters>,
    pub max_batch: usize,
    pub budget: Budget,
    /// Tells the checkpointer there is something new in the WAL; capacity 1, so nudges
    /// coalesce and sending never blocks.
    pub checkpoint: Sender<()>,
    /// Raised by the checkpointer: run the last step of a checkpoint between two batches.
    pub finish_checkpoint: Arc<AtomicBool>,
    /// Held, never read: the data-folder lock lives exactly as long as the writer, so it
    /// is released only after the last commit.
    pub _lock: File,
    /// Tests only: one message per batch lets a test queue jobs and then release them as one
    /// batch. Always `None` in the server.
    pub gate: Option<Receiver<()>>,
}

/// What the writer remembers besides [`Users`], each a cache of rows it wrote itself, so
/// that losing any of it costs only a query. All of it lives on the writer thread: it is
/// made in [`Writer::run`] rather than passed in at open.
#[derive(Default)]
pub(crate) struct Memory {
    pub groups: Groups,
    pub dms: KnownDms,
    pub budgets: Budgets,
}

impl Memory {
    fn commit(&mut self) {
        self.groups.commit();
        self.dms.commit();
    }

    fn rollback(&mut self) {
        self.groups.rollback();
        self.dms.rollback();
    }
}

/// A run of batches refused with [`StoreError::Unavailable`], from the first refusal to
/// the next commit. Logged at both ends only: a full disk under load would otherwise cost a
/// log line per message, written to a log that may sit on the same full disk.
#[derive(Default)]
pub(crate) struct Outage {
    since: Option<Instant>,
    refused: u64,
}

impl Outage {
    fn refused(&mut self, error: &StoreError, jobs: usize) {
        if !matches!(error, StoreError::Unavailable { .. }) {
            return;
        }
        if self.since.is_none() {
            crate::log_error!(
                "store: {error}; writes are answered `unavailable` until the disk takes them \
                 again (retried at every new write)"
            );
            self.since = Some(Instant::now());
        }
        self.refused += jobs as u64;
    }

    fn over(&mut self) {
        if let Some(since) = self.since.take() {
            crate::log_warn!(
                "store: writes succeed again after {:.1} s; {} refused meanwhile",
                since.elapsed().as_secs_f64(),
                self.refused
            );
            self.refused = 0;
        }
    }
}

impl Writer {
    pub(crate) fn run(mut self) {
        let mut memory = Memory {
            budgets: Budgets::new(self.budget),
            ..Memory::default()
        };
        let mut batch: Vec<Job> = Vec::new();
        let mut outcomes: Vec<Result<Outcome, StoreError>> = Vec::new();
        let mut outage = Outage::default();
        // `recv` fails only once every sender is gone and the queue is empty: the store is
        // shutting down and every accepted job has been answered.
        while let Ok(first) = self.jobs.recv() {
            if let Some(gate) = &self.gate {
                if gate.recv().is_err() {
                    self.gate = None;
                }
            }
            batch.push(first);
            while batch.len() < self.max_batch {
                match self.jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.run_batch(&mut memory, &batch, &mut outcomes, &mut outage);
            // Before the completions: whoever hears `unavailable` and asks `/healthz` sees why.
            self.counters.writes_failing(outage.since.is_some());
            for (job, outcome) in batch.drain(..).zip(outcomes.drain(..)) {
                // Only fails when every receiver is gone; the commit stands either way.
                let _ = self.done.send(complete(job, outcome));
            }
            (self.notify)();
            checkpoint::finish(&self.conn, &self.finish_checkpoint, &self.counters);
        }
    }

    /// Fills `out` with one outcome per job, all committed (or failed) when it returns.
    fn run_batch(
        &mut self,
        memory: &mut Memory,
        batch: &[Job],
        out: &mut Vec<Result<Outcome, StoreError>>,
        outage: &mut Outage,
    ) {
        let started = Instant::now();
        match self.transaction(memory, batch, out) {
            Ok(()) => {
                outage.over();
                self.committed(memory, batch.len(), &out[..], started);
            }
            Err(e) => {
                self.abort(memory);
                if batch.len() == 1 || environmental(&e) {
                    let error = write_failure(e);
                    outage.refused(&error, batch.len());
                    out.extend(batch.iter().map(|_| Err(error.clone())));
                    self.counters.failed(batch.len() as u64);
                    return;
                }
                for job in batch {
                    let started = Instant::now();
                    let base = out.len();
                    match self.transaction(memory, std::slice::from_ref(job), out) {
                        Ok(()) => {
                            outage.over();
                            self.committed(memory, 1, &out[base..], started);
                        }
                        Err(e) => {
                            self.abort(memory);
                            let error = write_failure(e);
                            outage.refused(&error, 1);
                            out.push(Err(error));
                            self.counters.failed(1);
                        }
                    }
                }
            }
        }
    }

    /// Runs `jobs` in one transaction and commits. On `Err`, `out` is as it was on entry
    /// and the transaction may still be open: the caller calls [`abort`](Self::abort).
    fn transaction(
        &mut self,
        memory: &mut Memory,
        jobs: &[Job],
        out: &mut Vec<Result<Outcome, StoreError>>,
    ) -> rusqlite::Result<()> {
        let base = out.len();
        let result = (|| {
            // IMMEDIATE takes the write lock up front, so a batch never fails half-way on
            // a lock upgrade.
            self.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
            for job in jobs {
                match apply(&self.conn, &mut self.users, memory, job) {
                    Ok(outcome) => out.push(Ok(outcome)),
                    Err(Fail::Rejected(e)) => out.push(Err(e)),
                    Err(Fail::Sql(e)) => return Err(e),
                }
            }
            self.users.flush(&self.conn)?;
            self.conn.prepare_cached("COMMIT")?.execute([])?;
            Ok(())
        })();
        if result.is_err() {
            out.truncate(base);
        }
        result
    }

    fn committed(
        &mut self,
        memory: &mut Memory,
        jobs: usize,
        outcomes: &[Result<Outcome, StoreError>],
        started: Instant,
    ) {
        self.users.commit();
        memory.commit();
        if self.users.shrink() {
            // Both hold user indexes that are gone now.
            memory.groups.rollback();
            memory.dms = KnownDms::default();
        }
        // Capacity 1: a nudge already waiting covers this commit too.
        let _ = self.checkpoint.try_send(());
        let ok = outcomes.iter().filter(|o| o.is_ok()).count() as u64;
        let failed = outcomes.len() as u64 - ok;
        self.counters.committed(jobs, ok, failed, started.elapsed());
    }

    /// Rolls the open transaction back, if SQLite has not already, and forgets what it had
    /// put in memory: heads, new users, group state, known conversation rows.
    fn abort(&mut self, memory: &mut Memory) {
        if !self.conn.is_autocommit() {
            // A failing ROLLBACK leaves nothing better to do: SQLite rolls back on its own
            // when it cannot continue a transaction, and the next BEGIN reports the rest.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        self.users.rollback();
        memory.rollback();
        self.counters.rolled_back();
    }
}

/// Brings into memory the users `job` names, so that the job's checks (does this user
/// exist, is this one a member) are lookups. Reads only.
fn preload(conn: &Connection, users: &mut Users, job: &Job) -> rusqlite::Result<()> {
    let mut load = |name: &str| users.load(conn, name).map(drop);
    match job {
        Job::Send { sender, to, .. } => {
            load(sender)?;
            load(to)
        }
        Job::Block { user, peer, .. } => {
            load(user)?;
            load(peer)
        }
        Job::GroupSend { sender: user, .. }
        | Job::Recall { user, .. }
        | Job::GroupLeave { user, .. } => load(user),
        Job::MarkRead { user, conv, .. } => {
            load(user)?;
            match conv::ConvId::parse(conv) {
                Some(conv::ConvId::Dm(a, b)) => {
                    load(a)?;
                    load(b)
                }
                _ => Ok(()),
            }
        }
        Job::GroupCreate {
            owner: user,
            members,
            ..
        }
        | Job::GroupAdd { user, members, .. } => {
            load(user)?;
            members.iter().try_for_each(|m| load(m))
        }
        Job::Page { .. }
        | Job::Convs { .. }
        | Job::History { .. }
        | Job::Members { .. }
        | Job::Blocked { .. }
        | Job::Reach { .. } => Ok(()),
    }
}

/// One job inside the open transaction.
///
/// Every job checks everything it can before its first write and refuses with
/// [`Fail::Rejected`], which needs no rollback; a job must not return `Rejected` after it
/// has written anything, since the rest of its batch would commit that write.
fn apply(
    conn: &Connection,
    users: &mut Users,
    memory: &mut Memory,
    job: &Job,
) -> Result<Outcome, Fail> {
    preload(conn, users, job)?;
    match job {
        Job::Send {
            sender,
            cid,
            to,
            body,
            kind,
            ts,
            ..
        } => send(conn, users, memory, sender, cid, to, body, kind, *ts),
        Job::GroupSend {
            sender,
            cid,
            gid,
            body,
            kind,
            ts,
            ..
        } => groups::send(
            conn,
            users,
            &mut memory.groups,
            groups::Message {
                sender,
                cid,
                gid: *gid,
                body,
                kind,
                ts: *ts,
            },
        ),
        Job::Recall {
            user,
            mid,
            now,
            window_ms,
            ..
        } => recall::recall(
            conn,
            users,
            &mut memory.groups,
            user,
            *mid,
            *now,
            *window_ms,
        ),
        Job::MarkRead {
            user, conv, mid, ..
        } => cursor::mark_read(conn, users, &mut memory.groups, user, conv, *mid),
        Job::GroupCreate {
            owner,
            name,
            members,
            ts,
            max_members,
            ..
        } => groups::create(
            conn,
            users,
            &mut memory.groups,
            &mut memory.budgets,
            owner,
            name,
            members,
            *ts,
            *max_members,
        ),
        Job::GroupAdd {
            user,
            gid,
            members,
            ts,
            max_members,
            ..
        } => groups::add(
            conn,
            users,
            &mut memory.groups,
            &mut memory.budgets,
            user,
            *gid,
            members,
            *ts,
            *max_members,
        ),
        Job::GroupLeave { user, gid, ts, .. } => {
            groups::leave(conn, users, &mut memory.groups, user, *gid, *ts)
        }
        Job::Block {
            user,
            peer,
            block,
            ts,
            ..
        } => blocks::set(
            conn,
            users,
            &mut memory.dms,
            &mut memory.budgets,
            user,
            peer,
            *block,
            *ts,
        ),
        Job::Page { .. }
        | Job::Convs { .. }
        | Job::History { .. }
        | Job::Members { .. }
        | Job::Blocked { .. }
        | Job::Reach { .. } => Err(Fail::Rejected(StoreError::Internal(
            "read job routed to the writer".into(),
        ))),
    }
}

// Each argument is a field of `Job::Send`; bundling them in a struct would only rename them.
#[allow(clippy::too_many_arguments)]
fn send(
    conn: &Connection,
    users: &mut Users,
    memory: &mut Memory,
    sender: &str,
    cid: &str,
    to: &str,
    body: &str,
    kind: &str,
    ts: u64,
) -> Result<Outcome, Fail> {
    // Validate before the first write, so a refusal needs no rollback.
    let ts = stored_ts(ts)?;
    if sender.is_empty() || to.is_empty() {
        return Err(Fail::invalid("empty user id"));
    }
    if let (Some(s), Some(r)) = (users.find(sender), users.find(to)) {
        if s != r && !memory.dms.known(s, r) && blocks::between(conn, users.uid(s), users.uid(r))? {
            // A resend of what went through before the block still gets its `sent`.
            return match events::by_cid(conn, users.uid(s), cid)? {
                Some(original) => Ok(resent(original)),
                None => Err(Fail::forbidden("cannot reach this user")),
            };
        }
    }
    let invents = u32::from(to != sender && users.find(to).is_none());
    memory
        .budgets
        .charge(sender, ts as u64, 0, invents)
        .map_err(Fail::Rejected)?;
    let s = users.get_or_create(conn, sender)?;
    let sender_seq = users.head(s) + 1;
    let conv = dm_conv(sender, to);
    let Some(mid) = insert_message(conn, &conv, users.uid(s), cid, kind, body, ts, sender_seq)?
    else {
        return events::duplicate(conn, users.uid(s), cid).map(resent);
    };
    let mut inbox = conn.prepare_cached("INSERT INTO inbox(uid, seq, mid) VALUES (?1, ?2, ?3)")?;
    users.bump(s);
    inbox.execute(params![users.uid(s), sender_seq as i64, mid])?;
    let (r, recipient_seq) = if to == sender {
        // A note to self: the sender's entry is the delivery.
        (s, None)
    } else {
        let r = users.get_or_create(conn, to)?;
        let seq = users.bump(r);
        inbox.execute(params![users.uid(r), seq as i64, mid])?;
        (r, Some(seq))
    };
    // Both sides list the conversation from their first message on; the writer remembers
    // pairs it has seen, so a running conversation costs no statement here.
    memory.dms.ensure(conn, users, s, r, &conv)?;
    Ok(Outcome::Sent {
        mid: mid as u64,
        conv,
        sender_seq,
        recipient_seq,
    })
}

/// The answer to a resent dm: the original, whatever the resend says.
fn resent(original: events::Stored) -> Outcome {
    Outcome::Duplicate {
        mid: original.mid,
        conv: original.conv,
        ts: original.ts,
        sender_seq: original.sender_seq,
        kind: original.kind,
        body: original.body,
    }
}
