//! Incremental UTF-8 validation for text messages that arrive in pieces.
//!
//! §8.1: "When an endpoint is to interpret a byte stream as UTF-8 but finds that the byte
//! stream is not, in fact, a valid UTF-8 stream, that endpoint MUST _Fail the WebSocket
//! Connection_". Failing at the first bad byte, rather than when the message ends, means
//! a peer cannot make us buffer megabytes of garbage (Autobahn 6.4.x checks exactly this).
//!
//! std's `from_utf8` already reports "invalid" as soon as a sequence cannot be completed
//! (it checks the second byte's range, so `ED A0` or `F4 90` fail at once) and "incomplete"
//! only for a valid prefix at the end. We keep that prefix (at most 3 bytes) and finish the
//! character with the next piece.

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Utf8Validator {
    /// A valid but unfinished sequence from the end of the previous piece.
    carry: [u8; 4],
    carry_len: u8,
}

/// The byte stream is not UTF-8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidUtf8;

impl Utf8Validator {
    /// Validates the next piece of the stream. Fails as soon as the bytes seen so far can
    /// no longer be the start of valid UTF-8.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), InvalidUtf8> {
        if self.carry_len > 0 {
            let have = usize::from(self.carry_len);
            let need = sequence_len(self.carry[0]);
            let take = (need - have).min(bytes.len());
            self.carry[have..have + take].copy_from_slice(&bytes[..take]);
            self.carry_len += take as u8;
            bytes = &bytes[take..];
            match std::str::from_utf8(&self.carry[..usize::from(self.carry_len)]) {
                Ok(_) => self.carry_len = 0,
                Err(e) if e.error_len().is_none() => return Ok(()),
                Err(_) => return Err(InvalidUtf8),
            }
        }
        match std::str::from_utf8(bytes) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let tail = &bytes[e.valid_up_to()..];
                self.carry[..tail.len()].copy_from_slice(tail);
                self.carry_len = tail.len() as u8;
                Ok(())
            }
            Err(_) => Err(InvalidUtf8),
        }
    }

    /// The message ended: an unfinished sequence is invalid.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let complete = self.carry_len == 0;
        self.carry_len = 0;
        if complete {
            Ok(())
        } else {
            Err(InvalidUtf8)
        }
    }
}

/// Length of the sequence a lead byte starts; only called on bytes std accepted as the
/// start of an incomplete sequence, so it is 2, 3 or 4.
fn sequence_len(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_split(bytes: &[u8], cut: usize) -> Result<(), InvalidUtf8> {
        let mut v = Utf8Validator::default();
        v.feed(&bytes[..cut])?;
        v.feed(&bytes[cut..])?;
        v.finish()
    }

    #[test]
    fn valid_text_split_anywhere_is_valid() {
        let text = "κόσμε 🎉 courier — ünïcødé".as_bytes();
        for cut in 0..=text.len() {
            assert_eq!(feed_split(text, cut), Ok(()), "cut at {cut}");
        }
        // One byte at a time.
        let mut v = Utf8Validator::default();
        for byte in text {
            v.feed(std::slice::from_ref(byte)).unwrap();
        }
        v.finish().unwrap();
    }

    #[test]
    fn invalid_text_split_anywhere_is_invalid() {
        for bad in [
            &b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited"[..],
            b"\xf4\x90\x80\x80",
            b"ab\xc0\xafcd",
            b"\xff",
            b"ok\xe0\x80\x80",
        ] {
            for cut in 0..=bad.len() {
                assert_eq!(
                    feed_split(bad, cut),
                    Err(InvalidUtf8),
                    "{bad:?} cut at {cut}"
                );
            }
        }
    }

    /// §8.1 fail-fast: a surrogate lead `ED A0` is invalid before the rest arrives.
    #[test]
    fn fails_at_the_first_invalid_byte_not_at_the_end() {
        let mut v = Utf8Validator::default();
        v.feed(b"hello \xed").unwrap();
        assert_eq!(v.feed(b"\xa0"), Err(InvalidUtf8));

        let mut v = Utf8Validator::default();
        assert_eq!(v.feed(b"\xf5"), Err(InvalidUtf8));
    }

    #[test]
    fn truncated_sequence_at_message_end_is_invalid() {
        let mut v = Utf8Validator::default();
        v.feed(b"abc\xe2\x82").unwrap();
        assert_eq!(v.finish(), Err(InvalidUtf8));
        // And the validator is reusable for the next message.
        v.feed(b"ok").unwrap();
        assert_eq!(v.finish(), Ok(()));
    }
}
