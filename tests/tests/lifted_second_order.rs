//! Second order through lifted transforms against Flax and JAX
//! (`reference/lifted_second_order.json`, from `gen_lifted_second_order.py`): `jax.grad`
//! of losses that call `nn.grad` or `nn.value_and_grad` inside a module, to 1e-9
//! relative; and the same with a random Dropout mask, against central differences
//! (no generator of ours matches JAX's).

use adjoint::nn::{Dense, Dropout};
use adjoint::optim::sgd;
use adjoint::prelude::*;
use adjoint::scope::ApplyOptions;
use adjoint::train::TrainState;
use adjoint_tests::{array, assert_tree_close, reference, variables};
use ndarray::{Array1, Array2, ArrayD, Dimension};

const RTOL: f64 = 1e-9;

fn vector(v: &serde_json::Value) -> Array1<f64> {
    array(v).into_dimensionality().expect("a vector")
}

fn matrix(v: &serde_json::Value) -> Array2<f64> {
    array(v).into_dimensionality().expect("a matrix")
}

fn close(what: &str, got: f64, want: f64) {
    let err = (got - want).abs() / want.abs().max(1e-300);
    println!("{what}: {got} (JAX {want}, relative error {err:.1e})");
    assert!(err <= RTOL, "{what}: got {got}, want {want}");
}

// ----- a loop, a branch and a call, under value_and_grad with variables and rngs -----

/// The plain function the child calls.
#[differentiable(jvp)]
fn shift(h: &Array1<f64>, s: f64) -> Array1<f64> {
    h.sin() * s + h
}

/// `(jvp)`: its forward mode (second order) follows the call of `shift`.
#[derive(Clone)]
struct Body {
    random_dropout: bool,
}

#[differentiable(jvp)]
impl Body {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> f64 {
        let w: Array2<f64> = cx.param("w", init::zeros, (3, 3));
        let s: f64 = cx.param("s", init::zeros, ());
        let mut h = x.to_owned();
        for _ in 0..3 {
            h = (w.dot(&h) + x).tanh();
        }
        let h = if h.sum() > 0.0 { &h * 2.0 } else { &h * &h };
        let h = shift(&h, s);
        let h = Dropout::new(0.5)
            .deterministic(!self.random_dropout)
            .call(cx, &h);
        let y = Dense::new(2).call(cx, &h);
        (&y * &y).sum()
    }
}

struct Trained {
    random_dropout: bool,
}

#[differentiable]
impl Trained {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> f64 {
        let (v, (gx,)) = value_and_grad!(
            cx,
            |mdl, cx, x| mdl.call(cx, x),
            Body {
                random_dropout: self.random_dropout
            },
            x,
            variables = ["params"],
            rngs = ["dropout"]
        );
        v + (&gx * &gx).sum()
    }
}

fn trained_loss(model: &Trained, vars: &Variables, x: &Array1<f64>) -> (f64, Variables) {
    let opts = ApplyOptions::new().rng("dropout", 0);
    value_and_grad!(|v: &Variables| {
        let (loss, _) = model.apply_with(v, &opts, x).unwrap();
        loss
    })(vars)
}

#[test]
fn a_loop_a_branch_and_a_call_trained_through_value_and_grad() {
    let case = reference("lifted_second_order.json", "loop_branch_call");
    let model = Trained {
        random_dropout: false,
    };
    for (name, arm) in [("x_pos", true), ("x_neg", false)] {
        let input = &case["inputs"][name];
        assert_eq!(input["positive_arm"].as_bool(), Some(arm), "{name}: the arm");
        let x = vector(&input["x"]);
        let vars = variables(&case["variables"]);
        let (loss, grads) = trained_loss(&model, &vars, &x);
        assert_eq!(grads.error(), None);
        close(&format!("{name} loss"), loss, input["loss"].as_f64().unwrap());
        let err = assert_tree_close(&format!("{name} grads"), &grads, &input["grads"], RTOL);
        println!("{name} gradient in the parameters: normwise relative error {err:.1e}");

        // Three steps of SGD, as optax's `sgd(0.01)`: the loss before each step.
        let mut state = TrainState::create(vars, sgd(0.01, None, false));
        for (step, want) in input["sgd_losses"].as_array().unwrap().iter().enumerate() {
            let (loss, grads) = trained_loss(&model, &state.variables(), &x);
            close(&format!("{name} loss at step {step}"), loss, want.as_f64().unwrap());
            state.apply_gradients(grads).unwrap();
        }
        let err = assert_tree_close(
            &format!("{name} after sgd"),
            &state.variables(),
            &input["after_sgd"],
            RTOL,
        );
        println!("{name} parameters after 3 steps: normwise relative error {err:.1e}");
    }
}

/// With a random Dropout mask inside the lifted transform, the second-order pullback
/// runs the child again: it must draw the same mask (the same `rngs`, the same
/// counts of keys drawn). Against central differences of the loss.
#[test]
fn second_order_through_a_random_dropout_draws_the_same_mask() {
    let case = reference("lifted_second_order.json", "loop_branch_call");
    let model = Trained {
        random_dropout: true,
    };
    let x = vector(&case["inputs"]["x_neg"]["x"]);
    let vars = variables(&case["variables"]);
    let (_, grads) = trained_loss(&model, &vars, &x);
    assert_eq!(grads.error(), None);
    let path = "Body_0/Dense_0/kernel";
    let kernel: ArrayD<f64> = vars.read("params", path).unwrap();
    let got: ArrayD<f64> = grads.read("params", path).unwrap();
    let h = 1e-6;
    let mut dropped = 0;
    for (ix, g) in got.indexed_iter() {
        let at = |d: f64| {
            let mut k = kernel.clone();
            k[&ix] += d;
            let v = vars.clone().with("params", path, k).unwrap();
            trained_loss(&model, &v, &x).0
        };
        let fd = (at(h) - at(-h)) / (2.0 * h);
        assert!(
            (g - fd).abs() <= 1e-6 * (1.0 + fd.abs()),
            "{path}{:?}: {g} against differences {fd}",
            ix.slice()
        );
        dropped += usize::from(*g == 0.0);
    }
    // The mask drops some features (their rows have no gradient), not all.
    assert!(dropped > 0 && dropped < got.len(), "{dropped} zeros");
}

// ----- a PINN whose field applies a shared residual layer in a loop -----

struct Field;

#[differentiable]
impl Field {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> f64 {
        let mut h = Dense::new(6).call(cx, x).tanh();
        let r: Array2<f64> = cx.param("r", init::zeros, (6, 6));
        for _ in 0..3 {
            h = &h + &h.dot(&r).tanh();
        }
        Dense::new(1).call(cx, &h).sum()
    }
}

struct Pinn;

#[differentiable]
impl Pinn {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> f64 {
        let (du,) = grad!(cx, |mdl, cx, x| mdl.call(cx, x), Field, x);
        let res = &du - &no_grad(x.cos());
        (&res * &res).mean().unwrap()
    }
}

#[test]
fn pinn_with_a_loop_in_the_network() {
    let case = reference("lifted_second_order.json", "pinn_loop");
    let x = matrix(&case["x"]);
    let vars = variables(&case["variables"]);
    let (loss, grads) = value_and_grad!(|v: &Variables| Pinn.apply(v, &x).unwrap())(&vars);
    assert_eq!(grads.error(), None);
    close("pinn loss", loss, case["loss"].as_f64().unwrap());
    let err = assert_tree_close("pinn grads", &grads, &case["grads"], RTOL);
    println!("pinn gradient: normwise relative error {err:.1e}");
}

// ----- WGAN-GP's gradient penalty through a critic with a deterministic Dropout -----

struct Critic;

#[differentiable]
impl Critic {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> f64 {
        let h = nn::gelu(&Dense::new(8).call(cx, x));
        let h = Dropout::new(0.3).deterministic(true).call(cx, &h);
        Dense::new(1).call(cx, &h).sum()
    }
}

struct Penalty;

#[differentiable]
impl Penalty {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> f64 {
        let (g,) = grad!(cx, |mdl, cx, x| mdl.call(cx, x), Critic, x);
        let norms = (&g * &g).sum_axis(ndarray::Axis(1)).sqrt();
        let d = norms - 1.0;
        (&d * &d).mean().unwrap()
    }
}

#[test]
fn gradient_penalty_through_a_deterministic_dropout() {
    let case = reference("lifted_second_order.json", "gradient_penalty_dropout");
    let x = matrix(&case["x"]);
    let vars = variables(&case["variables"]);
    let (loss, grads) = value_and_grad!(|v: &Variables| Penalty.apply(v, &x).unwrap())(&vars);
    assert_eq!(grads.error(), None);
    close("penalty", loss, case["loss"].as_f64().unwrap());
    let err = assert_tree_close("penalty grads", &grads, &case["grads"], RTOL);
    println!("gradient penalty's gradient: normwise relative error {err:.1e}");
}

// ----- MAML: a grad! per inner step, in a loop -----

struct Learner;

#[differentiable]
impl Learner {
    fn call(&self, cx: &mut Scope, w: &Array1<f64>, x: &Array2<f64>, y: &Array1<f64>) -> f64 {
        let scale: f64 = cx.param("scale", init::ones, ());
        let pred = x.dot(w).tanh() * scale;
        let d = &pred - y;
        (&d * &d).mean().unwrap()
    }
}

struct Maml;

#[differentiable]
impl Maml {
    fn call(
        &self,
        cx: &mut Scope,
        xs: &Array2<f64>,
        ys: &Array1<f64>,
        xq: &Array2<f64>,
        yq: &Array1<f64>,
    ) -> f64 {
        let mut w: Array1<f64> = cx.param("w0", init::zeros, (3,));
        let learner = Learner;
        for _ in 0..3 {
            let (gw, _, _) = grad!(
                cx,
                |mdl, cx, w, x, y| mdl.call(cx, w, x, y),
                learner,
                &w,
                xs,
                ys
            );
            w = &w - &(gw * 0.5);
        }
        learner.call(cx, &w, xq, yq)
    }
}

#[test]
fn maml_inner_steps_are_differentiated() {
    let case = reference("lifted_second_order.json", "maml_inner");
    let (xs, ys) = (matrix(&case["xs"]), vector(&case["ys"]));
    let (xq, yq) = (matrix(&case["xq"]), vector(&case["yq"]));
    let vars = variables(&case["variables"]);
    let (loss, grads) =
        value_and_grad!(|v: &Variables| Maml.apply(v, &xs, &ys, &xq, &yq).unwrap())(&vars);
    assert_eq!(grads.error(), None);
    close("maml loss", loss, case["loss"].as_f64().unwrap());
    let err = assert_tree_close("maml grads", &grads, &case["grads"], RTOL);
    println!("maml gradient: normwise relative error {err:.1e}");
}
