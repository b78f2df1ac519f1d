use adjoint::prelude::*;

#[differentiable]
fn f(x: Vec<f64>) -> f64 {
    x[0]
}

fn use_it() {
    let _ = grad!(f)(vec![1.0]);
}

fn main() {}
