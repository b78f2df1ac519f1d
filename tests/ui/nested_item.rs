use adjoint::prelude::*;

#[differentiable]
fn generic_nested(x: f64) -> f64 {
    fn inner<T: Copy>(v: T) -> T {
        v
    }
    inner(x)
}



#[differentiable]
fn called_on_constants(x: f64) -> f64 {
    fn inner<T: Copy>(v: T) -> T {
        v
    }
    const K: f64 = 2.0;
    x * inner(K)
}
fn main() {}
