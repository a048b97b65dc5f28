//! Authentication jobs: the shard asks (`Output::Authenticate`), a task
//! runs the listener's policies (a webhook call goes to glommio's blocking
//! pool, never the shard), and the answer goes back with `handle_admitted`.

use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use bytestring::ByteString;
use shardmq_core::broker::Admission;
use shardmq_core::session::ConnectRequest;
use tracing::debug;

use super::handle::ConnHandle;
use crate::driver::Driver;

pub fn spawn(driver: Rc<Driver>, handle: Rc<ConnHandle>, request: ConnectRequest) {
    glommio::spawn_local(async move {
        let result = handle
            .security
            .admit(&request, &request.client_id, &handle.peer_certs)
            .await;
        if let Err(reason) = &result {
            debug!(peer = %handle.peer, client = %request.client_id, ?reason, "CONNECT refused");
        }
        let result = result.map(|a| Admission {
            permissions: Box::new(a.permissions),
            principal: a.principal,
            expires_at: a.expires_at,
        });
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
        let result = handle
            .security
            .reauthenticate(&client_id, &method, data.as_deref(), &handle.peer_certs)
            .await;
        driver.with(|s| s.handle_reauthenticated(handle.id, Instant::now(), result));
    })
    .detach();
}
