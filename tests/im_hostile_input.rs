//! Hostile input (issue 13): an upgrade request that carries a body is refused before the
//! 101, so its body is never run as frames (finding 8); an error reply quotes at most a
//! short prefix of what the client sent, however large the request (finding 7).

mod im_support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;

use im_support::*;
use serde_json::{json, Value};

/// The largest frame the tests below send: under 64 KiB, so they stay valid requests when
/// `/ws`'s message limit follows `--max-body` (16 KiB by default).
const BIG: usize = 60 * 1024;

/// Writes an upgrade for `target` with `headers`, the head and `body` in one write, as a
/// smuggler would, and reads everything the server sends until it closes.
fn upgrade_with_body(server: &Server, target: &str, headers: &[&str], body: &[u8]) -> String {
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    let mut request = format!(
        "GET {target} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
        server.addr
    );
    for line in headers {
        request.push_str(line);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).expect("write request");
    // Everything until the server ends the connection: a refusal is followed by the close,
    // and an accepted upgrade would show its 101 and whatever its body was answered with.
    // A timeout fails the test: the server must end it.
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "reading the answer: {e} (so far: {:?})",
                String::from_utf8_lossy(&received)
            ),
        }
    }
    String::from_utf8_lossy(&received).into_owned()
}

fn assert_refused_400(answer: &str) {
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(!answer.contains(" 101 "), "{answer}");
    // The body was not read as a frame: no `pong` for the smuggled `ping`.
    assert!(!answer.contains("smuggled"), "{answer}");
    assert!(
        answer.ends_with("websocket upgrade must not have a body\n"),
        "{answer}"
    );
}

#[test]
fn an_upgrade_with_a_content_length_body_is_400_and_never_101() {
    let server = Server::start(&[]);
    let target = format!("/ws?token={}", token("alice"));
    let frame = raw_frame(true, 0x1, br#"{"type":"ping","rid":"smuggled"}"#, true);
    let length = format!("Content-Length: {}", frame.len());
    let answer = upgrade_with_body(&server, &target, &[&length], &frame);
    assert_refused_400(&answer);
    // `Content-Length: 0` announces no body: still a good upgrade.
    let (status, head, _) = raw_upgrade(server.addr, &target, &[("Content-Length", "0")]);
    assert_eq!(status, 101, "{head}");
}

#[test]
fn an_upgrade_with_a_chunked_body_is_400_and_never_101() {
    let server = Server::start(&[]);
    let target = format!("/ws?token={}", token("alice"));
    let frame = raw_frame(true, 0x1, br#"{"type":"ping","rid":"smuggled"}"#, true);
    let mut body = format!("{:x}\r\n", frame.len()).into_bytes();
    body.extend_from_slice(&frame);
    body.extend_from_slice(b"\r\n0\r\n\r\n");
    let answer = upgrade_with_body(&server, &target, &["Transfer-Encoding: chunked"], &body);
    assert_refused_400(&answer);
    // The frame alone after the head, as a client that lies about its framing would send.
    let answer = upgrade_with_body(&server, &target, &["Transfer-Encoding: chunked"], &frame);
    assert_refused_400(&answer);
}

/// Sends `request` as one frame on a fresh IM connection and returns the answer's exact
/// length on the wire (payload) and its JSON.
fn answer_to(server: &Server, request: &str) -> (usize, Value) {
    assert!(request.len() <= BIG + 256, "{} bytes", request.len());
    let target = format!("/ws?token={}", token("alice"));
    let (status, head, mut stream) = raw_upgrade(server.addr, &target, &[]);
    assert_eq!(status, 101, "{head}");
    let (_, welcome) = read_raw_frame(&mut stream).expect("welcome");
    assert!(String::from_utf8_lossy(&welcome).contains("welcome"));
    write_raw_frame(&mut stream, 0x1, request.as_bytes(), true);
    let (opcode, payload) = read_raw_frame(&mut stream).expect("an answer");
    assert_eq!(opcode, 0x1, "{}", String::from_utf8_lossy(&payload));
    let value: Value = serde_json::from_slice(&payload).expect("JSON answer");
    (payload.len(), value)
}

#[test]
fn error_replies_quote_only_a_short_prefix_of_large_input() {
    let server = Server::start(&[]);
    let requests = [
        // Finding 7 itself: an unknown type of 60 KiB.
        json!({"type": "x".repeat(BIG), "rid": "r1"}),
        // Characters that escape long, in a request that stays under the limit as JSON.
        json!({"type": "\u{1}".repeat(BIG / 6), "rid": "r2"}),
        // serde's own message quotes the value it rejects.
        json!({"type": "ack", "seq": "9".repeat(BIG), "rid": "r3"}),
        // A cid far past its limit is not carried back.
        json!({"type": "send", "cid": "c".repeat(BIG), "to": "user:bob", "body": "hi", "rid": "r4"}),
        json!({"type": "send", "cid": "c".repeat(BIG), "rid": "r5"}),
        // An invalid member id (the hub's check quotes it).
        json!({"type": "group_create", "name": "g", "members": ["m".repeat(BIG)], "rid": "r6"}),
    ];
    for request in requests {
        let text = request.to_string();
        let (len, error) = answer_to(&server, &text);
        let shown = &text[..80];
        // A failure shows the start of what came back, not all of it.
        let answer = error.to_string();
        let answer = &answer[..answer.len().min(300)];
        assert!(len < 1024, "{shown}: a {len}-byte error: {answer}");
        assert_eq!(error["type"], "error", "{shown}: {answer}");
        assert_eq!(error["code"], "bad_request", "{shown}: {answer}");
        assert_eq!(error["rid"], request["rid"], "{shown}: {answer}");
        assert!(error.get("cid").is_none(), "{shown}: {answer}");
    }
    // The connection is still an IM connection after all that.
    let mut alice = server.connect("alice");
    alice.assert_alive();
}
