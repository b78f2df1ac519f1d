//! Elementwise rules: unary float maths, `+ - * /` with broadcasting, the scalar
//! binary methods (`powf`, `atan2`, `hypot`, `max`, `min`, `clamp`, `mul_add`) and
//! casts. Each forward function sits beside its pullback.
//!
//! A pullback takes the cotangent by value and reuses its buffer where it can.

use crate::rules::kernels::{self, Kernel};
use crate::rules::reuse::Reusable;
use crate::value::{Broadcast, Own, Real, Unbroadcast, Value};

// Pullbacks of `+`, `-` and one side of `*` and `/` take the operand's shape (see
// `crate::value::ShapeOf`), not the operand: only the shape is needed.
use ndarray::{Array, ArrayBase, Data, DimMax, Dimension};
use num_traits::Float;

/// Values whose float maths applies element by element: `f32`, `f64` and arrays.
pub trait Elementwise {
    /// The element type.
    type Elem: Real;
    /// An owned value of the same shape (the type of results and cotangents).
    type Owned: Elementwise<Elem = Self::Elem, Owned = Self::Owned>;
    /// `f` applied to every element.
    fn map(&self, f: impl Fn(Self::Elem) -> Self::Elem) -> Self::Owned;
    /// A vectorising kernel applied to every element.
    fn map_kernel<K: Kernel>(&self) -> Self::Owned;
    /// An owned copy.
    fn owned(&self) -> Self::Owned;
    /// `ct[i] = f(ct[i], self[i])`, in place on `ct`, which has `self`'s shape.
    fn pull(
        &self,
        ct: Self::Owned,
        f: impl FnMut(Self::Elem, Self::Elem) -> Self::Elem,
    ) -> Self::Owned;
    /// The sum over all elements of `f(self[i], other[i])`.
    fn zip_sum(
        &self,
        other: &Self::Owned,
        f: impl Fn(Self::Elem, Self::Elem) -> Self::Elem,
    ) -> Self::Elem;
}

impl<A: Real> Elementwise for A {
    type Elem = A;
    type Owned = A;
    #[inline(always)]
    fn map(&self, f: impl Fn(A) -> A) -> A {
        f(*self)
    }
    #[inline(always)]
    fn map_kernel<K: Kernel>(&self) -> A {
        K::eval(*self)
    }
    #[inline(always)]
    fn owned(&self) -> A {
        *self
    }
    #[inline(always)]
    fn pull(&self, ct: A, mut f: impl FnMut(A, A) -> A) -> A {
        f(ct, *self)
    }
    #[inline(always)]
    fn zip_sum(&self, other: &A, f: impl Fn(A, A) -> A) -> A {
        f(*self, *other)
    }
}

impl<A: Real, S: Data<Elem = A>, D: Dimension> Elementwise for ArrayBase<S, D> {
    type Elem = A;
    type Owned = Array<A, D>;
    #[inline]
    fn map(&self, f: impl Fn(A) -> A) -> Array<A, D> {
        self.mapv(f)
    }
    #[inline]
    fn map_kernel<K: Kernel>(&self) -> Array<A, D> {
        kernels::mapped::<K, A, S, D>(self)
    }
    #[inline]
    fn owned(&self) -> Array<A, D> {
        self.to_owned()
    }
    #[inline]
    fn pull(&self, mut ct: Array<A, D>, mut f: impl FnMut(A, A) -> A) -> Array<A, D> {
        ct.zip_mut_with(self, |g, &x| *g = f(*g, x));
        ct
    }
    #[inline]
    fn zip_sum(&self, other: &Array<A, D>, f: impl Fn(A, A) -> A) -> A {
        let mut acc = A::zero();
        ndarray::Zip::from(self)
            .and(other)
            .for_each(|&x, &y| acc += f(x, y));
        acc
    }
}

pub(crate) type Owned<X> = <<X as Value>::Primal as Elementwise>::Owned;
pub(crate) type Elem<X> = <<X as Value>::Primal as Elementwise>::Elem;

/// Declares unary elementwise functions and their pullbacks. `x` names the input
/// and `y` the output; a pullback takes whichever its formula reads.
macro_rules! unary {
    ($($(#[$doc:meta])* $name:ident / $reusing:ident, $pb:ident($r:ident) = |$g:ident, $v:ident| $d:expr;)*) => {$(
        $(#[$doc])*
        #[inline]
        pub fn $name<X: Value>(x: &X) -> Owned<X>
        where
            X::Primal: Elementwise,
        {
            unary!(@map $name x)
        }

        #[doc = concat!("[`", stringify!($name), "`] computed in the buffer of a value nothing reads afterwards (see [`reuse`](super::reuse)).")]
        #[inline]
        pub fn $reusing<X: Reusable>(x: X) -> X {
            unary!(@in_place $name x)
        }

        #[doc = concat!("Pullback of [`", stringify!($name), "`], given the ",
            unary!(@which $r), " and the output's cotangent.")]
        #[inline]
        pub fn $pb<X: Value>($r: &X, ct: Owned<X>) -> Owned<X>
        where
            X::Primal: Elementwise,
        {
            $r.primal().pull(ct, |$g, $v| $d)
        }
    )*};
    (@map exp $x:ident) => { $x.primal().map_kernel::<kernels::Exp>() };
    (@map exp_m1 $x:ident) => { $x.primal().map_kernel::<kernels::ExpM1>() };
    (@map tanh $x:ident) => { $x.primal().map_kernel::<kernels::Tanh>() };
    (@map sigmoid $x:ident) => { $x.primal().map_kernel::<Sigmoid>() };
    (@map $name:ident $x:ident) => { $x.primal().map(|v| unary!(@fwd $name v)) };
    (@in_place exp $x:ident) => { $x.kernel_in_place::<kernels::Exp>() };
    (@in_place exp_m1 $x:ident) => { $x.kernel_in_place::<kernels::ExpM1>() };
    (@in_place tanh $x:ident) => { $x.kernel_in_place::<kernels::Tanh>() };
    (@in_place sigmoid $x:ident) => { $x.kernel_in_place::<Sigmoid>() };
    (@in_place $name:ident $x:ident) => { $x.map_in_place(|v| unary!(@fwd $name v)) };
    (@which x) => { "input" };
    (@which y) => { "output" };
    (@fwd neg $v:ident) => { -$v };
    (@fwd relu $v:ident) => { if $v > num_traits::Zero::zero() { $v } else { num_traits::Zero::zero() } };
    (@fwd softplus $v:ident) => { softplus_scalar($v) };
    (@fwd $name:ident $v:ident) => { $v.$name() };
}

#[inline(always)]
fn sigmoid_scalar<A: Real>(v: A) -> A {
    // exp of a non-positive number only, so large |v| neither overflows nor loses
    // the tail; a select rather than a branch, so it vectorises.
    let e = Real::vexp(-v.abs());
    let s = A::one() / (A::one() + e);
    if v >= A::zero() { s } else { e * s }
}

/// [`sigmoid`] as a vectorising kernel.
struct Sigmoid;

impl Kernel for Sigmoid {
    #[inline(always)]
    fn eval<A: Real>(x: A) -> A {
        sigmoid_scalar(x)
    }
}

#[inline(always)]
fn softplus_scalar<A: Real>(v: A) -> A {
    // log(1 + e^v) = max(v, 0) + log1p(e^-|v|), stable for every v.
    v.max(A::zero()) + (-v.abs()).exp().ln_1p()
}

#[inline(always)]
fn sign<A: Real>(v: A) -> A {
    // JAX's sign: 0 at 0, so |x| has derivative 0 there.
    if v > A::zero() {
        A::one()
    } else if v < A::zero() {
        -A::one()
    } else {
        A::zero()
    }
}

#[inline(always)]
fn two<A: Real>() -> A {
    A::one() + A::one()
}

unary! {
    /// `-x`.
    neg / neg_reusing, neg_pb(x) = |g, _x| -g;
    /// `e^x`.
    exp / exp_reusing, exp_pb(y) = |g, y| g * y;
    /// `e^x - 1`.
    exp_m1 / exp_m1_reusing, exp_m1_pb(y) = |g, y| g * (y + Elem::<X>::one());
    /// Natural logarithm.
    ln / ln_reusing, ln_pb(x) = |g, x| g / x;
    /// `ln(1 + x)`.
    ln_1p / ln_1p_reusing, ln_1p_pb(x) = |g, x| g / (x + Elem::<X>::one());
    /// Base-2 logarithm.
    log2 / log2_reusing, log2_pb(x) = |g, x| g / (x * Elem::<X>::lit(std::f64::consts::LN_2));
    /// Base-10 logarithm.
    log10 / log10_reusing, log10_pb(x) = |g, x| g / (x * Elem::<X>::lit(std::f64::consts::LN_10));
    /// Square root.
    sqrt / sqrt_reusing, sqrt_pb(y) = |g, y| g / (two::<Elem<X>>() * y);
    /// Cube root.
    cbrt / cbrt_reusing, cbrt_pb(y) = |g, y| g / (Elem::<X>::lit(3.0) * y * y);
    /// `1 / x`.
    recip / recip_reusing, recip_pb(y) = |g, y| -g * y * y;
    /// Sine.
    sin / sin_reusing, sin_pb(x) = |g, x| g * x.cos();
    /// Cosine.
    cos / cos_reusing, cos_pb(x) = |g, x| -g * x.sin();
    /// Tangent.
    tan / tan_reusing, tan_pb(y) = |g, y| g * (Elem::<X>::one() + y * y);
    /// Arcsine.
    asin / asin_reusing, asin_pb(x) = |g, x| g / (Elem::<X>::one() - x * x).sqrt();
    /// Arccosine.
    acos / acos_reusing, acos_pb(x) = |g, x| -g / (Elem::<X>::one() - x * x).sqrt();
    /// Arctangent.
    atan / atan_reusing, atan_pb(x) = |g, x| g / (Elem::<X>::one() + x * x);
    /// Hyperbolic sine.
    sinh / sinh_reusing, sinh_pb(x) = |g, x| g * x.cosh();
    /// Hyperbolic cosine.
    cosh / cosh_reusing, cosh_pb(x) = |g, x| g * x.sinh();
    /// Hyperbolic tangent, by a vectorising kernel (within 6e-16 of libm's, which
    /// ndarray's `.tanh()` maps): Flax's `nn.tanh`.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let h = nn::tanh(&ndarray::array![0.0, 1.0, -3.0]);
    /// assert!((h[1] - 1f64.tanh()).abs() < 1e-15);
    /// ```
    tanh / tanh_reusing, tanh_pb(y) = |g, y| g * (Elem::<X>::one() - y * y);
    /// Absolute value (derivative 0 at 0, as in JAX).
    abs / abs_reusing, abs_pb(x) = |g, x| g * sign(x);
    /// `max(x, 0)` (derivative 0 at 0, as in JAX).
    /// (The pullback reads the output: `y > 0` exactly where `x > 0`, so the input
    /// need not be kept.)
    relu / relu_reusing, relu_pb(y) = |g, y| if y > Elem::<X>::zero() { g } else { Elem::<X>::zero() };
    /// The logistic function `1 / (1 + e^-x)`.
    sigmoid / sigmoid_reusing, sigmoid_pb(y) = |g, y| g * y * (Elem::<X>::one() - y);
    /// `ln(1 + e^x)`, computed stably.
    softplus / softplus_reusing, softplus_pb(x) = |g, x| g * sigmoid_scalar(x);
}

// Forward mode's derivatives of the rules above whose tangent is not written in
// terms of other rules (as `sin`'s is `cos`): each with its own pullback, the second
// derivative, so that second order goes through forward mode.
crate::rules::activation::derivatives! {
    abs: abs_d1, abs_d1_pb (): |v| d1 = sign(v), d2 = Elem::<X>::zero();
    square: square_d1, square_d1_pb (): |v| d1 = two::<Elem<X>>() * v, d2 = two::<Elem<X>>();
    ln_1p: ln_1p_d1, ln_1p_d1_pb ():
        |v| d1 = (Elem::<X>::one() + v).recip(),
        d2 = { let q = Elem::<X>::one() + v; -(q * q).recip() };
    atan: atan_d1, atan_d1_pb ():
        |v| d1 = (Elem::<X>::one() + v * v).recip(),
        d2 = { let q = Elem::<X>::one() + v * v; -(two::<Elem<X>>() * v) / (q * q) };
    // These three in terms of the output `y`, which forward mode has at hand
    // (`exp_m1' = y + 1`, `sqrt' = 1 / 2y`, `tan' = 1 + y^2`), their pullbacks the
    // derivatives in `y`.
    exp_m1: exp_m1_d1, exp_m1_d1_pb (): |v| d1 = v + Elem::<X>::one(), d2 = Elem::<X>::one();
    sqrt: sqrt_d1, sqrt_d1_pb ():
        |v| d1 = (two::<Elem<X>>() * v).recip(),
        d2 = -(two::<Elem<X>>() * v * v).recip();
    tan: tan_d1, tan_d1_pb (): |v| d1 = Elem::<X>::one() + v * v, d2 = two::<Elem<X>>() * v;
    cbrt: cbrt_d1, cbrt_d1_pb ():
        |v| d1 = { let c = v.cbrt(); (Elem::<X>::lit(3.0) * c * c).recip() },
        d2 = { let c = v.cbrt(); Elem::<X>::lit(-2.0 / 9.0) / (v * c * c) };
    asin: asin_d1, asin_d1_pb ():
        |v| d1 = (Elem::<X>::one() - v * v).sqrt().recip(),
        d2 = { let q = Elem::<X>::one() - v * v; v / (q * q.sqrt()) };
    acos: acos_d1, acos_d1_pb ():
        |v| d1 = -(Elem::<X>::one() - v * v).sqrt().recip(),
        d2 = { let q = Elem::<X>::one() - v * v; -v / (q * q.sqrt()) };
    log2: log2_d1, log2_d1_pb ():
        |v| d1 = (v * Elem::<X>::lit(std::f64::consts::LN_2)).recip(),
        d2 = -(v * v * Elem::<X>::lit(std::f64::consts::LN_2)).recip();
    log10: log10_d1, log10_d1_pb ():
        |v| d1 = (v * Elem::<X>::lit(std::f64::consts::LN_10)).recip(),
        d2 = -(v * v * Elem::<X>::lit(std::f64::consts::LN_10)).recip();
}

/// Two results at once from a cotangent, a value and a second value of its shape:
/// what the joint pullback of a tangent (`tanh_tangent`) needs.
pub trait Pull2<O>: Elementwise {
    /// `(r[i], s[i]) = f(ct[i], self[i], other[i])`; `r` reuses `ct`.
    fn pull2(
        &self,
        other: &O,
        ct: Self::Owned,
        f: impl Fn(Self::Elem, Self::Elem, Self::Elem) -> (Self::Elem, Self::Elem),
    ) -> (Self::Owned, Self::Owned);
}

impl<A: Real> Pull2<A> for A {
    #[inline(always)]
    fn pull2(&self, other: &A, ct: A, f: impl Fn(A, A, A) -> (A, A)) -> (A, A) {
        f(ct, *self, *other)
    }
}

impl<A: Real, S: Data<Elem = A>, S2: Data<Elem = A>, D: Dimension> Pull2<ArrayBase<S2, D>>
    for ArrayBase<S, D>
{
    #[inline]
    fn pull2(
        &self,
        other: &ArrayBase<S2, D>,
        mut ct: Array<A, D>,
        f: impl Fn(A, A, A) -> (A, A),
    ) -> (Array<A, D>, Array<A, D>) {
        // The second result is written once, where it is computed (no zeroing pass).
        let second = ndarray::Zip::from(&mut ct)
            .and(self)
            .and(other)
            .map_collect(|g, &y, &d| {
                let (a, b) = f(*g, y, d);
                *g = a;
                b
            });
        (ct, second)
    }
}

/// One result from two values of the same shape, neither consumed: what a tangent
/// `dx * f'(y)` reads when `dx` is borrowed (no copy of it to compute in).
///
/// ```
/// use adjoint::rules::elementwise::Map2;
/// let (y, dx) = (ndarray::array![0.5, -0.5], ndarray::array![2.0, 4.0]);
/// assert_eq!(y.map2(&dx, |y, d| d * (1.0 - y * y)), ndarray::array![1.5, 3.0]);
/// ```
pub trait Map2<O>: Elementwise {
    /// `r[i] = f(self[i], other[i])`.
    fn map2(&self, other: &O, f: impl Fn(Self::Elem, Self::Elem) -> Self::Elem) -> Self::Owned;
}

impl<A: Real> Map2<A> for A {
    #[inline(always)]
    fn map2(&self, other: &A, f: impl Fn(A, A) -> A) -> A {
        f(*self, *other)
    }
}

impl<A: Real, S: Data<Elem = A>, S2: Data<Elem = A>, D: Dimension> Map2<ArrayBase<S2, D>>
    for ArrayBase<S, D>
{
    #[inline]
    fn map2(&self, other: &ArrayBase<S2, D>, f: impl Fn(A, A) -> A) -> Array<A, D> {
        ndarray::Zip::from(self)
            .and(other)
            .map_collect(|&a, &b| f(a, b))
    }
}

/// Declares the tangents forward mode writes for an elementwise function given its
/// output `y` and its input's tangent `dx`: `dx * f'(y)`, one pass instead of the
/// three operations of the formula, with pullbacks for both (second order
/// differentiates the tangent again).
macro_rules! tangent {
    ($($(#[$doc:meta])* $name:ident, $pb_y:ident, $pb_dx:ident, $pb_both:ident:
        |$y:ident| $deriv:expr, d/dy $second:expr;)*) => {$(
        $(#[$doc])*
        #[inline]
        pub fn $name<Y: Value, D: Value>(y: &Y, dx: &D) -> Owned<Y>
        where
            Y::Primal: Map2<D::Primal>,
        {
            y.primal().map2(dx.primal(), |$y, d| d * $deriv)
        }

        #[doc = concat!("Pullback of [`", stringify!($name), "`] for `y`.")]
        #[inline]
        pub fn $pb_y<Y: Value, D: Value>(y: &Y, dx: &D, ct: Owned<Y>) -> Owned<Y>
        where
            Y::Primal: Elementwise,
            D::Primal: Elementwise<Owned = Owned<Y>, Elem = Elem<Y>>,
        {
            let g = y.primal().pull(ct, |g, $y| g * $second);
            dx.primal().pull(g, |g, d| g * d)
        }

        #[doc = concat!("Pullback of [`", stringify!($name), "`] for `dx`.")]
        #[inline]
        pub fn $pb_dx<Y: Value>(y: &Y, ct: Owned<Y>) -> Owned<Y>
        where
            Y::Primal: Elementwise,
        {
            y.primal().pull(ct, |g, $y| g * $deriv)
        }

        #[doc = concat!("Both pullbacks of [`", stringify!($name), "`], in one pass over one cotangent.")]
        #[inline]
        pub fn $pb_both<Y: Value, D: Value>(y: &Y, dx: &D, ct: Owned<Y>) -> (Owned<Y>, Owned<Y>)
        where
            Y::Primal: Pull2<D::Primal>,
        {
            y.primal().pull2(dx.primal(), ct, |g, $y, d| (g * d * $second, g * $deriv))
        }
    )*};
}

tangent! {
    /// The tangent of `tanh`: `dx * (1 - y^2)`.
    tanh_tangent, tanh_tangent_pb_y, tanh_tangent_pb_dx, tanh_tangent_pb_both:
        |y| Elem::<Y>::one() - y * y, d/dy -(y + y);
    /// The tangent of `sigmoid`: `dx * y (1 - y)`.
    sigmoid_tangent, sigmoid_tangent_pb_y, sigmoid_tangent_pb_dx, sigmoid_tangent_pb_both:
        |y| y * (Elem::<Y>::one() - y), d/dy Elem::<Y>::one() - (y + y);
}

/// `x^n` for an integer `n`.
#[inline]
pub fn powi<X: Value>(x: &X, n: i32) -> Owned<X>
where
    X::Primal: Elementwise,
{
    x.primal().map(|v| v.powi(n))
}

/// Pullback of [`powi`].
#[inline]
pub fn powi_pb<X: Value>(x: &X, n: i32, ct: Owned<X>) -> Owned<X>
where
    X::Primal: Elementwise,
{
    let nf = Elem::<X>::lit(n as f64);
    x.primal().pull(ct, |g, v| g * nf * v.powi(n - 1))
}

/// The derivative of [`powi`], `n x^(n - 1)` (what forward mode multiplies a tangent
/// by).
#[inline]
pub fn powi_d1<X: Value>(x: &X, n: i32) -> Owned<X>
where
    X::Primal: Elementwise,
{
    let nf = Elem::<X>::lit(n as f64);
    x.primal().map(|v| v.powi(n - 1) * nf)
}

/// Pullback of [`powi_d1`]: the second derivative, `n (n - 1) x^(n - 2)`.
#[inline]
pub fn powi_d1_pb<X: Value>(x: &X, n: i32, ct: Owned<X>) -> Owned<X>
where
    X::Primal: Elementwise,
{
    let nf = Elem::<X>::lit(n as f64 * (n as f64 - 1.0));
    x.primal().pull(ct, |g, v| g * nf * v.powi(n - 2))
}

/// `x^p` for a scalar `p`.
#[inline]
pub fn powf<X: Value, P: Value<Primal = Elem<X>>>(x: &X, p: &P) -> Owned<X>
where
    X::Primal: Elementwise,
{
    let p = *p.primal();
    x.primal().map(|v| v.powf(p))
}

/// Pullback of [`powf`] for the base.
#[inline]
pub fn powf_pb_lhs<X: Value, P: Value<Primal = Elem<X>>>(x: &X, p: &P, ct: Owned<X>) -> Owned<X>
where
    X::Primal: Elementwise,
{
    let p = *p.primal();
    x.primal()
        .pull(ct, |g, v| g * p * v.powf(p - Elem::<X>::one()))
}

/// Pullback of [`powf`] for the exponent: the sum of `g * y * ln x`.
#[inline]
pub fn powf_pb_rhs<X: Value>(x: &X, y: &Owned<X>, ct: Owned<X>) -> Elem<X>
where
    X::Primal: Elementwise,
{
    let gy = y.pull(ct, |g, y| g * y);
    x.primal().zip_sum(&gy, |x, gy| gy * x.ln())
}

/// Elementwise arithmetic with NumPy broadcasting between scalars and arrays.
#[diagnostic::on_unimplemented(
    message = "no arithmetic rule between `{Self}` and `{Rhs}`",
    note = "adjoint differentiates `+ - * /` between f32/f64 scalars and ndarray arrays of the same float type"
)]
pub trait Arith<Rhs: ?Sized> {
    /// The (broadcast) result.
    type Output;
    /// `self + rhs`.
    fn add(&self, rhs: &Rhs) -> Self::Output;
    /// `self - rhs`.
    fn sub(&self, rhs: &Rhs) -> Self::Output;
    /// `self * rhs`.
    fn mul(&self, rhs: &Rhs) -> Self::Output;
    /// `self / rhs`.
    fn div(&self, rhs: &Rhs) -> Self::Output;
    /// `self` broadcast to the shape of `self + rhs`, without reading `rhs`'s
    /// values: the tangent of a sum whose other operand has none.
    fn widen(&self, rhs: &Rhs) -> Self::Output;
}

impl<A: Real> Arith<A> for A {
    type Output = A;
    #[inline(always)]
    fn add(&self, r: &A) -> A {
        *self + *r
    }
    #[inline(always)]
    fn sub(&self, r: &A) -> A {
        *self - *r
    }
    #[inline(always)]
    fn mul(&self, r: &A) -> A {
        *self * *r
    }
    #[inline(always)]
    fn div(&self, r: &A) -> A {
        *self / *r
    }
    #[inline(always)]
    fn widen(&self, _: &A) -> A {
        *self
    }
}

// A scalar on the left, as ndarray's `f64 - &array` computes it: the commutative
// operators swap their operands, the others map the array.
impl<A: Real, S: Data<Elem = A>, D: Dimension> Arith<ArrayBase<S, D>> for A {
    type Output = Array<A, D>;
    #[inline]
    fn add(&self, r: &ArrayBase<S, D>) -> Array<A, D> {
        r + *self
    }
    #[inline]
    fn sub(&self, r: &ArrayBase<S, D>) -> Array<A, D> {
        let a = *self;
        r.mapv(move |v| a - v)
    }
    #[inline]
    fn mul(&self, r: &ArrayBase<S, D>) -> Array<A, D> {
        r * *self
    }
    #[inline]
    fn div(&self, r: &ArrayBase<S, D>) -> Array<A, D> {
        let a = *self;
        r.mapv(move |v| a / v)
    }
    #[inline]
    fn widen(&self, r: &ArrayBase<S, D>) -> Array<A, D> {
        Array::from_elem(r.raw_dim(), *self)
    }
}

impl<A: Real, S: Data<Elem = A>, D: Dimension> Arith<A> for ArrayBase<S, D> {
    type Output = Array<A, D>;
    #[inline]
    fn add(&self, r: &A) -> Array<A, D> {
        self + *r
    }
    #[inline]
    fn sub(&self, r: &A) -> Array<A, D> {
        self - *r
    }
    #[inline]
    fn mul(&self, r: &A) -> Array<A, D> {
        self * *r
    }
    #[inline]
    fn div(&self, r: &A) -> Array<A, D> {
        self / *r
    }
    #[inline]
    fn widen(&self, _: &A) -> Array<A, D> {
        self.to_owned()
    }
}

impl<A, S, S2, D, E> Arith<ArrayBase<S2, E>> for ArrayBase<S, D>
where
    A: Real,
    S: Data<Elem = A>,
    S2: Data<Elem = A>,
    D: Dimension + DimMax<E>,
    E: Dimension,
{
    type Output = Array<A, <D as DimMax<E>>::Output>;
    #[inline]
    fn add(&self, r: &ArrayBase<S2, E>) -> Self::Output {
        self + r
    }
    #[inline]
    fn sub(&self, r: &ArrayBase<S2, E>) -> Self::Output {
        self - r
    }
    #[inline]
    fn mul(&self, r: &ArrayBase<S2, E>) -> Self::Output {
        self * r
    }
    #[inline]
    fn div(&self, r: &ArrayBase<S2, E>) -> Self::Output {
        self / r
    }
    #[inline]
    fn widen(&self, r: &ArrayBase<S2, E>) -> Self::Output {
        // The shapes aligned at the right, each axis the one that is not 1.
        let n = self.ndim().max(r.ndim());
        let mut dim = <D as DimMax<E>>::Output::zeros(n);
        let (a, b) = (self.shape(), r.shape());
        let mut fits = true;
        for (i, d) in dim.slice_mut().iter_mut().enumerate() {
            let at = |s: &[usize]| (i + s.len()).checked_sub(n).map_or(1, |j| s[j]);
            let (p, q) = (at(a), at(b));
            fits &= p == q || p == 1 || q == 1;
            *d = if p == 1 { q } else { p };
        }
        match self.broadcast(dim).filter(|_| fits) {
            Some(view) => view.to_owned(),
            // Shapes that do not broadcast: ndarray's error, as `self + rhs` gives it.
            None => self + &r.mapv(|_| A::zero()),
        }
    }
}

/// Combines a cotangent with an operand elementwise, in place.
pub trait CtZip<Rhs: ?Sized>: Sized {
    /// The element type.
    type Elem: Real;
    /// `self[i] = f(self[i], rhs[i])`, with `rhs` broadcast to `self`'s shape.
    fn ct_zip(self, rhs: &Rhs, f: impl Fn(Self::Elem, Self::Elem) -> Self::Elem) -> Self;
}

impl<A: Real> CtZip<A> for A {
    type Elem = A;
    #[inline(always)]
    fn ct_zip(self, r: &A, f: impl Fn(A, A) -> A) -> A {
        f(self, *r)
    }
}

impl<A: Real, D: Dimension> CtZip<A> for Array<A, D> {
    type Elem = A;
    #[inline]
    fn ct_zip(mut self, r: &A, f: impl Fn(A, A) -> A) -> Self {
        let r = *r;
        self.mapv_inplace(|g| f(g, r));
        self
    }
}

impl<A: Real, S: Data<Elem = A>, D: Dimension, E: Dimension> CtZip<ArrayBase<S, E>>
    for Array<A, D>
{
    type Elem = A;
    #[inline]
    fn ct_zip(mut self, r: &ArrayBase<S, E>, f: impl Fn(A, A) -> A) -> Self {
        self.zip_mut_with(r, |g, &r| *g = f(*g, r));
        self
    }
}

type ArithOut<X, Y> = <<X as Value>::Primal as Arith<<Y as Value>::Primal>>::Output;
type UnbCot<S, Ct> = <S as Unbroadcast<Ct>>::Cot;

macro_rules! arith_fwd {
    ($($(#[$doc:meta])* $name:ident;)*) => {$(
        $(#[$doc])*
        #[inline]
        pub fn $name<X: Value, Y: Value>(x: &X, y: &Y) -> ArithOut<X, Y>
        where
            X::Primal: Arith<Y::Primal>,
        {
            x.primal().$name(y.primal())
        }
    )*};
}
arith_fwd! {
    /// `x + y`, broadcasting.
    add;
    /// `x - y`, broadcasting.
    sub;
    /// `x * y`, broadcasting.
    mul;
    /// `x / y`, broadcasting.
    div;
    /// `x` broadcast to the shape of `x + y` (see [`Arith::widen`]): the tangent of
    /// a sum whose other operand has none.
    ///
    /// ```
    /// use adjoint::rules::elementwise::widen;
    /// let (d, bias) = (ndarray::array![1.0, 2.0], ndarray::Array2::<f64>::zeros((3, 2)));
    /// assert_eq!(widen(&d, &bias), ndarray::Array2::from_shape_fn((3, 2), |(_, j)| j as f64 + 1.0));
    /// assert_eq!(widen(&3.0, &d), ndarray::array![3.0, 3.0]);
    /// ```
    widen;
}

/// `g` summed down to `shape`: the transpose of broadcasting to `g`'s shape, what
/// the input gradient of a module written back as source (reverse over reverse)
/// gives an operand of a sum or a product.
///
/// ```
/// use adjoint::__private::shape_of;
/// use adjoint::rules::elementwise::sum_to;
/// let g = ndarray::array![[1.0, 2.0], [3.0, 4.0]];
/// assert_eq!(sum_to(&g, &shape_of(&ndarray::array![0.0, 0.0])), ndarray::array![4.0, 6.0]);
/// assert_eq!(sum_to(&g, &shape_of(&g)), g);
/// assert_eq!(sum_to(&g, &shape_of(&0.0)), 10.0);
/// ```
#[inline]
pub fn sum_to<G: Own, S: Unbroadcast<G::Owned>>(g: &G, shape: &S) -> UnbCot<S, G::Owned> {
    shape.unbroadcast(g.own())
}

/// Pullback of [`sum_to`] for `g` (given its shape): the cotangent broadcast back
/// to it.
///
/// ```
/// use adjoint::__private::shape_of;
/// use adjoint::rules::elementwise::sum_to_pb;
/// let g = ndarray::Array2::<f64>::zeros((2, 2));
/// assert_eq!(sum_to_pb(&shape_of(&g), (), ndarray::array![1.0, 2.0]), ndarray::array![[1.0, 2.0], [1.0, 2.0]]);
/// ```
#[inline]
pub fn sum_to_pb<S: Broadcast<C>, T, C>(g: &S, _shape: T, ct: C) -> S::Out {
    g.broadcast(ct)
}

/// Pullback of [`add`] for the left operand, given its shape.
#[inline]
pub fn add_pb_lhs<S: Unbroadcast<Ct>, Ct>(x: &S, ct: Ct) -> UnbCot<S, Ct> {
    x.unbroadcast(ct)
}

/// Pullback of [`add`] for the right operand, given its shape.
#[inline]
pub fn add_pb_rhs<S: Unbroadcast<Ct>, Ct>(y: &S, ct: Ct) -> UnbCot<S, Ct> {
    y.unbroadcast(ct)
}

/// Pullback of [`sub`] for the left operand, given its shape.
#[inline]
pub fn sub_pb_lhs<S: Unbroadcast<Ct>, Ct>(x: &S, ct: Ct) -> UnbCot<S, Ct> {
    x.unbroadcast(ct)
}

/// Pullback of [`sub`] for the right operand, given its shape.
#[inline]
pub fn sub_pb_rhs<S: Unbroadcast<Ct>, Ct>(y: &S, ct: Ct) -> UnbCot<S, Ct>
where
    Ct: Elementwise<Owned = Ct>,
{
    y.unbroadcast(ct.map(|g| -g))
}

/// Pullback of [`mul`] for the left operand (given its shape): `ct * y`, reduced.
#[inline]
pub fn mul_pb_lhs<S: Unbroadcast<Ct>, Y: Value, Ct>(x: &S, y: &Y, ct: Ct) -> UnbCot<S, Ct>
where
    Ct: CtZip<Y::Primal>,
{
    x.unbroadcast(ct.ct_zip(y.primal(), |g, y| g * y))
}

/// Pullback of [`mul`] for the right operand (given its shape): `ct * x`, reduced.
#[inline]
pub fn mul_pb_rhs<X: Value, S: Unbroadcast<Ct>, Ct>(x: &X, y: &S, ct: Ct) -> UnbCot<S, Ct>
where
    Ct: CtZip<X::Primal>,
{
    y.unbroadcast(ct.ct_zip(x.primal(), |g, x| g * x))
}

/// Pullback of [`div`] for the left operand (given its shape): `ct / y`, reduced.
#[inline]
pub fn div_pb_lhs<S: Unbroadcast<Ct>, Y: Value, Ct>(x: &S, y: &Y, ct: Ct) -> UnbCot<S, Ct>
where
    Ct: CtZip<Y::Primal>,
{
    x.unbroadcast(ct.ct_zip(y.primal(), |g, y| g / y))
}

/// Pullback of [`div`] for the right operand: `-ct * out / y`, reduced to `y`'s shape.
#[inline]
pub fn div_pb_rhs<Y: Value, O: Value, Ct>(
    y: &Y,
    out: &O,
    ct: Ct,
) -> <<Y::Primal as crate::value::ShapeOf>::Shape as Unbroadcast<Ct>>::Cot
where
    Y::Primal: crate::value::ShapeOf,
    <Y::Primal as crate::value::ShapeOf>::Shape: Unbroadcast<Ct>,
    Ct: CtZip<O::Primal> + CtZip<Y::Primal, Elem = <Ct as CtZip<O::Primal>>::Elem>,
{
    let t = ct.ct_zip(out.primal(), |g, o| -g * o);
    let shape = crate::value::ShapeOf::shape_of(y.primal());
    shape.unbroadcast(CtZip::<Y::Primal>::ct_zip(t, y.primal(), |t, y| t / y))
}

/// A scalar operand: `f32` or `f64` behind any references.
pub trait Scalar: Value<Primal = Self::Real> {
    /// The float type.
    type Real: Real;
    /// The value.
    #[inline(always)]
    fn get(&self) -> Self::Real {
        *self.primal()
    }
}
impl<T: Value + ?Sized> Scalar for T
where
    T::Primal: Real,
{
    type Real = T::Primal;
}

/// Declares binary scalar methods with both pullbacks (`x`, `y` the operands, `o`
/// the output, `g` the cotangent).
macro_rules! scalar_binary {
    ($($(#[$doc:meta])* $name:ident = |$x:ident, $y:ident| $f:expr,
       $pbl:ident = |$g1:ident, $x1:ident, $y1:ident| $dl:expr,
       $pbr:ident = |$g2:ident, $x2:ident, $y2:ident| $dr:expr;)*) => {$(
        $(#[$doc])*
        #[inline(always)]
        pub fn $name<X: Scalar, Y: Scalar<Real = X::Real>>(x: &X, y: &Y) -> X::Real {
            let ($x, $y) = (x.get(), y.get());
            $f
        }
        #[doc = concat!("Pullback of [`", stringify!($name), "`] for the receiver.")]
        #[inline(always)]
        pub fn $pbl<X: Scalar, Y: Scalar<Real = X::Real>>(x: &X, y: &Y, ct: X::Real) -> X::Real {
            let ($g1, $x1, $y1) = (ct, x.get(), y.get());
            $dl
        }
        #[doc = concat!("Pullback of [`", stringify!($name), "`] for the argument.")]
        #[inline(always)]
        pub fn $pbr<X: Scalar, Y: Scalar<Real = X::Real>>(x: &X, y: &Y, ct: X::Real) -> X::Real {
            let ($g2, $x2, $y2) = (ct, x.get(), y.get());
            $dr
        }
    )*};
}

#[inline(always)]
fn tie_share<A: Real>(winner: bool, tie: bool) -> A {
    // JAX splits the cotangent evenly between tied operands of max and min.
    if tie {
        A::lit(0.5)
    } else if winner {
        A::one()
    } else {
        A::zero()
    }
}

scalar_binary! {
    /// `y.atan2(x)`: the angle of the point `(x, y)`.
    atan2 = |y, x| y.atan2(x),
    atan2_pb_lhs = |g, y, x| g * x / (x * x + y * y),
    atan2_pb_rhs = |g, y, x| -g * y / (x * x + y * y);
    /// `sqrt(x^2 + y^2)`.
    hypot = |x, y| x.hypot(y),
    hypot_pb_lhs = |g, x, y| g * x / x.hypot(y),
    hypot_pb_rhs = |g, x, y| g * y / x.hypot(y);
    /// The larger of two scalars.
    max = |x, y| x.max(y),
    max_pb_lhs = |g, x, y| g * tie_share(x > y, x == y),
    max_pb_rhs = |g, x, y| g * tie_share(y > x, x == y);
    /// The smaller of two scalars.
    min = |x, y| x.min(y),
    min_pb_lhs = |g, x, y| g * tie_share(x < y, x == y),
    min_pb_rhs = |g, x, y| g * tie_share(y < x, x == y);
    /// `x^y` for scalars.
    powf_scalar = |x, y| x.powf(y),
    powf_scalar_pb_lhs = |g, x, y| g * y * x.powf(y - X::Real::one()),
    powf_scalar_pb_rhs = |g, x, y| g * x.powf(y) * x.ln();
}

use num_traits::One;

/// `x.clamp(lo, hi)`.
#[inline(always)]
pub fn clamp<X: Scalar, L: Scalar<Real = X::Real>, H: Scalar<Real = X::Real>>(
    x: &X,
    lo: &L,
    hi: &H,
) -> X::Real {
    x.get().max(lo.get()).min(hi.get())
}

/// Pullback of [`clamp`] for the clamped value (the bounds are constants).
#[inline(always)]
pub fn clamp_pb<X: Scalar, L: Scalar<Real = X::Real>, H: Scalar<Real = X::Real>>(
    x: &X,
    lo: &L,
    hi: &H,
    ct: X::Real,
) -> X::Real {
    let x = x.get();
    if lo.get() <= x && x <= hi.get() {
        ct
    } else {
        X::Real::zero()
    }
}

use num_traits::Zero;

/// `a * b + c` (the fused multiply-add of `f64::mul_add`).
#[inline(always)]
pub fn mul_add<A: Scalar, B: Scalar<Real = A::Real>, C: Scalar<Real = A::Real>>(
    a: &A,
    b: &B,
    c: &C,
) -> A::Real {
    a.get().mul_add(b.get(), c.get())
}

/// Pullback of [`mul_add`] for `a`.
#[inline(always)]
pub fn mul_add_pb_a<B: Scalar>(b: &B, ct: B::Real) -> B::Real {
    ct * b.get()
}

/// Pullback of [`mul_add`] for `b`.
#[inline(always)]
pub fn mul_add_pb_b<A: Scalar>(a: &A, ct: A::Real) -> A::Real {
    ct * a.get()
}

/// Pullback of [`mul_add`] for `c`.
#[inline(always)]
pub fn mul_add_pb_c<T: Real>(ct: T) -> T {
    ct
}

/// `x as T` between float types.
#[inline(always)]
pub fn cast<T: Real, X: Scalar>(x: &X) -> T {
    T::lit(x.get().as_f64())
}

/// Pullback of [`cast`]: the cotangent converted back to `x`'s type.
#[inline(always)]
pub fn cast_pb<X: Scalar, T: Real>(_x: &X, ct: T) -> X::Real {
    X::Real::lit(ct.as_f64())
}

/// `x.mapv(f)` where `f` is differentiable scalar code.
#[inline]
pub fn mapv<X: Value>(x: &X, f: impl Fn(Elem<X>) -> Elem<X>) -> Owned<X>
where
    X::Primal: Elementwise,
{
    x.primal().map(f)
}

/// Pullback of [`mapv`]: `df(v, g)` is the element function's pullback at `v` applied
/// to the cotangent `g`, run element by element in one pass.
#[inline]
pub fn mapv_pb<X: Value>(x: &X, ct: Owned<X>, df: impl Fn(Elem<X>, Elem<X>) -> Elem<X>) -> Owned<X>
where
    X::Primal: Elementwise,
{
    x.primal().pull(ct, |g, v| df(v, g))
}

/// Pullback of [`mapv`] whose element function also reads values of the enclosing
/// code that are differentiated (`x.mapv(|v| (v * scale).tanh())`): `df(v, g)` gives
/// the element's cotangent and its partials for those values, which are summed over
/// the elements, in the same single pass. `zero` is their zero (a tuple).
#[inline]
pub fn mapv_pb_captured<X: Value, C: crate::value::Accumulate>(
    x: &X,
    ct: Owned<X>,
    zero: C,
    df: impl Fn(Elem<X>, Elem<X>) -> (Elem<X>, C),
) -> (Owned<X>, C)
where
    X::Primal: Elementwise,
{
    let mut sum = zero;
    let dx = x.primal().pull(ct, |g, v| {
        let (dv, dc) = df(v, g);
        sum.accumulate(dc);
        dv
    });
    (dx, sum)
}

/// `x * x`.
#[inline]
pub fn square<X: Value>(x: &X) -> Owned<X>
where
    X::Primal: Elementwise,
{
    x.primal().map(|v| v * v)
}

/// Pullback of [`square`]: `2 x ct`, in place on the cotangent.
#[inline]
pub fn square_pb<X: Value>(x: &X, ct: Owned<X>) -> Owned<X>
where
    X::Primal: Elementwise,
{
    x.primal().pull(ct, |g, v| g * (v + v))
}

/// Both pullbacks of [`add`] at once: the cotangent moves into whichever operand has
/// the output's shape, and the other is reduced from a reference, so no copy is made.
#[inline]
pub fn add_pb_both<SX, SY, Ct>(x: &SX, y: &SY, ct: Ct) -> (UnbCot<SX, Ct>, UnbCot<SY, Ct>)
where
    SX: Unbroadcast<Ct>,
    SY: Unbroadcast<Ct>,
    Ct: ReduceRef<SY> + ReduceRef<SX>,
{
    if ReduceRef::<SX>::keeps_shape(&ct, x) {
        let cy = ReduceRef::<SY>::reduce_ref(&ct, y);
        (x.unbroadcast(ct), cy)
    } else {
        let cx = ReduceRef::<SX>::reduce_ref(&ct, x);
        (cx, y.unbroadcast(ct))
    }
}

/// Both pullbacks of [`sub`] at once (see [`add_pb_both`]).
#[inline]
pub fn sub_pb_both<SX, SY, Ct>(x: &SX, y: &SY, ct: Ct) -> (UnbCot<SX, Ct>, UnbCot<SY, Ct>)
where
    SX: Unbroadcast<Ct>,
    SY: Unbroadcast<Ct>,
    Ct: ReduceRef<SY> + ReduceRef<SX> + Elementwise<Owned = Ct>,
    UnbCot<SY, Ct>: Elementwise<Owned = UnbCot<SY, Ct>>,
{
    let (cx, cy) = add_pb_both(x, y, ct);
    (cx, cy.map(|g| -g))
}

/// Reducing a cotangent to an operand's shape from a reference.
pub trait ReduceRef<S: Unbroadcast<Self>>: Sized {
    /// Whether the cotangent already has the shape `s` (no reduction).
    fn keeps_shape(&self, s: &S) -> bool;
    /// The cotangent reduced to `s`, without consuming it.
    fn reduce_ref(&self, s: &S) -> S::Cot;
}

impl<A: Real> ReduceRef<crate::value::ScalarShape<A>> for A {
    #[inline(always)]
    fn keeps_shape(&self, _: &crate::value::ScalarShape<A>) -> bool {
        true
    }
    #[inline(always)]
    fn reduce_ref(&self, _: &crate::value::ScalarShape<A>) -> A {
        *self
    }
}

impl<A: Real, E: Dimension> ReduceRef<crate::value::ScalarShape<A>> for Array<A, E> {
    #[inline]
    fn keeps_shape(&self, _: &crate::value::ScalarShape<A>) -> bool {
        false
    }
    #[inline]
    fn reduce_ref(&self, _: &crate::value::ScalarShape<A>) -> A {
        self.sum()
    }
}

impl<A: Real, D: Dimension, E: Dimension> ReduceRef<crate::value::ArrayShape<A, D>>
    for Array<A, E>
{
    #[inline]
    fn keeps_shape(&self, s: &crate::value::ArrayShape<A, D>) -> bool {
        self.shape() == s.0.slice()
    }
    fn reduce_ref(&self, s: &crate::value::ArrayShape<A, D>) -> Array<A, D> {
        crate::value::unbroadcast_ref(self, &s.0)
    }
}
