//! Header lines a client may repeat, over raw TCP: every `X-Forwarded-For` line counts
//! (HAProxy's `option forwardfor` appends a line of its own after the client's), and two
//! `Origin` lines are refused.

mod im_support;

use std::time::{Duration, Instant};

use im_support::*;

/// Behind a trusted proxy that appends its own line, the address it appended is the
/// client's, whatever line the client wrote before it: so a client cannot pick a fresh
/// address per connection and escape `--max-per-address`.
#[test]
fn every_forwarded_for_line_is_read_and_the_proxys_own_line_wins() {
    let server = Server::start(&["--max-per-address", "1", "--trusted-proxy", "127.0.0.1"]);
    let target = format!("/ws?token={}", token("alice"));
    let via_proxy = |forged: &str, seen: &str| {
        raw_upgrade(
            server.addr,
            &target,
            &[("X-Forwarded-For", forged), ("X-Forwarded-For", seen)],
        )
    };
    let (status, head, first) = via_proxy("203.0.113.1", "198.51.100.9");
    assert_eq!(status, 101, "{head}");
    // The same real client forging another first line: still its one connection.
    let (status, head, _) = via_proxy("203.0.113.2", "198.51.100.9");
    assert_eq!(
        status, 429,
        "a forged first line bought a new address:\n{head}"
    );
    let (status, head, _) = raw_upgrade(
        server.addr,
        &target,
        &[
            ("X-Forwarded-For", "203.0.113.3, 203.0.113.4"),
            ("X-Forwarded-For", "198.51.100.9"),
        ],
    );
    assert_eq!(status, 429, "{head}");
    // Another real client behind the same proxy has its own allowance.
    let (status, head, _second) = via_proxy("203.0.113.1", "198.51.100.10");
    assert_eq!(status, 101, "{head}");
    // Two proxies each appending a line: the walk goes on through the trusted one.
    let (status, head, _) = raw_upgrade(
        server.addr,
        &target,
        &[
            ("X-Forwarded-For", "203.0.113.5"),
            ("X-Forwarded-For", "198.51.100.9"),
            ("X-Forwarded-For", "127.0.0.1"),
        ],
    );
    assert_eq!(status, 429, "{head}");
    // Once its first connection is gone, the client's allowance is back.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, _stream) = via_proxy("203.0.113.6", "198.51.100.9");
        if status == 101 {
            break;
        }
        assert!(Instant::now() < deadline, "still refused after the close");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn two_origin_lines_are_403_with_or_without_an_allow_list() {
    let allowed = "https://chat.example";
    let target = format!("/ws?token={}", token("alice"));
    for args in [&["--origin", allowed][..], &[]] {
        let server = Server::start(args);
        for pair in [
            [allowed, "https://evil.example"],
            ["https://evil.example", allowed],
            [allowed, allowed],
        ] {
            let (status, head, _) = raw_upgrade(
                server.addr,
                &target,
                &[("Origin", pair[0]), ("Origin", pair[1])],
            );
            assert_eq!(status, 403, "{args:?} {pair:?}:\n{head}");
        }
        // One line is judged as before.
        let (status, head, _) = raw_upgrade(server.addr, &target, &[("Origin", allowed)]);
        assert_eq!(status, 101, "{args:?}:\n{head}");
    }
}
