//! The subscription index: replicated on every shard, so each routes a
//! PUBLISH without asking anyone. A shard changes its own sessions' entries
//! and broadcasts each change (`SubAdd` / `SubRemove`); peers apply them in
//! the order sent. Also what each of this shard's sessions has indexed, so a
//! session leaving the shard takes exactly its entries out everywhere.

use bytestring::ByteString;
use hashbrown::HashMap;

use super::moves::{Deferred, MovedEntry};
use super::selftest::PROBE_SESSION;
use super::{ConnId, MeshMsg, SessionId, Shard, ShardId, SubKey, SubVal, SELFTEST_PREFIX};
use crate::buffer::Store;
use crate::codec::{SubscriptionId, SubscriptionOptions};
use crate::session::Subscription;
use crate::topic::{Filter, SubscriptionTrie, TopicFilter};

#[derive(Debug, Default)]
pub(super) struct Index {
    pub trie: SubscriptionTrie<SubKey, SubVal>,
    /// What each session of this shard has in the index, by raw filter.
    indexed: HashMap<SessionId, HashMap<ByteString, Filter>>,
}

impl Index {
    pub fn len(&self) -> usize {
        self.trie.len()
    }
}

impl<S: Store> Shard<S> {
    fn sub_key(&self, session: SessionId, filter: &Filter) -> SubKey {
        SubKey {
            shard: self.id,
            session,
            group: match filter {
                Filter::Shared { group, .. } => Some(group.clone()),
                Filter::Plain(_) => None,
            },
        }
    }

    /// Indexes one subscription of a session of this shard, everywhere.
    pub(super) fn index_add(
        &mut self,
        session: SessionId,
        client_id: &ByteString,
        raw: &ByteString,
        filter: &Filter,
        options: SubscriptionOptions,
        id: Option<SubscriptionId>,
    ) {
        let key = self.sub_key(session, filter);
        let val = SubVal {
            options,
            id,
            client_id: client_id.clone(),
            filter: raw.clone(),
        };
        let tf = filter.topic_filter().clone();
        self.index
            .indexed
            .entry(session)
            .or_default()
            .insert(raw.clone(), filter.clone());
        if self
            .index
            .trie
            .insert(&tf, key.clone(), val.clone())
            .is_none()
        {
            self.route_added(&tf, key.group.as_ref());
        }
        let op = Deferred::Add {
            filter: tf,
            key,
            val,
        };
        if let Some(Deferred::Add { filter, key, val }) = self.defer_index(session, op) {
            self.broadcast_add(&filter, &key, &val);
        }
    }

    pub(super) fn broadcast_add(&mut self, filter: &TopicFilter, key: &SubKey, val: &SubVal) {
        for peer in self.peers() {
            self.post(
                peer,
                MeshMsg::SubAdd {
                    filter: filter.clone(),
                    key: key.clone(),
                    val: val.clone(),
                },
            );
        }
    }

    pub(super) fn broadcast_remove(&mut self, filter: &TopicFilter, key: &SubKey) {
        for peer in self.peers() {
            self.post(
                peer,
                MeshMsg::SubRemove {
                    filter: filter.clone(),
                    key: key.clone(),
                },
            );
        }
    }

    /// A session arriving by a move: its entries are already in every
    /// replica under its key (`Moved`); record them as this session's.
    pub(super) fn index_adopt(&mut self, session: SessionId, subs: &[(ByteString, Filter)]) {
        let indexed = self.index.indexed.entry(session).or_default();
        for (raw, filter) in subs {
            indexed.insert(raw.clone(), filter.clone());
        }
    }

    /// The entries of a session of this shard, for `Moved`; the session
    /// stops owning them here.
    pub(super) fn index_entries_of(&mut self, session: SessionId) -> Vec<MovedEntry> {
        let filters = self.index.indexed.remove(&session).unwrap_or_default();
        let mut entries = Vec::with_capacity(filters.len());
        for filter in filters.values() {
            let key = self.sub_key(session, filter);
            let tf = filter.topic_filter();
            if let Some(val) = self.index.trie.get(tf, &key) {
                entries.push((tf.clone(), key.group.clone(), val.clone()));
            }
        }
        entries
    }

    /// `Event::Subscribed`: the connection's session took a subscription.
    pub(super) fn subscribed(&mut self, conn: ConnId, raw: &ByteString, sub: &Subscription) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let (Some(session), Some(client_id)) = (c.session, c.machine.client_id().cloned()) else {
            return;
        };
        self.index_add(session, &client_id, raw, &sub.filter, sub.options, sub.id);
    }

    /// `Event::Unsubscribed`: one subscription goes (UNSUBSCRIBE).
    pub(super) fn unsubscribed(&mut self, conn: ConnId, raw: &ByteString, filter: &Filter) {
        let Some(session) = self.conns.get(&conn).and_then(|c| c.session) else {
            return;
        };
        if let Some(m) = self.index.indexed.get_mut(&session) {
            m.remove(raw);
        }
        self.index_remove(session, filter);
    }

    pub(super) fn index_remove(&mut self, session: SessionId, filter: &Filter) {
        let key = self.sub_key(session, filter);
        let tf = filter.topic_filter().clone();
        if self.index.trie.remove(&tf, &key).is_some() {
            self.route_removed(&tf, key.group.as_ref());
        }
        let op = Deferred::Remove { filter: tf, key };
        if let Some(Deferred::Remove { filter, key }) = self.defer_index(session, op) {
            self.broadcast_remove(&filter, &key);
        }
    }

    /// Removes every subscription indexed for a session of this shard.
    pub(super) fn unindex_session(&mut self, session: SessionId) {
        let filters = self.index.indexed.remove(&session).unwrap_or_default();
        for filter in filters.into_values() {
            self.index_remove(session, &filter);
        }
    }

    /// A peer's index delta.
    pub(super) fn apply_sub_add(&mut self, filter: &TopicFilter, key: SubKey, val: SubVal) {
        let group = key.group.clone();
        if self.index.trie.insert(filter, key, val).is_none() {
            self.route_added(filter, group.as_ref());
        }
    }

    pub(super) fn apply_sub_remove(&mut self, filter: &TopicFilter, key: &SubKey) {
        if self.index.trie.remove(filter, key).is_some() {
            self.route_removed(filter, key.group.as_ref());
        }
    }

    /// Every shard's built-in self-test subscriber, in this replica. Each
    /// shard installs all of them at start-up (deterministic, so no delta
    /// crosses the mesh).
    pub(super) fn install_probe_subscribers(&mut self) {
        for shard in ShardId::all(self.config.shards) {
            let Ok(filter) = TopicFilter::new(format!("{SELFTEST_PREFIX}/{shard}").into()) else {
                continue;
            };
            let key = SubKey {
                shard,
                session: PROBE_SESSION,
                group: None,
            };
            let val = SubVal {
                options: SubscriptionOptions::default(),
                id: None,
                client_id: ByteString::new(),
                filter: filter.as_byte_string().clone(),
            };
            self.index.trie.insert(&filter, key, val);
        }
    }
}
