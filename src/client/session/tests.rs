use serde_json::{json, Value};

use super::*;

fn config() -> Config {
    Config::new("dev1", 42)
}

fn connected(config: Config, cursor: u64) -> Session {
    let mut s = Session::with_cursor(config, cursor);
    s.after_connect(0);
    let welcome =
        json!({"type":"welcome","user":"alice","conn":"7","heartbeat_ms":25000,"inbox_seq":0});
    s.on_text(welcome.to_string().as_bytes());
    // The resume sync is answered empty, so each test starts with nothing in flight.
    let rid = s.sync.as_ref().unwrap().rid.clone();
    s.on_text(synced(cursor, cursor, false, &rid).as_bytes());
    s.take_requests();
    s
}

fn msg(seq: u64) -> String {
    json!({"type":"msg","seq":seq,"mid":100 + seq,"conv":"dm:alice:bob","from":"bob",
           "body":format!("m{seq}"),"ts":1,"kind":"text"})
    .to_string()
}

fn own_msg(seq: u64, cid: &str) -> String {
    json!({"type":"msg","seq":seq,"mid":100 + seq,"conv":"dm:alice:bob","from":"alice",
           "body":"mine","ts":1,"kind":"text","cid":cid})
    .to_string()
}

fn sent(cid: &str, seq: u64) -> String {
    json!({"type":"sent","cid":cid,"mid":100 + seq,"conv":"dm:alice:bob","seq":seq,"ts":1})
        .to_string()
}

fn synced(seq: u64, head: u64, more: bool, rid: &str) -> String {
    json!({"type":"synced","seq":seq,"head":head,"more":more,"rid":rid}).to_string()
}

fn feed(s: &mut Session, frames: &[String]) -> Vec<Event> {
    frames
        .iter()
        .flat_map(|f| s.on_text(f.as_bytes()))
        .collect()
}

fn msg_seqs(events: &[Event]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Msg(m) => Some(m.seq),
            _ => None,
        })
        .collect()
}

fn parsed(requests: &[String]) -> Vec<Value> {
    requests
        .iter()
        .map(|r| serde_json::from_str(r).unwrap())
        .collect()
}

fn of_type<'a>(requests: &'a [Value], kind: &str) -> Vec<&'a Value> {
    requests.iter().filter(|r| r["type"] == kind).collect()
}

/// The rid of the one `sync` among `requests`, checking it starts after `after`.
fn sync_rid(requests: &[String], after: u64) -> String {
    let requests = parsed(requests);
    let syncs = of_type(&requests, "sync");
    assert_eq!(syncs.len(), 1, "one sync expected in {requests:?}");
    assert_eq!(syncs[0]["after"], after);
    syncs[0]["rid"].as_str().unwrap().to_owned()
}

#[test]
fn in_order_messages_advance_the_cursor_with_one_ack_per_batch() {
    let mut s = connected(config(), 0);
    let events = feed(&mut s, &[msg(1), msg(2), msg(3)]);
    assert_eq!(msg_seqs(&events), [1, 2, 3]);
    let Event::Msg(first) = &events[0] else {
        panic!()
    };
    assert_eq!((first.body.as_str(), first.from.as_str()), ("m1", "bob"));
    assert_eq!(s.cursor(), 3);
    let requests = s.take_requests();
    assert_eq!(requests, [r#"{"seq":3,"type":"ack"}"#]);
    // Nothing new: no ack.
    assert!(s.take_requests().is_empty());
}

#[test]
fn duplicates_are_dropped_but_still_acked() {
    let mut s = connected(config(), 0);
    feed(&mut s, &[msg(1), msg(2)]);
    s.take_requests();
    // A re-push of what the server did not see acked.
    let events = feed(&mut s, &[msg(1), msg(2)]);
    assert!(events.is_empty());
    assert_eq!(s.cursor(), 2);
    let requests = parsed(&s.take_requests());
    assert_eq!(requests, [json!({"type":"ack","seq":2})]);
}

#[test]
fn a_saved_cursor_resumes_there() {
    let mut s = Session::with_cursor(config(), 5);
    let requests = s.after_connect(0);
    sync_rid(&requests[..1], 5);
    assert!(feed(&mut s, &[msg(4), msg(5)]).is_empty());
    assert_eq!(msg_seqs(&feed(&mut s, &[msg(6)])), [6]);
    assert_eq!(s.cursor(), 6);
}

#[test]
fn a_gap_holds_what_is_above_it_and_asks_for_a_sync_from_the_cursor() {
    let mut s = connected(config(), 0);
    feed(&mut s, &[msg(1)]);
    let events = feed(&mut s, &[msg(4), msg(3)]);
    assert!(events.is_empty(), "nothing above the gap is handed out");
    assert_eq!((s.cursor(), s.held_count()), (1, 2));
    let requests = s.take_requests();
    let rid = sync_rid(&requests, 1);
    assert_eq!(parsed(&requests)[0], json!({"type":"ack","seq":1}));
    // One sync at a time, however many gaps are seen meanwhile.
    feed(&mut s, &[msg(6)]);
    assert!(of_type(&parsed(&s.take_requests()), "sync").is_empty());
    // The replay fills the gap; held entries come out in order, once.
    let events = feed(&mut s, &[msg(2), msg(3), msg(4), msg(5), msg(6)]);
    assert_eq!(msg_seqs(&events), [2, 3, 4, 5, 6]);
    feed(&mut s, &[synced(6, 6, false, &rid)]);
    assert_eq!((s.cursor(), s.held_count()), (6, 0));
    let requests = parsed(&s.take_requests());
    assert_eq!(requests, [json!({"type":"ack","seq":6})]);
}

#[test]
fn held_entries_are_bounded_keeping_the_lowest() {
    let mut config = config();
    config.max_held = 3;
    let mut s = connected(config, 0);
    feed(&mut s, &(2..=10).rev().map(msg).collect::<Vec<_>>());
    assert_eq!(s.held_count(), 3);
    // 2, 3, 4 were kept; the rest comes back with the sync.
    assert_eq!(msg_seqs(&feed(&mut s, &[msg(1)])), [1, 2, 3, 4]);
    assert_eq!(s.cursor(), 4);
    assert_eq!(msg_seqs(&feed(&mut s, &[msg(5)])), [5]);
}

#[test]
fn sync_pages_continue_from_the_cursor_until_the_last() {
    let mut config = config();
    config.sync_limit = Some(2);
    let mut s = Session::new(config);
    let requests = s.after_connect(0);
    assert_eq!(parsed(&requests)[0]["limit"], 2);
    let mut rid = sync_rid(&requests, 0);
    let mut seen = Vec::new();
    for page in 0..3 {
        let (a, b) = (page * 2 + 1, page * 2 + 2);
        seen.extend(msg_seqs(&feed(&mut s, &[msg(a), msg(b)])));
        // A synced that answers someone else's sync changes nothing.
        feed(&mut s, &[synced(b, 5, true, "not-ours")]);
        feed(&mut s, &[synced(b, 6, b < 6, &rid)]);
        let requests = s.take_requests();
        assert_eq!(parsed(&requests)[0], json!({"type":"ack","seq":b}));
        if b < 6 {
            rid = sync_rid(&requests, b);
        } else {
            assert!(of_type(&parsed(&requests), "sync").is_empty());
            assert!(!s.is_syncing());
        }
    }
    assert_eq!(seen, [1, 2, 3, 4, 5, 6]);
}

#[test]
fn a_failed_sync_is_tried_again_after_the_retry_delay() {
    let mut s = Session::new(config());
    let rid = sync_rid(&s.after_connect(0), 0);
    let error = json!({"type":"error","code":"unavailable","message":"busy","rid":rid}).to_string();
    let events = feed(&mut s, &[error]);
    assert!(matches!(&events[..], [Event::Error(e)] if e.is_transient()));
    assert!(!s.is_syncing());
    s.tick(500);
    assert!(of_type(&parsed(&s.take_requests()), "sync").is_empty());
    s.tick(1_000);
    sync_rid(&s.take_requests(), 0);
}

#[test]
fn sends_wait_for_a_connection_then_follow_the_sync() {
    let mut s = Session::new(config());
    let a = s.send("user:bob", "one");
    let b = s.send("user:bob", "two");
    assert_ne!(a, b);
    assert!(a.starts_with("dev1.") && a.len() <= 64, "{a}");
    assert!(
        s.take_requests().is_empty(),
        "nothing is written while disconnected"
    );
    let requests = parsed(&s.after_connect(0));
    assert_eq!(requests[0]["type"], "sync");
    assert_eq!(
        requests[1],
        json!({"type":"send","cid":a,"to":"user:bob","body":"one"})
    );
    assert_eq!(requests[2]["cid"], b.as_str());
    assert_eq!(requests.len(), 3);
    // While connected a send goes out with the next batch.
    let c = s.send_kind("user:bob", "three", "note");
    let requests = parsed(&s.take_requests());
    assert_eq!(
        requests,
        [json!({"type":"send","cid":c,"to":"user:bob","body":"three","kind":"note"})]
    );
}

#[test]
fn the_outbox_resends_after_a_reconnect_until_sent_arrives() {
    let mut s = connected(config(), 0);
    let a = s.send("user:bob", "one");
    let b = s.send("user:bob", "two");
    let c = s.send("user:bob", "three");
    s.take_requests();
    let events = feed(&mut s, &[sent(&a, 1)]);
    assert!(matches!(&events[..], [Event::Sent(x)] if x.cid == a && x.seq == 1));
    assert_eq!(s.cursor(), 1, "`sent` stands in for the msg of its seq");
    s.disconnected();
    assert_eq!(s.pending().collect::<Vec<_>>(), [b.as_str(), c.as_str()]);
    let requests = parsed(&s.after_connect(10));
    let sends = of_type(&requests, "send");
    assert_eq!(sends.len(), 2);
    assert_eq!(
        (sends[0]["cid"].as_str(), sends[1]["cid"].as_str()),
        (Some(&*b), Some(&*c))
    );
    // `b` was stored before the drop: the sync brings it as an entry with our cid,
    // which confirms it; the `sent` for the resend then reports nothing new.
    let events = feed(&mut s, &[own_msg(2, &b)]);
    assert!(matches!(&events[..], [Event::Sent(x)] if x.cid == b && x.seq == 2));
    assert!(feed(&mut s, &[sent(&b, 2)]).is_empty());
    let events = feed(&mut s, &[sent(&c, 3)]);
    assert!(matches!(&events[..], [Event::Sent(x)] if x.cid == c));
    assert_eq!((s.pending_count(), s.cursor()), (0, 3));
    // Nothing left to resend.
    s.disconnected();
    assert!(of_type(&parsed(&s.after_connect(20)), "send").is_empty());
}

#[test]
fn another_devices_cids_are_ordinary_messages() {
    let mut other = Session::new(Config::new("dev2", 42));
    let theirs = other.send("user:bob", "hi");
    let mut s = connected(config(), 0);
    let events = feed(&mut s, &[own_msg(1, &theirs)]);
    assert!(matches!(&events[..], [Event::Msg(m)] if m.cid.as_deref() == Some(&*theirs)));
    // A `sent` for a cid we did not make (a hand-written request) is passed through.
    let events = feed(&mut s, &[sent("by-hand", 2)]);
    assert!(matches!(&events[..], [Event::Sent(x)] if x.cid == "by-hand"));
}

#[test]
fn cids_differ_between_runs_of_the_same_device() {
    let a = Session::new(Config::new("dev1", 1)).send("user:bob", "x");
    let b = Session::new(Config::new("dev1", 2)).send("user:bob", "x");
    assert_ne!(a, b);
}

#[test]
fn a_sent_above_a_gap_is_held_and_the_later_push_is_dropped() {
    let mut s = connected(config(), 0);
    let a = s.send("user:bob", "mine");
    s.take_requests();
    feed(&mut s, &[sent(&a, 3)]);
    assert_eq!((s.cursor(), s.held_count()), (0, 1));
    // The connection's catch-up brings 1..3; our own entry is not shown again.
    let events = feed(&mut s, &[msg(1), msg(2), own_msg(3, &a)]);
    assert_eq!(msg_seqs(&events), [1, 2]);
    assert_eq!(events.len(), 2);
    assert_eq!(s.cursor(), 3);
}

#[test]
fn refused_sends_leave_the_outbox_and_transient_ones_are_retried() {
    let mut config = config();
    config.retry_ms = 300;
    let mut s = connected(config, 0);
    let bad = s.send("nobody", "x");
    let busy = s.send("user:bob", "y");
    s.take_requests();
    let error = |cid: &str, code: &str| {
        json!({"type":"error","code":code,"message":"no","cid":cid}).to_string()
    };
    s.tick(1_000);
    s.take_requests();
    let events = feed(
        &mut s,
        &[error(&bad, "bad_request"), error(&busy, "rate_limited")],
    );
    assert_eq!(events.len(), 2);
    assert_eq!(s.pending().collect::<Vec<_>>(), [busy.as_str()]);
    s.tick(1_200);
    assert!(s.take_requests().is_empty());
    s.tick(1_300);
    let requests = parsed(&s.take_requests());
    assert_eq!(of_type(&requests, "send")[0]["cid"], busy.as_str());
}

#[test]
fn backoff_follows_the_schedule_with_bounded_jitter_and_resets_on_welcome() {
    let mut s = Session::new(config());
    let delays: Vec<u64> = (0..9).map(|_| s.reconnect_delay_ms()).collect();
    let bases = [1, 2, 3, 5, 10, 20, 20, 20, 20];
    for (delay, base) in delays.iter().zip(bases) {
        let base = base * 1000;
        assert!(
            (base * 8 / 10..=base * 12 / 10).contains(delay),
            "{delay} is not {base} ± 20% in {delays:?}"
        );
    }
    assert!(
        delays[5..].windows(2).any(|w| w[0] != w[1]),
        "jitter varies: {delays:?}"
    );
    // Deterministic for a seed, different across seeds.
    let again: Vec<u64> = {
        let mut t = Session::new(config());
        (0..9).map(|_| t.reconnect_delay_ms()).collect()
    };
    assert_eq!(delays, again);
    let other: Vec<u64> = {
        let mut t = Session::new(Config::new("dev1", 43));
        (0..9).map(|_| t.reconnect_delay_ms()).collect()
    };
    assert_ne!(delays, other);

    s.after_connect(0);
    let welcome = json!({"type":"welcome","user":"a","conn":"1","heartbeat_ms":100,"inbox_seq":0});
    feed(&mut s, &[welcome.to_string()]);
    assert_eq!(s.backoff().attempt(), 0);
    assert!((800..=1200).contains(&s.reconnect_delay_ms()));
    s.backoff().reset();
    assert_eq!(s.backoff().attempt(), 0);
}

#[test]
fn heartbeat_pings_when_idle_and_declares_a_silent_server_dead() {
    let mut config = config();
    config.heartbeat_grace_ms = 50;
    let mut s = Session::new(config);
    s.after_connect(0);
    let welcome = json!({"type":"welcome","user":"a","conn":"1","heartbeat_ms":100,"inbox_seq":0});
    s.heard(0);
    feed(&mut s, &[welcome.to_string()]);
    s.take_requests();
    assert_eq!(s.tick(99), Liveness::Alive);
    assert!(s.take_requests().is_empty());
    assert_eq!(s.tick(100), Liveness::Alive);
    assert_eq!(s.take_requests(), [r#"{"type":"ping"}"#]);
    // The pong resets the silence and may move the heartbeat.
    s.heard(120);
    feed(
        &mut s,
        &[r#"{"type":"pong","heartbeat_ms":200}"#.to_owned()],
    );
    assert_eq!(s.heartbeat_ms(), 200);
    assert_eq!(s.tick(300), Liveness::Alive);
    assert_eq!(s.take_requests(), [r#"{"type":"ping"}"#]);
    assert_eq!(s.tick(370), Liveness::Alive);
    assert_eq!(s.tick(371), Liveness::Dead);
    // A disconnected session has no liveness to lose.
    s.disconnected();
    assert_eq!(s.tick(10_000), Liveness::Alive);
}

#[test]
fn frames_parse_into_typed_events_or_other() {
    let mut s = Session::new(config());
    let events = feed(
        &mut s,
        &[
            json!({"type":"welcome","user":"alice","conn":"18446744073709551615",
                   "heartbeat_ms":25000,"inbox_seq":9})
            .to_string(),
            json!({"type":"ok","rid":3}).to_string(),
            "not json".to_owned(),
            json!({"type":"msg","seq":"x"}).to_string(),
            json!({"type":"error","code":"bad_request","message":"unknown type 'fly'"}).to_string(),
            json!({"type":"pong","heartbeat_ms":1000,"rid":"p"}).to_string(),
        ],
    );
    assert_eq!(events.len(), 6);
    assert!(matches!(&events[0], Event::Welcome(w)
        if w.user == "alice" && w.conn == "18446744073709551615" && w.inbox_seq == 9));
    assert_eq!(s.user(), Some("alice"));
    assert_eq!(events[1], Event::Other(json!({"type":"ok","rid":3})));
    assert_eq!(events[2], Event::Other(json!("not json")));
    assert_eq!(events[3], Event::Other(json!({"type":"msg","seq":"x"})));
    assert!(matches!(&events[4], Event::Error(e) if e.code == "bad_request" && !e.is_transient()));
    assert!(matches!(&events[5], Event::Pong(p) if p.heartbeat_ms == Some(1000)));
}

#[test]
fn msg_fields_parse_including_recall_references() {
    let mut s = connected(config(), 0);
    let recall = json!({"type":"msg","seq":1,"mid":8,"conv":"dm:a:b","from":"b","body":"",
                        "ts":5,"kind":"recall","ref":7});
    let events = feed(&mut s, &[recall.to_string()]);
    let [Event::Msg(m)] = &events[..] else {
        panic!("{events:?}")
    };
    assert_eq!(
        (m.kind.as_str(), m.ref_mid, m.cid.as_deref()),
        ("recall", Some(7), None)
    );
}

#[test]
fn without_resume_only_gaps_make_it_sync_and_the_outbox_waits() {
    let mut s = Session::new(config());
    s.send("user:bob", "later");
    s.on_connect(0);
    assert!(s.take_requests().is_empty());
    feed(&mut s, &[msg(2)]);
    let requests = s.take_requests();
    sync_rid(&requests, 0);
    assert!(of_type(&parsed(&requests), "send").is_empty());
    assert_eq!(s.pending_count(), 1);
}

#[test]
fn a_gap_left_after_a_complete_sync_is_synced_again_only_on_progress() {
    let mut s = connected(config(), 0);
    feed(&mut s, &[msg(5)]);
    let rid = sync_rid(&s.take_requests(), 0);
    // Progress (1 arrived) but 2..4 still missing: once more.
    feed(&mut s, &[msg(1), synced(1, 5, false, &rid)]);
    let rid = sync_rid(&s.take_requests(), 1);
    // No progress: the server has nothing for the gap; asking again would loop.
    feed(&mut s, &[synced(1, 5, false, &rid)]);
    assert!(of_type(&parsed(&s.take_requests()), "sync").is_empty());
    assert_eq!((s.cursor(), s.held_count()), (1, 1));
}

#[test]
fn a_numeric_connection_id_is_taken_too() {
    let mut s = Session::new(config());
    let events = feed(
        &mut s,
        &[r#"{"type":"welcome","user":"a","conn":12,"heartbeat_ms":1,"inbox_seq":0}"#.to_owned()],
    );
    assert!(matches!(&events[..], [Event::Welcome(w)] if w.conn == "12"));
}
