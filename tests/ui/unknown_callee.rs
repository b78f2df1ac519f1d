use adjoint::prelude::*;

fn plain(x: f64) -> f64 {
    x * 2.0
}

fn plain_pair(t: (f64, f64)) -> f64 {
    t.0 * t.1
}

#[differentiable]
fn f(x: f64) -> f64 {
    plain(x) + 1.0
}

// A differentiated value inside a tuple argument is differentiated too (it was
// once passed as a constant, silently).
#[differentiable]
fn g(x: f64) -> f64 {
    plain_pair((x, 2.0))
}

fn main() {}
