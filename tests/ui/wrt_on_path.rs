use adjoint::prelude::*;

#[differentiable]
fn f(x: f64, y: f64) -> f64 {
    x * y
}

fn use_it() {
    let _ = grad!(f, wrt = [x])(1.0, 2.0);
}

fn main() {}
