use adjoint::prelude::*;

struct S;
trait T {
    fn f(&self, x: f64) -> f64;
}
#[differentiable]
impl T for S {
    fn f(&self, x: f64) -> f64 {
        x
    }
}

fn main() {}
