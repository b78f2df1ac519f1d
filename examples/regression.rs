//! Fitting a small regression model by gradient descent: a one-hidden-layer
//! network, its mean squared error, and the gradient of the loss with respect to
//! every parameter from one `value_and_grad!`.
//!
//! Run: `cargo run -p adjoint-examples --example regression`

use adjoint::prelude::*;
use ndarray::{Array1, Array2, Axis};

/// Mean squared error of `tanh(x w1 + b1) w2 + b2` against `y`.
#[differentiable]
fn loss(
    w1: &Array2<f64>,
    b1: &Array1<f64>,
    w2: &Array1<f64>,
    b2: f64,
    #[no_grad] x: &Array2<f64>,
    #[no_grad] y: &Array1<f64>,
) -> f64 {
    let h = (x.dot(w1) + b1).tanh();
    let pred = h.dot(w2) + b2;
    let err = pred - y;
    (&err * &err).mean().unwrap()
}

fn main() {
    // y = sin(3 x) on [-1, 1], 64 points.
    let x = Array1::linspace(-1.0, 1.0, 64).insert_axis(Axis(1));
    let y = x.column(0).mapv(|v: f64| (3.0 * v).sin());
    // A deterministic start: a fixed pattern, no random generator needed.
    let hidden = 16;
    let mut w1 = Array2::from_shape_fn((1, hidden), |(_, j)| (j as f64 * 0.37).sin() * 2.0);
    let mut b1 = Array1::from_shape_fn(hidden, |j| (j as f64 * 0.61).cos());
    let mut w2 = Array1::from_shape_fn(hidden, |j| (j as f64 * 0.23).sin() * 0.5);
    let mut b2 = 0.0;

    let lr = 0.1;
    for step in 0..=3000 {
        let (l, (gw1, gb1, gw2, gb2)) = value_and_grad!(loss)(&w1, &b1, &w2, b2, &x, &y);
        if step % 500 == 0 {
            println!("step {step:>4}: mse = {l:.6}");
        }
        w1 = w1 - lr * gw1;
        b1 = b1 - lr * gb1;
        w2 = w2 - lr * gw2;
        b2 -= lr * gb2;
    }
}
