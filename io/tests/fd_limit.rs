//! Past the file-descriptor limit: clients already connected keep working,
//! a client the broker cannot accept is closed at once instead of hanging
//! without a CONNACK, the log says so once per interval (not every 50 ms),
//! and once clients leave, new ones connect again. The binary runs under
//! `prlimit --nofile` (util-linux); without prlimit the test says so and skips.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{temp_file, BIN, WAIT};
use shardmq_core::codec::{decode_packet, encode, Connect, Packet, Props, ProtocolVersion};

/// File descriptors the broker may hold: enough to start, few enough that
/// a test fills them quickly.
const NOFILE: u32 = 64;

/// The outcome of one CONNECT.
#[derive(Debug)]
enum Outcome {
    Connected(TcpStream),
    /// The broker closed the connection without a CONNACK.
    Closed,
    /// Nothing within the wait: the client hangs.
    Hangs,
}

fn try_connect(port: u16, id: &str, wait: Duration) -> Outcome {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return Outcome::Closed;
    };
    s.set_read_timeout(Some(wait)).unwrap();
    let mut out = BytesMut::new();
    encode(
        &Packet::Connect(Box::new(Connect {
            protocol_version: ProtocolVersion::V5,
            clean_start: true,
            keep_alive: 60,
            properties: Props::default(),
            client_id: id.into(),
            will: None,
            username: None,
            password: None,
        })),
        ProtocolVersion::V5,
        &mut out,
    )
    .unwrap();
    if s.write_all(&out).is_err() {
        return Outcome::Closed;
    }
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 512];
    loop {
        if let Ok(Some(Packet::ConnAck(_))) = decode_packet(&mut buf, ProtocolVersion::V5, 1 << 20)
        {
            return Outcome::Connected(s);
        }
        match std::io::Read::read(&mut s, &mut chunk) {
            Ok(0) => return Outcome::Closed,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Outcome::Closed,
            Err(_) => return Outcome::Hangs,
        }
    }
}

#[test]
fn past_the_fd_limit_new_clients_are_closed_at_once_and_the_log_stays_quiet() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("prlimit not installed (util-linux): skipped");
        return;
    }
    let config = temp_file(
        "fd.json",
        r#"{"cardinality":{"frontend":{"workers":1}},
            "listeners":[{"name":"l","ports":[{"port":0,"bindAddress":"127.0.0.1"}]}]}"#,
    );
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--nofile={NOFILE}:{NOFILE}"))
        .arg(BIN)
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info");
    let (broker, ports, log) = common::spawn_logged(cmd, 1);
    let port = ports[0];

    // Fill the descriptors, then some: each one past the limit must be
    // told (closed), never left hanging.
    let mut connected = Vec::new();
    let mut closed = 0;
    for i in 0..(NOFILE as usize + 20) {
        match try_connect(port, &format!("c{i}"), Duration::from_secs(3)) {
            Outcome::Connected(s) => connected.push(s),
            Outcome::Closed => closed += 1,
            Outcome::Hangs => panic!("client {i} hangs without a CONNACK past the fd limit"),
        }
    }
    assert!(
        closed > 0,
        "the limit was never reached ({} connected)",
        connected.len()
    );
    assert!(connected.len() >= 10, "only {} connected", connected.len());

    // Those already in are served: a PINGREQ gets its PINGRESP.
    let first = &mut connected[0];
    first.write_all(&[0xC0, 0x00]).unwrap();
    let mut resp = [0u8; 2];
    std::io::Read::read_exact(first, &mut resp).unwrap();
    assert_eq!(resp, [0xD0, 0x00]);

    // Once clients leave, new ones connect again (bounded retries: the
    // broker closes the sockets as it notices).
    drop(connected);
    let deadline = Instant::now() + WAIT;
    loop {
        if let Outcome::Connected(_) = try_connect(port, "after", Duration::from_secs(3)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no client could connect after the others left"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Many failed accepts, few lines: at most one per 10 s per listener.
    let failed_lines = log
        .lines()
        .iter()
        .filter(|l| l.contains("accept failed"))
        .count();
    assert!(
        (1..=3).contains(&failed_lines),
        "{failed_lines} 'accept failed' lines for {closed} refused clients"
    );
    drop(broker);
}
