//! RFC 6455, sans-IO: no sockets, no clock. Bytes and time come in as arguments; events
//! and encoded frames come out.

pub mod conn;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod utf8;
