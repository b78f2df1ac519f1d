//! What `vmap!` needs at run time: one example of a batched argument, and the
//! outputs of every example gathered into a batch as they come: stacked along a new
//! axis 0, or summed where a transform reduced them over the batch axis
//! ([`Reduced`], `reduce_axes`).
//!
//! ```
//! use adjoint::prelude::*;
//! use ndarray::{array, Array1, ArrayView1};
//!
//! #[differentiable]
//! fn loss(w: &Array1<f64>, #[no_grad] x: ArrayView1<f64>) -> f64 {
//!     x.dot(w).powi(2)
//! }
//!
//! let (w, x) = (array![1.0, 2.0], array![[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]);
//! // One gradient per example, stacked: d/dw (x.w)^2 = 2 (x.w) x.
//! let per_example = vmap!(grad!(loss), in_axes = [None, 0])(&w, &x);
//! assert_eq!(per_example, array![[2.0, 0.0], [0.0, 4.0], [6.0, 6.0]]);
//! // `w` is broadcast: with `reduce_axes` its cotangent is summed over the batch.
//! let summed = vmap!(
//!     grad!(|w: &Array1<f64>, x: ArrayView1<f64>| loss(w, x), wrt = [w], reduce_axes = ["batch"]),
//!     in_axes = [None, 0],
//!     axis_name = "batch"
//! )(&w, &x);
//! assert_eq!(summed, array![8.0, 10.0]);
//! ```

use crate::scope::Variables;
use crate::value::Real;
use ndarray::{Array, Array1, ArrayBase, ArrayView, Axis, Data, Dimension, Ix1, RemoveAxis};

/// An argument mapped over its axis `AXIS` (a `vmap!`'s `in_axes` entry): arrays of
/// any element type (floats, integer labels) with at least `AXIS + 1` axes.
#[diagnostic::on_unimplemented(
    message = "vmap!: `in_axes` maps axis {AXIS} of `{Self}`, which has no axis {AXIS}",
    label = "mapped over axis {AXIS} here",
    note = "`vmap!` maps an array over one of its axes: give this argument an axis it has, or `None` to broadcast it"
)]
pub trait Unbatch<const AXIS: usize> {
    /// One example: an element for a 1-D array, a view otherwise.
    type Item<'a>
    where
        Self: 'a;
    /// An owned array shaped like this one with one example (of zeros) along the axis:
    /// what the mapped function is traced on when the batch is empty.
    type Probe: Unbatch<AXIS>;
    /// The length of the axis.
    fn batch_len(&self) -> usize;
    /// Example `i` along the axis.
    fn unbatch(&self, i: usize) -> Self::Item<'_>;
    /// One example of zeros.
    fn probe(&self) -> Self::Probe;
}

impl<A: Clone + num_traits::Zero, S: Data<Elem = A>> Unbatch<0> for ArrayBase<S, Ix1> {
    type Item<'a>
        = A
    where
        Self: 'a;
    type Probe = Array1<A>;
    fn batch_len(&self) -> usize {
        self.len()
    }
    fn unbatch(&self, i: usize) -> A {
        self[i].clone()
    }
    fn probe(&self) -> Array1<A> {
        Array1::zeros(1)
    }
}

/// Per rank and axis: an example is a view ([`Unbatch`]), its cotangent an array
/// written back into the batch's ([`Rebatch`]).
macro_rules! per_axis {
    ($($d:ty: $($axis:literal)*;)*) => {$($(
        impl<A: Clone + num_traits::Zero, S: Data<Elem = A>> Unbatch<$axis> for ArrayBase<S, $d> {
            type Item<'a> = ArrayView<'a, A, <$d as Dimension>::Smaller> where Self: 'a;
            type Probe = Array<A, $d>;
            fn batch_len(&self) -> usize {
                self.len_of(Axis($axis))
            }
            fn unbatch(&self, i: usize) -> Self::Item<'_> {
                self.index_axis(Axis($axis), i)
            }
            fn probe(&self) -> Array<A, $d> {
                let mut dim = self.raw_dim();
                dim[$axis] = 1;
                Array::zeros(dim)
            }
        }

        impl<A: Real> Rebatch<$axis> for Array<A, $d> {
            type Item = Array<A, <$d as Dimension>::Smaller>;
            fn add_example(&mut self, i: usize, ct: Self::Item) {
                let mut row = self.index_axis_mut(Axis($axis), i);
                row += &ct;
            }
        }
    )*)*};
}
per_axis! {
    ndarray::Ix2: 0 1;
    ndarray::Ix3: 0 1 2;
    ndarray::Ix4: 0 1 2 3;
    ndarray::Ix5: 0 1 2 3 4;
    ndarray::Ix6: 0 1 2 3 4 5;
}

impl<const AXIS: usize, T: Unbatch<AXIS> + ?Sized> Unbatch<AXIS> for &T {
    type Item<'a>
        = T::Item<'a>
    where
        Self: 'a;
    type Probe = T::Probe;
    fn batch_len(&self) -> usize {
        (**self).batch_len()
    }
    fn unbatch(&self, i: usize) -> Self::Item<'_> {
        (**self).unbatch(i)
    }
    fn probe(&self) -> T::Probe {
        (**self).probe()
    }
}

/// The length of a mapped argument's axis.
pub fn batch_len<const AXIS: usize, T: Unbatch<AXIS>>(x: &T) -> usize {
    x.batch_len()
}

/// Example `i` of a mapped argument.
pub fn unbatch<const AXIS: usize, T: Unbatch<AXIS>>(x: &T, i: usize) -> T::Item<'_> {
    x.unbatch(i)
}

/// One example of zeros shaped like a mapped argument's (for an empty batch).
pub fn probe<const AXIS: usize, T: Unbatch<AXIS>>(x: &T) -> T::Probe {
    x.probe()
}

/// The cotangent of a mapped argument, written one example at a time: the reverse
/// of [`Unbatch`], for a `vmap!` differentiated inside a module.
///
/// ```
/// use adjoint::batch::Rebatch;
/// use ndarray::array;
///
/// let mut ct = ndarray::Array2::<f64>::zeros((2, 3));
/// // Example 1 along axis 1 (a column).
/// Rebatch::<1>::add_example(&mut ct, 1, array![1.0, 2.0]);
/// assert_eq!(ct, array![[0.0, 1.0, 0.0], [0.0, 2.0, 0.0]]);
/// ```
pub trait Rebatch<const AXIS: usize> {
    /// One example's cotangent.
    type Item;
    /// Adds `ct` into example `i` along the axis.
    fn add_example(&mut self, i: usize, ct: Self::Item);
}

impl<A: Real> Rebatch<0> for Array1<A> {
    type Item = A;
    fn add_example(&mut self, i: usize, ct: A) {
        self[i] += ct;
    }
}

/// Adds example `i`'s cotangent into a mapped argument's.
#[doc(hidden)]
pub fn add_example<const AXIS: usize, T: Rebatch<AXIS>>(acc: &mut T, i: usize, ct: T::Item) {
    acc.add_example(i, ct);
}

/// The batch size shared by every mapped argument.
///
/// # Panics
/// When mapped arguments disagree, as `jax.vmap` raises.
pub fn common_len(lens: &[usize]) -> usize {
    let n = lens.first().copied().unwrap_or(0);
    if let Some(bad) = lens.iter().find(|&&l| l != n) {
        panic!("vmap!: mapped arguments have different sizes along their axes: {n} and {bad}");
    }
    n
}

/// A value that a transform inside `vmap!` reduced over the batch axis
/// (`reduce_axes`): `vmap!` sums it over the examples instead of stacking it, as
/// JAX's `psum` over a named axis.
#[derive(Clone, Debug, PartialEq)]
pub struct Reduced<T>(pub T);

/// Outputs of every example, gathered as they come into the batched output.
pub trait Stack: Sized {
    /// The batched output.
    type Stacked;
    /// Gathers the outputs of `n` examples, of which `first` is the first.
    type Builder: Gather<Self, Stacked = Self::Stacked>;
    /// A builder for `n` examples shaped like `first`.
    fn builder(first: &Self, n: usize) -> Self::Builder;
    /// The output of an empty batch.
    fn empty() -> Self::Stacked;
}

/// Gathers the outputs of a batch's examples one by one.
pub trait Gather<T> {
    /// The batched output.
    type Stacked;
    /// Adds example `i`'s output.
    fn push(&mut self, i: usize, item: T);
    /// The batched output.
    fn finish(self) -> Self::Stacked;
}

impl<A: Real> Stack for A {
    type Stacked = Array1<A>;
    type Builder = Vec<A>;
    fn builder(_first: &A, n: usize) -> Vec<A> {
        Vec::with_capacity(n)
    }
    fn empty() -> Array1<A> {
        Array1::zeros(0)
    }
}

impl<A: Real> Gather<A> for Vec<A> {
    type Stacked = Array1<A>;
    fn push(&mut self, _i: usize, item: A) {
        Vec::push(self, item);
    }
    fn finish(self) -> Array1<A> {
        Array1::from_vec(self)
    }
}

/// The stacked array, written one example (one subarray along axis 0) at a time.
pub struct ArrayStacker<A, D: Dimension> {
    out: Array<A, D::Larger>,
}

impl<A: Real, D: Dimension> Stack for Array<A, D>
where
    D::Larger: RemoveAxis,
{
    type Stacked = Array<A, D::Larger>;
    type Builder = ArrayStacker<A, D>;
    fn builder(first: &Self, n: usize) -> ArrayStacker<A, D> {
        let mut dim = <D::Larger as Dimension>::zeros(first.ndim() + 1);
        dim[0] = n;
        for (k, &len) in first.shape().iter().enumerate() {
            dim[k + 1] = len;
        }
        ArrayStacker {
            out: Array::zeros(dim),
        }
    }
    fn empty() -> Self::Stacked {
        let ndim = D::NDIM.map_or(1, |d| d + 1);
        Array::zeros(<D::Larger as Dimension>::zeros(ndim))
    }
}

impl<A: Real, D: Dimension> Gather<Array<A, D>> for ArrayStacker<A, D>
where
    D::Larger: RemoveAxis,
{
    type Stacked = Array<A, D::Larger>;
    /// # Panics
    /// When examples' outputs differ in shape (JAX would not trace such a function).
    fn push(&mut self, i: usize, item: Array<A, D>) {
        let mut row = self.out.index_axis_mut(Axis(0), i);
        if row.shape() != item.shape() {
            panic!(
                "vmap!: the examples' outputs have different shapes: {:?} and {:?}",
                row.shape(),
                item.shape()
            );
        }
        // Rows of the new (row-major) batch are contiguous: a plain copy when the
        // item is too.
        match (row.as_slice_mut(), item.as_slice()) {
            (Some(dst), Some(src)) => dst.copy_from_slice(src),
            _ => row.assign(&item),
        }
    }
    fn finish(self) -> Self::Stacked {
        self.out
    }
}

/// Every leaf gains a leading batch axis: per-example parameter cotangents.
impl Stack for Variables {
    type Stacked = Variables;
    type Builder = VariablesStacker;
    fn builder(first: &Variables, n: usize) -> VariablesStacker {
        VariablesStacker {
            items: Vec::with_capacity(n),
            like: first.zeros_like(),
        }
    }
    fn empty() -> Variables {
        Variables::new()
    }
}

/// Per-example variables, stacked at the end; an empty batch gives every leaf of the
/// first (traced) example's tree with a batch axis of length 0.
pub struct VariablesStacker {
    items: Vec<Variables>,
    like: Variables,
}

impl Gather<Variables> for VariablesStacker {
    type Stacked = Variables;
    fn push(&mut self, _i: usize, item: Variables) {
        self.items.push(item);
    }
    fn finish(self) -> Variables {
        if self.items.is_empty() {
            return self.like.empty_batch();
        }
        // Per-example cotangents of one module share its variables' paths and shapes.
        Variables::stack(&self.items)
            .unwrap_or_else(|e| panic!("vmap!: per-example variables do not stack: {e}"))
    }
}

/// Sums over the examples (zero for an empty batch).
pub struct Summer<T>(Option<T>);

impl<T: crate::value::Accumulate + crate::value::Value<Cot = T>> Stack for Reduced<T>
where
    T: Default,
{
    type Stacked = T;
    type Builder = Summer<T>;
    fn builder(first: &Self, n: usize) -> Summer<T> {
        // The first example's output starts the sum; an empty batch sums to zero.
        Summer((n == 0).then(|| first.0.zeros()))
    }
    fn empty() -> T {
        T::default()
    }
}

impl<T: crate::value::Accumulate + Default> Gather<Reduced<T>> for Summer<T> {
    type Stacked = T;
    fn push(&mut self, _i: usize, item: Reduced<T>) {
        match &mut self.0 {
            Some(acc) => acc.accumulate(item.0),
            None => self.0 = Some(item.0),
        }
    }
    fn finish(self) -> T {
        self.0.unwrap_or_default()
    }
}

/// The builders of a tuple's fields.
pub struct TupleStacker<B>(B);

macro_rules! tuple_stack {
    ($($t:ident $i:tt),+) => {
        impl<$($t: Stack),+> Stack for ($($t,)+) {
            type Stacked = ($($t::Stacked,)+);
            type Builder = TupleStacker<($($t::Builder,)+)>;
            fn builder(first: &Self, n: usize) -> Self::Builder {
                TupleStacker(($($t::builder(&first.$i, n),)+))
            }
            fn empty() -> Self::Stacked {
                ($($t::empty(),)+)
            }
        }

        impl<$($t: Stack),+> Gather<($($t,)+)> for TupleStacker<($($t::Builder,)+)> {
            type Stacked = ($($t::Stacked,)+);
            fn push(&mut self, i: usize, item: ($($t,)+)) {
                $(self.0.$i.push(i, item.$i);)+
            }
            fn finish(self) -> Self::Stacked {
                ($(self.0.$i.finish(),)+)
            }
        }
    };
}
tuple_stack!(A 0);
tuple_stack!(A 0, B 1);
tuple_stack!(A 0, B 1, C 2);
tuple_stack!(A 0, B 1, C 2, D 3);

/// One example of a batched output, the reverse of [`Stack`]: example `i` of the
/// cotangent of a `vmap!`'s output, for that example's pullback.
///
/// ```
/// use adjoint::batch::Unstack;
/// use ndarray::{array, Array1};
///
/// let batch = array![[1.0, 2.0], [3.0, 4.0]];
/// assert_eq!(<Array1<f64> as Unstack>::example(&batch, 1), array![3.0, 4.0]);
/// assert_eq!(<f64 as Unstack>::example(&array![5.0, 6.0], 0), 5.0);
/// ```
pub trait Unstack: Stack {
    /// Example `i` of `batch`.
    fn example(batch: &Self::Stacked, i: usize) -> Self;
}

impl<A: Real> Unstack for A {
    fn example(batch: &Array1<A>, i: usize) -> A {
        batch[i]
    }
}

impl<A: Real, D: Dimension> Unstack for Array<A, D>
where
    D::Larger: RemoveAxis,
{
    fn example(batch: &Self::Stacked, i: usize) -> Self {
        let row = batch.index_axis(Axis(0), i).to_owned();
        // `index_axis` of `D::Larger` gives `D::Larger::Smaller`, which is `D`.
        row.into_dimensionality::<D>()
            .expect("removing the axis `Larger` added gives the dimension back")
    }
}

macro_rules! tuple_unstack {
    ($($t:ident $i:tt),+) => {
        impl<$($t: Unstack),+> Unstack for ($($t,)+) {
            fn example(batch: &Self::Stacked, i: usize) -> Self {
                ($($t::example(&batch.$i, i),)+)
            }
        }
    };
}
tuple_unstack!(A 0);
tuple_unstack!(A 0, B 1);
tuple_unstack!(A 0, B 1, C 2);
tuple_unstack!(A 0, B 1, C 2, D 3);

/// Example `i` of a batched output's cotangent (see [`Unstack`]).
#[doc(hidden)]
pub fn example<T: Unstack>(batch: &T::Stacked, i: usize) -> T {
    T::example(batch, i)
}

/// Example `i` of the batched cotangent of outputs like `y` (a `vmap!` closure's,
/// whose type only its value tells): `(&&ExampleOf(&y)).example(batch, i)` is
/// `Some` where the cotangent can be taken apart ([`Unstack`]), `None` for other
/// outputs (a tree of per-example gradients), whose pullback then reports that it
/// does not go through.
#[doc(hidden)]
pub struct ExampleOf<'a, Y: ?Sized>(pub &'a Y);

/// See [`ExampleOf`]: an output whose cotangent is [`Unstack`].
#[doc(hidden)]
pub trait ExampleUnstacked {
    type Cot;
    type Stacked;
    fn example(&self, batch: &Self::Stacked, i: usize) -> Option<Self::Cot>;
}

impl<Y: crate::value::Value> ExampleUnstacked for &ExampleOf<'_, Y>
where
    Y::Cot: Unstack,
{
    type Cot = Y::Cot;
    type Stacked = <Y::Cot as Stack>::Stacked;
    fn example(&self, batch: &Self::Stacked, i: usize) -> Option<Y::Cot> {
        Some(<Y::Cot as Unstack>::example(batch, i))
    }
}

/// See [`ExampleOf`]: any other output.
#[doc(hidden)]
pub trait ExampleNone {
    type Cot;
    fn example<B>(&self, batch: &B, i: usize) -> Option<Self::Cot>;
}

impl<Y: crate::value::Value> ExampleNone for ExampleOf<'_, Y> {
    type Cot = Y::Cot;
    fn example<B>(&self, _batch: &B, _i: usize) -> Option<Y::Cot> {
        None
    }
}

/// Gathers a batch's outputs: `vmap!` calls [`Batch::push`] with each example's
/// output, in order, and [`Batch::finish`] at the end.
pub struct Batch<T: Stack> {
    n: usize,
    next: usize,
    builder: Option<T::Builder>,
}

impl<T: Stack> Batch<T> {
    /// A batch of `n` examples.
    pub fn new(n: usize) -> Self {
        Batch {
            n,
            next: 0,
            builder: None,
        }
    }

    /// Shapes the output of an empty batch like `item`: the output of the mapped
    /// function traced on one example of zeros, as `jax.vmap` traces it.
    pub fn shape_like(&mut self, item: T) {
        let n = self.n;
        self.builder.get_or_insert_with(|| T::builder(&item, n));
    }

    /// Adds the next example's output.
    pub fn push(&mut self, item: T) {
        let n = self.n;
        let builder = self.builder.get_or_insert_with(|| T::builder(&item, n));
        builder.push(self.next, item);
        self.next += 1;
    }

    /// The batched output (an empty batch gives empty arrays).
    pub fn finish(self) -> T::Stacked {
        match self.builder {
            Some(b) => b.finish(),
            None => T::empty(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_stack_along_a_new_axis_and_reduced_values_sum() {
        let mut b: Batch<(Array1<f64>, Reduced<f64>)> = Batch::new(3);
        for i in 0..3 {
            let v = i as f64;
            b.push((ndarray::arr1(&[v, 2.0 * v]), Reduced(v)));
        }
        let (stacked, sum) = b.finish();
        assert_eq!(
            stacked,
            ndarray::arr2(&[[0.0, 0.0], [1.0, 2.0], [2.0, 4.0]])
        );
        assert_eq!(sum, 3.0);
        let empty: Batch<ndarray::Array2<f64>> = Batch::new(0);
        assert_eq!(empty.finish().shape(), &[0, 0, 0]);
    }
}
