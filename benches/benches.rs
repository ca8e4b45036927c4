//! Criterion benches of the root crate: one binary made of suites, one suite per area.
//!
//! - `frame`: encoding and decoding push frames ([`paramserv::proto::wire`]).
//! - `apply`: a server shard serving pushes and pulls, from frames and through the shared-memory
//!   path ([`paramserv::server::Shard`]).
//!
//! Group names carry the parameters (`frame/encode_push/keys=10000/dim=1`), every group reports
//! `Throughput::Bytes`, and each suite benchmarks a naive baseline beside the library and asserts,
//! once and outside the timed code, that both give the same result. Run every bench once as a test
//! with `cargo bench --bench benches -- --test`; measure with `cargo bench --bench benches`.

// The benches run with the allocator the `paramserv` binary runs with: frames of a megabyte are
// allocated and freed on every iteration, and the allocator decides what that costs.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod suites {
    pub(crate) mod apply;
    pub(crate) mod frame;

    /// `n` sorted, distinct keys, one in each block of `stride` keys at a pseudo-random position:
    /// the keys of a sparse push, spread over `n × stride` rows.
    pub(crate) fn spread_keys(n: u64, stride: u64) -> Vec<u64> {
        (0..n).map(|i| i * stride + (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) % stride).collect()
    }

    /// `n` deterministic values in `[-0.5, 0.5)`, different per `salt`.
    pub(crate) fn values(n: usize, salt: u32) -> Vec<f32> {
        (0..n as u32).map(|i| (i ^ salt).wrapping_mul(0x9e37_79b9) as f32 / 4_294_967_296.0 - 0.5).collect()
    }

    /// Bit patterns, to compare floats exactly.
    pub(crate) fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }
}

criterion::criterion_group!(benches, suites::frame::bench_frame, suites::apply::bench_apply);
criterion::criterion_main!(benches);
