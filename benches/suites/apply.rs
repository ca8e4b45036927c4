//! A server shard serving pushes and pulls: `Shard::handle_frame` on a pre-built request frame (the
//! network path: decode, check every key, apply or copy, encode the reply) and `Shard::push_from` /
//! `Shard::pull_into` (the shared-memory path: check every key, apply or copy).
//!
//! One shard (server 0 of 1, range partitioning, zero-initialized, learning rate 0.01) holds two
//! tables, built once for the whole suite:
//! - `dense`: 40 rows × 256000 values. A request names row 7 as the key range `7..8`, so one 1 MB
//!   row is applied or copied as one contiguous span.
//! - `sparse`: 10M rows × 1 value. A request names 100k sorted keys, one in each block of 100 rows,
//!   so every row is found through its key.
//!
//! Throughput: for a push, the push frame's payload bytes (table id, keys and values); for a pull,
//! the pull reply's payload bytes (the values). The shared-memory path and the baseline are given
//! the same figure, so their times compare directly.
//!
//! Baseline `naive`: a plain `Vec<f32>` per table, updated (or read) one element at a time by key,
//! with the gradients read from the push frame's value bytes. It does what the shard must do at
//! the least, without locks, key checks, frames or replies.

use criterion::{Criterion, Throughput};
use paramserv::proto::partition::{KeyDirectory, KeyRange, Partitioning, Placement};
use paramserv::proto::wire::{self, Frame, KeysRef, Limits, Message, OutFrame};
use paramserv::server::optimizer::OptimizerSpec;
use paramserv::server::table::TableSpec;
use paramserv::server::{Shard, ShardKeys};
use paramserv_codecs::raw;

use super::{bits, spread_keys, values};

const LR: f32 = 0.01;
const DENSE_ROWS: u64 = 40;
const DENSE_DIM: usize = 256_000;
const SPARSE_ROWS: u64 = 10_000_000;
const SPARSE_KEYS: u64 = 100_000;

/// The keys of a request.
enum Keys {
    Range(KeyRange),
    List(Vec<u64>),
}

impl Keys {
    fn wire(&self) -> KeysRef<'_> {
        match self {
            Self::Range(r) => KeysRef::Range(*r),
            Self::List(k) => KeysRef::List(k),
        }
    }

    fn shard(&self) -> ShardKeys<'_> {
        match self {
            Self::Range(r) => ShardKeys::Range(*r),
            Self::List(k) => ShardKeys::Slice(k),
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Range(r) => r.len() as usize,
            Self::List(k) => k.len(),
        }
    }
}

/// One table of the shard, its naive copy, and the request the benches send to it.
struct Case {
    label: String,
    table: u32,
    dim: usize,
    keys: Keys,
    naive: Vec<f32>,
}

pub(crate) fn bench_apply(c: &mut Criterion) {
    let spec = |name: &str, rows, dim| TableSpec::new(name, rows, dim);
    let tables = [spec("dense", DENSE_ROWS, DENSE_DIM as u32), spec("sparse", SPARSE_ROWS, 1)];
    let directory = KeyDirectory::new(tables.iter().map(|t| Placement::new(t.rows, 1, Partitioning::Range)).collect());
    let shard = Shard::new(0, &tables, &directory, 42, &[OptimizerSpec::Sgd { lr: LR }; 2])
        .expect("the bench tables fit in memory");
    let cases = [
        Case {
            label: format!("keys=1/dim={DENSE_DIM}/table={DENSE_ROWS}"),
            table: 0,
            dim: DENSE_DIM,
            keys: Keys::Range(KeyRange::new(7, 8).expect("7 < 8")),
            naive: vec![0.0; DENSE_ROWS as usize * DENSE_DIM],
        },
        Case {
            label: format!("keys={SPARSE_KEYS}/dim=1/table=10M"),
            table: 1,
            dim: 1,
            keys: Keys::List(spread_keys(SPARSE_KEYS, SPARSE_ROWS / SPARSE_KEYS)),
            naive: vec![0.0; SPARSE_ROWS as usize],
        },
    ];
    for mut case in cases {
        bench_case(c, &shard, &mut case);
    }
}

fn bench_case(c: &mut Criterion, shard: &Shard, case: &mut Case) {
    let Case { label, table, dim, keys, naive } = case;
    let (table, dim) = (*table, *dim);
    let elems = keys.len() * dim;
    let grads = values(elems, 7);
    let limits = Limits::default();
    let push = Frame::from_out(wire::encode_push(1, table, None, keys.wire(), &grads).expect("encodes"), &limits)
        .expect("a frame we just encoded");
    let pull = Frame::from_out(wire::encode_pull(2, table, None, keys.wire()).expect("encodes"), &limits)
        .expect("a frame we just encoded");
    let Ok(Message::Push { values: grad_bytes, .. }) = push.message() else { unreachable!("we encoded a push") };

    // Once, untimed: each path leaves the rows as the naive baseline does, and a pull returns them.
    let read = || {
        let mut out = vec![0.0; elems];
        shard.pull_into(table, keys.shard(), &mut out).expect("the keys are held");
        out
    };
    let mut out = vec![0.0; elems];
    naive_pull(naive, dim, keys, &mut out);
    assert_eq!(bits(&read()), bits(&out), "{label}: the shard and the naive table start apart");
    assert_eq!(reply(shard.handle_frame(&push), &push), Message::PushAck, "{label}: push reply");
    naive_push(naive, dim, keys, &grad_bytes);
    naive_pull(naive, dim, keys, &mut out);
    assert_eq!(bits(&read()), bits(&out), "{label}: handle_frame's push differs from the naive apply");
    shard.push_from(table, keys.shard(), &grads).expect("the keys are held");
    naive_push(naive, dim, keys, &grad_bytes);
    naive_pull(naive, dim, keys, &mut out);
    assert_eq!(bits(&read()), bits(&out), "{label}: push_from differs from the naive apply");
    let Message::PullReply { values: got } = reply(shard.handle_frame(&pull), &pull) else {
        panic!("{label}: expected a pull reply");
    };
    assert_eq!(got.len(), elems * raw::ELEM_BYTES, "{label}: pull reply length");
    assert_eq!(bits(&raw::decode(&got).expect("whole f32 values")), bits(&out), "{label}: pull reply values");

    // Rows keep accumulating across iterations; 0.01 × |g| < 0.005 per push stays far from overflow.
    let mut g = c.benchmark_group(format!("apply/push/{label}"));
    g.throughput(Throughput::Bytes(push.payload_len() as u64));
    g.bench_function("handle_frame", |b| b.iter(|| shard.handle_frame(&push)));
    g.bench_function("push_from", |b| b.iter(|| shard.push_from(table, keys.shard(), &grads)));
    g.bench_function("naive", |b| b.iter(|| naive_push(naive, dim, keys, &grad_bytes)));
    g.finish();

    let mut g = c.benchmark_group(format!("apply/pull/{label}"));
    g.throughput(Throughput::Bytes((elems * raw::ELEM_BYTES) as u64));
    g.bench_function("handle_frame", |b| b.iter(|| shard.handle_frame(&pull)));
    g.bench_function("pull_into", |b| b.iter(|| shard.pull_into(table, keys.shard(), &mut out)));
    g.bench_function("naive", |b| b.iter(|| naive_pull(naive, dim, keys, &mut out)));
    g.finish();
}

/// Decodes a reply frame, checking it answers `request`.
fn reply(out: OutFrame, request: &Frame) -> Message {
    let frame = Frame::from_out(out, &Limits::default()).expect("the shard emits valid frames");
    assert_eq!(frame.request_id, request.request_id, "the reply carries the request's id");
    frame.message().expect("the shard emits valid messages")
}

/// `table[key] += -LR × gradient`, one element at a time, gradients read from wire bytes.
fn naive_push(table: &mut [f32], dim: usize, keys: &Keys, grad_bytes: &[u8]) {
    fn apply(table: &mut [f32], dim: usize, keys: impl Iterator<Item = u64>, grad_bytes: &[u8]) {
        for (i, key) in keys.enumerate() {
            for j in 0..dim {
                let b = &grad_bytes[(i * dim + j) * 4..][..4];
                table[key as usize * dim + j] += -LR * f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
    }
    match keys {
        Keys::Range(r) => apply(table, dim, r.keys(), grad_bytes),
        Keys::List(k) => apply(table, dim, k.iter().copied(), grad_bytes),
    }
}

/// `out[i] = table[key i]`, one element at a time.
fn naive_pull(table: &[f32], dim: usize, keys: &Keys, out: &mut [f32]) {
    fn gather(table: &[f32], dim: usize, keys: impl Iterator<Item = u64>, out: &mut [f32]) {
        for (i, key) in keys.enumerate() {
            for j in 0..dim {
                out[i * dim + j] = table[key as usize * dim + j];
            }
        }
    }
    match keys {
        Keys::Range(r) => gather(table, dim, r.keys(), out),
        Keys::List(k) => gather(table, dim, k.iter().copied(), out),
    }
}
