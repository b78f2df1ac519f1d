//! Elementwise kernels that vectorise: `exp`, `exp_m1` and `tanh` written with
//! arithmetic and bit operations only (no libm calls, no branches), so a loop over
//! an array compiles to SIMD code. libm evaluates these one element at a time.
//!
//! Accuracy against libm (tested in `tests`): in f64, at most 4e-16 relative error
//! for `exp` and `exp_m1`, and 6e-16 for `tanh`; f32 is computed in f64 and rounded,
//! within one ulp of the correctly rounded result (libm's `tanhf` is up to two off).
//!
//! [`map`] and [`map_inplace`] run a kernel over a slice with the widest vectors the
//! CPU has (AVX-512 or AVX2 on x86-64, chosen at run time; SSE2 otherwise). Every
//! path computes the same operations in the same order (no fused multiply-adds), so
//! results are bit for bit the same on every machine.

const LN2_HI: f64 = 6.931_471_803_691_238e-1;
const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
const LOG2E: f64 = std::f64::consts::LOG2_E;
/// 1.5 * 2^52: adding and subtracting it rounds to the nearest integer.
const ROUNDER: f64 = 6_755_399_441_055_744.0;

/// `expm1(r)` for `|r| <= ln(2)/2`, by its Taylor series to degree 13 (the next term
/// is below 2e-17 of the result).
///
/// The polynomial is evaluated by Estrin's scheme (pairs, then pairs of pairs in
/// `r^2`, `r^4`, `r^8`): four dependent steps instead of Horner's twelve, so a vector
/// loop keeps the multipliers busy instead of waiting on each step's latency.
#[inline(always)]
fn expm1_reduced(r: f64) -> f64 {
    const C: [f64; 12] = [
        1.0 / 2.0,
        1.0 / 6.0,
        1.0 / 24.0,
        1.0 / 120.0,
        1.0 / 720.0,
        1.0 / 5040.0,
        1.0 / 40320.0,
        1.0 / 362_880.0,
        1.0 / 3_628_800.0,
        1.0 / 39_916_800.0,
        1.0 / 479_001_600.0,
        1.0 / 6_227_020_800.0,
    ];
    let r2 = r * r;
    let r4 = r2 * r2;
    let r8 = r4 * r4;
    // Plain multiply-adds: without the FMA target feature, `mul_add` is a call to a
    // software fma.
    let pair = |i: usize| C[i] + C[i + 1] * r;
    let low = (pair(0) + pair(2) * r2) + (pair(4) + pair(6) * r2) * r4;
    let high = pair(8) + pair(10) * r2;
    let p = low + high * r8;
    // r + r^2 (1/2 + r/6 + ...).
    r2 * p + r
}

/// Splits `x` as `n ln 2 + r` with `|r| <= ln(2)/2`; returns `(r, 2^n)`.
#[inline(always)]
fn reduce(x: f64) -> (f64, f64) {
    let t = x * LOG2E + ROUNDER;
    let n = t - ROUNDER;
    // The low bits of `t` hold `n` as an integer: the exponent of 2^n.
    let bits = (t.to_bits() as i64).wrapping_add(1023) << 52;
    // LN2_HI has trailing zero bits, so `n * LN2_HI` is exact (Cody and Waite).
    let r = x - n * LN2_HI;
    let r = r - n * LN2_LO;
    (r, f64::from_bits(bits as u64))
}

/// `e^x` for f64: inputs beyond the range of finite results saturate to 0 and ∞.
#[inline(always)]
pub fn exp(x: f64) -> f64 {
    // Clamp so 2^n stays a normal number; below -708 the result underflows to
    // (almost) 0, above 709.78 it overflows, as libm's does.
    let xc = x.clamp(-708.0, 709.0);
    let (r, scale) = reduce(xc);
    let y = (expm1_reduced(r) + 1.0) * scale;
    let y = if x > 709.782_712_893_384 {
        f64::INFINITY
    } else {
        y
    };
    let y = if x < -745.2 { 0.0 } else { y };
    if x.is_nan() { x } else { y }
}

/// `e^x - 1` for `-40 <= x <= 709` (not NaN): no checks.
#[inline(always)]
fn exp_m1_in_range(x: f64) -> f64 {
    let (r, scale) = reduce(x);
    let m = expm1_reduced(r);
    // 2^n (expm1(r) + 1) - 1 = 2^n expm1(r) + (2^n - 1); exact for n = 0.
    m * scale + (scale - 1.0)
}

/// `e^x - 1` for f64, accurate near 0.
#[inline(always)]
pub fn exp_m1(x: f64) -> f64 {
    let y = exp_m1_in_range(x.clamp(-40.0, 709.0));
    let y = if x > 709.782_712_893_384 {
        f64::INFINITY
    } else {
        y
    };
    if x.is_nan() { x } else { y }
}

/// `tanh(x)` for f64, as `e / (e + 2)` with `e = expm1(2|x|)`.
#[inline(always)]
pub fn tanh(x: f64) -> f64 {
    // Beyond 20, tanh is 1 to double precision.
    let a = x.abs().min(20.0);
    let e = exp_m1_in_range(2.0 * a);
    let t = e / (e + 2.0);
    if x.is_nan() { x } else { t.copysign(x) }
}

/// A kernel of this module, for [`map`] and [`map_inplace`].
pub trait Kernel {
    /// The kernel at one element.
    fn eval<A: crate::value::Real>(x: A) -> A;
}

macro_rules! kernel {
    ($($(#[$doc:meta])* $name:ident => $f:expr;)*) => {$(
        $(#[$doc])*
        pub struct $name;
        impl Kernel for $name {
            #[inline(always)]
            fn eval<A: crate::value::Real>(x: A) -> A {
                A::lit($f(x.as_f64()))
            }
        }
    )*};
}

kernel! {
    /// [`exp`].
    Exp => exp;
    /// [`exp_m1`].
    ExpM1 => exp_m1;
    /// [`tanh`].
    Tanh => tanh;
}

#[inline(always)]
fn each<K: Kernel, A: crate::value::Real>(xs: &[A], out: &mut [A]) {
    for (o, &x) in out.iter_mut().zip(xs) {
        *o = K::eval(x);
    }
}

#[inline(always)]
fn each_inplace<K: Kernel, A: crate::value::Real>(xs: &mut [A]) {
    for x in xs.iter_mut() {
        *x = K::eval(*x);
    }
}

/// Declares a function that runs `$body` (a loop over slices) with the widest vector
/// instructions the CPU supports.
macro_rules! dispatch {
    ($(#[$doc:meta])* fn $name:ident<K, A>($($arg:ident: $ty:ty),*) => $body:ident) => {
        $(#[$doc])*
        pub fn $name<K: Kernel, A: crate::value::Real>($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512<K: Kernel, A: crate::value::Real>($($arg: $ty),*) {
                    $body::<K, A>($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                fn avx2<K: Kernel, A: crate::value::Real>($($arg: $ty),*) {
                    $body::<K, A>($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: `avx512` is plain Rust compiled for the avx512f target
                    // feature, which this CPU has: checked on the line above.
                    return unsafe { avx512::<K, A>($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: as above, for avx2, checked on the line above.
                    return unsafe { avx2::<K, A>($($arg),*) };
                }
            }
            $body::<K, A>($($arg),*)
        }
    };
}

dispatch! {
    /// `out[i] = K(xs[i])` over the common length.
    fn map<K, A>(xs: &[A], out: &mut [A]) => each
}

dispatch! {
    /// `xs[i] = K(xs[i])`.
    fn map_inplace<K, A>(xs: &mut [A]) => each_inplace
}

/// `K` of every element of `x`, as a new array.
pub fn mapped<
    K: Kernel,
    A: crate::value::Real,
    S: ndarray::Data<Elem = A>,
    D: ndarray::Dimension,
>(
    x: &ndarray::ArrayBase<S, D>,
) -> ndarray::Array<A, D> {
    match x.as_slice() {
        Some(xs) => {
            let mut out = vec![A::zero(); xs.len()];
            map::<K, A>(xs, &mut out);
            ndarray::Array::from_shape_vec(x.raw_dim(), out).unwrap_or_else(|_| x.mapv(K::eval))
        }
        None => x.mapv(K::eval),
    }
}

/// `K` of every element of `x`, in place.
pub fn in_place<K: Kernel, A: crate::value::Real, D: ndarray::Dimension>(
    x: &mut ndarray::Array<A, D>,
) {
    match x.as_slice_memory_order_mut() {
        Some(xs) => map_inplace::<K, A>(xs),
        None => x.mapv_inplace(K::eval),
    }
}

#[cfg(test)]
mod tests {
    /// The largest relative error of `f` against `reference` over `xs`.
    fn max_rel(
        f: impl Fn(f64) -> f64,
        reference: impl Fn(f64) -> f64,
        xs: impl Iterator<Item = f64>,
    ) -> f64 {
        xs.map(|x| {
            let (got, want) = (f(x), reference(x));
            if want == 0.0 {
                got.abs()
            } else {
                ((got - want) / want).abs()
            }
        })
        .fold(0.0, f64::max)
    }

    fn sweep(lo: f64, hi: f64, n: usize) -> impl Iterator<Item = f64> {
        (0..=n).map(move |i| lo + (hi - lo) * i as f64 / n as f64)
    }

    #[test]
    fn exp_is_within_4e16_of_libm() {
        let err = max_rel(
            super::exp,
            f64::exp,
            sweep(-700.0, 700.0, 1_000_003).chain(sweep(-1.0, 1.0, 100_001)),
        );
        assert!(err < 4e-16, "max relative error {err:e}");
        assert_eq!(super::exp(0.0), 1.0);
        assert_eq!(super::exp(800.0), f64::INFINITY);
        assert_eq!(super::exp(-800.0), 0.0);
        assert!(super::exp(f64::NAN).is_nan());
    }

    #[test]
    fn exp_m1_is_within_4e16_of_libm() {
        let err = max_rel(
            super::exp_m1,
            f64::exp_m1,
            sweep(-50.0, 700.0, 1_000_003).chain(sweep(-1e-3, 1e-3, 100_001)),
        );
        assert!(err < 4e-16, "max relative error {err:e}");
        assert_eq!(super::exp_m1(-100.0), -1.0);
    }

    #[test]
    fn tanh_is_within_6e16_of_libm() {
        let err = max_rel(
            super::tanh,
            f64::tanh,
            sweep(-30.0, 30.0, 1_000_003).chain(sweep(-1e-4, 1e-4, 100_001)),
        );
        assert!(err < 6e-16, "max relative error {err:e}");
        assert_eq!(super::tanh(1e3), 1.0);
        assert_eq!(super::tanh(-1e3), -1.0);
        assert!(super::tanh(f64::NAN).is_nan());
    }

    #[test]
    fn every_vector_width_gives_the_same_bits() {
        let xs: Vec<f64> = sweep(-30.0, 30.0, 10_007).collect();
        let mut out = vec![0.0; xs.len()];
        super::map::<super::Tanh, f64>(&xs, &mut out);
        for (x, y) in xs.iter().zip(&out) {
            assert_eq!(y.to_bits(), super::tanh(*x).to_bits(), "tanh({x})");
        }
        let mut inplace = xs.clone();
        super::map_inplace::<super::Exp, f64>(&mut inplace);
        for (x, y) in xs.iter().zip(&inplace) {
            assert_eq!(y.to_bits(), super::exp(*x).to_bits(), "exp({x})");
        }
        let xf: Vec<f32> = xs.iter().map(|&x| x as f32).collect();
        let mut of = vec![0.0f32; xf.len()];
        super::map::<super::ExpM1, f32>(&xf, &mut of);
        for (x, y) in xf.iter().zip(&of) {
            assert_eq!(*y, super::exp_m1(*x as f64) as f32, "exp_m1({x})");
        }
    }

    #[test]
    fn f32_through_f64_is_within_one_ulp_of_correctly_rounded() {
        for i in 0..=200_000 {
            let x = -20.0f32 + 40.0 * i as f32 / 200_000.0;
            let got = super::tanh(x as f64) as f32;
            // libm's tanhf is itself up to two ulps off; compare with the f64 result rounded.
            let want = (x as f64).tanh() as f32;
            let ulp = (want.abs() * f32::EPSILON).max(f32::MIN_POSITIVE);
            assert!((got - want).abs() <= ulp, "tanh({x}) = {got}, libm {want}");
        }
    }
}
