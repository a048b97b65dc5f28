//! The control plane's Raft types: what the log holds (registry commands)
//! and what applying one answers.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// A change of the cluster-wide client-id registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// `node` accepted a CONNECT for `client_id` from `principal`; with
    /// `any_principal` (sessionTakeover AnyPrincipal) another principal's
    /// hold does not stop it.
    Claim {
        client_id: String,
        node: u32,
        principal: String,
        any_principal: bool,
        /// Unique per attempt on `node`: an `Abandon` names it.
        #[serde(default)]
        nonce: u64,
    },
    /// `node` gave up waiting for its claim `nonce` (it refused that
    /// CONNECT with Server unavailable): the claim is undone if it was
    /// applied and still holds, and refused if it is applied later.
    Abandon {
        client_id: String,
        node: u32,
        nonce: u64,
    },
    /// `node`'s session for `client_id`, held under claim `claim` (the log
    /// index of that claim), ended.
    /// `claim` 0: whatever claim this node holds it under (a session
    /// restored from disk knows none).
    Release {
        client_id: String,
        node: u32,
        #[serde(default)]
        claim: u64,
    },
}

impl Command {
    /// The node the command is for.
    pub fn node(&self) -> u64 {
        match self {
            Command::Claim { node, .. }
            | Command::Release { node, .. }
            | Command::Abandon { node, .. } => u64::from(*node),
        }
    }
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The id is the claimant's; `previous` held it before (that node
    /// ends its session).
    Granted {
        previous: Option<u32>,
        claim: u64,
    },
    /// Another principal holds the id (sessionTakeover SamePrincipal).
    Refused,
    Released,
}

/// Who holds a client id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub node: u32,
    pub principal: String,
    /// The log index of the claim that made this node the holder.
    #[serde(default)]
    pub claim: u64,
    /// That claim's nonce (0: none, written before nonces existed).
    #[serde(default)]
    pub nonce: u64,
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Command,
        R = Reply,
        NodeId = u64,
        Node = openraft::BasicNode,
);
