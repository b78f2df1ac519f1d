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
//!
//! The activations are Flax's (`jax.nn`'s), by the same names. Python's keyword
//! defaults are explicit arguments (`nn.elu(x)` is `nn::elu(&x, 1.0)`,
//! `nn.leaky_relu(x)` is `nn::leaky_relu(&x, 0.01)`), and `nn.gelu(x,
//! approximate=False)` is [`gelu_exact`]. Such a parameter is a constant: passing a
//! differentiated value there is a compile-time error.
//!
//! ```
//! use adjoint::prelude::*;
//! use ndarray::{Array1, array};
//!
//! #[differentiable]
//! fn loss(x: &Array1<f64>) -> f64 {
//!     (nn::gelu(x) + nn::leaky_relu(x, 0.1)).sum()
//! }
//!
//! let g = grad!(loss)(&array![-1.0, 0.0, 2.0]);
//! assert!((g[2] - (1.086_099_256_623_618 + 1.0)).abs() < 1e-12); // jax.grad(nn.gelu)(2.) + 1
//! ```

mod attention;
mod conv;
mod dense;
mod dropout;
mod embed;
mod normalization;
mod recurrent;

pub use crate::rules::activation::{
    celu, elu, gelu, gelu_exact, hard_sigmoid, hard_silu, hard_swish, hard_tanh, leaky_relu,
    log_sigmoid, mish, relu6, selu, silu, soft_sign, swish,
};
pub use crate::rules::conv::Padding;
pub use crate::rules::elementwise::{relu, sigmoid, softplus};
pub use crate::rules::gather::one_hot;
pub use crate::rules::linalg::batch_matmul;
pub use crate::rules::nn::{log_softmax, logsumexp, softmax, where_};
pub use crate::rules::pool::{avg_pool, max_pool, min_pool};
pub use attention::{
    DenseGeneral, MultiHeadDotProductAttention, combine_masks, dot_product_attention,
    dot_product_attention_weights, make_attention_mask, make_causal_mask,
};
pub use conv::{Conv, ConvTranspose};
pub use dense::Dense;
pub use dropout::Dropout;
pub use embed::Embed;
pub use normalization::{BatchNorm, GroupNorm, LayerNorm, RMSNorm, standardize};
pub use recurrent::{GRUCell, LSTMCell, RNN, SimpleCell};
