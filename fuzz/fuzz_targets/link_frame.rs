//! Feeds arbitrary bytes to the node link's frame decoder
//! (core/src/cluster/frame.rs) with a small frame limit. Oracles: no panic;
//! every frame decoded re-encodes to bytes that decode to the same frame.
#![no_main]

use std::time::Instant;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use shardmq_core::cluster::frame::{decode, encode};

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = decode(&mut buf, MAX, now) {
        let mut wire = Vec::new();
        encode(&frame, &mut wire, now).expect("a decoded frame re-encodes");
        let mut again = BytesMut::from(&wire[..]);
        let back = decode(&mut again, usize::MAX, now).expect("re-encoded frame decodes");
        assert_eq!(back.as_ref(), Some(&frame));
    }
});
