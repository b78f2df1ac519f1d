//! Parameter scopes, as Flax's `flax.core.scope`: [`Variables`] holds every variable
//! by collection and path (`params` → `Dense_0/kernel`), and a [`Scope`] is a cursor
//! into it that modules read parameters and state through, names children
//! (`TypeName_k`, counted per parent and type) and derives random keys.

use crate::init::{Initializer, Rng};
use ndarray::{ArrayD, Dimension, IntoDimension, IxDyn};
use rand::SeedableRng;
use std::collections::{BTreeMap, BTreeSet, HashMap};

pub use crate::variables::{
    Leaf, ParamCot, Stored, Variables, add_param, kept_tangents, rerun_failed, second_order,
    unsupported_cot, vjp_variables,
};

/// A runtime misuse of scopes or variables, naming the variable's path.
///
/// ```
/// use adjoint::prelude::*;
/// use adjoint::ScopeError;
/// let x = ndarray::Array2::<f64>::ones((2, 3));
/// // Variables of another model: the kernel is missing.
/// let vars = Variables::new().with("params", "bias", ndarray::arr1(&[0.0; 4]).into_shared()).unwrap();
/// match nn::Dense::new(4).apply(&vars, &x) {
///     Err(ScopeError::ParamNotFound { path }) => assert_eq!(path, "kernel"),
///     other => panic!("{other:?}"),
/// }
/// ```
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScopeError {
    /// `apply` read a parameter the variables do not hold.
    #[error(
        "parameter `{path}` not found in collection `params`: init the module first, or check the variables' paths"
    )]
    ParamNotFound { path: String },
    /// A stored variable's shape differs from the one the module asks for.
    #[error(
        "variable `{collection}/{path}` has shape {found:?}, but the module asks for shape {expected:?}"
    )]
    ShapeMismatch {
        collection: String,
        path: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A stored variable's element type differs from the one the module asks for.
    #[error(
        "variable `{collection}/{path}` holds {found} values, but the module asks for {expected}"
    )]
    TypeMismatch {
        collection: String,
        path: String,
        expected: &'static str,
        found: &'static str,
    },
    /// A variable whose stored rank differs from the type the module reads it as
    /// (`ArcArray2` for a leaf of shape `[3]`).
    #[error(
        "variable `{collection}/{path}` has shape {shape:?}, but the module reads it with rank {rank}: declare its type with the shape's rank"
    )]
    DeclaredTypeMismatch {
        collection: String,
        path: String,
        rank: usize,
        shape: Vec<usize>,
    },
    /// An initializer that returned another shape than the one asked for.
    #[error(
        "the initializer of `{collection}/{path}` returned shape {found:?}, but shape {expected:?} was asked for"
    )]
    InitializerShape {
        collection: String,
        path: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A variable of a collection that was not passed (and is not mutable).
    #[error(
        "collection `{collection}` not found while reading `{path}`: pass it in the variables, or make it mutable"
    )]
    CollectionNotFound { collection: String, path: String },
    /// A write to a collection that is not mutable in this `apply`.
    #[error(
        "cannot write `{collection}/{path}`: collection `{collection}` is immutable here; list it in `mutable` when applying"
    )]
    ImmutableCollection { collection: String, path: String },
    /// `make_rng` of a stream that was not provided.
    #[error(
        "RNG stream `{stream}` was not provided (asked for at `{path}`): pass it in `rngs` when applying"
    )]
    UnknownRngStream { stream: String, path: String },
    /// `reduce_axes` named an axis that no enclosing `vmap!` binds.
    #[error(
        "`reduce_axes` names the axis `{axis}`, but no enclosing vmap! has that `axis_name` (at `{path}`)"
    )]
    UnboundAxis { axis: String, path: String },
    /// A lifted `jvp!` reached a module whose forward mode does not cover its body.
    #[error(
        "jvp! through `{path}`: forward mode does not cover this module's body (a method call, a destructured call result, or a call of a function while the module's impl is not `#[differentiable(jvp)]`)"
    )]
    ForwardModeUnsupported { path: String },
    /// Variables whose structure is not a tree of leaves.
    #[error("invalid variables: {reason}")]
    InvalidVariables { reason: String },
    /// Gradients that would flow through a lifted transform (`grad!` inside a module
    /// differentiated with respect to its parameters: second order) that adjoint does
    /// not differentiate; `path` is the transform's child, or the module holding it.
    #[error(
        "these gradients flow through a lifted transform inside a module (second order){} that adjoint does not differentiate yet: the variables' cotangents of the pullback of a vjp! whose closure is more than `mdl.call(cx, ..)`, a lifted closure calling a function in an impl that is not #[differentiable(jvp)], or a child whose body forward mode does not cover (see the README's \"Not yet\")",
        at_path(.path)
    )]
    SecondOrderUnsupported { path: String },
    /// A name taken twice in one call of a module: two parameters (or two variables
    /// of one collection) of the same name, or a submodule named as one of them or as
    /// another submodule (Flax's `NameInUseError`).
    #[error(
        "`{path}` is created twice: in one call of a module a name holds one parameter, one variable per collection, or one submodule (Flax's NameInUseError)"
    )]
    NameInUse { path: String },
    /// A layer given an input it cannot take (a convolution's rank or features, an
    /// embedding's ids, attention's heads or mask).
    #[error("{message}{}", at_path(.path))]
    InvalidInput { path: String, message: String },
}

/// ` (at `path`)`, or nothing at the root.
fn at_path(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!(" (at `{path}`)")
    }
}

/// Which collections an `apply` may write (see [`ApplyOptions::mutable`]).
///
/// ```
/// use adjoint::scope::Mutable;
/// let only_stats = Mutable::Only(["batch_stats".to_string()].into());
/// assert_ne!(only_stats, Mutable::All);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mutable {
    /// Every collection (as during `init`).
    All,
    /// The listed ones.
    Only(BTreeSet<String>),
}

impl Mutable {
    fn allows(&self, collection: &str) -> bool {
        match self {
            Mutable::All => true,
            Mutable::Only(s) => s.contains(collection),
        }
    }
}

/// A cursor into [`Variables`]: the current module's path, its children's names, its
/// random streams. Modules receive one as `cx: &mut Scope` in `call`.
///
/// Errors do not interrupt the module: the first one is kept, the read returns a
/// zero of the asked shape, and `init`/`apply` return the error.
///
/// A scope can also be used directly, as Flax's `Module.init(.., method=..)` runs
/// another method than `__call__`:
///
/// ```
/// use adjoint::prelude::*;
/// let mut vars = Variables::new();
/// let mut cx = Scope::for_init(&mut vars, 0);
/// let w: f64 = cx.param("w", init::constant(0.5), ());
/// cx.finish().unwrap();
/// assert_eq!((w, vars.to_string()), (0.5, r#"{"params": {"w": 0.5}}"#.to_string()));
/// ```
pub struct Scope<'v> {
    vars: &'v mut Variables,
    path: Vec<String>,
    /// The next auto name's number, by module path and child type.
    counters: HashMap<String, HashMap<String, usize>>,
    /// The names taken in each module's current call, by module path: each with the
    /// collections it holds a variable of (`None` for a submodule).
    reserved: Reserved,
    initializing: bool,
    mutable: Mutable,
    rngs: BTreeMap<String, u64>,
    rng_counters: HashMap<String, u64>,
    error: Option<ScopeError>,
    /// Where each child entered returns to: `None` for a child of the current path,
    /// the caller's path for a bound module run at its own path.
    returns: Vec<Option<Vec<String>>>,
    /// The full path of the child most recently entered or left.
    last_child: Option<String>,
    /// The named axes of the enclosing `vmap!`s, innermost last.
    axes: Vec<String>,
    /// Inside a lifted `jvp!`: the tangents of the variables, by full path.
    tangents: Option<Variables>,
    /// Inside a lifted transform: the collections and random streams it lets through.
    visible: Option<BTreeSet<String>>,
    visible_rngs: Option<BTreeSet<String>>,
    /// Whether the `init`/`apply` this one runs inside had failed (restored on drop).
    outer_failed: bool,
    /// A module's input gradient ran its first-order reverse mode, whose own
    /// derivative the scope cannot give (see [`Scope::vjpx_fallback`]).
    vjpx_fell_back: bool,
}

thread_local! {
    /// Whether the `init` or `apply` running on this thread has recorded an error.
    static FAILED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the `init` or `apply` running on this thread has already failed (its
/// error recorded in the scope). Rules given operands that do not fit then compute
/// a placeholder instead of panicking, so that the caller sees the recorded error
/// (a layer that rejected its input returns a placeholder, which the next layer
/// cannot take either).
pub(crate) fn failed() -> bool {
    FAILED.with(|f| f.get())
}

impl Drop for Scope<'_> {
    fn drop(&mut self) {
        FAILED.with(|f| f.set(self.outer_failed));
    }
}

/// The collections and streams a lifted transform hid, to restore after it.
#[derive(Clone, Debug)]
#[doc(hidden)]
pub struct Restriction {
    visible: Option<BTreeSet<String>>,
    visible_rngs: Option<BTreeSet<String>>,
}

/// Where a cotangent tree holds the cotangents of the parameters' tangents (forward
/// mode along the variables, differentiated again): a collection no scope reads.
const TANGENT_COTANGENTS: &str = "params (tangent)";

/// A cotangent tree split into the parameters' cotangents and their tangents' (the
/// latter under `params`, shaped as the tangents were given), for the VJP of forward
/// mode along the variables.
#[doc(hidden)]
pub fn split_tangent_cotangents(mut cotangents: Variables) -> (Variables, Variables) {
    let tangents = cotangents.take_collection(TANGENT_COTANGENTS, "params");
    (cotangents, tangents)
}

/// The path of a variable, for the reverse sweep to add its cotangent into.
#[derive(Clone, Debug, PartialEq, Eq)]
#[doc(hidden)]
pub struct VarPath {
    pub collection: &'static str,
    pub path: String,
}

impl<'v> Scope<'v> {
    /// A root scope that creates missing variables: every collection is mutable and
    /// every random stream derives from `seed` (what `init` uses; see [`Scope`]).
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let mut vars = Variables::new();
    /// let mut cx = Scope::for_init(&mut vars, 0);
    /// let b: f64 = cx.param("b", init::ones, ());
    /// cx.finish().unwrap();
    /// assert_eq!(b, 1.0);
    /// ```
    pub fn for_init(vars: &'v mut Variables, seed: u64) -> Self {
        let mut rngs = BTreeMap::new();
        rngs.insert("params".to_string(), seed);
        Scope::new(vars, true, Mutable::All, rngs)
    }

    /// A root scope over existing variables: only `mutable` collections may be
    /// written, and only `rngs` streams may be drawn (what `apply_with` uses).
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// use adjoint::scope::{ApplyOptions, Mutable};
    /// let mut vars = Variables::new().with("params", "w", 2.0).unwrap();
    /// let opts = ApplyOptions::new().rng("dropout", 1);
    /// let mut cx = Scope::for_apply(&mut vars, Mutable::Only(Default::default()), opts.rng_seeds());
    /// let w: f64 = cx.param("w", init::zeros, ());
    /// assert_eq!(w, 2.0);
    /// cx.put("batch_stats", "mean", 1.0); // not mutable: recorded, returned by finish
    /// assert!(cx.finish().is_err());
    /// ```
    pub fn for_apply(
        vars: &'v mut Variables,
        mutable: Mutable,
        rngs: BTreeMap<String, u64>,
    ) -> Self {
        Scope::new(vars, false, mutable, rngs)
    }

    fn new(
        vars: &'v mut Variables,
        initializing: bool,
        mutable: Mutable,
        rngs: BTreeMap<String, u64>,
    ) -> Self {
        Scope {
            vars,
            path: Vec::new(),
            counters: HashMap::new(),
            reserved: HashMap::new(),
            initializing,
            mutable,
            rngs,
            rng_counters: HashMap::new(),
            error: None,
            outer_failed: FAILED.with(|f| f.replace(false)),
            returns: Vec::new(),
            axes: Vec::new(),
            tangents: None,
            last_child: None,
            visible: None,
            visible_rngs: None,
            vjpx_fell_back: false,
        }
    }

    /// Lets only `collections` (all if `None`) and `rngs` (all if `None`) through,
    /// until [`Scope::unrestrict`]: what a lifted transform's `variables` and `rngs`
    /// options do.
    #[doc(hidden)]
    pub fn restrict(&mut self, collections: Option<&[&str]>, rngs: Option<&[&str]>) -> Restriction {
        let old = Restriction {
            visible: self.visible.clone(),
            visible_rngs: self.visible_rngs.clone(),
        };
        if let Some(c) = collections {
            self.visible = Some(c.iter().map(|s| s.to_string()).collect());
        }
        if let Some(r) = rngs {
            self.visible_rngs = Some(r.iter().map(|s| s.to_string()).collect());
        }
        old
    }

    /// Undoes [`Scope::restrict`].
    #[doc(hidden)]
    pub fn unrestrict(&mut self, old: Restriction) {
        self.visible = old.visible;
        self.visible_rngs = old.visible_rngs;
    }

    fn sees(&self, collection: &str) -> bool {
        self.visible.as_ref().is_none_or(|v| v.contains(collection))
    }

    /// Whether this scope creates missing variables (`init`): Flax's
    /// `is_initializing()`, what `BatchNorm` checks before updating its averages.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let mut vars = Variables::new();
    /// assert!(Scope::for_init(&mut vars, 0).is_initializing());
    /// ```
    pub fn is_initializing(&self) -> bool {
        self.initializing
    }

    /// The current module's path, `/`-joined (empty at the root).
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let mut vars = Variables::new();
    /// assert_eq!(Scope::for_init(&mut vars, 0).path(), "");
    /// ```
    pub fn path(&self) -> String {
        self.path.join("/")
    }

    fn path_to(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.path())
        }
    }

    fn fail(&mut self, e: ScopeError) {
        if self.error.is_none() {
            self.error = Some(e);
        }
        FAILED.with(|f| f.set(true));
    }

    /// The first error so far.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let mut vars = Variables::new();
    /// let mut cx = Scope::for_apply(&mut vars, adjoint::scope::Mutable::All, Default::default());
    /// let _: f64 = cx.param("missing", init::zeros, ());
    /// assert!(cx.error().is_some());
    /// ```
    pub fn error(&self) -> Option<&ScopeError> {
        self.error.as_ref()
    }

    /// Whether a layer's check of its input passed; if not, records the error as
    /// [`ScopeError::InvalidInput`] at the current module's path, so that `init` and
    /// `apply` return it, and the layer computes a placeholder instead.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let mut vars = Variables::new();
    /// let mut cx = Scope::for_apply(&mut vars, adjoint::scope::Mutable::All, Default::default());
    /// assert!(cx.check(&Ok::<(), String>(())));
    /// assert!(!cx.check(&Err::<(), _>("3 features, 4 expected")));
    /// assert_eq!(cx.finish().unwrap_err().to_string(), "3 features, 4 expected");
    /// ```
    pub fn check<T, E: std::fmt::Display>(&mut self, result: &Result<T, E>) -> bool {
        match result {
            Ok(_) => true,
            Err(e) => {
                let path = self.path();
                self.fail(ScopeError::InvalidInput {
                    path,
                    message: e.to_string(),
                });
                false
            }
        }
    }

    /// `Ok` if nothing went wrong, else the first error (see [`Scope`]).
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let mut vars = Variables::new();
    /// let mut cx = Scope::for_init(&mut vars, 0);
    /// let _: f64 = cx.param("w", init::ones, ());
    /// assert!(cx.finish().is_ok());
    /// ```
    ///
    /// # Errors
    /// The first [`ScopeError`] the module ran into.
    pub fn finish(mut self) -> Result<(), ScopeError> {
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The next auto name for a child of type `type_name` under the current module:
    /// `TypeName_0`, `TypeName_1`, ... counted per parent and type, as Flax does.
    #[doc(hidden)]
    pub fn auto_name(&mut self, type_name: &str) -> String {
        let k = self
            .counters
            .entry(self.path())
            .or_default()
            .entry(type_name.to_string())
            .or_insert(0);
        let name = format!("{type_name}_{k}");
        *k += 1;
        self.reserve(&name, None);
        name
    }

    /// Sets the variables' tangents of a lifted `jvp!` (paths relative to the current
    /// module) and returns the ones set before. Tangents that are all zero are none:
    /// forward mode then runs along the inputs alone.
    #[doc(hidden)]
    pub fn set_tangents(&mut self, tangents: Option<&Variables>) -> Option<Variables> {
        let here = self.path();
        let new = tangents.and_then(kept_tangents).map(|t| t.prefixed(&here));
        std::mem::replace(&mut self.tangents, new)
    }

    /// Whether tangents of the variables are set (see [`Scope::set_tangents`]).
    #[doc(hidden)]
    pub fn has_tangents(&self) -> bool {
        self.tangents.is_some()
    }

    /// Restores the tangents [`Scope::set_tangents`] returned.
    #[doc(hidden)]
    pub fn restore_tangents(&mut self, old: Option<Variables>) {
        self.tangents = old;
    }

    /// The tangent of parameter `name` of the current module (read as `like`): the
    /// one a lifted `jvp!` was given, or zero.
    #[doc(hidden)]
    pub fn param_tangent<T: Stored + Clone>(&mut self, like: &T, name: &str) -> T {
        let path = self.path_to(name);
        self.read_tangent(like, path)
    }

    /// [`Scope::param_tangent`], also returning where its cotangent goes: the
    /// variables' tangents' cotangents, kept apart from the parameters' in the same
    /// tree (see [`split_tangent_cotangents`]), for the reverse sweep of forward mode
    /// along the variables (second order along them).
    #[doc(hidden)]
    pub fn param_tangent_at<T: Stored + Clone>(&mut self, like: &T, name: &str) -> (T, VarPath) {
        let path = self.path_to(name);
        let at = VarPath {
            collection: TANGENT_COTANGENTS,
            path: path.clone(),
        };
        (self.read_tangent(like, path), at)
    }

    fn read_tangent<T: Stored + Clone>(&mut self, like: &T, path: String) -> T {
        let like = like.clone().into_leaf();
        let given = self.tangents.as_ref().and_then(|t| t.get("params", &path));
        if let Some(leaf) = given {
            if leaf.shape() == like.shape()
                && let Some(t) = T::from_leaf(leaf)
            {
                return t;
            }
            let e = ScopeError::ShapeMismatch {
                collection: "params (tangent)".into(),
                path,
                expected: like.shape().to_vec(),
                found: leaf.shape().to_vec(),
            };
            self.fail(e);
        }
        let zero = like.zeros_like();
        T::from_leaf(&zero).unwrap_or_else(|| placeholder(&IxDyn(zero.shape())))
    }

    /// Records that forward mode does not reach the current module.
    #[doc(hidden)]
    pub fn forward_mode_unsupported(&mut self) {
        let path = self.path();
        self.fail(ScopeError::ForwardModeUnsupported { path });
    }

    /// Binds the named axis of a `vmap!` until [`Scope::pop_axis`].
    #[doc(hidden)]
    pub fn push_axis(&mut self, name: &str) {
        self.axes.push(name.to_string());
    }

    /// Unbinds the innermost named axis.
    #[doc(hidden)]
    pub fn pop_axis(&mut self) {
        self.axes.pop();
    }

    /// Records [`ScopeError::UnboundAxis`] for any of `names` that no enclosing `vmap!`
    /// binds (what `reduce_axes` checks).
    #[doc(hidden)]
    pub fn check_axes(&mut self, names: &[&str]) {
        if let Some(missing) = names.iter().find(|n| !self.axes.iter().any(|a| a == *n)) {
            let e = ScopeError::UnboundAxis {
                axis: missing.to_string(),
                path: self.path(),
            };
            self.fail(e);
        }
    }

    /// Enters the child `name` (a submodule's scope) to run it: its children are
    /// named afresh, from `TypeName_0`, as Flax resets a module's auto names at every
    /// call of its compact method (a cell called once per time step creates the same
    /// `Dense_0` each time, and so reads the same parameters).
    #[doc(hidden)]
    pub fn enter(&mut self, name: &str) {
        self.path.push(name.to_string());
        self.returns.push(None);
        self.begin_call();
    }

    /// A module's call begins at the current path: its auto names start again.
    fn begin_call(&mut self) {
        let here = self.path();
        self.counters.remove(&here);
        self.reserved.remove(&here);
        self.last_child = Some(here);
    }

    /// Takes `name` in the current module's call for a variable of `collection`, or
    /// for a submodule (`None`); records [`ScopeError::NameInUse`] and returns
    /// `false` if it is taken.
    fn reserve(&mut self, name: &str, collection: Option<&str>) -> bool {
        let taken = self
            .reserved
            .entry(self.path())
            .or_default()
            .entry(name.to_string())
            .or_default();
        let clash = match collection {
            None => !taken.is_empty(),
            Some(c) => taken.iter().any(|t| t.as_deref().is_none_or(|t| t == c)),
        };
        if clash {
            let path = self.path_to(name);
            self.fail(ScopeError::NameInUse { path });
            return false;
        }
        taken.push(collection.map(String::from));
        true
    }

    /// Enters the next auto-named child of type `type_name`.
    #[doc(hidden)]
    pub fn enter_auto(&mut self, type_name: &str) {
        let name = self.auto_name(type_name);
        self.enter(&name);
    }

    /// Enters a submodule's scope: a field's name, the next auto name, or the path a
    /// [`Bound`] module was given where it was created.
    #[doc(hidden)]
    pub fn enter_child(&mut self, child: ChildName<'_>) {
        match child {
            ChildName::Field(name) => self.enter(name),
            ChildName::Indexed(name, i) => self.enter(&format!("{name}_{i}")),
            ChildName::Auto(type_name) => self.enter_auto(type_name),
            ChildName::Bound(path) => {
                let inner = path.split('/').filter(|p| !p.is_empty()).map(String::from);
                let caller = std::mem::replace(&mut self.path, inner.collect());
                self.returns.push(Some(caller));
                self.begin_call();
            }
            // The same module (`self.call(cx, ..)` from another of its methods): the
            // call goes on in its scope, as a recurrent call does in Flax, its names
            // taken again.
            ChildName::Here => {
                self.returns.push(Some(self.path.clone()));
                self.reserved.remove(&self.path());
                self.last_child = Some(self.path());
            }
            ChildName::Again => {
                self.returns.push(Some(self.path.clone()));
                self.begin_call();
            }
        }
    }

    /// Leaves the current child, back to where it was entered from.
    #[doc(hidden)]
    pub fn exit(&mut self) {
        self.last_child = Some(self.path());
        match self.returns.pop() {
            Some(Some(caller)) => self.path = caller,
            _ => {
                self.path.pop();
            }
        }
    }

    /// Binds `module` to the current module under its next auto name (`Dense_0`),
    /// as Flax names a submodule where it is created. Pass the result to another
    /// module (in a field): it runs at this path and reads these parameters
    /// wherever it is called from.
    ///
    /// ```
    /// use adjoint::nn::Dense;
    /// use adjoint::scope::{Scope, Variables};
    /// let mut vars = Variables::new();
    /// let mut cx = Scope::for_init(&mut vars, 0);
    /// cx.enter("Outer_0");
    /// let dense = cx.bind(Dense::new(4));
    /// assert_eq!(adjoint::scope::Bound::path(&dense), "Outer_0/Dense_0");
    /// ```
    pub fn bind<M: Child<Module = M>>(&mut self, module: M) -> Bound<M> {
        let name = match module.child_name(None) {
            ChildName::Auto(type_name) => {
                let name = self.auto_name(type_name);
                return self.bound_at(&name, module);
            }
            ChildName::Field(name) | ChildName::Bound(name) => name.to_string(),
            ChildName::Indexed(name, i) => format!("{name}_{i}"),
            ChildName::Here | ChildName::Again => {
                return Bound {
                    shared: std::sync::Arc::new(module),
                    at: self.path(),
                };
            }
        };
        self.bind_as(&name, module)
    }

    /// A module made by a `let` in a module's body, bound where it is made (see
    /// [`IntoBound`]; `#[differentiable]` writes the call).
    #[doc(hidden)]
    pub fn bind_local<B: IntoBound>(&mut self, module: B) -> Bound<B::Module> {
        module.into_bound(self)
    }

    /// Binds `module` to the current module under the explicit name `name` (Flax's
    /// `Dense(4, name="name")`).
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let mut vars = Variables::new();
    /// let mut cx = Scope::for_init(&mut vars, 0);
    /// let head = cx.bind_as("head", nn::Dense::new(2));
    /// assert_eq!(Bound::path(&head), "head");
    /// assert_eq!(head.features, 2); // it derefs to the module
    /// ```
    pub fn bind_as<M>(&mut self, name: &str, module: M) -> Bound<M> {
        self.reserve(name, None);
        self.bound_at(name, module)
    }

    /// `module` bound at the current module's child `name`.
    fn bound_at<M>(&self, name: &str, module: M) -> Bound<M> {
        Bound {
            shared: std::sync::Arc::new(module),
            at: self.path_to(name),
        }
    }

    /// Gets parameter `name` of the current module, creating it with `init` during
    /// `init` (Flax's `self.param`). The stored shape must equal `shape`.
    ///
    /// ```
    /// use adjoint::scope::{Scope, Variables};
    /// use adjoint::init;
    /// let mut vars = Variables::new();
    /// let mut cx = Scope::for_init(&mut vars, 0);
    /// let w: ndarray::ArcArray2<f64> = cx.param("kernel", init::lecun_normal(), (3, 4));
    /// assert_eq!(w.shape(), &[3, 4]);
    /// cx.finish().unwrap();
    /// assert_eq!(vars.shapes(), r#"{"params": {"kernel": [3, 4]}}"#);
    /// ```
    pub fn param<T: Stored>(
        &mut self,
        name: &str,
        init: impl Initializer,
        shape: impl IntoDimension,
    ) -> T {
        self.param_at(name, init, shape).0
    }

    /// [`Scope::param`], also returning where the parameter lives (for the reverse
    /// sweep of a transform that differentiates parameters).
    #[doc(hidden)]
    pub fn param_at<T: Stored>(
        &mut self,
        name: &str,
        init: impl Initializer,
        shape: impl IntoDimension,
    ) -> (T, VarPath) {
        let shape = shape.into_dimension().into_dyn();
        let path = self.path_to(name);
        let at = VarPath {
            collection: "params",
            path: path.clone(),
        };
        if !self.reserve(name, Some("params")) {
            return (placeholder(&shape), at);
        }
        if !self.sees("params") {
            self.fail(ScopeError::CollectionNotFound {
                collection: "params".into(),
                path,
            });
            return (placeholder(&shape), at);
        }
        if let Some(leaf) = self.vars.get("params", &path) {
            if leaf.shape() != shape.slice() {
                let found = leaf.shape().to_vec();
                self.fail(ScopeError::ShapeMismatch {
                    collection: "params".into(),
                    path,
                    expected: shape.slice().to_vec(),
                    found,
                });
                return (placeholder(&shape), at);
            }
            return match T::from_leaf(leaf) {
                Some(v) => (v, at),
                None => {
                    let e = crate::variables::read_error::<T>("params", path, leaf);
                    self.fail(e);
                    (placeholder(&shape), at)
                }
            };
        }
        if !self.initializing {
            self.fail(ScopeError::ParamNotFound { path });
            return (placeholder(&shape), at);
        }
        let mut rng = self.rng_for("params", &path);
        let sample = init.sample(&mut rng, shape.slice());
        if sample.shape() != shape.slice() {
            self.fail(ScopeError::InitializerShape {
                collection: "params".into(),
                path,
                expected: shape.slice().to_vec(),
                found: sample.shape().to_vec(),
            });
            return (placeholder(&shape), at);
        }
        let value: T = match T::from_sample(sample) {
            Some(v) => v,
            None => {
                self.fail(ScopeError::DeclaredTypeMismatch {
                    collection: "params".into(),
                    path,
                    rank: T::RANK.unwrap_or(0),
                    shape: shape.slice().to_vec(),
                });
                return (placeholder(&shape), at);
            }
        };
        let leaf = value.into_leaf();
        let value = T::from_leaf(&leaf).unwrap_or_else(|| placeholder(&shape));
        if let Err(e) = self.vars.insert("params", &path, leaf) {
            self.fail(e);
        }
        (value, at)
    }

    /// Gets variable `name` of `collection`, creating it with `init` if the collection
    /// is mutable (Flax's `self.variable(..).value`): state such as `batch_stats` or a
    /// counter. Writing it back is [`Scope::put`].
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// use adjoint::scope::ApplyOptions;
    ///
    /// /// Counts its calls in the `state` collection.
    /// struct Counter;
    ///
    /// #[differentiable]
    /// impl Counter {
    ///     fn call(&self, cx: &mut Scope, x: f64) -> f64 {
    ///         let count: i64 = cx.variable("state", "count", || 0);
    ///         cx.put("state", "count", count + 1);
    ///         x
    ///     }
    /// }
    ///
    /// let vars = Counter.init(0, 1.0).unwrap();
    /// let opts = ApplyOptions::new().mutable(["state"]);
    /// let (_, state) = Counter.apply_with(&vars, &opts, 1.0).unwrap();
    /// assert_eq!(state.to_string(), r#"{"state": {"count": 2}}"#);
    /// ```
    pub fn variable<T: Stored>(
        &mut self,
        collection: &str,
        name: &str,
        init: impl FnOnce() -> T,
    ) -> T {
        let path = self.path_to(name);
        if !self.reserve(name, Some(collection)) {
            return init();
        }
        if !self.sees(collection) {
            self.fail(ScopeError::CollectionNotFound {
                collection: collection.into(),
                path,
            });
            return init();
        }
        if let Some(leaf) = self.vars.get(collection, &path) {
            return match T::from_leaf(leaf) {
                Some(v) => v,
                None => {
                    let e = crate::variables::read_error::<T>(collection, path, leaf);
                    self.fail(e);
                    init()
                }
            };
        }
        let value = init();
        if self.mutable.allows(collection) {
            let leaf = value.into_leaf();
            let out = T::from_leaf(&leaf);
            if let Err(e) = self.vars.insert(collection, &path, leaf) {
                self.fail(e);
            }
            return out.unwrap_or_else(|| unreachable_roundtrip());
        }
        self.fail(ScopeError::CollectionNotFound {
            collection: collection.into(),
            path,
        });
        value
    }

    /// Writes variable `name` of `collection` (Flax's `var.value = ..`); see
    /// [`Scope::variable`]. Writing a collection that is not mutable records
    /// [`ScopeError::ImmutableCollection`], which `apply` returns.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let mut vars = Variables::new();
    /// let mut cx = Scope::for_init(&mut vars, 0); // every collection is mutable
    /// cx.put("state", "steps", 3i64);
    /// cx.finish().unwrap();
    /// assert_eq!(vars.to_string(), r#"{"state": {"steps": 3}}"#);
    /// ```
    pub fn put<T: Stored>(&mut self, collection: &str, name: &str, value: T) {
        let path = self.path_to(name);
        if !self.mutable.allows(collection) || !self.sees(collection) {
            self.fail(ScopeError::ImmutableCollection {
                collection: collection.into(),
                path,
            });
            return;
        }
        if let Err(e) = self.vars.insert(collection, &path, value.into_leaf()) {
            self.fail(e);
        }
    }

    /// Records an intermediate value under `collection/name/k` if the collection is
    /// mutable, and does nothing otherwise (Flax's `self.sow`, whose tuple `(v,)` is
    /// stored as `name/0`).
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// use adjoint::scope::ApplyOptions;
    ///
    /// struct Probe;
    ///
    /// #[differentiable]
    /// impl Probe {
    ///     fn call(&self, cx: &mut Scope, x: f64) -> f64 {
    ///         let h = 2.0 * x;
    ///         cx.sow("intermediates", "h", h);
    ///         h * h
    ///     }
    /// }
    ///
    /// let vars = Probe.init(0, 1.0).unwrap();
    /// let opts = ApplyOptions::new().mutable(["intermediates"]);
    /// let (_, sown) = Probe.apply_with(&vars.only(&["params"]), &opts, 3.0).unwrap();
    /// assert_eq!(sown.to_string(), r#"{"intermediates": {"h": {"0": 6.0}}}"#);
    /// ```
    pub fn sow<T: Stored>(&mut self, collection: &str, name: &str, value: T) {
        if !self.mutable.allows(collection) {
            return;
        }
        let base = self.path_to(name);
        let k = self
            .vars
            .iter(collection)
            .filter(|(p, _)| p.strip_prefix(&base).is_some_and(|r| r.starts_with('/')))
            .count();
        if let Err(e) = self
            .vars
            .insert(collection, &format!("{base}/{k}"), value.into_leaf())
        {
            self.fail(e);
        }
    }

    /// A random generator for stream `stream`, derived from the stream's seed, this
    /// module's path and how many keys it drew before (Flax's `make_rng`): each call
    /// gives new numbers, the same ones for the same seed. A stream that was not
    /// given records [`ScopeError::UnknownRngStream`].
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// use adjoint::scope::ApplyOptions;
    /// use rand::Rng as _;
    ///
    /// struct Noisy;
    ///
    /// #[differentiable]
    /// impl Noisy {
    ///     fn call(&self, cx: &mut Scope, x: f64) -> f64 {
    ///         let noise: f64 = cx.make_rng("noise").random();
    ///         x + no_grad(noise)
    ///     }
    /// }
    ///
    /// let vars = Noisy.init(0, 1.0).unwrap();
    /// let opts = ApplyOptions::new().rng("noise", 42);
    /// let (a, _) = Noisy.apply_with(&vars, &opts, 1.0).unwrap();
    /// let (b, _) = Noisy.apply_with(&vars, &opts, 1.0).unwrap();
    /// assert_eq!(a, b);
    /// assert!(Noisy.apply(&vars, 1.0).is_err()); // no `noise` stream
    /// ```
    pub fn make_rng(&mut self, stream: &str) -> Rng {
        let path = self.path();
        let passes = self
            .visible_rngs
            .as_ref()
            .is_none_or(|v| v.contains(stream));
        if !passes || (!self.rngs.contains_key(stream) && !self.initializing) {
            self.fail(ScopeError::UnknownRngStream {
                stream: stream.into(),
                path,
            });
            return Rng::seed_from_u64(0);
        }
        let k = self
            .rng_counters
            .entry(format!("{stream}\u{0}{path}"))
            .or_insert(0);
        *k += 1;
        let tag = format!("{path}#{k}");
        self.rng_for(stream, &tag)
    }

    fn rng_for(&self, stream: &str, tag: &str) -> Rng {
        let seed = self
            .rngs
            .get(stream)
            .or_else(|| self.rngs.get("params"))
            .copied()
            .unwrap_or(0);
        Rng::seed_from_u64(fold_in(fold_in(seed, stream), tag))
    }
}

fn unreachable_roundtrip<T>() -> T {
    panic!("adjoint: a stored value reads back as its own type")
}

fn placeholder<T: Stored>(shape: &IxDyn) -> T {
    // A zero of the asked shape where the type has that rank, else an empty one; it
    // is never returned to the user (the error is).
    T::from_sample(ArrayD::zeros(shape.clone())).unwrap_or_else(T::empty)
}

/// Derives a new seed from `seed` and `data` (Flax's `fold_in`): FNV-1a over the
/// bytes, finished with SplitMix64 so nearby inputs give unrelated seeds. Use it to
/// give each training step its own dropout seed.
///
/// ```
/// use adjoint::scope::fold_in;
/// assert_ne!(fold_in(0, "step 1"), fold_in(0, "step 2"));
/// assert_eq!(fold_in(7, "a"), fold_in(7, "a"));
/// ```
pub fn fold_in(seed: u64, data: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in data.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Options of a module's `apply_with`: the collections it may write (returned after
/// the run) and the seeds of its random streams.
///
/// ```
/// use adjoint::scope::ApplyOptions;
/// let opts = ApplyOptions::new().mutable(["batch_stats"]).rng("dropout", 7);
/// ```
#[derive(Clone, Debug, Default)]
pub struct ApplyOptions {
    mutable: BTreeSet<String>,
    rngs: BTreeMap<String, u64>,
}

impl ApplyOptions {
    /// Nothing mutable, no random streams (see [`ApplyOptions`]).
    ///
    /// ```
    /// let opts = adjoint::scope::ApplyOptions::new();
    /// assert!(opts.rng_seeds().is_empty());
    /// ```
    pub fn new() -> Self {
        ApplyOptions::default()
    }

    /// Makes these collections writable; `apply_with` returns them after the run.
    ///
    /// ```
    /// let opts = adjoint::scope::ApplyOptions::new().mutable(["batch_stats", "intermediates"]);
    /// assert_ne!(opts.mutability(), adjoint::scope::Mutable::All);
    /// ```
    pub fn mutable<S: Into<String>>(mut self, collections: impl IntoIterator<Item = S>) -> Self {
        self.mutable.extend(collections.into_iter().map(Into::into));
        self
    }

    /// Provides random stream `stream` with `seed` (Flax's `rngs={'dropout': key}`).
    ///
    /// ```
    /// let opts = adjoint::scope::ApplyOptions::new().rng("dropout", 7);
    /// assert_eq!(opts.rng_seeds()["dropout"], 7);
    /// ```
    pub fn rng(mut self, stream: &str, seed: u64) -> Self {
        self.rngs.insert(stream.to_string(), seed);
        self
    }

    /// The writable collections, for a scope.
    #[doc(hidden)]
    pub fn mutability(&self) -> Mutable {
        Mutable::Only(self.mutable.clone())
    }

    /// The random streams' seeds, for a scope.
    #[doc(hidden)]
    pub fn rng_seeds(&self) -> BTreeMap<String, u64> {
        self.rngs.clone()
    }

    /// The mutable collections of `vars`.
    #[doc(hidden)]
    pub fn mutated(&self, vars: &Variables) -> Variables {
        let names: Vec<&str> = self.mutable.iter().map(String::as_str).collect();
        vars.only(&names)
    }
}

/// Where a scope's naming stood, to run a child again under the same names (as
/// `vmap!` does for each example).
#[derive(Clone, Debug)]
#[doc(hidden)]
pub struct ScopeMark {
    counters: HashMap<String, HashMap<String, usize>>,
    reserved: Reserved,
}

/// The names taken in each module's call (see `Scope::reserve`).
type Reserved = HashMap<String, HashMap<String, Vec<Option<String>>>>;

impl Scope<'_> {
    /// The current naming counters.
    #[doc(hidden)]
    pub fn mark(&self) -> ScopeMark {
        ScopeMark {
            counters: self.counters.clone(),
            reserved: self.reserved.clone(),
        }
    }

    /// Returns the naming counters to `mark` (children get the same names again) and
    /// lets random streams go on (what `vmap!` does between examples).
    #[doc(hidden)]
    pub fn reset_names_to(&mut self, mark: &ScopeMark) {
        self.counters = mark.counters.clone();
        self.reserved = mark.reserved.clone();
    }

    /// What a second-order pullback needs to run a lifted transform's child again as
    /// the primal ran it: taken just before the transform, the variables (leaves are
    /// shared: no data is copied), which collections may be written and are visible,
    /// the random streams with the number of keys each module path has drawn (so that
    /// `make_rng` gives the same keys, e.g. the same `Dropout` masks), the naming
    /// counters and the enclosing `vmap!` axes.
    #[doc(hidden)]
    pub fn rerun_point(&self) -> Rerun {
        Rerun {
            at: self.path(),
            vars: self.vars.clone(),
            counters: self.counters.clone(),
            mutable: self.mutable.clone(),
            rngs: self.rngs.clone(),
            rng_counters: self.rng_counters.clone(),
            axes: self.axes.clone(),
            visible: self.visible.clone(),
            visible_rngs: self.visible_rngs.clone(),
        }
    }

    /// Whether running a module again changes nothing and draws nothing: no
    /// collection is mutable, no random stream is given, no variable is created, no
    /// tangent is set. A lifted `grad!` differentiated again runs its child's input
    /// gradient written as source (reverse over reverse) only then: that code calls
    /// some submodules twice (their forward pass, then their input gradient).
    #[doc(hidden)]
    pub fn is_pure(&self) -> bool {
        !self.initializing
            && self.rngs.is_empty()
            && self.tangents.is_none()
            && matches!(&self.mutable, Mutable::Only(c) if c.is_empty())
    }

    /// Records that a module's input gradient (`__call_vjpx`) was computed by its
    /// first-order reverse mode, whose pullback cannot differentiate it: the lifted
    /// `grad!` that asked for it differentiates by running its child's JVP-VJP again
    /// instead (see [`Scope::take_vjpx_fallback`]).
    #[doc(hidden)]
    pub fn vjpx_fallback(&mut self) {
        self.vjpx_fell_back = true;
    }

    /// Whether a [`Scope::vjpx_fallback`] was recorded since the last call; clears it.
    #[doc(hidden)]
    pub fn take_vjpx_fallback(&mut self) -> bool {
        std::mem::take(&mut self.vjpx_fell_back)
    }

    /// Moves the cursor to the absolute path `path` (`/`-joined).
    #[doc(hidden)]
    pub fn enter_path(&mut self, path: &str) {
        self.path = path
            .split('/')
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect();
    }

    /// The full path of the child most recently entered or left (`Parent/Child_0`).
    #[doc(hidden)]
    pub fn last_child_path(&self) -> String {
        self.last_child.clone().unwrap_or_else(|| self.path())
    }
}

/// The state of a scope a lifted transform started from (see [`Scope::rerun_point`]).
#[doc(hidden)]
pub struct Rerun {
    /// Where the transform ran (its module's path).
    at: String,
    vars: Variables,
    counters: HashMap<String, HashMap<String, usize>>,
    mutable: Mutable,
    rngs: BTreeMap<String, u64>,
    rng_counters: HashMap<String, u64>,
    axes: Vec<String>,
    visible: Option<BTreeSet<String>>,
    visible_rngs: Option<BTreeSet<String>>,
}

impl Rerun {
    /// A copy of the variables as they were (what the rerun may write to).
    pub fn variables(&self) -> Variables {
        self.vars.clone()
    }

    /// A scope over `vars` at the absolute path `path` in the state the transform
    /// started from: the child then reads, names and draws what it did the first time.
    pub fn scope<'v>(&self, vars: &'v mut Variables, path: &str) -> Scope<'v> {
        let mut cx = Scope::new(vars, false, self.mutable.clone(), self.rngs.clone());
        cx.counters = self.counters.clone();
        cx.rng_counters = self.rng_counters.clone();
        cx.axes = self.axes.clone();
        cx.visible = self.visible.clone();
        cx.visible_rngs = self.visible_rngs.clone();
        cx.enter_path(path);
        // A child's call names its submodules afresh (as `enter_child` does); the
        // module's own (`self` as the child) goes on with its names.
        if path != self.at {
            cx.counters.remove(path);
        }
        cx
    }
}

/// How a submodule's scope is named where it is called: by the field that holds it
/// (Flax's setup attributes), by the next auto name of its type (`Dense_0`, Flax's
/// compact submodules), or by the path it was bound to ([`Scope::bind`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[doc(hidden)]
pub enum ChildName<'a> {
    Field(&'a str),
    /// Element `i` of a field holding modules (`self.layers[i]`, or `layer` of `for
    /// layer in self.layers.iter()`): `layers_i`, as Flax names a list attribute's.
    Indexed(&'a str, usize),
    Auto(&'static str),
    Bound(&'a str),
    /// The current scope: the module itself (`self.call(cx, ..)` from another of its
    /// methods), or a lifted transform over `self`.
    Here,
    /// The current scope, which a lifted transform entered for its module: each call
    /// through the closure's `mdl` begins again there (its auto names restart, as a
    /// call of a Flax compact method does: `mdl(x) + mdl(2 * x)` shares parameters).
    Again,
}

/// A module bound to the scope that created it ([`Scope::bind`]), as Flax names a
/// submodule where it is constructed: wherever it is called from (a field of
/// another module, a lifted transform), it runs at its bound path and reads the
/// parameters there, and every call shares them.
///
/// Call it from `#[differentiable]` code (`bar.call(cx, x)`, `self.bar.call(cx, x)`),
/// which routes the call through [`Child`]. It derefs to the module (`bar.features`);
/// [`Bound::path`] is where it runs.
///
/// ```
/// use adjoint::prelude::*;
///
/// /// Flax's `FooMulti(bar=nn.Dense(3))`: a module holding one its parent bound.
/// struct Outer {
///     bar: Bound<nn::Dense>,
/// }
///
/// #[differentiable]
/// impl Outer {
///     fn call(&self, cx: &mut Scope, x: &ndarray::Array2<f64>) -> ndarray::Array2<f64> {
///         self.bar.call(cx, x)
///     }
/// }
///
/// struct Parent;
///
/// #[differentiable]
/// impl Parent {
///     fn call(&self, cx: &mut Scope, x: &ndarray::Array2<f64>) -> ndarray::Array2<f64> {
///         let bar = cx.bind(nn::Dense::new(3));
///         Outer { bar }.call(cx, x)
///     }
/// }
///
/// let vars = Parent.init(0, &ndarray::Array2::zeros((1, 2))).unwrap();
/// // The Dense lives where it was bound, not under Outer_0.
/// assert_eq!(vars.shapes(), r#"{"params": {"Dense_0": {"bias": [3], "kernel": [2, 3]}}}"#);
/// ```
#[derive(Debug, PartialEq)]
pub struct Bound<M> {
    shared: std::sync::Arc<M>,
    at: String,
}

/// A copy shares the module (a lifted transform's pullback keeps one).
impl<M> Clone for Bound<M> {
    fn clone(&self) -> Self {
        Bound {
            shared: self.shared.clone(),
            at: self.at.clone(),
        }
    }
}

impl<M> Bound<M> {
    /// The path it runs at (`Parent/Dense_0`). An associated function, as the
    /// module's own methods are reached through `Deref`.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let mut vars = Variables::new();
    /// let mut cx = Scope::for_init(&mut vars, 0);
    /// assert_eq!(Bound::path(&cx.bind(nn::Dense::new(2))), "Dense_0");
    /// ```
    pub fn path(this: &Self) -> &str {
        &this.at
    }
}

impl<M> std::ops::Deref for Bound<M> {
    type Target = M;
    fn deref(&self) -> &M {
        &self.shared
    }
}

/// What a `let` in a module's body binds when the module it makes is called with the
/// scope (`let cell = LstmCell::new(8); .. cell.call(cx, ..)`): `#[differentiable]`
/// writes `cx.bind_local(LstmCell::new(8))`, so the module is named where it is made,
/// as Flax names a submodule at construction, and every call of it shares its
/// parameters. A module binds to its next auto name; a [`Bound`] one stays bound.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is called with the scope like a module, but is not one",
    label = "called like a module here",
    note = "a module is a type with a `#[differentiable]` impl whose `call` takes the scope first"
)]
#[doc(hidden)]
pub trait IntoBound {
    /// The module.
    type Module;
    /// Binds the module to `cx`'s current module, or keeps its binding.
    fn into_bound(self, cx: &mut Scope<'_>) -> Bound<Self::Module>;
}

impl<M> IntoBound for Bound<M> {
    type Module = M;
    fn into_bound(self, _cx: &mut Scope<'_>) -> Bound<M> {
        self
    }
}

/// What a module call in `#[differentiable]` code goes through: the module to run,
/// and the name of the scope it runs in. `#[differentiable]` implements it for every
/// module (named by the field that holds it, else by the next auto name of its
/// type); [`Bound`] runs at its bound path.
#[doc(hidden)]
pub trait Child {
    /// The module that runs.
    type Module;
    /// The module that runs.
    fn module(&self) -> &Self::Module;
    /// Its scope's name when called from a field named `field`, or from elsewhere.
    fn child_name<'a>(&'a self, field: Option<&'a str>) -> ChildName<'a>;
    /// Its scope's name as element `i` of a field named `field` (`layers_i`); a
    /// bound module keeps its path.
    fn element_name<'a>(&'a self, field: &'a str, i: usize) -> ChildName<'a> {
        match self.child_name(Some(field)) {
            ChildName::Field(f) => ChildName::Indexed(f, i),
            other => other,
        }
    }
}

impl<M> Child for Bound<M> {
    type Module = M;
    fn module(&self) -> &M {
        &self.shared
    }
    fn child_name<'a>(&'a self, _field: Option<&'a str>) -> ChildName<'a> {
        ChildName::Bound(&self.at)
    }
}

/// The module of a lifted transform over `self` (`mdl` in `grad!(cx, |mdl, cx, x|
/// .., self, x)`), or `self` called from another of its methods: calls through it
/// run in the current scope, and it derefs to the module.
#[derive(Debug)]
#[doc(hidden)]
pub struct Here<'a, M>(pub &'a M);

/// The module of a lifted transform over a child (`mdl` in `grad!(cx, |mdl, cx, x|
/// .., Module, x)`), whose scope the transform entered: each call through it begins
/// again in that scope ([`ChildName::Again`]), and it derefs to the module.
#[derive(Debug)]
#[doc(hidden)]
pub struct Entered<'a, M>(pub &'a M);

impl<M> Clone for Entered<'_, M> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M> Copy for Entered<'_, M> {}

impl<M> std::ops::Deref for Entered<'_, M> {
    type Target = M;
    fn deref(&self) -> &M {
        self.0
    }
}

impl<M> Child for Entered<'_, M> {
    type Module = M;
    fn module(&self) -> &M {
        self.0
    }
    fn child_name<'a>(&'a self, _field: Option<&'a str>) -> ChildName<'a> {
        ChildName::Again
    }
}

impl<M> Clone for Here<'_, M> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M> Copy for Here<'_, M> {}

impl<M> std::ops::Deref for Here<'_, M> {
    type Target = M;
    fn deref(&self) -> &M {
        self.0
    }
}

impl<M> Child for Here<'_, M> {
    type Module = M;
    fn module(&self) -> &M {
        self.0
    }
    fn child_name<'a>(&'a self, _field: Option<&'a str>) -> ChildName<'a> {
        ChildName::Here
    }
}

impl<T: Child + ?Sized> Child for &T {
    type Module = T::Module;
    fn module(&self) -> &T::Module {
        (**self).module()
    }
    fn child_name<'a>(&'a self, field: Option<&'a str>) -> ChildName<'a> {
        (**self).child_name(field)
    }
}
