//! Derivatives through a lifted `vmap!` inside a module against Flax's `nn.vmap` with
//! the variables broadcast (`reference/lifted_vmap.json`, from `gen_lifted_vmap.py`),
//! to 1e-9 relative; with a random Dropout mask per example, against central
//! differences (no generator of ours matches JAX's).

use adjoint::nn::{Dense, Dropout};
use adjoint::optim::sgd;
use adjoint::prelude::*;
use adjoint::scope::ApplyOptions;
use adjoint::train::TrainState;
use adjoint_tests::{assert_scalar_close, assert_tree_close, matrix, reference, variables};
use ndarray::{Array1, Array2, ArrayD, ArrayView1, Dimension};

const RTOL: f64 = 1e-9;

fn close(what: &str, got: f64, want: f64) {
    assert_scalar_close(what, got, want, RTOL);
}

// ----- a per-example net with a loop and a branch, trained through vmap! -----

/// One example: a row of `x` and the broadcast scale `s`.
#[derive(Clone)]
struct PointNet {
    random_dropout: bool,
}

#[differentiable]
impl PointNet {
    fn call(&self, cx: &mut Scope, x: ArrayView1<f64>, s: f64) -> f64 {
        let h = Dense::new(3).call(cx, &x.to_owned()).tanh();
        let h = Dropout::new(0.5)
            .deterministic(!self.random_dropout)
            .call(cx, &h);
        let mut acc = h.clone();
        for _ in 0..2 {
            acc = (&acc * &h).sin() + &h;
        }
        let y = Dense::new(1).call(cx, &acc).sum();
        if y > 0.0 { y * s } else { y * y }
    }
}

struct Batched {
    random_dropout: bool,
}

#[differentiable]
impl Batched {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>, s: f64) -> f64 {
        let net = PointNet {
            random_dropout: self.random_dropout,
        };
        let ys = vmap!(
            cx,
            |mdl, cx, x, s| mdl.call(cx, x, s),
            net,
            x,
            s,
            in_axes = [0, None]
        );
        (&ys * &ys).sum()
    }
}

/// The same, the mapped module held in a field: named by the field, as Flax names a
/// submodule assigned in `setup` (`net/Dense_0`).
struct BatchedField {
    net: PointNet,
}

#[differentiable]
impl BatchedField {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>, s: f64) -> f64 {
        let ys = vmap!(
            cx,
            |mdl, cx, x, s| mdl.call(cx, x, s),
            self.net,
            x,
            s,
            in_axes = [0, None]
        );
        (&ys * &ys).sum()
    }
}

#[test]
fn a_mapped_field_is_named_by_the_field() {
    let case = reference("lifted_vmap.json", "trained_through_vmap");
    let (x, s) = (matrix(&case["x"]), case["s"].as_f64().unwrap());
    let vars = variables(&case["variables"]);
    let model = BatchedField {
        net: PointNet {
            random_dropout: false,
        },
    };
    // The reference's tree with `PointNet_0` renamed `net`.
    let mut renamed = Variables::new();
    for (collection, path, leaf) in vars.leaves() {
        let to = path.replacen("PointNet_0", "net", 1);
        renamed.insert(collection, &to, leaf.clone()).unwrap();
    }
    let (loss, grads) = value_and_grad!(|v: &Variables| model.apply(v, &x, s).unwrap())(&renamed);
    assert_eq!(grads.error(), None);
    close("loss", loss, case["loss"].as_f64().unwrap());
    let want = &case["grads"]["params"]["PointNet_0"];
    let err = assert_tree_close(
        "field grads",
        &grads,
        &serde_json::json!({ "params": { "net": want } }),
        RTOL,
    );
    println!("gradient in the parameters: normwise relative error {err:.1e}");
}

fn batched_loss(
    model: &Batched,
    vars: &Variables,
    x: &Array2<f64>,
    s: f64,
) -> (f64, (Variables, Array2<f64>, f64)) {
    let opts = ApplyOptions::new().rng("dropout", 0);
    value_and_grad!(|v: &Variables, x: &Array2<f64>, s: f64| {
        let (loss, _) = model.apply_with(v, &opts, x, s).unwrap();
        loss
    })(vars, x, s)
}

#[test]
fn a_module_is_trained_through_a_lifted_vmap() {
    let case = reference("lifted_vmap.json", "trained_through_vmap");
    let (x, s) = (matrix(&case["x"]), case["s"].as_f64().unwrap());
    let vars = variables(&case["variables"]);
    let model = Batched {
        random_dropout: false,
    };
    // Both arms of the branch run (per example, as JAX's select under vmap).
    let arms: Vec<bool> = case["positive_arm"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_bool().unwrap())
        .collect();
    assert!(arms.contains(&true) && arms.contains(&false));

    let (loss, (grads, gx, gs)) = batched_loss(&model, &vars, &x, s);
    assert_eq!(grads.error(), None);
    close("loss", loss, case["loss"].as_f64().unwrap());
    let err = assert_tree_close("grads", &grads, &case["grads"], RTOL);
    println!("gradient in the parameters: normwise relative error {err:.1e}");
    let want_gx = matrix(&case["x_grad"]);
    let err = (&gx - &want_gx).mapv(f64::abs).sum() / want_gx.mapv(f64::abs).sum();
    println!("gradient in x: relative error {err:.1e}");
    assert!(err <= RTOL, "x_grad: got {gx}, want {want_gx}");
    close("s_grad", gs, case["s_grad"].as_f64().unwrap());

    // Three steps of SGD, as optax's `sgd(0.05)`: the loss before each step.
    let mut state = TrainState::create(vars, sgd(0.05, None, false));
    for (step, want) in case["sgd_losses"].as_array().unwrap().iter().enumerate() {
        let (loss, (grads, _, _)) = batched_loss(&model, &state.variables(), &x, s);
        close(
            &format!("loss at step {step}"),
            loss,
            want.as_f64().unwrap(),
        );
        state.apply_gradients(grads).unwrap();
    }
    let err = assert_tree_close("after sgd", &state.variables(), &case["after_sgd"], RTOL);
    println!("parameters after 3 steps: normwise relative error {err:.1e}");
}

/// Each example draws its own Dropout mask; the pullback runs the examples again in
/// order from the scope's state before the `vmap!`, so each draws the same one.
#[test]
fn each_example_keeps_its_dropout_mask_in_the_pullback() {
    let case = reference("lifted_vmap.json", "trained_through_vmap");
    let (x, s) = (matrix(&case["x"]), case["s"].as_f64().unwrap());
    let vars = variables(&case["variables"]);
    let model = Batched {
        random_dropout: true,
    };
    let loss = |v: &Variables, x: &Array2<f64>, s: f64| batched_loss(&model, v, x, s).0;
    let (_, (grads, gx, gs)) = batched_loss(&model, &vars, &x, s);
    assert_eq!(grads.error(), None);
    let h = 1e-6;
    let near = |what: String, g: f64, fd: f64| {
        assert!(
            (g - fd).abs() <= 1e-6 * (1.0 + fd.abs()),
            "{what}: {g} against differences {fd}"
        );
    };
    for path in ["PointNet_0/Dense_0/kernel", "PointNet_0/Dense_1/kernel"] {
        let kernel: ArrayD<f64> = vars.read("params", path).unwrap();
        let got: ArrayD<f64> = grads.read("params", path).unwrap();
        for (ix, g) in got.indexed_iter() {
            let at = |d: f64| {
                let mut k = kernel.clone();
                k[&ix] += d;
                loss(&vars.clone().with("params", path, k).unwrap(), &x, s)
            };
            near(
                format!("{path}{:?}", ix.slice()),
                *g,
                (at(h) - at(-h)) / (2.0 * h),
            );
        }
    }
    for (ix, g) in gx.indexed_iter() {
        let at = |d: f64| {
            let mut x = x.clone();
            x[ix] += d;
            loss(&vars, &x, s)
        };
        near(format!("x{ix:?}"), *g, (at(h) - at(-h)) / (2.0 * h));
    }
    near(
        "s".into(),
        gs,
        (loss(&vars, &x, s + h) - loss(&vars, &x, s - h)) / (2.0 * h),
    );
    // The masks differ between examples: the gradient differs from the
    // deterministic one.
    let deterministic = Batched {
        random_dropout: false,
    };
    let (_, (_, gx_det, _)) = batched_loss(&deterministic, &vars, &x, s);
    assert!((&gx - &gx_det).mapv(f64::abs).sum() > 1e-3);
}

// ----- a PINN written per point: grad! inside the mapped child -----

struct Field;

#[differentiable]
impl Field {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> f64 {
        let h = Dense::new(5).call(cx, x).tanh();
        Dense::new(1).call(cx, &h).sum()
    }
}

struct Residual;

#[differentiable]
impl Residual {
    fn call(&self, cx: &mut Scope, x: ArrayView1<f64>) -> f64 {
        let x = x.to_owned();
        let (du,) = grad!(cx, |mdl, cx, x| mdl.call(cx, x), Field, &x);
        let r = &du - &no_grad(x.cos());
        (&r * &r).sum()
    }
}

struct PerPoint;

#[differentiable]
impl PerPoint {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> f64 {
        let rs = vmap!(cx, |mdl, cx, x| mdl.call(cx, x), Residual, x, in_axes = [0]);
        rs.mean().unwrap()
    }
}

#[test]
fn a_pinn_written_per_point_is_trained_through_vmap() {
    let case = reference("lifted_vmap.json", "pinn_per_point");
    let x = matrix(&case["x"]);
    let vars = variables(&case["variables"]);
    let (loss, grads) = value_and_grad!(|v: &Variables| PerPoint.apply(v, &x).unwrap())(&vars);
    assert_eq!(grads.error(), None);
    close("per-point pinn loss", loss, case["loss"].as_f64().unwrap());
    let err = assert_tree_close("per-point pinn grads", &grads, &case["grads"], RTOL);
    println!("per-point pinn gradient: normwise relative error {err:.1e}");
}

// ----- second order through vmap!: a gradient penalty of a critic that maps its rows -----

#[derive(Clone)]
struct Scorer {
    random_dropout: bool,
}

#[differentiable]
impl Scorer {
    fn call(&self, cx: &mut Scope, x: ArrayView1<f64>) -> f64 {
        let h = adjoint::nn::gelu(&Dense::new(4).call(cx, &x.to_owned()));
        let h = Dropout::new(0.5)
            .deterministic(!self.random_dropout)
            .call(cx, &h);
        Dense::new(1).call(cx, &h).sum()
    }
}

#[derive(Clone)]
struct Critic {
    random_dropout: bool,
}

#[differentiable]
impl Critic {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> f64 {
        let scorer = Scorer {
            random_dropout: self.random_dropout,
        };
        let scores = vmap!(cx, |mdl, cx, x| mdl.call(cx, x), scorer, x, in_axes = [0]);
        scores.sum()
    }
}

struct Penalty {
    random_dropout: bool,
}

#[differentiable]
impl Penalty {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> f64 {
        let critic = Critic {
            random_dropout: self.random_dropout,
        };
        let (g,) = grad!(cx, |mdl, cx, x| mdl.call(cx, x), critic, x);
        (&g * &g).sum()
    }
}

fn penalty(model: &Penalty, vars: &Variables, x: &Array2<f64>) -> (f64, Variables) {
    let opts = ApplyOptions::new().rng("dropout", 0);
    value_and_grad!(|v: &Variables| model.apply_with(v, &opts, x).unwrap().0)(vars)
}

#[test]
fn second_order_through_a_lifted_vmap() {
    let case = reference("lifted_vmap.json", "grad_of_vmap");
    let x = matrix(&case["x"]);
    let vars = variables(&case["variables"]);
    let model = Penalty {
        random_dropout: false,
    };
    let (loss, grads) = penalty(&model, &vars, &x);
    assert_eq!(grads.error(), None);
    close("penalty", loss, case["loss"].as_f64().unwrap());
    let err = assert_tree_close("penalty grads", &grads, &case["grads"], RTOL);
    println!("penalty gradient: normwise relative error {err:.1e}");
}

/// Second order through a `vmap!` whose examples each draw a Dropout mask: the
/// JVP-VJP runs the examples again from the scope's state before the `grad!`, so
/// each draws the mask it drew. Against central differences.
#[test]
fn second_order_through_vmap_keeps_each_examples_dropout_mask() {
    let case = reference("lifted_vmap.json", "grad_of_vmap");
    let x = matrix(&case["x"]);
    let vars = variables(&case["variables"]);
    let model = Penalty {
        random_dropout: true,
    };
    let (_, grads) = penalty(&model, &vars, &x);
    assert_eq!(grads.error(), None);
    let path = "Critic_0/Scorer_0/Dense_0/kernel";
    let kernel: ArrayD<f64> = vars.read("params", path).unwrap();
    let got: ArrayD<f64> = grads.read("params", path).unwrap();
    let h = 1e-6;
    for (ix, g) in got.indexed_iter() {
        let at = |d: f64| {
            let mut k = kernel.clone();
            k[&ix] += d;
            penalty(&model, &vars.clone().with("params", path, k).unwrap(), &x).0
        };
        let fd = (at(h) - at(-h)) / (2.0 * h);
        assert!(
            (g - fd).abs() <= 1e-6 * (1.0 + fd.abs()),
            "{path}{:?}: {g} against differences {fd}",
            ix.slice()
        );
    }
    let deterministic = Penalty {
        random_dropout: false,
    };
    let (_, det) = penalty(&deterministic, &vars, &x);
    let det: ArrayD<f64> = det.read("params", path).unwrap();
    assert!(
        (&got - &det).mapv(f64::abs).sum() > 1e-3,
        "the masks matter"
    );
}

// ----- a broadcast array passed by reference, and a mapped axis other than 0 -----

struct Projected;

#[differentiable]
impl Projected {
    fn call(&self, cx: &mut Scope, x: ArrayView1<f64>, w: &Array1<f64>) -> f64 {
        let scale: f64 = cx.param("scale", init::ones, ());
        (x.dot(w) * scale).tanh()
    }
}

struct Columns;

#[differentiable]
impl Columns {
    fn call(&self, cx: &mut Scope, xt: &Array2<f64>, w: &Array1<f64>) -> f64 {
        let ys = vmap!(
            cx,
            |mdl, cx, x, w| mdl.call(cx, x, w),
            Projected,
            xt,
            w,
            in_axes = [1, None]
        );
        (&ys * &ys).sum()
    }
}

/// Against central differences: the broadcast `w`'s cotangent is the sum over the
/// examples, the mapped `xt`'s is each example's in its column.
#[test]
fn broadcast_references_and_other_axes_get_their_cotangents() {
    let xt = Array2::from_shape_fn((3, 4), |(i, j)| ((i * 4 + j) as f64 * 0.37).sin());
    let w = ndarray::array![0.4, -0.7, 0.2];
    let vars = Variables::new()
        .with("params", "Projected_0/scale", ndarray::arr0(1.3).into_dyn())
        .unwrap();
    let loss = |v: &Variables, xt: &Array2<f64>, w: &Array1<f64>| Columns.apply(v, xt, w).unwrap();
    let (gv, gx, gw) = grad!(|v: &Variables, xt: &Array2<f64>, w: &Array1<f64>| Columns
        .apply(v, xt, w)
        .unwrap())(&vars, &xt, &w);
    assert_eq!(gv.error(), None);
    let h = 1e-6;
    let near = |what: String, g: f64, fd: f64| {
        assert!(
            (g - fd).abs() <= 1e-7 * (1.0 + fd.abs()),
            "{what}: {g} against differences {fd}"
        );
    };
    for (ix, g) in gx.indexed_iter() {
        let at = |d: f64| {
            let mut xt = xt.clone();
            xt[ix] += d;
            loss(&vars, &xt, &w)
        };
        near(format!("xt{ix:?}"), *g, (at(h) - at(-h)) / (2.0 * h));
    }
    for (i, g) in gw.indexed_iter() {
        let at = |d: f64| {
            let mut w = w.clone();
            w[i] += d;
            loss(&vars, &xt, &w)
        };
        near(format!("w[{i}]"), *g, (at(h) - at(-h)) / (2.0 * h));
    }
    let gs: ArrayD<f64> = gv.read("params", "Projected_0/scale").unwrap();
    let at = |d: f64| {
        let v = vars
            .clone()
            .with(
                "params",
                "Projected_0/scale",
                ndarray::arr0(1.3 + d).into_dyn(),
            )
            .unwrap();
        loss(&v, &xt, &w)
    };
    near("scale".into(), gs[[]], (at(h) - at(-h)) / (2.0 * h));
}

// ----- a closure that is more than mdl.call, per example -----

struct Bend;

#[differentiable]
impl Bend {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> Array1<f64> {
        let h = Dense::new(4).call(cx, x).tanh();
        Dense::new(2).call(cx, &h)
    }
}

/// `nn.vmap` of a closure that calls the child twice and weights its output by a
/// constant of the enclosing method (`ClosurePerExample` of the generator).
struct ClosurePerExample;

#[differentiable]
impl ClosurePerExample {
    fn call(&self, cx: &mut Scope, xs: &Array2<f64>) -> f64 {
        let w = no_grad(ndarray::array![1.5, -0.5]);
        let ys = vmap!(
            cx,
            |mdl, cx, x| {
                let y = mdl.call(cx, &x.to_owned());
                (&y * &y * &w).sum() + mdl.call(cx, &x.to_owned()).sum()
            },
            Bend,
            xs,
            in_axes = [0]
        );
        (&ys * &ys).sum()
    }
}

/// First order through a `vmap!` of a closure: the closure's reverse mode runs again
/// per example.
#[test]
fn trained_through_a_vmap_of_a_closure() {
    let case = reference("lifted_vmap.json", "closure_per_example");
    let x = matrix(&case["x"]);
    let vars = variables(&case["variables"]);
    assert_eq!(
        vars.shapes(),
        ClosurePerExample.init(0, &x).unwrap().shapes()
    );
    let (loss, grads) =
        value_and_grad!(|v: &Variables| ClosurePerExample.apply(v, &x).unwrap())(&vars);
    assert_eq!(grads.error(), None);
    close(
        "closure per example loss",
        loss,
        case["loss"].as_f64().unwrap(),
    );
    let err = assert_tree_close("closure per example grads", &grads, &case["grads"], RTOL);
    println!("vmap closure: normwise relative error {err:.1e}");
    let gx = grad!(|x: &Array2<f64>| ClosurePerExample.apply(&vars, x).unwrap())(&x);
    let want = matrix(&case["grad_x"]);
    let diff = (&gx - &want).mapv(|d| d * d).sum().sqrt();
    assert!(
        diff <= RTOL * want.mapv(|d| d * d).sum().sqrt(),
        "grad_x: {gx} against {want}"
    );
}

/// A critic that maps its rows through a closure that is more than the call and
/// reads a parameter of its own (`ClosureCritic` of the generator).
struct ClosureCritic;

#[differentiable]
impl ClosureCritic {
    fn call(&self, cx: &mut Scope, xs: &Array2<f64>) -> f64 {
        let s: f64 = cx.param("s", init::ones, ());
        let ys = vmap!(
            cx,
            |mdl, cx, x| (mdl.call(cx, &x.to_owned()) * s).tanh().sum(),
            Bend,
            xs,
            in_axes = [0]
        );
        (&ys * &ys).sum()
    }
}

struct ClosurePenalty;

#[differentiable]
impl ClosurePenalty {
    fn call(&self, cx: &mut Scope, xs: &Array2<f64>) -> f64 {
        let (g,) = grad!(cx, |mdl, cx, xs| mdl.call(cx, xs), ClosureCritic, xs);
        (&g * &g).sum()
    }
}

/// Second order through a `vmap!` of a closure: the critic's forward mode maps the
/// closure's (`Rerun::forward`), and its JVP-VJP runs that closure's reverse mode
/// per example.
#[test]
fn second_order_through_a_vmap_of_a_closure() {
    let case = reference("lifted_vmap.json", "closure_penalty");
    let x = matrix(&case["x"]);
    let vars = variables(&case["variables"]);
    assert_eq!(vars.shapes(), ClosurePenalty.init(0, &x).unwrap().shapes());
    let (loss, grads) =
        value_and_grad!(|v: &Variables| ClosurePenalty.apply(v, &x).unwrap())(&vars);
    assert_eq!(grads.error(), None);
    close("closure penalty loss", loss, case["loss"].as_f64().unwrap());
    let err = assert_tree_close("closure penalty grads", &grads, &case["grads"], RTOL);
    println!("closure penalty: normwise relative error {err:.1e}");
    let gx = grad!(|x: &Array2<f64>| ClosurePenalty.apply(&vars, x).unwrap())(&x);
    let want = matrix(&case["grad_x"]);
    let diff = (&gx - &want).mapv(|d| d * d).sum().sqrt();
    assert!(
        diff <= RTOL * want.mapv(|d| d * d).sum().sqrt(),
        "grad_x: {gx} against {want}"
    );
}

/// A field of a scalar and a vector, for the mapped closure below.
struct ScalarField;

#[differentiable]
impl ScalarField {
    fn call(&self, cx: &mut Scope, x: f64, a: &Array1<f64>) -> f64 {
        let w: Array1<f64> = cx.param("w", init::constant(0.4), 3);
        let s = (&w * a).sum() * x;
        s.tanh() + (a * x).sum()
    }
}

/// A `vmap!` whose closure reads the enclosing method's arguments (a scalar and a
/// reference, both differentiated) and a parameter, mapped over constant rows.
struct MappedRows;

#[differentiable]
impl MappedRows {
    fn call(&self, cx: &mut Scope, x: f64, a: &Array1<f64>) -> f64 {
        let k: f64 = cx.param("k", init::constant(0.7), ());
        let rs = no_grad(ndarray::array![[0.5, 1.0], [-1.0, 0.25]]);
        let ys = vmap!(
            cx,
            |mdl, cx, r| mdl.call(cx, x * r.sum(), a) * k,
            ScalarField,
            rs,
            in_axes = [0]
        );
        ys.sum() + (&ys * &ys).sum() * 0.5
    }
}

struct MappedRowsLoss;

#[differentiable]
impl MappedRowsLoss {
    fn call(&self, cx: &mut Scope, x: f64, a: &Array1<f64>) -> f64 {
        let v: Array1<f64> = cx.param("v", init::constant(0.3), 3);
        let (gx, ga) = grad!(cx, |mdl, cx, x, a| mdl.call(cx, x, a), MappedRows, x, a);
        gx * gx + (&ga * &ga).sum() + (&v * &ga).sum()
    }
}

/// The values of the enclosing code a `vmap!`'s closure reads get their cotangents,
/// in first order and through the closure's forward mode in second order (a
/// reference argument read by the closure was passed by value to the rerun, which
/// did not compile), against central differences.
#[test]
fn a_mapped_closure_reading_the_enclosing_arguments() {
    use adjoint::check::{Tolerance, check_grad};
    let (x, a) = (0.3, ndarray::array![0.5, -0.2, 0.9]);
    let tol = Tolerance::default();
    let vars = MappedRows.init(0, x, &a).unwrap();
    let g = grad!(|v: &Variables| MappedRows.apply(v, x, &a).unwrap())(&vars);
    check_grad(
        |v: &Variables| MappedRows.apply(v, x, &a).unwrap(),
        &vars,
        &g,
        tol,
    )
    .unwrap();
    let vars = MappedRowsLoss.init(0, x, &a).unwrap();
    let g = grad!(|v: &Variables| MappedRowsLoss.apply(v, x, &a).unwrap())(&vars);
    assert_eq!(g.error(), None);
    check_grad(
        |v: &Variables| MappedRowsLoss.apply(v, x, &a).unwrap(),
        &vars,
        &g,
        tol,
    )
    .unwrap();
    let inputs = grad!(|x: f64, a: &Array1<f64>| MappedRowsLoss.apply(&vars, x, a).unwrap())(x, &a);
    let f = |p: &(f64, Array1<f64>)| MappedRowsLoss.apply(&vars, p.0, &p.1).unwrap();
    check_grad(f, &(x, a.clone()), &inputs, tol).unwrap();
}
