//! The broker's shards under a deterministic simulation (`sim/harness.rs`):
//! scenario tests plus randomized runs over many seeds. Every step checks
//! at most one session per client id and, whenever the mesh is quiet, that
//! every replica of the subscription index is equal; each scenario checks
//! its own end state. `SHARDMQ_SIM_SEED=N` replays one seed;
//! `SHARDMQ_SIM_SEEDS=N` runs N seeds per scenario (CI runs 500 to 1,000
//! each, 3,500 in all; a long run: `SHARDMQ_SIM_SEEDS=50000 cargo test
//! --release -p shardmq-core --test sim`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "sim/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::time::Duration;

use bytes::Bytes;
use harness::{seeds, Sim};
use shardmq_core::codec::{QoS, ReasonCode};
use shardmq_core::limits::ClientLimits;

/// Several clients share one client id on three shards, connecting and
/// leaving at random: never two sessions for the id, and Session Present
/// is true exactly when a session was resumed (every CONNECT asks to
/// resume; only the first can find none) [MQTT-3.2.2-2].
#[test]
fn takeover_storm_keeps_one_session_and_honest_session_present() {
    for seed in seeds(1000) {
        let mut sim = Sim::new(seed, 3, ClientLimits::default(), 10_000);
        let clients: Vec<usize> = (0..4).map(|_| sim.add_client("shared", "p")).collect();
        for _ in 0..300 {
            if sim.rng.chance(35) {
                let c = clients[sim.rng.below(clients.len())];
                if !sim.clients[c].connected() {
                    let shard = sim.rng.below(3);
                    sim.connect(c, shard, false, 100);
                } else {
                    match sim.rng.below(3) {
                        0 => sim.subscribe(c, "t/x", QoS::AtLeastOnce),
                        1 => sim.disconnect(c),
                        _ => sim.drop_conn(c),
                    }
                }
            } else if !sim.step() {
                sim.advance(Duration::from_millis(100));
            }
            sim.check();
        }
        for &c in &clients {
            sim.drop_conn(c);
        }
        sim.quiesce();
        let mut fresh = 0;
        for &c in &clients {
            for (present, reason) in &sim.clients[c].seen.connacks {
                if *reason != ReasonCode::Success {
                    sim.fail(&format!("CONNECT refused: {reason:?}"));
                }
                fresh += usize::from(!present);
            }
        }
        if fresh > 1 {
            sim.fail(&format!("{fresh} CONNACKs said Session Present 0"));
        }
        let sessions: usize = sim
            .shards
            .iter()
            .map(|s| s.inventory().offline.len() + s.inventory().online.len())
            .sum();
        let connected = clients
            .iter()
            .any(|&c| !sim.clients[c].seen.connacks.is_empty());
        if connected && sessions != 1 {
            sim.fail(&format!("{sessions} sessions left for one client id"));
        }
    }
}

/// QoS 1 publishers and persistent subscribers that drop and resume on
/// other shards at random: every message acknowledged to its publisher
/// reaches every subscriber that was subscribed before it was sent, in the
/// publisher's order (duplicates allowed, as QoS 1 allows) [MQTT-4.6.0-5].
#[test]
fn acknowledged_qos1_messages_survive_takeovers_in_order() {
    for seed in seeds(1000) {
        let mut sim = Sim::new(seed, 3, ClientLimits::default(), 100_000);
        let subs: Vec<usize> = (0..3)
            .map(|i| sim.add_client(&format!("sub{i}"), &format!("sub{i}")))
            .collect();
        let pubs: Vec<usize> = (0..2)
            .map(|i| sim.add_client(&format!("pub{i}"), &format!("pub{i}")))
            .collect();
        for (i, &s) in subs.iter().enumerate() {
            sim.connect(s, i % 3, false, 1000);
        }
        sim.quiesce();
        for &s in &subs {
            sim.subscribe(s, "t/#", QoS::AtLeastOnce);
        }
        sim.quiesce();
        for (i, &p) in pubs.iter().enumerate() {
            sim.connect(p, (i + 1) % 3, true, 0);
        }
        sim.quiesce();
        let mut seq = [0u32; 2];
        for _ in 0..400 {
            let roll = sim.rng.below(100);
            if roll < 20 {
                let i = sim.rng.below(2);
                seq[i] += 1;
                let payload = Bytes::from(format!("{i}:{:06}", seq[i]));
                sim.publish(pubs[i], &format!("t/{i}"), QoS::AtLeastOnce, false, payload);
            } else if roll < 26 {
                let s = subs[sim.rng.below(subs.len())];
                if sim.clients[s].connected() {
                    if sim.rng.chance(50) {
                        sim.drop_conn(s);
                    } else {
                        sim.disconnect(s);
                    }
                } else {
                    let shard = sim.rng.below(3);
                    sim.connect(s, shard, false, 1000);
                }
            } else if !sim.step() {
                sim.advance(Duration::from_millis(50));
            }
            sim.check();
        }
        // Everyone comes back and drains.
        sim.quiesce();
        for &s in &subs {
            if !sim.clients[s].connected() {
                let shard = sim.rng.below(3);
                sim.connect(s, shard, false, 1000);
            }
        }
        sim.quiesce();
        for &s in &subs {
            for (i, &p) in pubs.iter().enumerate() {
                let acked = &sim.clients[p].seen.acked;
                let mut got: Vec<Bytes> = Vec::new();
                for (topic, payload, _) in &sim.clients[s].seen.publishes {
                    if topic == &format!("t/{i}") && !got.contains(payload) {
                        got.push(payload.clone());
                    }
                }
                for w in got.windows(2) {
                    if w[0] >= w[1] {
                        sim.fail(&format!("subscriber {s} got {:?} before {:?}", w[0], w[1]));
                    }
                }
                for m in acked {
                    if !got.contains(m) {
                        sim.fail(&format!("subscriber {s} never got acknowledged {m:?}"));
                    }
                }
            }
        }
    }
}

/// A SUBSCRIBE and an UNSUBSCRIBE of the same filter in one write, with
/// retained messages on every shard: nothing may follow the UNSUBACK
/// [MQTT-3.10.4-2]. The retained query ran after the SUBSCRIBE's barrier
/// with the subscription as it was, and delivered after the UNSUBACK.
#[test]
fn nothing_retained_follows_an_unsubscribe_pipelined_behind_its_subscribe() {
    for seed in seeds(300) {
        let mut sim = Sim::new(seed, 3, ClientLimits::default(), 10_000);
        let publ = sim.add_client("retainer", "p");
        let shard = sim.rng.below(3);
        sim.connect(publ, shard, true, 0);
        sim.quiesce();
        for i in 0..6 {
            let payload = Bytes::from(format!("v{i}"));
            sim.publish(publ, &format!("keep/{i}"), QoS::AtLeastOnce, true, payload);
        }
        sim.quiesce();
        let sub = sim.add_client("fickle", "q");
        let shard = sim.rng.below(3);
        sim.connect(sub, shard, true, 0);
        sim.quiesce();
        sim.subscribe(sub, "keep/#", QoS::AtLeastOnce);
        sim.unsubscribe(sub, "keep/#");
        sim.quiesce();
        let seen = &sim.clients[sub].seen;
        if seen.unsubacks.len() != 1 || seen.publishes.len() != seen.unsubacks[0] {
            sim.fail(&format!(
                "{} publishes, UNSUBACK after {:?}",
                seen.publishes.len(),
                seen.unsubacks
            ));
        }
    }
}

/// Once a client has its UNSUBACK, a message published on another shard
/// does not reach it [MQTT-3.10.4-2]: UNSUBACK waits until every shard's
/// index has dropped the subscription, as SUBACK waits for it to arrive.
#[test]
fn a_publish_after_the_unsuback_does_not_reach_the_unsubscribed_client() {
    for seed in seeds(300) {
        let mut sim = Sim::new(seed, 3, ClientLimits::default(), 10_000);
        let sub = sim.add_client("leaver", "q");
        let publ = sim.add_client("talker", "p");
        sim.connect(sub, 0, true, 0);
        let shard = 1 + sim.rng.below(2);
        sim.connect(publ, shard, true, 0);
        sim.quiesce();
        sim.subscribe(sub, "news/#", QoS::AtLeastOnce);
        sim.quiesce();
        sim.unsubscribe(sub, "news/#");
        let mut steps = 0;
        while sim.clients[sub].seen.unsubacks.is_empty() {
            if !sim.step() {
                sim.fail("no UNSUBACK");
            }
            steps += 1;
            if steps > 10_000 {
                sim.fail("no UNSUBACK after 10,000 steps");
            }
        }
        sim.publish(
            publ,
            "news/late",
            QoS::AtLeastOnce,
            false,
            Bytes::from("late"),
        );
        sim.quiesce();
        let seen = &sim.clients[sub].seen;
        if !seen.publishes.is_empty() {
            sim.fail(&format!("got {:?} after its UNSUBACK", seen.publishes));
        }
    }
}

/// A subscriber arrives while a publisher keeps replacing a retained
/// topic: whatever it gets, the last message on the topic is the newest
/// value. The retained answer from the topic's owner could arrive after a
/// newer live message and put the old value last [MQTT-4.6.0-6].
#[test]
fn a_retained_message_never_arrives_after_a_newer_live_one() {
    for seed in seeds(500) {
        let mut sim = Sim::new(seed, 3, ClientLimits::default(), 10_000);
        let publ = sim.add_client("gauge", "p");
        let sub = sim.add_client("dashboard", "q");
        let shard = sim.rng.below(3);
        sim.connect(publ, shard, true, 0);
        let shard = sim.rng.below(3);
        sim.connect(sub, shard, true, 0);
        sim.quiesce();
        sim.publish(publ, "level", QoS::AtLeastOnce, true, Bytes::from("v0"));
        sim.quiesce();
        sim.subscribe(sub, "level", QoS::AtLeastOnce);
        for n in 1..=3 {
            for _ in 0..sim.rng.below(8) {
                sim.step();
            }
            let payload = Bytes::from(format!("v{n}"));
            sim.publish(publ, "level", QoS::AtLeastOnce, true, payload);
        }
        sim.quiesce();
        let got: Vec<&Bytes> = sim.clients[sub]
            .seen
            .publishes
            .iter()
            .map(|p| &p.1)
            .collect();
        if got.is_empty() || got.windows(2).any(|w| w[0] >= w[1]) {
            sim.fail(&format!("the dashboard got {got:?}"));
        }
    }
}

/// Live messages published without RETAIN during a SUBSCRIBE leave the
/// topic's retained message as it was: the subscriber still gets it
/// [MQTT-3.3.1-9] (only a newer retained value may take its place).
#[test]
fn events_without_retain_do_not_hide_the_retained_state() {
    for seed in seeds(300) {
        let mut sim = Sim::new(seed, 3, ClientLimits::default(), 10_000);
        let publ = sim.add_client("device", "p");
        let sub = sim.add_client("viewer", "q");
        let shard = sim.rng.below(3);
        sim.connect(publ, shard, true, 0);
        let shard = sim.rng.below(3);
        sim.connect(sub, shard, true, 0);
        sim.quiesce();
        sim.publish(publ, "dev/1", QoS::AtLeastOnce, true, Bytes::from("state"));
        sim.quiesce();
        sim.subscribe(sub, "dev/1", QoS::AtLeastOnce);
        for n in 0..3 {
            for _ in 0..sim.rng.below(8) {
                sim.step();
            }
            let payload = Bytes::from(format!("event{n}"));
            sim.publish(publ, "dev/1", QoS::AtLeastOnce, false, payload);
        }
        sim.quiesce();
        let seen = &sim.clients[sub].seen.publishes;
        if !seen.iter().any(|p| &p.1[..] == b"state") {
            sim.fail(&format!("no retained state, got {seen:?}"));
        }
    }
}

/// A burst delivered to one subscriber while its writer waits for the
/// readers: every `WAKE_BATCH` (16) deliveries after the first ask the
/// runtime to write at once (`Output::Flush`), so the burst's first
/// messages need not wait for its last read; nothing is lost or reordered.
#[test]
fn a_burst_to_one_subscriber_asks_for_a_write_every_sixteen_deliveries() {
    let mut sim = Sim::new(1, 1, ClientLimits::default(), 10_000);
    let sub = sim.add_client("sink", "q");
    let publ = sim.add_client("burst", "p");
    sim.connect(sub, 0, true, 0);
    sim.connect(publ, 0, true, 0);
    sim.quiesce();
    sim.subscribe(sub, "b/#", QoS::AtMostOnce);
    sim.quiesce();
    for n in 0..40 {
        sim.publish(
            publ,
            "b/t",
            QoS::AtMostOnce,
            false,
            Bytes::from(format!("{n:02}")),
        );
    }
    let (shard, conn) = sim.clients[sub].conn.expect("connected");
    sim.drain(shard);
    // 40 deliveries: one Wake, then a Flush after 16 more, and another.
    assert_eq!(sim.flushes.get(&(shard, conn)), Some(&2));
    sim.quiesce();
    let got: Vec<String> = sim.clients[sub]
        .seen
        .publishes
        .iter()
        .map(|p| String::from_utf8(p.1.to_vec()).unwrap())
        .collect();
    let want: Vec<String> = (0..40).map(|n| format!("{n:02}")).collect();
    assert_eq!(got, want);
}

/// Retained messages published on every shard end up stored once, on the
/// topic's owner, with the last value each publisher sent; a new
/// subscriber on any shard gets them all.
#[test]
fn retained_state_matches_a_single_store() {
    for seed in seeds(1000) {
        let mut sim = Sim::new(seed, 3, ClientLimits::default(), 10_000);
        let pubs: Vec<usize> = (0..3)
            .map(|i| sim.add_client(&format!("rp{i}"), "p"))
            .collect();
        for (i, &p) in pubs.iter().enumerate() {
            sim.connect(p, i, true, 0);
        }
        sim.quiesce();
        let mut last: std::collections::BTreeMap<String, Bytes> = Default::default();
        for n in 0..60 {
            // Each topic has one publisher, so its last value is defined.
            let i = sim.rng.below(3);
            let topic = format!("r/{i}/{}", sim.rng.below(4));
            let payload = if sim.rng.chance(10) {
                Bytes::new()
            } else {
                Bytes::from(format!("v{n}"))
            };
            if payload.is_empty() {
                last.remove(&topic);
            } else {
                last.insert(topic.clone(), payload.clone());
            }
            sim.publish(pubs[i], &topic, QoS::AtLeastOnce, true, payload);
            for _ in 0..sim.rng.below(6) {
                sim.step();
            }
        }
        sim.quiesce();
        let stored: usize = sim.shards.iter().map(|s| s.inventory().retained).sum();
        if stored != last.len() {
            sim.fail(&format!(
                "{stored} retained stored, {} expected",
                last.len()
            ));
        }
        let sub = sim.add_client("late", "q");
        let shard = sim.rng.below(3);
        sim.connect(sub, shard, true, 0);
        sim.quiesce();
        sim.subscribe(sub, "r/#", QoS::AtMostOnce);
        sim.quiesce();
        let mut got: std::collections::BTreeMap<String, Bytes> = Default::default();
        for (topic, payload, _) in &sim.clients[sub].seen.publishes {
            got.insert(topic.clone(), payload.clone());
        }
        if got != last {
            sim.fail(&format!("retained seen {got:?}, expected {last:?}"));
        }
    }
}

/// A filter repeated in one SUBSCRIBE is applied once: its retained
/// messages come once (each copy asked every shard and got them all
/// again), the SUBACK answers every copy, and the index replicas agree.
#[test]
fn a_filter_repeated_in_one_subscribe_brings_its_retained_messages_once() {
    for seed in seeds(200) {
        let mut sim = Sim::new(seed, 3, ClientLimits::default(), 10_000);
        let publisher = sim.add_client("rp", "p");
        sim.connect(publisher, 0, true, 0);
        sim.quiesce();
        for i in 0..4 {
            let payload = Bytes::from(format!("v{i}"));
            sim.publish(
                publisher,
                &format!("r/{i}"),
                QoS::AtLeastOnce,
                true,
                payload,
            );
        }
        sim.quiesce();
        let sub = sim.add_client("sub", "q");
        let shard = sim.rng.below(3);
        sim.connect(sub, shard, true, 0);
        sim.quiesce();
        sim.subscribe_all(sub, &["r/#", "r/+", "r/#", "r/#", "r/+"], QoS::AtMostOnce);
        sim.quiesce();
        let mut got: Vec<&str> = sim.clients[sub]
            .seen
            .publishes
            .iter()
            .map(|(topic, _, _)| topic.as_str())
            .collect();
        got.sort();
        // Once per distinct filter that matches: "r/#" and "r/+".
        let want = ["r/0", "r/0", "r/1", "r/1", "r/2", "r/2", "r/3", "r/3"];
        if got != want {
            sim.fail(&format!("retained seen {got:?}, expected {want:?}"));
        }
        if sim.clients[sub].seen.subacks != 1 {
            sim.fail("one SUBACK expected");
        }
    }
}

/// Retained messages persisted (`persistence.retain: All`) with the disk
/// write racing everything else: a publisher's PUBACK never arrives before
/// its retained value is on disk (or already replaced there by a later one
/// of the same topic), and once quiet the disk holds exactly the retained
/// state, clears included [MQTT-3.3.1-10/-11].
#[test]
fn acknowledged_retained_messages_are_on_disk_first() {
    use shardmq_core::config::{QueuePolicy, RetainPolicy};
    for seed in seeds(300) {
        let mut sim =
            Sim::new_persistent(seed, 3, persistence(RetainPolicy::All, QueuePolicy::None));
        let pubs: Vec<usize> = (0..3)
            .map(|i| sim.add_client(&format!("dp{i}"), "p"))
            .collect();
        for (i, &p) in pubs.iter().enumerate() {
            sim.connect(p, i, true, 0);
        }
        sim.quiesce();
        // Per topic (one publisher each), the payloads in publish order.
        let mut history: std::collections::BTreeMap<String, Vec<Bytes>> = Default::default();
        let mut last: std::collections::BTreeMap<String, Bytes> = Default::default();
        for n in 0..40 {
            let i = sim.rng.below(3);
            let topic = format!("d/{i}/{}", sim.rng.below(3));
            let payload = if sim.rng.chance(15) {
                Bytes::new()
            } else {
                Bytes::from(format!("v{n}"))
            };
            if payload.is_empty() {
                last.remove(&topic);
            } else {
                last.insert(topic.clone(), payload.clone());
            }
            history
                .entry(topic.clone())
                .or_default()
                .push(payload.clone());
            sim.publish(pubs[i], &topic, QoS::AtLeastOnce, true, payload);
            for _ in 0..sim.rng.below(6) {
                sim.step();
                check_acked_on_disk(&sim, &pubs, &history);
            }
        }
        sim.quiesce();
        check_acked_on_disk(&sim, &pubs, &history);
        if sim.disk != last {
            sim.fail(&format!("disk {:?}, expected {last:?}", sim.disk));
        }
    }
}

/// One client's persisted-session epoch in the model below: since its last
/// clean start, with this expiry, the filters it subscribed in order, and
/// the CONNACK / SUBACK counts before the epoch began.
struct Epoch {
    expiry: u32,
    filters: Vec<String>,
    connacks_before: usize,
    subacks_before: usize,
}

/// Persisted sessions (docs/PERSISTENCE.md "Sessions"): clients connect on
/// any shard, subscribe, reconnect elsewhere (the session moves) or start
/// clean with or without expiry, while the disk writes race every other
/// step. At every step: once a client has its CONNACK, the disk holds its
/// session (expiry > 0) or none (expiry 0), and every filter it has a
/// SUBACK for is in the disk's record.
#[test]
fn persisted_session_acknowledgements_follow_the_disk() {
    use shardmq_core::config::{QueuePolicy, RetainPolicy};
    for seed in seeds(300) {
        let mut sim =
            Sim::new_persistent(seed, 3, persistence(RetainPolicy::None, QueuePolicy::All));
        let clients: Vec<usize> = (0..3)
            .map(|i| sim.add_client(&format!("ps{i}"), "p"))
            .collect();
        let mut epochs: Vec<Epoch> = Vec::new();
        for &c in &clients {
            epochs.push(Epoch {
                expiry: 3600,
                filters: Vec::new(),
                connacks_before: 0,
                subacks_before: 0,
            });
            let shard = sim.rng.below(3);
            sim.connect(c, shard, true, 3600);
        }
        for n in 0..30 {
            let i = sim.rng.below(3);
            let c = clients[i];
            match sim.rng.below(6) {
                0 => {
                    // Another shard: the session moves there.
                    sim.quiesce();
                    check_disk_is_memory(&sim);
                    if sim.rng.chance(50) {
                        sim.disconnect(c);
                    } else {
                        sim.drop_conn(c);
                    }
                    let e = &mut epochs[i];
                    let resume = e.expiry > 0;
                    if !resume {
                        e.filters.clear();
                        e.subacks_before = sim.clients[c].seen.subacks;
                    }
                    if resume && sim.rng.chance(30) {
                        // A resume that goes away mid-takeover: the session
                        // may be parked offline without a connection, and
                        // the disk must say so.
                        let shard = sim.rng.below(3);
                        sim.connect(c, shard, false, e.expiry);
                        for _ in 0..sim.rng.below(4) {
                            sim.step();
                        }
                        sim.drop_conn(c);
                        sim.quiesce();
                        check_disk_is_memory(&sim);
                    }
                    let e = &mut epochs[i];
                    e.connacks_before = sim.clients[c].seen.connacks.len();
                    let shard = sim.rng.below(3);
                    sim.connect(c, shard, !resume, e.expiry);
                }
                1 => {
                    sim.quiesce();
                    sim.disconnect(c);
                    let expiry = if sim.rng.chance(30) { 0 } else { 3600 };
                    epochs[i] = Epoch {
                        expiry,
                        filters: Vec::new(),
                        connacks_before: sim.clients[c].seen.connacks.len(),
                        subacks_before: sim.clients[c].seen.subacks,
                    };
                    let shard = sim.rng.below(3);
                    sim.connect(c, shard, true, expiry);
                    if expiry == 0 && sim.rng.chance(50) {
                        // Gone before its CONNACK perhaps, and straight back:
                        // the second CONNACK waits for the first one's
                        // delete too.
                        for _ in 0..sim.rng.below(3) {
                            sim.step();
                        }
                        sim.drop_conn(c);
                        let shard = sim.rng.below(3);
                        sim.connect(c, shard, true, 0);
                    }
                }
                _ => {
                    if sim.clients[c].connected() {
                        let filter = format!("s/{i}/{n}");
                        epochs[i].filters.push(filter.clone());
                        sim.subscribe(c, &filter, QoS::AtLeastOnce);
                    }
                }
            }
            for _ in 0..sim.rng.below(8) {
                sim.step();
                check_sessions_on_disk(&sim, &clients, &epochs);
            }
        }
        sim.quiesce();
        check_sessions_on_disk(&sim, &clients, &epochs);
        check_disk_is_memory(&sim);
        // Clients leave, normally or not: their sessions go offline (or
        // end, for expiry 0), and the disk must say so.
        for &c in &clients {
            if !sim.clients[c].connected() || sim.rng.chance(30) {
                continue;
            }
            if sim.rng.chance(50) {
                sim.disconnect(c);
            } else {
                sim.drop_conn(c);
            }
        }
        sim.quiesce();
        check_disk_is_memory(&sim);
    }
}

/// Once nothing is in flight, the disk holds exactly the persisted sessions
/// in memory: each with its filters, offline exactly when it is offline,
/// and no other (a parked session, a close, an end each wrote theirs).
fn check_disk_is_memory(sim: &Sim) {
    let mut memory = std::collections::BTreeMap::new();
    for shard in &sim.shards {
        for (id, offline, filters) in shard.persistable_sessions() {
            let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
            memory.insert(id.to_string(), (offline, filters));
        }
    }
    for (id, (offline, filters)) in &memory {
        let Some(on_disk) = sim.disk_sessions.get(id) else {
            sim.fail(&format!("{id} is persisted in memory and not on disk"));
        };
        let mut on_disk = on_disk.clone();
        on_disk.sort();
        if &on_disk != filters {
            sim.fail(&format!(
                "{id}: memory has {filters:?}, the disk {on_disk:?}"
            ));
        }
        if sim.disk_offline.get(id) != Some(offline) {
            sim.fail(&format!(
                "{id}: offline in memory {offline}, on disk {:?}",
                sim.disk_offline.get(id)
            ));
        }
    }
    for id in sim.disk_sessions.keys() {
        if !memory.contains_key(id) {
            sim.fail(&format!("{id} is on disk and has no persisted session"));
        }
    }
}

fn check_sessions_on_disk(sim: &Sim, clients: &[usize], epochs: &[Epoch]) {
    for (&c, e) in clients.iter().zip(epochs) {
        let client = &sim.clients[c];
        if client.seen.connacks.len() <= e.connacks_before {
            continue;
        }
        let on_disk = sim.disk_sessions.get(&client.client_id);
        if e.expiry == 0 {
            if on_disk.is_some() {
                sim.fail(&format!(
                    "{} has CONNACK with expiry 0 and a session on disk",
                    client.client_id
                ));
            }
            continue;
        }
        let Some(filters) = on_disk else {
            sim.fail(&format!(
                "{} has its CONNACK and no session on disk",
                client.client_id
            ));
        };
        let acked = client.seen.subacks - e.subacks_before;
        for f in e.filters.iter().take(acked) {
            if !filters.contains(f) {
                sim.fail(&format!(
                    "{} has a SUBACK for {f}, the disk holds {filters:?}",
                    client.client_id
                ));
            }
        }
    }
}

/// Every acknowledged payload is what the disk holds for its topic, or a
/// later publish of that topic already replaced it there.
fn check_acked_on_disk(
    sim: &Sim,
    pubs: &[usize],
    history: &std::collections::BTreeMap<String, Vec<Bytes>>,
) {
    for &p in pubs {
        // A clear's empty payload names no topic; clears are checked by the
        // final disk state.
        for acked in sim.clients[p].seen.acked.iter().filter(|a| !a.is_empty()) {
            let Some((topic, list)) = history
                .iter()
                .find(|(_, list)| list.iter().any(|v| v == acked))
            else {
                continue;
            };
            let at = list.iter().rposition(|v| v == acked).unwrap_or(0);
            let on_disk = sim.disk.get(topic);
            let fine = list[at..].iter().any(|v| {
                if v.is_empty() {
                    on_disk.is_none()
                } else {
                    on_disk == Some(v)
                }
            });
            if !fine {
                sim.fail(&format!(
                    "{topic}: {acked:?} acknowledged but the disk has {on_disk:?}"
                ));
            }
        }
    }
}

/// Queues that spill to the store and sessions that move between shards,
/// then every session ends: every shard's queued-bytes count returns to
/// zero and every stored record was released exactly once (the store
/// panics on a double release).
#[test]
fn memory_and_records_return_to_zero_when_sessions_end() {
    let mut spilled = 0;
    for seed in seeds(500) {
        let mut sim = Sim::new(seed, 3, ClientLimits::default(), 100_000);
        let subs: Vec<usize> = (0..3)
            .map(|i| sim.add_client(&format!("m{i}"), &format!("m{i}")))
            .collect();
        let publisher = sim.add_client("mp", "mp");
        for &s in &subs {
            let shard = sim.rng.below(3);
            sim.connect(s, shard, false, 1000);
        }
        sim.quiesce();
        for &s in &subs {
            sim.subscribe(s, "m/#", QoS::AtLeastOnce);
        }
        sim.connect(publisher, 0, true, 0);
        sim.quiesce();
        for n in 0..150 {
            let roll = sim.rng.below(100);
            if roll < 40 {
                let payload = Bytes::from(format!("payload-{n:04}-{}", "x".repeat(40)));
                sim.publish(publisher, "m/a", QoS::AtLeastOnce, false, payload);
            } else if roll < 50 {
                let s = subs[sim.rng.below(subs.len())];
                if sim.clients[s].connected() {
                    sim.drop_conn(s);
                } else {
                    let shard = sim.rng.below(3);
                    sim.connect(s, shard, false, 1000);
                }
            } else if !sim.step() {
                sim.advance(Duration::from_millis(50));
            }
            sim.check();
        }
        sim.quiesce();
        // Every session ends: a clean start with expiry 0, then DISCONNECT.
        for &s in &subs {
            sim.drop_conn(s);
            sim.quiesce();
            let shard = sim.rng.below(3);
            sim.connect(s, shard, true, 0);
            sim.quiesce();
            sim.disconnect(s);
            sim.quiesce();
        }
        sim.disconnect(publisher);
        sim.quiesce();
        for (i, shard) in sim.shards.iter().enumerate() {
            let inv = shard.inventory();
            let buffer = shard.buffer();
            if inv.memory_bytes != 0
                || buffer.store().map_or(0, |s| s.live()) != 0
                || inv.pending != 0
            {
                sim.fail(&format!(
                    "shard {i} holds {} queued bytes, {} records, {} continuations after every session ended",
                    inv.memory_bytes,
                    buffer.store().map_or(0, |s| s.live()),
                    inv.pending
                ));
            }
            if !inv.online.is_empty() || !inv.offline.is_empty() || inv.client_ids != 0 {
                sim.fail(&format!("shard {i} still holds sessions: {inv:?}"));
            }
            spilled += buffer.store().map_or(0, |s| s.appended);
        }
    }
    assert!(
        spilled > 0,
        "the runs never spilled: the budget is too large"
    );
}

/// Sessions read back at start (`Shard::restore_session`): a restored
/// session is offline on its client id's owner shard with its
/// subscriptions indexed everywhere, so what is published before its client
/// returns is queued; the client resumes it from any shard (Session Present
/// [MQTT-3.2.2-2]) and gets the queue; another principal is still refused
/// the id; only the owner shard may restore it, once.
#[test]
fn a_restored_session_queues_and_resumes_from_any_shard() {
    use shardmq_core::broker::{RestoreError, RestoredSession};
    use shardmq_core::codec::SubscriptionOptions;
    use shardmq_core::session::Subscription;
    use shardmq_core::topic::Filter;
    for seed in seeds(200) {
        let mut sim = Sim::new(seed, 3, ClientLimits::default(), 1 << 20);
        let sub = sim.add_client("restored", "owner");
        let thief = sim.add_client("restored", "someone-else");
        let publisher = sim.add_client("publisher", "p");
        let principal = sim.clients[sub].principal.clone();
        let filter = Filter::parse("plant/#".into()).unwrap();
        let subscription = Subscription {
            filter,
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..SubscriptionOptions::default()
            },
            id: None,
        };
        let restored = RestoredSession {
            client_id: "restored".into(),
            principal,
            expiry_interval: Duration::from_secs(3600),
            expires_at: Some(sim.now + Duration::from_secs(3600)),
            subscriptions: vec![("plant/#".into(), subscription)],
            queue: None,
        };
        let owner = shardmq_core::broker::owner_index("restored", 3);
        let other = (owner + 1) % 3;
        let now = sim.now;
        if sim.shards[other].restore_session(restored.clone(), now) != Err(RestoreError::NotOwner) {
            sim.fail("a shard that does not own the id restored it");
        }
        if sim.restore(restored.clone()).is_err() {
            sim.fail("the owner shard refused the session");
        }
        if sim.restore(restored) != Err(RestoreError::Taken) {
            sim.fail("the id was restored twice");
        }
        // What the runtime does before binding: a barrier on every shard.
        for shard in 0..3 {
            let now = sim.now;
            sim.shards[shard].start_startup_barrier(now);
        }
        sim.quiesce();
        if !sim.shards.iter().all(|s| s.startup_synced()) {
            sim.fail("the start-up barrier did not complete");
        }
        let on = sim.rng.below(3);
        sim.connect(publisher, on, true, 0);
        sim.quiesce();
        for n in 0..5 {
            sim.publish(
                publisher,
                "plant/line1",
                QoS::AtLeastOnce,
                false,
                Bytes::from(format!("m{n}")),
            );
        }
        sim.quiesce();
        // Another principal may not take the id over (sessionTakeover:
        // SamePrincipal, the default).
        let at = sim.rng.below(3);
        sim.connect(thief, at, false, 3600);
        sim.quiesce();
        if sim.clients[thief].seen.connacks.last() != Some(&(false, ReasonCode::NotAuthorized)) {
            sim.fail(&format!("thief got {:?}", sim.clients[thief].seen.connacks));
        }
        let at = sim.rng.below(3);
        sim.connect(sub, at, false, 3600);
        sim.quiesce();
        if sim.clients[sub].seen.connacks.last() != Some(&(true, ReasonCode::Success)) {
            sim.fail(&format!("resume got {:?}", sim.clients[sub].seen.connacks));
        }
        let got: Vec<Bytes> = sim.clients[sub]
            .seen
            .publishes
            .iter()
            .map(|p| p.1.clone())
            .collect();
        let want: Vec<Bytes> = (0..5).map(|n| Bytes::from(format!("m{n}"))).collect();
        if got != want {
            sim.fail(&format!("queued {got:?}, expected {want:?}"));
        }
        sim.check();
    }
}

/// A restored session expires when its deadline passes with its client
/// away, like any offline session [MQTT-3.1.2-23]: a later CONNECT finds none.
#[test]
fn a_restored_session_expires_at_its_deadline() {
    use shardmq_core::broker::RestoredSession;
    for seed in seeds(50) {
        let mut sim = Sim::new(seed, 3, ClientLimits::default(), 1 << 20);
        let c = sim.add_client("late", "owner");
        let restored = RestoredSession {
            client_id: "late".into(),
            principal: sim.clients[c].principal.clone(),
            expiry_interval: Duration::from_secs(10),
            expires_at: Some(sim.now + Duration::from_secs(10)),
            subscriptions: Vec::new(),
            queue: None,
        };
        if sim.restore(restored).is_err() {
            sim.fail("the owner shard refused the session");
        }
        sim.quiesce();
        sim.advance(Duration::from_secs(11));
        sim.quiesce();
        let at = sim.rng.below(3);
        sim.connect(c, at, false, 10);
        sim.quiesce();
        if sim.clients[c].seen.connacks.last() != Some(&(false, ReasonCode::Success)) {
            sim.fail(&format!(
                "after expiry got {:?}",
                sim.clients[c].seen.connacks
            ));
        }
    }
}

/// Queued messages persisted (docs/PERSISTENCE.md "Queued messages"): two
/// subscribers with persisted sessions go offline, come back and move
/// between shards while two publishers send QoS 1 messages and the disk
/// writes (and rewrites) race every other step. At every step: every
/// message a publisher has a PUBACK for is owed on disk to every subscriber
/// that has not received it yet. Whenever quiet: the disk owes exactly what
/// the queues in memory hold. At the end every subscriber got every
/// acknowledged message, in order per publisher.
#[test]
fn acknowledged_messages_for_persisted_sessions_are_on_disk_first() {
    use shardmq_core::config::{QueuePolicy, RetainPolicy};
    for seed in seeds(200) {
        let mut sim =
            Sim::new_persistent(seed, 3, persistence(RetainPolicy::None, QueuePolicy::All));
        let subs: Vec<usize> = (0..2)
            .map(|i| sim.add_client(&format!("qs{i}"), "p"))
            .collect();
        let pubs: Vec<usize> = (0..2)
            .map(|i| sim.add_client(&format!("qp{i}"), "p"))
            .collect();
        for (i, &c) in subs.iter().enumerate() {
            let shard = sim.rng.below(3);
            sim.connect(c, shard, true, 3600);
            sim.quiesce();
            // One at QoS 2: its window (packet ids, PUBREC) is persisted too.
            let qos = if i == 1 {
                QoS::ExactlyOnce
            } else {
                QoS::AtLeastOnce
            };
            sim.subscribe(c, "q/#", qos);
        }
        for (i, &p) in pubs.iter().enumerate() {
            sim.connect(p, i, true, 0);
        }
        sim.quiesce();
        for n in 0..40 {
            match sim.rng.below(6) {
                0 => {
                    // Leaves (normally or not) and comes back, perhaps on
                    // another shard: the session moves, with its queue.
                    let c = subs[sim.rng.below(2)];
                    if sim.clients[c].connected() {
                        if sim.rng.chance(50) {
                            sim.disconnect(c);
                        } else {
                            sim.drop_conn(c);
                        }
                    }
                    let shard = sim.rng.below(3);
                    sim.connect(c, shard, false, 3600);
                }
                1 => {
                    let c = subs[sim.rng.below(2)];
                    if sim.clients[c].connected() {
                        sim.drop_conn(c);
                    }
                }
                _ => {
                    let p = pubs[sim.rng.below(2)];
                    let payload = Bytes::from(format!("m{n}"));
                    let qos = if sim.rng.chance(50) {
                        QoS::ExactlyOnce
                    } else {
                        QoS::AtLeastOnce
                    };
                    sim.publish(p, &format!("q/{n}"), qos, false, payload);
                }
            }
            for _ in 0..sim.rng.below(8) {
                sim.step();
                check_owed_on_disk(&sim, &pubs, &subs);
            }
            if sim.rng.chance(20) {
                sim.quiesce();
                check_queues_disk_is_memory(&mut sim);
            }
        }
        sim.quiesce();
        check_owed_on_disk(&sim, &pubs, &subs);
        check_queues_disk_is_memory(&mut sim);
        for &c in &subs {
            if !sim.clients[c].connected() {
                let shard = sim.rng.below(3);
                sim.connect(c, shard, false, 3600);
            }
        }
        sim.quiesce();
        check_queues_disk_is_memory(&mut sim);
        for &c in &subs {
            let got: Vec<Bytes> = sim.clients[c]
                .seen
                .publishes
                .iter()
                .map(|(_, p, _)| p.clone())
                .collect();
            for &p in &pubs {
                let acked = &sim.clients[p].seen.acked;
                let order: Vec<&Bytes> = got.iter().filter(|m| acked.contains(m)).collect();
                for m in acked {
                    if !got.contains(m) {
                        sim.fail(&format!("client {c} never got acknowledged {m:?}"));
                    }
                }
                let mut first_seen: Vec<&Bytes> = Vec::new();
                for m in order {
                    if !first_seen.contains(&m) {
                        first_seen.push(m);
                    }
                }
                // In publish order (PUBACKs may come in another: one waits
                // for a disk, the next for none).
                let mut expected: Vec<&Bytes> = acked.iter().collect();
                expected.sort_by_key(|m| {
                    std::str::from_utf8(&m[1..])
                        .ok()
                        .and_then(|n| n.parse::<u32>().ok())
                });
                if first_seen != expected {
                    sim.fail(&format!(
                        "client {c}: publisher {p}'s messages out of order: {first_seen:?}, acknowledged {expected:?}"
                    ));
                }
            }
        }
    }
}

/// Every message a publisher has a PUBACK for is owed on disk to each
/// subscriber that has not received it.
fn check_owed_on_disk(sim: &Sim, pubs: &[usize], subs: &[usize]) {
    for &s in subs {
        let client_id = &sim.clients[s].client_id;
        let owed = sim.disk_owed(client_id);
        let got = &sim.clients[s].seen.publishes;
        for &p in pubs {
            for m in &sim.clients[p].seen.acked {
                if !got.iter().any(|(_, g, _)| g == m) && !owed.contains(m) {
                    sim.fail(&format!(
                        "{m:?} is acknowledged, not yet at {client_id} and not on disk for it (queue {:?}, owed {owed:?}, files {:?})",
                        sim.disk_queue_ids.get(client_id), sim.disk_queue_files
                    ));
                }
            }
        }
    }
}

/// A session that moves with its persisted queue and resumes with expiry 0
/// stops being persisted, and its old shard hears that the move settled:
/// it would otherwise defer its log rewrites for good.
#[test]
fn a_resume_with_expiry_zero_settles_the_move() {
    use shardmq_core::config::{QueuePolicy, RetainPolicy};
    for seed in seeds(50) {
        let mut sim =
            Sim::new_persistent(seed, 3, persistence(RetainPolicy::None, QueuePolicy::All));
        let sub = sim.add_client("mover", "p");
        let publ = sim.add_client("feeder", "p");
        sim.connect(sub, 0, true, 3600);
        sim.quiesce();
        sim.subscribe(sub, "z/#", QoS::AtLeastOnce);
        sim.connect(publ, 2, true, 0);
        sim.quiesce();
        sim.drop_conn(sub);
        sim.publish(
            publ,
            "z/1",
            QoS::AtLeastOnce,
            false,
            Bytes::from_static(b"z1"),
        );
        sim.quiesce();
        sim.connect(sub, 1, false, 0);
        sim.quiesce();
        if sim.clients[sub].seen.connacks.last().map(|c| c.0) != Some(true) {
            sim.fail("the session was not resumed");
        }
        for (i, shard) in sim.shards.iter().enumerate() {
            if shard.persist_rewrite_deferred() {
                sim.fail(&format!("shard {i} still defers its rewrites"));
            }
        }
    }
}

/// Quiet: the disk owes each persisted session exactly what its queue in
/// memory holds, in the same order, and no shard defers its rewrites (every
/// move settled).
fn check_queues_disk_is_memory(sim: &mut Sim) {
    for (i, shard) in sim.shards.iter().enumerate() {
        if shard.persist_rewrite_deferred() {
            sim.fail(&format!(
                "shard {i} defers its rewrites with nothing moving"
            ));
        }
    }
    let mut memory = std::collections::BTreeMap::new();
    for shard in &mut sim.shards {
        for (id, payloads) in shard.persisted_queues() {
            memory.insert(id.to_string(), payloads);
        }
    }
    for (id, payloads) in &memory {
        let on_disk = sim.disk_owed(id);
        if &on_disk != payloads {
            sim.fail(&format!(
                "{id}: memory owes {payloads:?}, the disk {on_disk:?}"
            ));
        }
    }
}

/// A persistence policy for the simulator (nothing here reads its paths).
fn persistence(
    retain: shardmq_core::config::RetainPolicy,
    queues: shardmq_core::config::QueuePolicy,
) -> shardmq_core::config::Persistence {
    shardmq_core::config::Persistence {
        size_max_bytes: std::num::NonZeroU64::new(1 << 30).unwrap(),
        encrypt: true,
        retain,
        queues,
        dynamic: None,
        data_dir: None,
        key_file: None,
    }
}
