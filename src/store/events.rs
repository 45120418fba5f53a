//! Messages with more than one recipient, and messages the server writes itself (recall
//! notices, group events): storing one, fanning it out to inboxes, and the cids the server
//! makes up for its own messages.
//!
//! # Server-made cids
//! Every message needs a `(sender, cid)` unique per sender, and a server-made message is
//! stored under the user whose act it records (the recaller, the group's owner, the
//! leaver). Its cid is `recall:<mid>` or `group:<gid>:<mid>`: readable, and unique among
//! server-made cids. But a client's cid is any 1 to 64 bytes, so a user's own client may
//! already have used exactly that string. Only that user can: the key is per sender, so
//! nobody can block another user's recall or group change. Rather than fail (or mistake
//! the client's message for the server's, which would make a recall answer with a text
//! message), the server then stores its message under [`reserved_cid`], the same cid
//! padded past 64 bytes, which no client can send. Lookups of a server-made message
//! (a second recall of the same message) try both.

use rusqlite::{params, Connection, OptionalExtension};

use super::error::StoreError;
use super::schema::{get_opt_u64, get_u64};
use super::tx::Fail;
use super::users::Users;
use super::Sent;

/// The longest cid a client may send (PROTOCOL.md: 1 to 64 bytes). The hub enforces it; the
/// store relies on it only to keep [`reserved_cid`]s out of every client's reach.
const CLIENT_CID_MAX: usize = 64;

/// `cid` made longer than any client cid, so that nobody can have used it. The bases are
/// `recall:<digits>` and `group:<digits>:<digits>`, none ending in `~`, so padding keeps
/// distinct bases distinct.
pub(super) fn reserved_cid(base: &str) -> String {
    let mut cid = String::with_capacity(CLIENT_CID_MAX + 1);
    cid.push_str(base);
    cid.push('~');
    while cid.len() <= CLIENT_CID_MAX {
        cid.push('~');
    }
    cid
}

/// A stored message found by its `(sender, cid)`.
pub(super) struct Stored {
    pub mid: u64,
    pub conv: String,
    pub ts: u64,
    pub sender_seq: u64,
    pub kind: String,
    pub body: String,
    pub ref_mid: Option<u64>,
}

/// The message `sender` stored under `cid`, if any: what a resend is answered with.
pub(super) fn by_cid(
    conn: &Connection,
    sender_uid: i64,
    cid: &str,
) -> rusqlite::Result<Option<Stored>> {
    conn.prepare_cached(
        "SELECT mid, conv, ts, sender_seq, kind, body, ref FROM messages
         WHERE sender = ?1 AND cid = ?2",
    )?
    .query_row(params![sender_uid, cid], |row| {
        Ok(Stored {
            mid: get_u64(row, 0)?,
            conv: row.get(1)?,
            ts: get_u64(row, 2)?,
            sender_seq: get_u64(row, 3)?,
            kind: row.get(4)?,
            body: row.get(5)?,
            ref_mid: get_opt_u64(row, 6)?,
        })
    })
    .optional()
}

/// The mid the next insert will get: SQLite gives a rowid table `max(rowid) + 1` (there is
/// no AUTOINCREMENT), and the writer is the only one inserting. A group event needs it up
/// front because its cid and its members' `joined` carry it. `max(mid)` is one seek to
/// the end of the table.
pub(super) fn next_mid(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("SELECT coalesce(max(mid), 0) + 1 FROM messages")?
        .query_row([], |row| row.get(0))
}

/// A message the server writes on a user's behalf.
pub(super) struct Notice<'a> {
    /// `None` lets SQLite pick the mid.
    pub mid: Option<i64>,
    pub conv: String,
    pub sender: u32,
    /// Tried as is, then as its [`reserved_cid`].
    pub cid: String,
    pub kind: &'a str,
    pub body: String,
    pub ts: i64,
    pub ref_mid: Option<i64>,
}

/// Stores `notice` and gives every recipient an inbox entry: the sender first, then
/// `others` in order. Must run after the job's checks: it writes.
pub(super) fn store_notice(
    conn: &Connection,
    users: &mut Users,
    notice: Notice<'_>,
    others: impl IntoIterator<Item = u32>,
) -> Result<Sent, Fail> {
    let Notice {
        mid,
        conv,
        sender,
        cid,
        kind,
        body,
        ts,
        ref_mid,
    } = notice;
    let sender_seq = users.head(sender) + 1;
    let mut insert = conn.prepare_cached(
        "INSERT INTO messages(mid, conv, sender, cid, kind, body, ts, sender_seq, ref)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT(sender, cid) DO NOTHING",
    )?;
    let mut try_insert = |cid: &str| {
        insert.execute(params![
            mid,
            conv,
            users.uid(sender),
            cid,
            kind,
            body,
            ts,
            sender_seq as i64,
            ref_mid
        ])
    };
    let cid = if try_insert(&cid)? == 1 {
        cid
    } else {
        let reserved = reserved_cid(&cid);
        if try_insert(&reserved)? == 0 {
            // Only a cid longer than the hub allows can get here. Something was written
            // already, so this must roll back rather than be refused.
            return Err(Fail::Sql(abort("a server-made cid is taken")));
        }
        reserved
    };
    let mid = conn.last_insert_rowid();
    let deliveries = deliver(conn, users, mid, sender, others)?;
    debug_assert_eq!(deliveries[0].1, sender_seq);
    Ok(Sent {
        mid: mid as u64,
        conv,
        // Checked non-negative by the caller, which took it from a u64.
        ts: ts as u64,
        sender_seq,
        duplicate: false,
        deliveries,
        from: users.name(sender).to_owned(),
        cid,
        body,
        kind: kind.to_owned(),
    })
}

/// Appends message `mid` to the inbox of `sender`, then of each of `others` (who must not
/// include the sender), and returns the `(user, seq)` deliveries in that order.
pub(super) fn deliver(
    conn: &Connection,
    users: &mut Users,
    mid: i64,
    sender: u32,
    others: impl IntoIterator<Item = u32>,
) -> rusqlite::Result<Vec<(String, u64)>> {
    let mut inbox = conn.prepare_cached("INSERT INTO inbox(uid, seq, mid) VALUES (?1, ?2, ?3)")?;
    let others = others.into_iter();
    let mut deliveries = Vec::with_capacity(1 + others.size_hint().0);
    for i in std::iter::once(sender).chain(others) {
        let seq = users.bump(i);
        inbox.execute(params![users.uid(i), seq as i64, mid])?;
        deliveries.push((users.name(i).to_owned(), seq));
    }
    Ok(deliveries)
}

/// An error that rolls the batch back: for a broken invariant found after a job has
/// written, when [`Fail::Rejected`] would let those writes commit.
pub(super) fn abort(why: &str) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_INTERNAL),
        Some(why.to_owned()),
    )
}

/// The original of a resent cid: every field of the answer is the original's, whatever
/// the resend says.
pub(crate) fn duplicate(conn: &Connection, sender_uid: i64, cid: &str) -> Result<Stored, Fail> {
    by_cid(conn, sender_uid, cid)?
        .ok_or_else(|| Fail::Rejected(StoreError::Internal("conflicting message not found".into())))
}
