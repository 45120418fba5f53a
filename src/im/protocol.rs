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
    Recall {
        mid: u64,
    },
    Watch {
        users: Vec<String>,
    },
    Typing {
        to: String,
    },
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
        Gid::Text(s) => s
            .parse()
            .map_err(|_| serde::de::Error::custom("`gid` is a group id such as \"7\"")),
    }
}

/// Parses one text frame. On success also returns the `rid`, if any.
pub fn parse(text: &[u8]) -> Result<(Request, Option<Rid>), BadRequest> {
    let envelope: Envelope<'_> = serde_json::from_slice(text).map_err(|e| BadRequest {
        rid: None,
        cid: None,
        message: if e.is_data() {
            "a request is a JSON object with a string field `type`".to_owned()
        } else {
            format!("invalid JSON: {e}")
        },
    })?;
    let rid = envelope.rid;
    let cid = envelope.cid.map(|c| c.into_owned());
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
    let fields = |e: serde_json::Error| format!("bad `{kind}` request: {e}");
    let request = match &*kind {
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
        "group_leave" => serde_json::from_slice::<GroupFields>(text).map(|f| Request::GroupLeave {
            gid: f.gid,
            members: f.members,
        }),
        "recall" => {
            serde_json::from_slice::<RecallFields>(text).map(|f| Request::Recall { mid: f.mid })
        }
        "watch" => {
            serde_json::from_slice::<WatchFields>(text).map(|f| Request::Watch { users: f.users })
        }
        "typing" => {
            serde_json::from_slice::<TypingFields>(text).map(|f| Request::Typing { to: f.to })
        }
        other => {
            return Err(BadRequest {
                message: format!("unknown type '{}'", other.escape_debug()),
                rid,
                cid: None,
            })
        }
    };
    match request {
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
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<&'a RawValue>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cid: Option<&'a str>,
        code: ErrorCode,
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
    /// A `kind: "group"` change: `{op, gid, name, owner, members, users}`.
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
}
