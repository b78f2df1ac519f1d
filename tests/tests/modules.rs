//! Flax modules and lifted transforms, ported from `reference/modules.json`
//! (Flax linen, float64): the variables trees `init` builds and the outputs.
//! Plus one test per runtime error a user can run into.

// The bodies are written as a user would (`z = z * x`) to test exactly that.
#![allow(clippy::assign_op_pattern, clippy::op_ref)]

use adjoint::prelude::*;
use adjoint::scope::ApplyOptions;
use adjoint_tests::{array, assert_close, reference, scalar, tree_text, variables};
use ndarray::Array1;

const RTOL: f64 = 1e-9;

// ----- seed_example: nn.grad over a child module -----

struct LearnScale;

#[differentiable]
impl LearnScale {
    fn call(&self, cx: &mut Scope, x: f64, y: f64) -> f64 {
        let p: f64 = cx.param("scale", init::zeros, ());
        p * x * y
    }
}

struct Foo;

#[differentiable]
impl Foo {
    fn call(&self, cx: &mut Scope, x: f64, y: f64) -> (f64, f64) {
        grad!(cx, |mdl, cx, x, y| mdl.call(cx, x, y), LearnScale, x, y)
    }
}

#[test]
fn seed_example() {
    let case = reference("modules.json", "seed_example");
    let vars = Foo.init(0, 2.0, 3.0).unwrap();
    assert_eq!(vars.shapes(), tree_text(&case["init_variables_shapes"]));
    assert_eq!(vars.to_string(), tree_text(&case["init_variables"]));
    assert_eq!(
        vars.to_string(),
        r#"{"params": {"LearnScale_0": {"scale": 0.0}}}"#
    );

    let scale = case["variables"]["params"]["LearnScale_0"]["scale"]
        .as_f64()
        .unwrap();
    let vars = Variables::new()
        .with("params", "LearnScale_0/scale", scale)
        .unwrap();
    let (gx, gy) = Foo.apply(&vars, 2.0, 3.0).unwrap();
    let want = array(&case["output"]);
    assert_close("output", &ndarray::arr1(&[gx, gy]).into_dyn(), &want, RTOL);
}

// ----- grad_aux: has_aux with grad! and value_and_grad! -----

struct LearnScaleAux;

#[differentiable]
impl LearnScaleAux {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>, y: &Array1<f64>) -> (f64, f64) {
        let p: f64 = cx.param("scale", init::ones, ());
        ((x * y * p).sum(), p)
    }
}

struct FooAux;

type AuxOut = (
    Array1<f64>,
    Array1<f64>,
    f64,
    f64,
    f64,
    Array1<f64>,
    Array1<f64>,
);

#[differentiable]
impl FooAux {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>, y: &Array1<f64>) -> AuxOut {
        let ((gx, gy), aux) = grad!(
            cx,
            |mdl, cx, x, y| mdl.call(cx, x, y),
            LearnScaleAux,
            x,
            y,
            has_aux
        );
        let ((z, aux2), (gx2, gy2)) = value_and_grad!(
            cx,
            |mdl, cx, x, y| mdl.call(cx, x, y),
            LearnScaleAux,
            x,
            y,
            has_aux
        );
        no_grad((gx, gy, aux, z, aux2, gx2, gy2))
    }
}

#[test]
fn grad_aux() {
    let case = reference("modules.json", "grad_aux");
    let x = array(&case["inputs"]["x"]).into_dimensionality().unwrap();
    let y = array(&case["inputs"]["y"]).into_dimensionality().unwrap();
    let init = FooAux.init(0, &x, &y).unwrap();
    assert_eq!(init.shapes(), tree_text(&case["init_variables_shapes"]));

    let vars = Variables::new()
        .with("params", "LearnScaleAux_0/scale", 2.0)
        .and_then(|v| v.with("params", "LearnScaleAux_1/scale", -0.5))
        .unwrap();
    let (gx, gy, aux, z, aux2, gx2, gy2) = FooAux.apply(&vars, &x, &y).unwrap();
    let out = &case["output"];
    assert_close("x_grad", &gx.into_dyn(), &array(&out["x_grad"]), RTOL);
    assert_close("y_grad", &gy.into_dyn(), &array(&out["y_grad"]), RTOL);
    assert_close("aux", &scalar(aux), &array(&out["aux"]), RTOL);
    assert_close("value2", &scalar(z), &array(&out["value2"]), RTOL);
    assert_close("aux2", &scalar(aux2), &array(&out["aux2"]), RTOL);
    assert_close("x_grad2", &gx2.into_dyn(), &array(&out["x_grad2"]), RTOL);
    assert_close("y_grad2", &gy2.into_dyn(), &array(&out["y_grad2"]), RTOL);
}

// ----- mutable_inside_grad: a collection written inside grad! is published -----

struct Counting;

#[differentiable]
impl Counting {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> f64 {
        let count: i32 = cx.variable("batch_stats", "count", || 0);
        cx.put("batch_stats", "count", count + 1);
        let p: f64 = cx.param("scale", init::ones, ());
        (x * p).sum()
    }
}

struct FooCount;

#[differentiable]
impl FooCount {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> Array1<f64> {
        let (g,) = grad!(cx, |mdl, cx, x| mdl.call(cx, x), Counting, x);
        g
    }
}

#[test]
fn mutable_inside_grad() {
    let case = reference("modules.json", "mutable_inside_grad");
    let x: Array1<f64> = array(&case["inputs"]["x"]).into_dimensionality().unwrap();
    let vars = FooCount.init(0, &x).unwrap();
    assert_eq!(vars.to_string(), tree_text(&case["init_variables"]));

    let (g, mutated) = FooCount
        .apply_with(&vars, &ApplyOptions::new().mutable(["batch_stats"]), &x)
        .unwrap();
    assert_close("output", &g.into_dyn(), &array(&case["output"]), RTOL);
    assert_eq!(mutated.to_string(), tree_text(&case["mutated"]));
}

// ----- typed errors, each naming the variable -----

#[test]
fn missing_parameter_names_its_path() {
    let err = Foo.apply(&Variables::new(), 2.0, 3.0).unwrap_err();
    assert_eq!(
        err,
        ScopeError::ParamNotFound {
            path: "LearnScale_0/scale".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "parameter `LearnScale_0/scale` not found in collection `params`: init the module first, or check the variables' paths"
    );
}

#[test]
fn shape_mismatch_names_both_shapes() {
    let vars = Variables::new()
        .with("params", "LearnScale_0/scale", ndarray::arr1(&[1.0, 2.0]))
        .unwrap();
    let err = Foo.apply(&vars, 2.0, 3.0).unwrap_err();
    assert_eq!(
        err,
        ScopeError::ShapeMismatch {
            collection: "params".into(),
            path: "LearnScale_0/scale".into(),
            expected: vec![],
            found: vec![2]
        }
    );
    assert_eq!(
        err.to_string(),
        "variable `params/LearnScale_0/scale` has shape [2], but the module asks for shape []"
    );
}

#[test]
fn missing_collection_is_reported() {
    let x = ndarray::arr1(&[1.0, 2.0]);
    let vars = FooCount.init(0, &x).unwrap().only(&["params"]);
    let err = FooCount.apply(&vars, &x).unwrap_err();
    assert_eq!(
        err,
        ScopeError::CollectionNotFound {
            collection: "batch_stats".into(),
            path: "Counting_0/count".into()
        }
    );
}

#[test]
fn writing_an_immutable_collection_is_reported() {
    let x = ndarray::arr1(&[1.0, 2.0]);
    let vars = FooCount.init(0, &x).unwrap();
    let err = FooCount.apply(&vars, &x).unwrap_err();
    assert_eq!(
        err,
        ScopeError::ImmutableCollection {
            collection: "batch_stats".into(),
            path: "Counting_0/count".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "cannot write `batch_stats/Counting_0/count`: collection `batch_stats` is immutable here; list it in `mutable` when applying"
    );
}

struct Noisy;

#[differentiable]
impl Noisy {
    fn call(&self, cx: &mut Scope, x: f64) -> f64 {
        let mut rng = cx.make_rng("dropout");
        let keep = no_grad(rand_bit(&mut rng));
        x * keep
    }
}

fn rand_bit(rng: &mut adjoint::init::Rng) -> f64 {
    use rand::Rng;
    if rng.random::<f64>() < 0.5 { 0.0 } else { 2.0 }
}

#[test]
fn unknown_rng_stream_is_reported_and_given_streams_are_deterministic() {
    let vars = Noisy.init(0, 1.0).unwrap();
    let err = Noisy.apply(&vars, 1.0).unwrap_err();
    assert_eq!(
        err,
        ScopeError::UnknownRngStream {
            stream: "dropout".into(),
            path: String::new()
        }
    );
    let opts = ApplyOptions::new().rng("dropout", 7);
    let a = Noisy.apply_with(&vars, &opts, 1.0).unwrap().0;
    let b = Noisy.apply_with(&vars, &opts, 1.0).unwrap().0;
    assert_eq!(a, b);
}

#[test]
fn invalid_variables_are_rejected() {
    let err = Variables::new()
        .with("params", "a", 1.0)
        .and_then(|v| v.with("params", "a/b", 2.0))
        .unwrap_err();
    assert_eq!(
        err,
        ScopeError::InvalidVariables {
            reason: "`params/a/b` would be both a variable and a module's subtree".into()
        }
    );
    // Stacking per-example trees that differ.
    let a = Variables::new().with("params", "w", 1.0).unwrap();
    let b = Variables::new().with("params", "v", 1.0).unwrap();
    let c = Variables::new()
        .with("params", "w", ndarray::arr1(&[1.0]))
        .unwrap();
    assert_eq!(
        Variables::stack(&[a.clone(), b]),
        Err(ScopeError::InvalidVariables {
            reason: "the stacked variables differ at `params/v`".into()
        })
    );
    assert_eq!(
        Variables::stack(&[a, c]),
        Err(ScopeError::InvalidVariables {
            reason: "the stacked variables differ at `params/w`".into()
        })
    );
}

#[test]
fn wrong_element_type_is_reported() {
    let vars = Variables::new()
        .with("params", "LearnScale_0/scale", 1.5f32)
        .unwrap();
    let err = Foo.apply(&vars, 2.0, 3.0).unwrap_err();
    assert_eq!(
        err,
        ScopeError::TypeMismatch {
            collection: "params".into(),
            path: "LearnScale_0/scale".into(),
            expected: "f64",
            found: "f32"
        }
    );
}

// ----- vjp_params: nn.vjp gives cotangents for the params collection -----

struct Bar;

#[differentiable]
impl Bar {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>, y: &Array1<f64>) -> Array1<f64> {
        let p: f64 = cx.param("test", init::constant(0.5), ());
        let _counter: i32 = cx.variable("state", "counter", || 0);
        x * y * p
    }
}

struct FooVjp;

#[differentiable]
impl FooVjp {
    fn call(
        &self,
        cx: &mut Scope,
        x: &Array1<f64>,
        y: &Array1<f64>,
    ) -> (Variables, Array1<f64>, Array1<f64>) {
        let (z, bwd) = vjp!(cx, |mdl, cx, x, y| mdl.call(cx, x, y), Bar, x, y);
        no_grad(bwd(Array1::ones(z.len())))
    }
}

#[test]
fn vjp_params() {
    let case = reference("modules.json", "vjp_params");
    let x: Array1<f64> = array(&case["inputs"]["x"]).into_dimensionality().unwrap();
    let y: Array1<f64> = array(&case["inputs"]["y"]).into_dimensionality().unwrap();
    let vars = FooVjp.init(0, &x, &y).unwrap();
    assert_eq!(vars.to_string(), tree_text(&case["init_variables"]));
    let (params_grad, x_grad, y_grad) = FooVjp.apply(&vars, &x, &y).unwrap();
    assert_eq!(params_grad.to_string(), tree_text(&case["params_grad"]));
    assert_close("x_grad", &x_grad.into_dyn(), &array(&case["x_grad"]), RTOL);
    assert_close("y_grad", &y_grad.into_dyn(), &array(&case["y_grad"]), RTOL);
}

/// A `vjp!` whose closure reads a value of the enclosing code (`w`), which stays the
/// caller's: the pullback of `Bar(x, y) * w` at ones is `Bar`'s at `w`.
struct WeightedVjp;

type Cotangents = (Variables, Array1<f64>, Array1<f64>);

#[differentiable]
impl WeightedVjp {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>, y: &Array1<f64>) -> (Cotangents, Cotangents) {
        let w = no_grad(x.mapv(|v| v + 2.0));
        let (z, bwd) = vjp!(cx, |mdl, cx, x, y| mdl.call(cx, x, y) * &w, Bar, x, y);
        let weighted = no_grad(bwd(Array1::ones(z.len())));
        let (_, bwd) = vjp!(cx, |mdl, cx, x, y| mdl.call(cx, x, y), Bar, x, y);
        (weighted, no_grad(bwd(w)))
    }
}

#[test]
fn vjp_of_a_closure_reading_the_enclosing_code() {
    let x = ndarray::array![0.5, -1.0, 2.0];
    let y = ndarray::array![1.5, 0.25, -0.5];
    let vars = WeightedVjp.init(0, &x, &y).unwrap();
    let ((v1, x1, y1), (v2, x2, y2)) = WeightedVjp.apply(&vars, &x, &y).unwrap();
    assert_eq!(v1.to_string(), v2.to_string());
    assert_eq!((x1, y1), (x2, y2));
}

// ----- training: parameter gradients of apply, shaped like the params tree -----

use adjoint::nn::Dense;
use ndarray::Array2;

struct Mlp;

#[differentiable]
impl Mlp {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> Array2<f64> {
        let h = Dense::new(8).call(cx, x).tanh();
        Dense::new(2).call(cx, &h)
    }
}

#[differentiable]
fn mse(pred: &Array2<f64>, #[no_grad] target: &Array2<f64>) -> f64 {
    let d = pred - target;
    (&d * &d).mean().unwrap()
}

#[differentiable]
fn mlp_by_hand(
    w1: &Array2<f64>,
    b1: &Array1<f64>,
    w2: &Array2<f64>,
    b2: &Array1<f64>,
    #[no_grad] x: &Array2<f64>,
    #[no_grad] t: &Array2<f64>,
) -> f64 {
    let h = (x.dot(w1) + b1).tanh();
    let d = h.dot(w2) + b2 - t;
    (&d * &d).mean().unwrap()
}

#[test]
fn parameter_gradients_of_apply_match_the_same_model_written_by_hand() {
    let x = Array2::from_shape_fn((5, 3), |(i, j)| ((i * 3 + j) as f64 * 0.37).sin());
    let t = Array2::from_shape_fn((5, 2), |(i, j)| ((i + j) as f64 * 0.5).cos());
    let vars = Mlp.init(42, &x).unwrap();
    assert_eq!(
        vars.shapes(),
        r#"{"params": {"Dense_0": {"bias": [8], "kernel": [3, 8]}, "Dense_1": {"bias": [2], "kernel": [8, 2]}}}"#
    );

    let (loss, grads) = value_and_grad!(|v: &Variables| mse(&Mlp.apply(v, &x).unwrap(), &t))(&vars);
    assert_eq!(grads.shapes(), vars.shapes());

    let w1: Array2<f64> = vars.read("params", "Dense_0/kernel").unwrap();
    let b1: Array1<f64> = vars.read("params", "Dense_0/bias").unwrap();
    let w2: Array2<f64> = vars.read("params", "Dense_1/kernel").unwrap();
    let b2: Array1<f64> = vars.read("params", "Dense_1/bias").unwrap();
    let (l2, (gw1, gb1, gw2, gb2)) = value_and_grad!(mlp_by_hand)(&w1, &b1, &w2, &b2, &x, &t);
    assert_close("loss", &scalar(loss), &scalar(l2), 1e-12);
    let read = |p: &str| grads.read::<ndarray::ArrayD<f64>>("params", p).unwrap();
    assert_close(
        "Dense_0/kernel",
        &read("Dense_0/kernel"),
        &gw1.into_dyn(),
        1e-12,
    );
    assert_close(
        "Dense_0/bias",
        &read("Dense_0/bias"),
        &gb1.into_dyn(),
        1e-12,
    );
    assert_close(
        "Dense_1/kernel",
        &read("Dense_1/kernel"),
        &gw2.into_dyn(),
        1e-12,
    );
    assert_close(
        "Dense_1/bias",
        &read("Dense_1/bias"),
        &gb2.into_dyn(),
        1e-12,
    );
}

// ----- value_and_grad_dense: a lifted transform over `self`, a bound submodule -----

/// Flax's `FooMulti(bar=bar)`: `bar` was created (and named) by the parent.
struct FooMulti {
    bar: Bound<Dense>,
}

#[differentiable]
impl FooMulti {
    fn loss(&self, cx: &mut Scope, x: &Array2<f64>, y: &Array2<f64>) -> f64 {
        let qup = Dense::new(y.ncols());
        let h = qup.call(cx, x);
        let delta = y - self.bar.call(cx, &h);
        (&delta * &delta).sum()
    }

    fn call(
        &self,
        cx: &mut Scope,
        x: &Array2<f64>,
        y: &Array2<f64>,
    ) -> (f64, Array2<f64>, Array2<f64>) {
        let (z, (gx, gy)) = value_and_grad!(cx, |mdl, cx, x, y| mdl.loss(cx, x, y), self, x, y);
        no_grad((z, gx, gy))
    }
}

struct Baz;

#[differentiable]
impl Baz {
    fn call(
        &self,
        cx: &mut Scope,
        x: &Array2<f64>,
        y: &Array2<f64>,
    ) -> (f64, Array2<f64>, Array2<f64>) {
        let bar = cx.bind(Dense::new(y.ncols()));
        FooMulti { bar }.call(cx, x, y)
    }
}

#[test]
fn value_and_grad_dense() {
    let case = reference("modules.json", "value_and_grad_dense");
    let x: Array2<f64> = array(&case["inputs"]["x"]).into_dimensionality().unwrap();
    let y: Array2<f64> = array(&case["inputs"]["y"]).into_dimensionality().unwrap();
    let init = Baz.init(0, &x, &y).unwrap();
    assert_eq!(init.shapes(), tree_text(&case["init_variables_shapes"]));
    let vars = variables(&case["variables"]);
    assert_eq!(vars.shapes(), init.shapes());
    let (z, gx, gy) = Baz.apply(&vars, &x, &y).unwrap();
    let out = &case["output"];
    assert_close("value", &scalar(z), &array(&out["value"]), RTOL);
    assert_close("x_grad", &gx.into_dyn(), &array(&out["x_grad"]), RTOL);
    assert_close("y_grad", &gy.into_dyn(), &array(&out["y_grad"]), RTOL);
}

/// Flax's `d = nn.Dense(3); d(d(x))`: one module, named where it is bound, called
/// twice, so both calls share its parameters.
struct SharedDense;

#[differentiable]
impl SharedDense {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> Array2<f64> {
        let d = cx.bind(Dense::new(3));
        let h = d.call(cx, x);
        d.call(cx, &h)
    }
}

#[differentiable]
fn shared_dense_by_hand(w: &Array2<f64>, b: &Array1<f64>, #[no_grad] x: &Array2<f64>) -> f64 {
    let h = x.dot(w) + b;
    (h.dot(w) + b).sum()
}

#[test]
fn a_bound_module_called_twice_shares_its_parameters() {
    let x = Array2::from_shape_fn((2, 3), |(i, j)| (i as f64 - j as f64) * 0.3);
    let vars = SharedDense.init(1, &x).unwrap();
    assert_eq!(
        vars.shapes(),
        r#"{"params": {"Dense_0": {"bias": [3], "kernel": [3, 3]}}}"#
    );
    let (_, grads) =
        value_and_grad!(|v: &Variables| SharedDense.apply(v, &x).unwrap().sum())(&vars);
    let w: Array2<f64> = vars.read("params", "Dense_0/kernel").unwrap();
    let b: Array1<f64> = vars.read("params", "Dense_0/bias").unwrap();
    let (gw, gb) = grad!(shared_dense_by_hand)(&w, &b, &x);
    let read = |p: &str| grads.read::<ndarray::ArrayD<f64>>("params", p).unwrap();
    assert_close("kernel", &read("Dense_0/kernel"), &gw.into_dyn(), 1e-12);
    assert_close("bias", &read("Dense_0/bias"), &gb.into_dyn(), 1e-12);
}

/// A submodule held in a field is named by the field (Flax's setup attributes).
struct WithField {
    dense: Dense,
}

#[differentiable]
impl WithField {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> Array2<f64> {
        self.dense.call(cx, x)
    }
}

/// Explicit names (Flax's `Dense(2, name="encoder")`) next to auto names.
struct Named;

#[differentiable]
impl Named {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> Array2<f64> {
        let enc = cx.bind_as("encoder", Dense::new(2));
        let h = enc.call(cx, x);
        Dense::new(2).call(cx, &h)
    }
}

/// A lifted grad! over a module its parent bound: the child's parameters live at the
/// parent's path, not under this module.
struct GradOfBound {
    scale: Bound<LearnScale>,
}

#[differentiable]
impl GradOfBound {
    fn call(&self, cx: &mut Scope, x: f64, y: f64) -> (f64, f64) {
        grad!(cx, |mdl, cx, x, y| mdl.call(cx, x, y), self.scale, x, y)
    }
}

/// A lifted vjp! over a bound module: its variable cotangents are relative to the
/// module, wherever it lives.
struct VjpOfBound {
    scale: Bound<LearnScale>,
}

#[differentiable]
impl VjpOfBound {
    fn call(&self, cx: &mut Scope, x: f64, y: f64) -> (Variables, f64, f64) {
        let (_, bwd) = vjp!(cx, |mdl, cx, x, y| mdl.call(cx, x, y), self.scale, x, y);
        no_grad(bwd(1.0))
    }
}

struct BindsForVjp;

#[differentiable]
impl BindsForVjp {
    fn call(&self, cx: &mut Scope, x: f64, y: f64) -> (Variables, f64, f64) {
        let scale = cx.bind(LearnScale);
        VjpOfBound { scale }.call(cx, x, y)
    }
}

struct BindsScale;

#[differentiable]
impl BindsScale {
    fn call(&self, cx: &mut Scope, x: f64, y: f64) -> (f64, f64) {
        let scale = cx.bind(LearnScale);
        GradOfBound { scale }.call(cx, x, y)
    }
}

#[test]
fn submodules_are_named_by_their_field_or_where_they_were_bound() {
    let x = Array2::<f64>::ones((1, 2));
    let vars = WithField {
        dense: Dense::new(2),
    }
    .init(0, &x)
    .unwrap();
    assert_eq!(
        vars.shapes(),
        r#"{"params": {"dense": {"bias": [2], "kernel": [2, 2]}}}"#
    );

    let vars = Named.init(0, &x).unwrap();
    assert_eq!(
        vars.shapes(),
        r#"{"params": {"Dense_0": {"bias": [2], "kernel": [2, 2]}, "encoder": {"bias": [2], "kernel": [2, 2]}}}"#
    );

    let vars = BindsScale.init(0, 2.0, 3.0).unwrap();
    assert_eq!(
        vars.to_string(),
        r#"{"params": {"LearnScale_0": {"scale": 0.0}}}"#
    );
    let vars = Variables::new()
        .with("params", "LearnScale_0/scale", 1.5)
        .unwrap();
    assert_eq!(BindsScale.apply(&vars, 2.0, 3.0).unwrap(), (4.5, 3.0));
    let (vars_ct, gx, gy) = BindsForVjp.apply(&vars, 2.0, 3.0).unwrap();
    assert_eq!(vars_ct.to_string(), r#"{"params": {"scale": 6.0}}"#);
    assert_eq!((gx, gy), (4.5, 3.0));
    // Second order through the bound module: d(x_grad + y_grad)/d scale = y + x.
    let (_, grads) = value_and_grad!(|v: &Variables| {
        let (gx, gy) = BindsScale.apply(v, 2.0, 3.0).unwrap();
        gx + gy
    })(&vars);
    assert_eq!(grads.read::<f64>("params", "LearnScale_0/scale"), Ok(5.0));
}

// ----- second order: differentiating through a lifted grad! -----

#[test]
fn seed_example_second_order() {
    // d/dparams of (x_grad + y_grad) through nn.grad: Flax gives 5.0.
    let case = reference("modules.json", "seed_example");
    let vars = Variables::new()
        .with("params", "LearnScale_0/scale", 1.5)
        .unwrap();
    let (_, grads) = value_and_grad!(|v: &Variables| {
        let (gx, gy) = Foo.apply(v, 2.0, 3.0).unwrap();
        gx + gy
    })(&vars);
    let want = case["d_sum_output_d_params"]["LearnScale_0"]["scale"]
        .as_f64()
        .unwrap();
    assert_close(
        "d_sum_output_d_params",
        &scalar(grads.read::<f64>("params", "LearnScale_0/scale").unwrap()),
        &scalar(want),
        RTOL,
    );
}

struct LearnScaleSq;

#[differentiable]
impl LearnScaleSq {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> f64 {
        let p: f64 = cx.param("scale", init::ones, ());
        (x * x * p).sum()
    }
}

struct Penalty;

#[differentiable]
impl Penalty {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> f64 {
        let (gx,) = grad!(cx, |mdl, cx, x| mdl.call(cx, x), LearnScaleSq, x);
        (&gx * &gx).sum()
    }
}

#[test]
fn gradient_penalty() {
    let case = reference("modules.json", "gradient_penalty");
    let x: Array1<f64> = array(&case["inputs"]["x"]).into_dimensionality().unwrap();
    let vars = Variables::new()
        .with("params", "LearnScaleSq_0/scale", 2.0)
        .unwrap();
    let (value, grads) = value_and_grad!(|v: &Variables| Penalty.apply(v, &x).unwrap())(&vars);
    assert_close("value", &scalar(value), &array(&case["value"]), RTOL);
    let want = case["d_value_d_params"]["LearnScaleSq_0"]["scale"]
        .as_f64()
        .unwrap();
    assert_close(
        "d_value_d_params",
        &scalar(grads.read::<f64>("params", "LearnScaleSq_0/scale").unwrap()),
        &scalar(want),
        RTOL,
    );
}

/// The physics-informed pattern: a field `u(x)` made of Dense layers, a loss on
/// its input gradient `du/dx`, trained with respect to the layers' parameters.
struct Field;

#[differentiable]
impl Field {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> f64 {
        let h = Dense::new(8).call(cx, x).tanh();
        Dense::new(1).call(cx, &h).sum()
    }
}

struct Residual;

#[differentiable]
impl Residual {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> f64 {
        let (du,) = grad!(cx, |mdl, cx, x| mdl.call(cx, x), Field, x);
        let r = &du - &no_grad(x.cos());
        (&r * &r).mean().unwrap()
    }
}

/// The same loss with the input gradient written out: `du/dx = ((1 - h²) w2ᵀ) w1ᵀ`.
#[differentiable]
fn residual_by_hand(
    w1: &Array2<f64>,
    b1: &Array1<f64>,
    w2: &Array2<f64>,
    #[no_grad] x: &Array2<f64>,
) -> f64 {
    let h = (x.dot(w1) + b1).tanh();
    let du = ((1.0 - &h * &h) * &w2.t()).dot(&w1.t());
    let r = &du - &x.cos();
    (&r * &r).mean().unwrap()
}

#[test]
fn second_order_through_submodules() {
    let x = Array2::from_shape_fn((5, 2), |(i, j)| (i as f64 * 0.4 - j as f64 * 0.3).sin());
    let vars = Residual.init(3, &x).unwrap();
    assert_eq!(
        vars.shapes(),
        r#"{"params": {"Field_0": {"Dense_0": {"bias": [8], "kernel": [2, 8]}, "Dense_1": {"bias": [1], "kernel": [8, 1]}}}}"#
    );
    let (loss, grads) = value_and_grad!(|v: &Variables| Residual.apply(v, &x).unwrap())(&vars);
    assert_eq!(grads.error(), None);

    let read = |p: &str| vars.read::<ndarray::ArrayD<f64>>("params", p).unwrap();
    let w1 = read("Field_0/Dense_0/kernel")
        .into_dimensionality()
        .unwrap();
    let b1 = read("Field_0/Dense_0/bias").into_dimensionality().unwrap();
    let w2 = read("Field_0/Dense_1/kernel")
        .into_dimensionality()
        .unwrap();
    let (want, (gw1, gb1, gw2)) = value_and_grad!(residual_by_hand)(&w1, &b1, &w2, &x);
    assert_close("loss", &scalar(loss), &scalar(want), 1e-12);
    let got = |p: &str| grads.read::<ndarray::ArrayD<f64>>("params", p).unwrap();
    assert_close("w1", &got("Field_0/Dense_0/kernel"), &gw1.into_dyn(), 1e-10);
    assert_close("b1", &got("Field_0/Dense_0/bias"), &gb1.into_dyn(), 1e-10);
    assert_close("w2", &got("Field_0/Dense_1/kernel"), &gw2.into_dyn(), 1e-10);
}

/// Second order through `value_and_grad!`: both its value and its gradient feed
/// the loss.
struct ValueAndPenalty;

#[differentiable]
impl ValueAndPenalty {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> f64 {
        let (v, (gx,)) = value_and_grad!(cx, |mdl, cx, x| mdl.call(cx, x), LearnScaleSq, x);
        v + (&gx * &gx).sum()
    }
}

#[test]
fn second_order_through_value_and_grad() {
    // loss = p |x|^2 + |2 p x|^2, so d loss / dp = |x|^2 + 8 p |x|^2 = 5 + 80 at p = 2.
    let x = ndarray::arr1(&[0.0, 1.0, 2.0]);
    let vars = Variables::new()
        .with("params", "LearnScaleSq_0/scale", 2.0)
        .unwrap();
    let (value, grads) =
        value_and_grad!(|v: &Variables| ValueAndPenalty.apply(v, &x).unwrap())(&vars);
    assert_eq!(value, 10.0 + 80.0);
    assert_eq!(
        grads.read::<f64>("params", "LearnScaleSq_0/scale"),
        Ok(85.0)
    );
}

/// Second order through `grad!` and `value_and_grad!` with `has_aux`: the aux (the
/// scale itself) feeds the loss too.
struct FooAuxOnly;

#[differentiable]
impl FooAuxOnly {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>, y: &Array1<f64>) -> f64 {
        let ((gx, _gy), aux) = grad!(
            cx,
            |mdl, cx, x, y| mdl.call(cx, x, y),
            LearnScaleAux,
            x,
            y,
            has_aux
        );
        let ((v, aux2), (_gx2, gy2)) = value_and_grad!(
            cx,
            |mdl, cx, x, y| mdl.call(cx, x, y),
            LearnScaleAux,
            x,
            y,
            has_aux
        );
        gx.sum() + aux + v * aux2 + gy2.sum()
    }
}

#[test]
fn second_order_through_has_aux() {
    // With scales p (LearnScaleAux_0) and q (LearnScaleAux_1):
    // loss = p sum(y) + p + (q x.y) q + q sum(x), so
    // d/dp = sum(y) + 1 = 8 and d/dq = 2 q x.y + sum(x) = 2 (-0.5) 11 + 3 = -8.
    let (x, y) = (ndarray::arr1(&[1.0, 2.0]), ndarray::arr1(&[3.0, 4.0]));
    let vars = Variables::new()
        .with("params", "LearnScaleAux_0/scale", 2.0)
        .and_then(|v| v.with("params", "LearnScaleAux_1/scale", -0.5))
        .unwrap();
    let (loss, grads) =
        value_and_grad!(|v: &Variables| FooAuxOnly.apply(v, &x, &y).unwrap())(&vars);
    assert_eq!(loss, 14.0 + 2.0 + (-5.5) * -0.5 - 1.5);
    assert_eq!(
        grads.read::<f64>("params", "LearnScaleAux_0/scale"),
        Ok(8.0)
    );
    assert_eq!(
        grads.read::<f64>("params", "LearnScaleAux_1/scale"),
        Ok(-8.0)
    );
}

/// The value of a lifted `vjp!` in the loss: differentiated through the child (its
/// reverse mode, run again).
struct VjpValue;

#[differentiable]
impl VjpValue {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> f64 {
        let (y, _bwd) = vjp!(cx, |mdl, cx, x| mdl.call(cx, x), LearnScaleSq, x);
        y
    }
}

/// The gradient of a lifted `vjp!`'s pullback in the loss (second order).
struct VjpPullback;

#[differentiable]
impl VjpPullback {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> f64 {
        let (_y, pb) = vjp!(cx, |mdl, cx, x| mdl.call(cx, x), LearnScaleSq, x);
        let (_vars, gx) = pb(1.0);
        (&gx * &gx).sum()
    }
}

#[test]
fn the_value_of_a_lifted_vjp_is_differentiated() {
    // y = p |x|^2: d/dp = |x|^2 = 5, d/dx = 2 p x.
    let x = ndarray::arr1(&[1.0, 2.0]);
    let vars = Variables::new()
        .with("params", "LearnScaleSq_0/scale", 2.0)
        .unwrap();
    let (y, grads) = value_and_grad!(|v: &Variables| VjpValue.apply(v, &x).unwrap())(&vars);
    assert_eq!(y, 10.0);
    assert_eq!(grads.error(), None);
    assert_eq!(grads.read::<f64>("params", "LearnScaleSq_0/scale"), Ok(5.0));
    let gx = grad!(|x: &Array1<f64>| VjpValue.apply(&vars, x).unwrap())(&x);
    assert_eq!(gx, ndarray::arr1(&[4.0, 8.0]));
}

#[test]
fn second_order_through_a_lifted_vjp_pullback() {
    // gx = 2 p x, the loss 4 p^2 |x|^2: d/dp = 8 p |x|^2 = 80, d/dx = 8 p^2 x.
    let x = ndarray::arr1(&[1.0, 2.0]);
    let vars = Variables::new()
        .with("params", "LearnScaleSq_0/scale", 2.0)
        .unwrap();
    let (loss, grads) = value_and_grad!(|v: &Variables| VjpPullback.apply(v, &x).unwrap())(&vars);
    assert_eq!(loss, 80.0);
    assert_eq!(grads.error(), None);
    assert_eq!(
        grads.read::<f64>("params", "LearnScaleSq_0/scale"),
        Ok(80.0)
    );
    let gx = grad!(|x: &Array1<f64>| VjpPullback.apply(&vars, x).unwrap())(&x);
    assert_eq!(gx, ndarray::arr1(&[32.0, 64.0]));
}

/// The pullback of a lifted `vjp!` called in a branch, a block other than the
/// `vjp!`'s. (A pullback is called once, as every pullback adjoint writes: Flax's may
/// be called again.)
struct VjpPullbackInABranch;

#[differentiable]
impl VjpPullbackInABranch {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> f64 {
        let (y, pb) = vjp!(cx, |mdl, cx, x| mdl.call(cx, x), LearnScaleSq, x);
        if y > 0.0 {
            let (_vars, gx) = pb(2.0);
            (&gx * &gx).sum()
        } else {
            y
        }
    }
}

#[test]
fn second_order_through_a_pullback_called_in_a_branch() {
    // y = p |x|^2 > 0, gx = 2 p x 2: the loss 16 p^2 |x|^2 = 320, d/dp = 32 p |x|^2 =
    // 320, d/dx = 32 p^2 x.
    let x = ndarray::arr1(&[1.0, 2.0]);
    let vars = Variables::new()
        .with("params", "LearnScaleSq_0/scale", 2.0)
        .unwrap();
    let (loss, grads) =
        value_and_grad!(|v: &Variables| VjpPullbackInABranch.apply(v, &x).unwrap())(&vars);
    assert_eq!(loss, 320.0);
    assert_eq!(grads.error(), None);
    assert_eq!(
        grads.read::<f64>("params", "LearnScaleSq_0/scale"),
        Ok(320.0)
    );
    let gx = grad!(|x: &Array1<f64>| VjpPullbackInABranch.apply(&vars, x).unwrap())(&x);
    assert_eq!(gx, ndarray::arr1(&[128.0, 256.0]));
}

/// A lifted `grad!` whose closure is more than `mdl.call(cx, x)`: differentiated
/// again through the closure's own forward mode.
struct GradOfScaled;

#[differentiable]
impl GradOfScaled {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> f64 {
        let (gx,) = grad!(cx, |mdl, cx, x| mdl.call(cx, x) * 2.0, LearnScaleSq, x);
        (&gx * &gx).sum()
    }
}

#[test]
fn a_closure_that_scales_the_childs_output_is_differentiated_again() {
    let x = ndarray::arr1(&[1.0, 2.0]);
    let vars = Variables::new()
        .with("params", "LearnScaleSq_0/scale", 2.0)
        .unwrap();
    let (loss, grads) = value_and_grad!(|v: &Variables| GradOfScaled.apply(v, &x).unwrap())(&vars);
    // gx = 4 p x, so the loss is 16 p^2 |x|^2: 32 p |x|^2 in p, 32 p^2 x in x.
    assert_eq!(loss, 320.0);
    assert_eq!(grads.error(), None);
    assert_eq!(
        grads.read::<f64>("params", "LearnScaleSq_0/scale"),
        Ok(320.0)
    );
    let gx = grad!(|x: &Array1<f64>| GradOfScaled.apply(&vars, x).unwrap())(&x);
    assert_eq!(gx, ndarray::arr1(&[128.0, 256.0]));
}

// ----- per_example_grads: vmap! of grad!, per example and summed -----

#[differentiable]
fn per_example_loss(
    w: &Array1<f64>,
    #[no_grad] x: ndarray::ArrayView1<f64>,
    #[no_grad] t: f64,
) -> f64 {
    let e = x.dot(w).tanh() - t;
    e * e
}

#[test]
fn per_example_grads() {
    let case = reference("modules.json", "per_example_grads");
    let w: Array1<f64> = array(&case["inputs"]["w"]).into_dimensionality().unwrap();
    let x: Array2<f64> = array(&case["inputs"]["x"]).into_dimensionality().unwrap();
    let t: Array1<f64> = array(&case["inputs"]["t"]).into_dimensionality().unwrap();
    let per_example = vmap!(grad!(per_example_loss), in_axes = [None, 0, 0])(&w, &x, &t);
    assert_close(
        "per_example",
        &per_example.clone().into_dyn(),
        &array(&case["per_example_w_grad"]),
        RTOL,
    );
    let reduced = per_example.sum_axis(ndarray::Axis(0));
    assert_close(
        "reduced",
        &reduced.into_dyn(),
        &array(&case["reduced_w_grad"]),
        RTOL,
    );
}

#[test]
fn per_example_grads_reduced_over_a_named_axis() {
    let case = reference("modules.json", "per_example_grads");
    let w: Array1<f64> = array(&case["inputs"]["w"]).into_dimensionality().unwrap();
    let x: Array2<f64> = array(&case["inputs"]["x"]).into_dimensionality().unwrap();
    let t: Array1<f64> = array(&case["inputs"]["t"]).into_dimensionality().unwrap();
    // `w` is broadcast: with `reduce_axes` its cotangent is summed over the batch.
    let reduced = vmap!(
        grad!(
            |w: &Array1<f64>, x: ndarray::ArrayView1<f64>, t: f64| per_example_loss(w, x, t),
            wrt = [w],
            reduce_axes = ["batch"]
        ),
        in_axes = [None, 0, 0],
        axis_name = "batch"
    )(&w, &x, &t);
    assert_close(
        "reduced",
        &reduced.into_dyn(),
        &array(&case["reduced_w_grad"]),
        RTOL,
    );
    // `x` is mapped: its cotangents stay per example.
    let (gw, gx) = vmap!(
        grad!(
            |w: &Array1<f64>, x: ndarray::ArrayView1<f64>, t: f64| {
                let e = x.dot(w).tanh() - t;
                e * e
            },
            wrt = [w, x],
            reduce_axes = ["batch"]
        ),
        in_axes = [None, 0, 0],
        axis_name = "batch"
    )(&w, &x, &t);
    assert_close("w", &gw.into_dyn(), &array(&case["reduced_w_grad"]), RTOL);
    assert_eq!(gx.shape(), &[5, 3]);
}

// ----- vmap! inside a module: Flax's nn.vmap, variables broadcast -----

/// One example's loss, with its weights as a parameter.
struct ExampleLoss;

#[differentiable]
impl ExampleLoss {
    fn call(&self, cx: &mut Scope, x: ndarray::ArrayView1<f64>, t: f64) -> f64 {
        let w: ndarray::ArcArray1<f64> = cx.param("w", init::zeros, x.len());
        let e = x.dot(&w).tanh() - t;
        e * e
    }
}

/// The parameter cotangents of every example, stacked along the batch axis.
struct PerExampleGrads;

#[differentiable]
impl PerExampleGrads {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>, t: &Array1<f64>) -> Variables {
        vmap!(
            cx,
            |mdl, cx, x, t| {
                let (_, bwd) = vjp!(cx, |m, cx, x, t| m.call(cx, x, t), mdl, x, t);
                let (g, _, _) = bwd(1.0);
                g
            },
            ExampleLoss,
            x,
            t,
            in_axes = [0, 0],
            axis_name = "batch"
        )
    }
}

/// The same, summed over the batch axis by `reduce_axes`.
struct SummedGrads;

#[differentiable]
impl SummedGrads {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>, t: &Array1<f64>) -> Variables {
        vmap!(
            cx,
            |mdl, cx, x, t| {
                let (_, bwd) = vjp!(
                    cx,
                    |m, cx, x, t| m.call(cx, x, t),
                    mdl,
                    x,
                    t,
                    reduce_axes = ["batch"]
                );
                let (g, _, _) = bwd(1.0);
                g
            },
            ExampleLoss,
            x,
            t,
            in_axes = [0, 0],
            axis_name = "batch"
        )
    }
}

/// `reduce_axes` naming an axis no vmap! binds.
struct Unbound;

#[differentiable]
impl Unbound {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>, t: &Array1<f64>) -> Variables {
        vmap!(
            cx,
            |mdl, cx, x, t| {
                let (_, bwd) = vjp!(
                    cx,
                    |m, cx, x, t| m.call(cx, x, t),
                    mdl,
                    x,
                    t,
                    reduce_axes = ["time"]
                );
                let (g, _, _) = bwd(1.0);
                g
            },
            ExampleLoss,
            x,
            t,
            in_axes = [0, 0],
            axis_name = "batch"
        )
    }
}

/// Per-example losses times a broadcast scale.
struct ScaledLosses;

#[differentiable]
impl ScaledLosses {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>, t: &Array1<f64>, s: f64) -> Array1<f64> {
        vmap!(
            cx,
            |mdl, cx, x, t, s| mdl.call(cx, x, t) * s,
            ExampleLoss,
            x,
            t,
            s,
            in_axes = [0, 0, None]
        )
    }
}

#[test]
fn vmap_in_a_module_gives_per_example_or_reduced_variable_cotangents() {
    let case = reference("modules.json", "per_example_grads");
    let w: Array1<f64> = array(&case["inputs"]["w"]).into_dimensionality().unwrap();
    let x: Array2<f64> = array(&case["inputs"]["x"]).into_dimensionality().unwrap();
    let t: Array1<f64> = array(&case["inputs"]["t"]).into_dimensionality().unwrap();
    // The examples share one set of variables.
    let init = PerExampleGrads.init(0, &x, &t).unwrap();
    assert_eq!(
        init.shapes(),
        r#"{"params": {"ExampleLoss_0": {"w": [3]}}}"#
    );

    let vars = Variables::new()
        .with("params", "ExampleLoss_0/w", w)
        .unwrap();
    let per_example = PerExampleGrads.apply(&vars, &x, &t).unwrap();
    assert_eq!(per_example.shapes(), r#"{"params": {"w": [5, 3]}}"#);
    let read = |v: &Variables| v.read::<ndarray::ArrayD<f64>>("params", "w").unwrap();
    assert_close(
        "per_example",
        &read(&per_example),
        &array(&case["per_example_w_grad"]),
        RTOL,
    );
    let summed = SummedGrads.apply(&vars, &x, &t).unwrap();
    assert_close(
        "reduced",
        &read(&summed),
        &array(&case["reduced_w_grad"]),
        RTOL,
    );
    let w: Array1<f64> = vars.read("params", "ExampleLoss_0/w").unwrap();
    let want = (x.dot(&w).tanh() - &t).mapv(|e| 2.0 * e * e);
    let got = ScaledLosses.apply(&vars, &x, &t, 2.0).unwrap();
    assert_close("scaled losses", &got.into_dyn(), &want.into_dyn(), 1e-14);
    assert_eq!(
        Unbound.apply(&vars, &x, &t).unwrap_err(),
        ScopeError::UnboundAxis {
            axis: "time".into(),
            path: "ExampleLoss_0".into()
        }
    );
}

// ----- jvp_params: nn.jvp with a tangent on the params -----

struct BarJ;

#[differentiable]
impl BarJ {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> Array1<f64> {
        let p: f64 = cx.param("test", init::zeros, ());
        let _counter: i32 = cx.variable("state", "counter", || 0);
        x * p
    }
}

struct FooJvp;

#[differentiable]
impl FooJvp {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> Array1<f64> {
        let params_t = no_grad(
            Variables::new()
                .with("params", "test", 1.0)
                .unwrap_or_default(),
        );
        let zeros = no_grad(Array1::zeros(x.len()));
        let (_, out_t) = jvp!(
            cx,
            |mdl, cx, x| mdl.call(cx, x),
            BarJ,
            (x,),
            (zeros,),
            params_t
        );
        out_t
    }
}

#[test]
fn jvp_params() {
    let case = reference("modules.json", "jvp_params");
    let x: Array1<f64> = array(&case["inputs"]["x"]).into_dimensionality().unwrap();
    let vars = FooJvp.init(0, &x).unwrap();
    assert_eq!(vars.to_string(), tree_text(&case["init_variables"]));
    let out = FooJvp.apply(&vars, &x).unwrap();
    assert_close("output", &out.into_dyn(), &array(&case["output"]), RTOL);
}

/// Two Dense layers, for forward mode through submodules.
struct Net;

#[differentiable]
impl Net {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> Array2<f64> {
        let h = Dense::new(4).call(cx, x).tanh();
        Dense::new(2).call(cx, &h)
    }
}

/// Runs `Net` as its child `Net_0`.
struct Wrap;

#[differentiable]
impl Wrap {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> Array2<f64> {
        Net.call(cx, x)
    }
}

/// The JVP of `Net_0` along a tangent of the input and of one kernel.
struct JvpNet;

#[differentiable]
impl JvpNet {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>, dx: &Array2<f64>) -> Array2<f64> {
        let dp = no_grad(
            Variables::new()
                .with("params", "Dense_0/kernel", Array2::<f64>::ones((3, 4)))
                .unwrap_or_default(),
        );
        let (_, dy) = jvp!(cx, |mdl, cx, x| mdl.call(cx, x), Net, (x,), (dx,), dp);
        dy
    }
}

#[test]
fn jvp_is_forward_mode_along_inputs_and_variables() {
    let x = Array2::from_shape_fn((2, 3), |(i, j)| (i as f64 + 0.5 * j as f64).sin());
    let dx = Array2::from_shape_fn((2, 3), |(i, j)| (i as f64 - j as f64) * 0.3);
    let vars = Wrap.init(7, &x).unwrap();
    assert_eq!(JvpNet.init(7, &x, &dx).unwrap(), vars);
    let dy = JvpNet.apply(&vars, &x, &dx).unwrap();
    // Central differences along the same direction.
    let h = 1e-6;
    let moved = |s: f64| {
        let k: Array2<f64> = vars.read("params", "Net_0/Dense_0/kernel").unwrap();
        let mut v = vars.clone();
        v.insert(
            "params",
            "Net_0/Dense_0/kernel",
            adjoint::scope::Stored::into_leaf(k + s),
        )
        .unwrap();
        Wrap.apply(&v, &(&x + &(&dx * s))).unwrap()
    };
    let fd = (moved(h) - moved(-h)) / (2.0 * h);
    assert_close("jvp", &dy.into_dyn(), &fd.into_dyn(), 1e-6);
}

/// A module with a loop: forward mode does not reach it yet.
struct Looping;

#[differentiable]
impl Looping {
    fn call(&self, cx: &mut Scope, x: f64) -> f64 {
        let p: f64 = cx.param("p", init::ones, ());
        let mut s = x;
        for _ in 0..3 {
            s = s * p;
        }
        s
    }
}

struct JvpLooping;

#[differentiable]
impl JvpLooping {
    fn call(&self, cx: &mut Scope, x: f64) -> f64 {
        let none = no_grad(Variables::new());
        let (_, dy) = jvp!(
            cx,
            |mdl, cx, x| mdl.call(cx, x),
            Looping,
            (x,),
            (1.0,),
            none
        );
        dy
    }
}

#[test]
fn jvp_through_a_module_with_a_loop() {
    // d/dx (x p³) = p³, the tangent carried through the loop.
    let vars = Variables::new().with("params", "Looping_0/p", 1.5).unwrap();
    assert_eq!(JvpLooping.apply(&vars, 2.0).unwrap(), 3.375);
}

#[differentiable]
fn plain_square(x: f64) -> f64 {
    x * x
}

struct Calling;

#[differentiable]
impl Calling {
    fn call(&self, cx: &mut Scope, x: f64) -> f64 {
        let p: f64 = cx.param("p", init::ones, ());
        plain_square(x) * p
    }
}

struct JvpCalling;

#[differentiable]
impl JvpCalling {
    fn call(&self, cx: &mut Scope, x: f64) -> f64 {
        let none = no_grad(Variables::new());
        let (_, dy) = jvp!(
            cx,
            |mdl, cx, x| mdl.call(cx, x),
            Calling,
            (x,),
            (1.0,),
            none
        );
        dy
    }
}

#[test]
fn jvp_through_a_module_forward_mode_does_not_reach_is_a_typed_error() {
    let err = ScopeError::ForwardModeUnsupported {
        path: "Calling_0".into(),
    };
    assert_eq!(JvpCalling.init(0, 2.0).unwrap_err(), err);
    let vars = Variables::new().with("params", "Calling_0/p", 1.5).unwrap();
    assert_eq!(JvpCalling.apply(&vars, 2.0).unwrap_err(), err);
    assert_eq!(
        err.to_string(),
        "jvp! through `Calling_0`: forward mode does not cover this module's body (a method call, a destructured call result, or a call of a function while the module's impl is not `#[differentiable(jvp)]`)"
    );
}

// ----- lifted transforms: visible collections and random streams -----

struct Hidden;

#[differentiable]
impl Hidden {
    fn call(&self, cx: &mut Scope, x: f64) -> (f64, f64) {
        grad!(
            cx,
            |mdl, cx, x, y| mdl.call(cx, x, y),
            LearnScale,
            x,
            x,
            variables = ["batch_stats"]
        )
    }
}

#[test]
fn collections_a_lifted_transform_hides_are_not_found_inside() {
    let vars = Variables::new()
        .with("params", "LearnScale_0/scale", 1.5)
        .unwrap();
    let err = Hidden.apply(&vars, 2.0).unwrap_err();
    assert_eq!(
        err,
        ScopeError::CollectionNotFound {
            collection: "params".into(),
            path: "LearnScale_0/scale".into()
        }
    );
}

struct NoisyParent;

#[differentiable]
impl NoisyParent {
    fn call(&self, cx: &mut Scope, x: f64) -> (f64,) {
        grad!(
            cx,
            |mdl, cx, x| mdl.call(cx, x),
            Noisy,
            x,
            rngs = ["params"]
        )
    }
}

#[test]
fn random_streams_a_lifted_transform_does_not_pass_are_unknown_inside() {
    let vars = Variables::new();
    let err = NoisyParent
        .apply_with(&vars, &ApplyOptions::new().rng("dropout", 1), 2.0)
        .unwrap_err();
    assert_eq!(
        err,
        ScopeError::UnknownRngStream {
            stream: "dropout".into(),
            path: "Noisy_0".into()
        }
    );
}

// ----- initializers: Flax's fan conventions, deterministic per seed and path -----

#[test]
fn initializers_follow_flax_fans_and_are_deterministic() {
    use adjoint::init::{Initializer, fans};
    assert_eq!(fans(&[3, 5]), (3.0, 5.0));
    assert_eq!(fans(&[2, 2, 3, 5]), (12.0, 20.0)); // receptive field 2 * 2
    let mut rng = <adjoint::init::Rng as rand::SeedableRng>::seed_from_u64(0);
    let sample =
        |init: &dyn Initializer, rng: &mut adjoint::init::Rng| init.sample(rng, &[400, 300]);
    let var = |a: &ndarray::ArrayD<f64>| a.mapv(|v| v * v).mean().unwrap();
    // Variance scale / fan: 1/400 (lecun), 2/400 (he), 2/700 (glorot), within 5%.
    for (init, want) in [
        (
            &adjoint::init::lecun_normal() as &dyn Initializer,
            1.0 / 400.0,
        ),
        (&adjoint::init::he_normal(), 2.0 / 400.0),
        (&adjoint::init::glorot_uniform(), 2.0 / 700.0),
        (&adjoint::init::he_uniform(), 2.0 / 400.0),
    ] {
        let v = var(&sample(init, &mut rng));
        assert!((v / want - 1.0).abs() < 0.05, "variance {v}, want {want}");
    }
    let t = adjoint::init::truncated_normal(1.0).sample(&mut rng, &[10_000]);
    assert!(t.iter().all(|v| v.abs() <= 2.0));
    let u = adjoint::init::uniform(0.5).sample(&mut rng, &[10_000]);
    assert!(u.iter().all(|v| (0.0..0.5).contains(v)));
    assert_eq!(
        adjoint::init::constant(0.25).sample(&mut rng, &[2]),
        ndarray::arr1(&[0.25, 0.25]).into_dyn()
    );

    // The same seed gives the same parameters; another seed, others.
    let x = Array2::<f64>::ones((2, 3));
    assert_eq!(Mlp.init(3, &x).unwrap(), Mlp.init(3, &x).unwrap());
    assert_ne!(Mlp.init(3, &x).unwrap(), Mlp.init(4, &x).unwrap());
}

struct Sowing;

#[differentiable]
impl Sowing {
    fn call(&self, cx: &mut Scope, x: f64) -> f64 {
        let y = x * 2.0;
        cx.sow("intermediates", "y", y);
        y + 1.0
    }
}

#[test]
fn sow_records_intermediates_when_the_collection_is_mutable() {
    let vars = Variables::new();
    let (_, mutated) = Sowing
        .apply_with(&vars, &ApplyOptions::new().mutable(["intermediates"]), 1.5)
        .unwrap();
    assert_eq!(
        mutated.to_string(),
        r#"{"intermediates": {"y": {"0": 3.0}}}"#
    );
    assert_eq!(Sowing.apply(&vars, 1.5).unwrap(), 4.0);
}

// ----- a parameter read as another rank, an initializer of the wrong shape -----

struct WrongRank;

#[differentiable]
impl WrongRank {
    fn call(&self, cx: &mut Scope, x: f64) -> f64 {
        let w: ndarray::ArcArray2<f64> = cx.param("w", init::zeros, (3,));
        w.sum() * x
    }
}

struct WrongInit;

#[differentiable]
impl WrongInit {
    fn call(&self, cx: &mut Scope, x: f64) -> f64 {
        let bad =
            |_: &mut init::Rng, _: &[usize]| ndarray::ArrayD::<f64>::zeros(ndarray::IxDyn(&[2]));
        let w: ndarray::ArcArray1<f64> = cx.param("w", bad, 3);
        w.sum() * x
    }
}

#[test]
fn parameters_of_another_rank_or_shape_are_typed_errors() {
    let err = WrongRank.init(0, 1.0).unwrap_err();
    assert_eq!(
        err.to_string(),
        "variable `params/w` has shape [3], but the module reads it with rank 2: declare its type with the shape's rank"
    );
    let err = WrongInit.init(0, 1.0).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the initializer of `params/w` returned shape [2], but shape [3] was asked for"
    );
    // A stored leaf read as another rank.
    let vars = Variables::new()
        .with(
            "params",
            "WrongRank_0/w",
            ndarray::arr1(&[1.0, 2.0, 3.0]).into_shared(),
        )
        .unwrap();
    let err = vars
        .read::<ndarray::Array2<f64>>("params", "WrongRank_0/w")
        .unwrap_err();
    assert!(
        matches!(err, ScopeError::DeclaredTypeMismatch { .. }),
        "{err}"
    );
}

/// Statement macros in a module's body run as written (and forward mode, for second
/// order, writes them as expressions).
struct Chatty;

#[differentiable]
impl Chatty {
    fn call(&self, cx: &mut Scope, x: f64) -> f64 {
        println!("x = {x}");
        assert!(x.is_finite(), "x must be finite");
        let p: f64 = cx.param("p", init::constant(3.0), ());
        p * x
    }
}

#[test]
fn statement_macros_in_a_module_body() {
    let vars = Chatty.init(0, 1.0).unwrap();
    assert_eq!(Chatty.apply(&vars, 2.0).unwrap(), 6.0);
    let g = grad!(|v: &Variables| Chatty.apply(v, 2.0).unwrap())(&vars);
    assert_eq!(g.to_string(), r#"{"params": {"p": 2.0}}"#);
}

/// A parameter read inside a `mapv` closure gets the sum of its per-element partials.
struct MapScale;

#[differentiable]
impl MapScale {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> f64 {
        let s: f64 = cx.param("s", init::constant(0.5), ());
        x.mapv(|v| (v * s).sin()).sum()
    }
}

#[test]
fn a_parameter_inside_mapv() {
    let x = ndarray::array![1.0, 2.0];
    let vars = MapScale.init(0, &x).unwrap();
    let g = grad!(|v: &Variables| MapScale.apply(v, &x).unwrap())(&vars);
    let want = 1.0 * (0.5f64).cos() + 2.0 * (1.0f64).cos();
    let got: f64 = g.read("params", "s").unwrap();
    assert!((got - want).abs() < 1e-14, "{got} vs {want}");
}

/// Second order through a child whose forward mode does not cover its body (a call
/// of a function while its impl is not `(jvp)`): the parameters' gradients report
/// it, the input's is NaN, never a silent zero.
struct SlopeOfCalling;

#[differentiable]
impl SlopeOfCalling {
    fn call(&self, cx: &mut Scope, x: f64) -> f64 {
        let (g,) = grad!(cx, |mdl, cx, x| mdl.call(cx, x), Calling, x);
        g * g
    }
}

#[test]
fn second_order_through_a_child_forward_mode_does_not_cover_is_never_silent() {
    let vars = Variables::new().with("params", "Calling_0/p", 1.5).unwrap();
    let (_, grads) = value_and_grad!(|v: &Variables| SlopeOfCalling.apply(v, 2.0).unwrap())(&vars);
    assert_eq!(
        grads.error(),
        Some(ScopeError::SecondOrderUnsupported {
            path: "Calling_0".into()
        })
    );
    let gx = grad!(|x: f64| SlopeOfCalling.apply(&vars, x).unwrap())(2.0);
    assert!(gx.is_nan(), "{gx}");
}

// ----- a gradient holds every parameter, as JAX's does -----

struct ReadsUnused;

#[differentiable]
impl ReadsUnused {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> f64 {
        let w: Array1<f64> = cx.param("w", init::ones, 3);
        let _unused: Array1<f64> = cx.param("unused", init::ones, 3);
        (&w * x).sum()
    }
}

#[test]
fn a_gradient_holds_the_parameters_the_output_does_not_depend_on() {
    // `jax.grad` of a loss over a parameter tree gives a tree of the same structure:
    // zeros where the output does not depend on a parameter.
    let x = Array1::from_vec(vec![1.0, 2.0, 3.0]);
    let vars = ReadsUnused.init(0, &x).unwrap();
    let (_, g) = value_and_grad!(|v: &Variables| ReadsUnused.apply(v, &x).unwrap())(&vars);
    assert_eq!(g.leaf_count(), 2);
    assert_eq!(
        g.read::<ndarray::ArrayD<f64>>("params", "unused").unwrap(),
        ndarray::ArrayD::<f64>::zeros(ndarray::IxDyn(&[3]))
    );
    assert_eq!(
        g.read::<ndarray::ArrayD<f64>>("params", "w").unwrap(),
        x.clone().into_dyn()
    );
}

// ----- references in parentheses -----

/// `-(&w)` borrows `w`, read again after: the random module programs found the
/// negation of a parameter moving it where its value is a constant (the input
/// gradient, which holds the variables).
struct NegatedBorrow;

#[differentiable]
impl NegatedBorrow {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> f64 {
        let w: Array1<f64> = cx.param("w", init::constant(0.5), 3);
        let s = (-(&w)).mean().unwrap();
        (&w * s + x).tanh().sum()
    }
}

#[test]
fn negation_of_a_borrow_in_parentheses() {
    let x = Array1::from_vec(vec![0.3, -0.5, 0.9]);
    let vars = NegatedBorrow.init(0, &x).unwrap();
    let loss = |v: &Variables| NegatedBorrow.apply(v, &x).unwrap();
    let g = grad!(|v: &Variables| NegatedBorrow.apply(v, &x).unwrap())(&vars);
    let tol = adjoint::check::Tolerance::default();
    adjoint::check::check_grad(loss, &vars, &g, tol).unwrap();
    let gx = grad!(|x: &Array1<f64>| NegatedBorrow.apply(&vars, x).unwrap())(&x);
    let f = |x: &Array1<f64>| NegatedBorrow.apply(&vars, x).unwrap();
    adjoint::check::check_grad(f, &x, &gx, tol).unwrap();
}
