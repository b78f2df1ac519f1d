use adjoint::prelude::*;
use ndarray::Array1;

#[differentiable(jvp)]
fn f(x: &Array1<f64>, s: f64) -> f64 {
    x.mapv(|v| (v * s).tanh()).sum()
}

fn main() {}
