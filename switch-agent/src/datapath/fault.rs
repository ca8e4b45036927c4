//! Seeded fault injection on the send side of any [`BatchSocket`] (STYLE habit 9: a wrapper with a
//! seed, never a flag inside the transport).
//!
//! Each datagram passed to [`BatchSocket::send_batch`] is, independently:
//! 1. dropped with probability `drop`; otherwise
//! 2. sent twice, back to back, with probability `duplicate`; otherwise
//! 3. held back with probability `reorder` and sent after the datagrams of the *next*
//!    `send_batch` call, or at the start of the next `recv_batch` if that comes first, so a
//!    reordered datagram is late but never lost.
//!
//! So the expected number of duplicates among `n` datagrams is `n (1 - drop) duplicate`, and of
//! reordered ones `n (1 - drop) (1 - duplicate) reorder`. Every datagram takes exactly three draws
//! from a splitmix64 generator, whatever the probabilities: the same seed and the same sequence of
//! calls make the same decisions (no draws at all when there are no faults). Each endpoint wraps
//! its own socket, which covers both directions. Received datagrams pass through untouched.

use std::fmt;
use std::io;
use std::mem;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use super::{BatchSocket, DatapathKind, RecvBatch, SendBatch};

/// Fault probabilities, each in `[0, 1]`.
///
/// Parses from and prints as `drop=0.05,dup=0.01,reorder=0.02` (any subset of the keys, in any
/// order; `none` or an empty string for no faults). Values outside `[0, 1]` are rejected by
/// [`Faults::new`], [`Faults::validate`] and `FromStr`; a value built by hand that skips them acts
/// as if clamped to `[0, 1]` (NaN as 0).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// Probability that a datagram is not sent.
    pub drop: f64,
    /// Probability that a datagram that is not dropped is sent twice.
    pub duplicate: f64,
    /// Probability that a datagram neither dropped nor duplicated is sent late.
    pub reorder: f64,
}

impl Faults {
    /// No faults.
    pub const NONE: Self = Self { drop: 0.0, duplicate: 0.0, reorder: 0.0 };

    /// Faults with these probabilities, or an error naming the first one outside `[0, 1]`.
    pub fn new(drop: f64, duplicate: f64, reorder: f64) -> Result<Self, FaultsError> {
        let faults = Self { drop, duplicate, reorder };
        faults.validate()?;
        Ok(faults)
    }

    /// Checks that every probability is in `[0, 1]` (NaN is not).
    pub fn validate(&self) -> Result<(), FaultsError> {
        for (key, value) in [("drop", self.drop), ("dup", self.duplicate), ("reorder", self.reorder)] {
            if !(0.0..=1.0).contains(&value) {
                return Err(FaultsError::OutOfRange { key, value });
            }
        }
        Ok(())
    }

    /// Whether no fault can happen.
    pub fn is_none(&self) -> bool {
        !(self.drop > 0.0 || self.duplicate > 0.0 || self.reorder > 0.0)
    }
}

impl fmt::Display for Faults {
    /// Only the non-zero keys; `none` when there are none.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (key, value) in [("drop", self.drop), ("dup", self.duplicate), ("reorder", self.reorder)] {
            if value != 0.0 {
                write!(f, "{}{key}={value}", if first { "" } else { "," })?;
                first = false;
            }
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

impl FromStr for Faults {
    type Err = FaultsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut faults = Self::NONE;
        let s = s.trim();
        if s.is_empty() || s == "none" {
            return Ok(faults);
        }
        let mut seen = [false; 3];
        for item in s.split(',').map(str::trim) {
            let Some((key, value)) = item.split_once('=') else {
                return Err(FaultsError::Syntax { item: item.to_owned() });
            };
            let (key, value) = (key.trim(), value.trim());
            let (index, field) = match key {
                "drop" => (0, &mut faults.drop),
                "dup" | "duplicate" => (1, &mut faults.duplicate),
                "reorder" => (2, &mut faults.reorder),
                _ => return Err(FaultsError::UnknownKey { key: key.to_owned() }),
            };
            if mem::replace(&mut seen[index], true) {
                return Err(FaultsError::Repeated { key: key.to_owned() });
            }
            *field =
                value.parse().map_err(|_| FaultsError::NotANumber { key: key.to_owned(), value: value.to_owned() })?;
        }
        faults.validate()?;
        Ok(faults)
    }
}

/// Why a [`Faults`] value was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum FaultsError {
    /// A key other than `drop`, `dup` (or `duplicate`) and `reorder`.
    #[error("unknown fault `{key}` (expected keys: drop, dup, reorder)")]
    UnknownKey {
        /// The key as written.
        key: String,
    },
    /// An item that is not `key=value`.
    #[error("`{item}` is not key=value (expected e.g. drop=0.05,dup=0.01,reorder=0.02; keys: drop, dup, reorder)")]
    Syntax {
        /// The item as written.
        item: String,
    },
    /// A value that does not parse as a number.
    #[error("{key}=`{value}` is not a number")]
    NotANumber {
        /// The key.
        key: String,
        /// The value as written.
        value: String,
    },
    /// A probability outside `[0, 1]`.
    #[error("{key}={value} is not a probability in [0, 1]")]
    OutOfRange {
        /// The key (`drop`, `dup` or `reorder`).
        key: &'static str,
        /// The value given.
        value: f64,
    },
    /// A key given twice.
    #[error("fault `{key}` given twice")]
    Repeated {
        /// The key as written the second time.
        key: String,
    },
}

/// What a [`FaultInjector`] has done so far.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct FaultStats {
    /// Datagrams not sent.
    pub dropped: u64,
    /// Datagrams sent twice.
    pub duplicated: u64,
    /// Datagrams held back and sent late.
    pub reordered: u64,
}

/// splitmix64 (Steele, Lea, Flood 2014): tiny, seedable, good enough to decide faults.
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True with probability `p` (clamped to `[0, 1]`; NaN never).
    fn chance(&mut self, p: f64) -> bool {
        // 53 random bits as a float in [0, 1).
        let x = (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        x < p
    }
}

/// A [`BatchSocket`] that drops, duplicates and reorders the datagrams it sends, with a seeded RNG.
///
/// Each datagram passed to [`BatchSocket::send_batch`] is, independently:
/// 1. dropped with probability `drop`; otherwise
/// 2. sent twice, back to back, with probability `duplicate`; otherwise
/// 3. held back with probability `reorder` and sent after the datagrams of the *next*
///    `send_batch` call, or at the start of the next `recv_batch` if that comes first (or by
///    [`Self::flush`]), so a reordered datagram is late but never lost.
///
/// Every datagram takes three draws from a splitmix64 generator seeded with `seed` (none when
/// [`Faults::is_none`]), so the same seed and the same sequence of calls make the same decisions.
/// Received datagrams pass through untouched; wrap each endpoint's socket to cover both directions.
/// Datagrams still held when the injector is dropped are lost.
#[derive(Debug)]
pub struct FaultInjector<S> {
    inner: S,
    faults: Faults,
    rng: SplitMix64,
    stats: FaultStats,
    /// Datagrams held back by the last `send_batch`.
    held: Vec<(Vec<u8>, SocketAddr)>,
    /// Reused batch for what actually goes to `inner`.
    out: Option<SendBatch>,
}

impl<S: BatchSocket> FaultInjector<S> {
    /// Wraps `inner`; `seed` makes the decisions reproducible.
    pub fn new(inner: S, faults: Faults, seed: u64) -> Self {
        Self { inner, faults, rng: SplitMix64(seed), stats: FaultStats::default(), held: Vec::new(), out: None }
    }

    /// Sends the datagrams held back for reordering now.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.held.is_empty() {
            return Ok(());
        }
        let max = self.held.iter().map(|(d, _)| d.len()).max().unwrap_or(0);
        let mut out = self.take_out(self.held.len(), max);
        let r = self.send_held(&mut out);
        self.out = Some(out);
        r
    }

    /// What has been injected so far.
    pub fn stats(&self) -> FaultStats {
        self.stats
    }

    /// The faults being injected.
    pub fn faults(&self) -> Faults {
        self.faults
    }

    /// The wrapped socket.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// A cleared staging batch of at least `capacity` datagrams of `max_datagram` bytes.
    fn take_out(&mut self, capacity: usize, max_datagram: usize) -> SendBatch {
        match self.out.take() {
            Some(mut out) if out.max_datagram() >= max_datagram => {
                out.clear();
                out
            }
            _ => SendBatch::new(capacity.max(1), max_datagram.max(1)),
        }
    }

    /// Queues one datagram on `out`, sending `out` first when it is full.
    fn stage(&mut self, out: &mut SendBatch, data: &[u8], to: SocketAddr) -> io::Result<()> {
        if out.is_full() {
            self.inner.send_batch(out)?;
        }
        out.push(data, to);
        Ok(())
    }

    /// Stages and sends every held datagram.
    fn send_held(&mut self, out: &mut SendBatch) -> io::Result<()> {
        for (data, to) in mem::take(&mut self.held) {
            self.stage(out, &data, to)?;
        }
        if !out.is_empty() {
            self.inner.send_batch(out)?;
        }
        Ok(())
    }

    fn send_faulty(&mut self, batch: &SendBatch, out: &mut SendBatch) -> io::Result<()> {
        let late = mem::take(&mut self.held);
        for (data, to) in batch.iter() {
            // Always three draws per datagram, so one probability does not shift the others' decisions.
            let (drop, duplicate, reorder) = (
                self.rng.chance(self.faults.drop),
                self.rng.chance(self.faults.duplicate),
                self.rng.chance(self.faults.reorder),
            );
            if drop {
                self.stats.dropped += 1;
            } else if duplicate {
                self.stats.duplicated += 1;
                self.stage(out, data, to)?;
                self.stage(out, data, to)?;
            } else if reorder {
                self.stats.reordered += 1;
                self.held.push((data.to_vec(), to));
            } else {
                self.stage(out, data, to)?;
            }
        }
        let newly_held = mem::replace(&mut self.held, late);
        let r = self.send_held(out);
        self.held = newly_held;
        r
    }
}

impl<S: BatchSocket> BatchSocket for FaultInjector<S> {
    /// Sends the datagrams held back for reordering, then receives from the wrapped socket.
    fn recv_batch(&mut self, batch: &mut RecvBatch, timeout: Option<Duration>) -> io::Result<usize> {
        self.flush()?;
        self.inner.recv_batch(batch, timeout)
    }

    fn recv_each(
        &mut self,
        batch: &mut RecvBatch,
        timeout: Option<Duration>,
        each: &mut dyn FnMut(&[u8], SocketAddr),
    ) -> io::Result<usize> {
        self.flush()?;
        self.inner.recv_each(batch, timeout, each)
    }

    fn send_batch(&mut self, batch: &mut SendBatch) -> io::Result<()> {
        if self.faults.is_none() && self.held.is_empty() {
            return self.inner.send_batch(batch);
        }
        let max = self.held.iter().map(|(d, _)| d.len()).fold(batch.max_datagram(), usize::max);
        let mut out = self.take_out(batch.capacity(), max);
        let r = self.send_faulty(batch, &mut out);
        self.out = Some(out);
        batch.clear();
        r
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn kind(&self) -> DatapathKind {
        self.inner.kind()
    }

    fn send_errors(&self) -> u64 {
        self.inner.send_errors()
    }

    fn offloads(&self) -> super::Offloads {
        self.inner.offloads()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::super::{DatapathChoice, open};
    use super::*;

    /// Records what is sent; never receives anything.
    #[derive(Default)]
    struct Fake {
        sent: Vec<(Vec<u8>, SocketAddr)>,
        calls: usize,
    }

    impl BatchSocket for Fake {
        fn recv_batch(&mut self, batch: &mut RecvBatch, _: Option<Duration>) -> io::Result<usize> {
            batch.reset();
            Ok(0)
        }

        fn send_batch(&mut self, batch: &mut SendBatch) -> io::Result<()> {
            self.calls += 1;
            self.sent.extend(batch.iter().map(|(d, to)| (d.to_vec(), to)));
            batch.clear();
            Ok(())
        }

        fn local_addr(&self) -> io::Result<SocketAddr> {
            Ok((Ipv4Addr::LOCALHOST, 1).into())
        }

        fn kind(&self) -> DatapathKind {
            DatapathKind::Plain
        }

        fn send_errors(&self) -> u64 {
            0
        }
    }

    fn to() -> SocketAddr {
        (Ipv4Addr::LOCALHOST, 9).into()
    }

    /// Sends datagrams `0..n` (each its index as 4 bytes) in batches of `per_batch`, then calls
    /// `recv_batch` once to release held ones. Returns the indices in the order the fake saw them.
    fn run(faults: Faults, seed: u64, n: u32, per_batch: usize) -> (Vec<u32>, FaultStats) {
        let mut f = FaultInjector::new(Fake::default(), faults, seed);
        let mut batch = SendBatch::new(per_batch, 16);
        for i in 0..n {
            batch.push(&i.to_le_bytes(), to());
            if batch.is_full() || i + 1 == n {
                f.send_batch(&mut batch).unwrap();
                assert!(batch.is_empty(), "send_batch clears the batch");
            }
        }
        let mut rb = RecvBatch::new(4, 16);
        assert_eq!(f.recv_batch(&mut rb, Some(Duration::ZERO)).unwrap(), 0);
        assert!(f.held.is_empty(), "recv_batch releases every held datagram");
        let seen = f.inner.sent.iter().map(|(d, _)| u32::from_le_bytes(d[..4].try_into().unwrap())).collect();
        (seen, f.stats())
    }

    #[test]
    fn drop_all_sends_nothing() {
        let (seen, stats) = run(Faults::new(1.0, 0.0, 0.0).unwrap(), 1, 500, 32);
        assert!(seen.is_empty());
        assert_eq!(stats, FaultStats { dropped: 500, duplicated: 0, reordered: 0 });
    }

    #[test]
    fn duplicate_all_sends_each_twice_back_to_back() {
        let (seen, stats) = run(Faults::new(0.0, 1.0, 0.0).unwrap(), 2, 300, 64);
        let want: Vec<u32> = (0..300).flat_map(|i| [i, i]).collect();
        assert_eq!(seen, want);
        assert_eq!(stats.duplicated, 300);
    }

    #[test]
    fn reorder_loses_nothing_and_changes_order() {
        let faults = Faults::new(0.0, 0.0, 0.2).unwrap();
        let (seen, stats) = run(faults, 3, 1000, 10);
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>(), "every datagram arrives exactly once");
        assert_ne!(seen, sorted, "some datagram is out of order");
        assert!(stats.reordered > 100 && stats.reordered < 300, "{stats:?}");
    }

    #[test]
    fn no_faults_passes_through_in_order() {
        let (seen, stats) = run(Faults::NONE, 4, 100, 7);
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        assert_eq!(stats, FaultStats::default());
    }

    #[test]
    fn counts_match_probabilities_over_10k() {
        let (drop, dup, reorder) = (0.1, 0.05, 0.08);
        let n = 10_000u32;
        let (seen, stats) = run(Faults::new(drop, dup, reorder).unwrap(), 5, n, 64);
        let n = f64::from(n);
        // Loose bounds: +-5 standard deviations of a binomial.
        let near = |got: u64, p: f64, trials: f64| {
            let (mean, sd) = (trials * p, (trials * p * (1.0 - p)).sqrt());
            (got as f64 - mean).abs() <= 5.0 * sd
        };
        assert!(near(stats.dropped, drop, n), "dropped {} of {n} at p={drop}", stats.dropped);
        assert!(near(stats.duplicated, dup, n * (1.0 - drop)), "duplicated {}", stats.duplicated);
        let reorder_trials = n * (1.0 - drop) * (1.0 - dup);
        assert!(near(stats.reordered, reorder, reorder_trials), "reordered {}", stats.reordered);
        assert_eq!(seen.len() as u64, 10_000 - stats.dropped + stats.duplicated);
    }

    #[test]
    fn same_seed_same_decisions() {
        let faults = Faults::new(0.1, 0.1, 0.1).unwrap();
        let a = run(faults, 42, 2000, 16);
        assert_eq!(a, run(faults, 42, 2000, 16));
        assert_ne!(a.0, run(faults, 43, 2000, 16).0, "another seed decides differently");
    }

    #[test]
    fn parse_and_display_round_trip() {
        let f: Faults = "drop=0.05,dup=0.01,reorder=0.02".parse().unwrap();
        assert_eq!(f, Faults { drop: 0.05, duplicate: 0.01, reorder: 0.02 });
        assert_eq!(f.to_string(), "drop=0.05,dup=0.01,reorder=0.02");
        assert_eq!(f.to_string().parse::<Faults>().unwrap(), f);
        let g: Faults = " reorder = 0.5 ".parse().unwrap();
        assert_eq!(g, Faults { reorder: 0.5, ..Faults::NONE });
        assert_eq!(g.to_string(), "reorder=0.5");
        assert_eq!("none".parse::<Faults>().unwrap(), Faults::NONE);
        assert_eq!("".parse::<Faults>().unwrap(), Faults::NONE);
        assert_eq!(Faults::NONE.to_string(), "none");
        assert!(Faults::NONE.is_none() && !f.is_none());
    }

    #[test]
    fn parse_errors_name_the_problem() {
        let err = "loss=0.1".parse::<Faults>().unwrap_err();
        assert_eq!(err, FaultsError::UnknownKey { key: "loss".into() });
        assert!(err.to_string().contains("drop, dup, reorder"), "{err}");
        assert!(matches!("drop".parse::<Faults>(), Err(FaultsError::Syntax { .. })));
        assert!(matches!("drop=x".parse::<Faults>(), Err(FaultsError::NotANumber { .. })));
        assert!(matches!("drop=0.1,drop=0.2".parse::<Faults>(), Err(FaultsError::Repeated { .. })));
        assert_eq!("dup=1.5".parse::<Faults>(), Err(FaultsError::OutOfRange { key: "dup", value: 1.5 }));
        assert!(Faults::new(-0.1, 0.0, 0.0).is_err());
        assert!(Faults::new(0.0, 0.0, f64::NAN).is_err());
        assert!(Faults::new(0.0, 1.0, 1.0).is_ok());
    }

    /// The same over the kernel: drop=1 delivers nothing, duplicate=1 delivers everything twice.
    #[test]
    fn over_loopback_drop_all_and_duplicate_all() {
        let local = (Ipv4Addr::LOCALHOST, 0).into();
        let mut rx = open(local, DatapathChoice::Auto, 16, 64).unwrap();
        let dst = rx.local_addr().unwrap();
        let mut rb = RecvBatch::new(16, 64);
        for (faults, copies) in [(Faults::new(1.0, 0.0, 0.0).unwrap(), 0), (Faults::new(0.0, 1.0, 0.0).unwrap(), 2)] {
            let mut tx = FaultInjector::new(open(local, DatapathChoice::Auto, 16, 64).unwrap(), faults, 7);
            let mut batch = SendBatch::new(16, 64);
            for i in 0..10u8 {
                batch.push(&[i; 20], dst);
            }
            tx.send_batch(&mut batch).unwrap();
            let mut counts = [0usize; 10];
            // Wait for the expected count, then a little longer to catch extras.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                let want_more = counts.iter().sum::<usize>() < 10 * copies;
                let wait = if want_more { Duration::from_millis(100) } else { Duration::from_millis(30) };
                if rx.recv_batch(&mut rb, Some(wait)).unwrap() == 0 && !want_more {
                    break;
                }
                for (d, from) in rb.iter() {
                    assert_eq!(from, tx.local_addr().unwrap());
                    counts[usize::from(d[0])] += 1;
                }
            }
            assert_eq!(counts, [copies; 10], "faults {faults}");
        }
    }
}
