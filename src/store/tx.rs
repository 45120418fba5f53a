//! What every write job shares inside the writer's transaction: how it refuses (before its
//! first write) or fails (SQLite's error, which rolls the batch back), the one way a
//! client's message is inserted, and the timestamp check. Below the writer and the job
//! modules alike, so neither imports the other.

use rusqlite::{params, Connection};

use super::error::StoreError;

/// Why a job did not produce an outcome.
pub(crate) enum Fail {
    /// Refused before writing anything: answer the job, keep the batch.
    Rejected(StoreError),
    /// SQLite failed: the transaction is in an unknown state and must be rolled back.
    Sql(rusqlite::Error),
}

impl Fail {
    pub(crate) fn invalid(why: &'static str) -> Fail {
        Fail::Rejected(StoreError::Invalid(why))
    }

    pub(crate) fn forbidden(why: &'static str) -> Fail {
        Fail::Rejected(StoreError::Forbidden(why))
    }

    pub(crate) fn not_found(what: &'static str) -> Fail {
        Fail::Rejected(StoreError::NotFound(what))
    }
}

/// `ts` as SQLite stores it, refused (before any write) past `i64::MAX`.
pub(crate) fn stored_ts(ts: u64) -> Result<i64, Fail> {
    i64::try_from(ts).map_err(|_| Fail::invalid("ts out of range"))
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Self {
        Fail::Sql(e)
    }
}

/// Inserts a client's message; `None` when its `(sender, cid)` is already stored.
// Each argument is a column; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub(crate) fn insert_message(
    conn: &Connection,
    conv: &str,
    sender_uid: i64,
    cid: &str,
    kind: &str,
    body: &str,
    ts: i64,
    sender_seq: u64,
) -> rusqlite::Result<Option<i64>> {
    // The UNIQUE(sender, cid) index answers "seen before?" as part of the insert itself,
    // so a new message (the common case) costs no lookup of its own.
    let inserted = conn
        .prepare_cached(
            "INSERT INTO messages(conv, sender, cid, kind, body, ts, sender_seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(sender, cid) DO NOTHING",
        )?
        .execute(params![
            conv,
            sender_uid,
            cid,
            kind,
            body,
            ts,
            sender_seq as i64
        ])?;
    Ok((inserted == 1).then(|| conn.last_insert_rowid()))
}
