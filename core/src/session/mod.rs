//! Session state machines: [`Connection`] (one network connection's protocol
//! state, quinn-proto style) and [`SessionState`] (what outlives it). No I/O,
//! no clock reads: every input carries `now`.

mod connection;
mod message;
mod persist;
mod queue;
mod state;

pub use crate::topic::Delivery;
pub use connection::{
    CloseReason, ConnectRequest, Connection, Denied, Event, PendingWill, PublishAck, Violation,
    CONNECT_TIMEOUT,
};
pub use message::{Message, SharedMessage};
pub use persist::{QueueLog, QueueOps, QueuedMessage, Sent};
pub use queue::Enqueued;
pub use state::{SessionState, SessionStats, Subscription};

use crate::topic::{Filter, TopicName};

/// What one authenticated client may do, compiled at CONNECT by the
/// authorization layer so each check is a lookup, not a rule scan.
pub trait Permissions: std::fmt::Debug {
    fn can_publish(&self, topic: &TopicName) -> bool;
    fn can_subscribe(&self, filter: &Filter) -> bool;
}

/// No authorization policy: everything is allowed.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Permissions for AllowAll {
    fn can_publish(&self, _: &TopicName) -> bool {
        true
    }
    fn can_subscribe(&self, _: &Filter) -> bool {
        true
    }
}
