//! What the reactor keeps per connection. Its size is a headline figure (bytes per idle
//! connection), so nothing here is allocated while the connection is idle and nothing is
//! stored that can be asked of the kernel when it is needed (the peer address).

use std::net::SocketAddr;

use mio::net::TcpStream;

use crate::timer::TimerId;
use crate::ws;

pub(super) enum Phase {
    /// Waiting for the request head. `pending` is used only when a head arrives split
    /// across reads; a head that comes in one read is parsed from the shared buffer. The
    /// peer address is kept only here, where it is wanted (for the service's admission
    /// decision), and costs nothing: the `Upgraded` variant is larger anyway.
    /// `metrics_only`: accepted on the metrics listener, so plain HTTP only (no upgrade).
    Handshake {
        pending: Vec<u8>,
        peer: SocketAddr,
        metrics_only: bool,
    },
    /// Upgraded. While the WebSocket is open the idle timer runs; once our close frame is
    /// out (`ws.state()` is `CloseSent`) the close timer bounds the wait for the peer's.
    Upgraded(ws::conn::Conn),
    /// Nothing more to say: flush, half-close our side, discard what the peer still sends
    /// until it closes or the close timeout passes. Closing a socket with unread input
    /// makes the kernel send RST, which can destroy our last frame in flight; lingering is
    /// what makes the close frame actually arrive.
    /// `upgraded`: the service knew this connection and is told when it goes.
    Linger { write_shut: bool, upgraded: bool },
}

pub(super) struct Connection {
    pub socket: TcpStream,
    pub generation: u32,
    pub phase: Phase,
    /// Output the kernel did not take yet; unallocated whenever everything was written.
    pub unsent: Vec<u8>,
    /// The one pending timer of this connection: handshake, idle or close deadline.
    pub timer: Option<TimerId>,
    /// When bytes last arrived (clock ms), for the lazily re-armed idle timer.
    pub last_read: u64,
    /// WRITABLE interest is registered (only while `unsent` is not empty).
    pub wants_write: bool,
    /// Reading stopped before the socket was drained (output over the soft cap); the
    /// edge-triggered readiness is spent, so reading must be resumed by hand.
    pub read_blocked: bool,
    /// Listed in the reactor's dirty list: output was queued by another connection's event.
    pub dirty: bool,
    /// The close code sent or received first, 0 while there is none (for the service's
    /// `closed`, which reports 1006 for a connection that ended without one).
    pub close_code: u16,
    /// Output was dropped for going over the hard cap: nothing more is queued, and our
    /// close frame is the next thing after `frame_rest`.
    pub shed: bool,
    /// The service asked to hear when the output has drained to the soft cap.
    pub watch_output: bool,
    /// Reading waits for the read budget to refill (listed in the reactor's throttled
    /// heap); resumed by hand, since the edge-triggered readiness is spent.
    pub throttled: bool,
    /// Bytes at the front of `unsent` that finish a frame the kernel already took the
    /// start of. Whatever else is dropped, these go out first, or the peer would read the
    /// next frame as the rest of that one. (Frames are bounded by the hard cap, which the
    /// configuration keeps below 4 GiB.)
    pub frame_rest: u32,
    /// When the message being received began, as the low 32 bits of the clock (ms), 0
    /// while none is: a message must complete within the message timeout, or a peer could
    /// pin its assembly buffer by dripping it. 32 bits suffice for a span bounded by a
    /// timeout, and an idle connection's size is a headline figure.
    pub message_began: u32,
    /// Bytes per second this connection's endpoint lets it send (0: no limit), the budget
    /// left (negative after a read that overdrew it), and when it was last refilled (the
    /// low 32 bits of the clock, ms). Charged for every byte read, before anything is
    /// decoded or parsed.
    pub read_rate: u32,
    pub read_budget: i32,
    pub budget_at: u32,
}

impl Connection {
    pub fn new(
        socket: TcpStream,
        peer: SocketAddr,
        metrics_only: bool,
        generation: u32,
        now: u64,
    ) -> Connection {
        Connection {
            socket,
            generation,
            phase: Phase::Handshake {
                pending: Vec::new(),
                peer,
                metrics_only,
            },
            unsent: Vec::new(),
            timer: None,
            last_read: now,
            wants_write: false,
            read_blocked: false,
            dirty: false,
            close_code: 0,
            shed: false,
            watch_output: false,
            throttled: false,
            frame_rest: 0,
            message_began: 0,
            read_rate: 0,
            read_budget: 0,
            budget_at: 0,
        }
    }

    /// Starts charging reads against `rate` bytes per second, with a burst of twice that.
    pub fn limit_reads(&mut self, rate: u32, now: u64) {
        self.read_rate = rate;
        self.read_budget = read_burst(rate);
        self.budget_at = now as u32;
    }

    /// Refills the read budget for the time passed; `None` when it may read now,
    /// otherwise in how many ms the budget is positive again.
    pub fn read_wait(&mut self, now: u64) -> Option<u64> {
        if self.read_rate == 0 {
            return None;
        }
        let elapsed = u64::from((now as u32).wrapping_sub(self.budget_at));
        let refill = elapsed.saturating_mul(u64::from(self.read_rate)) / 1000;
        if refill > 0 {
            let budget = i64::from(self.read_budget) + refill as i64;
            self.read_budget = budget.min(i64::from(read_burst(self.read_rate))) as i32;
            self.budget_at = now as u32;
        }
        if self.read_budget > 0 {
            return None;
        }
        let missing = 1 - i64::from(self.read_budget);
        Some((missing as u64 * 1000).div_ceil(u64::from(self.read_rate)))
    }

    /// How many bytes the next read may take, at most `buffer`: what the budget holds,
    /// but not less than a few KiB, or a slow rate would mean many tiny reads.
    pub fn read_allowance(&self, buffer: usize) -> usize {
        const LEAST: usize = 4096;
        if self.read_rate == 0 {
            return buffer;
        }
        let budget = usize::try_from(self.read_budget).unwrap_or(0);
        budget.clamp(LEAST.min(buffer), buffer)
    }

    /// Charges `bytes` read against the budget.
    pub fn charge_read(&mut self, bytes: usize) {
        if self.read_rate > 0 {
            let bytes = i32::try_from(bytes).unwrap_or(i32::MAX);
            self.read_budget = self.read_budget.saturating_sub(bytes);
        }
    }

    /// Drops every queued byte except the rest of a frame already begun on the wire, and
    /// refuses all output from now on. Returns how many bytes were dropped.
    pub fn shed_output(&mut self) -> usize {
        debug_assert!(self.frame_rest as usize <= self.unsent.len());
        let keep = (self.frame_rest as usize).min(self.unsent.len());
        let dropped = self.unsent.len() - keep;
        self.unsent.truncate(keep);
        self.unsent.shrink_to_fit();
        self.shed = true;
        dropped
    }

    /// After `written` bytes of `unsent` followed by `fresh` went to the kernel, records
    /// how much of a frame begun on the wire is left at the front of what remains.
    /// `fresh_head` bytes at the front of `fresh` are not frames (a `101`): they too must
    /// go out whole.
    pub fn note_written(&mut self, written: usize, fresh: &[u8], fresh_head: usize) {
        let rest = frame_rest_after(
            &self.unsent,
            self.frame_rest as usize,
            written,
            fresh,
            fresh_head,
        );
        self.frame_rest = u32::try_from(rest).unwrap_or(u32::MAX);
    }

    /// Records the close code sent or received, unless one already was: the first one is
    /// what the connection ended with.
    pub fn note_close(&mut self, code: u16) {
        if self.close_code == 0 {
            self.close_code = code;
        }
    }

    /// Was this connection upgraded (so the service knows of it)?
    pub fn was_upgraded(&self) -> bool {
        match self.phase {
            Phase::Handshake { .. } => false,
            Phase::Upgraded(_) => true,
            Phase::Linger { upgraded, .. } => upgraded,
        }
    }
}

/// The most a connection limited to `rate` bytes per second may read at once.
fn read_burst(rate: u32) -> i32 {
    i32::try_from(u64::from(rate) * 2).unwrap_or(i32::MAX)
}

/// How many bytes at the front of what is left after `written` bytes of `queued` then
/// `fresh` went out belong to a frame whose start went out. `queued` holds whole frames
/// after its first `rest` bytes and `fresh` after its first `fresh_head` bytes, so a walk
/// over headers starts on one; the bytes before it are kept whole like a frame.
fn frame_rest_after(
    queued: &[u8],
    rest: usize,
    written: usize,
    fresh: &[u8],
    fresh_head: usize,
) -> usize {
    let (buf, start, consumed) = if written <= queued.len() {
        (queued, rest, written)
    } else {
        (fresh, fresh_head, written - queued.len())
    };
    // All of a buffer written ends on a frame boundary: no walk needed.
    if consumed == buf.len() {
        return 0;
    }
    let mut boundary = start;
    while boundary < consumed {
        boundary += crate::ws::frame::next_boundary(&buf[boundary..]);
    }
    boundary - consumed
}

#[cfg(test)]
mod tests {
    use super::frame_rest_after;
    use crate::ws::frame::{write_frame, OpCode};

    fn frames(lens: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        for &len in lens {
            write_frame(&mut out, true, OpCode::Text, &vec![b'x'; len], None);
        }
        out
    }

    #[test]
    fn the_rest_of_a_frame_cut_by_a_write_is_found_in_either_buffer() {
        // Frames of 2 + 10, 4 + 200 and 2 + 5 bytes.
        let queued = frames(&[10, 200, 5]);
        let fresh = frames(&[3, 70_000]);
        let q = queued.len();
        assert_eq!(frame_rest_after(&queued, 0, 0, &fresh, 0), 0);
        assert_eq!(frame_rest_after(&queued, 0, 5, &fresh, 0), 12 - 5);
        assert_eq!(frame_rest_after(&queued, 0, 12, &fresh, 0), 0);
        assert_eq!(frame_rest_after(&queued, 0, 13, &fresh, 0), 204 - 1);
        assert_eq!(frame_rest_after(&queued, 0, q, &fresh, 0), 0);
        assert_eq!(frame_rest_after(&queued, 0, q + 1, &fresh, 0), 5 - 1);
        assert_eq!(
            frame_rest_after(&queued, 0, q + 5 + 10, &fresh, 0),
            70_010 - 10
        );
        assert_eq!(frame_rest_after(&queued, 0, q + fresh.len(), &fresh, 0), 0);
        // Queued output that starts with the rest of a frame: the walk starts after it.
        let mut tail_first = vec![b'x'; 7];
        tail_first.extend_from_slice(&queued);
        assert_eq!(frame_rest_after(&tail_first, 7, 3, &fresh, 0), 4);
        assert_eq!(frame_rest_after(&tail_first, 7, 7, &fresh, 0), 0);
        assert_eq!(frame_rest_after(&tail_first, 7, 8, &fresh, 0), 11);
    }

    #[test]
    fn a_handshake_response_before_the_frames_is_kept_whole_and_not_walked() {
        // "HT" would read as a header with a length of 0x54: the walk must start after it.
        let mut fresh = b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec();
        let head = fresh.len();
        fresh.extend_from_slice(&frames(&[10, 300]));
        assert_eq!(frame_rest_after(&[], 0, 4, &fresh, head), head - 4);
        assert_eq!(frame_rest_after(&[], 0, head, &fresh, head), 0);
        assert_eq!(frame_rest_after(&[], 0, head + 3, &fresh, head), 12 - 3);
        assert_eq!(frame_rest_after(&[], 0, head + 13, &fresh, head), 304 - 1);
    }
}
