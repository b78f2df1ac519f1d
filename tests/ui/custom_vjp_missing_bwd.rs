use adjoint::prelude::*;

fn f_fwd(x: f64) -> (f64, f64) {
    (x, x)
}

#[custom_vjp(fwd = f_fwd)]
fn f(x: f64) -> f64 {
    x
}

fn main() {}
