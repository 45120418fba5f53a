//! Blocks: a user keeps another out. A block stands either way: while A blocks B, neither
//! may open a dm with the other or add the other to a group, and neither sees the other's
//! presence or typing. Being blocked looks like any other refusal (`forbidden`); nothing
//! tells a user who blocks them.

use rusqlite::{params, Connection};

use super::budget::Budgets;
use super::dms::KnownDms;
use super::tx::{stored_ts, Fail};
use super::users::Users;
use super::Outcome;

/// Most users one user may block: the list is answered whole, so it must stay small.
pub(crate) const MAX_BLOCKS: i64 = 1000;

/// Whether a block stands between the users with uids `a` and `b`, either way.
pub(crate) fn between(conn: &Connection, a: i64, b: i64) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "SELECT EXISTS(SELECT 1 FROM blocks WHERE blocker = ?1 AND blocked = ?2)
             OR EXISTS(SELECT 1 FROM blocks WHERE blocker = ?2 AND blocked = ?1)",
    )?
    .query_row(params![a, b], |row| row.get(0))
}

/// `Job::Block`.
// Each argument is a field of the job, or the writer state it touches.
#[allow(clippy::too_many_arguments)]
pub(crate) fn set(
    conn: &Connection,
    users: &mut Users,
    dms: &mut KnownDms,
    budgets: &mut Budgets,
    user: &str,
    peer: &str,
    block: bool,
    ts: u64,
) -> Result<Outcome, Fail> {
    let ts = stored_ts(ts)?;
    if user.is_empty() || peer.is_empty() {
        return Err(Fail::invalid("empty user id"));
    }
    if user == peer {
        return Err(Fail::invalid("a user cannot block themselves"));
    }
    if !block {
        // Nobody blocked a user who has no row; nothing to lift.
        let (Some(u), Some(p)) = (users.find(user), users.find(peer)) else {
            return Ok(Outcome::Done);
        };
        conn.prepare_cached("DELETE FROM blocks WHERE blocker = ?1 AND blocked = ?2")?
            .execute(params![users.uid(u), users.uid(p)])?;
        return Ok(Outcome::Done);
    }
    // A block of a user nobody has met yet still has to hold once they show up, so it
    // makes their row, which counts as inventing a user.
    let invents = u32::from(users.find(peer).is_none());
    if let Some(u) = users.find(user) {
        if let Some(p) = users.find(peer) {
            let standing: bool = conn
                .prepare_cached(
                    "SELECT EXISTS(SELECT 1 FROM blocks WHERE blocker = ?1 AND blocked = ?2)",
                )?
                .query_row(params![users.uid(u), users.uid(p)], |row| row.get(0))?;
            if standing {
                return Ok(Outcome::Done);
            }
        }
        let held: i64 = conn
            .prepare_cached("SELECT count(*) FROM blocks WHERE blocker = ?1")?
            .query_row([users.uid(u)], |row| row.get(0))?;
        if held >= MAX_BLOCKS {
            return Err(Fail::forbidden("the block list is full (1000 users)"));
        }
    }
    budgets
        .charge(user, ts as u64, 0, invents)
        .map_err(Fail::Rejected)?;

    // Checked; writes from here on.
    let u = users.get_or_create(conn, user)?;
    let p = users.get_or_create(conn, peer)?;
    conn.prepare_cached("INSERT OR IGNORE INTO blocks(blocker, blocked, ts) VALUES (?1, ?2, ?3)")?
        .execute(params![users.uid(u), users.uid(p), ts])?;
    // The pair's sends skip the block check while it is remembered: not any more.
    dms.forget(u, p);
    Ok(Outcome::Done)
}
