//! The timer wheel against a `BTreeMap` model, over arbitrary sequences of inserts, cancels
//! (of live, fired and cancelled ids), partial and full polls, and clocks that jump far ahead
//! or step back. After every operation: polls hand out exactly the model's entries with
//! deadline <= now, earliest first; cancel returns the value iff it is still pending;
//! `next_deadline` is never after the earliest pending deadline; `len` matches; and the
//! wheel's own structural invariants hold.
#![no_main]

use std::collections::{BTreeMap, HashMap};

use courier::timer::{Tick, TimerId, Wheel};
use libfuzzer_sys::fuzz_target;

#[derive(arbitrary::Arbitrary, Debug)]
enum Op {
    /// Deadline `delay << shift` after the caller's clock: the shift reaches every level and
    /// past the top window.
    Insert { delay: u16, shift: u8 },
    /// Any absolute deadline: the past, the end of time, anything between.
    InsertAt { deadline: u64 },
    /// One of the ids handed out so far, counting back from the newest; stale ones included.
    Cancel { which: u8 },
    /// Moves the caller's clock forward and polls until nothing more is due.
    Advance { by: u16, shift: u8 },
    /// Moves the clock forward and polls once, leaving due entries behind for later calls.
    PollOnce { by: u16 },
    /// Polls with a time before the clock, as after a clock step back.
    PollBack { by: u16 },
}

struct Model {
    wheel: Wheel<u64>,
    /// Pending timers by `(deadline, value)`: first entry = earliest deadline.
    pending: BTreeMap<(Tick, u64), TimerId>,
    deadline_of: HashMap<u64, Tick>,
    issued: Vec<(TimerId, u64)>,
    clock: Tick,
    last_fired: Tick,
    next_value: u64,
}

impl Model {
    fn insert(&mut self, deadline: Tick) {
        self.next_value += 1;
        let value = self.next_value;
        let due = deadline <= self.wheel.now();
        match self.wheel.insert(deadline, value) {
            Ok(id) => {
                assert!(!due, "stored deadline {deadline} at {}", self.wheel.now());
                self.pending.insert((deadline, value), id);
                self.deadline_of.insert(value, deadline);
                if self.issued.len() < 4096 {
                    self.issued.push((id, value));
                }
            }
            Err(back) => {
                assert!(due, "refused deadline {deadline} at {}", self.wheel.now());
                assert_eq!(back, value);
            }
        }
    }

    fn cancel(&mut self, which: u8) {
        if self.issued.is_empty() {
            return;
        }
        let pick = self.issued.len() - 1 - (which as usize % self.issued.len());
        let (id, value) = self.issued[pick];
        let expected = self.deadline_of.remove(&value).map(|deadline| {
            self.pending.remove(&(deadline, value));
            value
        });
        assert_eq!(self.wheel.cancel(id), expected, "cancel of {id:?}");
    }

    /// One poll, checked; true if it returned a timer.
    fn poll(&mut self, now: Tick) -> bool {
        let before = self.wheel.now();
        let earliest = self.pending.keys().next().map(|&(deadline, _)| deadline);
        match self.wheel.poll(now) {
            None => {
                assert!(
                    !matches!(earliest, Some(e) if e <= now),
                    "missed {earliest:?} at {now}"
                );
                assert_eq!(self.wheel.now(), before.max(now));
                false
            }
            Some((id, value)) => {
                let deadline = self
                    .deadline_of
                    .remove(&value)
                    .expect("unknown value fired");
                assert_eq!(self.pending.remove(&(deadline, value)), Some(id));
                assert!(deadline <= now, "fired {deadline} early at {now}");
                assert_eq!(Some(deadline), earliest, "fired out of order");
                assert!(deadline >= self.last_fired);
                self.last_fired = deadline;
                assert_eq!(self.wheel.now(), deadline);
                true
            }
        }
    }

    fn check(&self) {
        self.wheel.check_invariants();
        assert_eq!(self.wheel.len(), self.pending.len());
        assert_eq!(self.wheel.is_empty(), self.pending.is_empty());
        match self.pending.keys().next() {
            None => assert_eq!(self.wheel.next_deadline(), None),
            Some(&(earliest, _)) => {
                let next = self.wheel.next_deadline().expect("pending, no deadline");
                assert!(next <= earliest, "next_deadline {next} after {earliest}");
                assert!(next >= self.wheel.now());
            }
        }
    }
}

fuzz_target!(|input: (u32, Vec<Op>)| {
    let (start, ops) = input;
    // Start anywhere in the low range or near the middle of `u64`, where a clock counting
    // from an epoch or a far-future test lives.
    let start = if start & 1 == 0 {
        u64::from(start)
    } else {
        u64::MAX / 2 + u64::from(start)
    };
    let mut model = Model {
        wheel: Wheel::new(start),
        pending: BTreeMap::new(),
        deadline_of: HashMap::new(),
        issued: Vec::new(),
        clock: start,
        last_fired: start,
        next_value: 0,
    };
    for op in ops {
        match op {
            Op::Insert { delay, shift } => {
                let delta = u64::from(delay) << (shift % 64);
                model.insert(model.clock.saturating_add(delta));
            }
            Op::InsertAt { deadline } => model.insert(deadline),
            Op::Cancel { which } => model.cancel(which),
            Op::Advance { by, shift } => {
                model.clock = model.clock.saturating_add(u64::from(by) << (shift % 64));
                let now = model.clock;
                while model.poll(now) {
                    model.check();
                }
            }
            Op::PollOnce { by } => {
                model.clock = model.clock.saturating_add(u64::from(by));
                let now = model.clock;
                model.poll(now);
            }
            Op::PollBack { by } => {
                let now = model.wheel.now().saturating_sub(u64::from(by));
                model.poll(now);
            }
        }
        model.check();
    }
    // Whatever is left fires in order by the end of time.
    while model.poll(u64::MAX) {}
    model.check();
    assert!(model.pending.is_empty());
});
