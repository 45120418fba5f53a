//! A blocking transport for the session, over `std::net::TcpStream`: for tests and small
//! tools, one thread per connection. Every wait is bounded: connects and the upgrade by
//! [`Options::connect_timeout`], reads by the caller's timeout, writes by
//! [`Options::write_timeout`].
//!
//! [`Client`] is one connection: the HTTP upgrade, then the crate's own `ws::Conn` in the
//! client role frames and masks, and a [`Session`] reads the JSON, acks and syncs.
//! [`Device`] keeps one session across connections: when a connection drops it waits out
//! the backoff, reconnects, syncs from its cursor and resends its outbox.

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;

use super::session::{Config, Event, Liveness, Session};
use crate::ws::conn::{Conn, Event as WsEvent};
use crate::ws::frame::{close_code, OpCode, ProtocolError};
use crate::ws::handshake::accept_key;

pub type Result<T> = std::result::Result<T, Error>;

/// Largest response head read during the upgrade.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Largest refusal body kept for the error.
const MAX_REFUSAL_BODY: usize = 64 * 1024;
/// Reads wait at most this long at a time, so pings and retries go out on time while a
/// caller waits longer for an event.
const TICK: Duration = Duration::from_millis(100);
/// How long `close` waits for the server's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub enum Error {
    Io(io::Error),
    /// The server answered the upgrade with this status instead of `101`.
    Refused {
        status: u16,
        body: String,
    },
    /// A `101` that does not complete the RFC 6455 handshake (§4.1), or a response that
    /// is not HTTP.
    Handshake(String),
    /// The server broke RFC 6455; our close frame for it is already sent.
    Protocol(ProtocolError),
    /// The WebSocket is closed, with the peer's close code if it sent one.
    Closed(Option<u16>),
    /// Nothing came from the server within a heartbeat and the grace.
    Silent,
}

impl Error {
    /// The HTTP status of a refused upgrade.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The close code of a closed connection.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            Error::Closed(code) => *code,
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "{e}"),
            Error::Refused { status, body } => {
                write!(f, "upgrade refused with {status}: {}", body.trim())
            }
            Error::Handshake(why) => write!(f, "bad handshake response: {why}"),
            Error::Protocol(e) => write!(f, "server broke RFC 6455: {e}"),
            Error::Closed(Some(code)) => write!(f, "connection closed with {code}"),
            Error::Closed(None) => write!(f, "connection closed without a code"),
            Error::Silent => write!(f, "the server went silent past its heartbeat"),
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Io(e)
    }
}

/// A failed [`Client::open`], with the session it was given.
#[derive(Debug)]
pub struct OpenError {
    pub error: Error,
    pub session: Box<Session>,
}

/// One WebSocket frame as the server sent it (pings are answered inside and not shown).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
    /// The server's close frame, with its code if it had one.
    Close(Option<u16>),
}

/// Something [`Client::send_json`] can write as one text frame.
pub trait JsonText {
    fn json_text(&self) -> String;
}

impl JsonText for str {
    fn json_text(&self) -> String {
        self.to_owned()
    }
}

impl JsonText for String {
    fn json_text(&self) -> String {
        self.clone()
    }
}

impl JsonText for serde_json::Value {
    fn json_text(&self) -> String {
        self.to_string()
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    /// Bounds the TCP connect and, separately, the upgrade.
    pub connect_timeout: Duration,
    pub write_timeout: Duration,
    /// Largest message accepted from the server.
    pub max_message: usize,
    /// Write the session's resume requests (a `sync` from the cursor, then the outbox)
    /// right after the `101`. Off for tests that want the wire to themselves: then sends
    /// queued before the connection wait for the next one, and only a gap in the pushes
    /// makes the session sync.
    pub resume: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            connect_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            max_message: 16 << 20,
            resume: true,
        }
    }
}

/// One connection to `/ws` with its session.
pub struct Client {
    stream: TcpStream,
    ws: Conn,
    session: Session,
    /// Bytes read and not yet run through `ws`, from `rpos` on.
    rbuf: Vec<u8>,
    rpos: usize,
    out: Vec<u8>,
    events: VecDeque<Event>,
    /// What ended the connection, held back until the events before it are taken.
    failure: Option<Error>,
    /// Set once the close handshake is over or the connection failed.
    closed: Option<Option<u16>>,
}

impl Client {
    /// Connects to `/ws` with `token` in the query, with a new session (cursor 0) that
    /// syncs everything from the start.
    pub fn connect(addr: SocketAddr, token: &str) -> Result<Client> {
        Client::connect_with(addr, &format!("/ws?token={token}"), &[])
    }

    /// Connects with any path and query and extra request headers (e.g. an
    /// `Authorization: Bearer` or an `Origin`). A refused upgrade is
    /// [`Error::Refused`] with the HTTP status.
    pub fn connect_with(
        addr: SocketAddr,
        path_and_query: &str,
        extra_headers: &[(&str, &str)],
    ) -> Result<Client> {
        let session = Session::new(Config::new(
            format!("c{:08x}", random_u64() as u32),
            random_u64(),
        ));
        Client::open(
            addr,
            path_and_query,
            extra_headers,
            session,
            &Options::default(),
        )
        .map_err(|failed| failed.error)
    }

    /// Connects with a given session and options. On failure the session comes back
    /// with the error, so its cursor and outbox are not lost.
    pub fn open(
        addr: SocketAddr,
        path_and_query: &str,
        extra_headers: &[(&str, &str)],
        mut session: Session,
        options: &Options,
    ) -> std::result::Result<Client, OpenError> {
        let failed = |error: Error, session: Session| OpenError {
            error,
            session: Box::new(session),
        };
        let (stream, leftover) =
            match upgrade(addr, path_and_query, extra_headers, options.connect_timeout) {
                Ok(connected) => connected,
                Err(e) => return Err(failed(e, session)),
            };
        if let Err(e) = stream.set_write_timeout(Some(options.write_timeout)) {
            return Err(failed(e.into(), session));
        }
        let now = now_ms();
        if !options.resume {
            session.on_connect(now);
        }
        let mut client = Client {
            stream,
            ws: Conn::client(options.max_message, random_u64() as u32),
            session,
            rbuf: leftover,
            rpos: 0,
            out: Vec::new(),
            events: VecDeque::new(),
            failure: None,
            closed: None,
        };
        if options.resume {
            let resume = client.session.after_connect(now);
            for request in &resume {
                client
                    .ws
                    .send(OpCode::Text, request.as_bytes(), &mut client.out);
            }
            if let Err(e) = client.write_out() {
                return Err(failed(e, client.into_session()));
            }
        }
        Ok(client)
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    pub fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }

    /// Gives up the connection (without a close handshake) and keeps the session, marked
    /// disconnected.
    pub fn into_session(self) -> Session {
        let _ = self.stream.shutdown(Shutdown::Both);
        let mut session = self.session;
        session.disconnected();
        session
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Sends a text message through the session's outbox and returns its cid.
    pub fn send(&mut self, to: &str, body: &str) -> Result<String> {
        let cid = self.session.send(to, body);
        self.flush()?;
        Ok(cid)
    }

    /// Writes one text frame as given, past the session (requests with a `rid`, bad
    /// JSON, unknown types).
    pub fn send_json<T: JsonText + ?Sized>(&mut self, json: &T) -> Result<()> {
        self.send_frame(OpCode::Text, json.json_text().as_bytes())
    }

    /// Writes one frame of any opcode (a binary frame, a ping).
    pub fn send_frame(&mut self, opcode: OpCode, payload: &[u8]) -> Result<()> {
        self.ws.send(opcode, payload, &mut self.out);
        self.write_out()
    }

    /// Writes what the session has to say now (acks, syncs, sends, pings).
    pub fn flush(&mut self) -> Result<()> {
        for request in self.session.take_requests() {
            self.ws
                .send(OpCode::Text, request.as_bytes(), &mut self.out);
        }
        self.write_out()
    }

    /// The next event, waiting up to `timeout`; `Ok(None)` when none came in time. Acks
    /// what arrived (one ack per batch of frames read together), syncs over gaps, pings
    /// on the heartbeat. A close from the server is [`Error::Closed`] with its code.
    pub fn recv_event(&mut self, timeout: Duration) -> Result<Option<Event>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(event) = self.events.pop_front() {
                return Ok(Some(event));
            }
            // Only once what came before it is handed out: the session has already moved
            // its cursor past those events.
            if let Some(e) = self.failure.take() {
                return Err(e);
            }
            if self.session.tick(now_ms()) == Liveness::Dead {
                self.fail(close_code::GOING_AWAY, "heartbeat lost");
                return Err(Error::Silent);
            }
            self.flush()?;
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            if let Err(e) = self.read_batch(deadline.min(now + TICK)) {
                self.failure = Some(e);
            }
        }
    }

    /// Reads until `until` for one frame, then takes every frame already read with it as
    /// one batch, which gets one ack.
    fn read_batch(&mut self, until: Instant) -> Result<()> {
        let Some(frame) = self.next_frame(until, true)? else {
            return Ok(());
        };
        self.take_frame(frame)?;
        while let Some(frame) = self.next_frame(until, false)? {
            self.take_frame(frame)?;
        }
        self.flush()
    }

    /// The next frame as it came, waiting up to `timeout`, past the session (nothing is
    /// acked). A close frame comes as [`Frame::Close`]; after it, [`Error::Closed`].
    pub fn recv_raw(&mut self, timeout: Duration) -> Result<Option<Frame>> {
        self.next_frame(Instant::now() + timeout, true)
    }

    /// Closes with 1000 and waits (briefly) for the server's close. Returns its code.
    pub fn close(&mut self) -> Result<Option<u16>> {
        if let Some(code) = self.closed {
            return Ok(code);
        }
        self.ws.close(close_code::NORMAL, "", &mut self.out);
        self.write_out()?;
        let deadline = Instant::now() + CLOSE_WAIT;
        loop {
            match self.next_frame(deadline, true) {
                Ok(Some(Frame::Close(code))) => return Ok(code),
                Ok(Some(_)) => continue,
                Ok(None) => return Err(io::Error::from(io::ErrorKind::TimedOut).into()),
                Err(Error::Closed(code)) => return Ok(code),
                Err(e) => return Err(e),
            }
        }
    }

    fn take_frame(&mut self, frame: Frame) -> Result<()> {
        match frame {
            Frame::Text(text) => {
                let mut events = Vec::new();
                self.session.on_text_into(text.as_bytes(), &mut events);
                self.events.extend(events);
                Ok(())
            }
            // Not part of the protocol; a future server would not send one unasked.
            Frame::Binary(_) => Ok(()),
            Frame::Close(code) => Err(Error::Closed(code)),
        }
    }

    /// Decodes the next data or close frame, reading until `deadline` when `block` (or
    /// only from what is buffered when not). `Ok(None)`: none in time.
    fn next_frame(&mut self, deadline: Instant, block: bool) -> Result<Option<Frame>> {
        loop {
            while self.rpos < self.rbuf.len() {
                let step = self.ws.read(&mut self.rbuf[self.rpos..], &mut self.out);
                let (used, event) = match step {
                    Ok(step) => step,
                    Err(e) => {
                        // The close frame that fails the connection is in `out`.
                        let _ = self.write_out();
                        self.closed = Some(Some(e.close_code()));
                        return Err(Error::Protocol(e));
                    }
                };
                self.rpos += used;
                let frame = match event {
                    Some(WsEvent::Text(text)) => {
                        Frame::Text(String::from_utf8_lossy(text).into_owned())
                    }
                    Some(WsEvent::Binary(data)) => Frame::Binary(data.to_vec()),
                    Some(WsEvent::Closed(code)) => {
                        self.closed = Some(code);
                        Frame::Close(code)
                    }
                    None => continue,
                };
                // A pong or the echo of the server's close, if the frame asked for one.
                self.write_out()?;
                return Ok(Some(frame));
            }
            self.rbuf.clear();
            self.rpos = 0;
            if let Some(code) = self.closed {
                return Err(Error::Closed(code));
            }
            if !block {
                return Ok(None);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let wait = (deadline - now).max(Duration::from_millis(1));
            self.stream.set_read_timeout(Some(wait))?;
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.closed = Some(None);
                    return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
                }
                Ok(n) => {
                    self.session.heard(now_ms());
                    self.rbuf.extend_from_slice(&chunk[..n]);
                }
                Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends a close and stops, after a fault of ours to report.
    fn fail(&mut self, code: u16, reason: &str) {
        self.ws.close(code, reason, &mut self.out);
        let _ = self.write_out();
        let _ = self.stream.shutdown(Shutdown::Both);
        self.closed = Some(None);
    }

    fn write_out(&mut self) -> Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let result = self.stream.write_all(&self.out);
        self.out.clear();
        result.map_err(Error::Io)
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("peer", &self.stream.peer_addr().ok())
            .field("cursor", &self.session.cursor())
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

/// TCP connect and the HTTP upgrade. Returns the stream and any bytes the server sent
/// after its `101` (the `welcome` often shares its segment).
fn upgrade(
    addr: SocketAddr,
    path_and_query: &str,
    extra_headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<(TcpStream, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    // Requests are small frames; Nagle would hold an ack back behind the previous one.
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(timeout))?;
    let deadline = Instant::now() + timeout;
    let mut nonce = [0u8; 16];
    nonce[..8].copy_from_slice(&random_u64().to_ne_bytes());
    nonce[8..].copy_from_slice(&random_u64().to_ne_bytes());
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    let mut request = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (name, value) in extra_headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;

    let mut buf = Vec::new();
    let head_len = loop {
        if let Some(at) = find(&buf, b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() > MAX_RESPONSE_HEAD {
            return Err(Error::Handshake("response head too long".into()));
        }
        if read_some(&mut stream, &mut buf, deadline)? == 0 {
            return Err(Error::Handshake(format!(
                "connection closed before the response head ended ({} bytes)",
                buf.len()
            )));
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(&buf[..head_len]) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(Error::Handshake("partial head".into())),
        Err(e) => return Err(Error::Handshake(format!("not HTTP: {e}"))),
    }
    let status = response.code.unwrap_or(0);
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    if status != 101 {
        let length = header("content-length")
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0)
            .min(MAX_REFUSAL_BODY);
        let mut body = buf.split_off(head_len);
        while body.len() < length {
            match read_some(&mut stream, &mut body, deadline) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        body.truncate(length);
        let body = String::from_utf8_lossy(&body).into_owned();
        return Err(Error::Refused { status, body });
    }
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(Error::Handshake(
            "101 without Upgrade: websocket and Connection: Upgrade".into(),
        ));
    }
    let expected = accept_key(key.as_bytes());
    match header("sec-websocket-accept") {
        Some(accept) if accept.trim().as_bytes() == expected => {}
        other => {
            return Err(Error::Handshake(format!(
                "Sec-WebSocket-Accept {other:?}, expected {}",
                String::from_utf8_lossy(&expected)
            )))
        }
    }
    Ok((stream, buf.split_off(head_len)))
}

/// One read, bounded by `deadline`; a timeout is an error here.
fn read_some(stream: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant) -> Result<usize> {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "handshake timed out").into());
        }
        stream.set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))?;
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(n);
            }
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Milliseconds on one monotonic clock for every session in the process, so a session
/// moved from one connection to the next keeps consistent times.
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Unpredictable enough for handshake keys, masks and seeds: std's per-process random
/// hash keys, a counter and the time.
pub fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    hasher.finish()
}

/// Where and as whom a [`Device`] connects; asked again before every attempt, so a
/// test can hand out a fresh token or a moved address.
pub type Dial = Box<dyn FnMut() -> io::Result<(SocketAddr, String)> + Send>;

#[derive(Clone, Debug)]
pub struct DeviceOptions {
    pub client: Options,
    /// Multiplies every backoff delay: 1.0 is PROTOCOL.md's schedule; tests use less.
    pub backoff_scale: f64,
}

impl Default for DeviceOptions {
    fn default() -> DeviceOptions {
        DeviceOptions {
            client: Options::default(),
            backoff_scale: 1.0,
        }
    }
}

/// A session that outlives its connections: reconnects with the backoff when one drops,
/// then syncs from its cursor and resends its outbox.
pub struct Device {
    dial: Dial,
    options: DeviceOptions,
    /// Exactly one of these is set: the session lives in its client while connected.
    client: Option<Client>,
    session: Option<Session>,
    reconnect_at: Instant,
    connects: u64,
    last_error: Option<Error>,
}

impl Device {
    /// A device that connects on first use, asking `dial` where and with which token.
    pub fn new(
        session: Session,
        options: DeviceOptions,
        dial: impl FnMut() -> io::Result<(SocketAddr, String)> + Send + 'static,
    ) -> Device {
        Device {
            dial: Box::new(dial),
            options,
            client: None,
            session: Some(session),
            reconnect_at: Instant::now(),
            connects: 0,
            last_error: None,
        }
    }

    /// A device for one address and token.
    pub fn with_token(
        addr: SocketAddr,
        token: &str,
        session: Session,
        options: DeviceOptions,
    ) -> Device {
        let token = token.to_owned();
        Device::new(session, options, move || Ok((addr, token.clone())))
    }

    pub fn session(&self) -> &Session {
        match (&self.client, &self.session) {
            (Some(client), _) => client.session(),
            (None, Some(session)) => session,
            (None, None) => unreachable!("a device always has its session"),
        }
    }

    fn session_mut(&mut self) -> &mut Session {
        match (&mut self.client, &mut self.session) {
            (Some(client), _) => client.session_mut(),
            (None, Some(session)) => session,
            (None, None) => unreachable!("a device always has its session"),
        }
    }

    pub fn cursor(&self) -> u64 {
        self.session().cursor()
    }

    pub fn is_connected(&self) -> bool {
        self.client.is_some()
    }

    /// Connections made so far.
    pub fn connects(&self) -> u64 {
        self.connects
    }

    /// Why the last connection ended or the last attempt failed.
    pub fn last_error(&self) -> Option<&Error> {
        self.last_error.as_ref()
    }

    pub fn client(&mut self) -> Option<&mut Client> {
        self.client.as_mut()
    }

    /// Queues a message (sent at once when connected, else after the next connect) and
    /// returns its cid.
    pub fn send(&mut self, to: &str, body: &str) -> String {
        let cid = self.session_mut().send(to, body);
        if let Some(client) = &mut self.client {
            if let Err(e) = client.flush() {
                self.lost(e);
            }
        }
        cid
    }

    /// The next event within `timeout`, connecting and reconnecting as needed. A
    /// `welcome` shows that a (re)connection is up.
    pub fn recv_event(&mut self, timeout: Duration) -> Option<Event> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            if let Some(client) = &mut self.client {
                match client.recv_event(deadline.saturating_duration_since(now)) {
                    Ok(event) => return event,
                    Err(e) => {
                        self.lost(e);
                        continue;
                    }
                }
            }
            if now >= self.reconnect_at {
                self.attempt();
                continue;
            }
            if now >= deadline {
                return None;
            }
            std::thread::sleep(self.reconnect_at.min(deadline) - now);
        }
    }

    /// Cuts the connection without a close, as a network failure would.
    pub fn drop_connection(&mut self) {
        if let Some(client) = &self.client {
            let _ = client.stream().shutdown(Shutdown::Both);
            self.lost(Error::Io(io::ErrorKind::ConnectionAborted.into()));
        }
    }

    /// Closes the connection, if any, and gives the session back (to save its cursor).
    pub fn into_session(mut self) -> Session {
        match self.client.take() {
            Some(mut client) => {
                let _ = client.close();
                client.into_session()
            }
            None => self
                .session
                .take()
                .expect("a device always has its session"),
        }
    }

    fn attempt(&mut self) {
        let session = self
            .session
            .take()
            .expect("disconnected: the session is here");
        let dialed = (self.dial)();
        let result = match dialed {
            Ok((addr, token)) => Client::open(
                addr,
                &format!("/ws?token={token}"),
                &[],
                session,
                &self.options.client,
            ),
            Err(e) => Err(OpenError {
                error: e.into(),
                session: Box::new(session),
            }),
        };
        match result {
            Ok(client) => {
                self.connects += 1;
                self.client = Some(client);
            }
            Err(failed) => {
                self.session = Some(*failed.session);
                self.schedule_retry(failed.error);
            }
        }
    }

    fn lost(&mut self, e: Error) {
        if let Some(client) = self.client.take() {
            self.session = Some(client.into_session());
        }
        self.schedule_retry(e);
    }

    fn schedule_retry(&mut self, e: Error) {
        let session = self
            .session
            .as_mut()
            .expect("disconnected: the session is here");
        let delay = session.reconnect_delay_ms() as f64 * self.options.backoff_scale;
        self.reconnect_at = Instant::now() + Duration::from_secs_f64(delay.max(0.0) / 1000.0);
        self.last_error = Some(e);
    }
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("connected", &self.is_connected())
            .field("cursor", &self.cursor())
            .field("connects", &self.connects)
            .field("last_error", &self.last_error)
            .finish_non_exhaustive()
    }
}
