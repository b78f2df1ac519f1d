use adjoint::prelude::*;

#[differentiable]
fn f(x: f64) -> f64 {
    fn inner(v: f64) -> f64 {
        v
    }
    x
}

fn main() {}
