//! Neural-network functions along an axis: `softmax`, `log_softmax`, `logsumexp`.
//! (`relu`, `sigmoid` and `softplus` are elementwise and live with their family.)

use crate::rules::kernels;
use crate::value::{Real, Value};
use ndarray::{Array, ArrayBase, Axis, Data, RemoveAxis};

/// The maximum of each lane along `axis` (zero where it is not finite, as for an
/// empty lane): what the stable forms subtract.
fn lane_max<A: Real, S: Data<Elem = A>, D: RemoveAxis>(
    x: &ArrayBase<S, D>,
    axis: Axis,
) -> Array<A, D::Smaller> {
    x.fold_axis(axis, A::neg_infinity(), |&m, &v| m.max(v))
        .mapv_into(|m| if m.is_finite() { m } else { A::zero() })
}

/// `x` minus its lane maxima, broadcast along `axis`.
fn max_axis<A: Real, S: Data<Elem = A>, D: RemoveAxis>(
    x: &ArrayBase<S, D>,
    axis: Axis,
) -> Array<A, D> {
    let m = lane_max(x, axis);
    let mut out = Array::zeros(x.raw_dim());
    out.zip_mut_with(&m.insert_axis(axis), |o, &m| *o = m);
    out
}

/// `log(sum(exp(x)))` along `axis`, computed stably; `-inf` over an empty axis, as
/// JAX gives.
pub fn logsumexp<X: Value<Primal = ArrayBase<S, D>>, A: Real, S: Data<Elem = A>, D: RemoveAxis>(
    x: &X,
    axis: Axis,
) -> Array<A, D::Smaller> {
    let x = x.primal();
    let m = lane_max(x, axis);
    let mut e = x.to_owned();
    e.zip_mut_with(&m.view().insert_axis(axis), |e, &m| *e -= m);
    kernels::in_place::<kernels::Exp, A, D>(&mut e);
    let s = e.sum_axis(axis);
    s.mapv(A::ln) + &m
}

/// Pullback of [`logsumexp`]: the cotangent times `softmax(x)`.
pub fn logsumexp_pb<
    X: Value<Primal = ArrayBase<S, D>>,
    A: Real,
    S: Data<Elem = A>,
    D: RemoveAxis,
>(
    x: &X,
    axis: Axis,
    ct: Array<A, D::Smaller>,
) -> Array<A, D> {
    let mut y = softmax(x, axis);
    y.zip_mut_with(&ct.insert_axis(axis), |y, &g| *y *= g);
    y
}

/// `exp(x) / sum(exp(x))` along `axis`.
pub fn softmax<X: Value<Primal = ArrayBase<S, D>>, A: Real, S: Data<Elem = A>, D: RemoveAxis>(
    x: &X,
    axis: Axis,
) -> Array<A, D> {
    let x = x.primal();
    let mut e = x - &max_axis(x, axis);
    kernels::in_place::<kernels::Exp, A, D>(&mut e);
    let s = e.sum_axis(axis);
    e.zip_mut_with(&s.insert_axis(axis), |e, &s| *e /= s);
    e
}

/// Pullback of [`softmax`], given its output `y`: `y * (g - sum(g * y))`.
pub fn softmax_pb<A: Real, D: RemoveAxis>(
    y: &Array<A, D>,
    axis: Axis,
    ct: Array<A, D>,
) -> Array<A, D> {
    let dot = (&ct * y).sum_axis(axis);
    let mut out = ct;
    out.zip_mut_with(&dot.insert_axis(axis), |g, &d| *g -= d);
    out *= y;
    out
}

/// `x - logsumexp(x)` along `axis`.
pub fn log_softmax<
    X: Value<Primal = ArrayBase<S, D>>,
    A: Real,
    S: Data<Elem = A>,
    D: RemoveAxis,
>(
    x: &X,
    axis: Axis,
) -> Array<A, D> {
    let lse = logsumexp(x, axis);
    let mut y = x.primal().to_owned();
    y.zip_mut_with(&lse.insert_axis(axis), |v, &l| *v -= l);
    y
}

/// Pullback of [`log_softmax`], given its output `y`: `g - exp(y) * sum(g)`.
pub fn log_softmax_pb<A: Real, D: RemoveAxis>(
    y: &Array<A, D>,
    axis: Axis,
    ct: Array<A, D>,
) -> Array<A, D> {
    let total = ct.sum_axis(axis).insert_axis(axis);
    let mut out = kernels::mapped::<kernels::Exp, A, _, D>(y);
    out.zip_mut_with(&total, |p, &s| *p *= s);
    ct - out
}
