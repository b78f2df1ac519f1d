use adjoint::prelude::*;
use ndarray::Array2;

#[differentiable(jvp)]
fn f(logits: &Array2<f64>, labels: &Array2<f64>) -> f64 {
    losses::softmax_cross_entropy(logits, labels).sum()
}

fn main() {}
