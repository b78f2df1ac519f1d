//! `vmap!` as `jax.vmap`: the axis `in_axes` names, empty batches shaped as JAX
//! shapes them, and integer labels mapped or broadcast.

use adjoint::prelude::*;
use ndarray::{Array1, Array2, ArrayView1, array};

#[differentiable]
fn loss(w: &Array1<f64>, #[no_grad] x: ArrayView1<f64>) -> f64 {
    x.dot(w).powi(2)
}

#[test]
fn maps_the_axis_in_axes_names() {
    let w = array![1.0, 2.0];
    // Examples are the columns of `xt`.
    let xt = array![[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]];
    let by_columns = vmap!(grad!(loss), in_axes = [None, 1])(&w, &xt);
    let by_rows = vmap!(grad!(loss), in_axes = [None, 0])(&w, &xt.t());
    assert_eq!(by_columns, array![[2.0, 0.0], [0.0, 4.0], [6.0, 6.0]]);
    assert_eq!(by_columns, by_rows);
}

#[test]
fn an_empty_batch_has_the_shapes_jax_gives() {
    let w = array![1.0, 2.0, 3.0];
    let x = Array2::<f64>::zeros((0, 3));
    // jax.vmap(jax.grad(loss), in_axes=(None, 0))(w, x).shape == (0, 3)
    let per_example = vmap!(grad!(loss), in_axes = [None, 0])(&w, &x);
    assert_eq!(per_example.shape(), &[0, 3]);
    let values = vmap!(loss, in_axes = [None, 0])(&w, &x);
    assert_eq!(values.shape(), &[0]);
    // Summed over the (empty) batch: zeros shaped like `w`.
    let summed = vmap!(
        grad!(
            |w: &Array1<f64>, x: ArrayView1<f64>| loss(w, x),
            wrt = [w],
            reduce_axes = ["batch"]
        ),
        in_axes = [None, 0],
        axis_name = "batch"
    )(&w, &x);
    assert_eq!(summed, Array1::<f64>::zeros(3));
}

#[differentiable]
fn picked(logits: ArrayView1<f64>, #[no_grad] label: usize) -> f64 {
    -log_softmax(&logits, ndarray::Axis(0))[label]
}

#[test]
fn integer_labels_are_mapped_or_broadcast() {
    let logits = array![[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]];
    let labels: Array1<usize> = array![1, 2];
    let losses = vmap!(picked, in_axes = [0, 0])(&logits, &labels);
    for i in 0..2 {
        assert_eq!(losses[i], picked(logits.row(i), labels[i]));
    }
    // The same label for every example.
    let per_example = vmap!(grad!(picked), in_axes = [0, None])(&logits, 2usize);
    assert_eq!(per_example.shape(), &[2, 3]);
    for i in 0..2 {
        assert_eq!(per_example.row(i), grad!(picked)(logits.row(i), 2));
    }
}

struct ExampleLoss;

#[differentiable]
impl ExampleLoss {
    fn call(&self, cx: &mut Scope, x: ArrayView1<f64>) -> f64 {
        let w: ndarray::ArcArray1<f64> = cx.param("w", init::ones, x.len());
        x.dot(&w).powi(2)
    }
}

struct PerExampleGrads;

#[differentiable]
impl PerExampleGrads {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> Variables {
        vmap!(
            cx,
            |mdl, cx, x| {
                let (_, bwd) = vjp!(cx, |m, cx, x| m.call(cx, x), mdl, x);
                let (g, _) = bwd(1.0);
                g
            },
            ExampleLoss,
            x,
            in_axes = [0],
            axis_name = "batch"
        )
    }
}

#[test]
fn module_per_example_gradients_of_an_empty_batch() {
    let vars = PerExampleGrads.init(0, &Array2::zeros((2, 4))).unwrap();
    let grads = PerExampleGrads
        .apply(&vars, &Array2::zeros((3, 4)))
        .unwrap();
    assert_eq!(grads.shapes(), r#"{"params": {"w": [3, 4]}}"#);
    let grads = PerExampleGrads
        .apply(&vars, &Array2::zeros((0, 4)))
        .unwrap();
    assert_eq!(grads.shapes(), r#"{"params": {"w": [0, 4]}}"#);
}
