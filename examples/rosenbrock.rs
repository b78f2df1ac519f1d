//! The gradient of the extended Rosenbrock function, written as a plain scalar loop,
//! and a few steps of gradient descent on it.
//!
//! Run: `cargo run -p adjoint-examples --example rosenbrock`

use adjoint::prelude::*;
use ndarray::Array1;

/// `sum_i 100 (x[i+1] - x[i]^2)^2 + (1 - x[i])^2`.
#[differentiable]
fn rosenbrock(x: &Array1<f64>) -> f64 {
    let mut s = 0.0;
    for i in 0..x.len() - 1 {
        let a = x[i + 1] - x[i] * x[i];
        let b = 1.0 - x[i];
        s += 100.0 * a * a + b * b;
    }
    s
}

fn main() {
    let mut x = Array1::from_vec(vec![-1.2, 1.0, -1.2, 1.0]);
    let (value, grad) = value_and_grad!(rosenbrock)(&x);
    println!("f({x}) = {value:.4}");
    println!("grad f = {grad:.4}");

    // Plain gradient descent: the gradient is ordinary Rust, called like any function.
    let lr = 1e-3;
    for step in 0..=20_000 {
        let (value, grad) = value_and_grad!(rosenbrock)(&x);
        if step % 5_000 == 0 {
            println!("step {step:>6}: f = {value:.6}");
        }
        x = x - lr * grad;
    }
    println!("minimum near {x:.4} (exact: [1, 1, 1, 1])");
}
