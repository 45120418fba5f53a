//! The event loop. See the module docs of `net` for the read and write discipline.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::connection::{Connection, Phase};
use super::{Admission, Service};
use crate::clock::Clock;
use crate::config::NetConfig;
use crate::signal::Signals;
use crate::timer::Wheel;
use crate::ws::conn::{Conn as WsConn, Event, State as WsState};
use crate::ws::frame::{close_code, OpCode, Role};
use crate::ws::handshake;

#[cfg(not(target_pointer_width = "64"))]
compile_error!("courier packs a slab index and a generation into a mio Token (usize): 64-bit only");

/// Identifies one connection for its whole life: a slab index plus the generation it was
/// accepted under, so a timer or a completion for a closed connection whose slot was reused
/// is recognised as stale instead of reaching the newcomer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId {
    index: u32,
    generation: u32,
}

impl ConnId {
    fn to_u64(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    fn from_u64(raw: u64) -> ConnId {
        ConnId {
            index: raw as u32,
            generation: (raw >> 32) as u32,
        }
    }
}

const LISTENER: Token = Token(usize::MAX);
const SIGNALS: Token = Token(usize::MAX - 1);
/// The wheel key of the accept-retry timer (no connection id has an all-ones index: the
/// slab never grows to 2^32 entries).
const ACCEPT_RETRY: u64 = u64::MAX;

/// How long to stop accepting after the process ran out of file descriptors. Accepting
/// again at once would spin: the pending connection stays in the backlog and the kernel
/// would report the listener readable forever.
const ACCEPT_PAUSE_MS: u64 = 100;
/// The shared read buffer. Bigger reads mean fewer syscalls for bulk data; frames larger
/// than this stream through it, so it bounds nothing.
const READ_BUF: usize = 64 * 1024;
/// The shared output buffer is shrunk back to this after a burst (a 16 MiB echo).
const SCRATCH_KEEP: usize = 256 * 1024;
/// Kernel accept queue. The kernel clamps it to net.core.somaxconn; a connect storm of
/// thousands per second overflows mio's default of 1024.
const BACKLOG: i32 = 4096;
const EVENTS_PER_POLL: usize = 1024;

/// Runs the reactor until SIGTERM/SIGINT and a graceful close of every connection.
/// `on_listening` is called with the bound address once connections are accepted.
pub fn run<S: Service>(
    config: NetConfig,
    service: S,
    on_listening: impl FnOnce(SocketAddr),
) -> io::Result<()> {
    let mut reactor = Reactor::new(config, service)?;
    on_listening(reactor.listener.as_ref().expect("listener").local_addr()?);
    reactor.run()
}

struct Reactor<S> {
    poll: Poll,
    listener: Option<TcpListener>,
    accept_paused: bool,
    signals: Signals,
    shutting_down: bool,
    conns: Slab<Connection>,
    next_generation: u32,
    wheel: Wheel<u64>,
    clock: Clock,
    now: u64,
    /// Every read lands here; frames are decoded and unmasked in place.
    read_buf: Box<[u8]>,
    /// Everything produced for the connection being handled, written once per wake-up.
    scratch: Vec<u8>,
    config: NetConfig,
    service: S,
}

/// How handling input left a connection.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    /// The connection is gone (EOF, reset, or a phase that ends at once).
    Dropped,
}

impl<S: Service> Reactor<S> {
    fn new(config: NetConfig, service: S) -> io::Result<Reactor<S>> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(config.listen)?;
        raise_backlog(&listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut signals = Signals::install()?;
        poll.registry()
            .register(signals.source(), SIGNALS, Interest::READABLE)?;
        let clock = Clock::start();
        Ok(Reactor {
            poll,
            listener: Some(listener),
            accept_paused: false,
            signals,
            shutting_down: false,
            conns: Slab::new(),
            next_generation: 0,
            wheel: Wheel::new(0),
            clock,
            now: 0,
            read_buf: vec![0u8; READ_BUF].into_boxed_slice(),
            scratch: Vec::with_capacity(READ_BUF),
            config,
            service,
        })
    }

    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        loop {
            if self.shutting_down && self.conns.is_empty() {
                return Ok(());
            }
            let timeout = self.wheel.next_deadline().map(|deadline| {
                Duration::from_millis(deadline.saturating_sub(self.clock.now_ms()))
            });
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            self.now = self.clock.now_ms();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    SIGNALS => {
                        if self.signals.take() {
                            self.begin_shutdown();
                        }
                    }
                    token => {
                        let Some(id) = self.live(token.0 as u64) else {
                            continue;
                        };
                        // Errors and hang-ups surface as a failed read or write below.
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.on_readable(id);
                        }
                        if event.is_writable() && self.live(id.to_u64()).is_some() {
                            self.on_writable(id);
                        }
                    }
                }
            }
            while let Some((_, key)) = self.wheel.poll(self.now) {
                self.on_timer(key);
            }
            if self.scratch.capacity() > SCRATCH_KEEP {
                self.scratch = Vec::with_capacity(READ_BUF);
            }
        }
    }

    /// The id behind a token or timer key, if that connection still exists.
    fn live(&self, raw: u64) -> Option<ConnId> {
        let id = ConnId::from_u64(raw);
        match self.conns.get(id.index as usize) {
            Some(conn) if conn.generation == id.generation => Some(id),
            _ => None,
        }
    }

    fn accept(&mut self) {
        if self.accept_paused {
            return;
        }
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((socket, peer)) => self.admit(socket, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if out_of_descriptors(&e) => {
                    self.accept_paused = true;
                    if self
                        .wheel
                        .insert(self.now + ACCEPT_PAUSE_MS, ACCEPT_RETRY)
                        .is_err()
                    {
                        self.accept_paused = false;
                    }
                    return;
                }
                // ECONNABORTED and friends concern one connection, not the listener.
                Err(_) => continue,
            }
        }
    }

    fn admit(&mut self, mut socket: TcpStream, peer: SocketAddr) {
        if self.conns.len() >= self.config.max_connections {
            // Refuse with an answer rather than silence, so a client can tell "full" from
            // "down". Best effort: the socket is fresh, so the small write fits. The request
            // already here is read away first: closing a socket with unread input sends RST,
            // which can destroy the answer before the client reads it.
            let _ = socket.read(&mut self.read_buf);
            let mut out = Vec::new();
            handshake::write_response(
                &mut out,
                503,
                "Service Unavailable",
                "text/plain",
                &[],
                b"connection limit reached\n",
            );
            let _ = socket.write(&out);
            let _ = socket.shutdown(Shutdown::Write);
            return;
        }
        // Echo and chat traffic is small messages answered at once: Nagle would hold each
        // reply back for the peer's delayed ACK.
        let _ = socket.set_nodelay(true);
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let entry = self.conns.vacant_entry();
        let id = ConnId {
            index: entry.key() as u32,
            generation,
        };
        let token = Token(id.to_u64() as usize);
        if self
            .poll
            .registry()
            .register(&mut socket, token, Interest::READABLE)
            .is_err()
        {
            return;
        }
        entry.insert(Connection::new(socket, peer, generation, self.now));
        self.arm(id, self.now + self.config.handshake_timeout_ms);
    }

    fn conn(&mut self, id: ConnId) -> &mut Connection {
        &mut self.conns[id.index as usize]
    }

    /// Replaces the connection's timer with one at `deadline`.
    fn arm(&mut self, id: ConnId, deadline: u64) {
        let conn = &mut self.conns[id.index as usize];
        if let Some(old) = conn.timer.take() {
            self.wheel.cancel(old);
        }
        // A deadline already due fires on the next pass of the loop.
        let deadline = deadline.max(self.wheel.now() + 1);
        conn.timer = self.wheel.insert(deadline, id.to_u64()).ok();
    }

    fn on_readable(&mut self, id: ConnId) {
        loop {
            let conn = &mut self.conns[id.index as usize];
            if conn.unsent.len() + self.scratch.len() > self.config.out_soft_cap {
                conn.read_blocked = true;
                break;
            }
            conn.read_blocked = false;
            let read = match conn.socket.read(&mut self.read_buf) {
                Ok(0) => return self.drop_conn(id),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.drop_conn(id),
            };
            conn.last_read = self.now;
            if self.handle_input(id, read) == Flow::Dropped {
                return;
            }
            if read < self.read_buf.len() {
                break;
            }
        }
        self.flush(id);
    }

    fn on_writable(&mut self, id: ConnId) {
        self.flush(id);
        if let Some(id) = self.live(id.to_u64()) {
            let conn = self.conn(id);
            if conn.read_blocked && conn.unsent.len() <= self.config.out_soft_cap {
                self.on_readable(id);
            }
        }
    }

    /// Feeds `read_buf[..len]` to the connection's current phase.
    fn handle_input(&mut self, id: ConnId, len: usize) -> Flow {
        match self.conn(id).phase {
            Phase::Handshake { .. } => self.handshake_input(id, len),
            Phase::Upgraded(_) => {
                // Decoded in place; the buffer is lent out for the call and put back.
                let mut input = std::mem::take(&mut self.read_buf);
                let flow = self.feed(id, &mut input[..len]);
                self.read_buf = input;
                flow
            }
            Phase::Linger { .. } => Flow::Continue,
        }
    }

    fn handshake_input(&mut self, id: ConnId, len: usize) -> Flow {
        let Reactor {
            conns,
            read_buf,
            scratch,
            service,
            config,
            ..
        } = self;
        let conn = &mut conns[id.index as usize];
        let Phase::Handshake { pending, peer } = &mut conn.phase else {
            return Flow::Continue;
        };
        let peer = *peer;
        // The common case, a head that arrives in one read, is parsed where it landed.
        let split = !pending.is_empty();
        if split {
            pending.extend_from_slice(&read_buf[..len]);
        }
        let input: &[u8] = if split { pending } else { &read_buf[..len] };
        let (next, pipelined) = match handshake::parse_request(input) {
            Ok(None) => {
                if !split {
                    let head_start = read_buf[..len].to_vec();
                    conn.phase = Phase::Handshake {
                        pending: head_start,
                        peer,
                    };
                }
                return Flow::Continue;
            }
            Ok(Some((request, used))) => (
                respond(&request, peer, service, scratch, config.max_message),
                input[used..].to_vec(),
            ),
            Err(error) => {
                handshake::write_rejection(scratch, error);
                (lingering(false), Vec::new())
            }
        };
        let upgraded = matches!(next, Phase::Upgraded(_));
        conn.phase = next;
        if !upgraded {
            return self.start_linger(id);
        }
        let deadline = self.now + self.config.idle_timeout_ms;
        self.arm(id, deadline);
        if pipelined.is_empty() {
            return Flow::Continue;
        }
        // Bytes after the head are the first frames: RFC 6455 §4.1 lets a client send as
        // soon as its handshake is out.
        let mut pipelined = pipelined;
        self.feed(id, &mut pipelined)
    }

    /// Runs WebSocket input through the connection and the service.
    fn feed(&mut self, id: ConnId, input: &mut [u8]) -> Flow {
        let Reactor {
            conns,
            scratch,
            service,
            ..
        } = self;
        let conn = &mut conns[id.index as usize];
        let Phase::Upgraded(ws) = &mut conn.phase else {
            return Flow::Continue;
        };
        let mut pos = 0;
        let mut close_with = None;
        let mut finished = false;
        while pos < input.len() {
            let (used, event) = match ws.read(&mut input[pos..], scratch) {
                Ok(step) => step,
                // The close frame that fails the connection is already in `scratch`.
                Err(_) => {
                    finished = true;
                    break;
                }
            };
            pos += used;
            let (opcode, payload) = match event {
                Some(Event::Text(payload)) => (OpCode::Text, payload),
                Some(Event::Binary(payload)) => (OpCode::Binary, payload),
                Some(Event::Closed(_)) => {
                    finished = true;
                    break;
                }
                None => break,
            };
            close_with = service.message(id, opcode, payload, scratch);
            if close_with.is_some() {
                break;
            }
        }
        if finished {
            conn.phase = lingering(true);
            return self.start_linger(id);
        }
        ws.release_idle_memory();
        if let Some((code, reason)) = close_with {
            self.begin_close(id, code, reason);
        }
        Flow::Continue
    }

    /// Sends our close frame and waits (bounded) for the peer's.
    fn begin_close(&mut self, id: ConnId, code: u16, reason: &'static str) {
        let Phase::Upgraded(ws) = &mut self.conns[id.index as usize].phase else {
            return;
        };
        if ws.close(code, reason, &mut self.scratch) {
            let deadline = self.now + self.config.close_timeout_ms;
            self.arm(id, deadline);
        }
    }

    fn start_linger(&mut self, id: ConnId) -> Flow {
        let deadline = self.now + self.config.close_timeout_ms;
        self.arm(id, deadline);
        Flow::Continue
    }

    /// One write per wake-up: queued bytes first, then this wake-up's output, in one
    /// vectored write when both exist.
    fn flush(&mut self, id: ConnId) {
        let Reactor {
            conns,
            scratch,
            config,
            ..
        } = self;
        let conn = &mut conns[id.index as usize];
        if !(conn.unsent.is_empty() && scratch.is_empty()) {
            let written = loop {
                let result = if conn.unsent.is_empty() {
                    conn.socket.write(scratch)
                } else if scratch.is_empty() {
                    conn.socket.write(&conn.unsent)
                } else {
                    conn.socket
                        .write_vectored(&[IoSlice::new(&conn.unsent), IoSlice::new(scratch)])
                };
                match result {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break 0,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        scratch.clear();
                        return self.drop_conn(id);
                    }
                }
            };
            let from_unsent = written.min(conn.unsent.len());
            conn.unsent.drain(..from_unsent);
            let from_scratch = written - from_unsent;
            conn.unsent.extend_from_slice(&scratch[from_scratch..]);
            scratch.clear();
        }
        if conn.unsent.is_empty() && conn.unsent.capacity() > 0 {
            conn.unsent = Vec::new();
        }
        if conn.unsent.len() > config.out_hard_cap {
            // A consumer this slow would make us hold its backlog without bound: close
            // with 1008 (PROTOCOL.md, bounded). The close frame queues behind the backlog;
            // if it cannot get through within the close timeout, the socket just goes.
            if let Phase::Upgraded(ws) = &mut conn.phase {
                ws.close(close_code::POLICY, "slow consumer", &mut conn.unsent);
            }
            conn.phase = lingering(conn.was_upgraded());
            self.start_linger(id);
        }
        self.update_interest(id);
        let conn = &mut self.conns[id.index as usize];
        if let Phase::Linger { write_shut, .. } = &mut conn.phase {
            if conn.unsent.is_empty() && !*write_shut {
                *write_shut = true;
                let _ = conn.socket.shutdown(Shutdown::Write);
            }
        }
    }

    fn update_interest(&mut self, id: ConnId) {
        let conn = &mut self.conns[id.index as usize];
        let wants_write = !conn.unsent.is_empty();
        if wants_write == conn.wants_write {
            return;
        }
        conn.wants_write = wants_write;
        let interest = if wants_write {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let token = Token(id.to_u64() as usize);
        if self
            .poll
            .registry()
            .reregister(&mut conn.socket, token, interest)
            .is_err()
        {
            self.drop_conn(id);
        }
    }

    fn on_timer(&mut self, key: u64) {
        if key == ACCEPT_RETRY {
            self.accept_paused = false;
            self.accept();
            return;
        }
        let Some(id) = self.live(key) else {
            return;
        };
        let now = self.now;
        let idle_timeout = self.config.idle_timeout_ms;
        let conn = self.conn(id);
        conn.timer = None;
        match &conn.phase {
            // Slowloris: the deadline is fixed at accept, however slowly bytes trickle in.
            Phase::Handshake { .. } => self.drop_conn(id),
            Phase::Upgraded(ws) if ws.state() == WsState::Open => {
                let idle_since = conn.last_read;
                if now >= idle_since + idle_timeout {
                    self.begin_close(id, close_code::GOING_AWAY, "idle timeout");
                    self.flush(id);
                } else {
                    // Activity since the timer was set: re-arm from the last read instead of
                    // having rescheduled on every frame.
                    self.arm(id, idle_since + idle_timeout);
                }
            }
            // The peer did not answer our close, or did not close TCP after the handshake.
            Phase::Upgraded(_) | Phase::Linger { .. } => self.drop_conn(id),
        }
    }

    fn begin_shutdown(&mut self) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .map(|(index, conn)| ConnId {
                index: index as u32,
                generation: conn.generation,
            })
            .collect();
        for id in ids {
            match self.conn(id).phase {
                Phase::Handshake { .. } => self.drop_conn(id),
                Phase::Upgraded(_) => {
                    self.begin_close(id, close_code::GOING_AWAY, "server shutting down");
                    self.flush(id);
                }
                Phase::Linger { .. } => {}
            }
        }
    }

    /// Closes the socket (which also removes it from epoll) and forgets the connection.
    fn drop_conn(&mut self, id: ConnId) {
        if self.live(id.to_u64()).is_none() {
            return;
        }
        let conn = self.conns.remove(id.index as usize);
        if let Some(timer) = conn.timer {
            self.wheel.cancel(timer);
        }
        if conn.was_upgraded() {
            self.service.closed(id);
        }
    }
}

fn lingering(upgraded: bool) -> Phase {
    Phase::Linger {
        write_shut: false,
        upgraded,
    }
}

/// Answers a complete request head: upgrade, refusal or plain HTTP.
fn respond<S: Service>(
    request: &handshake::Request<'_>,
    peer: SocketAddr,
    service: &mut S,
    out: &mut Vec<u8>,
    max_message: usize,
) -> Phase {
    if !request.is_websocket() {
        service.http(request, peer, out);
        return lingering(false);
    }
    match request.websocket() {
        Err(error) => {
            handshake::write_rejection(out, error);
            lingering(false)
        }
        Ok(upgrade) => match service.upgrade(request, &upgrade, peer, out) {
            Admission::Accept { protocol } => {
                handshake::write_accept(out, upgrade.key(), protocol);
                Phase::Upgraded(WsConn::new(Role::Server, max_message))
            }
            Admission::Refuse => lingering(false),
        },
    }
}

fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

fn raise_backlog(listener: &TcpListener) {
    use std::os::fd::AsRawFd;
    // SAFETY: listen(2) on a socket we own; calling it again on a listening socket only
    // changes the queue length. Failure leaves mio's default in place.
    unsafe {
        libc::listen(listener.as_raw_fd(), BACKLOG);
    }
}
