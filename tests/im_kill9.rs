//! Guarantee 1 under repeated crashes: 20 rounds of steady load from several senders, each
//! ended by `kill -9` at a point set by how many `sent`s have arrived (never by a clock),
//! then a restart on the same data folder. After every restart, every inbox is read from
//! seq 0 and checked: every message that got a `sent` is there for its sender (at the seq
//! the `sent` gave) and its recipient (same mid), seqs run 1..=head with no gap, and no
//! `(sender, cid)` is stored twice. Senders resend what had no answer (same cid, so a
//! message committed before its `sent` could go out is found, not stored again).

mod im_support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use im_support::*;
use serde_json::json;

const FLAGS: &[&str] = &["--rate", "1000000", "--ack-window", "1000000"];
const USERS: [&str; 4] = ["u0", "u1", "u2", "u3"];
/// u3 only receives.
const SENDERS: usize = 3;
const CYCLES: usize = 20;
/// Sends each sender keeps unanswered at once.
const IN_FLIGHT: usize = 32;
/// How long a sender waits on a silent connection before it gives up: a kill ends the
/// connection at once, so this only bounds a hang, and is generous for a loaded machine.
const SILENCE: Duration = Duration::from_secs(30);

/// One sender's record across crashes.
#[derive(Default)]
struct Sender {
    user: &'static str,
    /// cid → (mid, sender seq, recipient), for every `sent` received.
    acked: BTreeMap<String, (u64, u64, &'static str)>,
    /// Sent, not answered before a crash: resent first after the restart.
    unanswered: Vec<(String, &'static str)>,
    /// Every cid ever sent, with its recipient.
    issued: HashMap<String, &'static str>,
    next: u64,
    /// Resends of cids left unanswered by a crash.
    resent: u64,
}

impl Sender {
    fn new(index: usize) -> Sender {
        Sender {
            user: USERS[index],
            ..Sender::default()
        }
    }

    /// A new cid and its recipient, never the sender, spread over the other users.
    fn fresh(&mut self, index: usize) -> (String, &'static str) {
        let n = self.next;
        self.next += 1;
        let to = USERS[(index + 1 + (n % 3) as usize) % USERS.len()];
        let cid = format!("{}-{n}", self.user);
        self.issued.insert(cid.clone(), to);
        (cid, to)
    }

    /// Sends until the connection dies (the kill), or, with `drain`, until everything
    /// unanswered has its `sent`. Counts each `sent` into `acks`.
    fn run(&mut self, index: usize, mut client: Client, acks: &AtomicU64, drain: bool) {
        let mut resend: Vec<(String, &'static str)> = std::mem::take(&mut self.unanswered)
            .into_iter()
            .rev()
            .collect();
        self.resent += resend.len() as u64;
        let mut waiting: HashMap<String, &'static str> = HashMap::new();
        loop {
            while waiting.len() < IN_FLIGHT {
                let (cid, to) = match resend.pop() {
                    Some(again) => again,
                    None if drain => break,
                    None => self.fresh(index),
                };
                let request =
                    json!({"type": "send", "cid": cid, "to": format!("user:{to}"), "body": cid});
                let queued = client.try_queue(request);
                waiting.insert(cid, to);
                if !queued {
                    break;
                }
            }
            if drain && waiting.is_empty() {
                return;
            }
            if !client.try_flush() {
                break;
            }
            match client.recv(SILENCE) {
                Some(Frame::Json(reply)) if reply["type"] == "sent" => {
                    let cid = reply["cid"].as_str().expect("cid").to_owned();
                    let to = waiting.remove(&cid).expect("a `sent` for a cid in flight");
                    let previous = self.acked.insert(cid, (mid(&reply), seq(&reply), to));
                    if let Some((m, s, _)) = previous {
                        // A resend after a crash: the original, whatever the server said.
                        assert_eq!((m, s), (mid(&reply), seq(&reply)), "{reply}");
                    }
                    acks.fetch_add(1, Ordering::Relaxed);
                }
                // Pushes of what the others send this user.
                Some(Frame::Json(msg)) if msg["type"] == "msg" => {}
                Some(Frame::Json(other)) => panic!("{}: unexpected {other}", self.user),
                Some(Frame::Close(_) | Frame::Ended) => break,
                Some(_) => {}
                // Silence while the server is still up would be a hang: the main thread
                // sees the sender end without the count reached and fails the test.
                None => break,
            }
        }
        assert!(!drain, "{}: the connection ended while draining", self.user);
        resend.reverse();
        self.unanswered = waiting.into_iter().chain(resend).collect();
        self.unanswered.sort();
    }
}

/// Reads every inbox from seq 0 and checks it against what the senders learned. Returns
/// the number of entries read (for the figure).
fn check(server: &Server, senders: &[Sender]) -> usize {
    // cid → (mid, seq) as stored, per inbox owner.
    let mut inboxes: HashMap<&str, HashMap<String, (u64, u64)>> = HashMap::new();
    let mut read = 0;
    for user in USERS {
        let mut client = server.connect(user);
        let (msgs, synced) = client.sync_all(0, None);
        let head = synced["head"].as_u64().expect("head");
        assert!(
            msgs.iter().map(seq).eq(1..=head),
            "{user}: seqs are not 1..={head}, first gap after {:?}",
            msgs.iter()
                .map(seq)
                .collect::<Vec<_>>()
                .windows(2)
                .find(|w| w[1] != w[0] + 1)
        );
        let mut stored = HashMap::new();
        let mut mids = HashSet::new();
        for msg in &msgs {
            let cid = msg["body"].as_str().expect("body").to_owned();
            let from = msg["from"].as_str().expect("from");
            assert!(cid.starts_with(&format!("{from}-")), "{msg}");
            assert!(mids.insert(mid(msg)), "{user}: mid twice: {msg}");
            assert!(
                stored.insert(cid, (mid(msg), seq(msg))).is_none(),
                "{user}: ({from}, cid) stored twice: {msg}"
            );
        }
        read += msgs.len();
        inboxes.insert(user, stored);
    }
    for sender in senders {
        for (cid, &(m, s, to)) in &sender.acked {
            let own = inboxes[sender.user].get(cid);
            assert_eq!(own, Some(&(m, s)), "{cid} acked, not in its sender's inbox");
            let theirs = inboxes[to].get(cid).map(|&(m, _)| m);
            assert_eq!(theirs, Some(m), "{cid} acked, not in {to}'s inbox");
        }
    }
    // Nothing stored that was never sent, and each message in exactly its two inboxes.
    let issued: HashMap<&str, &str> = senders
        .iter()
        .flat_map(|s| s.issued.iter().map(|(c, t)| (c.as_str(), *t)))
        .collect();
    for (user, stored) in &inboxes {
        for cid in stored.keys() {
            let to = issued.get(cid.as_str()).expect("an entry nobody sent");
            let from = cid.split('-').next().unwrap();
            assert!(*user == from || user == to, "{cid} in {user}'s inbox");
            let other = if *user == from { *to } else { from };
            assert_eq!(
                inboxes[other].get(cid).map(|e| e.0),
                Some(stored[cid].0),
                "{cid} stored for one side only"
            );
        }
    }
    read
}

#[test]
fn twenty_kill_9_cycles_under_load_lose_and_duplicate_nothing() {
    let started = Instant::now();
    let dir = DataDir::new("kill9-cycles");
    let mut senders: Vec<Sender> = (0..SENDERS).map(Sender::new).collect();
    // Where each kill falls, in `sent`s since the last restart: spread, reproducible.
    let mut lcg = 0x2545_f491_4f6c_dd1d_u64;
    let mut next_kill = || {
        lcg = lcg
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        100 + (lcg >> 33) % 400
    };
    let mut read = 0;
    for cycle in 0..CYCLES {
        let mut server = Server::start_in(&dir.path, FLAGS);
        if cycle > 0 {
            read += check(&server, &senders);
        }
        let acks = Arc::new(AtomicU64::new(0));
        let target = next_kill();
        // Every sender is connected before any is counted, so no kill can come between
        // one sender's first `sent` and another's handshake.
        let clients: Vec<Client> = senders.iter().map(|s| server.connect(s.user)).collect();
        let running: Vec<_> = senders
            .drain(..)
            .zip(clients)
            .enumerate()
            .map(|(i, (mut sender, client))| {
                let acks = acks.clone();
                std::thread::spawn(move || {
                    sender.run(i, client, &acks, false);
                    sender
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        while acks.load(Ordering::Relaxed) < target {
            assert!(
                Instant::now() < deadline && running.iter().all(|t| !t.is_finished()),
                "cycle {cycle}: the load stalled at {} of {target} `sent`s",
                acks.load(Ordering::Relaxed)
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        server.kill9();
        senders = running
            .into_iter()
            .map(|t| t.join().expect("sender thread"))
            .collect();
    }
    let server = Server::start_in(&dir.path, FLAGS);
    read += check(&server, &senders);
    // Last, every cid without an answer once more: then each is stored exactly once.
    let acks = AtomicU64::new(0);
    for (i, sender) in senders.iter_mut().enumerate() {
        let client = server.connect(sender.user);
        sender.run(i, client, &acks, true);
    }
    read += check(&server, &senders);
    let acked: usize = senders.iter().map(|s| s.acked.len()).sum();
    let resent: u64 = senders.iter().map(|s| s.resent).sum();
    assert!(resent > 0, "no kill ever came with a send in flight");
    let issued: usize = senders.iter().map(|s| s.issued.len()).sum();
    assert_eq!(acked, issued, "every cid answered after the last resend");
    eprintln!(
        "kill -9: {CYCLES} cycles, {acked} messages acknowledged, {resent} resends of cids \
         a crash left unanswered, lost 0, duplicates 0, {read} inbox entries checked, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
