use adjoint::prelude::*;

#[differentiable]
fn f(x: f64, mut v: Vec<usize>) -> f64 {
    let mut s = x;
    while let Some(_) = v.pop() {
        s = s * x;
    }
    s
}

fn main() {}
