//! What a shard asks of its runtime: wake a connection's writer, close a
//! socket, authenticate a CONNECT, send mesh messages, write a log line.
//! The runtime drains these after every `handle_*` call and acts on each;
//! nothing here is an instruction the shard waits on, except the answers to
//! `Authenticate` and `ReAuthenticate`.

use std::time::Instant;

use bytes::Bytes;
use bytestring::ByteString;

use super::ids::{ConnId, ShardId};
use super::registry::PrincipalId;
use crate::codec::ReasonCode;
use crate::session::{CloseReason, ConnectRequest, Denied, Permissions};

/// One thing for the runtime to do.
#[derive(Debug)]
pub enum Output {
    /// The connection has something to send: run its writer
    /// (`Shard::poll_transmit`). At most one is pending per connection.
    Wake(ConnId),
    /// The connection's writer, woken and not yet run, has gathered a
    /// batch: write it now if the runtime can, rather than after every
    /// other ready task. Follows a `Wake`; ignoring it is correct.
    Flush(ConnId),
    /// The connection is over: stop reading it, let its writer flush what
    /// `poll_transmit` still has (bounded), close the socket, then
    /// `Shard::release`.
    Close(ConnId),
    /// Decide this CONNECT (authentication, authorization) and answer with
    /// `Shard::handle_admitted`. `request.client_id` is the one to use
    /// (assigned by the broker when the client sent none).
    Authenticate {
        conn: ConnId,
        request: ConnectRequest,
    },
    /// Re-authentication (AUTH 0x19): answer with
    /// `Shard::handle_reauthenticated`.
    ReAuthenticate {
        conn: ConnId,
        method: ByteString,
        data: Option<Bytes>,
    },
    /// The mesh queue to `ShardId` went from empty to not empty: drain it
    /// with `Shard::poll_mesh`.
    Mesh(ShardId),
    /// Cluster links have work: messages for a peer node
    /// (`Shard::poll_cluster`) or route changes (`Shard::poll_route_delta`).
    Cluster,
    /// Changes to persist went from none to some: write them with
    /// `Shard::poll_persist`, then report `Shard::handle_persisted`.
    Persist,
    /// Something the operator should see in the log.
    Notice(Notice),
}

/// A log-worthy event, with what identifies it. The runtime decides the
/// level and any rate limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A client's session is in place (CONNACK Success sent).
    Connected {
        conn: ConnId,
        client_id: ByteString,
        principal: PrincipalId,
        session_present: bool,
    },
    /// A CONNECT was refused after authentication: the id's session
    /// belongs to another principal (`sessionTakeover`).
    TakeoverRefused {
        conn: ConnId,
        client_id: ByteString,
        principal: PrincipalId,
    },
    /// Resumed subscriptions the resuming client may not hold, removed.
    SubscriptionsRevoked {
        conn: ConnId,
        client_id: ByteString,
        filters: Vec<ByteString>,
    },
    /// A connection that had a session ended.
    Disconnected {
        conn: ConnId,
        client_id: ByteString,
        reason: CloseReason,
    },
    /// The client's permissions refused a PUBLISH or a SUBSCRIBE filter (the
    /// client already has its answer).
    Denied {
        conn: ConnId,
        client_id: ByteString,
        denied: Denied,
    },
    /// A retained message was refused by its owner shard.
    RetainedRefused {
        topic: ByteString,
        bytes: u64,
        stored_bytes: u64,
        refused: u64,
        reason: ReasonCode,
    },
    /// A peer's (or the disk's) retained stamp is more than
    /// `cluster::clock::DRIFT_MAX` ahead of this node's clock: some node's
    /// wall clock is wrong. The first, then one per 1,024 (`count`).
    RetainedStampAhead { stamp: u64, count: u64 },
    /// A connection was closed for holding the most of the shard's budget
    /// for partial packets (`bytes` of one not yet received).
    PartialPacketClosed {
        conn: ConnId,
        client_id: ByteString,
        bytes: u64,
        shard_max: u64,
    },
    /// A self-test round ended; `missing` are the shards that did not answer.
    SelfTest { seq: u64, missing: Vec<ShardId> },
}

/// The runtime's answer to `Output::Authenticate` when it admits the client.
#[derive(Debug)]
pub struct Admission {
    /// What this client may publish and subscribe to.
    pub permissions: Box<dyn Permissions>,
    /// Who it is, for binding its session (`sessionTakeover`).
    pub principal: PrincipalId,
    /// When its credential expires: the connection is closed then.
    pub expires_at: Option<Instant>,
    /// In a cluster: the registry's number for this CONNECT's claim of its
    /// client id; the session's end releases that claim only.
    pub cluster_claim: Option<u64>,
}
