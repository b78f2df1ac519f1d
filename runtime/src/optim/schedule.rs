//! Schedules: a value (a learning rate, a weight decay) as a function of the step
//! count, as optax's `optax.schedules`, with optax's formulas and arithmetic.
//!
//! optax counts steps in `int32`, and JAX's type promotion then computes some
//! schedules in `float32` even under `jax_enable_x64`: `linear_schedule`,
//! `polynomial_schedule` and `exponential_decay` are `float32` computations, and a
//! join of schedules is `float32` if one of them is (`warmup_cosine_decay_schedule`
//! rounds its cosine part to `float32`), while `cosine_decay_schedule`,
//! `piecewise_constant_schedule` and constants are `float64`. The functions here do
//! the same operations in the same precision, so that a run gives optax's numbers.

use std::fmt;
use std::sync::Arc;

/// A value as a function of the step (counted from 0): a constant (any `f64`
/// converts into one) or one of the constructors here (or any
/// `Fn(u64) -> f64`, through [`Schedule::new`]).
///
/// As optax's: optax counts steps in `int32`, and JAX then computes
/// `linear_schedule`, `polynomial_schedule` and `exponential_decay` in `float32`
/// even under `jax_enable_x64`; a join of schedules is `float32` if one of them is
/// (`warmup_cosine_decay_schedule`); `cosine_decay_schedule`,
/// `piecewise_constant_schedule` and constants are `float64`. These do the same
/// operations in the same precision, so a run gives optax's numbers bit for bit.
///
/// ```
/// use adjoint::optim::{Schedule, linear_schedule};
/// let s = linear_schedule(1.0, 0.0, 4, 0);
/// assert_eq!((s.at(0), s.at(2), s.at(9)), (1.0, 0.5, 0.0));
/// assert_eq!(Schedule::from(0.1).at(1000), 0.1);
/// ```
#[derive(Clone)]
pub struct Schedule {
    f: Arc<dyn Fn(u64) -> f64 + Send + Sync>,
    /// Its values are `float32`'s (rounded so when joined with others).
    single: bool,
}

impl Schedule {
    /// A schedule computing `f(step)` in `f64`.
    pub fn new(f: impl Fn(u64) -> f64 + Send + Sync + 'static) -> Self {
        Schedule {
            f: Arc::new(f),
            single: false,
        }
    }

    /// A schedule computing `f(step)` in `f32`, as optax's integer-count schedules.
    fn single(f: impl Fn(u64) -> f32 + Send + Sync + 'static) -> Self {
        Schedule {
            f: Arc::new(move |step| f(step) as f64),
            single: true,
        }
    }

    /// The value at `step`.
    pub fn at(&self, step: u64) -> f64 {
        (self.f)(step)
    }
}

/// An optax count as `float32` (counts are `int32`).
fn count32(c: u64) -> f32 {
    c.min(i32::MAX as u64) as f32
}

impl From<f64> for Schedule {
    fn from(v: f64) -> Self {
        constant_schedule(v)
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule(at 0: {})", self.at(0))
    }
}

/// `value` at every step.
///
/// ```
/// assert_eq!(adjoint::optim::constant_schedule(0.5).at(7), 0.5);
/// ```
pub fn constant_schedule(value: f64) -> Schedule {
    Schedule::new(move |_| value)
}

/// From `init_value` to `end_value` over `transition_steps` steps after
/// `transition_begin`, as `(init - end) (1 - t / steps)^power + end` (optax's
/// `polynomial_schedule`, in `float32`); constant `init_value` when
/// `transition_steps` is 0.
///
/// ```
/// let s = adjoint::optim::polynomial_schedule(1.0, 0.0, 2.0, 4, 0);
/// assert_eq!(s.at(2), 0.25);
/// ```
pub fn polynomial_schedule(
    init_value: f64,
    end_value: f64,
    power: f64,
    transition_steps: u64,
    transition_begin: u64,
) -> Schedule {
    if transition_steps == 0 {
        return constant_schedule(init_value);
    }
    let (delta, end) = ((init_value - end_value) as f32, end_value as f32);
    Schedule::single(move |step| {
        let t = count32(step.saturating_sub(transition_begin).min(transition_steps));
        let frac = 1.0f32 - t / count32(transition_steps);
        // A Python int power is an integer power; a float one, `pow`.
        let scaled = if power == power.trunc() && power.abs() < 64.0 {
            frac.powi(power as i32)
        } else {
            frac.powf(power as f32)
        };
        delta * scaled + end
    })
}

/// [`polynomial_schedule`] of power 1 (optax's `linear_schedule`).
///
/// ```
/// assert_eq!(adjoint::optim::linear_schedule(0.0, 1.0, 10, 0).at(5), 0.5);
/// ```
pub fn linear_schedule(
    init_value: f64,
    end_value: f64,
    transition_steps: u64,
    transition_begin: u64,
) -> Schedule {
    polynomial_schedule(
        init_value,
        end_value,
        1.0,
        transition_steps,
        transition_begin,
    )
}

/// `init_value` times the scale of every boundary the step has reached (optax's
/// `piecewise_constant_schedule`: `(boundary, scale)` pairs).
///
/// ```
/// let s = adjoint::optim::piecewise_constant_schedule(1.0, &[(2, 0.5), (4, 0.1)]);
/// assert_eq!((s.at(1), s.at(2), s.at(5)), (1.0, 0.5, 0.05));
/// ```
pub fn piecewise_constant_schedule(
    init_value: f64,
    boundaries_and_scales: &[(u64, f64)],
) -> Schedule {
    let mut pairs = boundaries_and_scales.to_vec();
    pairs.sort_by_key(|&(b, _)| b);
    Schedule::new(move |step| {
        pairs
            .iter()
            .filter(|&&(b, _)| step >= b)
            .fold(init_value, |v, &(_, s)| v * s)
    })
}

/// `init_value · decay_rate^((step - transition_begin) / transition_steps)` (floored
/// with `staircase`), bounded by `end_value` if given (optax's
/// `exponential_decay`, in `float32`).
///
/// ```
/// let s = adjoint::optim::exponential_decay(1.0, 2, 0.5, 0, false, None);
/// assert_eq!((s.at(0), s.at(2), s.at(4)), (1.0, 0.5, 0.25));
/// ```
pub fn exponential_decay(
    init_value: f64,
    transition_steps: u64,
    decay_rate: f64,
    transition_begin: u64,
    staircase: bool,
    end_value: Option<f64>,
) -> Schedule {
    if transition_steps == 0 || decay_rate == 0.0 {
        return constant_schedule(init_value);
    }
    let (init, rate) = (init_value as f32, decay_rate as f32);
    Schedule::single(move |step| {
        let decreased = step as i64 - transition_begin as i64;
        let mut p =
            decreased.clamp(i32::MIN as i64, i32::MAX as i64) as f32 / count32(transition_steps);
        if staircase {
            p = p.floor();
        }
        let v = if decreased <= 0 {
            init
        } else {
            init * rate.powf(p)
        };
        match end_value {
            Some(e) if decay_rate < 1.0 => v.max(e as f32),
            Some(e) => v.min(e as f32),
            None => v,
        }
    })
}

/// Cosine decay from `init_value` to `alpha · init_value` over `decay_steps`
/// (optax's `cosine_decay_schedule`, with `exponent`).
///
/// ```
/// let s = adjoint::optim::cosine_decay_schedule(1.0, 10, 0.0, 1.0);
/// assert!((s.at(5) - 0.5).abs() < 1e-15 && s.at(10) == 0.0);
/// ```
pub fn cosine_decay_schedule(
    init_value: f64,
    decay_steps: u64,
    alpha: f64,
    exponent: f64,
) -> Schedule {
    let steps = decay_steps.max(1) as f64;
    Schedule::new(move |step| {
        let t = (step as f64).min(steps);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * t / steps).cos());
        init_value * ((1.0 - alpha) * cosine.powf(exponent) + alpha)
    })
}

/// `schedules[i]` from `boundaries[i - 1]` on (counting its steps from there), as
/// optax's `join_schedules`.
///
/// ```
/// use adjoint::optim::{constant_schedule, join_schedules, linear_schedule};
/// let s = join_schedules(vec![constant_schedule(1.0), linear_schedule(1.0, 0.0, 2, 0)], vec![3]);
/// assert_eq!((s.at(2), s.at(3), s.at(4)), (1.0, 1.0, 0.5));
/// ```
pub fn join_schedules(schedules: Vec<Schedule>, boundaries: Vec<u64>) -> Schedule {
    // `float32` if one of them is (JAX's promotion in `jnp.where`).
    let single = schedules.iter().any(|s| s.single);
    let f = move |step| {
        let mut out = schedules.first().map_or(0.0, |s| s.at(step));
        for (b, s) in boundaries.iter().zip(schedules.iter().skip(1)) {
            if step >= *b {
                out = s.at(step - b);
            }
        }
        out
    };
    if single {
        Schedule::single(move |step| f(step) as f32)
    } else {
        Schedule::new(f)
    }
}

/// A linear warmup from `init_value` to `peak_value` over `warmup_steps`, then a
/// cosine decay to `end_value` at `decay_steps` (counted from 0, warmup included):
/// optax's `warmup_cosine_decay_schedule` (in `float32`, as optax's: see the
/// [`Schedule`]).
///
/// ```
/// let s = adjoint::optim::warmup_cosine_decay_schedule(0.0, 0.05, 2, 6, 0.001, 1.0);
/// assert_eq!(s.at(1), 0.025f32 as f64); // optax: 0.02500000037252903
/// ```
pub fn warmup_cosine_decay_schedule(
    init_value: f64,
    peak_value: f64,
    warmup_steps: u64,
    decay_steps: u64,
    end_value: f64,
    exponent: f64,
) -> Schedule {
    let alpha = if peak_value == 0.0 {
        0.0
    } else {
        end_value / peak_value
    };
    join_schedules(
        vec![
            linear_schedule(init_value, peak_value, warmup_steps, 0),
            cosine_decay_schedule(
                peak_value,
                decay_steps.saturating_sub(warmup_steps),
                alpha,
                exponent,
            ),
        ],
        vec![warmup_steps],
    )
}
