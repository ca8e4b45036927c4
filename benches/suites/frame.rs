//! Push frames on the wire: encoding (`wire::encode_push`, `wire::encode_push_bulk`) and decoding
//! (`wire::decode_frame` + `Frame::message`), each beside a naive baseline.
//!
//! Cases: one dense row of 256000 values (1 MB), and 10k and 100k keys of one value each (a sparse
//! embedding push). Keys are sorted and spread over the table. Throughput is the frame's wire length.
//!
//! Baselines:
//! - encode `naive`: a `BytesMut` of the right capacity filled with one `put_u64_le` per key and one
//!   `put_f32_le` per value, the way a frame is built without a bulk copy of the values.
//! - decode `naive`: reads the header and then every key and value into owned vectors, one
//!   `try_get_*` each, the way a decoder works that does not slice the received buffer.

use std::hint::black_box;

use bytes::{Buf, BufMut, BytesMut, TryGetError};
use criterion::{BatchSize, Criterion, Throughput};
use paramserv::proto::wire::{self, Frame, KeySet, KeysRef, Kind, Limits, Message, OutFrame};
use paramserv_codecs::raw;

use super::{bits, spread_keys, values};

const REQUEST: u64 = 0x0102;
const TABLE: u32 = 3;
/// Frames held at once by a decode batch: each iteration needs its own copy of the received bytes.
const DECODE_BATCH_BYTES: usize = 64 << 20;

/// `(keys, dim)` of each case.
const CASES: [(usize, usize); 3] = [(1, 256_000), (10_000, 1), (100_000, 1)];

pub(crate) fn bench_frame(c: &mut Criterion) {
    for (n_keys, dim) in CASES {
        let keys = spread_keys(n_keys as u64, 100);
        let vals = values(n_keys * dim, 1);
        let frame = encode(c, &keys, &vals, dim);
        decode(c, &frame, &keys, &vals, dim);
    }
}

/// Benches the encoders for one case and returns the frame they all produce.
fn encode(c: &mut Criterion, keys: &[u64], vals: &[f32], dim: usize) -> OutFrame {
    let list = KeysRef::List(keys);
    let bulk = {
        let mut b = BytesMut::with_capacity(vals.len() * raw::ELEM_BYTES);
        raw::put_slice(vals, &mut b);
        b.freeze()
    };
    let lib = wire::encode_push(REQUEST, TABLE, None, list, vals).expect("the key count fits a u32");
    let lib_bulk = wire::encode_push_bulk(REQUEST, TABLE, None, list, bulk.clone()).expect("the key count fits a u32");
    let naive = naive_encode_push(REQUEST, TABLE, keys, vals);
    assert_eq!(lib, naive, "wire::encode_push differs from the naive encoder");
    assert_eq!(lib_bulk.header, naive.header, "wire::encode_push_bulk's header differs from the naive encoder's");
    assert_eq!(lib_bulk.contiguous_payload(), naive.payload, "wire::encode_push_bulk's payload differs");
    assert_eq!(lib_bulk.bulk.as_ptr(), bulk.as_ptr(), "encode_push_bulk hands the values over uncopied");

    let mut g = c.benchmark_group(format!("frame/encode_push/keys={}/dim={dim}", keys.len()));
    g.throughput(Throughput::Bytes(lib.wire_len() as u64));
    g.bench_function("encode_push", |b| {
        b.iter(|| wire::encode_push(REQUEST, TABLE, None, KeysRef::List(black_box(keys)), black_box(vals)))
    });
    g.bench_function("encode_push_bulk", |b| {
        b.iter(|| {
            wire::encode_push_bulk(REQUEST, TABLE, None, KeysRef::List(black_box(keys)), black_box(&bulk).clone())
        })
    });
    g.bench_function("naive", |b| b.iter(|| naive_encode_push(REQUEST, TABLE, black_box(keys), black_box(vals))));
    g.finish();
    lib
}

/// Benches the decoders for one case on the bytes of `frame`.
fn decode(c: &mut Criterion, frame: &OutFrame, keys: &[u64], vals: &[f32], dim: usize) {
    let mut wire_bytes = frame.header.to_vec();
    wire_bytes.extend_from_slice(&frame.contiguous_payload());
    let limits = Limits::default();
    let lib = |mut buf: BytesMut| -> (Frame, Message) {
        let frame = wire::decode_frame(&mut buf, &limits).expect("a valid frame").expect("a whole frame");
        let msg = frame.message().expect("a valid push");
        (frame, msg)
    };

    let (got_frame, msg) = lib(BytesMut::from(&wire_bytes[..]));
    let Message::Push { table, keys: KeySet::List(got_keys), values: got_vals, .. } = msg else {
        panic!("decoded {msg:?}, expected a push with a key list");
    };
    let naive = naive_decode_push(&mut BytesMut::from(&wire_bytes[..])).expect("a valid frame");
    let lib_vals = raw::decode(&got_vals).expect("whole f32 values");
    assert_eq!((got_frame.kind, got_frame.request_id, table), (Kind::Push, naive.request_id, naive.table));
    assert_eq!(got_keys.iter().collect::<Vec<_>>(), naive.keys, "decoded keys differ from the naive decoder's");
    assert_eq!(bits(&lib_vals), bits(&naive.values), "decoded values differ from the naive decoder's");
    assert_eq!((naive.keys.as_slice(), bits(&naive.values)), (keys, bits(vals)), "the frame does not round-trip");

    let batch = BatchSize::NumIterations((DECODE_BATCH_BYTES / wire_bytes.len()).max(1) as u64);
    let setup = || BytesMut::from(&wire_bytes[..]);
    let mut g = c.benchmark_group(format!("frame/decode_push/keys={}/dim={dim}", keys.len()));
    g.throughput(Throughput::Bytes(wire_bytes.len() as u64));
    g.bench_function("decode_frame", |b| b.iter_batched(setup, lib, batch));
    g.bench_function("naive", |b| {
        b.iter_batched(setup, |mut buf| naive_decode_push(&mut buf).expect("a valid frame"), batch)
    });
    g.finish();
}

/// Builds a push frame one element at a time.
fn naive_encode_push(request_id: u64, table: u32, keys: &[u64], values: &[f32]) -> OutFrame {
    let mut out = BytesMut::with_capacity(4 + 1 + 1 + 4 + keys.len() * 8 + values.len() * 4);
    out.put_u32_le(table);
    out.put_u8(0); // no step
    // Ascending keys travel as a delta list: [tag 2][byte length u32][delta-coded keys].
    let mut coded = Vec::new();
    paramserv_codecs::encode_keys(keys, &mut coded).expect("bench keys ascend");
    out.put_u8(2);
    out.put_u32_le(u32::try_from(coded.len()).expect("a bench key list fits a u32"));
    out.put_slice(&coded);
    for v in values {
        out.put_f32_le(*v);
    }
    OutFrame::new(Kind::Push, request_id, out.freeze()).expect("a bench frame fits a u32 length")
}

/// A push decoded into owned vectors.
struct NaivePush {
    request_id: u64,
    table: u32,
    keys: Vec<u64>,
    values: Vec<f32>,
}

/// Takes one push frame off `buf`, copying every key and value out of it.
fn naive_decode_push(buf: &mut BytesMut) -> Result<NaivePush, TryGetError> {
    let mut hdr: &[u8] = buf.get(..wire::HEADER_LEN).ok_or(short(wire::HEADER_LEN, buf.len()))?;
    hdr.advance(4); // magic, version and kind: not checked by this baseline
    let len = hdr.try_get_u32_le()? as usize;
    let request_id = hdr.try_get_u64_le()?;
    if buf.len() < wire::HEADER_LEN + len {
        return Err(short(wire::HEADER_LEN + len, buf.len()));
    }
    buf.advance(wire::HEADER_LEN);
    let mut p = buf.split_to(len);
    let table = p.try_get_u32_le()?;
    let _step = p.try_get_u8()?; // the benches push without a step
    let _tag = p.try_get_u8()?; // a delta list, as the benches' ascending keys are sent
    let n = p.try_get_u32_le()? as usize;
    if p.remaining() < n {
        return Err(short(n, p.remaining()));
    }
    let coded = p.split_to(n);
    let keys = paramserv_codecs::decode_keys(&coded, usize::MAX).expect("the bench's own keys decode");
    let values = (0..p.remaining() / 4).map(|_| p.try_get_f32_le()).collect::<Result<Vec<_>, _>>()?;
    Ok(NaivePush { request_id, table, keys, values })
}

fn short(requested: usize, available: usize) -> TryGetError {
    TryGetError { requested, available }
}
