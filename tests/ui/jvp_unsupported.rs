use adjoint::prelude::*;

#[differentiable(jvp)]
fn pair(x: f64) -> (f64, f64) {
    (x * x, x + 1.0)
}

#[differentiable(jvp)]
fn f(x: f64) -> f64 {
    let (a, b) = pair(x);
    a * b
}

fn main() {}
