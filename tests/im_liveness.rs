//! Guarantee 4, liveness: app `ping` → `pong {heartbeat_ms}`, RFC pings answered, no RFC
//! pings from the server, and a connection silent for the idle timeout (3 × heartbeat unless
//! set) closed with 1001; any inbound frame keeps it open. Slow handshakes are cut off.

mod im_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use im_support::*;
use serde_json::json;

#[test]
fn ping_gets_pong_with_the_default_heartbeat() {
    let server = Server::start(&[]);
    let mut alice = server.connect("alice");
    assert_eq!(alice.welcome["heartbeat_ms"], 25_000);
    alice.send(json!({"type": "ping"}));
    let pong = alice.expect("pong");
    assert_eq!(pong, json!({"type": "pong", "heartbeat_ms": 25_000}));
    alice.send(json!({"type": "ping", "rid": "p1"}));
    assert_eq!(
        alice.expect("pong"),
        json!({"type": "pong", "rid": "p1", "heartbeat_ms": 25_000})
    );
    alice.send(json!({"type": "ping", "rid": 12}));
    assert_eq!(alice.expect("pong")["rid"], 12);
}

#[test]
fn ping_gets_pong_with_the_configured_heartbeat() {
    let server = Server::start(&["--heartbeat", "10s"]);
    let mut alice = server.connect("alice");
    assert_eq!(alice.welcome["heartbeat_ms"], 10_000);
    alice.send(json!({"type": "ping", "rid": 1}));
    assert_eq!(
        alice.expect("pong"),
        json!({"type": "pong", "rid": 1, "heartbeat_ms": 10_000})
    );
}

#[test]
fn rfc_pings_are_answered() {
    let server = Server::start(&[]);
    let mut alice = server.connect("alice");
    alice.send_rfc_ping(b"are you there");
    match alice.recv(WAIT) {
        Some(Frame::Pong(payload)) => assert_eq!(payload, b"are you there"),
        other => panic!("expected a pong frame, got {other:?}"),
    }
    alice.assert_alive();
}

#[test]
fn a_silent_connection_is_closed_1001_after_the_idle_timeout() {
    let server = Server::start(&["--idle-timeout", "500ms"]);
    let addr = server.addr;
    // Three connections side by side: silent, app pings, RFC pings.
    let silent = std::thread::spawn(move || {
        let mut client = Client::connect(addr, "silent");
        let start = Instant::now();
        let (seen, code, at) = client.until_close(Duration::from_secs(3));
        (seen.len(), code, at.duration_since(start))
    });
    let pinger = std::thread::spawn(move || {
        let mut client = Client::connect(addr, "pinger");
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(1600) {
            std::thread::sleep(Duration::from_millis(200));
            client.send(json!({"type": "ping"}));
            match client.recv(WAIT) {
                Some(Frame::Json(pong)) => assert_eq!(pong["type"], "pong", "{pong}"),
                other => panic!(
                    "app pinger: expected a pong at {:?}, got {other:?}",
                    start.elapsed()
                ),
            }
        }
        client.assert_alive();
    });
    let rfc = std::thread::spawn(move || {
        let mut client = Client::connect(addr, "rfc");
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(1600) {
            std::thread::sleep(Duration::from_millis(200));
            client.send_rfc_ping(b"hb");
            match client.recv(WAIT) {
                Some(Frame::Pong(_)) => {}
                other => panic!(
                    "RFC pinger: expected a pong at {:?}, got {other:?}",
                    start.elapsed()
                ),
            }
        }
        client.assert_alive();
    });
    let (messages, code, after) = silent.join().expect("silent client");
    assert_eq!(messages, 0, "nothing but the close reaches a silent client");
    assert_eq!(code, Some(1001), "idle close is 1001 (after {after:?})");
    assert!(
        after >= Duration::from_millis(400) && after < Duration::from_secs(2),
        "idle close at ~500 ms, came at {after:?}"
    );
    pinger.join().expect("app pings keep a connection open");
    rfc.join().expect("RFC pings keep a connection open");
}

#[test]
fn the_idle_timeout_defaults_to_three_heartbeats() {
    let server = Server::start(&["--heartbeat", "300ms"]);
    let mut client = server.connect("alice");
    let start = Instant::now();
    assert_eq!(client.welcome["heartbeat_ms"], 300);
    let (seen, code, at) = client.until_close(Duration::from_secs(4));
    let after = at.duration_since(start);
    assert!(seen.is_empty(), "{seen:?}");
    assert_eq!(code, Some(1001), "idle close after {after:?}");
    assert!(
        after >= Duration::from_millis(750) && after < Duration::from_millis(2000),
        "idle close at ~900 ms (3 x 300 ms), came at {after:?}"
    );
}

#[test]
fn sends_keep_a_connection_open_but_receiving_alone_does_not() {
    // Sends (not pings) also count as activity; a reply to a *different* connection's
    // request does not keep a silent one open.
    let server = Server::start(&["--idle-timeout", "500ms"]);
    let mut active = server.connect("active");
    let mut quiet = server.connect("quiet");
    let start = Instant::now();
    let mut i = 0;
    let mut quiet_closed = None;
    while start.elapsed() < Duration::from_millis(1300) {
        std::thread::sleep(Duration::from_millis(150));
        active.send_msg("quiet", &format!("c{i}"), "tick");
        i += 1;
        active.expect("sent");
        // The quiet one receives pushes but says nothing: outbound traffic is not
        // activity, so it must still be closed.
        while quiet_closed.is_none() {
            match quiet.recv(Duration::ZERO) {
                Some(Frame::Json(msg)) => assert_eq!(msg["type"], "msg"),
                Some(Frame::Close(code)) => quiet_closed = Some((code, start.elapsed())),
                None => break,
                Some(other) => panic!("{other:?}"),
            }
        }
    }
    active.assert_alive();
    if quiet_closed.is_none() {
        let (_, code, _) = quiet.until_close(Duration::from_secs(2));
        quiet_closed = Some((code, start.elapsed()));
    }
    let (code, at) = quiet_closed.unwrap();
    assert_eq!(
        code,
        Some(1001),
        "a connection that only receives is idle (closed at {at:?})"
    );
}

#[test]
fn the_server_sends_no_rfc_pings() {
    let server = Server::start(&["--heartbeat", "200ms", "--idle-timeout", "5s"]);
    let mut client = server.connect("alice");
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(800) {
        match client.recv(Duration::from_millis(100)) {
            None => {}
            Some(Frame::Ping(_)) => panic!("the server pinged on /ws"),
            Some(other) => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn a_slow_handshake_is_cut_off() {
    let server = Server::start(&["--handshake-timeout", "500ms"]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(4)))
        .unwrap();
    let start = Instant::now();
    // Half a request head, then nothing (slowloris).
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut buf = [0u8; 256];
    let result = stream.read(&mut buf);
    let after = start.elapsed();
    match result {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the server to hang up, got {other:?} after {after:?}"),
    }
    assert!(
        after < Duration::from_secs(3),
        "cut off at ~500 ms, came at {after:?}"
    );
}
