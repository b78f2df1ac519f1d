//! Elementwise rules computed in the buffer of an operand that nothing reads
//! afterwards. The generated code hands such a temporary over by value (`(x.dot(w) +
//! b).tanh()` becomes `tanh_reusing(add_reusing(dot(&x, &w), &b))`: the product's
//! buffer takes the sum, then the `tanh`), as one writes `(x.dot(&w) + &b).mapv_into(..)`
//! by hand. Each gives what its by-reference form gives; the unary ones
//! (`tanh_reusing`, ..) are declared with their by-reference forms in `elementwise`.

use super::kernels::{self, Kernel};
use crate::value::{Real, Value};
use ndarray::{Array, ArrayBase, Data, DimMax, Dimension};

/// A value an elementwise result may be written into: an owned array (its buffer
/// is reused) or a scalar.
pub trait Reusable: Sized {
    /// The element type.
    type Elem: Real;
    /// `f` applied to every element, in place.
    fn map_in_place(self, f: impl Fn(Self::Elem) -> Self::Elem) -> Self;
    /// The vectorising kernel `K` applied to every element, in place.
    fn kernel_in_place<K: Kernel>(self) -> Self;
}

impl<A: Real> Reusable for A {
    type Elem = A;
    #[inline(always)]
    fn map_in_place(self, f: impl Fn(A) -> A) -> A {
        f(self)
    }
    #[inline(always)]
    fn kernel_in_place<K: Kernel>(self) -> A {
        K::eval(self)
    }
}

impl<A: Real, D: Dimension> Reusable for Array<A, D> {
    type Elem = A;
    #[inline]
    fn map_in_place(mut self, f: impl Fn(A) -> A) -> Self {
        self.mapv_inplace(f);
        self
    }
    #[inline]
    fn kernel_in_place<K: Kernel>(mut self) -> Self {
        kernels::in_place::<K, A, D>(&mut self);
        self
    }
}

/// `+ - * /` with the left operand handed over.
pub trait ArithReusing<Rhs: ?Sized>: Sized {
    /// The (broadcast) result, as [`Arith`](super::elementwise::Arith)'s.
    type Output;
    /// `self + rhs`.
    fn add(self, rhs: &Rhs) -> Self::Output;
    /// `self - rhs`.
    fn sub(self, rhs: &Rhs) -> Self::Output;
    /// `self * rhs`.
    fn mul(self, rhs: &Rhs) -> Self::Output;
    /// `self / rhs`.
    fn div(self, rhs: &Rhs) -> Self::Output;
}

/// `+ - * /` with the right operand handed over.
pub trait ArithReusingRhs<Lhs: ?Sized>: Sized {
    /// The (broadcast) result, as [`Arith`](super::elementwise::Arith)'s.
    type Output;
    /// `lhs + self`.
    fn add(self, lhs: &Lhs) -> Self::Output;
    /// `lhs - self`.
    fn sub(self, lhs: &Lhs) -> Self::Output;
    /// `lhs * self`.
    fn mul(self, lhs: &Lhs) -> Self::Output;
    /// `lhs / self`.
    fn div(self, lhs: &Lhs) -> Self::Output;
}

macro_rules! reusing_ops {
    ($tr:ident<$other:ty> for $ty:ty, [$($gen:tt)*], $out:ty,
     |$s:ident, $o:ident| ($l:expr) op ($r:expr)) => {
        impl<$($gen)*> $tr<$other> for $ty {
            type Output = $out;
            #[inline] fn add($s, $o: &$other) -> $out { $l + $r }
            #[inline] fn sub($s, $o: &$other) -> $out { $l - $r }
            #[inline] fn mul($s, $o: &$other) -> $out { $l * $r }
            #[inline] fn div($s, $o: &$other) -> $out { $l / $r }
        }
    };
}

// The operators on an owned array take its buffer when the result has its shape
// (ndarray's arithmetic on owned arrays), and otherwise allocate, as the
// by-reference form does; on scalars they are the scalar operators.
reusing_ops!(ArithReusing<A> for A, [A: Real], A, |self, o| (self) op (*o));
reusing_ops!(ArithReusing<A> for Array<A, D>, [A: Real, D: Dimension], Array<A, D>,
    |self, o| (self) op (*o));
reusing_ops!(ArithReusingRhs<A> for A, [A: Real], A, |self, o| (*o) op (self));
reusing_ops!(ArithReusingRhs<ArrayBase<S, D>> for A, [A: Real, S: Data<Elem = A>, D: Dimension],
    Array<A, D>, |self, o| (o) op (self));

// A scalar handed over to an operation with an array: as the by-reference form.
impl<A: Real, S: Data<Elem = A>, D: Dimension> ArithReusing<ArrayBase<S, D>> for A {
    type Output = Array<A, D>;
    #[inline]
    fn add(self, o: &ArrayBase<S, D>) -> Array<A, D> {
        super::elementwise::Arith::add(&self, o)
    }
    #[inline]
    fn sub(self, o: &ArrayBase<S, D>) -> Array<A, D> {
        super::elementwise::Arith::sub(&self, o)
    }
    #[inline]
    fn mul(self, o: &ArrayBase<S, D>) -> Array<A, D> {
        super::elementwise::Arith::mul(&self, o)
    }
    #[inline]
    fn div(self, o: &ArrayBase<S, D>) -> Array<A, D> {
        super::elementwise::Arith::div(&self, o)
    }
}

// An owned array on the right of a scalar, computed in its buffer (as ndarray's
// `f64 - array` does).
impl<A: Real, D: Dimension> ArithReusingRhs<A> for Array<A, D> {
    type Output = Array<A, D>;
    #[inline]
    fn add(self, o: &A) -> Array<A, D> {
        self + *o
    }
    #[inline]
    fn sub(self, o: &A) -> Array<A, D> {
        let a = *o;
        self.mapv_into(|v| a - v)
    }
    #[inline]
    fn mul(self, o: &A) -> Array<A, D> {
        self * *o
    }
    #[inline]
    fn div(self, o: &A) -> Array<A, D> {
        let a = *o;
        self.mapv_into(|v| a / v)
    }
}

reusing_ops!(ArithReusing<ArrayBase<S2, E>> for Array<A, D>,
    [A: Real, S2: Data<Elem = A>, D: Dimension + DimMax<E>, E: Dimension],
    Array<A, <D as DimMax<E>>::Output>, |self, o| (self) op (o));
reusing_ops!(ArithReusingRhs<ArrayBase<S, D>> for Array<A, E>,
    [A: Real, S: Data<Elem = A>, D: Dimension, E: Dimension + DimMax<D>],
    Array<A, <E as DimMax<D>>::Output>, |self, o| (o) op (self));

macro_rules! reusing_fns {
    ($($(#[$doc:meta])* $name:ident, $rhs:ident: $op:ident;)*) => {$(
        $(#[$doc])*
        #[inline]
        pub fn $name<X: ArithReusing<Y::Primal>, Y: Value>(x: X, y: &Y) -> X::Output {
            ArithReusing::$op(x, y.primal())
        }
        #[doc = concat!("[`", stringify!($name), "`] with the right operand handed over.")]
        #[inline]
        pub fn $rhs<X: Value, Y: ArithReusingRhs<X::Primal>>(x: &X, y: Y) -> Y::Output {
            ArithReusingRhs::$op(y, x.primal())
        }
    )*};
}
reusing_fns! {
    /// `x + y` ([`add`](super::elementwise::add)) with the left operand handed over.
    add_reusing, add_reusing_rhs: add;
    /// `x - y` ([`sub`](super::elementwise::sub)) with the left operand handed over.
    sub_reusing, sub_reusing_rhs: sub;
    /// `x * y` ([`mul`](super::elementwise::mul)) with the left operand handed over.
    mul_reusing, mul_reusing_rhs: mul;
    /// `x / y` ([`div`](super::elementwise::div)) with the left operand handed over.
    div_reusing, div_reusing_rhs: div;
}
