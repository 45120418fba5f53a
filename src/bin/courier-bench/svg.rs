//! Hand-written SVG line charts for the bench's results: a latency distribution (CDF) and
//! a rate over time, drawn side by side in one file that a Markdown page can embed. No
//! plotting crate: a chart is a few hundred bytes of text, and the bench binary stays free
//! of dependencies the server does not have.

use std::fmt::Write as _;

use crate::stats::Histogram;

/// Size of one panel, in SVG user units (pixels when shown at 100 %).
const PANEL_W: f64 = 540.0;
const PANEL_H: f64 = 340.0;
/// Plot area margins inside a panel: room for the title, tick labels and axis names.
const LEFT: f64 = 72.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 48.0;
const BOTTOM: f64 = 52.0;
/// Line colours, one per series (colour-blind friendly: Okabe and Ito).
const COLOURS: [&str; 6] = [
    "#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9",
];

/// How a tick value is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// A count or a rate: 1.5k, 2M.
    Count,
    /// Microseconds: 250µs, 1.5ms, 2s.
    Micros,
    /// A fraction shown as a percentage: 0.99 → 99%.
    Fraction,
    /// Seconds: 5s.
    Seconds,
}

/// One line of a chart.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// One panel.
pub struct Chart {
    pub title: String,
    /// Short lines under the title (percentiles, totals).
    pub notes: Vec<String>,
    pub x_label: String,
    pub y_label: String,
    pub x_unit: Unit,
    pub y_unit: Unit,
    /// A logarithmic x axis (decades), for latency.
    pub x_log: bool,
    pub series: Vec<Series>,
}

/// The CDF of a latency histogram (nanoseconds) as (microseconds, fraction at or below)
/// points, one per non-empty bucket, starting from the smallest value at 0.
pub fn cdf(h: &Histogram) -> Vec<(f64, f64)> {
    let total = h.count();
    if total == 0 {
        return Vec::new();
    }
    let mut points = Vec::new();
    let mut seen = 0u64;
    for (bound, count) in h.buckets() {
        let x = (bound as f64 / 1e3).max(0.001);
        if points.is_empty() {
            points.push((x, 0.0));
        }
        seen += count;
        points.push((x, seen as f64 / total as f64));
    }
    points
}

/// The charts side by side in one SVG document.
pub fn render(charts: &[Chart]) -> String {
    let width = PANEL_W * charts.len().max(1) as f64;
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{PANEL_H}\" \
         viewBox=\"0 0 {width} {PANEL_H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"{width}\" height=\"{PANEL_H}\" fill=\"#ffffff\"/>\n"
    );
    for (i, chart) in charts.iter().enumerate() {
        let _ = writeln!(s, "<g transform=\"translate({},0)\">", i as f64 * PANEL_W);
        panel(&mut s, chart);
        s.push_str("</g>\n");
    }
    s.push_str("</svg>\n");
    s
}

/// Axis range and tick positions for one axis.
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    ticks: Vec<f64>,
}

impl Axis {
    fn new(values: impl Iterator<Item = f64> + Clone, log: bool, unit: Unit) -> Axis {
        let finite = values.filter(|v| v.is_finite());
        if log {
            let positive = finite.filter(|v| *v > 0.0);
            let min = positive.clone().fold(f64::INFINITY, f64::min);
            let max = positive.fold(0.0f64, f64::max);
            let (min, max) = if min.is_finite() && max > 0.0 {
                (min, max)
            } else {
                (1.0, 10.0)
            };
            let lo = 10f64.powf(min.log10().floor());
            let mut hi = 10f64.powf(max.log10().ceil());
            if hi <= lo {
                hi = lo * 10.0;
            }
            let mut ticks = Vec::new();
            let mut t = lo;
            while t <= hi * 1.0001 {
                ticks.push(t);
                t *= 10.0;
            }
            return Axis { lo, hi, log, ticks };
        }
        let max = finite.fold(0.0f64, f64::max);
        let hi = match unit {
            Unit::Fraction => 1.0,
            _ if max <= 0.0 => 1.0,
            _ => max * 1.08,
        };
        let step = nice_step(hi / 5.0);
        let hi = (hi / step).ceil() * step;
        let ticks = (0..)
            .map(|k| k as f64 * step)
            .take_while(|t| *t <= hi * 1.0001)
            .collect();
        Axis {
            lo: 0.0,
            hi,
            log,
            ticks,
        }
    }

    /// Where `v` falls, 0 (low end) to 1 (high end), clamped.
    fn frac(&self, v: f64) -> f64 {
        let f = if self.log {
            let v = v.max(self.lo);
            (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        };
        if f.is_finite() {
            f.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * p)
}

/// A tick label.
pub fn label(v: f64, unit: Unit) -> String {
    fn trim(x: f64) -> String {
        let s = format!("{x:.1}");
        s.strip_suffix(".0").map_or(s.clone(), str::to_owned)
    }
    match unit {
        Unit::Count => {
            let a = v.abs();
            if a >= 1e6 {
                format!("{}M", trim(v / 1e6))
            } else if a >= 1e3 {
                format!("{}k", trim(v / 1e3))
            } else {
                trim(v)
            }
        }
        Unit::Micros => {
            if v >= 1e6 {
                format!("{}s", trim(v / 1e6))
            } else if v >= 1e3 {
                format!("{}ms", trim(v / 1e3))
            } else if v >= 1.0 {
                format!("{}µs", trim(v))
            } else {
                format!("{}ns", trim(v * 1e3))
            }
        }
        Unit::Fraction => format!("{}%", trim(v * 100.0)),
        Unit::Seconds => format!("{}s", trim(v)),
    }
}

/// Text content with the five XML specials escaped.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

fn panel(s: &mut String, chart: &Chart) {
    let (x0, x1) = (LEFT, PANEL_W - RIGHT);
    let (y0, y1) = (PANEL_H - BOTTOM, TOP + 12.0 * chart.notes.len() as f64);
    let xs = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0));
    let ys = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1));
    let xa = Axis::new(xs, chart.x_log, chart.x_unit);
    let ya = Axis::new(ys, false, chart.y_unit);
    let px = |v: f64| x0 + xa.frac(v) * (x1 - x0);
    let py = |v: f64| y0 - ya.frac(v) * (y0 - y1);

    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\" \
         font-weight=\"bold\">{}</text>",
        PANEL_W / 2.0,
        esc(&chart.title)
    );
    for (i, note) in chart.notes.iter().enumerate() {
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#444\">{}</text>",
            PANEL_W / 2.0,
            36.0 + 13.0 * i as f64,
            esc(note)
        );
    }
    // Grid and tick labels.
    for &t in &xa.ticks {
        let x = px(t);
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{y1:.1}\" x2=\"{x:.1}\" y2=\"{y0:.1}\" stroke=\"#e4e4e4\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            y0 + 16.0,
            esc(&label(t, chart.x_unit))
        );
    }
    for &t in &ya.ticks {
        let y = py(t);
        let _ = writeln!(
            s,
            "<line x1=\"{x0:.1}\" y1=\"{y:.1}\" x2=\"{x1:.1}\" y2=\"{y:.1}\" stroke=\"#e4e4e4\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            x0 - 6.0,
            y + 4.0,
            esc(&label(t, chart.y_unit))
        );
    }
    let _ = writeln!(
        s,
        "<rect x=\"{x0:.1}\" y=\"{y1:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"none\" \
         stroke=\"#888\"/>",
        x1 - x0,
        y0 - y1
    );
    // Axis names.
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
        (x0 + x1) / 2.0,
        PANEL_H - 12.0,
        esc(&chart.x_label)
    );
    let (lx, ly) = (16.0, (y0 + y1) / 2.0);
    let _ = writeln!(
        s,
        "<text x=\"{lx}\" y=\"{ly:.1}\" text-anchor=\"middle\" \
         transform=\"rotate(-90 {lx} {ly:.1})\">{}</text>",
        esc(&chart.y_label)
    );
    // The lines, then the legend over them.
    for (i, series) in chart.series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let mut points = String::new();
        for &(x, y) in &series.points {
            if x.is_finite() && y.is_finite() {
                let _ = write!(points, "{:.1},{:.1} ", px(x), py(y));
            }
        }
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.8\" \
             stroke-linejoin=\"round\" points=\"{}\"/>",
            points.trim_end()
        );
    }
    if chart.series.len() > 1 || chart.series.iter().any(|s| !s.name.is_empty()) {
        for (i, series) in chart.series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let y = y1 + 14.0 + 15.0 * i as f64;
            let x = x0 + 10.0;
            let _ = writeln!(
                s,
                "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{colour}\" \
                 stroke-width=\"3\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                y - 4.0,
                x + 18.0,
                y - 4.0,
                x + 24.0,
                y,
                esc(&series.name)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(label(1500.0, Unit::Count), "1.5k");
        assert_eq!(label(2_000_000.0, Unit::Count), "2M");
        assert_eq!(label(40.0, Unit::Count), "40");
        assert_eq!(label(250.0, Unit::Micros), "250µs");
        assert_eq!(label(1500.0, Unit::Micros), "1.5ms");
        assert_eq!(label(3e6, Unit::Micros), "3s");
        assert_eq!(label(0.99, Unit::Fraction), "99%");
        assert_eq!(label(5.0, Unit::Seconds), "5s");
    }

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(nice_step(1.0), 1.0);
        assert_eq!(nice_step(130.0), 200.0);
        assert_eq!(nice_step(700.0), 1000.0);
    }

    #[test]
    fn a_cdf_rises_to_one() {
        let mut h = Histogram::default();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let c = cdf(&h);
        assert_eq!(c.first().map(|p| p.1), Some(0.0));
        assert_eq!(c.last().map(|p| p.1), Some(1.0));
        assert!(c.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        assert!(cdf(&Histogram::default()).is_empty());
    }

    #[test]
    fn a_document_with_two_panels() {
        let mut h = Histogram::default();
        for v in [1_000u64, 2_000, 50_000, 900_000] {
            h.record(v);
        }
        let charts = [
            Chart {
                title: "latency <CDF>".into(),
                notes: vec!["p50 2 ms".into()],
                x_label: "latency".into(),
                y_label: "fraction".into(),
                x_unit: Unit::Micros,
                y_unit: Unit::Fraction,
                x_log: true,
                series: vec![Series {
                    name: "send -> delivery".into(),
                    points: cdf(&h),
                }],
            },
            Chart {
                title: "rate".into(),
                notes: Vec::new(),
                x_label: "time".into(),
                y_label: "per second".into(),
                x_unit: Unit::Seconds,
                y_unit: Unit::Count,
                x_log: false,
                series: vec![Series {
                    name: String::new(),
                    points: vec![(1.0, 10.0), (2.0, f64::NAN), (3.0, 30.0)],
                }],
            },
        ];
        let doc = render(&charts);
        assert!(doc.starts_with("<svg "));
        assert!(doc.trim_end().ends_with("</svg>"));
        assert_eq!(doc.matches("<polyline").count(), 2);
        assert!(doc.contains("latency &lt;CDF&gt;"));
        assert!(!doc.contains("NaN") && !doc.contains("inf"));
        assert!(doc.contains("1ms") && doc.contains("100%"));
    }
}
