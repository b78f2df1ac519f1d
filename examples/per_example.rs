//! Per-example gradients (what differential-privacy training clips and noises):
//! `vmap!(grad!(loss), in_axes = [None, 0, 0])` over a batch; with `axis_name` and
//! `reduce_axes`, the same gradient summed over the batch. Timed against the summed
//! gradient of the batch written with arrays, and against per-example gradients
//! written by hand with whole-batch array operations (the limit).
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

/// Every example's gradient at once: row `i` is `2 e_i (1 - y_i^2) x_i`.
fn per_example_by_hand(w: &Array1<f64>, x: &Array2<f64>, t: &Array1<f64>) -> Array2<f64> {
    let y = x.dot(w).tanh();
    let g = 2.0 * (&y - t) * (1.0 - &y * &y);
    x * &g.insert_axis(Axis(1))
}

fn main() {
    let (n, d) = (10_000, 16);
    let x = Array2::from_shape_fn((n, d), |(i, j)| ((i * 31 + j * 7) % 97) as f64 / 97.0 - 0.5);
    let t = Array1::from_shape_fn(n, |i| ((i * 13) % 17) as f64 / 17.0 - 0.5);
    let w = Array1::from_shape_fn(d, |j| (j as f64 * 0.3).sin());

    let per_example = vmap!(grad!(example_loss), in_axes = [None, 0, 0]);
    let reduced = vmap!(
        grad!(
            |w: &Array1<f64>, x: ArrayView1<f64>, t: f64| example_loss(w, x, t),
            wrt = [w],
            reduce_axes = ["batch"]
        ),
        in_axes = [None, 0, 0],
        axis_name = "batch"
    );
    let summed = grad!(batch_loss);

    let largest = |a: &Array1<f64>| a.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let g = per_example(&w, &x, &t);
    println!(
        "per-example gradients {:?}; max |sum over examples - summed| = {:.1e}, max |reduce_axes - summed| = {:.1e}, max |by hand - vmap!| = {:.1e}",
        g.shape(),
        largest(&(g.sum_axis(Axis(0)) - summed(&w, &x, &t))),
        largest(&(reduced(&w, &x, &t) - summed(&w, &x, &t))),
        (per_example_by_hand(&w, &x, &t) - &g)
            .iter()
            .fold(0.0f64, |m, v| m.max(v.abs())),
    );

    // Medians of 31 runs, in milliseconds.
    let time = |f: &dyn Fn()| {
        let mut ts: Vec<f64> = (0..31)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        ts.sort_by(f64::total_cmp);
        ts[15]
    };
    let per = time(&|| {
        std::hint::black_box(per_example(&w, &x, &t));
    });
    let red = time(&|| {
        std::hint::black_box(reduced(&w, &x, &t));
    });
    let hand = time(&|| {
        std::hint::black_box(per_example_by_hand(&w, &x, &t));
    });
    let sum = time(&|| {
        std::hint::black_box(summed(&w, &x, &t));
    });
    println!(
        "batch of {n}, {d} features: per-example grads {per:.2} ms ({:.1}x the summed grad), reduced over the batch {red:.2} ms, per-example by hand {hand:.2} ms, summed grad {sum:.2} ms",
        per / sum
    );
}
