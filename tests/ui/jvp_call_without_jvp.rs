use adjoint::prelude::*;

#[differentiable]
fn helper(x: f64) -> f64 {
    x * x
}

#[differentiable(jvp)]
fn f(x: f64) -> f64 {
    helper(x) + x
}

fn main() {}
