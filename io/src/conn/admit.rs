//! Authentication jobs: the shard asks (`Output::Authenticate`), the driver
//! runs one of these in a task of its own (a webhook call goes to glommio's
//! blocking pool, never the shard) and hands the answer back with
//! `handle_admitted`. A refusal is an operator line (rate-limited: a hostile
//! client must not flood the log).

use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;
use futures_lite::FutureExt;
use shardmq_core::broker::{Admission, ReservedTopics};
use shardmq_core::codec::ReasonCode;
use shardmq_core::session::ConnectRequest;

use super::handle::{Admitted, ConnHandle};
use crate::client_log;
use crate::driver::Driver;
use crate::oplog::Category;
use crate::security::Stage;
use crate::telemetry::counters::{reason_label, ListenerCounters};

/// Runs the listener's policies on a CONNECT; on success the handle keeps
/// who the client is (for logs, reloads and re-authentication).
pub async fn admit(handle: &ConnHandle, request: &ConnectRequest) -> Result<Admission, ReasonCode> {
    let security = handle.security.borrow().clone();
    let result = security
        .admit(request, &request.client_id, &handle.peer_certs)
        .await;
    match result {
        Ok(a) => {
            *handle.principal.borrow_mut() = a.principal;
            *handle.identity.borrow_mut() = Some(a.identity);
            *handle.admitted.borrow_mut() = Some(Admitted {
                method: a.method,
                protocol: request.protocol_version,
                clean_start: request.clean_start,
            });
            Ok(Admission {
                permissions: Box::new(ReservedTopics(a.permissions)),
                principal: a.owner,
                expires_at: a.expires_at,
                cluster_claim: None,
            })
        }
        Err(refused) => {
            let counters = &handle.counters;
            ListenerCounters::bump(&counters.refused, reason_label(refused.reason));
            match refused.stage {
                Stage::Authentication => ListenerCounters::add(&counters.authn_denied, 1),
                Stage::Authorization => ListenerCounters::bump(&counters.authz_denied, "connect"),
            }
            client_log!(
                Category::AuthFailures,
                listener = %handle.listener,
                peer = %handle.peer,
                client = ?request.client_id,
                principal = ?refused.principal,
                reason = ?refused.reason,
                cause = ?refused.cause,
                "client refused"
            );
            Err(refused.reason)
        }
    }
}

/// In a cluster: commits the client id's claim for this node before the
/// CONNACK (docs/CLUSTER.md). Another principal's id is refused with Not
/// Authorized under `sessionTakeover: SamePrincipal`; a node that cannot
/// reach a majority refuses with Server unavailable rather than let an id
/// live on two nodes.
pub async fn claim(
    handle: &ConnHandle,
    request: &ConnectRequest,
    admission: Admission,
    control: &crate::cluster::control::Control,
    any_principal: bool,
) -> Result<Admission, ReasonCode> {
    use crate::cluster::control::ClaimError;
    let principal = admission.principal.as_str();
    match control
        .claim(&request.client_id, principal, any_principal)
        .await
    {
        Ok(claim) => Ok(Admission {
            cluster_claim: Some(claim),
            ..admission
        }),
        Err(e) => {
            let reason = match e {
                ClaimError::Refused => ReasonCode::NotAuthorized,
                ClaimError::Unavailable => ReasonCode::ServerUnavailable,
            };
            ListenerCounters::bump(&handle.counters.refused, reason_label(reason));
            client_log!(
                Category::AuthFailures,
                listener = %handle.listener,
                peer = %handle.peer,
                client = ?request.client_id,
                principal = ?principal,
                error = %e,
                "client refused by the cluster registry"
            );
            Err(reason)
        }
    }
}

/// The longest a CONNECT waits for them (beside its registry claim):
/// links come up within a second of a start, and clients commonly give up
/// on a CONNACK after 5 s (rumqttc, paho), so a link that is slow or
/// flapping costs at most this, after which the node serves as before.
const ROUTES_WAIT_MAX: Duration = Duration::from_secs(4);

/// In a cluster, after authentication: waits until this shard knows every
/// reachable peer's routes (`Shard::cluster_routes_ready`), so a node that
/// just started does not acknowledge a QoS 1/2 publish that the peers'
/// subscribers never get. At once, except in a node's first moments or
/// while a peer is being re-linked with no routes known yet. One waiter per
/// CONNECT, woken by the driver (no polling).
pub async fn routes_known(driver: &Driver) {
    if driver.peek(|s| s.cluster_routes_ready(Instant::now())) {
        return;
    }
    let ready = driver.wait_for_routes();
    async {
        let _ = ready.recv().await;
    }
    .or(async { glommio::timer::sleep(ROUTES_WAIT_MAX).await })
    .await;
}

/// Runs an AUTH re-authentication (v5 §4.12.1); `Ok` carries the new
/// credential's expiry.
pub async fn reauthenticate(
    handle: &ConnHandle,
    client_id: ByteString,
    method: ByteString,
    data: Option<Bytes>,
) -> Result<Option<Instant>, ReasonCode> {
    let security = handle.security.borrow().clone();
    security
        .reauthenticate(&client_id, &method, data.as_deref(), &handle.peer_certs)
        .await
        .map_err(|refused| {
            client_log!(
                Category::AuthFailures,
                listener = %handle.listener,
                peer = %handle.peer,
                client = ?client_id,
                principal = ?handle.principal.borrow(),
                reason = ?refused.reason,
                cause = ?refused.cause,
                "re-authentication refused"
            );
            refused.reason
        })
}
