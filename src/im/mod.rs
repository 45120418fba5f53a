//! Instant messaging on top of the WebSocket layer: tokens, the wire JSON, and the hub
//! that routes, stores and pushes messages. Sans-IO: nothing here touches a socket.

pub mod auth;
pub mod hub;
pub mod protocol;
