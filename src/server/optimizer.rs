//! Server-side optimizers: the rule a server applies to the rows of one table shard it holds when a
//! push of gradients arrives.
//!
//! [`OptimizerSpec`] names a rule and its hyper-parameters (parsed from `name:key=value,...`, see
//! its [`FromStr`] impl). [`ShardOptimizer`] holds that rule's state for one table shard and applies
//! steps to the shard's rows. The state lives on the server, beside the rows, one per table shard;
//! workers send plain gradients and never see it.
//!
//! The rules, with `g` the gradient of one value `X` (element-wise math in `f32`, in this order):
//! - SGD: `X -= lr*g`.
//! - Momentum (Polyak): `v = mu*v - lr*g; X += v`.
//! - Nesterov momentum (Sutskever et al., ICML'13, in the form of the course notes):
//!   `v_prev = v; v = mu*v - lr*g; X = X - mu*v_prev + (1+mu)*v`.
//! - AdaGrad (Duchi, Hazan, Singer, JMLR 2011): `c += g*g; X -= lr*g/(sqrt(c)+eps)`.
//! - RMSprop (Tieleman & Hinton, 2012): `c = rho*c + (1-rho)*g*g; X -= lr*g/(sqrt(c)+eps)`.
//! - Adam (Kingma & Ba, ICLR 2015): `t += 1; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g;
//!   X -= lr*(m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps)`. The step count `t` is kept per row: it counts
//!   the updates that row received ("lazy" or sparse Adam). A row of a sparse embedding table first
//!   pushed at the job's 1000th step gets the bias correction of a first step, so its moments stay
//!   unbiased; a global `t` would leave them shrunk towards zero.
//! - Shampoo (Gupta, Koren, Singer, ICML'18) on the shard's rows as one dense matrix `W` (`r × d`):
//!   with `G` the `r × d` gradient (rows not pushed are zero, a row pushed twice is summed),
//!   `L += G Gᵀ; R += Gᵀ G; W -= lr · L^{-1/4} G R^{-1/4}`, with `L = eps·I`, `R = eps·I` at the
//!   start. (The course notes write `pow(L, 1/4)`; the paper's exponent is `-1/4`.) The inverse 4th
//!   roots are recomputed on the first step and then every `update_every` steps (steps 1,
//!   1+k, 1+2k, ...) in `f64` by the coupled Newton iteration for the inverse p-th root (Guo &
//!   Higham, SIAM J. Matrix Anal. Appl. 2006), scaled by a norm bound so that it converges. Every
//!   step updates all `r` rows, as `L` mixes rows. The statistics are `f64`.
//!
//! Shampoo's blocking: each server preconditions only the block of rows it holds, so the whole
//! table gets a block-diagonal approximation of the full left preconditioner, as distributed
//! Shampoo (Anil et al., 2020) does with its blocks. A side longer than `max_dim` gets the identity
//! as its preconditioner and keeps no statistics: the `n × n` statistics and the `O(n³)` root would
//! cost too much (a block with both sides over `max_dim` is plain SGD). Each step costs
//! `O(r²d + rd²)` plus `O(r³ + d³)` per root update, whatever the push's size.
//!
//! Refuses: weight decay, AMSGrad, gradient clipping and learning-rate schedules (a caller may
//! change the rate between steps with [`OptimizerSpec::with_lr`]). Shampoo has no element-wise form:
//! it is for dense blocks only, [`OptimizerSpec::step_element`] must not be called for it, and so
//! the lock-free (Hogwild) path cannot use it. Non-finite gradients are not filtered; as with
//! every rule they make the parameters non-finite.

use std::fmt;
use std::str::FromStr;

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2};

/// An optimizer and its hyper-parameters.
///
/// Written and parsed as `name` or `name:key=value,...` (see the [`FromStr`] impl); serde uses
/// that string, so a spec read from a config file is validated.
#[derive(Clone, Copy, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum OptimizerSpec {
    /// Plain stochastic gradient descent.
    Sgd {
        /// Learning rate.
        lr: f32,
    },
    /// SGD with (Polyak) momentum.
    Momentum {
        /// Learning rate.
        lr: f32,
        /// Momentum coefficient, in `[0, 1)`.
        mu: f32,
    },
    /// SGD with Nesterov momentum.
    Nesterov {
        /// Learning rate.
        lr: f32,
        /// Momentum coefficient, in `[0, 1)`.
        mu: f32,
    },
    /// AdaGrad: per-value rates from the sum of squared gradients.
    AdaGrad {
        /// Learning rate.
        lr: f32,
        /// Added to the root of the sum, so that a zero sum does not divide by zero.
        eps: f32,
    },
    /// RMSprop: per-value rates from a moving average of squared gradients.
    RmsProp {
        /// Learning rate.
        lr: f32,
        /// Decay of the moving average, in `[0, 1)`.
        rho: f32,
        /// Added to the root of the average.
        eps: f32,
    },
    /// Adam, with a step count per row.
    Adam {
        /// Learning rate.
        lr: f32,
        /// Decay of the first moment, in `[0, 1)`.
        beta1: f32,
        /// Decay of the second moment, in `[0, 1)`.
        beta2: f32,
        /// Added to the root of the second moment.
        eps: f32,
    },
    /// Shampoo on the shard's rows as one dense block.
    Shampoo {
        /// Learning rate.
        lr: f32,
        /// The statistics start at `eps·I`, which keeps them invertible.
        eps: f32,
        /// Steps between recomputations of the inverse roots (at least 1).
        update_every: u32,
        /// A side (rows or columns) longer than this gets the identity as its preconditioner.
        max_dim: u32,
    },
}

/// The names [`OptimizerSpec::from_str`] accepts, in the order of the error message.
const NAMES: &str = "sgd, momentum, nesterov, adagrad, rmsprop, adam or shampoo";

/// Caps the coupled Newton iteration; convergence from the scaled start takes about
/// `log(cond)/log(2.4) + 6` steps, so this covers any condition number an `f64` can hold.
const MAX_ROOT_ITERS: usize = 200;

/// A hyper-parameter's value, for printing and range checks.
#[derive(Clone, Copy)]
enum Value {
    Real(f32),
    Whole(u32),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Real(x) => x.fmt(f),
            Self::Whole(n) => n.fmt(f),
        }
    }
}

/// A mutable reference to one hyper-parameter.
enum Slot<'a> {
    Real(&'a mut f32),
    Whole(&'a mut u32),
}

impl OptimizerSpec {
    /// The spec with the literature's (or the common frameworks') defaults for `name`.
    fn defaults(name: &str) -> Option<Self> {
        Some(match name {
            "sgd" => Self::Sgd { lr: 0.01 },
            "momentum" => Self::Momentum { lr: 0.01, mu: 0.9 },
            "nesterov" => Self::Nesterov { lr: 0.01, mu: 0.9 },
            "adagrad" => Self::AdaGrad { lr: 0.01, eps: 1e-10 },
            "rmsprop" => Self::RmsProp { lr: 0.001, rho: 0.9, eps: 1e-8 },
            "adam" => Self::Adam { lr: 0.001, beta1: 0.9, beta2: 0.999, eps: 1e-8 },
            "shampoo" => Self::Shampoo { lr: 0.1, eps: 1e-4, update_every: 10, max_dim: 1024 },
            _ => return None,
        })
    }

    /// The name used in the string form.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Sgd { .. } => "sgd",
            Self::Momentum { .. } => "momentum",
            Self::Nesterov { .. } => "nesterov",
            Self::AdaGrad { .. } => "adagrad",
            Self::RmsProp { .. } => "rmsprop",
            Self::Adam { .. } => "adam",
            Self::Shampoo { .. } => "shampoo",
        }
    }

    /// The hyper-parameters' names, in the order of the string form.
    fn keys(&self) -> &'static [&'static str] {
        match self {
            Self::Sgd { .. } => &["lr"],
            Self::Momentum { .. } | Self::Nesterov { .. } => &["lr", "mu"],
            Self::AdaGrad { .. } => &["lr", "eps"],
            Self::RmsProp { .. } => &["lr", "rho", "eps"],
            Self::Adam { .. } => &["lr", "beta1", "beta2", "eps"],
            Self::Shampoo { .. } => &["lr", "eps", "update_every", "max_dim"],
        }
    }

    /// The hyper-parameter `key`, if this rule has one.
    fn slot(&mut self, key: &str) -> Option<Slot<'_>> {
        Some(match (self, key) {
            (
                Self::Sgd { lr }
                | Self::Momentum { lr, .. }
                | Self::Nesterov { lr, .. }
                | Self::AdaGrad { lr, .. }
                | Self::RmsProp { lr, .. }
                | Self::Adam { lr, .. }
                | Self::Shampoo { lr, .. },
                "lr",
            ) => Slot::Real(lr),
            (Self::Momentum { mu, .. } | Self::Nesterov { mu, .. }, "mu") => Slot::Real(mu),
            (Self::RmsProp { rho, .. }, "rho") => Slot::Real(rho),
            (Self::Adam { beta1, .. }, "beta1") => Slot::Real(beta1),
            (Self::Adam { beta2, .. }, "beta2") => Slot::Real(beta2),
            (
                Self::AdaGrad { eps, .. }
                | Self::RmsProp { eps, .. }
                | Self::Adam { eps, .. }
                | Self::Shampoo { eps, .. },
                "eps",
            ) => Slot::Real(eps),
            (Self::Shampoo { update_every, .. }, "update_every") => Slot::Whole(update_every),
            (Self::Shampoo { max_dim, .. }, "max_dim") => Slot::Whole(max_dim),
            _ => return None,
        })
    }

    /// The value of the hyper-parameter `key`, if this rule has one.
    fn value(mut self, key: &str) -> Option<Value> {
        Some(match self.slot(key)? {
            Slot::Real(x) => Value::Real(*x),
            Slot::Whole(n) => Value::Whole(*n),
        })
    }

    /// Checks every hyper-parameter's range: `lr` and `eps` positive and finite; `mu`, `rho`,
    /// `beta1`, `beta2` in `[0, 1)`; `update_every` and `max_dim` at least 1. The error is a
    /// sentence naming the rule, the hyper-parameter and its range.
    pub fn validate(&self) -> Result<(), String> {
        for &key in self.keys() {
            let Some(value) = self.value(key) else { continue };
            if !in_range(key, value) {
                return Err(format!("{}: {key} = {value} is out of range (must be {})", self.name(), range_text(key)));
            }
        }
        Ok(())
    }

    /// The learning rate.
    pub fn lr(&self) -> f32 {
        match self.value("lr") {
            Some(Value::Real(lr)) => lr,
            _ => unreachable!("every rule has a real learning rate"),
        }
    }

    /// The same spec with the learning rate `lr` (not validated; see [`Self::validate`]).
    #[must_use]
    pub fn with_lr(mut self, lr: f32) -> Self {
        if let Some(Slot::Real(x)) = self.slot("lr") {
            *x = lr;
        }
        self
    }

    /// Whether the rule updates each value from its own gradient and state alone (all but
    /// Shampoo), so that [`Self::step_element`] applies.
    pub fn is_elementwise(&self) -> bool {
        !matches!(self, Self::Shampoo { .. })
    }

    /// The `f32` state values kept per parameter value.
    pub fn slots(&self) -> usize {
        match self {
            Self::Sgd { .. } | Self::Shampoo { .. } => 0,
            Self::Momentum { .. } | Self::Nesterov { .. } | Self::AdaGrad { .. } | Self::RmsProp { .. } => 1,
            Self::Adam { .. } => 2,
        }
    }

    /// One element-wise step: returns the new value of `param` after the gradient `grad`, and
    /// updates `state` (its [`Self::slots`] values, zero at the start) in place. `row_step` is
    /// the row's step count after counting this step (1 on the row's first update); only Adam
    /// reads it.
    ///
    /// A pure function of its inputs, so the lock-free path can call it on values it loaded from
    /// atomics.
    ///
    /// Must not be called for Shampoo, which has no element-wise form: a debug build panics, a
    /// release build applies `param - lr*grad` (Shampoo with both preconditioners the identity).
    #[inline]
    pub fn step_element(&self, row_step: u64, param: f32, grad: f32, state: &mut [f32]) -> f32 {
        debug_assert!(self.is_elementwise(), "step_element called for Shampoo, which is not element-wise");
        debug_assert_eq!(state.len(), self.slots());
        match *self {
            Self::Sgd { lr } | Self::Shampoo { lr, .. } => param - lr * grad,
            Self::Momentum { lr, mu } => {
                let v = mu * state[0] - lr * grad;
                state[0] = v;
                param + v
            }
            Self::Nesterov { lr, mu } => {
                let v_prev = state[0];
                let v = mu * v_prev - lr * grad;
                state[0] = v;
                param - mu * v_prev + (1.0 + mu) * v
            }
            Self::AdaGrad { lr, eps } => {
                let c = state[0] + grad * grad;
                state[0] = c;
                param - lr * grad / (c.sqrt() + eps)
            }
            Self::RmsProp { lr, rho, eps } => {
                let c = rho * state[0] + (1.0 - rho) * grad * grad;
                state[0] = c;
                param - lr * grad / (c.sqrt() + eps)
            }
            Self::Adam { lr, beta1, beta2, eps } => {
                debug_assert!(row_step >= 1, "Adam's row step counts this step, so it starts at 1");
                // Past 2^31 steps beta^t is 0 in f32 anyway.
                let t = i32::try_from(row_step).unwrap_or(i32::MAX);
                let m = beta1 * state[0] + (1.0 - beta1) * grad;
                let v = beta2 * state[1] + (1.0 - beta2) * grad * grad;
                state[0] = m;
                state[1] = v;
                let m_hat = m / (1.0 - beta1.powi(t));
                let v_hat = v / (1.0 - beta2.powi(t));
                param - lr * m_hat / (v_hat.sqrt() + eps)
            }
        }
    }

    /// The bytes the state of a shard of `rows` rows of `dim` values needs: 4 per state value,
    /// plus 8 per row for Adam's step counts; for Shampoo two `f64` matrices (statistics and root)
    /// per side of at most `max_dim`, none for a longer side. Lets a server refuse a table before
    /// allocating. Excludes the temporaries of one Shampoo step (a few `f64` matrices of the same
    /// sizes and the `rows × dim` gradient).
    pub fn state_bytes(&self, rows: u64, dim: u64) -> u128 {
        let (rows, dim) = (u128::from(rows), u128::from(dim));
        match *self {
            Self::Shampoo { max_dim, .. } => {
                let side = |n: u128| if n <= u128::from(max_dim) { 2 * n * n * 8 } else { 0 };
                side(rows) + side(dim)
            }
            Self::Adam { .. } => rows * dim * 2 * 4 + rows * 8,
            _ => rows * dim * self.slots() as u128 * 4,
        }
    }
}

/// Whether `value` is in the range of the hyper-parameter `key`.
fn in_range(key: &str, value: Value) -> bool {
    match (key, value) {
        ("mu" | "rho" | "beta1" | "beta2", Value::Real(x)) => (0.0..1.0).contains(&x),
        (_, Value::Real(x)) => x.is_finite() && x > 0.0,
        (_, Value::Whole(n)) => n >= 1,
    }
}

/// The range of the hyper-parameter `key`, completing "must be ...".
fn range_text(key: &str) -> &'static str {
    match key {
        "mu" | "rho" | "beta1" | "beta2" => "in [0, 1)",
        "update_every" | "max_dim" => "a whole number in [1, 4294967295]",
        _ => "a positive finite number",
    }
}

impl FromStr for OptimizerSpec {
    type Err = String;

    /// Parses `name` or `name:key=value,key=value`, e.g. `adam:lr=0.01,beta2=0.99`. Names are
    /// `sgd, momentum, nesterov, adagrad, rmsprop, adam, shampoo`; keys not given take the
    /// defaults (sgd `lr=0.01`; momentum and nesterov `lr=0.01,mu=0.9`; adagrad
    /// `lr=0.01,eps=1e-10`; rmsprop `lr=0.001,rho=0.9,eps=1e-8`; adam
    /// `lr=0.001,beta1=0.9,beta2=0.999,eps=1e-8`; shampoo
    /// `lr=0.1,eps=1e-4,update_every=10,max_dim=1024`). Spaces around items are ignored. An unknown
    /// name or key, a repeated key, a value that is not a number and a value out of range are
    /// errors.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (name, args) = match s.split_once(':') {
            Some((name, args)) => (name.trim(), Some(args)),
            None => (s, None),
        };
        let mut spec = Self::defaults(name).ok_or_else(|| format!("unknown optimizer '{name}' (expected {NAMES})"))?;
        let keys = spec.keys();
        let mut seen = [false; 4];
        for item in args.into_iter().flat_map(|args| args.split(',')) {
            let item = item.trim();
            let Some((key, text)) = item.split_once('=') else {
                return Err(format!("{name}: '{item}' is not of the form key=value"));
            };
            let (key, text) = (key.trim(), text.trim());
            let Some(index) = keys.iter().position(|k| *k == key) else {
                return Err(format!("{name} has no hyper-parameter '{key}' (expected {})", keys.join(", ")));
            };
            if std::mem::replace(&mut seen[index], true) {
                return Err(format!("{name}: {key} is given twice"));
            }
            match spec.slot(key) {
                Some(Slot::Real(x)) => {
                    *x = text.parse().map_err(|_| format!("{name}: {key} = '{text}' is not a number"))?;
                }
                Some(Slot::Whole(n)) => {
                    *n = match text.parse::<u32>() {
                        Ok(n) => n,
                        // A whole number too big or negative is out of range rather than malformed.
                        Err(_) if text.parse::<i128>().is_ok() => {
                            return Err(format!(
                                "{name}: {key} = {text} is out of range (must be {})",
                                range_text(key)
                            ));
                        }
                        Err(_) => return Err(format!("{name}: {key} = '{text}' is not a whole number")),
                    };
                }
                None => unreachable!("every key of keys() has a slot"),
            }
        }
        spec.validate()?;
        Ok(spec)
    }
}

impl fmt::Display for OptimizerSpec {
    /// The full form with every hyper-parameter, e.g.
    /// `adam:lr=0.001,beta1=0.9,beta2=0.999,eps=0.00000001`; parsing it gives the same spec.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        for (i, &key) in self.keys().iter().enumerate() {
            if let Some(value) = self.value(key) {
                write!(f, "{}{key}={value}", if i == 0 { ':' } else { ',' })?;
            }
        }
        Ok(())
    }
}

serde_as_string!(OptimizerSpec);

/// The optimizer state of one table shard: `rows` rows of `dim` values each, rows indexed 0..rows
/// in the shard's storage order.
///
/// Element-wise state is laid out row by row, and within a row value by value, each value's
/// [`OptimizerSpec::slots`] state values together.
#[derive(Clone, Debug)]
pub struct ShardOptimizer {
    spec: OptimizerSpec,
    rows: usize,
    dim: usize,
    /// `rows × dim × slots` values, zero at the start.
    state: Vec<f32>,
    /// Adam's per-row step counts; empty for the other rules.
    steps: Vec<u64>,
    /// Shampoo's state; `None` for the element-wise rules.
    shampoo: Option<ShampooState>,
}

/// Shampoo's state for one block.
#[derive(Clone, Debug)]
struct ShampooState {
    /// Steps taken.
    step: u64,
    /// Left statistics `L` (`rows × rows`), `None` past `max_dim`.
    left: Option<Side>,
    /// Right statistics `R` (`dim × dim`), `None` past `max_dim`.
    right: Option<Side>,
}

/// The statistics of one side and their inverse 4th root as last computed.
#[derive(Clone, Debug)]
struct Side {
    stats: Array2<f64>,
    root: Array2<f64>,
}

impl Side {
    /// `eps·I` of size `n`, or `None` past `max_dim`.
    fn new(n: usize, eps: f32, max_dim: u32) -> Option<Self> {
        // A usize past u32::MAX is past any max_dim.
        (u32::try_from(n).is_ok_and(|n| n <= max_dim)).then(|| Self {
            stats: Array2::eye(n) * f64::from(eps),
            // Replaced on the first step, which always computes the root.
            root: Array2::eye(n),
        })
    }
}

impl ShardOptimizer {
    /// Zero state for a shard of `rows` rows of `dim` values.
    ///
    /// # Panics
    /// If the state's size overflows `usize`; check [`OptimizerSpec::state_bytes`] first.
    pub fn new(spec: OptimizerSpec, rows: usize, dim: usize) -> Self {
        let len = rows.checked_mul(dim).and_then(|n| n.checked_mul(spec.slots()));
        let state = vec![0.0; len.expect("optimizer state size overflows usize")];
        let steps = if matches!(spec, OptimizerSpec::Adam { .. }) { vec![0; rows] } else { Vec::new() };
        let shampoo = match spec {
            OptimizerSpec::Shampoo { eps, max_dim, .. } => {
                Some(ShampooState { step: 0, left: Side::new(rows, eps, max_dim), right: Side::new(dim, eps, max_dim) })
            }
            _ => None,
        };
        Self { spec, rows, dim, state, steps, shampoo }
    }

    /// The rule and its hyper-parameters.
    pub fn spec(&self) -> &OptimizerSpec {
        &self.spec
    }

    /// Applies one optimizer step to `params` (the shard's whole data, `rows × dim` values,
    /// row-major) with the gradients `grads` (`rows.len() × dim` values) of the rows at indices
    /// `rows`, in that order.
    ///
    /// Element-wise rules update only those rows (a row listed twice gets two steps, in order).
    /// Shampoo sums duplicate rows into `G` and updates the whole block; an empty push is not a
    /// step.
    ///
    /// # Panics
    /// If a length does not match or a row index is out of range: the shard checks requests
    /// before they reach here.
    pub fn apply(&mut self, params: &mut [f32], rows: &[usize], grads: &[f32]) {
        let dim = self.dim;
        assert_eq!(params.len(), self.rows * dim, "params must hold the shard's rows × dim values");
        assert_eq!(grads.len(), rows.len() * dim, "grads must hold one row of dim values per row index");
        if let Some(row) = rows.iter().find(|&&row| row >= self.rows) {
            panic!("row index {row} out of range for a shard of {} rows", self.rows);
        }
        if self.shampoo.is_some() {
            self.apply_shampoo(params, rows, grads);
            return;
        }
        let slots = self.spec.slots();
        // chunks_exact refuses 0; with dim 0 there is nothing to update.
        for (&row, grad) in rows.iter().zip(grads.chunks_exact(dim.max(1))) {
            let step = self.row_step(row);
            let spec = self.spec;
            let state = &mut self.state[row * dim * slots..(row + 1) * dim * slots];
            let param = &mut params[row * dim..(row + 1) * dim];
            for (j, (p, &g)) in param.iter_mut().zip(grad).enumerate() {
                *p = spec.step_element(step, *p, g, &mut state[j * slots..(j + 1) * slots]);
            }
        }
    }

    /// Counts a step of `row` and returns its step count after it (1 on the first). Only Adam
    /// keeps counts; the other rules return 1 and store nothing.
    ///
    /// # Panics
    /// If `row` is out of range (Adam only).
    pub fn row_step(&mut self, row: usize) -> u64 {
        if self.steps.is_empty() {
            return 1;
        }
        let step = &mut self.steps[row];
        *step += 1;
        *step
    }

    /// The `dim × slots` state values of `row` (empty for SGD and Shampoo).
    ///
    /// # Panics
    /// If `row` is out of range and the rule keeps element state.
    pub fn state_mut(&mut self, row: usize) -> &mut [f32] {
        let n = self.dim * self.spec.slots();
        &mut self.state[row * n..(row + 1) * n]
    }

    /// One Shampoo step on the whole block.
    fn apply_shampoo(&mut self, params: &mut [f32], rows: &[usize], grads: &[f32]) {
        let OptimizerSpec::Shampoo { lr, update_every, .. } = self.spec else { return };
        let Some(state) = &mut self.shampoo else { return };
        if rows.is_empty() {
            return;
        }
        let dim = self.dim;
        let mut g = Array2::<f64>::zeros((self.rows, dim));
        for (k, &row) in rows.iter().enumerate() {
            for (dst, &src) in g.row_mut(row).iter_mut().zip(&grads[k * dim..(k + 1) * dim]) {
                *dst += f64::from(src);
            }
        }
        state.step += 1;
        let recompute = (state.step - 1) % u64::from(update_every) == 0;
        if let Some(left) = &mut state.left {
            general_mat_mul(1.0, &g, &g.t(), 1.0, &mut left.stats);
            if recompute {
                left.root = inverse_pth_root(left.stats.view(), 4);
            }
        }
        if let Some(right) = &mut state.right {
            general_mat_mul(1.0, &g.t(), &g, 1.0, &mut right.stats);
            if recompute {
                right.root = inverse_pth_root(right.stats.view(), 4);
            }
        }
        let mut update = g;
        if let Some(left) = &state.left {
            update = left.root.dot(&update);
        }
        if let Some(right) = &state.right {
            update = update.dot(&right.root);
        }
        let lr = f64::from(lr);
        // Standard layout, so iter() walks row-major like params.
        for (w, u) in params.iter_mut().zip(update.iter()) {
            *w = (f64::from(*w) - lr * u) as f32;
        }
    }
}

/// `A^{-1/p}` for a symmetric positive definite `A`, by the coupled Newton iteration (Guo &
/// Higham 2006): `X₀ = z^{1/p}·I`, `M₀ = z·A`, then `T = ((p+1)·I - M)/p`, `X ← X·T`,
/// `M ← T^p·M`, which keeps `M = X^p·A`, so `X → A^{-1/p}` as `M → I`.
///
/// `z = (p+1)/(2·b)` with `b ≥ ‖A‖₂` puts `M₀`'s eigenvalues in `(0, (p+1)/2]`, where the
/// iteration converges and `‖M - I‖` falls at every step; it stops when that residual is at
/// rounding level, stops falling, or after [`MAX_ROOT_ITERS`] steps. A matrix with a non-finite
/// or zero norm gives NaN.
fn inverse_pth_root(a: ArrayView2<'_, f64>, p: u32) -> Array2<f64> {
    let n = a.nrows();
    debug_assert_eq!(a.ncols(), n, "the matrix must be square");
    let eye = Array2::<f64>::eye(n);
    if n == 0 {
        return eye;
    }
    // Both norms bound the spectral norm; the smaller one converges faster.
    let frobenius = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let max_row_sum = a.rows().into_iter().map(|r| r.iter().map(|x| x.abs()).sum::<f64>()).fold(0.0, f64::max);
    let bound = frobenius.min(max_row_sum);
    if !bound.is_normal() {
        return Array2::from_elem((n, n), f64::NAN);
    }
    let pf = f64::from(p);
    let z = (pf + 1.0) / (2.0 * bound);
    let mut m = a.mapv(|x| x * z);
    let mut x = &eye * z.powf(1.0 / pf);
    let mut residual = distance_to_identity(&m);
    let tol = 4.0 * f64::EPSILON * n as f64;
    for _ in 0..MAX_ROOT_ITERS {
        if residual <= tol {
            break;
        }
        let t = (&eye * (pf + 1.0) - &m) / pf;
        let next_m = matrix_power(&t, p).dot(&m);
        let next_residual = distance_to_identity(&next_m);
        // In exact arithmetic the residual falls every step, so a rise is rounding noise.
        if next_residual.is_nan() || next_residual >= residual {
            break;
        }
        x = x.dot(&t);
        m = next_m;
        residual = next_residual;
    }
    // X is a polynomial in A, so symmetric up to rounding.
    (&x + &x.t()) * 0.5
}

/// `‖M - I‖_F`.
fn distance_to_identity(m: &Array2<f64>) -> f64 {
    m.indexed_iter()
        .map(|((i, j), &v)| {
            let d = if i == j { v - 1.0 } else { v };
            d * d
        })
        .sum::<f64>()
        .sqrt()
}

/// `T^p` by repeated squaring, `p ≥ 1`.
fn matrix_power(t: &Array2<f64>, p: u32) -> Array2<f64> {
    debug_assert!(p >= 1);
    let mut result: Option<Array2<f64>> = None;
    let mut base = t.clone();
    let mut e = p;
    loop {
        if e & 1 == 1 {
            result = Some(match result {
                Some(r) => r.dot(&base),
                None => base.clone(),
            });
        }
        e >>= 1;
        if e == 0 {
            break;
        }
        base = base.dot(&base);
    }
    result.unwrap_or_else(|| Array2::eye(t.nrows()))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::rng::SplitMix64;

    /// One push: row indices and their gradients.
    type Push = (Vec<usize>, Vec<f32>);

    /// A seeded sequence of sparse pushes on a `rows × dim` shard; rows repeat within a push
    /// (the first push always lists row 0 twice).
    fn pushes(seed: u64, rows: usize, dim: usize, steps: usize) -> Vec<Push> {
        let mut rng = SplitMix64::for_item(seed, 7);
        (0..steps)
            .map(|step| {
                let n = 1 + (rng.next_u64() % 6) as usize;
                let mut idx: Vec<usize> = (0..n).map(|_| (rng.next_u64() % rows as u64) as usize).collect();
                if step == 0 {
                    idx.extend([0, 0]);
                }
                let grads = (0..idx.len() * dim).map(|_| rng.next_normal() as f32).collect();
                (idx, grads)
            })
            .collect()
    }

    fn initial_params(seed: u64, len: usize) -> Vec<f32> {
        let mut rng = SplitMix64::for_item(seed, 1);
        (0..len).map(|_| rng.next_normal() as f32).collect()
    }

    /// The element-wise rules written out directly, with separate state vectors.
    fn reference_elementwise(spec: OptimizerSpec, mut x: Vec<f32>, dim: usize, pushes: &[Push]) -> Vec<f32> {
        let n = x.len();
        let (mut a, mut b) = (vec![0.0f32; n], vec![0.0f32; n]);
        let mut t = vec![0u64; n / dim];
        for (rows, grads) in pushes {
            for (k, &r) in rows.iter().enumerate() {
                t[r] += 1;
                for j in 0..dim {
                    let i = r * dim + j;
                    let g = grads[k * dim + j];
                    match spec {
                        OptimizerSpec::Sgd { lr } => x[i] -= lr * g,
                        OptimizerSpec::Momentum { lr, mu } => {
                            a[i] = mu * a[i] - lr * g;
                            x[i] += a[i];
                        }
                        OptimizerSpec::Nesterov { lr, mu } => {
                            let v_prev = a[i];
                            a[i] = mu * a[i] - lr * g;
                            x[i] = x[i] - mu * v_prev + (1.0 + mu) * a[i];
                        }
                        OptimizerSpec::AdaGrad { lr, eps } => {
                            a[i] += g * g;
                            x[i] -= lr * g / (a[i].sqrt() + eps);
                        }
                        OptimizerSpec::RmsProp { lr, rho, eps } => {
                            a[i] = rho * a[i] + (1.0 - rho) * g * g;
                            x[i] -= lr * g / (a[i].sqrt() + eps);
                        }
                        OptimizerSpec::Adam { lr, beta1, beta2, eps } => {
                            a[i] = beta1 * a[i] + (1.0 - beta1) * g;
                            b[i] = beta2 * b[i] + (1.0 - beta2) * g * g;
                            let m_hat = a[i] / (1.0 - beta1.powi(t[r] as i32));
                            let v_hat = b[i] / (1.0 - beta2.powi(t[r] as i32));
                            x[i] -= lr * m_hat / (v_hat.sqrt() + eps);
                        }
                        OptimizerSpec::Shampoo { .. } => unreachable!(),
                    }
                }
            }
        }
        x
    }

    fn elementwise_spec() -> impl Strategy<Value = OptimizerSpec> {
        let lr = 1e-4f32..1.0;
        let decay = 0.0f32..0.9999;
        let eps = 1e-10f32..1e-2;
        prop_oneof![
            lr.clone().prop_map(|lr| OptimizerSpec::Sgd { lr }),
            (lr.clone(), decay.clone()).prop_map(|(lr, mu)| OptimizerSpec::Momentum { lr, mu }),
            (lr.clone(), decay.clone()).prop_map(|(lr, mu)| OptimizerSpec::Nesterov { lr, mu }),
            (lr.clone(), eps.clone()).prop_map(|(lr, eps)| OptimizerSpec::AdaGrad { lr, eps }),
            (lr.clone(), decay.clone(), eps.clone()).prop_map(|(lr, rho, eps)| OptimizerSpec::RmsProp { lr, rho, eps }),
            (lr, decay.clone(), decay, eps).prop_map(|(lr, beta1, beta2, eps)| OptimizerSpec::Adam {
                lr,
                beta1,
                beta2,
                eps
            }),
        ]
    }

    fn any_spec() -> impl Strategy<Value = OptimizerSpec> {
        prop_oneof![
            4 => elementwise_spec(),
            1 => (1e-6f32..10.0, 1e-12f32..1.0, 1u32.., 1u32..).prop_map(|(lr, eps, update_every, max_dim)| {
                OptimizerSpec::Shampoo { lr, eps, update_every, max_dim }
            }),
        ]
    }

    proptest! {
        #[test]
        fn elementwise_rules_match_reference_bit_for_bit(spec in elementwise_spec(), seed in any::<u64>()) {
            let (rows, dim) = (8, 3);
            let pushes = pushes(seed, rows, dim, 50);
            let init = initial_params(seed, rows * dim);
            let expected = reference_elementwise(spec, init.clone(), dim, &pushes);
            let mut params = init;
            let mut opt = ShardOptimizer::new(spec, rows, dim);
            for (idx, grads) in &pushes {
                opt.apply(&mut params, idx, grads);
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(&params), bits(&expected), "{}", spec);
        }

        #[test]
        fn lock_free_path_matches_apply(spec in elementwise_spec(), seed in any::<u64>()) {
            let (rows, dim) = (8, 3);
            let pushes = pushes(seed, rows, dim, 20);
            let mut by_apply = initial_params(seed, rows * dim);
            let mut by_hand = by_apply.clone();
            let (mut a, mut b) = (ShardOptimizer::new(spec, rows, dim), ShardOptimizer::new(spec, rows, dim));
            let slots = spec.slots();
            for (idx, grads) in &pushes {
                a.apply(&mut by_apply, idx, grads);
                for (&row, grad) in idx.iter().zip(grads.chunks_exact(dim)) {
                    let step = b.row_step(row);
                    let state = b.state_mut(row);
                    for j in 0..dim {
                        let p = &mut by_hand[row * dim + j];
                        *p = spec.step_element(step, *p, grad[j], &mut state[j * slots..(j + 1) * slots]);
                    }
                }
            }
            prop_assert_eq!(by_apply, by_hand);
        }

        #[test]
        fn display_round_trips(spec in any_spec()) {
            let text = spec.to_string();
            let parsed: OptimizerSpec = text.parse().map_err(TestCaseError::fail)?;
            prop_assert_eq!(parsed, spec);
            prop_assert_eq!(parsed.to_string(), text);
        }

        #[test]
        fn inverse_fourth_root_matches_eigendecomposition(
            n in 1usize..=12,
            seed in any::<u64>(),
            log_lambdas in proptest::collection::vec(-3.0f64..=3.0, 12),
        ) {
            let q = random_orthogonal(n, seed);
            let lambdas: Vec<f64> = log_lambdas[..n].iter().map(|l| 10f64.powf(*l)).collect();
            let a = compose(&q, &lambdas);
            let expected = compose(&q, &lambdas.iter().map(|&l| l.powf(-0.25)).collect::<Vec<_>>());
            let got = inverse_pth_root(a.view(), 4);
            let err = (&got - &expected).iter().map(|x| x * x).sum::<f64>().sqrt();
            let norm = expected.iter().map(|x| x * x).sum::<f64>().sqrt();
            prop_assert!(err <= 1e-10 * norm, "relative error {}", err / norm);
        }
    }

    /// A random orthogonal matrix: modified Gram-Schmidt on a seeded Gaussian matrix.
    fn random_orthogonal(n: usize, seed: u64) -> Array2<f64> {
        let mut rng = SplitMix64::for_item(seed, 3);
        let mut q = Array2::from_shape_fn((n, n), |_| rng.next_normal());
        for j in 0..n {
            for k in 0..j {
                let dot = q.column(j).dot(&q.column(k));
                let qk = q.column(k).to_owned();
                q.column_mut(j).scaled_add(-dot, &qk);
            }
            let norm = q.column(j).dot(&q.column(j)).sqrt();
            q.column_mut(j).mapv_inplace(|x| x / norm);
        }
        q
    }

    /// `Q diag(d) Qᵀ`.
    fn compose(q: &Array2<f64>, d: &[f64]) -> Array2<f64> {
        let scaled = Array2::from_shape_fn(q.dim(), |(i, j)| q[[i, j]] * d[j]);
        scaled.dot(&q.t())
    }

    type Mat = Vec<Vec<f64>>;

    fn mat_mul(a: &Mat, b: &Mat) -> Mat {
        let (n, m, k) = (a.len(), b[0].len(), b.len());
        (0..n).map(|i| (0..m).map(|j| (0..k).map(|l| a[i][l] * b[l][j]).sum()).collect()).collect()
    }

    fn transpose(a: &Mat) -> Mat {
        (0..a[0].len()).map(|j| a.iter().map(|row| row[j]).collect()).collect()
    }

    fn identity(n: usize, scale: f64) -> Mat {
        (0..n).map(|i| (0..n).map(|j| if i == j { scale } else { 0.0 }).collect()).collect()
    }

    /// `A^{-1/4}` of a symmetric positive definite `A` by cyclic Jacobi eigen-decomposition.
    fn jacobi_inverse_fourth_root(a: &Mat) -> Mat {
        let n = a.len();
        let mut a = a.clone();
        let mut v = identity(n, 1.0);
        for _sweep in 0..100 {
            let off: f64 = (0..n)
                .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
                .map(|(i, j)| a[i][j] * a[i][j])
                .sum();
            if off < 1e-30 {
                break;
            }
            for p in 0..n {
                for q in p + 1..n {
                    if a[p][q] == 0.0 {
                        continue;
                    }
                    let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
                    let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                    let t = if theta == 0.0 { 1.0 } else { t };
                    let c = 1.0 / (t * t + 1.0).sqrt();
                    let s = t * c;
                    for row in a.iter_mut() {
                        let (akp, akq) = (row[p], row[q]);
                        row[p] = c * akp - s * akq;
                        row[q] = s * akp + c * akq;
                    }
                    let (head, tail) = a.split_at_mut(q);
                    for (x, y) in head[p].iter_mut().zip(tail[0].iter_mut()) {
                        let (apk, aqk) = (*x, *y);
                        *x = c * apk - s * aqk;
                        *y = s * apk + c * aqk;
                    }
                    for row in v.iter_mut() {
                        let (vp, vq) = (row[p], row[q]);
                        row[p] = c * vp - s * vq;
                        row[q] = s * vp + c * vq;
                    }
                }
            }
        }
        let d: Vec<f64> = (0..n).map(|i| a[i][i].powf(-0.25)).collect();
        let scaled: Mat = v.iter().map(|row| row.iter().zip(&d).map(|(x, di)| x * di).collect()).collect();
        mat_mul(&scaled, &transpose(&v))
    }

    /// The push as a dense `rows × dim` matrix, duplicate rows summed.
    fn dense_gradient(idx: &[usize], grads: &[f32], rows: usize, dim: usize) -> Mat {
        let mut g = vec![vec![0.0; dim]; rows];
        for (&row, grad) in idx.iter().zip(grads.chunks_exact(dim)) {
            g[row].iter_mut().zip(grad).for_each(|(x, &y)| *x += f64::from(y));
        }
        g
    }

    /// Shampoo written out with plain matrices and Jacobi roots; `None` for a side past `max_dim`.
    fn reference_shampoo(spec: OptimizerSpec, mut w: Vec<f32>, rows: usize, dim: usize, pushes: &[Push]) -> Vec<f32> {
        let OptimizerSpec::Shampoo { lr, eps, update_every, max_dim } = spec else { unreachable!() };
        let keep = |n: usize| n <= max_dim as usize;
        let mut l = keep(rows).then(|| identity(rows, f64::from(eps)));
        let mut r = keep(dim).then(|| identity(dim, f64::from(eps)));
        let (mut l_root, mut r_root) = (None, None);
        for (step, (idx, grads)) in pushes.iter().enumerate() {
            let g = dense_gradient(idx, grads, rows, dim);
            let recompute = step % update_every as usize == 0;
            if let Some(l) = &mut l {
                let ggt = mat_mul(&g, &transpose(&g));
                l.iter_mut().flatten().zip(ggt.iter().flatten()).for_each(|(x, y)| *x += y);
                if recompute {
                    l_root = Some(jacobi_inverse_fourth_root(l));
                }
            }
            if let Some(r) = &mut r {
                let gtg = mat_mul(&transpose(&g), &g);
                r.iter_mut().flatten().zip(gtg.iter().flatten()).for_each(|(x, y)| *x += y);
                if recompute {
                    r_root = Some(jacobi_inverse_fourth_root(r));
                }
            }
            let mut u = g;
            if let Some(lr) = &l_root {
                u = mat_mul(lr, &u);
            }
            if let Some(rr) = &r_root {
                u = mat_mul(&u, rr);
            }
            for (x, d) in w.iter_mut().zip(u.iter().flatten()) {
                *x = (f64::from(*x) - f64::from(lr) * d) as f32;
            }
        }
        w
    }

    fn relative_error(got: &[f32], expected: &[f32]) -> f64 {
        let err: f64 = got.iter().zip(expected).map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2)).sum();
        let norm: f64 = expected.iter().map(|b| f64::from(*b).powi(2)).sum();
        (err / norm).sqrt()
    }

    fn run(spec: OptimizerSpec, mut params: Vec<f32>, rows: usize, dim: usize, pushes: &[Push]) -> Vec<f32> {
        let mut opt = ShardOptimizer::new(spec, rows, dim);
        for (idx, grads) in pushes {
            opt.apply(&mut params, idx, grads);
        }
        params
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn shampoo_matches_reference(seed in any::<u64>(), eps in 1e-4f32..1e-1, lr in 1e-3f32..0.5) {
            let (rows, dim) = (5, 4);
            let spec = OptimizerSpec::Shampoo { lr, eps, update_every: 3, max_dim: 1024 };
            let pushes = pushes(seed, rows, dim, 12);
            let init = initial_params(seed, rows * dim);
            let expected = reference_shampoo(spec, init.clone(), rows, dim, &pushes);
            let got = run(spec, init.clone(), rows, dim, &pushes);
            prop_assert!(relative_error(&got, &expected) <= 1e-5, "got {:?}, expected {:?}", got, expected);
            prop_assert!(relative_error(&init, &expected) > 1e-3, "the steps should move the block");
        }
    }

    #[test]
    fn shampoo_side_past_max_dim_is_identity() {
        // rows = 5 > max_dim = 4 = dim: the left side is the identity, so one step is lr·G·R^{-1/4}.
        for (rows, dim, max_dim) in [(5, 4, 4), (3, 6, 4)] {
            let spec = OptimizerSpec::Shampoo { lr: 0.1, eps: 1e-3, update_every: 1, max_dim };
            let push = pushes(11, rows, dim, 1);
            let init = initial_params(11, rows * dim);
            let got = run(spec, init.clone(), rows, dim, &push);
            let g = dense_gradient(&push[0].0, &push[0].1, rows, dim);
            let precondition = |mut s: Mat| {
                let n = s.len();
                s.iter_mut().flatten().zip(identity(n, 1e-3).iter().flatten()).for_each(|(x, y)| *x += y);
                jacobi_inverse_fourth_root(&s)
            };
            let update = if rows > max_dim as usize {
                mat_mul(&g, &precondition(mat_mul(&transpose(&g), &g)))
            } else {
                mat_mul(&precondition(mat_mul(&g, &transpose(&g))), &g)
            };
            let expected: Vec<f32> =
                init.iter().zip(update.iter().flatten()).map(|(w, u)| (f64::from(*w) - 0.1 * u) as f32).collect();
            assert!(relative_error(&got, &expected) <= 1e-6, "{rows}x{dim}: {got:?} vs {expected:?}");
            let opt = ShardOptimizer::new(spec, rows, dim);
            let state = opt.shampoo.as_ref().unwrap();
            assert_eq!(state.left.is_some(), rows <= max_dim as usize);
            assert_eq!(state.right.is_some(), dim <= max_dim as usize);
            let kept = rows.min(dim) as u128;
            assert_eq!(spec.state_bytes(rows as u64, dim as u64), 2 * kept * kept * 8);
        }
    }

    #[test]
    fn shampoo_decreases_least_squares_loss() {
        // Rows of W are 4 linear models on 6 features; loss = |W Xᵀ - Y|² / (2n) over n samples.
        let (r, d, n) = (4, 6, 32);
        let mut rng = SplitMix64::for_item(5, 0);
        let x = Array2::from_shape_fn((n, d), |_| rng.next_normal());
        let w_true = Array2::from_shape_fn((r, d), |_| rng.next_normal());
        let y = w_true.dot(&x.t());
        let mut w = vec![0.0f32; r * d];
        let loss_grad = |w: &[f32]| {
            let wm = Array2::from_shape_fn((r, d), |(i, j)| f64::from(w[i * d + j]));
            let resid = wm.dot(&x.t()) - &y;
            let loss = resid.iter().map(|e| e * e).sum::<f64>() / (2.0 * n as f64);
            (loss, resid.dot(&x) / n as f64)
        };
        let spec = OptimizerSpec::Shampoo { lr: 0.5, eps: 1e-4, update_every: 2, max_dim: 1024 };
        let mut opt = ShardOptimizer::new(spec, r, d);
        let (initial, _) = loss_grad(&w);
        for _ in 0..100 {
            let (_, g) = loss_grad(&w);
            let grads: Vec<f32> = g.iter().map(|&v| v as f32).collect();
            opt.apply(&mut w, &(0..r).collect::<Vec<_>>(), &grads);
        }
        let (last, _) = loss_grad(&w);
        assert!(last < 0.05 * initial, "loss went from {initial} to {last}");
    }

    #[test]
    fn known_first_steps() {
        let step = |spec: OptimizerSpec, grads: &[f32]| {
            let mut opt = ShardOptimizer::new(spec, 1, 1);
            let mut x = [1.0f32];
            for &g in grads {
                opt.apply(&mut x, &[0], &[g]);
            }
            x[0]
        };
        // Adam's first step moves by about lr·sign(g), whatever |g|.
        for g in [3.0f32, -0.02, 1e-3] {
            let moved = 1.0 - step(OptimizerSpec::Adam { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8 }, &[g]);
            assert!((moved - 0.01 * g.signum()).abs() < 1e-6, "g = {g}: moved {moved}");
        }
        // Momentum: v1 = -0.1, v2 = 0.9·(-0.1) - 0.1 = -0.19, so x = 1 - 0.29.
        let x = step(OptimizerSpec::Momentum { lr: 0.1, mu: 0.9 }, &[1.0, 1.0]);
        assert!((x - 0.71).abs() < 1e-6, "{x}");
        // Nesterov's first step: v = -0.1, x = 1 - 0 + 1.9·(-0.1).
        let x = step(OptimizerSpec::Nesterov { lr: 0.1, mu: 0.9 }, &[1.0]);
        assert!((x - 0.81).abs() < 1e-6, "{x}");
        // AdaGrad's first step is lr·sign(g); RMSprop's is lr/sqrt(1-rho).
        let x = step(OptimizerSpec::AdaGrad { lr: 0.1, eps: 1e-10 }, &[-4.0]);
        assert!((x - 1.1).abs() < 1e-6, "{x}");
        let x = step(OptimizerSpec::RmsProp { lr: 0.01, rho: 0.9, eps: 1e-8 }, &[2.0]);
        assert!((x - (1.0 - 0.01 / 0.1f32.sqrt())).abs() < 1e-6, "{x}");
        let x = step(OptimizerSpec::Sgd { lr: 0.5 }, &[2.0]);
        assert_eq!(x, 0.0);
    }

    #[test]
    fn adam_step_counts_per_row() {
        // Row 1 is first pushed after 10 steps of row 0; its first step still moves by about lr.
        let spec = OptimizerSpec::Adam { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8 };
        let mut opt = ShardOptimizer::new(spec, 2, 1);
        let mut x = [0.0f32, 0.0];
        for _ in 0..10 {
            opt.apply(&mut x, &[0], &[1.0]);
        }
        opt.apply(&mut x, &[1], &[0.5]);
        assert!((x[1] + 0.01).abs() < 1e-6, "{}", x[1]);
        assert_eq!(opt.row_step(1), 2);
        assert_eq!(opt.row_step(0), 11);
    }

    #[test]
    fn defaults_and_custom_values_parse() {
        let cases = [
            ("sgd", OptimizerSpec::Sgd { lr: 0.01 }),
            ("momentum", OptimizerSpec::Momentum { lr: 0.01, mu: 0.9 }),
            ("nesterov", OptimizerSpec::Nesterov { lr: 0.01, mu: 0.9 }),
            ("adagrad", OptimizerSpec::AdaGrad { lr: 0.01, eps: 1e-10 }),
            ("rmsprop", OptimizerSpec::RmsProp { lr: 0.001, rho: 0.9, eps: 1e-8 }),
            ("adam", OptimizerSpec::Adam { lr: 0.001, beta1: 0.9, beta2: 0.999, eps: 1e-8 }),
            ("shampoo", OptimizerSpec::Shampoo { lr: 0.1, eps: 1e-4, update_every: 10, max_dim: 1024 }),
        ];
        for (name, spec) in cases {
            assert_eq!(name.parse(), Ok(spec));
            assert_eq!(spec.name(), name);
            assert_eq!(spec.to_string().parse(), Ok(spec));
            assert!(spec.to_string().starts_with(&format!("{name}:lr=")), "{spec}");
        }
        assert_eq!(
            OptimizerSpec::Adam { lr: 0.001, beta1: 0.9, beta2: 0.999, eps: 1e-8 }.to_string(),
            "adam:lr=0.001,beta1=0.9,beta2=0.999,eps=0.00000001"
        );
        assert_eq!(
            " adam: beta2 = 0.99 ,lr=0.5".parse(),
            Ok(OptimizerSpec::Adam { lr: 0.5, beta1: 0.9, beta2: 0.99, eps: 1e-8 })
        );
        assert_eq!(
            "shampoo:max_dim=64,update_every=1".parse(),
            Ok(OptimizerSpec::Shampoo { lr: 0.1, eps: 1e-4, update_every: 1, max_dim: 64 })
        );
        assert_eq!("momentum:mu=0".parse(), Ok(OptimizerSpec::Momentum { lr: 0.01, mu: 0.0 }));
    }

    #[test]
    fn parse_errors_name_the_option_and_range() {
        let err = |s: &str| s.parse::<OptimizerSpec>().unwrap_err();
        assert_eq!(
            err("adamw"),
            "unknown optimizer 'adamw' (expected sgd, momentum, nesterov, adagrad, rmsprop, adam or shampoo)"
        );
        assert_eq!(err("adam:gamma=1"), "adam has no hyper-parameter 'gamma' (expected lr, beta1, beta2, eps)");
        assert_eq!(err("sgd:mu=0.5"), "sgd has no hyper-parameter 'mu' (expected lr)");
        assert_eq!(err("adam:beta1=1.5"), "adam: beta1 = 1.5 is out of range (must be in [0, 1))");
        assert_eq!(err("adam:beta2=1"), "adam: beta2 = 1 is out of range (must be in [0, 1))");
        assert_eq!(err("sgd:lr=-1"), "sgd: lr = -1 is out of range (must be a positive finite number)");
        assert_eq!(err("sgd:lr=0"), "sgd: lr = 0 is out of range (must be a positive finite number)");
        assert_eq!(err("sgd:lr=inf"), "sgd: lr = inf is out of range (must be a positive finite number)");
        assert_eq!(err("rmsprop:eps=NaN"), "rmsprop: eps = NaN is out of range (must be a positive finite number)");
        assert_eq!(err("adam:beta1=x"), "adam: beta1 = 'x' is not a number");
        assert_eq!(err("adam:lr=0.1,lr=0.2"), "adam: lr is given twice");
        assert_eq!(err("adam:lr"), "adam: 'lr' is not of the form key=value");
        assert_eq!(err("adam:"), "adam: '' is not of the form key=value");
        assert_eq!(
            err("shampoo:update_every=0"),
            "shampoo: update_every = 0 is out of range (must be a whole number in [1, 4294967295])"
        );
        assert_eq!(
            err("shampoo:max_dim=-3"),
            "shampoo: max_dim = -3 is out of range (must be a whole number in [1, 4294967295])"
        );
        assert_eq!(err("shampoo:max_dim=1.5"), "shampoo: max_dim = '1.5' is not a whole number");
    }

    #[test]
    fn validate_checks_specs_built_in_code() {
        assert_eq!(
            OptimizerSpec::Sgd { lr: -1.0 }.validate(),
            Err("sgd: lr = -1 is out of range (must be a positive finite number)".to_string())
        );
        assert_eq!(
            OptimizerSpec::Momentum { lr: 0.1, mu: -0.5 }.validate(),
            Err("momentum: mu = -0.5 is out of range (must be in [0, 1))".to_string())
        );
        assert_eq!(
            OptimizerSpec::Shampoo { lr: 0.1, eps: 1e-4, update_every: 1, max_dim: 0 }.validate(),
            Err("shampoo: max_dim = 0 is out of range (must be a whole number in [1, 4294967295])".to_string())
        );
        assert_eq!(OptimizerSpec::Adam { lr: 0.1, beta1: 0.0, beta2: 0.5, eps: 1.0 }.validate(), Ok(()));
    }

    #[test]
    fn serde_uses_the_string_form_and_validates() {
        let spec = OptimizerSpec::RmsProp { lr: 0.002, rho: 0.95, eps: 1e-6 };
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(json, format!("\"{spec}\""));
        assert_eq!(serde_json::from_str::<OptimizerSpec>(&json).unwrap(), spec);
        assert_eq!(serde_json::from_str::<OptimizerSpec>("\"adam\"").unwrap(), "adam".parse().unwrap());
        let err = serde_json::from_str::<OptimizerSpec>("\"adam:beta1=2\"").unwrap_err().to_string();
        assert!(err.contains("beta1 = 2 is out of range"), "{err}");
        assert!(serde_json::from_str::<OptimizerSpec>("\"adamw\"").is_err());
    }

    #[test]
    fn accessors() {
        let adam: OptimizerSpec = "adam".parse().unwrap();
        assert_eq!(adam.lr(), 0.001);
        assert_eq!(adam.with_lr(0.5).lr(), 0.5);
        assert_eq!(adam.with_lr(0.5), OptimizerSpec::Adam { lr: 0.5, beta1: 0.9, beta2: 0.999, eps: 1e-8 });
        let slots: Vec<usize> = ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "shampoo"]
            .iter()
            .map(|n| n.parse::<OptimizerSpec>().unwrap().slots())
            .collect();
        assert_eq!(slots, [0, 1, 1, 1, 1, 2, 0]);
        let shampoo: OptimizerSpec = "shampoo:max_dim=100".parse().unwrap();
        assert!(adam.is_elementwise() && !shampoo.is_elementwise());
        assert_eq!(adam.state_bytes(10, 3), 10 * 3 * 2 * 4 + 10 * 8);
        assert_eq!("momentum".parse::<OptimizerSpec>().unwrap().state_bytes(10, 3), 10 * 3 * 4);
        assert_eq!("sgd".parse::<OptimizerSpec>().unwrap().state_bytes(10, 3), 0);
        assert_eq!(shampoo.state_bytes(50, 200), 2 * 50 * 50 * 8);
        assert_eq!(shampoo.state_bytes(u64::MAX, u64::MAX), 0);
        let mut opt = ShardOptimizer::new(adam, 4, 3);
        assert_eq!(opt.state_mut(2).len(), 6);
        assert_eq!(opt.spec(), &adam);
    }
}
