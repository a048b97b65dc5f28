//! One client connection on its shard: a reader task (bytes -> frames ->
//! `Connection::handle_packet` -> broker events), a writer task (coalesces
//! everything `poll_transmit` has into one write per wake-up) and a timer task
//! (keep-alive and CONNECT deadlines). An error closes this connection only.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_lite::FutureExt;
use rustls_pki_types::CertificateDer;
use shardmq_core::codec::{Decoder, Inbox};
use shardmq_core::limits::CONNECT_SIZE_MAX;
use shardmq_core::session::{Connection, Event};
use tracing::{debug, trace};

use crate::mesh::SessionId;
use crate::security::ListenerSecurity;
use crate::shard::{ConnCell, Shard};

/// Bytes read per socket read; frames larger than this are assembled over
/// several reads, bounded by the decoder's maximum packet size (a small one
/// until CONNECT is accepted) and the shard's budget for partial packets
/// (`Shard::hold_partial`).
const READ_CHUNK: usize = 16 * 1024;
/// Soft bound of one coalesced write. PERF: on a drain the kernel's send
/// path (copy, loopback transmit, the reader's wake-up) is half the shard's
/// time; 256 KiB writes take a quarter of the syscalls and wake-ups of 64 KiB
/// ones (docs/PERFORMANCE.md).
const WRITE_BATCH_BYTES: usize = 256 * 1024;
/// A writer whose buffer grew past this gives it back once it has nothing
/// to send: only connections that are draining hold a full batch.
const WRITE_BUF_IDLE_BYTES: usize = 16 * 1024;
/// Coalesced writes a writer may do before yielding to other tasks.
/// (4 x 256 KiB: the same 1 MiB per turn as 16 x 64 KiB before.)
const WRITE_BATCHES_PER_TURN: u32 = 4;
/// Control packets queued for a client before its reader stops reading.
const TRANSMIT_BACKLOG_MAX: usize = 4096;
/// How long the writer keeps flushing after the connection closed.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves one accepted connection until it closes. `peer_certs` is the
/// client's TLS certificate chain (leaf first), empty without one.
pub async fn serve<S>(
    shard: Rc<Shard>,
    stream: S,
    peer: String,
    security: Rc<ListenerSecurity>,
    peer_certs: Vec<CertificateDer<'static>>,
) where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let limits = shard.config.limits.clone();
    let packet_size_max = limits.packet_size_max.get();
    let cell = Rc::new(ConnCell::new(Connection::new(Instant::now(), limits)));
    shard.conns.borrow_mut().push(Rc::downgrade(&cell));
    shard
        .stats
        .connections
        .set(shard.stats.connections.get() + 1);
    let (mut reader, writer) = futures_lite::io::split(stream);

    let writer_task = glommio::spawn_local(write_loop(cell.clone(), writer));
    let timer_task = glommio::spawn_local(timer_loop(shard.clone(), cell.clone()));

    // Until the CONNECT is accepted, an unauthenticated peer may send only
    // a CONNECT-sized packet (`CONNECT_SIZE_MAX`, docs/SECURITY.md).
    let mut inbox = Inbox::new(Decoder::new(packet_size_max.min(CONNECT_SIZE_MAX)));
    let mut connect_limit = true;
    let mut session: Option<SessionId> = None;
    let auth = ConnAuth {
        security,
        peer_certs,
    };
    let mut chunk = vec![0u8; READ_CHUNK];
    'read: loop {
        if cell.closed.get() {
            break;
        }
        // A client that sends without reading: stop reading it until the
        // writer has drained its acknowledgements (bounded memory).
        while cell.conn.borrow().transmit_backlog() > TRANSMIT_BACKLOG_MAX && !cell.closed.get() {
            cell.wake();
            let drained = async { cell.drained_rx.recv().await.is_some() }
                .or(async {
                    let _ = cell.closed_rx.recv().await;
                    false
                })
                .await;
            if !drained {
                break 'read;
            }
        }
        shard.hold_partial(&cell, inbox.partial_len() as u64);
        if cell.closed.get() {
            break;
        }
        let read = async { Some(reader.read(&mut chunk).await) }
            .or(async {
                let _ = cell.closed_rx.recv().await;
                None
            })
            .await;
        let n = match read {
            Some(Ok(0)) | Some(Err(_)) | None => break,
            Some(Ok(n)) => n,
        };
        inbox.push(&chunk[..n]);
        // Every packet of this chunk arrived now (keep-alive, expiry); read
        // again after an await, which may take long (routing backpressure).
        let mut now = Instant::now();
        // Fairness: a glommio read completes without yielding while the
        // socket has data, so a busy publisher would otherwise keep the
        // shard and starve every other task (subscribers' writers first).
        futures_lite::future::yield_now().await;
        loop {
            // PERF: the 4-byte acknowledgements a draining subscriber sends
            // for every message skip `Packet` (a ~470-byte value).
            let events = if let Some(ack) = inbox.decode_ack() {
                let mut conn = cell.conn.borrow_mut();
                conn.handle_short_ack(now, ack);
                conn.has_events()
            } else {
                match inbox.decode() {
                    Ok(Some(packet)) => {
                        trace!(%peer, packet = ?packet.packet_type(), "received");
                        let mut conn = cell.conn.borrow_mut();
                        conn.handle_packet(now, packet);
                        conn.has_events()
                    }
                    Ok(None) => break,
                    Err(e) => {
                        debug!(%peer, error = %e, "protocol violation");
                        let version = inbox.decoder().version();
                        cell.conn.borrow_mut().handle_decode_error(&e, version);
                        process_events(&shard, &cell, &auth, &mut session).await;
                        cell.wake();
                        break 'read;
                    }
                }
            };
            // PERF: acknowledgements raise no event; skip the call.
            if events {
                process_events(&shard, &cell, &auth, &mut session).await;
                now = Instant::now();
                if connect_limit && cell.conn.borrow().is_connected() {
                    connect_limit = false;
                    inbox.set_max_packet_size(packet_size_max);
                }
            }
            cell.wake();
            if cell.conn.borrow().is_closed() {
                break 'read;
            }
        }
    }
    if !cell.conn.borrow().is_closed() {
        cell.conn.borrow_mut().handle_connection_lost();
    }
    // The timer or a shutdown may have closed it while we were reading.
    process_events(&shard, &cell, &auth, &mut session).await;
    drop(inbox);
    shard.hold_partial(&cell, 0);
    cell.closed.set(true);
    cell.wake();
    timer_task.cancel().await;
    writer_task.await;
    debug!(%peer, reason = ?cell.conn.borrow().close_reason(), "connection closed");
}

/// What the connection's listener demands, and what the client showed.
struct ConnAuth {
    security: Rc<ListenerSecurity>,
    peer_certs: Vec<CertificateDer<'static>>,
}

/// Acts on everything the state machine asked of the broker.
async fn process_events(
    shard: &Rc<Shard>,
    cell: &Rc<ConnCell>,
    auth: &ConnAuth,
    session: &mut Option<SessionId>,
) {
    // Subscriptions of this batch: made visible on every shard (barrier)
    // before SUBACK leaves, then their retained messages are sent.
    let mut subscribed = Vec::new();
    loop {
        let Some(event) = cell.conn.borrow_mut().poll_event() else {
            break;
        };
        let now = Instant::now();
        match event {
            Event::Connect(request) => {
                let client_id = if request.client_id.is_empty() {
                    assigned_client_id(shard)
                } else {
                    request.client_id.clone()
                };
                let admitted = match auth
                    .security
                    .admit(&request, &client_id, &auth.peer_certs)
                    .await
                {
                    Ok(admitted) => admitted,
                    Err(reason) => {
                        debug!(shard = shard.id, client = %client_id, ?reason, "CONNECT refused");
                        cell.conn.borrow_mut().reject(reason);
                        continue;
                    }
                };
                let (id, existing) = shard.claim_session(&client_id, now).await;
                let assigned = request.client_id.is_empty().then(|| client_id.clone());
                let mut conn = cell.conn.borrow_mut();
                conn.accept(
                    Instant::now(),
                    existing,
                    assigned,
                    Box::new(admitted.permissions),
                );
                conn.set_credential_expiry(admitted.expires_at);
                drop(conn);
                cell.rearm();
                *session = Some(id);
                shard.attach(id, cell.clone());
            }
            Event::Publish { message, ack } => {
                let reason = shard.route(&message, now).await;
                if let Some(ack) = ack {
                    cell.conn.borrow_mut().publish_done(ack, reason);
                }
            }
            Event::Subscribed {
                key,
                subscription,
                send_retained,
            } => {
                let Some(id) = *session else { continue };
                let client_id = cell.conn.borrow().client_id().cloned().unwrap_or_default();
                shard.index_add(
                    id,
                    &client_id,
                    &key,
                    &subscription.filter,
                    subscription.options,
                    subscription.id,
                );
                if subscribed.is_empty() {
                    cell.hold.set(cell.hold.get() + 1);
                }
                subscribed.push((subscription, send_retained));
            }
            Event::ReAuthenticate { method, data } => {
                let client_id = cell.conn.borrow().client_id().cloned().unwrap_or_default();
                let result = auth
                    .security
                    .reauthenticate(&client_id, &method, data.as_deref(), &auth.peer_certs)
                    .await;
                cell.conn.borrow_mut().reauthenticate_done(result);
                cell.rearm();
            }
            Event::Unsubscribed { key, filter } => {
                if let Some(id) = *session {
                    shard.unsubscribe(id, &key, &filter);
                }
            }
            Event::Closed {
                reason,
                session: state,
                will,
            } => {
                debug!(shard = shard.id, ?reason, "session closed");
                cell.closed.set(true);
                let _ = cell.closed_tx.try_send(());
                if let Some(id) = *session {
                    let client_id = state
                        .as_ref()
                        .map(|s| s.client_id.clone())
                        .or_else(|| cell.conn.borrow().client_id().cloned())
                        .unwrap_or_default();
                    shard.detach(id, &client_id, state, will, now);
                }
            }
        }
    }
    if !subscribed.is_empty() {
        shard.barrier_all().await;
        cell.hold.set(cell.hold.get().saturating_sub(1));
        cell.wake();
        for (subscription, send_retained) in subscribed {
            if send_retained {
                shard
                    .send_retained(
                        cell,
                        subscription.filter.topic_filter(),
                        subscription.options,
                        subscription.id,
                    )
                    .await;
            }
        }
    }
}

fn assigned_client_id(shard: &Shard) -> bytestring::ByteString {
    // Unique broker-wide: the shard id and a per-shard counter, plus the
    // process start time so ids differ across restarts.
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("shardmq-{}-{}-{n}", shard.id, std::process::id()).into()
}

async fn write_loop<W: AsyncWrite + Unpin>(cell: Rc<ConnCell>, mut writer: W) {
    let mut buf = BytesMut::with_capacity(WRITE_BUF_IDLE_BYTES);
    let mut batches = 0u32;
    // The shard lends its disk buffer so spilled messages drain.
    let shard = crate::shard::SHARD.with(|s| s.borrow().clone());
    loop {
        while cell.hold.get() == 0 || cell.closed.get() {
            buf.clear();
            let now = Instant::now();
            let n = match &shard {
                Some(shard) => shard.poll_transmit(&cell, now, &mut buf, WRITE_BATCH_BYTES),
                None => cell
                    .conn
                    .borrow_mut()
                    .poll_transmit(now, &mut buf, WRITE_BATCH_BYTES),
            };
            if n == 0 && buf.is_empty() {
                break;
            }
            let write = async { Some(writer.write_all(&buf).await) }
                .or(async {
                    // A peer that stops reading cannot hold a closed
                    // connection open forever.
                    if cell.closed.get() {
                        glommio::timer::sleep(CLOSE_FLUSH_TIMEOUT).await;
                        None
                    } else {
                        std::future::pending().await
                    }
                })
                .await;
            match write {
                Some(Ok(())) => {
                    let _ = cell.drained_tx.try_send(());
                    // Output before input: a writer keeps the shard for up to
                    // WRITE_BATCHES_PER_TURN batches while readers get one
                    // chunk per turn, so delivery keeps up with intake.
                    batches += 1;
                    if batches.is_multiple_of(WRITE_BATCHES_PER_TURN) {
                        futures_lite::future::yield_now().await;
                    }
                }
                _ => {
                    cell.closed.set(true);
                    let _ = cell.closed_tx.try_send(());
                    return;
                }
            }
        }
        let _ = writer.flush().await;
        if cell.closed.get() {
            let _ = writer.close().await;
            return;
        }
        if buf.capacity() > WRITE_BUF_IDLE_BYTES {
            buf = BytesMut::with_capacity(WRITE_BUF_IDLE_BYTES);
        }
        if cell.wake_rx.recv().await.is_none() {
            return;
        }
    }
}

async fn timer_loop(shard: Rc<Shard>, cell: Rc<ConnCell>) {
    loop {
        if cell.closed.get() {
            return;
        }
        let deadline = cell.conn.borrow().poll_timeout();
        let wait = match deadline {
            Some(at) => at.saturating_duration_since(Instant::now()),
            // Nothing scheduled (e.g. waiting for the broker): look again soon.
            None => Duration::from_secs(1),
        };
        glommio::timer::sleep(wait.max(Duration::from_millis(1)))
            .or(async {
                let _ = cell.rearm_rx.recv().await;
            })
            .await;
        let now = Instant::now();
        if cell
            .conn
            .borrow()
            .poll_timeout()
            .is_some_and(|at| at <= now)
        {
            cell.conn.borrow_mut().handle_timeout(now);
            if cell.conn.borrow().is_closed() {
                debug!(shard = shard.id, "deadline passed, closing");
                cell.closed.set(true);
                let _ = cell.closed_tx.try_send(());
                cell.wake();
            }
        }
    }
}

/// Graceful shutdown of one connection: DISCONNECT 0x8B (v5), then close.
pub fn shut_down(cell: &ConnCell) {
    cell.conn.borrow_mut().shut_down();
    cell.closed.set(true);
    let _ = cell.closed_tx.try_send(());
    cell.wake();
}
