#![no_main]
//! The IM hub driven as the reactor, the store and four clients would drive it, in any
//! order they could: connections of three users open and close; each sends well-formed
//! requests of every kind (built from small fuzzer-chosen values, each with a unique
//! `rid`), the same requests with fuzzer bytes spliced in, or raw bytes; a model store
//! commits writes in order and runs reads whenever, answers with errors at times, and has
//! full queues at times; completions reach the hub in any order the real store allows;
//! time passes; a connection's output drains at once or only later.
//!
//! Checked after every step, from what the wire shows (the hub's fields are private):
//! - no panic (the fuzz profile keeps overflow checks and debug assertions, so
//!   `acked <= delivered` and the window arithmetic are checked by the hub itself);
//! - every frame is JSON with a string `type`; an `error` quotes at most a bounded prefix;
//! - per connection, `msg` first pushes carry the seq after the last one, from the
//!   `welcome`'s `inbox_seq` or the last `synced`; a sync page runs from its `after` without
//!   a gap; a re-push never carries a seq beyond what was pushed nor one the hub counts as
//!   acked; every `msg` is an entry of the model store's inbox (so at most its head) and
//!   shows that entry; a `sent` matches what the store committed for its cid;
//! - nothing is pushed to a connection after the hub closed it, and nothing at all is sent
//!   to one after the hub was told it disconnected;
//! - between an `AwaitOutput` for a connection and its `output_drained`, no read that
//!   answers it (a page, `convs`, `history`, `group_info`) starts for it, and at most one
//!   read answer reaches it (the other read that may have been in flight when its output
//!   was awaited: one page and one query at a time); every page answer is within the
//!   window's bytes plus one entry and its `synced` (`page_bound`), so the bytes a client
//!   that does not read can make the hub queue are one page and one query reply;
//! - every request with a `rid` gets exactly one reply carrying it: never a second one, and
//!   by the end (every store job run, every output drained, time past every ack deadline)
//!   the one it is owed, unless its connection was closed or disconnected first.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};

use arbitrary::Arbitrary;
use courier::im::hub::{
    Action, ConnKey, Hub, HubConfig, Now, Traffic, ACK_TIMEOUT, POLICY, SERVER_ERROR,
};
use courier::im::protocol::{self, ErrorCode, Request, MAX_ECHOED_CID, MAX_ERROR_MESSAGE};
use courier::store::{
    Audience, Completion, ConvSummary, Entry, GroupChange, GroupInfo, History, Job, Lane,
    Message as StoredMessage, Page, Reach, ReadMoved, Sent, StoreError,
};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

/// Far from 0 and from a power of two, as in the hub's own tests, so no deadline lands on a
/// timer-wheel slot boundary by accident.
const T0: u64 = 1_000_003;
const WALL0: u64 = 1_700_000_000_000;

/// Connection slots: four connections at a time are enough for a user with two devices,
/// a peer, and a third user in a group, while keeping inputs short.
const SLOTS: usize = 4;
/// Who is connected in each slot when an input starts, so that no input spends its first
/// steps connecting: two devices of one user, and two other users.
const START: [usize; SLOTS] = [0, 1, 2, 0];
/// Who connects. `dan` below is only ever written to: a user the hub learns of from
/// deliveries alone.
const USERS: [&str; 3] = ["ann", "bob", "cat"];
/// Ids a request may name: the users, one who never connects, and invalid ones (a space;
/// 65 bytes), so the hub's own checks are reached too.
const NAMES: [&str; 6] = [
    "ann",
    "bob",
    "cat",
    "dan",
    "no one",
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
];

/// Steps per input: enough for several send–deliver–ack rounds on every connection, few
/// enough that an input runs in well under a millisecond.
const MAX_OPS: usize = 256;
/// Bytes of a raw frame or a splice: past the point where the JSON parser has seen every
/// shape of token; larger only costs time.
const MAX_RAW: usize = 512;
/// Clock steps one `Advance` takes, following the hub's deadlines as the reactor does.
const MAX_TICKS: usize = 64;
/// A `synced` frame: type, a `rid` of at most `MAX_RID` (128) bytes, two u64s, a bool.
const MAX_SYNCED: u64 = 256;
/// An `error` frame: a rid (128), then a cid of at most `MAX_ECHOED_CID` bytes and a
/// message of at most `MAX_ERROR_MESSAGE` bytes, each escaped at most sixfold by JSON (a
/// control character serde quoted from the request), and the fixed fields.
const MAX_ERROR_FRAME: usize = 128 + 6 * (MAX_ECHOED_CID + MAX_ERROR_MESSAGE) + 128;

/// The hub answers with a reply that echoes `rid` for exactly these.
const REPLIES: [&str; 9] = [
    "ok", "pong", "sent", "synced", "convs", "history", "group", "blocked", "error",
];

// ---------------------------------------------------------------------------------------
// The input
// ---------------------------------------------------------------------------------------

#[derive(Arbitrary, Debug)]
struct Input {
    /// Bits pick the hub's limits (see `config`).
    config: u16,
    /// History already stored for each of `USERS` when the hub starts.
    seeds: [u8; 3],
    /// Bit `i`: the output of slot `i` starts held (see `Op::Hold`).
    hold: u8,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A new connection of `USERS[user]` in `slot` (the one there, if any, goes first).
    Connect {
        slot: u8,
        user: u8,
    },
    /// The reactor reports the connection in `slot` gone.
    Disconnect {
        slot: u8,
    },
    Request {
        slot: u8,
        request: Req,
    },
    /// A well-formed request with `bytes` written over `cut` bytes at `at`: JSON-ish text
    /// that usually keeps its `type` and `rid`.
    Spliced {
        slot: u8,
        request: Req,
        at: u16,
        cut: u8,
        bytes: Vec<u8>,
    },
    Raw {
        slot: u8,
        bytes: Vec<u8>,
    },
    /// The writer commits the oldest accepted write (or fails it).
    RunWrite {
        fail: u8,
    },
    /// The oldest committed write's completion reaches the hub (commit order).
    DeliverWrite,
    /// A reader runs any accepted read (or fails it): a snapshot of what is committed.
    RunRead {
        pick: u8,
        fail: u8,
    },
    /// Any finished read's completion reaches the hub (reads carry no order).
    DeliverRead {
        pick: u8,
    },
    /// Everything accepted runs, and every completion is delivered.
    Settle,
    /// The next `jobs` submissions to one lane find its queue full.
    StoreFull {
        reads: bool,
        jobs: u8,
    },
    Advance {
        ms: u16,
    },
    /// Whether the output of the connection in `slot` drains at once or only on `Drain`.
    Hold {
        slot: u8,
        on: bool,
    },
    Drain {
        slot: u8,
    },
    Shutdown,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Seq {
    /// The highest seq the connection has been pushed.
    Cursor,
    Behind(u8),
    Ahead(u8),
    Abs(u8),
    Max,
}

#[derive(Arbitrary, Debug, Clone)]
enum Req {
    Send {
        to: u8,
        cid: u8,
        body: u8,
        kind: u8,
    },
    Ack {
        seq: Seq,
        rid: bool,
    },
    Sync {
        after: Seq,
        limit: Option<u8>,
    },
    Read {
        conv: u8,
        mid: u8,
    },
    Convs {
        limit: Option<u16>,
    },
    History {
        conv: u8,
        before: Option<u8>,
        limit: Option<u8>,
    },
    GroupCreate {
        name: u8,
        members: Vec<u8>,
    },
    GroupAdd {
        gid: u8,
        members: Vec<u8>,
    },
    GroupLeave {
        gid: u8,
        members: Vec<u8>,
    },
    GroupInfo {
        gid: u8,
    },
    Recall {
        mid: u8,
    },
    Watch {
        users: Vec<u8>,
    },
    Typing {
        to: u8,
    },
    Block {
        user: u8,
        block: bool,
    },
    Blocked,
    Ping,
}

/// The hub's limits from `bits`: small windows and caps make the interesting cases (a full
/// window, a page cut short, a too-large body, a full group, a rate-limit strike) reachable
/// in a few steps; the defaults are among the choices.
fn config(bits: u16) -> HubConfig {
    let pick = |shift: u16| (bits >> shift) as usize & 3;
    HubConfig {
        heartbeat_ms: 25_000,
        ack_timeout_ms: 300,
        ack_retries: [0, 1, 2, 3][pick(12)],
        ack_retry_interval_ms: 200,
        window: [1, 2, 4, 256][pick(0)],
        window_bytes: [150, 600, 4096, 1 << 20][pick(2)],
        max_body: [4, 32, 256, 2048][pick(4)],
        rate_per_sec: 50,
        // Mostly out of the way, so that long sequences are not cut short by refusals.
        rate_burst: [4, 1000, 1000, 1000][pick(8)],
        rate_strikes: [0, 2, 50, 50][pick(10)],
        recall_window_ms: 500,
        max_group: [1, 2, 3, 1000][pick(6)],
    }
}

/// The largest `msg` frame the store can hand the hub under `config`: a body of `max_body`
/// bytes each escaped sixfold (`\u0001`), or a group event (its name of 64 bytes escaped so,
/// an owner, up to `max_group` user ids of 64 bytes, the fixed fields); plus the other
/// fields at their longest: a `conv` of two 64-byte ids, a sender of 64, a cid of 64
/// escaped sixfold, four u64s, a kind, the keys. Those come to under 1 KiB.
fn max_msg_frame(config: &HubConfig) -> u64 {
    let body = 6 * config.max_body as u64;
    let group = 6 * 64 + 64 + 128 + 70 * u64::from(config.max_group);
    body.max(group) + 1024
}

/// The most one page answer may put out: the hub stops a page once its JSON reaches
/// `window_bytes` (a sync page counts its bytes, a catch-up stops when the window has no
/// room), so one entry may cross it, plus the `synced` that ends it.
fn page_bound(config: &HubConfig) -> u64 {
    config.window_bytes + max_msg_frame(config) + MAX_SYNCED
}

// ---------------------------------------------------------------------------------------
// The model store
// ---------------------------------------------------------------------------------------

struct Stored {
    mid: u64,
    conv: String,
    from: String,
    cid: String,
    /// Empty once recalled; `original` is what a live push made before that showed.
    body: String,
    original: String,
    kind: String,
    ts: u64,
    ref_mid: Option<u64>,
    recalled: bool,
    sender_seq: u64,
}

struct Group {
    name: String,
    /// `None` once the last member left.
    owner: Option<String>,
    members: Vec<String>,
}

/// The store's contract without SQLite, as far as the hub can tell: mids in commit order,
/// one gap-free inbox per user, a `(sender, cid)` key for resends, groups with owners,
/// recalls that erase, read cursors; reads answered from what is committed.
#[derive(Default)]
struct Store {
    /// Message `mid` is `msgs[mid - 1]`.
    msgs: Vec<Stored>,
    /// Seq `s` of a user is `inboxes[user][s - 1]`, a mid.
    inboxes: HashMap<String, Vec<u64>>,
    by_cid: HashMap<(String, String), u64>,
    /// Group `gid` is `groups[gid - 1]`.
    groups: Vec<Group>,
    read: HashMap<(String, String), u64>,
    /// `(blocker, blocked)`, oldest first.
    blocks: Vec<(String, String)>,
}

fn dm_conv(a: &str, b: &str) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    format!("dm:{lo}:{hi}")
}

/// The cid the store falls back to when a client already used a server-made one.
fn reserved_cid(base: &str) -> String {
    let mut cid = format!("{base}~");
    while cid.len() <= 64 {
        cid.push('~');
    }
    cid
}

fn forbidden(why: &'static str) -> StoreError {
    StoreError::Forbidden(why)
}

fn not_found(what: &'static str) -> StoreError {
    StoreError::NotFound(what)
}

/// A conversation id as the store reads one.
enum Conv<'a> {
    Dm(&'a str, &'a str),
    Group(u64),
}

fn parse_conv(conv: &str) -> Option<Conv<'_>> {
    if let Some(pair) = conv.strip_prefix("dm:") {
        let (a, b) = pair.split_once(':')?;
        (!a.is_empty() && !b.is_empty() && a <= b).then_some(Conv::Dm(a, b))
    } else {
        let gid = conv.strip_prefix("group:")?;
        let canonical = !gid.is_empty()
            && gid.bytes().all(|b| b.is_ascii_digit())
            && (gid == "0" || !gid.starts_with('0'));
        canonical
            .then(|| gid.parse().ok())
            .flatten()
            .map(Conv::Group)
    }
}

impl Store {
    fn head(&self, user: &str) -> u64 {
        self.inboxes.get(user).map_or(0, |inbox| inbox.len() as u64)
    }

    fn msg(&self, mid: u64) -> Option<&Stored> {
        mid.checked_sub(1).and_then(|i| self.msgs.get(i as usize))
    }

    fn group(&self, gid: u64) -> Option<&Group> {
        gid.checked_sub(1).and_then(|i| self.groups.get(i as usize))
    }

    fn group_mut(&mut self, gid: u64) -> Option<&mut Group> {
        gid.checked_sub(1)
            .and_then(|i| self.groups.get_mut(i as usize))
    }

    /// The stored message behind `user`'s inbox entry `seq`.
    fn at(&self, user: &str, seq: u64) -> Option<&Stored> {
        let inbox = self.inboxes.get(user)?;
        let mid = *inbox.get(seq.checked_sub(1)? as usize)?;
        self.msg(mid)
    }

    fn entry(&self, user: &str, seq: u64) -> Entry {
        let m = self.at(user, seq).expect("an entry of the inbox");
        Entry {
            seq,
            mid: m.mid,
            conv: m.conv.clone(),
            from: m.from.clone(),
            cid: m.cid.clone(),
            body: m.body.clone(),
            kind: m.kind.clone(),
            ts: m.ts,
            ref_mid: m.ref_mid,
            recalled: m.recalled,
        }
    }

    fn append(&mut self, user: &str, mid: u64) -> u64 {
        let inbox = self.inboxes.entry(user.to_owned()).or_default();
        inbox.push(mid);
        inbox.len() as u64
    }

    /// Stores a message and gives `sender`, then each of `others`, an inbox entry.
    #[allow(clippy::too_many_arguments)]
    fn store(
        &mut self,
        conv: String,
        sender: &str,
        cid: String,
        body: String,
        kind: &str,
        ts: u64,
        ref_mid: Option<u64>,
        others: &[String],
    ) -> Sent {
        let mid = self.msgs.len() as u64 + 1;
        let sender_seq = self.append(sender, mid);
        let mut deliveries = vec![(sender.to_owned(), sender_seq)];
        for other in others.iter().filter(|o| *o != sender) {
            deliveries.push((other.clone(), self.append(other, mid)));
        }
        self.by_cid.insert((sender.to_owned(), cid.clone()), mid);
        self.msgs.push(Stored {
            mid,
            conv: conv.clone(),
            from: sender.to_owned(),
            cid: cid.clone(),
            body: body.clone(),
            original: body.clone(),
            kind: kind.to_owned(),
            ts,
            ref_mid,
            recalled: false,
            sender_seq,
        });
        Sent {
            mid,
            conv,
            ts,
            sender_seq,
            duplicate: false,
            deliveries,
            from: sender.to_owned(),
            cid,
            body,
            kind: kind.to_owned(),
        }
    }

    /// A server-made message under `base`, or its reserved form if a client took `base`.
    fn notice_cid(&self, sender: &str, base: String) -> String {
        if self.by_cid.contains_key(&(sender.to_owned(), base.clone())) {
            reserved_cid(&base)
        } else {
            base
        }
    }

    /// The answer to a resend of `cid`: the original, nothing stored.
    fn duplicate(&self, sender: &str, cid: &str) -> Option<Sent> {
        let mid = *self.by_cid.get(&(sender.to_owned(), cid.to_owned()))?;
        let m = self.msg(mid)?;
        Some(Sent {
            mid,
            conv: m.conv.clone(),
            ts: m.ts,
            sender_seq: m.sender_seq,
            duplicate: true,
            deliveries: Vec::new(),
            from: sender.to_owned(),
            cid: cid.to_owned(),
            body: m.body.clone(),
            kind: m.kind.clone(),
        })
    }

    /// Whether `user` takes part in `conv`, as the store's reads and read cursors ask it.
    fn participant(&self, user: &str, conv: &str) -> Result<Option<String>, StoreError> {
        match parse_conv(conv) {
            Some(Conv::Dm(a, b)) => match (a == user, b == user) {
                (true, true) => Ok(None),
                (true, false) => Ok(Some(b.to_owned())),
                (false, true) => Ok(Some(a.to_owned())),
                (false, false) => Err(forbidden("not a participant")),
            },
            Some(Conv::Group(gid)) => {
                let group = self.group(gid).ok_or(not_found("no such group"))?;
                if group.members.iter().any(|m| m == user) {
                    Ok(None)
                } else {
                    Err(forbidden("not a member of this group"))
                }
            }
            None => Err(StoreError::Invalid("malformed conversation id")),
        }
    }

    fn shown(m: &Stored) -> StoredMessage {
        StoredMessage {
            mid: m.mid,
            conv: m.conv.clone(),
            from: m.from.clone(),
            cid: m.cid.clone(),
            body: m.body.clone(),
            kind: m.kind.clone(),
            ts: m.ts,
            ref_mid: m.ref_mid,
            recalled: m.recalled,
        }
    }

    /// The group event a change stores: the actor's entry first, then every member's.
    fn group_event(
        &mut self,
        gid: u64,
        op: &str,
        actor: &str,
        users: &[String],
        ts: u64,
    ) -> GroupChange {
        let group = self.group(gid).expect("the group exists");
        let (name, owner, members) = (
            group.name.clone(),
            group.owner.clone(),
            group.members.clone(),
        );
        let body = json!({
            "op": op, "gid": gid.to_string(), "name": name, "owner": owner, "users": users,
        })
        .to_string();
        let mid = self.msgs.len() as u64 + 1;
        let cid = self.notice_cid(actor, format!("group:{gid}:{mid}"));
        let conv = format!("group:{gid}");
        let event = self.store(conv, actor, cid, body, "group", ts, None, &members);
        GroupChange {
            gid,
            name,
            owner,
            members,
            changed: users.to_vec(),
            event: Some(event),
        }
    }

    fn change(&self, gid: u64) -> GroupChange {
        let group = self.group(gid).expect("the group exists");
        GroupChange {
            gid,
            name: group.name.clone(),
            owner: group.owner.clone(),
            members: group.members.clone(),
            changed: Vec::new(),
            event: None,
        }
    }

    /// Runs `job` as the writer or a reader would; `fail` makes it fail as a whole (disk
    /// error) with nothing written.
    fn run(&mut self, job: &Job, fail: bool) -> Completion {
        let error = || StoreError::Sqlite {
            code: 10,
            message: "disk I/O error".into(),
        };
        match job.clone() {
            Job::Send {
                tag,
                sender,
                cid,
                to,
                body,
                kind,
                ts,
            } => {
                let result = if fail {
                    Err(error())
                } else if let Some(original) = self.duplicate(&sender, &cid) {
                    Ok(original)
                } else if self.blocked_between(&sender, &to) {
                    Err(forbidden("cannot reach this user"))
                } else {
                    let conv = dm_conv(&sender, &to);
                    Ok(self.store(conv, &sender, cid, body, &kind, ts, None, &[to]))
                };
                Completion::Sent { tag, result }
            }
            Job::GroupSend {
                tag,
                sender,
                cid,
                gid,
                body,
                kind,
                ts,
            } => {
                let result = if fail {
                    Err(error())
                } else {
                    self.group_send(&sender, cid, gid, body, &kind, ts)
                };
                Completion::Sent { tag, result }
            }
            Job::Page {
                tag,
                user,
                after,
                limit,
                max_bytes,
            } => {
                let result = if fail {
                    Err(error())
                } else {
                    // As the real reader: at most `limit` entries, stopping once the bodies
                    // reach `max_bytes` (at least one).
                    let head = self.head(&user);
                    let mut entries = Vec::new();
                    let mut bytes = 0;
                    let mut seq = after.saturating_add(1);
                    while seq <= head && entries.len() < limit as usize && bytes < max_bytes {
                        let entry = self.entry(&user, seq);
                        bytes += entry.body.len() as u64;
                        entries.push(entry);
                        seq += 1;
                    }
                    Ok(Page { entries, head })
                };
                Completion::Page {
                    tag,
                    user,
                    after,
                    result,
                }
            }
            Job::Recall {
                tag,
                user,
                mid,
                now,
                window_ms,
            } => {
                let result = if fail {
                    Err(error())
                } else {
                    self.recall(&user, mid, now, window_ms)
                };
                Completion::Recalled { tag, result }
            }
            Job::MarkRead {
                tag,
                user,
                conv,
                mid,
            } => {
                let result = if fail {
                    Err(error())
                } else {
                    self.mark_read(&user, conv, mid)
                };
                Completion::Read { tag, result }
            }
            Job::GroupCreate {
                tag,
                owner,
                name,
                members,
                ts,
                max_members,
            } => {
                // What fails a group change is more often the user's budget than the disk.
                let result = if fail {
                    Err(StoreError::OverBudget("too many groups created this hour"))
                } else {
                    self.group_create(&owner, name, &members, ts, max_members)
                };
                Completion::Group { tag, result }
            }
            Job::GroupAdd {
                tag,
                user,
                gid,
                members,
                ts,
                max_members,
            } => {
                let result = if fail {
                    Err(StoreError::OverBudget("too many new users named this hour"))
                } else {
                    self.group_add(&user, gid, &members, ts, max_members)
                };
                Completion::Group { tag, result }
            }
            Job::GroupLeave { tag, user, gid, ts } => {
                let result = if fail {
                    Err(error())
                } else {
                    self.group_leave(&user, gid, ts)
                };
                Completion::Group { tag, result }
            }
            Job::Convs { tag, user, limit } => {
                let result = if fail {
                    Err(error())
                } else {
                    Ok(self.convs(&user, limit))
                };
                Completion::Convs { tag, result }
            }
            Job::History {
                tag,
                user,
                conv,
                before,
                limit,
                max_bytes,
            } => {
                let result = if fail {
                    Err(error())
                } else {
                    self.history(&user, conv, before, limit, max_bytes)
                };
                Completion::History { tag, result }
            }
            Job::Members { tag, user, gid } => {
                let result = if fail {
                    Err(error())
                } else {
                    self.group(gid)
                        .ok_or(not_found("no such group"))
                        .and_then(|g| {
                            if g.members.contains(&user) {
                                Ok(GroupInfo {
                                    gid,
                                    name: g.name.clone(),
                                    owner: g.owner.clone(),
                                    members: g.members.clone(),
                                })
                            } else {
                                Err(forbidden("not a member of this group"))
                            }
                        })
                };
                Completion::Members { tag, result }
            }
            Job::Block {
                tag,
                user,
                peer,
                block,
                ..
            } => {
                let result = if fail {
                    Err(error())
                } else if user == peer {
                    Err(StoreError::Invalid("a user cannot block themselves"))
                } else {
                    let pair = (user, peer);
                    self.blocks.retain(|p| *p != pair);
                    if block {
                        self.blocks.push(pair);
                    }
                    Ok(())
                };
                Completion::Block { tag, result }
            }
            Job::Blocked { tag, user } => {
                let result = if fail {
                    Err(error())
                } else {
                    Ok(self
                        .blocks
                        .iter()
                        .filter(|(blocker, _)| *blocker == user)
                        .map(|(_, blocked)| blocked.clone())
                        .collect())
                };
                Completion::BlockList { tag, result }
            }
            Job::Reach {
                tag,
                user,
                audience,
            } => {
                let result = if fail {
                    Err(error())
                } else {
                    self.reach(&user, audience)
                };
                Completion::Reach { tag, result }
            }
        }
    }

    fn blocked_between(&self, a: &str, b: &str) -> bool {
        self.blocks
            .iter()
            .any(|(x, y)| (x == a && y == b) || (x == b && y == a))
    }

    /// As the reader: a dm with a message, or a group in common now, and no block.
    fn reach(&self, user: &str, audience: Audience) -> Result<Reach, StoreError> {
        let mut reach = Reach::default();
        let mut sort = |peer: &String| {
            if reach.reachable.contains(peer) || reach.hidden.contains(peer) {
            } else if self.blocked_between(user, peer) {
                reach.hidden.push(peer.clone());
            } else {
                reach.reachable.push(peer.clone());
            }
        };
        match audience {
            Audience::Group(gid) => {
                let group = self.group(gid).ok_or(not_found("no such group"))?;
                if !group.members.iter().any(|m| m == user) {
                    return Err(forbidden("not a member of this group"));
                }
                for member in group.members.iter().filter(|m| *m != user) {
                    sort(member);
                }
            }
            Audience::Users(peers) => {
                for peer in &peers {
                    let dm = dm_conv(user, peer);
                    let talked = self.msgs.iter().any(|m| m.conv == dm);
                    let grouped = self
                        .groups
                        .iter()
                        .any(|g| g.members.iter().any(|m| m == user) && g.members.contains(peer));
                    if peer == user || talked || grouped {
                        sort(peer);
                    }
                }
            }
        }
        Ok(reach)
    }

    fn group_send(
        &mut self,
        sender: &str,
        cid: String,
        gid: u64,
        body: String,
        kind: &str,
        ts: u64,
    ) -> Result<Sent, StoreError> {
        let group = self
            .group(gid)
            .filter(|g| g.owner.is_some())
            .ok_or(not_found("no such group"))?;
        if !group.members.iter().any(|m| m == sender) {
            return Err(forbidden("not a member of this group"));
        }
        if let Some(original) = self.duplicate(sender, &cid) {
            return Ok(original);
        }
        let members = group.members.clone();
        let conv = format!("group:{gid}");
        Ok(self.store(conv, sender, cid, body, kind, ts, None, &members))
    }

    fn recall(
        &mut self,
        user: &str,
        mid: u64,
        now: u64,
        window_ms: u64,
    ) -> Result<Sent, StoreError> {
        let target = self.msg(mid).ok_or(not_found("no such message"))?;
        if target.from != user {
            return Err(forbidden("only the sender may recall"));
        }
        if target.kind == "recall" || target.kind == "group" {
            return Err(forbidden("a recall or group notice cannot be recalled"));
        }
        let base = format!("recall:{mid}");
        if target.recalled {
            let first = [base.clone(), reserved_cid(&base)]
                .into_iter()
                .filter_map(|cid| self.duplicate(user, &cid))
                .find(|d| d.kind == "recall")
                .ok_or_else(|| StoreError::Internal("a recall without its notice".into()))?;
            return Ok(first);
        }
        if now.saturating_sub(target.ts) > window_ms {
            return Err(forbidden("the recall window has passed"));
        }
        let conv = target.conv.clone();
        let others = match parse_conv(&conv) {
            Some(Conv::Dm(a, b)) => vec![if a == user { b } else { a }.to_owned()],
            Some(Conv::Group(gid)) => {
                let group = self.group(gid).ok_or(not_found("no such group"))?;
                if !group.members.iter().any(|m| m == user) {
                    return Err(forbidden("not a member of this group"));
                }
                group.members.clone()
            }
            None => return Err(StoreError::Internal("a malformed conversation".into())),
        };
        let cid = self.notice_cid(user, base);
        let target = &mut self.msgs[mid as usize - 1];
        target.body.clear();
        target.recalled = true;
        let ts = now;
        Ok(self.store(
            conv,
            user,
            cid,
            String::new(),
            "recall",
            ts,
            Some(mid),
            &others,
        ))
    }

    fn mark_read(&mut self, user: &str, conv: String, mid: u64) -> Result<ReadMoved, StoreError> {
        let peer = self.participant(user, &conv)?;
        if self.msg(mid).is_none_or(|m| m.conv != conv) {
            return Err(not_found("no such message in this conversation"));
        }
        let cursor = self
            .read
            .entry((user.to_owned(), conv.clone()))
            .or_default();
        let moved = mid > *cursor;
        *cursor = (*cursor).max(mid);
        Ok(ReadMoved {
            conv,
            mid: *cursor,
            moved,
            peer,
        })
    }

    fn group_create(
        &mut self,
        owner: &str,
        name: String,
        members: &[String],
        ts: u64,
        max_members: u32,
    ) -> Result<GroupChange, StoreError> {
        let name = name.trim().to_owned();
        if name.is_empty() || name.len() > 64 {
            return Err(StoreError::Invalid("a group name is 1 to 64 bytes"));
        }
        let mut all: Vec<String> = vec![owner.to_owned()];
        for member in members {
            if !all.contains(member) {
                all.push(member.clone());
            }
        }
        if all.len() > max_members as usize {
            return Err(forbidden("the group would have too many members"));
        }
        if all[1..].iter().any(|m| self.blocked_between(owner, m)) {
            return Err(forbidden("cannot add a user who cannot be reached"));
        }
        self.groups.push(Group {
            name,
            owner: Some(owner.to_owned()),
            members: all.clone(),
        });
        let gid = self.groups.len() as u64;
        Ok(self.group_event(gid, "create", owner, &all, ts))
    }

    fn group_add(
        &mut self,
        user: &str,
        gid: u64,
        members: &[String],
        ts: u64,
        max_members: u32,
    ) -> Result<GroupChange, StoreError> {
        let group = self
            .group(gid)
            .filter(|g| g.owner.is_some())
            .ok_or(not_found("no such group"))?;
        if group.owner.as_deref() != Some(user) {
            return Err(forbidden("only the owner may add members"));
        }
        let mut new: Vec<String> = Vec::new();
        for member in members {
            if !group.members.contains(member) && !new.contains(member) {
                new.push(member.clone());
            }
        }
        if new.is_empty() {
            return Ok(self.change(gid));
        }
        if group.members.len() + new.len() > max_members as usize {
            return Err(forbidden("the group would have too many members"));
        }
        if new.iter().any(|m| self.blocked_between(user, m)) {
            return Err(forbidden("cannot add a user who cannot be reached"));
        }
        let group = self.group_mut(gid).expect("found above");
        group.members.extend(new.iter().cloned());
        Ok(self.group_event(gid, "add", user, &new, ts))
    }

    fn group_leave(&mut self, user: &str, gid: u64, ts: u64) -> Result<GroupChange, StoreError> {
        let group = self.group_mut(gid).ok_or(not_found("no such group"))?;
        let at = group
            .members
            .iter()
            .position(|m| m == user)
            .ok_or(forbidden("not a member of this group"))?;
        group.members.remove(at);
        if group.owner.as_deref() == Some(user) {
            group.owner = group.members.first().cloned();
        }
        // The leaver's entry comes first (they are the actor), then the members left.
        Ok(self.group_event(gid, "leave", user, &[user.to_owned()], ts))
    }

    fn convs(&self, user: &str, limit: u32) -> Vec<ConvSummary> {
        let mut convs: Vec<String> = Vec::new();
        for &mid in self.inboxes.get(user).into_iter().flatten() {
            let conv = &self.msgs[mid as usize - 1].conv;
            if !convs.contains(conv) && self.participant(user, conv).is_ok() {
                convs.push(conv.clone());
            }
        }
        let mut items: Vec<ConvSummary> = convs
            .into_iter()
            .map(|conv| {
                let read_mid = self
                    .read
                    .get(&(user.to_owned(), conv.clone()))
                    .copied()
                    .unwrap_or(0);
                let in_conv = || self.msgs.iter().filter(|m| m.conv == conv);
                let last = in_conv().rfind(|m| m.kind != "recall").map(Self::shown);
                let unread = in_conv()
                    .filter(|m| m.mid > read_mid && m.from != user && !m.recalled)
                    .filter(|m| m.kind != "recall" && m.kind != "group")
                    .count() as u64;
                let (name, peer_read_mid) = match parse_conv(&conv) {
                    Some(Conv::Group(gid)) => (self.group(gid).map(|g| g.name.clone()), None),
                    Some(Conv::Dm(a, b)) => {
                        let peer = if a == user { b } else { a };
                        let key = (peer.to_owned(), conv.clone());
                        (None, Some(self.read.get(&key).copied().unwrap_or(0)))
                    }
                    None => (None, None),
                };
                ConvSummary {
                    conv: conv.clone(),
                    name,
                    last,
                    unread,
                    read_mid,
                    peer_read_mid,
                }
            })
            .collect();
        items.sort_by_key(|c| std::cmp::Reverse(c.last.as_ref().map_or(0, |m| m.mid)));
        items.truncate(limit as usize);
        items
    }

    /// As the real reader: recall notices left out, at most `limit` messages and about
    /// `max_bytes` of JSON (at least one), newest kept.
    fn history(
        &self,
        user: &str,
        conv: String,
        before: Option<u64>,
        limit: u32,
        max_bytes: u64,
    ) -> Result<History, StoreError> {
        self.participant(user, &conv)?;
        let json_len = |s: &str| serde_json::to_string(s).map_or(0, |j| j.len()) as u64;
        let mut newest_first =
            self.msgs.iter().rev().filter(|m| {
                m.conv == conv && m.kind != "recall" && before.is_none_or(|b| m.mid < b)
            });
        let mut msgs = Vec::new();
        let mut bytes = 0;
        let mut more = false;
        for m in newest_first.by_ref() {
            bytes += json_len(&m.body) + json_len(&m.cid) + 160;
            if msgs.len() == limit as usize || (bytes > max_bytes && !msgs.is_empty()) {
                more = true;
                break;
            }
            msgs.push(Self::shown(m));
        }
        msgs.reverse();
        Ok(History { conv, msgs, more })
    }
}

// ---------------------------------------------------------------------------------------
// What the clients read
// ---------------------------------------------------------------------------------------

/// The fields of a server frame the checks read; the rest is skipped.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(borrow)]
    rid: Option<&'a RawValue>,
    seq: Option<u64>,
    head: Option<u64>,
    more: Option<bool>,
    mid: Option<u64>,
    inbox_seq: Option<u64>,
    #[serde(borrow)]
    from: Option<Cow<'a, str>>,
    #[serde(borrow)]
    conv: Option<Cow<'a, str>>,
    #[serde(borrow)]
    cid: Option<Cow<'a, str>>,
    #[serde(borrow)]
    body: Option<Cow<'a, str>>,
    #[serde(borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    message: Option<Cow<'a, str>>,
    #[serde(rename = "ref")]
    ref_mid: Option<u64>,
    recalled: Option<bool>,
}

/// One connection as its client and the reactor see it.
struct Conn {
    slot: usize,
    user: &'static str,
    /// The hub closed it: the reactor sends nothing more and reads nothing more.
    closed: bool,
    /// The highest seq pushed in order (or stood in for by a `sent`): the next first push
    /// is this plus one.
    last: u64,
    /// What the hub surely counts as delivered: `last`, but not moved by a `sent` (the
    /// hub counts one only when the connection was caught up and no read was in flight).
    sure: u64,
    /// Seqs `last` moved over on a `sent`: the hub may still push them once.
    echoes: HashSet<u64>,
    /// At most what the hub counts as acked here: a re-push starts after it.
    acked: u64,
    /// The highest seq this client acked on this connection (the hub keeps the same).
    client_acked: u64,
    /// A `msg` arrived since the client last acked.
    owes_ack: bool,
    /// Replies owed, by the JSON text of their `rid` (the hub echoes it verbatim).
    owed: HashMap<Box<str>, u32>,
    /// This client's own syncs by rid: where each page must start.
    syncs: HashMap<Box<str>, u64>,
    /// An `AwaitOutput` is held, and the read answers that have reached the connection
    /// since.
    held: bool,
    answers_held: u32,
}

/// What a hub call was, for checks that depend on it.
#[derive(Clone, Copy)]
enum Call {
    /// The completion of a read job that answers a connection.
    Read(u64),
    Other,
}

/// A read job, as started.
struct ReadJob {
    /// The live connections of its user when it started: it was for one of them.
    candidates: Vec<ConnKey>,
    /// Those of them whose output was awaited then: it must not have been for one of them.
    blocked: Vec<ConnKey>,
}

struct World {
    hub: Hub,
    config: HubConfig,
    store: Store,
    now: Now,
    slots: [Option<ConnKey>; SLOTS],
    hold: [bool; SLOTS],
    /// Every connection the hub was not told is gone, closed ones included.
    conns: HashMap<ConnKey, Conn>,
    /// Those it was told are gone: nothing may be sent to them any more.
    gone: HashSet<ConnKey>,
    next_conn: ConnKey,
    next_rid: u64,
    /// Accepted writes not run yet, oldest first (one writer, in order).
    writes: VecDeque<Job>,
    /// Committed writes whose completion has not reached the hub, in commit order.
    written: VecDeque<Completion>,
    /// Accepted reads not run yet, and finished reads not delivered: any order.
    reads: Vec<Job>,
    read_done: Vec<Completion>,
    /// The next submissions to the write and read lanes that find the queue full.
    full: [u8; 2],
    /// Reads that answer a connection, by tag, as they started: checked at completion.
    read_jobs: HashMap<u64, ReadJob>,
    /// Hub calls made while playing an earlier call's actions, played after them in order,
    /// as the reactor appends their actions to its list.
    deferred: VecDeque<(Vec<Action>, Call)>,
    /// `IM_HUB_TRACE` set: every hub call and action goes to stderr, for reading how a
    /// crash input got where it failed (`cargo fuzz run im_hub <input>`).
    trace: bool,
}

/// The user of a read that answers a connection with a page or a reply (what may not
/// start while that connection's output is awaited). A `Reach` answers with a few small
/// frames (a `watch`'s presences, a `typing`'s `ok`) and is not held.
fn answering_read(job: &Job) -> Option<&str> {
    match job {
        Job::Page { user, .. }
        | Job::Convs { user, .. }
        | Job::History { user, .. }
        | Job::Members { user, .. }
        | Job::Blocked { user, .. } => Some(user),
        _ => None,
    }
}

impl World {
    fn new(bits: u16, seeds: [u8; 3]) -> World {
        let config = config(bits);
        let mut store = Store::default();
        for (user, &n) in USERS.iter().zip(&seeds) {
            for i in 0..n % 4 {
                let cid = format!("old-{user}-{i}");
                let body = format!("old {i}");
                let conv = dm_conv("zed", user);
                let ts = WALL0 - 1000 + u64::from(i);
                store.store(
                    conv,
                    "zed",
                    cid,
                    body,
                    "text",
                    ts,
                    None,
                    &[(*user).to_owned()],
                );
            }
        }
        World {
            hub: Hub::new(config.clone(), T0),
            config,
            store,
            now: Now {
                mono: T0,
                wall: WALL0,
            },
            slots: [None; SLOTS],
            hold: [false; SLOTS],
            conns: HashMap::new(),
            gone: HashSet::new(),
            next_conn: 1,
            next_rid: 0,
            writes: VecDeque::new(),
            written: VecDeque::new(),
            reads: Vec::new(),
            read_done: Vec::new(),
            full: [0; 2],
            read_jobs: HashMap::new(),
            deferred: VecDeque::new(),
            trace: std::env::var_os("IM_HUB_TRACE").is_some(),
        }
    }

    // -----------------------------------------------------------------------------------
    // Driving the hub
    // -----------------------------------------------------------------------------------

    fn note(&self, line: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("{}", line());
        }
    }

    fn call(&mut self, call: Call, f: impl FnOnce(&mut Hub, Now, &mut Vec<Action>)) {
        let mut actions = Vec::new();
        f(&mut self.hub, self.now, &mut actions);
        self.play_all(actions, call);
    }

    /// Plays the actions of one hub call, then those of the calls made while playing them.
    fn play_all(&mut self, actions: Vec<Action>, call: Call) {
        self.deferred.push_back((actions, call));
        while let Some((actions, call)) = self.deferred.pop_front() {
            self.play(actions, call);
        }
    }

    fn connect(&mut self, slot: usize, user: usize) {
        self.disconnect(slot);
        let conn = self.next_conn;
        self.next_conn += 1;
        let user = USERS[user % USERS.len()];
        self.slots[slot] = Some(conn);
        self.conns.insert(
            conn,
            Conn {
                slot,
                user,
                closed: false,
                last: 0,
                sure: 0,
                echoes: HashSet::new(),
                acked: 0,
                client_acked: 0,
                owes_ack: false,
                owed: HashMap::new(),
                syncs: HashMap::new(),
                held: false,
                answers_held: 0,
            },
        );
        self.note(|| format!("+{} connect {conn} {user}", self.now.mono - T0));
        self.call(Call::Other, |hub, now, out| {
            hub.connect(conn, user, now, out)
        });
    }

    fn disconnect(&mut self, slot: usize) {
        let Some(conn) = self.slots[slot].take() else {
            return;
        };
        self.conns.remove(&conn);
        self.gone.insert(conn);
        self.note(|| format!("disconnect {conn}"));
        self.call(Call::Other, |hub, _, out| hub.disconnect(conn, out));
    }

    /// The connection in `slot` if the reactor would read a frame from it.
    fn readable(&self, slot: usize) -> Option<ConnKey> {
        let conn = self.slots[slot]?;
        (!self.conns[&conn].closed).then_some(conn)
    }

    /// A text frame from the client in `slot`; `sync` is this client's own sync request
    /// (its rid and `after`), whose page can then be checked from where it must start.
    /// Returns false when the hub refused it for rate (or it was not read at all).
    fn send_text(&mut self, slot: usize, text: &[u8], sync: Option<(String, u64)>) -> bool {
        let Some(conn) = self.readable(slot) else {
            return false;
        };
        // The hub parses with this same function, so the rid it will echo is known here,
        // for raw bytes as for well-formed requests.
        let (rid, ack, call) = match protocol::parse(text) {
            Ok((Request::Ack { seq }, rid)) => (rid, Some(seq), Call::Other),
            Ok((_, rid)) => (rid, None, Call::Other),
            Err(bad) => (bad.rid, None, Call::Other),
        };
        let state = self.conns.get_mut(&conn).expect("live");
        if let Some(rid) = &rid {
            *state.owed.entry(rid.get().into()).or_default() += 1;
            // A frame that reuses the rid of a sync in flight makes the pair ambiguous:
            // that page is then checked as a page of unknown origin.
            state.syncs.remove(rid.get());
        }
        if let Some((rid, after)) = sync {
            state.syncs.insert(rid.into(), after);
        }
        self.note(|| format!("{conn} -> {}", String::from_utf8_lossy(text)));
        let mut actions = Vec::new();
        self.hub.message(conn, text, self.now, &mut actions);
        // An ack is refused only for rate (an error, or a close after too many strikes),
        // and then it is not counted.
        let refused = actions.iter().any(|action| {
            matches!(
                action,
                Action::Close { .. }
                    | Action::Send {
                        traffic: Traffic::Error(ErrorCode::RateLimited),
                        ..
                    }
            )
        });
        if let (Some(seq), false) = (ack, refused) {
            // Mirrors the hub: an ack counts up to what this connection was pushed.
            let state = self.conns.get_mut(&conn).expect("live");
            state.client_acked = state.client_acked.max(seq);
            state.acked = state.acked.max(seq.min(state.sure));
            state.owes_ack = false;
        }
        self.play_all(actions, call);
        !refused
    }

    fn rid(&mut self) -> String {
        self.next_rid += 1;
        // Both shapes a rid may take.
        if self.next_rid.is_multiple_of(2) {
            self.next_rid.to_string()
        } else {
            format!("\"r{}\"", self.next_rid)
        }
    }

    fn seq(&self, conn: ConnKey, seq: Seq) -> u64 {
        let last = self.conns[&conn].last;
        match seq {
            Seq::Cursor => last,
            Seq::Behind(n) => last.saturating_sub(u64::from(n)),
            Seq::Ahead(n) => last + u64::from(n),
            Seq::Abs(n) => u64::from(n),
            Seq::Max => u64::MAX,
        }
    }

    /// The JSON text of `request` from the connection in `slot`, and a sync's `after`.
    fn build(&mut self, slot: usize, request: &Req) -> Option<(String, Option<(String, u64)>)> {
        let conn = self.readable(slot)?;
        let name = |i: u8| NAMES[i as usize % NAMES.len()];
        let names = |list: &[u8]| list.iter().take(5).map(|&i| name(i)).collect::<Vec<_>>();
        let target = |i: u8| match i % 9 {
            0..=3 => format!("user:{}", name(i / 9 % 4)),
            4 => "user:no one".to_owned(),
            5..=7 => format!("group:{}", i / 9 % 4),
            _ => "group:01".to_owned(),
        };
        let conv = |i: u8| match i % 8 {
            0 => "dm:ann:bob".to_owned(),
            1 => "dm:ann:cat".to_owned(),
            2 => "dm:bob:cat".to_owned(),
            3 => format!("dm:{0}:{0}", name(i / 8 % 3)),
            4 => "dm:bob:ann".to_owned(),
            5 | 6 => format!("group:{}", i / 8 % 4),
            _ => "chan:1".to_owned(),
        };
        let rid = self.rid();
        let rid: serde_json::Value = serde_json::from_str(&rid).expect("a rid is JSON");
        let mut sync = None;
        let value = match *request {
            Req::Send {
                to,
                cid,
                body,
                kind,
            } => {
                let max = self.config.max_body;
                let cid = match cid {
                    0..=239 => format!("c{cid}"),
                    240..=243 => String::new(),
                    244..=247 => "k".repeat(65),
                    248..=251 => "recall:1".to_owned(),
                    _ => "group:1:2".to_owned(),
                };
                let body = match body % 6 {
                    0 => String::new(),
                    1 => "hi".to_owned(),
                    2 => "\u{1}".repeat(max.min(10)),
                    3 => "é \"ü\"".to_owned(),
                    4 => "x".repeat(max),
                    _ => "y".repeat(max + 1),
                };
                let mut send =
                    json!({"type": "send", "rid": rid, "cid": cid, "to": target(to), "body": body});
                match kind % 6 {
                    0 => {}
                    1 => send["kind"] = json!("sticker"),
                    2 => send["kind"] = json!("recall"),
                    3 => send["kind"] = json!("group"),
                    4 => send["kind"] = json!("Bad"),
                    _ => send["kind"] = json!("k".repeat(17)),
                }
                send
            }
            Req::Ack { seq, rid: with } => {
                let seq = self.seq(conn, seq);
                if with {
                    json!({"type": "ack", "rid": rid, "seq": seq})
                } else {
                    json!({"type": "ack", "seq": seq})
                }
            }
            Req::Sync { after, limit } => {
                let after = self.seq(conn, after);
                sync = Some((rid.to_string(), after));
                match limit {
                    Some(limit) => {
                        json!({"type": "sync", "rid": rid, "after": after, "limit": limit})
                    }
                    None => json!({"type": "sync", "rid": rid, "after": after}),
                }
            }
            Req::Read { conv: c, mid } => {
                json!({"type": "read", "rid": rid, "conv": conv(c), "mid": mid})
            }
            Req::Convs { limit } => match limit {
                Some(limit) => json!({"type": "convs", "rid": rid, "limit": limit}),
                None => json!({"type": "convs", "rid": rid}),
            },
            Req::History {
                conv: c,
                before,
                limit,
            } => {
                let mut history = json!({"type": "history", "rid": rid, "conv": conv(c)});
                if let Some(before) = before {
                    history["before"] = json!(before);
                }
                if let Some(limit) = limit {
                    history["limit"] = json!(limit);
                }
                history
            }
            Req::GroupCreate {
                name: n,
                ref members,
            } => {
                let long = "n".repeat(65);
                let group_name = ["g", "  ", "team", &long][n as usize % 4];
                json!({"type": "group_create", "rid": rid, "name": group_name,
                       "members": names(members)})
            }
            Req::GroupAdd { gid, ref members } => {
                json!({"type": "group_add", "rid": rid, "gid": (gid % 5).to_string(),
                       "members": names(members)})
            }
            Req::GroupLeave { gid, ref members } => {
                json!({"type": "group_leave", "rid": rid, "gid": gid % 5,
                       "members": names(members)})
            }
            Req::GroupInfo { gid } => {
                json!({"type": "group_info", "rid": rid, "gid": (gid % 5).to_string()})
            }
            Req::Recall { mid } => json!({"type": "recall", "rid": rid, "mid": mid}),
            Req::Watch { ref users } => {
                json!({"type": "watch", "rid": rid, "users": names(users)})
            }
            Req::Typing { to } => json!({"type": "typing", "rid": rid, "to": target(to)}),
            Req::Block { user, block } => {
                let kind = if block { "block" } else { "unblock" };
                json!({"type": kind, "rid": rid, "user": name(user)})
            }
            Req::Blocked => json!({"type": "blocked", "rid": rid}),
            Req::Ping => json!({"type": "ping", "rid": rid}),
        };
        Some((value.to_string(), sync))
    }

    fn request(&mut self, slot: usize, request: &Req) {
        let Some((text, sync)) = self.build(slot, request) else {
            return;
        };
        self.send_text(slot, text.as_bytes(), sync);
    }

    fn spliced(&mut self, slot: usize, request: &Req, at: u16, cut: u8, bytes: &[u8]) {
        let Some((text, _)) = self.build(slot, request) else {
            return;
        };
        let mut text = text.into_bytes();
        let at = at as usize % (text.len() + 1);
        let end = (at + cut as usize % 8).min(text.len());
        let bytes = &bytes[..bytes.len().min(MAX_RAW)];
        text.splice(at..end, bytes.iter().copied());
        self.send_text(slot, &text, None);
    }

    fn run_write(&mut self, fail: bool) {
        if let Some(job) = self.writes.pop_front() {
            let completion = self.store.run(&job, fail);
            self.note(|| format!("store commits {completion:?}"));
            self.written.push_back(completion);
        }
    }

    fn deliver_write(&mut self) {
        if let Some(completion) = self.written.pop_front() {
            self.note(|| format!("deliver write {}", completion.tag()));
            self.call(Call::Other, |hub, now, out| {
                hub.completion(completion, now, out)
            });
        }
    }

    fn run_read(&mut self, pick: usize, fail: bool) {
        if !self.reads.is_empty() {
            let job = self.reads.swap_remove(pick % self.reads.len());
            let completion = self.store.run(&job, fail);
            self.note(|| format!("store reads {completion:?}"));
            self.read_done.push(completion);
        }
    }

    fn deliver_read(&mut self, pick: usize) {
        if !self.read_done.is_empty() {
            let completion = self.read_done.swap_remove(pick % self.read_done.len());
            let call = if self.read_jobs.contains_key(&completion.tag()) {
                Call::Read(completion.tag())
            } else {
                Call::Other
            };
            self.note(|| format!("deliver read {}", completion.tag()));
            self.call(call, |hub, now, out| hub.completion(completion, now, out));
        }
    }

    /// Runs and delivers everything the store holds, and what that leads to.
    fn settle(&mut self) -> bool {
        let mut busy = false;
        for _ in 0..1000 {
            if self.writes.is_empty()
                && self.written.is_empty()
                && self.reads.is_empty()
                && self.read_done.is_empty()
            {
                return busy;
            }
            busy = true;
            while !self.writes.is_empty() {
                self.run_write(false);
            }
            while !self.written.is_empty() {
                self.deliver_write();
            }
            while !self.reads.is_empty() {
                self.run_read(0, false);
            }
            while !self.read_done.is_empty() {
                self.deliver_read(0);
            }
        }
        panic!("the hub keeps asking the store for more");
    }

    /// Moves the clock `by` ms, calling `on_time` at each deadline on the way as the
    /// reactor does.
    fn advance(&mut self, by: u64) {
        let until = self.now.mono + by;
        for _ in 0..MAX_TICKS {
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
            self.note(|| format!("+{} on_time", at - T0));
            self.call(Call::Other, |hub, now, out| hub.on_time(now, out));
            if at == until {
                return;
            }
        }
    }

    fn drain(&mut self, slot: usize) {
        let Some(conn) = self.slots[slot] else {
            return;
        };
        let state = self.conns.get_mut(&conn).expect("live");
        if std::mem::take(&mut state.held) {
            state.answers_held = 0;
            self.note(|| format!("output of {conn} drained"));
            self.call(Call::Other, |hub, now, out| {
                hub.output_drained(conn, now, out)
            });
        }
    }

    // -----------------------------------------------------------------------------------
    // Playing the hub's actions, and the checks
    // -----------------------------------------------------------------------------------

    fn play(&mut self, actions: Vec<Action>, call: Call) {
        for action in &actions {
            self.note(|| match action {
                Action::Send { conn, text, .. } => {
                    format!("  {conn} <- {}", String::from_utf8_lossy(text))
                }
                other => format!("  {other:?}"),
            });
        }
        let frames: Vec<Option<Frame<'_>>> = actions
            .iter()
            .map(|action| match action {
                Action::Send { conn, text, .. } => {
                    let frame: Frame<'_> = serde_json::from_slice(text).unwrap_or_else(|e| {
                        panic!("frame to {conn} is not JSON with a string type ({e}): {text:?}")
                    });
                    Some(frame)
                }
                _ => None,
            })
            .collect();
        // A sync page is the run of msgs to a connection that a `synced` in the same call
        // ends.
        let mut page_ends: HashMap<ConnKey, usize> = HashMap::new();
        for (i, (action, frame)) in actions.iter().zip(&frames).enumerate() {
            if let (Action::Send { conn, .. }, Some(frame)) = (action, frame) {
                if frame.ty == "synced" {
                    let before = page_ends.insert(*conn, i);
                    assert!(before.is_none(), "two sync pages to {conn} in one call");
                }
            }
        }
        // Per connection, the first and last seq of the sync page being replayed.
        let mut pages: HashMap<ConnKey, (u64, u64)> = HashMap::new();
        // Connections this call sent to or awaited: a read's answer concerns one.
        let mut touched: HashSet<ConnKey> = HashSet::new();
        // Connections whose output the hub awaited in this call: later actions of the call
        // were made while it waited, even if the reactor calls `output_drained` at once.
        let mut awaited: HashSet<ConnKey> = HashSet::new();
        let mut page_bytes: HashMap<ConnKey, u64> = HashMap::new();
        let held_before: HashSet<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| c.held)
            .map(|(&k, _)| k)
            .collect();

        for (i, (action, frame)) in actions.iter().zip(&frames).enumerate() {
            match action {
                Action::Send {
                    conn,
                    text,
                    traffic,
                } => {
                    let conn = *conn;
                    let frame = frame.as_ref().expect("parsed above");
                    assert!(
                        !self.gone.contains(&conn),
                        "{} sent to {conn} after it disconnected: {}",
                        frame.ty,
                        String::from_utf8_lossy(text)
                    );
                    touched.insert(conn);
                    if matches!(frame.ty.as_ref(), "msg" | "synced") {
                        *page_bytes.entry(conn).or_default() += text.len() as u64;
                    }
                    let in_page = page_ends.get(&conn).is_some_and(|&end| i < end);
                    self.frame(conn, frame, *traffic, text.len(), in_page, &mut pages);
                }
                Action::Close { conn, code, .. } => {
                    assert!(
                        !self.gone.contains(conn),
                        "closed {conn} after it disconnected"
                    );
                    assert!(
                        [ACK_TIMEOUT, POLICY, SERVER_ERROR].contains(code),
                        "close code {code}"
                    );
                    touched.insert(*conn);
                    if let Some(state) = self.conns.get_mut(conn) {
                        state.closed = true;
                    }
                }
                Action::Store(job) => {
                    if let Some(user) = answering_read(job) {
                        let candidates: Vec<ConnKey> = self
                            .conns
                            .iter()
                            .filter(|(_, c)| c.user == user)
                            .map(|(&k, _)| k)
                            .collect();
                        let blocked: Vec<ConnKey> = candidates
                            .iter()
                            .copied()
                            .filter(|k| self.conns[k].held || awaited.contains(k))
                            .collect();
                        assert!(
                            !candidates.is_empty(),
                            "a read for {user}, who has no connection: {job:?}"
                        );
                        assert!(
                            blocked.len() < candidates.len(),
                            "a read started while the output of every connection of {user} \
                             was awaited ({blocked:?}): {job:?}"
                        );
                        self.read_jobs.insert(
                            job.tag(),
                            ReadJob {
                                candidates,
                                blocked,
                            },
                        );
                    }
                    let lane = usize::from(job.lane() == Lane::Read);
                    if self.full[lane] > 0 {
                        self.full[lane] -= 1;
                        let job = job.clone();
                        self.read_jobs.remove(&job.tag());
                        self.note(|| format!("store refuses {}", job.tag()));
                        let mut more = Vec::new();
                        self.hub.store_refused(job, self.now, &mut more);
                        self.deferred.push_back((more, Call::Other));
                    } else if lane == 1 {
                        self.reads.push(job.clone());
                    } else {
                        self.writes.push_back(job.clone());
                    }
                }
                Action::AwaitOutput { conn } => {
                    let conn = *conn;
                    assert!(
                        !self.gone.contains(&conn),
                        "output of {conn} awaited after it disconnected"
                    );
                    touched.insert(conn);
                    let state = self.conns.get_mut(&conn).expect("a live connection");
                    assert!(
                        !state.held && !awaited.contains(&conn),
                        "output of {conn} awaited twice without a drain"
                    );
                    awaited.insert(conn);
                    if self.hold[state.slot] {
                        state.held = true;
                        state.answers_held = 0;
                    } else {
                        // As the reactor: a backlog within the soft cap drains at once; what
                        // that starts goes after the rest of this call's actions.
                        let mut more = Vec::new();
                        self.hub.output_drained(conn, self.now, &mut more);
                        self.deferred.push_back((more, Call::Other));
                    }
                }
            }
        }

        if let Call::Read(tag) = call {
            let job = self.read_jobs.remove(&tag).expect("a read job");
            if touched.len() == 1 {
                let conn = *touched.iter().next().expect("one");
                assert!(
                    job.candidates.contains(&conn),
                    "the answer of read {tag} went to {conn}, not one of {:?}",
                    job.candidates
                );
                assert!(
                    !job.blocked.contains(&conn),
                    "read {tag} was started for {conn} while its output was awaited"
                );
                let bytes = page_bytes.get(&conn).copied().unwrap_or(0);
                let bound = page_bound(&self.config);
                assert!(
                    bytes <= bound,
                    "one page put {bytes} bytes out to {conn}, over {bound} (window_bytes {})",
                    self.config.window_bytes
                );
                if held_before.contains(&conn) {
                    let state = self.conns.get_mut(&conn).expect("held, so live");
                    state.answers_held += 1;
                    assert!(
                        state.answers_held <= 1,
                        "{} read answers reached {conn} while its output was awaited",
                        state.answers_held
                    );
                }
            }
        }
    }

    /// One frame to `conn`, checked against what the hub promises.
    fn frame(
        &mut self,
        conn: ConnKey,
        frame: &Frame<'_>,
        traffic: Traffic,
        len: usize,
        in_page: bool,
        pages: &mut HashMap<ConnKey, (u64, u64)>,
    ) {
        let Some(state) = self.conns.get_mut(&conn) else {
            return;
        };
        let ty = frame.ty.as_ref();
        if let Some(rid) = frame.rid {
            assert!(REPLIES.contains(&ty), "a {ty} with a rid");
            let owed = state.owed.get_mut(rid.get());
            match owed {
                Some(n) if *n > 0 => *n -= 1,
                _ => panic!("{conn} got a {ty} for rid {} it is not owed", rid.get()),
            }
            if ty == "error" {
                // A sync answered by an error (refused, superseded) has no page.
                state.syncs.remove(rid.get());
            }
        }
        assert_eq!(
            ty == "msg",
            matches!(traffic, Traffic::Push | Traffic::Repush),
            "{ty} sent as {traffic:?}"
        );
        match ty {
            "welcome" => {
                let head = frame.inbox_seq.expect("inbox_seq");
                assert!(head <= self.store.head(state.user));
                state.last = head;
                state.sure = head;
                state.acked = head;
            }
            "msg" => {
                assert!(!state.closed, "pushed to {conn} after the hub closed it");
                let seq = frame.seq.expect("msg.seq");
                let user = state.user;
                let stored = self.store.at(user, seq).unwrap_or_else(|| {
                    panic!(
                        "{conn} ({user}) pushed seq {seq}, past the store's head {}",
                        self.store.head(user)
                    )
                });
                assert_eq!(frame.mid, Some(stored.mid), "msg {seq} to {user}");
                assert_eq!(frame.from.as_deref(), Some(stored.from.as_str()));
                assert_eq!(frame.conv.as_deref(), Some(stored.conv.as_str()));
                assert_eq!(frame.kind.as_deref(), Some(stored.kind.as_str()));
                assert_eq!(frame.ref_mid, stored.ref_mid);
                assert_eq!(frame.cid.is_some(), stored.from == user, "cid only on own");
                let body = frame.body.as_deref().unwrap_or_default();
                if stored.kind == "group" {
                    assert_eq!(body, "", "a group change travels as `group`");
                } else {
                    assert!(
                        body == stored.original || (body.is_empty() && stored.recalled),
                        "msg {seq} to {user} shows another body"
                    );
                }
                assert!(frame.recalled.unwrap_or(false) <= stored.recalled);
                state.owes_ack = true;
                match traffic {
                    Traffic::Repush => {
                        assert!(!in_page, "a re-push in a sync page");
                        assert!(
                            seq <= state.last,
                            "{conn} re-pushed {seq}, beyond what was pushed ({})",
                            state.last
                        );
                        assert!(
                            seq > state.acked,
                            "{conn} re-pushed {seq}, which the hub counts as acked ({})",
                            state.acked
                        );
                    }
                    _ if in_page => {
                        let (_, last) = pages.entry(conn).or_insert((seq, seq - 1));
                        assert_eq!(
                            seq,
                            *last + 1,
                            "{conn}: a sync page replayed {seq} after {last}"
                        );
                        *last = seq;
                    }
                    _ => {
                        if seq == state.last + 1 {
                            state.last = seq;
                            state.sure = seq;
                        } else {
                            assert!(
                                seq <= state.last,
                                "gap: {conn} ({user}) was pushed {seq} after {}",
                                state.last
                            );
                            assert!(
                                state.echoes.contains(&seq),
                                "repeat: {conn} ({user}) was pushed {seq} again (at {})",
                                state.last
                            );
                            state.sure = state.sure.max(seq);
                        }
                    }
                }
            }
            "synced" => {
                let seq = frame.seq.expect("synced.seq");
                let head = frame.head.expect("synced.head");
                let more = frame.more.expect("synced.more");
                assert!(head <= self.store.head(state.user), "synced past the head");
                assert_eq!(more, seq < head, "more is whether the page stopped short");
                assert!(
                    !state.closed,
                    "a sync page to {conn} after the hub closed it"
                );
                let replayed = pages.remove(&conn);
                // A page of a sync this client did not send (raw bytes) tells its `after`
                // by where it starts: the store's inboxes have no gaps.
                let known = frame.rid.and_then(|rid| state.syncs.remove(rid.get()));
                let after = match (known, replayed) {
                    (Some(after), _) => after,
                    (None, Some((first, _))) => first - 1,
                    (None, None) => seq,
                };
                match replayed {
                    Some((first, last)) => {
                        assert_eq!(first, after + 1, "a page after {after} started at {first}");
                        assert_eq!(seq, last, "synced.seq is the last seq replayed");
                    }
                    None => assert_eq!(seq, after, "an empty page ends where it started"),
                }
                // Past the head (a cursor from a restored database), pushes go on from the
                // head, as the hub counts it delivered.
                let delivered = if more { seq } else { head };
                state.last = delivered;
                state.sure = delivered;
                state.echoes.clear();
                // Mirrors the hub: a sync starts the connection's acks over from `after`.
                state.acked = after.max(state.client_acked).min(delivered);
            }
            "sent" => {
                let seq = frame.seq.expect("sent.seq");
                let cid = frame.cid.as_deref().expect("sent.cid");
                let key = (state.user.to_owned(), cid.to_owned());
                let mid = *self
                    .store
                    .by_cid
                    .get(&key)
                    .expect("a sent for a stored cid");
                assert_eq!(frame.mid, Some(mid), "sent for {cid}");
                let stored = self.store.msg(mid).expect("stored");
                assert_eq!(seq, stored.sender_seq, "sent.seq for {cid}");
                // Where the connection was caught up, the `sent` stands in for this seq's
                // push; where it was not, the push still comes.
                if seq == state.last + 1 {
                    state.last = seq;
                    state.echoes.insert(seq);
                }
            }
            "error" => {
                let message = frame.message.as_deref().unwrap_or_default();
                assert!(!message.is_empty(), "an error without a message");
                assert!(
                    message.len() <= MAX_ERROR_MESSAGE,
                    "error message {message:?}"
                );
                assert!(frame.cid.as_ref().is_none_or(|c| c.len() <= MAX_ECHOED_CID));
                assert!(len <= MAX_ERROR_FRAME, "an error of {len} bytes");
            }
            "typing" => {
                assert_ne!(
                    frame.from.as_deref(),
                    Some(state.user),
                    "typing relayed to the typist's own connection"
                );
            }
            "ok" | "pong" | "convs" | "history" | "group" | "read" | "presence" | "blocked" => {}
            other => panic!("unexpected frame type {other}"),
        }
    }

    // -----------------------------------------------------------------------------------
    // The end
    // -----------------------------------------------------------------------------------

    /// Lets everything finish as the brief of the checks says: every store job run, every
    /// output drained, time past every deadline, with clients that ack what they hold (so
    /// the ack timeout does not close every connection and make the rid check vacuous).
    /// Then every open connection has had every reply it is owed.
    fn finish(&mut self) {
        self.full = [0; 2];
        self.hold = [false; SLOTS];
        for round in 0.. {
            assert!(round < 1000, "the hub never went quiet");
            for slot in 0..SLOTS {
                self.drain(slot);
            }
            let mut busy = self.settle();
            let mut limited = false;
            for slot in 0..SLOTS {
                if let Some(conn) = self.readable(slot) {
                    if self.conns[&conn].owes_ack {
                        let seq = self.conns[&conn].last;
                        let text = json!({"type": "ack", "seq": seq}).to_string();
                        limited |= !self.send_text(slot, text.as_bytes(), None);
                        busy = true;
                    }
                }
            }
            if limited {
                // A client told to slow down waits for its budget to refill: less than an
                // ack retry interval, so the ack still comes before a 4008.
                self.advance(50);
                continue;
            }
            if busy {
                continue;
            }
            match self.hub.next_deadline() {
                Some(at) => {
                    let by = at.saturating_sub(self.now.mono).max(1);
                    self.advance(by);
                }
                None => break,
            }
        }
        for (conn, state) in &self.conns {
            if state.closed {
                continue;
            }
            for (rid, &n) in &state.owed {
                assert_eq!(n, 0, "{conn} was never answered for rid {rid}");
            }
        }
    }
}

libfuzzer_sys::fuzz_target!(|input: Input| {
    let mut world = World::new(input.config, input.seeds);
    for (slot, &user) in START.iter().enumerate() {
        world.hold[slot] = input.hold & (1 << slot) != 0;
        world.connect(slot, user);
    }
    for op in input.ops.iter().take(MAX_OPS) {
        let slot = |s: u8| s as usize % SLOTS;
        match op {
            Op::Connect { slot: s, user } => world.connect(slot(*s), *user as usize),
            Op::Disconnect { slot: s } => world.disconnect(slot(*s)),
            Op::Request { slot: s, request } => world.request(slot(*s), request),
            Op::Spliced {
                slot: s,
                request,
                at,
                cut,
                bytes,
            } => world.spliced(slot(*s), request, *at, *cut, bytes),
            Op::Raw { slot: s, bytes } => {
                world.send_text(slot(*s), &bytes[..bytes.len().min(MAX_RAW)], None);
            }
            Op::RunWrite { fail } => world.run_write(*fail >= 240),
            Op::DeliverWrite => world.deliver_write(),
            Op::RunRead { pick, fail } => world.run_read(*pick as usize, *fail >= 240),
            Op::DeliverRead { pick } => world.deliver_read(*pick as usize),
            Op::Settle => {
                world.settle();
            }
            Op::StoreFull { reads, jobs } => world.full[usize::from(*reads)] = jobs % 4,
            Op::Advance { ms } => world.advance(u64::from(*ms)),
            Op::Hold { slot: s, on } => world.hold[slot(*s)] = *on,
            Op::Drain { slot: s } => world.drain(slot(*s)),
            Op::Shutdown => world.call(Call::Other, |hub, _, out| hub.shutdown(out)),
        }
    }
    world.finish();
});
