//! Neural-network functions along an axis: `softmax`, `log_softmax`, `logsumexp`,
//! with the rules forward mode writes for them; and `where_`, how masks apply.
//! (`relu`, `sigmoid` and `softplus` are elementwise and live with their family.)

use crate::rules::kernels;
use crate::value::{Real, Value};
use ndarray::{Array, ArrayBase, Axis, Data, Dimension, RemoveAxis};

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

/// What forward mode writes for [`softmax`]: its tangent `y * (dx - sum(y * dx))`
/// along `axis`, from its output `y`. A rule of its own (with pullbacks), so that
/// second order goes through softmax.
pub fn softmax_tangent<Y, T, A, S, S2, D>(y: &Y, dx: &T, axis: Axis) -> Array<A, D>
where
    Y: Value<Primal = ArrayBase<S, D>>,
    T: Value<Primal = ArrayBase<S2, D>>,
    A: Real,
    S: Data<Elem = A>,
    S2: Data<Elem = A>,
    D: RemoveAxis,
{
    let (y, dx) = (y.primal(), dx.primal());
    let s = (y * dx).sum_axis(axis);
    let mut out = dx.to_owned();
    out.zip_mut_with(&s.insert_axis(axis), |o, &s| *o -= s);
    out *= y;
    out
}

/// Pullback of [`softmax_tangent`] for `y`: `ct * (dx - s) - dx * sum(ct * y)`,
/// `s = sum(y * dx)`.
pub fn softmax_tangent_pb_y<Y, T, A, S, S2, D>(
    y: &Y,
    dx: &T,
    axis: Axis,
    ct: Array<A, D>,
) -> Array<A, D>
where
    Y: Value<Primal = ArrayBase<S, D>>,
    T: Value<Primal = ArrayBase<S2, D>>,
    A: Real,
    S: Data<Elem = A>,
    S2: Data<Elem = A>,
    D: RemoveAxis,
{
    let (y, dx) = (y.primal(), dx.primal());
    let s = (y * dx).sum_axis(axis);
    let c = (&ct * y).sum_axis(axis);
    let mut a = dx.to_owned();
    a.zip_mut_with(&s.insert_axis(axis), |o, &s| *o -= s);
    a *= &ct;
    let mut b = dx.to_owned();
    b.zip_mut_with(&c.insert_axis(axis), |o, &c| *o *= c);
    a - b
}

/// Pullback of [`softmax_tangent`] for `dx`: softmax's own pullback (the tangent is
/// linear in `dx`, its Jacobian symmetric).
pub fn softmax_tangent_pb_dx<Y, A, S, D>(y: &Y, axis: Axis, ct: Array<A, D>) -> Array<A, D>
where
    Y: Value<Primal = ArrayBase<S, D>>,
    A: Real,
    S: Data<Elem = A>,
    D: RemoveAxis,
{
    let y = y.primal();
    let dot = (&ct * y).sum_axis(axis);
    let mut out = ct;
    out.zip_mut_with(&dot.insert_axis(axis), |g, &d| *g -= d);
    out * y
}

/// What forward mode writes for [`log_softmax`]: `dx - sum(exp(y) * dx)` along
/// `axis`, from its output `y`.
pub fn log_softmax_tangent<Y, T, A, S, S2, D>(y: &Y, dx: &T, axis: Axis) -> Array<A, D>
where
    Y: Value<Primal = ArrayBase<S, D>>,
    T: Value<Primal = ArrayBase<S2, D>>,
    A: Real,
    S: Data<Elem = A>,
    S2: Data<Elem = A>,
    D: RemoveAxis,
{
    let (y, dx) = (y.primal(), dx.primal());
    let s = (y.mapv(A::exp) * dx).sum_axis(axis);
    let mut out = dx.to_owned();
    out.zip_mut_with(&s.insert_axis(axis), |o, &s| *o -= s);
    out
}

/// Pullback of [`log_softmax_tangent`] for `y`: `-exp(y) * dx * sum(ct)`.
pub fn log_softmax_tangent_pb_y<Y, T, A, S, S2, D>(
    y: &Y,
    dx: &T,
    axis: Axis,
    ct: Array<A, D>,
) -> Array<A, D>
where
    Y: Value<Primal = ArrayBase<S, D>>,
    T: Value<Primal = ArrayBase<S2, D>>,
    A: Real,
    S: Data<Elem = A>,
    S2: Data<Elem = A>,
    D: RemoveAxis,
{
    let (y, dx) = (y.primal(), dx.primal());
    let total = ct.sum_axis(axis);
    let mut out = y.mapv(A::exp) * dx;
    out.zip_mut_with(&total.insert_axis(axis), |o, &t| *o = -*o * t);
    out
}

/// Pullback of [`log_softmax_tangent`] for `dx`: `ct - exp(y) * sum(ct)`.
pub fn log_softmax_tangent_pb_dx<Y, A, S, D>(y: &Y, axis: Axis, ct: Array<A, D>) -> Array<A, D>
where
    Y: Value<Primal = ArrayBase<S, D>>,
    A: Real,
    S: Data<Elem = A>,
    D: RemoveAxis,
{
    let y = y.primal();
    let total = ct.sum_axis(axis);
    let mut out = y.mapv(A::exp);
    out.zip_mut_with(&total.insert_axis(axis), |o, &t| *o *= t);
    ct - out
}

/// `x` where `mask` holds and `fill` elsewhere, the mask broadcast to `x`'s shape:
/// `jnp.where(mask, x, fill)`, how attention masks its logits (with `fill` the
/// type's lowest value, as Flax).
///
/// # Panics
/// When the mask does not broadcast to `x`'s shape.
///
/// ```
/// use adjoint::nn::where_;
/// use ndarray::array;
/// let y = where_(&array![true, false], &array![[1.0, 2.0], [3.0, 4.0]], -9.0);
/// assert_eq!(y, array![[1.0, -9.0], [3.0, -9.0]]);
/// ```
pub fn where_<X, A, S, D, S2, E>(mask: &ArrayBase<S2, E>, x: &X, fill: A) -> Array<A, D>
where
    X: Value<Primal = ArrayBase<S, D>>,
    A: Real,
    S: Data<Elem = A>,
    D: Dimension,
    S2: Data<Elem = bool>,
    E: Dimension,
{
    let x = x.primal();
    let Some(mask) = mask.broadcast(x.raw_dim()) else {
        if crate::scope::failed() {
            return Array::zeros(x.raw_dim());
        }
        panic!(
            "where_: a mask of shape {:?} does not broadcast to shape {:?}",
            mask.shape(),
            x.shape()
        );
    };
    let mut out = x.to_owned();
    out.zip_mut_with(&mask, |v, &keep| {
        if !keep {
            *v = fill;
        }
    });
    out
}

/// Pullback of [`where_`] for `x`: the cotangent where the mask holds.
pub fn where_pb<A, D, S2, E>(mask: &ArrayBase<S2, E>, _fill: A, mut ct: Array<A, D>) -> Array<A, D>
where
    A: Real,
    D: Dimension,
    S2: Data<Elem = bool>,
    E: Dimension,
{
    if let Some(mask) = mask.broadcast(ct.raw_dim()) {
        ct.zip_mut_with(&mask, |g, &keep| {
            if !keep {
                *g = A::zero();
            }
        });
    }
    ct
}

/// `ct` broadcast along the last axis of `like`, times `f(i, lane element)`: the
/// shape of a per-example cotangent spread over its classes.
fn spread<A: Real, D: RemoveAxis>(ct: &Array<A, D::Smaller>, mut grad: Array<A, D>) -> Array<A, D> {
    let axis = Axis(grad.ndim() - 1);
    grad.zip_mut_with(&ct.view().insert_axis(axis), |g, &c| *g *= c);
    grad
}

/// The cross entropy of `softmax(logits)` against `labels` (probabilities) over the
/// last axis, one value per example: `-sum(labels * log_softmax(logits))`, as
/// optax's `softmax_cross_entropy`. (A rule, fused: see [`crate::losses`].)
///
/// # Panics
/// When the shapes differ, or `logits` has no axis.
pub fn softmax_cross_entropy<X, Y, A, S, S2, D>(logits: &X, labels: &Y) -> Array<A, D::Smaller>
where
    X: Value<Primal = ArrayBase<S, D>>,
    Y: Value<Primal = ArrayBase<S2, D>>,
    A: Real,
    S: Data<Elem = A>,
    S2: Data<Elem = A>,
    D: RemoveAxis,
{
    let (x, l) = (logits.primal(), labels.primal());
    let axis = Axis(x.ndim() - 1);
    let lsm = log_softmax(x, axis);
    -(l * &lsm).sum_axis(axis)
}

/// Pullback of [`softmax_cross_entropy`] for the logits: `ct (softmax(x) sum(l) - l)`.
pub fn softmax_cross_entropy_pb_logits<X, Y, A, S, S2, D>(
    logits: &X,
    labels: &Y,
    ct: Array<A, D::Smaller>,
) -> Array<A, D>
where
    X: Value<Primal = ArrayBase<S, D>>,
    Y: Value<Primal = ArrayBase<S2, D>>,
    A: Real,
    S: Data<Elem = A>,
    S2: Data<Elem = A>,
    D: RemoveAxis,
{
    let (x, l) = (logits.primal(), labels.primal());
    let axis = Axis(x.ndim() - 1);
    let mut g = softmax(x, axis);
    g.zip_mut_with(&l.sum_axis(axis).insert_axis(axis), |s, &t| *s *= t);
    g -= l;
    spread(&ct, g)
}

/// Pullback of [`softmax_cross_entropy`] for the labels: `-ct log_softmax(x)`.
pub fn softmax_cross_entropy_pb_labels<X, Y, A, S, S2, D>(
    logits: &X,
    _labels: &Y,
    ct: Array<A, D::Smaller>,
) -> Array<A, D>
where
    X: Value<Primal = ArrayBase<S, D>>,
    Y: Value<Primal = ArrayBase<S2, D>>,
    A: Real,
    S: Data<Elem = A>,
    S2: Data<Elem = A>,
    D: RemoveAxis,
{
    let x = logits.primal();
    let axis = Axis(x.ndim() - 1);
    spread(&ct, -log_softmax(x, axis))
}

/// The cross entropy of `softmax(logits)` against integer class `labels` (any
/// integer type; the logits' shape without the classes): `logsumexp(logits) -
/// logits[label]`, as optax's `softmax_cross_entropy_with_integer_labels`: a
/// negative label counts from the last class, a label out of range gives NaN.
///
/// # Panics
/// When the labels' shape is not the logits' without their last axis.
pub fn softmax_cross_entropy_with_integer_labels<X, A, S, D, I, S2>(
    logits: &X,
    labels: &ArrayBase<S2, D::Smaller>,
) -> Array<A, D::Smaller>
where
    X: Value<Primal = ArrayBase<S, D>>,
    A: Real,
    S: Data<Elem = A>,
    D: RemoveAxis,
    I: crate::rules::gather::Id,
    S2: Data<Elem = I>,
{
    let x = logits.primal();
    let axis = Axis(x.ndim() - 1);
    let classes = x.len_of(axis);
    let mut out = logsumexp(x, axis);
    ndarray::Zip::from(&mut out)
        .and(x.lanes(axis))
        .and(labels)
        .for_each(|o, lane, l| match l.index_in(classes) {
            Some(c) => *o -= lane[c],
            None => *o = A::nan(),
        });
    out
}

/// The one-hot of integer `labels` among the logits' classes (their last axis), NaN
/// across a lane whose label is out of range (where the loss is NaN): forward mode
/// writes [`softmax_cross_entropy_with_integer_labels`]'s tangent as
/// `-sum(one_hot * log_softmax_tangent(..))`, a constant times rules.
///
/// ```
/// use adjoint::rules::nn::one_hot_like;
/// use ndarray::array;
///
/// let logits = array![[0.1f64, 0.2, 0.3], [1.0, 2.0, 3.0]];
/// let one_hot = one_hot_like(&logits, &array![2i64, 7]);
/// assert_eq!(one_hot.row(0), array![0.0, 0.0, 1.0]);
/// assert!(one_hot.row(1).iter().all(|v: &f64| v.is_nan())); // 7 is out of range
/// ```
///
/// # Panics
/// When the labels' shape is not the logits' without their last axis.
pub fn one_hot_like<X, A, S, D, I, S2>(
    logits: &X,
    labels: &ArrayBase<S2, D::Smaller>,
) -> Array<A, D>
where
    X: Value<Primal = ArrayBase<S, D>>,
    A: Real,
    S: Data<Elem = A>,
    D: RemoveAxis,
    I: crate::rules::gather::Id,
    S2: Data<Elem = I>,
{
    let x = logits.primal();
    let axis = Axis(x.ndim() - 1);
    let classes = x.len_of(axis);
    let mut out = Array::zeros(x.raw_dim());
    ndarray::Zip::from(out.lanes_mut(axis))
        .and(labels)
        .for_each(|mut lane, l| match l.index_in(classes) {
            Some(c) => lane[c] = A::one(),
            None => lane.fill(A::nan()),
        });
    out
}

/// The last axis of `x` (the classes of the fused cross entropies).
#[doc(hidden)]
pub fn last_axis<X: Value<Primal = ArrayBase<S, D>>, S: Data, D: Dimension>(x: &X) -> Axis {
    Axis(x.primal().ndim().saturating_sub(1))
}

/// Pullback of [`softmax_cross_entropy_with_integer_labels`] for the logits:
/// `ct (softmax(x) - one_hot(label))` (a label out of range contributes only the
/// softmax, as optax's gradient does).
pub fn softmax_cross_entropy_with_integer_labels_pb<X, A, S, D, I, S2>(
    logits: &X,
    labels: &ArrayBase<S2, D::Smaller>,
    ct: Array<A, D::Smaller>,
) -> Array<A, D>
where
    X: Value<Primal = ArrayBase<S, D>>,
    A: Real,
    S: Data<Elem = A>,
    D: RemoveAxis,
    I: crate::rules::gather::Id,
    S2: Data<Elem = I>,
{
    let x = logits.primal();
    let axis = Axis(x.ndim() - 1);
    let classes = x.len_of(axis);
    let mut g = softmax(x, axis);
    ndarray::Zip::from(g.lanes_mut(axis))
        .and(labels)
        .for_each(|mut lane, l| {
            if let Some(c) = l.index_in(classes) {
                lane[c] -= A::one();
            }
        });
    spread(&ct, g)
}
