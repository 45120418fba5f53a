//! What the reader threads show of conversations: a user's conversation list, a page of a
//! conversation's history, a group's members. Each is one read transaction, so all of its
//! statements see the same snapshot (a list's unread counts match its last messages).

use std::cmp::Reverse;
use std::collections::HashSet;

use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};

use super::blocks;
use super::conv::ConvId;
use super::error::{sql, StoreError};
use super::schema::{get_opt_u64, get_u64};
use super::{dm_conv, Audience, ConvSummary, GroupInfo, History, Message, Reach};

/// A read that failed: refused (answer as is) or SQLite's error.
enum Fail {
    Refused(StoreError),
    Sql(rusqlite::Error),
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Self {
        Fail::Sql(e)
    }
}

impl From<Fail> for StoreError {
    fn from(fail: Fail) -> StoreError {
        match fail {
            Fail::Refused(e) => e,
            Fail::Sql(e) => sql(e),
        }
    }
}

fn refuse<T>(e: StoreError) -> Result<T, Fail> {
    Err(Fail::Refused(e))
}

/// `Job::Convs`: newest last message first, conversations without one last.
pub(crate) fn convs(
    conn: &mut Connection,
    user: &str,
    limit: u32,
) -> Result<Vec<ConvSummary>, StoreError> {
    Ok(read(conn, |tx| convs_in(tx, user, limit))?)
}

fn convs_in(tx: &Transaction<'_>, user: &str, limit: u32) -> Result<Vec<ConvSummary>, Fail> {
    let Some(uid) = uid_of(tx, user)? else {
        return Ok(Vec::new());
    };
    let rows = tx
        .prepare_cached("SELECT conv, read_mid FROM convs WHERE uid = ?1")?
        .query_map([uid], |row| {
            Ok((row.get::<_, String>(0)?, get_u64(row, 1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    // Each last message is one step down the (conv, mid) index; the rest is worked out
    // only for the conversations that make the cut.
    let mut items = Vec::with_capacity(rows.len());
    for (conv, read_mid) in rows {
        let last = last_message(tx, &conv)?;
        items.push(ConvSummary {
            conv,
            name: None,
            last,
            unread: 0,
            read_mid,
            peer_read_mid: None,
        });
    }
    items.sort_by(|a, b| {
        let newest = |c: &ConvSummary| Reverse(c.last.as_ref().map(|m| m.mid));
        newest(a).cmp(&newest(b)).then_with(|| a.conv.cmp(&b.conv))
    });
    items.truncate(limit as usize);
    for item in &mut items {
        item.unread = unread(tx, &item.conv, item.read_mid, uid)?;
        match ConvId::parse(&item.conv) {
            Some(ConvId::Group(gid)) => item.name = group_name(tx, gid)?,
            Some(ConvId::Dm(a, b)) => {
                if let Ok(Some(peer)) = ConvId::dm_peer(a, b, user) {
                    // Across a block, the peer's cursor would show that they are active.
                    let blocked = match uid_of(tx, peer)? {
                        Some(peer_uid) => blocks::between(tx, uid, peer_uid)?,
                        None => false,
                    };
                    if !blocked {
                        item.peer_read_mid = Some(read_mid_of(tx, peer, &item.conv)?.unwrap_or(0));
                    }
                }
            }
            None => {}
        }
    }
    Ok(items)
}

fn last_message(tx: &Transaction<'_>, conv: &str) -> rusqlite::Result<Option<Message>> {
    tx.prepare_cached(
        "SELECT m.mid, m.conv, u.name, m.cid, m.body, m.kind, m.ts, m.ref, m.recalled
         FROM messages AS m CROSS JOIN users AS u ON u.uid = m.sender
         WHERE m.conv = ?1 AND m.kind != 'recall'
         ORDER BY m.mid DESC LIMIT 1",
    )?
    .query_row([conv], message)
    .optional()
}

/// Messages after the cursor that someone else wrote and that are still there to read:
/// recall and group notices are not messages to read, a recalled message has nothing left.
fn unread(tx: &Transaction<'_>, conv: &str, read_mid: u64, uid: i64) -> rusqlite::Result<u64> {
    let after = i64::try_from(read_mid).unwrap_or(i64::MAX);
    tx.prepare_cached(
        "SELECT count(*) FROM messages
         WHERE conv = ?1 AND mid > ?2 AND sender != ?3
           AND kind NOT IN ('recall', 'group') AND recalled = 0",
    )?
    .query_row(params![conv, after, uid], |row| get_u64(row, 0))
}

fn group_name(tx: &Transaction<'_>, gid: u64) -> rusqlite::Result<Option<String>> {
    let Ok(gid) = i64::try_from(gid) else {
        return Ok(None);
    };
    tx.prepare_cached("SELECT name FROM groups WHERE gid = ?1")?
        .query_row([gid], |row| row.get(0))
        .optional()
}

fn read_mid_of(tx: &Transaction<'_>, user: &str, conv: &str) -> rusqlite::Result<Option<u64>> {
    tx.prepare_cached(
        "SELECT c.read_mid FROM users AS u CROSS JOIN convs AS c ON c.uid = u.uid
         WHERE u.name = ?1 AND c.conv = ?2",
    )?
    .query_row(params![user, conv], |row| get_u64(row, 0))
    .optional()
}

/// `Job::History`: up to `limit` messages before `before`, oldest first.
pub(crate) fn history(
    conn: &mut Connection,
    user: &str,
    conv: &str,
    before: Option<u64>,
    limit: u32,
    max_bytes: u64,
) -> Result<History, StoreError> {
    Ok(read(conn, |tx| {
        history_in(tx, user, conv, before, limit, max_bytes)
    })?)
}

fn history_in(
    tx: &Transaction<'_>,
    user: &str,
    conv: &str,
    before: Option<u64>,
    limit: u32,
    max_bytes: u64,
) -> Result<History, Fail> {
    match ConvId::parse(conv) {
        None => return refuse(StoreError::Invalid("malformed conversation id")),
        Some(ConvId::Dm(a, b)) => {
            if ConvId::dm_peer(a, b, user).is_err() {
                return refuse(StoreError::Forbidden("not a participant"));
            }
        }
        // Only current members: someone who left sees none of it, old messages included.
        Some(ConvId::Group(gid)) => {
            member_of(tx, user, gid)?;
        }
    }
    let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
    // One more than asked for tells whether older messages remain.
    let mut msgs = tx
        .prepare_cached(
            "SELECT m.mid, m.conv, u.name, m.cid, m.body, m.kind, m.ts, m.ref, m.recalled
             FROM messages AS m CROSS JOIN users AS u ON u.uid = m.sender
             WHERE m.conv = ?1 AND m.mid < ?2 AND m.kind != 'recall'
             ORDER BY m.mid DESC LIMIT ?3",
        )?
        .query_map(params![conv, before, i64::from(limit) + 1], message)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut more = msgs.len() > limit as usize;
    msgs.truncate(limit as usize);
    // A page is one frame: its size is what the server holds for a reader that does not
    // read and what the reactor spends writing it, so it stops at about `max_bytes`.
    let mut bytes = 0u64;
    if let Some(fit) = msgs.iter().position(|m| {
        bytes += (json_len(&m.body) + json_len(&m.cid) + MESSAGE_OVERHEAD) as u64;
        bytes > max_bytes
    }) {
        msgs.truncate(fit.max(1));
        more = true;
    }
    msgs.reverse();
    Ok(History {
        conv: conv.to_owned(),
        msgs,
        more,
    })
}

/// `Job::Members`: the group's name and owner, and its members in join order
/// (`groups.rs`), all from one snapshot.
pub(crate) fn group(conn: &mut Connection, user: &str, gid: u64) -> Result<GroupInfo, StoreError> {
    Ok(read(conn, |tx| {
        member_of(tx, user, gid)?;
        let stored = gid as i64; // member_of found it, so it fits
        let (name, owner) = tx
            .prepare_cached(
                "SELECT g.name, u.name FROM groups AS g LEFT JOIN users AS u ON u.uid = g.owner
                 WHERE g.gid = ?1",
            )?
            .query_row([stored], |row| Ok((row.get(0)?, row.get(1)?)))?;
        let members = tx
            .prepare_cached(
                "SELECT u.name FROM members AS m CROSS JOIN users AS u ON u.uid = m.uid
                 WHERE m.gid = ?1 ORDER BY m.joined, m.uid",
            )?
            .query_map([stored], |row| row.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(GroupInfo {
            gid,
            name,
            owner,
            members,
        })
    })?)
}

/// `Job::Blocked`: oldest block first.
pub(crate) fn blocked(conn: &mut Connection, user: &str) -> Result<Vec<String>, StoreError> {
    Ok(read(conn, |tx| {
        let names = tx
            .prepare_cached(
                "SELECT p.name FROM users AS u CROSS JOIN blocks AS b ON b.blocker = u.uid
                 CROSS JOIN users AS p ON p.uid = b.blocked
                 WHERE u.name = ?1 ORDER BY b.ts, b.blocked",
            )?
            .query_map([user], |row| row.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(names)
    })?)
}

/// `Job::Reach`.
pub(crate) fn reach(
    conn: &mut Connection,
    user: &str,
    audience: &Audience,
) -> Result<Reach, StoreError> {
    Ok(read(conn, |tx| match audience {
        Audience::Group(gid) => {
            member_of(tx, user, *gid)?;
            let mut reach = Reach::default();
            let mut members = tx.prepare_cached(
                "SELECT p.name, EXISTS(SELECT 1 FROM blocks WHERE blocker = u.uid AND blocked = m.uid)
                             OR EXISTS(SELECT 1 FROM blocks WHERE blocker = m.uid AND blocked = u.uid)
                 FROM users AS u CROSS JOIN members AS m CROSS JOIN users AS p ON p.uid = m.uid
                 WHERE u.name = ?1 AND m.gid = ?2 AND m.uid <> u.uid
                 ORDER BY m.joined, m.uid",
            )?;
            let mut rows = members.query(params![user, *gid as i64])?;
            while let Some(row) = rows.next()? {
                let (name, blocked): (String, bool) = (row.get(0)?, row.get(1)?);
                if blocked {
                    reach.hidden.push(name);
                } else {
                    reach.reachable.push(name);
                }
            }
            Ok(reach)
        }
        Audience::Users(peers) => {
            let mut reach = Reach::default();
            let Some(uid) = uid_of(tx, user)? else {
                // A user with no row has no conversation with anyone.
                if peers.iter().any(|p| p == user) {
                    reach.reachable.push(user.to_owned());
                }
                return Ok(reach);
            };
            let mut groups = None;
            for peer in peers {
                if reach.reachable.contains(peer) || reach.hidden.contains(peer) {
                    continue;
                }
                if peer == user {
                    reach.reachable.push(peer.clone());
                    continue;
                }
                let Some(peer_uid) = uid_of(tx, peer)? else {
                    continue;
                };
                if !shares_a_conversation(tx, uid, user, peer_uid, peer, &mut groups)? {
                    continue;
                }
                if blocks::between(tx, uid, peer_uid)? {
                    reach.hidden.push(peer.clone());
                } else {
                    reach.reachable.push(peer.clone());
                }
            }
            Ok(reach)
        }
    })?)
}

/// Past this many groups of the asker, a peer's groups are scanned against the asker's
/// instead of the asker's probed for the peer: either way the cost follows the smaller
/// side for the usual user, not the largest group list.
const PROBE_GROUPS: usize = 64;

/// A dm with a message in it, or a group both are members of now. `groups` caches the
/// asker's groups for the rest of the request.
fn shares_a_conversation(
    tx: &Transaction<'_>,
    uid: i64,
    user: &str,
    peer_uid: i64,
    peer: &str,
    groups: &mut Option<HashSet<i64>>,
) -> Result<bool, Fail> {
    // Both sides get their `convs` row with the first message of a dm.
    let dm = tx
        .prepare_cached("SELECT 1 FROM convs WHERE uid = ?1 AND conv = ?2")?
        .query_row(params![uid, dm_conv(user, peer)], |_| Ok(()))
        .optional()?
        .is_some();
    if dm {
        return Ok(true);
    }
    let groups = match groups {
        Some(groups) => groups,
        None => {
            let mine = tx
                .prepare_cached("SELECT gid FROM members WHERE uid = ?1")?
                .query_map([uid], |row| row.get(0))?
                .collect::<rusqlite::Result<HashSet<i64>>>()?;
            groups.insert(mine)
        }
    };
    if groups.len() <= PROBE_GROUPS {
        let mut member = tx.prepare_cached("SELECT 1 FROM members WHERE gid = ?1 AND uid = ?2")?;
        for gid in groups.iter() {
            if member.exists(params![gid, peer_uid])? {
                return Ok(true);
            }
        }
        return Ok(false);
    }
    let mut theirs = tx.prepare_cached("SELECT gid FROM members WHERE uid = ?1")?;
    let mut rows = theirs.query([peer_uid])?;
    while let Some(row) = rows.next()? {
        if groups.contains(&row.get::<_, i64>(0)?) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Refuses unless group `gid` exists and `user` is one of its members now.
fn member_of(tx: &Transaction<'_>, user: &str, gid: u64) -> Result<(), Fail> {
    let exists = match i64::try_from(gid) {
        Ok(gid) => tx
            .prepare_cached("SELECT 1 FROM groups WHERE gid = ?1")?
            .query_row([gid], |_| Ok(()))
            .optional()?
            .is_some(),
        Err(_) => false,
    };
    if !exists {
        return refuse(StoreError::NotFound("no such group"));
    }
    let member = tx
        .prepare_cached(
            "SELECT 1 FROM users AS u CROSS JOIN members AS m ON m.uid = u.uid
             WHERE u.name = ?1 AND m.gid = ?2",
        )?
        .query_row(params![user, gid as i64], |_| Ok(()))
        .optional()?
        .is_some();
    if !member {
        return refuse(StoreError::Forbidden("not a member of this group"));
    }
    Ok(())
}

fn uid_of(tx: &Transaction<'_>, user: &str) -> rusqlite::Result<Option<i64>> {
    tx.prepare_cached("SELECT uid FROM users WHERE name = ?1")?
        .query_row([user], |row| row.get(0))
        .optional()
}

/// A row of `mid, conv, sender name, cid, body, kind, ts, ref, recalled`.
fn message(row: &Row<'_>) -> rusqlite::Result<Message> {
    let recalled: bool = row.get(8)?;
    Ok(Message {
        mid: get_u64(row, 0)?,
        conv: row.get(1)?,
        from: row.get(2)?,
        cid: row.get(3)?,
        // Erased at the recall already; an empty body is what the field promises either way.
        body: if recalled { String::new() } else { row.get(4)? },
        kind: row.get(5)?,
        ts: get_u64(row, 6)?,
        ref_mid: get_opt_u64(row, 7)?,
        recalled,
    })
}

/// Runs `f` in one read transaction.
fn read<T>(
    conn: &mut Connection,
    f: impl FnOnce(&Transaction<'_>) -> Result<T, Fail>,
) -> Result<T, Fail> {
    let tx = conn.transaction()?;
    let value = f(&tx)?;
    tx.commit()?;
    Ok(value)
}

/// What a history message costs besides its body and cid: the other fields, their names
/// and the user id, generously.
const MESSAGE_OVERHEAD: usize = 256;

/// The bytes `text` takes as a JSON string's contents: control characters are six
/// (`\u0001`) or two (`\n`), quotes and backslashes two.
fn json_len(text: &str) -> usize {
    text.bytes()
        .map(|b| match b {
            b'\n' | b'\r' | b'\t' | 0x08 | 0x0C | b'"' | b'\\' => 2,
            0..=0x1F => 6,
            _ => 1,
        })
        .sum()
}
