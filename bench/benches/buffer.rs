//! Disk buffer micro-benchmarks. `seal/*` and `open/*` time one block of the
//! named body size (open includes copying the sealed block out, as a read
//! does); `seal_batch/*` compares 256 records of 64 B sealed one block each
//! vs all in one block; `append/*` and `read/*` run the real `DiskBuffer` on
//! files in the temp dir, encrypted and plain. Appends release at once, so
//! segment allocation and reclaim are in the steady state; reads drain in
//! order, as a reconnecting subscriber does.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;
use bytestring::ByteString;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use shardmq_core::buffer::{record, BlockPos, RecordRef, Sealer, BLOCK_HEADER_LEN};
use shardmq_core::codec::QoS;
use shardmq_core::session::Message;
use shardmq_core::topic::TopicName;
use shardmq_io::buffer::{DiskBuffer, SEGMENT_BYTES_DEFAULT};

const SIZES: [(&str, usize); 3] = [("64B", 64), ("1KiB", 1024), ("16KiB", 16 * 1024)];

/// Hands out strictly increasing positions, as a segment writer does.
struct Positions(u64);

impl Positions {
    fn next(&mut self) -> BlockPos {
        self.0 += 1;
        BlockPos {
            segment: (self.0 >> 20) as u32 + 1,
            offset: (self.0 & 0xF_FFFF) as u32 * 64,
        }
    }
}

fn mode(encrypt: bool) -> &'static str {
    if encrypt {
        "encrypted"
    } else {
        "plain"
    }
}

fn seal_open(c: &mut Criterion) {
    for encrypt in [true, false] {
        let mut g = c.benchmark_group("seal");
        for (name, len) in SIZES {
            g.throughput(Throughput::Bytes(len as u64));
            let mut sealer = Sealer::new(encrypt).unwrap();
            let key = sealer.current_key();
            let mut pos = Positions(0);
            let mut block = vec![0x5Au8; BLOCK_HEADER_LEN + len];
            g.bench_function(format!("{name}_{}", mode(encrypt)), |b| {
                b.iter(|| {
                    block.truncate(BLOCK_HEADER_LEN + len);
                    sealer.seal_block(key, pos.next(), &mut block).unwrap();
                })
            });
        }
        g.finish();
        let mut g = c.benchmark_group("open");
        for (name, len) in SIZES {
            g.throughput(Throughput::Bytes(len as u64));
            let mut sealer = Sealer::new(encrypt).unwrap();
            let key = sealer.current_key();
            let pos = BlockPos {
                segment: 1,
                offset: 32,
            };
            let mut sealed = vec![0x5Au8; BLOCK_HEADER_LEN + len];
            sealer.seal_block(key, pos, &mut sealed).unwrap();
            let mut scratch = Vec::with_capacity(sealed.len());
            g.bench_function(format!("{name}_{}", mode(encrypt)), |b| {
                b.iter(|| {
                    scratch.clear();
                    scratch.extend_from_slice(&sealed);
                    sealer.open_block(key, pos, &mut scratch).unwrap().len()
                })
            });
        }
        g.finish();
    }
}

/// 256 records of 64 B: one AEAD call each vs one for all of them.
fn seal_batch(c: &mut Criterion) {
    const N: usize = 256;
    let mut g = c.benchmark_group("seal_batch");
    g.throughput(Throughput::Elements(N as u64));
    let mut sealer = Sealer::new(true).unwrap();
    let key = sealer.current_key();
    let mut pos = Positions(0);
    let mut block = Vec::with_capacity(BLOCK_HEADER_LEN + N * 64 + 16);
    g.bench_function("64Bx256_one_block_each", |b| {
        b.iter(|| {
            for _ in 0..N {
                block.clear();
                block.resize(BLOCK_HEADER_LEN + 64, 0x5A);
                sealer.seal_block(key, pos.next(), &mut block).unwrap();
            }
        })
    });
    g.bench_function("64Bx256_one_block", |b| {
        b.iter(|| {
            block.clear();
            block.resize(BLOCK_HEADER_LEN + N * 64, 0x5A);
            sealer.seal_block(key, pos.next(), &mut block).unwrap();
        })
    });
    g.finish();
}

fn message(payload_len: usize) -> Message {
    Message {
        topic: TopicName::try_from("factory/line-3/cell-7/sensor/temperature").unwrap(),
        payload: Bytes::from(vec![0x5Au8; payload_len]),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
        expires_at: None,
        origin: ByteString::from_static("sensor-0042"),
        retain_stamp: 0,
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("shardmq-bench-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

fn encode_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("record");
    let epoch = Instant::now();
    let m = message(64);
    let mut out = Vec::with_capacity(256);
    g.bench_function("encode/64B", |b| {
        b.iter(|| {
            out.clear();
            record::encode(&mut out, 7, &m, epoch).unwrap()
        })
    });
    g.bench_function("decode/64B", |b| {
        b.iter(|| record::decode(&out, 7, epoch).unwrap())
    });
    g.finish();
}

fn append_read(c: &mut Criterion) {
    for (name, len) in [("64B", 64), ("1KiB", 1024)] {
        for encrypt in [true, false] {
            let id = format!("{name}_{}", mode(encrypt));
            let dir = temp_dir(&id);
            let m = message(len);
            let mut g = c.benchmark_group("append");
            g.throughput(Throughput::Elements(1));
            let mut buf = DiskBuffer::open(
                &dir,
                0,
                4 * SEGMENT_BYTES_DEFAULT,
                SEGMENT_BYTES_DEFAULT,
                encrypt,
                Instant::now(),
            )
            .unwrap();
            g.bench_function(&id, |b| {
                b.iter(|| {
                    let r = buf.append(1, &m).unwrap();
                    buf.release(r);
                })
            });
            g.finish();
            drop(buf);

            // Drain in order: each block is opened once and served from the
            // cache for the records after the first.
            let mut g = c.benchmark_group("read");
            g.throughput(Throughput::Elements(1));
            let mut buf = DiskBuffer::open(
                &dir,
                0,
                4 * SEGMENT_BYTES_DEFAULT,
                SEGMENT_BYTES_DEFAULT,
                encrypt,
                Instant::now(),
            )
            .unwrap();
            let refs: Vec<RecordRef> = (0..20_000).map(|_| buf.append(1, &m).unwrap()).collect();
            buf.flush().unwrap();
            let mut i = 0;
            g.bench_function(&id, |b| {
                b.iter_batched(
                    || {
                        i = (i + 1) % refs.len();
                        refs[i]
                    },
                    |r| buf.read(r, 1).unwrap(),
                    BatchSize::SmallInput,
                )
            });
            g.finish();

            // A drain as the broker does it: read every record of a
            // backlog in order and hold the messages (the subscriber's
            // in-flight window) until the end.
            let mut g = c.benchmark_group("drain");
            let backlog = &refs[..DRAIN_LEN];
            g.throughput(Throughput::Elements(DRAIN_LEN as u64));
            g.bench_function(&id, |b| {
                b.iter(|| {
                    backlog
                        .iter()
                        .map(|r| buf.read(*r, 1).unwrap())
                        .collect::<Vec<Message>>()
                })
            });
            g.finish();
            drop(buf);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// Messages per `drain/*` iteration: ~4 MiB of 1 KiB messages.
const DRAIN_LEN: usize = 4096;

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = seal_open, seal_batch, encode_decode, append_read
}
criterion_main!(benches);
