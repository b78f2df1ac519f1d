//! What `vmap!` needs at run time: one example of a batched argument, and the
//! outputs of every example stacked into a batch.

use crate::value::Real;
use ndarray::{Array, Array1, ArrayBase, ArrayView, Axis, Data, Dimension, Ix1, RemoveAxis};

/// An argument mapped over one of its axes.
pub trait Unbatch {
    /// One example: a scalar for a 1-D array, a view otherwise.
    type Item<'a>
    where
        Self: 'a;
    /// The length of `axis`.
    fn batch_len(&self, axis: usize) -> usize;
    /// Example `i` along `axis`.
    fn unbatch(&self, axis: usize, i: usize) -> Self::Item<'_>;
}

impl<A: Real, S: Data<Elem = A>> Unbatch for ArrayBase<S, Ix1> {
    type Item<'a>
        = A
    where
        Self: 'a;
    fn batch_len(&self, _axis: usize) -> usize {
        self.len()
    }
    fn unbatch(&self, _axis: usize, i: usize) -> A {
        self[i]
    }
}

macro_rules! unbatch_views {
    ($($d:ty),*) => {$(
        impl<A: Real, S: Data<Elem = A>> Unbatch for ArrayBase<S, $d> {
            type Item<'a> = ArrayView<'a, A, <$d as Dimension>::Smaller> where Self: 'a;
            fn batch_len(&self, axis: usize) -> usize {
                self.len_of(Axis(axis))
            }
            fn unbatch(&self, axis: usize, i: usize) -> Self::Item<'_> {
                self.index_axis(Axis(axis), i)
            }
        }
    )*};
}
unbatch_views!(
    ndarray::Ix2,
    ndarray::Ix3,
    ndarray::Ix4,
    ndarray::Ix5,
    ndarray::Ix6
);

impl<T: Unbatch + ?Sized> Unbatch for &T {
    type Item<'a>
        = T::Item<'a>
    where
        Self: 'a;
    fn batch_len(&self, axis: usize) -> usize {
        (**self).batch_len(axis)
    }
    fn unbatch(&self, axis: usize, i: usize) -> Self::Item<'_> {
        (**self).unbatch(axis, i)
    }
}

/// The length of a mapped argument's axis.
pub fn batch_len<T: Unbatch>(x: &T, axis: usize) -> usize {
    x.batch_len(axis)
}

/// Example `i` of a mapped argument.
pub fn unbatch<T: Unbatch>(x: &T, axis: usize, i: usize) -> T::Item<'_> {
    x.unbatch(axis, i)
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

/// Outputs of every example, stacked along a new axis 0.
pub trait Stack: Sized {
    /// The batched output.
    type Stacked;
    /// Stacks `items` (one per example).
    fn stack(items: Vec<Self>) -> Self::Stacked;
}

impl Stack for f64 {
    type Stacked = Array1<f64>;
    fn stack(items: Vec<f64>) -> Array1<f64> {
        Array1::from_vec(items)
    }
}

impl Stack for f32 {
    type Stacked = Array1<f32>;
    fn stack(items: Vec<f32>) -> Array1<f32> {
        Array1::from_vec(items)
    }
}

impl<A: Real, D: Dimension> Stack for Array<A, D>
where
    D::Larger: RemoveAxis,
{
    type Stacked = Array<A, D::Larger>;
    fn stack(items: Vec<Self>) -> Self::Stacked {
        let views: Vec<_> = items.iter().map(|a| a.view()).collect();
        match ndarray::stack(Axis(0), &views) {
            Ok(s) => s,
            Err(e) => panic!("vmap!: the examples' outputs have different shapes: {e}"),
        }
    }
}

macro_rules! tuple_stack {
    ($($t:ident $i:tt),+) => {
        impl<$($t: Stack),+> Stack for ($($t,)+) {
            type Stacked = ($($t::Stacked,)+);
            #[allow(non_snake_case)]
            fn stack(items: Vec<Self>) -> Self::Stacked {
                $(let mut $t = Vec::with_capacity(items.len());)+
                for item in items {
                    $($t.push(item.$i);)+
                }
                ($($t::stack($t),)+)
            }
        }
    };
}
tuple_stack!(A 0);
tuple_stack!(A 0, B 1);
tuple_stack!(A 0, B 1, C 2);
tuple_stack!(A 0, B 1, C 2, D 3);

/// Stacks the outputs of every example.
pub fn stack_outputs<T: Stack>(items: Vec<T>) -> T::Stacked {
    T::stack(items)
}
