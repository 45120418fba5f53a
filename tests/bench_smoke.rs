//! Smoke test of the load generator: each `courier-bench` mode runs for a second or two
//! against a real server (`courier echo` or `courier serve` on 127.0.0.1:0). The figures
//! are not asserted (a shared CI machine says nothing about speed); the exit status is,
//! and so is the exactly-once check of `im` and `fanout`: a load generator that loses or
//! duplicates messages must say so and exit 1, and one that reports a clean run must
//! have had one.

mod im_support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use im_support::{courier_command, DataDir, Server, SECRET};
use serde_json::Value;

/// Longest a single bench run may take before the test calls it hung.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// `courier echo --listen 127.0.0.1:0`.
fn echo_server() -> Server {
    Server::run(courier_command(&["echo", "--listen", "127.0.0.1:0"]))
}

/// `courier serve` on a fresh data folder, with the tests' secret and a request limit far
/// above what the runs send.
fn im_server() -> Server {
    Server::start(&["--rate", "1000000"])
}

fn ws_url(server: &Server, path: &str) -> String {
    format!("ws://{}{path}", server.addr)
}

/// What one `courier-bench` run left.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The `--json` line, parsed.
    fn json(&self) -> Value {
        let line = self.stdout.lines().last().unwrap_or("");
        serde_json::from_str(line).unwrap_or_else(|e| {
            panic!(
                "no JSON result ({e}); stdout:\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    fn assert_ok(&self, what: &str) {
        assert_eq!(
            self.code,
            Some(0),
            "{what}: courier-bench exited {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
    }
}

/// Runs `courier-bench ARGS` to the end (killed past `RUN_LIMIT`).
fn bench(args: &[&str]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_courier-bench"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn courier-bench");
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for courier-bench") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let run = Run {
        code: status.and_then(|s| s.code()),
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    };
    assert!(
        status.is_some(),
        "courier-bench {args:?} ran past {RUN_LIMIT:?}; stderr:\n{}",
        run.stderr
    );
    run
}

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut at = v;
    for key in path {
        at = &at[*key];
    }
    at.as_f64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {v}"))
}

#[test]
fn echo_mode_runs_and_reports() {
    let server = echo_server();
    let url = ws_url(&server, "/");
    let run = bench(&[
        "echo",
        "--url",
        &url,
        "--connections",
        "10",
        "--size",
        "64",
        "--depth",
        "2",
        "--seconds",
        "1",
        "--warmup",
        "0.2",
        "--json",
    ]);
    run.assert_ok("echo");
    let v = run.json();
    assert_eq!(v["mode"], "echo");
    assert!(num(&v, &["msgs_per_sec"]) > 0.0, "{v}");
    assert_eq!(num(&v, &["lost_connections"]), 0.0, "{v}");
    // The table form too (what a person sees).
    let run = bench(&[
        "echo",
        "--url",
        &url,
        "--connections",
        "2",
        "--seconds",
        "0.5",
        "--warmup",
        "0",
    ]);
    run.assert_ok("echo, table");
    assert!(run.stdout.contains("msg/s"), "{}", run.stdout);
}

#[test]
fn connect_mode_holds_connections_echo_and_im() {
    let server = echo_server();
    let pid = server.pid().to_string();
    let url = ws_url(&server, "/");
    let run = bench(&[
        "connect",
        "--url",
        &url,
        "--connections",
        "200",
        "--rate",
        "2000",
        "--hold",
        "1",
        "--server-pid",
        &pid,
        "--json",
    ]);
    run.assert_ok("connect");
    let v = run.json();
    assert_eq!(num(&v, &["established"]), 200.0, "{v}");
    assert_eq!(num(&v, &["dropped"]), 0.0, "{v}");

    // Authenticated IM connections: every one gets its `welcome`.
    let im = im_server();
    let url = ws_url(&im, "/ws");
    let run = bench(&[
        "connect",
        "--url",
        &url,
        "--connections",
        "100",
        "--hold",
        "1",
        "--jwt-secret",
        SECRET,
        "--json",
    ]);
    run.assert_ok("connect, IM");
    let v = run.json();
    assert_eq!(num(&v, &["im", "welcomes"]), 100.0, "{v}");
}

#[test]
fn im_mode_passes_its_exactly_once_check() {
    let server = im_server();
    let url = ws_url(&server, "/ws");
    let run = bench(&[
        "im",
        "--url",
        &url,
        "--jwt-secret",
        SECRET,
        "--users",
        "50",
        "--seconds",
        "1",
        "--warmup",
        "0.3",
        "--json",
    ]);
    run.assert_ok("im, as fast as possible");
    let v = run.json();
    assert_eq!(v["check"]["passed"], true, "{v}");
    assert_eq!(num(&v, &["check", "verified_users"]), 50.0, "{v}");
    assert!(num(&v, &["messages", "confirmed"]) > 0.0, "{v}");
    assert_eq!(
        num(&v, &["messages", "confirmed"]),
        num(&v, &["messages", "delivered_once"]),
        "{v}"
    );

    // Paced, with two threads.
    let run = bench(&[
        "im",
        "--url",
        &url,
        "--jwt-secret",
        SECRET,
        "--users",
        "40",
        "--rate",
        "500",
        "--threads",
        "2",
        "--seconds",
        "1",
        "--warmup",
        "0.2",
        "--json",
    ]);
    run.assert_ok("im, paced");
    assert_eq!(run.json()["check"]["passed"], true);
}

#[test]
fn fanout_mode_passes_its_exactly_once_check() {
    let server = im_server();
    let url = ws_url(&server, "/ws");
    let svg_dir = DataDir::new("bench-svg");
    std::fs::create_dir_all(&svg_dir.path).expect("make a folder for the chart");
    let svg = svg_dir.path.join("fanout.svg");
    let svg_arg = svg.to_string_lossy().into_owned();
    let run = bench(&[
        "fanout",
        "--url",
        &url,
        "--jwt-secret",
        SECRET,
        "--members",
        "60",
        "--senders",
        "2",
        "--depth",
        "4",
        "--seconds",
        "1",
        "--warmup",
        "0.3",
        "--replay",
        "60",
        "--svg",
        &svg_arg,
        "--json",
    ]);
    run.assert_ok("fanout, as fast as possible");
    let v = run.json();
    assert_eq!(v["check"]["passed"], true, "{v}");
    assert_eq!(num(&v, &["check", "verified_members"]), 60.0, "{v}");
    assert_eq!(num(&v, &["check", "replayed_members"]), 60.0, "{v}");
    let confirmed = num(&v, &["messages", "confirmed"]);
    assert!(confirmed > 0.0, "{v}");
    // Every confirmed message reached the 59 other members exactly once.
    assert_eq!(
        num(&v, &["messages", "delivered_once"]),
        confirmed * 59.0,
        "{v}"
    );
    // The group's creation is one entry in each of the 60 inboxes.
    assert_eq!(num(&v, &["messages", "group_entries"]), 60.0, "{v}");
    assert!(num(&v, &["deliveries_per_sec"]) > 0.0, "{v}");
    let doc = std::fs::read_to_string(&svg).expect("the chart was written");
    assert!(
        doc.starts_with("<svg") && doc.contains("<polyline"),
        "{doc}"
    );

    // Paced, several threads, the table form.
    let run = bench(&[
        "fanout",
        "--url",
        &url,
        "--jwt-secret",
        SECRET,
        "--members",
        "30",
        "--senders",
        "3",
        "--rate",
        "300",
        "--threads",
        "2",
        "--seconds",
        "1",
        "--warmup",
        "0.2",
    ]);
    run.assert_ok("fanout, paced");
    assert!(run.stdout.contains("PASSED"), "{}", run.stdout);
}

#[test]
fn clear_errors_and_exit_codes() {
    // Nobody listening: exit 1 with a hint.
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = free.local_addr().expect("addr").port();
    drop(free);
    let url = format!("ws://127.0.0.1:{port}/ws");
    let run = bench(&[
        "fanout",
        "--url",
        &url,
        "--jwt-secret",
        SECRET,
        "--members",
        "3",
        "--seconds",
        "1",
    ]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("is the server running"),
        "{}",
        run.stderr
    );

    // The wrong secret: the server refuses the token, and the bench says why.
    let server = im_server();
    let url = ws_url(&server, "/ws");
    let run = bench(&[
        "fanout",
        "--url",
        &url,
        "--jwt-secret",
        "not-the-secret",
        "--members",
        "3",
        "--seconds",
        "1",
    ]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("--jwt-secret"), "{}", run.stderr);

    // Bad flags: exit 2; --help: exit 0.
    assert_eq!(bench(&["fanout", "--members", "x"]).code, Some(2));
    assert_eq!(bench(&["nonsense"]).code, Some(2));
    let help = bench(&["fanout", "--help"]);
    assert_eq!(help.code, Some(0));
    assert!(help.stdout.contains("--members"), "{}", help.stdout);
}
