//! Store tests against real SQLite files in throwaway folders.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};
use rusqlite::Connection;

use super::*;

/// A fresh folder under the system temp dir, removed on drop (also when a test fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "courier-store-{name}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const TIMEOUT: Duration = Duration::from_secs(30);

fn config(dir: &TempDir) -> StoreConfig {
    StoreConfig::new(dir.path())
}

fn noop() -> Notify {
    Arc::new(|| {})
}

/// Every user's inbox head as stored, read beside the store with a side connection.
struct Initial {
    heads: HashMap<String, u64>,
}

fn open_ok(config: &StoreConfig) -> (Store, Receiver<Completion>, Initial) {
    let (store, done) = open(config, noop()).expect("open");
    let side = Connection::open(config.dir.join(DB_FILE)).expect("side connection");
    let heads = side
        .prepare("SELECT name, head FROM users")
        .and_then(|mut stmt| {
            stmt.query_map([], |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64)))?
                .collect()
        })
        .expect("users");
    (store, done, Initial { heads })
}

/// Opens with the test gate: the writer takes one `()` per batch before draining the queue.
fn open_held(config: &StoreConfig) -> (Store, Receiver<Completion>, Sender<()>) {
    let (gate_tx, gate_rx) = unbounded();
    let (store, done) = open_gated(config, noop(), Some(gate_rx)).expect("open");
    (store, done, gate_tx)
}

fn send_job(tag: u64, from: &str, to: &str, cid: &str, body: &str) -> Job {
    Job::Send {
        tag,
        sender: from.into(),
        cid: cid.into(),
        to: to.into(),
        body: body.into(),
        kind: "text".into(),
        ts: 1_700_000_000_000 + tag,
    }
}

fn page_job(tag: u64, user: &str, after: u64, limit: u32) -> Job {
    Job::Page {
        tag,
        user: user.into(),
        after,
        limit,
        max_bytes: u64::MAX,
    }
}

fn submit(store: &Store, job: Job) {
    store.submit(job).expect("queue has room");
}

fn recv(done: &Receiver<Completion>) -> Completion {
    done.recv_timeout(TIMEOUT).expect("a completion in time")
}

fn recv_sent(done: &Receiver<Completion>) -> (u64, Sent) {
    match recv(done) {
        Completion::Sent { tag, result } => (tag, result.expect("send succeeded")),
        other => panic!("expected Sent, got {other:?}"),
    }
}

fn recv_page(done: &Receiver<Completion>) -> Page {
    match recv(done) {
        Completion::Page { result, .. } => result.expect("page succeeded"),
        other => panic!("expected Page, got {other:?}"),
    }
}

/// Submits a send and waits for its answer.
fn send(store: &Store, done: &Receiver<Completion>, from: &str, to: &str, cid: &str) -> Sent {
    submit(store, send_job(0, from, to, cid, &format!("body of {cid}")));
    recv_sent(done).1
}

fn page(store: &Store, done: &Receiver<Completion>, user: &str, after: u64, limit: u32) -> Page {
    submit(store, page_job(0, user, after, limit));
    recv_page(done)
}

/// A side connection, as a check independent of the store's own code.
fn side(dir: &TempDir) -> Connection {
    Connection::open(dir.path().join(DB_FILE)).expect("side connection")
}

fn count(dir: &TempDir, table: &str) -> i64 {
    side(dir)
        .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .expect("count")
}

fn user_version(dir: &TempDir) -> i64 {
    side(dir)
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("user_version")
}

fn seqs(page: &Page) -> Vec<u64> {
    page.entries.iter().map(|e| e.seq).collect()
}

/// Deterministic pseudo-random numbers (a 64-bit LCG), so failures reproduce.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

// ---- schema and migrations ----

#[test]
fn migrations_create_the_schema_in_a_fresh_folder() {
    let dir = TempDir::new("fresh");
    let nested = StoreConfig::new(dir.path().join("a").join("b"));
    let (store, _done, initial) = open_ok(&nested);
    assert!(initial.heads.is_empty());
    drop(store);
    let conn = Connection::open(nested.dir.join(DB_FILE)).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, schema::MIGRATIONS.len() as i64);
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal", "journal mode is persistent in the file");
    for table in ["users", "messages", "inbox"] {
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
                [table],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1, "table {table}");
    }
}

#[test]
fn migrations_are_idempotent_on_reopen() {
    let dir = TempDir::new("reopen-schema");
    let (store, done, _) = open_ok(&config(&dir));
    send(&store, &done, "alice", "bob", "c1");
    drop(store);
    for _ in 0..3 {
        let (store, _done, initial) = open_ok(&config(&dir));
        assert_eq!(user_version(&dir), schema::MIGRATIONS.len() as i64);
        assert_eq!(initial.heads.get("bob"), Some(&1));
        drop(store);
    }
    assert_eq!(count(&dir, "messages"), 1);
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = TempDir::new("too-new");
    drop(open_ok(&config(&dir)));
    side(&dir).pragma_update(None, "user_version", 999).unwrap();
    let err = open(&config(&dir), noop()).unwrap_err();
    assert_eq!(
        err,
        StoreError::SchemaTooNew {
            found: 999,
            known: schema::MIGRATIONS.len()
        }
    );
}

#[test]
fn a_second_open_of_the_same_folder_is_refused_until_the_first_closes() {
    let dir = TempDir::new("lock");
    let (store, _done, _) = open_ok(&config(&dir));
    assert_eq!(open(&config(&dir), noop()).unwrap_err(), StoreError::Locked);
    drop(store);
    drop(open_ok(&config(&dir)));
}

// ---- send ----

#[test]
fn send_stores_one_message_and_an_entry_for_each_side() {
    let dir = TempDir::new("send");
    let (store, done, _) = open_ok(&config(&dir));
    submit(&store, send_job(7, "bob", "alice", "c1", "hi"));
    let (tag, sent) = recv_sent(&done);
    assert_eq!(tag, 7);
    assert_eq!(
        sent,
        Sent {
            mid: sent.mid,
            conv: "dm:alice:bob".into(),
            ts: 1_700_000_000_007,
            sender_seq: 1,
            duplicate: false,
            deliveries: vec![("bob".into(), 1), ("alice".into(), 1)],
            from: "bob".into(),
            cid: "c1".into(),
            body: "hi".into(),
            kind: "text".into(),
        }
    );
    drop(store);
    assert_eq!(count(&dir, "messages"), 1);
    assert_eq!(count(&dir, "inbox"), 2);
    let heads: Vec<(String, i64)> = side(&dir)
        .prepare("SELECT name, head FROM users ORDER BY name")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(heads, [("alice".into(), 1), ("bob".into(), 1)]);
}

#[test]
fn seqs_are_gap_free_per_user_across_many_sends_and_batches() {
    let dir = TempDir::new("gap-free");
    let mut cfg = config(&dir);
    cfg.max_batch = 7;
    let (store, done, _) = open_ok(&cfg);
    let users = ["u0", "u1", "u2", "u3", "u4"];
    let mut rng = Lcg(42);
    let total = 3000;
    for tag in 0..total {
        let from = users[rng.next(users.len())];
        let to = users[rng.next(users.len())];
        submit(&store, send_job(tag, from, to, &format!("c{tag}"), "x"));
    }
    let mut expected: HashMap<String, u64> = HashMap::new();
    let mut delivered: HashMap<String, Vec<u64>> = HashMap::new();
    for _ in 0..total {
        let (_, sent) = recv_sent(&done);
        for (user, seq) in sent.deliveries {
            let next = expected.entry(user.clone()).or_insert(0);
            *next += 1;
            assert_eq!(seq, *next, "{user}: seqs come in commit order with no gap");
            delivered.entry(user).or_default().push(seq);
        }
    }
    let stats = store.stats();
    assert!(stats.batches >= total.div_ceil(7), "max_batch is honoured");
    for user in users {
        let head = expected.get(user).copied().unwrap_or(0);
        let page = page(&store, &done, user, 0, 10_000);
        assert_eq!(page.head, head);
        assert_eq!(seqs(&page), (1..=head).collect::<Vec<_>>());
    }
    drop(store);
    let (_store, _done, initial) = open_ok(&cfg);
    for (user, head) in expected {
        assert_eq!(initial.heads.get(&user), Some(&head), "{user}");
    }
}

#[test]
fn a_note_to_self_is_one_entry() {
    let dir = TempDir::new("self");
    let (store, done, _) = open_ok(&config(&dir));
    let sent = send(&store, &done, "carol", "carol", "n1");
    assert_eq!(sent.conv, "dm:carol:carol");
    assert_eq!(sent.deliveries, [("carol".to_string(), 1)]);
    let sent = send(&store, &done, "carol", "dave", "n2");
    assert_eq!(sent.deliveries, [("carol".into(), 2), ("dave".into(), 1)]);
    let page = page(&store, &done, "carol", 0, 10);
    assert_eq!(seqs(&page), [1, 2]);
    assert_eq!(page.head, 2);
    drop(store);
    assert_eq!(count(&dir, "inbox"), 3);
}

#[test]
fn a_resent_cid_returns_the_original_and_stores_nothing() {
    let dir = TempDir::new("dup");
    let (store, done, _) = open_ok(&config(&dir));
    let first = send(&store, &done, "alice", "bob", "same");
    send(&store, &done, "bob", "alice", "other");
    // Same cid, different body, recipient and ts: the original still answers.
    submit(&store, send_job(99, "alice", "carol", "same", "changed"));
    let (_, again) = recv_sent(&done);
    assert!(again.duplicate);
    assert_eq!(again.mid, first.mid);
    assert_eq!(again.conv, "dm:alice:bob");
    assert_eq!(again.sender_seq, first.sender_seq);
    assert_eq!(again.ts, first.ts);
    assert_eq!(again.body, first.body);
    assert_eq!(again.kind, first.kind);
    assert_eq!(again.cid, "same");
    assert_eq!(again.from, "alice");
    assert!(again.deliveries.is_empty());
    // The same cid from another sender is another message.
    let other = send(&store, &done, "bob", "alice", "same");
    assert!(!other.duplicate);
    drop(store);
    assert_eq!(count(&dir, "messages"), 3);
    assert_eq!(count(&dir, "inbox"), 6);
    assert_eq!(
        count(&dir, "users"),
        2,
        "the duplicate's recipient was never created"
    );
    let (_s, _d, initial) = open_ok(&config(&dir));
    assert_eq!(initial.heads["alice"], 3);
    assert_eq!(initial.heads["bob"], 3);
}

#[test]
fn a_duplicate_inside_the_same_batch_returns_the_first() {
    let dir = TempDir::new("dup-batch");
    let (store, done, gate) = open_held(&config(&dir));
    submit(&store, send_job(1, "alice", "bob", "c", "one"));
    submit(&store, send_job(2, "alice", "bob", "c", "two"));
    submit(&store, send_job(3, "alice", "bob", "d", "three"));
    gate.send(()).unwrap();
    let (_, a) = recv_sent(&done);
    let (_, b) = recv_sent(&done);
    let (_, c) = recv_sent(&done);
    assert_eq!(store.stats().batches, 1, "all three in one transaction");
    assert!(!a.duplicate && b.duplicate && !c.duplicate);
    assert_eq!((b.mid, b.sender_seq, b.body.as_str()), (a.mid, 1, "one"));
    assert_eq!(c.sender_seq, 2, "the duplicate took no seq");
    drop(store);
    assert_eq!(count(&dir, "messages"), 2);
    assert_eq!(count(&dir, "inbox"), 4);
}

#[test]
fn an_unstorable_job_fails_alone_and_its_batch_commits() {
    let dir = TempDir::new("invalid");
    let (store, done, gate) = open_held(&config(&dir));
    submit(&store, send_job(1, "alice", "bob", "a", "x"));
    let mut bad = send_job(2, "alice", "bob", "b", "x");
    if let Job::Send { ts, .. } = &mut bad {
        *ts = u64::MAX;
    }
    submit(&store, bad);
    submit(&store, send_job(3, "alice", "", "c", "x"));
    submit(&store, send_job(4, "alice", "bob", "d", "x"));
    gate.send(()).unwrap();
    assert_eq!(recv_sent(&done).1.sender_seq, 1);
    for want in ["ts out of range", "empty user id"] {
        match recv(&done) {
            Completion::Sent { result, .. } => assert_eq!(result, Err(StoreError::Invalid(want))),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(recv_sent(&done).1.sender_seq, 2);
    let stats = store.stats();
    assert_eq!(
        (stats.batches, stats.rollbacks, stats.jobs, stats.failed),
        (1, 0, 2, 2)
    );
}

#[test]
fn a_failed_batch_is_rolled_back_and_retried_job_by_job() {
    let dir = TempDir::new("rollback");
    let (store, done, gate) = open_held(&config(&dir));
    assert_eq!(send_seq(&store, &done, &gate, "alice", "bob"), 1);
    // A trigger stands in for a fault only one job meets (SQLite aborts the statement).
    side(&dir)
        .execute_batch(
            "CREATE TRIGGER boom BEFORE INSERT ON messages WHEN NEW.body = 'boom'
             BEGIN SELECT RAISE(ABORT, 'boom'); END;",
        )
        .unwrap();
    submit(&store, send_job(1, "alice", "bob", "a", "fine"));
    submit(&store, send_job(2, "alice", "zed", "b", "boom")); // new user, rolled back
    submit(&store, send_job(3, "alice", "yan", "c", "fine")); // new user, kept
    submit(&store, send_job(4, "alice", "bob", "d", "fine"));
    gate.send(()).unwrap();
    let (tag, one) = recv_sent(&done);
    assert_eq!((tag, one.sender_seq, one.deliveries[1].1), (1, 2, 2));
    match recv(&done) {
        Completion::Sent {
            tag: 2,
            result: Err(StoreError::Sqlite { message, .. }),
        } => {
            assert!(message.contains("boom"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    let (_, three) = recv_sent(&done);
    assert_eq!(three.deliveries, [("alice".into(), 3), ("yan".into(), 1)]);
    let (_, four) = recv_sent(&done);
    assert_eq!(four.deliveries, [("alice".into(), 4), ("bob".into(), 3)]);
    let stats = store.stats();
    assert_eq!(stats.rollbacks, 2, "the batch, then the poison job alone");
    assert_eq!(stats.failed, 1);
    // The in-memory heads were restored: the next seqs follow on with no gap.
    side(&dir).execute_batch("DROP TRIGGER boom").unwrap();
    gate.send(()).unwrap();
    let again = send(&store, &done, "alice", "zed", "b2");
    assert_eq!(again.deliveries, [("alice".into(), 5), ("zed".into(), 1)]);
    drop(gate);
    drop(store);
    let (_s, _d, initial) = open_ok(&config(&dir));
    assert_eq!(initial.heads["alice"], 5);
    assert_eq!(initial.heads["bob"], 3);
    assert_eq!(initial.heads["yan"], 1);
    assert_eq!(initial.heads["zed"], 1);
    assert_eq!(count(&dir, "messages"), 5);
}

/// One send through a gated writer; returns the sender's seq.
fn send_seq(
    store: &Store,
    done: &Receiver<Completion>,
    gate: &Sender<()>,
    from: &str,
    to: &str,
) -> u64 {
    submit(store, send_job(0, from, to, "first", "x"));
    gate.send(()).unwrap();
    recv_sent(done).1.sender_seq
}

// ---- page ----

#[test]
fn page_returns_entries_in_order_after_a_cursor_up_to_a_limit_with_the_head() {
    let dir = TempDir::new("page");
    let (store, done, _) = open_ok(&config(&dir));
    let mut mids = Vec::new();
    for i in 0..10 {
        let (from, to) = if i % 2 == 0 {
            ("alice", "bob")
        } else {
            ("bob", "alice")
        };
        mids.push(send(&store, &done, from, to, &format!("c{i}")).mid);
    }
    let first = page(&store, &done, "bob", 0, 4);
    assert_eq!(seqs(&first), [1, 2, 3, 4]);
    assert_eq!(first.head, 10);
    assert_eq!(
        first.entries[0],
        Entry {
            seq: 1,
            mid: mids[0],
            conv: "dm:alice:bob".into(),
            from: "alice".into(),
            cid: "c0".into(),
            body: "body of c0".into(),
            kind: "text".into(),
            ts: 1_700_000_000_000,
            ref_mid: None,
            recalled: false,
        }
    );
    assert_eq!(first.entries[1].from, "bob");
    let rest = page(&store, &done, "bob", 4, 100);
    assert_eq!(seqs(&rest), [5, 6, 7, 8, 9, 10]);
    assert_eq!(
        rest.entries.iter().map(|e| e.mid).collect::<Vec<_>>(),
        mids[4..]
    );
    let none = page(&store, &done, "bob", 10, 100);
    assert!(none.entries.is_empty());
    assert_eq!(none.head, 10);
    assert!(page(&store, &done, "bob", u64::MAX, 100).entries.is_empty());
    assert!(page(&store, &done, "bob", 0, 0).entries.is_empty());
    let stranger = page(&store, &done, "nobody", 0, 100);
    assert_eq!(
        stranger,
        Page {
            entries: vec![],
            head: 0
        }
    );
    // The page completion carries the request back.
    submit(&store, page_job(5, "alice", 3, 2));
    match recv(&done) {
        Completion::Page {
            tag,
            user,
            after,
            result,
        } => {
            assert_eq!((tag, user.as_str(), after), (5, "alice", 3));
            assert_eq!(seqs(&result.unwrap()), [4, 5]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.stats().reads, 7);
}

#[test]
fn a_page_taken_while_the_writer_commits_is_a_consistent_snapshot() {
    let dir = TempDir::new("snapshot");
    let mut cfg = config(&dir);
    cfg.max_batch = 16;
    let (store, done, _) = open_ok(&cfg);
    let total: u64 = 4000;
    for tag in 0..total {
        submit(
            &store,
            send_job(tag, "alice", "bob", &format!("c{tag}"), "x"),
        );
        if tag % 100 == 0 {
            submit(&store, page_job(1_000_000 + tag, "bob", tag / 3, 50));
        }
    }
    let mut pages = 0;
    let mut sent = 0;
    while sent < total || pages < 40 {
        match recv(&done) {
            Completion::Sent { result, .. } => {
                result.unwrap();
                sent += 1;
            }
            Completion::Page { after, result, .. } => {
                let page = result.unwrap();
                pages += 1;
                let expect: Vec<u64> = (after + 1..).take(page.entries.len()).collect();
                assert_eq!(seqs(&page), expect, "contiguous from the cursor");
                let last = page.entries.last().map_or(after, |e| e.seq);
                assert!(last <= page.head.max(after));
                if page.entries.len() < 50 {
                    assert_eq!(last, page.head.max(after), "a short page ends at the head");
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

// ---- durability, batching, ordering, shutdown ----

#[test]
fn everything_survives_a_drop_and_reopen() {
    let dir = TempDir::new("durable");
    let (store, done, _) = open_ok(&config(&dir));
    let mut last_mid = 0;
    for i in 0..50 {
        last_mid = send(&store, &done, "alice", "bob", &format!("c{i}")).mid;
    }
    let before = page(&store, &done, "bob", 0, 1000);
    drop(store);
    let (store, done, initial) = open_ok(&config(&dir));
    assert_eq!(initial.heads["alice"], 50);
    assert_eq!(initial.heads["bob"], 50);
    assert_eq!(page(&store, &done, "bob", 0, 1000), before);
    let next = send(&store, &done, "bob", "alice", "after-restart");
    assert_eq!(next.deliveries, [("bob".into(), 51), ("alice".into(), 51)]);
    assert!(next.mid > last_mid, "mids keep growing");
    let resend = send(&store, &done, "alice", "bob", "c0");
    assert!(resend.duplicate, "the cid index survives too");
}

#[test]
fn jobs_submitted_at_once_commit_in_few_transactions() {
    let dir = TempDir::new("group-commit");
    let (store, done, gate) = open_held(&config(&dir));
    for tag in 0..1000 {
        submit(
            &store,
            send_job(tag, "alice", "bob", &format!("c{tag}"), "x"),
        );
    }
    gate.send(()).unwrap();
    for _ in 0..1000 {
        recv_sent(&done);
    }
    let stats = store.stats();
    assert_eq!(stats.batches, 1, "one transaction for everything queued");
    assert_eq!(stats.jobs, 1000);
    assert_eq!(stats.batch_sizes.buckets[Histogram::bucket(1000)], 1);
    assert_eq!(stats.commit_us.count(), 1);
    drop(gate);

    // Ungated, as in the server: the writer finds the queue refilled while it commits.
    for tag in 0..20_000 {
        submit(
            &store,
            send_job(tag, "bob", "alice", &format!("d{tag}"), "x"),
        );
    }
    for _ in 0..20_000 {
        recv_sent(&done);
    }
    let stats = store.stats();
    assert_eq!(stats.jobs, 21_000);
    assert!(
        stats.batches < 21_000 / 4,
        "batches {} for 21000 jobs",
        stats.batches
    );
    assert_eq!(stats.batch_sizes.count(), stats.batches);
    assert!(
        stats.batch_sizes.quantile(1.0) <= 2047,
        "max_batch 1024 is honoured"
    );
    assert_eq!((stats.writer_queue, stats.completion_queue), (0, 0));
}

#[test]
fn completions_arrive_in_submission_order_and_after_their_commit() {
    let dir = TempDir::new("order");
    let mut cfg = config(&dir);
    cfg.max_batch = 32;
    let (store, done, _) = open_ok(&cfg);
    let check = side(&dir);
    let mut rng = Lcg(7);
    let users = ["a", "b", "c"];
    for tag in 0..5000 {
        let (from, to) = (users[rng.next(3)], users[rng.next(3)]);
        submit(&store, send_job(tag, from, to, &format!("c{tag}"), "x"));
    }
    for want in 0..5000 {
        let (tag, sent) = recv_sent(&done);
        assert_eq!(tag, want);
        if want % 250 == 0 {
            // Another connection already sees it: the completion came after COMMIT.
            let found: i64 = check
                .query_row(
                    "SELECT count(*) FROM messages WHERE mid = ?1",
                    [sent.mid as i64],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(found, 1);
        }
    }
}

#[test]
fn notify_is_called_after_completions_are_pushed() {
    let dir = TempDir::new("notify");
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let (store, done) = open(
        &config(&dir),
        Arc::new(move || {
            seen.fetch_add(1, Ordering::SeqCst);
        }),
    )
    .unwrap();
    submit(&store, send_job(1, "alice", "bob", "c", "x"));
    recv_sent(&done);
    // The writer pushes, then notifies: give it a moment to get from one to the other.
    let deadline = Instant::now() + TIMEOUT;
    while calls.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "once per batch");
    page(&store, &done, "bob", 0, 10);
    drop(store);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn shutdown_commits_and_answers_everything_accepted_before_it() {
    let dir = TempDir::new("shutdown");
    let mut cfg = config(&dir);
    // A completion channel far smaller than the work: the writer will be blocked on it
    // when shutdown starts, and shutdown must drain rather than deadlock.
    cfg.queue = 10_000;
    let (store, done, _) = open_ok(&cfg);
    let mut accepted = 0u64;
    for tag in 0..10_000 {
        submit(
            &store,
            send_job(tag, "alice", "bob", &format!("c{tag}"), "x"),
        );
        accepted += 1;
        if tag % 1000 == 0 {
            submit(&store, page_job(tag, "bob", 0, 10));
            accepted += 1;
        }
    }
    // Take a few, as a reactor would have, then shut down with the rest in flight.
    let mut got: Vec<Completion> = (0..5).map(|_| recv(&done)).collect();
    got.extend(store.shutdown());
    assert!(
        done.try_recv().is_err(),
        "nothing left behind in the caller's channel"
    );
    assert_eq!(got.len() as u64, accepted);
    let sends: Vec<u64> = got
        .iter()
        .filter_map(|c| match c {
            Completion::Sent { tag, result } => {
                assert!(result.is_ok());
                Some(*tag)
            }
            _ => None,
        })
        .collect();
    assert_eq!(sends, (0..10_000).collect::<Vec<_>>());
    assert_eq!(count(&dir, "messages"), 10_000);
    assert_eq!(count(&dir, "inbox"), 20_000);
}

#[test]
fn a_full_queue_gives_the_job_back() {
    let dir = TempDir::new("full");
    let mut cfg = config(&dir);
    cfg.queue = 4;
    let (store, done, gate) = open_held(&cfg);
    submit(&store, send_job(0, "alice", "bob", "c0", "x"));
    // Wait until the writer holds job 0 (it then waits on the gate), leaving the queue empty.
    let deadline = Instant::now() + TIMEOUT;
    while store.stats().writer_queue > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    for tag in 1..=4 {
        submit(
            &store,
            send_job(tag, "alice", "bob", &format!("c{tag}"), "x"),
        );
    }
    assert_eq!(store.stats().writer_queue, 4);
    let extra = send_job(5, "alice", "bob", "c5", "x");
    assert_eq!(store.submit(extra.clone()), Err(extra));
    // Reads have their own queue, unaffected by a full writer queue.
    submit(&store, page_job(9, "bob", 0, 10));
    assert!(matches!(recv(&done), Completion::Page { tag: 9, .. }));
    gate.send(()).unwrap();
    for want in 0..=4 {
        assert_eq!(recv_sent(&done).0, want);
    }
}

#[test]
fn checkpoints_copy_the_wal_back_while_the_store_runs() {
    let dir = TempDir::new("checkpoint");
    let (store, done, _) = open_ok(&config(&dir));
    let db_size = || std::fs::metadata(dir.path().join(DB_FILE)).map_or(0, |m| m.len());
    let fresh = db_size();
    for tag in 0..2000 {
        submit(
            &store,
            send_job(tag, "alice", "bob", &format!("c{tag}"), "x"),
        );
    }
    for _ in 0..2000 {
        recv_sent(&done);
    }
    // The checkpointer copies, then leaves the last step to the writer's next batch.
    let deadline = Instant::now() + TIMEOUT;
    let mut tag = 2000;
    while store.stats().checkpoint_finish_us.count() == 0 && Instant::now() < deadline {
        send(&store, &done, "alice", "bob", &format!("c{tag}"));
        tag += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    let stats = store.stats();
    assert!(stats.checkpoints >= 2, "{stats:?}");
    assert_eq!(stats.checkpoint_failures, 0);
    assert!(
        stats.checkpoint_finish_us.count() >= 1,
        "the writer finished a checkpoint"
    );
    assert!(
        db_size() > fresh,
        "pages reached the database file before shutdown"
    );
}

// ---- small pieces ----

#[test]
fn the_handle_and_messages_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Store>();
    send_sync::<Job>();
    send_sync::<Completion>();
}

#[test]
fn dm_conv_sorts_the_two_ids() {
    assert_eq!(dm_conv("bob", "alice"), "dm:alice:bob");
    assert_eq!(dm_conv("alice", "bob"), "dm:alice:bob");
    assert_eq!(dm_conv("x", "x"), "dm:x:x");
}

#[test]
fn synchronous_parses_the_flag_values() {
    assert_eq!("normal".parse(), Ok(Synchronous::Normal));
    assert_eq!("full".parse(), Ok(Synchronous::Full));
    assert!("FULL".parse::<Synchronous>().is_err());
    assert_eq!(Synchronous::Full.to_string(), "full");
}

#[test]
fn full_synchronous_opens_and_commits() {
    let dir = TempDir::new("full-sync");
    let mut cfg = config(&dir);
    cfg.synchronous = Synchronous::Full;
    let (store, done, _) = open_ok(&cfg);
    assert_eq!(send(&store, &done, "a", "b", "c").sender_seq, 1);
}

#[test]
fn histogram_buckets_are_powers_of_two() {
    assert_eq!(Histogram::bucket(0), 0);
    assert_eq!(Histogram::bucket(1), 0);
    assert_eq!(Histogram::bucket(2), 1);
    assert_eq!(Histogram::bucket(3), 1);
    assert_eq!(Histogram::bucket(4), 2);
    assert_eq!(Histogram::bucket(1023), 9);
    assert_eq!(Histogram::bucket(1024), 10);
    assert_eq!(Histogram::bucket(u64::MAX), BUCKETS - 1);
    let mut h = Histogram::default();
    assert_eq!(h.quantile(0.5), 0);
    assert_eq!(h.to_string(), "-");
    h.buckets[0] = 1;
    h.buckets[3] = 98;
    h.buckets[10] = 1;
    assert_eq!(h.count(), 100);
    assert_eq!(h.quantile(0.0), 1);
    assert_eq!(h.quantile(0.5), 15);
    assert_eq!(h.quantile(0.99), 15);
    assert_eq!(h.quantile(1.0), 2047);
    assert_eq!(h.to_string(), "0-1:1 8-15:98 1024-2047:1");
}

// ---- throughput (run with `cargo test --release --lib store -- --ignored --nocapture`) ----

fn throughput(synchronous: Synchronous) {
    throughput_of(synchronous, "random pairs", |rng| {
        (rng.next(1000), rng.next(1000))
    });
}

/// 100,000 sends among 1,000 users, each pair picked by `pair` (user indexes).
fn throughput_of(
    synchronous: Synchronous,
    what: &str,
    mut pair: impl FnMut(&mut Lcg) -> (usize, usize),
) {
    let dir = TempDir::new("throughput");
    let mut cfg = config(&dir);
    cfg.synchronous = synchronous;
    cfg.queue = 200_000;
    let (store, done, _) = open_ok(&cfg);
    let users: Vec<String> = (0..1000).map(|i| format!("user{i}")).collect();
    let n = 100_000u64;
    let mut rng = Lcg(1);
    let jobs: Vec<Job> = (0..n)
        .map(|tag| {
            let (from, to) = pair(&mut rng);
            Job::Send {
                tag,
                sender: users[from].clone(),
                cid: format!("c{tag}"),
                to: users[to].clone(),
                body: "hello, this is a typical short chat message".into(),
                kind: "text".into(),
                ts: 1_700_000_000_000 + tag,
            }
        })
        .collect();
    let started = Instant::now();
    for job in jobs {
        submit(&store, job);
    }
    for _ in 0..n {
        recv_sent(&done);
    }
    let took = started.elapsed();
    let stats = store.stats();
    println!(
        "synchronous={synchronous}, {what}: {n} sends in {:.3} s = {:.0}/s; {} batches (sizes {}); commit p50 <= {} us, p99 <= {} us (us: {}); {} checkpoints",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        stats.batches,
        stats.batch_sizes,
        stats.commit_us.quantile(0.5),
        stats.commit_us.quantile(0.99),
        stats.commit_us,
        stats.checkpoints,
    );
}

/// Every user writes to the same five peers: after the first messages every conversation
/// is a running one, as in a real chat, rather than almost every message opening a new one.
#[test]
#[ignore = "throughput figure, run in release"]
fn throughput_100k_sends_steady_pairs_normal() {
    throughput_of(Synchronous::Normal, "steady pairs", |rng| {
        let from = rng.next(1000);
        (from, (from + 1 + rng.next(5)) % 1000)
    });
}

/// Sends to one 1,000-member group: a million inbox entries from 1,000 messages.
#[test]
#[ignore = "throughput figure, run in release"]
fn throughput_group_of_1000_normal() {
    let dir = TempDir::new("throughput-group");
    let mut cfg = config(&dir);
    cfg.queue = 10_000;
    let (store, done, _) = open_ok(&cfg);
    let users: Vec<String> = (0..1000).map(|i| format!("user{i}")).collect();
    submit(
        &store,
        Job::GroupCreate {
            tag: 0,
            owner: users[0].clone(),
            name: "everyone".into(),
            members: users.clone(),
            ts: 1_700_000_000_000,
            max_members: 1000,
        },
    );
    assert!(matches!(
        recv(&done),
        Completion::Group { result: Ok(_), .. }
    ));
    let n = 1000u64;
    let mut rng = Lcg(9);
    let started = Instant::now();
    for tag in 0..n {
        let from = &users[rng.next(users.len())];
        submit(
            &store,
            group_send_job(tag, from, 1, &format!("c{tag}"), "hello, everyone"),
        );
    }
    for _ in 0..n {
        assert_eq!(recv_sent(&done).1.deliveries.len(), 1000);
    }
    let took = started.elapsed();
    let stats = store.stats();
    println!(
        "group of 1000: {n} sends in {:.3} s = {:.0}/s, {:.0} inbox entries/s; {} batches; commit p50 <= {} us, p99 <= {} us; {} checkpoints",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        (n * 1000) as f64 / took.as_secs_f64(),
        stats.batches,
        stats.commit_us.quantile(0.5),
        stats.commit_us.quantile(0.99),
        stats.checkpoints,
    );
}

#[test]
#[ignore = "throughput figure, run in release"]
fn throughput_100k_sends_normal() {
    throughput(Synchronous::Normal);
}

#[test]
#[ignore = "throughput figure, run in release"]
fn throughput_100k_sends_full() {
    throughput(Synchronous::Full);
}

/// Offers `rate` sends a second for `secs` seconds from another thread, in small bursts as
/// a reactor's wake-ups would submit them, and reports submit → completion latency.
fn paced(synchronous: Synchronous, rate: u64, secs: u64) {
    paced_of(synchronous, rate, secs, |rng| {
        (rng.next(1000), rng.next(1000))
    });
}

/// [`paced`], with each sender and recipient picked by `pair` (indexes of 1,000 users).
fn paced_of(
    synchronous: Synchronous,
    rate: u64,
    secs: u64,
    pair: impl Fn(&mut Lcg) -> (usize, usize) + Send + 'static,
) {
    let dir = TempDir::new("paced");
    let mut cfg = config(&dir);
    cfg.synchronous = synchronous;
    let (store, done, _) = open_ok(&cfg);
    let store = Arc::new(store);
    let users: Arc<Vec<String>> = Arc::new((0..1000).map(|i| format!("user{i}")).collect());
    let start = Instant::now();
    let n = rate * secs;
    let submitter = {
        let (store, users) = (store.clone(), users.clone());
        std::thread::spawn(move || {
            let mut rng = Lcg(3);
            let mut refused = 0u64;
            for i in 0..n {
                // Job i is due at i / rate seconds; sleep in 0.5 ms steps until then.
                let due = Duration::from_nanos(i * 1_000_000_000 / rate);
                while start.elapsed() < due {
                    std::thread::sleep(Duration::from_micros(500));
                }
                let (from, to) = pair(&mut rng);
                let job = Job::Send {
                    // The tag carries the submit time, so no shared table is needed.
                    tag: start.elapsed().as_nanos() as u64,
                    sender: users[from].clone(),
                    cid: format!("c{i}"),
                    to: users[to].clone(),
                    body: "hello, this is a typical short chat message".into(),
                    kind: "text".into(),
                    ts: 1_700_000_000_000 + i,
                };
                if store.submit(job).is_err() {
                    refused += 1;
                }
            }
            refused
        })
    };
    let mut latencies_us = Vec::with_capacity(n as usize);
    while (latencies_us.len() as u64) < n {
        match done.recv_timeout(Duration::from_secs(2)) {
            Ok(c) => latencies_us.push((start.elapsed().as_nanos() as u64 - c.tag()) / 1000),
            Err(_) => break,
        }
    }
    let refused = submitter.join().unwrap();
    latencies_us.sort_unstable();
    let q = |p: f64| latencies_us[((latencies_us.len() - 1) as f64 * p) as usize];
    let stats = store.stats();
    println!(
        "synchronous={synchronous} offered {rate}/s for {secs} s: {} done, {refused} refused; \
         submit->completion p50 {} us, p99 {} us, p999 {} us, max {} us; \
         batches {} (sizes {}); commit us {}; {} checkpoints, writer's part us {}",
        latencies_us.len(),
        q(0.5),
        q(0.99),
        q(0.999),
        q(1.0),
        stats.batches,
        stats.batch_sizes,
        stats.commit_us,
        stats.checkpoints,
        stats.checkpoint_finish_us,
    );
}

#[test]
#[ignore = "latency figure, run in release"]
fn paced_20k_per_s_normal() {
    paced(Synchronous::Normal, 20_000, 5);
}

/// [`paced_20k_per_s_normal`] with running conversations: every user writes to the same
/// five peers, rather than almost every message opening a new conversation.
#[test]
#[ignore = "latency figure, run in release"]
fn paced_20k_per_s_steady_pairs_normal() {
    paced_of(Synchronous::Normal, 20_000, 5, |rng| {
        let from = rng.next(1000);
        (from, (from + 1 + rng.next(5)) % 1000)
    });
}

#[test]
#[ignore = "latency figure, run in release"]
fn paced_20k_per_s_full() {
    paced(Synchronous::Full, 20_000, 5);
}

#[test]
#[ignore = "latency figure, run in release"]
fn paced_50k_per_s_normal() {
    paced(Synchronous::Normal, 50_000, 5);
}

#[test]
#[ignore = "latency figure, run in release"]
fn paced_50k_per_s_full() {
    paced(Synchronous::Full, 50_000, 5);
}

#[test]
fn a_page_stops_once_its_bodies_reach_the_byte_budget_but_holds_at_least_one_entry() {
    let dir = TempDir::new("page-bytes");
    let (store, done, _) = open_ok(&config(&dir));
    for i in 0..10 {
        submit(
            &store,
            send_job(i, "a", "b", &format!("c{i}"), &"x".repeat(100)),
        );
        recv_sent(&done);
    }
    let read = |after: u64, max_bytes: u64| {
        submit(
            &store,
            Job::Page {
                tag: 1,
                user: "b".into(),
                after,
                limit: 1000,
                max_bytes,
            },
        );
        recv_page(&done)
    };
    let seqs = |page: &Page| page.entries.iter().map(|e| e.seq).collect::<Vec<_>>();
    // Stops with the entry that reaches the budget.
    assert_eq!(seqs(&read(0, 250)), [1, 2, 3]);
    assert_eq!(seqs(&read(0, 300)), [1, 2, 3]);
    // A body larger than the whole budget still comes, alone.
    assert_eq!(seqs(&read(4, 1)), [5]);
    let all = read(0, u64::MAX);
    assert_eq!(all.entries.len(), 10);
    assert_eq!(all.head, 10);
}

// ---- groups, recall, read cursors, conversations, history ----

/// Timestamp of the jobs below that do not care about time.
const TS: u64 = 1_700_000_000_000;
/// The recall window the hub uses by default.
const WINDOW: u64 = 120_000;

/// A store and its completions, with one method per job kind that submits it and waits for
/// its answer.
struct Im {
    store: Store,
    done: Receiver<Completion>,
}

impl Im {
    fn open(dir: &TempDir) -> Im {
        let (store, done, _) = open_ok(&config(dir));
        Im { store, done }
    }

    fn run(&self, job: Job) -> Completion {
        submit(&self.store, job);
        recv(&self.done)
    }

    fn send(&self, from: &str, to: &str, cid: &str) -> Sent {
        send(&self.store, &self.done, from, to, cid)
    }

    fn page(&self, user: &str, after: u64) -> Page {
        page(&self.store, &self.done, user, after, 10_000)
    }

    fn create(&self, owner: &str, name: &str, members: &[&str]) -> Result<GroupChange, StoreError> {
        group_result(self.run(create_job(owner, name, members, 100)))
    }

    fn add(&self, user: &str, gid: u64, members: &[&str]) -> Result<GroupChange, StoreError> {
        group_result(self.run(Job::GroupAdd {
            tag: 0,
            user: user.into(),
            gid,
            members: strings(members),
            ts: TS,
            max_members: 100,
        }))
    }

    fn leave(&self, user: &str, gid: u64) -> Result<GroupChange, StoreError> {
        group_result(self.run(Job::GroupLeave {
            tag: 0,
            user: user.into(),
            gid,
            ts: TS,
        }))
    }

    fn group_send(&self, from: &str, gid: u64, cid: &str) -> Result<Sent, StoreError> {
        match self.run(group_send_job(0, from, gid, cid, &format!("body of {cid}"))) {
            Completion::Sent { result, .. } => result,
            other => panic!("expected Sent, got {other:?}"),
        }
    }

    fn recall(&self, user: &str, mid: u64, now: u64) -> Result<Sent, StoreError> {
        match self.run(Job::Recall {
            tag: 0,
            user: user.into(),
            mid,
            now,
            window_ms: WINDOW,
        }) {
            Completion::Recalled { result, .. } => result,
            other => panic!("expected Recalled, got {other:?}"),
        }
    }

    fn read(&self, user: &str, conv: &str, mid: u64) -> Result<ReadMoved, StoreError> {
        match self.run(Job::MarkRead {
            tag: 0,
            user: user.into(),
            conv: conv.into(),
            mid,
        }) {
            Completion::Read { result, .. } => result,
            other => panic!("expected Read, got {other:?}"),
        }
    }

    fn convs(&self, user: &str, limit: u32) -> Vec<ConvSummary> {
        match self.run(Job::Convs {
            tag: 0,
            user: user.into(),
            limit,
        }) {
            Completion::Convs { result, .. } => result.expect("convs"),
            other => panic!("expected Convs, got {other:?}"),
        }
    }

    fn history(
        &self,
        user: &str,
        conv: &str,
        before: Option<u64>,
        limit: u32,
    ) -> Result<History, StoreError> {
        match self.run(Job::History {
            tag: 0,
            user: user.into(),
            conv: conv.into(),
            before,
            limit,
            max_bytes: 1 << 20,
        }) {
            Completion::History { result, .. } => result,
            other => panic!("expected History, got {other:?}"),
        }
    }

    fn group(&self, user: &str, gid: u64) -> Result<GroupInfo, StoreError> {
        match self.run(Job::Members {
            tag: 0,
            user: user.into(),
            gid,
        }) {
            Completion::Members { result, .. } => result,
            other => panic!("expected Members, got {other:?}"),
        }
    }

    fn members(&self, user: &str, gid: u64) -> Result<Vec<String>, StoreError> {
        self.group(user, gid).map(|g| g.members)
    }

    fn head(&self, user: &str) -> u64 {
        self.page(user, 0).head
    }

    fn try_send(&self, from: &str, to: &str, cid: &str) -> Result<Sent, StoreError> {
        match self.run(send_job(0, from, to, cid, &format!("body of {cid}"))) {
            Completion::Sent { result, .. } => result,
            other => panic!("expected Sent, got {other:?}"),
        }
    }

    fn block(&self, user: &str, peer: &str, block: bool) -> Result<(), StoreError> {
        match self.run(Job::Block {
            tag: 0,
            user: user.into(),
            peer: peer.into(),
            block,
            ts: TS,
        }) {
            Completion::Block { result, .. } => result,
            other => panic!("expected Block, got {other:?}"),
        }
    }

    fn blocked(&self, user: &str) -> Vec<String> {
        match self.run(Job::Blocked {
            tag: 0,
            user: user.into(),
        }) {
            Completion::BlockList { result, .. } => result.expect("block list"),
            other => panic!("expected BlockList, got {other:?}"),
        }
    }

    fn reach(&self, user: &str, audience: Audience) -> Result<Reach, StoreError> {
        match self.run(Job::Reach {
            tag: 0,
            user: user.into(),
            audience,
        }) {
            Completion::Reach { result, .. } => result,
            other => panic!("expected Reach, got {other:?}"),
        }
    }

    fn reach_users(&self, user: &str, peers: &[&str]) -> Vec<String> {
        self.reach(user, Audience::Users(strings(peers)))
            .expect("reach")
            .reachable
    }

    fn hidden_users(&self, user: &str, peers: &[&str]) -> Vec<String> {
        self.reach(user, Audience::Users(strings(peers)))
            .expect("reach")
            .hidden
    }
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------
// Who may reach whom
// ---------------------------------------------------------------------------------------

#[test]
fn a_block_refuses_a_dm_either_way_keeps_resends_answered_and_lifts_with_unblock() {
    let dir = TempDir::new("block-dm");
    let im = Im::open(&dir);
    // A running conversation: the writer skips the block check for pairs it knows, so
    // the block must make it forget the pair.
    let first = im.send("ann", "bob", "a1");
    im.send("bob", "ann", "b1");
    im.block("bob", "ann", true).unwrap();
    let messages = count(&dir, "messages");
    let refused = Err(StoreError::Forbidden("cannot reach this user"));
    assert_eq!(im.try_send("ann", "bob", "a2"), refused, "the blocked user");
    assert_eq!(im.try_send("bob", "ann", "b2"), refused, "the blocker too");
    assert_eq!(count(&dir, "messages"), messages, "nothing stored");
    let again = im.try_send("ann", "bob", "a1").expect("a resend");
    assert!(again.duplicate);
    assert_eq!(again.mid, first.mid, "what went through before is answered");
    // Others are not affected; blocking twice changes nothing.
    im.send("ann", "cat", "a3");
    im.block("bob", "ann", true).unwrap();
    assert_eq!(im.blocked("bob"), ["ann"]);
    assert!(im.blocked("ann").is_empty(), "a block is the blocker's");

    im.block("bob", "ann", false).unwrap();
    im.block("bob", "ann", false).unwrap();
    assert!(im.blocked("bob").is_empty());
    assert!(!im.try_send("ann", "bob", "a4").unwrap().duplicate);
}

#[test]
fn a_block_inside_a_batch_stops_the_sends_after_it_even_for_a_pair_just_seen() {
    let dir = TempDir::new("block-batch");
    let (store, done, gate) = open_held(&config(&dir));
    submit(&store, send_job(1, "ann", "bob", "a1", "before"));
    submit(
        &store,
        Job::Block {
            tag: 2,
            user: "bob".into(),
            peer: "ann".into(),
            block: true,
            ts: TS,
        },
    );
    submit(&store, send_job(3, "ann", "bob", "a2", "after"));
    submit(&store, send_job(4, "bob", "ann", "b1", "after"));
    gate.send(()).unwrap();
    let results: Vec<Completion> = (0..4).map(|_| recv(&done)).collect();
    assert_eq!(store.stats().batches, 1, "one transaction");
    assert!(matches!(
        &results[0],
        Completion::Sent { result: Ok(_), .. }
    ));
    assert!(matches!(
        &results[1],
        Completion::Block { result: Ok(()), .. }
    ));
    for later in &results[2..] {
        assert!(
            matches!(
                later,
                Completion::Sent {
                    result: Err(StoreError::Forbidden(_)),
                    ..
                }
            ),
            "{later:?}"
        );
    }
    drop(store);
    assert_eq!(count(&dir, "messages"), 1);
}

#[test]
fn no_read_receipt_or_peer_cursor_crosses_a_block() {
    let dir = TempDir::new("block-receipts");
    let im = Im::open(&dir);
    let sent = im.send("ann", "bob", "hello");
    im.block("bob", "ann", true).unwrap();
    let moved = im.read("bob", &sent.conv, sent.mid).unwrap();
    assert!(moved.moved);
    assert_eq!(moved.peer, None, "ann gets no receipt");
    let ann = im.convs("ann", 10);
    assert_eq!(
        ann[0].peer_read_mid, None,
        "nor sees bob's cursor in her list"
    );
    im.block("bob", "ann", false).unwrap();
    assert_eq!(im.convs("ann", 10)[0].peer_read_mid, Some(sent.mid));
}

#[test]
fn a_block_holds_after_a_reopen_and_for_a_user_not_seen_before() {
    let dir = TempDir::new("block-reopen");
    {
        let im = Im::open(&dir);
        im.block("ann", "zed", true).unwrap();
        im.block("ann", "bob", true).unwrap();
    }
    let im = Im::open(&dir);
    assert_eq!(
        im.blocked("ann"),
        ["zed", "bob"],
        "oldest first, after a reopen"
    );
    assert_eq!(
        im.try_send("zed", "ann", "z1"),
        Err(StoreError::Forbidden("cannot reach this user"))
    );
    assert_eq!(
        im.block("ann", "ann", true),
        Err(StoreError::Invalid("a user cannot block themselves"))
    );
    im.block("nobody", "ghost", false).unwrap();
}

#[test]
fn nobody_is_put_in_a_group_across_a_block() {
    let dir = TempDir::new("block-groups");
    let im = Im::open(&dir);
    im.send("ann", "bob", "hello");
    im.block("bob", "ann", true).unwrap();
    let groups = count(&dir, "groups");
    let refused = Err(StoreError::Forbidden(
        "cannot add a user who cannot be reached",
    ));
    assert_eq!(im.create("ann", "t", &["cat", "bob"]).map(drop), refused);
    assert_eq!(
        im.create("bob", "t", &["ann"]).map(drop),
        refused,
        "nor the blocker"
    );
    assert_eq!(count(&dir, "groups"), groups, "nothing stored");
    let change = im.create("ann", "t", &["cat"]).unwrap();
    assert_eq!(im.add("ann", change.gid, &["bob"]).map(drop), refused);
    assert_eq!(im.members("ann", change.gid).unwrap(), ["ann", "cat"]);
    // Already together in a group before the block: messages still go to every member.
    let team = im.create("cat", "team", &["ann", "bob"]).unwrap();
    im.block("ann", "bob", true).unwrap();
    let sent = im.group_send("ann", team.gid, "g1").unwrap();
    assert_eq!(sent.deliveries.len(), 3);
}

#[test]
fn reach_is_a_dm_with_a_message_or_a_group_now_and_no_block() {
    let dir = TempDir::new("reach");
    let im = Im::open(&dir);
    im.send("ann", "bob", "hello");
    let team = im.create("cat", "team", &["ann", "dan"]).unwrap();
    im.block("eve", "zed", true).unwrap();
    im.send("eve", "ann", "hi");
    assert_eq!(
        im.reach_users(
            "ann",
            &["bob", "cat", "dan", "eve", "zed", "nobody", "bob", "ann"]
        ),
        ["bob", "cat", "dan", "eve", "ann"],
        "dm partners, group members, once each, in the order asked"
    );
    assert!(
        im.reach_users("zed", &["eve", "ann"]).is_empty(),
        "strangers"
    );
    assert!(im.reach_users("nobody", &["ann"]).is_empty());

    im.block("dan", "ann", true).unwrap();
    im.block("ann", "bob", true).unwrap();
    assert_eq!(im.reach_users("ann", &["bob", "cat", "dan"]), ["cat"]);
    assert_eq!(
        im.hidden_users("ann", &["bob", "cat", "dan", "zed"]),
        ["bob", "dan"],
        "contacts across a block are told apart from strangers, for the hub to hide"
    );
    assert_eq!(
        im.reach_users("dan", &["ann", "cat"]),
        ["cat"],
        "either way"
    );
    assert!(
        im.hidden_users("zed", &["eve"]).is_empty(),
        "no conversation"
    );
    let group = im.reach("ann", Audience::Group(team.gid)).unwrap();
    assert_eq!(
        (group.reachable, group.hidden),
        (strings(&["cat"]), strings(&["dan"])),
        "a group's typing skips members across a block"
    );
    // A member who left shares the group no more.
    im.leave("cat", team.gid).unwrap();
    assert!(im.reach_users("ann", &["cat"]).is_empty());
    assert_eq!(
        im.reach("cat", Audience::Group(team.gid)),
        Err(StoreError::Forbidden("not a member of this group"))
    );
    assert_eq!(
        im.reach("ann", Audience::Group(999)),
        Err(StoreError::NotFound("no such group"))
    );
}

#[test]
fn a_block_list_is_bounded() {
    let dir = TempDir::new("block-cap");
    let im = Im::open(&dir);
    for i in 0..blocks::MAX_BLOCKS {
        im.block("ann", &format!("u{i}"), true).unwrap();
    }
    assert_eq!(
        im.block("ann", "one-more", true),
        Err(StoreError::Forbidden("the block list is full (1000 users)"))
    );
    im.block("ann", "u0", true).unwrap();
    im.block("ann", "u0", false).unwrap();
    im.block("ann", "one-more", true).unwrap();
}

fn create_job(owner: &str, name: &str, members: &[&str], max_members: u32) -> Job {
    Job::GroupCreate {
        tag: 0,
        owner: owner.into(),
        name: name.into(),
        members: strings(members),
        ts: TS,
        max_members,
    }
}

fn group_send_job(tag: u64, from: &str, gid: u64, cid: &str, body: &str) -> Job {
    Job::GroupSend {
        tag,
        sender: from.into(),
        cid: cid.into(),
        gid,
        body: body.into(),
        kind: "text".into(),
        ts: TS + tag,
    }
}

fn group_result(c: Completion) -> Result<GroupChange, StoreError> {
    match c {
        Completion::Group { result, .. } => result,
        other => panic!("expected Group, got {other:?}"),
    }
}

fn names(deliveries: &[(String, u64)]) -> Vec<&str> {
    deliveries.iter().map(|(u, _)| u.as_str()).collect()
}

fn mids(history: &History) -> Vec<u64> {
    history.msgs.iter().map(|m| m.mid).collect()
}

fn query_i64(dir: &TempDir, sql: &str) -> i64 {
    side(dir).query_row(sql, [], |r| r.get(0)).expect(sql)
}

/// Tracks each user's expected next seq: every delivery must be the one after the last.
#[derive(Default)]
struct Seqs(HashMap<String, u64>);

impl Seqs {
    fn check(&mut self, deliveries: &[(String, u64)]) {
        for (user, seq) in deliveries {
            let next = self.0.entry(user.clone()).or_insert(0);
            *next += 1;
            assert_eq!(*seq, *next, "{user}: gap-free seqs");
        }
    }
}

#[test]
fn a_group_is_created_with_its_owner_first_deduplicated_and_an_event_for_everyone() {
    let dir = TempDir::new("group-create");
    let im = Im::open(&dir);
    // carol exists before the group: within one event, join order is the order the store
    // first saw each user.
    im.send("carol", "carol", "n");
    let change = im
        .create("alice", "  team  ", &["bob", "carol", "bob", "alice"])
        .unwrap();
    assert_eq!(change.gid, 1);
    assert_eq!(change.name, "team", "trimmed");
    assert_eq!(change.owner.as_deref(), Some("alice"));
    assert_eq!(change.members, ["carol", "alice", "bob"]);
    let event = change.event.expect("an event");
    assert_eq!(event.conv, "group:1");
    assert_eq!(event.kind, "group");
    assert_eq!(event.from, "alice");
    assert_eq!(event.cid, format!("group:1:{}", event.mid));
    assert!(!event.duplicate);
    assert_eq!(
        event.body,
        r#"{"op":"create","gid":"1","name":"team","owner":"alice","users":["carol","alice","bob"]}"#
    );
    assert_eq!(
        event.deliveries,
        [("alice".into(), 1), ("carol".into(), 2), ("bob".into(), 1)]
    );
    assert_eq!(event.sender_seq, 1);
    for user in ["alice", "bob", "carol"] {
        let last = im.page(user, 0).entries.pop().unwrap();
        assert_eq!((last.mid, last.kind.as_str()), (event.mid, "group"));
        assert_eq!(last.body, event.body);
    }
    assert_eq!(im.members("bob", 1).unwrap(), ["carol", "alice", "bob"]);
    let second = im.create("bob", "other", &[]).unwrap();
    assert_eq!((second.gid, second.members), (2, vec!["bob".to_string()]));
}

#[test]
fn a_group_create_is_refused_for_a_bad_name_or_too_many_members_and_stores_nothing() {
    let dir = TempDir::new("group-create-refused");
    let im = Im::open(&dir);
    for name in ["", "   ", &"x".repeat(65)] {
        assert_eq!(
            im.create("alice", name, &["bob"]),
            Err(StoreError::Invalid("a group name is 1 to 64 bytes"))
        );
    }
    assert!(im
        .create("alice", &format!(" {} ", "x".repeat(64)), &[])
        .is_ok());
    // Three distinct members with the owner: over a limit of two, and exactly at three.
    let too_many = create_job("alice", "t", &["bob", "carol", "bob"], 2);
    assert_eq!(
        group_result(im.run(too_many)),
        Err(StoreError::Forbidden(
            "the group would have too many members"
        ))
    );
    assert!(group_result(im.run(create_job("alice", "t", &["bob", "carol", "bob"], 3))).is_ok());
    assert_eq!(
        im.create("alice", "t", &["bob", ""]),
        Err(StoreError::Invalid("empty user id"))
    );
    let mut bad_ts = create_job("alice", "t", &[], 3);
    if let Job::GroupCreate { ts, .. } = &mut bad_ts {
        *ts = u64::MAX;
    }
    assert_eq!(
        group_result(im.run(bad_ts)),
        Err(StoreError::Invalid("ts out of range"))
    );
    drop(im);
    assert_eq!(count(&dir, "groups"), 2);
    assert_eq!(count(&dir, "messages"), 2);
    assert_eq!(count(&dir, "users"), 3, "refused jobs created no user");
}

#[test]
fn a_group_send_reaches_every_member_once_stored_with_gap_free_seqs() {
    let dir = TempDir::new("group-send");
    let mut cfg = config(&dir);
    cfg.max_batch = 5;
    let (store, done, _) = open_ok(&cfg);
    let im = Im { store, done };
    let mut seqs = Seqs::default();
    let g = im.create("alice", "team", &["bob", "carol"]).unwrap();
    seqs.check(&g.event.unwrap().deliveries);
    let before = count(&dir, "inbox");
    // Group sends from every member, interleaved with dms, many per batch.
    let members = ["alice", "bob", "carol"];
    let mut rng = Lcg(5);
    let total = 300;
    for tag in 0..total {
        let from = members[rng.next(3)];
        if tag % 3 == 0 {
            submit(
                &im.store,
                send_job(tag, from, "dave", &format!("d{tag}"), "x"),
            );
        } else {
            submit(
                &im.store,
                group_send_job(tag, from, 1, &format!("g{tag}"), "x"),
            );
        }
    }
    let mut group_msgs = 0;
    let mut mids = Vec::new();
    for _ in 0..total {
        let (tag, sent) = recv_sent(&im.done);
        seqs.check(&sent.deliveries);
        if tag % 3 != 0 {
            group_msgs += 1;
            let from = sent.deliveries[0].0.clone();
            assert_eq!(sent.from, from, "the sender's entry comes first");
            assert_eq!(sent.deliveries[0].1, sent.sender_seq);
            let mut got = names(&sent.deliveries);
            got.sort_unstable();
            assert_eq!(got, members, "every member once");
            assert_eq!(sent.conv, "group:1");
            mids.push(sent.mid);
        }
    }
    drop(im);
    let stored = query_i64(
        &dir,
        "SELECT count(*) FROM messages WHERE conv = 'group:1' AND kind = 'text'",
    );
    assert_eq!(stored, group_msgs, "one messages row per group send");
    let dms = total as i64 - group_msgs;
    assert_eq!(count(&dir, "inbox") - before, group_msgs * 3 + dms * 2);
    let (_s, _d, initial) = open_ok(&cfg);
    for (user, next) in seqs.0 {
        assert_eq!(
            initial.heads[&user], next,
            "{user}'s head survives a reopen"
        );
    }
}

#[test]
fn a_group_send_from_a_non_member_or_to_no_group_is_refused_and_stores_nothing() {
    let dir = TempDir::new("group-send-refused");
    let im = Im::open(&dir);
    im.create("alice", "team", &["bob"]).unwrap();
    im.send("dave", "alice", "hello");
    let messages = count(&dir, "messages");
    assert_eq!(
        im.group_send("dave", 1, "x"),
        Err(StoreError::Forbidden("not a member of this group"))
    );
    assert_eq!(
        im.group_send("nobody", 1, "x"),
        Err(StoreError::Forbidden("not a member of this group"))
    );
    for gid in [2, 0, u64::MAX] {
        assert_eq!(
            im.group_send("alice", gid, "x"),
            Err(StoreError::NotFound("no such group"))
        );
    }
    assert_eq!(count(&dir, "messages"), messages);
    assert_eq!((im.head("dave"), im.head("alice")), (1, 2));
    assert_eq!(
        count(&dir, "users"),
        3,
        "the unknown sender was not created"
    );
}

#[test]
fn a_resent_group_cid_returns_the_original_even_a_dm_one() {
    let dir = TempDir::new("group-dup");
    let im = Im::open(&dir);
    im.create("alice", "team", &["bob"]).unwrap();
    let first = im.group_send("bob", 1, "c1").unwrap();
    let again = im.group_send("bob", 1, "c1").unwrap();
    assert!(again.duplicate && again.deliveries.is_empty());
    assert_eq!(
        (
            again.mid,
            again.sender_seq,
            again.conv.as_str(),
            again.body.as_str()
        ),
        (first.mid, first.sender_seq, "group:1", "body of c1")
    );
    let dm = im.send("bob", "carol", "c2");
    let crossed = im.group_send("bob", 1, "c2").unwrap();
    assert!(crossed.duplicate);
    assert_eq!(
        (crossed.mid, crossed.conv.as_str()),
        (dm.mid, "dm:bob:carol")
    );
    assert_eq!(im.head("alice"), 2, "create event and one message");
}

#[test]
fn only_the_owner_adds_and_adding_members_already_in_changes_nothing() {
    let dir = TempDir::new("group-add");
    let im = Im::open(&dir);
    im.create("alice", "team", &["bob"]).unwrap();
    assert_eq!(
        im.add("bob", 1, &["carol"]),
        Err(StoreError::Forbidden("only the owner may add members"))
    );
    assert_eq!(
        im.add("zed", 1, &["carol"]),
        Err(StoreError::Forbidden("only the owner may add members"))
    );
    assert_eq!(
        im.add("alice", 9, &["carol"]),
        Err(StoreError::NotFound("no such group"))
    );
    let messages = count(&dir, "messages");
    let same = im.add("alice", 1, &["bob", "alice", "bob"]).unwrap();
    assert_eq!(same.event, None);
    assert_eq!(same.members, ["alice", "bob"]);
    assert_eq!(count(&dir, "messages"), messages, "nothing stored");

    let change = im
        .add("alice", 1, &["bob", "dave", "carol", "dave"])
        .unwrap();
    assert_eq!(change.members, ["alice", "bob", "dave", "carol"]);
    let event = change.event.unwrap();
    assert_eq!(
        event.body,
        r#"{"op":"add","gid":"1","name":"team","owner":"alice","users":["dave","carol"]}"#
    );
    assert_eq!(
        names(&event.deliveries),
        ["alice", "bob", "dave", "carol"],
        "the owner first, then every member after the change"
    );
    // A new member receives what is sent from now on, and lists the group.
    let sent = im.group_send("carol", 1, "hi").unwrap();
    assert_eq!(names(&sent.deliveries), ["carol", "alice", "bob", "dave"]);
    assert_eq!(im.convs("dave", 10)[0].conv, "group:1");
}

#[test]
fn a_group_add_past_the_size_limit_is_refused() {
    let dir = TempDir::new("group-add-limit");
    let im = Im::open(&dir);
    im.create("alice", "team", &["bob"]).unwrap();
    let add = |members: &[&str], max_members| {
        group_result(im.run(Job::GroupAdd {
            tag: 0,
            user: "alice".into(),
            gid: 1,
            members: strings(members),
            ts: TS,
            max_members,
        }))
    };
    assert_eq!(
        add(&["carol", "dave"], 3),
        Err(StoreError::Forbidden(
            "the group would have too many members"
        ))
    );
    assert_eq!(
        add(&["carol", "bob"], 3).unwrap().members,
        ["alice", "bob", "carol"]
    );
    assert_eq!(im.members("alice", 1).unwrap().len(), 3);
}

#[test]
fn leaving_hands_ownership_to_the_earliest_member_and_the_last_leave_ends_the_group() {
    let dir = TempDir::new("group-leave");
    let im = Im::open(&dir);
    im.send("zed", "zed", "n"); // zed's uid is the smallest: first among the founders
    im.create("alice", "team", &["zed", "bob"]).unwrap();
    im.add("alice", 1, &["carol"]).unwrap();
    assert_eq!(
        im.members("bob", 1).unwrap(),
        ["zed", "alice", "bob", "carol"]
    );
    assert_eq!(
        im.leave("dave", 1),
        Err(StoreError::Forbidden("not a member of this group"))
    );
    assert_eq!(
        im.leave("alice", 7),
        Err(StoreError::NotFound("no such group"))
    );

    // Not the owner: ownership stays.
    let change = im.leave("zed", 1).unwrap();
    assert_eq!(change.owner.as_deref(), Some("alice"));
    // The owner: the earliest remaining member (bob joined before carol) takes over.
    let change = im.leave("alice", 1).unwrap();
    assert_eq!(change.owner.as_deref(), Some("bob"));
    assert_eq!(change.members, ["bob", "carol"]);
    let event = change.event.unwrap();
    assert_eq!(
        event.body,
        r#"{"op":"leave","gid":"1","name":"team","owner":"bob","users":["alice"]}"#
    );
    assert_eq!(event.from, "alice");
    assert_eq!(names(&event.deliveries), ["alice", "bob", "carol"]);
    assert_eq!(
        im.add("alice", 1, &["x"]),
        Err(StoreError::Forbidden("only the owner may add members"))
    );
    assert!(im.add("bob", 1, &["dave"]).unwrap().event.is_some());
    // The new owner's hand-over order survives a restart (the cache is rebuilt from rows).
    drop(im);
    let im = Im::open(&dir);
    assert_eq!(im.leave("bob", 1).unwrap().owner.as_deref(), Some("carol"));
    assert_eq!(im.leave("carol", 1).unwrap().owner.as_deref(), Some("dave"));
    let last = im.leave("dave", 1).unwrap();
    assert_eq!(last.owner, None, "ended");
    assert!(last.members.is_empty());
    assert_eq!(names(&last.event.unwrap().deliveries), ["dave"]);
    assert!(last_body_has_null_owner(&im, "dave"));
    assert_eq!(
        im.group_send("dave", 1, "x"),
        Err(StoreError::NotFound("no such group"))
    );
    assert_eq!(
        im.add("dave", 1, &["x"]),
        Err(StoreError::NotFound("no such group"))
    );
    assert_eq!(
        im.leave("dave", 1),
        Err(StoreError::Forbidden("not a member of this group"))
    );
    assert_eq!(
        im.members("dave", 1),
        Err(StoreError::Forbidden("not a member of this group"))
    );
    drop(im);
    assert_eq!(
        query_i64(&dir, "SELECT count(*) FROM groups WHERE owner IS NULL"),
        1
    );
    assert_eq!(count(&dir, "members"), 0);
}

fn last_body_has_null_owner(im: &Im, user: &str) -> bool {
    let entry = im.page(user, 0).entries.pop().unwrap();
    entry.body.contains(r#""owner":null"#)
}

#[test]
fn a_leaver_gets_the_leave_entry_and_then_nothing_more_of_the_group() {
    let dir = TempDir::new("group-leaver");
    let im = Im::open(&dir);
    im.create("alice", "team", &["bob"]).unwrap();
    im.group_send("alice", 1, "before").unwrap();
    let bob_head = im.head("bob");
    let leave = im.leave("bob", 1).unwrap();
    let mut page = im.page("bob", bob_head);
    assert_eq!(page.entries.len(), 1);
    let entry = page.entries.pop().unwrap();
    assert_eq!(
        (entry.kind.as_str(), entry.mid),
        ("group", leave.event.unwrap().mid)
    );
    let after = im.group_send("alice", 1, "after").unwrap();
    assert_eq!(names(&after.deliveries), ["alice"]);
    assert_eq!(im.head("bob"), bob_head + 1, "nothing after the leave");
    assert!(im.convs("bob", 10).is_empty(), "the group left bob's list");
    assert_eq!(
        im.history("bob", "group:1", None, 10),
        Err(StoreError::Forbidden("not a member of this group"))
    );
    assert_eq!(
        im.read("bob", "group:1", after.mid),
        Err(StoreError::Forbidden("not a participant"))
    );
    assert_eq!(
        im.group_send("bob", 1, "x"),
        Err(StoreError::Forbidden("not a member of this group"))
    );
    // Coming back: a new join, the list has it again, unread counts only what follows.
    im.add("alice", 1, &["bob"]).unwrap();
    let item = im.convs("bob", 10).pop().unwrap();
    assert_eq!((item.conv.as_str(), item.unread), ("group:1", 0));
    assert!(item.read_mid > after.mid, "the cursor starts at the join");
    assert_eq!(
        im.history("bob", "group:1", None, 10).unwrap().msgs.len(),
        5
    );
}

#[test]
fn a_server_made_cid_a_client_took_falls_back_to_a_reserved_one() {
    let dir = TempDir::new("reserved-cid");
    let im = Im::open(&dir);
    let sent = im.send("alice", "bob", "c1");
    // alice's client happens to use the very cids the server would pick next: the recall of
    // c1 and the event that creates group 1 (its mid is the one after the recall's).
    im.send("alice", "alice", &format!("recall:{}", sent.mid));
    let next = sent.mid + 3; // after the two sends here
    im.send("alice", "alice", &format!("group:1:{}", next + 1));
    let recall = im.recall("alice", sent.mid, TS + 1).unwrap();
    assert_eq!(recall.mid, next);
    let want = format!("recall:{}~", sent.mid);
    assert!(
        recall.cid.starts_with(&want) && recall.cid.len() == 65,
        "{}",
        recall.cid
    );
    let again = im.recall("alice", sent.mid, TS + 1).unwrap();
    assert!(again.duplicate);
    assert_eq!(
        (again.mid, again.cid.as_str()),
        (recall.mid, recall.cid.as_str())
    );
    let group = im.create("alice", "team", &["bob"]).unwrap().event.unwrap();
    assert_eq!(group.mid, next + 1);
    assert!(group.cid.starts_with(&format!("group:1:{}~", next + 1)));
    assert_eq!(group.cid.len(), 65);
    // The client's own messages are untouched.
    let client = im.send("alice", "alice", &format!("recall:{}", sent.mid));
    assert!(client.duplicate && client.kind == "text");
}

#[test]
fn a_recall_erases_the_body_and_reaches_both_sides_of_a_dm() {
    let dir = TempDir::new("recall");
    let im = Im::open(&dir);
    let secret = "the launch code is 0000";
    submit(&im.store, send_job(0, "alice", "bob", "c1", secret));
    let (_, sent) = recv_sent(&im.done);
    im.send("bob", "alice", "reply");
    let recall = im.recall("alice", sent.mid, sent.ts + WINDOW).unwrap();
    assert_eq!(
        recall,
        Sent {
            mid: recall.mid,
            conv: "dm:alice:bob".into(),
            ts: sent.ts + WINDOW,
            sender_seq: 3,
            duplicate: false,
            deliveries: vec![("alice".into(), 3), ("bob".into(), 3)],
            from: "alice".into(),
            cid: format!("recall:{}", sent.mid),
            body: String::new(),
            kind: "recall".into(),
        }
    );
    let (body, recalled): (String, bool) = side(&dir)
        .query_row(
            "SELECT body, recalled FROM messages WHERE mid = ?1",
            [sent.mid as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((body.as_str(), recalled), ("", true));
    for user in ["alice", "bob"] {
        let page = im.page(user, 0);
        let original = &page.entries[0];
        assert_eq!((original.mid, original.recalled), (sent.mid, true));
        assert_eq!(original.body, "");
        let notice = &page.entries[2];
        assert_eq!(notice.kind, "recall");
        assert_eq!(notice.ref_mid, Some(sent.mid));
        assert!(!notice.recalled);
        assert!(!page.entries[1].recalled);
    }
    let history = im.history("bob", "dm:alice:bob", None, 10).unwrap();
    assert_eq!(
        mids(&history),
        [sent.mid, sent.mid + 1],
        "no recall notice in history"
    );
    assert!(history.msgs[0].recalled && history.msgs[0].body.is_empty());
    assert!(!history.msgs[1].recalled);

    // The second recall answers with the first notice, even once the window has passed.
    let again = im.recall("alice", sent.mid, sent.ts + 10 * WINDOW).unwrap();
    assert!(again.duplicate && again.deliveries.is_empty());
    assert_eq!(
        (again.mid, again.sender_seq, again.ts, again.cid.as_str()),
        (recall.mid, 3, recall.ts, recall.cid.as_str())
    );
    assert_eq!(im.head("bob"), 3);

    // A note to self has one participant.
    let note = im.send("carol", "carol", "n");
    let recall = im.recall("carol", note.mid, note.ts).unwrap();
    assert_eq!(recall.deliveries, [("carol".to_string(), 2)]);

    // Nothing of the body is left in the database file once the WAL is gone.
    drop(im);
    let file = checkpointed_file(&dir);
    assert!(!file.windows(secret.len()).any(|w| w == secret.as_bytes()));
}

/// The database file once every WAL frame is copied back and the WAL emptied (what a
/// clean close normally does, unless two connections close at once and each leaves it to
/// the other).
fn checkpointed_file(dir: &TempDir) -> Vec<u8> {
    let busy: i64 = side(dir)
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        .unwrap();
    assert_eq!(busy, 0);
    let wal = dir.path().join(format!("{DB_FILE}-wal"));
    assert!(std::fs::metadata(wal).map_or(0, |m| m.len()) == 0);
    std::fs::read(dir.path().join(DB_FILE)).unwrap()
}

#[test]
fn a_long_recalled_body_is_overwritten_in_its_overflow_pages_too() {
    let dir = TempDir::new("recall-long");
    let im = Im::open(&dir);
    let body = "confidential-".repeat(2000); // 26 KB: several overflow pages
    submit(&im.store, send_job(0, "alice", "bob", "big", &body));
    let (_, sent) = recv_sent(&im.done);
    im.recall("alice", sent.mid, sent.ts).unwrap();
    drop(im);
    let file = checkpointed_file(&dir);
    assert!(!file.windows(13).any(|w| w == b"confidential-"));
}

#[test]
fn a_recall_is_refused_to_others_after_the_window_and_of_notices() {
    let dir = TempDir::new("recall-refused");
    let im = Im::open(&dir);
    let sent = im.send("alice", "bob", "c1");
    assert_eq!(
        im.recall("bob", sent.mid, sent.ts),
        Err(StoreError::Forbidden("only the sender may recall"))
    );
    assert_eq!(
        im.recall("stranger", sent.mid, sent.ts),
        Err(StoreError::Forbidden("only the sender may recall"))
    );
    assert_eq!(
        im.recall("alice", sent.mid, sent.ts + WINDOW + 1),
        Err(StoreError::Forbidden("the recall window has passed"))
    );
    for mid in [sent.mid + 100, 0, u64::MAX] {
        assert_eq!(
            im.recall("alice", mid, sent.ts),
            Err(StoreError::NotFound("no such message"))
        );
    }
    let group = im.create("alice", "team", &["bob"]).unwrap().event.unwrap();
    assert_eq!(
        im.recall("alice", group.mid, TS),
        Err(StoreError::Forbidden(
            "a recall or group notice cannot be recalled"
        ))
    );
    // A clock that went backwards is within the window.
    let recall = im.recall("alice", sent.mid, sent.ts - 5).unwrap();
    assert_eq!(
        im.recall("alice", recall.mid, sent.ts),
        Err(StoreError::Forbidden(
            "a recall or group notice cannot be recalled"
        ))
    );
    drop(im);
    assert_eq!(
        query_i64(&dir, "SELECT count(*) FROM messages WHERE kind = 'recall'"),
        1
    );
}

#[test]
fn a_group_recall_reaches_the_current_members_and_needs_membership() {
    let dir = TempDir::new("recall-group");
    let im = Im::open(&dir);
    im.create("alice", "team", &["bob", "carol"]).unwrap();
    let one = im.group_send("bob", 1, "one").unwrap();
    let two = im.group_send("bob", 1, "two").unwrap();
    im.leave("carol", 1).unwrap();
    let recall = im.recall("bob", one.mid, TS).unwrap();
    assert_eq!(recall.conv, "group:1");
    assert_eq!(names(&recall.deliveries), ["bob", "alice"]);
    im.leave("bob", 1).unwrap();
    assert_eq!(
        im.recall("bob", two.mid, TS),
        Err(StoreError::Forbidden("not a member of this group"))
    );
    // The recall already made still answers as a duplicate.
    assert!(im.recall("bob", one.mid, TS).unwrap().duplicate);
}

#[test]
fn a_read_cursor_moves_forward_only_and_names_the_peer() {
    let dir = TempDir::new("read");
    let im = Im::open(&dir);
    let a = im.send("alice", "bob", "a");
    let b = im.send("bob", "alice", "b");
    let moved = im.read("bob", "dm:alice:bob", b.mid).unwrap();
    assert_eq!(
        moved,
        ReadMoved {
            conv: "dm:alice:bob".into(),
            mid: b.mid,
            moved: true,
            peer: Some("alice".into()),
        }
    );
    let back = im.read("bob", "dm:alice:bob", a.mid).unwrap();
    assert_eq!((back.mid, back.moved), (b.mid, false), "never backwards");
    let same = im.read("bob", "dm:alice:bob", b.mid).unwrap();
    assert!(!same.moved);
    assert_eq!(
        im.read("alice", "dm:alice:bob", a.mid)
            .unwrap()
            .peer
            .as_deref(),
        Some("bob")
    );
    let note = im.send("carol", "carol", "n");
    assert_eq!(
        im.read("carol", "dm:carol:carol", note.mid).unwrap().peer,
        None
    );
    im.create("alice", "team", &["bob"]).unwrap();
    let g = im.group_send("alice", 1, "g").unwrap();
    let group = im.read("bob", "group:1", g.mid).unwrap();
    assert_eq!((group.moved, group.peer), (true, None));

    assert_eq!(
        im.read("carol", "dm:alice:bob", a.mid),
        Err(StoreError::Forbidden("not a participant"))
    );
    assert_eq!(
        im.read("carol", "group:1", g.mid),
        Err(StoreError::Forbidden("not a participant"))
    );
    assert_eq!(
        im.read("bob", "group:2", 1),
        Err(StoreError::NotFound("no such group"))
    );
    for mid in [note.mid, g.mid, 999, u64::MAX] {
        assert_eq!(
            im.read("bob", "dm:alice:bob", mid),
            Err(StoreError::NotFound("no such message in this conversation"))
        );
    }
    for conv in [
        "dm:bob:alice",
        "dm:alice",
        "dm:alice:bob:x",
        "dm::bob",
        "dm:al ice:bob",
        "group:01",
        "group:+1",
        "group:",
        "group:x",
        "chan:1",
        "",
    ] {
        assert_eq!(
            im.read("bob", conv, a.mid),
            Err(StoreError::Invalid("malformed conversation id")),
            "{conv}"
        );
    }
    drop(im);
    let cursor = query_i64(
        &dir,
        "SELECT read_mid FROM convs JOIN users USING (uid) WHERE name = 'bob' AND conv = 'dm:alice:bob'",
    );
    assert_eq!(cursor, b.mid as i64);
}

#[test]
fn convs_lists_newest_first_with_exact_unread_counts_and_the_peers_cursor() {
    let dir = TempDir::new("convs");
    let im = Im::open(&dir);
    let first = im.send("alice", "bob", "1");
    im.send("bob", "alice", "2");
    let three = im.send("alice", "bob", "3");
    let four = im.send("alice", "bob", "4");
    im.send("alice", "bob", "5");
    im.send("carol", "bob", "6");
    im.create("dave", "team", &["bob"]).unwrap();
    let g = im.group_send("dave", 1, "7").unwrap();
    im.send("bob", "bob", "8");

    let list = im.convs("bob", 10);
    let order: Vec<&str> = list.iter().map(|c| c.conv.as_str()).collect();
    assert_eq!(
        order,
        ["dm:bob:bob", "group:1", "dm:bob:carol", "dm:alice:bob"]
    );
    let unread: Vec<u64> = list.iter().map(|c| c.unread).collect();
    assert_eq!(
        unread,
        [0, 1, 1, 4],
        "own messages and the group event do not count"
    );
    assert_eq!(list[1].name.as_deref(), Some("team"));
    assert_eq!(list[1].last.as_ref().unwrap().mid, g.mid);
    assert_eq!(list[1].peer_read_mid, None);
    assert_eq!(list[0].peer_read_mid, None, "a note to self has no peer");
    assert_eq!(list[3].peer_read_mid, Some(0));
    assert_eq!(list[3].name, None);

    // Reading and recalling lower the count; a recall notice is never the last message.
    im.read("bob", "dm:alice:bob", three.mid).unwrap();
    im.recall("alice", four.mid, four.ts).unwrap();
    im.read("alice", "dm:alice:bob", first.mid + 1).unwrap();
    let list = im.convs("bob", 10);
    let dm = list.iter().find(|c| c.conv == "dm:alice:bob").unwrap();
    assert_eq!((dm.unread, dm.read_mid), (1, three.mid));
    let last = dm.last.as_ref().unwrap();
    assert_eq!((last.cid.as_str(), last.from.as_str()), ("5", "alice"));
    assert_eq!(dm.peer_read_mid, Some(first.mid + 1));
    // The recall is a message of the dm: still the list's order is by last real message.
    assert_eq!(list[0].conv, "dm:bob:bob");

    // A recalled last message stays the last, shown recalled.
    let five = dm.last.as_ref().unwrap().mid;
    im.recall("alice", five, TS).unwrap();
    let dm = im
        .convs("alice", 10)
        .into_iter()
        .find(|c| c.conv == "dm:alice:bob")
        .unwrap();
    let last = dm.last.unwrap();
    assert_eq!(
        (last.mid, last.recalled, last.body.as_str()),
        (five, true, "")
    );

    // limit keeps the newest; a conversation without messages comes last.
    let trimmed = im.convs("bob", 2);
    assert_eq!(
        trimmed.iter().map(|c| c.conv.as_str()).collect::<Vec<_>>(),
        ["dm:bob:bob", "group:1"]
    );
    assert!(im.convs("bob", 0).is_empty());
    assert!(im.convs("nobody", 10).is_empty());
    side(&dir)
        .execute(
            "INSERT INTO convs(uid, conv) SELECT uid, 'dm:bob:zed' FROM users WHERE name = 'bob'",
            [],
        )
        .unwrap();
    let list = im.convs("bob", 10);
    assert_eq!(list.last().unwrap().conv, "dm:bob:zed");
    assert_eq!(list.last().unwrap().last, None);
}

#[test]
fn a_dm_is_listed_for_both_sides_from_its_first_message_once() {
    let dir = TempDir::new("convs-rows");
    let im = Im::open(&dir);
    for i in 0..20 {
        im.send("alice", "bob", &format!("a{i}"));
        im.send("bob", "alice", &format!("b{i}"));
    }
    im.send("carol", "carol", "n");
    assert_eq!(im.convs("alice", 10).len(), 1);
    assert_eq!(im.convs("bob", 10)[0].conv, "dm:alice:bob");
    assert_eq!(im.convs("carol", 10)[0].conv, "dm:carol:carol");
    assert_eq!(count(&dir, "convs"), 3);
    // A running conversation costs no statement: rows removed behind the writer's back are
    // not put back, since it remembers the pair...
    side(&dir).execute("DELETE FROM convs", []).unwrap();
    im.send("bob", "alice", "known");
    assert_eq!(count(&dir, "convs"), 0);
    // ...until a restart, after which the first message of each pair writes them again
    // (and never twice).
    drop(im);
    let im = Im::open(&dir);
    im.send("bob", "alice", "again");
    im.send("alice", "bob", "and again");
    drop(im);
    assert_eq!(count(&dir, "convs"), 2);
}

#[test]
fn a_history_page_stops_at_about_its_byte_budget() {
    // A page is one frame the server holds until it is read: bodies JSON writes sixfold
    // (96 KiB each) fill the 1 MiB budget at ten, whatever `limit` asked for.
    let dir = TempDir::new("history-bytes");
    let im = Im::open(&dir);
    let body = "\u{1}".repeat(16 * 1024);
    let mut all = Vec::new();
    for i in 0..20 {
        submit(
            &im.store,
            send_job(0, "alice", "bob", &format!("c{i}"), &body),
        );
        all.push(recv_sent(&im.done).1.mid);
    }
    let conv = "dm:alice:bob";
    let newest = im.history("bob", conv, None, 100).unwrap();
    assert_eq!((mids(&newest), newest.more), (all[10..].to_vec(), true));
    let rest = im.history("bob", conv, Some(all[10]), 100).unwrap();
    assert_eq!((mids(&rest), rest.more), (all[..10].to_vec(), false));
}

#[test]
fn history_pages_back_from_before_with_more_and_only_for_participants() {
    let dir = TempDir::new("history");
    let im = Im::open(&dir);
    let mut all = Vec::new();
    for i in 0..7 {
        let (from, to) = if i % 2 == 0 {
            ("alice", "bob")
        } else {
            ("bob", "alice")
        };
        all.push(im.send(from, to, &format!("c{i}")).mid);
        im.send("alice", "carol", &format!("other{i}")); // another conversation between
    }
    let conv = "dm:alice:bob";
    let newest = im.history("bob", conv, None, 3).unwrap();
    assert_eq!(mids(&newest), all[4..]);
    assert!(newest.more);
    assert_eq!(newest.conv, conv);
    let m = &newest.msgs[0];
    assert_eq!(
        (
            m.from.as_str(),
            m.cid.as_str(),
            m.body.as_str(),
            m.kind.as_str()
        ),
        ("alice", "c4", "body of c4", "text")
    );
    let older = im.history("bob", conv, Some(all[4]), 3).unwrap();
    assert_eq!((mids(&older), older.more), (all[1..4].to_vec(), true));
    let oldest = im.history("bob", conv, Some(all[1]), 3).unwrap();
    assert_eq!((mids(&oldest), oldest.more), (vec![all[0]], false));
    let exact = im.history("bob", conv, Some(all[3]), 3).unwrap();
    assert_eq!(
        (mids(&exact), exact.more),
        (all[..3].to_vec(), false),
        "exactly the rest"
    );
    let none = im.history("bob", conv, Some(all[0]), 3).unwrap();
    assert_eq!((none.msgs.len(), none.more), (0, false));
    let zero = im.history("bob", conv, None, 0).unwrap();
    assert_eq!((zero.msgs.len(), zero.more), (0, true));
    let all_of_it = im.history("alice", conv, Some(u64::MAX), 100).unwrap();
    assert_eq!((mids(&all_of_it), all_of_it.more), (all.clone(), false));
    assert!(im
        .history("alice", "dm:alice:nobody", None, 10)
        .unwrap()
        .msgs
        .is_empty());

    assert_eq!(
        im.history("carol", conv, None, 10),
        Err(StoreError::Forbidden("not a participant"))
    );
    assert_eq!(
        im.history("bob", "dm:bob:alice", None, 10),
        Err(StoreError::Invalid("malformed conversation id"))
    );
    assert_eq!(
        im.history("bob", "group:3", None, 10),
        Err(StoreError::NotFound("no such group"))
    );
    im.create("alice", "team", &["bob"]).unwrap();
    let g = im.group_send("bob", 1, "g").unwrap();
    let group = im.history("alice", "group:1", None, 10).unwrap();
    assert_eq!(group.msgs.len(), 2);
    assert_eq!(
        (group.msgs[0].kind.as_str(), group.msgs[1].mid),
        ("group", g.mid)
    );
    assert_eq!(
        im.history("carol", "group:1", None, 10),
        Err(StoreError::Forbidden("not a member of this group"))
    );
}

#[test]
fn members_are_listed_in_join_order_for_members_only() {
    let dir = TempDir::new("members");
    let im = Im::open(&dir);
    im.create("carol", "team", &["alice"]).unwrap();
    im.add("carol", 1, &["bob"]).unwrap();
    assert_eq!(
        im.group("bob", 1).unwrap(),
        GroupInfo {
            gid: 1,
            name: "team".into(),
            owner: Some("carol".into()),
            members: strings(&["carol", "alice", "bob"]),
        }
    );
    im.leave("carol", 1).unwrap();
    let after = im.group("bob", 1).unwrap();
    assert_eq!(after.owner.as_deref(), Some("alice"), "handed over");
    assert_eq!(after.members, ["alice", "bob"]);
    assert_eq!(
        im.members("dave", 1),
        Err(StoreError::Forbidden("not a member of this group"))
    );
    for gid in [2, 0, u64::MAX] {
        assert_eq!(
            im.members("bob", gid),
            Err(StoreError::NotFound("no such group"))
        );
    }
}

/// Issue 13, finding 6: a change entry is pushed to every member, so it must hold the change
/// only. With the member list in it, an add to a 999-member group stored ~11 KB here (ids
/// of 8 bytes; ~66 KB with 64-byte ids), and building a group one add at a time pushed
/// bytes growing with the square of its size.
#[test]
fn a_change_entry_holds_the_change_whatever_the_size_of_the_group() {
    let dir = TempDir::new("group-delta");
    let im = Im::open(&dir);
    let names: Vec<String> = (0..1000).map(|i| format!("user{i:04}")).collect();
    let create = |name: &str, members: &[String]| {
        group_result(im.run(Job::GroupCreate {
            tag: 0,
            owner: names[0].clone(),
            name: name.into(),
            members: members.to_vec(),
            ts: TS,
            max_members: 1000,
        }))
        .unwrap()
    };
    let add = |gid: u64, who: &str| {
        group_result(im.run(Job::GroupAdd {
            tag: 0,
            user: names[0].clone(),
            gid,
            members: strings(&[who]),
            ts: TS,
            max_members: 1000,
        }))
        .unwrap()
    };
    // Two groups alike but for their size: 2 members and 999.
    let small = create("g", &names[1..2]);
    let big = create("g", &names[1..999]);
    assert_eq!((small.gid, big.gid, big.members.len()), (1, 2, 999));

    // The create names every first member, once: the request bounds that list.
    let created: serde_json::Value =
        serde_json::from_str(&big.event.as_ref().unwrap().body).unwrap();
    assert_eq!(created["users"].as_array().unwrap().len(), 999);
    assert!(created.get("members").is_none(), "{created}");

    let small_add = add(small.gid, "newbie1").event.unwrap();
    let big_add = add(big.gid, "newbie2");
    assert_eq!(big_add.members.len(), 1000, "the reply still has everyone");
    let big_add = big_add.event.unwrap();
    assert_eq!(
        big_add.body,
        r#"{"op":"add","gid":"2","name":"g","owner":"user0000","users":["newbie2"]}"#
    );
    assert_eq!(
        small_add.body.len(),
        big_add.body.len(),
        "the same change costs the same bytes in a group of 2 and of 1000"
    );
    assert!(big_add.body.len() < 300, "{}", big_add.body.len());
    assert_eq!(big_add.deliveries.len(), 1000, "and reaches every member");
    let stored = im.page("user0500", 0).entries.pop().unwrap();
    assert_eq!((stored.mid, &stored.body), (big_add.mid, &big_add.body));

    // A leave names the leaver, and the owner after it: a hand-over shows.
    let left = im.leave("user0500", big.gid).unwrap().event.unwrap();
    assert_eq!(
        left.body,
        r#"{"op":"leave","gid":"2","name":"g","owner":"user0000","users":["user0500"]}"#
    );
    let handed = im.leave("user0000", big.gid).unwrap().event.unwrap();
    assert_eq!(
        handed.body,
        r#"{"op":"leave","gid":"2","name":"g","owner":"user0001","users":["user0000"]}"#
    );
    assert_eq!(handed.deliveries.len(), 999, "the leaver and the 998 left");

    // The list is there on request, whole and in join order.
    let info = im.group("user0998", big.gid).unwrap();
    assert_eq!(info.owner.as_deref(), Some("user0001"));
    assert_eq!(info.members.len(), 998);
    assert_eq!(
        (info.members[0].as_str(), info.members[997].as_str()),
        ("user0001", "newbie2")
    );
    assert!(!info.members.iter().any(|m| m == "user0500"));
}

/// Entries an older version stored carry the member list; they are served as stored, so a
/// client meets both shapes (PROTOCOL.md).
#[test]
fn a_change_entry_stored_by_an_older_version_is_served_as_stored() {
    let dir = TempDir::new("group-old-entry");
    let im = Im::open(&dir);
    let created = im.create("alice", "team", &["bob"]).unwrap().event.unwrap();
    drop(im);
    let old = r#"{"op":"create","gid":"1","name":"team","owner":"alice","members":["alice","bob"],"users":["alice","bob"]}"#;
    side(&dir)
        .execute(
            "UPDATE messages SET body = ?1 WHERE mid = ?2",
            rusqlite::params![old, created.mid as i64],
        )
        .unwrap();
    let im = Im::open(&dir);
    let added = im.add("alice", 1, &["carol"]).unwrap().event.unwrap();
    let page = im.page("bob", 0);
    let bodies: Vec<&str> = page.entries.iter().map(|e| e.body.as_str()).collect();
    assert_eq!(bodies, [old, added.body.as_str()]);
    let history = im.history("carol", "group:1", None, 10).unwrap();
    assert_eq!(history.msgs[0].body, old);
    assert_eq!(im.members("carol", 1).unwrap(), ["alice", "bob", "carol"]);
}

#[test]
fn a_version_1_database_is_migrated_with_its_data_intact() {
    let dir = TempDir::new("migrate-v1");
    std::fs::create_dir_all(dir.path()).unwrap();
    {
        let conn = side(&dir);
        conn.execute_batch(schema::MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute_batch(
            "INSERT INTO users(uid, name, head) VALUES (1, 'alice', 2), (2, 'bob', 2), (3, 'carol', 1);
             INSERT INTO messages(mid, conv, sender, cid, kind, body, ts, sender_seq)
                 VALUES (1, 'dm:alice:bob', 1, 'c1', 'text', 'hi bob', 1700000000000, 1),
                        (2, 'dm:alice:bob', 2, 'c2', 'text', 'hi alice', 1700000000001, 2),
                        (3, 'dm:carol:carol', 3, 'n1', 'text', 'note', 1700000000002, 1);
             INSERT INTO inbox(uid, seq, mid) VALUES (1, 1, 1), (2, 1, 1), (2, 2, 2), (1, 2, 2), (3, 1, 3);",
        )
        .unwrap();
    }
    let (store, done, initial) = open_ok(&config(&dir));
    let im = Im { store, done };
    assert_eq!(user_version(&dir), schema::MIGRATIONS.len() as i64);
    assert_eq!(
        (
            initial.heads["alice"],
            initial.heads["bob"],
            initial.heads["carol"]
        ),
        (2, 2, 1)
    );
    let page = im.page("bob", 0);
    assert_eq!(seqs(&page), [1, 2]);
    assert_eq!(
        (page.entries[0].body.as_str(), page.entries[0].recalled),
        ("hi bob", false)
    );
    let list = im.convs("alice", 10);
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].conv.as_str(), list[0].unread, list[0].read_mid),
        ("dm:alice:bob", 0, 2),
        "what was delivered before the upgrade starts out read"
    );
    assert_eq!(im.convs("carol", 10)[0].conv, "dm:carol:carol");
    assert_eq!(
        mids(&im.history("bob", "dm:alice:bob", None, 10).unwrap()),
        [1, 2]
    );
    // Old messages can be read, recalled and resent like new ones.
    assert!(!im.read("bob", "dm:alice:bob", 1).unwrap().moved);
    assert!(im.send("alice", "bob", "c1").duplicate);
    let recall = im.recall("alice", 1, 1_700_000_000_000).unwrap();
    assert_eq!(recall.mid, 4);
    assert_eq!(recall.deliveries, [("alice".into(), 3), ("bob".into(), 3)]);
    let next = im.send("carol", "alice", "c3");
    assert_eq!(next.deliveries, [("carol".into(), 2), ("alice".into(), 4)]);
    drop(im);
    assert_eq!(count(&dir, "convs"), 5);
}

#[test]
fn a_failed_batch_with_group_jobs_is_rolled_back_and_leaves_memory_consistent() {
    let dir = TempDir::new("rollback-groups");
    let (store, done, gate) = open_held(&config(&dir));
    submit(&store, create_job("olga", "team", &["mia"], 100));
    gate.send(()).unwrap();
    group_result(recv(&done)).unwrap();
    // A trigger stands in for a fault only one job meets: the owner's leave, which has
    // already removed her from the members and handed ownership over when it fails.
    side(&dir)
        .execute_batch(
            r#"CREATE TRIGGER boom BEFORE INSERT ON messages
               WHEN NEW.kind = 'group' AND NEW.body LIKE '%"op":"leave"%'
               BEGIN SELECT RAISE(ABORT, 'boom'); END;"#,
        )
        .unwrap();
    submit(&store, send_job(1, "pat", "quin", "first", "x")); // a new dm pair
    submit(&store, group_send_job(2, "mia", 1, "g1", "x"));
    submit(&store, create_job("olga", "two", &["ned"], 100)); // a new group, a new user
    let add = Job::GroupAdd {
        tag: 4,
        user: "olga".into(),
        gid: 1,
        members: strings(&["ravi"]),
        ts: TS,
        max_members: 100,
    };
    submit(&store, add.clone());
    submit(
        &store,
        Job::GroupLeave {
            tag: 5,
            user: "olga".into(),
            gid: 1,
            ts: TS,
        },
    );
    submit(&store, group_send_job(6, "ravi", 1, "g2", "x"));
    gate.send(()).unwrap();

    let mut seqs = Seqs::default();
    seqs.0.insert("olga".into(), 1);
    seqs.0.insert("mia".into(), 1);
    let (_, dm) = recv_sent(&done);
    seqs.check(&dm.deliveries);
    let (_, g1) = recv_sent(&done);
    seqs.check(&g1.deliveries);
    let two = group_result(recv(&done)).unwrap();
    assert_eq!(two.gid, 2);
    seqs.check(&two.event.unwrap().deliveries);
    let added = group_result(recv(&done)).unwrap();
    let event = added.event.expect("ravi is new again after the rollback");
    seqs.check(&event.deliveries);
    match recv(&done) {
        Completion::Group {
            tag: 5,
            result: Err(StoreError::Sqlite { message, .. }),
        } => assert!(message.contains("boom"), "{message}"),
        other => panic!("{other:?}"),
    }
    let (_, g2) = recv_sent(&done);
    assert_eq!(
        names(&g2.deliveries),
        ["ravi", "olga", "mia"],
        "olga is still in"
    );
    seqs.check(&g2.deliveries);
    assert_eq!(
        store.stats().rollbacks,
        2,
        "the batch, then the leave alone"
    );

    side(&dir).execute_batch("DROP TRIGGER boom").unwrap();
    drop(gate);
    let im = Im { store, done };
    assert_eq!(im.members("mia", 1).unwrap(), ["olga", "mia", "ravi"]);
    // olga is still the owner: her add works, mia's does not.
    assert!(im.add("mia", 1, &["sam"]).is_err());
    let change = im.add("olga", 1, &["sam"]).unwrap();
    seqs.check(&change.event.unwrap().deliveries);
    let left = im.leave("olga", 1).unwrap();
    assert_eq!(left.owner.as_deref(), Some("mia"));
    seqs.check(&left.event.unwrap().deliveries);
    for user in ["pat", "quin"] {
        assert_eq!(im.convs(user, 10)[0].conv, "dm:pat:quin", "{user}");
    }
    drop(im);
    let (_s, _d, initial) = open_ok(&config(&dir));
    for (user, head) in &seqs.0 {
        assert_eq!(initial.heads[user], *head, "{user}");
    }
    assert_eq!(count(&dir, "convs"), 2 + 2 + 2 + 1 + 1 - 1);
}

// ---- faults: a full disk, a file that is not courier's ----

/// A small tmpfs on a fresh folder, unmounted (lazily, whatever is still open in it) on
/// drop. `None` when this process may not mount: the test then checks nothing.
struct Tmpfs(TempDir);

impl Tmpfs {
    fn mount(name: &str) -> Option<Tmpfs> {
        use std::os::unix::ffi::OsStrExt;
        let dir = TempDir::new(name);
        std::fs::create_dir_all(dir.path()).unwrap();
        let target = std::ffi::CString::new(dir.path().as_os_str().as_bytes()).unwrap();
        // SAFETY: NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                c"size=16m".as_ptr().cast(),
            )
        };
        if rc != 0 {
            eprintln!("SKIPPED: cannot mount a tmpfs (needs root, as in CI)");
            return None;
        }
        Some(Tmpfs(dir))
    }

    /// Writes a file until the file system is full; returns its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.0.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0x5a_u8; 64 << 10];
        while file.write_all(&chunk).is_ok() {}
        while file.write_all(&chunk[..4096]).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        use std::os::unix::ffi::OsStrExt;
        let target = std::ffi::CString::new(self.0.path().as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

#[test]
fn a_full_disk_fails_the_whole_batch_unavailable_at_once_and_leaves_the_heads() {
    let Some(fs) = Tmpfs::mount("full") else {
        return;
    };
    let config = StoreConfig::new(fs.0.path().join("data"));
    let (store, done, gate) = open_held(&config);
    assert_eq!(send_seq(&store, &done, &gate, "alice", "bob"), 1);
    let filler = fs.fill();
    // More than the WAL file can hold in the pages it already has (after a checkpoint it
    // is reused from the start, without asking the file system for space).
    let body = "x".repeat(256 << 10);
    for tag in 1..=3 {
        submit(
            &store,
            send_job(tag, "alice", "bob", &format!("f{tag}"), &body),
        );
    }
    submit(&store, send_job(4, "alice", "carl", "f4", &body)); // a new user, forgotten
    gate.send(()).unwrap();
    for tag in 1..=4 {
        match recv(&done) {
            Completion::Sent {
                tag: t,
                result: Err(StoreError::Unavailable { code, .. }),
            } => assert_eq!((t, code & 0xff), (tag, rusqlite::ffi::SQLITE_FULL)),
            Completion::Sent { tag, result } => panic!("{tag}: {:?}", result.map(|s| s.mid)),
            other => panic!("{other:?}"),
        }
    }
    let stats = store.stats();
    assert_eq!(
        (stats.rollbacks, stats.failed),
        (1, 4),
        "one rollback for the batch, no retry of each job against the same full disk"
    );
    // Reads still work on a full disk.
    assert_eq!(seqs(&page(&store, &done, "bob", 0, 10)), [1]);

    std::fs::remove_file(filler).unwrap();
    // Space is back: the same writer commits again, and the seqs follow the last commit.
    submit(&store, send_job(5, "alice", "bob", "after", "x"));
    gate.send(()).unwrap();
    let after = recv_sent(&done).1;
    assert_eq!(after.deliveries, [("alice".into(), 2), ("bob".into(), 2)]);
    gate.send(()).unwrap();
    let carl = send(&store, &done, "alice", "carl", "f4");
    assert_eq!(carl.deliveries, [("alice".into(), 3), ("carl".into(), 1)]);
    drop(gate);
    drop(store);
    let (_store, _done, initial) = open_ok(&config);
    assert_eq!(
        (
            initial.heads["alice"],
            initial.heads["bob"],
            initial.heads["carl"]
        ),
        (3, 2, 1)
    );
}

#[test]
fn a_checkpoint_on_a_full_disk_fails_without_losing_the_wal_and_succeeds_later() {
    let Some(fs) = Tmpfs::mount("full-checkpoint") else {
        return;
    };
    let path = fs.0.path().join(DB_FILE);
    let writer = schema::open_writer(&path, Synchronous::Normal).unwrap();
    writer.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    // About 2 MiB in the WAL that the database file has no room for yet.
    writer
        .execute_batch(
            "CREATE TABLE t(x);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
             INSERT INTO t SELECT randomblob(1000) FROM n;",
        )
        .unwrap();
    let filler = fs.fill();
    let conn = schema::open_checkpointer(&path).unwrap();
    let counters = stats::Counters::default();
    assert!(checkpoint::passive(&conn, &counters).is_none());
    assert_eq!(counters.snapshot().checkpoint_failures, 1);
    let reader = schema::open_reader(&path).unwrap();
    let rows: i64 = reader
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 2000, "every committed row is still readable");

    std::fs::remove_file(filler).unwrap();
    let done = checkpoint::passive(&conn, &counters).expect("a checkpoint with room");
    assert_eq!(done.copied, done.wal, "the whole WAL copied back");
}

#[test]
fn a_database_from_before_the_identity_marker_opens_and_is_stamped() {
    let app_id = |dir: &TempDir| -> i32 {
        side(dir)
            .pragma_query_value(None, "application_id", |r| r.get(0))
            .unwrap()
    };
    let dir = TempDir::new("unstamped");
    let (store, done, _) = open_ok(&config(&dir));
    send(&store, &done, "alice", "bob", "c1");
    drop(store);
    assert_eq!(
        app_id(&dir),
        schema::APPLICATION_ID,
        "a new database is stamped"
    );
    side(&dir).pragma_update(None, "application_id", 0).unwrap();
    let (store, done, initial) = open_ok(&config(&dir));
    assert_eq!(initial.heads["bob"], 1);
    assert_eq!(send(&store, &done, "alice", "bob", "c2").sender_seq, 2);
    assert_eq!(app_id(&dir), schema::APPLICATION_ID);
}

#[test]
fn a_file_that_is_not_courier_s_is_refused_with_its_bytes_unchanged() {
    let dir = TempDir::new("foreign");
    std::fs::create_dir_all(dir.path()).unwrap();
    let db = dir.path().join(DB_FILE);
    side(&dir)
        .execute_batch("CREATE TABLE notes(text); INSERT INTO notes VALUES ('mine');")
        .unwrap();
    let before = std::fs::read(&db).unwrap();
    match open(&config(&dir), noop()) {
        Err(StoreError::Foreign { path, why }) => {
            assert_eq!(path, db.display().to_string());
            assert!(why.contains("courier's tables"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(std::fs::read(&db).unwrap(), before);
    std::fs::write(
        &db,
        b"SQLite format 2\0 and then some bytes that are not a database",
    )
    .unwrap();
    assert!(matches!(
        open(&config(&dir), noop()),
        Err(StoreError::Foreign { .. })
    ));
}
