#![no_main]
//! Any byte stream through a connection, once whole and once cut at fuzzer-chosen points:
//! no panic, and the same messages, replies and verdict either way. A reactor hands the
//! codec whatever one `read` returned, so where the cuts fall must never change the outcome.

use courier::ws::conn::{Conn, Event};
use courier::ws::frame::Role;

#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Closed(Option<u16>),
    Failed(u16),
}

/// Feeds `chunks` in order and records everything the connection said.
fn run<'a>(role: Role, max: usize, chunks: impl Iterator<Item = &'a [u8]>) -> (Vec<Seen>, Vec<u8>) {
    let mut conn = Conn::new(role, max);
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for chunk in chunks {
        let mut input = chunk.to_vec();
        let mut pos = 0;
        while pos < input.len() {
            let left = input.len() - pos;
            match conn.read(&mut input[pos..], &mut out) {
                Ok((used, event)) => {
                    assert!(used <= left);
                    match event {
                        Some(Event::Text(m)) => {
                            assert!(std::str::from_utf8(m).is_ok());
                            seen.push(Seen::Text(m.to_vec()));
                        }
                        Some(Event::Binary(m)) => {
                            assert!(m.len() <= max);
                            seen.push(Seen::Binary(m.to_vec()));
                        }
                        Some(Event::Closed(code)) => seen.push(Seen::Closed(code)),
                        None => assert_eq!(used, left, "no event, input left"),
                    }
                    assert!(used > 0, "no progress");
                    pos += used;
                }
                Err(e) => {
                    seen.push(Seen::Failed(e.close_code()));
                    return (seen, out);
                }
            }
        }
    }
    (seen, out)
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // Byte 0: role and message limit; bytes 1..=8: cut lengths; the rest is the stream.
    if data.len() < 9 {
        return;
    }
    let role = if data[0] & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let max = [0, 1, 125, 126, 65_536, 1 << 20][(data[0] as usize >> 1) % 6];
    let cuts: Vec<usize> = data[1..9].iter().map(|&b| b as usize % 32 + 1).collect();
    let stream = &data[9..];

    let (whole, whole_out) = run(role, max, std::iter::once(stream));

    let mut pieces = Vec::new();
    let mut rest = stream;
    for &cut in cuts.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at(cut.min(rest.len()));
        pieces.push(piece);
        rest = tail;
    }
    let (cut, cut_out) = run(role, max, pieces.into_iter());

    assert_eq!(whole, cut);
    assert_eq!(whole_out, cut_out);
});
