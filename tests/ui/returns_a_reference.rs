use adjoint::prelude::*;
use ndarray::{Array1, ArrayView1};

#[differentiable]
fn pass_through(x: &Array1<f64>) -> &Array1<f64> {
    x
}

#[differentiable]
fn first(x: &Array1<f64>) -> ArrayView1<'_, f64> {
    x.slice(ndarray::s![0..1])
}

fn main() {}
