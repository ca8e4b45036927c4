//! Criterion benches of every codec (`spec::EVERY_CODEC`): encode and decode-add of a normal
//! gradient.
//!
//! `CODEC_BENCH_FLOATS` sets the gradient's length (default 1M; the README's targets are for
//! 25M: `CODEC_BENCH_FLOATS=25000000 cargo bench -p paramserv-codecs --bench codecs`). A filter
//! after `--` picks codecs by group name, e.g. `-- topk`. Every group reports `Throughput::Bytes`
//! of `f32` input, so criterion's GB/s is the issue's `encode_gb_s`. Before timing, each group
//! checks once that the payload decodes to the input's length and, for lossless codecs, to the
//! input itself.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use paramserv_codecs::spec::EVERY_CODEC;
use paramserv_codecs::{CodecSpec, Pipeline, decode, decode_add};

/// `n` standard-normal values from a fixed seed (SplitMix64 and Box-Muller).
fn normal(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    let mut next = || {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u1, u2) = (1.0 - next(), next());
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect()
}

fn floats() -> usize {
    std::env::var("CODEC_BENCH_FLOATS").ok().and_then(|v| v.parse().ok()).unwrap_or(1 << 20)
}

fn codecs(c: &mut Criterion) {
    let n = floats();
    let grad = normal(n, 42);
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    for text in EVERY_CODEC {
        let group = format!("codecs/{text}/n={n}");
        // Criterion filters benchmarks, not this setup: skip codecs the command line left out.
        if !filter.is_empty() && !filter.iter().any(|f| group.contains(f.as_str())) {
            continue;
        }
        let spec: CodecSpec = text.parse().expect("the bench's specs parse");
        let mut codec = Pipeline::new(&spec);
        let mut payload = Vec::with_capacity(n * 5);
        codec.encode(&grad, &mut payload);
        let decoded = decode(&payload, n).expect("a codec decodes its own payload");
        assert_eq!(decoded.len(), n, "{text}");
        if spec.is_lossless() {
            assert!(decoded.iter().zip(&grad).all(|(a, b)| a.to_bits() == b.to_bits()), "{text} is not lossless");
        }
        let mut g = c.benchmark_group(group);
        g.sample_size(10);
        g.throughput(Throughput::Bytes((n * 4) as u64));
        g.bench_function("encode", |b| {
            b.iter(|| {
                payload.clear();
                codec.encode(black_box(&grad), &mut payload);
                black_box(&payload);
            });
        });
        let mut acc = vec![0.0f32; n];
        g.bench_function("decode_add", |b| {
            b.iter(|| decode_add(black_box(&payload), 1e-3, &mut acc).expect("own payload"));
        });
        g.finish();
    }
}

criterion_group!(benches, codecs);
criterion_main!(benches);
