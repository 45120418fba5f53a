//! The pure half of `courier-bench im`: the stamp every message body carries, and the
//! exactly-once accounting run over what every user saw once the load has stopped.
//!
//! Nothing here touches a socket or a clock, so the rules that decide whether a run lost
//! messages are unit-tested on their own.

use std::collections::HashMap;
use std::fmt::Write as _;

/// First field of every stamp: which format, so a body from anything else is told apart.
const TAG: &str = "cb1";
/// Fills the body after the stamp up to `--size`.
const PAD: char = '-';
/// Problems spelled out in the report; the counters hold the rest.
const MAX_PROBLEMS: usize = 8;

/// What the sender writes at the front of a body: `cb1.<run>.<sender>.<n>.<t_ns>.`,
/// then padding. `run` tells this run's messages from earlier runs' on the same data;
/// `(sender, n)` names the message (n is the sender's count of sends, from 1, which is
/// also the counter in its cid); `t_ns` is the send time, nanoseconds on the bench's
/// clock, from which the recipient measures send → `msg` latency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub run: u32,
    pub sender: u32,
    pub n: u64,
    pub t_ns: u64,
}

impl Stamp {
    /// Writes the body into `out` (cleared first): the stamp, then padding up to `size`
    /// bytes. A body is never shorter than its stamp (about 30 to 45 bytes).
    pub fn write(&self, size: usize, out: &mut String) {
        out.clear();
        let _ = write!(
            out,
            "{TAG}.{:08x}.{}.{}.{}.",
            self.run, self.sender, self.n, self.t_ns
        );
        while out.len() < size {
            out.push(PAD);
        }
    }

    /// The stamp at the front of `body`; `None` when the body is not one of ours.
    pub fn parse(body: &str) -> Option<Stamp> {
        let mut fields = body.strip_prefix(TAG)?.strip_prefix('.')?.splitn(5, '.');
        let run = fields.next()?;
        if run.len() != 8 {
            return None;
        }
        let run = u32::from_str_radix(run, 16).ok()?;
        let sender = fields.next()?.parse().ok()?;
        let n = fields.next()?.parse().ok()?;
        let t_ns = fields.next()?.parse().ok()?;
        // The rest is padding; a missing final '.' means the body was cut short.
        let rest = fields.next()?;
        if !rest.bytes().all(|b| b == PAD as u8) {
            return None;
        }
        Some(Stamp {
            run,
            sender,
            n,
            t_ns,
        })
    }
}

/// What an inbox entry (pushed or synced) turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Message `n` of user `sender` in this run (its `from` agreed with the stamp).
    Ours { sender: u32, n: u64 },
    /// Not from this run: another client, an earlier run, a server-made entry.
    Foreign,
    /// This run's stamp that contradicts the entry (`from` is not the stamped sender) or
    /// a damaged body.
    Corrupt,
}

impl Origin {
    /// Classifies an entry of `kind` from user `from` with `body`. `user_index` maps a
    /// user id to its bench index (`None` for ids the bench did not make).
    pub fn of(
        run: u32,
        kind: &str,
        from: &str,
        body: &str,
        user_index: impl Fn(&str) -> Option<u32>,
    ) -> (Origin, Option<Stamp>) {
        match Stamp::parse(body) {
            Some(stamp) if stamp.run == run => {
                if kind == "text" && user_index(from) == Some(stamp.sender) {
                    (
                        Origin::Ours {
                            sender: stamp.sender,
                            n: stamp.n,
                        },
                        Some(stamp),
                    )
                } else {
                    (Origin::Corrupt, None)
                }
            }
            _ if body.starts_with(TAG) && body.get(4..12) == Some(run_hex(run).as_str()) => {
                (Origin::Corrupt, None)
            }
            _ => (Origin::Foreign, None),
        }
    }
}

fn run_hex(run: u32) -> String {
    format!("{run:08x}")
}

/// One message a user sent: to whom, and the inbox seq its `sent` gave (`None` while
/// there was none: still in flight at the end, or refused).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendRec {
    pub to: u32,
    pub at_ns: u64,
    pub seq: Option<u64>,
}

/// An entry of the final sync of a user's inbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    /// `from` is this user: one of its own messages.
    pub own: bool,
    pub origin: Origin,
}

/// A user's inbox as replayed by `sync` from the run's starting cursor after the drain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inbox {
    /// The user's latest seq, from the last `synced`.
    pub head: u64,
    /// Every entry the replay handed out, in the order it did.
    pub entries: Vec<Entry>,
}

/// Everything one user saw during a run.
#[derive(Clone, Debug, Default)]
pub struct UserLog {
    /// `welcome.inbox_seq`: the run starts after it.
    pub start: u64,
    /// Message n is `sends[n - 1]`.
    pub sends: Vec<SendRec>,
    /// The entries pushed live, once each after dedupe by seq, in seq order.
    pub live: Vec<(u64, Origin)>,
    /// The live session's cursor when the verification began.
    pub live_cursor: u64,
    /// `msg` pushes dropped by the dedupe (re-pushes of entries already held).
    pub repushes: u64,
    /// `None` when the verification sync did not finish (connection lost, timeout).
    pub inbox: Option<Inbox>,
}

/// The verdict. Every counter but `confirmed`, `delivered_once`, `stored_unconfirmed`,
/// `delivered_unconfirmed`, `foreign`, `repushes` and the user counts is a fault.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Check {
    pub users: u64,
    /// Users whose inbox the final sync replayed to its head.
    pub verified_users: u64,
    pub sends: u64,
    /// Sends whose `sent` came back: stored, so owed to the recipient.
    pub confirmed: u64,
    /// Confirmed and displayed at the recipient exactly once.
    pub delivered_once: u64,
    /// Confirmed and never displayed at the recipient by the end of the drain.
    pub not_delivered: u64,
    /// Displays beyond the first of one message (it was stored at two seqs).
    pub duplicate_displays: u64,
    /// Confirmed and absent from the recipient's synced inbox.
    pub missing_from_inbox: u64,
    /// Confirmed and absent from the sender's own inbox at the seq its `sent` named.
    pub missing_from_sender: u64,
    /// Occurrences beyond the first of one message in one inbox.
    pub inbox_duplicates: u64,
    /// Seqs between the starting cursor and the head that the sync did not hand out.
    pub gaps: u64,
    /// Verified users whose live cursor stopped short of their head.
    pub behind: u64,
    /// Entries that contradict the rest: a message at the wrong user, a push and the
    /// synced inbox naming different messages at one seq, a `sent` seq that holds
    /// something else, a damaged stamp.
    pub mismatched: u64,
    /// No `sent` came back, yet the message was stored (allowed: at-least-once; the
    /// sender would have resent the cid and got the same `sent`).
    pub stored_unconfirmed: u64,
    /// Of those, the ones the recipient displayed.
    pub delivered_unconfirmed: u64,
    /// Entries not from this run.
    pub foreign: u64,
    /// `msg` pushes dropped by the dedupe by seq.
    pub repushes: u64,
    /// The first few faults, spelled out.
    pub problems: Vec<String>,
}

impl Check {
    /// True when nothing was lost, duplicated or contradicted and every user's inbox was
    /// verified.
    pub fn passed(&self) -> bool {
        self.faults() == 0 && self.verified_users == self.users
    }

    pub fn faults(&self) -> u64 {
        self.not_delivered
            + self.duplicate_displays
            + self.missing_from_inbox
            + self.missing_from_sender
            + self.inbox_duplicates
            + self.gaps
            + self.behind
            + self.mismatched
    }

    fn problem(&mut self, what: impl FnOnce() -> String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(what());
        }
    }
}

/// Per message of the run: how often it was seen where.
#[derive(Clone, Copy, Default)]
struct Seen {
    live: u32,
    inbox: u32,
    own: u32,
}

/// Runs the accounting over every user's log; `logs[i]` is user i's (`None`: it never
/// got as far as a `welcome`). `name` gives user i's id for the problem lines.
pub fn check(logs: &[Option<UserLog>], name: impl Fn(u32) -> String) -> Check {
    let mut c = Check {
        users: logs.len() as u64,
        ..Check::default()
    };
    let mut seen: Vec<Vec<Seen>> = logs
        .iter()
        .map(|l| vec![Seen::default(); l.as_ref().map_or(0, |l| l.sends.len())])
        .collect();
    // Message (sender, n) as a valid reference: it exists and was sent to `to`.
    let sent_to = |s: u32, n: u64, to: u32| -> bool {
        let rec = logs
            .get(s as usize)
            .and_then(Option::as_ref)
            .and_then(|l| l.sends.get((n as usize).wrapping_sub(1)));
        rec.is_some_and(|r| r.to == to)
    };

    for (r, log) in logs.iter().enumerate() {
        let Some(log) = log else { continue };
        let r = r as u32;
        c.repushes += log.repushes;
        c.sends += log.sends.len() as u64;
        for (seq, origin) in &log.live {
            match *origin {
                Origin::Ours { sender, n } if sent_to(sender, n, r) => {
                    seen[sender as usize][n as usize - 1].live += 1;
                }
                Origin::Ours { sender, n } => {
                    c.mismatched += 1;
                    c.problem(|| {
                        format!(
                            "{} was pushed seq {seq} claiming to be {}'s message #{n}, which was \
                             not sent to it",
                            name(r),
                            name(sender)
                        )
                    });
                }
                Origin::Foreign => c.foreign += 1,
                Origin::Corrupt => {
                    c.mismatched += 1;
                    c.problem(|| format!("{}'s push at seq {seq} has a damaged stamp", name(r)));
                }
            }
        }
        let Some(inbox) = &log.inbox else { continue };
        c.verified_users += 1;
        if log.live_cursor < inbox.head {
            c.behind += 1;
            c.problem(|| {
                format!(
                    "{}'s live stream stopped at seq {} of {}",
                    name(r),
                    log.live_cursor,
                    inbox.head
                )
            });
        }
        let live_at: HashMap<u64, Origin> = log.live.iter().copied().collect();
        let mut expect = log.start + 1;
        for e in &inbox.entries {
            if e.seq > expect {
                c.gaps += e.seq - expect;
                c.problem(|| {
                    format!(
                        "{}'s inbox skips seqs {expect}..={} (from the sync after the run)",
                        name(r),
                        e.seq - 1
                    )
                });
            } else if e.seq < expect {
                c.mismatched += 1;
                c.problem(|| {
                    format!(
                        "{}'s inbox replay went back to seq {} after {}",
                        name(r),
                        e.seq,
                        expect - 1
                    )
                });
                continue;
            }
            expect = e.seq + 1;
            if let Some(pushed) = live_at.get(&e.seq) {
                if *pushed != e.origin && !e.own {
                    c.mismatched += 1;
                    c.problem(|| {
                        format!(
                            "{}'s seq {}: the push and the synced inbox hold different messages",
                            name(r),
                            e.seq
                        )
                    });
                }
            }
            match e.origin {
                Origin::Ours { sender, n } if e.own && sender == r => {
                    let rec = log.sends.get((n as usize).wrapping_sub(1));
                    match rec.map(|rec| rec.seq) {
                        Some(Some(q)) if q == e.seq => seen[r as usize][n as usize - 1].own += 1,
                        Some(None) => seen[r as usize][n as usize - 1].own += 1,
                        Some(Some(q)) => {
                            c.mismatched += 1;
                            c.problem(|| {
                                format!(
                                    "{}'s message #{n} is at seq {} of its inbox, but its `sent` \
                                     said seq {q}",
                                    name(r),
                                    e.seq
                                )
                            });
                        }
                        None => {
                            c.mismatched += 1;
                            c.problem(|| {
                                format!(
                                    "{}'s inbox holds a message #{n} it never sent (seq {})",
                                    name(r),
                                    e.seq
                                )
                            });
                        }
                    }
                }
                Origin::Ours { sender, n } if !e.own && sent_to(sender, n, r) => {
                    seen[sender as usize][n as usize - 1].inbox += 1;
                }
                Origin::Ours { sender, n } => {
                    c.mismatched += 1;
                    c.problem(|| {
                        format!(
                            "{}'s inbox seq {} holds {}'s message #{n}, which was not sent to it",
                            name(r),
                            e.seq,
                            name(sender)
                        )
                    });
                }
                Origin::Foreign => c.foreign += 1,
                Origin::Corrupt => {
                    c.mismatched += 1;
                    c.problem(|| format!("{}'s inbox seq {} has a damaged stamp", name(r), e.seq));
                }
            }
        }
        if expect <= inbox.head {
            c.gaps += inbox.head + 1 - expect;
            c.problem(|| {
                format!(
                    "{}'s inbox sync ended at seq {} but its head is {}",
                    name(r),
                    expect - 1,
                    inbox.head
                )
            });
        }
    }

    for (s, log) in logs.iter().enumerate() {
        let Some(log) = log else { continue };
        let sender_verified = log.inbox.is_some();
        for (i, rec) in log.sends.iter().enumerate() {
            let n = i as u64 + 1;
            let seen = seen[s][i];
            let to = logs.get(rec.to as usize).and_then(Option::as_ref);
            let to_verified = to.is_some_and(|l| l.inbox.is_some());
            if seen.live > 1 {
                c.duplicate_displays += u64::from(seen.live - 1);
                c.problem(|| {
                    format!(
                        "{}'s message #{n} was displayed {} times at {}",
                        name(s as u32),
                        seen.live,
                        name(rec.to)
                    )
                });
            }
            if seen.inbox > 1 {
                c.inbox_duplicates += u64::from(seen.inbox - 1);
                c.problem(|| {
                    format!(
                        "{}'s message #{n} is stored {} times in {}'s inbox",
                        name(s as u32),
                        seen.inbox,
                        name(rec.to)
                    )
                });
            }
            let Some(seq) = rec.seq else {
                if seen.live + seen.inbox + seen.own > 0 {
                    c.stored_unconfirmed += 1;
                    if seen.live > 0 {
                        c.delivered_unconfirmed += 1;
                    }
                }
                continue;
            };
            c.confirmed += 1;
            match seen.live {
                0 => {
                    c.not_delivered += 1;
                    c.problem(|| {
                        format!(
                            "{}'s message #{n} to {} got its `sent` (seq {seq}) but was never \
                             displayed at {}",
                            name(s as u32),
                            name(rec.to),
                            name(rec.to)
                        )
                    });
                }
                1 => c.delivered_once += 1,
                _ => {}
            }
            if to_verified && seen.inbox == 0 {
                c.missing_from_inbox += 1;
                c.problem(|| {
                    format!(
                        "{}'s message #{n} got its `sent` but is not in {}'s inbox",
                        name(s as u32),
                        name(rec.to)
                    )
                });
            }
            if sender_verified && seen.own == 0 {
                c.missing_from_sender += 1;
                c.problem(|| {
                    format!(
                        "{}'s message #{n} got `sent` seq {seq}, but that seq of its own inbox \
                         does not hold it",
                        name(s as u32)
                    )
                });
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: u32 = 0xabcd_0123;

    fn stamp(sender: u32, n: u64) -> Stamp {
        Stamp {
            run: RUN,
            sender,
            n,
            t_ns: 1_234_567,
        }
    }

    #[test]
    fn stamp_round_trip_and_padding() {
        let mut body = String::new();
        let s = stamp(42, 7);
        s.write(64, &mut body);
        assert_eq!(body.len(), 64);
        assert!(body.starts_with("cb1.abcd0123.42.7.1234567.---"), "{body}");
        assert_eq!(Stamp::parse(&body), Some(s));
        // Smaller than the stamp: the stamp alone.
        s.write(1, &mut body);
        assert_eq!(body, "cb1.abcd0123.42.7.1234567.");
        assert_eq!(Stamp::parse(&body), Some(s));
        let big = Stamp {
            run: u32::MAX,
            sender: u32::MAX,
            n: u64::MAX,
            t_ns: u64::MAX,
        };
        big.write(0, &mut body);
        assert_eq!(Stamp::parse(&body), Some(big));
    }

    #[test]
    fn stamp_rejects_other_bodies() {
        for body in [
            "",
            "hello",
            "cb1",
            "cb1.abcd0123.1.2.3",       // cut before the final '.'
            "cb1.abcd0123.1.2.3.xx",    // wrong padding
            "cb1.abcd012.1.2.3.",       // short run
            "cb1.abcd0123.-1.2.3.",     // negative sender
            "cb2.abcd0123.1.2.3.",      // other format
            "cb1.abcd0123.1.2.3.--.--", // a '.' in the padding
        ] {
            assert_eq!(Stamp::parse(body), None, "{body:?}");
        }
    }

    fn index(id: &str) -> Option<u32> {
        id.strip_prefix('u')?.parse().ok()
    }

    #[test]
    fn origins() {
        let mut body = String::new();
        stamp(3, 9).write(40, &mut body);
        assert_eq!(
            Origin::of(RUN, "text", "u3", &body, index).0,
            Origin::Ours { sender: 3, n: 9 }
        );
        // `from` disagrees with the stamp: the server mixed something up.
        assert_eq!(
            Origin::of(RUN, "text", "u4", &body, index).0,
            Origin::Corrupt
        );
        // Another run's message, or nothing of ours.
        assert_eq!(
            Origin::of(RUN ^ 1, "text", "u3", &body, index).0,
            Origin::Foreign
        );
        assert_eq!(
            Origin::of(RUN, "text", "u3", "hi", index).0,
            Origin::Foreign
        );
        // Our run's tag on a damaged body.
        body.truncate(20);
        assert_eq!(
            Origin::of(RUN, "text", "u3", &body, index).0,
            Origin::Corrupt
        );
    }

    fn name(i: u32) -> String {
        format!("u{i}")
    }

    fn ours(sender: u32, n: u64) -> Origin {
        Origin::Ours { sender, n }
    }

    /// Two users starting at seqs 10 and 20: u0 sends #1 and #2 to u1, u1 sends #1 to u0.
    /// Inboxes: u0 = 11 (own #1), 12 (own #2), 13 (u1 #1); u1 = 21 (u0 #1), 22 (u0 #2),
    /// 23 (own #1).
    fn clean() -> Vec<Option<UserLog>> {
        let rec = |to, seq| SendRec {
            to,
            at_ns: 0,
            seq: Some(seq),
        };
        let u0 = UserLog {
            start: 10,
            sends: vec![rec(1, 11), rec(1, 12)],
            live: vec![(13, ours(1, 1))],
            live_cursor: 13,
            repushes: 1,
            inbox: Some(Inbox {
                head: 13,
                entries: vec![
                    Entry {
                        seq: 11,
                        own: true,
                        origin: ours(0, 1),
                    },
                    Entry {
                        seq: 12,
                        own: true,
                        origin: ours(0, 2),
                    },
                    Entry {
                        seq: 13,
                        own: false,
                        origin: ours(1, 1),
                    },
                ],
            }),
        };
        let u1 = UserLog {
            start: 20,
            sends: vec![rec(0, 23)],
            live: vec![(21, ours(0, 1)), (22, ours(0, 2))],
            live_cursor: 23,
            repushes: 2,
            inbox: Some(Inbox {
                head: 23,
                entries: vec![
                    Entry {
                        seq: 21,
                        own: false,
                        origin: ours(0, 1),
                    },
                    Entry {
                        seq: 22,
                        own: false,
                        origin: ours(0, 2),
                    },
                    Entry {
                        seq: 23,
                        own: true,
                        origin: ours(1, 1),
                    },
                ],
            }),
        };
        vec![Some(u0), Some(u1)]
    }

    #[test]
    fn a_clean_run_passes() {
        let c = check(&clean(), name);
        assert!(c.passed(), "{c:?}");
        assert_eq!(c.sends, 3);
        assert_eq!(c.confirmed, 3);
        assert_eq!(c.delivered_once, 3);
        assert_eq!(c.verified_users, 2);
        // Re-pushes are counted, not faults: at-least-once is allowed.
        assert_eq!(c.repushes, 3);
        assert!(c.problems.is_empty());
    }

    #[test]
    fn a_message_never_pushed_is_lost() {
        let mut logs = clean();
        let u1 = logs[1].as_mut().unwrap();
        u1.live.remove(1);
        u1.live_cursor = 21;
        let c = check(&logs, name);
        assert!(!c.passed());
        assert_eq!(c.not_delivered, 1);
        assert_eq!(c.behind, 1);
        assert!(
            c.problems.iter().any(|p| p.contains("u0's message #2")),
            "{c:?}"
        );
    }

    #[test]
    fn a_message_missing_from_the_inbox_is_a_gap_and_a_loss() {
        let mut logs = clean();
        let inbox = logs[1].as_mut().unwrap().inbox.as_mut().unwrap();
        inbox.entries.remove(0);
        let c = check(&logs, name);
        assert!(!c.passed());
        assert_eq!(c.gaps, 1);
        assert_eq!(c.missing_from_inbox, 1);
        // The live push at 21 had no synced counterpart: caught as the gap.
        assert_eq!(c.not_delivered, 0);
    }

    #[test]
    fn a_sync_that_stops_short_of_the_head_is_a_gap() {
        let mut logs = clean();
        let inbox = logs[0].as_mut().unwrap().inbox.as_mut().unwrap();
        inbox.entries.pop();
        let c = check(&logs, name);
        assert_eq!(c.gaps, 1);
        assert_eq!(c.missing_from_inbox, 1);
        assert!(!c.passed());
    }

    #[test]
    fn a_message_stored_twice_is_a_duplicate_display() {
        let mut logs = clean();
        let u1 = logs[1].as_mut().unwrap();
        u1.live.push((24, ours(0, 1)));
        u1.live_cursor = 24;
        let inbox = u1.inbox.as_mut().unwrap();
        inbox.head = 24;
        inbox.entries.push(Entry {
            seq: 24,
            own: false,
            origin: ours(0, 1),
        });
        let c = check(&logs, name);
        assert!(!c.passed());
        assert_eq!(c.duplicate_displays, 1);
        assert_eq!(c.inbox_duplicates, 1);
        assert_eq!(c.delivered_once, 2);
    }

    #[test]
    fn unconfirmed_messages_may_or_may_not_arrive() {
        // u0's #2 got no `sent` (in flight at the end) but was stored and pushed: fine.
        let mut logs = clean();
        logs[0].as_mut().unwrap().sends[1].seq = None;
        let c = check(&logs, name);
        assert!(c.passed(), "{c:?}");
        assert_eq!(c.confirmed, 2);
        assert_eq!(c.stored_unconfirmed, 1);
        assert_eq!(c.delivered_unconfirmed, 1);
        // Never stored at all: also fine, nothing was promised.
        let mut logs = clean();
        let u0 = logs[0].as_mut().unwrap();
        u0.sends.push(SendRec {
            to: 1,
            at_ns: 0,
            seq: None,
        });
        let c = check(&logs, name);
        assert!(c.passed(), "{c:?}");
        assert_eq!(c.stored_unconfirmed, 0);
    }

    #[test]
    fn contradictions_are_mismatches() {
        // The push at 21 and the synced entry at 21 differ.
        let mut logs = clean();
        logs[1].as_mut().unwrap().live[0].1 = ours(0, 2);
        let c = check(&logs, name);
        assert!(c.mismatched >= 1, "{c:?}");
        assert!(!c.passed());
        // A `sent` seq that holds another message.
        let mut logs = clean();
        logs[0].as_mut().unwrap().sends[0].seq = Some(12);
        let c = check(&logs, name);
        assert!(c.mismatched >= 1 && !c.passed(), "{c:?}");
        // A message pushed to someone it was not sent to.
        let mut logs = clean();
        logs[0].as_mut().unwrap().live.push((14, ours(0, 1)));
        let c = check(&logs, name);
        assert!(c.mismatched >= 1 && !c.passed(), "{c:?}");
    }

    #[test]
    fn foreign_entries_are_counted_not_failed() {
        let mut logs = clean();
        let u0 = logs[0].as_mut().unwrap();
        u0.live.push((14, Origin::Foreign));
        u0.live_cursor = 14;
        let inbox = u0.inbox.as_mut().unwrap();
        inbox.head = 14;
        inbox.entries.push(Entry {
            seq: 14,
            own: false,
            origin: Origin::Foreign,
        });
        let c = check(&logs, name);
        assert!(c.passed(), "{c:?}");
        assert_eq!(c.foreign, 2);
    }

    #[test]
    fn an_unverified_user_fails_the_run() {
        let mut logs = clean();
        logs[1].as_mut().unwrap().inbox = None;
        let c = check(&logs, name);
        assert_eq!(c.verified_users, 1);
        assert_eq!(c.faults(), 0);
        assert!(!c.passed());
        let mut logs = clean();
        logs[1] = None;
        let c = check(&logs, name);
        assert!(!c.passed());
        // u0's two messages to the missing u1 were never displayed.
        assert_eq!(c.not_delivered, 2);
    }
}
