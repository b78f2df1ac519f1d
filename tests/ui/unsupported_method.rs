use adjoint::prelude::*;

#[differentiable]
fn f(x: &ndarray::Array1<f64>) -> f64 {
    x.product()
}

fn main() {}
