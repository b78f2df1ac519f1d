use adjoint::prelude::*;

// A rule's bounds and parameters are constants: differentiating with respect to
// them would silently give zero.
#[differentiable]
fn clamped(x: f64, lo: f64) -> f64 {
    x.clamp(lo, 1.0)
}

#[differentiable]
fn learned_alpha(x: &ndarray::Array1<f64>, alpha: f64) -> f64 {
    nn::elu(x, alpha).sum()
}

fn main() {}
