use adjoint::prelude::*;

struct Scale;

#[differentiable]
impl Scale {
    fn call(&self, cx: &mut Scope, x: f64) -> f64 {
        let w: f64 = cx.param("w", init::ones, ());
        x * x * w
    }
}

struct Outer;

// A lifted `jvp!` whose closure holds a lifted `grad!`: forward mode over a
// gradient inside a module is not covered.
#[differentiable]
impl Outer {
    fn call(&self, cx: &mut Scope, x: f64) -> f64 {
        let none = Variables::new();
        let (y, _) = jvp!(
            cx,
            |mdl, cx, x| {
                let (g,) = grad!(cx, |m, cx, x| m.call(cx, x), Scale, x);
                g * mdl.call(cx, x)
            },
            Scale,
            (x,),
            (1.0,),
            none
        );
        y
    }
}

fn main() {}
