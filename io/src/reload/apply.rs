//! One shard's listeners and what a reload does to them: a removed port
//! stops accepting and its clients get DISCONNECT 0x8B; a new one is bound
//! and accepts; a kept one gets the new security for its next handshake
//! and CONNECT, and its open connections are closed (TLS or authentication
//! changed) or re-checked (authorization changed). Connections the change
//! does not touch are left alone.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use glommio::net::TcpListener;
use glommio::Task;
use shardmq_core::broker::ReservedTopics;
use shardmq_core::codec::ReasonCode;
use tracing::{error, info};

use crate::driver::Driver;
use crate::security::ListenerSecurity;
use crate::setup::Reconfig;
use crate::shard::listen::{accept_loop, SecurityCell};
use crate::telemetry::counters::ListenerCounters;
use crate::telemetry::Telemetry;

struct Active {
    name: String,
    addr: SocketAddr,
    security: SecurityCell,
    task: Task<()>,
}

/// The ports one shard accepts on.
pub struct ShardListeners {
    active: Vec<Active>,
}

impl std::fmt::Debug for ShardListeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.active.iter().map(|a| (&a.name, a.addr)))
            .finish()
    }
}

impl ShardListeners {
    /// Starts the accept loops of the ports bound at start-up.
    pub fn start(
        driver: &Rc<Driver>,
        bound: Vec<(String, SocketAddr, TcpListener, Rc<ListenerSecurity>)>,
    ) -> ShardListeners {
        let active = bound
            .into_iter()
            .map(|(name, addr, listener, security)| {
                let security: SecurityCell = Rc::new(RefCell::new(security));
                let task = accept_loop(driver.clone(), name.clone(), listener, security.clone());
                Active {
                    name,
                    addr,
                    security,
                    task,
                }
            })
            .collect();
        ShardListeners { active }
    }

    pub fn names(&self) -> Vec<String> {
        self.active.iter().map(|a| a.name.clone()).collect()
    }

    /// Stops accepting everywhere (shutdown).
    pub async fn cancel_all(self) {
        for a in self.active {
            a.task.cancel().await;
        }
    }

    /// Applies a reload on this shard.
    pub async fn apply(&mut self, driver: &Rc<Driver>, rc: &Reconfig, telemetry: &Telemetry) {
        let shard = driver.id.index();
        driver.with(|s| s.set_limits(rc.limits.clone()));
        let wanted: Vec<_> = rc
            .listeners
            .iter()
            .filter(|l| l.shards.as_ref().is_none_or(|s| s.contains(&shard)))
            .collect();
        // Ports that go away on this shard.
        let mut kept = Vec::new();
        for a in std::mem::take(&mut self.active) {
            if wanted.iter().any(|w| w.name == a.name && w.addr == a.addr) {
                kept.push(a);
            } else {
                a.task.cancel().await;
                let closed = close_clients(driver, &a.name, ReasonCode::ServerShuttingDown);
                info!(shard, listener = %a.name, clients_disconnected = closed, "listener removed");
            }
        }
        self.active = kept;
        for w in wanted {
            let security = Rc::new(w.security.clone());
            if let Some(a) = self.active.iter().find(|a| a.name == w.name) {
                *a.security.borrow_mut() = security.clone();
                if rc.reconnect.contains(&w.name) {
                    let closed = close_clients(driver, &w.name, ReasonCode::ServerShuttingDown);
                    info!(shard, listener = %w.name, clients_disconnected = closed,
                        "listener TLS or authentication changed: its clients reconnect under the new rules");
                } else {
                    recheck_clients(driver, &w.name, &security, rc.recheck.contains(&w.name));
                }
                continue;
            }
            match TcpListener::bind(w.addr) {
                Ok(listener) => {
                    let cell: SecurityCell = Rc::new(RefCell::new(security));
                    let task = accept_loop(driver.clone(), w.name.clone(), listener, cell.clone());
                    self.active.push(Active {
                        name: w.name.clone(),
                        addr: w.addr,
                        security: cell,
                        task,
                    });
                    info!(shard, listener = %w.name, addr = %w.addr, "listener added");
                }
                Err(e) => error!(shard, listener = %w.name, addr = %w.addr, error = %e,
                    "listener added by the reload cannot bind on this shard"),
            }
        }
        telemetry.set_bound(shard, self.names());
    }
}

/// Closes every connection of `listener` with `reason`; returns how many.
fn close_clients(driver: &Rc<Driver>, listener: &str, reason: ReasonCode) -> usize {
    let now = Instant::now();
    let mut n = 0;
    for h in driver.connections() {
        if h.listener == listener && !h.is_closed() {
            driver.with(|s| s.disconnect(h.id, now, reason));
            n += 1;
        }
    }
    n
}

/// Gives the listener's connections its new security; with `recompile`
/// (the authorization policy changed) each admitted client's permissions
/// are compiled again from the identity it proved: a client that may no
/// longer connect is disconnected (0x87), subscriptions no longer allowed
/// are revoked.
fn recheck_clients(
    driver: &Rc<Driver>,
    listener: &str,
    security: &Rc<ListenerSecurity>,
    recompile: bool,
) {
    let now = Instant::now();
    for h in driver.connections() {
        if h.listener != listener {
            continue;
        }
        *h.security.borrow_mut() = security.clone();
        if !recompile {
            continue;
        }
        let identity = h.identity.borrow().clone();
        let Some(identity) = identity else {
            // Not admitted yet: its admission runs under the policy it
            // started with; the CONNECT is decided within its timeout.
            continue;
        };
        let Some(client_id) = driver.peek(|s| s.client_id(h.id)) else {
            continue;
        };
        let permissions =
            shardmq_auth::permissions(security.authorization.as_deref(), &identity, &client_id);
        if !permissions.can_connect() {
            ListenerCounters::bump(&h.counters.authz_denied, "connect");
            info!(listener, client = ?client_id, "authorization changed: the client may no longer connect");
            driver.with(|s| s.disconnect(h.id, now, ReasonCode::NotAuthorized));
            continue;
        }
        driver.with(|s| s.replace_permissions(h.id, Box::new(ReservedTopics(permissions))));
    }
}
