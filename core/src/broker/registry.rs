//! The client-id registry: which session holds each client id, and who may
//! claim it next. One claim at a time per client id: a claim is granted, the
//! claimant takes the previous session over, and only once it *settles* (the
//! new session is in place) is the next claim decided. That is what keeps at
//! most one session per client id broker-wide however CONNECTs interleave.
//! Sans-io and generic over where a session lives (`L`) and how an answer is
//! routed back (`T`): the runtime sends the answers it returns.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, VecDeque};
use std::fmt;

use bytestring::ByteString;

use crate::limits::TakeoverPolicy;

/// Who a session belongs to, as authentication established it: the realm
/// (the authentication policy, or the port for anonymous clients), the
/// method and the subject (certificate CN, user name, token subject). Two
/// CONNECTs are the same principal iff these are equal. MQTT 5.0 §5.4.2:
/// a client id alone proves nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PrincipalId(ByteString);

impl PrincipalId {
    /// An authenticated principal: `realm` is the authentication policy's
    /// name, `method` names how it authenticated.
    pub fn authenticated(realm: &str, method: &str, subject: &str) -> PrincipalId {
        PrincipalId(format!("{method}:{subject}@{realm}").into())
    }

    /// A client of a port without authentication. Anonymous clients are one
    /// principal broker-wide: nothing tells them apart, so a port without
    /// authentication has no identity to protect. They are distinct from
    /// every authenticated principal, so an anonymous client can never take
    /// over an authenticated client's session.
    pub fn anonymous() -> PrincipalId {
        PrincipalId(ByteString::from_static("anonymous"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A principal read back from a persisted session (`as_str` wrote it).
    pub fn restored(name: ByteString) -> PrincipalId {
        PrincipalId(name)
    }
}

impl fmt::Display for PrincipalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A CONNECT's request for a client id: the new session's place, its
/// principal, and where to send the answer.
#[derive(Debug, Clone)]
pub struct Claim<L, T> {
    pub at: L,
    pub principal: PrincipalId,
    pub reply: T,
    /// In a cluster, the cluster registry's claim the CONNECT holds (its
    /// log index; 0: none). An older one than the id's fence is refused.
    pub cluster: u64,
}

/// The registry's answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<L> {
    /// The id is the claimant's: take over `previous` (if any), then
    /// [`Registry::settle`].
    Granted { previous: Option<L> },
    /// Another principal's session holds the id and the policy is
    /// [`TakeoverPolicy::SamePrincipal`]: the CONNECT is refused and that
    /// session is untouched.
    Refused,
    /// The cluster's registry gave the id to another node after the claim
    /// this CONNECT came with (`Shard::evict_client`'s fence): refused
    /// with Server unavailable; the client connects again and is claimed
    /// anew.
    Superseded,
}

/// An answer to send to `reply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer<L, T> {
    pub reply: T,
    pub decision: Decision<L>,
}

#[derive(Debug)]
struct Holder<L> {
    at: L,
    principal: PrincipalId,
    /// The cluster registry's claim it holds the id under (0: none).
    cluster: u64,
}

#[derive(Debug)]
struct Slot<L, T> {
    /// The session holding the id; `None` once released.
    holder: Option<Holder<L>>,
    /// A granted claim whose takeover is under way: later claims wait.
    settling: Option<L>,
    /// Claims that arrived while one was settling, in arrival order.
    waiting: VecDeque<Claim<L, T>>,
    /// In a cluster: the greatest cluster claim granted here, or that
    /// took the id to another node (`fence`). A CONNECT under an older
    /// one comes late (its answer crossed a newer claim) and is refused
    /// rather than take over a newer session.
    fence: u64,
    /// A takeover by another node (its claim) that came while a claim
    /// here was settling: done once it settles (`evict_due`).
    evict_after: u64,
}

impl<L, T> Slot<L, T> {
    fn is_idle(&self) -> bool {
        self.holder.is_none() && self.settling.is_none() && self.waiting.is_empty()
    }
}

/// The registry of the client ids one shard owns (partitioned by hash).
/// INVARIANT: an entry exists only while it holds, settles or queues
/// something, so memory follows live sessions, not ids ever seen.
#[derive(Debug)]
pub struct Registry<L, T> {
    policy: TakeoverPolicy,
    slots: HashMap<ByteString, Slot<L, T>>,
    /// Fences of ids with no entry (the entry went idle, or a takeover by
    /// another node found none): a CONNECT's claim may still be on its way
    /// here. Bounded by `FENCES_MAX`, oldest out: a fence matters only
    /// while a claim is in flight.
    fences: HashMap<ByteString, u64>,
    fence_order: VecDeque<ByteString>,
}

/// Fences kept for ids with no entry.
pub const FENCES_MAX: usize = 4096;

impl<L: Copy + Eq, T> Registry<L, T> {
    pub fn new(policy: TakeoverPolicy) -> Registry<L, T> {
        Registry {
            policy,
            slots: HashMap::new(),
            fences: HashMap::new(),
            fence_order: VecDeque::new(),
        }
    }

    /// Client ids with a session, a claim settling or claims waiting.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Where the session holding `client_id` lives.
    pub fn holder(&self, client_id: &str) -> Option<L> {
        self.slots.get(client_id)?.holder.as_ref().map(|h| h.at)
    }

    /// Who the session holding `client_id` belongs to.
    pub fn holder_principal(&self, client_id: &str) -> Option<&PrincipalId> {
        self.slots
            .get(client_id)?
            .holder
            .as_ref()
            .map(|h| &h.principal)
    }

    /// A CONNECT claims `client_id`. Returns the answer now, or `None` if
    /// the claim waits for the one settling (answered by `settle`).
    pub fn claim(&mut self, client_id: &ByteString, claim: Claim<L, T>) -> Option<Answer<L, T>> {
        let fences = &mut self.fences;
        let slot = self.slots.entry(client_id.clone()).or_insert_with(|| Slot {
            holder: None,
            settling: None,
            waiting: VecDeque::new(),
            fence: fences.remove(client_id).unwrap_or(0),
            evict_after: 0,
        });
        if superseded(slot, &claim) {
            return Some(Answer {
                reply: claim.reply,
                decision: Decision::Superseded,
            });
        }
        // A refusal changes nothing, so it need not wait its turn.
        if self.policy.refuses(slot.holder.as_ref(), &claim.principal) {
            return Some(Answer {
                reply: claim.reply,
                decision: Decision::Refused,
            });
        }
        if slot.settling.is_some() {
            slot.waiting.push_back(claim);
            return None;
        }
        Some(grant(slot, claim))
    }

    /// The claim granted to `at` is settled: the new session is in place
    /// (or gave up). Decides the claims that waited, up to the next grant.
    pub fn settle(&mut self, client_id: &str, at: L) -> Vec<Answer<L, T>> {
        let mut answers = Vec::new();
        let MapEntry::Occupied(mut entry) = self.slots.entry(client_id.into()) else {
            return answers;
        };
        let slot = entry.get_mut();
        if slot.settling != Some(at) {
            // INVARIANT: only the claimant settles, once; a stale call is ignored.
            return answers;
        }
        slot.settling = None;
        while let Some(claim) = slot.waiting.pop_front() {
            if superseded(slot, &claim) {
                answers.push(Answer {
                    reply: claim.reply,
                    decision: Decision::Superseded,
                });
                continue;
            }
            if self.policy.refuses(slot.holder.as_ref(), &claim.principal) {
                answers.push(Answer {
                    reply: claim.reply,
                    decision: Decision::Refused,
                });
                continue;
            }
            answers.push(grant(slot, claim));
            break;
        }
        if slot.is_idle() {
            let fence = entry.remove().fence;
            self.remember_fence(client_id, fence);
        }
        answers
    }

    /// Another node took `client_id` with the cluster claim `taken`: what
    /// holds it here now. A claim older than `taken` is refused from now
    /// on; a claim settling is evicted once it settles (`evict_due`), if
    /// it is older.
    pub fn fence(&mut self, client_id: &str, taken: u64) -> Fenced<L> {
        let Some(slot) = self.slots.get_mut(client_id) else {
            self.remember_fence(client_id, taken);
            return Fenced::NoEntry;
        };
        slot.fence = slot.fence.max(taken);
        if slot.settling.is_some() {
            slot.evict_after = slot.evict_after.max(taken);
            return Fenced::Settling;
        }
        match &slot.holder {
            Some(h) if h.cluster < taken => Fenced::Held(h.at),
            _ => Fenced::Kept,
        }
    }

    /// After a settle: the takeover that came meanwhile, if the settled
    /// session's claim is older than it.
    pub fn evict_due(&mut self, client_id: &str) -> Option<u64> {
        let slot = self.slots.get_mut(client_id)?;
        if slot.settling.is_some() || slot.evict_after == 0 {
            return None;
        }
        let taken = std::mem::take(&mut slot.evict_after);
        slot.holder
            .as_ref()
            .is_some_and(|h| h.cluster < taken)
            .then_some(taken)
    }

    /// The session at `at` ended: forget it if it still holds the id.
    pub fn release(&mut self, client_id: &str, at: L) {
        let MapEntry::Occupied(mut entry) = self.slots.entry(client_id.into()) else {
            return;
        };
        let slot = entry.get_mut();
        if slot.holder.as_ref().is_some_and(|h| h.at == at) {
            slot.holder = None;
        }
        if slot.is_idle() {
            let fence = entry.remove().fence;
            self.remember_fence(client_id, fence);
        }
    }

    fn remember_fence(&mut self, client_id: &str, fence: u64) {
        if fence == 0 {
            return;
        }
        let id = ByteString::from(client_id);
        let known = self.fences.get(client_id).copied();
        self.fences
            .insert(id.clone(), known.unwrap_or(0).max(fence));
        if known.is_none() {
            self.fence_order.push_back(id);
        }
        // Stale entries (an id whose fence went back into an entry) leave
        // with the oldest; a fence may go a little early, never late.
        while self.fence_order.len() > FENCES_MAX {
            if let Some(old) = self.fence_order.pop_front() {
                self.fences.remove(&old);
            }
        }
    }
}

/// What `Registry::fence` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced<L> {
    /// Nothing here for the id (the fence is kept for a claim on its way).
    NoEntry,
    /// A claim is settling: evicted once settled, if older.
    Settling,
    /// The session at `L` holds it under an older claim: it ends.
    Held(L),
    /// Nothing to end (no session, or one under a newer claim).
    Kept,
}

/// A claim older than the id's fence (0: not in a cluster).
fn superseded<L, T>(slot: &Slot<L, T>, claim: &Claim<L, T>) -> bool {
    claim.cluster != 0 && claim.cluster < slot.fence
}

fn grant<L: Copy, T>(slot: &mut Slot<L, T>, claim: Claim<L, T>) -> Answer<L, T> {
    let previous = slot.holder.take().map(|h| h.at);
    slot.fence = slot.fence.max(claim.cluster);
    slot.holder = Some(Holder {
        at: claim.at,
        principal: claim.principal,
        cluster: claim.cluster,
    });
    slot.settling = Some(claim.at);
    Answer {
        reply: claim.reply,
        decision: Decision::Granted { previous },
    }
}

impl TakeoverPolicy {
    fn refuses<L>(self, holder: Option<&Holder<L>>, principal: &PrincipalId) -> bool {
        self == TakeoverPolicy::SamePrincipal && holder.is_some_and(|h| &h.principal != principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Reg = Registry<u32, u32>;

    fn claim(at: u32, who: &str) -> Claim<u32, u32> {
        Claim {
            at,
            principal: PrincipalId::authenticated("realm", "Test", who),
            reply: at,
            cluster: 0,
        }
    }

    fn granted(previous: Option<u32>) -> Decision<u32> {
        Decision::Granted { previous }
    }

    #[test]
    fn a_claim_waits_while_another_settles_then_takes_over_the_settled_session() {
        let mut r = Reg::new(TakeoverPolicy::SamePrincipal);
        let id: ByteString = "c".into();
        assert_eq!(r.claim(&id, claim(1, "p")).unwrap().decision, granted(None));
        // Claim 2 arrives before 1 has its session in place: it waits, so
        // it cannot take over a session that does not exist yet.
        assert!(r.claim(&id, claim(2, "p")).is_none());
        let answers = r.settle("c", 1);
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].reply, 2);
        assert_eq!(answers[0].decision, granted(Some(1)));
        assert_eq!(r.holder("c"), Some(2));
        assert!(r.settle("c", 2).is_empty());
    }

    #[test]
    fn another_principal_is_refused_and_the_holder_stays() {
        // MQTT 5.0 §5.4.2: the id is bound to the principal that holds it.
        let mut r = Reg::new(TakeoverPolicy::SamePrincipal);
        let id: ByteString = "c".into();
        r.claim(&id, claim(1, "alice"));
        r.settle("c", 1);
        let answer = r.claim(&id, claim(2, "mallory")).unwrap();
        assert_eq!(answer.decision, Decision::Refused);
        assert_eq!(r.holder("c"), Some(1));
        // Once the session ends, the id is free for anyone.
        r.release("c", 1);
        assert_eq!(
            r.claim(&id, claim(3, "mallory")).unwrap().decision,
            granted(None)
        );
    }

    #[test]
    fn any_principal_policy_lets_anyone_take_over() {
        let mut r = Reg::new(TakeoverPolicy::AnyPrincipal);
        let id: ByteString = "c".into();
        r.claim(&id, claim(1, "alice"));
        r.settle("c", 1);
        assert_eq!(
            r.claim(&id, claim(2, "bob")).unwrap().decision,
            granted(Some(1))
        );
    }

    #[test]
    fn a_stale_release_does_not_free_a_newer_holder() {
        let mut r = Reg::new(TakeoverPolicy::SamePrincipal);
        let id: ByteString = "c".into();
        r.claim(&id, claim(1, "p"));
        r.settle("c", 1);
        r.claim(&id, claim(2, "p"));
        r.release("c", 1);
        assert_eq!(r.holder("c"), Some(2));
    }

    #[test]
    fn entries_go_when_their_sessions_go() {
        let mut r = Reg::new(TakeoverPolicy::SamePrincipal);
        for n in 0..1000u32 {
            let id: ByteString = format!("c{n}").into();
            r.claim(&id, claim(n, "p"));
            r.settle(&id, n);
            r.release(&id, n);
        }
        assert!(r.is_empty(), "nothing grows with the ids ever seen");
    }

    #[test]
    fn refusals_while_settling_do_not_queue() {
        let mut r = Reg::new(TakeoverPolicy::SamePrincipal);
        let id: ByteString = "c".into();
        r.claim(&id, claim(1, "alice"));
        assert_eq!(
            r.claim(&id, claim(2, "bob")).unwrap().decision,
            Decision::Refused
        );
        assert!(r.settle("c", 1).is_empty());
    }

    /// A randomized model check: claims, settles and releases in any order
    /// the protocol allows (a claimant settles only after its grant; a
    /// holder releases only after settling). At every step at most one
    /// claimant is between grant and settle, and every grant names as
    /// previous exactly the session that held the id.
    #[test]
    fn concurrent_claims_never_overlap() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _round in 0..200 {
            let mut r = Reg::new(TakeoverPolicy::SamePrincipal);
            let id: ByteString = "c".into();
            let mut granted_unsettled: Vec<u32> = Vec::new();
            let mut live: Option<u32> = None; // the session that holds the id
            let mut next_at = 0u32;
            for _step in 0..50 {
                match next() % 3 {
                    0 => {
                        next_at += 1;
                        if let Some(a) = r.claim(&id, claim(next_at, "p")) {
                            apply(a, &mut granted_unsettled, &mut live);
                        }
                    }
                    1 if !granted_unsettled.is_empty() => {
                        let at = granted_unsettled.remove(0);
                        for a in r.settle("c", at) {
                            apply(a, &mut granted_unsettled, &mut live);
                        }
                    }
                    _ => {
                        if let Some(at) = live.filter(|at| !granted_unsettled.contains(at)) {
                            r.release("c", at);
                            live = None;
                        }
                    }
                }
                assert!(granted_unsettled.len() <= 1, "two takeovers at once");
            }
        }

        fn apply(a: Answer<u32, u32>, unsettled: &mut Vec<u32>, live: &mut Option<u32>) {
            if let Decision::Granted { previous } = a.decision {
                assert_eq!(previous, *live, "grant must name the live session");
                *live = Some(a.reply);
                unsettled.push(a.reply);
            }
        }
    }

    fn cluster_claim(at: u32, who: &str, cluster: u64) -> Claim<u32, u32> {
        Claim {
            cluster,
            ..claim(at, who)
        }
    }

    #[test]
    fn a_cluster_claim_older_than_the_fence_is_superseded_arriving_or_waiting() {
        let mut r = Reg::new(TakeoverPolicy::SamePrincipal);
        let id: ByteString = "c".into();
        // Claim 7 is granted; claim 5 of the same node, whose answer came
        // later, may not take its session over.
        let decision = |a: Option<Answer<u32, u32>>| a.map(|a| a.decision);
        assert_eq!(
            decision(r.claim(&id, cluster_claim(1, "p", 7))),
            Some(granted(None))
        );
        assert_eq!(
            decision(r.claim(&id, cluster_claim(2, "p", 5))),
            Some(Decision::Superseded)
        );
        // 9 and then 8 wait for 7 to settle; 9 goes first, and 8 is
        // refused when its turn comes.
        assert!(r.claim(&id, cluster_claim(3, "p", 9)).is_none());
        assert!(r.claim(&id, cluster_claim(4, "p", 8)).is_none());
        let answers = r.settle("c", 1);
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].decision, granted(Some(1)));
        let answers = r.settle("c", 3);
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].decision, Decision::Superseded);
        // Single node (no cluster claims): never superseded.
        assert_eq!(
            r.claim(&id, claim(5, "p")).unwrap().decision,
            granted(Some(3))
        );
    }

    #[test]
    fn a_takeover_by_another_node_ends_what_it_finds_and_fences_what_comes_later() {
        let mut r = Reg::new(TakeoverPolicy::SamePrincipal);
        let id: ByteString = "c".into();
        // No entry: the fence waits for a claim still on its way.
        assert_eq!(r.fence("c", 10), Fenced::NoEntry);
        assert_eq!(
            r.claim(&id, cluster_claim(1, "p", 9)).unwrap().decision,
            Decision::Superseded
        );
        assert_eq!(
            r.claim(&id, cluster_claim(1, "p", 11)).unwrap().decision,
            granted(None)
        );
        // Settling: ended once it settles, if older.
        assert_eq!(r.fence("c", 12), Fenced::Settling);
        assert!(r.settle("c", 1).is_empty());
        assert_eq!(r.evict_due("c"), Some(12));
        assert_eq!(r.evict_due("c"), None);
        assert_eq!(r.fence("c", 12), Fenced::Held(1));
        // A session under a newer claim stays.
        r.release("c", 1);
        assert_eq!(
            r.claim(&id, cluster_claim(2, "p", 13)).unwrap().decision,
            granted(None)
        );
        r.settle("c", 2);
        assert_eq!(r.fence("c", 12), Fenced::Kept);
    }
}
