use adjoint::prelude::*;

#[differentiable]
fn f(x: f64, k: u8) -> f64 {
    match k {
        0 => x,
        1 => x * 2.0,
        2 => x * 3.0,
        3 => x * 4.0,
        4 => x * 5.0,
        5 => x * 6.0,
        6 => x * 7.0,
        7 => x * 8.0,
        _ => x * 9.0,
    }
}

fn main() {}
