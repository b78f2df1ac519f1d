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
pub use crate::rules::elementwise::{relu, sigmoid, softplus, tanh};
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

/// Flax's `nn.Sequential`: a module type whose `call` runs its layers in order, each
/// on the output of the one before. A module layer runs in a scope named `layers_{i}`,
/// `i` its index in the list with functions counted (Flax's names for a top-level
/// `Sequential`, so its checkpoints map one to one); a function (`nn::relu`) is
/// applied to the output, a closure (`|h| h.tanh()`) inlined. The type is a module
/// like any other: `init`, `apply`, lifted transforms, a submodule of another (named
/// as any module, `Mlp_0/layers_0/..` or its field's name; Flax's `nn.Sequential([..])`
/// built inline in a compact method names the layers in the parent instead, since
/// they are made there: write those calls in the parent's `call`).
///
/// ```
/// use adjoint::prelude::*;
/// use ndarray::Array2;
///
/// nn::sequential! {
///     /// A small MLP.
///     struct Mlp(x: &Array2<f64>) -> Array2<f64> [
///         nn::Dense::new(4),
///         nn::relu,
///         nn::Dense::new(3),
///         |h| h.tanh(),
///         nn::Dense::new(2),
///     ]
/// }
///
/// let x = Array2::<f64>::ones((5, 3));
/// let vars = Mlp.init(0, &x).unwrap();
/// assert_eq!(
///     vars.shapes(),
///     r#"{"params": {"layers_0": {"bias": [4], "kernel": [3, 4]}, "layers_2": {"bias": [3], "kernel": [4, 3]}, "layers_4": {"bias": [2], "kernel": [3, 2]}}}"#
/// );
/// assert_eq!(Mlp.apply(&vars, &x).unwrap().shape(), &[5, 2]);
/// ```
pub use adjoint_macros::sequential;
pub use recurrent::{GRUCell, LSTMCell, RNN, SimpleCell};
