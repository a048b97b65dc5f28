//! The `shardmq` binary: flags, config file, logging, start the shards and
//! the metrics endpoint, reload on SIGHUP, and wait for SIGINT/SIGTERM to
//! shut down gracefully. Everything else is in the library so tests can run
//! the same server in-process.

use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use shardmq_core::config::Config;
use shardmq_io::cli::{server_config, state_dir, summary};
use shardmq_io::reload;
use tracing::{error, info, warn};

/// PERF: mimalloc's thread-local heaps suit a thread per core; with glibc's
/// malloc the per-frame allocations of the read path (frames are copied out
/// of the read buffer so a queued message never pins it) took a fifth of a
/// shard's time under fan-in (docs/PERFORMANCE.md, "The allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "\
shardmq: MQTT 3.1.1/5.0 broker (thread-per-core, io_uring)

usage: shardmq [--config FILE] [--check-config] [--print-default-config]
       shardmq --make-cluster-ca DIR

  --config FILE            JSON config shaped like the AIO Broker resource plus
                           listeners (docs/CONFIG.md). Without it: one anonymous
                           listener on 127.0.0.1:1883.
  --check-config           validate the config (every file it names loaded and
                           checked, as at start-up), print the problems, exit
                           0 if there are none, 2 otherwise
  --print-default-config   print the built-in default config as JSON and exit
  --make-cluster-ca DIR    write a new cluster CA to DIR/ca.crt and DIR/ca.key
                           (0600) for the `cluster` section's caCertFile and
                           caKeyFile (docs/CLUSTER.md); an existing one is kept

signals: SIGTERM/SIGINT stop gracefully; SIGHUP re-reads the whole config
(listeners, policies, client limits) and applies it without a restart.
  --version                print the version and exit
";

enum Command {
    Run(Option<PathBuf>),
    Check(Option<PathBuf>),
    PrintDefault,
    MakeClusterCa(PathBuf),
    Help,
    Version,
}

fn parse_args() -> Result<Command> {
    let mut args = std::env::args_os().skip(1);
    let mut config = None;
    let mut check = false;
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--config" | "-c") => {
                let Some(path) = args.next() else {
                    bail!("--config needs a file path")
                };
                config = Some(PathBuf::from(path));
            }
            Some("--check-config") => check = true,
            Some("--print-default-config") => return Ok(Command::PrintDefault),
            Some("--make-cluster-ca") => {
                let Some(dir) = args.next() else {
                    bail!("--make-cluster-ca needs a directory")
                };
                return Ok(Command::MakeClusterCa(PathBuf::from(dir)));
            }
            Some("--help" | "-h") => return Ok(Command::Help),
            Some("--version" | "-V") => return Ok(Command::Version),
            _ => bail!("unknown argument {arg:?}\n\n{USAGE}"),
        }
    }
    Ok(if check {
        Command::Check(config)
    } else {
        Command::Run(config)
    })
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
        Command::Check(path) => return Ok(check(path.as_deref())),
        Command::MakeClusterCa(dir) => {
            let (ca, origin) = shardmq_auth::InternalCa::load_or_create(
                &dir,
                shardmq_core::config::KeyAlgorithm::Ec256,
                std::time::Duration::ZERO,
                std::time::SystemTime::now(),
            )
            .with_context(|| format!("cannot make a cluster CA in {}", dir.display()))?;
            let what = match origin {
                shardmq_auth::CaOrigin::Created => "created",
                shardmq_auth::CaOrigin::Loaded => "kept the existing",
            };
            println!(
                "shardmq: {what} cluster CA in {} (valid until {}); give every node ca.crt and ca.key",
                dir.display(),
                since_epoch(ca.not_after())
            );
            return Ok(ExitCode::SUCCESS);
        }
        Command::Run(path) => path,
    };
    // Installed before anything starts: a SIGHUP's default action ends the
    // process, and shards log "listening" (which supervisors and tests
    // wait for) before start-up is over. Until `on_signals` runs, signals
    // wait in the iterator's queue.
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .context("cannot install signal handlers")?;
    let Some(config) = load_and_log(path.as_deref()) else {
        return Ok(ExitCode::from(2));
    };
    let built = server_config(&config)?;
    for line in summary(&config, &built.server) {
        info!("{line}");
    }
    if let Some(file) = &built.ca_cert_file {
        info!(file = %file.display(), "internal CA certificate (give it to clients of Automatic TLS ports)");
    }
    if let Some(c) = &built.server.cluster {
        let peers: Vec<String> = c
            .peers
            .iter()
            .map(|p| format!("{}@{}", p.name, p.address()))
            .collect();
        info!(node = %c.me.name, internal = %c.bind, peers = ?peers, "cluster node");
        if c.tls.is_none() {
            warn!(
                "cluster: advanced.encryptInternalTraffic is Disabled: node links are PLAINTEXT \
                   and UNAUTHENTICATED (any host that reaches the internal port can join); \
                   for benchmarks and trusted networks only"
            );
        }
    }
    let cluster_ca = match (built.node_cert, &built.server.cluster) {
        (Some(node_cert), Some(c)) => c.tls.as_ref().map(|tls| {
            // Its own list: a reload replaces the listeners' list, not this.
            let cert = Arc::new(Mutex::new(vec![node_cert]));
            renew_in_background(cert.clone());
            reload::ClusterCa {
                trust: tls.trust.clone(),
                cert,
            }
        }),
        _ => None,
    };
    let handle = shardmq_io::start(built.server).context("cannot start the server")?;
    for (name, addr) in &handle.addrs {
        info!(listener = %name, %addr, "listening");
    }
    let telemetry = handle.telemetry.clone();
    telemetry.set_sys_interval(config.diagnostics.sys_interval);
    let metrics = match config.diagnostics.prometheus_port {
        None => None,
        Some(port) => {
            let addr =
                std::net::SocketAddr::new(config.diagnostics.metrics_bind_address, port.get());
            match shardmq_io::telemetry::http::serve(addr, telemetry.clone()) {
                Ok(server) => Some(server),
                Err(e) => {
                    handle.shutdown();
                    return Err(e).context("cannot start the metrics endpoint");
                }
            }
        }
    };
    let managed = Arc::new(Mutex::new(built.managed));
    renew_in_background(managed.clone());
    let flag = handle.shutdown_flag();
    shardmq_io::telemetry::watchdog::notify("READY=1");
    shardmq_io::telemetry::watchdog::start(telemetry, flag.clone());
    let reloader = handle.reloader();
    let keys = handle.persist_keys.clone();
    std::thread::spawn(move || {
        on_signals(
            signals,
            path,
            config,
            &Reload {
                reloader,
                managed,
                keys,
                cluster_ca,
            },
            &flag,
        );
    });
    handle.join();
    if let Some(m) = metrics {
        m.stop();
    }
    info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// `t` as seconds since the epoch (no calendar dependency for one line).
fn since_epoch(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{secs} s after the epoch")
}

/// The config (or the default) with its state directory, and logging set
/// up from it; `None` once the problems are printed (exit 2).
fn load_and_log(path: Option<&std::path::Path>) -> Option<Config> {
    let (mut config, warnings) = match path {
        None => (Config::default(), Vec::new()),
        Some(path) => match reload::load(path) {
            Ok(loaded) => loaded,
            Err(errors) => {
                // One line per problem, before any port is bound.
                for e in &errors {
                    eprintln!("shardmq: {e}");
                }
                return None;
            }
        },
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
        return None;
    }
    for w in &warnings {
        warn!("config: {w}");
    }
    Some(config)
}

/// What SIGHUP acts on.
struct Reload {
    reloader: reload::Reloader,
    managed: Arc<Mutex<Vec<shardmq_auth::CertManager>>>,
    /// Persistence's keys: re-read on every SIGHUP (online rotation).
    keys: Option<Arc<shardmq_io::persist::KeyRing>>,
    /// A cluster node's link trust and certificate: its CA files are
    /// re-read on every SIGHUP (CA rotation).
    cluster_ca: Option<reload::ClusterCa>,
}

/// SIGHUP re-reads the config file and the persistence keys; SIGINT and
/// SIGTERM stop the broker.
fn on_signals(
    mut signals: signal_hook::iterator::Signals,
    path: Option<PathBuf>,
    mut running: Config,
    r: &Reload,
    flag: &std::sync::atomic::AtomicBool,
) {
    let (reloader, managed) = (&r.reloader, &r.managed);
    for sig in signals.forever() {
        if sig == signal_hook::consts::SIGHUP {
            if let Some(keys) = &r.keys {
                match keys.reload() {
                    Ok(Some(name)) => info!(key = %name,
                        "SIGHUP: new persistence key; every shard rewrites its log under it now \
                         (keep the old key listed until each shard logs the rewrite)"),
                    Ok(None) => {}
                    Err(e) => error!("SIGHUP: {e}; the keys in force stay"),
                }
            }
            let Some(path) = &path else {
                info!("SIGHUP: no config file to re-read (started without --config)");
                continue;
            };
            match reload::reload(path, &running, reloader) {
                Ok(reloaded) => {
                    if let Some(ca) = &r.cluster_ca {
                        ca.rotate(&reloaded.built, std::time::SystemTime::now());
                    }
                    running = reloaded.config;
                    if let Ok(mut m) = managed.lock() {
                        *m = reloaded.built.managed;
                    }
                }
                Err(errors) => {
                    for e in &errors {
                        error!("SIGHUP: {e}");
                    }
                    error!("SIGHUP: the new configuration was rejected; the running one stays in force");
                }
            }
            continue;
        }
        info!(signal = sig, "shutting down");
        shardmq_io::telemetry::watchdog::notify("STOPPING=1");
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
        break;
    }
}

/// `--check-config`: the start-up validation and loading, nothing started.
fn check(path: Option<&std::path::Path>) -> ExitCode {
    let Some(path) = path else {
        eprintln!("shardmq: --check-config needs --config FILE");
        return ExitCode::from(2);
    };
    let (mut config, warnings) = match reload::load(path) {
        Ok(loaded) => loaded,
        Err(errors) => {
            for e in &errors {
                eprintln!("shardmq: {e}");
            }
            return ExitCode::from(2);
        }
    };
    config.state_dir = Some(state_dir(
        &config,
        std::env::var_os("STATE_DIRECTORY").as_deref(),
    ));
    for w in &warnings {
        eprintln!("shardmq: warning: {w}");
    }
    match server_config(&config) {
        Ok(_) => {
            println!("shardmq: {}: configuration is valid", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("shardmq: {}: {e}", path.display());
            ExitCode::from(2)
        }
    }
}

/// Renews broker-issued certificates `renewBefore` ahead of expiry; the
/// new certificate is swapped in for new handshakes without dropping anyone.
/// A reload replaces the list (its listeners' certificates are new).
fn renew_in_background(managed: Arc<Mutex<Vec<shardmq_auth::CertManager>>>) {
    std::thread::spawn(move || loop {
        let now = std::time::SystemTime::now();
        let next = managed
            .lock()
            .ok()
            .and_then(|m| m.iter().map(|m| m.next_renewal()).min());
        let Some(next) = next else {
            // Nothing to renew now; a reload may add some.
            std::thread::sleep(std::time::Duration::from_secs(60));
            continue;
        };
        if let Ok(wait) = next.duration_since(now) {
            // Wake at least every minute so a clock change or a reload is noticed.
            std::thread::sleep(wait.min(std::time::Duration::from_secs(60)));
            continue;
        }
        let mut failed = false;
        if let Ok(mut managed) = managed.lock() {
            for m in managed.iter_mut().filter(|m| m.next_renewal() <= now) {
                match m.renew(now) {
                    Ok(()) => info!("broker-issued certificate renewed"),
                    Err(e) => {
                        error!(error = %e, "certificate renewal failed; retrying in a minute");
                        failed = true;
                    }
                }
            }
        }
        if failed {
            std::thread::sleep(std::time::Duration::from_secs(60));
        }
    });
}
