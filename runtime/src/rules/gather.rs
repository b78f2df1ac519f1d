//! Gathering rows by integer ids, as Flax's `nn.Embed` reads its table
//! (`jnp.take(embedding, ids, axis=0)`): the pullback adds each output row's
//! cotangent into the row it came from (a scatter-add), so only the rows read get a
//! gradient. Ids are constants; any integer type.

use crate::rules::conv::{contiguous, shaped};
use crate::value::{ArrayShape, Real, Value};
use ndarray::{Array, Array2, ArrayBase, Data, Dimension, Ix2};

/// An integer usable as a row index.
pub trait Id: Copy + std::fmt::Display {
    /// The row it names, if it names one (not negative, fits `usize`).
    fn row(self) -> Option<usize>;

    /// The index it names among `n`, counting negative ones from the end as numpy
    /// does (`-1` is the last), if in range.
    fn index_in(self, n: usize) -> Option<usize>;
}

macro_rules! ids {
    ($($t:ty),*) => {$(
        impl Id for $t {
            #[inline]
            fn row(self) -> Option<usize> {
                usize::try_from(self).ok()
            }

            #[inline]
            #[allow(unused_comparisons)]
            fn index_in(self, n: usize) -> Option<usize> {
                match self.row() {
                    Some(i) if i < n => Some(i),
                    Some(_) => None,
                    // Negative: from the end.
                    None => {
                        let back = (self as i128).unsigned_abs();
                        (back <= n as u128).then(|| n - back as usize)
                    }
                }
            }
        }
    )*};
}

ids!(usize, u8, u16, u32, u64, isize, i8, i16, i32, i64);

/// The first id that names no row of a table of `rows` rows, as an error message.
pub fn check_ids<I: Id, S: Data<Elem = I>, D: Dimension>(
    ids: &ArrayBase<S, D>,
    rows: usize,
) -> Result<(), String> {
    match ids.iter().find(|i| i.row().is_none_or(|r| r >= rows)) {
        Some(bad) => Err(format!(
            "id {bad} is out of range for a table of {rows} rows (ids of shape {:?})",
            ids.shape()
        )),
        None => Ok(()),
    }
}

/// The rows of `table` (`(rows, features)`) named by `ids`: an array of `ids`'s
/// shape with the features last.
///
/// # Panics
///
/// When an id names no row (see [`check_ids`] to check first).
///
/// ```
/// use adjoint::rules::gather::take;
/// use ndarray::array;
/// let table = array![[0.0, 1.0], [10.0, 11.0], [20.0, 21.0]];
/// assert_eq!(take(&table, &array![2usize, 0, 2]), array![[20.0, 21.0], [0.0, 1.0], [20.0, 21.0]]);
/// ```
pub fn take<X, A, S, I, S2, D>(table: &X, ids: &ArrayBase<S2, D>) -> Array<A, D::Larger>
where
    X: Value<Primal = ArrayBase<S, Ix2>>,
    A: Real,
    S: Data<Elem = A>,
    I: Id,
    S2: Data<Elem = I>,
    D: Dimension,
{
    let table = table.primal();
    check_ids(ids, table.nrows()).unwrap_or_else(|e| panic!("take: {e}"));
    let features = table.ncols();
    let mut out = Vec::with_capacity(ids.len() * features);
    for id in ids.iter() {
        let r = id.row().unwrap_or(0);
        out.extend(table.row(r).iter().copied());
    }
    let mut shape = ids.shape().to_vec();
    shape.push(features);
    shaped(&shape, out)
}

/// Pullback of [`take`] for the table: each row of the cotangent added into the row
/// it was read from.
pub fn take_pb<A, I, S2, D>(
    table: &ArrayShape<A, Ix2>,
    ids: &ArrayBase<S2, D>,
    ct: Array<A, D::Larger>,
) -> Array2<A>
where
    A: Real,
    I: Id,
    S2: Data<Elem = I>,
    D: Dimension,
{
    let (rows, features) = (table.0[0], table.0[1]);
    let mut grad = Array2::zeros((rows, features));
    let ct = contiguous(&ct);
    if features > 0 {
        for (id, g) in ids.iter().zip(ct.chunks_exact(features)) {
            if let Some(r) = id.row().filter(|&r| r < rows) {
                let mut row = grad.row_mut(r);
                row.iter_mut().zip(g).for_each(|(d, &v)| *d += v);
            }
        }
    }
    grad
}

/// `ids` one-hot encoded over `classes`, as JAX's `jax.nn.one_hot`: an array of
/// `ids`'s shape with the classes last, one where the class is the id; a row of
/// zeros for an id that names no class (negative ones included).
///
/// ```
/// use adjoint::nn::one_hot;
/// use ndarray::array;
/// let y = one_hot::<f64, _, _, _>(&array![2usize, 0, 7], 3);
/// assert_eq!(y, array![[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]);
/// ```
pub fn one_hot<A: Real, I: Id, S: Data<Elem = I>, D: Dimension>(
    ids: &ArrayBase<S, D>,
    classes: usize,
) -> Array<A, D::Larger> {
    let mut out = vec![A::zero(); ids.len() * classes];
    for (k, id) in ids.iter().enumerate() {
        if let Some(c) = id.row().filter(|&c| c < classes) {
            out[k * classes + c] = A::one();
        }
    }
    let mut shape = ids.shape().to_vec();
    shape.push(classes);
    shaped(&shape, out)
}
