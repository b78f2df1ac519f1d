//! `Dense`: Flax's `nn.Dense`.

use crate::init::{self, Init, Initializer};
use crate::rules::linalg::dot_last;
use crate::scope::Scope;
use crate::value::Real;
use adjoint_macros::differentiable;
use ndarray::{ArcArray1, ArcArray2, Array, DimMax, Dimension, Ix1};

/// A fully connected layer, as Flax's `nn.Dense`: `x · kernel + bias` over the
/// input's last axis (any leading axes are batch axes), with a LeCun-normal
/// `kernel` of shape `(inputs, features)` and a zero `bias` of shape `(features,)`,
/// in the input's float type (`f32` or `f64`).
///
/// ```
/// use adjoint::prelude::*;
/// use adjoint::nn::Dense;
/// let x = ndarray::Array2::<f64>::ones((2, 3));
/// let vars = Dense::new(4).init(0, &x).unwrap();
/// assert_eq!(vars.shapes(), r#"{"params": {"bias": [4], "kernel": [3, 4]}}"#);
/// let y = Dense::new(4).apply(&vars, &x).unwrap();
/// assert_eq!(y.shape(), &[2, 4]);
/// // The same layer in f32, on a batch of sequences, without a bias.
/// let x32 = ndarray::Array3::<f32>::ones((2, 5, 3));
/// let layer = Dense::new(4).use_bias(false).kernel_init(init::glorot_uniform());
/// let vars32 = layer.init(0, &x32).unwrap();
/// assert_eq!(vars32.shapes(), r#"{"params": {"kernel": [3, 4]}}"#);
/// let y32: ndarray::Array3<f32> = layer.apply(&vars32, &x32).unwrap();
/// assert_eq!(y32.shape(), &[2, 5, 4]);
/// ```
#[derive(Clone, Debug)]
pub struct Dense {
    /// The number of outputs.
    pub features: usize,
    /// Add the learned `bias`.
    pub use_bias: bool,
    /// The kernel's initializer.
    pub kernel_init: Init,
    /// The bias's initializer.
    pub bias_init: Init,
}

impl Dense {
    /// A layer with `features` outputs and Flax's defaults.
    ///
    /// ```
    /// assert_eq!(adjoint::nn::Dense::new(4).features, 4);
    /// ```
    pub fn new(features: usize) -> Self {
        Dense {
            features,
            use_bias: true,
            kernel_init: Init::new(init::lecun_normal()),
            bias_init: Init::new(init::zeros),
        }
    }

    /// Sets `use_bias`.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let layer = nn::Dense::new(4).use_bias(false);
    /// assert_eq!(layer.use_bias, false);
    /// ```
    pub fn use_bias(mut self, use_bias: bool) -> Self {
        self.use_bias = use_bias;
        self
    }

    /// Sets `kernel_init`.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let _layer = nn::Dense::new(4).kernel_init(init::zeros);
    /// ```
    pub fn kernel_init(mut self, init: impl Initializer + Send + Sync + 'static) -> Self {
        self.kernel_init = Init::new(init);
        self
    }

    /// Sets `bias_init`.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let _layer = nn::Dense::new(4).bias_init(init::zeros);
    /// ```
    pub fn bias_init(mut self, init: impl Initializer + Send + Sync + 'static) -> Self {
        self.bias_init = Init::new(init);
        self
    }
}

/// Whether an input of `shape` has a feature axis.
fn has_features(shape: &[usize]) -> Result<(), String> {
    if shape.is_empty() {
        return Err("a Dense layer's input needs a feature axis, got a 0-dimensional array".into());
    }
    Ok(())
}

#[differentiable]
impl Dense {
    /// The layer in the scope `cx`: what a parent module's `call` runs, and
    /// `init` and `apply` at the root.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let x = ndarray::Array2::<f64>::ones((2, 3));
    /// let layer = nn::Dense::new(4);
    /// let vars = layer.init(0, &x).unwrap();
    /// assert_eq!(layer.apply(&vars, &x).unwrap().shape(), &[2, 4]);
    /// ```
    pub fn call<A: Real, D: Dimension + DimMax<Ix1, Output = D>>(
        &self,
        cx: &mut Scope,
        x: &Array<A, D>,
    ) -> Array<A, D> {
        let inputs = x.shape().last().copied().unwrap_or(0);
        let kernel: ArcArray2<A> =
            cx.param("kernel", self.kernel_init.clone(), (inputs, self.features));
        let y = if cx.check(&has_features(x.shape())) {
            dot_last(x, &kernel)
        } else {
            Array::zeros(x.raw_dim())
        };
        if self.use_bias {
            let bias: ArcArray1<A> = cx.param("bias", self.bias_init.clone(), self.features);
            y + &bias
        } else {
            y
        }
    }
}
