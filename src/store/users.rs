//! The users the writer has in hand: uid, inbox head and name, loaded on first use and
//! kept exact across commits and rollbacks, so that a seq is a lookup and an increment.

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};

use super::schema::get_u64;

/// The uid and inbox head of the users the writer has touched lately, authoritative
/// because the writer is the only writer (the folder lock enforces it). Seq assignment is
/// a lookup and an increment. A user not in memory is read from the `users` table on first
/// use ([`load`](Self::load)), and the whole set is dropped at a commit once it holds more
/// than [`MAX_CACHED_USERS`]: memory follows the users in use, not every user ever named.
///
/// Heads are written to `users.head` once per touched user at the end of a batch instead of
/// once per entry: a batch where one user receives 500 messages writes that row once, and
/// the table is exact at every commit, which is what makes dropping the set safe.
/// Each user carries the head of the last commit beside the working one, so a rollback
/// restores exactly the users the batch touched, without reloading anything.
pub(crate) struct Users {
    by_name: HashMap<Arc<str>, u32>,
    users: Vec<User>,
    /// Indexes of the users whose head moved in the open transaction, each once.
    touched: Vec<u32>,
    /// Users before this index were in memory at the last commit; those from it on were
    /// added (created or loaded) in the open transaction.
    committed_len: usize,
    next_uid: i64,
    committed_next_uid: i64,
}

/// Users kept in memory before the set is dropped at a commit (about 100 bytes each).
/// Tests keep few, so every store test also runs through drops and reloads.
const MAX_CACHED_USERS: usize = if cfg!(test) { 64 } else { 1 << 16 };

struct User {
    uid: i64,
    head: u64,
    committed: u64,
    /// Shared with the `by_name` key: group events and deliveries name users by index.
    name: Arc<str>,
}

impl Users {
    /// An empty set; uids continue after the largest stored.
    pub(crate) fn new(conn: &Connection) -> rusqlite::Result<Users> {
        let next_uid: i64 =
            conn.query_row("SELECT coalesce(max(uid), 0) + 1 FROM users", [], |row| {
                row.get(0)
            })?;
        Ok(Users {
            by_name: HashMap::new(),
            users: Vec::new(),
            touched: Vec::new(),
            committed_len: 0,
            next_uid,
            committed_next_uid: next_uid,
        })
    }

    /// The user's index, read from the database if not in memory; `None` when there is no
    /// such user. Writes nothing, so it serves checks made before a job's first write.
    pub(super) fn load(&mut self, conn: &Connection, name: &str) -> rusqlite::Result<Option<u32>> {
        if let Some(&i) = self.by_name.get(name) {
            return Ok(Some(i));
        }
        let found: Option<(i64, u64)> = conn
            .prepare_cached("SELECT uid, head FROM users WHERE name = ?1")?
            .query_row([name], |row| Ok((row.get(0)?, get_u64(row, 1)?)))
            .optional()?;
        Ok(found.map(|(uid, head)| self.cached(uid, name, head)))
    }

    /// The index of a stored user read by the caller (a group's members), added if absent.
    pub(super) fn cached(&mut self, uid: i64, name: &str, head: u64) -> u32 {
        if let Some(&i) = self.by_name.get(name) {
            return i;
        }
        let i = self.users.len() as u32;
        let name: Arc<str> = name.into();
        self.users.push(User {
            uid,
            head,
            committed: head,
            name: name.clone(),
        });
        self.by_name.insert(name, i);
        i
    }

    /// Drops every user from memory if the set has grown past its bound. Only between
    /// transactions, and the caller must drop whatever holds user indexes with it.
    pub(super) fn shrink(&mut self) -> bool {
        if self.users.len() <= MAX_CACHED_USERS {
            return false;
        }
        debug_assert!(self.touched.is_empty());
        self.by_name = HashMap::new();
        self.users = Vec::new();
        self.committed_len = 0;
        true
    }

    /// The user's index, inserting a row for a user never seen before. The row starts at
    /// head 0 and gets its real head from [`flush`](Self::flush) with the others; uids are
    /// handed out here rather than by SQLite so the insert needs no read-back.
    pub(super) fn get_or_create(&mut self, conn: &Connection, name: &str) -> rusqlite::Result<u32> {
        if let Some(i) = self.load(conn, name)? {
            return Ok(i);
        }
        let uid = self.next_uid;
        conn.prepare_cached("INSERT INTO users(uid, name, head) VALUES (?1, ?2, 0)")?
            .execute(params![uid, name])?;
        self.next_uid += 1;
        let i = self.users.len() as u32;
        let name: Arc<str> = name.into();
        self.users.push(User {
            uid,
            head: 0,
            committed: 0,
            name: name.clone(),
        });
        self.by_name.insert(name, i);
        Ok(i)
    }

    /// The user's index, if the user is in memory: every job loads the users it names
    /// before it runs ([`preload`]), so for those this is whether the user exists.
    pub(super) fn find(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    pub(super) fn name(&self, i: u32) -> &str {
        &self.users[i as usize].name
    }

    pub(super) fn uid(&self, i: u32) -> i64 {
        self.users[i as usize].uid
    }

    pub(super) fn head(&self, i: u32) -> u64 {
        self.users[i as usize].head
    }

    /// Assigns the user's next seq.
    pub(super) fn bump(&mut self, i: u32) -> u64 {
        let user = &mut self.users[i as usize];
        if user.head == user.committed {
            self.touched.push(i);
        }
        user.head += 1;
        user.head
    }

    pub(super) fn flush(&self, conn: &Connection) -> rusqlite::Result<()> {
        let mut update = conn.prepare_cached("UPDATE users SET head = ?1 WHERE uid = ?2")?;
        for &i in &self.touched {
            let user = &self.users[i as usize];
            update.execute(params![user.head as i64, user.uid])?;
        }
        Ok(())
    }

    pub(super) fn commit(&mut self) {
        for &i in &self.touched {
            let user = &mut self.users[i as usize];
            user.committed = user.head;
        }
        self.touched.clear();
        self.committed_len = self.users.len();
        self.committed_next_uid = self.next_uid;
    }

    pub(super) fn rollback(&mut self) {
        for &i in &self.touched {
            if let Some(user) = self.users.get_mut(i as usize) {
                user.head = user.committed;
            }
        }
        self.touched.clear();
        for user in self.users.drain(self.committed_len..) {
            self.by_name.remove(&user.name);
        }
        self.next_uid = self.committed_next_uid;
    }
}
