//! Initializers, as `flax.linen.initializers` (JAX's `jax.nn.initializers`), with the
//! same fan-in/fan-out conventions: the input axis is the second to last, the output
//! axis the last, and other axes form the receptive field.

use ndarray::{ArrayD, IxDyn};
use rand_distr::{Distribution, StandardNormal, Uniform};

/// The random generator of initializers and `make_rng`: ChaCha8, reproducible across
/// platforms for a given seed.
///
/// ```
/// use adjoint::init::{self, Initializer};
/// use rand::SeedableRng;
/// let mut rng = init::Rng::seed_from_u64(0);
/// let w = init::lecun_normal().sample(&mut rng, &[3, 4]);
/// assert_eq!(w.shape(), &[3, 4]);
/// ```
pub type Rng = rand_chacha::ChaCha8Rng;

/// Produces a parameter's initial value from a random generator and a shape.
///
/// ```
/// use adjoint::init::{self, Initializer};
/// use rand::SeedableRng;
/// let mut rng = init::Rng::seed_from_u64(0);
/// // Any function of the generator and the shape is an initializer too.
/// let eye = |_: &mut init::Rng, s: &[usize]| ndarray::ArrayD::from_shape_fn(s, |i| (i[0] == i[1]) as u8 as f64);
/// assert_eq!(eye.sample(&mut rng, &[2, 2]), ndarray::arr2(&[[1.0, 0.0], [0.0, 1.0]]).into_dyn());
/// ```
pub trait Initializer {
    /// An array of `shape` (`[]` for a scalar).
    fn sample(&self, rng: &mut Rng, shape: &[usize]) -> ArrayD<f64>;
}

impl<F: Fn(&mut Rng, &[usize]) -> ArrayD<f64>> Initializer for F {
    fn sample(&self, rng: &mut Rng, shape: &[usize]) -> ArrayD<f64> {
        self(rng, shape)
    }
}

/// An initializer a layer holds (its `kernel_init`, `bias_init`): any
/// [`Initializer`], shared, so that layers stay cheap to clone.
///
/// ```
/// use adjoint::init::{self, Init, Initializer};
/// use rand::SeedableRng;
/// let kernel_init = Init::new(init::glorot_uniform());
/// let w = kernel_init.sample(&mut init::Rng::seed_from_u64(0), &[2, 3]);
/// assert_eq!(w.shape(), &[2, 3]);
/// ```
#[derive(Clone)]
pub struct Init(std::sync::Arc<dyn Initializer + Send + Sync>);

impl Init {
    /// Holds `init`.
    ///
    /// ```
    /// use adjoint::init::{self, Init, Initializer};
    /// use rand::SeedableRng;
    /// let ones = Init::new(init::ones);
    /// assert_eq!(ones.sample(&mut init::Rng::seed_from_u64(0), &[2]).sum(), 2.0);
    /// ```
    pub fn new(init: impl Initializer + Send + Sync + 'static) -> Self {
        Init(std::sync::Arc::new(init))
    }
}

impl Initializer for Init {
    fn sample(&self, rng: &mut Rng, shape: &[usize]) -> ArrayD<f64> {
        self.0.sample(rng, shape)
    }
}

impl std::fmt::Debug for Init {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Init(..)")
    }
}

/// A random orthogonal matrix times `scale`, as JAX's `orthogonal()` (Flax's
/// default for recurrent kernels): the last axis is the columns, the others the
/// rows; the smaller side is orthonormal (`QᵀQ = I` for a tall matrix, `QQᵀ = I`
/// for a wide one). From a standard normal matrix by QR, with `R`'s diagonal
/// positive.
///
/// ```
/// use adjoint::init::{self, Initializer};
/// use rand::SeedableRng;
/// let q = init::orthogonal(1.0).sample(&mut init::Rng::seed_from_u64(0), &[4, 4]);
/// let q = q.into_dimensionality::<ndarray::Ix2>().unwrap();
/// let eye = q.t().dot(&q);
/// assert!(eye.indexed_iter().all(|((i, j), &v)| (v - (i == j) as u8 as f64).abs() < 1e-12));
/// ```
pub fn orthogonal(scale: f64) -> Orthogonal {
    Orthogonal(scale)
}

/// See [`orthogonal`]: `Orthogonal(scale)`.
///
/// ```
/// use adjoint::init::{self, Initializer};
/// use rand::SeedableRng;
/// let mut rng = init::Rng::seed_from_u64(0);
/// assert_eq!(init::Orthogonal(2.0).sample(&mut rng, &[3, 3]).shape(), &[3, 3]);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Orthogonal(pub f64);

impl Initializer for Orthogonal {
    fn sample(&self, rng: &mut Rng, shape: &[usize]) -> ArrayD<f64> {
        let cols = shape.last().copied().unwrap_or(1);
        let rows = shape.iter().product::<usize>() / cols.max(1);
        let (m, n) = if rows < cols {
            (cols, rows)
        } else {
            (rows, cols)
        };
        // Columns of a standard normal m x n matrix, orthonormalized in order
        // (modified Gram-Schmidt: R's diagonal comes out positive).
        let mut q: Vec<Vec<f64>> = (0..n)
            .map(|_| (0..m).map(|_| StandardNormal.sample(rng)).collect())
            .collect();
        for j in 0..n {
            for k in 0..j {
                let (done, rest) = q.split_at_mut(j);
                let d: f64 = done[k].iter().zip(&rest[0]).map(|(a, b)| a * b).sum();
                rest[0]
                    .iter_mut()
                    .zip(&done[k])
                    .for_each(|(v, u)| *v -= d * u);
            }
            let norm = q[j]
                .iter()
                .map(|v| v * v)
                .sum::<f64>()
                .sqrt()
                .max(f64::MIN_POSITIVE);
            q[j].iter_mut().for_each(|v| *v /= norm);
        }
        // Element (r, c) of the rows x cols result.
        let at = |r: usize, c: usize| if rows < cols { q[r][c] } else { q[c][r] };
        let flat: Vec<f64> = (0..rows * cols)
            .map(|i| self.0 * at(i / cols, i % cols))
            .collect();
        ArrayD::from_shape_vec(IxDyn(shape), flat).unwrap_or_else(|_| ArrayD::zeros(IxDyn(shape)))
    }
}

/// `init` sampled as the matrix `(rows, cols)` and reshaped to the shape asked for,
/// as Flax's `DenseGeneral` initializes a kernel of shape `(in.., out..)`: the fans
/// are the matrix's, `rows` in and `cols` out.
///
/// ```
/// use adjoint::init::{self, Init, Initializer};
/// use rand::SeedableRng;
/// let k = init::flattened(Init::new(init::lecun_normal()), 6, 8)
///     .sample(&mut init::Rng::seed_from_u64(0), &[6, 2, 4]);
/// assert_eq!(k.shape(), &[6, 2, 4]);
/// ```
pub fn flattened(init: Init, rows: usize, cols: usize) -> Flattened {
    Flattened { init, rows, cols }
}

/// See [`flattened`].
///
/// ```
/// use adjoint::init::{self, Initializer};
/// use rand::SeedableRng;
/// let mut rng = init::Rng::seed_from_u64(0);
/// let k = init::flattened(init::Init::new(init::ones), 2, 6).sample(&mut rng, &[2, 3, 2]);
/// assert_eq!(k.shape(), &[2, 3, 2]);
/// ```
#[derive(Clone, Debug)]
pub struct Flattened {
    init: Init,
    rows: usize,
    cols: usize,
}

impl Initializer for Flattened {
    fn sample(&self, rng: &mut Rng, shape: &[usize]) -> ArrayD<f64> {
        let m = self.init.sample(rng, &[self.rows, self.cols]);
        match m.into_shape_with_order(IxDyn(shape)) {
            Ok(k) => k,
            // Another element count than the matrix's: the shape asked for, sampled
            // as is (the scope then reports the mismatch, if any).
            Err(_) => self.init.sample(rng, shape),
        }
    }
}

/// All zeros.
///
/// ```
/// use adjoint::init::{self, Initializer};
/// use rand::SeedableRng;
/// let mut rng = init::Rng::seed_from_u64(0);
/// assert!(init::zeros.sample(&mut rng, &[2]).iter().all(|&v| v == 0.0));
/// ```
#[allow(non_upper_case_globals)]
pub const zeros: Constant = Constant(0.0);

/// All ones.
///
/// ```
/// use adjoint::init::{self, Initializer};
/// use rand::SeedableRng;
/// let mut rng = init::Rng::seed_from_u64(0);
/// assert!(init::ones.sample(&mut rng, &[2]).iter().all(|&v| v == 1.0));
/// ```
#[allow(non_upper_case_globals)]
pub const ones: Constant = Constant(1.0);

/// Every element `value`.
///
/// ```
/// use adjoint::init::{self, Initializer};
/// use rand::SeedableRng;
/// let mut rng = init::Rng::seed_from_u64(0);
/// assert_eq!(init::Constant(0.5).sample(&mut rng, &[2]).sum(), 1.0);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Constant(pub f64);

/// Every element `value` (Flax's `constant`).
///
/// ```
/// use adjoint::init::{self, Initializer};
/// use rand::SeedableRng;
/// let mut rng = init::Rng::seed_from_u64(0);
/// assert!(init::constant(0.5).sample(&mut rng, &[3]).iter().all(|&v| v == 0.5));
/// ```
pub fn constant(value: f64) -> Constant {
    Constant(value)
}

impl Initializer for Constant {
    fn sample(&self, _: &mut Rng, shape: &[usize]) -> ArrayD<f64> {
        ArrayD::from_elem(IxDyn(shape), self.0)
    }
}

/// Normal with mean 0 and standard deviation `stddev` (Flax's default: 1e-2).
///
/// ```
/// use adjoint::init::{self, Initializer};
/// use rand::SeedableRng;
/// let mut rng = init::Rng::seed_from_u64(0);
/// assert_eq!(init::Normal(0.0).sample(&mut rng, &[3]).sum(), 0.0);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Normal(pub f64);

/// Normal with mean 0 and standard deviation `stddev`.
///
/// ```
/// use adjoint::init::{self, Initializer};
/// use rand::SeedableRng;
/// let mut rng = init::Rng::seed_from_u64(0);
/// let w = init::normal(1e-2).sample(&mut rng, &[1000]);
/// let sd = (w.mapv(|v| v * v).sum() / 1000.0).sqrt();
/// assert!((sd - 1e-2).abs() < 2e-3);
/// ```
pub fn normal(stddev: f64) -> Normal {
    Normal(stddev)
}

impl Initializer for Normal {
    fn sample(&self, rng: &mut Rng, shape: &[usize]) -> ArrayD<f64> {
        ArrayD::from_shape_simple_fn(IxDyn(shape), || {
            let z: f64 = StandardNormal.sample(rng);
            self.0 * z
        })
    }
}

/// Uniform on `[0, scale)` (Flax's default scale: 1e-2).
///
/// ```
/// use adjoint::init::{self, Initializer};
/// use rand::SeedableRng;
/// let mut rng = init::Rng::seed_from_u64(0);
/// assert!(init::UniformInit(0.5).sample(&mut rng, &[9]).iter().all(|&v| (0.0..0.5).contains(&v)));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct UniformInit(pub f64);

/// Uniform on `[0, scale)`.
///
/// ```
/// use adjoint::init::{self, Initializer};
/// use rand::SeedableRng;
/// let mut rng = init::Rng::seed_from_u64(0);
/// assert!(init::uniform(0.5).sample(&mut rng, &[100]).iter().all(|&v| (0.0..0.5).contains(&v)));
/// ```
pub fn uniform(scale: f64) -> UniformInit {
    UniformInit(scale)
}

impl Initializer for UniformInit {
    fn sample(&self, rng: &mut Rng, shape: &[usize]) -> ArrayD<f64> {
        uniform_array(rng, shape, 0.0, self.0)
    }
}

/// Normal truncated to two standard deviations, then scaled by `stddev`.
///
/// ```
/// use adjoint::init::{self, Initializer};
/// use rand::SeedableRng;
/// let mut rng = init::Rng::seed_from_u64(0);
/// assert!(init::TruncatedNormal(0.1).sample(&mut rng, &[9]).iter().all(|&v| v.abs() <= 0.2));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct TruncatedNormal(pub f64);

/// Normal truncated to `[-2, 2]`, scaled by `stddev` (Flax's `truncated_normal`).
///
/// ```
/// use adjoint::init::{self, Initializer};
/// use rand::SeedableRng;
/// let mut rng = init::Rng::seed_from_u64(0);
/// assert!(init::truncated_normal(1.0).sample(&mut rng, &[100]).iter().all(|&v| v.abs() <= 2.0));
/// ```
pub fn truncated_normal(stddev: f64) -> TruncatedNormal {
    TruncatedNormal(stddev)
}

impl Initializer for TruncatedNormal {
    fn sample(&self, rng: &mut Rng, shape: &[usize]) -> ArrayD<f64> {
        ArrayD::from_shape_simple_fn(IxDyn(shape), || self.0 * truncated(rng))
    }
}

fn truncated(rng: &mut Rng) -> f64 {
    loop {
        let v: f64 = StandardNormal.sample(rng);
        if (-2.0..=2.0).contains(&v) {
            return v;
        }
    }
}

fn uniform_array(rng: &mut Rng, shape: &[usize], lo: f64, hi: f64) -> ArrayD<f64> {
    match Uniform::new(lo, hi) {
        Ok(u) => ArrayD::from_shape_simple_fn(IxDyn(shape), || u.sample(rng)),
        // An empty range (scale 0): every element is `lo`.
        Err(_) => ArrayD::from_elem(IxDyn(shape), lo),
    }
}

/// Which fan the variance divides by.
///
/// ```
/// use adjoint::init::{self, Dist, FanMode};
/// assert_eq!(init::he_normal().mode, FanMode::FanIn);
/// let avg = init::variance_scaling(1.0, FanMode::FanAvg, Dist::Uniform);
/// assert_eq!(avg.mode, init::glorot_uniform().mode);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FanMode {
    FanIn,
    FanOut,
    FanAvg,
}

/// Which distribution the variance scaling samples.
///
/// ```
/// use adjoint::init::{self, Dist};
/// assert_eq!(init::lecun_normal().distribution, Dist::TruncatedNormal);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Distribution_ {
    TruncatedNormal,
    Normal,
    Uniform,
}

pub use Distribution_ as Dist;

/// JAX's `variance_scaling(scale, mode, distribution)`.
///
/// ```
/// let he = adjoint::init::he_uniform();
/// assert_eq!(he.scale, 2.0);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct VarianceScaling {
    pub scale: f64,
    pub mode: FanMode,
    pub distribution: Dist,
}

/// The variance-scaling family that `lecun_*`, `glorot_*` and `he_*` are made of.
///
/// ```
/// use adjoint::init::{self, Initializer};
/// use rand::SeedableRng;
/// let mut rng = init::Rng::seed_from_u64(0);
/// use init::{Dist, FanMode};
/// let he = init::variance_scaling(2.0, FanMode::FanIn, Dist::Uniform);
/// // Uniform within sqrt(3 * 2 / fan_in).
/// let limit = (6.0f64 / 100.0).sqrt();
/// assert!(he.sample(&mut rng, &[100, 10]).iter().all(|&v| v.abs() <= limit));
/// ```
pub fn variance_scaling(scale: f64, mode: FanMode, distribution: Dist) -> VarianceScaling {
    VarianceScaling {
        scale,
        mode,
        distribution,
    }
}

/// `(fan_in, fan_out)` of a shape: the second to last and last axes times the
/// receptive field (the product of the others).
///
/// ```
/// // A 3x3 convolution from 16 to 32 channels.
/// assert_eq!(adjoint::init::fans(&[3, 3, 16, 32]), (144.0, 288.0));
/// ```
pub fn fans(shape: &[usize]) -> (f64, f64) {
    match shape.len() {
        0 => (1.0, 1.0),
        1 => (shape[0] as f64, shape[0] as f64),
        n => {
            let receptive: usize = shape[..n - 2].iter().product();
            (
                (shape[n - 2] * receptive) as f64,
                (shape[n - 1] * receptive) as f64,
            )
        }
    }
}

impl Initializer for VarianceScaling {
    fn sample(&self, rng: &mut Rng, shape: &[usize]) -> ArrayD<f64> {
        let (fan_in, fan_out) = fans(shape);
        let denom = match self.mode {
            FanMode::FanIn => fan_in,
            FanMode::FanOut => fan_out,
            FanMode::FanAvg => (fan_in + fan_out) / 2.0,
        };
        let variance = self.scale / denom.max(1.0);
        match self.distribution {
            // The standard deviation of a standard normal truncated to [-2, 2].
            Dist::TruncatedNormal => {
                TruncatedNormal(variance.sqrt() / 0.879_625_661_034_239_8).sample(rng, shape)
            }
            Dist::Normal => Normal(variance.sqrt()).sample(rng, shape),
            Dist::Uniform => {
                let limit = (3.0 * variance).sqrt();
                uniform_array(rng, shape, -limit, limit)
            }
        }
    }
}

/// LeCun normal: variance `1 / fan_in`, truncated normal (Flax's default kernel init).
///
/// ```
/// use adjoint::init::{self, Initializer};
/// use rand::SeedableRng;
/// let mut rng = init::Rng::seed_from_u64(0);
/// let w = init::lecun_normal().sample(&mut rng, &[400, 300]);
/// let var = w.mapv(|v| v * v).sum() / w.len() as f64;
/// assert!((var * 400.0 - 1.0).abs() < 0.05);
/// ```
pub fn lecun_normal() -> VarianceScaling {
    variance_scaling(1.0, FanMode::FanIn, Dist::TruncatedNormal)
}

/// LeCun uniform: variance `1 / fan_in`, uniform.
///
/// ```
/// use adjoint::init::{self, Initializer};
/// use rand::SeedableRng;
/// let mut rng = init::Rng::seed_from_u64(0);
/// assert_eq!(init::lecun_uniform().sample(&mut rng, &[4, 3]).shape(), &[4, 3]);
/// ```
pub fn lecun_uniform() -> VarianceScaling {
    variance_scaling(1.0, FanMode::FanIn, Dist::Uniform)
}

/// Glorot (Xavier) normal: variance `2 / (fan_in + fan_out)`, truncated normal.
///
/// ```
/// use adjoint::init::{self, Initializer};
/// use rand::SeedableRng;
/// let mut rng = init::Rng::seed_from_u64(0);
/// assert_eq!(init::glorot_normal().sample(&mut rng, &[4, 3]).shape(), &[4, 3]);
/// ```
pub fn glorot_normal() -> VarianceScaling {
    variance_scaling(1.0, FanMode::FanAvg, Dist::TruncatedNormal)
}

/// Glorot (Xavier) uniform: variance `2 / (fan_in + fan_out)`, uniform.
///
/// ```
/// use adjoint::init::{self, Initializer};
/// use rand::SeedableRng;
/// let mut rng = init::Rng::seed_from_u64(0);
/// assert_eq!(init::glorot_uniform().sample(&mut rng, &[4, 3]).shape(), &[4, 3]);
/// ```
pub fn glorot_uniform() -> VarianceScaling {
    variance_scaling(1.0, FanMode::FanAvg, Dist::Uniform)
}

/// He (Kaiming) normal: variance `2 / fan_in`, truncated normal.
///
/// ```
/// use adjoint::init::{self, Initializer};
/// use rand::SeedableRng;
/// let mut rng = init::Rng::seed_from_u64(0);
/// assert_eq!(init::he_normal().sample(&mut rng, &[4, 3]).shape(), &[4, 3]);
/// ```
pub fn he_normal() -> VarianceScaling {
    variance_scaling(2.0, FanMode::FanIn, Dist::TruncatedNormal)
}

/// He (Kaiming) uniform: variance `2 / fan_in`, uniform.
///
/// ```
/// use adjoint::init::{self, Initializer};
/// use rand::SeedableRng;
/// let mut rng = init::Rng::seed_from_u64(0);
/// assert_eq!(init::he_uniform().sample(&mut rng, &[4, 3]).shape(), &[4, 3]);
/// ```
pub fn he_uniform() -> VarianceScaling {
    variance_scaling(2.0, FanMode::FanIn, Dist::Uniform)
}

pub use glorot_normal as xavier_normal;
pub use glorot_uniform as xavier_uniform;
pub use he_normal as kaiming_normal;
pub use he_uniform as kaiming_uniform;
