//! Criterion benches of the `raw` codec (lossless little-endian `f32`), each beside a naive
//! per-element baseline whose output it must equal.
//!
//! Every group works on 1M elements (4 MB of payload) and reports `Throughput::Bytes` of payload.
//! Buffers are allocated once per group and reused, so allocation is not measured. Payloads that
//! are read sit at an odd address, as the values of a push frame do (after a 16-byte header, 9
//! bytes of table and key-list prefix and 8 bytes per key).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use paramserv_codecs::raw;

/// Elements per benchmark: 1M `f32`, a large embedding push.
const N: usize = 1 << 20;
/// Learning-rate-like scale for the fused apply step.
const SCALE: f32 = -0.01;

/// Deterministic values in `[-0.5, 0.5)`, different per `salt`.
fn values(n: usize, salt: u32) -> Vec<f32> {
    (0..n as u32).map(|i| (i ^ salt).wrapping_mul(0x9e37_79b9) as f32 / 4_294_967_296.0 - 0.5).collect()
}

/// `values` encoded, one byte into a buffer: slice it with `[1..]` for an odd-addressed payload.
fn encoded_at_odd_offset(values: &[f32]) -> Vec<u8> {
    let mut buf = vec![0u8; 1];
    raw::encode_into(values, &mut buf);
    buf
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Naive encoder: one `to_le_bytes` append per element.
fn naive_encode(values: &[f32], out: &mut Vec<u8>) {
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Naive decoder: one indexed, bounds-checked read per element.
fn naive_decode(payload: &[u8], out: &mut [f32]) {
    for (i, dst) in out.iter_mut().enumerate() {
        let b = &payload[i * 4..i * 4 + 4];
        *dst = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

/// Naive apply step: one indexed, bounds-checked read and update per element.
fn naive_add_scaled(payload: &[u8], scale: f32, out: &mut [f32]) {
    for i in 0..out.len() {
        let b = &payload[i * 4..i * 4 + 4];
        out[i] += scale * f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

fn encode_into(c: &mut Criterion) {
    let vals = values(N, 1);
    let mut lib = Vec::with_capacity(N * raw::ELEM_BYTES);
    let mut naive = Vec::with_capacity(N * raw::ELEM_BYTES);
    raw::encode_into(&vals, &mut lib);
    naive_encode(&vals, &mut naive);
    assert_eq!(lib, naive, "raw::encode_into differs from the naive encoder");

    let mut g = c.benchmark_group("raw/encode_into/n=1M");
    g.throughput(Throughput::Bytes((N * raw::ELEM_BYTES) as u64));
    g.bench_function("library", |b| {
        b.iter(|| {
            lib.clear();
            raw::encode_into(black_box(&vals), &mut lib);
            black_box(&lib);
        });
    });
    g.bench_function("naive", |b| {
        b.iter(|| {
            naive.clear();
            naive_encode(black_box(&vals), &mut naive);
            black_box(&naive);
        });
    });
    g.finish();
}

fn decode_into(c: &mut Criterion) {
    let vals = values(N, 2);
    let buf = encoded_at_odd_offset(&vals);
    let payload = &buf[1..];
    let mut lib = vec![0.0f32; N];
    let mut naive = vec![0.0f32; N];
    raw::decode_into(payload, &mut lib).expect("payload holds N elements");
    naive_decode(payload, &mut naive);
    assert_eq!(bits(&lib), bits(&naive), "raw::decode_into differs from the naive decoder");
    assert_eq!(bits(&lib), bits(&vals), "raw::decode_into does not round-trip");

    let mut g = c.benchmark_group("raw/decode_into/n=1M");
    g.throughput(Throughput::Bytes(payload.len() as u64));
    g.bench_function("library", |b| {
        b.iter(|| raw::decode_into(black_box(payload), &mut lib).expect("payload holds N elements"));
    });
    g.bench_function("naive", |b| b.iter(|| naive_decode(black_box(payload), &mut naive)));
    g.finish();
}

fn add_scaled_into(c: &mut Criterion) {
    let buf = encoded_at_odd_offset(&values(N, 3));
    let payload = &buf[1..];
    let base = values(N, 4);
    let (mut lib, mut naive) = (base.clone(), base);
    raw::add_scaled_into(payload, SCALE, &mut lib).expect("payload holds N elements");
    naive_add_scaled(payload, SCALE, &mut naive);
    assert_eq!(bits(&lib), bits(&naive), "raw::add_scaled_into differs from the naive apply step");

    // The rows keep accumulating across iterations; |row| stays far below f32 overflow.
    let mut g = c.benchmark_group("raw/add_scaled_into/n=1M");
    g.throughput(Throughput::Bytes(payload.len() as u64));
    g.bench_function("library", |b| {
        b.iter(|| raw::add_scaled_into(black_box(payload), SCALE, &mut lib).expect("payload holds N elements"));
    });
    g.bench_function("naive", |b| b.iter(|| naive_add_scaled(black_box(payload), SCALE, &mut naive)));
    g.finish();
}

criterion_group!(benches, encode_into, decode_into, add_scaled_into);
criterion_main!(benches);
