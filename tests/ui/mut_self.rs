use adjoint::prelude::*;

struct S;
#[differentiable]
impl S {
    fn f(&mut self, x: f64) -> f64 {
        x * 2.0
    }
}

fn main() {}
