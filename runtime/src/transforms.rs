//! What the transforms need at run time: the seed cotangent of a scalar output for
//! `grad!`, and for a lifted `jvp!` the tangents passed to a module's forward mode.

use crate::value::Value;

/// An output `grad!` can differentiate: a scalar, seeded with `1`.
#[diagnostic::on_unimplemented(
    message = "grad! needs a scalar output, but the function returns `{Self}`",
    label = "not an f32 or f64",
    note = "use vjp! for a function with a non-scalar output, and pass the output's cotangent yourself"
)]
pub trait ScalarOutput: Value {
    /// The cotangent `1`.
    fn one(&self) -> Self::Cot;
    /// The cotangent `1`.
    fn unit() -> Self::Cot
    where
        Self: Sized;
}

impl<A: crate::value::Real> ScalarOutput for A {
    #[inline(always)]
    fn one(&self) -> A {
        A::one()
    }
    #[inline(always)]
    fn unit() -> A {
        A::one()
    }
}

/// The seed of `grad!`: implemented exactly when `Self` is a scalar output, so that
/// the generated `__f_grad` of a function with a non-scalar output compiles, and
/// calling it reports [`ScalarOutput`]'s message.
#[diagnostic::on_unimplemented(
    message = "grad! needs a scalar output, but the function returns `{Self}`",
    label = "not an f32 or f64",
    note = "use vjp! for a function with a non-scalar output, and pass the output's cotangent yourself"
)]
///
/// The seed's type is a parameter of its own (not `Value::Cot` through a supertrait):
/// a `where` clause on the output's type then does not hide its `Value` impl from
/// the rest of the companion, whose cotangent types rustc must normalize.
pub trait GradOf<O> {
    /// The seed's type: the output's cotangent.
    type Seed;
    /// The cotangent `1`.
    fn grad_seed(&self) -> Self::Seed;
    /// The cotangent `1`, without the value (for a gradient that never computes it).
    fn seed() -> Self::Seed
    where
        Self: Sized;
}

impl<T: ScalarOutput> GradOf<T> for T {
    type Seed = T::Cot;
    #[inline(always)]
    fn grad_seed(&self) -> T::Cot {
        self.one()
    }
    #[inline(always)]
    fn seed() -> T::Cot {
        T::unit()
    }
}

/// The seed `1` of a scalar output.
#[inline(always)]
pub fn grad_seed<T: ScalarOutput>(out: &T) -> T::Cot {
    out.one()
}

/// No tangent: a module's forward mode takes it for an argument that does not vary
/// (a zero tangent where the argument is a float value, ignored otherwise).
#[derive(Clone, Copy, Debug)]
pub struct NoTangent;

/// A tangent passed to a module's forward mode for an argument whose tangent has
/// type `C`: a `C`, a reference to one (copied), or [`NoTangent`] (zero).
pub trait IntoTangent<C> {
    /// The tangent, or `zero()` for [`NoTangent`].
    fn into_tangent(self, zero: impl FnOnce() -> C) -> C;
}

impl<C> IntoTangent<C> for NoTangent {
    #[inline(always)]
    fn into_tangent(self, zero: impl FnOnce() -> C) -> C {
        zero()
    }
}

impl<A: crate::value::Real> IntoTangent<A> for A {
    #[inline(always)]
    fn into_tangent(self, _zero: impl FnOnce() -> A) -> A {
        self
    }
}

impl<A: crate::value::Real> IntoTangent<A> for &A {
    #[inline(always)]
    fn into_tangent(self, _zero: impl FnOnce() -> A) -> A {
        *self
    }
}

impl<A: crate::value::Real, D: ndarray::Dimension> IntoTangent<ndarray::Array<A, D>>
    for ndarray::Array<A, D>
{
    #[inline(always)]
    fn into_tangent(self, _zero: impl FnOnce() -> Self) -> Self {
        self
    }
}

impl<A: crate::value::Real, S: ndarray::Data<Elem = A>, D: ndarray::Dimension>
    IntoTangent<ndarray::Array<A, D>> for &ndarray::ArrayBase<S, D>
{
    fn into_tangent(self, _zero: impl FnOnce() -> ndarray::Array<A, D>) -> ndarray::Array<A, D> {
        self.to_owned()
    }
}

/// A pair's tangent (an LSTM's carry), each part as it could be passed alone; the
/// zero pair is made at most once, for the parts that are [`NoTangent`].
impl<C0, C1, T0: IntoTangent<C0>, T1: IntoTangent<C1>> IntoTangent<(C0, C1)> for (T0, T1) {
    fn into_tangent(self, zero: impl FnOnce() -> (C0, C1)) -> (C0, C1) {
        let (t0, t1) = self;
        let mut zero = Some(zero);
        let mut second = None;
        let d0 = t0.into_tangent(|| match zero.take() {
            Some(z) => {
                let (a, b) = z();
                second = Some(b);
                a
            }
            None => unreachable!("adjoint: the zero is asked for once per part"),
        });
        let d1 = t1.into_tangent(|| match (second.take(), zero.take()) {
            (Some(b), _) => b,
            (None, Some(z)) => z().1,
            (None, None) => unreachable!("adjoint: the zero is asked for once per part"),
        });
        (d0, d1)
    }
}

/// A pair's tangent by reference: each part by reference.
impl<'a, C0, C1, X0, X1> IntoTangent<(C0, C1)> for &'a (X0, X1)
where
    &'a X0: IntoTangent<C0>,
    &'a X1: IntoTangent<C1>,
{
    fn into_tangent(self, zero: impl FnOnce() -> (C0, C1)) -> (C0, C1) {
        (&self.0, &self.1).into_tangent(zero)
    }
}

/// A view's tangent is passed as a view too (one example of a `vmap!`'s tangent).
impl<A: crate::value::Real, D: ndarray::Dimension> IntoTangent<ndarray::Array<A, D>>
    for ndarray::ArrayView<'_, A, D>
{
    fn into_tangent(self, _zero: impl FnOnce() -> ndarray::Array<A, D>) -> ndarray::Array<A, D> {
        self.to_owned()
    }
}

/// The tangent `t` for an argument `x` (zero for [`NoTangent`]).
#[inline(always)]
pub fn tangent<X: Value, T: IntoTangent<X::Cot>>(t: T, x: &X) -> X::Cot {
    t.into_tangent(|| x.zeros())
}

/// A zero tangent of type `Self` for an argument `x` of type `X`, where a caller's
/// forward mode passes an argument that does not vary to a `jvp_all` companion:
/// zero of the argument's float type, or [`NoTangent`] for a parameter that is not
/// differentiated. The parameter's type picks which.
pub trait ZeroTangent<X: ?Sized> {
    /// The zero.
    fn zero_tangent(x: &X) -> Self;
}

impl<X: ?Sized> ZeroTangent<X> for NoTangent {
    #[inline(always)]
    fn zero_tangent(_: &X) -> Self {
        NoTangent
    }
}

impl<A: crate::value::Real> ZeroTangent<A> for A {
    #[inline(always)]
    fn zero_tangent(_: &A) -> A {
        A::lit(0.0)
    }
}

impl<A: crate::value::Real> ZeroTangent<&A> for A {
    #[inline(always)]
    fn zero_tangent(_: &&A) -> A {
        A::lit(0.0)
    }
}

impl<A: crate::value::Real, S: ndarray::Data<Elem = A>, D: ndarray::Dimension>
    ZeroTangent<ndarray::ArrayBase<S, D>> for ndarray::Array<A, D>
{
    #[inline(always)]
    fn zero_tangent(x: &ndarray::ArrayBase<S, D>) -> Self {
        ndarray::Array::zeros(x.raw_dim())
    }
}

impl<A: crate::value::Real, S: ndarray::Data<Elem = A>, D: ndarray::Dimension>
    ZeroTangent<&ndarray::ArrayBase<S, D>> for ndarray::Array<A, D>
{
    #[inline(always)]
    fn zero_tangent(x: &&ndarray::ArrayBase<S, D>) -> Self {
        ndarray::Array::zeros(x.raw_dim())
    }
}

/// See [`ZeroTangent`].
#[inline(always)]
pub fn zero_tangent<X: ?Sized, T: ZeroTangent<X>>(x: &X) -> T {
    T::zero_tangent(x)
}

/// The tangent of a literal argument (`None`, `0.5`, a constant's path), whose type
/// the callee's parameter picks alone (a generic literal such as `None` has none of
/// its own to go by): `NoTangent` for an argument that is not differentiated, a zero
/// float for one that is.
///
/// ```
/// use adjoint::transforms::{NoTangent, literal_tangent};
/// let _mask: NoTangent = literal_tangent(); // `None` passed for an attention mask
/// let scale: f64 = literal_tangent(); // `0.5` passed for a differentiated scale
/// assert_eq!(scale, 0.0);
/// ```
pub trait LiteralTangent {
    /// The zero.
    fn literal_tangent() -> Self;
}

impl LiteralTangent for NoTangent {
    #[inline(always)]
    fn literal_tangent() -> Self {
        NoTangent
    }
}

impl<A: crate::value::Real> LiteralTangent for A {
    #[inline(always)]
    fn literal_tangent() -> Self {
        A::lit(0.0)
    }
}

/// See [`LiteralTangent`].
#[inline(always)]
pub fn literal_tangent<T: LiteralTangent>() -> T {
    T::literal_tangent()
}

/// Whether a cotangent is zero everywhere: a `#[custom_jvp]` function's pullback
/// returns zeros for it without running its rule's VJP (which may call the function
/// again, as `f_jvp` computes `f(x)`: the recursion ends there).
pub trait IsZero {
    /// Every element is zero.
    fn is_zero(&self) -> bool;
}

impl IsZero for f32 {
    fn is_zero(&self) -> bool {
        *self == 0.0
    }
}

impl IsZero for f64 {
    fn is_zero(&self) -> bool {
        *self == 0.0
    }
}

impl<A: crate::value::Real, S: ndarray::Data<Elem = A>, D: ndarray::Dimension> IsZero
    for ndarray::ArrayBase<S, D>
{
    fn is_zero(&self) -> bool {
        self.iter().all(|v| *v == A::lit(0.0))
    }
}

impl IsZero for () {
    fn is_zero(&self) -> bool {
        true
    }
}

macro_rules! tuple_is_zero {
    ($($t:ident $i:tt),*) => {
        impl<$($t: IsZero),*> IsZero for ($($t,)*) {
            fn is_zero(&self) -> bool {
                true $(&& self.$i.is_zero())*
            }
        }
    };
}

tuple_is_zero!(A 0, B 1);
tuple_is_zero!(A 0, B 1, C 2);
tuple_is_zero!(A 0, B 1, C 2, D 3);

/// Never implemented: what a `#[custom_vjp]` function's forward-mode companion asks
/// of its tangents, so that calling it from forward mode is an error that says why.
#[diagnostic::on_unimplemented(
    message = "this function has a custom VJP but no forward rule, so forward mode cannot call it",
    label = "called from forward mode (a `#[differentiable(jvp)]` function, `jvp!`, `hvp!`, ..)",
    note = "give it a forward rule too: `#[custom_jvp(jvp = f_jvp)]` instead of `#[custom_vjp]` (reverse mode then transposes the forward rule)"
)]
pub trait OnlyVjp {}
