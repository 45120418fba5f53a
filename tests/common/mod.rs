//! Shared helpers for the loopback integration tests: a guard around a real `courier echo`
//! process, and a raw WebSocket client written by hand so tests can put any bytes on the
//! wire (bad frames, split heads, headers without payloads) that a real client library
//! would refuse to produce.
//!
//! Every socket made here has read and write timeouts, so a server that stops answering
//! fails a test instead of hanging the suite.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

#[path = "../support/listening.rs"]
mod listening;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use listening::{start_listening, StderrTail};

/// Default socket timeout: far above any legitimate wait on loopback, far below "hung".
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The RFC 6455 §1.3 sample key and the accept value the RFC gives for it.
pub const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const RFC_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// The §5.7 example masking key. A fixed key keeps failures reproducible byte for byte.
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

pub const FIN: u8 = 0x80;
pub const RSV1: u8 = 0x40;
pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// A running `courier echo`; killed when dropped so a failing test leaves no process behind.
/// Its stderr is kept out of the test's output, and printed when the test fails.
pub struct Server {
    child: Child,
    addr: SocketAddr,
    stderr: Option<StderrTail>,
}

impl Server {
    /// Starts `courier echo --listen 127.0.0.1:0` plus `extra` and waits for its
    /// `listening on ADDR` line.
    pub fn start(extra: &[&str]) -> Server {
        let started = start_listening(
            Command::new(env!("CARGO_BIN_EXE_courier"))
                .args(["echo", "--listen", "127.0.0.1:0"])
                .args(extra)
                .stdin(Stdio::null())
                .stderr(Stdio::piped()),
            Duration::from_secs(10),
            |_| {},
        );
        Server {
            child: started.child,
            addr: started.addr,
            stderr: started.stderr,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A `ws://` URL for `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Sends `signal` to the server process. Only valid while it has not been reaped.
    pub fn signal(&mut self, signal: libc::c_int) {
        assert!(
            self.child.try_wait().expect("try_wait").is_none(),
            "courier already exited"
        );
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped (checked
        // above), so the pid cannot have been reused by another process.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill: {}", io::Error::last_os_error());
    }

    pub fn terminate(&mut self) {
        self.signal(libc::SIGTERM);
    }

    pub fn interrupt(&mut self) {
        self.signal(libc::SIGINT);
    }

    /// Waits for the process to exit; panics if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "courier still running {timeout:?} after being asked to stop"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        // After the exit, so the log is complete.
        if let Some(stderr) = &self.stderr {
            let label = format!("courier echo pid {} on {}", self.child.id(), self.addr);
            stderr.print_if_panicking(&label);
        }
    }
}

/// A loopback TCP connection with timeouts on both directions and Nagle off (the tests
/// care about what each write puts on the wire, not about coalescing).
pub fn tcp(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// A valid RFC 6455 opening handshake for `path` with [`RFC_KEY`].
pub fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\n\
         Host: 127.0.0.1\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Key: {RFC_KEY}\r\n\
         Sec-WebSocket-Version: 13\r\n\
         \r\n"
    )
}

/// Sends `request` on a fresh connection and reads the reply up to the server's close.
/// Panics unless the server closes cleanly (EOF) within the socket timeout.
pub fn http_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = tcp(addr);
    stream.write_all(request).expect("write request");
    let mut reply = Vec::new();
    stream
        .read_to_end(&mut reply)
        .unwrap_or_else(|e| panic!("reading the reply to EOF: {e}; got so far: {reply:?}"));
    String::from_utf8_lossy(&reply).into_owned()
}

/// The value of the first header `name` (case-insensitive) in an HTTP head.
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n")
        .skip(1)
        .take_while(|line| !line.is_empty())
        .filter_map(|line| line.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// The body of an HTTP response (everything after the blank line).
pub fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// A frame header: `b0` (FIN, RSV, opcode) and the minimal length encoding of `len`,
/// followed by `mask` when given.
pub fn encode_header(b0: u8, len: u64, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut out = vec![b0];
    match len {
        0..=125 => out.push(mask_bit | len as u8),
        126..=0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
    if let Some(key) = mask {
        out.extend_from_slice(&key);
    }
    out
}

/// A complete frame; the payload is masked with `mask` when one is given.
pub fn encode_frame_with(b0: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = encode_header(b0, payload.len() as u64, mask);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        for (i, byte) in out[start..].iter_mut().enumerate() {
            *byte ^= key[i % 4];
        }
    }
    out
}

/// A complete client frame, masked with [`MASK`] as §5.1 requires.
pub fn encode_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    encode_frame_with(b0, payload, Some(MASK))
}

/// A close frame body: the code, then the reason bytes (not necessarily UTF-8).
pub fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    payload
}

/// One frame as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    /// RSV1-3 as the top nibble's lower three bits (0 when the server is well-behaved).
    pub rsv: u8,
    pub opcode: u8,
    pub masked: bool,
    /// Bytes of header, to check the length encoding is minimal.
    pub header_len: usize,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn close_code(&self) -> Option<u16> {
        assert_eq!(self.opcode, OP_CLOSE, "not a close frame: {self:?}");
        match self.payload.as_slice() {
            [hi, lo, ..] => Some(u16::from_be_bytes([*hi, *lo])),
            _ => None,
        }
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.payload).expect("text frame is UTF-8")
    }
}

/// A hand-written WebSocket client over a blocking socket.
pub struct RawClient {
    stream: TcpStream,
    /// Bytes read from the socket but not consumed yet.
    pending: Vec<u8>,
    /// The server's response head, status line to blank line.
    pub head: String,
}

impl RawClient {
    /// Connects and upgrades on `/echo`.
    pub fn connect(addr: SocketAddr) -> RawClient {
        RawClient::connect_sending(addr, upgrade_request("/echo").as_bytes())
    }

    /// Connects, writes `first_write` (a request head, possibly with frames behind it) in
    /// one write, and reads the response head, which must be a 101.
    pub fn connect_sending(addr: SocketAddr, first_write: &[u8]) -> RawClient {
        let mut stream = tcp(addr);
        stream
            .write_all(first_write)
            .expect("write upgrade request");
        RawClient::finish_upgrade(stream)
    }

    /// Reads the response head of an upgrade request already written to `stream`.
    pub fn finish_upgrade(stream: TcpStream) -> RawClient {
        let mut client = RawClient {
            stream,
            pending: Vec::new(),
            head: String::new(),
        };
        let end = loop {
            if let Some(pos) = client.pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            assert!(client.pending.len() < 16 * 1024, "response head too long");
            let got = client.read_more().expect("reading the response head");
            assert!(
                got > 0,
                "EOF before the end of the response head: {:?}",
                String::from_utf8_lossy(&client.pending)
            );
        };
        client.head = String::from_utf8_lossy(&client.pending[..end]).into_owned();
        client.pending.drain(..end);
        assert!(
            client
                .head
                .starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "expected a 101, got {:?}",
            client.head
        );
        client
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    pub fn set_read_timeout(&self, timeout: Duration) {
        self.stream.set_read_timeout(Some(timeout)).unwrap();
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to server");
    }

    /// Sends one masked frame with first byte `b0`.
    pub fn send(&mut self, b0: u8, payload: &[u8]) {
        self.send_raw(&encode_frame(b0, payload));
    }

    pub fn send_text(&mut self, text: &str) {
        self.send(FIN | OP_TEXT, text.as_bytes());
    }

    fn read_more(&mut self) -> io::Result<usize> {
        let mut buf = [0u8; 64 * 1024];
        let n = self.stream.read(&mut buf)?;
        self.pending.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    /// Makes `pending` hold at least `n` bytes; EOF first is `UnexpectedEof`.
    fn fill(&mut self, n: usize) -> io::Result<()> {
        while self.pending.len() < n {
            if self.read_more()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF with {} of {n} bytes of a frame", self.pending.len()),
                ));
            }
        }
        Ok(())
    }

    /// Reads the next frame the server sent.
    pub fn read_frame(&mut self) -> io::Result<Frame> {
        self.fill(2)?;
        let (b0, b1) = (self.pending[0], self.pending[1]);
        let masked = b1 & 0x80 != 0;
        let (len, mut header_len) = match b1 & 0x7F {
            126 => {
                self.fill(4)?;
                (
                    u64::from(u16::from_be_bytes([self.pending[2], self.pending[3]])),
                    4,
                )
            }
            127 => {
                self.fill(10)?;
                let bytes: [u8; 8] = self.pending[2..10].try_into().unwrap();
                (u64::from_be_bytes(bytes), 10)
            }
            len => (u64::from(len), 2),
        };
        let mask = if masked {
            self.fill(header_len + 4)?;
            let key: [u8; 4] = self.pending[header_len..header_len + 4].try_into().unwrap();
            header_len += 4;
            Some(key)
        } else {
            None
        };
        let len = usize::try_from(len).expect("frame length fits usize");
        self.fill(header_len + len)?;
        let mut payload: Vec<u8> = self.pending[header_len..header_len + len].to_vec();
        self.pending.drain(..header_len + len);
        if let Some(key) = mask {
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= key[i % 4];
            }
        }
        Ok(Frame {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 0x7,
            opcode: b0 & 0x0F,
            masked,
            header_len,
            payload,
        })
    }

    /// Reads the next frame, which must be a well-formed data or control frame from a
    /// server (FIN set, no RSV bits, unmasked).
    pub fn expect_frame(&mut self, opcode: u8) -> Frame {
        let frame = self
            .read_frame()
            .unwrap_or_else(|e| panic!("expected a frame with opcode {opcode:#x}: {e}"));
        assert_eq!(frame.opcode, opcode, "unexpected frame {frame:?}");
        assert!(frame.fin, "server frames are never fragmented: {frame:?}");
        assert_eq!(frame.rsv, 0, "server set RSV bits: {frame:?}");
        assert!(!frame.masked, "server frames must not be masked: {frame:?}");
        frame
    }

    pub fn expect_text(&mut self, text: &str) {
        let frame = self.expect_frame(OP_TEXT);
        assert_eq!(frame.text(), text);
    }

    /// The next frame must be a close with `code`; returns it.
    pub fn expect_close(&mut self, code: u16) -> Frame {
        let frame = self.expect_frame(OP_CLOSE);
        assert_eq!(
            frame.close_code(),
            Some(code),
            "close reason: {:?}",
            String::from_utf8_lossy(frame.payload.get(2..).unwrap_or_default())
        );
        frame
    }

    /// The server must have nothing more to say and close its side cleanly (FIN).
    pub fn expect_eof(&mut self) {
        assert!(
            self.pending.is_empty(),
            "unread bytes before EOF: {:?}",
            self.pending
        );
        match self.read_more() {
            Ok(0) => {}
            Ok(n) => panic!("expected EOF, got {n} more bytes: {:?}", self.pending),
            Err(e) => panic!("expected EOF, got {e}"),
        }
    }

    /// Reads and discards until the server closes (EOF or reset) or `timeout` passes.
    /// Returns how long it took, or `None` on timeout.
    pub fn wait_closed(&mut self, timeout: Duration) -> Option<Duration> {
        let start = Instant::now();
        let deadline = start + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            self.pending.clear();
            match self.read_more() {
                Ok(0) => return Some(start.elapsed()),
                Ok(_) => {}
                Err(e) if is_timeout(&e) => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Some(start.elapsed()),
            }
        }
    }

    /// Our side of the close handshake.
    pub fn send_close(&mut self, code: u16) {
        self.send(FIN | OP_CLOSE, &close_payload(code, b""));
    }

    pub fn into_stream(self) -> TcpStream {
        assert!(self.pending.is_empty(), "unread bytes: {:?}", self.pending);
        self.stream
    }
}

/// A read or write timeout, as std reports it on Unix (`WouldBlock`) or elsewhere.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A tungstenite client on a blocking socket with timeouts, upgraded on `path`.
pub fn ws_connect(addr: SocketAddr, path: &str) -> tungstenite::WebSocket<TcpStream> {
    let url = format!("ws://{addr}{path}");
    let (ws, response) = tungstenite::client(url.as_str(), tcp(addr))
        .unwrap_or_else(|e| panic!("WebSocket handshake with {url}: {e}"));
    assert_eq!(response.status(), 101);
    ws
}

/// `len` bytes of printable ASCII that differ from message to message (`seed`), so a
/// reordered or truncated echo cannot pass for the right one.
pub fn ascii_pattern(len: usize, seed: usize) -> String {
    (0..len)
        .map(|i| char::from(b' ' + ((i * 7 + seed * 13) % 95) as u8))
        .collect()
}

/// `len` bytes covering every byte value.
pub fn byte_pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31).wrapping_add(seed.wrapping_mul(17)) % 256) as u8)
        .collect()
}
