//! Pooling as Flax's `nn.avg_pool`, `nn.max_pool` and `nn.min_pool` compute it
//! (`lax.reduce_window` over the spatial axes): features last, any leading axes
//! batch axes, a `window` and `strides` per spatial axis, `'SAME'`, `'VALID'` or
//! explicit padding. `avg_pool` divides by the window's size, padding included
//! (Flax's default `count_include_pad=True`); `max_pool` pads with `-inf` and
//! `min_pool` with `+inf`.
//!
//! The maximum's pullback sends each cotangent to the first largest element of its
//! window (as XLA's `select_and_scatter`); its tangent picks the tangent there
//! ([`max_pool_tangent`]), which is linear in the tangent, so second order goes
//! through it.

use crate::rules::conv::{Padding, Windows, contiguous, row_major, shaped, split_shape};
use crate::value::{Real, Value};
use ndarray::{Array, ArrayBase, Data, Dimension};

/// A pooling's sizes: batch positions, features and the windows.
struct Pooling<const N: usize> {
    batch: usize,
    features: usize,
    windows: Windows<N>,
    out_shape: Vec<usize>,
}

impl<const N: usize> Pooling<N> {
    /// The pooling of an input of `shape`; `None` when it does not fit inside an
    /// `apply` that has already failed (see [`crate::scope::failed`]).
    ///
    /// # Panics
    /// When it does not fit otherwise.
    fn new(
        shape: &[usize],
        window: [usize; N],
        strides: [usize; N],
        padding: Padding<N>,
    ) -> Option<Pooling<N>> {
        let plan = || {
            let (batch, spatial, features) = split_shape::<N>(shape)?;
            for (what, v) in [("window", &window), ("strides", &strides)] {
                if v.contains(&0) {
                    return Err(crate::rules::conv::ConvError::Zero {
                        what,
                        value: v.to_vec(),
                    });
                }
            }
            let pads = padding.resolve(spatial, window, strides)?;
            let windows = Windows::new(spatial, window, strides, pads, [1; N], [1; N]);
            let lead = shape.len() - N - 1;
            let mut out_shape = shape[..lead].to_vec();
            out_shape.extend(windows.output);
            out_shape.push(features);
            Ok(Pooling {
                batch,
                features,
                windows,
                out_shape,
            })
        };
        match plan() {
            Ok(p) => Some(p),
            Err(_) if crate::scope::failed() => None,
            Err(e) => panic!("pool: {e}"),
        }
    }

    /// For each output row `(n, o)`: the input's rows its window reads.
    fn rows(&self) -> impl Iterator<Item = (usize, impl Iterator<Item = usize> + '_)> + '_ {
        let w = &self.windows;
        (0..self.batch * w.output_len()).map(move |row| {
            let (n, o) = (row / w.output_len(), row % w.output_len());
            let taps = w.taps[o * w.window_len..(o + 1) * w.window_len]
                .iter()
                .filter(|&&t| t != Windows::<N>::NONE)
                .map(move |&t| n * w.input_len + t);
            (row, taps)
        })
    }

    /// `reduce` over each window, feature by feature, from `init`.
    fn reduce<A: Real>(&self, x: &[A], init: A, reduce: impl Fn(A, A) -> A) -> Vec<A> {
        let c = self.features;
        let mut out = vec![init; self.batch * self.windows.output_len() * c];
        for (row, taps) in self.rows() {
            let dst = &mut out[row * c..(row + 1) * c];
            for at in taps {
                for (d, &v) in dst.iter_mut().zip(&x[at * c..(at + 1) * c]) {
                    *d = reduce(*d, v);
                }
            }
        }
        out
    }

    /// For each output element, the input element its window chose: the first one
    /// `better` than every other (`None` for a window entirely on padding).
    fn choices<A: Real>(&self, x: &[A], better: impl Fn(A, A) -> bool) -> Vec<Option<usize>> {
        let c = self.features;
        let mut best: Vec<Option<usize>> = vec![None; self.batch * self.windows.output_len() * c];
        for (row, taps) in self.rows() {
            let chosen = &mut best[row * c..(row + 1) * c];
            for at in taps {
                for (f, ch) in chosen.iter_mut().enumerate() {
                    let i = at * c + f;
                    if ch.is_none_or(|b| better(x[i], x[b])) {
                        *ch = Some(i);
                    }
                }
            }
        }
        best
    }
}

macro_rules! pooled {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// # Panics
        ///
        /// When `x` has fewer than `N + 1` axes, or a window or stride is zero, or
        /// the padding is causal over more than one axis.
        pub fn $name<const N: usize, X, A, S, D>(
            x: &X,
            window: [usize; N],
            strides: [usize; N],
            padding: Padding<N>,
        ) -> Array<A, D>
        where
            X: Value<Primal = ArrayBase<S, D>>,
            A: Real,
            S: Data<Elem = A>,
            D: Dimension,
        {
            let x = x.primal();
            let Some(pool) = Pooling::new(x.shape(), window, strides, padding) else {
                return Array::zeros(x.raw_dim());
            };
            let out = pool_values(&pool, &contiguous(x), stringify!($name));
            shaped(&pool.out_shape, out)
        }
    };
}

/// The pooled values of `x` for the named pooling.
fn pool_values<const N: usize, A: Real>(pool: &Pooling<N>, x: &[A], which: &str) -> Vec<A> {
    match which {
        "avg_pool" => {
            let size = A::lit(pool.windows.window_len as f64);
            let mut sums = pool.reduce(x, A::zero(), |a, b| a + b);
            sums.iter_mut().for_each(|v| *v /= size);
            sums
        }
        "max_pool" => pool.reduce(x, A::neg_infinity(), |a, b| if b > a { b } else { a }),
        _ => pool.reduce(x, A::infinity(), |a, b| if b < a { b } else { a }),
    }
}

pooled! {
    /// The mean of each window (Flax's `nn.avg_pool` with `count_include_pad=True`:
    /// padding counts as zeros).
    ///
    /// ```
    /// use adjoint::rules::conv::Padding;
    /// use adjoint::rules::pool::avg_pool;
    /// let x = ndarray::Array::from_shape_vec((1, 4, 1), vec![1.0, 2.0, 3.0, 5.0]).unwrap();
    /// let y = avg_pool(&x, [2], [2], Padding::Valid);
    /// assert_eq!(y.iter().copied().collect::<Vec<f64>>(), vec![1.5, 4.0]);
    /// ```
    avg_pool
}

pooled! {
    /// The largest element of each window (Flax's `nn.max_pool`).
    ///
    /// ```
    /// use adjoint::rules::conv::Padding;
    /// use adjoint::rules::pool::max_pool;
    /// let x = ndarray::Array::from_shape_vec((1, 4, 1), vec![1.0, 2.0, 3.0, 5.0]).unwrap();
    /// let y = max_pool(&x, [3], [1], Padding::Same);
    /// assert_eq!(y.iter().copied().collect::<Vec<f64>>(), vec![2.0, 3.0, 5.0, 5.0]);
    /// ```
    max_pool
}

pooled! {
    /// The smallest element of each window (Flax's `nn.min_pool`).
    min_pool
}

/// Pullback of [`avg_pool`]: each window's cotangent, divided by the window's
/// size, added to the elements it read.
pub fn avg_pool_pb<const N: usize, X, A, S, D>(
    x: &X,
    window: [usize; N],
    strides: [usize; N],
    padding: Padding<N>,
    ct: Array<A, D>,
) -> Array<A, D>
where
    X: Value<Primal = ArrayBase<S, D>>,
    A: Real,
    S: Data<Elem = A>,
    D: Dimension,
{
    let x = x.primal();
    let Some(pool) = Pooling::new(x.shape(), window, strides, padding) else {
        return Array::zeros(x.raw_dim());
    };
    let (c, size) = (pool.features, A::lit(pool.windows.window_len as f64));
    let ct = row_major(ct);
    let mut dx = vec![A::zero(); x.len()];
    for (row, taps) in pool.rows() {
        let g = &ct[row * c..(row + 1) * c];
        for at in taps {
            for (d, &v) in dx[at * c..(at + 1) * c].iter_mut().zip(g) {
                *d += v / size;
            }
        }
    }
    shaped(x.shape(), dx)
}

/// Sends each output's cotangent (or tangent) to the element its window chose.
fn scatter_to_choices<A: Real>(len: usize, choices: &[Option<usize>], g: &[A]) -> Vec<A> {
    let mut dx = vec![A::zero(); len];
    for (ch, &v) in choices.iter().zip(g) {
        if let Some(i) = ch {
            dx[*i] += v;
        }
    }
    dx
}

/// Gathers, for each output, the tangent at the element its window chose.
fn gather_choices<A: Real>(choices: &[Option<usize>], dx: &[A]) -> Vec<A> {
    choices
        .iter()
        .map(|ch| ch.map_or(A::zero(), |i| dx[i]))
        .collect()
}

macro_rules! chooser_rules {
    ($(#[$doc:meta])* $pb:ident, $tangent:ident, $tangent_pb_x:ident, $better:expr) => {
        $(#[$doc])*
        pub fn $pb<const N: usize, X, A, S, D>(
            x: &X,
            window: [usize; N],
            strides: [usize; N],
            padding: Padding<N>,
            ct: Array<A, D>,
        ) -> Array<A, D>
        where
            X: Value<Primal = ArrayBase<S, D>>,
            A: Real,
            S: Data<Elem = A>,
            D: Dimension,
        {
            let x = x.primal();
            let Some(pool) = Pooling::new(x.shape(), window, strides, padding) else {
                return Array::zeros(x.raw_dim());
            };
            let choices = pool.choices(&contiguous(x), $better);
            shaped(x.shape(), scatter_to_choices(x.len(), &choices, &row_major(ct)))
        }

        #[doc = concat!("The tangent of the pooling whose pullback is [`", stringify!($pb), "`]: the tangent `dx` at the element each window chose.")]
        pub fn $tangent<const N: usize, X, T, A, S, S2, D>(
            x: &X,
            dx: &T,
            window: [usize; N],
            strides: [usize; N],
            padding: Padding<N>,
        ) -> Array<A, D>
        where
            X: Value<Primal = ArrayBase<S, D>>,
            T: Value<Primal = ArrayBase<S2, D>>,
            A: Real,
            S: Data<Elem = A>,
            S2: Data<Elem = A>,
            D: Dimension,
        {
            let x = x.primal();
            let Some(pool) = Pooling::new(x.shape(), window, strides, padding) else {
                return Array::zeros(x.raw_dim());
            };
            let choices = pool.choices(&contiguous(x), $better);
            shaped(&pool.out_shape, gather_choices(&choices, &contiguous(dx.primal())))
        }

        #[doc = concat!("Pullback of [`", stringify!($tangent), "`] with respect to `x`: zero (the choice is piecewise constant).")]
        pub fn $tangent_pb_x<const N: usize, X, A, S, D>(
            x: &X,
            _window: [usize; N],
            _strides: [usize; N],
            _padding: Padding<N>,
            _ct: Array<A, D>,
        ) -> Array<A, D>
        where
            X: Value<Primal = ArrayBase<S, D>>,
            A: Real,
            S: Data<Elem = A>,
            D: Dimension,
        {
            Array::zeros(x.primal().raw_dim())
        }
    };
}

chooser_rules! {
    /// Pullback of [`max_pool`]: each window's cotangent to its first largest element.
    max_pool_pb, max_pool_tangent, max_pool_tangent_pb_x, |a: A, b: A| a > b
}

chooser_rules! {
    /// Pullback of [`min_pool`]: each window's cotangent to its first smallest element.
    min_pool_pb, min_pool_tangent, min_pool_tangent_pb_x, |a: A, b: A| a < b
}
