//! Per-example gradients (what differential-privacy training clips and noises):
//! `vmap!(grad!(loss), in_axes = [None, 0, 0])` over a batch, timed against the
//! summed gradient of the same batch.
//!
//! Run: `cargo run --release -p adjoint-examples --example per_example`

use adjoint::prelude::*;
use ndarray::{Array1, Array2, ArrayView1, Axis};
use std::time::Instant;

#[differentiable]
fn example_loss(w: &Array1<f64>, #[no_grad] x: ArrayView1<f64>, #[no_grad] t: f64) -> f64 {
    let e = x.dot(w).tanh() - t;
    e * e
}

#[differentiable]
fn batch_loss(w: &Array1<f64>, #[no_grad] x: &Array2<f64>, #[no_grad] t: &Array1<f64>) -> f64 {
    let e = x.dot(w).tanh() - t;
    (&e * &e).sum()
}

fn main() {
    let (n, d) = (10_000, 16);
    let x = Array2::from_shape_fn((n, d), |(i, j)| ((i * 31 + j * 7) % 97) as f64 / 97.0 - 0.5);
    let t = Array1::from_shape_fn(n, |i| ((i * 13) % 17) as f64 / 17.0 - 0.5);
    let w = Array1::from_shape_fn(d, |j| (j as f64 * 0.3).sin());

    let per_example = vmap!(grad!(example_loss), in_axes = [None, 0, 0]);
    let summed = grad!(batch_loss);
    let check = per_example(&w, &x, &t).sum_axis(Axis(0)) - summed(&w, &x, &t);
    println!(
        "max |sum of per-example grads - summed grad| = {:.2e}",
        check.iter().fold(0.0f64, |m, v| m.max(v.abs()))
    );

    let time = |f: &dyn Fn()| {
        let runs = 20;
        let start = Instant::now();
        for _ in 0..runs {
            f();
        }
        start.elapsed().as_secs_f64() / runs as f64 * 1e3
    };
    let per = time(&|| {
        std::hint::black_box(per_example(&w, &x, &t));
    });
    let sum = time(&|| {
        std::hint::black_box(summed(&w, &x, &t));
    });
    println!(
        "batch of {n}, {d} features: per-example grads {per:.2} ms, summed grad {sum:.2} ms ({:.1}x)",
        per / sum
    );
}
