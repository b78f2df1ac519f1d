use adjoint::prelude::*;

#[differentiable]
fn f(x: &ndarray::Array1<f64>) -> f64 {
    let mut y = x.to_owned();
    y[0] = 2.0;
    y.sum()
}

fn main() {}
