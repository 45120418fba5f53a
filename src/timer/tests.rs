//! Behaviour of the wheel, one property a test, plus a long randomized run against a
//! `BTreeMap` model. Every test checks the structural invariants after each step.

use std::collections::{BTreeMap, HashMap};

use super::{Entry, Tick, TimerId, Wheel};

/// Polls until nothing more is due at `now`, checking invariants after each call.
fn drain(wheel: &mut Wheel<u64>, now: Tick) -> Vec<(TimerId, u64)> {
    let mut fired = Vec::new();
    while let Some(item) = wheel.poll(now) {
        wheel.check_invariants();
        fired.push(item);
    }
    wheel.check_invariants();
    fired
}

/// Inserts and checks the insert was accepted.
fn arm(wheel: &mut Wheel<u64>, deadline: Tick, value: u64) -> TimerId {
    let id = wheel
        .insert(deadline, value)
        .unwrap_or_else(|_| panic!("deadline {deadline} refused at {}", wheel.now()));
    wheel.check_invariants();
    id
}

/// Xorshift64: enough randomness for a model test, and no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn entry_fits_the_per_connection_budget() {
    let size = std::mem::size_of::<Entry<u64>>();
    println!("size_of::<Entry<u64>>() = {size} bytes");
    println!(
        "size_of::<Entry<Box<u8>>>() = {} bytes",
        std::mem::size_of::<Entry<Box<u8>>>()
    );
    println!(
        "size_of::<Wheel<u64>>() = {} bytes",
        std::mem::size_of::<Wheel<u64>>()
    );
    assert!(size <= 40, "entry is {size} bytes");
    assert_eq!(std::mem::size_of::<TimerId>(), 8);
}

#[test]
fn insert_then_poll_fires_at_the_exact_tick() {
    let mut wheel = Wheel::new(0);
    let id = arm(&mut wheel, 10, 7);
    assert_eq!(wheel.poll(9), None);
    assert_eq!(wheel.now(), 9);
    assert_eq!(wheel.poll(10), Some((id, 7)));
    assert_eq!(wheel.now(), 10);
    assert_eq!(wheel.poll(10), None);
    assert!(wheel.is_empty());
}

#[test]
fn insert_at_or_before_now_is_already_due_and_not_stored() {
    let mut wheel = Wheel::new(100);
    assert_eq!(wheel.insert(100, 1), Err(1));
    assert_eq!(wheel.insert(3, 2), Err(2));
    assert_eq!(wheel.insert(0, 3), Err(3));
    assert_eq!(wheel.len(), 0);
    assert_eq!(wheel.next_deadline(), None);
    assert!(wheel.insert(101, 4).is_ok());
    // The wheel's time, not the caller's, decides: after polling to 500 a deadline of 300
    // is in the past.
    assert_eq!(drain(&mut wheel, 500).len(), 1);
    assert_eq!(wheel.insert(300, 5), Err(5));
}

#[test]
fn cancel_then_poll_yields_nothing() {
    let mut wheel = Wheel::new(0);
    let near = arm(&mut wheel, 5, 1);
    let far = arm(&mut wheel, 100_000, 2);
    assert_eq!(wheel.cancel(near), Some(1));
    assert_eq!(wheel.cancel(far), Some(2));
    assert!(wheel.is_empty());
    wheel.check_invariants();
    assert_eq!(wheel.next_deadline(), None);
    assert!(drain(&mut wheel, 1_000_000).is_empty());
}

#[test]
fn cancel_leaves_the_other_timers_in_the_slot() {
    let mut wheel = Wheel::new(0);
    let ids: Vec<_> = (0..5).map(|v| arm(&mut wheel, 70, v)).collect();
    // Middle, head and tail of the slot's list.
    assert_eq!(wheel.cancel(ids[2]), Some(2));
    assert_eq!(wheel.cancel(ids[0]), Some(0));
    assert_eq!(wheel.cancel(ids[4]), Some(4));
    wheel.check_invariants();
    let fired: Vec<_> = drain(&mut wheel, 70).into_iter().map(|(_, v)| v).collect();
    assert_eq!(fired, vec![1, 3]);
}

#[test]
fn stale_id_after_fire_is_rejected() {
    let mut wheel = Wheel::new(0);
    let id = arm(&mut wheel, 3, 1);
    assert_eq!(wheel.poll(3), Some((id, 1)));
    assert_eq!(wheel.cancel(id), None);
    // The slot is reused for the next timer; the old id must not reach it.
    let fresh = arm(&mut wheel, 10, 2);
    assert_eq!(fresh.index, id.index);
    assert_ne!(fresh, id);
    assert_eq!(wheel.cancel(id), None);
    assert_eq!(wheel.len(), 1);
    assert_eq!(wheel.cancel(fresh), Some(2));
}

#[test]
fn stale_id_after_cancel_and_reuse_is_rejected() {
    let mut wheel = Wheel::new(0);
    let old = arm(&mut wheel, 50, 1);
    assert_eq!(wheel.cancel(old), Some(1));
    assert_eq!(wheel.cancel(old), None);
    let reused = arm(&mut wheel, 60, 2);
    assert_eq!(reused.index, old.index);
    assert_eq!(wheel.cancel(old), None);
    assert_eq!(drain(&mut wheel, 60), vec![(reused, 2)]);
}

#[test]
fn id_from_another_wheel_or_out_of_range_is_rejected() {
    let mut wheel: Wheel<u64> = Wheel::new(0);
    let bogus = TimerId {
        index: 12345,
        generation: 0,
    };
    assert_eq!(wheel.cancel(bogus), None);
    wheel.check_invariants();
}

#[test]
fn freed_slab_slots_are_reused() {
    let mut wheel = Wheel::with_capacity(0, 4);
    for round in 0..1000u64 {
        let a = arm(&mut wheel, round + 1, round);
        let b = arm(&mut wheel, round + 1_000_000, round);
        assert_eq!(wheel.poll(round + 1), Some((a, round)));
        assert_eq!(wheel.cancel(b), Some(round));
    }
    assert_eq!(wheel.entries.len(), 2);
}

#[test]
fn generation_that_would_wrap_retires_the_slot() {
    let mut wheel = Wheel::new(0);
    let first = arm(&mut wheel, 10, 1);
    wheel.cancel(first);
    wheel.entries[first.index as usize].generation = u32::MAX;
    let last = arm(&mut wheel, 10, 2);
    assert_eq!(last.generation, u32::MAX);
    assert_eq!(wheel.cancel(last), Some(2));
    wheel.check_invariants();
    // The retired slot is never handed out again, so `last` can never become valid again.
    let next = arm(&mut wheel, 10, 3);
    assert_ne!(next.index, last.index);
    assert_eq!(wheel.cancel(last), None);
}

#[test]
fn cascades_from_every_level_fire_on_the_exact_tick() {
    for level in 1..=5u32 {
        let span = 64u64.pow(level);
        for &deadline in &[span, 3 * span + 17, 64 * span - 1] {
            let mut wheel = Wheel::new(0);
            let id = arm(&mut wheel, deadline, u64::from(level));
            assert_eq!(wheel.entries[id.index as usize].bucket as usize / 64, {
                // The top digit decides the level; 64 * span - 1 still has it at `level`.
                level as usize
            });
            assert!(drain(&mut wheel, deadline - 1).is_empty(), "level {level}");
            assert_eq!(wheel.len(), 1);
            assert_eq!(drain(&mut wheel, deadline), vec![(id, u64::from(level))]);
        }
    }
}

#[test]
fn stepping_the_clock_by_next_deadline_reaches_every_deadline_in_order() {
    // The reactor's loop: sleep until `next_deadline`, poll, repeat. Every deadline must be
    // reached exactly, however many levels its entry cascades through.
    let deadlines = [
        1,
        63,
        64,
        65,
        4095,
        4096,
        300_000,
        262_144,
        16_777_217,
        1 << 30,
        1 << 35,
    ];
    let mut wheel = Wheel::new(0);
    for (value, &deadline) in deadlines.iter().enumerate() {
        arm(&mut wheel, deadline, value as u64);
    }
    let mut fired = Vec::new();
    while let Some(at) = wheel.next_deadline() {
        assert!(at >= wheel.now());
        for (_, value) in drain(&mut wheel, at) {
            assert_eq!(deadlines[value as usize], at, "fired off its tick");
            fired.push(at);
        }
    }
    let mut sorted = deadlines.to_vec();
    sorted.sort_unstable();
    assert_eq!(fired, sorted);
}

#[test]
fn far_future_deadlines_fire_in_order_and_on_time() {
    let deadlines = [
        1u64 << 36,
        (1 << 36) + 1,
        (1 << 36) + (1 << 30) * 5,
        1 << 40,
        u64::MAX / 2,
        u64::MAX / 2 + 1,
        u64::MAX - 1,
        u64::MAX,
    ];
    let mut wheel = Wheel::new(12_345);
    for (value, &deadline) in deadlines.iter().enumerate().rev() {
        arm(&mut wheel, deadline, value as u64);
    }
    for (value, &deadline) in deadlines.iter().enumerate() {
        assert!(
            drain(&mut wheel, deadline - 1).is_empty(),
            "early at {deadline}"
        );
        let next = wheel.next_deadline().expect("pending");
        assert!(next <= deadline);
        assert_eq!(
            drain(&mut wheel, deadline)
                .into_iter()
                .map(|(_, v)| v)
                .collect::<Vec<_>>(),
            vec![value as u64]
        );
    }
    assert!(wheel.is_empty());
    assert_eq!(wheel.now(), u64::MAX);
    // At the end of time every deadline is due.
    assert_eq!(wheel.insert(u64::MAX, 9), Err(9));
}

#[test]
fn far_future_deadline_from_a_late_start() {
    // A clock that starts high (the reactor's ms since some epoch) and a deadline more than
    // one top-level window away, crossing a window boundary.
    let start = u64::MAX / 2 - 1000;
    let deadline = start + (1 << 37) + 12_345;
    let mut wheel = Wheel::new(start);
    let id = arm(&mut wheel, deadline, 1);
    let first = wheel.next_deadline().unwrap();
    assert!(first > start && first <= deadline);
    assert!(drain(&mut wheel, first).is_empty());
    assert_eq!(wheel.next_deadline().map(|at| at <= deadline), Some(true));
    assert!(drain(&mut wheel, deadline - 1).is_empty());
    assert_eq!(drain(&mut wheel, deadline), vec![(id, 1)]);
}

#[test]
fn next_deadline_is_never_later_than_the_earliest_deadline() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut wheel = Wheel::new(1_000);
    let mut earliest = Tick::MAX;
    for value in 0..2_000 {
        let shift = rng.below(45);
        let deadline = wheel.now() + 1 + (rng.next() >> (64 - shift.max(1)));
        arm(&mut wheel, deadline, value);
        earliest = earliest.min(deadline);
        let next = wheel.next_deadline().unwrap();
        assert!(next <= earliest, "{next} > {earliest}");
        assert!(next >= wheel.now());
    }
}

#[test]
fn many_timers_on_the_same_tick_all_fire_on_it() {
    let mut wheel = Wheel::new(0);
    for value in 0..10_000 {
        arm(&mut wheel, 5_000, value);
    }
    assert!(drain(&mut wheel, 4_999).is_empty());
    // Plain polls: an invariant walk after each of 10,000 would make this test quadratic.
    let fired: Vec<_> = std::iter::from_fn(|| wheel.poll(5_000))
        .map(|(_, v)| v)
        .collect();
    wheel.check_invariants();
    // Inserted from the same time into the same slot, they also keep their order.
    assert_eq!(fired, (0..10_000).collect::<Vec<_>>());
    assert!(wheel.is_empty());
}

#[test]
fn poll_with_now_jumping_far_ahead_fires_all_in_deadline_order() {
    let mut rng = Rng(42);
    let mut wheel = Wheel::new(0);
    let mut deadlines = HashMap::new();
    for value in 0..3_000 {
        let bits = rng.below(40) + 1;
        let deadline = 1 + rng.below(1 << bits);
        arm(&mut wheel, deadline, value);
        deadlines.insert(value, deadline);
    }
    let fired = drain(&mut wheel, 1 << 50);
    assert_eq!(fired.len(), 3_000);
    let order: Vec<_> = fired.iter().map(|(_, v)| deadlines[v]).collect();
    assert!(order.windows(2).all(|w| w[0] <= w[1]), "out of order");
    assert_eq!(wheel.now(), 1 << 50);
}

#[test]
fn poll_stops_part_way_and_resumes_with_inserts_between() {
    let mut wheel = Wheel::new(0);
    arm(&mut wheel, 10, 1);
    arm(&mut wheel, 10, 2);
    arm(&mut wheel, 30, 3);
    assert_eq!(wheel.poll(100).map(|(_, v)| v), Some(1));
    assert_eq!(wheel.now(), 10);
    // Due now but not yet handed out: still pending, and the poll timeout is "at once".
    assert_eq!(wheel.len(), 2);
    assert_eq!(wheel.next_deadline(), Some(10));
    // A handler re-arms between polls; a deadline before the remaining ones still comes first
    // as long as it is after the wheel's time.
    assert_eq!(wheel.insert(10, 9), Err(9));
    arm(&mut wheel, 20, 4);
    let rest: Vec<_> = drain(&mut wheel, 100).into_iter().map(|(_, v)| v).collect();
    assert_eq!(rest, vec![2, 4, 3]);
}

#[test]
fn now_going_backwards_advances_nothing() {
    let mut wheel = Wheel::new(1_000);
    let id = arm(&mut wheel, 1_500, 1);
    assert_eq!(wheel.poll(10), None);
    assert_eq!(wheel.now(), 1_000);
    assert_eq!(wheel.poll(0), None);
    assert_eq!(wheel.poll(1_500), Some((id, 1)));
    assert_eq!(wheel.poll(1_499), None);
    assert_eq!(wheel.now(), 1_500);
}

/// The wheel against an ordered map keyed by `(deadline, insertion)`: thousands of random
/// inserts (near, far and at the end of time), cancels of live and stale ids, partial and
/// full polls, and clocks that jump or step back.
#[test]
fn randomized_against_a_btreemap_model() {
    for seed in 1..=8u64 {
        run_model(seed.wrapping_mul(0x2545_f491_4f6c_dd1d), 5_000);
    }
}

fn run_model(seed: u64, steps: usize) {
    let mut rng = Rng(seed);
    let start = match rng.below(3) {
        0 => 0,
        1 => rng.next() >> 1,
        _ => u64::MAX - (1 << 40),
    };
    let mut wheel = Wheel::with_capacity(start, 16);
    let mut model: BTreeMap<(Tick, u64), TimerId> = BTreeMap::new();
    let mut by_value: HashMap<u64, Tick> = HashMap::new();
    let mut issued: Vec<(TimerId, u64)> = Vec::new();
    let mut clock = start;
    let mut last_fired = start;
    let mut seq = 0u64;

    let mut check_poll = |wheel: &mut Wheel<u64>,
                          model: &mut BTreeMap<(Tick, u64), TimerId>,
                          by_value: &mut HashMap<u64, Tick>,
                          now: Tick|
     -> bool {
        let before = wheel.now();
        let got = wheel.poll(now);
        wheel.check_invariants();
        let earliest = model.first_key_value().map(|(&(deadline, _), _)| deadline);
        match got {
            None => {
                assert!(
                    !matches!(earliest, Some(e) if e <= now),
                    "missed {earliest:?} at {now}"
                );
                assert_eq!(wheel.now(), before.max(now));
                false
            }
            Some((id, value)) => {
                let deadline = by_value.remove(&value).expect("fired an unknown value");
                assert_eq!(model.remove(&(deadline, value)), Some(id));
                assert!(deadline <= now, "fired {deadline} early at {now}");
                assert_eq!(Some(deadline), earliest, "fired {deadline} out of order");
                assert!(
                    deadline >= last_fired,
                    "order: {deadline} after {last_fired}"
                );
                last_fired = deadline;
                assert_eq!(wheel.now(), deadline);
                true
            }
        }
    };

    for _ in 0..steps {
        match rng.below(10) {
            0..=3 => {
                let delay = match rng.below(6) {
                    0 => rng.below(64),
                    1 => rng.below(5_000),
                    2 => rng.below(1 << 24),
                    3 => {
                        let shift = rng.below(64);
                        rng.next() >> shift
                    }
                    4 => rng.below(3),
                    _ => u64::MAX,
                };
                let deadline = clock.saturating_add(delay);
                seq += 1;
                match wheel.insert(deadline, seq) {
                    Ok(id) => {
                        assert!(deadline > wheel.now(), "stored a due deadline");
                        model.insert((deadline, seq), id);
                        by_value.insert(seq, deadline);
                        issued.push((id, seq));
                    }
                    Err(value) => {
                        assert_eq!(value, seq);
                        assert!(deadline <= wheel.now(), "refused {deadline}");
                    }
                }
            }
            4 | 5 if !issued.is_empty() => {
                let pick = rng.below(issued.len() as u64) as usize;
                let (id, value) = issued[pick];
                let expected = by_value.remove(&value).map(|deadline| {
                    model.remove(&(deadline, value));
                    value
                });
                assert_eq!(wheel.cancel(id), expected);
                if rng.below(4) == 0 {
                    issued.swap_remove(pick);
                }
            }
            6 | 7 => {
                clock = clock.saturating_add(match rng.below(8) {
                    0..=2 => rng.below(64),
                    3..=5 => rng.below(1 << 14),
                    6 => rng.below(1 << 30),
                    _ => {
                        let shift = rng.below(64).max(8);
                        rng.next() >> shift
                    }
                });
                while check_poll(&mut wheel, &mut model, &mut by_value, clock) {}
            }
            8 => {
                clock = clock.saturating_add(rng.below(1 << 12));
                check_poll(&mut wheel, &mut model, &mut by_value, clock);
            }
            _ => {
                let back = clock.saturating_sub(rng.below(1 << 12));
                check_poll(&mut wheel, &mut model, &mut by_value, back);
            }
        }
        wheel.check_invariants();
        assert_eq!(wheel.len(), model.len());
        assert_eq!(wheel.is_empty(), model.is_empty());
        match model.first_key_value() {
            None => assert_eq!(wheel.next_deadline(), None),
            Some(((earliest, _), _)) => {
                let next = wheel.next_deadline().expect("pending but no deadline");
                assert!(next <= *earliest, "next_deadline {next} > {earliest}");
                assert!(next >= wheel.now());
            }
        }
        if issued.len() > 4_096 {
            issued.drain(..2_048);
        }
    }
    while check_poll(&mut wheel, &mut model, &mut by_value, u64::MAX) {}
    assert!(model.is_empty() && wheel.is_empty());
}
