//! Convolution as Flax's `nn.Conv` and `nn.ConvTranspose` compute it
//! (`lax.conv_general_dilated`): features last (`NWC`, `NHWC`, `NDHWC`), kernels
//! `(window.., in_features / groups, out_features)`, with strides, padding, input
//! and kernel dilation and feature groups. Any leading axes of the input are batch
//! axes (none: one example).
//!
//! The product runs as one matrix product per group on the input's patches (im2col,
//! then [`matmul`]); the pullbacks are two more products, one of them scattered back
//! onto the input's positions. Convolution is bilinear, so its tangent is two
//! convolutions: forward mode, and second order through it, need no other rule.
//!
//! The geometry of windows ([`Windows`]) is shared with pooling.

use crate::rules::linalg::matmul;
use crate::value::{Real, Value};
use ndarray::{Array, Array2, ArrayBase, ArrayView2, Data, Dimension, s};
use std::borrow::Cow;

/// How an input is padded before a window slides over it, per spatial axis: Flax's
/// `padding` (`'SAME'`, `'VALID'`, `'CAUSAL'` or explicit `(low, high)` pairs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding<const N: usize> {
    /// Output size `ceil(input / stride)`, the padding split evenly with the odd
    /// element at the end (`'SAME'`).
    Same,
    /// No padding (`'VALID'`).
    Valid,
    /// `(window - 1) * dilation` at the start of a 1-D input, none at the end, so an
    /// output sees only inputs at or before its position (`'CAUSAL'`).
    Causal,
    /// `(low, high)` elements per axis; negative values crop.
    Explicit([(isize, isize); N]),
}

/// A convolution's configuration over `N` spatial axes, padding resolved.
///
/// ```
/// use adjoint::rules::conv::{ConvSpec, Padding};
/// // Flax's nn.Conv(.., (3, 3), strides=2, padding='SAME') on a 28x28 input.
/// let spec = ConvSpec::new([2, 2], Padding::Same, [28, 28], [3, 3]).unwrap();
/// assert_eq!(spec.padding, [(0, 1), (0, 1)]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvSpec<const N: usize> {
    /// The window's step per axis.
    pub strides: [usize; N],
    /// `(low, high)` padding per axis, in the dilated input's elements.
    pub padding: [(isize, isize); N],
    /// The input's dilation (`lhs_dilation`): `d - 1` zeros between its elements.
    pub input_dilation: [usize; N],
    /// The kernel's dilation (`rhs_dilation`).
    pub kernel_dilation: [usize; N],
    /// Feature groups (`feature_group_count`).
    pub groups: usize,
}

/// A convolution or pooling configuration that cannot apply to its operands.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConvError {
    /// The input has fewer axes than spatial axes and features.
    #[error(
        "an input of shape {input:?} has too few axes for a {spatial}-D window: it needs {spatial} spatial axes and a feature axis (and any batch axes before them)"
    )]
    InputRank { input: Vec<usize>, spatial: usize },
    /// The kernel is not `(window.., in_features / groups, out_features)`.
    #[error(
        "a kernel of shape {kernel:?} does not fit a {spatial}-D convolution: it must have {} axes, the window's then input and output features",
        spatial + 2
    )]
    KernelRank { kernel: Vec<usize>, spatial: usize },
    /// The input's features do not match the kernel's.
    #[error(
        "an input of shape {input:?} has {} features, but the kernel of shape {kernel:?} with {groups} feature group(s) takes {}",
        input.last().copied().unwrap_or(0),
        kernel.get(kernel.len().wrapping_sub(2)).copied().unwrap_or(0) * groups
    )]
    Features {
        input: Vec<usize>,
        kernel: Vec<usize>,
        groups: usize,
    },
    /// Output features that the groups do not divide.
    #[error(
        "a kernel of shape {kernel:?} has {} output features, which {groups} feature groups do not divide",
        kernel.last().copied().unwrap_or(0)
    )]
    Groups { kernel: Vec<usize>, groups: usize },
    /// A zero stride, dilation, window size or group count.
    #[error("{what} must be at least 1, got {value:?}")]
    Zero {
        what: &'static str,
        value: Vec<usize>,
    },
    /// `'CAUSAL'` padding of other than one spatial axis.
    #[error("causal padding applies to 1-D windows only, not {spatial}-D")]
    Causal { spatial: usize },
}

impl<const N: usize> Padding<N> {
    /// The `(low, high)` padding of each axis for an input of `input` elements, a
    /// window spanning `window` elements (dilation included) and `strides`, as
    /// `lax.padtype_to_pads` and Flax's causal padding compute it.
    pub fn resolve(
        &self,
        input: [usize; N],
        window: [usize; N],
        strides: [usize; N],
    ) -> Result<[(isize, isize); N], ConvError> {
        let mut pads = [(0isize, 0isize); N];
        match self {
            Padding::Valid => {}
            Padding::Explicit(p) => pads = *p,
            Padding::Same => {
                for d in 0..N {
                    let s = strides[d].max(1);
                    let out = input[d].div_ceil(s);
                    let total = ((out.max(1) - 1) * s + window[d]).saturating_sub(input[d]);
                    pads[d] = ((total / 2) as isize, (total - total / 2) as isize);
                }
            }
            Padding::Causal => {
                if N != 1 {
                    return Err(ConvError::Causal { spatial: N });
                }
                pads[0] = (window[0].saturating_sub(1) as isize, 0);
            }
        }
        Ok(pads)
    }
}

impl<const N: usize> ConvSpec<N> {
    /// A convolution with `strides` and `padding` resolved for an input of spatial
    /// size `input` and a kernel window of size `window`; no dilation, one group
    /// (set the fields for more).
    pub fn new(
        strides: [usize; N],
        padding: Padding<N>,
        input: [usize; N],
        window: [usize; N],
    ) -> Result<Self, ConvError> {
        Self::dilated(strides, padding, [1; N], [1; N], 1, input, window)
    }

    /// A convolution with every option, as Flax's `nn.Conv` passes them:
    /// `padding` is resolved on the undilated input and the dilated window.
    pub fn dilated(
        strides: [usize; N],
        padding: Padding<N>,
        input_dilation: [usize; N],
        kernel_dilation: [usize; N],
        groups: usize,
        input: [usize; N],
        window: [usize; N],
    ) -> Result<Self, ConvError> {
        nonzero("strides", &strides)?;
        nonzero("input_dilation", &input_dilation)?;
        nonzero("kernel_dilation", &kernel_dilation)?;
        nonzero("feature_group_count", &[groups])?;
        let dilated: [usize; N] = std::array::from_fn(|d| dilate(window[d], kernel_dilation[d]));
        Ok(ConvSpec {
            strides,
            padding: padding.resolve(input, dilated, strides)?,
            input_dilation,
            kernel_dilation,
            groups,
        })
    }

    /// The padding of a transposed convolution (`lax.conv_transpose`) with `strides`
    /// over a window of `window` elements (dilation included): `'SAME'` and `'VALID'`
    /// as the forward convolution they transpose; explicit pairs as given.
    pub fn transpose_padding(
        padding: Padding<N>,
        window: [usize; N],
        strides: [usize; N],
    ) -> Result<[(isize, isize); N], ConvError> {
        let mut pads = [(0isize, 0isize); N];
        for d in 0..N {
            let (k, s) = (window[d] as isize, strides[d] as isize);
            pads[d] = match padding {
                Padding::Explicit(p) => p[d],
                Padding::Causal => return Err(ConvError::Causal { spatial: N }),
                Padding::Same => {
                    let len = k + s - 2;
                    let lo = if s > k - 1 {
                        k - 1
                    } else {
                        (len + 1).div_euclid(2)
                    };
                    (lo, len - lo)
                }
                Padding::Valid => {
                    let len = k + s - 2 + (k - s).max(0);
                    (k - 1, len - (k - 1))
                }
            };
        }
        Ok(pads)
    }

    /// The output's shape for an input and a kernel of these shapes, or why they
    /// do not fit.
    pub fn output_shape(&self, input: &[usize], kernel: &[usize]) -> Result<Vec<usize>, ConvError> {
        Ok(Geometry::new(self, input, kernel)?.out_shape)
    }
}

fn nonzero(what: &'static str, values: &[usize]) -> Result<(), ConvError> {
    if values.contains(&0) {
        return Err(ConvError::Zero {
            what,
            value: values.to_vec(),
        });
    }
    Ok(())
}

/// The span of `n` elements with `d - 1` holes between neighbours.
fn dilate(n: usize, d: usize) -> usize {
    if n == 0 { 0 } else { (n - 1) * d + 1 }
}

/// Where a window sliding over `N` spatial axes reads: for each output position and
/// each tap of the window, the input position (flat, row-major over the spatial
/// axes), or none where the tap falls on padding or between dilated elements.
#[derive(Clone, Debug)]
pub struct Windows<const N: usize> {
    /// Input positions.
    pub input_len: usize,
    /// The output's spatial size.
    pub output: [usize; N],
    /// Taps per window.
    pub window_len: usize,
    /// `taps[o * window_len + t]`: the input position, or [`Windows::NONE`].
    pub taps: Vec<usize>,
}

impl<const N: usize> Windows<N> {
    /// A tap with no input element.
    pub const NONE: usize = usize::MAX;

    /// The windows over an input of spatial size `input`.
    pub fn new(
        input: [usize; N],
        window: [usize; N],
        strides: [usize; N],
        padding: [(isize, isize); N],
        input_dilation: [usize; N],
        window_dilation: [usize; N],
    ) -> Self {
        // Per axis: the output size and each (output, tap)'s input index.
        let mut output = [0usize; N];
        let mut axis_taps: Vec<Vec<usize>> = Vec::with_capacity(N);
        for d in 0..N {
            let span = dilate(input[d], input_dilation[d]) as isize;
            let padded = span + padding[d].0 + padding[d].1;
            let reach = dilate(window[d], window_dilation[d]) as isize;
            output[d] = if padded >= reach && window[d] > 0 {
                ((padded - reach) / strides[d] as isize + 1) as usize
            } else {
                0
            };
            let mut taps = Vec::with_capacity(output[d] * window[d]);
            for o in 0..output[d] {
                for k in 0..window[d] {
                    let q = (o * strides[d] + k * window_dilation[d]) as isize - padding[d].0;
                    let ld = input_dilation[d] as isize;
                    taps.push(if q >= 0 && q < span && q % ld == 0 {
                        (q / ld) as usize
                    } else {
                        Self::NONE
                    });
                }
            }
            axis_taps.push(taps);
        }
        let out_len: usize = output.iter().product();
        let window_len: usize = window.iter().product();
        let mut taps = Vec::with_capacity(out_len * window_len);
        let mut o = [0usize; N];
        for _ in 0..out_len {
            let mut t = [0usize; N];
            for _ in 0..window_len {
                let mut flat = 0usize;
                let mut none = false;
                for d in 0..N {
                    let i = axis_taps[d][o[d] * window[d] + t[d]];
                    none |= i == Self::NONE;
                    flat = flat * input[d] + if none { 0 } else { i };
                }
                taps.push(if none { Self::NONE } else { flat });
                next(&mut t, &window);
            }
            next(&mut o, &output);
        }
        Windows {
            input_len: input.iter().product(),
            output,
            window_len,
            taps,
        }
    }

    /// Output positions.
    pub fn output_len(&self) -> usize {
        self.output.iter().product()
    }
}

/// Advances a row-major multi-index.
fn next<const N: usize>(i: &mut [usize; N], shape: &[usize; N]) {
    for d in (0..N).rev() {
        i[d] += 1;
        if i[d] < shape[d] {
            return;
        }
        i[d] = 0;
    }
}

/// The elements of `x` in row-major order, borrowed when already so.
pub(crate) fn contiguous<A: Clone, S: Data<Elem = A>, D: Dimension>(
    x: &ArrayBase<S, D>,
) -> Cow<'_, [A]> {
    match x.as_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(x.iter().cloned().collect()),
    }
}

/// The elements of an owned array in row-major order, without a copy when they
/// are stored so.
pub(crate) fn row_major<A: Clone, D: Dimension>(a: Array<A, D>) -> Vec<A> {
    if a.is_standard_layout() {
        let (data, offset) = a.into_raw_vec_and_offset();
        if offset.unwrap_or(0) == 0 {
            return data;
        }
        return data[offset.unwrap_or(0)..].to_vec();
    }
    a.iter().cloned().collect()
}

/// `data` (row-major) as an array of shape `shape`, whose rank is `D`'s.
pub(crate) fn shaped<A, D: Dimension>(shape: &[usize], data: Vec<A>) -> Array<A, D> {
    let mut dim = D::zeros(shape.len());
    dim.slice_mut().copy_from_slice(shape);
    Array::from_shape_vec(dim, data)
        .unwrap_or_else(|_| unreachable!("adjoint: a window rule's result has its computed shape"))
}

/// Splits a shape into batch positions, the spatial axes and features.
pub(crate) fn split_shape<const N: usize>(
    shape: &[usize],
) -> Result<(usize, [usize; N], usize), ConvError> {
    if shape.len() < N + 1 {
        return Err(ConvError::InputRank {
            input: shape.to_vec(),
            spatial: N,
        });
    }
    let b = shape.len() - N - 1;
    let spatial: [usize; N] = std::array::from_fn(|d| shape[b + d]);
    Ok((shape[..b].iter().product(), spatial, shape[shape.len() - 1]))
}

/// A convolution's sizes: batch positions, features, groups and its windows.
struct Geometry<const N: usize> {
    batch: usize,
    windows: Windows<N>,
    in_features: usize,
    out_features: usize,
    groups: usize,
    out_shape: Vec<usize>,
}

impl<const N: usize> Geometry<N> {
    fn new(spec: &ConvSpec<N>, input: &[usize], kernel: &[usize]) -> Result<Self, ConvError> {
        let (batch, spatial, in_features) = split_shape::<N>(input)?;
        if kernel.len() != N + 2 {
            return Err(ConvError::KernelRank {
                kernel: kernel.to_vec(),
                spatial: N,
            });
        }
        let groups = spec.groups;
        nonzero("feature_group_count", &[groups])?;
        nonzero("strides", &spec.strides)?;
        nonzero("input_dilation", &spec.input_dilation)?;
        nonzero("kernel_dilation", &spec.kernel_dilation)?;
        if kernel[N] * groups != in_features {
            return Err(ConvError::Features {
                input: input.to_vec(),
                kernel: kernel.to_vec(),
                groups,
            });
        }
        let out_features = kernel[N + 1];
        if !out_features.is_multiple_of(groups) {
            return Err(ConvError::Groups {
                kernel: kernel.to_vec(),
                groups,
            });
        }
        let window: [usize; N] = std::array::from_fn(|d| kernel[d]);
        let windows = Windows::new(
            spatial,
            window,
            spec.strides,
            spec.padding,
            spec.input_dilation,
            spec.kernel_dilation,
        );
        let lead = input.len() - N - 1;
        let mut out_shape = input[..lead].to_vec();
        out_shape.extend(windows.output);
        out_shape.push(out_features);
        Ok(Geometry {
            batch,
            windows,
            in_features,
            out_features,
            groups,
            out_shape,
        })
    }

    fn rows(&self) -> usize {
        self.batch * self.windows.output_len()
    }

    fn group_in(&self) -> usize {
        self.in_features / self.groups
    }

    fn group_out(&self) -> usize {
        self.out_features / self.groups
    }

    /// Group `g`'s patches: row `(n, o)` holds, tap by tap, the group's features of
    /// the input at that tap (zero on padding).
    fn patches<A: Real>(&self, x: &[A], g: usize) -> Array2<A> {
        let (w, cg) = (&self.windows, self.group_in());
        let cols = w.window_len * cg;
        let mut p = vec![A::zero(); self.rows() * cols];
        if cols > 0 {
            for (row, dst) in p.chunks_exact_mut(cols).enumerate() {
                let (n, o) = (row / w.output_len(), row % w.output_len());
                let taps = &w.taps[o * w.window_len..(o + 1) * w.window_len];
                for (&tap, out) in taps.iter().zip(dst.chunks_exact_mut(cg)) {
                    if tap != Windows::<N>::NONE {
                        let at = (n * w.input_len + tap) * self.in_features + g * cg;
                        copy_features(out, &x[at..at + cg]);
                    }
                }
            }
        }
        Array2::from_shape_vec((self.rows(), cols), p)
            .unwrap_or_else(|_| unreachable!("adjoint: patches have rows x cols elements"))
    }

    /// Adds group `g`'s patch cotangents `dp` (row-major, one row per patch) back
    /// onto the input's positions: the adjoint of [`Geometry::patches`].
    fn scatter<A: Real>(&self, dp: &[A], dx: &mut [A], g: usize) {
        let (w, cg) = (&self.windows, self.group_in());
        let cols = w.window_len * cg;
        if cols == 0 {
            return;
        }
        for (row, src) in dp.chunks_exact(cols).enumerate() {
            let (n, o) = (row / w.output_len(), row % w.output_len());
            let taps = &w.taps[o * w.window_len..(o + 1) * w.window_len];
            for (&tap, src) in taps.iter().zip(src.chunks_exact(cg)) {
                if tap != Windows::<N>::NONE {
                    let at = (n * w.input_len + tap) * self.in_features + g * cg;
                    for (d, &v) in dx[at..at + cg].iter_mut().zip(src) {
                        *d += v;
                    }
                }
            }
        }
    }
}

/// `dst.copy_from_slice(src)`, without a call to `memcpy` for the features of a
/// first layer (one channel, or three), where the call costs more than the copy.
#[inline]
fn copy_features<A: Copy>(dst: &mut [A], src: &[A]) {
    // Element stores: copies of any length, even known ones, become `memcpy` calls.
    match (dst, src) {
        ([d], [s]) => *d = *s,
        ([d0, d1, d2], [s0, s1, s2]) => {
            *d0 = *s0;
            *d1 = *s1;
            *d2 = *s2;
        }
        (dst, src) => dst.copy_from_slice(src),
    }
}

/// Checks the operands against the spec, panicking with the reason (as ndarray's
/// arithmetic does on shapes that do not fit): layers check first and return a
/// typed error instead. `None` inside an `apply` that has already failed (see
/// [`crate::scope::failed`]): the rule then computes zeros.
fn geometry<const N: usize>(
    spec: &ConvSpec<N>,
    input: &[usize],
    kernel: &[usize],
) -> Option<Geometry<N>> {
    match Geometry::new(spec, input, kernel) {
        Ok(g) => Some(g),
        Err(_) if crate::scope::failed() => None,
        Err(e) => panic!("conv: {e}"),
    }
}

/// Zeros shaped like `dim` with `last` features.
pub(crate) fn zeros_with_last<A: Real, D: Dimension>(dim: D, last: usize) -> Array<A, D> {
    Array::zeros(with_last(dim, last))
}

/// `dim` with its last axis `last` long (a 0-dimensional `dim` as it is).
pub(crate) fn with_last<D: Dimension>(mut dim: D, last: usize) -> D {
    if let Some(l) = dim.slice_mut().last_mut() {
        *l = last;
    }
    dim
}

/// The kernel as a `(window taps x in_features / groups, out_features)` matrix.
fn kernel_matrix<'a, A: Real>(k: &'a [A], rows: usize, cols: usize) -> ArrayView2<'a, A> {
    ArrayView2::from_shape((rows, cols), k)
        .unwrap_or_else(|_| unreachable!("adjoint: the kernel holds rows x cols elements"))
}

/// The convolution of `x` (`(batch.., spatial.., in_features)`) with `k`
/// (`(window.., in_features / groups, out_features)`) as `spec` says; the result is
/// `(batch.., out spatial.., out_features)`.
///
/// # Panics
///
/// When the shapes do not fit the spec (the message says how); see
/// [`ConvSpec::output_shape`] to check first.
///
/// ```
/// use adjoint::rules::conv::{conv, ConvSpec, Padding};
/// use ndarray::{Array, Array3};
/// // A 1-D causal convolution summing each element and the one before it.
/// let x = Array3::from_shape_vec((1, 4, 1), vec![1.0, 2.0, 3.0, 4.0]).unwrap();
/// let k = Array::ones((2, 1, 1)).into_dyn();
/// let spec = ConvSpec::new([1], Padding::Causal, [4], [2]).unwrap();
/// let y = conv(&x, &k, spec);
/// assert_eq!(y.iter().copied().collect::<Vec<f64>>(), vec![1.0, 3.0, 5.0, 7.0]);
/// ```
pub fn conv<const N: usize, X, K, A, S, D, S2, E>(x: &X, k: &K, spec: ConvSpec<N>) -> Array<A, D>
where
    X: Value<Primal = ArrayBase<S, D>>,
    K: Value<Primal = ArrayBase<S2, E>>,
    A: Real,
    S: Data<Elem = A>,
    S2: Data<Elem = A>,
    D: Dimension,
    E: Dimension,
{
    let (x, k) = (x.primal(), k.primal());
    let Some(geo) = geometry(&spec, x.shape(), k.shape()) else {
        return zeros_with_last(x.raw_dim(), k.shape().last().copied().unwrap_or(0));
    };
    let (xs, ks) = (contiguous(x), contiguous(k));
    let (cg, og) = (geo.group_in(), geo.group_out());
    let kmat = kernel_matrix(&ks, geo.windows.window_len * cg, geo.out_features);
    let out = if geo.groups == 1 {
        matmul(&geo.patches(&xs, 0), &kmat)
    } else {
        let mut out = Array2::zeros((geo.rows(), geo.out_features));
        for g in 0..geo.groups {
            let block = s![.., g * og..(g + 1) * og];
            out.slice_mut(block)
                .assign(&matmul(&geo.patches(&xs, g), &kmat.slice(block)));
        }
        out
    };
    shaped(&geo.out_shape, row_major(out))
}

/// Pullback of [`conv`] with respect to the input: the cotangent times the kernel,
/// scattered back onto the positions each patch read.
pub fn conv_pb_x<const N: usize, X, K, A, S, D, S2, E>(
    x: &X,
    k: &K,
    spec: ConvSpec<N>,
    ct: Array<A, D>,
) -> Array<A, D>
where
    X: Value<Primal = ArrayBase<S, D>>,
    K: Value<Primal = ArrayBase<S2, E>>,
    A: Real,
    S: Data<Elem = A>,
    S2: Data<Elem = A>,
    D: Dimension,
    E: Dimension,
{
    let (x, k) = (x.primal(), k.primal());
    let Some(geo) = geometry(&spec, x.shape(), k.shape()) else {
        return Array::zeros(x.raw_dim());
    };
    let (cs, ks) = (contiguous(&ct), contiguous(k));
    let (cg, og) = (geo.group_in(), geo.group_out());
    let kmat = kernel_matrix(&ks, geo.windows.window_len * cg, geo.out_features);
    let ct2 = kernel_matrix(&cs, geo.rows(), geo.out_features);
    let mut dx = vec![A::zero(); x.len()];
    for g in 0..geo.groups {
        let block = s![.., g * og..(g + 1) * og];
        let dp = matmul(&ct2.slice(block), &kmat.slice(block).t());
        geo.scatter(&row_major(dp), &mut dx, g);
    }
    shaped(x.shape(), dx)
}

/// Pullback of [`conv`] with respect to the kernel: the patches' transpose times
/// the cotangent.
pub fn conv_pb_k<const N: usize, X, K, A, S, D, S2, E>(
    x: &X,
    k: &K,
    spec: ConvSpec<N>,
    ct: Array<A, D>,
) -> Array<A, E>
where
    X: Value<Primal = ArrayBase<S, D>>,
    K: Value<Primal = ArrayBase<S2, E>>,
    A: Real,
    S: Data<Elem = A>,
    S2: Data<Elem = A>,
    D: Dimension,
    E: Dimension,
{
    let (x, k) = (x.primal(), k.primal());
    let Some(geo) = geometry(&spec, x.shape(), k.shape()) else {
        return Array::zeros(k.raw_dim());
    };
    let (xs, cs) = (contiguous(x), contiguous(&ct));
    let og = geo.group_out();
    let ct2 = kernel_matrix(&cs, geo.rows(), geo.out_features);
    let dk = if geo.groups == 1 {
        matmul(&geo.patches(&xs, 0).t(), &ct2)
    } else {
        let mut dk = Array2::zeros((geo.windows.window_len * geo.group_in(), geo.out_features));
        for g in 0..geo.groups {
            let block = s![.., g * og..(g + 1) * og];
            dk.slice_mut(block)
                .assign(&matmul(&geo.patches(&xs, g).t(), &ct2.slice(block)));
        }
        dk
    };
    shaped(k.shape(), row_major(dk))
}
