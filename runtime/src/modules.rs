//! Ready-made modules, written with `#[differentiable]` like a user's own.

use crate::init;
use crate::scope::Scope;
use adjoint_macros::differentiable;
use ndarray::{ArcArray1, ArcArray2, Array2};

/// A fully connected layer, as Flax's `nn.Dense`: `x · kernel + bias`, with a
/// LeCun-normal `kernel` of shape `(inputs, features)` and a zero `bias`.
///
/// ```
/// use adjoint::prelude::*;
/// use adjoint::modules::Dense;
/// let x = ndarray::Array2::<f64>::ones((2, 3));
/// let vars = Dense::new(4).init(0, &x).unwrap();
/// assert_eq!(vars.shapes(), r#"{"params": {"bias": [4], "kernel": [3, 4]}}"#);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Dense {
    /// The number of outputs.
    pub features: usize,
}

impl Dense {
    /// A layer with `features` outputs.
    pub fn new(features: usize) -> Self {
        Dense { features }
    }
}

#[differentiable]
impl Dense {
    pub fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> Array2<f64> {
        let kernel: ArcArray2<f64> =
            cx.param("kernel", init::lecun_normal(), (x.ncols(), self.features));
        let bias: ArcArray1<f64> = cx.param("bias", init::zeros, self.features);
        x.dot(&kernel) + &bias
    }
}
