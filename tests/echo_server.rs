//! `courier echo` end to end: a real server process per test, real loopback sockets.
//!
//! Frames that a client library would never send (unmasked, reserved bits, lying lengths)
//! go through the hand-written client in `common`; ordinary traffic goes through
//! tungstenite, an independent implementation, so the server is not only checked against
//! this crate's own idea of the protocol.

mod common;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

// ---------------------------------------------------------------------------------------
// Opening handshake and plain HTTP

#[test]
fn rfc_sample_key_gets_the_rfc_accept_value() {
    let server = Server::start(&[]);
    let client = RawClient::connect(server.addr());
    assert_eq!(
        header(&client.head, "Sec-WebSocket-Accept"),
        Some(RFC_ACCEPT),
        "{}",
        client.head
    );
    assert_eq!(header(&client.head, "Upgrade"), Some("websocket"));
    assert_eq!(header(&client.head, "Connection"), Some("Upgrade"));
}

#[test]
fn missing_key_is_400() {
    let server = Server::start(&[]);
    let request =
        upgrade_request("/echo").replace(&format!("Sec-WebSocket-Key: {RFC_KEY}\r\n"), "");
    let reply = http_exchange(server.addr(), request.as_bytes());
    assert!(reply.starts_with("HTTP/1.1 400 "), "{reply}");
    assert_eq!(body(&reply), "missing Sec-WebSocket-Key\n");
}

#[test]
fn version_8_is_426_naming_version_13() {
    let server = Server::start(&[]);
    let request = upgrade_request("/echo").replace(
        "Sec-WebSocket-Version: 13\r\n",
        "Sec-WebSocket-Version: 8\r\n",
    );
    let reply = http_exchange(server.addr(), request.as_bytes());
    assert!(
        reply.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
        "{reply}"
    );
    assert_eq!(
        header(&reply, "Sec-WebSocket-Version"),
        Some("13"),
        "{reply}"
    );
}

#[test]
fn post_upgrade_is_405_allowing_get() {
    let server = Server::start(&[]);
    let request = upgrade_request("/echo").replacen("GET", "POST", 1);
    let reply = http_exchange(server.addr(), request.as_bytes());
    assert!(
        reply.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
        "{reply}"
    );
    assert_eq!(header(&reply, "Allow"), Some("GET"), "{reply}");
}

#[test]
fn head_over_8k_is_431() {
    let server = Server::start(&[]);
    let padded = upgrade_request("/echo").replacen(
        "\r\n\r\n",
        &format!("\r\nX-Pad: {}\r\n\r\n", "a".repeat(9000)),
        1,
    );
    let reply = http_exchange(server.addr(), padded.as_bytes());
    assert!(
        reply.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{reply}"
    );
}

#[test]
fn head_of_exactly_8k_still_upgrades() {
    // The limit is inclusive: a head of exactly MAX_HEAD (8192) bytes is a valid request.
    let server = Server::start(&[]);
    let base = upgrade_request("/echo");
    let pad_line_overhead = "X-Pad: \r\n".len();
    let pad = 8192 - base.len() - pad_line_overhead;
    let request = base.replacen(
        "\r\n\r\n",
        &format!("\r\nX-Pad: {}\r\n\r\n", "a".repeat(pad)),
        1,
    );
    assert_eq!(request.len(), 8192);
    let mut client = RawClient::connect_sending(server.addr(), request.as_bytes());
    client.send_text("fits");
    client.expect_text("fits");
}

#[test]
fn healthz_is_200() {
    let server = Server::start(&[]);
    let reply = http_exchange(
        server.addr(),
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    );
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert_eq!(header(&reply, "Content-Length"), Some("3"));
    assert_eq!(body(&reply), "ok\n");
}

#[test]
fn unknown_plain_path_is_404() {
    let server = Server::start(&[]);
    for path in ["/", "/nope", "/healthz/extra"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        let reply = http_exchange(server.addr(), request.as_bytes());
        assert!(
            reply.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{path}: {reply}"
        );
    }
}

#[test]
fn head_sent_one_byte_at_a_time_still_upgrades() {
    let server = Server::start(&[]);
    let mut stream = tcp(server.addr());
    for byte in upgrade_request("/echo").as_bytes() {
        stream.write_all(std::slice::from_ref(byte)).unwrap();
        // Nagle is off; the pause makes each byte its own segment, so each its own read.
        thread::sleep(Duration::from_millis(1));
    }
    let mut client = RawClient::finish_upgrade(stream);
    assert_eq!(
        header(&client.head, "Sec-WebSocket-Accept"),
        Some(RFC_ACCEPT)
    );
    client.send_text("after a slow head");
    client.expect_text("after a slow head");
}

#[test]
fn frames_pipelined_behind_the_head_are_handled() {
    // RFC 6455 §4.1 lets a client send frames right after its handshake, so the first
    // frames can arrive in the same segment as the head.
    let server = Server::start(&[]);
    let mut wire = upgrade_request("/echo").into_bytes();
    // The §5.7 "Hello" frame, byte for byte.
    wire.extend_from_slice(b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58");
    wire.extend_from_slice(&encode_frame(FIN | OP_PING, b"p"));
    wire.extend_from_slice(&encode_frame(FIN | OP_BINARY, &[1, 2, 3]));
    let mut client = RawClient::connect_sending(server.addr(), &wire);
    client.expect_text("Hello");
    assert_eq!(client.expect_frame(OP_PONG).payload, b"p");
    assert_eq!(client.expect_frame(OP_BINARY).payload, [1, 2, 3]);
}

#[test]
fn upgrades_on_any_path() {
    let server = Server::start(&[]);
    for path in ["/", "/echo", "/some/where?x=1"] {
        let mut ws = ws_connect(server.addr(), path);
        ws.send(Message::Text(path.into())).unwrap();
        assert_eq!(ws.read().unwrap(), Message::Text(path.into()));
    }
}

// ---------------------------------------------------------------------------------------
// Echo through an independent client

#[test]
fn echoes_text_and_binary_of_every_length_class() {
    let server = Server::start(&["--max-message", "2MiB"]);
    let mut ws = ws_connect(server.addr(), "/echo");
    // Each side of the 7-bit / 16-bit / 64-bit length boundaries, and a large message
    // that spans many reads.
    for (seed, len) in [0, 1, 125, 126, 127, 65535, 65536, 1 << 20]
        .into_iter()
        .enumerate()
    {
        let text = ascii_pattern(len, seed);
        ws.send(Message::Text(text.clone())).unwrap();
        match ws.read().unwrap() {
            Message::Text(echo) => assert!(echo == text, "text of {len} bytes differs"),
            other => panic!("text of {len} bytes came back as {:?}", kind(&other)),
        }
        let bytes = byte_pattern(len, seed);
        ws.send(Message::Binary(bytes.clone())).unwrap();
        match ws.read().unwrap() {
            Message::Binary(echo) => assert!(echo == bytes, "binary of {len} bytes differs"),
            other => panic!("binary of {len} bytes came back as {:?}", kind(&other)),
        }
    }
    let multibyte = "héllo wörld € 😀 ".repeat(1000);
    ws.send(Message::Text(multibyte.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::Text(multibyte));
}

fn kind(message: &Message) -> &'static str {
    match message {
        Message::Text(_) => "text",
        Message::Binary(_) => "binary",
        Message::Ping(_) => "ping",
        Message::Pong(_) => "pong",
        Message::Close(_) => "close",
        Message::Frame(_) => "raw frame",
    }
}

#[test]
fn server_frames_use_minimal_length_encoding() {
    // §5.2: "the minimal number of bytes MUST be used to encode the length".
    let server = Server::start(&[]);
    let mut client = RawClient::connect(server.addr());
    for (len, header_len) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
        let payload = byte_pattern(len, len);
        client.send(FIN | OP_BINARY, &payload);
        let frame = client.expect_frame(OP_BINARY);
        assert_eq!(frame.header_len, header_len, "header for {len} bytes");
        assert!(frame.payload == payload, "payload of {len} bytes differs");
    }
}

#[test]
fn fragmented_message_is_echoed_as_one() {
    let server = Server::start(&[]);
    let mut client = RawClient::connect(server.addr());
    client.send(OP_TEXT, b"Hel");
    client.send(OP_CONT, b"lo, ");
    client.send(OP_CONT, b"");
    client.send(FIN | OP_CONT, b"world");
    client.expect_text("Hello, world");

    // A character split across fragments is valid: UTF-8 is checked on the message.
    client.send(OP_TEXT, b"caf\xc3");
    client.send(FIN | OP_CONT, b"\xa9!");
    client.expect_text("café!");

    let bytes = byte_pattern(70_000, 3);
    client.send(OP_BINARY, &bytes[..10]);
    client.send(OP_CONT, &bytes[10..66_000]);
    client.send(FIN | OP_CONT, &bytes[66_000..]);
    let frame = client.expect_frame(OP_BINARY);
    assert!(frame.payload == bytes, "reassembled binary differs");
}

#[test]
fn ping_gets_pong_with_the_same_payload() {
    let server = Server::start(&[]);
    let mut ws = ws_connect(server.addr(), "/echo");
    ws.send(Message::Ping(b"are you there".to_vec())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::Pong(b"are you there".to_vec()));

    // The control-frame extremes, through the raw client: empty and 125 bytes.
    let mut client = RawClient::connect(server.addr());
    client.send(FIN | OP_PING, b"");
    assert_eq!(client.expect_frame(OP_PONG).payload, b"");
    let biggest = byte_pattern(125, 9);
    client.send(FIN | OP_PING, &biggest);
    assert_eq!(client.expect_frame(OP_PONG).payload, biggest);
    // An unsolicited pong is allowed (§5.5.3) and gets no answer.
    client.send(FIN | OP_PONG, b"unsolicited");
    client.send_text("still here");
    client.expect_text("still here");
}

#[test]
fn ping_between_fragments_is_answered_and_the_message_survives() {
    // §5.4: "control frames MAY be injected in the middle of a fragmented message".
    let server = Server::start(&[]);
    let mut client = RawClient::connect(server.addr());
    client.send(OP_TEXT, b"abc");
    client.send(FIN | OP_PING, b"mid");
    client.send(OP_CONT, b"def");
    client.send(FIN | OP_PING, b"mid2");
    client.send(FIN | OP_CONT, b"ghi");
    assert_eq!(client.expect_frame(OP_PONG).payload, b"mid");
    assert_eq!(client.expect_frame(OP_PONG).payload, b"mid2");
    client.expect_text("abcdefghi");
}

// ---------------------------------------------------------------------------------------
// Protocol errors: the server fails the connection with the rule's close code, then
// closes TCP.

/// Sends `bytes` on a fresh upgraded connection; the server must answer with a close
/// frame carrying `code` and then EOF.
fn fails_with(extra: &[&str], bytes: &[u8], code: u16) {
    let server = Server::start(extra);
    let mut client = RawClient::connect(server.addr());
    client.send_raw(bytes);
    client.expect_close(code);
    client.expect_eof();
}

#[test]
fn unmasked_client_frame_is_1002() {
    fails_with(&[], &encode_frame_with(FIN | OP_TEXT, b"hi", None), 1002);
}

#[test]
fn rsv1_without_extension_is_1002() {
    fails_with(&[], &encode_frame(FIN | RSV1 | OP_TEXT, b"hi"), 1002);
}

#[test]
fn reserved_opcode_3_is_1002() {
    fails_with(&[], &encode_frame(FIN | 0x3, b"hi"), 1002);
}

#[test]
fn control_frame_with_126_byte_payload_is_1002() {
    fails_with(&[], &encode_frame(FIN | OP_PING, &[0u8; 126]), 1002);
}

#[test]
fn fragmented_ping_is_1002() {
    fails_with(&[], &encode_frame(OP_PING, b"x"), 1002);
}

#[test]
fn continuation_without_a_start_is_1002() {
    fails_with(&[], &encode_frame(FIN | OP_CONT, b"x"), 1002);
}

#[test]
fn new_data_frame_inside_a_fragmented_message_is_1002() {
    let mut wire = encode_frame(OP_TEXT, b"first half");
    wire.extend_from_slice(&encode_frame(FIN | OP_TEXT, b"interloper"));
    fails_with(&[], &wire, 1002);
}

#[test]
fn invalid_utf8_text_is_1007() {
    fails_with(&[], &encode_frame(FIN | OP_TEXT, b"ok \xff"), 1007);
    // A UTF-16 surrogate encoded as UTF-8 is not UTF-8 either.
    fails_with(&[], &encode_frame(FIN | OP_TEXT, b"\xed\xa0\x80"), 1007);
}

#[test]
fn invalid_utf8_in_the_first_fragment_fails_before_the_message_ends() {
    // The rest of the message is never sent: the server must judge the first fragment
    // on its own instead of buffering until FIN.
    let server = Server::start(&[]);
    let mut client = RawClient::connect(server.addr());
    client.set_read_timeout(Duration::from_secs(3));
    client.send(OP_TEXT, b"valid so far, then \xc0\xaf");
    client.expect_close(1007);
    client.expect_eof();
}

#[test]
fn oversized_message_is_1009_from_the_header_alone() {
    // Only a header announcing 1 TiB: the verdict must come before any payload.
    let server = Server::start(&["--max-message", "1024"]);
    let mut client = RawClient::connect(server.addr());
    client.set_read_timeout(Duration::from_secs(3));
    client.send_raw(&encode_header(FIN | OP_BINARY, 1 << 40, Some(MASK)));
    client.expect_close(1009);
    client.expect_eof();

    // Just over the limit, also announced only.
    let mut client = RawClient::connect(server.addr());
    client.set_read_timeout(Duration::from_secs(3));
    client.send_raw(&encode_header(FIN | OP_TEXT, 1025, Some(MASK)));
    client.expect_close(1009);
    client.expect_eof();

    // A fragmented message whose next fragment would take it over the limit.
    let mut client = RawClient::connect(server.addr());
    client.set_read_timeout(Duration::from_secs(3));
    client.send(OP_BINARY, &[7u8; 1000]);
    client.send_raw(&encode_header(FIN | OP_CONT, 25, Some(MASK)));
    client.expect_close(1009);
    client.expect_eof();

    // Exactly at the limit is accepted, in one frame or in fragments.
    let mut client = RawClient::connect(server.addr());
    let exact = byte_pattern(1024, 1);
    client.send(FIN | OP_BINARY, &exact);
    assert!(client.expect_frame(OP_BINARY).payload == exact);
    client.send(OP_BINARY, &exact[..1000]);
    client.send(FIN | OP_CONT, &exact[1000..]);
    assert!(client.expect_frame(OP_BINARY).payload == exact);
}

#[test]
fn close_with_a_one_byte_body_is_1002() {
    fails_with(&[], &encode_frame(FIN | OP_CLOSE, &[0x03]), 1002);
}

#[test]
fn close_with_a_code_not_allowed_on_the_wire_is_1002() {
    // 1005 is reserved for "no code", 999 and 1016 are outside every range.
    let server = Server::start(&[]);
    for code in [1005u16, 999, 1016] {
        let mut client = RawClient::connect(server.addr());
        client.send(FIN | OP_CLOSE, &close_payload(code, b""));
        client.expect_close(1002);
        client.expect_eof();
    }
}

#[test]
fn close_with_an_invalid_utf8_reason_is_1007() {
    fails_with(
        &[],
        &encode_frame(FIN | OP_CLOSE, &close_payload(1000, b"bye \xff")),
        1007,
    );
}

#[test]
fn valid_close_is_answered_with_its_code_then_tcp_closes() {
    let server = Server::start(&[]);
    let mut client = RawClient::connect(server.addr());
    client.send(FIN | OP_CLOSE, &close_payload(1000, b"bye"));
    client.expect_close(1000);
    client.expect_eof();

    // A close without a body is answered without one (§5.5.1: the code is optional).
    let mut client = RawClient::connect(server.addr());
    client.send(FIN | OP_CLOSE, b"");
    assert_eq!(client.expect_frame(OP_CLOSE).payload, b"");
    client.expect_eof();

    // And through an independent client: the closing handshake completes.
    let mut ws = ws_connect(server.addr(), "/echo");
    ws.close(None).unwrap();
    loop {
        match ws.read() {
            Ok(Message::Close(_)) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            other => panic!("closing handshake: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Timeouts

#[test]
fn handshake_timeout_cuts_off_a_slow_client() {
    let server = Server::start(&["--handshake-timeout", "500ms"]);
    let request = upgrade_request("/echo");
    let mut stream = tcp(server.addr());
    // The read timeout paces the client at one byte per 200 ms; the whole head would take
    // half a minute.
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let start = Instant::now();
    let mut sent = 0;
    let cut_off_after = loop {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "still connected after {sent} bytes and {:?}",
            start.elapsed()
        );
        if stream.write_all(&request.as_bytes()[sent..=sent]).is_err() {
            break start.elapsed();
        }
        sent += 1;
        let mut buf = [0u8; 512];
        match stream.read(&mut buf) {
            Ok(0) => break start.elapsed(),
            Ok(n) => panic!(
                "server answered an unfinished head: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) if is_timeout(&e) => {}
            Err(_) => break start.elapsed(),
        }
    };
    assert!(
        cut_off_after >= Duration::from_millis(400),
        "cut off after {cut_off_after:?}, before the handshake timeout"
    );
    assert!(
        cut_off_after < Duration::from_millis(1500),
        "cut off only after {cut_off_after:?}"
    );
    assert!(sent < request.len() / 4, "sent {sent} bytes");
}

#[test]
fn idle_connection_is_closed_with_1001() {
    let server = Server::start(&["--idle-timeout", "500ms"]);
    let mut client = RawClient::connect(server.addr());
    client.set_read_timeout(Duration::from_secs(4));
    let start = Instant::now();
    let close = client.expect_close(1001);
    let elapsed = start.elapsed();
    assert_eq!(&close.payload[2..], b"idle timeout");
    assert!(
        elapsed >= Duration::from_millis(400),
        "closed after {elapsed:?}, before the idle timeout"
    );
    assert!(
        elapsed < Duration::from_secs(2),
        "closed only after {elapsed:?}"
    );
    client.send_close(1001);
    client.expect_eof();
}

#[test]
fn active_connection_is_not_idle_closed() {
    let server = Server::start(&["--idle-timeout", "500ms"]);
    let mut client = RawClient::connect(server.addr());
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < Duration::from_millis(1500) {
        // Any frame counts as activity, control frames included (PROTOCOL.md, liveness).
        if i % 2 == 0 {
            let text = format!("tick {i}");
            client.send_text(&text);
            client.expect_text(&text);
        } else {
            client.send(FIN | OP_PING, b"tick");
            assert_eq!(client.expect_frame(OP_PONG).payload, b"tick");
        }
        i += 1;
        thread::sleep(Duration::from_millis(200));
    }
    // Activity only postpones the timeout: once quiet, the connection is closed.
    client.set_read_timeout(Duration::from_secs(4));
    let quiet = Instant::now();
    client.expect_close(1001);
    assert!(
        quiet.elapsed() < Duration::from_secs(2),
        "{:?}",
        quiet.elapsed()
    );
}

#[test]
fn close_timeout_drops_a_peer_that_never_answers_our_close() {
    let server = Server::start(&["--idle-timeout", "300ms", "--close-timeout", "500ms"]);
    let mut client = RawClient::connect(server.addr());
    client.set_read_timeout(Duration::from_secs(4));
    client.expect_close(1001);
    // Never answer: the server waits for our close for the close timeout, then drops us.
    let waited = client
        .wait_closed(Duration::from_secs(3))
        .expect("server never closed TCP after its close went unanswered");
    assert!(
        waited >= Duration::from_millis(300),
        "dropped after {waited:?}, without waiting for the close timeout"
    );
    assert!(
        waited < Duration::from_millis(1500),
        "dropped only after {waited:?}"
    );
}

#[test]
fn close_timeout_bounds_the_linger_after_a_protocol_error() {
    // After failing a connection the server half-closes and discards input until the peer
    // closes; a peer that never does must not hold the socket past the close timeout.
    let server = Server::start(&["--close-timeout", "300ms"]);
    let mut client = RawClient::connect(server.addr());
    client.send_raw(&encode_frame_with(FIN | OP_TEXT, b"x", None));
    client.expect_close(1002);
    client.expect_eof();
    let mut stream = client.into_stream();
    let start = Instant::now();
    // While the server lingers it reads and drops what we send; once it has closed the
    // socket, the kernel answers with RST and a later write or read fails.
    let released_after = loop {
        let elapsed = start.elapsed();
        assert!(
            elapsed < Duration::from_secs(3),
            "socket still open on the server after {elapsed:?}"
        );
        if stream.write_all(b"ignored").is_err() {
            break elapsed;
        }
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut buf = [0u8; 64];
        match stream.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("data after EOF: {:?}", &buf[..n]),
            Err(e) if is_timeout(&e) => {}
            Err(_) => break start.elapsed(),
        }
    };
    assert!(
        released_after < Duration::from_millis(1200),
        "released only after {released_after:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Backpressure

/// Message `i` of a stream: its index up front, so a loss or reordering names itself.
fn numbered(i: u32, len: usize) -> Vec<u8> {
    let mut message = byte_pattern(len, i as usize);
    message[..4].copy_from_slice(&i.to_be_bytes());
    message
}

#[test]
fn slow_reader_gets_every_echo_in_order() {
    const COUNT: u32 = 2000;
    const LEN: usize = 16 * 1024;
    let server = Server::start(&["--out-soft-cap", "64KiB"]);
    let mut client = RawClient::connect(server.addr());
    let mut writer = client.stream().try_clone().unwrap();
    writer
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // Errors come back through join, so a failing reader is the one failure reported.
    let sender = thread::spawn(move || -> Result<(), String> {
        for i in 0..COUNT {
            writer
                .write_all(&encode_frame(FIN | OP_BINARY, &numbered(i, LEN)))
                .map_err(|e| format!("writing message {i}: {e}"))?;
        }
        Ok(())
    });
    // Not reading yet: the echoes pile up until the server stops reading us.
    thread::sleep(Duration::from_secs(1));
    assert!(
        !sender.is_finished(),
        "32 MiB went out without backpressure: the test did not exercise it"
    );
    client.set_read_timeout(Duration::from_secs(5));
    for i in 0..COUNT {
        let frame = client
            .read_frame()
            .unwrap_or_else(|e| panic!("echo {i} of {COUNT} never came: {e}"));
        assert_eq!(frame.opcode, OP_BINARY, "echo {i}");
        assert_eq!(frame.payload.len(), LEN, "echo {i}");
        let index = u32::from_be_bytes(frame.payload[..4].try_into().unwrap());
        assert_eq!(index, i, "echo {i} is message {index}");
        assert!(frame.payload == numbered(i, LEN), "echo {i} corrupted");
    }
    sender.join().unwrap().unwrap();
    client.send_text("done");
    client.expect_text("done");
}

#[test]
fn consumer_that_never_reads_is_closed_at_the_hard_cap() {
    // With the soft cap equal to the hard cap the backlog of a consumer that never reads
    // cannot settle between the two (where the server only stops reading it and waits for
    // the idle timeout), so the 1008 close is the one way this ends. The messages are
    // smaller than the cap: one message alone passes it whatever its size, since the cap
    // bounds a backlog.
    let server = Server::start(&[
        "--out-soft-cap",
        "256KiB",
        "--out-hard-cap",
        "256KiB",
        "--close-timeout",
        "500ms",
    ]);
    let client = RawClient::connect(server.addr());
    let mut stream = client.into_stream();
    stream
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let message = encode_frame(FIN | OP_BINARY, &byte_pattern(100 * 1024, 5));
    let start = Instant::now();
    let mut sent = 0usize;
    // Write until the server drops us: then a write fails with a reset or a broken pipe.
    'send: loop {
        let mut rest = &message[..];
        while !rest.is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(8),
                "still connected after sending {} MiB in {:?}",
                sent >> 20,
                start.elapsed()
            );
            match stream.write(rest) {
                Ok(n) => {
                    rest = &rest[n..];
                    sent += n;
                }
                Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break 'send,
            }
        }
    }
    // The server is fine and serves others.
    let mut ws = ws_connect(server.addr(), "/echo");
    ws.send(Message::Text("next".into())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::Text("next".into()));
}

#[test]
fn one_message_larger_than_the_hard_cap_is_echoed_whole() {
    // The cap bounds a backlog: a single message the endpoint accepts goes out however
    // large, and only what would pile onto it is refused.
    let server = Server::start(&["--out-soft-cap", "64KiB", "--out-hard-cap", "64KiB"]);
    let mut ws = ws_connect(server.addr(), "/echo");
    let payload = byte_pattern(1 << 20, 9);
    ws.send(Message::Binary(payload.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::Binary(payload));
}

// ---------------------------------------------------------------------------------------
// Connection limit

#[test]
fn connection_over_the_limit_gets_503_and_the_others_keep_working() {
    let server = Server::start(&["--max-connections", "2"]);
    let mut first = ws_connect(server.addr(), "/echo");
    let mut second = ws_connect(server.addr(), "/echo");

    // The refusal is written as soon as the connection is accepted, before any request.
    let mut third = tcp(server.addr());
    let mut reply = String::new();
    third.read_to_string(&mut reply).expect("503 then EOF");
    assert!(
        reply.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{reply}"
    );

    for (name, ws) in [("first", &mut first), ("second", &mut second)] {
        ws.send(Message::Text(name.into())).unwrap();
        assert_eq!(ws.read().unwrap(), Message::Text(name.into()));
    }

    // Once one of the two has gone, its slot is free again.
    first.close(None).unwrap();
    while !matches!(first.read(), Err(tungstenite::Error::ConnectionClosed)) {}
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut replacement = loop {
        let url = server.url("/echo");
        match tungstenite::client(url.as_str(), tcp(server.addr())) {
            Ok((ws, _)) => break ws,
            Err(e) => {
                assert!(Instant::now() < deadline, "slot never freed: {e}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    };
    replacement.send(Message::Text("third".into())).unwrap();
    assert_eq!(replacement.read().unwrap(), Message::Text("third".into()));
}

#[test]
fn client_library_sees_503_over_the_limit() {
    // A real client sends its request at once, so the server has unread input when it
    // closes the refused socket.
    let server = Server::start(&["--max-connections", "1"]);
    let _only = ws_connect(server.addr(), "/echo");
    let url = server.url("/echo");
    match tungstenite::client(url.as_str(), tcp(server.addr())) {
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            assert_eq!(response.status(), 503)
        }
        Err(e) => panic!("expected an HTTP 503, got: {e}"),
        Ok(_) => panic!("upgraded over the connection limit"),
    }
}

// ---------------------------------------------------------------------------------------
// Shutdown

/// Two upgraded connections, a signal, then a 1001 close on each and a clean exit.
fn graceful_shutdown_on(signal: fn(&mut Server)) {
    let mut server = Server::start(&[]);
    let mut clients = [
        ws_connect(server.addr(), "/echo"),
        ws_connect(server.addr(), "/echo"),
    ];
    for ws in &mut clients {
        ws.send(Message::Text("up".into())).unwrap();
        assert_eq!(ws.read().unwrap(), Message::Text("up".into()));
    }
    let start = Instant::now();
    signal(&mut server);
    for ws in &mut clients {
        match ws.read() {
            Ok(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Away),
            other => panic!("expected a 1001 close, got {other:?}"),
        }
        // The next read sends our answering close and sees the server close TCP.
        loop {
            match ws.read() {
                Err(tungstenite::Error::ConnectionClosed) => break,
                Ok(Message::Close(_)) => {}
                other => panic!("closing handshake: {other:?}"),
            }
        }
    }
    drop(clients);
    let status = server.wait_exit(Duration::from_secs(3));
    assert!(status.success(), "exit status {status}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn sigterm_closes_every_connection_with_1001_and_exits_0() {
    graceful_shutdown_on(Server::terminate);
}

#[test]
fn sigint_closes_every_connection_with_1001_and_exits_0() {
    graceful_shutdown_on(Server::interrupt);
}

#[test]
fn shutdown_is_bounded_when_a_peer_never_answers() {
    let mut server = Server::start(&["--close-timeout", "500ms"]);
    let mut silent = RawClient::connect(server.addr());
    // A connection still in its handshake is simply dropped.
    let mut half = tcp(server.addr());
    half.write_all(b"GET /echo HTTP/1.1\r\n").unwrap();
    let start = Instant::now();
    server.terminate();
    silent.expect_close(1001);
    // No new connections once shutting down.
    let deadline = Instant::now() + Duration::from_secs(2);
    while TcpStream::connect_timeout(&server.addr(), IO_TIMEOUT).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        thread::sleep(Duration::from_millis(20));
    }
    let mut buf = [0u8; 16];
    assert!(matches!(half.read(&mut buf), Ok(0) | Err(_)));
    let status = server.wait_exit(Duration::from_secs(3));
    assert!(status.success(), "exit status {status}");
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(400),
        "exited after {elapsed:?}, without waiting for the close timeout"
    );
    assert!(elapsed < Duration::from_secs(2), "exited after {elapsed:?}");
}

#[test]
fn second_signal_exits_at_once_with_130() {
    // A graceful shutdown waiting on a silent peer can be cut short by signalling again.
    let mut server = Server::start(&["--close-timeout", "10s"]);
    let mut silent = RawClient::connect(server.addr());
    server.terminate();
    silent.expect_close(1001);
    assert!(
        server.is_running(),
        "exited without waiting for the peer's close"
    );
    let start = Instant::now();
    server.interrupt();
    let status = server.wait_exit(Duration::from_secs(2));
    assert_eq!(status.code(), Some(130), "exit status {status}");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
}

// ---------------------------------------------------------------------------------------
// Scale

/// A barrier that gives up: a worker that panicked must fail the test, not hang the rest.
struct Rendezvous {
    arrived: AtomicUsize,
    parties: usize,
}

impl Rendezvous {
    fn new(parties: usize) -> Arc<Rendezvous> {
        Arc::new(Rendezvous {
            arrived: AtomicUsize::new(0),
            parties,
        })
    }

    fn wait(&self, timeout: Duration) {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        while self.arrived.load(Ordering::SeqCst) < self.parties {
            assert!(Instant::now() < deadline, "other workers never arrived");
            thread::sleep(Duration::from_millis(5));
        }
    }
}

#[test]
fn five_hundred_concurrent_connections_each_echo() {
    const THREADS: usize = 10;
    const PER_THREAD: usize = 50;
    let server = Server::start(&[]);
    let addr = server.addr();
    // Every connection is open before any sends, and stays open until all have echoed.
    let all_open = Rendezvous::new(THREADS);
    let all_echoed = Rendezvous::new(THREADS);
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let all_open = Arc::clone(&all_open);
            let all_echoed = Arc::clone(&all_echoed);
            thread::spawn(move || {
                let mut clients: Vec<RawClient> =
                    (0..PER_THREAD).map(|_| RawClient::connect(addr)).collect();
                all_open.wait(Duration::from_secs(20));
                for (i, client) in clients.iter_mut().enumerate() {
                    client.send_text(&format!("connection {t}/{i}"));
                }
                for (i, client) in clients.iter_mut().enumerate() {
                    client.expect_text(&format!("connection {t}/{i}"));
                }
                all_echoed.wait(Duration::from_secs(20));
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker");
    }
}

/// Output made for a connection that then hangs up must not reach the next one flushed.
/// The first client's frames fill the server's 64 KiB read buffer exactly, so the server
/// reads on (expecting more) and meets the EOF with the echoes still unwritten; the
/// second client must see only its own echo.
#[test]
fn echoes_for_a_peer_that_hung_up_never_reach_another_connection() {
    let server = Server::start(&[]);
    for round in 0..20 {
        let mut leaver = RawClient::connect(server.addr());
        // 64 frames of 1,024 bytes on the wire: an 8-byte masked header (16-bit length)
        // and 1,016 bytes of payload.
        let payload = "x".repeat(1016);
        let mut burst = Vec::new();
        for _ in 0..64 {
            burst.extend_from_slice(&encode_frame(0x81, payload.as_bytes()));
        }
        assert_eq!(burst.len(), 65_536);
        leaver.send_raw(&burst);
        leaver
            .stream()
            .shutdown(std::net::Shutdown::Both)
            .expect("hang up");
        drop(leaver);

        let mut bystander = RawClient::connect(server.addr());
        let own = format!("mine {round}");
        bystander.send_text(&own);
        bystander.expect_text(&own);
    }
}
