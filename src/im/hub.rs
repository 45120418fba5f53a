//! The IM hub, sans-IO: events (a connection opened, a text frame, a store completion, the
//! time) in, actions (frames to send, connections to close, store jobs) out. It owns the
//! sessions, the routing from users to their live connections, and per connection the
//! delivery state that makes pushes at-least-once and in order.
//!
//! Per connection the hub keeps two numbers, `acked` ≤ `delivered`: every inbox entry up
//! to `delivered` has been pushed to this connection in seq order, and the client has
//! acknowledged those up to `acked`. Nothing else is held: payloads live in the store, so
//! a re-push or a resume after the window filled up is a read, not a buffer in memory.
//!
//! A live commit is pushed at once only to a connection that is caught up (`delivered` is
//! the seq just before it) and has room in its window. Any other connection (replaying a
//! sync, window full, a read in flight) is brought up to date by a catch-up read from the
//! store that starts where it stopped, so entries reach every connection in seq order
//! with none skipped and no queue in memory grows with the backlog.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use serde_json::value::RawValue;

use super::auth::valid_user_id;
use super::protocol::{self, ErrorCode, Msg, Reply, Request, Rid, MAX_CID};
use crate::store::{Completion, Entry, Job, Page, Sent, StoreError};
use crate::timer::{TimerId, Wheel};

/// A connection as the reactor names it (unique for the life of the process).
pub type ConnKey = u64;

/// Close codes the hub uses.
pub const ACK_TIMEOUT: u16 = 4008;
pub const POLICY: u16 = 1008;
pub const UNSUPPORTED_DATA: u16 = 1003;
pub const SERVER_ERROR: u16 = 1011;

#[derive(Clone, Debug)]
pub struct HubConfig {
    pub heartbeat_ms: u64,
    pub ack_timeout_ms: u64,
    pub ack_retries: u32,
    pub ack_retry_interval_ms: u64,
    /// Pushed-but-unacked entries per connection before pushing pauses.
    pub window: u64,
    /// Largest message body, in bytes.
    pub max_body: usize,
    /// Requests per second a connection may make on average, and in a burst.
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    /// Requests refused for rate in a row before the connection is closed with 1008.
    pub rate_strikes: u32,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            heartbeat_ms: 25_000,
            ack_timeout_ms: 5_000,
            ack_retries: 2,
            ack_retry_interval_ms: 2_000,
            window: 256,
            max_body: 16 * 1024,
            rate_per_sec: 200,
            rate_burst: 400,
            rate_strikes: 50,
        }
    }
}

/// What the hub asks of its owner.
#[derive(Debug)]
pub enum Action {
    /// Send one text frame.
    Send { conn: ConnKey, text: Vec<u8> },
    Close {
        conn: ConnKey,
        code: u16,
        reason: &'static str,
    },
    /// Submit to the store; if the store refuses it, hand it back with
    /// [`Hub::store_refused`].
    Store(Job),
}

/// The time as the hub needs it: `mono` for timers (the reactor's clock, ms) and `wall`
/// for message timestamps (ms since the Unix epoch).
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub mono: u64,
    pub wall: u64,
}

#[derive(Default)]
struct User {
    /// Latest inbox seq committed (as told by the store's completions, in commit order).
    head: u64,
    conns: Vec<ConnKey>,
}

/// Why a read of a user's inbox was asked for.
enum Read {
    /// The client's `sync`.
    Sync {
        rid: Option<Rid>,
        after: u64,
        limit: u32,
    },
    /// Bring a connection that fell behind up to date.
    CatchUp,
    /// Push the unacked entries again.
    Repush,
}

struct Session {
    user: Rc<str>,
    delivered: u64,
    acked: u64,
    /// When each entry in (acked, delivered] was pushed, oldest first.
    pushed_at: VecDeque<u64>,
    /// Re-pushes since the last progress of `acked`, and when the last one went out.
    retries: u32,
    last_repush: u64,
    timer: Option<TimerId>,
    /// A read is in flight for this connection; its completion moves `delivered`.
    reading: bool,
    /// A `sync` that arrived while a read was in flight.
    queued_sync: Option<Read>,
    repush_wanted: bool,
    /// The last sync page was not the end: live pushes wait for the client's next sync,
    /// which would otherwise see them as a gap.
    paused: bool,
    /// Closing (4008, 1008, 1011): nothing more is pushed.
    closing: bool,
    bucket: TokenBucket,
    strikes: u32,
}

enum Pending {
    Send {
        conn: ConnKey,
        rid: Option<Rid>,
        cid: String,
    },
    Read {
        conn: ConnKey,
        read: Read,
    },
}

pub struct Hub {
    config: HubConfig,
    users: HashMap<Rc<str>, User>,
    sessions: HashMap<ConnKey, Session>,
    pending: HashMap<u64, Pending>,
    next_tag: u64,
    timers: Wheel<ConnKey>,
}

impl Session {
    fn new(user: Rc<str>, head: u64, config: &HubConfig, now: u64) -> Session {
        Session {
            user,
            delivered: head,
            acked: head,
            pushed_at: VecDeque::new(),
            retries: 0,
            last_repush: 0,
            timer: None,
            reading: false,
            queued_sync: None,
            repush_wanted: false,
            paused: false,
            closing: false,
            bucket: TokenBucket::full(config, now),
            strikes: 0,
        }
    }

    fn in_window(&self) -> u64 {
        self.delivered - self.acked
    }

    /// When the oldest unacked entry next needs attention: its first timeout, or one retry
    /// interval after the last re-push. `None` when nothing is unacked.
    fn due(&self, config: &HubConfig) -> Option<u64> {
        let first_push = *self.pushed_at.front()?;
        Some(if self.retries == 0 {
            first_push + config.ack_timeout_ms
        } else {
            self.last_repush + config.ack_retry_interval_ms
        })
    }

    /// Records that `seq` (the next one) went out at `now`.
    fn pushed(&mut self, seq: u64, now: u64) {
        debug_assert_eq!(seq, self.delivered + 1);
        self.delivered = seq;
        self.pushed_at.push_back(now);
    }
}

/// Requests allowed per connection: `rate_per_sec` on average, `rate_burst` at once.
/// Kept in thousandths of a request so a refill per millisecond needs no floats.
struct TokenBucket {
    milli: u64,
    at: u64,
}

impl TokenBucket {
    fn full(config: &HubConfig, now: u64) -> TokenBucket {
        TokenBucket {
            milli: u64::from(config.rate_burst) * 1000,
            at: now,
        }
    }

    fn take(&mut self, config: &HubConfig, now: u64) -> bool {
        let refill = now.saturating_sub(self.at) * u64::from(config.rate_per_sec);
        self.milli = (self.milli + refill).min(u64::from(config.rate_burst) * 1000);
        self.at = now;
        if self.milli >= 1000 {
            self.milli -= 1000;
            true
        } else {
            false
        }
    }
}

impl Hub {
    /// A hub that knows every user's latest inbox seq (from the store, at startup).
    pub fn new(config: HubConfig, heads: impl IntoIterator<Item = (String, u64)>, now: u64) -> Hub {
        let users = heads
            .into_iter()
            .map(|(name, head)| {
                let user = User {
                    head,
                    conns: Vec::new(),
                };
                (Rc::from(name), user)
            })
            .collect();
        Hub {
            config,
            users,
            sessions: HashMap::new(),
            pending: HashMap::new(),
            next_tag: 1,
            timers: Wheel::new(now),
        }
    }

    /// Store jobs submitted and not yet answered (graceful shutdown waits for them).
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Live connections of `user` (for presence and tests).
    pub fn connections_of(&self, user: &str) -> usize {
        self.users.get(user).map_or(0, |u| u.conns.len())
    }

    /// An authenticated connection of `user` is open: greet it.
    pub fn connect(&mut self, conn: ConnKey, user: &str, now: Now, out: &mut Vec<Action>) {
        let name = match self.users.get_key_value(user) {
            Some((name, _)) => name.clone(),
            None => {
                let name: Rc<str> = Rc::from(user);
                self.users.insert(name.clone(), User::default());
                name
            }
        };
        let entry = self.users.get_mut(user).expect("just ensured");
        entry.conns.push(conn);
        let head = entry.head;
        self.sessions
            .insert(conn, Session::new(name, head, &self.config, now.mono));
        let welcome = Reply::Welcome {
            user,
            conn,
            heartbeat_ms: self.config.heartbeat_ms,
            inbox_seq: head,
        };
        reply(out, conn, &welcome);
    }

    /// The connection is gone. Its unacked entries stay in the inbox for the next sync.
    pub fn disconnect(&mut self, conn: ConnKey) {
        let Some(session) = self.sessions.remove(&conn) else {
            return;
        };
        if let Some(timer) = session.timer {
            self.timers.cancel(timer);
        }
        if let Some(user) = self.users.get_mut(&*session.user) {
            user.conns.retain(|&c| c != conn);
        }
        // Its pending store jobs still complete; their answers find no session and go.
    }

    /// One text frame from `conn`.
    pub fn message(&mut self, conn: ConnKey, text: &[u8], now: Now, out: &mut Vec<Action>) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        if !session.bucket.take(&self.config, now.mono) {
            session.strikes += 1;
            if session.strikes > self.config.rate_strikes {
                session.closing = true;
                out.push(Action::Close {
                    conn,
                    code: POLICY,
                    reason: "request flood",
                });
                return;
            }
            let (rid, cid) = match protocol::parse(text) {
                Ok((Request::Send(send), rid)) => (rid, Some(send.cid)),
                Ok((_, rid)) => (rid, None),
                Err(bad) => (bad.rid, None),
            };
            let message = "too many requests: slow down";
            error(
                out,
                conn,
                rid.as_deref(),
                cid.as_deref(),
                ErrorCode::RateLimited,
                message,
            );
            return;
        }
        session.strikes = 0;
        let (request, rid) = match protocol::parse(text) {
            Ok(parsed) => parsed,
            Err(bad) => {
                let rid = bad.rid.as_deref();
                return error(out, conn, rid, None, ErrorCode::BadRequest, &bad.message);
            }
        };
        match request {
            Request::Ping => {
                let pong = Reply::Pong {
                    rid: rid.as_deref(),
                    heartbeat_ms: self.config.heartbeat_ms,
                };
                reply(out, conn, &pong);
            }
            Request::Send(send) => self.send(conn, send, rid, now, out),
            Request::Ack { seq } => {
                self.ack(conn, seq, out);
                ok(out, conn, rid.as_deref());
            }
            Request::Sync { after, limit } => {
                let session = self.sessions.get_mut(&conn).expect("checked above");
                let read = Read::Sync { rid, after, limit };
                if session.reading {
                    if let Some(Read::Sync { rid, .. }) = session.queued_sync.replace(read) {
                        // A newer sync supersedes one that never started.
                        let message = "superseded by a later sync";
                        error(
                            out,
                            conn,
                            rid.as_deref(),
                            None,
                            ErrorCode::BadRequest,
                            message,
                        );
                    }
                } else {
                    self.start_read(conn, read, out);
                }
            }
        }
    }

    fn send(
        &mut self,
        conn: ConnKey,
        send: protocol::Send,
        rid: Option<Rid>,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let rid_ref = rid.as_deref();
        let cid = Some(send.cid.as_str());
        if send.cid.is_empty() || send.cid.len() > MAX_CID {
            let message = "`cid` must be 1 to 64 bytes";
            return error(out, conn, rid_ref, cid, ErrorCode::BadRequest, message);
        }
        let to = match send.to.split_once(':') {
            Some(("user", user)) if valid_user_id(user) => user,
            Some(("user", _)) => {
                let message = "`to` names no valid user id";
                return error(out, conn, rid_ref, cid, ErrorCode::BadRequest, message);
            }
            Some(("group", _)) => {
                return error(
                    out,
                    conn,
                    rid_ref,
                    cid,
                    ErrorCode::NotFound,
                    "no such group",
                );
            }
            _ => {
                let message = "`to` is user:<id> or group:<gid>";
                return error(out, conn, rid_ref, cid, ErrorCode::BadRequest, message);
            }
        };
        if send.body.len() > self.config.max_body {
            let message = format!("`body` is over {} bytes", self.config.max_body);
            return error(out, conn, rid_ref, cid, ErrorCode::TooLarge, &message);
        }
        if !valid_kind(&send.kind) {
            let message = "`kind` is 1 to 16 of [a-z_], and not one the server reserves";
            return error(out, conn, rid_ref, cid, ErrorCode::BadRequest, message);
        }
        let sender = self.sessions[&conn].user.to_string();
        let to = to.to_owned();
        let tag = self.tag();
        self.pending.insert(
            tag,
            Pending::Send {
                conn,
                rid,
                cid: send.cid.clone(),
            },
        );
        out.push(Action::Store(Job::Send {
            tag,
            sender,
            cid: send.cid,
            to,
            body: send.body,
            kind: send.kind,
            ts: now.wall,
        }));
    }

    /// The store could not take `job` (its queue is full or it is shutting down).
    pub fn store_refused(&mut self, job: Job, out: &mut Vec<Action>) {
        let tag = match &job {
            Job::Send { tag, .. } | Job::Page { tag, .. } => *tag,
        };
        match self.pending.remove(&tag) {
            Some(Pending::Send { conn, rid, cid }) => {
                let message = "the server is busy: send again";
                error(
                    out,
                    conn,
                    rid.as_deref(),
                    Some(&cid),
                    ErrorCode::Unavailable,
                    message,
                );
            }
            Some(Pending::Read { conn, read }) => {
                if let Some(session) = self.sessions.get_mut(&conn) {
                    session.reading = false;
                    if let Read::Sync { rid, .. } = read {
                        let message = "the server is busy: sync again";
                        error(
                            out,
                            conn,
                            rid.as_deref(),
                            None,
                            ErrorCode::Unavailable,
                            message,
                        );
                    }
                    // A catch-up or re-push is tried again on the next ack, commit or timer.
                }
            }
            None => {}
        }
    }

    fn ack(&mut self, conn: ConnKey, seq: u64, out: &mut Vec<Action>) {
        let session = self.sessions.get_mut(&conn).expect("caller checked");
        // An ack beyond what was pushed cannot be for this connection's pushes.
        let seq = seq.min(session.delivered);
        if seq <= session.acked {
            return;
        }
        let freed = (seq - session.acked) as usize;
        session
            .pushed_at
            .drain(..freed.min(session.pushed_at.len()));
        if session.pushed_at.is_empty() {
            session.pushed_at = VecDeque::new();
        }
        session.acked = seq;
        session.retries = 0;
        self.pump(conn, out);
    }

    /// A store job finished.
    pub fn completion(&mut self, completion: Completion, now: Now, out: &mut Vec<Action>) {
        match completion {
            Completion::Sent { tag, result } => {
                let Some(Pending::Send { conn, rid, cid }) = self.pending.remove(&tag) else {
                    return;
                };
                match result {
                    Ok(sent) => self.committed(conn, rid, sent, now, out),
                    Err(e) => {
                        let message = store_failure(&e);
                        error(
                            out,
                            conn,
                            rid.as_deref(),
                            Some(&cid),
                            ErrorCode::Internal,
                            message,
                        );
                    }
                }
            }
            Completion::Page { tag, result, .. } => {
                let Some(Pending::Read { conn, read }) = self.pending.remove(&tag) else {
                    return;
                };
                self.page(conn, read, result, now, out);
            }
        }
    }

    /// A message is durable: answer its sender, push it to every other live connection.
    fn committed(
        &mut self,
        origin: ConnKey,
        rid: Option<Rid>,
        sent: Sent,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        if self.sessions.contains_key(&origin) {
            let answer = Reply::Sent {
                rid: rid.as_deref(),
                cid: &sent.cid,
                mid: sent.mid,
                conv: &sent.conv,
                seq: sent.sender_seq,
                ts: sent.ts,
            };
            reply(out, origin, &answer);
        }
        for (user, seq) in &sent.deliveries {
            let own = *user == sent.from;
            let conns = match self.users.get_mut(user.as_str()) {
                Some(entry) => {
                    entry.head = entry.head.max(*seq);
                    entry.conns.clone()
                }
                None => {
                    let entry = User {
                        head: *seq,
                        conns: Vec::new(),
                    };
                    self.users.insert(Rc::from(user.as_str()), entry);
                    continue;
                }
            };
            let mut text = None;
            for conn in conns {
                if conn == origin && own {
                    self.sent_stands_in(conn, *seq, now.mono);
                    continue;
                }
                let text = text.get_or_insert_with(|| {
                    let msg = Msg {
                        seq: *seq,
                        mid: sent.mid,
                        conv: &sent.conv,
                        from: &sent.from,
                        body: &sent.body,
                        ts: sent.ts,
                        kind: &sent.kind,
                        cid: own.then_some(sent.cid.as_str()),
                        ref_mid: None,
                    };
                    Reply::Msg(msg).to_json()
                });
                self.offer(conn, *seq, text, now.mono, out);
            }
        }
    }

    /// On the sending connection `sent` is the entry's push (PROTOCOL.md): when that
    /// connection is caught up it counts as delivered there; a connection that is not is
    /// brought up by its catch-up read, and the client drops the repeat by seq.
    fn sent_stands_in(&mut self, conn: ConnKey, seq: u64, now: u64) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        if session.delivered + 1 == seq && !session.reading && !session.paused {
            if session.acked + 1 == seq {
                session.delivered = seq;
                session.acked = seq;
            } else {
                session.pushed(seq, now);
            }
        }
    }

    /// Pushes `seq` to `conn` if it is the next one that connection expects and there is
    /// room; otherwise leaves it to the connection's catch-up read.
    fn offer(&mut self, conn: ConnKey, seq: u64, text: &[u8], now: u64, out: &mut Vec<Action>) {
        let window = self.config.window;
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        let ready = !session.closing
            && !session.reading
            && !session.paused
            && session.queued_sync.is_none()
            && !session.repush_wanted;
        if ready && session.delivered + 1 == seq && session.in_window() < window {
            out.push(Action::Send {
                conn,
                text: text.to_vec(),
            });
            session.pushed(seq, now);
            self.arm(conn);
        } else if seq > session.delivered {
            self.pump(conn, out);
        }
    }

    /// Starts the read this connection needs next, if any: a queued sync, a re-push, or a
    /// catch-up to its user's head within the window.
    fn pump(&mut self, conn: ConnKey, out: &mut Vec<Action>) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        if session.closing || session.reading {
            return;
        }
        if let Some(read) = session.queued_sync.take() {
            return self.start_read(conn, read, out);
        }
        if std::mem::take(&mut session.repush_wanted) && session.in_window() > 0 {
            return self.start_read(conn, Read::Repush, out);
        }
        if session.paused {
            return;
        }
        let head = self.users.get(&*session.user).map_or(0, |u| u.head);
        let room = self.config.window.saturating_sub(session.in_window());
        if head > session.delivered && room > 0 {
            self.start_read(conn, Read::CatchUp, out);
        }
    }

    fn start_read(&mut self, conn: ConnKey, read: Read, out: &mut Vec<Action>) {
        let window = self.config.window;
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        let (after, limit) = match &read {
            Read::Sync { after, limit, .. } => (*after, u64::from(*limit)),
            Read::CatchUp => {
                let room = window.saturating_sub(session.in_window());
                (
                    session.delivered,
                    room.min(u64::from(protocol::MAX_SYNC_PAGE)),
                )
            }
            Read::Repush => (session.acked, session.in_window()),
        };
        session.reading = true;
        let user = session.user.to_string();
        let tag = self.tag();
        self.pending.insert(tag, Pending::Read { conn, read });
        out.push(Action::Store(Job::Page {
            tag,
            user,
            after,
            limit: limit.clamp(1, u64::from(u32::MAX)) as u32,
        }));
    }

    fn page(
        &mut self,
        conn: ConnKey,
        read: Read,
        result: Result<Page, StoreError>,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let window = self.config.window;
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        session.reading = false;
        let page = match result {
            Ok(page) => page,
            Err(e) => {
                if let Read::Sync { rid, .. } = read {
                    let message = store_failure(&e);
                    error(
                        out,
                        conn,
                        rid.as_deref(),
                        None,
                        ErrorCode::Internal,
                        message,
                    );
                } else {
                    // Without its read this connection cannot go on in order; the client
                    // reconnects and syncs.
                    session.closing = true;
                    out.push(Action::Close {
                        conn,
                        code: SERVER_ERROR,
                        reason: "store error",
                    });
                }
                return;
            }
        };
        let user = session.user.clone();
        match read {
            Read::Sync { rid, after, limit } => {
                for entry in &page.entries {
                    push_entry(out, conn, &user, entry);
                }
                let last = page.entries.last().map_or(after, |e| e.seq);
                let more = page.entries.len() >= limit as usize && last < page.head;
                let synced = Reply::Synced {
                    rid: rid.as_deref(),
                    seq: last,
                    head: page.head,
                    more,
                };
                reply(out, conn, &synced);
                // The client now holds everything up to `after` and has been pushed the
                // page; until it syncs again after a partial page, live pushes would be
                // a gap it has to sync over anyway.
                session.paused = more;
                let delivered = if more { last } else { page.head }.max(after);
                session.acked = after.min(delivered);
                session.delivered = delivered;
                session.pushed_at = std::iter::repeat(now.mono)
                    .take((delivered - session.acked) as usize)
                    .collect();
                session.retries = 0;
            }
            Read::CatchUp => {
                for entry in &page.entries {
                    if entry.seq == session.delivered + 1 && session.in_window() < window {
                        push_entry(out, conn, &user, entry);
                        session.pushed(entry.seq, now.mono);
                    }
                }
            }
            Read::Repush => {
                for entry in &page.entries {
                    if entry.seq > session.acked && entry.seq <= session.delivered {
                        push_entry(out, conn, &user, entry);
                    }
                }
            }
        }
        self.arm(conn);
        self.pump(conn, out);
    }

    /// Makes sure a timer is pending for the connection's oldest unacked entry. Lazy: the
    /// due time only ever moves later, so an earlier timer just re-arms when it fires.
    fn arm(&mut self, conn: ConnKey) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        if session.timer.is_some() {
            return;
        }
        if let Some(due) = session.due(&self.config) {
            let due = due.max(self.timers.now() + 1);
            session.timer = self.timers.insert(due, conn).ok();
        }
    }

    /// When [`Hub::on_time`] should next run.
    pub fn next_deadline(&self) -> Option<u64> {
        self.timers.next_deadline()
    }

    /// Ack deadlines: re-push what is unacked, or close 4008 once the retries are spent.
    pub fn on_time(&mut self, now: Now, out: &mut Vec<Action>) {
        while let Some((_, conn)) = self.timers.poll(now.mono) {
            let Some(session) = self.sessions.get_mut(&conn) else {
                continue;
            };
            session.timer = None;
            if session.closing {
                continue;
            }
            let Some(due) = session.due(&self.config) else {
                continue;
            };
            if due > now.mono {
                self.arm(conn);
                continue;
            }
            if session.retries < self.config.ack_retries {
                session.retries += 1;
                session.last_repush = now.mono;
                session.repush_wanted = true;
                self.pump(conn, out);
                self.arm(conn);
            } else {
                session.closing = true;
                out.push(Action::Close {
                    conn,
                    code: ACK_TIMEOUT,
                    reason: "ack timeout",
                });
            }
        }
    }

    fn tag(&mut self) -> u64 {
        self.next_tag += 1;
        self.next_tag
    }
}

fn push_entry(out: &mut Vec<Action>, conn: ConnKey, user: &str, entry: &Entry) {
    let msg = Msg {
        seq: entry.seq,
        mid: entry.mid,
        conv: &entry.conv,
        from: &entry.from,
        body: &entry.body,
        ts: entry.ts,
        kind: &entry.kind,
        cid: (entry.from == user).then_some(entry.cid.as_str()),
        ref_mid: entry.ref_mid,
    };
    reply(out, conn, &Reply::Msg(msg));
}

fn reply(out: &mut Vec<Action>, conn: ConnKey, reply: &Reply<'_>) {
    out.push(Action::Send {
        conn,
        text: reply.to_json(),
    });
}

fn ok(out: &mut Vec<Action>, conn: ConnKey, rid: Option<&RawValue>) {
    if let Some(rid) = rid {
        reply(out, conn, &Reply::Ok { rid });
    }
}

fn error(
    out: &mut Vec<Action>,
    conn: ConnKey,
    rid: Option<&RawValue>,
    cid: Option<&str>,
    code: ErrorCode,
    message: &str,
) {
    let error = Reply::Error {
        rid,
        cid,
        code,
        message,
    };
    reply(out, conn, &error);
}

fn store_failure(_: &StoreError) -> &'static str {
    // The details go to the log; the client learns only that it may try again.
    "the message store failed; try again"
}

/// Kinds a client may send. `recall` and `group` entries are written by the server only.
fn valid_kind(kind: &str) -> bool {
    (1..=16).contains(&kind.len())
        && kind.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        && !matches!(kind, "recall" | "group")
}

#[cfg(test)]
mod tests;
