//! Feeding a training loop: seeded shuffles, train/test splits, minibatches,
//! feature normalization, and readers for MNIST's IDX files and numeric CSV.
//!
//! ```
//! use adjoint::data;
//! let x = ndarray::Array2::from_shape_fn((10, 2), |(i, j)| (i * 2 + j) as f64);
//! let (train, test) = data::train_test_split(10, 0.2, 0);
//! assert_eq!((train.len(), test.len()), (8, 2));
//! let norm = data::Normalize::fit(&x.select(ndarray::Axis(0), &train));
//! for batch in data::batches(&data::shuffled(&train, 1), 3) {
//!     let xb = norm.apply(&x.select(ndarray::Axis(0), batch));
//!     assert!(xb.nrows() <= 3);
//! }
//! ```

use crate::init::Rng;
use ndarray::{Array1, Array2, ArrayBase, ArrayD, Axis, Data, Ix2, IxDyn};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use std::io::BufRead;

/// Why data could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read.
    #[error("`{path}`: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Bytes that are not an IDX file of unsigned bytes.
    #[error("not an IDX file of bytes: {0}")]
    Idx(String),
    /// A CSV line that is not a row of numbers like the others.
    #[error("line {line}: {reason}")]
    Csv { line: usize, reason: String },
}

/// `indices` in an order shuffled by `seed` (ChaCha8: the same order on every
/// platform).
///
/// ```
/// let a = adjoint::data::shuffled(&[0, 1, 2, 3], 7);
/// assert_eq!(a, adjoint::data::shuffled(&[0, 1, 2, 3], 7));
/// let mut sorted = a.clone();
/// sorted.sort();
/// assert_eq!(sorted, [0, 1, 2, 3]);
/// ```
pub fn shuffled(indices: &[usize], seed: u64) -> Vec<usize> {
    let mut out = indices.to_vec();
    out.shuffle(&mut Rng::seed_from_u64(seed));
    out
}

/// `0..n` split into a training and a test set at random (seeded), the test set
/// `test_fraction` of it (rounded), each in ascending order.
///
/// ```
/// let (train, test) = adjoint::data::train_test_split(100, 0.25, 3);
/// assert_eq!((train.len(), test.len()), (75, 25));
/// assert!(test.iter().all(|i| !train.contains(i)));
/// ```
pub fn train_test_split(n: usize, test_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let all: Vec<usize> = (0..n).collect();
    let order = shuffled(&all, seed);
    let n_test = ((n as f64) * test_fraction.clamp(0.0, 1.0)).round() as usize;
    let (test, train) = order.split_at(n_test.min(n));
    let (mut train, mut test) = (train.to_vec(), test.to_vec());
    train.sort_unstable();
    test.sort_unstable();
    (train, test)
}

/// `indices` in minibatches of `batch_size` (the last one smaller if they do not
/// divide; none for a batch size of 0).
///
/// ```
/// let b: Vec<&[usize]> = adjoint::data::batches(&[4, 5, 6, 7, 8], 2).collect();
/// assert_eq!(b, [&[4, 5][..], &[6, 7], &[8]]);
/// ```
pub fn batches(indices: &[usize], batch_size: usize) -> impl Iterator<Item = &[usize]> {
    indices
        .chunks(batch_size.max(1))
        .take(if batch_size == 0 { 0 } else { usize::MAX })
}

/// Per-feature standardization fitted on training data: `(x - mean) / std`, each
/// column by its own (a constant column is only centered).
#[derive(Clone, Debug, PartialEq)]
pub struct Normalize {
    /// The columns' means.
    pub mean: Array1<f64>,
    /// The columns' standard deviations (1 where a column is constant).
    pub std: Array1<f64>,
}

impl Normalize {
    /// The means and standard deviations of `x`'s columns.
    ///
    /// ```
    /// let n = adjoint::data::Normalize::fit(&ndarray::array![[1.0, 5.0], [3.0, 5.0]]);
    /// assert_eq!(n.mean, ndarray::array![2.0, 5.0]);
    /// assert_eq!(n.std, ndarray::array![1.0, 1.0]);
    /// ```
    pub fn fit<S: Data<Elem = f64>>(x: &ArrayBase<S, Ix2>) -> Self {
        let mean = x
            .mean_axis(Axis(0))
            .unwrap_or_else(|| Array1::zeros(x.ncols()));
        let std = x
            .std_axis(Axis(0), 0.0)
            .mapv(|s| if s > 0.0 { s } else { 1.0 });
        Normalize { mean, std }
    }

    /// `x` normalized.
    pub fn apply<S: Data<Elem = f64>>(&self, x: &ArrayBase<S, Ix2>) -> Array2<f64> {
        (x - &self.mean) / &self.std
    }
}

/// An IDX file of unsigned bytes (MNIST's images and labels): its array.
///
/// ```
/// // A 2x3 array of bytes: magic 0x00000803... here 0x0802 for two axes.
/// let mut bytes = vec![0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3];
/// bytes.extend([1, 2, 3, 4, 5, 6]);
/// let a = adjoint::data::read_idx(&bytes).unwrap();
/// assert_eq!(a.shape(), &[2, 3]);
/// assert_eq!(a[[1, 2]], 6);
/// ```
///
/// # Errors
/// [`DataError::Idx`] for bytes that are not such a file (another element type, a
/// header cut short, data that does not fill the shape).
pub fn read_idx(bytes: &[u8]) -> Result<ArrayD<u8>, DataError> {
    let bad = |why: String| DataError::Idx(why);
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad("no IDX magic number".into()));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!(
            "element type 0x{:02x}; only unsigned bytes (0x08) are read",
            bytes[2]
        )));
    }
    let ndim = bytes[3] as usize;
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(bad(format!("a header of {ndim} axes cut short")));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|k| {
            let b = &bytes[4 + 4 * k..8 + 4 * k];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
        })
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {dims:?} overflows")))?;
    let data = &bytes[header..];
    if data.len() != count {
        return Err(bad(format!(
            "{} bytes of data for shape {dims:?} ({count})",
            data.len()
        )));
    }
    ArrayD::from_shape_vec(IxDyn(&dims), data.to_vec()).map_err(|e| bad(e.to_string()))
}

/// [`read_idx`] of the file `path` (MNIST's `train-images-idx3-ubyte`, ...).
///
/// # Errors
/// When the file cannot be read or is not an IDX file of bytes.
pub fn read_idx_file(path: impl AsRef<std::path::Path>) -> Result<ArrayD<u8>, DataError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.display().to_string(),
        source,
    })?;
    read_idx(&bytes)
}

/// Rows of comma-separated numbers (no header), all of one length.
///
/// ```
/// let x = adjoint::data::read_csv("1,2,3\n4,5,6\n".as_bytes()).unwrap();
/// assert_eq!(x, ndarray::array![[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]);
/// ```
///
/// # Errors
/// [`DataError::Csv`] naming the first line that is not such a row.
pub fn read_csv(reader: impl BufRead) -> Result<Array2<f64>, DataError> {
    let mut values = Vec::new();
    let mut width = None;
    let mut rows = 0;
    for (k, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| DataError::Csv {
            line: k + 1,
            reason: e.to_string(),
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let row: Vec<f64> = line
            .split(',')
            .map(|v| v.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|e| DataError::Csv {
                line: k + 1,
                reason: format!("not a number: {e}"),
            })?;
        match width {
            None => width = Some(row.len()),
            Some(w) if w != row.len() => {
                return Err(DataError::Csv {
                    line: k + 1,
                    reason: format!("{} values where the first row has {w}", row.len()),
                });
            }
            _ => {}
        }
        values.extend(row);
        rows += 1;
    }
    Array2::from_shape_vec((rows, width.unwrap_or(0)), values).map_err(|e| DataError::Csv {
        line: rows,
        reason: e.to_string(),
    })
}
