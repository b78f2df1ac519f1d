use adjoint::prelude::*;

// `if let` alone is a `match`; chained with another condition it is not.
#[differentiable]
fn chained(x: f64, o: Option<usize>) -> f64 {
    if let Some(n) = o && n > 2 { x * n as f64 } else { x }
}

#[differentiable]
fn while_let(x: f64, mut v: Vec<usize>) -> f64 {
    let mut y = x;
    while let Some(n) = v.pop() {
        y = y * n as f64;
    }
    y
}

fn main() {}
