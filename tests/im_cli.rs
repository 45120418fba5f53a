//! The command line of PROTOCOL.md as the IM server's tests drive it: the secret (flag,
//! environment, or dev login), flags over `COURIER_*` variables, `--help`, signals, and the
//! `Origin` allow-list of the Transport section.

mod im_support;

use std::time::Duration;

use im_support::*;
use serde_json::Value;

#[test]
fn serve_without_a_secret_refuses_to_start() {
    let dir = DataDir::new("nosecret");
    let output = output_within(serve_command(&dir.path, &[], &[]), Duration::from_secs(5));
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--jwt-secret"),
        "says how to set one: {stderr}"
    );
    assert!(stderr.contains("COURIER_JWT_SECRET"), "{stderr}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("listening on"));
}

#[test]
fn the_secret_and_other_flags_come_from_the_environment_and_a_flag_wins() {
    let dir = DataDir::new("env");
    let env = [("COURIER_JWT_SECRET", SECRET), ("COURIER_HEARTBEAT", "5s")];
    let server = Server::spawn(&dir.path, &[], &env).owning(dir);
    let client = server.connect("alice");
    assert_eq!(
        client.welcome["heartbeat_ms"], 5_000,
        "COURIER_HEARTBEAT is read"
    );
    drop(client);
    drop(server);
    let dir = DataDir::new("env");
    let server = Server::spawn(&dir.path, &["--heartbeat", "7s"], &env).owning(dir);
    assert_eq!(
        server.connect("alice").welcome["heartbeat_ms"],
        7_000,
        "the flag wins"
    );
    // Durations in minutes are durations too.
    let server = Server::start(&["--heartbeat", "2m"]);
    assert_eq!(server.connect("alice").welcome["heartbeat_ms"], 120_000);
}

#[test]
fn bad_flag_values_refuse_to_start() {
    // A valid secret, so each start is refused for the flag under test, not for the secret.
    for args in [
        &["--jwt-secret", SECRET, "--synchronous", "sometimes"][..],
        &["--jwt-secret", SECRET, "--heartbeat", "25"],
        &["--jwt-secret", SECRET, "--no-such-flag", "1"],
        &["--jwt-secret", SECRET, "--dev-login", "maybe"],
        &["--jwt-secret", SECRET, "--dev-login-public", "yes"],
        &["--jwt-secret", SECRET, "--max-token-ttl", "forever"],
        &["--jwt-secret", SECRET, "--max-token-ttl", "500ms"],
        // A host name is resolved (localhost:9100 would start), but one without a port
        // cannot be listened on.
        &["--jwt-secret", SECRET, "--metrics-listen", "localhost"],
        &["--jwt-secret", SECRET, "--listen", "127.0.0.1"],
    ] {
        let dir = DataDir::new("badflag");
        let output = output_within(serve_command(&dir.path, args, &[]), Duration::from_secs(5));
        assert!(
            !output.status.success(),
            "{args:?} must not start: {output:?}"
        );
    }
}

#[test]
fn dev_login_serves_tokens_only_when_on() {
    let dir = DataDir::new("devlogin");
    let server = Server::spawn(&dir.path, &["--dev-login", "on"], &[]);
    let (status, body) = http_get(server.addr, "/dev/token?user=alice");
    assert_eq!(status, 200, "{body}");
    let token: Value = serde_json::from_str(&body).expect("JSON body");
    let token = token["token"].as_str().expect("token");
    Client::open(server.addr, &format!("/ws?token={token}"), &[]).welcomed("alice");
    // The secret is kept in the data folder (owner-only), so a page's saved token still
    // signs in after a restart.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path.join("dev-login.secret"))
        .expect("the dev secret is kept")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    drop(server);
    let server = Server::spawn(&dir.path, &["--dev-login", "on"], &[]).owning(dir);
    Client::open(server.addr, &format!("/ws?token={token}"), &[]).welcomed("alice");
    // A token signed with anything else is still refused (the secret is random).
    let (status, _, _) = raw_upgrade(
        server.addr,
        &format!("/ws?token={}", im_support::token("alice")),
        &[],
    );
    assert_eq!(status, 401, "the per-run secret is not the test secret");
    let (status, _) = http_get(server.addr, "/dev/token?user=bad%20user");
    assert_eq!(status, 400);

    // Off by default: no such route.
    let server = Server::start(&[]);
    let (status, _) = http_get(server.addr, "/dev/token?user=alice");
    assert_eq!(status, 404);
}

#[test]
fn dev_login_warns_loudly() {
    let dir = DataDir::new("devwarn");
    let lines = stderr_until_serving(serve_command(&dir.path, &["--dev-login", "on"], &[]));
    let warning = lines
        .iter()
        .find(|l| l.contains("DEV LOGIN IS ON"))
        .unwrap_or_else(|| panic!("no dev login warning before `listening on`: {lines:?}"));
    assert!(warning.contains(" WARN "), "logged as a warning: {warning}");
    assert!(warning.contains("/dev/token"), "{warning}");
    assert!(
        !lines.iter().any(|l| l.contains("DEV LOGIN IS PUBLIC")),
        "on loopback it is not public: {lines:?}"
    );
}

#[test]
fn sigint_and_sigterm_exit_0() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let mut server = Server::start(&[]);
        let mut client = server.connect("alice");
        server.send_signal(signal);
        assert_eq!(
            client.expect_close(WAIT),
            Some(1001),
            "clients get 1001 on shutdown"
        );
        // The server waits (bounded) for the TCP close after the close handshake.
        drop(client);
        let status = server.wait_exit(Duration::from_secs(5)).expect("exited");
        assert!(status.success(), "signal {signal}: {status:?}");
    }
}

fn serve_help() -> String {
    let output = output_within(
        {
            let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_courier"));
            command.args(["serve", "--help"]);
            command
        },
        Duration::from_secs(5),
    );
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn help_lists_the_serve_flags_with_defaults() {
    let help = serve_help();
    for (flag, default) in [
        ("--listen", "127.0.0.1:8080"),
        ("--data", "./courier-data"),
        ("--jwt-secret", ""),
        ("--heartbeat", "25s"),
        ("--idle-timeout", ""),
        ("--handshake-timeout", ""),
        ("--ack-timeout", "5s"),
        ("--ack-retries", "2"),
        ("--ack-retry-interval", "2s"),
        ("--max-message", ""),
        ("--max-connections", ""),
        ("--synchronous", "normal"),
        ("--dev-login", "off"),
    ] {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{flag} ")))
            .unwrap_or_else(|| panic!("{flag} missing from --help:\n{help}"));
        assert!(line.contains(&format!("default: {default}")), "{line}");
        let env = format!(
            "COURIER_{}",
            flag[2..].to_ascii_uppercase().replace('-', "_")
        );
        assert!(line.contains(&env), "{line}");
    }
}

#[test]
fn help_lists_every_flag_of_the_protocol() {
    let help = serve_help();
    for flag in ["--origin", "--trusted-proxy", "--recall-window"] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{flag} "))),
            "{flag} missing from `courier serve --help`"
        );
    }
}

#[test]
fn an_origin_off_the_allow_list_is_403() {
    let dir = DataDir::new("origin");
    let server = Server::spawn(
        &dir.path,
        &["--jwt-secret", SECRET, "--origin", "https://chat.example"],
        &[],
    )
    .owning(dir);
    let target = format!("/ws?token={}", token("alice"));
    let (status, head, _) =
        raw_upgrade(server.addr, &target, &[("Origin", "https://evil.example")]);
    assert_eq!(status, 403, "{head}");
    let (status, head, _) =
        raw_upgrade(server.addr, &target, &[("Origin", "https://chat.example")]);
    assert_eq!(status, 101, "{head}");
    Client::open(server.addr, &target, &[("Origin", "https://chat.example")]).welcomed("alice");
    // No Origin (a native client) is not a browser and not refused.
    Client::open(server.addr, &target, &[]).welcomed("alice");
}
