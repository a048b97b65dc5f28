//! The `encryption` report as text: the side-by-side table the terminal
//! prints, and the rows and floor sentence the HTML page shares with it.

use std::fmt::Write as _;

use super::report::{Cell, EncReport};

impl EncReport {
    /// The side-by-side table for the terminal.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "encryptInternalTraffic Enabled vs Disabled: {} ({}), median of {} round(s), QoS {}",
            self.config_source,
            match self.disk_buffer.as_str() {
                "added by the harness" => "disk buffer ADDED BY THE HARNESS",
                "none" => "no disk buffer",
                _ => "its disk buffer",
            },
            self.plan.rounds,
            self.plan.qos
        );
        let _ = writeln!(
            s,
            "{:<34}{:>14}{:>14}{:>8}",
            "", "Enabled", "Disabled", "E/D"
        );
        for c in &self.cells {
            cell_rows(&mut s, c);
        }
        for p in &self.pending {
            let _ = writeln!(s, "{}: not run yet, waits for {}", p.name, p.waits_for);
        }
        s
    }
}

pub fn payload_label(bytes: usize) -> String {
    if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

pub fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Rows of one cell: (label, Enabled, Disabled, ratio). Shared with the
/// HTML page.
pub fn rows(c: &Cell) -> Vec<(String, String, String, String)> {
    let (e, d, r) = (&c.enabled, &c.disabled, &c.ratio);
    let num = |v: Option<f64>| v.map_or("-".to_owned(), fmt_num);
    let rat = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.2}"));
    let mut out = vec![(
        "delivered msgs/s".to_owned(),
        num(Some(e.delivered_per_s)),
        num(Some(d.delivered_per_s)),
        rat(r.delivered_per_s),
    )];
    if c.spills {
        out.push((
            "drain msgs/s".into(),
            num(e.drain_per_s),
            num(d.drain_per_s),
            rat(r.drain_per_s),
        ));
        if e.runs > 1 {
            out.push((
                "drain E/D, paired by round".into(),
                String::new(),
                String::new(),
                rat(r.drain_per_s_paired),
            ));
        }
    }
    for (label, a, b, q) in [
        ("latency p50 µs", e.p50_us, d.p50_us, r.p50_us),
        ("latency p99 µs", e.p99_us, d.p99_us, r.p99_us),
        ("latency p99.9 µs", e.p999_us, d.p999_us, r.p999_us),
    ] {
        out.push((label.into(), num(Some(a)), num(Some(b)), rat(q)));
    }
    out.push((
        "broker CPU ms / 1,000 msgs".into(),
        num(e.cpu_ms_per_1000),
        num(d.cpu_ms_per_1000),
        rat(r.cpu_ms_per_1000),
    ));
    out.push((
        "broker RSS peak MiB".into(),
        num(e.rss_mib_peak),
        num(d.rss_mib_peak),
        rat(r.rss_mib_peak),
    ));
    let count = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
    out.push((
        "spilled to disk, msgs".into(),
        count(e.spilled),
        count(d.spilled),
        String::new(),
    ));
    out.push((
        "lost / duplicates".into(),
        format!("{} / {}", e.lost, e.duplicated),
        format!("{} / {}", d.lost, d.duplicated),
        String::new(),
    ));
    if e.failed_runs + d.failed_runs > 0 {
        out.push((
            "FAILED runs".into(),
            format!("{}/{}", e.failed_runs, e.runs),
            format!("{}/{}", d.failed_runs, d.runs),
            String::new(),
        ));
    }
    out
}

/// The floor in words.
pub fn floor_text(c: &Cell) -> String {
    let Some(f) = &c.floor else {
        return "no disk buffer: Enabled has nothing to seal here".to_owned();
    };
    if c.enabled.spilled.unwrap_or(0.0) == 0.0 {
        return "nothing spilled: the cipher had nothing to do (expect parity)".to_owned();
    }
    let mut s = format!(
        "cipher floor {} ms / 1,000 msgs (AES-256-GCM seal+open of the spilled messages; {} more than Disabled's CRC-32)",
        fmt_num(f.cipher_ms_per_1000),
        fmt_num(f.extra_ms_per_1000)
    );
    if let Some(m) = f.measured_extra_ms_per_1000 {
        let _ = write!(s, "; measured Enabled - Disabled: {} ms", fmt_num(m));
        if m > 0.0 {
            let _ = write!(
                s,
                " (the cipher would explain {:.0}% of it)",
                (f.extra_ms_per_1000 / m * 100.0).min(999.0)
            );
        }
    }
    if let (Some(m), Some(c)) = (f.drain_extra_ns_measured, f.drain_extra_ns_cipher) {
        let _ = write!(
            s,
            "; drain: Enabled took {:.0} ns {} per message than Disabled, the cipher's share {c:.0} ns",
            m.abs(),
            if m >= 0.0 { "more" } else { "less" }
        );
    }
    if let Some(r) = f.drain_ratio_cipher_only {
        let _ = write!(s, " (drain E/D if only the cipher differed: {r:.2})");
    }
    s
}

fn cell_rows(s: &mut String, c: &Cell) {
    let _ = writeln!(
        s,
        "{}, {} payload",
        c.scenario,
        payload_label(c.payload_bytes)
    );
    for (label, e, d, r) in rows(c) {
        let _ = writeln!(s, "  {label:<32}{e:>14}{d:>14}{r:>8}");
    }
    let _ = writeln!(s, "  {}", floor_text(c));
    for line in &c.evidence {
        let _ = writeln!(s, "  {line}");
    }
}
