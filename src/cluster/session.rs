//! A node's session with the coordinator: join, learn the job, wait for start, meet at barriers,
//! leave, and hear about shutdown or abort.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::proto::consistency::ClockEvent;
use crate::proto::request::Outstanding;
use crate::proto::wire::{Assign, Join, Limits, Message, PeerRole};
use crate::transport::handshake::{self, Auth, HandshakeError};
use crate::transport::{LinkTx, Net};

/// How far the job has come, as this node has heard. Stages only move forward, so a node that
/// waits for one stage is also satisfied by any later one (a fast job may start and shut down
/// before a slow node looks).
#[derive(Clone, Copy, Debug, Eq, Ord, PartialEq, PartialOrd)]
pub(crate) enum Stage {
    Joining,
    Assigned,
    Started,
    Shutdown,
}

#[derive(Clone, Debug)]
struct State {
    stage: Stage,
    assign: Option<Arc<Assign>>,
    failed: Option<String>,
}

/// Requests to the coordinator awaiting their reply (barriers, step reports).
struct Barriers {
    pending: Outstanding<oneshot::Sender<Message>>,
    closed: Option<String>,
}

pub(crate) struct Session {
    tx: LinkTx,
    barriers: Arc<Mutex<Barriers>>,
    state: watch::Receiver<State>,
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
    /// Connects to the coordinator, retrying refused connections until `deadline`. Broadcasts about
    /// finished steps go to `steps` (the node's server, if it hosts one).
    pub(crate) async fn connect(
        net: &Net,
        addr: &str,
        auth: &Auth,
        deadline: Instant,
        steps: mpsc::UnboundedSender<ClockEvent>,
    ) -> Result<Self, String> {
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
        let (state_tx, state) = watch::channel(State { stage: Stage::Joining, assign: None, failed: None });
        let shared = barriers.clone();
        let mut rx = conn.rx;
        let reply = conn.tx.clone();
        let coordinator = addr.to_owned();
        let reader = tokio::spawn(async move {
            let advance = |stage: Stage| state_tx.send_modify(|s| s.stage = s.stage.max(stage));
            // Until the job is assigned the node's join deadline bounds the wait; after that the
            // coordinator speaks at least every heartbeat interval, and five missed ones mean it
            // is gone (stopped, or its host cut off).
            let mut silence: Option<Duration> = None;
            let failure = loop {
                let next = match silence {
                    None => rx.recv().await,
                    Some(limit) => match tokio::time::timeout(limit, rx.recv()).await {
                        Ok(r) => r,
                        Err(_) => {
                            break format!(
                                "the coordinator at {coordinator} stopped responding: nothing heard for {limit:?}"
                            );
                        }
                    },
                };
                let frame = match next {
                    Ok(Some(f)) => f,
                    Ok(None) => break format!("the coordinator at {coordinator} closed the connection"),
                    Err(e) => break format!("lost the coordinator connection: {e}"),
                };
                match frame.message() {
                    Ok(reply @ (Message::Release { .. } | Message::ClockAck { .. })) => {
                        let mut b = shared.lock().unwrap_or_else(PoisonError::into_inner);
                        match b.pending.complete(frame.request_id) {
                            Ok(waiter) => drop(waiter.send(reply)),
                            Err(e) => break format!("the coordinator broke the protocol: {e}"),
                        }
                    }
                    Ok(Message::Progress { complete }) => drop(steps.send(ClockEvent::Progress { complete })),
                    Ok(Message::Commit { step, workers }) => drop(steps.send(ClockEvent::Commit { step, workers })),
                    Ok(Message::Heartbeat) => {
                        let answer = Message::Heartbeat.encode(0).expect("an empty message encodes");
                        if reply.send(answer).await.is_err() {
                            break "the coordinator connection is closed".to_owned();
                        }
                    }
                    Ok(Message::Assign(a)) => {
                        silence = Some(Duration::from_millis(u64::from(a.heartbeat_ms).max(10)) * 5);
                        state_tx.send_modify(|s| {
                            s.assign = Some(Arc::new(a));
                            s.stage = s.stage.max(Stage::Assigned);
                        });
                    }
                    Ok(Message::Start) => advance(Stage::Started),
                    Ok(Message::Shutdown) => {
                        advance(Stage::Shutdown);
                        // Keep the state alive: waiters read it after this task ends.
                        std::future::pending::<()>().await;
                    }
                    Ok(Message::Abort { reason }) => break format!("the job was aborted: {reason}"),
                    Ok(Message::Refused { reason }) => break format!("the coordinator refused this node: {reason}"),
                    Ok(other) => break format!("the coordinator sent an unexpected {} message", other.kind()),
                    Err(e) => break format!("the coordinator sent an undecodable message: {e}"),
                }
            };
            {
                let mut b = shared.lock().unwrap_or_else(PoisonError::into_inner);
                b.closed = Some(failure.clone());
                b.pending.drain().for_each(drop);
            }
            state_tx.send_modify(|s| s.failed = Some(failure));
            std::future::pending::<()>().await;
        });
        Ok(Self { tx: conn.tx, barriers, state, reader, local: conn.local })
    }

    pub(crate) async fn send(&self, msg: Message) -> Result<(), String> {
        let frame = msg.encode(0).map_err(|e| e.to_string())?;
        self.tx.send(frame).await.map_err(|_| self.closed_reason())
    }

    pub(crate) async fn join(&self, join: Join) -> Result<(), String> {
        self.send(Message::Join(join)).await
    }

    /// Waits until the job reaches `stage` (or a later one); fails if the job fails first.
    pub(crate) async fn wait_for(&self, stage: Stage) -> Result<(), String> {
        let mut state = self.state.clone();
        let reached = state.wait_for(|s| s.failed.is_some() || s.stage >= stage).await;
        match reached {
            Ok(s) => match &s.failed {
                Some(reason) => Err(reason.clone()),
                None => Ok(()),
            },
            Err(_) => Err(self.closed_reason()),
        }
    }

    /// The assignment, once the coordinator has sent it.
    pub(crate) async fn assignment(&self) -> Result<Arc<Assign>, String> {
        self.wait_for(Stage::Assigned).await?;
        Ok(self.state.borrow().assign.clone().expect("the assigned stage comes with its assignment"))
    }

    /// Resolves when the job fails (never, if it does not).
    pub(crate) async fn failed(&self) -> String {
        let mut state = self.state.clone();
        match state.wait_for(|s| s.failed.is_some()).await {
            Ok(s) => s.failed.clone().expect("waited for a failure"),
            Err(_) => self.closed_reason(),
        }
    }

    pub(crate) async fn barrier(&self, worker: u32, id: u64, values: Vec<f64>) -> Result<Vec<f64>, String> {
        match self.request(Message::Barrier { id, worker, values }).await? {
            Message::Release { values, .. } => Ok(values),
            other => Err(format!("the coordinator answered a barrier with {}", other.kind())),
        }
    }

    /// Reports that `worker` finished `step`; returns its next step and whether the step counted.
    pub(crate) async fn clock(&self, worker: u32, step: u64) -> Result<(u64, bool), String> {
        match self.request(Message::Clock { worker, step }).await? {
            Message::ClockAck { next_step, admitted } => Ok((next_step, admitted)),
            other => Err(format!("the coordinator answered a step report with {}", other.kind())),
        }
    }

    async fn request(&self, msg: Message) -> Result<Message, String> {
        let (done, answered) = oneshot::channel();
        let request_id = {
            let mut b = self.barriers.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(reason) = &b.closed {
                return Err(reason.clone());
            }
            b.pending.insert(done).map_err(|e| e.to_string())?
        };
        let frame = msg.encode(request_id).map_err(|e| e.to_string())?;
        self.tx.send(frame).await.map_err(|_| self.closed_reason())?;
        answered.await.map_err(|_| self.closed_reason())
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
