//! `Embed`: Flax's `nn.Embed`.

use crate::init::{self, Init, Initializer};
use crate::rules::gather::{Id, check_ids, take};
use crate::rules::linalg::dot_last;
use crate::scope::Scope;
use crate::value::Real;
use adjoint_macros::differentiable;
use ndarray::{ArcArray2, Array, ArrayBase, Data, DimMax, Dimension, Ix1};
use std::marker::PhantomData;

/// An embedding table, as Flax's `nn.Embed`: integer ids (any shape, any integer
/// type) look up rows of an `embedding` parameter of shape
/// `(num_embeddings, features)`, initialized normal with variance `1 / features`
/// (Flax's default). The gradient reaches only the rows read. `A` is the table's
/// float type (Flax's `param_dtype`).
///
/// Ids out of range make `init` and `apply` return an error naming the id.
///
/// ```
/// use adjoint::prelude::*;
/// let ids = ndarray::array![[1usize, 3, 3], [9, 0, 2]];
/// let embed = nn::Embed::<f64>::new(10, 4);
/// let vars = embed.init(0, &ids).unwrap();
/// assert_eq!(vars.shapes(), r#"{"params": {"embedding": [10, 4]}}"#);
/// assert_eq!(embed.apply(&vars, &ids).unwrap().shape(), &[2, 3, 4]);
///
/// let err = embed.apply(&vars, &ndarray::array![[1usize, 10]]).unwrap_err();
/// assert!(err.to_string().contains("id 10 is out of range for a table of 10 rows"), "{err}");
/// ```
#[derive(Clone, Debug)]
pub struct Embed<A = f32> {
    /// Rows of the table.
    pub num_embeddings: usize,
    /// Columns of the table.
    pub features: usize,
    /// The table's initializer.
    pub embedding_init: Init,
    dtype: PhantomData<A>,
}

impl<A: Real> Embed<A> {
    /// A table of `num_embeddings` rows of `features`.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let layer = nn::Embed::<f32>::new(10, 4);
    /// assert_eq!((layer.num_embeddings, layer.features), (10, 4));
    /// ```
    pub fn new(num_embeddings: usize, features: usize) -> Self {
        Embed {
            num_embeddings,
            features,
            embedding_init: Init::new(init::normal((1.0 / features.max(1) as f64).sqrt())),
            dtype: PhantomData,
        }
    }

    /// Sets `embedding_init`.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let _layer = nn::Embed::<f32>::new(10, 4).embedding_init(init::zeros);
    /// ```
    pub fn embedding_init(mut self, init: impl Initializer + Send + Sync + 'static) -> Self {
        self.embedding_init = Init::new(init);
        self
    }
}

#[differentiable]
impl<A: Real> Embed<A> {
    /// The rows `ids` name, features last.
    /// The layer in the scope `cx`: what a parent module's `call` runs, and
    /// `init` and `apply` at the root.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let x = ndarray::array![[1usize, 2]];
    /// let layer = nn::Embed::<f64>::new(5, 3);
    /// let vars = layer.init(0, &x).unwrap();
    /// assert_eq!(layer.apply(&vars, &x).unwrap().shape(), &[1, 2, 3]);
    /// ```
    pub fn call<I: Id, S: Data<Elem = I>, D: Dimension>(
        &self,
        cx: &mut Scope,
        ids: &ArrayBase<S, D>,
    ) -> Array<A, D::Larger> {
        let embedding: ArcArray2<A> = cx.param(
            "embedding",
            self.embedding_init.clone(),
            (self.num_embeddings, self.features),
        );
        // An id out of range is an error; it reads row 0 meanwhile.
        cx.check(&check_ids(ids, self.num_embeddings));
        let rows = ids.map(|i| i.row().filter(|&r| r < self.num_embeddings).unwrap_or(0));
        take(&embedding, &rows)
    }

    /// `query · embeddingᵀ`: the similarity of `query` (features last) to every
    /// row (Flax's `Embed.attend`, used to tie an output layer to the embedding).
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// struct Tied;
    /// #[differentiable]
    /// impl Tied {
    ///     fn call(&self, cx: &mut Scope, ids: &ndarray::Array1<usize>) -> ndarray::Array2<f64> {
    ///         let embed = cx.bind_as("embed", nn::Embed::<f64>::new(7, 3));
    ///         let h = embed.call(cx, ids);
    ///         embed.attend(cx, &h)
    ///     }
    /// }
    /// let ids = ndarray::array![1, 4];
    /// let vars = Tied.init(0, &ids).unwrap();
    /// assert_eq!(Tied.apply(&vars, &ids).unwrap().shape(), &[2, 7]);
    /// ```
    pub fn attend<D: Dimension + DimMax<Ix1, Output = D>>(
        &self,
        cx: &mut Scope,
        query: &Array<A, D>,
    ) -> Array<A, D> {
        let embedding: ArcArray2<A> = cx.param(
            "embedding",
            self.embedding_init.clone(),
            (self.num_embeddings, self.features),
        );
        dot_last(query, &embedding.t())
    }
}
