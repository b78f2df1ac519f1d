//! The seed example: Flax's `nn.grad` over a child module, in Rust.
//!
//! `Foo` differentiates its child `LearnScale` with respect to the inputs only; the
//! child's parameter is visible but constant (no cotangent is computed for it).
//!
//! Run: `cargo run -p adjoint-examples --example seed`

use adjoint::prelude::*;

struct LearnScale;

#[differentiable]
impl LearnScale {
    fn call(&self, cx: &mut Scope, x: f32, y: f32) -> f32 {
        let p: f32 = cx.param("scale", init::zeros, ());
        p * x * y
    }
}

struct Foo;

#[differentiable]
impl Foo {
    fn call(&self, cx: &mut Scope, x: f32, y: f32) -> (f32, f32) {
        // flax.linen.grad: cotangents for the primals only; the child scope is LearnScale_0.
        grad!(cx, |mdl, cx, x, y| mdl.call(cx, x, y), LearnScale, x, y)
    }
}

fn main() -> Result<(), ScopeError> {
    let vars = Foo.init(0, 2.0, 3.0)?;
    println!("init:  {vars}");

    let vars = Variables::new().with("params", "LearnScale_0/scale", 1.5f32)?;
    let (x_grad, y_grad) = Foo.apply(&vars, 2.0, 3.0)?;
    println!("apply: {vars}");
    println!("x_grad = {x_grad}, y_grad = {y_grad}  (d(p x y)/dx = p y = 4.5, d/dy = p x = 3)");
    Ok(())
}
