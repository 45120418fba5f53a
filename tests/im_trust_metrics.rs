//! `--metrics-listen`: `/metrics` only on a second address, polled by the same reactor,
//! whose connections get plain HTTP and nothing else; `/healthz` on both, since load
//! balancers probe the port they forward to. Without the flag, as before.

mod im_support;

use std::net::SocketAddr;
use std::time::Duration;

#[path = "support/prometheus.rs"]
mod metrics;
// What the parser checks names against: the server's own rules.
use courier::metrics::{is_label_name, is_metric_name};
use im_support::*;

fn start_with_metrics(args: &[&str], env: &[(&str, &str)]) -> (Server, SocketAddr) {
    let dir = DataDir::new("metrics-listen");
    let mut all = vec!["--jwt-secret", SECRET];
    all.extend_from_slice(args);
    let (server, metrics) = Server::run_with_metrics(serve_command(&dir.path, &all, env));
    (server.owning(dir), metrics)
}

fn assert_courier_metrics(body: &str) {
    let parsed =
        metrics::check(body).unwrap_or_else(|e| panic!("not exposition text: {e}\n{body}"));
    assert!(
        parsed.get("courier_connections_open", &[]).is_some(),
        "{body}"
    );
}

#[test]
fn with_metrics_listen_metrics_are_only_on_the_second_address() {
    let (server, metrics_addr) = start_with_metrics(&["--metrics-listen", "127.0.0.1:0"], &[]);
    assert_ne!(metrics_addr, server.addr);

    let (status, body) = http_get(server.addr, "/metrics");
    assert_eq!(status, 404, "the main port hides /metrics: {body}");
    assert!(!body.contains("courier_"), "{body}");
    let (status, body) = http_get(metrics_addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    assert_courier_metrics(&body);

    // /healthz on both.
    for addr in [server.addr, metrics_addr] {
        let (status, body) = http_get(addr, "/healthz");
        assert_eq!(status, 200, "{addr}: {body}");
        assert!(body.contains("\"status\":\"ok\""), "{body}");
    }

    // The metrics port serves nothing else: no page, no dev token, no WebSocket.
    let (status, _) = http_get(metrics_addr, "/");
    assert_eq!(status, 404);
    let target = format!("/ws?token={}", token("alice"));
    let (status, head, _) = raw_upgrade(metrics_addr, &target, &[]);
    assert_eq!(status, 404, "no upgrade on the metrics port:\n{head}");
    assert!(!head.to_ascii_lowercase().contains("sec-websocket-accept"));

    // The main port still does everything else, and its IM traffic shows on the other.
    let client = server.connect("alice");
    let (_, body) = http_get(metrics_addr, "/metrics");
    let parsed = metrics::check(&body).unwrap();
    assert_eq!(parsed.get("courier_connections_open", &[]), Some(1.0));
    drop(client);
}

#[test]
fn metrics_listen_comes_from_the_environment_too() {
    let (server, metrics_addr) =
        start_with_metrics(&[], &[("COURIER_METRICS_LISTEN", "127.0.0.1:0")]);
    assert_eq!(http_get(server.addr, "/metrics").0, 404);
    assert_eq!(http_get(metrics_addr, "/metrics").0, 200);
}

#[test]
fn without_metrics_listen_metrics_stay_on_the_main_port() {
    let server = Server::start(&[]);
    let (status, body) = http_get(server.addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    assert_courier_metrics(&body);
    assert_eq!(http_get(server.addr, "/healthz").0, 200);
}

#[test]
fn a_server_with_a_metrics_listener_still_stops_cleanly() {
    let (mut server, metrics_addr) = start_with_metrics(&["--metrics-listen", "127.0.0.1:0"], &[]);
    assert_eq!(http_get(metrics_addr, "/healthz").0, 200);
    let status = server
        .terminate(Duration::from_secs(10))
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
}

#[test]
fn metrics_listen_on_the_main_address_is_refused() {
    let dir = DataDir::new("metrics-same");
    let output = serve_command(
        &dir.path,
        &[
            "--jwt-secret",
            SECRET,
            "--listen",
            "127.0.0.1:47913",
            "--metrics-listen",
            "127.0.0.1:47913",
        ],
        &[],
    )
    .stderr(std::process::Stdio::piped())
    .output()
    .expect("run");
    assert!(!output.status.success(), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--metrics-listen"),
        "{output:?}"
    );
}
