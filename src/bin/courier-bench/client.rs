//! The bench's WebSocket client over mio: the target URL, the open-file limit, connecting
//! and handshaking many nonblocking sockets at once, and the write path. Frames are encoded
//! and decoded by the crate's own `courier::ws::conn::Conn` in the client role; there is no
//! second WebSocket stack here.

use std::fmt;
use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs as _};
use std::os::fd::{AsRawFd, FromRawFd as _, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use courier::ws::conn::Conn;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

/// The request key. A load generator gains nothing from a fresh nonce per connection
/// (RFC 6455 §4.1 wants one to stop caching intermediaries, which loopback has none of),
/// so every connection sends the RFC's own sample key and expects its sample answer.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// §1.3: base64(SHA-1(KEY + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")).
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
/// A response head longer than this is not a WebSocket server talking.
const MAX_RESPONSE_HEAD: usize = 16 << 10;
/// Connects and handshakes in flight at once per thread: enough to keep a server's accept
/// loop busy, few enough not to overflow a default listen backlog (and then wait a SYN
/// retransmit, 1 s, for the dropped ones).
const MAX_PENDING: usize = 128;
/// Setup gives up when no connection has made progress for this long.
const SETUP_STALL: Duration = Duration::from_secs(10);

/// Where to connect: parsed from `ws://HOST[:PORT][/PATH]`.
#[derive(Clone, Debug)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
    /// `GET` request of the opening handshake, the same bytes for every connection.
    pub request: Vec<u8>,
    /// The request target (`/ws`, `/ws?x=1`) and the `Host` value, for requests that
    /// differ per connection ([`Target::request_with_token`]).
    path: String,
    authority: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = match url.strip_prefix("ws://") {
            Some(r) => r,
            None if url.starts_with("wss://") => {
                return Err(format!("{url}: wss:// (TLS) is not supported; use ws://"));
            }
            None => return Err(format!("{url}: the URL must start with ws://")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(format!("{url}: no host"));
        }
        // [v6]:port, host:port, or a host alone (port 80).
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{url}: unclosed '['"))?;
            match after.strip_prefix(':') {
                Some(p) => (h, p),
                None if after.is_empty() => (h, "80"),
                None => return Err(format!("{url}: junk after ']'")),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, p),
                None => (authority, "80"),
            }
        };
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{url}: bad port {port:?}"))?;
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("{url}: cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{url}: {host} has no address"))?;
        Ok(Target {
            url: url.to_owned(),
            addr,
            request: handshake_request(path, authority),
            path: path.to_owned(),
            authority: authority.to_owned(),
        })
    }

    /// The opening handshake with `token` in the query (`?token=`, or `&token=` when the
    /// URL already has a query): how courier's `/ws` takes a JWT from a client that
    /// cannot set headers. A JWT is all URL-safe characters, so it goes in as it is.
    pub fn request_with_token(&self, token: &str) -> Vec<u8> {
        let sep = if self.path.contains('?') { '&' } else { '?' };
        handshake_request(&format!("{}{sep}token={token}", self.path), &self.authority)
    }
}

fn handshake_request(path: &str, authority: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// Lifetime of the tokens the bench mints: far past any run, short enough that a token
/// copied out of a log is not a standing credential.
const TOKEN_TTL_SECS: u64 = 24 * 3600;

/// A courier access token for `user` signed with `secret` (what `courier token USER`
/// prints), valid from now for a day.
pub fn mint_token(user: &str, secret: &str) -> String {
    let now = courier::clock::wall_ms() / 1000;
    courier::im::auth::issue(user, TOKEN_TTL_SECS, secret.as_bytes(), now)
}

/// A hint for a refused handshake: a 401 from courier's `/ws` means the token was not
/// accepted, which with a bench-minted token is nearly always the secret.
pub fn rejection_hint(e: &HandshakeError) -> &'static str {
    match e {
        HandshakeError::Rejected {
            status: Some(401), ..
        } => " (the server refused the token: is --jwt-secret the server's secret?)",
        HandshakeError::Rejected {
            status: Some(404), ..
        } => " (no such endpoint: courier's IM endpoint is /ws)",
        _ => "",
    }
}

/// Raises the soft open-file limit to the hard one when `need` descriptors do not fit
/// under it, and says plainly when even the hard limit is too low.
pub fn ensure_fd_limit(need: libc::rlim_t) -> Result<(), String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(format!(
            "getrlimit(RLIMIT_NOFILE): {}",
            io::Error::last_os_error()
        ));
    }
    let fits = |v: libc::rlim_t| v == libc::RLIM_INFINITY || v >= need;
    if fits(lim.rlim_cur) {
        return Ok(());
    }
    if !fits(lim.rlim_max) {
        return Err(format!(
            "need about {need} open files, but the hard limit (ulimit -Hn) is {}; lower \
             --connections, raise the hard limit, or run several courier-bench processes",
            lim.rlim_max
        ));
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(format!(
            "need about {need} open files; raising the soft limit to {} failed: {}",
            lim.rlim_max,
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Connecting,
    Handshaking,
    Open,
}

/// One client connection: the socket, the crate's WebSocket core in the client role and
/// the bytes waiting to be written.
pub struct Client {
    pub stream: TcpStream,
    pub ws: Conn,
    /// Encoded frames not yet written; `out[..written]` is already on the wire.
    pub out: Vec<u8>,
    written: usize,
    pub phase: Phase,
    /// While handshaking: the response so far. Once open: frame bytes that arrived right
    /// behind the response head, for the mode to feed to `ws` first.
    pub pending: Vec<u8>,
    started: Instant,
    /// From `connect()` to the complete 101 response.
    pub handshake_time: Duration,
}

/// Why an opening handshake failed after the TCP connect succeeded.
#[derive(Debug)]
pub enum HandshakeError {
    /// End of stream before the response head was complete.
    Closed,
    /// Writing the request or reading the response failed (reset, ...).
    Io(io::Error),
    /// A complete response head whose status is not 101; `status` is its code when the
    /// status line has one.
    Rejected { status: Option<u16>, line: String },
    /// A 101 that is not a valid WebSocket accept, or no response head at all.
    Invalid(String),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Closed => {
                f.write_str("the server closed the connection during the handshake")
            }
            HandshakeError::Io(e) => write!(f, "handshake: {e}"),
            HandshakeError::Rejected { line, .. } => write!(f, "handshake rejected: {line:?}"),
            HandshakeError::Invalid(why) => f.write_str(why),
        }
    }
}

impl Client {
    /// Starts a nonblocking connect to `addr`, from `source` when given (the kernel picks
    /// the source address otherwise). The handshake clock starts before the socket exists,
    /// so the connect syscall itself is part of the measured time.
    pub fn connect(addr: SocketAddr, source: Option<Ipv4Addr>, ws: Conn) -> io::Result<Client> {
        Client::connect_tuned(addr, source, None, ws)
    }

    /// [`Client::connect`] with a receive buffer of `rcvbuf` bytes set before the connect,
    /// when the TCP window is negotiated (later it would not shrink what the server may
    /// send): how a client that stops reading is made to push back at once.
    pub fn connect_tuned(
        addr: SocketAddr,
        source: Option<Ipv4Addr>,
        rcvbuf: Option<usize>,
        ws: Conn,
    ) -> io::Result<Client> {
        let started = Instant::now();
        let stream = match (source, rcvbuf, addr) {
            (None, None, _) => TcpStream::connect(addr)?,
            (_, _, SocketAddr::V4(v4)) => connect_from(source, v4, rcvbuf)?,
            (_, _, SocketAddr::V6(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a source address or a receive buffer needs an IPv4 target",
                ))
            }
        };
        // Messages are small and latency is measured: no Nagle delay on either side.
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            ws,
            out: Vec::new(),
            written: 0,
            phase: Phase::Connecting,
            pending: Vec::new(),
            started,
            handshake_time: Duration::ZERO,
        })
    }

    /// When `connect` was called.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Whether a nonblocking connect has completed (mio: check `take_error`, then
    /// `peer_addr`, which says NotConnected while the connect is still in progress).
    pub fn finish_connect(&mut self) -> io::Result<bool> {
        if let Some(e) = self.stream.take_error()? {
            return Err(e);
        }
        match self.stream.peer_addr() {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn has_output(&self) -> bool {
        self.written < self.out.len()
    }

    /// Writes queued output until it is all out or the socket is full. The buffer keeps its
    /// capacity, so steady-state sending allocates nothing.
    pub fn flush(&mut self) -> io::Result<()> {
        while self.written < self.out.len() {
            match self.stream.write(&self.out[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        self.written = 0;
        Ok(())
    }

    /// Reads the handshake response. `Ok(true)` once the head is complete and valid.
    pub fn read_handshake(&mut self, rbuf: &mut [u8]) -> Result<bool, HandshakeError> {
        loop {
            let n = match read(&mut self.stream, rbuf) {
                Ok(Some(0)) => return Err(HandshakeError::Closed),
                Ok(Some(n)) => n,
                Ok(None) => return Ok(false),
                Err(e) => return Err(HandshakeError::Io(e)),
            };
            let search_from = self.pending.len().saturating_sub(3);
            self.pending.extend_from_slice(&rbuf[..n]);
            if let Some(i) = find(&self.pending[search_from..], b"\r\n\r\n") {
                let end = search_from + i + 4;
                check_response(&self.pending[..end])?;
                self.pending.drain(..end);
                self.phase = Phase::Open;
                self.handshake_time = self.started.elapsed();
                return Ok(true);
            }
            if self.pending.len() > MAX_RESPONSE_HEAD {
                return Err(HandshakeError::Invalid(format!(
                    "handshake: no end of the response head in {MAX_RESPONSE_HEAD} bytes"
                )));
            }
        }
    }
}

/// One `read`, retried on EINTR. `Ok(None)` = would block; `Ok(Some(0))` = end of stream.
#[inline]
pub fn read(stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        match stream.read(buf) {
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A nonblocking socket connecting to `target`, bound to `source` when given, with a
/// receive buffer of `rcvbuf` bytes when given. The port is left to `connect`
/// (IP_BIND_ADDRESS_NO_PORT): a plain `bind` to port 0 would have to pick a port free for
/// every destination, which caps each source address at the ephemeral range minus
/// whatever else holds ports; deferred, the kernel only needs the 4-tuple unique.
fn connect_from(
    source: Option<Ipv4Addr>,
    target: SocketAddrV4,
    rcvbuf: Option<usize>,
) -> io::Result<TcpStream> {
    // SAFETY: plain socket(2); the result is checked before it is wrapped.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns; OwnedFd closes it on every
    // error path below.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Some(bytes) = rcvbuf {
        let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        set_int_option(&sock, libc::SOL_SOCKET, libc::SO_RCVBUF, bytes)?;
    }
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    if let Some(source) = source {
        set_int_option(&sock, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)?;
        let local = sockaddr_in(SocketAddrV4::new(source, 0));
        // SAFETY: bind reads a sockaddr_in we own, with its size.
        if unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&local as *const libc::sockaddr_in).cast(),
                len,
            )
        } != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    let remote = sockaddr_in(target);
    // SAFETY: connect reads a sockaddr_in we own, with its size.
    let rc = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            (&remote as *const libc::sockaddr_in).cast(),
            len,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(TcpStream::from_std(std::net::TcpStream::from(sock)))
}

/// setsockopt with an int value.
pub fn set_int_option(
    sock: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt reads an int we own, with its size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            // Network byte order is the octets in order.
            s_addr: u32::from_ne_bytes(addr.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Checks a complete response head: status 101 (§4.1: "If the status code received from
/// the server is not 101, the client handles the response per HTTP procedures"; for a load
/// generator that means failing with the status line), then the headers §4.1 requires.
fn check_response(head: &[u8]) -> Result<(), HandshakeError> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or("");
    if !status.starts_with("HTTP/1.1 101") {
        return Err(HandshakeError::Rejected {
            status: status_code(status),
            line: status.to_owned(),
        });
    }
    let invalid = |why: &str| Err(HandshakeError::Invalid(why.to_owned()));
    let (mut upgrade, mut connection, mut accept) = (false, false, None);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade = value.eq_ignore_ascii_case("websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection = value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
        } else if name.eq_ignore_ascii_case("sec-websocket-accept") {
            accept = Some(value.to_owned());
        }
    }
    if !upgrade {
        return invalid("handshake: 101 without \"Upgrade: websocket\"");
    }
    if !connection {
        return invalid("handshake: 101 without \"Connection: Upgrade\"");
    }
    match accept {
        Some(a) if a == ACCEPT => Ok(()),
        Some(a) => Err(HandshakeError::Invalid(format!(
            "handshake: Sec-WebSocket-Accept is {a:?}, expected {ACCEPT:?}"
        ))),
        None => invalid("handshake: 101 without Sec-WebSocket-Accept"),
    }
}

/// The code of an HTTP status line (`HTTP/1.1 503 Service Unavailable` → 503).
fn status_code(line: &str) -> Option<u16> {
    let code = line.split(' ').nth(1)?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

/// Why setup stopped.
pub enum SetupError {
    /// Something failed here; the message says what.
    Failed(String),
    /// Another thread failed and raised the abort flag.
    Aborted,
}

/// What `establish` opens.
#[derive(Clone, Copy)]
pub struct Plan<'a> {
    pub target: &'a Target,
    pub count: usize,
    /// Largest message the client accepts from the server.
    pub max_message: usize,
    /// Seeds the connections' masking-key generators.
    pub seed: u32,
    /// The access token of connection `i`, sent as `?token=`; `None` sends the target's
    /// one request to every connection.
    pub token: Option<&'a (dyn Fn(usize) -> String + Sync)>,
}

/// Opens `count` connections to `target` and completes their handshakes, at most
/// `MAX_PENDING` in progress at a time, on `poll`. Connection `i` is registered with
/// `Token(i)` for reading and writing (edge-triggered, once: never re-registered). Stops
/// at the first failure, or when `abort` is raised by another thread.
pub fn establish(
    poll: &mut Poll,
    events: &mut Events,
    plan: &Plan<'_>,
    abort: &AtomicBool,
    rbuf: &mut [u8],
) -> Result<Vec<Client>, SetupError> {
    let Plan {
        target,
        count,
        max_message,
        seed,
        token,
    } = *plan;
    let fail = |msg: String| SetupError::Failed(msg);
    let mut clients: Vec<Client> = Vec::with_capacity(count);
    let mut open = 0;
    let mut last_progress = Instant::now();
    loop {
        while clients.len() < count && clients.len() - open < MAX_PENDING {
            let i = clients.len();
            let seed = seed.wrapping_add((i as u32).wrapping_mul(0x9E37_79B9));
            let mut client = Client::connect(target.addr, None, Conn::client(max_message, seed))
                .map_err(|e| fail(connect_error(target, &e, i)))?;
            poll.registry()
                .register(
                    &mut client.stream,
                    Token(i),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .map_err(|e| fail(format!("epoll register: {e}")))?;
            clients.push(client);
        }
        if open == count {
            return Ok(clients);
        }
        if abort.load(Ordering::Relaxed) {
            return Err(SetupError::Aborted);
        }
        if let Err(e) = poll.poll(events, Some(Duration::from_millis(100))) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(fail(format!("epoll: {e}")));
            }
        }
        for event in events.iter() {
            let Some(client) = clients.get_mut(event.token().0) else {
                continue;
            };
            if client.phase == Phase::Connecting {
                match client.finish_connect() {
                    Ok(true) => {
                        client.phase = Phase::Handshaking;
                        match token {
                            Some(token) => {
                                let request = target.request_with_token(&token(event.token().0));
                                client.out.extend_from_slice(&request);
                            }
                            None => client.out.extend_from_slice(&target.request),
                        }
                        last_progress = Instant::now();
                    }
                    Ok(false) => continue,
                    Err(e) => return Err(fail(connect_error(target, &e, event.token().0))),
                }
            }
            if client.phase == Phase::Handshaking {
                client
                    .flush()
                    .map_err(|e| fail(format!("handshake: sending the request: {e}")))?;
                if client
                    .read_handshake(rbuf)
                    .map_err(|e| fail(format!("{}: {e}{}", target.url, rejection_hint(&e))))?
                {
                    open += 1;
                    last_progress = Instant::now();
                }
            }
        }
        if last_progress.elapsed() > SETUP_STALL {
            let connecting = clients
                .iter()
                .filter(|c| c.phase == Phase::Connecting)
                .count();
            return Err(fail(format!(
                "{}: setup stalled for {} s with {open} of {count} connections open \
                 ({connecting} still connecting, {} handshaking)",
                target.url,
                SETUP_STALL.as_secs(),
                clients.len() - open - connecting
            )));
        }
    }
}

fn connect_error(target: &Target, e: &io::Error, i: usize) -> String {
    let hint = match e.kind() {
        io::ErrorKind::ConnectionRefused => " (is the server running and listening there?)",
        _ if e.raw_os_error() == Some(libc::EMFILE) => " (per-process open-file limit reached)",
        _ if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
            " (out of local ports for this address)"
        }
        _ => "",
    };
    format!(
        "cannot connect to {} ({}), connection #{i}: {e}{hint}",
        target.url, target.addr
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms() {
        let t = Target::parse("ws://127.0.0.1:9001/chat").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9001".parse().unwrap());
        assert!(t
            .request
            .starts_with(b"GET /chat HTTP/1.1\r\nHost: 127.0.0.1:9001\r\n"));
        let t = Target::parse("ws://[::1]:9002").unwrap();
        assert_eq!(t.addr, "[::1]:9002".parse().unwrap());
        assert!(t.request.starts_with(b"GET / HTTP/1.1\r\n"));
        let t = Target::parse("ws://127.0.0.1:1/ws").unwrap();
        assert!(t
            .request_with_token("a.b.c")
            .starts_with(b"GET /ws?token=a.b.c HTTP/1.1\r\nHost: 127.0.0.1:1\r\n"));
        let t = Target::parse("ws://127.0.0.1:1/ws?v=1").unwrap();
        assert!(t
            .request_with_token("t")
            .starts_with(b"GET /ws?v=1&token=t HTTP/1.1\r\n"));
        assert!(Target::parse("wss://x/")
            .unwrap_err()
            .contains("not supported"));
        assert!(Target::parse("http://x/").is_err());
        assert!(Target::parse("ws://127.0.0.1:99999/").is_err());
    }

    #[test]
    fn response_checks() {
        let ok = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n");
        assert!(check_response(ok.as_bytes()).is_ok());
        let err = check_response(b"HTTP/1.1 426 Upgrade Required\r\n\r\n").unwrap_err();
        assert!(
            matches!(
                err,
                HandshakeError::Rejected {
                    status: Some(426),
                    ..
                }
            ),
            "{err:?}"
        );
        let err = err.to_string();
        assert!(err.contains("HTTP/1.1 426 Upgrade Required"), "{err}");
        let bad = ok.replace(ACCEPT, "xxx");
        let err = check_response(bad.as_bytes()).unwrap_err();
        assert!(matches!(err, HandshakeError::Invalid(_)), "{err:?}");
        assert!(err.to_string().contains("Accept"));
    }

    #[test]
    fn minted_tokens_verify() {
        let token = mint_token("u7", "s3cret");
        let now = courier::clock::wall_ms() / 1000;
        let claims = courier::im::auth::verify(&token, b"s3cret", now).unwrap();
        assert_eq!(claims.sub, "u7");
        assert!(claims.exp >= now + TOKEN_TTL_SECS - 5);
        assert!(courier::im::auth::verify(&token, b"other", now).is_err());
    }

    #[test]
    fn status_codes() {
        assert_eq!(status_code("HTTP/1.1 503 Service Unavailable"), Some(503));
        assert_eq!(status_code("HTTP/1.0 400"), Some(400));
        assert_eq!(status_code("HTTP/1.1 5030 x"), None);
        assert_eq!(status_code("garbage"), None);
        assert_eq!(status_code(""), None);
    }

    #[test]
    fn sockaddr_in_is_network_order() {
        let a = sockaddr_in("127.0.0.2:8080".parse().unwrap());
        assert_eq!(a.sin_port.to_ne_bytes(), 8080u16.to_be_bytes());
        assert_eq!(a.sin_addr.s_addr.to_ne_bytes(), [127, 0, 0, 2]);
    }
}
