//! One worker's connection to one server: many requests in flight, replies matched by request id.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;

use super::WorkerError;
use crate::proto::request::Outstanding;
use crate::proto::wire::{Frame, Limits, Message, OutFrame, PeerRole, WireError};
use crate::transport::handshake::{self, Auth};
use crate::transport::{LinkCounters, LinkTx, Net};

/// Requests in flight per connection before a caller waits for a slot.
const MAX_IN_FLIGHT: usize = 4096;

struct Pending {
    table: Outstanding<oneshot::Sender<Frame>>,
    /// Why the connection is gone, once it is.
    closed: Option<String>,
}

pub(crate) struct RemoteServer {
    rank: u32,
    tx: LinkTx,
    pending: Arc<Mutex<Pending>>,
    permits: Arc<Semaphore>,
    reader: JoinHandle<()>,
}

/// A request that has been queued for sending; await [`Sent::reply`] for its answer.
pub(crate) struct Sent {
    reply: oneshot::Receiver<Frame>,
    pending: Arc<Mutex<Pending>>,
    server: u32,
    /// The request's in-flight slot, held until the reply arrives or the request is dropped.
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Sent {
    /// The reply, or why the connection was lost.
    pub(crate) async fn reply(self) -> Result<Frame, WorkerError> {
        let Self { reply, pending, server, _slot } = self;
        reply.await.map_err(|_| lost(&pending, server))
    }
}

fn lost(pending: &Mutex<Pending>, server: u32) -> WorkerError {
    let reason = pending.lock().unwrap_or_else(PoisonError::into_inner).closed.clone();
    WorkerError::ConnectionLost { server, reason: reason.unwrap_or_else(|| "connection closed".into()) }
}

impl Drop for RemoteServer {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl RemoteServer {
    /// Connects to server `rank` at `addr` and says hello as a worker.
    pub(crate) async fn connect(
        net: &Net,
        addr: &str,
        rank: u32,
        auth: &Auth,
        limits: Limits,
        timeout: Duration,
    ) -> Result<Self, WorkerError> {
        let lost = |reason: String| WorkerError::ConnectionLost { server: rank, reason };
        let mut conn = tokio::time::timeout(timeout, net.connect(addr, limits))
            .await
            .map_err(|_| lost(format!("connecting to {addr} timed out after {timeout:?}")))?
            .map_err(|e| lost(format!("cannot connect to {addr}: {e}")))?;
        handshake::initiate(&mut conn, auth, PeerRole::Worker, timeout).await.map_err(|e| lost(e.to_string()))?;
        let table = Outstanding::new(2 * MAX_IN_FLIGHT);
        let pending = Arc::new(Mutex::new(Pending { table, closed: None }));
        let mut rx = conn.rx;
        let shared = pending.clone();
        let reader = tokio::spawn(async move {
            let reason = loop {
                match rx.recv().await {
                    Ok(Some(frame)) if frame.request_id == 0 => {
                        // Unsolicited: the server is closing this connection and says why.
                        break match frame.message() {
                            Ok(Message::Error { message, .. }) => {
                                format!("server {rank} closed the connection: {message}")
                            }
                            _ => format!("server {rank} sent an unsolicited {} message", frame.kind),
                        };
                    }
                    Ok(Some(frame)) => {
                        let mut p = shared.lock().unwrap_or_else(PoisonError::into_inner);
                        match p.table.complete(frame.request_id) {
                            // The requester may have given up (its future was dropped); that is fine.
                            Ok(handle) => drop(handle.send(frame)),
                            Err(e) => break format!("server {rank} broke the protocol: {e}"),
                        }
                    }
                    Ok(None) => break format!("server {rank} closed the connection"),
                    Err(e) => break format!("connection to server {rank} failed: {e}"),
                }
            };
            let mut p = shared.lock().unwrap_or_else(PoisonError::into_inner);
            p.closed = Some(reason);
            // Dropping the handles wakes every waiter, which then reads `closed`.
            p.table.drain().for_each(drop);
        });
        Ok(Self { rank, tx: conn.tx, pending, permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)), reader })
    }

    /// Sends the frame `build` makes for a fresh request id and waits for its reply.
    pub(crate) async fn request(
        &self,
        build: impl FnOnce(u64) -> Result<OutFrame, WireError>,
    ) -> Result<Frame, WorkerError> {
        self.send(build).await?.reply().await
    }

    /// Queues the frame `build` makes for a fresh request id and returns once it is queued:
    /// frames of one connection reach the server in the order they were queued, so a request
    /// queued after this one is served after it.
    pub(crate) async fn send(
        &self,
        build: impl FnOnce(u64) -> Result<OutFrame, WireError>,
    ) -> Result<Sent, WorkerError> {
        let slot = self.permits.clone().acquire_owned().await.expect("the semaphore is never closed");
        let (done, reply) = oneshot::channel();
        let id = {
            let mut p = self.lock();
            if let Some(reason) = &p.closed {
                return Err(WorkerError::ConnectionLost { server: self.rank, reason: reason.clone() });
            }
            // The semaphore bounds live requests; cancelled ones keep their entry until their
            // reply arrives, so the table can still be full.
            p.table.insert(done).map_err(|e| WorkerError::Overloaded { server: self.rank, outstanding: e.0 })?
        };
        let frame = match build(id) {
            Ok(f) => f,
            Err(e) => {
                let _ = self.lock().table.complete(id);
                return Err(WorkerError::Encode(e));
            }
        };
        if self.tx.send(frame).await.is_err() {
            let _ = self.lock().table.complete(id);
            return Err(lost(&self.pending, self.rank));
        }
        Ok(Sent { reply, pending: self.pending.clone(), server: self.rank, _slot: slot })
    }

    pub(crate) fn counters(&self) -> LinkCounters {
        self.tx.stats().snapshot()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
