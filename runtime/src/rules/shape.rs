//! Shape and indexing: `insert_axis`, reshapes, `slice`, `row`, `column`,
//! `index_axis`, element reads, `concatenate`, `stack`, `array!` of scalars, and the
//! ownership and layout conversions (`to_owned`, `view`, `to_shared`, ..).
//!
//! Reads return views, which the reverse sweep recomputes instead of saving. Their
//! pullbacks add the cotangent into the source's adjoint in place (`*_pb` taking
//! `&mut`), so reading many elements in a loop costs one adjoint, not one per read.

use crate::value::{ArrayShape, Own, Real, Value};
use ndarray::{
    ArcArray, Array, ArrayBase, ArrayView, Axis, CowArray, Data, Dimension, IntoDimension, NdIndex,
    RemoveAxis, SliceArg,
};

/// Moves `a` into the dimension type `D`; the shapes agree by construction.
fn into_dim<A, E: Dimension, D: Dimension>(a: Array<A, E>) -> Array<A, D> {
    a.into_dimensionality::<D>()
        .expect("adjoint: a pullback restores its operand's rank by construction")
}

/// `x.insert_axis(axis)`, with ndarray's types: an owned array for an owned one
/// (copied here since `x` is borrowed), a view for a view (see [`Restride`]).
#[inline]
pub fn insert_axis<'a, X: Value>(x: &'a X, axis: Axis) -> Restrided<'a, X, Larger<'a, X>>
where
    X::Primal: Restride<'a>,
{
    x.primal().restride(|v| v.insert_axis(axis))
}

/// `x.reversed_axes()`, with ndarray's types (see [`insert_axis`]).
#[inline]
pub fn reversed_axes<'a, X: Value>(x: &'a X) -> Restrided<'a, X, <X::Primal as Restride<'a>>::Dim>
where
    X::Primal: Restride<'a>,
{
    x.primal().restride(|v| v.reversed_axes())
}

/// The array [`Restride`] gives for `X` with dimension `E`.
pub type Restrided<'a, X, E> = <<X as Value>::Primal as Restride<'a>>::Out<E>;
type Larger<'a, X> = <<<X as Value>::Primal as Restride<'a>>::Dim as Dimension>::Larger;

/// How a new view of the same elements (`insert_axis`, `permuted_axes`,
/// `reversed_axes`: ndarray's methods that take the array by value) applies to each
/// kind of array: an owned array gives an owned one, copied since the rule borrows
/// it; a shared one shares; a view gives a view, free.
pub trait Restride<'a> {
    /// The element type.
    type Elem: 'a;
    /// The dimension.
    type Dim: Dimension;
    /// The result's container for dimension `E`.
    type Out<E: Dimension>
    where
        Self: 'a;
    /// The array `f` makes of a view of `self`, in `self`'s kind of container.
    fn restride<E: Dimension>(
        &'a self,
        f: impl FnOnce(ArrayView<'a, Self::Elem, Self::Dim>) -> ArrayView<'a, Self::Elem, E>,
    ) -> Self::Out<E>;
}

impl<'a, A: Clone + 'a, D: Dimension> Restride<'a> for Array<A, D> {
    type Elem = A;
    type Dim = D;
    type Out<E: Dimension>
        = Array<A, E>
    where
        Self: 'a;
    fn restride<E: Dimension>(
        &'a self,
        f: impl FnOnce(ArrayView<'a, A, D>) -> ArrayView<'a, A, E>,
    ) -> Array<A, E> {
        f(self.view()).to_owned()
    }
}

impl<'a, A: Clone + 'a, D: Dimension> Restride<'a> for ArcArray<A, D> {
    type Elem = A;
    type Dim = D;
    type Out<E: Dimension>
        = ArcArray<A, E>
    where
        Self: 'a;
    fn restride<E: Dimension>(
        &'a self,
        f: impl FnOnce(ArrayView<'a, A, D>) -> ArrayView<'a, A, E>,
    ) -> ArcArray<A, E> {
        f(self.view()).to_shared()
    }
}

impl<'a, 'b, A: 'a, D: Dimension> Restride<'a> for ArrayView<'b, A, D> {
    type Elem = A;
    type Dim = D;
    type Out<E: Dimension>
        = ArrayView<'a, A, E>
    where
        Self: 'a;
    fn restride<E: Dimension>(
        &'a self,
        f: impl FnOnce(ArrayView<'a, A, D>) -> ArrayView<'a, A, E>,
    ) -> ArrayView<'a, A, E> {
        f(self.view())
    }
}

impl<'a, 'b, A: Clone + 'a, D: Dimension> Restride<'a> for CowArray<'b, A, D> {
    type Elem = A;
    type Dim = D;
    type Out<E: Dimension>
        = ArrayView<'a, A, E>
    where
        Self: 'a;
    fn restride<E: Dimension>(
        &'a self,
        f: impl FnOnce(ArrayView<'a, A, D>) -> ArrayView<'a, A, E>,
    ) -> ArrayView<'a, A, E> {
        f(self.view())
    }
}

/// Pullback of [`insert_axis`] (given the operand's shape).
#[inline]
pub fn insert_axis_pb<A: Real, D: Dimension>(
    _x: &ArrayShape<A, D>,
    axis: Axis,
    ct: Array<A, D::Larger>,
) -> Array<A, D> {
    into_dim(ct.into_dyn().remove_axis(axis))
}

/// `x.to_shape(shape).unwrap()` and `x.into_shape_with_order(shape).unwrap()`:
/// row-major reshape, a view when the layout allows.
///
/// # Panics
/// When the element counts differ, as `unwrap` on ndarray's error would.
#[inline]
pub fn reshape<
    'a,
    X: Value<Primal = ArrayBase<S, D>>,
    A: Real,
    S: Data<Elem = A> + 'a,
    D: Dimension + 'a,
    E: IntoDimension,
>(
    x: &'a X,
    shape: E,
) -> CowArray<'a, A, E::Dim> {
    match x.primal().to_shape(shape.into_dimension()) {
        Ok(y) => y,
        Err(e) => panic!("adjoint: reshape: {e}"),
    }
}

/// `x.into_shape_with_order(shape).unwrap()`: what ndarray gives for each kind of
/// array (an owned array for an owned one, a view for a view, a shared array for a
/// shared one), row-major, so that code has the types it has undifferentiated.
///
/// # Panics
/// When the element counts differ, or a view's layout does not allow the shape, as
/// `unwrap` on ndarray's error would.
#[inline]
pub fn into_shape<'a, X: Value, E: IntoDimension>(
    x: &'a X,
    shape: E,
) -> <X::Primal as IntoShape<'a, E::Dim>>::Output
where
    X::Primal: IntoShape<'a, E::Dim>,
{
    x.primal().reshaped(shape.into_dimension())
}

/// How `into_shape_with_order` reshapes each kind of array (see [`into_shape`]).
pub trait IntoShape<'a, E: Dimension> {
    /// The reshaped array.
    type Output;
    /// `self` with shape `dim`.
    fn reshaped(&'a self, dim: E) -> Self::Output;
}

fn or_panic<T>(r: Result<T, ndarray::ShapeError>) -> T {
    r.unwrap_or_else(|e| panic!("adjoint: into_shape_with_order: {e}"))
}

impl<'a, A: Clone + 'a, D: Dimension, E: Dimension> IntoShape<'a, E> for Array<A, D> {
    type Output = Array<A, E>;
    fn reshaped(&'a self, dim: E) -> Array<A, E> {
        or_panic(self.to_shape(dim)).into_owned()
    }
}

impl<'a, A: Clone + 'a, D: Dimension, E: Dimension> IntoShape<'a, E> for ArcArray<A, D> {
    type Output = ArcArray<A, E>;
    fn reshaped(&'a self, dim: E) -> ArcArray<A, E> {
        or_panic(self.to_shape(dim)).into_owned().into_shared()
    }
}

impl<'a, 'b, A: 'a, D: Dimension, E: Dimension> IntoShape<'a, E> for ArrayView<'b, A, D> {
    type Output = ArrayView<'a, A, E>;
    fn reshaped(&'a self, dim: E) -> ArrayView<'a, A, E> {
        or_panic(self.view().into_shape_with_order(dim))
    }
}

impl<'a, 'b, A: Clone + 'a, D: Dimension, E: Dimension> IntoShape<'a, E> for CowArray<'b, A, D> {
    type Output = CowArray<'a, A, E>;
    fn reshaped(&'a self, dim: E) -> CowArray<'a, A, E> {
        or_panic(self.to_shape(dim))
    }
}

/// `x.permuted_axes(axes)`: axis `i` of the result is axis `axes[i]` of `x`, with
/// ndarray's types (an owned array for an owned one, copied here since `x` is
/// borrowed; a view for a view, free).
///
/// # Panics
/// When `axes` is not a permutation of `x`'s axes, as ndarray does.
#[inline]
pub fn permuted_axes<'a, X: Value, T: IntoDimension + Clone>(
    x: &'a X,
    axes: &T,
) -> Restrided<'a, X, <X::Primal as Restride<'a>>::Dim>
where
    X::Primal: Restride<'a, Dim = T::Dim>,
{
    x.primal()
        .restride(|v| v.permuted_axes(axes.clone().into_dimension()))
}

/// Pullback of [`permuted_axes`]: the cotangent permuted back.
#[inline]
pub fn permuted_axes_pb<A: Real, D: Dimension, T: IntoDimension<Dim = D> + Clone>(
    axes: &T,
    ct: Array<A, D>,
) -> Array<A, D> {
    let axes = axes.clone().into_dimension();
    let mut inverse = axes.clone();
    for (i, &a) in axes.slice().iter().enumerate() {
        inverse[a] = i;
    }
    ct.permuted_axes(inverse)
}

/// Pullback of [`reshape`] (given the operand's shape): the cotangent reshaped back.
#[inline]
pub fn reshape_pb<A: Real, D: Dimension, E: Dimension>(
    x: &ArrayShape<A, D>,
    ct: Array<A, E>,
) -> Array<A, D> {
    let dim = x.0.clone();
    match ct.to_shape(dim.clone()) {
        Ok(y) => y.into_owned(),
        Err(_) => unreachable_sizes(),
    }
}

fn unreachable_sizes<T>() -> T {
    panic!("adjoint: a reshape's cotangent has its operand's size by construction")
}

/// `x.slice(info)`, a view.
#[inline]
pub fn slice<'a, X, A, S, D, I>(x: &'a X, info: &I) -> ArrayView<'a, A, I::OutDim>
where
    X: Value<Primal = ArrayBase<S, D>>,
    A: Real,
    S: Data<Elem = A> + 'a,
    D: Dimension + 'a,
    I: SliceArg<D>,
{
    x.primal().slice(info)
}

/// Pullback of [`slice()`]: adds `ct` into the sliced region of `acc`.
#[inline]
pub fn slice_pb<A: Real, D: Dimension, I: SliceArg<D>>(
    acc: &mut Array<A, D>,
    info: &I,
    ct: Array<A, I::OutDim>,
) {
    let mut region = acc.slice_mut(info);
    region += &ct;
}

/// `x.index_axis(axis, i)`, a view.
#[inline]
pub fn index_axis<
    'a,
    X: Value<Primal = ArrayBase<S, D>>,
    A: Real,
    S: Data<Elem = A> + 'a,
    D: RemoveAxis + 'a,
>(
    x: &'a X,
    axis: Axis,
    i: usize,
) -> ArrayView<'a, A, D::Smaller> {
    x.primal().index_axis(axis, i)
}

/// Pullback of [`index_axis`], [`row`] and [`column()`]: adds `ct` into that subview.
#[inline]
pub fn index_axis_pb<A: Real, D: RemoveAxis>(
    acc: &mut Array<A, D>,
    axis: Axis,
    i: usize,
    ct: Array<A, D::Smaller>,
) {
    let mut sub = acc.index_axis_mut(axis, i);
    sub += &ct;
}

/// `x.row(i)`, a view.
#[inline]
pub fn row<
    'a,
    X: Value<Primal = ArrayBase<S, D>>,
    A: Real,
    S: Data<Elem = A> + 'a,
    D: RemoveAxis + 'a,
>(
    x: &'a X,
    i: usize,
) -> ArrayView<'a, A, D::Smaller> {
    x.primal().index_axis(Axis(0), i)
}

/// `x.column(i)`, a view.
#[inline]
pub fn column<
    'a,
    X: Value<Primal = ArrayBase<S, D>>,
    A: Real,
    S: Data<Elem = A> + 'a,
    D: RemoveAxis + 'a,
>(
    x: &'a X,
    i: usize,
) -> ArrayView<'a, A, D::Smaller> {
    x.primal().index_axis(Axis(1), i)
}

/// Pullback of [`row`].
#[inline]
pub fn row_pb<A: Real, D: RemoveAxis>(acc: &mut Array<A, D>, i: usize, ct: Array<A, D::Smaller>) {
    index_axis_pb(acc, Axis(0), i, ct)
}

/// Pullback of [`column()`].
#[inline]
pub fn column_pb<A: Real, D: RemoveAxis>(
    acc: &mut Array<A, D>,
    i: usize,
    ct: Array<A, D::Smaller>,
) {
    index_axis_pb(acc, Axis(1), i, ct)
}

/// `x[i]`: one element.
#[inline(always)]
pub fn index<
    X: Value<Primal = ArrayBase<S, D>>,
    A: Real,
    S: Data<Elem = A>,
    D: Dimension,
    I: NdIndex<D>,
>(
    x: &X,
    i: I,
) -> A {
    x.primal()[i]
}

/// Pullback of [`index`]: adds `ct` to element `i` of `acc`.
#[inline(always)]
pub fn index_pb<A: Real, D: Dimension, I: NdIndex<D>>(acc: &mut Array<A, D>, i: I, ct: A) {
    acc[i] += ct;
}

/// `ndarray::concatenate(axis, &[..]).unwrap()`.
///
/// # Panics
/// When the shapes disagree off `axis`, as `unwrap` on ndarray's error would.
pub fn concatenate<
    X: Value<Primal = ArrayBase<S, D>>,
    A: Real,
    S: Data<Elem = A>,
    D: RemoveAxis,
    const N: usize,
>(
    axis: Axis,
    xs: [&X; N],
) -> Array<A, D> {
    let views = xs.map(|x| x.primal().view());
    match ndarray::concatenate(axis, &views) {
        Ok(y) => y,
        Err(e) => panic!("adjoint: concatenate: {e}"),
    }
}

/// Pullback of [`concatenate`]: the cotangent split back into the pieces.
pub fn concatenate_pb<
    X: Value<Primal = ArrayBase<S, D>>,
    A: Real,
    S: Data<Elem = A>,
    D: RemoveAxis,
    const N: usize,
>(
    axis: Axis,
    xs: [&X; N],
    ct: Array<A, D>,
) -> [Array<A, D>; N] {
    let mut start = 0;
    xs.map(|x| {
        let len = x.primal().len_of(axis);
        let piece = ct
            .slice_axis(axis, ndarray::Slice::from(start..start + len))
            .to_owned();
        start += len;
        piece
    })
}

/// `ndarray::stack(axis, &[..]).unwrap()`.
///
/// # Panics
/// When the shapes differ, as `unwrap` on ndarray's error would.
pub fn stack<
    X: Value<Primal = ArrayBase<S, D>>,
    A: Real,
    S: Data<Elem = A>,
    D: Dimension,
    const N: usize,
>(
    axis: Axis,
    xs: [&X; N],
) -> Array<A, D::Larger> {
    let views = xs.map(|x| x.primal().view());
    match ndarray::stack(axis, &views) {
        Ok(y) => y,
        Err(e) => panic!("adjoint: stack: {e}"),
    }
}

/// Pullback of [`stack`]: one slice of the cotangent per piece.
pub fn stack_pb<
    X: Value<Primal = ArrayBase<S, D>>,
    A: Real,
    S: Data<Elem = A>,
    D: Dimension,
    const N: usize,
>(
    axis: Axis,
    _xs: [&X; N],
    ct: Array<A, D::Larger>,
) -> [Array<A, D>; N] {
    let ct = ct.into_dyn();
    std::array::from_fn(|k| into_dim(ct.index_axis(axis, k).to_owned()))
}

/// `ndarray::array![a, b, ..]` (nested for more dimensions) of scalars: `shape` is
/// the nesting the macro read, the elements come in row-major order.
pub fn from_elems<X: Value<Primal = A>, A: Real, Sh: IntoDimension, const N: usize>(
    shape: Sh,
    xs: [&X; N],
) -> Array<A, Sh::Dim> {
    let values = xs.iter().map(|x| *x.primal()).collect();
    Array::from_shape_vec(shape, values)
        .expect("adjoint: array! has as many elements as its nesting, by construction")
}

/// Pullback of [`from_elems`]: each element's cotangent, in row-major order.
pub fn from_elems_pb<X: Value<Primal = A>, A: Real, D: Dimension, Sh, const N: usize>(
    _shape: Sh,
    _xs: [&X; N],
    ct: Array<A, D>,
) -> [A; N] {
    let mut values = ct.iter();
    std::array::from_fn(|_| *values.next().unwrap_or(&A::zero()))
}

// ----- ownership and layout: the value itself, in another container -----

/// `x.to_owned()`, `x.into_owned()`: an owned copy (an `Array`, or the scalar).
pub fn to_owned<X: Value>(x: &X) -> <X::Primal as Own>::Owned
where
    X::Primal: Own,
{
    x.primal().own()
}

/// `x.clone()`: a value of the same type (a view stays a view).
pub fn clone<X: Value>(x: &X) -> X::Primal
where
    X::Primal: Clone,
{
    x.primal().clone()
}

/// `x.view()`, `x.reborrow()`: a view.
#[inline]
pub fn view<
    'a,
    X: Value<Primal = ArrayBase<S, D>>,
    A: Real,
    S: Data<Elem = A> + 'a,
    D: Dimension + 'a,
>(
    x: &'a X,
) -> ArrayView<'a, A, D> {
    x.primal().view()
}

/// `x.as_standard_layout()`: a view if the layout is row-major already, else a copy.
#[inline]
pub fn as_standard_layout<
    'a,
    X: Value<Primal = ArrayBase<S, D>>,
    A: Real,
    S: Data<Elem = A> + 'a,
    D: Dimension + 'a,
>(
    x: &'a X,
) -> CowArray<'a, A, D> {
    x.primal().as_standard_layout()
}

/// `x.to_shared()`, `x.into_shared()`: a shared array.
pub fn to_shared<X: Value<Primal = ArrayBase<S, D>>, A: Real, S: Data<Elem = A>, D: Dimension>(
    x: &X,
) -> ArcArray<A, D> {
    x.primal().to_shared()
}

/// A value as an operand of `+ - * /`: a scalar by value, an array by reference
/// (what forward mode writes where it cannot tell which the value is).
pub trait Operand {
    /// `Self` for a scalar, `&Self` for an array.
    type Out<'a>
    where
        Self: 'a;
    /// The operand.
    fn operand(&self) -> Self::Out<'_>;
}

impl<A: Real> Operand for A {
    type Out<'a> = A;
    #[inline(always)]
    fn operand(&self) -> A {
        *self
    }
}

// Integers, which code lowered again (a module body's forward mode) may not know
// to be integers (`g * c` of counts taken apart from a tuple): by value.
macro_rules! integer_operand {
    ($($t:ty),*) => {$(
        impl Operand for $t {
            type Out<'a> = $t;
            #[inline(always)]
            fn operand(&self) -> $t {
                *self
            }
        }
    )*};
}

integer_operand!(usize, isize, u32, i32, u64, i64);

impl<A: Real, S: Data<Elem = A>, D: Dimension> Operand for ArrayBase<S, D> {
    type Out<'a>
        = &'a ArrayBase<S, D>
    where
        Self: 'a;
    #[inline(always)]
    fn operand(&self) -> &ArrayBase<S, D> {
        self
    }
}

/// `x` as an operand ([`Operand`]).
#[inline(always)]
pub fn operand<X: Value>(x: &X) -> <X::Primal as Operand>::Out<'_>
where
    X::Primal: Operand,
{
    x.primal().operand()
}

/// Pullback of the ownership and layout conversions: the cotangent, unchanged.
#[inline(always)]
pub fn identity_pb<C>(ct: C) -> C {
    ct
}

/// A copy of `x` of its own type (a reference stays a reference): what forward mode
/// passes as a tangent where the primal is passed by value.
#[inline(always)]
pub fn dup<T: Clone>(x: &T) -> T {
    x.clone()
}

/// The index of a tuple field, as a type: `At::<1>` names field `.1`.
#[derive(Clone, Copy, Debug, Default)]
pub struct At<const I: usize>;

/// Tuples whose field `I` a differentiated body reads (`t.1`, `let (a, b) = t;` of
/// a tuple it did not make: a parameter, a carry).
pub trait TupleField<const I: usize>: Value {
    /// The field's type.
    type Field: Value;
    /// The field.
    fn field(&self) -> &Self::Field;
    /// The tuple's cotangent from the field's: zero in every other field.
    fn field_cot(&self, ct: <Self::Field as Value>::Cot) -> Self::Cot;
}

impl<const I: usize, T: TupleField<I>> TupleField<I> for &T {
    type Field = T::Field;
    fn field(&self) -> &T::Field {
        (**self).field()
    }
    fn field_cot(&self, ct: <T::Field as Value>::Cot) -> T::Cot {
        (**self).field_cot(ct)
    }
}

macro_rules! tuple_field {
    ($i:tt => $f:ident in ($($t:ident $j:tt),*)) => {
        impl<$($t: Value),*> TupleField<$i> for ($($t,)*) {
            type Field = $f;
            #[inline]
            fn field(&self) -> &$f {
                &self.$i
            }
            #[inline]
            fn field_cot(&self, ct: <$f as Value>::Cot) -> Self::Cot {
                let mut z = self.zeros();
                z.$i = ct;
                z
            }
        }
    };
}

tuple_field!(0 => A in (A 0, B 1));
tuple_field!(1 => B in (A 0, B 1));
tuple_field!(0 => A in (A 0, B 1, C 2));
tuple_field!(1 => B in (A 0, B 1, C 2));
tuple_field!(2 => C in (A 0, B 1, C 2));
tuple_field!(0 => A in (A 0, B 1, C 2, D 3));
tuple_field!(1 => B in (A 0, B 1, C 2, D 3));
tuple_field!(2 => C in (A 0, B 1, C 2, D 3));
tuple_field!(3 => D in (A 0, B 1, C 2, D 3));

/// Field `I` of a tuple, by reference (see [`TupleField`]).
#[inline]
pub fn field<const I: usize, T: TupleField<I>>(t: &T, _: At<I>) -> &T::Field {
    t.field()
}

/// Pullback of [`field`]: the tuple's cotangent, zero but in field `I`.
#[inline]
pub fn field_pb<const I: usize, T: TupleField<I>>(
    t: &T,
    _: At<I>,
    ct: <T::Field as Value>::Cot,
) -> T::Cot {
    t.field_cot(ct)
}

/// `x` with its subview `i` along `axis` replaced by `y` (JAX's
/// `x.at[.., i].set(y)`): a new array. How a loop writes its outputs step by step
/// (`RNN`); the pullbacks need no values, so a loop saves nothing for it.
///
/// # Panics
/// When `i` is out of bounds or `y` does not have the subview's shape.
///
/// ```
/// use adjoint::rules::shape::put_index_axis;
/// use ndarray::{array, Axis};
/// let x = ndarray::Array2::<f64>::zeros((2, 3));
/// assert_eq!(put_index_axis(&x, &array![1.0, 2.0], Axis(1), 2), array![[0.0, 0.0, 1.0], [0.0, 0.0, 2.0]]);
/// ```
pub fn put_index_axis<X, Y, A, S, S2, D>(x: &X, y: &Y, axis: Axis, i: usize) -> Array<A, D>
where
    X: Value<Primal = ArrayBase<S, D>>,
    Y: Value<Primal = ArrayBase<S2, D::Smaller>>,
    A: Real,
    S: Data<Elem = A>,
    S2: Data<Elem = A>,
    D: RemoveAxis,
{
    let mut out = x.primal().to_owned();
    out.index_axis_mut(axis, i).assign(y.primal());
    out
}

/// Pullback of [`put_index_axis`] for `x`: the cotangent, zero in the replaced
/// subview.
pub fn put_index_axis_pb_x<A: Real, D: RemoveAxis>(
    axis: Axis,
    i: usize,
    mut ct: Array<A, D>,
) -> Array<A, D> {
    ct.index_axis_mut(axis, i).fill(A::zero());
    ct
}

/// Pullback of [`put_index_axis`] for `y`: the cotangent's subview.
pub fn put_index_axis_pb_y<A: Real, D: RemoveAxis>(
    axis: Axis,
    i: usize,
    ct: Array<A, D>,
) -> Array<A, D::Smaller> {
    ct.index_axis(axis, i).to_owned()
}
