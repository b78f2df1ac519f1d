use adjoint::prelude::*;

#[differentiable(jvp)]
fn f(x: f64) -> f64 {
    let mut s = x;
    for _ in 0..3 {
        s = s * x;
    }
    s
}

fn main() {}
