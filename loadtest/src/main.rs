//! `shardmq-loadtest`: flags in, report out. Pins the process and sizes the
//! runtime before any thread exists (threads inherit the CPU mask), then
//! hands over to the library. Exit 0: passed; 1: a correctness failure or
//! nothing connected; 2: bad usage or set-up.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use shardmq_loadtest::cli::{Cli, Command};
use shardmq_loadtest::compare::{self, Launched, TargetKind, TargetSpec};
use shardmq_loadtest::encryption::html;
use shardmq_loadtest::encryption::report::EncReport;
use shardmq_loadtest::{svg, Target};

fn pin_to(cpu: usize) -> Result<()> {
    use nix::sched::{sched_setaffinity, CpuSet};
    let mut set = CpuSet::new();
    set.set(cpu)
        .with_context(|| format!("--cpu {cpu}: no such CPU"))?;
    sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_context(|| format!("--cpu {cpu}"))?;
    Ok(())
}

/// Many connections need many descriptors: raise the soft limit to the hard.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn write_file(path: &std::path::Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("shardmq-loadtest: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main(cli: Cli) -> Result<bool> {
    if let Some(cpu) = cli.cpu {
        pin_to(cpu)?;
    }
    raise_fd_limit();
    let rt = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()
    }
    .context("starting the runtime")?;
    match cli.command {
        Command::Run {
            scenario,
            broker,
            broker_pid,
            broker_cpu,
            sub_broker,
            json,
        } => {
            let mut spec = scenario.to_spec();
            spec.subscriber_addr = sub_broker;
            let target = TargetSpec::parse(&broker)?;
            let mut launched = match &target.kind {
                TargetKind::Addr(_) => None,
                TargetKind::Cmd(c) => Some(Launched::start(&target.name, c, broker_cpu)?),
            };
            let addr = match (&target.kind, &launched) {
                (_, Some(l)) => format!("127.0.0.1:{}", l.port),
                (TargetKind::Addr(a), None) => a.clone(),
                (TargetKind::Cmd(_), None) => unreachable_target()?,
            };
            spec.broker_pid = broker_pid.or(launched.as_ref().map(|l| l.pid));
            let target = Target {
                name: target.name,
                addr,
            };
            let report = rt.block_on(shardmq_loadtest::run(&spec, &target))?;
            if let Some(l) = launched.as_mut() {
                l.stop();
            }
            print!("{}", report.to_table());
            if let Some(path) = json {
                write_file(&path, &serde_json::to_string_pretty(&report)?)?;
            }
            Ok(report.ok())
        }
        Command::EchoFloor {
            payload,
            duration,
            warmup,
            server_cpu,
        } => {
            for (spin, how) in [(true, "spinning"), (false, "sleeping")] {
                let f =
                    shardmq_loadtest::echo::measure(payload, warmup, duration, server_cpu, spin)
                        .context("echo floor")?;
                println!(
                    "echo floor, {payload} B one in flight, {how}: {} round trips, p50 {} µs, p99 {} µs, p99.9 {} µs",
                    f.round_trips, f.p50_us, f.p99_us, f.p999_us
                );
            }
            Ok(true)
        }
        Command::NullBroker { port } => {
            let listener = std::net::TcpListener::bind(("127.0.0.1", port))
                .with_context(|| format!("null broker: binding 127.0.0.1:{port}"))?;
            shardmq_loadtest::null_broker::serve(listener).context("null broker")?;
            Ok(true)
        }
        Command::Compare {
            scenario,
            targets,
            rounds,
            broker_cpu,
            pause,
            json,
            svg: svg_path,
        } => {
            let spec = scenario.to_spec();
            let targets = targets
                .iter()
                .map(|t| TargetSpec::parse(t))
                .collect::<Result<Vec<_>, _>>()?;
            let result = rt.block_on(compare::compare(&spec, &targets, rounds, broker_cpu, pause));
            println!();
            print!("{}", result.to_table());
            if let Some(path) = json {
                write_file(&path, &serde_json::to_string_pretty(&result)?)?;
            }
            if let Some(path) = svg_path {
                write_file(&path, &svg::chart(&result))?;
            }
            Ok(result.ok())
        }
        Command::Crash(args) => {
            let options = args.to_options().map_err(anyhow::Error::msg)?;
            let report = rt.block_on(shardmq_loadtest::crash::run(&options))?;
            print!("{}", report.to_table());
            if let Some(path) = &args.json {
                write_file(path, &serde_json::to_string_pretty(&report)?)?;
            }
            Ok(report.ok())
        }
        Command::Encryption(args) => {
            let report = match &args.render {
                Some(saved) => {
                    let text = std::fs::read_to_string(saved)
                        .with_context(|| format!("reading {}", saved.display()))?;
                    let mut report =
                        serde_json::from_str::<EncReport>(&text).with_context(|| {
                            format!("{} is not an encryption report", saved.display())
                        })?;
                    report.summarise();
                    report
                }
                None => {
                    let report =
                        rt.block_on(shardmq_loadtest::encryption::run(&args.to_options()))?;
                    write_file(&args.json, &serde_json::to_string_pretty(&report)?)?;
                    report
                }
            };
            println!();
            print!("{}", report.to_table());
            write_file(&args.html, &html::page(&report))?;
            if let Some(path) = &args.svg {
                write_file(path, &html::svg(&report))?;
            }
            println!(
                "report: {} and {}{}",
                args.html.display(),
                args.render.as_ref().unwrap_or(&args.json).display(),
                args.svg
                    .as_ref()
                    .map_or(String::new(), |p| format!(" (charts: {})", p.display()))
            );
            Ok(report.ok)
        }
    }
}

fn unreachable_target() -> Result<String> {
    anyhow::bail!("internal: a cmd: target was not started")
}
