//! The named optimizers, as optax's `optax.sgd`, `adam`, ...: chains of the
//! transformations in [`super::transform`], with optax's defaults.

use super::transform::{
    AddDecayedWeights, Masked, ScaleByAdam, ScaleByLion, ScaleByRms, ScaleByRss, ScaleBySchedule,
    Trace, add_decayed_weights, masked, scale_by_adam, scale_by_learning_rate, scale_by_lion,
    scale_by_rms, scale_by_rss, trace,
};
use super::{Identity, Schedule};
use crate::variables::Leaf;

/// Stochastic gradient descent (optax's `sgd`): with `momentum`, a [`trace`] first
/// (Nesterov's with `nesterov`), then `-learning_rate`.
///
/// ```
/// use adjoint::optim::{self, GradientTransformation};
/// let p = adjoint::Variables::new().with("params", "w", 1.0).unwrap();
/// let tx = optim::sgd(0.1, None, false);
/// let u = tx.update(p.scale(2.0), &mut tx.init(&p), &p).unwrap();
/// assert_eq!(optim::apply_updates(&p, &u).unwrap().to_string(), r#"{"params": {"w": 0.8}}"#);
/// ```
pub fn sgd(
    learning_rate: impl Into<Schedule>,
    momentum: Option<f64>,
    nesterov: bool,
) -> (Either<Trace, Identity>, ScaleBySchedule) {
    let first = match momentum {
        Some(m) => Either::Left(trace(m, nesterov)),
        None => Either::Right(Identity),
    };
    (first, scale_by_learning_rate(learning_rate))
}

/// Adam (optax's `adam`, `b1` 0.9, `b2` 0.999, `eps` 1e-8).
///
/// ```
/// use adjoint::optim::{self, GradientTransformation};
/// let p = adjoint::Variables::new().with("params", "w", 1.0).unwrap();
/// let tx = optim::adam(0.1);
/// let u = tx.update(p.scale(2.0), &mut tx.init(&p), &p).unwrap();
/// assert!((optim::apply_updates(&p, &u).unwrap().get("params", "w").unwrap().to_f64_vec()[0] - 0.9).abs() < 1e-8);
/// ```
pub fn adam(learning_rate: impl Into<Schedule>) -> (ScaleByAdam, ScaleBySchedule) {
    (
        scale_by_adam(0.9, 0.999, 1e-8, 0.0, false),
        scale_by_learning_rate(learning_rate),
    )
}

/// AdamW (optax's `adamw`): Adam, then `weight_decay · params` added (only to the
/// leaves `mask` selects, if given; optax's default decay is 1e-4), then
/// `-learning_rate`.
///
/// ```
/// use adjoint::optim::{self, GradientTransformation};
/// let p = adjoint::Variables::new().with("params", "w", 1.0).unwrap();
/// // Decay only matrices: this scalar is left alone.
/// let tx = optim::adamw(0.1, 0.5, Some(optim::matrices_only()));
/// let u = tx.update(p.zeros_like(), &mut tx.init(&p), &p).unwrap();
/// assert_eq!(u.to_string(), r#"{"params": {"w": -0.0}}"#);
/// ```
#[allow(clippy::type_complexity)]
pub fn adamw(
    learning_rate: impl Into<Schedule>,
    weight_decay: impl Into<Schedule>,
    mask: Option<super::transform::Mask>,
) -> (ScaleByAdam, Masked<AddDecayedWeights>, ScaleBySchedule) {
    let decay = add_decayed_weights(weight_decay);
    let decay = match mask {
        Some(m) => masked(decay, move |c, p, l| m(c, p, l)),
        None => masked(decay, |_, _, _| true),
    };
    (
        scale_by_adam(0.9, 0.999, 1e-8, 0.0, false),
        decay,
        scale_by_learning_rate(learning_rate),
    )
}

/// The mask that selects leaves of rank 2 or more (kernels, not biases or
/// scales): what AdamW is usually given (`lambda p: jax.tree.map(lambda v: v.ndim >
/// 1, p)`).
pub fn matrices_only() -> super::transform::Mask {
    std::sync::Arc::new(|_: &str, _: &str, leaf: &Leaf| leaf.shape().len() > 1)
}

/// RMSProp (optax's `rmsprop`: `decay` 0.9, `eps` 1e-8, `v` from 0).
///
/// ```
/// use adjoint::optim::{self, GradientTransformation};
/// let p = adjoint::Variables::new().with("params", "w", 1.0).unwrap();
/// let tx = optim::rmsprop(0.01);
/// let u = tx.update(p.scale(2.0), &mut tx.init(&p), &p).unwrap();
/// assert!((u.get("params", "w").unwrap().to_f64_vec()[0] + 0.01 / 0.1f64.sqrt()).abs() < 1e-9);
/// ```
pub fn rmsprop(learning_rate: impl Into<Schedule>) -> (ScaleByRms, ScaleBySchedule) {
    (
        scale_by_rms(0.9, 1e-8, 0.0),
        scale_by_learning_rate(learning_rate),
    )
}

/// Adagrad (optax's `adagrad`: the accumulator from 0.1, `eps` 1e-7).
///
/// ```
/// use adjoint::optim::{self, GradientTransformation};
/// let p = adjoint::Variables::new().with("params", "w", 1.0).unwrap();
/// let tx = optim::adagrad(0.1);
/// let u = tx.update(p.scale(3.0), &mut tx.init(&p), &p).unwrap();
/// assert!((u.get("params", "w").unwrap().to_f64_vec()[0] + 0.1 * 3.0 / (9.1f64 + 1e-7).sqrt()).abs() < 1e-12);
/// ```
pub fn adagrad(learning_rate: impl Into<Schedule>) -> (ScaleByRss, ScaleBySchedule) {
    (
        scale_by_rss(0.1, 1e-7),
        scale_by_learning_rate(learning_rate),
    )
}

/// Lion (optax's `lion`: `b1` 0.9, `b2` 0.99, weight decay 1e-3).
///
/// ```
/// use adjoint::optim::{self, GradientTransformation};
/// let p = adjoint::Variables::new().with("params", "w", 1.0).unwrap();
/// let tx = optim::lion(0.1);
/// let u = tx.update(p.scale(2.0), &mut tx.init(&p), &p).unwrap();
/// assert!((u.get("params", "w").unwrap().to_f64_vec()[0] + 0.1 * (1.0 + 1e-3)).abs() < 1e-12);
/// ```
pub fn lion(
    learning_rate: impl Into<Schedule>,
) -> (ScaleByLion, AddDecayedWeights, ScaleBySchedule) {
    (
        scale_by_lion(0.9, 0.99),
        add_decayed_weights(1e-3),
        scale_by_learning_rate(learning_rate),
    )
}

/// One of two transformations (what `sgd` is with or without momentum).
#[derive(Clone, Debug)]
pub enum Either<L, R> {
    Left(L),
    Right(R),
}

impl<L: super::GradientTransformation, R: super::GradientTransformation>
    super::GradientTransformation for Either<L, R>
{
    type State = Either<L::State, R::State>;
    fn init(&self, params: &crate::Variables) -> Self::State {
        match self {
            Either::Left(l) => Either::Left(l.init(params)),
            Either::Right(r) => Either::Right(r.init(params)),
        }
    }
    fn update(
        &self,
        updates: crate::Variables,
        state: &mut Self::State,
        params: &crate::Variables,
    ) -> Result<crate::Variables, crate::scope::ScopeError> {
        match (self, state) {
            (Either::Left(l), Either::Left(s)) => l.update(updates, s, params),
            (Either::Right(r), Either::Right(s)) => r.update(updates, s, params),
            _ => Err(crate::scope::ScopeError::InvalidVariables {
                reason: "an optimizer state made by another optimizer".into(),
            }),
        }
    }
}

impl<L: super::OptState, R: super::OptState> super::OptState for Either<L, R> {
    fn save(&self, collection: &str, prefix: &str, out: &mut crate::Variables) {
        match self {
            Either::Left(l) => l.save(collection, prefix, out),
            Either::Right(r) => r.save(collection, prefix, out),
        }
    }
    fn load(
        &mut self,
        collection: &str,
        prefix: &str,
        from: &crate::Variables,
    ) -> Result<(), crate::scope::ScopeError> {
        match self {
            Either::Left(l) => l.load(collection, prefix, from),
            Either::Right(r) => r.load(collection, prefix, from),
        }
    }
}
