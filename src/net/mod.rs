//! The mio reactor: one thread owns the listener, every connection (a slab whose ids carry
//! a generation) and the timer wheel. It moves bytes between the kernel and the sans-IO
//! cores and never blocks: no disk, no sleeping, no unbounded queue.
//!
//! Per wake-up and connection: read until the socket is drained (a short read means
//! drained: edge-triggered epoll reports every new arrival), decode every complete frame
//! in place in one shared read buffer, collect all output in one shared buffer, then make
//! one write. Only what the kernel refused is copied into the connection's own queue, so
//! an idle connection owns no buffer at all.

mod connection;
mod reactor;

pub use reactor::{run, ConnId};

use std::io;
use std::net::SocketAddr;

use crate::ws::frame::OpCode;
use crate::ws::handshake::{Request, Upgrade};

/// Whether an upgrade request becomes a WebSocket connection.
pub enum Admission {
    /// Send `101`; echo `protocol` in `Sec-WebSocket-Protocol` when given.
    Accept { protocol: Option<&'static str> },
    /// The service wrote a complete HTTP response (401, 403, …); the connection ends.
    Refuse,
}

/// The application on top of the reactor. Everything it writes to `out` goes to the
/// connection the call is about, after whatever the reactor already queued there.
pub trait Service {
    /// A request that is not a WebSocket upgrade: write a complete HTTP response.
    fn http(&mut self, request: &Request<'_>, peer: SocketAddr, out: &mut Vec<u8>);

    /// An upgrade request that passed RFC 6455 §4.2.1 validation.
    fn upgrade(
        &mut self,
        request: &Request<'_>,
        upgrade: &Upgrade<'_>,
        peer: SocketAddr,
        out: &mut Vec<u8>,
    ) -> Admission;

    /// A complete data message. Returning a close code starts the closing handshake
    /// with it (after anything written to `out`).
    fn message(
        &mut self,
        conn: ConnId,
        opcode: OpCode,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Option<(u16, &'static str)>;

    /// A connection that was upgraded is gone, for whatever reason.
    fn closed(&mut self, _conn: ConnId) {}
}

/// Raises the soft open-file limit to the hard one (each connection is a descriptor; the
/// soft default of 1024 is a relic) and returns the limit now in force.
pub fn raise_open_file_limit() -> io::Result<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, initialised struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Ok(usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX))
}
