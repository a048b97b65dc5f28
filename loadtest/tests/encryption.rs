//! `shardmq-loadtest encryption` end to end: the real harness binary starts
//! the real broker binary for one short round of a plain and a spilling
//! scenario. Each run's start-up log must name the setting asked for, the
//! spilled segment files must hold the payloads' plaintext marker only when
//! Disabled, and the HTML report must render its charts in headless Chromium.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

const HARNESS: &str = env!("CARGO_BIN_EXE_shardmq-loadtest");

/// The broker binary of the same build. `cargo test --workspace` builds it
/// with shardmq-io's tests; a test run of this crate alone builds it here.
fn broker_bin() -> PathBuf {
    let dir = Path::new(HARNESS).parent().unwrap();
    let bin = dir.join("shardmq");
    if !bin.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut c = Command::new(cargo);
        c.args(["build", "-q", "-p", "shardmq-io", "--bin", "shardmq"]);
        if dir.ends_with("release") {
            c.arg("--release");
        }
        assert!(c.status().unwrap().success(), "building shardmq");
    }
    bin
}

struct Round {
    dir: PathBuf,
    stdout: String,
    report: Value,
}

/// A fresh directory in cargo's scratch space for tests (`target/tmp`): the
/// report and the screenshot stay there for a person to look at.
fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Tests sharing the round; the last to pass removes the runs' buffer
/// files (hundreds of MiB of preallocated segments). A failed test leaves
/// them for inspection.
const USERS: usize = 5;

fn done(r: &Round) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static DONE: AtomicUsize = AtomicUsize::new(0);
    if DONE.fetch_add(1, Ordering::SeqCst) + 1 == USERS {
        for d in ["runs", "chromium-dom", "chromium-shot"] {
            let _ = std::fs::remove_dir_all(r.dir.join(d));
        }
    }
}

/// One short round, run once for every test of this file.
fn round() -> &'static Round {
    static ROUND: OnceLock<Round> = OnceLock::new();
    ROUND.get_or_init(|| {
        let dir = scratch("encryption-round");
        // The user's config: one shard, a disk buffer, a listener on 1883
        // (which the harness must move to a free port).
        let config = dir.join("broker.json");
        std::fs::write(
            &config,
            r#"{"cardinality":{"frontend":{"workers":1}},
                "diskBackedMessageBuffer":{"maxSize":"1G","dataDir":"/nonexistent/must-be-replaced"},
                "listeners":[{"name":"plant","ports":[{"port":1883}]}]}"#,
        )
        .unwrap();
        let out = Command::new(HARNESS)
            .args(["encryption", "--config"])
            .arg(&config)
            .arg("--broker-bin")
            .arg(broker_bin())
            .args([
                "--scenarios",
                "fan-in,slow-sub",
                "--payloads",
                "1024",
                "--rounds",
                "1",
                "--duration",
                "1s",
                "--warmup",
                "200ms",
                "--pause",
                "100ms",
                "--quiet",
                "--keep-runs",
            ])
            .arg(dir.join("runs"))
            .arg("--json")
            .arg(dir.join("report.json"))
            .arg("--html")
            .arg(dir.join("report.html"))
            .arg("--svg")
            .arg(dir.join("charts.svg"))
            .env("CI", "true")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "exit {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let report = serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap())
            .unwrap();
        Round {
            dir,
            stdout,
            report,
        }
    })
}

/// Every `*.smq` file's bytes under `data`.
fn segments(data: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for shard in std::fs::read_dir(data).unwrap().flatten() {
        for f in std::fs::read_dir(shard.path()).unwrap().flatten() {
            if f.path().extension().is_some_and(|e| e == "smq") {
                out.push(std::fs::read(f.path()).unwrap());
            }
        }
    }
    out
}

#[test]
fn each_run_starts_the_broker_with_the_setting_asked_for() {
    let r = round();
    let runs = std::fs::read_dir(r.dir.join("runs")).unwrap();
    let mut seen = Vec::new();
    for run in runs.flatten() {
        let name = run.file_name().to_string_lossy().into_owned();
        let (want, other) = if name.ends_with("-Enabled") {
            ("Enabled", "Disabled")
        } else {
            ("Disabled", "Enabled")
        };
        let log = std::fs::read_to_string(run.path().join("broker.log")).unwrap();
        assert!(
            log.contains(&format!("encryptInternalTraffic: {want}")),
            "{name}: start-up line\n{log}"
        );
        assert!(
            !log.contains(&format!("encryptInternalTraffic: {other}")),
            "{name}"
        );
        // The buffer opened in the same mode, in the run's own directory.
        let open = log
            .lines()
            .find(|l| l.contains("disk buffer open"))
            .unwrap_or_else(|| panic!("{name}: no disk buffer line\n{log}"));
        assert!(
            open.contains(&format!("encryptInternalTraffic=\"{want}\"")),
            "{open}"
        );
        assert!(
            open.contains(&run.path().join("data").display().to_string()),
            "{open}"
        );
        let cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(run.path().join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["advanced"]["encryptInternalTraffic"], want);
        assert_ne!(cfg["listeners"][0]["ports"][0]["port"], 1883);
        seen.push(name);
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "r1-fan-in-1024B-Disabled",
            "r1-fan-in-1024B-Enabled",
            "r1-slow-sub-1024B-Disabled",
            "r1-slow-sub-1024B-Enabled"
        ]
    );
    done(r);
}

#[test]
fn spilled_segments_hold_the_plaintext_only_when_disabled() {
    let r = round();
    for setting in ["Enabled", "Disabled"] {
        // A graceful stop deletes the buffer's files: what the harness
        // scanned while the broker ran is the evidence, and nothing is left.
        let data = r.dir.join(format!("runs/r1-slow-sub-1024B-{setting}/data"));
        assert!(
            segments(&data).is_empty(),
            "{setting}: files left after the stop"
        );
    }
    // The harness scanned the files before the stop, with the broker's own counts.
    let runs = r.report["runs"].as_array().unwrap();
    for run in runs.iter().filter(|x| x["scenario"] == "slow-sub") {
        assert!(
            run["log"]["spill"]["appended"].as_u64().unwrap() > 0,
            "{run}"
        );
        assert!(run["segments"]["files"].as_u64().unwrap() > 0, "{run}");
        let marker = run["segments"]["plaintext_marker"].as_bool().unwrap();
        assert_eq!(marker, run["setting"] == "Disabled");
        assert_eq!(run["setting_failures"].as_array().map(Vec::len), Some(0));
    }
    done(r);
}

#[test]
fn the_report_has_both_settings_side_by_side_with_the_cipher_floor() {
    let r = round();
    assert_eq!(r.report["ok"], true, "{}", r.stdout);
    let cells = r.report["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 2);
    for c in cells {
        for side in ["enabled", "disabled"] {
            assert_eq!(c[side]["runs"], 1);
            assert!(c[side]["delivered_per_s"].as_f64().unwrap() > 0.0, "{c}");
            assert_eq!(
                (c[side]["lost"].as_u64(), c[side]["duplicated"].as_u64()),
                (Some(0), Some(0))
            );
        }
        assert!(c["ratio"]["delivered_per_s"].as_f64().is_some());
        assert!(c["floor"].is_object(), "{c}");
    }
    let spill = cells.iter().find(|c| c["scenario"] == "slow-sub").unwrap();
    assert!(
        spill["floor"]["cipher_ms_per_1000"].as_f64().unwrap() > 0.0,
        "{spill}"
    );
    assert!(spill["enabled"]["drain_per_s"].as_f64().is_some());
    let costs = r.report["costs"].as_array().unwrap();
    assert_eq!(costs[0]["payload_bytes"], 1024);
    assert!(costs[0]["aes_open_ns"].as_f64().unwrap() > 0.0);
    // The changes are listed, the setting itself is not one of them.
    let changes = r.report["config_changes"].to_string();
    assert!(
        changes.contains("diskBackedMessageBuffer.dataDir"),
        "{changes}"
    );
    assert!(!changes.contains("encryptInternalTraffic"), "{changes}");
    // The terminal table.
    for needle in [
        "slow-sub, 1 KiB payload",
        "drain msgs/s",
        "E/D",
        "cipher floor",
    ] {
        assert!(r.stdout.contains(needle), "{needle}\n{}", r.stdout);
    }
    let svg = std::fs::read_to_string(r.dir.join("charts.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("class=\"bar enabled\""));
    done(r);
}

#[test]
fn a_saved_report_renders_the_same_page_again() {
    let r = round();
    let out = Command::new(HARNESS)
        .args(["encryption", "--render"])
        .arg(r.dir.join("report.json"))
        .arg("--html")
        .arg(r.dir.join("again.html"))
        .arg("--svg")
        .arg(r.dir.join("again.svg"))
        .env("CI", "true")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |name: &str| std::fs::read_to_string(r.dir.join(name)).unwrap();
    assert_eq!(read("again.html"), read("report.html"));
    assert_eq!(read("again.svg"), read("charts.svg"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("slow-sub, 1 KiB payload"));
    done(r);
}

fn chromium() -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&paths).map(move |d| d.join(name)))
        .find(|p| p.is_file())
}

/// Runs Chromium headless with a fresh profile; gives up after a minute.
fn headless(bin: &Path, profile: &Path, args: &[String]) -> (String, String) {
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_html_report_renders_its_charts_in_headless_chromium() {
    let r = round();
    let Some(chrome) = chromium() else {
        eprintln!("SKIPPED: chromium is not installed (apt-get install -y chromium)");
        done(r);
        return;
    };
    let page = r.dir.join("report.html");
    let html = std::fs::read_to_string(&page).unwrap();
    // Self-contained: nothing to fetch.
    for remote in ["http://", "https://", "src=", "@import"] {
        let outside_svg_ns = html.replace("http://www.w3.org/2000/svg", "");
        assert!(
            !outside_svg_ns.contains(remote),
            "the page refers to {remote}"
        );
    }
    let url = format!("file://{}", page.display());
    let (dom, log) = headless(
        &chrome,
        &r.dir.join("chromium-dom"),
        &["--dump-dom".to_owned(), url.clone()],
    );
    assert!(!log.contains("Uncaught"), "script error:\n{log}");
    assert_eq!(dom.matches("<svg class=\"chart\"").count(), 2, "{dom}");
    // The script ran to its end and counted the bars the page draws.
    let bars = html.matches("<rect class=\"bar ").count();
    assert!(bars >= 16, "{bars} bars");
    assert!(dom.contains(&format!("data-ready=\"{bars}\"")), "{dom}");
    let shot = r.dir.join("report.png");
    let (_, log) = headless(
        &chrome,
        &r.dir.join("chromium-shot"),
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1100,1500".to_owned(),
            "--hide-scrollbars".to_owned(),
            url,
        ],
    );
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot ({e}):\n{log}"));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    assert!(
        png.len() > 20_000,
        "a page of charts, not a blank one: {} bytes",
        png.len()
    );
    eprintln!("screenshot: {}", shot.display());
    done(r);
}
