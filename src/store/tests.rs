//! Store tests against real SQLite files in throwaway folders.

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

fn open_ok(config: &StoreConfig) -> (Store, Receiver<Completion>, Initial) {
    open(config, noop()).expect("open")
}

/// Opens with the test gate: the writer takes one `()` per batch before draining the queue.
fn open_held(config: &StoreConfig) -> (Store, Receiver<Completion>, Sender<()>) {
    let (gate_tx, gate_rx) = unbounded();
    let (store, done, _) = open_gated(config, noop(), Some(gate_rx)).expect("open");
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
    let (store, done, _) = open(
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
    let dir = TempDir::new("throughput");
    let mut cfg = config(&dir);
    cfg.synchronous = synchronous;
    cfg.queue = 200_000;
    let (store, done, _) = open_ok(&cfg);
    let users: Vec<String> = (0..1000).map(|i| format!("user{i}")).collect();
    let n = 100_000u64;
    let mut rng = Lcg(1);
    let jobs: Vec<Job> = (0..n)
        .map(|tag| Job::Send {
            tag,
            sender: users[rng.next(users.len())].clone(),
            cid: format!("c{tag}"),
            to: users[rng.next(users.len())].clone(),
            body: "hello, this is a typical short chat message".into(),
            kind: "text".into(),
            ts: 1_700_000_000_000 + tag,
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
        "synchronous={synchronous}: {n} sends in {:.3} s = {:.0}/s; {} batches (sizes {}); commit p50 <= {} us, p99 <= {} us (us: {}); {} checkpoints",
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
                let job = Job::Send {
                    // The tag carries the submit time, so no shared table is needed.
                    tag: start.elapsed().as_nanos() as u64,
                    sender: users[rng.next(users.len())].clone(),
                    cid: format!("c{i}"),
                    to: users[rng.next(users.len())].clone(),
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
