//! shardmq's `cluster` section (docs/CLUSTER.md, docs/CONFIG.md): this
//! node's name and internal address, its static peers, and the cluster CA
//! the node links' certificates come from. The raw shape, its validation
//! and the typed result; a node's id is derived from its name here so every
//! node derives the same one.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::Report;
use super::validate::{path, required};
use crate::cluster::NodeId;

/// Nodes in one cluster at most (this node and its peers).
pub const CLUSTER_NODES_MAX: usize = 32;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawCluster {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<RawPeer>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_cert_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_key_file: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawPeer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// `cluster`: this node and how it reaches the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub node: ClusterNode,
    /// Every other node; names and ids unique, never this node.
    pub peers: Vec<ClusterNode>,
    /// The cluster CA (`caCertFile`, `caKeyFile`) each node issues its own
    /// link certificate from; `None` only with `encryptInternalTraffic`
    /// Disabled.
    pub ca: Option<CaFiles>,
}

/// One node: its name (a DNS name, in its link certificate), the id every
/// node derives from it, and its internal address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    pub name: String,
    pub id: NodeId,
    pub address: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The id every node derives from a node name (FNV-1a, folded to 32 bits).
pub fn node_id(name: &str) -> NodeId {
    let h = crate::broker::hash_of(name);
    NodeId((h ^ (h >> 32)) as u32)
}

/// A node name goes into certificates as a DNS name: lowercase letters,
/// digits, `-` and `.`, 1 to 63 characters, starting with a letter or digit.
fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
}

fn node(
    report: &mut Report,
    at: &str,
    name: Option<&str>,
    address: Option<&str>,
) -> Option<ClusterNode> {
    let name = required(report, format!("{at}.node"), name)?;
    if !valid_name(name) {
        report.error(
            format!("{at}.node"),
            format!("\"{name}\" is not a node name: 1 to 63 lowercase letters, digits, '-' or '.', starting with a letter or digit"),
        );
        return None;
    }
    let text = required(report, format!("{at}.address"), address)?;
    let Ok(address) = text.parse::<SocketAddr>() else {
        report.error(
            format!("{at}.address"),
            format!("\"{text}\" is not an IP address and port (e.g. 127.0.0.2:7883)"),
        );
        return None;
    };
    if address.port() == 0 || address.port() == u16::MAX {
        report.error(
            format!("{at}.address"),
            "needs a fixed port below 65535: peers dial it, every shard binds it, and the control plane uses the next one",
        );
        return None;
    }
    Some(ClusterNode {
        name: name.to_owned(),
        id: node_id(name),
        address,
    })
}

pub(crate) fn cluster(raw: &RawCluster, encrypt: bool, report: &mut Report) -> Option<Cluster> {
    let me = node(
        report,
        "cluster",
        raw.node.as_deref(),
        raw.address.as_deref(),
    );
    let mut peers = Vec::new();
    let raw_peers = raw.peers.as_deref().unwrap_or_default();
    if raw_peers.is_empty() {
        report.error("cluster.peers", "a cluster needs at least one peer");
    }
    if raw_peers.len() + 1 > CLUSTER_NODES_MAX {
        report.error(
            "cluster.peers",
            format!("at most {} peers", CLUSTER_NODES_MAX - 1),
        );
    }
    for (i, p) in raw_peers.iter().enumerate() {
        let at = format!("cluster.peers[{i}]");
        let Some(peer) = node(report, &at, p.node.as_deref(), p.address.as_deref()) else {
            continue;
        };
        let clash = me
            .iter()
            .chain(peers.iter())
            .find(|n: &&ClusterNode| n.name == peer.name || n.id == peer.id);
        if let Some(other) = clash {
            let why = if other.name == peer.name {
                "names a node twice".to_owned()
            } else {
                format!(
                    "\"{}\" and \"{}\" derive the same node id: rename one",
                    other.name, peer.name
                )
            };
            report.error(format!("{at}.node"), why);
            continue;
        }
        peers.push(peer);
    }
    let cert = raw
        .ca_cert_file
        .as_deref()
        .and_then(|t| path(report, "cluster.caCertFile", t));
    let key = raw
        .ca_key_file
        .as_deref()
        .and_then(|t| path(report, "cluster.caKeyFile", t));
    let ca = match (cert, key) {
        (Some(cert), Some(key)) => Some(CaFiles { cert, key }),
        (None, None) if !encrypt => None,
        (None, None) => {
            report.error(
                "cluster.caCertFile",
                "required with advanced.encryptInternalTraffic Enabled: node links are mutual TLS under the cluster's CA (shardmq cluster-ca <dir> makes one)",
            );
            None
        }
        (Some(_), None) => {
            report.error("cluster.caKeyFile", "required with caCertFile");
            None
        }
        (None, Some(_)) => {
            report.error("cluster.caCertFile", "required with caKeyFile");
            None
        }
    };
    if ca.is_some() && !encrypt {
        report.warn(
            "cluster.caCertFile",
            "ignored: advanced.encryptInternalTraffic is Disabled, node links are plaintext",
        );
    }
    Some(Cluster {
        node: me?,
        peers,
        ca: ca.filter(|_| encrypt),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_dns_names() {
        assert!(valid_name("node-1"));
        assert!(valid_name("ipc7.plant.local"));
        assert!(!valid_name(""));
        assert!(!valid_name("Node1"));
        assert!(!valid_name("-a"));
        assert!(!valid_name("a b"));
        assert!(!valid_name(&"a".repeat(64)));
    }

    #[test]
    fn node_ids_are_the_same_everywhere() {
        assert_eq!(node_id("node1"), node_id("node1"));
        assert_ne!(node_id("node1"), node_id("node2"));
    }
}
