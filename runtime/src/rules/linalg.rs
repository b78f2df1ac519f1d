//! Linear algebra: `dot` between 1-D and 2-D arrays in every combination, and the
//! transpose.

use crate::value::{Real, Value};
use ndarray::{Array, Array1, Array2, ArrayBase, ArrayView, Axis, Data, Dimension, Ix1, Ix2};

/// `dot` with its two pullbacks, for one combination of ranks.
#[diagnostic::on_unimplemented(
    message = "no `dot` rule between `{Self}` and `{Rhs}`",
    note = "adjoint differentiates `dot` between 1-D and 2-D float arrays"
)]
pub trait DotRule<Rhs> {
    /// The product's type.
    type Output;
    /// The left operand's cotangent.
    type LhsCot;
    /// The right operand's cotangent.
    type RhsCot;
    /// `self.dot(rhs)`.
    fn dot_fwd(&self, rhs: &Rhs) -> Self::Output;
    /// The cotangent of `self`.
    fn dot_pb_lhs(&self, rhs: &Rhs, ct: &Self::Output) -> Self::LhsCot;
    /// The cotangent of `rhs`.
    fn dot_pb_rhs(&self, rhs: &Rhs, ct: &Self::Output) -> Self::RhsCot;
}

fn outer<A: Real>(a: ArrayView<'_, A, Ix1>, b: ArrayView<'_, A, Ix1>) -> Array2<A> {
    let a = a.insert_axis(Axis(1));
    let b = b.insert_axis(Axis(0));
    a.dot(&b)
}

impl<A: Real, S: Data<Elem = A>, S2: Data<Elem = A>> DotRule<ArrayBase<S2, Ix2>>
    for ArrayBase<S, Ix2>
{
    type Output = Array2<A>;
    type LhsCot = Array2<A>;
    type RhsCot = Array2<A>;
    #[inline]
    fn dot_fwd(&self, r: &ArrayBase<S2, Ix2>) -> Array2<A> {
        self.dot(r)
    }
    #[inline]
    fn dot_pb_lhs(&self, r: &ArrayBase<S2, Ix2>, ct: &Array2<A>) -> Array2<A> {
        ct.dot(&r.t())
    }
    #[inline]
    fn dot_pb_rhs(&self, _r: &ArrayBase<S2, Ix2>, ct: &Array2<A>) -> Array2<A> {
        self.t().dot(ct)
    }
}

impl<A: Real, S: Data<Elem = A>, S2: Data<Elem = A>> DotRule<ArrayBase<S2, Ix1>>
    for ArrayBase<S, Ix2>
{
    type Output = Array1<A>;
    type LhsCot = Array2<A>;
    type RhsCot = Array1<A>;
    #[inline]
    fn dot_fwd(&self, r: &ArrayBase<S2, Ix1>) -> Array1<A> {
        self.dot(r)
    }
    #[inline]
    fn dot_pb_lhs(&self, r: &ArrayBase<S2, Ix1>, ct: &Array1<A>) -> Array2<A> {
        outer(ct.view(), r.view())
    }
    #[inline]
    fn dot_pb_rhs(&self, _r: &ArrayBase<S2, Ix1>, ct: &Array1<A>) -> Array1<A> {
        self.t().dot(ct)
    }
}

impl<A: Real, S: Data<Elem = A>, S2: Data<Elem = A>> DotRule<ArrayBase<S2, Ix2>>
    for ArrayBase<S, Ix1>
{
    type Output = Array1<A>;
    type LhsCot = Array1<A>;
    type RhsCot = Array2<A>;
    #[inline]
    fn dot_fwd(&self, r: &ArrayBase<S2, Ix2>) -> Array1<A> {
        self.dot(r)
    }
    #[inline]
    fn dot_pb_lhs(&self, r: &ArrayBase<S2, Ix2>, ct: &Array1<A>) -> Array1<A> {
        r.dot(ct)
    }
    #[inline]
    fn dot_pb_rhs(&self, _r: &ArrayBase<S2, Ix2>, ct: &Array1<A>) -> Array2<A> {
        outer(self.view(), ct.view())
    }
}

impl<A: Real, S: Data<Elem = A>, S2: Data<Elem = A>> DotRule<ArrayBase<S2, Ix1>>
    for ArrayBase<S, Ix1>
{
    type Output = A;
    type LhsCot = Array1<A>;
    type RhsCot = Array1<A>;
    #[inline]
    fn dot_fwd(&self, r: &ArrayBase<S2, Ix1>) -> A {
        self.dot(r)
    }
    #[inline]
    fn dot_pb_lhs(&self, r: &ArrayBase<S2, Ix1>, ct: &A) -> Array1<A> {
        r * *ct
    }
    #[inline]
    fn dot_pb_rhs(&self, _r: &ArrayBase<S2, Ix1>, ct: &A) -> Array1<A> {
        self * *ct
    }
}

type DotOut<X, Y> = <<X as Value>::Primal as DotRule<<Y as Value>::Primal>>::Output;
type DotLhsCot<X, Y> = <<X as Value>::Primal as DotRule<<Y as Value>::Primal>>::LhsCot;
type DotRhsCot<X, Y> = <<X as Value>::Primal as DotRule<<Y as Value>::Primal>>::RhsCot;

/// `x.dot(y)`.
#[inline]
pub fn dot<X: Value, Y: Value>(x: &X, y: &Y) -> DotOut<X, Y>
where
    X::Primal: DotRule<Y::Primal>,
{
    x.primal().dot_fwd(y.primal())
}

/// Pullback of [`dot`] for the left operand.
#[inline]
pub fn dot_pb_lhs<X: Value, Y: Value>(x: &X, y: &Y, ct: DotOut<X, Y>) -> DotLhsCot<X, Y>
where
    X::Primal: DotRule<Y::Primal>,
{
    x.primal().dot_pb_lhs(y.primal(), &ct)
}

/// Pullback of [`dot`] for the right operand.
#[inline]
pub fn dot_pb_rhs<X: Value, Y: Value>(x: &X, y: &Y, ct: DotOut<X, Y>) -> DotRhsCot<X, Y>
where
    X::Primal: DotRule<Y::Primal>,
{
    x.primal().dot_pb_rhs(y.primal(), &ct)
}

/// Pullback of [`dot`] for both operands, from one cotangent (no copy of it).
#[inline]
pub fn dot_pb_both<X: Value, Y: Value>(
    x: &X,
    y: &Y,
    ct: DotOut<X, Y>,
) -> (DotLhsCot<X, Y>, DotRhsCot<X, Y>)
where
    X::Primal: DotRule<Y::Primal>,
{
    (
        x.primal().dot_pb_lhs(y.primal(), &ct),
        x.primal().dot_pb_rhs(y.primal(), &ct),
    )
}

/// The transpose (`x.t()`, `x.reversed_axes()`), a view.
#[inline]
pub fn t<
    'a,
    X: Value<Primal = ArrayBase<S, D>>,
    A: Real,
    S: Data<Elem = A> + 'a,
    D: Dimension + 'a,
>(
    x: &'a X,
) -> ArrayView<'a, A, D> {
    x.primal().t()
}

/// Pullback of [`t`]: the cotangent transposed back.
#[inline]
pub fn t_pb<A: Real, D: Dimension>(ct: Array<A, D>) -> Array<A, D> {
    ct.reversed_axes()
}
