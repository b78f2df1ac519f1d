use adjoint::prelude::*;

#[differentiable]
fn f(x: &ndarray::Array1<f64>) -> f64 {
    let m = x.mean();
    m.unwrap()
}

fn main() {}
