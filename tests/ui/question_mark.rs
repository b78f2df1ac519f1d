use adjoint::prelude::*;

#[differentiable]
fn f(x: f64) -> f64 {
    let y: f64 = "1.0".parse().ok()?;
    x * y
}

fn main() {}
