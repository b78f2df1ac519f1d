//! Second order through lifted transforms against Flax and JAX
//! (`reference/lifted_second_order.json`, from `gen_lifted_second_order.py`): `jax.grad`
//! of losses that call `nn.grad` or `nn.value_and_grad` inside a module, to 1e-9
//! relative; and the same with a random Dropout mask, against central differences
//! (no generator of ours matches JAX's); a child of many constructs against central
//! differences; third order through nested lifted transforms, reported.

use adjoint::nn::{Dense, Dropout};
use adjoint::optim::sgd;
use adjoint::prelude::*;
use adjoint::scope::ApplyOptions;
use adjoint::train::TrainState;
use adjoint_tests::{
    array, assert_close, assert_scalar_close, assert_tree_close, matrix, reference, variables,
    vector,
};
use ndarray::{Array1, Array2, ArrayD, Dimension};

const RTOL: f64 = 1e-9;

fn close(what: &str, got: f64, want: f64) {
    assert_scalar_close(what, got, want, RTOL);
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
        assert_eq!(
            input["positive_arm"].as_bool(),
            Some(arm),
            "{name}: the arm"
        );
        let x = vector(&input["x"]);
        let vars = variables(&case["variables"]);
        let (loss, grads) = trained_loss(&model, &vars, &x);
        assert_eq!(grads.error(), None);
        close(
            &format!("{name} loss"),
            loss,
            input["loss"].as_f64().unwrap(),
        );
        let err = assert_tree_close(&format!("{name} grads"), &grads, &input["grads"], RTOL);
        println!("{name} gradient in the parameters: normwise relative error {err:.1e}");

        // Three steps of SGD, as optax's `sgd(0.01)`: the loss before each step.
        let mut state = TrainState::create(vars, sgd(0.01, None, false));
        for (step, want) in input["sgd_losses"].as_array().unwrap().iter().enumerate() {
            let (loss, grads) = trained_loss(&model, &state.variables(), &x);
            close(
                &format!("{name} loss at step {step}"),
                loss,
                want.as_f64().unwrap(),
            );
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
    assert_loss_and_grads("pinn_loop", "pinn", |v, x| {
        value_and_grad!(|v: &Variables| Pinn.apply(v, x).unwrap())(v)
    });
}

// ----- a PINN of plain layers: its field's input gradient differentiated again -----

struct MlpField;

#[differentiable]
impl MlpField {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> f64 {
        let h1 = Dense::new(6).call(cx, x).tanh();
        let h2 = &nn::sigmoid(&Dense::new(6).call(cx, &h1)) * &h1 - 0.3 * &h1;
        let h3 = &h2 / &(1.5 + &h1 * &h1) + (-&h2).exp();
        Dense::new(1).call(cx, &h3).sum() + (&h2 * &h2).mean().unwrap()
    }
}

struct MlpPinn;

#[differentiable]
impl MlpPinn {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> f64 {
        let (du,) = grad!(cx, |mdl, cx, x| mdl.call(cx, x), MlpField, x);
        let res = &du - &no_grad(x.cos());
        (&res * &res).mean().unwrap()
    }
}

#[test]
fn pinn_of_plain_layers_reverse_over_reverse() {
    // The field's body is written back as source: its input gradient's own reverse
    // mode gives the second order (the primal keeps its values).
    assert_loss_and_grads("pinn_mlp", "pinn_mlp", |v, x| {
        value_and_grad!(|v: &Variables| MlpPinn.apply(v, x).unwrap())(v)
    });
}

// ----- a PINN whose field holds a looping submodule (second order reruns) -----

struct Residual;

#[differentiable]
impl Residual {
    fn call(&self, cx: &mut Scope, h: &Array2<f64>) -> Array2<f64> {
        let r: Array2<f64> = cx.param("r", init::zeros, (6, 6));
        let mut h = h.clone();
        for _ in 0..2 {
            h = &h + &h.dot(&r).tanh();
        }
        h
    }
}

struct NestedField;

#[differentiable]
impl NestedField {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> f64 {
        let h = Dense::new(6).call(cx, x).tanh();
        let h = Residual.call(cx, &h);
        Dense::new(1).call(cx, &h).sum()
    }
}

struct NestedPinn;

#[differentiable]
impl NestedPinn {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> f64 {
        let (du,) = grad!(cx, |mdl, cx, x| mdl.call(cx, x), NestedField, x);
        let res = &du - &no_grad(x.cos());
        (&res * &res).mean().unwrap()
    }
}

#[test]
fn pinn_whose_field_holds_a_looping_submodule() {
    // The field's input gradient is written back as source, its submodule's is not
    // (it loops): second order runs the field's JVP-VJP again.
    assert_loss_and_grads("pinn_nested", "pinn_nested", |v, x| {
        value_and_grad!(|v: &Variables| NestedPinn.apply(v, x).unwrap())(v)
    });
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

// ----- lifted Jacobians (flax#735): jacrev! and jacfwd! inside a module -----

/// The child, for an input of rank 1 or 2 (the same body).
macro_rules! curve {
    ($name:ident, $array:ident) => {
        struct $name;

        #[differentiable]
        impl $name {
            fn call(&self, cx: &mut Scope, x: &$array<f64>, t: f64) -> $array<f64> {
                let mut h = Dense::new(3).call(cx, x).tanh();
                let r: Array2<f64> = cx.param("r", init::zeros, (3, 3));
                for _ in 0..2 {
                    h = h.dot(&r).sin() * t + &h;
                }
                let h = if h.sum() > 0.0 { &h * &h } else { -&h };
                Dense::new(2).call(cx, &h)
            }
        }
    };
}

curve!(Curve, Array1);
curve!(CurveBatch, Array2);

/// The Jacobian of the child in its input, the child's variables held, by reverse
/// (`forward: false`) or forward mode.
struct Sensitivity {
    forward: bool,
}

#[differentiable]
impl Sensitivity {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>, t: f64) -> ArrayD<f64> {
        if self.forward {
            jacfwd!(cx, |mdl, cx, x, t| mdl.call(cx, x, t), Curve, x, t)
        } else {
            jacrev!(cx, |mdl, cx, x, t| mdl.call(cx, x, t), Curve, x, t)
        }
    }
}

struct BatchSensitivity;

#[differentiable]
impl BatchSensitivity {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>, t: f64) -> ArrayD<f64> {
        jacrev!(cx, |mdl, cx, x, t| mdl.call(cx, x, t), CurveBatch, x, t)
    }
}

#[test]
fn lifted_jacobians_inside_a_module() {
    let case = reference("lifted_second_order.json", "lifted_jacobian");
    let (x, t) = (vector(&case["x"]), case["t"].as_f64().unwrap());
    let vars = variables(&case["variables"]);
    for (forward, want) in [(false, "jacobian"), (true, "jacobian_fwd")] {
        let jac = Sensitivity { forward }.apply(&vars, &x, t).unwrap();
        assert_eq!(jac.shape(), &[2, 4]);
        let err = adjoint_tests::max_rel_err(&jac, &array(&case[want]));
        println!("lifted {want}: normwise relative error {err:.1e}");
        adjoint_tests::assert_close(want, &jac, &array(&case[want]), RTOL);
    }
    // A batch: the Jacobian of every output in every input, shape [2, 2] ++ [2, 4].
    let xb = matrix(&case["x_batch"]);
    let vars_b = vars.subtree("Curve_0").prefixed("CurveBatch_0");
    let jac = BatchSensitivity.apply(&vars_b, &xb, t).unwrap();
    assert_eq!(jac.shape(), &[2, 2, 2, 4]);
    adjoint_tests::assert_close("batch", &jac, &array(&case["jacobian_batch"]), RTOL);
}

// ----- lifted Hessians: hessian! and hvp! inside a module -----

/// A scalar child: the squared output of `Curve` (rank 1 or 2).
macro_rules! energy {
    ($name:ident, $curve:ident, $array:ident) => {
        struct $name;

        #[differentiable]
        impl $name {
            fn call(&self, cx: &mut Scope, x: &$array<f64>, t: f64) -> f64 {
                let y = $curve.call(cx, x, t);
                (&y * &y).sum()
            }
        }
    };
}

energy!(Energy, Curve, Array1);
energy!(EnergyBatch, CurveBatch, Array2);

/// The Hessian of the child in its first input, and its Hessian-vector products.
struct Curvature;

#[differentiable]
impl Curvature {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>, t: f64) -> ArrayD<f64> {
        hessian!(cx, |mdl, cx, x, t| mdl.call(cx, x, t), Energy, x, t)
    }
}

struct CurvatureBatch;

#[differentiable]
impl CurvatureBatch {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>, t: f64) -> ArrayD<f64> {
        hessian!(cx, |mdl, cx, x, t| mdl.call(cx, x, t), EnergyBatch, x, t)
    }
}

struct Products;

#[differentiable]
impl Products {
    fn call(
        &self,
        cx: &mut Scope,
        x: &Array1<f64>,
        t: f64,
        v: &Array1<f64>,
        vt: f64,
    ) -> (Array1<f64>, f64) {
        hvp!(cx, |mdl, cx, x, t| mdl.call(cx, x, t), Energy, x, t, v, vt)
    }
}

#[test]
fn lifted_hessians_inside_a_module() {
    let case = reference("lifted_second_order.json", "lifted_hessian");
    let (x, t) = (vector(&case["x"]), case["t"].as_f64().unwrap());
    let vars = variables(&case["variables"]);
    let h = Curvature.apply(&vars, &x, t).unwrap();
    assert_eq!(h.shape(), &[4, 4]);
    let err = adjoint_tests::max_rel_err(&h, &array(&case["hessian"]));
    println!("lifted hessian: normwise relative error {err:.1e}");
    adjoint_tests::assert_close("hessian", &h, &array(&case["hessian"]), RTOL);

    let xb = matrix(&case["x_batch"]);
    let vars_b = vars
        .subtree("Energy_0/Curve_0")
        .prefixed("EnergyBatch_0/CurveBatch_0");
    let h = CurvatureBatch.apply(&vars_b, &xb, t).unwrap();
    assert_eq!(h.shape(), &[2, 4, 2, 4]);
    adjoint_tests::assert_close("batch", &h, &array(&case["hessian_batch"]), RTOL);

    let (v, vt) = (vector(&case["v"]), case["v_t"].as_f64().unwrap());
    let (hx, ht) = Products.apply(&vars, &x, t, &v, vt).unwrap();
    let err = adjoint_tests::max_rel_err(&hx.clone().into_dyn(), &array(&case["hvp_x"]));
    println!("lifted hvp: normwise relative error {err:.1e}");
    adjoint_tests::assert_close("hvp x", &hx.into_dyn(), &array(&case["hvp_x"]), RTOL);
    close("hvp t", ht, case["hvp_t"].as_f64().unwrap());
}

/// A child with a random Dropout: every row of `jacrev!` (and column of `jacfwd!`)
/// runs with the mask the first drew, so both modes give one Jacobian, whose dropped
/// features are dropped for every output.
struct NoisyCurve;

#[differentiable]
impl NoisyCurve {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> Array1<f64> {
        let h = Dense::new(6).call(cx, x).tanh();
        let h = Dropout::new(0.5).call(cx, &h);
        Dense::new(3).call(cx, &h)
    }
}

struct NoisySensitivity {
    forward: bool,
}

#[differentiable]
impl NoisySensitivity {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> ArrayD<f64> {
        if self.forward {
            jacfwd!(cx, |mdl, cx, x| mdl.call(cx, x), NoisyCurve, x)
        } else {
            jacrev!(cx, |mdl, cx, x| mdl.call(cx, x), NoisyCurve, x)
        }
    }
}

#[test]
fn lifted_jacobians_see_one_dropout_mask() {
    let x = ndarray::array![0.3, -0.5, 0.8, 0.1];
    let model = NoisySensitivity { forward: false };
    let vars = model.init(1, &x).unwrap();
    let opts = ApplyOptions::new().rng("dropout", 3);
    let (rev, _) = model.apply_with(&vars, &opts, &x).unwrap();
    let (fwd, _) = NoisySensitivity { forward: true }
        .apply_with(&vars, &opts, &x)
        .unwrap();
    assert_eq!(rev.shape(), &[3, 4]);
    adjoint_tests::assert_close("jacrev against jacfwd", &rev, &fwd, 1e-12);
    // Against differences of the child run plainly at the same path with the same key
    // (so with the same mask).
    let column = |i: usize, d: f64| {
        let mut xd = x.clone();
        xd[i] += d;
        Plain.apply_with(&vars, &opts, &xd).unwrap().0
    };
    let h = 1e-6;
    let mut zeros = 0;
    for i in 0..4 {
        let fd = (column(i, h) - column(i, -h)) / (2.0 * h);
        for j in 0..3 {
            assert!(
                (rev[[j, i]] - fd[j]).abs() < 1e-8,
                "[{j}, {i}]: {} against {}",
                rev[[j, i]],
                fd[j]
            );
        }
    }
    for v in rev.iter() {
        zeros += usize::from(*v == 0.0);
    }
    assert_eq!(
        zeros, 0,
        "a dense Jacobian (the mask drops hidden features, not inputs)"
    );
}

/// The child run plainly, at the path the lifted transforms give it.
struct Plain;

#[differentiable]
impl Plain {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> Array1<f64> {
        NoisyCurve.call(cx, x)
    }
}

/// The same child, called once before its Jacobian (a bound local, one scope): the
/// Jacobian's rows all see the mask of the second draw at that path.
struct SecondDraw;

#[differentiable]
impl SecondDraw {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> ArrayD<f64> {
        let curve = NoisyCurve;
        let first = curve.call(cx, x);
        let jac = jacrev!(cx, |mdl, cx, x| mdl.call(cx, x), curve, x);
        jac + no_grad(first.sum() * 0.0)
    }
}

/// What the Jacobian is of: the child's second run at its path.
struct PlainSecondDraw;

#[differentiable]
impl PlainSecondDraw {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> Array1<f64> {
        let curve = NoisyCurve;
        let _first = curve.call(cx, x);
        curve.call(cx, x)
    }
}

#[test]
fn lifted_jacobian_after_an_earlier_draw_at_the_same_path() {
    let x = ndarray::array![0.3, -0.5, 0.8, 0.1];
    let vars = SecondDraw.init(1, &x).unwrap();
    let opts = ApplyOptions::new().rng("dropout", 4);
    let (jac, _) = SecondDraw.apply_with(&vars, &opts, &x).unwrap();
    let at = |i: usize, d: f64| {
        let mut xd = x.clone();
        xd[i] += d;
        PlainSecondDraw.apply_with(&vars, &opts, &xd).unwrap().0
    };
    for i in 0..4 {
        let fd = (at(i, 1e-6) - at(i, -1e-6)) / 2e-6;
        for j in 0..3 {
            assert!(
                (jac[[j, i]] - fd[j]).abs() < 1e-8,
                "[{j}, {i}]: {} against {}",
                jac[[j, i]],
                fd[j]
            );
        }
    }
}

// ----- second order through the normalization layers -----

/// LayerNorm, RMSNorm, GroupNorm and BatchNorm (in evaluation) between Dense layers:
/// forward mode through tuple results taken apart, `standardize`, `max` in `mapv`.
struct Normalized;

#[differentiable]
impl Normalized {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> f64 {
        let h = nn::LayerNorm::new().call(cx, x);
        let h = Dense::new(4).call(cx, &h).tanh();
        let h = nn::RMSNorm::new().call(cx, &h);
        let h = nn::GroupNorm::new(2).call(cx, &h);
        let h = nn::BatchNorm::new().use_running_average(true).call(cx, &h);
        Dense::new(1).call(cx, &h).sin().sum()
    }
}

struct NormalizedPenalty;

#[differentiable]
impl NormalizedPenalty {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> f64 {
        let (g,) = grad!(cx, |mdl, cx, x| mdl.call(cx, x), Normalized, x);
        (&g * &g).sum()
    }
}

#[test]
fn second_order_through_normalization_layers() {
    let x = Array2::from_shape_fn((3, 4), |(i, j)| ((i * 4 + j) as f64 * 0.7).sin());
    let vars = NormalizedPenalty.init(2, &x).unwrap();
    let (_, grads) =
        value_and_grad!(|v: &Variables| NormalizedPenalty.apply(v, &x).unwrap())(&vars);
    assert_eq!(grads.error(), None);
    let loss = |v: &Variables| NormalizedPenalty.apply(v, &x).unwrap();
    let h = 1e-6;
    let mut checked = 0;
    for (path, leaf) in vars.iter("params") {
        let value: ArrayD<f64> = vars.read("params", path).unwrap();
        let got: ArrayD<f64> = grads.read("params", path).unwrap();
        assert_eq!(got.shape(), leaf.shape());
        for (ix, g) in got.indexed_iter() {
            let at = |d: f64| {
                let mut p = value.clone();
                p[&ix] += d;
                loss(&vars.clone().with("params", path, p).unwrap())
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            assert!(
                (g - fd).abs() <= 1e-6 * (1.0 + fd.abs()),
                "{path}{:?}: {g} against differences {fd}",
                ix.slice()
            );
            checked += 1;
        }
    }
    assert!(checked > 40, "{checked}");
}

// ----- second order through a lifted jvp! (zero variable tangents) -----

struct Field2;

#[differentiable]
impl Field2 {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> Array2<f64> {
        let mut h = Dense::new(5).call(cx, x).tanh();
        for _ in 0..2 {
            h = Dense::new(5).call(cx, &h).sin() + &h;
        }
        Dense::new(1).call(cx, &h)
    }
}

struct JvpLoss;

#[differentiable]
impl JvpLoss {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>, v: &Array2<f64>) -> f64 {
        let none = no_grad(Variables::new());
        let (y, dy) = jvp!(cx, |mdl, cx, x| mdl.call(cx, x), Field2, (x,), (v,), none);
        let r = &dy.column(0) - &no_grad(x.column(0).cos());
        (&r * &r).mean().unwrap() + (&y * &y).mean().unwrap() * 0.1
    }
}

#[test]
fn second_order_through_a_lifted_jvp() {
    let case = reference("lifted_second_order.json", "jvp_loss");
    let (x, v) = (matrix(&case["x"]), matrix(&case["v"]));
    let vars = variables(&case["variables"]);
    let (loss, grads) = value_and_grad!(|vs: &Variables| JvpLoss.apply(vs, &x, &v).unwrap())(&vars);
    assert_eq!(grads.error(), None);
    close("jvp loss", loss, case["loss"].as_f64().unwrap());
    let err = assert_tree_close("jvp loss grads", &grads, &case["grads"], RTOL);
    println!("second order through jvp!: normwise relative error {err:.1e}");
}

/// The same with nonzero variable tangents: the lifted `jvp!`'s second order runs
/// the child's forward mode along the variables too, differentiated.
struct JvpAlongVariables {
    tangents: Variables,
}

#[differentiable]
impl JvpAlongVariables {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>, v: &Array2<f64>) -> f64 {
        let along = no_grad(self.tangents.clone());
        let (y, dy) = jvp!(cx, |mdl, cx, x| mdl.call(cx, x), Field2, (x,), (v,), along);
        let r = &dy.column(0) - &x.column(0).cos();
        (&r * &r).mean().unwrap() + (&y * &y).mean().unwrap() * 0.1
    }
}

/// Against `nn.jvp(.., variable_tangents)` differentiated by JAX, in the parameters
/// and the input.
#[test]
fn second_order_through_a_jvp_along_variables() {
    let case = reference("lifted_second_order.json", "jvp_along_variables");
    let (x, v) = (matrix(&case["x"]), matrix(&case["v"]));
    let vars = variables(&case["variables"]);
    let model = JvpAlongVariables {
        tangents: variables(&case["variable_tangents"]),
    };
    let (loss, grads) = value_and_grad!(|vs: &Variables| model.apply(vs, &x, &v).unwrap())(&vars);
    assert_eq!(grads.error(), None);
    close("jvp loss", loss, case["loss"].as_f64().unwrap());
    let err = assert_tree_close("jvp loss grads", &grads, &case["grads"], RTOL);
    println!("second order through jvp! along the variables: normwise relative error {err:.1e}");
    let gx = grad!(|x: &Array2<f64>| model.apply(&vars, x, &v).unwrap())(&x);
    assert_close(
        "jvp loss grad_x",
        &gx.into_dyn(),
        &matrix(&case["grad_x"]).into_dyn(),
        RTOL,
    );
}

/// A contractive penalty, `|J|^2 + |y|^2` of the child at `x`, trained: second order
/// through `jacrev!` (and `jacfwd!`: the same Jacobian).
struct Contractive {
    forward: bool,
}

#[differentiable]
impl Contractive {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>, t: f64) -> f64 {
        let curve = Curve;
        let y = curve.call(cx, x, t);
        let j = if self.forward {
            jacfwd!(cx, |mdl, cx, x, t| mdl.call(cx, x, t), curve, x, t)
        } else {
            jacrev!(cx, |mdl, cx, x, t| mdl.call(cx, x, t), curve, x, t)
        };
        (&j * &j).sum() + (&y * &y).sum()
    }
}

#[test]
fn second_order_through_a_lifted_jacobian() {
    let case = reference("lifted_second_order.json", "jacobian_penalty");
    let (x, t) = (vector(&case["x"]), case["t"].as_f64().unwrap());
    let vars = variables(&case["variables"]);
    for forward in [false, true] {
        let model = Contractive { forward };
        let (loss, grads) = value_and_grad!(|v: &Variables| model.apply(v, &x, t).unwrap())(&vars);
        assert_eq!(grads.error(), None);
        close("contractive loss", loss, case["loss"].as_f64().unwrap());
        let err = assert_tree_close("contractive grads", &grads, &case["grads"], RTOL);
        println!(
            "second order through a lifted Jacobian (forward: {forward}): normwise relative error {err:.1e}"
        );
    }
}

// ----- through a lifted vjp!: its output and its pullback -----

struct VjpLoss;

#[differentiable]
impl VjpLoss {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> f64 {
        let (y, pb) = vjp!(cx, |mdl, cx, x| mdl.call(cx, x), Field2, x);
        let ct = y.cos();
        let (_, gx) = pb(ct);
        (&gx * &gx).sum() + y.sum()
    }
}

#[test]
fn second_order_through_a_lifted_vjp() {
    assert_loss_case(
        "vjp_pullback",
        "second order through vjp!",
        |v, x| value_and_grad!(|v: &Variables| VjpLoss.apply(v, x).unwrap())(v),
        |v, x| grad!(|x: &Array2<f64>| VjpLoss.apply(v, x).unwrap())(x),
    );
}

/// A loss module against a `case_loss` reference of `gen_lifted_second_order.py`:
/// its value and gradient in the variables (`value_and_grad`) and its gradient in
/// the input (`grad_x`), to `RTOL`.
fn assert_loss_case(
    case: &str,
    what: &str,
    value_and_grad: impl Fn(&Variables, &Array2<f64>) -> (f64, Variables),
    grad_x: impl Fn(&Variables, &Array2<f64>) -> Array2<f64>,
) {
    let (case, vars, x) = assert_loss_and_grads(case, what, value_and_grad);
    let gx = grad_x(&vars, &x);
    let want = array(&case["grad_x"]);
    adjoint_tests::assert_close(&format!("{what}: grad_x"), &gx.into_dyn(), &want, RTOL);
}

/// A reference case's loss and gradient in the variables, to `RTOL`; the case, its
/// variables and its input, for more checks.
fn assert_loss_and_grads(
    case: &str,
    what: &str,
    value_and_grad: impl Fn(&Variables, &Array2<f64>) -> (f64, Variables),
) -> (serde_json::Value, Variables, Array2<f64>) {
    let case = reference("lifted_second_order.json", case);
    let x = matrix(&case["x"]);
    let vars = variables(&case["variables"]);
    let (loss, grads) = value_and_grad(&vars, &x);
    assert_eq!(grads.error(), None);
    close(
        &format!("{what}: loss"),
        loss,
        case["loss"].as_f64().unwrap(),
    );
    let err = assert_tree_close(&format!("{what}: grads"), &grads, &case["grads"], RTOL);
    println!("{what}: normwise relative error {err:.1e}");
    (case, vars, x)
}

/// Through the variables' cotangents the pullback returns, applied as the variables
/// of another field: second order along them.
struct VjpParamsLoss;

#[differentiable]
impl VjpParamsLoss {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> f64 {
        let (y, pb) = vjp!(cx, |mdl, cx, x| mdl.call(cx, x), Field2, x);
        let ct = y.cos();
        let (params_ct, gx) = pb(ct);
        let probe = Field2.apply(&params_ct, x).unwrap();
        (&gx * &gx).sum() + y.sum() + probe.sum()
    }
}

#[test]
fn second_order_through_a_lifted_vjps_variable_cotangents() {
    assert_loss_case(
        "vjp_params",
        "second order through vjp!'s variable cotangents",
        |v, x| value_and_grad!(|v: &Variables| VjpParamsLoss.apply(v, x).unwrap())(v),
        |v, x| grad!(|x: &Array2<f64>| VjpParamsLoss.apply(v, x).unwrap())(x),
    );
}

// ----- closures that are more than `mdl.call(cx, x..)` -----

/// A field with one value per point, as most are.
struct PointField;

#[differentiable]
impl PointField {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> Array2<f64> {
        let h = Dense::new(6).call(cx, x).tanh();
        Dense::new(1).call(cx, &h)
    }
}

/// The closure sums the field (`jnp.sum(mdl(x))`), calls it twice (the calls share
/// its parameters, as a Flax compact method's do) and takes a second primal; then
/// `value_and_grad!` of a sum.
struct ClosureLoss;

#[differentiable]
impl ClosureLoss {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>, t: &Array2<f64>) -> f64 {
        let (gx, gt) = grad!(
            cx,
            |mdl, cx, x, t| {
                let d = &mdl.call(cx, x) - t;
                (&d * &d).sum() + nn::softplus(&mdl.call(cx, &(x * 2.0))).mean().unwrap()
            },
            PointField,
            x,
            t
        );
        let (v, (g,)) = value_and_grad!(cx, |mdl, cx, x| mdl.call(cx, x).sum(), PointField, x);
        (&gx * &gx).sum() + (&gt * &gt).sum() + v + (&x.cos() * &g).sum()
    }
}

#[test]
fn second_order_through_closures_that_are_more_than_a_call() {
    let case = reference("lifted_second_order.json", "closure_body");
    let (x, t) = (matrix(&case["x"]), matrix(&case["t"]));
    let vars = variables(&case["variables"]);
    assert_eq!(vars.shapes(), ClosureLoss.init(0, &x, &t).unwrap().shapes());
    let (loss, grads) =
        value_and_grad!(|v: &Variables| ClosureLoss.apply(v, &x, &t).unwrap())(&vars);
    assert_eq!(grads.error(), None);
    close("closure loss", loss, case["loss"].as_f64().unwrap());
    let err = assert_tree_close("closure grads", &grads, &case["grads"], RTOL);
    println!("closures: normwise relative error {err:.1e}");
    let gx = grad!(|x: &Array2<f64>| ClosureLoss.apply(&vars, x, &t).unwrap())(&x);
    assert_close(
        "closure grad_x",
        &gx.into_dyn(),
        &array(&case["grad_x"]),
        RTOL,
    );
}

/// A closure that reads values of the enclosing method besides its arguments: a
/// constant weight, a number and the target (`CapturingLoss` of the generator).
struct CapturingLoss;

#[differentiable]
impl CapturingLoss {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>, #[no_grad] t: &Array2<f64>) -> f64 {
        let w = no_grad(x.cos());
        let k = 0.5;
        let (g,) = grad!(
            cx,
            |mdl, cx, x| {
                let d = mdl.call(cx, x) - t;
                (&w * &mdl.call(cx, x)).sum() * k + (&d * &d).sum()
            },
            PointField,
            x
        );
        (&g * &g).sum() + (&x.sin() * &g).sum() + (&w * 0.0).sum()
    }
}

#[test]
fn second_order_through_a_closure_reading_the_enclosing_values() {
    let case = reference("lifted_second_order.json", "closure_captures");
    let (x, t) = (matrix(&case["x"]), matrix(&case["t"]));
    let vars = variables(&case["variables"]);
    assert_eq!(
        vars.shapes(),
        CapturingLoss.init(0, &x, &t).unwrap().shapes()
    );
    let (loss, grads) =
        value_and_grad!(|v: &Variables| CapturingLoss.apply(v, &x, &t).unwrap())(&vars);
    assert_eq!(grads.error(), None);
    close("capturing loss", loss, case["loss"].as_f64().unwrap());
    let err = assert_tree_close("capturing grads", &grads, &case["grads"], RTOL);
    println!("captures: normwise relative error {err:.1e}");
    let gx = grad!(|x: &Array2<f64>| CapturingLoss.apply(&vars, x, &t).unwrap())(&x);
    assert_close(
        "capturing grad_x",
        &gx.into_dyn(),
        &array(&case["grad_x"]),
        RTOL,
    );
}

/// A closure that reads differentiated values of the enclosing method: its parameter
/// `s` and a weight computed from the input and `s` (`DiffCapturingLoss` of the
/// generator). The closure's rerun takes them as parameters, with zero tangents, and
/// gives their cotangents.
struct DiffCapturingLoss;

#[differentiable]
impl DiffCapturingLoss {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>, #[no_grad] t: &Array2<f64>) -> f64 {
        let s: f64 = cx.param("s", init::ones, ());
        let w = x.cos() * s;
        let (g,) = grad!(
            cx,
            |mdl, cx, x| {
                let d = mdl.call(cx, x) - t;
                (&w * &mdl.call(cx, x)).sum() * s + (&d * &d).sum()
            },
            PointField,
            x
        );
        (&g * &g).sum() + (&x.sin() * &g).sum() * s
    }
}

#[test]
fn second_order_through_a_closure_reading_differentiated_values() {
    let case = reference(
        "lifted_second_order.json",
        "closure_differentiated_captures",
    );
    let (x, t) = (matrix(&case["x"]), matrix(&case["t"]));
    let vars = variables(&case["variables"]);
    assert_eq!(
        vars.shapes(),
        DiffCapturingLoss.init(0, &x, &t).unwrap().shapes()
    );
    let (loss, grads) =
        value_and_grad!(|v: &Variables| DiffCapturingLoss.apply(v, &x, &t).unwrap())(&vars);
    assert_eq!(grads.error(), None);
    close(
        "differentiated captures loss",
        loss,
        case["loss"].as_f64().unwrap(),
    );
    let err = assert_tree_close(
        "differentiated captures grads",
        &grads,
        &case["grads"],
        RTOL,
    );
    println!("differentiated captures: normwise relative error {err:.1e}");
    let gx = grad!(|x: &Array2<f64>| DiffCapturingLoss.apply(&vars, x, &t).unwrap())(&x);
    assert_close(
        "differentiated captures grad_x",
        &gx.into_dyn(),
        &array(&case["grad_x"]),
        RTOL,
    );
}

/// `jvp!` of a closure that is more than `mdl.call(cx, x)`: the field's output squared
/// and summed, its tangent in the loss.
struct JvpClosureLoss;

#[differentiable]
impl JvpClosureLoss {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>, v: &Array2<f64>) -> f64 {
        let none = no_grad(Variables::new());
        let (y, dy) = jvp!(
            cx,
            |mdl, cx, x| {
                let f = mdl.call(cx, x);
                (&f * &f).sum()
            },
            PointField,
            (x,),
            (v,),
            none
        );
        dy * dy + y.sin()
    }
}

#[test]
fn second_order_through_a_jvp_of_a_closure() {
    let case = reference("lifted_second_order.json", "jvp_closure");
    let (x, v) = (matrix(&case["x"]), matrix(&case["v"]));
    let vars = variables(&case["variables"]);
    let (loss, grads) =
        value_and_grad!(|vs: &Variables| JvpClosureLoss.apply(vs, &x, &v).unwrap())(&vars);
    assert_eq!(grads.error(), None);
    close("jvp closure loss", loss, case["loss"].as_f64().unwrap());
    let err = assert_tree_close("jvp closure grads", &grads, &case["grads"], RTOL);
    println!("jvp! of a closure: normwise relative error {err:.1e}");
    let gx = grad!(|x: &Array2<f64>| JvpClosureLoss.apply(&vars, x, &v).unwrap())(&x);
    assert_close(
        "jvp closure grad_x",
        &gx.into_dyn(),
        &array(&case["grad_x"]),
        RTOL,
    );
}

/// A lifted Jacobian of a closure that is more than `mdl.call(cx, x)`: a contractive
/// penalty `|J|^2` on the field's output passed through `tanh`.
struct Bend;

#[differentiable]
impl Bend {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> Array1<f64> {
        let h = Dense::new(4).call(cx, x).tanh();
        Dense::new(2).call(cx, &h)
    }
}

struct ClosureJacobianPenalty;

#[differentiable]
impl ClosureJacobianPenalty {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> f64 {
        // A constant of the enclosing code the closures read.
        let scale = no_grad(ndarray::array![2.0, -0.5]);
        let j = jacrev!(cx, |mdl, cx, x| mdl.call(cx, x).tanh() * &scale, Bend, x);
        let jf = jacfwd!(
            cx,
            |mdl, cx, x| (mdl.call(cx, x) * x.sum()).sin() * &scale,
            Bend,
            x
        );
        (&j * &j).sum() + (&jf * &jf).sum() + scale.sum()
    }
}

#[test]
fn second_order_through_jacobians_of_closures() {
    let x = ndarray::array![0.4, -0.8, 1.2];
    let vars = ClosureJacobianPenalty.init(1, &x).unwrap();
    let loss = |v: &Variables, x: &Array1<f64>| ClosureJacobianPenalty.apply(v, x).unwrap();
    let (_, grads) =
        value_and_grad!(|v: &Variables| ClosureJacobianPenalty.apply(v, &x).unwrap())(&vars);
    assert_eq!(grads.error(), None);
    let gx = grad!(|x: &Array1<f64>| ClosureJacobianPenalty.apply(&vars, x).unwrap())(&x);
    check_against_differences("closure jacobians", loss, &grads, &gx, &vars, &x);
}

/// A closure that calls a function forward mode does not follow (not `(jvp)`):
/// second order through it is reported, never a silent zero.
#[differentiable]
fn summed(y: &Array2<f64>) -> f64 {
    y.sum()
}

struct UncoveredClosure;

#[differentiable]
impl UncoveredClosure {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> f64 {
        let (g,) = grad!(cx, |mdl, cx, x| summed(&mdl.call(cx, x)), PointField, x);
        (&g * &g).sum()
    }
}

/// A `vjp!` whose closure is more than `mdl.call(cx, x)`, in a child, the variables'
/// cotangents its pullback returns differentiated: the closure's forward mode is
/// written along its primals only, so second order along its variables does not go
/// through, and the report names the transform's child.
struct HoldsVjp;

#[differentiable]
impl HoldsVjp {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> f64 {
        let (y, pb) = vjp!(cx, |mdl, cx, x| mdl.call(cx, x).sum() * 2.0, PointField, x);
        let (params_ct, gx) = pb(1.0);
        let probe = PointField.apply(&params_ct, x).unwrap();
        y + (&gx * &gx).sum() + probe.sum()
    }
}

struct OuterOfVjp;

#[differentiable]
impl OuterOfVjp {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> f64 {
        HoldsVjp.call(cx, x)
    }
}

/// A `vmap!` whose closure calls a method of `self` (which its rerun, running where
/// `self` is not the module's, could not), in a child: not differentiated, and the
/// report names the module holding the transform.
struct HoldsVmap {
    scale: f64,
}

#[differentiable]
impl HoldsVmap {
    fn call(&self, cx: &mut Scope, xs: &Array2<f64>) -> f64 {
        let ys = vmap!(
            cx,
            |mdl, cx, x| self.weigh(&mdl.call(cx, &x.to_owned())),
            Bend,
            xs,
            in_axes = [0]
        );
        ys.sum()
    }

    fn weigh(&self, y: &Array1<f64>) -> f64 {
        y.sum() * self.scale
    }
}

struct OuterOfVmap;

#[differentiable]
impl OuterOfVmap {
    fn call(&self, cx: &mut Scope, xs: &Array2<f64>) -> f64 {
        HoldsVmap { scale: 2.0 }.call(cx, xs)
    }
}

#[test]
fn what_derivatives_do_not_go_through_names_where() {
    let x = Array2::from_shape_fn((3, 2), |(i, j)| (i + 2 * j) as f64 * 0.3 - 0.5);
    let vars = OuterOfVjp.init(0, &x).unwrap();
    let (_, grads) = value_and_grad!(|v: &Variables| OuterOfVjp.apply(v, &x).unwrap())(&vars);
    assert_eq!(
        grads.error(),
        Some(ScopeError::SecondOrderUnsupported {
            path: "HoldsVjp_0/PointField_0".into()
        })
    );
    let gx = grad!(|x: &Array2<f64>| OuterOfVjp.apply(&vars, x).unwrap())(&x);
    assert!(gx.iter().all(|g| g.is_nan()), "{gx}");
    let xs = Array2::from_shape_fn((4, 3), |(i, j)| (i + 2 * j) as f64 * 0.2 - 0.5);
    let vars = OuterOfVmap.init(0, &xs).unwrap();
    let (_, grads) = value_and_grad!(|v: &Variables| OuterOfVmap.apply(v, &xs).unwrap())(&vars);
    assert_eq!(
        grads.error(),
        Some(ScopeError::SecondOrderUnsupported {
            path: "HoldsVmap_0".into()
        })
    );
}

/// `jvp!` of a closure with nonzero variable tangents: the closure's forward mode
/// written is along its primals only, so second order reports it.
struct JvpClosureAlongVariables {
    tangents: Variables,
}

#[differentiable]
impl JvpClosureAlongVariables {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> f64 {
        let along = no_grad(self.tangents.clone());
        let (_, dy) = jvp!(
            cx,
            |mdl, cx, x| mdl.call(cx, x).sum(),
            PointField,
            (x,),
            (x,),
            along
        );
        dy * dy
    }
}

#[test]
fn second_order_through_a_closure_forward_mode_does_not_cover_is_reported() {
    let x = Array2::from_shape_fn((3, 2), |(i, j)| (i + 2 * j) as f64 * 0.3 - 0.5);
    let vars = JvpClosureAlongVariables {
        tangents: Variables::new(),
    }
    .init(0, &x)
    .unwrap();
    let tangents = vars
        .map(|w| w * 0.5)
        .only(&["params"])
        .subtree("PointField_0");
    let m = JvpClosureAlongVariables { tangents };
    let (_, grads) = value_and_grad!(|v: &Variables| m.apply(v, &x).unwrap())(&vars);
    assert_eq!(
        grads.error(),
        Some(ScopeError::SecondOrderUnsupported {
            path: "PointField_0".into()
        })
    );
    let x = Array2::from_shape_fn((3, 2), |(i, j)| (i + 2 * j) as f64 * 0.3 - 0.5);
    let vars = UncoveredClosure.init(0, &x).unwrap();
    let (_, grads) = value_and_grad!(|v: &Variables| UncoveredClosure.apply(v, &x).unwrap())(&vars);
    assert_eq!(
        grads.error(),
        Some(ScopeError::SecondOrderUnsupported {
            path: "PointField_0".into()
        })
    );
    let gx = grad!(|x: &Array2<f64>| UncoveredClosure.apply(&vars, x).unwrap())(&x);
    assert!(gx.iter().all(|g| g.is_nan()), "{gx}");
}

// ----- a child with many constructs, against central differences -----

/// `softplus` with its own forward rule (`custom_jvp`).
#[custom_jvp(jvp = softplus_jvp)]
fn softplus_ruled(x: &Array1<f64>) -> Array1<f64> {
    x.mapv(|v| (1.0 + v.exp()).ln())
}

#[differentiable]
fn softplus_jvp(x: &Array1<f64>, dx: &Array1<f64>) -> (Array1<f64>, Array1<f64>) {
    (
        softplus_ruled(x),
        dx * &x.mapv(|v| 1.0 / (1.0 + (-v).exp())),
    )
}

/// A `while` loop with a `break`, `mapv` closures capturing a differentiated scalar.
#[differentiable(jvp)]
fn wobble(x: &Array1<f64>, s: f64) -> Array1<f64> {
    let mut y = x * s;
    let mut i = 0;
    while i < 3 {
        y = y.mapv(|v| v.sin() * s + v * 0.5);
        if y.sum() > 100.0 {
            break;
        }
        i += 1;
    }
    y
}

#[derive(Clone)]
struct Mixed {
    mode: i32,
}

#[differentiable(jvp)]
impl Mixed {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> f64 {
        let h = Dense::new(4).call(cx, x).tanh();
        let h = adjoint::nn::LayerNorm::new().call(cx, &h);
        let h = match self.mode {
            0 => wobble(&h, 1.3),
            1 => softplus_ruled(&h),
            _ => h.mapv(|v| v * v),
        };
        if h[0] > 10.0 {
            return h.sum();
        }
        let mut acc = 0.0;
        for k in 0..h.len() {
            acc = acc + h[k].powi(2) * (k as f64 + 1.0);
        }
        let z = Dense::new(2).call(cx, &h);
        acc + z.mapv(|v| v.sin()).sum() + adjoint::nn::gelu(&z).sum()
    }
}

struct MixedLoss {
    mode: i32,
}

#[differentiable]
impl MixedLoss {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> f64 {
        let child = Mixed { mode: self.mode };
        let (v, (g,)) = value_and_grad!(cx, |mdl, cx, x| mdl.call(cx, x), child, x);
        v * 0.3 + (&g * &g).sum() + g.sum()
    }
}

/// Every parameter's gradient of `loss` against central differences (named by its
/// path), and the input's (`check_grad`: any input `check::Params` flattens).
fn check_against_differences<X: adjoint::check::Params>(
    what: &str,
    loss: impl Fn(&Variables, &X) -> f64,
    grads: &Variables,
    gx: &X,
    vars: &Variables,
    x: &X,
) {
    let h = 1e-5;
    for (c, p, _) in vars.leaves() {
        let w: ArrayD<f64> = vars.read(c, p).unwrap();
        let g: ArrayD<f64> = grads.read(c, p).unwrap();
        for (ix, got) in g.indexed_iter() {
            let at = |d: f64| {
                let mut k = w.clone();
                k[&ix] += d;
                loss(&vars.clone().with(c, p, k).unwrap(), x)
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            assert!(
                (got - fd).abs() <= 1e-6 * (1.0 + fd.abs()),
                "{what}: {p}{ix:?}: {got} against differences {fd}"
            );
        }
    }
    let tol = adjoint::check::Tolerance {
        step: 1e-5,
        rtol: 1e-6,
        atol: 1e-6,
    };
    adjoint::check::check_grad(|x: &X| loss(vars, x), x, gx, tol)
        .unwrap_or_else(|e| panic!("{what}: input: {e}"));
}

/// Second order through a child whose body has a `match`, an early return, a `for`
/// loop over indices, a `(jvp)` function with a `while` loop and `break`, a
/// `custom_jvp` function, `mapv` closures, `LayerNorm` and `gelu`.
#[test]
fn second_order_through_a_child_of_many_constructs() {
    let x = ndarray::array![0.3, -0.7, 1.1];
    for mode in 0..3 {
        let model = MixedLoss { mode };
        let vars = model.init(1, &x).unwrap();
        let loss = |v: &Variables, x: &Array1<f64>| model.apply(v, x).unwrap();
        let (_, grads) = value_and_grad!(|v: &Variables| model.apply(v, &x).unwrap())(&vars);
        assert_eq!(grads.error(), None);
        let gx = grad!(|x: &Array1<f64>| model.apply(&vars, x).unwrap())(&x);
        check_against_differences(&format!("mode {mode}"), loss, &grads, &gx, &vars, &x);
    }
}

/// A child whose submodules take arguments that are not differentiated: an `Embed`
/// of token ids and self-attention without a mask (`None`); its forward mode passes
/// them no tangent (`NoTangent`). The embedding's element type is inferred only at
/// the end (from the `f64` the body returns): forward mode's tangents must not need
/// it sooner (a square's `2 a da` once did, through a literal of that type).
struct Tokens {
    ids: ndarray::Array1<usize>,
}

#[differentiable]
impl Tokens {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> f64 {
        let e = adjoint::nn::Embed::new(5, 3).call(cx, &self.ids);
        let h = (&e * x).tanh().insert_axis(ndarray::Axis(0)).to_owned();
        let attn = adjoint::nn::MultiHeadDotProductAttention::new(1);
        let a = attn.call(cx, &h, &h, &h, None);
        (&a * &a).sum()
    }
}

struct TokensLoss;

#[differentiable]
impl TokensLoss {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> f64 {
        let child = Tokens {
            ids: ndarray::array![1, 4, 0, 1],
        };
        let (g,) = grad!(cx, |mdl, cx, x| mdl.call(cx, x), child, x);
        (&g * &g).sum() + g.sum()
    }
}

/// Second order through a child whose submodules take token ids and a `None` mask,
/// against central differences.
#[test]
fn second_order_through_submodules_with_arguments_that_do_not_vary() {
    let x = ndarray::array![0.4, -0.8, 1.2];
    let vars = TokensLoss.init(2, &x).unwrap();
    let loss = |v: &Variables, x: &Array1<f64>| TokensLoss.apply(v, x).unwrap();
    let (_, grads) = value_and_grad!(|v: &Variables| TokensLoss.apply(v, &x).unwrap())(&vars);
    assert_eq!(grads.error(), None);
    let gx = grad!(|x: &Array1<f64>| TokensLoss.apply(&vars, x).unwrap())(&x);
    check_against_differences("tokens", loss, &grads, &gx, &vars, &x);
}

// ----- third order through modules: reported, never silent -----

#[derive(Clone)]
struct SlopeNorm;

#[differentiable(jvp)]
impl SlopeNorm {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> f64 {
        let (g,) = grad!(cx, |mdl, cx, x| mdl.call(cx, x), Mixed { mode: 2 }, x);
        (&g * &g).sum()
    }
}

struct ThirdOrder;

#[differentiable]
impl ThirdOrder {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> f64 {
        let (g,) = grad!(cx, |mdl, cx, x| mdl.call(cx, x), SlopeNorm, x);
        g.sum()
    }
}

/// A lifted `grad!` of a child that holds a lifted `grad!` itself needs the child's
/// forward mode through that transform (third order): not covered, so the gradients
/// say so and the inputs' are NaN.
#[test]
fn third_order_through_nested_lifted_grads_is_a_typed_error() {
    let x = ndarray::array![0.3, -0.7, 1.1];
    let vars = ThirdOrder.init(1, &x).unwrap();
    let (_, grads) = value_and_grad!(|v: &Variables| ThirdOrder.apply(v, &x).unwrap())(&vars);
    assert_eq!(
        grads.error(),
        Some(ScopeError::SecondOrderUnsupported {
            path: "SlopeNorm_0".into()
        })
    );
    let gx = grad!(|x: &Array1<f64>| ThirdOrder.apply(&vars, x).unwrap())(&x);
    assert!(gx.iter().all(|g| g.is_nan()), "{gx}");
}

// ----- through the output of a lifted vjp! of a closure -----

/// `nn.vjp` of a closure that is more than `mdl.call(cx, x)`, with an aux: the output
/// and the aux are differentiated (the closure's reverse mode run again); the
/// pullback's results are held constant (`VjpClosureValue` of the generator).
struct VjpClosureValue;

#[differentiable]
impl VjpClosureValue {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> f64 {
        let w = no_grad(x.cos());
        let (v, pb, aux) = vjp!(
            cx,
            |mdl, cx, x| {
                let y = mdl.call(cx, x);
                ((&y * &w).sum() * 2.0, y.tanh())
            },
            PointField,
            x,
            has_aux
        );
        let (_, gx) = no_grad(pb(1.0));
        v * v + (&aux * &aux).sum() + (&gx * x).sum()
    }
}

#[test]
fn first_order_through_the_output_of_a_vjp_of_a_closure() {
    let case = reference("lifted_second_order.json", "vjp_closure_value");
    let x = matrix(&case["x"]);
    let vars = variables(&case["variables"]);
    assert_eq!(vars.shapes(), VjpClosureValue.init(0, &x).unwrap().shapes());
    let (loss, grads) =
        value_and_grad!(|v: &Variables| VjpClosureValue.apply(v, &x).unwrap())(&vars);
    assert_eq!(grads.error(), None);
    close("vjp closure loss", loss, case["loss"].as_f64().unwrap());
    let err = assert_tree_close("vjp closure grads", &grads, &case["grads"], RTOL);
    println!("vjp closure: normwise relative error {err:.1e}");
    let gx = grad!(|x: &Array2<f64>| VjpClosureValue.apply(&vars, x).unwrap())(&x);
    assert_close(
        "vjp closure grad_x",
        &gx.into_dyn(),
        &array(&case["grad_x"]),
        RTOL,
    );
}

// ----- through a lifted vjp! with has_aux -----

struct Field2Aux;

#[differentiable]
impl Field2Aux {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> (Array2<f64>, f64) {
        let mut h = Dense::new(5).call(cx, x).tanh();
        for _ in 0..2 {
            h = Dense::new(5).call(cx, &h).sin() + &h;
        }
        let aux = (&h * &h).mean().unwrap();
        (Dense::new(1).call(cx, &h), aux)
    }
}

struct VjpAuxLoss;

#[differentiable]
impl VjpAuxLoss {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> f64 {
        let (y, pb, aux) = vjp!(cx, |mdl, cx, x| mdl.call(cx, x), Field2Aux, x, has_aux);
        let ct = y.cos() * aux;
        let (_, gx) = pb(ct);
        (&gx * &gx).sum() + y.sum() + aux * 0.5
    }
}

/// The aux of a `vjp!` with `has_aux` is differentiated too: here it scales the
/// cotangent given to the pullback and enters the loss.
#[test]
fn second_order_through_a_lifted_vjp_with_aux() {
    assert_loss_case(
        "vjp_aux",
        "second order through vjp! with has_aux",
        |v, x| value_and_grad!(|v: &Variables| VjpAuxLoss.apply(v, x).unwrap())(v),
        |v, x| grad!(|x: &Array2<f64>| VjpAuxLoss.apply(v, x).unwrap())(x),
    );
}

/// A child whose branches test values computed from the input, which the reverse
/// reads nothing of (the test's operands are still computed for the test): its
/// input gradient written back as source, differentiated again, in each arm.
struct Tested;

#[differentiable]
impl Tested {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> f64 {
        let w: Array1<f64> = cx.param("w", init::ones, 3);
        let s = (&w * x).sum();
        let y = if s > 0.0 {
            (&w * x).tanh()
        } else {
            &w * x * 0.5
        };
        let m = x.sum();
        if m > 1.0 {
            (&y * &y).sum()
        } else {
            y.sum() * 2.0
        }
    }
}

struct TestedLoss;

#[differentiable]
impl TestedLoss {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> f64 {
        let (g,) = grad!(cx, |mdl, cx, x| mdl.call(cx, x), Tested, x);
        (&g * &g).sum()
    }
}

#[test]
fn second_order_through_branches_on_computed_tests() {
    for x in [
        ndarray::array![0.4, -0.8, 1.2],
        ndarray::array![-0.5, -0.2, 0.1],
        ndarray::array![0.9, 0.6, -0.1],
    ] {
        let vars = TestedLoss.init(3, &x).unwrap();
        let vars = vars.map(|v| v * 0.7 + 0.1);
        let loss = |v: &Variables, x: &Array1<f64>| TestedLoss.apply(v, x).unwrap();
        let (_, grads) = value_and_grad!(|v: &Variables| TestedLoss.apply(v, &x).unwrap())(&vars);
        assert_eq!(grads.error(), None);
        let gx = grad!(|x: &Array1<f64>| TestedLoss.apply(&vars, x).unwrap())(&x);
        check_against_differences("tested", loss, &grads, &gx, &vars, &x);
    }
}

/// A child whose branch gives a scalar computed in the arm (a temporary whose type
/// the transposer does not know) and whose shape the reverse reads: the shape is
/// taken of a borrow (the random module programs found `shape_of` given the scalar
/// by value, which did not compile).
struct ScalarArm;

#[differentiable]
impl ScalarArm {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> f64 {
        let p: f64 = cx.param("p", init::constant(0.8), ());
        let w: Array1<f64> = cx.param("w", init::constant(0.6), 3);
        let s1 = if p > 0.0731 { w.dot(&w) } else { p };
        let m = x.sum();
        let s2 = if p > 0.0731 { -(m.cos() * s1) } else { 1.0 };
        (&w * s2 + x).tanh().sum()
    }
}

struct ScalarArmLoss;

#[differentiable]
impl ScalarArmLoss {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> f64 {
        let (g,) = grad!(cx, |mdl, cx, x| mdl.call(cx, x), ScalarArm, x);
        (&g * &g).sum()
    }
}

#[test]
fn second_order_through_a_scalar_computed_in_a_branch() {
    let x = ndarray::array![0.4, -0.8, 1.2];
    let vars = ScalarArmLoss.init(3, &x).unwrap();
    let loss = |v: &Variables, x: &Array1<f64>| ScalarArmLoss.apply(v, x).unwrap();
    let (_, grads) = value_and_grad!(|v: &Variables| ScalarArmLoss.apply(v, &x).unwrap())(&vars);
    assert_eq!(grads.error(), None);
    let gx = grad!(|x: &Array1<f64>| ScalarArmLoss.apply(&vars, x).unwrap())(&x);
    check_against_differences("scalar arm", loss, &grads, &gx, &vars, &x);
}

// ----- closures reading differentiated values, through each lifted form -----

/// A child of one input, for the closures below.
struct Bump;

#[differentiable]
impl Bump {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> Array1<f64> {
        let w: Array1<f64> = cx.param("w", init::constant(0.7), 3);
        (&w * x).tanh() + x * 0.3
    }
}

/// Each lifted form of a closure reading `s` (a parameter of the enclosing module)
/// and `c` (a value computed from the input and `s`): `grad!`, `jvp!`, `jacrev!`
/// (second order) and `vjp!`'s output, `vmap!` (first order through the closure).
struct Captures {
    form: usize,
}

#[differentiable]
impl Captures {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> f64 {
        let s: f64 = cx.param("s", init::constant(0.9), ());
        let c = x.sum() * s;
        let form = self.form;
        if form == 0 {
            let (g,) = grad!(cx, |mdl, cx, x| (mdl.call(cx, x) * s).sum() * c, Bump, x);
            (&g * &g).sum()
        } else if form == 1 {
            let none = no_grad(Variables::new());
            let (y, dy) = jvp!(
                cx,
                |mdl, cx, x| (mdl.call(cx, x) * s).sum() + c * c,
                Bump,
                (x,),
                (x,),
                none
            );
            dy * dy + y
        } else if form == 2 {
            let j = jacrev!(cx, |mdl, cx, x| mdl.call(cx, x) * (s * c), Bump, x);
            (&j * &j).sum()
        } else if form == 3 {
            let (y, _pb) = vjp!(cx, |mdl, cx, x| mdl.call(cx, x) * s + c, Bump, x);
            (&y * &y).sum()
        } else {
            // The examples constant: what goes through the closure is `s` and `c`.
            let xs = no_grad(ndarray::array![[0.1, 0.2, 0.3], [-0.4, 0.5, 0.6]]);
            let ys = vmap!(
                cx,
                |mdl, cx, x| (mdl.call(cx, &x.to_owned()) * s).sum() + c,
                Bump,
                xs,
                in_axes = [0]
            );
            (&ys * &ys).sum()
        }
    }
}

/// The values the closures read are differentiated through them, in every form:
/// against central differences (in the variables, with `check::Params` for
/// `Variables`, and in the input).
#[test]
fn closures_reading_differentiated_values_through_every_lifted_form() {
    let x = ndarray::array![0.4, -0.8, 1.2];
    for form in 0..5 {
        let model = Captures { form };
        let vars = model.init(0, &x).unwrap();
        let loss = |v: &Variables, x: &Array1<f64>| model.apply(v, x).unwrap();
        let grads = grad!(|v: &Variables| model.apply(v, &x).unwrap())(&vars);
        assert_eq!(grads.error(), None, "form {form}");
        let gx = grad!(|x: &Array1<f64>| model.apply(&vars, x).unwrap())(&x);
        check_against_differences(&format!("form {form}"), loss, &grads, &gx, &vars, &x);
    }
}

/// A child whose branches give a value of the enclosing code as it is (`{ h }`, an
/// array, and `{ s }`, a scalar whose type the transposer does not know): the input
/// gradient written back copies it with `.clone()`, which the macro differentiates
/// (it wrote `Clone::clone(&h)`, a call it took for a function's: valid code did not
/// compile; found by the random module programs).
struct BareArms;

#[differentiable]
impl BareArms {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> f64 {
        let w: Array1<f64> = cx.param("w", init::constant(0.6), 3);
        let h = (&w * x).sin();
        let s = (&h * &h).sum().tanh();
        let p = w.sum();
        let y = if p > 0.0731 { h } else { h.tanh() };
        let t = if p > 0.0731 { s } else { s * s };
        (&y * t).sum()
    }
}

struct BareArmsLoss;

#[differentiable]
impl BareArmsLoss {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> f64 {
        let (g,) = grad!(cx, |mdl, cx, x| mdl.call(cx, x), BareArms, x);
        (&g * &g).sum()
    }
}

#[test]
fn second_order_through_branches_giving_values_as_they_are() {
    let x = ndarray::array![0.4, -0.8, 1.2];
    let init = BareArmsLoss.init(3, &x).unwrap();
    // Both arms: the parameters' sum positive, then negative.
    for vars in [init.clone(), init.map(|v| -v)] {
        let loss = |v: &Variables, x: &Array1<f64>| BareArmsLoss.apply(v, x).unwrap();
        let (_, grads) = value_and_grad!(|v: &Variables| BareArmsLoss.apply(v, &x).unwrap())(&vars);
        assert_eq!(grads.error(), None);
        let gx = grad!(|x: &Array1<f64>| BareArmsLoss.apply(&vars, x).unwrap())(&x);
        check_against_differences("bare arms", loss, &grads, &gx, &vars, &x);
    }
}

/// Second order through the pullback of a `vjp!` whose closure is more than the call
/// and reads a parameter of the enclosing module (`VjpClosurePull` of the
/// generator): the closure's own JVP-VJP along the gradients' cotangents.
struct VjpClosurePull;

#[differentiable]
impl VjpClosurePull {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> f64 {
        let s: f64 = cx.param("s", init::ones, ());
        let (y, pb) = vjp!(cx, |mdl, cx, x| (mdl.call(cx, x) * s).tanh(), PointField, x);
        let (_, gx) = pb(y.cos());
        (&gx * &gx).sum() + y.sum() * s
    }
}

#[test]
fn second_order_through_the_pullback_of_a_vjp_of_a_closure() {
    assert_loss_case(
        "vjp_closure_pullback",
        "second order through the pullback of vjp! of a closure",
        |v, x| value_and_grad!(|v: &Variables| VjpClosurePull.apply(v, x).unwrap())(v),
        |v, x| grad!(|x: &Array2<f64>| VjpClosurePull.apply(v, x).unwrap())(x),
    );
}

// ----- second order through a vmap! of a closure -----

/// A critic that maps its rows through a closure that is more than the call and
/// reads a parameter of its own (`s`) and a value computed from the input (`c`).
struct RowCritic;

#[differentiable]
impl RowCritic {
    fn call(&self, cx: &mut Scope, xs: &Array2<f64>) -> f64 {
        let s: f64 = cx.param("s", init::constant(0.8), ());
        let c = xs.sum() * 0.1;
        let ys = vmap!(
            cx,
            |mdl, cx, x| (mdl.call(cx, &x.to_owned()) * s).tanh().sum() + c * s,
            Bump,
            xs,
            in_axes = [0]
        );
        (&ys * &ys).sum()
    }
}

/// A gradient penalty over it: second order through the `vmap!`, whose forward mode
/// maps the closure's.
struct RowPenalty;

#[differentiable]
impl RowPenalty {
    fn call(&self, cx: &mut Scope, xs: &Array2<f64>) -> f64 {
        let (g,) = grad!(cx, |mdl, cx, xs| mdl.call(cx, xs), RowCritic, xs);
        (&g * &g).sum()
    }
}

#[test]
fn second_order_through_a_vmap_of_a_closure() {
    let xs = Array2::from_shape_fn((4, 3), |(i, j)| (i + 2 * j) as f64 * 0.2 - 0.5);
    let vars = RowPenalty.init(0, &xs).unwrap();
    let loss = |v: &Variables, xs: &Array2<f64>| RowPenalty.apply(v, xs).unwrap();
    let grads = grad!(|v: &Variables| RowPenalty.apply(v, &xs).unwrap())(&vars);
    assert_eq!(grads.error(), None);
    let gx = grad!(|xs: &Array2<f64>| RowPenalty.apply(&vars, xs).unwrap())(&xs);
    check_against_differences("row penalty", loss, &grads, &gx, &vars, &xs);
}

// ----- closures calling functions, in a `(jvp)` impl -----

/// A `(jvp)` function for the closures below.
#[differentiable(jvp)]
fn soft_norm(y: &Array1<f64>) -> f64 {
    ((y * y).sum() + 1.0).sqrt()
}

/// Closures that call a function, in an impl that is `#[differentiable(jvp)]` (so
/// the functions it calls are `(jvp)`): the closures' forward mode calls theirs.
/// A `grad!` of such a closure, and a `vmap!` of one under a `grad!`.
struct CallsInClosures;

#[differentiable(jvp)]
impl CallsInClosures {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> f64 {
        let (g,) = grad!(cx, |mdl, cx, x| soft_norm(&mdl.call(cx, x)), Bump, x);
        (&g * &g).sum() + MapsCalls.call(cx, x)
    }
}

struct MapsCalls;

#[differentiable(jvp)]
impl MapsCalls {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> f64 {
        let rs = no_grad(ndarray::array![[0.5, 1.0, -0.5], [-1.0, 0.25, 2.0]]);
        let (g,) = grad!(cx, |mdl, cx, x| mdl.call(cx, x), MappedNorm, x);
        let ys = vmap!(
            cx,
            |mdl, cx, r| soft_norm(&mdl.call(cx, &(&r * x))),
            Bump,
            rs,
            in_axes = [0]
        );
        (&g * &g).sum() + ys.sum()
    }
}

struct MappedNorm;

#[differentiable(jvp)]
impl MappedNorm {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> f64 {
        let rs = no_grad(ndarray::array![[0.5, 1.0, -0.5], [-1.0, 0.25, 2.0]]);
        let ys = vmap!(
            cx,
            |mdl, cx, r| soft_norm(&mdl.call(cx, &(&r * x))),
            Bump,
            rs,
            in_axes = [0]
        );
        (&ys * &ys).sum()
    }
}

#[test]
fn second_order_through_closures_calling_functions_in_a_jvp_impl() {
    let x = ndarray::array![0.4, -0.8, 1.2];
    let vars = CallsInClosures.init(0, &x).unwrap();
    let loss = |v: &Variables, x: &Array1<f64>| CallsInClosures.apply(v, x).unwrap();
    let grads = grad!(|v: &Variables| CallsInClosures.apply(v, &x).unwrap())(&vars);
    assert_eq!(grads.error(), None);
    let gx = grad!(|x: &Array1<f64>| CallsInClosures.apply(&vars, x).unwrap())(&x);
    check_against_differences("calls in closures", loss, &grads, &gx, &vars, &x);
}

// ----- closures reading fields of `self` -----

/// Closures reading a field of `self` (`self.scale`): copied where the transform
/// is, into a constant the rerun reads; a `vmap!` (first order through it), and a
/// `grad!` of it (second order, its forward mode mapping the closure's).
struct ScaledRows {
    scale: f64,
}

#[differentiable]
impl ScaledRows {
    fn call(&self, cx: &mut Scope, xs: &Array2<f64>) -> f64 {
        let ys = vmap!(
            cx,
            |mdl, cx, x| mdl.call(cx, &x.to_owned()).sum() * self.scale,
            Bend,
            xs,
            in_axes = [0]
        );
        (&ys * &ys).sum()
    }
}

struct ScaledPenalty {
    scale: f64,
}

#[differentiable]
impl ScaledPenalty {
    fn call(&self, cx: &mut Scope, xs: &Array2<f64>) -> f64 {
        let rows = ScaledRows { scale: 1.5 };
        let (g,) = grad!(cx, |mdl, cx, xs| mdl.call(cx, xs) * self.scale, rows, xs);
        (&g * &g).sum()
    }
}

#[test]
fn closures_reading_fields_of_self() {
    let xs = Array2::from_shape_fn((3, 2), |(i, j)| (i + 2 * j) as f64 * 0.3 - 0.5);
    let rows = ScaledRows { scale: 1.5 };
    let vars = rows.init(0, &xs).unwrap();
    let loss = |v: &Variables, xs: &Array2<f64>| rows.apply(v, xs).unwrap();
    let grads = grad!(|v: &Variables| rows.apply(v, &xs).unwrap())(&vars);
    let gx = grad!(|xs: &Array2<f64>| rows.apply(&vars, xs).unwrap())(&xs);
    check_against_differences("scaled rows", loss, &grads, &gx, &vars, &xs);
    let penalty = ScaledPenalty { scale: 0.7 };
    let vars = penalty.init(0, &xs).unwrap();
    let loss = |v: &Variables, xs: &Array2<f64>| penalty.apply(v, xs).unwrap();
    let grads = grad!(|v: &Variables| penalty.apply(v, &xs).unwrap())(&vars);
    assert_eq!(grads.error(), None);
    let gx = grad!(|xs: &Array2<f64>| penalty.apply(&vars, xs).unwrap())(&xs);
    check_against_differences("scaled penalty", loss, &grads, &gx, &vars, &xs);
}

// ----- a body the random module programs found -----

/// The same product (`x * x`) in both arms of branches and after them, its shape
/// read by the reverse: the input gradient written back named its values as the
/// first lowering did (`__t45`), which the second lowering took for temporaries of
/// its own (a constant of the source then read a name nothing bound: valid code did
/// not compile). Written back, they are named apart (`__v45`).
struct Repeats;

#[differentiable]
impl Repeats {
    fn call(&self, cx: &mut Scope, x: f64, a: &Array1<f64>) -> f64 {
        let p: f64 = cx.param("p", init::constant(0.3), ());
        let w: Array1<f64> = cx.param("w", init::constant(-0.4), 3);
        let s1 = if x > 0.0731 {
            (1.0 + x * x).ln() / (1.0 + p * p)
        } else {
            (&w * &w).sum() - (p * -0.6 * (p - x))
        };
        let a2 = a + &w;
        let s4 = if p > 0.0731 {
            ((x * x * -0.8) + (s1 * -1.4 * s1 * 0.1)).tanh().exp()
        } else {
            ((1.0 + x * x).ln()).cos().tanh().exp()
        };
        let s5 = ((s4 / (1.0 + s4 * s4)) - (1.0 + s1 * s1).ln()) / (1.0 + x * x);
        s5 + (&a2 * &a2).sum() * 0.5
    }
}

struct RepeatsLoss;

#[differentiable]
impl RepeatsLoss {
    fn call(&self, cx: &mut Scope, x: f64, a: &Array1<f64>) -> f64 {
        let (gx, ga) = grad!(cx, |mdl, cx, x, a| mdl.call(cx, x, a), Repeats, x, a);
        gx * gx + (&ga * &ga).sum()
    }
}

#[test]
fn second_order_through_a_product_repeated_across_branches() {
    let a = ndarray::array![0.5, -0.2, 0.9];
    for x in [0.6, -0.4] {
        let init = RepeatsLoss.init(0, x, &a).unwrap();
        for vars in [init.clone(), init.map(|v| -v)] {
            let loss =
                |v: &Variables, p: &(f64, Array1<f64>)| RepeatsLoss.apply(v, p.0, &p.1).unwrap();
            let grads = grad!(|v: &Variables| RepeatsLoss.apply(v, x, &a).unwrap())(&vars);
            assert_eq!(grads.error(), None);
            let gx =
                grad!(|x: f64, a: &Array1<f64>| RepeatsLoss.apply(&vars, x, a).unwrap())(x, &a);
            check_against_differences("repeats", loss, &grads, &gx, &vars, &(x, a.clone()));
        }
    }
}
