//! The small transformations optimizers are chains of, as optax's
//! `optax.transforms` and `scale_by_*`, with optax's formulas and defaults.

use super::{EmptyState, GradientTransformation, Kernel, OptState, Schedule, for_each_leaf, join};
use crate::scope::ScopeError;
use crate::value::Real;
use crate::variables::{Leaf, Variables};
use ndarray::{ArcArray, IxDyn};
use std::sync::Arc;

// ----- states -----

/// A step count (optax's `count`), saved as an integer leaf `prefix/count`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count(pub u64);

impl OptState for Count {
    fn save(&self, collection: &str, prefix: &str, out: &mut Variables) {
        let leaf = Leaf::I64(ArcArray::from_elem(IxDyn(&[]), self.0 as i64));
        out.insert(collection, &join(prefix, "count"), leaf)
            .unwrap_or_else(|_| unreachable!("a fresh path"));
    }
    fn load(&mut self, collection: &str, prefix: &str, from: &Variables) -> Result<(), ScopeError> {
        let path = join(prefix, "count");
        match from.get(collection, &path) {
            Some(Leaf::I64(a)) if a.len() == 1 => {
                self.0 = a.iter().next().map_or(0, |&c| c.max(0) as u64);
                Ok(())
            }
            Some(other) => Err(ScopeError::TypeMismatch {
                collection: collection.into(),
                path,
                expected: "an integer scalar",
                found: other.kind(),
            }),
            None => Err(ScopeError::ParamNotFound {
                path: format!("{collection}/{path}"),
            }),
        }
    }
}

/// Trees of the params' structure (moments, traces): each saved as
/// `prefix/name/collection/path`.
#[derive(Clone, Debug, PartialEq)]
pub struct Moments {
    /// The trees' names and values.
    pub trees: Vec<(&'static str, Variables)>,
}

impl OptState for Moments {
    fn save(&self, collection: &str, prefix: &str, out: &mut Variables) {
        for (name, tree) in &self.trees {
            for (c, p, leaf) in tree.leaves() {
                let path = join(&join(prefix, name), &join(c, p));
                out.insert(collection, &path, leaf.clone())
                    .unwrap_or_else(|_| unreachable!("a fresh path"));
            }
        }
    }
    fn load(&mut self, collection: &str, prefix: &str, from: &Variables) -> Result<(), ScopeError> {
        for (name, tree) in &mut self.trees {
            let mut loaded = tree.clone();
            for (c, p, leaf) in tree.leaves() {
                let path = join(&join(prefix, name), &join(c, p));
                let Some(stored) = from.get(collection, &path) else {
                    return Err(ScopeError::ParamNotFound {
                        path: format!("{collection}/{path}"),
                    });
                };
                if stored.shape() != leaf.shape() {
                    return Err(ScopeError::ShapeMismatch {
                        collection: collection.into(),
                        path,
                        expected: leaf.shape().to_vec(),
                        found: stored.shape().to_vec(),
                    });
                }
                if stored.kind() != leaf.kind() {
                    return Err(ScopeError::TypeMismatch {
                        collection: collection.into(),
                        path,
                        expected: leaf.kind(),
                        found: stored.kind(),
                    });
                }
                *loaded
                    .leaf_mut(c, p)
                    .unwrap_or_else(|| unreachable!("listed")) = stored.clone();
            }
            *tree = loaded;
        }
        Ok(())
    }
}

/// A count and trees: Adam's and Lion's state (optax's `ScaleByAdamState(count, mu,
/// nu)`), saved as `prefix/count`, `prefix/mu/..`.
#[derive(Clone, Debug, PartialEq)]
pub struct CountAndMoments {
    pub count: Count,
    pub moments: Moments,
}

impl OptState for CountAndMoments {
    fn save(&self, collection: &str, prefix: &str, out: &mut Variables) {
        self.count.save(collection, prefix, out);
        self.moments.save(collection, prefix, out);
    }
    fn load(&mut self, collection: &str, prefix: &str, from: &Variables) -> Result<(), ScopeError> {
        self.count.load(collection, prefix, from)?;
        self.moments.load(collection, prefix, from)
    }
}

fn moments(trees: Vec<(&'static str, Variables)>) -> Moments {
    Moments { trees }
}

/// The tree of `params`' structure with every float element `v`.
fn full_like(params: &Variables, v: f64) -> Variables {
    params.zeros_like().map(|_| v)
}

/// Two mutable trees of one state.
fn two<'a>(trees: &'a mut [(&'static str, Variables)]) -> (&'a mut Variables, &'a mut Variables) {
    let (a, b) = trees.split_at_mut(1);
    (&mut a[0].1, &mut b[0].1)
}

// ----- scaling -----

/// Multiplies the updates by `step_size` (optax's `scale`).
///
/// ```
/// use adjoint::optim::{self, GradientTransformation};
/// let g = adjoint::Variables::new().with("params", "w", 2.0).unwrap();
/// let tx = optim::scale(-0.5);
/// assert_eq!(tx.update(g.clone(), &mut tx.init(&g), &g).unwrap().to_string(), r#"{"params": {"w": -1.0}}"#);
/// ```
pub fn scale(step_size: f64) -> Scale {
    Scale(step_size)
}

/// See [`scale`].
#[derive(Clone, Copy, Debug)]
pub struct Scale(pub f64);

struct Times(f64);

impl Kernel for Times {
    fn run<A: Real>(&self, u: &mut [A], _: &mut [&mut [A]], _: &[A]) {
        let s = A::lit(self.0);
        u.iter_mut().for_each(|g| *g = s * *g);
    }
}

impl GradientTransformation for Scale {
    type State = EmptyState;
    fn init(&self, _: &Variables) -> EmptyState {
        EmptyState
    }
    fn update(
        &self,
        mut updates: Variables,
        _: &mut EmptyState,
        _: &Variables,
    ) -> Result<Variables, ScopeError> {
        for_each_leaf(&mut updates, &mut [], None, &Times(self.0))?;
        Ok(updates)
    }
}

/// Multiplies the updates by `schedule(count)`, the count of steps so far (optax's
/// `scale_by_schedule`).
///
/// ```
/// use adjoint::optim::{self, GradientTransformation};
/// let g = adjoint::Variables::new().with("params", "w", 1.0).unwrap();
/// let tx = optim::scale_by_schedule(optim::linear_schedule(1.0, 0.0, 2, 0));
/// let mut state = tx.init(&g);
/// assert_eq!(tx.update(g.clone(), &mut state, &g).unwrap().to_string(), r#"{"params": {"w": 1.0}}"#);
/// assert_eq!(tx.update(g.clone(), &mut state, &g).unwrap().to_string(), r#"{"params": {"w": 0.5}}"#);
/// ```
pub fn scale_by_schedule(schedule: impl Into<Schedule>) -> ScaleBySchedule {
    ScaleBySchedule(schedule.into())
}

/// See [`scale_by_schedule`].
#[derive(Clone, Debug)]
pub struct ScaleBySchedule(pub Schedule);

impl GradientTransformation for ScaleBySchedule {
    type State = Count;
    fn init(&self, _: &Variables) -> Count {
        Count(0)
    }
    fn update(
        &self,
        mut updates: Variables,
        count: &mut Count,
        _: &Variables,
    ) -> Result<Variables, ScopeError> {
        for_each_leaf(&mut updates, &mut [], None, &Times(self.0.at(count.0)))?;
        count.0 += 1;
        Ok(updates)
    }
}

/// Multiplies the updates by `-learning_rate` (a number or a schedule): the descent
/// step every named optimizer ends with (optax's `scale_by_learning_rate`).
///
/// ```
/// use adjoint::optim::{self, GradientTransformation};
/// let g = adjoint::Variables::new().with("params", "w", 2.0).unwrap();
/// let tx = optim::scale_by_learning_rate(0.1);
/// assert_eq!(tx.update(g.clone(), &mut tx.init(&g), &g).unwrap().to_string(), r#"{"params": {"w": -0.2}}"#);
/// ```
pub fn scale_by_learning_rate(learning_rate: impl Into<Schedule>) -> ScaleBySchedule {
    let lr = learning_rate.into();
    ScaleBySchedule(Schedule::new(move |step| -lr.at(step)))
}

// ----- momentum -----

/// Momentum (optax's `trace`): `t = g + decay t`, the updates `t`, or `g + decay
/// t` with `nesterov`.
///
/// ```
/// use adjoint::optim::{self, GradientTransformation};
/// let g = adjoint::Variables::new().with("params", "w", 1.0).unwrap();
/// let tx = optim::trace(0.9, false);
/// let mut state = tx.init(&g);
/// tx.update(g.clone(), &mut state, &g).unwrap();
/// assert_eq!(tx.update(g.clone(), &mut state, &g).unwrap().to_string(), r#"{"params": {"w": 1.9}}"#);
/// ```
pub fn trace(decay: f64, nesterov: bool) -> Trace {
    Trace { decay, nesterov }
}

/// See [`trace`].
#[derive(Clone, Copy, Debug)]
pub struct Trace {
    pub decay: f64,
    pub nesterov: bool,
}

impl Kernel for Trace {
    fn run<A: Real>(&self, u: &mut [A], s: &mut [&mut [A]], _: &[A]) {
        let d = A::lit(self.decay);
        for (g, t) in u.iter_mut().zip(s[0].iter_mut()) {
            *t = *g + d * *t;
            *g = if self.nesterov { *g + d * *t } else { *t };
        }
    }
}

impl GradientTransformation for Trace {
    type State = Moments;
    fn init(&self, params: &Variables) -> Moments {
        moments(vec![("trace", params.zeros_like())])
    }
    fn update(
        &self,
        mut updates: Variables,
        state: &mut Moments,
        _: &Variables,
    ) -> Result<Variables, ScopeError> {
        for_each_leaf(&mut updates, &mut [&mut state.trees[0].1], None, self)?;
        Ok(updates)
    }
}

// ----- adaptive scalings -----

/// Adam's scaling (optax's `scale_by_adam`): first and second moments with bias
/// correction, `m̂ / (sqrt(v̂ + eps_root) + eps)`; with `nesterov`, Nadam's.
///
/// ```
/// use adjoint::optim::{self, GradientTransformation};
/// let g = adjoint::Variables::new().with("params", "w", 3.0).unwrap();
/// let tx = optim::scale_by_adam(0.9, 0.999, 1e-8, 0.0, false);
/// // The first step is the gradient's sign (up to eps).
/// let u = tx.update(g.clone(), &mut tx.init(&g), &g).unwrap();
/// assert!((u.get("params", "w").unwrap().to_f64_vec()[0] - 1.0).abs() < 1e-8);
/// ```
pub fn scale_by_adam(b1: f64, b2: f64, eps: f64, eps_root: f64, nesterov: bool) -> ScaleByAdam {
    ScaleByAdam {
        b1,
        b2,
        eps,
        eps_root,
        nesterov,
    }
}

/// See [`scale_by_adam`].
#[derive(Clone, Copy, Debug)]
pub struct ScaleByAdam {
    pub b1: f64,
    pub b2: f64,
    pub eps: f64,
    pub eps_root: f64,
    pub nesterov: bool,
}

struct AdamStep {
    adam: ScaleByAdam,
    /// `1 - b1^t`, `1 - b2^t` and (Nesterov) `1 - b1^(t+1)` for the step's `t`.
    c1: f64,
    c2: f64,
    c1_next: f64,
}

impl Kernel for AdamStep {
    fn run<A: Real>(&self, u: &mut [A], s: &mut [&mut [A]], _: &[A]) {
        let a = &self.adam;
        let (b1, b2) = (A::lit(a.b1), A::lit(a.b2));
        let (one_b1, one_b2) = (A::lit(1.0 - a.b1), A::lit(1.0 - a.b2));
        let (c1, c2, c1n) = (A::lit(self.c1), A::lit(self.c2), A::lit(self.c1_next));
        let (eps, eps_root) = (A::lit(a.eps), A::lit(a.eps_root));
        let (mu, nu) = s.split_at_mut(1);
        for ((g, m), v) in u.iter_mut().zip(mu[0].iter_mut()).zip(nu[0].iter_mut()) {
            *m = one_b1 * *g + b1 * *m;
            *v = one_b2 * (*g * *g) + b2 * *v;
            let m_hat = if a.nesterov {
                b1 * (*m / c1n) + one_b1 * (*g / c1)
            } else {
                *m / c1
            };
            let v_hat = *v / c2;
            *g = m_hat / ((v_hat + eps_root).sqrt() + eps);
        }
    }
}

impl GradientTransformation for ScaleByAdam {
    type State = CountAndMoments;
    fn init(&self, params: &Variables) -> CountAndMoments {
        CountAndMoments {
            count: Count(0),
            moments: moments(vec![
                ("mu", params.zeros_like()),
                ("nu", params.zeros_like()),
            ]),
        }
    }
    fn update(
        &self,
        mut updates: Variables,
        state: &mut CountAndMoments,
        _: &Variables,
    ) -> Result<Variables, ScopeError> {
        let CountAndMoments { count, moments: m } = state;
        let t = count.0 + 1;
        let step = AdamStep {
            adam: *self,
            c1: 1.0 - self.b1.powf(t as f64),
            c2: 1.0 - self.b2.powf(t as f64),
            c1_next: 1.0 - self.b1.powf(t as f64 + 1.0),
        };
        let (mu, nu) = two(&mut m.trees);
        for_each_leaf(&mut updates, &mut [mu, nu], None, &step)?;
        count.0 = t;
        Ok(updates)
    }
}

/// RMSProp's scaling (optax's `scale_by_rms`): `v = decay v + (1 - decay) g²`,
/// the updates `g / sqrt(v + eps)`, `v` starting at `initial_scale`.
///
/// ```
/// use adjoint::optim::{self, GradientTransformation};
/// let g = adjoint::Variables::new().with("params", "w", 2.0).unwrap();
/// let tx = optim::scale_by_rms(0.75, 0.0, 0.0);
/// let u = tx.update(g.clone(), &mut tx.init(&g), &g).unwrap();
/// assert_eq!(u.to_string(), r#"{"params": {"w": 2.0}}"#); // 2 / sqrt(0.25 * 4)
/// ```
pub fn scale_by_rms(decay: f64, eps: f64, initial_scale: f64) -> ScaleByRms {
    ScaleByRms {
        decay,
        eps,
        initial_scale,
    }
}

/// See [`scale_by_rms`].
#[derive(Clone, Copy, Debug)]
pub struct ScaleByRms {
    pub decay: f64,
    pub eps: f64,
    pub initial_scale: f64,
}

impl Kernel for ScaleByRms {
    fn run<A: Real>(&self, u: &mut [A], s: &mut [&mut [A]], _: &[A]) {
        let (d, one_d, eps) = (
            A::lit(self.decay),
            A::lit(1.0 - self.decay),
            A::lit(self.eps),
        );
        for (g, v) in u.iter_mut().zip(s[0].iter_mut()) {
            *v = one_d * (*g * *g) + d * *v;
            *g = (*v + eps).sqrt().recip() * *g;
        }
    }
}

impl GradientTransformation for ScaleByRms {
    type State = Moments;
    fn init(&self, params: &Variables) -> Moments {
        moments(vec![("nu", full_like(params, self.initial_scale))])
    }
    fn update(
        &self,
        mut updates: Variables,
        state: &mut Moments,
        _: &Variables,
    ) -> Result<Variables, ScopeError> {
        for_each_leaf(&mut updates, &mut [&mut state.trees[0].1], None, self)?;
        Ok(updates)
    }
}

/// Adagrad's scaling (optax's `scale_by_rss`): the sum of squared gradients `s`
/// (from `initial_accumulator_value`), the updates `g / sqrt(s + eps)` (zero where
/// `s` is zero).
///
/// ```
/// use adjoint::optim::{self, GradientTransformation};
/// let g = adjoint::Variables::new().with("params", "w", 2.0).unwrap();
/// let tx = optim::scale_by_rss(0.0, 0.0);
/// assert_eq!(tx.update(g.clone(), &mut tx.init(&g), &g).unwrap().to_string(), r#"{"params": {"w": 1.0}}"#);
/// ```
pub fn scale_by_rss(initial_accumulator_value: f64, eps: f64) -> ScaleByRss {
    ScaleByRss {
        initial_accumulator_value,
        eps,
    }
}

/// See [`scale_by_rss`].
#[derive(Clone, Copy, Debug)]
pub struct ScaleByRss {
    pub initial_accumulator_value: f64,
    pub eps: f64,
}

impl Kernel for ScaleByRss {
    fn run<A: Real>(&self, u: &mut [A], s: &mut [&mut [A]], _: &[A]) {
        let eps = A::lit(self.eps);
        for (g, t) in u.iter_mut().zip(s[0].iter_mut()) {
            *t = *g * *g + *t;
            let inv = if *t > A::zero() {
                (*t + eps).sqrt().recip()
            } else {
                A::zero()
            };
            *g = inv * *g;
        }
    }
}

impl GradientTransformation for ScaleByRss {
    type State = Moments;
    fn init(&self, params: &Variables) -> Moments {
        moments(vec![(
            "sum_of_squares",
            full_like(params, self.initial_accumulator_value),
        )])
    }
    fn update(
        &self,
        mut updates: Variables,
        state: &mut Moments,
        _: &Variables,
    ) -> Result<Variables, ScopeError> {
        for_each_leaf(&mut updates, &mut [&mut state.trees[0].1], None, self)?;
        Ok(updates)
    }
}

/// Lion's scaling (optax's `scale_by_lion`): the updates
/// `sign((1 - b1) g + b1 m)`, then `m = (1 - b2) g + b2 m`.
///
/// ```
/// use adjoint::optim::{self, GradientTransformation};
/// let g = adjoint::Variables::new().with("params", "w", -0.3).unwrap();
/// let tx = optim::scale_by_lion(0.9, 0.99);
/// assert_eq!(tx.update(g.clone(), &mut tx.init(&g), &g).unwrap().to_string(), r#"{"params": {"w": -1.0}}"#);
/// ```
pub fn scale_by_lion(b1: f64, b2: f64) -> ScaleByLion {
    ScaleByLion { b1, b2 }
}

/// See [`scale_by_lion`].
#[derive(Clone, Copy, Debug)]
pub struct ScaleByLion {
    pub b1: f64,
    pub b2: f64,
}

impl Kernel for ScaleByLion {
    fn run<A: Real>(&self, u: &mut [A], s: &mut [&mut [A]], _: &[A]) {
        let (b1, one_b1) = (A::lit(self.b1), A::lit(1.0 - self.b1));
        let (b2, one_b2) = (A::lit(self.b2), A::lit(1.0 - self.b2));
        for (g, m) in u.iter_mut().zip(s[0].iter_mut()) {
            let x = one_b1 * *g + b1 * *m;
            *m = one_b2 * *g + b2 * *m;
            // jnp.sign: zero at zero.
            *g = if x > A::zero() {
                A::one()
            } else if x < A::zero() {
                -A::one()
            } else {
                A::zero()
            };
        }
    }
}

impl GradientTransformation for ScaleByLion {
    type State = CountAndMoments;
    fn init(&self, params: &Variables) -> CountAndMoments {
        CountAndMoments {
            count: Count(0),
            moments: moments(vec![("mu", params.zeros_like())]),
        }
    }
    fn update(
        &self,
        mut updates: Variables,
        state: &mut CountAndMoments,
        _: &Variables,
    ) -> Result<Variables, ScopeError> {
        let CountAndMoments { count, moments: m } = state;
        for_each_leaf(&mut updates, &mut [&mut m.trees[0].1], None, self)?;
        count.0 += 1;
        Ok(updates)
    }
}

// ----- weight decay, clipping, masks -----

/// Adds `weight_decay · params` to the updates (optax's `add_decayed_weights`;
/// the decay a number or a schedule). With a mask, see [`masked`].
///
/// ```
/// use adjoint::optim::{self, GradientTransformation};
/// let p = adjoint::Variables::new().with("params", "w", 2.0).unwrap();
/// let tx = optim::add_decayed_weights(0.1);
/// assert_eq!(tx.update(p.zeros_like(), &mut tx.init(&p), &p).unwrap().to_string(), r#"{"params": {"w": 0.2}}"#);
/// ```
pub fn add_decayed_weights(weight_decay: impl Into<Schedule>) -> AddDecayedWeights {
    AddDecayedWeights(weight_decay.into())
}

/// See [`add_decayed_weights`].
#[derive(Clone, Debug)]
pub struct AddDecayedWeights(pub Schedule);

struct Decay(f64);

impl Kernel for Decay {
    fn run<A: Real>(&self, u: &mut [A], _: &mut [&mut [A]], p: &[A]) {
        let s = A::lit(self.0);
        u.iter_mut().zip(p).for_each(|(g, &p)| *g += s * p);
    }
}

impl GradientTransformation for AddDecayedWeights {
    type State = Count;
    fn init(&self, _: &Variables) -> Count {
        Count(0)
    }
    fn update(
        &self,
        mut updates: Variables,
        count: &mut Count,
        params: &Variables,
    ) -> Result<Variables, ScopeError> {
        let wd = self.0.at(count.0);
        count.0 += 1;
        if wd != 0.0 {
            for_each_leaf(&mut updates, &mut [], Some(params), &Decay(wd))?;
        }
        Ok(updates)
    }
}

/// Clips every element of the updates to `[-max_delta, max_delta]` (optax's
/// `clip`).
///
/// ```
/// use adjoint::optim::{self, GradientTransformation};
/// let g = adjoint::Variables::new().with("params", "w", ndarray::arr1(&[-3.0, 0.5]).into_shared()).unwrap();
/// let tx = optim::clip(1.0);
/// assert_eq!(tx.update(g.clone(), &mut tx.init(&g), &g).unwrap().to_string(), r#"{"params": {"w": [-1.0, 0.5]}}"#);
/// ```
pub fn clip(max_delta: f64) -> Clip {
    Clip(max_delta)
}

/// See [`clip`].
#[derive(Clone, Copy, Debug)]
pub struct Clip(pub f64);

impl Kernel for Clip {
    fn run<A: Real>(&self, u: &mut [A], _: &mut [&mut [A]], _: &[A]) {
        let m = A::lit(self.0);
        u.iter_mut().for_each(|g| *g = g.max(-m).min(m));
    }
}

impl GradientTransformation for Clip {
    type State = EmptyState;
    fn init(&self, _: &Variables) -> EmptyState {
        EmptyState
    }
    fn update(
        &self,
        mut updates: Variables,
        _: &mut EmptyState,
        _: &Variables,
    ) -> Result<Variables, ScopeError> {
        for_each_leaf(&mut updates, &mut [], None, self)?;
        Ok(updates)
    }
}

/// Scales the updates down to a global norm of `max_norm` when theirs is larger
/// (optax's `clip_by_global_norm`): `(u / norm) · max_norm`.
///
/// ```
/// use adjoint::optim::{self, GradientTransformation};
/// let g = adjoint::Variables::new().with("params", "w", ndarray::arr1(&[3.0, 4.0]).into_shared()).unwrap();
/// let tx = optim::clip_by_global_norm(1.0);
/// let u = tx.update(g.clone(), &mut tx.init(&g), &g).unwrap();
/// assert!((u.global_norm() - 1.0).abs() < 1e-15);
/// ```
pub fn clip_by_global_norm(max_norm: f64) -> ClipByGlobalNorm {
    ClipByGlobalNorm(max_norm)
}

/// See [`clip_by_global_norm`].
#[derive(Clone, Copy, Debug)]
pub struct ClipByGlobalNorm(pub f64);

struct Rescale {
    norm: f64,
    max: f64,
}

impl Kernel for Rescale {
    fn run<A: Real>(&self, u: &mut [A], _: &mut [&mut [A]], _: &[A]) {
        let (n, m) = (A::lit(self.norm), A::lit(self.max));
        u.iter_mut().for_each(|g| *g = (*g / n) * m);
    }
}

impl GradientTransformation for ClipByGlobalNorm {
    type State = EmptyState;
    fn init(&self, _: &Variables) -> EmptyState {
        EmptyState
    }
    fn update(
        &self,
        mut updates: Variables,
        _: &mut EmptyState,
        _: &Variables,
    ) -> Result<Variables, ScopeError> {
        let norm = updates.global_norm();
        if norm >= self.0 {
            for_each_leaf(&mut updates, &mut [], None, &Rescale { norm, max: self.0 })?;
        }
        Ok(updates)
    }
}

/// Which leaves a masked transformation applies to: `(collection, path, leaf)`.
pub type Mask = Arc<dyn Fn(&str, &str, &Leaf) -> bool + Send + Sync>;

/// `inner` applied only to the leaves `mask` selects; the others' updates pass
/// unchanged (optax's `masked`). `inner`'s state covers the selected leaves.
///
/// ```
/// use adjoint::optim::{self, GradientTransformation};
/// let p = adjoint::Variables::new()
///     .with("params", "Dense_0/kernel", ndarray::arr2(&[[1.0]]).into_shared()).unwrap()
///     .with("params", "Dense_0/bias", ndarray::arr1(&[1.0]).into_shared()).unwrap();
/// // Decay the matrices only, as adamw's mask usually does.
/// let tx = optim::masked(optim::add_decayed_weights(0.5), |_, _, leaf| leaf.shape().len() > 1);
/// let u = tx.update(p.zeros_like(), &mut tx.init(&p), &p).unwrap();
/// assert_eq!(u.to_string(), r#"{"params": {"Dense_0": {"bias": [0.0], "kernel": [[0.5]]}}}"#);
/// ```
pub fn masked<T: GradientTransformation>(
    inner: T,
    mask: impl Fn(&str, &str, &Leaf) -> bool + Send + Sync + 'static,
) -> Masked<T> {
    Masked {
        inner,
        mask: Arc::new(mask),
    }
}

/// See [`masked`].
#[derive(Clone)]
pub struct Masked<T> {
    pub inner: T,
    pub mask: Mask,
}

impl<T: std::fmt::Debug> std::fmt::Debug for Masked<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masked")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<T: GradientTransformation> GradientTransformation for Masked<T> {
    type State = T::State;
    fn init(&self, params: &Variables) -> T::State {
        self.inner
            .init(&params.filtered(|c, p, l| (self.mask)(c, p, l)))
    }
    fn update(
        &self,
        updates: Variables,
        state: &mut T::State,
        params: &Variables,
    ) -> Result<Variables, ScopeError> {
        // The mask is a function of the params (as optax's), read on the params'
        // leaf where there is one.
        let selected = |c: &str, p: &str, l: &Leaf| match params.get(c, p) {
            Some(pl) => (self.mask)(c, p, pl),
            None => (self.mask)(c, p, l),
        };
        let inner_updates = updates.filtered(selected);
        let inner_params = params.filtered(|c, p, l| (self.mask)(c, p, l));
        let new = self.inner.update(inner_updates, state, &inner_params)?;
        Ok(updates.overwritten(new))
    }
}
