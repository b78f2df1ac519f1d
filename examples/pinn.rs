//! A physics-informed fit: a small network `u(x)` trained so that `du/dx = cos x`
//! on [-1.5, 1.5] with `u(0) = 0`, whose solution is `sin x`. The loss holds the
//! network's input gradient, `grad!(field)(..)` inside a `#[differentiable]`
//! function, so each training step differentiates a gradient: second order, as
//! `jax.grad` of a loss that calls `jax.grad`.
//!
//! Run: `cargo run -p adjoint-examples --example pinn`

use adjoint::prelude::*;
use ndarray::{Array1, Array2, Axis};

/// The network `tanh(x w1 + b1) w2` at each row of `x`, summed: its gradient in `x`
/// is `du/dx` at every point. `(jvp)`: its gradient is differentiated again.
#[differentiable(jvp)]
fn field(x: &Array2<f64>, w1: &Array2<f64>, b1: &Array1<f64>, w2: &Array2<f64>) -> f64 {
    (x.dot(w1) + b1).tanh().dot(w2).sum()
}

/// The residual of `u' = cos x` at the points, and `u(0)`'s distance from 0.
#[differentiable]
fn loss(
    w1: &Array2<f64>,
    b1: &Array1<f64>,
    w2: &Array2<f64>,
    #[no_grad] x: &Array2<f64>,
    #[no_grad] origin: &Array2<f64>,
) -> f64 {
    let (du, _, _, _) = grad!(field)(x, w1, b1, w2);
    let r = &du - &no_grad(x.cos());
    let u0 = field(origin, w1, b1, w2);
    (&r * &r).mean().unwrap() + u0 * u0
}

fn main() {
    let x = Array1::linspace(-1.5, 1.5, 32).insert_axis(Axis(1));
    let origin = Array2::zeros((1, 1));
    // A deterministic start: a fixed pattern, no random generator needed.
    let hidden = 12;
    let mut w1 = Array2::from_shape_fn((1, hidden), |(_, j)| (j as f64 * 0.37).sin() * 1.5);
    let mut b1 = Array1::from_shape_fn(hidden, |j| (j as f64 * 0.61).cos() * 0.5);
    let mut w2 = Array2::from_shape_fn((hidden, 1), |(j, _)| (j as f64 * 0.23).sin() * 0.5);

    let lr = 0.05;
    for step in 0..=1500 {
        let (l, (gw1, gb1, gw2)) = value_and_grad!(loss)(&w1, &b1, &w2, &x, &origin);
        if step % 300 == 0 {
            println!("step {step:>4}: loss = {l:.6}");
        }
        w1 = w1 - lr * gw1;
        b1 = b1 - lr * gb1;
        w2 = w2 - lr * gw2;
    }
    // u(x) against sin x on the points.
    let err = x
        .rows()
        .into_iter()
        .map(|p| {
            let row = p.to_owned().insert_axis(Axis(0));
            (field(&row, &w1, &b1, &w2) - p[0].sin()).abs()
        })
        .fold(0.0, f64::max);
    println!("largest |u(x) - sin x| on the points: {err:.4}");
}
