//! What one client may cost the server, whatever it sends (issue 13): the output a
//! connection can make the server hold, the endpoints an anonymous client can reach and
//! what they pin, messages that never finish, requests past the largest legal one, and the
//! connections one user may hold. Each test runs against a real `courier serve` on
//! loopback and decides by what arrives, never by how fast.

mod im_support;

use std::io::Write;
use std::thread::sleep;
use std::time::{Duration, Instant};

use im_support::*;
use serde_json::json;

/// One gauge of `/metrics`, by exact name.
fn gauge(server: &Server, name: &str) -> f64 {
    let (status, body) = http_get(server.addr, "/metrics");
    assert_eq!(status, 200);
    body.lines()
        .find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.trim().parse().expect("a number"))
        })
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

/// An IM upgrade from a raw socket: the `101` and the `welcome` are read, the socket is
/// handed back for frames a well-behaved client library will not write.
fn raw_im(server: &Server, user: &str) -> std::net::TcpStream {
    let (status, head, mut stream) =
        raw_upgrade(server.addr, &format!("/ws?token={}", token(user)), &[]);
    assert_eq!(status, 101, "{head}");
    let (opcode, welcome) = read_raw_frame(&mut stream).expect("the welcome");
    assert_eq!(opcode, 0x1);
    assert!(String::from_utf8_lossy(&welcome).contains("welcome"));
    stream
}

#[test]
fn a_client_that_asks_faster_than_it_reads_gets_every_answer_late_not_a_flood() {
    const SOFT: f64 = 64.0 * 1024.0;
    const HARD: f64 = 4.0 * 1024.0 * 1024.0;
    let server = Server::start(&[
        "--out-soft-cap",
        "64KiB",
        "--out-hard-cap",
        "4MiB",
        "--rate",
        "100000",
    ]);
    // Twenty bodies JSON writes sixfold (\u0001): a history page of them stops at the
    // 1 MiB page budget, so thirty unread pages would be ~30 MiB, far past the hard cap.
    let mut alice = server.connect("alice");
    let body = "\u{1}".repeat(16 * 1024);
    for i in 0..20 {
        alice.send_msg("alice", &format!("c{i}"), &body);
        alice.expect("sent");
    }
    let pages = 30;
    let mut reader = Client::connect_small_window(server.addr, "alice", 4096);
    for rid in 0..pages {
        reader.queue(json!({"type": "history", "conv": "dm:alice:alice", "limit": 20, "rid": rid}));
    }
    reader.flush();
    // The reader reads nothing: the server holds its answers back instead of queueing
    // them all. The gauge shows what it holds, and that stays under the hard cap.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut peak = 0.0f64;
    let mut samples_over_soft = 0;
    while samples_over_soft < 10 {
        let queued = gauge(&server, "courier_output_queued_bytes");
        assert!(queued <= HARD, "{queued} bytes queued, over the hard cap");
        peak = peak.max(queued);
        if queued > SOFT {
            samples_over_soft += 1;
        }
        assert!(
            Instant::now() < deadline,
            "the backlog never showed in courier_output_queued_bytes (peak {peak})"
        );
        sleep(Duration::from_millis(50));
    }
    // Reading now brings every answer, in order, and the connection stays.
    for rid in 0..pages {
        let history = reader.next_json_within(Duration::from_secs(30));
        assert_eq!(history["type"], "history", "{}", history["type"]);
        assert_eq!(history["rid"], rid);
        // Ten of them fill a page's byte budget; the rest are for the next page.
        assert_eq!(history["msgs"].as_array().map(Vec::len), Some(10));
        assert_eq!(history["more"], true);
    }
    reader.assert_alive();
    eprintln!("peak queued output: {peak} bytes");
}

#[test]
fn echo_is_off_by_default_and_when_on_obeys_origin_address_slots_and_its_own_limit() {
    let server = Server::start(&[]);
    let (status, _, _) = raw_upgrade(server.addr, "/echo", &[]);
    assert_eq!(status, 404, "no anonymous endpoint unless asked for");

    let server = Server::start(&[
        "--echo",
        "on",
        "--origin",
        "https://chat.example",
        "--max-per-address",
        "2",
        "--echo-max-message",
        "1KiB",
    ]);
    let (status, _, _) = raw_upgrade(server.addr, "/echo", &[("Origin", "https://evil.example")]);
    assert_eq!(status, 403, "the Origin allow-list covers /echo");
    let good = [("Origin", "https://chat.example")];
    let mut first = Client::open(server.addr, "/echo", &good);
    let _second = Client::open(server.addr, "/echo", &good);
    match ws_open(server.addr, "/echo", &good) {
        Err(e) => assert_eq!(e, "http 429", "the per-address limit covers /echo"),
        Ok(_) => panic!("a third connection from one address was let in"),
    }
    // Echo connections count against the address for /ws too.
    match ws_open(server.addr, &format!("/ws?token={}", token("ann")), &good) {
        Err(e) => assert_eq!(e, "http 429"),
        Ok(_) => panic!("the address's slots were all taken"),
    }
    first.send_text(&"e".repeat(1024));
    assert!(matches!(first.recv(WAIT), Some(Frame::Text(t)) if t.len() == 1024));
    first.send_text(&"e".repeat(1025));
    assert_eq!(
        first.expect_close(WAIT),
        Some(1009),
        "over the echo limit, not the 1 MiB of --max-message"
    );
}

#[test]
fn a_message_begun_and_not_finished_is_closed_1008_at_the_message_timeout() {
    let server = Server::start(&["--message-timeout", "1s", "--echo", "on"]);
    // A frame whose header promises 100 bytes, of which 10 come.
    let mut stalled = raw_im(&server, "ann");
    let frame = raw_frame(true, 0x1, &[b' '; 100], true);
    stalled.write_all(&frame[..2 + 4 + 10]).unwrap();
    // A fragmented message whose last fragment never comes, on the anonymous endpoint,
    // with pings meanwhile: traffic keeps the idle timeout away, not the message deadline.
    let (status, _, mut fragments) = raw_upgrade(server.addr, "/echo", &[]);
    assert_eq!(status, 101);
    fragments
        .write_all(&raw_frame(false, 0x1, b"{\"type\":", true))
        .unwrap();
    fragments
        .write_all(&raw_frame(true, 0x9, b"hi", true))
        .unwrap();
    assert_eq!(raw_close_code(&mut stalled), Some(1008));
    assert_eq!(raw_close_code(&mut fragments), Some(1008));
    // A message that completes in time is fine, however it is cut.
    let mut slow_but_whole = raw_im(&server, "bob");
    let ping = raw_frame(true, 0x1, br#"{"type":"ping","rid":1}"#, true);
    for byte in &ping {
        slow_but_whole.write_all(&[*byte]).unwrap();
    }
    let (opcode, pong) = read_raw_frame(&mut slow_but_whole).expect("the pong");
    assert_eq!(opcode, 0x1);
    assert!(String::from_utf8_lossy(&pong).contains("pong"));
}

#[test]
fn a_request_larger_than_any_legal_one_is_refused_from_its_header() {
    let server = Server::start(&[]);
    let limit = courier::im::protocol::max_request_len(16 * 1024);
    assert!(limit < 1 << 20, "below the 1 MiB --max-message");
    // Only the header is sent: the answer cannot depend on the payload.
    let mut stream = raw_im(&server, "ann");
    let mut header = vec![0x81, 0x80 | 127];
    header.extend_from_slice(&(limit as u64 + 1).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    stream.write_all(&header).unwrap();
    assert_eq!(raw_close_code(&mut stream), Some(1009));
    // The largest legal request still goes through.
    let mut ann = server.connect("ann");
    let body = "\u{1}".repeat(16 * 1024);
    ann.send_msg("ann", "big", &body);
    assert_eq!(ann.expect("sent")["cid"], "big");
}

#[test]
fn one_user_holds_at_most_max_per_user_connections() {
    let server = Server::start(&["--max-per-user", "2"]);
    let first = server.connect("ann");
    let _second = server.connect("ann");
    match ws_open(server.addr, &format!("/ws?token={}", token("ann")), &[]) {
        Err(e) => assert_eq!(e, "http 429"),
        Ok(_) => panic!("a third connection of one user was let in"),
    }
    // Other users are not affected.
    server.connect("bob").assert_alive();
    // A slot freed is a slot again, once the server has seen the close.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match ws_open(server.addr, &format!("/ws?token={}", token("ann")), &[]) {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e, "http 429");
                assert!(Instant::now() < deadline, "the freed slot never came back");
                sleep(Duration::from_millis(50));
            }
        }
    }
}

#[test]
fn a_connection_is_read_no_faster_than_its_byte_budget() {
    // 64 KiB/s, a burst of 128 KiB; the request rate itself is no limit here.
    let server = Server::start(&["--rate-bytes", "64KiB", "--rate", "1000000"]);
    let mut flooder = raw_im(&server, "ann");
    let ping = raw_frame(
        true,
        0x1,
        format!(r#"{{"type":"ping","pad":"{}"}}"#, "p".repeat(1000)).as_bytes(),
        true,
    );
    let frames: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 2000)
        .collect();
    let started = Instant::now();
    let mut writer = flooder.try_clone().unwrap();
    writer
        .set_write_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    // Two megabytes offered at once: the kernel buffers what the server does not read.
    let flood = std::thread::spawn(move || {
        let _ = writer.write_all(&frames);
    });
    sleep(Duration::from_secs(1));
    let read = gauge(&server, "courier_messages_in_total") * ping.len() as f64;
    let elapsed = started.elapsed().as_secs_f64();
    // What the budget allows by now: the burst, the refill, and one read's overshoot.
    let allowed = 128.0 * 1024.0 + 64.0 * 1024.0 * elapsed + 64.0 * 1024.0;
    assert!(
        read <= allowed,
        "read {read} bytes in {elapsed:.2} s, the budget allows {allowed}"
    );
    // A bystander is read and answered meanwhile.
    server.connect("bob").assert_alive();
    // The flooder is slowed, not dropped: its pings are answered as they are read.
    let (opcode, pong) = read_raw_frame(&mut flooder).expect("a pong");
    assert_eq!(opcode, 0x1);
    assert!(String::from_utf8_lossy(&pong).contains("pong"));
    // Ends the writer too, if the kernel had not taken all of it.
    let _ = flooder.shutdown(std::net::Shutdown::Both);
    let _ = flood.join();
}

#[test]
fn a_connection_shed_in_its_first_read_still_gets_a_well_formed_stream() {
    // Requests pipelined behind the upgrade are answered in the same buffer as the `101`.
    // If the kernel takes only part of it and the output is then shed, what went out and
    // what follows must still be a `101` and whole frames, ending with the 1008 close.
    let server = Server::start(&[
        "--out-soft-cap",
        "16KiB",
        "--out-hard-cap",
        "64KiB",
        "--rate",
        "1000000",
        "--rate-bytes",
        "0",
    ]);
    let mut alice = server.connect("alice");
    let body = format!("{}{}", "\u{1}".repeat(2000), "x".repeat(6000));
    for i in 0..20 {
        alice.send_msg("alice", &format!("c{i}"), &body);
        alice.expect("sent");
    }
    let mut input = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        token("alice")
    )
    .into_bytes();
    // Rids of `~` (0x7E) would read as 16-bit lengths to a walk that starts on the `101`.
    let rid = "~".repeat(120);
    for i in 0..300 {
        let ping = json!({"type": "ping", "rid": format!("{rid}{i}")}).to_string();
        input.extend(raw_frame(true, 0x1, ping.as_bytes(), true));
    }
    let history = json!({"type": "history", "conv": "dm:alice:alice", "limit": 100});
    input.extend(raw_frame(true, 0x1, history.to_string().as_bytes(), true));
    // A tiny receive buffer and segment: the server's kernel takes little of each write.
    let mut stream = connect_with_options(
        server.addr,
        &[
            (libc::SOL_SOCKET, libc::SO_RCVBUF, 4096),
            (libc::IPPROTO_TCP, libc::TCP_MAXSEG, 536),
        ],
    );
    // All of it in the server's first read: it is paused while the bytes arrive.
    server.send_signal(libc::SIGSTOP);
    stream.write_all(&input).unwrap();
    sleep(Duration::from_millis(300));
    server.send_signal(libc::SIGCONT);
    // Nothing is read until the shed is on record: a reader that kept up would let the
    // kernel take the pongs before the history page comes back from the store, and the
    // page alone passes the cap.
    let deadline = Instant::now() + Duration::from_secs(60);
    while gauge(&server, "courier_output_shed_total") < 1.0 {
        assert!(Instant::now() < deadline, "the output was never shed");
        sleep(Duration::from_millis(20));
    }
    let head = read_head(&mut stream);
    assert_eq!(parse_status(&head), 101, "{head}");
    let mut frames = 0;
    let close = loop {
        match read_raw_frame(&mut stream) {
            None => break None,
            Some((0x8, payload)) => break Some(u16::from_be_bytes([payload[0], payload[1]])),
            Some((0x1, payload)) => {
                let value: serde_json::Value = serde_json::from_slice(&payload)
                    .unwrap_or_else(|e| panic!("frame {frames} is not JSON ({e})"));
                assert!(value["type"].is_string(), "frame {frames}: {value}");
                frames += 1;
            }
            Some((opcode, _)) => panic!("frame {frames}: opcode {opcode:#x}"),
        }
    };
    assert_eq!(close, Some(1008), "after {frames} whole frames");
    // The server is well, and holds nothing for the connection it closed.
    alice.assert_alive();
    drop(stream);
    drop(alice);
    let deadline = Instant::now() + Duration::from_secs(30);
    while gauge(&server, "courier_connections_open") > 0.0 {
        assert!(Instant::now() < deadline, "connections never closed");
        sleep(Duration::from_millis(50));
    }
    assert_eq!(gauge(&server, "courier_output_queued_bytes"), 0.0);
}

#[test]
fn a_steady_sender_whose_reads_end_mid_message_is_not_cut_off() {
    // Each message completes well within the timeout, but every read ends inside the next
    // one: the deadline runs per message, not from the first.
    let server = Server::start(&["--message-timeout", "1s", "--echo", "on"]);
    let (status, _, mut echo) = raw_upgrade(server.addr, "/echo", &[]);
    assert_eq!(status, 101);
    let message = raw_frame(true, 0x1, &[b'm'; 4000], true);
    let stream: Vec<u8> = message
        .iter()
        .copied()
        .cycle()
        .take(message.len() * 31)
        .collect();
    let chunk = message.len() + 7;
    // Thirty chunks 100 ms apart: three times the timeout, with a message begun at the end
    // of every chunk.
    for piece in stream.chunks(chunk).take(30) {
        echo.write_all(piece).unwrap();
        sleep(Duration::from_millis(100));
    }
    for i in 0..30 {
        match read_raw_frame(&mut echo) {
            Some((0x1, payload)) => assert_eq!(payload.len(), 4000, "echo {i}"),
            other => panic!("echo {i}: {other:?}"),
        }
    }
}

#[test]
fn one_user_may_invent_only_so_many_users_and_groups_an_hour() {
    let server = Server::start(&["--groups-per-hour", "2", "--new-users-per-hour", "5"]);
    let mut ann = server.connect("ann");
    server.connect("bob").assert_alive();
    // bob has a row once someone wrote to him; the others are invented by ann's requests.
    server.connect("cat").send_msg("bob", "hi", "x");
    // The answer to a request, past the pushes (group entries) on the way.
    let request = |client: &mut Client, value: serde_json::Value| {
        let rid = value["rid"].clone();
        client.send(value);
        loop {
            let frame = client.next_json();
            if frame["rid"] == rid {
                return frame;
            }
        }
    };
    let group = request(
        &mut ann,
        json!({"type": "group_create", "name": "g", "members": ["bob", "n1", "n2", "n3"], "rid": 1}),
    );
    assert_eq!(group["type"], "group", "{group}");
    let gid = group["gid"].clone();
    let refused = request(
        &mut ann,
        json!({"type": "group_add", "gid": gid, "members": ["n4", "n5", "n6"], "rid": 2}),
    );
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("rate_limited")),
        "three more would be six new users: {refused}"
    );
    let added = request(
        &mut ann,
        json!({"type": "group_add", "gid": gid, "members": ["n4", "n5"], "rid": 3}),
    );
    assert_eq!(added["type"], "group", "{added}");
    // The budget is spent: a message to a user nobody named is refused too, one to an
    // existing user is not.
    let refused = request(
        &mut ann,
        json!({"type": "send", "cid": "c1", "to": "user:n9", "body": "x", "rid": 4}),
    );
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    let sent = request(
        &mut ann,
        json!({"type": "send", "cid": "c2", "to": "user:bob", "body": "x", "rid": 5}),
    );
    assert_eq!(sent["type"], "sent", "{sent}");
    // Groups: a second one of existing users is fine, a third is not.
    let second = request(
        &mut ann,
        json!({"type": "group_create", "name": "h", "members": ["bob"], "rid": 6}),
    );
    assert_eq!(second["type"], "group", "{second}");
    let third = request(
        &mut ann,
        json!({"type": "group_create", "name": "i", "members": ["bob"], "rid": 7}),
    );
    assert_eq!(third["code"], "rate_limited", "{third}");
    // Budgets are per user.
    let mut bob = server.connect("bob");
    let own = request(
        &mut bob,
        json!({"type": "group_create", "name": "b", "members": ["m1"], "rid": 8}),
    );
    assert_eq!(own["type"], "group", "{own}");
}
