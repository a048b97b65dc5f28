//! The io side of one connection: how to reach its reader and writer tasks,
//! and what the listener demands of it. The protocol state is the shard's
//! (`broker::Shard`); this holds only wake-ups and the listener's security.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use rustls_pki_types::CertificateDer;
use shardmq_core::broker::ConnId;

use crate::security::ListenerSecurity;
use crate::telemetry::counters::ListenerCounters;

#[derive(Debug)]
pub struct ConnHandle {
    pub id: ConnId,
    /// Listener name and peer address, for logs.
    pub listener: String,
    pub peer: String,
    /// The listener's security; a reload swaps it (re-authentication then
    /// uses the new policy).
    pub security: RefCell<Rc<ListenerSecurity>>,
    /// This shard's counters of the listener.
    pub counters: Rc<ListenerCounters>,
    /// Who the client proved to be, once admitted: its permissions are
    /// compiled again from it when the authorization policy changes.
    pub identity: RefCell<Option<shardmq_auth::Identity>>,
    /// The client's TLS certificate chain (leaf first), empty without one.
    pub peer_certs: Vec<CertificateDer<'static>>,
    /// Who the client is for the log (certificate subject, user name,
    /// token subject, "anonymous") and how it came in, once admitted.
    pub principal: RefCell<String>,
    pub admitted: RefCell<Option<Admitted>>,
    wake_tx: LocalSender<()>,
    pub wake_rx: LocalReceiver<()>,
    /// Raised by `close`: the reader stops, the writer flushes and closes.
    closed: Cell<bool>,
    closed_tx: LocalSender<()>,
    pub closed_rx: LocalReceiver<()>,
    /// Signalled by the writer after each write, for a reader waiting on
    /// the transmit backlog (`Flow::WaitForWriter`).
    pub drained_tx: LocalSender<()>,
    pub drained_rx: LocalReceiver<()>,
}

impl ConnHandle {
    pub fn new(
        id: ConnId,
        listener: String,
        peer: String,
        security: Rc<ListenerSecurity>,
        counters: Rc<ListenerCounters>,
        peer_certs: Vec<CertificateDer<'static>>,
    ) -> ConnHandle {
        let (wake_tx, wake_rx) = local_channel::new_bounded(1);
        let (closed_tx, closed_rx) = local_channel::new_bounded(1);
        let (drained_tx, drained_rx) = local_channel::new_bounded(1);
        ConnHandle {
            id,
            listener,
            peer,
            security: RefCell::new(security),
            counters,
            identity: RefCell::new(None),
            peer_certs,
            principal: RefCell::new(String::new()),
            admitted: RefCell::new(None),
            wake_tx,
            wake_rx,
            closed: Cell::new(false),
            closed_tx,
            closed_rx,
            drained_tx,
            drained_rx,
        }
    }

    /// Runs the writer; a pending wake-up already covers this one.
    pub fn wake(&self) {
        let _ = self.wake_tx.try_send(());
    }

    /// The connection is over: the reader stops, the writer flushes what is
    /// left and closes the socket.
    pub fn close(&self) {
        self.closed.set(true);
        let _ = self.closed_tx.try_send(());
        self.wake();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }
}

/// How an admitted client came in, for the operator's "client connected".
#[derive(Debug, Clone, Copy)]
pub struct Admitted {
    pub method: shardmq_auth::MethodKind,
    pub protocol: shardmq_core::codec::ProtocolVersion,
    pub clean_start: bool,
}
