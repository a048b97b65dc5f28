//! Sealed blocks: every tamper is detected (flipped bytes in header, body
//! and tag; blocks moved or swapped; records read for another owner; wrong
//! key), nonces never repeat under one key, keys rotate and retire.
// The fake clock's base instant comes from the clock once (core's clippy.toml
// bans clock reads in the library, not here).
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::Instant;

use bytes::Bytes;
use bytestring::ByteString;
use proptest::prelude::*;
use shardmq_core::buffer::{
    record, BlockPos, KeyId, RecordError, SealError, Sealer, BLOCK_HEADER_LEN, TAG_LEN,
};
use shardmq_core::codec::QoS;
use shardmq_core::session::Message;
use shardmq_core::topic::TopicName;

fn message(payload: &'static [u8]) -> Message {
    Message {
        topic: TopicName::try_from("plant/line1/temp").unwrap(),
        payload: Bytes::from_static(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
        expires_at: None,
        origin: ByteString::from_static("sensor-1"),
        retain_stamp: 0,
    }
}

const POS: BlockPos = BlockPos {
    segment: 3,
    offset: 4096,
};

fn sealed(sealer: &mut Sealer, pos: BlockPos, owner: u64, payload: &'static [u8]) -> Vec<u8> {
    let mut block = vec![0u8; BLOCK_HEADER_LEN];
    record::encode(&mut block, owner, &message(payload), Instant::now()).unwrap();
    sealer
        .seal_block(sealer.current_key(), pos, &mut block)
        .unwrap();
    block
}

fn open(sealer: &Sealer, pos: BlockPos, block: &[u8]) -> Result<Vec<u8>, RecordError> {
    let mut b = block.to_vec();
    sealer
        .open_block(sealer.current_key(), pos, &mut b)
        .map(<[u8]>::to_vec)
}

#[test]
fn every_flipped_byte_of_an_encrypted_block_is_detected() {
    let mut sealer = Sealer::new(true).unwrap();
    let block = sealed(&mut sealer, POS, 1, b"hello");
    assert!(open(&sealer, POS, &block).is_ok());
    // Header, ciphertext and tag alike.
    for i in 0..block.len() {
        let mut bad = block.clone();
        bad[i] ^= 0x01;
        let err = open(&sealer, POS, &bad).unwrap_err();
        assert!(
            matches!(err, RecordError::Unauthentic | RecordError::BadBlockHeader),
            "byte {i}: {err:?}"
        );
    }
}

#[test]
fn flipped_tag_byte_fails_authentication() {
    let mut sealer = Sealer::new(true).unwrap();
    let mut block = sealed(&mut sealer, POS, 1, b"hello");
    let last = block.len() - TAG_LEN / 2;
    block[last] ^= 0x80;
    assert_eq!(open(&sealer, POS, &block), Err(RecordError::Unauthentic));
}

#[test]
fn every_flipped_byte_of_a_plaintext_block_is_detected_by_the_checksum() {
    let mut sealer = Sealer::new(false).unwrap();
    let block = sealed(&mut sealer, POS, 1, b"hello");
    for i in 0..block.len() {
        let mut bad = block.clone();
        bad[i] ^= 0x01;
        let err = open(&sealer, POS, &bad).unwrap_err();
        assert!(
            matches!(err, RecordError::Checksum | RecordError::BadBlockHeader),
            "byte {i}: {err:?}"
        );
    }
}

#[test]
fn encrypted_block_hides_the_payload() {
    let mut sealer = Sealer::new(true).unwrap();
    let block = sealed(&mut sealer, POS, 1, b"MARKER-0123456789");
    let found = block.windows(6).any(|w| w == b"MARKER");
    assert!(!found, "plaintext marker visible in sealed block");
    let found = block.windows(5).any(|w| w == b"plant");
    assert!(!found, "topic visible in sealed block");
}

#[test]
fn block_moved_to_another_offset_or_segment_fails() {
    for encrypt in [true, false] {
        let mut sealer = Sealer::new(encrypt).unwrap();
        let block = sealed(&mut sealer, POS, 1, b"hello");
        let moved_offset = BlockPos {
            offset: POS.offset + 64,
            ..POS
        };
        let moved_segment = BlockPos {
            segment: POS.segment + 1,
            ..POS
        };
        assert!(
            open(&sealer, moved_offset, &block).is_err(),
            "encrypt={encrypt}"
        );
        assert!(
            open(&sealer, moved_segment, &block).is_err(),
            "encrypt={encrypt}"
        );
    }
}

#[test]
fn swapped_blocks_fail_at_both_positions() {
    let mut sealer = Sealer::new(true).unwrap();
    let a_pos = BlockPos {
        segment: 1,
        offset: 32,
    };
    let b_pos = BlockPos {
        segment: 1,
        offset: 32 + 256,
    };
    let a = sealed(&mut sealer, a_pos, 1, b"for owner one");
    let b = sealed(&mut sealer, b_pos, 2, b"for owner two");
    assert_eq!(open(&sealer, a_pos, &b), Err(RecordError::Unauthentic));
    assert_eq!(open(&sealer, b_pos, &a), Err(RecordError::Unauthentic));
}

#[test]
fn record_swapped_to_another_owner_is_refused() {
    // Owners are inside the authenticated body: a reader asking for owner 2
    // cannot be handed owner 1's record.
    let mut sealer = Sealer::new(true).unwrap();
    let block = sealed(&mut sealer, POS, 1, b"secret of one");
    let body = open(&sealer, POS, &block).unwrap();
    let err = record::decode(&body, 2, Instant::now()).unwrap_err();
    assert_eq!(err, RecordError::WrongOwner);
}

#[test]
fn block_from_another_process_key_fails() {
    let mut writer = Sealer::new(true).unwrap();
    let block = sealed(&mut writer, POS, 1, b"hello");
    // Same key id (1) and position, different key: a restart.
    let reader = Sealer::new(true).unwrap();
    assert_eq!(reader.current_key(), writer.current_key());
    assert_eq!(open(&reader, POS, &block), Err(RecordError::Unauthentic));
}

#[test]
fn plaintext_block_is_refused_in_encrypted_mode() {
    // No downgrade: the mode is the process's, never the file's.
    let mut plain = Sealer::new(false).unwrap();
    let block = sealed(&mut plain, POS, 1, b"hello");
    let enc = Sealer::new(true).unwrap();
    assert_eq!(open(&enc, POS, &block), Err(RecordError::BadBlockHeader));
}

#[test]
fn sealing_twice_at_one_position_is_refused() {
    let mut sealer = Sealer::new(true).unwrap();
    sealed(&mut sealer, POS, 1, b"first");
    let mut block = vec![0u8; BLOCK_HEADER_LEN + 4];
    let err = sealer
        .seal_block(sealer.current_key(), POS, &mut block)
        .unwrap_err();
    assert_eq!(err, SealError::NonceReuse(POS));
    let before = BlockPos {
        offset: POS.offset - 1,
        ..POS
    };
    let mut block = vec![0u8; BLOCK_HEADER_LEN + 4];
    let err = sealer
        .seal_block(sealer.current_key(), before, &mut block)
        .unwrap_err();
    assert_eq!(err, SealError::NonceReuse(before));
}

proptest! {
    /// Whatever positions a caller asks for, the seals that succeed under
    /// one key all have distinct positions, hence distinct nonces.
    #[test]
    fn no_two_seals_under_one_key_share_a_nonce(
        positions in proptest::collection::vec((0u32..4, 0u32..8), 1..64),
    ) {
        let mut sealer = Sealer::new(true).unwrap();
        let key = sealer.current_key();
        let mut used = HashSet::new();
        for (segment, offset) in positions {
            let pos = BlockPos { segment, offset };
            let mut block = vec![0u8; BLOCK_HEADER_LEN + 8];
            if sealer.seal_block(key, pos, &mut block).is_ok() {
                prop_assert!(used.insert(pos), "nonce {:?} used twice", pos);
            }
        }
    }
}

#[test]
fn rotation_keeps_old_key_until_retired() {
    let mut sealer = Sealer::new(true).unwrap();
    let old = sealer.current_key();
    let block = sealed(&mut sealer, POS, 1, b"old");
    let new = sealer.rotate().unwrap();
    assert_ne!(old, new);
    assert_eq!(sealer.current_key(), new);
    // Old blocks still open with the old key...
    let mut b = block.clone();
    assert!(sealer.open_block(old, POS, &mut b).is_ok());
    // ...not with the new one...
    let mut b = block.clone();
    assert_eq!(
        sealer.open_block(new, POS, &mut b).err(),
        Some(RecordError::Unauthentic)
    );
    // ...and not at all once retired. The current key cannot be retired.
    sealer.retire(old);
    sealer.retire(new);
    assert_eq!(sealer.key_count(), 1);
    let mut b = block;
    assert_eq!(
        sealer.open_block(old, POS, &mut b).err(),
        Some(RecordError::UnknownKey)
    );
    assert_eq!(sealer.current_key(), new);
    assert_ne!(new, KeyId(0));
}

#[test]
fn sealer_debug_does_not_print_keys() {
    let sealer = Sealer::new(true).unwrap();
    let shown = format!("{sealer:?}");
    assert!(shown.contains("encrypt: true"), "{shown}");
    assert!(!shown.to_lowercase().contains("lesssafekey"), "{shown}");
}
