//! Flax's training step for a model with state and randomness, written as a Flax
//! user writes it: `(loss, updates), grads = value_and_grad(loss_fn,
//! has_aux=True)(params)`, the model applied with `mutable=['batch_stats']` and
//! `rngs={'dropout': key}`. Two steps of SGD against `reference/train_step.json`
//! (from `gen_train_step.py`, real Flax and optax), and the dropout stream against
//! central differences.

use adjoint::check::{Tolerance, check_grad};
use adjoint::prelude::*;
use adjoint::scope::ApplyOptions;
use adjoint_tests::{array, assert_close, assert_tree_close, reference, scalar, tree_text};
use ndarray::{Array1, Array2, Axis};

const RTOL: f64 = 1e-9;

struct Net {
    /// Dropout's mode in training (the reference's is deterministic).
    dropout: bool,
}

#[differentiable]
impl Net {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>, train: bool) -> Array2<f64> {
        let h = nn::Dense::new(6).call(cx, x);
        let h = nn::BatchNorm::new()
            .use_running_average(!train)
            .momentum(0.9)
            .call(cx, &h);
        let h = relu(&h);
        let h = nn::Dropout::new(0.5)
            .deterministic(!(train && self.dropout))
            .call(cx, &h);
        nn::Dense::new(3).call(cx, &h)
    }
}

/// optax's `softmax_cross_entropy_with_integer_labels(logits, labels).mean()`.
#[differentiable]
fn xent(logits: &Array2<f64>, #[no_grad] labels: &Array1<usize>) -> f64 {
    let lp = log_softmax(logits, Axis(1));
    let mut total = 0.0;
    for i in 0..labels.len() {
        total -= lp[[i, labels[i]]];
    }
    total / labels.len() as f64
}

#[test]
fn flax_training_step_with_batch_stats() {
    let case = reference("train_step.json", "steps");
    let all = reference("train_step.json", "inputs");
    let x: Array2<f64> = array(&all["x"]).into_dimensionality().unwrap();
    let labels: Array1<usize> = array(&all["labels"])
        .mapv(|v| v as usize)
        .into_dimensionality()
        .unwrap();
    let model = Net { dropout: false };
    let init = model.init(0, &x, false).unwrap();
    let want_shapes = reference("train_step.json", "init_variables_shapes");
    assert_eq!(init.shapes(), tree_text(&want_shapes));

    let mut params = adjoint_tests::variables(&serde_json::json!({
        "params": reference("train_step.json", "initial_params")
    }));
    let mut batch_stats = init.only(&["batch_stats"]);
    let opts = ApplyOptions::new()
        .mutable(["batch_stats"])
        .rng("dropout", 1);
    for (t, step) in case.as_array().unwrap().iter().enumerate() {
        // The step, as a Flax user writes it.
        let ((loss, updates), grads) = value_and_grad!(
            |params: &Variables| {
                let vars = params.merge(&batch_stats);
                let (logits, updates) = model.apply_with(&vars, &opts, &x, true).unwrap();
                (xent(&logits, &labels), updates)
            },
            has_aux
        )(&params);
        let what = format!("step {t}");
        assert_close(&what, &scalar(loss), &array(&step["loss"]), RTOL);
        let want = serde_json::json!({ "params": step["grads"] });
        assert_tree_close(&what, &grads, &want, RTOL);
        let want = serde_json::json!({ "batch_stats": step["batch_stats"] });
        assert_tree_close(&what, &updates, &want, RTOL);
        // optax.sgd(0.1).
        params = params.zip_map(&grads, |p, g| p - 0.1 * g).unwrap();
        batch_stats = updates;
    }
    let want = serde_json::json!({ "params": reference("train_step.json", "final_params") });
    assert_tree_close("final params", &params, &want, RTOL);
    let logits = model.apply(&params.merge(&batch_stats), &x, false).unwrap();
    let want = array(&reference("train_step.json", "eval_logits"));
    assert_close("eval logits", &logits.into_dyn(), &want, RTOL);
}

#[test]
fn a_dropout_stream_in_the_training_step() {
    let all = reference("train_step.json", "inputs");
    let x: Array2<f64> = array(&all["x"]).into_dimensionality().unwrap();
    let labels: Array1<usize> = array(&all["labels"])
        .mapv(|v| v as usize)
        .into_dimensionality()
        .unwrap();
    let model = Net { dropout: true };
    let vars = model.init(0, &x, false).unwrap();
    let state = vars.only(&["batch_stats"]);
    let input_grad = |seed: u64| {
        let opts = ApplyOptions::new()
            .mutable(["batch_stats"])
            .rng("dropout", seed);
        let loss = |x: &Array2<f64>| {
            let (logits, _) = model.apply_with(&vars, &opts, x, true).unwrap();
            xent(&logits, &labels)
        };
        let gx = grad!(
            |x: &Array2<f64>| {
                let (logits, _) = model.apply_with(&vars, &opts, x, true).unwrap();
                xent(&logits, &labels)
            },
            wrt = [x]
        )(&x);
        // The mask is the same in the value and in the gradient.
        check_grad(loss, &x, &gx, Tolerance::default()).unwrap();
        gx
    };
    // The same stream gives the same mask; another seed another one.
    assert_eq!(input_grad(3), input_grad(3));
    assert_ne!(input_grad(3), input_grad(4));
    // Without the stream, training dropout is a typed error naming it.
    let err = model
        .apply_with(
            &vars.merge(&state),
            &ApplyOptions::new().mutable(["batch_stats"]),
            &x,
            true,
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "RNG stream `dropout` was not provided (asked for at `Dropout_0`): pass it in `rngs` when applying"
    );
    // Without `batch_stats` mutable, training BatchNorm is a typed error naming it.
    let err = model
        .apply_with(&vars, &ApplyOptions::new().rng("dropout", 3), &x, true)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot write `batch_stats/BatchNorm_0/mean`: collection `batch_stats` is immutable here; list it in `mutable` when applying"
    );
}

/// Flax's `loss_fn(params, batch)`: a tree of variables as a differentiated argument.
#[differentiable]
fn loss_fn(params: &Variables, x: &Array2<f64>, #[no_grad] labels: &Array1<usize>) -> f64 {
    let logits = nn::Dense::new(3).apply(params, x).unwrap();
    xent(&logits, labels)
}

#[differentiable]
fn loss_and_logits(params: &Variables, x: &Array2<f64>) -> (f64, Array2<f64>) {
    let logits = nn::Dense::new(3).apply(params, x).unwrap();
    (logits.sum(), logits)
}

#[test]
fn variables_as_a_differentiated_argument() {
    let all = reference("train_step.json", "inputs");
    let x: Array2<f64> = array(&all["x"]).into_dimensionality().unwrap();
    let labels: Array1<usize> = array(&all["labels"])
        .mapv(|v| v as usize)
        .into_dimensionality()
        .unwrap();
    let params = nn::Dense::new(3).init(0, &x).unwrap();
    // grad!: a tree shaped like params, and the input's cotangent.
    let (gp, gx) = grad!(loss_fn)(&params, &x, &labels);
    assert_eq!(gp.shapes(), params.shapes());
    assert_eq!(gx.shape(), x.shape());
    // Against central differences along every leaf of the tree.
    let kernel: Array2<f64> = params.read("params", "kernel").unwrap();
    let bias: Array1<f64> = params.read("params", "bias").unwrap();
    let as_tree = |k: &Array2<f64>, b: &Array1<f64>| {
        Variables::new()
            .with("params", "kernel", k.to_shared())
            .unwrap()
            .with("params", "bias", b.to_shared())
            .unwrap()
    };
    let want_k: Array2<f64> = gp.read("params", "kernel").unwrap();
    let want_b: Array1<f64> = gp.read("params", "bias").unwrap();
    check_grad(
        |(k, b): &(Array2<f64>, Array1<f64>)| loss_fn(&as_tree(k, b), &x, &labels),
        &(kernel, bias),
        &(want_k, want_b),
        Tolerance::default(),
    )
    .unwrap();
    // value_and_grad!, vjp! and has_aux give the same tree.
    let (v, (gp2, _)) = value_and_grad!(loss_fn)(&params, &x, &labels);
    assert_eq!(v, loss_fn(&params, &x, &labels));
    assert_eq!(gp2, gp);
    let (_, pb) = vjp!(loss_fn)(&params, &x, &labels);
    let (gp3, _, ()) = pb(1.0);
    assert_eq!(gp3, gp);
    let ((_, logits), gp4) =
        value_and_grad!(|p: &Variables| loss_and_logits(p, &x), has_aux)(&params);
    assert_eq!(logits.shape(), &[8, 3]);
    // d sum(x W + b) / db = the batch size for every bias.
    let gb: Array1<f64> = gp4.read("params", "bias").unwrap();
    assert_eq!(gb, Array1::from_elem(3, 8.0));
}
