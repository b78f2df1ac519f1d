//! `BatchNorm`: Flax's `nn.BatchNorm`, over the last axis.

use crate::init;
use crate::scope::Scope;
use crate::value::Real;
use adjoint_macros::differentiable;
use ndarray::{ArcArray1, Array, Array1, Axis, Dimension};

/// Batch normalization, as Flax's `nn.BatchNorm` with `axis=-1`: normalizes each
/// feature (the last axis) by the batch's mean and variance in training
/// (`use_running_average: false`), updating the running averages in the
/// `batch_stats` collection (`mean`, `var`) with `momentum`, or by the running
/// averages in evaluation. Then `scale` and `bias` (parameters of shape
/// `(features,)`), as Flax names them.
///
/// ```
/// use adjoint::prelude::*;
/// use adjoint::scope::ApplyOptions;
/// let x = ndarray::array![[1.0f64, 2.0], [3.0, 6.0]];
/// let bn = nn::BatchNorm::new().use_running_average(false).momentum(0.5);
/// let vars = bn.init(0, &x).unwrap();
/// assert_eq!(
///     vars.shapes(),
///     r#"{"batch_stats": {"mean": [2], "var": [2]}, "params": {"bias": [2], "scale": [2]}}"#
/// );
/// // Training: normalized by the batch, the running averages updated.
/// let (y, state) = bn.apply_with(&vars, &ApplyOptions::new().mutable(["batch_stats"]), &x).unwrap();
/// assert!((y[[0, 0]] + 1.0).abs() < 1e-5);
/// assert_eq!(state.to_string(), r#"{"batch_stats": {"mean": [1.0, 2.0], "var": [1.0, 2.5]}}"#);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct BatchNorm {
    /// Normalize by the running averages (evaluation) instead of the batch.
    pub use_running_average: bool,
    /// The running averages' decay: `new = momentum * old + (1 - momentum) * batch`.
    pub momentum: f64,
    /// Added to the variance before its square root.
    pub epsilon: f64,
    /// Add the learned `bias`.
    pub use_bias: bool,
    /// Multiply by the learned `scale`.
    pub use_scale: bool,
}

impl Default for BatchNorm {
    /// Flax's defaults: training (`use_running_average: false`; Flax leaves it to
    /// the call), `momentum` 0.99, `epsilon` 1e-5, with scale and bias.
    fn default() -> Self {
        BatchNorm {
            use_running_average: false,
            momentum: 0.99,
            epsilon: 1e-5,
            use_bias: true,
            use_scale: true,
        }
    }
}

impl BatchNorm {
    /// Flax's defaults (see [`Default`]).
    ///
    /// ```
    /// use adjoint::nn::BatchNorm;
    /// assert_eq!(BatchNorm::new().momentum, 0.99);
    /// ```
    pub fn new() -> Self {
        BatchNorm::default()
    }

    /// Normalize by the running averages (`true`, evaluation) or the batch (`false`).
    ///
    /// ```
    /// use adjoint::nn::BatchNorm;
    /// let eval = BatchNorm::new().use_running_average(true);
    /// assert!(eval.use_running_average);
    /// ```
    pub fn use_running_average(mut self, yes: bool) -> Self {
        self.use_running_average = yes;
        self
    }

    /// The running averages' momentum.
    ///
    /// ```
    /// use adjoint::nn::BatchNorm;
    /// assert_eq!(BatchNorm::new().momentum(0.9).momentum, 0.9);
    /// ```
    pub fn momentum(mut self, momentum: f64) -> Self {
        self.momentum = momentum;
        self
    }

    /// The variance's epsilon.
    ///
    /// ```
    /// use adjoint::nn::BatchNorm;
    /// assert_eq!(BatchNorm::new().epsilon(1e-3).epsilon, 1e-3);
    /// ```
    pub fn epsilon(mut self, epsilon: f64) -> Self {
        self.epsilon = epsilon;
        self
    }

    /// With or without the learned bias.
    ///
    /// ```
    /// use adjoint::nn::BatchNorm;
    /// assert!(!BatchNorm::new().use_bias(false).use_bias);
    /// ```
    pub fn use_bias(mut self, yes: bool) -> Self {
        self.use_bias = yes;
        self
    }

    /// With or without the learned scale.
    ///
    /// ```
    /// use adjoint::nn::BatchNorm;
    /// assert!(!BatchNorm::new().use_scale(false).use_scale);
    /// ```
    pub fn use_scale(mut self, yes: bool) -> Self {
        self.use_scale = yes;
        self
    }
}

#[differentiable]
impl BatchNorm {
    pub fn call<A: Real, D: Dimension>(&self, cx: &mut Scope, x: &Array<A, D>) -> Array<A, D> {
        let features = x.shape()[x.ndim() - 1];
        let rows = x.len() / features;
        let ra_mean: Array1<A> = cx.variable("batch_stats", "mean", || Array1::zeros(features));
        let ra_var: Array1<A> = cx.variable("batch_stats", "var", || Array1::ones(features));
        let x2 = x.to_shape((rows, features)).unwrap();
        let (mean, var) = if self.use_running_average {
            (ra_mean.clone(), ra_var.clone())
        } else {
            // Flax's fast variance: E[x²] - E[x]², clipped at zero.
            let mean = x2.mean_axis(Axis(0)).unwrap();
            let mean2 = (&x2 * &x2).mean_axis(Axis(0)).unwrap();
            let var = (mean2 - &mean * &mean).mapv(|v| v.max(A::zero()));
            (mean, var)
        };
        if !self.use_running_average && !cx.is_initializing() {
            let m = A::lit(self.momentum);
            cx.put("batch_stats", "mean", &ra_mean * m + &mean * (A::one() - m));
            cx.put("batch_stats", "var", &ra_var * m + &var * (A::one() - m));
        }
        let mut mul = (var + A::lit(self.epsilon)).mapv(|v| v.sqrt().recip());
        if self.use_scale {
            let scale: ArcArray1<A> = cx.param("scale", init::ones, features);
            mul = mul * &scale;
        }
        let mut y = (&x2 - &mean) * &mul;
        if self.use_bias {
            let bias: ArcArray1<A> = cx.param("bias", init::zeros, features);
            y = y + &bias;
        }
        y.to_shape(x.raw_dim()).unwrap().to_owned()
    }
}
