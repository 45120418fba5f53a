//! Hub tests with an injected clock and a fake store.
//!
//! The hub is sans-IO, so a test plays every other part: the reactor (it feeds frames and
//! the time in and reads the actions out), the clients (it parses each frame as JSON and
//! checks the fields the contract names) and the store ([`FakeStore`] assigns mids and
//! per-user seqs and answers page reads from its own log, as the real store does). Running
//! a store job is split in two, [`Harness::run`] (the commit or the snapshot) and
//! [`Harness::deliver`] (the completion reaching the hub), because the interesting cases are
//! the ones where the hub hears of a commit later than a read already saw it, or the other
//! way round.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use serde_json::{json, Value};

use super::{Action, ConnKey, Hub, HubConfig, Now, ACK_TIMEOUT, POLICY, SERVER_ERROR};
use crate::store::{
    dm_conv, Audience, Completion, Entry, GroupInfo, Job, Page, Reach, Sent, StoreError,
};

/// Monotonic start time: far from 0 and from a power of two, so nothing passes by accident
/// because a deadline happens to sit on a timer-wheel slot boundary.
const T0: u64 = 1_000_003;
/// Wall clock at `T0`, and it moves with `mono`: a `ts` that came from the wrong clock, or
/// from the wrong moment, shows.
const WALL0: u64 = 1_700_000_000_000;

// ---------------------------------------------------------------------------------------
// The fake store
// ---------------------------------------------------------------------------------------

/// The store's contract without SQLite: one inbox log per user, seqs 1, 2, 3, … assigned
/// at commit, a `(sender, cid)` index for idempotent resends, pages read from the log.
#[derive(Default)]
struct FakeStore {
    inboxes: HashMap<String, Vec<Entry>>,
    by_cid: HashMap<(String, String), Sent>,
    next_mid: u64,
    /// `(blocker, blocked)`, oldest first.
    blocks: Vec<(String, String)>,
    /// Group members, for `Job::Reach`.
    groups: HashMap<u64, Vec<String>>,
}

impl FakeStore {
    fn head(&self, user: &str) -> u64 {
        self.inboxes.get(user).map_or(0, |inbox| inbox.len() as u64)
    }

    fn entry(&self, user: &str, seq: u64) -> &Entry {
        &self.inboxes[user][seq as usize - 1]
    }

    fn append(&mut self, user: &str, mut entry: Entry) -> u64 {
        let inbox = self.inboxes.entry(user.to_owned()).or_default();
        entry.seq = inbox.len() as u64 + 1;
        let seq = entry.seq;
        inbox.push(entry);
        seq
    }

    /// History from before the hub started: `n` messages from `zed` in `user`'s inbox.
    /// A dm between `a` and `b` with one message in it, so each is within the other's reach.
    fn converse(&mut self, a: &str, b: &str) {
        self.next_mid += 1;
        let entry = Entry {
            seq: 0,
            mid: self.next_mid,
            conv: dm_conv(a, b),
            from: a.into(),
            cid: format!("hello-{}", self.next_mid),
            body: "hello".into(),
            kind: "text".into(),
            ts: WALL0 - 1,
            ref_mid: None,
            recalled: false,
        };
        self.append(a, entry.clone());
        self.append(b, entry);
    }

    fn seed(&mut self, user: &str, n: u64) {
        for i in 0..n {
            self.next_mid += 1;
            let entry = Entry {
                seq: 0,
                mid: self.next_mid,
                conv: dm_conv("zed", user),
                from: "zed".into(),
                cid: format!("old-{user}-{i}"),
                body: format!("old {i}"),
                kind: "text".into(),
                ts: WALL0 - 1000 + i,
                ref_mid: None,
                recalled: false,
            };
            self.append(user, entry);
        }
    }

    /// Commits a send or takes a page snapshot, as the writer or a reader would.
    fn blocked_between(&self, a: &str, b: &str) -> bool {
        self.blocks
            .iter()
            .any(|(x, y)| (x == a && y == b) || (x == b && y == a))
    }

    /// As the real reader: a dm with a message, or a group in common.
    fn shares(&self, user: &str, peer: &str) -> bool {
        let dm = dm_conv(user, peer);
        let talked = self
            .inboxes
            .get(user)
            .is_some_and(|inbox| inbox.iter().any(|e| e.conv == dm));
        let grouped = self
            .groups
            .values()
            .any(|m| m.iter().any(|x| x == user) && m.iter().any(|x| x == peer));
        user == peer || talked || grouped
    }

    fn execute(&mut self, job: &Job) -> Completion {
        match job.clone() {
            Job::Reach {
                tag,
                user,
                audience,
            } => {
                let mut reach = Reach::default();
                let mut sort = |peer: &String| {
                    if reach.reachable.contains(peer) || reach.hidden.contains(peer) {
                    } else if self.blocked_between(&user, peer) {
                        reach.hidden.push(peer.clone());
                    } else {
                        reach.reachable.push(peer.clone());
                    }
                };
                let result = match audience {
                    Audience::Users(peers) => {
                        for peer in peers.iter().filter(|p| self.shares(&user, p)) {
                            sort(peer);
                        }
                        Ok(reach)
                    }
                    Audience::Group(gid) => match self.groups.get(&gid) {
                        None => Err(StoreError::NotFound("no such group")),
                        Some(m) if !m.contains(&user) => {
                            Err(StoreError::Forbidden("not a member of this group"))
                        }
                        Some(m) => {
                            for peer in m.iter().filter(|x| **x != user) {
                                sort(peer);
                            }
                            Ok(reach)
                        }
                    },
                };
                Completion::Reach { tag, result }
            }
            Job::Block {
                tag,
                user,
                peer,
                block,
                ..
            } => {
                let pair = (user, peer);
                self.blocks.retain(|p| *p != pair);
                if block {
                    self.blocks.push(pair);
                }
                Completion::Block {
                    tag,
                    result: Ok(()),
                }
            }
            Job::Blocked { tag, user } => Completion::BlockList {
                tag,
                result: Ok(self
                    .blocks
                    .iter()
                    .filter(|(x, _)| *x == user)
                    .map(|(_, y)| y.clone())
                    .collect()),
            },
            Job::Send {
                tag,
                sender,
                cid,
                to,
                body,
                kind,
                ts,
            } => {
                let key = (sender.clone(), cid.clone());
                if let Some(original) = self.by_cid.get(&key) {
                    let again = Sent {
                        duplicate: true,
                        deliveries: Vec::new(),
                        ..original.clone()
                    };
                    return Completion::Sent {
                        tag,
                        result: Ok(again),
                    };
                }
                self.next_mid += 1;
                let mid = self.next_mid;
                let conv = dm_conv(&sender, &to);
                let entry = Entry {
                    seq: 0,
                    mid,
                    conv: conv.clone(),
                    from: sender.clone(),
                    cid: cid.clone(),
                    body: body.clone(),
                    kind: kind.clone(),
                    ts,
                    ref_mid: None,
                    recalled: false,
                };
                let sender_seq = self.append(&sender, entry.clone());
                let mut deliveries = vec![(sender.clone(), sender_seq)];
                if to != sender {
                    deliveries.push((to.clone(), self.append(&to, entry)));
                }
                let sent = Sent {
                    mid,
                    conv,
                    ts,
                    sender_seq,
                    duplicate: false,
                    deliveries,
                    from: sender,
                    cid,
                    body,
                    kind,
                };
                self.by_cid.insert(key, sent.clone());
                Completion::Sent {
                    tag,
                    result: Ok(sent),
                }
            }
            Job::Page {
                tag,
                user,
                after,
                limit,
                max_bytes,
            } => {
                // As the real reader: at most `limit` entries, stopping once the bodies
                // reach `max_bytes` (at least one).
                let mut entries = Vec::new();
                let mut bytes = 0;
                for entry in self.inboxes.get(&user).into_iter().flatten() {
                    if entry.seq <= after || entries.len() >= limit as usize || bytes >= max_bytes {
                        continue;
                    }
                    bytes += entry.body.len() as u64;
                    entries.push(entry.clone());
                }
                let head = self.head(&user);
                Completion::Page {
                    tag,
                    user,
                    after,
                    result: Ok(Page { entries, head }),
                }
            }
            other => panic!("the fake store does not run {other:?}"),
        }
    }
}

/// The completion a failed job gets.
fn failed(job: &Job) -> Completion {
    let error = StoreError::Sqlite {
        code: 10, // SQLITE_IOERR
        message: "disk I/O error".into(),
    };
    match job.clone() {
        Job::Send { tag, .. } => Completion::Sent {
            tag,
            result: Err(error),
        },
        Job::Page {
            tag, user, after, ..
        } => Completion::Page {
            tag,
            user,
            after,
            result: Err(error),
        },
        other => panic!("the fake store has no failure for {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// What one call to the hub produced
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
enum Ev {
    Frame(ConnKey, Value),
    Close(ConnKey, u16),
    Store(Job),
}

/// The actions of one or more hub calls, in order, frames parsed.
#[derive(Debug, Default)]
struct Out(Vec<Ev>);

impl Out {
    fn extend(&mut self, other: Out) {
        self.0.extend(other.0);
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn frames(&self, conn: ConnKey) -> Vec<&Value> {
        self.0
            .iter()
            .filter_map(|ev| match ev {
                Ev::Frame(c, v) if *c == conn => Some(v),
                _ => None,
            })
            .collect()
    }

    fn typed(&self, conn: ConnKey, ty: &str) -> Vec<&Value> {
        self.frames(conn)
            .into_iter()
            .filter(|v| v["type"] == ty)
            .collect()
    }

    /// The only frame of type `ty` to `conn`.
    fn one(&self, conn: ConnKey, ty: &str) -> &Value {
        let found = self.typed(conn, ty);
        assert_eq!(found.len(), 1, "expected one {ty} to {conn} in {self:#?}");
        found[0]
    }

    /// The types of the frames to `conn`, in order.
    fn types(&self, conn: ConnKey) -> Vec<String> {
        self.frames(conn)
            .iter()
            .map(|v| v["type"].as_str().unwrap_or("?").to_owned())
            .collect()
    }

    fn msg_seqs(&self, conn: ConnKey) -> Vec<u64> {
        self.typed(conn, "msg")
            .iter()
            .map(|v| v["seq"].as_u64().expect("msg.seq"))
            .collect()
    }

    fn closes(&self) -> Vec<(ConnKey, u16)> {
        self.0
            .iter()
            .filter_map(|ev| match ev {
                Ev::Close(conn, code) => Some((*conn, *code)),
                _ => None,
            })
            .collect()
    }

    fn jobs(&self) -> Vec<&Job> {
        self.0
            .iter()
            .filter_map(|ev| match ev {
                Ev::Store(job) => Some(job),
                _ => None,
            })
            .collect()
    }

    /// The page reads asked for, as `(user, after, limit)`.
    fn pages(&self) -> Vec<(String, u64, u32)> {
        self.jobs()
            .into_iter()
            .filter_map(|job| match job {
                Job::Page {
                    user, after, limit, ..
                } => Some((user.clone(), *after, *limit)),
                _ => None,
            })
            .collect()
    }

    fn has_send_job(&self) -> bool {
        self.jobs()
            .iter()
            .any(|job| matches!(job, Job::Send { .. }))
    }
}

// ---------------------------------------------------------------------------------------
// The harness: hub + fake store + clock
// ---------------------------------------------------------------------------------------

struct Harness {
    hub: Hub,
    store: FakeStore,
    now: Now,
    /// Jobs the hub asked for and the test has not run or refused yet, oldest first.
    queue: VecDeque<Job>,
    /// Plays a reactor whose connections do not read: an `AwaitOutput` is held here until
    /// the test drains it, instead of being answered at once.
    hold_output: bool,
    awaiting_output: Vec<ConnKey>,
}

impl Harness {
    fn new(config: HubConfig) -> Harness {
        Harness::seeded(config, &[])
    }

    /// A hub started over a store that already holds `seeds` entries per user.
    fn seeded(config: HubConfig, seeds: &[(&str, u64)]) -> Harness {
        let mut store = FakeStore::default();
        for &(user, n) in seeds {
            store.seed(user, n);
        }
        Harness {
            hub: Hub::new(config, T0),
            store,
            now: Now {
                mono: T0,
                wall: WALL0,
            },
            queue: VecDeque::new(),
            hold_output: false,
            awaiting_output: Vec::new(),
        }
    }

    fn collect(&mut self, actions: Vec<Action>) -> Out {
        let mut out = Out::default();
        let mut actions = VecDeque::from(actions);
        while let Some(action) = actions.pop_front() {
            out.0.push(match action {
                Action::AwaitOutput { conn } if self.hold_output => {
                    self.awaiting_output.push(conn);
                    continue;
                }
                // A reactor whose clients read keeps every backlog within the soft cap.
                Action::AwaitOutput { conn } => {
                    let mut more = Vec::new();
                    self.hub.output_drained(conn, self.now, &mut more);
                    actions.extend(more);
                    continue;
                }
                Action::Send { conn, text, .. } => {
                    let value: Value = serde_json::from_slice(&text)
                        .unwrap_or_else(|e| panic!("frame to {conn} is not JSON ({e}): {text:?}"));
                    assert!(value["type"].is_string(), "frame without a type: {value}");
                    Ev::Frame(conn, value)
                }
                Action::Close { conn, code, .. } => Ev::Close(conn, code),
                Action::Store(job) => {
                    self.queue.push_back(job.clone());
                    Ev::Store(job)
                }
            });
        }
        out
    }

    fn call(&mut self, f: impl FnOnce(&mut Hub, Now, &mut Vec<Action>)) -> Out {
        let mut actions = Vec::new();
        f(&mut self.hub, self.now, &mut actions);
        self.collect(actions)
    }

    /// A connection opens. When its user had none open, the hub reads the user's head
    /// before the `welcome`; the store here answers that read at once.
    fn connect(&mut self, conn: ConnKey, user: &str) -> Out {
        let mut out = self.call(|hub, now, out| hub.connect(conn, user, now, out));
        let greeting =
            |job: &Job| matches!(job, Job::Page { user: u, after: u64::MAX, .. } if u == user);
        if let Some(at) = self.queue.iter().position(greeting) {
            let job = self.queue.remove(at).expect("in range");
            out.0
                .retain(|ev| !matches!(ev, Ev::Store(job) if greeting(job)));
            let completion = self.run(&job);
            out.extend(self.deliver(completion));
        }
        out
    }

    /// The output of `conn`, held since its `AwaitOutput`, drained.
    fn drain_output(&mut self, conn: ConnKey) -> Out {
        let held = self.awaiting_output.len();
        self.awaiting_output.retain(|&c| c != conn);
        assert!(
            self.awaiting_output.len() < held,
            "conn {conn} was not awaiting output"
        );
        self.call(|hub, now, out| hub.output_drained(conn, now, out))
    }

    fn disconnect(&mut self, conn: ConnKey) -> Out {
        self.call(|hub, _, out| hub.disconnect(conn, out))
    }

    /// A text frame from `conn`.
    fn recv(&mut self, conn: ConnKey, text: &str) -> Out {
        self.call(|hub, now, out| hub.message(conn, text.as_bytes(), now, out))
    }

    fn req(&mut self, conn: ConnKey, request: Value) -> Out {
        self.recv(conn, &request.to_string())
    }

    fn send(&mut self, conn: ConnKey, to: &str, cid: &str) -> Out {
        let body = format!("body of {cid}");
        self.req(
            conn,
            json!({"type": "send", "cid": cid, "to": format!("user:{to}"), "body": body}),
        )
    }

    fn ack(&mut self, conn: ConnKey, seq: u64) -> Out {
        self.req(conn, json!({"type": "ack", "seq": seq}))
    }

    /// A send, committed and answered at once.
    fn commit(&mut self, conn: ConnKey, to: &str, cid: &str) -> Out {
        let mut out = self.send(conn, to, cid);
        assert!(out.has_send_job(), "send {cid} was not accepted: {out:#?}");
        out.extend(self.settle());
        out
    }

    fn set_time(&mut self, mono: u64) {
        assert!(mono >= self.now.mono, "the test clock only moves forward");
        self.now = Now {
            mono,
            wall: WALL0 + (mono - T0),
        };
    }

    /// Moves the clock to `mono` and runs the hub's timers.
    fn tick(&mut self, mono: u64) -> Out {
        self.set_time(mono);
        self.call(|hub, now, out| hub.on_time(now, out))
    }

    fn take(&mut self) -> Job {
        self.queue.pop_front().expect("a store job is pending")
    }

    /// The store does the job now; its completion is held until [`Harness::deliver`].
    fn run(&mut self, job: &Job) -> Completion {
        self.store.execute(job)
    }

    fn deliver(&mut self, completion: Completion) -> Out {
        self.call(|hub, now, out| hub.completion(completion, now, out))
    }

    /// The oldest pending job runs and its completion is delivered.
    fn complete(&mut self) -> Out {
        let job = self.take();
        let completion = self.run(&job);
        self.deliver(completion)
    }

    /// Commits and answers the oldest pending send, leaving reads where they are.
    fn complete_send(&mut self) -> Out {
        let at = self
            .queue
            .iter()
            .position(|job| matches!(job, Job::Send { .. }));
        let job = self
            .queue
            .remove(at.expect("a send job is pending"))
            .expect("in range");
        let completion = self.run(&job);
        self.deliver(completion)
    }

    /// Completes pending jobs (and those they lead to) until none is left.
    fn settle(&mut self) -> Out {
        let mut out = Out::default();
        for _ in 0..10_000 {
            if self.queue.is_empty() {
                return out;
            }
            out.extend(self.complete());
        }
        panic!("the hub keeps asking the store for more: {out:#?}");
    }

    /// The store turns the oldest pending job away (its queue is full).
    fn refuse(&mut self) -> Out {
        let job = self.take();
        self.call(|hub, now, out| hub.store_refused(job, now, out))
    }

    /// Runs the timers the way the reactor does, `on_time` at each deadline the hub reports
    /// up to `until`, and answers at once the reads a timer starts. Returns what happened,
    /// by time relative to `T0`. Pending jobs are settled first.
    fn drive_until(&mut self, until: u64) -> Vec<(u64, Out)> {
        let mut log = Vec::new();
        let mut record = |at: u64, out: Out| {
            if !out.is_empty() {
                log.push((at - T0, out));
            }
        };
        let out = self.settle();
        record(self.now.mono, out);
        for _ in 0..10_000 {
            let next = self.hub.next_deadline().filter(|&at| at <= until);
            let at = next.unwrap_or(until).max(self.now.mono);
            let mut out = self.tick(at);
            out.extend(self.settle());
            record(at, out);
            if next.is_none() {
                return log;
            }
        }
        panic!("next_deadline never got past {}", self.now.mono);
    }
}

fn times(log: &[(u64, Out)]) -> Vec<u64> {
    log.iter().map(|(at, _)| *at).collect()
}

/// Acks that time out quickly, with numbers that tell the three periods apart.
fn fast_acks() -> HubConfig {
    HubConfig {
        ack_timeout_ms: 300,
        ack_retries: 2,
        ack_retry_interval_ms: 200,
        ..HubConfig::default()
    }
}

fn assert_error(frame: &Value, code: &str, cid: Option<&str>, rid: Option<Value>) {
    assert_eq!(frame["type"], "error", "{frame}");
    assert_eq!(frame["code"], code, "{frame}");
    assert!(
        frame["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{frame}"
    );
    match cid {
        Some(cid) => assert_eq!(frame["cid"], cid, "{frame}"),
        None => assert!(frame.get("cid").is_none(), "{frame}"),
    }
    match rid {
        Some(rid) => assert_eq!(frame["rid"], rid, "{frame}"),
        None => assert!(frame.get("rid").is_none(), "{frame}"),
    }
}

// ---------------------------------------------------------------------------------------
// Connecting
// ---------------------------------------------------------------------------------------

#[test]
fn welcome_names_the_user_the_conn_the_heartbeat_and_the_head_known_at_startup() {
    let config = HubConfig {
        heartbeat_ms: 17_000,
        ..HubConfig::default()
    };
    let mut h = Harness::seeded(config, &[("bob", 7)]);
    let out = h.connect(41, "bob");
    assert_eq!(out.0.len(), 1, "only the welcome: {out:#?}");
    assert_eq!(
        out.one(41, "welcome"),
        &json!({"type": "welcome", "user": "bob", "conn": "41", "heartbeat_ms": 17_000, "inbox_seq": 7})
    );
    assert_eq!(h.hub.connections_of("bob"), 1);

    let out = h.connect(42, "newcomer");
    assert_eq!(out.one(42, "welcome")["inbox_seq"], 0);
    assert_eq!(out.one(42, "welcome")["user"], "newcomer");
    // A second device of the same user sees the same head.
    let out = h.connect(43, "bob");
    assert_eq!(out.one(43, "welcome")["inbox_seq"], 7);
    assert_eq!(h.hub.connections_of("bob"), 2);
    assert!(
        h.queue.is_empty(),
        "connecting reads nothing from the store"
    );
}

#[test]
fn welcome_reports_a_head_learned_from_commits_after_startup() {
    // carol has never connected and is not in the startup heads: the hub learns her head
    // from the delivery of a message to her.
    let mut h = Harness::seeded(HubConfig::default(), &[("alice", 2)]);
    h.connect(1, "alice");
    h.commit(1, "carol", "c1");
    h.commit(1, "carol", "c2");
    let out = h.connect(2, "carol");
    assert_eq!(out.one(2, "welcome")["inbox_seq"], 2);
    let out = h.connect(3, "alice");
    assert_eq!(out.one(3, "welcome")["inbox_seq"], 4);
}

// ---------------------------------------------------------------------------------------
// Sending: routing and duplicates
// ---------------------------------------------------------------------------------------

#[test]
fn a_send_is_stored_as_the_session_user_then_answered_and_fanned_out() {
    // Different heads for the two users, so a sender seq and a recipient seq cannot be
    // confused for one another.
    let mut h = Harness::seeded(fast_acks(), &[("alice", 3), ("bob", 5)]);
    for (conn, user) in [(1, "alice"), (2, "alice"), (3, "bob"), (4, "bob")] {
        h.connect(conn, user);
    }
    h.set_time(T0 + 5);
    let out = h.req(
        1,
        json!({"type": "send", "rid": "r1", "cid": "c1", "to": "user:bob", "body": "hi",
               "from": "mallory"}),
    );
    assert_eq!(
        out.0.len(),
        1,
        "nothing but the store job before the commit: {out:#?}"
    );
    let job = h.take();
    let Job::Send {
        tag,
        ref sender,
        ref cid,
        ref to,
        ref body,
        ref kind,
        ts,
    } = job
    else {
        panic!("expected a send job, got {job:?}");
    };
    assert_eq!(
        sender, "alice",
        "the sender is the session's user, never the JSON's"
    );
    assert_eq!(
        (cid.as_str(), to.as_str(), body.as_str()),
        ("c1", "bob", "hi")
    );
    assert_eq!(kind, "text", "kind defaults to text");
    assert_eq!(ts, WALL0 + 5, "ts is the wall clock at the send");
    assert!(tag != 0);

    // The commit is answered a little later; `ts` stays the send's.
    h.set_time(T0 + 9);
    let completion = h.run(&job);
    let out = h.deliver(completion);
    let mid = h.store.entry("bob", 6).mid;
    assert_eq!(
        out.frames(1),
        vec![
            &json!({"type": "sent", "rid": "r1", "cid": "c1", "mid": mid,
                     "conv": "dm:alice:bob", "seq": 4, "ts": WALL0 + 5})
        ],
        "device 1 gets `sent` only, with alice's seq, and no msg"
    );
    let to_bob = json!({"type": "msg", "seq": 6, "mid": mid, "conv": "dm:alice:bob",
                        "from": "alice", "body": "hi", "ts": WALL0 + 5, "kind": "text"});
    assert_eq!(out.frames(3), vec![&to_bob], "no cid for a recipient");
    assert_eq!(out.frames(4), vec![&to_bob]);
    assert_eq!(
        out.frames(2),
        vec![
            &json!({"type": "msg", "seq": 4, "mid": mid, "conv": "dm:alice:bob",
                     "from": "alice", "body": "hi", "ts": WALL0 + 5, "kind": "text",
                     "cid": "c1"})
        ],
        "the sender's other device gets the msg with its cid"
    );
    assert!(out.jobs().is_empty() && out.closes().is_empty());

    // Bob answers: device 1 counts seq 4 as delivered, so it is pushed 5 live, and never
    // its own message back.
    let out = h.commit(3, "alice", "r1");
    assert_eq!(out.msg_seqs(1), vec![5]);
    assert!(
        out.pages().is_empty(),
        "device 1 needed no catch-up: {out:#?}"
    );
    h.ack(1, 5);

    // Nobody else acks. Devices 2, 3 and 4 get re-pushes and are closed in the end; on
    // device 1 the `sent` stood in for the msg, so it is never pushed seq 4, nor closed.
    let log = h.drive_until(T0 + 10_000);
    for (at, out) in &log {
        assert!(out.frames(1).is_empty(), "at +{at}: {out:#?}");
        assert!(
            !out.closes().iter().any(|&(c, _)| c == 1),
            "at +{at}: {out:#?}"
        );
    }
    let closed: HashSet<ConnKey> = log
        .iter()
        .flat_map(|(_, out)| out.closes())
        .map(|(conn, code)| {
            assert_eq!(code, ACK_TIMEOUT);
            conn
        })
        .collect();
    assert_eq!(closed, HashSet::from([2, 3, 4]));
}

#[test]
fn a_kind_other_than_text_is_passed_through() {
    let mut h = Harness::new(HubConfig::default());
    h.connect(1, "alice");
    h.connect(2, "bob");
    h.req(
        1,
        json!({"type": "send", "cid": "c", "to": "user:bob", "body": "{}", "kind": "sticker"}),
    );
    assert!(matches!(h.queue.front(), Some(Job::Send { kind, .. }) if kind == "sticker"));
    let out = h.settle();
    assert_eq!(out.one(2, "msg")["kind"], "sticker");
}

#[test]
fn a_note_to_self_answers_the_sender_and_reaches_its_other_devices() {
    let mut h = Harness::new(HubConfig::default());
    h.connect(1, "alice");
    h.connect(2, "alice");
    let out = h.commit(1, "alice", "note");
    assert_eq!(out.frames(1).len(), 1);
    assert_eq!(out.one(1, "sent")["seq"], 1);
    assert_eq!(out.one(1, "sent")["conv"], "dm:alice:alice");
    assert_eq!(out.frames(2).len(), 1);
    let msg = out.one(2, "msg");
    assert_eq!(
        (msg["seq"].as_u64(), &msg["cid"]),
        (Some(1), &json!("note"))
    );
}

#[test]
fn a_duplicate_completion_repeats_the_sent_and_pushes_nothing() {
    let mut h = Harness::new(HubConfig::default());
    h.connect(1, "alice");
    h.connect(2, "alice");
    h.connect(3, "bob");
    let request = json!({"type": "send", "rid": 9, "cid": "c1", "to": "user:bob", "body": "hi"});
    let first = h.req(1, request.clone());
    assert!(first.has_send_job());
    let first = h.settle();
    let sent = first.one(1, "sent").clone();
    assert_eq!(first.msg_seqs(2), vec![1]);
    assert_eq!(first.msg_seqs(3), vec![1]);

    // The client lost the `sent` and sends the same cid again, later.
    h.set_time(T0 + 2_000);
    let again = h.req(1, request);
    assert!(again.has_send_job(), "deduplication is the store's job");
    let job = h.take();
    let completion = h.run(&job);
    assert!(
        matches!(&completion, Completion::Sent { result: Ok(s), .. } if s.duplicate && s.deliveries.is_empty())
    );
    let out = h.deliver(completion);
    assert_eq!(
        out.frames(1),
        vec![&sent],
        "the very same sent, original ts included"
    );
    assert!(
        out.frames(2).is_empty() && out.frames(3).is_empty(),
        "{out:#?}"
    );
    assert!(out.jobs().is_empty() && out.closes().is_empty());
}

// ---------------------------------------------------------------------------------------
// Ack deadlines
// ---------------------------------------------------------------------------------------

#[test]
fn unacked_pushes_are_repushed_after_the_timeout_then_each_interval_then_closed_4008() {
    let mut h = Harness::new(fast_acks());
    h.connect(1, "alice");
    h.connect(2, "bob");
    for cid in ["a", "b", "c"] {
        assert_eq!(h.commit(1, "bob", cid).typed(2, "msg").len(), 1);
    }
    let first = h
        .hub
        .next_deadline()
        .expect("a deadline for the unacked pushes");
    assert!((T0..=T0 + 300).contains(&first), "{first}");

    h.set_time(T0 + 10);
    assert!(h.ack(2, 1).is_empty(), "an ack without rid gets no reply");
    assert!(h.tick(T0 + 299).is_empty(), "nothing before the timeout");

    let log = h.drive_until(T0 + 5_000);
    assert_eq!(times(&log), vec![300, 500, 700], "{log:#?}");
    for (at, out) in &log[..2] {
        // The re-push is a read of what is unacked: after the ack, as many as unacked.
        assert_eq!(out.pages(), vec![("bob".to_owned(), 1, 2)], "at +{at}");
        assert_eq!(out.msg_seqs(2), vec![2, 3], "at +{at}");
        assert_eq!(out.frames(2).len(), 2, "at +{at}: {out:#?}");
        assert!(out.closes().is_empty());
        assert!(
            out.frames(1).is_empty(),
            "the sender's `sent` is not re-pushed"
        );
    }
    let (_, last) = &log[2];
    assert_eq!(last.closes(), vec![(2, ACK_TIMEOUT)]);
    assert!(
        last.frames(2).is_empty() && last.jobs().is_empty(),
        "{last:#?}"
    );
    assert_eq!(
        h.hub.next_deadline(),
        None,
        "a closed connection has no deadline"
    );
}

#[test]
fn next_deadline_never_lies_past_a_due_time() {
    // Each time the hub acts, the deadline reported just before must not have been later.
    let mut h = Harness::new(fast_acks());
    h.connect(1, "alice");
    h.connect(2, "bob");
    h.commit(1, "bob", "a");
    let expected = [T0 + 300, T0 + 500, T0 + 700];
    for due in expected {
        let reported = h.hub.next_deadline().expect("a pending deadline");
        assert!(
            reported <= due && reported >= h.now.mono,
            "{reported} vs {due}"
        );
        // Nothing fires before the due time, however often the reactor calls.
        let mut at = reported;
        while at < due {
            let out = h.tick(at);
            assert!(out.is_empty(), "early at +{}: {out:#?}", at - T0);
            at = h.hub.next_deadline().expect("still pending");
            assert!(at <= due, "the deadline moved past +{}", due - T0);
        }
        let mut out = h.tick(due);
        out.extend(h.settle());
        assert!(!out.is_empty(), "nothing happened at +{}", due - T0);
    }
}

#[test]
fn an_ack_of_everything_before_the_timeout_means_no_repush_and_no_close() {
    let mut h = Harness::new(fast_acks());
    h.connect(1, "alice");
    h.connect(2, "bob");
    h.commit(1, "bob", "a");
    h.commit(1, "bob", "b");
    h.set_time(T0 + 299);
    h.ack(2, 2);
    let log = h.drive_until(T0 + 60_000);
    assert!(log.is_empty(), "{log:#?}");
    assert_eq!(h.hub.next_deadline(), None);
}

#[test]
fn a_partial_ack_resets_the_retries_and_repushes_only_what_is_left() {
    let mut h = Harness::new(fast_acks());
    h.connect(1, "alice");
    h.connect(2, "bob");
    h.commit(1, "bob", "a");
    h.set_time(T0 + 250);
    h.commit(1, "bob", "b");

    let log = h.drive_until(T0 + 300);
    assert_eq!(times(&log), vec![300]);
    assert_eq!(log[0].1.pages(), vec![("bob".to_owned(), 0, 2)]);
    assert_eq!(log[0].1.msg_seqs(2), vec![1, 2]);

    // One re-push spent; acking seq 1 starts seq 2 over: its timeout counts from when it
    // was first pushed (+250), and it gets all its retries again.
    h.set_time(T0 + 310);
    h.ack(2, 1);
    let log = h.drive_until(T0 + 5_000);
    assert_eq!(times(&log), vec![550, 750, 950], "{log:#?}");
    for (at, out) in &log[..2] {
        assert_eq!(out.pages(), vec![("bob".to_owned(), 1, 1)], "at +{at}");
        assert_eq!(out.msg_seqs(2), vec![2], "at +{at}");
    }
    assert_eq!(log[2].1.closes(), vec![(2, ACK_TIMEOUT)]);
}

#[test]
fn an_ack_of_part_of_a_repush_in_flight_narrows_what_is_pushed_again() {
    let mut h = Harness::new(fast_acks());
    h.connect(1, "alice");
    h.connect(2, "bob");
    for cid in ["a", "b", "c"] {
        h.commit(1, "bob", cid);
    }
    let out = h.tick(T0 + 300);
    assert_eq!(out.pages(), vec![("bob".to_owned(), 0, 3)]);
    let repush = h.take();
    let page = h.run(&repush);
    h.set_time(T0 + 301);
    h.ack(2, 2);
    let out = h.deliver(page);
    assert_eq!(
        out.msg_seqs(2),
        vec![3],
        "seqs acked meanwhile are not pushed again"
    );
}

#[test]
fn an_ack_beyond_what_was_pushed_acks_only_what_was_pushed() {
    let mut h = Harness::new(fast_acks());
    h.connect(1, "alice");
    h.connect(2, "bob");
    h.commit(1, "bob", "a");
    h.ack(2, 99);
    h.set_time(T0 + 50);
    assert_eq!(h.commit(1, "bob", "b").msg_seqs(2), vec![2]);
    let log = h.drive_until(T0 + 350);
    assert_eq!(times(&log), vec![350], "seq 2 still needs its own ack");
    assert_eq!(log[0].1.pages(), vec![("bob".to_owned(), 1, 1)]);
    assert_eq!(log[0].1.msg_seqs(2), vec![2]);
}

#[test]
fn sync_replays_enter_the_ack_window_like_live_pushes() {
    let mut h = Harness::seeded(fast_acks(), &[("bob", 2)]);
    h.connect(2, "bob");
    h.set_time(T0 + 40);
    h.req(2, json!({"type": "sync", "after": 0}));
    assert_eq!(h.settle().msg_seqs(2), vec![1, 2]);
    let log = h.drive_until(T0 + 400);
    assert_eq!(times(&log), vec![340]);
    assert_eq!(log[0].1.pages(), vec![("bob".to_owned(), 0, 2)]);
    assert_eq!(log[0].1.msg_seqs(2), vec![1, 2]);
}

// ---------------------------------------------------------------------------------------
// The window, and the randomized order check
// ---------------------------------------------------------------------------------------

#[test]
fn a_full_window_holds_pushes_back_until_an_ack_makes_room() {
    let config = HubConfig {
        window: 2,
        ..HubConfig::default()
    };
    let mut h = Harness::new(config);
    h.connect(1, "alice");
    h.connect(2, "bob");
    let mut pushed = Vec::new();
    for cid in ["a", "b", "c"] {
        let out = h.commit(1, "bob", cid);
        assert!(
            out.pages().is_empty(),
            "no read while the window is full: {out:#?}"
        );
        pushed.extend(out.msg_seqs(2));
    }
    assert_eq!(pushed, vec![1, 2], "the third waits for room");

    let out = h.req(2, json!({"type": "ack", "seq": 1, "rid": "k"}));
    assert_eq!(out.frames(2), vec![&json!({"type": "ok", "rid": "k"})]);
    assert_eq!(
        out.pages(),
        vec![("bob".to_owned(), 2, 1)],
        "a catch-up for the room"
    );

    // A commit while the catch-up is in flight is not pushed past it.
    let catch_up = h.take();
    let out = h.commit(1, "bob", "d");
    assert!(out.frames(2).is_empty(), "{out:#?}");
    let page = h.run(&catch_up);
    let out = h.deliver(page);
    assert_eq!(
        out.msg_seqs(2),
        vec![3],
        "only as many as there is room for"
    );
    assert!(out.pages().is_empty(), "the window is full again: {out:#?}");

    let out = h.ack(2, 3);
    assert_eq!(out.pages(), vec![("bob".to_owned(), 3, 2)]);
    assert_eq!(h.settle().msg_seqs(2), vec![4]);
    // Caught up: the next commit is pushed live, no read.
    let out = h.commit(1, "bob", "e");
    assert_eq!(out.msg_seqs(2), vec![5]);
    assert!(out.pages().is_empty());
}

/// xorshift64: a fixed seed gives the same interleavings on every run and machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// A client device as the contract describes one (and as `src/client` implements it): it
/// keeps the highest seq it holds with no gap below (its cursor) and what it holds above a
/// gap, owes an ack for any `msg` (a duplicate too: the hub may still count it unacked),
/// and syncs from its cursor after connecting, after a partial page and over a gap.
struct Device {
    user: &'static str,
    conn: Option<ConnKey>,
    cursor: u64,
    held: BTreeSet<u64>,
    ack_owed: bool,
    cids: Vec<String>,
    /// Syncs sent and not answered yet: rid → after.
    syncs: HashMap<u64, u64>,
    /// Seqs this device learned from a `sent`: the hub may still push them as `msg`.
    sent_seqs: HashSet<u64>,
    stream: Stream,
}

/// What the hub promises about one connection's stream, tracked from what it sent: every
/// push that is not a re-push carries the seq after the last one, starting from the
/// `welcome`'s `inbox_seq`; a sync page runs from its `after` and its `synced.seq` is where
/// the stream goes on.
#[derive(Default)]
struct Stream {
    last: u64,
    /// What the hub counts as acked here: what re-pushes start after.
    acked: u64,
    /// During a sync page: its rid, and the last seq it replayed so far.
    page: Option<(u64, u64)>,
}

impl Device {
    /// Takes `seq` in: the cursor moves over everything now held without a gap.
    fn hold(&mut self, seq: u64) {
        if seq > self.cursor {
            self.held.insert(seq);
        }
        while self.held.remove(&(self.cursor + 1)) {
            self.cursor += 1;
        }
    }
}

#[derive(Clone, Copy)]
struct SimOptions {
    /// Advance the clock, so re-pushes and 4008 closes happen.
    time: bool,
    /// The store sometimes turns jobs away.
    refuse: bool,
}

/// Trace lines shown when a simulation fails.
const TRACE_TAIL: usize = 150;

/// Many devices, a store whose commits and reads finish in any order the real one allows,
/// and a check of every frame against what the hub promises.
struct Sim {
    rng: Rng,
    options: SimOptions,
    hub: Hub,
    store: FakeStore,
    now: Now,
    devices: Vec<Device>,
    /// Send jobs accepted, not committed yet (the writer takes them in order).
    writes: VecDeque<Job>,
    /// Committed, completion not delivered yet (delivered in commit order).
    written: VecDeque<Completion>,
    /// Page jobs accepted, not read yet (readers take them in any order).
    reads: Vec<Job>,
    /// Read, completion not delivered yet (any order).
    read: Vec<Completion>,
    next_conn: ConnKey,
    next_id: u64,
    pushes: u64,
    /// Actions of hub calls made while an earlier call's actions were being played.
    deferred: VecDeque<Vec<Action>>,
    /// What happened, for the report when a check fails: kept only when a failing seed
    /// is played again, as formatting every event slows the run down several times.
    trace: Option<Vec<String>>,
}

impl Sim {
    fn new(seed: u64, options: SimOptions) -> Sim {
        let config = HubConfig {
            window: 3,
            rate_per_sec: 1_000_000,
            rate_burst: 1_000_000,
            ..fast_acks()
        };
        let mut store = FakeStore::default();
        store.seed("alice", 2);
        store.seed("bob", 1);
        let devices = ["alice", "alice", "bob", "bob", "bob"]
            .into_iter()
            .map(|user| Device {
                user,
                conn: None,
                cursor: 0,
                held: BTreeSet::new(),
                ack_owed: false,
                cids: Vec::new(),
                syncs: HashMap::new(),
                sent_seqs: HashSet::new(),
                stream: Stream::default(),
            })
            .collect();
        let mut sim = Sim {
            rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
            options,
            hub: Hub::new(config, T0),
            store,
            now: Now {
                mono: T0,
                wall: WALL0,
            },
            devices,
            writes: VecDeque::new(),
            written: VecDeque::new(),
            reads: Vec::new(),
            read: Vec::new(),
            next_conn: 100,
            next_id: 0,
            pushes: 0,
            deferred: VecDeque::new(),
            trace: None,
        };
        for d in 0..sim.devices.len() {
            sim.reconnect(d);
        }
        sim
    }

    fn note(&mut self, line: impl FnOnce() -> String) {
        if let Some(trace) = &mut self.trace {
            trace.push(line());
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn device_of(&self, conn: ConnKey) -> Option<usize> {
        self.devices.iter().position(|d| d.conn == Some(conn))
    }

    fn live(&mut self) -> Option<usize> {
        let live: Vec<usize> = (0..self.devices.len())
            .filter(|&d| self.devices[d].conn.is_some())
            .collect();
        (!live.is_empty()).then(|| live[self.rng.below(live.len())])
    }

    fn request(&mut self, d: usize, request: Value) {
        let Some(conn) = self.devices[d].conn else {
            return;
        };
        let mut actions = Vec::new();
        let text = request.to_string();
        self.note(|| format!("device {d} conn {conn} → {text}"));
        self.hub
            .message(conn, text.as_bytes(), self.now, &mut actions);
        self.apply(actions);
    }

    fn reconnect(&mut self, d: usize) {
        if let Some(conn) = self.devices[d].conn.take() {
            self.note(|| format!("device {d} conn {conn} disconnected"));
            self.hub.disconnect(conn, &mut Vec::new());
        }
        let conn = self.next_conn;
        self.next_conn += 1;
        self.note(|| format!("device {d} connects as conn {conn}"));
        let mut actions = Vec::new();
        self.hub
            .connect(conn, self.devices[d].user, self.now, &mut actions);
        let device = &mut self.devices[d];
        device.conn = Some(conn);
        device.syncs.clear();
        device.sent_seqs.clear();
        device.stream = Stream::default();
        self.apply(actions);
        self.sync(d);
    }

    fn sync(&mut self, d: usize) {
        let rid = self.id();
        let after = self.devices[d].cursor;
        self.devices[d].syncs.insert(rid, after);
        let limit = 1 + self.rng.below(4);
        self.request(
            d,
            json!({"type": "sync", "rid": rid, "after": after, "limit": limit}),
        );
    }

    fn ack(&mut self, d: usize) {
        let device = &mut self.devices[d];
        let seq = device.cursor;
        device.ack_owed = false;
        // Mirrors the hub: an ack counts up to what this connection was pushed.
        device.stream.acked = device.stream.acked.max(seq.min(device.stream.last));
        self.request(d, json!({"type": "ack", "seq": seq}));
    }

    fn send(&mut self, d: usize) {
        let user = self.devices[d].user;
        let to = match self.rng.below(10) {
            0 => user,
            1 => "carol",
            2..=5 => "alice",
            _ => "bob",
        };
        let resend = !self.devices[d].cids.is_empty() && self.rng.chance(10);
        let cid = if resend {
            let cids = &self.devices[d].cids;
            cids[self.rng.below(cids.len())].clone()
        } else {
            let cid = format!("{user}-{}", self.id());
            self.devices[d].cids.push(cid.clone());
            cid
        };
        let body = format!("body {cid}");
        self.request(
            d,
            json!({"type": "send", "cid": cid, "to": format!("user:{to}"), "body": body}),
        );
    }

    fn execute(&mut self, job: &Job) -> Completion {
        let completion = self.store.execute(job);
        self.note(|| format!("store ran {}", summary(&completion)));
        completion
    }

    fn deliver(&mut self, completion: Completion) {
        self.note(|| format!("deliver {}", summary(&completion)));
        let mut actions = Vec::new();
        self.hub.completion(completion, self.now, &mut actions);
        self.apply(actions);
    }

    fn advance(&mut self, by: u64) {
        let until = self.now.mono + by;
        loop {
            let at = self
                .hub
                .next_deadline()
                .filter(|&at| at <= until)
                .unwrap_or(until)
                .max(self.now.mono);
            self.now = Now {
                mono: at,
                wall: WALL0 + (at - T0),
            };
            self.note(|| format!("on_time +{}", at - T0));
            let mut actions = Vec::new();
            self.hub.on_time(self.now, &mut actions);
            self.apply(actions);
            if at == until {
                return;
            }
        }
    }

    /// Plays the actions of one hub call as the reactor, the store front and the clients
    /// would; then the clients react to what they read.
    fn apply(&mut self, actions: Vec<Action>) {
        // A sync page is the run of msgs that a `synced` in the same call ends.
        let frames: Vec<Option<Value>> = actions
            .iter()
            .map(|action| match action {
                Action::Send { text, .. } => Some(serde_json::from_slice(text).expect("JSON")),
                _ => None,
            })
            .collect();
        let mut pages: HashMap<ConnKey, u64> = HashMap::new();
        for (action, frame) in actions.iter().zip(&frames) {
            if let (Action::Send { conn, .. }, Some(frame)) = (action, frame) {
                if frame["type"] == "synced" {
                    let rid = frame["rid"].as_u64().expect("a sync rid");
                    assert!(pages.insert(*conn, rid).is_none(), "two pages in one call");
                }
            }
        }
        for (&conn, &rid) in &pages {
            if let Some(d) = self.device_of(conn) {
                let after = self.devices[d].syncs.get(&rid).copied();
                let after = after.expect("synced answers a sync that was sent");
                self.devices[d].stream.page = Some((rid, after));
            }
        }
        for (action, frame) in actions.into_iter().zip(frames) {
            match action {
                Action::Store(job) => {
                    self.note(|| format!("  job {job:?}"));
                    if self.options.refuse && self.rng.chance(15) {
                        self.note(|| "  refused".to_owned());
                        let mut more = Vec::new();
                        self.hub.store_refused(job, self.now, &mut more);
                        self.deferred.push_back(more);
                    } else if matches!(job, Job::Send { .. }) {
                        self.writes.push_back(job);
                    } else {
                        self.reads.push(job);
                    }
                }
                // The drain comes later, as it does from a real reactor.
                Action::AwaitOutput { conn } => {
                    let mut more = Vec::new();
                    self.hub.output_drained(conn, self.now, &mut more);
                    self.deferred.push_back(more);
                }
                Action::Close { conn, code, .. } => {
                    self.note(|| format!("  close {conn} {code}"));
                    assert_eq!(code, ACK_TIMEOUT, "only ack timeouts close here");
                    assert!(self.options.time, "a close without any time passing");
                    // The reactor drops whatever the hub still sends to a closing
                    // connection, and reports it closed.
                    if let Some(d) = self.device_of(conn) {
                        self.devices[d].conn = None;
                        self.hub.disconnect(conn, &mut Vec::new());
                    }
                }
                Action::Send { conn, text, .. } => {
                    let Some(d) = self.device_of(conn) else {
                        let text = String::from_utf8_lossy(&text);
                        self.note(|| format!("  dropped, conn {conn} ← {text}"));
                        continue;
                    };
                    let frame = frame.expect("parsed above");
                    self.note(|| format!("  device {d} conn {conn} ← {frame}"));
                    if self.frame(d, &frame) {
                        // A partial page: the client syncs on at once. Its request
                        // crosses whatever the hub has produced and not delivered yet.
                        let rid = self.id();
                        let after = self.devices[d].cursor;
                        self.devices[d].syncs.insert(rid, after);
                        let text = json!({"type": "sync", "rid": rid, "after": after});
                        let text = text.to_string();
                        self.note(|| format!("device {d} conn {conn} → {text}"));
                        let mut actions = Vec::new();
                        self.hub
                            .message(conn, text.as_bytes(), self.now, &mut actions);
                        self.deferred.push_back(actions);
                    }
                }
            }
        }
        // Later hub calls, in the order they were made: their frames left after these.
        while let Some(more) = self.deferred.pop_front() {
            self.apply(more);
        }
        // A device that sees a gap syncs over it, once at a time.
        for d in 0..self.devices.len() {
            let device = &self.devices[d];
            if device.conn.is_some() && device.syncs.is_empty() && !device.held.is_empty() {
                self.sync(d);
            }
        }
    }

    /// One frame reaches device `d`. Returns whether it ended a partial sync page.
    fn frame(&mut self, d: usize, frame: &Value) -> bool {
        let time = self.options.time;
        if frame["type"] == "msg" {
            self.pushes += 1;
        }
        let device = &mut self.devices[d];
        let (user, conn) = (device.user, device.conn);
        match frame["type"].as_str().expect("type") {
            "msg" => {
                let seq = frame["seq"].as_u64().expect("seq");
                let entry = self.store.entry(user, seq);
                assert_eq!(frame["mid"], entry.mid, "msg {seq} to {user}: {frame}");
                assert_eq!(frame["from"], entry.from.as_str());
                assert_eq!(frame["body"], entry.body.as_str());
                assert_eq!(frame.get("cid").is_some(), entry.from == user, "{frame}");
                device.hold(seq);
                device.ack_owed = true;
                let stream = &mut device.stream;
                if let Some((rid, last)) = stream.page {
                    assert_eq!(
                        seq,
                        last + 1,
                        "device {d} ({user}, conn {conn:?}): sync {rid} replayed {seq} after {last}"
                    );
                    stream.page = Some((rid, seq));
                } else if seq == stream.last + 1 {
                    stream.last = seq;
                } else {
                    assert!(
                        seq <= stream.last,
                        "gap: device {d} ({user}, conn {conn:?}) was pushed {seq} after {}",
                        stream.last
                    );
                    let repush = time && seq > stream.acked;
                    let echo = device.sent_seqs.contains(&seq);
                    assert!(
                        repush || echo,
                        "repeat: device {d} ({user}, conn {conn:?}) was pushed {seq} again \
                         (stream at {}, acked {})",
                        stream.last,
                        stream.acked
                    );
                }
            }
            "sent" => {
                let seq = frame["seq"].as_u64().expect("seq");
                let cid = frame["cid"].as_str().expect("cid");
                let original = &self.store.by_cid[&(user.to_owned(), cid.to_owned())];
                assert_eq!(seq, original.sender_seq, "{frame}");
                assert_eq!(frame["mid"], original.mid);
                device.sent_seqs.insert(seq);
                device.hold(seq);
                // Where the connection was caught up, the `sent` is this seq's push.
                if seq == device.stream.last + 1 && device.stream.page.is_none() {
                    device.stream.last = seq;
                }
            }
            "synced" => {
                let rid = frame["rid"].as_u64().expect("a sync rid");
                let after = device.syncs.remove(&rid).expect("an outstanding sync");
                let seq = frame["seq"].as_u64().expect("seq");
                let (page_rid, last) = device.stream.page.take().expect("a page");
                assert_eq!(page_rid, rid);
                assert_eq!(seq, last, "synced.seq is the last replayed: {frame}");
                let head = frame["head"].as_u64().expect("head");
                let more = frame["more"] == true;
                assert!(seq <= head || seq == after, "{frame}");
                assert_eq!(
                    more,
                    seq < head,
                    "more is whether the page stopped short: {frame}"
                );
                device.stream.last = seq;
                // Mirrors the hub: a sync starts the connection's acks over from `after`.
                device.stream.acked = after;
                return more;
            }
            "error" => {
                let superseded = frame["code"] == "bad_request"
                    && frame["message"]
                        .as_str()
                        .unwrap_or("")
                        .contains("superseded");
                let busy = self.options.refuse && frame["code"] == "unavailable";
                assert!(superseded || busy, "unexpected error {frame}");
                if let Some(rid) = frame["rid"].as_u64() {
                    device.syncs.remove(&rid);
                }
            }
            "welcome" => {
                let head = frame["inbox_seq"].as_u64().expect("inbox_seq");
                device.stream.last = head;
                device.stream.acked = head;
            }
            "ok" | "pong" => {}
            other => panic!("unexpected frame type {other}: {frame}"),
        }
        false
    }

    fn step(&mut self) {
        match self.rng.below(100) {
            0..=21 => {
                if let Some(d) = self.live() {
                    self.send(d);
                }
            }
            22..=35 => {
                if let Some(job) = self.writes.pop_front() {
                    let completion = self.execute(&job);
                    self.written.push_back(completion);
                }
            }
            36..=49 => {
                if let Some(completion) = self.written.pop_front() {
                    self.deliver(completion);
                }
            }
            50..=59 => {
                if !self.reads.is_empty() {
                    let i = self.rng.below(self.reads.len());
                    let job = self.reads.swap_remove(i);
                    let completion = self.execute(&job);
                    self.read.push(completion);
                }
            }
            60..=71 => {
                if !self.read.is_empty() {
                    let i = self.rng.below(self.read.len());
                    let completion = self.read.swap_remove(i);
                    self.deliver(completion);
                }
            }
            72..=85 => {
                if let Some(d) = self.live() {
                    self.ack(d);
                }
            }
            86..=90 => {
                if let Some(d) = self.live() {
                    self.sync(d);
                }
            }
            91..=93 => {
                let d = self.rng.below(self.devices.len());
                self.reconnect(d);
            }
            _ => {
                if self.options.time {
                    let by = self.rng.below(400) as u64;
                    self.advance(by);
                } else if let Some(d) = self.live() {
                    self.request(d, json!({"type": "ping"}));
                }
            }
        }
    }

    /// Lets everything finish: the store answers all, clients ack, closed devices come
    /// back. Then every device must hold its whole inbox.
    fn drain(&mut self, seed: u64) {
        if std::mem::take(&mut self.options.refuse) {
            // A client whose sync was refused (`unavailable`) syncs again; until then a
            // connection paused after a partial page stays paused, by design.
            for d in 0..self.devices.len() {
                if self.devices[d].conn.is_some() {
                    self.sync(d);
                }
            }
        }
        for _ in 0..1_000 {
            let mut busy = false;
            while let Some(job) = self.writes.pop_front() {
                let completion = self.execute(&job);
                self.written.push_back(completion);
                busy = true;
            }
            while let Some(completion) = self.written.pop_front() {
                self.deliver(completion);
                busy = true;
            }
            while let Some(job) = self.reads.pop() {
                let completion = self.execute(&job);
                self.deliver(completion);
                busy = true;
            }
            for d in 0..self.devices.len() {
                if self.devices[d].conn.is_none() {
                    self.reconnect(d);
                    busy = true;
                } else if self.devices[d].ack_owed {
                    self.ack(d);
                    busy = true;
                }
            }
            let behind = self
                .devices
                .iter()
                .any(|device| device.cursor < self.store.head(device.user));
            if !busy && self.read.is_empty() && behind {
                // A read the store refused is retried on the hub's timer: let time pass,
                // as it does for a real server.
                self.advance(100);
                continue;
            }
            if !busy && self.read.is_empty() {
                for (d, device) in self.devices.iter().enumerate() {
                    let head = self.store.head(device.user);
                    assert_eq!(
                        device.cursor, head,
                        "seed {seed}: device {d} ({}) is stuck below its head",
                        device.user
                    );
                    assert!(device.held.is_empty() && device.syncs.is_empty());
                }
                return;
            }
            while let Some(completion) = self.read.pop() {
                self.deliver(completion);
            }
        }
        let state: Vec<_> = self
            .devices
            .iter()
            .map(|d| (d.user, d.cursor, self.store.head(d.user), d.conn))
            .collect();
        panic!(
            "seed {seed}: the hub never went quiet; devices (user, cursor, head, conn): {state:?}"
        );
    }
}

fn summary(completion: &Completion) -> String {
    match completion {
        Completion::Sent {
            tag,
            result: Ok(sent),
        } => format!(
            "sent tag {tag} {} dup {} deliveries {:?}",
            sent.cid, sent.duplicate, sent.deliveries
        ),
        Completion::Page {
            tag,
            user,
            after,
            result: Ok(page),
        } => {
            let seqs: Vec<u64> = page.entries.iter().map(|e| e.seq).collect();
            format!(
                "page tag {tag} {user} after {after}: {seqs:?} head {}",
                page.head
            )
        }
        other => format!("{other:?}"),
    }
}

fn simulate(options: SimOptions, seeds: std::ops::Range<u64>, steps: usize) {
    let run = |sim: &mut Sim, seed: u64| {
        for _ in 0..steps {
            sim.step();
        }
        sim.drain(seed);
    };
    let mut pushes = 0;
    for seed in seeds.clone() {
        let mut sim = Sim::new(seed, options);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run(&mut sim, seed);
        }));
        if let Err(panic) = outcome {
            // The same seed again, this time keeping the story of how it got there.
            let mut sim = Sim::new(seed, options);
            sim.trace = Some(Vec::new());
            let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run(&mut sim, seed);
            }));
            let trace = sim.trace.unwrap_or_default();
            let tail = trace.len().saturating_sub(TRACE_TAIL);
            eprintln!(
                "seed {seed}, the last events:\n{}",
                trace[tail..].join("\n")
            );
            if let Ok(path) = std::env::var("HUB_SIM_TRACE") {
                std::fs::write(path, trace.join("\n")).ok();
            }
            assert!(again.is_err(), "seed {seed} passed when played again");
            std::panic::resume_unwind(panic);
        }
        pushes += sim.pushes;
    }
    // The run must have exercised something for its silence to mean anything.
    assert!(
        pushes > 50 * (seeds.end - seeds.start),
        "only {pushes} pushes"
    );
}

#[test]
fn random_interleavings_never_skip_or_repeat_a_seq() {
    let options = SimOptions {
        time: false,
        refuse: false,
    };
    simulate(options, 1..301, 400);
}

#[test]
fn random_interleavings_with_repushes_and_ack_timeouts_never_skip_a_seq() {
    let options = SimOptions {
        time: true,
        refuse: false,
    };
    simulate(options, 1_001..1_201, 400);
}

#[test]
fn random_interleavings_with_store_refusals_never_skip_a_seq() {
    let options = SimOptions {
        time: true,
        refuse: true,
    };
    simulate(options, 2_001..2_201, 400);
}

// ---------------------------------------------------------------------------------------
// Sync
// ---------------------------------------------------------------------------------------

#[test]
fn sync_replays_a_page_in_order_then_synced() {
    let mut h = Harness::seeded(HubConfig::default(), &[("bob", 5)]);
    h.connect(2, "bob");
    let out = h.req(
        2,
        json!({"type": "sync", "rid": "s1", "after": 0, "limit": 2}),
    );
    assert!(
        out.frames(2).is_empty(),
        "nothing before the read: {out:#?}"
    );
    assert_eq!(out.pages(), vec![("bob".to_owned(), 0, 2)]);
    let out = h.complete();
    assert_eq!(out.types(2), vec!["msg", "msg", "synced"]);
    assert_eq!(out.msg_seqs(2), vec![1, 2]);
    let first = out.frames(2)[0];
    let entry = h.store.entry("bob", 1);
    assert_eq!(
        first,
        &json!({"type": "msg", "seq": 1, "mid": entry.mid, "conv": "dm:bob:zed",
                "from": "zed", "body": "old 0", "ts": entry.ts, "kind": "text"})
    );
    assert_eq!(
        out.one(2, "synced"),
        &json!({"type": "synced", "rid": "s1", "seq": 2, "head": 5, "more": true})
    );

    // A full page that reaches the head is not `more`.
    h.req(2, json!({"type": "sync", "after": 2, "limit": 3}));
    let out = h.complete();
    assert_eq!(out.msg_seqs(2), vec![3, 4, 5]);
    assert_eq!(
        out.one(2, "synced"),
        &json!({"type": "synced", "seq": 5, "head": 5, "more": false})
    );

    // Nothing after the cursor: `seq` is `after`.
    h.req(2, json!({"type": "sync", "rid": 3, "after": 5}));
    let out = h.complete();
    assert_eq!(out.types(2), vec!["synced"]);
    assert_eq!(
        out.one(2, "synced"),
        &json!({"type": "synced", "rid": 3, "seq": 5, "head": 5, "more": false})
    );
}

#[test]
fn sync_limits_are_capped_and_defaulted() {
    let mut h = Harness::new(HubConfig::default());
    h.connect(2, "bob");
    let cases = [
        (json!({"type": "sync", "after": 4, "limit": 5000}), 4, 1000),
        (json!({"type": "sync", "after": 4}), 4, 1000),
        (json!({"type": "sync"}), 0, 1000),
        (json!({"type": "sync", "after": 1, "limit": 0}), 1, 1),
        (json!({"type": "sync", "after": 1, "limit": 1000}), 1, 1000),
    ];
    for (request, after, limit) in cases {
        let out = h.req(2, request.clone());
        assert_eq!(
            out.pages(),
            vec![("bob".to_owned(), after, limit)],
            "{request}"
        );
        h.settle();
    }
}

#[test]
fn after_a_partial_page_live_commits_wait_for_the_next_sync() {
    let mut h = Harness::seeded(HubConfig::default(), &[("bob", 5)]);
    h.connect(1, "alice");
    h.connect(2, "bob");
    h.req(2, json!({"type": "sync", "after": 0, "limit": 2}));
    assert_eq!(h.complete().one(2, "synced")["more"], true);

    let out = h.commit(1, "bob", "live");
    assert!(
        out.frames(2).is_empty(),
        "pushed over the gap 3..5: {out:#?}"
    );
    assert!(out.pages().is_empty(), "no catch-up either: {out:#?}");
    assert!(h.ack(2, 2).pages().is_empty(), "nor on an ack");

    h.req(2, json!({"type": "sync", "after": 2}));
    let out = h.complete();
    assert_eq!(out.msg_seqs(2), vec![3, 4, 5, 6]);
    assert_eq!(
        out.one(2, "synced"),
        &json!({"type": "synced", "seq": 6, "head": 6, "more": false})
    );
    assert!(out.pages().is_empty());

    // Caught up: live again.
    let out = h.commit(1, "bob", "live2");
    assert_eq!(out.msg_seqs(2), vec![7]);
}

#[test]
fn commits_that_complete_during_a_sync_follow_its_synced_in_order() {
    let mut h = Harness::seeded(HubConfig::default(), &[("bob", 2)]);
    h.connect(1, "alice");
    h.connect(2, "bob");
    h.req(2, json!({"type": "sync", "rid": "s", "after": 0}));
    let sync = h.take();
    // The reader's snapshot is taken before the two commits.
    let page = h.run(&sync);
    for cid in ["x", "y"] {
        let out = h.commit(1, "bob", cid);
        assert!(
            out.frames(2).is_empty(),
            "pushed ahead of the replay: {out:#?}"
        );
    }
    let mut out = h.deliver(page);
    assert_eq!(out.types(2), vec!["msg", "msg", "synced"]);
    assert_eq!(
        out.one(2, "synced"),
        &json!({"type": "synced", "rid": "s", "seq": 2, "head": 2, "more": false})
    );
    assert_eq!(
        out.pages(),
        vec![("bob".to_owned(), 2, 254)],
        "a catch-up for what committed meanwhile, as far as the window allows"
    );
    out.extend(h.settle());
    assert_eq!(out.msg_seqs(2), vec![1, 2, 3, 4]);
    assert_eq!(out.types(2), vec!["msg", "msg", "synced", "msg", "msg"]);
}

#[test]
fn a_sync_whose_snapshot_saw_later_commits_does_not_push_them_twice() {
    let mut h = Harness::seeded(HubConfig::default(), &[("bob", 1)]);
    h.connect(1, "alice");
    h.connect(2, "bob");
    h.req(2, json!({"type": "sync", "after": 0}));
    let sync = h.take();
    // The commit lands first, the read sees it, and only then does the hub hear of it.
    h.send(1, "bob", "x");
    let send = h.take();
    let committed = h.run(&send);
    let page = h.run(&sync);
    let out = h.deliver(page);
    assert_eq!(out.msg_seqs(2), vec![1, 2]);
    assert_eq!(out.one(2, "synced")["head"], 2);
    let out = h.deliver(committed);
    assert!(out.frames(2).is_empty(), "seq 2 again: {out:#?}");
    assert!(out.pages().is_empty());
    assert_eq!(h.commit(1, "bob", "y").msg_seqs(2), vec![3]);
}

#[test]
fn a_sync_sent_while_one_is_in_flight_runs_after_it() {
    let mut h = Harness::seeded(HubConfig::default(), &[("bob", 3)]);
    h.connect(2, "bob");
    h.req(2, json!({"type": "sync", "rid": 1, "after": 0, "limit": 1}));
    let out = h.req(2, json!({"type": "sync", "rid": 2, "after": 1, "limit": 1}));
    assert!(out.is_empty(), "queued, no second read: {out:#?}");
    let out = h.complete();
    assert_eq!(out.types(2), vec!["msg", "synced"]);
    assert_eq!(out.one(2, "synced")["rid"], 1);
    assert_eq!(
        out.pages(),
        vec![("bob".to_owned(), 1, 1)],
        "the queued sync's read"
    );
    let out = h.complete();
    assert_eq!(out.msg_seqs(2), vec![2]);
    assert_eq!(
        out.one(2, "synced"),
        &json!({"type": "synced", "rid": 2, "seq": 2, "head": 3, "more": true})
    );
    assert!(h.queue.is_empty());
}

#[test]
fn a_third_sync_supersedes_the_queued_one() {
    let mut h = Harness::seeded(HubConfig::default(), &[("bob", 3)]);
    h.connect(2, "bob");
    h.req(2, json!({"type": "sync", "rid": 1, "after": 0, "limit": 1}));
    assert!(h
        .req(2, json!({"type": "sync", "rid": 2, "after": 0}))
        .is_empty());
    let out = h.req(2, json!({"type": "sync", "rid": 3, "after": 1}));
    // Each request still gets exactly one reply.
    assert_error(out.one(2, "error"), "bad_request", None, Some(json!(2)));
    assert!(out.jobs().is_empty());
    let out = h.complete();
    assert_eq!(out.one(2, "synced")["rid"], 1);
    assert_eq!(out.pages(), vec![("bob".to_owned(), 1, 1000)]);
    let out = h.complete();
    assert_eq!(out.msg_seqs(2), vec![2, 3]);
    assert_eq!(out.one(2, "synced")["rid"], 3);
}

#[test]
fn a_cursor_past_the_head_does_not_hold_back_new_commits() {
    // A client that outlived a restored database syncs from a cursor the server never
    // reached; what commits from now on still reaches it.
    let mut h = Harness::seeded(HubConfig::default(), &[("bob", 2)]);
    h.connect(1, "alice");
    h.connect(2, "bob");
    h.req(2, json!({"type": "sync", "after": 5}));
    let out = h.complete();
    assert_eq!(
        out.frames(2),
        vec![&json!({"type": "synced", "seq": 5, "head": 2, "more": false})]
    );
    assert_eq!(h.commit(1, "bob", "x").msg_seqs(2), vec![3]);
}

#[test]
fn sends_are_answered_in_request_order_around_a_sync() {
    let mut h = Harness::seeded(HubConfig::default(), &[("alice", 2)]);
    h.connect(1, "alice");
    h.connect(2, "bob");
    // A send before the sync: its `sent` comes before the `synced`.
    h.send(1, "bob", "before");
    h.req(1, json!({"type": "sync", "rid": "s", "after": 0}));
    assert!(h.queue.iter().all(|job| matches!(job, Job::Send { .. })));
    // A send after it waits for the `synced`.
    let out = h.send(1, "bob", "after");
    assert!(out.is_empty(), "held behind the sync: {out:#?}");
    let out = h.settle();
    let order: Vec<String> = out
        .frames(1)
        .iter()
        .map(|f| match f["type"].as_str() {
            Some("sent") => format!("sent {}", f["cid"].as_str().unwrap_or("?")),
            Some(other) => other.to_owned(),
            None => "?".to_owned(),
        })
        .collect();
    assert_eq!(
        order,
        vec!["sent before", "msg", "msg", "msg", "synced", "sent after"],
        "{out:#?}"
    );
    assert_eq!(out.msg_seqs(1), vec![1, 2, 3]);
    assert_eq!(out.msg_seqs(2), vec![1, 2]);
}

#[test]
fn sends_held_behind_a_sync_are_bounded() {
    let mut h = Harness::new(HubConfig::default());
    h.connect(1, "alice");
    h.req(1, json!({"type": "sync", "after": 0}));
    for i in 0..256 {
        assert!(h.send(1, "bob", &format!("c{i}")).is_empty());
    }
    let out = h.send(1, "bob", "one-too-many");
    assert_error(
        out.one(1, "error"),
        "unavailable",
        Some("one-too-many"),
        None,
    );
    let out = h.settle();
    assert_eq!(out.typed(1, "sent").len(), 256);
}

// ---------------------------------------------------------------------------------------
// Ping, ack, malformed requests
// ---------------------------------------------------------------------------------------

#[test]
fn ping_gets_pong_with_the_heartbeat_and_the_rid() {
    let config = HubConfig {
        heartbeat_ms: 12_345,
        ..HubConfig::default()
    };
    let mut h = Harness::new(config);
    h.connect(1, "alice");
    let out = h.req(1, json!({"type": "ping", "rid": 7}));
    assert_eq!(
        out.frames(1),
        vec![&json!({"type": "pong", "rid": 7, "heartbeat_ms": 12_345})]
    );
    let out = h.req(1, json!({"type": "ping", "rid": "p"}));
    assert_eq!(out.one(1, "pong")["rid"], "p");
    let out = h.req(1, json!({"type": "ping"}));
    assert_eq!(
        out.frames(1),
        vec![&json!({"type": "pong", "heartbeat_ms": 12_345})]
    );
}

#[test]
fn ack_with_a_rid_gets_ok_and_without_gets_nothing() {
    let mut h = Harness::new(HubConfig::default());
    h.connect(1, "alice");
    let out = h.req(1, json!({"type": "ack", "seq": 0, "rid": "a"}));
    assert_eq!(out.frames(1), vec![&json!({"type": "ok", "rid": "a"})]);
    let out = h.req(1, json!({"type": "ack", "seq": 5, "rid": 12}));
    assert_eq!(out.frames(1), vec![&json!({"type": "ok", "rid": 12})]);
    assert!(h.req(1, json!({"type": "ack", "seq": 5})).is_empty());
}

#[test]
fn malformed_requests_get_bad_request_with_the_rid_when_readable_and_no_close() {
    let mut h = Harness::new(HubConfig::default());
    h.connect(1, "alice");
    // (frame, the rid echoed, the cid echoed: only a send's, so its outbox can match it)
    let cases: [(&str, Option<Value>, Option<&str>); 11] = [
        ("{", None, None),
        ("not json", None, None),
        ("[1]", None, None),
        (r#"{"type": 5, "rid": 1}"#, None, None),
        (r#"{"rid": "m"}"#, Some(json!("m")), None),
        (
            r#"{"type": "fly", "rid": "x", "cid": "c"}"#,
            Some(json!("x")),
            None,
        ),
        (r#"{"type": "ack", "rid": 3}"#, Some(json!(3)), None),
        (
            r#"{"type": "ack", "rid": 4, "seq": "high"}"#,
            Some(json!(4)),
            None,
        ),
        (
            r#"{"type": "send", "rid": 5, "cid": "c", "to": "user:bob"}"#,
            Some(json!(5)),
            Some("c"),
        ),
        (
            r#"{"type": "send", "rid": 6, "cid": "d", "to": "user:bob", "body": 7}"#,
            Some(json!(6)),
            Some("d"),
        ),
        (r#"{"type": "ping", "rid": {"a": 1}}"#, None, None),
    ];
    for (text, rid, cid) in cases {
        let out = h.recv(1, text);
        assert_eq!(out.0.len(), 1, "{text}: {out:#?}");
        assert_error(out.one(1, "error"), "bad_request", cid, rid);
    }
    // Still open and answering.
    assert_eq!(h.req(1, json!({"type": "ping"})).types(1), vec!["pong"]);
}

// ---------------------------------------------------------------------------------------
// Send validation
// ---------------------------------------------------------------------------------------

#[test]
fn invalid_sends_are_refused_before_the_store() {
    let config = HubConfig {
        max_body: 10,
        ..HubConfig::default()
    };
    let mut h = Harness::new(config);
    h.connect(1, "alice");
    let long_cid = "c".repeat(65);
    let cases = [
        (json!({"to": "group:x", "cid": "g"}), "bad_request", "g"),
        (json!({"to": "user:bad/id", "cid": "u"}), "bad_request", "u"),
        (json!({"to": "bob", "cid": "b"}), "bad_request", "b"),
        (json!({"to": "user:", "cid": "e"}), "bad_request", "e"),
        (json!({"to": "room:bob", "cid": "r"}), "bad_request", "r"),
        (
            json!({"to": "user:bob", "cid": "t", "body": "12345678901"}),
            "too_large",
            "t",
        ),
        (json!({"to": "user:bob", "cid": ""}), "bad_request", ""),
        (
            json!({"to": "user:bob", "cid": long_cid}),
            "bad_request",
            long_cid.as_str(),
        ),
        (
            json!({"to": "user:bob", "cid": "k", "kind": "recall"}),
            "bad_request",
            "k",
        ),
        (
            json!({"to": "user:bob", "cid": "k", "kind": "group"}),
            "bad_request",
            "k",
        ),
        (
            json!({"to": "user:bob", "cid": "k", "kind": "Text"}),
            "bad_request",
            "k",
        ),
        (
            json!({"to": "user:bob", "cid": "k", "kind": ""}),
            "bad_request",
            "k",
        ),
    ];
    for (i, (fields, code, cid)) in cases.into_iter().enumerate() {
        let mut request = json!({"type": "send", "rid": i, "body": "hi"});
        for (key, value) in fields.as_object().expect("object") {
            request[key] = value.clone();
        }
        let out = h.req(1, request.clone());
        assert_eq!(out.0.len(), 1, "{request}: {out:#?}");
        assert_error(out.one(1, "error"), code, Some(cid), Some(json!(i)));
    }
    assert!(h.queue.is_empty());

    // The limits themselves are allowed.
    let edge = [
        json!({"type": "send", "cid": "c".repeat(64), "to": "user:bob", "body": "1234567890"}),
        json!({"type": "send", "cid": "x", "to": "user:a.B-9_z", "body": "", "kind": "a_b"}),
    ];
    for request in edge {
        let out = h.req(1, request.clone());
        assert!(out.has_send_job(), "{request}: {out:#?}");
        assert!(out.frames(1).is_empty());
    }
}

// ---------------------------------------------------------------------------------------
// Rate limit
// ---------------------------------------------------------------------------------------

fn rate_limited() -> HubConfig {
    HubConfig {
        rate_per_sec: 10,
        rate_burst: 5,
        rate_strikes: 3,
        ..HubConfig::default()
    }
}

#[test]
fn a_burst_past_the_bucket_is_refused_then_closed_1008() {
    let mut h = Harness::new(rate_limited());
    h.connect(1, "alice");
    for _ in 0..5 {
        assert_eq!(h.req(1, json!({"type": "ping"})).types(1), vec!["pong"]);
    }
    let out = h.req(
        1,
        json!({"type": "send", "rid": 6, "cid": "c6", "to": "user:bob", "body": "x"}),
    );
    assert_eq!(out.0.len(), 1, "{out:#?}");
    assert_error(
        out.one(1, "error"),
        "rate_limited",
        Some("c6"),
        Some(json!(6)),
    );
    assert!(h.queue.is_empty(), "a refused send is not stored");
    // `rate_strikes` refusals in a row are answered; the one after that closes.
    for rid in [7, 8] {
        let out = h.req(1, json!({"type": "ping", "rid": rid}));
        assert_error(out.one(1, "error"), "rate_limited", None, Some(json!(rid)));
        assert!(out.closes().is_empty());
    }
    let out = h.req(1, json!({"type": "ping", "rid": 9}));
    assert_eq!(out.closes(), vec![(1, POLICY)]);
    assert!(out.frames(1).is_empty(), "{out:#?}");
}

#[test]
fn the_bucket_refills_over_time_and_a_pass_takes_a_strike_off() {
    let mut h = Harness::new(rate_limited());
    h.connect(1, "alice");
    for _ in 0..5 {
        h.req(1, json!({"type": "ping"}));
    }
    for _ in 0..2 {
        assert_eq!(h.req(1, json!({"type": "ping"})).types(1), vec!["error"]);
    }
    // 10 per second: one more request every 100 ms.
    h.set_time(T0 + 99);
    assert_eq!(h.req(1, json!({"type": "ping"})).types(1), vec!["error"]);
    h.set_time(T0 + 100);
    assert_eq!(h.req(1, json!({"type": "ping"})).types(1), vec!["pong"]);
    // Three strikes, less one for the pass: one more refusal is answered, the next closes.
    let out = h.req(1, json!({"type": "ping"}));
    assert_eq!(out.types(1), vec!["error"]);
    assert!(out.closes().is_empty());
    assert_eq!(
        h.req(1, json!({"type": "ping"})).closes(),
        vec![(1, POLICY)]
    );
    // A patient client: the bucket is full again a second later, but no fuller than the
    // burst.
    h.connect(2, "bob");
    for _ in 0..6 {
        h.req(2, json!({"type": "ping"}));
    }
    h.set_time(T0 + 2_000);
    for _ in 0..5 {
        assert_eq!(h.req(2, json!({"type": "ping"})).types(2), vec!["pong"]);
    }
    assert_eq!(h.req(2, json!({"type": "ping"})).types(2), vec!["error"]);
}

#[test]
fn a_flood_at_several_times_the_rate_is_closed_though_some_requests_pass() {
    // Four requests for every one the rate allows: one passes each time the bucket has a
    // request again, and the rest are refused. The refusals outrun the passes.
    let mut h = Harness::new(rate_limited());
    h.connect(1, "alice");
    for _ in 0..5 {
        h.req(1, json!({"type": "ping"}));
    }
    let mut closed = false;
    for step in 1..=20u64 {
        h.set_time(T0 + step * 100);
        for _ in 0..4 {
            if !h.req(1, json!({"type": "ping"})).closes().is_empty() {
                closed = true;
            }
        }
        if closed {
            break;
        }
    }
    assert!(closed, "a flood four times over its rate is never closed");
}

#[test]
fn acks_count_a_tenth_against_the_rate() {
    // Cheap, so a client may send many; but not free, or they are a flood nobody counts.
    let mut h = Harness::new(rate_limited());
    h.connect(1, "alice");
    for _ in 0..4 {
        h.req(1, json!({"type": "ping"}));
    }
    // One request left in the bucket: ten acks.
    for rid in 0..10 {
        let out = h.req(1, json!({"type": "ack", "seq": 0, "rid": rid}));
        assert_eq!(out.frames(1), vec![&json!({"type": "ok", "rid": rid})]);
    }
    let out = h.req(1, json!({"type": "ack", "seq": 0, "rid": 10}));
    assert_error(out.one(1, "error"), "rate_limited", None, Some(json!(10)));
    // Refused acks are strikes like any other request; one that passes does not end the
    // run of refusals, or a flood of pings with an ack slipped in would never be closed.
    h.set_time(T0 + 10);
    let out = h.req(1, json!({"type": "ack", "seq": 0, "rid": 100}));
    assert_eq!(out.frames(1), vec![&json!({"type": "ok", "rid": 100})]);
    for rid in 11..13 {
        let out = h.req(1, json!({"type": "ack", "seq": 0, "rid": rid}));
        assert!(out.closes().is_empty());
    }
    assert_eq!(
        h.req(1, json!({"type": "ack", "seq": 0})).closes(),
        vec![(1, POLICY)]
    );
}

#[test]
fn rate_limits_are_per_connection() {
    let mut h = Harness::new(rate_limited());
    h.connect(1, "alice");
    h.connect(2, "alice");
    for _ in 0..6 {
        h.req(1, json!({"type": "ping"}));
    }
    assert_eq!(h.req(2, json!({"type": "ping"})).types(2), vec!["pong"]);
}

// ---------------------------------------------------------------------------------------
// Store refusals and store errors
// ---------------------------------------------------------------------------------------

#[test]
fn a_refused_send_is_unavailable_with_its_cid_and_can_be_sent_again() {
    let mut h = Harness::new(HubConfig::default());
    h.connect(1, "alice");
    h.connect(2, "bob");
    h.req(
        1,
        json!({"type": "send", "rid": "r", "cid": "c", "to": "user:bob", "body": "x"}),
    );
    let out = h.refuse();
    assert_eq!(out.0.len(), 1, "{out:#?}");
    assert_error(
        out.one(1, "error"),
        "unavailable",
        Some("c"),
        Some(json!("r")),
    );
    let out = h.commit(1, "bob", "c");
    assert_eq!(out.one(1, "sent")["seq"], 1);
    assert_eq!(out.msg_seqs(2), vec![1]);
}

#[test]
fn a_refused_sync_is_unavailable_with_its_rid_and_can_be_sent_again() {
    let mut h = Harness::seeded(HubConfig::default(), &[("bob", 2)]);
    h.connect(2, "bob");
    h.req(2, json!({"type": "sync", "rid": "s", "after": 0}));
    let out = h.refuse();
    assert_eq!(out.0.len(), 1, "{out:#?}");
    assert_error(out.one(2, "error"), "unavailable", None, Some(json!("s")));
    let out = h.req(2, json!({"type": "sync", "after": 0}));
    assert_eq!(out.pages(), vec![("bob".to_owned(), 0, 1000)]);
    assert_eq!(h.complete().msg_seqs(2), vec![1, 2]);
}

#[test]
fn a_refused_repush_is_tried_again_shortly_then_on_schedule() {
    let mut h = Harness::new(fast_acks());
    h.connect(1, "alice");
    h.connect(2, "bob");
    h.commit(1, "bob", "a");
    let out = h.tick(T0 + 300);
    assert_eq!(out.pages().len(), 1);
    assert!(h.refuse().is_empty());
    // Retried shortly (the store's queue was full, not the client slow), then the
    // re-push schedule goes on as before.
    let log = h.drive_until(T0 + 1_000);
    assert_eq!(times(&log), vec![350, 500, 700]);
    assert_eq!(log[0].1.msg_seqs(2), vec![1]);
    assert_eq!(log[1].1.pages().len(), 1);
    assert_eq!(log[2].1.closes(), vec![(2, ACK_TIMEOUT)]);
}

#[test]
fn a_store_error_on_a_send_is_internal_with_its_cid() {
    let mut h = Harness::new(HubConfig::default());
    h.connect(1, "alice");
    h.connect(2, "bob");
    h.req(
        1,
        json!({"type": "send", "rid": 1, "cid": "c", "to": "user:bob", "body": "x"}),
    );
    let job = h.take();
    let out = h.deliver(failed(&job));
    assert_eq!(out.0.len(), 1, "{out:#?}");
    assert_error(out.one(1, "error"), "internal", Some("c"), Some(json!(1)));
}

#[test]
fn a_store_error_on_a_sync_is_internal_with_its_rid() {
    let mut h = Harness::seeded(HubConfig::default(), &[("bob", 2)]);
    h.connect(2, "bob");
    h.req(2, json!({"type": "sync", "rid": "s", "after": 0}));
    let job = h.take();
    let out = h.deliver(failed(&job));
    assert_eq!(out.0.len(), 1, "{out:#?}");
    assert_error(out.one(2, "error"), "internal", None, Some(json!("s")));
    h.req(2, json!({"type": "sync", "after": 0}));
    assert_eq!(h.complete().msg_seqs(2), vec![1, 2]);
}

#[test]
fn a_store_error_on_a_catch_up_closes_1011() {
    // Without its read the connection cannot go on in order; the client resyncs.
    let config = HubConfig {
        window: 1,
        ..HubConfig::default()
    };
    let mut h = Harness::new(config);
    h.connect(1, "alice");
    h.connect(2, "bob");
    h.commit(1, "bob", "a");
    h.commit(1, "bob", "b");
    assert_eq!(h.ack(2, 1).pages(), vec![("bob".to_owned(), 1, 1)]);
    let job = h.take();
    let out = h.deliver(failed(&job));
    assert_eq!(out.closes(), vec![(2, SERVER_ERROR)]);
    assert!(out.frames(2).is_empty());
    let out = h.commit(1, "bob", "c");
    assert!(
        out.frames(2).is_empty() && out.pages().is_empty(),
        "{out:#?}"
    );
}

// ---------------------------------------------------------------------------------------
// Disconnect
// ---------------------------------------------------------------------------------------

#[test]
fn completions_for_a_closed_connection_reach_only_the_others() {
    let mut h = Harness::new(HubConfig::default());
    for (conn, user) in [(1, "alice"), (2, "alice"), (3, "bob"), (4, "bob")] {
        h.connect(conn, user);
    }
    h.send(1, "bob", "c");
    h.disconnect(1);
    h.disconnect(4);
    assert_eq!(h.hub.connections_of("alice"), 1);
    assert_eq!(h.hub.connections_of("bob"), 1);
    let out = h.settle();
    assert!(
        out.frames(1).is_empty() && out.frames(4).is_empty(),
        "{out:#?}"
    );
    assert_eq!(out.msg_seqs(2), vec![1]);
    assert_eq!(out.typed(2, "msg")[0]["cid"], "c");
    assert_eq!(out.msg_seqs(3), vec![1]);

    // A read for a connection that went away is answered into the void.
    h.req(3, json!({"type": "sync", "rid": 1, "after": 0}));
    h.disconnect(3);
    assert!(h.complete().is_empty());

    // A late message or a second disconnect for a gone connection is ignored.
    assert!(h.req(3, json!({"type": "ping"})).is_empty());
    h.disconnect(3);
    let out = h.connect(5, "bob");
    assert_eq!(out.one(5, "welcome")["inbox_seq"], 1);
}

#[test]
fn a_closed_connection_timer_no_longer_fires() {
    let mut h = Harness::new(fast_acks());
    h.connect(1, "alice");
    h.connect(2, "bob");
    h.commit(1, "bob", "a");
    assert!(h.hub.next_deadline().is_some());
    h.disconnect(2);
    assert_eq!(h.hub.next_deadline(), None, "its timer was cancelled");
    // With another connection's timer pending, the gone one still never fires.
    h.connect(3, "bob");
    h.commit(1, "bob", "b");
    let log = h.drive_until(T0 + 60_000);
    let conns: Vec<ConnKey> = log
        .iter()
        .flat_map(|(_, out)| out.0.iter())
        .map(|ev| match ev {
            Ev::Frame(conn, _) | Ev::Close(conn, _) => *conn,
            Ev::Store(Job::Page { .. }) => 3,
            Ev::Store(job) => panic!("{job:?}"),
        })
        .collect();
    assert!(
        !conns.is_empty() && conns.iter().all(|&c| c == 3),
        "{log:#?}"
    );
}

// ---------------------------------------------------------------------------------------
// Bugs: each test states the contract and fails today; see the `ignore` reason.
// ---------------------------------------------------------------------------------------

#[test]
fn a_refused_catch_up_is_retried_without_a_new_commit() {
    let config = HubConfig {
        window: 2,
        ..fast_acks()
    };
    let mut h = Harness::new(config);
    h.connect(1, "alice");
    h.connect(2, "bob");
    for cid in ["a", "b", "c"] {
        h.commit(1, "bob", cid);
    }
    assert_eq!(h.ack(2, 2).pages(), vec![("bob".to_owned(), 2, 2)]);
    assert!(h.refuse().is_empty(), "a catch-up refusal is silent");
    // The client holds 1..2 and knows of no gap; it keeps pinging and acking its cursor,
    // and time passes. Seq 3 should reach it.
    let mut pushed = Vec::new();
    for i in 1..=20 {
        h.set_time(T0 + i * 1_000);
        h.req(2, json!({"type": "ping"}));
        h.ack(2, if pushed.contains(&3) { 3 } else { 2 });
        for (_, out) in h.drive_until(T0 + i * 1_000 + 500) {
            pushed.extend(out.msg_seqs(2));
        }
    }
    assert!(
        pushed.contains(&3),
        "seq 3 was committed 20 s ago and never pushed"
    );
    assert!(pushed.iter().all(|&seq| seq == 3), "{pushed:?}");
}

#[test]
fn a_sync_queued_behind_a_refused_read_still_runs() {
    let mut h = Harness::seeded(HubConfig::default(), &[("bob", 3)]);
    h.connect(2, "bob");
    h.req(2, json!({"type": "sync", "rid": 1, "after": 0}));
    assert!(h
        .req(2, json!({"type": "sync", "rid": 2, "after": 0}))
        .is_empty());
    let mut out = h.refuse();
    assert_error(out.one(2, "error"), "unavailable", None, Some(json!(1)));
    // Either the queued sync's read is started (and refused or answered) or it is turned
    // away: one reply for rid 2, without the client doing anything more.
    out.extend(h.settle());
    let replies: Vec<&Value> = out
        .frames(2)
        .into_iter()
        .filter(|f| f["rid"] == 2)
        .collect();
    assert_eq!(replies.len(), 1, "rid 2 is left hanging: {out:#?}");
}

#[test]
fn a_failed_sync_read_does_not_stall_the_connection() {
    let mut h = Harness::seeded(HubConfig::default(), &[("bob", 1)]);
    h.connect(1, "alice");
    h.connect(2, "bob");
    h.req(2, json!({"type": "sync", "rid": 1, "after": 1}));
    let sync = h.take();
    let out = h.commit(1, "bob", "x");
    assert!(out.frames(2).is_empty(), "held back behind the sync read");
    let mut out = h.deliver(failed(&sync));
    assert_error(out.one(2, "error"), "internal", None, Some(json!(1)));
    out.extend(h.settle());
    assert_eq!(
        out.msg_seqs(2),
        vec![2],
        "seq 2 committed during the read: {out:#?}"
    );
}

#[test]
fn nothing_is_pushed_after_an_ack_timeout_close() {
    let mut h = Harness::new(fast_acks());
    h.connect(1, "alice");
    h.connect(2, "bob");
    h.commit(1, "bob", "a");
    h.drive_until(T0 + 300);
    // The last re-push read is slow: the close comes before its answer.
    let out = h.tick(T0 + 500);
    assert_eq!(out.pages(), vec![("bob".to_owned(), 0, 1)]);
    let repush = h.take();
    let out = h.tick(T0 + 700);
    assert_eq!(out.closes(), vec![(2, ACK_TIMEOUT)]);
    let page = h.run(&repush);
    let out = h.deliver(page);
    assert!(out.frames(2).is_empty(), "pushed after the close: {out:#?}");
}

#[test]
fn a_sync_that_ran_late_keeps_the_acks_already_received() {
    let config = HubConfig {
        window: 1,
        ..fast_acks()
    };
    let mut h = Harness::new(config);
    h.connect(1, "alice");
    h.connect(2, "bob");
    // Two syncs from cursor 0: the second waits for the first.
    h.req(2, json!({"type": "sync", "rid": 1, "after": 0}));
    h.req(2, json!({"type": "sync", "rid": 2, "after": 0}));
    h.send(1, "bob", "a");
    assert!(h.complete_send().frames(2).is_empty());
    let out = h.complete();
    assert_eq!(out.msg_seqs(2), vec![1]);
    assert_eq!(out.one(2, "synced")["rid"], 1);
    // The client holds seq 1 and says so on this connection.
    h.ack(2, 1);
    let out = h.complete();
    assert_eq!(out.one(2, "synced")["rid"], 2);
    // The client has acked all it was sent: the next commit fits the window, and nothing
    // is pushed again.
    let out = h.commit(1, "bob", "b");
    assert_eq!(
        out.msg_seqs(2),
        vec![2],
        "held back by a window the client emptied"
    );
    h.ack(2, 2);
    let log = h.drive_until(T0 + 5_000);
    assert!(log.is_empty(), "re-pushes of acked entries: {log:#?}");
}

#[test]
fn a_refused_or_failed_sync_does_not_hold_later_sends() {
    let mut h = Harness::new(HubConfig::default());
    h.connect(1, "alice");
    h.req(1, json!({"type": "sync", "rid": "s1", "after": 0}));
    assert_error(
        h.refuse().one(1, "error"),
        "unavailable",
        None,
        Some(json!("s1")),
    );
    let out = h.send(1, "bob", "c1");
    assert!(
        out.has_send_job(),
        "send after a refused sync is held: {out:#?}"
    );
    h.settle();

    h.req(1, json!({"type": "sync", "rid": "s2", "after": 0}));
    let job = h.take();
    let out = h.deliver(failed(&job));
    assert_error(out.one(1, "error"), "internal", None, Some(json!("s2")));
    let out = h.send(1, "bob", "c2");
    assert!(
        out.has_send_job(),
        "send after a failed sync is held: {out:#?}"
    );
}

// ---------------------------------------------------------------------------------------
// Presence, typing, and requests that wait for the writes before them
// ---------------------------------------------------------------------------------------

#[test]
fn watchers_hear_of_the_first_connection_and_the_last_close_only() {
    let mut h = Harness::new(HubConfig::default());
    h.store.converse("ann", "bob");
    h.store.converse("cat", "ann");
    h.connect(1, "ann");
    h.req(
        1,
        json!({"type": "watch", "users": ["bob", "bob", "cat"], "rid": 9}),
    );
    let out = h.complete();
    let states: Vec<(Value, Value)> = out
        .typed(1, "presence")
        .iter()
        .map(|p| (p["user"].clone(), p["online"].clone()))
        .collect();
    assert_eq!(
        states,
        [(json!("bob"), json!(false)), (json!("cat"), json!(false))],
        "one presence per distinct user, then ok"
    );
    assert_eq!(out.types(1).last().map(String::as_str), Some("ok"));

    let out = h.connect(2, "bob");
    assert_eq!(out.one(1, "presence")["online"], true);
    assert!(
        h.connect(3, "bob").typed(1, "presence").is_empty(),
        "a second device"
    );
    assert!(h.disconnect(2).typed(1, "presence").is_empty(), "one left");
    assert_eq!(h.disconnect(3).one(1, "presence")["online"], false);

    // A new list replaces the old; a closed watcher is forgotten.
    h.req(1, json!({"type": "watch", "users": ["cat"]}));
    h.complete();
    assert!(h.connect(4, "bob").typed(1, "presence").is_empty());
    h.disconnect(1);
    assert!(h.connect(5, "cat").typed(1, "presence").is_empty());
    assert!(h.hub.watchers.is_empty(), "no watcher lists left behind");
}

#[test]
fn typing_is_relayed_to_the_peers_connections_and_throttled() {
    let mut h = Harness::new(HubConfig::default());
    h.store.converse("ann", "bob");
    h.connect(1, "ann");
    h.connect(2, "ann");
    h.connect(3, "bob");
    h.req(1, json!({"type": "typing", "to": "user:bob", "rid": 1}));
    assert!(
        matches!(h.queue.front(), Some(Job::Reach { user, .. }) if user == "ann"),
        "a read of whom ann may reach, never a write: {:?}",
        h.queue
    );
    let out = h.complete();
    assert_eq!(out.one(3, "typing")["conv"], "dm:ann:bob");
    assert!(
        out.typed(2, "typing").is_empty(),
        "not to the typist's own devices"
    );
    assert_eq!(out.one(1, "ok")["rid"], 1);
    let out = h.req(1, json!({"type": "typing", "to": "user:bob", "rid": 2}));
    assert_error(out.one(1, "error"), "rate_limited", None, Some(json!(2)));
    assert!(h.queue.is_empty());
    h.set_time(T0 + 300);
    h.req(1, json!({"type": "typing", "to": "user:bob"}));
    assert_eq!(h.complete().typed(3, "typing").len(), 1);
}

#[test]
fn a_history_waits_for_the_sends_before_it() {
    let mut h = Harness::new(HubConfig::default());
    h.connect(1, "ann");
    h.send(1, "bob", "c1");
    let out = h.req(
        1,
        json!({"type": "history", "conv": "dm:ann:bob", "rid": "h"}),
    );
    assert!(out.is_empty(), "held until the send is answered: {out:#?}");
    assert_eq!(h.queue.len(), 1);
    let out = h.complete_send();
    assert_eq!(out.types(1), ["sent"]);
    assert!(
        matches!(h.queue.front(), Some(Job::History { conv, .. }) if conv == "dm:ann:bob"),
        "the history goes to the store once the send committed"
    );
}

#[test]
fn writes_wait_behind_a_sync_and_every_store_request_is_refused_while_stopping() {
    let mut h = Harness::new(HubConfig::default());
    h.connect(1, "ann");
    h.req(1, json!({"type": "sync", "after": 0}));
    let out = h.req(1, json!({"type": "read", "conv": "dm:ann:bob", "mid": 1}));
    assert!(out.is_empty(), "a read cursor move waits for the synced");
    let out = h.complete();
    assert_eq!(out.types(1), ["synced"]);
    assert!(matches!(h.queue.front(), Some(Job::MarkRead { .. })));

    let mut out = Vec::new();
    h.hub.shutdown(&mut out);
    for request in [
        json!({"type": "convs", "rid": 1}),
        json!({"type": "recall", "mid": 3, "rid": 2}),
        json!({"type": "group_create", "name": "g", "members": [], "rid": 3}),
    ] {
        let out = h.req(1, request.clone());
        assert_error(
            out.one(1, "error"),
            "unavailable",
            None,
            Some(request["rid"].clone()),
        );
    }
}

#[test]
fn requests_with_bad_fields_are_refused_before_the_store() {
    let mut h = Harness::new(HubConfig::default());
    h.connect(1, "ann");
    for request in [
        json!({"type": "read", "conv": "dm:bob:ann", "mid": 1}),
        json!({"type": "history", "conv": "chan:1"}),
        json!({"type": "group_create", "name": "  ", "members": []}),
        json!({"type": "group_create", "name": "g", "members": ["bad id"]}),
        json!({"type": "group_add", "gid": "x7", "members": ["bob"]}),
        json!({"type": "group_add", "gid": 7, "members": []}),
        json!({"type": "watch", "users": (0..257).map(|i| format!("u{i}")).collect::<Vec<_>>()}),
        json!({"type": "typing", "to": "group:"}),
    ] {
        let out = h.req(1, request.clone());
        assert_eq!(out.one(1, "error")["code"], "bad_request", "{request}");
        assert!(h.queue.is_empty(), "{request} reached the store");
    }
}

/// Answers the oldest pending job, which must be a `convs`, with an empty list.
fn answer_convs(h: &mut Harness) -> Out {
    let job = h.take();
    let Job::Convs { tag, .. } = job else {
        panic!("expected a convs job, got {job:?}");
    };
    h.deliver(Completion::Convs {
        tag,
        result: Ok(Vec::new()),
    })
}

#[test]
fn a_read_waits_for_writes_held_behind_a_sync() {
    let mut h = Harness::new(HubConfig::default());
    h.connect(1, "ann");
    h.req(1, json!({"type": "sync", "after": 0}));
    h.send(1, "bob", "b");
    let out = h.req(1, json!({"type": "convs", "rid": "c"}));
    assert!(
        out.jobs().is_empty(),
        "the convs may not pass the held send"
    );
    assert_eq!(h.queue.len(), 1, "only the sync's page");
    let out = h.complete();
    assert_eq!(out.types(1), ["synced"]);
    assert!(
        matches!(h.queue.front(), Some(Job::Send { .. })),
        "the send goes next"
    );
    assert_eq!(h.queue.len(), 1, "and the convs waits for its answer");
    assert_eq!(h.complete_send().types(1), ["sent"]);
    assert_eq!(answer_convs(&mut h).types(1), ["convs"]);
}

#[test]
fn a_write_between_two_syncs_is_answered_between_them() {
    let mut h = Harness::seeded(HubConfig::default(), &[("ann", 2)]);
    h.connect(1, "ann");
    h.req(1, json!({"type": "sync", "after": 0, "rid": 1}));
    h.send(1, "bob", "x");
    h.req(1, json!({"type": "sync", "after": 0, "rid": 2}));
    let mut out = h.complete();
    out.extend(h.settle());
    let order: Vec<String> = out
        .frames(1)
        .iter()
        .filter(|f| f["type"] != "msg")
        .map(|f| format!("{}{}", f["type"].as_str().unwrap(), f["rid"]))
        .collect();
    assert_eq!(order, ["synced1", "sentnull", "synced2"]);
}

#[test]
fn a_read_waits_only_for_the_writes_before_it() {
    let mut h = Harness::new(HubConfig::default());
    h.connect(1, "ann");
    h.send(1, "bob", "a");
    h.req(1, json!({"type": "convs", "rid": "c"}));
    h.send(1, "bob", "b");
    assert_eq!(
        h.queue.len(),
        1,
        "only a: convs waits for it, b for the convs"
    );
    assert_eq!(h.complete_send().types(1), ["sent"]);
    assert_eq!(answer_convs(&mut h).types(1), ["convs"]);
    assert!(matches!(h.queue.front(), Some(Job::Send { cid, .. }) if cid == "b"));
}

#[test]
fn a_read_cursor_moved_after_its_connection_closed_still_reaches_the_others() {
    let mut h = Harness::new(HubConfig::default());
    h.connect(1, "bob");
    h.connect(2, "bob");
    h.connect(3, "ann");
    h.req(1, json!({"type": "read", "conv": "dm:ann:bob", "mid": 7}));
    h.disconnect(1);
    let job = h.take();
    let Job::MarkRead { tag, user, .. } = job else {
        panic!("{job:?}");
    };
    assert_eq!(user, "bob");
    let moved = crate::store::ReadMoved {
        conv: "dm:ann:bob".into(),
        mid: 7,
        moved: true,
        peer: Some("ann".into()),
    };
    let out = h.deliver(Completion::Read {
        tag,
        result: Ok(moved),
    });
    assert_eq!(out.one(2, "read")["user"], "bob", "bob's other device");
    assert_eq!(out.one(3, "read")["user"], "bob", "ann's receipt");
}

#[test]
fn group_leave_removes_only_the_caller() {
    let mut h = Harness::new(HubConfig::default());
    h.connect(1, "ann");
    let out = h.req(
        1,
        json!({"type": "group_leave", "gid": "7", "members": ["bob"]}),
    );
    assert_eq!(out.one(1, "error")["code"], "bad_request");
    assert!(h.queue.is_empty());
    h.req(
        1,
        json!({"type": "group_leave", "gid": "7", "members": ["ann"]}),
    );
    assert!(matches!(
        h.queue.front(),
        Some(Job::GroupLeave { gid: 7, .. })
    ));
}

#[test]
fn a_client_that_does_not_read_gets_no_second_answer_until_its_output_drains() {
    let mut h = Harness::new(HubConfig::default());
    h.hold_output = true;
    h.connect(1, "ann");
    for rid in 1..=3 {
        h.req(1, json!({"type": "convs", "rid": rid}));
    }
    assert_eq!(h.queue.len(), 1, "one query at a time");
    let out = answer_convs(&mut h);
    assert_eq!(out.typed(1, "convs").len(), 1);
    assert_eq!(
        h.awaiting_output,
        [1],
        "the answer is queued: the hub waits for it"
    );
    assert!(
        h.queue.is_empty(),
        "no second read starts while the first answer is unread"
    );
    // A sync waits its turn behind them: nothing is refused or lost, only held.
    h.req(1, json!({"type": "sync", "after": 0, "rid": 9}));
    assert!(h.queue.is_empty());
    h.drain_output(1);
    assert_eq!(
        h.queue.len(),
        1,
        "the next convs starts once the output drained"
    );
    answer_convs(&mut h);
    assert!(h.queue.is_empty());
    h.drain_output(1);
    answer_convs(&mut h);
    h.drain_output(1);
    assert!(
        matches!(h.queue.front(), Some(Job::Page { .. })),
        "then the sync: {:?}",
        h.queue
    );
}

#[test]
fn catch_up_reads_wait_for_the_output_of_the_last_page_to_drain() {
    let config = HubConfig {
        window: 2,
        ..HubConfig::default()
    };
    let mut h = Harness::new(config);
    h.hold_output = true;
    h.connect(1, "ann");
    h.connect(2, "bob");
    for i in 0..6 {
        h.commit(1, "bob", &format!("c{i}"));
    }
    // Two live pushes fill bob's window; his ack lets a catch-up read bring the next two.
    h.ack(2, 2);
    let out = h.complete();
    assert_eq!(out.msg_seqs(2), [3, 4]);
    assert_eq!(
        h.awaiting_output,
        [2],
        "the page is queued: the hub waits for it"
    );
    h.ack(2, 4);
    assert!(
        h.queue.is_empty(),
        "no read while the page is unread: {:?}",
        h.queue
    );
    h.drain_output(2);
    let out = h.complete();
    assert_eq!(out.msg_seqs(2), [5, 6]);
}

// ---------------------------------------------------------------------------------------
// group_info: change entries carry the change, the list is a read
// ---------------------------------------------------------------------------------------

fn team(gid: u64, members: &[&str]) -> GroupInfo {
    GroupInfo {
        gid,
        name: "team".into(),
        owner: members.first().map(|m| m.to_string()),
        members: members.iter().map(|m| m.to_string()).collect(),
    }
}

/// Answers the oldest pending job, which must be a `Reach` of group `gid`, with `result`.
fn answer_reach(h: &mut Harness, gid: u64, result: Result<Reach, StoreError>) -> Out {
    let job = h.take();
    let Job::Reach {
        tag,
        audience: Audience::Group(asked),
        ..
    } = job
    else {
        panic!("expected a reach job, got {job:?}");
    };
    assert_eq!(asked, gid);
    h.deliver(Completion::Reach { tag, result })
}

/// Answers the oldest pending job, which must be a `Members` for `gid`, with `result`.
fn answer_members(h: &mut Harness, gid: u64, result: Result<GroupInfo, StoreError>) -> Out {
    let job = h.take();
    let Job::Members {
        tag, gid: asked, ..
    } = job
    else {
        panic!("expected a members job, got {job:?}");
    };
    assert_eq!(asked, gid);
    h.deliver(Completion::Members { tag, result })
}

#[test]
fn group_info_answers_a_member_with_the_whole_group_and_refuses_others() {
    let mut h = Harness::new(HubConfig::default());
    h.connect(1, "ann");
    h.req(1, json!({"type": "group_info", "gid": "7", "rid": "i"}));
    assert!(
        matches!(h.queue.front(), Some(Job::Members { user, gid: 7, .. }) if user == "ann"),
        "a read of the store, as the caller: {:?}",
        h.queue
    );
    let out = answer_members(&mut h, 7, Ok(team(7, &["bob", "ann", "cat"])));
    assert_eq!(
        *out.one(1, "group"),
        json!({"type": "group", "rid": "i", "gid": "7", "name": "team", "owner": "bob",
               "members": ["bob", "ann", "cat"]})
    );

    h.req(1, json!({"type": "group_info", "gid": 8, "rid": "f"}));
    let forbidden = StoreError::Forbidden("not a member of this group");
    let out = answer_members(&mut h, 8, Err(forbidden));
    assert_error(out.one(1, "error"), "forbidden", None, Some(json!("f")));

    h.req(1, json!({"type": "group_info", "gid": "9", "rid": "n"}));
    let out = answer_members(&mut h, 9, Err(StoreError::NotFound("no such group")));
    assert_error(out.one(1, "error"), "not_found", None, Some(json!("n")));

    for bad in [
        json!({"type": "group_info"}),
        json!({"type": "group_info", "gid": "x"}),
    ] {
        let out = h.req(1, bad.clone());
        assert_eq!(out.one(1, "error")["code"], "bad_request", "{bad}");
        assert!(h.queue.is_empty(), "{bad} reached the store");
    }
}

#[test]
fn typing_in_a_group_reaches_the_members_the_store_names_then_is_answered() {
    let mut h = Harness::new(HubConfig::default());
    h.connect(1, "ann");
    h.connect(2, "bob");
    h.connect(3, "cat");
    let out = h.req(1, json!({"type": "typing", "to": "group:7", "rid": 1}));
    assert!(out.frames(1).is_empty(), "answered once it is relayed");
    // The store leaves out members with a block between them and the typist (cat).
    let reach = Reach {
        reachable: vec!["bob".into()],
        hidden: vec!["cat".into()],
    };
    let out = answer_reach(&mut h, 7, Ok(reach));
    assert_eq!(out.one(2, "typing")["conv"], "group:7");
    assert!(out.frames(3).is_empty());
    assert_eq!(out.types(1), ["ok"]);

    h.set_time(T0 + 300);
    h.req(1, json!({"type": "typing", "to": "group:8", "rid": 2}));
    let forbidden = StoreError::Forbidden("not a member of this group");
    let out = answer_reach(&mut h, 8, Err(forbidden));
    assert_error(out.one(1, "error"), "forbidden", None, Some(json!(2)));
}

#[test]
fn group_info_sees_the_writes_before_it_and_holds_the_writes_after_it() {
    let mut h = Harness::new(HubConfig::default());
    h.connect(1, "ann");
    h.req(
        1,
        json!({"type": "group_add", "gid": "7", "members": ["cat"], "rid": "a"}),
    );
    let out = h.req(1, json!({"type": "group_info", "gid": "7", "rid": "i"}));
    assert!(out.jobs().is_empty(), "it must see the add: {out:#?}");
    h.send(1, "bob", "s");
    assert_eq!(h.queue.len(), 1, "only the add: {:?}", h.queue);

    let Job::GroupAdd { tag, .. } = h.take() else {
        panic!("the add goes first");
    };
    let change = crate::store::GroupChange {
        gid: 7,
        name: "team".into(),
        owner: Some("ann".into()),
        members: vec!["ann".into(), "bob".into(), "cat".into()],
        changed: vec!["cat".into()],
        event: None,
    };
    let out = h.deliver(Completion::Group {
        tag,
        result: Ok(change),
    });
    assert_eq!(out.one(1, "group")["rid"], "a");
    assert!(
        matches!(h.queue.front(), Some(Job::Members { gid: 7, .. })),
        "the read starts once the add is answered: {:?}",
        h.queue
    );
    assert_eq!(h.queue.len(), 1, "and the send waits for it");

    let out = answer_members(&mut h, 7, Ok(team(7, &["ann", "bob", "cat"])));
    assert_eq!(out.one(1, "group")["rid"], "i");
    assert!(
        matches!(h.queue.front(), Some(Job::Send { cid, .. }) if cid == "s"),
        "then the send: {:?}",
        h.queue
    );
}

#[test]
fn a_group_info_answer_holds_the_next_read_until_the_output_drains() {
    // A thousand members make an answer of up to ~66 KB: one unread at a time, like `history`.
    let mut h = Harness::new(HubConfig::default());
    h.hold_output = true;
    h.connect(1, "ann");
    for rid in 1..=2 {
        h.req(1, json!({"type": "group_info", "gid": "7", "rid": rid}));
    }
    assert_eq!(h.queue.len(), 1, "one read at a time");
    let out = answer_members(&mut h, 7, Ok(team(7, &["ann"])));
    assert_eq!(out.typed(1, "group").len(), 1);
    assert_eq!(h.awaiting_output, [1]);
    assert!(
        h.queue.is_empty(),
        "the second waits for the first to be read"
    );
    h.drain_output(1);
    assert!(matches!(h.queue.front(), Some(Job::Members { .. })));
}

#[test]
fn group_info_counts_against_the_rate_and_is_refused_while_stopping() {
    let mut h = Harness::new(rate_limited());
    h.connect(1, "ann");
    for rid in 0..5 {
        h.req(1, json!({"type": "group_info", "gid": "7", "rid": rid}));
    }
    let out = h.req(1, json!({"type": "group_info", "gid": "7", "rid": 5}));
    assert_error(out.one(1, "error"), "rate_limited", None, Some(json!(5)));

    let mut h = Harness::new(HubConfig::default());
    h.connect(1, "ann");
    let mut out = Vec::new();
    h.hub.shutdown(&mut out);
    let out = h.req(1, json!({"type": "group_info", "gid": "7", "rid": 1}));
    assert_error(out.one(1, "error"), "unavailable", None, Some(json!(1)));
    assert!(h.queue.is_empty());
}

// ---------------------------------------------------------------------------------------
// Found by fuzz/fuzz_targets/im_hub.rs
// ---------------------------------------------------------------------------------------

#[test]
fn a_write_answered_after_its_connection_went_sends_it_nothing() {
    // The answers of writes come back after the connection that asked has gone; the hub
    // promises that nothing is sent to a connection after `disconnect` (`committed` checks
    // for the session, the other answers did not).
    let mut h = Harness::new(HubConfig::default());
    h.connect(1, "ann");
    h.req(
        1,
        json!({"type": "group_add", "gid": "7", "members": ["bob"], "rid": 1}),
    );
    h.req(
        1,
        json!({"type": "send", "cid": "c", "to": "user:bob", "body": "x", "rid": 2}),
    );
    h.req(1, json!({"type": "recall", "mid": 1, "rid": 3}));
    h.req(
        1,
        json!({"type": "read", "conv": "dm:ann:bob", "mid": 1, "rid": 4}),
    );
    assert_eq!(h.queue.len(), 4, "writes overlap: {:?}", h.queue);
    h.disconnect(1);
    let group = h.take();
    let send = h.take();
    let recall = h.take();
    let read = h.take();
    let moved = crate::store::ReadMoved {
        conv: "dm:ann:bob".into(),
        mid: 1,
        moved: true,
        peer: Some("bob".into()),
    };
    let completions = [
        Completion::Group {
            tag: group.tag(),
            result: Err(StoreError::NotFound("no such group")),
        },
        failed(&send),
        Completion::Recalled {
            tag: recall.tag(),
            result: Err(StoreError::Forbidden("only the sender may recall")),
        },
        Completion::Read {
            tag: read.tag(),
            result: Ok(moved),
        },
    ];
    for completion in completions {
        let what = format!("{completion:?}");
        let out = h.deliver(completion);
        assert!(
            out.frames(1).is_empty(),
            "sent to the gone connection 1 for {what}: {out:#?}"
        );
    }
}

#[test]
fn a_repush_stays_within_window_bytes_however_much_its_connection_sent() {
    // The sender's own entries that its `sent` stood in for are kept in the window with no
    // bytes, and a re-push sent every entry of (acked, delivered]: one unacked push brought
    // back all of them, past `window_bytes` (a sync page and a catch-up stop there).
    let config = HubConfig {
        window_bytes: 2_000,
        ..fast_acks()
    };
    let mut h = Harness::new(config.clone());
    h.connect(1, "ann");
    h.connect(2, "bob");
    // Pushed to ann's connection, which does not ack it.
    h.commit(2, "ann", "from-bob");
    // ann's own messages from that connection: each `sent` stands in for its entry's push.
    for i in 0..100 {
        h.commit(1, "bob", &format!("c{i}"));
    }
    let log = h.drive_until(T0 + 300);
    let sizes: Vec<u64> = log
        .iter()
        .flat_map(|(_, out)| out.typed(1, "msg"))
        .map(|msg| msg.to_string().len() as u64)
        .collect();
    assert!(
        !sizes.is_empty(),
        "the unacked push is pushed again: {log:#?}"
    );
    let bytes: u64 = sizes.iter().sum();
    let largest = sizes.iter().copied().max().unwrap_or(0);
    assert!(
        bytes <= config.window_bytes + largest,
        "a re-push of {} msgs, {bytes} bytes, to a window of {} bytes",
        sizes.len(),
        config.window_bytes
    );
}

// ---------------------------------------------------------------------------------------
// Greeting: the hub keeps only the users it holds connections for
// ---------------------------------------------------------------------------------------

#[test]
fn a_first_connection_is_welcomed_after_its_head_is_read_and_its_requests_wait_for_it() {
    let mut h = Harness::seeded(HubConfig::default(), &[("bob", 3)]);
    let out = h.call(|hub, now, out| hub.connect(1, "bob", now, out));
    assert!(
        out.frames(1).is_empty(),
        "no welcome before the head: {out:#?}"
    );
    let read = h.take();
    assert!(
        matches!(
            read,
            Job::Page {
                after: u64::MAX,
                ..
            }
        ),
        "{read:?}"
    );
    // Pipelined behind the upgrade: answered after the welcome, in order.
    let out = h.req(1, json!({"type": "ping", "rid": 1}));
    assert!(out.is_empty(), "{out:#?}");
    h.req(1, json!({"type": "sync", "after": 0, "rid": 2}));
    let completion = h.run(&read);
    let out = h.deliver(completion);
    assert_eq!(out.types(1), ["welcome", "pong"]);
    assert_eq!(out.one(1, "welcome")["inbox_seq"], 3);
    assert!(matches!(h.queue.front(), Some(Job::Page { after: 0, .. })));
    // A second connection of a user already online is welcomed at once.
    let out = h.call(|hub, now, out| hub.connect(2, "bob", now, out));
    assert_eq!(out.one(2, "welcome")["inbox_seq"], 3);
}

#[test]
fn a_commit_while_the_head_is_read_is_covered_by_the_welcome() {
    let mut h = Harness::new(HubConfig::default());
    h.connect(1, "ann");
    h.call(|hub, now, out| hub.connect(2, "bob", now, out));
    let read = h.take();
    // The head read's snapshot misses a commit the hub hears of before its answer.
    let snapshot = h.run(&read);
    h.commit(1, "bob", "c1");
    let out = h.deliver(snapshot);
    assert_eq!(out.one(2, "welcome")["inbox_seq"], 1, "{out:#?}");
    // From there on, pushes continue in order.
    let out = h.commit(1, "bob", "c2");
    assert_eq!(out.msg_seqs(2), [2]);
}

#[test]
fn users_nobody_holds_a_connection_for_cost_the_hub_nothing() {
    let mut h = Harness::new(HubConfig::default());
    h.connect(1, "ann");
    for i in 0..50 {
        h.commit(1, &format!("stranger{i}"), &format!("c{i}"));
    }
    assert_eq!(h.hub.users.len(), 1, "only ann is kept");
    h.connect(2, "stranger7");
    assert_eq!(h.hub.users.len(), 2);
    h.disconnect(2);
    h.disconnect(1);
    assert!(h.hub.users.is_empty(), "nobody is connected");
    // A greeting that ends before its answer leaves nothing either.
    h.call(|hub, now, out| hub.connect(3, "late", now, out));
    h.disconnect(3);
    let read = h.take();
    let completion = h.run(&read);
    assert!(h.deliver(completion).is_empty());
    assert!(h.hub.users.is_empty());
}

#[test]
fn connections_being_greeted_count_against_their_user() {
    // What the per-user cap counts: connections opened at once are all greeting before
    // the first is welcomed, and must not all pass it.
    let mut h = Harness::new(HubConfig::default());
    for conn in 1..=3 {
        h.call(|hub, now, out| hub.connect(conn, "ann", now, out));
    }
    assert_eq!(h.hub.connections_of("ann"), 0, "none welcomed yet");
    assert_eq!(h.hub.connections_held("ann"), 3);
    h.disconnect(2);
    assert_eq!(h.hub.connections_held("ann"), 2);
    // Shutting down refuses what waits for the store, and keeps a greeting's ping for
    // after its welcome.
    h.req(1, json!({"type": "ping", "rid": "p"}));
    h.req(1, json!({"type": "convs", "rid": "c"}));
    let out = h.call(|hub, _, out| hub.shutdown(out));
    assert_eq!(out.types(1), ["error"]);
    assert_eq!(out.one(1, "error")["rid"], "c");
    let read = h.take();
    let completion = h.run(&read);
    let out = h.deliver(completion);
    assert_eq!(out.types(1), ["welcome", "pong"]);
}

// ---------------------------------------------------------------------------------------
// Who may reach whom: blocks, and presence and typing only within a conversation
// ---------------------------------------------------------------------------------------

/// The presence frames `conn` got, as `(user, online)`.
fn presences(out: &Out, conn: ConnKey) -> Vec<(String, bool)> {
    out.typed(conn, "presence")
        .iter()
        .map(|p| (p["user"].as_str().unwrap().to_owned(), p["online"] == true))
        .collect()
}

#[test]
fn a_watched_stranger_reports_nothing_until_a_first_dm_brings_them_within_reach() {
    let mut h = Harness::new(HubConfig::default());
    h.connect(1, "ann");
    h.connect(2, "bob");
    h.req(1, json!({"type": "watch", "users": ["bob"], "rid": "w"}));
    let out = h.complete();
    assert_eq!(out.types(1), ["ok"], "nothing about a stranger: {out:#?}");
    assert!(h.disconnect(2).frames(1).is_empty());
    assert!(h.connect(3, "bob").frames(1).is_empty());

    // The first message between them: bob is watched from now on, without a new `watch`.
    let out = h.commit(3, "ann", "hi");
    assert_eq!(presences(&out, 1), [("bob".to_owned(), true)]);
    assert_eq!(presences(&h.disconnect(3), 1), [("bob".to_owned(), false)]);
}

#[test]
fn a_group_in_common_brings_wanted_users_within_reach_unless_a_block_stands() {
    let mut h = Harness::new(HubConfig::default());
    h.connect(1, "ann");
    h.connect(2, "cat");
    h.connect(3, "dan");
    h.store.blocks.push(("dan".into(), "ann".into()));
    h.req(1, json!({"type": "watch", "users": ["cat", "dan"]}));
    assert!(presences(&h.complete(), 1).is_empty());

    // ann makes a group with both; the store says who is within reach now.
    h.req(
        1,
        json!({"type": "group_create", "name": "t", "members": ["cat", "dan"]}),
    );
    let Job::GroupCreate { tag, .. } = h.take() else {
        panic!("a group_create job");
    };
    h.store
        .groups
        .insert(7, vec!["ann".into(), "cat".into(), "dan".into()]);
    let change = crate::store::GroupChange {
        gid: 7,
        name: "t".into(),
        owner: Some("ann".into()),
        members: vec!["ann".into(), "cat".into(), "dan".into()],
        changed: vec!["ann".into(), "cat".into(), "dan".into()],
        event: Some(Sent {
            mid: 50,
            conv: "group:7".into(),
            ts: WALL0,
            sender_seq: 1,
            duplicate: false,
            deliveries: vec![("ann".into(), 1), ("cat".into(), 1), ("dan".into(), 1)],
            from: "ann".into(),
            cid: "group:7:1".into(),
            body: String::new(),
            kind: "group".into(),
        }),
    };
    h.deliver(Completion::Group {
        tag,
        result: Ok(change),
    });
    let out = h.settle();
    assert_eq!(
        presences(&out, 1),
        [("cat".to_owned(), true)],
        "dan blocks ann: still nothing about dan"
    );
}

#[test]
fn a_block_cuts_presence_both_ways_as_if_the_other_went_offline() {
    let mut h = Harness::new(HubConfig::default());
    h.store.converse("ann", "bob");
    h.connect(1, "ann");
    h.connect(2, "bob");
    h.req(1, json!({"type": "watch", "users": ["bob"]}));
    assert_eq!(presences(&h.complete(), 1), [("bob".to_owned(), true)]);
    h.req(2, json!({"type": "watch", "users": ["ann"]}));
    assert_eq!(presences(&h.complete(), 2), [("ann".to_owned(), true)]);

    h.req(2, json!({"type": "block", "user": "ann", "rid": "b"}));
    assert!(
        matches!(h.queue.front(), Some(Job::Block { user, peer, block: true, .. })
            if user == "bob" && peer == "ann"),
        "a stored block: {:?}",
        h.queue
    );
    let out = h.complete();
    assert_eq!(out.one(2, "ok")["rid"], "b");
    assert_eq!(presences(&out, 1), [("bob".to_owned(), false)]);
    assert_eq!(presences(&out, 2), [("ann".to_owned(), false)]);
    // From now on neither hears of the other, and ann cannot reach bob by typing.
    assert!(h.disconnect(2).frames(1).is_empty());
    h.connect(3, "bob");
    h.req(1, json!({"type": "typing", "to": "user:bob", "rid": "t"}));
    let out = h.complete();
    assert_error(out.one(1, "error"), "forbidden", None, Some(json!("t")));
    assert!(out.frames(3).is_empty());

    // The list, on request; an unblock stores the change.
    h.req(3, json!({"type": "blocked", "rid": "l"}));
    let out = h.complete();
    assert_eq!(
        *out.one(3, "blocked"),
        json!({"type": "blocked", "rid": "l", "users": ["ann"]})
    );
    h.req(3, json!({"type": "unblock", "user": "ann"}));
    assert!(matches!(
        h.queue.front(),
        Some(Job::Block { block: false, .. })
    ));
    h.complete();
    assert!(h.store.blocks.is_empty());
}

#[test]
fn typing_to_a_stranger_and_to_a_blocker_get_the_same_answer() {
    let mut h = Harness::new(HubConfig::default());
    h.store.converse("ann", "bob");
    h.store.blocks.push(("bob".into(), "ann".into()));
    h.connect(1, "ann");
    h.connect(2, "bob");
    h.connect(3, "cat");
    h.req(1, json!({"type": "typing", "to": "user:bob", "rid": 1}));
    let blocked = h.complete();
    h.set_time(T0 + 300);
    h.req(1, json!({"type": "typing", "to": "user:cat", "rid": 1}));
    let stranger = h.complete();
    assert_eq!(blocked.frames(1), stranger.frames(1));
    assert_error(blocked.one(1, "error"), "forbidden", None, Some(json!(1)));
    assert!(blocked.frames(2).is_empty() && stranger.frames(3).is_empty());
}

#[test]
fn block_requests_are_checked_ordered_behind_writes_and_refused_while_stopping() {
    let mut h = Harness::new(HubConfig::default());
    h.connect(1, "ann");
    for bad in [
        json!({"type": "block"}),
        json!({"type": "block", "user": ""}),
        json!({"type": "unblock", "user": "a b"}),
        json!({"type": "block", "user": 7}),
    ] {
        let out = h.req(1, bad.clone());
        assert_eq!(out.one(1, "error")["code"], "bad_request", "{bad}");
        assert!(h.queue.is_empty(), "{bad} reached the store");
    }
    // A `blocked` sees the block before it.
    h.req(1, json!({"type": "block", "user": "bob"}));
    h.req(1, json!({"type": "blocked", "rid": "l"}));
    assert_eq!(h.queue.len(), 1, "the read waits: {:?}", h.queue);
    let out = h.settle();
    assert_eq!(out.one(1, "blocked")["users"], json!(["bob"]));

    h.call(|hub, _, out| hub.shutdown(out));
    for request in [
        json!({"type": "block", "user": "cat", "rid": 1}),
        json!({"type": "blocked", "rid": 1}),
    ] {
        let out = h.req(1, request.clone());
        assert_error(out.one(1, "error"), "unavailable", None, Some(json!(1)));
    }
}

/// Takes the oldest pending reach job and runs it now, as a reader taking its snapshot; the
/// completion is delivered later, after whatever the test commits meanwhile.
fn snapshot(h: &mut Harness) -> Completion {
    let at = h
        .queue
        .iter()
        .position(|job| matches!(job, Job::Reach { .. }));
    let job = h
        .queue
        .remove(at.expect("a reach job is pending"))
        .expect("in range");
    h.run(&job)
}

#[test]
fn a_watch_answer_older_than_a_block_is_asked_again_and_never_stands() {
    let mut h = Harness::new(HubConfig::default());
    h.store.converse("ann", "bob");
    h.connect(1, "ann");
    h.connect(2, "bob");
    h.req(1, json!({"type": "watch", "users": ["bob"], "rid": "w"}));
    let stale = snapshot(&mut h);
    // bob blocks ann while ann's read is on its way back.
    h.req(2, json!({"type": "block", "user": "ann"}));
    h.complete();
    let out = h.deliver(stale);
    assert!(
        presences(&out, 1).is_empty(),
        "not from before the block: {out:#?}"
    );
    assert_eq!(out.one(1, "ok")["rid"], "w");
    assert!(
        matches!(h.queue.front(), Some(Job::Reach { audience: Audience::Users(u), .. }) if u == &["bob"]),
        "bob is asked about again: {:?}",
        h.queue
    );
    assert!(presences(&h.settle(), 1).is_empty(), "bob blocks ann");
    assert!(h.disconnect(2).frames(1).is_empty(), "nothing about bob");
}

#[test]
fn a_watch_answer_older_than_a_first_message_is_asked_again() {
    let mut h = Harness::new(HubConfig::default());
    h.connect(1, "ann");
    h.connect(2, "bob");
    h.req(1, json!({"type": "watch", "users": ["bob"]}));
    let stale = snapshot(&mut h);
    h.commit(2, "ann", "first");
    let out = h.deliver(stale);
    assert!(presences(&out, 1).is_empty());
    assert_eq!(presences(&h.settle(), 1), [("bob".to_owned(), true)]);
}

#[test]
fn typing_with_an_answer_older_than_a_first_message_is_asked_again_and_goes_through() {
    let mut h = Harness::new(HubConfig::default());
    h.connect(1, "ann");
    h.connect(2, "bob");
    h.send(1, "bob", "first");
    h.req(1, json!({"type": "typing", "to": "user:bob", "rid": "t"}));
    assert_eq!(h.queue.len(), 2, "typing is not held behind the send");
    let reach = h.queue.remove(1).expect("the reach job");
    let stale = h.run(&reach);
    h.complete_send();
    let out = h.deliver(stale);
    assert!(out.frames(1).iter().all(|f| f["rid"] != "t"), "{out:#?}");
    let out = h.complete();
    assert_eq!(out.one(2, "typing")["from"], "ann");
    assert_eq!(out.one(1, "ok")["rid"], "t");
}

#[test]
fn leaving_the_only_shared_group_ends_presence_both_ways() {
    let mut h = Harness::new(HubConfig::default());
    h.store.groups.insert(7, vec!["ann".into(), "cat".into()]);
    h.connect(1, "ann");
    h.connect(2, "cat");
    h.req(1, json!({"type": "watch", "users": ["cat"]}));
    assert_eq!(presences(&h.complete(), 1), [("cat".to_owned(), true)]);
    h.req(2, json!({"type": "watch", "users": ["ann"]}));
    assert_eq!(presences(&h.complete(), 2), [("ann".to_owned(), true)]);

    h.req(2, json!({"type": "group_leave", "gid": "7"}));
    let Job::GroupLeave { tag, .. } = h.take() else {
        panic!("a leave");
    };
    h.store.groups.insert(7, vec!["ann".into()]);
    let change = crate::store::GroupChange {
        gid: 7,
        name: "t".into(),
        owner: Some("ann".into()),
        members: vec!["ann".into()],
        changed: vec!["cat".into()],
        event: Some(Sent {
            mid: 60,
            conv: "group:7".into(),
            ts: WALL0,
            sender_seq: 1,
            duplicate: false,
            deliveries: vec![("ann".into(), 1), ("cat".into(), 1)],
            from: "cat".into(),
            cid: "group:7:leave".into(),
            body: String::new(),
            kind: "group".into(),
        }),
    };
    h.deliver(Completion::Group {
        tag,
        result: Ok(change),
    });
    let out = h.settle();
    assert_eq!(presences(&out, 1), [("cat".to_owned(), false)]);
    assert_eq!(presences(&out, 2), [("ann".to_owned(), false)]);
    assert!(h.disconnect(2).frames(1).is_empty(), "no longer watched");
    assert!(!h.hub.watchers.contains_key("ann"));
}

#[test]
fn an_unblock_between_users_who_still_share_a_dm_brings_presence_back() {
    let mut h = Harness::new(HubConfig::default());
    h.store.converse("ann", "bob");
    h.connect(1, "ann");
    h.connect(2, "bob");
    h.req(1, json!({"type": "watch", "users": ["bob"]}));
    h.complete();
    h.req(2, json!({"type": "block", "user": "ann"}));
    assert_eq!(presences(&h.complete(), 1), [("bob".to_owned(), false)]);
    h.req(2, json!({"type": "unblock", "user": "ann"}));
    let out = h.settle();
    assert_eq!(presences(&out, 1), [("bob".to_owned(), true)]);
}

#[test]
fn a_blocked_contact_looks_offline_to_a_new_watch_like_any_contact_who_is() {
    let mut h = Harness::new(HubConfig::default());
    h.store.converse("ann", "bob");
    h.store.converse("ann", "cat");
    h.store.blocks.push(("bob".into(), "ann".into()));
    h.connect(1, "ann");
    h.connect(2, "bob");
    h.req(1, json!({"type": "watch", "users": ["bob", "cat", "zed"]}));
    let out = h.complete();
    assert_eq!(
        presences(&out, 1),
        [("bob".to_owned(), false), ("cat".to_owned(), false)],
        "bob (online, blocking ann) as cat (offline); zed, a stranger, not at all"
    );
    assert!(h.disconnect(2).frames(1).is_empty());
}

#[test]
fn a_watched_answer_older_than_a_second_leave_does_not_keep_presence_flowing() {
    // ann and cat share groups 7 and 8; cat leaves both. The read that follows the first
    // leave sees group 8 still shared, but the second leave lands before its answer: that
    // leave's own second look is what ends the watch.
    let mut h = Harness::new(HubConfig::default());
    h.store.groups.insert(7, vec!["ann".into(), "cat".into()]);
    h.store.groups.insert(8, vec!["ann".into(), "cat".into()]);
    h.connect(1, "ann");
    h.connect(2, "cat");
    h.req(1, json!({"type": "watch", "users": ["cat"]}));
    assert_eq!(presences(&h.complete(), 1), [("cat".to_owned(), true)]);
    let leave = |h: &mut Harness, gid: u64| {
        h.req(2, json!({"type": "group_leave", "gid": gid.to_string()}));
        let at = h
            .queue
            .iter()
            .position(|j| matches!(j, Job::GroupLeave { .. }));
        let Some(Job::GroupLeave { tag, .. }) = h.queue.remove(at.expect("a leave")) else {
            unreachable!("matched above");
        };
        h.store.groups.insert(gid, vec!["ann".into()]);
        let change = crate::store::GroupChange {
            gid,
            name: "t".into(),
            owner: Some("ann".into()),
            members: vec!["ann".into()],
            changed: vec!["cat".into()],
            event: Some(Sent {
                mid: 60 + gid,
                conv: format!("group:{gid}"),
                ts: WALL0,
                sender_seq: gid,
                duplicate: false,
                // Pushes are not what this test is about.
                deliveries: Vec::new(),
                from: "cat".into(),
                cid: format!("group:{gid}:leave"),
                body: String::new(),
                kind: "group".into(),
            }),
        };
        h.deliver(Completion::Group {
            tag,
            result: Ok(change),
        })
    };
    leave(&mut h, 7);
    let stale = snapshot(&mut h);
    leave(&mut h, 8);
    assert!(presences(&h.deliver(stale), 1).is_empty());
    assert_eq!(presences(&h.settle(), 1), [("cat".to_owned(), false)]);
}
