//! Authentication at the handshake (PROTOCOL.md, Transport): an HS256 JWT in `?token=` or
//! `Authorization: Bearer`, `alg` pinned, `exp` required, `sub` a valid user id; any fault
//! is a `401` and no upgrade. The user is the token's, whatever a message body says.

mod im_support;

use std::io::Read;
use std::time::Duration;

use im_support::*;
use serde_json::json;

/// Asserts the handshake to `target` with `headers` is refused with 401 and no upgrade.
fn assert_refused(server: &Server, target: &str, headers: &[(&str, &str)]) {
    let (status, head, mut stream) = raw_upgrade(server.addr, target, headers);
    assert_eq!(
        status, 401,
        "expected 401 for {target} {headers:?}, got:\n{head}"
    );
    let lower = head.to_ascii_lowercase();
    assert!(
        !lower.contains("sec-websocket-accept"),
        "no upgrade on a 401:\n{head}"
    );
    assert!(
        !lower.contains("upgrade: websocket"),
        "no upgrade on a 401:\n{head}"
    );
    // Nothing after the refusal is a WebSocket frame: the body (if any), then the end.
    let length: usize = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().expect("content-length"));
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("401 body");
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(rest.is_empty(), "bytes after the 401: {rest:?}");
}

fn refused_with_token(server: &Server, token: &str) {
    assert_refused(server, &format!("/ws?token={token}"), &[]);
    let bearer = format!("Bearer {token}");
    assert_refused(server, "/ws", &[("Authorization", &bearer)]);
}

#[test]
fn missing_token_is_401() {
    let server = Server::start(&[]);
    assert_refused(&server, "/ws", &[]);
    assert_refused(&server, "/ws?token=", &[]);
    assert_refused(&server, "/ws", &[("Authorization", "Bearer")]);
    // A different scheme is not a token.
    assert_refused(&server, "/ws", &[("Authorization", "Basic YWxpY2U6cHc=")]);
    // And the tungstenite client sees the same refusal.
    let err = ws_open(server.addr, "/ws", &[]).map(|_| ()).unwrap_err();
    assert_eq!(err, "http 401");
}

#[test]
fn bad_signature_is_401() {
    let server = Server::start(&[]);
    // Signed with another secret.
    let foreign = sign(
        &hs256_header(),
        &claims_for("alice"),
        b"not-the-server-secret",
    );
    refused_with_token(&server, &foreign);
    // A valid token whose payload was swapped for another user's.
    let good = token("alice");
    let parts: Vec<&str> = good.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(claims_for("mallory").to_string()),
        parts[2]
    );
    refused_with_token(&server, &forged);
    // A flipped signature byte.
    let mut sig = parts[2].to_owned();
    let first = if sig.starts_with('A') { "B" } else { "A" };
    sig.replace_range(0..1, first);
    refused_with_token(&server, &format!("{}.{}.{sig}", parts[0], parts[1]));
    // No signature at all, and garbage.
    refused_with_token(&server, &format!("{}.{}.", parts[0], parts[1]));
    refused_with_token(&server, "not.a.jwt");
    refused_with_token(&server, "garbage");
}

#[test]
fn expired_token_is_401() {
    let server = Server::start(&[]);
    let now = now_secs();
    // Well past any clock leeway.
    let expired = json!({"sub": "alice", "iat": now - 7200, "exp": now - 3600});
    refused_with_token(&server, &sign(&hs256_header(), &expired, SECRET.as_bytes()));
    // `exp` is required.
    let no_exp = json!({"sub": "alice", "iat": now});
    refused_with_token(&server, &sign(&hs256_header(), &no_exp, SECRET.as_bytes()));
    // `nbf` in the future (well past the leeway) is not valid yet.
    let early = json!({"sub": "alice", "exp": now + 7200, "nbf": now + 3600});
    refused_with_token(&server, &sign(&hs256_header(), &early, SECRET.as_bytes()));
    // `courier token --ttl` issues what the server takes; a valid one goes through.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["token", "carol", "--jwt-secret", SECRET, "--ttl", "1h"])
        .output()
        .expect("courier token");
    assert!(output.status.success(), "courier token: {output:?}");
    let issued = String::from_utf8(output.stdout).unwrap();
    let client = Client::open(server.addr, &format!("/ws?token={}", issued.trim()), &[]);
    client.welcomed("carol");
}

#[test]
fn alg_none_is_401() {
    // Two dozen forged tokens from one address: past the failed-login budget (tested in
    // im_login_throttle.rs), which would answer 429 before the token is looked at.
    let server = Server::start(&["--auth-failures", "0"]);
    let claims = claims_for("alice");
    for alg in ["none", "None", "NONE", "hs256", "HS512", ""] {
        let header = json!({"alg": alg, "typ": "JWT"});
        let unsigned = format!("{}.{}.", b64(header.to_string()), b64(claims.to_string()));
        refused_with_token(&server, &unsigned);
        // Even with a valid HMAC over it: the header does not pick the algorithm.
        refused_with_token(&server, &sign(&header, &claims, SECRET.as_bytes()));
    }
    // No `alg` at all.
    let header = json!({"typ": "JWT"});
    refused_with_token(&server, &sign(&header, &claims, SECRET.as_bytes()));
}

#[test]
fn rs256_header_is_401() {
    let server = Server::start(&[]);
    let claims = claims_for("alice");
    // The key-confusion attack: an RS256/ES256 header with an HMAC made with the secret.
    for alg in ["RS256", "ES256", "PS256"] {
        let header = json!({"alg": alg, "typ": "JWT"});
        refused_with_token(&server, &sign(&header, &claims, SECRET.as_bytes()));
    }
}

#[test]
fn invalid_sub_is_401() {
    let server = Server::start(&[]);
    let now = now_secs();
    let long = "a".repeat(65);
    let subs = [
        json!("bad user"),
        json!("a/b"),
        json!(""),
        json!(long),
        json!("ünï"),
        json!(42),
        json!(null),
    ];
    for sub in subs {
        let claims = json!({"sub": sub, "exp": now + 3600});
        refused_with_token(&server, &sign(&hs256_header(), &claims, SECRET.as_bytes()));
    }
    let no_sub = json!({"exp": now + 3600});
    refused_with_token(&server, &sign(&hs256_header(), &no_sub, SECRET.as_bytes()));
    // The longest valid id and every allowed character are fine.
    let max = "A".repeat(64);
    Client::connect(server.addr, &max);
    Client::connect(server.addr, "a-b_c.D9");
}

#[test]
fn token_in_query_works() {
    let server = Server::start(&[]);
    let client = Client::connect(server.addr, "alice");
    let welcome = &client.welcome;
    assert_eq!(welcome["user"], "alice");
    assert!(welcome["conn"].is_string(), "conn id: {welcome}");
    assert_eq!(welcome["heartbeat_ms"], 25_000);
    assert_eq!(welcome["inbox_seq"], 0);
}

#[test]
fn token_in_bearer_header_works() {
    let server = Server::start(&[]);
    let bearer = format!("Bearer {}", token("bob"));
    let client = Client::open(server.addr, "/ws", &[("Authorization", &bearer)]).welcomed("bob");
    assert_eq!(client.welcome["inbox_seq"], 0);
    // The header wins over the query, and the scheme is case-insensitive.
    let bearer = format!("bearer {}", token("carol"));
    let target = format!("/ws?token={}", token("dave"));
    Client::open(server.addr, &target, &[("Authorization", &bearer)]).welcomed("carol");
}

#[test]
fn subprotocol_is_echoed_when_offered() {
    let server = Server::start(&[]);
    let target = format!("/ws?token={}", token("alice"));
    let (ws, response) = ws_open(
        server.addr,
        &target,
        &[("Sec-WebSocket-Protocol", "courier.v1")],
    )
    .unwrap();
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.as_bytes()),
        Some(&b"courier.v1"[..])
    );
    drop(ws);
    // Among others, in a list (tungstenite does not trim list items, so raw TCP here).
    let (status, head, _) = raw_upgrade(
        server.addr,
        &target,
        &[("Sec-WebSocket-Protocol", "chat, courier.v1")],
    );
    assert_eq!(status, 101, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-protocol: courier.v1\r\n"),
        "{head}"
    );
    // Not offered: not sent.
    let (_, response) = ws_open(server.addr, &target, &[]).unwrap();
    assert!(response.headers().get("sec-websocket-protocol").is_none());
}

#[test]
fn from_field_in_send_body_is_ignored() {
    let server = Server::start(&[]);
    let mut bob = server.connect("bob");
    let mut mallory = server.connect("mallory");
    mallory.send(json!({
        "type": "send", "cid": "c1", "to": "user:bob", "body": "trust me",
        "from": "alice", "sender": "alice", "user": "alice",
    }));
    let sent = mallory.expect("sent");
    assert_eq!(
        sent["conv"], "dm:bob:mallory",
        "the conversation is the token user's: {sent}"
    );
    let msg = bob.expect("msg");
    assert_eq!(msg["from"], "mallory", "{msg}");
    assert_eq!(msg["conv"], "dm:bob:mallory", "{msg}");
    // Alice's inbox got nothing.
    let mut alice = server.connect("alice");
    assert_eq!(alice.welcome["inbox_seq"], 0);
    let (msgs, synced) = alice.sync_page(0, None);
    assert!(msgs.is_empty(), "{msgs:?}");
    assert_eq!(synced["head"], 0);
    // And bob's stored copy says mallory too.
    let mut bob2 = server.connect("bob");
    let (msgs, _) = bob2.sync_page(0, None);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["from"], "mallory");
}

/// Per-address limits count the client's address: the TCP peer's own, unless that peer is
/// a `--trusted-proxy`, whose `X-Forwarded-For` then names the client.
#[test]
fn x_forwarded_for_counts_only_from_a_trusted_proxy() {
    let target = format!("/ws?token={}", token("alice"));
    let upgrade = |server: &Server, client: &str| {
        let (status, head, stream) =
            raw_upgrade(server.addr, &target, &[("X-Forwarded-For", client)]);
        (status, head, stream)
    };

    // Untrusted peer: the header is ignored, so both connections are 127.0.0.1's.
    let server = Server::start(&["--max-per-address", "1"]);
    let (status, head, _first) = upgrade(&server, "203.0.113.7");
    assert_eq!(status, 101, "{head}");
    let (status, head, _) = upgrade(&server, "203.0.113.8");
    assert_eq!(
        status, 429,
        "a forged header does not buy a new address: {head}"
    );

    // Trusted proxy: each forwarded client has its own allowance.
    let server = Server::start(&["--max-per-address", "1", "--trusted-proxy", "127.0.0.1"]);
    let (status, head, first) = upgrade(&server, "203.0.113.7");
    assert_eq!(status, 101, "{head}");
    let (status, head, _second) = upgrade(&server, "203.0.113.8");
    assert_eq!(status, 101, "another client behind the proxy: {head}");
    let (status, head, _) = upgrade(&server, "203.0.113.7");
    assert_eq!(status, 429, "{head}");
    assert!(head.contains("Retry-After"), "{head}");
    // Its first connection closing frees the allowance.
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let (status, _, _stream) = upgrade(&server, "203.0.113.7");
        if status == 101 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still refused after the close"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
