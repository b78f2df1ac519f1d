//! Second order and Jacobians against JAX (`reference/second_order.json`, from
//! `gen_second_order.py`): `hessian!`, `hvp!`, `jacfwd!` and `jacrev!` of functions
//! with loops and branches, to 1e-9 relative (normwise over each result).

use adjoint::prelude::*;
use adjoint_tests::reference;
use ndarray::{Array1, Array2, ArrayD, IxDyn};
use serde_json::Value as Json;

/// A `{"shape": [..], "data": [..]}` entry.
fn flat(v: &Json) -> ArrayD<f64> {
    let shape: Vec<usize> = v["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|d| d.as_u64().expect("dimension") as usize)
        .collect();
    let data: Vec<f64> = v["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect();
    ArrayD::from_shape_vec(IxDyn(&shape), data).expect("shape and data agree")
}

fn vector(v: &Json) -> Array1<f64> {
    flat(v).into_dimensionality().expect("a vector")
}

/// Same shape, and within 1e-9 of JAX's normwise.
fn assert_close(what: &str, ours: &ArrayD<f64>, jax: &ArrayD<f64>) {
    assert_eq!(ours.shape(), jax.shape(), "{what}: shape");
    let diff = (ours - jax).mapv(|d| d * d).sum().sqrt();
    let norm = jax.mapv(|d| d * d).sum().sqrt();
    assert!(
        diff <= 1e-9 * norm.max(1e-300),
        "{what}: normwise difference {:.2e}\nours {ours}\njax  {jax}",
        diff / norm
    );
}

#[differentiable(jvp)]
fn rosenbrock(x: &Array1<f64>) -> f64 {
    let mut s = 0.0;
    for i in 0..x.len() - 1 {
        let a = x[i + 1] - x[i] * x[i];
        let b = 1.0 - x[i];
        s += 100.0 * a * a + b * b;
    }
    s
}

#[test]
fn hessian_of_rosenbrock() {
    let case = reference("second_order.json", "rosenbrock");
    let (x, v) = (vector(&case["x"]), vector(&case["v"]));
    assert!((rosenbrock(&x) - case["value"].as_f64().unwrap()).abs() < 1e-12);
    assert_close(
        "hessian",
        &hessian!(rosenbrock)(&x),
        &flat(&case["hessian"]),
    );
    assert_close(
        "hvp",
        &hvp!(rosenbrock)(&x, &v).into_dyn(),
        &flat(&case["hvp"]),
    );
}

/// A tanh RNN's last state's squared norm, as a function of the initial state.
#[differentiable(jvp)]
fn rnn(
    h0: &Array1<f64>,
    #[no_grad] w: &Array2<f64>,
    #[no_grad] u: &Array1<f64>,
    #[no_grad] xs: &Array1<f64>,
) -> f64 {
    let mut h = h0.to_owned();
    for t in 0..xs.len() {
        h = (w.dot(&h) + u * xs[t]).tanh();
    }
    (&h * &h).sum()
}

#[test]
fn hessian_through_a_recurrent_loop() {
    let case = reference("second_order.json", "rnn");
    let h0 = vector(&case["h0"]);
    let w: Array2<f64> = flat(&case["w"]).into_dimensionality().unwrap();
    let (u, xs, v) = (vector(&case["u"]), vector(&case["xs"]), vector(&case["v"]));
    assert!((rnn(&h0, &w, &u, &xs) - case["value"].as_f64().unwrap()).abs() < 1e-12);
    assert_close(
        "hessian",
        &hessian!(rnn)(&h0, &w, &u, &xs),
        &flat(&case["hessian"]),
    );
    assert_close(
        "hvp",
        &hvp!(rnn)(&h0, &w, &u, &xs, &v).into_dyn(),
        &flat(&case["hvp"]),
    );
}

/// A branch on a constant, then a loop carrying a scalar.
#[differentiable(jvp)]
fn piecewise(x: &Array1<f64>, #[no_grad] s: f64) -> f64 {
    let y = if s > 0.0 {
        (x * s).tanh()
    } else {
        (x * s) * (x * s)
    };
    let mut z = y.sum();
    for _ in 0..3 {
        z = z.sin() + 0.5 * (x * &y).sum();
    }
    z
}

#[test]
fn hessian_through_a_branch_and_a_loop() {
    for name in ["piecewise_pos", "piecewise_neg"] {
        let case = reference("second_order.json", name);
        let (x, s) = (vector(&case["x"]), case["s"].as_f64().unwrap());
        assert!((piecewise(&x, s) - case["value"].as_f64().unwrap()).abs() < 1e-12);
        assert_close(name, &hessian!(piecewise)(&x, s), &flat(&case["hessian"]));
    }
}

#[differentiable(jvp)]
fn field(x: &Array1<f64>, #[no_grad] k: f64) -> Array1<f64> {
    x.sin() * k + x * (x * x).sum()
}

#[test]
fn jacobians_forward_and_reverse() {
    let case = reference("second_order.json", "field");
    let (x, k) = (vector(&case["x"]), case["k"].as_f64().unwrap());
    assert_close("value", &field(&x, k).into_dyn(), &flat(&case["value"]));
    assert_close("jacfwd", &jacfwd!(field)(&x, k), &flat(&case["jacfwd"]));
    assert_close("jacrev", &jacrev!(field)(&x, k), &flat(&case["jacrev"]));
}
