//! Flax's activations against `reference/layers.json` (from `gen_layers.py`, real
//! JAX): on one vector `x`, the value `f(x)`, `loss = sum(f(x) * cos(x))` and its
//! gradient. Then forward mode (the JVP along a direction equals the gradient's
//! projection) and second order through it (a Hessian-vector product against
//! central differences of the gradient), which go through each activation's
//! derivative rule.

use adjoint::check::{Tolerance, check_vjp};
use adjoint::prelude::*;
use adjoint_tests::{array, assert_close, reference, scalar};
use ndarray::Array1;

const RTOL: f64 = 1e-12;

macro_rules! activation_cases {
    ($($test:ident: $reference:literal, |$x:ident| $f:expr;)*) => {$(
        #[test]
        fn $test() {
            #[differentiable(jvp)]
            fn loss($x: &Array1<f64>) -> f64 {
                ($f * $x.cos()).sum()
            }

            let case = reference("layers.json", "activations")[$reference].clone();
            let x: Array1<f64> = array(&case["x"]).into_dimensionality().unwrap();
            let y = { let $x = &x; $f };
            assert_close($reference, &y.into_dyn(), &array(&case["y"]), RTOL);
            let (value, g) = value_and_grad!(loss)(&x);
            assert_close($reference, &scalar(value), &array(&case["loss"]), RTOL);
            assert_close($reference, &g.clone().into_dyn(), &array(&case["grad"]), RTOL);

            // Forward mode: the JVP along v is the gradient's projection on v.
            let v = x.mapv(|t| (3.0 * t).sin() + 0.25);
            let (y0, dy) = jvp!(loss)(&x, &v);
            assert_eq!(y0, value, "{}: the JVP's primal", $reference);
            let projected = g.dot(&v);
            assert!(
                (dy - projected).abs() <= 1e-12 * projected.abs().max(1.0),
                "{}: jvp {dy}, gradient along v {projected}", $reference
            );

            // Reverse over forward: the gradient of the JVP is H v.
            let hvp = grad!(
                |x: &Array1<f64>, v: &Array1<f64>| {
                    let (_, d) = jvp!(loss)(x, v);
                    d
                },
                wrt = [x]
            )(&x, &v);
            let tol = Tolerance { step: 1e-5, rtol: 1e-6, atol: 1e-8 };
            check_vjp(|x: &Array1<f64>| grad!(loss)(x), &x, &v, &hvp, tol)
                .unwrap_or_else(|e| panic!("{}: {e}", $reference));
        }
    )*};
}

activation_cases! {
    relu: "relu", |x| nn::relu(x);
    relu6: "relu6", |x| nn::relu6(x);
    sigmoid: "sigmoid", |x| nn::sigmoid(x);
    log_sigmoid: "log_sigmoid", |x| nn::log_sigmoid(x);
    softplus: "softplus", |x| nn::softplus(x);
    silu: "silu", |x| nn::silu(x);
    swish: "silu", |x| nn::swish(x);
    gelu: "gelu_tanh", |x| nn::gelu(x);
    gelu_exact: "gelu_exact", |x| nn::gelu_exact(x);
    elu: "elu", |x| nn::elu(x, 1.0);
    celu: "celu", |x| nn::celu(x, 1.0);
    selu: "selu", |x| nn::selu(x);
    leaky_relu: "leaky_relu", |x| nn::leaky_relu(x, 0.01);
    hard_tanh: "hard_tanh", |x| nn::hard_tanh(x);
    hard_sigmoid: "hard_sigmoid", |x| nn::hard_sigmoid(x);
    hard_silu: "hard_silu", |x| nn::hard_silu(x);
    hard_swish: "hard_silu", |x| nn::hard_swish(x);
    soft_sign: "soft_sign", |x| nn::soft_sign(x);
    tanh: "tanh", |x| x.tanh();
    nn_tanh: "tanh", |x| nn::tanh(x);
    mish: "mish", |x| nn::mish(x);
}

#[differentiable]
fn gelu_loss_f32(x: &Array1<f32>) -> f32 {
    (nn::gelu(x) + nn::elu(x, 0.5) + nn::mish(x)).sum()
}

#[differentiable]
fn gelu_loss_f64(x: &Array1<f64>) -> f64 {
    (nn::gelu(x) + nn::elu(x, 0.5) + nn::mish(x)).sum()
}

#[test]
fn single_precision_follows_double() {
    let x = Array1::linspace(-3.0f64, 3.0, 9);
    let (v64, g64) = value_and_grad!(gelu_loss_f64)(&x);
    let (v32, g32) = value_and_grad!(gelu_loss_f32)(&x.mapv(|t| t as f32));
    assert!((v32 as f64 - v64).abs() < 1e-5, "{v32} vs {v64}");
    for (a, b) in g32.iter().zip(&g64) {
        assert!((*a as f64 - b).abs() < 1e-5, "{a} vs {b}");
    }
}
