//! Sparsification: top-k (exact or DGC-style approximate), threshold, and random-k.
//!
//! # Selection
//! Elements are ranked by the key `bits & 0x7fff_ffff` of their `f32` bits compared as an integer:
//! for numbers this is the order of `|g|`, and NaN ranks above infinity, so a NaN is treated as
//! the largest element and is sent (a diverging gradient shows up at the server instead of
//! hiding in a residual). `-0.0` and `0.0` tie.
//!
//! - **Top-k exact** keeps `k = max(1, round(ratio · n))` elements (`k = 0` when `n = 0`): every
//!   element whose key is above the k-th largest key, then as many ties at that key as are needed,
//!   lowest index first. Exactly `k` are sent. Selection is O(n), never a sort: a sample of
//!   [`SAMPLE`] keys at random positions gives a lower bound `L` on the k-th key with a six-sigma
//!   margin, one pass collects the elements with key `>= L` (a vectorized compare makes a hit mask
//!   per 64 elements, and only the set bits are visited), and a radix select (11, 10 and 10 bits of the key) over those
//!   candidates finds the exact threshold. When the sample was wrong (fewer than `k` candidates) or
//!   the candidates would be too many (ties, e.g. a gradient of mostly zeros), or `n` is small, or
//!   the ratio is above about 1/4, the radix select runs over the whole gradient instead: same
//!   result, more passes, no candidate buffer.
//! - **Top-k approximate** (DGC, Lin et al. 2018) keeps every element whose key is at least the
//!   sample's `(1 - ratio)` quantile, one pass. If that is more than `2k` elements it keeps the
//!   exact top-k of them (DGC's second selection); if it is fewer than `k` it sends them: error
//!   feedback carries the rest. Either way every kept `|g|` is at least every dropped one, and at
//!   most `2k` are sent. It is exact top-k for `n <= 4 · SAMPLE` and for ratios above about 1/4,
//!   where sampling saves nothing.
//! - **Threshold** keeps every element with `|g| > tau` (and NaNs). `tau` below zero or NaN acts
//!   as zero.
//! - **Random-k** keeps `k` elements (as top-k) chosen uniformly without replacement. Values are
//!   sent unscaled, as in GRACE and BytePS: biased towards zero by `k / n`, meant to run under
//!   error feedback. Scaling by `n / k` would make it unbiased at the cost of a variance `n / k`
//!   times larger.
//!
//! # Payloads
//! Top-k and threshold share the pairs payload (`TOPK` id):
//!
//! ```text
//! header       [id 3][version 1][n: varint]
//! count        k: varint
//! values       k × f32 little-endian, in index order
//! index blocks ceil(k / 128) blocks of 128 indices (the last holds the rest), each
//!              [width: u8][len · width bits, least significant bit first, zero-padded to a byte]
//! ```
//!
//! Each index is written as its gap `index - previous - 1` (the first index as itself), so the
//! indices strictly ascend by construction; a block's width is the bit width of its largest gap.
//! On a normal gradient at ratio 0.01 the gaps take about 9.5 bits, so a pair costs about 41.5
//! bits against 64 for (u32, f32) pairs: a wire ratio near 77x instead of 50x.
//!
//! Random-k (`RANDOMK` id) sends no indices:
//!
//! ```text
//! header       [id 4][version 1][n: varint]
//! seed         u64 little-endian
//! count        k: varint
//! values       k × f32 little-endian, in the order the indices are drawn
//! ```
//!
//! The indices are part of the format. Floyd's algorithm over the stream `Xoshiro256pp::new(seed)`
//! of [`crate::rng`]: for `j` in `n - k .. n`, draw `t = below(j + 1)` (Lemire's multiply-shift);
//! the next index is `t` if `t` was not drawn yet, else `j`. O(k) expected, with a hash set of at
//! most `max(16, 4k)` slots of 8 bytes: the only allocation of any decoder here, at most 8 times the
//! payload's `4k` value bytes. The encoder draws each call's seed from its own stream, seeded with
//! the pipeline's seed, so calls and workers (given their own seeds) draw independent sets.
//!
//! # Decoding
//! Decoders refuse `k > n`, counts whose values do not fit in the bytes left, block widths above
//! 64 and indices `>= n`, and write through the sink without allocating (random-k's hash set
//! aside). Every check runs before the first write, so on an error `out` is untouched.

use std::fmt;
use std::ops::{ControlFlow, Range};

use multiversion::multiversion;

use crate::format::{self, Reader, Sink};
use crate::keys::BitReader;
use crate::rng::Xoshiro256pp;
use crate::{CodecError, Encoder, id};

/// Clears the sign bit: the ranking key of an element's bits.
const ABS: u32 = 0x7fff_ffff;
/// One above the largest key, the end of a range of keys without an upper bound.
const KEYS_END: u32 = ABS + 1;
/// Indices per bit-packed block of the pairs payload.
const INDEX_BLOCK: usize = 128;
/// Keys sampled per call to place the threshold. 65536 gives the approximate threshold's count
/// a standard deviation of about 4% of `k` at ratio 0.01 (DGC samples 0.1% to 1%; this is 0.26% of
/// 25M).
pub(crate) const SAMPLE: usize = 1 << 16;
/// Elements per hit mask in the prefilter (a `u64`).
const GROUP: usize = 64;
/// Elements per prefilter tile: the tile stays in L1 between the masks and the scan.
const TILE: usize = 4096;
/// Sigmas of margin between the sample's estimate and the lower bound exact top-k collects from.
const MARGIN_SIGMAS: f64 = 6.0;

/// `max(1, round(ratio · n))`, at most `n`; 0 for an empty gradient.
fn kept(ratio: f64, n: usize) -> usize {
    if n == 0 { 0 } else { ((ratio * n as f64).round() as usize).clamp(1, n) }
}

/// Exact or approximate top-k.
pub(crate) struct TopK {
    ratio: f64,
    approx: bool,
    sample_len: usize,
    rng: Xoshiro256pp,
    sample: Vec<u32>,
    cand_idx: Vec<usize>,
    cand_bits: Vec<u32>,
    hist: Histogram,
}

impl fmt::Debug for TopK {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopK").field("ratio", &self.ratio).field("approx", &self.approx).finish_non_exhaustive()
    }
}

impl TopK {
    pub(crate) fn new(ratio: f64, approx: bool, seed: u64) -> Self {
        Self::with_sample(ratio, approx, seed, SAMPLE)
    }

    /// With another sample size, so tests reach the sampled paths on small gradients.
    fn with_sample(ratio: f64, approx: bool, seed: u64, sample_len: usize) -> Self {
        Self {
            ratio,
            approx,
            sample_len,
            rng: Xoshiro256pp::new(seed),
            sample: Vec::new(),
            cand_idx: Vec::new(),
            cand_bits: Vec::new(),
            hist: Histogram::new(),
        }
    }

    /// Fills `self.sample` with the keys at `sample_len` random positions and returns the
    /// `rank`-th largest (1-based).
    fn sampled_key(&mut self, bits: &[u32], rank: usize) -> u32 {
        let n = bits.len() as u64;
        self.sample.clear();
        self.sample.extend((0..self.sample_len).map(|_| bits[self.rng.below(n) as usize] & ABS));
        let at = self.sample_len - rank;
        *self.sample.select_nth_unstable(at).1
    }

    /// Collects `(index, bits)` of every element with key `>= min_key` into the candidate
    /// buffers; `None` once there would be more than `cap`.
    fn collect(&mut self, bits: &[u32], min_key: u32, cap: usize) -> Option<usize> {
        self.cand_idx.clear();
        self.cand_bits.clear();
        let (idx, cand) = (&mut self.cand_idx, &mut self.cand_bits);
        let flow = for_each_in(bits, min_key..KEYS_END, |i, b| {
            if idx.len() == cap {
                return ControlFlow::Break(());
            }
            idx.push(i);
            cand.push(b);
            ControlFlow::Continue(())
        });
        flow.is_continue().then_some(idx.len())
    }

    /// Writes the candidates, all of them or, given `cut`, their exact top-k.
    fn put_candidates(&self, k: usize, cut: Option<(u32, usize)>, out: &mut Vec<u8>) {
        let pairs = self.cand_idx.iter().copied().zip(self.cand_bits.iter().copied());
        match cut {
            None => {
                let mut w = PairWriter::new(out, self.cand_idx.len());
                pairs.for_each(|(i, b)| w.push(i, b));
                w.finish();
            }
            Some((threshold, mut ties)) => {
                let mut w = PairWriter::new(out, k);
                for (i, b) in pairs {
                    if take(b & ABS, threshold, &mut ties) {
                        w.push(i, b);
                    }
                }
                w.finish();
            }
        }
    }

    /// Exact top-k by radix select over the whole gradient.
    fn exact_full(&mut self, bits: &[u32], k: usize, out: &mut Vec<u8>) {
        let (threshold, mut ties) = self.hist.select(bits, k);
        let mut w = PairWriter::new(out, k);
        // Up to the last tie taken, then above the threshold only: ties can be most of the data.
        let mut rest = bits.len();
        let _ = for_each_in(bits, threshold..KEYS_END, |i, b| {
            if b & ABS > threshold {
                w.push(i, b);
            } else {
                w.push(i, b);
                ties -= 1;
                if ties == 0 {
                    rest = i + 1;
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        });
        let _ = for_each_in(&bits[rest..], threshold + 1..KEYS_END, |i, b| {
            w.push(rest + i, b);
            ControlFlow::Continue(())
        });
        w.finish();
    }

    /// Exact top-k: candidates above a sampled lower bound, radix select among them.
    fn exact_sampled(&mut self, bits: &[u32], k: usize, out: &mut Vec<u8>) {
        let (n, s) = (bits.len(), self.sample_len);
        let mean = s as f64 * k as f64 / n as f64;
        let rank = (mean + MARGIN_SIGMAS * mean.sqrt() + 8.0).ceil() as usize;
        let expected = (rank as f64 * n as f64 / s as f64) as usize;
        if rank >= s || expected > n / 4 {
            return self.exact_full(bits, k, out);
        }
        let lower = self.sampled_key(bits, rank);
        match self.collect(bits, lower, 2 * expected + 4096) {
            Some(c) if c >= k => {
                let cut = self.hist.select(&self.cand_bits, k);
                self.put_candidates(k, Some(cut), out);
            }
            _ => self.exact_full(bits, k, out),
        }
    }

    /// DGC: keep what passes the sample's quantile; reselect exactly when that is over `2k`.
    fn approximate(&mut self, bits: &[u32], k: usize, out: &mut Vec<u8>) {
        let (n, s) = (bits.len(), self.sample_len);
        let rank = ((s as f64 * k as f64 / n as f64).round() as usize).clamp(1, s);
        let expected = (rank as f64 * n as f64 / s as f64) as usize;
        if expected > n / 4 {
            // Dense: the candidate buffers would hold a quarter of the gradient; radix needs none.
            return self.exact_full(bits, k, out);
        }
        let threshold = self.sampled_key(bits, rank);
        match self.collect(bits, threshold, 4 * expected.max(k) + 4096) {
            Some(c) if c > 2 * k => {
                let cut = self.hist.select(&self.cand_bits, k);
                self.put_candidates(k, Some(cut), out);
            }
            Some(_) => self.put_candidates(k, None, out),
            None => self.exact_full(bits, k, out),
        }
    }
}

/// Whether an element of key `key >= threshold` is kept: above it always, at it while ties are
/// left (lowest index first, as callers go in index order).
#[inline]
fn take(key: u32, threshold: u32, ties: &mut usize) -> bool {
    if key > threshold {
        true
    } else if key == threshold && *ties > 0 {
        *ties -= 1;
        true
    } else {
        false
    }
}

impl Encoder for TopK {
    fn encode(&mut self, values: &[f32], out: &mut Vec<u8>) {
        let n = values.len();
        let k = kept(self.ratio, n);
        format::put_header(out, id::TOPK, n);
        let bits: &[u32] = bytemuck::cast_slice(values);
        if k == n {
            let mut w = PairWriter::new(out, n);
            bits.iter().enumerate().for_each(|(i, &b)| w.push(i, b));
            w.finish();
        } else if n <= 4 * self.sample_len {
            self.exact_full(bits, k, out);
        } else if self.approx {
            self.approximate(bits, k, out);
        } else {
            self.exact_sampled(bits, k, out);
        }
    }
}

/// Every element with `|g| > tau`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Threshold {
    /// Smallest key sent: one above `tau`'s.
    min_key: u32,
}

impl Threshold {
    pub(crate) fn new(tau: f32) -> Self {
        // `max` maps NaN to 0. The key of +inf is 0x7f80_0000, so +1 fits and leaves only NaNs.
        let tau = tau.max(0.0);
        Self { min_key: (tau.to_bits() & ABS) + 1 }
    }
}

impl Encoder for Threshold {
    fn encode(&mut self, values: &[f32], out: &mut Vec<u8>) {
        format::put_header(out, id::TOPK, values.len());
        let bits: &[u32] = bytemuck::cast_slice(values);
        let k = count_at_least(bits, self.min_key);
        let mut w = PairWriter::new(out, k);
        let _ = for_each_in(bits, self.min_key..KEYS_END, |i, b| {
            w.push(i, b);
            ControlFlow::Continue(())
        });
        w.finish();
    }
}

/// Appends the pairs payload body: the count, then values in place as pairs come, then index
/// blocks as each fills.
struct PairWriter<'a> {
    out: &'a mut Vec<u8>,
    value_at: usize,
    values_end: usize,
    next: usize,
    gaps: [u64; INDEX_BLOCK],
    len: usize,
}

impl<'a> PairWriter<'a> {
    /// For exactly `k` pairs.
    fn new(out: &'a mut Vec<u8>, k: usize) -> Self {
        format::put_varint(out, k as u64);
        let value_at = out.len();
        // Values, then about 10 bits an index.
        out.reserve(k * 4 + k * 10 / 8 + k.div_ceil(INDEX_BLOCK));
        out.resize(value_at + 4 * k, 0);
        Self { out, value_at, values_end: value_at + 4 * k, next: 0, gaps: [0; INDEX_BLOCK], len: 0 }
    }

    /// The next pair; indices must ascend.
    #[inline]
    fn push(&mut self, index: usize, bits: u32) {
        debug_assert!(index >= self.next, "pair indices ascend");
        self.out[self.value_at..self.value_at + 4].copy_from_slice(&bits.to_le_bytes());
        self.value_at += 4;
        self.gaps[self.len] = (index - self.next) as u64;
        self.next = index + 1;
        self.len += 1;
        if self.len == INDEX_BLOCK {
            self.flush();
        }
    }

    /// Writes the block of gaps so far: its width, then the gaps packed through a u64.
    fn flush(&mut self) {
        let gaps = &self.gaps[..self.len];
        let width = 64 - gaps.iter().fold(0, |a, g| a | g).leading_zeros();
        self.out.push(width as u8);
        let mut packed = [0u8; INDEX_BLOCK * 8];
        let (mut acc, mut filled, mut at) = (0u64, 0u32, 0);
        for &g in gaps {
            // `filled < 64` always, and the spill shift `64 - filled` runs only when `filled > 0`.
            acc |= g << filled;
            let total = filled + width;
            if total >= 64 {
                packed[at..at + 8].copy_from_slice(&acc.to_le_bytes());
                at += 8;
                acc = if total > 64 { g >> (64 - filled) } else { 0 };
                filled = total - 64;
            } else {
                filled = total;
            }
        }
        let tail = filled.div_ceil(8) as usize;
        packed[at..at + tail].copy_from_slice(&acc.to_le_bytes()[..tail]);
        self.out.extend_from_slice(&packed[..at + tail]);
        self.len = 0;
    }

    fn finish(mut self) {
        debug_assert_eq!(self.value_at, self.values_end, "as many pairs pushed as announced");
        if self.len > 0 {
            self.flush();
        }
    }
}

pub(crate) fn decode_pairs<S: Sink>(r: &mut Reader<'_>, out: &mut [f32], sink: S) -> Result<(), CodecError> {
    let n = out.len();
    let k = r.count("pair count", 32)?;
    if k > n {
        return Err(CodecError::Invalid { what: "pair count", why: format!("{k} pairs for {n} elements") });
    }
    let values = r.bytes(4 * k, "pair values")?;
    let blocks = r.rest();
    let used = for_each_block(blocks, k, n, |_, _| {})?;
    r.bytes(used, "index blocks")?;
    r.finish("topk")?;
    sink.clear(out);
    for_each_block(blocks, k, n, |first, indices| {
        let values = values[4 * first..][..4 * indices.len()].chunks_exact(4);
        // A loop of independent adds only, so the misses on `out` overlap.
        for (&i, v) in indices.iter().zip(values) {
            sink.put(&mut out[i], f32::from_le_bytes([v[0], v[1], v[2], v[3]]));
        }
    })?;
    Ok(())
}

/// Calls `f(first, indices)` for each block of the `k` indices at the start of `bytes`, `first`
/// being the position of the block's first index among all `k`; checks every index is below `n`
/// and returns the bytes the blocks take.
#[inline]
fn for_each_block(bytes: &[u8], k: usize, n: usize, mut f: impl FnMut(usize, &[usize])) -> Result<usize, CodecError> {
    let mut pos = 0;
    let mut next = 0u64;
    let mut indices = [0usize; INDEX_BLOCK];
    // The block's body with 8 bytes of zeros after it, so every index is one unaligned u64 read.
    let mut body = [0u8; INDEX_BLOCK * 8 + 8];
    for first in (0..k).step_by(INDEX_BLOCK) {
        let len = (k - first).min(INDEX_BLOCK);
        let width = *bytes.get(pos).ok_or(CodecError::Truncated { what: "index block width", need: 1, have: 0 })?;
        pos += 1;
        if width > 64 {
            return Err(CodecError::Invalid { what: "index block width", why: format!("{width} bits") });
        }
        let width = u32::from(width);
        let body_len = (len * width as usize).div_ceil(8);
        let src = bytes.get(pos..pos + body_len).ok_or(CodecError::Truncated {
            what: "index block",
            need: body_len,
            have: bytes.len() - pos,
        })?;
        pos += body_len;
        let mut overflow = false;
        if width <= 56 {
            body[..body_len].copy_from_slice(src);
            body[body_len..body_len + 8].fill(0);
            let mask = (1u64 << width) - 1;
            for (j, index) in indices[..len].iter_mut().enumerate() {
                let at = j * width as usize;
                let word = u64::from_le_bytes(body[at / 8..at / 8 + 8].try_into().expect("8 bytes"));
                let gap = (word >> (at % 8)) & mask;
                // No overflow: next <= n < 2^61 (a slice of f32) and gap < 2^56.
                let i = next + gap;
                overflow |= i >= n as u64;
                *index = i as usize;
                next = i + 1;
            }
        } else {
            let mut bits = BitReader::new(src);
            for index in &mut indices[..len] {
                let i = next.checked_add(bits.get(width));
                overflow |= i.is_none_or(|i| i >= n as u64);
                let i = i.unwrap_or(u64::MAX);
                *index = i as usize;
                next = i.saturating_add(1);
            }
        }
        if overflow {
            return Err(CodecError::Invalid {
                what: "pair index",
                why: format!("an index in the block of pairs {first}.. is beyond the {n} elements"),
            });
        }
        f(first, &indices[..len]);
    }
    Ok(pos)
}

/// `k` elements chosen uniformly at random, indices regenerated from a seed by the decoder.
pub(crate) struct RandomK {
    ratio: f64,
    rng: Xoshiro256pp,
    chosen: IndexSet,
}

impl fmt::Debug for RandomK {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RandomK").field("ratio", &self.ratio).finish_non_exhaustive()
    }
}

impl RandomK {
    pub(crate) fn new(ratio: f64, seed: u64) -> Self {
        Self { ratio, rng: Xoshiro256pp::new(seed), chosen: IndexSet::default() }
    }
}

impl Encoder for RandomK {
    fn encode(&mut self, values: &[f32], out: &mut Vec<u8>) {
        let n = values.len();
        let k = kept(self.ratio, n);
        let seed = self.rng.next_u64();
        format::put_header(out, id::RANDOMK, n);
        out.extend_from_slice(&seed.to_le_bytes());
        format::put_varint(out, k as u64);
        out.reserve(4 * k);
        floyd(seed, n, k, &mut self.chosen, |_, indices| {
            indices.iter().for_each(|&i| out.extend_from_slice(&values[i].to_le_bytes()));
        });
    }
}

pub(crate) fn decode_randomk<S: Sink>(r: &mut Reader<'_>, out: &mut [f32], sink: S) -> Result<(), CodecError> {
    let n = out.len();
    let seed = r.u64("randomk seed")?;
    let k = r.count("randomk count", 32)?;
    if k > n {
        return Err(CodecError::Invalid { what: "randomk count", why: format!("{k} values for {n} elements") });
    }
    let values = r.bytes(4 * k, "randomk values")?;
    r.finish("randomk")?;
    sink.clear(out);
    let mut chosen = IndexSet::default();
    floyd(seed, n, k, &mut chosen, |first, indices| {
        let values = values[4 * first..][..4 * indices.len()].chunks_exact(4);
        for (&i, v) in indices.iter().zip(values) {
            sink.put(&mut out[i], f32::from_le_bytes([v[0], v[1], v[2], v[3]]));
        }
    });
    Ok(())
}

/// Floyd's sampling of `k` distinct indices below `n` from `seed`: calls `f(first, indices)`
/// for each run of drawn indices, `first` being the position of the run's first index in the
/// draw. This sequence is the random-k wire format.
fn floyd(seed: u64, n: usize, k: usize, chosen: &mut IndexSet, mut f: impl FnMut(usize, &[usize])) {
    debug_assert!(k <= n);
    let mut rng = Xoshiro256pp::new(seed);
    chosen.reset(k);
    // Runs let the caller's loop over `values` and `out` overlap its cache misses.
    let mut run = [0usize; 256];
    for first in (0..k).step_by(run.len()) {
        let len = (k - first).min(run.len());
        for (j, index) in run[..len].iter_mut().enumerate() {
            let top = n - k + first + j;
            let t = rng.below(top as u64 + 1) as usize;
            *index = if chosen.insert(t) {
                t
            } else {
                chosen.insert(top);
                top
            };
        }
        f(first, &run[..len]);
    }
}

/// An open-addressing set of indices, at most half full.
#[derive(Debug, Default)]
struct IndexSet {
    slots: Vec<u64>,
    shift: u32,
}

impl IndexSet {
    const EMPTY: u64 = u64::MAX;

    /// Empties the set, sized for `k` insertions.
    fn reset(&mut self, k: usize) {
        let cap = (2 * k).next_power_of_two().max(16);
        if self.slots.len() == cap {
            self.slots.fill(Self::EMPTY);
        } else {
            self.slots = vec![Self::EMPTY; cap];
        }
        self.shift = 64 - cap.trailing_zeros();
    }

    /// Inserts `v` (below `u64::MAX`); false if it was there.
    #[inline]
    fn insert(&mut self, v: usize) -> bool {
        let v = v as u64;
        let mask = self.slots.len() - 1;
        let mut at = (v.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> self.shift) as usize;
        loop {
            match self.slots[at] {
                Self::EMPTY => {
                    self.slots[at] = v;
                    return true;
                }
                s if s == v => return false,
                _ => at = (at + 1) & mask,
            }
        }
    }
}

/// Radix select over keys: finds the k-th largest in three passes of 11, 10 and 10 bits.
struct Histogram {
    /// Four interleaved histograms, so repeated buckets do not serialize on one counter.
    lanes: Vec<u32>,
    total: Vec<u64>,
    /// The keys of the first level's bucket, when few enough to be worth copying.
    narrow: Vec<u32>,
}

impl Histogram {
    const BUCKETS: usize = 1 << 11;
    /// (shift, width) of each level, most significant first.
    const LEVELS: [(u32, u32); 3] = [(20, 11), (10, 10), (0, 10)];
    /// Elements counted into the u32 lanes before they are added into the u64 totals.
    const SPAN: usize = 1 << 30;

    fn new() -> Self {
        Self { lanes: vec![0; 4 * Self::BUCKETS], total: vec![0; Self::BUCKETS], narrow: Vec::new() }
    }

    /// The k-th largest key of `bits` (`1 <= k <= bits.len()`), and how many elements with
    /// exactly that key belong to the top k.
    fn select(&mut self, bits: &[u32], k: usize) -> (u32, usize) {
        debug_assert!(k >= 1 && k <= bits.len());
        let mut prefix = 0u32;
        let mut need = k as u64;
        let mut keys = bits;
        for (level, (shift, width)) in Self::LEVELS.into_iter().enumerate() {
            let above = shift + width;
            let high = if above >= 31 { 0 } else { ABS & !((1 << above) - 1) };
            count(&mut self.lanes, &mut self.total, keys, shift, (1 << width) - 1, high, prefix);
            let mut found = 0;
            for b in (0..1usize << width).rev() {
                found = self.total[b];
                if found >= need {
                    prefix |= (b as u32) << shift;
                    break;
                }
                need -= found;
            }
            // A small first-level bucket is copied out, so the next levels do not reread all.
            if level == 0 && found <= bits.len() as u64 / 8 {
                self.narrow.clear();
                let narrow = &mut self.narrow;
                let _ = for_each_in(bits, prefix..prefix + (1 << shift), |_, b| {
                    narrow.push(b & ABS);
                    ControlFlow::Continue(())
                });
                keys = &self.narrow;
            }
        }
        (prefix, need as usize)
    }
}

/// Counts `(key >> shift) & mask` into `total` over the keys whose bits under `high` equal
/// `prefix`.
fn count(lanes: &mut [u32], total: &mut [u64], bits: &[u32], shift: u32, mask: u32, high: u32, prefix: u32) {
    total.fill(0);
    for span in bits.chunks(Histogram::SPAN) {
        lanes.fill(0);
        let (l0, rest) = lanes.split_at_mut(Histogram::BUCKETS);
        let (l1, rest) = rest.split_at_mut(Histogram::BUCKETS);
        let (l2, l3) = rest.split_at_mut(Histogram::BUCKETS);
        let bucket = |b: u32| (((b & ABS) >> shift) & mask) as usize;
        let hit = |b: u32| u32::from((b & ABS) & high == prefix);
        let mut quads = span.chunks_exact(4);
        for q in &mut quads {
            l0[bucket(q[0])] += hit(q[0]);
            l1[bucket(q[1])] += hit(q[1]);
            l2[bucket(q[2])] += hit(q[2]);
            l3[bucket(q[3])] += hit(q[3]);
        }
        for &b in quads.remainder() {
            l0[bucket(b)] += hit(b);
        }
        for (i, t) in total.iter_mut().enumerate() {
            *t += u64::from(l0[i]) + u64::from(l1[i]) + u64::from(l2[i]) + u64::from(l3[i]);
        }
    }
}

/// Calls `f(index, bits)` in index order for every element whose key is in `keys`. A vectorized
/// pass marks the hits of each [`GROUP`] elements in a bit mask; the scalar loop then visits the
/// set bits only.
fn for_each_in(bits: &[u32], keys: Range<u32>, mut f: impl FnMut(usize, u32) -> ControlFlow<()>) -> ControlFlow<()> {
    // One unsigned compare tests both ends.
    let (lo, span) = (keys.start, keys.end.saturating_sub(keys.start));
    let mut masks = [0u64; TILE / GROUP];
    for (t, tile) in bits.chunks(TILE).enumerate() {
        let base = t * TILE;
        let whole = tile.len() / GROUP * GROUP;
        let masks = &mut masks[..whole / GROUP];
        hit_masks(&tile[..whole], lo, span, masks);
        for (g, &m) in masks.iter().enumerate() {
            let mut m = m;
            while m != 0 {
                let j = g * GROUP + m.trailing_zeros() as usize;
                f(base + j, tile[j])?;
                m &= m - 1;
            }
        }
        for (j, &b) in tile.iter().enumerate().skip(whole) {
            if (b & ABS).wrapping_sub(lo) < span {
                f(base + j, b)?;
            }
        }
    }
    ControlFlow::Continue(())
}

/// `masks[g]` bit `j` = whether the key of `bits[g · GROUP + j]` is in `lo .. lo + span`.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2", "x86_64+sse4.1"))]
fn hit_masks(bits: &[u32], lo: u32, span: u32, masks: &mut [u64]) {
    for (m, group) in masks.iter_mut().zip(bits.chunks_exact(GROUP)) {
        let group: &[u32; GROUP] = group.try_into().expect("chunks_exact gives whole groups");
        let mut mask = 0u64;
        for (j, &b) in group.iter().enumerate() {
            mask |= u64::from((b & ABS).wrapping_sub(lo) < span) << j;
        }
        *m = mask;
    }
}

/// How many keys are `>= min_key`.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2", "x86_64+sse4.1"))]
fn count_at_least(bits: &[u32], min_key: u32) -> usize {
    // u32 sums vectorize; spans keep them from overflowing.
    bits.chunks(1 << 24).map(|s| s.iter().map(|&b| u32::from(b & ABS >= min_key)).sum::<u32>() as usize).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::read_header;
    use crate::rng::splitmix64;
    use crate::{decode, decode_add};
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn key(v: f32) -> u32 {
        v.to_bits() & ABS
    }

    /// Exact top-k by sorting: largest key first, lowest index first among ties; ascending.
    fn topk_by_sort(values: &[f32], k: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..values.len()).collect();
        order.sort_by(|&a, &b| key(values[b]).cmp(&key(values[a])).then(a.cmp(&b)));
        order.truncate(k);
        order.sort_unstable();
        order
    }

    fn encode(encoder: &mut dyn Encoder, values: &[f32]) -> Vec<u8> {
        let mut payload = Vec::new();
        encoder.encode(values, &mut payload);
        payload
    }

    /// The indices and value bits of a pairs payload, read independently of `decode_pairs`.
    fn pairs(payload: &[u8]) -> (Vec<usize>, Vec<u32>) {
        let mut r = Reader::new(payload);
        let h = read_header(&mut r).unwrap();
        assert_eq!(h.id, id::TOPK);
        let k = r.varint("k").unwrap() as usize;
        let values = r.bytes(4 * k, "values").unwrap();
        let mut indices = Vec::new();
        let mut next = 0u64;
        for first in (0..k).step_by(INDEX_BLOCK) {
            let len = (k - first).min(INDEX_BLOCK);
            let width = u32::from(r.u8("width").unwrap());
            let mut bits = BitReader::new(r.bytes((len * width as usize).div_ceil(8), "block").unwrap());
            for _ in 0..len {
                let i = next + bits.get(width);
                indices.push(i as usize);
                next = i + 1;
            }
        }
        r.finish("pairs").unwrap();
        let bits = values.chunks_exact(4).map(|b| u32::from_le_bytes(b.try_into().unwrap())).collect();
        (indices, bits)
    }

    /// Checks that `payload` decodes, through `decode` and `decode_add`, to `values` at `indices`
    /// and zero elsewhere.
    fn assert_decodes_to(payload: &[u8], values: &[f32], indices: &[usize]) {
        let decoded = decode(payload, values.len()).unwrap();
        let mut want = vec![0u32; values.len()];
        indices.iter().for_each(|&i| want[i] = values[i].to_bits());
        assert_eq!(decoded.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want);
    }

    /// `n` standard-normal values (SplitMix64 and Box-Muller, as the bench).
    fn normal(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        let mut unit = || (splitmix64(&mut s) >> 11) as f64 / (1u64 << 53) as f64;
        (0..n)
            .map(|_| {
                let (u1, u2) = (1.0 - unit(), unit());
                ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
            })
            .collect()
    }

    /// Values with many ties, zeros of both signs, infinities and NaNs.
    fn value() -> impl Strategy<Value = f32> {
        prop_oneof![
            6 => -4f32..4.0,
            3 => (-3i32..=3).prop_map(|v| v as f32),
            1 => Just(-0.0f32),
            1 => Just(f32::NAN),
            1 => Just(-f32::NAN),
            1 => Just(f32::INFINITY),
            1 => Just(f32::NEG_INFINITY),
            1 => any::<f32>(),
        ]
    }

    /// Sample sizes: small ones reach the sampled paths (and their fallbacks) on small gradients.
    fn sample_len() -> impl Strategy<Value = usize> {
        prop_oneof![Just(64usize), Just(128), Just(SAMPLE)]
    }

    fn ratio() -> impl Strategy<Value = f64> {
        prop_oneof![0.0005f64..0.03, 0.0f64..=1.0]
    }

    proptest! {
        #[test]
        fn exact_topk_is_the_top_k_by_sort(
            values in proptest::collection::vec(value(), 0..1500),
            ratio in ratio(),
            sample in sample_len(),
            seed in any::<u64>(),
        ) {
            let mut topk = TopK::with_sample(ratio, false, seed, sample);
            for _ in 0..2 {
                let payload = encode(&mut topk, &values);
                let (indices, bits) = pairs(&payload);
                let k = kept(ratio, values.len());
                prop_assert_eq!(&indices, &topk_by_sort(&values, k));
                prop_assert!(indices.iter().zip(&bits).all(|(&i, &b)| values[i].to_bits() == b));
                assert_decodes_to(&payload, &values, &indices);
            }
        }

        #[test]
        fn approximate_topk_is_a_threshold_rule(
            values in proptest::collection::vec(value(), 0..1500),
            ratio in ratio(),
            sample in sample_len(),
            seed in any::<u64>(),
        ) {
            let mut topk = TopK::with_sample(ratio, true, seed, sample);
            let k = kept(ratio, values.len());
            let payload = encode(&mut topk, &values);
            let (indices, _) = pairs(&payload);
            let chosen: BTreeSet<usize> = indices.iter().copied().collect();
            let min_kept = indices.iter().map(|&i| key(values[i])).min();
            let max_dropped = (0..values.len()).filter(|i| !chosen.contains(i)).map(|i| key(values[i])).max();
            if let (Some(kept), Some(dropped)) = (min_kept, max_dropped) {
                prop_assert!(kept >= dropped, "kept key {kept:#x} below dropped key {dropped:#x}");
            }
            prop_assert!(indices.len() <= 2 * k, "{} sent, k = {k}", indices.len());
            prop_assert_eq!(indices.is_empty(), values.is_empty());
            if values.len() <= 4 * sample {
                prop_assert_eq!(&indices, &topk_by_sort(&values, k));
            }
            assert_decodes_to(&payload, &values, &indices);
        }

        #[test]
        fn threshold_keeps_exactly_the_magnitudes_above_tau(
            values in proptest::collection::vec(value(), 0..1000),
            tau in prop_oneof![0f32..3.0, Just(0.0), Just(-1.0), Just(f32::NAN), Just(f32::INFINITY)],
        ) {
            let payload = encode(&mut Threshold::new(tau), &values);
            let (indices, _) = pairs(&payload);
            let tau = if tau.is_nan() || tau < 0.0 { 0.0 } else { tau };
            let want: Vec<usize> = (0..values.len()).filter(|&i| values[i].is_nan() || values[i].abs() > tau).collect();
            prop_assert_eq!(&indices, &want);
            assert_decodes_to(&payload, &values, &indices);
        }

        #[test]
        fn randomk_decodes_the_indices_the_encoder_drew(
            n in 0usize..3000,
            ratio in ratio(),
            seed in any::<u64>(),
        ) {
            // Distinct values name their index: value = index + 1.
            let values: Vec<f32> = (0..n).map(|i| i as f32 + 1.0).collect();
            let mut randomk = RandomK::new(ratio, seed);
            for _ in 0..2 {
                let payload = encode(&mut randomk, &values);
                let mut r = Reader::new(&payload);
                read_header(&mut r).unwrap();
                let call_seed = r.u64("seed").unwrap();
                let k = r.varint("k").unwrap() as usize;
                prop_assert_eq!(k, kept(ratio, n));
                let drawn: Vec<usize> =
                    r.rest().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()) as usize - 1).collect();
                prop_assert_eq!(&drawn, &floyd_reference(call_seed, n, k));
                assert_decodes_to(&payload, &values, &drawn);
            }
        }

        #[test]
        fn decode_add_adds_the_scaled_decoded_vector(
            values in proptest::collection::vec(value(), 0..800),
            base in proptest::collection::vec(-8f32..8.0, 800),
            scale in -2f32..2.0,
            which in 0usize..4,
        ) {
            let mut encoder: Box<dyn Encoder> = match which {
                0 => Box::new(TopK::new(0.1, false, 1)),
                1 => Box::new(TopK::with_sample(0.1, true, 1, 64)),
                2 => Box::new(Threshold::new(1.5)),
                _ => Box::new(RandomK::new(0.2, 1)),
            };
            let payload = encode(encoder.as_mut(), &values);
            let decoded = decode(&payload, values.len()).unwrap();
            let mut out = base[..values.len()].to_vec();
            decode_add(&payload, scale, &mut out).unwrap();
            for i in 0..values.len() {
                let want = base[i] + scale * decoded[i];
                prop_assert!(out[i].to_bits() == want.to_bits() || (out[i].is_nan() && want.is_nan()), "element {i}");
            }
        }

        #[test]
        fn decoding_random_bodies_never_panics(
            id in prop_oneof![Just(id::TOPK), Just(id::RANDOMK)],
            n in 0usize..300,
            body in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            let mut payload = Vec::new();
            format::put_header(&mut payload, id, n);
            payload.extend_from_slice(&body);
            check_decode_is_all_or_nothing(&payload, n);
        }

        #[test]
        fn decoding_mutated_payloads_never_panics(
            values in proptest::collection::vec(value(), 0..700),
            which in 0usize..4,
            at in any::<proptest::sample::Index>(),
            flip in 1u8..=255,
            extra in proptest::collection::vec(any::<u8>(), 1..9),
            cut in any::<proptest::sample::Index>(),
        ) {
            let mut encoder: Box<dyn Encoder> = match which {
                0 => Box::new(TopK::new(0.05, false, 3)),
                1 => Box::new(TopK::with_sample(0.05, true, 3, 64)),
                2 => Box::new(Threshold::new(1.0)),
                _ => Box::new(RandomK::new(0.05, 3)),
            };
            let payload = encode(encoder.as_mut(), &values);
            let n = values.len();
            // Every byte but the codec id: another id hands the bytes to another codec's decoder.
            let mut flipped = payload.clone();
            let i = 1 + at.index(flipped.len() - 1);
            flipped[i] ^= flip;
            check_decode_is_all_or_nothing(&flipped, n);
            check_decode_is_all_or_nothing(&payload[..cut.index(payload.len())], n);
            let mut extended = payload.clone();
            extended.extend_from_slice(&extra);
            prop_assert!(decode(&extended, n).is_err(), "trailing bytes are refused");
            check_decode_is_all_or_nothing(&extended, n);
        }
    }

    proptest! {
        #[test]
        fn gaps_of_every_width_round_trip(
            gaps in proptest::collection::vec((any::<u64>(), 0u32..=56), 0..400),
            huge in proptest::collection::vec(any::<u64>(), 0..3),
        ) {
            // Gaps of every width up to 56, then a few of up to 62 bits: the sum stays below 2^64.
            let gaps = gaps.iter().map(|&(v, w)| if w == 0 { 0 } else { v >> (64 - w) });
            let gaps: Vec<u64> = gaps.chain(huge.iter().map(|v| v >> 2)).collect();
            let indices: Vec<usize> = gaps
                .iter()
                .scan(0u64, |next, &g| {
                    let i = *next + g;
                    *next = i + 1;
                    Some(i as usize)
                })
                .collect();
            let mut payload = Vec::new();
            format::put_header(&mut payload, id::TOPK, 0);
            let mut w = PairWriter::new(&mut payload, indices.len());
            indices.iter().for_each(|&i| w.push(i, i as u32));
            w.finish();
            let (read, _) = pairs(&payload);
            prop_assert_eq!(&read, &indices);
            let blocks = &payload[3 + format::varint_len(indices.len() as u64) + 4 * indices.len()..];
            let mut decoded = Vec::new();
            let used = for_each_block(blocks, indices.len(), usize::MAX, |_, run| decoded.extend_from_slice(run));
            prop_assert_eq!(used, Ok(blocks.len()));
            prop_assert_eq!(&decoded, &indices);
        }
    }

    /// Decodes through `decode` and `decode_add`: either both succeed, or both fail and
    /// `decode_add` left its buffer untouched.
    fn check_decode_is_all_or_nothing(payload: &[u8], n: usize) {
        let whole = decode(payload, 1 << 12);
        let mut out = vec![1.5f32; n];
        match (whole, decode_add(payload, 2.0, &mut out)) {
            (Ok(dense), Ok(())) => {
                assert_eq!(dense.len(), n);
                for (o, d) in out.iter().zip(&dense) {
                    let want = 1.5 + 2.0 * d;
                    assert!(o.to_bits() == want.to_bits() || (o.is_nan() && want.is_nan()));
                }
            }
            (Err(_), Err(_)) => assert!(out.iter().all(|&o| o == 1.5), "a failed decode_add wrote"),
            // `decode` reads the length from the payload, `decode_add` from the buffer.
            (Ok(dense), Err(CodecError::Length { .. })) => assert_ne!(dense.len(), n),
            (Err(_), Ok(())) => panic!("decode_add accepted what decode refused"),
            (Ok(_), Err(e)) => panic!("decode accepted what decode_add refused: {e}"),
        }
    }

    /// Floyd's algorithm written plainly, with a `BTreeSet`.
    fn floyd_reference(seed: u64, n: usize, k: usize) -> Vec<usize> {
        let mut rng = Xoshiro256pp::new(seed);
        let mut chosen = BTreeSet::new();
        let mut drawn = Vec::new();
        for top in n - k..n {
            let t = rng.below(top as u64 + 1) as usize;
            let i = if chosen.contains(&t) { top } else { t };
            chosen.insert(i);
            drawn.push(i);
        }
        drawn
    }

    #[test]
    fn edge_sizes_keep_max_one_of_round_ratio_n() {
        for (n, ratio, k) in [(0, 0.01, 0), (1, 0.01, 1), (50, 0.01, 1), (149, 0.01, 1), (150, 0.01, 2), (10, 1.0, 10)]
        {
            assert_eq!(kept(ratio, n), k, "n = {n}, ratio = {ratio}");
            let values: Vec<f32> = (0..n).map(|i| i as f32).collect();
            for approx in [false, true] {
                let payload = encode(&mut TopK::new(ratio, approx, 0), &values);
                assert_eq!(pairs(&payload).0, (n - k..n).collect::<Vec<_>>());
            }
        }
        // An empty gradient: header and a zero count.
        assert_eq!(encode(&mut TopK::new(0.5, false, 0), &[]), [id::TOPK, 1, 0, 0]);
        assert_eq!(encode(&mut Threshold::new(0.5), &[]), [id::TOPK, 1, 0, 0]);
        let randomk = encode(&mut RandomK::new(0.5, 0), &[]);
        assert_eq!(randomk.len(), 3 + 8 + 1);
        assert_eq!(decode(&randomk, 0).unwrap(), Vec::<f32>::new());
    }

    #[test]
    fn ties_go_to_the_lowest_indices() {
        let values = [1.0f32, -2.0, 2.0, 0.5, -2.0, 2.0, 1.0];
        let payload = encode(&mut TopK::new(3.0 / 7.0, false, 0), &values);
        assert_eq!(pairs(&payload).0, [1, 2, 4]);
        let all_equal = vec![0.25f32; 1000];
        for approx in [false, true] {
            let payload = encode(&mut TopK::with_sample(0.01, approx, 0, 64), &all_equal);
            assert_eq!(pairs(&payload).0, (0..10).collect::<Vec<_>>());
        }
    }

    #[test]
    fn nan_ranks_above_infinity() {
        let values = [1.0f32, f32::INFINITY, f32::NAN, -3.0, f32::NEG_INFINITY];
        let payload = encode(&mut TopK::new(0.2, false, 0), &values);
        assert_eq!(pairs(&payload).0, [2]);
        let decoded = decode(&payload, values.len()).unwrap();
        assert!(decoded[2].is_nan());
        let payload = encode(&mut TopK::new(0.6, false, 0), &values);
        assert_eq!(pairs(&payload).0, [1, 2, 4]);
    }

    #[test]
    fn sampled_paths_match_the_sort_on_large_gradients() {
        let n = 300_000;
        let normal = normal(n, 5);
        let mut zeros = vec![0.0f32; n];
        (0..n).step_by(997).for_each(|i| zeros[i] = normal[i]);
        let few_levels: Vec<f32> = normal.iter().map(|v| (v * 2.0).round()).collect();
        for (name, values) in [("normal", &normal), ("mostly zeros", &zeros), ("few levels", &few_levels)] {
            for ratio in [0.001, 0.01, 0.3] {
                let k = kept(ratio, n);
                let want = topk_by_sort(values, k);
                let mut exact = TopK::new(ratio, false, 9);
                assert_eq!(pairs(&encode(&mut exact, values)).0, want, "{name}, ratio {ratio}");
                let (approx, _) = pairs(&encode(&mut TopK::new(ratio, true, 9), values));
                let sent: BTreeSet<usize> = approx.iter().copied().collect();
                let dropped = (0..n).filter(|i| !sent.contains(i)).map(|i| key(values[i])).max().unwrap();
                assert!(approx.iter().all(|&i| key(values[i]) >= dropped), "{name}, ratio {ratio}");
                assert!(approx.len() <= 2 * k, "{name}, ratio {ratio}: {} sent", approx.len());
                if name == "normal" {
                    // The sample's quantile lands within a few percent of k.
                    let off = (approx.len() as f64 - k as f64).abs() / k as f64;
                    assert!(off < 0.2, "{name}, ratio {ratio}: {} sent for k = {k}", approx.len());
                }
            }
        }
    }

    #[test]
    fn topk_wire_ratio_beats_index_value_pairs() {
        // (u32, f32) pairs give 50x at ratio 0.01; gaps bit-packed in blocks give about 77x.
        let values = normal(1 << 20, 1);
        let payload = encode(&mut TopK::new(0.01, false, 0), &values);
        let ratio = (values.len() * 4) as f64 / payload.len() as f64;
        assert!(ratio > 70.0, "wire ratio {ratio:.1}");
    }

    #[test]
    fn the_pairs_layout_is_pinned() {
        let values = [0.0f32, 5.0, 0.0, 0.0, -7.0, 0.0];
        let payload = encode(&mut TopK::new(2.0 / 6.0, false, 0), &values);
        let mut want = vec![id::TOPK, 1, 6, 2];
        want.extend_from_slice(&5.0f32.to_le_bytes());
        want.extend_from_slice(&(-7.0f32).to_le_bytes());
        // Gaps 1 (index 1) and 2 (index 4), 2 bits each: 0b10_01.
        want.extend_from_slice(&[2, 0b1001]);
        assert_eq!(payload, want);
    }

    #[test]
    fn randomk_indices_are_pinned() {
        // The wire format: if this changes, old payloads decode to other indices.
        assert_eq!(floyd_reference(0, 10, 4), drawn(0, 10, 4));
        assert_eq!(drawn(0, 10, 4), [2, 3, 8, 0]);
        assert_eq!(drawn(12345, 1000, 5), [550, 204, 84, 175, 265]);
        assert_eq!(floyd_reference(3, 5000, 600), drawn(3, 5000, 600), "runs of 256 keep the order");
    }

    fn drawn(seed: u64, n: usize, k: usize) -> Vec<usize> {
        let mut all = Vec::new();
        floyd(seed, n, k, &mut IndexSet::default(), |_, run| all.extend_from_slice(run));
        all
    }

    #[test]
    fn randomk_picks_every_index_equally_often() {
        // 20000 draws of 5 of 20: each index expects 5000, standard deviation 61.
        let (n, calls) = (20, 20_000);
        let values: Vec<f32> = (0..n).map(|i| i as f32 + 1.0).collect();
        let mut randomk = RandomK::new(0.25, 7);
        let mut hits = vec![0u32; n];
        for _ in 0..calls {
            let decoded = decode(&encode(&mut randomk, &values), n).unwrap();
            decoded.iter().enumerate().filter(|(_, d)| **d != 0.0).for_each(|(i, _)| hits[i] += 1);
        }
        assert!(hits.iter().all(|&h| (4700..=5300).contains(&h)), "{hits:?}");
        // Pairs of calls draw independent sets: the number of indices two calls share matches
        // a hypergeometric mean of 5 · 5 / 20.
        let mut shared = 0usize;
        let mut previous: Option<Vec<f32>> = None;
        for _ in 0..2000 {
            let decoded = decode(&encode(&mut randomk, &values), n).unwrap();
            if let Some(p) = &previous {
                shared += p.iter().zip(&decoded).filter(|(a, b)| **a != 0.0 && **b != 0.0).count();
            }
            previous = Some(decoded);
        }
        let mean = shared as f64 / 1999.0;
        assert!((mean - 1.25).abs() < 0.1, "{mean}");
    }

    #[test]
    fn invalid_pairs_are_refused_by_name() {
        let invalid = |body: &[u8], n: usize| {
            let mut payload = Vec::new();
            format::put_header(&mut payload, id::TOPK, n);
            payload.extend_from_slice(body);
            decode(&payload, n).unwrap_err().to_string()
        };
        let one = 1.0f32.to_le_bytes();
        let with = |k: u8, tail: &[u8]| [&[k][..], &one, tail].concat();
        assert!(invalid(&with(1, &[3, 0b111]), 7).contains("pair index"), "index 7 of 7");
        assert!(invalid(&with(1, &[65]), 100).contains("width"));
        assert!(invalid(&with(1, &[3]), 100).contains("truncated"));
        assert!(invalid(&with(1, &[3, 1, 0]), 100).contains("after the end"));
        assert!(invalid(&[2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 1).contains("2 pairs for 1 elements"));
        assert!(invalid(&[200, 0, 0], 1000).contains("cannot fit"));
        let mut randomk = Vec::new();
        format::put_header(&mut randomk, id::RANDOMK, 1);
        randomk.extend_from_slice(&[0; 8]);
        randomk.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(decode(&randomk, 1).unwrap_err().to_string().contains("2 values for 1 elements"));
    }
}
