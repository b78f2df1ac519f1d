//! Reductions: `sum`, `mean`, `sum_axis`, `mean_axis`, and their pullbacks, which
//! spread the cotangent back over the reduced elements or axis.

use crate::value::{ArrayShape, Real, Value};
use ndarray::{Array, ArrayBase, Axis, Data, Dimension, RemoveAxis};

/// The sum of all elements.
#[inline]
pub fn sum<X: Value<Primal = ArrayBase<S, D>>, A: Real, S: Data<Elem = A>, D: Dimension>(
    x: &X,
) -> A {
    x.primal().sum()
}

/// Pullback of [`sum`] (given the operand's shape): the cotangent, at every element.
#[inline]
pub fn sum_pb<A: Real, D: Dimension>(x: &ArrayShape<A, D>, ct: A) -> Array<A, D> {
    Array::from_elem(x.0.clone(), ct)
}

/// `g` at every element of an array of `shape`: [`sum`]'s transpose, what the input
/// gradient of a module written back as source (reverse over reverse) gives a sum.
///
/// ```
/// use adjoint::__private::shape_of;
/// use adjoint::rules::reduce::broadcast_to;
/// assert_eq!(broadcast_to(&2.0, &shape_of(&ndarray::Array1::<f64>::zeros(3))), ndarray::array![2.0, 2.0, 2.0]);
/// ```
#[inline]
pub fn broadcast_to<G: Value<Primal = A>, A: Real, D: Dimension>(
    g: &G,
    shape: &ArrayShape<A, D>,
) -> Array<A, D> {
    Array::from_elem(shape.0.clone(), *g.primal())
}

/// Pullback of [`broadcast_to`]: the sum of the cotangent.
#[inline]
pub fn broadcast_to_pb<S, A: Real, D: Dimension>(_shape: S, ct: Array<A, D>) -> A {
    ct.sum()
}

/// The mean of all elements (`x.mean().unwrap()`); NaN for an empty array, as in JAX.
#[inline]
pub fn mean<X: Value<Primal = ArrayBase<S, D>>, A: Real, S: Data<Elem = A>, D: Dimension>(
    x: &X,
) -> A {
    let x = x.primal();
    x.sum() / A::lit(x.len() as f64)
}

/// Pullback of [`mean`] (given the operand's shape).
#[inline]
pub fn mean_pb<A: Real, D: Dimension>(x: &ArrayShape<A, D>, ct: A) -> Array<A, D> {
    Array::from_elem(x.0.clone(), ct / A::lit(x.size() as f64))
}

/// The sums along `axis`.
#[inline]
pub fn sum_axis<X: Value<Primal = ArrayBase<S, D>>, A: Real, S: Data<Elem = A>, D: RemoveAxis>(
    x: &X,
    axis: Axis,
) -> Array<A, D::Smaller> {
    x.primal().sum_axis(axis)
}

/// Pullback of [`sum_axis`] (given the operand's shape): the cotangent broadcast
/// back along `axis`.
#[inline]
pub fn sum_axis_pb<A: Real, D: RemoveAxis>(
    x: &ArrayShape<A, D>,
    axis: Axis,
    ct: Array<A, D::Smaller>,
) -> Array<A, D> {
    spread(x.0.clone(), axis, ct, A::one())
}

/// The means along `axis` (`x.mean_axis(axis).unwrap()`).
#[inline]
pub fn mean_axis<X: Value<Primal = ArrayBase<S, D>>, A: Real, S: Data<Elem = A>, D: RemoveAxis>(
    x: &X,
    axis: Axis,
) -> Array<A, D::Smaller> {
    let x = x.primal();
    x.sum_axis(axis) / A::lit(x.len_of(axis) as f64)
}

/// Pullback of [`mean_axis`] (given the operand's shape).
#[inline]
pub fn mean_axis_pb<A: Real, D: RemoveAxis>(
    x: &ArrayShape<A, D>,
    axis: Axis,
    ct: Array<A, D::Smaller>,
) -> Array<A, D> {
    let n = x.0[axis.index()];
    spread(x.0.clone(), axis, ct, A::one() / A::lit(n as f64))
}

/// An array of shape `dim` holding `scale * ct`, repeated along `axis`.
pub(crate) fn spread<A: Real, D: Dimension, E: Dimension>(
    dim: D,
    axis: Axis,
    ct: Array<A, E>,
    scale: A,
) -> Array<A, D> {
    let mut out = Array::zeros(dim);
    out.zip_mut_with(&ct.insert_axis(axis), |o, &g| *o = g * scale);
    out
}
