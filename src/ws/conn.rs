//! One WebSocket connection after the handshake, sans-IO: the caller hands in the bytes it
//! read and gets back whole messages; replies the protocol requires (pong, the close echo,
//! the close that fails a connection) are appended to the caller's output buffer.
//!
//! Payload bytes are unmasked in place in the caller's read buffer. A message that fits
//! in one frame already present in that buffer is handed out as a slice of it with no
//! copy; only fragmented messages and frames split across reads are assembled in the
//! connection's own buffer, which is released when the connection goes idle.

use super::frame::{self, close_code, FrameHeader, OpCode, ProtocolError, Role, MAX_HEADER_LEN};
use super::mask;
use super::utf8::Utf8Validator;

/// What a connection hands to its owner.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete text message, already checked to be UTF-8.
    Text(&'a [u8]),
    /// A complete binary message.
    Binary(&'a [u8]),
    /// The close handshake is complete (the peer's close is answered, or the peer answered
    /// ours). The owner flushes its output and closes TCP: §7.1.1 "the server SHOULD close
    /// the underlying TCP connection first". `None` when the peer sent no status code.
    Closed(Option<u16>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Open,
    /// We sent a close and wait for the peer's (§7.1.2); data still arriving is dropped.
    CloseSent,
    /// Nothing more is read or written at the WebSocket level.
    Closed,
}

/// The frame whose payload is being received.
#[derive(Clone, Copy, Debug)]
struct InFrame {
    opcode: OpCode,
    fin: bool,
    mask: Option<[u8; 4]>,
    /// Payload bytes still to come.
    remaining: u64,
    /// Payload bytes seen so far (the mask's phase).
    seen: u64,
    /// Where a buffered control payload starts in `buf` (after any message in progress).
    control_start: usize,
}

#[derive(Debug)]
pub struct Conn {
    role: Role,
    state: State,
    max_message: usize,
    /// A header split across reads; at most 14 bytes, so it lives inline.
    head: [u8; MAX_HEADER_LEN],
    head_len: u8,
    frame: Option<InFrame>,
    /// The data opcode of the message being received, from its first frame until its last.
    message: Option<OpCode>,
    /// Message assembly, followed by a control payload split across reads while one is
    /// being received.
    buf: Vec<u8>,
    utf8: Utf8Validator,
    /// Client role only: state of the masking-key generator.
    mask_state: u32,
}

impl Conn {
    /// A connection in `role` that refuses messages over `max_message` bytes with 1009.
    pub fn new(role: Role, max_message: usize) -> Conn {
        Conn {
            role,
            state: State::Open,
            max_message,
            head: [0; MAX_HEADER_LEN],
            head_len: 0,
            frame: None,
            message: None,
            buf: Vec::new(),
            utf8: Utf8Validator::default(),
            mask_state: 0x9E37_79B9,
        }
    }

    /// A client connection whose masking keys are derived from `seed` (§5.3 wants them
    /// unpredictable for browsers facing hostile proxies; courier's client is a load
    /// generator, where a cheap generator is the honest trade).
    pub fn client(max_message: usize, seed: u32) -> Conn {
        let mut conn = Conn::new(Role::Client, max_message);
        conn.mask_state = seed | 1;
        conn
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Whether a message (or a frame, or a frame header) has begun and not yet ended: what
    /// a message deadline runs against, since a peer that starts a message and stalls pins
    /// its assembly buffer.
    pub fn mid_message(&self) -> bool {
        self.message.is_some() || self.frame.is_some() || self.head_len > 0
    }

    /// Decodes from `input` up to and including the next event. Returns how many bytes
    /// were consumed and the event, or `None` when all of `input` was consumed without
    /// completing one. Call again with the rest of the input until it is all consumed.
    ///
    /// On a protocol error the close frame that fails the connection (§7.1.7) is already
    /// in `out`; the owner flushes it and closes TCP.
    pub fn read<'a>(
        &'a mut self,
        input: &'a mut [u8],
        out: &mut Vec<u8>,
    ) -> Result<(usize, Option<Event<'a>>), ProtocolError> {
        if self.state == State::Closed {
            return Ok((input.len(), None));
        }
        if self.frame.is_none() && self.message.is_none() {
            // The previous message was handed out by reference; it is done with now.
            self.buf.clear();
        }
        let mut pos = 0;
        loop {
            let frame = match self.frame {
                Some(frame) => frame,
                None => match self.read_header(input, &mut pos) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => return Ok((input.len(), None)),
                    Err(e) => return Err(self.fail(e, out)),
                },
            };
            let available = input.len() - pos;

            // Fast path: the whole frame is here and needs no assembly. Unmask in place and
            // hand out a slice of the caller's buffer.
            let whole_message =
                frame.opcode.is_control() || (frame.fin && frame.opcode != OpCode::Continuation);
            if whole_message && frame.seen == 0 && frame.remaining <= available as u64 {
                let end = pos + frame.remaining as usize;
                self.frame = None;
                if frame.opcode.is_control() {
                    let payload = &mut input[pos..end];
                    unmask(payload, frame.mask, 0);
                    pos = end;
                    match self.handle_control(frame.opcode, payload, out) {
                        Ok(Some(event)) => return Ok((pos, Some(event))),
                        Ok(None) => continue,
                        Err(e) => return Err(self.fail(e, out)),
                    }
                }
                self.message = None;
                let payload = &mut input[pos..end];
                unmask(payload, frame.mask, 0);
                if frame.opcode == OpCode::Text && std::str::from_utf8(payload).is_err() {
                    return Err(self.fail(ProtocolError::InvalidUtf8, out));
                }
                if self.state != State::Open {
                    pos = end;
                    continue;
                }
                let payload = &input[pos..end];
                return Ok((end, Some(data_event(frame.opcode, payload))));
            }

            // Slow path: take what is here, unmask it, buffer it.
            let take = frame.remaining.min(available as u64) as usize;
            let chunk = &mut input[pos..pos + take];
            unmask(chunk, frame.mask, frame.seen);
            pos += take;
            if !frame.opcode.is_control()
                && self.message == Some(OpCode::Text)
                && self.utf8.feed(chunk).is_err()
            {
                return Err(self.fail(ProtocolError::InvalidUtf8, out));
            }
            self.buf.extend_from_slice(chunk);
            let frame = InFrame {
                remaining: frame.remaining - take as u64,
                seen: frame.seen + take as u64,
                ..frame
            };
            if frame.remaining > 0 {
                self.frame = Some(frame);
                return Ok((input.len(), None));
            }
            self.frame = None;

            if frame.opcode.is_control() {
                let mut payload = [0u8; frame::MAX_CONTROL_PAYLOAD];
                let len = self.buf.len() - frame.control_start;
                payload[..len].copy_from_slice(&self.buf[frame.control_start..]);
                self.buf.truncate(frame.control_start);
                match self.handle_control(frame.opcode, &payload[..len], out) {
                    Ok(Some(event)) => return Ok((pos, Some(event))),
                    Ok(None) => continue,
                    Err(e) => return Err(self.fail(e, out)),
                }
            }
            if !frame.fin {
                continue;
            }
            let opcode = self.message.take().unwrap_or(OpCode::Binary);
            if opcode == OpCode::Text && self.utf8.finish().is_err() {
                return Err(self.fail(ProtocolError::InvalidUtf8, out));
            }
            if self.state != State::Open {
                self.buf.clear();
                continue;
            }
            return Ok((pos, Some(data_event(opcode, &self.buf))));
        }
    }

    /// Completes the next frame header from `head` and `input`, applies the message-level
    /// rules to it, and makes it the frame in progress. `None`: all input is consumed and
    /// the header is still incomplete.
    fn read_header(
        &mut self,
        input: &[u8],
        pos: &mut usize,
    ) -> Result<Option<InFrame>, ProtocolError> {
        let rest = &input[*pos..];
        let (header, used) = if self.head_len == 0 {
            match FrameHeader::parse(rest, self.role)? {
                Some((header, used)) => {
                    *pos += used;
                    (header, used)
                }
                None => {
                    self.head[..rest.len()].copy_from_slice(rest);
                    self.head_len = rest.len() as u8;
                    return Ok(None);
                }
            }
        } else {
            let have = usize::from(self.head_len);
            let take = (MAX_HEADER_LEN - have).min(rest.len());
            self.head[have..have + take].copy_from_slice(&rest[..take]);
            match FrameHeader::parse(&self.head[..have + take], self.role)? {
                Some((header, used)) => {
                    self.head_len = 0;
                    *pos += used - have;
                    (header, used)
                }
                None => {
                    self.head_len = (have + take) as u8;
                    *pos += take;
                    return Ok(None);
                }
            }
        };
        debug_assert!(used <= MAX_HEADER_LEN);
        self.begin_frame(header).map(Some)
    }

    /// The rules that need message state (§5.4 fragmentation, the size limit), checked
    /// from the header before a payload byte is buffered.
    fn begin_frame(&mut self, header: FrameHeader) -> Result<InFrame, ProtocolError> {
        let so_far = match header.opcode {
            // §5.4: "control frames MAY be injected in the middle of a fragmented message".
            OpCode::Close | OpCode::Ping | OpCode::Pong => 0,
            OpCode::Text | OpCode::Binary => {
                // §5.4: the fragments of one message "MUST NOT be interleaved" with another.
                if self.message.is_some() {
                    return Err(ProtocolError::ExpectedContinuation);
                }
                self.message = Some(header.opcode);
                self.utf8 = Utf8Validator::default();
                0
            }
            OpCode::Continuation => {
                if self.message.is_none() {
                    return Err(ProtocolError::UnexpectedContinuation);
                }
                self.buf.len()
            }
        };
        if !header.opcode.is_control()
            && header.payload_len > self.max_message.saturating_sub(so_far) as u64
        {
            return Err(ProtocolError::MessageTooBig);
        }
        Ok(InFrame {
            opcode: header.opcode,
            fin: header.fin,
            mask: header.mask,
            remaining: header.payload_len,
            seen: 0,
            control_start: self.buf.len(),
        })
    }

    fn handle_control<'a>(
        &mut self,
        opcode: OpCode,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Option<Event<'a>>, ProtocolError> {
        match opcode {
            // §5.5.2: "Upon receipt of a Ping frame, an endpoint MUST send a Pong frame in
            // response ... the Pong frame MUST have identical Application data". Once our
            // close is sent we send nothing more (§5.5.1).
            OpCode::Ping if self.state == State::Open => {
                let mask = self.next_mask();
                frame::write_frame(out, true, OpCode::Pong, payload, mask);
                Ok(None)
            }
            OpCode::Close => {
                let code = parse_close(payload)?;
                // §5.5.1: "If an endpoint receives a Close frame and did not previously send
                // a Close frame, the endpoint MUST send a Close frame in response."
                if self.state == State::Open {
                    let mask = self.next_mask();
                    match code {
                        Some(code) => frame::write_close(out, code, "", mask),
                        None => frame::write_frame(out, true, OpCode::Close, &[], mask),
                    }
                }
                self.state = State::Closed;
                self.release_buffers();
                Ok(Some(Event::Closed(code)))
            }
            _ => Ok(None),
        }
    }

    /// _Fail the WebSocket Connection_ (§7.1.7): send a close with the rule's code unless
    /// ours is already out, then nothing more.
    fn fail(&mut self, error: ProtocolError, out: &mut Vec<u8>) -> ProtocolError {
        if self.state == State::Open {
            let mask = self.next_mask();
            frame::write_close(out, error.close_code(), error.reason(), mask);
        }
        self.state = State::Closed;
        self.release_buffers();
        error
    }

    /// Starts the closing handshake from our side (§7.1.2). Returns false when a close was
    /// already sent, so the owner arms its close timeout only once.
    pub fn close(&mut self, code: u16, reason: &str, out: &mut Vec<u8>) -> bool {
        if self.state != State::Open {
            return false;
        }
        let mask = self.next_mask();
        frame::write_close(out, code, reason, mask);
        self.state = State::CloseSent;
        true
    }

    /// Appends a data message as one frame. Nothing is sent once our close is out.
    pub fn send(&mut self, opcode: OpCode, payload: &[u8], out: &mut Vec<u8>) {
        if self.state == State::Open {
            let mask = self.next_mask();
            frame::write_frame(out, true, opcode, payload, mask);
        }
    }

    /// Gives back the assembly buffer when no message or frame is in progress, so an idle
    /// connection holds no heap memory.
    pub fn release_idle_memory(&mut self) {
        if self.frame.is_none() && self.message.is_none() && self.buf.capacity() > 0 {
            self.buf = Vec::new();
        }
    }

    fn release_buffers(&mut self) {
        self.buf = Vec::new();
        self.frame = None;
        self.message = None;
    }

    fn next_mask(&mut self) -> Option<[u8; 4]> {
        match self.role {
            Role::Server => None,
            Role::Client => {
                // xorshift32: full period over nonzero states.
                let mut x = self.mask_state;
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                self.mask_state = x;
                Some(x.to_ne_bytes())
            }
        }
    }
}

fn data_event(opcode: OpCode, payload: &[u8]) -> Event<'_> {
    if opcode == OpCode::Text {
        Event::Text(payload)
    } else {
        Event::Binary(payload)
    }
}

#[inline]
fn unmask(payload: &mut [u8], key: Option<[u8; 4]>, seen: u64) {
    if let Some(key) = key {
        mask::apply(payload, key, (seen & 3) as usize);
    }
}

/// §5.5.1: an empty body, or a 2-byte status code followed by a UTF-8 reason.
fn parse_close(payload: &[u8]) -> Result<Option<u16>, ProtocolError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ProtocolError::CloseBodyTooShort),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !close_code::is_valid_on_wire(code) {
                return Err(ProtocolError::InvalidCloseCode(code));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(ProtocolError::InvalidUtf8);
            }
            Ok(Some(code))
        }
    }
}

#[cfg(test)]
mod tests;
