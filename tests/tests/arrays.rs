//! Array code: broadcasting, float maths, `mapv`, `dot` in every rank
//! combination, reductions, shapes, reads, `concatenate`/`stack` and the `nn`
//! functions, each checked against central differences.

// The bodies are written as a user would (`z = z * x`) to test exactly that.
#![allow(clippy::assign_op_pattern, clippy::op_ref)]

use adjoint::check::{Tolerance, check_grad};
use adjoint::prelude::*;
use ndarray::{Array, Array1, Array2, Axis, Dimension, array, concatenate, s, stack};

fn pattern<D: Dimension>(shape: D, seed: usize) -> Array<f64, D> {
    let n = shape.size();
    let v: Vec<f64> = (0..n)
        .map(|i| (((i * 7919 + seed * 104729) % 1000) as f64) / 500.0 - 1.0)
        .collect();
    Array::from_shape_vec(shape, v).unwrap()
}

fn tol() -> Tolerance {
    Tolerance {
        step: 1e-6,
        rtol: 1e-6,
        atol: 1e-8,
    }
}

#[differentiable]
fn broadcasting(a: &Array2<f64>, b: &Array1<f64>, c: f64) -> f64 {
    let x = a + b; // (3, 4) + (4,)
    let y = &x * c - b / 2.0; // array-scalar, array-array
    let z = 1.0 - &y / (a * a + 1.0); // scalar-array
    let w = c / (&z * &z + 1.0);
    (&w * &y).sum()
}

#[test]
fn elementwise_with_broadcasting() {
    let (a, b, c) = (
        pattern(ndarray::Ix2(3, 4), 1),
        pattern(ndarray::Ix1(4), 2),
        0.7,
    );
    let g = grad!(broadcasting)(&a, &b, c);
    let f = |(a, b, c): &(Array2<f64>, Array1<f64>, f64)| broadcasting(a, b, *c);
    check_grad(f, &(a, b, c), &g, tol()).unwrap();
}

#[differentiable]
fn handed_over(a: &Array2<f64>, b: &Array1<f64>) -> f64 {
    // Temporaries the primal hands over to the rule that reads them last: a 1-D one
    // broadcast up to a 2-D result, one on the right of a literal, a product's buffer
    // taking a sum and then a `tanh`, a quotient's.
    let up = (b * 2.0) + a;
    let s = 1.0 - (&up * &up);
    let h = (s.dot(&a.t()) + 0.5).tanh();
    (h.exp() / 3.0).sum()
}

#[test]
fn temporaries_handed_over_to_the_next_rule() {
    let (a, b) = (pattern(ndarray::Ix2(3, 4), 3), pattern(ndarray::Ix1(4), 4));
    let (v, g) = value_and_grad!(handed_over)(&a, &b);
    let want = handed_over(&a, &b);
    assert!((v - want).abs() <= 1e-14 * want.abs(), "{v} against {want}");
    let f = |(a, b): &(Array2<f64>, Array1<f64>)| handed_over(a, b);
    check_grad(f, &(a, b), &g, tol()).unwrap();
}

#[differentiable]
fn two_carries(w: &Array2<f64>, u: &Array2<f64>, x: &Array2<f64>) -> f64 {
    // Two carried arrays, each step's new values read by the rest of the step: the
    // reverse sweep takes a step's outputs from the next step's record.
    let mut h = x.dot(u);
    let mut c = Array2::<f64>::zeros((3, 4));
    for _ in 0..4 {
        c = (&c * 0.5 + h.dot(w)).tanh();
        h = (c.dot(u) + &h).tanh() * 0.9;
    }
    (&h * &c).sum()
}

#[test]
fn loops_carrying_arrays() {
    let (w, u, x) = (
        pattern(ndarray::Ix2(4, 4), 21),
        pattern(ndarray::Ix2(4, 4), 22),
        pattern(ndarray::Ix2(3, 4), 23),
    );
    let g = grad!(two_carries)(&w, &u, &x);
    let f = |(w, u, x): &(Array2<f64>, Array2<f64>, Array2<f64>)| two_carries(w, u, x);
    check_grad(f, &(w, u, x), &g, tol()).unwrap();
}

#[differentiable]
fn float_maths(x: &Array1<f64>) -> f64 {
    let p = x.mapv(|v| v * v + 1.0); // positive
    let a = x.exp() + x.sin() * x.cos() + x.tanh() + x.abs() + x.atan();
    let b = p.ln() + p.sqrt() + p.powi(3) + p.powf(1.5) + p.recip() + p.log2() + p.cbrt();
    let c = (x * 0.5).asin()
        + (x * 0.5).acos()
        + x.sinh()
        + x.cosh()
        + x.exp_m1()
        + p.ln_1p()
        + p.log10();
    (a * b + c).sum()
}

#[test]
fn float_maths_methods() {
    let x = pattern(ndarray::Ix1(5), 3);
    let g = grad!(float_maths)(&x);
    check_grad(|x: &Array1<f64>| float_maths(x), &x, &g, tol()).unwrap();
}

#[differentiable]
fn fused_closure(x: &Array1<f64>, k: f64) -> f64 {
    let y = x.mapv(|v| {
        let s = v.sin();
        if v > 0.0 { s * v } else { s.exp() }
    });
    (y * k).sum()
}

#[test]
fn mapv_with_a_differentiable_closure() {
    let x = pattern(ndarray::Ix1(6), 4);
    let (gx, gk) = grad!(fused_closure)(&x, 1.3);
    let f = |(x, k): &(Array1<f64>, f64)| fused_closure(x, *k);
    check_grad(f, &(x, 1.3), &(gx, gk), tol()).unwrap();
}

/// `mapv` of an elementwise method (`f64::ln`) is that method's rule.
#[differentiable]
fn mapped_methods(x: &Array1<f64>) -> f64 {
    (x.mapv(f64::exp).mapv(f64::ln_1p) * x.mapv(f64::tanh)).sum()
}

#[test]
fn mapv_of_an_elementwise_method() {
    let x = pattern(ndarray::Ix1(6), 4);
    check_grad(mapped_methods, &x, &grad!(mapped_methods)(&x), tol()).unwrap();
}

#[differentiable]
fn dots(m: &Array2<f64>, n: &Array2<f64>, u: &Array1<f64>, v: &Array1<f64>) -> f64 {
    let mm = m.dot(n); // (3, 4) . (4, 2)
    let mv = m.dot(v); // (3, 4) . (4,)
    let vm = u.dot(m); // (3,) . (3, 4)
    let vv = v.dot(v);
    mm.sum()
        + (&mv * &mv).sum()
        + vm.dot(v) * vv
        + m.t().dot(u).sum()
        + n.view().reversed_axes().sum()
}

#[test]
fn dot_in_every_rank_combination_and_transpose() {
    let (m, n) = (
        pattern(ndarray::Ix2(3, 4), 5),
        pattern(ndarray::Ix2(4, 2), 6),
    );
    let (u, v) = (pattern(ndarray::Ix1(3), 7), pattern(ndarray::Ix1(4), 8));
    let g = grad!(dots)(&m, &n, &u, &v);
    let f = |(m, n, u, v): &(Array2<f64>, Array2<f64>, Array1<f64>, Array1<f64>)| dots(m, n, u, v);
    check_grad(f, &(m, n, u, v), &g, tol()).unwrap();
}

#[differentiable]
fn reductions_and_shapes(x: &Array2<f64>) -> f64 {
    let rows = x.sum_axis(Axis(1)); // (3,)
    let cols = x.mean_axis(Axis(0)).unwrap(); // (4,)
    let col = cols.insert_axis(Axis(0)); // (1, 4)
    let flat = x.to_shape(12).unwrap();
    let back = flat.into_shape_with_order((4, 3)).unwrap();
    let sq = &back * &back;
    (x * &col).sum() + (&rows * &rows).sum() + x.mean().unwrap() * sq.mean().unwrap()
}

#[test]
fn reductions_reshapes_and_insert_axis() {
    let x = pattern(ndarray::Ix2(3, 4), 9);
    let g = grad!(reductions_and_shapes)(&x);
    check_grad(|x: &Array2<f64>| reductions_and_shapes(x), &x, &g, tol()).unwrap();
}

#[differentiable]
fn reads(x: &Array2<f64>, v: &Array1<f64>) -> f64 {
    let block = x.slice(s![1.., ..2]); // (2, 2)
    let r = x.row(0);
    let c = x.column(2);
    let plane = x.index_axis(Axis(0), 2);
    let mut total = 0.0;
    for i in 0..v.len() {
        total = total + v[i] * x[[i % 3, i]];
    }
    (&block * &block).sum() + r.dot(v) + c.sum() * plane.sum() + total
}

#[test]
fn slices_rows_columns_and_element_reads() {
    let (x, v) = (
        pattern(ndarray::Ix2(3, 4), 10),
        pattern(ndarray::Ix1(4), 11),
    );
    let g = grad!(reads)(&x, &v);
    let f = |(x, v): &(Array2<f64>, Array1<f64>)| reads(x, v);
    check_grad(f, &(x, v), &g, tol()).unwrap();
}

/// Loops over ranges run their reverse sweep by walking the range backwards: nested,
/// inclusive, with `continue`, with index arithmetic on both loops' variables. A loop
/// that may `break` keeps its iterations on a stack instead.
#[differentiable]
fn ranges(x: &Array1<f64>) -> f64 {
    let n = x.len();
    let mut s = 0.0;
    for i in 0..n - 1 {
        for j in (i + 1)..=(n - 1) {
            if j == i + 2 {
                continue;
            }
            s = s + x[i] * x[j] * (j - i) as f64;
        }
        let t = x[i + 1] - x[2 * i / 2];
        s += t * t;
    }
    let mut acc = 0.0;
    for k in 0..n {
        acc = acc + x[k].sin();
        if acc > 1.5 {
            break;
        }
    }
    s + acc
}

#[test]
fn range_loops_walked_backwards() {
    let x = pattern(ndarray::Ix1(6), 12);
    let g = grad!(ranges)(&x);
    check_grad(|x: &Array1<f64>| ranges(x), &x, &g, tol()).unwrap();
    let big = x.mapv(|v| v + 1.0);
    let g = grad!(ranges)(&big);
    check_grad(|x: &Array1<f64>| ranges(x), &big, &g, tol()).unwrap();
}

#[differentiable]
fn joins(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    let c = concatenate(Axis(0), &[a.view(), b.view()]).unwrap(); // (5, 3)
    let d = stack(Axis(1), &[a.view(), a.view()]).unwrap(); // (2, 2, 3)
    let ones = Array2::<f64>::ones((5, 3));
    let fill = Array2::from_elem((5, 3), 0.5);
    ((&c * &c) * &ones + &fill * &c).sum() + d.sum_axis(Axis(1)).sum() * 0.5
}

#[test]
fn concatenate_stack_and_constant_arrays() {
    let (a, b) = (
        pattern(ndarray::Ix2(2, 3), 12),
        pattern(ndarray::Ix2(3, 3), 13),
    );
    let g = grad!(joins)(&a, &b);
    let f = |(a, b): &(Array2<f64>, Array2<f64>)| joins(a, b);
    check_grad(f, &(a, b), &g, tol()).unwrap();
}

#[differentiable]
fn nn_functions(x: &Array2<f64>, w: &Array2<f64>) -> f64 {
    let h = x.dot(w);
    let p = softmax(&h, Axis(1));
    let lp = log_softmax(&h, Axis(0));
    let l = logsumexp(&h, Axis(1));
    let act = relu(&h) + sigmoid(&h) * softplus(&h);
    (&p * &lp).sum() + l.sum() + (act * &p).sum()
}

#[test]
fn softmax_log_softmax_logsumexp_and_activations() {
    let (x, w) = (
        pattern(ndarray::Ix2(3, 4), 14),
        pattern(ndarray::Ix2(4, 5), 15),
    );
    let g = grad!(nn_functions)(&x, &w);
    let f = |(x, w): &(Array2<f64>, Array2<f64>)| nn_functions(x, w);
    check_grad(f, &(x, w), &g, tol()).unwrap();
}

#[differentiable]
fn owned_and_views(x: Array1<f64>, y: ndarray::ArrayView1<f64>) -> f64 {
    let z = x.clone() * 2.0;
    let v = z.view();
    (&v * &y).sum() + x.to_owned().sum()
}

#[test]
fn owned_arguments_and_views() {
    let (x, y) = (pattern(ndarray::Ix1(3), 16), pattern(ndarray::Ix1(3), 17));
    let (gx, gy) = grad!(owned_and_views)(x.clone(), y.view());
    assert_eq!(gx, &y * 2.0 + 1.0);
    assert_eq!(gy, &x * 2.0);
}

#[differentiable]
fn mlp(w1: &Array2<f32>, w2: &Array2<f32>, x: &Array2<f32>) -> f32 {
    let h = relu(&x.dot(w1));
    let y = h.dot(w2).tanh();
    (&y * &y).mean().unwrap()
}

#[test]
fn f32_arrays_agree_with_f64() {
    let (w1, w2, x) = (
        pattern(ndarray::Ix2(3, 4), 18),
        pattern(ndarray::Ix2(4, 2), 19),
        pattern(ndarray::Ix2(5, 3), 20),
    );
    let (g1, g2, _) = grad!(mlp)(
        &w1.mapv(|v| v as f32),
        &w2.mapv(|v| v as f32),
        &x.mapv(|v| v as f32),
    );
    let f64_version = |(w1, w2): &(Array2<f64>, Array2<f64>)| {
        let h = x.dot(w1).mapv(|v| v.max(0.0));
        let y = h.dot(w2).tanh();
        (&y * &y).mean().unwrap()
    };
    let g = (g1.mapv(|v| v as f64), g2.mapv(|v| v as f64));
    check_grad(
        f64_version,
        &(w1, w2),
        &g,
        Tolerance {
            step: 1e-6,
            rtol: 1e-4,
            atol: 1e-5,
        },
    )
    .unwrap();
}

#[test]
fn vjp_of_a_closure_taking_a_reference() {
    let x = array![1.0, 2.0];
    let (y, pb) = vjp!(|x: &Array1<f64>| x.mapv(|v| v.sin()) * 2.0)(&x);
    assert_eq!(y, x.mapv(f64::sin) * 2.0);
    assert_eq!(pb(array![1.0, 1.0]), x.mapv(f64::cos) * 2.0);
}

#[test]
fn vjp_of_a_vector_function() {
    let (y, pb) = vjp!(|x: Array1<f64>| x.mapv(|v| v * v) * 3.0)(array![1.0, 2.0]);
    assert_eq!(y, array![3.0, 12.0]);
    assert_eq!(pb(array![1.0, 0.5]), array![6.0, 6.0]);
}

// ----- macros in a body: `array!` of scalars and `dbg!` are differentiated -----

#[differentiable]
fn built_with_array(x: &Array1<f64>, s: f64) -> f64 {
    let row = array![x[0] * s, 2.0, x[1]];
    let square = ndarray::array![[x[0], s], [x[1].sin(), x[0] * x[1]]];
    (&row * &row).sum() + square.dot(&square).sum()
}

#[test]
fn array_macro_of_scalars() {
    let x = array![1.5, -0.5];
    let s = 0.75;
    let (gx, gs) = grad!(built_with_array)(&x, s);
    check_grad(
        |(x, s): &(Array1<f64>, f64)| built_with_array(x, *s),
        &(x.clone(), s),
        &(gx, gs),
        tol(),
    )
    .unwrap();
}

#[differentiable]
fn printed_with_dbg(x: f64) -> f64 {
    x * dbg!(x)
}

#[test]
fn dbg_is_the_identity() {
    // x * x: 6 at 3, not 3 (as if the printed copy were a constant).
    assert_eq!(grad!(printed_with_dbg)(3.0), 6.0);
}

// ----- valid Rust stays valid once differentiated (shrunk from random programs) -----

#[differentiable]
fn owned_then_looped(a: &Array1<f64>) -> f64 {
    let mut acc = a.to_owned();
    for _ in 0..2 {
        acc = &acc * 2.0;
    }
    acc.sum()
}

#[differentiable]
fn owned_in_one_arm(a: &Array1<f64>, #[no_grad] c: bool) -> f64 {
    let t = if c { a.to_owned() } else { a * 2.0 };
    t.sum()
}

#[differentiable]
fn unused_square(x: f64, a: &Array1<f64>) -> f64 {
    let _t = (a * a).sum();
    x
}

#[differentiable]
fn literal_subexpressions(a: &Array1<f64>, x: f64) -> f64 {
    let t = a * (1.0 + 2.0);
    let s = 1.5 + 2.0 - x;
    t[1] + if s.tanh() > 0.0 { s } else { x }
}

#[differentiable]
fn negated_sum(a: &Array1<f64>) -> Array1<f64> {
    -(a + a)
}

#[differentiable]
fn helper_twice(a: &Array1<f64>) -> f64 {
    let t1 = negated_sum(a);
    negated_sum(&t1).sum()
}

#[differentiable]
fn helper_in_a_loop(a: &Array1<f64>) -> f64 {
    let mut t = a.to_owned();
    for _ in 0..3 {
        t = negated_sum(&t);
    }
    t.sum()
}

#[test]
fn valid_rust_compiles_differentiated() {
    let a = array![1.0, 2.0];
    assert_eq!(grad!(owned_then_looped)(&a), array![4.0, 4.0]);
    assert_eq!(grad!(owned_in_one_arm)(&a, true), array![1.0, 1.0]);
    assert_eq!(grad!(owned_in_one_arm)(&a, false), array![2.0, 2.0]);
    assert_eq!(grad!(unused_square)(1.5, &a), (1.0, array![0.0, 0.0]));
    // s = 3.5 - x > 0: d/dx = -1; t[1] = 3 a[1].
    assert_eq!(
        grad!(literal_subexpressions)(&a, 1.0),
        (array![0.0, 3.0], -1.0)
    );
    assert_eq!(grad!(helper_twice)(&a), array![4.0, 4.0]);
    assert_eq!(grad!(helper_in_a_loop)(&a), array![-8.0, -8.0]);
}

#[differentiable]
fn raw_names(r#type: f64) -> f64 {
    let mut s = 0.0;
    for r#in in 0..3 {
        s += r#type * r#in as f64;
    }
    s
}

#[differentiable]
fn unnamed_parameter(_: f64, x: f64) -> f64 {
    x * x
}

#[test]
fn raw_identifiers_and_unnamed_parameters() {
    assert_eq!(grad!(raw_names)(2.0), 3.0);
    assert_eq!(grad!(unnamed_parameter)(1.0, 3.0), (0.0, 6.0));
}

// ----- mapv closures reading differentiated values of the enclosing code -----

#[differentiable]
fn mapv_with_scale(x: &Array1<f64>, scale: f64, shift: f64) -> f64 {
    x.mapv(|v| (v * scale).tanh() + shift * v).sum()
}

#[differentiable]
fn mapv_reads_an_array(x: &Array1<f64>, w: &Array1<f64>) -> f64 {
    let y = x.mapv(|v| v * w[0] + w[1].sin());
    (&y * &y).sum()
}

#[test]
fn mapv_captures_differentiated_values() {
    let x = array![0.3, -1.2, 2.0];
    let (gx, gs, gh) = grad!(mapv_with_scale)(&x, 0.7, -0.4);
    check_grad(
        |(x, s, h): &(Array1<f64>, f64, f64)| mapv_with_scale(x, *s, *h),
        &(x.clone(), 0.7, -0.4),
        &(gx, gs, gh),
        tol(),
    )
    .unwrap();
    let w = array![0.5, 1.5];
    let (gx, gw) = grad!(mapv_reads_an_array)(&x, &w);
    check_grad(
        |(x, w): &(Array1<f64>, Array1<f64>)| mapv_reads_an_array(x, w),
        &(x.clone(), w.clone()),
        &(gx, gw),
        tol(),
    )
    .unwrap();
}

/// Values a pattern binds from constant arguments, which the pullback reads: a mask
/// matched out of an `Option<&Array>`, the pairs of a slice in a loop (the count
/// dereferenced in a cast). The records keep copies, so the owning pullback (a call
/// from another differentiated function) borrows nothing.
#[differentiable]
fn masked(x: &Array1<f64>, #[no_grad] mask: Option<&Array1<f64>>) -> Array1<f64> {
    match mask {
        Some(m) => (x * m).sin(),
        None => x.sin(),
    }
}

#[differentiable]
fn weighted(x: &Array1<f64>, #[no_grad] ws: &[(usize, Array1<f64>)]) -> f64 {
    let mut acc = 0.0;
    for (k, w) in ws.iter() {
        acc = acc + (x * w).sin().sum() * (*k as f64);
    }
    acc
}

#[differentiable]
fn masks_and_rows(
    x: &Array1<f64>,
    #[no_grad] m: &Array1<f64>,
    #[no_grad] ws: &[(usize, Array1<f64>)],
) -> f64 {
    let a = masked(x, Some(m));
    let b = masked(x, None);
    (&a * &b).sum() + weighted(&a, ws)
}

#[test]
fn pattern_bound_constants_the_pullback_reads() {
    let x = pattern(ndarray::Ix1(4), 3);
    let m = array![1.0, 0.0, 2.0, -1.0];
    let ws = vec![
        (2, pattern(ndarray::Ix1(4), 5)),
        (3, pattern(ndarray::Ix1(4), 6)),
    ];
    let f = |x: &Array1<f64>| masks_and_rows(x, &m, &ws);
    check_grad(
        f,
        &x,
        &grad!(|x: &Array1<f64>| masks_and_rows(x, &m, &ws))(&x),
        tol(),
    )
    .unwrap();
}

/// `if let` (a `match` with a wildcard arm), in statement and tail position.
#[differentiable]
fn masked_if_let(x: &Array1<f64>, #[no_grad] mask: Option<&Array1<f64>>) -> f64 {
    let h = if let Some(m) = mask {
        x * m
    } else {
        x.to_owned()
    };
    if let Some(m) = mask {
        (&h * m).sin().sum()
    } else {
        h.sin().sum()
    }
}

#[test]
fn if_let_is_a_match() {
    let x = pattern(ndarray::Ix1(4), 7);
    let m = array![1.0, 0.0, 2.0, -1.0];
    for mask in [Some(&m), None] {
        let g = grad!(masked_if_let)(&x, mask);
        check_grad(|x: &Array1<f64>| masked_if_let(x, mask), &x, &g, tol()).unwrap();
    }
}

/// Iterators over a differentiated array where no derivative is asked of them: an
/// index found among its elements, a test in a condition (the derivative flows
/// through `x[i]` alone).
#[differentiable(jvp)]
fn pick_first_above(x: &Array1<f64>, #[no_grad] level: f64) -> f64 {
    let i = x.iter().position(|v| *v > level).unwrap_or(0);
    if x.iter().any(|v| v.is_nan()) {
        return 0.0;
    }
    x[i] * x[i]
}

#[test]
fn iterators_over_a_differentiated_array_in_indices_and_conditions() {
    let x = ndarray::array![0.3, 0.5, 0.9];
    assert_eq!(
        grad!(pick_first_above)(&x, 0.4).to_vec(),
        vec![0.0, 1.0, 0.0]
    );
    let (_, d) = jvp!(pick_first_above)(&x, 0.4, &ndarray::array![1.0, 2.0, 3.0]);
    assert_eq!(d, 2.0 * 0.5 * 2.0);
    assert_eq!(
        hvp!(pick_first_above)(&x, 0.4, &ndarray::array![1.0, 1.0, 1.0]).to_vec(),
        vec![0.0, 2.0, 0.0]
    );
}
