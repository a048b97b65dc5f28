//! Authentication jobs: the shard asks (`Output::Authenticate`), a task
//! runs the listener's policies (a webhook call goes to glommio's blocking
//! pool, never the shard), and the answer goes back with `handle_admitted`.
//! A refusal is an operator line (rate-limited: a hostile client must not
//! flood the log).

use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use bytestring::ByteString;
use shardmq_core::broker::{Admission, ReservedTopics};
use shardmq_core::session::ConnectRequest;

use super::handle::{Admitted, ConnHandle};
use crate::client_log;
use crate::driver::Driver;
use crate::oplog::Category;
use crate::security::Stage;
use crate::telemetry::counters::{reason_label, ListenerCounters};

pub fn spawn(driver: Rc<Driver>, handle: Rc<ConnHandle>, request: ConnectRequest) {
    glommio::spawn_local(async move {
        let security = handle.security.borrow().clone();
        let result = security
            .admit(&request, &request.client_id, &handle.peer_certs)
            .await;
        let result = match result {
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
                })
            }
            Err(refused) => {
                let counters = &handle.counters;
                ListenerCounters::bump(&counters.refused, reason_label(refused.reason));
                match refused.stage {
                    Stage::Authentication => ListenerCounters::add(&counters.authn_denied, 1),
                    Stage::Authorization => {
                        ListenerCounters::bump(&counters.authz_denied, "connect")
                    }
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
        };
        driver.with(|s| s.handle_admitted(handle.id, Instant::now(), result));
    })
    .detach();
}

pub fn spawn_reauth(
    driver: Rc<Driver>,
    handle: Rc<ConnHandle>,
    method: ByteString,
    data: Option<Bytes>,
) {
    glommio::spawn_local(async move {
        let client_id = driver.peek(|s| s.client_id(handle.id)).unwrap_or_default();
        let security = handle.security.borrow().clone();
        let result = security
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
            });
        driver.with(|s| s.handle_reauthenticated(handle.id, Instant::now(), result));
    })
    .detach();
}
