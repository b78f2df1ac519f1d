use adjoint::prelude::*;

#[differentiable]
fn f(x: f64) -> f64 {
    let mut s = x;
    for _ in 0..3 {
        s = s * x;
        if s > 1.0 {
            return s;
        }
    }
    s
}

fn main() {}
