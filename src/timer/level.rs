//! Slot arithmetic for the wheel: which bucket a deadline belongs in and when a bucket must
//! be processed. Pure functions of `(elapsed, deadline)` so the rules can be tested apart
//! from the slab and the lists.
//!
//! A tick is written in base 64: digit `L` of a tick (bits `6L..6L+6`) is its slot on level
//! `L`. An entry sits on the level of the highest digit where its deadline differs from the
//! wheel's current time, in the slot named by the deadline's digit there. Every digit above
//! agrees with the current time, so the slot's start (the deadline with the digits below `L`
//! zeroed) is never later than the deadline and always later than the current time (level 0:
//! equal, because the digits below do not exist). Processing a slot at its start therefore
//! fires level-0 entries exactly on time and moves higher-level entries to a lower level.

use super::Tick;

/// Bits per level digit: 64 slots fit one `u64` occupancy mask.
pub(super) const SLOT_BITS: u32 = 6;
/// Slots per level.
pub(super) const SLOTS: usize = 1 << SLOT_BITS;
/// Levels: 64^6 ms is about 795 days, which covers every timeout a server sets; anything
/// later is parked on the top level and re-placed when its slot comes round (see `bucket`).
pub(super) const LEVELS: usize = 6;
/// The top level, which alone wraps round.
pub(super) const TOP: usize = LEVELS - 1;
/// Ticks covered by all levels together (2^36).
const TOP_SPAN_BITS: u32 = SLOT_BITS * LEVELS as u32;

/// Ticks spanned by one slot of `level`.
fn slot_span(level: usize) -> u64 {
    1u64 << (SLOT_BITS * level as u32)
}

/// Digit `level` of `tick`: the slot it maps to on that level.
fn digit(tick: Tick, level: usize) -> usize {
    ((tick >> (SLOT_BITS * level as u32)) as usize) & (SLOTS - 1)
}

/// The `(level, slot)` a pending `deadline` belongs in, seen from `elapsed`.
///
/// `deadline == elapsed` maps to level 0, the slot of `elapsed` itself: that is where entries
/// stay that are already due but not yet handed out by `poll`.
pub(super) fn bucket(elapsed: Tick, deadline: Tick) -> (usize, usize) {
    // OR-ing in the low digit makes equal ticks land on level 0 instead of taking
    // `leading_zeros` of zero.
    let differing = (elapsed ^ deadline) | (SLOTS as u64 - 1);
    let level = ((63 - differing.leading_zeros()) / SLOT_BITS) as usize;
    if level < LEVELS {
        return (level, digit(deadline, level));
    }
    // Beyond the top level's window. The top level is read as a ring: a slot at or behind the
    // current time's top digit means "that slot in the next window" (see `slot_start`). Park
    // the entry in the latest such slot whose start is still no later than its deadline; it is
    // re-placed from there, and `Wheel::poll` jumps the clock straight to the earliest
    // deadline among the top-level slots it empties, so even a deadline near `u64::MAX`
    // costs a few cascades, not 2^28 hops of one window each.
    let now_digit = digit(elapsed, TOP);
    let next_window = (elapsed >> TOP_SPAN_BITS) + 1;
    if deadline >> TOP_SPAN_BITS == next_window {
        (TOP, digit(deadline, TOP).min(now_digit))
    } else {
        (TOP, now_digit)
    }
}

/// The tick at which `slot` of `level` must be processed, seen from `elapsed`.
///
/// Slots ahead of the current digit start in the current window of the level; on the top
/// level, slots at or behind it start in the next window. Lower levels never hold such slots
/// (their entries share every higher digit with `elapsed`), but the ring reading keeps the
/// answer no earlier than `elapsed` whatever happens. Saturates instead of overflowing: the
/// next window past `u64::MAX` cannot hold a deadline, so nothing is ever placed there.
pub(super) fn slot_start(elapsed: Tick, level: usize, slot: usize) -> Tick {
    let span = slot_span(level);
    let window_bits = SLOT_BITS * (level as u32 + 1);
    let window_start = if window_bits >= 64 {
        0
    } else {
        elapsed & !((1u64 << window_bits) - 1)
    };
    let offset = slot as u64 * span;
    if slot_is_ahead(elapsed, level, slot) {
        window_start + offset
    } else {
        window_start
            .checked_add(span << SLOT_BITS)
            .and_then(|next| next.checked_add(offset))
            .unwrap_or(Tick::MAX)
    }
}

/// Whether `slot` lies in the current window of `level` rather than the next one. Level 0's
/// current slot counts as ahead: it holds entries due exactly at `elapsed`. The top level's
/// current slot does not: `bucket` parks far deadlines there for the next window.
fn slot_is_ahead(elapsed: Tick, level: usize, slot: usize) -> bool {
    let now_digit = digit(elapsed, level);
    if level == TOP {
        slot > now_digit
    } else {
        slot >= now_digit
    }
}

/// The occupied slot of `level` that must be processed first, with its start.
pub(super) fn next_slot(elapsed: Tick, level: usize, occupied: u64) -> Option<(usize, Tick)> {
    if occupied == 0 {
        return None;
    }
    let now_digit = digit(elapsed, level) as u32;
    let first_ahead = if level == TOP {
        now_digit + 1
    } else {
        now_digit
    };
    let ahead = occupied & u64::MAX.checked_shl(first_ahead).unwrap_or(0);
    let slot = if ahead != 0 {
        ahead.trailing_zeros()
    } else {
        occupied.trailing_zeros()
    } as usize;
    Some((slot, slot_start(elapsed, level, slot)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_in_same_64_block_is_level_0_at_its_own_tick() {
        assert_eq!(bucket(0, 0), (0, 0));
        assert_eq!(bucket(0, 63), (0, 63));
        assert_eq!(bucket(70, 100), (0, 100 % 64));
        assert_eq!(slot_start(70, 0, 100 % 64), 100);
    }

    #[test]
    fn level_is_the_highest_differing_digit() {
        for level in 1..LEVELS {
            let span = slot_span(level);
            let deadline = 5 * span + 7;
            assert_eq!(bucket(0, deadline), (level, 5), "level {level}");
            assert_eq!(slot_start(0, level, 5), 5 * span);
            // One tick before the slot's start, the entry is still on the same level.
            assert_eq!(bucket(5 * span - 1, deadline).0, level);
        }
    }

    #[test]
    fn deadline_past_the_top_window_is_parked_on_the_top_level_no_later_than_itself() {
        for &(elapsed, deadline) in &[
            (0u64, 1u64 << 36),
            (0, (1 << 36) + (1 << 30) * 5),
            ((1 << 30) * 7 + 3, (1 << 36) + (1 << 30) * 5),
            ((1 << 30) * 7 + 3, (1 << 36) + (1 << 30) * 9),
            (0, 1 << 40),
            (12345, u64::MAX / 2),
            (0, u64::MAX),
        ] {
            let (level, slot) = bucket(elapsed, deadline);
            assert_eq!(level, TOP);
            let start = slot_start(elapsed, level, slot);
            assert!(
                start > elapsed && start <= deadline,
                "{elapsed} {deadline} {start}"
            );
        }
    }

    #[test]
    fn slot_start_never_overflows_in_the_last_window() {
        let elapsed = u64::MAX - 5;
        for level in 0..LEVELS {
            for slot in 0..SLOTS {
                let start = slot_start(elapsed, level, slot);
                if slot_is_ahead(elapsed, level, slot) {
                    assert!(start <= u64::MAX - 63 + slot as u64 || level > 0);
                } else {
                    assert_eq!(start, u64::MAX, "saturates, level {level} slot {slot}");
                }
            }
        }
        let (level, slot) = bucket(elapsed, u64::MAX);
        assert_eq!(slot_start(elapsed, level, slot), u64::MAX);
    }

    #[test]
    fn next_slot_reads_the_top_level_as_a_ring() {
        let elapsed = (1u64 << 30) * 10;
        // Slot 3 is behind the current digit (10): next window. Slot 12 is ahead.
        let mask = (1 << 3) | (1 << 12);
        assert_eq!(next_slot(elapsed, TOP, mask), Some((12, (1 << 30) * 12)));
        assert_eq!(
            next_slot(elapsed, TOP, 1 << 3),
            Some((3, (1 << 36) + (1 << 30) * 3))
        );
        assert_eq!(
            next_slot(elapsed, TOP, 1 << 10),
            Some((10, (1 << 36) + (1 << 30) * 10))
        );
        assert_eq!(next_slot(elapsed, TOP, 0), None);
    }
}
