//! The workloads W1-W4 of the benchmark issue, each written three ways.

use crate::Workload;
use crate::{burn_peer, candle_peer};
use adjoint::prelude::*;
// The hand-written gradients use the same vectorising tanh as the generated code.
use adjoint::rules::kernels;
use ndarray::{Array1, Array2, Array3, Axis};
use std::hint::black_box;

/// `tanh` of every element in place, by adjoint's vectorising kernel (what the
/// generated code uses).
trait MapTanh {
    fn map_tanh(self) -> Self;
}

impl MapTanh for Array2<f64> {
    fn map_tanh(mut self) -> Self {
        kernels::in_place::<kernels::Tanh, f64, ndarray::Ix2>(&mut self);
        self
    }
}

fn pattern2(r: usize, c: usize, seed: usize, scale: f64) -> Array2<f64> {
    Array2::from_shape_fn((r, c), |(i, j)| {
        ((((i * c + j) * 7919 + seed * 104_729) % 1000) as f64 / 500.0 - 1.0) * scale
    })
}

fn pattern1(n: usize, seed: usize, scale: f64) -> Array1<f64> {
    Array1::from_shape_fn(n, |i| {
        (((i * 7919 + seed * 104_729) % 1000) as f64 / 500.0 - 1.0) * scale
    })
}

fn assert_close(what: &str, a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
            "{what}[{i}]: adjoint {x}, hand-written {y}"
        );
    }
}

fn flat<D: ndarray::Dimension>(a: &ndarray::Array<f64, D>) -> Vec<f64> {
    a.iter().copied().collect()
}

/// The hand-written gradients' matrix products: the same kernel as the generated
/// code's (`adjoint::rules::linalg::matmul`, and `matmul_into` to accumulate), so that
/// adjoint / hand-written measures what the transformation adds.
use adjoint::rules::linalg::matmul_into;

fn mm<S: ndarray::Data<Elem = f64>, S2: ndarray::Data<Elem = f64>>(
    a: &ndarray::ArrayBase<S, ndarray::Ix2>,
    b: &ndarray::ArrayBase<S2, ndarray::Ix2>,
) -> Array2<f64> {
    adjoint::rules::linalg::matmul(a, b)
}

// ----- W1: extended Rosenbrock, n = 1000, a scalar loop -----

#[differentiable]
fn rosenbrock(x: &Array1<f64>) -> f64 {
    let mut s = 0.0;
    for i in 0..x.len() - 1 {
        let a = x[i + 1] - x[i] * x[i];
        let b = 1.0 - x[i];
        s += 100.0 * a * a + b * b;
    }
    s
}

fn rosenbrock_grad_by_hand(x: &Array1<f64>) -> Array1<f64> {
    let mut g = Array1::zeros(x.len());
    for i in 0..x.len() - 1 {
        let a = x[i + 1] - x[i] * x[i];
        let b = 1.0 - x[i];
        g[i] += -400.0 * x[i] * a - 2.0 * b;
        g[i + 1] += 200.0 * a;
    }
    g
}

fn w1() -> Workload {
    let x = pattern1(1000, 1, 1.5);
    assert_close(
        "W1",
        &flat(&grad!(rosenbrock)(&x)),
        &flat(&rosenbrock_grad_by_hand(&x)),
    );
    let burn = burn_peer::Rosenbrock::new(&x);
    assert_close("W1 burn", &burn.grad()[0], &flat(&grad!(rosenbrock)(&x)));
    let candle = candle_peer::Rosenbrock::new(&x).expect("candle W1");
    assert_close(
        "W1 candle",
        &candle.grad().expect("candle W1")[0],
        &flat(&grad!(rosenbrock)(&x)),
    );
    let (x1, x2, x3) = (x.clone(), x.clone(), x);
    let checksums = vec![crate::checksum(&grad!(rosenbrock)(&x1))];
    Workload {
        name: "W1 Rosenbrock n=1000 (scalar loop)",
        key: "W1",
        checksums,
        tolerance: 1e-9,
        runs: 2000,
        adjoint: Box::new(move || {
            black_box(grad!(rosenbrock)(black_box(&x1)));
        }),
        hand: Some(Box::new(move || {
            black_box(rosenbrock_grad_by_hand(black_box(&x2)));
        })),
        primal: Some(Box::new(move || {
            black_box(rosenbrock(black_box(&x3)));
        })),
        candle: Some(Box::new(move || {
            black_box(candle.grad().expect("candle W1"));
        })),
        burn: Some(Box::new(move || {
            black_box(burn.grad());
        })),
    }
}

// ----- W2: MLP 2 -> 32 -> 32 -> 1, tanh, batch 1, MSE -----

#[differentiable]
#[allow(clippy::too_many_arguments)]
fn mlp_tanh(
    w1: &Array2<f64>,
    b1: &Array1<f64>,
    w2: &Array2<f64>,
    b2: &Array1<f64>,
    w3: &Array2<f64>,
    b3: &Array1<f64>,
    #[no_grad] x: &Array2<f64>,
    #[no_grad] t: &Array2<f64>,
) -> f64 {
    let h1 = (x.dot(w1) + b1).tanh();
    let h2 = (h1.dot(w2) + b2).tanh();
    let d = h2.dot(w3) + b3 - t;
    (&d * &d).mean().unwrap()
}

type MlpGrads = (
    Array2<f64>,
    Array1<f64>,
    Array2<f64>,
    Array1<f64>,
    Array2<f64>,
    Array1<f64>,
);

#[allow(clippy::too_many_arguments)]
fn mlp_tanh_grad_by_hand(
    w1: &Array2<f64>,
    b1: &Array1<f64>,
    w2: &Array2<f64>,
    b2: &Array1<f64>,
    w3: &Array2<f64>,
    b3: &Array1<f64>,
    x: &Array2<f64>,
    t: &Array2<f64>,
) -> MlpGrads {
    let h1 = (mm(x, w1) + b1).map_tanh();
    let h2 = (mm(&h1, w2) + b2).map_tanh();
    let d = mm(&h2, w3) + b3 - t;
    let gy = d * (2.0 / t.len() as f64);
    let gw3 = mm(&h2.t(), &gy);
    let gb3 = gy.sum_axis(Axis(0));
    let gh2 = mm(&gy, &w3.t()) * (1.0 - &h2 * &h2);
    let gw2 = mm(&h1.t(), &gh2);
    let gb2 = gh2.sum_axis(Axis(0));
    let gh1 = mm(&gh2, &w2.t()) * (1.0 - &h1 * &h1);
    let gw1 = mm(&x.t(), &gh1);
    let gb1 = gh1.sum_axis(Axis(0));
    (gw1, gb1, gw2, gb2, gw3, gb3)
}

fn w2() -> Workload {
    let p = (
        pattern2(2, 32, 1, 0.7),
        pattern1(32, 2, 0.1),
        pattern2(32, 32, 3, 0.2),
        pattern1(32, 4, 0.1),
        pattern2(32, 1, 5, 0.2),
        pattern1(1, 6, 0.1),
    );
    let (x, t) = (pattern2(1, 2, 7, 1.0), pattern2(1, 1, 8, 1.0));
    let a = grad!(mlp_tanh)(&p.0, &p.1, &p.2, &p.3, &p.4, &p.5, &x, &t);
    let h = mlp_tanh_grad_by_hand(&p.0, &p.1, &p.2, &p.3, &p.4, &p.5, &x, &t);
    assert_close("W2 w1", &flat(&a.0), &flat(&h.0));
    assert_close("W2 b1", &flat(&a.1), &flat(&h.1));
    assert_close("W2 w3", &flat(&a.4), &flat(&h.4));
    let burn = burn_peer::Mlp::new([&p.0, &p.2, &p.4], [&p.1, &p.3, &p.5], &x, &t, false);
    let bg = burn.grad();
    assert_close("W2 burn w1", &bg[0], &flat(&a.0));
    assert_close("W2 burn b3", &bg[5], &flat(&a.5));
    let candle = candle_peer::Mlp::new([&p.0, &p.2, &p.4], [&p.1, &p.3, &p.5], &x, &t, false)
        .expect("candle W2");
    let cg = candle.grad().expect("candle W2");
    assert_close("W2 candle w1", &cg[0], &flat(&a.0));
    assert_close("W2 candle b3", &cg[5], &flat(&a.5));
    let (pa, pb, pc) = (p.clone(), p.clone(), p);
    let (xa, xb, xc) = (x.clone(), x.clone(), x);
    let (ta, tb, tc) = (t.clone(), t.clone(), t);
    let checksums = vec![
        crate::checksum(&a.0),
        crate::checksum(&a.1),
        crate::checksum(&a.2),
        crate::checksum(&a.3),
        crate::checksum(&a.4),
        crate::checksum(&a.5),
    ];
    Workload {
        name: "W2 MLP 2-32-32-1 tanh, batch 1",
        key: "W2",
        checksums,
        tolerance: 1e-9,
        runs: 20_000,
        adjoint: Box::new(move || {
            black_box(grad!(mlp_tanh)(
                &pa.0,
                &pa.1,
                &pa.2,
                &pa.3,
                &pa.4,
                &pa.5,
                black_box(&xa),
                &ta,
            ));
        }),
        hand: Some(Box::new(move || {
            black_box(mlp_tanh_grad_by_hand(
                &pb.0,
                &pb.1,
                &pb.2,
                &pb.3,
                &pb.4,
                &pb.5,
                black_box(&xb),
                &tb,
            ));
        })),
        primal: Some(Box::new(move || {
            black_box(mlp_tanh(
                &pc.0,
                &pc.1,
                &pc.2,
                &pc.3,
                &pc.4,
                &pc.5,
                black_box(&xc),
                &tc,
            ));
        })),
        candle: Some(Box::new(move || {
            black_box(candle.grad().expect("candle W2"));
        })),
        burn: Some(Box::new(move || {
            black_box(burn.grad());
        })),
    }
}

// ----- W3: MLP 784 -> 256 -> 256 -> 10, relu, batch 128, softmax cross-entropy -----

#[differentiable]
#[allow(clippy::too_many_arguments)]
fn mlp_xent(
    w1: &Array2<f64>,
    b1: &Array1<f64>,
    w2: &Array2<f64>,
    b2: &Array1<f64>,
    w3: &Array2<f64>,
    b3: &Array1<f64>,
    #[no_grad] x: &Array2<f64>,
    #[no_grad] onehot: &Array2<f64>,
) -> f64 {
    let h1 = relu(&(x.dot(w1) + b1));
    let h2 = relu(&(h1.dot(w2) + b2));
    let logp = log_softmax(&(h2.dot(w3) + b3), Axis(1));
    -(&logp * onehot).sum() / x.nrows() as f64
}

#[allow(clippy::too_many_arguments)]
fn mlp_xent_grad_by_hand(
    w1: &Array2<f64>,
    b1: &Array1<f64>,
    w2: &Array2<f64>,
    b2: &Array1<f64>,
    w3: &Array2<f64>,
    b3: &Array1<f64>,
    x: &Array2<f64>,
    onehot: &Array2<f64>,
) -> MlpGrads {
    // relu in place; its derivative masks where the output is positive.
    let h1 = (mm(x, w1) + b1).mapv_into(|v| v.max(0.0));
    let h2 = (mm(&h1, w2) + b2).mapv_into(|v| v.max(0.0));
    let logits = mm(&h2, w3) + b3;
    let mut p = logits.clone();
    for mut row in p.rows_mut() {
        let m = row.fold(f64::NEG_INFINITY, |m, &v| m.max(v));
        row.mapv_inplace(|v| (v - m).exp());
        let s = row.sum();
        row /= s;
    }
    let gl = (p - onehot) / x.nrows() as f64;
    let gw3 = mm(&h2.t(), &gl);
    let gb3 = gl.sum_axis(Axis(0));
    let mut gh2 = mm(&gl, &w3.t());
    gh2.zip_mut_with(&h2, |g, &h| {
        if h <= 0.0 {
            *g = 0.0
        }
    });
    let gw2 = mm(&h1.t(), &gh2);
    let gb2 = gh2.sum_axis(Axis(0));
    let mut gh1 = mm(&gh2, &w2.t());
    gh1.zip_mut_with(&h1, |g, &h| {
        if h <= 0.0 {
            *g = 0.0
        }
    });
    let gw1 = mm(&x.t(), &gh1);
    let gb1 = gh1.sum_axis(Axis(0));
    (gw1, gb1, gw2, gb2, gw3, gb3)
}

fn w3() -> Workload {
    let p = (
        pattern2(784, 256, 1, 0.05),
        pattern1(256, 2, 0.1),
        pattern2(256, 256, 3, 0.1),
        pattern1(256, 4, 0.1),
        pattern2(256, 10, 5, 0.1),
        pattern1(10, 6, 0.1),
    );
    let x = pattern2(128, 784, 7, 1.0);
    let onehot = Array2::from_shape_fn(
        (128, 10),
        |(i, j)| if (i * 7) % 10 == j { 1.0 } else { 0.0 },
    );
    let a = grad!(mlp_xent)(&p.0, &p.1, &p.2, &p.3, &p.4, &p.5, &x, &onehot);
    let h = mlp_xent_grad_by_hand(&p.0, &p.1, &p.2, &p.3, &p.4, &p.5, &x, &onehot);
    assert_close("W3 w1", &flat(&a.0), &flat(&h.0));
    assert_close("W3 b2", &flat(&a.3), &flat(&h.3));
    assert_close("W3 w3", &flat(&a.4), &flat(&h.4));
    let burn = burn_peer::Mlp::new([&p.0, &p.2, &p.4], [&p.1, &p.3, &p.5], &x, &onehot, true);
    let bg = burn.grad();
    assert_close("W3 burn w1", &bg[0], &flat(&a.0));
    assert_close("W3 burn b3", &bg[5], &flat(&a.5));
    let candle = candle_peer::Mlp::new([&p.0, &p.2, &p.4], [&p.1, &p.3, &p.5], &x, &onehot, true)
        .expect("candle W3");
    let cg = candle.grad().expect("candle W3");
    assert_close("W3 candle w1", &cg[0], &flat(&a.0));
    assert_close("W3 candle b3", &cg[5], &flat(&a.5));
    let (pa, pb, pc) = (p.clone(), p.clone(), p);
    let (xa, xb, xc) = (x.clone(), x.clone(), x);
    let (ta, tb, tc) = (onehot.clone(), onehot.clone(), onehot);
    let checksums = vec![
        crate::checksum(&a.0),
        crate::checksum(&a.1),
        crate::checksum(&a.2),
        crate::checksum(&a.3),
        crate::checksum(&a.4),
        crate::checksum(&a.5),
    ];
    Workload {
        name: "W3 MLP 784-256-256-10 relu, batch 128, xent",
        key: "W3",
        checksums,
        tolerance: 1e-9,
        runs: 60,
        adjoint: Box::new(move || {
            black_box(grad!(mlp_xent)(
                &pa.0,
                &pa.1,
                &pa.2,
                &pa.3,
                &pa.4,
                &pa.5,
                black_box(&xa),
                &ta,
            ));
        }),
        hand: Some(Box::new(move || {
            black_box(mlp_xent_grad_by_hand(
                &pb.0,
                &pb.1,
                &pb.2,
                &pb.3,
                &pb.4,
                &pb.5,
                black_box(&xb),
                &tb,
            ));
        })),
        primal: Some(Box::new(move || {
            black_box(mlp_xent(
                &pc.0,
                &pc.1,
                &pc.2,
                &pc.3,
                &pc.4,
                &pc.5,
                black_box(&xc),
                &tc,
            ));
        })),
        candle: Some(Box::new(move || {
            black_box(candle.grad().expect("candle W3"));
        })),
        burn: Some(Box::new(move || {
            black_box(burn.grad());
        })),
    }
}

// ----- W4: tanh RNN, hidden 64, input 32, batch 16, 50 steps -----

#[differentiable(jvp)]
fn rnn(w: &Array2<f64>, u: &Array2<f64>, b: &Array1<f64>, #[no_grad] xs: &Array3<f64>) -> f64 {
    let mut h = Array2::<f64>::zeros((xs.len_of(Axis(1)), w.nrows()));
    for t in 0..xs.len_of(Axis(0)) {
        h = (h.dot(w) + xs.index_axis(Axis(0), t).dot(u) + b).tanh();
    }
    (&h * &h).sum()
}

fn rnn_grad_by_hand(
    w: &Array2<f64>,
    u: &Array2<f64>,
    b: &Array1<f64>,
    xs: &Array3<f64>,
) -> (Array2<f64>, Array2<f64>, Array1<f64>) {
    let steps = xs.len_of(Axis(0));
    let mut hs = Vec::with_capacity(steps + 1);
    hs.push(Array2::<f64>::zeros((xs.len_of(Axis(1)), w.nrows())));
    for t in 0..steps {
        let h = (mm(&hs[t], w) + mm(&xs.index_axis(Axis(0), t), u) + b).map_tanh();
        hs.push(h);
    }
    let mut gh = &hs[steps] * 2.0;
    let (mut gw, mut gu, mut gb) = (
        Array2::zeros(w.raw_dim()),
        Array2::zeros(u.raw_dim()),
        Array1::zeros(b.len()),
    );
    for t in (0..steps).rev() {
        let h = &hs[t + 1];
        let gz = gh * (1.0 - h * h);
        matmul_into(&mut gw, &hs[t].t(), &gz);
        matmul_into(&mut gu, &xs.index_axis(Axis(0), t).t(), &gz);
        gb += &gz.sum_axis(Axis(0));
        gh = mm(&gz, &w.t());
    }
    (gw, gu, gb)
}

fn w4() -> Workload {
    let (w, u, b, xs) = w4_inputs();
    let a = grad!(rnn)(&w, &u, &b, &xs);
    let h = rnn_grad_by_hand(&w, &u, &b, &xs);
    assert_close("W4 w", &flat(&a.0), &flat(&h.0));
    assert_close("W4 u", &flat(&a.1), &flat(&h.1));
    assert_close("W4 b", &flat(&a.2), &flat(&h.2));
    let burn = burn_peer::Rnn::new(&w, &u, &b, &xs);
    let bg = burn.grad();
    assert_close("W4 burn w", &bg[0], &flat(&a.0));
    assert_close("W4 burn b", &bg[2], &flat(&a.2));
    let candle = candle_peer::Rnn::new(&w, &u, &b, &xs).expect("candle W4");
    let cg = candle.grad().expect("candle W4");
    assert_close("W4 candle w", &cg[0], &flat(&a.0));
    assert_close("W4 candle b", &cg[2], &flat(&a.2));
    let (wa, wb, wc) = (
        (w.clone(), u.clone(), b.clone(), xs.clone()),
        (w.clone(), u.clone(), b.clone(), xs.clone()),
        (w, u, b, xs),
    );
    let checksums = vec![
        crate::checksum(&a.0),
        crate::checksum(&a.1),
        crate::checksum(&a.2),
    ];
    Workload {
        name: "W4 tanh RNN h64 in32 batch16 50 steps",
        key: "W4",
        checksums,
        tolerance: 1e-9,
        runs: 200,
        adjoint: Box::new(move || {
            black_box(grad!(rnn)(&wa.0, &wa.1, &wa.2, black_box(&wa.3)));
        }),
        hand: Some(Box::new(move || {
            black_box(rnn_grad_by_hand(&wb.0, &wb.1, &wb.2, black_box(&wb.3)));
        })),
        primal: Some(Box::new(move || {
            black_box(rnn(&wc.0, &wc.1, &wc.2, black_box(&wc.3)));
        })),
        candle: Some(Box::new(move || {
            black_box(candle.grad().expect("candle W4"));
        })),
        burn: Some(Box::new(move || {
            black_box(burn.grad());
        })),
    }
}

// ----- W8: a Hessian-vector product of W4's loss (reverse over forward) -----

/// W4's parameters `w`, `u`, `b` and its inputs `xs`.
fn w4_inputs() -> (Array2<f64>, Array2<f64>, Array1<f64>, Array3<f64>) {
    let xs = Array3::from_shape_fn((50, 16, 32), |(t, i, j)| {
        (((t * 16 + i) * 32 + j) * 7919 % 1000) as f64 / 500.0 - 1.0
    });
    (
        pattern2(64, 64, 1, 0.15),
        pattern2(32, 64, 2, 0.2),
        pattern1(64, 3, 0.1),
        xs,
    )
}

fn w8() -> Workload {
    let (w, u, b, xs) = w4_inputs();
    let (dw, du, db) = (
        pattern2(64, 64, 11, 1.0),
        pattern2(32, 64, 12, 1.0),
        pattern1(64, 13, 1.0),
    );
    let hv = hvp!(rnn)(&w, &u, &b, &xs, &dw, &du, &db);
    // H d against central differences of the gradient along d.
    let h = 1e-5;
    let (p, m) = (
        grad!(rnn)(
            &(&w + &(&dw * h)),
            &(&u + &(&du * h)),
            &(&b + &(&db * h)),
            &xs,
        ),
        grad!(rnn)(
            &(&w - &(&dw * h)),
            &(&u - &(&du * h)),
            &(&b - &(&db * h)),
            &xs,
        ),
    );
    let fd = |a: &[f64], b: &[f64]| -> Vec<f64> {
        a.iter().zip(b).map(|(x, y)| (x - y) / (2.0 * h)).collect()
    };
    for (what, ours, want) in [
        ("w", flat(&hv.0), fd(&flat(&p.0), &flat(&m.0))),
        ("u", flat(&hv.1), fd(&flat(&p.1), &flat(&m.1))),
        ("b", flat(&hv.2), fd(&flat(&p.2), &flat(&m.2))),
    ] {
        let diff: f64 = ours.iter().zip(&want).map(|(a, b)| (a - b).powi(2)).sum();
        let norm: f64 = want.iter().map(|b| b * b).sum();
        assert!(
            diff.sqrt() <= 1e-6 * norm.sqrt(),
            "W8 {what}: H d differs from differences of the gradient by {:.2e}",
            (diff / norm).sqrt()
        );
    }
    let checksums = vec![
        crate::checksum(&hv.0),
        crate::checksum(&hv.1),
        crate::checksum(&hv.2),
    ];
    let (wa, wc) = (
        (w.clone(), u.clone(), b.clone(), xs.clone(), dw, du, db),
        (w, u, b, xs),
    );
    Workload {
        name: "W8 Hessian-vector product of W4's loss (reverse over forward through the loop)",
        key: "W8",
        checksums,
        tolerance: 1e-9,
        runs: 100,
        adjoint: Box::new(move || {
            let (w, u, b, xs, dw, du, db) = &wa;
            black_box(hvp!(rnn)(w, u, b, black_box(xs), dw, du, db));
        }),
        hand: None,
        // The gradient: the column reads what the HVP costs in gradients.
        primal: Some(Box::new(move || {
            black_box(grad!(rnn)(&wc.0, &wc.1, &wc.2, black_box(&wc.3)));
        })),
        candle: None,
        burn: None,
    }
}

// ----- W5: physics-informed: a loss on du/dx of a module, trained w.r.t. its parameters -----

use adjoint::nn::Dense;

/// The field `u(x)`: 1 -> 32 -> 32 -> 1, tanh, summed over the points (so its input
/// gradient is `du/dx` at each point).
struct Field;

#[differentiable]
impl Field {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> f64 {
        let h1 = Dense::new(32).call(cx, x).tanh();
        let h2 = Dense::new(32).call(cx, &h1).tanh();
        Dense::new(1).call(cx, &h2).sum()
    }
}

/// The residual of `u' = cos x` at the points: `grad!` of the field inside the loss.
struct Pinn;

#[differentiable]
impl Pinn {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> f64 {
        let (du,) = grad!(cx, |mdl, cx, x| mdl.call(cx, x), Field, x);
        let r = &du - &no_grad(x.cos());
        (&r * &r).mean().unwrap()
    }
}

const W5_PATHS: [&str; 6] = [
    "Field_0/Dense_0/kernel",
    "Field_0/Dense_0/bias",
    "Field_0/Dense_1/kernel",
    "Field_0/Dense_1/bias",
    "Field_0/Dense_2/kernel",
    "Field_0/Dense_2/bias",
];

/// The parameter gradient of the residual loss, by hand: the field's forward pass,
/// its input gradient (a backward pass seeded with ones), then that backward pass
/// and the forward pass differentiated in reverse.
#[allow(clippy::too_many_arguments)]
fn pinn_grad_by_hand(
    w1: &Array2<f64>,
    b1: &Array1<f64>,
    w2: &Array2<f64>,
    b2: &Array1<f64>,
    w3: &Array2<f64>,
    x: &Array2<f64>,
) -> MlpGrads {
    let n = x.nrows() as f64;
    let h1 = (mm(x, w1) + b1).map_tanh();
    let h2 = (mm(&h1, w2) + b2).map_tanh();
    let (s1, s2) = (1.0 - &h1 * &h1, 1.0 - &h2 * &h2);
    // du/dx: ones through the last layer, then back through the others.
    let gz2 = &s2 * &w3.column(0);
    let gh1 = mm(&gz2, &w2.t());
    let gz1 = &gh1 * &s1;
    let du = mm(&gz1, &w1.t());
    // The loss's cotangent, back through the input gradient...
    let rbar = (du - x.mapv(f64::cos)) * (2.0 / n);
    let mut gw1 = mm(&rbar.t(), &gz1);
    let gz1bar = mm(&rbar, w1);
    let gh1bar = &gz1bar * &s1;
    let mut h1bar = &gz1bar * &gh1 * &h1 * -2.0;
    let gz2bar = mm(&gh1bar, w2);
    let mut gw2 = mm(&gh1bar.t(), &gz2);
    let gh2bar = &gz2bar * &s2;
    let h2bar = &gz2bar * &w3.column(0) * &h2 * -2.0;
    let gw3 = gh2bar.sum_axis(Axis(0)).insert_axis(Axis(1));
    // ... and back through the forward pass.
    let z2bar = h2bar * &s2;
    matmul_into(&mut gw2, &h1.t(), &z2bar);
    let gb2 = z2bar.sum_axis(Axis(0));
    matmul_into(&mut h1bar, &z2bar, &w2.t());
    let z1bar = h1bar * &s1;
    matmul_into(&mut gw1, &x.t(), &z1bar);
    let gb1 = z1bar.sum_axis(Axis(0));
    (gw1, gb1, gw2, gb2, gw3, Array1::zeros(1))
}

fn w5() -> Workload {
    let (w1, b1) = (pattern2(1, 32, 1, 0.8), pattern1(32, 2, 0.2));
    let (w2, b2) = (pattern2(32, 32, 3, 0.25), pattern1(32, 4, 0.1));
    let (w3, b3) = (pattern2(32, 1, 5, 0.3), pattern1(1, 6, 0.1));
    let x = Array2::from_shape_fn((128, 1), |(i, _)| i as f64 * 3.0 / 127.0 - 1.5);
    let vars = Variables::new()
        .with("params", W5_PATHS[0], w1.clone())
        .and_then(|v| v.with("params", W5_PATHS[1], b1.clone()))
        .and_then(|v| v.with("params", W5_PATHS[2], w2.clone()))
        .and_then(|v| v.with("params", W5_PATHS[3], b2.clone()))
        .and_then(|v| v.with("params", W5_PATHS[4], w3.clone()))
        .and_then(|v| v.with("params", W5_PATHS[5], b3))
        .expect("W5 variables");
    assert_eq!(vars.shapes(), Pinn.init(0, &x).expect("W5 init").shapes());
    let (_, grads) = value_and_grad!(|v: &Variables| Pinn.apply(v, &x).expect("W5"))(&vars);
    let ours: Vec<ndarray::ArrayD<f64>> = W5_PATHS
        .iter()
        .map(|p| grads.read("params", p).expect("W5 gradient"))
        .collect();
    let h = pinn_grad_by_hand(&w1, &b1, &w2, &b2, &w3, &x);
    assert_close("W5 w1", &flat(&ours[0]), &flat(&h.0));
    assert_close("W5 b1", &flat(&ours[1]), &flat(&h.1));
    assert_close("W5 w2", &flat(&ours[2]), &flat(&h.2));
    assert_close("W5 b2", &flat(&ours[3]), &flat(&h.3));
    assert_close("W5 w3", &flat(&ours[4]), &flat(&h.4));
    assert_close("W5 b3", &flat(&ours[5]), &flat(&h.5));
    let checksums = ours.iter().map(crate::checksum).collect();
    let (va, xa, xb, xc) = (vars.clone(), x.clone(), x.clone(), x);
    let vc = vars;
    Workload {
        name: "W5 physics-informed: grad of du/dx loss, MLP 1-32-32-1, 128 points",
        key: "W5",
        checksums,
        tolerance: 1e-9,
        runs: 400,
        adjoint: Box::new(move || {
            black_box(value_and_grad!(|v: &Variables| Pinn
                .apply(v, &xa)
                .expect("W5"))(black_box(&va)));
        }),
        hand: Some(Box::new(move || {
            black_box(pinn_grad_by_hand(&w1, &b1, &w2, &b2, &w3, black_box(&xb)));
        })),
        primal: Some(Box::new(move || {
            black_box(Pinn.apply(black_box(&vc), &xc).expect("W5"));
        })),
        // Neither differentiates a gradient again: candle calls second order out of
        // scope (huggingface/candle#2462), burn has no double backward
        // (tracel-ai/burn#1942).
        candle: None,
        burn: None,
    }
}

pub fn all() -> Vec<Workload> {
    vec![w1(), w2(), w3(), w4(), w5(), w8(), w9(), w10()]
}

// ----- W9: a Hessian-vector product in a model's parameters, through `apply` -----

/// A tanh MLP 16 -> 64 -> 64 -> 1 as Flax modules.
struct Regressor;

#[differentiable]
impl Regressor {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> Array2<f64> {
        let h1 = Dense::new(64).call(cx, x).tanh();
        let h2 = Dense::new(64).call(cx, &h1).tanh();
        Dense::new(1).call(cx, &h2)
    }
}

/// Mean squared error of the model on `(x, t)`, a function of its variables.
#[differentiable(jvp)]
fn regressor_loss(v: &Variables, #[no_grad] x: &Array2<f64>, #[no_grad] t: &Array2<f64>) -> f64 {
    let d = &Regressor.apply(v, x).unwrap() - t;
    (&d * &d).mean().unwrap()
}

const W9_PATHS: [&str; 6] = [
    "Dense_0/kernel",
    "Dense_0/bias",
    "Dense_1/kernel",
    "Dense_1/bias",
    "Dense_2/kernel",
    "Dense_2/bias",
];

/// A tree of the regressor's variables from six patterns starting at `seed`.
fn w9_tree(seed: usize, scales: [f64; 6]) -> Variables {
    let leaves: [ndarray::ArrayD<f64>; 6] = [
        pattern2(16, 64, seed, scales[0]).into_dyn(),
        pattern1(64, seed + 1, scales[1]).into_dyn(),
        pattern2(64, 64, seed + 2, scales[2]).into_dyn(),
        pattern1(64, seed + 3, scales[3]).into_dyn(),
        pattern2(64, 1, seed + 4, scales[4]).into_dyn(),
        pattern1(1, seed + 5, scales[5]).into_dyn(),
    ];
    let mut v = Variables::new();
    for (path, leaf) in W9_PATHS.iter().zip(leaves) {
        v = v.with("params", path, leaf).expect("W9 variables");
    }
    v
}

fn w9() -> Workload {
    let vars = w9_tree(1, [0.25, 0.1, 0.125, 0.1, 0.125, 0.1]);
    let dv = w9_tree(11, [1.0; 6]);
    let (x, t) = (pattern2(128, 16, 7, 1.0), pattern2(128, 1, 8, 1.0));
    assert_eq!(vars.shapes(), Regressor.init(0, &x).expect("W9 init").shapes());
    let hv = hvp!(regressor_loss)(&vars, &x, &t, &dv);
    // H d against central differences of the gradient along d.
    let h = 1e-5;
    let at = |s: f64| grad!(regressor_loss)(&vars.zip_map(&dv, |w, d| w + s * d).unwrap(), &x, &t);
    let fd = at(h).sub(&at(-h)).expect("W9 trees").scale(0.5 / h);
    let off = hv.sub(&fd).expect("W9 trees").global_norm() / fd.global_norm();
    assert!(off <= 1e-6, "W9: H d differs from differences of the gradient by {off:.2e}");
    let checksums = W9_PATHS
        .iter()
        .map(|p| crate::checksum(&hv.read::<ndarray::ArrayD<f64>>("params", p).expect("W9 H d")))
        .collect();
    let (va, vc) = ((vars.clone(), x.clone(), t.clone(), dv), (vars, x, t));
    Workload {
        name: "W9 Hessian-vector product in a model's parameters (MLP 16-64-64-1 through apply, 128 rows)",
        key: "W9",
        checksums,
        tolerance: 1e-9,
        runs: 200,
        adjoint: Box::new(move || {
            let (v, x, t, dv) = &va;
            black_box(hvp!(regressor_loss)(v, black_box(x), t, dv));
        }),
        hand: None,
        // The gradient: the column reads what the HVP costs in gradients.
        primal: Some(Box::new(move || {
            black_box(grad!(regressor_loss)(&vc.0, black_box(&vc.1), &vc.2));
        })),
        candle: None,
        burn: None,
    }
}

// ----- W10: forward mode of a model in its inputs, through `apply` -----

/// The regressor's output in its inputs, its variables held.
#[differentiable(jvp)]
fn regressor_out(#[no_grad] v: &Variables, x: &Array2<f64>) -> Array2<f64> {
    Regressor.apply(v, x).unwrap()
}

fn w10() -> Workload {
    let vars = w9_tree(1, [0.25, 0.1, 0.125, 0.1, 0.125, 0.1]);
    let (x, dx) = (pattern2(128, 16, 7, 1.0), pattern2(128, 16, 9, 1.0));
    let (y, dy) = jvp!(regressor_out)(&vars, &x, &dx);
    // The value by the runtime's `tanh` kernel (reverse mode's too), within a few
    // ulps of the model's own `tanh` (libm's).
    let plain = regressor_out(&vars, &x);
    let drift = (&y - &plain).iter().fold(0.0f64, |m, d| m.max(d.abs()));
    assert!(drift <= 1e-15, "W10: the JVP's value differs from the model's by {drift:.2e}");
    // The tangent against central differences of the output along `dx`.
    let h = 1e-6;
    let fd = (regressor_out(&vars, &(&x + &(&dx * h))) - regressor_out(&vars, &(&x - &(&dx * h))))
        / (2.0 * h);
    let off = (&dy - &fd).mapv(|d| d * d).sum().sqrt() / fd.mapv(|d| d * d).sum().sqrt();
    assert!(off <= 1e-6, "W10: the tangent differs from differences by {off:.2e}");
    let checksums = vec![crate::checksum(&dy)];
    let (va, vc) = ((vars.clone(), x.clone(), dx), (vars, x));
    Workload {
        name: "W10 JVP of a model in its inputs (MLP 16-64-64-1 through apply, 128 rows)",
        key: "W10",
        checksums,
        tolerance: 1e-9,
        runs: 400,
        adjoint: Box::new(move || {
            let (v, x, dx) = &va;
            black_box(jvp!(regressor_out)(v, black_box(x), dx));
        }),
        hand: None,
        primal: Some(Box::new(move || {
            black_box(regressor_out(&vc.0, black_box(&vc.1)));
        })),
        candle: None,
        burn: None,
    }
}
