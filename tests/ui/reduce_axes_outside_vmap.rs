use adjoint::prelude::*;
use ndarray::{Array1, ArrayView1};

#[differentiable]
fn loss(w: &Array1<f64>, #[no_grad] x: ArrayView1<f64>) -> f64 {
    x.dot(w).powi(2)
}

fn main() {
    let w = Array1::zeros(3);
    let x = ndarray::Array2::<f64>::zeros((4, 3));
    // Outside vmap!, no axis is named.
    let _ = grad!(|w: &Array1<f64>, x: ArrayView1<f64>| loss(w, x), wrt = [w], reduce_axes = ["batch"])(&w, x.row(0));
    // The axis must be the vmap!'s own.
    let _ = vmap!(
        grad!(|w: &Array1<f64>, x: ArrayView1<f64>| loss(w, x), wrt = [w], reduce_axes = ["time"]),
        in_axes = [None, 0],
        axis_name = "batch"
    )(&w, &x);
    // A function path does not say which cotangents belong to broadcast values.
    let _ = vmap!(grad!(loss, reduce_axes = ["batch"]), in_axes = [None, 0], axis_name = "batch")(&w, &x);
}
