use adjoint::prelude::*;

#[differentiable(jvp)]
fn f(x: f64, n: i32) -> f64 {
    x.powi(n) + 1.0
}

fn main() {}
