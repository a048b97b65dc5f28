//! The binary's log: which filter applies (`diagnostics.logs.level`, or
//! `RUST_LOG` for a developer, both checked: a bad one is an error, never a
//! silent broker), plain text on stdout, and the one rustls warning that is
//! noise dropped.

use std::io::{self, Write};

use shardmq_core::config::check_log_filter;
use tracing::Metadata;
use tracing_subscriber::fmt::MakeWriter;

/// rustls warns for every client that dials an IP address and sends it as
/// SNI (mosquitto does; RFC 6066 allows only host names there). The
/// handshake goes on; the line only buries real warnings.
const IP_SNI_NOISE: &[u8] = b"Illegal SNI extension: ignoring IP address";

/// The filter to log with: `RUST_LOG` when set, else the config's.
/// Errors name their source, like config errors.
pub fn filter_text(config_filter: &str, rust_log: Option<String>) -> Result<String, String> {
    match rust_log.filter(|v| !v.trim().is_empty()) {
        Some(env) => check_log_filter(&env)
            .map(|()| env)
            .map_err(|e| format!("RUST_LOG: {e}")),
        None => check_log_filter(config_filter)
            .map(|()| config_filter.to_owned())
            .map_err(|e| format!("diagnostics.logs.level: {e}")),
    }
}

/// Installs the global subscriber (also for `log` records, which is how
/// rustls logs).
pub fn init(filter: &str) -> Result<(), String> {
    // openraft narrates every election and RPC at info; an operator wants
    // its warnings (docs/CLUSTER.md), unless the filter names it.
    let filter = if filter.contains("openraft") {
        filter.to_owned()
    } else {
        format!("{filter},openraft=warn")
    };
    let env = tracing_subscriber::EnvFilter::try_new(&filter)
        .map_err(|e| format!("diagnostics.logs.level: {e}"))?;
    // Colour only on a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt()
        .with_env_filter(env)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(Stdout)
        .try_init()
        .map_err(|e| format!("cannot install the logger: {e}"))
}

/// Stdout, except that events that may be rustls's go through `Quiet`.
#[derive(Debug, Clone, Copy)]
struct Stdout;

impl<'a> MakeWriter<'a> for Stdout {
    type Writer = Quiet<io::Stdout>;

    fn make_writer(&'a self) -> Self::Writer {
        Quiet {
            inner: io::stdout(),
            drop_ip_sni: false,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        // rustls logs through the `log` crate: its records arrive with
        // tracing-log's metadata, whose target is "log".
        let target = meta.target();
        Quiet {
            inner: io::stdout(),
            drop_ip_sni: target == "log" || target.starts_with("rustls"),
        }
    }
}

/// A writer for one formatted event (the fmt layer writes each event with
/// one `write_all`); drops it if it is the IP-SNI warning.
#[derive(Debug)]
pub struct Quiet<W> {
    inner: W,
    drop_ip_sni: bool,
}

impl<W: Write> Write for Quiet<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.drop_ip_sni && buf.windows(IP_SNI_NOISE.len()).any(|w| w == IP_SNI_NOISE) {
            return Ok(buf.len());
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn only_the_ip_sni_warning_of_rustls_is_dropped() {
        let write = |drop_ip_sni: bool, line: &str| {
            let mut w = Quiet {
                inner: Vec::new(),
                drop_ip_sni,
            };
            w.write_all(line.as_bytes()).unwrap();
            String::from_utf8(w.inner).unwrap()
        };
        let noise =
            " WARN Illegal SNI extension: ignoring IP address presented as hostname (0x31)\n";
        assert_eq!(write(true, noise), "");
        let real = " WARN Illegal SNI hostname received \"a b\"\n";
        assert_eq!(write(true, real), real);
        // Not from rustls: kept whatever it says.
        assert_eq!(write(false, noise), noise);
    }

    #[test]
    fn rust_log_overrides_and_both_are_checked() {
        assert_eq!(filter_text("info", None).unwrap(), "info");
        assert_eq!(filter_text("info", Some("debug".into())).unwrap(), "debug");
        assert_eq!(filter_text("warn", Some(" ".into())).unwrap(), "warn");
        let err = filter_text("info", Some("warning".into())).unwrap_err();
        assert!(
            err.starts_with("RUST_LOG: \"warning\" is not a level"),
            "{err}"
        );
        let err = filter_text("warning", None).unwrap_err();
        assert!(
            err.starts_with("diagnostics.logs.level: \"warning\" is not a level"),
            "{err}"
        );
    }
}
