//! Recalling a message: the body is erased where it is stored, the message is marked
//! recalled, and a `recall` notice (`ref` = the recalled mid) reaches every participant.
//!
//! The erase is an `UPDATE` to an empty body, and the writer runs with
//! `secure_delete` on (see `schema.rs`), so the old bytes are overwritten in the database
//! pages, overflow pages of a long body included. Until the next checkpoint has copied
//! those pages back and the WAL is overwritten or truncated, earlier WAL frames (and any
//! backup taken meanwhile) may still hold the body.
//!
//! A message is recalled at most once. Asking again (a client that lost the first answer)
//! gets the first notice back as a duplicate, before the window and membership checks:
//! the same request gets the same answer, however late it is resent.

use rusqlite::{Connection, OptionalExtension};

use super::conv::ConvId;
use super::error::StoreError;
use super::events::{self, reserved_cid, Notice};
use super::groups::Groups;
use super::schema::get_u64;
use super::tx::{stored_ts, Fail};
use super::users::Users;
use super::{Outcome, Sent};

/// The message a recall is about.
struct Target {
    sender: i64,
    conv: String,
    kind: String,
    ts: u64,
    recalled: bool,
}

/// `Job::Recall`.
pub(crate) fn recall(
    conn: &Connection,
    users: &mut Users,
    groups: &mut Groups,
    user: &str,
    mid: u64,
    now: u64,
    window_ms: u64,
) -> Result<Outcome, Fail> {
    let ts = stored_ts(now)?;
    let no_such = || Fail::not_found("no such message");
    let stored_mid = i64::try_from(mid).map_err(|_| no_such())?;
    let target = conn
        .prepare_cached("SELECT sender, conv, kind, ts, recalled FROM messages WHERE mid = ?1")?
        .query_row([stored_mid], |row| {
            Ok(Target {
                sender: row.get(0)?,
                conv: row.get(1)?,
                kind: row.get(2)?,
                ts: get_u64(row, 3)?,
                recalled: row.get(4)?,
            })
        })
        .optional()?
        .ok_or_else(no_such)?;
    let u = users
        .find(user)
        .filter(|&u| users.uid(u) == target.sender)
        .ok_or(Fail::forbidden("only the sender may recall"))?;
    if target.kind == "recall" || target.kind == "group" {
        return Err(Fail::forbidden(
            "a recall or group notice cannot be recalled",
        ));
    }
    let cid = format!("recall:{mid}");
    if target.recalled {
        return first_notice(conn, users.uid(u), user, cid, mid);
    }
    if now.saturating_sub(target.ts) > window_ms {
        return Err(Fail::forbidden("the recall window has passed"));
    }
    let others: Vec<u32> = match ConvId::parse(&target.conv) {
        Some(ConvId::Dm(a, b)) => {
            match ConvId::dm_peer(a, b, user).map_err(|()| Fail::forbidden("not a participant"))? {
                None => Vec::new(),
                // The peer received the message, so is a user already: nothing is written.
                Some(peer) => vec![users.load(conn, peer)?.ok_or_else(|| {
                    Fail::Rejected(StoreError::Internal(format!("{peer:?} is not a user")))
                })?],
            }
        }
        Some(ConvId::Group(gid)) => {
            let members = groups
                .get(conn, users, gid)?
                .map(|g| &g.members)
                .filter(|members| members.contains(&u))
                .ok_or(Fail::forbidden("not a member of this group"))?;
            members.iter().copied().filter(|&m| m != u).collect()
        }
        None => {
            return Err(Fail::Rejected(StoreError::Internal(format!(
                "message {mid} has a malformed conversation {:?}",
                target.conv
            ))))
        }
    };

    // Checked; writes from here on.
    conn.prepare_cached("UPDATE messages SET body = '', recalled = 1 WHERE mid = ?1")?
        .execute([stored_mid])?;
    let sent = events::store_notice(
        conn,
        users,
        Notice {
            mid: None,
            conv: target.conv,
            sender: u,
            cid,
            kind: "recall",
            body: String::new(),
            ts,
            ref_mid: Some(stored_mid),
        },
        others,
    )?;
    Ok(Outcome::Recalled(sent))
}

/// The notice of an earlier recall of `mid`, answered as a duplicate. It is under `cid`
/// unless the user's client had taken that, in which case it is under the reserved form.
fn first_notice(
    conn: &Connection,
    uid: i64,
    user: &str,
    cid: String,
    mid: u64,
) -> Result<Outcome, Fail> {
    let is_notice = |s: &events::Stored| s.kind == "recall" && s.ref_mid == Some(mid);
    let mut found = events::by_cid(conn, uid, &cid)?
        .filter(is_notice)
        .map(|s| (s, cid.clone()));
    if found.is_none() {
        let reserved = reserved_cid(&cid);
        found = events::by_cid(conn, uid, &reserved)?
            .filter(is_notice)
            .map(|s| (s, reserved));
    }
    let (first, cid) = found.ok_or_else(|| {
        Fail::Rejected(StoreError::Internal(format!(
            "message {mid} is recalled but its notice is missing"
        )))
    })?;
    Ok(Outcome::Recalled(Sent {
        mid: first.mid,
        conv: first.conv,
        ts: first.ts,
        sender_seq: first.sender_seq,
        duplicate: true,
        deliveries: Vec::new(),
        from: user.to_owned(),
        cid,
        body: first.body,
        kind: first.kind,
    }))
}
