use adjoint::prelude::*;
use ndarray::{Array1, ArrayView1};

#[differentiable]
fn loss(w: &Array1<f64>, #[no_grad] x: ArrayView1<f64>) -> f64 {
    x.dot(w).powi(2)
}

struct Inner;

#[differentiable]
impl Inner {
    fn call(&self, cx: &mut Scope, x: ArrayView1<f64>) -> f64 {
        let w: ndarray::ArcArray1<f64> = cx.param("w", init::zeros, x.len());
        x.dot(&w)
    }
}

struct Outer;

#[differentiable]
impl Outer {
    fn call(&self, cx: &mut Scope, x: &ndarray::Array2<f64>) -> Array1<f64> {
        // One argument, two axes.
        vmap!(cx, |mdl, cx, x| mdl.call(cx, x), Inner, x, in_axes = [0, 0])
    }
}

fn main() {
    let w = Array1::zeros(3);
    let x = ndarray::Array2::<f64>::zeros((4, 3));
    // Nothing is mapped.
    let _ = vmap!(grad!(loss), in_axes = [None, None])(&w, &x);
    // An option vmap! does not take.
    let _ = vmap!(grad!(loss), in_axes = [None, 0], axes = 0)(&w, &x);
}
