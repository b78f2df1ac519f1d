//! How modules are named and share parameters, as Flax does it: every case of
//! `reference/module_semantics.json` (from `gen_module_semantics.py`, real Flax), with
//! the tree `init` builds, the output, `loss = sum(sin(output))` and its gradients.

use adjoint::nn::Dense;
use adjoint::prelude::*;
use adjoint_tests::{array, assert_close, assert_tree_close, reference, scalar, tree_text};
use ndarray::{Array2, Array3, Axis, s};

const RTOL: f64 = 1e-9;

/// An LSTM-style cell written with inline Dense layers.
struct Cell {
    features: usize,
}

#[differentiable]
impl Cell {
    fn call(
        &self,
        cx: &mut Scope,
        c: &Array2<f64>,
        h: &Array2<f64>,
        x: &Array2<f64>,
    ) -> (Array2<f64>, Array2<f64>) {
        let f = self.features;
        let g = Dense::new(4 * f).call(cx, x) + Dense::new(4 * f).call(cx, h);
        let i = g.slice(s![.., 0..f]);
        let fg = g.slice(s![.., f..2 * f]);
        let o = g.slice(s![.., 2 * f..3 * f]);
        let u = g.slice(s![.., 3 * f..]);
        let c = sigmoid(&fg) * c + sigmoid(&i) * u.tanh();
        let h = sigmoid(&o) * c.tanh();
        (c, h)
    }
}

/// The cell made once and called once per step.
struct ScanByHand;

#[differentiable]
impl ScanByHand {
    fn call(&self, cx: &mut Scope, xs: &Array3<f64>) -> Array2<f64> {
        let cell = Cell { features: 3 };
        let mut c = Array2::zeros((xs.shape()[1], 3));
        let mut h = Array2::zeros((xs.shape()[1], 3));
        for t in 0..xs.shape()[0] {
            let x = xs.index_axis(Axis(0), t).to_owned();
            let (c2, h2) = cell.call(cx, &c, &h, &x);
            c = c2;
            h = h2;
        }
        h
    }
}

/// The same cell held in a field (Flax's setup attribute).
struct ScanField {
    cell: Cell,
}

#[differentiable]
impl ScanField {
    fn call(&self, cx: &mut Scope, xs: &Array3<f64>) -> Array2<f64> {
        let mut c = Array2::zeros((xs.shape()[1], 3));
        let mut h = Array2::zeros((xs.shape()[1], 3));
        for t in 0..xs.shape()[0] {
            let x = xs.index_axis(Axis(0), t).to_owned();
            let (c2, h2) = self.cell.call(cx, &c, &h, &x);
            c = c2;
            h = h2;
        }
        h
    }
}

/// Checks a case: the tree `init` builds, and for the reference's variables the
/// output, the loss and its gradients with respect to the params and the input.
fn check_case<X: Clone>(
    name: &str,
    x: X,
    init: impl Fn(&X) -> Variables,
    apply: impl Fn(&Variables, &X) -> ndarray::ArrayD<f64>,
    loss_and_grads: impl Fn(&Variables, &X) -> (f64, Variables, ndarray::ArrayD<f64>),
) {
    let case = reference("module_semantics.json", name);
    assert_eq!(
        init(&x).shapes(),
        tree_text(&case["init_variables_shapes"]),
        "{name}: init"
    );
    let vars = adjoint_tests::variables(&case["variables"]);
    assert_close(name, &apply(&vars, &x), &array(&case["output"]), RTOL);
    let (loss, params_grad, x_grad) = loss_and_grads(&vars, &x);
    assert_close(name, &scalar(loss), &array(&case["loss"]), RTOL);
    let want_params = serde_json::json!({ "params": case["params_grad"] });
    assert_tree_close(name, &params_grad, &want_params, RTOL);
    assert_close(name, &x_grad, &array(&case["inputs_grad"][0]), RTOL);
}

fn xs(name: &str) -> Array3<f64> {
    let case = reference("module_semantics.json", name);
    array(&case["inputs"][0]).into_dimensionality().unwrap()
}

#[test]
fn a_cell_called_once_per_step_has_one_set_of_parameters() {
    let name = "cell_called_per_step";
    check_case(
        name,
        xs(name),
        |x| ScanByHand.init(0, x).unwrap(),
        |v, x| ScanByHand.apply(v, x).unwrap().into_dyn(),
        |v, x| {
            let (l, (gv, gx)) = value_and_grad!(|v: &Variables, x: &Array3<f64>| {
                ScanByHand.apply(v, x).unwrap().sin().sum()
            })(v, x);
            (l, gv, gx.into_dyn())
        },
    );
    // The input gradient against central differences too.
    let vars = adjoint_tests::variables(&reference("module_semantics.json", name)["variables"]);
    let loss = |x: &Array3<f64>| ScanByHand.apply(&vars, x).unwrap().sin().sum();
    let x = xs(name);
    let gx = grad!(
        |v: &Variables, x: &Array3<f64>| ScanByHand.apply(v, x).unwrap().sin().sum(),
        wrt = [x]
    )(&vars, &x);
    adjoint::check::check_grad(loss, &x, &gx, adjoint::check::Tolerance::default()).unwrap();
    // A longer sequence reads the same parameters.
    let vars = ScanByHand.init(0, &xs(name)).unwrap();
    let longer = Array3::from_elem((30, 2, 4), 0.1);
    assert_eq!(ScanByHand.apply(&vars, &longer).unwrap().shape(), &[2, 3]);
}

#[test]
fn a_cell_in_a_field_called_once_per_step() {
    let name = "cell_in_a_field";
    let model = ScanField {
        cell: Cell { features: 3 },
    };
    check_case(
        name,
        xs(name),
        |x| model.init(0, x).unwrap(),
        |v, x| model.apply(v, x).unwrap().into_dyn(),
        |v, x| {
            let (l, (gv, gx)) = value_and_grad!(|v: &Variables, x: &Array3<f64>| {
                model.apply(v, x).unwrap().sin().sum()
            })(v, x);
            (l, gv, gx.into_dyn())
        },
    );
}

/// A module made inside a loop: a new one, with new parameters, per iteration.
struct NewPerIteration;

#[differentiable]
impl NewPerIteration {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> Array2<f64> {
        let mut h = x.to_owned();
        for _ in 0..3 {
            h = Dense::new(2).call(cx, &h).tanh();
        }
        h
    }
}

#[test]
fn a_module_made_in_a_loop_is_new_per_iteration() {
    let name = "made_per_iteration";
    let case = reference("module_semantics.json", name);
    let x: Array2<f64> = array(&case["inputs"][0]).into_dimensionality().unwrap();
    check_case(
        name,
        x,
        |x| NewPerIteration.init(0, x).unwrap(),
        |v, x| NewPerIteration.apply(v, x).unwrap().into_dyn(),
        |v, x| {
            let (l, (gv, gx)) = value_and_grad!(|v: &Variables, x: &Array2<f64>| {
                NewPerIteration.apply(v, x).unwrap().sin().sum()
            })(v, x);
            (l, gv, gx.into_dyn())
        },
    );
}

/// Two distinct inline instances: `Dense_0` and `Dense_1`. Flax's
/// `nn.Dense(2)(jnp.tanh(nn.Dense(2)(x)))` makes the outer one first (`Dense_0`).
struct Block;

#[differentiable]
impl Block {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> Array2<f64> {
        let outer = Dense::new(2);
        let h = Dense::new(2).call(cx, x).tanh();
        outer.call(cx, &h)
    }
}

/// The block called twice through a field: one set of parameters for both calls.
struct TwiceThroughField {
    block: Block,
}

#[differentiable]
impl TwiceThroughField {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> Array2<f64> {
        let h = self.block.call(cx, x);
        self.block.call(cx, &h)
    }
}

#[test]
fn inline_instances_in_a_block_called_twice() {
    let name = "inline_pair_called_twice";
    let case = reference("module_semantics.json", name);
    let x: Array2<f64> = array(&case["inputs"][0]).into_dimensionality().unwrap();
    let model = TwiceThroughField { block: Block };
    check_case(
        name,
        x,
        |x| model.init(0, x).unwrap(),
        |v, x| model.apply(v, x).unwrap().into_dyn(),
        |v, x| {
            let (l, (gv, gx)) = value_and_grad!(|v: &Variables, x: &Array2<f64>| {
                model.apply(v, x).unwrap().sin().sum()
            })(v, x);
            (l, gv, gx.into_dyn())
        },
    );
}

/// Methods share the module's scope: `encode` continues `call`'s auto names, and
/// `loss` runs `call` in the module's own scope. A module is named where it is made:
/// Flax's `nn.Dense(1)(self.encode(x))` makes the outer Dense first, so it is
/// `Dense_0`, and so is `head` here.
struct Model;

#[differentiable]
impl Model {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> Array2<f64> {
        let head = Dense::new(1);
        let h = self.encode(cx, x);
        head.call(cx, &h)
    }

    fn encode(&self, cx: &mut Scope, x: &Array2<f64>) -> Array2<f64> {
        Dense::new(3).call(cx, x).tanh()
    }

    fn loss(&self, cx: &mut Scope, x: &Array2<f64>) -> f64 {
        let y = self.call(cx, x);
        (&y * &y).sum()
    }
}

#[test]
fn methods_share_their_module_scope() {
    // Flax's `Model().init(key, x, method=Model.loss)`: `loss` run at the root.
    let case = reference("module_semantics.json", "methods_share_scope");
    let x: Array2<f64> = array(&case["inputs"][0]).into_dimensionality().unwrap();
    let mut vars = Variables::new();
    let mut cx = Scope::for_init(&mut vars, 0);
    Model.loss(&mut cx, &x);
    cx.finish().unwrap();
    assert_eq!(vars.shapes(), tree_text(&case["init_variables_shapes"]));
    let mut vars = adjoint_tests::variables(&case["variables"]);
    let mutable = adjoint::scope::Mutable::Only(Default::default());
    let mut cx = Scope::for_apply(&mut vars, mutable, Default::default());
    let loss = Model.loss(&mut cx, &x);
    cx.finish().unwrap();
    assert_close("loss", &scalar(loss), &array(&case["output"]), RTOL);
}

/// A submodule's methods run in the submodule's scope (`Model_0`).
struct UsesModel;

#[differentiable]
impl UsesModel {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> f64 {
        let m = Model;
        m.loss(cx, x) + m.call(cx, x).sum()
    }
}

#[test]
fn a_submodule_method_runs_in_the_submodule_scope() {
    let name = "submodule_methods";
    let case = reference("module_semantics.json", name);
    let x: Array2<f64> = array(&case["inputs"][0]).into_dimensionality().unwrap();
    check_case(
        name,
        x,
        |x| UsesModel.init(0, x).unwrap(),
        |v, x| scalar(UsesModel.apply(v, x).unwrap()),
        |v, x| {
            let (l, (gv, gx)) = value_and_grad!(|v: &Variables, x: &Array2<f64>| {
                UsesModel.apply(v, x).unwrap().sin()
            })(v, x);
            (l, gv, gx.into_dyn())
        },
    );
}

/// A field holding modules (Flax's list attribute): `layers_0`, `layers_1`, whether
/// iterated (`for layer in self.layers.iter()`) or indexed (`self.layers[0]`).
struct ListOfLayers {
    layers: Vec<Dense>,
}

#[differentiable]
impl ListOfLayers {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> Array2<f64> {
        let mut h = x.to_owned();
        for layer in self.layers.iter() {
            h = layer.call(cx, &h).tanh();
        }
        self.layers[0].call(cx, &h)
    }
}

#[test]
fn a_field_of_modules_names_its_elements_as_flax() {
    let name = "list_attribute";
    let case = reference("module_semantics.json", name);
    let x: Array2<f64> = array(&case["inputs"][0]).into_dimensionality().unwrap();
    let m = ListOfLayers {
        layers: vec![Dense::new(3), Dense::new(3)],
    };
    check_case(
        name,
        x,
        |x| m.init(0, x).unwrap(),
        |v, x| m.apply(v, x).unwrap().into_dyn(),
        |v, x| {
            let (l, (gv, gx)) = value_and_grad!(|v: &Variables, x: &Array2<f64>| {
                m.apply(v, x).unwrap().sin().sum()
            })(v, x);
            (l, gv, gx.into_dyn())
        },
    );
}

/// Bound modules in such a field keep the path they were bound at: both elements
/// here are the parent's one `Dense_0`, shared.
struct BoundLayers {
    layers: Vec<Bound<Dense>>,
}

#[differentiable]
impl BoundLayers {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> Array2<f64> {
        let mut h = x.to_owned();
        for layer in self.layers.iter() {
            h = layer.call(cx, &h).tanh();
        }
        h
    }
}

struct SharesBound;

#[differentiable]
impl SharesBound {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> Array2<f64> {
        let d = cx.bind(Dense::new(2));
        let holder = BoundLayers {
            layers: vec![d.clone(), d],
        };
        holder.call(cx, x)
    }
}

#[test]
fn bound_modules_in_a_field_of_modules_keep_their_path() {
    let x = Array2::from_shape_fn((3, 2), |(i, j)| (i + j) as f64 * 0.1);
    let vars = SharesBound.init(0, &x).unwrap();
    assert_eq!(
        vars.shapes(),
        r#"{"params": {"Dense_0": {"bias": [2], "kernel": [2, 2]}}}"#
    );
}

// ----- names in use: one parameter, one variable per collection, or one submodule -----

struct ParamTwice;

#[differentiable]
impl ParamTwice {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> f64 {
        let a: f64 = cx.param("w", init::ones, ());
        let b: f64 = cx.param("w", init::zeros, ());
        (x * a).sum() + b
    }
}

struct VariableTwice;

#[differentiable]
impl VariableTwice {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> f64 {
        let _a: f64 = cx.variable("state", "count", || 0.0);
        let _b: f64 = cx.variable("state", "count", || 1.0);
        x.sum()
    }
}

struct ParamAndVariables;

#[differentiable]
impl ParamAndVariables {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> f64 {
        let _s: f64 = cx.variable("state", "w", || 0.0);
        let _t: f64 = cx.variable("stats", "w", || 0.0);
        let w: f64 = cx.param("w", init::ones, ());
        (x * w).sum()
    }
}

struct ParamNamedLikeAChild;

#[differentiable]
impl ParamNamedLikeAChild {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> f64 {
        let a: f64 = cx.param("Dense_0", init::ones, ());
        Dense::new(1).call(cx, x).sum() * a
    }
}

struct ChildrenNamedAlike;

#[differentiable]
impl ChildrenNamedAlike {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> f64 {
        let first = cx.bind_as("out", Dense::new(2));
        let second = cx.bind_as("out", Dense::new(1));
        let h = first.call(cx, x);
        second.call(cx, &h).sum()
    }
}

/// Flax's reservations (`names_in_use`): `init` builds the same tree where Flax does,
/// and fails naming the path where Flax raises `NameInUseError`.
#[test]
fn a_name_holds_one_parameter_one_variable_per_collection_or_one_submodule() {
    let case = reference("module_semantics.json", "names_in_use");
    let x = adjoint_tests::matrix(&case["x"]);
    let runs: [(&str, Result<Variables, ScopeError>); 5] = [
        ("param_twice", ParamTwice.init(0, &x)),
        ("variable_twice", VariableTwice.init(0, &x)),
        ("param_and_variables", ParamAndVariables.init(0, &x)),
        ("param_named_like_a_child", ParamNamedLikeAChild.init(0, &x)),
        ("children_named_alike", ChildrenNamedAlike.init(0, &x)),
    ];
    let paths = [
        ("param_twice", "w"),
        ("variable_twice", "count"),
        ("param_named_like_a_child", "Dense_0"),
        ("children_named_alike", "out"),
    ];
    for (name, got) in runs {
        let want = &case["programs"][name];
        match got {
            Ok(vars) => assert_eq!(vars.shapes(), tree_text(&want["shapes"]), "{name}"),
            Err(e) => {
                assert_eq!(want["error"], "NameInUseError", "{name}: {e}");
                let path = paths.iter().find(|(n, _)| *n == name).unwrap().1;
                assert_eq!(e, ScopeError::NameInUse { path: path.into() }, "{name}");
            }
        }
    }
}
