//! The event loop. See the module docs of `net` for the read and write discipline.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::connection::{Connection, Phase};
use super::out::SLOW_CONSUMER;
use super::{Admission, NetStats, Out, Service};
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
    pub(super) index: u32,
    pub(super) generation: u32,
}

impl ConnId {
    /// The id as one number (for maps outside the reactor and for `welcome.conn`).
    pub fn to_u64(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    pub fn from_u64(raw: u64) -> ConnId {
        ConnId {
            index: raw as u32,
            generation: (raw >> 32) as u32,
        }
    }
}

const LISTENER: Token = Token(usize::MAX);
const SIGNALS: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
const METRICS_LISTENER: Token = Token(usize::MAX - 3);
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
/// Full reads of one connection per wake-up (1 MiB) before the others get their turn.
const READS_PER_WAKEUP: usize = 16;

/// Wakes the reactor from another thread; the reactor then calls [`Service::woken`].
#[derive(Clone)]
pub struct Waker(Arc<mio::Waker>);

impl Waker {
    pub fn wake(&self) {
        // Fails only if the eventfd counter would overflow, which means a wake-up is
        // already pending: nothing is lost.
        let _ = self.0.wake();
    }
}

/// The addresses the reactor accepts on (the real ports when `:0` was asked for).
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    pub listen: SocketAddr,
    pub metrics: Option<SocketAddr>,
}

/// Runs the reactor until SIGTERM/SIGINT and a graceful close of every connection.
/// `make_service` gets the waker its threads use to hand results back; `on_listening` is
/// called with the bound addresses once connections are accepted.
pub fn run<S: Service>(
    config: NetConfig,
    make_service: impl FnOnce(Waker) -> io::Result<S>,
    on_listening: impl FnOnce(Bound),
) -> io::Result<()> {
    let mut reactor = Reactor::new(config, make_service)?;
    let metrics = match &reactor.metrics_listener {
        Some(listener) => Some(listener.local_addr()?),
        None => None,
    };
    on_listening(Bound {
        listen: reactor.listener.as_ref().expect("listener").local_addr()?,
        metrics,
    });
    reactor.run()
}

struct Reactor<S> {
    poll: Poll,
    listener: Option<TcpListener>,
    /// `--metrics-listen`: polled beside `listener` on this same thread; what it accepts
    /// gets plain HTTP only, through [`Service::metrics_http`].
    metrics_listener: Option<TcpListener>,
    accept_paused: bool,
    signals: Signals,
    shutting_down: bool,
    /// The 1001 closes went out: after the service drained (answered the work it had
    /// accepted) or when `drain_deadline` passed.
    goodbye_sent: bool,
    drain_deadline: u64,
    conns: Slab<Connection>,
    next_generation: u32,
    wheel: Wheel<u64>,
    clock: Clock,
    now: u64,
    /// Every read lands here; frames are decoded and unmasked in place.
    read_buf: Box<[u8]>,
    /// Everything produced for the connection being handled, written once per wake-up.
    scratch: Vec<u8>,
    /// Bytes at the front of `scratch` that are not frames: the `101` of a connection
    /// upgraded in this read. Never dropped by a shed, and skipped by the frame walk.
    scratch_head: usize,
    /// Connections the service queued output for; written at the end of the wake-up.
    dirty: Vec<ConnId>,
    /// Closes the service asked for during its last call.
    closes: Vec<(ConnId, u16, &'static str)>,
    /// Connections whose read budget ran out with input still queued.
    still_readable: Vec<ConnId>,
    /// Connections whose output drained to the soft cap while the service waited for it.
    relieved: Vec<ConnId>,
    /// Connections whose read budget ran out, by when it is positive again (ms, raw id).
    throttled: BinaryHeap<Reverse<(u64, u64)>>,
    /// Bytes in every connection's `unsent`, for `/metrics`.
    queued_bytes: usize,
    /// Connections shed for passing the hard cap, since start.
    output_sheds: u64,
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
    fn new(
        config: NetConfig,
        make_service: impl FnOnce(Waker) -> io::Result<S>,
    ) -> io::Result<Reactor<S>> {
        let poll = Poll::new()?;
        let mut listener = bind(config.listen)?;
        raise_backlog(&listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => {
                let mut metrics = bind(addr)?;
                poll.registry()
                    .register(&mut metrics, METRICS_LISTENER, Interest::READABLE)?;
                Some(metrics)
            }
            None => None,
        };
        let mut signals = Signals::install()?;
        poll.registry()
            .register(signals.source(), SIGNALS, Interest::READABLE)?;
        let waker = Waker(Arc::new(mio::Waker::new(poll.registry(), WAKER)?));
        let service = make_service(waker)?;
        let clock = Clock::start();
        Ok(Reactor {
            poll,
            listener: Some(listener),
            metrics_listener,
            accept_paused: false,
            signals,
            shutting_down: false,
            goodbye_sent: false,
            drain_deadline: 0,
            conns: Slab::new(),
            next_generation: 0,
            wheel: Wheel::new(0),
            clock,
            now: 0,
            read_buf: vec![0u8; READ_BUF].into_boxed_slice(),
            scratch: Vec::with_capacity(READ_BUF),
            scratch_head: 0,
            dirty: Vec::new(),
            closes: Vec::new(),
            still_readable: Vec::new(),
            relieved: Vec::new(),
            throttled: BinaryHeap::new(),
            queued_bytes: 0,
            output_sheds: 0,
            config,
            service,
        })
    }

    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        loop {
            if self.shutting_down && !self.goodbye_sent {
                self.now = self.clock.now_ms();
                if self.service.drained() || self.now >= self.drain_deadline {
                    self.say_goodbye();
                }
            }
            if self.goodbye_sent && self.conns.is_empty() {
                return Ok(());
            }
            let mut deadline = [
                self.wheel.next_deadline(),
                self.service.next_deadline(),
                self.throttled.peek().map(|Reverse((at, _))| *at),
            ]
            .into_iter()
            .flatten()
            .min();
            if self.shutting_down && !self.goodbye_sent {
                deadline =
                    Some(deadline.map_or(self.drain_deadline, |d| d.min(self.drain_deadline)));
            }
            let timeout = if self.still_readable.is_empty() {
                deadline.map(|deadline| {
                    Duration::from_millis(deadline.saturating_sub(self.clock.now_ms()))
                })
            } else {
                // Input is waiting in a socket epoll will not report again: just look.
                Some(Duration::ZERO)
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            self.now = self.clock.now_ms();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(false),
                    METRICS_LISTENER => self.accept(true),
                    SIGNALS => {
                        if self.signals.take() {
                            self.begin_shutdown();
                        }
                    }
                    WAKER => self.with_service(None, |service, out| service.woken(out)),
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
            for id in std::mem::take(&mut self.still_readable) {
                if self.live(id.to_u64()).is_some() {
                    self.on_readable(id);
                }
            }
            while let Some(&Reverse((at, raw))) = self.throttled.peek() {
                if at > self.now {
                    break;
                }
                self.throttled.pop();
                if let Some(id) = self.live(raw) {
                    self.conn(id).throttled = false;
                    self.on_readable(id);
                }
            }
            while let Some((_, key)) = self.wheel.poll(self.now) {
                self.on_timer(key);
            }
            if self
                .service
                .next_deadline()
                .is_some_and(|at| at <= self.now)
            {
                self.with_service(None, |service, out| service.on_time(out));
            }
            // One write per connection per wake-up, however many messages it was sent. A
            // failed write drops its connection, and the service may send to others about
            // it (presence); a connection whose output drained lets the service start more
            // work for it: go round until nothing new is dirty.
            while !self.dirty.is_empty() || !self.relieved.is_empty() {
                let mut dirty = std::mem::take(&mut self.dirty);
                for id in dirty.drain(..) {
                    if self.live(id.to_u64()).is_some() {
                        self.conn(id).dirty = false;
                        self.flush(id);
                    }
                }
                if self.dirty.is_empty() {
                    self.dirty = dirty;
                }
                for id in std::mem::take(&mut self.relieved) {
                    if self.live(id.to_u64()).is_some() {
                        self.with_service(None, |service, out| service.output_drained(id, out));
                    }
                }
            }
            #[cfg(debug_assertions)]
            self.check_queued_bytes();
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

    /// Accepts what is waiting on the main listener, or on the metrics one.
    fn accept(&mut self, metrics_only: bool) {
        if self.accept_paused {
            return;
        }
        loop {
            let listener = if metrics_only {
                &self.metrics_listener
            } else {
                &self.listener
            };
            let Some(listener) = listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((socket, peer)) => self.admit(socket, peer, metrics_only),
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

    fn admit(&mut self, mut socket: TcpStream, peer: SocketAddr, metrics_only: bool) {
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
        entry.insert(Connection::new(
            socket,
            peer,
            metrics_only,
            generation,
            self.now,
        ));
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
        debug_assert!(
            self.scratch.is_empty(),
            "output of another connection left over"
        );
        self.read_and_flush(id);
        // Whatever was produced for a connection that went away (EOF, reset) must not be
        // written to the next one flushed.
        self.scratch.clear();
        self.scratch_head = 0;
    }

    fn read_and_flush(&mut self, id: ConnId) {
        let mut reads = 0;
        loop {
            let conn = &mut self.conns[id.index as usize];
            if conn.unsent.len() + self.scratch.len() > self.config.out_soft_cap {
                conn.read_blocked = true;
                // If the kernel takes all of it, no WRITABLE event will come to resume
                // reading (edge-triggered: the queued input will not be reported again),
                // so resume here.
                self.flush(id);
                match self.conns.get(id.index as usize) {
                    Some(conn)
                        if conn.generation == id.generation
                            && conn.unsent.len() <= self.config.out_soft_cap =>
                    {
                        continue
                    }
                    _ => return,
                }
            }
            if reads == READS_PER_WAKEUP {
                // Fairness: a peer that keeps its socket full must not hold the reactor.
                // Edge-triggered epoll will not report the input already queued, so the
                // connection is read again after this wake-up's other events.
                self.still_readable.push(id);
                break;
            }
            if let Some(wait) = conn.read_wait(self.now) {
                // Over its byte budget: not read (its sends back up in TCP) until the
                // budget refills, whatever the bytes would have been.
                if !conn.throttled {
                    conn.throttled = true;
                    let at = self.now + wait.max(1);
                    self.throttled.push(Reverse((at, id.to_u64())));
                }
                break;
            }
            conn.read_blocked = false;
            // No more than the budget holds, so one read cannot overdraw it by a whole
            // buffer (a long pause for a slow rate).
            let want = conn.read_allowance(self.read_buf.len());
            let read = match conn.socket.read(&mut self.read_buf[..want]) {
                Ok(0) => return self.drop_conn(id),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.drop_conn(id),
            };
            reads += 1;
            conn.last_read = self.now;
            conn.charge_read(read);
            if self.handle_input(id, read) == Flow::Dropped {
                return;
            }
            if read < want {
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
            queued_bytes,
            output_sheds,
            ..
        } = self;
        let net = NetStats {
            now: self.now,
            queued_bytes: *queued_bytes,
            output_sheds: *output_sheds,
        };
        let conn = &mut conns[id.index as usize];
        let Phase::Handshake {
            pending,
            peer,
            metrics_only,
        } = &mut conn.phase
        else {
            return Flow::Continue;
        };
        let (peer, metrics_only) = (*peer, *metrics_only);
        // The common case, a head that arrives in one read, is parsed where it landed.
        let split = !pending.is_empty();
        if split {
            pending.extend_from_slice(&read_buf[..len]);
        }
        let input: &[u8] = if split { pending } else { &read_buf[..len] };
        let mut read_rate = 0;
        let (next, pipelined) = match handshake::parse_request(input) {
            Ok(None) => {
                if !split {
                    let head_start = read_buf[..len].to_vec();
                    conn.phase = Phase::Handshake {
                        pending: head_start,
                        peer,
                        metrics_only,
                    };
                }
                return Flow::Continue;
            }
            Ok(Some((request, used))) => {
                let (phase, rate) = if metrics_only {
                    respond_metrics(&request, peer, net, service, scratch)
                } else {
                    respond(
                        id,
                        &request,
                        peer,
                        net,
                        service,
                        scratch,
                        config.max_message,
                    )
                };
                read_rate = rate;
                (phase, input[used..].to_vec())
            }
            Err(error) => {
                handshake::write_rejection(scratch, error);
                (lingering(false), Vec::new())
            }
        };
        let upgraded = matches!(next, Phase::Upgraded(_));
        conn.phase = next;
        conn.limit_reads(read_rate, self.now);
        if !upgraded {
            return self.start_linger(id);
        }
        let deadline = self.now + self.config.idle_timeout_ms;
        self.arm(id, deadline);
        // The `101` in the shared buffer is not the service's to drop if it sheds output,
        // nor a frame.
        self.scratch_head = self.scratch.len();
        self.with_service(Some(id), |service, out| service.opened(id, out));
        if self.live(id.to_u64()).is_none() {
            return Flow::Dropped;
        }
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
        // The WebSocket state is lent out of the slab while the service runs, so the
        // service can reach every other connection through `Out` while a message that
        // borrows this connection's assembly buffer is in hand.
        let conn = &mut self.conns[id.index as usize];
        let Phase::Upgraded(mut ws) = std::mem::replace(&mut conn.phase, lingering(true)) else {
            unreachable!("feed is only called on an upgraded connection")
        };
        let mut pos = 0;
        let mut finished = false;
        // A message completed here: one still in progress at the end began in this input.
        let mut completed = false;
        while pos < input.len() {
            let (used, event) = match ws.read(&mut input[pos..], &mut self.scratch) {
                Ok(step) => step,
                // The close frame that fails the connection is already in `scratch`.
                Err(e) => {
                    self.conns[id.index as usize].note_close(e.close_code());
                    finished = true;
                    break;
                }
            };
            pos += used;
            let (opcode, payload) = match event {
                Some(Event::Text(payload)) => (OpCode::Text, payload),
                Some(Event::Binary(payload)) => (OpCode::Binary, payload),
                Some(Event::Closed(code)) => {
                    self.conns[id.index as usize].note_close(code.unwrap_or(close_code::NO_STATUS));
                    finished = true;
                    break;
                }
                None => break,
            };
            completed = true;
            let (service, mut out) = self.service_and_out(Some(id));
            service.message(id, opcode, payload, &mut out);
            // A close the service asked for starts here, after what it sent. The rest of
            // the input still goes through the decoder, which now drops data but keeps
            // the frame boundaries, so the peer's answering close is still recognised.
            if let Some(i) = self.closes.iter().position(|&(conn, ..)| conn == id) {
                let (_, code, reason) = self.closes.swap_remove(i);
                self.conns[id.index as usize].note_close(code);
                if ws.close(code, reason, &mut self.scratch) {
                    let deadline = self.now + self.config.close_timeout_ms;
                    self.arm(id, deadline);
                }
            }
        }
        if finished {
            self.apply_closes(Some(id));
            return self.start_linger(id);
        }
        ws.release_idle_memory();
        let open = ws.state() == WsState::Open;
        let mid_message = ws.mid_message();
        let conn = &mut self.conns[id.index as usize];
        conn.phase = Phase::Upgraded(ws);
        if !mid_message || completed {
            conn.message_began = 0;
        }
        if mid_message && open && conn.message_began == 0 {
            // A message left half-received: its deadline may come before the idle one.
            conn.message_began = (self.now as u32).max(1);
            let idle_at = conn.last_read + self.config.idle_timeout_ms;
            let deadline = idle_at.min(self.now + self.config.message_timeout_ms);
            self.arm(id, deadline);
        }
        self.apply_closes(Some(id));
        Flow::Continue
    }

    /// The service, and the [`Out`] it writes through: disjoint borrows of the reactor.
    fn service_and_out(&mut self, current: Option<ConnId>) -> (&mut S, Out<'_>) {
        let Reactor {
            conns,
            scratch,
            scratch_head,
            dirty,
            closes,
            queued_bytes,
            output_sheds,
            service,
            config,
            now,
            ..
        } = self;
        let out = Out {
            conns,
            scratch,
            scratch_floor: *scratch_head,
            current,
            dirty,
            closes,
            queued: queued_bytes,
            sheds: output_sheds,
            soft_cap: config.out_soft_cap,
            hard_cap: config.out_hard_cap,
            now: *now,
        };
        (service, out)
    }

    /// The running total of queued output is kept by hand at every change of an `unsent`;
    /// debug builds (the tests) check it against the real sum after every wake-up.
    #[cfg(debug_assertions)]
    fn check_queued_bytes(&self) {
        if self.conns.len() > 4096 {
            return;
        }
        let real: usize = self.conns.iter().map(|(_, c)| c.unsent.len()).sum();
        assert_eq!(self.queued_bytes, real, "queued output out of step");
    }

    /// Calls the service with an [`Out`] (for `current`, if any), then applies the closes
    /// it asked for.
    fn with_service(&mut self, current: Option<ConnId>, call: impl FnOnce(&mut S, &mut Out<'_>)) {
        let (service, mut out) = self.service_and_out(current);
        call(service, &mut out);
        self.apply_closes(current);
    }

    /// Starts the closes the service asked for. The close frame of `current` goes into the
    /// shared buffer, after that connection's output of this wake-up; any other's into
    /// its own queue.
    fn apply_closes(&mut self, current: Option<ConnId>) {
        let mut closes = std::mem::take(&mut self.closes);
        for (id, code, reason) in closes.drain(..) {
            if self.live(id.to_u64()).is_some() {
                self.begin_close(id, code, reason, Some(id) == current);
            }
        }
        self.closes = closes;
    }

    /// Sends our close frame and waits (bounded) for the peer's.
    fn begin_close(&mut self, id: ConnId, code: u16, reason: &'static str, into_scratch: bool) {
        let conn = &mut self.conns[id.index as usize];
        let Phase::Upgraded(ws) = &mut conn.phase else {
            return;
        };
        let out = if into_scratch {
            &mut self.scratch
        } else {
            &mut conn.unsent
        };
        let before = out.len();
        let closed = ws.close(code, reason, out);
        if !into_scratch {
            self.queued_bytes += conn.unsent.len() - before;
        }
        if closed {
            conn.note_close(code);
            if !into_scratch && !conn.dirty {
                conn.dirty = true;
                self.dirty.push(id);
            }
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
            scratch_head,
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
                        *scratch_head = 0;
                        return self.drop_conn(id);
                    }
                }
            };
            if conn.was_upgraded() {
                conn.note_written(written, scratch, *scratch_head);
            }
            let queued_before = conn.unsent.len();
            let from_unsent = written.min(conn.unsent.len());
            conn.unsent.drain(..from_unsent);
            let from_scratch = written - from_unsent;
            conn.unsent.extend_from_slice(&scratch[from_scratch..]);
            scratch.clear();
            *scratch_head = 0;
            self.queued_bytes = self.queued_bytes - queued_before + conn.unsent.len();
        }
        if conn.unsent.is_empty() && conn.unsent.capacity() > 0 {
            conn.unsent = Vec::new();
        }
        // Output that bypassed `Out` (pongs, close echoes) is bounded here. `Out` lets one
        // message of any size onto an empty queue, so past the cap by more than the
        // largest message a consumer this slow would make us hold its backlog without
        // bound: drop it and close with 1008; the close frame goes next, not behind it.
        let mut close_deadline = None;
        if conn.unsent.len() > config.out_hard_cap.saturating_add(config.max_message)
            && !conn.shed
            && matches!(&conn.phase, Phase::Upgraded(ws) if ws.state() == WsState::Open)
        {
            self.queued_bytes -= conn.shed_output();
            self.output_sheds += 1;
            let before = conn.unsent.len();
            if let Phase::Upgraded(ws) = &mut conn.phase {
                ws.close(close_code::POLICY, SLOW_CONSUMER, &mut conn.unsent);
            }
            self.queued_bytes += conn.unsent.len() - before;
            conn.note_close(close_code::POLICY);
            close_deadline = Some(self.now + config.close_timeout_ms);
        }
        if conn.watch_output && conn.unsent.len() <= config.out_soft_cap {
            conn.watch_output = false;
            // A connection that shed its output or is closing has no room to report: more
            // work for it would only be thrown away.
            let open = matches!(&conn.phase, Phase::Upgraded(ws) if ws.state() == WsState::Open);
            if open && !conn.shed {
                self.relieved.push(id);
            }
        }
        if let Some(deadline) = close_deadline {
            self.arm(id, deadline);
        }
        if !self.update_interest(id) {
            return;
        }
        let conn = &mut self.conns[id.index as usize];
        if let Phase::Linger { write_shut, .. } = &mut conn.phase {
            if conn.unsent.is_empty() && !*write_shut {
                *write_shut = true;
                let _ = conn.socket.shutdown(Shutdown::Write);
            }
        }
    }

    /// Registers WRITABLE interest exactly while output is queued. False when epoll
    /// refused and the connection was dropped.
    fn update_interest(&mut self, id: ConnId) -> bool {
        let conn = &mut self.conns[id.index as usize];
        let wants_write = !conn.unsent.is_empty();
        if wants_write == conn.wants_write {
            return true;
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
            return false;
        }
        true
    }

    fn on_timer(&mut self, key: u64) {
        if key == ACCEPT_RETRY {
            self.accept_paused = false;
            self.accept(false);
            self.accept(true);
            return;
        }
        let Some(id) = self.live(key) else {
            return;
        };
        let now = self.now;
        let idle_timeout = self.config.idle_timeout_ms;
        let message_timeout = self.config.message_timeout_ms;
        let conn = self.conn(id);
        conn.timer = None;
        match &conn.phase {
            // Slowloris: the deadline is fixed at accept, however slowly bytes trickle in.
            Phase::Handshake { .. } => self.drop_conn(id),
            Phase::Upgraded(ws) if ws.state() == WsState::Open => {
                let idle_at = conn.last_read + idle_timeout;
                // The low 32 bits of the clock, so the span since is a wrapping difference.
                let message_at = (conn.message_began != 0).then(|| {
                    let since = u64::from((now as u32).wrapping_sub(conn.message_began));
                    now - since.min(now) + message_timeout
                });
                if message_at.is_some_and(|at| now >= at) {
                    // Dripping a message keeps the connection from idling, but must not
                    // let it pin its assembly buffer for ever.
                    self.begin_close(id, close_code::POLICY, "message too slow", true);
                    self.flush(id);
                } else if now >= idle_at {
                    self.begin_close(id, close_code::GOING_AWAY, "idle timeout", true);
                    self.flush(id);
                } else {
                    // Activity since the timer was set: re-arm from the last read instead of
                    // having rescheduled on every frame.
                    self.arm(id, message_at.map_or(idle_at, |at| at.min(idle_at)));
                }
            }
            // The peer did not answer our close, or did not close TCP after the handshake.
            Phase::Upgraded(_) | Phase::Linger { .. } => self.drop_conn(id),
        }
    }

    /// Stops accepting and lets the service finish what it accepted (its replies still
    /// reach the clients); the connections are closed with 1001 once it has, or after the
    /// close timeout at the latest.
    fn begin_shutdown(&mut self) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        self.drain_deadline = self.now + self.config.close_timeout_ms;
        let listeners = [self.listener.take(), self.metrics_listener.take()];
        for mut listener in listeners.into_iter().flatten() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        for id in self.conn_ids() {
            if matches!(self.conn(id).phase, Phase::Handshake { .. }) {
                self.drop_conn(id);
            }
        }
        self.with_service(None, |service, out| service.shutdown(out));
    }

    fn say_goodbye(&mut self) {
        self.goodbye_sent = true;
        for id in self.conn_ids() {
            if matches!(self.conn(id).phase, Phase::Upgraded(_)) {
                self.begin_close(id, close_code::GOING_AWAY, "server shutting down", true);
                self.flush(id);
            }
        }
    }

    fn conn_ids(&self) -> Vec<ConnId> {
        self.conns
            .iter()
            .map(|(index, conn)| ConnId {
                index: index as u32,
                generation: conn.generation,
            })
            .collect()
    }

    /// Closes the socket (which also removes it from epoll) and forgets the connection.
    fn drop_conn(&mut self, id: ConnId) {
        if self.live(id.to_u64()).is_none() {
            return;
        }
        let conn = self.conns.remove(id.index as usize);
        self.queued_bytes -= conn.unsent.len();
        if let Some(timer) = conn.timer {
            self.wheel.cancel(timer);
        }
        if conn.was_upgraded() {
            let code = match conn.close_code {
                0 => close_code::ABNORMAL,
                code => code,
            };
            self.with_service(None, |service, out| service.closed(id, code, out));
        }
    }
}

/// The OS error alone ("Address already in use") does not say which of two listeners
/// failed, nor on what address.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

fn lingering(upgraded: bool) -> Phase {
    Phase::Linger {
        write_shut: false,
        upgraded,
    }
}

/// Answers a complete request head: upgrade, refusal or plain HTTP. Also gives the upgraded
/// connection's read rate (0 otherwise).
fn respond<S: Service>(
    id: ConnId,
    request: &handshake::Request<'_>,
    peer: SocketAddr,
    net: NetStats,
    service: &mut S,
    out: &mut Vec<u8>,
    max_message: usize,
) -> (Phase, u32) {
    if !request.is_websocket() {
        service.http(request, peer, net, out);
        return (lingering(false), 0);
    }
    match request.websocket() {
        Err(error) => {
            handshake::write_rejection(out, error);
            (lingering(false), 0)
        }
        Ok(upgrade) => match service.upgrade(id, request, &upgrade, peer, net, out) {
            Admission::Accept {
                protocol,
                max_message: endpoint_max,
                read_rate,
            } => {
                handshake::write_accept(out, upgrade.key(), protocol);
                let max_message = endpoint_max.map_or(max_message, |m| m.min(max_message));
                let ws = WsConn::new(Role::Server, max_message);
                (Phase::Upgraded(ws), read_rate)
            }
            Admission::Refuse => (lingering(false), 0),
        },
    }
}

/// Answers a request on the metrics listener: plain HTTP through the service, and never an
/// upgrade, whatever the path, so no WebSocket (and no IM) is reachable there.
fn respond_metrics<S: Service>(
    request: &handshake::Request<'_>,
    peer: SocketAddr,
    net: NetStats,
    service: &mut S,
    out: &mut Vec<u8>,
) -> (Phase, u32) {
    if request.is_websocket() {
        handshake::write_response(
            out,
            404,
            "Not Found",
            "text/plain; charset=utf-8",
            &[],
            b"no WebSocket endpoint on the metrics listener\n",
        );
    } else {
        service.metrics_http(request, peer, net, out);
    }
    (lingering(false), 0)
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
