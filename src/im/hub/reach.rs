//! Presence and typing, and who may reach whom with them.
//!
//! Two users are within reach when they share a conversation (a dm with a message, or a
//! group both are in) and no block stands between them: only the store knows that, so a
//! `watch`, a `typing` and every second look the hub takes are reads ([`Job::Reach`]).
//! Each connection keeps the users it watches (registered in `Hub::watchers`) and those it
//! asked for that were out of reach (`wanted`); commits the hub sees move users between the
//! two: a first dm at once, a group change or an unblock after another read, a block or a
//! leave out again.
//!
//! A read answers as of its snapshot, and a commit may land between that snapshot and the
//! answer's arrival: a block the answer does not know of, a first message it missed. So
//! while a read is in flight, every commit the hub handles that touches its user marks the
//! other user of the pair `dirty` in it, and the answer is not trusted for them: they are
//! asked about again. Nothing waits in order for this, so `watch` and `typing` are answered
//! at once, as the contract says, without a stale answer ever standing.

use std::collections::HashSet;
use std::rc::Rc;

use super::{error, failed, ok, reply, Action, ConnKey, Hub, Pending, Traffic};
use crate::im::protocol::{ErrorCode, Reply, Rid};
use crate::store::{Audience, Job, Reach, StoreError};

/// What a reach read is for.
pub(super) enum Ask {
    /// A client's `watch`: replaces the connection's list, then `ok`.
    Watch {
        rid: Option<Rid>,
        users: Vec<String>,
    },
    /// Wanted users who may have come within reach (a group change, an unblock, a stale
    /// answer).
    Wanted(Vec<String>),
    /// Watched users who may have gone out of reach (someone left a group).
    Watched(Vec<String>),
    /// A `typing`: relayed to whom it reaches, then `ok`; to a dm peer out of reach,
    /// `forbidden`.
    Typing {
        rid: Option<Rid>,
        conv: String,
        /// The peer of a dm; `None` in a group.
        peer: Option<String>,
    },
}

pub(super) struct ReachRead {
    conn: ConnKey,
    user: Rc<str>,
    ask: Ask,
    audience: Audience,
    /// Users a commit paired with `user` since the read was asked for: its answer about
    /// them may be stale.
    dirty: Vec<String>,
}

impl Hub {
    /// Asks the store whom `conn`'s user may reach among `audience`, for `ask`.
    pub(super) fn ask_reach(
        &mut self,
        conn: ConnKey,
        ask: Ask,
        audience: Audience,
        out: &mut Vec<Action>,
    ) {
        let Some(session) = self.sessions.get(&conn) else {
            return;
        };
        let user = session.user.clone();
        let tag = self.tag();
        self.reach_reads.entry(user.clone()).or_default().push(tag);
        out.push(Action::Store(Job::Reach {
            tag,
            user: user.to_string(),
            audience: audience.clone(),
        }));
        let read = ReachRead {
            conn,
            user,
            ask,
            audience,
            dirty: Vec::new(),
        };
        self.pending.insert(tag, Pending::Reach(read));
    }

    /// The store's queue turned a reach read away. A client's request hears so; a second
    /// look is taken again at the next change.
    pub(super) fn reach_refused(&mut self, tag: u64, read: ReachRead, out: &mut Vec<Action>) {
        self.reach_read_done(tag, &read.user);
        if !self.sessions.contains_key(&read.conn) {
            return;
        }
        if let Ask::Watch { rid, .. } | Ask::Typing { rid, .. } = read.ask {
            let message = "the server is busy: try again";
            let rid = rid.as_deref();
            error(out, read.conn, rid, None, ErrorCode::Unavailable, message);
        }
    }

    /// A reach read is answered.
    pub(super) fn reached(
        &mut self,
        tag: u64,
        read: ReachRead,
        result: Result<Reach, StoreError>,
        out: &mut Vec<Action>,
    ) {
        self.reach_read_done(tag, &read.user);
        let ReachRead {
            conn,
            user,
            ask,
            audience,
            dirty,
        } = read;
        if !self.sessions.contains_key(&conn) {
            return;
        }
        let reach = match result {
            Ok(reach) => reach,
            Err(e) => {
                match ask {
                    Ask::Watch { rid, .. } | Ask::Typing { rid, .. } => {
                        failed(out, conn, rid.as_deref(), None, &e)
                    }
                    // A second look that failed is taken again at the next change.
                    Ask::Wanted(_) | Ask::Watched(_) => {}
                }
                return;
            }
        };
        let stale = |name: &String| dirty.contains(name);
        let fresh = |names: Vec<String>| -> Vec<String> {
            names.into_iter().filter(|n| !dirty.contains(n)).collect()
        };
        match ask {
            Ask::Watch { rid, users } => {
                let again: Vec<String> = dedup(users.iter().filter(|u| stale(u)).cloned());
                let (reachable, hidden) = (fresh(reach.reachable), fresh(reach.hidden));
                self.replace_watch(conn, &users, &reachable, &hidden, out);
                ok(out, conn, rid.as_deref());
                if !again.is_empty() {
                    let audience = Audience::Users(again.clone());
                    self.ask_reach(conn, Ask::Wanted(again), audience, out);
                }
            }
            Ask::Wanted(asked) => {
                self.came_within_reach(conn, &fresh(reach.reachable), out);
                let again = self.still(conn, asked.into_iter().filter(|u| stale(u)), false);
                if !again.is_empty() {
                    let audience = Audience::Users(again.clone());
                    self.ask_reach(conn, Ask::Wanted(again), audience, out);
                }
            }
            Ask::Watched(asked) => {
                let (again, gone): (Vec<String>, Vec<String>) = asked
                    .into_iter()
                    .filter(|u| !reach.reachable.contains(u))
                    .partition(|u| stale(u));
                for name in gone {
                    self.stop_watching(conn, &name, out);
                }
                let again = self.still(conn, again.into_iter(), true);
                if !again.is_empty() {
                    let audience = Audience::Users(again.clone());
                    self.ask_reach(conn, Ask::Watched(again), audience, out);
                }
            }
            Ask::Typing { rid, conv, peer } => match peer {
                Some(peer) if stale(&peer) => {
                    let ask = Ask::Typing {
                        rid,
                        conv,
                        peer: Some(peer),
                    };
                    self.ask_reach(conn, ask, audience, out);
                }
                // A dm peer out of reach hears nothing, and the typist hears what a
                // stranger's typist hears: a block is not told apart.
                Some(peer) if !reach.reachable.contains(&peer) => {
                    let message = "cannot reach this user";
                    let rid = rid.as_deref();
                    error(out, conn, rid, None, ErrorCode::Forbidden, message);
                }
                _ => {
                    let to = reach.reachable.iter().filter(|u| !stale(u));
                    self.relay_typing(&conv, &user, to.map(String::as_str), out);
                    ok(out, conn, rid.as_deref());
                }
            },
        }
    }

    /// Of `names`, those `conn` still wants (`watched`: still watches), once each.
    fn still(
        &self,
        conn: ConnKey,
        names: impl Iterator<Item = String>,
        watched: bool,
    ) -> Vec<String> {
        let Some(session) = self.sessions.get(&conn) else {
            return Vec::new();
        };
        let list = if watched {
            &session.watching
        } else {
            &session.wanted
        };
        dedup(names.filter(|n| list.iter().any(|w| **w == **n)))
    }

    /// A commit paired `a` with `b` (a dm, a block or unblock): reads in flight for either
    /// may answer about the other as of before it.
    pub(super) fn touched(&mut self, a: &str, b: &str) {
        for (user, other) in [(a, b), (b, a)] {
            let Some(tags) = self.reach_reads.get(user) else {
                continue;
            };
            for tag in tags {
                if let Some(Pending::Reach(read)) = self.pending.get_mut(tag) {
                    read.dirty.push(other.to_owned());
                }
            }
        }
    }

    /// A group change about `changed`: it paired each of them with every member.
    fn touched_group(&mut self, changed: &[String], members: &[String]) {
        if self.reach_reads.is_empty() {
            return;
        }
        let changed_set: HashSet<&str> = changed.iter().map(String::as_str).collect();
        let member_set: HashSet<&str> = members.iter().map(String::as_str).collect();
        for (user, tags) in &self.reach_reads {
            let others: &[String] = if changed_set.contains(&**user) {
                members
            } else if member_set.contains(&**user) {
                changed
            } else {
                continue;
            };
            for tag in tags {
                if let Some(Pending::Reach(read)) = self.pending.get_mut(tag) {
                    read.dirty.extend(others.iter().cloned());
                }
            }
        }
    }

    /// A reach read is answered or refused: it is no longer in flight for its user.
    fn reach_read_done(&mut self, tag: u64, user: &str) {
        if let Some(tags) = self.reach_reads.get_mut(user) {
            tags.retain(|&t| t != tag);
            if tags.is_empty() {
                self.reach_reads.remove(user);
            }
        }
    }

    /// Replaces what `conn` watches with `users`: those `reachable` are watched at once,
    /// each answered with their present state; those `hidden` (a block stands) are
    /// answered offline, like any contact who is; the rest, strangers, get nothing. All
    /// but the reachable wait for a change that brings them within reach.
    fn replace_watch(
        &mut self,
        conn: ConnKey,
        users: &[String],
        reachable: &[String],
        hidden: &[String],
        out: &mut Vec<Action>,
    ) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        let old = std::mem::take(&mut session.watching);
        session.wanted.clear();
        self.unwatch(conn, &old);
        let mut seen: HashSet<&str> = HashSet::with_capacity(users.len());
        for user in users {
            if !seen.insert(user) {
                continue;
            }
            if reachable.contains(user) {
                self.start_watching(conn, user, out);
                continue;
            }
            if hidden.contains(user) {
                let presence = Reply::Presence {
                    user,
                    online: false,
                };
                reply(out, conn, &presence);
            }
            if let Some(session) = self.sessions.get_mut(&conn) {
                session.wanted.push(Rc::from(user.as_str()));
            }
        }
    }

    /// `conn` watches `user` from now on, starting with their present state.
    fn start_watching(&mut self, conn: ConnKey, user: &str, out: &mut Vec<Action>) {
        let name: Rc<str> = match self.watchers.get_key_value(user) {
            Some((name, _)) => name.clone(),
            None => Rc::from(user),
        };
        self.watchers.entry(name.clone()).or_default().insert(conn);
        let online = self.online(&name);
        reply(
            out,
            conn,
            &Reply::Presence {
                user: &name,
                online,
            },
        );
        if let Some(session) = self.sessions.get_mut(&conn) {
            session.watching.push(name);
        }
    }

    /// `conn` stops watching `user`, who goes back to wanted; if they were online, the
    /// connection is told they went offline, which is what they look like from now on.
    fn stop_watching(&mut self, conn: ConnKey, user: &str, out: &mut Vec<Action>) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        let Some(i) = session.watching.iter().position(|w| **w == *user) else {
            return;
        };
        let name = session.watching.swap_remove(i);
        session.wanted.push(name.clone());
        self.unwatch(conn, &[name]);
        if self.online(user) {
            let presence = Reply::Presence {
                user,
                online: false,
            };
            reply(out, conn, &presence);
        }
    }

    /// The wanted users of `conn` among `reachable` are watched from now on.
    fn came_within_reach(&mut self, conn: ConnKey, reachable: &[String], out: &mut Vec<Action>) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        let mut now_reachable = Vec::new();
        session.wanted.retain(|user| {
            let reached = reachable.iter().any(|r| **r == **user);
            if reached {
                now_reachable.push(user.clone());
            }
            !reached
        });
        for user in now_reachable {
            self.start_watching(conn, &user, out);
        }
    }

    /// The connections of `watcher`, for a change about `watched`: those that watch them
    /// (`watching`) or want them.
    fn conns_of(&self, watcher: &str, watched: &str, watching: bool) -> Vec<ConnKey> {
        let Some(entry) = self.users.get(watcher) else {
            return Vec::new();
        };
        entry
            .conns
            .iter()
            .copied()
            .filter(|conn| {
                self.sessions.get(conn).is_some_and(|s| {
                    let list = if watching { &s.watching } else { &s.wanted };
                    list.iter().any(|w| **w == *watched)
                })
            })
            .collect()
    }

    /// A block between `a` and `b` committed: whichever watched the other stops.
    pub(super) fn blocked(&mut self, a: &str, b: &str, out: &mut Vec<Action>) {
        self.touched(a, b);
        for (watcher, watched) in [(a, b), (b, a)] {
            for conn in self.conns_of(watcher, watched, true) {
                self.stop_watching(conn, watched, out);
            }
        }
    }

    /// An unblock between `a` and `b` committed: if they still share a conversation,
    /// whichever wanted the other watches them again.
    pub(super) fn unblocked(&mut self, a: &str, b: &str, out: &mut Vec<Action>) {
        self.touched(a, b);
        for (watcher, watched) in [(a, b), (b, a)] {
            for conn in self.conns_of(watcher, watched, false) {
                let users = vec![watched.to_owned()];
                let audience = Audience::Users(users.clone());
                self.ask_reach(conn, Ask::Wanted(users), audience, out);
            }
        }
    }

    /// A dm between `a` and `b` committed: each is within the other's reach (the send
    /// went through, so no block stands).
    pub(super) fn dm_sent(&mut self, a: &str, b: &str, out: &mut Vec<Action>) {
        self.touched(a, b);
        for (watcher, watched) in [(a, b), (b, a)] {
            for conn in self.conns_of(watcher, watched, false) {
                self.came_within_reach(conn, &[watched.to_owned()], out);
            }
        }
    }

    /// A group change committed. An add (or a new group) puts `changed` together with
    /// every member: the members' connections that want one another ask again, since a
    /// block may stand between two of them. A leave parts `changed` from the members:
    /// connections that watch across it ask again, since another conversation may still
    /// join them.
    pub(super) fn group_changed(
        &mut self,
        changed: &[String],
        members: &[String],
        joined: bool,
        out: &mut Vec<Action>,
    ) {
        self.touched_group(changed, members);
        let changed_set: HashSet<&str> = changed.iter().map(String::as_str).collect();
        let member_set: HashSet<&str> = members.iter().map(String::as_str).collect();
        let mut asks = Vec::new();
        for user in members.iter().chain(changed.iter().filter(|_| !joined)) {
            let Some(entry) = self.users.get(user.as_str()) else {
                continue;
            };
            // Who this user's side of the change is paired with.
            let others = if changed_set.contains(user.as_str()) {
                &member_set
            } else {
                &changed_set
            };
            for &conn in &entry.conns {
                let Some(session) = self.sessions.get(&conn) else {
                    continue;
                };
                let list = if joined {
                    &session.wanted
                } else {
                    &session.watching
                };
                let names: Vec<String> = list
                    .iter()
                    .filter(|w| others.contains(&***w) && ***w != **user)
                    .map(|w| w.to_string())
                    .collect();
                if !names.is_empty() {
                    asks.push((conn, names));
                }
            }
        }
        for (conn, names) in asks {
            let audience = Audience::Users(names.clone());
            let ask = if joined {
                Ask::Wanted(names)
            } else {
                Ask::Watched(names)
            };
            self.ask_reach(conn, ask, audience, out);
        }
    }

    /// Tells everyone watching `user` that they came online or went offline.
    pub(super) fn presence_changed(&self, user: &str, online: bool, out: &mut Vec<Action>) {
        let Some(watchers) = self.watchers.get(user) else {
            return;
        };
        let text = Reply::Presence { user, online }.to_json();
        for &watcher in watchers {
            out.push(Action::Send {
                conn: watcher,
                text: text.clone(),
                traffic: Traffic::Event,
            });
        }
    }

    pub(super) fn online(&self, user: &str) -> bool {
        self.users.get(user).is_some_and(|u| !u.conns.is_empty())
    }

    pub(super) fn unwatch(&mut self, conn: ConnKey, users: &[Rc<str>]) {
        for user in users {
            if let Some(list) = self.watchers.get_mut(user) {
                list.remove(&conn);
                if list.is_empty() {
                    self.watchers.remove(user);
                }
            }
        }
    }

    /// Relays `typing` to the live connections of `to`, never to the typist's own.
    pub(super) fn relay_typing<'a>(
        &self,
        conv: &str,
        from: &str,
        to: impl IntoIterator<Item = &'a str>,
        out: &mut Vec<Action>,
    ) {
        let mut text = None;
        for user in to {
            if user == from {
                continue;
            }
            let Some(entry) = self.users.get(user) else {
                continue;
            };
            for &peer in &entry.conns {
                let text = text.get_or_insert_with(|| Reply::Typing { conv, from }.to_json());
                out.push(Action::Send {
                    conn: peer,
                    text: text.clone(),
                    traffic: Traffic::Event,
                });
            }
        }
    }
}

fn dedup(names: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in names {
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}
