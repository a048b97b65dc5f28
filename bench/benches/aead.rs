//! AEAD seal/open per record size with ring's AES-256-GCM, the cipher
//! `encryptInternalTraffic` uses for data at rest: what encrypting one
//! buffered record costs. Inputs: `aead/{seal,open}/aes256gcm/{64B,1KiB,16KiB,64KiB}`.

use criterion::{
    black_box, criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput,
};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};

const SIZES: [(usize, &str); 4] = [
    (64, "64B"),
    (1024, "1KiB"),
    (16 * 1024, "16KiB"),
    (64 * 1024, "64KiB"),
];

fn key() -> LessSafeKey {
    // A fixed key: the bench measures the cipher, not key handling.
    #[allow(clippy::unwrap_used)]
    let unbound = UnboundKey::new(&AES_256_GCM, &[7u8; 32]).unwrap();
    LessSafeKey::new(unbound)
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn seal(c: &mut Criterion) {
    let key = key();
    let mut group = c.benchmark_group("aead/seal/aes256gcm");
    for (size, name) in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        let record = vec![0xA5u8; size];
        let mut counter = 0u64;
        group.bench_with_input(BenchmarkId::from_parameter(name), &record, |b, record| {
            // Sealed in place again and again: the cipher's cost does not
            // depend on the bytes, and restoring them would time a 16 KiB
            // memcpy too (on this CPU glibc's `rep movsb` copy sometimes
            // costs more than the AES itself).
            let mut buf = record.clone();
            b.iter(|| {
                counter += 1;
                #[allow(clippy::unwrap_used)]
                let tag = key
                    .seal_in_place_separate_tag(nonce(counter), Aad::empty(), &mut buf)
                    .unwrap();
                let _tag = black_box(tag);
            });
        });
    }
    group.finish();
}

fn open(c: &mut Criterion) {
    let key = key();
    let mut group = c.benchmark_group("aead/open/aes256gcm");
    for (size, name) in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        let mut sealed = vec![0xA5u8; size];
        #[allow(clippy::unwrap_used)]
        key.seal_in_place_append_tag(nonce(1), Aad::empty(), &mut sealed)
            .unwrap();
        group.bench_with_input(BenchmarkId::from_parameter(name), &sealed, |b, sealed| {
            // A fresh copy per open, made outside the timed part.
            b.iter_batched_ref(
                || sealed.clone(),
                |buf| {
                    #[allow(clippy::unwrap_used)]
                    let plain = key.open_in_place(nonce(1), Aad::empty(), buf).unwrap();
                    black_box(plain.len());
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, seal, open);
criterion_main!(benches);
