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

/// Nodes in one cluster at most.
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
    /// This node's name; `None`: the machine's host name (a StatefulSet
    /// pod's name), resolved by the server.
    pub node: Option<String>,
    /// Where this node accepts node links (`address`); the control plane
    /// binds the next port.
    pub bind: SocketAddr,
    /// The cluster's nodes as listed; names and ids unique. The list may
    /// hold this node too (one list for every node): the server skips it.
    pub peers: Vec<ClusterNode>,
    /// The cluster CA (`caCertFile`, `caKeyFile`) each node issues its own
    /// link certificate from; `None` only with `encryptInternalTraffic`
    /// Disabled.
    pub ca: Option<CaFiles>,
}

/// One node: its name (a DNS name, in its link certificate), the id every
/// node derives from it, and where its internal port is (a host name or an
/// IP address, resolved when dialled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    pub name: String,
    pub id: NodeId,
    pub host: String,
    pub port: u16,
}

impl ClusterNode {
    /// `host:port` (brackets around an IPv6 address).
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The same node's control port (the internal port + 1).
    pub fn control_address(&self) -> String {
        let mut n = self.clone();
        n.port = n.port.wrapping_add(1);
        n.address()
    }
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
pub fn valid_node_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
}

const NAME_RULE: &str =
    "1 to 63 lowercase letters, digits, '-' or '.', starting with a letter or digit";

fn name(report: &mut Report, path: String, text: &str) -> Option<String> {
    if valid_node_name(text) {
        Some(text.to_owned())
    } else {
        report.error(path, format!("\"{text}\" is not a node name: {NAME_RULE}"));
        None
    }
}

/// The control plane takes the port after the internal one.
fn port_ok(report: &mut Report, path: &str, port: u16) -> bool {
    if port == 0 || port == u16::MAX {
        report.error(
            path,
            "needs a fixed port below 65535: peers dial it, every shard binds it, and the control plane uses the next one",
        );
        return false;
    }
    true
}

fn peer(report: &mut Report, at: &str, raw: &RawPeer) -> Option<ClusterNode> {
    let name = required(report, format!("{at}.node"), raw.node.as_deref())
        .and_then(|n| name(report, format!("{at}.node"), n));
    let path = format!("{at}.address");
    let text = required(report, path.clone(), raw.address.as_deref())?;
    let parsed = text
        .parse::<SocketAddr>()
        .ok()
        .map(|a| (a.ip().to_string(), a.port()))
        .or_else(|| {
            let (host, port) = text.rsplit_once(':')?;
            let port = port.parse::<u16>().ok()?;
            (!host.is_empty() && !host.contains(':')).then(|| (host.to_owned(), port))
        });
    let Some((host, port)) = parsed else {
        report.error(
            path,
            format!("\"{text}\" is not HOST:PORT (a DNS name or an IP address, e.g. shardmq-1.shardmq-internal:7883)"),
        );
        return None;
    };
    if !port_ok(report, &path, port) {
        return None;
    }
    let name = name?;
    Some(ClusterNode {
        id: node_id(&name),
        name,
        host,
        port,
    })
}

pub(crate) fn cluster(raw: &RawCluster, encrypt: bool, report: &mut Report) -> Option<Cluster> {
    let node = raw
        .node
        .as_deref()
        .and_then(|n| name(report, "cluster.node".to_owned(), n));
    let bind =
        required(report, "cluster.address", raw.address.as_deref()).and_then(|text| match text
            .parse::<SocketAddr>(
        ) {
            Ok(a) if port_ok(report, "cluster.address", a.port()) => Some(a),
            Ok(_) => None,
            Err(_) => {
                report.error(
                    "cluster.address",
                    format!("\"{text}\" is not an IP address and port to bind (e.g. 0.0.0.0:7883)"),
                );
                None
            }
        });
    let mut peers: Vec<ClusterNode> = Vec::new();
    let raw_peers = raw.peers.as_deref().unwrap_or_default();
    if raw_peers.is_empty() {
        report.error("cluster.peers", "a cluster needs at least one peer");
    }
    if raw_peers.len() > CLUSTER_NODES_MAX {
        report.error(
            "cluster.peers",
            format!("at most {CLUSTER_NODES_MAX} nodes"),
        );
    }
    for (i, p) in raw_peers.iter().enumerate() {
        let at = format!("cluster.peers[{i}]");
        let Some(peer) = peer(report, &at, p) else {
            continue;
        };
        if let Some(other) = peers
            .iter()
            .find(|n| n.name == peer.name || n.id == peer.id)
        {
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
                "required with advanced.encryptInternalTraffic Enabled: node links are mutual TLS under the cluster's CA (shardmq --make-cluster-ca DIR makes one)",
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
        node,
        bind: bind?,
        peers,
        ca: ca.filter(|_| encrypt),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_dns_names() {
        assert!(valid_node_name("node-1"));
        assert!(valid_node_name("ipc7.plant.local"));
        assert!(!valid_node_name(""));
        assert!(!valid_node_name("Node1"));
        assert!(!valid_node_name("-a"));
        assert!(!valid_node_name("a b"));
        assert!(!valid_node_name(&"a".repeat(64)));
    }

    #[test]
    fn node_ids_are_the_same_everywhere() {
        assert_eq!(node_id("node1"), node_id("node1"));
        assert_ne!(node_id("node1"), node_id("node2"));
    }
}
