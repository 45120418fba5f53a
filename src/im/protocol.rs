//! The JSON of PROTOCOL.md: what clients send, parsed in two steps so every fault gets the
//! reply the contract names, and what the server sends, written without intermediate trees.
//!
//! Parsing first reads only `type` and `rid` (borrowed, everything else skipped), then the
//! fields of that one type. Invalid JSON, an unknown `type` and a bad field are three
//! different `bad_request` messages, and the reply still carries the request's `rid`.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A request correlation id: a JSON string or number, echoed back verbatim.
pub type Rid = Box<RawValue>;

/// Longest `cid` accepted: a UUID in any spelling fits, and it is stored per message.
pub const MAX_CID: usize = 64;
/// Longest `rid` accepted, as JSON text: it is echoed and may be held with a waiting send.
pub const MAX_RID: usize = 128;
/// Largest `limit` a `sync` page may ask for.
pub const MAX_SYNC_PAGE: u32 = 1000;
/// `history` page size when none is asked for, and the most one page holds.
pub const HISTORY_PAGE: u32 = 50;
pub const MAX_HISTORY_PAGE: u32 = 100;
/// `convs` list length when none is asked for, and the most one list holds.
pub const CONVS_PAGE: u32 = 100;
pub const MAX_CONVS_PAGE: u32 = 500;
/// Most users one `watch` may name, and most members one group request may name.
pub const MAX_WATCH: usize = 256;
pub const MAX_NAMED_MEMBERS: usize = 1000;
/// Longest group name, in bytes after trimming (the hub enforces it).
pub const MAX_GROUP_NAME: usize = 64;
/// Longest message `kind` (the hub enforces it).
pub const MAX_KIND: usize = 16;
/// Longest `cid` an error carries back. A little over [`MAX_CID`], so a client whose cid is
/// just too long can still match the refusal to its outbox entry; anything longer is not a
/// mistake worth echoing, and a `send` carrying one is refused without it.
pub const MAX_ECHOED_CID: usize = 2 * MAX_CID;
/// Most bytes of a client's text one error message quotes, after escaping: enough to
/// recognise the mistake, never enough to make a reply a copy of its request.
pub const MAX_QUOTE: usize = 32;
/// Longest `message` an `error` carries, in bytes. Every message the server writes itself
/// is far shorter; the bound is there for text it does not control (serde's errors quote
/// the values they reject) and for client text quoted without [`quote`].
pub const MAX_ERROR_MESSAGE: usize = 200;

#[derive(Debug)]
pub enum Request {
    Ping,
    Send(Send),
    Ack {
        seq: u64,
    },
    Sync {
        after: u64,
        limit: u32,
    },
    Read {
        conv: String,
        mid: u64,
    },
    Convs {
        limit: u32,
    },
    History {
        conv: String,
        before: Option<u64>,
        limit: u32,
    },
    GroupCreate {
        name: String,
        members: Vec<String>,
    },
    GroupAdd {
        gid: u64,
        members: Vec<String>,
    },
    /// `members`, when given, must name only the caller: nobody leaves for someone else.
    GroupLeave {
        gid: u64,
        members: Vec<String>,
    },
    /// A read, despite its name: the group's member list, which change entries leave out.
    GroupInfo {
        gid: u64,
    },
    Recall {
        mid: u64,
    },
    Watch {
        users: Vec<String>,
    },
    Typing {
        to: String,
    },
    /// Keeps `user` out: no dm, no group add, no presence or typing, either way.
    Block {
        user: String,
    },
    Unblock {
        user: String,
    },
    /// The caller's block list.
    Blocked,
}

impl Request {
    /// Requests that change what is stored: they keep their order behind a `sync`.
    pub fn writes(&self) -> bool {
        matches!(
            self,
            Request::Send(_)
                | Request::Read { .. }
                | Request::GroupCreate { .. }
                | Request::GroupAdd { .. }
                | Request::GroupLeave { .. }
                | Request::Recall { .. }
                | Request::Block { .. }
                | Request::Unblock { .. }
        )
    }
}

#[derive(Debug, Deserialize)]
pub struct Send {
    pub cid: String,
    pub to: String,
    pub body: String,
    #[serde(default = "text_kind")]
    pub kind: String,
}

fn text_kind() -> String {
    "text".to_owned()
}

/// Why a frame is not a request, with the `rid` when it could be read.
#[derive(Debug)]
pub struct BadRequest {
    pub rid: Option<Rid>,
    /// A `send`'s `cid` when it could be read, so the client's outbox can match the error.
    pub cid: Option<String>,
    pub message: String,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    rid: Option<Rid>,
    #[serde(borrow)]
    cid: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct AckFields {
    seq: u64,
}

#[derive(Deserialize)]
struct SyncFields {
    #[serde(default)]
    after: u64,
    limit: Option<u32>,
}

#[derive(Deserialize)]
struct NoFields {}

#[derive(Deserialize)]
struct ReadFields {
    conv: String,
    mid: u64,
}

#[derive(Deserialize)]
struct ConvsFields {
    limit: Option<u32>,
}

#[derive(Deserialize)]
struct HistoryFields {
    conv: String,
    before: Option<u64>,
    limit: Option<u32>,
}

#[derive(Deserialize)]
struct GroupCreateFields {
    name: String,
    #[serde(default)]
    members: Vec<String>,
}

#[derive(Deserialize)]
struct GroupFields {
    #[serde(deserialize_with = "gid")]
    gid: u64,
    #[serde(default)]
    members: Vec<String>,
}

#[derive(Deserialize)]
struct GroupInfoFields {
    #[serde(deserialize_with = "gid")]
    gid: u64,
}

#[derive(Deserialize)]
struct RecallFields {
    mid: u64,
}

#[derive(Deserialize)]
struct WatchFields {
    users: Vec<String>,
}

#[derive(Deserialize)]
struct TypingFields {
    to: String,
}

#[derive(Deserialize)]
struct BlockFields {
    user: String,
}

/// A group id as the server writes it (a decimal string), or as a number.
fn gid<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Gid<'a> {
        Number(u64),
        Text(&'a str),
    }
    match Gid::deserialize(d)? {
        Gid::Number(n) => Ok(n),
        // Digits only, and no more than a u64 has: `str::parse` would also take a sign and
        // any number of leading zeros, which would make a legal request unbounded.
        Gid::Text(s) if (1..=20).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().map_err(|_| serde::de::Error::custom(GID_FORMAT))
        }
        Gid::Text(_) => Err(serde::de::Error::custom(GID_FORMAT)),
    }
}

const GID_FORMAT: &str = "`gid` is a group id such as \"7\"";

/// `text` quoted for an error message: escaped as Rust's `{:?}` does, at most
/// [`MAX_QUOTE`] bytes of it, cut on a character boundary and marked with `…` when cut.
/// Whatever a client sends, quoting it costs a few dozen bytes.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(MAX_QUOTE + 8);
    out.push('\'');
    let mut used = 0;
    for c in text.chars() {
        let escaped = c.escape_debug();
        // Bytes, not characters: an `é` is two of them.
        let len: usize = escaped.clone().map(char::len_utf8).sum();
        if used + len > MAX_QUOTE {
            out.push('…');
            break;
        }
        used += len;
        out.extend(escaped);
    }
    out.push('\'');
    out
}

/// `message` cut to at most [`MAX_ERROR_MESSAGE`] bytes. A long message keeps its start
/// (what was wrong) and its end (serde's `expected …` and the position), and loses the
/// middle, which is where a quoted value sits.
fn bounded(message: &str) -> std::borrow::Cow<'_, str> {
    const CUT: &str = " … ";
    const TAIL: usize = 60;
    if message.len() <= MAX_ERROR_MESSAGE {
        return message.into();
    }
    let mut head = MAX_ERROR_MESSAGE - CUT.len() - TAIL;
    while !message.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = message.len() - TAIL;
    while !message.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{}{CUT}{}", &message[..head], &message[tail..]).into()
}

fn bounded_message<S: serde::Serializer>(message: &&str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&bounded(message))
}

/// An upper bound on the length in bytes of the largest legal request frame when a `send`
/// body may hold `max_body` bytes: a frame longer than this can be refused from its header,
/// since parsing it could only end in an error.
///
/// It is the largest of the request kinds' own bounds, plus a fixed slack. Every string is
/// counted at six bytes per byte of content, since a client may spell any character as
/// `\u0061` (and must spell control characters so): `\u0001` is six bytes for one, the
/// worst ratio JSON has (a four-byte character as a surrogate pair is twelve for four).
///
/// - `send`: the body (`max_body`, checked by the hub), the `cid` ([`MAX_CID`]), `to`
///   (`user:` and a user id of `MAX_USER_ID_LEN`; `group:<gid>` is shorter), the `kind`
///   ([`MAX_KIND`]) and a `rid` ([`MAX_RID`] as JSON text, checked here).
/// - `group_create` and `group_add`, counted as one: a name ([`MAX_GROUP_NAME`]), a gid (20
///   digits), a `rid`, and [`MAX_NAMED_MEMBERS`] user ids, each with its comma and room for
///   a pretty-printer's newline and indentation. With the default 16 KiB body this is the
///   largest kind: a thousand fully escaped ids.
/// - `watch`: [`MAX_WATCH`] user ids, the same way.
/// - `read` and `history`: a dm conversation id (two user ids) and two numbers.
/// - The slack (4 KiB): every key even when escaped, `"type":"…"`, colons, commas, braces,
///   the small numbers of the other kinds, whitespace between fields, and a few small
///   fields a client may add, which are ignored. JSON allows any amount of whitespace and
///   any unknown field; a request padded past the slack is refused as too large, which no
///   client printing JSON the ordinary way ever meets.
///
/// Saturates instead of overflowing for an absurd `max_body`.
pub fn max_request_len(max_body: usize) -> usize {
    const ESCAPED: usize = 6;
    const DIGITS: usize = 20;
    const SLACK: usize = 4096;
    // A comma and up to 16 bytes of newline and indentation before each array item.
    const BETWEEN_ITEMS: usize = 1 + 16;
    const fn string(bytes: usize) -> usize {
        2 + ESCAPED * bytes
    }
    const USER: usize = crate::user_id::MAX_USER_ID_LEN;
    const USER_ITEM: usize = string(USER) + BETWEEN_ITEMS;
    const SEND_BESIDES_BODY: usize =
        string(MAX_CID) + string("user:".len() + USER) + string(MAX_KIND) + MAX_RID;
    const GROUP: usize =
        string(MAX_GROUP_NAME) + string(DIGITS) + MAX_RID + MAX_NAMED_MEMBERS * USER_ITEM;
    const WATCH: usize = MAX_RID + MAX_WATCH * USER_ITEM;
    const CONV: usize = string("dm:".len() + USER + 1 + USER) + 2 * DIGITS + MAX_RID;
    let send = max_body
        .saturating_mul(ESCAPED)
        .saturating_add(2 + SEND_BESIDES_BODY);
    send.max(GROUP).max(WATCH).max(CONV).saturating_add(SLACK)
}

/// Parses one text frame. On success also returns the `rid`, if any.
///
/// No message of a [`BadRequest`] is longer than [`MAX_ERROR_MESSAGE`], and none carries a
/// `cid` longer than [`MAX_ECHOED_CID`]: an error costs the same whatever the request held.
pub fn parse(text: &[u8]) -> Result<(Request, Option<Rid>), BadRequest> {
    let envelope: Envelope<'_> = serde_json::from_slice(text).map_err(|e| BadRequest {
        rid: None,
        cid: None,
        message: if e.is_data() {
            "a request is a JSON object with a string field `type`".to_owned()
        } else {
            bounded(&format!("invalid JSON: {e}")).into_owned()
        },
    })?;
    let rid = envelope.rid;
    let cid = envelope
        .cid
        .filter(|c| c.len() <= MAX_ECHOED_CID)
        .map(|c| c.into_owned());
    if let Some(rid) = &rid {
        let first = rid.get().as_bytes()[0];
        if !(first == b'"' || first == b'-' || first.is_ascii_digit()) || rid.get().len() > MAX_RID
        {
            return Err(BadRequest {
                rid: None,
                cid: None,
                message: "`rid` must be a string or a number of at most 128 characters".to_owned(),
            });
        }
    }
    let Some(kind) = envelope.kind else {
        return Err(BadRequest {
            rid,
            cid: None,
            message: "missing `type`".to_owned(),
        });
    };
    // serde's text quotes the value it rejects (`invalid type: string "…"`), whole.
    let fields = |e: serde_json::Error| bounded(&format!("bad `{kind}` request: {e}")).into_owned();
    let request =
        match &*kind {
            "ping" => serde_json::from_slice::<NoFields>(text).map(|_| Request::Ping),
            "send" => serde_json::from_slice::<Send>(text).map(Request::Send),
            "ack" => serde_json::from_slice::<AckFields>(text).map(|f| Request::Ack { seq: f.seq }),
            "sync" => serde_json::from_slice::<SyncFields>(text).map(|f| Request::Sync {
                after: f.after,
                limit: f.limit.unwrap_or(MAX_SYNC_PAGE).clamp(1, MAX_SYNC_PAGE),
            }),
            "read" => serde_json::from_slice::<ReadFields>(text).map(|f| Request::Read {
                conv: f.conv,
                mid: f.mid,
            }),
            "convs" => serde_json::from_slice::<ConvsFields>(text).map(|f| Request::Convs {
                limit: f.limit.unwrap_or(CONVS_PAGE).clamp(1, MAX_CONVS_PAGE),
            }),
            "history" => serde_json::from_slice::<HistoryFields>(text).map(|f| Request::History {
                conv: f.conv,
                before: f.before,
                limit: f.limit.unwrap_or(HISTORY_PAGE).clamp(1, MAX_HISTORY_PAGE),
            }),
            "group_create" => {
                serde_json::from_slice::<GroupCreateFields>(text).map(|f| Request::GroupCreate {
                    name: f.name,
                    members: f.members,
                })
            }
            "group_add" => serde_json::from_slice::<GroupFields>(text).map(|f| Request::GroupAdd {
                gid: f.gid,
                members: f.members,
            }),
            "group_leave" => {
                let leave = serde_json::from_slice::<GroupFields>(text);
                // The hub accepts only the caller here, any number of times over; the cap keeps
                // a legal leave within the size of a group_add (see `max_request_len`).
                if matches!(&leave, Ok(f) if f.members.len() > MAX_NAMED_MEMBERS) {
                    return Err(BadRequest {
                        rid,
                        cid: None,
                        message: format!("at most {MAX_NAMED_MEMBERS} users per request"),
                    });
                }
                leave.map(|f| Request::GroupLeave {
                    gid: f.gid,
                    members: f.members,
                })
            }
            "group_info" => serde_json::from_slice::<GroupInfoFields>(text)
                .map(|f| Request::GroupInfo { gid: f.gid }),
            "recall" => {
                serde_json::from_slice::<RecallFields>(text).map(|f| Request::Recall { mid: f.mid })
            }
            "watch" => serde_json::from_slice::<WatchFields>(text)
                .map(|f| Request::Watch { users: f.users }),
            "typing" => {
                serde_json::from_slice::<TypingFields>(text).map(|f| Request::Typing { to: f.to })
            }
            "block" => {
                serde_json::from_slice::<BlockFields>(text).map(|f| Request::Block { user: f.user })
            }
            "unblock" => serde_json::from_slice::<BlockFields>(text)
                .map(|f| Request::Unblock { user: f.user }),
            "blocked" => Ok(Request::Blocked),
            other => {
                return Err(BadRequest {
                    message: format!("unknown type {}", quote(other)),
                    rid,
                    cid: None,
                })
            }
        };
    match request {
        // Past this length a cid is not echoed (see MAX_ECHOED_CID), and the hub, which
        // answers a bad cid with the cid, must not get one to echo.
        Ok(Request::Send(send)) if send.cid.len() > MAX_ECHOED_CID => Err(BadRequest {
            message: format!("`cid` must be 1 to {MAX_CID} bytes"),
            rid,
            cid: None,
        }),
        Ok(request) => Ok((request, rid)),
        Err(e) => Err(BadRequest {
            message: fields(e),
            rid,
            cid: if kind == "send" { cid } else { None },
        }),
    }
}

/// Error codes of PROTOCOL.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    TooLarge,
    RateLimited,
    Unavailable,
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

/// Server → client messages. Borrowed fields: built from what is at hand, serialized at
/// once, never stored.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply<'a> {
    Welcome {
        user: &'a str,
        /// A string: the id is a 64-bit number, past what a JavaScript number holds exactly.
        #[serde(serialize_with = "as_string")]
        conn: u64,
        heartbeat_ms: u64,
        inbox_seq: u64,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<&'a RawValue>,
        heartbeat_ms: u64,
    },
    Sent {
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<&'a RawValue>,
        cid: &'a str,
        mid: u64,
        conv: &'a str,
        seq: u64,
        ts: u64,
    },
    Synced {
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<&'a RawValue>,
        seq: u64,
        head: u64,
        more: bool,
    },
    Ok {
        rid: &'a RawValue,
    },
    /// A read cursor moved: the user's own other devices, and a dm peer's (a receipt).
    Read {
        conv: &'a str,
        user: &'a str,
        mid: u64,
    },
    Presence {
        user: &'a str,
        online: bool,
    },
    Typing {
        conv: &'a str,
        from: &'a str,
    },
    Convs {
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<&'a RawValue>,
        items: Vec<ConvItem<'a>>,
    },
    History {
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<&'a RawValue>,
        conv: &'a str,
        msgs: Vec<Message<'a>>,
        more: bool,
    },
    Group {
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<&'a RawValue>,
        #[serde(serialize_with = "as_string")]
        gid: u64,
        name: &'a str,
        /// `null` once the group has ended (its last member left).
        owner: Option<&'a str>,
        members: &'a [String],
    },
    /// The answer to `blocked`: oldest block first.
    Blocked {
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<&'a RawValue>,
        users: &'a [String],
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<&'a RawValue>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cid: Option<&'a str>,
        code: ErrorCode,
        /// Bounded here, where every error passes, whoever built the text.
        #[serde(serialize_with = "bounded_message")]
        message: &'a str,
    },
}

/// A message as clients see it: the fields of a pushed `msg` after its `seq`, an item of
/// `history`, the `last` of a conversation.
#[derive(Serialize)]
pub struct Message<'a> {
    pub mid: u64,
    pub conv: &'a str,
    pub from: &'a str,
    /// Empty for a recalled message, a recall notice and a group change.
    pub body: &'a str,
    pub ts: u64,
    pub kind: &'a str,
    /// Only on the sender's own devices: lets its outbox match the entry to its send.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cid: Option<&'a str>,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub ref_mid: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub recalled: bool,
    /// A `kind: "group"` change: `{op, gid, name, owner, users}` (entries stored by older
    /// versions also carry `members`), passed through as stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<&'a RawValue>,
}

impl<'a> Message<'a> {
    /// A message whose stored body is shown as is, or, for a group change, whose body
    /// is the change's JSON (stored as the body so it needs no column of its own).
    #[allow(clippy::too_many_arguments)]
    pub fn from_stored(
        mid: u64,
        conv: &'a str,
        from: &'a str,
        body: &'a str,
        ts: u64,
        kind: &'a str,
        cid: Option<&'a str>,
        ref_mid: Option<u64>,
        recalled: bool,
    ) -> Message<'a> {
        let group = if kind == "group" {
            serde_json::from_str::<&RawValue>(body).ok()
        } else {
            None
        };
        Message {
            mid,
            conv,
            from,
            body: if group.is_some() { "" } else { body },
            ts,
            kind,
            cid,
            ref_mid,
            recalled,
            group,
        }
    }
}

/// One conversation of a `convs` reply.
#[derive(Serialize)]
pub struct ConvItem<'a> {
    pub conv: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    pub last: Option<Message<'a>>,
    pub unread: u64,
    pub read_mid: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_read_mid: Option<u64>,
}

/// A `msg` frame, serialized once per message and stamped per recipient: only the `seq`
/// differs between the members of a group, so a fan-out to a thousand of them encodes the
/// body once and then copies bytes.
pub struct MsgFrame {
    /// `,"mid":…}`: the message's JSON after its opening brace.
    tail: Vec<u8>,
}

const MSG_HEAD: &[u8] = br#"{"type":"msg","seq":"#;

impl MsgFrame {
    pub fn new(message: &Message<'_>) -> MsgFrame {
        let mut json = serde_json::to_vec(message).expect("message serializes");
        // `{"mid":…}` → `,"mid":…}`: the seq goes before it.
        json[0] = b',';
        MsgFrame { tail: json }
    }

    /// The frame for the inbox entry `seq`.
    pub fn with_seq(&self, seq: u64) -> Vec<u8> {
        let mut digits = [0u8; 20];
        let seq = format_u64(seq, &mut digits);
        let mut text = Vec::with_capacity(MSG_HEAD.len() + seq.len() + self.tail.len());
        text.extend_from_slice(MSG_HEAD);
        text.extend_from_slice(seq);
        text.extend_from_slice(&self.tail);
        text
    }
}

/// `n` in decimal, written at the end of `buf`.
fn format_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

fn as_string<S: serde::Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(n)
}

impl Reply<'_> {
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing these types cannot fail: no maps with non-string keys, no floats.
        serde_json::to_vec(self).expect("reply serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(text: &str) -> BadRequest {
        parse(text.as_bytes()).expect_err(text)
    }

    #[test]
    fn requests_parse_with_their_rid() {
        let (req, rid) = parse(br#"{"type":"ping","rid":7}"#).unwrap();
        assert!(matches!(req, Request::Ping));
        assert_eq!(rid.unwrap().get(), "7");
        let (req, rid) =
            parse(br#"{"rid":"a","type":"send","cid":"c1","to":"user:bob","body":"hi"}"#).unwrap();
        let Request::Send(send) = req else { panic!() };
        assert_eq!(
            (send.cid.as_str(), send.to.as_str(), send.body.as_str()),
            ("c1", "user:bob", "hi")
        );
        assert_eq!(send.kind, "text");
        assert_eq!(rid.unwrap().get(), r#""a""#);
    }

    #[test]
    fn a_sender_in_the_body_is_not_a_field_of_send() {
        let (req, _) =
            parse(br#"{"type":"send","from":"mallory","cid":"c","to":"user:b","body":"x"}"#)
                .unwrap();
        let Request::Send(send) = req else { panic!() };
        assert_eq!(send.to, "user:b");
    }

    #[test]
    fn sync_limit_is_clamped_and_after_defaults_to_zero() {
        let (req, _) = parse(br#"{"type":"sync","limit":100000}"#).unwrap();
        assert!(matches!(
            req,
            Request::Sync {
                after: 0,
                limit: MAX_SYNC_PAGE
            }
        ));
        let (req, _) = parse(br#"{"type":"sync","after":5,"limit":0}"#).unwrap();
        assert!(matches!(req, Request::Sync { after: 5, limit: 1 }));
    }

    #[test]
    fn faults_are_told_apart_and_keep_the_rid() {
        assert!(bad("{").message.starts_with("invalid JSON"));
        assert!(bad("[1]").message.contains("JSON object"));
        assert!(bad(r#"{"rid":1}"#).message.contains("missing `type`"));
        let e = bad(r#"{"type":"fly","rid":"x"}"#);
        assert_eq!(e.message, "unknown type 'fly'");
        assert_eq!(e.rid.unwrap().get(), r#""x""#);
        let e = bad(r#"{"type":"ack","rid":3,"seq":"no"}"#);
        assert!(e.message.starts_with("bad `ack` request"), "{}", e.message);
        assert_eq!(e.rid.unwrap().get(), "3");
        assert!(bad(r#"{"type":"ack","seq":-1}"#)
            .message
            .starts_with("bad `ack`"));
        let e = bad(r#"{"type":"send","cid":"c","to":"user:b"}"#);
        assert!(e.message.contains("body"));
        assert_eq!(e.cid.as_deref(), Some("c"));
        let long_rid = format!(r#"{{"type":"ping","rid":"{}"}}"#, "r".repeat(200));
        assert!(bad(&long_rid).message.contains("rid"));
        assert!(bad(r#"{"type":"ping","rid":{"a":1}}"#)
            .message
            .contains("rid"));
    }

    #[test]
    fn replies_serialize_as_the_contract_spells_them() {
        let rid = RawValue::from_string("\"r1\"".to_owned()).unwrap();
        let sent = Reply::Sent {
            rid: Some(&rid),
            cid: "c",
            mid: 9,
            conv: "dm:a:b",
            seq: 3,
            ts: 100,
        };
        assert_eq!(
            String::from_utf8(sent.to_json()).unwrap(),
            r#"{"type":"sent","rid":"r1","cid":"c","mid":9,"conv":"dm:a:b","seq":3,"ts":100}"#
        );
        let message =
            Message::from_stored(9, "dm:a:b", "a", "hé \"q\"", 100, "text", None, None, false);
        let frame = MsgFrame::new(&message);
        assert_eq!(
            String::from_utf8(frame.with_seq(4)).unwrap(),
            r#"{"type":"msg","seq":4,"mid":9,"conv":"dm:a:b","from":"a","body":"hé \"q\"","ts":100,"kind":"text"}"#
        );
        for seq in [0, 9, 10, 12_345, u64::MAX] {
            let value: serde_json::Value = serde_json::from_slice(&frame.with_seq(seq)).unwrap();
            assert_eq!(value["seq"], seq);
            assert_eq!(value["mid"], 9);
        }
        let change = r#"{"op":"add","gid":"7","members":["a","b"]}"#;
        let group = Message::from_stored(
            10,
            "group:7",
            "a",
            change,
            5,
            "group",
            Some("g"),
            None,
            false,
        );
        let value: serde_json::Value =
            serde_json::from_slice(&MsgFrame::new(&group).with_seq(1)).unwrap();
        assert_eq!(value["body"], "");
        assert_eq!(value["group"]["members"][1], "b");
        assert_eq!(value["cid"], "g");
        let recalled = Message::from_stored(11, "dm:a:b", "a", "", 5, "text", None, None, true);
        let value: serde_json::Value =
            serde_json::from_slice(&MsgFrame::new(&recalled).with_seq(2)).unwrap();
        assert_eq!(value["recalled"], true);
        let error = Reply::Error {
            rid: None,
            cid: Some("c"),
            code: ErrorCode::RateLimited,
            message: "slow down",
        };
        assert_eq!(
            String::from_utf8(error.to_json()).unwrap(),
            r#"{"type":"error","cid":"c","code":"rate_limited","message":"slow down"}"#
        );
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::NotFound,
            ErrorCode::Internal,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    /// Every character of `s` as `\uXXXX` (all ASCII or control here), in quotes: the
    /// longest spelling a client may choose.
    fn esc(s: &str) -> String {
        let mut out = String::from("\"");
        for c in s.chars() {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        }
        out.push('"');
        out
    }

    /// A JSON object from already-spelled fields, keys escaped too, one field per line
    /// with four spaces of indentation, as a pretty-printer would lay it out.
    fn object(fields: &[(&str, String)]) -> String {
        let fields: Vec<String> = fields
            .iter()
            .map(|(key, value)| format!("    {}: {value}", esc(key)))
            .collect();
        format!("{{\n{}\n}}", fields.join(",\n"))
    }

    /// A JSON array of spelled items, one per line at the indentation of a nested array.
    fn array(items: impl Iterator<Item = String>) -> String {
        let items: Vec<String> = items.map(|i| format!("\n        {i}")).collect();
        format!("[{}\n    ]", items.join(","))
    }

    /// A distinct user id of the full 64 bytes.
    fn user(i: usize) -> String {
        format!("{i:0>64}")
    }

    #[test]
    fn the_largest_legal_request_of_every_kind_fits_under_max_request_len() {
        let rid = format!("\"{}\"", "r".repeat(MAX_RID - 2));
        let long_u64 = u64::MAX.to_string();
        for max_body in [0, 16 * 1024, 1024 * 1024] {
            let users = |n: usize| array((0..n).map(|i| esc(&user(i))));
            let send = object(&[
                ("type", esc("send")),
                ("rid", rid.clone()),
                ("cid", esc(&"c".repeat(MAX_CID))),
                ("to", esc(&format!("user:{}", user(0)))),
                ("body", esc(&"\u{1}".repeat(max_body))),
                ("kind", esc(&"k".repeat(MAX_KIND))),
            ]);
            let group_create = object(&[
                ("type", esc("group_create")),
                ("rid", rid.clone()),
                ("name", esc(&"n".repeat(MAX_GROUP_NAME))),
                ("members", users(MAX_NAMED_MEMBERS)),
            ]);
            let group_add = object(&[
                ("type", esc("group_add")),
                ("rid", rid.clone()),
                ("gid", long_u64.clone()),
                ("members", users(MAX_NAMED_MEMBERS)),
            ]);
            let group_leave = object(&[
                ("type", esc("group_leave")),
                ("rid", rid.clone()),
                ("gid", format!("\"{long_u64}\"")),
                (
                    "members",
                    array(std::iter::repeat_with(|| esc(&user(0))).take(MAX_NAMED_MEMBERS)),
                ),
            ]);
            let watch = object(&[
                ("type", esc("watch")),
                ("rid", rid.clone()),
                ("users", users(MAX_WATCH)),
            ]);
            let conv = esc(&format!("dm:{}:{}", user(0), user(1)));
            let history = object(&[
                ("type", esc("history")),
                ("rid", rid.clone()),
                ("conv", conv.clone()),
                ("before", long_u64.clone()),
                ("limit", u32::MAX.to_string()),
            ]);
            let read = object(&[
                ("type", esc("read")),
                ("rid", rid.clone()),
                ("conv", conv),
                ("mid", long_u64.clone()),
            ]);
            let typing = object(&[
                ("type", esc("typing")),
                ("rid", rid.clone()),
                ("to", esc(&format!("user:{}", user(0)))),
            ]);
            let sync = object(&[
                ("type", esc("sync")),
                ("rid", rid.clone()),
                ("after", long_u64.clone()),
                ("limit", u32::MAX.to_string()),
            ]);
            let bound = max_request_len(max_body);
            let mut largest = 0;
            for text in [
                send,
                group_create,
                group_add,
                group_leave,
                watch,
                history,
                read,
                typing,
                sync,
            ] {
                let (request, _) = parse(text.as_bytes())
                    .unwrap_or_else(|e| panic!("{}: {}", &text[..80], e.message));
                // The request really is at the limits the hub enforces, not past them.
                match &request {
                    Request::Send(send) => {
                        assert_eq!(send.body.len(), max_body);
                        assert_eq!(send.cid.len(), MAX_CID);
                    }
                    Request::GroupCreate { members, name } => {
                        assert_eq!(members.len(), MAX_NAMED_MEMBERS);
                        assert_eq!(name.len(), MAX_GROUP_NAME);
                        assert!(members.iter().all(|u| crate::user_id::valid_user_id(u)));
                    }
                    Request::GroupAdd { members, gid } | Request::GroupLeave { members, gid } => {
                        assert_eq!((members.len(), *gid), (MAX_NAMED_MEMBERS, u64::MAX));
                    }
                    Request::Watch { users } => assert_eq!(users.len(), MAX_WATCH),
                    _ => {}
                }
                assert!(
                    text.len() <= bound,
                    "{request:?}: {} bytes over the bound {bound} (max_body {max_body})",
                    text.len()
                );
                largest = largest.max(text.len());
            }
            // Tight enough to be worth having: within the slack and the allowance for
            // indentation of what the largest request really takes.
            assert!(bound - largest < 32 * 1024, "{bound} vs {largest}");
        }
        let default = max_request_len(16 * 1024);
        assert!(default < 8 * 16 * 1024 + 512 * 1024, "{default}");
        assert!(max_request_len(usize::MAX) == usize::MAX);
    }

    #[test]
    fn error_messages_quote_at_most_a_short_prefix() {
        let mib = 1024 * 1024;
        // An unknown type, plain and full of characters that escape long.
        for kind in [
            "x".repeat(mib),
            "\u{1}".repeat(mib),
            "é\u{10ffff}".repeat(mib / 8),
        ] {
            let text = serde_json::to_string(&serde_json::json!({"type": kind, "rid": 1}))
                .expect("serializes");
            let e = bad(&text);
            assert!(e.message.len() <= 2 * MAX_QUOTE, "{}", e.message);
            assert!(e.message.starts_with("unknown type '"), "{}", e.message);
            assert!(e.message.ends_with("…'"), "{}", e.message);
            assert_eq!(e.rid.unwrap().get(), "1");
        }
        // serde's own text quotes the rejected value whole: bounded too, keeping the
        // start and serde's "expected …" and position.
        let text = format!(r#"{{"type":"ack","seq":"{}"}}"#, "9".repeat(mib));
        let e = bad(&text);
        assert!(e.message.len() <= MAX_ERROR_MESSAGE, "{}", e.message);
        assert!(e.message.starts_with("bad `ack` request: invalid type"));
        assert!(e.message.contains(" … "), "{}", e.message);
        assert!(e.message.ends_with(&format!("column {}", text.len() - 1)));
        let text = format!(r#"{{"type":"group_add","gid":"{}"}}"#, "7".repeat(mib));
        assert!(bad(&text).message.len() <= MAX_ERROR_MESSAGE);
        let text = format!(r#"{{"type":"history","conv":{}}}"#, "[".repeat(mib));
        assert!(bad(&text).message.len() <= MAX_ERROR_MESSAGE);
        // Short names stay whole and readable.
        assert_eq!(quote("fly"), "'fly'");
        assert_eq!(quote("a'b\n"), r"'a\'b\n'");
        assert_eq!(quote(""), "''");
        let at_limit = "q".repeat(MAX_QUOTE);
        assert_eq!(quote(&at_limit), format!("'{at_limit}'"));
        assert_eq!(quote(&format!("{at_limit}q")), format!("'{at_limit}…'"));
        // Cut between characters, never inside one.
        assert_eq!(quote(&"é".repeat(40)), format!("'{}…'", "é".repeat(16)));
        assert_eq!(
            quote(&"\u{1}".repeat(10)),
            format!("'{}…'", r"\u{1}".repeat(6))
        );
    }

    #[test]
    fn an_error_reply_is_bounded_whoever_wrote_its_message() {
        let long = format!("'{}' is not a valid user id", "u".repeat(1024 * 1024));
        let json = Reply::Error {
            rid: None,
            cid: None,
            code: ErrorCode::BadRequest,
            message: &long,
        }
        .to_json();
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let message = value["message"].as_str().unwrap();
        assert!(message.len() <= MAX_ERROR_MESSAGE, "{message}");
        assert!(message.starts_with("'uuu") && message.ends_with("is not a valid user id"));
        // Cut on character boundaries whatever the text.
        for n in 0..8 {
            let wide = format!("{}{}", "a".repeat(n), "€".repeat(300));
            let cut = bounded(&wide);
            assert!(cut.len() <= MAX_ERROR_MESSAGE, "{n}");
        }
        assert_eq!(bounded("short"), "short");
    }

    #[test]
    fn a_long_cid_is_never_carried_back() {
        // Just too long: parsed, so the hub refuses it with the cid the outbox knows.
        let text = format!(
            r#"{{"type":"send","cid":"{}","to":"user:b","body":""}}"#,
            "c".repeat(MAX_CID + 1)
        );
        assert!(parse(text.as_bytes()).is_ok());
        // Far too long: refused here, without it.
        let huge = "c".repeat(1024 * 1024);
        let text = format!(r#"{{"type":"send","rid":2,"cid":"{huge}","to":"user:b","body":""}}"#);
        let e = bad(&text);
        assert!(e.cid.is_none());
        assert_eq!(e.rid.unwrap().get(), "2");
        assert!(e.message.contains("cid"), "{}", e.message);
        // Nor on a send refused for another fault.
        let text = format!(r#"{{"type":"send","cid":"{huge}"}}"#);
        let e = bad(&text);
        assert!(e.cid.is_none() && e.message.len() <= MAX_ERROR_MESSAGE);
        let cid = "c".repeat(MAX_ECHOED_CID);
        let e = bad(&format!(r#"{{"type":"send","cid":"{cid}"}}"#));
        assert_eq!(e.cid.as_deref(), Some(cid.as_str()));
    }

    #[test]
    fn a_gid_is_plain_digits_and_a_leave_names_a_bounded_list() {
        let gid = |g: &str| match parse(format!(r#"{{"type":"group_add","gid":{g}}}"#).as_bytes()) {
            Ok((Request::GroupAdd { gid, .. }, _)) => Some(gid),
            _ => None,
        };
        assert_eq!(gid(r#""7""#), Some(7));
        assert_eq!(gid("7"), Some(7));
        assert_eq!(gid(&format!("\"{}\"", u64::MAX)), Some(u64::MAX));
        assert_eq!(gid(&format!("\"0{}\"", u64::MAX)), None);
        assert_eq!(gid(r#""+7""#), None);
        assert_eq!(gid(r#""""#), None);
        assert_eq!(gid(&format!("\"{}7\"", "0".repeat(100_000))), None);
        let leave = |n: usize| {
            let members = vec!["me"; n];
            let text = serde_json::json!({"type": "group_leave", "gid": "1", "members": members});
            parse(text.to_string().as_bytes())
        };
        assert!(leave(MAX_NAMED_MEMBERS).is_ok());
        let e = leave(MAX_NAMED_MEMBERS + 1).expect_err("too many");
        assert!(e.message.contains("at most"), "{}", e.message);
    }

    #[test]
    fn group_info_names_one_group_and_is_no_write() {
        let (request, rid) = parse(br#"{"type":"group_info","gid":"42","rid":"i"}"#).unwrap();
        assert!(matches!(request, Request::GroupInfo { gid: 42 }));
        assert!(!request.writes(), "it waits like a read, not like a write");
        assert_eq!(rid.unwrap().get(), r#""i""#);
        assert!(matches!(
            parse(br#"{"type":"group_info","gid":7}"#),
            Ok((Request::GroupInfo { gid: 7 }, None))
        ));
        assert!(bad(r#"{"type":"group_info"}"#).message.contains("gid"));
        assert!(bad(r#"{"type":"group_info","gid":"-1"}"#)
            .message
            .starts_with("bad `group_info`"));
    }

    #[test]
    fn a_group_entry_is_passed_through_in_either_shape() {
        let new = r#"{"op":"add","gid":"7","name":"t","owner":"a","users":["c"]}"#;
        let old = r#"{"op":"add","gid":"7","name":"t","owner":"a","members":["a","b","c"],"users":["c"]}"#;
        for body in [new, old] {
            let m = Message::from_stored(1, "group:7", "a", body, 5, "group", None, None, false);
            let value: serde_json::Value =
                serde_json::from_slice(&MsgFrame::new(&m).with_seq(3)).unwrap();
            assert_eq!(
                value["group"],
                serde_json::from_str::<serde_json::Value>(body).unwrap()
            );
            assert_eq!(value["body"], "");
        }
    }
}
