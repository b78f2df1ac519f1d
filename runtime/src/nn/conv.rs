//! `Conv` and `ConvTranspose`: Flax's `nn.Conv` and `nn.ConvTranspose`.

use crate::init::{self, Init, Initializer};
use crate::rules::conv::{ConvError, ConvSpec, Padding, conv, split_shape, zeros_with_last};
use crate::scope::Scope;
use crate::value::Real;
use adjoint_macros::differentiable;
use ndarray::{ArcArray1, ArcArrayD, Array, DimMax, Dimension, Ix1};

/// A convolution over `N` spatial axes, as Flax's `nn.Conv`: features last
/// (`(batch.., spatial.., features)`, NWC or NHWC; without a batch axis, one
/// example), a `kernel` of shape `kernel_size + (in_features / groups, features)`
/// and a `bias` of shape `(features,)`, with Flax's defaults: stride 1, `'SAME'`
/// padding, no dilation, one group, LeCun-normal kernel, zero bias.
///
/// An input whose rank or features do not fit makes `init` and `apply` return an
/// error that names the layer and both shapes.
///
/// ```
/// use adjoint::prelude::*;
/// // nn.Conv(features=8, kernel_size=(3, 3), strides=2) on a batch of 28x28 images.
/// let x = ndarray::Array4::<f32>::zeros((2, 28, 28, 1));
/// let layer = nn::Conv::new(8, [3, 3]).strides([2, 2]);
/// let vars = layer.init(0, &x).unwrap();
/// assert_eq!(vars.shapes(), r#"{"params": {"bias": [8], "kernel": [3, 3, 1, 8]}}"#);
/// assert_eq!(layer.apply(&vars, &x).unwrap().shape(), &[2, 14, 14, 8]);
///
/// // The features must match the kernel's.
/// let wrong = ndarray::Array4::<f32>::zeros((2, 28, 28, 3));
/// let err = layer.apply(&vars, &wrong).unwrap_err();
/// assert!(err.to_string().contains("[3, 3, 3, 8]"), "{err}");
/// ```
#[derive(Clone, Debug)]
pub struct Conv<const N: usize> {
    /// Output features.
    pub features: usize,
    /// The window's size per spatial axis.
    pub kernel_size: [usize; N],
    /// The window's step per spatial axis.
    pub strides: [usize; N],
    /// `'SAME'`, `'VALID'`, `'CAUSAL'` or explicit pairs.
    pub padding: Padding<N>,
    /// `d - 1` zeros between the input's elements (`lhs_dilation`).
    pub input_dilation: [usize; N],
    /// `d - 1` holes between the kernel's taps (`rhs_dilation`, atrous).
    pub kernel_dilation: [usize; N],
    /// Feature groups: each maps `in_features / groups` inputs to
    /// `features / groups` outputs.
    pub feature_group_count: usize,
    /// Add the learned `bias`.
    pub use_bias: bool,
    /// The kernel's initializer.
    pub kernel_init: Init,
    /// The bias's initializer.
    pub bias_init: Init,
}

impl<const N: usize> Conv<N> {
    /// A convolution to `features` outputs with a window of `kernel_size`, and
    /// Flax's other defaults.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let layer = nn::Conv::new(4, [3, 3]);
    /// assert_eq!(layer.kernel_size, [3, 3]);
    /// ```
    pub fn new(features: usize, kernel_size: [usize; N]) -> Self {
        Conv {
            features,
            kernel_size,
            strides: [1; N],
            padding: Padding::Same,
            input_dilation: [1; N],
            kernel_dilation: [1; N],
            feature_group_count: 1,
            use_bias: true,
            kernel_init: Init::new(init::lecun_normal()),
            bias_init: Init::new(init::zeros),
        }
    }

    /// Sets `strides`.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let layer = nn::Conv::new(4, [3, 3]).strides([2, 2]);
    /// assert_eq!(layer.strides, [2, 2]);
    /// ```
    pub fn strides(mut self, strides: [usize; N]) -> Self {
        self.strides = strides;
        self
    }

    /// Sets `padding`.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let layer = nn::Conv::new(4, [3, 3]).padding(nn::Padding::Valid);
    /// assert_eq!(layer.padding, nn::Padding::Valid);
    /// ```
    pub fn padding(mut self, padding: Padding<N>) -> Self {
        self.padding = padding;
        self
    }

    /// Sets `input_dilation`.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let layer = nn::Conv::new(4, [3, 3]).input_dilation([2, 2]);
    /// assert_eq!(layer.input_dilation, [2, 2]);
    /// ```
    pub fn input_dilation(mut self, dilation: [usize; N]) -> Self {
        self.input_dilation = dilation;
        self
    }

    /// Sets `kernel_dilation`.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let layer = nn::Conv::new(4, [3, 3]).kernel_dilation([2, 2]);
    /// assert_eq!(layer.kernel_dilation, [2, 2]);
    /// ```
    pub fn kernel_dilation(mut self, dilation: [usize; N]) -> Self {
        self.kernel_dilation = dilation;
        self
    }

    /// Sets `feature_group_count`.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let layer = nn::Conv::new(4, [3, 3]).feature_group_count(2);
    /// assert_eq!(layer.feature_group_count, 2);
    /// ```
    pub fn feature_group_count(mut self, groups: usize) -> Self {
        self.feature_group_count = groups;
        self
    }

    /// Sets `use_bias`.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let layer = nn::Conv::new(4, [3, 3]).use_bias(false);
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
    /// let _layer = nn::Conv::new(4, [3, 3]).kernel_init(init::zeros);
    /// ```
    pub fn kernel_init(mut self, init: impl Initializer + Send + Sync + 'static) -> Self {
        self.kernel_init = Init::new(init);
        self
    }

    /// Sets `bias_init`.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let _layer = nn::Conv::new(4, [3, 3]).bias_init(init::zeros);
    /// ```
    pub fn bias_init(mut self, init: impl Initializer + Send + Sync + 'static) -> Self {
        self.bias_init = Init::new(init);
        self
    }

    /// The kernel's shape for an input of `shape`.
    fn kernel_shape(&self, shape: &[usize]) -> Vec<usize> {
        let in_features = shape.last().copied().unwrap_or(0);
        let mut k = self.kernel_size.to_vec();
        k.push(in_features / self.feature_group_count.max(1));
        k.push(self.features);
        k
    }

    /// The convolution's configuration for an input of `shape`, checked against it.
    fn spec(&self, shape: &[usize]) -> Result<ConvSpec<N>, ConvError> {
        let (_, spatial, _) = split_shape::<N>(shape)?;
        let spec = ConvSpec::dilated(
            self.strides,
            self.padding,
            self.input_dilation,
            self.kernel_dilation,
            self.feature_group_count,
            spatial,
            self.kernel_size,
        )?;
        spec.output_shape(shape, &self.kernel_shape(shape))?;
        if !self.features.is_multiple_of(self.feature_group_count) {
            return Err(ConvError::Groups {
                kernel: self.kernel_shape(shape),
                groups: self.feature_group_count,
            });
        }
        Ok(spec)
    }
}

#[differentiable]
impl<const N: usize> Conv<N> {
    /// The layer in the scope `cx`: what a parent module's `call` runs, and
    /// `init` and `apply` at the root.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let x = ndarray::Array4::<f64>::ones((1, 5, 5, 2));
    /// let layer = nn::Conv::new(4, [3, 3]);
    /// let vars = layer.init(0, &x).unwrap();
    /// assert_eq!(layer.apply(&vars, &x).unwrap().shape(), &[1, 5, 5, 4]);
    /// ```
    pub fn call<A: Real, D: Dimension + DimMax<Ix1, Output = D>>(
        &self,
        cx: &mut Scope,
        x: &Array<A, D>,
    ) -> Array<A, D> {
        let spec = self.spec(x.shape());
        let kernel: ArcArrayD<A> = cx.param(
            "kernel",
            self.kernel_init.clone(),
            self.kernel_shape(x.shape()),
        );
        let y = if cx.check(&spec) {
            conv(x, &kernel, spec.unwrap_or(placeholder_spec()))
        } else {
            placeholder(x.raw_dim(), self.features)
        };
        if self.use_bias {
            let bias: ArcArray1<A> = cx.param("bias", self.bias_init.clone(), self.features);
            y + &bias
        } else {
            y
        }
    }
}

/// A transposed convolution over `N` spatial axes, as Flax's `nn.ConvTranspose`
/// (`lax.conv_transpose` with `transpose_kernel=False`): the input dilated by the
/// strides, then convolved with stride 1, so that `strides` scale the spatial size
/// up. A `kernel` of shape `kernel_size + (in_features, features)`, a `bias` of
/// shape `(features,)`, `'SAME'` padding by default (output size `input * stride`).
///
/// ```
/// use adjoint::prelude::*;
/// let x = ndarray::Array4::<f64>::zeros((1, 7, 7, 4));
/// let layer = nn::ConvTranspose::new(2, [3, 3]).strides([2, 2]);
/// let vars = layer.init(0, &x).unwrap();
/// assert_eq!(vars.shapes(), r#"{"params": {"bias": [2], "kernel": [3, 3, 4, 2]}}"#);
/// assert_eq!(layer.apply(&vars, &x).unwrap().shape(), &[1, 14, 14, 2]);
/// ```
#[derive(Clone, Debug)]
pub struct ConvTranspose<const N: usize> {
    /// Output features.
    pub features: usize,
    /// The window's size per spatial axis.
    pub kernel_size: [usize; N],
    /// The input's dilation: how much the spatial size grows.
    pub strides: [usize; N],
    /// `'SAME'`, `'VALID'` (as the convolution this transposes) or explicit pairs.
    pub padding: Padding<N>,
    /// `d - 1` holes between the kernel's taps.
    pub kernel_dilation: [usize; N],
    /// Add the learned `bias`.
    pub use_bias: bool,
    /// The kernel's initializer.
    pub kernel_init: Init,
    /// The bias's initializer.
    pub bias_init: Init,
}

impl<const N: usize> ConvTranspose<N> {
    /// A transposed convolution to `features` outputs with a window of
    /// `kernel_size`, and Flax's other defaults.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let layer = nn::ConvTranspose::new(4, [3, 3]);
    /// assert_eq!(layer.features, 4);
    /// ```
    pub fn new(features: usize, kernel_size: [usize; N]) -> Self {
        ConvTranspose {
            features,
            kernel_size,
            strides: [1; N],
            padding: Padding::Same,
            kernel_dilation: [1; N],
            use_bias: true,
            kernel_init: Init::new(init::lecun_normal()),
            bias_init: Init::new(init::zeros),
        }
    }

    /// Sets `strides`.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let layer = nn::ConvTranspose::new(4, [3, 3]).strides([2, 2]);
    /// assert_eq!(layer.strides, [2, 2]);
    /// ```
    pub fn strides(mut self, strides: [usize; N]) -> Self {
        self.strides = strides;
        self
    }

    /// Sets `padding`.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let layer = nn::ConvTranspose::new(4, [3, 3]).padding(nn::Padding::Valid);
    /// assert_eq!(layer.padding, nn::Padding::Valid);
    /// ```
    pub fn padding(mut self, padding: Padding<N>) -> Self {
        self.padding = padding;
        self
    }

    /// Sets `kernel_dilation`.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let layer = nn::ConvTranspose::new(4, [3, 3]).kernel_dilation([2, 2]);
    /// assert_eq!(layer.kernel_dilation, [2, 2]);
    /// ```
    pub fn kernel_dilation(mut self, dilation: [usize; N]) -> Self {
        self.kernel_dilation = dilation;
        self
    }

    /// Sets `use_bias`.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let layer = nn::ConvTranspose::new(4, [3, 3]).use_bias(false);
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
    /// let _layer = nn::ConvTranspose::new(4, [3, 3]).kernel_init(init::zeros);
    /// ```
    pub fn kernel_init(mut self, init: impl Initializer + Send + Sync + 'static) -> Self {
        self.kernel_init = Init::new(init);
        self
    }

    /// Sets `bias_init`.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let _layer = nn::ConvTranspose::new(4, [3, 3]).bias_init(init::zeros);
    /// ```
    pub fn bias_init(mut self, init: impl Initializer + Send + Sync + 'static) -> Self {
        self.bias_init = Init::new(init);
        self
    }

    /// The kernel's shape for an input of `shape`.
    fn kernel_shape(&self, shape: &[usize]) -> Vec<usize> {
        let mut k = self.kernel_size.to_vec();
        k.push(shape.last().copied().unwrap_or(0));
        k.push(self.features);
        k
    }

    /// The convolution this layer computes, for an input of `shape`.
    fn spec(&self, shape: &[usize]) -> Result<ConvSpec<N>, ConvError> {
        let window: [usize; N] = std::array::from_fn(|d| {
            if self.kernel_size[d] == 0 {
                0
            } else {
                (self.kernel_size[d] - 1) * self.kernel_dilation[d].max(1) + 1
            }
        });
        let spec = ConvSpec {
            strides: [1; N],
            padding: ConvSpec::transpose_padding(self.padding, window, self.strides)?,
            input_dilation: self.strides,
            kernel_dilation: self.kernel_dilation,
            groups: 1,
        };
        spec.output_shape(shape, &self.kernel_shape(shape))?;
        Ok(spec)
    }
}

#[differentiable]
impl<const N: usize> ConvTranspose<N> {
    /// The layer in the scope `cx`: what a parent module's `call` runs, and
    /// `init` and `apply` at the root.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let x = ndarray::Array4::<f64>::ones((1, 5, 5, 2));
    /// let layer = nn::ConvTranspose::new(4, [3, 3]).strides([2, 2]);
    /// let vars = layer.init(0, &x).unwrap();
    /// assert_eq!(layer.apply(&vars, &x).unwrap().shape(), &[1, 10, 10, 4]);
    /// ```
    pub fn call<A: Real, D: Dimension + DimMax<Ix1, Output = D>>(
        &self,
        cx: &mut Scope,
        x: &Array<A, D>,
    ) -> Array<A, D> {
        let spec = self.spec(x.shape());
        let kernel: ArcArrayD<A> = cx.param(
            "kernel",
            self.kernel_init.clone(),
            self.kernel_shape(x.shape()),
        );
        let y = if cx.check(&spec) {
            conv(x, &kernel, spec.unwrap_or(placeholder_spec()))
        } else {
            placeholder(x.raw_dim(), self.features)
        };
        if self.use_bias {
            let bias: ArcArray1<A> = cx.param("bias", self.bias_init.clone(), self.features);
            y + &bias
        } else {
            y
        }
    }
}

/// A spec that is never used: the layer computes only with a checked one.
fn placeholder_spec<const N: usize>() -> ConvSpec<N> {
    ConvSpec {
        strides: [1; N],
        padding: [(0, 0); N],
        input_dilation: [1; N],
        kernel_dilation: [1; N],
        groups: 1,
    }
}

/// What a layer returns for an input it rejected (its error is recorded): zeros
/// shaped like the input with `features` last.
fn placeholder<A: Real, D: Dimension>(dim: D, features: usize) -> Array<A, D> {
    zeros_with_last(dim, features)
}
