//! Scalar code: every supported operation and statement form, checked against
//! central differences.

// The bodies are written as a user would (`z = z * x`) to test exactly that.
#![allow(clippy::assign_op_pattern, clippy::redundant_closure)]

use adjoint::check::{Tolerance, check_grad};
use adjoint::prelude::*;

fn check1(f: impl Fn(f64) -> f64, g: impl Fn(f64) -> f64, x: f64) {
    check_grad(|x: &f64| f(*x), &x, &g(x), Tolerance::default())
        .unwrap_or_else(|e| panic!("at x = {x}: {e}"));
}

fn check2(f: impl Fn(f64, f64) -> f64, g: impl Fn(f64, f64) -> (f64, f64), x: f64, y: f64) {
    check_grad(
        |&(x, y): &(f64, f64)| f(x, y),
        &(x, y),
        &g(x, y),
        Tolerance::default(),
    )
    .unwrap_or_else(|e| panic!("at ({x}, {y}): {e}"));
}

macro_rules! unary_cases {
    ($($name:ident: |$x:ident| $body:expr, at $($at:expr),+;)*) => {$(
        #[differentiable]
        fn $name($x: f64) -> f64 {
            $body
        }
    )*

    #[test]
    fn unary_functions_match_finite_differences() {
        $( $( check1($name, grad!($name), $at); )+ )*
    }
    };
}

unary_cases! {
    u_exp: |x| x.exp(), at -1.3, 0.4;
    u_exp_m1: |x| x.exp_m1() * 2.0, at -0.2, 0.9;
    u_ln: |x| x.ln(), at 0.3, 2.5;
    u_ln_1p: |x| x.ln_1p(), at -0.4, 1.5;
    u_log2: |x| x.log2(), at 0.7, 3.0;
    u_log10: |x| x.log10(), at 0.7, 30.0;
    u_sqrt: |x| x.sqrt(), at 0.2, 4.0;
    u_cbrt: |x| x.cbrt(), at -2.0, 0.5;
    u_recip: |x| x.recip(), at -2.0, 0.5;
    u_sin: |x| x.sin(), at -2.0, 0.5;
    u_cos: |x| x.cos(), at -2.0, 0.5;
    u_tan: |x| x.tan(), at -1.0, 0.5;
    u_asin: |x| x.asin(), at -0.6, 0.5;
    u_acos: |x| x.acos(), at -0.6, 0.5;
    u_atan: |x| x.atan(), at -3.0, 0.5;
    u_sinh: |x| x.sinh(), at -1.0, 0.5;
    u_cosh: |x| x.cosh(), at -1.0, 0.5;
    u_tanh: |x| x.tanh(), at -1.0, 0.5;
    u_abs: |x| x.abs() * x, at -1.0, 0.5;
    u_neg: |x| -x * 3.0, at 1.0;
    u_powi: |x| x.powi(3) + x.powi(-2), at -1.5, 0.7;
    u_powf_const: |x| x.powf(2.5), at 0.3, 1.7;
    u_max_const: |x| x.max(0.25) * x, at -1.0, 1.0;
    u_min_const: |x| x.min(0.25) * x, at -1.0, 1.0;
    u_clamp: |x| x.clamp(-0.5, 0.5) * 2.0, at -1.0, 0.1, 1.0;
    u_relu: |x| relu(&x) + sigmoid(&x) + softplus(&x), at -1.2, 0.8;
    u_std_path: |x| f64::sin(x) * f64::max(x, 0.5), at 0.2, 1.4;
    u_literal_left: |x| 1.0 / (2.0 - x) + 3.0 * x, at 0.4;
}

macro_rules! binary_cases {
    ($($name:ident: |$x:ident, $y:ident| $body:expr, at ($a:expr, $b:expr);)*) => {$(
        #[differentiable]
        fn $name($x: f64, $y: f64) -> f64 {
            $body
        }
    )*

    #[test]
    fn binary_functions_match_finite_differences() {
        $( check2($name, grad!($name), $a, $b); )*
    }
    };
}

binary_cases! {
    b_arith: |x, y| (x + y) * (x - y) / (x * y + 3.0), at (0.7, -1.2);
    b_powf: |x, y| x.powf(y), at (1.3, 0.7);
    b_atan2: |x, y| y.atan2(x), at (0.6, -0.9);
    b_hypot: |x, y| x.hypot(y), at (0.6, -0.9);
    b_max: |x, y| x.max(y) * 2.0 + x.min(y), at (0.6, -0.9);
    b_mul_add: |x, y| x.mul_add(y, x * x), at (0.6, -0.9);
    b_refs: |x, y| { let (a, b) = (&x, &y); *a * *b + a * b }, at (0.6, -0.9);
}

#[differentiable]
fn statements(x: f64, y: f64) -> f64 {
    let a = x * y;
    let a = a + x; // shadowing keeps both values for the reverse sweep
    let mut b = a;
    b += y;
    b -= 0.5 * x;
    b *= x;
    b /= 1.0 + y * y;
    let c = {
        let t = b.sin();
        t * t
    };
    let (p, q) = (c, a);
    let pair = (p * 2.0, q);
    pair.0 + pair.1 * b
}

#[test]
fn let_shadowing_compound_assignment_blocks_and_tuples() {
    check2(statements, grad!(statements), 0.7, -0.4);
}

#[differentiable]
fn constants(x: f64, n: usize) -> f64 {
    // Integers, casts from integers and comparisons are constants.
    let k = n as f64;
    let big = x > 1.0;
    let s = if big { 2.0 } else { 3.0 };
    x * k * s + (n * 2) as f64
}

#[test]
fn integers_casts_and_comparisons_are_constants() {
    check1(|x| constants(x, 3), |x| grad!(constants)(x, 3), 0.5);
    check1(|x| constants(x, 3), |x| grad!(constants)(x, 3), 1.5);
}

#[differentiable]
fn casts(x: f64) -> f64 {
    let y = x as f32;
    let z = (y * y) as f64;
    z + x
}

#[test]
fn casts_between_float_types() {
    let g = grad!(casts)(0.3);
    assert!((g - (2.0 * 0.3 + 1.0)).abs() < 1e-6, "{g}");
}

#[differentiable]
fn branches(x: f64, y: f64) -> f64 {
    let mut z = x * y;
    if x > y {
        z = z * x;
    } else if x < 0.0 {
        z = z + y.sin();
    }
    let w = match (x * 10.0) as i64 {
        0..=2 => z.exp(),
        3 | 4 => z * z,
        _ => z,
    };
    w + z
}

#[test]
fn if_else_if_and_match() {
    for (x, y) in [
        (0.1, 0.05),
        (0.35, 0.9),
        (-0.4, 0.2),
        (0.8, 0.1),
        (0.25, 0.9),
    ] {
        check2(branches, grad!(branches), x, y);
    }
}

#[differentiable]
fn early_return(x: f64) -> f64 {
    if x < 0.0 {
        return -x * x;
    }
    let y = x.sqrt();
    if y > 2.0 {
        return y;
    }
    y * x
}

#[test]
fn early_return_from_nested_branches() {
    for x in [-1.0, 0.5, 9.0] {
        check1(early_return, grad!(early_return), x);
    }
}

#[differentiable]
fn loops(x: f64, y: f64) -> f64 {
    let mut acc = 0.0;
    for i in 0..4 {
        acc = acc * x + (i as f64) * y;
        if i == 2 {
            acc = acc.sin();
        }
    }
    let coeffs = [1.0, -2.0, 0.5];
    for &c in coeffs.iter() {
        acc = acc * x + c;
    }
    let mut z = y;
    let mut steps = 0;
    while z.abs() < 10.0 && steps < 20 {
        z = z * 1.5 + x;
        steps += 1;
    }
    let mut k = 0;
    let v = loop {
        k += 1;
        acc = acc * 0.9;
        if k >= 3 {
            break k;
        }
    };
    acc + z + v as f64
}

#[test]
fn for_while_and_loop_with_break() {
    check2(loops, grad!(loops), 0.7, 1.1);
    check2(loops, grad!(loops), -0.3, 2.0);
}

#[differentiable]
fn break_and_continue(x: f64) -> f64 {
    let mut s = x;
    let mut i = 0;
    loop {
        i += 1;
        if i % 2 == 0 {
            continue;
        }
        s = s * x + 1.0;
        if s > 50.0 {
            break;
        }
    }
    s
}

#[test]
fn data_dependent_trip_counts() {
    for x in [1.5, 2.5, 3.1] {
        check1(break_and_continue, grad!(break_and_continue), x);
    }
}

/// An arm that assigns an outer variable and leaves the loop: the assignment
/// belongs to that arm only (it used to leak into the other arm, the rest of the
/// body, which then named a variable it never defined).
#[differentiable]
fn assign_then_break(x: f64, s: f64) -> f64 {
    let mut y = x;
    let mut k = 0;
    let mut r = 0.0;
    loop {
        if k == 4 {
            r = r + y * s;
            break;
        }
        y = y - (y * y - x) / (2.0 * y);
        k += 1;
    }
    r * y
}

#[test]
fn an_arm_that_breaks_keeps_its_assignments() {
    // Four Newton steps give y = sqrt(x) to double precision: r y = s x.
    let (gx, gs) = grad!(assign_then_break)(2.0, 0.7);
    assert!(
        (gx - 0.7).abs() < 1e-9 && (gs - 2.0).abs() < 1e-9,
        "{gx} {gs}"
    );
    check2(assign_then_break, grad!(assign_then_break), 3.0, -0.4);
}

mod helpers {
    use adjoint::prelude::*;

    #[differentiable]
    pub fn square_sin(x: f64) -> f64 {
        let s = x.sin();
        s * s
    }

    #[differentiable]
    pub fn both(x: f64, y: f64) -> (f64, f64) {
        (x * y, x + y)
    }
}

#[differentiable]
fn calls(x: f64, y: f64) -> f64 {
    let (p, s) = helpers::both(x, y);
    helpers::square_sin(p) + s * helpers::square_sin(y)
}

#[test]
fn calls_to_differentiable_functions_in_other_modules() {
    check2(calls, grad!(calls), 0.7, -1.1);
}

#[differentiable]
fn stopped(x: f64) -> f64 {
    x * no_grad(x * x)
}

#[test]
fn no_grad_stops_the_gradient() {
    // d/dx [x * c] with c = x^2 held constant is c.
    assert_eq!(grad!(stopped)(3.0), 9.0);
}

#[differentiable]
#[rustfmt::skip]
fn stopped_trailing_comma(x: f64) -> f64 {
    x * no_grad(x * x,)
}

#[test]
fn no_grad_with_a_trailing_comma_is_its_argument_not_a_tuple() {
    // rustfmt writes `no_grad(\n    long_expr,\n)`; the comma must not make a tuple.
    assert_eq!(grad!(stopped_trailing_comma)(3.0), 9.0);
}

#[differentiable]
fn f32_mix(x: f32, y: f32) -> f32 {
    x * y + x.sin() * y.exp() / (1.0 + x * x)
}

#[test]
fn f32_scalars() {
    let (gx, gy) = grad!(f32_mix)(0.7, -1.3);
    let (gx64, gy64) = grad!(statements_free)(0.7, -1.3);
    assert!((gx as f64 - gx64).abs() < 1e-4 * gx64.abs().max(1.0));
    assert!((gy as f64 - gy64).abs() < 1e-4 * gy64.abs().max(1.0));
}

#[differentiable]
fn statements_free(x: f64, y: f64) -> f64 {
    x * y + x.sin() * y.exp() / (1.0 + x * x)
}

struct Model {
    scale: f64,
}

#[differentiable]
impl Model {
    fn helper(&self, x: f64) -> f64 {
        self.scale * x * x
    }

    fn forward(&self, x: f64, y: f64) -> f64 {
        self.helper(x) + self.helper(y) * x
    }
}

#[test]
fn methods_and_self_calls() {
    let m = Model { scale: 1.5 };
    let (gx, gy) = m.__forward_grad(0.4, -0.8);
    let f = |&(x, y): &(f64, f64)| m.forward(x, y);
    check_grad(f, &(0.4, -0.8), &(gx, gy), Tolerance::default()).unwrap();
}

#[test]
fn closure_forms_wrt_and_has_aux() {
    let g = grad!(|x: f64, y: f64| statements_free(x, y) * 2.0, wrt = [y]);
    let (_, gy) = grad!(statements_free)(0.3, 0.4);
    assert!((g(0.3, 0.4) - 2.0 * gy).abs() < 1e-12);

    let (v, (gx, gy)) = value_and_grad!(|x: f64, y: f64| x * y)(2.0, 5.0);
    assert_eq!((v, gx, gy), (10.0, 5.0, 2.0));

    let (gx, aux) = grad!(|x: f64| (x * x, x + 1.0), has_aux)(3.0);
    assert_eq!((gx, aux), (6.0, 4.0));

    let ((v, aux), gx) = value_and_grad!(|x: f64| (x * x, 7), has_aux)(3.0);
    assert_eq!((v, aux, gx), (9.0, 7, 6.0));

    let (y, pb) = vjp!(|x: f64| (x.sin(), x * 2.0))(0.5);
    assert_eq!(y, (0.5f64.sin(), 1.0));
    let gx = pb((1.0, 10.0));
    assert!((gx - (0.5f64.cos() + 20.0)).abs() < 1e-12);

    let (y, pb) = vjp!(helpers::both)(2.0, 3.0);
    assert_eq!(y, (6.0, 5.0));
    assert_eq!(pb((1.0, 0.0)), (3.0, 2.0));

    // Integer outputs are constants: no cotangent (`()`).
    let ((v, n), gx) = value_and_grad!(|x: f64| counted(x), has_aux)(3.0);
    assert_eq!((v, n, gx), (9.0, 2, 6.0));
    let (y, pb) = vjp!(counted)(3.0);
    assert_eq!((y, pb((1.0, ()))), ((9.0, 2), (6.0,)));
}

#[differentiable]
fn counted(x: f64) -> (f64, usize) {
    (x * x, 2)
}

/// `log(1 + e^x)` with a rule that stays finite where the naive one overflows.
#[custom_vjp(fwd = softplus_fwd, bwd = softplus_bwd)]
fn my_softplus(x: f64) -> f64 {
    (1.0 + x.exp()).ln()
}

fn softplus_fwd(x: f64) -> (f64, f64) {
    (my_softplus(x), x)
}

fn softplus_bwd(x: f64, g: f64) -> (f64,) {
    (g / (1.0 + (-x).exp()),)
}

#[differentiable]
fn uses_custom(x: f64) -> f64 {
    my_softplus(x * 2.0) * 3.0
}

#[test]
fn custom_vjp_rules_are_used_by_callers() {
    let g = grad!(uses_custom)(1000.0);
    assert_eq!(g, 6.0); // the naive derivative would be NaN: inf / inf
    check1(uses_custom, grad!(uses_custom), 0.3);
}

// ----- closures bound with `let` and nested functions: inlined where called -----

#[differentiable]
fn with_local_closure(x: f64, w: f64) -> f64 {
    let scale = 2.0 * w;
    let h = |v: f64| (v * scale).tanh();
    // `scale` is captured as it was: rebinding the name later does not change `h`.
    let scale = 100.0;
    h(x) + h(x * x) * scale
}

#[differentiable]
fn with_nested_fn(x: f64, y: f64) -> f64 {
    fn softplus(v: f64) -> f64 {
        (1.0 + v.exp()).ln()
    }
    fn twice(v: f64) -> f64 {
        softplus(v) + softplus(2.0 * v)
    }
    twice(x * y) - softplus(y)
}

#[test]
fn closures_and_nested_functions_are_inlined() {
    check2(
        with_local_closure,
        |x, w| grad!(with_local_closure)(x, w),
        0.3,
        -0.7,
    );
    check2(with_nested_fn, |x, y| grad!(with_nested_fn)(x, y), 0.4, 1.3);
    let scale = 2.0 * -0.7;
    let want = (0.3f64 * scale).tanh() + (0.09f64 * scale).tanh() * 100.0;
    assert_eq!(with_local_closure(0.3, -0.7), want);
}

// ----- tuples passed, returned and taken apart -----

/// A cell in Flax's shape: `(carry, x) -> (carry, y)`, the carry a tuple parameter
/// read by fields and by a pattern.
#[differentiable]
fn cell(carry: (f64, f64), x: f64) -> ((f64, f64), f64) {
    let (c, h) = carry;
    let c2 = c * x.tanh() + carry.1;
    ((c2, h * x), c2 * carry.0)
}

#[differentiable]
fn two_steps(a: f64, b: f64) -> f64 {
    let ((c, h), y) = cell((a, b), 0.7);
    let ((c2, h2), y2) = cell((c, h * a), y);
    c2 * h2 + y2.sin()
}

#[test]
fn tuples_pass_their_fields_cotangents() {
    for (a, b) in [(1.5, 0.5), (-0.3, 2.0), (0.8, -1.1)] {
        check2(two_steps, grad!(two_steps), a, b);
    }
    // The tuple parameter's cotangent is a tuple.
    let h = 1e-6;
    let f = |c: f64, hh: f64, x: f64| {
        let ((c2, h2), y) = cell((c, hh), x);
        c2 + h2 + y
    };
    let fd = |d: [f64; 3]| {
        (f(0.4 + d[0], -0.2 + d[1], 1.3 + d[2]) - f(0.4 - d[0], -0.2 - d[1], 1.3 - d[2]))
            / (2.0 * h)
    };
    let (_, pb) = vjp!(cell)((0.4, -0.2), 1.3);
    let ((vc, vh), vx) = pb(((1.0, 1.0), 1.0));
    for (got, want) in [
        (vc, fd([h, 0.0, 0.0])),
        (vh, fd([0.0, h, 0.0])),
        (vx, fd([0.0, 0.0, h])),
    ] {
        assert!((got - want).abs() < 1e-7, "{got} vs {want}");
    }
}
