//! A hand-written SVG chart of a comparison: received msgs/s per target
//! (linear bars) and latency percentiles grouped per percentile (log
//! scale). No plotting dependency; the output is plain, valid SVG 1.1.

use std::fmt::Write as _;

use crate::compare::Comparison;

const COLORS: [&str; 6] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1",
];
const W: f64 = 980.0;
const H: f64 = 420.0;
const TOP: f64 = 60.0;
const BOTTOM: f64 = 350.0;

pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A log10 axis over whole decades covering the values (at least one
/// decade, from 1 up), drawn between `top` and `bottom`.
#[derive(Debug, Clone, Copy)]
pub struct LogAxis {
    lo: f64,
    hi: f64,
    top: f64,
    bottom: f64,
}

impl LogAxis {
    pub fn new(values: &[f64], top: f64, bottom: f64) -> LogAxis {
        let positive = values.iter().copied().filter(|v| *v > 0.0);
        let lo = positive
            .clone()
            .fold(f64::INFINITY, f64::min)
            .max(1.0)
            .log10()
            .floor();
        let hi = positive.fold(1.0, f64::max).log10().ceil().max(lo + 1.0);
        LogAxis {
            lo,
            hi,
            top,
            bottom,
        }
    }

    pub fn y(&self, v: f64) -> f64 {
        let at = (v.max(1.0).log10() - self.lo) / (self.hi - self.lo);
        self.bottom - (self.bottom - self.top) * at.clamp(0.0, 1.0)
    }

    /// The base line, and a grid line with its label at each decade.
    pub fn draw(&self, s: &mut String, x0: f64, x1: f64) {
        let bottom = self.bottom;
        let _ = writeln!(
            s,
            r#"<line x1="{x0}" y1="{bottom}" x2="{x1}" y2="{bottom}" stroke="black"/>"#
        );
        let mut decade = self.lo;
        while decade <= self.hi {
            let y = self.y(10f64.powf(decade));
            let _ = writeln!(
                s,
                r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#ddd"/>"##
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                x0 - 4.0,
                y + 4.0,
                short(10f64.powf(decade))
            );
            decade += 1.0;
        }
    }
}

pub fn chart(c: &Comparison) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" font-size="16" text-anchor="middle">{} — median of {} round(s)</text>"#,
        W / 2.0,
        esc(&c.scenario),
        c.rounds
    );
    let n = c.targets.len().max(1) as f64;

    // Panel 1: throughput.
    let (x0, x1) = (60.0, 380.0);
    let max_rate = c
        .targets
        .iter()
        .map(|t| t.median.received_per_s)
        .fold(0.0, f64::max)
        .max(1.0);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">received msgs/s</text>"#,
        (x0 + x1) / 2.0,
        TOP - 12.0
    );
    let _ = writeln!(
        s,
        r#"<line x1="{x0}" y1="{BOTTOM}" x2="{x1}" y2="{BOTTOM}" stroke="black"/>"#
    );
    let slot = (x1 - x0) / n;
    for (i, t) in c.targets.iter().enumerate() {
        let v = t.median.received_per_s;
        let h = (BOTTOM - TOP) * v / max_rate;
        let x = x0 + slot * i as f64 + slot * 0.15;
        let w = slot * 0.7;
        let _ = writeln!(
            s,
            r#"<rect x="{x:.1}" y="{:.1}" width="{w:.1}" height="{h:.1}" fill="{}"/>"#,
            BOTTOM - h,
            COLORS[i % COLORS.len()]
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x + w / 2.0,
            BOTTOM - h - 4.0,
            short(v)
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x + w / 2.0,
            BOTTOM + 16.0,
            esc(&t.name)
        );
    }

    // Panel 2: latency percentiles, log scale.
    let (x0, x1) = (460.0, 960.0);
    type Pick = fn(&crate::compare::Medians) -> f64;
    let pcts: [(&str, Pick); 4] = [
        ("p50", |m| m.p50_us),
        ("p90", |m| m.p90_us),
        ("p99", |m| m.p99_us),
        ("p99.9", |m| m.p999_us),
    ];
    let values: Vec<f64> = c
        .targets
        .iter()
        .flat_map(|t| pcts.iter().map(move |(_, f)| f(&t.median)))
        .collect();
    let axis = LogAxis::new(&values, TOP, BOTTOM);
    let y_of = |v: f64| axis.y(v);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">latency µs (log scale)</text>"#,
        (x0 + x1) / 2.0,
        TOP - 12.0
    );
    axis.draw(&mut s, x0, x1);
    let group = (x1 - x0) / pcts.len() as f64;
    let bar = group * 0.8 / n;
    for (g, (label, f)) in pcts.iter().enumerate() {
        let gx = x0 + group * g as f64 + group * 0.1;
        for (i, t) in c.targets.iter().enumerate() {
            let v = f(&t.median);
            let y = y_of(v);
            let x = gx + bar * i as f64;
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} {label}: {v:.0} µs</title></rect>"#,
                bar * 0.9,
                BOTTOM - y,
                COLORS[i % COLORS.len()],
                esc(&t.name)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
            gx + group * 0.4,
            BOTTOM + 16.0
        );
    }
    // Legend.
    for (i, t) in c.targets.iter().enumerate() {
        let x = 60.0 + 180.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{}"/>"#,
            H - 34.0,
            COLORS[i % COLORS.len()]
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}">{}</text>"#,
            x + 16.0,
            H - 24.0,
            esc(&t.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::{Medians, TargetResult};

    #[test]
    fn chart_has_a_bar_per_target_and_escapes_names() {
        let t = |name: &str, rate: f64| TargetResult {
            name: name.to_owned(),
            target: String::new(),
            median: Medians {
                received_per_s: rate,
                p50_us: 50.0,
                p90_us: 90.0,
                p99_us: 990.0,
                p999_us: 5000.0,
                ..Default::default()
            },
            runs: Vec::new(),
        };
        let c = Comparison {
            scenario: "fan-in".into(),
            rounds: 2,
            targets: vec![t("a<b", 1000.0), t("m", 500.0)],
        };
        let svg = chart(&c);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("a&lt;b") && !svg.contains("a<b"));
        // 2 throughput bars + 4 percentiles x 2 targets + 2 legend swatches + background.
        assert_eq!(svg.matches("<rect").count(), 1 + 2 + 8 + 2);
    }
}
