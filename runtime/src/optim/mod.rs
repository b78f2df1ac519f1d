//! Optimizers in optax's shape: a [`GradientTransformation`] has `init(params) ->
//! state` and `update(grads, &mut state, params) -> updates`; small ones
//! ([`scale_by_adam`], [`trace`], [`clip_by_global_norm`], ...) compose with
//! [`chain`], and the named optimizers ([`sgd`], [`adam`], [`adamw`], ...) are such
//! chains, as in optax. [`apply_updates`] adds the updates to the params. Learning
//! rates are numbers or [`Schedule`]s of the step (computed in optax's precision:
//! see [`Schedule`]).
//!
//! Trees are [`Variables`]: the params, the gradients and the updates have one
//! structure (a typed error names the first path where they differ). Each
//! transformation's state is a value of its own type ([`OptState`]), whose leaves
//! a checkpoint saves under their paths. Updates run leaf by leaf in one fused pass
//! over the leaf and its state, in place.
//!
//! ```
//! use adjoint::optim::{self, GradientTransformation};
//! use adjoint::Variables;
//!
//! let params = Variables::new().with("params", "w", ndarray::arr1(&[1.0, -2.0]).into_shared()).unwrap();
//! let tx = optim::adam(0.1);
//! let mut state = tx.init(&params);
//! let grads = params.scale(2.0); // the gradient of sum(w²)
//! let updates = tx.update(grads, &mut state, &params).unwrap();
//! let params = optim::apply_updates(&params, &updates).unwrap();
//! // Adam's first step moves each weight by the learning rate (up to its eps),
//! // against its gradient.
//! let w = params.get("params", "w").unwrap().to_f64_vec();
//! assert!((w[0] - 0.9).abs() < 1e-8 && (w[1] + 1.9).abs() < 1e-8);
//! ```

mod alias;
mod schedule;
mod transform;

pub use alias::{Either, adagrad, adam, adamw, lion, matrices_only, rmsprop, sgd};
pub use schedule::{
    Schedule, constant_schedule, cosine_decay_schedule, exponential_decay, join_schedules,
    linear_schedule, piecewise_constant_schedule, polynomial_schedule,
    warmup_cosine_decay_schedule,
};
pub use transform::{
    AddDecayedWeights, Clip, ClipByGlobalNorm, Count, CountAndMoments, Mask, Masked, Moments,
    Scale, ScaleByAdam, ScaleByLion, ScaleByRms, ScaleByRss, ScaleBySchedule, Trace,
    add_decayed_weights, clip, clip_by_global_norm, masked, scale, scale_by_adam,
    scale_by_learning_rate, scale_by_lion, scale_by_rms, scale_by_rss, scale_by_schedule, trace,
};

use crate::scope::ScopeError;
use crate::value::Real;
use crate::variables::{Leaf, Variables};

/// A transformation of gradients into updates, with a state: optax's
/// `GradientTransformation`.
pub trait GradientTransformation {
    /// What the transformation remembers between steps.
    type State: OptState;

    /// The state before the first step, for `params`.
    fn init(&self, params: &Variables) -> Self::State;

    /// The updates for `updates` (the gradients, or the output of the previous
    /// transformation in a chain), advancing `state`; `params` are the current
    /// parameters (weight decay reads them).
    ///
    /// # Errors
    /// When `updates`, the state and `params` do not have one structure: the error
    /// names the first path that differs.
    fn update(
        &self,
        updates: Variables,
        state: &mut Self::State,
        params: &Variables,
    ) -> Result<Variables, ScopeError>;
}

/// An optimizer's state: a value whose leaves checkpoints save and restore, under
/// paths below a prefix (`0/mu/params/Dense_0/kernel` for the first moment of a
/// chain's first transformation).
pub trait OptState: Clone + std::fmt::Debug {
    /// Writes the state's leaves into `out` (collection `collection`), each under
    /// `prefix/`.
    fn save(&self, collection: &str, prefix: &str, out: &mut Variables);

    /// Reads the state's leaves back from `from`, as [`OptState::save`] wrote them.
    ///
    /// # Errors
    /// A leaf that is missing or has another shape or element type.
    fn load(&mut self, collection: &str, prefix: &str, from: &Variables) -> Result<(), ScopeError>;
}

/// No state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmptyState;

impl OptState for EmptyState {
    fn save(&self, _: &str, _: &str, _: &mut Variables) {}
    fn load(&mut self, _: &str, _: &str, _: &Variables) -> Result<(), ScopeError> {
        Ok(())
    }
}

/// `params + updates`, leaf by leaf (optax's `apply_updates`), in the params'
/// element types.
///
/// # Errors
/// When the trees' structures differ (naming the first path that does).
pub fn apply_updates(params: &Variables, updates: &Variables) -> Result<Variables, ScopeError> {
    params.add(updates)
}

/// Leaves the updates as they are (optax's `identity`).
///
/// ```
/// use adjoint::optim::{GradientTransformation, Identity};
/// let g = adjoint::Variables::new().with("params", "w", 1.0).unwrap();
/// assert_eq!(Identity.update(g.clone(), &mut Identity.init(&g), &g).unwrap(), g);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Identity;

impl GradientTransformation for Identity {
    type State = EmptyState;
    fn init(&self, _: &Variables) -> EmptyState {
        EmptyState
    }
    fn update(
        &self,
        updates: Variables,
        _: &mut EmptyState,
        _: &Variables,
    ) -> Result<Variables, ScopeError> {
        Ok(updates)
    }
}

/// Transformations applied in order, each to the updates of the one before:
/// optax's `chain`, of a tuple. The state is the tuple of their states, saved under
/// `0/`, `1/`, ...
///
/// ```
/// use adjoint::optim::{self, GradientTransformation};
/// let params = adjoint::Variables::new().with("params", "w", 1.0).unwrap();
/// // Clip, then plain gradient descent.
/// let tx = optim::chain((optim::clip(0.5), optim::scale(-0.1)));
/// let mut state = tx.init(&params);
/// let updates = tx.update(params.scale(3.0), &mut state, &params).unwrap();
/// assert_eq!(updates.to_string(), r#"{"params": {"w": -0.05}}"#);
/// ```
pub fn chain<T: GradientTransformation>(transformations: T) -> T {
    transformations
}

macro_rules! chain_tuple {
    ($($t:ident $i:tt),+) => {
        impl<$($t: GradientTransformation),+> GradientTransformation for ($($t,)+) {
            type State = ($($t::State,)+);
            fn init(&self, params: &Variables) -> Self::State {
                ($(self.$i.init(params),)+)
            }
            fn update(
                &self,
                updates: Variables,
                state: &mut Self::State,
                params: &Variables,
            ) -> Result<Variables, ScopeError> {
                $(let updates = self.$i.update(updates, &mut state.$i, params)?;)+
                Ok(updates)
            }
        }

        impl<$($t: OptState),+> OptState for ($($t,)+) {
            fn save(&self, collection: &str, prefix: &str, out: &mut Variables) {
                $(self.$i.save(collection, &join(prefix, stringify!($i)), out);)+
            }
            fn load(&mut self, collection: &str, prefix: &str, from: &Variables) -> Result<(), ScopeError> {
                $(self.$i.load(collection, &join(prefix, stringify!($i)), from)?;)+
                Ok(())
            }
        }
    };
}

chain_tuple!(A 0);
chain_tuple!(A 0, B 1);
chain_tuple!(A 0, B 1, C 2);
chain_tuple!(A 0, B 1, C 2, D 3);
chain_tuple!(A 0, B 1, C 2, D 3, E 4);
chain_tuple!(A 0, B 1, C 2, D 3, E 4, F 5);

/// `prefix/name` (or `name` under an empty prefix).
pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}/{name}")
    }
}

/// A fused elementwise step over one leaf: the updates (in place), the matching
/// leaves of the state's trees (in place) and of the params.
pub(crate) trait Kernel {
    /// One leaf in element type `A`.
    fn run<A: Real>(&self, updates: &mut [A], states: &mut [&mut [A]], params: &[A]);
}

/// Runs `kernel` on every float leaf of `updates` (integer leaves pass through),
/// with the same leaves of `states` and of `params` (if given; else an empty slice).
/// Checks first that the trees have one structure.
pub(crate) fn for_each_leaf<K: Kernel>(
    updates: &mut Variables,
    states: &mut [&mut Variables],
    params: Option<&Variables>,
    kernel: &K,
) -> Result<(), ScopeError> {
    for s in states.iter() {
        updates.same_structure(s)?;
    }
    if let Some(p) = params {
        updates.same_structure(p)?;
    }
    for (c, path) in updates.paths() {
        let leaf = updates.leaf_mut(&c, &path).expect("listed");
        match leaf {
            Leaf::F64(_) => run_leaf::<f64, K>(leaf, states, params, &c, &path, kernel),
            Leaf::F32(_) => run_leaf::<f32, K>(leaf, states, params, &c, &path, kernel),
            Leaf::I64(_) => {}
        }
    }
    Ok(())
}

/// The elements of a leaf of element type `A`, mutably and in row-major order (the
/// leaf is made unique and standard first if it is not).
fn slice_mut<A: Real>(leaf: &mut Leaf) -> &mut [A] {
    let a = A::leaf_array_mut(leaf).expect("one element type: checked by same_structure");
    if !a.is_standard_layout() {
        *a = a.as_standard_layout().to_owned().into_shared();
    }
    a.as_slice_mut()
        .expect("a standard-layout array is contiguous")
}

fn run_leaf<A: Real, K: Kernel>(
    leaf: &mut Leaf,
    states: &mut [&mut Variables],
    params: Option<&Variables>,
    c: &str,
    path: &str,
    kernel: &K,
) {
    let u = slice_mut::<A>(leaf);
    let mut s: Vec<&mut [A]> = states
        .iter_mut()
        .map(|t| slice_mut::<A>(t.leaf_mut(c, path).expect("checked by same_structure")))
        .collect();
    let p_owned;
    let p: &[A] = match params.and_then(|p| p.get(c, path)).and_then(A::leaf_array) {
        Some(a) => match a.as_slice() {
            Some(s) => s,
            None => {
                p_owned = a.iter().copied().collect::<Vec<A>>();
                &p_owned
            }
        },
        None => &[],
    };
    kernel.run(u, &mut s, p);
}
