//! The self-test: every shard has a built-in subscriber on
//! `$SYS/shardmq/selftest/{shard}` in every replica of the index; shard 0
//! publishes one probe per shard through the normal routing path every
//! `interval` and reports which shards did not answer within `timeout`
//! (`Notice::SelfTest`). A round proves routing and the mesh both work.

use std::sync::Arc;
use std::time::Instant;

use bytestring::ByteString;
use hashbrown::HashMap;

use super::{MeshMsg, Notice, SessionId, Shard, ShardId};
use crate::buffer::Store;
use crate::codec::QoS;
use crate::session::{Message, SharedMessage};
use crate::topic::TopicName;

/// Topic prefix of the self-test probes; `$` keeps them out of `#`.
pub const SELFTEST_PREFIX: &str = "$SYS/shardmq/selftest";

/// Reserved session id of each shard's built-in self-test subscriber.
pub(super) const PROBE_SESSION: SessionId = SessionId(u64::MAX);

#[derive(Debug)]
pub(super) struct SelfTest {
    seq: u64,
    /// When shard 0 sends the next round.
    next_round: Option<Instant>,
    /// Open rounds: which shards answered, when the round gives up, and
    /// when it started.
    rounds: HashMap<u64, (Vec<bool>, Instant, Instant)>,
}

impl SelfTest {
    pub fn new(_id: ShardId, _shards: usize) -> SelfTest {
        SelfTest {
            seq: 0,
            next_round: None,
            rounds: HashMap::new(),
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        let open = self.rounds.values().map(|(_, at, _)| *at).min();
        [self.next_round, open].into_iter().flatten().min()
    }
}

impl<S: Store> Shard<S> {
    /// Starts rounds when due (shard 0) and closes rounds that timed out.
    pub(super) fn tick_selftest(&mut self, now: Instant) {
        let Some(config) = self.config.selftest else {
            return;
        };
        if self.id != ShardId(0) {
            return;
        }
        match self.selftest.next_round {
            None => self.selftest.next_round = now.checked_add(config.interval),
            Some(at) if at <= now => {
                self.selftest.next_round = now.checked_add(config.interval);
                self.probe_round(now, now.checked_add(config.timeout).unwrap_or(now));
            }
            Some(_) => {}
        }
        let late: Vec<u64> = self
            .selftest
            .rounds
            .iter()
            .filter(|(_, (_, at, _))| *at <= now)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in late {
            self.end_round(seq, now);
        }
    }

    fn probe_round(&mut self, now: Instant, deadline: Instant) {
        self.selftest.seq += 1;
        let seq = self.selftest.seq;
        let n = self.config.shards;
        self.selftest
            .rounds
            .insert(seq, (vec![false; n], deadline, now));
        for shard in 0..n {
            let Ok(topic) = TopicName::new(format!("{SELFTEST_PREFIX}/{shard}").into()) else {
                continue;
            };
            let message = Arc::new(Message {
                topic,
                payload: bytes::Bytes::from(seq.to_be_bytes().to_vec()),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: Default::default(),
                expires_at: None,
                origin: ByteString::new(),
                retain_stamp: 0,
            });
            self.publish_message(now, message, None);
        }
    }

    /// A probe reached this shard's built-in subscriber.
    pub(super) fn probe_arrived(&mut self, message: &SharedMessage, now: Instant) {
        let Ok(bytes) = <[u8; 8]>::try_from(&message.payload[..]) else {
            return;
        };
        let seq = u64::from_be_bytes(bytes);
        if self.id == ShardId(0) {
            self.probe_reply(ShardId(0), seq, now);
        } else {
            self.post(ShardId(0), MeshMsg::ProbeReply { seq });
        }
    }

    pub(super) fn probe_reply(&mut self, from: ShardId, seq: u64, now: Instant) {
        let Some((seen, _, _)) = self.selftest.rounds.get_mut(&seq) else {
            return;
        };
        if let Some(s) = seen.get_mut(from.index()) {
            *s = true;
        }
        if seen.iter().all(|s| *s) {
            self.end_round(seq, now);
        }
    }

    fn end_round(&mut self, seq: u64, now: Instant) {
        let Some((seen, _, started)) = self.selftest.rounds.remove(&seq) else {
            return;
        };
        let missing: Vec<ShardId> = seen
            .iter()
            .enumerate()
            .filter(|(_, s)| !**s)
            .map(|(i, _)| ShardId::new(i))
            .collect();
        if missing.is_empty() {
            self.stats.selftest_rounds_ok += 1;
            self.stats.selftest_latency_ns =
                u64::try_from(now.saturating_duration_since(started).as_nanos())
                    .unwrap_or(u64::MAX);
        } else {
            self.stats.selftest_rounds_failed += 1;
        }
        self.notice(Notice::SelfTest { seq, missing });
    }
}
