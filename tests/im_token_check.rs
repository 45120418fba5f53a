//! `GET /ws` without an upgrade: how a browser learns its token is refused. Its WebSocket
//! cannot see the status of a failed upgrade, so the chat page asks here before it
//! reconnects forever with a token that will never be taken.

mod im_support;

use std::io::{Read, Write};
use std::net::TcpStream;

use im_support::*;

/// The status line and head of a plain request for `target` with `headers`.
fn head_of(server: &Server, target: &str, headers: &[&str]) -> (u16, String) {
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut request = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let head = response
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_owned();
    (parse_status(&head), head.to_ascii_lowercase())
}

#[test]
fn a_plain_get_of_ws_checks_a_token_and_otherwise_asks_for_an_upgrade() {
    let server = Server::start(&[]);
    let (status, head) = head_of(&server, "/ws", &[]);
    assert_eq!(status, 426, "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");

    let good = format!("/ws?token={}", token("alice"));
    assert_eq!(head_of(&server, &good, &[]).0, 426, "a good token: upgrade");
    let bearer = format!("Authorization: Bearer {}", token("alice"));
    assert_eq!(head_of(&server, "/ws", &[&bearer]).0, 426);

    for (target, headers) in [
        ("/ws?token=x.y.z", vec![]),
        ("/ws", vec!["Authorization: Bearer x.y.z"]),
    ] {
        let (status, head) = head_of(&server, target, &headers);
        assert_eq!(status, 401, "{target} {headers:?}: {head}");
        assert!(head.contains("www-authenticate: bearer"), "{head}");
        assert!(head.contains("cache-control: no-store"), "{head}");
    }
    // Signed with another secret: readable, and refused all the same.
    let other = courier::im::auth::issue("alice", 3600, &[7u8; 32], now_secs());
    assert_eq!(head_of(&server, &format!("/ws?token={other}"), &[]).0, 401);
}

#[test]
fn token_checks_count_as_failed_logins() {
    let server = Server::start(&["--auth-failures", "2"]);
    for _ in 0..2 {
        assert_eq!(head_of(&server, "/ws?token=x.y.z", &[]).0, 401);
    }
    let (status, head) = head_of(&server, "/ws?token=x.y.z", &[]);
    assert_eq!(status, 429, "past the budget: {head}");
    assert!(head.contains("retry-after:"), "{head}");
    // The upgrade is refused the same way: one budget for both doors.
    let good = format!("/ws?token={}", token("alice"));
    assert_eq!(head_of(&server, &good, &[]).0, 429);
}
