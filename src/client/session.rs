//! The client side of PROTOCOL.md for one device, sans-IO: no sockets, no clock. The
//! owner hands in each text frame from the server ([`Session::on_text`]) and the time in
//! milliseconds from any fixed origin ([`Session::heard`], [`Session::tick`]), and writes
//! out what [`Session::take_requests`] returns after each batch of input.
//!
//! The state that outlives a connection is the cursor (the highest inbox seq held with no
//! gap below it) and the outbox (sends without their `sent`). Everything else is reset by
//! [`Session::after_connect`], which also yields the requests that resume delivery: a
//! `sync` from the cursor, then every pending send again. The server is idempotent on
//! `(sender, cid)`, so resending a message that was in fact stored costs one `sent`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Value};

/// PROTOCOL.md "Reconnect": 1, 2, 3, 5, 10, 20, 20, … seconds.
pub const BACKOFF_SCHEDULE_MS: [u64; 6] = [1_000, 2_000, 3_000, 5_000, 10_000, 20_000];

/// Jitter around each backoff step, in thousandths either way.
const JITTER_PERMILLE: u64 = 200;

/// Longest device id: with the run epoch and a 64-bit counter the cid stays under the
/// server's 64-byte limit.
pub const MAX_DEVICE_ID: usize = 32;

/// Used until a `welcome` says otherwise; PROTOCOL.md's default.
const DEFAULT_HEARTBEAT_MS: u64 = 25_000;

#[derive(Clone, Debug)]
pub struct Config {
    /// Names this device in every cid it makes: 1 to [`MAX_DEVICE_ID`] bytes.
    pub device: String,
    /// Seeds the backoff jitter and the run epoch in cids. Give each run of a process a
    /// different seed: a restarted device that counts its cids from 1 again would
    /// otherwise collide with its earlier messages, which the server would take as
    /// resends and not store.
    pub seed: u64,
    /// Page size asked for in `sync`; `None` leaves it to the server (1000).
    pub sync_limit: Option<u32>,
    /// Entries kept above a gap until the gap fills. Past it the highest are dropped:
    /// the sync that the gap asks for brings them again.
    pub max_held: usize,
    /// How long past a heartbeat the server may stay silent before the connection is
    /// taken for dead.
    pub heartbeat_grace_ms: u64,
    /// Wait before resending after a transient error (`unavailable`, `rate_limited`,
    /// `internal`), for a send or a sync.
    pub retry_ms: u64,
}

impl Config {
    pub fn new(device: impl Into<String>, seed: u64) -> Config {
        Config {
            device: device.into(),
            seed,
            sync_limit: None,
            max_held: 1024,
            heartbeat_grace_ms: 10_000,
            retry_ms: 1_000,
        }
    }
}

/// What a server frame meant, after dedupe and reordering.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Welcome(Welcome),
    /// A send of this session's outbox is stored, reported once per cid; or a `sent`
    /// for a cid this session did not make (a request written by hand), passed through.
    Sent(Sent),
    /// An inbox entry, each seq once and in seq order.
    Msg(Msg),
    Synced(Synced),
    Error(ErrorReply),
    Pong(Pong),
    /// Any other frame: `ok`, types this client does not know, or a known type whose
    /// fields did not parse. Text that is not JSON comes as a JSON string.
    Other(Value),
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Welcome {
    pub user: String,
    /// A string on the wire (64-bit ids do not fit a JavaScript number); a number is
    /// taken too.
    #[serde(deserialize_with = "string_or_number")]
    pub conn: String,
    pub heartbeat_ms: u64,
    pub inbox_seq: u64,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Sent {
    pub cid: String,
    pub mid: u64,
    pub conv: String,
    /// The sender's inbox seq of the message.
    pub seq: u64,
    pub ts: u64,
    #[serde(default)]
    pub rid: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Msg {
    pub seq: u64,
    pub mid: u64,
    pub conv: String,
    pub from: String,
    pub body: String,
    pub ts: u64,
    #[serde(default = "text_kind")]
    pub kind: String,
    /// Present when `from` is this user: the cid the sending device gave it.
    #[serde(default)]
    pub cid: Option<String>,
    /// The recalled `mid`, on `kind: "recall"` entries.
    #[serde(rename = "ref", default)]
    pub ref_mid: Option<u64>,
}

fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!(
            "expected a string or a number, got {other}"
        ))),
    }
}

fn text_kind() -> String {
    "text".to_owned()
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Synced {
    pub seq: u64,
    pub head: u64,
    pub more: bool,
    #[serde(default)]
    pub rid: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ErrorReply {
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub cid: Option<String>,
    #[serde(default)]
    pub rid: Option<Value>,
}

impl ErrorReply {
    /// Worth trying again later: the server was busy or failed, not the request.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.code.as_str(),
            "unavailable" | "rate_limited" | "internal"
        )
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Pong {
    #[serde(default)]
    pub heartbeat_ms: Option<u64>,
    #[serde(default)]
    pub rid: Option<Value>,
}

/// The server frames this client understands. Anything that fails this parse is looked
/// at again as plain JSON and becomes [`Event::Other`].
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Wire {
    Welcome(Welcome),
    Sent(Sent),
    Msg(Msg),
    Synced(Synced),
    Error(ErrorReply),
    Pong(Pong),
}

/// The answer of [`Session::tick`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    /// Nothing came from the server for a heartbeat plus the grace: close and reconnect.
    Dead,
}

/// Reconnect delays of PROTOCOL.md with deterministic jitter.
#[derive(Clone, Debug)]
pub struct Backoff {
    attempt: usize,
    rng: u64,
}

impl Backoff {
    pub fn new(seed: u64) -> Backoff {
        Backoff {
            attempt: 0,
            rng: seed,
        }
    }

    /// The wait before the next connection attempt; each call moves one step along.
    pub fn next_delay_ms(&mut self) -> u64 {
        let base = BACKOFF_SCHEDULE_MS[self.attempt.min(BACKOFF_SCHEDULE_MS.len() - 1)];
        self.attempt = self.attempt.saturating_add(1);
        // Jitter spreads the reconnects of many clients cut off by the same outage, so
        // the server is not met by all of them in the same millisecond.
        let spread = splitmix64(&mut self.rng) % (2 * JITTER_PERMILLE + 1);
        base * (1000 - JITTER_PERMILLE + spread) / 1000
    }

    /// Back to the first step: after a `welcome`, or when the network is known to be back.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Steps taken since the last reset.
    pub fn attempt(&self) -> usize {
        self.attempt
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What is known about an inbox seq above a gap.
#[derive(Debug)]
enum Held {
    /// To be handed out when the gap below it fills.
    Msg(Msg),
    /// This session's own message (its `sent` arrived): counts for the cursor, shown as
    /// nothing.
    Own,
}

#[derive(Debug)]
struct Outgoing {
    cid: String,
    to: String,
    body: String,
    kind: String,
    /// After a transient error: resend at this time (if still connected).
    retry_at: Option<u64>,
}

#[derive(Debug)]
struct SyncInFlight {
    rid: String,
    after: u64,
}

#[derive(Debug)]
pub struct Session {
    config: Config,
    /// `<device>.<run epoch>.`; followed by the counter it makes each cid.
    cid_prefix: String,
    next_cid: u64,
    /// Pending sends by counter, so resends go out in the order they were made.
    outbox: BTreeMap<u64, Outgoing>,
    cursor: u64,
    held: BTreeMap<u64, Held>,
    user: Option<String>,
    connected: bool,
    /// Requests made while connected, in order, until taken.
    output: Vec<String>,
    /// The last `ack` written on this connection.
    acked: u64,
    /// A `msg` arrived since the last ack; a re-pushed duplicate still wants its ack,
    /// or the server would count it unacked and close with 4008.
    ack_owed: bool,
    sync: Option<SyncInFlight>,
    sync_wanted: bool,
    sync_retry_at: Option<u64>,
    next_rid: u64,
    backoff: Backoff,
    heartbeat_ms: u64,
    now: u64,
    last_heard: u64,
    last_sent: u64,
    last_ping: u64,
}

impl Session {
    /// A new device: it holds nothing yet and syncs from 0.
    pub fn new(config: Config) -> Session {
        Session::with_cursor(config, 0)
    }

    /// A device that holds every entry up to `cursor` (saved from [`Session::cursor`]).
    ///
    /// # Panics
    /// When the device id is empty or longer than [`MAX_DEVICE_ID`].
    pub fn with_cursor(config: Config, cursor: u64) -> Session {
        assert!(
            (1..=MAX_DEVICE_ID).contains(&config.device.len()),
            "device id is 1 to {MAX_DEVICE_ID} bytes"
        );
        let mut seed = config.seed;
        let epoch = (splitmix64(&mut seed) >> 32) as u32;
        let backoff = Backoff::new(splitmix64(&mut seed));
        Session {
            cid_prefix: format!("{}.{epoch:08x}.", config.device),
            config,
            next_cid: 1,
            outbox: BTreeMap::new(),
            cursor,
            held: BTreeMap::new(),
            user: None,
            connected: false,
            output: Vec::new(),
            acked: 0,
            ack_owed: false,
            sync: None,
            sync_wanted: false,
            sync_retry_at: None,
            next_rid: 1,
            backoff,
            heartbeat_ms: DEFAULT_HEARTBEAT_MS,
            now: 0,
            last_heard: 0,
            last_sent: 0,
            last_ping: 0,
        }
    }

    /// The highest inbox seq held with no gap below it: save it to resume from there.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The user the server greeted this session as, once a `welcome` arrived.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// The app ping interval the server asked for.
    pub fn heartbeat_ms(&self) -> u64 {
        self.heartbeat_ms
    }

    /// Cids sent and not yet confirmed, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = &str> + '_ {
        self.outbox.values().map(|o| o.cid.as_str())
    }

    pub fn pending_count(&self) -> usize {
        self.outbox.len()
    }

    /// Entries held above a gap.
    pub fn held_count(&self) -> usize {
        self.held.len()
    }

    /// A `sync` is out and its `synced` has not come back.
    pub fn is_syncing(&self) -> bool {
        self.sync.is_some()
    }

    pub fn backoff(&mut self) -> &mut Backoff {
        &mut self.backoff
    }

    /// Queues a text message to `to` (`user:<id>` or `group:<gid>`) and returns its cid.
    pub fn send(&mut self, to: &str, body: &str) -> String {
        self.send_kind(to, body, "text")
    }

    /// Queues a message of any client `kind`. It stays in the outbox until its `sent` (or
    /// a refusal that resending cannot cure) arrives; while disconnected it waits for
    /// [`Session::after_connect`].
    pub fn send_kind(&mut self, to: &str, body: &str, kind: &str) -> String {
        let n = self.next_cid;
        self.next_cid += 1;
        let outgoing = Outgoing {
            cid: format!("{}{n}", self.cid_prefix),
            to: to.to_owned(),
            body: body.to_owned(),
            kind: kind.to_owned(),
            retry_at: None,
        };
        let cid = outgoing.cid.clone();
        if self.connected {
            self.output.push(send_request(&outgoing));
        }
        self.outbox.insert(n, outgoing);
        cid
    }

    /// A connection is up (the `101` is in): resets what belongs to one connection and
    /// returns what to write first, in this order: a `sync` from the cursor, then every
    /// pending send.
    pub fn after_connect(&mut self, now_ms: u64) -> Vec<String> {
        self.on_connect(now_ms);
        let mut requests = vec![self.sync_request()];
        for outgoing in self.outbox.values_mut() {
            outgoing.retry_at = None;
            requests.push(send_request(outgoing));
        }
        requests
    }

    /// A connection is up, and the owner will not resume on it (a test that wants the
    /// wire to itself): only the per-connection state is reset. Pending sends wait for
    /// a later [`Session::after_connect`].
    pub fn on_connect(&mut self, now_ms: u64) {
        self.connected = true;
        self.now = self.now.max(now_ms);
        self.last_heard = now_ms;
        self.last_sent = now_ms;
        self.last_ping = now_ms;
        self.output.clear();
        self.acked = 0;
        self.ack_owed = false;
        self.sync = None;
        self.sync_wanted = false;
        self.sync_retry_at = None;
    }

    /// The connection is gone. Pending sends stay for the next [`Session::after_connect`].
    pub fn disconnected(&mut self) {
        self.connected = false;
        self.output.clear();
        self.sync = None;
        self.sync_wanted = false;
        self.sync_retry_at = None;
    }

    /// How long to wait before the next connection attempt (one backoff step).
    pub fn reconnect_delay_ms(&mut self) -> u64 {
        self.backoff.next_delay_ms()
    }

    /// A frame (of any kind) arrived from the server at `now_ms`.
    pub fn heard(&mut self, now_ms: u64) {
        self.now = self.now.max(now_ms);
        self.last_heard = now_ms;
    }

    /// Time passes: queues an app `ping` when one is due, resends what waits out a
    /// transient error, and says whether the server has been silent for too long.
    pub fn tick(&mut self, now_ms: u64) -> Liveness {
        self.now = self.now.max(now_ms);
        if !self.connected {
            return Liveness::Alive;
        }
        let silent = now_ms.saturating_sub(self.last_heard);
        if silent > self.heartbeat_ms + self.config.heartbeat_grace_ms {
            return Liveness::Dead;
        }
        // The ping keeps the server's idle timer from firing while we have nothing to
        // say, and draws a `pong` when the server has been quiet for a heartbeat.
        let idle = now_ms.saturating_sub(self.last_sent) >= self.heartbeat_ms;
        let probe = silent >= self.heartbeat_ms && self.last_ping <= self.last_heard;
        if self.heartbeat_ms > 0 && (idle || probe) {
            self.last_ping = now_ms;
            self.output.push(json!({"type": "ping"}).to_string());
        }
        if self.sync_retry_at.is_some_and(|at| at <= now_ms) {
            self.sync_retry_at = None;
            self.sync_wanted = true;
        }
        for outgoing in self.outbox.values_mut() {
            if outgoing.retry_at.is_some_and(|at| at <= now_ms) {
                outgoing.retry_at = None;
                self.output.push(send_request(outgoing));
            }
        }
        Liveness::Alive
    }

    /// The requests to write now: at most one cumulative `ack` for everything that came
    /// in since the last call, a `sync` if a gap or a partial page asks for one, then the
    /// rest in the order it was made. Call after each batch of input.
    pub fn take_requests(&mut self) -> Vec<String> {
        let mut requests = Vec::new();
        if !self.connected {
            return requests;
        }
        // Only pushes want an ack: a `sent` moves the cursor too, but the server counts the
        // sender's own entry as delivered without one (acking it would cost the server a
        // request per message sent).
        if self.ack_owed && self.cursor > 0 {
            requests.push(json!({"type": "ack", "seq": self.cursor}).to_string());
            self.acked = self.cursor;
        }
        self.ack_owed = false;
        if self.sync_wanted && self.sync.is_none() && self.sync_retry_at.is_none() {
            requests.push(self.sync_request());
        }
        requests.append(&mut self.output);
        if !requests.is_empty() {
            self.last_sent = self.now;
        }
        requests
    }

    /// Parses one text frame from the server and returns what it means.
    pub fn on_text(&mut self, text: &[u8]) -> Vec<Event> {
        let mut events = Vec::new();
        self.on_text_into(text, &mut events);
        events
    }

    /// [`Session::on_text`] into the caller's vector (no allocation per frame).
    pub fn on_text_into(&mut self, text: &[u8], events: &mut Vec<Event>) {
        let wire = match serde_json::from_slice::<Wire>(text) {
            Ok(wire) => wire,
            Err(_) => {
                let value = serde_json::from_slice(text)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(text).into()));
                events.push(Event::Other(value));
                return;
            }
        };
        match wire {
            Wire::Welcome(welcome) => {
                self.user = Some(welcome.user.clone());
                self.heartbeat_ms = welcome.heartbeat_ms;
                self.backoff.reset();
                events.push(Event::Welcome(welcome));
            }
            Wire::Sent(sent) => {
                let fresh = match self.own_counter(&sent.cid) {
                    Some(n) => self.outbox.remove(&n).is_some(),
                    None => true,
                };
                // On the sending connection `sent` stands in for the `msg` of its seq.
                self.accept(sent.seq, Held::Own, events);
                if fresh {
                    events.push(Event::Sent(sent));
                }
            }
            Wire::Msg(msg) => self.on_msg(msg, events),
            Wire::Synced(synced) => {
                let answers_ours = match (&self.sync, &synced.rid) {
                    (Some(sync), Some(Value::String(rid))) => *rid == sync.rid,
                    _ => false,
                };
                if answers_ours {
                    let started_from = self.sync.take().map_or(0, |s| s.after);
                    // A gap still open after a complete page is worth another sync only
                    // if this one made progress; otherwise it would repeat forever.
                    let gap_left = !self.held.is_empty() && self.cursor > started_from;
                    self.sync_wanted = synced.more || gap_left;
                }
                events.push(Event::Synced(synced));
            }
            Wire::Error(error) => {
                if let Some(n) = error.cid.as_deref().and_then(|c| self.own_counter(c)) {
                    if error.is_transient() {
                        let at = self.now + self.config.retry_ms;
                        if let Some(outgoing) = self.outbox.get_mut(&n) {
                            outgoing.retry_at = Some(at);
                        }
                    } else {
                        // Refused for what it is (too large, bad address, no such user):
                        // resending would be refused again.
                        self.outbox.remove(&n);
                    }
                }
                let answers_ours = match (&self.sync, &error.rid) {
                    (Some(sync), Some(Value::String(rid))) => *rid == sync.rid,
                    _ => false,
                };
                if answers_ours {
                    self.sync = None;
                    self.sync_retry_at = Some(self.now + self.config.retry_ms);
                }
                events.push(Event::Error(error));
            }
            Wire::Pong(pong) => {
                if let Some(ms) = pong.heartbeat_ms {
                    self.heartbeat_ms = ms;
                }
                events.push(Event::Pong(pong));
            }
        }
    }

    fn on_msg(&mut self, msg: Msg, events: &mut Vec<Event>) {
        // Any msg wants an ack, a duplicate too: it is a re-push of one whose ack the
        // server has not seen.
        self.ack_owed = true;
        let seq = msg.seq;
        if seq <= self.cursor || self.held.contains_key(&seq) {
            return;
        }
        let held = match msg.cid.as_deref().and_then(|c| self.own_counter(c)) {
            Some(n) => {
                // Our own message came back as an entry: its `sent` was lost (with the
                // connection, say). The entry confirms the send as well as a `sent` would.
                if self.outbox.remove(&n).is_some() {
                    events.push(Event::Sent(Sent {
                        cid: msg.cid.unwrap_or_default(),
                        mid: msg.mid,
                        conv: msg.conv,
                        seq,
                        ts: msg.ts,
                        rid: None,
                    }));
                }
                Held::Own
            }
            None => Held::Msg(msg),
        };
        let gap = seq > self.cursor + 1;
        self.accept(seq, held, events);
        if gap {
            self.sync_wanted = true;
        }
    }

    /// Takes in the entry at `seq`: hands out everything that is now gap-free, or holds
    /// it above the gap (boundedly).
    fn accept(&mut self, seq: u64, held: Held, events: &mut Vec<Event>) {
        if seq <= self.cursor || self.held.contains_key(&seq) {
            return;
        }
        if seq == self.cursor + 1 {
            self.cursor = seq;
            if let Held::Msg(msg) = held {
                events.push(Event::Msg(msg));
            }
            while let Some(next) = self.held.remove(&(self.cursor + 1)) {
                self.cursor += 1;
                if let Held::Msg(msg) = next {
                    events.push(Event::Msg(msg));
                }
            }
            return;
        }
        if self.held.len() >= self.config.max_held {
            // Keep the lowest: they are the ones the gap filling releases first.
            match self.held.last_key_value() {
                Some((&highest, _)) if highest > seq => {
                    self.held.pop_last();
                }
                _ => return,
            }
        }
        self.held.insert(seq, held);
    }

    /// The counter of a cid this session made, in this run.
    fn own_counter(&self, cid: &str) -> Option<u64> {
        let n: u64 = cid.strip_prefix(&self.cid_prefix)?.parse().ok()?;
        (n > 0 && n < self.next_cid).then_some(n)
    }

    fn sync_request(&mut self) -> String {
        let rid = format!("sync-{}", self.next_rid);
        self.next_rid += 1;
        let mut request = json!({"type": "sync", "after": self.cursor, "rid": rid});
        if let Some(limit) = self.config.sync_limit {
            request["limit"] = json!(limit);
        }
        self.sync = Some(SyncInFlight {
            rid,
            after: self.cursor,
        });
        self.sync_wanted = false;
        request.to_string()
    }
}

fn send_request(outgoing: &Outgoing) -> String {
    let mut request = json!({
        "type": "send",
        "cid": outgoing.cid,
        "to": outgoing.to,
        "body": outgoing.body,
    });
    if outgoing.kind != "text" {
        request["kind"] = json!(outgoing.kind);
    }
    request.to_string()
}

#[cfg(test)]
mod tests;
