//! Bad input (PROTOCOL.md, Transport and guarantee 6): invalid JSON and unknown types get an
//! `error` and the connection stays; binary frames close 1003, bad UTF-8 1007, protocol
//! errors 1002, oversized messages 1009; oversized bodies are `too_large`; a flood gets
//! `rate_limited` then 1008; a slow consumer is closed 1008. And `/echo` beside `/ws`.

mod im_support;

use std::time::{Duration, Instant};

use im_support::*;
use serde_json::json;

#[test]
fn invalid_json_gets_bad_request_and_the_connection_stays() {
    let server = Server::start(&[]);
    let mut alice = server.connect("alice");
    for junk in [
        "{",
        "not json",
        "",
        "[1,2]",
        "42",
        "\"ping\"",
        "{\"type\":\"ping\"",
        "{\"type\":5}",
        "{\"rid\":1}",
    ] {
        alice.send_text(junk);
        let error = alice.expect("error");
        assert_eq!(error["code"], "bad_request", "{junk:?} -> {error}");
        assert!(error["message"].is_string(), "{error}");
        alice.assert_alive();
    }
    // A readable rid comes back even when the request is bad.
    alice.send_text(r#"{"rid":"r9","type":"ack","seq":"nope"}"#);
    let error = alice.expect("error");
    assert_eq!(
        (error["code"].as_str(), error["rid"].as_str()),
        (Some("bad_request"), Some("r9"))
    );
    alice.send_text(r#"{"rid":"r10"}"#);
    assert_eq!(alice.expect("error")["rid"], "r10");
    alice.assert_alive();
}

#[test]
fn unknown_type_gets_an_error_and_the_connection_stays() {
    let server = Server::start(&[]);
    let mut alice = server.connect("alice");
    alice.send(json!({"type": "fly", "rid": "u1"}));
    let error = alice.expect("error");
    assert_eq!(error["code"], "bad_request", "{error}");
    assert_eq!(error["rid"], "u1");
    alice.send(json!({"type": "fly"}));
    let error = alice.expect("error");
    assert_eq!(error["code"], "bad_request");
    assert!(error.get("rid").is_none(), "{error}");
    alice.assert_alive();
    // Still a working IM connection.
    alice.send_msg("bob", "c", "still here");
    assert_eq!(alice.expect("sent")["seq"], 1);
}

#[test]
fn a_binary_frame_on_ws_closes_1003() {
    let server = Server::start(&[]);
    let mut alice = server.connect("alice");
    alice.send_binary(br#"{"type":"ping"}"#);
    assert_eq!(alice.expect_close(WAIT), Some(1003));
}

#[test]
fn invalid_utf8_closes_1007() {
    let server = Server::start(&[]);
    let target = format!("/ws?token={}", token("alice"));
    let (status, head, mut stream) = raw_upgrade(server.addr, &target, &[]);
    assert_eq!(status, 101, "{head}");
    let (opcode, welcome) = read_raw_frame(&mut stream).expect("welcome");
    assert_eq!(opcode, 0x1);
    assert!(String::from_utf8_lossy(&welcome).contains("welcome"));
    write_raw_frame(
        &mut stream,
        0x1,
        b"{\"type\":\"ping\",\"x\":\"\xff\xfe\"}",
        true,
    );
    assert_eq!(raw_close_code(&mut stream), Some(1007));
}

#[test]
fn an_unmasked_client_frame_closes_1002() {
    let server = Server::start(&[]);
    let target = format!("/ws?token={}", token("alice"));
    let (status, _, mut stream) = raw_upgrade(server.addr, &target, &[]);
    assert_eq!(status, 101);
    read_raw_frame(&mut stream).expect("welcome");
    write_raw_frame(&mut stream, 0x1, br#"{"type":"ping"}"#, false);
    assert_eq!(raw_close_code(&mut stream), Some(1002));
}

#[test]
fn a_message_over_max_message_closes_1009() {
    // --max-body below --max-message, or the server refuses to start.
    let server = Server::start(&["--max-message", "1KiB", "--max-body", "512"]);
    let mut alice = server.connect("alice");
    // At the limit: parsed (unknown fields are ignored), not closed.
    let at_limit = format!(
        "{{\"type\":\"ping\",\"pad\":\"{}\"}}",
        "x".repeat(1024 - 24)
    );
    assert_eq!(at_limit.len(), 1024);
    alice.send_text(&at_limit);
    alice.expect("pong");
    // Over it: 1009.
    let body = "y".repeat(2000);
    alice.send(json!({"type": "send", "cid": "big", "to": "user:bob", "body": body}));
    assert_eq!(alice.expect_close(WAIT), Some(1009));
    // Nothing of it was stored.
    let (msgs, _) = server.connect("bob").sync_page(0, None);
    assert!(msgs.is_empty());
}

#[test]
fn a_body_over_max_body_is_too_large() {
    let server = Server::start(&["--max-body", "100"]);
    let mut alice = server.connect("alice");
    let mut bob = server.connect("bob");
    alice.send(json!({"type": "send", "rid": "r", "cid": "big", "to": "user:bob", "body": "z".repeat(101)}));
    let error = alice.expect("error");
    assert_eq!(error["code"], "too_large", "{error}");
    assert_eq!(error["cid"], "big");
    assert_eq!(error["rid"], "r");
    bob.expect_silence(Duration::from_millis(200));
    // Exactly at the limit is fine, and the connection went on.
    alice.send_msg("bob", "ok", &"z".repeat(100));
    assert_eq!(alice.expect("sent")["seq"], 1);
    assert_eq!(bob.expect("msg")["body"].as_str().map(str::len), Some(100));
    // The limit counts bytes, not characters.
    alice.send_msg("bob", "wide", &"é".repeat(51));
    assert_eq!(alice.expect("error")["code"], "too_large");
}

#[test]
fn a_flood_gets_rate_limited_then_1008() {
    let server = Server::start(&["--rate", "10"]);
    let mut alice = server.connect("alice");
    for i in 0..100 {
        alice.queue(json!({"type": "ping", "rid": i}));
    }
    alice.flush();
    let (seen, code, _) = alice.until_close(WAIT);
    let pongs = seen.iter().filter(|(_, v)| v["type"] == "pong").count();
    let errors: Vec<_> = seen
        .iter()
        .filter(|(_, v)| v["type"] == "error")
        .map(|(_, v)| v)
        .collect();
    assert!(
        (1..=30).contains(&pongs),
        "the burst is answered: {pongs} pongs"
    );
    assert!(!errors.is_empty(), "then rate_limited errors");
    for error in &errors {
        assert_eq!(error["code"], "rate_limited", "{error}");
        assert!(error["rid"].is_u64(), "the rid comes back: {error}");
    }
    let first_error = seen.iter().position(|(_, v)| v["type"] == "error").unwrap();
    assert!(
        seen[first_error..]
            .iter()
            .all(|(_, v)| v["type"] == "error"),
        "no pong after the limit hit"
    );
    assert!(
        pongs + errors.len() < 100,
        "closed before answering everything"
    );
    assert_eq!(
        code,
        Some(1008),
        "then a policy close ({pongs} pongs, {} errors)",
        errors.len()
    );
}

#[test]
fn a_slow_consumer_is_closed_1008() {
    let server = Server::start(&[
        "--ack-window",
        "1000000",
        "--ack-window-bytes",
        "1GiB",
        "--rate",
        "1000000",
        "--out-soft-cap",
        "16KiB",
        "--out-hard-cap",
        "64KiB",
        // The close frame can only reach a reader that reads: bob starts once alice is
        // done, however long that takes on a loaded machine.
        "--close-timeout",
        "10m",
        "--rate-bytes",
        "0",
    ]);
    let mut bob = server.connect("bob");
    let mut alice = server.connect("alice");
    let body = "s".repeat(8000);
    let total = 1200;
    let start = Instant::now();
    for batch in 0..total / 50 {
        for i in 0..50 {
            alice.queue(json!({"type": "send", "cid": format!("c{batch}-{i}"), "to": "user:bob", "body": body}));
        }
        alice.flush();
        for i in 0..50 {
            match alice.recv(WAIT) {
                Some(Frame::Json(v)) if v["type"] == "sent" => {}
                other => panic!("batch {batch} item {i}: expected a `sent`, got {other:?}"),
            }
        }
    }
    let sent_in = start.elapsed();
    // Bob never read: far more than the caps was meant for him. What was queued in the
    // server was dropped at the hard cap; reading now drains what the kernel holds, then
    // the 1008 close, which went next.
    let (seen, code, _) = bob.until_close(WAIT);
    eprintln!(
        "slow consumer: got {} of {total} before the close {code:?}",
        seen.len()
    );
    assert!(
        seen.len() < total,
        "the server dropped the backlog: bob got {} of {total}",
        seen.len()
    );
    assert_eq!(
        code,
        Some(1008),
        "slow consumer closed 1008 (bob read {} msgs; alice's sends took {sent_in:?})",
        seen.len()
    );
    // The sender is unaffected, and bob's inbox has everything (paged small enough for
    // this server's 64 KiB output cap).
    alice.assert_alive();
    let (msgs, synced) = server.connect("bob").sync_all(0, Some(4));
    assert_eq!(msgs.len(), total);
    assert_eq!(synced["head"], total);
}

#[test]
fn echo_works_beside_ws_without_auth() {
    let server = Server::start(&["--echo", "on"]);
    let mut echo = Client::open(server.addr, "/echo", &[]);
    let mut alice = server.connect("alice");
    echo.send_text("hello echo");
    match echo.recv(WAIT) {
        Some(Frame::Text(text)) => assert_eq!(text, "hello echo"),
        other => panic!("expected the text back, got {other:?}"),
    }
    // JSON is not interpreted there either: it comes back verbatim.
    echo.send_text(r#"{"type":"ping"}"#);
    match echo.recv(WAIT) {
        Some(Frame::Json(value)) => assert_eq!(value, json!({"type": "ping"})),
        other => panic!("expected the JSON back verbatim, got {other:?}"),
    }
    let bytes: Vec<u8> = (0..=255).collect();
    echo.send_binary(&bytes);
    match echo.recv(WAIT) {
        Some(Frame::Binary(back)) => assert_eq!(back, bytes),
        other => panic!("expected the bytes back, got {other:?}"),
    }
    // Nothing else arrives there: no welcome, no pushes.
    alice.send_msg("alice", "self", "x");
    alice.expect("sent");
    echo.expect_silence(Duration::from_millis(200));
    alice.assert_alive();
    // A token is not needed, and not harmful.
    let mut with_token = Client::open(server.addr, &format!("/echo?token={}", token("bob")), &[]);
    with_token.send_text("t");
    assert!(matches!(with_token.recv(WAIT), Some(Frame::Text(t)) if t == "t"));
}

#[test]
fn echo_off_is_404() {
    // Off unless asked for: the benchmark target is `courier echo`.
    let server = Server::start(&[]);
    let (status, head, _) = raw_upgrade(server.addr, "/echo", &[]);
    assert_eq!(status, 404, "{head}");
    assert!(!head.to_ascii_lowercase().contains("sec-websocket-accept"));
    // /ws is unaffected.
    server.connect("alice").assert_alive();
    // And an unknown path is 404 with echo on or off.
    let (status, _, _) = raw_upgrade(server.addr, "/nope", &[]);
    assert_eq!(status, 404);
    let server = Server::start(&["--echo", "on"]);
    let (status, _, _) = raw_upgrade(server.addr, "/nope", &[]);
    assert_eq!(status, 404);
}

#[test]
fn frames_pipelined_behind_the_handshake_are_handled() {
    let server = Server::start(&[]);
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut bytes = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        token("alice")
    )
    .into_bytes();
    bytes.extend(raw_frame(
        true,
        0x1,
        br#"{"type":"ping","rid":"early"}"#,
        true,
    ));
    std::io::Write::write_all(&mut stream, &bytes).unwrap();
    let head = read_head(&mut stream);
    assert_eq!(parse_status(&head), 101, "{head}");
    let text = |frame: Option<(u8, Vec<u8>)>| {
        let (opcode, payload) = frame.expect("a frame");
        assert_eq!(opcode, 0x1);
        serde_json::from_slice::<serde_json::Value>(&payload).unwrap()
    };
    assert_eq!(
        text(read_raw_frame(&mut stream))["type"],
        "welcome",
        "welcome comes first"
    );
    let pong = text(read_raw_frame(&mut stream));
    assert_eq!(
        (pong["type"].as_str(), pong["rid"].as_str()),
        (Some("pong"), Some("early"))
    );
}

#[test]
fn a_fragmented_request_is_one_message() {
    let server = Server::start(&[]);
    let target = format!("/ws?token={}", token("alice"));
    let (status, _, mut stream) = raw_upgrade(server.addr, &target, &[]);
    assert_eq!(status, 101);
    read_raw_frame(&mut stream).expect("welcome");
    let mut bytes = raw_frame(false, 0x1, br#"{"type":"pi"#, true);
    // A control frame may sit between the fragments.
    bytes.extend(raw_frame(true, 0x9, b"mid", true));
    bytes.extend(raw_frame(false, 0x0, br#"ng","rid":"#, true));
    bytes.extend(raw_frame(true, 0x0, br#""frag"}"#, true));
    std::io::Write::write_all(&mut stream, &bytes).unwrap();
    let (opcode, payload) = read_raw_frame(&mut stream).expect("pong frame");
    assert_eq!(
        (opcode, payload.as_slice()),
        (0xA, &b"mid"[..]),
        "RFC pong first"
    );
    let (opcode, payload) = read_raw_frame(&mut stream).expect("reply");
    assert_eq!(opcode, 0x1);
    let pong: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(pong["rid"], "frag", "{pong}");
}

#[test]
fn a_client_close_is_answered_in_kind() {
    let server = Server::start(&[]);
    let target = format!("/ws?token={}", token("alice"));
    let (status, _, mut stream) = raw_upgrade(server.addr, &target, &[]);
    assert_eq!(status, 101);
    read_raw_frame(&mut stream).expect("welcome");
    write_raw_frame(&mut stream, 0x8, &1000u16.to_be_bytes(), true);
    assert_eq!(raw_close_code(&mut stream), Some(1000));
    // Then the server ends the TCP connection.
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stream, &mut rest);
    assert!(rest.is_empty(), "{rest:?}");
}

#[test]
fn a_sync_of_large_messages_is_not_closed_as_a_slow_consumer() {
    // Default flags (16 KiB bodies, 16 MiB output cap, 1000-entry pages) but a high rate.
    let server = Server::start(&["--rate", "100000", "--rate-bytes", "0"]);
    let mut alice = server.connect("alice");
    // Bodies within --max-body (16 KiB) that JSON writes as \u0001: ~96 KiB per msg, so a
    // page of 400 is ~38 MiB, well past the default 16 MiB output cap.
    let body = "\u{1}".repeat(16 * 1024);
    let n = 400u64;
    for i in 0..n {
        alice
            .queue(json!({"type": "send", "cid": format!("c{i}"), "to": "user:bob", "body": body}));
        if i % 10 == 9 {
            alice.flush();
            for _ in 0..10 {
                alice.expect("sent");
            }
        }
    }
    // A client on a real network (a 256 KiB window, not loopback's autotuned megabytes)
    // that reads as fast as the data comes syncs its inbox.
    let hwm = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM"))
            .unwrap_or("?")
            .to_owned()
    };
    let before = hwm();
    let mut bob = Client::connect_small_window(server.addr, "bob", 256 * 1024);
    let (msgs, synced) = bob.sync_all(0, None);
    eprintln!(
        "server peak RSS before the sync: {before}; after: {}",
        hwm()
    );
    assert_eq!(msgs.len() as u64, n);
    assert_eq!(synced["more"], false);
    // Observed: the whole page and its `synced` arrive, then close 1008 "slow consumer".
    match bob.recv(Duration::from_millis(500)) {
        None => {}
        other => panic!("after a complete sync the connection got {other:?}"),
    }
    bob.assert_alive();
}
