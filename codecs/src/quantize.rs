//! Quantizers: 1-bit (Seide et al. 2014), signSGD with a scale, QSGD (Alistarh et al. 2017) and
//! TernGrad (Wen et al. 2017).
//!
//! # Formats
//! Every body cuts the `n` elements into blocks (QSGD and TernGrad call them buckets) of the size
//! it names, the last one shorter, and writes per block a few little-endian `f32` scales and then
//! bit planes. A plane holds `b` bits per element of its block, element `j` at bits `j·b..` of the
//! plane read as one little-endian number (LSB first: element 0 is bit 0 of byte 0), padded with
//! zero bits to a whole byte. The sign plane holds each input's IEEE sign bit (set = negative,
//! -0.0 included).
//!
//! ```text
//! onebit   [block: varint]  per block:  [mean⁺: f32][mean⁻: f32][sign plane]
//! signsgd  [block: varint]  per block:  [scale: f32][sign plane]
//! qsgd     [levels s: varint][bucket: varint]  per bucket:  [norm: f32][sign plane][level plane]
//! terngrad [bucket: varint]  per bucket:  [scale: f32][sign plane][nonzero plane]
//! ```
//!
//! - 1-bit: mean⁺ is the mean of the block's elements whose sign bit is clear (+0.0 included),
//!   mean⁻ that of the others (-0.0 included); each element decodes to its part's mean, so the block's sum is kept
//!   up to the `f32` rounding of two means, and the decoded sign bit is the input's. A part with no
//!   element has mean +0.0 / -0.0.
//! - signSGD: scale is the block's mean |g|; an element decodes to ±scale by its sign bit. Zero has
//!   no symbol of its own: +0.0 decodes to +scale, -0.0 to -scale (error feedback carries the
//!   difference to the next step).
//! - QSGD: the level plane holds `ceil(log2(s+1))` bits an element (sign and level together take
//!   `ceil(log2(2s+1))` bits, the least a fixed-width code can). Level `l` is `floor(r)` or
//!   `floor(r)+1` for `r = |g|/norm·s`, the latter with probability `frac(r)`; an element decodes
//!   to `±norm·(l·(1/s))`, at most `norm` in magnitude. Unbiased: `E[decoded] = g`.
//! - TernGrad: scale is the bucket's max |g|; an element is nonzero with probability `|g|/scale`
//!   and decodes to `scale·(±1 or ±0)`, so `E[decoded] = g`. Two planes of one bit (2 bits an
//!   element); base-3 packing would take 1.6 but cost a table lookup per element in the decoder.
//!
//! Stochastic rounding draws a 16-bit uniform `u` per element, four from each xoshiro256++
//! output, and rounds up when `u + 1/2 < frac(r)·2^16`: with probability `frac(r)·2^16` rounded
//! to an integer, over 2^16. The bias is therefore below `norm/s·2^-17` (QSGD) or `scale·2^-17`
//! (TernGrad) per element, plus the `f32` rounding of `r`. The random stream belongs to the
//! encoder and advances across calls; the decoder needs none of it.
//!
//! # Non-finite input and what decoders refuse
//! A NaN or infinity in a block makes its scale (for 1-bit the mean of its part) non-finite, and
//! decoders pass that through: the block decodes to non-finite values, as it would through `raw`,
//! instead of the payload being refused. Decoders refuse a block or bucket size outside
//! `1..=2^24`, levels outside `1..=2^15`, a scale whose sign bit is not the one the encoder writes
//! (set for mean⁻, clear for the rest), a QSGD level above `s`, nonzero padding bits, and a body
//! of any other length than `n` and the block size imply. The whole payload is checked before
//! anything is written, so a refused payload leaves `out` as it was; decoders allocate nothing.
//!
//! # Speed
//! Kernels take 64 elements at a time (one `u64` of sign bits) and are compiled for AVX-512, AVX2
//! and the baseline by `multiversion`. Sums use 16 `f64` lanes in a fixed order and nothing is
//! contracted into FMAs, so every clone writes the same payload, and a block's sum cannot overflow.

use multiversion::multiversion;

use crate::format::{self, Reader, Sink};
use crate::rng::Xoshiro256pp;
use crate::{CodecError, Encoder, id};

/// Largest block or bucket a payload may name.
const MAX_BLOCK: u32 = 1 << 24;
/// Largest QSGD level count a payload may name.
const MAX_LEVELS: u32 = 1 << 15;
/// Elements per sign word, the kernels' unit of work.
const WORD: usize = 64;
/// Independent accumulators: two 512-bit vectors of `f64`, so sums vectorize in a fixed order.
const LANES: usize = 16;
/// Bits of each stochastic-rounding threshold and of each uniform drawn against it.
const UNIFORM_BITS: u32 = 16;
/// Uniforms cut from one `u64` of the random stream.
const UNIFORMS_PER_DRAW: usize = 64 / UNIFORM_BITS as usize;
/// `2^UNIFORM_BITS`, the fixed-point scale of a probability.
const FIXED_ONE: f32 = (1u32 << UNIFORM_BITS) as f32;
/// Bits of 1.0f32, the magnitude of a nonzero ternary value.
const ONE_BITS: u32 = 0x3f80_0000;

/// Calls a function generic over the QSGD level width (`1..=16` bits) with the width given at run
/// time, so each width gets its own unrolled packing code.
macro_rules! with_level_bits {
    ($bits:expr, $f:ident $(::<$($g:ty),*>)?, $($arg:expr),* $(,)?) => {
        match $bits {
            1 => $f::<1 $($(, $g)*)?>($($arg),*),
            2 => $f::<2 $($(, $g)*)?>($($arg),*),
            3 => $f::<3 $($(, $g)*)?>($($arg),*),
            4 => $f::<4 $($(, $g)*)?>($($arg),*),
            5 => $f::<5 $($(, $g)*)?>($($arg),*),
            6 => $f::<6 $($(, $g)*)?>($($arg),*),
            7 => $f::<7 $($(, $g)*)?>($($arg),*),
            8 => $f::<8 $($(, $g)*)?>($($arg),*),
            9 => $f::<9 $($(, $g)*)?>($($arg),*),
            10 => $f::<10 $($(, $g)*)?>($($arg),*),
            11 => $f::<11 $($(, $g)*)?>($($arg),*),
            12 => $f::<12 $($(, $g)*)?>($($arg),*),
            13 => $f::<13 $($(, $g)*)?>($($arg),*),
            14 => $f::<14 $($(, $g)*)?>($($arg),*),
            15 => $f::<15 $($(, $g)*)?>($($arg),*),
            16 => $f::<16 $($(, $g)*)?>($($arg),*),
            other => unreachable!("level widths are 1..=16 bits for 1..=2^15 levels, not {other}"),
        }
    };
}

/// 1-bit quantization with the means of both signs per block.
#[derive(Clone, Debug)]
pub(crate) struct OneBit {
    block: usize,
}

impl OneBit {
    /// `block` elements per block; values outside `1..=2^24` (possible only for a hand-built
    /// spec, the parser refuses them) are clamped into it, so every payload decodes.
    pub(crate) fn new(block: u32) -> Self {
        Self { block: block.clamp(1, MAX_BLOCK) as usize }
    }
}

impl Encoder for OneBit {
    fn encode(&mut self, values: &[f32], out: &mut Vec<u8>) {
        format::put_header(out, id::ONEBIT, values.len());
        format::put_varint(out, self.block as u64);
        let layout = Layout::onebit(self.block);
        let body = grow(out, layout.body_bytes(values.len()));
        encode_onebit(values, layout, body);
    }
}

/// signSGD with the mean |g| of each block as the scale.
#[derive(Clone, Debug)]
pub(crate) struct SignSgd {
    block: usize,
}

impl SignSgd {
    /// `block` elements per block, clamped into `1..=2^24` like [`OneBit::new`].
    pub(crate) fn new(block: u32) -> Self {
        Self { block: block.clamp(1, MAX_BLOCK) as usize }
    }
}

impl Encoder for SignSgd {
    fn encode(&mut self, values: &[f32], out: &mut Vec<u8>) {
        format::put_header(out, id::SIGNSGD, values.len());
        format::put_varint(out, self.block as u64);
        let layout = Layout::signsgd(self.block);
        let body = grow(out, layout.body_bytes(values.len()));
        encode_signsgd(values, layout, body);
    }
}

/// QSGD: stochastic levels of the bucket's L2 norm.
#[derive(Clone, Debug)]
pub(crate) struct Qsgd {
    levels: u32,
    bucket: usize,
    rng: Xoshiro256pp,
}

impl Qsgd {
    /// `levels` (s) clamped into `1..=2^15` and `bucket` into `1..=2^24`; the random stream is
    /// seeded with `seed` and advances across calls.
    pub(crate) fn new(levels: u32, bucket: u32, seed: u64) -> Self {
        Self {
            levels: levels.clamp(1, MAX_LEVELS),
            bucket: bucket.clamp(1, MAX_BLOCK) as usize,
            rng: Xoshiro256pp::new(seed),
        }
    }
}

impl Encoder for Qsgd {
    fn encode(&mut self, values: &[f32], out: &mut Vec<u8>) {
        format::put_header(out, id::QSGD, values.len());
        format::put_varint(out, u64::from(self.levels));
        format::put_varint(out, self.bucket as u64);
        let layout = Layout::qsgd(self.bucket, self.levels);
        let body = grow(out, layout.body_bytes(values.len()));
        encode_qsgd(values, layout, self.levels, &mut self.rng, body);
    }
}

/// TernGrad: stochastic ternary values of the bucket's max |g|.
#[derive(Clone, Debug)]
pub(crate) struct TernGrad {
    bucket: usize,
    rng: Xoshiro256pp,
}

impl TernGrad {
    /// `bucket` clamped into `1..=2^24`; the random stream is seeded with `seed` and advances
    /// across calls.
    pub(crate) fn new(bucket: u32, seed: u64) -> Self {
        Self { bucket: bucket.clamp(1, MAX_BLOCK) as usize, rng: Xoshiro256pp::new(seed) }
    }
}

impl Encoder for TernGrad {
    fn encode(&mut self, values: &[f32], out: &mut Vec<u8>) {
        format::put_header(out, id::TERNGRAD, values.len());
        format::put_varint(out, self.bucket as u64);
        let layout = Layout::terngrad(self.bucket);
        let body = grow(out, layout.body_bytes(values.len()));
        encode_terngrad(values, layout, &mut self.rng, body);
    }
}

pub(crate) fn decode_onebit<S: Sink>(r: &mut Reader<'_>, out: &mut [f32], sink: S) -> Result<(), CodecError> {
    let layout = Layout::onebit(read_size(r, "onebit block", MAX_BLOCK)?);
    let body = read_body(r, layout, out.len(), "onebit")?;
    check_blocks(body, layout, out.len(), |b, blk, len| {
        check_sign(blk, 0, false, "onebit mean of the non-negative part", b)?;
        check_sign(blk, 4, true, "onebit mean of the negative part", b)?;
        check_padding(&blk[8..], len, 1, "onebit sign padding", b)
    })?;
    decode_onebit_body(body, layout, out, sink);
    Ok(())
}

pub(crate) fn decode_signsgd<S: Sink>(r: &mut Reader<'_>, out: &mut [f32], sink: S) -> Result<(), CodecError> {
    let layout = Layout::signsgd(read_size(r, "signsgd block", MAX_BLOCK)?);
    let body = read_body(r, layout, out.len(), "signsgd")?;
    check_blocks(body, layout, out.len(), |b, blk, len| {
        check_sign(blk, 0, false, "signsgd scale", b)?;
        check_padding(&blk[4..], len, 1, "signsgd sign padding", b)
    })?;
    decode_signsgd_body(body, layout, out, sink);
    Ok(())
}

pub(crate) fn decode_qsgd<S: Sink>(r: &mut Reader<'_>, out: &mut [f32], sink: S) -> Result<(), CodecError> {
    let levels = read_size(r, "qsgd levels", MAX_LEVELS)? as u32;
    let layout = Layout::qsgd(read_size(r, "qsgd bucket", MAX_BLOCK)?, levels);
    let body = read_body(r, layout, out.len(), "qsgd")?;
    let level_bits = layout.planes[1];
    check_blocks(body, layout, out.len(), |b, blk, len| {
        check_sign(blk, 0, false, "qsgd norm", b)?;
        let (signs, level_plane) = blk[4..].split_at(plane_bytes(len, 1));
        check_padding(signs, len, 1, "qsgd sign padding", b)?;
        check_padding(level_plane, len, level_bits, "qsgd level padding", b)
    })?;
    // A width holds exactly 0..=s when s + 1 is a power of two; otherwise levels need a look.
    if levels < (1 << level_bits) - 1
        && let Some((b, top)) = qsgd_level_above(body, layout, out.len(), levels)
    {
        return Err(CodecError::Invalid {
            what: "qsgd level",
            why: format!("bucket {b} holds level {top}, above the {levels} levels"),
        });
    }
    decode_qsgd_body(body, layout, levels, out, sink);
    Ok(())
}

pub(crate) fn decode_terngrad<S: Sink>(r: &mut Reader<'_>, out: &mut [f32], sink: S) -> Result<(), CodecError> {
    let layout = Layout::terngrad(read_size(r, "terngrad bucket", MAX_BLOCK)?);
    let body = read_body(r, layout, out.len(), "terngrad")?;
    check_blocks(body, layout, out.len(), |b, blk, len| {
        check_sign(blk, 0, false, "terngrad scale", b)?;
        let (signs, nonzero) = blk[4..].split_at(plane_bytes(len, 1));
        check_padding(signs, len, 1, "terngrad sign padding", b)?;
        check_padding(nonzero, len, 1, "terngrad nonzero padding", b)
    })?;
    decode_terngrad_body(body, layout, out, sink);
    Ok(())
}

/// Where each block's fields sit: `head` bytes of scales, then up to two planes of `planes[i]`
/// bits an element (0 = no plane), each padded to a byte.
#[derive(Clone, Copy, Debug)]
struct Layout {
    block: usize,
    head: usize,
    planes: [usize; 2],
}

impl Layout {
    fn onebit(block: usize) -> Self {
        Self { block, head: 8, planes: [1, 0] }
    }

    fn signsgd(block: usize) -> Self {
        Self { block, head: 4, planes: [1, 0] }
    }

    fn qsgd(bucket: usize, levels: u32) -> Self {
        Self { block: bucket, head: 4, planes: [1, (u32::BITS - levels.leading_zeros()) as usize] }
    }

    fn terngrad(bucket: usize) -> Self {
        Self { block: bucket, head: 4, planes: [1, 1] }
    }

    fn block_bytes(&self, len: usize) -> usize {
        self.head + plane_bytes(len, self.planes[0]) + plane_bytes(len, self.planes[1])
    }

    /// Body bytes for `n` elements; `None` if that overflows `usize` (never for a real buffer).
    fn body_bytes(&self, n: usize) -> Option<usize> {
        let full = (n / self.block).checked_mul(self.block_bytes(self.block))?;
        let rem = n % self.block;
        full.checked_add(if rem == 0 { 0 } else { self.block_bytes(rem) })
    }
}

fn plane_bytes(len: usize, bits: usize) -> usize {
    (len * bits).div_ceil(8)
}

/// Extends `out` by `len` zero bytes and returns them.
fn grow(out: &mut Vec<u8>, len: Option<usize>) -> &mut [u8] {
    let len = len.expect("the body of a gradient that fits in memory fits in usize");
    let start = out.len();
    out.resize(start + len, 0);
    &mut out[start..]
}

/// A block size or level count, refused outside `1..=max`.
fn read_size(r: &mut Reader<'_>, what: &'static str, max: u32) -> Result<usize, CodecError> {
    let v = r.varint(what)?;
    if v == 0 || v > u64::from(max) {
        return Err(CodecError::Invalid { what, why: format!("{v} is outside 1..={max}") });
    }
    Ok(v as usize)
}

/// The body, which must be exactly as long as `n` elements in `layout` take.
fn read_body<'a>(r: &mut Reader<'a>, layout: Layout, n: usize, codec: &'static str) -> Result<&'a [u8], CodecError> {
    let need = layout.body_bytes(n).ok_or_else(|| CodecError::Invalid {
        what: "element count",
        why: format!("{n} elements in blocks of {} overflow the address space", layout.block),
    })?;
    let body = r.bytes(need, codec)?;
    r.finish(codec)?;
    Ok(body)
}

/// Runs `check(block index, block bytes, block length)` on every block of a body whose length
/// [`read_body`] checked.
fn check_blocks(
    body: &[u8],
    layout: Layout,
    n: usize,
    mut check: impl FnMut(usize, &[u8], usize) -> Result<(), CodecError>,
) -> Result<(), CodecError> {
    let mut rest = body;
    for b in 0..n.div_ceil(layout.block) {
        let len = layout.block.min(n - b * layout.block);
        let (blk, tail) = rest.split_at(layout.block_bytes(len));
        check(b, blk, len)?;
        rest = tail;
    }
    Ok(())
}

/// Refuses the `f32` at `at` unless its sign bit is `negative`.
fn check_sign(blk: &[u8], at: usize, negative: bool, what: &'static str, b: usize) -> Result<(), CodecError> {
    let v = f32_at(blk, at);
    if v.is_sign_negative() == negative {
        return Ok(());
    }
    let want = if negative { "set" } else { "clear" };
    Err(CodecError::Invalid { what, why: format!("block {b}: {v} should have its sign bit {want}") })
}

/// Refuses set bits after the last of `len` elements of `bits` bits in `plane`.
fn check_padding(plane: &[u8], len: usize, bits: usize, what: &'static str, b: usize) -> Result<(), CodecError> {
    let used = (len * bits) % 8;
    match plane.last() {
        Some(last) if used != 0 && last >> used != 0 => {
            Err(CodecError::Invalid { what, why: format!("block {b}: bits after the last element are set") })
        }
        _ => Ok(()),
    }
}

fn f32_at(blk: &[u8], at: usize) -> f32 {
    f32::from_le_bytes(blk[at..at + 4].try_into().expect("4 bytes"))
}

/// Splits the next `len` bytes off `rest`.
fn take<'a>(rest: &mut &'a mut [u8], len: usize) -> &'a mut [u8] {
    let (head, tail) = std::mem::take(rest).split_at_mut(len);
    *rest = tail;
    head
}

/// One step of an encoder's pass over a block: sees run `k` of 64 values and returns their sign
/// word. A trait with `#[inline(always)]` methods, not a closure: multiversion compiles each
/// clone's body in a nested function, whose closures get neither the clone's target features
/// nor reliable inlining.
trait WordEncoder {
    fn word(&mut self, k: usize, c: &[f32; WORD]) -> u64;
}

/// Runs `e` over `chunk` 64 values at a time (the last run padded with +0.0, which every codec
/// maps to zero bits) and writes the sign words to `plane`.
#[inline(always)]
fn encode_words<E: WordEncoder>(chunk: &[f32], plane: &mut [u8], e: &mut E) {
    let mut runs = chunk.chunks_exact(WORD);
    let mut k = 0;
    for (c, dst) in (&mut runs).zip(plane.chunks_exact_mut(8)) {
        let w = e.word(k, c.try_into().expect("chunks_exact gives 64"));
        dst.copy_from_slice(&w.to_le_bytes());
        k += 1;
    }
    let tail = runs.remainder();
    if !tail.is_empty() {
        let mut pad = [0.0f32; WORD];
        pad[..tail.len()].copy_from_slice(tail);
        let w = e.word(k, &pad);
        let dst = &mut plane[k * 8..];
        let len = dst.len();
        dst.copy_from_slice(&w.to_le_bytes()[..len]);
    }
}

/// One step of a decoder's pass over a block: delivers run `k` of 64 outputs given their sign
/// word.
trait WordDecoder {
    fn put(&mut self, k: usize, w: u64, out: &mut [f32; WORD]);
}

/// Runs `d` over `out` 64 values at a time with the sign words of `plane`. The last run goes
/// through a padded copy, so `d` always sees 64 values and an adding sink still adds to what
/// `out` held.
#[inline(always)]
fn decode_words<D: WordDecoder>(plane: &[u8], out: &mut [f32], d: &mut D) {
    let mut runs = out.chunks_exact_mut(WORD);
    let mut k = 0;
    for (o, src) in (&mut runs).zip(plane.chunks_exact(8)) {
        let w = u64::from_le_bytes(src.try_into().expect("chunks_exact gives 8"));
        d.put(k, w, o.try_into().expect("chunks_exact gives 64"));
        k += 1;
    }
    let tail = runs.into_remainder();
    if !tail.is_empty() {
        let mut bytes = [0u8; 8];
        let src = &plane[k * 8..];
        bytes[..src.len()].copy_from_slice(src);
        let mut pad = [0.0f32; WORD];
        let len = tail.len();
        pad[..len].copy_from_slice(tail);
        d.put(k, u64::from_le_bytes(bytes), &mut pad);
        tail.copy_from_slice(&pad[..len]);
    }
}

/// Bit `j` of each value: its IEEE sign bit.
#[inline(always)]
fn sign_word(c: &[f32; WORD]) -> u64 {
    let mut w = 0;
    for (j, v) in c.iter().enumerate() {
        w |= u64::from(v.to_bits() >> 31) << j;
    }
    w
}

/// Bit `j` of `w` as 0 or 1.
#[inline(always)]
fn bit(w: u64, j: usize) -> u32 {
    ((w >> j) & 1) as u32
}

/// 16-bit uniforms for 64 elements, four from each `u64` of the stream (lowest bits first).
#[inline(always)]
fn uniforms(rng: &mut Xoshiro256pp) -> [u16; WORD] {
    let mut u = [0u16; WORD];
    for quad in u.chunks_exact_mut(UNIFORMS_PER_DRAW) {
        let draw = rng.next_u64();
        for (q, x) in quad.iter_mut().enumerate() {
            *x = (draw >> (UNIFORM_BITS as usize * q)) as u16;
        }
    }
    u
}

/// True with probability `p` (for `p` in `[0, 1]`) to within 2^-17, given `u` uniform in
/// `0..2^16`: it counts the `u` with `u + 1/2 < p·2^16`, which are `p·2^16` rounded to an integer.
/// Compares floats, which vectorizes where a saturating float-to-int cast does not. NaN gives
/// false.
#[inline(always)]
fn round_up(p: f32, u: u16) -> bool {
    f32::from(u) + 0.5 < p * FIXED_ONE
}

/// `floor(r)` or `floor(r) + 1` for `r >= 0`, the latter with probability `frac(r)` (see
/// [`round_up`]). NaN (a zero or non-finite scale) gives 0.
#[inline(always)]
fn stochastic_round(r: f32, u: u16) -> u16 {
    let floor = r.floor();
    // A saturating cast: NaN is 0, and r <= 2^15 fits.
    floor as i32 as u16 + u16::from(round_up(r - floor, u))
}

/// `sum / count` in `f32`; +0.0 for an empty part.
fn part_mean(sum: f64, count: usize) -> f32 {
    if count == 0 { 0.0 } else { (sum / count as f64) as f32 }
}

/// Folds the lanes in a fixed order.
fn lane_sum(lanes: &[f64; LANES]) -> f64 {
    lanes.iter().sum()
}

/// The L2 norm as an `f32` no smaller than any |g| of the chunk: rounding is monotone, and a
/// finite norm beyond `f32::MAX` becomes `f32::MAX`, still at least every finite |g|.
#[inline(always)]
fn l2_norm(chunk: &[f32]) -> f32 {
    let mut acc = [0f64; LANES];
    let mut runs = chunk.chunks_exact(LANES);
    for run in &mut runs {
        for (a, v) in acc.iter_mut().zip(run) {
            let x = f64::from(*v);
            *a += x * x;
        }
    }
    for (a, v) in acc.iter_mut().zip(runs.remainder()) {
        let x = f64::from(*v);
        *a += x * x;
    }
    let norm = lane_sum(&acc).sqrt();
    let narrow = norm as f32;
    if norm.is_finite() && narrow.is_infinite() { f32::MAX } else { narrow.abs() }
}

/// max |g| of the chunk, NaN if it holds a NaN: on non-negative floats the integer order of
/// the bits is the float order, and NaN's bits sort above infinity.
#[inline(always)]
fn max_abs(chunk: &[f32]) -> f32 {
    let mut acc = [0u32; LANES];
    let mut runs = chunk.chunks_exact(LANES);
    for run in &mut runs {
        for (a, v) in acc.iter_mut().zip(run) {
            *a = (*a).max(v.to_bits() & !(1 << 31));
        }
    }
    for (a, v) in acc.iter_mut().zip(runs.remainder()) {
        *a = (*a).max(v.to_bits() & !(1 << 31));
    }
    let mut top = 0;
    for a in acc {
        top = top.max(a);
    }
    f32::from_bits(top)
}

/// 1-bit: the sums of both parts and the count of negatives.
struct OneBitWords {
    positive: [f64; LANES],
    negative: [f64; LANES],
    negatives: usize,
}

impl WordEncoder for OneBitWords {
    #[inline(always)]
    fn word(&mut self, _: usize, c: &[f32; WORD]) -> u64 {
        for run in c.chunks_exact(LANES) {
            for ((p, n), v) in self.positive.iter_mut().zip(&mut self.negative).zip(run) {
                let bits = v.to_bits();
                let negative_mask = ((bits as i32) >> 31) as u32;
                *p += f64::from(f32::from_bits(bits & !negative_mask));
                *n += f64::from(f32::from_bits(bits & negative_mask));
            }
        }
        let w = sign_word(c);
        self.negatives += w.count_ones() as usize;
        w
    }
}

/// signSGD: the sum of |g|.
struct SignWords {
    magnitude: [f64; LANES],
}

impl WordEncoder for SignWords {
    #[inline(always)]
    fn word(&mut self, _: usize, c: &[f32; WORD]) -> u64 {
        for run in c.chunks_exact(LANES) {
            for (m, v) in self.magnitude.iter_mut().zip(run) {
                *m += f64::from(v.abs());
            }
        }
        sign_word(c)
    }
}

/// QSGD: stochastic levels, packed into the bucket's level plane.
struct QsgdWords<'a, const BITS: usize> {
    norm: f32,
    levels: f32,
    rng: &'a mut Xoshiro256pp,
    level_plane: &'a mut [u8],
}

impl<const BITS: usize> WordEncoder for QsgdWords<'_, BITS> {
    #[inline(always)]
    fn word(&mut self, k: usize, c: &[f32; WORD]) -> u64 {
        let u = uniforms(self.rng);
        let mut level = [0u16; WORD];
        for ((l, v), u) in level.iter_mut().zip(c).zip(u) {
            // |g| <= norm, so r <= s and the level never exceeds s.
            *l = stochastic_round(v.abs() / self.norm * self.levels, u);
        }
        put_levels::<BITS>(&level, &mut self.level_plane[k * 8 * BITS..]);
        sign_word(c)
    }
}

/// TernGrad: stochastic nonzero bits, written to the bucket's nonzero plane.
struct TernWords<'a> {
    scale: f32,
    rng: &'a mut Xoshiro256pp,
    nonzero: &'a mut [u8],
}

impl WordEncoder for TernWords<'_> {
    #[inline(always)]
    fn word(&mut self, k: usize, c: &[f32; WORD]) -> u64 {
        let u = uniforms(self.rng);
        let mut w = 0u64;
        for (j, (v, u)) in c.iter().zip(u).enumerate() {
            // |g| <= scale, so the probability is at most 1, and 1 rounds up always.
            w |= u64::from(round_up(v.abs() / self.scale, u)) << j;
        }
        let dst = &mut self.nonzero[k * 8..];
        let len = dst.len().min(8);
        dst[..len].copy_from_slice(&w.to_le_bytes()[..len]);
        sign_word(c)
    }
}

#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn encode_onebit(values: &[f32], layout: Layout, body: &mut [u8]) {
    let mut rest = body;
    for chunk in values.chunks(layout.block) {
        let blk = take(&mut rest, layout.block_bytes(chunk.len()));
        let (head, plane) = blk.split_at_mut(8);
        let mut parts = OneBitWords { positive: [0.0; LANES], negative: [0.0; LANES], negatives: 0 };
        encode_words(chunk, plane, &mut parts);
        // The sign bits are forced so that an empty part, or NaN, still carries its part's sign.
        let mean_positive = part_mean(lane_sum(&parts.positive), chunk.len() - parts.negatives).abs();
        let mean_negative = -part_mean(lane_sum(&parts.negative), parts.negatives).abs();
        head[..4].copy_from_slice(&mean_positive.to_le_bytes());
        head[4..].copy_from_slice(&mean_negative.to_le_bytes());
    }
}

#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn encode_signsgd(values: &[f32], layout: Layout, body: &mut [u8]) {
    let mut rest = body;
    for chunk in values.chunks(layout.block) {
        let blk = take(&mut rest, layout.block_bytes(chunk.len()));
        let (head, plane) = blk.split_at_mut(4);
        let mut sums = SignWords { magnitude: [0.0; LANES] };
        encode_words(chunk, plane, &mut sums);
        head.copy_from_slice(&part_mean(lane_sum(&sums.magnitude), chunk.len()).abs().to_le_bytes());
    }
}

#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn encode_qsgd(values: &[f32], layout: Layout, levels: u32, rng: &mut Xoshiro256pp, body: &mut [u8]) {
    with_level_bits!(layout.planes[1], encode_qsgd_width, values, layout, levels, rng, body);
}

#[inline(always)]
fn encode_qsgd_width<const BITS: usize>(
    values: &[f32],
    layout: Layout,
    levels: u32,
    rng: &mut Xoshiro256pp,
    body: &mut [u8],
) {
    let mut rest = body;
    for chunk in values.chunks(layout.block) {
        let blk = take(&mut rest, layout.block_bytes(chunk.len()));
        let norm = l2_norm(chunk);
        let (head, planes) = blk.split_at_mut(4);
        head.copy_from_slice(&norm.to_le_bytes());
        let (signs, level_plane) = planes.split_at_mut(plane_bytes(chunk.len(), 1));
        let mut words = QsgdWords::<BITS> { norm, levels: levels as f32, rng: &mut *rng, level_plane };
        encode_words(chunk, signs, &mut words);
    }
}

#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn encode_terngrad(values: &[f32], layout: Layout, rng: &mut Xoshiro256pp, body: &mut [u8]) {
    let mut rest = body;
    for chunk in values.chunks(layout.block) {
        let blk = take(&mut rest, layout.block_bytes(chunk.len()));
        let scale = max_abs(chunk);
        let (head, planes) = blk.split_at_mut(4);
        head.copy_from_slice(&scale.to_le_bytes());
        let (signs, nonzero) = planes.split_at_mut(plane_bytes(chunk.len(), 1));
        encode_words(chunk, signs, &mut TernWords { scale, rng: &mut *rng, nonzero });
    }
}

/// Packs 64 levels of `BITS` bits into `8·BITS` bytes of `dst`, or as many as `dst` holds (the
/// levels past a block's end are zero, so the bytes cut off are zero too).
#[inline(always)]
fn put_levels<const BITS: usize>(level: &[u16; WORD], dst: &mut [u8]) {
    if dst.len() >= 8 * BITS {
        for (group, d) in level.chunks_exact(8).zip(dst.chunks_exact_mut(BITS)) {
            d.copy_from_slice(&pack8::<BITS>(group)[..BITS]);
        }
    } else {
        let mut packed = [0u8; 8 * 16];
        for (group, d) in level.chunks_exact(8).zip(packed.chunks_exact_mut(BITS)) {
            d.copy_from_slice(&pack8::<BITS>(group)[..BITS]);
        }
        let len = dst.len();
        dst.copy_from_slice(&packed[..len]);
    }
}

/// Eight values of `BITS` bits, LSB first, as the little-endian bytes of one number.
#[inline(always)]
fn pack8<const BITS: usize>(group: &[u16]) -> [u8; 16] {
    if BITS <= 8 {
        let mut acc = 0u64;
        for (j, v) in group[..8].iter().enumerate() {
            acc |= u64::from(*v) << (j * BITS);
        }
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&acc.to_le_bytes());
        out
    } else {
        let mut acc = 0u128;
        for (j, v) in group[..8].iter().enumerate() {
            acc |= u128::from(*v) << (j * BITS);
        }
        acc.to_le_bytes()
    }
}

/// The inverse of [`pack8`]: eight values from `BITS` bytes.
#[inline(always)]
fn unpack8<const BITS: usize>(src: &[u8], group: &mut [u16]) {
    let mask = (1u32 << BITS) - 1;
    if BITS <= 8 {
        let mut bytes = [0u8; 8];
        bytes[..BITS].copy_from_slice(&src[..BITS]);
        let acc = u64::from_le_bytes(bytes);
        for (j, v) in group[..8].iter_mut().enumerate() {
            *v = ((acc >> (j * BITS)) as u32 & mask) as u16;
        }
    } else {
        let mut bytes = [0u8; 16];
        bytes[..BITS].copy_from_slice(&src[..BITS]);
        let acc = u128::from_le_bytes(bytes);
        for (j, v) in group[..8].iter_mut().enumerate() {
            *v = ((acc >> (j * BITS)) as u32 & mask) as u16;
        }
    }
}

/// Levels of word `k` of a level plane (zero past its end).
#[inline(always)]
fn get_levels<const BITS: usize>(plane: &[u8], k: usize) -> [u16; WORD] {
    let mut level = [0u16; WORD];
    let src = &plane[k * 8 * BITS..];
    if src.len() >= 8 * BITS {
        for (group, s) in level.chunks_exact_mut(8).zip(src.chunks_exact(BITS)) {
            unpack8::<BITS>(s, group);
        }
    } else {
        let mut bytes = [0u8; 8 * 16];
        bytes[..src.len()].copy_from_slice(src);
        for (group, s) in level.chunks_exact_mut(8).zip(bytes.chunks_exact(BITS)) {
            unpack8::<BITS>(s, group);
        }
    }
    level
}

/// The first bucket holding a level above `levels`, and that bucket's largest level. Padding
/// must have been checked: bits past a bucket's end would read as levels.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn qsgd_level_above(body: &[u8], layout: Layout, n: usize, levels: u32) -> Option<(usize, u16)> {
    with_level_bits!(layout.planes[1], qsgd_level_above_width, body, layout, n, levels)
}

#[inline(always)]
fn qsgd_level_above_width<const BITS: usize>(
    body: &[u8],
    layout: Layout,
    n: usize,
    levels: u32,
) -> Option<(usize, u16)> {
    let mut rest = body;
    for b in 0..n.div_ceil(layout.block) {
        let len = layout.block.min(n - b * layout.block);
        let (blk, tail) = rest.split_at(layout.block_bytes(len));
        rest = tail;
        let level_plane = &blk[4 + plane_bytes(len, 1)..];
        let mut top = 0u16;
        for k in 0..len.div_ceil(WORD) {
            for l in get_levels::<BITS>(level_plane, k) {
                top = top.max(l);
            }
        }
        if u32::from(top) > levels {
            return Some((b, top));
        }
    }
    None
}

/// 1-bit and signSGD: one value where the sign bit is clear, another where it is set.
struct TwoValues<S> {
    sink: S,
    base: u32,
    flip: u32,
}

impl<S> TwoValues<S> {
    fn new(sink: S, clear: f32, set: f32) -> Self {
        Self { sink, base: clear.to_bits(), flip: clear.to_bits() ^ set.to_bits() }
    }
}

impl<S: Sink> WordDecoder for TwoValues<S> {
    #[inline(always)]
    fn put(&mut self, _: usize, w: u64, out: &mut [f32; WORD]) {
        for (j, d) in out.iter_mut().enumerate() {
            self.sink.put(d, f32::from_bits(self.base ^ (self.flip & bit(w, j).wrapping_neg())));
        }
    }
}

/// QSGD: `±norm·(l·(1/s))`.
struct QsgdOut<'a, S, const BITS: usize> {
    sink: S,
    norm: f32,
    step: f32,
    level_plane: &'a [u8],
}

impl<S: Sink, const BITS: usize> WordDecoder for QsgdOut<'_, S, BITS> {
    #[inline(always)]
    fn put(&mut self, k: usize, w: u64, out: &mut [f32; WORD]) {
        let level = get_levels::<BITS>(self.level_plane, k);
        for (j, (d, l)) in out.iter_mut().zip(level).enumerate() {
            let magnitude = f32::from(l) * self.step;
            self.sink.put(d, self.norm * f32::from_bits(magnitude.to_bits() | (bit(w, j) << 31)));
        }
    }
}

/// TernGrad: `scale·(±1 or ±0)`; a non-finite scale makes every element of its bucket NaN or
/// infinite.
struct TernOut<'a, S> {
    sink: S,
    scale: f32,
    nonzero: &'a [u8],
}

impl<S: Sink> WordDecoder for TernOut<'_, S> {
    #[inline(always)]
    fn put(&mut self, k: usize, w: u64, out: &mut [f32; WORD]) {
        let mut bytes = [0u8; 8];
        let src = &self.nonzero[k * 8..];
        let len = src.len().min(8);
        bytes[..len].copy_from_slice(&src[..len]);
        let nz = u64::from_le_bytes(bytes);
        for (j, d) in out.iter_mut().enumerate() {
            let t = f32::from_bits((bit(nz, j) * ONE_BITS) | (bit(w, j) << 31));
            self.sink.put(d, self.scale * t);
        }
    }
}

#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn decode_onebit_body<S: Sink>(body: &[u8], layout: Layout, out: &mut [f32], sink: S) {
    let mut rest = body;
    for chunk in out.chunks_mut(layout.block) {
        let (blk, tail) = rest.split_at(layout.block_bytes(chunk.len()));
        rest = tail;
        decode_words(&blk[8..], chunk, &mut TwoValues::new(sink, f32_at(blk, 0), f32_at(blk, 4)));
    }
}

#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn decode_signsgd_body<S: Sink>(body: &[u8], layout: Layout, out: &mut [f32], sink: S) {
    let mut rest = body;
    for chunk in out.chunks_mut(layout.block) {
        let (blk, tail) = rest.split_at(layout.block_bytes(chunk.len()));
        rest = tail;
        let scale = f32_at(blk, 0);
        decode_words(&blk[4..], chunk, &mut TwoValues::new(sink, scale, -scale));
    }
}

#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn decode_qsgd_body<S: Sink>(body: &[u8], layout: Layout, levels: u32, out: &mut [f32], sink: S) {
    with_level_bits!(layout.planes[1], decode_qsgd_width::<S>, body, layout, levels, out, sink);
}

#[inline(always)]
fn decode_qsgd_width<const BITS: usize, S: Sink>(body: &[u8], layout: Layout, levels: u32, out: &mut [f32], sink: S) {
    // l·(1/s) <= 1 for l <= s (s·fl(1/s) rounds to at most 1), so |decoded| <= norm.
    let step = 1.0 / levels as f32;
    let mut rest = body;
    for chunk in out.chunks_mut(layout.block) {
        let (blk, tail) = rest.split_at(layout.block_bytes(chunk.len()));
        rest = tail;
        let (signs, level_plane) = blk[4..].split_at(plane_bytes(chunk.len(), 1));
        let mut words = QsgdOut::<S, BITS> { sink, norm: f32_at(blk, 0), step, level_plane };
        decode_words(signs, chunk, &mut words);
    }
}

#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn decode_terngrad_body<S: Sink>(body: &[u8], layout: Layout, out: &mut [f32], sink: S) {
    let mut rest = body;
    for chunk in out.chunks_mut(layout.block) {
        let (blk, tail) = rest.split_at(layout.block_bytes(chunk.len()));
        rest = tail;
        let (signs, nonzero) = blk[4..].split_at(plane_bytes(chunk.len(), 1));
        decode_words(signs, chunk, &mut TernOut { sink, scale: f32_at(blk, 0), nonzero });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::put_varint;
    use crate::{decode, decode_add};
    use proptest::prelude::*;

    /// Stochastic codecs: encodes averaged per unbiasedness check.
    const DRAWS: usize = 2000;
    /// Chance that one element's unbiasedness check fails although the codec is unbiased.
    const FALSE_ALARM: f64 = 1e-9;
    /// Relative error of a 1-bit block sum: two means rounded to `f32` (2^-24 each), with room
    /// for the `f64` sums.
    const ONEBIT_SUM_TOLERANCE: f64 = 1.0 / (1u64 << 23) as f64;
    /// Bias of the 16-bit stochastic rounding, in units of one level (see the module doc).
    const ROUNDING_BIAS: f64 = 1.0 / (1u64 << 17) as f64;

    fn encode(encoder: &mut impl Encoder, values: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        encoder.encode(values, &mut out);
        out
    }

    /// Gradients with the cases quantizers get wrong: zeros of both signs, subnormals, runs of
    /// one sign.
    fn gradient(max_len: usize) -> impl Strategy<Value = Vec<f32>> {
        proptest::collection::vec(
            prop_oneof![
                8 => -1e3f32..1e3,
                1 => Just(0.0f32),
                1 => Just(-0.0f32),
                1 => (-1000i32..1000).prop_map(|i| i as f32 * 1e-42),
                1 => 0.5f32..2.0,
            ],
            0..max_len,
        )
    }

    /// Half-width `t` such that the mean of `DRAWS` Bernoulli(p) draws is within `t` of `p`
    /// except with probability `FALSE_ALARM` (Bernstein's inequality:
    /// `P(|mean - p| >= t) <= 2 exp(-N t² / (2p(1-p) + 2t/3))`).
    fn bernstein(p: f64) -> f64 {
        let l = (2.0 / FALSE_ALARM).ln() / DRAWS as f64;
        l / 3.0 + (l * l / 9.0 + 2.0 * p * (1.0 - p) * l).sqrt()
    }

    /// Checks that `mean` (of `DRAWS` decodes) is within the Bernstein bound of `g`, where an
    /// element decodes to `unit·floor(r)` or `unit·(floor(r)+1)` with the right sign.
    fn check_unbiased(g: f32, mean: f64, unit: f64) -> Result<(), String> {
        let g = f64::from(g);
        if unit == 0.0 {
            return if mean == 0.0 { Ok(()) } else { Err(format!("{g}: zero scale but mean {mean}")) };
        }
        let r = g.abs() / unit;
        let p = r - r.floor();
        let bound = unit * (bernstein(p) + ROUNDING_BIAS) + g.abs() * 1e-6;
        if (mean - g).abs() <= bound {
            Ok(())
        } else {
            Err(format!("input {g}: mean of {DRAWS} decodes {mean}, off by {} > bound {bound}", (mean - g).abs()))
        }
    }

    /// Means of `DRAWS` decodes of `values` through one encoder (its stream advancing).
    fn mean_of_decodes(encoder: &mut impl Encoder, values: &[f32], mut each: impl FnMut(&[f32])) -> Vec<f64> {
        let mut sum = vec![0f64; values.len()];
        let mut payload = Vec::new();
        for _ in 0..DRAWS {
            payload.clear();
            encoder.encode(values, &mut payload);
            let d = decode(&payload, values.len()).unwrap();
            each(&d);
            sum.iter_mut().zip(&d).for_each(|(s, d)| *s += f64::from(*d));
        }
        sum.iter().map(|s| s / DRAWS as f64).collect()
    }

    fn norm64(values: &[f32]) -> f64 {
        values.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt()
    }

    proptest! {
        #[test]
        fn onebit_keeps_block_sums_and_signs(values in gradient(700), block in 1u32..150) {
            let payload = encode(&mut OneBit::new(block), &values);
            let decoded = decode(&payload, values.len()).unwrap();
            for (b, (v, d)) in values.chunks(block as usize).zip(decoded.chunks(block as usize)).enumerate() {
                let sum_in: f64 = v.iter().map(|x| f64::from(*x)).sum();
                let sum_out: f64 = d.iter().map(|x| f64::from(*x)).sum();
                let magnitude: f64 = v.iter().map(|x| f64::from(x.abs())).sum();
                // Subnormal means round to a multiple of 2^-149, which no relative bound covers.
                let bound = ONEBIT_SUM_TOLERANCE * magnitude + v.len() as f64 * f64::from(f32::from_bits(1));
                prop_assert!((sum_in - sum_out).abs() <= bound,
                    "block {}: sum {} decoded to {}, bound {}", b, sum_in, sum_out, bound);
                for (x, y) in v.iter().zip(d) {
                    prop_assert_eq!(x.is_sign_negative(), y.is_sign_negative(), "{} decoded to {}", x, y);
                    let part = d.iter().zip(v).find(|(_, w)| w.is_sign_negative() == x.is_sign_negative());
                    prop_assert_eq!(y.to_bits(), part.unwrap().0.to_bits(), "one value per part");
                }
            }
        }

        #[test]
        fn signsgd_decodes_plus_or_minus_the_mean_magnitude(values in gradient(700), block in 1u32..150) {
            let payload = encode(&mut SignSgd::new(block), &values);
            let decoded = decode(&payload, values.len()).unwrap();
            for (v, d) in values.chunks(block as usize).zip(decoded.chunks(block as usize)) {
                let mean = v.iter().map(|x| f64::from(x.abs())).sum::<f64>() / v.len() as f64;
                for (x, y) in v.iter().zip(d) {
                    prop_assert_eq!(x.is_sign_negative(), y.is_sign_negative(), "{} decoded to {}", x, y);
                    let err = (f64::from(y.abs()) - mean).abs();
                    prop_assert!(err <= mean * 2f64.powi(-23) + 1e-45, "|{}| is not the mean {}", y, mean);
                }
            }
        }

        #[test]
        fn decode_add_adds_the_scaled_decode(
            values in gradient(300),
            codec in 0usize..4,
            scale in -2f32..2.0,
            start in proptest::collection::vec(-1f32..1.0, 300),
        ) {
            let payload = encode_with(codec, &values, 7);
            let decoded = decode(&payload, values.len()).unwrap();
            let mut acc = start[..values.len()].to_vec();
            decode_add(&payload, scale, &mut acc).unwrap();
            for ((a, s), d) in acc.iter().zip(&start).zip(&decoded) {
                prop_assert_eq!(a.to_bits(), (s + scale * d).to_bits());
            }
        }

        #[test]
        fn random_bodies_never_panic(
            codec in prop_oneof![Just(id::ONEBIT), Just(id::SIGNSGD), Just(id::QSGD), Just(id::TERNGRAD)],
            n in 0usize..200,
            params in proptest::collection::vec(1u8..40, 2),
            body in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut payload = vec![codec, format::VERSION];
            put_varint(&mut payload, n as u64);
            payload.extend_from_slice(&params);
            payload.extend_from_slice(&body);
            check_refusal_leaves_out_alone(&payload, n)?;
        }

        #[test]
        fn mutated_payloads_never_panic(
            values in gradient(200),
            codec in 0usize..4,
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let mut payload = encode_with(codec, &values, 3);
            // The codec id stays: other ids are other modules' decoders.
            for (at, x) in &edits {
                let i = 1 + at.index(payload.len() - 1);
                payload[i] ^= x;
            }
            if truncate {
                payload.truncate(cut.index(payload.len() + 1));
            }
            let _ = decode(&payload, 1 << 20);
            check_refusal_leaves_out_alone(&payload, values.len())?;
        }
    }

    proptest! {
        // Each case encodes DRAWS times: fewer cases keep the debug build's test run short.
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn qsgd_is_unbiased_on_its_grid_and_within_the_variance_bound(
            values in proptest::collection::vec(-10f32..10.0, 1..20),
            levels in prop_oneof![Just(1u32), Just(2), Just(3), Just(4), Just(16), Just(1000)],
            bucket in 1u32..24,
            seed in any::<u64>(),
        ) {
            let bucket = bucket as usize;
            let norms: Vec<f64> = values.chunks(bucket).map(norm64).collect();
            let mut squared_error = vec![0f64; norms.len()];
            let mean = mean_of_decodes(&mut Qsgd::new(levels, bucket as u32, seed), &values, |d| {
                for (i, (x, g)) in d.iter().zip(&values).enumerate() {
                    let norm = norms[i / bucket];
                    assert!(f64::from(x.abs()) <= norm * (1.0 + 1e-6), "|{x}| above the norm {norm}");
                    let on_grid = f64::from(x.abs()) / norm * f64::from(levels);
                    assert!((on_grid - on_grid.round()).abs() < 1e-3, "{x} is not on the grid of {levels} levels");
                    assert!(*x == 0.0 || x.is_sign_negative() == g.is_sign_negative(), "{g} decoded to {x}");
                    squared_error[i / bucket] += (f64::from(*x) - f64::from(*g)).powi(2);
                }
            });
            for (i, (g, m)) in values.iter().zip(&mean).enumerate() {
                let unit = norms[i / bucket] / f64::from(levels);
                check_unbiased(*g, *m, unit).map_err(TestCaseError::fail)?;
            }
            // Alistarh et al., Lemma 3.1: E‖Q(g) - g‖² <= min(n/s², √n/s)·‖g‖².
            for (b, (se, norm)) in squared_error.iter().zip(&norms).enumerate() {
                let n = values.chunks(bucket).nth(b).unwrap().len() as f64;
                let s = f64::from(levels);
                let bound = (n / (s * s)).min(n.sqrt() / s) * norm * norm;
                let mean_squared_error = se / DRAWS as f64;
                prop_assert!(
                    mean_squared_error <= 1.25 * bound + 1e-9,
                    "bucket {}: {} > {}",
                    b,
                    mean_squared_error,
                    bound
                );
            }
        }

        #[test]
        fn terngrad_is_unbiased_and_ternary(
            values in proptest::collection::vec(-10f32..10.0, 1..20),
            bucket in 1u32..24,
            seed in any::<u64>(),
        ) {
            let bucket = bucket as usize;
            let scales: Vec<f32> = values.chunks(bucket).map(|c| c.iter().fold(0f32, |m, v| m.max(v.abs()))).collect();
            let mean = mean_of_decodes(&mut TernGrad::new(bucket as u32, seed), &values, |d| {
                for (i, (x, g)) in d.iter().zip(&values).enumerate() {
                    let s = scales[i / bucket];
                    assert!(x.abs() == 0.0 || x.abs() == s, "{x} is not in {{-{s}, 0, {s}}}");
                    assert_eq!(x.is_sign_negative(), g.is_sign_negative(), "{g} decoded to {x}");
                }
            });
            for (i, (g, m)) in values.iter().zip(&mean).enumerate() {
                check_unbiased(*g, *m, f64::from(scales[i / bucket])).map_err(TestCaseError::fail)?;
            }
        }
    }

    /// Encodes with codec 0 (onebit), 1 (signsgd), 2 (qsgd) or 3 (terngrad) at small block sizes.
    fn encode_with(codec: usize, values: &[f32], seed: u64) -> Vec<u8> {
        match codec {
            0 => encode(&mut OneBit::new(37), values),
            1 => encode(&mut SignSgd::new(64), values),
            2 => encode(&mut Qsgd::new(5, 19, seed), values),
            _ => encode(&mut TernGrad::new(70, seed), values),
        }
    }

    /// Decodes into a buffer of `n` values and checks that a refused payload changed none.
    fn check_refusal_leaves_out_alone(payload: &[u8], n: usize) -> Result<(), TestCaseError> {
        let before: Vec<f32> = (0..n).map(|i| i as f32 - 7.5).collect();
        let mut out = before.clone();
        if decode_add(payload, 0.5, &mut out).is_err() {
            prop_assert!(out.iter().zip(&before).all(|(a, b)| a.to_bits() == b.to_bits()), "a refused payload wrote");
        }
        Ok(())
    }

    #[test]
    fn onebit_bytes_are_pinned() {
        let payload = encode(&mut OneBit::new(4), &[1.0, -2.0, 3.0, -4.0, 0.0]);
        #[rustfmt::skip]
        let expected = [
            id::ONEBIT, 1, 5, 4,
            0, 0, 0, 0x40, 0, 0, 0x40, 0xc0, 0b1010, // block 0: mean⁺ 2.0, mean⁻ -3.0, elements 1 and 3 negative
            0, 0, 0, 0, 0, 0, 0, 0x80, 0,            // block 1: mean⁺ 0.0, mean⁻ -0.0 (no negatives)
        ];
        assert_eq!(payload, expected);
        assert_eq!(decode(&payload, 5).unwrap(), [2.0, -3.0, 2.0, -3.0, 0.0]);
    }

    #[test]
    fn terngrad_and_qsgd_bytes_have_the_documented_shape() {
        // One bucket of three: scale, sign plane, nonzero plane. The largest element is always
        // sent (probability 1), the zero never.
        let payload = encode(&mut TernGrad::new(8, 1), &[-4.0, 0.0, 2.0]);
        assert_eq!(&payload[..8], &[id::TERNGRAD, 1, 3, 8, 0, 0, 0x80, 0x40]);
        assert_eq!(payload[8], 0b001, "signs");
        assert_eq!(payload[9] & 0b011, 0b001, "nonzero: -4 always, 0 never");
        assert_eq!(payload.len(), 10);
        // s = 2 levels: 2-bit levels. |g|/norm·s is exactly 2 for the only nonzero element.
        let payload = encode(&mut Qsgd::new(2, 4, 1), &[0.0, -3.0, 0.0]);
        assert_eq!(&payload[..9], &[id::QSGD, 1, 3, 2, 4, 0, 0, 0x40, 0x40]);
        assert_eq!(&payload[9..], &[0b010, 0b10_00]);
        assert_eq!(decode(&payload, 3).unwrap(), [0.0, -3.0, 0.0]);
    }

    #[test]
    fn empty_gradients_round_trip() {
        for codec in 0..4 {
            let payload = encode_with(codec, &[], 0);
            assert_eq!(decode(&payload, 0).unwrap(), Vec::<f32>::new());
            decode_add(&payload, 1.0, &mut []).unwrap();
        }
    }

    #[test]
    fn out_of_range_parameters_are_clamped_into_what_decoders_accept() {
        // Only a hand-built CodecSpec can carry these; the payloads must still decode.
        let values = [1.0f32, -2.0, 0.5];
        for mut payload in [
            encode(&mut OneBit::new(0), &values),
            encode(&mut SignSgd::new(u32::MAX), &values),
            encode(&mut Qsgd::new(0, 0, 1), &values),
            encode(&mut Qsgd::new(u32::MAX, u32::MAX, 1), &values),
            encode(&mut TernGrad::new(0, 1), &values),
        ] {
            assert_eq!(decode(&payload, 3).unwrap().len(), 3);
            payload.clear();
        }
    }

    #[test]
    fn bodies_have_the_documented_length() {
        let values: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
        // 1000 = 7·137 + 41: seven full blocks and a tail.
        let header = 2 + format::varint_len(1000);
        let onebit = encode(&mut OneBit::new(137), &values);
        assert_eq!(onebit.len(), header + 2 + 7 * (8 + 18) + (8 + 6));
        let signsgd = encode(&mut SignSgd::new(137), &values);
        assert_eq!(signsgd.len(), header + 2 + 7 * (4 + 18) + (4 + 6));
        // s = 16 takes 5 level bits.
        let qsgd = encode(&mut Qsgd::new(16, 137, 0), &values);
        assert_eq!(qsgd.len(), header + 1 + 2 + 7 * (4 + 18 + 86) + (4 + 6 + 26));
        let terngrad = encode(&mut TernGrad::new(137, 0), &values);
        assert_eq!(terngrad.len(), header + 2 + 7 * (4 + 18 + 18) + (4 + 6 + 6));
        for p in [&onebit, &signsgd, &qsgd, &terngrad] {
            assert_eq!(decode(p, 1000).unwrap().len(), 1000);
        }
    }

    #[test]
    fn wire_ratios_at_the_default_sizes() {
        let n: usize = 1 << 20;
        let values: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let ratio = |p: Vec<u8>| (n * 4) as f64 / p.len() as f64;
        assert!(ratio(encode(&mut OneBit::new(4096), &values)) > 31.5);
        assert!(ratio(encode(&mut SignSgd::new(4096), &values)) > 31.7);
        assert!(ratio(encode(&mut Qsgd::new(16, 512, 0), &values)) > 5.2);
        assert!(ratio(encode(&mut TernGrad::new(4096, 0), &values)) > 15.9);
    }

    #[test]
    fn random_streams_are_seeded_and_advance() {
        let values: Vec<f32> = (0..300).map(|i| (i as f32 * 0.37).sin()).collect();
        let (mut a, mut b) = (Qsgd::new(4, 64, 9), Qsgd::new(4, 64, 9));
        let first = encode(&mut a, &values);
        assert_eq!(first, encode(&mut b, &values), "same seed, same payload");
        assert_ne!(first, encode(&mut a, &values), "the stream advances across calls");
        assert_ne!(first, encode(&mut Qsgd::new(4, 64, 10), &values), "another seed, another payload");
        let (mut a, mut b) = (TernGrad::new(64, 9), TernGrad::new(64, 9));
        let first = encode(&mut a, &values);
        assert_eq!(first, encode(&mut b, &values));
        assert_ne!(first, encode(&mut a, &values));
    }

    #[test]
    fn non_finite_inputs_pass_through() {
        let d = decode(&encode(&mut OneBit::new(4), &[f32::NAN, -1.0, 2.0, 0.0, 1.0]), 5).unwrap();
        assert!(d[0].is_nan() && d[2].is_nan() && d[3].is_nan(), "NaN spoils its part: {d:?}");
        assert_eq!((d[1], d[4]), (-1.0, 1.0), "other parts and blocks are untouched");
        let d = decode(&encode(&mut SignSgd::new(2), &[f32::INFINITY, -1.0, 2.0]), 3).unwrap();
        assert_eq!(d, [f32::INFINITY, f32::NEG_INFINITY, 2.0]);
        let d = decode(&encode(&mut Qsgd::new(4, 2, 0), &[f32::NAN, 1.0, 2.0]), 3).unwrap();
        assert!(d[0].is_nan() && d[1].is_nan() && d[2] == 2.0, "{d:?}");
        let d = decode(&encode(&mut TernGrad::new(2, 0), &[f32::INFINITY, 1.0, -2.0]), 3).unwrap();
        assert!(d[0].is_nan() && d[1].is_nan() && d[2] == -2.0, "{d:?}");
        // Finite values whose norm overflows f32 still decode to finite values.
        let d = decode(&encode(&mut Qsgd::new(1, 4, 0), &[f32::MAX; 4]), 4).unwrap();
        assert!(d.iter().all(|x| *x == f32::MAX), "{d:?}");
    }

    #[test]
    fn the_biased_rounding_would_fail_the_unbiasedness_check() {
        // Rounding every level down (deterministic, so its "mean of decodes" is the decode)
        // must fail check_unbiased for some element, or the check could not catch a biased
        // encoder.
        let values: Vec<f32> = (0..16).map(|i| (i as f32 * 0.61).sin() * 3.0).collect();
        for levels in [1u32, 4, 16] {
            let unit = norm64(&values) / f64::from(levels);
            let caught = values.iter().any(|g| {
                let down = (f64::from(g.abs()) / unit).floor() * unit * f64::from(g.signum());
                check_unbiased(*g, down, unit).is_err()
            });
            assert!(caught, "{levels} levels");
        }
    }

    fn refuse(payload: &[u8], n: usize, what: &str) {
        let err = decode(payload, n).expect_err(what);
        assert!(err.to_string().contains(what), "{err} does not mention {what}");
    }

    #[test]
    fn impossible_fields_are_refused() {
        let values = [1.0f32, -2.0, 3.0];
        // Block and level ranges.
        refuse(&[id::ONEBIT, 1, 0, 0], 0, "onebit block");
        refuse(&[id::SIGNSGD, 1, 0, 0x81, 0x80, 0x80, 0x08], 0, "signsgd block");
        refuse(&[id::QSGD, 1, 0, 0, 1], 0, "qsgd levels");
        refuse(&[id::QSGD, 1, 0, 0x81, 0x80, 0x02, 1], 0, "qsgd levels");
        refuse(&[id::TERNGRAD, 1, 0, 0], 0, "terngrad bucket");
        // Sign bits of scales.
        let mut p = encode(&mut OneBit::new(4), &values);
        p[4 + 3] ^= 0x80;
        refuse(&p, 3, "non-negative part");
        let mut p = encode(&mut OneBit::new(4), &values);
        p[8 + 3] ^= 0x80;
        refuse(&p, 3, "negative part");
        let mut p = encode(&mut SignSgd::new(4), &values);
        p[4 + 3] ^= 0x80;
        refuse(&p, 3, "signsgd scale");
        let mut p = encode(&mut Qsgd::new(4, 4, 0), &values);
        p[5 + 3] ^= 0x80;
        refuse(&p, 3, "qsgd norm");
        let mut p = encode(&mut TernGrad::new(4, 0), &values);
        p[4 + 3] ^= 0x80;
        refuse(&p, 3, "terngrad scale");
        // Padding after the third element.
        let mut p = encode(&mut OneBit::new(4), &values);
        p[12] |= 0x08;
        refuse(&p, 3, "padding");
        let mut p = encode(&mut TernGrad::new(4, 0), &values);
        p[9] |= 0x80;
        refuse(&p, 3, "nonzero padding");
        // A level above s: s = 4 takes 3 bits, so 5..=7 are impossible.
        let mut p = encode(&mut Qsgd::new(4, 4, 0), &values);
        let levels_at = p.len() - 2;
        p[levels_at] = (p[levels_at] & !0b111) | 0b111;
        refuse(&p, 3, "qsgd level");
        // Lengths: one byte short, one byte over, and a count the body cannot hold.
        let p = encode(&mut Qsgd::new(4, 4, 0), &values);
        assert!(matches!(decode(&p[..p.len() - 1], 3), Err(CodecError::Truncated { .. })));
        let mut long = p.clone();
        long.push(0);
        assert!(matches!(decode(&long, 3), Err(CodecError::TrailingBytes { .. })));
        let mut out = vec![0.0; 4];
        assert!(matches!(crate::decode_into(&p, &mut out), Err(CodecError::Length { .. })));
    }

    #[test]
    fn error_feedback_keeps_its_identity_at_the_default_sizes() {
        // feedback.rs checks blocks of 16; this checks the defaults, several blocks and a tail:
        // decoded + new residual == input + old residual.
        for spec in ["onebit", "signsgd", "qsgd", "terngrad"] {
            let mut ef = crate::ErrorFeedback::new(crate::pipeline::build(&spec.parse().unwrap(), 5));
            let input: Vec<f32> = (0..10_000).map(|i| (i as f32 * 0.013).cos() * 3.0).collect();
            let mut old = vec![0.0f32; input.len()];
            for _ in 0..3 {
                let mut payload = Vec::new();
                ef.encode(&input, &mut payload);
                let decoded = decode(&payload, input.len()).unwrap();
                for i in 0..input.len() {
                    let (lhs, rhs) = (decoded[i] + ef.residual()[i], input[i] + old[i]);
                    let scale = decoded[i].abs() + ef.residual()[i].abs() + input[i].abs() + old[i].abs();
                    assert!((lhs - rhs).abs() <= 4.0 * f32::EPSILON * scale, "{spec}: element {i}: {lhs} != {rhs}");
                }
                old = ef.residual().to_vec();
            }
        }
    }
}
