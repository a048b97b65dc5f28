//! What one shard decides for many connections, as sans-io state machines
//! the io crate drives (quinn-proto's `Endpoint` to the session's
//! `Connection`). No sockets, no threads, no clock reads.

pub mod registry;

pub use registry::{Answer, Claim, Decision, PrincipalId, Registry};
