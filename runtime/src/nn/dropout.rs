//! `Dropout`: Flax's `nn.Dropout`.

use crate::init::Rng;
use crate::scope::Scope;
use crate::value::Real;
use adjoint_macros::differentiable;
use ndarray::{Array, Dimension};
use rand::Rng as _;

/// Dropout, as Flax's `nn.Dropout`: in training (`deterministic: false`) each
/// element is kept with probability `1 - rate` and scaled by `1 / (1 - rate)`
/// (inverted dropout), the rest set to zero; the mask comes from the `dropout`
/// random stream (`rngs`), a new one at every call. Deterministic, or with rate 0,
/// it is the identity.
///
/// ```
/// use adjoint::prelude::*;
/// use adjoint::scope::ApplyOptions;
/// let x = ndarray::Array2::<f64>::ones((4, 5));
/// let drop = nn::Dropout::new(0.5);
/// let vars = drop.init(0, &x).unwrap();
/// let opts = ApplyOptions::new().rng("dropout", 7);
/// let (y, _) = drop.apply_with(&vars, &opts, &x).unwrap();
/// assert!(y.iter().all(|&v| v == 0.0 || v == 2.0));
/// // Without the stream, training dropout is a typed error naming it.
/// assert!(drop.apply(&vars, &x).is_err());
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Dropout {
    /// The probability of dropping an element.
    pub rate: f64,
    /// The identity (evaluation) instead of dropping.
    pub deterministic: bool,
    /// The random stream the mask comes from.
    pub rng_collection: &'static str,
}

impl Dropout {
    /// Training dropout with probability `rate`, from the `dropout` stream.
    ///
    /// ```
    /// use adjoint::nn::Dropout;
    /// assert_eq!(Dropout::new(0.1).rng_collection, "dropout");
    /// ```
    pub fn new(rate: f64) -> Self {
        Dropout {
            rate,
            deterministic: false,
            rng_collection: "dropout",
        }
    }

    /// The identity (`true`, evaluation) or dropping (`false`, training).
    ///
    /// ```
    /// use adjoint::nn::Dropout;
    /// assert!(Dropout::new(0.1).deterministic(true).deterministic);
    /// ```
    pub fn deterministic(mut self, yes: bool) -> Self {
        self.deterministic = yes;
        self
    }

    /// The random stream of the mask.
    ///
    /// ```
    /// use adjoint::nn::Dropout;
    /// assert_eq!(Dropout::new(0.1).rng_collection("noise").rng_collection, "noise");
    /// ```
    pub fn rng_collection(mut self, stream: &'static str) -> Self {
        self.rng_collection = stream;
        self
    }
}

/// The scaled keep-mask: `1 / keep` with probability `keep`, else zero.
fn mask<A: Real, D: Dimension>(mut rng: Rng, dim: D, keep: f64) -> Array<A, D> {
    let kept = if keep > 0.0 {
        A::lit(1.0 / keep)
    } else {
        A::zero()
    };
    Array::from_shape_simple_fn(dim, || {
        if rng.random::<f64>() < keep {
            kept
        } else {
            A::zero()
        }
    })
}

#[differentiable]
impl Dropout {
    /// The layer in the scope `cx`: what a parent module's `call` runs, and
    /// `init` and `apply` at the root.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let x = ndarray::Array2::<f64>::ones((2, 3));
    /// let layer = nn::Dropout::new(0.5).deterministic(true);
    /// let vars = layer.init(0, &x).unwrap();
    /// assert_eq!(layer.apply(&vars, &x).unwrap().shape(), &[2, 3]);
    /// ```
    pub fn call<A: Real, D: Dimension>(&self, cx: &mut Scope, x: &Array<A, D>) -> Array<A, D> {
        if self.rate == 0.0 || self.deterministic {
            return x.to_owned();
        }
        let keep = mask(
            cx.make_rng(self.rng_collection),
            x.raw_dim(),
            1.0 - self.rate,
        );
        x * &keep
    }
}
