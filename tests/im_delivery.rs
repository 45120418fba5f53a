//! Delivery over a real server (PROTOCOL.md, `send`/`msg`/`sent`/`sync`, guarantees 2 and 3):
//! live pushes to the recipient and the sender's other devices, offline inboxes and sync
//! (from 0, from a cursor, paged), idempotent resends, order.

mod im_support;

use std::collections::HashSet;
use std::time::Duration;

use im_support::*;
use serde_json::{json, Value};

const QUIET: Duration = Duration::from_millis(300);

fn assert_msg_fields(msg: &Value) {
    assert_eq!(msg["type"], "msg", "{msg}");
    for field in ["seq", "mid", "ts"] {
        assert!(msg[field].is_u64(), "`{field}` is a number: {msg}");
    }
    for field in ["conv", "from", "body", "kind"] {
        assert!(msg[field].is_string(), "`{field}` is a string: {msg}");
    }
}

#[test]
fn one_to_one_delivery_to_recipient_and_senders_other_device() {
    let server = Server::start(&[]);
    // "zed" sorts after "amy": the conversation id is sorted, not sender-first.
    let mut zed1 = server.connect("zed");
    let mut zed2 = server.connect("zed");
    let mut amy = server.connect("amy");
    assert_ne!(
        zed1.welcome["conn"], zed2.welcome["conn"],
        "two devices, two connections"
    );

    let before = now_secs() * 1000;
    zed1.send(
        json!({"type": "send", "rid": "r1", "cid": "c-1", "to": "user:amy", "body": "hello amy"}),
    );
    let sent = zed1.expect("sent");
    assert_eq!(sent["rid"], "r1", "rid echoed: {sent}");
    assert_eq!(sent["cid"], "c-1", "{sent}");
    assert_eq!(sent["conv"], "dm:amy:zed", "{sent}");
    assert_eq!(sent["seq"], 1, "the sender's inbox seq: {sent}");
    let ts = sent["ts"].as_u64().expect("ts");
    assert!(
        ts >= before && ts <= now_secs() * 1000 + 1000,
        "ts is wall ms: {ts}"
    );

    let msg = amy.expect("msg");
    assert_msg_fields(&msg);
    assert_eq!(msg["seq"], 1, "amy's inbox seq: {msg}");
    assert_eq!(msg["mid"], sent["mid"], "{msg}");
    assert_eq!(msg["conv"], "dm:amy:zed");
    assert_eq!(msg["from"], "zed");
    assert_eq!(msg["body"], "hello amy");
    assert_eq!(msg["ts"], sent["ts"]);
    assert_eq!(msg["kind"], "text");
    assert!(msg.get("cid").is_none(), "no cid for the recipient: {msg}");
    assert!(msg.get("rid").is_none(), "no rid on a push: {msg}");

    let own = zed2.expect("msg");
    assert_msg_fields(&own);
    assert_eq!(own["seq"], 1);
    assert_eq!(own["mid"], sent["mid"]);
    assert_eq!(own["conv"], "dm:amy:zed");
    assert_eq!(own["from"], "zed");
    assert_eq!(own["body"], "hello amy");
    assert_eq!(
        own["cid"], "c-1",
        "the sender's other device gets the cid: {own}"
    );

    // The sending connection gets `sent` only, never a `msg` for its own send.
    zed1.expect_silence(QUIET);
    amy.expect_silence(Duration::ZERO);
    zed2.expect_silence(Duration::ZERO);

    // The reply goes the other way too, with its own kind; numeric rids are echoed as such.
    amy.send(json!({"type": "send", "rid": 7, "cid": "x", "to": "user:zed", "body": "hi", "kind": "note"}));
    let sent = amy.expect("sent");
    assert_eq!(sent["rid"], 7);
    assert_eq!(sent["seq"], 2);
    assert_eq!(sent["conv"], "dm:amy:zed");
    for zed in [&mut zed1, &mut zed2] {
        let msg = zed.expect("msg");
        assert_eq!(
            (msg["seq"].clone(), msg["from"].clone()),
            (json!(2), json!("amy"))
        );
        assert_eq!(msg["kind"], "note");
        assert!(msg.get("cid").is_none(), "{msg}");
    }
    amy.expect_silence(QUIET);

    // A message to oneself is one inbox entry, pushed to the other device.
    zed1.send_msg("zed", "self", "note to self");
    let sent = zed1.expect("sent");
    assert_eq!(sent["conv"], "dm:zed:zed");
    let msg = zed2.expect("msg");
    assert_eq!(msg["seq"], sent["seq"]);
    zed2.expect_silence(QUIET);
}

#[test]
fn offline_recipient_syncs_from_zero_from_a_cursor_and_in_pages() {
    let server = Server::start(&[]);
    let mut alice = server.connect("alice");
    let n = 7;
    let mut mids = Vec::new();
    for i in 1..=n {
        alice.send_msg("bob", &format!("c{i}"), &format!("m{i}"));
        mids.push(alice.expect("sent")["mid"].clone());
    }

    let mut bob = server.connect("bob");
    assert_eq!(bob.welcome["inbox_seq"], n, "{}", bob.welcome);
    // Nothing is pushed before the client asks.
    bob.expect_silence(QUIET);

    let (msgs, synced) = bob.sync_page(0, None);
    assert_eq!(msgs.len(), n as usize);
    for (i, msg) in msgs.iter().enumerate() {
        assert_msg_fields(msg);
        assert_eq!(seq(msg), i as u64 + 1, "{msg}");
        assert_eq!(msg["body"], format!("m{}", i + 1));
        assert_eq!(msg["from"], "alice");
        assert_eq!(msg["conv"], "dm:alice:bob");
        assert_eq!(msg["mid"], mids[i]);
    }
    assert_eq!(
        synced,
        json!({"type": "synced", "seq": n, "head": n, "more": false})
    );

    // From a cursor: only the rest.
    let (msgs, synced) = bob.sync_page(4, None);
    let seqs: Vec<u64> = msgs.iter().map(seq).collect();
    assert_eq!(seqs, vec![5, 6, 7]);
    assert_eq!(msgs[0]["body"], "m5");
    assert_eq!(
        synced,
        json!({"type": "synced", "seq": 7, "head": 7, "more": false})
    );

    // At the head: nothing, and `seq` is the cursor.
    let (msgs, synced) = bob.sync_page(n, None);
    assert!(msgs.is_empty());
    assert_eq!(
        synced,
        json!({"type": "synced", "seq": 7, "head": 7, "more": false})
    );

    // Paged: limit 3 over 7 entries.
    let (msgs, synced) = bob.sync_page(0, Some(3));
    assert_eq!(msgs.iter().map(seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(
        synced,
        json!({"type": "synced", "seq": 3, "head": 7, "more": true})
    );
    let (msgs, synced) = bob.sync_page(3, Some(3));
    assert_eq!(msgs.iter().map(seq).collect::<Vec<_>>(), vec![4, 5, 6]);
    assert_eq!(
        synced,
        json!({"type": "synced", "seq": 6, "head": 7, "more": true})
    );
    let (msgs, synced) = bob.sync_page(6, Some(3));
    assert_eq!(msgs.iter().map(seq).collect::<Vec<_>>(), vec![7]);
    assert_eq!(
        synced,
        json!({"type": "synced", "seq": 7, "head": 7, "more": false})
    );
    // The whole paged walk, with sync's rid echoed on `synced`.
    bob.send(json!({"type": "sync", "after": 5, "limit": 1, "rid": "s"}));
    assert_eq!(seq(&bob.expect("msg")), 6);
    let synced = bob.expect("synced");
    assert_eq!(synced["rid"], "s");
    assert_eq!(synced["more"], true);
    let (all, last) = bob.sync_all(0, Some(2));
    assert_eq!(
        all.iter().map(seq).collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>()
    );
    assert_eq!(last["more"], false);

    // The sender's own inbox holds its messages with their cids.
    let mut alice2 = server.connect("alice");
    assert_eq!(alice2.welcome["inbox_seq"], n);
    let (msgs, _) = alice2.sync_page(0, None);
    assert_eq!(msgs.len(), n as usize);
    assert_eq!(msgs[2]["cid"], "c3");
    assert_eq!(msgs[2]["from"], "alice");
}

#[test]
fn live_messages_after_a_sync_continue_the_sequence() {
    let server = Server::start(&[]);
    let mut alice = server.connect("alice");
    for i in 0..3 {
        alice.send_msg("bob", &format!("a{i}"), "before");
        alice.expect("sent");
    }
    let mut bob = server.connect("bob");
    let (msgs, synced) = bob.sync_page(0, None);
    assert_eq!(msgs.len(), 3);
    assert_eq!(synced["seq"], 3);
    bob.send(json!({"type": "ack", "seq": 3, "rid": "k"}));
    assert_eq!(bob.expect("ok")["rid"], "k");
    alice.send_msg("bob", "live", "after");
    alice.expect("sent");
    let msg = bob.expect("msg");
    assert_eq!(seq(&msg), 4);
    assert_eq!(msg["body"], "after");
}

#[test]
fn resending_a_cid_is_idempotent() {
    let server = Server::start(&[]);
    let mut alice = server.connect("alice");
    let mut bob = server.connect("bob");

    alice.send_msg("bob", "dup", "once");
    let first = alice.expect("sent");
    let msg = bob.expect("msg");
    assert_eq!(msg["mid"], first["mid"]);
    bob.send(json!({"type": "ack", "seq": seq(&msg)}));

    // Sent again after the answer: the same `sent`, nothing new stored or pushed. The body
    // of the resend does not matter: the first one is what was stored.
    alice.send(
        json!({"type": "send", "rid": "again", "cid": "dup", "to": "user:bob", "body": "twice?"}),
    );
    let again = alice.expect("sent");
    assert_eq!(again["rid"], "again");
    for field in ["cid", "mid", "seq", "conv", "ts"] {
        assert_eq!(again[field], first[field], "`{field}`: {again} vs {first}");
    }
    bob.expect_silence(QUIET);

    // Sent twice back to back (likely in one group commit): one message.
    alice.send_msg("bob", "burst", "b");
    alice.send_msg("bob", "burst", "b");
    let a = alice.expect("sent");
    let b = alice.expect("sent");
    assert_eq!(a["mid"], b["mid"], "{a} vs {b}");
    assert_eq!(a["seq"], b["seq"], "{a} vs {b}");
    assert_eq!(a["seq"], 2, "no seq was spent on the duplicate: {a}");
    let msg = bob.expect("msg");
    assert_eq!(msg["body"], "b");
    assert_eq!(seq(&msg), 2);
    bob.expect_silence(QUIET);

    // A new cid still takes the next seq: no gap was left.
    alice.send_msg("bob", "next", "n");
    assert_eq!(alice.expect("sent")["seq"], 3);
    assert_eq!(seq(&bob.expect("msg")), 3);

    // The inboxes hold each message once.
    let mut bob2 = server.connect("bob");
    assert_eq!(bob2.welcome["inbox_seq"], 3);
    let (msgs, synced) = bob2.sync_page(0, None);
    let bodies: Vec<&str> = msgs.iter().map(|m| m["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, vec!["once", "b", "n"]);
    assert_eq!(synced["head"], 3);
    let mut alice2 = server.connect("alice");
    let (msgs, _) = alice2.sync_page(0, None);
    let cids: Vec<&str> = msgs.iter().map(|m| m["cid"].as_str().unwrap()).collect();
    assert_eq!(cids, vec!["dup", "burst", "next"]);

    // The same cid from another sender is another message.
    bob2.send_msg("alice", "dup", "bob's own");
    let bobs = bob2.expect("sent");
    assert_ne!(bobs["mid"], first["mid"]);
}

#[test]
fn two_hundred_messages_arrive_in_order() {
    let server = Server::start(&[]);
    let mut alice = server.connect("alice");
    let mut bob = server.connect("bob");
    let n = 200u64;
    for i in 0..n {
        alice.queue(json!({"type": "send", "cid": format!("c{i}"), "to": "user:bob", "body": format!("body {i}")}));
    }
    alice.flush();
    let mut sent_seqs = Vec::new();
    for i in 0..n {
        let sent = alice.expect("sent");
        assert_eq!(sent["cid"], format!("c{i}"), "`sent`s in request order");
        sent_seqs.push(seq(&sent));
    }
    assert_eq!(sent_seqs, (1..=n).collect::<Vec<_>>());
    let mut mids = HashSet::new();
    for i in 0..n {
        let msg = bob.expect("msg");
        assert_eq!(seq(&msg), i + 1, "{msg}");
        assert_eq!(msg["body"], format!("body {i}"), "{msg}");
        assert!(mids.insert(mid(&msg)), "mids are unique: {msg}");
        if (i + 1) % 50 == 0 {
            bob.send(json!({"type": "ack", "seq": i + 1}));
        }
    }
    bob.expect_silence(QUIET);
    let (msgs, synced) = server.connect("bob").sync_all(0, None);
    assert_eq!(msgs.len(), n as usize);
    assert_eq!(synced["head"], n);
}

#[test]
fn both_sides_of_a_conversation_see_the_same_order() {
    let server = Server::start(&["--rate", "100000"]);
    let addr = server.addr;
    // Two senders at once, each on its own thread, pipelining into one conversation.
    let senders: Vec<_> = [("alice", "bob"), ("bob", "alice")]
        .into_iter()
        .map(|(from, to)| {
            std::thread::spawn(move || {
                let mut client = Client::connect(addr, from);
                for i in 0..100 {
                    client.queue(json!({"type": "send", "cid": format!("{from}{i}"), "to": format!("user:{to}"), "body": format!("{from} {i}")}));
                }
                client.flush();
                let mut sents = 0;
                while sents < 100 {
                    // The peer's messages arrive here too.
                    let value = client.next_json();
                    match value["type"].as_str() {
                        Some("sent") => sents += 1,
                        Some("msg") => {}
                        _ => panic!("unexpected {value}"),
                    }
                }
            })
        })
        .collect();
    for sender in senders {
        sender.join().expect("sender");
    }
    let (a, _) = Client::connect(addr, "alice").sync_all(0, None);
    let (b, _) = Client::connect(addr, "bob").sync_all(0, None);
    assert_eq!(a.len(), 200);
    assert_eq!(b.len(), 200);
    let order = |msgs: &[Value]| msgs.iter().map(mid).collect::<Vec<_>>();
    assert_eq!(order(&a), order(&b), "one conversation, one order");
    for msgs in [&a, &b] {
        assert_eq!(
            msgs.iter().map(seq).collect::<Vec<_>>(),
            (1..=200).collect::<Vec<_>>()
        );
        // Each sender's own messages keep their send order.
        for from in ["alice", "bob"] {
            let mine: Vec<&Value> = msgs
                .iter()
                .filter(|m| m["from"] == from)
                .map(|m| &m["body"])
                .collect();
            let expected: Vec<Value> = (0..100).map(|i| json!(format!("{from} {i}"))).collect();
            assert_eq!(mine, expected.iter().collect::<Vec<_>>());
        }
    }
}

#[test]
fn send_errors_carry_cid_and_rid() {
    let server = Server::start(&[]);
    let mut alice = server.connect("alice");
    let cases = [
        (
            json!({"type": "send", "rid": 1, "cid": "", "to": "user:bob", "body": "x"}),
            "bad_request",
        ),
        (
            json!({"type": "send", "rid": 2, "cid": "k", "to": "user:bad user", "body": "x"}),
            "bad_request",
        ),
        (
            json!({"type": "send", "rid": 3, "cid": "k", "to": "bob", "body": "x"}),
            "bad_request",
        ),
        (
            json!({"type": "send", "rid": 4, "cid": "k", "to": "group:999999", "body": "x"}),
            "not_found",
        ),
        (
            json!({"type": "send", "rid": 5, "cid": "k", "to": "user:bob", "body": "x", "kind": "recall"}),
            "bad_request",
        ),
        (
            json!({"type": "send", "rid": 6, "cid": "k", "to": "user:bob"}),
            "bad_request",
        ),
    ];
    for (request, code) in cases {
        alice.send(request.clone());
        let error = alice.expect("error");
        assert_eq!(error["code"], code, "{request} -> {error}");
        assert_eq!(error["rid"], request["rid"], "{error}");
        if request.get("body").is_some() {
            assert_eq!(
                error["cid"], request["cid"],
                "the send's cid comes back: {error}"
            );
        }
        assert!(error["message"].is_string(), "{error}");
    }
    alice.assert_alive();
    // None of them stored anything.
    let (msgs, synced) = alice.sync_page(0, None);
    assert!(msgs.is_empty());
    assert_eq!(synced["head"], 0);
}

#[test]
fn a_sync_during_a_live_stream_skips_nothing() {
    let server = Server::start(&["--rate", "100000", "--ack-window", "100000"]);
    let addr = server.addr;
    let total = 600u64;
    let mut alice = server.connect("alice");
    // Some backlog first, then bob connects and syncs while the rest streams in.
    for i in 0..100 {
        alice.queue(json!({"type": "send", "cid": format!("c{i}"), "to": "user:bob", "body": format!("{i}")}));
    }
    alice.flush();
    for _ in 0..100 {
        alice.expect("sent");
    }
    let streamer = std::thread::spawn(move || {
        for i in 100..total {
            alice.queue(json!({"type": "send", "cid": format!("c{i}"), "to": "user:bob", "body": format!("{i}")}));
            if i % 10 == 0 {
                alice.flush();
            }
        }
        alice.flush();
        for _ in 100..total {
            alice.expect("sent");
        }
    });
    let mut bob = Client::connect(addr, "bob");
    bob.send(json!({"type": "sync", "after": 0, "limit": 50}));
    // The client of PROTOCOL.md: drop seq <= cursor, a gap is a failure here (the server
    // promises pushes in seq order with none skipped), sync again after a partial page.
    // Live pushes that went out before the server took the sync (the device counts as
    // caught up from its welcome) are gaps the client skips; from the first `synced` on,
    // nothing may be skipped.
    let mut cursor = 0u64;
    let mut repeats = 0;
    let mut early_gaps = 0;
    let mut synced_once = false;
    let mut sync_open = true;
    while cursor < total || sync_open {
        let value = bob.next_json();
        match value["type"].as_str() {
            Some("msg") => {
                let s = seq(&value);
                if s <= cursor {
                    repeats += 1;
                    continue;
                }
                if s > cursor + 1 && !synced_once {
                    early_gaps += 1;
                    continue;
                }
                assert_eq!(s, cursor + 1, "a gap after {cursor}: {}", value["seq"]);
                assert_eq!(
                    value["body"],
                    format!("{}", s - 1),
                    "seq {s} is the {}th send",
                    s
                );
                cursor = s;
                if s % 20 == 0 {
                    bob.send(json!({"type": "ack", "seq": s}));
                }
            }
            Some("synced") => {
                synced_once = true;
                sync_open = value["more"] == true;
                if sync_open {
                    bob.send(json!({"type": "sync", "after": cursor, "limit": 50}));
                }
            }
            _ => panic!("unexpected {value}"),
        }
    }
    streamer.join().expect("streamer");
    bob.send(json!({"type": "ack", "seq": cursor}));
    bob.expect_silence(QUIET);
    eprintln!("sync during a stream: {repeats} repeats dropped, {early_gaps} early gaps skipped");
}

#[test]
fn live_pushes_wait_while_a_paged_sync_is_unfinished() {
    let server = Server::start(&[]);
    let mut alice = server.connect("alice");
    for i in 1..=5 {
        alice.send_msg("bob", &format!("c{i}"), &format!("m{i}"));
        alice.expect("sent");
    }
    let mut bob = server.connect("bob");
    let (msgs, synced) = bob.sync_page(0, Some(2));
    assert_eq!(msgs.len(), 2);
    assert_eq!(synced["more"], true);
    // A live message now would be a gap (3..5 not replayed yet): it must wait.
    alice.send_msg("bob", "live", "m6");
    alice.expect("sent");
    bob.expect_silence(QUIET);
    let (msgs, synced) = bob.sync_page(2, None);
    assert_eq!(msgs.iter().map(seq).collect::<Vec<_>>(), vec![3, 4, 5, 6]);
    assert_eq!(
        synced,
        json!({"type": "synced", "seq": 6, "head": 6, "more": false})
    );
    bob.send(json!({"type": "ack", "seq": 6}));
    // Caught up: live pushes again.
    alice.send_msg("bob", "live2", "m7");
    alice.expect("sent");
    assert_eq!(seq(&bob.expect("msg")), 7);
}

#[test]
fn a_full_ack_window_pauses_pushes_and_acks_resume_them_from_the_store() {
    let server = Server::start(&["--ack-window", "3"]);
    let mut alice = server.connect("alice");
    let mut bob = server.connect("bob");
    for i in 1..=10 {
        alice.send_msg("bob", &format!("c{i}"), &format!("m{i}"));
        alice.expect("sent");
    }
    let mut got = Vec::new();
    for round in 0..4 {
        let expected = if round < 3 { 3 } else { 1 };
        for _ in 0..expected {
            let msg = bob.expect("msg");
            assert_eq!(msg["body"], format!("m{}", seq(&msg)));
            got.push(seq(&msg));
        }
        // The window is full (or the backlog done): nothing more until an ack.
        bob.expect_silence(QUIET);
        bob.send(json!({"type": "ack", "seq": got.last().unwrap()}));
    }
    assert_eq!(got, (1..=10).collect::<Vec<_>>());
    bob.expect_silence(QUIET);
}

#[test]
fn pipelined_syncs_each_get_one_reply() {
    let server = Server::start(&[]);
    let mut alice = server.connect("alice");
    for i in 1..=3 {
        alice.send_msg("bob", &format!("c{i}"), "x");
        alice.expect("sent");
    }
    let mut bob = server.connect("bob");
    for rid in 1..=4 {
        bob.queue(json!({"type": "sync", "after": 0, "rid": rid}));
    }
    bob.flush();
    let mut replies = Vec::new();
    while replies.len() < 4 {
        let value = bob.next_json();
        match value["type"].as_str() {
            Some("msg") => {}
            Some("synced") | Some("error") => replies.push(value),
            _ => panic!("unexpected {value}"),
        }
    }
    let mut rids: Vec<u64> = replies
        .iter()
        .map(|r| r["rid"].as_u64().expect("rid"))
        .collect();
    rids.sort_unstable();
    assert_eq!(rids, vec![1, 2, 3, 4], "one reply per rid: {replies:?}");
    let last = replies.iter().find(|r| r["rid"] == 4).unwrap();
    assert_eq!(last["type"], "synced", "the latest sync is served: {last}");
    bob.expect_silence(QUIET);
}

#[test]
fn sync_pages_are_capped_at_1000() {
    let server = Server::start(&["--rate", "100000"]);
    let mut alice = server.connect("alice");
    let n = 1005u64;
    for i in 0..n {
        alice.queue(json!({"type": "send", "cid": format!("c{i}"), "to": "user:bob", "body": "x"}));
    }
    alice.flush();
    for _ in 0..n {
        alice.expect("sent");
    }
    let mut bob = server.connect("bob");
    let (msgs, synced) = bob.sync_page(0, None);
    assert_eq!(msgs.len(), 1000, "default page");
    assert_eq!(
        synced,
        json!({"type": "synced", "seq": 1000, "head": n, "more": true})
    );
    bob.send(json!({"type": "ack", "seq": 1000}));
    let (msgs, synced) = bob.sync_page(0, Some(5000));
    assert_eq!(msgs.len(), 1000, "limit capped");
    assert_eq!(synced["more"], true);
    let (msgs, synced) = bob.sync_page(1000, Some(5000));
    assert_eq!(msgs.len(), 5);
    assert_eq!(
        synced,
        json!({"type": "synced", "seq": n, "head": n, "more": false})
    );
}

#[test]
fn a_cid_is_bound_to_its_first_message() {
    let server = Server::start(&[]);
    let mut alice = server.connect("alice");
    alice.send_msg("bob", "k", "to bob");
    let first = alice.expect("sent");
    // The same cid to someone else is still the first message: nothing reaches carol.
    alice.send_msg("carol", "k", "to carol");
    let again = alice.expect("sent");
    assert_eq!(again, first);
    let mut carol = server.connect("carol");
    assert_eq!(carol.welcome["inbox_seq"], 0);
    let (msgs, _) = carol.sync_page(0, None);
    assert!(msgs.is_empty(), "{msgs:?}");
}

#[test]
fn a_sent_lost_to_a_disconnect_is_recovered_by_resending() {
    let server = Server::start(&[]);
    let mut bob = server.connect("bob");
    let mut alice = server.connect("alice");
    // Send and hang up at once, before the `sent` can arrive.
    alice.send_msg("bob", "lost", "did it go?");
    drop(alice);
    let msg = bob.expect("msg");
    assert_eq!(msg["body"], "did it go?");
    // The next device resends the cid and learns the outcome; bob gets nothing new.
    let mut alice = server.connect("alice");
    assert_eq!(alice.welcome["inbox_seq"], 1);
    alice.send_msg("bob", "lost", "did it go?");
    let sent = alice.expect("sent");
    assert_eq!(sent["mid"], msg["mid"]);
    assert_eq!(sent["seq"], 1);
    bob.expect_silence(QUIET);
}
