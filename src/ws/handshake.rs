//! The opening handshake, server side (RFC 6455 §4.2), sans-IO.
//!
//! [`parse_request`] reads an HTTP/1.1 request head straight out of the caller's read buffer
//! (no copies, no allocation) and may be called again each time more bytes arrive.
//! [`Request::websocket`] checks the head against §4.2.1 and hands back what the reply needs;
//! [`write_accept`], [`write_rejection`] and [`write_response`] append the reply to the
//! caller's write buffer. Nothing here touches a socket or a clock.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha1::{Digest, Sha1};
use std::fmt;

/// The largest request head accepted, request line and blank line included. A browser's
/// upgrade request is well under 1 KiB even with cookies and a JWT in the query; 8 KiB is
/// the common server default (nginx, Node.js), so real clients never meet it, while a slow
/// or hostile client can never make a connection hold more than this before it is judged.
pub const MAX_HEAD: usize = 8192;

/// The most header lines accepted. The headers are copied into a fixed array inside
/// [`Request`] (32 bytes each), so this bounds its size; browsers send about 15.
pub const MAX_HEADERS: usize = 48;

/// The most `Sec-WebSocket-Protocol` header lines accepted. [`Upgrade`] keeps them in a
/// fixed array so it borrows only the read buffer, not the [`Request`] it came from.
/// Clients put every offer in one line; RFC 6455 §11.3.4 allows several lines, and past
/// this many the request is refused rather than silently losing offers.
pub const MAX_PROTOCOL_LINES: usize = 8;

/// RFC 6455 §1.3: the GUID the server appends to the client's key.
const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why a request head was refused. Each maps to one HTTP status ([`HandshakeError::status`]);
/// [`fmt::Display`] gives the short reason put in the response body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// The request line is not `METHOD SP target SP HTTP/1.x` (httparse's token/version errors).
    MalformedRequestLine,
    /// A header line has a bad name, a bad value byte or a bad line ending.
    MalformedHeader,
    /// The head is over [`MAX_HEAD`] bytes or has more than [`MAX_HEADERS`] header lines.
    HeadTooLarge,
    /// An upgrade must be a GET (§4.2.1 item 1).
    NotGet,
    /// An upgrade needs HTTP/1.1 or later (§4.2.1 item 1).
    BadHttpVersion,
    /// No `Host` header (§4.2.1 item 2; RFC 9112 §3.2).
    MissingHost,
    /// More than one `Host` header (RFC 9112 §3.2).
    DuplicateHost,
    /// No `Upgrade` header listing `websocket` (§4.2.1 item 3).
    NotWebSocketUpgrade,
    /// No `Connection` header listing `upgrade` (§4.2.1 item 4).
    MissingConnectionUpgrade,
    /// No `Sec-WebSocket-Key` header (§4.2.1 item 5).
    MissingKey,
    /// More than one `Sec-WebSocket-Key` header (§11.3.1: it MUST NOT appear more than once).
    DuplicateKey,
    /// `Sec-WebSocket-Key` is not the base64 of exactly 16 bytes (§4.2.1 item 5).
    BadKey,
    /// More than [`MAX_PROTOCOL_LINES`] `Sec-WebSocket-Protocol` header lines.
    TooManyProtocolLines,
    /// `Sec-WebSocket-Version` is missing or not `13` (§4.2.1 item 6, §4.4).
    UnsupportedVersion,
    /// A `Transfer-Encoding`, or a `Content-Length` other than 0: the upgrade announces a
    /// body. Nothing may follow an upgrade request's head but frames, so the body would be
    /// read as frames; a proxy in front that framed the request by its body would disagree
    /// with us about where the frames start (request smuggling).
    UpgradeWithBody,
    /// A `Content-Length` that is not a plain decimal, or more than one (RFC 9112 §6.3:
    /// the message's framing is then unknown, a 400).
    BadContentLength,
}

impl HandshakeError {
    /// The HTTP status to answer with.
    pub fn status(self) -> u16 {
        match self {
            HandshakeError::HeadTooLarge => 431,
            // §4.2.1 asks for a GET; for any other method on the WebSocket endpoint the HTTP
            // answer is 405 (RFC 9110 §15.5.6), which tells the client which method would
            // work (`Allow: GET`) where a bare 400 would not.
            HandshakeError::NotGet => 405,
            // §4.4: "send an appropriate HTTP error code (such as 426 Upgrade Required)".
            HandshakeError::UnsupportedVersion => 426,
            HandshakeError::MalformedRequestLine
            | HandshakeError::MalformedHeader
            | HandshakeError::BadHttpVersion
            | HandshakeError::MissingHost
            | HandshakeError::DuplicateHost
            | HandshakeError::NotWebSocketUpgrade
            | HandshakeError::MissingConnectionUpgrade
            | HandshakeError::MissingKey
            | HandshakeError::DuplicateKey
            | HandshakeError::BadKey
            | HandshakeError::TooManyProtocolLines
            | HandshakeError::UpgradeWithBody
            | HandshakeError::BadContentLength => 400,
        }
    }

    /// The short reason, as [`fmt::Display`] shows it.
    fn reason(self) -> &'static str {
        match self {
            HandshakeError::MalformedRequestLine => "malformed request line",
            HandshakeError::MalformedHeader => "malformed header",
            HandshakeError::HeadTooLarge => "request head too large",
            HandshakeError::NotGet => "websocket upgrade must use GET",
            HandshakeError::BadHttpVersion => "websocket upgrade needs HTTP/1.1",
            HandshakeError::MissingHost => "missing Host header",
            HandshakeError::DuplicateHost => "more than one Host header",
            HandshakeError::NotWebSocketUpgrade => "Upgrade header must include websocket",
            HandshakeError::MissingConnectionUpgrade => "Connection header must include upgrade",
            HandshakeError::MissingKey => "missing Sec-WebSocket-Key",
            HandshakeError::DuplicateKey => "more than one Sec-WebSocket-Key",
            HandshakeError::BadKey => "Sec-WebSocket-Key must be base64 of 16 bytes",
            HandshakeError::TooManyProtocolLines => "too many Sec-WebSocket-Protocol headers",
            HandshakeError::UnsupportedVersion => "Sec-WebSocket-Version must be 13",
            HandshakeError::UpgradeWithBody => "websocket upgrade must not have a body",
            HandshakeError::BadContentLength => "malformed or repeated Content-Length",
        }
    }

    fn from_httparse(e: httparse::Error) -> HandshakeError {
        match e {
            httparse::Error::TooManyHeaders => HandshakeError::HeadTooLarge,
            httparse::Error::HeaderName
            | httparse::Error::HeaderValue
            | httparse::Error::NewLine => HandshakeError::MalformedHeader,
            httparse::Error::Token | httparse::Error::Version | httparse::Error::Status => {
                HandshakeError::MalformedRequestLine
            }
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for HandshakeError {}

/// Parses a request head from the start of `buf`.
///
/// - `Ok(None)`: the head is not complete yet; nothing is consumed, call again with more.
/// - `Ok(Some((request, used)))`: `buf[..used]` is the head. Bytes after it are not part
///   of it: frames sent ahead of the 101. §4.1 tells a client to wait for the response,
///   but whether to decode or refuse such early bytes is the caller's call, so they are
///   left in place for it rather than dropped.
/// - `Err`: refuse the request ([`write_rejection`]) and close.
///
/// Each call parses from the start; the head is capped at [`MAX_HEAD`] bytes, so feeding a
/// byte at a time costs at most that many re-scans of at most 8 KiB.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request<'_>, usize)>, HandshakeError> {
    // Parse no more than MAX_HEAD bytes: a head that has not ended by then is too large
    // whatever follows, and a slow client's megabyte of junk is never scanned.
    let window = &buf[..buf.len().min(MAX_HEAD)];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(window).map_err(HandshakeError::from_httparse)? {
        httparse::Status::Partial if window.len() >= MAX_HEAD => Err(HandshakeError::HeadTooLarge),
        httparse::Status::Partial => Ok(None),
        httparse::Status::Complete(used) => {
            let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version)
            else {
                // httparse fills all three before it reports Complete.
                return Err(HandshakeError::MalformedRequestLine);
            };
            let mut request = Request {
                method,
                target,
                version,
                headers: [httparse::EMPTY_HEADER; MAX_HEADERS],
                len: req.headers.len(),
            };
            request.headers[..req.headers.len()].copy_from_slice(req.headers);
            Ok(Some((request, used)))
        }
    }
}

/// A parsed request head, borrowing the caller's buffer.
#[derive(Clone)]
pub struct Request<'a> {
    method: &'a str,
    target: &'a str,
    version: u8,
    headers: [httparse::Header<'a>; MAX_HEADERS],
    len: usize,
}

impl<'a> Request<'a> {
    /// The method as sent (methods are case-sensitive, RFC 9110 §9.1).
    pub fn method(&self) -> &'a str {
        self.method
    }

    /// The request target as sent: path and query, or the absolute form.
    pub fn target(&self) -> &'a str {
        self.target
    }

    /// The minor version of HTTP/1.x: 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The path without the query. An absolute-form target (`http://host/ws`), which
    /// servers must accept (RFC 9112 §3.2.2), is reduced to its path; an empty path is `/`.
    pub fn path(&self) -> &'a str {
        let t = origin_form(self.target);
        let p = t.split_once('?').map_or(t, |(p, _)| p);
        if p.is_empty() {
            "/"
        } else {
            p
        }
    }

    /// The raw value of the first `name=value` pair in the query whose name is exactly
    /// `name`; a pair without `=` has the value `""`.
    ///
    /// No percent-decoding: the one parameter the server reads is `token`, a JWT, whose
    /// alphabet (base64url and `.`) is all unreserved characters (RFC 3986 §2.3) that no
    /// client encodes. A caller that wants another parameter decoded does it itself.
    pub fn query_param(&self, name: &str) -> Option<&'a str> {
        let (_, query) = self.target.split_once('?')?;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }

    /// The value of the first header called `name`, compared case-insensitively
    /// (RFC 9110 §5.1); leading and trailing whitespace already trimmed by httparse.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers_named(name).next()
    }

    /// Every header line in order, as (name as sent, value).
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + '_ {
        self.headers[..self.len].iter().map(|h| (h.name, h.value))
    }

    /// Whether the client asked for a WebSocket upgrade. Such a request must go through
    /// [`Request::websocket`] and be accepted or refused as a handshake, never answered as
    /// a plain page: a client that asked to switch protocols and got a 200 would read the
    /// page as frames.
    pub fn is_websocket(&self) -> bool {
        self.header("upgrade").is_some() || self.header("sec-websocket-key").is_some()
    }

    /// Validates the request as a WebSocket opening handshake (§4.2.1) and returns what the
    /// 101 response needs. The server-side choices (which path, subprotocol and origin to
    /// accept, authentication) are the caller's.
    pub fn websocket(&self) -> Result<Upgrade<'a>, HandshakeError> {
        // §4.2.1 item 1: "An HTTP/1.1 or higher GET request".
        if self.method != "GET" {
            return Err(HandshakeError::NotGet);
        }
        if self.version < 1 {
            return Err(HandshakeError::BadHttpVersion);
        }
        // §4.2.1 item 2: "A |Host| header field containing the server's authority."
        // RFC 9112 §3.2: a server "MUST respond with a 400 ... to any HTTP/1.1 request
        // message that lacks a Host header field and to any that contains more than one".
        let mut hosts = self.headers_named("host");
        if hosts.next().is_none() {
            return Err(HandshakeError::MissingHost);
        }
        if hosts.next().is_some() {
            return Err(HandshakeError::DuplicateHost);
        }
        // Before the WebSocket checks: whatever else is wrong with it, a request whose
        // framing says a body follows must not have that body read as frames.
        self.no_body()?;
        // §4.2.1 item 3: "An |Upgrade| header field containing the value "websocket",
        // treated as an ASCII case-insensitive value."
        if !self.any_list_element("upgrade", b"websocket") {
            return Err(HandshakeError::NotWebSocketUpgrade);
        }
        // §4.2.1 item 4: "A |Connection| header field that includes the token "Upgrade",
        // treated as an ASCII case-insensitive value." Browsers send `keep-alive, Upgrade`.
        if !self.any_list_element("connection", b"upgrade") {
            return Err(HandshakeError::MissingConnectionUpgrade);
        }
        // Checked before the key: a client of an older draft (hybi-00 has no
        // Sec-WebSocket-Key) learns from the 426 which version to speak, where a 400 for
        // its key would tell it nothing.
        // §4.2.1 item 6: "A |Sec-WebSocket-Version| header field, with a value of 13."
        // §4.4: if the version is not understood the server "MUST abort the WebSocket
        // handshake ... and instead send an appropriate HTTP error code (such as 426
        // Upgrade Required) and a |Sec-WebSocket-Version| header field indicating the
        // version(s) the server is capable of understanding."
        // Several lines are read as one list (RFC 9110 §5.3); `13, 13` is not `13`.
        let mut versions = self.headers_named("sec-websocket-version");
        if versions.next() != Some(b"13") || versions.next().is_some() {
            return Err(HandshakeError::UnsupportedVersion);
        }
        // §4.2.1 item 5: "A |Sec-WebSocket-Key| header field with a base64-encoded (see
        // Section 4 of [RFC4648]) value that, when decoded, is 16 bytes in length."
        // §11.3.1: "The |Sec-WebSocket-Key| header field MUST NOT appear more than once in
        // an HTTP request."
        let mut keys = self.headers_named("sec-websocket-key");
        let key = keys.next().ok_or(HandshakeError::MissingKey)?;
        if keys.next().is_some() {
            return Err(HandshakeError::DuplicateKey);
        }
        if !is_valid_key(key) {
            return Err(HandshakeError::BadKey);
        }
        // §11.3.4: "The |Sec-WebSocket-Protocol| header field MAY appear multiple times in
        // an HTTP request (which is logically the same as a single ... header field that
        // contains all values)."
        let mut protocols = [&b""[..]; MAX_PROTOCOL_LINES];
        let mut protocol_lines = 0;
        for value in self.headers_named("sec-websocket-protocol") {
            let slot = protocols
                .get_mut(protocol_lines)
                .ok_or(HandshakeError::TooManyProtocolLines)?;
            *slot = value;
            protocol_lines += 1;
        }
        Ok(Upgrade {
            key,
            origin: self.header("origin"),
            protocols,
            protocol_lines,
        })
    }

    /// An upgrade is a GET with no body (§4.1 has the client send frames only after the
    /// 101). One that announces a body is refused, as nginx does, rather than having that
    /// body run as frames. `Content-Length: 0` announces none and passes.
    fn no_body(&self) -> Result<(), HandshakeError> {
        // Any value: `chunked`, `identity`, or one we do not know, all say "a body follows
        // framed some way", and RFC 9112 §6.1 has Transfer-Encoding override Content-Length.
        if self.headers_named("transfer-encoding").next().is_some() {
            return Err(HandshakeError::UpgradeWithBody);
        }
        let mut lengths = self.headers_named("content-length");
        let Some(length) = lengths.next() else {
            return Ok(());
        };
        // RFC 9110 §8.6: `Content-Length = 1*DIGIT`. A list (`0, 0`), a sign or a second
        // line is refused, not interpreted: framing nobody agrees on is the smuggler's tool.
        if lengths.next().is_some() || length.is_empty() || !length.iter().all(u8::is_ascii_digit) {
            return Err(HandshakeError::BadContentLength);
        }
        if length.iter().any(|&b| b != b'0') {
            return Err(HandshakeError::UpgradeWithBody);
        }
        Ok(())
    }

    /// Every value of the header lines called `name` (case-insensitive), in the order
    /// received: for fields a client may repeat, where the first line alone would let a
    /// proxy and this server disagree about the value.
    pub fn headers_named<'s>(
        &'s self,
        name: &'s str,
    ) -> impl DoubleEndedIterator<Item = &'a [u8]> + 's {
        self.headers[..self.len]
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// Whether any `name` header's comma-separated list holds `token` (ASCII
    /// case-insensitive). Lines are joined as one list (RFC 9110 §5.3).
    fn any_list_element(&self, name: &str, token: &[u8]) -> bool {
        self.headers_named(name)
            .flat_map(list_elements)
            .any(|t| t.eq_ignore_ascii_case(token))
    }
}

impl fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("target", &self.target)
            .field("version", &self.version)
            .field("headers", &&self.headers[..self.len])
            .finish()
    }
}

impl PartialEq for Request<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.method == other.method
            && self.target == other.target
            && self.version == other.version
            && self.headers[..self.len] == other.headers[..other.len]
    }
}

impl Eq for Request<'_> {}

/// A request that passed [`Request::websocket`]: what the 101 response and the server's
/// policy checks need. Borrows only the read buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upgrade<'a> {
    key: &'a [u8],
    origin: Option<&'a [u8]>,
    protocols: [&'a [u8]; MAX_PROTOCOL_LINES],
    protocol_lines: usize,
}

impl<'a> Upgrade<'a> {
    /// The `Sec-WebSocket-Key` as sent (trimmed): the input of [`accept_key`], which hashes
    /// the base64 text, not the decoded bytes (§4.2.2 item 5.4).
    pub fn key(&self) -> &'a [u8] {
        self.key
    }

    /// The offered subprotocols in the client's order of preference (§4.2.1 item 8),
    /// across every `Sec-WebSocket-Protocol` line, trimmed. Elements that are not HTTP
    /// tokens are skipped: the server may only echo a token it offered itself, so a
    /// malformed offer can only ever mean "not chosen".
    pub fn protocols(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.protocols[..self.protocol_lines]
            .iter()
            .copied()
            .flat_map(list_elements)
            .filter(|t| t.iter().all(|&b| is_tchar(b)))
            // Tokens are ASCII, so this never fails once the filter has passed.
            .filter_map(|t| std::str::from_utf8(t).ok())
    }

    /// The `Origin` header (first line), raw. Bytes, not `&str`: a value that is not UTF-8
    /// must still reach the allow-list check and fail it, not look like an absent Origin,
    /// which the server lets through (non-browser clients send none).
    pub fn origin(&self) -> Option<&'a [u8]> {
        self.origin
    }
}

/// `Sec-WebSocket-Accept` for a client's key: base64(SHA-1(key ++ GUID)) (§4.2.2 item 5.4).
pub fn accept_key(key: &[u8]) -> [u8; 28] {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(WS_GUID);
    let digest = sha.finalize();
    let mut out = [0u8; 28];
    // A 20-byte digest is always 28 base64 characters (with one `=`).
    let n = STANDARD
        .encode_slice(digest, &mut out)
        .expect("20 bytes encode to 28 base64 characters");
    debug_assert_eq!(n, out.len());
    out
}

/// Appends the 101 response accepting the handshake (§4.2.2 item 5). `protocol` is the
/// subprotocol the server chose from [`Upgrade::protocols`], if any; §4.2.2 item 5.5 forbids
/// naming one the client did not offer.
pub fn write_accept(out: &mut Vec<u8>, key: &[u8], protocol: Option<&str>) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\n\
          Upgrade: websocket\r\n\
          Connection: Upgrade\r\n\
          Sec-WebSocket-Accept: ",
    );
    out.extend_from_slice(&accept_key(key));
    out.extend_from_slice(b"\r\n");
    if let Some(p) = protocol {
        debug_assert!(p.bytes().all(is_tchar), "subprotocol must be a token");
        out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        out.extend_from_slice(p.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends a complete plain HTTP/1.1 response: status line, `Content-Type`,
/// `Content-Length`, `Connection: close` (the server never reuses a connection for a
/// second request: it serves a few small pages and upgrades), `extra_headers`, the body.
///
/// An extra header named `Connection` replaces the default one. Header names and values
/// are the caller's constants; they must not hold CR or LF.
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    reason: &str,
    content_type: &str,
    extra_headers: &[(&str, &str)],
    body: &[u8],
) {
    debug_assert!((100..1000).contains(&status));
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, status as usize);
    out.push(b' ');
    push_line(out, reason);
    push_header(out, "Content-Type", content_type);
    out.extend_from_slice(b"Content-Length: ");
    push_decimal(out, body.len());
    out.extend_from_slice(b"\r\n");
    if !extra_headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("connection"))
    {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    for (name, value) in extra_headers {
        push_header(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// Appends the response refusing a handshake: `err.status()`, the standard reason phrase,
/// and `err`'s reason as a one-line text body. The connection is to be closed after it.
pub fn write_rejection(out: &mut Vec<u8>, err: HandshakeError) {
    let status = err.status();
    let extra: &[(&str, &str)] = match err {
        // RFC 9110 §15.5.6: "The origin server MUST generate an Allow header field in a
        // 405 response containing a list of the target resource's currently supported
        // methods."
        HandshakeError::NotGet => &[("Allow", "GET")],
        // §4.4 (quoted in `websocket`): the 426 names the version the server speaks.
        // RFC 9110 §15.5.22: "The server MUST send an Upgrade header field in a 426
        // response", and §7.8: its sender "MUST also send an "upgrade" connection option".
        HandshakeError::UnsupportedVersion => &[
            ("Sec-WebSocket-Version", "13"),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade, close"),
        ],
        _ => &[],
    };
    // The reason plus a newline, assembled on the stack so the only allocation on this
    // path is the write buffer's own growth.
    let reason = err.reason().as_bytes();
    let mut body = [b'\n'; 64];
    let len = reason.len().min(body.len() - 1);
    body[..len].copy_from_slice(&reason[..len]);
    let body = &body[..=len];
    write_response(
        out,
        status,
        reason_phrase(status),
        "text/plain; charset=utf-8",
        extra,
        body,
    );
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    }
}

fn push_decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn push_line(out: &mut Vec<u8>, s: &str) {
    debug_assert!(!s.contains(['\r', '\n']), "CR/LF in a response header");
    out.extend_from_slice(s.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    push_line(out, value);
}

/// The elements of a comma-separated header list, with optional whitespace trimmed and
/// empty elements dropped (RFC 9110 §5.6.1: a recipient "MUST accept empty list elements").
fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|t| !t.is_empty())
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// §4.2.1 item 5: base64 (RFC 4648 §4, padded) of exactly 16 bytes. That is always 24
/// characters ending in `==`, so the length check turns away most bad keys before decoding.
fn is_valid_key(key: &[u8]) -> bool {
    let mut decoded = [0u8; 18];
    key.len() == 24 && matches!(STANDARD.decode_slice(key, &mut decoded), Ok(16))
}

/// The target reduced to origin-form: an absolute-form target (`http://host/p?q`) loses
/// its scheme and authority, which may leave an empty path (`?q` or ``).
fn origin_form(target: &str) -> &str {
    if target.starts_with('/') {
        return target;
    }
    match target.split_once("://") {
        Some((_, rest)) => &rest[rest.find(['/', '?']).unwrap_or(rest.len())..],
        None => target,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request of RFC 6455 §1.2, with the version line §4.1 requires.
    const RFC_REQUEST: &str = "GET /chat HTTP/1.1\r\n\
        Host: server.example.com\r\n\
        Upgrade: websocket\r\n\
        Connection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Origin: http://example.com\r\n\
        Sec-WebSocket-Protocol: chat, superchat\r\n\
        Sec-WebSocket-Version: 13\r\n\
        \r\n";

    fn parse(s: &str) -> Request<'_> {
        let (req, used) = parse_request(s.as_bytes())
            .expect("parses")
            .expect("complete");
        assert_eq!(used, s.len());
        req
    }

    fn upgrade(s: &str) -> Result<Upgrade<'_>, HandshakeError> {
        parse(s).websocket()
    }

    /// [`RFC_REQUEST`] with its `name` header line replaced by `lines` (zero, one or
    /// several lines), or `lines` added at the end when it has no such header.
    fn with(name: &str, lines: &str) -> String {
        let mut out = String::new();
        let mut replaced = false;
        for l in RFC_REQUEST.split_inclusive("\r\n") {
            if l.to_ascii_lowercase()
                .starts_with(&format!("{}:", name.to_ascii_lowercase()))
            {
                if !replaced {
                    out.push_str(lines);
                    replaced = true;
                }
            } else if l == "\r\n" {
                if !replaced {
                    out.push_str(lines);
                }
                out.push_str(l);
            } else {
                out.push_str(l);
            }
        }
        out
    }

    fn without(name: &str) -> String {
        with(name, "")
    }

    fn rejection(err: HandshakeError) -> String {
        let mut out = Vec::new();
        write_rejection(&mut out, err);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn accept_key_matches_rfc_sample() {
        // §1.3: for the key "dGhlIHNhbXBsZSBub25jZQ==" the server "would then take the
        // base64-encoded value of this hash, which is s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".
        assert_eq!(
            &accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn valid_upgrade_is_accepted() {
        let req = parse(RFC_REQUEST);
        assert!(req.is_websocket());
        assert_eq!(req.method(), "GET");
        assert_eq!(req.target(), "/chat");
        assert_eq!(req.path(), "/chat");
        assert_eq!(req.version(), 1);
        assert_eq!(req.header("HOST"), Some(&b"server.example.com"[..]));
        assert_eq!(req.headers().count(), 7);
        let up = req.websocket().unwrap();
        assert_eq!(up.key(), b"dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(up.origin(), Some(&b"http://example.com"[..]));
    }

    #[test]
    fn accept_response_is_rfc_101() {
        // §4.2.2 item 5: "1. A Status-Line with a 101 response code", "2. An |Upgrade|
        // header field with value "websocket"", "3. A |Connection| header field with value
        // "Upgrade"", "4. A |Sec-WebSocket-Accept| header field".
        let mut out = Vec::new();
        write_accept(&mut out, b"dGhlIHNhbXBsZSBub25jZQ==", Some("chat"));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 101 Switching Protocols\r\n\
             Upgrade: websocket\r\n\
             Connection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
             Sec-WebSocket-Protocol: chat\r\n\
             \r\n"
        );
        let mut out = Vec::new();
        write_accept(&mut out, b"dGhlIHNhbXBsZSBub25jZQ==", None);
        assert!(!String::from_utf8(out)
            .unwrap()
            .contains("Sec-WebSocket-Protocol"));
    }

    #[test]
    fn byte_at_a_time_is_none_until_last_byte() {
        let bytes = RFC_REQUEST.as_bytes();
        for end in 0..bytes.len() {
            assert_eq!(
                parse_request(&bytes[..end]),
                Ok(None),
                "prefix of {end} bytes"
            );
        }
        assert_eq!(
            parse_request(bytes),
            Ok(Some((parse(RFC_REQUEST), bytes.len())))
        );
    }

    #[test]
    fn pipelined_bytes_after_head_are_not_consumed() {
        // §4.1: "the client MUST wait for a response from the server before sending any
        // further data" -- but a client that does not must not have its frames read as
        // part of the head or silently dropped.
        // A masked text frame "Hello" (the §5.7 example) right behind the head.
        let mut wire = RFC_REQUEST.as_bytes().to_vec();
        wire.extend_from_slice(b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58");
        let (req, used) = parse_request(&wire).unwrap().unwrap();
        assert_eq!(used, RFC_REQUEST.len());
        assert!(req.websocket().is_ok());
    }

    #[test]
    fn head_over_8k_is_431() {
        // Incomplete and already at the limit: no point waiting for the rest.
        let mut wire = String::from("GET /ws HTTP/1.1\r\nHost: a\r\nX-Pad: ");
        wire.push_str(&"a".repeat(MAX_HEAD - wire.len()));
        assert_eq!(
            parse_request(wire.as_bytes()),
            Err(HandshakeError::HeadTooLarge)
        );
        assert_eq!(parse_request(&wire.as_bytes()[..MAX_HEAD - 1]), Ok(None));
        // Complete, but one byte over.
        let mut big = String::from("GET /ws HTTP/1.1\r\nHost: a\r\nX-Pad: ");
        big.push_str(&"a".repeat(MAX_HEAD - big.len() - 3));
        big.push_str("\r\n\r\n");
        assert_eq!(big.len(), MAX_HEAD + 1);
        assert_eq!(
            parse_request(big.as_bytes()),
            Err(HandshakeError::HeadTooLarge)
        );
        // Exactly at the limit is fine.
        let fits = &big[..big.len() - 5];
        let fits = format!("{fits}\r\n\r\n");
        assert_eq!(fits.len(), MAX_HEAD);
        assert_eq!(parse_request(fits.as_bytes()).unwrap().unwrap().1, MAX_HEAD);
        assert_eq!(HandshakeError::HeadTooLarge.status(), 431);
        assert!(rejection(HandshakeError::HeadTooLarge)
            .starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
    }

    #[test]
    fn too_many_headers_is_431() {
        let mut wire = String::from("GET /ws HTTP/1.1\r\n");
        for i in 0..MAX_HEADERS {
            wire.push_str(&format!("X-{i}: v\r\n"));
        }
        let fits = format!("{wire}\r\n");
        assert_eq!(parse(&fits).headers().count(), MAX_HEADERS);
        // Refused as soon as the extra line starts, complete or not.
        wire.push_str("X-Extra: v\r\n");
        assert_eq!(
            parse_request(wire.as_bytes()),
            Err(HandshakeError::HeadTooLarge)
        );
    }

    #[test]
    fn connection_token_list_includes_upgrade() {
        // §4.2.1 item 4: "A |Connection| header field that includes the token "Upgrade",
        // treated as an ASCII case-insensitive value."
        assert!(upgrade(&with("connection", "Connection: keep-alive, Upgrade\r\n")).is_ok());
        assert!(upgrade(&with("connection", "Connection: Upgrade,keep-alive\r\n")).is_ok());
        assert!(upgrade(&with(
            "connection",
            "Connection:\tkeep-alive ,\t upgrade \r\n"
        ))
        .is_ok());
        assert!(upgrade(&with(
            "connection",
            "Connection: keep-alive\r\nConnection: Upgrade\r\n"
        ))
        .is_ok());
        assert_eq!(
            upgrade(&with("connection", "Connection: keep-alive\r\n")).unwrap_err(),
            HandshakeError::MissingConnectionUpgrade
        );
        assert_eq!(
            upgrade(&with("connection", "Connection: upgrades\r\n")).unwrap_err(),
            HandshakeError::MissingConnectionUpgrade
        );
        assert_eq!(
            upgrade(&without("connection")).unwrap_err(),
            HandshakeError::MissingConnectionUpgrade
        );
    }

    #[test]
    fn upgrade_and_connection_tokens_are_case_insensitive() {
        // §4.2.1 items 3 and 4: "treated as an ASCII case-insensitive value."
        let wire = with("upgrade", "upgrade: WebSocket\r\n");
        let wire = wire.replace("Connection: Upgrade", "CONNECTION: UPGRADE");
        assert!(upgrade(&wire).is_ok());
    }

    #[test]
    fn upgrade_header_must_include_websocket() {
        // §4.2.1 item 3: "An |Upgrade| header field containing the value "websocket"".
        assert!(upgrade(&with("upgrade", "Upgrade: h2c, websocket\r\n")).is_ok());
        assert_eq!(
            upgrade(&with("upgrade", "Upgrade: h2c\r\n")).unwrap_err(),
            HandshakeError::NotWebSocketUpgrade
        );
        assert_eq!(
            upgrade(&without("upgrade")).unwrap_err(),
            HandshakeError::NotWebSocketUpgrade
        );
    }

    #[test]
    fn key_must_decode_to_16_bytes() {
        // §4.2.1 item 5: "A |Sec-WebSocket-Key| header field with a base64-encoded ...
        // value that, when decoded, is 16 bytes in length."
        // 15 bytes: "AAECAwQFBgcICQoLDA0O"; 17 bytes: "AAECAwQFBgcICQoLDA0ODxA=".
        let k15 = with(
            "sec-websocket-key",
            "Sec-WebSocket-Key: AAECAwQFBgcICQoLDA0O\r\n",
        );
        let k17 = with(
            "sec-websocket-key",
            "Sec-WebSocket-Key: AAECAwQFBgcICQoLDA0ODxA=\r\n",
        );
        let k16 = with(
            "sec-websocket-key",
            "Sec-WebSocket-Key: AAECAwQFBgcICQoLDA0ODw==\r\n",
        );
        let not_b64 = with(
            "sec-websocket-key",
            "Sec-WebSocket-Key: AAECAwQFBgcICQoLDA0OD!==\r\n",
        );
        assert_eq!(upgrade(&k15).unwrap_err(), HandshakeError::BadKey);
        assert_eq!(upgrade(&k17).unwrap_err(), HandshakeError::BadKey);
        assert_eq!(upgrade(&not_b64).unwrap_err(), HandshakeError::BadKey);
        assert_eq!(upgrade(&k16).unwrap().key(), b"AAECAwQFBgcICQoLDA0ODw==");
    }

    #[test]
    fn key_must_be_present_exactly_once() {
        // §11.3.1: "The |Sec-WebSocket-Key| header field MUST NOT appear more than once in
        // an HTTP request."
        assert_eq!(
            upgrade(&without("sec-websocket-key")).unwrap_err(),
            HandshakeError::MissingKey
        );
        let twice = with(
            "sec-websocket-key",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Key: AAECAwQFBgcICQoLDA0ODw==\r\n",
        );
        assert_eq!(upgrade(&twice).unwrap_err(), HandshakeError::DuplicateKey);
    }

    #[test]
    fn version_other_than_13_is_426_with_version_header() {
        // §4.4: the server "MUST abort the WebSocket handshake ... and instead send an
        // appropriate HTTP error code (such as 426 Upgrade Required) and a
        // |Sec-WebSocket-Version| header field indicating the version(s) the server is
        // capable of understanding."
        let v8 = with("sec-websocket-version", "Sec-WebSocket-Version: 8\r\n");
        let err = upgrade(&v8).unwrap_err();
        assert_eq!(err, HandshakeError::UnsupportedVersion);
        assert_eq!(err.status(), 426);
        let wire = rejection(err);
        assert!(
            wire.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
            "{wire}"
        );
        assert!(wire.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{wire}");
        // RFC 9110 §15.5.22 / §7.8: a 426 names the protocol in Upgrade, flagged in
        // Connection; the connection still closes.
        assert!(wire.contains("\r\nUpgrade: websocket\r\n"), "{wire}");
        assert!(
            wire.contains("\r\nConnection: Upgrade, close\r\n"),
            "{wire}"
        );
        assert_eq!(wire.matches("Connection:").count(), 1, "{wire}");
        assert!(
            wire.ends_with("\r\n\r\nSec-WebSocket-Version must be 13\n"),
            "{wire}"
        );
        assert_eq!(
            upgrade(&without("sec-websocket-version")).unwrap_err(),
            HandshakeError::UnsupportedVersion
        );
        let twice = with(
            "sec-websocket-version",
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Version: 8\r\n",
        );
        assert_eq!(
            upgrade(&twice).unwrap_err(),
            HandshakeError::UnsupportedVersion
        );
    }

    #[test]
    fn upgrade_must_be_get() {
        // §4.2.1 item 1: "An HTTP/1.1 or higher GET request". RFC 9110 §15.5.6: "The
        // origin server MUST generate an Allow header field in a 405 response".
        let post = RFC_REQUEST.replacen("GET", "POST", 1);
        let req = parse(&post);
        assert!(req.is_websocket());
        let err = req.websocket().unwrap_err();
        assert_eq!(err, HandshakeError::NotGet);
        let wire = rejection(err);
        assert!(
            wire.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{wire}"
        );
        assert!(wire.contains("\r\nAllow: GET\r\n"), "{wire}");
        // Methods are case-sensitive (RFC 9110 §9.1).
        let lower = RFC_REQUEST.replacen("GET", "get", 1);
        assert_eq!(upgrade(&lower).unwrap_err(), HandshakeError::NotGet);
    }

    #[test]
    fn upgrade_needs_http_1_1() {
        // §4.2.1 item 1: "the HTTP version MUST be at least 1.1" (§4.1 wording).
        let old = RFC_REQUEST.replacen("HTTP/1.1", "HTTP/1.0", 1);
        assert_eq!(upgrade(&old).unwrap_err(), HandshakeError::BadHttpVersion);
        assert!(
            rejection(HandshakeError::BadHttpVersion).starts_with("HTTP/1.1 400 Bad Request\r\n")
        );
        // There is no HTTP/1.2; anything else is not a request line.
        let junk = RFC_REQUEST.replacen("HTTP/1.1", "HTTP/2.0", 1);
        assert_eq!(
            parse_request(junk.as_bytes()),
            Err(HandshakeError::MalformedRequestLine)
        );
    }

    #[test]
    fn host_must_be_present_once() {
        // §4.2.1 item 2: "A |Host| header field containing the server's authority."
        // RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status code to any
        // HTTP/1.1 request message that lacks a Host header field and to any that contains
        // more than one Host header field line".
        assert_eq!(
            upgrade(&without("host")).unwrap_err(),
            HandshakeError::MissingHost
        );
        let twice = with("host", "Host: a.example\r\nHost: b.example\r\n");
        assert_eq!(upgrade(&twice).unwrap_err(), HandshakeError::DuplicateHost);
    }

    #[test]
    fn plain_get_is_not_websocket() {
        let req = parse("GET /index.html HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n");
        assert!(!req.is_websocket());
        assert_eq!(
            req.websocket().unwrap_err(),
            HandshakeError::NotWebSocketUpgrade
        );
        // A key alone is still an attempted handshake, to be refused as one.
        let key_only = parse(
            "GET /ws HTTP/1.1\r\nHost: example.com\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        );
        assert!(key_only.is_websocket());
    }

    #[test]
    fn protocols_are_listed_in_offer_order() {
        // §4.2.1 item 8: "a list of values indicating which protocols the client would like
        // to speak, ordered by preference." §11.3.4: several lines are one list.
        let up = upgrade(RFC_REQUEST).unwrap();
        assert_eq!(up.protocols().collect::<Vec<_>>(), ["chat", "superchat"]);
        let split = with(
            "sec-websocket-protocol",
            "Sec-WebSocket-Protocol: courier.v1 ,, \tx\r\nSec-WebSocket-Protocol: y, b@d\r\n",
        );
        let up = upgrade(&split).unwrap();
        assert_eq!(up.protocols().collect::<Vec<_>>(), ["courier.v1", "x", "y"]);
        let none = without("sec-websocket-protocol");
        assert_eq!(upgrade(&none).unwrap().protocols().count(), 0);
        let many = with(
            "sec-websocket-protocol",
            &"Sec-WebSocket-Protocol: p\r\n".repeat(MAX_PROTOCOL_LINES + 1),
        );
        assert_eq!(
            upgrade(&many).unwrap_err(),
            HandshakeError::TooManyProtocolLines
        );
    }

    #[test]
    fn query_param_returns_raw_value() {
        let req = parse("GET /ws?x=1&token=eyJ.abc-_.s1g&flag&x=2 HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(req.path(), "/ws");
        assert_eq!(req.query_param("token"), Some("eyJ.abc-_.s1g"));
        assert_eq!(req.query_param("x"), Some("1"));
        assert_eq!(req.query_param("flag"), Some(""));
        assert_eq!(req.query_param("tok"), None);
        assert_eq!(
            parse("GET /ws HTTP/1.1\r\nHost: a\r\n\r\n").query_param("token"),
            None
        );
    }

    #[test]
    fn absolute_form_target_gives_path() {
        // RFC 9112 §3.2.2: "A server MUST accept the absolute-form in requests".
        let req = parse("GET http://example.com/ws?token=t HTTP/1.1\r\nHost: example.com\r\n\r\n");
        assert_eq!(req.path(), "/ws");
        assert_eq!(req.query_param("token"), Some("t"));
        let bare = parse("GET http://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n");
        assert_eq!(bare.path(), "/");
    }

    #[test]
    fn an_upgrade_with_a_body_is_400() {
        use HandshakeError::{BadContentLength, UpgradeWithBody};
        // No body announced: accepted, whatever the spelling of zero.
        for lines in ["Content-Length: 0\r\n", "content-length: 000\r\n"] {
            assert!(upgrade(&with("content-length", lines)).is_ok(), "{lines}");
        }
        let cases = [
            ("Content-Length: 1\r\n", UpgradeWithBody),
            ("Content-Length: 18\r\n", UpgradeWithBody),
            ("Content-Length: 0001\r\n", UpgradeWithBody),
            (
                "Content-Length: 99999999999999999999999999\r\n",
                UpgradeWithBody,
            ),
            ("Transfer-Encoding: chunked\r\n", UpgradeWithBody),
            ("transfer-encoding: identity\r\n", UpgradeWithBody),
            ("Transfer-Encoding: \r\n", UpgradeWithBody),
            (
                "Transfer-Encoding: chunked\r\nContent-Length: 0\r\n",
                UpgradeWithBody,
            ),
            ("Content-Length: \r\n", BadContentLength),
            ("Content-Length: -1\r\n", BadContentLength),
            ("Content-Length: +5\r\n", BadContentLength),
            ("Content-Length: 0x10\r\n", BadContentLength),
            ("Content-Length: 0, 0\r\n", BadContentLength),
            ("Content-Length: 1 2\r\n", BadContentLength),
            (
                "Content-Length: 0\r\nContent-Length: 0\r\n",
                BadContentLength,
            ),
            (
                "Content-Length: 0\r\nContent-Length: 5\r\n",
                BadContentLength,
            ),
        ];
        for (lines, expected) in cases {
            let request = with("content-length", lines);
            assert_eq!(upgrade(&request), Err(expected), "{lines:?}");
            assert_eq!(expected.status(), 400);
        }
        // The wire answer names the fault in a line.
        let wire = rejection(UpgradeWithBody);
        assert!(wire.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{wire}");
        assert!(wire.ends_with("\r\n\r\nwebsocket upgrade must not have a body\n"));
        // A plain GET with a body is not an upgrade: its answer is the service's business.
        let plain = parse("GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n");
        assert!(!plain.is_websocket());
    }

    #[test]
    fn malformed_heads_are_400() {
        assert_eq!(
            parse_request(b"GET /ws HTTP/1.1\r\nBad Header: x\r\n\r\n"),
            Err(HandshakeError::MalformedHeader)
        );
        assert_eq!(
            parse_request(b"GET /w s HTTP/1.1\r\n\r\n"),
            Err(HandshakeError::MalformedRequestLine)
        );
        // Refused before the head ends: no need to wait for the rest of garbage.
        assert_eq!(
            parse_request(b"\x16\x03\x01\x02\x00\x01\x00"),
            Err(HandshakeError::MalformedRequestLine)
        );
        assert_eq!(HandshakeError::MalformedHeader.status(), 400);
    }

    #[test]
    fn plain_response_has_length_and_close() {
        let mut out = Vec::new();
        write_response(
            &mut out,
            200,
            "OK",
            "text/plain",
            &[("Cache-Control", "no-store")],
            b"ok\n",
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\n\
             Content-Type: text/plain\r\n\
             Content-Length: 3\r\n\
             Connection: close\r\n\
             Cache-Control: no-store\r\n\
             \r\n\
             ok\n"
        );
    }

    #[test]
    fn every_rejection_states_its_status_and_reason() {
        use HandshakeError::*;
        for err in [
            MalformedRequestLine,
            MalformedHeader,
            HeadTooLarge,
            NotGet,
            BadHttpVersion,
            MissingHost,
            DuplicateHost,
            NotWebSocketUpgrade,
            MissingConnectionUpgrade,
            MissingKey,
            DuplicateKey,
            BadKey,
            TooManyProtocolLines,
            UnsupportedVersion,
            UpgradeWithBody,
            BadContentLength,
        ] {
            let wire = rejection(err);
            let body = format!("{err}\n");
            assert!(
                wire.starts_with(&format!("HTTP/1.1 {} ", err.status())),
                "{wire}"
            );
            assert_ne!(reason_phrase(err.status()), "Error");
            assert!(wire.ends_with(&format!("\r\n\r\n{body}")), "{wire}");
            assert!(
                wire.contains(&format!("\r\nContent-Length: {}\r\n", body.len())),
                "{wire}"
            );
        }
    }
}
