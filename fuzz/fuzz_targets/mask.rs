#![no_main]
//! The word-at-a-time unmasker equals the byte loop for any bytes, key and phase, and
//! unmasking in two pieces equals unmasking at once.

use courier::ws::mask;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() < 6 {
        return;
    }
    let key = [data[0], data[1], data[2], data[3]];
    let offset = data[4] as usize;
    let split = data[5] as usize;
    let payload = &data[6..];

    let mut fast = payload.to_vec();
    let mut naive = payload.to_vec();
    mask::apply(&mut fast, key, offset);
    mask::apply_naive(&mut naive, key, offset);
    assert_eq!(fast, naive);

    let split = split.min(payload.len());
    let mut pieces = payload.to_vec();
    let (head, tail) = pieces.split_at_mut(split);
    mask::apply(head, key, offset);
    mask::apply(tail, key, offset + split);
    assert_eq!(pieces, naive);
});
