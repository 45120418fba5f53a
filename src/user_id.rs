//! PROTOCOL.md's user id: 1 to 64 bytes of `[A-Za-z0-9_.-]`. A module of its own because
//! two layers check it: `im` (token subjects, targets, watch lists) and `store` (the user
//! ids inside a conversation id, which comes from a client verbatim), and the store does
//! not depend on `im`.

/// The longest user id, in bytes.
pub const MAX_USER_ID_LEN: usize = 64;

/// Whether `id` is a user id: 1 to [`MAX_USER_ID_LEN`] bytes of `[A-Za-z0-9_.-]`.
pub fn valid_user_id(id: &str) -> bool {
    (1..=MAX_USER_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids() {
        for ok in [
            "a",
            "Z",
            "0",
            "_",
            ".",
            "-",
            "alice.b-c_9",
            "x".repeat(64).as_str(),
        ] {
            assert!(valid_user_id(ok), "{ok:?}");
        }
        for bad in [
            "",
            "x".repeat(65).as_str(),
            "a/b",
            "a:b",
            "a b",
            "a@b",
            "\u{e9}",
            "a+b",
            "a\tb",
        ] {
            assert!(!valid_user_id(bad), "{bad:?}");
        }
    }
}
