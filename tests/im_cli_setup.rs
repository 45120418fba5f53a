//! The command line as someone new meets it (issue 15): the secret kept in a file that
//! `serve` and `token` both read, `--help` at each level, values that cannot work refused
//! with the reason, errors that name what the user wrote and come before anything else,
//! host names in `--listen`, the chat page's URL, and a plain `GET /ws` answered `426`.

mod im_support;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use im_support::*;

fn succeeds(command: Command) -> String {
    let output = output_within(command, Duration::from_secs(10));
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// Asserts `command` exits 2 without listening, and returns its stderr.
fn refused(command: Command) -> String {
    let output = output_within(command, Duration::from_secs(10));
    assert_eq!(output.status.code(), Some(2), "must not start: {output:?}");
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("listening on"),
        "{output:?}"
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn secret_file(dir: &Path, mode: u32, content: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("jwt-secret");
    std::fs::write(&path, content).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temp path")
}

#[test]
fn secret_out_makes_an_owner_only_file_once_that_serve_and_token_share() {
    let dir = DataDir::new("secretfile");
    // A folder that does not exist yet: made too, owner-only.
    let file = dir.path.join("keys").join("jwt-secret");
    let said = succeeds(courier_command(&["secret", "--out", path_str(&file)]));
    assert!(said.contains(path_str(&file)), "{said}");
    assert!(!said.contains(&std::fs::read_to_string(&file).unwrap().trim().to_owned()));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(file.parent().unwrap()), 0o700);
    let written = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        written.len(),
        65,
        "64 hex digits and a newline: {written:?}"
    );

    // Never over an existing file: it may be the secret every token in use was signed with.
    let stderr = refused(courier_command(&["secret", "--out", path_str(&file)]));
    assert!(stderr.contains("exists"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        written,
        "unchanged"
    );

    // The server and `courier token`, two processes started apart, sign with the same file.
    let data = DataDir::new("secretfile-data");
    let server =
        Server::spawn(&data.path, &["--jwt-secret-file", path_str(&file)], &[]).owning(data);
    let token = succeeds({
        let mut c = courier_command(&["token", "alice"]);
        c.env("COURIER_JWT_SECRET_FILE", &file);
        c
    });
    Client::open(server.addr, &format!("/ws?token={}", token.trim()), &[]).welcomed("alice");
    // The file's content less its newline is the secret, as `$(cat FILE)` would give it.
    let inline = courier::im::auth::issue("bob", 60, written.trim().as_bytes(), now_secs());
    Client::open(server.addr, &format!("/ws?token={inline}"), &[]).welcomed("bob");
}

#[test]
fn a_secret_file_is_refused_when_missing_short_empty_or_open_to_other_users() {
    let dir = DataDir::new("badsecret");
    let missing = dir.path.join("nope");
    let stderr = refused(serve_command(
        &dir.path.join("data"),
        &["--jwt-secret-file", path_str(&missing)],
        &[],
    ));
    assert!(
        stderr.contains(path_str(&missing)),
        "names the file: {stderr}"
    );
    assert!(stderr.contains("--jwt-secret-file"), "{stderr}");
    assert!(
        stderr.contains("courier secret --out"),
        "says how: {stderr}"
    );

    let good = "f".repeat(64);
    for (mode, content, says) in [
        (0o600, "0123456789\n", "at least 32"),
        (0o600, "\n", "empty"),
        (0o644, good.as_str(), "chmod 600"),
        (0o602, good.as_str(), "write"),
    ] {
        let file = secret_file(&dir.path, mode, content);
        for command in [
            serve_command(
                &dir.path.join("data"),
                &["--jwt-secret-file", path_str(&file)],
                &[],
            ),
            courier_command(&["token", "alice", "--jwt-secret-file", path_str(&file)]),
        ] {
            let stderr = refused(command);
            assert!(stderr.contains(says), "mode {mode:o}: {stderr}");
            assert!(stderr.contains(path_str(&file)), "{stderr}");
            assert!(
                !stderr.contains(&good),
                "the secret is not echoed: {stderr}"
            );
        }
    }
    // From the variable, the error names the variable.
    let file = secret_file(&dir.path, 0o640, "short");
    let stderr = refused(serve_command(
        &dir.path.join("data"),
        &[],
        &[("COURIER_JWT_SECRET_FILE", path_str(&file))],
    ));
    assert!(stderr.contains("COURIER_JWT_SECRET_FILE="), "{stderr}");
    assert!(
        !dir.path.join("data").exists(),
        "refused before the store is opened"
    );

    // Group-readable is allowed (a service group, or systemd's credential ACL), and one
    // trailing CRLF is dropped like a newline.
    let file = secret_file(&dir.path, 0o640, &format!("{good}\r\n"));
    let data = DataDir::new("badsecret-ok");
    let server =
        Server::spawn(&data.path, &["--jwt-secret-file", path_str(&file)], &[]).owning(data);
    let token = courier::im::auth::issue("carol", 60, good.as_bytes(), now_secs());
    Client::open(server.addr, &format!("/ws?token={token}"), &[]).welcomed("carol");
}

#[test]
fn a_secret_and_a_secret_file_together_are_refused() {
    let dir = DataDir::new("bothsecrets");
    let file = secret_file(&dir.path, 0o600, &"a".repeat(40));
    let data = dir.path.join("data");
    for (args, env, names) in [
        (
            vec!["--jwt-secret", SECRET, "--jwt-secret-file", path_str(&file)],
            vec![],
            ["--jwt-secret", "--jwt-secret-file"],
        ),
        (
            vec!["--jwt-secret-file", path_str(&file)],
            vec![("COURIER_JWT_SECRET", SECRET)],
            ["COURIER_JWT_SECRET", "--jwt-secret-file"],
        ),
    ] {
        let stderr = refused(serve_command(&data, &args, &env));
        for name in names {
            assert!(stderr.contains(name), "{stderr}");
        }
        assert!(stderr.contains("both"), "{stderr}");
        let mut token = courier_command(&["token", "alice"]);
        token.args(&args).envs(env.iter().copied());
        assert!(refused(token).contains("both"));
    }
    // Dev login refuses a secret file as it refuses a secret.
    let stderr = refused(serve_command(
        &data,
        &["--dev-login", "on", "--jwt-secret-file", path_str(&file)],
        &[],
    ));
    assert!(stderr.contains("--jwt-secret-file is set"), "{stderr}");
}

#[test]
fn help_lists_each_command_once_and_each_command_its_flags() {
    for args in [&["--help"][..], &["-h"], &["help"]] {
        let usage = succeeds(courier_command(args));
        for command in ["serve", "token USER", "secret", "echo", "--version"] {
            let lines = usage
                .lines()
                .filter(|l| l.trim_start().starts_with(&format!("{command} ")))
                .count();
            assert_eq!(lines, 1, "{args:?}: `{command}` once:\n{usage}");
        }
        assert!(usage.contains("courier-bench"), "{usage}");
        assert!(usage.contains("cargo build --release"), "{usage}");
        assert!(!usage.contains("--heartbeat"), "not serve's flags: {usage}");
    }
    for (command, flags) in [
        (
            "serve",
            &["--listen", "--jwt-secret-file", "--heartbeat", "--max-body"][..],
        ),
        ("echo", &["--listen", "--max-message"]),
        ("token", &["--ttl", "--jwt-secret", "--jwt-secret-file"]),
        ("secret", &["--out"]),
    ] {
        let own = succeeds(courier_command(&[command, "--help"]));
        assert_eq!(own, succeeds(courier_command(&["help", command])));
        assert!(own.starts_with("usage: courier "), "{own}");
        assert!(own.lines().next().unwrap().contains(command), "{own}");
        for flag in flags {
            assert!(
                own.lines()
                    .any(|l| l.trim_start().starts_with(&format!("{flag} "))),
                "{command}: {flag} missing:\n{own}"
            );
        }
    }
    let token_help = succeeds(courier_command(&["token", "--help"]));
    assert!(!token_help.contains("--heartbeat"), "{token_help}");
    refused(courier_command(&["help", "nope"]));
}

#[test]
fn help_into_a_closed_pipe_is_not_a_panic() {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills both descriptors; each is owned exactly once below.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // The read end is closed before courier starts, so its write fails with EPIPE
    // whatever the scheduling (Rust programs ignore SIGPIPE).
    drop(unsafe { OwnedFd::from_raw_fd(fds[0]) });
    let write_end = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    let mut command = courier_command(&["serve", "--help"]);
    command
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    drop(command);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn values_that_cannot_work_are_refused_with_the_reason() {
    let dir = DataDir::new("cannotwork");
    for (args, says) in [
        (&["--max-message", "0"][..], "--max-message 0"),
        (
            &["--max-body", "2MiB"],
            "--max-body 2MiB is not below --max-message 1MiB",
        ),
        (
            &["--max-message", "8KiB"],
            "--max-body 16KiB is not below --max-message 8KiB",
        ),
        (&["--max-body", "0"], "--max-body 0"),
        (&["--heartbeat", "0s"], "--heartbeat 0s"),
        (&["--echo-max-message", "0"], "--echo-max-message 0"),
    ] {
        let mut all = vec!["--jwt-secret", SECRET];
        all.extend_from_slice(args);
        let stderr = refused(serve_command(&dir.path, &all, &[]));
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    refused(courier_command(&[
        "echo",
        "--listen",
        "127.0.0.1:0",
        "--max-message",
        "0",
    ]));
    for ttl in ["0s", "999ms"] {
        let stderr = refused(courier_command(&[
            "token",
            "alice",
            "--jwt-secret",
            SECRET,
            "--ttl",
            ttl,
        ]));
        assert!(stderr.contains(&format!("--ttl {ttl}")), "{stderr}");
        assert!(stderr.contains("at least 1s"), "{stderr}");
    }
    succeeds(courier_command(&[
        "token",
        "alice",
        "--jwt-secret",
        SECRET,
        "--ttl",
        "1s",
    ]));
}

#[test]
fn a_bad_variable_is_named_as_the_variable() {
    let dir = DataDir::new("badenv");
    let stderr = refused(serve_command(
        &dir.path,
        &["--jwt-secret", SECRET],
        &[("COURIER_IDLE_TIMEOUT", "5")],
    ));
    assert!(stderr.contains("COURIER_IDLE_TIMEOUT: "), "{stderr}");
    assert!(!stderr.contains("--idle-timeout"), "{stderr}");
    let stderr = refused(serve_command(
        &dir.path,
        &["--jwt-secret", SECRET],
        &[("COURIER_MAX_MESSAGE", "0")],
    ));
    assert!(stderr.contains("COURIER_MAX_MESSAGE=0"), "{stderr}");
}

#[test]
fn a_failed_start_says_why_first_and_never_that_it_stopped() {
    let dir = DataDir::new("failstart");
    std::fs::create_dir_all(&dir.path).unwrap();
    // --data names a file.
    let file = dir.path.join("a-file");
    std::fs::write(&file, "").unwrap();
    let stderr = refused(serve_command(&file, &["--jwt-secret", SECRET], &[]));
    assert!(stderr.contains(path_str(&file)), "names the path: {stderr}");
    assert!(stderr.contains("is a file, not a folder"), "{stderr}");
    assert!(!stderr.contains("stopped"), "{stderr}");
    assert!(
        stderr.starts_with("courier: "),
        "the error comes first: {stderr}"
    );

    // --listen on a port that is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let mut command = serve_command(
        &dir.path.join("data"),
        &["--jwt-secret", SECRET, "--listen", &port],
        &[],
    );
    command.env("COURIER_LOG", "debug");
    let stderr = refused(command);
    assert!(
        stderr.contains(&format!("cannot listen on {port}")),
        "{stderr}"
    );
    assert!(!stderr.contains("stopped"), "{stderr}");
}

#[test]
fn listen_takes_a_host_name_and_a_bare_port_and_says_what_it_bound() {
    let dir = DataDir::new("hostname");
    let mut command = serve_command(&dir.path, &["--jwt-secret", SECRET], &[]);
    // The last --listen wins over the helper's 127.0.0.1:0.
    command.args(["--listen", "localhost:0"]);
    let lines = stderr_until_serving(command);
    let serving = lines.iter().find(|l| l.contains("serving on")).unwrap();
    assert!(
        serving.contains("serving on 127.0.0.1:")
            && serving.contains("(from --listen localhost:0)"),
        "{serving}"
    );
    let mut command = serve_command(&dir.path, &["--jwt-secret", SECRET], &[]);
    command.args(["--listen", "localhost:0"]);
    let server = Server::run(command);
    assert!(server.addr.ip().is_loopback(), "{}", server.addr);
    server.connect("alice").assert_alive();
    drop(server);
    // `:PORT` is loopback, not every interface.
    let mut command = serve_command(&dir.path, &["--jwt-secret", SECRET], &[]);
    command.args(["--listen", ":0"]);
    let server = Server::run(command).owning(dir);
    assert_eq!(server.addr.ip().to_string(), "127.0.0.1");
    // And the metrics listener takes the same forms.
    let data = DataDir::new("hostname-metrics");
    let command = serve_command(
        &data.path,
        &["--jwt-secret", SECRET, "--metrics-listen", "localhost:0"],
        &[],
    );
    let (server, metrics) = Server::run_with_metrics(command);
    let server = server.owning(data);
    assert!(metrics.ip().is_loopback());
    assert_eq!(http_get(metrics, "/healthz").0, 200);
    assert_eq!(http_get(server.addr, "/healthz").0, 200);
}

/// The stdout lines of a `courier serve` up to and including `chat page:`.
fn stdout_until_page(mut command: Command) -> (std::process::Child, Vec<String>) {
    use std::io::BufRead;
    let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.starts_with("chat page: ")) {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => lines.push(line),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no `chat page:` line within 15 s: {lines:?}");
            }
        }
    }
    (child, lines)
}

#[test]
fn serve_prints_the_chat_page_url_after_listening_on() {
    for (listen, host) in [("127.0.0.1:0", "127.0.0.1"), ("0.0.0.0:0", "127.0.0.1")] {
        let dir = DataDir::new("pageurl");
        let mut command = serve_command(&dir.path, &["--jwt-secret", SECRET], &[]);
        command.args(["--listen", listen]);
        let (mut child, lines) = stdout_until_page(command);
        let _ = child.kill();
        let _ = child.wait();
        let listening = lines
            .iter()
            .position(|l| l.starts_with("listening on "))
            .expect("`listening on` is still printed");
        let page = lines
            .iter()
            .position(|l| l.starts_with("chat page: "))
            .unwrap();
        assert!(listening < page, "{lines:?}");
        let port = lines[listening].rsplit(':').next().unwrap();
        assert_eq!(
            lines[page],
            format!("chat page: http://{host}:{port}/"),
            "{listen}: {lines:?}"
        );
    }
}

/// A plain request (no upgrade): the whole response head and body.
fn plain_get(addr: std::net::SocketAddr, target: &str) -> (String, String) {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(stream, "GET {target} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    // The server closes after a plain response.
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a head");
    (head.to_owned(), body.to_owned())
}

#[test]
fn a_plain_get_of_a_websocket_endpoint_is_426_saying_what_it_is() {
    let server = Server::start(&["--echo", "on"]);
    for (path, says) in [("/ws", "WebSocket endpoint"), ("/echo", "echo endpoint")] {
        let (head, body) = plain_get(server.addr, path);
        assert_eq!(parse_status(&head), 426, "{head}");
        assert!(head.contains("\r\nUpgrade: websocket"), "{head}");
        assert!(head.contains("\r\nConnection: Upgrade, close"), "{head}");
        assert!(body.contains(says), "{body}");
    }
    // The upgrade itself is unchanged.
    server.connect("alice").assert_alive();
    // Without --echo, /echo is nothing.
    let server = Server::start(&[]);
    assert_eq!(http_get(server.addr, "/echo").0, 404);
    assert_eq!(parse_status(&plain_get(server.addr, "/ws").0), 426);
}
