//! Forward mode: the JVP of a lowered body, written back as ordinary Rust source
//! (operators and methods on references), so that `#[differentiable]` can
//! differentiate it again: reverse over forward gives Hessian-vector products.
//!
//! Each statement is followed by its tangent (`__d_x` for `x`), from a template that
//! uses only primitives with rules (`rules`): the product rule for `*` and `dot`, the
//! operation itself for linear ones, `dx * f'(x)` for elementwise functions with `f'`
//! written in primitives. Loops and branches carry tangents beside values
//! (`control`); calls go to the callee's JVP (`jvp_all`, a submodule's `__call_jvp`,
//! a method's `__m_jvp_all`). A body using anything without a template gets no JVP.

mod control;
mod lifted;
mod rules;

use crate::ir::*;
use crate::names::{companion_ident, dot_name};
use crate::ops;
use proc_macro2::TokenStream;
use quote::{ToTokens, format_ident, quote};
use std::collections::HashSet;
use syn::Ident;

/// Which tangents forward mode follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Along the inputs, as ordinary Rust differentiated again (second order); a
    /// tangent has its input's type.
    Inputs,
    /// Along the inputs and the variables, in a module's body (what a lifted `jvp!`
    /// or a module applied to variables with a tangent runs): parameter reads take
    /// theirs from the scope, and submodules run the same kind of forward mode
    /// (`__call_tjvp`), given a tangent for every argument as their primals are
    /// passed (as `jvp_all`: a zero, or `NoTangent`, where one does not vary).
    /// Ordinary Rust differentiated again too: second order along the variables.
    Variables,
    /// The same in a lifted `jvp!`'s closure, whose arguments' types are not known:
    /// tangents are owned values, and submodules take them through their generic
    /// entry (`__call_tjvp_any`: any tangent, or `NoTangent`, converted there). Not
    /// differentiated again (the lifted `jvp!`'s second order reruns the child).
    Lifted,
}

/// The body of `fn __f_jvp(args.., tangents..) -> (R, R)`, or `None` if the body uses
/// something forward mode does not cover yet.
///
/// With `calls`, a call of a function is written as a call of its `jvp_all`, which
/// `#[differentiable(jvp)]` writes (so the callee must be marked so: the error is at
/// the call); without, a body with such a call has no JVP (a module's forward mode,
/// generated whether or not anyone asks for it, must not break the build).
pub fn jvp_body(
    f: &Func,
    varied: &dyn Fn(Var) -> bool,
    reference_params: &[bool],
    mode: Mode,
    calls: bool,
) -> Option<TokenStream> {
    let mut t = Tangent::new(f, varied, reference_params, mode, calls);
    for p in &f.params {
        if p.active {
            t.has_dot.insert(p.var);
        }
    }
    let items = &f.items;
    let mut out = quote!(#(#items)*);
    out.extend(t.stmts(&f.body.stmts)?);
    // The output and its tangent, from the body's last leaf or each arm of its last
    // branch.
    // The tangent first: a zero one borrows the value, which the pair then moves.
    let tail = t.tail(&f.body.tail, true, &mut |t, leaf| {
        let output = leaf.value.as_ref()?;
        let (y, dy) = (t.output(output, false), t.output(output, true));
        Some(quote!({
            let __dy = #dy;
            (#y, __dy)
        }))
    })?;
    out.extend(tail);
    Some(out)
}

/// The partial derivative of a `mapv` closure `|v| f(v, c..)` as a closure of `v`:
/// in `v` (`captured` `None`), or in its `k`-th captured value, from the closure's
/// JVP with a unit tangent for that input and zero for the others.
fn mapv_partial(closure: &Func, captured: Option<usize>) -> Option<TokenStream> {
    let mut f = closure.clone();
    // An element is a scalar, whatever its (perhaps generic) type.
    for p in &mut f.params {
        p.scalar = true;
    }
    if let Some(k) = captured {
        f.params.push(Param {
            var: f.free.get(k)?.0,
            active: true,
            scalar: true,
            reference: false,
        });
    }
    // Errors of the closure were reported with the enclosing body.
    let act = crate::activity::analyze(&crate::ctxt::Ctxt::default(), &f);
    let refs = vec![false; f.params.len()];
    let body = jvp_body(&f, &|v| act.varied(v), &refs, Mode::Inputs, false)?;
    let v = f.name(f.params.first()?.var);
    let seeds = f.params.iter().enumerate().map(|(i, p)| {
        let d = dot_name(f.name(p.var));
        let along = match captured {
            None => i == 0,
            Some(_) => i > 0,
        };
        let unit = if along { quote!(1.0) } else { quote!(0.0) };
        quote!(let #d = ::adjoint::no_grad(::adjoint::__private::lit(&#v, #unit));)
    });
    Some(quote!(|#v| {
        #(#seeds)*
        let (_, __d) = { #body };
        __d
    }))
}

/// The variables `b` defines at its level and in the arms of its tail.
fn iteration_defs(b: &Block, out: &mut HashSet<Var>) {
    crate::facts::block_defs(b, out);
    if let Tail::Branch(br) = &b.tail {
        br.arms.iter().for_each(|a| iteration_defs(a, out));
    }
}

struct Tangent<'a> {
    f: &'a Func,
    varied: &'a dyn Fn(Var) -> bool,
    has_dot: HashSet<Var>,
    /// Parameters of reference type: already references, as are their tangents.
    refs: HashSet<Var>,
    mode: Mode,
    /// Float scalars and integers: used by value (`Copy`), as ndarray's operators
    /// want them.
    scalar: Vec<bool>,
    /// Loops written so far: their carries' names are numbered by it.
    loops: usize,
    /// Calls of functions go through their `jvp_all` (see [`jvp_body`]).
    calls: bool,
    /// The tail being written ends a loop's body: `break` and `continue` leaves are
    /// the loop's (a function's `return` inside a loop is not covered).
    in_loop_tail: bool,
}

impl<'a> Tangent<'a> {
    fn new(
        f: &'a Func,
        varied: &'a dyn Fn(Var) -> bool,
        reference_params: &[bool],
        mode: Mode,
        calls: bool,
    ) -> Self {
        let refs: HashSet<Var> = f
            .params
            .iter()
            .zip(reference_params)
            .filter(|(_, r)| **r)
            .map(|(p, _)| p.var)
            .collect();
        let mut defs = std::collections::HashMap::new();
        crate::facts::collect_defs(&f.body, &mut defs);
        let mut scalar = crate::facts::scalars(f, &defs);
        // Integers are `Copy` too, and written by value like float scalars.
        for (s, i) in scalar.iter_mut().zip(crate::facts::integers(f, &defs)) {
            *s |= i;
        }
        Tangent {
            f,
            varied,
            has_dot: HashSet::new(),
            refs,
            scalar,
            mode,
            loops: 0,
            in_loop_tail: false,
            calls,
        }
    }
}

/// A body's statements written back as the user wrote them, nothing differentiated,
/// and its values as operands: what the input gradient written back as source
/// ([`crate::transpose`]) starts from.
pub(crate) struct Primal<'a>(Tangent<'a>);

impl<'a> Primal<'a> {
    pub(crate) fn new(f: &'a Func, reference_params: &[bool]) -> Self {
        fn never(_: Var) -> bool {
            false
        }
        Primal(Tangent::new(
            f,
            &never,
            reference_params,
            Mode::Inputs,
            false,
        ))
    }

    /// `let x = ..;` as written (`None` for what forward mode would not write).
    pub(crate) fn stmt(&mut self, s: &Stmt) -> Option<TokenStream> {
        self.0.stmt(s)
    }

    /// The value itself (a variable's name, a literal).
    pub(crate) fn atom(&self, a: &Atom) -> TokenStream {
        self.0.atom(a)
    }

    /// A reference to an array, a scalar by value (see [`Tangent::r`]).
    pub(crate) fn r(&self, a: &Atom) -> TokenStream {
        self.0.r(a)
    }

    /// A call's argument as the user passed it.
    pub(crate) fn arg(&self, a: &Arg) -> TokenStream {
        self.0.arg(a)
    }

    /// Whether `v` is a scalar (or an integer): used by value.
    pub(crate) fn scalar(&self, v: Var) -> bool {
        self.0.scalar[v.0 as usize]
    }

    /// Whether `v` is a parameter of reference type.
    pub(crate) fn is_ref(&self, v: Var) -> bool {
        self.0.refs.contains(&v)
    }
}

impl Tangent<'_> {
    fn atom(&self, a: &Atom) -> TokenStream {
        match a {
            Atom::Var(v) => self.f.name(*v).to_token_stream(),
            Atom::Lit(t) => t.clone(),
        }
    }

    /// A reference to a variable (`&x`, or `x` if it is one already), a literal as
    /// is: operators on references never move.
    fn r(&self, a: &Atom) -> TokenStream {
        match a {
            Atom::Var(v) if self.refs.contains(v) || self.scalar[v.0 as usize] => {
                self.f.name(*v).to_token_stream()
            }
            // A scalar by value, an array by reference, whichever it is: a dot
            // product of vectors is a scalar, of matrices an array.
            Atom::Var(v) => {
                let n = self.f.name(*v);
                quote!(::adjoint::__private::operand(&#n))
            }
            // A constant named by a path (a value a lifted closure reads from the
            // enclosing code, a `const`): borrowed likewise, as the closure may run
            // again (a `jacfwd!` column per input element).
            Atom::Lit(t) if syn::parse2::<syn::ExprPath>(t.clone()).is_ok() => {
                quote!(::adjoint::__private::operand(&#t))
            }
            Atom::Lit(t) => t.clone(),
        }
    }

    /// A reference to the tangent of `a`, if it has one.
    fn dot(&self, a: &Atom) -> Option<TokenStream> {
        let v = a.var()?;
        if !self.has_dot.contains(&v) {
            return None;
        }
        let d = dot_name(self.f.name(v));
        Some(if self.refs.contains(&v) || self.scalar[v.0 as usize] {
            quote!(#d)
        } else {
            quote!(::adjoint::__private::operand(&#d))
        })
    }

    /// The tangent of `a` by reference to the variable itself (not a temporary), for
    /// rules whose result borrows their operand (reshapes, permutations).
    fn dot_ref(&self, a: &Atom) -> Option<TokenStream> {
        let v = a.var().filter(|v| self.has_dot.contains(v))?;
        let d = dot_name(self.f.name(v));
        Some(if self.refs.contains(&v) {
            quote!(#d)
        } else {
            quote!(&#d)
        })
    }

    /// A reference to the tangent, or a zero of the value's shape and type.
    fn dot_or_zero(&self, a: &Atom) -> TokenStream {
        match (self.dot(a), a) {
            (Some(d), _) => d,
            // A literal's tangent is a zero that takes its type from the other side.
            (None, Atom::Lit(_)) => quote!(0.0),
            (None, Atom::Var(v)) => {
                let x = self.f.name(*v);
                quote!(::adjoint::__private::operand(&::adjoint::no_grad(::adjoint::__private::zeros(&#x))))
            }
        }
    }

    fn stmts(&mut self, stmts: &[Stmt]) -> Option<TokenStream> {
        let mut out = TokenStream::new();
        for s in stmts {
            out.extend(self.stmt(s)?);
        }
        Some(out)
    }

    fn stmt(&mut self, s: &Stmt) -> Option<TokenStream> {
        match s {
            Stmt::Let { dst, op, .. } => {
                let name = self.f.name(*dst).clone();
                let info = &self.f.vars[dst.0 as usize];
                let decl = match (&info.ty, info.mutable) {
                    (Some(ty), _) => quote!(#name: #ty),
                    (None, true) => quote!(mut #name),
                    (None, false) => quote!(#name),
                };
                match op {
                    // `no_grad` keeps it a constant when this source is lowered again.
                    Op::Const(t) | Op::Build { tokens: t, .. } => {
                        Some(quote!(let #decl = ::adjoint::no_grad(#t);))
                    }
                    // A parameter read: constant along the inputs' tangents.
                    Op::Call(call) if call.scoped == Scoped::Param => {
                        let Callee::Method { receiver, .. } = &call.callee else {
                            return None;
                        };
                        let recv = self.atom(&receiver.atom);
                        let f = call.callee.render(Ident::clone, |r| self.atom(&r.atom));
                        let args: Vec<TokenStream> =
                            call.args.iter().map(|a| self.arg(a)).collect();
                        let mut out = quote!(let #decl = #f(#(#args),*););
                        // Along the variables: the tangent the scope was given, or zero.
                        if self.mode != Mode::Inputs && (self.varied)(*dst) {
                            let (dn, param) = (dot_name(&name), &args[0]);
                            out.extend(quote!(let #dn = #recv.param_tangent(&#name, #param);));
                            self.has_dot.insert(*dst);
                        }
                        Some(out)
                    }
                    // A call along which nothing varies: as written.
                    Op::Call(call) if !(self.varied)(*dst) => {
                        let f = call.callee.render(Ident::clone, |r| self.arg(r));
                        let args = call.args.iter().map(|a| self.arg(a));
                        Some(quote!(let #decl = #f(#(#args),*);))
                    }
                    // A submodule's call, or a call of a `(jvp)` function or method:
                    // its JVP (see [`Jvp::call_jvp`]).
                    // The type the user wrote on the value stays on it (it may be
                    // what fixes a generic callee's).
                    Op::Call(call) if self.callable(call) => {
                        let jvp = self.call_jvp(call)?;
                        let dn = dot_name(&name);
                        self.has_dot.insert(*dst);
                        let ty = info.ty.as_ref().map(|ty| quote!(: (#ty, _)));
                        Some(quote!(let (#name, #dn) #ty = #jvp;))
                    }
                    // `x.mapv(f)`: the primal as written; the tangent is `dx` times `f'`
                    // elementwise, plus each differentiated captured value's tangent times
                    // `f`'s partial in it: `mapv`s of `f`'s own JVP, so that the tangent
                    // is differentiable again.
                    Op::MapV {
                        recv,
                        closure,
                        native,
                        captured,
                    } => {
                        let x = self.atom(recv);
                        let mut out = quote!(let #decl = #x.mapv(#native););
                        if !(self.varied)(*dst) {
                            return Some(out);
                        }
                        let mut terms = Vec::new();
                        if let Some(d) = self.dot(recv) {
                            let partial = mapv_partial(closure, None)?;
                            terms.push(quote!((#d * &#x.mapv(#partial))));
                        }
                        for (k, c) in captured.iter().enumerate() {
                            // A captured value is a scalar (the closure's code is).
                            if let Some(dc) = self.dot(c) {
                                let partial = mapv_partial(closure, Some(k))?;
                                terms.push(quote!((#x.mapv(#partial) * #dc)));
                            }
                        }
                        if !terms.is_empty() {
                            let dn = dot_name(&name);
                            out.extend(quote!(let #dn = #(#terms)+*;));
                            self.has_dot.insert(*dst);
                        }
                        Some(out)
                    }
                    Op::Prim {
                        rule,
                        operands,
                        consts,
                        native,
                    } => {
                        let moves = (self.varied)(*dst)
                            && operands.iter().any(|a| self.dot(&a.atom).is_some());
                        let primal = match self.kernel(rule, native, operands) {
                            Some(kernel) if moves => kernel,
                            _ => self.native(native, operands, consts)?,
                        };
                        let mut out = quote!(let #name = #primal;);
                        if moves {
                            let scalar = self.scalar[dst.0 as usize];
                            let d = match native {
                                Native::Variadic(path) => self.variadic(path, operands, consts),
                                _ => self.template(rule.func, &name, scalar, operands, consts)?,
                            };
                            let dn = dot_name(&name);
                            out.extend(quote!(let #dn = #d;));
                            self.has_dot.insert(*dst);
                        }
                        Some(out)
                    }
                    _ => None,
                }
            }
            // A branch: each arm with its tangents, ending in its values of the phis
            // and the tangents of those that vary (a zero where an arm's is constant).
            Stmt::If { branch, phis } => {
                let varied: Vec<bool> = phis.iter().map(|p| (self.varied)(*p)).collect();
                let expr = self.branching(branch, false, &mut |t, leaf| {
                    let atoms = leaf.atoms();
                    // The tangents first: a zero one borrows its primal, which the
                    // tuple then moves.
                    let (mut lets, mut items) = (TokenStream::new(), Vec::new());
                    for (i, (a, varies)) in atoms.iter().zip(&varied).enumerate() {
                        items.push(t.atom(a));
                        if *varies {
                            let d = format_ident!("__d_phi{}", i);
                            let tangent = t.output(&Val::Atom(a.clone()), true);
                            lets.extend(quote!(let #d = #tangent;));
                            items.push(d.to_token_stream());
                        }
                    }
                    Some(quote!(#lets (#(#items,)*)))
                })?;
                let mut pats = Vec::new();
                for (p, varies) in phis.iter().zip(&varied) {
                    let name = self.f.name(*p);
                    pats.push(if self.f.vars[p.0 as usize].mutable {
                        quote!(mut #name)
                    } else {
                        quote!(#name)
                    });
                    if *varies {
                        pats.push(dot_name(name).to_token_stream());
                        self.has_dot.insert(*p);
                    }
                }
                Some(quote!(let (#(#pats,)*) = #expr;))
            }
            Stmt::Loop(lp) => self.looping(lp),
            Stmt::LetLifted(l) => self.lifted(l),
            // `let (a, b) = f(..);`: the call's JVP gives the tuple and its tangent,
            // taken apart alike.
            Stmt::LetTuple {
                dsts,
                pattern,
                call,
            } => {
                let pats: Vec<TokenStream> = dsts
                    .iter()
                    .map(|d| {
                        let name = self.f.name(*d);
                        if self.f.vars[d.0 as usize].mutable {
                            quote!(mut #name)
                        } else {
                            quote!(#name)
                        }
                    })
                    .collect();
                if !dsts.iter().any(|d| (self.varied)(*d)) {
                    let f = call.callee.render(Ident::clone, |r| self.arg(r));
                    let args = call.args.iter().map(|a| self.arg(a));
                    let unwrap = call.unwraps().then(|| quote!(.unwrap()));
                    let pat = pattern.render(&pats);
                    return Some(quote!(let #pat = #f(#(#args),*) #unwrap;));
                }
                if !self.callable(call) {
                    return None;
                }
                let jvp = self.call_jvp(call)?;
                // `apply_with`'s mutated collections (its last part) are constants.
                let constant = (call.scoped == Scoped::Apply && call.callee.name() == "apply_with")
                    .then(|| dsts.last().copied())
                    .flatten();
                let dots: Vec<TokenStream> = dsts
                    .iter()
                    .map(|d| {
                        if (self.varied)(*d) && Some(*d) != constant {
                            self.has_dot.insert(*d);
                            dot_name(self.f.name(*d)).to_token_stream()
                        } else {
                            quote!(_)
                        }
                    })
                    .collect();
                let (pat, dot_pat) = (pattern.render(&pats), pattern.render(&dots));
                Some(quote!(let (#pat, #dot_pat) = #jvp;))
            }
        }
    }

    /// The JVP of a call, `f(args.., tangents..)` giving `(value, tangent)`: a
    /// submodule's `__call_jvp` (`__call_in_jvp`; `tjvp` along the variables), along
    /// the tangents of all its arguments; or a `#[differentiable(jvp)]` function's
    /// `jvp_all`, with a tangent for every argument (a zero, or `NoTangent` for a
    /// parameter the callee does not differentiate: its type picks); or a method's or
    /// an associated function's of a `(jvp)` impl, `__m_jvp_all` beside it.
    fn call_jvp(&self, call: &Call) -> Option<TokenStream> {
        let args: Vec<TokenStream> = call.args.iter().map(|a| self.arg(a)).collect();
        if call.scoped == Scoped::Apply {
            // `model.apply(variables, x..)`, `model.apply_with(variables, options,
            // x..)`: the module's forward mode along the inputs (`__apply_jvp_all`,
            // `__apply_with_jvp_all`), and along the variables when they have a
            // tangent (`__apply_tjvp_all`, `__apply_with_tjvp_all`, given after them).
            let with = call.callee.name() == "apply_with";
            let (first, prefix) = if with {
                (2, "__apply_with")
            } else {
                (1, "__apply")
            };
            let dots = call.args[first..].iter().map(|a| self.call_tangent(a));
            let (variables, rest) = (&args[0], &args[1..]);
            let along_variables = self.dot(&call.args[0].atom).is_some();
            let which = if along_variables { "tjvp" } else { "jvp" };
            let f = call.callee.render(
                |_| format_ident!("{}_{}_all", prefix, which),
                |r| self.arg(r),
            );
            let dv = along_variables
                .then(|| self.call_tangent(&call.args[0]))
                .into_iter();
            return Some(quote!(#f(#variables, #(#dv,)* #(#rest,)* #(#dots),*)));
        }
        if call.scoped == Scoped::Module {
            let m = call.callee.name();
            let suffix = match self.mode {
                Mode::Inputs => "jvp",
                Mode::Variables => "tjvp",
                Mode::Lifted => "tjvp_any",
            };
            let jvp = match m.to_string().as_str() {
                "call" => format_ident!("__call_{}", suffix),
                "__call_in" => format_ident!("__call_in_{}", suffix),
                _ => return None,
            };
            // The scope, the child's name: constants without tangents. Each other
            // argument's tangent is passed as its primal is (`&x`, `x`; a zero, or
            // `NoTangent`, where it has none: the callee's parameter picks).
            let skip = if m == "call" { 1 } else { 2 };
            let dots: Vec<TokenStream> = call.args[skip..]
                .iter()
                .map(|a| match self.mode {
                    Mode::Inputs | Mode::Variables => self.call_tangent(a),
                    Mode::Lifted => self
                        .dot(&a.atom)
                        .unwrap_or_else(|| quote!(::adjoint::__private::NoTangent)),
                })
                .collect();
            let f = call.callee.render(|_| jvp, |r| self.arg(r));
            return Some(quote!(#f(#(#args,)* #(#dots),*)));
        }
        let f = match &call.callee {
            Callee::Path {
                prefix,
                name: callee,
                generics,
                assoc: false,
            } => {
                // Spanned at the user's call: a callee without `(jvp)` is named there.
                // A turbofish moves to the companion (`f::jvp_all::<f32>`).
                let jvp_all = Ident::new("jvp_all", callee.span());
                quote!(#prefix #callee::#jvp_all #generics)
            }
            Callee::Path { .. } | Callee::Method { .. } => call
                .callee
                .render(|n| companion_ident(n, "jvp_all"), |r| self.arg(r)),
        };
        let dots = call.args.iter().map(|a| self.call_tangent(a));
        Some(quote!(#f(#(#args,)* #(#dots),*)))
    }

    /// Whether forward mode goes through `call` by its callee's forward mode: a
    /// submodule's call, a `(jvp)` function's or method's (when calls are
    /// followed), a module applied to variables (`model.apply(v, x..)`, along the
    /// inputs).
    fn callable(&self, call: &Call) -> bool {
        match call.scoped {
            Scoped::Module => true,
            Scoped::No => self.calls,
            Scoped::Apply => {
                self.mode == Mode::Inputs
                    && matches!(
                        call.callee.name().to_string().as_str(),
                        "apply" | "apply_with"
                    )
            }
            _ => false,
        }
    }

    /// The tangent of a call's argument, passed as the argument is (`&dx` for `&x`),
    /// or a zero whose type the callee's parameter picks.
    fn call_tangent(&self, a: &Arg) -> TokenStream {
        if let Atom::Lit(_) = a.atom {
            let zero = quote!(::adjoint::__private::literal_tangent());
            return if a.by_ref { quote!(&#zero) } else { zero };
        }
        let Some(v) = a.atom.var().filter(|v| self.has_dot.contains(v)) else {
            let x = self.atom(&a.atom);
            let zero = quote!(::adjoint::no_grad(::adjoint::__private::zero_tangent(&#x)));
            let by_ref = a.by_ref || a.atom.var().is_some_and(|v| self.refs.contains(&v));
            return if by_ref { quote!(&#zero) } else { zero };
        };
        let d = dot_name(self.f.name(v));
        if a.by_ref {
            quote!(&#d)
        } else if self.refs.contains(&v) || self.scalar[v.0 as usize] {
            quote!(#d)
        } else {
            quote!(::adjoint::__private::dup(&#d))
        }
    }

    /// A call's argument as the user passed it (`&x` or `x`).
    fn arg(&self, a: &Arg) -> TokenStream {
        let x = self.atom(&a.atom);
        if a.by_ref { quote!(&#x) } else { x }
    }
}
