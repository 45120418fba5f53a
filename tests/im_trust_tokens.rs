//! The optional token checks a server can ask for beyond the signature: `--max-token-ttl`,
//! `--token-audience` and `--token-issuer` (as Centrifugo offers them). A token that fails
//! one is refused at the upgrade with `401`, like any other bad token.

mod im_support;

use im_support::*;
use serde_json::{json, Value};

/// The upgrade with this token in the query: its status, and the body of a refusal.
fn upgrade_with(server: &Server, token: &str) -> (u16, String) {
    let (status, head, mut stream) = raw_upgrade(server.addr, &format!("/ws?token={token}"), &[]);
    if status == 101 {
        return (status, head);
    }
    (status, read_body(&head, &mut stream))
}

fn signed(claims: Value) -> String {
    sign(&hs256_header(), &claims, SECRET.as_bytes())
}

fn expiring_in(secs: u64) -> String {
    signed(json!({"sub": "alice", "iat": now_secs(), "exp": now_secs() + secs}))
}

#[test]
fn max_token_ttl_refuses_tokens_that_live_longer() {
    // Past the failed-login budget's reach: every refusal here is a 401 for the token.
    let server = Server::start(&["--max-token-ttl", "1h", "--auth-failures", "0"]);
    let (status, body) = upgrade_with(&server, &expiring_in(30 * 24 * 3600));
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("lifetime"), "{body}");
    let (status, body) = upgrade_with(&server, &expiring_in(3 * 3600));
    assert_eq!(status, 401, "{body}");
    // Within the maximum (and at it) a token passes.
    assert_eq!(upgrade_with(&server, &expiring_in(3600)).0, 101);
    assert_eq!(upgrade_with(&server, &expiring_in(60)).0, 101);
    // A token with no exp was never valid; with the flag it still is not.
    let (status, _) = upgrade_with(&server, &signed(json!({"sub": "alice"})));
    assert_eq!(status, 401);

    // Without the flag, as before: a month-long token passes.
    let server = Server::start(&[]);
    assert_eq!(upgrade_with(&server, &expiring_in(30 * 24 * 3600)).0, 101);
}

#[test]
fn token_audience_must_be_in_aud_as_a_string_or_in_an_array() {
    let server = Server::start(&["--token-audience", "chat", "--auth-failures", "0"]);
    let with_aud =
        |aud: Value| signed(json!({"sub": "alice", "exp": now_secs() + 600, "aud": aud}));
    for aud in [json!("chat"), json!(["chat"]), json!(["billing", "chat"])] {
        let (status, body) = upgrade_with(&server, &with_aud(aud.clone()));
        assert_eq!(status, 101, "{aud}: {body}");
    }
    for aud in [
        json!("billing"),
        json!("Chat"),
        json!(["billing"]),
        json!([]),
        json!(7),
    ] {
        let (status, body) = upgrade_with(&server, &with_aud(aud.clone()));
        assert_eq!(status, 401, "{aud}: {body}");
        assert!(body.contains("audience"), "{body}");
    }
    // No aud at all: refused, since the server asks for one.
    let (status, body) = upgrade_with(&server, &token("alice"));
    assert_eq!(status, 401, "{body}");
}

#[test]
fn token_issuer_must_match_exactly() {
    let issuer = "https://login.example";
    let server = Server::start(&["--token-issuer", issuer, "--auth-failures", "0"]);
    let with_iss =
        |iss: Value| signed(json!({"sub": "alice", "exp": now_secs() + 600, "iss": iss}));
    assert_eq!(upgrade_with(&server, &with_iss(json!(issuer))).0, 101);
    for iss in [
        json!("https://login.example/"),
        json!("https://evil.example"),
        json!([issuer]),
    ] {
        let (status, body) = upgrade_with(&server, &with_iss(iss.clone()));
        assert_eq!(status, 401, "{iss}: {body}");
        assert!(body.contains("issuer"), "{body}");
    }
    assert_eq!(upgrade_with(&server, &token("alice")).0, 401, "no iss");
}

/// `courier token` writes the claims the same `COURIER_TOKEN_*` variables make the server
/// ask for, so one environment mints and checks.
#[test]
fn courier_token_writes_the_audience_and_issuer_the_server_asks_for() {
    let env = [
        ("COURIER_JWT_SECRET", SECRET),
        ("COURIER_TOKEN_AUDIENCE", "chat"),
        ("COURIER_TOKEN_ISSUER", "courier-test"),
        ("COURIER_MAX_TOKEN_TTL", "2h"),
    ];
    let dir = DataDir::new("policy-env");
    let server = Server::spawn(&dir.path, &[], &env).owning(dir);
    let mut command = courier_command(&["token", "carol", "--ttl", "1h"]);
    command.envs(env);
    let output = command
        .stdout(std::process::Stdio::piped())
        .output()
        .expect("courier token");
    assert!(output.status.success(), "{output:?}");
    let minted = String::from_utf8(output.stdout).unwrap();
    let (status, head) = upgrade_with(&server, minted.trim());
    assert_eq!(status, 101, "{head}");
    // The test's own token carries neither claim: refused by the same server.
    assert_eq!(upgrade_with(&server, &token("carol")).0, 401);
}

/// A dev-login token carries what the server's own checks ask for, and lives no longer
/// than `--max-token-ttl`, so dev login keeps working with them set.
#[test]
fn dev_tokens_pass_the_servers_own_checks() {
    let dir = DataDir::new("policy-dev");
    let args = [
        "--dev-login",
        "on",
        "--max-token-ttl",
        "10m",
        "--token-audience",
        "chat",
        "--token-issuer",
        "dev",
    ];
    let server = Server::spawn(&dir.path, &args, &[]).owning(dir);
    let (status, body) = http_get(server.addr, "/dev/token?user=alice");
    assert_eq!(status, 200, "{body}");
    let token: Value = serde_json::from_str(&body).unwrap();
    let token = token["token"].as_str().unwrap();
    Client::open(server.addr, &format!("/ws?token={token}"), &[]).welcomed("alice");
}

#[test]
fn help_documents_the_token_checks() {
    let output = courier_command(&["serve", "--help"])
        .stdout(std::process::Stdio::piped())
        .output()
        .expect("courier serve --help");
    let help = String::from_utf8_lossy(&output.stdout);
    for (flag, default, env) in [
        ("--max-token-ttl", "default: off", "COURIER_MAX_TOKEN_TTL"),
        ("--token-audience", "default: ]", "COURIER_TOKEN_AUDIENCE"),
        ("--token-issuer", "default: ]", "COURIER_TOKEN_ISSUER"),
        (
            "--dev-login-public",
            "default: off",
            "COURIER_DEV_LOGIN_PUBLIC",
        ),
        ("--metrics-listen", "default: ]", "COURIER_METRICS_LISTEN"),
    ] {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{flag} ")))
            .unwrap_or_else(|| panic!("{flag} missing from --help:\n{help}"));
        assert!(line.contains(default) && line.contains(env), "{line}");
    }
}
