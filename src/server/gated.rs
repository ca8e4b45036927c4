//! A shard behind its consistency gate: requests are answered now or held, pushes applied now,
//! buffered or dropped, as [`crate::proto::consistency::Gate`] decides.
//!
//! Under `asp` and `hogwild`, and for requests that carry no step, this is a direct call into the
//! [`Shard`]. Otherwise every decision is taken under one lock around the gate, and a committed
//! step is applied while that lock is held, so a pull the commit releases, or any pull decided
//! after it, sees the whole step. Answers to released pulls are sent after the lock is dropped.
//!
//! A push is checked, and its codec payload decoded, once, on arrival and outside the lock; what
//! the gate holds is the [`CheckedPush`], so committing a step only sums and applies. The price is
//! memory: a held push of a coded table takes what a raw push of its rows would.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{CheckedPush, Shard};
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
    gate: Mutex<Gate<CheckedPush, Held>>,
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
                match self.shard.check_push(table, keys, values) {
                    Err(e) => error_reply(&frame, e.code(), &e.to_string()),
                    Ok(push) => {
                        // A push applied now (SSP) is applied outside the lock: its worker clocks
                        // only after the ack, so no pull its step gates can be served before it.
                        let decision = self.lock().handle_push(step.worker, Some(step.step), push);
                        match decision {
                            Ok(PushDecision::Apply(now)) => match self.shard.apply_checked(&now) {
                                Ok(()) => ack(frame.request_id),
                                Err(e) => error_reply(&frame, e.code(), &e.to_string()),
                            },
                            Ok(PushDecision::Buffered | PushDecision::Dropped) => ack(frame.request_id),
                            Err(e) => error_reply(&frame, ErrorCode::Unsupported, &e.to_string()),
                        }
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

    fn lock(&self) -> MutexGuard<'_, Gate<CheckedPush, Held>> {
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

#[cfg(test)]
mod tests {
    use paramserv_codecs::{Pipeline, raw};

    use super::*;
    use crate::proto::partition::{KeyDirectory, Partitioning, Placement};
    use crate::proto::wire::{self, KeysRef, Limits, Step};
    use crate::server::optimizer::OptimizerSpec;
    use crate::server::table::{Init, TableCodecs, TableSpec};
    use crate::transport::{Net, Transport};

    fn fp16(values: &[f32]) -> bytes::Bytes {
        let mut out = Vec::new();
        Pipeline::parse("fp16").unwrap().encode(values, &mut out);
        out.into()
    }

    /// BSP, two workers, an fp16-coded table at SGD rate 0.5: a push that does not decode is
    /// refused when it arrives; good ones are held (the table does not change) until the step
    /// completes, then applied summed.
    #[tokio::test]
    async fn bsp_checks_coded_pushes_on_arrival_and_applies_the_step_at_commit() {
        let spec = TableSpec {
            name: "w".into(),
            rows: 10,
            dim: 2,
            init: Init::Zeros,
            partitioning: Partitioning::Range,
            optimizer: None,
            codec: None,
            pull_codec: None,
        };
        let dir = KeyDirectory::new(vec![Placement::new(10, 1, Partitioning::Range)]);
        let shard = Shard::new(0, &[spec], &dir, 1, &[OptimizerSpec::Sgd { lr: 0.5 }])
            .unwrap()
            .with_codecs(&[TableCodecs { push: Some("fp16".parse().unwrap()), pull: None }], 1);
        let gated = GatedShard::new(Arc::new(shard), Consistency::Bsp, 2);
        let net = Net::new(Transport::Inproc);
        let mut listener = net.listen("server", Limits::default()).await.unwrap();
        let (client, server) = tokio::join!(net.connect("server", Limits::default()), listener.accept());
        let (mut client, server) = (client.unwrap(), server.unwrap());
        let mut send = async |out: wire::OutFrame| {
            let frame = Frame::from_out(out, &Limits::default()).unwrap();
            gated.handle(frame, &server.tx).await.unwrap();
            let reply = tokio::time::timeout(std::time::Duration::from_secs(10), client.rx.recv());
            reply.await.expect("a reply within 10 s").unwrap().expect("a reply").message().unwrap()
        };
        let push = |worker: u32, values: bytes::Bytes| {
            let step = Some(Step { worker, step: 0 });
            wire::encode_push_bulk(u64::from(worker), 0, step, KeysRef::List(&[3, 1]), values).unwrap()
        };
        let rows = |gated: &GatedShard| {
            let pull = wire::encode_pull(9, 0, None, KeysRef::List(&[1, 3])).unwrap();
            let reply = gated.shard().handle_frame(&Frame::from_out(pull, &Limits::default()).unwrap());
            let Message::PullReply { values } = Frame::from_out(reply, &Limits::default()).unwrap().message().unwrap()
            else {
                panic!("a pull reply")
            };
            raw::decode(&values).unwrap()
        };

        let bad = fp16(&[1.0; 3]);
        let reply = send(push(0, bad)).await;
        assert!(matches!(&reply, Message::Error { code: ErrorCode::Malformed, .. }), "{reply:?}");
        assert_eq!(send(push(0, fp16(&[2.0, 4.0, 6.0, 8.0]))).await, Message::PushAck);
        assert_eq!(send(push(1, fp16(&[2.0, 2.0, 2.0, 2.0]))).await, Message::PushAck);
        assert_eq!(rows(&gated), [0.0; 4], "held until the step completes");
        gated.handle_event(ClockEvent::Progress { complete: 1 }).await.unwrap();
        // Keys [3, 1]: row 3 gets [2, 4] + [2, 2], row 1 gets [6, 8] + [2, 2]; times -0.5.
        assert_eq!(rows(&gated), [-4.0, -5.0, -2.0, -3.0]);
    }
}
