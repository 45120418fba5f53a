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
    /// The data directory could not be created, or a store thread could not be started.
    Io {
        kind: io::ErrorKind,
        message: String,
    },
    /// The database was written by a newer courier: its `user_version` is past the last
    /// migration this build knows. Opening it anyway could misread rows, so we refuse.
    SchemaTooNew { found: i64, known: usize },
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

pub(crate) fn io(e: io::Error) -> StoreError {
    StoreError::Io {
        kind: e.kind(),
        message: e.to_string(),
    }
}
