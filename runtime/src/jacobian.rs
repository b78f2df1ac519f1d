//! Jacobians and Hessians from directional derivatives, shaped as JAX's: what the
//! companions `f::jacfwd`, `f::jacrev` and `f::hessian` (written by
//! `#[differentiable(jvp)]`, called by `jacfwd!`, `jacrev!` and `hessian!`) run.
//!
//! For `f` from an input of shape `I` to an output of shape `O`, the Jacobian has
//! shape `O ++ I` (`jax.jacfwd` and `jax.jacrev` alike); the Hessian of a scalar
//! function has shape `I ++ I`. Forward mode gives a column per input element (one
//! JVP along each unit tangent), reverse mode a row per output element (one VJP of
//! each unit cotangent).

use crate::value::Real;
use ndarray::{Array, ArrayBase, ArrayD, Data, Dimension, IxDyn};

/// A value along whose elements a Jacobian is taken, or which a function returns:
/// a float scalar or an array (or a reference to one).
///
/// ```
/// use adjoint::jacobian::Basis;
/// let x = ndarray::array![[1.0, 2.0], [3.0, 4.0]];
/// assert_eq!(x.shape(), vec![2, 2]);
/// assert_eq!(x.unit(1), ndarray::array![[0.0, 1.0], [0.0, 0.0]]);
/// assert_eq!(x.with_elements(vec![4.0, 3.0, 2.0, 1.0]), ndarray::array![[4.0, 3.0], [2.0, 1.0]]);
/// assert_eq!(2.5f64.with_elements(vec![7.0]), 7.0);
/// ```
pub trait Basis {
    /// The element type.
    type Elem: Real;
    /// The owned value of the same shape (what a unit tangent or cotangent is).
    type Owned;
    /// The shape (`[]` for a scalar).
    fn shape(&self) -> Vec<usize>;
    /// The unit value with a one at flat position `i` (row-major) and zeros elsewhere.
    fn unit(&self, i: usize) -> Self::Owned;
    /// The elements, row-major.
    fn elements(&self) -> Vec<Self::Elem>;
    /// A value of this shape with the elements `data` (row-major, as many).
    fn with_elements(&self, data: Vec<Self::Elem>) -> Self::Owned;
}

macro_rules! scalar_basis {
    ($($t:ty),*) => {$(
        impl Basis for $t {
            type Elem = $t;
            type Owned = $t;
            fn shape(&self) -> Vec<usize> {
                Vec::new()
            }
            fn unit(&self, _: usize) -> $t {
                1.0
            }
            fn elements(&self) -> Vec<$t> {
                vec![*self]
            }
            fn with_elements(&self, data: Vec<$t>) -> $t {
                data.first().copied().unwrap_or(0.0)
            }
        }
    )*};
}

scalar_basis!(f32, f64);

impl<A: Real, S: Data<Elem = A>, D: Dimension> Basis for ArrayBase<S, D> {
    type Elem = A;
    type Owned = Array<A, D>;
    fn shape(&self) -> Vec<usize> {
        ArrayBase::shape(self).to_vec()
    }
    fn unit(&self, i: usize) -> Array<A, D> {
        let mut e = Array::zeros(self.raw_dim());
        if let Some(v) = e.iter_mut().nth(i) {
            *v = A::lit(1.0);
        }
        e
    }
    fn elements(&self) -> Vec<A> {
        self.iter().copied().collect()
    }
    fn with_elements(&self, data: Vec<A>) -> Array<A, D> {
        Array::from_shape_vec(self.raw_dim(), data)
            .unwrap_or_else(|_| unreachable!("adjoint: a column has as many elements as its shape"))
    }
}

impl<T: Basis + ?Sized> Basis for &T {
    type Elem = T::Elem;
    type Owned = T::Owned;
    fn shape(&self) -> Vec<usize> {
        (**self).shape()
    }
    fn unit(&self, i: usize) -> T::Owned {
        (**self).unit(i)
    }
    fn elements(&self) -> Vec<T::Elem> {
        (**self).elements()
    }
    fn with_elements(&self, data: Vec<T::Elem>) -> T::Owned {
        (**self).with_elements(data)
    }
}

/// A tangent (a unit or a zero, owned) passed as its primal `Self` is: by value for
/// a scalar or an owned array, by reference for a reference. For the lifted
/// `hessian!`, which calls a child's JVP on tangents of its arguments' types.
#[doc(hidden)]
pub trait PassedLike<'t>: Basis {
    /// The tangent as the primal's type.
    type Passed;
    /// `t` as the primal's type.
    fn passed_like(t: &'t Self::Owned) -> Self::Passed;
}

macro_rules! scalar_passed {
    ($($t:ty),*) => {$(
        impl<'t> PassedLike<'t> for $t {
            type Passed = $t;
            fn passed_like(t: &'t $t) -> $t {
                *t
            }
        }
    )*};
}

scalar_passed!(f32, f64);

impl<'t, A: Real, D: Dimension> PassedLike<'t> for Array<A, D> {
    type Passed = Array<A, D>;
    fn passed_like(t: &'t Array<A, D>) -> Array<A, D> {
        t.clone()
    }
}

impl<'t, T: Basis + ?Sized> PassedLike<'t> for &T
where
    T::Owned: 't,
{
    type Passed = &'t T::Owned;
    fn passed_like(t: &'t T::Owned) -> &'t T::Owned {
        t
    }
}

/// The tangent `t` passed as `primal` is (see [`PassedLike`]).
#[doc(hidden)]
pub fn passed_like<'t, X: PassedLike<'t>>(_primal: &X, t: &'t X::Owned) -> X::Passed {
    X::passed_like(t)
}

/// The Jacobian's type for an input of type `X`: an array of `X`'s elements.
pub type Jacobian<X> = ArrayD<<X as Basis>::Elem>;

fn len(shape: &[usize]) -> usize {
    shape.iter().product()
}

fn shaped<A>(shape: Vec<usize>, data: Vec<A>) -> ArrayD<A> {
    ArrayD::from_shape_vec(IxDyn(&shape), data)
        .unwrap_or_else(|_| unreachable!("adjoint: a Jacobian has as many elements as its shape"))
}

/// Forward mode: `column(e_i)` is the derivative along the `i`-th unit tangent of
/// `x` (an output-shaped value); the columns make the Jacobian, shape `O ++ I`.
pub fn jacfwd<X: Basis, Y: Basis<Elem = X::Elem>>(
    x: &X,
    mut column: impl FnMut(X::Owned) -> Y,
) -> Jacobian<X> {
    let input = x.shape();
    let n = len(&input);
    let columns: Vec<Y> = (0..n).map(|i| column(x.unit(i))).collect();
    // Without input elements the output's shape comes from a zero tangent.
    let output = match columns.first() {
        Some(c) => c.shape(),
        None => column(x.unit(0)).shape(),
    };
    let m = len(&output);
    let mut data = vec![<X::Elem as Real>::lit(0.0); m * n];
    for (i, col) in columns.iter().enumerate() {
        for (j, v) in col.elements().into_iter().enumerate() {
            data[j * n + i] = v;
        }
    }
    let mut shape = output;
    shape.extend(input);
    shaped(shape, data)
}

/// Reverse mode: `row(e_j)` is the cotangent of `x` for the `j`-th unit cotangent of
/// the output `y`; the rows make the Jacobian, shape `O ++ I`.
pub fn jacrev<X: Basis, Y: Basis<Elem = X::Elem>, C: Basis<Elem = X::Elem>>(
    x: &X,
    y: &Y,
    mut row: impl FnMut(Y::Owned) -> C,
) -> Jacobian<X> {
    let (input, output) = (x.shape(), y.shape());
    let data: Vec<X::Elem> = (0..len(&output))
        .flat_map(|j| row(y.unit(j)).elements())
        .collect();
    let mut shape = output;
    shape.extend(input);
    shaped(shape, data)
}

/// The unit value along element `i` of `x` (what a lifted Jacobian's second order
/// runs the child's JVP along).
#[doc(hidden)]
pub fn unit<X: Basis>(x: &X, i: usize) -> X::Owned {
    x.unit(i)
}

/// How many elements `x` has.
#[doc(hidden)]
pub fn basis_len<X: Basis>(x: &X) -> usize {
    len(&x.shape())
}

/// Column `i` of a Jacobian `j` (shape `O ++ I`, `n` input elements), shaped as the
/// output `like`: the cotangent of the JVP along the `i`-th unit tangent.
#[doc(hidden)]
pub fn jacobian_column<Y: Basis>(j: &ArrayD<Y::Elem>, like: &Y, i: usize, n: usize) -> Y::Owned {
    let data: Vec<Y::Elem> = j.iter().skip(i).step_by(n.max(1)).copied().collect();
    like.with_elements(data)
}
