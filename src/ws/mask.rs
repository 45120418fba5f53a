//! Payload masking (RFC 6455 §5.3): `byte[i] ^= key[(offset + i) % 4]`.
//!
//! A payload reaches us in pieces (a frame can span reads), so the functions take the
//! position within the payload at which the piece starts and XOR from the matching key
//! byte. The fast path works a machine word at a time; `apply_naive` is the reference the
//! tests and the fuzzer compare it against.

/// XORs `buf` with the masking key, `buf[0]` being byte number `offset` of the payload.
#[inline]
pub fn apply(buf: &mut [u8], key: [u8; 4], offset: usize) {
    // Rotate the key so that key[0] lines up with buf[0]; then the key repeats every 4
    // bytes from the start of `buf` and a word-sized key is just the rotated key twice.
    let key = rotate(key, offset);

    // Under 16 bytes the word setup costs more than it saves (control frames, short chat
    // messages): do it bytewise.
    if buf.len() < 16 {
        for (i, byte) in buf.iter_mut().enumerate() {
            *byte ^= key[i & 3];
        }
        return;
    }

    let key32 = u32::from_ne_bytes(key);
    // The same 4 bytes in both halves, so the word's memory layout is the key twice,
    // whatever the endianness.
    let key64 = (u64::from(key32) << 32) | u64::from(key32);
    // `from_ne_bytes`/`to_ne_bytes` on 8-byte chunks compile to unaligned word loads and
    // stores (and LLVM vectorizes the loop), so no unsafe alignment games are needed. The
    // key pattern stays in phase because every chunk is a multiple of 4 bytes long.
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes((&*chunk).try_into().expect("chunk of 8")) ^ key64;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= key[i & 3];
    }
}

/// The byte-at-a-time definition straight from §5.3, kept as the oracle.
pub fn apply_naive(buf: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte ^= key[(offset + i) % 4];
    }
}

#[inline]
fn rotate(key: [u8; 4], offset: usize) -> [u8; 4] {
    let mut rotated = key;
    rotated.rotate_left(offset & 3);
    rotated
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + 7) as u8).collect()
    }

    /// The fast path must equal §5.3's definition for every length, for every alignment of
    /// the slice in memory, and for every phase of the key.
    #[test]
    fn word_at_a_time_equals_naive_for_every_length_alignment_and_offset() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let backing = pattern(300 + 8);
        for align in 0..8 {
            for len in 0..300 {
                for offset in 0..4 {
                    let mut fast = backing[align..align + len].to_vec();
                    let mut fast_in_place = backing.clone();
                    let mut naive = fast.clone();
                    apply(&mut fast, key, offset);
                    apply(&mut fast_in_place[align..align + len], key, offset);
                    apply_naive(&mut naive, key, offset);
                    assert_eq!(fast, naive, "len {len} align {align} offset {offset}");
                    assert_eq!(&fast_in_place[align..align + len], &naive[..]);
                }
            }
        }
    }

    /// Masking a payload in arbitrary pieces, each with its running offset, must equal
    /// masking it whole (frames arrive split across reads).
    #[test]
    fn masking_in_pieces_equals_masking_whole() {
        let key = [1, 2, 3, 4];
        let mut whole = pattern(1000);
        let mut pieces = whole.clone();
        apply_naive(&mut whole, key, 0);
        let mut start = 0;
        for step in [1, 3, 7, 8, 13, 64, 5, 100, 2].iter().cycle() {
            if start >= pieces.len() {
                break;
            }
            let end = (start + step).min(pieces.len());
            apply(&mut pieces[start..end], key, start);
            start = end;
        }
        assert_eq!(whole, pieces);
    }

    /// RFC 6455 §5.7: the masked "Hello" example.
    #[test]
    fn rfc_example_masked_hello() {
        let mut payload = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        apply(&mut payload, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(&payload, b"Hello");
    }
}
