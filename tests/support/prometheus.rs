//! A parser of the Prometheus text exposition format (0.0.4) that checks what it reads:
//! every sample in a declared family, names and labels well formed, histograms cumulative
//! and ending in `+Inf` with `_count` equal to it. Test support: `metrics.rs`'s unit tests
//! and the integration tests that scrape `/metrics` include this file; the server does not.
//! Its parent module brings `is_metric_name` and `is_label_name` into scope, the very
//! checks the server's renderer uses.
#![allow(dead_code)]

use std::cmp::Ordering;
use std::collections::HashSet;

use super::{is_label_name, is_metric_name};

/// One sample of a parsed exposition.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// One metric family of a parsed exposition.
#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    pub name: String,
    pub help: String,
    pub kind: String,
    pub samples: Vec<Sample>,
}

/// A parsed exposition: the families in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Parsed {
    pub families: Vec<Family>,
}

impl Parsed {
    /// The value of the sample `name` with exactly `labels` (in any order).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut want: Vec<(&str, &str)> = labels.to_vec();
        want.sort_unstable();
        self.families
            .iter()
            .flat_map(|f| &f.samples)
            .find(|s| {
                let mut have: Vec<(&str, &str)> = s
                    .labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                have.sort_unstable();
                s.name == name && have == want
            })
            .map(|s| s.value)
    }

    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }
}

/// Parses text exposition format 0.0.4 and checks it, more strictly than Prometheus
/// itself, so a mistake shows in a test instead of as a silently odd series:
///
/// - every line is a `# HELP`, a `# TYPE`, another comment, blank, or a sample
///   `name{label="value",…} value [timestamp]` with valid names, escapes and number;
/// - every family has one HELP and one TYPE (counter, gauge, histogram, summary or
///   untyped), both before its first sample, and its lines are contiguous;
/// - no two samples are the same series; counters are not negative or NaN;
/// - a histogram's samples are `_bucket`, `_sum` and `_count`; for each label set the
///   buckets have increasing `le`, counts that never decrease, end with `le="+Inf"`, and
///   that last count equals `_count`;
/// - the text ends with a newline.
pub fn check(text: &str) -> Result<Parsed, String> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the text does not end with a newline".into());
    }
    let mut families: Vec<Family> = Vec::new();
    let mut helped: HashSet<String> = HashSet::new();
    // The family the last line belonged to, and per family whether it was left: a family
    // left may not come back.
    let mut current: Option<usize> = None;
    let mut left: Vec<bool> = Vec::new();
    let mut series: HashSet<(String, Vec<(String, String)>)> = HashSet::new();

    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        if raw.trim().is_empty() {
            continue;
        }
        if let Some(comment) = raw.strip_prefix('#') {
            let comment = comment.trim_start_matches([' ', '\t']);
            let (keyword, rest) = split_token(comment);
            if keyword != "HELP" && keyword != "TYPE" {
                continue;
            }
            let (name, rest) = split_token(rest);
            if !is_metric_name(name) {
                return Err(format!("line {line}: bad metric name {name:?}"));
            }
            let i = enter_family(&mut families, &mut left, &mut current, name, line)?;
            if keyword == "HELP" {
                if !helped.insert(name.to_owned()) {
                    return Err(format!("line {line}: a second HELP for {name}"));
                }
                families[i].help = unescape_help(rest).map_err(|e| format!("line {line}: {e}"))?;
            } else {
                // No sample can come before its TYPE (`family_of` needs it), so a TYPE
                // already seen is the only way to be late.
                if !families[i].kind.is_empty() {
                    return Err(format!("line {line}: a second TYPE for {name}"));
                }
                let kind = rest.trim_end_matches([' ', '\t']);
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                    return Err(format!("line {line}: unknown type {kind:?}"));
                }
                families[i].kind = kind.to_owned();
            }
            continue;
        }
        let sample = parse_sample(raw).map_err(|e| format!("line {line}: {e}: {raw:?}"))?;
        let family = family_of(&sample.name, &families).map_err(|e| format!("line {line}: {e}"))?;
        if !helped.contains(&family) {
            return Err(format!(
                "line {line}: {family} has no HELP before its samples"
            ));
        }
        let i = enter_family(&mut families, &mut left, &mut current, &family, line)?;
        let kind = families[i].kind.as_str();
        if kind == "counter" && (sample.value.is_nan() || sample.value < 0.0) {
            return Err(format!(
                "line {line}: counter {} is {}",
                sample.name, sample.value
            ));
        }
        if kind == "histogram" {
            let le = sample.labels.iter().any(|(k, _)| k == "le");
            if sample.name.ends_with("_bucket") != le {
                return Err(format!(
                    "line {line}: `le` goes on _bucket samples and only there"
                ));
            }
        }
        let mut key_labels = sample.labels.clone();
        key_labels.sort();
        if !series.insert((sample.name.clone(), key_labels)) {
            return Err(format!("line {line}: a second sample of the same series"));
        }
        families[i].samples.push(sample);
    }
    for f in &families {
        if f.kind.is_empty() {
            return Err(format!("{} has a HELP but no TYPE", f.name));
        }
        if !helped.contains(&f.name) {
            return Err(format!("{} has a TYPE but no HELP", f.name));
        }
        if f.kind == "histogram" {
            check_histogram(f)?;
        }
    }
    Ok(Parsed { families })
}

/// Moves to family `name` (creating it), refusing to come back to one already left.
fn enter_family(
    families: &mut Vec<Family>,
    left: &mut Vec<bool>,
    current: &mut Option<usize>,
    name: &str,
    line: usize,
) -> Result<usize, String> {
    let i = match families.iter().position(|f| f.name == name) {
        Some(i) => i,
        None => {
            families.push(Family {
                name: name.to_owned(),
                help: String::new(),
                kind: String::new(),
                samples: Vec::new(),
            });
            left.push(false);
            families.len() - 1
        }
    };
    if *current != Some(i) {
        if left[i] {
            return Err(format!("line {line}: the lines of {name} are not together"));
        }
        if let Some(c) = *current {
            left[c] = true;
        }
        *current = Some(i);
    }
    Ok(i)
}

/// The family a sample belongs to: its own name if typed so, else the name without a
/// histogram's or summary's suffix if that is a typed histogram or summary.
fn family_of(sample: &str, families: &[Family]) -> Result<String, String> {
    let kind_of = |name: &str| {
        families
            .iter()
            .find(|f| f.name == name && !f.kind.is_empty())
            .map(|f| f.kind.as_str())
    };
    for (suffix, kinds) in [
        ("_bucket", &["histogram"][..]),
        ("_sum", &["histogram", "summary"][..]),
        ("_count", &["histogram", "summary"][..]),
    ] {
        if let Some(base) = sample.strip_suffix(suffix) {
            if kind_of(base).is_some_and(|k| kinds.contains(&k)) {
                return Ok(base.to_owned());
            }
        }
    }
    match kind_of(sample) {
        None => Err(format!("{sample} has no TYPE before it")),
        Some("histogram") => Err(format!(
            "{sample} is a histogram: its samples are {sample}_bucket, {sample}_sum, {sample}_count"
        )),
        Some(_) => Ok(sample.to_owned()),
    }
}

fn check_histogram(f: &Family) -> Result<(), String> {
    /// The samples of one label set (all labels but `le`).
    struct Series {
        labels: Vec<(String, String)>,
        buckets: Vec<(f64, f64)>,
        count: Option<f64>,
    }
    let mut sets: Vec<Series> = Vec::new();
    for s in &f.samples {
        let mut labels: Vec<(String, String)> = s
            .labels
            .iter()
            .filter(|(k, _)| k != "le")
            .cloned()
            .collect();
        labels.sort();
        let i = match sets.iter().position(|x| x.labels == labels) {
            Some(i) => i,
            None => {
                sets.push(Series {
                    labels,
                    buckets: Vec::new(),
                    count: None,
                });
                sets.len() - 1
            }
        };
        if s.name.ends_with("_bucket") {
            let le = &s.labels.iter().find(|(k, _)| k == "le").expect("checked").1;
            let le =
                parse_float(le).ok_or_else(|| format!("{}: le={le:?} is not a number", f.name))?;
            sets[i].buckets.push((le, s.value));
        } else if s.name.ends_with("_count") {
            sets[i].count = Some(s.value);
        }
    }
    for x in &sets {
        let at = format!("{}{:?}", f.name, x.labels);
        let Some(&(last_le, last_n)) = x.buckets.last() else {
            return Err(format!("{at}: no buckets"));
        };
        for w in x.buckets.windows(2) {
            if w[0].0.partial_cmp(&w[1].0) != Some(Ordering::Less) {
                return Err(format!("{at}: le {} then {}", w[0].0, w[1].0));
            }
            if matches!(w[0].1.partial_cmp(&w[1].1), None | Some(Ordering::Greater)) {
                return Err(format!(
                    "{at}: buckets not cumulative ({} then {})",
                    w[0].1, w[1].1
                ));
            }
        }
        if last_le != f64::INFINITY {
            return Err(format!("{at}: the last bucket is not le=\"+Inf\""));
        }
        match x.count {
            None => return Err(format!("{at}: no _count")),
            Some(c) if c != last_n => {
                return Err(format!("{at}: +Inf bucket {last_n} but _count {c}"));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn split_token(s: &str) -> (&str, &str) {
    match s.find([' ', '\t']) {
        Some(i) => (&s[..i], s[i + 1..].trim_start_matches([' ', '\t'])),
        None => (s, ""),
    }
}

fn unescape_help(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            other => {
                let c = other.unwrap_or(' ');
                return Err(format!("bad escape \\{c} in HELP"));
            }
        }
    }
    Ok(out)
}

pub fn parse_float(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        // Rust also reads "inf", "infinity" and "nan" in any case; the format does not.
        _ if s
            .bytes()
            .any(|b| b.is_ascii_alphabetic() && b != b'e' && b != b'E') =>
        {
            None
        }
        _ => s.parse().ok(),
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..end];
    if !is_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            rest = rest.trim_start_matches([' ', '\t']);
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let end = rest.find(['=', ' ', '\t']).ok_or("unterminated labels")?;
            let label = &rest[..end];
            if !is_label_name(label) || label.starts_with("__") {
                return Err(format!("bad label name {label:?}"));
            }
            rest = rest[end..].trim_start_matches([' ', '\t']);
            rest = rest
                .strip_prefix('=')
                .ok_or("expected = after a label name")?
                .trim_start_matches([' ', '\t']);
            rest = rest
                .strip_prefix('"')
                .ok_or("expected a quoted label value")?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let close = loop {
                match chars.next() {
                    None => return Err("unterminated label value".into()),
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => {
                            let c = other.map_or(' ', |(_, c)| c);
                            return Err(format!("bad escape \\{c} in a label value"));
                        }
                    },
                    Some((_, c)) => value.push(c),
                }
            };
            if labels.iter().any(|(k, _)| k == label) {
                return Err(format!("label {label} twice"));
            }
            labels.push((label.to_owned(), value));
            rest = rest[close + 1..].trim_start_matches([' ', '\t']);
            if let Some(after) = rest.strip_prefix(',') {
                rest = after;
            } else if !rest.starts_with('}') {
                return Err("expected , or } after a label".into());
            }
        }
    }
    if !rest.starts_with([' ', '\t']) {
        return Err("expected a blank before the value".into());
    }
    let mut fields = rest.split([' ', '\t']).filter(|f| !f.is_empty());
    let value = fields.next().ok_or("no value")?;
    let value = parse_float(value).ok_or_else(|| format!("bad value {value:?}"))?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing text after the timestamp".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}
