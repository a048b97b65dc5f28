//! The loopback floor for the latency figures: a trivial TCP echo server (one
//! blocking thread, pinned where the broker would be) and a client that
//! sends one payload and waits for it back, one in flight. A broker's p2p
//! QoS 1 latency crosses the same two loopback hops (publisher -> broker ->
//! subscriber), so "how far above the floor" is the broker's own cost.
//! Measured twice: both ends spinning on non-blocking sockets (the kernel's
//! path alone) and both ends sleeping in blocking reads (plus the wake-up of
//! an idle CPU each hop, which a broker at moderate load pays too).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Round trips measured, in µs.
#[derive(Debug)]
pub struct EchoFloor {
    pub round_trips: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
}

fn pin_thread(cpu: usize) -> std::io::Result<()> {
    use nix::sched::{sched_setaffinity, CpuSet};
    let mut set = CpuSet::new();
    set.set(cpu).map_err(std::io::Error::other)?;
    sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).map_err(std::io::Error::other)
}

fn serve(
    listener: TcpListener,
    server_cpu: Option<usize>,
    payload: usize,
    spin: bool,
) -> std::io::Result<()> {
    if let Some(cpu) = server_cpu {
        pin_thread(cpu)?;
    }
    let (mut s, _) = listener.accept()?;
    s.set_nodelay(true)?;
    s.set_nonblocking(spin)?;
    let mut buf = vec![0u8; payload];
    loop {
        if spin_read(&mut s, &mut buf).is_err() {
            return Ok(()); // the client is done
        }
        spin_write(&mut s, &buf)?;
    }
}

/// `write_all` that also works on a non-blocking socket (a payload larger
/// than the socket buffers).
fn spin_write(s: &mut TcpStream, buf: &[u8]) -> std::io::Result<()> {
    let mut sent = 0;
    while sent < buf.len() {
        match s.write(&buf[sent..]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `read_exact` that also works on a non-blocking socket (spinning); a
/// closed peer is an error.
fn spin_read(s: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Echoes `payload` bytes back and forth on 127.0.0.1 for `warmup` then
/// `duration`, the server thread on `server_cpu`, the caller's thread as
/// the client; both spinning or both sleeping in reads.
pub fn measure(
    payload: usize,
    warmup: Duration,
    duration: Duration,
    server_cpu: Option<usize>,
    spin: bool,
) -> std::io::Result<EchoFloor> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || serve(listener, server_cpu, payload, spin));
    let mut c = TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    c.set_nonblocking(spin)?;
    // A lost echo must fail the run, not hang it.
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    let out = vec![7u8; payload];
    let mut back = vec![0u8; payload];
    let mut hist = Histogram::<u64>::new(3).map_err(std::io::Error::other)?;
    let start = Instant::now();
    let end = start + warmup + duration;
    while Instant::now() < end {
        let t = Instant::now();
        spin_write(&mut c, &out)?;
        spin_read(&mut c, &mut back)?;
        if t >= start + warmup {
            let _ = hist.record(t.elapsed().as_micros() as u64);
        }
    }
    drop(c);
    server
        .join()
        .map_err(|_| std::io::Error::other("echo server thread panicked"))??;
    Ok(EchoFloor {
        round_trips: hist.len(),
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_echo_measures_round_trips_of_the_payload() {
        for spin in [true, false] {
            let f = measure(1024, Duration::ZERO, Duration::from_millis(100), None, spin).unwrap();
            assert!(f.round_trips > 0);
            assert!(f.p50_us <= f.p99_us && f.p99_us <= f.p999_us);
        }
    }
}
