//! Counters kept on the reactor thread, and `/metrics` in the Prometheus text exposition
//! format 0.0.4.
//!
//! The reactor (and the hub, which runs on it) owns a [`Metrics`] and bumps its fields
//! directly: plain integers, no atomics, no locks, no allocation after construction. The
//! figures are the reactor's own counts of what it did, not a second bookkeeping that could
//! drift from the first; the store's figures come from its own snapshot
//! ([`Store::stats`](crate::store::Store::stats)), rendered by
//! [`Exposition::store_stats`].
//!
//! ```
//! use courier::metrics::Metrics;
//!
//! let mut m = Metrics::new();
//! m.connections_opened.inc();
//! m.connections_closed.inc(1001);
//! m.errors.inc("bad_request");
//! let text = m.render(&mut |x| x.gauge("courier_uptime_seconds", "Seconds since start.", 12.5));
//! assert!(text.contains("courier_connections_closed_total{code=\"1001\"} 1\n"));
//! ```
//!
//! Names follow Prometheus conventions: everything starts with `courier_`, counters end in
//! `_total`, durations are in seconds and sizes in their unit (`_bytes`) or a plain count.
//! The tests run every rendering through a parser that enforces the format's rules
//! (`tests/support/prometheus.rs`, which the end-to-end tests run scraped `/metrics`
//! through too).

use std::fmt::{self, Write as _};

use crate::store;

// ---- the instruments ---------------------------------------------------------------------

/// A count that only goes up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter(u64);

impl Counter {
    pub const fn new() -> Counter {
        Counter(0)
    }

    #[inline]
    pub fn inc(&mut self) {
        self.0 += 1;
    }

    #[inline]
    pub fn add(&mut self, n: u64) {
        self.0 += n;
    }

    pub fn get(&self) -> u64 {
        self.0
    }
}

/// A value that goes up and down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gauge(i64);

impl Gauge {
    pub const fn new() -> Gauge {
        Gauge(0)
    }

    #[inline]
    pub fn set(&mut self, v: i64) {
        self.0 = v;
    }

    #[inline]
    pub fn add(&mut self, d: i64) {
        self.0 += d;
    }

    #[inline]
    pub fn inc(&mut self) {
        self.0 += 1;
    }

    #[inline]
    pub fn dec(&mut self) {
        self.0 -= 1;
    }

    pub fn get(&self) -> i64 {
        self.0
    }
}

/// Counters under one label (a close code, an error code), sorted by key.
///
/// The number of distinct keys is capped: the reactor must not grow a table without bound,
/// and some keys come from outside (a peer may close with any of 2,000 application codes).
/// Past the cap a value is counted under the label value `other`. The table is allocated
/// once, at construction, for the whole cap.
#[derive(Clone, Debug)]
pub struct CounterVec<K> {
    label: &'static str,
    entries: Vec<(K, u64)>,
    other: u64,
    limit: usize,
}

impl<K: Copy + Ord + fmt::Display> CounterVec<K> {
    /// An empty vector of counters for label `label`, holding at most `limit` keys.
    pub fn new(label: &'static str, limit: usize) -> CounterVec<K> {
        CounterVec {
            label,
            entries: Vec::with_capacity(limit),
            other: 0,
            limit,
        }
    }

    /// With `keys` present at 0 from the start, so their series exist before the first
    /// event (a rate over a series that appears mid-way misses its first increase). The
    /// cap is raised to hold them all if need be.
    pub fn with_keys(label: &'static str, keys: &[K], limit: usize) -> CounterVec<K> {
        let mut v = CounterVec::new(label, limit.max(keys.len()));
        for &k in keys {
            v.add(k, 0);
        }
        v
    }

    #[inline]
    pub fn inc(&mut self, key: K) {
        self.add(key, 1);
    }

    pub fn add(&mut self, key: K, n: u64) {
        match self.entries.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(i) => self.entries[i].1 += n,
            Err(i) if self.entries.len() < self.limit => self.entries.insert(i, (key, n)),
            Err(_) => self.other += n,
        }
    }

    /// The count for `key` (0 if never seen or counted under `other`).
    pub fn get(&self, key: K) -> u64 {
        self.entries
            .binary_search_by(|(k, _)| k.cmp(&key))
            .map_or(0, |i| self.entries[i].1)
    }

    /// What was counted past the cap.
    pub fn other(&self) -> u64 {
        self.other
    }

    /// Everything counted, `other` included.
    pub fn total(&self) -> u64 {
        self.entries.iter().map(|&(_, n)| n).sum::<u64>() + self.other
    }

    /// The keys and their counts, in key order (`other` not included).
    pub fn iter(&self) -> impl Iterator<Item = (K, u64)> + '_ {
        self.entries.iter().copied()
    }

    pub fn label(&self) -> &'static str {
        self.label
    }
}

/// Bucket bounds for a size counted in items, from 1 to 1024 in powers of two.
pub const SIZE_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Bucket bounds for a latency in seconds, from 100 µs to 1 s.
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// A histogram with fixed bucket bounds: a value `v` lands in the first bucket whose bound
/// is `>= v` (Prometheus's `le`), or in the implicit `+Inf` bucket past the last one.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    bounds: Vec<f64>,
    /// Per bucket, not cumulative (one more than `bounds`: the last is `+Inf`); made
    /// cumulative when rendered, so an observation is one increment.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    /// # Panics
    /// If `bounds` is empty, not strictly increasing, or holds a NaN or an infinity (the
    /// `+Inf` bucket is always there): bounds are a constant of the program, so this is a
    /// bug to catch at start, not a condition to handle.
    pub fn new(bounds: &[f64]) -> Histogram {
        assert!(!bounds.is_empty(), "a histogram needs at least one bound");
        assert!(
            bounds.iter().all(|b| b.is_finite()),
            "histogram bounds must be finite: {bounds:?}"
        );
        assert!(
            bounds.windows(2).all(|w| w[0] < w[1]),
            "histogram bounds must be strictly increasing: {bounds:?}"
        );
        Histogram {
            bounds: bounds.to_vec(),
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    /// Bounds `start, start·factor, start·factor², …`, `count` of them.
    pub fn exponential(start: f64, factor: f64, count: usize) -> Histogram {
        assert!(
            start > 0.0 && factor > 1.0,
            "start {start}, factor {factor}"
        );
        let bounds: Vec<f64> = std::iter::successors(Some(start), |b| Some(b * factor))
            .take(count)
            .collect();
        Histogram::new(&bounds)
    }

    pub fn observe(&mut self, v: f64) {
        if v.is_nan() {
            // Counted, so `_count` still counts every observation, but kept out of the
            // sum, which one NaN would spoil for good.
            *self.counts.last_mut().expect("never empty") += 1;
            return;
        }
        let i = self.bounds.partition_point(|&b| b < v);
        self.counts[i] += 1;
        self.sum += v;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    pub fn bounds(&self) -> &[f64] {
        &self.bounds
    }

    /// `(le, values <= le)` for every bound, then `(+Inf, count)`.
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let les = self.bounds.iter().copied().chain([f64::INFINITY]);
        les.zip(self.counts.iter().scan(0u64, |acc, &n| {
            *acc += n;
            Some(*acc)
        }))
    }
}

// ---- what the reactor counts ---------------------------------------------------------------

/// Close codes whose series exist from the start: the ones PROTOCOL.md lists, and 1006,
/// which is how a connection that ended without a close frame is counted.
pub const CLOSE_CODES: [u16; 10] = [1000, 1001, 1002, 1003, 1006, 1007, 1008, 1009, 1011, 4008];

/// Error codes of PROTOCOL.md, whose series exist from the start.
pub const ERROR_CODES: [&str; 8] = [
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "too_large",
    "rate_limited",
    "unavailable",
    "internal",
];

/// The close code counted as an ack timeout.
pub const ACK_TIMEOUT_CLOSE: u16 = 4008;

/// Everything the reactor and the hub count. Fields are public: the owner bumps them
/// where the event happens (`metrics.pushes.inc()`), and [`Metrics::render`] writes them
/// all.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// WebSocket connections open now: upgraded and not yet closed.
    pub connections_open: Gauge,
    /// WebSocket connections upgraded (`101` sent), since the start.
    pub connections_opened: Counter,
    /// WebSocket connections closed, by the close code sent or received (1006 when the
    /// TCP connection ended without a close frame). Ack-timeout closes (4008) are
    /// rendered a second time on their own from this, not counted twice.
    pub connections_closed: CounterVec<u16>,
    /// Text messages received on `/ws`.
    pub messages_in: Counter,
    /// Text messages sent on `/ws` (replies and pushes).
    pub messages_out: Counter,
    /// Inbox entries pushed (`msg`) as they were committed or read back to bring a
    /// connection up to date.
    pub pushes: Counter,
    /// Entries pushed again after an ack timeout.
    pub repushes: Counter,
    /// Live relays that are not inbox entries: `read`, `presence`, `typing`.
    pub events: Counter,
    /// `ack` requests handled.
    pub acks: Counter,
    /// `sync` requests replayed (one per `synced`).
    pub sync_replays: Counter,
    /// `error` replies, by code.
    pub errors: CounterVec<&'static str>,
    /// Requests refused by the per-connection rate limit.
    pub rate_limited: Counter,
    /// Bytes held in connections' own output queues (what the kernel would not take).
    pub output_queued_bytes: Gauge,
    /// Connections closed 1008 because their output passed `--out-hard-cap`.
    pub output_sheds: Counter,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            connections_open: Gauge::new(),
            connections_opened: Counter::new(),
            connections_closed: CounterVec::with_keys("code", &CLOSE_CODES, 64),
            messages_in: Counter::new(),
            messages_out: Counter::new(),
            pushes: Counter::new(),
            repushes: Counter::new(),
            events: Counter::new(),
            acks: Counter::new(),
            sync_replays: Counter::new(),
            errors: CounterVec::with_keys("code", &ERROR_CODES, 32),
            rate_limited: Counter::new(),
            output_queued_bytes: Gauge::new(),
            output_sheds: Counter::new(),
        }
    }

    /// The whole exposition: these counters, the log's dropped lines, then whatever
    /// `extra` adds (the store's snapshot, uptime, gauges the caller reads at the time).
    pub fn render(&self, extra: &mut dyn FnMut(&mut Exposition<'_>)) -> String {
        let mut out = String::with_capacity(4096);
        self.render_into(&mut out, extra);
        out
    }

    /// [`render`](Metrics::render) appending to `out`.
    pub fn render_into(&self, out: &mut String, extra: &mut dyn FnMut(&mut Exposition<'_>)) {
        let mut x = Exposition::new(out);
        x.gauge(
            "courier_connections_open",
            "WebSocket connections open now.",
            self.connections_open.get(),
        );
        x.counter(
            "courier_connections_opened_total",
            "WebSocket connections upgraded.",
            self.connections_opened.get(),
        );
        x.counter_vec(
            "courier_connections_closed_total",
            "WebSocket connections closed, by close code (1006: no close frame).",
            &self.connections_closed,
        );
        x.counter(
            "courier_ack_timeout_closes_total",
            "Connections closed with 4008 because pushed entries stayed unacked.",
            self.connections_closed.get(ACK_TIMEOUT_CLOSE),
        );
        x.counter(
            "courier_messages_in_total",
            "Text messages received on /ws.",
            self.messages_in.get(),
        );
        x.counter(
            "courier_messages_out_total",
            "Text messages sent on /ws.",
            self.messages_out.get(),
        );
        x.counter(
            "courier_pushes_total",
            "Inbox entries pushed to connections.",
            self.pushes.get(),
        );
        x.counter(
            "courier_repushes_total",
            "Inbox entries pushed again after an ack timeout.",
            self.repushes.get(),
        );
        x.counter(
            "courier_events_total",
            "Read receipts, presence and typing relayed.",
            self.events.get(),
        );
        x.counter("courier_acks_total", "Acks handled.", self.acks.get());
        x.counter(
            "courier_sync_replays_total",
            "Sync requests replayed.",
            self.sync_replays.get(),
        );
        x.counter_vec(
            "courier_errors_total",
            "Error replies, by code.",
            &self.errors,
        );
        x.counter(
            "courier_rate_limited_total",
            "Requests refused by the per-connection rate limit.",
            self.rate_limited.get(),
        );
        x.gauge(
            "courier_output_queued_bytes",
            "Bytes waiting in connections' own output queues.",
            self.output_queued_bytes.get(),
        );
        x.counter(
            "courier_output_shed_total",
            "Connections whose queued output passed the hard cap: dropped, closed with 1008.",
            self.output_sheds.get(),
        );
        x.counter(
            "courier_log_lines_dropped_total",
            "Log lines dropped because the log writer was behind.",
            crate::log::dropped_total(),
        );
        extra(&mut x);
    }
}

// ---- the text format -----------------------------------------------------------------------

/// The `Content-Type` of a `/metrics` response.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A number as a sample value.
pub trait SampleValue: Copy {
    fn write_value(self, out: &mut String);
}

macro_rules! integer_sample {
    ($($t:ty),*) => {$(
        impl SampleValue for $t {
            fn write_value(self, out: &mut String) {
                let _ = write!(out, "{self}");
            }
        }
    )*};
}
integer_sample!(u64, u32, usize, i64, i32);

impl SampleValue for f64 {
    fn write_value(self, out: &mut String) {
        write_float(out, self);
    }
}

/// Appends a float the way the format spells it: `NaN`, `+Inf`, `-Inf`, or the shortest
/// decimal that reads back as the same value (never an exponent, which the format allows,
/// but a plain number is easier on a human reading `/metrics`).
fn write_float(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

/// Writes metric families into a string. Each family is its `# HELP` and `# TYPE` lines,
/// then its samples; a family's samples must all be written before the next family starts
/// (the format requires it), which the helpers here do by writing a family in one call.
pub struct Exposition<'a> {
    out: &'a mut String,
    /// Reused for label values that have to be formatted.
    scratch: String,
}

impl<'a> Exposition<'a> {
    pub fn new(out: &'a mut String) -> Exposition<'a> {
        Exposition {
            out,
            scratch: String::new(),
        }
    }

    /// `# HELP` and `# TYPE` for a family whose samples follow (see [`sample`]).
    ///
    /// [`sample`]: Exposition::sample
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) {
        debug_assert!(is_metric_name(name), "metric name {name:?}");
        let out = &mut *self.out;
        out.push_str("# HELP ");
        out.push_str(name);
        out.push(' ');
        for c in help.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push_str("\n# TYPE ");
        out.push_str(name);
        out.push(' ');
        out.push_str(kind.as_str());
        out.push('\n');
    }

    /// One sample line: `name{label="value",…} value`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl SampleValue) {
        let out = &mut *self.out;
        out.push_str(name);
        if !labels.is_empty() {
            out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                debug_assert!(is_label_name(k), "label name {k:?}");
                if i > 0 {
                    out.push(',');
                }
                out.push_str(k);
                out.push_str("=\"");
                escape_label_value(out, v);
                out.push('"');
            }
            out.push('}');
        }
        out.push(' ');
        value.write_value(out);
        out.push('\n');
    }

    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, help, Kind::Counter);
        self.sample(name, &[], value);
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: impl SampleValue) {
        self.family(name, help, Kind::Gauge);
        self.sample(name, &[], value);
    }

    /// A gauge with one label: `(label value, value)` pairs.
    pub fn gauge_by<V: SampleValue>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: &[(&str, V)],
    ) {
        self.family(name, help, Kind::Gauge);
        for &(l, v) in values {
            self.sample(name, &[(label, l)], v);
        }
    }

    /// A counter family with one series per key, plus `other` if anything was counted
    /// past the cap.
    pub fn counter_vec<K: Copy + Ord + fmt::Display>(
        &mut self,
        name: &str,
        help: &str,
        v: &CounterVec<K>,
    ) {
        self.family(name, help, Kind::Counter);
        let mut scratch = std::mem::take(&mut self.scratch);
        for (k, n) in v.iter() {
            scratch.clear();
            let _ = write!(scratch, "{k}");
            self.sample(name, &[(v.label, &scratch)], n);
        }
        if v.other > 0 {
            self.sample(name, &[(v.label, "other")], v.other);
        }
        self.scratch = scratch;
    }

    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.family(name, help, Kind::Histogram);
        self.buckets(name, h.cumulative());
        self.sample(&suffixed(name, "_sum"), &[], h.sum());
        self.sample(&suffixed(name, "_count"), &[], h.count());
    }

    /// The store's power-of-two histogram (see `store/stats.rs`: bucket `i` holds the
    /// integers in `[2^i, 2^(i+1))`, bucket 0 also 0, the last bucket everything above)
    /// as a Prometheus histogram, with each value divided by `unit` (`1e6` turns the
    /// store's microseconds into seconds, `1.0` leaves a count alone).
    ///
    /// Bucket `i`'s `le` is its largest value, `2^(i+1) - 1` (over `unit`): `le` means
    /// "at most", so `2^(i+1)` itself, which the store puts in the next bucket, must not be
    /// claimed. The last bucket has no finite top and only shows in `+Inf`. `_sum` is the
    /// store's exact sum over `unit`: with `_count` it gives the mean, which the bucket tops
    /// can only bound.
    pub fn pow2_histogram(&mut self, name: &str, help: &str, h: &store::Histogram, unit: f64) {
        self.family(name, help, Kind::Histogram);
        let last = store::BUCKETS - 1;
        let mut pairs = [(f64::INFINITY, h.count()); store::BUCKETS];
        let mut below = 0;
        for (i, pair) in pairs[..last].iter_mut().enumerate() {
            below += h.buckets[i];
            *pair = (((2u64 << i) - 1) as f64 / unit, below);
        }
        self.buckets(name, pairs.into_iter());
        self.sample(&suffixed(name, "_sum"), &[], h.sum as f64 / unit);
        self.sample(&suffixed(name, "_count"), &[], h.count());
    }

    /// Every figure of a store snapshot, as `courier_store_*`.
    pub fn store_stats(&mut self, s: &store::Stats) {
        self.gauge(
            "courier_store_writes_failing",
            "1 while writes are refused for a cause outside them (a full disk, an I/O error).",
            i64::from(s.writes_failing),
        );
        self.counter(
            "courier_store_batches_total",
            "Write transactions committed.",
            s.batches,
        );
        self.counter(
            "courier_store_jobs_total",
            "Write jobs committed and answered with success.",
            s.jobs,
        );
        self.counter(
            "courier_store_failed_jobs_total",
            "Store jobs answered with an error.",
            s.failed,
        );
        self.counter(
            "courier_store_rollbacks_total",
            "Write transactions rolled back.",
            s.rollbacks,
        );
        self.counter("courier_store_reads_total", "Read jobs served.", s.reads);
        self.counter(
            "courier_store_checkpoints_total",
            "WAL checkpoints run.",
            s.checkpoints,
        );
        self.counter(
            "courier_store_checkpoint_failures_total",
            "Background WAL checkpoints that failed.",
            s.checkpoint_failures,
        );
        self.gauge(
            "courier_store_wal_pages",
            "WAL size in pages at the last checkpoint.",
            s.wal_pages,
        );
        self.pow2_histogram(
            "courier_store_batch_size",
            "Jobs per committed write transaction.",
            &s.batch_sizes,
            1.0,
        );
        self.pow2_histogram(
            "courier_store_commit_seconds",
            "Time per committed write transaction, BEGIN to COMMIT.",
            &s.commit_us,
            1e6,
        );
        self.pow2_histogram(
            "courier_store_checkpoint_finish_seconds",
            "Time the writer spent finishing a checkpoint between two batches.",
            &s.checkpoint_finish_us,
            1e6,
        );
        self.gauge_by(
            "courier_store_queue_depth",
            "Store jobs or completions waiting, by queue.",
            "queue",
            &[
                ("writer", s.writer_queue),
                ("reader", s.reader_queue),
                ("completion", s.completion_queue),
            ],
        );
    }

    /// The text so far, to add what the helpers do not cover. What goes in must keep the
    /// format: run the result through [`check`] in a test.
    pub fn raw(&mut self) -> &mut String {
        self.out
    }

    fn buckets(&mut self, name: &str, cumulative: impl Iterator<Item = (f64, u64)>) {
        let bucket = suffixed(name, "_bucket");
        let mut le = std::mem::take(&mut self.scratch);
        for (bound, n) in cumulative {
            le.clear();
            write_float(&mut le, bound);
            self.sample(&bucket, &[("le", &le)], n);
        }
        self.scratch = le;
    }
}

fn suffixed(name: &str, suffix: &str) -> String {
    let mut s = String::with_capacity(name.len() + suffix.len());
    s.push_str(name);
    s.push_str(suffix);
    s
}

fn escape_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

pub fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

pub fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The checking parser of the exposition format, for tests only (it is test support, not
/// part of the server): the same file the integration tests include.
#[cfg(test)]
#[path = "../tests/support/prometheus.rs"]
mod prometheus;
#[cfg(test)]
use prometheus::{check, parse_float, Parsed, Sample};

#[cfg(test)]
mod tests {
    use super::*;

    fn render_with(f: impl FnOnce(&mut Exposition<'_>)) -> String {
        let mut out = String::new();
        f(&mut Exposition::new(&mut out));
        out
    }

    fn checked(text: &str) -> Parsed {
        match check(text) {
            Ok(p) => p,
            Err(e) => panic!("{e}\n---\n{text}"),
        }
    }

    // ---- instruments ----

    #[test]
    fn counter_and_gauge() {
        let mut c = Counter::new();
        c.inc();
        c.add(41);
        assert_eq!(c.get(), 42);
        let mut g = Gauge::new();
        g.inc();
        g.inc();
        g.dec();
        g.add(-3);
        assert_eq!(g.get(), -2);
        g.set(7);
        assert_eq!(g.get(), 7);
    }

    #[test]
    fn counter_vec_keeps_keys_sorted_and_caps_them() {
        let mut v = CounterVec::with_keys("code", &[1001u16, 1000], 3);
        assert_eq!(v.iter().collect::<Vec<_>>(), [(1000, 0), (1001, 0)]);
        v.inc(4008);
        v.inc(1001);
        v.add(1000, 5);
        assert_eq!(
            v.iter().collect::<Vec<_>>(),
            [(1000, 5), (1001, 1), (4008, 1)]
        );
        // Full: a new key goes to `other`, a known one still counts as itself.
        v.inc(4999);
        v.add(3000, 2);
        v.inc(4008);
        assert_eq!(v.other(), 3);
        assert_eq!(v.get(4999), 0);
        assert_eq!(v.get(4008), 2);
        assert_eq!(v.total(), 5 + 1 + 2 + 3);
        assert_eq!(v.entries.capacity(), 3, "allocated once, at construction");
        assert_eq!(v.label(), "code");
    }

    #[test]
    fn counter_vec_with_more_keys_than_the_cap_holds_them_all() {
        let v = CounterVec::with_keys("code", &ERROR_CODES, 2);
        assert_eq!(v.iter().count(), ERROR_CODES.len());
        let mut v = CounterVec::with_keys("k", &["a", "a", "b"], 8);
        v.inc("a");
        assert_eq!(v.iter().collect::<Vec<_>>(), [("a", 1), ("b", 0)]);
    }

    #[test]
    fn histogram_buckets_are_le_inclusive() {
        let mut h = Histogram::new(&[1.0, 2.0, 4.0]);
        for v in [0.0, 1.0, 1.5, 2.0, 3.0, 4.0, 4.5, -1.0, f64::INFINITY] {
            h.observe(v);
        }
        assert_eq!(h.counts, [3, 2, 2, 2]);
        assert_eq!(
            h.cumulative().collect::<Vec<_>>(),
            [(1.0, 3), (2.0, 5), (4.0, 7), (f64::INFINITY, 9)]
        );
        assert_eq!(h.count(), 9);
        assert_eq!(h.sum(), f64::INFINITY);

        let mut h = Histogram::new(&[1.0]);
        h.observe(0.5);
        h.observe(f64::NAN);
        assert_eq!(h.count(), 2);
        assert_eq!(h.sum(), 0.5);
        assert_eq!(h.counts, [1, 1]);
    }

    #[test]
    fn histogram_constructors() {
        let h = Histogram::exponential(1.0, 2.0, 11);
        assert_eq!(h.bounds(), SIZE_BUCKETS);
        assert_eq!(Histogram::new(&LATENCY_BUCKETS).bounds(), LATENCY_BUCKETS);
        for bad in [
            &[][..],
            &[1.0, 1.0][..],
            &[2.0, 1.0][..],
            &[f64::NAN][..],
            &[1.0, f64::INFINITY][..],
        ] {
            assert!(
                std::panic::catch_unwind(|| Histogram::new(bad)).is_err(),
                "{bad:?}"
            );
        }
    }

    // ---- rendering ----

    #[test]
    fn families_render_exactly() {
        let mut v = CounterVec::with_keys("code", &[1000u16], 1);
        v.add(1000, 2);
        v.inc(1001);
        let mut h = Histogram::new(&[0.5, 1.0]);
        h.observe(0.25);
        h.observe(0.75);
        h.observe(3.0);
        let text = render_with(|x| {
            x.counter("a_total", "Plain.", 3);
            x.gauge("b", "Signed.", -4i64);
            x.gauge("c", "Float.", 0.125);
            x.counter_vec("d_total", "By code.", &v);
            x.histogram("e_seconds", "Latency.", &h);
            x.gauge_by("f", "By queue.", "queue", &[("w", 1usize), ("r", 2)]);
        });
        assert_eq!(
            text,
            "# HELP a_total Plain.\n# TYPE a_total counter\na_total 3\n\
             # HELP b Signed.\n# TYPE b gauge\nb -4\n\
             # HELP c Float.\n# TYPE c gauge\nc 0.125\n\
             # HELP d_total By code.\n# TYPE d_total counter\n\
             d_total{code=\"1000\"} 2\nd_total{code=\"other\"} 1\n\
             # HELP e_seconds Latency.\n# TYPE e_seconds histogram\n\
             e_seconds_bucket{le=\"0.5\"} 1\ne_seconds_bucket{le=\"1\"} 2\n\
             e_seconds_bucket{le=\"+Inf\"} 3\ne_seconds_sum 4\ne_seconds_count 3\n\
             # HELP f By queue.\n# TYPE f gauge\nf{queue=\"w\"} 1\nf{queue=\"r\"} 2\n"
        );
        let p = checked(&text);
        assert_eq!(p.families.len(), 6);
        assert_eq!(p.get("d_total", &[("code", "other")]), Some(1.0));
        assert_eq!(p.get("e_seconds_bucket", &[("le", "+Inf")]), Some(3.0));
        assert_eq!(p.family("e_seconds").unwrap().kind, "histogram");
    }

    #[test]
    fn escaping_round_trips_through_the_parser() {
        let nasty = "a\\b\"c\nd}e,f=g";
        let text = render_with(|x| {
            x.family("x", "help with \\ and\nnewline \"quoted\"", Kind::Gauge);
            x.sample("x", &[("v", nasty), ("w", "")], 1u32);
        });
        assert!(text.contains(r#"x{v="a\\b\"c\nd}e,f=g",w=""} 1"#), "{text}");
        assert!(text.contains(r#"# HELP x help with \\ and\nnewline "quoted""#));
        let p = checked(&text);
        assert_eq!(p.get("x", &[("w", ""), ("v", nasty)]), Some(1.0));
        assert_eq!(
            p.family("x").unwrap().help,
            "help with \\ and\nnewline \"quoted\""
        );
    }

    #[test]
    fn floats_render_as_the_format_spells_them() {
        let cases = [
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (0.0, "0"),
            (1.0, "1"),
            (0.1, "0.1"),
            (1e-7, "0.0000001"),
            (123456789.5, "123456789.5"),
            (-2.5, "-2.5"),
        ];
        for (v, want) in cases {
            let mut s = String::new();
            write_float(&mut s, v);
            assert_eq!(s, want);
            let back = parse_float(&s).unwrap();
            assert!(back == v || (v.is_nan() && back.is_nan()), "{v} -> {s}");
        }
        // Shortest round trip, however the value was computed.
        for i in 0..64 {
            let v = ((1u64 << i) - 1) as f64 / 1e6;
            let mut s = String::new();
            write_float(&mut s, v);
            assert_eq!(s.parse::<f64>().unwrap(), v);
            assert!(!s.contains('e'), "{s}");
        }
    }

    fn store_histogram(values: &[u64]) -> store::Histogram {
        let mut h = store::Histogram::default();
        for &v in values {
            h.record(v);
        }
        h
    }

    /// For every `le`, the rendered count must be exactly the number of recorded values
    /// at most `le` (in the store's unit): neither a value claimed below its bucket's top
    /// nor one left out.
    fn assert_pow2_exact(values: &[u64], unit: f64) {
        let h = store_histogram(values);
        let text = render_with(|x| x.pow2_histogram("h", "Test.", &h, unit));
        let p = checked(&text);
        let f = p.family("h").unwrap();
        let buckets: Vec<&Sample> = f.samples.iter().filter(|s| s.name == "h_bucket").collect();
        assert_eq!(buckets.len(), store::BUCKETS);
        for s in &buckets {
            let le = parse_float(&s.labels[0].1).unwrap();
            let expect = values.iter().filter(|&&v| v as f64 / unit <= le).count();
            assert_eq!(s.value, expect as f64, "le={le} unit={unit}");
        }
        assert_eq!(p.get("h_count", &[]), Some(values.len() as f64));
        let sum = values.iter().fold(0u64, |s, &v| s.saturating_add(v));
        assert_eq!(p.get("h_sum", &[]), Some(sum as f64 / unit));
    }

    #[test]
    fn pow2_histograms_count_exactly_at_every_bound() {
        let mut values = vec![0, 1, 2, 3, 4, 7, 8, 1000, 1023, 1024, 1025];
        for i in 0..64 {
            values.push(1u64 << i);
            values.push((1u64 << i) - 1);
            values.push((1u64 << i) | 1);
        }
        values.push(u64::MAX);
        assert_pow2_exact(&values, 1.0);
        assert_pow2_exact(&values, 1e6);
        assert_pow2_exact(&[], 1.0);
        assert_pow2_exact(&[5; 3], 1e6);
    }

    #[test]
    fn pow2_bounds_read_naturally() {
        let h = store_histogram(&[1, 2, 300]);
        let text = render_with(|x| x.pow2_histogram("s", "Test.", &h, 1e6));
        assert!(text.contains("s_bucket{le=\"0.000001\"} 1\n"), "{text}");
        assert!(text.contains("s_bucket{le=\"0.000003\"} 2\n"), "{text}");
        assert!(text.contains("s_bucket{le=\"0.000511\"} 3\n"), "{text}");
        assert!(text.contains("s_bucket{le=\"2147.483647\"} 3\n"), "{text}");
        assert!(
            text.ends_with("s_bucket{le=\"+Inf\"} 3\ns_sum 0.000303\ns_count 3\n"),
            "{text}"
        );
    }

    fn sample_stats() -> store::Stats {
        store::Stats {
            batches: 10,
            jobs: 25,
            failed: 1,
            rollbacks: 1,
            writes_failing: true,
            reads: 7,
            checkpoints: 2,
            checkpoint_failures: 0,
            wal_pages: 1000,
            checkpoint_finish_us: store_histogram(&[900]),
            batch_sizes: store_histogram(&[1, 1, 2, 4, 17]),
            commit_us: store_histogram(&[150, 2000, 2_000_000]),
            writer_queue: 3,
            reader_queue: 0,
            completion_queue: 5,
        }
    }

    #[test]
    fn store_stats_render_validly() {
        let text = render_with(|x| x.store_stats(&sample_stats()));
        let p = checked(&text);
        assert_eq!(p.get("courier_store_batches_total", &[]), Some(10.0));
        assert_eq!(p.get("courier_store_wal_pages", &[]), Some(1000.0));
        assert_eq!(p.get("courier_store_writes_failing", &[]), Some(1.0));
        assert_eq!(
            p.get("courier_store_queue_depth", &[("queue", "completion")]),
            Some(5.0)
        );
        assert_eq!(
            p.get("courier_store_batch_size_bucket", &[("le", "1")]),
            Some(2.0)
        );
        assert_eq!(
            p.get("courier_store_batch_size_bucket", &[("le", "3")]),
            Some(3.0)
        );
        assert_eq!(p.get("courier_store_batch_size_count", &[]), Some(5.0));
        // 150 µs and 2 ms are under 4.095 ms; 2 s is not.
        assert_eq!(
            p.get("courier_store_commit_seconds_bucket", &[("le", "0.004095")]),
            Some(2.0)
        );
        assert_eq!(p.get("courier_store_commit_seconds_count", &[]), Some(3.0));
        // The exact sum in seconds (150 µs + 2 ms + 2 s), and for a count the sum as is.
        assert_eq!(
            p.get("courier_store_commit_seconds_sum", &[]),
            Some(2_002_150.0 / 1e6)
        );
        assert_eq!(p.get("courier_store_batch_size_sum", &[]), Some(25.0));
        assert_conventions(&p);
    }

    /// Every name is ours and counters say so.
    fn assert_conventions(p: &Parsed) {
        for f in &p.families {
            assert!(f.name.starts_with("courier_"), "{}", f.name);
            assert_eq!(
                f.kind == "counter",
                f.name.ends_with("_total"),
                "{}",
                f.name
            );
            assert!(!f.help.is_empty() && f.help.ends_with('.'), "{}", f.name);
        }
    }

    #[test]
    fn metrics_render_validly_and_counters_move() {
        let mut m = Metrics::new();
        let before = checked(&m.render(&mut |_| {}));
        assert_conventions(&before);
        for code in CLOSE_CODES {
            assert_eq!(
                before.get(
                    "courier_connections_closed_total",
                    &[("code", &code.to_string())]
                ),
                Some(0.0)
            );
        }
        for code in ERROR_CODES {
            assert_eq!(
                before.get("courier_errors_total", &[("code", code)]),
                Some(0.0)
            );
        }

        m.connections_opened.add(3);
        m.connections_open.set(2);
        m.connections_closed.inc(4008);
        m.connections_closed.inc(3999);
        m.messages_in.add(10);
        m.messages_out.add(12);
        m.pushes.add(4);
        m.repushes.inc();
        m.acks.add(5);
        m.sync_replays.inc();
        m.errors.inc("rate_limited");
        m.errors.inc("something_new");
        m.rate_limited.inc();
        m.output_queued_bytes.set(4096);
        m.output_sheds.add(3);
        let mut calls = 0;
        let text = m.render(&mut |x| {
            calls += 1;
            x.gauge("courier_uptime_seconds", "Seconds since start.", 1.5);
            x.store_stats(&sample_stats());
        });
        assert_eq!(calls, 1);
        let p = checked(&text);
        assert_conventions(&p);
        let get = |name: &str, labels: &[(&str, &str)]| p.get(name, labels).unwrap();
        assert_eq!(get("courier_connections_open", &[]), 2.0);
        assert_eq!(get("courier_connections_opened_total", &[]), 3.0);
        assert_eq!(
            get("courier_connections_closed_total", &[("code", "4008")]),
            1.0
        );
        assert_eq!(
            get("courier_connections_closed_total", &[("code", "3999")]),
            1.0
        );
        assert_eq!(get("courier_ack_timeout_closes_total", &[]), 1.0);
        assert_eq!(get("courier_messages_in_total", &[]), 10.0);
        assert_eq!(get("courier_messages_out_total", &[]), 12.0);
        assert_eq!(get("courier_pushes_total", &[]), 4.0);
        assert_eq!(get("courier_repushes_total", &[]), 1.0);
        assert_eq!(get("courier_acks_total", &[]), 5.0);
        assert_eq!(get("courier_sync_replays_total", &[]), 1.0);
        assert_eq!(
            get("courier_errors_total", &[("code", "rate_limited")]),
            1.0
        );
        assert_eq!(
            get("courier_errors_total", &[("code", "something_new")]),
            1.0
        );
        assert_eq!(get("courier_rate_limited_total", &[]), 1.0);
        assert_eq!(get("courier_output_queued_bytes", &[]), 4096.0);
        assert_eq!(get("courier_output_shed_total", &[]), 3.0);
        assert_eq!(get("courier_log_lines_dropped_total", &[]), 0.0);
        assert_eq!(get("courier_uptime_seconds", &[]), 1.5);
        assert_eq!(get("courier_store_jobs_total", &[]), 25.0);

        // render_into appends.
        let mut out = String::from("# a comment first\n");
        m.render_into(&mut out, &mut |_| {});
        assert!(out.starts_with("# a comment first\n# HELP courier_connections_open "));
        checked(&out);
    }

    // ---- the checker: it must refuse what Prometheus would refuse or misread ----

    const GOOD: &str = "# HELP a_total A.\n# TYPE a_total counter\na_total 1\n\
                        # HELP h H.\n# TYPE h histogram\n\
                        h_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n";

    #[test]
    fn checker_accepts_the_format_s_freedoms() {
        checked(GOOD);
        checked("");
        checked(
            "# some comment\n\n# TYPE g gauge\n# HELP g G.\n\
             g{a=\"1\",b=\"2\",} -Inf 1700000000000\n\
             g{ a = \"2\" }\t+Inf\ng NaN\n\
             # HELP s S.\n# TYPE s summary\ns{quantile=\"0.5\"} 1\ns_sum 1\ns_count 1\n\
             # HELP u U.\n# TYPE u untyped\nu 1e3\n",
        );
        // Histograms by label set, each with its own +Inf and count; no _sum needed.
        checked(
            "# HELP h H.\n# TYPE h histogram\n\
             h_bucket{x=\"a\",le=\"1\"} 1\nh_bucket{x=\"a\",le=\"+Inf\"} 1\nh_count{x=\"a\"} 1\n\
             h_bucket{le=\"1\",x=\"b\"} 0\nh_bucket{x=\"b\",le=\"+Inf\"} 2\nh_count{x=\"b\"} 2\n",
        );
    }

    #[test]
    fn checker_refuses_broken_text() {
        let head = "# HELP a A.\n# TYPE a gauge\n";
        let hist = "# HELP h H.\n# TYPE h histogram\n";
        let bad: &[(&str, &str, String)] = &[
            ("no final newline", "newline", format!("{head}a 1")),
            ("no HELP", "no HELP", "# TYPE a gauge\na 1\n".into()),
            ("no TYPE", "no TYPE", "# HELP a A.\na 1\n".into()),
            ("HELP only", "no TYPE", "# HELP a A.\n".into()),
            (
                "TYPE after sample",
                "no TYPE",
                "# HELP a A.\na 1\n# TYPE a gauge\n".into(),
            ),
            (
                "two TYPEs",
                "second TYPE",
                format!("{head}# TYPE a gauge\na 1\n"),
            ),
            (
                "two HELPs",
                "second HELP",
                format!("{head}# HELP a again\na 1\n"),
            ),
            (
                "unknown type",
                "unknown type",
                "# HELP a A.\n# TYPE a meter\na 1\n".into(),
            ),
            (
                "bad HELP escape",
                "bad escape",
                "# HELP a A\\t.\n# TYPE a gauge\na 1\n".into(),
            ),
            ("undeclared", "b has no TYPE", format!("{head}a 1\nb 2\n")),
            (
                "duplicate series",
                "same series",
                format!("{head}a{{x=\"1\"}} 1\na{{x=\"1\"}} 2\n"),
            ),
            (
                "not together",
                "not together",
                format!("{head}a 1\n# HELP b B.\n# TYPE b gauge\nb 1\na{{x=\"1\"}} 2\n"),
            ),
            ("bad name", "bad metric name", format!("{head}1a 1\n")),
            ("bad value", "bad value", format!("{head}a one\n")),
            ("rust-only value", "bad value", format!("{head}a inf\n")),
            ("no value", "blank before the value", format!("{head}a\n")),
            ("bad timestamp", "bad timestamp", format!("{head}a 1 now\n")),
            ("trailing text", "trailing text", format!("{head}a 1 2 3\n")),
            (
                "bad label name",
                "bad label name",
                format!("{head}a{{1x=\"1\"}} 1\n"),
            ),
            (
                "reserved label name",
                "bad label name",
                format!("{head}a{{__x=\"1\"}} 1\n"),
            ),
            (
                "unquoted label",
                "quoted label value",
                format!("{head}a{{x=1}} 1\n"),
            ),
            (
                "bad label escape",
                "bad escape",
                format!("{head}a{{x=\"\\t\"}} 1\n"),
            ),
            (
                "unterminated label",
                "unterminated",
                format!("{head}a{{x=\"1}} 1\n"),
            ),
            (
                "label twice",
                "twice",
                format!("{head}a{{x=\"1\",x=\"2\"}} 1\n"),
            ),
            (
                "missing comma",
                "expected , or }",
                format!("{head}a{{x=\"1\" y=\"2\"}} 1\n"),
            ),
            (
                "value glued",
                "blank before the value",
                format!("{head}a{{x=\"1\"}}1\n"),
            ),
            (
                "negative counter",
                "counter c is -1",
                "# HELP c C.\n# TYPE c counter\nc -1\n".into(),
            ),
            (
                "NaN counter",
                "counter c is NaN",
                "# HELP c C.\n# TYPE c counter\nc NaN\n".into(),
            ),
            (
                "not cumulative",
                "not cumulative",
                format!("{hist}h_bucket{{le=\"1\"}} 2\nh_bucket{{le=\"+Inf\"}} 1\nh_count 1\n"),
            ),
            (
                "le out of order",
                "le 2 then 1",
                format!(
                    "{hist}h_bucket{{le=\"2\"}} 1\nh_bucket{{le=\"1\"}} 1\n\
                     h_bucket{{le=\"+Inf\"}} 1\nh_count 1\n"
                ),
            ),
            (
                "no +Inf",
                "+Inf",
                format!("{hist}h_bucket{{le=\"1\"}} 1\nh_count 1\n"),
            ),
            (
                "+Inf is not count",
                "_count 3",
                format!("{hist}h_bucket{{le=\"+Inf\"}} 2\nh_count 3\n"),
            ),
            (
                "no count",
                "no _count",
                format!("{hist}h_bucket{{le=\"+Inf\"}} 2\n"),
            ),
            ("no buckets", "no buckets", format!("{hist}h_count 0\n")),
            (
                "bad le",
                "not a number",
                format!("{hist}h_bucket{{le=\"x\"}} 2\nh_count 2\n"),
            ),
            (
                "le on sum",
                "`le`",
                format!("{hist}h_bucket{{le=\"+Inf\"}} 2\nh_sum{{le=\"1\"}} 1\nh_count 2\n"),
            ),
            (
                "bucket without le",
                "`le`",
                format!("{hist}h_bucket 2\nh_count 2\n"),
            ),
            (
                "bare histogram sample",
                "h_bucket, h_sum",
                format!("{hist}h 2\n"),
            ),
            (
                "bucket of a gauge",
                "a_bucket has no TYPE",
                format!("{head}a_bucket{{le=\"1\"}} 1\n"),
            ),
        ];
        for (why, reason, text) in bad {
            match check(text) {
                Ok(_) => panic!("accepted ({why}):\n{text}"),
                Err(e) => assert!(e.contains(reason), "{why}: {e}"),
            }
        }
    }

    #[test]
    fn checker_messages_say_where() {
        let e = check("# HELP a A.\n# TYPE a gauge\na 1\na 2\n").unwrap_err();
        assert!(e.starts_with("line 4:"), "{e}");
    }
}
