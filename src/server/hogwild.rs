//! Lock-free rows for Hogwild (Recht, Ré, Wright, Niu; NeurIPS'11): workers that are threads of
//! the server's process read and update a table's rows at the same time, with no lock between
//! them.
//!
//! Why this is sound in Rust: every value (and every optimizer state value) is an [`AtomicU32`]
//! holding the bits of an `f32`, read and written with `Relaxed` loads and stores. A data race
//! on plain `f32`s would be undefined behaviour; relaxed atomics are defined: each load returns
//! some value that was stored, never a torn mix of two, and on x86-64 and AArch64 they compile
//! to the same plain loads and stores. What Hogwild gives up is exactly what its paper accepts:
//! an update is a load, a computation and a store, so two workers updating the same value at the
//! same time can lose one of the two updates, and a reader may see a row half old, half new.
//! Sparse updates make such collisions rare, and SGD converges despite them. No ordering between
//! values is needed (nothing else is published through them), so `Relaxed` is enough.
//!
//! Element-wise optimizers only: an update reads a value's own state and gradient, so each value
//! is updated on its own. Shampoo's preconditioner couples every value of the block and has no
//! lock-free form; a job asking for it under Hogwild is refused when it is validated.
//!
//! Refuses: request checking (the [`super::Shard`] checks keys and lengths first) and IO.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use super::optimizer::OptimizerSpec;

/// A table shard's values, optimizer state and per-row step counts, updated without locks.
pub(crate) struct LockFreeRows {
    spec: OptimizerSpec,
    dim: usize,
    values: Box<[AtomicU32]>,
    /// `slots` state values per value, row-major, as [`OptimizerSpec::step_element`] takes them.
    state: Box<[AtomicU32]>,
    /// Updates per row, for rules that count them (Adam); empty otherwise.
    steps: Box<[AtomicU64]>,
}

impl LockFreeRows {
    /// Takes over `data` (`dim` values per row), with zeroed optimizer state.
    ///
    /// # Panics
    /// If `spec` is not element-wise (the job's validation refuses that first).
    pub(crate) fn new(spec: OptimizerSpec, dim: usize, data: &[f32]) -> Self {
        assert!(spec.is_elementwise(), "{} has no lock-free form", spec.name());
        let rows = data.len().checked_div(dim).unwrap_or(0);
        let counted = matches!(spec, OptimizerSpec::Adam { .. });
        Self {
            spec,
            dim,
            values: data.iter().map(|v| AtomicU32::new(v.to_bits())).collect(),
            state: (0..data.len() * spec.slots()).map(|_| AtomicU32::new(0)).collect(),
            steps: (0..if counted { rows } else { 0 }).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Copies the row at data offset `off` into `out` (`dim` values).
    pub(crate) fn read_row(&self, off: usize, out: &mut [f32]) {
        for (o, v) in out.iter_mut().zip(&self.values[off..off + self.dim]) {
            *o = f32::from_bits(v.load(Relaxed));
        }
    }

    /// Appends the row at data offset `off` to `out` as little-endian `f32`s.
    pub(crate) fn put_row(&self, off: usize, out: &mut bytes::BytesMut) {
        for v in &self.values[off..off + self.dim] {
            out.extend_from_slice(&v.load(Relaxed).to_le_bytes());
        }
    }

    /// One optimizer step of the row at data offset `off` with `grad` (`dim` values).
    pub(crate) fn update_row(&self, off: usize, grad: &[f32]) {
        let slots = self.spec.slots();
        let step = match self.steps.get(off / self.dim.max(1)) {
            // Two workers stepping one row at once both count; each gets its own step number.
            Some(count) => count.fetch_add(1, Relaxed) + 1,
            None => 1,
        };
        let mut state = [0f32; 2];
        let state = &mut state[..slots];
        for (j, (value, &g)) in self.values[off..off + self.dim].iter().zip(grad).enumerate() {
            let cells = &self.state[(off + j) * slots..(off + j + 1) * slots];
            for (s, cell) in state.iter_mut().zip(cells) {
                *s = f32::from_bits(cell.load(Relaxed));
            }
            let updated = self.spec.step_element(step, f32::from_bits(value.load(Relaxed)), g, state);
            for (s, cell) in state.iter().zip(cells) {
                cell.store(s.to_bits(), Relaxed);
            }
            value.store(updated.to_bits(), Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::optimizer::ShardOptimizer;

    #[test]
    fn one_thread_updates_exactly_as_the_locked_optimizer() {
        let (rows, dim) = (6, 3);
        let init: Vec<f32> = (0..rows * dim).map(|i| i as f32 * 0.1 - 0.5).collect();
        for spec in ["sgd:lr=0.1", "momentum", "nesterov", "adagrad", "rmsprop", "adam:lr=0.01"] {
            let spec: OptimizerSpec = spec.parse().unwrap();
            let lock_free = LockFreeRows::new(spec, dim, &init);
            let mut reference = init.clone();
            let mut locked = ShardOptimizer::new(spec, rows, dim);
            for step in 0..40usize {
                let row = (step * 7) % rows;
                let grad: Vec<f32> = (0..dim).map(|j| ((step * 3 + j) % 5) as f32 - 2.0).collect();
                lock_free.update_row(row * dim, &grad);
                locked.apply(&mut reference, &[row], &grad);
            }
            let mut got = vec![0.0; rows * dim];
            for r in 0..rows {
                lock_free.read_row(r * dim, &mut got[r * dim..(r + 1) * dim]);
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&reference), "{spec}");
        }
    }

    #[test]
    fn threads_updating_disjoint_rows_lose_nothing() {
        let (rows, dim, threads, steps) = (8, 4, 4, 500);
        let table = LockFreeRows::new("sgd:lr=1".parse().unwrap(), dim, &vec![0.0; rows * dim]);
        std::thread::scope(|s| {
            for t in 0..threads {
                let table = &table;
                s.spawn(move || {
                    for _ in 0..steps {
                        // Thread t owns rows t and t + threads: no two threads touch one value.
                        table.update_row(t * dim, &[-1.0; 4]);
                        table.update_row((t + threads) * dim, &[-1.0; 4]);
                    }
                });
            }
        });
        let mut row = [0.0; 4];
        for r in 0..rows {
            table.read_row(r * dim, &mut row);
            assert_eq!(row, [steps as f32; 4], "row {r}");
        }
    }
}
