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

#[derive(Debug)]
pub enum Request {
    Ping,
    Send(Send),
    Ack { seq: u64 },
    Sync { after: u64, limit: u32 },
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
    Msg(Msg<'a>),
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
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<&'a RawValue>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cid: Option<&'a str>,
        code: ErrorCode,
        message: &'a str,
    },
}

/// One inbox entry as pushed.
#[derive(Serialize)]
pub struct Msg<'a> {
    pub seq: u64,
    pub mid: u64,
    pub conv: &'a str,
    pub from: &'a str,
    pub body: &'a str,
    pub ts: u64,
    pub kind: &'a str,
    /// Only on the sender's own devices: lets its outbox match the entry to its send.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cid: Option<&'a str>,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub ref_mid: Option<u64>,
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
        let msg = Reply::Msg(Msg {
            seq: 4,
            mid: 9,
            conv: "dm:a:b",
            from: "a",
            body: "hé \"q\"",
            ts: 100,
            kind: "text",
            cid: None,
            ref_mid: None,
        });
        assert_eq!(
            String::from_utf8(msg.to_json()).unwrap(),
            r#"{"type":"msg","seq":4,"mid":9,"conv":"dm:a:b","from":"a","body":"hé \"q\"","ts":100,"kind":"text"}"#
        );
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
