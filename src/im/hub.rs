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

use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;

use serde_json::value::RawValue;

use super::auth::valid_user_id;
use super::protocol::{
    self, ConvItem, ErrorCode, Message, MsgFrame, Reply, Request, Rid, MAX_CID, MAX_GROUP_NAME,
    MAX_KIND, MAX_NAMED_MEMBERS, MAX_WATCH,
};
use crate::store::{
    dm_conv, parse_gid, Audience, Completion, ConvId, ConvSummary, Entry, History, Job, Page,
    ReadMoved, Sent, StoreError,
};
use crate::timer::{TimerId, Wheel};
use reach::{Ask, ReachRead};

/// Writes one connection may have waiting behind its `sync`, and reads waiting behind its
/// writes: past this they are refused as `unavailable`, so a client that floods meanwhile
/// cannot grow the hub's memory.
const MAX_HELD: usize = 256;

/// What an `ack` costs against `--rate`, in thousandths of a request.
const ACK_COST_MILLI: u64 = 100;

/// Least time between two `typing` requests of one connection: a client sends one every
/// few seconds while its user types, so faster than this is a flood.
const TYPING_INTERVAL_MS: u64 = 250;

/// Why a request is refused while the server stops.
const STOPPING: &str = "the server is shutting down: send again after it is back";

/// How long after the store refused a catch-up or re-push read (its queue was full) the
/// read is tried again.
const STORE_RETRY_MS: u64 = 50;

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
    /// The same in bytes of JSON; also the most one sync page puts out at once. With
    /// `window` it bounds what one connection can have queued in the server.
    pub window_bytes: u64,
    /// Largest message body, in bytes.
    pub max_body: usize,
    /// Requests per second a connection may make on average, and in a burst.
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    /// Refusals for rate, less the requests that passed meanwhile, before the connection
    /// is closed with 1008.
    pub rate_strikes: u32,
    /// How long after sending a message its sender may recall it.
    pub recall_window_ms: u64,
    /// Most members a group may have.
    pub max_group: u32,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            heartbeat_ms: 25_000,
            ack_timeout_ms: 5_000,
            ack_retries: 2,
            ack_retry_interval_ms: 2_000,
            window: 256,
            window_bytes: 1 << 20,
            max_body: 16 * 1024,
            rate_per_sec: 200,
            rate_burst: 400,
            rate_strikes: 50,
            recall_window_ms: 120_000,
            max_group: 1000,
        }
    }
}

/// What a frame the hub sends is, for the owner's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Traffic {
    /// A reply to a request (`welcome` too).
    Reply,
    /// A `synced`: the end of a sync page.
    Synced,
    /// An inbox entry pushed for the first time on this connection.
    Push,
    /// An entry pushed again after an ack timeout.
    Repush,
    /// A live relay that is not an inbox entry: `read`, `presence`, `typing`.
    Event,
    Error(ErrorCode),
}

/// What the hub asks of its owner.
#[derive(Debug)]
pub enum Action {
    /// Send one text frame.
    Send {
        conn: ConnKey,
        text: Vec<u8>,
        traffic: Traffic,
    },
    Close {
        conn: ConnKey,
        code: u16,
        reason: &'static str,
    },
    /// Submit to the store; if the store refuses it, hand it back with
    /// [`Hub::store_refused`].
    Store(Job),
    /// Call [`Hub::output_drained`] once what is queued for `conn` (the actions before
    /// this one included) is within the soft cap: at once if it already is. Until then no
    /// read that answers with a page or a reply starts for it, so a client that does not
    /// read cannot make the server hold more than one answer for it.
    AwaitOutput { conn: ConnKey },
}

/// The time as the hub needs it: `mono` for timers (the reactor's clock, ms) and `wall`
/// for message timestamps (ms since the Unix epoch).
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub mono: u64,
    pub wall: u64,
}

/// A user the hub holds connections for (or is greeting). Nobody else is kept: a user who
/// never connects costs the hub nothing, whatever others send them.
#[derive(Default)]
struct User {
    /// Latest inbox seq committed (as told by the store's completions, in commit order, and
    /// by the head read that greets a connection).
    head: u64,
    conns: Vec<ConnKey>,
    /// Connections of this user waiting for their head read before their `welcome`.
    greeting: u32,
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
    /// The user's head, for the `welcome` of a connection whose user had none open: the
    /// hub keeps heads only for users it holds connections for.
    Greeting,
}

/// One entry pushed to a connection and not acked yet.
struct Pushed {
    /// When it was pushed; `None` for the sender's own entry answered by `sent`, which is
    /// a reply, not a push: it needs no ack and is never re-pushed on its own account.
    at: Option<u64>,
    bytes: u32,
}

struct Session {
    user: Rc<str>,
    delivered: u64,
    acked: u64,
    /// The entries in (acked, delivered], oldest first, and their bytes in total.
    unacked: VecDeque<Pushed>,
    unacked_bytes: u64,
    /// Re-pushes since the last progress of `acked`, and when the last one went out.
    retries: u32,
    last_repush: u64,
    /// The highest seq this client acked on this connection (it may run ahead of what a
    /// late sync page would otherwise set `acked` to).
    client_acked: u64,
    /// A catch-up or re-push the store refused is tried again at this time.
    read_retry_at: Option<u64>,
    /// The pending timer and when it fires.
    timer: Option<(TimerId, u64)>,
    /// A read is in flight for this connection; its completion moves `delivered`.
    reading: bool,
    /// A `sync` that waits for this connection's reads and sends in flight to finish.
    queued_sync: Option<Read>,
    /// A client `sync` is queued or in flight.
    syncing: bool,
    /// Requests for the store that may not start yet, in arrival order, so each is answered
    /// after everything before it: a write waits for a sync before it (the sync's replay
    /// must come first), a read (`convs`, `history`, `group_info`) for every write and read
    /// before it (it must see them). See [`Session::may_start`].
    waiting: VecDeque<(Request, Option<Rid>)>,
    /// Writes (send, read, recall, group changes) submitted and not yet answered.
    writes_in_flight: u32,
    /// `convs`, `history` and `group_info` submitted and not yet answered.
    queries_in_flight: u32,
    /// The users whose presence this connection watches (each shares a conversation with
    /// its user, and no block stands between them).
    watching: Vec<Rc<str>>,
    /// Users it asked to watch who were out of reach then: watched from the moment they
    /// come within reach (a first dm, a shared group), without another `watch`.
    wanted: Vec<Rc<str>>,
    last_typing: Option<u64>,
    repush_wanted: bool,
    /// The last sync page was not the end: live pushes wait for the client's next sync,
    /// which would otherwise see them as a gap.
    paused: bool,
    /// Closing (4008, 1008, 1011): nothing more is pushed.
    closing: bool,
    /// Not welcomed yet: its head is being read. Its requests wait; nothing is pushed.
    greeting: bool,
    /// An answer read from the store was queued and the owner has not yet said the output
    /// drained ([`Action::AwaitOutput`]): no read starts meanwhile.
    output_blocked: bool,
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
    /// A write other than `send`: `read`, `recall`, a group change. `user` is kept for
    /// what follows the commit, which must happen even if `conn` has closed meanwhile.
    Write {
        conn: ConnKey,
        user: Rc<str>,
        rid: Option<Rid>,
        write: Write,
    },
    /// `convs`, `history` or `group_info`.
    Query {
        conn: ConnKey,
        rid: Option<Rid>,
    },
    /// Whom a `watch`, a `typing` or a second look may reach.
    Reach(ReachRead),
}

enum Write {
    MarkRead,
    Recall {
        mid: u64,
    },
    /// `group_create` and `group_add` are answered with the group, `group_leave` with `ok`.
    Group {
        answer: bool,
    },
    Block {
        peer: String,
        block: bool,
    },
}

/// Whom a `send` or `typing` is for.
enum Target<'a> {
    User(&'a str),
    Group(u64),
}

pub struct Hub {
    config: HubConfig,
    users: HashMap<Rc<str>, User>,
    sessions: HashMap<ConnKey, Session>,
    pending: HashMap<u64, Pending>,
    next_tag: u64,
    timers: Wheel<ConnKey>,
    /// The server is stopping: new sends and syncs are refused, the rest is finished.
    stopping: bool,
    /// `ack` requests handled (for `/metrics`).
    acks: u64,
    /// Who watches each user's presence.
    watchers: HashMap<Rc<str>, HashSet<ConnKey>>,
    /// The reach reads in flight, by whose they are: what a commit marks stale.
    reach_reads: HashMap<Rc<str>, Vec<u64>>,
}

impl Session {
    fn new(user: Rc<str>, head: u64, config: &HubConfig, now: u64) -> Session {
        Session {
            user,
            delivered: head,
            acked: head,
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            retries: 0,
            last_repush: 0,
            client_acked: 0,
            read_retry_at: None,
            timer: None,
            reading: false,
            queued_sync: None,
            syncing: false,
            waiting: VecDeque::new(),
            writes_in_flight: 0,
            queries_in_flight: 0,
            watching: Vec::new(),
            wanted: Vec::new(),
            last_typing: None,
            repush_wanted: false,
            paused: false,
            closing: false,
            greeting: false,
            output_blocked: false,
            bucket: TokenBucket::full(config, now),
            strikes: 0,
        }
    }

    fn in_window(&self) -> u64 {
        self.delivered - self.acked
    }

    /// Asks the reactor to close the connection; nothing more is pushed to it.
    fn close(&mut self, conn: ConnKey, code: u16, reason: &'static str, out: &mut Vec<Action>) {
        self.closing = true;
        out.push(Action::Close { conn, code, reason });
    }

    /// Whether a request for the store may go now without overtaking one before it.
    /// Writes are answered in the order they reach the one writer, so they may overlap;
    /// reads run on any reader thread, so a read goes alone.
    fn may_start(&self, request: &Request) -> bool {
        if self.greeting {
            return false;
        }
        match request {
            Request::Sync { .. } => self.queries_in_flight == 0,
            // `group_info` too: its answer names up to a thousand members (~66 KB), so it
            // is held behind unread output like a `history`.
            Request::Convs { .. }
            | Request::History { .. }
            | Request::GroupInfo { .. }
            | Request::Blocked => {
                !self.syncing
                    && self.writes_in_flight == 0
                    && self.queries_in_flight == 0
                    && !self.output_blocked
            }
            other if other.writes() => !self.syncing && self.queries_in_flight == 0,
            _ => true,
        }
    }

    /// When the connection next needs the timer: an ack deadline or a read to retry.
    fn due(&self, config: &HubConfig) -> Option<u64> {
        match (self.ack_due(config), self.read_retry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When the oldest unacked entry next needs attention: its first timeout, or one retry
    /// interval after the last re-push. `None` when nothing is unacked.
    fn ack_due(&self, config: &HubConfig) -> Option<u64> {
        let first_push = self.unacked.front()?.at?;
        Some(if self.retries == 0 {
            first_push + config.ack_timeout_ms
        } else {
            self.last_repush + config.ack_retry_interval_ms
        })
    }

    /// Records that `seq` (the next one) went out at `now`, `bytes` long.
    fn pushed(&mut self, seq: u64, now: u64, bytes: usize) {
        debug_assert_eq!(seq, self.delivered + 1);
        self.delivered = seq;
        self.unacked.push_back(Pushed {
            at: Some(now),
            bytes: bytes as u32,
        });
        self.unacked_bytes += bytes as u64;
    }

    fn has_room(&self, config: &HubConfig) -> bool {
        self.in_window() < config.window && self.unacked_bytes < config.window_bytes
    }

    /// The client holds everything up to `seq`.
    fn acked_to(&mut self, seq: u64) {
        while self.acked < seq {
            let Some(entry) = self.unacked.pop_front() else {
                break;
            };
            self.unacked_bytes -= u64::from(entry.bytes);
            self.acked += 1;
        }
        self.acked = self.acked.max(seq);
        self.settle();
    }

    /// Entries that need no ack count as acked once everything before them is.
    fn settle(&mut self) {
        while self.unacked.front().is_some_and(|e| e.at.is_none()) {
            self.unacked.pop_front();
            self.acked += 1;
        }
        if self.unacked.is_empty() {
            self.unacked = VecDeque::new();
        }
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

    /// Takes `cost` thousandths of a request, if the bucket holds them.
    fn take(&mut self, config: &HubConfig, now: u64, cost: u64) -> bool {
        let refill = now.saturating_sub(self.at) * u64::from(config.rate_per_sec);
        self.milli = (self.milli + refill).min(u64::from(config.rate_burst) * 1000);
        self.at = now;
        if self.milli >= cost {
            self.milli -= cost;
            true
        } else {
            false
        }
    }
}

impl Hub {
    /// A hub with no connections yet. Users' heads are read from the store as their
    /// connections arrive.
    pub fn new(config: HubConfig, now: u64) -> Hub {
        let users = HashMap::new();
        Hub {
            config,
            users,
            sessions: HashMap::new(),
            pending: HashMap::new(),
            next_tag: 1,
            timers: Wheel::new(now),
            stopping: false,
            acks: 0,
            watchers: HashMap::new(),
            reach_reads: HashMap::new(),
        }
    }

    /// The server is stopping: sends waiting behind a sync are refused now, and new sends
    /// and syncs from here on; what the store accepted is still answered.
    pub fn shutdown(&mut self, out: &mut Vec<Action>) {
        self.stopping = true;
        for (&conn, session) in self.sessions.iter_mut() {
            // Only what needs the store is refused; a connection still being greeted
            // keeps its other requests (ping, ack, watch, typing) for after its welcome.
            let (refused, kept): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut session.waiting)
                .into_iter()
                .partition(|(request, _)| needs_store(request));
            session.waiting = kept;
            for (request, rid) in refused {
                let cid = match &request {
                    Request::Send(send) => Some(send.cid.as_str()),
                    _ => None,
                };
                error(
                    out,
                    conn,
                    rid.as_deref(),
                    cid,
                    ErrorCode::Unavailable,
                    STOPPING,
                );
            }
        }
    }

    /// `ack` requests handled since the start.
    pub fn acks(&self) -> u64 {
        self.acks
    }

    /// Store jobs submitted and not yet answered (graceful shutdown waits for them).
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Live connections of `user` (for presence and tests).
    pub fn connections_of(&self, user: &str) -> usize {
        self.users.get(user).map_or(0, |u| u.conns.len())
    }

    /// Connections of `user`, live or still waiting for their welcome: what a per-user
    /// cap counts, or connections opened at once would all pass it before any is welcomed.
    pub fn connections_held(&self, user: &str) -> usize {
        self.users
            .get(user)
            .map_or(0, |u| u.conns.len() + u.greeting as usize)
    }

    /// An authenticated connection of `user` is open: greet it, at once when the user has
    /// another connection (the hub knows the head), else once their head is read.
    pub fn connect(&mut self, conn: ConnKey, user: &str, now: Now, out: &mut Vec<Action>) {
        let (name, known) = match self.users.get_key_value(user) {
            Some((name, entry)) => (name.clone(), !entry.conns.is_empty()),
            None => {
                let name: Rc<str> = Rc::from(user);
                self.users.insert(name.clone(), User::default());
                (name, false)
            }
        };
        let mut session = Session::new(name, 0, &self.config, now.mono);
        session.greeting = true;
        self.sessions.insert(conn, session);
        let entry = self.users.get_mut(user).expect("just ensured");
        entry.greeting += 1;
        if known {
            let head = entry.head;
            self.greeted(conn, head, now, out);
        } else {
            self.pump(conn, out);
        }
    }

    /// `conn`'s user's head is known: welcome it. Everything committed for the user up to
    /// `head` is covered by the welcome's `inbox_seq`; anything after reaches the
    /// connection as for any other.
    fn greeted(&mut self, conn: ConnKey, head: u64, now: Now, out: &mut Vec<Action>) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        let entry = self
            .users
            .get_mut(&*session.user)
            .expect("a greeting keeps its user");
        entry.greeting -= 1;
        // Commits the hub heard of while the read ran may be past what it saw.
        entry.head = entry.head.max(head);
        let head = entry.head;
        entry.conns.push(conn);
        let first = entry.conns.len() == 1;
        session.greeting = false;
        session.delivered = head;
        session.acked = head;
        let user = session.user.clone();
        let welcome = Reply::Welcome {
            user: &user,
            conn,
            heartbeat_ms: self.config.heartbeat_ms,
            inbox_seq: head,
        };
        reply(out, conn, &welcome);
        if first {
            self.presence_changed(&user, true, out);
        }
        self.start_waiting(conn, now, out);
        self.pump(conn, out);
    }

    /// The connection is gone. Its unacked entries stay in the inbox for the next sync.
    /// When it was its user's last, the user's watchers learn they went offline, whatever
    /// closed it (the client, an idle timeout, 4008).
    pub fn disconnect(&mut self, conn: ConnKey, out: &mut Vec<Action>) {
        let Some(session) = self.sessions.remove(&conn) else {
            return;
        };
        if let Some((timer, _)) = session.timer {
            self.timers.cancel(timer);
        }
        self.unwatch(conn, &session.watching);
        let Some(user) = self.users.get_mut(&*session.user) else {
            return;
        };
        let was_online = !user.conns.is_empty();
        if session.greeting {
            user.greeting -= 1;
        } else {
            user.conns.retain(|&c| c != conn);
        }
        let online = !user.conns.is_empty();
        if !online && user.greeting == 0 {
            self.users.remove(&*session.user);
        }
        if was_online && !online {
            self.presence_changed(&session.user, false, out);
        }
        // Its pending store jobs still complete; their answers find no session and go.
    }

    /// One text frame from `conn`.
    pub fn message(&mut self, conn: ConnKey, text: &[u8], now: Now, out: &mut Vec<Action>) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        let parsed = protocol::parse(text);
        // An ack is cheap to serve and one client sends many, but a free request is a
        // flood nobody counts: it costs a tenth. (Bytes are charged before this, as they
        // are read.)
        let cost = match parsed {
            Ok((Request::Ack { .. }, _)) => ACK_COST_MILLI,
            _ => 1000,
        };
        if !session.bucket.take(&self.config, now.mono, cost) {
            session.strikes += 1;
            if session.strikes > self.config.rate_strikes {
                session.close(conn, POLICY, "request flood", out);
                return;
            }
            let (rid, cid) = match &parsed {
                Ok((Request::Send(send), rid)) => (rid.as_deref(), Some(send.cid.as_str())),
                Ok((_, rid)) => (rid.as_deref(), None),
                Err(bad) => (bad.rid.as_deref(), None),
            };
            let message = "too many requests: slow down";
            return error(out, conn, rid, cid, ErrorCode::RateLimited, message);
        }
        // A request that passes takes one refusal off the count rather than clearing it: a
        // client that floods at several times its rate gets some through whenever the
        // bucket refills, and must still be closed. Acks, being cheap, take nothing off.
        if cost == 1000 {
            session.strikes = session.strikes.saturating_sub(1);
        }
        let (request, rid) = match parsed {
            Ok(parsed) => parsed,
            Err(bad) => {
                let (rid, cid) = (bad.rid.as_deref(), bad.cid.as_deref());
                return error(out, conn, rid, cid, ErrorCode::BadRequest, &bad.message);
            }
        };
        let cid = match &request {
            Request::Send(send) => Some(send.cid.as_str()),
            _ => None,
        };
        // Checked before anything is kept, so what waits behind a sync or a write is
        // bounded by these limits, not by the frame limit.
        if let Err((code, message)) = check(&request, self.config.max_body) {
            return error(out, conn, rid.as_deref(), cid, code, &message);
        }
        if self.stopping && needs_store(&request) {
            return error(
                out,
                conn,
                rid.as_deref(),
                cid,
                ErrorCode::Unavailable,
                STOPPING,
            );
        }
        // Until its welcome, a connection's requests wait (pipelined behind the upgrade,
        // they are answered after it, in order).
        if session.greeting
            || needs_store(&request)
                && (!session.waiting.is_empty() || !session.may_start(&request))
        {
            if session.waiting.len() < MAX_HELD {
                session.waiting.push_back((request, rid));
            } else {
                let message = "too many requests waiting for the ones before them: send again";
                error(
                    out,
                    conn,
                    rid.as_deref(),
                    cid,
                    ErrorCode::Unavailable,
                    message,
                );
            }
            return;
        }
        self.dispatch(conn, request, rid, now, out);
    }

    /// Starts the waiting requests whose turn has come.
    fn start_waiting(&mut self, conn: ConnKey, now: Now, out: &mut Vec<Action>) {
        loop {
            let Some(session) = self.sessions.get_mut(&conn) else {
                return;
            };
            match session.waiting.front() {
                Some((request, _)) if session.may_start(request) => {
                    let (request, rid) = session.waiting.pop_front().expect("front");
                    self.dispatch(conn, request, rid, now, out);
                }
                _ => return,
            }
        }
    }

    /// Handles a request that is free to go (checked, and its turn).
    fn dispatch(
        &mut self,
        conn: ConnKey,
        request: Request,
        rid: Option<Rid>,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        let user = session.user.to_string();
        let blocking = matches!(request, Request::Block { .. });
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
                self.acks += 1;
                self.ack(conn, seq, out);
                ok(out, conn, rid.as_deref());
            }
            Request::Sync { after, limit } => {
                let read = Read::Sync { rid, after, limit };
                session.syncing = true;
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
                self.pump(conn, out);
            }
            Request::Read { conv, mid } => {
                let job = |tag| Job::MarkRead {
                    tag,
                    user,
                    conv,
                    mid,
                };
                self.write(conn, rid, Write::MarkRead, job, out);
            }
            Request::Recall { mid } => {
                let window_ms = self.config.recall_window_ms;
                let job = |tag| Job::Recall {
                    tag,
                    user,
                    mid,
                    now: now.wall,
                    window_ms,
                };
                self.write(conn, rid, Write::Recall { mid }, job, out);
            }
            Request::GroupCreate { name, members } => {
                let max_members = self.config.max_group;
                let job = |tag| Job::GroupCreate {
                    tag,
                    owner: user,
                    name: name.trim().to_owned(),
                    members,
                    ts: now.wall,
                    max_members,
                };
                self.write(conn, rid, Write::Group { answer: true }, job, out);
            }
            Request::GroupAdd { gid, members } => {
                let max_members = self.config.max_group;
                let job = |tag| Job::GroupAdd {
                    tag,
                    user,
                    gid,
                    members,
                    ts: now.wall,
                    max_members,
                };
                self.write(conn, rid, Write::Group { answer: true }, job, out);
            }
            Request::GroupLeave { gid, members } => {
                if members.iter().any(|m| *m != user) {
                    let message = "group_leave removes only the caller: leave `members` out";
                    let rid = rid.as_deref();
                    return error(out, conn, rid, None, ErrorCode::BadRequest, message);
                }
                let job = |tag| Job::GroupLeave {
                    tag,
                    user,
                    gid,
                    ts: now.wall,
                };
                self.write(conn, rid, Write::Group { answer: false }, job, out);
            }
            Request::Convs { .. } | Request::History { .. } | Request::GroupInfo { .. } => {
                session.queries_in_flight += 1;
                let tag = self.tag();
                let job = match request {
                    Request::Convs { limit } => Job::Convs { tag, user, limit },
                    Request::GroupInfo { gid } => Job::Members { tag, user, gid },
                    Request::History {
                        conv,
                        before,
                        limit,
                    } => Job::History {
                        tag,
                        user,
                        conv,
                        before,
                        limit,
                        max_bytes: self.config.window_bytes,
                    },
                    _ => unreachable!("matched above"),
                };
                self.pending.insert(tag, Pending::Query { conn, rid });
                out.push(Action::Store(job));
            }
            Request::Watch { users } => {
                let audience = Audience::Users(users.clone());
                self.ask_reach(conn, Ask::Watch { rid, users }, audience, out);
            }
            Request::Block { user: peer } | Request::Unblock { user: peer } => {
                let block = blocking;
                let write = Write::Block {
                    peer: peer.clone(),
                    block,
                };
                let job = |tag| Job::Block {
                    tag,
                    user,
                    peer,
                    block,
                    ts: now.wall,
                };
                self.write(conn, rid, write, job, out);
            }
            Request::Blocked => {
                session.queries_in_flight += 1;
                let tag = self.tag();
                self.pending.insert(tag, Pending::Query { conn, rid });
                out.push(Action::Store(Job::Blocked { tag, user }));
            }
            Request::Typing { to } => {
                if session
                    .last_typing
                    .is_some_and(|at| now.mono < at + TYPING_INTERVAL_MS)
                {
                    let message = "typing at most every 250 ms";
                    let rid = rid.as_deref();
                    return error(out, conn, rid, None, ErrorCode::RateLimited, message);
                }
                session.last_typing = Some(now.mono);
                let from = session.user.clone();
                // Checked on arrival; this only recovers the target.
                let Ok(target) = parse_target(&to) else {
                    return;
                };
                let (conv, peer, audience) = match target {
                    Target::User(peer) => (
                        dm_conv(&from, peer),
                        Some(peer.to_owned()),
                        Audience::Users(vec![peer.to_owned()]),
                    ),
                    Target::Group(gid) => (format!("group:{gid}"), None, Audience::Group(gid)),
                };
                self.ask_reach(conn, Ask::Typing { rid, conv, peer }, audience, out);
            }
        }
    }

    /// Submits a write other than `send`, answered in order with the connection's sends.
    fn write(
        &mut self,
        conn: ConnKey,
        rid: Option<Rid>,
        write: Write,
        job: impl FnOnce(u64) -> Job,
        out: &mut Vec<Action>,
    ) {
        let tag = self.tag();
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        session.writes_in_flight += 1;
        let user = session.user.clone();
        let pending = Pending::Write {
            conn,
            user,
            rid,
            write,
        };
        self.pending.insert(tag, pending);
        out.push(Action::Store(job(tag)));
    }

    fn send(
        &mut self,
        conn: ConnKey,
        send: protocol::Send,
        rid: Option<Rid>,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        // Checked on arrival already; this only recovers the target.
        let Ok(target) = check_send(&send, self.config.max_body) else {
            return;
        };
        let target = match target {
            Target::User(user) => Ok(user.to_owned()),
            Target::Group(gid) => Err(gid),
        };
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        session.writes_in_flight += 1;
        let sender = session.user.to_string();
        let tag = self.tag();
        self.pending.insert(
            tag,
            Pending::Send {
                conn,
                rid,
                cid: send.cid.clone(),
            },
        );
        out.push(Action::Store(match target {
            Ok(to) => Job::Send {
                tag,
                sender,
                cid: send.cid,
                to,
                body: send.body,
                kind: send.kind,
                ts: now.wall,
            },
            Err(gid) => Job::GroupSend {
                tag,
                sender,
                cid: send.cid,
                gid,
                body: send.body,
                kind: send.kind,
                ts: now.wall,
            },
        }));
    }

    /// The store could not take `job` (its queue is full or it is shutting down).
    pub fn store_refused(&mut self, job: Job, now: Now, out: &mut Vec<Action>) {
        match self.pending.remove(&job.tag()) {
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
                self.write_done(conn, now, out);
            }
            Some(Pending::Write { conn, rid, .. }) => {
                let message = "the server is busy: try again";
                let rid = rid.as_deref();
                error(out, conn, rid, None, ErrorCode::Unavailable, message);
                self.write_done(conn, now, out);
            }
            Some(Pending::Query { conn, rid }) => {
                let message = "the server is busy: try again";
                let rid = rid.as_deref();
                error(out, conn, rid, None, ErrorCode::Unavailable, message);
                self.query_done(conn, now, out);
            }
            Some(Pending::Reach(read)) => self.reach_refused(job.tag(), read, out),
            Some(Pending::Read { conn, read }) => {
                let Some(session) = self.sessions.get_mut(&conn) else {
                    return;
                };
                session.reading = false;
                match read {
                    Read::Sync { rid, .. } => {
                        let message = "the server is busy: sync again";
                        let rid = rid.as_deref();
                        error(out, conn, rid, None, ErrorCode::Unavailable, message);
                        self.sync_ended(conn, now, out);
                    }
                    // Retried on a timer, not at once: the queue that refused it is full.
                    Read::Repush | Read::CatchUp | Read::Greeting => {
                        session.repush_wanted |= matches!(read, Read::Repush);
                        session.read_retry_at = Some(now.mono + STORE_RETRY_MS);
                        self.arm(conn);
                    }
                }
                // A sync waiting behind the refused read gets its turn (or its refusal).
                self.pump(conn, out);
            }
            None => {}
        }
    }

    fn ack(&mut self, conn: ConnKey, seq: u64, out: &mut Vec<Action>) {
        let session = self.sessions.get_mut(&conn).expect("caller checked");
        session.client_acked = session.client_acked.max(seq);
        // An ack beyond what was pushed cannot be for this connection's pushes.
        let seq = seq.min(session.delivered);
        if seq <= session.acked {
            return;
        }
        session.acked_to(seq);
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
                        let mut gone = Vec::new();
                        let answer = self.answer_to(conn, out, &mut gone);
                        failed(answer, conn, rid.as_deref(), Some(&cid), &e);
                    }
                }
                self.write_done(conn, now, out);
            }
            Completion::Recalled { tag, result } => {
                let Some(Pending::Write {
                    conn, rid, write, ..
                }) = self.pending.remove(&tag)
                else {
                    return;
                };
                match (result, write) {
                    (Ok(recall), Write::Recall { mid }) => {
                        let mut gone = Vec::new();
                        ok(self.answer_to(conn, out, &mut gone), conn, rid.as_deref());
                        self.deliver(None, &recall, Some(mid), now, out);
                    }
                    (Err(e), _) => {
                        let mut gone = Vec::new();
                        let answer = self.answer_to(conn, out, &mut gone);
                        failed(answer, conn, rid.as_deref(), None, &e);
                    }
                    (Ok(_), _) => {}
                }
                self.write_done(conn, now, out);
            }
            Completion::Read { tag, result } => {
                let Some(Pending::Write {
                    conn, user, rid, ..
                }) = self.pending.remove(&tag)
                else {
                    return;
                };
                match result {
                    Ok(moved) => {
                        let mut gone = Vec::new();
                        ok(self.answer_to(conn, out, &mut gone), conn, rid.as_deref());
                        self.read_moved(conn, &user, &moved, out);
                    }
                    Err(e) => {
                        let mut gone = Vec::new();
                        let answer = self.answer_to(conn, out, &mut gone);
                        failed(answer, conn, rid.as_deref(), None, &e);
                    }
                }
                self.write_done(conn, now, out);
            }
            Completion::Group { tag, result } => {
                let Some(Pending::Write {
                    conn, rid, write, ..
                }) = self.pending.remove(&tag)
                else {
                    return;
                };
                match result {
                    Ok(change) => {
                        let mut gone = Vec::new();
                        let answer = self.answer_to(conn, out, &mut gone);
                        if matches!(write, Write::Group { answer: true }) {
                            let group = Reply::Group {
                                rid: rid.as_deref(),
                                gid: change.gid,
                                name: &change.name,
                                owner: change.owner.as_deref(),
                                members: &change.members,
                            };
                            reply(answer, conn, &group);
                        } else {
                            ok(answer, conn, rid.as_deref());
                        }
                        if let Some(event) = &change.event {
                            self.deliver(None, event, None, now, out);
                            let joined = matches!(write, Write::Group { answer: true });
                            self.group_changed(&change.changed, &change.members, joined, out);
                        }
                    }
                    Err(e) => {
                        let mut gone = Vec::new();
                        let answer = self.answer_to(conn, out, &mut gone);
                        failed(answer, conn, rid.as_deref(), None, &e);
                    }
                }
                self.write_done(conn, now, out);
            }
            Completion::Convs { tag, result } => self.query_answered(tag, now, out, |rid, user| {
                result.map(|convs| convs_reply(rid, user, &convs).to_json())
            }),
            Completion::History { tag, result } => {
                self.query_answered(tag, now, out, |rid, user| {
                    result.map(|history| history_reply(rid, user, &history).to_json())
                })
            }
            Completion::Members { tag, result } => self.query_answered(tag, now, out, |rid, _| {
                result.map(|group| {
                    let reply = Reply::Group {
                        rid,
                        gid: group.gid,
                        name: &group.name,
                        owner: group.owner.as_deref(),
                        members: &group.members,
                    };
                    reply.to_json()
                })
            }),
            Completion::BlockList { tag, result } => {
                self.query_answered(tag, now, out, |rid, _| {
                    result.map(|users| Reply::Blocked { rid, users: &users }.to_json())
                })
            }
            Completion::Block { tag, result } => {
                let Some(Pending::Write {
                    conn,
                    user,
                    rid,
                    write,
                }) = self.pending.remove(&tag)
                else {
                    return;
                };
                let mut gone = Vec::new();
                let answer = self.answer_to(conn, out, &mut gone);
                match result {
                    Ok(()) => {
                        ok(answer, conn, rid.as_deref());
                        match write {
                            Write::Block { peer, block: true } => self.blocked(&user, &peer, out),
                            Write::Block { peer, block: false } => {
                                self.unblocked(&user, &peer, out)
                            }
                            _ => {}
                        }
                    }
                    Err(e) => failed(answer, conn, rid.as_deref(), None, &e),
                }
                self.write_done(conn, now, out);
            }
            Completion::Reach { tag, result } => {
                let Some(Pending::Reach(read)) = self.pending.remove(&tag) else {
                    return;
                };
                self.reached(tag, read, result, out);
            }
            Completion::Page { tag, result, .. } => {
                let Some(Pending::Read { conn, read }) = self.pending.remove(&tag) else {
                    return;
                };
                self.page(conn, read, result, now, out);
            }
        }
    }

    /// Where the reply to `conn`'s request goes: `out`, or `gone` (dropped) once the
    /// connection has disconnected, since nothing is sent after that. What follows a
    /// commit (deliveries, receipts) goes to `out` either way.
    fn answer_to<'a>(
        &self,
        conn: ConnKey,
        out: &'a mut Vec<Action>,
        gone: &'a mut Vec<Action>,
    ) -> &'a mut Vec<Action> {
        if self.sessions.contains_key(&conn) {
            out
        } else {
            gone
        }
    }

    /// One of `conn`'s writes is answered. Once none is left, a sync waiting for them may
    /// start, and the reads that came after them.
    fn write_done(&mut self, conn: ConnKey, now: Now, out: &mut Vec<Action>) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        session.writes_in_flight -= 1;
        if session.writes_in_flight > 0 {
            return;
        }
        self.start_waiting(conn, now, out);
        self.pump(conn, out);
    }

    /// A `convs`, `history` or `group_info` came back: `answer` writes the reply for the
    /// asking user.
    fn query_answered(
        &mut self,
        tag: u64,
        now: Now,
        out: &mut Vec<Action>,
        answer: impl FnOnce(Option<&RawValue>, &str) -> Result<Vec<u8>, StoreError>,
    ) {
        let Some(Pending::Query { conn, rid }) = self.pending.remove(&tag) else {
            return;
        };
        let Some(session) = self.sessions.get(&conn) else {
            return;
        };
        match answer(rid.as_deref(), &session.user) {
            Ok(text) => {
                out.push(Action::Send {
                    conn,
                    text,
                    traffic: Traffic::Reply,
                });
                self.await_output(conn, out);
            }
            Err(e) => failed(out, conn, rid.as_deref(), None, &e),
        }
        self.query_done(conn, now, out);
    }

    /// One of `conn`'s `convs`, `history` or `group_info` is answered.
    fn query_done(&mut self, conn: ConnKey, now: Now, out: &mut Vec<Action>) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        session.queries_in_flight -= 1;
        self.start_waiting(conn, now, out);
    }

    /// A read cursor moved: the user's other devices follow it, and a dm peer gets a
    /// receipt.
    fn read_moved(&self, origin: ConnKey, user: &str, moved: &ReadMoved, out: &mut Vec<Action>) {
        if !moved.moved {
            return;
        }
        let text = Reply::Read {
            conv: &moved.conv,
            user,
            mid: moved.mid,
        }
        .to_json();
        let own = self
            .users
            .get(user)
            .map(|u| u.conns.as_slice())
            .unwrap_or_default();
        let peer = moved
            .peer
            .as_deref()
            .and_then(|peer| self.users.get(peer))
            .map(|u| u.conns.as_slice())
            .unwrap_or_default();
        for &conn in own.iter().filter(|&&c| c != origin).chain(peer) {
            out.push(Action::Send {
                conn,
                text: text.clone(),
                traffic: Traffic::Event,
            });
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
        self.deliver(Some(origin), &sent, None, now, out);
        if let [_, (peer, _)] = &sent.deliveries[..] {
            if sent.conv.starts_with("dm:") {
                self.dm_sent(&sent.from, peer, out);
            }
        }
    }

    /// Pushes a stored message to every live connection of every user it has an inbox
    /// entry for. `origin`'s own entry was answered by `sent`, which stands in for it.
    fn deliver(
        &mut self,
        origin: Option<ConnKey>,
        sent: &Sent,
        ref_mid: Option<u64>,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let message = |cid| {
            Message::from_stored(
                sent.mid, &sent.conv, &sent.from, &sent.body, sent.ts, &sent.kind, cid, ref_mid,
                false,
            )
        };
        let (mut own_frame, mut frame) = (None, None);
        for (user, seq) in &sent.deliveries {
            let own = *user == sent.from;
            // Lent out of the user for the loop (nothing in it opens or closes a
            // connection), so a fan-out allocates no copy of each member's list.
            let conns = match self.users.get_mut(user.as_str()) {
                Some(entry) => {
                    entry.head = entry.head.max(*seq);
                    if entry.conns.is_empty() {
                        continue;
                    }
                    std::mem::take(&mut entry.conns)
                }
                // Nobody connected: their head is read when they connect.
                None => continue,
            };
            let frame = if own {
                own_frame.get_or_insert_with(|| MsgFrame::new(&message(Some(sent.cid.as_str()))))
            } else {
                frame.get_or_insert_with(|| MsgFrame::new(&message(None)))
            };
            for &conn in &conns {
                if Some(conn) == origin && own {
                    self.sent_stands_in(conn, *seq);
                    continue;
                }
                self.offer(conn, *seq, frame, now.mono, out);
            }
            if let Some(entry) = self.users.get_mut(user.as_str()) {
                entry.conns = conns;
            }
        }
    }

    /// On the sending connection `sent` is the entry's push (PROTOCOL.md): when that
    /// connection is caught up it counts as delivered there; a connection that is not is
    /// brought up by its catch-up read, and the client drops the repeat by seq.
    fn sent_stands_in(&mut self, conn: ConnKey, seq: u64) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        if session.delivered + 1 == seq && !session.reading && !session.paused {
            session.delivered = seq;
            session.unacked.push_back(Pushed { at: None, bytes: 0 });
            session.settle();
        }
    }

    /// Pushes `seq` to `conn` if it is the next one that connection expects and there is
    /// room; otherwise leaves it to the connection's catch-up read.
    fn offer(
        &mut self,
        conn: ConnKey,
        seq: u64,
        frame: &MsgFrame,
        now: u64,
        out: &mut Vec<Action>,
    ) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        let ready = !session.closing
            && !session.reading
            && !session.paused
            && session.queued_sync.is_none()
            && !session.repush_wanted;
        if ready && session.delivered + 1 == seq && session.has_room(&self.config) {
            // Stamped here, only for a connection that takes it now: one allocation per
            // push, none for one a catch-up read will bring up to date.
            let text = frame.with_seq(seq);
            session.pushed(seq, now, text.len());
            out.push(Action::Send {
                conn,
                text,
                traffic: Traffic::Push,
            });
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
        if session.closing || session.reading || session.output_blocked {
            return;
        }
        if session.queued_sync.is_some() {
            if session.writes_in_flight == 0 {
                let read = session.queued_sync.take().expect("checked");
                self.start_read(conn, read, out);
            }
            return;
        }
        if session.read_retry_at.is_some() {
            return;
        }
        if session.greeting {
            return self.start_read(conn, Read::Greeting, out);
        }
        if std::mem::take(&mut session.repush_wanted) && session.in_window() > 0 {
            return self.start_read(conn, Read::Repush, out);
        }
        if session.paused {
            return;
        }
        let head = self.users.get(&*session.user).map_or(0, |u| u.head);
        if head > session.delivered && session.has_room(&self.config) {
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
            // Past any seq: no entries, only the head.
            Read::Greeting => (u64::MAX, 1),
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
            max_bytes: self.config.window_bytes,
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
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        session.reading = false;
        if session.closing {
            return;
        }
        let page = match result {
            Ok(page) => page,
            Err(e) => {
                if let Read::Sync { rid, .. } = read {
                    let message = store_failure(&e);
                    let rid = rid.as_deref();
                    error(out, conn, rid, None, ErrorCode::Internal, message);
                    self.sync_ended(conn, now, out);
                    self.arm(conn);
                    self.pump(conn, out);
                } else {
                    // Without its read this connection cannot go on in order; the client
                    // reconnects and syncs.
                    session.close(conn, SERVER_ERROR, "store error", out);
                }
                return;
            }
        };
        if let Read::Greeting = read {
            return self.greeted(conn, page.head, now, out);
        }
        let user = session.user.clone();
        match read {
            Read::Greeting => unreachable!("answered above"),
            Read::Sync { rid, after, .. } => {
                // At most `window_bytes` of JSON per page (and at least one entry), so a
                // page of large messages cannot swamp the connection's queue. The reader
                // stops at about as many bytes of bodies; this bounds the JSON around them.
                let mut sizes = Vec::with_capacity(page.entries.len());
                let mut total = 0;
                for entry in &page.entries {
                    if total >= self.config.window_bytes {
                        break;
                    }
                    let bytes = push_entry(out, conn, &user, entry, Traffic::Push);
                    total += bytes as u64;
                    sizes.push((entry.seq, bytes));
                }
                let last = sizes.last().map_or(after, |&(seq, _)| seq);
                // Short of the head means the page stopped early (its limit, or the bytes
                // the reader or this loop allows): the client syncs again from `last`.
                let more = last < page.head;
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
                // A cursor past the head (a client that outlived a restored database) does
                // not hold back what is committed from here on.
                let delivered = if more { last } else { page.head };
                session.acked = after.max(session.client_acked).min(delivered);
                session.delivered = delivered;
                let acked = session.acked;
                session.unacked = sizes
                    .iter()
                    .filter(|&&(seq, _)| seq > acked && seq <= delivered)
                    .map(|&(_, bytes)| Pushed {
                        at: Some(now.mono),
                        bytes: bytes as u32,
                    })
                    .collect();
                session.unacked_bytes = session.unacked.iter().map(|e| u64::from(e.bytes)).sum();
                debug_assert_eq!(session.unacked.len() as u64, session.in_window());
                session.retries = 0;
                // The page just pushed everything a pending re-push would have.
                session.repush_wanted = false;
                self.sync_ended(conn, now, out);
            }
            Read::CatchUp => {
                for entry in &page.entries {
                    if entry.seq == session.delivered + 1 && session.has_room(&self.config) {
                        let bytes = push_entry(out, conn, &user, entry, Traffic::Push);
                        session.pushed(entry.seq, now.mono, bytes);
                    }
                }
            }
            Read::Repush => {
                for entry in &page.entries {
                    if entry.seq <= session.acked || entry.seq > session.delivered {
                        continue;
                    }
                    // The sender's own entries that its `sent` stood in for are in the
                    // window with no bytes and need no ack: pushing them again would put
                    // out what the window never counted.
                    let slot = (entry.seq - session.acked - 1) as usize;
                    if session.unacked.get(slot).is_some_and(|e| e.at.is_none()) {
                        continue;
                    }
                    push_entry(out, conn, &user, entry, Traffic::Repush);
                }
            }
        }
        self.await_output(conn, out);
        self.arm(conn);
        self.pump(conn, out);
    }

    /// Holds `conn`'s reads until the owner says its output drained.
    fn await_output(&mut self, conn: ConnKey, out: &mut Vec<Action>) {
        if let Some(session) = self.sessions.get_mut(&conn) {
            if !session.output_blocked {
                session.output_blocked = true;
                out.push(Action::AwaitOutput { conn });
            }
        }
    }

    /// What is queued for `conn` is within the soft cap again: its held reads may start.
    pub fn output_drained(&mut self, conn: ConnKey, now: Now, out: &mut Vec<Action>) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        session.output_blocked = false;
        self.start_waiting(conn, now, out);
        self.pump(conn, out);
    }

    /// Makes sure the connection's timer fires no later than it is next due. A timer that
    /// fires early finds nothing due and re-arms; one that would fire late is replaced.
    fn arm(&mut self, conn: ConnKey) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        let Some(due) = session.due(&self.config) else {
            return;
        };
        let due = due.max(self.timers.now() + 1);
        if let Some((timer, at)) = session.timer {
            if at <= due {
                return;
            }
            self.timers.cancel(timer);
        }
        session.timer = self.timers.insert(due, conn).ok().map(|timer| (timer, due));
    }

    /// A client sync is answered (or refused): unless another sync is queued, what waited
    /// behind it may start.
    fn sync_ended(&mut self, conn: ConnKey, now: Now, out: &mut Vec<Action>) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        if session.queued_sync.is_some() {
            return;
        }
        session.syncing = false;
        self.start_waiting(conn, now, out);
    }

    /// When [`Hub::on_time`] should next run.
    pub fn next_deadline(&self) -> Option<u64> {
        self.timers.next_deadline()
    }

    /// Ack deadlines (re-push what is unacked, or close 4008 once the retries are spent)
    /// and reads to retry.
    pub fn on_time(&mut self, now: Now, out: &mut Vec<Action>) {
        while let Some((_, conn)) = self.timers.poll(now.mono) {
            let Some(session) = self.sessions.get_mut(&conn) else {
                continue;
            };
            session.timer = None;
            if session.closing {
                continue;
            }
            if session.read_retry_at.is_some_and(|at| at <= now.mono) {
                session.read_retry_at = None;
                self.pump(conn, out);
            }
            let session = self.sessions.get_mut(&conn).expect("still there");
            match session.ack_due(&self.config) {
                Some(due) if due <= now.mono => {
                    if session.retries < self.config.ack_retries {
                        session.retries += 1;
                        session.last_repush = now.mono;
                        session.repush_wanted = true;
                        self.pump(conn, out);
                    } else {
                        session.close(conn, ACK_TIMEOUT, "ack timeout", out);
                        continue;
                    }
                }
                _ => {}
            }
            self.arm(conn);
        }
    }

    fn tag(&mut self) -> u64 {
        self.next_tag += 1;
        self.next_tag
    }
}

/// Pushes one stored entry; returns its length on the wire.
fn push_entry(
    out: &mut Vec<Action>,
    conn: ConnKey,
    user: &str,
    entry: &Entry,
    traffic: Traffic,
) -> usize {
    let message = Message::from_stored(
        entry.mid,
        &entry.conv,
        &entry.from,
        &entry.body,
        entry.ts,
        &entry.kind,
        (entry.from == user).then_some(entry.cid.as_str()),
        entry.ref_mid,
        entry.recalled,
    );
    let text = MsgFrame::new(&message).with_seq(entry.seq);
    let bytes = text.len();
    out.push(Action::Send {
        conn,
        text,
        traffic,
    });
    bytes
}

fn reply(out: &mut Vec<Action>, conn: ConnKey, reply: &Reply<'_>) {
    let traffic = match reply {
        Reply::Synced { .. } => Traffic::Synced,
        Reply::Error { code, .. } => Traffic::Error(*code),
        Reply::Presence { .. } | Reply::Read { .. } | Reply::Typing { .. } => Traffic::Event,
        _ => Traffic::Reply,
    };
    out.push(Action::Send {
        conn,
        text: reply.to_json(),
        traffic,
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

/// Answers a request the store refused or failed.
fn failed(
    out: &mut Vec<Action>,
    conn: ConnKey,
    rid: Option<&RawValue>,
    cid: Option<&str>,
    e: &StoreError,
) {
    let (code, message) = match e {
        StoreError::Forbidden(why) => (ErrorCode::Forbidden, *why),
        StoreError::NotFound(what) => (ErrorCode::NotFound, *what),
        StoreError::Invalid(what) => (ErrorCode::BadRequest, *what),
        StoreError::OverBudget(why) => (ErrorCode::RateLimited, *why),
        // Nothing was written and the same request may succeed later (disk full).
        StoreError::Unavailable { .. } => (
            ErrorCode::Unavailable,
            "the message store cannot write now; try again later",
        ),
        other => (ErrorCode::Internal, store_failure(other)),
    };
    error(out, conn, rid, cid, code, message);
}

/// A message of a conversation as `user` sees it: the `cid` only on their own.
fn shown<'a>(m: &'a crate::store::Message, user: &str) -> Message<'a> {
    Message::from_stored(
        m.mid,
        &m.conv,
        &m.from,
        &m.body,
        m.ts,
        &m.kind,
        (m.from == user).then_some(m.cid.as_str()),
        m.ref_mid,
        m.recalled,
    )
}

fn convs_reply<'a>(rid: Option<&'a RawValue>, user: &str, convs: &'a [ConvSummary]) -> Reply<'a> {
    let items = convs
        .iter()
        .map(|c| ConvItem {
            conv: &c.conv,
            name: c.name.as_deref(),
            last: c.last.as_ref().map(|m| shown(m, user)),
            unread: c.unread,
            read_mid: c.read_mid,
            peer_read_mid: c.peer_read_mid,
        })
        .collect();
    Reply::Convs { rid, items }
}

fn history_reply<'a>(rid: Option<&'a RawValue>, user: &str, history: &'a History) -> Reply<'a> {
    let msgs = history.msgs.iter().map(|m| shown(m, user)).collect();
    Reply::History {
        rid,
        conv: &history.conv,
        msgs,
        more: history.more,
    }
}

/// Why a request is refused before anything else is done with it.
fn check(request: &Request, max_body: usize) -> Result<(), (ErrorCode, String)> {
    let bad = |message: &str| Err((ErrorCode::BadRequest, message.to_owned()));
    match request {
        Request::Send(send) => check_send(send, max_body).map(|_| ()),
        Request::Read { conv, .. } | Request::History { conv, .. } => match ConvId::parse(conv) {
            Some(_) => Ok(()),
            None => bad("`conv` is dm:<a>:<b> (sorted) or group:<gid>"),
        },
        Request::GroupCreate { name, members } => {
            let name = name.trim();
            if name.is_empty() || name.len() > MAX_GROUP_NAME {
                return bad("`name` is 1 to 64 bytes");
            }
            check_members(members)
        }
        Request::GroupAdd { members, .. } => {
            if members.is_empty() {
                return bad("`members` names nobody to add");
            }
            check_members(members)
        }
        Request::Watch { users } => {
            if users.len() > MAX_WATCH {
                return bad("`watch` names at most 256 users");
            }
            check_members(users)
        }
        Request::Block { user } | Request::Unblock { user } => {
            check_members(std::slice::from_ref(user))
        }
        Request::Typing { to } => parse_target(to)
            .map(|_| ())
            .map_err(|m| (ErrorCode::BadRequest, m.to_owned())),
        _ => Ok(()),
    }
}

/// Requests answered from the store, refused while the server stops.
fn needs_store(request: &Request) -> bool {
    !matches!(
        request,
        Request::Ping | Request::Ack { .. } | Request::Watch { .. } | Request::Typing { .. }
    )
}

/// `user:<id>` or `group:<gid>`.
fn parse_target(to: &str) -> Result<Target<'_>, &'static str> {
    match to.split_once(':') {
        Some(("user", user)) if valid_user_id(user) => Ok(Target::User(user)),
        Some(("user", _)) => Err("`to` names no valid user id"),
        Some(("group", gid)) => parse_gid(gid)
            .map(Target::Group)
            .ok_or("`to` names no valid group id"),
        _ => Err("`to` is user:<id> or group:<gid>"),
    }
}

fn check_members(users: &[String]) -> Result<(), (ErrorCode, String)> {
    if users.len() > MAX_NAMED_MEMBERS {
        return Err((
            ErrorCode::BadRequest,
            format!("at most {MAX_NAMED_MEMBERS} users per request"),
        ));
    }
    match users.iter().find(|u| !valid_user_id(u)) {
        Some(bad) => Err((
            ErrorCode::BadRequest,
            format!("{} is not a valid user id", protocol::quote(bad)),
        )),
        None => Ok(()),
    }
}

/// Why a `send` is refused before it reaches the store, or whom it is for.
fn check_send(send: &protocol::Send, max_body: usize) -> Result<Target<'_>, (ErrorCode, String)> {
    let bad = |message: &str| Err((ErrorCode::BadRequest, message.to_owned()));
    if send.cid.is_empty() || send.cid.len() > MAX_CID {
        return bad("`cid` must be 1 to 64 bytes");
    }
    let to = parse_target(&send.to).or_else(bad)?;
    if send.body.len() > max_body {
        return Err((
            ErrorCode::TooLarge,
            format!("`body` is over {max_body} bytes"),
        ));
    }
    if !valid_kind(&send.kind) {
        return bad("`kind` is 1 to 16 of [a-z_], and not one the server reserves");
    }
    Ok(to)
}

/// Kinds a client may send. `recall` and `group` entries are written by the server only.
fn valid_kind(kind: &str) -> bool {
    (1..=MAX_KIND).contains(&kind.len())
        && kind.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        && !matches!(kind, "recall" | "group")
}

mod reach;
#[cfg(test)]
mod tests;
