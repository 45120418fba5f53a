//! Starting a `courier` process and learning its address: shared by the test helper
//! modules (`tests/common` for `courier echo`, `tests/im_support` for `courier serve`).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Spawns `command` with stdout piped and waits up to `limit` for its `listening on ADDR`
/// line. Stdout is
/// drained for the life of the process: a server blocked on a full pipe would look like a
/// hang. Panics (after killing the child) if no such line comes.
pub fn spawn_listening(command: &mut Command, limit: Duration) -> (Child, SocketAddr) {
    command.stdout(Stdio::piped());
    let mut child = command.spawn().expect("spawn courier");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let Ok(line) = line else { return };
            if let Some(addr) = line.strip_prefix("listening on ") {
                let _ = tx.send(addr.trim().to_owned());
                break;
            }
        }
        for _ in lines {}
    });
    match rx.recv_timeout(limit) {
        Ok(addr) => {
            let addr = addr
                .parse()
                .unwrap_or_else(|_| panic!("bad address in `listening on {addr}`"));
            (child, addr)
        }
        Err(_) => {
            let _ = child.kill();
            let status = child.wait();
            panic!("{command:?} printed no `listening on` line (exit: {status:?})");
        }
    }
}
