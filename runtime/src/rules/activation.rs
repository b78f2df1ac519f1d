//! Activations, as Flax's `nn` (JAX's `jax.nn`): each elementwise function with its
//! pullback, and for forward mode its derivative as a rule of its own (`gelu_d1`),
//! whose pullback is the second derivative, so that second order goes through every
//! activation. Their values and gradients are checked against JAX in
//! `tests/tests/activations.rs`.
//!
//! `relu`, `sigmoid`, `softplus` and `tanh` live with the float maths
//! ([`elementwise`](super::elementwise)), where they have vectorising kernels; the
//! derivative rules of `relu` and `softplus` are here.

use crate::rules::elementwise::{Elem, Elementwise, Owned};
use crate::value::{Real, Value};
use num_traits::Float;

/// `v` as an element of the activation's type.
#[inline(always)]
fn k<A: Real>(v: f64) -> A {
    A::lit(v)
}

#[inline(always)]
fn sigmoid<A: Real>(v: A) -> A {
    if v >= A::zero() {
        A::one() / (A::one() + (-v).exp())
    } else {
        let e = v.exp();
        e / (A::one() + e)
    }
}

#[inline(always)]
fn softplus<A: Real>(v: A) -> A {
    v.max(A::zero()) + (-v.abs()).exp().ln_1p()
}

#[inline(always)]
fn sign<A: Real>(v: A) -> A {
    if v > A::zero() {
        A::one()
    } else if v < A::zero() {
        -A::one()
    } else {
        A::zero()
    }
}

#[inline(always)]
fn step<A: Real>(yes: bool) -> A {
    if yes { A::one() } else { A::zero() }
}

// The tanh approximation of GELU: 0.5 v (1 + tanh(u)), u = c (v + 0.044715 v^3).
const GELU_C: f64 = 0.797_884_560_802_865_4; // sqrt(2 / pi)
const GELU_A: f64 = 0.044_715;

#[inline(always)]
fn gelu_tanh<A: Real>(v: A) -> (A, A, A, A) {
    let u = k::<A>(GELU_C) * (v + k::<A>(GELU_A) * v * v * v);
    let du = k::<A>(GELU_C) * (A::one() + k::<A>(3.0 * GELU_A) * v * v);
    let ddu = k::<A>(GELU_C * 6.0 * GELU_A) * v;
    // The branch-free `tanh` of `kernels`: a loop of it vectorises, where libm's is a
    // call per element (a quarter of a transformer's gradient, W7, went to it).
    (A::lit(crate::rules::kernels::tanh(u.as_f64())), u, du, ddu)
}

/// The standard normal's cumulative distribution and density.
#[inline(always)]
fn normal_cdf_pdf<A: Real>(v: A) -> (A, A) {
    let x = v.as_f64();
    let cdf = 0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
    let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
    (A::lit(cdf), A::lit(pdf))
}

// SELU's constants, as JAX's.
const SELU_ALPHA: f64 = 1.673_263_242_354_377_3;
const SELU_SCALE: f64 = 1.050_700_987_355_480_5;

/// Declares activations: `name(x, params..)`, its pullback `name_pb`, and its
/// derivative rules (see [`derivatives!`]). `v` is an element; parameters are `f64`s,
/// converted to the element type.
macro_rules! activations {
    ($($(#[$doc:meta])* $name:ident, $pb:ident, $d1:ident, $d1_pb:ident ($($p:ident),*):
        |$v:ident| $f:expr, d1 = $df:expr, d2 = $ddf:expr;)*) => {$(
        $(#[$doc])*
        #[inline]
        pub fn $name<X: Value>(x: &X $(, $p: f64)*) -> Owned<X>
        where
            X::Primal: Elementwise,
        {
            $(let $p: Elem<X> = k($p);)*
            x.primal().map(|$v| $f)
        }

        #[doc = concat!("Pullback of [`", stringify!($name), "`].")]
        #[inline]
        pub fn $pb<X: Value>(x: &X $(, $p: f64)*, ct: Owned<X>) -> Owned<X>
        where
            X::Primal: Elementwise,
        {
            $(let $p: Elem<X> = k($p);)*
            x.primal().pull(ct, |g, $v| g * $df)
        }

        derivatives! { $name: $d1, $d1_pb ($($p),*): |$v| d1 = $df, d2 = $ddf; }
    )*};
}

/// Declares an activation's derivative `name_d1` (what forward mode multiplies a
/// tangent by) and that one's pullback `name_d1_pb` (the second derivative), so that
/// second order goes through forward mode.
macro_rules! derivatives {
    ($($name:ident: $d1:ident, $d1_pb:ident ($($p:ident),*): |$v:ident| d1 = $df:expr, d2 = $ddf:expr;)*) => {$(
        #[doc = concat!("The derivative of `", stringify!($name), "`, elementwise (what forward mode multiplies a tangent by).")]
        #[inline]
        pub fn $d1<X: Value>(x: &X $(, $p: f64)*) -> Owned<X>
        where
            X::Primal: Elementwise,
        {
            $(let $p: Elem<X> = k($p);)*
            x.primal().map(|$v| $df)
        }

        #[doc = concat!("Pullback of [`", stringify!($d1), "`]: the second derivative.")]
        #[inline]
        #[allow(unused_variables)] // piecewise-linear activations' is zero
        pub fn $d1_pb<X: Value>(x: &X $(, $p: f64)*, ct: Owned<X>) -> Owned<X>
        where
            X::Primal: Elementwise,
        {
            $(let $p: Elem<X> = k($p);)*
            x.primal().pull(ct, |g, $v| g * $ddf)
        }
    )*};
}

pub(crate) use derivatives;

derivatives! {
    relu: relu_d1, relu_d1_pb (): |v| d1 = step(v > k(0.0)), d2 = k(0.0);
    softplus: softplus_d1, softplus_d1_pb ():
        |v| d1 = sigmoid(v),
        d2 = { let s = sigmoid(v); s * (k::<Elem<X>>(1.0) - s) };
}

activations! {
    /// `min(max(x, 0), 6)` (derivative 0 at 0 and 6, as JAX's).
    relu6, relu6_pb, relu6_d1, relu6_d1_pb ():
        |v| v.max(k(0.0)).min(k(6.0)),
        d1 = step(v > k(0.0) && v < k(6.0)),
        d2 = k(0.0);
    /// `log(sigmoid(x))`, computed stably.
    log_sigmoid, log_sigmoid_pb, log_sigmoid_d1, log_sigmoid_d1_pb ():
        |v| -softplus(-v),
        d1 = sigmoid(-v),
        d2 = { let s = sigmoid(v); -s * (k::<Elem<X>>(1.0) - s) };
    /// `x * sigmoid(x)` (SiLU, swish).
    silu, silu_pb, silu_d1, silu_d1_pb ():
        |v| v * sigmoid(v),
        d1 = { let s = sigmoid(v); s + v * s * (k::<Elem<X>>(1.0) - s) },
        d2 = {
            let s = sigmoid(v);
            let one = k::<Elem<X>>(1.0);
            s * (one - s) * (k::<Elem<X>>(2.0) + v * (one - s - s))
        };
    /// GELU with the tanh approximation (Flax's default, `approximate=True`).
    gelu, gelu_pb, gelu_d1, gelu_d1_pb ():
        |v| { let (t, ..) = gelu_tanh(v); k::<Elem<X>>(0.5) * v * (k::<Elem<X>>(1.0) + t) },
        d1 = {
            let (t, _, du, _) = gelu_tanh(v);
            let (half, one) = (k::<Elem<X>>(0.5), k::<Elem<X>>(1.0));
            half * (one + t) + half * v * (one - t * t) * du
        },
        d2 = {
            let (t, _, du, ddu) = gelu_tanh(v);
            let (half, one, two) = (k::<Elem<X>>(0.5), k::<Elem<X>>(1.0), k::<Elem<X>>(2.0));
            let sech2 = one - t * t;
            sech2 * du + half * v * sech2 * (ddu - two * t * du * du)
        };
    /// Exact GELU, `x * Phi(x)` with `Phi` the standard normal's distribution
    /// (Flax's `approximate=False`).
    gelu_exact, gelu_exact_pb, gelu_exact_d1, gelu_exact_d1_pb ():
        |v| { let (cdf, _) = normal_cdf_pdf(v); v * cdf },
        d1 = { let (cdf, pdf) = normal_cdf_pdf(v); cdf + v * pdf },
        d2 = { let (_, pdf) = normal_cdf_pdf(v); pdf * (k::<Elem<X>>(2.0) - v * v) };
    /// `x` for `x > 0`, else `alpha (e^x - 1)` (Flax's default `alpha` is 1).
    elu, elu_pb, elu_d1, elu_d1_pb (alpha):
        |v| if v > k(0.0) { v } else { alpha * v.exp_m1() },
        d1 = if v > k(0.0) { k(1.0) } else { alpha * v.exp() },
        d2 = if v > k(0.0) { k(0.0) } else { alpha * v.exp() };
    /// `max(0, x) + min(0, alpha (e^(x / alpha) - 1))` (Flax's default `alpha` is 1).
    celu, celu_pb, celu_d1, celu_d1_pb (alpha):
        |v| v.max(k(0.0)) + alpha * (v.min(k(0.0)) / alpha).exp_m1(),
        d1 = if v > k(0.0) { k(1.0) } else if v < k(0.0) { (v / alpha).exp() } else { k(1.0) },
        d2 = if v < k(0.0) { (v / alpha).exp() / alpha } else { k(0.0) };
    /// Scaled ELU with JAX's `alpha` and `scale`.
    selu, selu_pb, selu_d1, selu_d1_pb ():
        |v| k::<Elem<X>>(SELU_SCALE) * if v > k(0.0) { v } else { k::<Elem<X>>(SELU_ALPHA) * v.exp_m1() },
        d1 = k::<Elem<X>>(SELU_SCALE) * if v > k(0.0) { k(1.0) } else { k::<Elem<X>>(SELU_ALPHA) * v.exp() },
        d2 = k::<Elem<X>>(SELU_SCALE) * if v > k(0.0) { k(0.0) } else { k::<Elem<X>>(SELU_ALPHA) * v.exp() };
    /// `x` for `x >= 0`, else `negative_slope x` (Flax's default slope is 0.01).
    leaky_relu, leaky_relu_pb, leaky_relu_d1, leaky_relu_d1_pb (negative_slope):
        |v| if v >= k(0.0) { v } else { negative_slope * v },
        d1 = if v >= k(0.0) { k(1.0) } else { negative_slope },
        d2 = k(0.0);
    /// `x` clipped to `[-1, 1]`.
    hard_tanh, hard_tanh_pb, hard_tanh_d1, hard_tanh_d1_pb ():
        |v| v.max(k(-1.0)).min(k(1.0)),
        d1 = step(v >= k(-1.0) && v <= k(1.0)),
        d2 = k(0.0);
    /// `relu6(x + 3) / 6`.
    hard_sigmoid, hard_sigmoid_pb, hard_sigmoid_d1, hard_sigmoid_d1_pb ():
        |v| (v + k(3.0)).max(k(0.0)).min(k(6.0)) / k(6.0),
        d1 = step::<Elem<X>>(v > k(-3.0) && v < k(3.0)) / k(6.0),
        d2 = k(0.0);
    /// `x * hard_sigmoid(x)`.
    hard_silu, hard_silu_pb, hard_silu_d1, hard_silu_d1_pb ():
        |v| v * (v + k(3.0)).max(k(0.0)).min(k(6.0)) / k(6.0),
        d1 = (v + k(3.0)).max(k(0.0)).min(k(6.0)) / k(6.0)
            + v * step::<Elem<X>>(v > k(-3.0) && v < k(3.0)) / k(6.0),
        d2 = step::<Elem<X>>(v > k(-3.0) && v < k(3.0)) / k(3.0);
    /// `x / (|x| + 1)`.
    soft_sign, soft_sign_pb, soft_sign_d1, soft_sign_d1_pb ():
        |v| v / (v.abs() + k(1.0)),
        d1 = { let d = v.abs() + k(1.0); (d * d).recip() },
        d2 = { let d = v.abs() + k(1.0); k::<Elem<X>>(-2.0) * sign(v) / (d * d * d) };
    /// `x * tanh(softplus(x))`.
    mish, mish_pb, mish_d1, mish_d1_pb ():
        |v| v * softplus(v).tanh(),
        d1 = {
            let (t, s) = (softplus(v).tanh(), sigmoid(v));
            t + v * (k::<Elem<X>>(1.0) - t * t) * s
        },
        d2 = {
            let (t, s) = (softplus(v).tanh(), sigmoid(v));
            let one = k::<Elem<X>>(1.0);
            let sech2 = one - t * t;
            k::<Elem<X>>(2.0) * sech2 * s + v * sech2 * s * ((one - s) - k::<Elem<X>>(2.0) * t * s)
        };
}

/// Flax's other name for [`hard_silu`].
pub use hard_silu as hard_swish;
/// Flax's other name for [`silu`].
pub use silu as swish;
