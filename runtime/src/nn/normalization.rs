//! Normalization, as Flax's `flax.linen.normalization`: `BatchNorm`, `LayerNorm`,
//! `RMSNorm` and `GroupNorm`, with Flax's epsilons, parameter names (`scale`,
//! `bias`) and fast variance (`E[x²] - E[x]²`, clipped at zero).

use crate::init::{self, Init, Initializer};
use crate::nn::relu;
use crate::scope::Scope;
use crate::value::Real;
use adjoint_macros::differentiable;
use ndarray::{ArcArray1, Array, Array1, Array2, Axis, Dimension};

/// Batch normalization, as Flax's `nn.BatchNorm` with `axis=-1`: normalizes each
/// feature (the last axis) by the batch's mean and variance in training
/// (`use_running_average: false`), updating the running averages in the
/// `batch_stats` collection (`mean`, `var`) with `momentum`, or by the running
/// averages in evaluation. Then `scale` and `bias` (parameters of shape
/// `(features,)`), as Flax names them.
///
/// The statistics have the input's float type. (Flax creates them as `float32`
/// whatever the input, so with `float64` inputs its first update multiplies by
/// `momentum` rounded to `float32`: a difference of about 2e-8 relative in that
/// update only.)
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
    /// The layer in the scope `cx`: what a parent module's `call` runs, and
    /// `init` and `apply` at the root.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let x = ndarray::Array2::<f64>::ones((2, 3));
    /// let layer = nn::BatchNorm::new().use_running_average(true);
    /// let vars = layer.init(0, &x).unwrap();
    /// assert_eq!(layer.apply(&vars, &x).unwrap().shape(), &[2, 3]);
    /// ```
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

/// The shape `x` has as `(rows, features)`: its last axis, everything before it.
fn rows_features(shape: &[usize]) -> (usize, usize) {
    let features = shape.last().copied().unwrap_or(1);
    (shape.iter().product::<usize>() / features.max(1), features)
}

/// `x` standardized over its last axis, as Flax's `nn.standardize` (JAX's
/// `jax.nn.standardize` with `axis=-1`): `(x - mean) / sqrt(var + epsilon)` with the
/// fast variance `mean(x²) - mean(x)²`, clipped at zero. Flax's default `epsilon`
/// is 1e-5.
///
/// ```
/// use adjoint::prelude::*;
/// let y = nn::standardize(&ndarray::array![[1.0, 3.0]], 0.0);
/// assert_eq!(y, ndarray::array![[-1.0, 1.0]]);
/// ```
#[differentiable(jvp)]
pub fn standardize<A: Real, D: Dimension>(x: &Array<A, D>, #[no_grad] epsilon: f64) -> Array<A, D> {
    let (rows, features) = rows_features(x.shape());
    let x2 = x.to_shape((rows, features)).unwrap();
    let mean = x2.mean_axis(Axis(1)).unwrap().insert_axis(Axis(1));
    let mean2 = (&x2 * &x2).mean_axis(Axis(1)).unwrap().insert_axis(Axis(1));
    let var = relu(&(mean2 - &mean * &mean));
    let y: Array2<A> = (&x2 - &mean) * (var + A::lit(epsilon)).sqrt().recip();
    y.into_shape_with_order(x.raw_dim()).unwrap()
}

/// Fields and builders shared by `LayerNorm`, `RMSNorm` and `GroupNorm`.
macro_rules! norm_builders {
    ($ty:ident) => {
        impl $ty {
            /// Sets `epsilon`.
            ///
            /// ```
            #[doc = concat!("let n = adjoint::nn::", stringify!($ty), "::default().epsilon(1e-3);")]
            /// assert_eq!(n.epsilon, 1e-3);
            /// ```
            pub fn epsilon(mut self, epsilon: f64) -> Self {
                self.epsilon = epsilon;
                self
            }

            /// Sets `use_scale`.
            ///
            /// ```
            #[doc = concat!("let n = adjoint::nn::", stringify!($ty), "::default().use_scale(false);")]
            /// assert!(!n.use_scale);
            /// ```
            pub fn use_scale(mut self, yes: bool) -> Self {
                self.use_scale = yes;
                self
            }

            /// Sets `scale_init`.
            ///
            /// ```
            #[doc = concat!("let _n = adjoint::nn::", stringify!($ty), "::default().scale_init(adjoint::init::zeros);")]
            /// ```
            pub fn scale_init(mut self, init: impl Initializer + Send + Sync + 'static) -> Self {
                self.scale_init = Init::new(init);
                self
            }
        }
    };
}

/// Layer normalization, as Flax's `nn.LayerNorm`: each example normalized over its
/// last axis by its own mean and variance, then `scale` and `bias` (shape
/// `(features,)`). `epsilon` 1e-6.
///
/// ```
/// use adjoint::prelude::*;
/// let x = ndarray::array![[1.0f64, 2.0, 3.0], [2.0, 2.0, 8.0]];
/// let vars = nn::LayerNorm::new().init(0, &x).unwrap();
/// assert_eq!(vars.shapes(), r#"{"params": {"bias": [3], "scale": [3]}}"#);
/// let y = nn::LayerNorm::new().apply(&vars, &x).unwrap();
/// assert!(y.sum_axis(ndarray::Axis(1)).iter().all(|s| s.abs() < 1e-9));
/// ```
#[derive(Clone, Debug)]
pub struct LayerNorm {
    /// Added to the variance before its square root.
    pub epsilon: f64,
    /// Add the learned `bias`.
    pub use_bias: bool,
    /// Multiply by the learned `scale`.
    pub use_scale: bool,
    /// The bias's initializer (zeros).
    pub bias_init: Init,
    /// The scale's initializer (ones).
    pub scale_init: Init,
}

impl Default for LayerNorm {
    fn default() -> Self {
        LayerNorm {
            epsilon: 1e-6,
            use_bias: true,
            use_scale: true,
            bias_init: Init::new(init::zeros),
            scale_init: Init::new(init::ones),
        }
    }
}

impl LayerNorm {
    /// Flax's defaults.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let layer = nn::LayerNorm::new();
    /// assert_eq!(layer.epsilon, 1e-6);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `use_bias`.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let layer = nn::LayerNorm::new().use_bias(false);
    /// assert_eq!(layer.use_bias, false);
    /// ```
    pub fn use_bias(mut self, yes: bool) -> Self {
        self.use_bias = yes;
        self
    }

    /// Sets `bias_init`.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let _layer = nn::LayerNorm::new().bias_init(init::zeros);
    /// ```
    pub fn bias_init(mut self, init: impl Initializer + Send + Sync + 'static) -> Self {
        self.bias_init = Init::new(init);
        self
    }
}

norm_builders!(LayerNorm);

#[differentiable(jvp)]
impl LayerNorm {
    /// The layer in the scope `cx`: what a parent module's `call` runs, and
    /// `init` and `apply` at the root.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let x = ndarray::Array2::<f64>::ones((2, 3));
    /// let layer = nn::LayerNorm::new();
    /// let vars = layer.init(0, &x).unwrap();
    /// assert_eq!(layer.apply(&vars, &x).unwrap().shape(), &[2, 3]);
    /// ```
    pub fn call<A: Real, D: Dimension>(&self, cx: &mut Scope, x: &Array<A, D>) -> Array<A, D> {
        let (rows, features) = rows_features(x.shape());
        let normalized = standardize(x, self.epsilon);
        let mut y = normalized.into_shape_with_order((rows, features)).unwrap();
        if self.use_scale {
            let scale: ArcArray1<A> = cx.param("scale", self.scale_init.clone(), features);
            y = y * &scale;
        }
        if self.use_bias {
            let bias: ArcArray1<A> = cx.param("bias", self.bias_init.clone(), features);
            y = y + &bias;
        }
        y.into_shape_with_order(x.raw_dim()).unwrap()
    }
}

/// Root-mean-square normalization, as Flax's `nn.RMSNorm`: each example divided by
/// the root of its mean square over the last axis, then `scale` (shape
/// `(features,)`); no mean subtracted, no bias. `epsilon` 1e-6.
///
/// ```
/// use adjoint::prelude::*;
/// let x = ndarray::array![[3.0f64, 4.0]];
/// let vars = nn::RMSNorm::new().init(0, &x).unwrap();
/// assert_eq!(vars.shapes(), r#"{"params": {"scale": [2]}}"#);
/// let y = nn::RMSNorm::new().epsilon(0.0).apply(&vars, &x).unwrap();
/// assert!((y[[0, 0]] - 3.0 / 12.5f64.sqrt()).abs() < 1e-12);
/// ```
#[derive(Clone, Debug)]
pub struct RMSNorm {
    /// Added to the mean square before its square root.
    pub epsilon: f64,
    /// Multiply by the learned `scale`.
    pub use_scale: bool,
    /// The scale's initializer (ones).
    pub scale_init: Init,
}

impl Default for RMSNorm {
    fn default() -> Self {
        RMSNorm {
            epsilon: 1e-6,
            use_scale: true,
            scale_init: Init::new(init::ones),
        }
    }
}

impl RMSNorm {
    /// Flax's defaults.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let layer = nn::RMSNorm::new();
    /// assert_eq!(layer.epsilon, 1e-6);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }
}

norm_builders!(RMSNorm);

#[differentiable]
impl RMSNorm {
    /// The layer in the scope `cx`: what a parent module's `call` runs, and
    /// `init` and `apply` at the root.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let x = ndarray::Array2::<f64>::ones((2, 3));
    /// let layer = nn::RMSNorm::new();
    /// let vars = layer.init(0, &x).unwrap();
    /// assert_eq!(layer.apply(&vars, &x).unwrap().shape(), &[2, 3]);
    /// ```
    pub fn call<A: Real, D: Dimension>(&self, cx: &mut Scope, x: &Array<A, D>) -> Array<A, D> {
        let (rows, features) = rows_features(x.shape());
        let x2 = x.to_shape((rows, features)).unwrap();
        let var = (&x2 * &x2).mean_axis(Axis(1)).unwrap().insert_axis(Axis(1));
        let mut y: Array2<A> = &x2 * (var + A::lit(self.epsilon)).sqrt().recip();
        if self.use_scale {
            let scale: ArcArray1<A> = cx.param("scale", self.scale_init.clone(), features);
            y = y * &scale;
        }
        y.into_shape_with_order(x.raw_dim()).unwrap()
    }
}

/// Group normalization, as Flax's `nn.GroupNorm`: the features (last axis) split
/// into `num_groups` groups, each example normalized per group over its features and
/// every axis between the first (the batch) and the last; then `scale` and `bias`
/// (shape `(features,)`). 32 groups and `epsilon` 1e-6 by default.
///
/// Features that the groups do not divide make `init` and `apply` return an error.
///
/// ```
/// use adjoint::prelude::*;
/// let x = ndarray::Array4::<f64>::from_shape_fn((2, 3, 3, 4), |(n, i, j, c)| (n + i * j + c) as f64);
/// let gn = nn::GroupNorm::new(2);
/// let vars = gn.init(0, &x).unwrap();
/// assert_eq!(vars.shapes(), r#"{"params": {"bias": [4], "scale": [4]}}"#);
/// assert_eq!(gn.apply(&vars, &x).unwrap().shape(), &[2, 3, 3, 4]);
/// let err = nn::GroupNorm::new(3).apply(&vars, &x).unwrap_err();
/// assert_eq!(err.to_string(), "3 groups do not divide the 4 features of an input of shape [2, 3, 3, 4]");
/// ```
#[derive(Clone, Debug)]
pub struct GroupNorm {
    /// How many groups the features form.
    pub num_groups: usize,
    /// Added to the variance before its square root.
    pub epsilon: f64,
    /// Add the learned `bias`.
    pub use_bias: bool,
    /// Multiply by the learned `scale`.
    pub use_scale: bool,
    /// The bias's initializer (zeros).
    pub bias_init: Init,
    /// The scale's initializer (ones).
    pub scale_init: Init,
}

impl Default for GroupNorm {
    fn default() -> Self {
        GroupNorm::new(32)
    }
}

impl GroupNorm {
    /// `num_groups` groups and Flax's other defaults.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let layer = nn::GroupNorm::new(2);
    /// assert_eq!(layer.num_groups, 2);
    /// ```
    pub fn new(num_groups: usize) -> Self {
        GroupNorm {
            num_groups,
            epsilon: 1e-6,
            use_bias: true,
            use_scale: true,
            bias_init: Init::new(init::zeros),
            scale_init: Init::new(init::ones),
        }
    }

    /// Sets `use_bias`.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let layer = nn::GroupNorm::new(2).use_bias(false);
    /// assert_eq!(layer.use_bias, false);
    /// ```
    pub fn use_bias(mut self, yes: bool) -> Self {
        self.use_bias = yes;
        self
    }

    /// Sets `bias_init`.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let _layer = nn::GroupNorm::new(2).bias_init(init::zeros);
    /// ```
    pub fn bias_init(mut self, init: impl Initializer + Send + Sync + 'static) -> Self {
        self.bias_init = Init::new(init);
        self
    }

    /// The input as `(batch, positions, groups, features per group)`, or why not.
    fn grouped(&self, shape: &[usize]) -> Result<(usize, usize, usize, usize), String> {
        let features = shape.last().copied().unwrap_or(0);
        if self.num_groups == 0 || features % self.num_groups != 0 || shape.is_empty() {
            return Err(format!(
                "{} groups do not divide the {features} features of an input of shape {shape:?}",
                self.num_groups
            ));
        }
        let batch = if shape.len() >= 2 { shape[0] } else { 1 };
        let positions = shape[..shape.len() - 1].iter().product::<usize>() / batch.max(1);
        Ok((
            batch,
            positions,
            self.num_groups,
            features / self.num_groups,
        ))
    }
}

norm_builders!(GroupNorm);

#[differentiable]
impl GroupNorm {
    /// The layer in the scope `cx`: what a parent module's `call` runs, and
    /// `init` and `apply` at the root.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let x = ndarray::Array4::<f64>::ones((1, 2, 2, 4));
    /// let layer = nn::GroupNorm::new(2);
    /// let vars = layer.init(0, &x).unwrap();
    /// assert_eq!(layer.apply(&vars, &x).unwrap().shape(), &[1, 2, 2, 4]);
    /// ```
    pub fn call<A: Real, D: Dimension>(&self, cx: &mut Scope, x: &Array<A, D>) -> Array<A, D> {
        let grouped = self.grouped(x.shape());
        let (n, s, g, c) = if cx.check(&grouped) {
            grouped.unwrap_or((1, 1, 1, 1))
        } else {
            // A placeholder that fits the input: one group.
            let (rows, features) = rows_features(x.shape());
            (1, rows, 1, features)
        };
        let x4 = x.to_shape((n, s, g, c)).unwrap();
        let mean = x4.mean_axis(Axis(3)).unwrap().mean_axis(Axis(1)).unwrap();
        let mean = mean.insert_axis(Axis(1)).insert_axis(Axis(3));
        let mean2 = (&x4 * &x4)
            .mean_axis(Axis(3))
            .unwrap()
            .mean_axis(Axis(1))
            .unwrap();
        let mean2 = mean2.insert_axis(Axis(1)).insert_axis(Axis(3));
        let var = relu(&(mean2 - &mean * &mean));
        let mut y = (&x4 - &mean) * (var + A::lit(self.epsilon)).sqrt().recip();
        if self.use_scale {
            let scale: ArcArray1<A> = cx.param("scale", self.scale_init.clone(), g * c);
            y = y * &scale.to_shape((g, c)).unwrap();
        }
        if self.use_bias {
            let bias: ArcArray1<A> = cx.param("bias", self.bias_init.clone(), g * c);
            y = y + &bias.to_shape((g, c)).unwrap();
        }
        y.into_shape_with_order(x.raw_dim()).unwrap()
    }
}
