//! The `shardmq` binary: flags, config file, logging, start the shards, and
//! wait for SIGINT/SIGTERM to shut down gracefully. Everything else is in the
//! library so tests can run the same server in-process.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use shardmq_core::config::Config;
use shardmq_io::cli::{server_config, state_dir, summary};
use tracing::{error, info, warn};

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
    let (mut config, warnings) = match &path {
        None => (Config::default(), Vec::new()),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config {}", path.display()))?;
            match Config::from_json_str(&text) {
                Ok(loaded) => {
                    // Absolute, so the paths the log shows say where they are.
                    let base = match path.parent() {
                        Some(dir) if !dir.as_os_str().is_empty() => dir,
                        _ => std::path::Path::new("."),
                    };
                    let base = std::path::absolute(base).unwrap_or_else(|_| base.to_owned());
                    (loaded.config.with_base_dir(&base), loaded.warnings)
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
    // systemd's StateDirectory= (e.g. with DynamicUser= and
    // ProtectSystem=strict, the one folder the broker may write).
    let state = state_dir(&config, std::env::var_os("STATE_DIRECTORY").as_deref());
    config.state_dir = Some(state);
    // A filter that enables nothing would hide every error: refuse it.
    let filter = shardmq_io::logging::filter_text(
        &config.diagnostics.log_filter,
        std::env::var("RUST_LOG").ok(),
    )
    .and_then(|filter| shardmq_io::logging::init(&filter).map(|()| filter));
    if let Err(e) = filter {
        eprintln!("shardmq: {e}");
        return Ok(ExitCode::from(2));
    }
    for w in &warnings {
        warn!("config: {}: {}", w.path, w.message);
    }
    let built = server_config(&config)?;
    for line in summary(&config, &built.server) {
        info!("{line}");
    }
    if let Some(file) = &built.ca_cert_file {
        info!(file = %file.display(), "internal CA certificate (give it to clients of Automatic TLS ports)");
    }
    let handle = shardmq_io::start(built.server).context("cannot start the server")?;
    for (name, addr) in &handle.addrs {
        info!(listener = %name, %addr, "listening");
    }
    renew_in_background(built.managed);
    let flag = handle.shutdown_flag();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .context("cannot install signal handlers")?;
    let (certs, authenticators) = (built.certs, built.authenticators);
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if sig == signal_hook::consts::SIGHUP {
                // Certificates and credential files are swapped on every
                // shard at once; a bad file keeps the old one in use.
                info!("SIGHUP: reloading certificates and authentication files");
                for cert in &certs {
                    if let Err(e) = cert.reload() {
                        error!(error = %e, "certificate reload failed; keeping the old one");
                    }
                }
                for authn in &authenticators {
                    if let Err(errors) = authn.reload() {
                        for e in errors {
                            error!(error = %e, "authentication reload failed; keeping the old state");
                        }
                    }
                }
                continue;
            }
            info!(signal = sig, "shutting down");
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            break;
        }
    });
    handle.join();
    info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Renews broker-issued certificates `renewBefore` ahead of expiry; the
/// new certificate is swapped in for new handshakes without dropping anyone.
fn renew_in_background(mut managed: Vec<shardmq_auth::CertManager>) {
    if managed.is_empty() {
        return;
    }
    std::thread::spawn(move || loop {
        let now = std::time::SystemTime::now();
        let next = managed
            .iter()
            .map(|m| m.next_renewal())
            .min()
            .unwrap_or(now);
        if let Ok(wait) = next.duration_since(now) {
            // Wake at least hourly so a clock change is noticed.
            std::thread::sleep(wait.min(std::time::Duration::from_secs(3600)));
            continue;
        }
        for m in managed.iter_mut().filter(|m| m.next_renewal() <= now) {
            match m.renew(now) {
                Ok(()) => info!("listener certificate renewed"),
                Err(e) => {
                    error!(error = %e, "certificate renewal failed; retrying in a minute");
                    std::thread::sleep(std::time::Duration::from_secs(60));
                }
            }
        }
    });
}
