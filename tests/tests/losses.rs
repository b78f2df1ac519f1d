//! optax's losses and the functions beside them, against real optax and JAX:
//! `reference/layers.json` (`losses`: the mean over a batch, and its gradient with
//! respect to the predictions) and `reference/functions.json` (`gen_functions.py`:
//! logits of rank 3, integer labels counted from the end or out of range, soft
//! labels, Huber's default delta, `standardize`, `one_hot`, `smooth_labels`).

use adjoint::prelude::*;
use adjoint_tests::{array, assert_close, reference, scalar};
use ndarray::{Array2, Array3, ArrayD};
use serde_json::Value as Json;

const RTOL: f64 = 1e-12;
/// functions.json: standardize's gradient cancels to small elements, where the sums'
/// order shows at 1e-10.
const RTOL_FUNCTIONS: f64 = 1e-9;

fn inputs() -> Json {
    reference("layers.json", "losses")["_inputs"].clone()
}

fn array2(v: &Json) -> Array2<f64> {
    array(v).into_dimensionality().unwrap()
}

/// The labels of a case as integers of type `I`.
fn ints<I: TryFrom<i64>>(v: &Json) -> ArrayD<I>
where
    I::Error: std::fmt::Debug,
{
    array(v).mapv(|x| I::try_from(x as i64).unwrap())
}

/// Checks `mean(loss(predictions))` and its gradient against the case.
macro_rules! mean_case {
    ($name:literal, |$p:ident| $loss:expr) => {{
        let case = reference("layers.json", "losses")[$name].clone();
        let p0 = array2(&case["predictions"]);
        let (value, grad) = value_and_grad!(|$p: &Array2<f64>| ($loss).mean().unwrap())(&p0);
        assert_close($name, &scalar(value), &array(&case["value"]), RTOL);
        assert_close($name, &grad.into_dyn(), &array(&case["grad"]), RTOL);
    }};
}

#[test]
fn optax_losses_match_layers_json() {
    let i = inputs();
    let one_hot = array2(&i["labels_one_hot"]);
    let labels: ndarray::Array1<usize> = ints::<usize>(&i["labels_int"])
        .into_dimensionality()
        .unwrap();
    let targets = array2(&i["targets"]);
    let binary = array2(&i["binary_labels"]);
    let delta = i["huber_delta"].as_f64().unwrap();
    let smoothing = i["label_smoothing"].as_f64().unwrap();
    mean_case!("softmax_cross_entropy", |p| losses::softmax_cross_entropy(
        p, &one_hot
    ));
    mean_case!("softmax_cross_entropy_with_integer_labels", |p| {
        losses::softmax_cross_entropy_with_integer_labels(p, &labels)
    });
    mean_case!("sigmoid_binary_cross_entropy", |p| {
        losses::sigmoid_binary_cross_entropy(p, &binary)
    });
    mean_case!("l2_loss", |p| losses::l2_loss(p, &targets));
    mean_case!("squared_error", |p| losses::squared_error(p, &targets));
    mean_case!("huber_loss", |p| losses::huber_loss(p, &targets, delta));
    mean_case!("log_cosh", |p| losses::log_cosh(p, &targets));
    let smoothed = losses::smooth_labels(&one_hot, smoothing);
    mean_case!("smooth_labels_xent", |p| losses::softmax_cross_entropy(
        p, &smoothed
    ));
}

/// A case of `functions.json`: the weighted sum of `f`'s output, its gradient.
fn check_weighted(
    name: &str,
    f: impl Fn(&ArrayD<f64>) -> ArrayD<f64>,
    g: impl Fn(&ArrayD<f64>, &ArrayD<f64>) -> ArrayD<f64>,
) {
    let case = reference("functions.json", name);
    let x = array(&case["x"]);
    let w = array(&case["weights"]);
    let shape: Vec<usize> = case["output_shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    // NaN where the reference has null.
    let nanned = |v: &Json, shape: &[usize]| {
        let vals: Vec<f64> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_f64().unwrap_or(f64::NAN))
            .collect();
        ArrayD::from_shape_vec(shape.to_vec(), vals).unwrap()
    };
    let out = f(&x);
    let want = nanned(&case["output"], &shape);
    for (a, b) in out.iter().zip(&want) {
        assert!(
            (a.is_nan() && b.is_nan())
                || (a - b).abs() <= RTOL_FUNCTIONS * a.abs().max(b.abs()) + 1e-15,
            "{name}: output {a} vs {b}"
        );
    }
    let grad = g(&x, &w);
    assert_close(
        name,
        &grad,
        &nanned(&case["grad"], x.shape()),
        RTOL_FUNCTIONS,
    );
}

#[differentiable]
fn weighted_standardize(x: &ArrayD<f64>, w: &ArrayD<f64>) -> f64 {
    (nn::standardize(x, 1e-5) * w).sum()
}

#[differentiable]
fn weighted_xent_int(x: &Array3<f64>, labels: &Array2<i64>, w: &Array2<f64>) -> f64 {
    (losses::softmax_cross_entropy_with_integer_labels(x, labels) * w).sum()
}

#[differentiable]
fn weighted_xent(x: &Array3<f64>, labels: &Array3<f64>, w: &Array2<f64>) -> f64 {
    (losses::softmax_cross_entropy(x, labels) * w).sum()
}

#[differentiable]
fn weighted_bce(x: &Array2<f64>, labels: &Array2<f64>, w: &Array2<f64>) -> f64 {
    (losses::sigmoid_binary_cross_entropy(x, labels) * w).sum()
}

#[differentiable]
fn weighted_huber(x: &Array2<f64>, targets: &Array2<f64>, w: &Array2<f64>) -> f64 {
    (losses::huber_loss(x, targets, 1.0) * w).sum()
}

#[test]
fn functions_json() {
    for name in ["standardize_2d", "standardize_3d"] {
        check_weighted(
            name,
            |x| nn::standardize(x, 1e-5),
            |x, w| grad!(weighted_standardize)(x, w).0,
        );
    }
    let f3 = |x: &ArrayD<f64>| -> Array3<f64> { x.clone().into_dimensionality().unwrap() };
    let f2 = |x: &ArrayD<f64>| -> Array2<f64> { x.clone().into_dimensionality().unwrap() };
    for name in [
        "xent_int_rank3",
        "xent_int_negative",
        "xent_int_out_of_range",
    ] {
        let labels: Array2<i64> = ints::<i64>(&reference("functions.json", name)["labels"])
            .into_dimensionality()
            .unwrap();
        check_weighted(
            name,
            |x| losses::softmax_cross_entropy_with_integer_labels(&f3(x), &labels).into_dyn(),
            |x, w| {
                grad!(weighted_xent_int)(&f3(x), &labels, &f2(w))
                    .0
                    .into_dyn()
            },
        );
    }
    let soft = f3(&array(&reference("functions.json", "xent_rank3")["labels"]));
    check_weighted(
        "xent_rank3",
        |x| losses::softmax_cross_entropy(&f3(x), &soft).into_dyn(),
        |x, w| grad!(weighted_xent)(&f3(x), &soft, &f2(w)).0.into_dyn(),
    );
    let soft_bin = f2(&array(
        &reference("functions.json", "sigmoid_bce_soft")["labels"],
    ));
    check_weighted(
        "sigmoid_bce_soft",
        |x| losses::sigmoid_binary_cross_entropy(&f2(x), &soft_bin).into_dyn(),
        |x, w| grad!(weighted_bce)(&f2(x), &soft_bin, &f2(w)).0.into_dyn(),
    );
    let targets = f2(&array(
        &reference("functions.json", "huber_default")["targets"],
    ));
    check_weighted(
        "huber_default",
        |x| losses::huber_loss(&f2(x), &targets, 1.0).into_dyn(),
        |x, w| grad!(weighted_huber)(&f2(x), &targets, &f2(w)).0.into_dyn(),
    );

    let case = reference("functions.json", "one_hot");
    let ids: Array2<i64> = ints::<i64>(&case["ids"]).into_dimensionality().unwrap();
    assert_eq!(
        nn::one_hot::<f64, _, _, _>(&ids, 5).into_dyn(),
        array(&case["output"])
    );
    let case = reference("functions.json", "smooth_labels");
    assert_close(
        "smooth_labels",
        &losses::smooth_labels(&array(&case["labels"]), 0.2),
        &array(&case["output"]),
        RTOL,
    );
}
