//! The A-normal-form IR a body lowers to: every statement applies one operation to
//! named atoms, control flow is structured (`if`/`match` with recorded arms, loops
//! with carried values), and spans live beside the variables for errors.

use proc_macro2::{Span, TokenStream};
use syn::Ident;

/// A variable: an index into [`Func::vars`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Var(pub u32);

/// What a variable is called in the generated code, and where the user wrote it.
#[derive(Clone)]
pub struct VarInfo {
    pub name: Ident,
    /// The type the user wrote on its `let`, if any.
    pub ty: Option<syn::Type>,
    /// Declared `let mut` (a constant the code mutates through `&mut`).
    pub mutable: bool,
    /// A value lowering reused for a later occurrence of the same computation (its
    /// memo): read where the user's code had two values, so an operator that takes
    /// it by value gets a clone.
    pub shared: bool,
    /// The value of a statement whose result the code drops (`parts.push(x);`):
    /// made for an effect, which the derivative cannot follow.
    pub discarded: bool,
}

/// An operand: a variable or a literal written inline.
#[derive(Clone, Debug)]
pub enum Atom {
    Var(Var),
    Lit(TokenStream),
}

impl Atom {
    pub fn var(&self) -> Option<Var> {
        match self {
            Atom::Var(v) => Some(*v),
            Atom::Lit(_) => None,
        }
    }
}

/// A value during lowering: an atom, or a tuple of values that exists only at
/// compile time (`let t = (a, b); t.0` is `a`).
#[derive(Clone, Debug)]
pub enum Val {
    Atom(Atom),
    Tuple(Vec<Val>),
}

impl Val {
    /// The atoms, depth first.
    pub fn flatten(&self, out: &mut Vec<Atom>) {
        match self {
            Val::Atom(a) => out.push(a.clone()),
            Val::Tuple(vs) => vs.iter().for_each(|v| v.flatten(out)),
        }
    }

    /// A value of `self`'s shape holding `atoms` in order.
    pub fn rebuild(&self, atoms: &mut impl Iterator<Item = Atom>) -> Val {
        match self {
            Val::Atom(_) => Val::Atom(atoms.next().expect("rebuild: as many atoms as the shape")),
            Val::Tuple(vs) => Val::Tuple(vs.iter().map(|v| v.rebuild(atoms)).collect()),
        }
    }
}

/// A function or closure body in IR.
#[derive(Clone)]
pub struct Func {
    pub vars: Vec<VarInfo>,
    pub params: Vec<Param>,
    /// The module's scope parameter (`cx`), if it has one.
    pub scope: Option<Var>,
    pub body: Block,
    /// For a closure: the enclosing body's variables it reads, as (here, there).
    pub free: Vec<(Var, Var)>,
    /// The output is `(value, aux)` and only `value` is differentiated.
    pub aux: bool,
    /// Parameters read through the scope are differentiated (their cotangents are
    /// returned as `Variables`).
    pub params_active: bool,
    /// The pullback runs in the primal's scope: nested calls may use the borrowing
    /// companions.
    pub local_pullback: bool,
    /// The items declared in the body (`const K: f64 = ..;`, a nested `fn`), written
    /// at the top of every generated body so that the code naming them finds them.
    pub items: Vec<TokenStream>,
}

/// A parameter: its variable, and whether it is differentiated.
#[derive(Clone)]
pub struct Param {
    pub var: Var,
    pub active: bool,
    /// Its type is a float scalar (`f32`, `f64`, or a reference to one).
    pub scalar: bool,
    /// Its type is a reference (`&T`).
    pub reference: bool,
}

/// A sequence of statements ending in a [`Tail`].
#[derive(Clone)]
pub struct Block {
    pub stmts: Vec<Stmt>,
    pub tail: Tail,
}

/// How a block ends: a leaf, or a branch whose arms end the block.
#[derive(Clone)]
pub enum Tail {
    Leaf(Leaf),
    Branch(Box<Branching>),
}

/// Where control goes at the end of a block, with the values it carries: the
/// block's value (function output, `if` value, `break` value) and the current
/// values of the region's carried variables (loop carries, `if` phis).
#[derive(Clone)]
pub struct Leaf {
    pub kind: LeafKind,
    pub value: Option<Val>,
    pub carries: Vec<Atom>,
}

impl Leaf {
    /// The values it carries, in the order of the branch's or loop's variables: its
    /// value's atoms (depth first), then the carried ones.
    pub fn atoms(&self) -> Vec<Atom> {
        let mut atoms = Vec::new();
        if let Some(v) = &self.value {
            v.flatten(&mut atoms);
        }
        atoms.extend(self.carries.iter().cloned());
        atoms
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeafKind {
    /// The end of the block: its value flows out (function return, `if` value, next iteration).
    Fallthrough,
    Break,
    Continue,
    Return,
}

/// An `if`/`else` or a `match` on a constant: which arm runs is recorded for the
/// reverse sweep.
#[derive(Clone)]
pub struct Branching {
    pub kind: BranchKind,
    pub arms: Vec<Block>,
}

#[derive(Clone)]
pub enum BranchKind {
    /// `if cond { arms[0] } else { arms[1] }`.
    If { cond: TokenStream },
    /// `match scrutinee { pats[i] => arms[i] }`.
    Match {
        scrutinee: TokenStream,
        pats: Vec<TokenStream>,
        binds: Vec<Vec<Var>>,
    },
}

/// One statement.
#[derive(Clone)]
pub enum Stmt {
    /// `let dst = op;`
    Let { dst: Var, op: Op, span: Span },
    /// `let (dsts..) = call;`: a differentiable call whose result is destructured,
    /// by a pattern of nested tuples (`let ((c, h), y) = ..`) whose leaves are the
    /// `dsts` in order.
    LetTuple {
        dsts: Vec<Var>,
        pattern: Nest,
        call: Call,
    },
    /// A branch in statement position: each arm's leaf gives the values of `phis`
    /// (the branch's value, then the outer variables it assigns).
    If { branch: Branching, phis: Vec<Var> },
    /// A loop.
    Loop(Loop),
    /// `grad!(cx, |mdl, cx, a..| mdl.call(cx, a..), Child, args..)` (or
    /// `value_and_grad!`) inside a module, emitted as written, one variable per
    /// primal's gradient. Its pullback (second order) reruns the child's JVP-VJP on a
    /// snapshot of the variables.
    LetLifted(Lifted),
}

/// The shape of a nested tuple pattern: a leaf (the next of the flat names), or a
/// tuple of such.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Nest {
    Leaf,
    Tuple(Vec<Nest>),
}

impl Nest {
    /// A flat tuple of `n` leaves.
    pub fn flat(n: usize) -> Nest {
        Nest::Tuple(vec![Nest::Leaf; n])
    }

    /// The pattern (or expression) with the leaves `items`, in order.
    pub fn render(&self, items: &[TokenStream]) -> TokenStream {
        fn go(n: &Nest, items: &mut std::slice::Iter<'_, TokenStream>) -> TokenStream {
            match n {
                Nest::Leaf => items.next().cloned().unwrap_or_else(|| quote::quote!(_)),
                Nest::Tuple(parts) => {
                    let parts: Vec<TokenStream> = parts.iter().map(|p| go(p, items)).collect();
                    quote::quote!((#(#parts,)*))
                }
            }
        }
        go(self, &mut items.iter())
    }
}

/// A lifted transform that can be differentiated (second order).
#[derive(Clone)]
pub struct Lifted {
    pub kind: LiftedKind,
    /// One gradient per primal (`grad!`), or the output and its tangent (`jvp!`).
    pub dsts: Vec<Var>,
    /// The macro invocation, as written (variables renamed).
    pub tokens: TokenStream,
    /// The child module's expression: constants, or a local bound module.
    pub module: TokenStream,
    /// Whether the pullback keeps a copy of the module (it reads `self` or a local,
    /// which the pullback may not borrow) rather than making it again.
    pub keep: bool,
    /// The scope variable.
    pub scope: Atom,
    pub args: Vec<Arg>,
    /// The collections and random streams it lets through (`variables`, `rngs`), as
    /// `Option<&[&str]>` expressions.
    pub visible: TokenStream,
    pub rngs: TokenStream,
    /// It was given `variables` or `rngs`.
    pub restricted: bool,
    /// A `grad!`'s closure that is more than `mdl.call(cx, x..)`, with the code of its
    /// JVP-VJP (see [`Rerun`]).
    pub closure: Option<Box<Rerun>>,
}

/// The closure of a lifted `grad!` or `value_and_grad!` that is more than
/// `mdl.call(cx, x..)` (`mdl.call(cx, x).sum()`): its second-order pullback runs the
/// closure's own JVP-VJP along the primals, written inline (its arguments' types are
/// not known). Lowering keeps the closure; `expand` writes the code (`None` where
/// forward mode does not cover the body: then the pullback reports
/// `SecondOrderUnsupported`), which the reverse sweep places.
#[derive(Clone)]
pub struct Rerun {
    pub closure: syn::ExprClosure,
    /// The variables of the enclosing code the closure reads (by their names): the
    /// rerun reads them as they were.
    pub captured: Vec<Var>,
    /// Those of them that are differentiated: the rerun's code takes them as
    /// parameters after the closure's own (`|mdl, cx, x.., c..|`), with zero
    /// tangents, and gives their cotangents.
    pub passed: Vec<Var>,
    pub code: Option<RerunCode>,
    /// For a `vmap!`, its closure's forward mode, as the closure `|mdl, cx, x.., c..,
    /// dx.., dc..| (y, dy)` (`c` the `passed` values): what the enclosing body's
    /// forward mode maps (written with that forward mode; `None` where it does not
    /// cover the closure).
    pub forward: Option<TokenStream>,
}

/// The JVP-VJP of a closure `|mdl, cx, x..|` along its primals, inline: `primal`
/// (reading `params`: the closure's parameters, then the tangents) computes
/// `output`, `(value, tangent)`; `reverse` reads the cotangent `__ct` and gives
/// `(variables' cotangents, (), (), primals' cotangents.., tangents' cotangents..)`.
/// Its locals are renamed apart from the enclosing body's, among which it runs.
#[derive(Clone)]
pub struct RerunCode {
    pub params: Vec<syn::Ident>,
    pub primal: TokenStream,
    pub output: TokenStream,
    pub reverse: TokenStream,
}

/// Which lifted transform.
#[derive(Clone)]
pub enum LiftedKind {
    /// `grad!` or `value_and_grad!` (with its value), with `has_aux` (its aux).
    Grad {
        value: Option<Var>,
        aux: Option<Var>,
    },
    /// `jvp!`: the arguments are the primals then their tangents; the variables'
    /// tangents, an expression (renamed), must hold no nonzero leaf.
    Jvp { var_tangents: TokenStream },
    /// `jacfwd!` or `jacrev!`: the Jacobian in the first primal (one `dst`).
    Jacobian,
    /// `vjp!`: the output and the pullback (`dsts`), with `has_aux` the aux; the
    /// output and the aux are differentiated (the child's reverse mode, run again).
    Vjp { aux: Option<Var> },
    /// `pb(ct)` of the pullback of the `vjp!` whose output is `y` (its snapshot is
    /// `y`'s; `aux`: that `vjp!` has one): `dsts` are the variables' cotangents and
    /// one per primal; `args` are `ct` then the `vjp!`'s own.
    Pull { y: Var, aux: bool },
    /// `vmap!`: the batched output (one `dst`); each argument's axis (`None`:
    /// broadcast) and the axis's name. The output is differentiated (the child's
    /// reverse mode run again, example by example). With `jvp`, the closure maps the
    /// child's JVP (forward mode's `vmap!`): the arguments are the primals then their
    /// tangents, the `dsts` the output and its tangent.
    Vmap {
        in_axes: Vec<Option<syn::LitInt>>,
        axis_name: Option<syn::LitStr>,
        jvp: bool,
    },
}

/// A loop with the variables it carries from one iteration to the next.
#[derive(Clone)]
pub struct Loop {
    pub kind: LoopKind,
    pub carries: Vec<Carry>,
    pub body: Block,
    /// The loop's value (`break v`), if it is used.
    pub value: Option<Var>,
    pub span: Span,
}

#[derive(Clone)]
pub enum LoopKind {
    /// `for pat in iter` over constants.
    For {
        pat: TokenStream,
        iter: TokenStream,
        binds: Vec<Var>,
        /// The variables whose elements the loop goes over (`x` of `x.iter()`, none
        /// of `0..x.len()`): if one is differentiated, the loop variables would
        /// drop its derivative.
        sources: Vec<Var>,
        iter_span: Span,
    },
    /// `loop` (and `while`, lowered to `loop { if !cond { break } .. }`).
    Loop,
}

/// A carried variable: its value before the loop, its name at the top of each
/// iteration, and its name after the loop. Leaves give its next value.
#[derive(Clone)]
pub struct Carry {
    pub init: Atom,
    pub inner: Var,
    pub out: Var,
}

/// An argument of a call, and whether the user passed it by reference.
#[derive(Clone, Debug)]
pub struct Arg {
    pub atom: Atom,
    pub by_ref: bool,
}

/// What a statement computes.
#[derive(Clone)]
pub enum Op {
    /// A rule from the table, applied to operands and constant arguments.
    Prim {
        rule: &'static crate::ops::Rule,
        operands: Vec<Arg>,
        consts: Vec<Atom>,
        native: Native,
    },
    /// A call that is differentiated through its generated companion when an argument
    /// is active, and called as written otherwise.
    Call(Call),
    /// A constant expression, emitted as written (with variables renamed).
    Const(TokenStream),
    /// A struct or array literal or a macro call, emitted as written: a constant, and
    /// an error if it holds a differentiated value (`reads` are the variables it
    /// is made of).
    Build {
        tokens: TokenStream,
        reads: Vec<Var>,
        what: Built,
    },
    /// A lifted transform inside a module that second order does not go through
    /// (`vjp!`, `vmap!`, a closure other than `mdl.call(..)`), a field of its result,
    /// or a call of what it returned (`pb(ct)`), emitted as written. It depends on the
    /// module's parameters and on the values it `reads`; its cotangent marks the
    /// parameter gradients as unusable and makes those values' cotangents NaN, so
    /// that nothing is silently dropped.
    Lifted {
        tokens: TokenStream,
        reads: Vec<Atom>,
    },
    /// `x.mapv(closure)` with a differentiable scalar closure.
    MapV {
        recv: Atom,
        closure: Box<Func>,
        native: TokenStream,
        /// The enclosing body's values the closure reads (`closure.free`'s, in
        /// order): a differentiated one gets the sum of its per-element partials.
        captured: Vec<Atom>,
    },
}

/// What an [`Op::Build`] is, for its error message and whether it may have effects.
#[derive(Clone, Debug)]
pub enum Built {
    /// A struct or array literal.
    Literal,
    /// A macro call (`format!`, a user's macro): it may have effects.
    Macro(Ident),
    /// A call given a closure (`ids.map(|i| ..)`), other than `mapv`, and what its
    /// closures read (the [`Op::Build`]'s `reads` are its other operands).
    ClosureCall { captured: Vec<Var> },
    /// A field of a local (`plan.rows`).
    Field,
    /// An iterator over a local's elements (`x.iter()`).
    Iter,
}

/// A call to a function or method that may be `#[differentiable]`.
#[derive(Clone)]
pub struct Call {
    /// `f`, `path::f`, or a method name called on `receiver`.
    pub callee: Callee,
    pub args: Vec<Arg>,
    pub span: Span,
    pub scoped: Scoped,
}

impl Call {
    /// A module applied to variables as the user wrote it (`apply`, `apply_with`),
    /// whose `Result` the user unwrapped; forward mode's `__apply_jvp_all`,
    /// `__apply_with_jvp_all` and `__apply_tjvp_all` give the value itself.
    pub fn unwraps(&self) -> bool {
        self.scoped == Scoped::Apply && self.callee.name().to_string().starts_with("apply")
    }
}

/// How a call involves a module's scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scoped {
    /// An ordinary call.
    No,
    /// A submodule's `call` (the scope is an argument): its parameters vary with the
    /// parent's when parameters are differentiated.
    Module,
    /// `cx.param(..)`: a parameter read.
    Param,
    /// `module.apply(variables, ..).unwrap()`: a whole module applied to variables
    /// (also `apply_with`, and forward mode's `__apply_jvp_all`,
    /// `__apply_with_jvp_all`, `__apply_tjvp_all`).
    Apply,
}

#[derive(Clone)]
pub enum Callee {
    /// A free function: its path up to the last segment, the last segment, and turbofish.
    Path {
        prefix: TokenStream,
        name: Ident,
        generics: TokenStream,
        /// An associated function (`Self::f`, `Type::f`), whose companions are its
        /// siblings (`Self::__f_vjp`); a free function's live on the struct of its name
        /// (`f::vjp`, which `use path::f;` brings along).
        assoc: bool,
    },
    /// A method on `receiver` (`self.helper(x)`, `layer.forward(x)`).
    Method {
        receiver: Arg,
        name: Ident,
        generics: TokenStream,
    },
}

impl Callee {
    /// The function's or method's name (its last path segment).
    pub fn name(&self) -> &Ident {
        match self {
            Callee::Path { name, .. } | Callee::Method { name, .. } => name,
        }
    }

    /// `prefix::f::<..>` or `receiver.f::<..>` as written, with `f` renamed by `rename`
    /// and the receiver written by `receiver`.
    pub fn render(
        &self,
        rename: impl FnOnce(&Ident) -> Ident,
        receiver: impl FnOnce(&Arg) -> TokenStream,
    ) -> TokenStream {
        match self {
            Callee::Path {
                prefix,
                name,
                generics,
                ..
            } => {
                let f = rename(name);
                quote::quote!(#prefix #f #generics)
            }
            Callee::Method {
                receiver: r,
                name,
                generics,
            } => {
                let (r, f) = (receiver(r), rename(name));
                quote::quote!(#r.#f #generics)
            }
        }
    }
}

/// How to write an operation as the user did, for when none of its operands is
/// active.
#[derive(Clone, Debug)]
pub enum Native {
    /// `recv.name(args)` with the operands then constants as arguments; `suffix` is
    /// appended (`.unwrap()`).
    Method { name: Ident, suffix: TokenStream },
    /// `lhs op rhs`.
    Binary(TokenStream),
    /// `-x`.
    Neg,
    /// `x * x`, written `&x * &x`.
    Square,
    /// `x[idx]`.
    Index,
    /// `x as T`, or `*x as T` where the user dereferenced `x` (a count from a
    /// loop over references: lowering reads `*x` as `x`).
    Cast { ty: TokenStream, deref: bool },
    /// `path(operands.., consts..)`.
    Function(TokenStream),
    /// `path(const0, &[operands..]).unwrap()` (`concatenate`, `stack`).
    Variadic(TokenStream),
    /// The rule's own function, as when an operand is active (`array!`).
    Rule,
    /// `(operands..,)`: a tuple passed where one value is expected (an argument).
    Tuple,
}

impl Lifted {
    /// Every variable it defines: the value and aux (if any), then the gradients.
    pub fn defined(&self) -> Vec<Var> {
        let (value, aux) = match &self.kind {
            LiftedKind::Grad { value, aux } => (*value, *aux),
            LiftedKind::Vjp { aux } => (None, *aux),
            LiftedKind::Jvp { .. }
            | LiftedKind::Jacobian
            | LiftedKind::Pull { .. }
            | LiftedKind::Vmap { .. } => (None, None),
        };
        value
            .iter()
            .chain(&aux)
            .chain(&self.dsts)
            .copied()
            .collect()
    }

    /// A plain `grad!(cx, |mdl, cx, a..| mdl.call(cx, a..), Child, a..)` over a
    /// module that is not `self` or a field of it (its scope auto-named or bound),
    /// without options: differentiated again, it runs the
    /// child's input gradient (`__call_body_vjpx`), written back as source where the
    /// child's body allows (reverse over reverse), when the scope is pure.
    pub fn input_gradient(&self) -> bool {
        matches!(
            self.kind,
            LiftedKind::Grad {
                value: None,
                aux: None
            }
        ) && self.closure.is_none()
            && !self.restricted
            && !crate::hygiene::idents(&self.module).contains("self")
    }

    /// The variables of the enclosing code its closure reads (see [`Rerun`]).
    pub fn captured(&self) -> &[Var] {
        self.closure.as_ref().map_or(&[], |r| &r.captured)
    }
}

impl Func {
    pub fn name(&self, v: Var) -> &Ident {
        &self.vars[v.0 as usize].name
    }
}
