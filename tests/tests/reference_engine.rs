//! Every case of `reference/engine.json` (JAX, float64), ported: the value and every
//! gradient must agree within 1e-9 relative; and forward mode (`jvp!`, each function
//! is `(jvp)`) along a tangent must give the value and `<gradient, tangent>` of JAX's
//! gradients.

// The bodies are written as a user would (`z = z * x`) to test exactly that.
#![allow(clippy::assign_op_pattern)]

use adjoint::prelude::*;
use adjoint_tests::{assert_close, grad, input, reference, scalar};
use ndarray::{Array1, Array2, Array3, ArrayD, Axis, Ix1, Ix2, Ix3};

const RTOL: f64 = 1e-9;

fn a1(a: ArrayD<f64>) -> Array1<f64> {
    a.into_dimensionality::<Ix1>().unwrap()
}
fn a2(a: ArrayD<f64>) -> Array2<f64> {
    a.into_dimensionality::<Ix2>().unwrap()
}
fn a3(a: ArrayD<f64>) -> Array3<f64> {
    a.into_dimensionality::<Ix3>().unwrap()
}
/// The case's value against `got`, within [`RTOL`].
fn assert_value(case: &serde_json::Value, got: f64) {
    let want = case["value"].as_f64().unwrap();
    assert_close("value", &scalar(got), &scalar(want), RTOL);
}
fn s(a: ArrayD<f64>) -> f64 {
    a.into_iter().next().unwrap()
}

/// A tangent shaped like `x`, its elements all different: `sin(1 + 0.7 i)`.
fn t<D: ndarray::Dimension>(x: &ndarray::Array<f64, D>) -> ndarray::Array<f64, D> {
    let mut i = 0.0;
    x.mapv(|_| {
        i += 1.0;
        (1.0f64 + 0.7 * i).sin()
    })
}

/// Forward mode against the reference: `(value, derivative)` from `jvp!` along the
/// tangents `ts` of the inputs `names` must be the case's value and the sum of
/// `<gradient, tangent>` over JAX's gradients.
fn assert_jvp(case: &serde_json::Value, got: (f64, f64), names: &[&str], ts: &[ArrayD<f64>]) {
    assert_value(case, got.0);
    let want: f64 = names
        .iter()
        .zip(ts)
        .map(|(n, t)| (&grad(case, n) * t).sum())
        .sum();
    assert_close("jvp", &scalar(got.1), &scalar(want), RTOL);
}

#[differentiable(jvp)]
fn scalar_mix(x: f64, y: f64) -> f64 {
    x * y + x.sin() * y.exp() / (1.0 + x * x)
}

#[test]
fn reference_scalar_mix() {
    let case = reference("engine.json", "scalar_mix");
    let (x, y) = (s(input(&case, "x")), s(input(&case, "y")));
    let (v, (gx, gy)) = value_and_grad!(scalar_mix)(x, y);
    assert_value(&case, v);
    assert_close("x", &scalar(gx), &grad(&case, "x"), RTOL);
    assert_close("y", &scalar(gy), &grad(&case, "y"), RTOL);
    let got = jvp!(scalar_mix)(x, y, 0.3, -1.1);
    assert_jvp(&case, got, &["x", "y"], &[scalar(0.3), scalar(-1.1)]);
}

#[differentiable(jvp)]
fn branch(x: f64) -> f64 {
    if x > 1.0 { x * x * x } else { 2.0 * x - 1.0 }
}

#[test]
fn reference_branch() {
    for name in ["branch_hi", "branch_lo"] {
        let case = reference("engine.json", name);
        let x = s(input(&case, "x"));
        let (v, gx) = value_and_grad!(branch)(x);
        assert_close(
            name,
            &scalar(v),
            &scalar(case["value"].as_f64().unwrap()),
            RTOL,
        );
        assert_close(name, &scalar(gx), &grad(&case, "x"), RTOL);
        assert_jvp(&case, jvp!(branch)(x, 0.7), &["x"], &[scalar(0.7)]);
    }
}

#[differentiable(jvp)]
fn horner(x: f64) -> f64 {
    // Coefficients 8, 7, ..., 1, highest degree first.
    let mut acc = 0.0;
    for c in (1..=8).rev() {
        acc = acc * x + c as f64;
    }
    acc
}

#[test]
fn reference_horner_loop() {
    let case = reference("engine.json", "horner_loop");
    let (v, gx) = value_and_grad!(horner)(s(input(&case, "x")));
    assert_value(&case, v);
    assert_close("x", &scalar(gx), &grad(&case, "x"), RTOL);
    let got = jvp!(horner)(s(input(&case, "x")), 0.7);
    assert_jvp(&case, got, &["x"], &[scalar(0.7)]);
}

#[differentiable(jvp)]
fn newton_sqrt(a: f64) -> f64 {
    let mut z = a;
    let mut i = 0;
    while i < 6 {
        z = 0.5 * (z + a / z);
        i += 1;
    }
    z
}

#[test]
fn reference_newton_sqrt() {
    let case = reference("engine.json", "newton_sqrt");
    let (v, ga) = value_and_grad!(newton_sqrt)(s(input(&case, "a")));
    assert_value(&case, v);
    assert_close("a", &scalar(ga), &grad(&case, "a"), RTOL);
    let got = jvp!(newton_sqrt)(s(input(&case, "a")), 0.7);
    assert_jvp(&case, got, &["a"], &[scalar(0.7)]);
}

#[differentiable(jvp)]
fn dense_tanh(w: &Array2<f64>, b: &Array1<f64>, x: &Array2<f64>) -> f64 {
    let h = (x.dot(w) + b).tanh();
    (&h * &h).sum()
}

#[test]
fn reference_dense_tanh() {
    let case = reference("engine.json", "dense_tanh");
    let (w, b, x) = (
        a2(input(&case, "w")),
        a1(input(&case, "b")),
        a2(input(&case, "x")),
    );
    let (v, (gw, gb, gx)) = value_and_grad!(dense_tanh)(&w, &b, &x);
    assert_value(&case, v);
    assert_close("w", &gw.into_dyn(), &grad(&case, "w"), RTOL);
    assert_close("b", &gb.into_dyn(), &grad(&case, "b"), RTOL);
    assert_close("x", &gx.into_dyn(), &grad(&case, "x"), RTOL);
    let (tw, tb, tx) = (t(&w), t(&b), t(&x));
    let got = jvp!(dense_tanh)(&w, &b, &x, &tw, &tb, &tx);
    let ts = [tw.into_dyn(), tb.into_dyn(), tx.into_dyn()];
    assert_jvp(&case, got, &["w", "b", "x"], &ts);
}

#[differentiable(jvp)]
fn softmax_xent(logits: &Array2<f64>, #[no_grad] labels: &[usize]) -> f64 {
    let logp = log_softmax(logits, Axis(1));
    let mut total = 0.0;
    for i in 0..labels.len() {
        total = total + logp[[i, labels[i]]];
    }
    -total / labels.len() as f64
}

#[test]
fn reference_softmax_xent() {
    let case = reference("engine.json", "softmax_xent");
    let logits = a2(input(&case, "logits"));
    let (v, g) = value_and_grad!(softmax_xent)(&logits, &[2, 0, 3]);
    assert_value(&case, v);
    assert_close("logits", &g.into_dyn(), &grad(&case, "logits"), RTOL);
    let tl = t(&logits);
    let got = jvp!(softmax_xent)(&logits, &[2, 0, 3], &tl);
    assert_jvp(&case, got, &["logits"], &[tl.into_dyn()]);
}

#[differentiable(jvp)]
fn broadcast(a: &Array2<f64>, b: &Array2<f64>, c: &Array1<f64>) -> f64 {
    let t = (a + b) * c;
    (&t * &t).sum() / 2.0
}

#[test]
fn reference_broadcast() {
    let case = reference("engine.json", "broadcast");
    let (a, b, c) = (
        a2(input(&case, "a")),
        a2(input(&case, "b")),
        a1(input(&case, "c")),
    );
    let (v, (ga, gb, gc)) = value_and_grad!(broadcast)(&a, &b, &c);
    assert_value(&case, v);
    assert_close("a", &ga.into_dyn(), &grad(&case, "a"), RTOL);
    assert_close("b", &gb.into_dyn(), &grad(&case, "b"), RTOL);
    assert_close("c", &gc.into_dyn(), &grad(&case, "c"), RTOL);
    let (ta, tb, tc) = (t(&a), t(&b), t(&c));
    let got = jvp!(broadcast)(&a, &b, &c, &ta, &tb, &tc);
    let ts = [ta.into_dyn(), tb.into_dyn(), tc.into_dyn()];
    assert_jvp(&case, got, &["a", "b", "c"], &ts);
}

#[differentiable(jvp)]
fn reductions(x: &Array2<f64>) -> f64 {
    let col_mean = x.mean_axis(Axis(0)).unwrap();
    let row_sum = x.sum_axis(Axis(1));
    (&col_mean * &col_mean).sum() + row_sum.mean().unwrap() * x.mean().unwrap()
}

#[test]
fn reference_reductions() {
    let case = reference("engine.json", "reductions");
    let x = a2(input(&case, "x"));
    let (v, g) = value_and_grad!(reductions)(&x);
    assert_value(&case, v);
    assert_close("x", &g.into_dyn(), &grad(&case, "x"), RTOL);
    let tx = t(&x);
    let got = jvp!(reductions)(&x, &tx);
    assert_jvp(&case, got, &["x"], &[tx.into_dyn()]);
}

#[differentiable(jvp)]
fn rnn(w: &Array2<f64>, u: &Array2<f64>, xs: &Array3<f64>) -> f64 {
    let mut h = Array2::<f64>::zeros((2, 4));
    for t in 0..5 {
        h = (h.dot(w) + xs.index_axis(Axis(0), t).dot(u)).tanh();
    }
    (&h * &h).sum()
}

#[test]
fn reference_rnn() {
    let case = reference("engine.json", "rnn");
    let (w, u, xs) = (
        a2(input(&case, "w")),
        a2(input(&case, "u")),
        a3(input(&case, "xs")),
    );
    let (v, (gw, gu, gxs)) = value_and_grad!(rnn)(&w, &u, &xs);
    assert_value(&case, v);
    assert_close("w", &gw.into_dyn(), &grad(&case, "w"), RTOL);
    assert_close("u", &gu.into_dyn(), &grad(&case, "u"), RTOL);
    assert_close("xs", &gxs.into_dyn(), &grad(&case, "xs"), RTOL);
    let (tw, tu, txs) = (t(&w), t(&u), t(&xs));
    let got = jvp!(rnn)(&w, &u, &xs, &tw, &tu, &txs);
    let ts = [tw.into_dyn(), tu.into_dyn(), txs.into_dyn()];
    assert_jvp(&case, got, &["w", "u", "xs"], &ts);
}

#[differentiable(jvp)]
fn elementwise_closure(x: &Array1<f64>) -> f64 {
    x.mapv(|v| v.sin() * v + v.exp() / (1.0 + v * v)).sum()
}

#[test]
fn reference_elementwise_closure() {
    let case = reference("engine.json", "elementwise_closure");
    let x = a1(input(&case, "x"));
    let (v, g) = value_and_grad!(elementwise_closure)(&x);
    assert_value(&case, v);
    assert_close("x", &g.into_dyn(), &grad(&case, "x"), RTOL);
    let tx = t(&x);
    let got = jvp!(elementwise_closure)(&x, &tx);
    assert_jvp(&case, got, &["x"], &[tx.into_dyn()]);
}

#[differentiable(jvp)]
fn matmul_transpose(a: &Array2<f64>, b: &Array2<f64>, c: &Array2<f64>) -> f64 {
    a.dot(&b.t()).dot(c).sum()
}

#[test]
fn reference_matmul_transpose() {
    let case = reference("engine.json", "matmul_transpose");
    let (a, b, c) = (
        a2(input(&case, "a")),
        a2(input(&case, "b")),
        a2(input(&case, "c")),
    );
    let (v, (ga, gb, gc)) = value_and_grad!(matmul_transpose)(&a, &b, &c);
    assert_value(&case, v);
    assert_close("a", &ga.into_dyn(), &grad(&case, "a"), RTOL);
    assert_close("b", &gb.into_dyn(), &grad(&case, "b"), RTOL);
    assert_close("c", &gc.into_dyn(), &grad(&case, "c"), RTOL);
    let (ta, tb, tc) = (t(&a), t(&b), t(&c));
    let got = jvp!(matmul_transpose)(&a, &b, &c, &ta, &tb, &tc);
    let ts = [ta.into_dyn(), tb.into_dyn(), tc.into_dyn()];
    assert_jvp(&case, got, &["a", "b", "c"], &ts);
}

#[differentiable(jvp)]
fn relu_max_abs(x: &Array1<f64>) -> f64 {
    (relu(x) * 3.0 + x.abs() + (x * x + 1.0).sqrt()).sum()
}

#[test]
fn reference_relu_max_abs() {
    let case = reference("engine.json", "relu_max_abs");
    let x = a1(input(&case, "x"));
    let (v, g) = value_and_grad!(relu_max_abs)(&x);
    assert_value(&case, v);
    assert_close("x", &g.into_dyn(), &grad(&case, "x"), RTOL);
    let tx = t(&x);
    let got = jvp!(relu_max_abs)(&x, &tx);
    assert_jvp(&case, got, &["x"], &[tx.into_dyn()]);
}
