//! The store's one error type. Small, cloneable data: a batch that fails answers every job
//! in it, and the hub matches on variants to pick the protocol error code. `rusqlite::Error`
//! never leaves this module tree (ARCHITECTURE.md: only `store/` sees it).

use std::fmt;
use std::io;

/// Why a job or [`open`](super::open) failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// SQLite reported a failure. `code` is the extended result code (`SQLITE_FULL`,
    /// `SQLITE_IOERR_FSYNC`, …), useful in logs; `message` is SQLite's text.
    Sqlite { code: i32, message: String },
    /// rusqlite failed on our side of the call: a stored value that does not fit its Rust
    /// type (only a hand-edited or corrupt file gets there) or a broken internal invariant.
    Internal(String),
    /// The disk refused a write for a reason that has nothing to do with the job: the file
    /// system is full (`SQLITE_FULL`), read-only, or failing (`SQLITE_IOERR_*`), or the
    /// database is locked. The transaction was rolled back, nothing of the job was written
    /// and the writer's memory is as it was before; the same job may succeed later, so the
    /// client is told `unavailable` and resends. `code` is SQLite's extended result code.
    Unavailable { code: i32, message: String },
    /// The data directory could not be created, or a store thread could not be started.
    Io {
        kind: io::ErrorKind,
        message: String,
    },
    /// The database was written by a newer courier: its `user_version` is past the last
    /// migration this build knows. Opening it anyway could misread rows, so we refuse.
    SchemaTooNew { found: i64, known: usize },
    /// The database file is not one courier wrote: not SQLite at all (garbage, truncated,
    /// encrypted), or another application's SQLite database. Refused before anything is
    /// written to it (`schema::identify`).
    Foreign { path: String, why: String },
    /// Another process (or another open store in this one) holds the data folder. Two
    /// writers would each believe their in-memory inbox heads and hand out the same seqs.
    Locked,
    /// The job carries a value the store cannot represent; nothing was written for it and
    /// the rest of its batch was unaffected.
    Invalid(&'static str),
    /// The user may not do this (not a member, not the sender, not the owner, the recall
    /// window has passed, the group is full). Nothing was written.
    Forbidden(&'static str),
    /// No such message, group or conversation. Nothing was written.
    NotFound(&'static str),
    /// The user has made too many groups or named too many new users this hour
    /// (`budget.rs`). Nothing was written.
    OverBudget(&'static str),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Sqlite { code, message } => write!(f, "sqlite error {code}: {message}"),
            StoreError::Internal(message) => write!(f, "store internal error: {message}"),
            StoreError::Unavailable { code, message } => {
                write!(f, "store cannot write (sqlite error {code}): {message}")
            }
            StoreError::Foreign { path, why } => write!(
                f,
                "{path} is not a courier database: {why}; courier leaves it untouched \
                 (move it away, or point --data at another folder)"
            ),
            StoreError::Io { message, .. } => write!(f, "store i/o error: {message}"),
            StoreError::SchemaTooNew { found, known } => write!(
                f,
                "database schema version {found} is newer than this build knows ({known}); \
                 upgrade courier or use another data folder"
            ),
            StoreError::Locked => {
                f.write_str("the data folder is in use by another courier process")
            }
            StoreError::Invalid(what) => write!(f, "invalid job: {what}"),
            StoreError::Forbidden(why) => write!(f, "forbidden: {why}"),
            StoreError::NotFound(what) => write!(f, "not found: {what}"),
            StoreError::OverBudget(why) => write!(f, "over budget: {why}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// A private conversion rather than `From`: a `From` impl would be public and put
/// rusqlite in the crate's API.
pub(crate) fn sql(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(err, message) => StoreError::Sqlite {
            code: err.extended_code,
            message: message.unwrap_or_else(|| err.to_string()),
        },
        other => StoreError::Internal(other.to_string()),
    }
}

/// A failed write transaction as the job's answer: [`StoreError::Unavailable`] when the
/// cause lies outside the job (see [`environmental`]), [`sql`] otherwise.
pub(crate) fn write_failure(e: rusqlite::Error) -> StoreError {
    let transient = environmental(&e);
    match sql(e) {
        StoreError::Sqlite { code, message } if transient => {
            StoreError::Unavailable { code, message }
        }
        other => other,
    }
}

/// Whether SQLite failed because of the disk, the file system or another process rather
/// than anything a job carries: retrying the same job later may succeed, and retrying it
/// now, alone, would fail the same way. Primary codes, so every `SQLITE_IOERR_*` counts.
pub(crate) fn environmental(e: &rusqlite::Error) -> bool {
    use rusqlite::ffi;
    let rusqlite::Error::SqliteFailure(err, _) = e else {
        return false;
    };
    matches!(
        err.extended_code & 0xff,
        ffi::SQLITE_FULL
            | ffi::SQLITE_IOERR
            | ffi::SQLITE_READONLY
            | ffi::SQLITE_CANTOPEN
            | ffi::SQLITE_BUSY
            | ffi::SQLITE_LOCKED
            | ffi::SQLITE_NOMEM
            | ffi::SQLITE_PROTOCOL
    )
}

pub(crate) fn io(e: io::Error) -> StoreError {
    StoreError::Io {
        kind: e.kind(),
        message: e.to_string(),
    }
}
