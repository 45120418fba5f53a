//! The bench's WebSocket client over mio: the target URL, the open-file limit, connecting
//! and handshaking many nonblocking sockets at once, and the write path. Frames are encoded
//! and decoded by the crate's own `courier::ws::conn::Conn` in the client role; there is no
//! second WebSocket stack here.

use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, ToSocketAddrs as _};
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
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .into_bytes();
        Ok(Target {
            url: url.to_owned(),
            addr,
            request,
        })
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

impl Client {
    fn connect(addr: SocketAddr, ws: Conn) -> io::Result<Client> {
        let stream = TcpStream::connect(addr)?;
        // Messages are small and latency is measured: no Nagle delay on either side.
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            ws,
            out: Vec::new(),
            written: 0,
            phase: Phase::Connecting,
            pending: Vec::new(),
            started: Instant::now(),
            handshake_time: Duration::ZERO,
        })
    }

    /// Whether a nonblocking connect has completed (mio: check `take_error`, then
    /// `peer_addr`, which says NotConnected while the connect is still in progress).
    fn finish_connect(&mut self) -> io::Result<bool> {
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
    fn read_handshake(&mut self, rbuf: &mut [u8]) -> Result<bool, String> {
        loop {
            let n = match read(&mut self.stream, rbuf) {
                Ok(Some(0)) => {
                    return Err("the server closed the connection during the handshake".into())
                }
                Ok(Some(n)) => n,
                Ok(None) => return Ok(false),
                Err(e) => return Err(format!("handshake: {e}")),
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
                return Err(format!(
                    "handshake: no end of the response head in {MAX_RESPONSE_HEAD} bytes"
                ));
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

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Checks a complete response head: status 101 (§4.1: "If the status code received from
/// the server is not 101, the client handles the response per HTTP procedures"; for a load
/// generator that means failing with the status line), then the headers §4.1 requires.
fn check_response(head: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or("");
    if !status.starts_with("HTTP/1.1 101") {
        return Err(format!("handshake rejected: {status:?}"));
    }
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
        return Err("handshake: 101 without \"Upgrade: websocket\"".into());
    }
    if !connection {
        return Err("handshake: 101 without \"Connection: Upgrade\"".into());
    }
    match accept {
        Some(a) if a == ACCEPT => Ok(()),
        Some(a) => Err(format!(
            "handshake: Sec-WebSocket-Accept is {a:?}, expected {ACCEPT:?}"
        )),
        None => Err("handshake: 101 without Sec-WebSocket-Accept".into()),
    }
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
    } = *plan;
    let fail = |msg: String| SetupError::Failed(msg);
    let mut clients: Vec<Client> = Vec::with_capacity(count);
    let mut open = 0;
    let mut last_progress = Instant::now();
    loop {
        while clients.len() < count && clients.len() - open < MAX_PENDING {
            let i = clients.len();
            let seed = seed.wrapping_add((i as u32).wrapping_mul(0x9E37_79B9));
            let mut client = Client::connect(target.addr, Conn::client(max_message, seed))
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
                        client.out.extend_from_slice(&target.request);
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
                    .map_err(|e| fail(format!("{}: {e}", target.url)))?
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
        assert!(err.contains("HTTP/1.1 426 Upgrade Required"), "{err}");
        let bad = ok.replace(ACCEPT, "xxx");
        assert!(check_response(bad.as_bytes())
            .unwrap_err()
            .contains("Accept"));
    }
}
