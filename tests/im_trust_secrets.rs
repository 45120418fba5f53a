//! What the server trusts at start: a token secret long enough to be an HS256 key
//! (RFC 7518 §3.2), `courier secret` to make one, and dev login kept to what it is for:
//! never beside a real secret, never off loopback unless asked for twice, always loud.

mod im_support;

use std::process::Command;
use std::time::Duration;

use im_support::*;
use serde_json::Value;

/// A 31-byte secret: one short of the minimum.
const SHORT: &str = "0123456789abcdef0123456789abcde";

/// Asserts `command` exits non-zero without listening, and returns its stderr.
fn refused(command: Command) -> String {
    let output = output_within(command, Duration::from_secs(10));
    assert!(!output.status.success(), "must not start: {output:?}");
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("listening on"),
        "{output:?}"
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_secret_under_32_bytes_is_refused_from_the_flag_and_the_environment() {
    assert_eq!(SHORT.len(), 31);
    let dir = DataDir::new("weak");
    for stderr in [
        refused(serve_command(&dir.path, &["--jwt-secret", SHORT], &[])),
        refused(serve_command(
            &dir.path,
            &[],
            &[("COURIER_JWT_SECRET", SHORT)],
        )),
        refused(serve_command(&dir.path, &["--jwt-secret", "x"], &[])),
    ] {
        assert!(stderr.contains("at least 32"), "{stderr}");
        assert!(stderr.contains("courier secret"), "says how: {stderr}");
        assert!(stderr.contains("openssl rand -hex 32"), "{stderr}");
        assert!(
            !stderr.contains(SHORT),
            "the secret is not echoed: {stderr}"
        );
    }
    assert!(
        !dir.path.join("courier.db").exists() && !dir.path.exists(),
        "refused before the store is opened"
    );
    // Exactly 32 bytes is enough.
    let enough = format!("{SHORT}f");
    let server = Server::spawn(&dir.path, &["--jwt-secret", &enough], &[]);
    let target = format!(
        "/ws?token={}",
        courier::im::auth::issue("alice", 60, enough.as_bytes(), now_secs())
    );
    Client::open(server.addr, &target, &[]).welcomed("alice");
}

#[test]
fn courier_token_refuses_a_weak_secret_too() {
    let stderr = refused(courier_command(&["token", "alice", "--jwt-secret", SHORT]));
    assert!(stderr.contains("courier secret"), "{stderr}");
    let mut command = courier_command(&["token", "alice"]);
    command.env("COURIER_JWT_SECRET", SHORT);
    refused(command);
    let output = output_within(
        courier_command(&["token", "alice", "--jwt-secret", SECRET]),
        Duration::from_secs(10),
    );
    assert!(output.status.success(), "{output:?}");
}

#[test]
fn courier_secret_prints_a_fresh_32_byte_hex_secret_the_server_takes() {
    let make = || {
        let output = output_within(courier_command(&["secret"]), Duration::from_secs(10));
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let (first, second) = (make(), make());
    for printed in [&first, &second] {
        let secret = printed.strip_suffix('\n').expect("one line");
        assert_eq!(secret.len(), 64, "{printed:?}");
        assert!(
            secret
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
            "{printed:?}"
        );
    }
    assert_ne!(first, second, "fresh each time");
    assert_ne!(first.trim(), "0".repeat(64));
    // What it prints starts a server, and `courier token` signs with it.
    let secret = first.trim();
    let dir = DataDir::new("made");
    let server = Server::spawn(&dir.path, &[], &[("COURIER_JWT_SECRET", secret)]).owning(dir);
    let output = output_within(
        courier_command(&["token", "bob", "--jwt-secret", secret]),
        Duration::from_secs(10),
    );
    let token = String::from_utf8(output.stdout).unwrap();
    Client::open(server.addr, &format!("/ws?token={}", token.trim()), &[]).welcomed("bob");
    // Arguments are a mistake, not ignored.
    refused(courier_command(&["secret", "extra"]));
}

#[test]
fn dev_login_refuses_a_configured_secret() {
    let dir = DataDir::new("devsecret");
    for stderr in [
        refused(serve_command(
            &dir.path,
            &["--dev-login", "on", "--jwt-secret", SECRET],
            &[],
        )),
        refused(serve_command(
            &dir.path,
            &["--dev-login", "on"],
            &[("COURIER_JWT_SECRET", SECRET)],
        )),
    ] {
        assert!(stderr.contains("--dev-login"), "{stderr}");
        assert!(stderr.contains("secret"), "{stderr}");
        assert!(!stderr.contains(SECRET), "{stderr}");
    }
    assert!(
        !dir.path.join("dev-login.secret").exists(),
        "nothing made on the way to the refusal"
    );
}

#[test]
fn dev_login_off_loopback_needs_dev_login_public() {
    let dir = DataDir::new("devpublic");
    for listen in ["0.0.0.0:0", "[::]:0"] {
        let stderr = refused(serve_command(
            &dir.path,
            &["--dev-login", "on", "--listen", listen],
            &[],
        ));
        assert!(stderr.contains("loopback"), "{stderr}");
        assert!(
            stderr.contains("--dev-login-public"),
            "names the way out: {stderr}"
        );
    }
    // With the second flag it starts, says so loudly, and serves tokens.
    let public = [
        "--dev-login",
        "on",
        "--dev-login-public",
        "on",
        "--listen",
        "0.0.0.0:0",
    ];
    let lines = stderr_until_serving(serve_command(&dir.path, &public, &[]));
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" WARN ") && l.contains("DEV LOGIN IS PUBLIC")),
        "{lines:?}"
    );
    let server = Server::spawn(&dir.path, &public, &[]);
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], server.addr.port()));
    let (status, body) = http_get(local, "/dev/token?user=alice");
    assert_eq!(status, 200, "{body}");
}

#[test]
fn dev_login_on_loopback_needs_no_second_flag() {
    for listen in ["127.0.0.1:0", "127.0.0.2:0"] {
        let dir = DataDir::new("devloop");
        let command = serve_command(&dir.path, &["--dev-login", "on", "--listen", listen], &[]);
        let server = Server::run(command).owning(dir);
        let (status, body) = http_get(server.addr, "/dev/token?user=alice");
        assert_eq!(status, 200, "{listen}: {body}");
        let token: Value = serde_json::from_str(&body).unwrap();
        assert!(token["token"].is_string());
    }
}
