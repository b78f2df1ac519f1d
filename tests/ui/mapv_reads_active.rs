use adjoint::prelude::*;

#[differentiable]
fn f(x: &ndarray::Array1<f64>, k: f64) -> f64 {
    x.mapv(|v| v * k).sum()
}

fn main() {}
