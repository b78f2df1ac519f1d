//! Losses, as optax's (`optax.losses`): each gives one value per example (or per
//! element), by optax's name and with its numbers; average them yourself, as optax
//! users do (`.mean().unwrap()`). Written with `#[differentiable]` over rules, so
//! they differentiate to any order, with respect to the labels too.
//!
//! ```
//! use adjoint::prelude::*;
//! use ndarray::{Array2, array};
//!
//! #[differentiable]
//! fn loss(logits: &Array2<f64>, labels: &ndarray::Array1<usize>) -> f64 {
//!     losses::softmax_cross_entropy_with_integer_labels(logits, labels).mean().unwrap()
//! }
//!
//! let logits = array![[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]];
//! let g = grad!(loss)(&logits, &array![0, 2]); // the labels are integers: constant
//! // softmax(logits) - one_hot(labels), over the batch of 2.
//! assert!((g.sum_axis(ndarray::Axis(1))).iter().all(|s| s.abs() < 1e-12));
//! ```

use crate::nn::{log_sigmoid, relu, softplus};
use crate::value::Real;
use adjoint_macros::differentiable;
use ndarray::{Array, Dimension};

pub use crate::rules::nn::{softmax_cross_entropy, softmax_cross_entropy_with_integer_labels};

/// Binary cross entropy of `sigmoid(logits)` against `labels` (probabilities),
/// elementwise: `-labels log σ(logits) - (1 - labels) log σ(-logits)`, computed
/// stably.
#[differentiable]
pub fn sigmoid_binary_cross_entropy<A: Real, D: Dimension>(
    logits: &Array<A, D>,
    labels: &Array<A, D>,
) -> Array<A, D> {
    let log_p = log_sigmoid(logits);
    let log_not_p = log_sigmoid(&(logits * A::lit(-1.0)));
    let not_labels = labels * A::lit(-1.0) + A::one();
    -(labels * &log_p) - not_labels * &log_not_p
}

/// Half the squared error, elementwise: `(predictions - targets)² / 2`.
#[differentiable]
pub fn l2_loss<A: Real, D: Dimension>(
    predictions: &Array<A, D>,
    targets: &Array<A, D>,
) -> Array<A, D> {
    let e = predictions - targets;
    &e * &e * A::lit(0.5)
}

/// The squared error, elementwise: `(predictions - targets)²`.
#[differentiable]
pub fn squared_error<A: Real, D: Dimension>(
    predictions: &Array<A, D>,
    targets: &Array<A, D>,
) -> Array<A, D> {
    let e = predictions - targets;
    &e * &e
}

/// The Huber loss, elementwise: quadratic `e² / 2` within `delta` of the target,
/// linear `delta (|e| - delta / 2)` beyond (optax's default `delta` is 1).
#[differentiable]
pub fn huber_loss<A: Real, D: Dimension>(
    predictions: &Array<A, D>,
    targets: &Array<A, D>,
    #[no_grad] delta: f64,
) -> Array<A, D> {
    let abs = (predictions - targets).abs();
    let d = A::lit(delta);
    // min(|e|, delta) = delta - relu(delta - |e|).
    let quadratic = relu(&(&abs * A::lit(-1.0) + d)) * A::lit(-1.0) + d;
    let linear = abs - &quadratic;
    &quadratic * &quadratic * A::lit(0.5) + linear * d
}

/// The log of the hyperbolic cosine of the error, elementwise:
/// `log(cosh(predictions - targets))`, computed stably
/// (`|e| + log(1 + e^(-2|e|)) - log 2`).
#[differentiable]
pub fn log_cosh<A: Real, D: Dimension>(
    predictions: &Array<A, D>,
    targets: &Array<A, D>,
) -> Array<A, D> {
    let e = predictions - targets;
    // logaddexp(e, -e) = e + softplus(-2e).
    softplus(&(&e * A::lit(-2.0))) + e - A::lit(std::f64::consts::LN_2)
}

/// Labels smoothed towards uniform, as optax's `smooth_labels`:
/// `(1 - alpha) labels + alpha / classes`, the classes the last axis.
///
/// ```
/// let y = adjoint::losses::smooth_labels(&ndarray::array![[0.0, 1.0]], 0.2);
/// assert_eq!(y, ndarray::array![[0.1, 0.9]]);
/// ```
#[differentiable]
pub fn smooth_labels<A: Real, D: Dimension>(
    labels: &Array<A, D>,
    #[no_grad] alpha: f64,
) -> Array<A, D> {
    let classes = labels.shape().last().copied().unwrap_or(1);
    labels * A::lit(1.0 - alpha) + A::lit(alpha / classes as f64)
}
