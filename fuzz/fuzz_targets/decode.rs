//! Feeds arbitrary bytes to the decoder. The first input byte picks the path:
//! 0 = a server's first packet (CONNECT only, version from its level),
//! 1 = MQTT 3.1.1, 2 = MQTT 5.0 (any packet type, either direction),
//! 3 = a `Decoder` after CONNECT (v5). A small maximum packet size exercises
//! the size check. Oracles: no panic; every error maps to a reason code; every
//! packet decoded re-encodes and decodes to itself.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use shardmq_core::codec::*;

const MAX: u32 = 512;

fn check_round_trip(p: &Packet, version: ProtocolVersion) {
    let version = match p {
        Packet::Connect(c) => c.protocol_version,
        _ => version,
    };
    let mut buf = BytesMut::new();
    encode(p, version, &mut buf).expect("a decoded packet re-encodes");
    assert_eq!(encoded_len(p, version).ok(), Some(buf.len()));
    let again = decode_packet(&mut buf, version, u32::MAX).expect("re-encoded packet decodes");
    assert_eq!(again.as_ref(), Some(p));
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut buf = BytesMut::from(rest);
    let mut decoder = Decoder::new(MAX);
    let fixed = match mode % 4 {
        0 => None,
        1 => Some(ProtocolVersion::V311),
        2 => Some(ProtocolVersion::V5),
        _ => {
            decoder.set_version(ProtocolVersion::V5);
            None
        }
    };
    loop {
        let before = buf.len();
        let r = match fixed {
            Some(v) => decode_packet(&mut buf, v, MAX),
            None => decoder.decode(&mut buf),
        };
        match r {
            Ok(Some(p)) => {
                assert!(buf.len() < before);
                let v = fixed.or(decoder.version()).expect("version known after a packet");
                check_round_trip(&p, v);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before);
                break;
            }
            Err(e) => {
                let _ = e.reason_code();
                let _ = e.v311_connack();
                assert!(!e.to_string().is_empty());
                break;
            }
        }
    }
});
