use adjoint::prelude::*;

#[differentiable]
fn f(x: f64, y: f64) -> f64 {
    let z = x * y;
    z.sin() + y
}

#[test]
fn smoke() {
    let (gx, gy) = grad!(f)(0.5, 2.0);
    assert!((gx - 2.0 * 1.0f64.cos()).abs() < 1e-12);
    assert!((gy - (0.5 * 1.0f64.cos() + 1.0)).abs() < 1e-12);
}
