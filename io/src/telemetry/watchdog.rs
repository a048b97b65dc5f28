//! systemd's service protocol (sd_notify(3)) without libsystemd: READY=1
//! once every listener is bound, and WATCHDOG=1 every half
//! `WatchdogSec=` only while the broker is ready (every shard ticks and
//! every listener is bound: what `/readyz` says), so a stuck shard gets the
//! service restarted. Nothing happens outside systemd ($NOTIFY_SOCKET unset).

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::warn;

use super::Telemetry;

/// Sends one notification; false if there is no systemd to tell.
pub fn notify(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        return false;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        send_abstract(&socket, abstract_name, state)
    } else {
        socket.send_to(state.as_bytes(), &path).is_ok()
    };
    if !sent {
        warn!(state, "sd_notify failed");
    }
    sent
}

#[cfg(target_os = "linux")]
fn send_abstract(socket: &UnixDatagram, name: &[u8], state: &str) -> bool {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name)
        .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
        .is_ok()
}

#[cfg(not(target_os = "linux"))]
fn send_abstract(_: &UnixDatagram, _: &[u8], _: &str) -> bool {
    false
}

/// Pets systemd's watchdog (`WATCHDOG_USEC`) while the broker is ready.
pub fn start(telemetry: Arc<Telemetry>, stop: Arc<AtomicBool>) {
    let Some(usec) = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|v| *v > 0)
    else {
        return;
    };
    let every = Duration::from_micros(usec / 2);
    let _ = std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match telemetry.readiness(Instant::now()) {
                    Ok(()) => {
                        notify("WATCHDOG=1");
                    }
                    Err(problems) => {
                        warn!(?problems, "not ready: systemd's watchdog is not petted");
                    }
                }
                std::thread::sleep(every);
            }
        });
}
