use adjoint::prelude::*;
use ndarray::Array1;

// Each of these dropped the derivative silently (a zero gradient): a value pushed
// into a list, changed in place, or iterated element by element.

#[differentiable]
fn pushed(x: &Array1<f64>) -> f64 {
    let mut parts = Vec::new();
    for k in 0..3 {
        parts.push(x * (k as f64));
    }
    parts.iter().map(|p| p.sum()).sum::<f64>()
}

#[differentiable]
fn in_place(x: &Array1<f64>) -> f64 {
    let mut h = x * 2.0;
    h.mapv_inplace(|v| v * v);
    h.fill(1.0);
    h.sum()
}

#[differentiable]
fn collected(x: &Array1<f64>) -> f64 {
    let v: Vec<f64> = x.iter().map(|t| t * t).collect();
    v[0] + v[1] + x.iter().sum::<f64>()
}

#[differentiable]
fn elements(x: &Array1<f64>) -> f64 {
    let mut s = 0.0;
    for a in x {
        s += a * a;
    }
    for (i, a) in x.iter().enumerate() {
        s += a * (i as f64);
    }
    s
}

// Not errors: a loop over indices, elements read only in a condition, a list of
// constants.
#[differentiable]
fn fine(x: &Array1<f64>) -> f64 {
    let mut s = 0.0;
    let mut positive = 0.0;
    for i in 0..x.len() {
        s += x[i] * x[i];
    }
    for a in x.iter() {
        if *a > 0.0 {
            positive += 1.0;
        }
    }
    let mut ks = Vec::new();
    ks.push(2.0);
    s * positive * ks[0]
}

fn main() {}
