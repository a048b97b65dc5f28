//! shardmq-io: the only crate that knows glommio, sockets, CPUs and files.
//! `server` starts the shards, `shard` owns one core's state and routing,
//! `connection` serves one client, `mesh` is what shards say to each other,
//! `oplog` bounds what clients can make the log say.

pub mod buffer;
pub mod cli;
pub mod connection;
pub mod logging;
pub mod mesh;
pub mod oplog;
pub mod security;
pub mod server;
pub mod shard;
pub mod spill;

pub use security::ListenerSecurity;
pub use server::{start, ListenerSpec, ServerConfig, ServerError, ServerHandle};
