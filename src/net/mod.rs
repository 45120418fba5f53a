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
mod out;
mod reactor;

pub use out::Out;
pub use reactor::{run, Bound, ConnId, Waker};

use std::io;
use std::net::SocketAddr;

use crate::ws::frame::OpCode;
use crate::ws::handshake::{Request, Upgrade};

/// Whether an upgrade request becomes a WebSocket connection.
pub enum Admission {
    /// Send `101`; echo `protocol` in `Sec-WebSocket-Protocol` when given. Messages over
    /// `max_message` bytes, or over the listener's `--max-message` (`None`: that alone),
    /// are refused with 1009, so each endpoint bounds what one half-received message can
    /// pin to what it needs. The connection may send `read_rate` bytes per second (a
    /// burst of twice that; 0: no limit): past it the reactor stops reading it until the
    /// budget refills, so the peer's own sends block in TCP, before a byte is decoded.
    Accept {
        protocol: Option<&'static str>,
        max_message: Option<usize>,
        read_rate: u32,
    },
    /// The service wrote a complete HTTP response (401, 403, …); the connection ends.
    Refuse,
}

/// What the reactor knows that a service answering a request head may need.
#[derive(Clone, Copy, Debug, Default)]
pub struct NetStats {
    /// The reactor's clock for this wake-up, in ms.
    pub now: u64,
    /// Output queued in the server for every connection, not yet taken by the kernel.
    pub queued_bytes: usize,
    /// Connections whose output passed the hard cap: dropped and closed with 1008.
    pub output_sheds: u64,
}

/// The application on top of the reactor. Every call runs on the reactor thread and must
/// not block. Output goes through [`Out`], to the connection at hand or to any other.
pub trait Service {
    /// A request that is not a WebSocket upgrade: write a complete HTTP response.
    fn http(&mut self, request: &Request<'_>, peer: SocketAddr, net: NetStats, out: &mut Vec<u8>);

    /// A request on the metrics listener (`NetConfig::metrics_listen`), which serves plain
    /// HTTP only: upgrade requests there are refused with `404` before they get here.
    /// Whatever answers here is reachable by whoever reaches that address, and nothing else
    /// of the service is.
    fn metrics_http(
        &mut self,
        _request: &Request<'_>,
        _peer: SocketAddr,
        _net: NetStats,
        out: &mut Vec<u8>,
    ) {
        crate::ws::handshake::write_response(
            out,
            404,
            "Not Found",
            "text/plain; charset=utf-8",
            &[],
            b"not found\n",
        );
    }

    /// An upgrade request that passed RFC 6455 §4.2.1 validation, for connection `conn`.
    /// A refusal writes its HTTP response to `response`.
    fn upgrade(
        &mut self,
        conn: ConnId,
        request: &Request<'_>,
        upgrade: &Upgrade<'_>,
        peer: SocketAddr,
        net: NetStats,
        response: &mut Vec<u8>,
    ) -> Admission;

    /// The `101` for `conn` is written; anything sent now follows it.
    fn opened(&mut self, _conn: ConnId, _out: &mut Out<'_>) {}

    /// A complete data message on `conn`.
    fn message(&mut self, conn: ConnId, opcode: OpCode, payload: &[u8], out: &mut Out<'_>);

    /// A connection that was upgraded is gone, for whatever reason. `code` is the close
    /// code sent or received first, or 1006 when the connection ended without one. What
    /// the service sends to other connections about it goes out in this wake-up.
    fn closed(&mut self, _conn: ConnId, _code: u16, _out: &mut Out<'_>) {}

    /// The backlog of `conn`, which [`Out::await_output`] found over the soft cap, is back
    /// within it.
    fn output_drained(&mut self, _conn: ConnId, _out: &mut Out<'_>) {}

    /// The service's [`Waker`] was woken (another thread has results for it).
    fn woken(&mut self, _out: &mut Out<'_>) {}

    /// When the service next wants [`Service::on_time`] called (reactor clock, ms).
    fn next_deadline(&self) -> Option<u64> {
        None
    }

    /// Called once a wake-up at or after the deadline it last gave.
    fn on_time(&mut self, _out: &mut Out<'_>) {}

    /// Shutdown began: no new connections. The service should refuse new work and finish
    /// what it accepted; connections stay open (and keep receiving) until [`drained`]
    /// says so or the close timeout passes, then every one is closed with 1001.
    ///
    /// [`drained`]: Service::drained
    fn shutdown(&mut self, _out: &mut Out<'_>) {}

    /// Whether the work accepted before the shutdown is finished and answered.
    fn drained(&mut self) -> bool {
        true
    }
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
