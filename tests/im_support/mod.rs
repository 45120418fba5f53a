//! Shared helpers for the IM integration tests (`tests/im_*.rs`): a real `courier serve`
//! per test on 127.0.0.1:0 with a fresh data folder, a blocking WebSocket client where
//! every read has a timeout, token minting (good and forged), and raw TCP handshakes and
//! frames for the cases a well-behaved client library refuses to produce.
//!
//! Each test file includes this with `mod im_support;` and uses only part of it.
#![allow(dead_code)]

#[path = "../support/listening.rs"]
mod listening;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use listening::{start_listening, StderrTail};
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::{Message, WebSocket};

/// The `--jwt-secret` every test server runs with.
pub const SECRET: &str = "courier-im-tests-secret-0123456789";

/// How long a test waits for a frame it expects before failing.
pub const WAIT: Duration = Duration::from_secs(5);

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

// ---------------------------------------------------------------------------------------
// Data folders and servers

/// A fresh, uniquely named folder under the system temp dir, removed on drop.
pub struct DataDir {
    pub path: PathBuf,
}

impl DataDir {
    pub fn new(tag: &str) -> DataDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "courier-im-{tag}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&path);
        DataDir { path }
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A running `courier serve`, killed (SIGKILL) and reaped on drop. When started with
/// [`Server::start`] it owns its data folder, removed after the process is gone.
///
/// Its stderr (the log), when the command pipes it as [`courier_command`] does, is kept
/// out of the test's output and printed only when the test fails (dropped while
/// panicking).
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    stderr: Option<StderrTail>,
    /// Dropped after `Drop::drop` has killed the process.
    _dir: Option<DataDir>,
}

impl Server {
    /// A server on a fresh data folder of its own, with `extra` flags after the defaults.
    pub fn start(extra: &[&str]) -> Server {
        let dir = DataDir::new("srv");
        let mut server = Server::start_in(&dir.path, extra);
        server._dir = Some(dir);
        server
    }

    /// A server on `data` (kept after the server is gone: restart tests reuse it).
    pub fn start_in(data: &Path, extra: &[&str]) -> Server {
        let mut args = vec!["--jwt-secret", SECRET];
        args.extend_from_slice(extra);
        Server::spawn(data, &args, &[])
    }

    /// `courier serve --listen 127.0.0.1:0 --data DATA ARGS` with only `env` of the
    /// `COURIER_*` variables set (no secret unless `args` or `env` give one).
    pub fn spawn(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::run(serve_command(data, args, env))
    }

    /// Runs any `courier` command line (`courier echo …` too) and waits for its
    /// `listening on ADDR` line.
    pub fn run(mut command: Command) -> Server {
        let started = start_listening(&mut command, Duration::from_secs(15), |_| {});
        Server {
            child: started.child,
            addr: started.addr,
            stderr: started.stderr,
            _dir: None,
        }
    }

    /// [`Server::run`] for a server given `--metrics-listen`: also the address of its
    /// metrics listener, from the `metrics on ADDR` line it prints before `listening on`.
    pub fn run_with_metrics(mut command: Command) -> (Server, SocketAddr) {
        use std::io::BufRead;
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn courier");
        let stderr = child
            .stderr
            .take()
            .map(|stderr| StderrTail::capture(stderr, |_| {}));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut metrics = None;
            let mut lines = std::io::BufReader::new(stdout).lines();
            for line in lines.by_ref() {
                let Ok(line) = line else { return };
                if let Some(addr) = line.strip_prefix("metrics on ") {
                    metrics = addr.trim().parse::<SocketAddr>().ok();
                } else if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send((addr.trim().parse::<SocketAddr>().ok(), metrics));
                    break;
                }
            }
            // Drained for the life of the process: a server blocked on a full pipe would
            // look like a hang.
            for _ in lines {}
        });
        let mut server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr,
            _dir: None,
        };
        match rx.recv_timeout(Duration::from_secs(15)) {
            Ok((Some(addr), Some(metrics))) => {
                server.addr = addr;
                (server, metrics)
            }
            other => panic!("no `metrics on` and `listening on` lines: {other:?}"),
        }
    }

    /// [`Server::run`] with the server's stderr also collected line by line into the
    /// returned [`Log`], for tests about what is logged.
    pub fn run_logged(mut command: Command) -> (Server, Log) {
        command.stderr(Stdio::piped());
        let log = Log::default();
        let lines = log.lines.clone();
        let started = start_listening(&mut command, Duration::from_secs(15), move |line| {
            lines.lock().unwrap().push(line.to_owned())
        });
        let server = Server {
            child: started.child,
            addr: started.addr,
            stderr: started.stderr,
            _dir: None,
        };
        (server, log)
    }

    /// Whether the process is still running (not exited, not reaped).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Hands `dir` to the server, to be removed once the process is gone.
    pub fn owning(mut self, dir: DataDir) -> Server {
        self._dir = Some(dir);
        self
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        // SAFETY: plain syscall on the pid of a child we have not reaped yet.
        let rc = unsafe { libc::kill(self.pid(), libc::SIGKILL) };
        assert_eq!(rc, 0, "kill -9 {}", self.pid());
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        self.signal(libc::SIGTERM, within)
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Sends `signal` without waiting.
    pub fn send_signal(&self, signal: libc::c_int) {
        // SAFETY: plain syscall on the pid of a child we have not reaped yet.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// Sends `signal`, then waits (bounded) for the exit status.
    pub fn signal(
        &mut self,
        signal: libc::c_int,
        within: Duration,
    ) -> Option<std::process::ExitStatus> {
        // SAFETY: plain syscall on the pid of a child we have not reaped yet.
        unsafe { libc::kill(self.pid(), signal) };
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// A WebSocket URL path on this server with `?token=` for `user`.
    pub fn connect(&self, user: &str) -> Client {
        Client::connect(self.addr, user)
    }
}

/// The `courier serve` command line the tests run, `COURIER_*` from the test's own
/// environment removed and `env` added.
pub fn serve_command(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = courier_command(&["serve", "--listen", "127.0.0.1:0", "--data"]);
    command.arg(data).args(args).envs(env.iter().copied());
    command
}

/// Runs a command that is expected to end by itself, its output captured, and fails the
/// test if it is still running after `within`.
pub fn output_within(mut command: Command, within: Duration) -> std::process::Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().expect("output");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    panic!(
        "still running after {within:?}: {:?}",
        child.wait_with_output()
    );
}

/// `courier ARGS` with none of the test's own `COURIER_*` variables: the test's
/// environment must not configure the server behind its back. Stderr is piped: a
/// [`Server`] keeps it for a failing test, `output()` returns it, and nothing reaches
/// the output of a passing test.
pub fn courier_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_courier"));
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("COURIER_") {
            command.env_remove(name);
        }
    }
    command
}

/// Starts `command` (a `courier serve`), returns its stderr lines up to and including the
/// `serving on` line, which the server logs once it listens, after everything it logs at
/// start; then kills it. Panics if that line does not come within 15 s.
pub fn stderr_until_serving(mut command: Command) -> Vec<String> {
    use std::io::BufRead;
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn courier");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut lines: Vec<String> = Vec::new();
    while !lines.iter().any(|l| l.contains("serving on")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => break,
        }
    }
    // SAFETY: plain syscall on the pid of a child we have not reaped yet.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    assert!(
        lines.iter().any(|l| l.contains("serving on")),
        "no `serving on` line within 15 s: {lines:?}"
    );
    lines
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: as in `kill9`; the child is still ours (not reaped).
            unsafe { libc::kill(self.pid(), libc::SIGKILL) };
        }
        let _ = self.child.wait();
        // After the exit, so the log is complete.
        if let Some(stderr) = &self.stderr {
            stderr.print_if_panicking(&format!("courier pid {} on {}", self.pid(), self.addr));
        }
    }
}

/// A server's stderr lines, as [`Server::run_logged`] collects them.
#[derive(Clone, Default)]
pub struct Log {
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Log {
    /// The lines so far that contain `needle`.
    pub fn matching(&self, needle: &str) -> Vec<String> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// Waits (bounded) until some line contains `needle`; false if none did in time.
    pub fn wait_for(&self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if !self.matching(needle).is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Tokens

/// A valid token for `user`, as the server itself issues them.
pub fn token(user: &str) -> String {
    courier::im::auth::issue(user, 3600, SECRET.as_bytes(), now_secs())
}

pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWT with exactly this header and these claims, HS256-signed with `secret`
/// (whatever the header's `alg` says).
pub fn sign(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let mac = hmac_sha256::HMAC::mac(input.as_bytes(), secret);
    format!("{input}.{}", b64(mac))
}

pub fn hs256_header() -> Value {
    json!({"alg": "HS256", "typ": "JWT"})
}

pub fn claims_for(user: &str) -> Value {
    json!({"sub": user, "iat": now_secs(), "exp": now_secs() + 3600})
}

// ---------------------------------------------------------------------------------------
// Raw TCP

/// Sends a WebSocket upgrade request for `target` with `headers`, returns the status code
/// and the whole response head. The socket is returned too, for tests that keep going.
pub fn raw_upgrade(
    addr: SocketAddr,
    target: &str,
    headers: &[(&str, &str)],
) -> (u16, String, TcpStream) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    let mut request = format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .expect("write handshake");
    let head = read_head(&mut stream);
    let status = parse_status(&head);
    (status, head, stream)
}

/// Reads an HTTP response head (up to the blank line, or EOF).
pub fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => head.push(byte[0]),
            Err(e) => panic!(
                "reading the response head: {e} (so far: {:?})",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

pub fn parse_status(head: &str) -> u16 {
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"))
}

/// A plain `GET target` (connection closed after the response): status and body.
pub fn http_get(addr: SocketAddr, target: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("write request");
    let head = read_head(&mut stream);
    (parse_status(&head), read_body(&head, &mut stream))
}

/// The body that follows `head` on `stream`, as long as its `Content-Length` says.
pub fn read_body(head: &str, stream: &mut TcpStream) -> String {
    let length: usize = head
        .to_ascii_lowercase()
        .lines()
        .find_map(|l| {
            l.strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("response body");
    String::from_utf8_lossy(&body).into_owned()
}

/// Writes one client frame (masked unless `masked` is false) with FIN set.
pub fn write_raw_frame(stream: &mut TcpStream, opcode: u8, payload: &[u8], masked: bool) {
    stream
        .write_all(&raw_frame(true, opcode, payload, masked))
        .expect("write frame");
}

/// One client frame as bytes.
pub fn raw_frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => frame.push(mask_bit | n as u8),
        n if n < 65536 => {
            frame.push(mask_bit | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(mask_bit | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x12, 0x34, 0x56, 0x78];
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        frame.extend_from_slice(payload);
    }
    frame
}

/// Reads one server frame (unmasked): opcode and payload; `None` at EOF or reset.
pub fn read_raw_frame(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).ok()?;
    let opcode = head[0] & 0x0f;
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            stream.read_exact(&mut b).ok()?;
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            stream.read_exact(&mut b).ok()?;
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
    let mut payload = vec![0u8; len as usize];
    stream.read_exact(&mut payload).ok()?;
    Some((opcode, payload))
}

/// Reads raw frames until a close frame; returns its code (`None`: the connection ended
/// without one). Data frames before it are skipped.
pub fn raw_close_code(stream: &mut TcpStream) -> Option<u16> {
    while let Some((opcode, payload)) = read_raw_frame(stream) {
        if opcode == 0x8 {
            return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// The WebSocket client

/// One thing read from a connection.
#[derive(Debug)]
pub enum Frame {
    Json(Value),
    Binary(Vec<u8>),
    /// A text frame that is not JSON (the echo endpoint).
    Text(String),
    Pong(Vec<u8>),
    /// An RFC ping from the server (PROTOCOL.md: the server sends none on /ws).
    Ping(Vec<u8>),
    /// A close frame and its code (`None`: no code).
    Close(Option<u16>),
    /// The TCP connection ended (or was reset) without a close frame.
    Ended,
}

pub struct Client {
    pub ws: WebSocket<TcpStream>,
    /// The `welcome` of an IM connection (`Null` on /echo).
    pub welcome: Value,
    closed: bool,
}

/// Opens a WebSocket to `path` (with its query) with extra request headers.
pub fn ws_open(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<
    (
        WebSocket<TcpStream>,
        tungstenite::handshake::client::Response,
    ),
    String,
> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    ws_open_on(stream, addr, path, headers)
}

/// [`ws_open`] over a socket already connected to `addr`.
pub fn ws_open_on(
    stream: TcpStream,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<
    (
        WebSocket<TcpStream>,
        tungstenite::handshake::client::Response,
    ),
    String,
> {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut request = format!("ws://{addr}{path}")
        .into_client_request()
        .map_err(|e| format!("request: {e}"))?;
    for (name, value) in headers {
        let name = tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        request
            .headers_mut()
            .insert(name, HeaderValue::from_str(value).unwrap());
    }
    tungstenite::client::client(request, stream).map_err(|e| match e {
        tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response)) => {
            format!("http {}", response.status().as_u16())
        }
        other => format!("handshake: {other}"),
    })
}

/// A TCP connection to `addr` (IPv4) whose receive buffer is set to `rcvbuf` bytes
/// *before* connecting, so the window it advertises is small from the start: what a
/// client on a real network looks like to the server, where loopback's huge autotuned
/// buffers would otherwise swallow any burst.
pub fn connect_with_rcvbuf(addr: SocketAddr, rcvbuf: usize) -> TcpStream {
    connect_with_options(
        addr,
        &[(libc::SOL_SOCKET, libc::SO_RCVBUF, rcvbuf as libc::c_int)],
    )
}

/// A TCP connection to `addr` (IPv4) with socket options `(level, name, value)` set before
/// the connect, when they shape the connection (buffer sizes, the maximum segment).
pub fn connect_with_options(
    addr: SocketAddr,
    options: &[(libc::c_int, libc::c_int, libc::c_int)],
) -> TcpStream {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 only: {addr}")
    };
    // SAFETY: plain socket calls on a descriptor we create and then hand to TcpStream,
    // which owns (and closes) it from then on; the pointers are to live locals.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket");
        for &(level, name, value) in options {
            let rc = libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            assert_eq!(rc, 0, "setsockopt {level}/{name}");
        }
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
        TcpStream::from_raw_fd(fd)
    }
}

impl Client {
    /// An IM connection for `user` with the token in `?token=`; reads the `welcome`.
    pub fn connect(addr: SocketAddr, user: &str) -> Client {
        let path = format!("/ws?token={}", token(user));
        let client = Client::open(addr, &path, &[]);
        client.welcomed(user)
    }

    /// An IM connection for `user` over a socket with a small receive buffer (see
    /// [`connect_with_rcvbuf`]); reads the `welcome`.
    pub fn connect_small_window(addr: SocketAddr, user: &str, rcvbuf: usize) -> Client {
        let path = format!("/ws?token={}", token(user));
        let stream = connect_with_rcvbuf(addr, rcvbuf);
        let (ws, _) =
            ws_open_on(stream, addr, &path, &[]).unwrap_or_else(|e| panic!("{path}: {e}"));
        let client = Client {
            ws,
            welcome: Value::Null,
            closed: false,
        };
        client.welcomed(user)
    }

    /// Opens any WebSocket endpoint without reading anything.
    pub fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Client {
        let (ws, _) = ws_open(addr, path, headers).unwrap_or_else(|e| panic!("{path}: {e}"));
        Client {
            ws,
            welcome: Value::Null,
            closed: false,
        }
    }

    /// Reads the `welcome` and checks it names `user`.
    pub fn welcomed(mut self, user: &str) -> Client {
        let welcome = self.expect("welcome");
        assert_eq!(
            welcome["user"], user,
            "welcome names the token's user: {welcome}"
        );
        self.welcome = welcome;
        self
    }

    pub fn send(&mut self, value: Value) {
        self.send_text(&value.to_string());
    }

    /// Sends `request` with `rid` and returns its one reply, and what arrived before it
    /// (pushes, relays, presence), in order.
    pub fn call(&mut self, mut request: Value, rid: &str) -> (Value, Vec<Value>) {
        request["rid"] = json!(rid);
        self.send(request);
        let mut before = Vec::new();
        loop {
            let value = self.next_json();
            if value["rid"] == rid {
                return (value, before);
            }
            before.push(value);
        }
    }

    pub fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.to_owned()))
            .expect("send text frame");
    }

    /// Writes without flushing (pipelining many requests into few TCP segments).
    pub fn queue(&mut self, value: Value) {
        self.ws
            .write(Message::Text(value.to_string()))
            .expect("queue text frame");
    }

    pub fn flush(&mut self) {
        self.ws.flush().expect("flush");
    }

    /// [`queue`](Self::queue) for a connection that may be dead (a test that kills the
    /// server): false instead of a failed test.
    pub fn try_queue(&mut self, value: Value) -> bool {
        !self.closed && self.ws.write(Message::Text(value.to_string())).is_ok()
    }

    /// [`flush`](Self::flush), false when the connection is dead.
    pub fn try_flush(&mut self) -> bool {
        !self.closed && self.ws.flush().is_ok()
    }

    /// An RFC 6455 ping frame (not the app-level `ping`).
    pub fn send_rfc_ping(&mut self, payload: &[u8]) {
        self.ws
            .send(Message::Ping(payload.to_vec()))
            .expect("send ping frame");
    }

    pub fn send_binary(&mut self, bytes: &[u8]) {
        self.ws
            .send(Message::Binary(bytes.to_vec()))
            .expect("send binary frame");
    }

    /// A `send` request: a text message from this connection to `user:<to>`.
    pub fn send_msg(&mut self, to: &str, cid: &str, body: &str) {
        self.send(json!({"type": "send", "cid": cid, "to": format!("user:{to}"), "body": body}));
    }

    /// The next frame within `timeout`; `None` if nothing arrived in time.
    pub fn recv(&mut self, timeout: Duration) -> Option<Frame> {
        if self.closed {
            return Some(Frame::Ended);
        }
        let timeout = timeout.max(Duration::from_millis(1));
        self.ws.get_ref().set_read_timeout(Some(timeout)).unwrap();
        let result = self.ws.read();
        self.ws.get_ref().set_read_timeout(Some(WAIT)).unwrap();
        let message = match result {
            Ok(message) => message,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(_) => {
                self.closed = true;
                return Some(Frame::Ended);
            }
        };
        Some(match message {
            Message::Text(text) => match serde_json::from_str(&text) {
                Ok(value) => Frame::Json(value),
                Err(_) => Frame::Text(text),
            },
            Message::Binary(bytes) => Frame::Binary(bytes),
            Message::Pong(bytes) => Frame::Pong(bytes),
            Message::Ping(bytes) => {
                // tungstenite queued the pong; send it on its way.
                let _ = self.ws.flush();
                Frame::Ping(bytes)
            }
            Message::Close(frame) => {
                // Answer the close (tungstenite queued the reply) so the server can finish.
                let _ = self.ws.flush();
                Frame::Close(frame.map(|f| u16::from(f.code)))
            }
            Message::Frame(_) => unreachable!("raw frames are not surfaced when reading"),
        })
    }

    /// The next JSON message; fails the test on a timeout, a close or anything else.
    pub fn next_json(&mut self) -> Value {
        self.next_json_within(WAIT)
    }

    pub fn next_json_within(&mut self, timeout: Duration) -> Value {
        match self.recv(timeout) {
            Some(Frame::Json(value)) => value,
            other => panic!("expected a JSON message within {timeout:?}, got {other:?}"),
        }
    }

    /// The next message, which must be of type `ty`.
    pub fn expect(&mut self, ty: &str) -> Value {
        let value = self.next_json();
        assert_eq!(value["type"], ty, "expected a `{ty}`, got {value}");
        value
    }

    /// Asserts that nothing at all arrives for `quiet`.
    pub fn expect_silence(&mut self, quiet: Duration) {
        let deadline = Instant::now() + quiet;
        let left = deadline.saturating_duration_since(Instant::now());
        if let Some(frame) = self.recv(left) {
            panic!("expected silence for {quiet:?}, got {frame:?}");
        }
    }

    /// Reads until the connection closes (within `within`), returning the JSON messages
    /// seen on the way (with their arrival times), the close code and when it came.
    /// Fails the test if the connection is still open at the deadline.
    pub fn until_close(
        &mut self,
        within: Duration,
    ) -> (Vec<(Instant, Value)>, Option<u16>, Instant) {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                None => panic!("still open after {within:?}; saw {}", summary(&seen)),
                Some(Frame::Json(value)) => seen.push((Instant::now(), value)),
                Some(Frame::Close(code)) => return (seen, code, Instant::now()),
                Some(Frame::Ended) => return (seen, None, Instant::now()),
                Some(other) => panic!(
                    "unexpected {other:?} before the close; saw {}",
                    summary(&seen)
                ),
            }
        }
    }

    /// The close code the server closes with (JSON messages on the way are skipped).
    pub fn expect_close(&mut self, within: Duration) -> Option<u16> {
        self.until_close(within).1
    }

    /// Asserts the connection is still usable: a `ping` with a rid gets its `pong`.
    pub fn assert_alive(&mut self) {
        self.send(json!({"type": "ping", "rid": "alive?"}));
        let pong = self.expect("pong");
        assert_eq!(pong["rid"], "alive?");
    }

    /// One `sync` page: the `msg`s replayed, then the `synced`.
    pub fn sync_page(&mut self, after: u64, limit: Option<u32>) -> (Vec<Value>, Value) {
        let mut request = json!({"type": "sync", "after": after});
        if let Some(limit) = limit {
            request["limit"] = json!(limit);
        }
        self.send(request);
        let mut msgs = Vec::new();
        loop {
            let value = self.next_json();
            match value["type"].as_str() {
                Some("msg") => msgs.push(value),
                Some("synced") => return (msgs, value),
                _ => panic!("unexpected {value} during a sync"),
            }
        }
    }

    /// Syncs from `after` page by page until `more` is false; returns every entry and the
    /// last `synced`. Acks each page so nothing is re-pushed meanwhile.
    pub fn sync_all(&mut self, after: u64, limit: Option<u32>) -> (Vec<Value>, Value) {
        let mut all = Vec::new();
        let mut cursor = after;
        loop {
            let (msgs, synced) = self.sync_page(cursor, limit);
            all.extend(msgs);
            cursor = synced["seq"].as_u64().expect("synced.seq");
            self.send(json!({"type": "ack", "seq": cursor}));
            if synced["more"] != json!(true) {
                return (all, synced);
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if !self.closed {
            let _ = self.ws.close(None);
            let _ = self.ws.flush();
        }
    }
}

/// The seq of a message as a number.
pub fn seq(value: &Value) -> u64 {
    value["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("no numeric seq in {value}"))
}

pub fn mid(value: &Value) -> u64 {
    value["mid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no numeric mid in {value}"))
}

/// A short description of a run of messages (types and seqs, no bodies) for failures.
pub fn summary(seen: &[(Instant, Value)]) -> String {
    let items: Vec<String> = seen
        .iter()
        .map(|(_, v)| match v["seq"].as_u64() {
            Some(seq) => format!("{}#{seq}", v["type"].as_str().unwrap_or("?")),
            None => v["type"].as_str().unwrap_or("?").to_owned(),
        })
        .collect();
    format!("{} messages [{}]", items.len(), items.join(" "))
}
