use adjoint::prelude::*;

#[differentiable]
fn f(x: f64) -> f64 {
    let mut s = x;
    let v = loop {
        s = s * x;
        if s > 10.0 {
            break s;
        }
    };
    v
}

fn main() {}
