//! The variables of a module tree, as Flax's: [`Variables`] holds every variable by
//! collection and `/`-joined path (`params` → `Dense_0/kernel`), each a [`Leaf`]
//! array of `f32`, `f64` or integers. Trees are also values: cotangents of
//! parameters, optimizer states, checkpoints.

use crate::scope::{ScopeError, VarPath};
use crate::value::Real;
use ndarray::{ArcArray, Array, ArrayD, Dimension, IxDyn};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// One stored variable: an array of `f32`, `f64` or integers (scalars have shape `[]`).
/// Arrays are shared, never copied, when a module reads them.
///
/// ```
/// use adjoint::Variables;
/// let t = Variables::new().with("params", "Dense_0/kernel", ndarray::arr2(&[[1.0, 2.0]]).into_shared()).unwrap();
/// let leaf = t.get("params", "Dense_0/kernel").unwrap();
/// assert_eq!((leaf.shape(), leaf.kind(), leaf.len()), (&[1, 2][..], "f64", 2));
/// assert_eq!(leaf.to_f64_vec(), vec![1.0, 2.0]);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub enum Leaf {
    F32(ArcArray<f32, IxDyn>),
    F64(ArcArray<f64, IxDyn>),
    I64(ArcArray<i64, IxDyn>),
}

impl Leaf {
    /// The shape (`[]` for a scalar).
    ///
    /// ```
    /// use adjoint::Variables;
    /// let t = Variables::new().with("params", "s", 1.0).unwrap();
    /// assert!(t.get("params", "s").unwrap().shape().is_empty());
    /// ```
    pub fn shape(&self) -> &[usize] {
        match self {
            Leaf::F32(a) => a.shape(),
            Leaf::F64(a) => a.shape(),
            Leaf::I64(a) => a.shape(),
        }
    }

    /// The element type's name.
    ///
    /// ```
    /// use adjoint::Variables;
    /// let t = Variables::new().with("params", "s", 1.0f32).unwrap();
    /// assert_eq!(t.get("params", "s").unwrap().kind(), "f32");
    /// ```
    pub fn kind(&self) -> &'static str {
        match self {
            Leaf::F32(_) => "f32",
            Leaf::F64(_) => "f64",
            Leaf::I64(_) => "integer",
        }
    }

    /// The values as `f64`, flattened in row-major order.
    ///
    /// ```
    /// use adjoint::Variables;
    /// let t = Variables::new().with("params", "Dense_0/kernel", ndarray::arr2(&[[1.0, 2.0]]).into_shared()).unwrap();
    /// assert_eq!(t.get("params", "Dense_0/kernel").unwrap().to_f64_vec(), vec![1.0, 2.0]);
    /// ```
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match self {
            Leaf::F32(a) => a.iter().map(|&v| v as f64).collect(),
            Leaf::F64(a) => a.iter().copied().collect(),
            Leaf::I64(a) => a.iter().map(|&v| v as f64).collect(),
        }
    }

    /// The number of elements (1 for a scalar).
    ///
    /// ```
    /// use adjoint::Variables;
    /// let t = Variables::new().with("params", "Dense_0/kernel", ndarray::arr2(&[[1.0, 2.0]]).into_shared()).unwrap();
    /// assert_eq!(t.get("params", "Dense_0/kernel").unwrap().len(), 2);
    /// ```
    pub fn len(&self) -> usize {
        self.shape().iter().product()
    }

    /// Whether the leaf has no elements.
    ///
    /// ```
    /// use adjoint::Variables;
    /// let t = Variables::new().with("params", "Dense_0/kernel", ndarray::arr2(&[[1.0, 2.0]]).into_shared()).unwrap();
    /// assert!(!t.get("params", "Dense_0/kernel").unwrap().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `f` applied to every element of a float leaf (an `f32` leaf computes in
    /// `f64` and rounds back); integer leaves are kept.
    ///
    /// ```
    /// use adjoint::Variables;
    /// let t = Variables::new().with("params", "Dense_0/kernel", ndarray::arr2(&[[1.0, 2.0]]).into_shared()).unwrap();
    /// let doubled = t.get("params", "Dense_0/kernel").unwrap().map(|v| 2.0 * v);
    /// assert_eq!(doubled.to_f64_vec(), vec![2.0, 4.0]);
    /// ```
    pub fn map(&self, f: impl Fn(f64) -> f64) -> Leaf {
        match self {
            Leaf::F32(a) => Leaf::F32(a.mapv(|v| f(v as f64) as f32).into_shared()),
            Leaf::F64(a) => Leaf::F64(a.mapv(f).into_shared()),
            Leaf::I64(a) => Leaf::I64(a.clone()),
        }
    }

    /// `f` applied to the elements of two leaves of the same kind and shape; `None`
    /// if they differ. Integer leaves are kept (`self`'s).
    ///
    /// ```
    /// use adjoint::Variables;
    /// let t = Variables::new().with("params", "Dense_0/kernel", ndarray::arr2(&[[1.0, 2.0]]).into_shared()).unwrap();
    /// let k = t.get("params", "Dense_0/kernel").unwrap();
    /// assert_eq!(k.zip_map(k, |a, b| a * b).unwrap().to_f64_vec(), vec![1.0, 4.0]);
    /// ```
    pub fn zip_map(&self, other: &Leaf, f: impl Fn(f64, f64) -> f64) -> Option<Leaf> {
        if self.shape() != other.shape() {
            return None;
        }
        let zip = |a: &ArcArray<f64, IxDyn>, b: &ArcArray<f64, IxDyn>| {
            ndarray::Zip::from(a).and(b).map_collect(|&x, &y| f(x, y))
        };
        Some(match (self, other) {
            (Leaf::F64(a), Leaf::F64(b)) => Leaf::F64(zip(a, b).into_shared()),
            (Leaf::F32(a), Leaf::F32(b)) => Leaf::F32(
                ndarray::Zip::from(a)
                    .and(b)
                    .map_collect(|&x, &y| f(x as f64, y as f64) as f32)
                    .into_shared(),
            ),
            (Leaf::I64(a), Leaf::I64(_)) => Leaf::I64(a.clone()),
            _ => return None,
        })
    }

    /// The leaves stacked along a new leading axis, if they agree in type and shape.
    fn stack(leaves: &[&Leaf]) -> Option<Leaf> {
        macro_rules! stack_as {
            ($variant:ident) => {{
                let views: Option<Vec<_>> = leaves
                    .iter()
                    .map(|l| match l {
                        Leaf::$variant(a) => Some(a.view()),
                        _ => None,
                    })
                    .collect();
                let views = views?;
                ndarray::stack(ndarray::Axis(0), &views)
                    .ok()
                    .map(|a| Leaf::$variant(a.into_shared()))
            }};
        }
        match leaves.first()? {
            Leaf::F32(_) => stack_as!(F32),
            Leaf::F64(_) => stack_as!(F64),
            Leaf::I64(_) => stack_as!(I64),
        }
    }

    /// An empty batch of leaves like this one: a leading axis of length 0.
    fn empty_batch(&self) -> Leaf {
        let mut shape = vec![0];
        shape.extend_from_slice(self.shape());
        let dim = IxDyn(&shape);
        match self {
            Leaf::F32(_) => Leaf::F32(ArcArray::zeros(dim)),
            Leaf::F64(_) => Leaf::F64(ArcArray::zeros(dim)),
            Leaf::I64(_) => Leaf::I64(ArcArray::zeros(dim)),
        }
    }

    pub(crate) fn zeros_like(&self) -> Leaf {
        match self {
            Leaf::F32(a) => Leaf::F32(ArcArray::zeros(a.raw_dim())),
            Leaf::F64(a) => Leaf::F64(ArcArray::zeros(a.raw_dim())),
            Leaf::I64(a) => Leaf::I64(ArcArray::zeros(a.raw_dim())),
        }
    }

    /// Adds `other` in place; the error names `collection/path` when the two differ
    /// in shape or element type.
    fn add(&mut self, other: &Leaf, collection: &str, path: &str) -> Result<(), ScopeError> {
        match (&mut *self, other) {
            (Leaf::F32(a), Leaf::F32(b)) if a.shape() == b.shape() => *a += b,
            (Leaf::F64(a), Leaf::F64(b)) if a.shape() == b.shape() => *a += b,
            (Leaf::I64(a), Leaf::I64(b)) if a.shape() == b.shape() => *a += b,
            (a, b) if a.kind() != b.kind() => {
                return Err(ScopeError::TypeMismatch {
                    collection: collection.into(),
                    path: path.into(),
                    expected: a.kind(),
                    found: b.kind(),
                });
            }
            (a, b) => {
                return Err(ScopeError::ShapeMismatch {
                    collection: collection.into(),
                    path: path.into(),
                    expected: a.shape().to_vec(),
                    found: b.shape().to_vec(),
                });
            }
        }
        Ok(())
    }
}

/// A value that can be stored in [`Variables`] and read back.
///
/// ```
/// use adjoint::Variables;
/// let t = Variables::new().with("state", "count", 3i64).unwrap();
/// assert_eq!(t.read::<i64>("state", "count").unwrap(), 3);
/// let w: ndarray::ArcArray1<f32> = Variables::new()
///     .with("params", "w", ndarray::arr1(&[1.0f32, 2.0]).into_shared())
///     .unwrap()
///     .read("params", "w")
///     .unwrap();
/// assert_eq!(w.len(), 2);
/// ```
pub trait Stored: Sized {
    /// The element type's name, for errors.
    const KIND: &'static str;
    /// The rank (`0` for a scalar, `None` for a dynamic one), for errors.
    const RANK: Option<usize>;
    /// Moves the value into a leaf.
    fn into_leaf(self) -> Leaf;
    /// Reads a leaf, sharing its data where the type allows. `None` if the element
    /// type or rank differs.
    fn from_leaf(leaf: &Leaf) -> Option<Self>;
    /// A value of `shape` from an initializer's `f64` sample.
    fn from_sample(sample: ArrayD<f64>) -> Option<Self>;
    /// A zero with no elements (or a scalar zero): what a read that failed gives
    /// while the error travels to `init`/`apply`.
    fn empty() -> Self;
}

impl<A: Real> Stored for A {
    const KIND: &'static str = A::KIND;
    const RANK: Option<usize> = Some(0);
    fn into_leaf(self) -> Leaf {
        A::into_leaf(ArcArray::from_elem(IxDyn(&[]), self))
    }
    fn from_leaf(leaf: &Leaf) -> Option<Self> {
        A::leaf_array(leaf)
            .filter(|a| a.ndim() == 0)
            .and_then(|a| a.iter().next().copied())
    }
    fn from_sample(sample: ArrayD<f64>) -> Option<Self> {
        (sample.ndim() == 0)
            .then(|| sample.iter().next().map(|&v| A::lit(v)))
            .flatten()
    }
    fn empty() -> Self {
        A::zero()
    }
}

macro_rules! integer_stored {
    ($($t:ty),*) => {$(
        impl Stored for $t {
            const KIND: &'static str = "integer";
            const RANK: Option<usize> = Some(0);
            fn into_leaf(self) -> Leaf {
                Leaf::I64(ArcArray::from_elem(IxDyn(&[]), self as i64))
            }
            fn from_leaf(leaf: &Leaf) -> Option<Self> {
                match leaf {
                    Leaf::I64(a) if a.ndim() == 0 => a.iter().next().map(|&v| v as $t),
                    _ => None,
                }
            }
            fn from_sample(sample: ArrayD<f64>) -> Option<Self> {
                (sample.ndim() == 0).then(|| sample.iter().next().map(|&v| v as $t)).flatten()
            }
            fn empty() -> Self {
                0
            }
        }
    )*};
}

integer_stored!(i32, i64, u32, usize);

impl<A: Real, D: Dimension> Stored for ArcArray<A, D> {
    const KIND: &'static str = A::KIND;
    const RANK: Option<usize> = D::NDIM;
    fn into_leaf(self) -> Leaf {
        A::into_leaf(self.into_dyn())
    }
    fn from_leaf(leaf: &Leaf) -> Option<Self> {
        A::leaf_array(leaf).and_then(|a| a.clone().into_dimensionality::<D>().ok())
    }
    fn from_sample(sample: ArrayD<f64>) -> Option<Self> {
        sample
            .mapv(A::lit)
            .into_shared()
            .into_dimensionality::<D>()
            .ok()
    }
    fn empty() -> Self {
        ArcArray::zeros(D::zeros(D::NDIM.unwrap_or(0)))
    }
}

/// Reading into an owned array copies; prefer `ArcArray`, which shares.
impl<A: Real, D: Dimension> Stored for Array<A, D> {
    const KIND: &'static str = A::KIND;
    const RANK: Option<usize> = D::NDIM;
    fn into_leaf(self) -> Leaf {
        A::into_leaf(self.into_dyn().into_shared())
    }
    fn from_leaf(leaf: &Leaf) -> Option<Self> {
        A::leaf_array(leaf).and_then(|a| a.to_owned().into_dimensionality::<D>().ok())
    }
    fn from_sample(sample: ArrayD<f64>) -> Option<Self> {
        sample.mapv(A::lit).into_dimensionality::<D>().ok()
    }
    fn empty() -> Self {
        Array::zeros(D::zeros(D::NDIM.unwrap_or(0)))
    }
}

/// Every variable of a module tree: collection → path → leaf, as Flax's
/// `{"params": {"Dense_0": {"kernel": ..}}}` with paths joined by `/`.
///
/// ```
/// use adjoint::Variables;
/// let t = Variables::new().with("params", "Dense_0/kernel", ndarray::arr2(&[[1.0, 2.0]]).into_shared()).unwrap();
/// assert_eq!(t.shapes(), r#"{"params": {"Dense_0": {"kernel": [1, 2]}}}"#);
/// assert_eq!(t.to_string(), r#"{"params": {"Dense_0": {"kernel": [[1.0, 2.0]]}}}"#);
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Variables {
    collections: BTreeMap<String, BTreeMap<String, Leaf>>,
    /// Set on gradients that must not be used: incomplete ones
    /// ([`ScopeError::SecondOrderUnsupported`]), or a sum of trees that did not match.
    error: Option<Box<ScopeError>>,
}

impl Variables {
    /// No variables.
    ///
    /// ```
    /// use adjoint::Variables;
    /// assert_eq!(Variables::new().leaf_count(), 0);
    /// ```
    pub fn new() -> Self {
        Variables::default()
    }

    /// Adds a variable (builder style), e.g. `Variables::new().with("params", "LearnScale_0/scale", 1.5)`.
    ///
    /// ```
    /// use adjoint::Variables;
    /// let t = Variables::new().with("params", "LearnScale_0/scale", 1.5).unwrap();
    /// assert_eq!(t.to_string(), r#"{"params": {"LearnScale_0": {"scale": 1.5}}}"#);
    /// ```
    ///
    /// # Errors
    /// [`ScopeError::InvalidVariables`] when a path is both a leaf and a subtree.
    pub fn with(
        mut self,
        collection: &str,
        path: &str,
        value: impl Stored,
    ) -> Result<Self, ScopeError> {
        self.insert(collection, path, value.into_leaf())?;
        Ok(self)
    }

    /// Stores `leaf` at `collection/path`.
    ///
    /// ```
    /// use adjoint::Variables;
    /// let mut t = Variables::new();
    /// let leaf = Variables::new().with("params", "w", 1.0).unwrap().get("params", "w").unwrap().clone();
    /// t.insert("params", "Dense_0/w", leaf.clone()).unwrap();
    /// // A path that is already a subtree cannot be a leaf.
    /// assert!(t.insert("params", "Dense_0", leaf).is_err());
    /// ```
    ///
    /// # Errors
    /// [`ScopeError::InvalidVariables`] when the path is empty, or is both a leaf and
    /// a subtree.
    pub fn insert(&mut self, collection: &str, path: &str, leaf: Leaf) -> Result<(), ScopeError> {
        if path.is_empty() || path.split('/').any(str::is_empty) {
            return Err(ScopeError::InvalidVariables {
                reason: format!("`{collection}/{path}` is not a path of names"),
            });
        }
        let coll = self.collections.entry(collection.to_string()).or_default();
        let prefix = format!("{path}/");
        if coll.keys().any(|k| k.starts_with(&prefix))
            || ancestors(path).any(|a| coll.contains_key(a))
        {
            return Err(ScopeError::InvalidVariables {
                reason: format!(
                    "`{collection}/{path}` would be both a variable and a module's subtree"
                ),
            });
        }
        coll.insert(path.to_string(), leaf);
        Ok(())
    }

    /// The leaf at `collection/path`.
    ///
    /// ```
    /// use adjoint::Variables;
    /// let t = Variables::new().with("params", "Dense_0/kernel", ndarray::arr2(&[[1.0, 2.0]]).into_shared()).unwrap();
    /// assert!(t.get("params", "Dense_0/kernel").is_some());
    /// assert!(t.get("params", "Dense_0/bias").is_none());
    /// ```
    pub fn get(&self, collection: &str, path: &str) -> Option<&Leaf> {
        self.collections.get(collection)?.get(path)
    }

    /// The variable at `collection/path` as a `T`.
    ///
    /// ```
    /// use adjoint::Variables;
    /// let t = Variables::new().with("params", "Dense_0/kernel", ndarray::arr2(&[[1.0, 2.0]]).into_shared()).unwrap();
    /// let k: ndarray::Array2<f64> = t.read("params", "Dense_0/kernel").unwrap();
    /// assert_eq!(k, ndarray::arr2(&[[1.0, 2.0]]));
    /// assert!(t.read::<f64>("params", "Dense_0/kernel").is_err());
    /// ```
    ///
    /// # Errors
    /// When the collection or variable is missing, or holds another type.
    pub fn read<T: Stored>(&self, collection: &str, path: &str) -> Result<T, ScopeError> {
        if let Some(e) = &self.error {
            return Err((**e).clone());
        }
        let coll =
            self.collections
                .get(collection)
                .ok_or_else(|| ScopeError::CollectionNotFound {
                    collection: collection.into(),
                    path: path.into(),
                })?;
        let leaf = coll.get(path).ok_or_else(|| match collection {
            "params" => ScopeError::ParamNotFound { path: path.into() },
            _ => ScopeError::CollectionNotFound {
                collection: collection.into(),
                path: path.into(),
            },
        })?;
        T::from_leaf(leaf).ok_or_else(|| read_error::<T>(collection, path.into(), leaf))
    }

    /// Why these variables (gradients) must not be used, if they must not.
    ///
    /// ```
    /// use adjoint::Variables;
    /// let mut a = Variables::new().with("params", "w", 1.0).unwrap();
    /// assert!(a.error().is_none());
    /// let _ = a.accumulate(&Variables::new().with("params", "w", 1.0f32).unwrap());
    /// assert!(a.error().is_some());
    /// ```
    pub fn error(&self) -> Option<ScopeError> {
        self.error.as_deref().cloned()
    }

    fn poison(&mut self, e: ScopeError) {
        self.error.get_or_insert(Box::new(e));
    }

    /// Collection `name` moved out into a tree of its own, named `renamed` there;
    /// an error this tree carries, both carry.
    pub(crate) fn take_collection(&mut self, name: &str, renamed: &str) -> Variables {
        let mut taken = Variables {
            collections: BTreeMap::new(),
            error: self.error.clone(),
        };
        if let Some(c) = self.collections.remove(name) {
            taken.collections.insert(renamed.to_string(), c);
        }
        taken
    }

    /// The names of the collections.
    ///
    /// ```
    /// use adjoint::Variables;
    /// let t = Variables::new().with("params", "w", 1.0).unwrap().with("batch_stats", "m", 0.0).unwrap();
    /// assert_eq!(t.collections().collect::<Vec<_>>(), ["batch_stats", "params"]);
    /// ```
    pub fn collections(&self) -> impl Iterator<Item = &str> {
        self.collections.keys().map(String::as_str)
    }

    /// The `(path, leaf)` pairs of a collection, in path order.
    ///
    /// ```
    /// use adjoint::Variables;
    /// let t = Variables::new().with("params", "Dense_0/kernel", ndarray::arr2(&[[1.0, 2.0]]).into_shared()).unwrap();
    /// assert_eq!(t.iter("params").map(|(p, _)| p).collect::<Vec<_>>(), ["Dense_0/kernel"]);
    /// ```
    pub fn iter(&self, collection: &str) -> impl Iterator<Item = (&str, &Leaf)> {
        self.collections
            .get(collection)
            .into_iter()
            .flat_map(|c| c.iter().map(|(k, v)| (k.as_str(), v)))
    }

    /// Only the named collections.
    ///
    /// ```
    /// use adjoint::Variables;
    /// let t = Variables::new().with("params", "w", 1.0).unwrap().with("batch_stats", "m", 0.0).unwrap();
    /// assert_eq!(t.only(&["params"]).to_string(), r#"{"params": {"w": 1.0}}"#);
    /// ```
    pub fn only(&self, names: &[&str]) -> Variables {
        let collections = self
            .collections
            .iter()
            .filter(|(k, _)| names.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Variables {
            collections,
            error: self.error.clone(),
        }
    }

    /// The collections of both trees, `other`'s where both have one: Flax's
    /// `{'params': params, **state}`. Differentiable: in a training step the
    /// gradient goes back to each collection's tree.
    ///
    /// ```
    /// use adjoint::Variables;
    /// let params = Variables::new().with("params", "w", 1.0).unwrap();
    /// let state = Variables::new().with("batch_stats", "mean", 0.5).unwrap();
    /// let vars = params.merge(&state);
    /// assert_eq!(vars.to_string(), r#"{"batch_stats": {"mean": 0.5}, "params": {"w": 1.0}}"#);
    /// ```
    pub fn merge(&self, other: &Variables) -> Variables {
        let mut collections = self.collections.clone();
        for (c, coll) in &other.collections {
            collections.insert(c.clone(), coll.clone());
        }
        Variables {
            collections,
            error: self.error.clone().or_else(|| other.error.clone()),
        }
    }

    /// The variables under `prefix/` of every collection, with the prefix removed.
    #[doc(hidden)]
    pub fn subtree(&self, prefix: &str) -> Variables {
        let mut out = Variables {
            error: self.error.clone(),
            ..Variables::new()
        };
        let p = format!("{prefix}/");
        for (c, coll) in &self.collections {
            for (k, v) in coll {
                if let Some(rest) = k.strip_prefix(&p) {
                    out.collections
                        .entry(c.clone())
                        .or_default()
                        .insert(rest.to_string(), v.clone());
                }
            }
        }
        out
    }

    /// `self + other`, leaf by leaf (cotangents add up); leaves only in `other` are
    /// copied.
    ///
    /// ```
    /// use adjoint::Variables;
    /// let mut a = Variables::new().with("params", "w", 1.0).unwrap();
    /// a.accumulate(&Variables::new().with("params", "w", 2.0).unwrap()).unwrap();
    /// assert_eq!(a.to_string(), r#"{"params": {"w": 3.0}}"#);
    /// let wrong = Variables::new().with("params", "w", ndarray::arr1(&[1.0, 2.0]).into_shared()).unwrap();
    /// assert!(a.accumulate(&wrong).is_err());
    /// ```
    ///
    /// # Errors
    /// [`ScopeError::ShapeMismatch`] or [`ScopeError::TypeMismatch`] naming the first
    /// path whose leaves differ; `self` then holds the error too (its reads fail), so
    /// no sum that dropped a leaf is ever used.
    pub fn accumulate(&mut self, other: &Variables) -> Result<(), ScopeError> {
        if let Some(e) = &other.error {
            self.poison((**e).clone());
        }
        for (c, coll) in &other.collections {
            let mine = self.collections.entry(c.clone()).or_default();
            for (k, v) in coll {
                let added = match mine.get_mut(k) {
                    Some(m) => m.add(v, c, k),
                    None => {
                        mine.insert(k.clone(), v.clone());
                        Ok(())
                    }
                };
                if let Err(e) = added {
                    self.poison(e.clone());
                    return Err(e);
                }
            }
        }
        match &self.error {
            Some(e) => Err((**e).clone()),
            None => Ok(()),
        }
    }

    /// The same variables with `prefix/` before every path.
    #[doc(hidden)]
    pub fn prefixed(&self, prefix: &str) -> Variables {
        if prefix.is_empty() {
            return self.clone();
        }
        let collections = self
            .collections
            .iter()
            .map(|(c, coll)| {
                let coll = coll
                    .iter()
                    .map(|(k, v)| (format!("{prefix}/{k}"), v.clone()))
                    .collect();
                (c.clone(), coll)
            })
            .collect();
        Variables {
            collections,
            error: self.error.clone(),
        }
    }

    /// Per-example variables stacked into one tree: every leaf gains a leading axis
    /// with one entry per item (what `vmap!` gives for per-example cotangents).
    ///
    /// ```
    /// use adjoint::Variables;
    /// let a = Variables::new().with("params", "w", 1.0).unwrap();
    /// let b = Variables::new().with("params", "w", 2.0).unwrap();
    /// let both = Variables::stack(&[a, b]).unwrap();
    /// assert_eq!(both.to_string(), r#"{"params": {"w": [1.0, 2.0]}}"#);
    /// ```
    ///
    /// # Errors
    /// [`ScopeError::InvalidVariables`] when the items differ in paths, types or shapes.
    pub fn stack(items: &[Variables]) -> Result<Variables, ScopeError> {
        let differ = |c: &str, p: &str| ScopeError::InvalidVariables {
            reason: format!("the stacked variables differ at `{c}/{p}`"),
        };
        let paths = |v: &Variables| -> BTreeSet<(String, String)> {
            v.collections
                .iter()
                .flat_map(|(c, coll)| coll.keys().map(move |k| (c.clone(), k.clone())))
                .collect()
        };
        let mut out = Variables {
            error: items.iter().find_map(|v| v.error.clone()),
            ..Variables::new()
        };
        let Some(first) = items.first() else {
            return Ok(out);
        };
        let want = paths(first);
        if let Some((c, p)) = items
            .iter()
            .find_map(|v| paths(v).symmetric_difference(&want).next().cloned())
        {
            return Err(differ(&c, &p));
        }
        for (c, p) in want {
            let leaves: Vec<&Leaf> = items.iter().filter_map(|v| v.get(&c, &p)).collect();
            let stacked = Leaf::stack(&leaves).ok_or_else(|| differ(&c, &p))?;
            out.collections.entry(c).or_default().insert(p, stacked);
        }
        Ok(out)
    }

    /// The same tree with a batch of no examples at every leaf (a leading axis of
    /// length 0): what [`Variables::stack`] of an empty batch of such trees is.
    #[doc(hidden)]
    pub fn empty_batch(&self) -> Variables {
        let collections = self
            .collections
            .iter()
            .map(|(c, coll)| {
                let coll = coll.iter().map(|(k, v)| (k.clone(), v.empty_batch()));
                (c.clone(), coll.collect())
            })
            .collect();
        Variables {
            collections,
            error: self.error.clone(),
        }
    }

    /// Adds a zero for each float parameter of `variables` this cotangent tree lacks:
    /// a gradient holds every parameter, as JAX's does, also those the output does
    /// not depend on (a bias whose second derivative is zero, a parameter read and
    /// not used).
    ///
    /// ```
    /// use adjoint::Variables;
    /// let vars = Variables::new()
    ///     .with("params", "w", ndarray::arr1(&[1.0, 2.0]).into_shared())
    ///     .and_then(|v| v.with("params", "b", ndarray::arr1(&[3.0]).into_shared()))
    ///     .unwrap();
    /// let mut grads = Variables::new().with("params", "w", ndarray::arr1(&[0.5, 0.5]).into_shared()).unwrap();
    /// grads.complete_params(&vars);
    /// assert_eq!(grads.read::<ndarray::ArrayD<f64>>("params", "b").unwrap(), ndarray::arr1(&[0.0]).into_dyn());
    /// assert_eq!(grads.leaf_count(), 2);
    /// ```
    #[doc(hidden)]
    pub fn complete_params(&mut self, variables: &Variables) {
        let Some(params) = variables.collections.get("params") else {
            return;
        };
        let mine = self.collections.entry("params".to_string()).or_default();
        for (k, v) in params {
            if !matches!(v, Leaf::I64(_)) && !mine.contains_key(k) {
                mine.insert(k.clone(), v.zeros_like());
            }
        }
    }

    /// The same tree with every leaf zero.
    ///
    /// ```
    /// use adjoint::Variables;
    /// let t = Variables::new().with("params", "Dense_0/kernel", ndarray::arr2(&[[1.0, 2.0]]).into_shared()).unwrap();
    /// assert_eq!(t.zeros_like().global_norm(), 0.0);
    /// ```
    pub fn zeros_like(&self) -> Variables {
        let collections = self
            .collections
            .iter()
            .map(|(c, coll)| {
                (
                    c.clone(),
                    coll.iter()
                        .map(|(k, v)| (k.clone(), v.zeros_like()))
                        .collect(),
                )
            })
            .collect();
        Variables {
            collections,
            error: None,
        }
    }

    /// A leaf, mutably (optimizers update theirs in place).
    pub(crate) fn leaf_mut(&mut self, collection: &str, path: &str) -> Option<&mut Leaf> {
        self.collections.get_mut(collection)?.get_mut(path)
    }

    /// Every `(collection, path)`, in order.
    pub(crate) fn paths(&self) -> Vec<(String, String)> {
        self.leaves()
            .map(|(c, p, _)| (c.to_string(), p.to_string()))
            .collect()
    }

    /// The leaves for which `keep` holds.
    pub(crate) fn filtered(&self, mut keep: impl FnMut(&str, &str, &Leaf) -> bool) -> Variables {
        let mut out = Variables {
            error: self.error.clone(),
            ..Variables::new()
        };
        for (c, p, l) in self.leaves() {
            if keep(c, p, l) {
                out.collections
                    .entry(c.to_string())
                    .or_default()
                    .insert(p.to_string(), l.clone());
            }
        }
        out
    }

    /// This tree with `other`'s leaves put in place of its own (and added where it
    /// has none).
    pub(crate) fn overwritten(mut self, other: Variables) -> Variables {
        for (c, coll) in other.collections {
            let mine = self.collections.entry(c).or_default();
            for (p, l) in coll {
                mine.insert(p, l);
            }
        }
        self
    }

    // ----- trees as values (what optax does to params, updates and states) -----

    /// Every `(collection, path, leaf)`, in order.
    ///
    /// ```
    /// use adjoint::Variables;
    /// let t = Variables::new().with("params", "Dense_0/kernel", ndarray::arr2(&[[1.0, 2.0]]).into_shared()).unwrap();
    /// assert_eq!(t.leaves().count(), 1);
    /// ```
    pub fn leaves(&self) -> impl Iterator<Item = (&str, &str, &Leaf)> {
        self.collections
            .iter()
            .flat_map(|(c, coll)| coll.iter().map(move |(p, l)| (c.as_str(), p.as_str(), l)))
    }

    /// The number of leaves (`jax.tree_util.tree_leaves(t)`'s length).
    ///
    /// ```
    /// use adjoint::Variables;
    /// let t = Variables::new().with("params", "Dense_0/kernel", ndarray::arr2(&[[1.0, 2.0]]).into_shared()).unwrap();
    /// assert_eq!(t.leaf_count(), 1);
    /// ```
    pub fn leaf_count(&self) -> usize {
        self.collections.values().map(BTreeMap::len).sum()
    }

    /// The number of elements over every leaf (a model's parameter count).
    ///
    /// ```
    /// use adjoint::Variables;
    /// let t = Variables::new().with("params", "Dense_0/kernel", ndarray::arr2(&[[1.0, 2.0]]).into_shared()).unwrap();
    /// assert_eq!(t.size(), 2);
    /// ```
    pub fn size(&self) -> usize {
        self.leaves().map(|(_, _, l)| l.len()).sum()
    }

    /// `f` applied to every element of every float leaf (`jax.tree_util.tree_map`
    /// with an elementwise function); integer leaves are kept.
    ///
    /// ```
    /// use adjoint::Variables;
    /// let t = Variables::new().with("params", "w", ndarray::arr1(&[1.0, -2.0]).into_shared()).unwrap();
    /// assert_eq!(t.map(|v| v * v).to_string(), r#"{"params": {"w": [1.0, 4.0]}}"#);
    /// ```
    pub fn map(&self, f: impl Fn(f64) -> f64) -> Variables {
        self.map_leaves(|_, _, l| l.map(&f))
    }

    /// `f` applied to every leaf with its collection and path.
    ///
    /// ```
    /// use adjoint::Variables;
    /// let t = Variables::new().with("params", "Dense_0/kernel", ndarray::arr2(&[[1.0, 2.0]]).into_shared()).unwrap();
    /// // Zero the kernels, keep the rest.
    /// let z = t.map_leaves(|_, path, leaf| if path.ends_with("kernel") { leaf.map(|_| 0.0) } else { leaf.clone() });
    /// assert_eq!(z.to_string(), r#"{"params": {"Dense_0": {"kernel": [[0.0, 0.0]]}}}"#);
    /// ```
    pub fn map_leaves(&self, mut f: impl FnMut(&str, &str, &Leaf) -> Leaf) -> Variables {
        let collections = self
            .collections
            .iter()
            .map(|(c, coll)| {
                let coll = coll.iter().map(|(p, l)| (p.clone(), f(c, p, l)));
                (c.clone(), coll.collect())
            })
            .collect();
        Variables {
            collections,
            error: self.error.clone(),
        }
    }

    /// `f` applied to the elements of two trees with the same structure (every
    /// collection, path, kind and shape): `jax.tree_util.tree_map(f, a, b)`.
    ///
    /// ```
    /// use adjoint::Variables;
    /// let p = Variables::new().with("params", "w", 1.0).unwrap();
    /// let g = Variables::new().with("params", "w", 0.5).unwrap();
    /// let sgd = p.zip_map(&g, |p, g| p - 0.1 * g).unwrap();
    /// assert_eq!(sgd.to_string(), r#"{"params": {"w": 0.95}}"#);
    /// ```
    ///
    /// # Errors
    /// [`ScopeError::InvalidVariables`] naming the first path that one tree lacks,
    /// [`ScopeError::ShapeMismatch`] or [`ScopeError::TypeMismatch`] where leaves
    /// differ.
    pub fn zip_map(
        &self,
        other: &Variables,
        f: impl Fn(f64, f64) -> f64,
    ) -> Result<Variables, ScopeError> {
        self.same_structure(other)?;
        let mut out = Variables {
            error: self.error.clone().or_else(|| other.error.clone()),
            ..Variables::new()
        };
        for (c, p, a) in self.leaves() {
            let b = other.get(c, p).expect("checked by same_structure");
            let leaf = a.zip_map(b, &f).expect("checked by same_structure");
            out.collections
                .entry(c.to_string())
                .or_default()
                .insert(p.to_string(), leaf);
        }
        Ok(out)
    }

    /// `Ok` if `other` has exactly this tree's collections, paths, kinds and shapes.
    ///
    /// ```
    /// use adjoint::Variables;
    /// let t = Variables::new().with("params", "Dense_0/kernel", ndarray::arr2(&[[1.0, 2.0]]).into_shared()).unwrap();
    /// assert!(t.same_structure(&t.zeros_like()).is_ok());
    /// assert!(t.same_structure(&Variables::new()).is_err());
    /// ```
    ///
    /// # Errors
    /// The first difference, naming its path.
    pub fn same_structure(&self, other: &Variables) -> Result<(), ScopeError> {
        let missing = |c: &str, p: &str, side: &str| ScopeError::InvalidVariables {
            reason: format!("`{c}/{p}` is only in the {side} tree"),
        };
        for (c, p, a) in self.leaves() {
            let Some(b) = other.get(c, p) else {
                return Err(missing(c, p, "first"));
            };
            if a.kind() != b.kind() {
                return Err(ScopeError::TypeMismatch {
                    collection: c.into(),
                    path: p.into(),
                    expected: a.kind(),
                    found: b.kind(),
                });
            }
            if a.shape() != b.shape() {
                return Err(ScopeError::ShapeMismatch {
                    collection: c.into(),
                    path: p.into(),
                    expected: a.shape().to_vec(),
                    found: b.shape().to_vec(),
                });
            }
        }
        match other.leaves().find(|(c, p, _)| self.get(c, p).is_none()) {
            Some((c, p, _)) => Err(missing(c, p, "second")),
            None => Ok(()),
        }
    }

    /// `self + other`, leaf by leaf, for trees of the same structure.
    ///
    /// ```
    /// use adjoint::Variables;
    /// let t = Variables::new().with("params", "Dense_0/kernel", ndarray::arr2(&[[1.0, 2.0]]).into_shared()).unwrap();
    /// assert_eq!(t.add(&t).unwrap().to_string(), r#"{"params": {"Dense_0": {"kernel": [[2.0, 4.0]]}}}"#);
    /// ```
    ///
    /// # Errors
    /// As [`Variables::zip_map`].
    pub fn add(&self, other: &Variables) -> Result<Variables, ScopeError> {
        self.zip_map(other, |a, b| a + b)
    }

    /// `self += other`, leaf by leaf and in place, for trees of the same structure
    /// (integer leaves are kept, as [`Variables::add`] keeps them): what an
    /// optimizer step does to the params it owns, without a second tree.
    ///
    /// ```
    /// use adjoint::Variables;
    /// let mut t = Variables::new().with("params", "w", ndarray::arr1(&[1.0, 2.0]).into_shared()).unwrap();
    /// t.add_assign(&t.clone()).unwrap();
    /// assert_eq!(t.to_string(), r#"{"params": {"w": [2.0, 4.0]}}"#);
    /// assert!(t.add_assign(&Variables::new()).is_err());
    /// ```
    ///
    /// # Errors
    /// As [`Variables::zip_map`]; `self` is left unchanged.
    pub fn add_assign(&mut self, other: &Variables) -> Result<(), ScopeError> {
        self.same_structure(other)?;
        if self.error.is_none() {
            self.error = other.error.clone();
        }
        for (c, coll) in self.collections.iter_mut() {
            for (p, leaf) in coll.iter_mut() {
                match (leaf, other.get(c, p)) {
                    (Leaf::F32(a), Some(Leaf::F32(b))) => *a += b,
                    (Leaf::F64(a), Some(Leaf::F64(b))) => *a += b,
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// `self - other`, leaf by leaf, for trees of the same structure.
    ///
    /// ```
    /// use adjoint::Variables;
    /// let t = Variables::new().with("params", "Dense_0/kernel", ndarray::arr2(&[[1.0, 2.0]]).into_shared()).unwrap();
    /// assert_eq!(t.sub(&t).unwrap().global_norm(), 0.0);
    /// ```
    ///
    /// # Errors
    /// As [`Variables::zip_map`].
    pub fn sub(&self, other: &Variables) -> Result<Variables, ScopeError> {
        self.zip_map(other, |a, b| a - b)
    }

    /// Every float leaf times `s`.
    ///
    /// ```
    /// use adjoint::Variables;
    /// let t = Variables::new().with("params", "Dense_0/kernel", ndarray::arr2(&[[1.0, 2.0]]).into_shared()).unwrap();
    /// assert_eq!(t.scale(0.5).to_string(), r#"{"params": {"Dense_0": {"kernel": [[0.5, 1.0]]}}}"#);
    /// ```
    pub fn scale(&self, s: f64) -> Variables {
        self.map(|v| s * v)
    }

    /// The sum over every float element of `self * other` (`optax.tree_vdot`).
    ///
    /// ```
    /// use adjoint::Variables;
    /// let t = Variables::new().with("params", "Dense_0/kernel", ndarray::arr2(&[[1.0, 2.0]]).into_shared()).unwrap();
    /// assert_eq!(t.dot(&t).unwrap(), 5.0);
    /// ```
    ///
    /// # Errors
    /// As [`Variables::zip_map`].
    pub fn dot(&self, other: &Variables) -> Result<f64, ScopeError> {
        self.same_structure(other)?;
        let mut sum = 0.0;
        for (c, p, a) in self.leaves() {
            let b = other.get(c, p).expect("checked by same_structure");
            if !matches!(a, Leaf::I64(_)) {
                sum += a
                    .to_f64_vec()
                    .iter()
                    .zip(b.to_f64_vec())
                    .map(|(x, y)| x * y)
                    .sum::<f64>();
            }
        }
        Ok(sum)
    }

    /// The Euclidean norm over every float element (`optax.global_norm`).
    ///
    /// ```
    /// use adjoint::Variables;
    /// let t = Variables::new().with("params", "a", 3.0).unwrap().with("params", "b", 4.0f32).unwrap();
    /// assert_eq!(t.global_norm(), 5.0);
    /// ```
    pub fn global_norm(&self) -> f64 {
        self.leaves()
            .filter(|(_, _, l)| !matches!(l, Leaf::I64(_)))
            .map(|(_, _, l)| l.to_f64_vec().iter().map(|v| v * v).sum::<f64>())
            .sum::<f64>()
            .sqrt()
    }

    /// The shapes, as the nested tree Flax prints for `jax.tree_util.tree_map(jnp.shape, ..)`.
    ///
    /// ```
    /// use adjoint::Variables;
    /// let t = Variables::new().with("params", "Dense_0/kernel", ndarray::arr2(&[[1.0, 2.0]]).into_shared()).unwrap();
    /// assert_eq!(t.shapes(), r#"{"params": {"Dense_0": {"kernel": [1, 2]}}}"#);
    /// ```
    pub fn shapes(&self) -> String {
        self.render(&|leaf| format!("{:?}", leaf.shape()))
    }

    fn render(&self, leaf_text: &dyn Fn(&Leaf) -> String) -> String {
        #[derive(Default)]
        struct Node {
            leaf: Option<String>,
            children: BTreeMap<String, Node>,
        }
        fn show(n: &Node) -> String {
            if let Some(l) = &n.leaf {
                return l.clone();
            }
            let items: Vec<String> = n
                .children
                .iter()
                .map(|(k, v)| format!("\"{k}\": {}", show(v)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        let mut root = Node::default();
        for (c, coll) in &self.collections {
            let cnode = root.children.entry(c.clone()).or_default();
            for (path, leaf) in coll {
                let mut node = &mut *cnode;
                for part in path.split('/') {
                    node = node.children.entry(part.to_string()).or_default();
                }
                node.leaf = Some(leaf_text(leaf));
            }
        }
        show(&root)
    }
}

fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.char_indices()
        .filter(|(_, c)| *c == '/')
        .map(move |(i, _)| &path[..i])
}

impl fmt::Display for Variables {
    /// The nested tree, as Flax prints it: `{"params": {"LearnScale_0": {"scale": 0.0}}}`.
    /// This is JSON, except that non-finite values print as `NaN`, `Infinity` and
    /// `-Infinity`, as Python's `json` module writes them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(e) = &self.error {
            return write!(f, "<unusable gradients: {e}>");
        }
        let text = self.render(&|leaf| {
            let values: Vec<String> = match leaf {
                Leaf::F32(a) => a
                    .iter()
                    .map(|&v| float_text(v as f64, format!("{v:?}")))
                    .collect(),
                Leaf::F64(a) => a.iter().map(|&v| float_text(v, format!("{v:?}"))).collect(),
                Leaf::I64(a) => a.iter().map(i64::to_string).collect(),
            };
            if leaf.shape().is_empty() {
                values.into_iter().next().unwrap_or_default()
            } else {
                nested_list(leaf.shape(), &values)
            }
        });
        f.write_str(&text)
    }
}

/// A float as Python's `json` writes it: its shortest round-trip text, or `NaN`,
/// `Infinity`, `-Infinity`.
fn float_text(v: f64, text: String) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        }
    } else {
        text
    }
}

fn nested_list(shape: &[usize], values: &[String]) -> String {
    if shape.len() == 1 {
        return format!("[{}]", values.join(", "));
    }
    let stride: usize = shape[1..].iter().product();
    let items: Vec<String> = (0..shape[0])
        .map(|i| nested_list(&shape[1..], &values[i * stride..(i + 1) * stride]))
        .collect();
    format!("[{}]", items.join(", "))
}

impl crate::value::Value for Variables {
    type Primal = Variables;
    type Cot = Variables;
    fn primal(&self) -> &Variables {
        self
    }
    /// A tree of zeros shaped like the variables.
    fn zeros(&self) -> Variables {
        self.zeros_like()
    }
}

impl crate::value::Accumulate for Variables {
    /// A mismatch poisons the sum: every read of it returns the error.
    fn accumulate(&mut self, other: Self) {
        let _ = Variables::accumulate(self, &other);
    }
}

/// A parameter's cotangent, stored as a leaf of a `Variables` tree.
#[doc(hidden)]
pub trait ParamCot {
    fn into_leaf(self) -> Leaf;
}

impl<A: Real> ParamCot for A {
    fn into_leaf(self) -> Leaf {
        Stored::into_leaf(self)
    }
}

impl<A: Real, D: Dimension> ParamCot for Array<A, D> {
    fn into_leaf(self) -> Leaf {
        Stored::into_leaf(self)
    }
}

/// Adds the cotangent of the parameter at `at` into `acc`.
#[doc(hidden)]
pub fn add_param(acc: &mut Variables, at: &VarPath, ct: impl ParamCot) {
    let leaf = ct.into_leaf();
    let coll = acc
        .collections
        .entry(at.collection.to_string())
        .or_default();
    let added = match coll.get_mut(&at.path) {
        Some(existing) => existing.add(&leaf, at.collection, &at.path),
        None => {
            coll.insert(at.path.clone(), leaf);
            Ok(())
        }
    };
    if let Err(e) = added {
        acc.poison(e);
    }
}

/// Marks parameter gradients that would flow through a lifted transform at `path`
/// (its child, or the module holding it).
#[doc(hidden)]
pub fn second_order(acc: &mut Variables, path: &str) {
    acc.poison(ScopeError::SecondOrderUnsupported { path: path.into() });
}

/// The cotangent of a value read by a lifted computation that is not differentiated
/// (second order through a lifted `vjp!` or `vmap!`): NaN (a tree: poisoned), so
/// that it cannot pass for a gradient.
#[doc(hidden)]
pub fn unsupported_cot<X: crate::value::Value>(x: &X) -> X::Cot
where
    X::Cot: NotDifferentiated,
{
    x.zeros().not_differentiated()
}

/// A cotangent that says its value was not differentiated.
#[doc(hidden)]
pub trait NotDifferentiated {
    fn not_differentiated(self) -> Self;
}

impl<A: Real> NotDifferentiated for A {
    fn not_differentiated(self) -> A {
        A::nan()
    }
}

impl<A: Real, D: Dimension> NotDifferentiated for Array<A, D> {
    fn not_differentiated(self) -> Self {
        self.mapv_into(|_| A::nan())
    }
}

impl NotDifferentiated for () {
    fn not_differentiated(self) {}
}

impl NotDifferentiated for Variables {
    fn not_differentiated(mut self) -> Variables {
        self.poison(ScopeError::SecondOrderUnsupported {
            path: String::new(),
        });
        self
    }
}

macro_rules! not_differentiated_tuple {
    ($($t:ident $i:tt),*) => {
        impl<$($t: NotDifferentiated),*> NotDifferentiated for ($($t,)*) {
            fn not_differentiated(self) -> Self {
                ($(self.$i.not_differentiated(),)*)
            }
        }
    };
}

not_differentiated_tuple!(A 0);
not_differentiated_tuple!(A 0, B 1);
not_differentiated_tuple!(A 0, B 1, C 2);
not_differentiated_tuple!(A 0, B 1, C 2, E 3);
not_differentiated_tuple!(A 0, B 1, C 2, E 3, F 4);
not_differentiated_tuple!(A 0, B 1, C 2, E 3, F 4, G 5);
not_differentiated_tuple!(A 0, B 1, C 2, E 3, F 4, G 5, H 6);
not_differentiated_tuple!(A 0, B 1, C 2, E 3, F 4, G 5, H 6, I 7);
not_differentiated_tuple!(A 0, B 1, C 2, E 3, F 4, G 5, H 6, I 7, J 8);
not_differentiated_tuple!(A 0, B 1, C 2, E 3, F 4, G 5, H 6, I 7, J 8, K 9);
not_differentiated_tuple!(A 0, B 1, C 2, E 3, F 4, G 5, H 6, I 7, J 8, K 9, L 10);
not_differentiated_tuple!(A 0, B 1, C 2, E 3, F 4, G 5, H 6, I 7, J 8, K 9, L 10, M 11);

/// Marks parameter gradients computed by running a child again (second order) if
/// that run failed, which it does only if the variables changed shape in between.
#[doc(hidden)]
pub fn rerun_failed(acc: &mut Variables, error: Option<&ScopeError>) {
    if let Some(e) = error {
        acc.poison(e.clone());
    }
}

/// A lifted `jvp!`'s variable tangents as its second order reruns the child: `None`
/// where all are zero (or absent), and the child's forward mode along the inputs is
/// run again; else a copy of the tree (its leaves shared), and the rerun is along
/// the variables too.
#[doc(hidden)]
pub fn kept_tangents(tangents: &Variables) -> Option<Variables> {
    let zero = tangents
        .leaves()
        .all(|(_, _, l)| matches!(l, Leaf::I64(_)) || l.to_f64_vec().iter().all(|v| *v == 0.0));
    (!zero).then(|| tangents.clone())
}

/// The cotangents a lifted `vjp!` returns: the listed collections of the child at
/// `child`, with paths relative to the child (Flax's `vjp_variables`).
#[doc(hidden)]
pub fn vjp_variables(cots: &Variables, child: &str, collections: &[&str]) -> Variables {
    let only = cots.only(collections);
    if child.is_empty() {
        only
    } else {
        only.subtree(child)
    }
}

/// Why a stored leaf does not read as a `T`: another element type, or another rank.
pub(crate) fn read_error<T: Stored>(collection: &str, path: String, leaf: &Leaf) -> ScopeError {
    if leaf.kind() != T::KIND {
        ScopeError::TypeMismatch {
            collection: collection.into(),
            path,
            expected: T::KIND,
            found: leaf.kind(),
        }
    } else {
        ScopeError::DeclaredTypeMismatch {
            collection: collection.into(),
            path,
            rank: T::RANK.unwrap_or(0),
            shape: leaf.shape().to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_as_python_json_writes() {
        let v = Variables::new()
            .with("params", "nan", f64::NAN)
            .unwrap()
            .with("params", "inf", f64::INFINITY)
            .unwrap()
            .with("params", "ninf", f32::NEG_INFINITY)
            .unwrap()
            .with("params", "f32", 0.1f32)
            .unwrap()
            .with("state", "big", i64::MAX)
            .unwrap()
            .with(
                "params",
                "empty",
                ndarray::Array2::<f64>::zeros((2, 0)).into_shared(),
            )
            .unwrap();
        assert_eq!(
            v.to_string(),
            r#"{"params": {"empty": [[], []], "f32": 0.1, "inf": Infinity, "nan": NaN, "ninf": -Infinity}, "state": {"big": 9223372036854775807}}"#
        );
    }

    #[test]
    fn logsumexp_over_an_empty_axis_is_minus_infinity() {
        let x = ndarray::Array2::<f64>::zeros((2, 0));
        let y = crate::rules::nn::logsumexp(&x, ndarray::Axis(1));
        assert_eq!(y, ndarray::arr1(&[f64::NEG_INFINITY, f64::NEG_INFINITY]));
    }
}
