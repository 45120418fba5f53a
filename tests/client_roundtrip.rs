//! The crate's client (`courier::client`) against a real `courier serve` over loopback:
//! delivery to every device exactly once and in order, sync after an absence, and a
//! device that rides out a server restart and resends its outbox.
//!
//! Every wait here has a deadline; the server is killed when its guard drops.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use courier::client::blocking::now_ms;
use courier::client::session::{Msg, Sent};
use courier::client::{Client, Config, Device, DeviceOptions, Error, Event, Frame, Session};
use courier::ws::frame::{write_close, write_frame, OpCode};
use courier::ws::handshake::accept_key;

#[path = "support/listening.rs"]
mod listening;
use listening::spawn_listening;

const STEP: Duration = Duration::from_millis(5);
const WAIT: Duration = Duration::from_secs(15);

/// A data folder removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "courier-client-{name}-{}-{}",
            std::process::id(),
            now_ms()
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `courier serve`; killed (SIGKILL) when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    /// The server's stderr, shown when a test fails: a file in its data folder.
    stderr: PathBuf,
}

impl Server {
    fn start(data: &Path, listen: &str, extra: &[&str]) -> Server {
        let stderr = data.join("server-stderr.log");
        let log = std::fs::File::create(&stderr).expect("create the server's stderr log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_courier"));
        command
            .arg("serve")
            // Dev login refuses a configured secret; its own is kept in the data folder, so
            // tokens stay valid across a restart on the same folder.
            .args(["--listen", listen, "--dev-login", "on"])
            .env_remove("COURIER_JWT_SECRET")
            .arg("--data")
            .arg(data)
            .args(extra)
            .stdin(Stdio::null())
            .stderr(log);
        let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            spawn_listening(&mut command, Duration::from_secs(10))
        }));
        match started {
            Ok((child, addr)) => Server {
                child,
                addr,
                stderr,
            },
            // spawn_listening has killed and reaped the server, so its log is complete.
            Err(_) => panic!("courier serve did not start: {}", read_log(&stderr)),
        }
    }

    /// Starts on `listen`, retrying briefly: the port of a killed server can take a
    /// moment to be free again.
    fn restart(data: &Path, listen: SocketAddr, extra: &[&str]) -> Server {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let started =
                std::panic::catch_unwind(|| Server::start(data, &listen.to_string(), extra));
            match started {
                Ok(server) => return server,
                Err(e) if Instant::now() >= deadline => std::panic::resume_unwind(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A token for `user` from `GET /dev/token`.
    fn token(&self, user: &str) -> String {
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))
            .expect("connect for /dev/token");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let request = format!(
            "GET /dev/token?user={user} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut chunk = [0u8; 4096];
        // Read until the JSON body is complete; the connection may stay open.
        while Instant::now() < deadline && !response.ends_with(b"}") {
            match stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => response.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("reading /dev/token: {e}"),
            }
        }
        let response = String::from_utf8(response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        let body = &response[response.find("\r\n\r\n").expect("head ends") + 4..];
        let json: serde_json::Value = serde_json::from_str(body).expect("token JSON");
        json["token"].as_str().expect("token field").to_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            // Killed and reaped: the log is complete. Show why the server was unhappy.
            eprintln!("courier serve stderr:\n{}", read_log(&self.stderr));
        }
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("({}: {e})", path.display()))
}

fn device(server: &Server, user: &str, name: &str, cursor: u64) -> Device {
    device_with(server.addr, &server.token(user), session(name, cursor))
}

fn session(name: &str, cursor: u64) -> Session {
    Session::with_cursor(
        Config::new(name, courier::client::blocking::random_u64()),
        cursor,
    )
}

fn device_with(addr: SocketAddr, token: &str, session: Session) -> Device {
    let options = DeviceOptions {
        // 1 s, 2 s, 3 s, … become 20 ms, 40 ms, 60 ms, …
        backoff_scale: 0.02,
        ..DeviceOptions::default()
    };
    Device::with_token(addr, token, session, options)
}

/// Reads every device in turn (so each keeps acking) until `done` holds for what each
/// has received, or panics at `timeout` with what was seen.
fn pump(
    devices: &mut [&mut Device],
    timeout: Duration,
    done: impl Fn(&[Vec<Event>]) -> bool,
) -> Vec<Vec<Event>> {
    let mut logs = vec![Vec::new(); devices.len()];
    let deadline = Instant::now() + timeout;
    while !done(&logs) {
        assert!(
            Instant::now() < deadline,
            "timed out; devices: {devices:?}\nevents: {logs:#?}"
        );
        for (device, log) in devices.iter_mut().zip(&mut logs) {
            while let Some(event) = device.recv_event(STEP) {
                log.push(event);
            }
        }
    }
    logs
}

/// Reads every device for `period` and returns what came.
fn quiet(devices: &mut [&mut Device], period: Duration) -> Vec<Vec<Event>> {
    let until = Instant::now() + period;
    pump(devices, period + WAIT, |_| Instant::now() >= until)
}

fn msgs(events: &[Event]) -> Vec<&Msg> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Msg(m) => Some(m),
            _ => None,
        })
        .collect()
}

fn sents(events: &[Event]) -> Vec<&Sent> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Sent(s) => Some(s),
            _ => None,
        })
        .collect()
}

fn welcomed(events: &[Event]) -> bool {
    events.iter().any(|e| matches!(e, Event::Welcome(_)))
}

fn bodies(msgs: &[&Msg]) -> Vec<String> {
    msgs.iter().map(|m| m.body.clone()).collect()
}

fn seqs(msgs: &[&Msg]) -> Vec<u64> {
    msgs.iter().map(|m| m.seq).collect()
}

fn numbered(prefix: &str, range: std::ops::Range<u64>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

#[test]
fn alice_reaches_bob_and_her_other_device_once_each_in_order() {
    let data = TempDir::new("fanout");
    // Short ack timers: a client that failed to ack would be closed with 4008 within
    // about a second, and its device would show a second connect.
    let server = Server::start(
        &data.0,
        "127.0.0.1:0",
        &["--ack-timeout", "300ms", "--ack-retry-interval", "200ms"],
    );
    let mut a1 = device(&server, "alice", "a1", 0);
    let mut a2 = device(&server, "alice", "a2", 0);
    let mut b = device(&server, "bob", "b1", 0);
    pump(&mut [&mut a1, &mut a2, &mut b], WAIT, |logs| {
        logs.iter().all(|l| welcomed(l))
    });

    let bodies_sent = numbered("m", 0..20);
    let cids: Vec<String> = bodies_sent.iter().map(|m| a1.send("user:bob", m)).collect();
    let logs = pump(&mut [&mut a1, &mut a2, &mut b], WAIT, |logs| {
        sents(&logs[0]).len() >= 20 && msgs(&logs[1]).len() >= 20 && msgs(&logs[2]).len() >= 20
    });

    let sent = sents(&logs[0]);
    assert_eq!(
        sent.iter().map(|s| &s.cid).collect::<Vec<_>>(),
        cids.iter().collect::<Vec<_>>()
    );
    assert_eq!(
        sent.iter().map(|s| s.seq).collect::<Vec<_>>(),
        (1..=20).collect::<Vec<_>>()
    );
    assert!(
        msgs(&logs[0]).is_empty(),
        "the sending device gets `sent`, not its own msg"
    );

    let at_bob = msgs(&logs[2]);
    assert_eq!(bodies(&at_bob), bodies_sent);
    assert_eq!(seqs(&at_bob), (1..=20).collect::<Vec<_>>());
    for m in &at_bob {
        assert_eq!(
            (m.from.as_str(), m.conv.as_str()),
            ("alice", "dm:alice:bob")
        );
        assert_eq!(m.cid, None, "bob is not the sender");
    }
    let at_a2 = msgs(&logs[1]);
    assert_eq!(bodies(&at_a2), bodies_sent);
    assert_eq!(seqs(&at_a2), (1..=20).collect::<Vec<_>>());
    assert_eq!(
        at_a2
            .iter()
            .map(|m| m.cid.clone().unwrap())
            .collect::<Vec<_>>(),
        cids,
        "alice's other device sees her cids"
    );

    // Bob answers: both of alice's devices get it as their next seq.
    b.send("user:alice", "reply");
    let logs = pump(&mut [&mut a1, &mut a2, &mut b], WAIT, |logs| {
        msgs(&logs[0]).len() == 1 && msgs(&logs[1]).len() == 1 && sents(&logs[2]).len() == 1
    });
    for log in &logs[..2] {
        let m = msgs(log);
        assert_eq!(
            (m[0].seq, m[0].body.as_str(), m[0].from.as_str()),
            (21, "reply", "bob")
        );
    }

    // Well past the ack timeout and its retries: nothing more, no reconnects, so every
    // push was acked and nothing was re-pushed.
    let logs = quiet(&mut [&mut a1, &mut a2, &mut b], Duration::from_millis(1500));
    assert!(
        logs.iter()
            .all(|l| l.iter().all(|e| matches!(e, Event::Pong(_)))),
        "{logs:?}"
    );
    for d in [&a1, &a2, &b] {
        assert_eq!(d.connects(), 1, "{d:?}");
        assert_eq!(d.session().pending_count(), 0);
    }
    assert_eq!((a1.cursor(), a2.cursor(), b.cursor()), (21, 21, 21));
}

#[test]
fn an_offline_peer_syncs_everything_once_in_pages_from_its_cursor() {
    let data = TempDir::new("offline");
    let server = Server::start(&data.0, "127.0.0.1:0", &[]);
    let mut a = device(&server, "alice", "a1", 0);
    let mut b = device(&server, "bob", "b1", 0);
    pump(&mut [&mut a, &mut b], WAIT, |logs| {
        logs.iter().all(|l| welcomed(l))
    });
    // Bob goes away, keeping only his cursor.
    let saved = b.into_session().cursor();
    assert_eq!(saved, 0);

    let first = numbered("x", 0..30);
    for body in &first {
        a.send("user:bob", body);
    }
    pump(&mut [&mut a], WAIT, |logs| sents(&logs[0]).len() >= 30);

    // Back with the saved cursor and small pages.
    let mut config = Config::new("b1", courier::client::blocking::random_u64());
    config.sync_limit = Some(7);
    let token = server.token("bob");
    let mut b = device_with(server.addr, &token, Session::with_cursor(config, saved));
    let logs = pump(&mut [&mut b], WAIT, |logs| msgs(&logs[0]).len() >= 30);
    let got = msgs(&logs[0]);
    assert_eq!(bodies(&got), first);
    assert_eq!(seqs(&got), (1..=30).collect::<Vec<_>>());
    let pages: Vec<bool> = logs[0]
        .iter()
        .filter_map(|e| match e {
            Event::Synced(s) => Some(s.more),
            _ => None,
        })
        .collect();
    assert_eq!(pages, [true, true, true, true, false], "pages of 7 over 30");
    let extra = quiet(&mut [&mut a, &mut b], Duration::from_millis(300));
    assert!(msgs(&extra[1]).is_empty(), "{extra:?}");
    assert_eq!(b.cursor(), 30);

    // Away again: only what came after the cursor is replayed.
    let saved = b.into_session().cursor();
    let second = numbered("y", 0..5);
    for body in &second {
        a.send("user:bob", body);
    }
    pump(&mut [&mut a], WAIT, |logs| sents(&logs[0]).len() >= 5);
    let mut b = device_with(server.addr, &token, session("b1", saved));
    let logs = pump(&mut [&mut b], WAIT, |logs| msgs(&logs[0]).len() >= 5);
    assert_eq!(bodies(&msgs(&logs[0])), second);
    assert_eq!(seqs(&msgs(&logs[0])), (31..=35).collect::<Vec<_>>());

    // While connected, new messages come live, after the sync, without a gap.
    a.send("user:bob", "live");
    let logs = pump(&mut [&mut a, &mut b], WAIT, |logs| {
        msgs(&logs[1]).len() == 1
    });
    assert_eq!(msgs(&logs[1])[0].seq, 36);

    // A new device of bob's starts from 0 and gets the whole inbox once.
    let mut fresh = device_with(server.addr, &token, session("b2", 0));
    let logs = pump(&mut [&mut fresh], WAIT, |logs| msgs(&logs[0]).len() >= 36);
    let all: Vec<String> = first
        .iter()
        .chain(&second)
        .cloned()
        .chain(["live".into()])
        .collect();
    assert_eq!(bodies(&msgs(&logs[0])), all);
    let extra = quiet(&mut [&mut fresh], Duration::from_millis(300));
    assert!(msgs(&extra[0]).is_empty(), "{extra:?}");
}

#[test]
fn a_device_that_sees_a_gap_mid_stream_syncs_over_it_and_misses_nothing() {
    let data = TempDir::new("midstream");
    let server = Server::start(&data.0, "127.0.0.1:0", &["--rate", "100000"]);
    let mut a = device(&server, "alice", "a1", 0);
    pump(&mut [&mut a], WAIT, |logs| welcomed(&logs[0]));
    for i in 0..100 {
        a.send("user:bob", &format!("{i}"));
    }
    pump(&mut [&mut a], WAIT, |logs| sents(&logs[0]).len() >= 100);
    // Bob comes in without the sync a client sends first. That is the race a real
    // client can lose (a commit lands between its `welcome` and its `sync`), made certain:
    // the first live push is above a gap, which the session must sync over in pages of 50
    // while the stream goes on.
    let mut config = Config::new("b1", courier::client::blocking::random_u64());
    config.sync_limit = Some(50);
    let mut options = DeviceOptions::default();
    options.client.resume = false;
    let token = server.token("bob");
    let mut b = Device::with_token(server.addr, &token, Session::new(config), options);
    let logs = pump(&mut [&mut b], WAIT, |logs| welcomed(&logs[0]));
    assert!(matches!(&logs[0][0], Event::Welcome(w) if w.inbox_seq == 100));
    let total = 600;
    let streamer = std::thread::spawn(move || {
        for i in 100..total {
            a.send("user:bob", &format!("{i}"));
        }
        pump(&mut [&mut a], WAIT, |logs| {
            sents(&logs[0]).len() >= total - 100
        });
    });
    let logs = pump(&mut [&mut b], WAIT, |logs| msgs(&logs[0]).len() >= total);
    streamer.join().expect("streamer");
    let got = msgs(&logs[0]);
    assert_eq!(seqs(&got), (1..=total as u64).collect::<Vec<_>>());
    assert_eq!(bodies(&got), numbered("", 0..total as u64));
    let extra = quiet(&mut [&mut b], Duration::from_millis(300));
    assert!(msgs(&extra[0]).is_empty(), "{extra:?}");
    assert_eq!(b.connects(), 1);
}

#[test]
fn a_device_rides_out_a_server_restart_and_resends_its_outbox_once() {
    let data = TempDir::new("restart");
    let mut server = Server::start(&data.0, "127.0.0.1:0", &[]);
    let addr = server.addr;
    let mut a = device(&server, "alice", "a1", 0);
    let mut b = device(&server, "bob", "b1", 0);
    pump(&mut [&mut a, &mut b], WAIT, |logs| {
        logs.iter().all(|l| welcomed(l))
    });
    a.send("user:bob", "m0");
    pump(&mut [&mut a, &mut b], WAIT, |logs| {
        msgs(&logs[1]).len() == 1
    });

    // Sent and not waited for: the kill lands before, during or after their commit.
    let mut cids: Vec<String> = (1..4)
        .map(|i| a.send("user:bob", &format!("m{i}")))
        .collect();
    server.kill();
    // Written to a dead connection or queued while down: either way they stay pending.
    cids.extend((4..7).map(|i| a.send("user:bob", &format!("m{i}"))));
    let down = quiet(&mut [&mut a, &mut b], Duration::from_millis(300));
    assert!(
        !a.is_connected() && !b.is_connected(),
        "{a:?} {b:?} {down:?}"
    );
    assert!(a.session().pending_count() >= 3);

    server = Server::restart(&data.0, addr, &[]);
    // A `sent` that was already in flight when the server died may have been read above.
    let early: Vec<String> = sents(&down[0]).iter().map(|s| s.cid.clone()).collect();
    let logs = pump(&mut [&mut a, &mut b], WAIT, |logs| {
        let confirmed = sents(&logs[0]);
        msgs(&down[1]).len() + msgs(&logs[1]).len() >= 6
            && cids
                .iter()
                .all(|c| early.contains(c) || confirmed.iter().any(|s| &s.cid == c))
    });
    assert_eq!(a.session().pending_count(), 0, "{a:?}");
    assert!(a.connects() >= 2 && b.connects() >= 2, "{a:?} {b:?}");
    let mut confirmed: Vec<String> = early.clone();
    confirmed.extend(sents(&logs[0]).iter().map(|s| s.cid.clone()));
    confirmed.sort();
    let mut expected = cids.clone();
    expected.sort();
    assert_eq!(confirmed, expected, "each send confirmed exactly once");
    let at_bob: Vec<&Msg> = msgs(&down[1]).into_iter().chain(msgs(&logs[1])).collect();
    assert_eq!(bodies(&at_bob), numbered("m", 1..7));
    assert_eq!(seqs(&at_bob), (2..=7).collect::<Vec<_>>());
    let extra = quiet(&mut [&mut a, &mut b], Duration::from_millis(300));
    assert!(msgs(&extra[1]).is_empty(), "{extra:?}");

    // In storage, too, each message is there once.
    let mut fresh = device(&server, "bob", "b2", 0);
    let logs = pump(&mut [&mut fresh], WAIT, |logs| msgs(&logs[0]).len() >= 7);
    assert_eq!(bodies(&msgs(&logs[0])), numbered("m", 0..7));
    let extra = quiet(&mut [&mut fresh], Duration::from_millis(300));
    assert!(msgs(&extra[0]).is_empty(), "{extra:?}");
}

#[test]
fn a_send_whose_sent_was_lost_is_resent_and_stored_once() {
    let data = TempDir::new("lost-sent");
    let server = Server::start(&data.0, "127.0.0.1:0", &[]);
    let mut a = device(&server, "alice", "a1", 0);
    let mut b = device(&server, "bob", "b1", 0);
    pump(&mut [&mut a, &mut b], WAIT, |logs| {
        logs.iter().all(|l| welcomed(l))
    });
    let cid = a.send("user:bob", "once");
    // Bob has it, so it is committed; alice never reads her `sent`.
    pump(&mut [&mut b], WAIT, |logs| msgs(&logs[0]).len() == 1);
    a.drop_connection();
    assert_eq!(a.session().pending().collect::<Vec<_>>(), [cid.as_str()]);

    let logs = pump(&mut [&mut a, &mut b], WAIT, |logs| {
        welcomed(&logs[0]) && !sents(&logs[0]).is_empty()
    });
    let confirmed = sents(&logs[0]);
    assert_eq!(
        (confirmed[0].cid.as_str(), confirmed[0].seq),
        (cid.as_str(), 1)
    );
    let extra = quiet(&mut [&mut a, &mut b], Duration::from_millis(300));
    assert_eq!(
        sents(&logs[0]).len() + sents(&extra[0]).len(),
        1,
        "{logs:?} {extra:?}"
    );
    assert!(msgs(&logs[1]).is_empty() && msgs(&extra[1]).is_empty());
    assert_eq!(
        (a.connects(), a.session().pending_count(), a.cursor()),
        (2, 0, 1)
    );

    let mut fresh = device(&server, "bob", "b2", 0);
    let logs = pump(&mut [&mut fresh], WAIT, |logs| msgs(&logs[0]).len() == 1);
    let extra = quiet(&mut [&mut fresh], Duration::from_millis(300));
    assert!(msgs(&extra[0]).is_empty(), "stored twice: {extra:?}");
    assert_eq!(msgs(&logs[0])[0].body, "once");
}

#[test]
fn raw_client_auth_variants_and_close_codes() {
    let data = TempDir::new("raw");
    let server = Server::start(&data.0, "127.0.0.1:0", &[]);
    let token = server.token("carol");
    let timeout = Duration::from_secs(5);

    let bearer = format!("Bearer {token}");
    let mut client =
        Client::connect_with(server.addr, "/ws", &[("Authorization", &bearer)]).expect("bearer");
    match client.recv_event(timeout).expect("welcome") {
        Some(Event::Welcome(w)) => assert_eq!(w.user, "carol"),
        other => panic!("expected welcome, got {other:?}"),
    }
    assert_eq!(client.close().expect("close"), Some(1000));

    match Client::connect_with(server.addr, "/ws?token=not.a.token", &[]) {
        Err(Error::Refused { status: 401, .. }) => {}
        other => panic!("expected 401, got {other:?}"),
    }
    match Client::connect_with(server.addr, "/ws", &[]) {
        Err(e) => assert_eq!(e.status(), Some(401), "{e}"),
        Ok(c) => panic!("no token, yet upgraded: {c:?}"),
    }

    // Invalid JSON is answered and the connection stays; a binary frame closes it 1003.
    let mut client = Client::connect(server.addr, &token).expect("connect");
    client.send_json("{nope").unwrap();
    let mut saw_error = false;
    while let Some(frame) = client.recv_raw(timeout).unwrap() {
        let Frame::Text(text) = frame else {
            panic!("{frame:?}")
        };
        if text.contains(r#""type":"error""#) {
            assert!(text.contains("bad_request"), "{text}");
            saw_error = true;
            break;
        }
    }
    assert!(saw_error);
    client.send_frame(OpCode::Binary, b"\x00\x01").unwrap();
    let close = loop {
        match client.recv_raw(timeout).unwrap() {
            Some(Frame::Close(code)) => break code,
            Some(_) => continue,
            None => panic!("no close after a binary frame"),
        }
    };
    assert_eq!(close, Some(1003));
    assert!(matches!(
        client.recv_raw(timeout),
        Err(Error::Closed(Some(1003)))
    ));
}

/// A one-connection fake server: reads the upgrade request, answers with `respond`
/// (given the request's key), then reads until the client goes away or 5 s pass.
fn fake_server(respond: impl FnOnce(&str) -> Vec<u8> + Send + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let key = head
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .expect("a key")
            .to_owned();
        stream.write_all(&respond(&key)).unwrap();
        let mut sink = [0u8; 4096];
        while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
    });
    addr
}

fn switching(key: &str, accept: Option<&str>) -> Vec<u8> {
    let expected = accept_key(key.as_bytes());
    let accept = accept.unwrap_or(std::str::from_utf8(&expected).unwrap());
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes()
}

#[test]
fn events_read_together_with_a_close_come_out_before_it() {
    let addr = fake_server(|key| {
        // One write: the welcome shares the 101's segment, the close follows the msgs.
        let mut out = switching(key, None);
        let welcome =
            r#"{"type":"welcome","user":"bob","conn":"1","heartbeat_ms":25000,"inbox_seq":2}"#;
        write_frame(&mut out, true, OpCode::Text, welcome.as_bytes(), None);
        for seq in 1..=2 {
            let msg = format!(
                r#"{{"type":"msg","seq":{seq},"mid":{seq},"conv":"dm:a:bob","from":"a","body":"b{seq}","ts":1,"kind":"text"}}"#
            );
            write_frame(&mut out, true, OpCode::Text, msg.as_bytes(), None);
        }
        write_close(&mut out, 4008, "ack timeout", None);
        out
    });
    let mut client = Client::connect_with(addr, "/ws?token=t", &[]).expect("connect");
    let timeout = Duration::from_secs(5);
    let mut got = Vec::new();
    let error = loop {
        match client.recv_event(timeout) {
            Ok(Some(event)) => got.push(event),
            Ok(None) => panic!("no close; got {got:?}"),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(&got[0], Event::Welcome(w) if w.inbox_seq == 2),
        "{got:?}"
    );
    assert_eq!(bodies(&msgs(&got)), ["b1", "b2"]);
    assert_eq!(error.close_code(), Some(4008), "{error}");
    assert_eq!(client.session().cursor(), 2);
}

#[test]
fn a_wrong_accept_key_fails_the_handshake() {
    let addr = fake_server(|key| switching(key, Some("AAAAAAAAAAAAAAAAAAAAAAAAAAA=")));
    match Client::connect_with(addr, "/ws", &[]) {
        Err(Error::Handshake(why)) => assert!(why.contains("Sec-WebSocket-Accept"), "{why}"),
        other => panic!("expected a handshake error, got {other:?}"),
    }
}
