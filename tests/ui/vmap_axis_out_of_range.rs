use adjoint::prelude::*;
use ndarray::Array1;

#[differentiable]
fn weighted(w: f64, x: f64) -> f64 {
    w * x
}

fn main() {
    let (w, x) = (Array1::<f64>::zeros(3), Array1::<f64>::zeros(3));
    // A 1-D array has no axis 1.
    let _ = vmap!(grad!(weighted), in_axes = [1, 0])(&w, &x);
}
