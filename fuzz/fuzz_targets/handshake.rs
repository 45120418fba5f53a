#![no_main]
//! Any bytes through the handshake parser and validator: no panic, the response written
//! for the outcome is the one promised, and parsing is the same however the bytes arrive.

use courier::ws::handshake::{parse_request, write_accept, write_rejection, HandshakeError};

fn assert_rejection(err: HandshakeError) {
    let mut out = Vec::new();
    write_rejection(&mut out, err);
    let status_line = format!("HTTP/1.1 {} ", err.status());
    assert!(out.starts_with(status_line.as_bytes()), "{err:?}");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let full = parse_request(data);
    match &full {
        Ok(Some((req, used))) => {
            assert!(*used <= data.len());
            match req.websocket() {
                Ok(up) => {
                    let mut out = Vec::new();
                    let chosen = up.protocols().next();
                    write_accept(&mut out, up.key(), chosen);
                    assert!(out.starts_with(b"HTTP/1.1 101 "));
                    assert!(out.ends_with(b"\r\n\r\n"));
                }
                Err(err) => assert_rejection(err),
            }
        }
        Ok(None) => {}
        Err(err) => assert_rejection(*err),
    }

    // Byte-at-a-time equivalence: a reader that has seen only a prefix must either wait
    // (None), or already see the same head (same length, same request), or the same error
    // the whole input gives. About 64 prefixes spread over the input, plus those around
    // the end of the head, where the answer flips from None to Some.
    let step = (data.len() / 64).max(1);
    let around_head = match &full {
        Ok(Some((_, used))) => used.saturating_sub(2)..(used + 2).min(data.len() + 1),
        _ => 0..0,
    };
    for end in (0..=data.len()).step_by(step).chain(around_head) {
        match (parse_request(&data[..end]), &full) {
            (Ok(None), Ok(Some((_, used)))) => assert!(end < *used, "{end}"),
            (Ok(None), _) => {}
            (Ok(Some((req, used))), Ok(Some((full_req, full_used)))) => {
                assert_eq!(used, *full_used, "prefix {end}");
                assert_eq!(req, *full_req, "prefix {end}");
                assert_eq!(req.websocket(), full_req.websocket());
            }
            (Ok(Some(_)), other) => panic!("prefix {end} complete, whole input {other:?}"),
            (Err(e), Err(full_e)) => assert_eq!(e, *full_e, "prefix {end}"),
            (Err(e), other) => panic!("prefix {end} gave {e:?}, whole input {other:?}"),
        }
    }
});
