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

// What the generated code calls (the rule table with every pullback, records of
// control flow, vmap!'s batches, the transforms' seeds): public for the expansion,
// hidden from the documentation. The user-facing items are re-exported where users
// look for them (`nn`, the crate root).
#[doc(hidden)]
pub mod batch;
pub mod check;
pub mod checkpoint;
#[doc(hidden)]
pub mod control;
pub mod data;
pub mod init;
#[doc(hidden)]
pub mod jacobian;
pub mod losses;
pub mod nn;
pub mod optim;
#[doc(hidden)]
pub mod rules;
pub mod scope;
pub mod train;
#[doc(hidden)]
pub mod transforms;
#[doc(hidden)]
pub mod value;
pub mod variables;

/// Writes the gradient of a function, or of every method of an inherent `impl`, next
/// to it when the crate compiles. On an `impl` whose `call` takes the scope first, the
/// type becomes a Flax module with `init`, `apply` and `apply_with`.
///
/// ```
/// use adjoint::prelude::*;
/// use ndarray::{array, Array1};
///
/// #[differentiable]
/// fn energy(x: &Array1<f64>, k: f64) -> f64 {
///     k * (x * x).sum() / 2.0
/// }
/// let (gx, gk) = grad!(energy)(&array![1.0, -2.0], 3.0);
/// assert_eq!(gx, array![3.0, -6.0]);
/// assert_eq!(gk, 2.5);
///
/// struct Scale;
///
/// #[differentiable]
/// impl Scale {
///     fn call(&self, cx: &mut Scope, x: f64) -> f64 {
///         let s: f64 = cx.param("s", init::constant(2.0), ());
///         s * x
///     }
/// }
/// let vars = Scale.init(0, 1.0).unwrap();
/// assert_eq!(vars.to_string(), r#"{"params": {"s": 2.0}}"#);
/// assert_eq!(Scale.apply(&vars, 3.0).unwrap(), 6.0);
/// ```
///
/// `#[differentiable(jvp)]` also writes the forward-mode companion that [`jvp!`]
/// calls (and [`hvp!`], [`jacfwd!`], [`jacrev!`], [`hessian!`] on top of it). On an
/// impl, it gives the methods forward mode too, and a module's forward mode (second
/// order through a lifted `grad!`, a lifted `jvp!`) follows the calls in its body.
/// `#[differentiable(jvp = 2)]` makes `f::jvp` itself `(jvp)`: a `(jvp)` function
/// calling `jvp!(f)` then has forward mode, and its Hessian is a third derivative.
///
/// ```
/// use adjoint::prelude::*;
///
/// #[differentiable(jvp = 2)]
/// fn cube(x: f64) -> f64 {
///     x * x * x
/// }
///
/// #[differentiable(jvp)]
/// fn slope(x: f64) -> f64 {
///     let (_, d) = jvp!(cube)(x, 1.0); // 3 x^2
///     d
/// }
///
/// assert_eq!(hessian!(slope)(2.0)[[]], 6.0); // d3/dx3 of x^3
/// ```
///
/// Arguments of types mentioning `f32`, `f64`, a type parameter bounded by
/// [`Real`], or [`Variables`] are differentiated; `#[no_grad]` on a parameter makes
/// it a constant.
pub use adjoint_macros::differentiable;

/// Your own reverse rule for a function, as `jax.custom_vjp`: `fwd` returns the
/// output and what the pullback needs, `bwd(residuals, cotangent)` one cotangent per
/// argument.
///
/// ```
/// use adjoint::prelude::*;
///
/// // A clipped gradient for the square root near zero.
/// #[custom_vjp(fwd = safe_sqrt_fwd, bwd = safe_sqrt_bwd)]
/// fn safe_sqrt(x: f64) -> f64 {
///     x.sqrt()
/// }
/// fn safe_sqrt_fwd(x: f64) -> (f64, f64) {
///     let y = x.sqrt();
///     (y, y)
/// }
/// fn safe_sqrt_bwd(y: f64, ct: f64) -> (f64,) {
///     (ct / (2.0 * y.max(1e-3)),)
/// }
/// assert_eq!(grad!(safe_sqrt)(0.0), 500.0);
/// ```
pub use adjoint_macros::custom_vjp;

/// Your own forward rule for a function, as `jax.custom_jvp`: `jvp` takes the
/// function's arguments, then one tangent per differentiated argument (of its type),
/// and returns `(output, output tangent)`, linear in the tangents. Forward mode
/// (`jvp!`, a `(jvp)` caller, `hvp!`, `jacfwd!`, `hessian!`) calls it, and reverse
/// mode (`grad!`, `vjp!`) transposes it, as JAX does: the body itself is never
/// differentiated. The rule must be `#[differentiable]`: both differentiate it.
///
/// ```
/// use adjoint::prelude::*;
///
/// /// `ln(1 + e^x)`: its body's derivative is `e^x / (1 + e^x)`, NaN for large `x`.
/// #[custom_jvp(jvp = softplus_jvp)]
/// fn softplus(x: f64) -> f64 {
///     (1.0 + x.exp()).ln()
/// }
///
/// #[differentiable]
/// fn softplus_jvp(x: f64, dx: f64) -> (f64, f64) {
///     (softplus(x), dx / (1.0 + (-x).exp()))
/// }
///
/// let (_, d) = jvp!(softplus)(1000.0, 1.0);
/// assert_eq!(d, 1.0);
/// assert_eq!(grad!(softplus)(1000.0), 1.0); // reverse mode transposes the rule
/// ```
pub use adjoint_macros::custom_jvp;

/// The gradient of a function with respect to its differentiated arguments (one
/// cotangent, or a tuple of them), as `jax.grad`; `grad!(|x, y| body, wrt = [x])` for
/// a closure, `has_aux` for a `(value, aux)` output. Inside a module,
/// `grad!(cx, |mdl, cx, x| mdl.call(cx, x), Child, x)` is `flax.linen.grad`:
/// cotangents for the primals only, the child's variables constant.
///
/// ```
/// use adjoint::prelude::*;
///
/// #[differentiable]
/// fn f(x: f64, y: f64) -> f64 {
///     x * x * y
/// }
/// assert_eq!(grad!(f)(3.0, 2.0), (12.0, 9.0));
/// assert_eq!(grad!(|x: f64, y: f64| f(x, y), wrt = [y])(3.0, 2.0), 9.0);
/// let (g, aux) = grad!(|x: f64| (x * x, x + 1.0), has_aux)(3.0);
/// assert_eq!((g, aux), (6.0, 4.0));
/// ```
pub use adjoint_macros::grad;

/// The value and the gradient, as `jax.value_and_grad`: `(value, gradient)`, or
/// `((value, aux), gradient)` with `has_aux`.
///
/// ```
/// use adjoint::prelude::*;
///
/// #[differentiable]
/// fn f(x: f64) -> f64 {
///     x.sin()
/// }
/// let (v, g) = value_and_grad!(f)(0.0);
/// assert_eq!((v, g), (0.0, 1.0));
/// ```
pub use adjoint_macros::value_and_grad;

/// The value and its pullback, as `jax.vjp`: `pullback(ct)` gives one cotangent per
/// argument (`()` for constant ones). For outputs that are not scalars.
///
/// ```
/// use adjoint::prelude::*;
/// use ndarray::{array, Array1};
///
/// #[differentiable]
/// fn square(x: &Array1<f64>) -> Array1<f64> {
///     x * x
/// }
/// let x = array![1.0, 2.0];
/// let (y, pullback) = vjp!(square)(&x);
/// assert_eq!(y, array![1.0, 4.0]);
/// let (gx,) = pullback(array![1.0, 10.0]);
/// assert_eq!(gx, array![2.0, 40.0]);
/// ```
pub use adjoint_macros::vjp;

/// Forward mode, as `jax.jvp`: for `f` marked `#[differentiable(jvp)]`,
/// `jvp!(f)(args.., tangents..)` gives the value and its directional derivative.
/// Inside a module, `jvp!(cx, |mdl, cx, x| .., Child, (x,), (tx,), variable_tangents)`
/// is `flax.linen.jvp`.
///
/// ```
/// use adjoint::prelude::*;
///
/// #[differentiable(jvp)]
/// fn f(x: f64, y: f64) -> f64 {
///     x * y + x.sin()
/// }
/// let (v, dv) = jvp!(f)(0.0, 2.0, 1.0, 0.0); // along x
/// assert_eq!((v, dv), (0.0, 3.0));
/// ```
pub use adjoint_macros::jvp;

/// The Hessian times tangents, as `jax.jvp(jax.grad(f), ..)`: for `f` marked
/// `#[differentiable(jvp)]` with a scalar output, `hvp!(f)(args.., tangents..)` is
/// reverse over forward, shaped as `grad!(f)`'s result.
///
/// ```
/// use adjoint::prelude::*;
/// use ndarray::{array, Array1};
///
/// #[differentiable(jvp)]
/// fn f(x: &Array1<f64>) -> f64 {
///     (x * x * x).sum() // H = diag(6 x)
/// }
/// let hv = hvp!(f)(&array![1.0, 2.0], &array![1.0, 1.0]);
/// assert_eq!(hv, array![6.0, 12.0]);
/// ```
pub use adjoint_macros::hvp;

/// The Jacobian by forward mode, as `jax.jacfwd`: for `f` marked
/// `#[differentiable(jvp)]`, with respect to its first differentiated argument (the
/// others held), an `ArrayD` of shape `output ++ input`, one JVP per input element.
///
/// ```
/// use adjoint::prelude::*;
/// use ndarray::{array, Array1};
///
/// #[differentiable(jvp)]
/// fn f(x: &Array1<f64>, k: f64) -> Array1<f64> {
///     x * x * k
/// }
/// let j = jacfwd!(f)(&array![1.0, 2.0], 3.0);
/// assert_eq!(j, array![[6.0, 0.0], [0.0, 12.0]].into_dyn());
/// ```
pub use adjoint_macros::jacfwd;

/// The Jacobian by reverse mode, as `jax.jacrev`: as [`jacfwd!`], one VJP per
/// output element.
///
/// ```
/// use adjoint::prelude::*;
/// use ndarray::{array, Array1};
///
/// #[differentiable(jvp)]
/// fn f(x: &Array1<f64>) -> Array1<f64> {
///     x.sin()
/// }
/// let x = array![0.0, 1.0];
/// assert_eq!(jacrev!(f)(&x), jacfwd!(f)(&x));
/// ```
///
/// Inside a module, both take the lifted form (which Flax lacks, flax#735):
/// `jacrev!(cx, |mdl, cx, x, ..| body, Child, x, ..)` is the Jacobian of the
/// closure's output with respect to its first primal, the child's variables held
/// constant as in `grad!`. One lifted `vjp!` (`jvp!` for `jacfwd!`) runs per output
/// (input) element: the first in the module's scope, the others again from the
/// scope's state before it, so that every row sees the same variables and random
/// keys (a `Dropout` mask).
///
/// ```
/// use adjoint::prelude::*;
/// use ndarray::{array, Array1, ArrayD};
///
/// struct Scale;
///
/// #[differentiable]
/// impl Scale {
///     fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> Array1<f64> {
///         let w: f64 = cx.param("w", init::constant(3.0), ());
///         x * x * w
///     }
/// }
///
/// struct Sensitivity;
///
/// #[differentiable]
/// impl Sensitivity {
///     fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> ArrayD<f64> {
///         jacrev!(cx, |mdl, cx, x| mdl.call(cx, x), Scale, x)
///     }
/// }
///
/// let x = array![1.0, 2.0];
/// let vars = Sensitivity.init(0, &x).unwrap();
/// let j = Sensitivity.apply(&vars, &x).unwrap();
/// assert_eq!(j, array![[6.0, 0.0], [0.0, 12.0]].into_dyn());
/// ```
pub use adjoint_macros::jacrev;

/// The Hessian, as `jax.hessian`: for `f` marked `#[differentiable(jvp)]` with a
/// scalar output, with respect to its first differentiated argument, an `ArrayD` of
/// shape `input ++ input` (one Hessian-vector product per input element).
///
/// ```
/// use adjoint::prelude::*;
/// use ndarray::{array, Array1};
///
/// #[differentiable(jvp)]
/// fn f(x: &Array1<f64>) -> f64 {
///     x[0] * x[0] * x[1]
/// }
/// let h = hessian!(f)(&array![1.0, 2.0]);
/// assert_eq!(h, array![[4.0, 2.0], [2.0, 0.0]].into_dyn());
/// ```
///
/// Inside a module, `hessian!(cx, |mdl, cx, x| mdl.call(cx, x), Child, x)` is the
/// Hessian of a child with a scalar output in its first primal, its variables held
/// (Flax has no lifted Hessian), and `hvp!(cx, |mdl, cx, x| mdl.call(cx, x), Child,
/// x, v)` its product with `v`:
///
/// ```
/// use adjoint::prelude::*;
/// use ndarray::{array, Array1, ArrayD};
///
/// struct Cubic;
///
/// #[differentiable]
/// impl Cubic {
///     fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> f64 {
///         let w: f64 = cx.param("w", init::ones, ());
///         (x * x * x).sum() * w // H = diag(6 w x)
///     }
/// }
///
/// struct Curvature;
///
/// #[differentiable]
/// impl Curvature {
///     fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> (ArrayD<f64>, Array1<f64>) {
///         let h = hessian!(cx, |mdl, cx, x| mdl.call(cx, x), Cubic, x);
///         let hv = hvp!(cx, |mdl, cx, x| mdl.call(cx, x), Cubic, x, x);
///         (h, hv)
///     }
/// }
///
/// let x = array![1.0, 2.0];
/// let vars = Curvature.init(0, &x).unwrap();
/// let (h, hv) = Curvature.apply(&vars, &x).unwrap();
/// assert_eq!(h, array![[6.0, 0.0], [0.0, 12.0]].into_dyn());
/// assert_eq!(hv, array![6.0, 24.0]);
/// ```
pub use adjoint_macros::hessian;

/// Vectorizing map, as `jax.vmap`: `f` over axis `k` of the arguments marked `k` in
/// `in_axes` (`None` broadcasts), the outputs stacked along a new axis 0. With
/// `grad!`, per-example gradients; with `axis_name` and a `grad!` given
/// `reduce_axes`, the broadcast arguments' cotangents summed. Inside a module,
/// `flax.linen.vmap` (variables broadcast).
///
/// ```
/// use adjoint::prelude::*;
/// use ndarray::{array, Array1, ArrayView1};
///
/// #[differentiable]
/// fn loss(w: &Array1<f64>, #[no_grad] x: ArrayView1<f64>) -> f64 {
///     x.dot(w).powi(2)
/// }
/// let (w, x) = (array![1.0, 2.0], array![[1.0, 0.0], [0.0, 1.0]]);
/// let per_example = vmap!(grad!(loss), in_axes = [None, 0])(&w, &x);
/// assert_eq!(per_example, array![[2.0, 0.0], [0.0, 4.0]]);
/// ```
///
/// Inside a module, `vmap!(cx, |mdl, cx, x| mdl.call(cx, x), Child, x, in_axes = [0])`
/// runs the child once per row with one set of parameters; a module whose output
/// comes through it is differentiated as any other (second order too):
///
/// ```
/// use adjoint::prelude::*;
/// use ndarray::{array, Array1, Array2, ArrayD, ArrayView1};
///
/// struct Row;
///
/// #[differentiable]
/// impl Row {
///     fn call(&self, cx: &mut Scope, x: ArrayView1<f64>) -> f64 {
///         let w: Array1<f64> = cx.param("w", init::ones, x.len());
///         x.dot(&w).powi(2)
///     }
/// }
///
/// struct Rows;
///
/// #[differentiable]
/// impl Rows {
///     fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> f64 {
///         let per_row = vmap!(cx, |mdl, cx, x| mdl.call(cx, x), Row, x, in_axes = [0]);
///         per_row.sum()
///     }
/// }
///
/// let x = array![[1.0, 0.0], [1.0, 1.0]];
/// let vars = Rows.init(0, &x).unwrap();
/// let g = grad!(|v: &Variables| Rows.apply(v, &x).unwrap())(&vars);
/// // d/dw sum_i (x_i . w)^2 = sum_i 2 (x_i . w) x_i, at w = [1, 1].
/// let gw: ArrayD<f64> = g.read("params", "Row_0/w").unwrap();
/// assert_eq!(gw, array![6.0, 4.0].into_dyn());
/// ```
pub use adjoint_macros::vmap;
pub use scope::{Scope, ScopeError, Variables};
pub use transforms::NoTangent;
pub use value::{Cot, Real, Value};

/// Stops the gradient: `no_grad(x)` is `x`, but the transform treats it as a
/// constant, like `jax.lax.stop_gradient`.
///
/// ```
/// use adjoint::prelude::*;
/// #[differentiable]
/// fn f(x: f64) -> f64 {
///     x * no_grad(x)
/// }
/// assert_eq!(grad!(f)(3.0), 3.0); // not 6
/// ```
#[inline(always)]
pub fn no_grad<T>(x: T) -> T {
    x
}

/// Everything a user of `#[differentiable]` needs: `use adjoint::prelude::*;`.
pub mod prelude {
    pub use crate::init;
    pub use crate::losses;
    pub use crate::nn;
    pub use crate::nn::*;
    pub use crate::no_grad;
    pub use crate::optim::{self, GradientTransformation};
    pub use crate::scope::{Bound, Scope, ScopeError, Variables};
    pub use crate::{
        custom_jvp, custom_vjp, differentiable, grad, hessian, hvp, jacfwd, jacrev, jvp,
        value_and_grad, vjp, vmap,
    };
}

/// What the generated code calls. Not a public API: names here change freely.
#[doc(hidden)]
pub mod __private {
    pub use crate::batch::{
        Batch, ExampleNone, ExampleOf, ExampleUnstacked, Reduced, add_example, batch_len,
        common_len, example, probe, unbatch,
    };
    pub use crate::control::*;
    pub use crate::jacobian::{
        Basis, Jacobian, basis_len, jacfwd, jacobian_column, jacrev, passed_like, unit,
    };
    pub use crate::rules::activation::*;
    pub use crate::rules::conv::{conv, conv_pb_k, conv_pb_x};
    pub use crate::rules::elementwise::*;
    pub use crate::rules::gather::{take, take_pb};
    pub use crate::rules::linalg::*;
    pub use crate::rules::nn::*;
    pub use crate::rules::pool::*;
    pub use crate::rules::reduce::*;
    pub use crate::rules::reuse::*;
    pub use crate::rules::shape::*;
    pub use crate::rules::tree::*;
    pub use crate::scope::{
        add_param, kept_tangents, rerun_failed, second_order, split_tangent_cotangents,
        unsupported_cot, vjp_variables,
    };
    pub use crate::transforms::{
        GradOf, IntoTangent, IsZero, LiteralTangent, NoTangent, OnlyVjp, ScalarOutput, ZeroTangent,
        grad_seed, literal_tangent, tangent, zero_tangent,
    };
    pub use crate::value::{Accumulate, AddScaled, Cot, Own, Value};
    /// `array![..]`, for forward mode's output (read back as `from_elems`).
    pub use ndarray::array;

    /// A lifted `vjp!`'s pullback `pb`, its cotangent typed as the output `y`'s, so
    /// that a pullback the code never calls still has a type.
    #[inline(always)]
    pub fn pullback_of<Y: Value + ?Sized, R, F: FnOnce(Y::Cot) -> R>(_y: &Y, pb: F) -> F {
        pb
    }

    /// One, of the type the callee's parameter asks for: the seed of a lifted
    /// `grad!`'s input gradient written back as source (`__call_vjpx`).
    #[inline(always)]
    pub fn unit_seed<A: crate::value::Real>() -> A {
        A::lit(1.0)
    }

    /// An owned copy of `x` (see [`Own`]).
    #[inline(always)]
    pub fn own<T: Own + ?Sized>(x: &T) -> T::Owned {
        x.own()
    }

    /// A value a pattern bound (`Some(m) => ..`), as a branch's record keeps it for
    /// the pullback: `(&&Keep(&m)).keep()` copies what [`Own`] covers (a mask
    /// borrowed from an `Option<&Array>` argument becomes an array the pullback
    /// owns) and clones anything else (an integer, an `Axis`).
    pub struct Keep<'a, T: ?Sized>(pub &'a T);

    /// [`Keep`] of a value [`Own`] covers: its owned copy.
    pub trait KeepOwned {
        /// The copy.
        type Out;
        /// The copy.
        fn keep(&self) -> Self::Out;
    }

    impl<T: Own + ?Sized> KeepOwned for &Keep<'_, T> {
        type Out = T::Owned;
        #[inline(always)]
        fn keep(&self) -> T::Owned {
            self.0.own()
        }
    }

    /// [`Keep`] of any other value: a clone.
    pub trait KeepCloned {
        /// The clone.
        type Out;
        /// The clone.
        fn keep(&self) -> Self::Out;
    }

    impl<T: Clone> KeepCloned for Keep<'_, T> {
        type Out = T;
        #[inline(always)]
        fn keep(&self) -> T {
            self.0.clone()
        }
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

    /// What `#[differentiable(jvp)]` implements for a function whose gradient it
    /// writes as a differentiable function (`f::grad_fn`): the check that a
    /// `grad!(f)(..)` inside a differentiated body can be differentiated again.
    #[diagnostic::on_unimplemented(
        message = "`grad!({Self})(..)` inside a differentiated body needs `{Self}` to be `#[differentiable(jvp)]`",
        label = "its gradient is differentiated again",
        note = "the pullback of a gradient is the function's Hessian-vector product, which needs its forward mode; its reference arguments must be floats, owned arrays or `Variables` (the pullback keeps a copy)"
    )]
    pub trait GradFn {}

    /// Checks, at compile time, that `F` is a [`GradFn`].
    #[inline(always)]
    pub fn grad_fn_of<F: GradFn>() {}

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

    /// A float literal (or an expression of literals, computed in `f64`) in `x`'s
    /// element type, which may be a type parameter.
    #[inline(always)]
    pub fn lit<X: Value>(_like: &X, v: f64) -> <X::Primal as Elementwise>::Elem
    where
        X::Primal: Elementwise,
    {
        crate::value::Real::lit(v)
    }

    pub use ndarray;
}
