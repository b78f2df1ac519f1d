use adjoint::prelude::*;

#[differentiable]
fn f(x: f64, o: Option<usize>) -> f64 {
    if let Some(n) = o { x * n as f64 } else { x }
}

fn main() {}
