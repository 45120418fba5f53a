//! The comparison peer for `scripts/bench-echo.sh`: a tokio-tungstenite echo server.
//!
//! This is not a benchmark by itself. It is the server courier's echo throughput is measured
//! against, built from the dev-dependencies in the same run, so it must be a fair, well-tuned
//! peer rather than a strawman:
//!
//! - a tokio `current_thread` runtime: one thread, like courier's single mio reactor, so
//!   both servers are pinned to one core and compared core for core;
//! - Nagle disabled on every accepted socket (courier does the same);
//! - echoes batched: every message already readable is queued with `feed`, and the socket
//!   is flushed once when the stream has no more ready items, instead of one `send` (and so
//!   one `write` syscall) per message;
//! - the same 16 MiB message limit `scripts/autobahn.sh` gives courier.
//!
//! Pings are answered by tungstenite itself; Text and Binary are echoed with their opcode.
//!
//! Usage: `echo_peer --listen ADDR` prints `listening on ADDR` (the real port when the port
//! is 0) and serves until killed. Run without `--listen` (as a plain `cargo bench` does), it
//! says what it is and exits 0 so `cargo bench` does not hang.

use std::io::Write as _;
use std::net::SocketAddr;

use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Largest message (and frame) the peer accepts: Autobahn section 9 sends up to 16 MiB.
const MAX_MESSAGE: usize = 16 << 20;

/// Upper bound on messages echoed between two flushes, so a client that never stops
/// sending still sees its echoes (tungstenite also writes on its own once its write buffer
/// passes `write_buffer_size`).
const MAX_BATCH: usize = 1024;

fn main() {
    let mut listen: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => match args.next() {
                Some(addr) => listen = Some(addr),
                None => usage_error("--listen needs an address"),
            },
            s if s.starts_with("--listen=") => listen = Some(s["--listen=".len()..].to_owned()),
            // `cargo bench` passes `--bench`; filters and other harness flags are ignored too.
            _ => {}
        }
    }

    let Some(listen) = listen else {
        println!(
            "echo_peer: the tokio-tungstenite comparison peer for scripts/bench-echo.sh \
             (run it with --listen ADDR); nothing to benchmark here"
        );
        return;
    };
    let addr: SocketAddr = match listen.parse() {
        Ok(a) => a,
        Err(e) => usage_error(&format!("bad --listen address {listen:?}: {e}")),
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("build tokio current_thread runtime");
    rt.block_on(serve(addr));
}

fn usage_error(msg: &str) -> ! {
    eprintln!("echo_peer: {msg}\nusage: echo_peer --listen ADDR");
    std::process::exit(2);
}

async fn serve(addr: SocketAddr) {
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("echo_peer: bind {addr}: {e}");
            std::process::exit(1);
        }
    };
    let local = listener.local_addr().expect("local_addr");
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {local}").expect("write stdout");
        out.flush().expect("flush stdout");
    }

    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream));
            }
            Err(e) => {
                // EMFILE/ENFILE and the like: back off briefly instead of spinning. (The
                // runtime has no timer driver; a short blocking sleep on this rare path is
                // acceptable for a benchmark peer.)
                eprintln!("echo_peer: accept: {e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

async fn connection(stream: TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        eprintln!("echo_peer: set_nodelay: {e}");
    }
    let config = WebSocketConfig {
        max_message_size: Some(MAX_MESSAGE),
        max_frame_size: Some(MAX_MESSAGE),
        ..WebSocketConfig::default()
    };
    let mut ws = match tokio_tungstenite::accept_async_with_config(stream, Some(config)).await {
        Ok(ws) => ws,
        Err(_) => return,
    };

    // Wait for one message, then take every other message that is already decodable
    // without blocking, queue all the echoes, and flush once.
    while let Some(first) = ws.next().await {
        let mut next = Some(first);
        let mut batch = 0;
        let mut ended = false;
        while let Some(item) = next.take() {
            let msg = match item {
                Ok(msg) => msg,
                Err(e) => {
                    // On a protocol error tungstenite has queued a close frame (1002, 1007,
                    // 1009...): send it before dropping the connection, as a careful server
                    // would. Best effort: the socket may already be gone.
                    let _ = ws.flush().await;
                    return log_error(e);
                }
            };
            match msg {
                Message::Text(_) | Message::Binary(_) => {
                    if let Err(e) = ws.feed(msg).await {
                        return log_error(e);
                    }
                    batch += 1;
                }
                // Pong replies (and the close reply) are queued by tungstenite itself and go
                // out with the next read or flush.
                Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => {}
            }
            if batch >= MAX_BATCH {
                break;
            }
            match ws.next().now_or_never() {
                Some(Some(item)) => next = Some(item),
                Some(None) => ended = true,
                None => {} // nothing more ready: flush this batch
            }
        }
        if let Err(e) = ws.flush().await {
            return log_error(e);
        }
        if ended {
            return;
        }
    }
}

/// Report only what is unexpected: connection ends, resets and the protocol errors a test
/// client provokes on purpose (Autobahn) are normal for an echo peer.
fn log_error(e: WsError) {
    match e {
        WsError::ConnectionClosed
        | WsError::AlreadyClosed
        | WsError::Io(_)
        | WsError::Protocol(_)
        | WsError::Utf8
        | WsError::Capacity(_) => {}
        e => eprintln!("echo_peer: {e}"),
    }
}
