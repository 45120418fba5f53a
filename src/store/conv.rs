//! Conversations: their ids, who takes part in one, and each participant's `convs` row
//! with its read cursor.
//!
//! A conversation is `dm:<a>:<b>` (two user ids, sorted; `a == b` is a note to self) or
//! `group:<gid>`. A dm's participants are the two users its id names; a group's are its
//! current members. Every participant has a `convs` row, which is what lists the
//! conversation: a dm gets one for each side at its first message, a group member one on
//! joining (removed on leaving).

use std::collections::HashSet;

use rusqlite::{params, Connection, OptionalExtension};

use crate::user_id::valid_user_id;

use super::blocks;
use super::groups::Groups;
use super::schema::get_u64;
use super::writer::{Fail, Users};
use super::{Outcome, ReadMoved};

/// A parsed conversation id, borrowing the user ids from the string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConvId<'a> {
    Dm(&'a str, &'a str),
    Group(u64),
}

impl<'a> ConvId<'a> {
    /// Only canonical ids: sorted, valid user ids; a gid in plain decimal. Anything else
    /// names no conversation, and accepting variants would let one conversation go by
    /// several names.
    pub(crate) fn parse(conv: &'a str) -> Option<ConvId<'a>> {
        if let Some(pair) = conv.strip_prefix("dm:") {
            let (a, b) = pair.split_once(':')?;
            (valid_user_id(a) && valid_user_id(b) && a <= b).then_some(ConvId::Dm(a, b))
        } else if let Some(gid) = conv.strip_prefix("group:") {
            parse_gid(gid).map(ConvId::Group)
        } else {
            None
        }
    }

    /// For a dm `user` takes part in: the other user, `None` for a note to self. `Err` when
    /// `user` is not one of the two.
    pub(crate) fn dm_peer(a: &'a str, b: &'a str, user: &str) -> Result<Option<&'a str>, ()> {
        match (a == user, b == user) {
            (true, true) => Ok(None),
            (true, false) => Ok(Some(b)),
            (false, true) => Ok(Some(a)),
            (false, false) => Err(()),
        }
    }
}

/// A gid as the server writes it: plain decimal, no sign, no leading zero, so one group
/// has one name.
pub(crate) fn parse_gid(gid: &str) -> Option<u64> {
    let canonical = !gid.is_empty()
        && gid.bytes().all(|b| b.is_ascii_digit())
        && (gid == "0" || !gid.starts_with('0'));
    if !canonical {
        return None;
    }
    gid.parse().ok()
}

/// `group:<gid>`.
pub(crate) fn group_conv(gid: u64) -> String {
    format!("group:{gid}")
}

/// Most dm pairs remembered: at 16 bytes or so a pair in a `HashSet<u64>`, about 8 MiB.
const KNOWN_DMS_MAX: usize = 1 << 19;

/// The dm conversations whose two `convs` rows the writer knows exist, with no block
/// between the two, as pairs of user indexes, so that a running conversation's sends cost
/// no `INSERT OR IGNORE` and no block check at all. A block forgets its pair.
///
/// Losing an entry only costs that statement again, so the set is simply emptied when it
/// grows past [`KNOWN_DMS_MAX`]. What it must never hold is a pair whose rows were rolled
/// back: pairs added in the open transaction are listed and dropped on rollback.
#[derive(Default)]
pub(crate) struct KnownDms {
    pairs: HashSet<u64>,
    added: Vec<u64>,
}

impl KnownDms {
    /// Makes sure both users (`a` and `b`, user indexes; equal for a note to self) have a
    /// `convs` row for `conv`.
    pub(crate) fn ensure(
        &mut self,
        conn: &Connection,
        users: &Users,
        a: u32,
        b: u32,
        conv: &str,
    ) -> rusqlite::Result<()> {
        let key = pair(a, b);
        if self.pairs.contains(&key) {
            return Ok(());
        }
        let mut insert =
            conn.prepare_cached("INSERT OR IGNORE INTO convs(uid, conv) VALUES (?1, ?2)")?;
        insert.execute(params![users.uid(a), conv])?;
        if a != b {
            insert.execute(params![users.uid(b), conv])?;
        }
        self.pairs.insert(key);
        self.added.push(key);
        Ok(())
    }

    /// Whether a message between `a` and `b` went through since the last block between
    /// them, so no block check is needed.
    pub(crate) fn known(&self, a: u32, b: u32) -> bool {
        self.pairs.contains(&pair(a, b))
    }

    /// A block between `a` and `b`: their next send checks again. Rolling it back only
    /// costs that check.
    pub(crate) fn forget(&mut self, a: u32, b: u32) {
        self.pairs.remove(&pair(a, b));
    }

    pub(crate) fn commit(&mut self) {
        self.added.clear();
        if self.pairs.len() > KNOWN_DMS_MAX {
            self.pairs = HashSet::new();
        }
    }

    pub(crate) fn rollback(&mut self) {
        for key in self.added.drain(..) {
            self.pairs.remove(&key);
        }
    }
}

fn pair(a: u32, b: u32) -> u64 {
    (u64::from(a.min(b)) << 32) | u64::from(a.max(b))
}

/// `Job::MarkRead`: moves `user`'s cursor in `conv` forward to `mid`.
pub(crate) fn mark_read(
    conn: &Connection,
    users: &mut Users,
    groups: &mut Groups,
    user: &str,
    conv: &str,
    mid: u64,
) -> Result<Outcome, Fail> {
    let id = ConvId::parse(conv).ok_or(Fail::invalid("malformed conversation id"))?;
    let peer = match id {
        ConvId::Dm(a, b) => {
            ConvId::dm_peer(a, b, user).map_err(|()| Fail::forbidden("not a participant"))?
        }
        ConvId::Group(gid) => {
            let group = groups
                .get(conn, users, gid)?
                .ok_or(Fail::not_found("no such group"))?;
            if !users.find(user).is_some_and(|u| group.has(u)) {
                return Err(Fail::forbidden("not a participant"));
            }
            None
        }
    };
    let no_such = || Fail::not_found("no such message in this conversation");
    let stored_mid = i64::try_from(mid).map_err(|_| no_such())?;
    let found: Option<String> = conn
        .prepare_cached("SELECT conv FROM messages WHERE mid = ?1")?
        .query_row([stored_mid], |row| row.get(0))
        .optional()?;
    if found.as_deref() != Some(conv) {
        return Err(no_such());
    }
    // A participant of a conversation with a message in it has a users row: a dm's message
    // created both sides, a group member was created on joining.
    let uid = users.uid(users.find(user).ok_or_else(no_such)?);
    let old: Option<u64> = conn
        .prepare_cached("SELECT read_mid FROM convs WHERE uid = ?1 AND conv = ?2")?
        .query_row(params![uid, conv], |row| get_u64(row, 0))
        .optional()?;
    let moved = old.map_or(true, |old| mid > old);
    if moved {
        // An upsert: a conversation stored before its participants had rows (a database
        // migrated from version 1 that missed one) gets its row here.
        conn.prepare_cached(
            "INSERT INTO convs(uid, conv, read_mid) VALUES (?1, ?2, ?3)
             ON CONFLICT(uid, conv) DO UPDATE SET read_mid = excluded.read_mid",
        )?
        .execute(params![uid, conv, stored_mid])?;
    }
    // No receipt across a block: it would show the blocked user the blocker is active.
    let peer = match peer.and_then(|p| users.find(p).map(|i| (p, users.uid(i)))) {
        Some((_, peer_uid)) if blocks::between(conn, uid, peer_uid)? => None,
        found => found.map(|(p, _)| p),
    };
    Ok(Outcome::Read(ReadMoved {
        conv: conv.to_owned(),
        mid: old.map_or(mid, |old| mid.max(old)),
        moved,
        peer: peer.map(str::to_owned),
    }))
}
