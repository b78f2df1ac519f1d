//! Attention, as Flax's `flax.linen.attention`: `dot_product_attention` and its
//! weights, the masks (`make_causal_mask`, `make_attention_mask`,
//! `combine_masks`), `DenseGeneral` (the projections) and
//! `MultiHeadDotProductAttention` with Flax's `query`/`key`/`value`/`out` tree.
//!
//! Written with `#[differentiable]` over rules (batched matrix products, `softmax`,
//! `where_`), so every order of derivative goes through attention.

use crate::init::{self, Init, Initializer};
use crate::nn::{batch_matmul, softmax, where_};
use crate::scope::Scope;
use crate::value::Real;
use adjoint_macros::differentiable;
use ndarray::{
    ArcArrayD, Array, Array2, Array4, ArrayBase, Axis, Data, Dimension, Ix2, Ix3, Ix4, IxDyn,
};
use std::marker::PhantomData;

/// Queries attending to keys: `softmax(q · kᵀ / sqrt(depth))` per batch and head,
/// where `mask` holds (the other logits set to the type's lowest value, as Flax),
/// from `query` `(batch, q_length, heads, depth)` and `key`
/// `(batch, kv_length, heads, depth)`; the weights are
/// `(batch, heads, q_length, kv_length)`. The mask broadcasts to that shape.
///
/// # Panics
/// When the shapes do not fit (the layers check first and return an error).
///
/// ```
/// use adjoint::nn::dot_product_attention_weights;
/// let q = ndarray::Array4::<f64>::zeros((1, 3, 2, 4));
/// let w = dot_product_attention_weights(&q, &q, None);
/// assert_eq!(w.shape(), &[1, 2, 3, 3]);
/// assert!(w.iter().all(|&v| (v - 1.0 / 3.0).abs() < 1e-12));
/// ```
#[differentiable(jvp)]
pub fn dot_product_attention_weights<A: Real>(
    query: &Array4<A>,
    key: &Array4<A>,
    mask: Option<&Array4<bool>>,
) -> Array4<A> {
    let depth = query.shape()[3];
    let q = query * A::lit(1.0 / (depth as f64).sqrt());
    let qh = q.view().permuted_axes([0, 2, 1, 3]);
    let kh = key.view().permuted_axes([0, 2, 3, 1]);
    let logits = batch_matmul(&qh, &kh);
    let full = attention_mask(mask, logits.shape());
    let masked = where_(&full, &logits, A::min_value());
    softmax(&masked, Axis(3))
}

/// Attention: the values weighted by [`dot_product_attention_weights`], from
/// `query`, `key` and `value` `(batch, length, heads, depth)`; the result is
/// `(batch, q_length, heads, depth)`, as Flax's `nn.dot_product_attention`.
///
/// ```
/// use adjoint::nn::{dot_product_attention, make_causal_mask};
/// let x = ndarray::Array4::<f64>::from_shape_fn((1, 3, 1, 2), |(_, t, _, d)| (t + d) as f64);
/// let mask = make_causal_mask(1, 3);
/// let y = dot_product_attention(&x, &x, &x, Some(&mask));
/// // The first position sees only itself.
/// assert_eq!(y.slice(ndarray::s![0, 0, 0, ..]), x.slice(ndarray::s![0, 0, 0, ..]));
/// ```
#[differentiable(jvp)]
pub fn dot_product_attention<A: Real>(
    query: &Array4<A>,
    key: &Array4<A>,
    value: &Array4<A>,
    mask: Option<&Array4<bool>>,
) -> Array4<A> {
    let weights = dot_product_attention_weights(query, key, mask);
    let vh = value.view().permuted_axes([0, 2, 1, 3]);
    let out = batch_matmul(&weights, &vh);
    out.view().permuted_axes([0, 2, 1, 3]).to_owned()
}

/// A mask of shape `shape` (`(batch, heads, q_length, kv_length)`): `mask`
/// broadcast to it, or all true.
fn attention_mask(mask: Option<&Array4<bool>>, shape: &[usize]) -> Array4<bool> {
    let dim = (shape[0], shape[1], shape[2], shape[3]);
    match mask.and_then(|m| m.broadcast(dim)) {
        Some(m) => m.to_owned(),
        None => Array4::from_elem(dim, true),
    }
}

/// Whether `mask` broadcasts to `(batch, heads, q_length, kv_length)`.
fn check_mask(mask: Option<&Array4<bool>>, shape: [usize; 4]) -> Result<(), String> {
    match mask {
        Some(m) if m.broadcast(shape).is_none() => Err(format!(
            "an attention mask of shape {:?} does not broadcast to (batch, heads, q_length, kv_length) = {shape:?}",
            m.shape()
        )),
        _ => Ok(()),
    }
}

/// The causal mask of Flax's `make_causal_mask`: position `i` may attend to `j`
/// when `j <= i`, shaped `(batch, 1, length, length)`.
///
/// ```
/// let m = adjoint::nn::make_causal_mask(1, 3);
/// assert_eq!(m.shape(), &[1, 1, 3, 3]);
/// assert!(m[[0, 0, 2, 1]] && !m[[0, 0, 1, 2]]);
/// ```
pub fn make_causal_mask(batch: usize, length: usize) -> Array4<bool> {
    Array4::from_shape_fn((batch, 1, length, length), |(_, _, i, j)| j <= i)
}

/// The mask of Flax's `make_attention_mask` with `jnp.multiply`: a query position
/// may attend to a key position when both are valid (say, not padding), shaped
/// `(batch, 1, q_length, kv_length)` from `(batch, length)` validity arrays.
///
/// ```
/// use ndarray::array;
/// let valid = array![[true, true, false]];
/// let m = adjoint::nn::make_attention_mask(&valid, &valid);
/// assert!(m[[0, 0, 0, 1]] && !m[[0, 0, 0, 2]] && !m[[0, 0, 2, 0]]);
/// ```
pub fn make_attention_mask<S: Data<Elem = bool>, S2: Data<Elem = bool>>(
    query: &ArrayBase<S, Ix2>,
    key: &ArrayBase<S2, Ix2>,
) -> Array4<bool> {
    let (b, lq, lk) = (query.nrows(), query.ncols(), key.ncols());
    Array4::from_shape_fn((b, 1, lq, lk), |(n, _, i, j)| {
        query[[n, i]] && key.get((n, j)).copied().unwrap_or(false)
    })
}

/// Masks combined as Flax's `combine_masks`: where every given one holds (`None`
/// when none is given). They must have one shape.
///
/// ```
/// use adjoint::nn::{combine_masks, make_attention_mask, make_causal_mask};
/// let valid = ndarray::array![[true, true, false]];
/// let both = combine_masks(&[Some(make_causal_mask(1, 3)), Some(make_attention_mask(&valid, &valid))]).unwrap();
/// assert!(both[[0, 0, 1, 0]] && !both[[0, 0, 0, 1]] && !both[[0, 0, 2, 2]]);
/// ```
pub fn combine_masks(masks: &[Option<Array4<bool>>]) -> Option<Array4<bool>> {
    let mut given = masks.iter().flatten();
    let first = given.next()?.clone();
    Some(given.fold(first, |mut acc, m| {
        acc.zip_mut_with(m, |a, &b| *a = *a && b);
        acc
    }))
}

/// A dense layer over several axes, as Flax's `nn.DenseGeneral`: the input's last
/// `axes` axes contracted with a `kernel` of shape `(those axes.., features..)`,
/// plus a `bias` of shape `features`; the result has the input's other axes, then
/// `features`. The kernel is initialized as the matrix `(inputs, outputs)`, as Flax.
/// `E` is the result's dimension type (`IxDyn` by default).
///
/// ```
/// use adjoint::prelude::*;
/// // Project features 6 to 2 heads of 4, as attention's query does.
/// let x = ndarray::Array3::<f64>::ones((2, 5, 6));
/// let layer = nn::DenseGeneral::<ndarray::Ix4>::new(&[2, 4]);
/// let vars = layer.init(0, &x).unwrap();
/// assert_eq!(vars.shapes(), r#"{"params": {"bias": [2, 4], "kernel": [6, 2, 4]}}"#);
/// let y: ndarray::Array4<f64> = layer.apply(&vars, &x).unwrap();
/// assert_eq!(y.shape(), &[2, 5, 2, 4]);
/// ```
#[derive(Clone, Debug)]
pub struct DenseGeneral<E = IxDyn> {
    /// The output's trailing shape.
    pub features: Vec<usize>,
    /// How many trailing input axes are contracted (Flax's `axis=(-2, -1)` is 2).
    pub axes: usize,
    /// Add the learned `bias`.
    pub use_bias: bool,
    /// The kernel's initializer (as a matrix).
    pub kernel_init: Init,
    /// The bias's initializer.
    pub bias_init: Init,
    dim: PhantomData<E>,
}

impl<E: Dimension> DenseGeneral<E> {
    /// Outputs of shape `features`, contracting the input's last axis.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let layer = nn::DenseGeneral::<ndarray::IxDyn>::new(&[2, 4]);
    /// assert_eq!(layer.features, [2, 4]);
    /// ```
    pub fn new(features: &[usize]) -> Self {
        DenseGeneral {
            features: features.to_vec(),
            axes: 1,
            use_bias: true,
            kernel_init: Init::new(init::lecun_normal()),
            bias_init: Init::new(init::zeros),
            dim: PhantomData,
        }
    }

    /// Contracts the input's last `axes` axes.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let layer = nn::DenseGeneral::<ndarray::IxDyn>::new(&[2, 4]).axes(2);
    /// assert_eq!(layer.axes, 2);
    /// ```
    pub fn axes(mut self, axes: usize) -> Self {
        self.axes = axes;
        self
    }

    /// Sets `use_bias`.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let layer = nn::DenseGeneral::<ndarray::IxDyn>::new(&[2, 4]).use_bias(false);
    /// assert_eq!(layer.use_bias, false);
    /// ```
    pub fn use_bias(mut self, use_bias: bool) -> Self {
        self.use_bias = use_bias;
        self
    }

    /// Sets `kernel_init`.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let _layer = nn::DenseGeneral::<ndarray::IxDyn>::new(&[2, 4]).kernel_init(init::zeros);
    /// ```
    pub fn kernel_init(mut self, init: impl Initializer + Send + Sync + 'static) -> Self {
        self.kernel_init = Init::new(init);
        self
    }

    /// Sets `bias_init`.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let _layer = nn::DenseGeneral::<ndarray::IxDyn>::new(&[2, 4]).bias_init(init::zeros);
    /// ```
    pub fn bias_init(mut self, init: impl Initializer + Send + Sync + 'static) -> Self {
        self.bias_init = Init::new(init);
        self
    }

    /// How an input of `shape` is computed with, or why it cannot be.
    fn plan(&self, shape: &[usize]) -> Result<Plan<E>, String> {
        let n = shape.len();
        if self.axes > n {
            return Err(format!(
                "DenseGeneral contracts the last {} axes, but its input has shape {shape:?}",
                self.axes
            ));
        }
        let out: Vec<usize> = shape[..n - self.axes]
            .iter()
            .chain(&self.features)
            .copied()
            .collect();
        if E::NDIM.is_some_and(|d| d != out.len()) {
            return Err(format!(
                "DenseGeneral's result has {} axes ({out:?}), but is asked for as {} axes",
                out.len(),
                E::NDIM.unwrap_or(0)
            ));
        }
        let mut dim = E::zeros(out.len());
        dim.slice_mut().copy_from_slice(&out);
        let mut kernel = shape[n - self.axes..].to_vec();
        kernel.extend(&self.features);
        Ok(Plan {
            kernel,
            rows: shape[..n - self.axes].iter().product(),
            inputs: shape[n - self.axes..].iter().product(),
            outputs: self.features.iter().product(),
            dim,
        })
    }

    /// A plan that fits an input of `len` elements, for one that was rejected.
    fn fallback(&self, len: usize) -> Plan<E> {
        let outputs = self.features.iter().product();
        Plan {
            kernel: vec![len, outputs],
            rows: 1,
            inputs: len,
            outputs,
            dim: E::zeros(E::NDIM.unwrap_or(1)),
        }
    }
}

/// The sizes of a `DenseGeneral`'s product: `x` as `(rows, inputs)`, the kernel as
/// `(inputs, outputs)`, the result's dimension.
#[derive(Clone, Debug)]
struct Plan<E> {
    kernel: Vec<usize>,
    rows: usize,
    inputs: usize,
    outputs: usize,
    dim: E,
}

#[differentiable]
impl<E: Dimension> DenseGeneral<E> {
    /// The layer in the scope `cx`: what a parent module's `call` runs, and
    /// `init` and `apply` at the root.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let x = ndarray::Array2::<f64>::ones((2, 3));
    /// let layer = nn::DenseGeneral::<ndarray::Ix3>::new(&[2, 4]);
    /// let vars = layer.init(0, &x).unwrap();
    /// assert_eq!(layer.apply(&vars, &x).unwrap().shape(), &[2, 2, 4]);
    /// ```
    pub fn call<A: Real, D: Dimension>(&self, cx: &mut Scope, x: &Array<A, D>) -> Array<A, E> {
        let plan = self.plan(x.shape());
        cx.check(&plan);
        let p = plan.unwrap_or_else(|_| self.fallback(x.len()));
        let (rows, inputs, outputs) = (p.rows, p.inputs, p.outputs);
        let kernel: ArcArrayD<A> = cx.param(
            "kernel",
            init::flattened(self.kernel_init.clone(), inputs, outputs),
            p.kernel.clone(),
        );
        let x2 = x.to_shape((rows, inputs)).unwrap();
        let k2 = kernel.to_shape((inputs, outputs)).unwrap();
        let mut y: Array2<A> = x2.dot(&k2);
        if self.use_bias {
            let bias: ArcArrayD<A> =
                cx.param("bias", self.bias_init.clone(), IxDyn(&self.features));
            y = y + &bias.to_shape(outputs).unwrap();
        }
        y.into_shape_with_order(p.dim.clone()).unwrap()
    }
}

/// Multi-head attention, as Flax's `nn.MultiHeadDotProductAttention`: the queries,
/// keys and values projected to `num_heads` heads of `qkv_features / num_heads`
/// (`DenseGeneral`s named `query`, `key`, `value`), [`dot_product_attention`], and
/// the heads projected back to `out_features` (`out`). Inputs are
/// `(batch, length, features)`; `qkv_features` and `out_features` default to the
/// query's features. Self-attention passes one input three times.
///
/// Heads that do not divide `qkv_features`, or a mask that does not broadcast to
/// `(batch, heads, q_length, kv_length)`, make `init` and `apply` return an error.
///
/// ```
/// use adjoint::prelude::*;
/// let x = ndarray::Array3::<f64>::ones((2, 5, 6));
/// let mha = nn::MultiHeadDotProductAttention::new(2).qkv_features(8);
/// let mask = nn::make_causal_mask(2, 5);
/// let vars = mha.init(0, &x, &x, &x, Some(&mask)).unwrap();
/// assert_eq!(
///     vars.shapes(),
///     r#"{"params": {"key": {"bias": [2, 4], "kernel": [6, 2, 4]}, "out": {"bias": [6], "kernel": [2, 4, 6]}, "query": {"bias": [2, 4], "kernel": [6, 2, 4]}, "value": {"bias": [2, 4], "kernel": [6, 2, 4]}}}"#
/// );
/// let y = mha.apply(&vars, &x, &x, &x, Some(&mask)).unwrap();
/// assert_eq!(y.shape(), &[2, 5, 6]);
///
/// let err = nn::MultiHeadDotProductAttention::new(3).qkv_features(8).init(0, &x, &x, &x, None);
/// assert_eq!(err.unwrap_err().to_string(), "3 heads do not divide qkv_features = 8");
/// ```
#[derive(Clone, Debug)]
pub struct MultiHeadDotProductAttention {
    /// Heads.
    pub num_heads: usize,
    /// Features of the projected queries, keys and values (all heads together);
    /// the query's features if `None`.
    pub qkv_features: Option<usize>,
    /// Features of the output; the query's features if `None`.
    pub out_features: Option<usize>,
    /// Biases in the projections.
    pub use_bias: bool,
    /// The projections' kernel initializer.
    pub kernel_init: Init,
    /// The projections' bias initializer.
    pub bias_init: Init,
}

impl MultiHeadDotProductAttention {
    /// `num_heads` heads and Flax's other defaults.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let layer = nn::MultiHeadDotProductAttention::new(2);
    /// assert_eq!(layer.num_heads, 2);
    /// ```
    pub fn new(num_heads: usize) -> Self {
        MultiHeadDotProductAttention {
            num_heads,
            qkv_features: None,
            out_features: None,
            use_bias: true,
            kernel_init: Init::new(init::lecun_normal()),
            bias_init: Init::new(init::zeros),
        }
    }

    /// Sets `qkv_features`.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let layer = nn::MultiHeadDotProductAttention::new(2).qkv_features(8);
    /// assert_eq!(layer.qkv_features, Some(8));
    /// ```
    pub fn qkv_features(mut self, features: usize) -> Self {
        self.qkv_features = Some(features);
        self
    }

    /// Sets `out_features`.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let layer = nn::MultiHeadDotProductAttention::new(2).out_features(6);
    /// assert_eq!(layer.out_features, Some(6));
    /// ```
    pub fn out_features(mut self, features: usize) -> Self {
        self.out_features = Some(features);
        self
    }

    /// Sets `use_bias`.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let layer = nn::MultiHeadDotProductAttention::new(2).use_bias(false);
    /// assert_eq!(layer.use_bias, false);
    /// ```
    pub fn use_bias(mut self, use_bias: bool) -> Self {
        self.use_bias = use_bias;
        self
    }

    /// Sets `kernel_init`.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let _layer = nn::MultiHeadDotProductAttention::new(2).kernel_init(init::zeros);
    /// ```
    pub fn kernel_init(mut self, init: impl Initializer + Send + Sync + 'static) -> Self {
        self.kernel_init = Init::new(init);
        self
    }

    /// Sets `bias_init`.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let _layer = nn::MultiHeadDotProductAttention::new(2).bias_init(init::zeros);
    /// ```
    pub fn bias_init(mut self, init: impl Initializer + Send + Sync + 'static) -> Self {
        self.bias_init = Init::new(init);
        self
    }

    /// `(heads, head features)` for `qkv` features, or why they do not split.
    fn heads(&self, qkv: usize) -> Result<(usize, usize), String> {
        if self.num_heads == 0 || !qkv.is_multiple_of(self.num_heads) {
            return Err(format!(
                "{} heads do not divide qkv_features = {qkv}",
                self.num_heads
            ));
        }
        Ok((self.num_heads, qkv / self.num_heads))
    }

    /// A projection to `features`, contracting `axes` trailing axes.
    fn projection<E: Dimension>(&self, features: &[usize], axes: usize) -> DenseGeneral<E> {
        DenseGeneral {
            features: features.to_vec(),
            axes,
            use_bias: self.use_bias,
            kernel_init: self.kernel_init.clone(),
            bias_init: self.bias_init.clone(),
            dim: PhantomData,
        }
    }
}

#[differentiable(jvp)]
impl MultiHeadDotProductAttention {
    /// The layer in the scope `cx`: what a parent module's `call` runs, and
    /// `init` and `apply` at the root.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let x = ndarray::Array3::<f64>::ones((1, 3, 4));
    /// let layer = nn::MultiHeadDotProductAttention::new(2);
    /// let vars = layer.init(0, &x, &x, &x, None).unwrap();
    /// assert_eq!(layer.apply(&vars, &x, &x, &x, None).unwrap().shape(), &[1, 3, 4]);
    /// ```
    pub fn call<A: Real>(
        &self,
        cx: &mut Scope,
        inputs_q: &ndarray::Array3<A>,
        inputs_k: &ndarray::Array3<A>,
        inputs_v: &ndarray::Array3<A>,
        mask: Option<&Array4<bool>>,
    ) -> ndarray::Array3<A> {
        let features = inputs_q.shape()[2];
        let qkv = self.qkv_features.unwrap_or(features);
        let heads = self.heads(qkv);
        let (h, d) = if cx.check(&heads) {
            heads.unwrap_or((1, qkv))
        } else {
            (1, qkv)
        };
        let shape = [
            inputs_q.shape()[0],
            h,
            inputs_q.shape()[1],
            inputs_k.shape()[1],
        ];
        let mask = if cx.check(&check_mask(mask, shape)) {
            mask
        } else {
            None
        };
        let query_layer = cx.bind_as("query", self.projection::<Ix4>(&[h, d], 1));
        let query = query_layer.call(cx, inputs_q);
        let key_layer = cx.bind_as("key", self.projection::<Ix4>(&[h, d], 1));
        let key = key_layer.call(cx, inputs_k);
        let value_layer = cx.bind_as("value", self.projection::<Ix4>(&[h, d], 1));
        let value = value_layer.call(cx, inputs_v);
        let x = dot_product_attention(&query, &key, &value, mask);
        let out_features = self.out_features.unwrap_or(features);
        let out_layer = cx.bind_as("out", self.projection::<Ix3>(&[out_features], 2));
        out_layer.call(cx, &x)
    }
}
