//! A gradient checker: central differences in f64, in the spirit of JAX's
//! `check_vjp`, for testing generated gradients and users' `#[custom_vjp]` rules.

use crate::value::Real;
use ndarray::{Array, Dimension};
use std::fmt;

/// Values that flatten to a list of `f64`s: scalars, owned arrays, and tuples of them.
pub trait Params: Sized {
    /// Appends every element, in order.
    fn flatten(&self, out: &mut Vec<f64>);
    /// A value of `self`'s shape holding the next elements of `flat`.
    fn unflatten(&self, flat: &mut dyn Iterator<Item = f64>) -> Self;
}

impl<T: Real> Params for T {
    fn flatten(&self, out: &mut Vec<f64>) {
        out.push(self.as_f64());
    }
    fn unflatten(&self, flat: &mut dyn Iterator<Item = f64>) -> Self {
        T::lit(flat.next().unwrap_or(0.0))
    }
}

impl<A: Real, D: Dimension> Params for Array<A, D> {
    fn flatten(&self, out: &mut Vec<f64>) {
        out.extend(self.iter().map(|v| v.as_f64()));
    }
    fn unflatten(&self, flat: &mut dyn Iterator<Item = f64>) -> Self {
        self.map(|_| A::lit(flat.next().unwrap_or(0.0)))
    }
}

macro_rules! tuple_params {
    ($($t:ident $i:tt),+) => {
        impl<$($t: Params),+> Params for ($($t,)+) {
            fn flatten(&self, out: &mut Vec<f64>) {
                $(self.$i.flatten(out);)+
            }
            fn unflatten(&self, flat: &mut dyn Iterator<Item = f64>) -> Self {
                ($(self.$i.unflatten(flat),)+)
            }
        }
    };
}
tuple_params!(A 0);
tuple_params!(A 0, B 1);
tuple_params!(A 0, B 1, C 2);
tuple_params!(A 0, B 1, C 2, D 3);
tuple_params!(A 0, B 1, C 2, D 3, E 4);
tuple_params!(A 0, B 1, C 2, D 3, E 4, F 5);

/// Tolerances of [`check_vjp`] and [`check_grad`].
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    /// Relative step of the central difference.
    pub step: f64,
    /// Allowed relative error.
    pub rtol: f64,
    /// Allowed absolute error.
    pub atol: f64,
}

impl Default for Tolerance {
    /// Suited to f64 functions: step `1e-6`, `rtol = 1e-6`, `atol = 1e-7`.
    fn default() -> Self {
        Tolerance {
            step: 1e-6,
            rtol: 1e-6,
            atol: 1e-7,
        }
    }
}

/// A gradient component that disagrees with finite differences.
#[derive(Debug, Clone, PartialEq)]
pub struct GradCheckError {
    /// Position of the input element, in [`Params::flatten`] order.
    pub index: usize,
    /// The cotangent under test.
    pub analytic: f64,
    /// The central difference.
    pub numeric: f64,
}

impl fmt::Display for GradCheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "gradient check failed at input element {}: analytic {:e}, central difference {:e}",
            self.index, self.analytic, self.numeric
        )
    }
}

impl std::error::Error for GradCheckError {}

/// Checks `x_ct`, a claimed vector-Jacobian product `J(x)^T ct` of `f`, element by
/// element against `<ct, (f(x + h e_i) - f(x - h e_i)) / 2h>`.
///
/// ```
/// use adjoint::check::{check_vjp, Tolerance};
/// use ndarray::array;
/// let f = |x: &ndarray::Array1<f64>| x.mapv(f64::sin);
/// let x = array![0.1, 0.2];
/// let ct = array![1.0, 2.0];
/// let x_ct = x.mapv(f64::cos) * &ct;
/// check_vjp(f, &x, &ct, &x_ct, Tolerance::default()).unwrap();
/// ```
pub fn check_vjp<X: Params, Y: Params>(
    f: impl Fn(&X) -> Y,
    x: &X,
    ct: &Y,
    x_ct: &X,
    tol: Tolerance,
) -> Result<(), GradCheckError> {
    let mut flat = Vec::new();
    x.flatten(&mut flat);
    let mut claimed = Vec::new();
    x_ct.flatten(&mut claimed);
    let mut ct_flat = Vec::new();
    ct.flatten(&mut ct_flat);
    let eval = |flat: &[f64]| {
        let y = f(&x.unflatten(&mut flat.iter().copied()));
        let mut out = Vec::new();
        y.flatten(&mut out);
        out.iter().zip(&ct_flat).map(|(y, c)| y * c).sum::<f64>()
    };
    for i in 0..flat.len() {
        let h = tol.step * flat[i].abs().max(1.0);
        let mut plus = flat.clone();
        plus[i] += h;
        let mut minus = flat.clone();
        minus[i] -= h;
        let numeric = (eval(&plus) - eval(&minus)) / (2.0 * h);
        let analytic = claimed.get(i).copied().unwrap_or(f64::NAN);
        let err = (analytic - numeric).abs();
        // Written so that a NaN on either side fails the check.
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        let fails = !(err <= tol.atol + tol.rtol * analytic.abs().max(numeric.abs()));
        if fails {
            return Err(GradCheckError {
                index: i,
                analytic,
                numeric,
            });
        }
    }
    Ok(())
}

/// Checks `grad`, a claimed gradient of the scalar function `f` at `x`.
///
/// ```
/// use adjoint::check::{check_grad, Tolerance};
/// let f = |&(x, y): &(f64, f64)| x * y.sin();
/// let (x, y) = (0.5, 1.5);
/// check_grad(f, &(x, y), &(y.sin(), x * y.cos()), Tolerance::default()).unwrap();
/// ```
pub fn check_grad<X: Params>(
    f: impl Fn(&X) -> f64,
    x: &X,
    grad: &X,
    tol: Tolerance,
) -> Result<(), GradCheckError> {
    check_vjp(f, x, &1.0, grad, tol)
}
