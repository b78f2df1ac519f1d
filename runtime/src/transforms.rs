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
}

impl ScalarOutput for f32 {
    #[inline(always)]
    fn one(&self) -> f32 {
        1.0
    }
}

impl ScalarOutput for f64 {
    #[inline(always)]
    fn one(&self) -> f64 {
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
}

impl<T: ScalarOutput> GradOf<T> for T {
    #[inline(always)]
    fn grad_seed(&self) -> T::Cot {
        self.one()
    }
}

/// The seed `1` of a scalar output.
#[inline(always)]
pub fn grad_seed<T: ScalarOutput>(out: &T) -> T::Cot {
    out.one()
}
