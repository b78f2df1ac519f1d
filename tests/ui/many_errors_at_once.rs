use adjoint::prelude::*;

#[differentiable]
fn f(x: f64) -> f64 {
    let a = unsafe { x * 2.0 };
    let b = x % 3.0;
    let c = |v: f64| v;
    a + b
}

fn main() {}
