//! The curvature of a training loss in a model's parameters: Hessian-vector products
//! through `model.apply` (`hvp!` of a loss in its `Variables`, JAX's
//! `jax.jvp(jax.grad(loss), (params,), (v,))`), used by power iteration to find the
//! loss's sharpness (the Hessian's largest eigenvalue) before and after training.
//!
//! Run: `cargo run -p adjoint-examples --example curvature`

use adjoint::optim::adam;
use adjoint::prelude::*;
use adjoint::train::TrainState;
use ndarray::{Array1, Array2, Axis};

/// A one-hidden-layer network, as Flax's `nn.Dense(16)`, `tanh`, `nn.Dense(1)`.
struct Mlp;

#[differentiable]
impl Mlp {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> Array2<f64> {
        let h = nn::Dense::new(16).call(cx, x).tanh();
        nn::Dense::new(1).call(cx, &h)
    }
}

/// Mean squared error of the model on `(x, y)`; `(jvp)` writes its forward mode,
/// which `hvp!` differentiates in reverse.
#[differentiable(jvp)]
fn loss(v: &Variables, #[no_grad] x: &Array2<f64>, #[no_grad] y: &Array2<f64>) -> f64 {
    let err = &Mlp.apply(v, x).unwrap() - y;
    (&err * &err).mean().unwrap()
}

/// The Hessian's largest eigenvalue by power iteration from `start`, and the
/// direction it converged to.
fn sharpness(
    vars: &Variables,
    x: &Array2<f64>,
    y: &Array2<f64>,
    start: &Variables,
) -> (f64, Variables) {
    let mut v = start.scale(1.0 / start.global_norm());
    let mut lambda = 0.0;
    for _ in 0..50 {
        let hv = hvp!(loss)(vars, x, y, &v);
        lambda = hv.dot(&v).expect("same trees");
        v = hv.scale(1.0 / hv.global_norm());
    }
    (lambda, v)
}

fn main() -> Result<(), ScopeError> {
    // y = sin(3 x) on [-1, 1], 64 points.
    let x = Array1::linspace(-1.0, 1.0, 64).insert_axis(Axis(1));
    let y = x.mapv(|v: f64| (3.0 * v).sin());
    let vars = Mlp.init(0, &x)?;
    // Every parameter's direction, a fixed pattern.
    let start = vars.map(|w| (w * 7.1 + 0.3).sin()).only(&["params"]);

    let (before, _) = sharpness(&vars, &x, &y, &start);
    println!(
        "before training: loss {:.5}, sharpness {before:.4}",
        loss(&vars, &x, &y)
    );

    let mut state = TrainState::create(vars, adam(0.02));
    for _ in 0..1500 {
        let grads = grad!(loss)(&state.variables(), &x, &y);
        state.apply_gradients(grads)?;
    }
    let trained = state.variables();
    let (after, v) = sharpness(&trained, &x, &y, &start);
    println!(
        "after training:  loss {:.5}, sharpness {after:.4}",
        loss(&trained, &x, &y)
    );

    // The last product against central differences of the gradient along `v`.
    let h = 1e-5;
    let at = |s: f64| grad!(loss)(&trained.zip_map(&v, |w, d| w + s * d).unwrap(), &x, &y);
    let differences = at(h).sub(&at(-h))?.scale(0.5 / h);
    let hv = hvp!(loss)(&trained, &x, &y, &v);
    println!(
        "|H v - central differences| / |H v| = {:.1e}",
        hv.sub(&differences)?.global_norm() / hv.global_norm()
    );
    Ok(())
}
