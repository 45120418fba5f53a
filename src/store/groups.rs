//! Groups on the writer: member lists kept in memory, and the jobs that create, change or
//! send to a group.
//!
//! # Join order
//! A member's `joined` is the mid of the event that added them. Members are listed, and
//! ownership handed over, in `(joined, uid)` order: the order of the events, and within
//! one event the order in which the store first saw each user. The in-memory lists keep
//! exactly the order a reload from `members` gives, so nothing depends on whether a group
//! was cached.
//!
//! # Events
//! Every change stores one `kind: "group"` message in `group:<gid>`, sent by whoever made
//! the change, with the JSON body `{"op","gid","name","owner","users"}` (`gid` a string,
//! `owner` the owner after the change, null once the group has ended, `users` whom the
//! change was about: those added, or the one who left), and an inbox entry for every
//! member after the change, plus the leaver on a leave so their devices learn it too.
//!
//! The body holds the change, not the member list: it is stored once but pushed to every
//! member, so a list in it would cost each change the group's size once per member (up to
//! 66 KB to each of a thousand members; tens of gigabytes pushed to build such a group one
//! add at a time). A `create` names every first member, which the request bounds and which
//! is said once. Whoever needs the list asks for it (`Job::Members`). Entries written by
//! older versions carry a `members` list as well; they are served as stored.

use std::collections::{HashMap, HashSet};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::blocks;
use super::budget::Budgets;
use super::conv::group_conv;
use super::error::StoreError;
use super::events::{self, duplicate, Notice};
use super::schema::get_u64;
use super::tx::{insert_message, stored_ts, Fail};
use super::users::Users;
use super::{GroupChange, Outcome, Sent};

/// The longest group name, in bytes, after trimming.
const NAME_MAX: usize = 64;

/// Most member slots kept in memory over all cached groups (16 MiB of user indexes); past
/// it the cache is emptied at the next commit and refills as groups are used.
const CACHED_MEMBERS_MAX: usize = 1 << 22;

/// A group as the writer sees it: user indexes of [`Users`].
pub(crate) struct Group {
    pub name: String,
    /// `None` once the last member has left.
    pub owner: Option<u32>,
    /// In join order (see the module docs).
    pub members: Vec<u32>,
}

impl Group {
    pub(crate) fn has(&self, user: u32) -> bool {
        self.members.contains(&user)
    }

    fn ended(&self) -> bool {
        self.owner.is_none()
    }
}

/// The groups the writer has used, loaded on first use, so that a message to a 1,000-member
/// group reads no member rows.
///
/// Entries may hold users created by the open transaction and changes it made, so a
/// rollback empties the whole cache (rollbacks are rare; a reload is one query per group).
#[derive(Default)]
pub(crate) struct Groups {
    map: HashMap<u64, Group>,
    /// Member slots in `map`, counting an empty group as one; an upper bound, since
    /// leaving does not count down.
    slots: usize,
}

impl Groups {
    /// The group, from memory or loaded; `None` when there is no such group. Writes nothing.
    pub(crate) fn get(
        &mut self,
        conn: &Connection,
        users: &mut Users,
        gid: u64,
    ) -> Result<Option<&mut Group>, Fail> {
        if !self.map.contains_key(&gid) {
            let Some(group) = load(conn, users, gid)? else {
                return Ok(None);
            };
            self.slots += group.members.len().max(1);
            self.map.insert(gid, group);
        }
        Ok(self.map.get_mut(&gid))
    }

    fn insert(&mut self, gid: u64, group: Group) {
        self.slots += group.members.len().max(1);
        self.map.insert(gid, group);
    }

    pub(crate) fn commit(&mut self) {
        if self.slots > CACHED_MEMBERS_MAX {
            self.rollback();
        }
    }

    pub(crate) fn rollback(&mut self) {
        self.map = HashMap::new();
        self.slots = 0;
    }
}

fn load(conn: &Connection, users: &mut Users, gid: u64) -> Result<Option<Group>, Fail> {
    let Ok(gid) = i64::try_from(gid) else {
        return Ok(None);
    };
    let found: Option<(String, Option<i64>)> = conn
        .prepare_cached("SELECT name, owner FROM groups WHERE gid = ?1")?
        .query_row([gid], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let Some((name, owner_uid)) = found else {
        return Ok(None);
    };
    // Members come with their uid and head, so users not in memory join it here without a
    // query each.
    let mut stmt = conn.prepare_cached(
        "SELECT u.uid, u.name, u.head FROM members AS m CROSS JOIN users AS u ON u.uid = m.uid
         WHERE m.gid = ?1 ORDER BY m.joined, m.uid",
    )?;
    let rows = stmt.query_map([gid], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, String>(1)?,
            get_u64(row, 2)?,
        ))
    })?;
    let mut members = Vec::new();
    let mut owner = None;
    for row in rows {
        let (uid, name, head) = row?;
        let i = users.cached(uid, &name, head);
        if Some(uid) == owner_uid {
            owner = Some(i);
        }
        members.push(i);
    }
    // The owner is always a member; a group whose stored owner is not one is damaged.
    if owner_uid.is_some() && owner.is_none() {
        return Err(Fail::Rejected(StoreError::Internal(format!(
            "group {gid}'s owner is not a member"
        ))));
    }
    Ok(Some(Group {
        name,
        owner,
        members,
    }))
}

/// `Job::GroupSend`, borrowed.
pub(crate) struct Message<'a> {
    pub sender: &'a str,
    pub cid: &'a str,
    pub gid: u64,
    pub body: &'a str,
    pub kind: &'a str,
    pub ts: u64,
}

/// `Job::GroupSend`: the message once, an inbox entry per member, the sender's first.
pub(crate) fn send(
    conn: &Connection,
    users: &mut Users,
    groups: &mut Groups,
    m: Message<'_>,
) -> Result<Outcome, Fail> {
    let ts = stored_ts(m.ts)?;
    let group = groups
        .get(conn, users, m.gid)?
        .filter(|g| !g.ended())
        .ok_or(Fail::not_found("no such group"))?;
    let s = users
        .find(m.sender)
        .filter(|&s| group.has(s))
        .ok_or(Fail::forbidden("not a member of this group"))?;
    let sender_seq = users.head(s) + 1;
    let conv = group_conv(m.gid);
    let sender_uid = users.uid(s);
    let Some(mid) = insert_message(
        conn, &conv, sender_uid, m.cid, m.kind, m.body, ts, sender_seq,
    )?
    else {
        // Whatever the original was (a dm's cid resent to a group too), it answers.
        let d = duplicate(conn, sender_uid, m.cid)?;
        return Ok(Outcome::GroupSent(Sent {
            mid: d.mid,
            conv: d.conv,
            ts: d.ts,
            sender_seq: d.sender_seq,
            duplicate: true,
            deliveries: Vec::new(),
            from: m.sender.to_owned(),
            cid: m.cid.to_owned(),
            body: d.body,
            kind: d.kind,
        }));
    };
    let others = group.members.iter().copied().filter(|&i| i != s);
    let deliveries = events::deliver(conn, users, mid, s, others)?;
    Ok(Outcome::GroupSent(Sent {
        mid: mid as u64,
        conv,
        ts: m.ts,
        sender_seq,
        duplicate: false,
        deliveries,
        from: m.sender.to_owned(),
        cid: m.cid.to_owned(),
        body: m.body.to_owned(),
        kind: m.kind.to_owned(),
    }))
}

/// `Job::GroupCreate`.
// Each argument is a field of the job.
#[allow(clippy::too_many_arguments)]
pub(crate) fn create(
    conn: &Connection,
    users: &mut Users,
    groups: &mut Groups,
    budgets: &mut Budgets,
    owner: &str,
    name: &str,
    members: &[String],
    ts: u64,
    max_members: u32,
) -> Result<Outcome, Fail> {
    let ts = stored_ts(ts)?;
    let name = name.trim();
    if name.is_empty() || name.len() > NAME_MAX {
        return Err(Fail::invalid("a group name is 1 to 64 bytes"));
    }
    if owner.is_empty() || members.iter().any(String::is_empty) {
        return Err(Fail::invalid("empty user id"));
    }
    let mut names: Vec<&str> = Vec::with_capacity(members.len() + 1);
    let mut seen = HashSet::with_capacity(members.len() + 1);
    for member in std::iter::once(owner).chain(members.iter().map(String::as_str)) {
        if seen.insert(member) {
            names.push(member);
        }
    }
    if names.len() > max_members as usize {
        return Err(Fail::forbidden("the group would have too many members"));
    }
    refuse_blocked(conn, users, owner, &names[1..])?;
    let invented = names[1..]
        .iter()
        .filter(|n| users.find(n).is_none())
        .count();
    budgets
        .charge(owner, ts as u64, 1, invented as u32)
        .map_err(Fail::Rejected)?;

    // Checked; writes from here on.
    let mut joined = names
        .iter()
        .map(|name| users.get_or_create(conn, name))
        .collect::<rusqlite::Result<Vec<u32>>>()?;
    let o = joined[0];
    joined.sort_unstable_by_key(|&i| users.uid(i));
    conn.prepare_cached("INSERT INTO groups(name, owner, created) VALUES (?1, ?2, ?3)")?
        .execute(params![name, users.uid(o), ts])?;
    let gid = conn.last_insert_rowid() as u64;
    let mid = events::next_mid(conn)?;
    join(conn, users, gid, &joined, mid)?;
    let group = Group {
        name: name.to_owned(),
        owner: Some(o),
        members: joined,
    };
    let sent = event(
        conn,
        users,
        gid,
        &group,
        "create",
        o,
        &group.members,
        mid,
        ts,
    )?;
    let change = change(users, gid, &group, &group.members, Some(sent));
    groups.insert(gid, group);
    Ok(Outcome::Group(change))
}

/// Nobody is put in a group by a user they block, or who blocks them. A user without a row
/// has no blocks yet.
fn refuse_blocked(
    conn: &Connection,
    users: &Users,
    adder: &str,
    names: &[&str],
) -> Result<(), Fail> {
    let Some(adder) = users.find(adder) else {
        return Ok(());
    };
    for name in names {
        if let Some(member) = users.find(name).filter(|&m| m != adder) {
            if blocks::between(conn, users.uid(adder), users.uid(member))? {
                return Err(Fail::forbidden("cannot add a user who cannot be reached"));
            }
        }
    }
    Ok(())
}

/// `Job::GroupAdd`.
// Each argument is a field of the job.
#[allow(clippy::too_many_arguments)]
pub(crate) fn add(
    conn: &Connection,
    users: &mut Users,
    groups: &mut Groups,
    budgets: &mut Budgets,
    user: &str,
    gid: u64,
    members: &[String],
    ts: u64,
    max_members: u32,
) -> Result<Outcome, Fail> {
    let ts = stored_ts(ts)?;
    if members.iter().any(String::is_empty) {
        return Err(Fail::invalid("empty user id"));
    }
    let group = groups
        .get(conn, users, gid)?
        .filter(|g| !g.ended())
        .ok_or(Fail::not_found("no such group"))?;
    let owner = users
        .find(user)
        .filter(|&u| group.owner == Some(u))
        .ok_or(Fail::forbidden("only the owner may add members"))?;
    let current: HashSet<u32> = group.members.iter().copied().collect();
    let mut seen = HashSet::with_capacity(members.len());
    let new: Vec<&str> = members
        .iter()
        .map(String::as_str)
        .filter(|&m| seen.insert(m) && !users.find(m).is_some_and(|i| current.contains(&i)))
        .collect();
    if new.is_empty() {
        return Ok(Outcome::Group(change(users, gid, group, &[], None)));
    }
    if group.members.len() + new.len() > max_members as usize {
        return Err(Fail::forbidden("the group would have too many members"));
    }
    refuse_blocked(conn, users, user, &new)?;
    let invented = new.iter().filter(|n| users.find(n).is_none()).count();
    budgets
        .charge(user, ts as u64, 0, invented as u32)
        .map_err(Fail::Rejected)?;

    // Checked; writes from here on.
    let mut added = new
        .iter()
        .map(|name| users.get_or_create(conn, name))
        .collect::<rusqlite::Result<Vec<u32>>>()?;
    added.sort_unstable_by_key(|&i| users.uid(i));
    let mid = events::next_mid(conn)?;
    join(conn, users, gid, &added, mid)?;
    group.members.extend_from_slice(&added);
    let sent = event(conn, users, gid, group, "add", owner, &added, mid, ts)?;
    let change = change(users, gid, group, &added, Some(sent));
    groups.slots += added.len();
    Ok(Outcome::Group(change))
}

/// `Job::GroupLeave`.
pub(crate) fn leave(
    conn: &Connection,
    users: &mut Users,
    groups: &mut Groups,
    user: &str,
    gid: u64,
    ts: u64,
) -> Result<Outcome, Fail> {
    let ts = stored_ts(ts)?;
    let group = groups
        .get(conn, users, gid)?
        .ok_or(Fail::not_found("no such group"))?;
    let (u, at) = users
        .find(user)
        .and_then(|u| group.members.iter().position(|&m| m == u).map(|at| (u, at)))
        .ok_or(Fail::forbidden("not a member of this group"))?;

    // Checked; writes from here on.
    let stored_gid = gid as i64; // it was found, so it fits
    conn.prepare_cached("DELETE FROM members WHERE gid = ?1 AND uid = ?2")?
        .execute(params![stored_gid, users.uid(u)])?;
    // The conversation leaves the user's list; the history stays with the group.
    conn.prepare_cached("DELETE FROM convs WHERE uid = ?1 AND conv = ?2")?
        .execute(params![users.uid(u), group_conv(gid)])?;
    group.members.remove(at);
    if group.owner == Some(u) {
        // The list is in join order: the first is who joined earliest. Nobody left: ended.
        group.owner = group.members.first().copied();
        conn.prepare_cached("UPDATE groups SET owner = ?1 WHERE gid = ?2")?
            .execute(params![group.owner.map(|o| users.uid(o)), stored_gid])?;
    }
    let mid = events::next_mid(conn)?;
    let sent = event(conn, users, gid, group, "leave", u, &[u], mid, ts)?;
    Ok(Outcome::Group(change(users, gid, group, &[u], Some(sent))))
}

/// Adds `joiners` to `gid`'s members, joined by event `mid`, and lists the conversation
/// for them. Their read cursor starts at the join: what was said before is history, not
/// unread.
fn join(
    conn: &Connection,
    users: &Users,
    gid: u64,
    joiners: &[u32],
    mid: i64,
) -> rusqlite::Result<()> {
    let conv = group_conv(gid);
    let mut member =
        conn.prepare_cached("INSERT INTO members(gid, uid, joined) VALUES (?1, ?2, ?3)")?;
    // A convs row cannot be there already (leaving deletes it), but if one were, keeping
    // it is right.
    let mut listed = conn
        .prepare_cached("INSERT OR IGNORE INTO convs(uid, conv, read_mid) VALUES (?1, ?2, ?3)")?;
    for &i in joiners {
        member.execute(params![gid as i64, users.uid(i), mid])?;
        listed.execute(params![users.uid(i), conv, mid])?;
    }
    Ok(())
}

/// The JSON body of a group event; field order is the wire's. Its size depends on the
/// change, never on the group's (see the module docs).
#[derive(Serialize)]
struct EventBody<'a> {
    op: &'a str,
    /// A string: gids are 64-bit, past what a JavaScript number holds exactly.
    gid: String,
    name: &'a str,
    /// After the change: a leave that hands ownership over shows the new owner.
    owner: Option<&'a str>,
    users: Vec<&'a str>,
}

/// Stores the `group` message for a change already applied to `group`, sent by `actor`,
/// with entries for the actor and then every member.
// Each argument is one part of the event.
#[allow(clippy::too_many_arguments)]
fn event(
    conn: &Connection,
    users: &mut Users,
    gid: u64,
    group: &Group,
    op: &str,
    actor: u32,
    subjects: &[u32],
    mid: i64,
    ts: i64,
) -> Result<Sent, Fail> {
    let body = serde_json::to_string(&EventBody {
        op,
        gid: gid.to_string(),
        name: &group.name,
        owner: group.owner.map(|o| users.name(o)),
        users: subjects.iter().map(|&i| users.name(i)).collect(),
    })
    // Strings and lists always serialize; this runs after writes, so it must roll back.
    .map_err(|e| Fail::Sql(events::abort(&e.to_string())))?;
    let others: Vec<u32> = group
        .members
        .iter()
        .copied()
        .filter(|&m| m != actor)
        .collect();
    events::store_notice(
        conn,
        users,
        Notice {
            mid: Some(mid),
            conv: group_conv(gid),
            sender: actor,
            cid: format!("group:{gid}:{mid}"),
            kind: "group",
            body,
            ts,
            ref_mid: None,
        },
        others,
    )
}

fn change(
    users: &Users,
    gid: u64,
    group: &Group,
    changed: &[u32],
    event: Option<Sent>,
) -> GroupChange {
    GroupChange {
        gid,
        changed: changed.iter().map(|&m| users.name(m).to_owned()).collect(),
        name: group.name.clone(),
        owner: group.owner.map(|o| users.name(o).to_owned()),
        members: group
            .members
            .iter()
            .map(|&m| users.name(m).to_owned())
            .collect(),
        event,
    }
}
