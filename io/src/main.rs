//! The `shardmq` binary: flags, config file, logging, start the shards, and
//! wait for SIGINT/SIGTERM to shut down gracefully. Everything else is in the
//! library so tests can run the same server in-process.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use shardmq_core::config::Config;
use shardmq_io::cli::{server_config, summary};
use tracing::{info, warn};

const USAGE: &str = "\
shardmq: MQTT 3.1.1/5.0 broker (thread-per-core, io_uring)

usage: shardmq [--config FILE] [--print-default-config]

  --config FILE            JSON config shaped like the AIO Broker resource plus
                           listeners (docs/CONFIG.md). Without it: one anonymous
                           listener on 127.0.0.1:1883.
  --print-default-config   print the built-in default config as JSON and exit
  --version                print the version and exit
";

enum Command {
    Run(Option<PathBuf>),
    PrintDefault,
    Help,
    Version,
}

fn parse_args() -> Result<Command> {
    let mut args = std::env::args_os().skip(1);
    let mut config = None;
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--config" | "-c") => {
                let Some(path) = args.next() else {
                    bail!("--config needs a file path")
                };
                config = Some(PathBuf::from(path));
            }
            Some("--print-default-config") => return Ok(Command::PrintDefault),
            Some("--help" | "-h") => return Ok(Command::Help),
            Some("--version" | "-V") => return Ok(Command::Version),
            _ => bail!("unknown argument {arg:?}\n\n{USAGE}"),
        }
    }
    Ok(Command::Run(config))
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shardmq: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<ExitCode> {
    let path = match parse_args()? {
        Command::PrintDefault => {
            println!("{}", Config::default_json());
            return Ok(ExitCode::SUCCESS);
        }
        Command::Help => {
            print!("{USAGE}");
            return Ok(ExitCode::SUCCESS);
        }
        Command::Version => {
            println!("shardmq {}", env!("CARGO_PKG_VERSION"));
            return Ok(ExitCode::SUCCESS);
        }
        Command::Run(path) => path,
    };
    let (config, warnings) = match &path {
        None => (Config::default(), Vec::new()),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config {}", path.display()))?;
            match Config::from_json_str(&text) {
                Ok(loaded) => {
                    let base = path.parent().unwrap_or(std::path::Path::new("."));
                    (loaded.config.with_base_dir(base), loaded.warnings)
                }
                Err(errors) => {
                    // One line per problem, before any port is bound.
                    for e in errors.iter() {
                        eprintln!("shardmq: {}: {e}", path.display());
                    }
                    return Ok(ExitCode::from(2));
                }
            }
        }
    };
    init_logging(&config.diagnostics.log_filter);
    for w in &warnings {
        warn!("config: {}: {}", w.path, w.message);
    }
    let server = server_config(&config)?;
    for line in summary(&config, &server) {
        info!("{line}");
    }
    let handle = shardmq_io::start(server).context("cannot start the server")?;
    for (name, addr) in &handle.addrs {
        info!(listener = %name, %addr, "listening");
    }
    let flag = handle.shutdown_flag();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("cannot install signal handlers")?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            info!(signal = sig, "shutting down");
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    });
    handle.join();
    info!("stopped");
    Ok(ExitCode::SUCCESS)
}

fn init_logging(filter: &str) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| filter.to_owned());
    let env = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(env)
        .with_target(false)
        .init();
}
