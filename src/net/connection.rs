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
    Handshake { pending: Vec<u8>, peer: SocketAddr },
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
}

impl Connection {
    pub fn new(socket: TcpStream, peer: SocketAddr, generation: u32, now: u64) -> Connection {
        Connection {
            socket,
            generation,
            phase: Phase::Handshake {
                pending: Vec::new(),
                peer,
            },
            unsent: Vec::new(),
            timer: None,
            last_read: now,
            wants_write: false,
            read_blocked: false,
            dirty: false,
            close_code: 0,
        }
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
