//! Training a Flax-style module: a two-layer MLP classifier built from `Dense`
//! layers, its variables from `init`, and gradients shaped like the `params` tree from
//! `value_and_grad!` over `apply`, then plain SGD on the tree.
//!
//! Run: `cargo run --release -p adjoint-examples --example train_mlp`

use adjoint::nn::Dense;
use adjoint::prelude::*;
use adjoint::scope::Leaf;
use ndarray::{Array2, Axis};

struct Mlp {
    hidden: usize,
    classes: usize,
}

#[differentiable]
impl Mlp {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> Array2<f64> {
        let h = relu(&Dense::new(self.hidden).call(cx, x));
        Dense::new(self.classes).call(cx, &h)
    }
}

/// Mean softmax cross-entropy of `logits` against one-hot `labels`.
#[differentiable]
fn xent(logits: &Array2<f64>, #[no_grad] labels: &Array2<f64>) -> f64 {
    -(log_softmax(logits, Axis(1)) * labels).sum() / logits.nrows() as f64
}

/// `params - lr * grads`, leaf by leaf.
fn sgd(params: &Variables, grads: &Variables, lr: f64) -> Result<Variables, ScopeError> {
    let mut out = Variables::new();
    for (path, leaf) in params.iter("params") {
        let g: ndarray::ArrayD<f64> = grads.read("params", path)?;
        let Leaf::F64(p) = leaf else { continue };
        out.insert("params", path, Leaf::F64((p - &(g * lr)).into_shared()))?;
    }
    Ok(out)
}

fn main() -> Result<(), ScopeError> {
    // Three interleaved spirals, 3 x 100 points.
    let n = 100;
    let mut x = Array2::zeros((3 * n, 2));
    let mut labels = Array2::zeros((3 * n, 3));
    for c in 0..3 {
        for i in 0..n {
            let r = i as f64 / n as f64;
            let t = c as f64 * 4.0 + r * 4.0 + ((i * 7919 + c * 31) % 97) as f64 / 97.0 * 0.2;
            x[[c * n + i, 0]] = r * t.sin();
            x[[c * n + i, 1]] = r * t.cos();
            labels[[c * n + i, c]] = 1.0;
        }
    }
    let model = Mlp {
        hidden: 64,
        classes: 3,
    };
    let mut vars = model.init(0, &x)?;
    println!("variables: {}", vars.shapes());

    for step in 0..=2000 {
        let (loss, grads) =
            value_and_grad!(|v: &Variables| xent(&model.apply(v, &x).unwrap(), &labels))(&vars);
        if step % 400 == 0 {
            let logits = model.apply(&vars, &x)?;
            let correct = logits
                .rows()
                .into_iter()
                .zip(labels.rows())
                .filter(|(l, y)| argmax(l) == argmax(y))
                .count();
            println!(
                "step {step:>4}: loss {loss:.4}, accuracy {:.1}%",
                100.0 * correct as f64 / (3 * n) as f64
            );
        }
        vars = sgd(&vars, &grads, 1.0)?;
    }
    Ok(())
}

fn argmax(v: &ndarray::ArrayView1<f64>) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv { (i, x) } else { (bi, bv) }
        })
        .0
}
