use adjoint::prelude::*;

#[custom_vjp(fwd = square_fwd, bwd = square_bwd)]
fn square(x: f64) -> f64 {
    x * x
}

fn square_fwd(x: f64) -> (f64, f64) {
    (x * x, x)
}

fn square_bwd(x: f64, ct: f64) -> (f64,) {
    (2.0 * x * ct,)
}

#[differentiable(jvp)]
fn f(x: f64) -> f64 {
    square(x) + x
}

fn main() {}
