//! Second order and Jacobians against JAX (`reference/second_order.json`, from
//! `gen_second_order.py`): `hessian!`, `hvp!`, `jacfwd!` and `jacrev!` of functions
//! with loops and branches, and the HVPs of the benchmark losses' shapes (W1's
//! Rosenbrock, W2's tanh MLP, W3's relu MLP with cross-entropy, W4's RNN in its
//! weights), to 1e-9 relative (normwise over each result).

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

// ----- HVPs of the benchmark losses' shapes (W2, W3, W4), small -----

/// An `hvp_*` case: the case, its parameters, its constants and the direction.
type HvpCase = (Json, Vec<ArrayD<f64>>, Vec<ArrayD<f64>>, Vec<ArrayD<f64>>);

fn hvp_case(name: &str) -> HvpCase {
    let case = reference("second_order.json", name);
    let list = |k: &str| {
        case[k]
            .as_array()
            .expect("a list")
            .iter()
            .map(flat)
            .collect()
    };
    let (p, c, v) = (list("params"), list("consts"), list("v"));
    (case, p, c, v)
}

fn m2(a: &ArrayD<f64>) -> Array2<f64> {
    a.clone().into_dimensionality().expect("a matrix")
}

fn v1(a: &ArrayD<f64>) -> Array1<f64> {
    a.clone().into_dimensionality().expect("a vector")
}

#[differentiable(jvp)]
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

#[test]
fn hvp_of_a_tanh_mlp() {
    let (case, p, c, v) = hvp_case("hvp_mlp_tanh");
    let (w1, b1, w2, b2, w3, b3) = (
        m2(&p[0]),
        v1(&p[1]),
        m2(&p[2]),
        v1(&p[3]),
        m2(&p[4]),
        v1(&p[5]),
    );
    let (x, t) = (m2(&c[0]), m2(&c[1]));
    let value = mlp_tanh(&w1, &b1, &w2, &b2, &w3, &b3, &x, &t);
    assert!((value - case["value"].as_f64().unwrap()).abs() < 1e-12);
    let hv = hvp!(mlp_tanh)(
        &w1,
        &b1,
        &w2,
        &b2,
        &w3,
        &b3,
        &x,
        &t,
        &m2(&v[0]),
        &v1(&v[1]),
        &m2(&v[2]),
        &v1(&v[3]),
        &m2(&v[4]),
        &v1(&v[5]),
    );
    let ours = [
        hv.0.into_dyn(),
        hv.1.into_dyn(),
        hv.2.into_dyn(),
        hv.3.into_dyn(),
        hv.4.into_dyn(),
        hv.5.into_dyn(),
    ];
    for (k, (o, j)) in ours.iter().zip(case["hvp"].as_array().unwrap()).enumerate() {
        assert_close(&format!("hvp {k}"), o, &flat(j));
    }
}

#[differentiable(jvp)]
fn mlp_xent(
    w1: &Array2<f64>,
    b1: &Array1<f64>,
    w2: &Array2<f64>,
    b2: &Array1<f64>,
    #[no_grad] x: &Array2<f64>,
    #[no_grad] onehot: &Array2<f64>,
) -> f64 {
    let h = relu(&(x.dot(w1) + b1));
    let logp = log_softmax(&(h.dot(w2) + b2), ndarray::Axis(1));
    -(&logp * onehot).sum() / x.nrows() as f64
}

#[test]
fn hvp_of_a_relu_mlp_with_cross_entropy() {
    let (case, p, c, v) = hvp_case("hvp_mlp_xent");
    let (w1, b1, w2, b2) = (m2(&p[0]), v1(&p[1]), m2(&p[2]), v1(&p[3]));
    let (x, onehot) = (m2(&c[0]), m2(&c[1]));
    let value = mlp_xent(&w1, &b1, &w2, &b2, &x, &onehot);
    assert!((value - case["value"].as_f64().unwrap()).abs() < 1e-12);
    let hv = hvp!(mlp_xent)(
        &w1,
        &b1,
        &w2,
        &b2,
        &x,
        &onehot,
        &m2(&v[0]),
        &v1(&v[1]),
        &m2(&v[2]),
        &v1(&v[3]),
    );
    let ours = [
        hv.0.into_dyn(),
        hv.1.into_dyn(),
        hv.2.into_dyn(),
        hv.3.into_dyn(),
    ];
    for (k, (o, j)) in ours.iter().zip(case["hvp"].as_array().unwrap()).enumerate() {
        assert_close(&format!("hvp {k}"), o, &flat(j));
    }
}

/// W4's RNN, in its weights.
#[differentiable(jvp)]
fn rnn_weights(
    w: &Array2<f64>,
    u: &Array2<f64>,
    b: &Array1<f64>,
    #[no_grad] xs: &ndarray::Array3<f64>,
) -> f64 {
    let mut h = Array2::<f64>::zeros((xs.len_of(ndarray::Axis(1)), w.nrows()));
    for t in 0..xs.len_of(ndarray::Axis(0)) {
        h = (h.dot(w) + xs.index_axis(ndarray::Axis(0), t).dot(u) + b).tanh();
    }
    (&h * &h).sum()
}

#[test]
fn hvp_of_an_rnn_in_its_weights() {
    let (case, p, c, v) = hvp_case("hvp_rnn");
    let (w, u, b) = (m2(&p[0]), m2(&p[1]), v1(&p[2]));
    let xs: ndarray::Array3<f64> = c[0].clone().into_dimensionality().unwrap();
    let value = rnn_weights(&w, &u, &b, &xs);
    assert!((value - case["value"].as_f64().unwrap()).abs() < 1e-12);
    let hv = hvp!(rnn_weights)(&w, &u, &b, &xs, &m2(&v[0]), &m2(&v[1]), &v1(&v[2]));
    let ours = [hv.0.into_dyn(), hv.1.into_dyn(), hv.2.into_dyn()];
    for (k, (o, j)) in ours.iter().zip(case["hvp"].as_array().unwrap()).enumerate() {
        assert_close(&format!("hvp {k}"), o, &flat(j));
    }
}

/// Generic over the float type: a Hessian in f64 and in f32.
#[differentiable(jvp)]
fn wave<A: adjoint::Real>(x: &Array1<A>, k: A) -> A {
    (x.sin() * k).sum()
}

#[differentiable(jvp)]
fn cubes(x: &Array1<f32>) -> f32 {
    (x * x * x).sum()
}

#[test]
fn hessians_of_generic_and_f32_functions() {
    let x = ndarray::array![1.0f64, 2.0];
    let h = hessian!(wave)(&x, 3.0);
    // -k sin(x) on the diagonal.
    let want = ndarray::array![[-3.0 * 1.0f64.sin(), 0.0], [0.0, -3.0 * 2.0f64.sin()]];
    assert_close("wave", &h, &want.into_dyn());
    assert_eq!(wave(&x, 3.0), (x.sin() * 3.0).sum());
    let y = ndarray::array![1.0f32, 2.0];
    assert_eq!(
        hessian!(cubes)(&y),
        ndarray::array![[6.0f32, 0.0], [0.0, 12.0]].into_dyn()
    );
    assert_eq!(cubes(&y), 9.0);
}

// ----- `grad!` inside a function that is differentiated -----

/// A small tanh network of its input `x` and weights `w` (`w[..3]` scales, `w[3..]`
/// shifts).
#[differentiable(jvp)]
fn net(x: &Array1<f64>, w: &Array1<f64>) -> f64 {
    let (a, b) = (w.slice(ndarray::s![..3]), w.slice(ndarray::s![3..]));
    let h = (&a * x + b).tanh();
    (&h * &h * x).sum() + (x * &a).sin().sum()
}

/// An input-gradient penalty: `grad!` of `net` inside the function (JAX's
/// `jax.grad(net, argnums=(0, 1))` inside `grad_penalty`).
#[differentiable]
fn grad_penalty(x: &Array1<f64>, w: &Array1<f64>) -> f64 {
    let (gx, gw) = grad!(net)(x, w);
    (&gx * &gx).sum() + gw.sum() * x.sum()
}

/// Second order through a `grad!` in the body (its pullback is `net`'s
/// Hessian-vector product), against `jax.grad` of the same penalty.
#[test]
fn gradient_of_a_function_that_takes_a_gradient() {
    check_free_second_order("grad_penalty", grad_penalty::value_and_grad);
}

/// The value and the gradients in `x` and `w` of the reference case `name`'s loss
/// (`value_and_grad` of it), against JAX's.
fn check_free_second_order(
    name: &str,
    value_and_grad: impl Fn(&Array1<f64>, &Array1<f64>) -> (f64, (Array1<f64>, Array1<f64>)),
) {
    let case = reference("second_order.json", name);
    let (x, w) = (vector(&case["x"]), vector(&case["w"]));
    let (value, (gx, gw)) = value_and_grad(&x, &w);
    let want = case["value"].as_f64().expect("value");
    assert!(
        (value - want).abs() <= 1e-12 * want.abs(),
        "{name}: {value} against {want}"
    );
    assert_close("grad_x", &gx.into_dyn(), &flat(&case["grad_x"]));
    assert_close("grad_w", &gw.into_dyn(), &flat(&case["grad_w"]));
}

/// A residual on a network's value and input gradient, both from
/// `value_and_grad!` in the body (`jax.value_and_grad(net)` inside the loss).
#[differentiable]
fn value_grad_loss(x: &Array1<f64>, w: &Array1<f64>) -> f64 {
    let (v, (gx, _)) = value_and_grad!(net)(x, w);
    let r = &gx - &x.cos();
    (v - 1.0) * (v - 1.0) + (&r * &r).sum()
}

/// Second order through a `value_and_grad!` in the body: the value's cotangent
/// adds the gradient, the gradient's the Hessian-vector product; against JAX.
#[test]
fn gradient_of_a_function_that_takes_a_value_and_gradient() {
    check_free_second_order("value_and_grad_loss", value_grad_loss::value_and_grad);
}

/// A loss with an optional mask, as Flax ports write attention masks: a
/// `#[no_grad]` argument holding a reference, matched in the body.
#[differentiable(jvp)]
fn masked(x: &Array1<f64>, #[no_grad] mask: Option<&Array1<f64>>) -> f64 {
    let h = x.tanh();
    let h = match mask {
        Some(m) => &h * m,
        None => h,
    };
    (&h * &h).sum()
}

/// The squared input gradient of `masked`, masked or not.
#[differentiable]
fn masked_penalty(x: &Array1<f64>, #[no_grad] mask: Option<&Array1<f64>>) -> f64 {
    let g = grad!(masked)(x, mask);
    (&g * &g).sum()
}

/// Second order through a `grad!` of a function taking an optional mask (its
/// pullback keeps a copy of the mask), and `hvp!` of it, against central
/// differences of the first-order values.
#[test]
fn second_order_through_an_optional_mask() {
    let x = Array1::from(vec![0.3, -1.2, 0.7, 2.0]);
    let m = Array1::from(vec![1.0, 0.0, 0.5, 1.0]);
    let h = 1e-6;
    let bump = |i: usize, by: f64| {
        let mut y = x.clone();
        y[i] += by;
        y
    };
    for mask in [Some(&m), None] {
        let g = grad!(masked_penalty)(&x, mask);
        let d = Array1::from(vec![1.0, -0.5, 0.25, 2.0]);
        let hv = hvp!(masked)(&x, mask, &d);
        for i in 0..x.len() {
            let want = (masked_penalty(&bump(i, h), mask) - masked_penalty(&bump(i, -h), mask))
                / (2.0 * h);
            assert!(
                (g[i] - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "{i}: {} against {want}",
                g[i]
            );
            let gp = grad!(masked)(&(&x + &(&d * h)), mask);
            let gm = grad!(masked)(&(&x - &(&d * h)), mask);
            let want = (gp[i] - gm[i]) / (2.0 * h);
            assert!(
                (hv[i] - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "hvp {i}: {} against {want}",
                hv[i]
            );
        }
    }
    // The mask reaches the second order: where it is zero, nothing moves.
    assert_eq!(grad!(masked_penalty)(&x, Some(&m))[1], 0.0);
}

// ----- Hessian-vector products in a model's parameters -----

/// A shared parameter applied in a loop and a branch on the data, between two
/// layers: `Resid` of `gen_second_order.py`.
struct Resid;

#[differentiable]
impl Resid {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> Array2<f64> {
        let mut h = nn::Dense::new(4).call(cx, x).tanh();
        let r: Array2<f64> = cx.param("r", init::zeros, (4, 4));
        for _ in 0..2 {
            h = &h + &h.dot(&r).tanh();
        }
        let h = if h.sum() > 0.0 { &h * 1.5 } else { &h * &h };
        nn::Dense::new(1).call(cx, &h)
    }
}

/// Flax's `loss(variables, x) = mean((model.apply(variables, x) - t)^2)`.
#[differentiable(jvp)]
fn resid_loss(v: &Variables, x: &Array2<f64>, #[no_grad] t: &Array2<f64>) -> f64 {
    let d = &Resid.apply(v, x).unwrap() - t;
    (&d * &d).mean().unwrap()
}

/// `jax.jvp(jax.grad(loss, argnums=(0, 1)), (variables, x), (dv, dx))`: the
/// Hessian-vector product in a model's parameters and its input together (what
/// Newton-CG, curvature estimates and influence functions take), through `apply`.
#[test]
fn hvp_in_a_models_parameters_and_input() {
    let case = reference("second_order.json", "hvp_params_loop");
    let (vars, dv) = (
        adjoint_tests::variables(&case["variables"]),
        adjoint_tests::variables(&case["dv"]),
    );
    let (x, t, dx) = (
        adjoint_tests::matrix(&case["x"]),
        adjoint_tests::matrix(&case["t"]),
        adjoint_tests::matrix(&case["dx"]),
    );
    assert_eq!(case["positive_arm"].as_bool(), Some(true));
    let loss = resid_loss(&vars, &x, &t);
    assert!(
        (loss - case["loss"].as_f64().unwrap()).abs() < 1e-12,
        "{loss}"
    );
    let (hv, hx) = hvp!(resid_loss)(&vars, &x, &t, &dv, &dx);
    assert_eq!(hv.error(), None);
    let err = adjoint_tests::assert_tree_close(
        "H v in the parameters",
        &hv,
        &case["hvp_variables"],
        1e-9,
    );
    println!("H v in the parameters: normwise relative error {err:.1e}");
    assert_close(
        "H v in the input",
        &hx.into_dyn(),
        &adjoint_tests::matrix(&case["hvp_x"]).into_dyn(),
    );
}

/// BatchNorm on the batch's statistics: `Normed` of `gen_second_order.py`.
struct Normed;

#[differentiable]
impl Normed {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> Array2<f64> {
        let h = nn::Dense::new(4).call(cx, x);
        let h = nn::BatchNorm::new()
            .use_running_average(false)
            .momentum(0.9)
            .call(cx, &h);
        nn::Dense::new(1).call(cx, &h.tanh())
    }
}

/// The loss through `apply_with(.., mutable=["batch_stats"])`, the updated
/// statistics dropped.
#[differentiable(jvp)]
fn normed_loss(
    v: &Variables,
    #[no_grad] opts: &adjoint::scope::ApplyOptions,
    #[no_grad] x: &Array2<f64>,
    #[no_grad] t: &Array2<f64>,
) -> f64 {
    let (y, _stats) = Normed.apply_with(v, opts, x).unwrap();
    let d = &y - t;
    (&d * &d).mean().unwrap()
}

/// `jax.jvp(jax.grad(loss), (params,), (v,))` through BatchNorm's batch statistics
/// (second order through the mean and variance of the batch).
#[test]
fn hvp_in_a_models_parameters_through_batch_statistics() {
    let case = reference("second_order.json", "hvp_params_batchnorm");
    let (vars, dv) = (
        adjoint_tests::variables(&case["variables"]),
        adjoint_tests::variables(&case["dv"]),
    );
    let (x, t) = (
        adjoint_tests::matrix(&case["x"]),
        adjoint_tests::matrix(&case["t"]),
    );
    let opts = adjoint::scope::ApplyOptions::new().mutable(["batch_stats"]);
    let loss = normed_loss(&vars, &opts, &x, &t);
    assert!(
        (loss - case["loss"].as_f64().unwrap()).abs() < 1e-12,
        "{loss}"
    );
    let hv = hvp!(normed_loss)(&vars, &opts, &x, &t, &dv);
    assert_eq!(hv.error(), None);
    let err = adjoint_tests::assert_tree_close(
        "H v in the parameters",
        &hv,
        &case["hvp_variables"],
        1e-9,
    );
    println!("H v in the parameters through batch statistics: normwise relative error {err:.1e}");
}
