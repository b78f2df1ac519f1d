//! adjoint: compile-time reverse-mode automatic differentiation for Rust.
//!
//! Put `#[differentiable]` on a numeric function written the ordinary way, over
//! `f32`/`f64` scalars and `ndarray` arrays, and the macro writes its gradient
//! next to it when the crate compiles: no tape, no graph, no dynamic dispatch.
//!
//! ```
//! use adjoint::prelude::*;
//!
//! #[differentiable]
//! fn f(x: f64, y: f64) -> f64 {
//!     let z = x * y;
//!     z.sin() + y
//! }
//!
//! let (gx, gy) = grad!(f)(0.5, 2.0);
//! assert!((gx - 2.0 * 1.0f64.cos()).abs() < 1e-12);
//! assert!((gy - (0.5 * 1.0f64.cos() + 1.0)).abs() < 1e-12);
//! ```
//!
//! See the README for the supported Rust, the transforms and how to read the
//! generated code.

extern crate self as adjoint;

pub mod batch;
pub mod check;
pub mod control;
pub mod init;
pub mod nn;
pub mod rules;
pub mod scope;
pub mod transforms;
pub mod value;
pub mod variables;

pub use adjoint_macros::{custom_vjp, differentiable, grad, jvp, value_and_grad, vjp, vmap};
pub use scope::{Scope, ScopeError, Variables};
pub use value::{Cot, Real, Value};


/// Stops the gradient: `no_grad(x)` is `x`, but the transform treats it as a
/// constant, like `jax.lax.stop_gradient`.
#[inline(always)]
pub fn no_grad<T>(x: T) -> T {
    x
}

/// Everything a user of `#[differentiable]` needs: `use adjoint::prelude::*;`.
pub mod prelude {
    pub use crate::init;
    pub use crate::nn;
    pub use crate::nn::*;
    pub use crate::no_grad;
    pub use crate::scope::{Bound, Scope, ScopeError, Variables};
    pub use crate::{custom_vjp, differentiable, grad, jvp, value_and_grad, vjp, vmap};
}

/// What the generated code calls. Not a public API: names here change freely.
#[doc(hidden)]
pub mod __private {
    pub use crate::batch::{Batch, Reduced, batch_len, common_len, probe, unbatch};
    pub use crate::control::*;
    pub use crate::rules::elementwise::*;
    pub use crate::rules::linalg::*;
    pub use crate::rules::nn::*;
    pub use crate::rules::reduce::*;
    pub use crate::rules::reuse::*;
    pub use crate::rules::shape::*;
    pub use crate::rules::tree::*;
    pub use crate::scope::{add_param, second_order, vjp_variables};
    pub use crate::transforms::{GradOf, IntoTangent, NoTangent, ScalarOutput, grad_seed, tangent};
    pub use crate::value::{Accumulate, Cot, Own, Value};

    /// An owned copy of `x` (see [`Own`]).
    #[inline(always)]
    pub fn own<T: Own + ?Sized>(x: &T) -> T::Owned {
        x.own()
    }

    /// A copy of a module for a second-order pullback, which may not borrow `self`.
    #[inline(always)]
    pub fn keep_module<M: KeepModule>(m: &M) -> M {
        m.keep()
    }

    /// A module a second-order pullback keeps a copy of.
    #[diagnostic::on_unimplemented(
        message = "differentiating through a lifted `grad!` over the module `{Self}`, held in a field, needs a copy of it",
        label = "the module is not `Clone`",
        note = "add `#[derive(Clone)]` to the module"
    )]
    pub trait KeepModule {
        fn keep(&self) -> Self;
    }

    impl<M: Clone> KeepModule for M {
        #[inline(always)]
        fn keep(&self) -> M {
            self.clone()
        }
    }

    /// `*acc += ct`.
    #[inline(always)]
    pub fn acc<T: Accumulate>(acc: &mut T, ct: T) {
        acc.accumulate(ct)
    }

    /// The shape of `x` (zero-sized for a scalar).
    #[inline(always)]
    pub fn shape_of<X: Value>(x: &X) -> <X::Primal as crate::value::ShapeOf>::Shape
    where
        X::Primal: crate::value::ShapeOf,
    {
        crate::value::ShapeOf::shape_of(x.primal())
    }

    /// A zero cotangent shaped like `x`.
    #[inline(always)]
    pub fn zeros<X: Value>(x: &X) -> X::Cot {
        x.zeros()
    }

    /// A float literal in `x`'s element type.
    #[inline(always)]
    pub fn lit<X: Value>(_like: &X, v: f64) -> <X::Primal as Elementwise>::Elem
    where
        X::Primal: Elementwise,
    {
        crate::value::Real::lit(v)
    }

    pub use ndarray;
}
