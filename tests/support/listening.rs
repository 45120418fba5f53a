//! Starting a `courier` process and learning its address: shared by the test helper
//! modules (`tests/common` for `courier echo`, `tests/im_support` for `courier serve`).
//!
//! A server's stderr (its log) is kept out of the test's output: `cargo test` shows the
//! output of failing tests only, but a child process's inherited stderr is not the test's
//! captured output, so every server of every passing test used to print its log into the
//! run. [`start_listening`] drains a piped stderr into a [`StderrTail`] instead, which
//! the owner prints when its test fails ([`StderrTail::print_if_panicking`]).

// Each test crate that includes this file uses a different part of it.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Duration;

/// How much of a server's log is kept: the end of it is what explains a failure, and a
/// test that floods the log (forged tokens, refusals) must not hold it all in memory.
const KEEP_BYTES: usize = 64 * 1024;

/// How long a failing test waits for a killed server's log to reach its end before it
/// prints what it has: the pipe closes when the process is gone, so this is only a bound
/// should something else hold it open.
const END_WAIT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Tail {
    lines: VecDeque<String>,
    bytes: usize,
    /// Lines dropped from the front to stay within [`KEEP_BYTES`].
    dropped: u64,
    /// The stream reached EOF (or failed): nothing more will come.
    ended: bool,
}

/// The last [`KEEP_BYTES`] of a child's stderr, drained line by line on a thread of its
/// own for the life of the process (a child blocked on a full pipe would look like a
/// hang).
#[derive(Clone)]
pub struct StderrTail {
    shared: Arc<(Mutex<Tail>, Condvar)>,
}

impl StderrTail {
    /// Starts draining `stderr`; each line is also handed to `on_line` (tests that read
    /// the log as it comes).
    pub fn capture(
        stderr: impl Read + Send + 'static,
        mut on_line: impl FnMut(&str) + Send + 'static,
    ) -> StderrTail {
        let tail = StderrTail {
            shared: Arc::new((Mutex::new(Tail::default()), Condvar::new())),
        };
        let writer = tail.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\n', '\r']);
                on_line(line);
                writer.push(line);
            }
            let (tail, ended) = &*writer.shared;
            tail.lock().unwrap().ended = true;
            ended.notify_all();
        });
        tail
    }

    fn push(&self, line: &str) {
        let mut line = line.to_owned();
        if line.len() > KEEP_BYTES {
            let mut cut = KEEP_BYTES;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        let mut tail = self.shared.0.lock().unwrap();
        tail.bytes += line.len();
        tail.lines.push_back(line);
        while tail.bytes > KEEP_BYTES {
            let Some(old) = tail.lines.pop_front() else {
                break;
            };
            tail.bytes -= old.len();
            tail.dropped += 1;
        }
    }

    /// Waits (bounded) until the stream has ended; false if it had not by then.
    pub fn wait_ended(&self, within: Duration) -> bool {
        let (tail, ended) = &*self.shared;
        let guard = tail.lock().unwrap();
        let (guard, _) = ended
            .wait_timeout_while(guard, within, |t| !t.ended)
            .unwrap();
        guard.ended
    }

    /// The lines kept so far, with a first line saying how many were dropped before them.
    pub fn text(&self) -> String {
        let tail = self.shared.0.lock().unwrap();
        let mut text = String::new();
        if tail.dropped > 0 {
            text.push_str(&format!("[{} earlier lines dropped]\n", tail.dropped));
        }
        for line in &tail.lines {
            text.push_str(line);
            text.push('\n');
        }
        text
    }

    /// When the current thread is unwinding from a failed assertion, prints the log to the
    /// test's output (which `cargo test` shows for failing tests only), labelled with
    /// `label`. Call it after the process is gone, so the log is complete.
    pub fn print_if_panicking(&self, label: &str) {
        if !std::thread::panicking() {
            return;
        }
        let complete = self.wait_ended(END_WAIT);
        let text = self.text();
        let note = if complete { "" } else { " (still open)" };
        if text.is_empty() {
            eprintln!("---- {label}: stderr was empty{note}");
        } else {
            eprintln!("---- {label}: stderr{note}\n{text}---- end of {label}'s stderr");
        }
    }
}

/// A process [`start_listening`] started, and where it listens.
pub struct Started {
    pub child: Child,
    pub addr: SocketAddr,
    /// The process's stderr when the command had it piped; `None` when it went elsewhere
    /// (a file the test reads, say).
    pub stderr: Option<StderrTail>,
}

/// Spawns `command` with stdout piped and waits up to `limit` for its `listening on ADDR`
/// line. Stdout is drained for the life of the process (a server blocked on a full pipe
/// would look like a hang), and so is stderr when the command pipes it, into a
/// [`StderrTail`], each line also handed to `on_line`. Panics (after killing the child,
/// with its stderr) if no such line comes.
pub fn start_listening(
    command: &mut Command,
    limit: Duration,
    on_line: impl FnMut(&str) + Send + 'static,
) -> Started {
    command.stdout(Stdio::piped());
    let mut child = command.spawn().expect("spawn courier");
    let stderr = child
        .stderr
        .take()
        .map(|stderr| StderrTail::capture(stderr, on_line));
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
            Started {
                child,
                addr,
                stderr,
            }
        }
        Err(_) => {
            let _ = child.kill();
            let status = child.wait();
            let log = stderr.map_or_else(String::new, |tail| {
                tail.wait_ended(END_WAIT);
                format!("; its stderr:\n{}", tail.text())
            });
            panic!("{command:?} printed no `listening on` line (exit: {status:?}){log}");
        }
    }
}

/// [`start_listening`] for a command whose stderr the caller has sent somewhere (a file
/// it reads itself): the child and its address.
pub fn spawn_listening(command: &mut Command, limit: Duration) -> (Child, SocketAddr) {
    let started = start_listening(command, limit, |_| {});
    (started.child, started.addr)
}
