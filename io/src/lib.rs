//! shardmq-io: the only crate that knows glommio, sockets, CPUs and files.
//! It drives the sans-io `shardmq_core::broker::Shard`: `server` starts one
//! executor per shard, `shard` runs one (mesh, listeners, ticks), `driver`
//! turns the shard's outputs into actions, `conn` moves one client's bytes,
//! `setup` is what shards start from, `buffer` is the disk buffer's files,
//! `oplog` bounds what clients can make the log say, `telemetry` is what the
//! operator sees (metrics, health, `$SYS`), `reload` applies a new config on
//! SIGHUP.

pub mod buffer;
pub mod cli;
pub mod cluster;
pub mod conn;
pub mod driver;
pub mod logging;
pub mod oplog;
pub mod persist;
pub mod reload;
pub mod security;
pub mod server;
pub mod setup;
pub mod shard;
pub mod telemetry;
mod trim;
mod webhook_pool;

pub use security::ListenerSecurity;
pub use server::{start, ListenerSpec, ServerConfig, ServerError, ServerHandle};
