//! Read cursors: each participant's `convs` row keeps how far they have read.

use rusqlite::{params, Connection, OptionalExtension};

use super::blocks;
use super::conv::ConvId;
use super::groups::Groups;
use super::schema::get_u64;
use super::tx::Fail;
use super::users::Users;
use super::{Outcome, ReadMoved};

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
