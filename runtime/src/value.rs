//! What can be differentiated: scalars, arrays and tuples, their cotangents, and how
//! cotangents are zeroed, accumulated and reduced to an input's shape.
//!
//! The macro sees no types, so the code it generates names only the traits here and
//! rustc picks the impl: `f32`, `f64`, `ndarray` arrays of any dimension and storage
//! (owned, views, shared), references to any of them, and tuples.

use ndarray::{Array, ArrayBase, Data, Dimension, IxDyn, LinalgScalar, ScalarOperand};
use num_traits::{Float, FromPrimitive};
use std::fmt::{Debug, Display};
use std::ops::{AddAssign, DivAssign, MulAssign, SubAssign};

/// The floating-point element types: `f32` and `f64`. Code generic over `A: Real`
/// is differentiable (`fn layer<A: Real>(x: &Array2<A>) -> A`): every rule is
/// implemented for any `Real`, and the traits that also cover references (`Value`,
/// `Own`) are implied by it.
pub trait Real:
    Value<Primal = Self, Cot = Self>
    + Own<Owned = Self>
    + Float
    + FromPrimitive
    + LinalgScalar
    + ScalarOperand
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + Debug
    + Display
    + Default
    + Send
    + Sync
    + 'static
{
    /// `v` converted to this type (exact for small constants such as `2.0`).
    fn lit(v: f64) -> Self;
    /// This value as an `f64` (exact for `f32` and `f64`).
    fn as_f64(self) -> f64;
    /// `e^self`, by the vectorising kernel (`rules::kernels`).
    fn vexp(self) -> Self;
    /// `e^self - 1`, by the vectorising kernel.
    fn vexp_m1(self) -> Self;
    /// `tanh(self)`, by the vectorising kernel.
    fn vtanh(self) -> Self;
    /// The element type's name, for errors (`"f32"`).
    const KIND: &'static str;
    /// An array of this type as a stored leaf.
    fn into_leaf(a: ndarray::ArcArray<Self, IxDyn>) -> crate::variables::Leaf;
    /// A stored leaf's array, if it holds this type.
    fn leaf_array(leaf: &crate::variables::Leaf) -> Option<&ndarray::ArcArray<Self, IxDyn>>;
    #[doc(hidden)]
    fn leaf_array_mut(
        leaf: &mut crate::variables::Leaf,
    ) -> Option<&mut ndarray::ArcArray<Self, IxDyn>>;
}

impl Real for f32 {
    const KIND: &'static str = "f32";
    fn into_leaf(a: ndarray::ArcArray<Self, IxDyn>) -> crate::variables::Leaf {
        crate::variables::Leaf::F32(a)
    }
    fn leaf_array(leaf: &crate::variables::Leaf) -> Option<&ndarray::ArcArray<Self, IxDyn>> {
        match leaf {
            crate::variables::Leaf::F32(a) => Some(a),
            _ => None,
        }
    }
    fn leaf_array_mut(
        leaf: &mut crate::variables::Leaf,
    ) -> Option<&mut ndarray::ArcArray<Self, IxDyn>> {
        match leaf {
            crate::variables::Leaf::F32(a) => Some(a),
            _ => None,
        }
    }
    #[inline(always)]
    fn lit(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn as_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn vexp(self) -> Self {
        crate::rules::kernels::exp(self as f64) as f32
    }
    #[inline(always)]
    fn vexp_m1(self) -> Self {
        crate::rules::kernels::exp_m1(self as f64) as f32
    }
    #[inline(always)]
    fn vtanh(self) -> Self {
        crate::rules::kernels::tanh(self as f64) as f32
    }
}

impl Real for f64 {
    const KIND: &'static str = "f64";
    fn into_leaf(a: ndarray::ArcArray<Self, IxDyn>) -> crate::variables::Leaf {
        crate::variables::Leaf::F64(a)
    }
    fn leaf_array(leaf: &crate::variables::Leaf) -> Option<&ndarray::ArcArray<Self, IxDyn>> {
        match leaf {
            crate::variables::Leaf::F64(a) => Some(a),
            _ => None,
        }
    }
    fn leaf_array_mut(
        leaf: &mut crate::variables::Leaf,
    ) -> Option<&mut ndarray::ArcArray<Self, IxDyn>> {
        match leaf {
            crate::variables::Leaf::F64(a) => Some(a),
            _ => None,
        }
    }
    #[inline(always)]
    fn lit(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn as_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn vexp(self) -> Self {
        crate::rules::kernels::exp(self)
    }
    #[inline(always)]
    fn vexp_m1(self) -> Self {
        crate::rules::kernels::exp_m1(self)
    }
    #[inline(always)]
    fn vtanh(self) -> Self {
        crate::rules::kernels::tanh(self)
    }
}

/// A value the transform can differentiate, or a reference to one.
///
/// `Primal` is the value behind any number of references (`&&Array2<f64>` has the
/// primal `Array2<f64>`); `Cot` is its cotangent, always owned (`Array2<f64>` for an
/// `ArrayView2<f64>`).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be differentiated",
    label = "not an f32, f64, ndarray array of floats, or a tuple of them",
    note = "mark arguments of other types `#[no_grad]`, or wrap the expression in `no_grad(..)`"
)]
pub trait Value {
    /// The value behind references.
    type Primal;
    /// The owned cotangent.
    type Cot;
    /// The value behind references.
    fn primal(&self) -> &Self::Primal;
    /// A zero cotangent of this value's shape.
    fn zeros(&self) -> Self::Cot;
}

impl Value for f32 {
    type Primal = f32;
    type Cot = f32;
    #[inline(always)]
    fn primal(&self) -> &f32 {
        self
    }
    #[inline(always)]
    fn zeros(&self) -> f32 {
        0.0
    }
}

impl Value for f64 {
    type Primal = f64;
    type Cot = f64;
    #[inline(always)]
    fn primal(&self) -> &f64 {
        self
    }
    #[inline(always)]
    fn zeros(&self) -> f64 {
        0.0
    }
}

impl<A: Real, S: Data<Elem = A>, D: Dimension> Value for ArrayBase<S, D> {
    type Primal = ArrayBase<S, D>;
    type Cot = Array<A, D>;
    #[inline(always)]
    fn primal(&self) -> &Self {
        self
    }
    // Not inlined, on purpose: where LLVM sees that an adjoint has its primal's
    // length, it drops the adjoint's bounds checks in a loop's reverse sweep and may
    // merge the updates of `x_bar[i]` and `x_bar[i + 1]` into one 16-byte
    // read-modify-write that the next iteration's overlaps, stalling store forwarding
    // (the Rosenbrock benchmark took 4.7x as long). A call per adjoint costs nothing.
    #[inline(never)]
    fn zeros(&self) -> Array<A, D> {
        Array::zeros(self.raw_dim())
    }
}

impl<T: Value + ?Sized> Value for &T {
    type Primal = T::Primal;
    type Cot = T::Cot;
    #[inline(always)]
    fn primal(&self) -> &T::Primal {
        (**self).primal()
    }
    #[inline(always)]
    fn zeros(&self) -> T::Cot {
        (**self).zeros()
    }
}

impl<T: Value + ?Sized> Value for &mut T {
    type Primal = T::Primal;
    type Cot = T::Cot;
    #[inline(always)]
    fn primal(&self) -> &T::Primal {
        (**self).primal()
    }
    #[inline(always)]
    fn zeros(&self) -> T::Cot {
        (**self).zeros()
    }
}

/// Integers and booleans are never differentiated: an output such as `(loss, count)`
/// has no cotangent for `count`.
macro_rules! constant_value {
    ($($t:ty),*) => {$(
        impl Value for $t {
            type Primal = $t;
            type Cot = ();
            #[inline(always)]
            fn primal(&self) -> &$t {
                self
            }
            #[inline(always)]
            fn zeros(&self) {}
        }
    )*};
}
constant_value!(i8, i16, i32, i64, isize, u8, u16, u32, u64, usize, bool);

impl Value for () {
    type Primal = ();
    type Cot = ();
    fn primal(&self) -> &() {
        self
    }
    fn zeros(&self) {}
}

macro_rules! tuple_value {
    ($($t:ident $i:tt),+) => {
        impl<$($t: Value),+> Value for ($($t,)+) {
            type Primal = Self;
            type Cot = ($($t::Cot,)+);
            #[inline(always)]
            fn primal(&self) -> &Self {
                self
            }
            #[inline(always)]
            fn zeros(&self) -> Self::Cot {
                ($(self.$i.zeros(),)+)
            }
        }
        impl<$($t: Accumulate),+> Accumulate for ($($t,)+) {
            #[inline(always)]
            fn accumulate(&mut self, other: Self) {
                $(self.$i.accumulate(other.$i);)+
            }
        }
    };
}
tuple_value!(A 0);
tuple_value!(A 0, B 1);
tuple_value!(A 0, B 1, C 2);
tuple_value!(A 0, B 1, C 2, D 3);
tuple_value!(A 0, B 1, C 2, D 3, E 4);
tuple_value!(A 0, B 1, C 2, D 3, E 4, F 5);
tuple_value!(A 0, B 1, C 2, D 3, E 4, F 5, G 6);
tuple_value!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);

/// The cotangent of a value: `<T as Value>::Cot`.
pub type Cot<T> = <T as Value>::Cot;

/// Cotangents add up: the reverse sweep adds every contribution to a value's adjoint.
pub trait Accumulate {
    /// `self += other`, in place.
    fn accumulate(&mut self, other: Self);
}

impl<A: Real> Accumulate for A {
    #[inline(always)]
    fn accumulate(&mut self, other: Self) {
        *self += other;
    }
}

/// `self += s * g`: a gradient scaled by a value's cotangent, added to an adjoint
/// (the pullback of `value_and_grad!(f)(..)` inside a differentiated body).
///
/// ```
/// use adjoint::__private::AddScaled;
/// let mut h = ndarray::array![1.0, 2.0];
/// h.add_scaled(&ndarray::array![3.0, -1.0], 0.5);
/// assert_eq!(h, ndarray::array![2.5, 1.5]);
/// ```
#[doc(hidden)]
pub trait AddScaled<S> {
    /// `self += s * g`.
    fn add_scaled(&mut self, g: &Self, s: S);
}

impl<A: Real> AddScaled<A> for A {
    #[inline(always)]
    fn add_scaled(&mut self, g: &A, s: A) {
        *self += *g * s;
    }
}

impl<A: Real, D: Dimension> AddScaled<A> for Array<A, D> {
    #[inline]
    fn add_scaled(&mut self, g: &Self, s: A) {
        self.zip_mut_with(g, |a, &b| *a += b * s);
    }
}

impl<A: Real> AddScaled<A> for crate::scope::Variables {
    fn add_scaled(&mut self, g: &Self, s: A) {
        let s = s.as_f64();
        Accumulate::accumulate(self, g.map(|w| w * s));
    }
}

impl Accumulate for () {
    fn accumulate(&mut self, _: Self) {}
}

impl<A: Real, D: Dimension> Accumulate for Array<A, D> {
    #[inline]
    fn accumulate(&mut self, other: Self) {
        // Same shape and layout (the common case): a plain loop over the memory.
        if self.shape() == other.shape()
            && self.strides() == other.strides()
            && let (Some(a), Some(b)) = (
                self.as_slice_memory_order_mut(),
                other.as_slice_memory_order(),
            )
        {
            a.iter_mut().zip(b).for_each(|(a, &b)| *a += b);
        } else {
            *self += &other;
        }
    }
}

/// The shape of a value: all a pullback of `+`, `-` or a reduction needs to know
/// about its operand. A scalar's shape is zero-sized, so saving it costs nothing.
pub trait ShapeOf {
    /// The shape.
    type Shape: Clone;
    /// This value's shape.
    fn shape_of(&self) -> Self::Shape;
}

/// The shape of an `A` scalar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScalarShape<A>(std::marker::PhantomData<A>);

/// The shape of an array of `A`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArrayShape<A, D>(pub D, std::marker::PhantomData<A>);

impl<A: Real> ShapeOf for A {
    type Shape = ScalarShape<A>;
    #[inline(always)]
    fn shape_of(&self) -> ScalarShape<A> {
        ScalarShape(std::marker::PhantomData)
    }
}

impl<A: Real, S: Data<Elem = A>, D: Dimension> ShapeOf for ArrayBase<S, D> {
    type Shape = ArrayShape<A, D>;
    #[inline]
    fn shape_of(&self) -> ArrayShape<A, D> {
        ArrayShape(self.raw_dim(), std::marker::PhantomData)
    }
}

impl<A: Real, D: Dimension> ArrayShape<A, D> {
    /// The shape `dim`.
    pub fn new(dim: D) -> Self {
        ArrayShape(dim, std::marker::PhantomData)
    }

    /// The number of elements.
    pub fn size(&self) -> usize {
        self.0.size()
    }
}

/// Reduces a cotangent of a broadcast result to the shape of one operand, by summing
/// over the axes broadcasting added or stretched (JAX's `_unbroadcast`).
pub trait Unbroadcast<Ct> {
    /// The cotangent for the operand.
    type Cot;
    /// Sums `ct` down to this shape.
    fn unbroadcast(&self, ct: Ct) -> Self::Cot;
}

impl<A: Real> Unbroadcast<A> for ScalarShape<A> {
    type Cot = A;
    #[inline(always)]
    fn unbroadcast(&self, ct: A) -> A {
        ct
    }
}

impl<A: Real, E: Dimension> Unbroadcast<Array<A, E>> for ScalarShape<A> {
    type Cot = A;
    #[inline]
    fn unbroadcast(&self, ct: Array<A, E>) -> A {
        ct.sum()
    }
}

impl<A: Real, D: Dimension, E: Dimension> Unbroadcast<Array<A, E>> for ArrayShape<A, D> {
    type Cot = Array<A, D>;
    fn unbroadcast(&self, ct: Array<A, E>) -> Array<A, D> {
        unbroadcast_to(ct, &self.0)
    }
}

impl<A: Real, D: Dimension> Unbroadcast<A> for ArrayShape<A, D> {
    type Cot = Array<A, D>;
    fn unbroadcast(&self, ct: A) -> Array<A, D> {
        // Only reached when a 0-dimensional array met scalars.
        Array::from_elem(self.0.clone(), ct)
    }
}

/// A cotangent broadcast back up to a shape: the transpose of [`Unbroadcast`] (a
/// cotangent that has the shape already is returned as it is, not copied).
pub trait Broadcast<Ct> {
    /// The cotangent at this shape.
    type Out;
    /// Broadcasts `ct` to this shape.
    fn broadcast(&self, ct: Ct) -> Self::Out;
}

impl<A: Real> Broadcast<A> for ScalarShape<A> {
    type Out = A;
    #[inline(always)]
    fn broadcast(&self, ct: A) -> A {
        ct
    }
}

impl<A: Real, D: Dimension> Broadcast<A> for ArrayShape<A, D> {
    type Out = Array<A, D>;
    #[inline]
    fn broadcast(&self, ct: A) -> Array<A, D> {
        Array::from_elem(self.0.clone(), ct)
    }
}

impl<A: Real, D: Dimension, E: Dimension> Broadcast<Array<A, E>> for ArrayShape<A, D> {
    type Out = Array<A, D>;
    fn broadcast(&self, ct: Array<A, E>) -> Array<A, D> {
        // The same shape (only the dimension type may differ): no copy.
        let ct = if ct.shape() == self.0.slice() {
            match ct.into_dimensionality::<D>() {
                Ok(same) => return same,
                Err(_) => return Array::from_elem(self.0.clone(), A::nan()),
            }
        } else {
            ct
        };
        match ct.broadcast(self.0.clone()) {
            Some(view) => view.to_owned(),
            // Shapes that do not broadcast (a transpose's operand is never one).
            None => Array::from_elem(self.0.clone(), A::nan()),
        }
    }
}

/// [`unbroadcast_to`] from a reference: the first reduction reads a view, so the full
/// cotangent is not copied (unless no reduction is needed).
pub(crate) fn unbroadcast_ref<A: Real, E: Dimension, D: Dimension>(
    ct: &Array<A, E>,
    dim: &D,
) -> Array<A, D> {
    if let Some(sum) = sum_leading(ct, dim) {
        return sum;
    }
    let view = ct.view().into_dyn();
    let lead = ct.ndim().saturating_sub(dim.ndim());
    if lead > 0 {
        return unbroadcast_to(view.sum_axis(ndarray::Axis(0)), dim);
    }
    match dim
        .slice()
        .iter()
        .enumerate()
        .find(|&(axis, &len)| len == 1 && ct.shape()[axis] != 1)
    {
        Some((axis, _)) => unbroadcast_to(
            view.sum_axis(ndarray::Axis(axis))
                .insert_axis(ndarray::Axis(axis)),
            dim,
        ),
        None => unbroadcast_to(ct.clone(), dim),
    }
}

/// The common case of [`unbroadcast_ref`], without dynamic dimensions: a contiguous
/// cotangent broadcast along leading axes only (a bias added to a batch) is the sum
/// of its `dim`-sized chunks. `None` when the case does not apply.
fn sum_leading<A: Real, E: Dimension, D: Dimension>(
    ct: &Array<A, E>,
    dim: &D,
) -> Option<Array<A, D>> {
    let lead = ct.ndim().checked_sub(dim.ndim())?;
    if ct.shape()[lead..] != *dim.slice() {
        return None;
    }
    let cs = ct.as_slice()?;
    let mut out = Array::zeros(dim.clone());
    let n = dim.size();
    if let Some(o) = out.as_slice_mut()
        && n > 0
    {
        for chunk in cs.chunks_exact(n) {
            for (a, &b) in o.iter_mut().zip(chunk) {
                *a += b;
            }
        }
    }
    Some(out)
}

/// Sums `ct` over the leading axes and the length-1 axes of `dim` that broadcasting
/// stretched, returning an array of shape `dim`. A cotangent that already has the
/// shape is moved, not copied.
pub(crate) fn unbroadcast_to<A: Real, E: Dimension, D: Dimension>(
    ct: Array<A, E>,
    dim: &D,
) -> Array<A, D> {
    if ct.shape() == dim.slice() {
        // Already the operand's shape (the common case): only the dimension type
        // changes, without the round trip through dynamic dimensions below.
        return ct
            .into_dimensionality::<D>()
            .expect("adjoint: equal shapes have equal ranks");
    }
    if ct.ndim() > dim.ndim()
        && let Some(sum) = sum_leading(&ct, dim)
    {
        return sum;
    }
    let mut ct: Array<A, IxDyn> = ct.into_dyn();
    if ct.shape() != dim.slice() {
        let lead = ct.ndim() - dim.ndim();
        for _ in 0..lead {
            ct = ct.sum_axis(ndarray::Axis(0));
        }
        for (axis, &len) in dim.slice().iter().enumerate() {
            if len == 1 && ct.shape()[axis] != 1 {
                ct = ct
                    .sum_axis(ndarray::Axis(axis))
                    .insert_axis(ndarray::Axis(axis));
            }
        }
    }
    // The rank now matches `dim`, so only the dimension type changes.
    ct.into_dimensionality::<D>()
        .expect("adjoint: unbroadcast reaches the operand's rank by construction")
}

/// An owned copy of a value behind references: what a nested pullback keeps of a
/// reference argument it reads, so that it borrows nothing from its caller.
pub trait Own {
    /// The owned value.
    type Owned;
    /// Copies (or shares) the value.
    fn own(&self) -> Self::Owned;
}

impl Own for f32 {
    type Owned = f32;
    #[inline(always)]
    fn own(&self) -> f32 {
        *self
    }
}

impl Own for f64 {
    type Owned = f64;
    #[inline(always)]
    fn own(&self) -> f64 {
        *self
    }
}

impl<A: Clone, S: Data<Elem = A>, D: Dimension> Own for ArrayBase<S, D> {
    type Owned = Array<A, D>;
    fn own(&self) -> Array<A, D> {
        self.to_owned()
    }
}

macro_rules! tuple_own {
    ($($t:ident $i:tt),+) => {
        impl<$($t: Own),+> Own for ($($t,)+) {
            type Owned = ($($t::Owned,)+);
            #[inline]
            fn own(&self) -> Self::Owned {
                ($(self.$i.own(),)+)
            }
        }
    };
}
tuple_own!(A 0);
tuple_own!(A 0, B 1);
tuple_own!(A 0, B 1, C 2);
tuple_own!(A 0, B 1, C 2, D 3);

impl<T: Own + ?Sized> Own for &T {
    type Owned = T::Owned;
    #[inline(always)]
    fn own(&self) -> T::Owned {
        (**self).own()
    }
}

impl Own for crate::scope::Variables {
    type Owned = crate::scope::Variables;
    /// Leaves are shared arrays: no parameter data is copied.
    fn own(&self) -> Self {
        self.clone()
    }
}
