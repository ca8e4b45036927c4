//! `paramserv bench codecs`: speed, wire ratio and error of codec pipelines, on one core.
//!
//! For each pipeline: encode the gradient `runs` times and keep the fastest (the encoder and its
//! output buffer are reused, as a trainer reuses them), decode-and-add the payload the same way
//! (the server's hot path), and compare one decode with the input. Speeds are GB/s of `f32` input
//! (`4 · floats` bytes, 10^9 bytes a GB), so every codec is measured against the same yardstick.
//!
//! The gradient is `floats` standard-normal values drawn from `seed`, or a file of little-endian
//! `f32` (`--input`). With `--sparse`, it is `keys` sorted keys spread over `key-space` with `dim`
//! normal values each, coded with its keys (`Pipeline::encode_sparse`), and `bytes_in` counts
//! 8 bytes a key plus 4 a value, what a sparse push carries uncompressed.

use std::path::PathBuf;
use std::time::Instant;

use clap::ArgAction;
use clap::builder::BoolishValueParser;
use paramserv_codecs::{CodecSpec, Pipeline, decode, decode_add, decode_sparse};

use super::BenchError;
use crate::rng::SplitMix64;

/// Flags of `paramserv bench codecs`.
#[derive(Clone, Debug, clap::Args)]
pub struct CodecArgs {
    /// Values in the dense gradient.
    #[arg(long, env = "PS_FLOATS", default_value_t = 25_000_000)]
    pub floats: usize,
    /// A pipeline to measure (repeatable), e.g. `ef(topk:0.01)|zstd:3`; default: a list covering
    /// every codec.
    #[arg(long = "codec", value_name = "SPEC", action = ArgAction::Append)]
    pub codecs: Vec<CodecSpec>,
    /// Timed runs per pipeline; the fastest counts.
    #[arg(long, env = "PS_RUNS", default_value_t = 3)]
    pub runs: u32,
    /// Read the dense gradient from this file of little-endian `f32` instead.
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// A sparse gradient: `keys` keys with `dim` values each, coded together with the keys.
    #[arg(long, action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub sparse: bool,
    /// Keys of the sparse gradient.
    #[arg(long, default_value_t = 1_000_000)]
    pub keys: usize,
    /// Values per key of the sparse gradient.
    #[arg(long, default_value_t = 1)]
    pub dim: usize,
    /// The sparse gradient's keys are spread over `0..key-space`.
    #[arg(long, default_value_t = 100_000_000)]
    pub key_space: u64,
    /// Seed of the gradient.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Print one JSON object per pipeline.
    #[arg(long, env = "PS_JSON", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub json: bool,
}

/// One pipeline's figures.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CodecReport {
    /// The pipeline, in canonical form.
    pub codec: String,
    /// Values coded.
    pub floats: usize,
    /// Keys, for a sparse gradient.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<usize>,
    /// Encode speed, GB/s of `f32` input.
    pub encode_gb_s: f64,
    /// Decode-and-add speed, GB/s of `f32` output.
    pub decode_gb_s: f64,
    /// Uncompressed bytes: 4 a value, plus 8 a key for a sparse gradient.
    pub bytes_in: u64,
    /// Payload bytes.
    pub bytes_out: u64,
    /// `bytes_in / bytes_out`.
    pub ratio: f64,
    /// `‖decoded − input‖₂ / ‖input‖₂` of the first encode.
    pub rel_l2_error: f64,
}

/// `n` standard-normal values from `seed`.
fn normal(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::for_item(seed, 0);
    (0..n).map(|_| rng.next_normal() as f32).collect()
}

/// `n` sorted distinct keys, one at a random place in each of `n` equal slices of `0..space`.
fn spread_keys(n: usize, space: u64, seed: u64) -> Vec<u64> {
    let stride = (space / n.max(1) as u64).max(1);
    let mut rng = SplitMix64::for_item(seed, 1);
    (0..n as u64).map(|i| i * stride + rng.next_u64() % stride).collect()
}

fn read_input(path: &PathBuf) -> Result<Vec<f32>, BenchError> {
    let bytes = std::fs::read(path).map_err(|e| BenchError::Args(format!("--input {}: {e}", path.display())))?;
    paramserv_codecs::raw::decode(&bytes).map_err(|e| BenchError::Args(format!("--input {}: {e}", path.display())))
}

fn rel_l2(decoded: &[f32], input: &[f32]) -> f64 {
    let (mut err, mut norm) = (0.0f64, 0.0f64);
    for (d, x) in decoded.iter().zip(input) {
        err += (f64::from(*d) - f64::from(*x)).powi(2);
        norm += f64::from(*x).powi(2);
    }
    if norm == 0.0 { err.sqrt() } else { (err / norm).sqrt() }
}

/// Fastest of `runs` calls of `f`, in seconds.
fn fastest(runs: u32, mut f: impl FnMut()) -> f64 {
    (0..runs.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// Runs the benchmark; one report per pipeline, in the order given.
pub fn codecs(args: &CodecArgs) -> Result<Vec<CodecReport>, BenchError> {
    let specs: Vec<CodecSpec> = if args.codecs.is_empty() {
        paramserv_codecs::spec::EVERY_CODEC.iter().map(|s| s.parse().expect("the default pipelines parse")).collect()
    } else {
        args.codecs.clone()
    };
    if args.sparse {
        if args.keys == 0 || args.dim == 0 || args.key_space < args.keys as u64 {
            return Err(BenchError::Args(format!(
                "--sparse needs --keys >= 1, --dim >= 1 and --key-space >= --keys (got {}, {}, {})",
                args.keys, args.dim, args.key_space
            )));
        }
        let keys = spread_keys(args.keys, args.key_space, args.seed);
        let rows = normal(args.keys * args.dim, args.seed);
        return specs.iter().map(|spec| sparse_one(spec, args, &keys, &rows)).collect();
    }
    let grad = match &args.input {
        Some(path) => read_input(path)?,
        None => normal(args.floats, args.seed),
    };
    if grad.is_empty() {
        return Err(BenchError::Args("the gradient is empty (--floats 0, or an empty --input)".into()));
    }
    Ok(specs.iter().map(|spec| dense_one(spec, args.runs, &grad)).collect())
}

fn dense_one(spec: &CodecSpec, runs: u32, grad: &[f32]) -> CodecReport {
    let n = grad.len();
    let mut codec = Pipeline::with_seed(spec, 7);
    let mut payload = Vec::with_capacity(n * 5);
    codec.encode(grad, &mut payload);
    let decoded = decode(&payload, n).expect("a pipeline decodes its own payload");
    let rel_l2_error = rel_l2(&decoded, grad);
    let bytes_out = payload.len() as u64;
    let encode_s = fastest(runs, || {
        payload.clear();
        codec.encode(grad, &mut payload);
    });
    let mut acc = vec![0.0f32; n];
    let decode_s = fastest(runs, || decode_add(&payload, 1e-3, &mut acc).expect("own payload"));
    let bytes_in = (n * 4) as u64;
    CodecReport {
        codec: spec.to_string(),
        floats: n,
        keys: None,
        encode_gb_s: bytes_in as f64 / encode_s / 1e9,
        decode_gb_s: bytes_in as f64 / decode_s / 1e9,
        bytes_in,
        bytes_out,
        ratio: bytes_in as f64 / bytes_out as f64,
        rel_l2_error,
    }
}

fn sparse_one(spec: &CodecSpec, args: &CodecArgs, keys: &[u64], rows: &[f32]) -> Result<CodecReport, BenchError> {
    let mut codec = Pipeline::with_seed(spec, 7);
    let mut payload = Vec::with_capacity(rows.len() * 5 + keys.len() * 9);
    let fail = |e: paramserv_codecs::CodecError| BenchError::Args(format!("sparse gradient: {e}"));
    codec.encode_sparse(keys, args.dim, rows, &mut payload).map_err(fail)?;
    let back = decode_sparse(&payload, rows.len()).map_err(fail)?;
    assert_eq!(back.keys, keys, "{spec}: keys must round-trip");
    let rel_l2_error = rel_l2(&back.rows, rows);
    let bytes_out = payload.len() as u64;
    let encode_s = fastest(args.runs, || {
        payload.clear();
        codec.encode_sparse(keys, args.dim, rows, &mut payload).expect("checked above");
    });
    let decode_s = fastest(args.runs, || {
        std::hint::black_box(decode_sparse(&payload, rows.len()).expect("own payload"));
    });
    let value_bytes = (rows.len() * 4) as u64;
    let bytes_in = value_bytes + keys.len() as u64 * 8;
    Ok(CodecReport {
        codec: spec.to_string(),
        floats: rows.len(),
        keys: Some(keys.len()),
        encode_gb_s: value_bytes as f64 / encode_s / 1e9,
        decode_gb_s: value_bytes as f64 / decode_s / 1e9,
        bytes_in,
        bytes_out,
        ratio: bytes_in as f64 / bytes_out as f64,
        rel_l2_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> CodecArgs {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            a: CodecArgs,
        }
        Cli::parse_from(std::iter::once("x").chain(extra.iter().copied())).a
    }

    #[test]
    fn lossless_pipelines_report_no_error_and_fp16_halves_the_bytes() {
        let r = codecs(&args(&["--floats", "10000", "--runs", "1", "--codec", "raw", "--codec", "fp16"])).unwrap();
        assert_eq!(r[0].codec, "raw");
        assert_eq!(r[0].rel_l2_error, 0.0);
        assert!(r[0].ratio < 1.0 && r[0].ratio > 0.99, "raw carries only a header: {}", r[0].ratio);
        assert!((r[1].ratio - 2.0).abs() < 0.01 && r[1].rel_l2_error < 1e-3 && r[1].rel_l2_error > 0.0, "{:?}", r[1]);
        assert!(r.iter().all(|r| r.encode_gb_s > 0.0 && r.decode_gb_s > 0.0));
    }

    #[test]
    fn sparse_gradients_count_their_keys() {
        let r =
            codecs(&args(&["--sparse", "--keys", "1000", "--key-space", "100000", "--runs", "1", "--codec", "raw"]))
                .unwrap();
        assert_eq!(r[0].bytes_in, 1000 * 12);
        // Keys 100 apart on average cost about a byte each instead of 8.
        assert!(r[0].ratio > 2.0, "{:?}", r[0]);
        assert_eq!(r[0].keys, Some(1000));
    }

    #[test]
    fn bad_shapes_are_refused() {
        let err = codecs(&args(&["--sparse", "--keys", "10", "--key-space", "5"])).unwrap_err();
        assert!(err.to_string().contains("--key-space >= --keys"), "{err}");
        let err = codecs(&args(&["--floats", "0"])).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
    }
}
