//! shardmq-core: everything the broker knows about MQTT 3.1.1 and 5.0, with no
//! sockets, threads or clock reads. The `io` crate drives these types from
//! sockets; tests drive them on a fake clock.

pub mod broker;
pub mod buffer;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod limits;
pub mod retained;
pub mod session;
pub mod topic;
