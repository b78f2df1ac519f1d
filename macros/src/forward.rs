//! Forward mode: the JVP of a lowered body, written back as ordinary Rust source
//! (operators and methods on references), so that `#[differentiable]` can
//! differentiate it again: reverse over forward gives Hessian-vector products.
//!
//! Each statement is followed by its tangent (`__d_x` for `x`), from a template that
//! uses only primitives with rules: the product rule for `*` and `dot`, the operation
//! itself for linear ones, `dx * f'(x)` for elementwise functions with `f'` written in
//! primitives. A body using anything without a template (loops, calls, `mapv`, ...)
//! gets no JVP.

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
    /// Along the inputs and the variables (a lifted `jvp!`): tangents are owned values,
    /// parameter reads take theirs from the scope, and submodules run the same kind of
    /// forward mode (`__call_tjvp`), given `NoTangent` for arguments that do not vary.
    Variables,
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
    let refs: HashSet<Var> = f
        .params
        .iter()
        .zip(reference_params)
        .filter(|(_, r)| **r)
        .map(|(p, _)| p.var)
        .collect();
    let tangent_refs = match mode {
        Mode::Inputs => refs.clone(),
        Mode::Variables => HashSet::new(),
    };
    let mut defs = std::collections::HashMap::new();
    crate::facts::collect_defs(&f.body, &mut defs);
    let mut scalar = crate::facts::scalars(f, &defs);
    // Integers are `Copy` too, and written by value like float scalars.
    for (s, i) in scalar.iter_mut().zip(crate::facts::integers(f, &defs)) {
        *s |= i;
    }
    let mut t = Tangent {
        f,
        varied,
        has_dot: HashSet::new(),
        refs,
        tangent_refs,
        scalar,
        mode,
        loops: 0,
        in_loop_tail: false,
        calls,
    };
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
    let tail = t.tail(&f.body.tail, true, &mut |t, leaf| {
        let output = leaf.value.as_ref()?;
        let (y, dy) = (t.output(output, false), t.output(output, true));
        Some(quote!((#y, #dy)))
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
    /// Parameters of reference type: already references.
    refs: HashSet<Var>,
    /// The variables whose tangents are references.
    tangent_refs: HashSet<Var>,
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
        Some(
            if self.tangent_refs.contains(&v) || self.scalar[v.0 as usize] {
                quote!(#d)
            } else {
                quote!(::adjoint::__private::operand(&#d))
            },
        )
    }

    /// The tangent of `a` by reference to the variable itself (not a temporary), for
    /// rules whose result borrows their operand (reshapes, permutations).
    fn dot_ref(&self, a: &Atom) -> Option<TokenStream> {
        let v = a.var().filter(|v| self.has_dot.contains(v))?;
        let d = dot_name(self.f.name(v));
        Some(if self.tangent_refs.contains(&v) {
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
                        if self.mode == Mode::Variables && (self.varied)(*dst) {
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
                    Op::Call(call)
                        if call.scoped == Scoped::Module
                            || (call.scoped == Scoped::No && self.calls) =>
                    {
                        let jvp = self.call_jvp(call)?;
                        let dn = dot_name(&name);
                        self.has_dot.insert(*dst);
                        Some(quote!(let (#name, #dn) = #jvp;))
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
                        let primal = self.native(native, operands, consts)?;
                        let mut out = quote!(let #name = #primal;);
                        if (self.varied)(*dst)
                            && operands.iter().any(|a| self.dot(&a.atom).is_some())
                        {
                            let scalar = self.scalar[dst.0 as usize];
                            let d = self.template(rule.func, &name, scalar, operands, consts)?;
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
                    let mut atoms = Vec::new();
                    if let Some(v) = &leaf.value {
                        v.flatten(&mut atoms);
                    }
                    atoms.extend(leaf.carries.iter().cloned());
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
                    let unwrap = (call.scoped == Scoped::Apply).then(|| quote!(.unwrap()));
                    let pat = pattern.render(&pats);
                    return Some(quote!(let #pat = #f(#(#args),*) #unwrap;));
                }
                let callable =
                    call.scoped == Scoped::Module || (call.scoped == Scoped::No && self.calls);
                if !callable {
                    return None;
                }
                let jvp = self.call_jvp(call)?;
                let dots: Vec<TokenStream> = dsts
                    .iter()
                    .map(|d| {
                        if (self.varied)(*d) {
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
            _ => None,
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
        if call.scoped == Scoped::Module {
            let m = call.callee.name();
            let suffix = match self.mode {
                Mode::Inputs => "jvp",
                Mode::Variables => "tjvp",
            };
            let jvp = match m.to_string().as_str() {
                "call" => format_ident!("__call_{}", suffix),
                "__call_in" => format_ident!("__call_in_{}", suffix),
                _ => return None,
            };
            // The scope, the child's name: constants without tangents.
            let skip = if m == "call" { 1 } else { 2 };
            let dots = call.args[skip..]
                .iter()
                .map(|a| {
                    let with = a.atom.var().filter(|v| self.has_dot.contains(v));
                    match (self.mode, with) {
                        (Mode::Variables, Some(_)) => self.dot(&a.atom),
                        (Mode::Variables, None) => Some(quote!(::adjoint::__private::NoTangent)),
                        // Each tangent is passed as its primal is (`&x`, `x`).
                        (Mode::Inputs, Some(v)) => {
                            let d = dot_name(self.f.name(v));
                            Some(if a.by_ref {
                                quote!(&#d)
                            } else if self.refs.contains(&v) || self.scalar[v.0 as usize] {
                                quote!(#d)
                            } else {
                                quote!(::adjoint::__private::dup(&#d))
                            })
                        }
                        (Mode::Inputs, None) => None,
                    }
                })
                .collect::<Option<Vec<_>>>()?;
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

    /// A loop with its tangents carried beside its values: each carry `c` that
    /// varies has a tangent carry, zero where it starts constant; every leaf of the
    /// body hands both on (`break` too, so that they are set after the loop).
    fn looping(&mut self, lp: &Loop) -> Option<TokenStream> {
        let id = self.loops;
        self.loops += 1;
        let varies: Vec<bool> = lp
            .carries
            .iter()
            .map(|c| (self.varied)(c.inner) || (self.varied)(c.out))
            .collect();
        let names: Vec<(Ident, Ident)> = (0..lp.carries.len())
            .map(|k| {
                let c = format_ident!("__fcarry{}_{}", id, k);
                let d = dot_name(&c);
                (c, d)
            })
            .collect();
        let mut out = TokenStream::new();
        for ((c, (cn, dn)), varies) in lp.carries.iter().zip(&names).zip(&varies) {
            let init = self.copied(&c.init, false);
            out.extend(quote!(let mut #cn = #init;));
            if *varies {
                let d = match c.init.var().filter(|v| self.has_dot.contains(v)) {
                    Some(_) => self.copied(&c.init, true),
                    None => quote!(::adjoint::no_grad(::adjoint::__private::zeros(&#cn))),
                };
                out.extend(quote!(let mut #dn = #d;));
            }
        }
        let mut body = TokenStream::new();
        for ((c, (cn, dn)), varies) in lp.carries.iter().zip(&names).zip(&varies) {
            let inner = self.f.name(c.inner);
            body.extend(quote!(let #inner = #cn;));
            if *varies {
                let d = dot_name(inner);
                body.extend(quote!(let #d = #dn;));
                self.has_dot.insert(c.inner);
            }
        }
        body.extend(self.stmts(&lp.body.stmts)?);
        // The loop's value, and whether its tangent goes along.
        let value = lp.value.map(|v| (v, (self.varied)(v)));
        // What an iteration defines, which its leaves may move into the carries.
        let mut local = HashSet::new();
        iteration_defs(&lp.body, &mut local);
        local.extend(lp.carries.iter().map(|c| c.inner));
        // A leaf's next carries (tangents, then values: a zero tangent borrows its
        // value) and what it breaks with.
        let hand_on =
            |t: &Self, l: &Leaf| -> Option<(TokenStream, Vec<TokenStream>, TokenStream)> {
                let mut count = std::collections::HashMap::new();
                for a in &l.carries {
                    if let Some(v) = a.var() {
                        *count.entry(v).or_insert(0) += 1;
                    }
                }
                let movable = |a: &Atom| {
                    a.var()
                        .is_some_and(|v| local.contains(&v) && count[&v] == 1)
                };
                let mut lets = TokenStream::new();
                let mut nexts = Vec::new();
                for (k, (a, varies)) in l.carries.iter().zip(&varies).enumerate() {
                    if *varies {
                        let d = format_ident!("__d_next{}", k);
                        let tangent = match a.var().filter(|v| t.has_dot.contains(v)) {
                            Some(_) if movable(a) => t.output(&Val::Atom(a.clone()), true),
                            Some(_) => t.copied(a, true),
                            None => t.output(&Val::Atom(a.clone()), true),
                        };
                        lets.extend(quote!(let #d = #tangent;));
                    }
                }
                for (k, (a, varies)) in l.carries.iter().zip(&varies).enumerate() {
                    nexts.push(if movable(a) {
                        t.atom(a)
                    } else {
                        t.copied(a, false)
                    });
                    if *varies {
                        nexts.push(format_ident!("__d_next{}", k).to_token_stream());
                    }
                }
                let broken = match (l.kind, &l.value, value) {
                    (LeafKind::Break, Some(v), Some((_, true))) => {
                        let (y, dy) = (t.output(v, false), t.output(v, true));
                        quote!((#y, #dy))
                    }
                    (LeafKind::Break, Some(v), Some((_, false))) => t.output(v, false),
                    _ => TokenStream::new(),
                };
                Some((lets, nexts, broken))
            };
        let targets: Vec<TokenStream> = names
            .iter()
            .zip(&varies)
            .flat_map(|((cn, dn), varies)| {
                let mut v = vec![cn.to_token_stream()];
                if *varies {
                    v.push(dn.to_token_stream());
                }
                v
            })
            .collect();
        let was = std::mem::replace(&mut self.in_loop_tail, true);
        let end = match &lp.body.tail {
            Tail::Leaf(l) => {
                let (lets, nexts, broken) = hand_on(self, l)?;
                let exit = match l.kind {
                    LeafKind::Break => quote!(break #broken;),
                    LeafKind::Fallthrough | LeafKind::Continue => TokenStream::new(),
                    LeafKind::Return => return None,
                };
                Some(quote!(#lets #(#targets = #nexts;)* #exit))
            }
            Tail::Branch(br) => {
                let has_value = value.is_some();
                let expr = self.branching(br, false, &mut |t, l| {
                    let (lets, nexts, broken) = hand_on(t, l)?;
                    let flag = match (l.kind, has_value) {
                        (LeafKind::Break, true) => quote!(::core::option::Option::Some(#broken)),
                        (LeafKind::Break, false) => quote!(true),
                        (_, true) => quote!(::core::option::Option::None),
                        (_, false) => quote!(false),
                    };
                    Some(quote!(#lets (#(#nexts,)* #flag,)))
                });
                expr.map(|expr| {
                    let temps: Vec<Ident> = (0..targets.len())
                        .map(|k| format_ident!("__next{}", k))
                        .collect();
                    let exit = if has_value {
                        quote!(if let ::core::option::Option::Some(__v) = __broken {
                            break __v;
                        })
                    } else {
                        quote!(if __broken {
                            break;
                        })
                    };
                    quote! {
                        let (#(#temps,)* __broken,) = #expr;
                        #(#targets = #temps;)*
                        #exit
                    }
                })
            }
        };
        self.in_loop_tail = was;
        body.extend(end?);
        let head = match &lp.kind {
            LoopKind::For { pat, iter, .. } => quote!(for #pat in #iter),
            LoopKind::Loop => quote!(loop),
        };
        match value {
            Some((v, varied)) => {
                let name = self.f.name(v);
                if varied {
                    let d = dot_name(name);
                    out.extend(quote!(let (#name, #d) = #head { #body };));
                    self.has_dot.insert(v);
                } else {
                    out.extend(quote!(let #name = #head { #body };));
                }
            }
            None => out.extend(quote!(#head { #body })),
        }
        for ((c, (cn, dn)), varies) in lp.carries.iter().zip(&names).zip(&varies) {
            let o = self.f.name(c.out);
            out.extend(quote!(let #o = #cn;));
            if *varies {
                let d = dot_name(o);
                out.extend(quote!(let #d = #dn;));
                self.has_dot.insert(c.out);
            }
        }
        Some(out)
    }

    /// `a`'s value (or with `tangent` its tangent) as a copy that leaves `a` usable:
    /// a float scalar or a reference as is, an array cloned.
    fn copied(&self, a: &Atom, tangent: bool) -> TokenStream {
        let Some(v) = a.var() else {
            return self.atom(a);
        };
        let name = if tangent {
            dot_name(self.f.name(v))
        } else {
            self.f.name(v).clone()
        };
        let by_copy = self.scalar[v.0 as usize]
            || if tangent {
                self.tangent_refs.contains(&v)
            } else {
                self.refs.contains(&v)
            };
        if by_copy {
            quote!(#name)
        } else {
            quote!(#name.clone())
        }
    }

    /// A block's tail: its leaf as `leaf` writes it, or its branch. Leaves that leave
    /// the block otherwise (`break`, `continue`; `return` unless the block is the
    /// function's, `output`) are not covered.
    fn tail(
        &mut self,
        tail: &Tail,
        output: bool,
        leaf: &mut dyn FnMut(&mut Self, &Leaf) -> Option<TokenStream>,
    ) -> Option<TokenStream> {
        match tail {
            Tail::Leaf(l) if l.kind == LeafKind::Fallthrough => leaf(self, l),
            Tail::Leaf(l) if output && l.kind == LeafKind::Return => leaf(self, l),
            Tail::Leaf(l)
                if self.in_loop_tail && matches!(l.kind, LeafKind::Break | LeafKind::Continue) =>
            {
                leaf(self, l)
            }
            Tail::Leaf(_) => None,
            Tail::Branch(br) => self.branching(br, output, leaf),
        }
    }

    /// `if` or `match` with each arm's statements and tangents, ending as `leaf` says.
    fn branching(
        &mut self,
        br: &Branching,
        output: bool,
        leaf: &mut dyn FnMut(&mut Self, &Leaf) -> Option<TokenStream>,
    ) -> Option<TokenStream> {
        let mut arms = Vec::new();
        for arm in &br.arms {
            let stmts = self.stmts(&arm.stmts)?;
            let end = self.tail(&arm.tail, output, leaf)?;
            arms.push(quote!({ #stmts #end }));
        }
        Some(match &br.kind {
            BranchKind::If { cond } => {
                let (a, b) = (&arms[0], &arms[1]);
                quote!(if #cond #a else #b)
            }
            BranchKind::Match {
                scrutinee, pats, ..
            } => quote!(match #scrutinee { #(#pats => #arms)* }),
        })
    }

    /// The output (a value or a tuple of them), or its tangent: owned, and where
    /// nothing varies a zero cotangent-typed constant (`()` for an integer).
    fn output(&self, v: &Val, tangent: bool) -> TokenStream {
        match v {
            Val::Tuple(vs) => {
                let items = vs.iter().map(|v| self.output(v, tangent));
                quote!((#(#items,)*))
            }
            Val::Atom(a) if !tangent => self.atom(a),
            Val::Atom(a) => match a.var().filter(|v| self.has_dot.contains(v)) {
                Some(v) if self.tangent_refs.contains(&v) => {
                    let d = dot_name(self.f.name(v));
                    quote!(#d.to_owned())
                }
                Some(v) => dot_name(self.f.name(v)).to_token_stream(),
                None => {
                    let x = self.r(a);
                    quote!(::adjoint::no_grad(::adjoint::__private::zeros(&#x)))
                }
            },
        }
    }

    /// The tangent of a call's argument, passed as the argument is (`&dx` for `&x`),
    /// or a zero whose type the callee's parameter picks.
    fn call_tangent(&self, a: &Arg) -> TokenStream {
        let Some(v) = a.atom.var().filter(|v| self.has_dot.contains(v)) else {
            let x = self.atom(&a.atom);
            let zero = quote!(::adjoint::no_grad(::adjoint::__private::zero_tangent(&#x)));
            let by_ref = a.by_ref || a.atom.var().is_some_and(|v| self.refs.contains(&v));
            return if by_ref { quote!(&#zero) } else { zero };
        };
        let d = dot_name(self.f.name(v));
        if a.by_ref {
            quote!(&#d)
        } else if self.tangent_refs.contains(&v) || self.scalar[v.0 as usize] {
            quote!(#d)
        } else if self.refs.contains(&v) {
            quote!(&#d)
        } else {
            quote!(::adjoint::__private::dup(&#d))
        }
    }

    /// A call's argument as the user passed it (`&x` or `x`).
    fn arg(&self, a: &Arg) -> TokenStream {
        let x = self.atom(&a.atom);
        if a.by_ref { quote!(&#x) } else { x }
    }

    /// The primal operation as the user would write it, on references.
    fn native(&self, native: &Native, operands: &[Arg], consts: &[Atom]) -> Option<TokenStream> {
        let cs: Vec<TokenStream> = consts.iter().map(|c| self.atom(c)).collect();
        Some(match native {
            Native::Binary(op) => {
                let (a, b) = (self.r(&operands[0].atom), self.r(&operands[1].atom));
                quote!((#a #op #b))
            }
            Native::Neg => {
                let a = self.r(&operands[0].atom);
                quote!((-#a))
            }
            Native::Square => {
                let a = self.r(&operands[0].atom);
                quote!((#a * #a))
            }
            Native::Method { name, suffix } => {
                let recv = self.atom(&operands[0].atom);
                let args = operands[1..].iter().map(|a| self.r(&a.atom)).chain(cs);
                quote!(#recv.#name(#(#args),*) #suffix)
            }
            Native::Index => {
                let (a, i) = (self.atom(&operands[0].atom), &cs[0]);
                quote!(#a[#i])
            }
            // A rule's operands by reference, whatever they hold (ids are integers).
            Native::Function(path) => {
                let ops = operands.iter().map(|a| match &a.atom {
                    Atom::Var(v) if self.refs.contains(v) => self.atom(&a.atom),
                    other => {
                        let x = self.atom(other);
                        quote!(&#x)
                    }
                });
                quote!(#path(#(#ops,)* #(#cs),*))
            }
            Native::Tuple => {
                let items = operands.iter().map(|a| self.atom(&a.atom));
                quote!((#(#items,)*))
            }
            Native::Cast(t) => {
                let a = self.atom(&operands[0].atom);
                quote!((#a as #t))
            }
            Native::Variadic(_) | Native::Rule => return None,
        })
    }

    /// The tangent of `y = func(operands, consts)`.
    fn template(
        &self,
        func: &str,
        y: &Ident,
        scalar: bool,
        operands: &[Arg],
        consts: &[Atom],
    ) -> Option<TokenStream> {
        let a = &operands[0].atom;
        let ar = self.r(a);
        // A method's receiver is written bare: auto-referencing takes care of it.
        let an = self.atom(a);
        let da = self.dot(a);
        let y_name = y.clone();
        // A scalar by value (its type may be a type parameter, which has no arithmetic
        // on references), an array by reference.
        let yv = if scalar { quote!(#y) } else { quote!(&#y) };
        let y = quote!(&#y);
        let cs: Vec<TokenStream> = consts.iter().map(|c| self.atom(c)).collect();
        let unary = |deriv: TokenStream| {
            da.as_ref().map(|d| {
                if scalar {
                    quote!((#d * (#deriv)))
                } else {
                    quote!((#d * &(#deriv)))
                }
            })
        };
        // Constants in the element type of the result, which may be a type parameter
        // (a bare `2.0` is `f64`); `no_grad` keeps them constants when this is lowered
        // again.
        let one = quote!(::adjoint::no_grad(::adjoint::__private::lit(#y, 1.0)));
        let two = quote!(::adjoint::no_grad(::adjoint::__private::lit(#y, 2.0)));
        match func {
            "add" | "sub" => {
                let b = &operands[1].atom;
                let (dao, dbo) = (self.dot_or_zero(a), self.dot_or_zero(b));
                Some(if func == "add" {
                    quote!((#dao + #dbo))
                } else {
                    quote!((#dao - #dbo))
                })
            }
            "mul" => {
                let b = &operands[1].atom;
                let br = self.r(b);
                let terms: Vec<TokenStream> = [
                    da.as_ref().map(|d| quote!((#d * #br))),
                    self.dot(b).map(|d| quote!((#ar * #d))),
                ]
                .into_iter()
                .flatten()
                .collect();
                Some(quote!((#(#terms)+*)))
            }
            "div" => {
                let b = &operands[1].atom;
                let br = self.r(b);
                let num = match (da.as_ref(), self.dot(b)) {
                    (Some(d), Some(e)) => quote!(&(#d - &(#yv * #e))),
                    (Some(d), None) => quote!(#d),
                    (None, Some(e)) => quote!(&(-(#yv * #e))),
                    (None, None) => return None,
                };
                Some(quote!((#num / #br)))
            }
            // Piecewise linear: each tangent weighted by the rule's own pullback at a
            // unit cotangent (one, zero, or a half at a tie), constant where defined.
            "max" | "min" => {
                let b = &operands[1].atom;
                let bn = self.atom(b);
                let (lhs, rhs) = (format_ident!("{}_pb_lhs", func), format_ident!("{}_pb_rhs", func));
                let weight = |pb: &Ident| {
                    quote!(::adjoint::no_grad(::adjoint::__private::#pb(&#an, &#bn, #one)))
                };
                let terms: Vec<TokenStream> = [
                    da.as_ref().map(|d| {
                        let w = weight(&lhs);
                        quote!((#d * #w))
                    }),
                    self.dot(b).map(|d| {
                        let w = weight(&rhs);
                        quote!((#d * #w))
                    }),
                ]
                .into_iter()
                .flatten()
                .collect();
                (!terms.is_empty()).then(|| quote!((#(#terms)+*)))
            }
            // The bounds are constants (as in reverse mode).
            "clamp" => da.map(|d| {
                let (lo, hi) = (self.atom(&operands[1].atom), self.atom(&operands[2].atom));
                quote!((#d * ::adjoint::no_grad(::adjoint::__private::clamp_pb(&#an, &#lo, &#hi, #one))))
            }),
            // `a.atan2(b)`: (b da - a db) / (a² + b²).
            "atan2" => {
                let b = &operands[1].atom;
                let bn = self.atom(b);
                let num = match (da.as_ref(), self.dot(b)) {
                    (Some(d), Some(e)) => quote!((#d * #bn - #an * #e)),
                    (Some(d), None) => quote!((#d * #bn)),
                    (None, Some(e)) => quote!((-(#an * #e))),
                    (None, None) => return None,
                };
                Some(quote!((#num / (#an * #an + #bn * #bn))))
            }
            // `a.hypot(b)`: (a da + b db) / y.
            "hypot" => {
                let b = &operands[1].atom;
                let bn = self.atom(b);
                let terms: Vec<TokenStream> = [
                    da.as_ref().map(|d| quote!((#an * #d))),
                    self.dot(b).map(|e| quote!((#bn * #e))),
                ]
                .into_iter()
                .flatten()
                .collect();
                (!terms.is_empty()).then(|| quote!(((#(#terms)+*) / #y_name)))
            }
            // `a.mul_add(b, c)` = a b + c.
            "mul_add" => {
                let (b, c) = (&operands[1].atom, &operands[2].atom);
                let bn = self.atom(b);
                let terms: Vec<TokenStream> = [
                    da.as_ref().map(|d| quote!((#d * #bn))),
                    self.dot(b).map(|e| quote!((#an * #e))),
                    self.dot(c),
                ]
                .into_iter()
                .flatten()
                .collect();
                (!terms.is_empty()).then(|| quote!((#(#terms)+*)))
            }
            // `x.powf(p)`: p x^(p-1) dx + y ln(x) dp (the exponent a scalar).
            "powf" => {
                let p = &operands[1].atom;
                let pn = self.atom(p);
                let ln = if scalar {
                    quote!((#yv * #an.ln()))
                } else {
                    quote!((#yv * &#an.ln()))
                };
                let terms: Vec<TokenStream> = [
                    unary(quote!(#an.powf(#pn - #one) * #pn)),
                    self.dot(p).map(|e| quote!((#ln * #e))),
                ]
                .into_iter()
                .flatten()
                .collect();
                (!terms.is_empty()).then(|| quote!((#(#terms)+*)))
            }
            "neg" => da.map(|d| quote!((-#d))),
            // Between float types: the tangent converted alike.
            "cast" => da.map(|d| {
                let t = &cs[0];
                quote!((#d as #t))
            }),
            "square" => da.map(|d| quote!((#d * #ar * #two))),
            "exp" => unary(quote!(#y_name)),
            "exp_m1" => unary(quote!(#yv + #one)),
            "ln" => unary(quote!(#an.recip())),
            "ln_1p" => unary(quote!((#ar + #one).recip())),
            "sqrt" => unary(quote!((#yv * #two).recip())),
            "recip" => unary(quote!(-(#yv * #yv))),
            "sin" => unary(quote!(#an.cos())),
            "cos" => unary(quote!(-#an.sin())),
            "tan" => unary(quote!(#yv * #yv + #one)),
            "atan" => unary(quote!((#ar * #ar + #one).recip())),
            "sinh" => unary(quote!(#an.cosh())),
            "cosh" => unary(quote!(#an.sinh())),
            // One fused operation each, with its own pullbacks.
            "tanh" => da.map(|d| quote!(::adjoint::__private::tanh_tangent(#y, &(#d)))),
            "sigmoid" => da.map(|d| quote!(::adjoint::__private::sigmoid_tangent(#y, &(#d)))),
            "powi" => {
                // Only a literal exponent: its float twin is written as a literal too.
                let Some(Atom::Lit(n)) = consts.first() else {
                    return None;
                };
                let n: i64 = syn::parse2::<syn::LitInt>(n.clone())
                    .ok()?
                    .base10_parse()
                    .ok()?;
                let (m, nf) = (
                    (n - 1) as i32,
                    syn::LitFloat::new(&format!("{n}.0"), proc_macro2::Span::call_site()),
                );
                let nf = quote!(::adjoint::no_grad(::adjoint::__private::lit(#y, #nf)));
                unary(quote!(#an.powi(#m) * #nf))
            }
            "sum" => da.map(|d| quote!((#d).sum())),
            "mean" => da.map(|d| quote!((#d).mean().unwrap())),
            "sum_axis" => da.map(|d| {
                let ax = &cs[0];
                quote!((#d).sum_axis(#ax))
            }),
            "t" => da.map(|d| quote!((#d).t())),
            // Views and means along an axis are linear: the same operation on the
            // tangent (a view borrows the tangent variable, as the primal's does).
            "row" | "column" | "index_axis" | "slice" => self.dot_ref(a).map(|d| {
                let m = Ident::new(func, proc_macro2::Span::call_site());
                quote!((#d).#m(#(#cs),*))
            }),
            // `insert_axis` takes its array by value: a view of the tangent.
            "insert_axis" => self
                .dot_ref(a)
                .map(|d| quote!((#d).view().insert_axis(#(#cs),*))),
            "mean_axis" => da.map(|d| {
                let ax = &cs[0];
                quote!((#d).mean_axis(#ax).unwrap())
            }),
            // Ownership and layout conversions carry the tangent the same way.
            "to_owned" | "clone" | "view" | "as_standard_layout" | "to_shared" => da.map(|d| {
                let m = Ident::new(func, proc_macro2::Span::call_site());
                quote!((#d).#m())
            }),
            "index" => da.map(|d| {
                let i = &cs[0];
                quote!((#d)[#i])
            }),
            "dot" => {
                let b = &operands[1].atom;
                let br = self.r(b);
                let terms: Vec<TokenStream> = [
                    da.as_ref().map(|d| quote!((#d).dot(#br))),
                    self.dot(b).map(|e| quote!((#ar).dot(#e))),
                ]
                .into_iter()
                .flatten()
                .collect();
                Some(quote!((#(#terms)+*)))
            }
            // Bilinear: the rule once per active operand.
            "conv" | "dot_last" | "batch_matmul" => {
                let (b, f) = (&operands[1].atom, format_ident!("{}", func));
                let br = self.r(b);
                let terms: Vec<TokenStream> = [
                    da.as_ref()
                        .map(|d| quote!(::adjoint::__private::#f(&(#d), #br #(, #cs)*))),
                    self.dot(b)
                        .map(|e| quote!(::adjoint::__private::#f(#ar, &(#e) #(, #cs)*))),
                ]
                .into_iter()
                .flatten()
                .collect();
                Some(quote!((#(#terms)+*)))
            }
            // The tangent reshaped to the result's shape.
            "reshape" | "into_shape" => self.dot_ref(a).map(|d| {
                let f = format_ident!("{}", func);
                quote!(::adjoint::__private::#f(#d, #y_name.raw_dim()))
            }),
            // Linear in the table; the ids are constant.
            "take" => da.map(|d| {
                let ids = self.atom(&operands[1].atom);
                quote!(::adjoint::__private::take(&(#d), &#ids))
            }),
            // Along an axis: rules of their own, differentiated again by second order.
            "softmax" | "log_softmax" => da.map(|d| {
                let (f, axis) = (format_ident!("{}_tangent", func), &cs[0]);
                quote!(::adjoint::__private::#f(#y, &(#d), #axis))
            }),
            "logsumexp" => da.map(|d| {
                let axis = &cs[0];
                quote!((::adjoint::__private::softmax(#ar, #axis) * &(#d)).sum_axis(#axis))
            }),
            // Linear in both: the tangents put alike (a zero for a constant one).
            "put_index_axis" => {
                let (dx, dy) = (self.dot_or_zero(a), self.dot_or_zero(&operands[1].atom));
                let (axis, i) = (&cs[0], &cs[1]);
                Some(quote!(::adjoint::__private::put_index_axis(#dx, #dy, #axis, #i)))
            }
            // A copy of the tangent, of its own type (as the primal's).
            "dup" => a.var().filter(|v| self.has_dot.contains(v)).map(|v| {
                let dn = dot_name(self.f.name(v));
                quote!(::adjoint::__private::dup(&#dn))
            }),
            "tuple" => {
                let items = operands.iter().map(|o| {
                    let d = self.dot_or_zero(&o.atom);
                    quote!(::adjoint::__private::own(&#d))
                });
                Some(quote!((#(#items,)*)))
            }
            // A tuple's tangent is the tuple of its fields' tangents.
            "field" => self.dot_ref(a).map(|d| {
                let at = &cs[0];
                quote!(::adjoint::__private::field(#d, #at))
            }),
            "permuted_axes" => self.dot_ref(a).map(|d| {
                let axes = &cs[0];
                quote!(::adjoint::__private::permuted_axes(#d, &#axes))
            }),
            // Linear in `x`; the mask is constant and the fill's tangent zero.
            "where_" => self.dot(&operands[1].atom).map(|d| {
                let (mask, fill) = (self.atom(&operands[0].atom), &cs[0]);
                quote!(::adjoint::__private::where_(&#mask, &(#d), #fill - #fill))
            }),
            "avg_pool" => da.map(|d| quote!(::adjoint::__private::avg_pool(&(#d) #(, #cs)*))),
            "max_pool" | "min_pool" => da.map(|d| {
                let f = format_ident!("{}_tangent", func);
                quote!(::adjoint::__private::#f(#ar, &(#d) #(, #cs)*))
            }),
            // An activation: the tangent times its derivative rule (`gelu_d1`).
            _ => {
                let d1 = Ident::new(
                    ops::activation_derivative(func)?,
                    proc_macro2::Span::call_site(),
                );
                unary(quote!(::adjoint::__private::#d1(&#an #(, #cs)*)))
            }
        }
    }
}
