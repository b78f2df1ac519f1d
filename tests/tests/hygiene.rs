//! Names a user may write, whatever the expansion calls its own locals: parameters
//! and locals spelled like generated names (`__ct`, `__t0`, `x_bar`, `x_shape`) give
//! the gradient of the function as written.

// The bodies are written as a user would (`z = z * x`) to test exactly that.
#![allow(clippy::assign_op_pattern)]

use adjoint::prelude::*;
use ndarray::{Array1, array};

#[differentiable]
fn named_like_the_cotangent(x: f64, __ct: f64) -> f64 {
    x * __ct
}

#[test]
fn a_parameter_named_like_the_cotangent() {
    assert_eq!(grad!(named_like_the_cotangent)(1.5, 2.5), (2.5, 1.5));
    let (y, pb) = vjp!(named_like_the_cotangent)(1.5, 2.5);
    assert_eq!(y, 3.75);
    assert_eq!(pb(2.0), (5.0, 3.0));
}

#[differentiable]
fn named_like_temporaries(__t0: f64, __ct0: f64, __br0: f64) -> f64 {
    let __pb = __t0 * __ct0;
    let __out = if __br0 > 0.0 { __pb * __br0 } else { __pb };
    let mut __value = __out;
    for _ in 0..2 {
        __value = __value * __t0;
    }
    __value
}

#[test]
fn parameters_and_locals_named_like_temporaries() {
    // f = a^3 b c for c > 0.
    let (a, b, c) = (1.5, 2.0, 0.5);
    let g = grad!(named_like_temporaries)(a, b, c);
    let want = (3.0 * a * a * b * c, a * a * a * c, a * a * a * b);
    assert_eq!(g, want);
}

#[differentiable]
fn named_like_adjoints(x: &Array1<f64>, x_bar: f64, x_shape: f64) -> f64 {
    let y = x * x_bar;
    (&y * x_shape).sum()
}

#[test]
fn parameters_named_like_adjoints_and_shapes() {
    let x = array![1.0, -2.0];
    let (gx, gb, gs) = grad!(named_like_adjoints)(&x, 3.0, 0.5);
    assert_eq!(gx, array![1.5, 1.5]);
    assert_eq!(gb, -0.5);
    assert_eq!(gs, -3.0);
}

// Functions named like the rules only generated code calls (`field`, `widen`,
// `operand`): called unqualified, they are the user's.
#[differentiable]
fn field(x: f64, k: f64) -> f64 {
    x * x * k
}

#[differentiable]
fn widen(x: f64, k: f64) -> f64 {
    x + k * x
}

#[differentiable]
fn operand(x: f64) -> f64 {
    3.0 * x
}

#[differentiable]
fn named_like_rules(x: f64) -> f64 {
    field(x, 2.0) + widen(x, 0.5) + operand(x)
}

#[test]
fn functions_named_like_internal_rules() {
    // 2x^2 + 1.5x + 3x: value and derivative.
    let (y, g) = value_and_grad!(named_like_rules)(1.5);
    assert_eq!(y, 2.0 * 1.5 * 1.5 + 1.5 * 1.5 + 3.0 * 1.5);
    assert_eq!(g, 4.0 * 1.5 + 1.5 + 3.0);
}

#[test]
fn closures_with_names_like_generated_ones() {
    let g = grad!(
        |__ct: f64, __value: f64| __ct * __value * __value,
        wrt = [__ct]
    )(2.0, 3.0);
    assert_eq!(g, 9.0);
    let (v, g) = value_and_grad!(|__g0: f64| __g0.sin())(0.5);
    assert_eq!((v, g), (0.5f64.sin(), 0.5f64.cos()));
}

struct Scale;

#[differentiable]
impl Scale {
    fn call(&self, cx: &mut Scope, seed: f64, variables: f64, options: f64) -> f64 {
        let p: f64 = cx.param("p", init::constant(2.0), ());
        p * seed * variables * options
    }
}

#[test]
fn module_inputs_named_like_generated_parameters() {
    let vars = Scale.init(0, 1.0, 1.0, 1.0).unwrap();
    assert_eq!(Scale.apply(&vars, 1.0, 2.0, 3.0).unwrap(), 12.0);
}

#[differentiable]
fn weighted(__a0: &Array1<f64>, #[no_grad] __g0: ndarray::ArrayView1<f64>) -> f64 {
    (__a0 * &__g0).sum()
}

#[test]
fn vmap_of_a_function_with_names_like_generated_ones() {
    let w = array![1.0, 2.0];
    let x = ndarray::array![[1.0, 0.0], [0.5, 3.0]];
    let per_example = vmap!(grad!(weighted), in_axes = [None, 0])(&w, &x);
    assert_eq!(per_example, x);
}

struct Outer;

#[differentiable]
impl Outer {
    fn call(&self, cx: &mut Scope, __primal0: f64) -> f64 {
        let (__g0,) = grad!(
            cx,
            |mdl, cx, __child| mdl.call(cx, __child),
            Scale2,
            __primal0
        );
        __g0 * __primal0
    }
}

struct Scale2;

#[differentiable]
impl Scale2 {
    fn call(&self, cx: &mut Scope, x: f64) -> f64 {
        let p: f64 = cx.param("p", init::constant(3.0), ());
        p * x * x
    }
}

#[test]
fn lifted_grad_with_names_like_generated_ones() {
    // d(p x^2)/dx = 2 p x, times x: 2 p x^2 = 24 at x = 2, p = 3.
    let vars = Outer.init(0, 2.0).unwrap();
    assert_eq!(Outer.apply(&vars, 2.0).unwrap(), 24.0);
    // Its gradient with respect to x (second order): 4 p x = 24.
    let g = grad!(
        |v: &Variables, x: f64| Outer.apply(v, x).unwrap(),
        wrt = [x]
    )(&vars, 2.0);
    assert_eq!(g, 24.0);
}
