//! The cluster's client-id registry as a replicated state machine
//! (docs/CLUSTER.md): the commands a node commits through consensus (io
//! runs them through openraft), what applying one answers, and which of a
//! node's sessions end because another node took their id. Pure, so the
//! deterministic simulator runs the same code as the broker.

use std::collections::{BTreeMap, VecDeque};

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

/// Abandoned claims remembered. A claim is abandoned after the claim
/// timeout and commits within seconds if at all; this many cover a storm
/// of refused CONNECTs during a long partition.
pub const ABANDONED_MAX: usize = 65_536;

/// Who holds each client id, as the commands applied so far say.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    holders: BTreeMap<String, Holder>,
    /// The latest abandoned claims (node, nonce), so that one applied after
    /// its `Abandon` is refused; bounded by `ABANDONED_MAX`.
    #[serde(default)]
    abandoned: VecDeque<(u32, u64)>,
}

impl Registry {
    /// Who holds `client_id`.
    pub fn holder(&self, client_id: &str) -> Option<&Holder> {
        self.holders.get(client_id)
    }

    /// Every held id.
    pub fn holders(&self) -> impl Iterator<Item = (&String, &Holder)> {
        self.holders.iter()
    }

    /// Applies the command at log index `index` on node `me`: what the
    /// claimant is told, and the id this node's session must end, with
    /// the claim that took it (another node took an id this node held: a
    /// takeover across nodes).
    pub fn apply_on(
        &mut self,
        me: u32,
        cmd: &Command,
        index: u64,
    ) -> (Reply, Option<(String, u64)>) {
        let before = match cmd {
            Command::Claim { client_id, .. } => self.holders.get(client_id).map(|h| h.node),
            Command::Release { .. } | Command::Abandon { .. } => None,
        };
        let reply = self.apply(cmd, index);
        let evict = match (cmd, &reply) {
            (
                Command::Claim {
                    client_id, node, ..
                },
                Reply::Granted { .. },
            ) if before == Some(me) && *node != me => Some((client_id.clone(), index)),
            _ => None,
        };
        (reply, evict)
    }

    /// Applies one command; what the claimant is told.
    pub fn apply(&mut self, cmd: &Command, index: u64) -> Reply {
        match cmd {
            Command::Claim {
                client_id,
                node,
                principal,
                any_principal,
                nonce,
            } => {
                if *nonce != 0 && self.abandoned.contains(&(*node, *nonce)) {
                    // Its CONNECT was refused while it was on the way.
                    return Reply::Refused;
                }
                let previous = self.holders.get(client_id);
                // The identity binding of `sessionTakeover`, cluster-wide:
                // another principal may not take a held id under
                // SamePrincipal (MQTT 5.0 §5.4.2).
                if let Some(p) = previous {
                    if !any_principal && p.principal != *principal {
                        return Reply::Refused;
                    }
                }
                let previous = previous.map(|p| p.node);
                self.holders.insert(
                    client_id.clone(),
                    Holder {
                        node: *node,
                        principal: principal.clone(),
                        claim: index,
                        nonce: *nonce,
                    },
                );
                Reply::Granted {
                    previous,
                    claim: index,
                }
            }
            Command::Release {
                client_id,
                node,
                claim,
            } => {
                // Only the claim that ended: a newer one by the same node
                // (a quick reconnect) keeps the id.
                let held = |h: &Holder| h.node == *node && (*claim == 0 || h.claim == *claim);
                if self.holders.get(client_id).is_some_and(held) {
                    self.holders.remove(client_id);
                }
                Reply::Released
            }
            Command::Abandon {
                client_id,
                node,
                nonce,
            } => {
                let held = |h: &Holder| h.node == *node && h.nonce == *nonce;
                if self.holders.get(client_id).is_some_and(held) {
                    self.holders.remove(client_id);
                }
                if self.abandoned.len() == ABANDONED_MAX {
                    self.abandoned.pop_front();
                }
                self.abandoned.push_back((*node, *nonce));
                Reply::Released
            }
        }
    }

    /// Whether node `me` still ends its session for `client_id`, which the
    /// claim `taken` gave to another node: not if `me` claimed the id again
    /// after it (its session is the newer one). Any other ends, even if
    /// the taker has released the id since.
    pub fn still_evicts(&self, me: u32, client_id: &str, taken: u64) -> bool {
        !self
            .holders
            .get(client_id)
            .is_some_and(|h| h.node == me && h.claim > taken)
    }

    /// The ids node `me` holds here that `new` (a snapshot it installs)
    /// gives to another node, with the claims that took them.
    pub fn taken_by(&self, new: &Registry, me: u32) -> Vec<(String, u64)> {
        self.holders
            .iter()
            .filter(|(_, h)| h.node == me)
            .filter_map(|(id, _)| {
                let n = new.holders.get(id).filter(|n| n.node != me)?;
                Some((id.clone(), n.claim))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(id: &str, node: u32, principal: &str, any: bool) -> Command {
        claim_nonce(id, node, principal, any, 0)
    }

    fn claim_nonce(id: &str, node: u32, principal: &str, any: bool, nonce: u64) -> Command {
        Command::Claim {
            client_id: id.to_owned(),
            node,
            principal: principal.to_owned(),
            any_principal: any,
            nonce,
        }
    }

    #[test]
    fn an_abandoned_claim_is_undone_or_refused_when_it_comes_late() {
        let mut r = Registry::default();
        let abandon = |nonce| Command::Abandon {
            client_id: "d".into(),
            node: 1,
            nonce,
        };
        // Applied, then abandoned: the id is free again.
        r.apply(&claim_nonce("d", 1, "alice", false, 7), 1);
        r.apply(&abandon(7), 2);
        assert!(r.holders.is_empty());
        // Abandoned before it was applied: refused when it comes.
        r.apply(&abandon(8), 3);
        assert_eq!(
            r.apply(&claim_nonce("d", 1, "alice", false, 8), 4),
            Reply::Refused
        );
        assert!(r.holders.is_empty());
        // Another attempt of the same node, and another node's claim with
        // the same number, are untouched.
        r.apply(&claim_nonce("d", 1, "alice", false, 9), 5);
        r.apply(&abandon(8), 6);
        assert_eq!(r.holders["d"].claim, 5);
        let other = Command::Abandon {
            client_id: "d".into(),
            node: 2,
            nonce: 9,
        };
        r.apply(&other, 7);
        assert_eq!(r.holders["d"].claim, 5);
        // What is remembered stays bounded.
        for n in 0..(ABANDONED_MAX as u64 + 10) {
            r.apply(&abandon(1000 + n), 8 + n);
        }
        assert_eq!(r.abandoned.len(), ABANDONED_MAX);
    }

    #[test]
    fn a_held_id_moves_only_to_its_principal_unless_any_principal() {
        let mut r = Registry::default();
        let granted = |previous, claim| Reply::Granted { previous, claim };
        assert_eq!(r.apply(&claim("d", 1, "alice", false), 1), granted(None, 1));
        // The same principal on another node takes it over.
        assert_eq!(
            r.apply(&claim("d", 2, "alice", false), 2),
            granted(Some(1), 2)
        );
        // Another principal may not [MQTT-5.0 §5.4.2], unless AnyPrincipal.
        assert_eq!(r.apply(&claim("d", 3, "mallory", false), 3), Reply::Refused);
        assert_eq!(r.holders["d"].node, 2);
        assert_eq!(r.apply(&claim("d", 3, "bob", true), 4), granted(Some(2), 4));
    }

    #[test]
    fn only_the_claim_that_ended_releases() {
        let mut r = Registry::default();
        let release = |node, claim| Command::Release {
            client_id: "d".into(),
            node,
            claim,
        };
        r.apply(&claim("d", 1, "alice", false), 1);
        r.apply(&release(2, 1), 2);
        assert!(r.holders.contains_key("d"));
        // A quick reconnect to node 1 claims it again (index 3): the first
        // session's late release leaves the new claim alone.
        r.apply(&claim("d", 1, "alice", false), 3);
        r.apply(&release(1, 1), 4);
        assert!(r.holders.contains_key("d"));
        r.apply(&release(1, 3), 5);
        assert!(r.holders.is_empty());
        // Free again: anyone may claim it.
        let granted = Reply::Granted {
            previous: None,
            claim: 6,
        };
        assert_eq!(r.apply(&claim("d", 2, "bob", false), 6), granted);
    }
}
