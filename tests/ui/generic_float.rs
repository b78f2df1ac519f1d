use adjoint::prelude::*;

#[differentiable]
fn f<A: adjoint::Real>(x: A, y: A) -> A {
    x * y + x.sin()
}

fn main() {}
