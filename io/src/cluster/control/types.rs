//! The control plane's Raft types: what the log holds (registry commands)
//! and what applying one answers.

use std::io::Cursor;

pub use shardmq_core::cluster::registry::{Command, Reply};

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Command,
        R = Reply,
        NodeId = u64,
        Node = openraft::BasicNode,
);
