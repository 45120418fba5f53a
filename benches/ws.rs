//! Microbenchmarks of the WebSocket core, printed as figures (no timing assertions: these
//! machines are noisy; compare runs on one machine).
//!
//! - frame decode: small masked frames through `ws::conn::Conn::read` (header parse,
//!   unmask, UTF-8 check, event out), frames per second on one core;
//! - unmask: `mask::apply` over 64 KiB, GB/s, next to the byte-at-a-time reference.
//!
//! Run: `cargo bench --bench ws` (pin with `taskset -c 0` for steadier numbers).

use std::hint::black_box;
use std::time::{Duration, Instant};

use courier::ws::conn::{Conn, Event};
use courier::ws::frame::{self, OpCode, Role};
use courier::ws::mask;

/// Repeats `run` (which processes `units` per call) for about `budget` and returns units
/// per second of the best of five rounds.
fn measure(budget: Duration, units: u64, mut run: impl FnMut()) -> f64 {
    let mut best: f64 = 0.0;
    for _ in 0..5 {
        let start = Instant::now();
        let mut rounds = 0u64;
        while start.elapsed() < budget / 5 {
            run();
            rounds += 1;
        }
        let rate = (rounds * units) as f64 / start.elapsed().as_secs_f64();
        best = best.max(rate);
    }
    best
}

fn frame_decode(payload_len: usize, budget: Duration) {
    const FRAMES: usize = 10_000;
    let payload = vec![b'x'; payload_len];
    let mut wire = Vec::new();
    for i in 0..FRAMES {
        let key = (i as u32).wrapping_mul(2_654_435_761).to_ne_bytes();
        frame::write_frame(&mut wire, true, OpCode::Text, &payload, Some(key));
    }
    let mut conn = Conn::new(Role::Server, 1 << 20);
    let mut out = Vec::new();
    let mut input = wire.clone();
    let rate = measure(budget, FRAMES as u64, || {
        // Unmasking is in place: restore the masked bytes each round (a memcpy of the
        // input, which a real read into the buffer does too).
        input.copy_from_slice(&wire);
        let mut pos = 0;
        let mut seen = 0usize;
        while pos < input.len() {
            match conn.read(&mut input[pos..], &mut out) {
                Ok((used, Some(Event::Text(text)))) => {
                    seen += text.len();
                    pos += used;
                }
                Ok((used, _)) => pos += used,
                Err(e) => panic!("{e}"),
            }
        }
        black_box(seen);
    });
    println!(
        "frame decode  {payload_len:>4} B masked text frames   {:>7.2} M frames/s",
        rate / 1e6
    );
}

fn unmask(len: usize, budget: Duration) {
    let mut buf = vec![0xA5u8; len];
    let key = [0x12, 0x34, 0x56, 0x78];
    let fast = measure(budget, len as u64, || {
        mask::apply(black_box(&mut buf), key, 1);
    });
    let naive = measure(budget / 4, len as u64, || {
        mask::apply_naive(black_box(&mut buf), key, 1);
    });
    println!(
        "unmask        {:>6} B                    {:>7.2} GB/s (byte-at-a-time: {:.2} GB/s)",
        len,
        fast / 1e9,
        naive / 1e9
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without
    // it, and then a quick pass that only proves the code paths work is enough.
    let budget = if std::env::args().any(|a| a == "--bench") {
        Duration::from_secs(2)
    } else {
        Duration::from_millis(20)
    };
    frame_decode(16, budget);
    frame_decode(125, budget);
    unmask(64 * 1024, budget);
    unmask(1024, budget);
}
