//! A gradient checker: central differences in f64, in the spirit of JAX's
//! `check_vjp`, for testing generated gradients and users' `#[custom_vjp]` rules.

use crate::value::Real;
use crate::variables::Leaf;
use ndarray::{Array, Dimension};

/// Values that flatten to a list of `f64`s: scalars, owned arrays, and tuples of them.
///
/// ```
/// use adjoint::check::Params;
/// let mut flat = Vec::new();
/// (1.0, ndarray::arr1(&[2.0, 3.0])).flatten(&mut flat);
/// assert_eq!(flat, vec![1.0, 2.0, 3.0]);
/// ```
pub trait Params: Sized {
    /// Appends every element, in order.
    fn flatten(&self, out: &mut Vec<f64>);
    /// A value of `self`'s shape holding the next elements of `flat`.
    fn unflatten(&self, flat: &mut dyn Iterator<Item = f64>) -> Self;
    /// Appends the shape of every leaf (`[]` for a scalar), in order.
    fn shapes(&self, out: &mut Vec<Vec<usize>>);
}

impl<T: Real> Params for T {
    fn flatten(&self, out: &mut Vec<f64>) {
        out.push(self.as_f64());
    }
    fn unflatten(&self, flat: &mut dyn Iterator<Item = f64>) -> Self {
        T::lit(flat.next().unwrap_or(0.0))
    }
    fn shapes(&self, out: &mut Vec<Vec<usize>>) {
        out.push(Vec::new());
    }
}

impl<A: Real, D: Dimension> Params for Array<A, D> {
    fn flatten(&self, out: &mut Vec<f64>) {
        out.extend(self.iter().map(|v| v.as_f64()));
    }
    fn unflatten(&self, flat: &mut dyn Iterator<Item = f64>) -> Self {
        self.map(|_| A::lit(flat.next().unwrap_or(0.0)))
    }
    fn shapes(&self, out: &mut Vec<Vec<usize>>) {
        out.push(self.shape().to_vec());
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
            fn shapes(&self, out: &mut Vec<Vec<usize>>) {
                $(self.$i.shapes(out);)+
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

/// A module's variables (and their gradients) as parameters to check: every float
/// leaf in [`leaves`](crate::Variables::leaves) order; integer leaves (step
/// counters) are neither perturbed nor compared. A gradient from `grad!` holds
/// `params` only: compare it against `vars.only(&["params"])` when the module has
/// other collections.
///
/// ```
/// use adjoint::check::{check_grad, Tolerance};
/// use adjoint::Variables;
/// let vars = Variables::new()
///     .with("params", "w", ndarray::arr1(&[0.5, -1.0]).into_shared()).unwrap()
///     .with("params", "b", 0.25).unwrap();
/// let loss = |v: &Variables| {
///     let w: ndarray::Array1<f64> = v.read("params", "w").unwrap();
///     let b: f64 = v.read("params", "b").unwrap();
///     (&w * &w).sum() * b
/// };
/// // d/dw = 2 w b, d/db = |w|^2
/// let grads = Variables::new()
///     .with("params", "w", ndarray::arr1(&[0.25, -0.5]).into_shared()).unwrap()
///     .with("params", "b", 1.25).unwrap();
/// check_grad(loss, &vars, &grads, Tolerance::default()).unwrap();
/// ```
impl Params for crate::Variables {
    fn flatten(&self, out: &mut Vec<f64>) {
        for (_, _, leaf) in self.leaves() {
            if leaf.kind() != "integer" {
                out.extend(leaf.to_f64_vec());
            }
        }
    }
    fn unflatten(&self, flat: &mut dyn Iterator<Item = f64>) -> Self {
        self.map_leaves(|_, _, leaf| {
            if leaf.kind() == "integer" {
                return leaf.clone();
            }
            let mut values: Vec<f64> = (&mut *flat).take(leaf.len()).collect();
            values.resize(leaf.len(), 0.0);
            let shape = ndarray::IxDyn(leaf.shape());
            let array = ndarray::ArrayD::from_shape_vec(shape, values)
                .expect("as many values as the leaf's elements, in row-major order");
            match leaf {
                Leaf::F32(_) => Leaf::F32(array.mapv(|v| v as f32).into_shared()),
                _ => Leaf::F64(array.into_shared()),
            }
        })
    }
    fn shapes(&self, out: &mut Vec<Vec<usize>>) {
        for (_, _, leaf) in self.leaves() {
            if leaf.kind() != "integer" {
                out.push(leaf.shape().to_vec());
            }
        }
    }
}

/// Tolerances of [`check_vjp`] and [`check_grad`].
///
/// ```
/// use adjoint::check::Tolerance;
/// // Looser, for f32 code.
/// let tol = Tolerance { rtol: 1e-3, atol: 1e-4, ..Tolerance::default() };
/// assert_eq!(tol.step, 1e-6);
/// ```
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

/// Why a claimed gradient or vector-Jacobian product was rejected.
///
/// ```
/// use adjoint::check::{check_grad, GradCheckError, Tolerance};
/// let f = |x: &f64| x * x;
/// let err = check_grad(f, &3.0, &5.0, Tolerance::default()).unwrap_err();
/// assert!(matches!(err, GradCheckError::Mismatch { index: 0, .. }));
/// ```
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GradCheckError {
    /// A component disagrees with finite differences.
    #[error(
        "gradient check failed at input element {index}: analytic {analytic:e}, central difference {numeric:e}"
    )]
    Mismatch {
        /// Position of the input element, in [`Params::flatten`] order.
        index: usize,
        /// The cotangent under test.
        analytic: f64,
        /// The central difference.
        numeric: f64,
    },
    /// The claimed cotangent (or the output's cotangent) is not shaped like the
    /// input (or the output).
    #[error("gradient check: the {what} has shapes {found:?}, but {expected:?} are expected")]
    Shape {
        /// `"claimed cotangent"` or `"output cotangent"`.
        what: &'static str,
        /// The leaves' shapes it should have.
        expected: Vec<Vec<usize>>,
        /// The leaves' shapes it has.
        found: Vec<Vec<usize>>,
    },
}

/// `Err` when `value` is not shaped like `like`.
fn same_shapes<P: Params, Q: Params>(
    what: &'static str,
    like: &P,
    value: &Q,
) -> Result<(), GradCheckError> {
    let (mut expected, mut found) = (Vec::new(), Vec::new());
    like.shapes(&mut expected);
    value.shapes(&mut found);
    if expected == found {
        Ok(())
    } else {
        Err(GradCheckError::Shape {
            what,
            expected,
            found,
        })
    }
}

/// Checks `x_ct`, a claimed vector-Jacobian product `J(x)^T ct` of `f`, element by
/// element against `<ct, (f(x + h e_i) - f(x - h e_i)) / 2h>`.
///
/// # Errors
/// [`GradCheckError::Shape`] when `x_ct` is not shaped like `x` or `ct` like `f(x)`;
/// [`GradCheckError::Mismatch`] at the first element that disagrees.
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
    same_shapes("claimed cotangent", x, x_ct)?;
    same_shapes("output cotangent", &f(x), ct)?;
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
        let analytic = claimed[i];
        let err = (analytic - numeric).abs();
        // Written so that a NaN on either side fails the check.
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        let fails = !(err <= tol.atol + tol.rtol * analytic.abs().max(numeric.abs()));
        if fails {
            return Err(GradCheckError::Mismatch {
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
/// # Errors
/// As [`check_vjp`]: a gradient not shaped like `x`, or an element that disagrees.
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

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn a_gradient_not_shaped_like_the_input_is_rejected() {
        let f = |x: &ndarray::Array1<f64>| x.sum();
        let x = array![1.0, 2.0];
        let err = check_grad(f, &x, &array![1.0, 1.0, 5.0], Tolerance::default());
        assert_eq!(
            err.unwrap_err().to_string(),
            "gradient check: the claimed cotangent has shapes [[3]], but [[2]] are expected"
        );
        check_grad(f, &x, &array![1.0, 1.0], Tolerance::default()).unwrap();
    }
}
