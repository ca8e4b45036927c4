//! A node's session with the coordinator: join, learn the job, wait for start, meet at barriers,
//! leave, and hear about shutdown or abort.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::proto::request::Outstanding;
use crate::proto::wire::{Assign, Join, Limits, Message, PeerRole};
use crate::transport::handshake::{self, Auth, HandshakeError};
use crate::transport::{LinkTx, Net};

/// Where the node stands in the job's life.
#[derive(Clone, Debug)]
pub(crate) enum Phase {
    Joining,
    Assigned(Arc<Assign>),
    Started,
    Shutdown,
    Failed(String),
}

struct Barriers {
    pending: Outstanding<oneshot::Sender<Vec<f64>>>,
    closed: Option<String>,
}

pub(crate) struct Session {
    tx: LinkTx,
    barriers: Arc<Mutex<Barriers>>,
    phase: watch::Receiver<Phase>,
    reader: JoinHandle<()>,
    /// Our address as the coordinator sees the connection (TCP only).
    pub(crate) local: Option<std::net::SocketAddr>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Session {
    /// Connects to the coordinator, retrying refused connections until `deadline`.
    pub(crate) async fn connect(net: &Net, addr: &str, auth: &Auth, deadline: Instant) -> Result<Self, String> {
        let mut backoff = Duration::from_millis(50);
        let mut conn = loop {
            let attempt = tokio::time::timeout_at(deadline, net.connect(addr, Limits::default())).await;
            match attempt {
                Ok(Ok(conn)) => break conn,
                Ok(Err(e)) if Instant::now() + backoff < deadline => {
                    tracing::debug!("coordinator at {addr} not reachable yet: {e}");
                    // Retrying is the point here: the coordinator may start after this node.
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Ok(Err(e)) => return Err(format!("cannot reach the coordinator at {addr}: {e}")),
                Err(_) => return Err(format!("cannot reach the coordinator at {addr}: timed out")),
            }
        };
        let timeout = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
        handshake::initiate(&mut conn, auth, PeerRole::Node, timeout).await.map_err(|e| match e {
            HandshakeError::Refused { reason, .. } => format!("the coordinator at {addr} refused this node: {reason}"),
            other => format!("coordinator at {addr}: {other}"),
        })?;
        let barriers = Arc::new(Mutex::new(Barriers { pending: Outstanding::new(1024), closed: None }));
        let (phase_tx, phase) = watch::channel(Phase::Joining);
        let shared = barriers.clone();
        let mut rx = conn.rx;
        let reader = tokio::spawn(async move {
            let set = |p: Phase| phase_tx.send_replace(p);
            let failure = loop {
                let frame = match rx.recv().await {
                    Ok(Some(f)) => f,
                    Ok(None) => break "the coordinator closed the connection".to_owned(),
                    Err(e) => break format!("lost the coordinator connection: {e}"),
                };
                match frame.message() {
                    Ok(Message::Release { values, .. }) => {
                        let mut b = shared.lock().unwrap_or_else(PoisonError::into_inner);
                        match b.pending.complete(frame.request_id) {
                            Ok(waiter) => drop(waiter.send(values)),
                            Err(e) => break format!("the coordinator broke the protocol: {e}"),
                        }
                    }
                    Ok(Message::Assign(a)) => drop(set(Phase::Assigned(Arc::new(a)))),
                    Ok(Message::Start) => drop(set(Phase::Started)),
                    Ok(Message::Shutdown) => {
                        set(Phase::Shutdown);
                        return;
                    }
                    Ok(Message::Abort { reason }) => break format!("the job was aborted: {reason}"),
                    Ok(Message::Refused { reason }) => break format!("the coordinator refused this node: {reason}"),
                    Ok(other) => break format!("the coordinator sent an unexpected {} message", other.kind()),
                    Err(e) => break format!("the coordinator sent an undecodable message: {e}"),
                }
            };
            let mut b = shared.lock().unwrap_or_else(PoisonError::into_inner);
            b.closed = Some(failure.clone());
            b.pending.drain().for_each(drop);
            set(Phase::Failed(failure));
        });
        Ok(Self { tx: conn.tx, barriers, phase, reader, local: conn.local })
    }

    pub(crate) async fn send(&self, msg: Message) -> Result<(), String> {
        let frame = msg.encode(0).map_err(|e| e.to_string())?;
        self.tx.send(frame).await.map_err(|_| self.closed_reason())
    }

    pub(crate) async fn join(&self, join: Join) -> Result<(), String> {
        self.send(Message::Join(join)).await
    }

    /// Waits until the phase satisfies `want`, or fails if the job fails first.
    pub(crate) async fn wait_for<T>(&self, mut want: impl FnMut(&Phase) -> Option<T>) -> Result<T, String> {
        let mut phase = self.phase.clone();
        loop {
            if let Phase::Failed(reason) = &*phase.borrow_and_update() {
                return Err(reason.clone());
            }
            if let Some(t) = want(&phase.borrow()) {
                return Ok(t);
            }
            if phase.changed().await.is_err() {
                return Err(self.closed_reason());
            }
        }
    }

    /// Resolves when the job fails (never, if it does not).
    pub(crate) async fn failed(&self) -> String {
        self.wait_for(|_| None::<()>).await.expect_err("waiting for nothing only ends in failure")
    }

    pub(crate) async fn barrier(&self, worker: u32, id: u64, values: Vec<f64>) -> Result<Vec<f64>, String> {
        let (done, released) = oneshot::channel();
        let request_id = {
            let mut b = self.barriers.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(reason) = &b.closed {
                return Err(reason.clone());
            }
            b.pending.insert(done).map_err(|e| e.to_string())?
        };
        let frame = Message::Barrier { id, worker, values }.encode(request_id).map_err(|e| e.to_string())?;
        self.tx.send(frame).await.map_err(|_| self.closed_reason())?;
        released.await.map_err(|_| self.closed_reason())
    }

    /// Waits until everything sent has been written out, before the process may exit.
    pub(crate) async fn flush(&self) {
        self.tx.flush().await;
    }

    fn closed_reason(&self) -> String {
        self.barriers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed
            .clone()
            .unwrap_or_else(|| "the coordinator connection is closed".into())
    }
}
