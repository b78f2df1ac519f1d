//! Lowering of the lifted transforms inside a module (`grad!`, `value_and_grad!`,
//! `jvp!`, `vjp!` and a call of its pullback, `jacfwd!`/`jacrev!`, `vmap!`): a
//! `Stmt::LetLifted` that the later stages differentiate again when the closure is
//! `|mdl, cx, x..| mdl.call(cx, x..)`, an opaque op otherwise.

use super::*;
use crate::parse::transform::{ChildCall, TransformInput, child_call, names_option};
use crate::parse::vmap::VmapInput;

impl Lowerer<'_> {
    /// A lifted transform inside a module: a statement second order goes through
    /// where its form allows (see each), else an opaque op (see [`Op::Lifted`]).
    pub(super) fn lifted(&mut self, out: &mut Stmts, e: &Expr, m: &syn::ExprMacro) -> Val {
        let path = &m.mac.path;
        let covered = if path.is_ident("grad") || path.is_ident("value_and_grad") {
            self.lifted_grad(out, e, m)
        } else if path.is_ident("jvp") {
            self.lifted_jvp(out, e, m)
        } else if path.is_ident("vjp") {
            self.lifted_vjp(out, e, m)
        } else if path.is_ident("jacfwd") || path.is_ident("jacrev") {
            self.lifted_jacobian(out, e, m)
        } else if path.is_ident("vmap") {
            self.lifted_vmap(out, e, m)
        } else {
            None
        };
        covered.unwrap_or_else(|| Val::Atom(self.opaque_lifted(out, e.to_token_stream(), e.span())))
    }

    /// `grad!(cx, |mdl, cx, a..| mdl.call(cx, a..), Child, args..)` (or
    /// `value_and_grad!`) with a constant child: a statement that can be differentiated
    /// again. Other forms stay opaque.
    fn lifted_grad(&mut self, out: &mut Stmts, e: &Expr, m: &syn::ExprMacro) -> Option<Val> {
        let mut input: TransformInput = m.mac.parse_body().ok()?;
        // `has_aux` is covered: the aux is one more output of the child's forward mode.
        let has_aux = std::mem::take(&mut input.has_aux);
        let n = input.positional.len().checked_sub(3)?;
        let child = self.lifted_child(out, &mut input, n).filter(|c| !c.jvp)?;
        let args = self.operands(out, &input.positional[3..]);
        let value = m
            .mac
            .path
            .is_ident("value_and_grad")
            .then(|| self.temp(e.span()));
        let aux = has_aux.then(|| self.temp(e.span()));
        let dsts = self.push_lifted(out, e, child, LiftedKind::Grad { value, aux }, n, args);
        let var = |v: Var| Val::Atom(Atom::Var(v));
        let grads = Val::Tuple(dsts.into_iter().map(var).collect());
        // grad!: `grads` or `(grads, aux)`; value_and_grad!: `(value, grads)` or
        // `((value, aux), grads)`.
        Some(match (value, aux) {
            (None, None) => grads,
            (None, Some(a)) => Val::Tuple(vec![grads, var(a)]),
            (Some(v), None) => Val::Tuple(vec![var(v), grads]),
            (Some(v), Some(a)) => Val::Tuple(vec![Val::Tuple(vec![var(v), var(a)]), grads]),
        })
    }

    /// `jvp!(cx, |mdl, cx, a..| mdl.call(cx, a..), Child, (x..), (tx..), var_tangents)`:
    /// `(y, ty)`, a statement that can be differentiated again (reverse over the
    /// child's forward mode) while `var_tangents` holds no nonzero tangent (checked
    /// when it runs). Other forms stay opaque.
    fn lifted_jvp(&mut self, out: &mut Stmts, e: &Expr, m: &syn::ExprMacro) -> Option<Val> {
        let mut input: TransformInput = m.mac.parse_body().ok()?;
        if input.positional.len() != 6 {
            return None;
        }
        let elems = |e: &Expr| match e {
            Expr::Tuple(t) => Some(t.elems.iter().cloned().collect::<Vec<Expr>>()),
            Expr::Paren(p) => Some(vec![(*p.expr).clone()]),
            _ => None,
        };
        let (primals, tangents) = (elems(&input.positional[3])?, elems(&input.positional[4])?);
        let n = primals.len();
        if tangents.len() != n {
            return None;
        }
        let var_tangents = self.verbatim(input.positional[5].to_token_stream());
        let child = self.lifted_child(out, &mut input, n).filter(|c| !c.jvp)?;
        let mut args = self.operands(out, &primals);
        args.extend(self.operands(out, &tangents));
        let dsts = self.push_lifted(out, e, child, LiftedKind::Jvp { var_tangents }, 2, args);
        Some(vars(dsts))
    }

    /// `vjp!(cx, |mdl, cx, a..| mdl.call(cx, a..), Child, args..)` (`vjp_variables`
    /// and `has_aux` allowed), or of a closure that is more than that: `(y, pb)` or
    /// `(y, pb, aux)`, the output and the aux differentiated through the child (its
    /// reverse mode, or the closure's, run again), calls of the pullback statements
    /// of their own (see [`LiftedKind::Pull`]; second order through a closure's is
    /// reported). With `reduce_axes` it stays opaque.
    fn lifted_vjp(&mut self, out: &mut Stmts, e: &Expr, m: &syn::ExprMacro) -> Option<Val> {
        let mut input: TransformInput = m.mac.parse_body().ok()?;
        // Which variables' cotangents the pullback returns does not change `y`.
        input.vjp_variables = None;
        // The aux is one more output of the child's reverse and forward modes.
        let aux = std::mem::take(&mut input.has_aux).then(|| self.temp(e.span()));
        let n = input.positional.len().checked_sub(3)?;
        let child = self.lifted_child(out, &mut input, n).filter(|c| !c.jvp)?;
        let args = self.operands(out, &input.positional[3..]);
        let reads: Vec<Atom> = args.iter().map(|a| a.atom.clone()).collect();
        let dsts = self.push_lifted(out, e, child, LiftedKind::Vjp { aux }, 2, args);
        // A call of the pullback reads what the transform read.
        self.lifted.insert(dsts[1], reads);
        if let Some(Stmt::LetLifted(l)) = out.last() {
            self.vjps.insert(dsts[1], l.clone());
        }
        let mut outs = dsts;
        outs.extend(aux);
        Some(vars(outs))
    }

    /// `jacfwd!(cx, |mdl, cx, a..| mdl.call(cx, a..), Child, args..)` or `jacrev!`:
    /// the Jacobian in the first primal, a statement that can be differentiated again
    /// (one JVP-VJP of the child per input element). Other forms stay opaque.
    fn lifted_jacobian(&mut self, out: &mut Stmts, e: &Expr, m: &syn::ExprMacro) -> Option<Val> {
        let mut input: TransformInput = m.mac.parse_body().ok()?;
        let n = input.positional.len().checked_sub(3)?;
        let child = self.lifted_child(out, &mut input, n).filter(|c| !c.jvp)?;
        let args = self.operands(out, &input.positional[3..]);
        let dsts = self.push_lifted(out, e, child, LiftedKind::Jacobian, 1, args);
        Some(Val::Atom(Atom::Var(dsts[0])))
    }

    /// `vmap!(cx, |mdl, cx, a..| mdl.call(cx, a..), Child, args.., in_axes = [..])`
    /// (`axis_name` allowed), or of a closure that is more than that: the batched
    /// output, differentiated through the child (its reverse mode, or the closure's,
    /// run again per example). Other forms stay opaque.
    fn lifted_vmap(&mut self, out: &mut Stmts, e: &Expr, m: &syn::ExprMacro) -> Option<Val> {
        let vmap: VmapInput = m.mac.parse_body().ok()?;
        let n = vmap.positional.len().checked_sub(3)?;
        if vmap.in_axes.len() != n {
            return None;
        }
        let mut input = TransformInput::positional(vmap.positional);
        // Forward mode's JVP of a `vmap!` maps the child's JVP: the output and its
        // tangent. A closure that is more than `mdl.call(cx, a..)` has its own reverse
        // mode run per example.
        let child = self.lifted_child(out, &mut input, n)?;
        let jvp = child.jvp;
        let args = self.operands(out, &input.positional[3..]);
        let kind = LiftedKind::Vmap {
            in_axes: vmap.in_axes,
            axis_name: vmap.axis_name,
            jvp,
        };
        let dsts = self.push_lifted(out, e, child, kind, 1 + usize::from(jvp), args);
        Some(if jvp {
            vars(dsts)
        } else {
            Val::Atom(Atom::Var(dsts[0]))
        })
    }

    /// The operands of a lifted transform's primals (or tangents).
    fn operands(&mut self, out: &mut Stmts, exprs: &[Expr]) -> Vec<Arg> {
        exprs.iter().map(|a| self.operand(out, a)).collect()
    }

    /// Pushes the lifted transform `e` over `child` as a statement of `kind` with `n`
    /// results, and returns them.
    fn push_lifted(
        &mut self,
        out: &mut Stmts,
        e: &Expr,
        child: LiftedChild,
        kind: LiftedKind,
        n: usize,
        args: Vec<Arg>,
    ) -> Vec<Var> {
        let dsts: Vec<Var> = (0..n).map(|_| self.temp(e.span())).collect();
        let tokens = self.verbatim(e.to_token_stream());
        out.push(Stmt::LetLifted(Lifted {
            kind,
            dsts: dsts.clone(),
            tokens,
            module: child.module,
            keep: child.keep,
            scope: child.scope,
            args,
            visible: child.visible,
            rngs: child.rngs,
            restricted: child.restricted,
            closure: child.closure.map(|(closure, captured)| {
                Box::new(Rerun {
                    closure,
                    captured,
                    passed: Vec::new(),
                    code: None,
                    forward: None,
                })
            }),
        }));
        dsts
    }

    /// An opaque lifted computation written as `tokens` (see [`Op::Lifted`]): what it
    /// reads, a value made by another such op standing for what that one reads.
    pub(super) fn opaque_lifted(
        &mut self,
        out: &mut Stmts,
        tokens: TokenStream,
        span: Span,
    ) -> Atom {
        let mut reads = Vec::new();
        for v in self.mentioned_vars(tokens.clone()) {
            match self.lifted.get(&v).cloned() {
                Some(inner) => reads.extend(inner),
                None => reads.push(Atom::Var(v)),
            }
        }
        let tokens = self.verbatim(tokens);
        self.emit(out, Op::Lifted { tokens, reads }, span)
    }

    /// What a lifted transform over `n` primals must be for a derivative to go through
    /// it: the closure exactly `|mdl, cx, a..| mdl.call(cx, a..)` (or the child's JVP
    /// forward mode writes for a `vmap!`, `jvp`: see [`child_call`]), or a closure
    /// `|mdl, cx, a..| body` whose rerun can run it (see [`Self::closure_captures`]);
    /// the module an expression of constants or a local bound module (`let learner
    /// = Learner;`), no options but `variables` and `rngs` (taken: the rerun
    /// restricts alike).
    fn lifted_child(
        &mut self,
        out: &mut Stmts,
        input: &mut TransformInput,
        n: usize,
    ) -> Option<LiftedChild> {
        let restricted = input.variables.is_some() || input.rngs.is_some();
        let (visible, rngs) = (
            names_option(&std::mem::take(&mut input.variables)),
            names_option(&std::mem::take(&mut input.rngs)),
        );
        let items = &input.positional;
        if items.len() < 3 || !input.plain() {
            return None;
        }
        let Expr::Closure(c) = &items[1] else {
            return None;
        };
        let form = match child_call(c) {
            Some((form, primals)) if primals == n => Some(form),
            Some(_) => return None,
            None => None,
        };
        let local = self.mentions_local(items[2].to_token_stream());
        let bound = matches!(&items[2], Expr::Path(p) if p.path.get_ident().is_some());
        if local && !bound {
            return None;
        }
        let Expr::Path(sp) = &items[0] else {
            return None;
        };
        let scope = match self.lookup(&sp.path.get_ident()?.to_string())? {
            Val::Atom(a) => a,
            Val::Tuple(_) => return None,
        };
        let (form, closure) = match form {
            Some(form) => (form, None),
            None => (ChildCall::Call, Some(self.closure_captures(out, c, n)?)),
        };
        let module = if local {
            self.verbatim(items[2].to_token_stream())
        } else {
            items[2].to_token_stream()
        };
        let keep = local || mentions_self(&module);
        Some(LiftedChild {
            jvp: form == ChildCall::Jvp,
            module,
            keep,
            scope,
            visible,
            rngs,
            restricted,
            closure,
        })
    }

    /// `c` as its rerun runs it, if it is `|mdl, cx, a..|` with `n` primals (at least
    /// one), its parameters plain names, and its body reads of `self` only fields
    /// (copied into constants here, in `out`) and of the enclosing code only
    /// variables holding one value (`c` of `(mdl.call(cx, x) - &c)`): those it reads
    /// are named as lowering names them, and listed (see [`Rerun::captured`]).
    fn closure_captures(
        &mut self,
        out: &mut Stmts,
        c: &syn::ExprClosure,
        n: usize,
    ) -> Option<(syn::ExprClosure, Vec<Var>)> {
        let mut params = Vec::new();
        for p in &c.inputs {
            match p {
                syn::Pat::Ident(i) => params.push(i.ident.to_string()),
                syn::Pat::Type(t) => match &*t.pat {
                    syn::Pat::Ident(i) => params.push(i.ident.to_string()),
                    _ => return None,
                },
                _ => return None,
            }
        }
        // A lifted transform inside (per-example gradients in a `vmap!`) stays opaque:
        // its rerun would differentiate a transform of a transform.
        if n == 0 || params.len() != n + 2 || has_lifted_transform(&c.body.to_token_stream()) {
            return None;
        }
        // The fields of `self` it reads (`self.scale`) are copied where the transform
        // is, into constants the rerun reads by their names (it runs where `self` is
        // not the module's); any other use of `self` stays opaque.
        let mut fields = SelfFields {
            scope: &params[1],
            read: Vec::new(),
            other: false,
        };
        let mut body = (*c.body).clone();
        syn::visit_mut::VisitMut::visit_expr_mut(&mut fields, &mut body);
        if fields.other {
            return None;
        }
        let (mut captured, mut literals) = (Vec::new(), Vec::new());
        let mut copies = HashMap::new();
        for member in fields.read {
            let copy: Expr = syn::parse_quote!(::core::clone::Clone::clone(&self.#member));
            let Atom::Var(v) = self.constant(out, &copy) else {
                return None;
            };
            copies.insert(
                self_field_name(&member),
                self.vars[v.0 as usize].name.to_string(),
            );
            captured.push(v);
        }
        let body = crate::hygiene::rename(body.to_token_stream(), &copies);
        let read = crate::hygiene::idents(&body);
        let mut renames = HashMap::new();
        for r in read {
            if params.contains(&r) || !self.is_local(&r) {
                continue;
            }
            match self.lookup(&r) {
                Some(Val::Atom(Atom::Var(v))) => {
                    if !captured.contains(&v) {
                        captured.push(v);
                    }
                    let lowered = self.vars[v.0 as usize].name.to_string();
                    if lowered != r {
                        renames.insert(r, lowered);
                    }
                }
                // A local lowering wrote as its literal (`let k = 0.5;`): bound again.
                Some(Val::Atom(Atom::Lit(t))) => {
                    let name = syn::Ident::new(&r, Span::call_site());
                    if !literals.iter().any(|(n, _)| n == &name) {
                        literals.push((name, t));
                    }
                }
                _ => return None,
            }
        }
        // (In the order of the variables and names, not of a set's iteration: the
        // expansion must not vary between builds.)
        captured.sort_by_key(|v| v.0);
        literals.sort_by_key(|(n, _)| n.to_string());
        let body = crate::hygiene::rename(body, &renames);
        let (names, values): (Vec<_>, Vec<_>) = literals.into_iter().unzip();
        let mut closure = c.clone();
        closure.body = Box::new(syn::parse2(quote!({ #(let #names = #values;)* #body })).ok()?);
        Some((closure, captured))
    }
}

/// Replaces each `self.member` a closure body reads by a name of its own
/// (`__self_member`), listing the members; notes any other use of `self` (a method
/// of `self`, `self` passed on, a field called as a module with the scope).
struct SelfFields<'a> {
    scope: &'a str,
    read: Vec<syn::Member>,
    other: bool,
}

/// The name [`SelfFields`] gives `self.member`.
fn self_field_name(member: &syn::Member) -> String {
    match member {
        syn::Member::Named(id) => format!("__self_{id}"),
        syn::Member::Unnamed(i) => format!("__self_{}", i.index),
    }
}

fn is_self(e: &Expr) -> bool {
    matches!(e, Expr::Path(p) if p.path.is_ident("self"))
}

impl syn::visit_mut::VisitMut for SelfFields<'_> {
    fn visit_expr_mut(&mut self, e: &mut Expr) {
        match e {
            Expr::Field(f) if is_self(&f.base) => {
                if !self.read.contains(&f.member) {
                    self.read.push(f.member.clone());
                }
                let name = syn::Ident::new(&self_field_name(&f.member), f.member.span());
                *e = syn::parse_quote!(#name);
            }
            // A field called as a module (`self.net.call(cx, x)`) is a child, not a
            // value.
            Expr::MethodCall(m)
                if matches!(&*m.receiver, Expr::Field(f) if is_self(&f.base))
                    && matches!(m.args.first(), Some(Expr::Path(p)) if p.path.is_ident(self.scope)) =>
            {
                self.other = true;
            }
            _ if is_self(e) => self.other = true,
            _ => syn::visit_mut::visit_expr_mut(self, e),
        }
    }

    fn visit_macro_mut(&mut self, m: &mut syn::Macro) {
        // Tokens of a macro are not expressions to rewrite: `self` in them is opaque.
        if crate::hygiene::idents(&m.tokens)
            .iter()
            .any(|i| i == "self")
        {
            self.other = true;
        }
    }
}

/// Whether `t` invokes a lifted transform (`vjp!(..)`, `grad!(..)`, ..).
fn has_lifted_transform(t: &TokenStream) -> bool {
    let trees: Vec<proc_macro2::TokenTree> = t.clone().into_iter().collect();
    trees.iter().enumerate().any(|(i, tt)| match tt {
        proc_macro2::TokenTree::Ident(id) => {
            crate::parse::transform::LIFTED.iter().any(|n| id == n)
                && matches!(trees.get(i + 1), Some(proc_macro2::TokenTree::Punct(p)) if p.as_char() == '!')
        }
        proc_macro2::TokenTree::Group(g) => has_lifted_transform(&g.stream()),
        _ => false,
    })
}

/// Whether `t` mentions `self`.
fn mentions_self(t: &TokenStream) -> bool {
    t.clone().into_iter().any(|tt| match tt {
        proc_macro2::TokenTree::Ident(i) => i == "self",
        proc_macro2::TokenTree::Group(g) => mentions_self(&g.stream()),
        _ => false,
    })
}

/// The child of a lifted transform that second order can run again.
struct LiftedChild {
    /// The closure calls the child's JVP (forward mode's `vmap!`), not `call`.
    jvp: bool,
    module: TokenStream,
    keep: bool,
    scope: Atom,
    visible: TokenStream,
    rngs: TokenStream,
    restricted: bool,
    /// A closure that is more than `mdl.call(cx, a..)`, and the variables of the
    /// enclosing code it reads (see [`Rerun`]).
    closure: Option<(syn::ExprClosure, Vec<Var>)>,
}

/// Each variable as a value, in a tuple.
pub(super) fn vars(dsts: Vec<Var>) -> Val {
    Val::Tuple(dsts.into_iter().map(|v| Val::Atom(Atom::Var(v))).collect())
}
