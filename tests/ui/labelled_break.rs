use adjoint::prelude::*;

#[differentiable]
fn f(x: f64) -> f64 {
    let mut s = x;
    'outer: loop {
        s = s * 2.0;
        break 'outer;
    }
    s
}

fn main() {}
