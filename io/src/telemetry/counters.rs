//! Per-listener counters of one shard: plain `Cell`s written only on the
//! shard's thread (a connection's reader and writer add their bytes here,
//! so nothing on the per-message path touches memory another core writes).
//! Copied into a `ListenerCounts` once a second for the metrics thread.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

/// One listener on one shard.
#[derive(Debug, Default)]
pub struct ListenerCounters {
    pub accepted: Cell<u64>,
    pub closed: Cell<u64>,
    /// MQTT bytes read from and written to clients (after TLS).
    pub bytes_in: Cell<u64>,
    pub bytes_out: Cell<u64>,
    /// CONNECTs refused, by reason (`reason_label`).
    pub refused: RefCell<BTreeMap<&'static str, u64>>,
    /// CONNECTs refused by the authentication policy (bad credentials).
    pub authn_denied: Cell<u64>,
    /// Refusals by the authorization policy, by action.
    pub authz_denied: RefCell<BTreeMap<&'static str, u64>>,
    /// TLS handshakes that failed, by cause (`tls_cause`).
    pub tls_failed: RefCell<BTreeMap<&'static str, u64>>,
}

impl ListenerCounters {
    pub fn add(cell: &Cell<u64>, n: u64) {
        cell.set(cell.get().wrapping_add(n));
    }

    pub fn bump(map: &RefCell<BTreeMap<&'static str, u64>>, key: &'static str) {
        *map.borrow_mut().entry(key).or_insert(0) += 1;
    }

    pub fn counts(&self) -> ListenerCounts {
        ListenerCounts {
            accepted: self.accepted.get(),
            closed: self.closed.get(),
            bytes_in: self.bytes_in.get(),
            bytes_out: self.bytes_out.get(),
            refused: self.refused.borrow().clone(),
            authn_denied: self.authn_denied.get(),
            authz_denied: self.authz_denied.borrow().clone(),
            tls_failed: self.tls_failed.borrow().clone(),
        }
    }
}

/// A copy of `ListenerCounters`, for another thread.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerCounts {
    pub accepted: u64,
    pub closed: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub refused: BTreeMap<&'static str, u64>,
    pub authn_denied: u64,
    pub authz_denied: BTreeMap<&'static str, u64>,
    pub tls_failed: BTreeMap<&'static str, u64>,
}

impl ListenerCounts {
    /// Adds another shard's counts of the same listener.
    pub fn merge(&mut self, other: &ListenerCounts) {
        self.accepted += other.accepted;
        self.closed += other.closed;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.authn_denied += other.authn_denied;
        for (map, from) in [
            (&mut self.refused, &other.refused),
            (&mut self.authz_denied, &other.authz_denied),
            (&mut self.tls_failed, &other.tls_failed),
        ] {
            for (k, v) in from {
                *map.entry(k).or_insert(0) += v;
            }
        }
    }
}

/// A CONNACK reason as a label value.
pub fn reason_label(reason: shardmq_core::codec::ReasonCode) -> &'static str {
    use shardmq_core::codec::ReasonCode as R;
    match reason {
        R::BadUserNameOrPassword => "bad_username_or_password",
        R::NotAuthorized => "not_authorized",
        R::BadAuthenticationMethod => "bad_authentication_method",
        R::ClientIdentifierNotValid => "client_identifier_not_valid",
        R::ServerUnavailable => "server_unavailable",
        R::ServerBusy => "server_busy",
        R::Banned => "banned",
        R::QuotaExceeded => "quota_exceeded",
        _ => "other",
    }
}

/// Why a TLS handshake failed, from rustls's error, as a label value.
pub fn tls_cause(error: &str) -> &'static str {
    let e = error.to_ascii_lowercase();
    if e.contains("expired") || e.contains("notvalidyet") || e.contains("not valid yet") {
        "certificate_expired"
    } else if e.contains("unknownissuer") || e.contains("unknown issuer") || e.contains("unknownca")
    {
        "unknown_ca"
    } else if e.contains("nocertificatespresented") || e.contains("no certificates") {
        "no_client_certificate"
    } else if e.contains("badcertificate") || e.contains("invalidcertificate") {
        "bad_certificate"
    } else if e.contains("alert") {
        "peer_alert"
    } else if e.contains("corrupt") || e.contains("invalid message") || e.contains("invalidmessage")
    {
        "not_tls"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_counts_add_per_key() {
        let a = ListenerCounters::default();
        ListenerCounters::add(&a.bytes_in, 10);
        ListenerCounters::bump(&a.refused, "not_authorized");
        let mut total = a.counts();
        total.merge(&a.counts());
        assert_eq!(total.bytes_in, 20);
        assert_eq!(total.refused.get("not_authorized"), Some(&2));
    }
}
