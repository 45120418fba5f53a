//! What a service may do to connections while it handles an event: send a message to any
//! live connection, or start closing one. Output for the connection whose bytes are being
//! handled goes into the reactor's shared buffer (written once at the end of the read);
//! output for any other connection is framed straight into that connection's queue, which
//! is written once at the end of the wake-up, however many messages it received.

use slab::Slab;

use super::connection::{Connection, Phase};
use super::ConnId;
use crate::ws::conn::State as WsState;
use crate::ws::frame::{self, OpCode};

pub struct Out<'a> {
    pub(super) conns: &'a mut Slab<Connection>,
    /// The shared output buffer of the connection at hand.
    pub(super) scratch: &'a mut Vec<u8>,
    /// The connection whose input is being handled. Its WebSocket state is lent out of the
    /// slab for the duration, so it is known to be open, and its output goes to `scratch`.
    pub(super) current: Option<ConnId>,
    /// Connections with fresh output in their queue, to be written at the end of the wake-up.
    pub(super) dirty: &'a mut Vec<ConnId>,
    /// Closes the service asked for; the reactor applies them after the call returns.
    pub(super) closes: &'a mut Vec<(ConnId, u16, &'static str)>,
    pub(super) now: u64,
}

impl Out<'_> {
    /// The reactor's clock for this wake-up, in ms.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Queues one message for `conn`. False when the connection is gone or closing: the
    /// message would never be read, so it is not queued.
    pub fn send(&mut self, conn: ConnId, opcode: OpCode, payload: &[u8]) -> bool {
        if Some(conn) == self.current {
            frame::write_frame(self.scratch, true, opcode, payload, None);
            return true;
        }
        let Some(target) = self.live(conn) else {
            return false;
        };
        let Phase::Upgraded(ws) = &mut target.phase else {
            return false;
        };
        if ws.state() != WsState::Open {
            return false;
        }
        ws.send(opcode, payload, &mut target.unsent);
        if !target.dirty {
            target.dirty = true;
            self.dirty.push(conn);
        }
        true
    }

    /// Starts the closing handshake of `conn` with `code` once the current call returns,
    /// after everything already sent to it.
    pub fn close(&mut self, conn: ConnId, code: u16, reason: &'static str) {
        self.closes.push((conn, code, reason));
    }

    /// Bytes queued for `conn` that the kernel has not taken yet, or `None` when the
    /// connection is gone: what a service consults before piling more onto a slow reader.
    pub fn backlog(&self, conn: ConnId) -> Option<usize> {
        if Some(conn) == self.current {
            let queued = self
                .conns
                .get(conn.index as usize)
                .map_or(0, |c| c.unsent.len());
            return Some(queued + self.scratch.len());
        }
        let target = self.conns.get(conn.index as usize)?;
        (target.generation == conn.generation).then_some(target.unsent.len())
    }

    fn live(&mut self, conn: ConnId) -> Option<&mut Connection> {
        self.conns
            .get_mut(conn.index as usize)
            .filter(|c| c.generation == conn.generation)
    }
}
