//! The receiving side of RFC 6455 as courier implements it, one rule per test. Frames are
//! written out as wire bytes; `client_frame` masks them the way a client must.

use super::*;

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let op = match opcode {
        0x0 => OpCode::Continuation,
        0x1 => OpCode::Text,
        0x2 => OpCode::Binary,
        0x8 => OpCode::Close,
        0x9 => OpCode::Ping,
        0xA => OpCode::Pong,
        _ => unreachable!(),
    };
    frame::write_frame(&mut out, fin, op, payload, Some(KEY));
    out
}

#[derive(Debug, PartialEq, Eq, Clone)]
enum Owned {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Closed(Option<u16>),
    Error(ProtocolError),
}

/// Feeds `input` in pieces of `step` bytes and collects every event, stopping at an error.
fn run(conn: &mut Conn, input: &[u8], step: usize, out: &mut Vec<u8>) -> Vec<Owned> {
    let mut events = Vec::new();
    for piece in input.chunks(step.max(1)) {
        let mut piece = piece.to_vec();
        let mut pos = 0;
        loop {
            match conn.read(&mut piece[pos..], out) {
                Ok((used, event)) => {
                    match event {
                        Some(Event::Text(t)) => events.push(Owned::Text(t.to_vec())),
                        Some(Event::Binary(b)) => events.push(Owned::Binary(b.to_vec())),
                        Some(Event::Closed(code)) => events.push(Owned::Closed(code)),
                        None => {
                            assert_eq!(pos + used, piece.len(), "None must consume everything");
                            break;
                        }
                    }
                    pos += used;
                }
                Err(e) => {
                    events.push(Owned::Error(e));
                    return events;
                }
            }
        }
    }
    events
}

fn server() -> Conn {
    Conn::new(Role::Server, 1 << 20)
}

/// Runs `input` whole and split at every step size; all must give the same events and
/// the same output bytes.
fn events(input: &[u8]) -> (Vec<Owned>, Vec<u8>) {
    let mut out = Vec::new();
    let whole = run(&mut server(), input, input.len(), &mut out);
    for step in 1..=input.len().min(40) {
        let mut split_out = Vec::new();
        let split = run(&mut server(), input, step, &mut split_out);
        assert_eq!(split, whole, "split in pieces of {step}");
        assert_eq!(split_out, out, "output split in pieces of {step}");
    }
    (whole, out)
}

fn close_frame(code: u16) -> Vec<u8> {
    let mut out = Vec::new();
    frame::write_close(&mut out, code, "", None);
    out
}

#[test]
fn single_frame_text_message() {
    let (ev, out) = events(&client_frame(true, 0x1, b"Hello"));
    assert_eq!(ev, vec![Owned::Text(b"Hello".to_vec())]);
    assert!(out.is_empty());
}

/// §5.4: "a fragmented Hello: 0x01 0x03 0x48 0x65 0x6c (Hel) / 0x80 0x02 0x6c 0x6f (lo)".
#[test]
fn fragmented_message_is_assembled() {
    let mut input = client_frame(false, 0x1, b"Hel");
    input.extend(client_frame(true, 0x0, b"lo"));
    assert_eq!(events(&input).0, vec![Owned::Text(b"Hello".to_vec())]);
}

/// §5.4: "Control frames MAY be injected in the middle of a fragmented message."
#[test]
fn control_frames_interleaved_inside_a_fragmented_message() {
    let mut input = client_frame(false, 0x2, b"ab");
    input.extend(client_frame(true, 0x9, b"ping!"));
    input.extend(client_frame(false, 0x0, b"cd"));
    input.extend(client_frame(true, 0xA, b"unsolicited pong"));
    input.extend(client_frame(true, 0x0, b"ef"));
    let (ev, out) = events(&input);
    assert_eq!(ev, vec![Owned::Binary(b"abcdef".to_vec())]);
    assert_eq!(
        out,
        [&[0x8A, 5][..], b"ping!"].concat(),
        "the pong, unmasked"
    );
}

/// §5.5.2: "the Pong frame MUST have identical 'Application data' as found in the
/// message body of the Ping frame being replied to."
#[test]
fn ping_is_answered_with_identical_pong() {
    let payload = [7u8; 125];
    let (ev, out) = events(&client_frame(true, 0x9, &payload));
    assert!(ev.is_empty());
    assert_eq!(out[..2], [0x8A, 125]);
    assert_eq!(out[2..], payload);
}

/// §5.4: a continuation frame with no message started is a protocol error (1002).
#[test]
fn continuation_without_a_start_is_1002() {
    let (ev, out) = events(&client_frame(true, 0x0, b"x"));
    assert_eq!(
        ev,
        vec![Owned::Error(ProtocolError::UnexpectedContinuation)]
    );
    assert_eq!(out[..4], [0x88, out[1], 0x03, 0xEA]);
}

/// §5.4: "The fragments of one message MUST NOT be interleaved between the fragments of
/// another message".
#[test]
fn new_data_frame_inside_a_fragmented_message_is_1002() {
    let mut input = client_frame(false, 0x1, b"a");
    input.extend(client_frame(true, 0x1, b"b"));
    assert_eq!(
        events(&input).0,
        vec![Owned::Error(ProtocolError::ExpectedContinuation)]
    );
}

/// §5.6/§8.1: text that is not UTF-8 fails the connection with 1007.
#[test]
fn invalid_utf8_text_is_1007() {
    let (ev, out) = events(&client_frame(true, 0x1, b"ok\xff"));
    assert_eq!(ev, vec![Owned::Error(ProtocolError::InvalidUtf8)]);
    assert_eq!(out[2..4], 1007u16.to_be_bytes());
}

/// §8.1 fail fast: the error fires on the fragment holding the bad byte, before the
/// message's final fragment arrives.
#[test]
fn invalid_utf8_fails_at_the_first_bad_fragment() {
    let mut input = client_frame(false, 0x1, b"\xce\xba\xe1\xbd");
    input.extend(client_frame(false, 0x0, b"\xed\xa0\x80"));
    let (ev, _) = events(&input);
    assert_eq!(ev, vec![Owned::Error(ProtocolError::InvalidUtf8)]);
}

/// Within one frame: the header announces 1000 bytes, the bad byte is the third; the
/// connection fails without waiting for the other 997.
#[test]
fn invalid_utf8_fails_inside_a_frame_before_its_end() {
    let mut frame = client_frame(true, 0x1, &[b'a'; 1000]);
    let header = frame.len() - 1000;
    frame[header + 2] = 0xff ^ KEY[2];
    let mut conn = server();
    let mut out = Vec::new();
    let mut partial = frame[..header + 3].to_vec();
    assert_eq!(
        conn.read(&mut partial, &mut out),
        Err(ProtocolError::InvalidUtf8)
    );
}

/// A UTF-8 character split across fragments is valid.
#[test]
fn utf8_character_split_across_fragments_is_valid() {
    let euro = "€".as_bytes();
    let mut input = client_frame(false, 0x1, &euro[..1]);
    input.extend(client_frame(false, 0x0, &euro[1..2]));
    input.extend(client_frame(true, 0x0, &euro[2..]));
    assert_eq!(events(&input).0, vec![Owned::Text(euro.to_vec())]);
}

/// A message ending inside a UTF-8 sequence is invalid.
#[test]
fn text_ending_inside_a_utf8_sequence_is_1007() {
    let mut input = client_frame(false, 0x1, b"a\xe2");
    input.extend(client_frame(true, 0x0, b"\x82"));
    assert_eq!(
        events(&input).0,
        vec![Owned::Error(ProtocolError::InvalidUtf8)]
    );
}

/// §10.4: the size limit is checked from the header, before buffering the payload.
#[test]
fn message_over_the_limit_is_1009_from_the_header_alone() {
    let mut conn = Conn::new(Role::Server, 100);
    let mut out = Vec::new();
    let frame = client_frame(true, 0x2, &[0; 101]);
    let mut header_only = frame[..8].to_vec();
    assert_eq!(
        conn.read(&mut header_only, &mut out),
        Err(ProtocolError::MessageTooBig)
    );
    assert_eq!(out[2..4], 1009u16.to_be_bytes());
}

/// The limit applies to the assembled message, not to each fragment.
#[test]
fn fragments_adding_up_over_the_limit_are_1009() {
    let mut conn = Conn::new(Role::Server, 100);
    let mut input = client_frame(false, 0x2, &[0; 60]);
    input.extend(client_frame(true, 0x0, &[0; 41]));
    let ev = run(&mut conn, &input, input.len(), &mut Vec::new());
    assert_eq!(ev, vec![Owned::Error(ProtocolError::MessageTooBig)]);
    let mut conn = Conn::new(Role::Server, 100);
    let mut input = client_frame(false, 0x2, &[0; 60]);
    input.extend(client_frame(true, 0x0, &[0; 40]));
    let ev = run(&mut conn, &input, 7, &mut Vec::new());
    assert_eq!(ev, vec![Owned::Binary(vec![0; 100])]);
}

/// §5.5.1: "the endpoint MUST send a Close frame in response"; echoing the code.
#[test]
fn close_is_answered_with_a_close_echoing_the_code() {
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend(b"bye");
    let (ev, out) = events(&client_frame(true, 0x8, &payload));
    assert_eq!(ev, vec![Owned::Closed(Some(1000))]);
    assert_eq!(out, close_frame(1000));
}

#[test]
fn empty_close_is_answered_with_an_empty_close() {
    let (ev, out) = events(&client_frame(true, 0x8, b""));
    assert_eq!(ev, vec![Owned::Closed(None)]);
    assert_eq!(out, [0x88, 0x00]);
}

/// §5.5.1: a body, if any, starts with a 2-byte code; one byte is a protocol error.
#[test]
fn close_with_one_byte_body_is_1002() {
    let (ev, out) = events(&client_frame(true, 0x8, &[0x03]));
    assert_eq!(ev, vec![Owned::Error(ProtocolError::CloseBodyTooShort)]);
    assert_eq!(out[2..4], 1002u16.to_be_bytes());
}

/// §7.4: reserved and unassigned codes are protocol errors.
#[test]
fn close_with_reserved_code_is_1002() {
    for code in [0u16, 999, 1005, 1006, 1015, 2000, 5000] {
        let (ev, _) = events(&client_frame(true, 0x8, &code.to_be_bytes()));
        assert_eq!(
            ev,
            vec![Owned::Error(ProtocolError::InvalidCloseCode(code))]
        );
    }
}

/// §5.5.1: the close reason is UTF-8.
#[test]
fn close_with_invalid_utf8_reason_is_1007() {
    let (ev, out) = events(&client_frame(true, 0x8, b"\x03\xe8\xff"));
    assert_eq!(ev, vec![Owned::Error(ProtocolError::InvalidUtf8)]);
    assert_eq!(out[2..4], 1007u16.to_be_bytes());
}

/// After the close, nothing more is read and nothing more is sent.
#[test]
fn nothing_is_processed_after_the_close() {
    let mut input = client_frame(true, 0x8, &1000u16.to_be_bytes());
    input.extend(client_frame(true, 0x1, b"late"));
    input.extend(client_frame(true, 0x9, b"late ping"));
    let (ev, out) = events(&input);
    assert_eq!(ev, vec![Owned::Closed(Some(1000))]);
    assert_eq!(out, close_frame(1000));
}

/// §7.1.2: after we start closing, data is dropped, pings go unanswered, and the peer's
/// close completes the handshake without a second close from us.
#[test]
fn server_initiated_close_waits_for_the_peer_close() {
    let mut conn = server();
    let mut out = Vec::new();
    assert!(conn.close(1001, "going away", &mut out));
    assert!(
        !conn.close(1001, "again", &mut out),
        "only one close is sent"
    );
    assert_eq!(conn.state(), State::CloseSent);
    let sent = out.len();
    let mut input = client_frame(true, 0x1, b"in flight");
    input.extend(client_frame(true, 0x9, b"p"));
    input.extend(client_frame(true, 0x8, &1001u16.to_be_bytes()));
    let ev = run(&mut conn, &input, 3, &mut out);
    assert_eq!(ev, vec![Owned::Closed(Some(1001))]);
    assert_eq!(out.len(), sent, "nothing is written after our close");
    assert_eq!(conn.state(), State::Closed);
}

#[test]
fn many_messages_in_one_read_come_out_in_order() {
    let mut input = Vec::new();
    for i in 0..50u8 {
        input.extend(client_frame(true, 0x2, &vec![i; usize::from(i) * 7]));
    }
    let (ev, _) = events(&input);
    let expected: Vec<_> = (0..50u8)
        .map(|i| Owned::Binary(vec![i; usize::from(i) * 7]))
        .collect();
    assert_eq!(ev, expected);
}

#[test]
fn sixty_four_bit_length_message_split_across_reads() {
    let payload: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    let input = client_frame(true, 0x2, &payload);
    let mut conn = server();
    let ev = run(&mut conn, &input, 4096, &mut Vec::new());
    assert_eq!(ev, vec![Owned::Binary(payload)]);
}

#[test]
fn idle_connection_releases_its_buffer() {
    let mut conn = server();
    let mut input = client_frame(false, 0x2, &[1; 300]);
    input.extend(client_frame(true, 0x0, &[2; 300]));
    run(&mut conn, &input, 100, &mut Vec::new());
    conn.release_idle_memory();
    assert_eq!(conn.buf.capacity(), 0);
}

/// The client role masks what it sends and refuses masked frames (§5.1), and its output
/// decodes on a server.
#[test]
fn client_frames_round_trip_through_a_server() {
    let mut client = Conn::client(1 << 20, 42);
    let mut wire = Vec::new();
    client.send(OpCode::Text, b"over the wire", &mut wire);
    client.send(OpCode::Binary, &[0xAB; 300], &mut wire);
    assert_ne!(wire[1] & 0x80, 0, "client frames are masked");
    let ev = run(&mut server(), &wire, 5, &mut Vec::new());
    assert_eq!(
        ev,
        vec![
            Owned::Text(b"over the wire".to_vec()),
            Owned::Binary(vec![0xAB; 300])
        ]
    );
}
