use adjoint::prelude::*;
use ndarray::Array1;

struct Scale;

#[differentiable]
impl Scale {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> f64 {
        let w: f64 = cx.param("w", init::ones, ());
        x.sum() * w
    }
}

#[differentiable(jvp)]
fn f(v: &Variables, x: &Array1<f64>) -> f64 {
    let options = adjoint::scope::ApplyOptions::new();
    Scale.apply_with(v, &options, x).unwrap().0
}

fn main() {}
