//! Training data partitioning: which samples each worker trains on, in which order.
//!
//! | scheme | worker `r` of `n` gets | disjoint |
//! |---|---|---|
//! | `contiguous` | samples `[r·S/n, (r+1)·S/n)` | yes |
//! | `round-robin` | samples `r, r+n, r+2n, ...` | yes |
//! | `random` | a contiguous share of one seeded permutation of all samples | yes |
//! | `overlap` | every sample, in its own seeded order (a reshuffled copy of the whole set) | no |
//!
//! With reshuffling, each epoch draws new orders: `random` a new permutation (so shares change,
//! disjoint within the epoch), `overlap` a new order per worker, and the disjoint fixed schemes a
//! new order within the worker's share. Everything is a pure function of (seed, epoch, rank), so
//! every worker computes its own share without talking to anyone.

use std::fmt;
use std::str::FromStr;

use crate::rng::SplitMix64;

/// How samples are spread over workers.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum DataPartition {
    /// Contiguous, disjoint shares.
    #[default]
    Contiguous,
    /// Every n-th sample, disjoint.
    RoundRobin,
    /// Contiguous shares of a seeded permutation, disjoint.
    Random,
    /// Every worker gets every sample, in its own seeded order.
    Overlap,
}

impl fmt::Display for DataPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Contiguous => "contiguous",
            Self::RoundRobin => "round-robin",
            Self::Random => "random",
            Self::Overlap => "overlap",
        })
    }
}

impl FromStr for DataPartition {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "contiguous" => Ok(Self::Contiguous),
            "round-robin" => Ok(Self::RoundRobin),
            "random" => Ok(Self::Random),
            "overlap" => Ok(Self::Overlap),
            other => Err(format!(
                "unknown data partitioning '{other}' (expected contiguous, round-robin, random or overlap)"
            )),
        }
    }
}

serde_as_string!(DataPartition);

/// Stream tag, so partition orders never share random numbers with data or weights.
const ORDER_STREAM: u64 = 0x6f72_6465_7200_0001;

/// The sample indices worker `rank` of `workers` trains on in `epoch`, in training order.
pub fn share(
    scheme: DataPartition,
    samples: u64,
    rank: u32,
    workers: u32,
    seed: u64,
    epoch: u64,
    reshuffle: bool,
) -> Vec<u64> {
    let (r, n) = (u64::from(rank), u64::from(workers));
    let cut = |i: u64| ((u128::from(samples) * u128::from(i)) / u128::from(n)) as u64;
    // Order draws depend on the epoch only when reshuffling.
    let round = if reshuffle { epoch } else { 0 };
    match scheme {
        DataPartition::Contiguous | DataPartition::RoundRobin => {
            let mut mine: Vec<u64> = match scheme {
                DataPartition::Contiguous => (cut(r)..cut(r + 1)).collect(),
                _ => (r..samples).step_by(workers as usize).collect(),
            };
            if reshuffle {
                shuffle(&mut mine, seed ^ ORDER_STREAM, round.wrapping_mul(n).wrapping_add(r));
            }
            mine
        }
        DataPartition::Random => {
            let mut all: Vec<u64> = (0..samples).collect();
            shuffle(&mut all, seed ^ ORDER_STREAM, round.wrapping_mul(n).wrapping_add(n));
            all[cut(r) as usize..cut(r + 1) as usize].to_vec()
        }
        DataPartition::Overlap => {
            let mut all: Vec<u64> = (0..samples).collect();
            shuffle(&mut all, seed ^ ORDER_STREAM ^ 0x0f, round.wrapping_mul(n).wrapping_add(r));
            all
        }
    }
}

/// Fisher-Yates with a generator for stream `seed`, item `item`.
fn shuffle(v: &mut [u64], seed: u64, item: u64) {
    let mut rng = SplitMix64::for_item(seed, item);
    for i in (1..v.len()).rev() {
        let j = ((u128::from(rng.next_u64()) * (i as u128 + 1)) >> 64) as usize;
        v.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [DataPartition; 4] =
        [DataPartition::Contiguous, DataPartition::RoundRobin, DataPartition::Random, DataPartition::Overlap];

    #[test]
    fn names_round_trip() {
        for p in ALL {
            assert_eq!(p.to_string().parse(), Ok(p));
        }
        assert!("striped".parse::<DataPartition>().unwrap_err().contains("expected contiguous"));
    }

    #[test]
    fn the_fixed_schemes_are_what_they_say() {
        assert_eq!(share(DataPartition::Contiguous, 10, 1, 3, 7, 0, false), [3, 4, 5]);
        assert_eq!(share(DataPartition::RoundRobin, 10, 1, 3, 7, 0, false), [1, 4, 7]);
    }

    proptest! {
        #[test]
        fn disjoint_schemes_cover_every_sample_once(
            samples in 0u64..300,
            workers in 1u32..9,
            seed in any::<u64>(),
            epoch in 0u64..4,
            reshuffle in any::<bool>(),
            scheme in prop::sample::select(vec![DataPartition::Contiguous, DataPartition::RoundRobin, DataPartition::Random]),
        ) {
            let mut seen = vec![0u32; samples as usize];
            let mut sizes = Vec::new();
            for r in 0..workers {
                let mine = share(scheme, samples, r, workers, seed, epoch, reshuffle);
                sizes.push(mine.len());
                for s in mine {
                    seen[s as usize] += 1;
                }
            }
            prop_assert!(seen.iter().all(|c| *c == 1), "{scheme} misses or repeats a sample");
            prop_assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1, "balanced: {sizes:?}");
        }

        #[test]
        // At least 20 samples: two independent orders of fewer could coincide by chance.
        fn overlap_gives_everyone_everything_in_its_own_order(samples in 20u64..200, seed in any::<u64>()) {
            let a = share(DataPartition::Overlap, samples, 0, 3, seed, 0, false);
            let b = share(DataPartition::Overlap, samples, 1, 3, seed, 0, false);
            let mut sorted = a.clone();
            sorted.sort_unstable();
            prop_assert_eq!(sorted, (0..samples).collect::<Vec<_>>());
            prop_assert!(a != b, "each worker its own order");
        }

        #[test]
        fn reshuffling_changes_the_order_between_epochs_and_only_then(samples in 40u64..200, seed in any::<u64>()) {
            for scheme in ALL {
                let e0 = share(scheme, samples, 0, 2, seed, 0, true);
                let e1 = share(scheme, samples, 0, 2, seed, 1, true);
                prop_assert_ne!(&e0, &e1, "{} did not reshuffle", scheme);
                prop_assert_eq!(
                    share(scheme, samples, 0, 2, seed, 0, false),
                    share(scheme, samples, 0, 2, seed, 5, false),
                    "{} changed without reshuffling", scheme
                );
            }
        }
    }
}
