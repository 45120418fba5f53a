//! `/metrics` and `/healthz` over loopback: the exposition parses as Prometheus text and
//! its counters move with the traffic.

mod im_support;

use std::time::Duration;

#[path = "support/prometheus.rs"]
mod metrics;
// What the parser checks names against: the server's own rules.
use courier::metrics::{is_label_name, is_metric_name};
use im_support::*;
use serde_json::{json, Value};

fn scrape(server: &Server) -> metrics::Parsed {
    let (status, body) = http_get(server.addr, "/metrics");
    assert_eq!(status, 200);
    metrics::check(&body).unwrap_or_else(|e| panic!("not valid exposition text: {e}\n{body}"))
}

fn value(parsed: &metrics::Parsed, name: &str, labels: &[(&str, &str)]) -> f64 {
    parsed
        .get(name, labels)
        .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
}

#[test]
fn metrics_parse_and_count_connections_messages_pushes_acks_errors_and_closes() {
    let server = Server::start(&[]);
    let before = scrape(&server);
    assert_eq!(value(&before, "courier_connections_open", &[]), 0.0);

    let mut alice = server.connect("alice");
    let mut bob = server.connect("bob");
    alice.send_msg("bob", "c1", "hello");
    alice.expect("sent");
    let msg = bob.expect("msg");
    bob.send(json!({"type": "ack", "seq": msg["seq"]}));
    alice.send(json!({"type": "nope", "rid": 1}));
    alice.expect("error");
    bob.send(json!({"type": "sync", "after": 0, "rid": "s"}));
    bob.expect("msg");
    bob.expect("synced");
    // Ack handling has no reply without a rid: wait for it with a ping behind it.
    bob.send(json!({"type": "ping", "rid": 2}));
    bob.expect("pong");

    let m = scrape(&server);
    assert_eq!(value(&m, "courier_connections_open", &[]), 2.0);
    assert!(value(&m, "courier_connections_opened_total", &[]) >= 2.0);
    assert!(value(&m, "courier_messages_in_total", &[]) >= 5.0);
    assert!(
        value(&m, "courier_pushes_total", &[]) >= 2.0,
        "the live push and the replay"
    );
    assert_eq!(value(&m, "courier_acks_total", &[]), 1.0);
    assert_eq!(
        value(&m, "courier_errors_total", &[("code", "bad_request")]),
        1.0
    );
    assert_eq!(value(&m, "courier_sync_replays_total", &[]), 1.0);
    assert!(value(&m, "courier_store_jobs_total", &[]) >= 1.0);

    // A binary frame on /ws closes 1003, and the close is counted by its code.
    bob.send_binary(b"\x00");
    assert_eq!(bob.expect_close(Duration::from_secs(2)), Some(1003));
    drop(bob);
    let mut closed = 0.0;
    for _ in 0..50 {
        let m = scrape(&server);
        closed = m
            .get("courier_connections_closed_total", &[("code", "1003")])
            .unwrap_or(0.0);
        if closed >= 1.0 {
            assert_eq!(value(&m, "courier_connections_open", &[]), 1.0);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(closed, 1.0);
}

#[test]
fn healthz_reports_version_connections_and_a_writable_store() {
    let server = Server::start(&[]);
    let _alice = server.connect("alice");
    let (status, body) = http_get(server.addr, "/healthz");
    assert_eq!(status, 200);
    let health: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["store_writable"], true);
    assert_eq!(health["connections"], 1);
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
}
