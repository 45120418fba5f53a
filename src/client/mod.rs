//! courier's own IM client, in two layers.
//!
//! [`session`] is the protocol state of one device, sans-IO like the server's cores: server
//! frames and the time come in, typed events and the requests to write go out. It owns
//! everything PROTOCOL.md asks of a client: the cursor with dedupe by seq, gap detection
//! and sync paging, cumulative acks, the outbox that resends by cid after a reconnect, the
//! heartbeat and the reconnect backoff. The load generator drives it from its own reactor.
//!
//! [`blocking`] puts it on a `std::net::TcpStream` for tests and tools: a [`Client`] per
//! connection, and a [`Device`] that reconnects with the backoff and keeps one session
//! across connections.

pub mod blocking;
pub mod session;

pub use blocking::{Client, Device, DeviceOptions, Error, Frame, OpenError, Options};
pub use session::{Backoff, Config, Event, Liveness, Msg, Session};
