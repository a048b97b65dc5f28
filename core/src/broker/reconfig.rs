//! Live reconfiguration (SIGHUP) as the shard sees it: new client limits
//! for new connections, one connection closed with a reason (its listener
//! was removed or its security changed), and a connection's permissions
//! replaced, with the subscriptions the new ones refuse revoked the way a
//! resumed session's are at CONNECT.

use std::sync::Arc;
use std::time::Instant;

use bytestring::ByteString;

use super::{ConnId, Notice, Shard, ShardConfig};
use crate::buffer::Store;
use crate::codec::ReasonCode;
use crate::limits::ClientLimits;
use crate::session::Permissions;
use crate::topic::Filter;

impl<S: Store> Shard<S> {
    /// Limits for connections accepted from now on; connections already
    /// open keep the limits they announced in their CONNACK.
    pub fn set_limits(&mut self, limits: Arc<ClientLimits>) {
        let config = ShardConfig {
            limits,
            ..(*self.config).clone()
        };
        self.config = Arc::new(config);
    }

    /// Closes one connection from the broker's side: DISCONNECT with
    /// `reason` to a v5 client that completed CONNECT, the socket closed
    /// otherwise; its session is kept or ended as its expiry says.
    pub fn disconnect(&mut self, conn: ConnId, now: Instant, reason: ReasonCode) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.machine.close(reason);
        self.process_events(conn, now);
        self.wake(conn);
    }

    /// Gives a connected client new permissions. Its subscriptions the new
    /// ones refuse are removed from its session and from every replica of
    /// the index (no message matching only them is delivered once this
    /// returns); the client is not told (MQTT has no packet for it), the
    /// operator is (`Notice::SubscriptionsRevoked`). Returns the removed
    /// filters as the client sent them.
    pub fn replace_permissions(
        &mut self,
        conn: ConnId,
        permissions: Box<dyn Permissions>,
    ) -> Vec<ByteString> {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Vec::new();
        };
        let revoked = c.machine.replace_permissions(permissions);
        if revoked.is_empty() {
            return revoked;
        }
        let client_id = c.machine.client_id().cloned().unwrap_or_default();
        for raw in &revoked {
            if let Ok(filter) = Filter::parse(raw.clone()) {
                self.unsubscribed(conn, raw, &filter);
            }
        }
        self.notice(Notice::SubscriptionsRevoked {
            conn,
            client_id,
            filters: revoked.clone(),
        });
        revoked
    }
}
