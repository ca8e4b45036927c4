//! Key → server routing: which server holds which rows of which table.
//!
//! Every table is placed by a [`Partitioning`] scheme over the table's key space `[0, rows)`:
//! contiguous ranges balanced by rows (the default; a range request stays one range per server),
//! or a hash of the key (spreads hot contiguous keys; a range request becomes "the keys of this
//! range you hold" on every server). All routing goes through one [`KeyDirectory`], so that a
//! later placement that moves or replicates rows only changes the directory, not its callers.
//!
//! Refuses: IO and clocks; it is plain arithmetic over the job's table specs.

use std::fmt;

/// A half-open key range `[start, end)`.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub struct KeyRange {
    start: u64,
    end: u64,
}

/// A key range with `start > end`.
#[derive(Clone, Copy, Debug, Eq, PartialEq, thiserror::Error)]
#[error("key range [{start}, {end}) is inverted")]
pub struct InvertedRange {
    /// First key.
    pub start: u64,
    /// One past the last key.
    pub end: u64,
}

impl KeyRange {
    /// `[start, end)`; fails if `start > end`.
    pub fn new(start: u64, end: u64) -> Result<Self, InvertedRange> {
        if start > end {
            return Err(InvertedRange { start, end });
        }
        Ok(Self { start, end })
    }

    /// First key.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// One past the last key.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Number of keys.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the range holds no key.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Whether `key` is in the range.
    pub fn contains(&self, key: u64) -> bool {
        self.start <= key && key < self.end
    }

    /// The overlap of two ranges (possibly empty).
    pub fn intersect(&self, other: &Self) -> Self {
        let start = self.start.max(other.start);
        let end = self.end.min(other.end).max(start);
        Self { start, end }
    }

    /// The keys in order.
    pub fn keys(&self) -> std::ops::Range<u64> {
        self.start..self.end
    }
}

impl fmt::Display for KeyRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {})", self.start, self.end)
    }
}

/// How a table's rows are spread over servers.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Partitioning {
    /// Contiguous key ranges, balanced by rows.
    #[default]
    Range,
    /// Server = hash(key) mod servers.
    Hash,
}

impl std::str::FromStr for Partitioning {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "range" => Ok(Self::Range),
            "hash" => Ok(Self::Hash),
            other => Err(format!("unknown partitioning '{other}' (expected 'range' or 'hash')")),
        }
    }
}

/// Where the rows of one table live.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Placement {
    rows: u64,
    servers: u32,
    scheme: Partitioning,
}

/// A routing question that has no answer.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum RouteError {
    /// No table with that id.
    #[error("unknown table {0}")]
    UnknownTable(u32),
    /// A key outside `[0, rows)`.
    #[error("key {key} is out of range for table {table} with {rows} rows")]
    KeyOutOfRange {
        /// Table id.
        table: u32,
        /// The key.
        key: u64,
        /// Rows in the table.
        rows: u64,
    },
    /// A range reaching past `rows`.
    #[error("key range {range} is out of range for table {table} with {rows} rows")]
    RangeOutOfRange {
        /// Table id.
        table: u32,
        /// The range.
        range: KeyRange,
        /// Rows in the table.
        rows: u64,
    },
}

impl Placement {
    /// Places `rows` keys on `servers` servers (at least one).
    pub fn new(rows: u64, servers: u32, scheme: Partitioning) -> Self {
        assert!(servers > 0, "a placement needs at least one server");
        Self { rows, servers, scheme }
    }

    /// Rows in the table.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Number of servers.
    pub fn servers(&self) -> u32 {
        self.servers
    }

    /// The scheme.
    pub fn scheme(&self) -> Partitioning {
        self.scheme
    }

    /// The server holding `key`, which must be below `rows`.
    pub fn owner(&self, key: u64) -> u32 {
        debug_assert!(key < self.rows);
        match self.scheme {
            Partitioning::Range => {
                // Largest s with range_start(s) <= key; range_start is monotone.
                let guess = ((u128::from(key) * u128::from(self.servers)) / u128::from(self.rows)) as u32;
                let mut s = guess.min(self.servers - 1);
                while s + 1 < self.servers && self.range_start(s + 1) <= key {
                    s += 1;
                }
                while self.range_start(s) > key {
                    s -= 1;
                }
                s
            }
            Partitioning::Hash => (mix64(key) % u64::from(self.servers)) as u32,
        }
    }

    /// The contiguous key range of `server` under range partitioning.
    ///
    /// Under hash partitioning a server holds no contiguous range; this returns the whole table.
    pub fn server_range(&self, server: u32) -> KeyRange {
        match self.scheme {
            Partitioning::Range => KeyRange { start: self.range_start(server), end: self.range_start(server + 1) },
            Partitioning::Hash => KeyRange { start: 0, end: self.rows },
        }
    }

    /// The keys of `[0, rows)` that `server` holds, in ascending order.
    pub fn server_keys(&self, server: u32) -> Box<dyn Iterator<Item = u64> + Send + '_> {
        match self.scheme {
            Partitioning::Range => Box::new(self.server_range(server).keys()),
            Partitioning::Hash => Box::new((0..self.rows).filter(move |k| self.owner(*k) == server)),
        }
    }

    fn range_start(&self, server: u32) -> u64 {
        ((u128::from(self.rows) * u128::from(server)) / u128::from(self.servers)) as u64
    }
}

/// A key list cut by owning server.
#[derive(Debug, Eq, PartialEq)]
pub enum KeySplit<'a> {
    /// Keys are grouped by server already (e.g. sorted under range partitioning): one contiguous
    /// slice per server, in input order. `(server, offset into the input, keys)`.
    Slices(Vec<(u32, usize, &'a [u64])>),
    /// Keys had to be regrouped: per server, the keys and their positions in the input.
    Scattered(Vec<ScatteredPart>),
}

/// The keys one server gets from a scattered split.
#[derive(Debug, Eq, PartialEq)]
pub struct ScatteredPart {
    /// Server rank.
    pub server: u32,
    /// Keys for that server, in input order.
    pub keys: Vec<u64>,
    /// Position of each key in the input.
    pub positions: Vec<usize>,
}

/// The routing table of a job: one [`Placement`] per table.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct KeyDirectory {
    tables: Vec<Placement>,
}

impl KeyDirectory {
    /// A directory of the given placements, indexed by table id.
    pub fn new(tables: Vec<Placement>) -> Self {
        Self { tables }
    }

    /// The placement of `table`.
    pub fn placement(&self, table: u32) -> Result<&Placement, RouteError> {
        self.tables.get(table as usize).ok_or(RouteError::UnknownTable(table))
    }

    /// The server holding `key` of `table`.
    pub fn owner(&self, table: u32, key: u64) -> Result<u32, RouteError> {
        let p = self.placement(table)?;
        if key >= p.rows {
            return Err(RouteError::KeyOutOfRange { table, key, rows: p.rows });
        }
        Ok(p.owner(key))
    }

    /// Cuts a key list by owning server. Every key is checked against the table's rows.
    pub fn split_keys<'a>(&self, table: u32, keys: &'a [u64]) -> Result<KeySplit<'a>, RouteError> {
        let p = self.placement(table)?;
        if let Some(&key) = keys.iter().find(|&&k| k >= p.rows) {
            return Err(RouteError::KeyOutOfRange { table, key, rows: p.rows });
        }
        if p.servers == 1 {
            return Ok(KeySplit::Slices(if keys.is_empty() { vec![] } else { vec![(0, 0, keys)] }));
        }
        // Fast path: runs of one owner that never revisit an owner become slices.
        let mut slices: Vec<(u32, usize, &[u64])> = Vec::new();
        let mut seen = vec![false; p.servers as usize];
        let mut start = 0;
        let mut grouped = true;
        while start < keys.len() {
            let owner = p.owner(keys[start]);
            if std::mem::replace(&mut seen[owner as usize], true) {
                grouped = false;
                break;
            }
            let run = match p.scheme {
                Partitioning::Range => {
                    let r = p.server_range(owner);
                    keys[start..].iter().position(|k| !r.contains(*k)).unwrap_or(keys.len() - start)
                }
                Partitioning::Hash => {
                    keys[start..].iter().position(|k| p.owner(*k) != owner).unwrap_or(keys.len() - start)
                }
            };
            slices.push((owner, start, &keys[start..start + run]));
            start += run;
        }
        if grouped {
            return Ok(KeySplit::Slices(slices));
        }
        let mut parts: Vec<ScatteredPart> =
            (0..p.servers).map(|server| ScatteredPart { server, keys: Vec::new(), positions: Vec::new() }).collect();
        for (pos, &k) in keys.iter().enumerate() {
            let part = &mut parts[p.owner(k) as usize];
            part.keys.push(k);
            part.positions.push(pos);
        }
        parts.retain(|part| !part.keys.is_empty());
        Ok(KeySplit::Scattered(parts))
    }

    /// Cuts a key range by server: `(server, sub-range, keys of the sub-range that server holds)`.
    ///
    /// Under range partitioning each server gets the part of the range inside its own range; under
    /// hash partitioning every server gets the whole range and serves the keys it holds.
    pub fn split_range(&self, table: u32, range: KeyRange) -> Result<Vec<(u32, KeyRange, u64)>, RouteError> {
        let p = self.placement(table)?;
        if range.end > p.rows {
            return Err(RouteError::RangeOutOfRange { table, range, rows: p.rows });
        }
        if range.is_empty() {
            return Ok(vec![]);
        }
        Ok(match p.scheme {
            Partitioning::Range => {
                let (first, last) = (p.owner(range.start), p.owner(range.end - 1));
                (first..=last)
                    .map(|s| {
                        let r = range.intersect(&p.server_range(s));
                        (s, r, r.len())
                    })
                    .filter(|(_, r, _)| !r.is_empty())
                    .collect()
            }
            Partitioning::Hash => {
                let mut counts = vec![0u64; p.servers as usize];
                for k in range.keys() {
                    counts[p.owner(k) as usize] += 1;
                }
                counts.into_iter().enumerate().filter(|(_, n)| *n > 0).map(|(s, n)| (s as u32, range, n)).collect()
            }
        })
    }
}

/// A 64-bit mixer (the SplitMix64 finalizer): cheap, and every input bit moves every output bit.
pub fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dir(rows: u64, servers: u32, scheme: Partitioning) -> KeyDirectory {
        KeyDirectory::new(vec![Placement::new(rows, servers, scheme)])
    }

    #[test]
    fn ranges_are_balanced_by_rows() {
        let p = Placement::new(10, 3, Partitioning::Range);
        let ranges: Vec<_> = (0..3).map(|s| p.server_range(s)).collect();
        assert_eq!(ranges, [KeyRange::new(0, 3).unwrap(), KeyRange::new(3, 6).unwrap(), KeyRange::new(6, 10).unwrap()]);
        // Fewer rows than servers: some servers hold nothing, every key still has an owner.
        let p = Placement::new(2, 5, Partitioning::Range);
        assert_eq!((0..2).map(|k| p.owner(k)).collect::<Vec<_>>(), [2, 4]);
    }

    #[test]
    fn out_of_range_keys_are_errors() {
        let d = dir(100, 2, Partitioning::Range);
        assert_eq!(d.owner(0, 100), Err(RouteError::KeyOutOfRange { table: 0, key: 100, rows: 100 }));
        assert_eq!(d.owner(1, 0), Err(RouteError::UnknownTable(1)));
        assert!(matches!(d.split_keys(0, &[1, 200]), Err(RouteError::KeyOutOfRange { key: 200, .. })));
        assert!(matches!(d.split_range(0, KeyRange::new(50, 101).unwrap()), Err(RouteError::RangeOutOfRange { .. })));
    }

    #[test]
    fn sorted_keys_split_into_slices() {
        let d = dir(100, 4, Partitioning::Range);
        let keys = [1, 2, 30, 60, 61, 99];
        let KeySplit::Slices(s) = d.split_keys(0, &keys).unwrap() else { panic!("expected slices") };
        assert_eq!(s, vec![(0, 0, &keys[0..2]), (1, 2, &keys[2..3]), (2, 3, &keys[3..5]), (3, 5, &keys[5..6])]);
    }

    #[test]
    fn range_split_under_range_partitioning_sends_ranges() {
        let d = dir(100, 4, Partitioning::Range);
        let parts = d.split_range(0, KeyRange::new(20, 60).unwrap()).unwrap();
        assert_eq!(
            parts,
            vec![
                (0, KeyRange::new(20, 25).unwrap(), 5),
                (1, KeyRange::new(25, 50).unwrap(), 25),
                (2, KeyRange::new(50, 60).unwrap(), 10)
            ]
        );
    }

    proptest! {
        #[test]
        fn owner_agrees_with_server_ranges(rows in 1u64..10_000, servers in 1u32..17, key in any::<u64>()) {
            let p = Placement::new(rows, servers, Partitioning::Range);
            let key = key % rows;
            prop_assert!(p.server_range(p.owner(key)).contains(key));
            let sizes: Vec<u64> = (0..servers).map(|s| p.server_range(s).len()).collect();
            prop_assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
        }

        #[test]
        fn split_keys_covers_every_key_once(
            keys in proptest::collection::vec(0u64..500, 0..200),
            servers in 1u32..6,
            hash in any::<bool>(),
        ) {
            let scheme = if hash { Partitioning::Hash } else { Partitioning::Range };
            let d = dir(500, servers, scheme);
            let mut seen = vec![None; keys.len()];
            match d.split_keys(0, &keys).unwrap() {
                KeySplit::Slices(slices) => for (server, off, part) in slices {
                    for (i, k) in part.iter().enumerate() {
                        prop_assert_eq!(keys[off + i], *k);
                        prop_assert_eq!(d.owner(0, *k).unwrap(), server);
                        prop_assert!(seen[off + i].replace(server).is_none());
                    }
                },
                KeySplit::Scattered(parts) => for part in parts {
                    for (k, pos) in part.keys.iter().zip(&part.positions) {
                        prop_assert_eq!(keys[*pos], *k);
                        prop_assert_eq!(d.owner(0, *k).unwrap(), part.server);
                        prop_assert!(seen[*pos].replace(part.server).is_none());
                    }
                },
            }
            prop_assert!(seen.iter().all(Option::is_some));
        }

        #[test]
        fn split_range_counts_add_up(start in 0u64..300, len in 0u64..200, servers in 1u32..6, hash in any::<bool>()) {
            let scheme = if hash { Partitioning::Hash } else { Partitioning::Range };
            let d = dir(500, servers, scheme);
            let range = KeyRange::new(start, start + len).unwrap();
            let parts = d.split_range(0, range).unwrap();
            prop_assert_eq!(parts.iter().map(|p| p.2).sum::<u64>(), len);
            for (server, sub, n) in parts {
                let held = sub.keys().filter(|k| d.owner(0, *k).unwrap() == server).count() as u64;
                prop_assert_eq!(held, n);
            }
        }
    }
}
