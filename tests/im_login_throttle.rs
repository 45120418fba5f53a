//! Failed logins are throttled per client address (issue 13, finding 10): after
//! `--auth-failures N` failed logins from one address within `--auth-failure-window`,
//! every upgrade from it is answered `429` with `Retry-After` until the window ends, even
//! with a valid token, and the log holds a couple of lines for the address, not one per
//! attempt.
//!
//! Every check is on a response the server has already written (it counts a failure
//! before it answers it), or on the log of a server that has exited (so it is complete):
//! nothing waits for time to pass. The windows are a minute long, far beyond a test's run.

mod im_support;

use std::path::PathBuf;
use std::time::Duration;

use im_support::*;

/// A server whose stderr goes to a file, read once it has exited. Fields drop in order:
/// the server is killed before the folder holding its log is removed.
struct Logged {
    server: Server,
    log: PathBuf,
    _logs: DataDir,
}

impl Logged {
    fn start(flags: &[&str]) -> Logged {
        let logs = DataDir::new("throttle-log");
        std::fs::create_dir_all(&logs.path).expect("create the log folder");
        let log = logs.path.join("server-stderr.log");
        let file = std::fs::File::create(&log).expect("create the server's stderr log");
        let data = DataDir::new("throttle");
        let mut args = vec!["--jwt-secret", SECRET];
        args.extend_from_slice(flags);
        let mut command = serve_command(&data.path, &args, &[]);
        command.stderr(file);
        let server = Server::run(command).owning(data);
        Logged {
            server,
            log,
            _logs: logs,
        }
    }

    /// Stops the server (SIGTERM: the logger drains before the process exits) and returns
    /// the lines that mention authentication.
    fn auth_lines(mut self) -> Vec<String> {
        let status = self.server.terminate(Duration::from_secs(15));
        let log = std::fs::read_to_string(&self.log).expect("the server's log");
        assert!(
            status.is_some(),
            "the server did not exit on SIGTERM; its log:\n{log}"
        );
        log.lines()
            .filter(|line| line.to_ascii_lowercase().contains("auth"))
            .map(str::to_owned)
            .collect()
    }
}

/// An upgrade to `/ws` with `token`, as `client` behind the trusted proxy when given:
/// the status and the response head. The connection is dropped.
fn upgrade(server: &Server, token: &str, client: Option<&str>) -> (u16, String) {
    let target = format!("/ws?token={token}");
    let headers: Vec<(&str, &str)> = client.map(|c| ("X-Forwarded-For", c)).into_iter().collect();
    let (status, head, _stream) = raw_upgrade(server.addr, &target, &headers);
    (status, head)
}

/// A token the server did not sign.
fn forged(user: &str) -> String {
    sign(&hs256_header(), &claims_for(user), b"not-the-server-secret")
}

/// The `Retry-After` value of a response head, if it has one.
fn retry_after(head: &str) -> Option<&str> {
    head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("retry-after")
            .then(|| value.trim())
    })
}

/// Asserts a `429` with a `Retry-After` of whole seconds in `1..=max_secs`, and no upgrade.
fn assert_throttled(status: u16, head: &str, max_secs: u64) {
    assert_eq!(status, 429, "expected 429 past the budget, got:\n{head}");
    let value = retry_after(head).unwrap_or_else(|| panic!("no Retry-After:\n{head}"));
    let secs: u64 = value
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After is not whole seconds: {value:?}"));
    assert!(
        (1..=max_secs).contains(&secs),
        "Retry-After {secs} outside 1..={max_secs}"
    );
    assert!(
        !head.to_ascii_lowercase().contains("sec-websocket-accept"),
        "no upgrade on a 429:\n{head}"
    );
}

#[test]
fn past_the_failure_budget_even_a_valid_token_gets_429_and_the_log_stays_short() {
    let logged = Logged::start(&["--auth-failures", "5", "--auth-failure-window", "60s"]);
    let server = &logged.server;

    // Five failures of different kinds: each one answered, each one counted.
    for bad in [
        forged("mallory"),
        forged("alice"),
        "not-a-token".to_owned(),
        String::new(),
        forged("bob"),
    ] {
        let (status, head) = upgrade(server, &bad, None);
        assert_eq!(
            status, 401,
            "within the budget a bad token is a 401:\n{head}"
        );
    }

    // The sixth upgrade is refused before its token is looked at: a valid one too.
    let (status, head) = upgrade(server, &token("alice"), None);
    assert_throttled(status, &head, 60);

    // And so is everything else from this address for the rest of the window.
    for _ in 0..20 {
        let (status, head) = upgrade(server, &forged("mallory"), None);
        assert_throttled(status, &head, 60);
    }

    // 26 attempts, 5 of them failures: at most the first failure, logged at once, and
    // one summary of the window (when it ends, or when the server stops).
    let lines = logged.auth_lines();
    assert!(
        !lines.is_empty(),
        "the first failure is logged at once; nothing mentions auth"
    );
    assert!(
        lines.len() <= 2,
        "{} auth lines for 26 attempts, expected at most 2:\n{}",
        lines.len(),
        lines.join("\n")
    );
}

#[test]
fn a_successful_login_does_not_reset_the_failure_count() {
    let server = Server::start(&["--auth-failures", "3", "--auth-failure-window", "60s"]);
    for _ in 0..2 {
        let (status, head) = upgrade(&server, &forged("mallory"), None);
        assert_eq!(status, 401, "{head}");
    }
    // A client holding one valid token logs in between its guesses...
    let (status, head) = upgrade(&server, &token("mallory"), None);
    assert_eq!(
        status, 101,
        "within the budget a valid token is accepted:\n{head}"
    );
    // ...and its failures still add up: the third is the last one answered.
    let (status, head) = upgrade(&server, &forged("alice"), None);
    assert_eq!(status, 401, "{head}");
    let (status, head) = upgrade(&server, &token("mallory"), None);
    assert_throttled(status, &head, 60);
}

/// Behind a `--trusted-proxy` each forwarded client has its own budget; an IPv6 client is
/// counted by its /64 (rotating through one's own /64 buys nothing), an IPv4-mapped one
/// as IPv4.
#[test]
fn each_client_address_has_its_own_budget() {
    let server = Server::start(&[
        "--auth-failures",
        "2",
        "--auth-failure-window",
        "60s",
        "--trusted-proxy",
        "127.0.0.1",
    ]);
    let from = |client: &str| upgrade(&server, &forged("mallory"), Some(client));

    for client in ["203.0.113.7", "::ffff:203.0.113.7"] {
        let (status, head) = from(client);
        assert_eq!(status, 401, "{client}: {head}");
    }
    let (status, head) = from("203.0.113.7");
    assert_throttled(status, &head, 60);

    // Another IPv4 client, and the proxy's own address, are untouched.
    let (status, head) = from("203.0.113.8");
    assert_eq!(status, 401, "another client's budget is its own:\n{head}");
    let (status, head) = upgrade(&server, &token("alice"), None);
    assert_eq!(status, 101, "the proxy itself is not the attacker:\n{head}");

    for client in ["2001:db8:1:2::1", "2001:db8:1:2:ffff::9"] {
        let (status, head) = from(client);
        assert_eq!(status, 401, "{client}: {head}");
    }
    let (status, head) = from("2001:db8:1:2:abcd::77");
    assert_throttled(status, &head, 60);
    let (status, head) = from("2001:db8:1:3::1");
    assert_eq!(status, 401, "the next /64 is another client:\n{head}");
}

#[test]
fn auth_failures_0_turns_the_throttle_off() {
    let server = Server::start(&["--auth-failures", "0"]);
    for i in 0..30 {
        let (status, head) = upgrade(&server, &forged("mallory"), None);
        assert_eq!(status, 401, "attempt {i}:\n{head}");
    }
    let (status, head) = upgrade(&server, &token("alice"), None);
    assert_eq!(status, 101, "{head}");
}

#[test]
fn the_default_budget_is_20_failures() {
    let server = Server::start(&[]);
    for i in 0..20 {
        let (status, head) = upgrade(&server, &forged("mallory"), None);
        assert_eq!(status, 401, "attempt {i}:\n{head}");
    }
    let (status, head) = upgrade(&server, &token("alice"), None);
    assert_throttled(status, &head, 60);
}
