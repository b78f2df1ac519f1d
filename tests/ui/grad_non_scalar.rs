use adjoint::prelude::*;

#[differentiable]
fn f(x: &ndarray::Array1<f64>) -> ndarray::Array1<f64> {
    x * 2.0
}

fn use_it() {
    let x = ndarray::array![1.0, 2.0];
    let _ = grad!(f)(&x);
}

fn main() {}
