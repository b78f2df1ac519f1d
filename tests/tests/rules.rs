//! Every rule, over random shapes and broadcast combinations, against central
//! differences: the arrays are dynamic-dimensional, so each case draws its shapes at
//! run time from a fixed seed.

use adjoint::check::{Tolerance, check_grad};
use adjoint::prelude::*;
use ndarray::{ArrayD, Axis, IxDyn};
use rand::{Rng, SeedableRng};

type R = rand::rngs::StdRng;

fn tol() -> Tolerance {
    Tolerance {
        step: 1e-6,
        rtol: 1e-5,
        atol: 1e-7,
    }
}

/// An array of `shape` with values in `[lo, hi]`.
fn random(rng: &mut R, shape: &[usize], lo: f64, hi: f64) -> ArrayD<f64> {
    ArrayD::from_shape_simple_fn(IxDyn(shape), || rng.random_range(lo..hi))
}

/// A random shape of rank 0 to 3, each axis 1 to 4 long.
fn shape(rng: &mut R) -> Vec<usize> {
    (0..rng.random_range(0..=3))
        .map(|_| rng.random_range(1..=4))
        .collect()
}

/// Two shapes that broadcast (NumPy's rules): `b` drops leading axes of `a` and
/// sets some of the others to 1, or the other way round.
fn broadcast_pair(rng: &mut R) -> (Vec<usize>, Vec<usize>) {
    let a = shape(rng);
    let keep = rng.random_range(0..=a.len());
    let b: Vec<usize> = a[a.len() - keep..]
        .iter()
        .map(|&n| if rng.random_bool(0.3) { 1 } else { n })
        .collect();
    if rng.random_bool(0.5) { (a, b) } else { (b, a) }
}

// The loss wraps the result in `sin` so that no cotangent is uniform.
#[differentiable]
fn add_b(a: &ArrayD<f64>, b: &ArrayD<f64>) -> f64 {
    (a + b).sin().sum()
}
#[differentiable]
fn sub_b(a: &ArrayD<f64>, b: &ArrayD<f64>) -> f64 {
    (a - b).sin().sum()
}
#[differentiable]
fn mul_b(a: &ArrayD<f64>, b: &ArrayD<f64>) -> f64 {
    (a * b).sin().sum()
}
#[differentiable]
fn div_b(a: &ArrayD<f64>, b: &ArrayD<f64>) -> f64 {
    (a / b).sin().sum()
}
#[differentiable]
fn scalar_ops(a: &ArrayD<f64>, s: f64) -> f64 {
    ((a * s) + (s - a) + (a / s) - (s / a)).sin().sum()
}

#[test]
fn binary_operators_broadcast() {
    let mut rng = R::seed_from_u64(1);
    for _ in 0..40 {
        let (sa, sb) = broadcast_pair(&mut rng);
        let a = random(&mut rng, &sa, -1.0, 1.0);
        let b = random(&mut rng, &sb, 0.5, 1.5);
        for (name, f, g) in [
            (
                "add",
                add_b as fn(&ArrayD<f64>, &ArrayD<f64>) -> f64,
                grad!(add_b) as fn(&ArrayD<f64>, &ArrayD<f64>) -> (ArrayD<f64>, ArrayD<f64>),
            ),
            ("sub", sub_b, grad!(sub_b)),
            ("mul", mul_b, grad!(mul_b)),
            ("div", div_b, grad!(div_b)),
        ] {
            let got = g(&a, &b);
            assert_eq!(got.0.shape(), a.shape(), "{name} {sa:?} {sb:?}");
            assert_eq!(got.1.shape(), b.shape(), "{name} {sa:?} {sb:?}");
            check_grad(
                |(a, b): &(ArrayD<f64>, ArrayD<f64>)| f(a, b),
                &(a.clone(), b.clone()),
                &got,
                tol(),
            )
            .unwrap_or_else(|e| panic!("{name} {sa:?} {sb:?}: {e}"));
        }
        let s = rng.random_range(0.5..1.5);
        let a = random(&mut rng, &sa, 0.5, 1.5);
        let got = grad!(scalar_ops)(&a, s);
        check_grad(
            |(a, s): &(ArrayD<f64>, f64)| scalar_ops(a, *s),
            &(a.clone(), s),
            &got,
            tol(),
        )
        .unwrap_or_else(|e| panic!("scalar ops {sa:?}: {e}"));
    }
}

macro_rules! unary_rules {
    ($($name:ident: |$x:ident| $body:expr, in $lo:literal..$hi:literal;)*) => {
        $(
            #[differentiable]
            fn $name($x: &ArrayD<f64>) -> f64 {
                ($body).sin().sum()
            }
        )*

        #[test]
        fn unary_rules_over_random_shapes() {
            let mut rng = R::seed_from_u64(2);
            for _ in 0..10 {
                $({
                    let s = shape(&mut rng);
                    let x = random(&mut rng, &s, $lo, $hi);
                    let got = grad!($name)(&x);
                    check_grad(|x: &ArrayD<f64>| $name(x), &x, &got, tol())
                        .unwrap_or_else(|e| panic!("{} {s:?}: {e}", stringify!($name)));
                })*
            }
        }
    };
}

unary_rules! {
    r_exp: |x| x.exp(), in -1.0..1.0;
    r_exp_m1: |x| x.exp_m1(), in -1.0..1.0;
    r_ln: |x| x.ln(), in 0.5..2.0;
    r_ln_1p: |x| x.ln_1p(), in -0.5..1.0;
    r_log2: |x| x.log2(), in 0.5..2.0;
    r_log10: |x| x.log10(), in 0.5..2.0;
    r_sqrt: |x| x.sqrt(), in 0.5..2.0;
    r_cbrt: |x| x.cbrt(), in 0.5..2.0;
    r_recip: |x| x.recip(), in 0.5..2.0;
    r_sin: |x| x.sin(), in -2.0..2.0;
    r_cos: |x| x.cos(), in -2.0..2.0;
    r_tan: |x| x.tan(), in -1.0..1.0;
    r_asin: |x| x.asin(), in -0.8..0.8;
    r_acos: |x| x.acos(), in -0.8..0.8;
    r_atan: |x| x.atan(), in -2.0..2.0;
    r_sinh: |x| x.sinh(), in -1.0..1.0;
    r_cosh: |x| x.cosh(), in -1.0..1.0;
    r_tanh: |x| x.tanh(), in -2.0..2.0;
    r_abs: |x| x.abs(), in 0.2..2.0;
    r_relu: |x| relu(x), in 0.2..2.0;
    r_sigmoid: |x| sigmoid(x), in -3.0..3.0;
    r_softplus: |x| softplus(x), in -3.0..3.0;
    r_powi: |x| x.powi(3), in -1.5..1.5;
    r_square: |x| x * x, in -1.5..1.5;
    r_mapv: |x| x.mapv(|v| (v * 0.7).tanh() * v), in -2.0..2.0;
    r_neg: |x| -x, in -1.0..1.0;
    r_to_owned: |x| x.to_owned() * 2.0, in -1.0..1.0;
    r_view: |x| x.view().to_owned(), in -1.0..1.0;
}

#[differentiable]
fn reductions(x: &ArrayD<f64>, #[no_grad] axis: usize) -> f64 {
    let s = x.sum_axis(Axis(axis)).sin().sum();
    let m = x.mean_axis(Axis(axis)).unwrap().cos().sum();
    s + m + x.mean().unwrap().sin() + x.sum().cos()
}

#[differentiable]
fn along_an_axis(x: &ArrayD<f64>, #[no_grad] axis: usize) -> f64 {
    let a = softmax(x, Axis(axis)).sin().sum();
    let b = log_softmax(x, Axis(axis)).sin().sum();
    let c = logsumexp(x, Axis(axis)).sin().sum();
    a + b + c
}

#[test]
fn reductions_and_softmax_over_random_axes() {
    let mut rng = R::seed_from_u64(3);
    for _ in 0..30 {
        let mut s = shape(&mut rng);
        if s.is_empty() {
            s.push(3);
        }
        let axis = rng.random_range(0..s.len());
        let x = random(&mut rng, &s, -1.0, 1.0);
        let got = grad!(reductions)(&x, axis);
        check_grad(|x: &ArrayD<f64>| reductions(x, axis), &x, &got, tol())
            .unwrap_or_else(|e| panic!("reductions {s:?} axis {axis}: {e}"));
        let got = grad!(along_an_axis)(&x, axis);
        check_grad(|x: &ArrayD<f64>| along_an_axis(x, axis), &x, &got, tol())
            .unwrap_or_else(|e| panic!("softmax family {s:?} axis {axis}: {e}"));
    }
}

#[differentiable]
fn matrix_product(
    a: &ndarray::Array2<f64>,
    b: &ndarray::Array2<f64>,
    v: &ndarray::Array1<f64>,
) -> f64 {
    a.dot(b).sin().sum() + a.dot(v).cos().sum() + v.dot(b).sin().sum() + b.t().dot(v).sum()
}

#[test]
fn matrix_products_of_random_sizes() {
    let mut rng = R::seed_from_u64(4);
    for _ in 0..20 {
        // `v.dot(b)` and `b.t().dot(v)` need b square.
        let (m, k) = (rng.random_range(1..6), rng.random_range(1..6));
        let n = k;
        let a = random(&mut rng, &[m, k], -1.0, 1.0)
            .into_dimensionality()
            .unwrap();
        let b = random(&mut rng, &[k, n], -1.0, 1.0)
            .into_dimensionality()
            .unwrap();
        let v = random(&mut rng, &[k], -1.0, 1.0)
            .into_dimensionality()
            .unwrap();
        let got = grad!(matrix_product)(&a, &b, &v);
        check_grad(
            |(a, b, v): &(
                ndarray::Array2<f64>,
                ndarray::Array2<f64>,
                ndarray::Array1<f64>,
            )| matrix_product(a, b, v),
            &(a.clone(), b.clone(), v.clone()),
            &got,
            tol(),
        )
        .unwrap_or_else(|e| panic!("dot {m}x{k}x{n}: {e}"));
    }
}
