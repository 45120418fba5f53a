//! Opening connections, pragmas, the schema and its migrations.
//!
//! Migrations are a list indexed by `PRAGMA user_version`: step `i` takes the schema from
//! version `i` to `i + 1`. Steps are only ever appended, never edited or removed, because a
//! database in the field may sit at any version. Each step runs in its own exclusive
//! transaction together with the `user_version` bump (the version lives in the file header,
//! which SQLite writes transactionally), so a crash mid-migration leaves the previous
//! version intact and the next start resumes from there.

use std::fs::File;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Row, TransactionBehavior};

use super::error::{io, sql, StoreError};
use super::{checkpoint, Synchronous};

/// Schema steps, in order. To change the schema, append a step; the writer and readers see
/// the final version only.
///
/// Sizing: an inbox row is three integers in a `WITHOUT ROWID` table, so the row *is* its
/// primary-key entry (no separate rowid tree to maintain), about 10 bytes on disk; a
/// 1,000-member group costs 1,000 of those, and the body is stored once in `messages`.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: users, messages, per-user inbox.
    "CREATE TABLE users(
         uid  INTEGER PRIMARY KEY,
         name TEXT UNIQUE NOT NULL,
         head INTEGER NOT NULL DEFAULT 0
     );
     CREATE TABLE messages(
         mid        INTEGER PRIMARY KEY,
         conv       TEXT NOT NULL,
         sender     INTEGER NOT NULL,
         cid        TEXT NOT NULL,
         kind       TEXT NOT NULL,
         body       TEXT NOT NULL,
         ts         INTEGER NOT NULL,
         sender_seq INTEGER NOT NULL,
         ref        INTEGER,
         UNIQUE(sender, cid)
     );
     CREATE TABLE inbox(
         uid INTEGER NOT NULL,
         seq INTEGER NOT NULL,
         mid INTEGER NOT NULL,
         PRIMARY KEY(uid, seq)
     ) WITHOUT ROWID;",
    // 2: recall, conversations with read cursors, groups.
    //
    // messages.recalled: a recalled message keeps its row, whose mid, conv, sender and cid
    // still answer a resend and keep history's order, but its body is erased.
    //
    // messages_by_conv: a history page, a conversation's last message and its unread count
    // are each a range of it (the mid is the rowid, so the index covers the order). It is
    // the one new cost on the hot send path: one more index entry per message.
    //
    // groups.owner is a uid, NULL once the last member has left (the group has ended). The
    // row stays, so a gid is never handed out twice: gids are rowids without AUTOINCREMENT,
    // and only deleting the newest row could make SQLite reuse one.
    //
    // members.joined is the mid of the event that added the member: `(joined, uid)` is the
    // join order (listing, and who inherits ownership). No `(uid, gid)` index: nothing asks
    // for a user's groups; a user's conversations, groups included, are their convs rows.
    //
    // convs: one row per user per conversation they take part in, with their read cursor.
    // Version 1 stored dm conversations only; every user with an inbox entry of one takes
    // part in it, so the backfill reads the inbox once (a full scan, at this one upgrade).
    // Version 1 had no read state and its clients showed no unread counts: what was
    // delivered before the upgrade starts out read, rather than as a wall of old unread.
    "ALTER TABLE messages ADD COLUMN recalled INTEGER NOT NULL DEFAULT 0;
     CREATE INDEX messages_by_conv ON messages(conv, mid);
     CREATE TABLE groups(
         gid     INTEGER PRIMARY KEY,
         name    TEXT NOT NULL,
         owner   INTEGER,
         created INTEGER NOT NULL
     );
     CREATE TABLE members(
         gid    INTEGER NOT NULL,
         uid    INTEGER NOT NULL,
         joined INTEGER NOT NULL,
         PRIMARY KEY(gid, uid)
     ) WITHOUT ROWID;
     CREATE TABLE convs(
         uid      INTEGER NOT NULL,
         conv     TEXT NOT NULL,
         read_mid INTEGER NOT NULL DEFAULT 0,
         PRIMARY KEY(uid, conv)
     ) WITHOUT ROWID;
     INSERT OR IGNORE INTO convs(uid, conv, read_mid)
         SELECT i.uid, m.conv, max(m.mid) FROM inbox AS i CROSS JOIN messages AS m ON m.mid = i.mid
         GROUP BY i.uid, m.conv;",
    // Who keeps whom out (`Job::Block`), and a user's groups by user: presence and typing
    // flow only between users who share a group or a dm (`Job::Reach`).
    "CREATE TABLE blocks(
         blocker INTEGER NOT NULL,
         blocked INTEGER NOT NULL,
         ts      INTEGER NOT NULL,
         PRIMARY KEY(blocker, blocked)
     ) WITHOUT ROWID;
     CREATE INDEX members_by_uid ON members(uid, gid);",
];

/// How long a statement waits on a lock held by another connection before failing. In one
/// courier process the writer never waits on the readers (WAL); this covers the sqlite3
/// shell, a backup tool, or the WAL recovery a reader may briefly wait on after a crash.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Prepared-statement cache per connection: room for every statement of every job kind.
const STATEMENT_CACHE: usize = 64;

/// Truncate the WAL file back to this size after a checkpoint resets it, so a burst does
/// not leave a huge file behind.
const JOURNAL_SIZE_LIMIT: i64 = 64 << 20;

/// Writer page cache (KiB, SQLite's negative-number convention): the hot part of the inbox
/// and users trees stays in memory across batches.
const WRITER_CACHE_KIB: i64 = 32 << 10;
/// Per-reader page cache (KiB): sync reads recent inbox entries, mostly hot pages.
const READER_CACHE_KIB: i64 = 8 << 10;

/// Name of the lock file beside the database.
pub(crate) const LOCK_FILE: &str = "courier.lock";

/// Takes the data folder's lock, held for as long as the returned file is open.
///
/// The writer keeps every user's inbox head in memory and treats it as the truth, which is
/// only sound while it is the sole writer. SQLite's own locks serialize transactions but
/// cannot tell a second courier that its cached heads are stale, so a second process on the
/// same folder is refused here, at open, instead of corrupting seqs later. `flock` locks
/// belong to the open file description, so the lock also refuses a second open in this
/// process and dies with the process, even on `kill -9`.
pub(crate) fn lock(dir: &Path) -> Result<File, StoreError> {
    use std::os::fd::AsRawFd;
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))
        .map_err(io)?;
    // SAFETY: flock on a descriptor we own, with no pointers involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        return Err(if err.kind() == std::io::ErrorKind::WouldBlock {
            StoreError::Locked
        } else {
            io(err)
        });
    }
    Ok(file)
}

/// The one read-write connection, configured and migrated.
pub(crate) fn open_writer(path: &Path, synchronous: Synchronous) -> Result<Connection, StoreError> {
    identify(path)?;
    let mut conn = Connection::open(path).map_err(sql)?;
    configure_writer(&conn, synchronous).map_err(sql)?;
    migrate(&mut conn)?;
    stamp(&conn);
    Ok(conn)
}

fn configure_writer(conn: &Connection, synchronous: Synchronous) -> rusqlite::Result<()> {
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Pragmas outside any transaction: journal_mode cannot change inside one. WAL is what
    // lets readers keep a snapshot while the writer commits, and turns a commit into one
    // sequential append.
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
            Some(format!("journal_mode=WAL refused (got {mode})")),
        ));
    }
    conn.pragma_update(None, "synchronous", synchronous.pragma())?;
    // Nothing declares a foreign key today; off also keeps a later REFERENCES clause from
    // adding a lookup per inserted inbox row on the hot path. Integrity comes from the
    // writer being the only one who inserts.
    conn.pragma_update(None, "foreign_keys", false)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // A recall erases a body (recall.rs): with this on, SQLite overwrites the freed bytes,
    // overflow pages of a long body included, instead of leaving them in free space. ON
    // rather than FAST because FAST skips pages moved to the freelist, which is where a
    // long body's overflow pages go. The cost falls on deletes and shrinking updates only
    // (recalls, leaves), never on the inserts of the send path. The WAL keeps the old page
    // images until it is checkpointed and overwritten.
    conn.pragma_update(None, "secure_delete", "ON")?;
    conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)?;
    // Checkpoints belong to the checkpointer thread; this is only its backstop.
    conn.pragma_update(
        None,
        "wal_autocheckpoint",
        checkpoint::WRITER_BACKSTOP_PAGES,
    )?;
    Ok(())
}

/// The checkpointer's connection: read-write, but it only ever runs `wal_checkpoint`.
pub(crate) fn open_checkpointer(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Never checkpoint from a commit here either (it makes none, but be explicit).
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    Ok(conn)
}

/// A read-only connection for a reader thread. Opened after the writer, which has put the
/// file in WAL mode (a read-only connection cannot).
pub(crate) fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "cache_size", -READER_CACHE_KIB)?;
    Ok(conn)
}

/// Applies every step past the file's `user_version`. The version is read inside each
/// step's exclusive transaction, so two processes racing here (the lock file normally
/// prevents that) apply each step once.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    loop {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Exclusive)
            .map_err(sql)?;
        let version: i64 = tx
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(sql)?;
        let known = MIGRATIONS.len();
        let step = match usize::try_from(version) {
            Ok(v) if v == known => return Ok(()),
            Ok(v) if v < known => v,
            _ => {
                return Err(StoreError::SchemaTooNew {
                    found: version,
                    known,
                })
            }
        };
        tx.execute_batch(MIGRATIONS[step]).map_err(sql)?;
        tx.pragma_update(None, "user_version", step as i64 + 1)
            .map_err(sql)?;
        tx.commit().map_err(sql)?;
    }
}

/// Reads a column stored as a non-negative INTEGER. Seqs, mids, heads and timestamps are
/// `u64` in Rust and `i64` in SQLite; a negative value can only come from a damaged or
/// hand-edited file and is reported, not wrapped.
pub(crate) fn get_u64(row: &Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    let value: i64 = row.get(idx)?;
    u64::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, value))
}

/// [`get_u64`] for a nullable column.
pub(crate) fn get_opt_u64(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<u64>> {
    let value: Option<i64> = row.get(idx)?;
    value
        .map(|v| u64::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, v)))
        .transpose()
}

// ---- Identity: is this file a courier database? ----

/// `PRAGMA application_id` of a courier database ("cour" in ASCII), in the file header
/// where `file(1)` and the sqlite3 shell show it. Databases made before this marker have
/// 0 there and are recognised by their tables instead (see [`identify`]), and stamped on
/// their next open.
pub(crate) const APPLICATION_ID: i32 = 0x636f_7572;

/// The tables every courier schema since version 1 has.
const COURIER_TABLES: [&str; 3] = ["users", "messages", "inbox"];

/// Refuses a database file courier did not write, before anything writes to it: the
/// writer's first pragma (`journal_mode=WAL`) rewrites the file header, and migrations
/// would add courier's tables to someone else's database. A missing or empty file is a
/// new database. Reads through a read-only connection of its own, which also never
/// checkpoints a WAL into the file when it closes.
pub(crate) fn identify(path: &Path) -> Result<(), StoreError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() > 0 => {}
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
    }
    let foreign = |why: String| StoreError::Foreign {
        path: path.display().to_string(),
        why,
    };
    let read = || -> rusqlite::Result<(i32, i64, i64, i64)> {
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let app: i32 = conn.pragma_query_value(None, "application_id", |r| r.get(0))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let objects: i64 =
            conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
        let ours: i64 = conn.query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name IN (?1, ?2, ?3)",
            COURIER_TABLES,
            |r| r.get(0),
        )?;
        Ok((app, version, objects, ours))
    };
    let (app, version, objects, ours) = match read() {
        Ok(found) => found,
        Err(rusqlite::Error::SqliteFailure(e, message)) => {
            let detail = message.unwrap_or_else(|| e.to_string());
            return Err(match e.code {
                rusqlite::ErrorCode::NotADatabase => {
                    foreign(format!("it is not an SQLite database ({detail})"))
                }
                rusqlite::ErrorCode::DatabaseCorrupt => {
                    foreign(format!("it is damaged ({detail})"))
                }
                _ => sql(rusqlite::Error::SqliteFailure(e, Some(detail))),
            });
        }
        Err(e) => return Err(sql(e)),
    };
    if app == APPLICATION_ID {
        return Ok(());
    }
    if app != 0 {
        return Err(foreign(format!(
            "its application_id is {app:#010x}, another program's (courier's is \
             {APPLICATION_ID:#010x})"
        )));
    }
    if version == 0 && objects == 0 {
        // Created and never migrated: an earlier start that failed half-way.
        return Ok(());
    }
    if version > 0 && ours == COURIER_TABLES.len() as i64 {
        // Written by a courier from before the marker.
        return Ok(());
    }
    Err(foreign(format!(
        "it has user_version {version} and {objects} schema objects, but neither courier's \
         application_id nor courier's tables ({})",
        COURIER_TABLES.join(", ")
    )))
}

/// Writes the marker into a database that lacks it (new, or from before the marker).
/// Best effort: a database from before the marker is still recognised by its tables, so
/// failing here (a full disk at start) must not keep the server from serving reads.
fn stamp(conn: &Connection) {
    let current = conn.pragma_query_value(None, "application_id", |r| r.get::<_, i32>(0));
    if !matches!(current, Ok(APPLICATION_ID)) {
        let _ = conn.pragma_update(None, "application_id", APPLICATION_ID);
    }
}
