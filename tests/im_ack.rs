//! Guarantee 2, at-least-once push: unacked pushes are re-pushed after `--ack-timeout`, up
//! to `--ack-retries` times `--ack-retry-interval` apart, then the connection is closed with
//! 4008; acked ones are not; `sent` is a reply and never re-pushed; nothing is lost, the
//! next sync brings everything back.

mod im_support;

use std::time::{Duration, Instant};

use im_support::*;
use serde_json::{json, Value};

/// Short ack timers: first push at 0, re-pushes at ~300 ms and ~500 ms, 4008 at ~700 ms.
const FAST_ACKS: &[&str] = &[
    "--ack-timeout",
    "300ms",
    "--ack-retries",
    "2",
    "--ack-retry-interval",
    "200ms",
];

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Groups `(arrival, msg)` into rounds: a new round starts whenever the seq does not grow.
fn rounds(seen: &[(Instant, Value)]) -> Vec<(Instant, Vec<u64>)> {
    let mut rounds: Vec<(Instant, Vec<u64>)> = Vec::new();
    for (at, msg) in seen {
        assert_eq!(msg["type"], "msg", "only pushes expected: {msg}");
        let s = seq(msg);
        match rounds.last_mut() {
            Some((_, seqs)) if seqs.last().is_some_and(|&last| s > last) => seqs.push(s),
            _ => rounds.push((*at, vec![s])),
        }
    }
    rounds
}

#[test]
fn unacked_pushes_are_repushed_then_closed_4008_and_sync_brings_them_back() {
    let server = Server::start(FAST_ACKS);
    let mut bob = server.connect("bob");
    let mut alice = server.connect("alice");
    alice.send_msg("bob", "c1", "one");
    alice.send_msg("bob", "c2", "two");
    let sent1 = alice.expect("sent");
    let sent2 = alice.expect("sent");

    let first = bob.expect("msg");
    let t0 = Instant::now();
    assert_eq!(seq(&first), 1);
    let second = bob.expect("msg");
    assert_eq!(seq(&second), 2);
    let mut seen = vec![(t0, first.clone()), (t0, second)];
    let (more, code, closed_at) = bob.until_close(Duration::from_secs(3));
    seen.extend(more);

    let rounds = rounds(&seen);
    let summary: Vec<(u64, Vec<u64>)> = rounds
        .iter()
        .map(|(at, seqs)| (ms(at.duration_since(t0)), seqs.clone()))
        .collect();
    assert_eq!(
        code,
        Some(4008),
        "closed with 4008 after the retries; rounds: {summary:?}"
    );
    assert_eq!(rounds.len(), 3, "the push and two re-pushes: {summary:?}");
    for (_, seqs) in &rounds {
        assert_eq!(
            seqs,
            &vec![1, 2],
            "every unacked entry is re-pushed, in order: {summary:?}"
        );
    }
    // The re-pushes are the same entries, byte for byte.
    let repushed: Vec<&Value> = seen
        .iter()
        .map(|(_, m)| m)
        .filter(|m| seq(m) == 1)
        .collect();
    assert!(repushed.iter().all(|m| **m == first), "{repushed:?}");
    // Timings, loosely: ~300 ms, ~500 ms, close ~700 ms after the first push.
    let (r1, r2) = (
        rounds[1].0.duration_since(t0),
        rounds[2].0.duration_since(t0),
    );
    let close = closed_at.duration_since(t0);
    eprintln!("rounds (ms after the first push, seqs): {summary:?}; close at {close:?}");
    assert!(
        ms(r1) >= 200 && ms(r1) <= 1200,
        "first re-push at {r1:?} (~300 ms)"
    );
    assert!(
        ms(r2 - r1) >= 100,
        "second re-push {r2:?} an interval after the first {r1:?}"
    );
    assert!(
        ms(close - r2) >= 100,
        "close {close:?} an interval after the last re-push {r2:?}"
    );
    assert!(
        close < Duration::from_secs(2),
        "4008 by ~700 ms, came at {close:?}"
    );

    // The sender never acked either, but its `sent` is a reply, not a push: no re-push
    // and no 4008 for alice.
    alice.expect_silence(Duration::from_millis(800));
    alice.assert_alive();

    // Nothing is lost: a message sent while bob is away, then a reconnect and a sync.
    alice.send_msg("bob", "c3", "three");
    alice.expect("sent");
    let mut bob = server.connect("bob");
    assert_eq!(bob.welcome["inbox_seq"], 3);
    let (msgs, synced) = bob.sync_page(0, None);
    assert_eq!(msgs.iter().map(seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(msgs[0]["mid"], sent1["mid"]);
    assert_eq!(msgs[1]["mid"], sent2["mid"]);
    assert_eq!(msgs[2]["body"], "three");
    assert_eq!(
        synced,
        json!({"type": "synced", "seq": 3, "head": 3, "more": false})
    );
    bob.send(json!({"type": "ack", "seq": 3}));
    bob.expect_silence(Duration::from_millis(1200));
    bob.assert_alive();
}

#[test]
fn acked_pushes_are_not_repushed() {
    let server = Server::start(FAST_ACKS);
    let mut bob = server.connect("bob");
    let mut alice = server.connect("alice");
    for i in 0..3 {
        alice.send_msg("bob", &format!("c{i}"), "x");
        alice.expect("sent");
        let msg = bob.expect("msg");
        bob.send(json!({"type": "ack", "seq": seq(&msg)}));
    }
    // An ack without a rid gets no reply (only `ok` for one with a rid). Well past the
    // 4008 point of an unacked push: nothing at all.
    bob.expect_silence(Duration::from_millis(1200));
    bob.assert_alive();
    alice.expect_silence(Duration::ZERO);
    alice.assert_alive();
}

#[test]
fn a_cumulative_ack_leaves_only_the_rest_to_repush() {
    let server = Server::start(FAST_ACKS);
    let mut bob = server.connect("bob");
    let mut alice = server.connect("alice");
    for i in 1..=3 {
        alice.send_msg("bob", &format!("c{i}"), &format!("m{i}"));
        alice.expect("sent");
    }
    let got: Vec<u64> = (0..3).map(|_| seq(&bob.expect("msg"))).collect();
    assert_eq!(got, vec![1, 2, 3]);
    // One ack covers 1 and 2.
    bob.send(json!({"type": "ack", "seq": 2}));
    let repush = bob.next_json_within(Duration::from_secs(2));
    assert_eq!(repush["type"], "msg", "{repush}");
    assert_eq!(
        seq(&repush),
        3,
        "only the unacked entry comes again: {repush}"
    );
    assert_eq!(repush["body"], "m3");
    bob.send(json!({"type": "ack", "seq": 3}));
    bob.expect_silence(Duration::from_millis(1200));
    bob.assert_alive();
    // An ack past anything pushed changes nothing and breaks nothing.
    bob.send(json!({"type": "ack", "seq": 99, "rid": "far"}));
    assert_eq!(bob.expect("ok")["rid"], "far");
    alice.send_msg("bob", "c4", "m4");
    alice.expect("sent");
    let msg = bob.expect("msg");
    assert_eq!(seq(&msg), 4);
    // ...so this one is still unacked and gets re-pushed.
    let repush = bob.next_json_within(Duration::from_secs(2));
    assert_eq!(seq(&repush), 4, "{repush}");
}

#[test]
fn sync_replay_enters_the_ack_window() {
    let server = Server::start(FAST_ACKS);
    let mut alice = server.connect("alice");
    for i in 1..=2 {
        alice.send_msg("bob", &format!("c{i}"), "x");
        alice.expect("sent");
    }
    let mut bob = server.connect("bob");
    let (msgs, _) = bob.sync_page(0, None);
    assert_eq!(msgs.len(), 2);
    let (seen, code, _) = bob.until_close(Duration::from_secs(3));
    let seqs: Vec<u64> = seen.iter().map(|(_, m)| seq(m)).collect();
    assert_eq!(
        code,
        Some(4008),
        "replayed, never acked: re-pushed then 4008; saw {seqs:?}"
    );
    assert_eq!(seqs, vec![1, 2, 1, 2], "two re-push rounds");

    // Acked after the replay: quiet.
    let mut bob = server.connect("bob");
    let (msgs, synced) = bob.sync_page(0, None);
    assert_eq!(msgs.len(), 2);
    bob.send(json!({"type": "ack", "seq": synced["seq"]}));
    bob.expect_silence(Duration::from_millis(1200));
    bob.assert_alive();
}

#[test]
fn a_sent_is_not_repushed_when_the_sender_is_caught_up() {
    let server = Server::start(FAST_ACKS);
    let mut alice = server.connect("alice");
    let mut bob = server.connect("bob");
    bob.send_msg("alice", "b1", "from bob");
    bob.expect("sent");
    let msg = alice.expect("msg");
    alice.send(json!({"type": "ack", "seq": seq(&msg)}));
    bob.send(json!({"type": "ack", "seq": 1}));
    // Nothing unacked on alice's connection: her `sent` stands in for the msg of seq 2.
    alice.send_msg("bob", "a1", "from alice");
    assert_eq!(seq(&alice.expect("sent")), 2);
    let pushed = bob.expect("msg");
    bob.send(json!({"type": "ack", "seq": seq(&pushed)}));
    alice.expect_silence(Duration::from_millis(1200));
    alice.assert_alive();
}

#[test]
fn a_sent_is_not_repushed_when_the_sender_has_unacked_pushes() {
    let server = Server::start(FAST_ACKS);
    let mut alice = server.connect("alice");
    let mut bob = server.connect("bob");
    bob.send_msg("alice", "b1", "from bob");
    bob.expect("sent");
    // Alice holds msg 1 but has not acked it yet when she sends.
    let msg = alice.expect("msg");
    assert_eq!(seq(&msg), 1);
    alice.send_msg("bob", "a1", "from alice");
    let sent = alice.expect("sent");
    assert_eq!(seq(&sent), 2);
    // She acks every push she got. `sent` is a reply, not a push (PROTOCOL.md guarantee
    // 2): nothing may be re-pushed for it and the connection must stay open.
    alice.send(json!({"type": "ack", "seq": 1}));
    let deadline = Instant::now() + Duration::from_millis(1200);
    let mut seen = Vec::new();
    while let Some(frame) = alice.recv(deadline.saturating_duration_since(Instant::now())) {
        seen.push(format!("{frame:?}"));
        if matches!(frame, Frame::Close(_) | Frame::Ended) {
            break;
        }
    }
    // Observed: msg#2 at ~300 ms, msg#2 again at ~500 ms, then close 4008 at ~700 ms.
    assert!(
        seen.is_empty(),
        "the `sent` of seq 2 came back as pushes: {seen:?}"
    );
    alice.assert_alive();
}
