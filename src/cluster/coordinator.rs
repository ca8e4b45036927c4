//! Drives [`proto::coordinator::Coordinator`](crate::proto::coordinator::Coordinator) over real
//! connections: accepts nodes, runs their handshake, feeds what they say into the state machine and
//! sends what it asks for.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::proto::coordinator::{ConnId, Coordinator, CoordinatorConfig, Outcome};
use crate::proto::wire::{Join, Message, PeerRole};
use crate::transport::handshake::{self, Auth};
use crate::transport::{Connection, LinkTx, Listener};

/// How long a connecting node may take to say hello and join.
const JOIN_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the last messages (shutdown, abort) may take to go out.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed accept (e.g. out of file descriptors), instead of retrying at once.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

enum Event {
    Joined(ConnId, Join, LinkTx),
    Message(ConnId, u64, Message),
    Gone(ConnId),
}

/// A fresh run id for [`CoordinatorConfig::run`], from the OS random source.
pub fn new_run() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the OS random source is available");
    u64::from_le_bytes(b)
}

/// Runs the coordinator on `listener` until the job finishes (`Ok`) or fails (`Err` with the
/// reason every node was sent).
pub async fn run_coordinator(mut listener: Listener, cfg: CoordinatorConfig, auth: Auth) -> Result<(), String> {
    let (events_tx, mut events) = mpsc::channel::<Event>(1024);
    // Every member plus as many strays again; a stray is gone after its handshake timeout.
    let max_connections = 2 * (cfg.servers as usize + cfg.workers as usize) + 64;
    let mut coord = Coordinator::new(cfg, Instant::now().into_std()).map_err(|e| e.to_string())?;
    let mut links: HashMap<ConnId, LinkTx> = HashMap::new();
    let mut conns = JoinSet::new();
    // Links being closed, each flushing its last message (Refused, Abort, Shutdown).
    let mut closing = JoinSet::new();
    let mut next_conn: ConnId = 1;
    let outcome = loop {
        while let Some(t) = coord.poll_transmit() {
            if let Some(tx) = links.get(&t.to) {
                match t.message.encode(t.request_id) {
                    Ok(frame) => {
                        let _ = tx.send(frame).await;
                    }
                    Err(e) => tracing::error!("cannot encode a {} message: {e}", t.message.kind()),
                }
            }
            if t.close
                && let Some(tx) = links.remove(&t.to)
            {
                // Flush, then drop the sender, which closes the connection.
                closing.spawn(async move { tx.flush().await });
            }
        }
        if let Some(outcome) = coord.outcome() {
            break outcome.clone();
        }
        let deadline = coord.poll_timeout().map(Instant::from_std);
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) if conns.len() >= max_connections => {
                    tracing::warn!("coordinator: refusing {}: {max_connections} connections open", conn.peer);
                    conns.spawn(refuse(conn, format!("the coordinator has {max_connections} connections open")));
                }
                Ok(conn) => {
                    conns.spawn(read_node(next_conn, conn, auth.clone(), events_tx.clone()));
                    next_conn += 1;
                }
                Err(e) => {
                    tracing::warn!("coordinator: accept failed: {e}");
                    // E.g. out of file descriptors: back off instead of spinning on the error.
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(event) = events.recv() => {
                let now = Instant::now().into_std();
                match event {
                    Event::Joined(id, join, tx) => {
                        links.insert(id, tx);
                        coord.handle_join(now, id, join);
                    }
                    Event::Message(id, request_id, msg) => coord.handle_message(now, id, request_id, msg),
                    Event::Gone(id) => {
                        links.remove(&id);
                        coord.handle_disconnect(now, id);
                    }
                }
            }
            () = sleep_until(deadline), if deadline.is_some() => coord.handle_timeout(Instant::now().into_std()),
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            Some(_) = closing.join_next(), if !closing.is_empty() => {}
        }
    };
    // Every node was sent Shutdown or Abort; let those frames go out before the process may exit.
    for tx in links.into_values() {
        closing.spawn(async move { tx.flush().await });
    }
    let _ = tokio::time::timeout(FLUSH_TIMEOUT, async { while closing.join_next().await.is_some() {} }).await;
    match outcome {
        Outcome::Finished => Ok(()),
        Outcome::Failed(reason) => Err(reason),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// One node's connection: handshake, join, then every message it sends.
async fn read_node(id: ConnId, mut conn: Connection, auth: Auth, events: mpsc::Sender<Event>) {
    if let Err(e) = handshake::accept(&mut conn, &auth, &[PeerRole::Node], JOIN_MESSAGE_TIMEOUT).await {
        tracing::warn!("coordinator: {e}");
        conn.tx.flush().await;
        return;
    }
    let first = tokio::time::timeout(JOIN_MESSAGE_TIMEOUT, conn.rx.recv()).await;
    let join = match first {
        Ok(Ok(Some(frame))) => match frame.message() {
            Ok(Message::Join(join)) => join,
            Ok(other) => return refuse(conn, format!("expected a join, got {}", other.kind())).await,
            Err(e) => return refuse(conn, format!("undecodable join: {e}")).await,
        },
        Ok(Ok(None)) => return,
        Ok(Err(e)) => return tracing::warn!("coordinator: connection from {} failed before joining: {e}", conn.peer),
        Err(_) => return refuse(conn, "no join within 10 s of the handshake".into()).await,
    };
    tracing::info!(
        "coordinator: {} joins ({} worker(s){})",
        conn.peer,
        join.workers,
        if join.server { ", a shard" } else { "" }
    );
    if events.send(Event::Joined(id, join, conn.tx.clone())).await.is_err() {
        return;
    }
    loop {
        let event = match conn.rx.recv().await {
            Ok(Some(frame)) => match frame.message() {
                Ok(msg) => Event::Message(id, frame.request_id, msg),
                Err(e) => {
                    tracing::warn!("coordinator: undecodable message from {}: {e}", conn.peer);
                    Event::Gone(id)
                }
            },
            Ok(None) => Event::Gone(id),
            Err(e) => {
                tracing::warn!("coordinator: connection from {} failed: {e}", conn.peer);
                Event::Gone(id)
            }
        };
        let gone = matches!(event, Event::Gone(_));
        if events.send(event).await.is_err() || gone {
            return;
        }
    }
}

/// Tells a peer why it is turned away, then closes the connection.
pub(crate) async fn refuse(conn: Connection, reason: String) {
    tracing::warn!("refusing {}: {reason}", conn.peer);
    if let Ok(frame) = (Message::Refused { reason }).encode(0) {
        let _ = conn.tx.send(frame).await;
        conn.tx.flush().await;
    }
}
