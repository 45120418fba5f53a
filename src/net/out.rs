//! What a service may do to connections while it handles an event: send a message to any
//! live connection, or start closing one. Output for the connection whose bytes are being
//! handled goes into the reactor's shared buffer (written once at the end of the read);
//! output for any other connection is framed straight into that connection's queue, which
//! is written once at the end of the wake-up, however many messages it received.
//!
//! The output caps are enforced here, where bytes are queued, not only when they are
//! written: a message that would take a connection past the hard cap is not queued at all;
//! instead everything queued for it is dropped and it is closed with 1008.

use slab::Slab;

use super::connection::{Connection, Phase};
use super::ConnId;
use crate::ws::conn::State as WsState;
use crate::ws::frame::{self, close_code, OpCode};

/// Why a connection is closed when its output passes the hard cap.
pub(super) const SLOW_CONSUMER: &str = "slow consumer";

pub struct Out<'a> {
    pub(super) conns: &'a mut Slab<Connection>,
    /// The shared output buffer of the connection at hand.
    pub(super) scratch: &'a mut Vec<u8>,
    /// Bytes at the front of `scratch` that are not the service's to drop (the `101` of a
    /// connection being opened).
    pub(super) scratch_floor: usize,
    /// The connection whose input is being handled. Its WebSocket state is lent out of the
    /// slab for the duration, so it is known to be open, and its output goes to `scratch`.
    pub(super) current: Option<ConnId>,
    /// Connections with fresh output in their queue, to be written at the end of the wake-up.
    pub(super) dirty: &'a mut Vec<ConnId>,
    /// Closes the service asked for; the reactor applies them after the call returns.
    pub(super) closes: &'a mut Vec<(ConnId, u16, &'static str)>,
    /// Bytes queued in every connection's `unsent`, kept in step with them.
    pub(super) queued: &'a mut usize,
    /// Connections shed so far, for the metrics.
    pub(super) sheds: &'a mut u64,
    pub(super) soft_cap: usize,
    pub(super) hard_cap: usize,
    pub(super) now: u64,
}

impl Out<'_> {
    /// The reactor's clock for this wake-up, in ms.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Queues one message for `conn`. False when the connection is gone or closing, or
    /// when the message would take it past the hard cap (it is then being closed 1008 with
    /// everything queued for it dropped): the message would never be read, so it is not
    /// queued.
    pub fn send(&mut self, conn: ConnId, opcode: OpCode, payload: &[u8]) -> bool {
        let framed = frame::encoded_len(payload.len());
        if Some(conn) == self.current {
            let Some(target) = self.conns.get_mut(conn.index as usize) else {
                return false;
            };
            if target.shed {
                return false;
            }
            if over_cap(
                target.unsent.len() + self.scratch.len(),
                framed,
                self.hard_cap,
            ) {
                *self.queued -= target.shed_output();
                *self.sheds += 1;
                self.scratch.truncate(self.scratch_floor);
                self.closes.push((conn, close_code::POLICY, SLOW_CONSUMER));
                return false;
            }
            frame::write_frame(self.scratch, true, opcode, payload, None);
            return true;
        }
        let Some(target) = live(self.conns, conn) else {
            return false;
        };
        let Phase::Upgraded(ws) = &mut target.phase else {
            return false;
        };
        if ws.state() != WsState::Open || target.shed {
            return false;
        }
        if over_cap(target.unsent.len(), framed, self.hard_cap) {
            *self.queued -= target.shed_output();
            *self.sheds += 1;
            self.closes.push((conn, close_code::POLICY, SLOW_CONSUMER));
            return false;
        }
        let before = target.unsent.len();
        ws.send(opcode, payload, &mut target.unsent);
        *self.queued += target.unsent.len() - before;
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

    /// Whether `conn` has room for more work that produces output: true when its backlog
    /// is within the soft cap (or it is gone, so there is nothing to wait for). Otherwise
    /// false, and the service's `output_drained` is called for it once the backlog is
    /// back within the soft cap.
    ///
    /// A connection that is closing never drains in that sense: its output is gone or
    /// its close is on the way, and more work for it would only be thrown away.
    pub fn await_output(&mut self, conn: ConnId) -> bool {
        let Some(backlog) = self.backlog(conn) else {
            return true;
        };
        let target = &mut self.conns[conn.index as usize];
        let closing = target.shed
            || (Some(conn) != self.current
                && !matches!(&target.phase, Phase::Upgraded(ws) if ws.state() == WsState::Open));
        if closing {
            return false;
        }
        if backlog > self.soft_cap {
            target.watch_output = true;
            return false;
        }
        true
    }
}

/// Whether queueing `framed` more bytes behind `queued` passes the hard cap. The cap bounds
/// a backlog: one message alone is let through whatever its size (its endpoint's limit
/// bounds it, and an echo of a 16 MiB message is legitimate), but nothing piles onto it.
fn over_cap(queued: usize, framed: usize, hard_cap: usize) -> bool {
    queued > 0 && queued + framed > hard_cap
}

fn live(conns: &mut Slab<Connection>, conn: ConnId) -> Option<&mut Connection> {
    conns
        .get_mut(conn.index as usize)
        .filter(|c| c.generation == conn.generation)
}
