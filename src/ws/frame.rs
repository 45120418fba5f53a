//! Frame headers (RFC 6455 §5.2), opcodes, close codes and the protocol errors that end a
//! connection.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-------+-+-------------+-------------------------------+
//! |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
//! |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
//! |N|V|V|V|       |S|             |   (if payload len==126/127)   |
//! | |1|2|3|       |K|             |                               |
//! +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
//! |     Extended payload length continued, if payload len == 127  |
//! + - - - - - - - - - - - - - - - +-------------------------------+
//! |                               |Masking-key, if MASK set to 1  |
//! +-------------------------------+-------------------------------+
//! ```

use std::fmt;

/// The longest header: 2 fixed bytes, 8 bytes of length, 4 bytes of mask.
pub const MAX_HEADER_LEN: usize = 14;

/// Control frames carry at most 125 bytes (§5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl OpCode {
    fn from_bits(bits: u8) -> Option<OpCode> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    /// §5.5: opcodes with the high bit set are control frames.
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// Which side of the connection we are; it decides the masking rule (§5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Frames from the peer must be masked; ours are not.
    Server,
    /// Frames from the peer must not be masked; ours are.
    Client,
}

/// Everything that ends a connection with a close code. `Copy` and comparable so tests
/// can `assert_eq!` on the exact rule that fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// §5.2: RSV1-3 set without a negotiated extension.
    ReservedBits,
    /// §5.2: opcodes 0x3-0x7 and 0xB-0xF are reserved.
    ReservedOpcode(u8),
    /// §5.1: a client frame without a mask.
    UnmaskedFrame,
    /// §5.1: a server frame with a mask.
    MaskedFrame,
    /// §5.5: control frames must not be fragmented.
    FragmentedControl,
    /// §5.5: control frame payload over 125 bytes.
    ControlTooLong,
    /// §5.2: "the most significant bit MUST be 0" in a 64-bit length.
    LengthOverflow,
    /// §5.2: "the minimal number of bytes MUST be used to encode the length".
    NonMinimalLength,
    /// §5.4: a continuation frame with no message in progress.
    UnexpectedContinuation,
    /// §5.4: a new data frame while a fragmented message is in progress.
    ExpectedContinuation,
    /// §5.5.1: a close frame with a 1-byte body.
    CloseBodyTooShort,
    /// §7.4: a close code that must not appear on the wire.
    InvalidCloseCode(u16),
    /// §8.1: text (or a close reason) that is not UTF-8.
    InvalidUtf8,
    /// §10.4: the message is larger than we are willing to buffer.
    MessageTooBig,
}

impl ProtocolError {
    /// The close code (§7.4.1) we send when this rule is broken.
    pub fn close_code(self) -> u16 {
        match self {
            ProtocolError::InvalidUtf8 => close_code::INVALID_DATA,
            ProtocolError::MessageTooBig => close_code::TOO_BIG,
            _ => close_code::PROTOCOL_ERROR,
        }
    }
}

impl ProtocolError {
    /// A short reason for the close frame and the log; static so failing allocates nothing.
    pub fn reason(self) -> &'static str {
        match self {
            ProtocolError::ReservedBits => "reserved bits set",
            ProtocolError::ReservedOpcode(_) => "reserved opcode",
            ProtocolError::UnmaskedFrame => "client frame not masked",
            ProtocolError::MaskedFrame => "server frame masked",
            ProtocolError::FragmentedControl => "fragmented control frame",
            ProtocolError::ControlTooLong => "control frame over 125 bytes",
            ProtocolError::LengthOverflow => "64-bit length with high bit set",
            ProtocolError::NonMinimalLength => "length not minimally encoded",
            ProtocolError::UnexpectedContinuation => "continuation without a start",
            ProtocolError::ExpectedContinuation => "data frame inside a fragmented message",
            ProtocolError::CloseBodyTooShort => "close frame with a 1-byte body",
            ProtocolError::InvalidCloseCode(_) => "invalid close code",
            ProtocolError::InvalidUtf8 => "invalid UTF-8",
            ProtocolError::MessageTooBig => "message too big",
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::ReservedOpcode(op) => write!(f, "reserved opcode {op:#x}"),
            ProtocolError::InvalidCloseCode(code) => write!(f, "invalid close code {code}"),
            other => f.write_str(other.reason()),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// Close status codes (§7.4.1) and the one application code courier adds.
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const INVALID_DATA: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
    /// courier: the client did not acknowledge pushes in time.
    pub const ACK_TIMEOUT: u16 = 4008;
    /// Never on the wire (§7.4.1): a close frame that carried no status code.
    pub const NO_STATUS: u16 = 1005;
    /// Never on the wire (§7.4.1): the connection ended without a close frame.
    pub const ABNORMAL: u16 = 1006;

    /// §7.4.1/§7.4.2: may this code appear in a close frame? 1004-1006 and 1015 are
    /// reserved for local use ("MUST NOT be set as a status code in a Close control frame");
    /// 1012-1014 are registered with IANA since; 3000-4999 belong to libraries and
    /// applications; everything else is unassigned.
    pub fn is_valid_on_wire(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
}

impl FrameHeader {
    /// Decodes a header from the front of `buf`. `Ok(None)`: not enough bytes yet, nothing
    /// consumed. Checks run cheapest first and all before any payload byte is looked at,
    /// so a bad frame costs at most 14 bytes of work.
    pub fn parse(buf: &[u8], role: Role) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        let [b0, b1, ..] = *buf else {
            return Ok(None);
        };
        // §5.2: "MUST be 0 unless an extension is negotiated that defines meanings for
        // non-zero values". courier negotiates no extension.
        if b0 & 0x70 != 0 {
            return Err(ProtocolError::ReservedBits);
        }
        let opcode =
            OpCode::from_bits(b0 & 0x0F).ok_or(ProtocolError::ReservedOpcode(b0 & 0x0F))?;
        let fin = b0 & 0x80 != 0;
        let short_len = b1 & 0x7F;
        if opcode.is_control() {
            // §5.5: "All control frames MUST have a payload length of 125 bytes or less
            // and MUST NOT be fragmented."
            if !fin {
                return Err(ProtocolError::FragmentedControl);
            }
            if short_len > 125 {
                return Err(ProtocolError::ControlTooLong);
            }
        }
        let masked = b1 & 0x80 != 0;
        match (role, masked) {
            // §5.1: "The server MUST close the connection upon receiving a frame that is
            // not masked."
            (Role::Server, false) => return Err(ProtocolError::UnmaskedFrame),
            // §5.1: "A client MUST close a connection if it detects a masked frame."
            (Role::Client, true) => return Err(ProtocolError::MaskedFrame),
            _ => {}
        }

        let (payload_len, mut pos) = match short_len {
            126 => {
                let Some(bytes) = buf.get(2..4) else {
                    return Ok(None);
                };
                let len = u16::from_be_bytes([bytes[0], bytes[1]]);
                if len < 126 {
                    return Err(ProtocolError::NonMinimalLength);
                }
                (u64::from(len), 4)
            }
            127 => {
                let Some(bytes) = buf.get(2..10) else {
                    return Ok(None);
                };
                let len = u64::from_be_bytes(bytes.try_into().expect("8 bytes"));
                if len >> 63 != 0 {
                    return Err(ProtocolError::LengthOverflow);
                }
                if len <= u64::from(u16::MAX) {
                    return Err(ProtocolError::NonMinimalLength);
                }
                (len, 10)
            }
            len => (u64::from(len), 2),
        };
        let mask = if masked {
            let Some(bytes) = buf.get(pos..pos + 4) else {
                return Ok(None);
            };
            pos += 4;
            Some([bytes[0], bytes[1], bytes[2], bytes[3]])
        } else {
            None
        };
        Ok(Some((
            FrameHeader {
                fin,
                opcode,
                mask,
                payload_len,
            },
            pos,
        )))
    }

    /// Encodes the header into `out`, returning how many bytes of it are used.
    pub fn encode(&self, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
        out[0] = (u8::from(self.fin) << 7) | self.opcode as u8;
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut pos = match self.payload_len {
            len @ 0..=125 => {
                out[1] = mask_bit | len as u8;
                2
            }
            len @ 126..=0xFFFF => {
                out[1] = mask_bit | 126;
                out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                4
            }
            len => {
                out[1] = mask_bit | 127;
                out[2..10].copy_from_slice(&len.to_be_bytes());
                10
            }
        };
        if let Some(key) = self.mask {
            out[pos..pos + 4].copy_from_slice(&key);
            pos += 4;
        }
        pos
    }
}

/// Bytes a frame with a `payload_len` payload takes on the wire, header included (no
/// mask: what a server sends), so output can be bounded before it is framed.
pub fn encoded_len(payload_len: usize) -> usize {
    let header = match payload_len {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    };
    header + payload_len
}

/// Where the frame starting at `buf[0]` ends, read from its header: for walking a queue of
/// frames this side encoded (whole headers, lengths already checked), never for input.
/// A header cut short (which a well-kept queue never holds) ends the walk at the buffer's
/// end rather than reading past it.
pub fn next_boundary(buf: &[u8]) -> usize {
    let Some(&b1) = buf.get(1) else {
        return buf.len().max(1);
    };
    let masked = b1 & 0x80 != 0;
    let (header, len) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (4, u64::from(u16::from_be_bytes([b[0], b[1]]))),
            None => return buf.len(),
        },
        127 => match buf.get(2..10) {
            Some(b) => (10, u64::from_be_bytes(b.try_into().expect("8 bytes"))),
            None => return buf.len(),
        },
        len => (2, u64::from(len)),
    };
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    let header: usize = header + if masked { 4 } else { 0 };
    header.saturating_add(len)
}

/// Appends one complete frame to `out`, masking the payload copy when `mask` is given
/// (client role); the caller's payload is left untouched.
pub fn write_frame(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: OpCode,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) {
    let header = FrameHeader {
        fin,
        opcode,
        mask,
        payload_len: payload.len() as u64,
    };
    let mut head = [0u8; MAX_HEADER_LEN];
    let head_len = header.encode(&mut head);
    out.reserve(head_len + payload.len());
    out.extend_from_slice(&head[..head_len]);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        super::mask::apply(&mut out[start..], key, 0);
    }
}

/// Appends a close frame carrying `code` and `reason` (truncated on a char boundary to
/// fit the 125-byte control limit).
pub fn write_close(out: &mut Vec<u8>, code: u16, reason: &str, mask: Option<[u8; 4]>) {
    let mut reason_len = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(reason_len) {
        reason_len -= 1;
    }
    let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + reason_len].copy_from_slice(&reason.as_bytes()[..reason_len]);
    write_frame(out, true, OpCode::Close, &payload[..2 + reason_len], mask);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        FrameHeader::parse(bytes, Role::Server)
    }

    /// §5.7: "A single-frame masked text message" `0x81 0x85 0x37 0xfa 0x21 0x3d ...`.
    #[test]
    fn rfc_example_single_frame_masked_text() {
        let (header, used) = parse(&[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f])
            .unwrap()
            .unwrap();
        assert_eq!(used, 6);
        assert_eq!(
            header,
            FrameHeader {
                fin: true,
                opcode: OpCode::Text,
                mask: Some([0x37, 0xfa, 0x21, 0x3d]),
                payload_len: 5
            }
        );
    }

    /// Every prefix of a header is "need more", never an error or a wrong header.
    #[test]
    fn header_prefixes_need_more_bytes() {
        let full = [0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4];
        for cut in 0..full.len() {
            assert_eq!(parse(&full[..cut]), Ok(None), "prefix of {cut} bytes");
        }
        let (header, used) = parse(&full).unwrap().unwrap();
        assert_eq!((header.payload_len, used), (65536, 14));
    }

    /// §5.2 Payload length: 7 bits, or 126 + 16 bits, or 127 + 64 bits.
    #[test]
    fn lengths_7_16_and_64_bit() {
        let (h, used) = parse(&[0x82, 0x80 | 125, 0, 0, 0, 0]).unwrap().unwrap();
        assert_eq!((h.payload_len, used), (125, 6));
        let (h, used) = parse(&[0x82, 0x80 | 126, 0x01, 0x00, 0, 0, 0, 0])
            .unwrap()
            .unwrap();
        assert_eq!((h.payload_len, used), (256, 8));
        let (h, used) = parse(&[0x82, 0x80 | 127, 0, 0, 0, 1, 0, 0, 0, 0, 9, 9, 9, 9])
            .unwrap()
            .unwrap();
        assert_eq!((h.payload_len, used), (1 << 32, 14));
    }

    /// §5.2: "the most significant bit MUST be 0" in the 64-bit length.
    #[test]
    fn length_64_bit_high_bit_must_be_zero() {
        let frame = [0x82, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        assert_eq!(parse(&frame), Err(ProtocolError::LengthOverflow));
    }

    /// §5.2: "the minimal number of bytes MUST be used to encode the length".
    #[test]
    fn length_must_be_minimally_encoded() {
        assert_eq!(
            parse(&[0x82, 0x80 | 126, 0, 125, 1, 2, 3, 4]),
            Err(ProtocolError::NonMinimalLength)
        );
        assert_eq!(
            parse(&[0x82, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 1, 2, 3, 4]),
            Err(ProtocolError::NonMinimalLength)
        );
    }

    /// §5.2 RSV1-3: "MUST be 0 unless an extension is negotiated".
    #[test]
    fn reserved_bits_must_be_zero() {
        for rsv in [0x40, 0x20, 0x10] {
            assert_eq!(parse(&[0x81 | rsv, 0x80]), Err(ProtocolError::ReservedBits));
        }
    }

    /// §5.2 Opcode: "%x3-7 are reserved for further non-control frames", "%xB-F are
    /// reserved for further control frames"; an unknown opcode fails the connection.
    #[test]
    fn reserved_opcodes_are_rejected() {
        for op in (0x3..=0x7).chain(0xB..=0xF) {
            assert_eq!(
                parse(&[0x80 | op, 0x80]),
                Err(ProtocolError::ReservedOpcode(op))
            );
        }
    }

    /// §5.1: "The server MUST close the connection upon receiving a frame that is not
    /// masked."
    #[test]
    fn server_rejects_unmasked_client_frame() {
        assert_eq!(parse(&[0x81, 0x05]), Err(ProtocolError::UnmaskedFrame));
    }

    /// §5.1: "A client MUST close a connection if it detects a masked frame."
    #[test]
    fn client_rejects_masked_server_frame() {
        assert_eq!(
            FrameHeader::parse(&[0x81, 0x85, 1, 2, 3, 4], Role::Client),
            Err(ProtocolError::MaskedFrame)
        );
        assert!(FrameHeader::parse(&[0x81, 0x05], Role::Client)
            .unwrap()
            .is_some());
    }

    /// §5.5: "All control frames MUST have a payload length of 125 bytes or less and MUST
    /// NOT be fragmented."
    #[test]
    fn control_frames_are_short_and_unfragmented() {
        assert_eq!(parse(&[0x09, 0x80]), Err(ProtocolError::FragmentedControl));
        assert_eq!(
            parse(&[0x89, 0x80 | 126, 0, 126]),
            Err(ProtocolError::ControlTooLong)
        );
        assert!(parse(&[0x89, 0x80 | 125, 1, 2, 3, 4]).unwrap().is_some());
    }

    #[test]
    fn encoded_len_and_next_boundary_agree_with_write_frame() {
        for len in [0usize, 1, 125, 126, 127, 0xFFFF, 0x10000, 70_000] {
            let payload = vec![7u8; len];
            for mask in [None, Some([1, 2, 3, 4])] {
                let mut out = Vec::new();
                write_frame(&mut out, true, OpCode::Text, &payload, mask);
                out.extend_from_slice(&[0x81, 0]);
                assert_eq!(
                    next_boundary(&out),
                    out.len() - 2,
                    "len {len} mask {mask:?}"
                );
                if mask.is_none() {
                    assert_eq!(encoded_len(len), out.len() - 2);
                }
            }
        }
    }

    #[test]
    fn encode_then_parse_round_trips_every_length_class() {
        for len in [0u64, 1, 125, 126, 127, 65535, 65536, 1 << 40] {
            for mask in [None, Some([9, 8, 7, 6])] {
                let header = FrameHeader {
                    fin: len % 2 == 0,
                    opcode: OpCode::Binary,
                    mask,
                    payload_len: len,
                };
                let mut buf = [0u8; MAX_HEADER_LEN];
                let used = header.encode(&mut buf);
                let role = if mask.is_some() {
                    Role::Server
                } else {
                    Role::Client
                };
                assert_eq!(
                    FrameHeader::parse(&buf[..used], role),
                    Ok(Some((header, used)))
                );
            }
        }
    }

    /// §7.4.1/§7.4.2: which close codes may be sent.
    #[test]
    fn close_codes_valid_on_the_wire() {
        for ok in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ] {
            assert!(close_code::is_valid_on_wire(ok), "{ok}");
        }
        for bad in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!close_code::is_valid_on_wire(bad), "{bad}");
        }
    }

    #[test]
    fn close_reason_is_truncated_on_a_char_boundary() {
        let mut out = Vec::new();
        write_close(&mut out, 1000, &"é".repeat(100), None);
        assert_eq!(out[1] as usize, out.len() - 2);
        assert!(out.len() - 2 <= MAX_CONTROL_PAYLOAD);
        assert!(std::str::from_utf8(&out[4..]).is_ok());
    }
}
