//! Code generic over the float type (`A: Real`) is differentiable, and runs in f32
//! and f64 alike: free functions, and modules such as `Dense`.

use adjoint::Real;
use adjoint::check::{Tolerance, check_grad};
use adjoint::nn::Dense;
use adjoint::prelude::*;
use ndarray::{Array2, array};

#[differentiable]
fn mixed<A: Real>(x: A, y: A) -> A {
    x * y + x.sin() - A::lit(2.0) / y
}

#[differentiable]
fn layer<A: Real>(w: &Array2<A>, x: &Array2<A>) -> A {
    let h = x.dot(w).tanh();
    (&h * &h).sum() * A::lit(0.5) + (&h - A::lit(1.0)).mean().unwrap()
}

#[test]
fn generic_functions_in_f32_and_f64() {
    let (gx, gy) = grad!(mixed)(0.5f64, 2.0f64);
    assert_eq!((gx, gy), (2.0 + 0.5f64.cos(), 0.5 + 0.5));
    let (gx32, gy32) = grad!(mixed)(0.5f32, 2.0f32);
    assert_eq!((gx32, gy32), (2.0 + 0.5f32.cos(), 1.0));

    let w = array![[0.5, -0.25], [1.0, 0.75]];
    let x = array![[1.0, 2.0], [-0.5, 0.25], [0.1, 0.2]];
    let (gw, _) = grad!(layer)(&w, &x);
    check_grad(
        |w: &Array2<f64>| layer(w, &x),
        &w,
        &gw,
        Tolerance::default(),
    )
    .unwrap();
    let (gw32, _) = grad!(layer)(&w.mapv(|v| v as f32), &x.mapv(|v| v as f32));
    for (a, b) in gw32.iter().zip(&gw) {
        assert!((*a as f64 - b).abs() < 1e-5, "{a} vs {b}");
    }
}

#[test]
fn dense_in_f32_and_f64() {
    let x = array![[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]];
    let vars = Dense::new(2).init(0, &x).unwrap();
    let x32 = x.mapv(|v| v as f32);
    let vars32 = Dense::new(2).init(0, &x32).unwrap();
    // The same initial values, rounded to f32.
    let k: Array2<f64> = vars.read("params", "kernel").unwrap();
    let k32: Array2<f32> = vars32.read("params", "kernel").unwrap();
    assert_eq!(k.mapv(|v| v as f32), k32);
    let y32: Array2<f32> = Dense::new(2).apply(&vars32, &x32).unwrap();
    assert_eq!(y32.shape(), &[2, 2]);
    let g32 = grad!(|v: &Variables| Dense::new(2).apply(v, &x32).unwrap().sum())(&vars32);
    assert_eq!(
        g32.to_string(),
        r#"{"params": {"bias": [2.0, 2.0], "kernel": [[1.5, 1.5], [1.0, 1.0], [3.0, 3.0]]}}"#
    );
    let leaf = g32.get("params", "kernel").unwrap();
    assert_eq!(leaf.kind(), "f32");
}
