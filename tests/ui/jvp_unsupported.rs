use adjoint::prelude::*;

#[differentiable]
fn helper(x: f64) -> f64 {
    x * x
}

#[differentiable(jvp)]
fn f(x: f64) -> f64 {
    let mut s = x;
    for _ in 0..3 {
        s = s * helper(x);
    }
    s
}

fn main() {}
