//! Fixed header, framing, partial frames, size limits, first packet (§2, §3.1.0).

use super::*;

// ---- framing ----

#[test]
fn every_prefix_of_a_valid_packet_needs_more_bytes_and_leaves_buf_untouched() {
    for v in [V311, V5] {
        for p in sample_packets(v) {
            let full = enc(&p, v);
            for cut in 0..full.len() {
                let mut buf = BytesMut::from(&full[..cut]);
                assert_eq!(decode_packet(&mut buf, v, MAX), Ok(None), "{p:?} cut {cut}");
                assert_eq!(&buf[..], &full[..cut]);
            }
            let mut buf = full.clone();
            assert_eq!(decode_packet(&mut buf, v, MAX).unwrap(), Some(p));
            assert!(buf.is_empty());
        }
    }
}

#[test]
fn every_prefix_of_first_connect_needs_more_bytes_mqtt_3_1_0_1() {
    for v in [V311, V5] {
        let full = enc(&sample_packets(v)[0], v);
        let mut d = Decoder::new(MAX);
        for cut in 0..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            assert_eq!(d.decode(&mut buf), Ok(None));
            assert_eq!(d.version(), None);
        }
        let mut buf = full;
        assert!(matches!(d.decode(&mut buf), Ok(Some(Packet::Connect(_)))));
        assert_eq!(d.version(), Some(v));
    }
}

#[test]
fn two_frames_in_one_buffer_decode_one_at_a_time() {
    let mut buf = enc(&Packet::PingReq, V5);
    buf.extend_from_slice(&enc(&Packet::PingResp, V5));
    assert_eq!(decode_packet(&mut buf, V5, MAX), Ok(Some(Packet::PingReq)));
    assert_eq!(buf.len(), 2);
    assert_eq!(decode_packet(&mut buf, V5, MAX), Ok(Some(Packet::PingResp)));
}

#[test]
fn oversize_packet_is_rejected_from_the_fixed_header_alone() {
    // PUBLISH announcing 1 MiB: only the 4 header bytes are present.
    let mut buf = BytesMut::new();
    buf.put_u8(0x30);
    put_varint(&mut buf, 1 << 20);
    for v in [V311, V5] {
        let err = decode_packet(&mut buf.clone(), v, 4096).unwrap_err();
        assert_eq!(
            err,
            DecodeError::PacketTooLarge {
                size: 4 + (1 << 20),
                max: 4096
            }
        );
        assert_eq!(err.reason_code(), ReasonCode::PacketTooLarge);
    }
    // Also for the first CONNECT.
    let mut c = BytesMut::new();
    c.put_u8(0x10);
    put_varint(&mut c, 100_000);
    assert!(matches!(
        Decoder::new(4096).decode(&mut c),
        Err(DecodeError::PacketTooLarge { .. })
    ));
}

#[test]
fn packet_size_limit_counts_the_fixed_header_v5_3_1_2_11_4() {
    // PINGREQ is 2 bytes in total: a 1-byte limit rejects it, 2 accepts it.
    let mut buf = enc(&Packet::PingReq, V5);
    assert!(matches!(
        decode_packet(&mut buf.clone(), V5, 1),
        Err(DecodeError::PacketTooLarge { size: 2, max: 1 })
    ));
    assert_eq!(decode_packet(&mut buf, V5, 2), Ok(Some(Packet::PingReq)));
}

#[test]
fn five_byte_remaining_length_is_rejected_mqtt_1_5_5() {
    let bytes = [0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F];
    for v in [V311, V5] {
        assert_eq!(dec(v, &bytes), Err(DecodeError::VarintTooLong));
        // Rejected as soon as the 4th length byte shows a continuation bit.
        assert_eq!(dec(v, &bytes[..5]), Err(DecodeError::VarintTooLong));
    }
}

#[test]
fn non_minimal_remaining_length_rejected_in_v5_accepted_in_v311_mqtt_1_5_5_1() {
    // PINGREQ with remaining length 0 encoded in two bytes.
    let bytes = [0xC0, 0x80, 0x00];
    assert_eq!(dec(V5, &bytes), Err(DecodeError::VarintNotMinimal));
    assert_eq!(dec(V311, &bytes), Ok(Some(Packet::PingReq)));
}

#[test]
fn non_minimal_remaining_length_of_first_connect_follows_its_level() {
    for (v, ok) in [(V311, true), (V5, false)] {
        let good = enc(&sample_packets(v)[0], v);
        // Pad the 1-byte remaining length to 2 bytes (same value).
        assert!(good[1] < 0x80);
        let mut bad = BytesMut::new();
        bad.put_u8(good[0]);
        bad.put_u8(good[1] | 0x80);
        bad.put_u8(0x00);
        bad.put_slice(&good[2..]);
        let (d, r) = first_packet(bad);
        assert_eq!(r.is_ok(), ok, "{v:?}: {r:?}");
        if !ok {
            assert_eq!(r, Err(DecodeError::VarintNotMinimal));
        }
        assert_eq!(d.version(), Some(v));
    }
}

#[test]
fn packet_type_0_is_reserved_and_15_is_reserved_in_v311_mqtt_2_1_2() {
    assert_eq!(
        dec(V5, &[0x00, 0x00]),
        Err(DecodeError::ReservedPacketType(0))
    );
    assert_eq!(
        dec(V311, &[0x00, 0x00]),
        Err(DecodeError::ReservedPacketType(0))
    );
    assert_eq!(dec(V311, &[0xF0, 0x00]), Err(DecodeError::AuthInV311));
    assert!(matches!(dec(V5, &[0xF0, 0x00]), Ok(Some(Packet::Auth(_)))));
}

#[test]
fn reserved_fixed_header_flags_are_rejected_mqtt_2_1_3_1() {
    for v in [V311, V5] {
        for p in sample_packets(v) {
            let t = p.packet_type();
            let Some(expected) = t.fixed_header_flags() else {
                continue;
            };
            let good = enc(&p, v);
            assert_eq!(good[0] & 0x0F, expected);
            for flags in (0..16u8).filter(|f| *f != expected) {
                let mut bad = good.clone();
                bad[0] = (bad[0] & 0xF0) | flags;
                let r = decode_packet(&mut bad, v, MAX);
                let want = DecodeError::InvalidFixedHeaderFlags { packet: t, flags };
                assert_eq!(r, Err(want));
            }
        }
    }
    // PUBREL with flags 0 (the 3.1 form) is rejected too.
    assert_eq!(
        dec_err(V311, 0x60, &[0, 1]),
        DecodeError::InvalidFixedHeaderFlags {
            packet: PacketType::PubRel,
            flags: 0
        }
    );
}

#[test]
fn first_packet_must_be_connect_mqtt_3_1_0_1() {
    let (d, r) = first_packet(frame(0x30, b"\x00\x01a"));
    assert_eq!(
        r,
        Err(DecodeError::FirstPacketNotConnect(PacketType::Publish))
    );
    assert_eq!(d.version(), None);
    // Decided from the first byte, before the body arrives.
    let (_, r) = first_packet(BytesMut::from(&[0xC0u8][..]));
    assert_eq!(
        r,
        Err(DecodeError::FirstPacketNotConnect(PacketType::PingReq))
    );
    assert_eq!(
        DecodeError::FirstPacketNotConnect(PacketType::PingReq).reason_code(),
        ReasonCode::ProtocolError
    );
}

#[test]
fn a_second_connect_is_decoded_for_the_session_to_refuse() {
    // [MQTT-3.1.0-2] is an order rule: the session's (Violation::SecondConnect,
    // session_scenarios), not the codec's. The decoder's version stays the
    // first CONNECT's.
    let c = enc(&sample_packets(V5)[0], V5);
    let mut d = Decoder::new(MAX);
    let mut buf = c.clone();
    buf.extend_from_slice(&c);
    assert!(d.decode(&mut buf).unwrap().is_some());
    assert!(matches!(d.decode(&mut buf), Ok(Some(Packet::Connect(_)))));
    assert_eq!(d.version(), Some(V5));
}

#[test]
fn decoded_payload_and_strings_share_the_input_buffer() {
    let p = &sample_packets(V5)[2];
    let mut buf = enc(p, V5);
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    let Some(Packet::Publish(got)) = decode_packet(&mut buf, V5, MAX).unwrap() else {
        panic!("not a publish");
    };
    assert!(range.contains(&(got.payload.as_ptr() as usize)));
    assert!(range.contains(&(got.topic.as_bytes().as_ptr() as usize)));
}

#[test]
fn trailing_bytes_are_malformed_mqtt_2_1_4() {
    assert_eq!(
        dec_err(V5, 0xC0, &[0]),
        DecodeError::TrailingBytes {
            packet: PacketType::PingReq,
            extra: 1
        }
    );
    // v3.1.1 PUBACK is exactly 2 bytes; DISCONNECT has no body.
    assert!(matches!(
        dec_err(V311, 0x40, &[0, 1, 0]),
        DecodeError::TrailingBytes { .. }
    ));
    assert!(matches!(
        dec_err(V311, 0xE0, &[0]),
        DecodeError::TrailingBytes { .. }
    ));
    // v3.1.1 UNSUBACK has no payload.
    assert!(matches!(
        dec_err(V311, 0xB0, &[0, 1, 0]),
        DecodeError::TrailingBytes { .. }
    ));
}

#[test]
fn remaining_length_shorter_than_content_is_malformed() {
    // PUBLISH QoS 1 whose topic length claims 5 bytes but 1 is there.
    let e = dec_err(V311, 0x32, &[0, 5, b'a']);
    assert_eq!(
        e,
        DecodeError::Truncated {
            field: "topic name"
        }
    );
    assert_eq!(e.reason_code(), ReasonCode::MalformedPacket);
    // PUBACK with only one byte of packet id.
    assert!(matches!(
        dec_err(V5, 0x40, &[0]),
        DecodeError::Truncated { .. }
    ));
}

/// The decoder's fast path for 4-byte acknowledgements must agree with the
/// general path (`decode_packet`) on every input it takes, and leave every
/// malformed one to the general path's precise error.
#[test]
fn short_acknowledgements_decode_as_the_general_path_does() {
    for v in [V311, V5] {
        for first in [0x40u8, 0x50, 0x62, 0x70] {
            for id in [1u16, 0x1234, u16::MAX] {
                let [hi, lo] = id.to_be_bytes();
                let bytes = [first, 2, hi, lo, 0xC0, 0x00];
                let mut fast = BytesMut::from(&bytes[..]);
                let mut d = Decoder::new(1024);
                d.set_version(v);
                let got = d.decode(&mut fast).unwrap().unwrap();
                let mut general = BytesMut::from(&bytes[..]);
                let want = decode_packet(&mut general, v, 1024).unwrap().unwrap();
                assert_eq!(got, want);
                assert_eq!(fast, general, "both consumed exactly one frame");
            }
        }
    }
    let mut d = Decoder::new(1024);
    d.set_version(V5);
    // [MQTT-2.2.1-3] a zero packet id is an error, not an acknowledgement.
    assert_eq!(
        d.decode(&mut BytesMut::from(&[0x40u8, 2, 0, 0][..])),
        Err(DecodeError::ZeroPacketId(PacketType::PubAck))
    );
    // [MQTT-3.6.1-1] PUBREL's fixed header flags are 0b0010.
    assert!(matches!(
        d.decode(&mut BytesMut::from(&[0x60u8, 2, 0, 1][..])),
        Err(DecodeError::InvalidFixedHeaderFlags { .. })
    ));
    // Before CONNECT nothing but CONNECT is accepted [MQTT-3.1.0-1].
    let mut fresh = Decoder::new(1024);
    assert!(fresh
        .decode(&mut BytesMut::from(&[0x40u8, 2, 0, 1][..]))
        .is_err());
    // An incomplete one waits for more bytes.
    assert_eq!(d.decode(&mut BytesMut::from(&[0x40u8, 2, 0][..])), Ok(None));
    // `decode_ack` takes only the well-formed 4-byte forms, leaving the rest
    // (and the bytes) to `decode`.
    for bad in [
        &[0x40u8, 2, 0, 0][..],
        &[0x60, 2, 0, 1],
        &[0x40, 3, 0, 1, 0],
        &[0x40, 2, 0],
    ] {
        let mut b = BytesMut::from(bad);
        assert_eq!(d.decode_ack(&mut b), None, "{bad:?}");
        assert_eq!(&b[..], bad);
    }
    assert_eq!(
        d.decode_ack(&mut BytesMut::from(&[0x50u8, 2, 1, 2][..])),
        Some(ShortAck {
            kind: AckKind::PubRec,
            packet_id: PacketId::new(0x0102).unwrap()
        })
    );
}
