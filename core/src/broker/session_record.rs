//! A persisted session as it is written to the shard's log (issue 16,
//! docs/PERSISTENCE.md "Sessions"): the client id, who owns it, its expiry
//! interval and its subscriptions, encoded as one record of the buffer's
//! format (`buffer::log`), and decoded strictly: a record that does not
//! parse is an error, never a guess.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::PrincipalId;
use crate::buffer::{record, RecordError};
use crate::codec::{QoS, RetainHandling, SubscriptionId, SubscriptionOptions};
use crate::session::{Message, PendingWill, Subscription};
use crate::topic::{Filter, TopicName};

/// The topic every session record carries: records are messages in the
/// buffer's format, and this one is never routed anywhere.
const RECORD_TOPIC: &str = "$session";
/// Payload format version: a later layout gets a new number. Version 2
/// adds the queue id; version 3 the will's Message Expiry Interval (its
/// message no longer carries a deadline). Versions 1 and 2 still read.
const FORMAT: u8 = 3;
const FORMAT_V2: u8 = 2;
const FORMAT_V1: u8 = 1;

/// One session's persisted state. The log keeps the last record per client
/// id; a delete (`SessionRecord` absent) ends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub client_id: ByteString,
    /// Who owns the id (`sessionTakeover: SamePrincipal` holds across a
    /// restart).
    pub principal: PrincipalId,
    pub expiry_interval: Duration,
    /// When the session expires if its client does not come back: set once
    /// its client left, `None` while it is connected (the interval counts
    /// from when it leaves [MQTT-3.1.2-23]). Stored like a message expiry,
    /// so recovery rebases it on the wall clock and the downtime counts.
    pub offline_until: Option<Instant>,
    /// By the filter as subscribed (`$share/g/f` and `f` differ).
    pub subscriptions: Vec<(ByteString, Subscription)>,
    /// The will while the client is connected: a crash ends the
    /// connection without DISCONNECT, so the restored session publishes it
    /// [MQTT-3.1.2-8] after its delay unless the client resumes first
    /// [MQTT-3.1.3-9]. Written without it once the connection closed (the
    /// running broker published, scheduled or discarded it then). Its
    /// Message Expiry Interval is stored as an interval: it starts when the
    /// will is published (§3.1.3.2.4), so the downtime does not count.
    pub will: Option<PendingWill>,
    /// The id of its persisted queue (`session::QueueLog`): recovery keeps
    /// the queued messages written under this id only. 0: none.
    pub queue_id: u64,
}

fn topic() -> TopicName {
    TopicName::try_from(RECORD_TOPIC).unwrap_or_else(|_| unreachable!("a valid topic name"))
}

/// The record of a session delete: the client id alone.
pub fn delete_message(client_id: &ByteString) -> Message {
    Message {
        topic: topic(),
        payload: Bytes::new(),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
        expires_at: None,
        origin: client_id.clone(),
        retain_stamp: 0,
    }
}

impl SessionRecord {
    /// As a record of the buffer's format: the client id in the origin
    /// field, the rest in the payload (the will as a nested record, its
    /// expiry counted from `epoch` like the log's own records).
    pub fn to_message(&self, epoch: Instant) -> Result<Message, RecordError> {
        // Format 2 where it says the same (no will expiry to keep): a
        // binary before format 3 still reads the record after a downgrade,
        // where it would drop the session and its queue.
        let format = match &self.will {
            Some(w) if w.expiry.is_some() => FORMAT,
            _ => FORMAT_V2,
        };
        let mut p = BytesMut::new();
        p.put_u8(format);
        put_str(&mut p, self.principal.as_str());
        p.put_u32(u32::try_from(self.expiry_interval.as_secs()).unwrap_or(u32::MAX));
        p.put_u32(self.subscriptions.len() as u32);
        for (raw, sub) in &self.subscriptions {
            put_str(&mut p, raw);
            p.put_u8(options_byte(&sub.options));
            p.put_u32(sub.id.map_or(0, SubscriptionId::get));
        }
        match &self.will {
            None => p.put_u8(0),
            Some(will) => {
                p.put_u8(1);
                p.put_u32(u32::try_from(will.delay.as_secs()).unwrap_or(u32::MAX));
                if let Some(interval) = will.expiry {
                    p.put_u8(1);
                    p.put_u32(u32::try_from(interval.as_secs()).unwrap_or(u32::MAX));
                }
                let mut nested = Vec::new();
                record::encode(&mut nested, 0, &will.message, epoch)?;
                p.put_u32(u32::try_from(nested.len()).map_err(|_| RecordError::TooLarge)?);
                p.put_slice(&nested);
            }
        }
        p.put_u64(self.queue_id);
        Ok(Message {
            payload: p.freeze(),
            expires_at: self.offline_until,
            ..delete_message(&self.client_id)
        })
    }

    /// Reads a record written by `to_message`; instants come back relative
    /// to `epoch`.
    pub fn from_message(message: &Message, epoch: Instant) -> Result<SessionRecord, RecordError> {
        let mut r = Reader(&message.payload);
        let format = r.u8()?;
        if ![FORMAT, FORMAT_V2, FORMAT_V1].contains(&format) {
            return Err(RecordError::Malformed("unknown session record format"));
        }
        let principal = PrincipalId::restored(r.str()?);
        let expiry_interval = Duration::from_secs(u64::from(r.u32()?));
        let n = r.u32()? as usize;
        // Each subscription takes at least 4 + 1 + 4 bytes: a count the
        // payload cannot hold is refused before anything is allocated.
        if n > r.0.len() / 9 {
            return Err(RecordError::Malformed("session record subscription count"));
        }
        let mut subscriptions = Vec::with_capacity(n);
        for _ in 0..n {
            let raw = r.str()?;
            let options = options_from(r.u8()?)?;
            let id = match r.u32()? {
                0 => None,
                v => Some(
                    SubscriptionId::new(v)
                        .ok_or(RecordError::Malformed("session record subscription id"))?,
                ),
            };
            let filter = Filter::parse(raw.clone())
                .map_err(|_| RecordError::Malformed("session record filter"))?;
            subscriptions.push((
                raw,
                Subscription {
                    filter,
                    options,
                    id,
                },
            ));
        }
        let will = match r.u8()? {
            0 => None,
            1 => {
                let delay = Duration::from_secs(u64::from(r.u32()?));
                let expiry = if format == FORMAT {
                    match r.u8()? {
                        0 => None,
                        1 => Some(Duration::from_secs(u64::from(r.u32()?))),
                        _ => return Err(RecordError::Malformed("session record will expiry flag")),
                    }
                } else {
                    // Formats 1 and 2 wrote the will's deadline into its
                    // message instead: read back as such.
                    None
                };
                let len = r.u32()? as usize;
                let nested = r.take(len)?;
                let (rlen, owner) = record::header(nested)?;
                if rlen != nested.len() {
                    return Err(RecordError::Malformed("session record will length"));
                }
                let message = Arc::new(record::decode(nested, owner, epoch)?);
                Some(PendingWill {
                    message,
                    delay,
                    expiry,
                })
            }
            _ => return Err(RecordError::Malformed("session record will flag")),
        };
        let queue_id = if format == FORMAT_V1 { 0 } else { r.u64()? };
        if !r.0.is_empty() {
            return Err(RecordError::Malformed("session record trailing bytes"));
        }
        Ok(SessionRecord {
            client_id: message.origin.clone(),
            principal,
            expiry_interval,
            offline_until: message.expires_at,
            subscriptions,
            will,
            queue_id,
        })
    }
}

pub(super) fn put_str(p: &mut BytesMut, s: &str) {
    // A 32-bit length: a principal joins method, subject and realm, so it
    // can pass 65,535 bytes even though each part came from a packet, and a
    // string cut short (perhaps inside a character) would make the record,
    // and everything after it in its block, unreadable.
    p.put_u32(s.len() as u32);
    p.put_slice(s.as_bytes());
}

/// The SUBSCRIBE options byte of v5 §3.8.3.1.
fn options_byte(o: &SubscriptionOptions) -> u8 {
    (o.qos as u8)
        | (u8::from(o.no_local) << 2)
        | (u8::from(o.retain_as_published) << 3)
        | ((o.retain_handling as u8) << 4)
}

fn options_from(b: u8) -> Result<SubscriptionOptions, RecordError> {
    let bad = RecordError::Malformed("session record subscription options");
    let qos = match b & 0b11 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => return Err(bad),
    };
    let retain_handling = match (b >> 4) & 0b11 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendAtSubscribeIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(bad),
    };
    if b >> 6 != 0 {
        return Err(bad);
    }
    Ok(SubscriptionOptions {
        qos,
        no_local: b & 0b100 != 0,
        retain_as_published: b & 0b1000 != 0,
        retain_handling,
    })
}

pub(super) struct Reader<'a>(pub &'a [u8]);

impl Reader<'_> {
    pub(super) fn take(&mut self, n: usize) -> Result<&[u8], RecordError> {
        if self.0.len() < n {
            return Err(RecordError::Malformed("session record cut short"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    pub(super) fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }

    pub(super) fn u32(&mut self) -> Result<u32, RecordError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(super) fn u64(&mut self) -> Result<u64, RecordError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }

    pub(super) fn str(&mut self) -> Result<ByteString, RecordError> {
        let b = self.take(4)?;
        let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let s = std::str::from_utf8(self.take(len)?)
            .map_err(|_| RecordError::Malformed("session record string"))?;
        Ok(ByteString::from(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests' clock base, read once.
    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        Instant::now()
    }

    fn will() -> PendingWill {
        let properties = crate::codec::Properties {
            content_type: Some("text/plain".into()),
            ..crate::codec::Properties::default()
        };
        let message = Message {
            topic: TopicName::try_from("plant/7/status").unwrap_or_else(|_| unreachable!()),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: properties.into(),
            expires_at: None,
            origin: "sensor-7".into(),
            retain_stamp: 0,
        };
        PendingWill {
            message: Arc::new(message),
            delay: Duration::from_secs(5),
            expiry: Some(Duration::from_secs(600)),
        }
    }

    fn record() -> SessionRecord {
        let sub = |raw: &str, qos, id| {
            (
                ByteString::from(raw),
                Subscription {
                    filter: Filter::parse(ByteString::from(raw)).unwrap_or_else(|_| unreachable!()),
                    options: SubscriptionOptions {
                        qos,
                        no_local: true,
                        retain_as_published: true,
                        retain_handling: RetainHandling::DoNotSend,
                    },
                    id: SubscriptionId::new(id),
                },
            )
        };
        SessionRecord {
            client_id: "sensor-7".into(),
            principal: PrincipalId::authenticated("x509", "cert", "CN=sensor-7"),
            expiry_interval: Duration::from_secs(3600),
            offline_until: None,
            subscriptions: vec![
                sub("plant/+/cmd", QoS::ExactlyOnce, 7),
                sub("$share/g/plant/#", QoS::AtLeastOnce, 0),
            ],
            will: Some(will()),
            queue_id: 0x0102_0304_0506_0708,
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let epoch = t0();
        let r = record();
        let m = r.to_message(epoch).unwrap_or_else(|_| unreachable!());
        assert_eq!(SessionRecord::from_message(&m, epoch).ok(), Some(r));
        let without = SessionRecord {
            will: None,
            ..record()
        };
        let m = without.to_message(epoch).unwrap_or_else(|_| unreachable!());
        assert_eq!(SessionRecord::from_message(&m, epoch).ok(), Some(without));
    }

    /// A will's expiry is an interval (§3.1.3.2.4: it starts when the will
    /// is published); absent, the will does not expire.
    #[test]
    fn a_wills_expiry_interval_reads_back_as_written() {
        let epoch = t0();
        for expiry in [None, Some(Duration::ZERO), Some(Duration::from_secs(10))] {
            let r = SessionRecord {
                will: Some(PendingWill { expiry, ..will() }),
                ..record()
            };
            let m = r.to_message(epoch).unwrap_or_else(|_| unreachable!());
            // Only a will expiry needs format 3; without one the record is
            // format 2, which a binary from before format 3 reads (a
            // downgrade keeps its sessions).
            let format = if expiry.is_some() { FORMAT } else { FORMAT_V2 };
            assert_eq!(m.payload[0], format, "{expiry:?}");
            assert_eq!(SessionRecord::from_message(&m, epoch).ok(), Some(r));
        }
        let no_will = SessionRecord {
            will: None,
            ..record()
        };
        let m = no_will.to_message(epoch).unwrap_or_else(|_| unreachable!());
        assert_eq!(m.payload[0], FORMAT_V2, "no will at all");
    }

    /// A record of format 2 (before the will's interval was stored) still
    /// reads: its will's message keeps the deadline that format wrote.
    #[test]
    fn a_format_2_record_reads_its_will_with_the_deadline_it_wrote() {
        let epoch = t0();
        let at = epoch + Duration::from_secs(600);
        let old_will = PendingWill {
            message: Arc::new(Message {
                expires_at: Some(at),
                ..Message::clone(&will().message)
            }),
            expiry: None,
            ..will()
        };
        let r = SessionRecord {
            will: Some(old_will),
            ..record()
        };
        // A will without an expiry interval is still written as format 2,
        // its deadline in its message.
        let v2 = r.to_message(epoch).unwrap_or_else(|_| unreachable!());
        assert_eq!(v2.payload[0], FORMAT_V2);
        let read = SessionRecord::from_message(&v2, epoch).unwrap_or_else(|_| unreachable!());
        assert_eq!(read, r);
        let will = read.will.unwrap_or_else(|| unreachable!());
        assert_eq!(will.message.expires_at, Some(at));
        assert_eq!(will.publication(epoch).expires_at, Some(at));
    }

    #[test]
    fn a_principal_longer_than_a_packet_string_reads_back_whole() {
        let epoch = t0();
        let r = SessionRecord {
            principal: PrincipalId::authenticated("realm", "password", &"é".repeat(40_000)),
            ..record()
        };
        assert!(r.principal.as_str().len() > usize::from(u16::MAX));
        let m = r.to_message(epoch).unwrap_or_else(|_| unreachable!());
        assert_eq!(SessionRecord::from_message(&m, epoch).ok(), Some(r));
    }

    #[test]
    fn every_cut_and_every_changed_options_byte_is_an_error_not_a_panic() {
        let epoch = t0();
        let m = record()
            .to_message(epoch)
            .unwrap_or_else(|_| unreachable!());
        for len in 0..m.payload.len() {
            let cut = Message {
                payload: m.payload.slice(..len),
                ..m.clone()
            };
            assert!(
                SessionRecord::from_message(&cut, epoch).is_err(),
                "cut at {len}"
            );
        }
        let mut longer = m.payload.to_vec();
        longer.push(0);
        let longer = Message {
            payload: longer.into(),
            ..m.clone()
        };
        assert!(SessionRecord::from_message(&longer, epoch).is_err());
        // A count of 4 billion subscriptions in a short payload.
        let mut huge = m.payload.to_vec();
        let at = 1 + 4 + record().principal.as_str().len() + 4;
        huge[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        let huge = Message {
            payload: huge.into(),
            ..m.clone()
        };
        assert!(SessionRecord::from_message(&huge, epoch).is_err());
        for b in [0b11, 0b11_0000, 0b0100_0000] {
            assert!(options_from(b).is_err(), "{b:#b}");
        }
    }
}
