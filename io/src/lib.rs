//! shardmq-io: the only crate that knows glommio, sockets, CPUs and files.
//! `server` starts the shards, `shard` owns one core's state and routing,
//! `connection` serves one client, `mesh` is what shards say to each other.

pub mod buffer;
pub mod cli;
pub mod connection;
pub mod mesh;
pub mod security;
pub mod server;
pub mod shard;
pub mod spill;
mod trim;

pub use security::ListenerSecurity;
pub use server::{start, ListenerSpec, ServerConfig, ServerError, ServerHandle};
