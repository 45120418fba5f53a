//! A hierarchical timer wheel: the reactor's one timer queue (idle timeouts, ping intervals,
//! close-handshake deadlines, ack retries).
//!
//! Shape after tokio-util's `time::wheel`: six levels of 64 slots, a slot on level `L`
//! spanning 64^L ticks, each level with a `u64` mask of occupied slots so the next slot to
//! process is found with `trailing_zeros`, not a scan. Entries sit in a `Vec` slab and are
//! chained per slot through indices (circular, doubly linked), which gives O(1) insert and
//! cancel without `unsafe` or intrusive pointers; a free list reuses slots, and a generation
//! in every [`TimerId`] turns a handle to a fired or cancelled timer into a no-op instead of
//! a hit on whoever reused the slot.
//!
//! Time is a plain [`Tick`] passed in by the caller; the wheel never reads a clock, so it is
//! driven by tests and the fuzzer exactly as by the reactor.
//!
//! Deadlines are not moved when a connection shows activity: the caller stores the last
//! activity and, when the timer fires, re-arms it if the connection is not really idle. One
//! insert per timeout period instead of a cancel and insert per frame.

// The reactor is the consumer and only needs part of the API; tests and the fuzz target use
// all of it. Without this the non-fuzzing library build reports the rest as dead.
#![allow(dead_code)]

mod level;
#[cfg(test)]
mod tests;

use level::{LEVELS, SLOTS};

/// Milliseconds on the reactor's clock (`clock.rs`); only differences and order matter here.
pub type Tick = u64;

/// Handle to a pending timer, returned by [`Wheel::insert`] and given back to
/// [`Wheel::cancel`].
///
/// The generation makes it single-use: once the timer fires or is cancelled its slab slot is
/// recycled under a new generation, so a handle the caller kept too long (a connection that
/// closed while its timer was firing) matches nothing rather than cancelling a stranger's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerId {
    index: u32,
    generation: u32,
}

/// Marks the end of a free list and an empty slot. Indices are `u32` to keep entries small;
/// this one value is given up for the sentinel.
const NIL: u32 = u32::MAX;
/// Most entries the slab can hold: every index below `NIL`.
const MAX_ENTRIES: usize = NIL as usize;

/// One slab slot. 40 bytes for an 8-byte `T` (32 when `T` has a niche, so `Option<T>` costs
/// nothing): the wheel holds one per connection, and the per-connection budget is ~256 bytes.
struct Entry<T> {
    deadline: Tick,
    /// `None` while the slot is free; the only "vacant" marker, so no separate enum tag.
    value: Option<T>,
    /// Neighbours in the slot's circular list. Unused while free.
    prev: u32,
    /// Neighbour in the slot's list, or the next free slot while free.
    next: u32,
    generation: u32,
    /// `level * SLOTS + slot`, so cancel finds the list head without recomputing the
    /// placement (which depends on how far the wheel has advanced since insert).
    bucket: u16,
}

/// A hierarchical timer wheel holding values of type `T` (a connection id, typically).
pub struct Wheel<T> {
    /// The wheel's current time: everything at or before it has been handed out by `poll`,
    /// except entries due exactly now that `poll` has not returned yet.
    elapsed: Tick,
    entries: Vec<Entry<T>>,
    /// Head of the free list threaded through `Entry::next`.
    free: u32,
    len: usize,
    /// Bit `s` of `occupied[l]` is set iff `heads[l][s]` is not `NIL`.
    occupied: [u64; LEVELS],
    /// First entry of each slot's circular list; its `prev` is the tail, so appending (which
    /// keeps equal deadlines in insertion order within a slot) needs no tail array.
    heads: [[u32; SLOTS]; LEVELS],
}

impl<T> Wheel<T> {
    /// An empty wheel whose current time is `now`.
    pub fn new(now: Tick) -> Self {
        Self::with_capacity(now, 0)
    }

    /// An empty wheel with room for `capacity` timers before the slab grows: the reactor
    /// sizes it for its connection limit so steady-state inserts never reallocate.
    pub fn with_capacity(now: Tick, capacity: usize) -> Self {
        let mut entries = Vec::new();
        // Fallible on purpose: an absurd configured limit should cost a later reallocation,
        // not a capacity-overflow panic at start-up.
        let _ = entries.try_reserve_exact(capacity.min(MAX_ENTRIES));
        Wheel {
            elapsed: now,
            entries,
            free: NIL,
            len: 0,
            occupied: [0; LEVELS],
            heads: [[NIL; SLOTS]; LEVELS],
        }
    }

    /// Number of pending timers (including ones due now that `poll` has not returned yet).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The wheel's current time: the latest `now` that `poll` has caught up with, or the
    /// deadline of the entry it last returned if it stopped part way.
    pub fn now(&self) -> Tick {
        self.elapsed
    }

    /// Schedules `value` to fire at `deadline`.
    ///
    /// A deadline at or before [`Wheel::now`] is already due: the value comes straight back
    /// as `Err` and nothing is stored, so the caller handles it at once rather than waiting a
    /// poll round. `Err` is also the answer in the one case where the wheel cannot store it
    /// (the slab already holds `u32::MAX` entries or cannot grow): failing loudly early
    /// beats a panic that takes every connection down.
    pub fn insert(&mut self, deadline: Tick, value: T) -> Result<TimerId, T> {
        if deadline <= self.elapsed {
            return Err(value);
        }
        let Some(index) = self.alloc() else {
            return Err(value);
        };
        let entry = &mut self.entries[index as usize];
        entry.deadline = deadline;
        entry.value = Some(value);
        let generation = entry.generation;
        let (level, slot) = level::bucket(self.elapsed, deadline);
        self.link(index, level, slot);
        self.len += 1;
        Ok(TimerId { index, generation })
    }

    /// Removes a pending timer and gives its value back, in O(1).
    ///
    /// `None` when `id` is stale (the timer already fired or was cancelled, even if its slot
    /// now holds another timer): cancelling is always safe to attempt.
    pub fn cancel(&mut self, id: TimerId) -> Option<T> {
        let entry = self.entries.get(id.index as usize)?;
        if entry.generation != id.generation || entry.value.is_none() {
            return None;
        }
        self.unlink(id.index);
        self.release(id.index)
    }

    /// When the reactor must call [`Wheel::poll`] next: never later than the earliest
    /// pending deadline, `None` when nothing is pending.
    ///
    /// It may be earlier: an entry on a higher level is only known to lie somewhere in its
    /// slot, so this is the slot's start, where the entry must be moved down a level. A poll
    /// then may return nothing, and the next call tells the finer time. Costs O(levels).
    pub fn next_deadline(&self) -> Option<Tick> {
        self.next_expiration().map(|(_, _, start)| start)
    }

    /// Advances the wheel toward `now` and returns one timer whose deadline is at or before
    /// `now`, or `None` once nothing more is due.
    ///
    /// One entry per call, so the caller may insert and cancel between calls (a fired
    /// timer's handler often re-arms or cancels others); across calls entries come out in
    /// nondecreasing deadline order, and [`Wheel::now`] stops at the deadline of the entry
    /// returned. When it returns `None` the wheel has caught up with `now`. A `now` earlier
    /// than [`Wheel::now`] (a clock that stepped back) advances nothing.
    ///
    /// Cost: amortized O(levels) per timer, as an entry only ever moves down a level. The
    /// exception is an entry parked past the top window, which goes back onto the top level
    /// each time the top-level slots holding it come due: at most once per 2^30 ticks of
    /// clock (about 12 days) plus once per timer fired from the top level.
    pub fn poll(&mut self, now: Tick) -> Option<(TimerId, T)> {
        loop {
            let expiration = self.next_expiration().filter(|&(_, _, start)| start <= now);
            let Some((level, slot, start)) = expiration else {
                // Nothing starts at or before `now`, so moving the clock up to `now` keeps
                // every entry in a slot that starts after it.
                self.elapsed = self.elapsed.max(now);
                return None;
            };
            if level == 0 {
                // A level-0 slot holds exactly the entries due at its start.
                debug_assert!(start >= self.elapsed);
                self.elapsed = start;
                let index = self.heads[0][slot];
                self.unlink(index);
                let generation = self.entries[index as usize].generation;
                let value = self.release(index)?;
                return Some((TimerId { index, generation }, value));
            }
            self.cascade(level, slot, now);
        }
    }

    /// Empties slot `slot` of `level` (whose start is at or before `now`) and re-places its
    /// entries, all of which lie at or after the slot's start, further down.
    ///
    /// The clock jumps as far as it safely can rather than just to the slot's start: up to
    /// `now`, the earliest deadline among the entries taken out, and just short of the start
    /// of any slot left in place. Until then nothing is due, so no entry is passed over.
    ///
    /// On the top level every slot starting by `now` is taken out at once. Entries parked
    /// there past the top window land on the top level again, and taken one slot at a time,
    /// two such entries in neighbouring slots would each cap the jump at the other's start:
    /// they would leapfrog through the future one 2^30-tick slot per step (2^28 steps to
    /// reach a deadline near 2^58). Taken together, the jump reaches `now` or the earliest
    /// deadline, which then fires.
    fn cascade(&mut self, level: usize, slot: usize, now: Tick) {
        let mut lists = [NIL; SLOTS];
        lists[0] = self.take_slot(level, slot);
        let mut taken = 1;
        if level == level::TOP {
            while let Some((slot, start)) =
                level::next_slot(self.elapsed, level::TOP, self.occupied[level::TOP])
            {
                // At most the 63 other top-level slots, so `taken` stays below `SLOTS`.
                if start > now {
                    break;
                }
                lists[taken] = self.take_slot(level::TOP, slot);
                taken += 1;
            }
        }
        let lists = &lists[..taken];

        let mut target = now;
        for &head in lists {
            let mut index = head;
            loop {
                let entry = &self.entries[index as usize];
                target = target.min(entry.deadline);
                index = entry.next;
                if index == head {
                    break;
                }
            }
        }
        if let Some((_, _, other)) = self.next_expiration() {
            // `other` is after the taken slots' starts, so `other - 1` cannot underflow.
            target = target.min(other.saturating_sub(1));
        }
        debug_assert!(target >= self.elapsed);
        self.elapsed = self.elapsed.max(target);

        for &head in lists {
            let mut index = head;
            loop {
                let entry = &self.entries[index as usize];
                let next = entry.next;
                let (level, slot) = level::bucket(self.elapsed, entry.deadline);
                self.link(index, level, slot);
                if next == head {
                    break;
                }
                index = next;
            }
        }
    }

    /// Detaches the whole list of a slot and returns its head (the list stays circular).
    fn take_slot(&mut self, level: usize, slot: usize) -> u32 {
        self.occupied[level] &= !(1u64 << slot);
        std::mem::replace(&mut self.heads[level][slot], NIL)
    }

    /// The slot that must be processed first, as `(level, slot, start)`. Lower levels
    /// always start first (their slots lie inside the current slot of every level above),
    /// but taking the minimum keeps that from being load-bearing.
    fn next_expiration(&self) -> Option<(usize, usize, Tick)> {
        let mut best: Option<(usize, usize, Tick)> = None;
        for level in 0..LEVELS {
            if let Some((slot, start)) = level::next_slot(self.elapsed, level, self.occupied[level])
            {
                // Strict `<`: on a tie (which the placement rules rule out) the lower level
                // goes first, as it holds the finer-grained deadlines.
                match best {
                    Some((_, _, earliest)) if earliest <= start => {}
                    _ => best = Some((level, slot, start)),
                }
            }
        }
        best
    }

    /// A free slab index: recycled first so the slab stays as large as the peak number of
    /// timers, not the total ever inserted.
    fn alloc(&mut self) -> Option<u32> {
        if self.free != NIL {
            let index = self.free;
            self.free = self.entries[index as usize].next;
            return Some(index);
        }
        if self.entries.len() >= MAX_ENTRIES || self.entries.try_reserve(1).is_err() {
            return None;
        }
        self.entries.push(Entry {
            deadline: 0,
            value: None,
            prev: NIL,
            next: NIL,
            generation: 0,
            bucket: 0,
        });
        // In range: checked against `MAX_ENTRIES` just above.
        Some((self.entries.len() - 1) as u32)
    }

    /// Takes the value out of a slot already unlinked from its list and puts the slot on the
    /// free list under a new generation.
    fn release(&mut self, index: u32) -> Option<T> {
        let entry = &mut self.entries[index as usize];
        let value = entry.value.take()?;
        self.len -= 1;
        if entry.generation == u32::MAX {
            // Retire the slot instead of wrapping the generation: after 2^32 reuses a wrapped
            // generation would make a very old handle valid again. 40 bytes leaked per 4
            // billion timers on one slot is the cheaper price.
            return Some(value);
        }
        entry.generation += 1;
        entry.next = self.free;
        self.free = index;
        Some(value)
    }

    /// Appends entry `index` to the list of `slot` on `level`.
    fn link(&mut self, index: u32, level: usize, slot: usize) {
        let head = self.heads[level][slot];
        let (prev, next) = if head == NIL {
            self.heads[level][slot] = index;
            self.occupied[level] |= 1u64 << slot;
            (index, index)
        } else {
            let tail = self.entries[head as usize].prev;
            self.entries[tail as usize].next = index;
            self.entries[head as usize].prev = index;
            (tail, head)
        };
        let entry = &mut self.entries[index as usize];
        entry.prev = prev;
        entry.next = next;
        // Fits: LEVELS * SLOTS is 384.
        entry.bucket = (level * SLOTS + slot) as u16;
    }

    /// Removes entry `index` from whichever slot list holds it.
    fn unlink(&mut self, index: u32) {
        let entry = &self.entries[index as usize];
        let (prev, next) = (entry.prev, entry.next);
        let bucket = entry.bucket as usize;
        let (level, slot) = (bucket / SLOTS, bucket % SLOTS);
        if next == index {
            self.heads[level][slot] = NIL;
            self.occupied[level] &= !(1u64 << slot);
        } else {
            self.entries[prev as usize].next = next;
            self.entries[next as usize].prev = prev;
            if self.heads[level][slot] == index {
                self.heads[level][slot] = next;
            }
        }
    }

    /// Walks every list and the free list and panics on the first broken invariant; the unit
    /// tests and the fuzz target call it after every operation, so a corruption is caught at
    /// the operation that caused it rather than many operations later.
    #[cfg(any(test, fuzzing))]
    pub fn check_invariants(&self) {
        let mut seen = vec![false; self.entries.len()];
        let mut pending = 0;
        for level in 0..LEVELS {
            for slot in 0..SLOTS {
                let head = self.heads[level][slot];
                let bit = self.occupied[level] & (1u64 << slot) != 0;
                assert_eq!(
                    head != NIL,
                    bit,
                    "mask out of step at level {level} slot {slot}"
                );
                if head == NIL {
                    continue;
                }
                let start = level::slot_start(self.elapsed, level, slot);
                let mut index = head;
                loop {
                    let entry = &self.entries[index as usize];
                    assert!(!seen[index as usize], "entry {index} on two lists");
                    seen[index as usize] = true;
                    pending += 1;
                    assert!(entry.value.is_some(), "free entry {index} on a slot list");
                    assert_eq!(entry.bucket as usize, level * SLOTS + slot);
                    assert_eq!(self.entries[entry.next as usize].prev, index);
                    assert!(entry.deadline >= self.elapsed, "entry {index} in the past");
                    assert!(start <= entry.deadline, "slot starts after entry {index}");
                    if level == 0 {
                        assert_eq!(start, entry.deadline, "level-0 entry {index} off its tick");
                    } else {
                        assert!(start > self.elapsed, "level-{level} slot {slot} not ahead");
                    }
                    index = entry.next;
                    if index == head {
                        break;
                    }
                }
            }
        }
        assert_eq!(pending, self.len, "len out of step");
        let mut index = self.free;
        while index != NIL {
            let entry = &self.entries[index as usize];
            assert!(!seen[index as usize], "entry {index} both free and pending");
            seen[index as usize] = true;
            assert!(entry.value.is_none(), "free entry {index} holds a value");
            index = entry.next;
        }
        for (index, seen) in seen.iter().enumerate() {
            if !seen {
                // Only a retired slot may be on no list.
                assert_eq!(
                    self.entries[index].generation,
                    u32::MAX,
                    "entry {index} lost"
                );
            }
        }
    }
}
