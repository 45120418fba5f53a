//! Guarantee 1, durable before acknowledged: a message whose `sent` reached the client is
//! never lost, `kill -9` included; after a restart on the same data folder the inbox is
//! gap-free, holds each message once, and resending a cid returns the original `sent`.

mod im_support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use im_support::*;
use serde_json::{json, Value};

const FLAGS: &[&str] = &["--rate", "1000000", "--ack-window", "1000000"];

/// Pipelined sends in flight at once.
const IN_FLIGHT: u64 = 64;

/// What the sender learned: `cid` → (`mid`, sender `seq`) for every `sent` it received.
type Acked = BTreeMap<u64, (u64, u64)>;

fn body(cid: u64) -> String {
    format!("m{cid}")
}

fn cid_of_body(msg: &Value) -> u64 {
    msg["body"]
        .as_str()
        .and_then(|b| b.strip_prefix('m'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not one of the stream's bodies: {msg}"))
}

fn record_sent(acked: &mut Acked, sent: &Value) {
    assert_eq!(sent["type"], "sent", "only `sent`s expected: {sent}");
    let cid: u64 = sent["cid"]
        .as_str()
        .and_then(|c| c.parse().ok())
        .expect("numeric cid");
    let previous = acked.insert(cid, (mid(sent), seq(sent)));
    assert!(previous.is_none(), "one `sent` per cid: {sent}");
}

/// What a stream learned: how many cids it sent, the `sent` of each acknowledged one, how
/// many were in flight at the cut, and the cids the server refused as `unavailable`
/// because they reached it after shutdown began.
struct Streamed {
    sent_cids: u64,
    acked: Acked,
    in_flight: u64,
    refused: HashSet<u64>,
}

/// Streams sends from `alice` to bob (cids 0, 1, 2, …), `IN_FLIGHT` at a time, recording
/// every `sent`, for `run_for`; then calls `cut` (which kills or stops the server) and
/// reads whatever answers still arrive.
fn stream_until_cut(alice: &mut Client, run_for: Duration, cut: impl FnOnce()) -> Streamed {
    let mut acked = Acked::new();
    let mut refused = HashSet::new();
    let mut next = 0u64;
    let start = Instant::now();
    while start.elapsed() < run_for {
        while next - (acked.len() as u64) < IN_FLIGHT {
            alice.queue(json!({"type": "send", "cid": next.to_string(), "to": "user:bob", "body": body(next)}));
            next += 1;
        }
        alice.flush();
        match alice.recv(WAIT) {
            Some(Frame::Json(sent)) => record_sent(&mut acked, &sent),
            other => panic!("the stream stalled before the cut: {other:?}"),
        }
    }
    let in_flight = next - acked.len() as u64;
    cut();
    // `sent`s the server wrote before it died may still be in our socket buffer.
    loop {
        match alice.recv(Duration::from_secs(3)) {
            Some(Frame::Json(value)) if value["type"] == "sent" => record_sent(&mut acked, &value),
            // A send that lands after SIGTERM is refused, never half-taken.
            Some(Frame::Json(value))
                if value["type"] == "error" && value["code"] == "unavailable" =>
            {
                let cid = value["cid"].as_str().and_then(|c| c.parse().ok());
                assert!(refused.insert(cid.expect("numeric cid")), "{value}");
            }
            Some(Frame::Json(value)) => panic!("unexpected {value}"),
            Some(Frame::Close(_) | Frame::Ended) => break,
            None => panic!("the connection outlived the server"),
            Some(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        refused.iter().all(|cid| !acked.contains_key(cid)),
        "a cid both sent and refused"
    );
    Streamed {
        sent_cids: next,
        acked,
        in_flight,
        refused,
    }
}

/// Checks bob's inbox against what alice sent and learned. Returns the cids in it.
fn check_inbox(bob: &mut Client, sent_cids: u64, acked: &Acked) -> HashSet<u64> {
    let head = bob.welcome["inbox_seq"].as_u64().expect("inbox_seq");
    let (msgs, synced) = bob.sync_all(0, None);
    assert_eq!(synced["head"], head, "{synced}");
    let seqs: Vec<u64> = msgs.iter().map(seq).collect();
    assert!(
        seqs.iter().copied().eq(1..=head),
        "seqs are gap-free 1..={head}: got {} entries, first gap near {:?}",
        seqs.len(),
        seqs.windows(2).find(|w| w[1] != w[0] + 1)
    );
    let mut cids = HashSet::new();
    let mut mids = HashSet::new();
    for msg in &msgs {
        assert_eq!(msg["from"], "alice", "{msg}");
        assert_eq!(msg["conv"], "dm:alice:bob", "{msg}");
        let cid = cid_of_body(msg);
        assert!(cid < sent_cids, "an entry the client never sent: {msg}");
        assert!(cids.insert(cid), "cid {cid} stored twice");
        assert!(mids.insert(mid(msg)), "mid {} twice", mid(msg));
        if let Some(&(acked_mid, _)) = acked.get(&cid) {
            assert_eq!(
                mid(msg),
                acked_mid,
                "the stored mid is the one `sent` gave: {msg}"
            );
        }
    }
    let lost: Vec<u64> = acked
        .keys()
        .filter(|c| !cids.contains(c))
        .copied()
        .collect();
    assert!(
        lost.is_empty(),
        "messages with a `sent` lost: {} of them, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    cids
}

/// Checks alice's own inbox: gap-free, each cid once, acked ones at the seq `sent` gave.
fn check_sender_inbox(alice: &mut Client, acked: &Acked) {
    let head = alice.welcome["inbox_seq"].as_u64().expect("inbox_seq");
    let (msgs, _) = alice.sync_all(0, None);
    assert!(
        msgs.iter().map(seq).eq(1..=head),
        "the sender's inbox is gap-free"
    );
    let mut seen = HashSet::new();
    for msg in &msgs {
        let cid: u64 = msg["cid"]
            .as_str()
            .and_then(|c| c.parse().ok())
            .expect("own cid");
        assert!(seen.insert(cid), "cid {cid} twice in the sender's inbox");
        if let Some(&(acked_mid, acked_seq)) = acked.get(&cid) {
            assert_eq!((mid(msg), seq(msg)), (acked_mid, acked_seq), "{msg}");
        }
    }
}

/// Resends every cid below `sent_cids`; each must get a `sent`, with the original mid and
/// seq for those acked before. Returns the new `sent`s by cid.
fn resend_all(alice: &mut Client, sent_cids: u64, acked: &Acked) -> HashMap<u64, (u64, u64)> {
    let mut answers = HashMap::new();
    let mut next = 0u64;
    while (answers.len() as u64) < sent_cids {
        while next < sent_cids && next - (answers.len() as u64) < IN_FLIGHT {
            alice.queue(json!({"type": "send", "cid": next.to_string(), "to": "user:bob", "body": body(next)}));
            next += 1;
        }
        alice.flush();
        let sent = alice.expect("sent");
        let cid: u64 = sent["cid"]
            .as_str()
            .and_then(|c| c.parse().ok())
            .expect("cid");
        if let Some(&(acked_mid, acked_seq)) = acked.get(&cid) {
            assert_eq!(
                (mid(&sent), seq(&sent)),
                (acked_mid, acked_seq),
                "a resend gives the original `sent`: {sent}"
            );
        }
        assert!(
            answers.insert(cid, (mid(&sent), seq(&sent))).is_none(),
            "one `sent` per resend"
        );
    }
    answers
}

#[test]
fn kill_9_mid_stream_loses_no_sent_message() {
    let dir = DataDir::new("kill9");
    let mut server = Server::start_in(&dir.path, FLAGS);
    // Bob is online through the stream and records every push: a push goes out only
    // after its commit, so each one must survive the crash too.
    let mut bob = server.connect("bob");
    let watcher = std::thread::spawn(move || {
        let mut pushed: Vec<(u64, u64, u64)> = Vec::new();
        loop {
            match bob.recv(WAIT) {
                Some(Frame::Json(msg)) => {
                    assert_eq!(msg["type"], "msg", "{msg}");
                    pushed.push((seq(&msg), mid(&msg), cid_of_body(&msg)));
                    // The kill may come between the push and this ack: a dead socket
                    // here is the end of the stream, which the next recv reports.
                    if pushed.len() % 64 == 0
                        && bob.try_queue(json!({"type": "ack", "seq": seq(&msg)}))
                    {
                        bob.try_flush();
                    }
                }
                Some(Frame::Close(_) | Frame::Ended) => return pushed,
                other => panic!("bob: unexpected {other:?}"),
            }
        }
    });
    let mut alice = server.connect("alice");
    let Streamed {
        sent_cids,
        acked,
        in_flight,
        refused,
    } = stream_until_cut(&mut alice, Duration::from_secs(1), || server.kill9());
    assert!(refused.is_empty(), "kill -9 leaves no time to refuse");
    drop(alice);
    let pushed = watcher.join().expect("bob's watcher");
    assert!(in_flight > 0, "the kill came mid-stream");
    assert!(
        acked.len() > 100,
        "a real stream ran first: {} acked",
        acked.len()
    );
    eprintln!(
        "kill -9: {sent_cids} sent, {} acked, {in_flight} in flight at the kill",
        acked.len()
    );

    let server = Server::start_in(&dir.path, FLAGS);
    let mut bob = server.connect("bob");
    let stored = check_inbox(&mut bob, sent_cids, &acked);
    let extra = stored.len() - acked.len();
    assert!(
        extra as u64 <= in_flight,
        "{extra} unacked entries, only {in_flight} were in flight"
    );
    eprintln!(
        "after restart: {} stored ({extra} committed whose `sent` was lost); bob saw {} pushes",
        stored.len(),
        pushed.len()
    );
    // Every push bob saw is in his inbox, at the same seq with the same mid.
    let (inbox, _) = server.connect("bob").sync_all(0, None);
    let by_seq: HashMap<u64, (u64, u64)> = inbox
        .iter()
        .map(|m| (seq(m), (mid(m), cid_of_body(m))))
        .collect();
    for (s, m, cid) in &pushed {
        assert_eq!(
            by_seq.get(s),
            Some(&(*m, *cid)),
            "the push of seq {s} (cid {cid}) is not in the inbox as pushed"
        );
    }
    let mut alice = server.connect("alice");
    check_sender_inbox(&mut alice, &acked);

    // Every cid again: the stored ones answer with their original `sent`, the rest are
    // stored now, after the old head with no gap.
    let old_head = alice.welcome["inbox_seq"].as_u64().unwrap();
    let answers = resend_all(&mut alice, sent_cids, &acked);
    let mut new_seqs: Vec<u64> = answers
        .iter()
        .filter(|(cid, _)| !stored.contains(cid))
        .map(|(_, &(_, seq))| seq)
        .collect();
    new_seqs.sort_unstable();
    assert!(
        new_seqs
            .iter()
            .copied()
            .eq(old_head + 1..=old_head + (sent_cids - stored.len() as u64)),
        "new seqs continue the head"
    );
    drop(bob);
    let mut bob = server.connect("bob");
    assert_eq!(bob.welcome["inbox_seq"], sent_cids);
    let all = check_inbox(&mut bob, sent_cids, &acked);
    assert_eq!(
        all.len() as u64,
        sent_cids,
        "every cid exactly once after the resend"
    );
}

#[test]
fn a_clean_shutdown_keeps_every_sent_message_and_exits_0() {
    let dir = DataDir::new("sigterm");
    let mut server = Server::start_in(&dir.path, FLAGS);
    let mut bob = server.connect("bob");
    let mut alice = server.connect("alice");
    let mut status = None;
    let Streamed {
        sent_cids,
        acked,
        refused,
        ..
    } = stream_until_cut(&mut alice, Duration::from_millis(500), || {
        status = Some(server.terminate(Duration::from_secs(5)));
    });
    let status = status.unwrap().expect("exited within 5 s of SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    // Bob's connection was closed with 1001 (after whatever pushes got out first).
    let mut code = None;
    loop {
        match bob.recv(Duration::from_secs(2)) {
            Some(Frame::Json(msg)) => assert_eq!(msg["type"], "msg"),
            Some(Frame::Close(c)) => {
                code = c;
                break;
            }
            Some(Frame::Ended) | None => break,
            Some(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(code, Some(1001), "shutdown closes with 1001");

    let server = Server::start_in(&dir.path, FLAGS);
    let mut bob = server.connect("bob");
    let stored = check_inbox(&mut bob, sent_cids, &acked);
    assert!(stored.len() >= acked.len());
    assert!(
        stored.is_disjoint(&refused),
        "a send refused as unavailable was stored anyway"
    );
    let mut alice = server.connect("alice");
    check_sender_inbox(&mut alice, &acked);
}

#[test]
fn a_restart_keeps_inboxes_and_continues_the_seqs() {
    let dir = DataDir::new("restart");
    let mut first = HashMap::new();
    {
        let server = Server::start_in(&dir.path, &[]);
        let mut alice = server.connect("alice");
        for i in 0..5 {
            alice.send_msg("bob", &format!("c{i}"), &format!("before {i}"));
            let sent = alice.expect("sent");
            first.insert(format!("c{i}"), mid(&sent));
        }
    }
    let server = Server::start_in(&dir.path, &[]);
    let mut alice = server.connect("alice");
    assert_eq!(alice.welcome["inbox_seq"], 5, "heads survive a restart");
    let mut bob = server.connect("bob");
    assert_eq!(bob.welcome["inbox_seq"], 5);
    alice.send_msg("bob", "c0", "resent after restart");
    let again = alice.expect("sent");
    assert_eq!(
        mid(&again),
        first["c0"],
        "cids are remembered across restarts"
    );
    assert_eq!(again["seq"], 1);
    alice.send_msg("bob", "new", "after");
    let sent = alice.expect("sent");
    assert_eq!(sent["seq"], 6, "seqs continue after the head");
    assert!(
        mid(&sent) > *first.values().max().unwrap(),
        "mids are not reused"
    );
    let msg = bob.expect("msg");
    assert_eq!(seq(&msg), 6, "{msg}");
    let (msgs, _) = bob.sync_page(0, None);
    let bodies: Vec<&str> = msgs.iter().map(|m| m["body"].as_str().unwrap()).collect();
    assert_eq!(
        bodies,
        vec!["before 0", "before 1", "before 2", "before 3", "before 4", "after"]
    );
}

/// SIGTERM with requests in flight: the server finishes what it accepted before it says
/// goodbye. Every send gets its answer (`sent`, or `unavailable` once the server stops
/// taking work) before the 1001, and every `sent` is in the inbox after a restart.
#[test]
fn sigterm_answers_every_send_before_closing_1001() {
    let dir = DataDir::new("sigterm-answers");
    let mut server = Server::start_in(&dir.path, FLAGS);
    let mut alice = server.connect("alice");
    let total = 300;
    for i in 0..total {
        alice.queue(json!({"type": "send", "cid": format!("c{i}"), "to": "user:bob", "body": format!("m{i}")}));
    }
    alice.flush();
    server.send_signal(libc::SIGTERM);
    let mut sent = HashSet::new();
    let mut refused = HashSet::new();
    let code = loop {
        match alice.recv(Duration::from_secs(5)) {
            Some(Frame::Json(reply)) if reply["type"] == "sent" => {
                sent.insert(reply["cid"].as_str().unwrap().to_owned());
            }
            Some(Frame::Json(reply)) if reply["type"] == "error" => {
                assert_eq!(reply["code"], "unavailable", "{reply}");
                refused.insert(reply["cid"].as_str().unwrap().to_owned());
            }
            Some(Frame::Close(code)) => break code,
            other => panic!("before the close: {other:?}"),
        }
    };
    assert_eq!(code, Some(1001));
    assert_eq!(
        sent.len() + refused.len(),
        total,
        "every send answered before the goodbye ({} sent, {} refused)",
        sent.len(),
        refused.len()
    );
    let status = server.wait_exit(Duration::from_secs(5)).expect("exited");
    assert!(status.success(), "exit status {status:?}");

    let server = Server::start_in(&dir.path, FLAGS);
    let mut bob = server.connect("bob");
    let (msgs, _) = bob.sync_page(0, None);
    let stored: HashSet<String> = msgs
        .iter()
        .map(|m| {
            m["body"]
                .as_str()
                .unwrap()
                .trim_start_matches('m')
                .to_owned()
        })
        .map(|i| format!("c{i}"))
        .collect();
    assert!(
        sent.is_subset(&stored),
        "a `sent` message is missing after the restart"
    );
}
