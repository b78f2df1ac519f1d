//! Flax's layers, case by case against `reference/layers.json` (from
//! `gen_layers.py`, real Flax): the tree `init` builds, then for the reference's
//! variables the output, `loss = sum(sin(output))`, its gradients with respect to
//! the params and the input, and the collections the layer updates.

use adjoint::prelude::*;
use adjoint::scope::ApplyOptions;
use adjoint_tests::{array, assert_close, assert_tree_close, reference, scalar, tree_text};
use ndarray::Array2;
use serde_json::Value as Json;

const RTOL: f64 = 1e-9;

fn case(name: &str) -> Json {
    reference("layers.json", "layers")[name].clone()
}

/// The case's input as a 2-D array.
fn input2(case: &Json) -> Array2<f64> {
    array(&case["inputs"]["x"]).into_dimensionality().unwrap()
}

/// Checks the output, the loss and its gradients of `|v, x| -> (y, updated)` (a
/// layer applied to variables) against the case, and the collections it updated.
macro_rules! check_layer {
    ($name:expr, $case:expr, $x:expr, |$v:ident, $xi:ident| $apply:expr) => {{
        let (name, case, x) = ($name, &$case, &$x);
        let vars = adjoint_tests::variables(&case["variables"]);
        let (y, updated) = {
            let ($v, $xi) = (&vars, x);
            $apply
        };
        assert_close(name, &y.clone().into_dyn(), &array(&case["output"]), RTOL);
        if case["updated"].as_object().is_some_and(|u| !u.is_empty()) {
            assert_tree_close(name, &updated, &case["updated"], RTOL);
        }
        // The gradients with respect to the params, every other collection constant
        // (Flax's `{'params': params, **state}`).
        let params = vars.only(&["params"]);
        let state = vars.only(&["batch_stats"]);
        let (loss, (gp, gx)) = value_and_grad!(|p: &Variables, x: &Array2<f64>| {
            let $v = &p.merge(&state);
            let $xi = x;
            let (y, _) = $apply;
            y.sin().sum()
        })(&params, x);
        assert_close(name, &scalar(loss), &array(&case["loss"]), RTOL);
        let want = serde_json::json!({ "params": case["grads"]["params"] });
        assert_tree_close(name, &gp, &want, RTOL);
        assert_close(name, &gx.into_dyn(), &array(&case["grads"]["x"]), RTOL);
    }};
}

#[test]
fn batch_norm_train() {
    let case = case("batch_norm_train");
    let x = input2(&case);
    let bn = nn::BatchNorm::new()
        .use_running_average(false)
        .momentum(0.9);
    assert_eq!(
        bn.init(0, &x).unwrap().shapes(),
        tree_text(&case["init_variables_shapes"])
    );
    let opts = ApplyOptions::new().mutable(["batch_stats"]);
    check_layer!("batch_norm_train", case, x, |v, x| bn
        .apply_with(v, &opts, x)
        .unwrap());
}

#[test]
fn batch_norm_eval() {
    let case = case("batch_norm_eval");
    let x = input2(&case);
    let bn = nn::BatchNorm::new().use_running_average(true);
    assert_eq!(
        bn.init(0, &x).unwrap().shapes(),
        tree_text(&case["init_variables_shapes"])
    );
    check_layer!("batch_norm_eval", case, x, |v, x| (
        bn.apply(v, x).unwrap(),
        Variables::new()
    ));
}
