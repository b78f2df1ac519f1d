//! What the transforms `grad!`, `value_and_grad!` and `vjp!` need at run time: the
//! seed cotangent of a scalar output, and the split of `(value, aux)` outputs.

use crate::value::Value;

/// An output `grad!` can differentiate: a scalar, seeded with `1`.
#[diagnostic::on_unimplemented(
    message = "grad! needs a scalar output, but the function returns `{Self}`",
    label = "not an f32 or f64",
    note = "use vjp! for a function with a non-scalar output, and pass the output's cotangent yourself"
)]
pub trait ScalarOutput: Value {
    /// The cotangent `1`.
    fn one(&self) -> Self::Cot;
    /// The cotangent `1`.
    fn unit() -> Self::Cot
    where
        Self: Sized;
}

impl ScalarOutput for f32 {
    #[inline(always)]
    fn one(&self) -> f32 {
        1.0
    }
    #[inline(always)]
    fn unit() -> f32 {
        1.0
    }
}

impl ScalarOutput for f64 {
    #[inline(always)]
    fn one(&self) -> f64 {
        1.0
    }
    #[inline(always)]
    fn unit() -> f64 {
        1.0
    }
}

/// The seed of `grad!`: implemented exactly when `Self` is a scalar output, so that
/// the generated `__f_grad` of a function with a non-scalar output compiles, and
/// calling it reports [`ScalarOutput`]'s message.
#[diagnostic::on_unimplemented(
    message = "grad! needs a scalar output, but the function returns `{Self}`",
    label = "not an f32 or f64",
    note = "use vjp! for a function with a non-scalar output, and pass the output's cotangent yourself"
)]
pub trait GradOf<O>: Value {
    /// The cotangent `1`.
    fn grad_seed(&self) -> Self::Cot;
    /// The cotangent `1`, without the value (for a gradient that never computes it).
    fn seed() -> Self::Cot
    where
        Self: Sized;
}

impl<T: ScalarOutput> GradOf<T> for T {
    #[inline(always)]
    fn grad_seed(&self) -> T::Cot {
        self.one()
    }
    #[inline(always)]
    fn seed() -> T::Cot {
        T::unit()
    }
}

/// The seed `1` of a scalar output.
#[inline(always)]
pub fn grad_seed<T: ScalarOutput>(out: &T) -> T::Cot {
    out.one()
}

/// Outputs whose tangent `jvp!` assembles from vector-Jacobian products: one unit
/// cotangent per element.
pub trait Basis: Value {
    /// The number of elements.
    fn basis_len(&self) -> usize;
    /// The cotangent with a one at element `k` and zeros elsewhere.
    fn unit(&self, k: usize) -> Self::Cot;
    /// The tangent with element `k` equal to `values[k]`.
    fn tangent_from(&self, values: &[f64]) -> Self::Cot;
}

macro_rules! scalar_basis {
    ($($t:ty),*) => {$(
        impl Basis for $t {
            fn basis_len(&self) -> usize {
                1
            }
            fn unit(&self, _k: usize) -> $t {
                1.0
            }
            fn tangent_from(&self, values: &[f64]) -> $t {
                values.first().copied().unwrap_or(0.0) as $t
            }
        }
    )*};
}
scalar_basis!(f32, f64);

impl<A: crate::value::Real, S: ndarray::Data<Elem = A>, D: ndarray::Dimension> Basis
    for ndarray::ArrayBase<S, D>
{
    fn basis_len(&self) -> usize {
        self.len()
    }
    fn unit(&self, k: usize) -> ndarray::Array<A, D> {
        let mut u = ndarray::Array::zeros(self.raw_dim());
        if let Some(v) = u.iter_mut().nth(k) {
            *v = A::one();
        }
        u
    }
    fn tangent_from(&self, values: &[f64]) -> ndarray::Array<A, D> {
        let mut out = ndarray::Array::zeros(self.raw_dim());
        for (o, v) in out.iter_mut().zip(values) {
            *o = A::lit(*v);
        }
        out
    }
}

/// `<cotangent, tangent>`: how much a tangent moves an output along a cotangent.
pub trait Inner<T: ?Sized> {
    /// The inner product.
    fn inner(&self, tangent: &T) -> f64;
}

impl Inner<f64> for f64 {
    fn inner(&self, t: &f64) -> f64 {
        self * t
    }
}

impl Inner<f32> for f32 {
    fn inner(&self, t: &f32) -> f64 {
        (self * t) as f64
    }
}

impl<A: crate::value::Real, D: ndarray::Dimension, S: ndarray::Data<Elem = A>>
    Inner<ndarray::ArrayBase<S, D>> for ndarray::Array<A, D>
{
    fn inner(&self, t: &ndarray::ArrayBase<S, D>) -> f64 {
        self.iter()
            .zip(t.iter())
            .map(|(a, b)| a.as_f64() * b.as_f64())
            .sum()
    }
}

impl Inner<crate::scope::Variables> for crate::scope::Variables {
    /// The sum over the leaves both trees hold.
    fn inner(&self, t: &crate::scope::Variables) -> f64 {
        let mut total = 0.0;
        for c in self.collections() {
            for (path, leaf) in self.iter(c) {
                if let Some(other) = t.get(c, path) {
                    total += leaf
                        .to_f64_vec()
                        .iter()
                        .zip(other.to_f64_vec())
                        .map(|(a, b)| a * b)
                        .sum::<f64>();
                }
            }
        }
        total
    }
}

/// The cotangent with a one at element `k` of `out`.
pub fn unit_cot<T: Basis>(out: &T, k: usize) -> T::Cot {
    out.unit(k)
}

/// The number of elements of `out`.
pub fn basis_len<T: Basis>(out: &T) -> usize {
    out.basis_len()
}

/// The tangent of `out` with the given elements.
pub fn tangent_from<T: Basis>(out: &T, values: &[f64]) -> T::Cot {
    out.tangent_from(values)
}

/// `<cotangent, tangent>`.
pub fn inner<C: Inner<T>, T: ?Sized>(cot: &C, tangent: &T) -> f64 {
    cot.inner(tangent)
}
