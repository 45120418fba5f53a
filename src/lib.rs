//! courier: a single-binary instant-messaging server.
//!
//! The protocol cores (`ws`, `im`) are sans-IO: bytes and time in, events and bytes
//! out. `net` is the one place that owns sockets; `clock` the one place that reads time.
//! See ARCHITECTURE.md for the data flow.

pub mod client;
pub mod clock;
pub mod config;
pub mod echo;
pub mod forwarded;
pub mod im;
pub mod log;
pub mod login_guard;
pub mod metrics;
pub mod net;
pub mod serve;
pub mod signal;
pub mod store;
pub mod user_id;
pub mod web;
pub mod ws;

// The wheel is an internal data structure; the fuzzer drives it directly.
#[cfg(fuzzing)]
pub mod timer;
#[cfg(not(fuzzing))]
pub(crate) mod timer;
