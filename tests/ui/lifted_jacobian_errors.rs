use adjoint::prelude::*;
use ndarray::{Array1, ArrayD};

struct Child;

#[differentiable]
impl Child {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> Array1<f64> {
        let w: f64 = cx.param("w", init::ones, ());
        x * w
    }
}

struct NoPrimal;

#[differentiable]
impl NoPrimal {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> ArrayD<f64> {
        jacrev!(cx, |mdl, cx| mdl.call(cx), Child)
    }
}

struct WithOption;

#[differentiable]
impl WithOption {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> ArrayD<f64> {
        jacfwd!(cx, |mdl, cx, x| mdl.call(cx, x), Child, x, has_aux)
    }
}

struct ScaledHessian;

#[differentiable]
impl ScaledHessian {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> ArrayD<f64> {
        hessian!(cx, |mdl, cx, x| mdl.call(cx, x).sum() * 2.0, Child, x)
    }
}

struct HvpWithoutTangent;

#[differentiable]
impl HvpWithoutTangent {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> Array1<f64> {
        hvp!(cx, |mdl, cx, x| mdl.call(cx, x), Child, x)
    }
}

fn main() {}
