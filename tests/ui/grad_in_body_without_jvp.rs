use adjoint::prelude::*;
use ndarray::Array1;

// `grad!(f)(..)` inside a differentiated body needs `f`'s forward mode: its
// pullback is `f`'s Hessian-vector product.
#[differentiable]
fn inner(x: &Array1<f64>) -> f64 {
    (x * x).sum()
}

#[differentiable]
fn penalty(x: &Array1<f64>) -> f64 {
    let g = grad!(inner)(x);
    (&g * &g).sum()
}

fn main() {}
