//! The io side of one connection: how to reach its reader and writer tasks,
//! and what the listener demands of it. The protocol state is the shard's
//! (`broker::Shard`); this holds only wake-ups and the listener's security.

use std::cell::RefCell;
use std::rc::Rc;

use rustls_pki_types::CertificateDer;
use shardmq_core::broker::ConnId;

use super::signal::Signal;
use super::writer::WriteSlot;
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
    /// Raised when the shard has output for the writer.
    pub wake: Signal,
    /// Raised (and kept raised) by `close`: the reader stops, the writer
    /// flushes and closes.
    pub closed: Signal,
    /// Raised by the writer after each write, for a reader waiting on the
    /// transmit backlog (`Flow::WaitForWriter`).
    pub drained: Signal,
    /// The write half, written through at once while the writer task is
    /// idle (`writer::write_now`).
    pub write: WriteSlot,
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
            wake: Signal::default(),
            closed: Signal::default(),
            drained: Signal::default(),
            write: WriteSlot::default(),
        }
    }

    /// Runs the writer; a pending wake-up already covers this one.
    pub fn wake(&self) {
        self.wake.raise();
    }

    /// The connection is over: the reader stops, the writer flushes what is
    /// left and closes the socket.
    pub fn close(&self) {
        self.closed.raise();
        self.wake();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_raised()
    }
}

/// How an admitted client came in, for the operator's "client connected".
#[derive(Debug, Clone, Copy)]
pub struct Admitted {
    pub method: shardmq_auth::MethodKind,
    pub protocol: shardmq_core::codec::ProtocolVersion,
    pub clean_start: bool,
}
