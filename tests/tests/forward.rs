//! Forward mode and second order: `#[differentiable(jvp)]` writes `__f_jvp` as
//! ordinary Rust that is itself differentiated, so `grad!` of a JVP is a
//! Hessian-vector product (reverse over forward).

use adjoint::check::{Tolerance, check_vjp};
use adjoint::prelude::*;
use ndarray::{Array1, array};

#[differentiable(jvp)]
fn energy(x: &Array1<f64>) -> f64 {
    let s = x.sin();
    let e = (&s * &s).sum() + x.dot(x) * 0.5;
    e * e.tanh() + (x / 3.0).exp().sum() + (x.tanh() * sigmoid(x)).sum()
}

#[differentiable(jvp)]
fn scalar(x: f64, y: f64) -> f64 {
    let z = x * y + x.powi(3);
    z.sin() / (1.0 + y * y)
}

#[test]
fn jvp_is_the_directional_derivative() {
    let (x, v) = (array![0.3, -0.7, 1.1], array![1.0, 0.5, -2.0]);
    let (y, dy) = jvp!(energy)(&x, &v);
    assert_eq!(y, energy(&x));
    let h = 1e-6;
    let fd = (energy(&(&x + &(&v * h))) - energy(&(&x - &(&v * h)))) / (2.0 * h);
    assert!(
        (dy - fd).abs() < 1e-7 * fd.abs().max(1.0),
        "jvp {dy}, central difference {fd}"
    );

    let (_, d) = jvp!(scalar)(0.4, -0.9, 1.0, 0.0);
    let (gx, _) = grad!(scalar)(0.4, -0.9);
    assert!(
        (d - gx).abs() < 1e-12,
        "a unit tangent along x gives d/dx: {d} vs {gx}"
    );
}

#[test]
fn grad_of_jvp_is_a_hessian_vector_product() {
    let (x, v) = (array![0.3, -0.7, 1.1], array![1.0, 0.5, -2.0]);
    let hvp = grad!(
        |x: &Array1<f64>, v: &Array1<f64>| {
            let (_, d) = jvp!(energy)(x, v);
            d
        },
        wrt = [x]
    )(&x, &v);
    // H v is the vector-Jacobian product of the gradient with cotangent v (H is
    // symmetric): check it against central differences of the gradient.
    let g = |x: &Array1<f64>| grad!(energy)(x);
    check_vjp(
        g,
        &x,
        &v,
        &hvp,
        Tolerance {
            step: 1e-5,
            rtol: 1e-6,
            atol: 1e-8,
        },
    )
    .unwrap();
}

/// Branches in statement and tail position, an arm that is constant, and a `match`.
#[differentiable(jvp)]
fn piecewise(x: &Array1<f64>, s: f64) -> f64 {
    let mut y = x * s;
    if s > 0.0 {
        y = y.tanh();
    } else {
        y = &y * &y;
    }
    let z = if y.sum() > 0.5 { y.sum() * s } else { 2.0 };
    match x.len() {
        3 => z * z + (x * &y).sum(),
        _ => z,
    }
}

#[test]
fn forward_mode_goes_through_branches() {
    let v = array![1.0, 0.5, -2.0];
    for (x, s) in [
        (array![0.3, 0.7, 1.1], 0.8),
        (array![0.3, -0.7, 1.1], -0.6),
        (array![-0.3, -0.7, 0.1], 0.5),
        (array![0.3, 0.7], 0.8),
    ] {
        let v = v.slice(ndarray::s![..x.len()]).to_owned();
        let (gx, gs) = grad!(piecewise)(&x, s);
        let (y, dy) = jvp!(piecewise)(&x, s, &v, 0.0);
        assert_eq!(y, piecewise(&x, s));
        let along = gx.dot(&v);
        assert!(
            (dy - along).abs() < 1e-12 * along.abs().max(1.0),
            "{dy} vs {along}"
        );
        let (_, ds) = jvp!(piecewise)(&x, s, &(&v * 0.0), 1.0);
        assert!((ds - gs).abs() < 1e-12 * gs.abs().max(1.0), "{ds} vs {gs}");
        // Reverse over forward through the branches: H v against differences of
        // the gradient.
        let hvp = grad!(
            |x: &Array1<f64>, v: &Array1<f64>| {
                let (_, d) = jvp!(piecewise)(x, s, v, 0.0);
                d
            },
            wrt = [x]
        )(&x, &v);
        let g = |x: &Array1<f64>| grad!(piecewise)(x, s).0;
        let tol = Tolerance {
            step: 1e-6,
            rtol: 1e-6,
            atol: 1e-8,
        };
        check_vjp(g, &x, &v, &hvp, tol).unwrap();
    }
}
