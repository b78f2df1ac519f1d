use adjoint::prelude::*;

struct Pair {
    a: f64,
    b: f64,
}

fn total(p: &Pair) -> f64 {
    p.a + p.b
}

#[differentiable]
fn f(x: f64) -> f64 {
    let p = Pair { a: x, b: 2.0 };
    no_grad(total(&p)) + x
}

#[differentiable]
fn g(x: f64) -> f64 {
    let p = Pair { a: x, b: x };
    total(&p)
}

fn main() {}
