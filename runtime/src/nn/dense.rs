//! `Dense`: Flax's `nn.Dense`.

use crate::init;
use crate::scope::Scope;
use crate::value::Real;
use adjoint_macros::differentiable;
use ndarray::{ArcArray1, ArcArray2, Array2};

/// A fully connected layer, as Flax's `nn.Dense`: `x · kernel + bias`, with a
/// LeCun-normal `kernel` of shape `(inputs, features)` and a zero `bias`, in the
/// input's float type (`f32` or `f64`).
///
/// ```
/// use adjoint::prelude::*;
/// use adjoint::nn::Dense;
/// let x = ndarray::Array2::<f64>::ones((2, 3));
/// let vars = Dense::new(4).init(0, &x).unwrap();
/// assert_eq!(vars.shapes(), r#"{"params": {"bias": [4], "kernel": [3, 4]}}"#);
/// let y = Dense::new(4).apply(&vars, &x).unwrap();
/// assert_eq!(y.shape(), &[2, 4]);
/// // The same layer in f32.
/// let x32 = ndarray::Array2::<f32>::ones((2, 3));
/// let vars32 = Dense::new(4).init(0, &x32).unwrap();
/// let y32: ndarray::Array2<f32> = Dense::new(4).apply(&vars32, &x32).unwrap();
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Dense {
    /// The number of outputs.
    pub features: usize,
}

impl Dense {
    /// A layer with `features` outputs.
    ///
    /// ```
    /// assert_eq!(adjoint::nn::Dense::new(4).features, 4);
    /// ```
    pub fn new(features: usize) -> Self {
        Dense { features }
    }
}

#[differentiable]
impl Dense {
    pub fn call<A: Real>(&self, cx: &mut Scope, x: &Array2<A>) -> Array2<A> {
        let kernel: ArcArray2<A> =
            cx.param("kernel", init::lecun_normal(), (x.ncols(), self.features));
        let bias: ArcArray1<A> = cx.param("bias", init::zeros, self.features);
        x.dot(&kernel) + &bias
    }
}
