use adjoint::prelude::*;

#[differentiable]
fn too_few(x: f64, a: &ndarray::Array2<f64>) -> f64 {
    x.powi() + a.sum_axis().sum() + a.row().sum()
}

#[differentiable]
fn too_many(x: f64) -> f64 {
    x.sin(2.0)
}

fn main() {}
