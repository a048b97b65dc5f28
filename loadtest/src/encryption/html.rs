//! The `encryption` report as a page a browser opens with nothing else: one
//! inline SVG chart per scenario (throughput, latency percentiles, broker CPU
//! per message against the cipher's floor, Enabled vs Disabled per payload
//! size), the table, the evidence and the config changes. No network
//! fetches; the only script toggles a series and marks the page ready.

use std::fmt::Write as _;

use super::report::{Cell, EncReport};
use super::table::{floor_text, payload_label, rows};
use crate::svg::{esc, short, LogAxis};

const ENABLED: &str = "#4e79a7";
const DISABLED: &str = "#f28e2b";
const FLOOR: &str = "#59a14f";
pub const CHART_W: f64 = 1000.0;
pub const CHART_H: f64 = 330.0;
const TOP: f64 = 80.0;
const BOTTOM: f64 = 270.0;

/// A bar from `BOTTOM` up to `top`, with a tooltip.
fn bar(s: &mut String, class: &str, color: &str, x: f64, w: f64, top: f64, tip: &str) {
    segment(s, class, color, (x, w), (top, BOTTOM), tip);
}

/// A bar from `bottom` up to `top`.
fn segment(
    s: &mut String,
    class: &str,
    color: &str,
    (x, w): (f64, f64),
    (top, bottom): (f64, f64),
    tip: &str,
) {
    let _ = writeln!(
        s,
        r#"<rect class="bar {class}" x="{x:.1}" y="{top:.1}" width="{w:.1}" height="{:.1}" fill="{color}"><title>{}</title></rect>"#,
        (bottom - top).max(0.0),
        esc(tip)
    );
}

fn text(s: &mut String, x: f64, y: f64, anchor: &str, body: &str) {
    let _ = writeln!(
        s,
        r#"<text x="{x:.1}" y="{y:.1}" text-anchor="{anchor}">{}</text>"#,
        esc(body)
    );
}

/// A bar's value, small enough for three bars side by side.
fn value(s: &mut String, x: f64, y: f64, body: &str) {
    let _ = writeln!(
        s,
        r#"<text x="{x:.1}" y="{y:.1}" text-anchor="middle" font-size="10">{}</text>"#,
        esc(body)
    );
}

/// Enabled, Disabled and (optionally) what sits on top of Disabled.
type Pick<'a> = &'a dyn Fn(&Cell) -> (Option<f64>, Option<f64>, Option<f64>);

/// Small multiples: one pair (or trio) of bars per payload, each on its own
/// linear scale from zero, so a ratio reads as a height difference.
fn pairs_panel(s: &mut String, (x0, x1): (f64, f64), title: &str, cells: &[&Cell], get: Pick<'_>) {
    text(s, (x0 + x1) / 2.0, TOP - 22.0, "middle", title);
    let _ = writeln!(
        s,
        r#"<line x1="{x0}" y1="{BOTTOM}" x2="{x1}" y2="{BOTTOM}" stroke="black"/>"#
    );
    let slot = (x1 - x0) / cells.len().max(1) as f64;
    for (i, c) in cells.iter().enumerate() {
        let (e, d, floor) = get(c);
        let max = [e, d, d.zip(floor).map(|(d, f)| d + f)]
            .into_iter()
            .flatten()
            .fold(0.0, f64::max);
        let gx = x0 + slot * i as f64;
        let w = slot * 0.26;
        let y = |v: f64| {
            if max > 0.0 {
                BOTTOM - (BOTTOM - TOP) * v / max
            } else {
                BOTTOM
            }
        };
        let label = payload_label(c.payload_bytes);
        for (k, (v, class, color, name)) in [
            (e, "enabled", ENABLED, "Enabled"),
            (d, "disabled", DISABLED, "Disabled"),
        ]
        .into_iter()
        .enumerate()
        {
            let x = gx + slot * 0.08 + (w + 2.0) * k as f64;
            if let Some(v) = v {
                bar(
                    s,
                    class,
                    color,
                    x,
                    w,
                    y(v),
                    &format!("{name}, {label}: {}", short(v)),
                );
                value(s, x + w / 2.0, y(v) - 4.0, &short(v));
            }
        }
        if let (Some(d), Some(f)) = (d, floor) {
            // Disabled plus what the cipher alone would add.
            let x = gx + slot * 0.08 + (w + 2.0) * 2.0;
            bar(
                s,
                "disabled",
                DISABLED,
                x,
                w,
                y(d),
                &format!("Disabled, {label}: {}", short(d)),
            );
            // The floor sits on top of the Disabled bar.
            segment(
                s,
                "floor",
                FLOOR,
                (x, w),
                (y(d + f), y(d)),
                &format!(
                    "Disabled + cipher floor, {label}: {} + {}",
                    short(d),
                    short(f)
                ),
            );
            value(s, x + w / 2.0, y(d + f) - 4.0, &format!("+{}", short(f)));
        }
        text(s, gx + slot / 2.0, BOTTOM + 16.0, "middle", &label);
        if let (Some(e), Some(d)) = (e, d) {
            if d > 0.0 {
                text(
                    s,
                    gx + slot / 2.0,
                    BOTTOM + 32.0,
                    "middle",
                    &format!("E/D {:.2}", e / d),
                );
            }
        }
    }
}

/// Latency percentiles on one log scale for every payload.
fn latency_panel(s: &mut String, (x0, x1): (f64, f64), cells: &[&Cell]) {
    text(
        s,
        (x0 + x1) / 2.0,
        TOP - 22.0,
        "middle",
        "latency µs, p50 / p99 / p99.9 (log scale)",
    );
    let pcts = |c: &Cell| {
        [
            ("p50", c.enabled.p50_us, c.disabled.p50_us),
            ("p99", c.enabled.p99_us, c.disabled.p99_us),
            ("p99.9", c.enabled.p999_us, c.disabled.p999_us),
        ]
    };
    let values: Vec<f64> = cells
        .iter()
        .flat_map(|c| pcts(c).into_iter().flat_map(|(_, e, d)| [e, d]))
        .collect();
    let axis = LogAxis::new(&values, TOP, BOTTOM);
    let y = |v: f64| axis.y(v);
    axis.draw(s, x0, x1);
    let slot = (x1 - x0) / cells.len().max(1) as f64;
    for (i, c) in cells.iter().enumerate() {
        let gx = x0 + slot * i as f64;
        let sub = slot * 0.9 / 3.0;
        let label = payload_label(c.payload_bytes);
        for (k, (name, e, d)) in pcts(c).into_iter().enumerate() {
            let px = gx + slot * 0.05 + sub * k as f64;
            let w = sub * 0.4;
            bar(
                s,
                "enabled",
                ENABLED,
                px,
                w,
                y(e),
                &format!("Enabled, {label}, {name}: {e:.0} µs"),
            );
            bar(
                s,
                "disabled",
                DISABLED,
                px + w,
                w,
                y(d),
                &format!("Disabled, {label}, {name}: {d:.0} µs"),
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="9">{name}</text>"#,
                px + w,
                BOTTOM + 11.0
            );
        }
        text(s, gx + slot / 2.0, BOTTOM + 26.0, "middle", &label);
    }
}

/// One scenario's chart body (no `<svg>` wrapper), in a 1000 x 330 box.
fn chart_body(scenario: &str, cells: &[&Cell]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<rect width="{CHART_W}" height="{CHART_H}" fill="white"/>"#
    );
    let spills = cells.iter().any(|c| c.spills);
    let _ = writeln!(
        s,
        r#"<text x="12" y="22" font-size="16" font-weight="bold">{}</text>"#,
        esc(scenario)
    );
    if let Ok(sc) = super::Workload::parse(scenario) {
        let _ = writeln!(
            s,
            r##"<text x="12" y="40" font-size="11" fill="#555">{}</text>"##,
            esc(super::about(sc))
        );
    }
    let (title, get): (&str, Pick<'_>) = if spills {
        ("drain of the backlog, msgs/s", &|c: &Cell| {
            (c.enabled.drain_per_s, c.disabled.drain_per_s, None)
        })
    } else {
        ("delivered msgs/s", &|c: &Cell| {
            (
                Some(c.enabled.delivered_per_s),
                Some(c.disabled.delivered_per_s),
                None,
            )
        })
    };
    pairs_panel(&mut s, (30.0, 320.0), title, cells, get);
    latency_panel(&mut s, (380.0, 660.0), cells);
    if spills {
        let per_msg = |r: Option<f64>| r.filter(|r| *r > 0.0).map(|r| 1e9 / r);
        pairs_panel(
            &mut s,
            (700.0, 990.0),
            "drain, ns per message (1 / rate); 3rd: Disabled + cipher",
            cells,
            &|c: &Cell| {
                let floor = c.floor.as_ref().and_then(|f| f.drain_extra_ns_cipher);
                (
                    per_msg(c.enabled.drain_per_s),
                    per_msg(c.disabled.drain_per_s),
                    floor,
                )
            },
        );
    } else {
        pairs_panel(
            &mut s,
            (700.0, 990.0),
            "broker CPU ms / 1,000 msgs",
            cells,
            &|c: &Cell| (c.enabled.cpu_ms_per_1000, c.disabled.cpu_ms_per_1000, None),
        );
    }
    // Legend.
    for (i, (color, name, class)) in [
        (ENABLED, "Enabled", "enabled"),
        (DISABLED, "Disabled", "disabled"),
        (FLOOR, "cipher floor", "floor"),
    ]
    .into_iter()
    .enumerate()
    {
        let x = [600.0, 690.0, 780.0][i];
        let _ = writeln!(
            s,
            r#"<g class="legend" data-series="{class}"><rect x="{x}" y="10" width="12" height="12" fill="{color}"/><text x="{}" y="21">{name}</text></g>"#,
            x + 16.0
        );
    }
    s
}

fn by_scenario(report: &EncReport) -> Vec<(String, Vec<&Cell>)> {
    let mut out: Vec<(String, Vec<&Cell>)> = Vec::new();
    for c in &report.cells {
        match out.iter_mut().find(|(n, _)| *n == c.scenario) {
            Some((_, v)) => v.push(c),
            None => out.push((c.scenario.clone(), vec![c])),
        }
    }
    out
}

/// Every scenario's chart stacked in one SVG file (for docs and tickets).
pub fn svg(report: &EncReport) -> String {
    let groups = by_scenario(report);
    let h = CHART_H * groups.len().max(1) as f64;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{CHART_W}" height="{h}" viewBox="0 0 {CHART_W} {h}" font-family="sans-serif" font-size="12">"#
    );
    s.push('\n');
    for (i, (name, cells)) in groups.iter().enumerate() {
        let _ = writeln!(s, r#"<g transform="translate(0,{})">"#, CHART_H * i as f64);
        s.push_str(&chart_body(name, cells));
        s.push_str("</g>\n");
    }
    s.push_str("</svg>\n");
    s
}

const STYLE: &str = "body{font-family:sans-serif;margin:24px;max-width:1060px;color:#222}
table{border-collapse:collapse;margin:8px 0 16px}td,th{padding:2px 10px;border-bottom:1px solid #eee;text-align:right}
td:first-child,th:first-child{text-align:left}.note{color:#555;font-size:90%}.fail{color:#b00;font-weight:bold}
.warn{background:#fff4d6;padding:6px 10px;border-left:4px solid #e0a000}svg.chart{display:block;margin:12px 0;border:1px solid #ddd}
g.legend{cursor:pointer}body.hide-enabled .bar.enabled,body.hide-disabled .bar.disabled,body.hide-floor .bar.floor{opacity:.08}";

/// Legend entries toggle their series; `data-ready` tells a test (or a
/// person) that the script ran to the end.
const SCRIPT: &str = "document.querySelectorAll('g.legend').forEach(function(g){
g.addEventListener('click',function(){document.body.classList.toggle('hide-'+g.getAttribute('data-series'));});});
document.body.setAttribute('data-ready',String(document.querySelectorAll('svg.chart rect.bar').length));";

pub fn page(report: &EncReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>shardmq encryptInternalTraffic: Enabled vs Disabled</title><style>{STYLE}</style></head><body>"
    );
    let _ = writeln!(s, "<h1>encryptInternalTraffic: Enabled vs Disabled</h1>");
    let m = &report.machine;
    let _ = writeln!(
        s,
        "<p>{} on {}, config: <b>{}</b>, disk buffer: <b>{}</b>. Median of {} interleaved round(s) per setting, {} s measured after {} s warm-up, QoS {}. {}.</p>",
        esc(report.broker_version.as_deref().unwrap_or("shardmq")),
        esc(&format!("{} ({} CPUs, Linux {})", m.cpu, m.cpus, m.kernel)),
        esc(&report.config_source),
        esc(&report.disk_buffer),
        report.plan.rounds,
        report.plan.duration_s,
        report.plan.warmup_s,
        report.plan.qos,
        esc(&report.generated_utc)
    );
    let _ = writeln!(
        s,
        "<p class=\"note\">Load average at start {} / at end {}. Harness build: {}.</p>",
        esc(&m.load_average_start),
        esc(&m.load_average_end),
        m.harness_build
    );
    s.push_str("<p>Where nothing queues (fan-in, fan-out, p2p) Enabled has nothing to seal: the two settings should agree within the machine's noise. Where a subscriber falls behind (slow-reader, slow-sub) the messages past <code>subscriberQueueLimit.length</code> spill to the disk buffer: sealed with AES-256-GCM when Enabled (a CRC-32 when Disabled) and opened again as they drain. The <b>cipher floor</b> is what those seals and opens cost on this CPU with the broker's own code; where Enabled costs much more than the floor, the difference is not the cipher.</p>\n");
    if m.harness_build == "debug" {
        let _ = writeln!(s, "<p class=\"warn\">Debug build of the harness: the cipher floor (and the load it generates) are not representative; use a release build.</p>");
    }
    if report.disk_buffer == "added by the harness" {
        let _ = writeln!(s, "<p class=\"warn\">Your config has no disk buffer: the harness ADDED one for these runs. Without it, encryptInternalTraffic has no buffered data to seal on this broker.</p>");
    }
    if !report.ok {
        let _ = writeln!(s, "<p class=\"fail\">Some runs failed (loss, duplicates, or evidence that the setting was not in force):</p>\n<ul>");
        for r in report.runs.iter().filter(|r| !r.ok()) {
            let reasons: Vec<&str> = r
                .report
                .failures
                .iter()
                .chain(&r.setting_failures)
                .map(String::as_str)
                .collect();
            let _ = writeln!(
                s,
                "<li>round {}, {} {}, {}: {}</li>",
                r.round + 1,
                esc(&r.scenario),
                esc(&payload_label(r.payload_bytes)),
                r.setting.name(),
                esc(&reasons.join("; "))
            );
        }
        s.push_str("</ul>\n");
    }
    s.push_str("<h2>Charts</h2>\n<p class=\"note\">Click a legend entry to fade its series. The throughput and cost panels put each payload size on its own linear scale from zero.</p>\n");
    for (name, cells) in by_scenario(report) {
        let _ = writeln!(
            s,
            r#"<svg class="chart" data-scenario="{}" xmlns="http://www.w3.org/2000/svg" width="{CHART_W}" height="{CHART_H}" viewBox="0 0 {CHART_W} {CHART_H}" font-family="sans-serif" font-size="12">"#,
            esc(&name)
        );
        s.push_str(&chart_body(&name, &cells));
        s.push_str("</svg>\n");
    }
    s.push_str("<h2>Medians</h2>\n<table><tr><th></th><th>Enabled</th><th>Disabled</th><th>E/D</th></tr>\n");
    for c in &report.cells {
        let _ = writeln!(
            s,
            "<tr><th colspan=\"4\" style=\"text-align:left;padding-top:12px\">{}, {} payload</th></tr>",
            esc(&c.scenario),
            esc(&payload_label(c.payload_bytes))
        );
        for (label, e, d, r) in rows(c) {
            let _ = writeln!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&label),
                esc(&e),
                esc(&d),
                esc(&r)
            );
        }
        let _ = writeln!(
            s,
            "<tr><td colspan=\"4\" class=\"note\">{}</td></tr>",
            esc(&floor_text(c))
        );
        for line in &c.evidence {
            let _ = writeln!(
                s,
                "<tr><td colspan=\"4\" class=\"note\">{}</td></tr>",
                esc(line)
            );
        }
    }
    s.push_str("</table>\n<h2>The cipher on this CPU</h2>\n<p class=\"note\">shardmq-core's record format and Sealer, the code the broker seals its disk buffer with: records gathered in ~16 KiB blocks, one AES-256-GCM call per block (Disabled: one CRC-32). Per message, best of 7 passes, cache-warm.</p>\n");
    s.push_str("<table><tr><th>payload</th><th>record B</th><th>per block</th><th>AES seal ns</th><th>AES open ns</th><th>CRC seal ns</th><th>CRC open ns</th><th>AES GiB/s</th></tr>\n");
    for c in &report.costs {
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.0}</td><td>{:.0}</td><td>{:.0}</td><td>{:.2}</td></tr>",
            esc(&payload_label(c.payload_bytes)),
            c.record_bytes,
            c.records_per_block,
            c.aes_seal_ns,
            c.aes_open_ns,
            c.crc_seal_ns,
            c.crc_open_ns,
            c.aes_seal_gib_per_s
        );
    }
    s.push_str("</table>\n<h2>What the harness changed in your config</h2>\n<table><tr><th>field</th><th>change</th><th>why</th></tr>\n");
    for c in &report.config_changes {
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td style=\"text-align:left\">{}{}</td><td style=\"text-align:left\" class=\"note\">{}</td></tr>",
            esc(&c.field),
            esc(&c.change),
            if c.spill_scenarios_only { " (spill scenarios only)" } else { "" },
            esc(&c.why)
        );
    }
    s.push_str("</table>\n");
    if !report.pending.is_empty() {
        s.push_str("<h2>Not measured yet</h2>\n<ul>\n");
        for p in &report.pending {
            let _ = writeln!(
                s,
                "<li><b>{}</b>: waits for {}</li>",
                esc(&p.name),
                esc(&p.waits_for)
            );
        }
        s.push_str("</ul>\n");
    }
    let _ = writeln!(s, "<script>{SCRIPT}</script>\n</body></html>");
    s
}
