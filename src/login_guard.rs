//! Failed-login throttling at the IM upgrade, per client address.
//!
//! The rule: after `N` failed logins from one address within its window, every upgrade
//! from that address is answered `429` with `Retry-After` until the window ends, whatever
//! token it carries. The window is fixed and starts at the address's first failure; when
//! it ends the address is forgotten and starts again with a full budget. A successful
//! login does not reset the count: a password-spraying client holding one valid token
//! must not be able to launder its failures with it. So the long-run rate is at most `N`
//! failures per window per address (at most `2N` across the moment one window ends and
//! the next begins), and a refused upgrade costs the server no token check at all.
//!
//! The log gets the first failure of an address in a window at once (the operator sees
//! an attack begin without waiting for the window) and then, when the window ends, one
//! summary line with what it held, so a flood of forged tokens is a couple of lines per
//! address per window instead of one per attempt.
//!
//! Sans-IO, like the protocol cores: no clock, no thread, no I/O. The reactor passes its
//! monotonic milliseconds to every call, calls [`LoginGuard::admit`] before the token
//! check and [`LoginGuard::failed`] when the check fails, and drains
//! [`LoginGuard::summaries`] at [`LoginGuard::next_deadline`]. The address given is
//! already the key: the caller maps an IPv6 address to its /64 and an IPv4-mapped one to
//! IPv4, or one subscriber would have 2^64 budgets.
//!
//! ```
//! use courier::login_guard::LoginGuard;
//!
//! let mut guard = LoginGuard::new(2, 60_000, 65_536);
//! let ip = "192.0.2.7".parse().unwrap();
//! assert_eq!(guard.admit(ip, 0), Ok(()));
//! assert!(guard.failed(ip, 0)); // the first failure: log it now
//! assert!(!guard.failed(ip, 10)); // counted, summarised later
//! assert_eq!(guard.admit(ip, 1_000), Err(59)); // 429, Retry-After: 59
//! assert!(guard.summaries(59_999).is_empty()); // the window is still running
//! let summaries = guard.summaries(60_000);
//! assert_eq!((summaries[0].failures, summaries[0].refused), (2, 1));
//! assert_eq!(guard.admit(ip, 60_000), Ok(()));
//! ```

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

/// What happened in one address's window, for one log line when the window ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    /// The address (as keyed by the caller). `None` stands for every address that failed
    /// while the table was full, counted together (see [`LoginGuard::new`]).
    pub client: Option<IpAddr>,
    /// Failed logins in the window, including the first one, which was logged at once.
    pub failures: u64,
    /// Upgrades refused with `429` in the window.
    pub refused: u64,
}

struct Entry {
    window_end: u64,
    failures: u64,
    refused: u64,
}

impl Entry {
    /// Only the first failure was logged; a window that held nothing more needs no line.
    fn summary(&self, client: Option<IpAddr>) -> Option<Summary> {
        (self.failures > 1 || self.refused > 0).then_some(Summary {
            client,
            failures: self.failures,
            refused: self.refused,
        })
    }
}

pub struct LoginGuard {
    budget: u64,
    window_ms: u64,
    max_tracked: usize,
    entries: HashMap<IpAddr, Entry>,
    /// Every tracked address once, in the order its window ends. Windows all have the same
    /// length and start at the (never decreasing) `now` of their first failure, so the
    /// order of creation is the order of expiry: a FIFO, with no heap and no stale items.
    expiry: VecDeque<(u64, IpAddr)>,
    /// Failures of addresses that found the table full, counted together in a window of
    /// their own, so that even then the log stays at a couple of lines per window.
    untracked: Option<Entry>,
    /// Summaries of windows that ended, waiting for [`LoginGuard::summaries`]. Expiry is
    /// done in every call (so an address whose window ended always starts afresh), and a
    /// call that is not `summaries` has nowhere else to put them. They count against
    /// `max_tracked`, so a caller that never drains them cannot make memory grow.
    ready: Vec<Summary>,
    /// The aggregate's ended windows, merged into one if nobody drained them in between.
    ready_untracked: Option<Summary>,
    /// The latest `now` seen. A `now` from the past is taken as this one, which keeps
    /// `expiry` in order and a window from being reopened by a clock that misbehaves.
    last_now: u64,
}

impl LoginGuard {
    /// `failures_per_window` failed logins per address per `window_ms`; 0 turns the guard
    /// off (every upgrade is admitted, every failure logged, nothing kept).
    ///
    /// At most `max_tracked` addresses are kept (summaries waiting to be drained count
    /// too). When the table is full, a new address is not tracked: its upgrades are
    /// admitted and its failures are counted with the other untracked ones in one
    /// aggregate (logged once per window). Nothing already tracked is evicted. The
    /// alternatives are worse:
    /// - evicting (say, the window that ends soonest) would let an attacker holding many
    ///   addresses (an IPv6 /48 is 65,536 /64s) wipe the record of the address it is
    ///   actually attacking from, by failing once from each of `max_tracked` others;
    /// - refusing untracked addresses (failing closed) would lock every legitimate new
    ///   user out for as long as someone keeps the table full.
    ///
    /// Failing open for new addresses only costs a token check (a MAC over a few hundred
    /// bytes) per attempt, which the server answered at thousands per second before any
    /// throttle; the log stays bounded through the aggregate, and the table empties by
    /// itself within one window of the attack stopping.
    pub fn new(failures_per_window: u32, window_ms: u64, max_tracked: usize) -> LoginGuard {
        LoginGuard {
            budget: u64::from(failures_per_window),
            // A zero window would expire each failure as it is counted: no throttle at all.
            window_ms: window_ms.max(1),
            max_tracked,
            entries: HashMap::new(),
            expiry: VecDeque::new(),
            untracked: None,
            ready: Vec::new(),
            ready_untracked: None,
            last_now: 0,
        }
    }

    pub fn enabled(&self) -> bool {
        self.budget > 0
    }

    /// Whether an upgrade from `client` may go on to the token check. `Err` carries the
    /// seconds until the address's window ends (at least 1), for `Retry-After`; the caller
    /// answers `429` and does not look at the token.
    pub fn admit(&mut self, client: IpAddr, now_ms: u64) -> Result<(), u64> {
        if !self.enabled() {
            return Ok(());
        }
        let now = self.advance(now_ms);
        match self.entries.get_mut(&client) {
            Some(entry) if entry.failures >= self.budget => {
                entry.refused = entry.refused.saturating_add(1);
                // Rounded up: a client that waits exactly this long finds the window over.
                Err(entry.window_end.saturating_sub(now).div_ceil(1000).max(1))
            }
            _ => Ok(()),
        }
    }

    /// Records a failed login from `client`. True when the caller should log this one
    /// now: the first failure of the address in its window (or, for untracked addresses,
    /// the first of theirs in the aggregate's window). The others are counted for the
    /// summary.
    #[must_use = "the first failure of a window is logged only if the caller logs it"]
    pub fn failed(&mut self, client: IpAddr, now_ms: u64) -> bool {
        if !self.enabled() {
            return true;
        }
        let now = self.advance(now_ms);
        if let Some(entry) = self.entries.get_mut(&client) {
            entry.failures = entry.failures.saturating_add(1);
            return false;
        }
        let window_end = now.saturating_add(self.window_ms);
        if self.entries.len() + self.ready.len() < self.max_tracked {
            self.entries.insert(
                client,
                Entry {
                    window_end,
                    failures: 1,
                    refused: 0,
                },
            );
            self.expiry.push_back((window_end, client));
            return true;
        }
        match &mut self.untracked {
            Some(aggregate) => {
                aggregate.failures = aggregate.failures.saturating_add(1);
                false
            }
            None => {
                self.untracked = Some(Entry {
                    window_end,
                    failures: 1,
                    refused: 0,
                });
                true
            }
        }
    }

    /// One summary for each window that has ended with something unlogged in it (more
    /// failures than the first, or refusals), at most one per address per window; the
    /// addresses whose windows ended are forgotten. Costs what expired, not what is
    /// tracked.
    #[must_use = "a summary not logged is lost"]
    pub fn summaries(&mut self, now_ms: u64) -> Vec<Summary> {
        if !self.enabled() {
            return Vec::new();
        }
        self.advance(now_ms);
        // After a flood the table is mostly empty again: give the memory back rather than
        // hold the high-water mark for the life of the process.
        let len = self.entries.len();
        if self.entries.capacity() > 4 * len.max(256) {
            self.entries.shrink_to(2 * len);
            self.expiry.shrink_to(2 * len);
        }
        let mut summaries = std::mem::take(&mut self.ready);
        summaries.extend(self.ready_untracked.take());
        summaries
    }

    /// Every summary there is, windows still running included, and forgets everything:
    /// for a server that stops, whose windows would otherwise end unreported.
    #[must_use = "a summary not logged is lost"]
    pub fn finish(&mut self) -> Vec<Summary> {
        let mut summaries = self.summaries(self.last_now);
        for (_, client) in self.expiry.drain(..) {
            if let Some(entry) = self.entries.remove(&client) {
                summaries.extend(entry.summary(Some(client)));
            }
        }
        summaries.extend(self.untracked.take().and_then(|u| u.summary(None)));
        summaries
    }

    /// When [`LoginGuard::summaries`] next has something to do: the end of the earliest
    /// window, or the latest `now` seen if summaries are already waiting.
    pub fn next_deadline(&self) -> Option<u64> {
        if !self.ready.is_empty() || self.ready_untracked.is_some() {
            return Some(self.last_now);
        }
        let tracked = self.expiry.front().map(|&(at, _)| at);
        let untracked = self.untracked.as_ref().map(|u| u.window_end);
        match (tracked, untracked) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Addresses with a window running (for a gauge, and the tests).
    pub fn tracked(&self) -> usize {
        self.entries.len()
    }

    /// Moves the clock to `now_ms` (never back) and retires every window that has ended,
    /// so each call sees only running windows. Amortised O(1): each address is queued
    /// once and dequeued once.
    fn advance(&mut self, now_ms: u64) -> u64 {
        let now = now_ms.max(self.last_now);
        self.last_now = now;
        while let Some(&(window_end, client)) = self.expiry.front() {
            if window_end > now {
                break;
            }
            self.expiry.pop_front();
            if let Some(entry) = self.entries.remove(&client) {
                self.ready.extend(entry.summary(Some(client)));
            }
        }
        if self.untracked.as_ref().is_some_and(|u| u.window_end <= now) {
            let ended = self.untracked.take().and_then(|u| u.summary(None));
            if let Some(ended) = ended {
                match &mut self.ready_untracked {
                    Some(waiting) => {
                        waiting.failures = waiting.failures.saturating_add(ended.failures);
                        waiting.refused = waiting.refused.saturating_add(ended.refused);
                    }
                    None => self.ready_untracked = Some(ended),
                }
            }
        }
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    const MINUTE: u64 = 60_000;

    /// Fails `n` logins from `client` at `now`, each after an admitted upgrade.
    fn fail(guard: &mut LoginGuard, client: IpAddr, now: u64, n: u32) {
        for _ in 0..n {
            assert_eq!(guard.admit(client, now), Ok(()), "admitted within budget");
            let _ = guard.failed(client, now);
        }
    }

    #[test]
    fn the_budget_is_n_failures_then_every_upgrade_is_refused() {
        let mut guard = LoginGuard::new(5, MINUTE, 1024);
        let a = ip("192.0.2.7");
        fail(&mut guard, a, 0, 5);
        assert!(guard.admit(a, 1).is_err(), "the sixth upgrade");
        assert!(guard.admit(a, 2).is_err(), "and every one after it");
        // Another address is untouched.
        assert_eq!(guard.admit(ip("192.0.2.8"), 2), Ok(()));
    }

    #[test]
    fn retry_after_is_the_rest_of_the_window_in_whole_seconds_at_least_one() {
        let mut guard = LoginGuard::new(1, MINUTE, 1024);
        let a = ip("192.0.2.7");
        fail(&mut guard, a, 1_000, 1); // the window ends at 61,000
        assert_eq!(guard.admit(a, 1_000), Err(60));
        assert_eq!(guard.admit(a, 1_001), Err(60), "59.999 s rounds up");
        assert_eq!(guard.admit(a, 2_000), Err(59));
        assert_eq!(
            guard.admit(a, 60_999),
            Err(1),
            "one ms left is still a second"
        );
        assert_eq!(guard.admit(a, 61_000), Ok(()));

        // A window shorter than a second still says 1, never 0.
        let mut short = LoginGuard::new(1, 200, 1024);
        fail(&mut short, a, 0, 1);
        assert_eq!(short.admit(a, 0), Err(1));
    }

    #[test]
    fn when_the_window_ends_the_address_starts_again_with_a_full_budget() {
        let mut guard = LoginGuard::new(3, MINUTE, 1024);
        let a = ip("192.0.2.7");
        fail(&mut guard, a, 0, 3);
        assert!(guard.admit(a, MINUTE - 1).is_err());
        assert_eq!(guard.admit(a, MINUTE), Ok(()));
        assert_eq!(guard.tracked(), 0, "forgotten once its window is over");
        // A fresh window from the next failure: three more before a refusal.
        fail(&mut guard, a, MINUTE + 5, 3);
        assert_eq!(guard.admit(a, MINUTE + 6), Err(60));
        assert_eq!(guard.admit(a, 2 * MINUTE + 4), Err(1));
        assert_eq!(guard.admit(a, 2 * MINUTE + 5), Ok(()));
    }

    #[test]
    fn the_window_starts_at_the_first_failure_and_refusals_do_not_extend_it() {
        let mut guard = LoginGuard::new(2, MINUTE, 1024);
        let a = ip("192.0.2.7");
        fail(&mut guard, a, 10_000, 1);
        fail(&mut guard, a, 50_000, 1);
        // Ends 60 s after the first failure, not the last one.
        assert_eq!(guard.admit(a, 50_000), Err(20));
        for t in 50_001..50_100 {
            assert!(guard.admit(a, t).is_err());
        }
        assert_eq!(guard.admit(a, 70_000), Ok(()));
    }

    #[test]
    fn the_first_failure_of_a_window_is_logged_at_once_the_rest_are_counted() {
        let mut guard = LoginGuard::new(20, MINUTE, 1024);
        let (a, b) = (ip("192.0.2.7"), ip("198.51.100.1"));
        assert!(guard.failed(a, 0));
        assert!(!guard.failed(a, 1));
        assert!(!guard.failed(a, 2));
        assert!(guard.failed(b, 3), "each address has its own first failure");
        assert!(!guard.failed(b, 4));
        assert!(guard.failed(a, MINUTE), "and each window its own");
    }

    #[test]
    fn one_summary_per_address_per_window_with_its_counts() {
        let mut guard = LoginGuard::new(3, MINUTE, 1024);
        let (a, b, c) = (ip("192.0.2.7"), ip("198.51.100.1"), ip("203.0.113.9"));
        fail(&mut guard, a, 0, 3);
        for t in 1..=7 {
            assert!(guard.admit(a, t).is_err());
        }
        fail(&mut guard, b, 1_000, 2);
        // One failure and nothing else: already logged, so no summary.
        fail(&mut guard, c, 2_000, 1);

        assert_eq!(guard.summaries(MINUTE - 1), vec![], "nothing has ended yet");
        assert_eq!(
            guard.summaries(MINUTE),
            vec![Summary {
                client: Some(a),
                failures: 3,
                refused: 7
            }]
        );
        assert_eq!(guard.summaries(MINUTE + 500), vec![], "a line only once");
        assert_eq!(
            guard.summaries(MINUTE + 2_000),
            vec![Summary {
                client: Some(b),
                failures: 2,
                refused: 0
            }],
        );
        assert_eq!(guard.tracked(), 0, "c's window ended too, without a line");
        assert_eq!(guard.next_deadline(), None);
    }

    #[test]
    fn a_window_that_ended_between_drains_is_summarised_before_a_new_one_starts() {
        let mut guard = LoginGuard::new(3, MINUTE, 1024);
        let a = ip("192.0.2.7");
        fail(&mut guard, a, 0, 2);
        // The next failure comes after the window ended but before anyone drained it.
        assert!(guard.failed(a, MINUTE + 10), "a new window: logged at once");
        assert_eq!(
            guard.next_deadline(),
            Some(MINUTE + 10),
            "a summary is waiting"
        );
        assert!(!guard.failed(a, MINUTE + 11));
        assert_eq!(
            guard.summaries(MINUTE + 20),
            vec![Summary {
                client: Some(a),
                failures: 2,
                refused: 0
            }],
            "the old window's counts, not mixed with the new one's"
        );
        assert_eq!(guard.next_deadline(), Some(2 * MINUTE + 10));
        assert_eq!(
            guard.summaries(2 * MINUTE + 10),
            vec![Summary {
                client: Some(a),
                failures: 2,
                refused: 0
            }]
        );
    }

    #[test]
    fn finish_reports_the_windows_still_running_and_forgets_them() {
        let mut guard = LoginGuard::new(2, MINUTE, 2);
        let (a, b, c) = (ip("192.0.2.7"), ip("192.0.2.8"), ip("192.0.2.9"));
        fail(&mut guard, a, 0, 2);
        assert!(guard.admit(a, 1).is_err());
        fail(&mut guard, b, MINUTE / 2, 1); // nothing unlogged: no line
        assert!(guard.failed(c, MINUTE / 2), "the table is full: untracked");
        assert!(!guard.failed(c, MINUTE / 2));
        let mut summaries = guard.finish();
        summaries.sort_by_key(|s| s.client);
        assert_eq!(
            summaries,
            vec![
                Summary {
                    client: None,
                    failures: 2,
                    refused: 0
                },
                Summary {
                    client: Some(a),
                    failures: 2,
                    refused: 1
                },
            ]
        );
        assert_eq!(guard.tracked(), 0);
        assert_eq!(guard.next_deadline(), None);
        assert_eq!(guard.finish(), vec![]);
    }

    #[test]
    fn next_deadline_is_the_earliest_window_end() {
        let mut guard = LoginGuard::new(3, MINUTE, 1024);
        assert_eq!(guard.next_deadline(), None);
        let _ = guard.failed(ip("192.0.2.7"), 100);
        let _ = guard.failed(ip("192.0.2.8"), 200);
        assert_eq!(guard.next_deadline(), Some(MINUTE + 100));
        let _ = guard.summaries(MINUTE + 100);
        assert_eq!(guard.next_deadline(), Some(MINUTE + 200));
        let _ = guard.summaries(MINUTE + 200);
        assert_eq!(guard.next_deadline(), None);
    }

    #[test]
    fn a_full_table_tracks_no_new_address_and_evicts_none() {
        let mut guard = LoginGuard::new(2, MINUTE, 3);
        let attacker = ip("192.0.2.1");
        fail(&mut guard, attacker, 0, 2);
        let _ = guard.failed(ip("192.0.2.2"), 1);
        let _ = guard.failed(ip("192.0.2.3"), 2);
        assert_eq!(guard.tracked(), 3);

        // A thousand more addresses fail, some many times: the table does not grow...
        let mut logged = 0;
        for i in 0..1000u32 {
            let other = IpAddr::from([10, 0, (i >> 8) as u8, i as u8]);
            for _ in 0..3 {
                assert_eq!(guard.admit(other, 10), Ok(()), "untracked: let through");
                logged += usize::from(guard.failed(other, 10));
            }
        }
        assert_eq!(guard.tracked(), 3);
        assert_eq!(logged, 1, "untracked failures share one first line");
        // ...and the attacker's record survives them all.
        assert_eq!(guard.admit(attacker, 20), Err(60));

        let summaries = guard.summaries(MINUTE + 10);
        assert!(summaries.contains(&Summary {
            client: Some(attacker),
            failures: 2,
            refused: 1
        }));
        assert!(summaries.contains(&Summary {
            client: None,
            failures: 3000,
            refused: 0
        }));
        assert_eq!(summaries.len(), 2, "{summaries:?}");

        // Windows over, room again.
        assert!(guard.failed(ip("10.9.9.9"), MINUTE + 10));
        assert_eq!(guard.tracked(), 1);
    }

    #[test]
    fn summaries_nobody_drains_count_against_the_bound() {
        let mut guard = LoginGuard::new(1, MINUTE, 4);
        // Window after window of fresh addresses, and nobody ever calls `summaries`.
        for window in 0..100u64 {
            let now = window * MINUTE;
            for i in 0..10u8 {
                let client = IpAddr::from([10, window as u8, 0, i]);
                let _ = guard.failed(client, now);
                let _ = guard.failed(client, now);
            }
            assert!(guard.tracked() + guard.ready.len() <= 4);
        }
        let summaries = guard.summaries(1000 * MINUTE);
        assert!(
            summaries.len() <= 4 + 1,
            "plus the aggregate's one: {summaries:?}"
        );
        let untracked: Vec<_> = summaries.iter().filter(|s| s.client.is_none()).collect();
        assert_eq!(
            untracked.len(),
            1,
            "the aggregate's windows merged: {summaries:?}"
        );
    }

    #[test]
    fn zero_failures_turns_the_guard_off() {
        let mut guard = LoginGuard::new(0, MINUTE, 1024);
        assert!(!guard.enabled());
        let a = ip("192.0.2.7");
        for t in 0..100 {
            assert_eq!(guard.admit(a, t), Ok(()));
            assert!(
                guard.failed(a, t),
                "every failure logged, as without a guard"
            );
        }
        assert_eq!(guard.tracked(), 0);
        assert_eq!(guard.next_deadline(), None);
        assert_eq!(guard.summaries(10 * MINUTE), vec![]);
    }

    #[test]
    fn ipv6_keys_are_tracked_apart_from_each_other_and_from_ipv4() {
        let mut guard = LoginGuard::new(2, MINUTE, 1024);
        // As the caller keys them: a /64 each.
        let (net1, net2) = (ip("2001:db8:1:2::"), ip("2001:db8:1:3::"));
        let v4 = ip("192.0.2.7");
        fail(&mut guard, net1, 0, 2);
        assert_eq!(guard.admit(net1, 1), Err(60));
        assert_eq!(guard.admit(net2, 1), Ok(()));
        assert_eq!(guard.admit(v4, 1), Ok(()));
        assert_eq!(
            guard.summaries(MINUTE),
            vec![Summary {
                client: Some(net1),
                failures: 2,
                refused: 1
            }]
        );
    }

    #[test]
    fn a_clock_that_goes_back_neither_panics_nor_reopens_a_window() {
        let mut guard = LoginGuard::new(1, MINUTE, 1024);
        let a = ip("192.0.2.7");
        fail(&mut guard, a, 30_000, 1);
        assert_eq!(guard.admit(a, 40_000), Err(50));
        assert_eq!(guard.admit(a, 0), Err(50), "taken as 40,000");
        // The far end of the clock saturates instead of overflowing.
        let b = ip("192.0.2.8");
        fail(&mut guard, b, u64::MAX - 10, 1);
        assert_eq!(guard.admit(b, u64::MAX - 10), Err(1));
        assert_eq!(guard.summaries(u64::MAX).len(), 2, "a's and b's refusals");
    }

    #[test]
    fn a_window_of_zero_is_taken_as_one_millisecond() {
        let mut guard = LoginGuard::new(1, 0, 1024);
        let a = ip("192.0.2.7");
        fail(&mut guard, a, 5, 1);
        assert_eq!(guard.admit(a, 5), Err(1));
        assert_eq!(guard.admit(a, 6), Ok(()));
    }

    #[test]
    fn a_table_of_zero_tracks_only_the_aggregate() {
        let mut guard = LoginGuard::new(1, MINUTE, 0);
        let a = ip("192.0.2.7");
        assert!(guard.failed(a, 0));
        assert!(!guard.failed(a, 0));
        assert_eq!(guard.admit(a, 0), Ok(()));
        assert_eq!(guard.tracked(), 0);
        assert_eq!(
            guard.summaries(MINUTE),
            vec![Summary {
                client: None,
                failures: 2,
                refused: 0
            }]
        );
    }

    /// Random traffic against a plain model of the rule (every address in a map, windows
    /// checked one by one): same answers, same summaries, and the queue in step with the
    /// table throughout.
    #[test]
    fn agrees_with_a_plain_model_of_the_rule() {
        struct Model {
            windows: HashMap<IpAddr, (u64, u64, u64)>,
            ended: Vec<Summary>,
        }
        impl Model {
            fn expire(&mut self, now: u64) {
                let ended: Vec<IpAddr> = self
                    .windows
                    .iter()
                    .filter(|(_, w)| w.0 <= now)
                    .map(|(ip, _)| *ip)
                    .collect();
                for ip in ended {
                    if let Some((_, failures, refused)) = self.windows.remove(&ip) {
                        if failures > 1 || refused > 0 {
                            self.ended.push(Summary {
                                client: Some(ip),
                                failures,
                                refused,
                            });
                        }
                    }
                }
            }
        }
        const BUDGET: u32 = 3;
        const WINDOW: u64 = 10_000;
        let mut guard = LoginGuard::new(BUDGET, WINDOW, usize::MAX);
        let mut model = Model {
            windows: HashMap::new(),
            ended: Vec::new(),
        };
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut random = move |below: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % below
        };
        let mut now = 0;
        let mut refusals = 0;
        for _ in 0..20_000 {
            now += random(600);
            let client = IpAddr::from([192, 0, 2, random(4) as u8]);
            model.expire(now);
            match random(3) {
                0 => {
                    let expected = match model.windows.get_mut(&client) {
                        Some(w) if w.1 >= u64::from(BUDGET) => {
                            w.2 += 1;
                            Err((w.0 - now).div_ceil(1000).max(1))
                        }
                        _ => Ok(()),
                    };
                    refusals += usize::from(expected.is_err());
                    assert_eq!(guard.admit(client, now), expected, "admit at {now}");
                }
                1 => {
                    let expected = match model.windows.get_mut(&client) {
                        Some(w) => {
                            w.1 += 1;
                            false
                        }
                        None => {
                            model.windows.insert(client, (now + WINDOW, 1, 0));
                            true
                        }
                    };
                    assert_eq!(guard.failed(client, now), expected, "failed at {now}");
                }
                _ => {
                    let key = |s: &Summary| (s.client, s.failures, s.refused);
                    let mut got = guard.summaries(now);
                    let mut expected = std::mem::take(&mut model.ended);
                    got.sort_by_key(key);
                    expected.sort_by_key(key);
                    assert_eq!(got, expected, "summaries at {now}");
                }
            }
            assert_eq!(guard.expiry.len(), guard.entries.len());
            assert_eq!(guard.tracked(), model.windows.len());
        }
        // The traffic reached the budget often, and stayed under it often too.
        assert!((1_000..5_000).contains(&refusals), "{refusals} refusals");
    }
}
