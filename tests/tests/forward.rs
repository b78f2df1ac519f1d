//! Forward mode and second order: `#[differentiable(jvp)]` writes `__f_jvp` as
//! ordinary Rust that is itself differentiated, so `grad!` of a JVP is a
//! Hessian-vector product (reverse over forward).

use adjoint::check::{Tolerance, check_vjp};
use adjoint::prelude::*;
use adjoint::scope::ApplyOptions;
use ndarray::{Array1, Array2, Axis, array};

/// A transform's value against the function's own: forward and reverse mode compute
/// `tanh`, `exp`, `exp_m1` and `sigmoid` by the runtime's kernels, within a few ulps of
/// libm's, which the function as written calls.
fn assert_value(y: f64, want: f64) {
    assert!(
        (y - want).abs() <= 4.0 * f64::EPSILON * want.abs().max(1.0),
        "value {y}, the function's {want}"
    );
}

#[differentiable(jvp)]
fn energy(x: &Array1<f64>) -> f64 {
    let s = x.sin();
    let e = (&s * &s).sum() + x.dot(x) * 0.5;
    e * e.tanh() + (x / 3.0).exp().sum() + (x.tanh() * sigmoid(x)).sum()
}

#[differentiable(jvp)]
fn scalar(x: f64, y: f64) -> f64 {
    let z = x * y + x.powi(3);
    z.sin() / (1.0 + y * y)
}

#[test]
fn jvp_is_the_directional_derivative() {
    let (x, v) = (array![0.3, -0.7, 1.1], array![1.0, 0.5, -2.0]);
    let (y, dy) = jvp!(energy)(&x, &v);
    assert_eq!(y, energy(&x));
    let h = 1e-6;
    let fd = (energy(&(&x + &(&v * h))) - energy(&(&x - &(&v * h)))) / (2.0 * h);
    assert!(
        (dy - fd).abs() < 1e-7 * fd.abs().max(1.0),
        "jvp {dy}, central difference {fd}"
    );

    let (_, d) = jvp!(scalar)(0.4, -0.9, 1.0, 0.0);
    let (gx, _) = grad!(scalar)(0.4, -0.9);
    assert!(
        (d - gx).abs() < 1e-12,
        "a unit tangent along x gives d/dx: {d} vs {gx}"
    );
}

#[test]
fn grad_of_jvp_is_a_hessian_vector_product() {
    let (x, v) = (array![0.3, -0.7, 1.1], array![1.0, 0.5, -2.0]);
    let hvp = grad!(
        |x: &Array1<f64>, v: &Array1<f64>| {
            let (_, d) = jvp!(energy)(x, v);
            d
        },
        wrt = [x]
    )(&x, &v);
    // H v is the vector-Jacobian product of the gradient with cotangent v (H is
    // symmetric): check it against central differences of the gradient.
    let g = |x: &Array1<f64>| grad!(energy)(x);
    check_vjp(
        g,
        &x,
        &v,
        &hvp,
        Tolerance {
            step: 1e-5,
            rtol: 1e-6,
            atol: 1e-8,
        },
    )
    .unwrap();
}

/// Branches in statement and tail position, an arm that is constant, and a `match`.
#[differentiable(jvp)]
fn piecewise(x: &Array1<f64>, s: f64) -> f64 {
    let mut y = x * s;
    if s > 0.0 {
        y = y.tanh();
    } else {
        y = &y * &y;
    }
    let z = if y.sum() > 0.5 { y.sum() * s } else { 2.0 };
    match x.len() {
        3 => z * z + (x * &y).sum(),
        _ => z,
    }
}

#[test]
fn forward_mode_goes_through_branches() {
    let v = array![1.0, 0.5, -2.0];
    for (x, s) in [
        (array![0.3, 0.7, 1.1], 0.8),
        (array![0.3, -0.7, 1.1], -0.6),
        (array![-0.3, -0.7, 0.1], 0.5),
        (array![0.3, 0.7], 0.8),
    ] {
        let v = v.slice(ndarray::s![..x.len()]).to_owned();
        let (gx, gs) = grad!(piecewise)(&x, s);
        let (y, dy) = jvp!(piecewise)(&x, s, &v, 0.0);
        assert_value(y, piecewise(&x, s));
        let along = gx.dot(&v);
        assert!(
            (dy - along).abs() < 1e-12 * along.abs().max(1.0),
            "{dy} vs {along}"
        );
        let (_, ds) = jvp!(piecewise)(&x, s, &(&v * 0.0), 1.0);
        assert!((ds - gs).abs() < 1e-12 * gs.abs().max(1.0), "{ds} vs {gs}");
        // Reverse over forward through the branches: H v against differences of
        // the gradient.
        let hvp = grad!(
            |x: &Array1<f64>, v: &Array1<f64>| {
                let (_, d) = jvp!(piecewise)(x, s, v, 0.0);
                d
            },
            wrt = [x]
        )(&x, &v);
        let g = |x: &Array1<f64>| grad!(piecewise)(x, s).0;
        let tol = Tolerance {
            step: 1e-6,
            rtol: 1e-6,
            atol: 1e-8,
        };
        check_vjp(g, &x, &v, &hvp, tol).unwrap();
    }
}

/// A `for` loop carrying a scalar, reading elements by a loop index.
#[differentiable(jvp)]
fn rosenbrock(x: &Array1<f64>) -> f64 {
    let mut s = 0.0;
    for i in 0..x.len() - 1 {
        let a = x[i + 1] - x[i] * x[i];
        let b = 1.0 - x[i];
        s += 100.0 * a * a + b * b;
    }
    s
}

/// A `for` loop carrying an array (an RNN's state) from a constant start.
#[differentiable(jvp)]
fn recurrent(w: &Array2<f64>, u: &Array1<f64>, steps: usize) -> f64 {
    let mut h = Array1::<f64>::zeros(u.len());
    for t in 0..steps {
        let drive = u * (t as f64 + 1.0);
        h = (w.dot(&h) + &drive).tanh();
    }
    (&h * &h).sum()
}

/// `loop` with a `break` value inside a branch, and a `while` loop: Newton's
/// square root, then a scaled tail.
#[differentiable(jvp)]
fn newton(x: f64, s: f64) -> f64 {
    let mut y = x;
    let mut k = 0;
    let mut r = 0.0;
    loop {
        if k == 4 {
            r += y * s;
            break;
        }
        y = y - (y * y - x) / (2.0 * y);
        k += 1;
    }
    let mut z = r;
    while z > 1.0 {
        z = z * 0.5 + s * 0.1;
    }
    z * y
}

/// Each loop's JVP against its gradient along the tangent, and reverse over
/// forward (H v) against central differences of the gradient.
#[test]
fn forward_mode_goes_through_loops() {
    let tol = Tolerance {
        step: 1e-6,
        rtol: 1e-6,
        atol: 1e-8,
    };
    let (x, v) = (array![0.3, -0.7, 1.1, 0.4], array![1.0, 0.5, -2.0, 0.25]);
    let (y, dy) = jvp!(rosenbrock)(&x, &v);
    assert_eq!(y, rosenbrock(&x));
    let along = grad!(rosenbrock)(&x).dot(&v);
    assert!((dy - along).abs() < 1e-12 * along.abs(), "{dy} vs {along}");
    let hvp = grad!(
        |x: &Array1<f64>, v: &Array1<f64>| {
            let (_, d) = jvp!(rosenbrock)(x, v);
            d
        },
        wrt = [x]
    )(&x, &v);
    // Rosenbrock's Hessian is known in closed form: check H v exactly.
    let mut h = ndarray::Array2::<f64>::zeros((4, 4));
    for i in 0..3 {
        h[[i, i]] += 1200.0 * x[i] * x[i] - 400.0 * x[i + 1] + 2.0;
        h[[i, i + 1]] -= 400.0 * x[i];
        h[[i + 1, i]] -= 400.0 * x[i];
        h[[i + 1, i + 1]] += 200.0;
    }
    let want = h.dot(&v);
    assert!(
        hvp.iter()
            .zip(&want)
            .all(|(a, b)| (a - b).abs() < 1e-10 * b.abs().max(1.0)),
        "{hvp} vs {want}"
    );

    let w = array![[0.5, -0.3, 0.2], [0.1, 0.4, -0.6], [-0.2, 0.3, 0.1]];
    let u = array![0.2, -0.1, 0.3];
    let dw = array![[1.0, 0.0, -1.0], [0.5, 0.2, 0.0], [0.0, -0.3, 0.7]];
    let du = array![0.4, -1.0, 0.5];
    let (y, dy) = jvp!(recurrent)(&w, &u, 5, &dw, &du);
    assert_eq!(y, recurrent(&w, &u, 5));
    let (gw, gu) = grad!(recurrent)(&w, &u, 5);
    let along = (&gw * &dw).sum() + gu.dot(&du);
    assert!((dy - along).abs() < 1e-12 * along.abs(), "{dy} vs {along}");
    let hvp = grad!(
        |u: &Array1<f64>, du: &Array1<f64>| {
            let (_, d) = jvp!(recurrent)(&w, u, 5, &(&w * 0.0), du);
            d
        },
        wrt = [u]
    )(&u, &du);
    check_vjp(
        |u: &Array1<f64>| grad!(recurrent)(&w, u, 5).1,
        &u,
        &du,
        &hvp,
        tol,
    )
    .unwrap();

    for (x, s) in [(2.0, 0.7), (9.0, 0.3), (0.5, 1.5)] {
        let (y, dy) = jvp!(newton)(x, s, 1.0, -0.5);
        assert_eq!(y, newton(x, s));
        let (gx, gs) = grad!(newton)(x, s);
        let along = gx - 0.5 * gs;
        assert!(
            (dy - along).abs() < 1e-12 * along.abs().max(1.0),
            "{dy} vs {along}"
        );
        // d/dx of the JVP along (1, 0) is the second derivative in x.
        let d2 = grad!(|x: f64| {
            let (_, d) = jvp!(newton)(x, s, 1.0, 0.0);
            d
        })(x);
        let h = 1e-5;
        let fd = (grad!(newton)(x + h, s).0 - grad!(newton)(x - h, s).0) / (2.0 * h);
        assert!((d2 - fd).abs() < 1e-6 * fd.abs().max(1.0), "{d2} vs {fd}");
    }
}

/// A helper with a loop, called twice with an argument that varies and one that
/// does not, and a scalar helper.
#[differentiable(jvp)]
fn stretched(x: &Array1<f64>, k: f64, n: usize) -> Array1<f64> {
    let mut y = x * k;
    for _ in 0..n {
        y = y.tanh() + x;
    }
    y
}

#[differentiable(jvp)]
fn square(s: f64) -> f64 {
    s * s
}

#[differentiable(jvp)]
fn composed(x: &Array1<f64>, k: f64) -> f64 {
    let y = stretched(x, k, 2);
    let z = stretched(&y, 0.5, 1);
    square(z.sum()) + square(k)
}

#[test]
fn forward_mode_goes_through_calls() {
    let (x, v, k, dk) = (array![0.3, -0.7, 1.1], array![1.0, 0.5, -2.0], 1.3, 0.25);
    let (y, dy) = jvp!(composed)(&x, k, &v, dk);
    assert_eq!(y, composed(&x, k));
    let (gx, gk) = grad!(composed)(&x, k);
    let along = gx.dot(&v) + gk * dk;
    assert!((dy - along).abs() < 1e-12 * along.abs(), "{dy} vs {along}");
    // Reverse over forward through the calls: H v against differences of the
    // gradient in x.
    let (hx, _) = hvp!(composed)(&x, k, &v, 0.0);
    let tol = Tolerance {
        step: 1e-6,
        rtol: 1e-6,
        atol: 1e-8,
    };
    check_vjp(|x: &Array1<f64>| grad!(composed)(x, k).0, &x, &v, &hx, tol).unwrap();
}

/// `mapv` closures, one reading a differentiated scalar of the enclosing body.
#[differentiable(jvp)]
fn mapped(x: &Array1<f64>, s: f64) -> f64 {
    let y = x.mapv(|v| (v * s).tanh() + v * v);
    let z = y.mapv(|v| v.sin() * 0.5);
    (&z * &y).sum() + s
}

#[test]
fn forward_mode_goes_through_mapv_closures() {
    let (x, v, s, ds) = (array![0.3, -0.7, 1.1], array![1.0, 0.5, -2.0], 0.8, -0.4);
    let (y, dy) = jvp!(mapped)(&x, s, &v, ds);
    assert_eq!(y, mapped(&x, s));
    let (gx, gs) = grad!(mapped)(&x, s);
    let along = gx.dot(&v) + gs * ds;
    assert!((dy - along).abs() < 1e-12 * along.abs(), "{dy} vs {along}");
    let (hx, _) = hvp!(mapped)(&x, s, &v, 0.0);
    let tol = Tolerance {
        step: 1e-6,
        rtol: 1e-6,
        atol: 1e-8,
    };
    check_vjp(|x: &Array1<f64>| grad!(mapped)(x, s).0, &x, &v, &hx, tol).unwrap();
    // Along s: the HVP's s component against differences of the gradient in s.
    let (_, hs) = hvp!(mapped)(&x, s, &(&v * 0.0), 1.0);
    let h = 1e-6;
    let fd = (grad!(mapped)(&x, s + h).1 - grad!(mapped)(&x, s - h).1) / (2.0 * h);
    assert!((hs - fd).abs() < 1e-6 * fd.abs().max(1.0), "{hs} vs {fd}");
}

/// A tuple output: its tangent is the tuple of tangents (and, having no Jacobian
/// shape, it gets no `jacfwd`).
#[differentiable(jvp)]
fn pair(x: f64) -> (f64, f64) {
    (x * x, x.sin())
}

#[test]
fn forward_mode_of_a_tuple_output() {
    let ((a, b), (da, db)) = jvp!(pair)(0.5, 2.0);
    assert_eq!((a, b), pair(0.5));
    assert_eq!((da, db), (2.0, 2.0 * 0.5f64.cos()));
}

/// A field of a call's tuple result as the output (`f(x).0`): owned, in every mode.
#[differentiable(jvp)]
fn squared_part(x: &Array1<f64>) -> f64 {
    halves(x).0
}

#[differentiable(jvp)]
fn halves(x: &Array1<f64>) -> (f64, Array1<f64>) {
    ((x * x).sum(), x.sin())
}

#[test]
fn a_field_of_a_calls_result_is_an_output() {
    let x = array![1.0, 2.0];
    assert_eq!(grad!(squared_part)(&x), array![2.0, 4.0]);
    assert_eq!(grad!(|x: &Array1<f64>| halves(x).0)(&x), array![2.0, 4.0]);
    let (y, dy) = jvp!(squared_part)(&x, &array![1.0, 0.5]);
    assert_eq!((y, dy), (5.0, 2.0 * 1.0 + 4.0 * 0.5));
    // An array field, through a closure, and second order through it.
    let g = grad!(|x: &Array1<f64>| halves(x).1.sum())(&x);
    assert_eq!(g, x.cos());
    let h = hessian!(squared_part)(&x);
    assert_eq!(h, array![[2.0, 0.0], [0.0, 2.0]].into_dyn());
}

/// `ln(1 + e^x)` with its forward rule: the body's derivative overflows for large
/// `x`, the rule's does not.
#[custom_jvp(jvp = softplus_jvp)]
fn softplus_ruled(x: f64) -> f64 {
    (1.0 + x.exp()).ln()
}

#[differentiable]
fn softplus_jvp(x: f64, dx: f64) -> (f64, f64) {
    (softplus_ruled(x), dx / (1.0 + (-x).exp()))
}

#[differentiable(jvp)]
fn uses_softplus(x: f64, s: f64) -> f64 {
    softplus_ruled(x * s) * s
}

/// A straight-through estimator: clipped forward, the identity's derivative.
#[custom_jvp(jvp = clip_straight_through)]
fn clip(x: &Array1<f64>) -> Array1<f64> {
    x.mapv(|v| v.clamp(-1.0, 1.0))
}

#[differentiable]
fn clip_straight_through(x: &Array1<f64>, dx: &Array1<f64>) -> (Array1<f64>, Array1<f64>) {
    (clip(x), dx.to_owned())
}

#[differentiable(jvp)]
fn clipped_energy(x: &Array1<f64>) -> f64 {
    let y = clip(x);
    (&y * &y).sum()
}

#[test]
fn custom_jvp_rules_are_used_by_forward_and_reverse_mode() {
    // The rule, directly: finite where the body's derivative, e^x / (1 + e^x), is
    // inf / inf; and reverse mode transposes it.
    assert_eq!(jvp!(softplus_ruled)(1000.0, 1.0).1, 1.0);
    assert_eq!(grad!(softplus_ruled)(1000.0), 1.0);
    let (x, s) = (0.7, 1.3);
    let (_, d) = jvp!(uses_softplus)(x, s, 1.0, 0.0);
    let (gx, _) = grad!(uses_softplus)(x, s);
    assert!((d - gx).abs() < 1e-12, "{d} vs {gx}");
    // Second order through the rule: d/dx of the JVP is s³ sigmoid'(x s).
    let (hx, _) = hvp!(uses_softplus)(x, s, 1.0, 0.0);
    let sig = 1.0 / (1.0 + (-x * s).exp());
    let want = s * s * s * sig * (1.0 - sig);
    assert!((hx - want).abs() < 1e-12, "{hx} vs {want}");
    // The straight-through estimator as JAX's `custom_jvp` gives it in both modes:
    // d/dx sum(clip(x)²) = 2 clip(x), also where x is clipped.
    let x = array![-2.0, 0.5, 3.0];
    let want = array![-2.0, 1.0, 2.0];
    assert_eq!(grad!(clipped_energy)(&x), want);
    let v = array![1.0, 1.0, 1.0];
    assert_eq!(jvp!(clipped_energy)(&x, &v).1, want.sum());
}

/// Generic over the float type, with the constants forward mode writes (`2 x` for
/// `x²`, `1 / (2 sqrt x)`, `3 x²`, `1 / (1 + x)`): in f64 and f32.
#[differentiable(jvp)]
fn generic_energy<A: adjoint::Real>(x: &Array1<A>, k: A) -> A {
    ((x * x).sum() + x.sqrt().sum() + x.powi(3).sum() + x.ln_1p().sum()) * k
}

#[test]
fn forward_mode_in_a_generic_float_type() {
    // d/dx0 at x0 = 1: k (2 + 1/2 + 3 + 1/2) = 18 for k = 3.
    let x = array![1.0f64, 2.0];
    let (_, d) = jvp!(generic_energy)(&x, 3.0, &array![1.0, 0.0], 0.0);
    assert!((d - 18.0).abs() < 1e-12, "{d}");
    assert!((grad!(generic_energy)(&x, 3.0).0[0] - 18.0).abs() < 1e-12);
    let (_, d32) = jvp!(generic_energy)(&array![1.0f32, 2.0], 3.0f32, &array![1.0f32, 0.0], 0.0f32);
    assert!((d32 - 18.0).abs() < 1e-5, "{d32}");
    // H e0 at x0 = 1: k (2 - 1/4 + 6 - 1/4) = 22.5; and d/dk of the JVP is 6.
    let (hx, hk) = hvp!(generic_energy)(&x, 3.0, &array![1.0, 0.0], 0.0);
    assert!(
        (hx[0] - 22.5).abs() < 1e-12 && hx[1] == 0.0 && (hk - 6.0).abs() < 1e-12,
        "{hx} {hk}"
    );
    assert!(generic_energy(&x, 3.0) > 0.0);
}

/// Views and means along axes: rows, columns, slices, `index_axis`, `insert_axis`,
/// `permuted_axes`, `mean_axis`.
#[differentiable(jvp)]
fn axes(x: &ndarray::Array2<f64>) -> f64 {
    let mut acc = 0.0;
    for i in 0..x.nrows() {
        let r = x.row(i);
        acc += (&r * &r).sum() * (i as f64 + 1.0);
    }
    let c = x.column(1);
    let s = x.slice(ndarray::s![.., 0..2]);
    let m = x.mean_axis(ndarray::Axis(0)).unwrap();
    let e = x
        .index_axis(ndarray::Axis(1), 0)
        .insert_axis(ndarray::Axis(0));
    let p = x.view().permuted_axes([1, 0]);
    acc + c.sin().sum()
        + (&s * &s).sum()
        + m.exp().sum()
        + e.tanh().sum()
        + p.sin().sum() * p.row(0).sum()
}

#[test]
fn forward_mode_through_views_and_axis_means() {
    let x = ndarray::array![[0.3, -0.7, 1.1], [0.4, 0.2, -0.5]];
    let v = ndarray::array![[1.0, 0.5, -2.0], [0.25, -1.0, 0.75]];
    let (y, dy) = jvp!(axes)(&x, &v);
    assert_eq!(y, axes(&x));
    let along = (&grad!(axes)(&x) * &v).sum();
    assert!((dy - along).abs() < 1e-12 * along.abs(), "{dy} vs {along}");
    let hv = hvp!(axes)(&x, &v);
    let tol = Tolerance {
        step: 1e-6,
        rtol: 1e-6,
        atol: 1e-8,
    };
    check_vjp(|x: &ndarray::Array2<f64>| grad!(axes)(x), &x, &v, &hv, tol).unwrap();
}

/// ndarray's axis methods that take the array by value (`insert_axis`,
/// `reversed_axes`, `permuted_axes`) give an owned array for an owned one, as the
/// function as written does: here a result of the type the signature names, and an
/// argument of a function that takes owned arrays.
#[differentiable(jvp)]
fn restrided(x: &Array2<f64>) -> ndarray::Array3<f64> {
    let t = (x * 2.0).reversed_axes();
    let p = (&t + 1.0).permuted_axes([1, 0]);
    (&p * &t.t()).insert_axis(Axis(0))
}

#[differentiable(jvp)]
fn restrided_loss(x: &Array2<f64>) -> f64 {
    let z = restrided(x);
    (&z * &z.sin()).sum()
}

#[test]
fn axis_methods_by_value_keep_owned_arrays_owned() {
    let x = array![[0.3, -0.7, 1.1], [0.4, 0.2, -0.5]];
    let v = array![[1.0, 0.5, -2.0], [0.25, -1.0, 0.75]];
    let (y, dy) = jvp!(restrided_loss)(&x, &v);
    assert_value(y, restrided_loss(&x));
    let along = (&grad!(restrided_loss)(&x) * &v).sum();
    assert!((dy - along).abs() < 1e-12 * along.abs(), "{dy} vs {along}");
    let tol = Tolerance {
        step: 1e-6,
        rtol: 1e-6,
        atol: 1e-8,
    };
    let g = grad!(restrided_loss)(&x);
    adjoint::check::check_grad(restrided_loss, &x, &g, tol).unwrap();
    let hv = hvp!(restrided_loss)(&x, &v);
    check_vjp(|x: &Array2<f64>| grad!(restrided_loss)(x), &x, &v, &hv, tol).unwrap();
}

/// The rules whose tangent is a derivative rule of its own (`abs_d1`, `cbrt_d1`, ..):
/// the JVP against central differences of the function, the Hessian (reverse over
/// forward, through each rule's second derivative) against central differences of
/// the gradient.
#[differentiable(jvp)]
fn inverse_and_roots(x: &Array1<f64>) -> f64 {
    let a = (x * 0.5).asin() + (x * 0.3).acos();
    let b = x.cbrt() * x.abs();
    let c = (x * x + 1.0).log2() + (x * x + 2.0).log10();
    (&a * &b).sum() + (&c * &a).sum()
}

#[test]
fn derivative_rules_in_forward_mode_and_second_order() {
    let (x, v) = (array![0.4, -0.9, 1.3], array![1.0, -0.5, 0.25]);
    let (y, dy) = jvp!(inverse_and_roots)(&x, &v);
    assert_eq!(y, inverse_and_roots(&x));
    let h = 1e-6;
    let at = |s: f64| inverse_and_roots(&(&x + &(&v * s)));
    let fd = (at(h) - at(-h)) / (2.0 * h);
    assert!(
        (dy - fd).abs() < 1e-8 * fd.abs().max(1.0),
        "jvp {dy}, differences {fd}"
    );

    let hess = hessian!(inverse_and_roots)(&x);
    for j in 0..3 {
        let mut e = Array1::zeros(3);
        e[j] = 1.0;
        let g = |s: f64| grad!(inverse_and_roots)(&(&x + &(&e * s)));
        let col = (g(h) - g(-h)) / (2.0 * h);
        for i in 0..3 {
            let (got, want) = (hess[[i, j]], col[i]);
            assert!(
                (got - want).abs() < 1e-6 * want.abs().max(1.0),
                "H[{i}, {j}] = {got}, differences {want}"
            );
        }
    }
}

/// Forward mode through methods and associated functions of a `(jvp)` impl, and a
/// module whose `call` uses one: H v and the lifted second order go through them.
struct Poly {
    coeffs: Vec<f64>,
}

#[differentiable(jvp)]
impl Poly {
    /// Horner's rule: sum of c_k x^k.
    fn eval(&self, x: f64) -> f64 {
        let mut acc = 0.0;
        for k in (0..self.coeffs.len()).rev() {
            acc = acc * x + self.coeffs[k];
        }
        acc
    }

    fn squash(y: f64) -> f64 {
        y.tanh()
    }
}

#[differentiable(jvp)]
fn through_methods(p: &Poly, x: f64) -> f64 {
    Poly::squash(p.eval(x)) * x
}

#[test]
fn forward_mode_through_methods_and_associated_functions() {
    let p = Poly {
        coeffs: vec![0.5, -1.0, 0.25, 0.1],
    };
    let x = 0.7;
    let (y, dy) = jvp!(through_methods)(&p, x, 1.0);
    assert_eq!(y, through_methods(&p, x));
    let g = grad!(|x: f64| through_methods(&p, x))(x);
    assert!((dy - g).abs() < 1e-14, "jvp {dy}, grad {g}");
    // d2/dx2 by reverse over forward, against differences of the gradient.
    let h2 = grad!(|x: f64| {
        let (_, d) = jvp!(through_methods)(&p, x, 1.0);
        d
    })(x);
    let d = 1e-6;
    let fd = (grad!(|x: f64| through_methods(&p, x))(x + d)
        - grad!(|x: f64| through_methods(&p, x))(x - d))
        / (2.0 * d);
    assert!(
        (h2 - fd).abs() < 1e-7,
        "second derivative {h2}, differences {fd}"
    );
}

/// A module whose `call` uses a method of its own (`(jvp)` impl), under a lifted
/// `grad!`: d/dw of (d/dx (w x)^3 / 3)... = d/dw of w^3 x^2 = 3 w^2 x^2.
struct Cubed;

#[differentiable(jvp)]
impl Cubed {
    fn call(&self, cx: &mut Scope, x: f64) -> f64 {
        let w: f64 = cx.param("w", init::ones, ());
        self.cube(w * x) / 3.0
    }

    fn cube(&self, y: f64) -> f64 {
        y * y * y
    }
}

struct CubedSlope;

#[differentiable]
impl CubedSlope {
    fn call(&self, cx: &mut Scope, x: f64) -> f64 {
        let (g,) = grad!(cx, |mdl, cx, x| mdl.call(cx, x), Cubed, x);
        g
    }
}

#[test]
fn second_order_through_a_method_of_a_module() {
    let (w, x) = (1.5, 2.0);
    let vars = Variables::new().with("params", "Cubed_0/w", w).unwrap();
    let (slope, grads) = value_and_grad!(|v: &Variables| CubedSlope.apply(v, x).unwrap())(&vars);
    assert_eq!(slope, w * w * w * x * x);
    assert_eq!(grads.error(), None);
    let gw = grads.read::<f64>("params", "Cubed_0/w").unwrap();
    assert!((gw - 3.0 * w * w * x * x).abs() < 1e-12, "{gw}");
}

/// Third order where it falls out: with `jvp = 2`, `f::jvp` has forward mode of its
/// own, so `df = jvp!(f)(x, 1)` is `(jvp)` and `hessian!(df)` is f'''.
#[differentiable(jvp = 2)]
fn wave(x: f64) -> f64 {
    x.sin() * x * x
}

#[differentiable(jvp)]
fn wave_slope(x: f64) -> f64 {
    let (_, d) = jvp!(wave)(x, 1.0);
    d
}

#[test]
fn third_derivative_of_a_scalar_function() {
    for x in [-1.3, 0.2, 0.9, 2.5] {
        let (s, c) = (f64::sin(x), f64::cos(x));
        let d2 = -x * x * s + 4.0 * x * c + 2.0 * s;
        let d3 = -x * x * c - 6.0 * x * s + 6.0 * c;
        let (_, got2) = jvp!(wave_slope)(x, 1.0);
        assert!((got2 - d2).abs() < 1e-12, "f''({x}) = {got2}, want {d2}");
        let got3 = hessian!(wave_slope)(x);
        assert_eq!(got3.shape(), &[] as &[usize]);
        let got3 = got3[[]];
        assert!((got3 - d3).abs() < 1e-12, "f'''({x}) = {got3}, want {d3}");
    }
}

/// A body long enough that its third-order code is cut into pieces (blocks of
/// over 512 statements, see the macro's `chunk.rs`): forward mode's borrows of a
/// piece's values (`operand(&t)`) are taken again after it.
#[differentiable(jvp = 2)]
fn harmonics(x: &Array1<f64>) -> f64 {
    (x * 1.0).sin().sum()
        + (x * 2.0).sin().sum()
        + (x * 3.0).sin().sum()
        + (x * 4.0).sin().sum()
        + (x * 5.0).sin().sum()
        + (x * 6.0).sin().sum()
        + (x * 7.0).sin().sum()
        + (x * 8.0).sin().sum()
        + (x * 9.0).sin().sum()
        + (x * 10.0).sin().sum()
        + (x * 11.0).sin().sum()
        + (x * 12.0).sin().sum()
}

#[differentiable(jvp)]
fn harmonics_slope(x: &Array1<f64>) -> f64 {
    let ones = no_grad(Array1::ones(x.len()));
    let (_, d) = jvp!(harmonics)(x, &ones);
    d
}

#[test]
fn third_order_of_a_long_body() {
    let x = Array1::from(vec![0.3, -1.1, 2.0]);
    let h = hessian!(harmonics_slope)(&x);
    for i in 0..3 {
        for j in 0..3 {
            let want = if i == j {
                (1..=12)
                    .map(|k| -f64::powi(k as f64, 3) * (k as f64 * x[i]).cos())
                    .sum()
            } else {
                0.0
            };
            assert!(
                (h[[i, j]] - want).abs() <= 1e-9 * (1.0 + want.abs()),
                "{i},{j}: {} against {want}",
                h[[i, j]]
            );
        }
    }
}

/// The binary scalar rules and `powf` in forward mode and second order.
#[differentiable(jvp)]
fn binary_rules(x: &Array1<f64>) -> f64 {
    let (a, b, c) = (x[0], x[1], x[2]);
    let m = a.max(b) * 2.0 + a.min(c) + (b * 3.0).clamp(-1.0, 1.0);
    let t = a.atan2(b) + b.hypot(c) + a.mul_add(b, c);
    let p = (x * x + 1.0).powf(c) + a.abs().powf(1.5);
    m * t + p.sum() + m * m
}

#[test]
fn binary_rules_in_forward_mode_and_second_order() {
    // Points away from the kinks of max, min and clamp.
    for x in [array![0.7, -0.4, 1.3], array![-0.9, 0.2, 0.5]] {
        let v = array![0.3, -1.1, 0.6];
        let (y, dy) = jvp!(binary_rules)(&x, &v);
        assert_eq!(y, binary_rules(&x));
        let h = 1e-6;
        let at = |s: f64| binary_rules(&(&x + &(&v * s)));
        let fd = (at(h) - at(-h)) / (2.0 * h);
        assert!(
            (dy - fd).abs() < 1e-7 * fd.abs().max(1.0),
            "jvp {dy}, differences {fd}"
        );
        let hess = hessian!(binary_rules)(&x);
        for j in 0..3 {
            let mut e = Array1::zeros(3);
            e[j] = 1.0;
            let g = |s: f64| grad!(binary_rules)(&(&x + &(&e * s)));
            let col = (g(h) - g(-h)) / (2.0 * h);
            for i in 0..3 {
                let (got, want) = (hess[[i, j]], col[i]);
                assert!(
                    (got - want).abs() < 1e-5 * want.abs().max(1.0),
                    "H[{i}, {j}] = {got}, differences {want}"
                );
            }
        }
    }
}

/// `jvp` against central differences of `f` along `v`, and the Hessian against
/// central differences of the gradient.
fn check_jvp_and_hessian(
    f: impl Fn(&Array1<f64>) -> f64,
    jvp: impl Fn(&Array1<f64>, &Array1<f64>) -> (f64, f64),
    grad: impl Fn(&Array1<f64>) -> Array1<f64>,
    hessian: impl Fn(&Array1<f64>) -> ndarray::ArrayD<f64>,
    x: &Array1<f64>,
    v: &Array1<f64>,
) {
    let h = 1e-6;
    let (y, dy) = jvp(x, v);
    assert_value(y, f(x));
    let fd = (f(&(x + &(v * h))) - f(&(x - &(v * h)))) / (2.0 * h);
    assert!(
        (dy - fd).abs() < 1e-7 * fd.abs().max(1.0),
        "jvp {dy}, differences {fd}"
    );
    let hess = hessian(x);
    let n = x.len();
    for j in 0..n {
        let mut e = Array1::zeros(n);
        e[j] = 1.0;
        let col = (grad(&(x + &(&e * h))) - grad(&(x - &(&e * h)))) / (2.0 * h);
        for i in 0..n {
            let (got, want) = (hess[[i, j]], col[i]);
            assert!(
                (got - want).abs() < 1e-5 * want.abs().max(1.0),
                "H[{i}, {j}] = {got}, differences {want}"
            );
        }
    }
}

/// Arrays assembled from differentiated values: `concatenate`, `stack`, `array!`.
#[differentiable(jvp)]
fn assembled(x: &Array1<f64>) -> f64 {
    let a = x.sin();
    let b = &a * x;
    let c = ndarray::concatenate(Axis(0), &[a.view(), b.view(), x.view()]).unwrap();
    let s = ndarray::stack(Axis(0), &[a.view(), b.view()]).unwrap();
    let m = array![[x[0] * x[1], x[2]], [x[1].exp(), 2.0]];
    (&c * &c).sum() + s.sum_axis(Axis(0)).dot(x) + m.dot(&m).sum()
}

#[test]
fn forward_mode_of_assembled_arrays() {
    check_jvp_and_hessian(
        assembled,
        jvp!(assembled),
        grad!(assembled),
        hessian!(assembled),
        &array![0.7, -0.4, 1.3],
        &array![0.3, -1.1, 0.6],
    );
}

/// optax's fused cross entropies, soft labels differentiated too.
#[differentiable(jvp)]
fn fused_losses(x: &Array1<f64>) -> f64 {
    let logits = array![[x[0], x[1] * x[2]], [x[2].sin(), x[0] * 2.0], [x[1], 0.5]];
    let soft = adjoint::nn::softmax(&array![[x[1], 0.5], [x[0], x[2]], [0.1, x[0]]], Axis(1));
    let hard = ndarray::array![1usize, 0, 1];
    losses::softmax_cross_entropy(&logits, &soft).sum()
        + losses::softmax_cross_entropy_with_integer_labels(&logits, &hard).sum()
}

/// A label out of range: the loss is NaN, and so is its tangent (never a zero).
#[differentiable(jvp)]
fn out_of_range(x: &Array1<f64>) -> f64 {
    let logits = array![[x[0], x[1]]];
    losses::softmax_cross_entropy_with_integer_labels(&logits, &ndarray::array![5usize]).sum()
}

#[test]
fn forward_mode_of_the_fused_cross_entropies() {
    let (y, dy) = jvp!(out_of_range)(&array![0.1, 0.2], &array![1.0, 0.0]);
    assert!(y.is_nan() && dy.is_nan(), "{y}, {dy}");
    check_jvp_and_hessian(
        fused_losses,
        jvp!(fused_losses),
        grad!(fused_losses),
        hessian!(fused_losses),
        &array![0.7, -0.4, 1.3],
        &array![0.3, -1.1, 0.6],
    );
}

/// Third order of a function with an integer parameter: the parameter has no
/// tangent at either level (its `NoTangent` is passed through both).
#[differentiable(jvp = 2)]
fn power_wave(x: f64, n: i32) -> f64 {
    x.powi(n) * x.sin()
}

#[differentiable(jvp)]
fn power_wave_slope(x: f64, n: i32) -> f64 {
    let (_, d) = jvp!(power_wave)(x, n, 1.0);
    d
}

#[test]
fn third_derivative_with_an_integer_parameter() {
    for (x, n) in [(0.7_f64, 3), (-1.2, 4), (1.9, 2)] {
        // Leibniz's rule for the derivatives of u v, u = x^n and v = sin x.
        let k = f64::from(n);
        let u = [
            x.powi(n),
            k * x.powi(n - 1),
            k * (k - 1.0) * x.powi(n - 2),
            k * (k - 1.0) * (k - 2.0) * x.powi(n - 3),
        ];
        let v = [x.sin(), x.cos(), -x.sin(), -x.cos()];
        let d2 = u[2] * v[0] + 2.0 * u[1] * v[1] + u[0] * v[2];
        let d3 = u[3] * v[0] + 3.0 * u[2] * v[1] + 3.0 * u[1] * v[2] + u[0] * v[3];
        let (_, got2) = jvp!(power_wave_slope)(x, n, 1.0);
        assert!(
            (got2 - d2).abs() < 1e-12 * (1.0 + d2.abs()),
            "f''({x}) = {got2}, want {d2}"
        );
        let got3 = hessian!(power_wave_slope)(x, n)[[]];
        assert!(
            (got3 - d3).abs() < 1e-12 * (1.0 + d3.abs()),
            "f'''({x}) = {got3}, want {d3}"
        );
    }
}

/// Third order through the activations' tangents: `jvp = 2` differentiates the
/// `tanh` and `sigmoid` tangents forward mode writes.
#[differentiable(jvp = 2)]
fn activated(x: &Array1<f64>) -> f64 {
    (x.tanh() * x + adjoint::nn::sigmoid(x) * x * x).sum()
}

#[differentiable(jvp)]
fn activated_slope(x: &Array1<f64>) -> f64 {
    let (_, d) = jvp!(activated)(x, &array![1.0, 0.5, -0.3]);
    d
}

#[test]
fn third_order_through_activations() {
    check_jvp_and_hessian(
        activated_slope,
        jvp!(activated_slope),
        grad!(activated_slope),
        hessian!(activated_slope),
        &array![0.3, -0.2, 1.1],
        &array![0.4, 0.9, -0.7],
    );
}

/// Third order through the functions whose tangents forward mode writes with
/// derivative rules (`square_d1`, `sqrt_d1`, `tan_d1`, `atan_d1`, `exp_m1_d1`,
/// `ln_1p_d1`, `powi_d1`), on arrays and on scalars.
#[differentiable(jvp = 2)]
fn elementary(x: &Array1<f64>) -> f64 {
    let p = x * 0.4 + 1.2;
    let arrays = (&p * &p).sum() + p.sqrt().sum() + (x * 0.3).tan().sum() + x.atan().sum();
    arrays + (x * 0.5).exp_m1().sum() + p.ln_1p().sum() + x.powi(3).sum()
}

#[differentiable(jvp = 2)]
fn elementary_scalars(x: &Array1<f64>) -> f64 {
    let s = x[1] * 0.4 + 1.2;
    s * s + s.sqrt() + s.tan() + s.atan() + s.exp_m1() + s.ln_1p() + s.powi(4)
}

#[differentiable(jvp)]
fn elementary_slope(x: &Array1<f64>) -> f64 {
    let v = array![0.7, -0.4, 0.2];
    let ((_, d), (_, e)) = (jvp!(elementary)(x, &v), jvp!(elementary_scalars)(x, &v));
    d + e
}

#[test]
fn third_order_through_derivative_rules() {
    check_jvp_and_hessian(
        elementary_slope,
        jvp!(elementary_slope),
        grad!(elementary_slope),
        hessian!(elementary_slope),
        &array![0.3, -0.2, 1.1],
        &array![0.4, 0.9, -0.7],
    );
}

/// Third order through `softmax`, `log_softmax` and pooling: `jvp = 2` differentiates
/// the tangents forward mode writes for them.
#[differentiable(jvp = 2)]
fn normalized(x: &Array1<f64>) -> f64 {
    let m = array![[x[0], x[1] * x[2], x[2]], [x[1].sin(), x[0], 0.3]];
    let s = adjoint::nn::softmax(&m, Axis(1));
    let l = adjoint::nn::log_softmax(&(&m * 2.0), Axis(0));
    (&s * &s).sum() + (&l * &m).sum()
}

#[differentiable(jvp)]
fn normalized_slope(x: &Array1<f64>) -> f64 {
    let (_, d) = jvp!(normalized)(x, &array![0.6, -0.2, 0.9]);
    d
}

#[test]
fn third_order_through_softmax_and_log_softmax() {
    check_jvp_and_hessian(
        normalized_slope,
        jvp!(normalized_slope),
        grad!(normalized_slope),
        hessian!(normalized_slope),
        &array![0.3, -0.2, 1.1],
        &array![0.4, 0.9, -0.7],
    );
}

#[differentiable(jvp = 2)]
fn pooled(x: &Array1<f64>) -> f64 {
    let y = (x * x)
        .sin()
        .into_shape_with_order(vec![1, 2, 3, 1])
        .unwrap();
    let m = adjoint::nn::max_pool(&y, [2, 2], [1, 1], adjoint::nn::Padding::Valid);
    (&m * &m).sum()
}

#[differentiable(jvp)]
fn pooled_slope(x: &Array1<f64>) -> f64 {
    let v = array![0.6, -0.2, 0.9, 0.1, -0.5, 0.3];
    let (_, d) = jvp!(pooled)(x, &v);
    d
}

#[test]
fn third_order_through_pooling() {
    // Distinct values, away from ties in the windows.
    check_jvp_and_hessian(
        pooled_slope,
        jvp!(pooled_slope),
        grad!(pooled_slope),
        hessian!(pooled_slope),
        &array![0.3, -0.2, 1.1, 0.7, -0.9, 0.5],
        &array![0.4, 0.9, -0.7, 0.2, 0.1, -0.3],
    );
}

/// `powi` with an exponent that is not a literal.
#[differentiable(jvp)]
fn powered(x: &Array1<f64>, n: i32) -> f64 {
    (x.powi(n) * x[0].powi(n + 1)).sum()
}

#[test]
fn forward_mode_of_powi_with_a_variable_exponent() {
    check_jvp_and_hessian(
        |x| powered(x, 3),
        |x, v| jvp!(powered)(x, 3, v),
        |x| grad!(powered)(x, 3),
        |x| hessian!(powered)(x, 3),
        &array![0.7, 1.3],
        &array![0.4, -0.2],
    );
}

// ----- a module applied to variables, in forward mode -----

struct Potential;

#[differentiable]
impl Potential {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>, steps: usize) -> f64 {
        let mut h = adjoint::nn::Dense::new(6).call(cx, x).tanh();
        let r: Array2<f64> = cx.param("r", init::normal(0.3), (6, 6));
        for _ in 0..steps {
            h = &h + &h.dot(&r).tanh();
        }
        adjoint::nn::Dense::new(1).call(cx, &h).sum()
    }
}

/// A model's output in its inputs, its variables held (`#[no_grad]`); an integer
/// input has no tangent.
#[differentiable(jvp)]
fn potential_energy(#[no_grad] v: &Variables, x: &Array1<f64>) -> f64 {
    let e = Potential.apply(v, x, 3).unwrap();
    e * e + x.sum()
}

/// `model.apply(v, x)` in forward mode (the module's JVP along its inputs), and
/// reverse over it: `hessian!` and `hvp!` of a model's output in its inputs.
#[test]
fn forward_mode_of_a_module_applied_to_variables() {
    let (x, t) = (array![0.3, -0.5, 0.8], array![0.2, 0.7, -0.4]);
    let vars = Potential.init(3, &x, 3).unwrap();
    check_jvp_and_hessian(
        |x| potential_energy(&vars, x),
        |x, t| jvp!(potential_energy)(&vars, x, t),
        |x| grad!(potential_energy)(&vars, x),
        |x| hessian!(potential_energy)(&vars, x).into_dyn(),
        &x,
        &t,
    );
    assert_hvp_is_hessian_times(
        &hvp!(potential_energy)(&vars, &x, &t),
        hessian!(potential_energy)(&vars, &x),
        &t,
    );
}

/// `hvp!`'s result is the Hessian times the direction, to 1e-12.
fn assert_hvp_is_hessian_times(hv: &Array1<f64>, hessian: ndarray::ArrayD<f64>, t: &Array1<f64>) {
    let want = hessian
        .into_dimensionality::<ndarray::Ix2>()
        .unwrap()
        .dot(t);
    assert!(
        hv.iter()
            .zip(&want)
            .all(|(a, b)| (a - b).abs() < 1e-12 * (1.0 + b.abs())),
        "{hv} against {want}"
    );
}

/// The model's output as a function of its variables too.
#[differentiable(jvp)]
fn potential_output(v: &Variables, x: &Array1<f64>) -> f64 {
    Potential.apply(v, x, 3).unwrap()
}

/// Forward mode along the variables (`jax.jvp` of `apply` in the parameters, what a
/// Gauss-Newton or NTK product takes): against central differences of the output
/// along the variables' and the input's directions together; and differentiated
/// again, the Hessian-vector product along both (second order in the parameters).
#[test]
fn forward_mode_of_apply_along_the_variables() {
    let (x, t) = (array![0.3, -0.5, 0.8], array![0.2, 0.7, -0.4]);
    let vars = Potential.init(3, &x, 3).unwrap();
    let dv = vars.map(|w| (w * 1.7 + 0.37).sin());
    let (y, dy) = jvp!(potential_output)(&vars, &x, &dv, &t);
    assert_eq!(y, potential_output(&vars, &x));
    let h = 1e-6;
    let at = |s: f64| {
        let v = vars.zip_map(&dv, |w, d| w + s * d).unwrap();
        potential_output(&v, &(&x + &(&t * s)))
    };
    let fd = (at(h) - at(-h)) / (2.0 * h);
    assert!(
        (dy - fd).abs() < 1e-7 * fd.abs().max(1.0),
        "jvp {dy}, differences {fd}"
    );
    // Along the input alone (a zero variable tangent) it is the inputs' forward mode.
    let (_, dx_only) = jvp!(potential_output)(&vars, &x, &dv.map(|_| 0.0), &t);
    let (_, held) = jvp!(potential_energy)(&vars, &x, &t);
    let e = potential_output(&vars, &x);
    assert!((held - (2.0 * e * dx_only + t.sum())).abs() < 1e-12 * (1.0 + held.abs()));
    let hv = hvp!(potential_output)(&vars, &x, &dv, &t);
    assert_hvp_along_variables(hv, |s| {
        let v = vars.zip_map(&dv, |w, d| w + s * d).unwrap();
        grad!(potential_output)(&v, &(&x + &(&t * s)))
    });
}

/// A Hessian-vector product in the variables and an input, `(H v, H x)`, against
/// central differences of the gradient `at(s)` along the direction: normwise to
/// 1e-7 of its size (the differences' own error), the trees of the same structure.
fn assert_hvp_along_variables(
    (hv_vars, hv_x): (Variables, Array1<f64>),
    at: impl Fn(f64) -> (Variables, Array1<f64>),
) {
    let h = 1e-5;
    let ((vp, xp), (vm, xm)) = (at(h), at(-h));
    let fd_vars = vp.sub(&vm).unwrap().scale(0.5 / h);
    let fd_x = (&xp - &xm) / (2.0 * h);
    assert_eq!(hv_vars.error(), None);
    assert_eq!(hv_vars.shapes(), fd_vars.shapes());
    let off = hv_vars.sub(&fd_vars).unwrap().global_norm();
    assert!(
        off < 1e-7 * (1.0 + fd_vars.global_norm()),
        "H v in the variables off by {off}: {hv_vars} against {fd_vars}"
    );
    let off_x = (&hv_x - &fd_x).mapv(|d| d * d).sum().sqrt();
    assert!(
        off_x < 1e-7 * (1.0 + fd_x.mapv(|d| d * d).sum().sqrt()),
        "{hv_x} against {fd_x}"
    );
}

/// An LSTM cell applied to variables, its carry a pair built in the body: forward
/// mode of the pair (each part's tangent owned by a rule, so the JVP is
/// differentiated again) and of `apply` with a pair input.
#[differentiable(jvp)]
fn lstm_energy(#[no_grad] v: &Variables, c: &Array2<f64>, x: &Array2<f64>) -> f64 {
    let cell = adjoint::nn::LSTMCell::new(3);
    let carry = (c.to_owned(), c * 2.0);
    let ((c2, h2), y) = cell.apply(v, &carry, x).unwrap();
    (c2.sum() + h2.sum()) * y.sum()
}

#[test]
fn hvp_through_an_applied_lstm_cell_with_a_built_carry() {
    let (c, x) = (array![[0.2, -0.3, 0.5]], array![[0.7, -0.4]]);
    let (dc, dx) = (array![[1.0, 0.3, -0.6]], array![[0.5, 0.9]]);
    let cell = adjoint::nn::LSTMCell::new(3);
    let v = cell.init(0, &(c.clone(), c.clone()), &x).unwrap();
    let (hc, hx) = hvp!(lstm_energy)(&v, &c, &x, &dc, &dx);
    // H (dc, dx) by central differences of the gradient along (dc, dx).
    let g = grad!(lstm_energy);
    let h = 1e-6;
    let (gp, gm) = (
        g(&v, &(&c + &(&dc * h)), &(&x + &(&dx * h))),
        g(&v, &(&c - &(&dc * h)), &(&x - &(&dx * h))),
    );
    let (wc, wx) = ((&gp.0 - &gm.0) / (2.0 * h), (&gp.1 - &gm.1) / (2.0 * h));
    for (got, want) in hc.iter().chain(&hx).zip(wc.iter().chain(&wx)) {
        assert!(
            (got - want).abs() < 1e-6 * want.abs().max(1.0),
            "{got} against differences {want}"
        );
    }
}

// ----- a module applied with options (mutable collections, random streams) -----

/// Dropout (a random stream) and a call counter (a mutable collection) around a
/// layer: what `apply_with` runs.
struct Noisy;

#[differentiable]
impl Noisy {
    fn call(&self, cx: &mut Scope, x: &Array1<f64>) -> f64 {
        let count: i64 = cx.variable("state", "count", || 0);
        cx.put("state", "count", count + 1);
        let h = adjoint::nn::Dense::new(5).call(cx, x).tanh();
        let h = adjoint::nn::Dropout::new(0.4).call(cx, &h);
        (&h * &h).sum()
    }
}

/// The model's output in its inputs through `apply_with` (the counter and the key
/// as the options give them), its variables and options held.
#[differentiable(jvp)]
fn noisy_energy(#[no_grad] v: &Variables, #[no_grad] opts: &ApplyOptions, x: &Array1<f64>) -> f64 {
    let (e, _state) = Noisy.apply_with(v, opts, x).unwrap();
    e * x.sum()
}

/// `apply_with` in forward mode (the module's JVP along its inputs, the mutated
/// collections constants), and `hessian!`/`hvp!` over it: against central
/// differences of the function and of its gradient; the dropout mask is the same
/// on every run (the options' key), so the differences see one smooth function.
#[test]
fn forward_mode_of_a_module_applied_with_options() {
    let (x, t) = (array![0.3, -0.5, 0.8], array![0.2, 0.7, -0.4]);
    let vars = Noisy.init(3, &x).unwrap();
    let opts = ApplyOptions::new().mutable(["state"]).rng("dropout", 1);
    // `init` counted one call, this run a second.
    let (_, state) = Noisy.apply_with(&vars, &opts, &x).unwrap();
    assert_eq!(state.read::<i64>("state", "count").unwrap(), 2);
    // The random stream is used: another key, another mask.
    let other = ApplyOptions::new().mutable(["state"]).rng("dropout", 2);
    assert_ne!(
        noisy_energy(&vars, &opts, &x),
        noisy_energy(&vars, &other, &x)
    );
    check_jvp_and_hessian(
        |x| noisy_energy(&vars, &opts, x),
        |x, t| jvp!(noisy_energy)(&vars, &opts, x, t),
        |x| grad!(noisy_energy)(&vars, &opts, x),
        |x| hessian!(noisy_energy)(&vars, &opts, x).into_dyn(),
        &x,
        &t,
    );
    assert_hvp_is_hessian_times(
        &hvp!(noisy_energy)(&vars, &opts, &x, &t),
        hessian!(noisy_energy)(&vars, &opts, &x),
        &t,
    );
}

/// The same, the variables differentiated too.
#[differentiable(jvp)]
fn noisy_output(v: &Variables, #[no_grad] opts: &ApplyOptions, x: &Array1<f64>) -> f64 {
    Noisy.apply_with(v, opts, x).unwrap().0
}

/// `apply_with` along the variables' tangents and the input's together, against
/// central differences, and its Hessian-vector product along both (the dropout mask
/// and the counter as the options give them).
#[test]
fn forward_mode_of_apply_with_along_the_variables() {
    let (x, t) = (array![0.3, -0.5, 0.8], array![0.2, 0.7, -0.4]);
    let vars = Noisy.init(3, &x).unwrap();
    let opts = ApplyOptions::new().mutable(["state"]).rng("dropout", 1);
    let dv = vars.map(|w| (w * 1.3 - 0.2).cos());
    let (y, dy) = jvp!(noisy_output)(&vars, &opts, &x, &dv, &t);
    assert_value(y, noisy_output(&vars, &opts, &x));
    let h = 1e-6;
    let at = |s: f64| {
        let v = vars.zip_map(&dv, |w, d| w + s * d).unwrap();
        noisy_output(&v, &opts, &(&x + &(&t * s)))
    };
    let fd = (at(h) - at(-h)) / (2.0 * h);
    assert!(
        (dy - fd).abs() < 1e-7 * fd.abs().max(1.0),
        "jvp {dy}, differences {fd}"
    );
    let hv = hvp!(noisy_output)(&vars, &opts, &x, &dv, &t);
    assert_hvp_along_variables(hv, |s| {
        let v = vars.zip_map(&dv, |w, d| w + s * d).unwrap();
        grad!(noisy_output)(&v, &opts, &(&x + &(&t * s)))
    });
}

// ----- sums with one operand held -----

/// Sums and differences whose other operand is held: the tangent is the moving
/// operand's alone, broadcast to the result's shape, in either order.
#[differentiable(jvp)]
fn held_sums(
    a: &ndarray::ArrayD<f64>,
    #[no_grad] b: &ndarray::ArrayD<f64>,
    #[no_grad] s: f64,
) -> f64 {
    let u = (a + b).sin() + (b + a).cos();
    let v = (a - b) * (b - a);
    (&u * &v).sum() + ((a + s) * (s + a) - (a - s)).sum()
}

/// Against central differences of the function (its JVP) and of its gradient
/// (reverse over that JVP, `hvp!`), over shapes that broadcast either way.
#[test]
fn forward_mode_of_a_sum_with_a_held_operand_broadcasts() {
    use ndarray::{ArrayD, Dimension, IxDyn};
    let fill = |shape: &[usize], k: f64| {
        ArrayD::from_shape_fn(IxDyn(shape), |i| {
            let n = i
                .slice()
                .iter()
                .fold(0.0, |acc, &j| acc * 5.0 + j as f64 + 1.0);
            (n * 0.37 + k).sin()
        })
    };
    let pairs: [(&[usize], &[usize]); 7] = [
        (&[3, 4], &[4]),
        (&[4], &[3, 4]),
        (&[3, 1], &[1, 4]),
        (&[2, 3, 4], &[3, 1]),
        (&[], &[3]),
        (&[3], &[]),
        (&[3, 4], &[3, 4]),
    ];
    let h = 1e-6;
    for (sa, sb) in pairs {
        let (a, b, t) = (fill(sa, 0.1), fill(sb, 0.7), fill(sa, 1.3));
        let f = |a: &ArrayD<f64>| held_sums(a, &b, 0.4);
        let (y, dy) = jvp!(held_sums)(&a, &b, 0.4, &t);
        assert_eq!(y, f(&a));
        let fd = (f(&(&a + &(&t * h))) - f(&(&a - &(&t * h)))) / (2.0 * h);
        assert!(
            (dy - fd).abs() < 1e-7 * fd.abs().max(1.0),
            "{sa:?} {sb:?}: jvp {dy}, differences {fd}"
        );
        let hv = hvp!(held_sums)(&a, &b, 0.4, &t);
        let g = |a: &ArrayD<f64>| grad!(held_sums)(a, &b, 0.4);
        let want = (g(&(&a + &(&t * h))) - g(&(&a - &(&t * h)))) / (2.0 * h);
        assert_eq!(hv.shape(), a.shape());
        for (got, w) in hv.iter().zip(&want) {
            assert!(
                (got - w).abs() < 1e-6 * w.abs().max(1.0),
                "{sa:?} {sb:?}: hvp {got}, differences {w}"
            );
        }
    }
}

/// Forward mode writes `a.sin()` in `cos`'s tangent and the primal's `sin(a)` again;
/// lowered again, the two are one value (its memo), which the negation `-a.sin()`
/// took by value where nothing is differentiated (the output does not depend on `a`):
/// it is cloned there now (a random program found it).
#[differentiable(jvp)]
fn unused_trigonometry(x: f64, a: &Array1<f64>) -> f64 {
    let s3 = a.cos().sum();
    let _s4 = a.sin().sum() * s3;
    x * x
}

#[test]
fn a_value_lowering_reuses_is_not_moved() {
    let a = array![0.3, -0.7];
    let (hx, ha) = hvp!(unused_trigonometry)(1.5, &a, 1.0, &array![1.0, 1.0]);
    assert_eq!(hx, 2.0);
    assert_eq!(ha, array![0.0, 0.0]);
}
