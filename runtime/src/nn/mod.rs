//! Flax's `flax.linen` for adjoint: layers as modules, written with
//! `#[differentiable]` like a user's own (so every order of derivative goes through
//! them), with Flax's fields, defaults, parameter names and shapes (the checkpoint
//! contract); and the activations and other functions with derivative rules that
//! `#[differentiable]` code may call.
//!
//! ```
//! use adjoint::prelude::*;
//! let x = ndarray::Array2::<f64>::ones((2, 3));
//! let vars = nn::Dense::new(4).init(0, &x).unwrap();
//! let y = nn::relu(&nn::Dense::new(4).apply(&vars, &x).unwrap());
//! assert_eq!(y.shape(), &[2, 4]);
//! ```

mod batch_norm;
mod dense;
mod dropout;

pub use crate::rules::elementwise::{relu, sigmoid, softplus};
pub use crate::rules::nn::{log_softmax, logsumexp, softmax};
pub use batch_norm::BatchNorm;
pub use dense::Dense;
pub use dropout::Dropout;
