//! A server shard: the rows of every table that one server holds, and the requests that read and
//! update them.
//!
//! A [`Shard`] serves two paths with the same code: frames from the network
//! ([`Shard::handle_frame`]) and direct calls from workers in the same process
//! ([`Shard::pull_into`], [`Shard::push_from`]), the shared-memory path of a node that hosts a shard
//! and workers together. Each table sits behind its own read-write lock, so pulls of one table run
//! in parallel and a push excludes only readers of that table.
//!
//! Updates: each table's [`optimizer`] (SGD, momentum, Nesterov, AdaGrad, RMSprop, Adam, Shampoo)
//! applies a push, with its state kept here beside the rows. Every key of a request is checked
//! before any row changes, so a bad request changes nothing. Under Hogwild, tables live in
//! lock-free storage (`hogwild.rs`) instead and are updated without locks.
//!
//! Refuses: IO. A request that names an unknown table, a key outside the table or not held here,
//! or values that are not whole rows gets an error reply; the shard keeps serving.

pub mod gated;
mod hogwild;
pub mod optimizer;
pub mod table;

use std::sync::{Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::BytesMut;
use paramserv_codecs::{Pipeline, raw};

use crate::proto::partition::{KeyDirectory, KeyRange, Partitioning, Placement};
use crate::proto::wire::{ErrorCode, Frame, KeyList, KeySet, Kind, Limits, Message, OutFrame, TableId, WireError};
use hogwild::LockFreeRows;
use optimizer::{OptimizerSpec, ShardOptimizer};
use table::{RowStore, TableCodecs, TableSpec};

/// Why a request to a shard failed.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum ShardError {
    /// The payload could not be decoded.
    #[error("malformed request: {0}")]
    Malformed(#[from] WireError),
    /// No table with that id.
    #[error("unknown table {table} (the job has {tables} tables)")]
    UnknownTable {
        /// The id asked for.
        table: TableId,
        /// Tables in the job.
        tables: usize,
    },
    /// A key outside `[0, rows)`.
    #[error("key {key} is out of range for table '{table}' with {rows} rows")]
    KeyOutOfRange {
        /// Table name.
        table: String,
        /// The key.
        key: u64,
        /// Rows in the table.
        rows: u64,
    },
    /// A key of the table that another server holds.
    #[error("key {key} of table '{table}' is not held by server {server}")]
    NotHeld {
        /// Table name.
        table: String,
        /// The key.
        key: u64,
        /// This server.
        server: u32,
    },
    /// Values that are not a whole number of rows.
    #[error("{values} values are not whole rows of table '{table}' (dimension {dim})")]
    WrongDimension {
        /// Table name.
        table: String,
        /// Row dimension.
        dim: usize,
        /// Values sent.
        values: usize,
    },
    /// A different number of value rows than keys.
    #[error("push to table '{table}' carries {value_rows} rows of values for {keys} keys")]
    LengthMismatch {
        /// Table name.
        table: String,
        /// Keys named.
        keys: usize,
        /// Rows of values sent.
        value_rows: usize,
    },
    /// A request kind a shard does not serve.
    #[error("a server does not serve {0} messages")]
    Unsupported(Kind),
    /// A push whose codec payload does not decode to the rows it names.
    #[error("push to table '{table}': {detail}")]
    Codec {
        /// Table name.
        table: String,
        /// What the codec found wrong.
        detail: String,
    },
    /// A pull whose reply would exceed the frame limit.
    #[error("the reply would be {bytes} bytes, over the frame limit of {max}; pull fewer rows at once")]
    ReplyTooLarge {
        /// Reply size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
}

impl ShardError {
    /// The code sent in the error reply.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Malformed(_) | Self::Codec { .. } => ErrorCode::Malformed,
            Self::UnknownTable { .. } => ErrorCode::UnknownTable,
            Self::KeyOutOfRange { .. } | Self::NotHeld { .. } => ErrorCode::KeyOutOfRange,
            Self::WrongDimension { .. } => ErrorCode::WrongDimension,
            Self::LengthMismatch { .. } => ErrorCode::LengthMismatch,
            Self::Unsupported(_) => ErrorCode::Unsupported,
            Self::ReplyTooLarge { .. } => ErrorCode::TooLarge,
        }
    }
}

/// The keys of a request, from the wire or from a worker in the same process.
#[derive(Clone, Copy, Debug)]
pub enum ShardKeys<'a> {
    /// A key range: under range partitioning it must lie inside this shard's range; under hash
    /// partitioning it means the keys of the range this shard holds.
    Range(KeyRange),
    /// Keys as received.
    Wire(&'a KeyList),
    /// Keys from a local worker.
    Slice(&'a [u64]),
}

impl<'a> From<&'a KeySet> for ShardKeys<'a> {
    fn from(k: &'a KeySet) -> Self {
        match k {
            KeySet::Range(r) => Self::Range(*r),
            KeySet::List(l) => Self::Wire(l),
        }
    }
}

struct TableShard {
    spec: TableSpec,
    /// The update rule; its state is locked only by a writer that holds `store`'s write lock.
    optimizer: Mutex<ShardOptimizer>,
    store: RwLock<RowStore>,
    /// Under Hogwild: the values, updated without locks; `store` then keeps only the key index
    /// (no one takes its write lock, so reading it never waits).
    lock_free: Option<LockFreeRows>,
    /// Pushes arrive as codec payloads (self-describing) rather than raw `f32`.
    push_coded: bool,
    /// The encoder of pull replies, when they are coded.
    pull_codec: Option<Mutex<Pipeline>>,
}

impl TableShard {
    fn read(&self) -> RwLockReadGuard<'_, RowStore> {
        // A panic while holding the lock cannot leave a row half-written in a way that matters
        // more than losing the shard, so a poisoned lock is used as is.
        self.store.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, RowStore> {
        self.store.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The rows one server holds, for every table of the job.
pub struct Shard {
    rank: u32,
    tables: Vec<TableShard>,
    max_reply: usize,
}

/// Why a shard could not be built.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum BuildError {
    /// The rows need more memory than this machine has available.
    #[error(
        "server {server} needs {need} bytes for its rows but {} (add servers, or shrink the tables)",
        match available { Some(a) => format!("only {a} bytes of memory are available"), None => "that is more than this machine can address".to_owned() }
    )]
    OutOfMemory {
        /// Server rank.
        server: u32,
        /// Bytes the rows need.
        need: u64,
        /// Bytes available (`MemAvailable`), when known.
        available: Option<u64>,
    },
}

/// `MemAvailable` from `/proc/meminfo`, if this is Linux and it can be read.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard").field("rank", &self.rank).field("tables", &self.tables.len()).finish()
    }
}

impl Shard {
    /// Builds server `rank`'s shard of `tables`, placed by `directory` and initialized from `seed`.
    /// Pushes to table `i` are applied by `optimizers[i]`. Fails, before allocating, if the rows
    /// and the optimizers' state would not fit this machine's available memory.
    pub fn new(
        rank: u32,
        tables: &[TableSpec],
        directory: &KeyDirectory,
        seed: u64,
        optimizers: &[OptimizerSpec],
    ) -> Result<Self, BuildError> {
        assert_eq!(tables.len(), optimizers.len(), "one optimizer per table");
        let placements: Vec<&Placement> = (0..tables.len())
            .map(|i| directory.placement(i as u32).expect("the directory is built from the same table list"))
            .collect();
        let mut need: u128 = 0;
        for (spec, placement) in tables.iter().zip(&placements) {
            let rows = match placement.scheme() {
                Partitioning::Range => u128::from(placement.server_range(rank).len()),
                // About rows/servers each, plus the index's entry per row.
                Partitioning::Hash => u128::from(spec.rows.div_ceil(u64::from(placement.servers()))),
            };
            let index = if placement.scheme() == Partitioning::Hash { 32 } else { 0 };
            need += rows * (u128::from(spec.dim) * 4 + index);
        }
        for ((spec, placement), optimizer) in tables.iter().zip(&placements).zip(optimizers) {
            let rows = match placement.scheme() {
                Partitioning::Range => placement.server_range(rank).len(),
                Partitioning::Hash => spec.rows.div_ceil(u64::from(placement.servers())),
            };
            need = need.saturating_add(optimizer.state_bytes(rows, u64::from(spec.dim)));
        }
        let need = u64::try_from(need).map_err(|_| BuildError::OutOfMemory {
            server: rank,
            need: u64::MAX,
            available: None,
        })?;
        if usize::try_from(need).is_err() || available_memory().is_some_and(|free| need > free) {
            return Err(BuildError::OutOfMemory { server: rank, need, available: available_memory() });
        }
        let tables = tables
            .iter()
            .zip(placements)
            .zip(optimizers)
            .map(|((spec, placement), optimizer)| {
                let store = RowStore::build(spec, placement, rank, seed);
                let rows = store.data().len() / store.dim().max(1);
                TableShard {
                    spec: spec.clone(),
                    optimizer: Mutex::new(ShardOptimizer::new(*optimizer, rows, store.dim())),
                    store: RwLock::new(store),
                    lock_free: None,
                    push_coded: false,
                    pull_codec: None,
                }
            })
            .collect();
        Ok(Self { rank, tables, max_reply: Limits::DEFAULT_MAX_FRAME as usize })
    }

    /// Moves every table into lock-free storage for Hogwild: pulls and pushes of local workers then
    /// run side by side without locks (see `hogwild.rs`). Every table's optimizer must be
    /// element-wise (a validated Hogwild job is).
    pub fn lock_free(mut self) -> Self {
        for t in &mut self.tables {
            let store = t.store.get_mut().unwrap_or_else(PoisonError::into_inner);
            let spec = *t.optimizer.get_mut().unwrap_or_else(PoisonError::into_inner).spec();
            let dim = store.dim();
            t.lock_free = Some(LockFreeRows::new(spec, dim, &store.take_data()));
            // Its state lives in the lock-free rows now.
            t.optimizer = Mutex::new(ShardOptimizer::new(spec, 0, dim));
        }
        self
    }

    /// Decodes pushes of table `i` with `codecs[i].push` and encodes its pull replies with
    /// `codecs[i].pull` (`None`: raw `f32`). Random streams of pull codecs are seeded from `seed`
    /// and this shard's rank.
    pub fn with_codecs(mut self, codecs: &[TableCodecs], seed: u64) -> Self {
        assert_eq!(codecs.len(), self.tables.len(), "one codec pair per table");
        for (i, (t, c)) in self.tables.iter_mut().zip(codecs).enumerate() {
            t.push_coded = c.push.is_some();
            let stream = seed ^ (u64::from(self.rank) << 32) ^ i as u64;
            t.pull_codec = c.pull.as_ref().map(|spec| Mutex::new(Pipeline::with_seed(spec, stream)));
        }
        self
    }

    /// Refuses pulls whose reply would exceed `bytes` (the job's frame limit), rather than sending
    /// a frame no peer accepts.
    pub fn with_reply_limit(mut self, bytes: usize) -> Self {
        self.max_reply = bytes;
        self
    }

    /// This shard's server rank.
    pub fn rank(&self) -> u32 {
        self.rank
    }

    /// Serves one request frame and returns the reply frame (a result or an error reply).
    pub fn handle_frame(&self, frame: &Frame) -> OutFrame {
        let reply = match frame.message() {
            Ok(Message::Pull { table, keys, .. }) => self.pull_bytes(table, (&keys).into()),
            Ok(Message::Push { table, keys, values, .. }) => {
                self.push_bytes(table, (&keys).into(), &values).map(|()| Message::PushAck)
            }
            Ok(other) => Err(ShardError::Unsupported(other.kind())),
            Err(e) => Err(ShardError::Malformed(e)),
        };
        let reply = reply.unwrap_or_else(|e| Message::Error { code: e.code(), message: e.to_string() });
        match reply {
            Message::PullReply { values } => OutFrame::new(Kind::PullReply, frame.request_id, values),
            other => other.encode(frame.request_id),
        }
        .unwrap_or_else(|e| {
            // Only a reply over 4 GiB fails to encode; the request asked for too much at once.
            Message::Error { code: ErrorCode::Unsupported, message: format!("reply too large: {e}") }
                .encode(frame.request_id)
                .expect("a short error message always encodes")
        })
    }

    /// Reads rows into `out` (the shared-memory path): `out` holds `dim` values per row, in key
    /// order.
    pub fn pull_into(&self, table: TableId, keys: ShardKeys<'_>, out: &mut [f32]) -> Result<(), ShardError> {
        let t = self.table(table)?;
        let store = t.read();
        let dim = store.dim();
        let rows = self.check(t, &store, &keys)?;
        if out.len() != rows * dim {
            return Err(ShardError::WrongDimension { table: t.spec.name.clone(), dim, values: out.len() });
        }
        if let Some(rows) = &t.lock_free {
            let mut rows_out = out.chunks_exact_mut(dim.max(1));
            visit(&store, &keys, |off| {
                rows.read_row(off, rows_out.next().expect("out holds exactly the checked rows"))
            });
            return Ok(());
        }
        let data = store.data();
        if let Some(span) = contiguous(&store, &keys) {
            out.copy_from_slice(&data[span]);
            return Ok(());
        }
        let mut rows_out = out.chunks_exact_mut(dim.max(1));
        visit(&store, &keys, |off| {
            rows_out.next().expect("out holds exactly the checked rows").copy_from_slice(&data[off..off + dim]);
        });
        Ok(())
    }

    /// Applies gradients from a local worker: `grads` holds `dim` values per row, in key order.
    pub fn push_from(&self, table: TableId, keys: ShardKeys<'_>, grads: &[f32]) -> Result<(), ShardError> {
        let t = self.table(table)?;
        if let Some(rows) = &t.lock_free {
            let store = t.read();
            self.check_values(t, &store, &keys, grads.len())?;
            let dim = store.dim().max(1);
            let mut grads = grads.chunks_exact(dim);
            visit(&store, &keys, |off| rows.update_row(off, grads.next().expect("lengths checked")));
            return Ok(());
        }
        let mut store = t.write();
        self.check_values(t, &store, &keys, grads.len())?;
        let offsets = row_offsets(&store, &keys);
        apply_rows(t, &mut store, &offsets, Grads::F32(grads));
        Ok(())
    }

    /// Checks a push before its consistency gate decides on it, so that a bad push is refused
    /// now rather than when its step commits. The result keeps the keys and the gradients
    /// (decoded, for a coded table) for [`Self::apply_checked`], which then neither checks nor
    /// decodes again; a push the gate holds for later is held as its frame instead (see
    /// [`gated`]), since decoded gradients can be far larger than the bytes that came.
    pub fn check_push(&self, table: TableId, keys: KeySet, values: bytes::Bytes) -> Result<CheckedPush, ShardError> {
        let t = self.table(table)?;
        let store = t.read();
        let grads = match self.checked_push(t, &store, &(&keys).into(), &values)? {
            Checked::Le(_) => Checked::Le(values.clone()),
            Checked::Decoded(grads) => Checked::Decoded(grads),
        };
        Ok(CheckedPush { table, keys, grads })
    }

    /// Applies one push checked by [`Self::check_push`], as a push that arrives and is applied at
    /// once would be.
    pub fn apply_checked(&self, push: &CheckedPush) -> Result<(), ShardError> {
        apply_checked_grads(self.table(push.table)?, &(&push.keys).into(), push.grads.grads());
        Ok(())
    }

    /// A push's gradients, checked against its keys: the received bytes when the table's pushes
    /// are raw, the decoded values when they are coded.
    fn checked_push<'v>(
        &self,
        t: &TableShard,
        store: &RowStore,
        keys: &ShardKeys<'_>,
        values: &'v [u8],
    ) -> Result<Checked<&'v [u8]>, ShardError> {
        if !t.push_coded {
            let elems = elements(t, store, values)?;
            self.check_values(t, store, keys, elems)?;
            return Ok(Checked::Le(values));
        }
        let elements = self.check(t, store, keys)? * store.dim();
        let codec_err =
            |e: paramserv_codecs::CodecError| ShardError::Codec { table: t.spec.name.clone(), detail: e.to_string() };
        // The header is checked before the rows' buffer is allocated; the keys were checked above.
        let have = paramserv_codecs::decoded_len(values).map_err(codec_err)?;
        if have != elements as u64 {
            return Err(codec_err(paramserv_codecs::CodecError::Length { want: elements, have }));
        }
        let mut grads = vec![0.0; elements];
        paramserv_codecs::decode_into(values, &mut grads).map_err(codec_err)?;
        Ok(Checked::Decoded(grads))
    }

    /// Applies the pushes of one committed step together: per row, the gradients of every push
    /// are summed, multiplied by `scale`, and applied as one update. Pushes were checked when they
    /// arrived; they are decoded again here.
    pub fn apply_batch(&self, pushes: &[Frame], scale: f32) -> Result<(), ShardError> {
        let mut sums: Vec<RowSums> = (0..self.tables.len()).map(|_| RowSums::default()).collect();
        for frame in pushes {
            let Message::Push { table, keys, values, .. } = frame.message()? else {
                return Err(ShardError::Unsupported(frame.kind));
            };
            let t = self.table(table)?;
            let store = t.read();
            let keys = (&keys).into();
            let grads = self.checked_push(t, &store, &keys, &values)?;
            let offsets = row_offsets(&store, &keys);
            sums[table as usize].add(&offsets, grads.grads(), store.dim());
        }
        for (t, mut sums) in self.tables.iter().zip(sums) {
            if scale != 1.0 {
                sums.sums.iter_mut().for_each(|g| *g *= scale);
            }
            if sums.order.is_empty() {
                continue;
            }
            if let Some(rows) = &t.lock_free {
                let dim = t.read().dim().max(1);
                for (&off, g) in sums.order.iter().zip(sums.sums.chunks_exact(dim)) {
                    rows.update_row(off, g);
                }
            } else {
                apply_rows(t, &mut t.write(), &sums.order, Grads::F32(&sums.sums));
            }
        }
        Ok(())
    }

    fn pull_bytes(&self, table: TableId, keys: ShardKeys<'_>) -> Result<Message, ShardError> {
        let t = self.table(table)?;
        let store = t.read();
        let dim = store.dim();
        let rows = self.check(t, &store, &keys)?;
        let bytes = rows.saturating_mul(dim).saturating_mul(raw::ELEM_BYTES);
        if bytes > self.max_reply {
            return Err(ShardError::ReplyTooLarge { bytes, max: self.max_reply });
        }
        if let Some(codec) = &t.pull_codec {
            let mut values = vec![0.0; rows * dim];
            self.read_rows(t, &store, &keys, &mut values);
            let mut out = Vec::new();
            codec.lock().unwrap_or_else(PoisonError::into_inner).encode(&values, &mut out);
            if out.len() > self.max_reply {
                return Err(ShardError::ReplyTooLarge { bytes: out.len(), max: self.max_reply });
            }
            return Ok(Message::PullReply { values: out.into() });
        }
        let mut out = BytesMut::with_capacity(bytes);
        if let Some(rows) = &t.lock_free {
            visit(&store, &keys, |off| rows.put_row(off, &mut out));
            return Ok(Message::PullReply { values: out.freeze() });
        }
        let data = store.data();
        if let Some(span) = contiguous(&store, &keys) {
            raw::put_slice(&data[span], &mut out);
        } else {
            visit(&store, &keys, |off| raw::put_slice(&data[off..off + dim], &mut out));
        }
        Ok(Message::PullReply { values: out.freeze() })
    }

    fn push_bytes(&self, table: TableId, keys: ShardKeys<'_>, values: &[u8]) -> Result<(), ShardError> {
        let t = self.table(table)?;
        if t.lock_free.is_some() || t.push_coded {
            // Decoded into a buffer, not added into the rows as it decodes: a payload that fails
            // half-way must change nothing. Decode outside the write lock: readers of the table
            // keep going meanwhile.
            let grads = {
                let store = t.read();
                self.checked_push(t, &store, &keys, values)?
            };
            apply_checked_grads(t, &keys, grads.grads());
            return Ok(());
        }
        let mut store = t.write();
        let grads = self.checked_push(t, &store, &keys, values)?;
        let offsets = row_offsets(&store, &keys);
        apply_rows(t, &mut store, &offsets, grads.grads());
        Ok(())
    }

    /// Copies the rows of a checked request into `out`, in request order.
    fn read_rows(&self, t: &TableShard, store: &RowStore, keys: &ShardKeys<'_>, out: &mut [f32]) {
        let dim = store.dim();
        let mut rows_out = out.chunks_exact_mut(dim.max(1));
        if let Some(rows) = &t.lock_free {
            visit(store, keys, |off| rows.read_row(off, rows_out.next().expect("out holds the checked rows")));
            return;
        }
        let data = store.data();
        if let Some(span) = contiguous(store, keys) {
            out.copy_from_slice(&data[span]);
            return;
        }
        visit(store, keys, |off| {
            rows_out.next().expect("out holds the checked rows").copy_from_slice(&data[off..off + dim])
        });
    }

    fn table(&self, table: TableId) -> Result<&TableShard, ShardError> {
        self.tables.get(table as usize).ok_or(ShardError::UnknownTable { table, tables: self.tables.len() })
    }

    /// Checks every key and returns how many rows the request covers here.
    fn check(&self, t: &TableShard, store: &RowStore, keys: &ShardKeys<'_>) -> Result<usize, ShardError> {
        let rows = t.spec.rows;
        let key_err = |key: u64| -> ShardError {
            if key >= rows {
                ShardError::KeyOutOfRange { table: t.spec.name.clone(), key, rows }
            } else {
                ShardError::NotHeld { table: t.spec.name.clone(), key, server: self.rank }
            }
        };
        let check_key = |key: u64| if store.offset(key).is_some() { Ok(()) } else { Err(key_err(key)) };
        match keys {
            ShardKeys::Range(r) => {
                if r.end() > rows {
                    return Err(key_err(r.end() - 1));
                }
                match store {
                    // A range shard serves only whole sub-ranges of its own range.
                    RowStore::Dense { range: held, .. } => {
                        if !r.is_empty() && !held.contains(r.start()) {
                            return Err(key_err(r.start()));
                        }
                        if !r.is_empty() && !held.contains(r.end() - 1) {
                            return Err(key_err(r.end() - 1));
                        }
                        Ok(r.len() as usize)
                    }
                    RowStore::Indexed { .. } => Ok(r.keys().filter(|k| store.offset(*k).is_some()).count()),
                }
            }
            ShardKeys::Wire(list) => {
                list.iter().try_for_each(check_key)?;
                Ok(list.len())
            }
            ShardKeys::Slice(list) => {
                list.iter().try_for_each(|k| check_key(*k))?;
                Ok(list.len())
            }
        }
    }

    /// [`Self::check`] plus the value count of a push.
    fn check_values(
        &self,
        t: &TableShard,
        store: &RowStore,
        keys: &ShardKeys<'_>,
        values: usize,
    ) -> Result<usize, ShardError> {
        let rows = self.check(t, store, keys)?;
        let dim = store.dim();
        let name = || t.spec.name.clone();
        if dim == 0 || !values.is_multiple_of(dim) {
            if dim == 0 && values == 0 {
                return Ok(rows);
            }
            return Err(ShardError::WrongDimension { table: name(), dim, values });
        }
        if values / dim != rows {
            return Err(ShardError::LengthMismatch { table: name(), keys: rows, value_rows: values / dim });
        }
        Ok(rows)
    }
}

/// Gradients of one step summed per row: the rows in first-touch order, their sums alongside.
#[derive(Default)]
struct RowSums {
    order: Vec<usize>,
    sums: Vec<f32>,
    index: std::collections::HashMap<usize, usize>,
}

impl RowSums {
    /// Adds gradient rows (`dim` values each) for the rows at `offsets`.
    fn add(&mut self, offsets: &[usize], grads: Grads<'_>, dim: usize) {
        if dim == 0 {
            return;
        }
        for (i, &off) in offsets.iter().enumerate() {
            let at = *self.index.entry(off).or_insert_with(|| {
                self.order.push(off);
                self.sums.resize(self.sums.len() + dim, 0.0);
                self.order.len() - 1
            });
            let sums = &mut self.sums[at * dim..(at + 1) * dim];
            match grads {
                Grads::F32(g) => sums.iter_mut().zip(&g[i * dim..(i + 1) * dim]).for_each(|(s, g)| *s += g),
                Grads::Le(bytes) => {
                    let row = &bytes[i * dim * raw::ELEM_BYTES..(i + 1) * dim * raw::ELEM_BYTES];
                    raw::add_scaled_into(row, 1.0, sums).expect("lengths checked");
                }
            }
        }
    }
}

/// Gradients as a worker in this process holds them, or as they came off the wire.
#[derive(Clone, Copy)]
enum Grads<'a> {
    F32(&'a [f32]),
    /// Little-endian `f32` bytes.
    Le(&'a [u8]),
}

impl<'a> Grads<'a> {
    /// The gradients as `f32`, decoded from bytes if they are bytes.
    fn to_f32(self) -> std::borrow::Cow<'a, [f32]> {
        match self {
            Self::F32(g) => g.into(),
            Self::Le(bytes) => raw::decode(bytes).expect("lengths checked").into(),
        }
    }
}

/// A push checked by [`Shard::check_push`]: the keys and the gradients, decoded once, for
/// [`Shard::apply_checked`].
#[derive(Debug)]
pub struct CheckedPush {
    table: TableId,
    keys: KeySet,
    /// Raw pushes keep a slice of the frame, not a copy.
    grads: Checked<bytes::Bytes>,
}

/// A push's gradients after [`Shard::checked_push`], the raw bytes held as `B`.
#[derive(Debug)]
enum Checked<B> {
    /// Raw little-endian `f32` as received.
    Le(B),
    /// Decoded from a codec payload.
    Decoded(Vec<f32>),
}

impl<B: AsRef<[u8]>> Checked<B> {
    fn grads(&self) -> Grads<'_> {
        match self {
            Self::Le(bytes) => Grads::Le(bytes.as_ref()),
            Self::Decoded(grads) => Grads::F32(grads),
        }
    }
}

/// Applies checked gradients to the rows of `keys`: lock-free rows one by one, others under the
/// table's write lock.
fn apply_checked_grads(t: &TableShard, keys: &ShardKeys<'_>, grads: Grads<'_>) {
    if let Some(rows) = &t.lock_free {
        let store = t.read();
        let grads = grads.to_f32();
        let mut grads = grads.chunks_exact(store.dim().max(1));
        visit(&store, keys, |off| rows.update_row(off, grads.next().expect("lengths checked")));
        return;
    }
    let mut store = t.write();
    let offsets = row_offsets(&store, keys);
    apply_rows(t, &mut store, &offsets, grads);
}

/// The data offsets of a checked request's rows, in request order.
fn row_offsets(store: &RowStore, keys: &ShardKeys<'_>) -> Vec<usize> {
    let mut offsets = Vec::new();
    visit(store, keys, |off| offsets.push(off));
    offsets
}

/// Values in a push payload, or a `WrongDimension` error if it is not whole `f32`s.
fn elements(t: &TableShard, store: &RowStore, values: &[u8]) -> Result<usize, ShardError> {
    raw::element_count(values).map_err(|_| ShardError::WrongDimension {
        table: t.spec.name.clone(),
        dim: store.dim(),
        values: values.len() / raw::ELEM_BYTES,
    })
}

/// One update of the rows at `offsets` with `grads` (`dim` values each, in the same order): the
/// single place a table's rows change. The caller holds the store's write lock.
fn apply_rows(t: &TableShard, store: &mut RowStore, offsets: &[usize], grads: Grads<'_>) {
    let dim = store.dim();
    if dim == 0 || offsets.is_empty() {
        return;
    }
    let mut optimizer = t.optimizer.lock().unwrap_or_else(PoisonError::into_inner);
    let data = store.data_mut();
    match (*optimizer.spec(), grads) {
        // SGD keeps no state: add straight from the received bytes (`w + (-lr)·g` is bit for bit
        // the rule's `w - lr·g`).
        (OptimizerSpec::Sgd { lr }, Grads::Le(bytes)) => {
            for (&off, g) in offsets.iter().zip(bytes.chunks_exact(dim * raw::ELEM_BYTES)) {
                raw::add_scaled_into(g, -lr, &mut data[off..off + dim]).expect("lengths checked");
            }
        }
        (OptimizerSpec::Sgd { lr }, Grads::F32(grads)) => {
            for (&off, g) in offsets.iter().zip(grads.chunks_exact(dim)) {
                for (w, g) in data[off..off + dim].iter_mut().zip(g) {
                    *w += -lr * g;
                }
            }
        }
        (_, grads) => {
            let rows: Vec<usize> = offsets.iter().map(|off| off / dim).collect();
            optimizer.apply(data, &rows, &grads.to_f32());
        }
    }
}

/// The request's rows as one span of the store's data, when they are contiguous there.
fn contiguous(store: &RowStore, keys: &ShardKeys<'_>) -> Option<std::ops::Range<usize>> {
    match keys {
        ShardKeys::Range(r) => store.contiguous(*r),
        _ => None,
    }
}

/// Calls `f` with the data offset of every row of a checked request, in request order.
fn visit(store: &RowStore, keys: &ShardKeys<'_>, mut f: impl FnMut(usize)) {
    let offset = |k: u64| store.offset(k).expect("keys were checked");
    match keys {
        ShardKeys::Range(r) => r.keys().filter_map(|k| store.offset(k)).for_each(f),
        ShardKeys::Wire(list) => list.iter().for_each(|k| f(offset(k))),
        ShardKeys::Slice(list) => list.iter().for_each(|k| f(offset(*k))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::partition::Partitioning;
    use crate::proto::wire::{self, KeysRef, Limits};
    use table::Init;

    fn shard(partitioning: Partitioning, servers: u32, rank: u32) -> Shard {
        let spec = TableSpec {
            name: "w".into(),
            rows: 10,
            dim: 2,
            init: Init::Zeros,
            partitioning,
            optimizer: None,
            codec: None,
            pull_codec: None,
        };
        let dir = KeyDirectory::new(vec![Placement::new(10, servers, partitioning)]);
        Shard::new(rank, &[spec], &dir, 1, &[OptimizerSpec::Sgd { lr: 0.5 }]).unwrap()
    }

    fn serve(s: &Shard, out: OutFrame) -> Message {
        let req = Frame::from_out(out, &Limits::default()).unwrap();
        let reply = Frame::from_out(s.handle_frame(&req), &Limits::default()).unwrap();
        assert_eq!(reply.request_id, req.request_id);
        reply.message().unwrap()
    }

    fn pull(s: &Shard, keys: KeysRef<'_>) -> Message {
        serve(s, wire::encode_pull(9, 0, None, keys).unwrap())
    }

    fn values(m: Message) -> Vec<f32> {
        let Message::PullReply { values } = m else { panic!("expected a pull reply, got {m:?}") };
        raw::decode(&values).unwrap()
    }

    #[test]
    fn coded_pushes_and_pulls_and_payloads_that_do_not_decode() {
        let codecs = [TableCodecs { push: Some("fp16".parse().unwrap()), pull: Some("raw|zstd:1".parse().unwrap()) }];
        let s = shard(Partitioning::Range, 1, 0).with_codecs(&codecs, 1);
        let mut payload = Vec::new();
        Pipeline::parse("fp16").unwrap().encode(&[2.0, 4.0, 6.0, 8.0], &mut payload);
        let push = |values: Vec<u8>| wire::encode_push_bulk(1, 0, None, KeysRef::List(&[3, 1]), values.into()).unwrap();
        assert_eq!(serve(&s, push(payload.clone())), Message::PushAck);
        // Raw bytes where a codec payload belongs, a payload for 3 values, and a truncated one:
        // each an error reply naming the table; nothing applied.
        let mut short = Vec::new();
        Pipeline::parse("fp16").unwrap().encode(&[1.0, 1.0, 1.0], &mut short);
        for bad in [vec![0u8; 16], short, payload[..payload.len() - 1].to_vec()] {
            let Message::Error { code, message } = serve(&s, push(bad.clone())) else { panic!("{bad:?} was accepted") };
            assert_eq!(code, ErrorCode::Malformed);
            assert!(message.starts_with("push to table 'w': "), "{message}");
        }
        let Message::PullReply { values } = pull(&s, KeysRef::List(&[1, 3])) else { panic!("a pull reply") };
        assert_eq!(paramserv_codecs::decode(&values, 4).unwrap(), [-3.0, -4.0, -1.0, -2.0], "lr 0.5, once");
    }

    #[test]
    fn push_then_pull_over_frames_and_shared_memory() {
        let s = shard(Partitioning::Range, 1, 0);
        let push = wire::encode_push(1, 0, None, KeysRef::List(&[3, 1]), &[2.0, 4.0, 6.0, 8.0]).unwrap();
        assert_eq!(serve(&s, push), Message::PushAck);
        assert_eq!(values(pull(&s, KeysRef::List(&[1, 3]))), [-3.0, -4.0, -1.0, -2.0]);
        s.push_from(0, ShardKeys::Range(KeyRange::new(0, 2).unwrap()), &[2.0, 2.0, 2.0, 2.0]).unwrap();
        let mut out = [0.0; 4];
        s.pull_into(0, ShardKeys::Slice(&[1, 0]), &mut out).unwrap();
        assert_eq!(out, [-4.0, -5.0, -1.0, -1.0]);
        assert_eq!(values(pull(&s, KeysRef::Range(KeyRange::new(0, 2).unwrap()))), [-1.0, -1.0, -4.0, -5.0]);
    }

    #[test]
    fn bad_requests_get_error_replies_and_change_nothing() {
        let s = shard(Partitioning::Range, 2, 1); // holds keys 5..10
        let err = |m: Message| match m {
            Message::Error { code, message } => (code, message),
            other => panic!("expected an error, got {other:?}"),
        };
        let (code, msg) = err(serve(&s, wire::encode_pull(1, 7, None, KeysRef::List(&[5])).unwrap()));
        assert_eq!(code, ErrorCode::UnknownTable, "{msg}");
        let (code, msg) = err(pull(&s, KeysRef::List(&[5, 10])));
        assert_eq!(code, ErrorCode::KeyOutOfRange);
        assert!(msg.contains("key 10 is out of range"), "{msg}");
        let (code, msg) = err(pull(&s, KeysRef::List(&[2])));
        assert!(code == ErrorCode::KeyOutOfRange && msg.contains("not held by server 1"), "{msg}");
        let (_, msg) = err(pull(&s, KeysRef::Range(KeyRange::new(4, 7).unwrap())));
        assert!(msg.contains("key 4"), "{msg}");
        let (code, msg) =
            err(serve(&s, wire::encode_push(1, 0, None, KeysRef::List(&[5, 6]), &[1.0, 2.0, 3.0]).unwrap()));
        assert_eq!(code, ErrorCode::WrongDimension, "{msg}");
        let (code, msg) = err(serve(&s, wire::encode_push(1, 0, None, KeysRef::List(&[5, 6]), &[1.0, 2.0]).unwrap()));
        assert!(code == ErrorCode::LengthMismatch && msg.contains("1 rows of values for 2 keys"), "{msg}");
        // A push with one bad key among good ones applies nothing.
        let (code, _) = err(serve(&s, wire::encode_push(1, 0, None, KeysRef::List(&[5, 1]), &[1.0; 4]).unwrap()));
        assert_eq!(code, ErrorCode::KeyOutOfRange);
        assert_eq!(values(pull(&s, KeysRef::List(&[5]))), [0.0, 0.0]);
        // Garbage payloads and unexpected kinds.
        let garbage = OutFrame::new(Kind::Pull, 3, bytes::Bytes::from_static(&[1, 2])).unwrap();
        assert_eq!(err(serve(&s, garbage)).0, ErrorCode::Malformed);
        assert_eq!(err(serve(&s, Message::Start.encode(4).unwrap())).0, ErrorCode::Unsupported);
        let mut out = [0.0; 3];
        assert!(matches!(s.pull_into(0, ShardKeys::Slice(&[5]), &mut out), Err(ShardError::WrongDimension { .. })));
    }

    #[test]
    fn replies_over_the_frame_limit_are_refused() {
        let s = shard(Partitioning::Range, 1, 0).with_reply_limit(32);
        assert!(matches!(pull(&s, KeysRef::List(&[1, 2, 3, 4])), Message::PullReply { .. }), "32 bytes fit");
        let Message::Error { code, message } = pull(&s, KeysRef::List(&[1, 2, 3, 4, 5])) else {
            panic!("expected an error")
        };
        assert_eq!(code, ErrorCode::TooLarge);
        assert!(message.contains("40 bytes, over the frame limit of 32"), "{message}");
    }

    #[test]
    fn tables_larger_than_memory_are_refused_before_allocating() {
        let spec = TableSpec {
            name: "huge".into(),
            rows: u64::MAX / 2,
            dim: 1 << 20,
            init: Init::Zeros,
            partitioning: Partitioning::Range,
            optimizer: None,
            codec: None,
            pull_codec: None,
        };
        let dir = KeyDirectory::new(vec![Placement::new(spec.rows, 1, Partitioning::Range)]);
        let err = Shard::new(0, &[spec], &dir, 1, &[OptimizerSpec::Sgd { lr: 0.5 }]).unwrap_err();
        assert!(err.to_string().contains("server 0 needs"), "{err}");
    }

    #[test]
    fn hashed_shards_serve_the_keys_of_a_range_they_hold() {
        let shards: Vec<Shard> = (0..3).map(|r| shard(Partitioning::Hash, 3, r)).collect();
        let placement = Placement::new(10, 3, Partitioning::Hash);
        let range = KeyRange::new(2, 9).unwrap();
        let mut seen = 0;
        for s in &shards {
            let keys: Vec<u64> = range.keys().filter(|k| placement.owner(*k) == s.rank()).collect();
            let grads: Vec<f32> = keys.iter().flat_map(|k| [*k as f32, 1.0]).collect();
            s.push_from(0, ShardKeys::Range(range), &grads).unwrap();
            let got = values(pull(s, KeysRef::Range(range)));
            let want: Vec<f32> = keys.iter().flat_map(|k| [-0.5 * *k as f32, -0.5]).collect();
            assert_eq!(got, want);
            seen += keys.len();
        }
        assert_eq!(seen, 7);
    }
}
