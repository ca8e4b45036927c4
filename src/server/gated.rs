//! A shard behind its consistency gate: requests are answered now or held, pushes applied now,
//! buffered or dropped, as [`crate::proto::consistency::Gate`] decides.
//!
//! Under `asp` and `hogwild`, and for requests that carry no step, this is a direct call into the
//! [`Shard`]. Otherwise every decision is taken under one lock around the gate, and a committed
//! step is applied while that lock is held, so a pull the commit releases, or any pull decided
//! after it, sees the whole step. Answers to released pulls are sent after the lock is dropped.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::Shard;
use crate::proto::consistency::{ClockEvent, Consistency, Gate, GateError, PushDecision};
use crate::proto::wire::{ErrorCode, Frame, Kind, Message};
use crate::transport::{LinkError, LinkTx};

/// A pull waiting for its step, with the link its answer goes to.
#[derive(Debug)]
struct Held {
    frame: Frame,
    reply: LinkTx,
}

/// A shard and its gate. See the module docs.
pub struct GatedShard {
    shard: Arc<Shard>,
    mode: Consistency,
    gate: Mutex<Gate<Frame, Held>>,
}

impl std::fmt::Debug for GatedShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatedShard").field("rank", &self.shard.rank()).field("mode", &self.mode).finish()
    }
}

impl GatedShard {
    /// Puts `shard` behind a gate for `mode` in a job of `workers` workers.
    pub fn new(shard: Arc<Shard>, mode: Consistency, workers: u32) -> Self {
        Self { shard, mode, gate: Mutex::new(Gate::new(mode, workers)) }
    }

    /// The shard.
    pub fn shard(&self) -> &Arc<Shard> {
        &self.shard
    }

    /// Handles one request frame; its answer goes to `reply`, now or once its step allows.
    pub async fn handle(&self, frame: Frame, reply: &LinkTx) -> Result<(), LinkError> {
        if !self.mode.is_gated() || !matches!(frame.kind, Kind::Pull | Kind::Push) {
            return reply.send(self.shard.handle_frame(&frame)).await;
        }
        let answer = match frame.message() {
            Ok(Message::Pull { step: Some(step), .. }) => {
                let held = Held { frame, reply: reply.clone() };
                match self.lock().handle_pull(Some(step.step), held) {
                    Some(now) => self.shard.handle_frame(&now.frame),
                    None => return Ok(()),
                }
            }
            Ok(Message::Push { table, step: Some(step), keys, values }) => {
                // Check now: a buffered push that turned out bad could only fail at commit time.
                if let Err(e) = self.shard.check_push(table, (&keys).into(), &values) {
                    error_reply(&frame, e.code(), &e.to_string())
                } else {
                    let request_id = frame.request_id;
                    match self.lock().handle_push(step.worker, Some(step.step), frame) {
                        Ok(PushDecision::Apply(now)) => self.shard.handle_frame(&now),
                        Ok(PushDecision::Buffered | PushDecision::Dropped) => ack(request_id),
                        Err(e) => error_reply_id(request_id, ErrorCode::Unsupported, &e.to_string()),
                    }
                }
            }
            // No step, or undecodable: the shard answers as usual (an error reply for garbage).
            _ => self.shard.handle_frame(&frame),
        };
        reply.send(answer).await
    }

    /// The coordinator's broadcast about finished steps: apply what it commits, then answer the
    /// pulls it releases.
    pub async fn handle_event(&self, event: ClockEvent) -> Result<(), GateError> {
        let released = {
            let mut gate = self.lock();
            gate.handle_event(event)?;
            while let Some(batch) = gate.poll_apply() {
                // Checked on arrival, so this cannot fail short of a bug; a failure would leave
                // the model without the step, so it is loud.
                if let Err(e) = self.shard.apply_batch(&batch.pushes, batch.scale) {
                    tracing::error!("server {}: applying a committed step failed: {e}", self.shard.rank());
                }
            }
            std::iter::from_fn(|| gate.poll_serve()).collect::<Vec<_>>()
        };
        for held in released {
            // A reader that has gone away does not concern the others.
            let _ = held.reply.send(self.shard.handle_frame(&held.frame)).await;
        }
        Ok(())
    }

    /// Pushes dropped because their step was committed without them (backup workers).
    pub fn dropped(&self) -> u64 {
        self.lock().dropped()
    }

    fn lock(&self) -> MutexGuard<'_, Gate<Frame, Held>> {
        self.gate.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn ack(request_id: u64) -> crate::proto::wire::OutFrame {
    Message::PushAck.encode(request_id).expect("an empty message encodes")
}

fn error_reply(frame: &Frame, code: ErrorCode, message: &str) -> crate::proto::wire::OutFrame {
    error_reply_id(frame.request_id, code, message)
}

fn error_reply_id(request_id: u64, code: ErrorCode, message: &str) -> crate::proto::wire::OutFrame {
    Message::Error { code, message: message.to_owned() }.encode(request_id).expect("a short error encodes")
}
