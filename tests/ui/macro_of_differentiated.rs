use adjoint::prelude::*;

macro_rules! twice {
    ($e:expr) => {
        2.0 * $e
    };
}

#[differentiable]
fn listed(x: f64) -> f64 {
    let v = vec![x, 2.0 * x];
    v[0] + v[1]
}

#[differentiable]
fn through_a_user_macro(x: f64) -> f64 {
    twice!(x) + 1.0
}

#[differentiable]
fn printing_is_fine(x: f64) -> f64 {
    println!("x = {x}");
    let label = format!("{}", 3);
    assert!(x.is_finite(), "{label}");
    x * x
}

fn main() {}
