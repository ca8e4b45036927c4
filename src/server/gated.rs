//! A shard behind its consistency gate: requests are answered now or held, pushes applied now,
//! buffered or dropped, as [`crate::proto::consistency::Gate`] decides.
//!
//! Under `asp` and `hogwild`, and for requests that carry no step, this is a direct call into the
//! [`Shard`]. Otherwise every decision is taken under one lock around the gate, and a committed
//! step is applied while that lock is held, so a pull the commit releases, or any pull decided
//! after it, sees the whole step. Answers to released pulls are sent after the lock is dropped.
//!
//! A push is checked, and its codec payload decoded, on arrival and outside the lock. A push the
//! gate lets through at once (SSP) is applied from that decoded form. A push held for its step
//! (BSP, backup workers) is held as the frame it came in, and decoded again when the step
//! commits: decoded gradients can be far larger than the frame (a 58-byte push of a key range to a
//! top-k table decodes to every row of the range), and a held push stays until its step commits,
//! so holding frames keeps what a peer can pin to what it sent.

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
                match self.shard.check_push(table, keys, values) {
                    Err(e) => error_reply(&frame, e.code(), &e.to_string()),
                    Ok(checked) => {
                        let request_id = frame.request_id;
                        // A push applied now (SSP) is applied outside the lock: the ack follows the
                        // update, and a worker clocks a step after its pushes' acks, so no pull
                        // that waits for the step can miss it. (A push in the background races
                        // its clock on the network whether or not the lock is held here.)
                        let decision = self.lock().handle_push(step.worker, Some(step.step), frame);
                        match decision {
                            Ok(PushDecision::Apply(_)) => match self.shard.apply_checked(&checked) {
                                Ok(()) => ack(request_id),
                                Err(e) => error_reply_id(request_id, e.code(), &e.to_string()),
                            },
                            // Held as its frame (see the module docs): the decoded copy goes now.
                            Ok(PushDecision::Buffered | PushDecision::Dropped) => ack(request_id),
                            Err(e) => error_reply_id(request_id, ErrorCode::Unsupported, &e.to_string()),
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

#[cfg(test)]
mod tests {
    use paramserv_codecs::{Pipeline, raw};

    use super::*;
    use crate::proto::partition::{KeyDirectory, Partitioning, Placement};
    use crate::proto::wire::{self, KeysRef, Limits, Step};
    use crate::server::optimizer::OptimizerSpec;
    use crate::server::table::{Init, TableCodecs, TableSpec};
    use crate::transport::{Connection, Net, Transport};

    fn fp16(values: &[f32]) -> bytes::Bytes {
        let mut out = Vec::new();
        Pipeline::parse("fp16").unwrap().encode(values, &mut out);
        out.into()
    }

    /// A gated shard of one fp16-coded table (10 rows of 2, zeros, SGD at rate 0.5) for two
    /// workers, and an in-process link its replies go over.
    struct Harness {
        gated: GatedShard,
        client: Connection,
        server: Connection,
    }

    impl Harness {
        async fn new(mode: Consistency) -> Self {
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
            let net = Net::new(Transport::Inproc);
            let mut listener = net.listen("server", Limits::default()).await.unwrap();
            let (client, server) = tokio::join!(net.connect("server", Limits::default()), listener.accept());
            Self { gated: GatedShard::new(Arc::new(shard), mode, 2), client: client.unwrap(), server: server.unwrap() }
        }

        /// Worker `worker`'s push of `values` to keys [3, 1] at step 0; returns the reply.
        async fn push(&mut self, worker: u32, values: bytes::Bytes) -> Message {
            let step = Some(Step { worker, step: 0 });
            let out = wire::encode_push_bulk(u64::from(worker), 0, step, KeysRef::List(&[3, 1]), values).unwrap();
            self.gated.handle(Frame::from_out(out, &Limits::default()).unwrap(), &self.server.tx).await.unwrap();
            let reply = tokio::time::timeout(std::time::Duration::from_secs(10), self.client.rx.recv());
            reply.await.expect("a reply within 10 s").unwrap().expect("a reply").message().unwrap()
        }

        /// Rows 1 and 3 as the shard holds them now (read past the gate).
        fn rows(&self) -> Vec<f32> {
            let pull = wire::encode_pull(9, 0, None, KeysRef::List(&[1, 3])).unwrap();
            let reply = self.gated.shard().handle_frame(&Frame::from_out(pull, &Limits::default()).unwrap());
            let Message::PullReply { values } = Frame::from_out(reply, &Limits::default()).unwrap().message().unwrap()
            else {
                panic!("a pull reply")
            };
            raw::decode(&values).unwrap()
        }
    }

    fn is_malformed(reply: &Message) -> bool {
        matches!(reply, Message::Error { code: ErrorCode::Malformed, .. })
    }

    /// BSP: a push that does not decode is refused when it arrives; good ones are held (the table
    /// does not change) until the step completes, then applied summed.
    #[tokio::test]
    async fn bsp_checks_coded_pushes_on_arrival_and_applies_the_step_at_commit() {
        let mut h = Harness::new(Consistency::Bsp).await;
        let reply = h.push(0, fp16(&[1.0; 3])).await;
        assert!(is_malformed(&reply), "{reply:?}");
        assert_eq!(h.push(0, fp16(&[2.0, 4.0, 6.0, 8.0])).await, Message::PushAck);
        assert_eq!(h.push(1, fp16(&[2.0, 2.0, 2.0, 2.0])).await, Message::PushAck);
        assert_eq!(h.rows(), [0.0; 4], "held until the step completes");
        h.gated.handle_event(ClockEvent::Progress { complete: 1 }).await.unwrap();
        // Keys [3, 1]: row 3 gets [2, 4] + [2, 2], row 1 gets [6, 8] + [2, 2]; times -0.5.
        assert_eq!(h.rows(), [-4.0, -5.0, -2.0, -3.0]);
    }

    /// SSP: a push is applied (from the form decoded by its check) before it is acknowledged, so
    /// the clock its worker sends after the ack can only release pulls that see it.
    #[tokio::test]
    async fn ssp_applies_a_push_before_acknowledging_it() {
        let mut h = Harness::new(Consistency::Ssp { staleness: 1 }).await;
        let reply = h.push(0, fp16(&[1.0; 5])).await;
        assert!(is_malformed(&reply), "{reply:?}");
        assert_eq!(h.push(0, fp16(&[2.0, 4.0, 6.0, 8.0])).await, Message::PushAck);
        assert_eq!(h.rows(), [-3.0, -4.0, -1.0, -2.0]);
        assert_eq!(h.push(1, fp16(&[2.0, 2.0, 2.0, 2.0])).await, Message::PushAck);
        assert_eq!(h.rows(), [-4.0, -5.0, -2.0, -3.0]);
    }

    /// Backup workers: the commit names whose pushes count; the others' are dropped, and the
    /// counted sum is scaled by workers / counted.
    #[tokio::test]
    async fn backup_applies_only_the_pushes_a_commit_names() {
        let mut h = Harness::new(Consistency::Backup { backups: 1 }).await;
        assert_eq!(h.push(0, fp16(&[2.0, 4.0, 6.0, 8.0])).await, Message::PushAck);
        assert_eq!(h.push(1, fp16(&[100.0; 4])).await, Message::PushAck);
        assert_eq!(h.rows(), [0.0; 4]);
        h.gated.handle_event(ClockEvent::Commit { step: 0, workers: vec![0] }).await.unwrap();
        // Worker 0's push only, scaled by 2 / 1, times -0.5.
        assert_eq!(h.rows(), [-6.0, -8.0, -2.0, -4.0]);
    }
}
