use adjoint::prelude::*;

#[differentiable]
fn helper(x: f64) -> f64 {
    x * x
}

#[differentiable(jvp)]
fn f(x: f64) -> f64 {
    helper(x) + x
}

struct Field;

#[differentiable]
impl Field {
    fn call(&self, cx: &mut Scope, x: f64) -> f64 {
        let w: f64 = cx.param("w", init::ones, ());
        w * x
    }
}

// A lifted closure's forward mode, in a `(jvp)` impl, calls the function's too.
struct Slope;

#[differentiable(jvp)]
impl Slope {
    fn call(&self, cx: &mut Scope, x: f64) -> f64 {
        let (g,) = grad!(cx, |mdl, cx, x| helper(mdl.call(cx, x)), Field, x);
        g * g
    }
}

fn main() {}
