//! The cluster's client-id registry as a replicated state machine
//! (docs/CLUSTER.md): the commands a node commits through consensus (io
//! runs them through openraft), what applying one answers, and which of a
//! node's sessions end because another node took their id. Pure, so the
//! deterministic simulator runs the same code as the broker.

use std::collections::{BTreeMap, HashMap, VecDeque};

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
    /// `claim` 0: a claim of one of the node's earlier lives, one whose
    /// nonce is below `floor` (a session restored from disk knows no claim
    /// number); a claim of this life stays. `floor` 0 (a command written
    /// before floors): any claim.
    Release {
        client_id: String,
        node: u32,
        #[serde(default)]
        claim: u64,
        #[serde(default)]
        floor: u64,
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
    /// Earlier claims of the same node still in force, oldest first (their
    /// `under` empty): a node claims an id it holds for each CONNECT, and
    /// if the newest is abandoned or its client leaves before its session
    /// starts, the session of the claim before it holds the id again.
    /// Each is released when its session ends or a newer one takes it
    /// over. Bounded by `UNDER_MAX`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub under: Vec<Holder>,
}

/// Same-node claims a holder keeps under its own: past it the oldest is
/// forgotten (only a burst of CONNECTs for one id on one node reaches it).
pub const UNDER_MAX: usize = 16;

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
                let mut under = Vec::new();
                if let Some(p) = self.holders.get_mut(client_id).filter(|p| p.node == *node) {
                    under = std::mem::take(&mut p.under);
                    under.push(p.clone());
                    // The same attempt committed again (a write tried
                    // again after its answer was lost) is one claim.
                    under.retain(|u| *nonce == 0 || u.nonce != *nonce);
                    if under.len() > UNDER_MAX {
                        // The oldest most likely backs the live session:
                        // the one after it goes.
                        under.remove(1);
                    }
                }
                self.holders.insert(
                    client_id.clone(),
                    Holder {
                        node: *node,
                        principal: principal.clone(),
                        claim: index,
                        nonce: *nonce,
                        under,
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
                floor,
            } => {
                // Only the claim that ended: a newer one by the same node
                // (a quick reconnect) keeps the id.
                let ended = |h: &Holder| match (*claim, *floor) {
                    (0, 0) => true,
                    (0, floor) => h.nonce < floor,
                    (claim, _) => h.claim == claim,
                };
                self.end(client_id, *node, ended);
                Reply::Released
            }
            Command::Abandon {
                client_id,
                node,
                nonce,
            } => {
                self.end(client_id, *node, |h: &Holder| h.nonce == *nonce);
                if self.abandoned.len() == ABANDONED_MAX {
                    self.abandoned.pop_front();
                }
                self.abandoned.push_back((*node, *nonce));
                Reply::Released
            }
        }
    }

    /// The claims of `node` on `client_id` that `ended` picks are over: the
    /// latest claim before them holds the id, or none does.
    fn end(&mut self, client_id: &str, node: u32, ended: impl Fn(&Holder) -> bool) {
        let Some(h) = self.holders.get_mut(client_id).filter(|h| h.node == node) else {
            return;
        };
        h.under.retain(|u| !ended(u));
        if !ended(h) {
            return;
        }
        match h.under.pop() {
            Some(mut before) => {
                before.under = std::mem::take(&mut h.under);
                *h = before;
            }
            None => {
                self.holders.remove(client_id);
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

    /// The ids node `me` holds under claims of its earlier lives (nonce
    /// below `floor`), with those claims: a session restored from disk
    /// holds one; any other is released, or nothing would ever free it (the
    /// node died with the session). An id may come with several.
    pub fn earlier_holds(&self, me: u32, floor: u64) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for (id, h) in self.holders.iter().filter(|(_, h)| h.node == me) {
            for c in h.under.iter().chain(std::iter::once(h)) {
                if c.nonce < floor {
                    out.push((id.clone(), c.claim));
                }
            }
        }
        out
    }

    /// The ids node `me` holds here under a claim that `new` (a snapshot
    /// it installs, applied up to index `at`) no longer has in force: the
    /// id went to another node (with the claim that took it), to none, or
    /// back to `me` under a newer claim after another node had it (taken
    /// and released, or taken back, in the log the snapshot skips; `at`
    /// stands for the claim that took it).
    pub fn taken_by(&self, new: &Registry, me: u32, at: u64) -> Vec<(String, u64)> {
        self.holders
            .iter()
            .filter(|(_, h)| h.node == me)
            .filter_map(|(id, old)| match new.holders.get(id) {
                _ if in_force(new, me, id, old.claim) => None,
                Some(n) if n.node != me => Some((id.clone(), n.claim)),
                _ => Some((id.clone(), at)),
            })
            .collect()
    }
}

/// The claims a node was granted in its current life, per client id, while
/// their sessions may live: its own view, ahead of its applied registry. A
/// node applies the log at its own pace (a restarted one from its last
/// snapshot, a lagging one by installing the leader's), so a takeover can
/// reach it late, after it was granted the id again, and an answer can
/// reach it after the takeover. The owner shard ends only the sessions
/// older than a takeover (`Shard::evict_client`); this decides what goes
/// there.
#[derive(Debug, Default)]
pub struct Granted {
    claims: HashMap<String, Vec<u64>>,
}

/// Whether `claim` of node `me` is still in force for `client_id`.
fn in_force(registry: &Registry, me: u32, client_id: &str, claim: u64) -> bool {
    registry.holder(client_id).is_some_and(|h| {
        h.node == me && (h.claim == claim || h.under.iter().any(|u| u.claim == claim))
    })
}

impl Granted {
    /// The answer to node `me`'s claim `claim` on `client_id` arrived:
    /// whether its CONNECT goes on (then the claim is on record). Not if
    /// `registry`, which applied the log up to index `applied`, no longer
    /// has the claim in force: another node took the id after it (the
    /// answer came late; the takeover that ends this claim's session was
    /// already acted on here), or it was taken and given back.
    pub fn admit(
        &mut self,
        registry: &Registry,
        applied: u64,
        me: u32,
        client_id: &str,
        claim: u64,
    ) -> bool {
        if applied >= claim && !in_force(registry, me, client_id, claim) {
            return false;
        }
        self.claims
            .entry(client_id.to_owned())
            .or_default()
            .push(claim);
        true
    }

    /// The session under `claim` ended here and its id is released.
    pub fn released(&mut self, client_id: &str, claim: u64) {
        if let Some(c) = self.claims.get_mut(client_id) {
            c.retain(|g| *g != claim);
            if c.is_empty() {
                self.claims.remove(client_id);
            }
        }
    }

    /// Whether the claim `taken`, which gave `client_id` to another node,
    /// goes to the id's owner shard to end node `me`'s sessions older than
    /// it. A session of this life knows its claim there, so it goes; with
    /// none on record (a session restored from disk knows none) only if
    /// `registry` does not show this node claiming the id again after it.
    pub fn evicts(&mut self, registry: &Registry, me: u32, client_id: &str, taken: u64) -> bool {
        if let Some(c) = self.claims.get_mut(client_id) {
            c.retain(|g| *g >= taken);
            if c.is_empty() {
                self.claims.remove(client_id);
            }
            return true;
        }
        registry.still_evicts(me, client_id, taken)
    }

    /// After installing a snapshot `registry` at index `applied`: the ids
    /// with a claim granted here that the snapshot no longer has in force
    /// (the log it skips gave them to another node, and maybe back), each
    /// with the claim past the newest such, for `Shard::evict_client`,
    /// which ends sessions under it or older ones, not newer ones. Those
    /// claims are forgotten here.
    pub fn lapsed(&mut self, registry: &Registry, applied: u64, me: u32) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        self.claims.retain(|id, claims| {
            let mut newest = None;
            claims.retain(|g| {
                let gone = *g <= applied && !in_force(registry, me, id, *g);
                if gone {
                    newest = newest.max(Some(*g));
                }
                !gone
            });
            if let Some(g) = newest {
                out.push((id.clone(), g + 1));
            }
            !claims.is_empty()
        });
        out
    }

    /// Ids with a claim on record (bounded by the node's sessions).
    pub fn len(&self) -> usize {
        self.claims.len()
    }

    pub fn is_empty(&self) -> bool {
        self.claims.is_empty()
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
            floor: 0,
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

    #[test]
    fn a_release_without_a_claim_number_frees_only_an_earlier_lifes_claim() {
        let mut r = Registry::default();
        // Life 1 of node 1 claimed it (nonce 100); life 2 starts at 1000.
        r.apply(&claim_nonce("d", 1, "alice", false, 100), 1);
        assert_eq!(r.earlier_holds(1, 1000), vec![("d".to_owned(), 1)]);
        assert!(r.earlier_holds(2, 1000).is_empty());
        // Life 2 claims it again before the restored session's release:
        // the earlier claim stays under it until that session ends.
        r.apply(&claim_nonce("d", 1, "alice", false, 1000), 2);
        assert_eq!(r.earlier_holds(1, 1000), vec![("d".to_owned(), 1)]);
        let restored_ended = Command::Release {
            client_id: "d".into(),
            node: 1,
            claim: 0,
            floor: 1000,
        };
        r.apply(&restored_ended, 3);
        assert_eq!(r.holder("d").map(|h| h.claim), Some(2));
        assert!(r.earlier_holds(1, 1000).is_empty());
        // Had it come first, it frees the earlier life's hold.
        let mut r = Registry::default();
        r.apply(&claim_nonce("d", 1, "alice", false, 100), 1);
        r.apply(&restored_ended, 2);
        assert!(r.holder("d").is_none());
    }

    #[test]
    fn a_session_granted_again_outlives_an_older_takeover_applied_late() {
        let mut r = Registry::default();
        let mut g = Granted::default();
        // Node 2 took the id at 5; node 1 claims it again at 9 and admits
        // the session before it has applied either. The takeover goes to
        // the owner shard, which keeps the session of claim 9 (newer).
        assert!(g.admit(&r, 0, 1, "d", 9));
        assert!(g.evicts(&r, 1, "d", 5));
        assert_eq!(g.len(), 1);
        // A takeover after the session's claim: the claim is forgotten.
        assert!(g.evicts(&r, 1, "d", 12));
        assert!(g.is_empty());
        // Without a claim of this life (a restored session), the applied
        // registry decides: spared if this node claimed it again after.
        r.apply(&claim("d", 1, "alice", false), 14);
        assert!(!g.evicts(&r, 1, "d", 12));
        assert!(g.evicts(&r, 1, "d", 15));
        // A released claim is forgotten.
        assert!(g.admit(&r, 0, 1, "e", 3));
        g.released("e", 3);
        assert!(g.is_empty());
        // An answer that comes after this node applied a later takeover
        // admits nothing: that takeover's eviction found no session.
        let mut r = Registry::default();
        r.apply(&claim("f", 1, "alice", false), 20);
        r.apply(&claim("f", 2, "alice", false), 21);
        assert!(!g.admit(&r, 21, 1, "f", 20));
        assert!(g.admit(&r, 19, 1, "f", 20));
        // A snapshot past 21 shows claim 20 lapsed: sessions under it end.
        assert_eq!(g.lapsed(&r, 21, 1), vec![("f".to_owned(), 21)]);
        assert!(g.is_empty());
    }

    #[test]
    fn an_abandoned_or_unused_claim_gives_the_id_back_to_the_session_before_it() {
        let mut r = Registry::default();
        let end = |cmd: Command, r: &mut Registry, index| {
            r.apply(&cmd, index);
            r.holder("d").map(|h| h.claim)
        };
        r.apply(&claim_nonce("d", 1, "alice", false, 10), 1);
        // The same attempt committed twice is one claim.
        r.apply(&claim_nonce("d", 1, "alice", false, 11), 2);
        r.apply(&claim_nonce("d", 1, "alice", false, 11), 3);
        assert_eq!(r.holder("d").map(|h| h.under.len()), Some(1));
        // Node 1 gave up on attempt 11 (its CONNECT was refused): the
        // session of claim 1 holds the id again.
        let abandon = Command::Abandon {
            client_id: "d".into(),
            node: 1,
            nonce: 11,
        };
        assert_eq!(end(abandon, &mut r, 4), Some(1));
        // A newer claim whose client left before its session started.
        r.apply(&claim_nonce("d", 1, "alice", false, 12), 5);
        let unused = Command::Release {
            client_id: "d".into(),
            node: 1,
            claim: 5,
            floor: 0,
        };
        assert_eq!(end(unused, &mut r, 6), Some(1));
        // Another node's claim replaces them all.
        r.apply(&claim_nonce("d", 1, "alice", false, 13), 7);
        r.apply(&claim_nonce("d", 2, "alice", false, 1), 8);
        assert_eq!(r.holder("d").map(|h| (h.node, h.under.len())), Some((2, 0)));
    }

    #[test]
    fn a_snapshot_that_skips_a_takeover_and_its_release_still_ends_the_session() {
        let mut before = Registry::default();
        before.apply(&claim_nonce("d", 1, "alice", false, 5), 1);
        before.apply(&claim_nonce("e", 1, "alice", false, 6), 2);
        before.apply(&claim_nonce("f", 1, "alice", false, 7), 3);
        let mut after = before.clone();
        after.apply(&claim_nonce("d", 2, "alice", false, 1), 4);
        after.apply(&claim_nonce("e", 2, "alice", false, 2), 5);
        after.apply(
            &Command::Release {
                client_id: "e".into(),
                node: 2,
                claim: 5,
                floor: 0,
            },
            6,
        );
        let mut taken = before.taken_by(&after, 1, 6);
        taken.sort();
        assert_eq!(taken, vec![("d".to_owned(), 4), ("e".to_owned(), 6)]);
    }
}
