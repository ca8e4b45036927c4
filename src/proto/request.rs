//! Outstanding requests of one connection: request ids handed out, replies matched back.
//!
//! Bounded: at most `max` requests are outstanding, an entry is removed when its reply arrives,
//! and a reply for an id that is not outstanding is an error, never an index into anything.

use std::collections::HashMap;

/// A reply named a request id that is not outstanding.
#[derive(Clone, Copy, Debug, Eq, PartialEq, thiserror::Error)]
#[error("reply for request {0}, which is not outstanding")]
pub struct UnknownRequest(pub u64);

/// The table is full.
#[derive(Clone, Copy, Debug, Eq, PartialEq, thiserror::Error)]
#[error("{0} requests are already outstanding")]
pub struct TooManyOutstanding(pub usize);

/// Outstanding requests, each with the caller's completion handle `T`.
#[derive(Debug)]
pub struct Outstanding<T> {
    next: u64,
    max: usize,
    pending: HashMap<u64, T>,
}

impl<T> Outstanding<T> {
    /// An empty table that holds at most `max` requests.
    pub fn new(max: usize) -> Self {
        Self { next: 1, max, pending: HashMap::new() }
    }

    /// Registers a request and returns its id (never 0, which marks unsolicited messages).
    pub fn insert(&mut self, handle: T) -> Result<u64, TooManyOutstanding> {
        if self.pending.len() >= self.max {
            return Err(TooManyOutstanding(self.max));
        }
        let id = self.next;
        // u64 ids do not wrap in practice; skip 0 anyway so the invariant never depends on that.
        self.next = self.next.checked_add(1).unwrap_or(1);
        self.pending.insert(id, handle);
        Ok(id)
    }

    /// Takes the handle of a completed request.
    pub fn complete(&mut self, id: u64) -> Result<T, UnknownRequest> {
        self.pending.remove(&id).ok_or(UnknownRequest(id))
    }

    /// Removes every outstanding request (the connection is gone).
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.pending.drain().map(|(_, h)| h)
    }

    /// Number of outstanding requests.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing is outstanding.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_nonzero_and_bounded() {
        let mut t = Outstanding::new(2);
        let a = t.insert('a').unwrap();
        let b = t.insert('b').unwrap();
        assert!(a != 0 && b != 0 && a != b);
        assert_eq!(t.insert('c'), Err(TooManyOutstanding(2)));
        assert_eq!(t.complete(b), Ok('b'));
        assert_eq!(t.complete(b), Err(UnknownRequest(b)));
        assert_eq!(t.complete(999), Err(UnknownRequest(999)));
        let c = t.insert('c').unwrap();
        assert!(c != a);
        assert_eq!(t.drain().count(), 2);
        assert!(t.is_empty());
    }
}
