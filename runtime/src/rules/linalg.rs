//! Linear algebra: `dot` between 1-D and 2-D arrays in every combination, and the
//! transpose. Matrix-matrix products run on [`matmul`].

use crate::value::{Accumulate, ArrayShape, Real, Value};
use ndarray::{
    Array, Array1, Array2, ArrayBase, ArrayView, Axis, CowArray, Data, DataMut, Dimension, Ix1, Ix2,
};
use std::any::TypeId;

/// The matrix product `a · b` of two 2-D arrays of any strides (transposed views
/// included), what `a.dot(b)` computes.
///
/// For `f32` and `f64` it runs on the [`gemm`](https://docs.rs/gemm) crate's kernels
/// (AVX-512 or AVX2+FMA on x86-64, chosen at run time; NEON on aarch64), on one
/// thread: 1.15-1.4x faster than ndarray's `dot` on this project's workloads, from
/// 1x32x32 to 784x128x256 (`BENCHMARKS.md`). The sums are accumulated in another
/// order than `dot`'s, so the last bits can differ. Every rule for a matrix-matrix
/// `dot` and its pullbacks calls it; hand-written code can too.
///
/// # Panics
///
/// As `a.dot(b)`, when the inner dimensions differ.
///
/// ```
/// use adjoint::rules::linalg::matmul;
/// use ndarray::array;
///
/// let a = array![[1.0, 2.0], [3.0, 4.0]];
/// let b = array![[5.0], [6.0]];
/// assert_eq!(matmul(&a, &b), a.dot(&b));
/// assert_eq!(matmul(&a.t(), &b), array![[23.0], [34.0]]);
/// ```
pub fn matmul<A: Real, S: Data<Elem = A>, S2: Data<Elem = A>>(
    a: &ArrayBase<S, Ix2>,
    b: &ArrayBase<S2, Ix2>,
) -> Array2<A> {
    let mut c = Array2::<A>::zeros((a.nrows(), b.ncols()));
    if !gemm_into(&mut c, a, b, false) {
        // ndarray's message for mismatched shapes, and its answer for empty ones.
        return a.dot(b);
    }
    c
}

/// `c += a · b` (see [`matmul`]), accumulated in the product's kernel rather than
/// in a separate pass over a fresh result: how a matrix product's pullback adds into
/// an adjoint that already exists (a weight shared by the steps of a loop).
///
/// # Panics
///
/// As `c += &a.dot(b)`, when the shapes do not fit.
pub fn matmul_into<A: Real, S: Data<Elem = A>, S2: Data<Elem = A>, S3: DataMut<Elem = A>>(
    c: &mut ArrayBase<S3, Ix2>,
    a: &ArrayBase<S, Ix2>,
    b: &ArrayBase<S2, Ix2>,
) {
    if !gemm_into(c, a, b, true) {
        *c += &a.dot(b);
    }
}

/// `c = a · b`, or `c += a · b` when `accumulate`, by the `gemm` crate; `false` (and
/// `c` untouched) when it does not apply: another element type, shapes that do not
/// fit, or an empty operand.
fn gemm_into<A: Real, S: Data<Elem = A>, S2: Data<Elem = A>, S3: DataMut<Elem = A>>(
    c: &mut ArrayBase<S3, Ix2>,
    a: &ArrayBase<S, Ix2>,
    b: &ArrayBase<S2, Ix2>,
    accumulate: bool,
) -> bool {
    let ((m, k), (k2, n)) = (a.dim(), b.dim());
    let supported =
        TypeId::of::<A>() == TypeId::of::<f64>() || TypeId::of::<A>() == TypeId::of::<f32>();
    if !supported || k != k2 || c.dim() != (m, n) || m == 0 || n == 0 || k == 0 {
        return false;
    }
    let (a_rs, a_cs) = (a.strides()[0], a.strides()[1]);
    let (b_rs, b_cs) = (b.strides()[0], b.strides()[1]);
    let (c_rs, c_cs) = (c.strides()[0], c.strides()[1]);
    let dst = c.as_mut_ptr();
    // SAFETY: `A` is `f32` or `f64` (checked above), the types `gemm` accepts. With
    // `m, n, k >= 1`, each pointer is the element `[0, 0]` of a live array whose
    // shape is `m x k`, `k x n` and `m x n` (checked above), and `ptr + i *
    // row_stride + j * col_stride` (strides in elements, as gemm takes them) is that
    // array's element `[i, j]`: gemm reads `a` and `b` and reads and writes `c` only
    // there. `c` is borrowed mutably while `a` and `b` are borrowed immutably, so it
    // aliases neither. It computes `c = alpha * c + beta * a * b` with `alpha = 1`,
    // and reads `c` only when `read_dst` (`accumulate`) is set.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            c_cs,
            c_rs,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            A::one(),
            A::one(),
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    true
}

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
    /// `acc += ` the cotangent of `self`.
    #[inline]
    fn dot_pb_lhs_into(&self, rhs: &Rhs, ct: &Self::Output, acc: &mut Self::LhsCot)
    where
        Self::LhsCot: Accumulate,
    {
        acc.accumulate(self.dot_pb_lhs(rhs, ct));
    }
    /// `acc += ` the cotangent of `rhs`.
    #[inline]
    fn dot_pb_rhs_into(&self, rhs: &Rhs, ct: &Self::Output, acc: &mut Self::RhsCot)
    where
        Self::RhsCot: Accumulate,
    {
        acc.accumulate(self.dot_pb_rhs(rhs, ct));
    }
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
        matmul(self, r)
    }
    #[inline]
    fn dot_pb_lhs(&self, r: &ArrayBase<S2, Ix2>, ct: &Array2<A>) -> Array2<A> {
        matmul(ct, &r.t())
    }
    #[inline]
    fn dot_pb_rhs(&self, _r: &ArrayBase<S2, Ix2>, ct: &Array2<A>) -> Array2<A> {
        matmul(&self.t(), ct)
    }
    #[inline]
    fn dot_pb_lhs_into(&self, r: &ArrayBase<S2, Ix2>, ct: &Array2<A>, acc: &mut Array2<A>) {
        matmul_into(acc, ct, &r.t());
    }
    #[inline]
    fn dot_pb_rhs_into(&self, _r: &ArrayBase<S2, Ix2>, ct: &Array2<A>, acc: &mut Array2<A>) {
        matmul_into(acc, &self.t(), ct);
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

/// Pullback of [`dot`] for the left operand, added into its adjoint.
#[inline]
pub fn dot_pb_lhs_into<X: Value, Y: Value>(
    acc: &mut DotLhsCot<X, Y>,
    x: &X,
    y: &Y,
    ct: &DotOut<X, Y>,
) where
    X::Primal: DotRule<Y::Primal>,
    DotLhsCot<X, Y>: Accumulate,
{
    x.primal().dot_pb_lhs_into(y.primal(), ct, acc)
}

/// Pullback of [`dot`] for the right operand, added into its adjoint.
#[inline]
pub fn dot_pb_rhs_into<X: Value, Y: Value>(
    acc: &mut DotRhsCot<X, Y>,
    x: &X,
    y: &Y,
    ct: &DotOut<X, Y>,
) where
    X::Primal: DotRule<Y::Primal>,
    DotRhsCot<X, Y>: Accumulate,
{
    x.primal().dot_pb_rhs_into(y.primal(), ct, acc)
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

/// `x` as the matrix `(positions, last axis)`, borrowed when its layout allows.
///
/// # Panics
/// For a 0-dimensional `x`, which has no last axis.
fn rows_of<A: Real, S: Data<Elem = A>, D: Dimension>(x: &ArrayBase<S, D>) -> CowArray<'_, A, Ix2> {
    let n = *x
        .shape()
        .last()
        .expect("dot_last: a 0-dimensional array has no last axis");
    let rows = x
        .len()
        .checked_div(n)
        .unwrap_or_else(|| x.shape()[..x.ndim() - 1].iter().product());
    x.as_standard_layout()
        .into_shape_with_order((rows, n))
        .unwrap_or_else(|_| unreachable!("adjoint: a standard-layout array reshapes"))
}

/// `x · w` over `x`'s last axis: `(.., n) · (n, m) -> (.., m)`, numpy's `x @ w`
/// for a 2-D `w`, what Flax's `Dense` computes (`lax.dot_general` contracting the
/// input's last axis with the kernel's first) on inputs of any rank.
///
/// # Panics
/// When `x`'s last axis is not `w`'s first, or `x` is 0-dimensional.
///
/// ```
/// use adjoint::rules::linalg::dot_last;
/// let x = ndarray::Array3::<f64>::ones((2, 3, 4));
/// let w = ndarray::Array2::<f64>::ones((4, 5));
/// assert_eq!(dot_last(&x, &w), ndarray::Array3::from_elem((2, 3, 5), 4.0));
/// ```
pub fn dot_last<X, W, A, S, D, S2>(x: &X, w: &W) -> Array<A, D>
where
    X: Value<Primal = ArrayBase<S, D>>,
    W: Value<Primal = ArrayBase<S2, Ix2>>,
    A: Real,
    S: Data<Elem = A>,
    S2: Data<Elem = A>,
    D: Dimension,
{
    let (x, w) = (x.primal(), w.primal());
    if x.shape().last() != Some(&w.nrows()) && crate::scope::failed() {
        // Inside an apply that has already failed: zeros, not a panic.
        return crate::rules::conv::zeros_with_last(x.raw_dim(), w.ncols());
    }
    times_last(x, w)
}

/// The shape of [`dot_last`]`(x, w)`, without computing it: `x`'s, its last axis
/// `w`'s columns.
///
/// ```
/// use adjoint::__private::shape_of;
/// use adjoint::rules::linalg::{dot_last, dot_last_shape};
/// let (x, w) = (ndarray::Array3::<f64>::ones((2, 3, 4)), ndarray::Array2::<f64>::ones((4, 5)));
/// assert_eq!(dot_last_shape(&x, &w), shape_of(&dot_last(&x, &w)));
/// ```
pub fn dot_last_shape<X, W, A, S, D, S2>(x: &X, w: &W) -> ArrayShape<A, D>
where
    X: Value<Primal = ArrayBase<S, D>>,
    W: Value<Primal = ArrayBase<S2, Ix2>>,
    A: Real,
    S: Data<Elem = A>,
    S2: Data<Elem = A>,
    D: Dimension,
{
    ArrayShape::new(crate::rules::conv::with_last(
        x.primal().raw_dim(),
        w.primal().ncols(),
    ))
}

/// Pullback of [`dot_last`] for `x`: `ct · wᵀ` (`x` itself is not read).
pub fn dot_last_pb_x<W, A, D, S2>(w: &W, ct: Array<A, D>) -> Array<A, D>
where
    W: Value<Primal = ArrayBase<S2, Ix2>>,
    A: Real,
    S2: Data<Elem = A>,
    D: Dimension,
{
    times_last(&ct, &w.primal().t())
}

/// Pullback of [`dot_last`] for `w`: `xᵀ · ct`, every leading axis summed.
pub fn dot_last_pb_w<X, W, A, S, D, S2>(x: &X, _w: &W, ct: Array<A, D>) -> Array<A, Ix2>
where
    X: Value<Primal = ArrayBase<S, D>>,
    W: Value<Primal = ArrayBase<S2, Ix2>>,
    A: Real,
    S: Data<Elem = A>,
    S2: Data<Elem = A>,
    D: Dimension,
{
    xt_times(x.primal(), &ct)
}

/// Pullback of [`dot_last`] for both operands, from one cotangent (no copy of it).
///
/// ```
/// use adjoint::rules::linalg::dot_last_pb_both;
/// let (x, w) = (ndarray::array![[1.0, 2.0]], ndarray::array![[3.0], [4.0]]);
/// let (dx, dw) = dot_last_pb_both(&x, &w, ndarray::array![[1.0]]);
/// assert_eq!((dx, dw), (ndarray::array![[3.0, 4.0]], ndarray::array![[1.0], [2.0]]));
/// ```
#[allow(clippy::type_complexity)]
pub fn dot_last_pb_both<X, W, A, S, D, S2>(
    x: &X,
    w: &W,
    ct: Array<A, D>,
) -> (Array<A, D>, Array<A, Ix2>)
where
    X: Value<Primal = ArrayBase<S, D>>,
    W: Value<Primal = ArrayBase<S2, Ix2>>,
    A: Real,
    S: Data<Elem = A>,
    S2: Data<Elem = A>,
    D: Dimension,
{
    let dw = xt_times(x.primal(), &ct);
    (times_last(&ct, &w.primal().t()), dw)
}

/// [`dot_last_pb_x`] added into `x`'s adjoint, in the product's kernel.
///
/// ```
/// use adjoint::rules::linalg::dot_last_pb_x_into;
/// let w = ndarray::array![[3.0], [4.0]];
/// let mut acc = ndarray::array![[1.0, 1.0]];
/// dot_last_pb_x_into(&mut acc, &w, &ndarray::array![[2.0]]);
/// assert_eq!(acc, ndarray::array![[7.0, 9.0]]);
/// ```
pub fn dot_last_pb_x_into<W, A, D, S2>(acc: &mut Array<A, D>, w: &W, ct: &Array<A, D>)
where
    W: Value<Primal = ArrayBase<S2, Ix2>>,
    A: Real,
    S2: Data<Elem = A>,
    D: Dimension,
{
    let (w, ct_rows) = (w.primal(), rows_of(ct));
    let (rows, n) = (ct_rows.nrows(), w.nrows());
    // `acc` as rows when its layout allows (it has `x`'s shape, `(.., n)`).
    if acc.shape().last() == Some(&n)
        && let Ok(mut acc) = acc.view_mut().into_shape_with_order((rows, n))
    {
        matmul_into(&mut acc, &ct_rows, &w.t());
        return;
    }
    *acc += &times_last(ct, &w.t());
}

/// [`dot_last_pb_w`] added into `w`'s adjoint, in the product's kernel.
///
/// ```
/// use adjoint::rules::linalg::dot_last_pb_w_into;
/// let (x, w) = (ndarray::array![[1.0, 2.0]], ndarray::array![[3.0], [4.0]]);
/// let mut acc = ndarray::array![[1.0], [1.0]];
/// dot_last_pb_w_into(&mut acc, &x, &w, &ndarray::array![[2.0]]);
/// assert_eq!(acc, ndarray::array![[3.0], [5.0]]);
/// ```
pub fn dot_last_pb_w_into<X, W, A, S, D, S2>(acc: &mut Array2<A>, x: &X, _w: &W, ct: &Array<A, D>)
where
    X: Value<Primal = ArrayBase<S, D>>,
    W: Value<Primal = ArrayBase<S2, Ix2>>,
    A: Real,
    S: Data<Elem = A>,
    S2: Data<Elem = A>,
    D: Dimension,
{
    matmul_into(acc, &rows_of(x.primal()).t(), &rows_of(ct))
}

/// `xᵀ · ct` over the rows of both (every leading axis summed): the cotangent of
/// `dot_last`'s matrix.
fn xt_times<A: Real, S: Data<Elem = A>, D: Dimension>(
    x: &ArrayBase<S, D>,
    ct: &Array<A, D>,
) -> Array2<A> {
    matmul(&rows_of(x).t(), &rows_of(ct))
}

/// `x · w` over `x`'s last axis, the leading axes kept.
fn times_last<A: Real, S: Data<Elem = A>, S2: Data<Elem = A>, D: Dimension>(
    x: &ArrayBase<S, D>,
    w: &ArrayBase<S2, Ix2>,
) -> Array<A, D> {
    let y = matmul(&rows_of(x), w);
    y.into_shape_with_order(crate::rules::conv::with_last(x.raw_dim(), w.ncols()))
        .unwrap_or_else(|_| unreachable!("adjoint: a product over the last axis keeps the others"))
}

/// The matrix product over the last two axes, batched over the others, which must
/// agree: `(.., m, k) · (.., k, n) -> (.., m, n)`, numpy's `a @ b` for equal batch
/// axes (what attention computes per batch and head). Operands of any strides
/// (permuted views) run on [`matmul`] without copies.
///
/// # Panics
/// When the batch axes differ, the inner sizes differ, or an operand has fewer than
/// two axes.
///
/// ```
/// use adjoint::rules::linalg::batch_matmul;
/// let a = ndarray::Array3::<f64>::ones((2, 3, 4));
/// let b = ndarray::Array3::<f64>::ones((2, 4, 5));
/// assert_eq!(batch_matmul(&a, &b), ndarray::Array3::from_elem((2, 3, 5), 4.0));
/// ```
pub fn batch_matmul<X, Y, A, S, S2, D>(a: &X, b: &Y) -> Array<A, D>
where
    X: Value<Primal = ArrayBase<S, D>>,
    Y: Value<Primal = ArrayBase<S2, D>>,
    A: Real,
    S: Data<Elem = A>,
    S2: Data<Elem = A>,
    D: Dimension,
{
    batched(a.primal().view(), b.primal().view())
}

/// `a · b` batched (see [`batch_matmul`]), on views.
fn batched<A: Real, D: Dimension>(a: ArrayView<'_, A, D>, b: ArrayView<'_, A, D>) -> Array<A, D> {
    let n = a.ndim();
    let fits = n >= 2
        && b.ndim() == n
        && a.shape()[..n - 2] == b.shape()[..n - 2]
        && a.shape()[n - 1] == b.shape()[n - 2];
    let mut dim = a.raw_dim();
    if n >= 2 {
        dim[n - 1] = b.shape()[b.ndim() - 1];
    }
    if !fits {
        if crate::scope::failed() {
            return Array::zeros(dim);
        }
        panic!(
            "batch_matmul: shapes {:?} and {:?} do not fit (.., m, k) · (.., k, n)",
            a.shape(),
            b.shape()
        );
    }
    let mut out = Array::zeros(dim);
    fill(a.into_dyn(), b.into_dyn(), out.view_mut().into_dyn());
    out
}

/// Writes the batched product of `a` and `b` into `out`.
fn fill<A: Real>(
    a: ArrayView<'_, A, ndarray::IxDyn>,
    b: ArrayView<'_, A, ndarray::IxDyn>,
    mut out: ndarray::ArrayViewMut<'_, A, ndarray::IxDyn>,
) {
    if a.ndim() == 2 {
        let (a2, b2) = (
            a.into_dimensionality::<Ix2>()
                .unwrap_or_else(|_| unreachable!("2 axes")),
            b.into_dimensionality::<Ix2>()
                .unwrap_or_else(|_| unreachable!("2 axes")),
        );
        out.assign(&matmul(&a2, &b2));
        return;
    }
    for ((ai, bi), oi) in a.outer_iter().zip(b.outer_iter()).zip(out.outer_iter_mut()) {
        fill(ai, bi, oi);
    }
}

/// The last two axes swapped, a view.
fn swap_last<A, D: Dimension>(x: ArrayView<'_, A, D>) -> ArrayView<'_, A, D> {
    let n = x.ndim();
    let mut x = x;
    if n >= 2 {
        x.swap_axes(n - 1, n - 2);
    }
    x
}

/// Pullback of [`batch_matmul`] for `a`: `ct · bᵀ`, batched.
pub fn batch_matmul_pb_a<X, Y, A, S, S2, D>(_a: &X, b: &Y, ct: Array<A, D>) -> Array<A, D>
where
    X: Value<Primal = ArrayBase<S, D>>,
    Y: Value<Primal = ArrayBase<S2, D>>,
    A: Real,
    S: Data<Elem = A>,
    S2: Data<Elem = A>,
    D: Dimension,
{
    batched(ct.view(), swap_last(b.primal().view()))
}

/// Pullback of [`batch_matmul`] for `b`: `aᵀ · ct`, batched.
pub fn batch_matmul_pb_b<X, Y, A, S, S2, D>(a: &X, _b: &Y, ct: Array<A, D>) -> Array<A, D>
where
    X: Value<Primal = ArrayBase<S, D>>,
    Y: Value<Primal = ArrayBase<S2, D>>,
    A: Real,
    S: Data<Elem = A>,
    S2: Data<Elem = A>,
    D: Dimension,
{
    batched(swap_last(a.primal().view()), ct.view())
}

#[cfg(test)]
mod tests {
    use super::matmul;
    use ndarray::{Array2, ArrayView2, s};

    fn pattern(m: usize, n: usize, seed: usize) -> Array2<f64> {
        Array2::from_shape_fn((m, n), |(i, j)| {
            ((i * 7 + j * 13 + seed) % 23) as f64 / 11.0 - 1.0
        })
    }

    fn close(x: ArrayView2<f64>, y: ArrayView2<f64>, tol: f64) {
        assert_eq!(x.dim(), y.dim());
        for (a, b) in x.iter().zip(y) {
            assert!((a - b).abs() <= tol * (1.0 + b.abs()), "{a} against {b}");
        }
    }

    #[test]
    fn matmul_agrees_with_dot_for_any_layout_and_size() {
        // Shapes around the kernels' tile sizes, operands contiguous, transposed,
        // sliced with a step and reversed.
        for &(m, k, n) in &[
            (1, 1, 1),
            (1, 7, 3),
            (5, 1, 9),
            (17, 33, 9),
            (64, 48, 31),
            (130, 70, 260),
        ] {
            let a = pattern(m, k, 1);
            let b = pattern(k, n, 2);
            let want = a.dot(&b);
            close(matmul(&a, &b).view(), want.view(), 1e-13);
            let at = a.t().to_owned();
            close(matmul(&at.t(), &b).view(), want.view(), 1e-13);
            let wide = pattern(k, 2 * n, 3);
            let stepped = wide.slice(s![.., ..;2]);
            close(matmul(&a, &stepped).view(), a.dot(&stepped).view(), 1e-13);
            let reversed = b.slice(s![..;-1, ..;-1]);
            close(matmul(&a, &reversed).view(), a.dot(&reversed).view(), 1e-13);
            let a32 = a.mapv(|v| v as f32);
            let b32 = b.mapv(|v| v as f32);
            let got32 = matmul(&a32, &b32).mapv(f64::from);
            close(got32.view(), want.view(), 1e-5);
        }
    }

    #[test]
    fn matmul_into_adds_to_what_is_there() {
        for &(m, k, n) in &[(1, 1, 1), (16, 64, 64), (33, 7, 18)] {
            let a = pattern(m, k, 4);
            let b = pattern(k, n, 5);
            let start = pattern(m, n, 6);
            let mut c = start.clone();
            super::matmul_into(&mut c, &a, &b);
            close(c.view(), (&start + &a.dot(&b)).view(), 1e-13);
            // A transposed destination (column-major memory) too.
            let mut ct = start.t().to_owned().reversed_axes();
            super::matmul_into(&mut ct, &a, &b);
            close(ct.view(), (&start + &a.dot(&b)).view(), 1e-13);
        }
    }

    #[test]
    fn matmul_of_empty_operands_is_zeros() {
        let a = Array2::<f64>::zeros((3, 0));
        let b = Array2::<f64>::zeros((0, 2));
        assert_eq!(matmul(&a, &b), Array2::<f64>::zeros((3, 2)));
        assert_eq!(matmul(&b.t(), &a.t()).dim(), (2, 3));
    }

    #[test]
    fn dot_last_pullbacks_agree_joint_separate_and_in_place() {
        use super::{
            dot_last_pb_both, dot_last_pb_w, dot_last_pb_w_into, dot_last_pb_x, dot_last_pb_x_into,
        };
        // A rank-3 input (rows over two leading axes), and a transposed adjoint that
        // the in-place form cannot view as rows.
        let x = pattern(6, 4, 7).into_shape_with_order((2, 3, 4)).unwrap();
        let w = pattern(4, 5, 8);
        let ct = pattern(6, 5, 9).into_shape_with_order((2, 3, 5)).unwrap();
        let (dx, dw) = (
            dot_last_pb_x(&w, ct.clone()),
            dot_last_pb_w(&x, &w, ct.clone()),
        );
        let x2 = x.to_shape((6, 4)).unwrap();
        let ct2 = ct.to_shape((6, 5)).unwrap();
        close(
            dx.to_shape((6, 4)).unwrap().view(),
            ct2.dot(&w.t()).view(),
            1e-13,
        );
        close(dw.view(), x2.t().dot(&ct2).view(), 1e-13);
        let (jx, jw) = dot_last_pb_both(&x, &w, ct.clone());
        assert_eq!((jx, jw), (dx.clone(), dw.clone()));
        let start_x = pattern(6, 4, 10).into_shape_with_order((2, 3, 4)).unwrap();
        let mut acc = start_x.clone();
        dot_last_pb_x_into(&mut acc, &w, &ct);
        let want = &start_x + &dx;
        close(
            acc.to_shape((6, 4)).unwrap().view(),
            want.to_shape((6, 4)).unwrap().view(),
            1e-13,
        );
        let mut permuted = start_x
            .clone()
            .permuted_axes([1, 0, 2])
            .as_standard_layout()
            .to_owned();
        permuted = permuted.permuted_axes([1, 0, 2]);
        dot_last_pb_x_into(&mut permuted, &w, &ct);
        assert!(
            permuted
                .iter()
                .zip(&want)
                .all(|(a, b)| (a - b).abs() < 1e-13)
        );
        let start_w = pattern(4, 5, 11);
        let mut acc_w = start_w.clone();
        dot_last_pb_w_into(&mut acc_w, &x, &w, &ct);
        close(acc_w.view(), (&start_w + &dw).view(), 1e-13);
    }
}
