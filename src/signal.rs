//! SIGTERM/SIGINT as an event on the reactor.
//!
//! std has no `sigaction`, so this uses libc (already in the tree through mio). The handler
//! does only async-signal-safe things: bump a counter and write a byte to a socketpair
//! whose other end the reactor polls. The first signal asks for a graceful shutdown; a
//! second one means "now": `_exit` at once. Nothing half-written can reach disk from that,
//! because the store (when there is one) commits whole transactions or nothing.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

static WAKE_FD: AtomicI32 = AtomicI32::new(-1);
static RECEIVED: AtomicU32 = AtomicU32::new(0);

/// Exit status when a second signal cuts a graceful shutdown short (128 + SIGINT, as shells
/// report an interrupted program).
const FORCED_EXIT_STATUS: i32 = 130;

/// The reactor's end of the signal pipe.
pub struct Signals {
    receiver: mio::net::UnixStream,
}

impl Signals {
    /// Installs the handlers for SIGTERM and SIGINT. Call once per process.
    pub fn install() -> io::Result<Signals> {
        let (receiver, sender) = UnixStream::pair()?;
        receiver.set_nonblocking(true)?;
        sender.set_nonblocking(true)?;
        // The handler owns the sending end for the rest of the process.
        WAKE_FD.store(sender.into_raw_fd(), Ordering::SeqCst);
        for signal in [libc::SIGTERM, libc::SIGINT] {
            // SAFETY: `on_signal` only touches atomics and calls write(2)/_exit(2), both
            // async-signal-safe; the sigaction struct is fully initialised before use.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(Signals {
            receiver: mio::net::UnixStream::from_std(receiver),
        })
    }

    pub fn source(&mut self) -> &mut mio::net::UnixStream {
        &mut self.receiver
    }

    /// Drains the wake-up bytes; true when at least one signal arrived since the last call.
    pub fn take(&mut self) -> bool {
        let mut buf = [0u8; 64];
        let mut any = false;
        loop {
            match self.receiver.read(&mut buf) {
                Ok(0) => return any,
                Ok(_) => any = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return any,
            }
        }
    }

    pub fn raw_fd(&self) -> i32 {
        self.receiver.as_raw_fd()
    }
}

extern "C" fn on_signal(_signal: libc::c_int) {
    let count = RECEIVED.fetch_add(1, Ordering::SeqCst) + 1;
    if count >= 2 {
        // SAFETY: _exit is async-signal-safe and skips atexit handlers and buffered I/O,
        // which is what "exit at once" means.
        unsafe { libc::_exit(FORCED_EXIT_STATUS) };
    }
    let fd = WAKE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let byte = 1u8;
        // SAFETY: write(2) on a valid nonblocking fd with a 1-byte buffer; a full pipe just
        // means a wake-up is already pending.
        unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
    }
}
