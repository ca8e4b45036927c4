//! SketchML (Jiang et al., SIGMOD 2018): quantile buckets, the nonzero positions of each group
//! of buckets, and a grouped MinMaxSketch holding each position's bucket.
//!
//! # What is sent
//! Equal-count quantile buckets are fitted to the nonzero values, negative and positive values in
//! separate buckets so no bucket spans zero; each bucket decodes to the mean of its values. The
//! split points come from a sorted sample: every nonzero when there are at most `2 · SAMPLE`,
//! else about [`SAMPLE`] drawn at random, one per stride; a bucket's share of the values is then
//! `1/buckets` within about `sqrt(buckets / SAMPLE)` relative (4% for 256 buckets). The buckets
//! are cut into `groups` contiguous groups (the negative side gets its share of groups), and
//! within a group bucket ranks count outward from zero. Per group: the positions it holds (so the
//! decoder knows each position's group exactly) and a MinMaxSketch of its ranks. Inserting keeps
//! the rank closest to zero in each cell; a query takes the rank furthest from zero over the
//! rows. A decoded value is therefore always the mean of a bucket of the right group, never
//! further from zero than the value's own bucket and never of the other sign: collisions pull
//! values toward zero. Zeros (and NaN) are not sent and decode to exact zeros; ±∞ count as
//! ±`f32::MAX`.
//!
//! # Error, and the defaults
//! The sketch's error against the plain quantization (each value's own bucket mean) falls with
//! `cols`, about as `1/cols`: on a normal gradient with the paper's 256 buckets in 8 groups and 2
//! rows it is 25% relative L2 at `cols = 0.3`, 13% at 1, 4% at 4, 2% at 8 (a test holds the
//! paper's setting to `DEFAULT_SKETCH_ERROR`, 0.28). A group of one bucket needs no sketch:
//! `groups = buckets` is exact quantization (error 0 against the bucket means, 2.7% against the
//! input with 256 buckets, 6.3% with 64).
//!
//! Every bit a sketch cell costs buys less than sending the bucket index: no true sketch reaches
//! both 1% error against the bucket means and 6x on sparse gradients (256 buckets, 128 groups,
//! `cols = 2` comes closest: 0.96% at 5.6x). So the default is 64 buckets, each its own group:
//! the same 6 bits a value as the paper's setting, with no sketch error (7.8x on a sparse
//! gradient of keys 10 apart, 6.1x at 100 apart). `groups < buckets` turns the MinMaxSketch on,
//! e.g. `sketchml:buckets=256,groups=8,rows=2,cols=0.3` as in the paper.
//!
//! # Cost
//! Positions are coded by exclusion: group `g` sends its positions as ranks among the positions
//! not taken by groups `0..g`, so the lists together cost about the entropy of the labels,
//! `log2(groups)` bits a value for equal groups of a dense vector, instead of `log2(groups) +
//! 1.44` for lists of absolute positions. Ranks are sent as Rice-coded gaps. The last group's
//! list is left out when no position is zero: it holds every position left. The sketch costs
//! `rows · cols · ceil(log2(buckets / groups))` bits a value: 3 bits at the paper's setting, 6.05
//! bits a value in all on a dense normal gradient (5.3x); nothing at the default, where the
//! positions' 6.06 bits are everything.
//!
//! Each group's sketch is cut into blocks of [`BLOCK`] consecutive group positions, each block its
//! own MinMaxSketch of `rows × ceil(cols · block length)` cells: the same load per cell (so the
//! same collisions) as one sketch over the group, but the cells being filled or read stay in L1.
//! One sketch per group ran at 33 MB/s on 25M floats, nearly all of it cache misses.
//!
//! # Format
//! Body after the shared header (`n` = element count), varints LEB128, bit fields LSB first:
//!
//! ```text
//! rows: u8 (1..=8; the spec parser allows up to 4)
//! groups: varint G (0 when every value is zero)
//! G × group header, in value order (most negative group first):
//!     buckets s: varint (1..=65536)      ranks 0..s, rank 0 closest to zero
//!     count c: varint (>= 1)              positions in the group; the counts sum to <= n
//!     block columns m: varint (1..=65536 if s > 1): cells per row of a full sketch block
//!     rice k: u8 (<= 56)
//!     stream bytes: varint
//!     means: s × f32 LE, by rank         finite, nonzero, one sign, magnitudes non-decreasing
//! G × position stream (the last one empty when the counts sum to n):
//!     c Rice codes, zero-padded to a byte. Code i is v = rank_i - rank_{i-1} - 1 (v = rank_0
//!     for the first), where a position's rank is the number of positions before it that are
//!     zero or in a group >= g. A code is q = v >> k one-bits (q < 32), a zero bit, then the
//!     low k bits of v; or, for larger q, 32 one-bits, 7 bits w (<= 64), then v in w bits.
//! G × sketch (absent when s = 1), zero-padded to a byte: the group's positions in blocks of
//!     1024 (the last one shorter, of L positions, has ceil(m · L / 1024) columns instead of
//!     m); per block, rows × columns cells of ceil(log2 s) bits, row after row. Position p sits
//!     in row r at column (half · columns) >> 32, where half is the high 32 bits of
//!     h = splitmix64(p ^ seed) for even r and its low 32 bits for odd r, seed =
//!     splitmix64(HASH_SEED + r / 2), and splitmix64(x) is `rng::splitmix64` (add
//!     0x9e3779b97f4a7c15, then mix).
//! ```
//!
//! # Decoding
//! The decoder walks the groups' lists together in position order (up to 16 groups in arrays
//! held in registers, more in a tournament tree: `O(log G)` a position), queries each position's
//! sketch and writes through the [`Sink`]. It allocates `O(G)`, nothing per element, and refuses
//! positions at or beyond `n`, streams with bytes or bits left over, cells holding ranks outside
//! their group, means that are not finite or out of order, and counts or sizes the bytes left
//! cannot hold (checked before anything is read). A payload found corrupt during the walk
//! leaves `out` partly written.
//!
//! Refuses (encoder): more buckets than one per [`MIN_PER_BUCKET`] nonzero values (the means
//! table would cost more than the values), so small inputs get fewer buckets and groups; and
//! vectors of 2^48 elements or more (ranks are packed in 48 bits).

use std::ops::Range;

use multiversion::multiversion;

use crate::format::{self, Reader, Sink};
use crate::rng::{Xoshiro256pp, splitmix64};
use crate::{CodecError, Encoder, id};

/// Values sorted to place the quantile split points.
pub(crate) const SAMPLE: usize = 1 << 17;
/// Nonzero values per bucket, at least, on average: the means table then costs at most 2 bits
/// a value.
pub(crate) const MIN_PER_BUCKET: usize = 16;
/// Hash rows allowed.
const MAX_ROWS: u8 = 8;
/// Buckets in one group on the wire: cells are at most 16 bits.
const MAX_GROUP_BUCKETS: u64 = 1 << 16;
/// Buckets the encoder uses at most (the spec's limit).
const MAX_BUCKETS: usize = 1 << 16;
/// Unary length that announces an escaped Rice value.
const ESCAPE: u32 = 32;
/// Largest Rice parameter.
const MAX_RICE_K: u32 = 56;
/// Longest Rice code: escape, width, value.
const MAX_RICE_BITS: usize = ESCAPE as usize + 7 + 64;
/// Base of the per-row hash seeds. Part of the wire format.
const HASH_SEED: u64 = 0x5ce7_c41d_0000_0000;
/// Seed of the sampling stream (encoder only: any value gives valid payloads).
const SAMPLE_SEED: u64 = 0x5a3_91e5;
/// Smallest group header: five one-byte fields and one mean.
const MIN_GROUP_HEADER_BITS: u64 = 9 * 8;
/// `n` at which bucketing goes through a lookup table on the top 16 bits of the value.
const LUT_MIN_LEN: usize = 1 << 16;
/// Splits one lookup-table cell may hold and still be resolved by a short scan.
const LUT_MAX_SCAN: usize = 2;

/// The SketchML encoder. Keeps its scratch buffers between calls.
#[derive(Debug)]
pub(crate) struct SketchMl {
    buckets: u32,
    groups: u32,
    rows: u32,
    cols: f64,
    sample: Vec<f32>,
    /// The last call's buckets and their means: the plain quantization the sketch approximates.
    #[cfg(test)]
    last: Option<(Bucketer, Vec<f32>)>,
}

impl SketchMl {
    pub(crate) fn new(buckets: u32, groups: u32, rows: u32, cols: f64) -> Self {
        Self {
            buckets: buckets.max(1),
            groups: groups.max(1),
            rows: rows.clamp(1, u32::from(MAX_ROWS)),
            cols: if cols.is_finite() && cols > 0.0 { cols } else { crate::spec::defaults::SKETCH_COLS },
            sample: Vec::new(),
            #[cfg(test)]
            last: None,
        }
    }
}

impl Encoder for SketchMl {
    fn encode(&mut self, values: &[f32], out: &mut Vec<u8>) {
        assert!((values.len() as u64) < 1 << 48, "sketchml packs ranks in 48 bits: {} values", values.len());
        format::put_header(out, id::SKETCHML, values.len());
        out.push(self.rows as u8);
        let (neg, pos) = count_signs(values);
        let nnz = neg + pos;
        if nnz == 0 {
            format::put_varint(out, 0);
            #[cfg(test)]
            {
                self.last = None;
            }
            return;
        }
        let layout = Layout::new(nnz, neg, pos, self.buckets as usize, self.groups as usize);
        sample_nonzeros(values, nnz, &mut self.sample);
        let bucketer = Bucketer::new(&layout.splits(&self.sample), values.len());
        let slots = layout.slots();
        let rows = self.rows as usize;
        let block_cols = ((self.cols * BLOCK as f64).ceil() as u64).clamp(1, MAX_BLOCK_COLS);
        let mut groups: Vec<GroupCoder> = rice_parameters(&layout, &bucketer, &slots, &self.sample, values.len(), nnz)
            .into_iter()
            .zip(layout.group_ranges())
            .map(|(k, range)| GroupCoder::new(k, cell_width(range.len() as u64), block_cols))
            .collect();
        let mut sums = vec![0f64; layout.buckets];
        let mut counts = vec![0u64; layout.buckets];
        let seeds = pair_seeds(self.rows);
        let mut scan =
            Scan { bucketer: &bucketer, slots: &slots, sums: &mut sums, counts: &mut counts, rows, seeds: &seeds };
        scan.run(values, &mut groups);
        let means = layout.means(&sums, &counts);
        write_body(&layout, &means, &counts, groups, nnz == values.len(), out);
        #[cfg(test)]
        {
            self.last = Some((bucketer, means));
        }
    }
}

impl SketchMl {
    /// Per element, the mean of its own bucket (0 for zeros): the plain quantization the sketch
    /// approximates. Valid after `encode` of the same `values`.
    #[cfg(test)]
    fn bucket_means(&self, values: &[f32]) -> Vec<f32> {
        let Some((bucketer, means)) = &self.last else { return vec![0.0; values.len()] };
        values.iter().map(|&v| if is_nonzero(v) { means[bucketer.bucket(v)] } else { 0.0 }).collect()
    }
}

/// Counts of negative and positive values (zeros and NaN in neither).
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn count_signs(values: &[f32]) -> (usize, usize) {
    let (mut neg, mut pos) = (0usize, 0usize);
    for chunk in values.chunks(1 << 16) {
        // u32 lanes vectorize; a chunk cannot overflow them.
        let (mut n, mut p) = (0u32, 0u32);
        for &v in chunk {
            n += u32::from(v < 0.0);
            p += u32::from(v > 0.0);
        }
        neg += n as usize;
        pos += p as usize;
    }
    (neg, pos)
}

#[inline(always)]
fn is_nonzero(v: f32) -> bool {
    // Not `v != 0.0`: NaN is not sent either.
    v.abs() > 0.0
}

/// Fills `sample` with nonzero values, sorted: all of them when there are few, otherwise one
/// random element of each of about `SAMPLE · n / nnz` equal strides, zeros skipped.
fn sample_nonzeros(values: &[f32], nnz: usize, sample: &mut Vec<f32>) {
    sample.clear();
    let n = values.len();
    if nnz <= 2 * SAMPLE {
        sample.extend(values.iter().copied().filter(|&v| is_nonzero(v)));
    } else {
        let draws = ((SAMPLE as u128 * n as u128) / nnz as u128) as usize;
        let mut rng = Xoshiro256pp::new(SAMPLE_SEED);
        for j in 0..draws {
            let (lo, hi) = (j * n / draws, (j + 1) * n / draws);
            let v = values[lo + rng.below((hi - lo) as u64) as usize];
            if is_nonzero(v) {
                sample.push(v);
            }
        }
    }
    sample.sort_unstable_by(f32::total_cmp);
}

/// How the buckets are cut before the data is seen: negative groups first, then positive ones,
/// groups of equal bucket counts (within one).
#[derive(Debug)]
struct Layout {
    buckets: usize,
    groups: usize,
    neg_groups: usize,
    /// Buckets holding negative values: `0..neg_buckets`.
    neg_buckets: usize,
    has_pos: bool,
}

impl Layout {
    fn new(nnz: usize, neg: usize, pos: usize, buckets: usize, groups: usize) -> Self {
        let sides = usize::from(neg > 0) + usize::from(pos > 0);
        let buckets = buckets.min(nnz / MIN_PER_BUCKET).min(MAX_BUCKETS).max(sides);
        let groups = groups.min(buckets).max(sides);
        let neg_groups = match (neg > 0, pos > 0) {
            (false, _) => 0,
            (true, false) => groups,
            (true, true) => ((groups as f64 * neg as f64 / nnz as f64).round() as usize).clamp(1, groups - 1),
        };
        let mut layout = Self { buckets, groups, neg_groups, neg_buckets: 0, has_pos: pos > 0 };
        layout.neg_buckets = layout.group_ranges().take(neg_groups).map(|r| r.len()).sum();
        layout
    }

    /// Bucket ranges of the groups, in order.
    fn group_ranges(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        let (each, extra) = (self.buckets / self.groups, self.buckets % self.groups);
        (0..self.groups).scan(0, move |start, g| {
            let len = each + usize::from(g < extra);
            let range = *start..*start + len;
            *start += len;
            Some(range)
        })
    }

    /// Sorted split points: a value's bucket is the number of splits `<=` it. Quantiles of the
    /// negative sample, a 0 between the sides, quantiles of the positive sample; a side without
    /// samples puts all its values in its bucket nearest zero.
    fn splits(&self, sample: &[f32]) -> Vec<f32> {
        let neg_len = sample.partition_point(|&v| v < 0.0);
        let (negs, poss) = sample.split_at(neg_len);
        let mut splits = Vec::with_capacity(self.buckets);
        let quantiles = |side: &[f32], buckets: usize, empty: f32, splits: &mut Vec<f32>| {
            splits.extend((1..buckets).map(|k| if side.is_empty() { empty } else { side[k * side.len() / buckets] }));
        };
        if self.neg_buckets > 0 {
            quantiles(negs, self.neg_buckets, f32::NEG_INFINITY, &mut splits);
            if self.has_pos {
                splits.push(0.0);
            }
        }
        if self.has_pos {
            quantiles(poss, self.buckets - self.neg_buckets, f32::INFINITY, &mut splits);
        }
        splits
    }

    /// Buckets of group `g`, outward from zero.
    fn outward(&self, g: usize, range: Range<usize>) -> impl Iterator<Item = usize> {
        let neg = g < self.neg_groups;
        range.clone().rev().filter(move |_| neg).chain(range.filter(move |_| !neg))
    }

    /// Per bucket: its group << 16 | its rank in the group.
    fn slots(&self) -> Vec<u32> {
        let mut slots = vec![0; self.buckets];
        for (g, range) in self.group_ranges().enumerate() {
            for (rank, b) in self.outward(g, range).enumerate() {
                slots[b] = (g as u32) << 16 | rank as u32;
            }
        }
        slots
    }

    /// Per bucket, the mean of its values. An empty bucket (never decoded: no position holds
    /// it) copies a neighbour, so each group's means keep one sign and grow outward.
    fn means(&self, sums: &[f64], counts: &[u64]) -> Vec<f32> {
        let mut means = vec![0f32; self.buckets];
        for (g, range) in self.group_ranges().enumerate() {
            let mut prev: Option<f32> = None;
            let mut pending = Vec::new();
            for b in self.outward(g, range) {
                if counts[b] == 0 {
                    match prev {
                        Some(p) => means[b] = p,
                        None => pending.push(b),
                    }
                    continue;
                }
                let mut mean = (sums[b] / counts[b] as f64) as f32;
                // Rounding must not break the outward order the decoder checks.
                if let Some(p) = prev
                    && mean.abs() < p.abs()
                {
                    mean = p;
                }
                means[b] = mean;
                for e in pending.drain(..) {
                    means[e] = mean;
                }
                prev = Some(mean);
            }
        }
        means
    }
}

/// Finds a value's bucket: a table on the top 16 bits of the value's order key then a short
/// scan, or a branchless binary search when the table would need long scans.
#[derive(Debug)]
struct Bucketer {
    /// Split keys ([`order_key`]), padded with `u32::MAX` to a power of two minus one (and by
    /// [`LUT_MAX_SCAN`] more for the table's scan).
    keys: Vec<u32>,
    /// Binary search width: a power of two.
    span: usize,
    /// Per top-16-bit key prefix: splits below the prefix. Empty when not used.
    table: Vec<u16>,
    scan: usize,
}

/// Maps `f32` to `u32` so that order is kept (for non-NaN values; -0 sorts below +0).
#[inline(always)]
fn order_key(v: f32) -> u32 {
    let b = v.to_bits();
    if b >> 31 == 1 { !b } else { b | 0x8000_0000 }
}

impl Bucketer {
    fn new(splits: &[f32], n: usize) -> Self {
        let span = (splits.len() + 1).next_power_of_two();
        let mut keys: Vec<u32> = splits.iter().map(|&s| order_key(s)).collect();
        keys.resize(span - 1 + LUT_MAX_SCAN, u32::MAX);
        let mut b = Self { keys, span, table: Vec::new(), scan: 0 };
        // `scan` 0: no table, binary search.
        if n >= LUT_MIN_LEN {
            let mut table = Vec::with_capacity(1 << 16);
            let mut below = 0usize;
            let mut most = 0usize;
            for prefix in 0..1u32 << 16 {
                let start = below;
                while below < splits.len() && b.keys[below] >> 16 < prefix {
                    below += 1;
                }
                if prefix > 0 {
                    most = most.max(below - start);
                }
                table.push(below as u16);
            }
            most = most.max(splits.len() - below);
            if most <= LUT_MAX_SCAN {
                b.table = table;
                b.scan = most.max(1);
            }
        }
        b
    }

    /// Buckets of a run of values (`usize::MAX` for zeros and NaN), one loop per lookup mode so
    /// no mode is tested per value.
    #[inline(always)]
    fn buckets(&self, values: &[f32], out: &mut [usize]) {
        #[inline(always)]
        fn each(values: &[f32], out: &mut [usize], bucket: impl Fn(u32) -> usize) {
            for (b, &v) in out.iter_mut().zip(values) {
                // ±∞ need no clamping here: their keys sort after (before) every split but the
                // `u32::MAX` padding.
                *b = if is_nonzero(v) { bucket(order_key(v)) } else { usize::MAX };
            }
        }
        let (table, keys) = (&self.table[..], &self.keys[..]);
        match self.scan {
            1 => each(values, out, |key| {
                let at = usize::from(table[(key >> 16) as usize]);
                at + usize::from(keys[at] <= key)
            }),
            2 => each(values, out, |key| {
                let at = usize::from(table[(key >> 16) as usize]);
                let at = at + usize::from(keys[at] <= key);
                at + usize::from(keys[at] <= key)
            }),
            _ => each(values, out, |key| self.search(key)),
        }
    }

    /// Branch-free binary search over the split keys.
    #[inline(always)]
    fn search(&self, key: u32) -> usize {
        let mut at = 0usize;
        let mut half = self.span / 2;
        while half > 0 {
            at += usize::from(self.keys[at + half - 1] <= key) * half;
            half /= 2;
        }
        at
    }

    /// Bucket of a nonzero value.
    fn bucket(&self, v: f32) -> usize {
        let mut b = [0];
        self.buckets(&[v], &mut b);
        b[0]
    }
}

/// The Rice parameter minimizing the expected code length of geometric gaps with hit
/// probability `p`.
fn rice_parameter(p: f64) -> u32 {
    if p >= 1.0 || p.is_nan() {
        return 0;
    }
    let ln_miss = (-p).ln_1p();
    let cost = |k: u32| {
        let theta = (ln_miss * f64::from(1u32 << k.min(31)) * 2f64.powi(k.saturating_sub(31) as i32)).exp();
        f64::from(k) + 1.0 + theta / (1.0 - theta)
    };
    (0..=MAX_RICE_K).min_by(|&a, &b| cost(a).total_cmp(&cost(b))).unwrap_or(0)
}

/// The hash of position `pos` for rows `2i` and `2i + 1`, with `seed` the pair's seed.
#[inline(always)]
fn pair_hash(pos: u64, seed: u64) -> u64 {
    let mut s = pos ^ seed;
    splitmix64(&mut s)
}

/// Column of a row of `cols <= 2^32` cells given its pair's hash: even rows scale the high
/// half of the hash, odd rows the low half (32-bit products, which vectorize).
#[inline(always)]
fn column(hash: u64, row: usize, cols: u64) -> u64 {
    let half = if row.is_multiple_of(2) { hash >> 32 } else { hash & 0xffff_ffff };
    (half * cols) >> 32
}

/// Seeds of the row pairs.
fn pair_seeds(rows: u32) -> Vec<u64> {
    (0..u64::from(rows.div_ceil(2)))
        .map(|r| {
            let mut s = HASH_SEED.wrapping_add(r);
            splitmix64(&mut s)
        })
        .collect()
}

/// `a.max(b)` for values below 2^63, in arithmetic: which is larger is data, and LLVM may turn
/// a `max` of loaded values into a branch that mispredicts half the time.
#[inline(always)]
fn max_branchless(a: u64, b: u64) -> u64 {
    let a_smaller = 0u64.wrapping_sub(a.wrapping_sub(b) >> 63);
    a ^ ((a ^ b) & a_smaller)
}

/// Bits a cell needs for ranks `0..buckets`.
fn cell_width(buckets: u64) -> u32 {
    if buckets <= 1 { 0 } else { 64 - (buckets - 1).leading_zeros() }
}

/// Appends bit fields LSB first. Branch-free: every put stores the whole accumulator (8 bytes)
/// and keeps the bytes it completed, so the buffer runs 8 bytes ahead of the bits.
struct Bits {
    buf: Vec<u8>,
    /// Bytes complete.
    done: usize,
    acc: u64,
    /// Bits in `acc`, below 8 between calls.
    len: u32,
}

impl Bits {
    fn with_capacity(bytes: usize) -> Self {
        Self { buf: vec![0; bytes + 8], done: 0, acc: 0, len: 0 }
    }

    /// Makes room for `bits` more bits, so the puts that follow need not check.
    fn reserve(&mut self, bits: usize) {
        let need = self.done + bits.div_ceil(8) + 16;
        if need > self.buf.len() {
            self.buf.resize(need.max(2 * self.buf.len()), 0);
        }
    }

    /// Appends the low `w <= 56` bits of `v` (the rest must be zero). Room must have been
    /// reserved (else it panics).
    #[inline(always)]
    fn put(&mut self, v: u64, w: u32) {
        self.acc |= v << self.len;
        self.len += w;
        self.buf[self.done..self.done + 8].copy_from_slice(&self.acc.to_le_bytes());
        let bytes = self.len / 8;
        self.done += bytes as usize;
        self.acc >>= bytes * 8;
        self.len -= bytes * 8;
    }

    /// Appends `values`, each below 2^w with `w <= 16`, gathering them in a word before each
    /// store. Room must have been reserved.
    #[inline(always)]
    fn put_all(&mut self, values: &[u32], w: u32) {
        let (mut acc, mut len) = (self.acc, self.len);
        for &v in values {
            acc |= u64::from(v) << len;
            len += w;
            if len >= 48 {
                self.buf[self.done..self.done + 8].copy_from_slice(&acc.to_le_bytes());
                self.done += 6;
                acc >>= 48;
                len -= 48;
            }
        }
        self.acc = acc;
        self.len = len;
        // Back to the invariant: fewer than 8 bits pending.
        self.put(0, 0);
    }

    /// Appends the low `w <= 64` bits of `v`.
    #[inline(always)]
    fn put_wide(&mut self, v: u64, w: u32) {
        if w > 32 {
            self.put(v & 0xffff_ffff, 32);
            self.put(v >> 32, w - 32);
        } else {
            self.put(v, w);
        }
    }

    #[inline(always)]
    fn rice(&mut self, v: u64, k: u32) {
        let q = v >> k;
        let low = v & ((1u64 << k) - 1);
        if q < u64::from(ESCAPE) && q + 1 + u64::from(k) <= 56 {
            // The common case in one field: q ones, a zero, k low bits.
            let q = q as u32;
            self.put(low << (q + 1) | ((1u64 << q) - 1), q + 1 + k);
        } else {
            self.rice_long(v, k);
        }
    }

    /// A code longer than 56 bits: at most [`MAX_RICE_BITS`]. Inlined, though rare: a call
    /// would take the writer's address and keep its state out of registers.
    #[inline(always)]
    fn rice_long(&mut self, v: u64, k: u32) {
        let q = v >> k;
        if q < u64::from(ESCAPE) {
            let q = q as u32;
            self.put((1u64 << q) - 1, q + 1);
            self.put_wide(v & ((1u64 << k) - 1), k);
        } else {
            self.put((1u64 << ESCAPE) - 1, ESCAPE);
            let w = 64 - v.leading_zeros();
            self.put(u64::from(w), 7);
            self.put_wide(v, w);
        }
    }

    /// The bytes written, the last one zero-padded.
    fn bytes(&self) -> &[u8] {
        &self.buf[..self.done + self.len.div_ceil(8) as usize]
    }
}

/// Per group, the Rice parameter for its position gaps, from the sample's share of the group
/// (the real counts are known only after the pass that writes the codes).
fn rice_parameters(
    layout: &Layout,
    bucketer: &Bucketer,
    slots: &[u32],
    sample: &[f32],
    n: usize,
    nnz: usize,
) -> Vec<u32> {
    let mut hits = vec![0u64; layout.groups];
    for &v in sample {
        hits[(slots[bucketer.bucket(v)] >> 16) as usize] += 1;
    }
    let scale = nnz as f64 / sample.len().max(1) as f64;
    let mut space = n as f64;
    hits.iter()
        .map(|&h| {
            let members = (h as f64 * scale).max(1.0);
            let k = rice_parameter((members / space.max(members)).min(1.0));
            space -= members;
            k
        })
        .collect()
}

/// Groups whose positions are ranked with packed byte counters.
const FEW_GROUPS: usize = 64;
/// Positions per run of packed counting: a byte lane counts at most this many.
const RUN: usize = 255;

/// Counts positions per group as the scan goes (for few groups): `take(g)` returns how many
/// positions groups `0..g` took so far (to rank the position among those they left) and how
/// many entries group `g` has buffered (where the position goes), then counts it.
trait Ranker {
    fn take(&mut self, g: usize) -> (u64, usize);
    /// Called after every [`RUN`] positions.
    fn end_run(&mut self);
    /// Entries group `g` has buffered.
    fn filled(&self, g: usize) -> usize;
    /// Group `g` wrote a block from its buffer.
    fn drop_block(&mut self, g: usize);
}

/// Byte lanes packed in an integer: lane `g` counts group `g`'s positions in a run.
trait Lanes: Copy + Default + std::ops::Add<Output = Self> + std::ops::Shr<usize, Output = Self> {
    const GROUPS: usize;
    fn one_at(lane: usize) -> Self;
    fn low_byte(self) -> u8;
    /// Lane `g` of the result: the sum of lanes `0..g` (no lane overflows: a run has fewer
    /// than 256 positions).
    fn sums_below(self) -> Self;
}

impl Lanes for u64 {
    const GROUPS: usize = 8;
    fn one_at(lane: usize) -> Self {
        1 << (8 * lane)
    }
    fn low_byte(self) -> u8 {
        self as u8
    }
    fn sums_below(self) -> Self {
        self.wrapping_mul(0x0101_0101_0101_0101) << 8
    }
}

impl Lanes for u128 {
    const GROUPS: usize = 16;
    fn one_at(lane: usize) -> Self {
        1 << (8 * lane)
    }
    fn low_byte(self) -> u8 {
        self as u8
    }
    fn sums_below(self) -> Self {
        self.wrapping_mul(0x0101_0101_0101_0101_0101_0101_0101_0101) << 8
    }
}

/// Few groups: the counts of a run sit in byte lanes of one integer, so counting is one
/// addition, a multiply gives every prefix sum, and nothing is read back from memory.
struct LaneRanker<L: Lanes> {
    lanes: L,
    below_run: [u64; 16],
    filled_run: [usize; 16],
}

impl<L: Lanes> LaneRanker<L> {
    fn new() -> Self {
        Self { lanes: L::default(), below_run: [0; 16], filled_run: [0; 16] }
    }
}

impl<L: Lanes> Ranker for LaneRanker<L> {
    #[inline(always)]
    fn take(&mut self, g: usize) -> (u64, usize) {
        let g = g % L::GROUPS;
        let below = self.below_run[g] + u64::from((self.lanes.sums_below() >> (8 * g)).low_byte());
        let filled = self.filled_run[g] + usize::from((self.lanes >> (8 * g)).low_byte());
        self.lanes = self.lanes + L::one_at(g);
        (below, filled)
    }

    #[inline(always)]
    fn end_run(&mut self) {
        let below = self.lanes.sums_below();
        for g in 0..L::GROUPS {
            self.below_run[g] += u64::from((below >> (8 * g)).low_byte());
            self.filled_run[g] += usize::from((self.lanes >> (8 * g)).low_byte());
        }
        self.lanes = L::default();
    }

    fn filled(&self, g: usize) -> usize {
        self.filled_run[g]
    }

    fn drop_block(&mut self, g: usize) {
        self.filled_run[g] -= BLOCK as usize;
    }
}

/// Up to 64 groups: byte lanes in two levels, a word of 8 lanes per 8 groups and a word of
/// the 8 words' totals; two multiplies give a prefix sum.
struct WideRanker {
    words: [u64; 8],
    totals: u64,
    below_run: [u64; FEW_GROUPS],
    filled_run: [usize; FEW_GROUPS],
}

impl Ranker for WideRanker {
    #[inline(always)]
    fn take(&mut self, g: usize) -> (u64, usize) {
        let (g, w, lane) = (g % FEW_GROUPS, g / 8 % 8, g % 8);
        let below_words = u64::from((self.totals.sums_below() >> (8 * w)) as u8);
        let below_lanes = u64::from((self.words[w].sums_below() >> (8 * lane)) as u8);
        let filled = usize::from((self.words[w] >> (8 * lane)) as u8);
        self.words[w] += 1 << (8 * lane);
        self.totals += 1 << (8 * w);
        (self.below_run[g] + below_words + below_lanes, self.filled_run[g] + filled)
    }

    fn end_run(&mut self) {
        let mut below = 0;
        for g in 0..FEW_GROUPS {
            let count = (self.words[g / 8] >> (8 * (g % 8))) as u8;
            self.below_run[g] += below;
            self.filled_run[g] += usize::from(count);
            below += u64::from(count);
        }
        self.words = [0; 8];
        self.totals = 0;
    }

    fn filled(&self, g: usize) -> usize {
        self.filled_run[g]
    }

    fn drop_block(&mut self, g: usize) {
        self.filled_run[g] -= BLOCK as usize;
    }
}

/// Group elements per sketch block: each block of a group's elements (in position order) has its
/// own MinMaxSketch, so the cells being filled or read stay in L1.
pub(crate) const BLOCK: u64 = 1024;
/// Columns per row of a full block: `cols <= 64` columns per element.
const MAX_BLOCK_COLS: u64 = 64 * BLOCK;
/// Positions a group buffers: a block and a run, rounded up to a power of two.
const BUFFER: usize = 2048;
const _: () = assert!(BLOCK as usize + RUN <= BUFFER);

/// Columns per row of a block of `len` elements, for `block_cols` columns per full block.
#[inline(always)]
fn block_columns(block_cols: u64, len: u64) -> u64 {
    if len == BLOCK {
        block_cols
    } else {
        (u128::from(block_cols) * u128::from(len)).div_ceil(u128::from(BLOCK)) as u64
    }
}

/// One group while encoding: its position stream, and its sketch block by block. The scan only
/// buffers each position with its rank (see [`Scan`]); codes and cells are written a block at a
/// time, in tight loops over one group.
struct GroupCoder {
    positions: Bits,
    k: u32,
    last_rank: u64,
    /// Positions in the group.
    count: u64,
    width: u32,
    block_cols: u64,
    /// Scratch: cell indices of a block, and its cells (see `write_block`).
    cell_index: Vec<u32>,
    cells: Vec<f32>,
    sketch: Bits,
}

impl GroupCoder {
    fn new(k: u32, width: u32, block_cols: u64) -> Self {
        Self {
            positions: Bits::with_capacity(0),
            k,
            last_rank: u64::MAX,
            count: 0,
            width,
            block_cols,
            cell_index: Vec::new(),
            cells: Vec::new(),
            sketch: Bits::with_capacity(0),
        }
    }
}

/// Codes a block of the group's positions and writes its sketch. `entries` holds, per position,
/// the position and then its rank among the positions lower groups left << 16 | its bucket rank.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn write_block(coder: &mut GroupCoder, entries: &[u64], rows: usize, seeds: &[u64]) {
    let len = entries.len() / 2;
    coder.count += len as u64;
    coder.positions.reserve(len * MAX_RICE_BITS);
    // The writer's state in locals: stores into its byte buffer could alias its fields.
    let mut bits = std::mem::replace(&mut coder.positions, Bits::with_capacity(0));
    let (mut last, k) = (coder.last_rank, coder.k);
    for entry in entries.chunks_exact(2) {
        let rank = entry[1] >> 16;
        // The first code is the rank itself: `last_rank` starts at -1.
        bits.rice(rank.wrapping_sub(last).wrapping_sub(1), k);
        last = rank;
    }
    coder.positions = bits;
    coder.last_rank = last;
    if coder.width == 0 {
        return;
    }
    // The MinMaxSketch: each cell keeps the least rank hashed to it. Ranks are `f32` (exact
    // below 2^24) because `minss` is branch-free: an integer `min` before a store becomes a
    // branch (LLVM's cmov conversion), which mispredicts half the time.
    let cols = block_columns(coder.block_cols, len as u64);
    // Cell indices first, in a loop over positions that vectorizes.
    coder.cell_index.clear();
    coder.cell_index.resize(rows * len, 0);
    for (row, index) in coder.cell_index.chunks_exact_mut(len).enumerate() {
        let (seed, base) = (seeds[row / 2], (row as u64 * cols) as u32);
        for (i, entry) in index.iter_mut().zip(entries.chunks_exact(2)) {
            *i = base + column(pair_hash(entry[0], seed), row, cols) as u32;
        }
    }
    coder.cells.clear();
    coder.cells.resize(rows * cols as usize, f32::INFINITY);
    for index in coder.cell_index.chunks_exact(len) {
        for (&i, entry) in index.iter().zip(entries.chunks_exact(2)) {
            let rank = (entry[1] & 0xffff) as f32;
            let cell = &mut coder.cells[i as usize];
            // `minss`, not the NaN-aware `f32::min`: no NaN here.
            *cell = if rank < *cell { rank } else { *cell };
        }
    }
    // Cells no position hashed to are never queried: written as 0. Converted in a loop that
    // vectorizes, then packed.
    coder.cell_index.clear();
    coder.cell_index.extend(coder.cells.iter().map(|&c| if c.is_finite() { c as u32 } else { 0 }));
    coder.sketch.reserve(coder.cells.len() * coder.width as usize);
    let mut bits = std::mem::replace(&mut coder.sketch, Bits::with_capacity(0));
    bits.put_all(&coder.cell_index, coder.width);
    coder.sketch = bits;
}

/// The one pass over the values, run by run: buckets and their sums, then each nonzero
/// position's group and rank, buffered per group (up to [`BUFFER`] entries of two words each,
/// in one flat array so the hot loop reloads no pointers; for up to [`FEW_GROUPS`] groups); a
/// group's full blocks are written after each run.
struct Scan<'a> {
    bucketer: &'a Bucketer,
    slots: &'a [u32],
    sums: &'a mut [f64],
    counts: &'a mut [u64],
    rows: usize,
    seeds: &'a [u64],
}

impl Scan<'_> {
    fn run(&mut self, values: &[f32], groups: &mut [GroupCoder]) {
        if groups.len() <= u64::GROUPS {
            scan_few(self, values, groups);
        } else if groups.len() <= u128::GROUPS {
            scan_sixteen(self, values, groups);
        } else if groups.len() <= FEW_GROUPS {
            scan_wide(self, values, groups);
        } else {
            self.many(values, groups);
        }
    }

    /// More than [`FEW_GROUPS`] groups: ranks from a Fenwick tree of the groups' counts, and a
    /// growing buffer per group, written out when it holds a block. Buffers hold at most a block
    /// each: at most 16 bytes per nonzero value.
    fn many(&mut self, values: &[f32], groups: &mut [GroupCoder]) {
        let mut tree = vec![0u64; groups.len() + 1];
        let mut bufs: Vec<Vec<u64>> = vec![Vec::new(); groups.len()];
        let mut buckets = [usize::MAX; RUN];
        for (run, chunk) in values.chunks(RUN).enumerate() {
            self.bucketer.buckets(chunk, &mut buckets);
            for (i, (&b, &v)) in buckets.iter().zip(chunk).enumerate() {
                if b == usize::MAX {
                    continue;
                }
                self.sums[b] += f64::from(v.clamp(-f32::MAX, f32::MAX));
                self.counts[b] += 1;
                let slot = self.slots[b];
                let g = (slot >> 16) as usize;
                let (mut at, mut below) = (g, 0);
                while at > 0 {
                    below += tree[at];
                    at &= at - 1;
                }
                let mut at = g + 1;
                while at < tree.len() {
                    tree[at] += 1;
                    at += at & at.wrapping_neg();
                }
                let pos = (run * RUN + i) as u64;
                let buf = &mut bufs[g];
                buf.extend([pos, (pos - below) << 16 | u64::from(slot & 0xffff)]);
                if buf.len() == 2 * BLOCK as usize {
                    write_block(&mut groups[g], buf, self.rows, self.seeds);
                    buf.clear();
                }
            }
        }
        for (group, buf) in groups.iter_mut().zip(&bufs) {
            if !buf.is_empty() {
                write_block(group, buf, self.rows, self.seeds);
            }
        }
    }

    #[inline(always)]
    fn with(&mut self, values: &[f32], groups: &mut [GroupCoder], ranker: &mut impl Ranker) {
        // Entries per group: a short vector never fills a block, and gets a short buffer.
        let stride = (values.len() + 1).next_power_of_two().min(BUFFER);
        let mut buf = vec![0u64; groups.len() * stride * 2];
        // Per position of a run: its bucket, or `usize::MAX` for a zero.
        let mut buckets = [usize::MAX; RUN];
        for (run, chunk) in values.chunks(RUN).enumerate() {
            self.bucketer.buckets(chunk, &mut buckets);
            // Sums in a loop of their own: with the bucket indices already loaded, the CPU sees
            // early which updates hit the same entry.
            for (&b, &v) in buckets.iter().zip(chunk) {
                if b != usize::MAX {
                    self.sums[b] += f64::from(v.clamp(-f32::MAX, f32::MAX));
                    self.counts[b] += 1;
                }
            }
            for (i, &b) in buckets[..chunk.len()].iter().enumerate() {
                if b == usize::MAX {
                    continue;
                }
                let slot = self.slots[b];
                let g = (slot >> 16) as usize;
                let pos = (run * RUN + i) as u64;
                let (below, filled) = ranker.take(g);
                // `filled < min(n + 1, BLOCK + RUN) <= stride`: the mask only spares a bounds check.
                let at = 2 * (g * stride + filled % stride);
                buf[at] = pos;
                buf[at + 1] = (pos - below) << 16 | u64::from(slot & 0xffff);
            }
            ranker.end_run();
            for (g, group) in groups.iter_mut().enumerate() {
                let filled = ranker.filled(g);
                if filled >= BLOCK as usize {
                    let entries = &mut buf[2 * g * stride..2 * (g + 1) * stride];
                    write_block(group, &entries[..2 * BLOCK as usize], self.rows, self.seeds);
                    entries.copy_within(2 * BLOCK as usize..2 * filled, 0);
                    ranker.drop_block(g);
                }
            }
        }
        for (g, group) in groups.iter_mut().enumerate() {
            let filled = ranker.filled(g);
            if filled > 0 {
                write_block(group, &buf[2 * g * stride..2 * (g * stride + filled)], self.rows, self.seeds);
            }
        }
    }
}

#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn scan_few<'a>(scan: &mut Scan<'a>, values: &[f32], groups: &mut [GroupCoder]) {
    scan.with(values, groups, &mut LaneRanker::<u64>::new());
}

#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn scan_sixteen<'a>(scan: &mut Scan<'a>, values: &[f32], groups: &mut [GroupCoder]) {
    scan.with(values, groups, &mut LaneRanker::<u128>::new());
}

#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn scan_wide<'a>(scan: &mut Scan<'a>, values: &[f32], groups: &mut [GroupCoder]) {
    let ranker = &mut WideRanker { words: [0; 8], totals: 0, below_run: [0; FEW_GROUPS], filled_run: [0; FEW_GROUPS] };
    scan.with(values, groups, ranker);
}

/// Writes the body after `rows`: group headers, position streams, sketches. Empty groups are
/// left out (they took no position, so no other group's ranks change); when no position is zero
/// the last group's stream is left out too.
fn write_body(
    layout: &Layout,
    means: &[f32],
    counts: &[u64],
    groups: Vec<GroupCoder>,
    no_zeros: bool,
    out: &mut Vec<u8>,
) {
    let sent: Vec<(usize, Range<usize>, GroupCoder)> = layout
        .group_ranges()
        .zip(groups)
        .enumerate()
        .filter(|(_, (_, group))| group.count > 0)
        .map(|(g, (range, group))| (g, range, group))
        .collect();
    format::put_varint(out, sent.len() as u64);
    let streams: Vec<&[u8]> = sent
        .iter()
        .enumerate()
        .map(|(i, (_, _, group))| if no_zeros && i + 1 == sent.len() { &[][..] } else { group.positions.bytes() })
        .collect();
    for ((g, range, group), stream) in sent.iter().zip(&streams) {
        format::put_varint(out, range.len() as u64);
        format::put_varint(out, group.count);
        format::put_varint(out, group.block_cols);
        out.push(group.k as u8);
        format::put_varint(out, stream.len() as u64);
        for b in layout.outward(*g, range.clone()) {
            out.extend_from_slice(&means[b].to_le_bytes());
        }
        debug_assert_eq!(range.clone().map(|b| counts[b]).sum::<u64>(), group.count);
    }
    for stream in &streams {
        out.extend_from_slice(stream);
    }
    for (_, _, group) in &sent {
        if group.width > 0 {
            out.extend_from_slice(group.sketch.bytes());
        }
    }
}

fn invalid(what: &'static str, why: impl Into<String>) -> CodecError {
    CodecError::Invalid { what, why: why.into() }
}

/// Reads Rice codes written by [`Bits::rice`].
struct RiceReader<'a> {
    buf: &'a [u8],
    next: usize,
    acc: u64,
    /// Valid bits in `acc` (bits above may already hold the following bytes).
    have: u32,
}

impl<'a> RiceReader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, next: 0, acc: 0, have: 0 }
    }

    /// Tops `acc` up to at least 56 valid bits, or to the end of the stream.
    #[inline(always)]
    fn refill(&mut self) {
        if let Some(word) = self.buf.get(self.next..self.next + 8) {
            // Whole bytes that fit; the bits of the next byte that land above them are the same
            // bits the next refill ORs in again.
            self.acc |= u64::from_le_bytes(word.try_into().expect("8 bytes")) << self.have;
            let take = (63 - self.have) / 8;
            self.next += take as usize;
            self.have += take * 8;
        } else {
            while self.have <= 55 && self.next < self.buf.len() {
                self.acc |= u64::from(self.buf[self.next]) << self.have;
                self.next += 1;
                self.have += 8;
            }
        }
    }

    /// The next `w <= 56` bits.
    #[inline(always)]
    fn bits(&mut self, w: u32) -> Result<u64, CodecError> {
        if self.have < w {
            self.refill();
            if self.have < w {
                return Err(self.truncated());
            }
        }
        let v = self.acc & ((1u64 << w) - 1);
        self.acc >>= w;
        self.have -= w;
        Ok(v)
    }

    #[inline(always)]
    fn rice(&mut self, k: u32) -> Result<u64, CodecError> {
        self.refill();
        let ones = self.acc.trailing_ones();
        if ones >= ESCAPE {
            if self.have < ESCAPE {
                return Err(self.truncated());
            }
            self.acc >>= ESCAPE;
            self.have -= ESCAPE;
            let w = self.bits(7)? as u32;
            return match w {
                0..=32 => self.bits(w),
                33..=64 => Ok(self.bits(32)? | self.bits(w - 32)? << 32),
                _ => Err(invalid("sketchml position stream", format!("escaped value of {w} bits"))),
            };
        }
        if ones + 1 > self.have {
            return Err(self.truncated());
        }
        self.acc >>= ones + 1;
        self.have -= ones + 1;
        Ok(u64::from(ones) << k | self.bits(k)?)
    }

    fn truncated(&self) -> CodecError {
        invalid("sketchml position stream", format!("ends inside a code ({} bytes)", self.buf.len()))
    }

    /// Errors unless the codes used every byte and the padding bits are zero.
    fn finish(&self) -> Result<(), CodecError> {
        let used = self.next as u64 * 8 - u64::from(self.have);
        if used.div_ceil(8) != self.buf.len() as u64 {
            return Err(invalid(
                "sketchml position stream",
                format!("{} bytes hold {} bits of codes", self.buf.len(), used),
            ));
        }
        if !used.is_multiple_of(8) && self.buf[self.buf.len() - 1] >> (used % 8) != 0 {
            return Err(invalid("sketchml position stream", "padding bits are set"));
        }
        Ok(())
    }
}

/// A target no position reaches: the group has no positions left.
const NONE: i64 = i64::MAX / 4;

/// The groups' next positions, in a tournament tree. A position taken by group `g` pushes every
/// later group's pending position up by one (their ranks skip it), so the tree keeps lazy
/// additions: `add[i]` applies to every leaf under node `i`, `best[i]` is the least leaf value
/// under `i` counting the additions below `i` but not `i`'s own.
struct Schedule {
    leaves: usize,
    best: Vec<i64>,
    add: Vec<i64>,
}

impl Schedule {
    fn new(targets: &[i64]) -> Self {
        let leaves = targets.len().next_power_of_two();
        let mut best = vec![NONE; 2 * leaves];
        best[leaves..leaves + targets.len()].copy_from_slice(targets);
        for i in (1..leaves).rev() {
            best[i] = best[2 * i].min(best[2 * i + 1]);
        }
        Self { leaves, best, add: vec![0; 2 * leaves] }
    }

    #[inline(always)]
    fn value(&self, i: usize) -> i64 {
        self.best[i] + self.add[i]
    }

    /// The group whose next position comes first (the lowest group on ties) and that position,
    /// or a position `>= NONE` when every group is done.
    #[inline]
    fn first(&self) -> (usize, i64) {
        let (mut i, mut above) = (1, 0);
        while i < self.leaves {
            above += self.add[i];
            // Branch-free: which child wins is data, not a pattern a predictor learns.
            i = 2 * i + usize::from(self.value(2 * i + 1) < self.value(2 * i));
        }
        (i - self.leaves, above + self.value(i))
    }

    /// Group `g` took its pending position: later groups move up by one, `g` waits for `next`.
    #[inline]
    fn advance(&mut self, g: usize, next: i64) {
        let leaf = self.leaves + g;
        let (mut i, mut above) = (leaf, 0);
        while i > 1 {
            // A left child's right sibling covers later groups only; a right child adds 0 to itself.
            self.add[i | 1] += i64::from(i % 2 == 0);
            i /= 2;
            above += self.add[i];
        }
        self.add[leaf] = 0;
        self.best[leaf] = if next >= NONE { NONE } else { next - above };
        let mut i = leaf / 2;
        while i >= 1 {
            self.best[i] = self.value(2 * i).min(self.value(2 * i + 1));
            i /= 2;
        }
    }
}

/// One wire group while decoding.
struct GroupDec<'a> {
    buckets: u64,
    count: u64,
    block_cols: u64,
    k: u32,
    width: u32,
    means: &'a [u8],
    stream: RiceReader<'a>,
    sketch: &'a [u8],
    /// Elements decoded so far.
    seen: u64,
    /// The current sketch block: elements left in it, its columns, its first bit.
    block_left: u64,
    cols: u64,
    base: u64,
}

impl GroupDec<'_> {
    /// Cells of the group's sketch for `rows` rows.
    fn cells(&self, rows: u64) -> u128 {
        let full = u128::from(self.count / BLOCK) * u128::from(self.block_cols);
        u128::from(rows) * (full + u128::from(block_columns(self.block_cols, self.count % BLOCK)))
    }

    /// The value of the group's next element, at position `pos`: the mean of the rank furthest
    /// from zero in the position's cells. Cells were checked to hold ranks below `buckets`.
    #[inline(always)]
    fn take(&mut self, pos: u64, rows: usize, seeds: &[u64]) -> f32 {
        let mut rank = 0;
        if self.width > 0 {
            if self.block_left == 0 {
                self.next_block(rows);
            }
            self.block_left -= 1;
            let width = u64::from(self.width);
            for (pair, &seed) in seeds.iter().enumerate() {
                let hash = pair_hash(pos, seed);
                for row in 2 * pair..(2 * pair + 2).min(rows) {
                    let cell = row as u64 * self.cols + column(hash, row, self.cols);
                    rank = max_branchless(rank, cell_at(self.sketch, self.base + cell * width, self.width));
                }
            }
        }
        self.seen += 1;
        let at = rank as usize * 4;
        self.means.get(at..at + 4).map_or(0.0, |b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    /// Moves to the sketch block of element `seen`. Saturating: a corrupt payload can hand the
    /// implied group more positions than its count before the walk finds out and errors.
    #[cold]
    fn next_block(&mut self, rows: usize) {
        let block = self.seen / BLOCK;
        self.block_left = self.count.saturating_sub(block * BLOCK).clamp(1, BLOCK);
        self.cols = block_columns(self.block_cols, self.block_left);
        self.base = block * rows as u64 * self.block_cols * u64::from(self.width);
    }
}

/// The `width <= 16` bits at bit offset `bit` of `sketch`.
#[inline(always)]
fn cell_at(sketch: &[u8], bit: u64, width: u32) -> u64 {
    let at = (bit / 8) as usize;
    let word = match sketch.get(at..at + 4) {
        Some(b) => u32::from_le_bytes(b.try_into().expect("4 bytes")),
        None => {
            let tail = sketch.get(at..).unwrap_or(&[]);
            let mut b = [0u8; 4];
            b[..tail.len()].copy_from_slice(tail);
            u32::from_le_bytes(b)
        }
    };
    (u64::from(word) >> (bit % 8)) & ((1 << width) - 1)
}

fn check_means(means: &[u8], g: usize) -> Result<(), CodecError> {
    let mut prev: Option<f32> = None;
    for (rank, b) in means.chunks_exact(4).enumerate() {
        let m = f32::from_le_bytes(b.try_into().expect("4 bytes"));
        let why = if !m.is_finite() || m == 0.0 {
            format!("group {g} rank {rank} is {m}")
        } else if let Some(p) = prev
            && ((p < 0.0) != (m < 0.0) || m.abs() < p.abs())
        {
            format!("group {g} rank {rank} is {m} after {p}: ranks must keep one sign and move away from zero")
        } else {
            prev = Some(m);
            continue;
        };
        return Err(invalid("sketchml bucket mean", why));
    }
    Ok(())
}

/// Errors if a cell of a group of `buckets` ranks holds a rank `>= buckets`.
fn check_cells(sketch: &[u8], cells: u64, width: u32, buckets: u64, g: usize) -> Result<(), CodecError> {
    if width == 0 || buckets == 1 << width {
        return Ok(());
    }
    let mut bits = crate::keys::BitReader::new(sketch);
    for cell in 0..cells {
        let rank = bits.get(width);
        if rank >= buckets {
            return Err(invalid(
                "sketchml sketch cell",
                format!("group {g} cell {cell} holds rank {rank} of {buckets}"),
            ));
        }
    }
    Ok(())
}

pub(crate) fn decode<S: Sink>(r: &mut Reader<'_>, out: &mut [f32], sink: S) -> Result<(), CodecError> {
    let mut body = parse(r, out.len() as u64)?;
    sink.clear(out);
    if body.groups.is_empty() {
        return Ok(());
    }
    walk(&mut body.groups, body.coded, body.rows, out, sink)
}

/// A checked body: its groups, how many of them have a position stream, and the hash rows.
struct Body<'a> {
    groups: Vec<GroupDec<'a>>,
    coded: usize,
    rows: u32,
}

/// Reads and checks everything but the position streams' codes (checked as they are walked).
fn parse<'a>(r: &mut Reader<'a>, n: u64) -> Result<Body<'a>, CodecError> {
    let rows = r.u8("sketchml rows")?;
    if rows == 0 || rows > MAX_ROWS {
        return Err(invalid("sketchml rows", format!("{rows}, not in 1..={MAX_ROWS}")));
    }
    let g_count = r.count("sketchml groups", MIN_GROUP_HEADER_BITS)?;
    let mut groups = Vec::with_capacity(g_count);
    let mut lens = Vec::with_capacity(g_count);
    let mut total = 0u64;
    for g in 0..g_count {
        let buckets = r.varint("sketchml group buckets")?;
        if buckets == 0 || buckets > MAX_GROUP_BUCKETS {
            return Err(invalid(
                "sketchml group buckets",
                format!("group {g} has {buckets}, not 1..={MAX_GROUP_BUCKETS}"),
            ));
        }
        let count = r.varint("sketchml group count")?;
        total = match total.checked_add(count) {
            Some(t) if count > 0 && t <= n => t,
            _ => {
                return Err(invalid(
                    "sketchml group count",
                    format!("group {g}: {count} more positions, {total} of {n} taken"),
                ));
            }
        };
        let block_cols = r.varint("sketchml sketch columns")?;
        if buckets > 1 && !(1..=MAX_BLOCK_COLS).contains(&block_cols) {
            return Err(invalid(
                "sketchml sketch columns",
                format!("group {g}: {block_cols}, not 1..={MAX_BLOCK_COLS}"),
            ));
        }
        let k = u32::from(r.u8("sketchml rice parameter")?);
        if k > MAX_RICE_K {
            return Err(invalid("sketchml rice parameter", format!("{k} > {MAX_RICE_K}")));
        }
        lens.push(r.varint("sketchml position stream length")?);
        let means = r.bytes(buckets as usize * 4, "sketchml bucket means")?;
        check_means(means, g)?;
        let width = cell_width(buckets);
        let stream = RiceReader::new(&[]);
        let (seen, block_left, cols, base) = (0, 0, 0, 0);
        groups.push(GroupDec {
            buckets,
            count,
            block_cols,
            k,
            width,
            means,
            stream,
            sketch: &[],
            seen,
            block_left,
            cols,
            base,
        });
    }
    let implied_last = g_count > 0 && total == n;
    let coded = if implied_last { g_count - 1 } else { g_count };
    for (g, (group, &len)) in groups.iter_mut().zip(&lens).enumerate() {
        if g >= coded && len != 0 {
            return Err(invalid(
                "sketchml position stream",
                "the last group's positions are the ones left; its stream is empty",
            ));
        }
        if g < coded && group.count > len.saturating_mul(8) {
            return Err(invalid(
                "sketchml position stream",
                format!("group {g}: {} positions in {len} bytes", group.count),
            ));
        }
        let len = usize::try_from(len).map_err(|_| invalid("sketchml position stream", "longer than memory"))?;
        group.stream = RiceReader::new(r.bytes(len, "sketchml position stream")?);
    }
    for (g, group) in groups.iter_mut().enumerate() {
        let cells = group.cells(u64::from(rows));
        let bytes = (cells * u128::from(group.width)).div_ceil(8);
        if group.width > 0 {
            if bytes > r.remaining() as u128 {
                let need = usize::try_from(bytes).unwrap_or(usize::MAX);
                return Err(CodecError::Truncated { what: "sketchml sketch", need, have: r.remaining() });
            }
            group.sketch = r.bytes(bytes as usize, "sketchml sketch")?;
            check_cells(group.sketch, cells as u64, group.width, group.buckets, g)?;
        }
    }
    r.finish("sketchml")?;
    Ok(Body { groups, coded, rows: u32::from(rows) })
}

/// Decodes the positions of all groups in order and writes each position's value.
fn walk<S: Sink>(
    groups: &mut [GroupDec<'_>],
    coded: usize,
    rows: u32,
    out: &mut [f32],
    sink: S,
) -> Result<(), CodecError> {
    match coded {
        0..=8 => walk_lanes::<8, S>(groups, coded, rows, out, sink),
        9..=16 => walk_lanes::<16, S>(groups, coded, rows, out, sink),
        _ => walk_tree(groups, coded, rows, out, sink),
    }
}

/// Positions labelled at a time by [`walk_lanes`].
const CHUNK: usize = 4096;
/// Labels of positions no coded group takes.
const LABEL_ZERO: u8 = u8::MAX;
const LABEL_IMPLIED: u8 = u8::MAX - 1;

/// The coded groups' progress through their position streams, for at most `N` groups, in arrays
/// every step reads and writes whole (so they can stay in vector registers). `pending[g]`:
/// positions group `g`'s space still holds before its next position; a position goes to the
/// lowest group with nothing pending, and counts against the space of every lower group.
/// `upcoming[g]`: the code after that, decoded ahead so the step does not wait for it.
struct Walkers<const N: usize> {
    pending: [i64; N],
    upcoming: [i64; N],
    read: [u64; N],
}

impl<const N: usize> Walkers<N> {
    /// Reads the next code of group `g` (clamped to `n`: a larger one is refused when it comes
    /// due), or `NONE` when its stream is done.
    #[inline(always)]
    fn read(&mut self, g: usize, group: &mut GroupDec<'_>, n: u64) -> Result<i64, CodecError> {
        if self.read[g] == group.count {
            return Ok(NONE);
        }
        self.read[g] += 1;
        let code = group.stream.rice(group.k)?.min(n) as i64;
        if self.read[g] == group.count {
            group.stream.finish()?;
        }
        Ok(code)
    }
}

/// Labels positions `start..start + labels.len()` with the group that takes each one.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn label_chunk<'a, const N: usize>(
    lanes: &mut Walkers<N>,
    groups: &mut [GroupDec<'a>],
    labels: &mut [u8],
    rest: u8,
    n: u64,
) -> Result<(), CodecError> {
    let mut i = 0;
    while i < labels.len() {
        let ready = lanes.pending.iter().enumerate().fold(0u32, |r, (g, &p)| r | u32::from(p == 0) << g);
        if ready == 0 {
            // No group takes position `i`: a run of zeros or of the implied group.
            let skip = lanes.pending.iter().copied().fold(NONE, i64::min);
            let run = (skip as u64).min((labels.len() - i) as u64) as usize;
            labels[i..i + run].fill(rest);
            lanes.pending.iter_mut().for_each(|p| *p -= run as i64);
            i += run;
            continue;
        }
        let g = ready.trailing_zeros() as usize;
        labels[i] = g as u8;
        // Lane `g` selected by masks, not by index: indexing makes the compiler branch on `g`.
        let is_g: [i64; N] = std::array::from_fn(|h| -i64::from(h == g));
        let following = lanes.upcoming.iter().zip(&is_g).fold(0, |acc, (&u, &m)| acc | (u & m));
        for ((h, p), &m) in lanes.pending.iter_mut().enumerate().zip(&is_g) {
            *p = (following & m) | ((*p - i64::from(h < g)) & !m);
        }
        let decoded = lanes.read(g, &mut groups[g], n)?;
        for (u, &m) in lanes.upcoming.iter_mut().zip(&is_g) {
            *u = (decoded & m) | (*u & !m);
        }
        i += 1;
    }
    Ok(())
}

/// [`walk`] for at most `N` coded groups: labels a chunk of positions with their groups, then
/// writes the chunk's values.
fn walk_lanes<const N: usize, S: Sink>(
    groups: &mut [GroupDec<'_>],
    coded: usize,
    rows: u32,
    out: &mut [f32],
    sink: S,
) -> Result<(), CodecError> {
    let n = out.len() as u64;
    let seeds = pair_seeds(rows);
    let rows = rows as usize;
    let (coded_groups, implied) = groups.split_at_mut(coded);
    let mut implied = implied.first_mut();
    let mut lanes = Walkers { pending: [NONE; N], upcoming: [NONE; N], read: [0; N] };
    for (g, group) in coded_groups.iter_mut().enumerate() {
        lanes.pending[g] = lanes.read(g, group, n)?;
        lanes.upcoming[g] = lanes.read(g, group, n)?;
    }
    let rest = if implied.is_some() { LABEL_IMPLIED } else { LABEL_ZERO };
    let mut labels = [LABEL_ZERO; CHUNK];
    for (chunk, dsts) in out.chunks_mut(CHUNK).enumerate() {
        let labels = &mut labels[..dsts.len()];
        label_chunk(&mut lanes, coded_groups, labels, rest, n)?;
        let start = (chunk * CHUNK) as u64;
        for ((pos, &label), dst) in (start..).zip(labels.iter()).zip(dsts) {
            match label {
                LABEL_ZERO => {}
                LABEL_IMPLIED => {
                    if let Some(last) = implied.as_mut() {
                        sink.put(dst, last.take(pos, rows, &seeds));
                    }
                }
                g => sink.put(dst, coded_groups[usize::from(g)].take(pos, rows, &seeds)),
            }
        }
    }
    if lanes.pending.iter().any(|&p| p < NONE / 2) {
        return Err(invalid("sketchml position stream", format!("a position beyond the {n} elements")));
    }
    Ok(())
}

/// [`walk`] for many groups: their next positions in a tournament tree.
fn walk_tree<S: Sink>(
    groups: &mut [GroupDec<'_>],
    coded: usize,
    rows: u32,
    out: &mut [f32],
    sink: S,
) -> Result<(), CodecError> {
    let n = out.len() as u64;
    let seeds = pair_seeds(rows);
    let rows = rows as usize;
    let mut targets = Vec::with_capacity(coded);
    for group in &mut groups[..coded] {
        targets.push(group.stream.rice(group.k)?.min(n) as i64);
    }
    let mut schedule = Schedule::new(&targets);
    let (coded_groups, implied) = groups.split_at_mut(coded);
    let mut implied = implied.first_mut();
    let mut next = 0u64;
    loop {
        let (g, at) = schedule.first();
        let done = at >= NONE;
        let end = if done { n } else { at as u64 };
        if !done && end >= n {
            return Err(invalid(
                "sketchml position stream",
                format!("group {g} has a position beyond the {n} elements"),
            ));
        }
        if let Some(last) = implied.as_mut() {
            for (pos, dst) in (next..end).zip(&mut out[next as usize..end as usize]) {
                sink.put(dst, last.take(pos, rows, &seeds));
            }
        }
        if done {
            return Ok(());
        }
        let group = &mut coded_groups[g];
        sink.put(&mut out[end as usize], group.take(end, rows, &seeds));
        let following = if group.seen == group.count {
            group.stream.finish()?;
            NONE
        } else {
            (end + 1).saturating_add(group.stream.rice(group.k)?).min(n) as i64
        };
        schedule.advance(g, following);
        next = end + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CodecSpec, Pipeline, decode_add, decode_sparse};
    use proptest::prelude::*;

    /// Bound on the relative L2 error against the bucket means at the default parameters (256
    /// buckets, 8 groups, 2 rows, 0.3 columns a value) on a normal gradient: measured 0.25.
    const DEFAULT_SKETCH_ERROR: f64 = 0.28;

    /// `n` standard-normal values from a fixed seed (Box-Muller).
    fn normal(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = Xoshiro256pp::new(seed);
        let mut unit = move || (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        (0..n)
            .map(|_| {
                let (u1, u2) = (1.0 - unit(), unit());
                ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
            })
            .collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Relative L2 distance of `a` from `b`.
    fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
        let (mut num, mut den) = (0f64, 0f64);
        for (x, y) in a.iter().zip(b) {
            num += (f64::from(*x) - f64::from(*y)).powi(2);
            den += f64::from(*y).powi(2);
        }
        if den == 0.0 { 0.0 } else { (num / den).sqrt() }
    }

    /// Encodes, decodes, and returns (payload, decoded, each value's own bucket mean).
    fn run(codec: &mut SketchMl, values: &[f32]) -> (Vec<u8>, Vec<f32>, Vec<f32>) {
        let mut payload = Vec::new();
        codec.encode(values, &mut payload);
        let decoded = crate::decode(&payload, values.len()).expect("own payload decodes");
        (payload, decoded, codec.bucket_means(values))
    }

    /// Sorted keys, each of `0..space` kept with probability `k / space`.
    fn sparse_keys(k: usize, space: u64, seed: u64) -> Vec<u64> {
        let mut rng = Xoshiro256pp::new(seed);
        let p = ((k as f64 / space as f64) * 2f64.powi(64)) as u64;
        (0..space).filter(|_| rng.next_u64() < p).collect()
    }

    /// Gradients with zeros, scales from 1e-6 to 1e3, runs of repeats and the odd ±∞ or NaN.
    fn gradient(max_len: usize) -> impl Strategy<Value = Vec<f32>> {
        let value = prop_oneof![
            3 => Just(0.0f32),
            6 => (-1f32..1.0, -6i32..3).prop_map(|(m, e)| m * 10f32.powi(e)),
            1 => Just(0.125f32),
            1 => prop_oneof![Just(f32::INFINITY), Just(f32::NEG_INFINITY), Just(f32::NAN), Just(-0.0f32)],
        ];
        proptest::collection::vec(value, 0..max_len)
    }

    /// (buckets, groups, rows, cols) over the spec's ranges, groups up to past the
    /// 8- and 16-group walks.
    fn params() -> impl Strategy<Value = (u32, u32, u32, f64)> {
        (2u32..600, 1u32..=100, 1u32..=8, prop_oneof![0.01f64..1.0, 1.0f64..8.0])
            .prop_map(|(b, g, r, c)| (b, g.min(b), r, c))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn decoded_values_are_bucket_means_pulled_toward_zero(values in gradient(6000), (b, g, r, c) in params()) {
            let mut codec = SketchMl::new(b, g, r, c);
            let (_, decoded, own) = run(&mut codec, &values);
            let means: std::collections::HashSet<u32> =
                codec.last.as_ref().map_or(Vec::new(), |(_, m)| bits(m)).into_iter().collect();
            for (i, ((&v, &d), &m)) in values.iter().zip(&decoded).zip(&own).enumerate() {
                if !is_nonzero(v) {
                    prop_assert_eq!(d.to_bits(), 0, "element {} ({}) decoded to {}", i, v, d);
                    continue;
                }
                prop_assert!(means.contains(&d.to_bits()), "element {i}: {d} is no bucket's mean");
                prop_assert!(d != 0.0 && (d < 0.0) == (m < 0.0), "element {i}: {d} against its bucket's {m}");
                prop_assert!(d.abs() <= m.abs(), "element {i}: {d} amplifies its bucket's mean {m}");
                prop_assert!(m.is_finite() && (m < 0.0) == (v < 0.0), "element {i}: {v} in a bucket of mean {m}");
            }
        }

        #[test]
        fn one_bucket_groups_decode_exactly_to_the_bucket_means(values in gradient(3000), b in 2u32..300) {
            let (_, decoded, own) = run(&mut SketchMl::new(b, b, 2, 0.3), &values);
            prop_assert_eq!(bits(&decoded), bits(&own));
        }

        #[test]
        fn both_walks_decode_alike(values in gradient(4000), (b, g, r, c) in params()) {
            let mut payload = Vec::new();
            SketchMl::new(b, g.min(16), r, c).encode(&values, &mut payload);
            let header = 2 + format::varint_len(values.len() as u64);
            let mut outs = [vec![0f32; values.len()], vec![0f32; values.len()]];
            for (walker, out) in outs.iter_mut().enumerate() {
                let mut body = parse(&mut Reader::new(&payload[header..]), values.len() as u64).unwrap();
                if !body.groups.is_empty() {
                    let result = if walker == 0 {
                        walk_lanes::<16, _>(&mut body.groups, body.coded, body.rows, out, format::Set)
                    } else {
                        walk_tree(&mut body.groups, body.coded, body.rows, out, format::Set)
                    };
                    prop_assert!(result.is_ok());
                }
            }
            prop_assert_eq!(bits(&outs[0]), bits(&outs[1]));
        }

        #[test]
        fn decode_add_adds_the_decoded_values(values in gradient(2000), scale in -2f32..2.0, base in -1f32..1.0) {
            let mut payload = Vec::new();
            SketchMl::new(64, 4, 2, 0.5).encode(&values, &mut payload);
            let decoded = crate::decode(&payload, values.len()).unwrap();
            let mut acc = vec![base; values.len()];
            decode_add(&payload, scale, &mut acc).unwrap();
            for (a, d) in acc.iter().zip(&decoded) {
                prop_assert_eq!(a.to_bits(), (base + scale * d).to_bits());
            }
        }

        #[test]
        fn random_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..300), n in 0usize..3000) {
            let mut payload = Vec::new();
            format::put_header(&mut payload, id::SKETCHML, n);
            payload.extend_from_slice(&body);
            let _ = crate::decode(&payload, n);
            let _ = decode_add(&payload, 0.5, &mut vec![1.0; n]);
            // A random element count too.
            let _ = crate::decode(&[&[id::SKETCHML, format::VERSION][..], &body].concat(), 5000);
        }

        #[test]
        fn mutated_payloads_never_panic(
            values in gradient(3000),
            (b, g, r, c) in params(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..6),
        ) {
            let mut payload = Vec::new();
            SketchMl::new(b, g, r, c).encode(&values, &mut payload);
            // The codec id stays: another id hands the bytes to another codec's decoder.
            for (at, byte, kind) in edits {
                if payload.len() < 2 {
                    break;
                }
                let i = 1 + at.index(payload.len() - 1);
                match kind {
                    0 => payload[i] = byte,
                    1 => payload[i] ^= 1 << (byte % 8),
                    2 => payload.truncate(i),
                    _ => payload.insert(i, byte),
                }
            }
            if let Ok(decoded) = crate::decode(&payload, values.len() + 10) {
                prop_assert!(decoded.iter().all(|d| !d.is_nan()));
            }
            let _ = decode_add(&payload, 1.0, &mut vec![0.0; values.len()]);
        }

        #[test]
        fn sparse_payloads_keep_their_keys(
            keys in proptest::collection::btree_set(any::<u64>(), 0..500),
            dim in 1usize..4,
            seed in any::<u64>(),
        ) {
            let keys: Vec<u64> = keys.into_iter().collect();
            let rows = normal(keys.len() * dim, seed);
            let spec = CodecSpec::SketchMl { buckets: 256, groups: 8, rows: 2, cols: 0.3 };
            let mut payload = Vec::new();
            Pipeline::new(&spec).encode_sparse(&keys, dim, &rows, &mut payload).unwrap();
            let sparse = decode_sparse(&payload, rows.len()).unwrap();
            prop_assert_eq!(&sparse.keys, &keys);
            prop_assert_eq!(sparse.dim, dim);
            let mut direct = Vec::new();
            Pipeline::new(&spec).encode(&rows, &mut direct);
            prop_assert_eq!(sparse.rows, crate::decode(&direct, rows.len()).unwrap());
        }

        #[test]
        fn rice_codes_round_trip(
            codes in proptest::collection::vec((any::<u64>(), 0u32..64, 0u32..=MAX_RICE_K), 0..200),
        ) {
            let mut bits = Bits::with_capacity(0);
            for &(v, shift, k) in &codes {
                bits.reserve(MAX_RICE_BITS);
                bits.rice(v >> shift, k);
            }
            let bytes = bits.bytes().to_vec();
            let mut reader = RiceReader::new(&bytes);
            for &(v, shift, k) in &codes {
                prop_assert_eq!(reader.rice(k).unwrap(), v >> shift);
            }
            prop_assert!(reader.finish().is_ok());
            let mut longer = bytes.clone();
            longer.push(0);
            let mut reader = RiceReader::new(&longer);
            for &(_, _, k) in &codes {
                reader.rice(k).unwrap();
            }
            prop_assert!(reader.finish().is_err(), "a byte left over is refused");
        }

        #[test]
        fn buckets_match_a_sorted_search(
            splits in proptest::collection::vec(prop_oneof![-1e3f32..1e3, 0.999f32..1.001, (-1000i32..1000).prop_map(|i| i as f32 * 1e-33)], 0..300),
            values in proptest::collection::vec(
                prop_oneof![-1e4f32..1e4, 0.998f32..1.002, Just(f32::MAX), Just(f32::INFINITY), Just(f32::NEG_INFINITY)],
                1..300,
            ),
        ) {
            let mut splits = splits;
            splits.sort_by(f32::total_cmp);
            for n in [0, LUT_MIN_LEN] {
                let bucketer = Bucketer::new(&splits, n);
                let mut got = vec![0; values.len()];
                bucketer.buckets(&values, &mut got);
                for (&v, &b) in values.iter().zip(&got) {
                    let want = if is_nonzero(v) { splits.partition_point(|&s| s <= v) } else { usize::MAX };
                    prop_assert_eq!(b, want, "value {} with table {}", v, n > 0);
                }
            }
        }
    }

    #[test]
    fn a_wide_sketch_is_nearly_collision_free() {
        let values = normal(100_000, 5);
        let (_, decoded, own) = run(&mut SketchMl::new(256, 8, 2, 8.0), &values);
        let exact = decoded.iter().zip(&own).filter(|(d, m)| d == m).count();
        assert!(exact * 100 > values.len() * 99, "{exact} of {} exact", values.len());
        let error = rel_l2(&decoded, &own);
        assert!(error < 0.03, "error against the bucket means {error}");
        // The sketch's error falls with the columns.
        let (_, narrow, own) = run(&mut SketchMl::new(256, 8, 2, 1.0), &values);
        assert!(rel_l2(&narrow, &own) > 2.0 * error);
    }

    #[test]
    fn default_error_against_the_bucket_means_is_within_its_bound() {
        for seed in 0..4 {
            let values = normal(100_000, seed);
            let d = crate::spec::defaults::SKETCH_COLS;
            let mut codec = SketchMl::new(256, 8, 2, d);
            let (payload, decoded, own) = run(&mut codec, &values);
            let error = rel_l2(&decoded, &own);
            assert!(error < DEFAULT_SKETCH_ERROR, "seed {seed}: {error} against the bucket means");
            // Quantization alone is much closer to the input than the sketch is to quantization.
            assert!(rel_l2(&own, &values) < 0.05);
            // 6.05 bits a value: positions ~3.05, sketch 3.
            assert!(payload.len() * 8 < values.len() * 62 / 10, "{} bytes", payload.len());
        }
    }

    #[test]
    fn quantile_buckets_hold_equal_counts() {
        // 4 · SAMPLE values: the splits come from a sample.
        let values = normal(4 * SAMPLE, 9);
        let mut codec = SketchMl::new(64, 64, 2, 0.3);
        let (_, decoded, _) = run(&mut codec, &values);
        let mut counts = std::collections::HashMap::new();
        for d in &decoded {
            *counts.entry(d.to_bits()).or_insert(0usize) += 1;
        }
        assert_eq!(counts.len(), 64);
        let expected = values.len() / 64;
        for (&mean, &count) in &counts {
            let deviation = (count as f64 - expected as f64).abs() / expected as f64;
            // sqrt(64 / SAMPLE) = 2.2%: five sigma.
            assert!(deviation < 0.11, "bucket of mean {} holds {count}, expected {expected}", f32::from_bits(mean));
        }
    }

    #[test]
    fn escaped_gaps_round_trip() {
        // A dense head then a far tail: the tail's gap exceeds 32 · 2^k and is escaped.
        let mut values = vec![0f32; 2_000_000];
        for (i, v) in values.iter_mut().enumerate().take(3000) {
            *v = if i % 2 == 0 { 1.0 + i as f32 } else { -(1.0 + i as f32) };
        }
        values[1_999_999] = 5.0;
        let (_, decoded, own) = run(&mut SketchMl::new(4, 4, 2, 4.0), &values);
        for (i, (d, v)) in decoded.iter().zip(&values).enumerate() {
            assert_eq!(*d == 0.0, *v == 0.0, "element {i}");
        }
        assert!(rel_l2(&decoded, &own) < 0.5);
    }

    #[test]
    fn all_zero_and_empty_vectors() {
        for n in [0, 1, 100] {
            let (payload, decoded, _) = run(&mut SketchMl::new(256, 8, 2, 0.3), &vec![0.0; n]);
            assert_eq!(payload.len(), 2 + format::varint_len(n as u64) + 2, "rows and a zero group count");
            assert!(decoded.iter().all(|d| d.to_bits() == 0));
        }
    }

    /// `[0, 2, 0, -1]`: two one-bucket groups (no sketch), both lists sent (positions 0 and 2
    /// are zero).
    const GOLDEN: [u8; 27] = [
        id::SKETCHML,
        1,
        4, // header: 4 elements
        2,
        2, // rows, groups
        1,
        1,
        0xb4,
        0x02,
        1,
        1,
        0x00,
        0x00,
        0x80,
        0xbf, // 1 bucket, 1 position, 308 columns, k 1, 1 byte, mean -1
        1,
        1,
        0xb4,
        0x02,
        1,
        1,
        0x00,
        0x00,
        0x00,
        0x40,  // mean 2
        0b101, // group 0: position 3, v = 3: one 1, a 0, low bit 1
        0b10,  // group 1: rank of position 1 among zeros and group >= 1: v = 1: a 0, low bit 1
    ];

    #[test]
    fn the_format_is_pinned() {
        let mut payload = Vec::new();
        SketchMl::new(256, 8, 2, 0.3).encode(&[0.0, 2.0, 0.0, -1.0], &mut payload);
        assert_eq!(payload, GOLDEN);
        assert_eq!(crate::decode(&GOLDEN, 4).unwrap(), [0.0, 2.0, 0.0, -1.0]);
        // The hash is part of the format too (values checked against an independent
        // implementation of the documented formula).
        let seeds = pair_seeds(2);
        assert_eq!(seeds, [0xcd40_e8ce_618f_2f80]);
        let hash = pair_hash(12345, seeds[0]);
        assert_eq!(hash, 0x59e6_2538_fdb8_56c4);
        assert_eq!([column(hash, 0, 1000), column(hash, 1, 1000)], [351, 991]);
    }

    #[test]
    fn impossible_fields_are_refused() {
        let refuse = |edit: &dyn Fn(&mut Vec<u8>), what: &str| {
            let mut payload = GOLDEN.to_vec();
            edit(&mut payload);
            let err = crate::decode(&payload, 4).unwrap_err();
            assert!(err.to_string().contains(what), "{what}: {err}");
        };
        refuse(&|p| p[3] = 0, "rows");
        refuse(&|p| p[3] = 9, "rows");
        refuse(&|p| p[5] = 0, "buckets");
        refuse(&|p| p[6] = 4, "group count");
        refuse(&|p| p[9] = 57, "rice parameter");
        refuse(&|p| p[13..15].copy_from_slice(&[0xc0, 0xff]), "bucket mean"); // -1 becomes NaN
        refuse(&|p| p[24] = 0x00, "bucket mean"); // 2 becomes 0
        refuse(&|p| p[25] = 0b10111, "beyond"); // v = 7: position 7 of 4
        refuse(&|p| p[26] = 0b110, "padding"); // a bit set after the last code
        refuse(&|p| p[20] = 0, "position stream"); // group 1's code has no byte
        refuse(&|p| p.push(0), "after the end");
        refuse(&|p| p.truncate(26), "truncated");
        // The last group's list must be empty when the counts cover every position.
        let mut payload = Vec::new();
        SketchMl::new(256, 8, 2, 0.3).encode(&[1.0, -1.0], &mut payload);
        let decoded = crate::decode(&payload, 2).unwrap();
        assert_eq!(decoded, [1.0, -1.0]);
    }

    #[test]
    fn cells_beyond_their_group_are_refused() {
        // Three buckets in one group: 2-bit cells, rank 3 impossible.
        let values: Vec<f32> = (1..=48).map(|i| i as f32).collect();
        let mut payload = Vec::new();
        SketchMl::new(3, 1, 1, 1.0).encode(&values, &mut payload);
        let sketch_at = payload.len() - 1;
        payload[sketch_at] |= 0b11 << 6;
        let err = crate::decode(&payload, values.len()).unwrap_err();
        assert!(err.to_string().contains("sketch cell"), "{err}");
    }

    #[test]
    #[ignore = "prints the cols / groups trade-off table; run with --release --ignored --nocapture"]
    fn tradeoff_table() {
        let dense = normal(1 << 20, 7);
        let keys = sparse_keys(1 << 20, 10 << 20, 3);
        let keys100 = sparse_keys(1 << 20, 100 << 20, 4);
        let sparse_vals = normal(keys.len(), 9);
        let sparse100_vals = normal(keys100.len(), 10);
        println!(
            "buckets groups rows cols | dense bits/val ratio | err vs means | err vs input | \
             sparse10 ratio | sparse100 ratio"
        );
        let configs: &[(u32, u32, u32, f64)] = &[
            (256, 8, 2, 0.3),
            (256, 8, 2, 1.0),
            (256, 8, 2, 2.0),
            (256, 8, 2, 4.0),
            (256, 8, 2, 8.0),
            (256, 8, 1, 8.0),
            (256, 8, 4, 2.0),
            (256, 32, 2, 0.3),
            (256, 32, 2, 1.0),
            (256, 64, 2, 0.3),
            (256, 64, 2, 1.0),
            (256, 128, 2, 0.3),
            (256, 128, 2, 1.0),
            (256, 128, 2, 2.0),
            (256, 256, 2, 0.3),
            (128, 128, 2, 0.3),
            (128, 64, 2, 1.0),
            (128, 64, 2, 2.0),
            (64, 64, 2, 0.3),
            (64, 32, 2, 2.0),
            (64, 8, 2, 0.3),
            (32, 32, 2, 0.3),
        ];
        for &(b, g, rows, cols) in configs {
            let mut codec = SketchMl::new(b, g, rows, cols);
            let (payload, decoded, means) = run(&mut codec, &dense);
            let bits = payload.len() as f64 * 8.0 / dense.len() as f64;
            let ratio = |keys: &[u64], vals: &[f32]| {
                let spec = CodecSpec::SketchMl { buckets: b, groups: g, rows, cols };
                let mut out = Vec::new();
                Pipeline::new(&spec).encode_sparse(keys, 1, vals, &mut out).unwrap();
                (keys.len() * 12) as f64 / out.len() as f64
            };
            println!(
                "{b:4} {g:4} {rows} {cols:4} | {bits:5.2} {:5.2}x | {:6.2}% | {:6.2}% | {:5.2}x | {:5.2}x",
                32.0 / bits,
                100.0 * rel_l2(&decoded, &means),
                100.0 * rel_l2(&decoded, &dense),
                ratio(&keys, &sparse_vals),
                ratio(&keys100, &sparse100_vals),
            );
        }
    }
}
