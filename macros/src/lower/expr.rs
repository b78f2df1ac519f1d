//! Expressions: operators, literals, macro calls, assignments, and the operands
//! and arguments they name.

use super::*;
use crate::parse::transform::{TransformInput, names_option};
use crate::parse::vmap::VmapInput;

impl Lowerer<'_> {
    pub(super) fn expr(&mut self, out: &mut Stmts, e: &Expr) -> Val {
        let span = e.span();
        match e {
            Expr::Paren(p) => self.expr(out, &p.expr),
            Expr::Group(g) => self.expr(out, &g.expr),
            Expr::Lit(_) => Val::Atom(Atom::Lit(e.to_token_stream())),
            Expr::Path(p) => {
                if let Some(id) = p.path.get_ident()
                    && let Some(v) = self.lookup(&id.to_string())
                {
                    return v;
                }
                Val::Atom(Atom::Lit(e.to_token_stream()))
            }
            Expr::Reference(r) => self.expr(out, &r.expr),
            Expr::Unary(u) => match u.op {
                UnOp::Deref(_) => self.expr(out, &u.expr),
                UnOp::Neg(_) => {
                    if let Expr::Lit(_) = &*u.expr {
                        return Val::Atom(Atom::Lit(e.to_token_stream()));
                    }
                    let x = self.operand(out, &u.expr);
                    Val::Atom(self.prim(out, &ops::NEG, vec![x], vec![], Native::Neg, span))
                }
                _ => Val::Atom(self.constant(out, e)),
            },
            Expr::Binary(b) => self.binary(out, b),
            Expr::Assign(a) => {
                self.assign_to(out, &a.left, &a.right, None);
                Val::Tuple(vec![])
            }
            // `()` is a constant like any literal.
            Expr::Tuple(t) if t.elems.is_empty() => Val::Atom(Atom::Lit(quote!(()))),
            Expr::Tuple(t) => Val::Tuple(t.elems.iter().map(|e| self.expr(out, e)).collect()),
            Expr::Field(f) => {
                let base = match &*f.base {
                    // A module's field (a hyperparameter): a copy, so nothing borrows `self`.
                    Expr::Path(p) if p.path.is_ident("self") => {
                        return Val::Atom(self.emit(
                            out,
                            Op::Const(quote!(::core::clone::Clone::clone(&#e))),
                            e.span(),
                        ));
                    }
                    other => self.expr(out, other),
                };
                match (&f.member, base) {
                    (syn::Member::Unnamed(i), Val::Tuple(vs)) if (i.index as usize) < vs.len() => {
                        vs[i.index as usize].clone()
                    }
                    (_, Val::Atom(Atom::Lit(_))) => Val::Atom(self.constant(out, e)),
                    // A tuple's field: a rule, differentiated.
                    (syn::Member::Unnamed(i), Val::Atom(Atom::Var(v))) => {
                        Val::Atom(self.tuple_field(out, v, i.index as usize, e.span()))
                    }
                    // A field of a local: constant, unless the local is differentiated
                    // (then an error: see `Built::Field`).
                    (member, Val::Atom(Atom::Var(v))) => {
                        let base = self.val_tokens(&Val::Atom(Atom::Var(v)));
                        let op = Op::Build {
                            tokens: quote!(#base.#member),
                            reads: vec![v],
                            what: Built::Field,
                        };
                        Val::Atom(self.emit(out, op, e.span()))
                    }
                    _ => {
                        if self.mentions_local(f.base.to_token_stream()) {
                            self.cx.error_at(f, "field access on a differentiated value is not supported; take tuples apart with `let (a, b) = ..`");
                        }
                        Val::Atom(self.constant(out, e))
                    }
                }
            }
            Expr::Block(b) => {
                if b.label.is_some() {
                    self.cx.error_at(
                        b,
                        "labelled blocks are not supported in a #[differentiable] body",
                    );
                }
                self.inline_block(out, &b.block.stmts)
            }
            Expr::Unsafe(u) => {
                self.cx.error_at(u, "`unsafe` blocks cannot be differentiated; move the unsafe code into a function with a #[custom_vjp] rule");
                poison()
            }
            Expr::If(i) => self.branch_stmt(out, e, Some(i), None),
            Expr::Match(m) => self.branch_stmt(out, e, None, Some(m)),
            Expr::ForLoop(_) | Expr::While(_) | Expr::Loop(_) => self.loop_stmt(out, e),
            Expr::MethodCall(m) => self.method_call(out, m),
            Expr::Call(c) => self.call(out, c),
            Expr::Index(ix) => {
                if !self.mentions_local(ix.expr.to_token_stream()) {
                    return Val::Atom(self.constant(out, e));
                }
                let base = self.operand(out, &ix.expr);
                // Integer literals index with `usize`, as rustc infers them in `x[1]`
                // (the rule's index type is generic).
                let idx = match usize_literals(&ix.index) {
                    Some(t) => Atom::Lit(t),
                    None => self.const_atom(out, &ix.index),
                };
                Val::Atom(self.prim(out, &ops::INDEX, vec![base], vec![idx], Native::Index, span))
            }
            Expr::Cast(c) => {
                let ty = c.ty.to_token_stream().to_string();
                if (ty == "f32" || ty == "f64") && self.mentions_local(c.expr.to_token_stream()) {
                    let x = self.operand(out, &c.expr);
                    let t = c.ty.to_token_stream();
                    Val::Atom(self.prim(
                        out,
                        &ops::CAST,
                        vec![x],
                        vec![Atom::Lit(t.clone())],
                        Native::Cast(t),
                        span,
                    ))
                } else {
                    Val::Atom(self.constant(out, e))
                }
            }
            Expr::Closure(c) => {
                self.cx.error_at(c, "closures are only differentiated as the argument of `mapv`; write a #[differentiable] function instead");
                poison()
            }
            Expr::Return(_) | Expr::Break(_) | Expr::Continue(_) => {
                self.cx.error_at(e, "`return`, `break` and `continue` must be statements of their own in a #[differentiable] body");
                poison()
            }
            Expr::Try(t) => {
                self.cx.error_at(
                    t,
                    "the `?` operator is not supported in a #[differentiable] body",
                );
                poison()
            }
            Expr::Macro(m)
                if crate::parse::transform::LIFTED
                    .iter()
                    .any(|n| m.mac.path.is_ident(n))
                    && !self.scopes_vars.is_empty() =>
            {
                if (m.mac.path.is_ident("grad") || m.mac.path.is_ident("value_and_grad"))
                    && let Some(v) = self.lifted_grad(out, e, m)
                {
                    return v;
                }
                if m.mac.path.is_ident("jvp")
                    && let Some(v) = self.lifted_jvp(out, e, m)
                {
                    return v;
                }
                if m.mac.path.is_ident("vjp")
                    && let Some(v) = self.lifted_vjp(out, e, m)
                {
                    return v;
                }
                if (m.mac.path.is_ident("jacfwd") || m.mac.path.is_ident("jacrev"))
                    && let Some(v) = self.lifted_jacobian(out, e, m)
                {
                    return v;
                }
                if m.mac.path.is_ident("vmap")
                    && let Some(v) = self.lifted_vmap(out, e, m)
                {
                    return v;
                }
                Val::Atom(self.opaque_lifted(out, e.to_token_stream(), e.span()))
            }
            Expr::Array(_) | Expr::Struct(_) if self.mentions_local(e.to_token_stream()) => {
                // A module built from locals (`Outer { inner }`), a list of indices.
                let reads = self.mentioned_vars(e.to_token_stream());
                let tokens = self.verbatim(e.to_token_stream());
                let what = Built::Literal;
                Val::Atom(self.emit(
                    out,
                    Op::Build {
                        tokens,
                        reads,
                        what,
                    },
                    e.span(),
                ))
            }
            Expr::Macro(m) if self.mentions_local(m.mac.tokens.clone()) => self.macro_call(out, m),
            Expr::Macro(_)
            | Expr::Array(_)
            | Expr::Repeat(_)
            | Expr::Range(_)
            | Expr::Struct(_) => Val::Atom(self.constant(out, e)),
            Expr::Async(_)
            | Expr::Await(_)
            | Expr::Yield(_)
            | Expr::TryBlock(_)
            | Expr::Const(_) => {
                self.cx.error_at(
                    e,
                    "this expression is not supported in a #[differentiable] body",
                );
                poison()
            }
            Expr::Let(l) => {
                self.cx.error_at(
                    l,
                    "`let` expressions are not supported in a #[differentiable] body",
                );
                poison()
            }
            _ => {
                self.cx.error_at(
                    e,
                    "this expression is not supported in a #[differentiable] body",
                );
                poison()
            }
        }
    }

    /// `grad!(cx, |mdl, cx, a..| mdl.call(cx, a..), Child, args..)` (or
    /// `value_and_grad!`) with a constant child: a statement that can be differentiated
    /// again. Other forms stay opaque.
    pub(super) fn lifted_grad(
        &mut self,
        out: &mut Stmts,
        e: &Expr,
        m: &syn::ExprMacro,
    ) -> Option<Val> {
        let mut input: TransformInput = m.mac.parse_body().ok()?;
        // `has_aux` is covered: the aux is one more output of the child's forward mode.
        let has_aux = std::mem::take(&mut input.has_aux);
        let n = input.positional.len().checked_sub(3)?;
        let child = self.lifted_child(&mut input, n, false)?;
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
    pub(super) fn lifted_jvp(
        &mut self,
        out: &mut Stmts,
        e: &Expr,
        m: &syn::ExprMacro,
    ) -> Option<Val> {
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
        let child = self.lifted_child(&mut input, n, false)?;
        let mut args = self.operands(out, &primals);
        args.extend(self.operands(out, &tangents));
        let dsts = self.push_lifted(out, e, child, LiftedKind::Jvp { var_tangents }, 2, args);
        Some(vars(dsts))
    }

    /// `vjp!(cx, |mdl, cx, a..| mdl.call(cx, a..), Child, args..)` (`vjp_variables`
    /// allowed): `(y, pb)`, the output differentiated through the child (its reverse
    /// mode run again), calls of the pullback opaque (reading what the transform
    /// read). Other forms (`has_aux`, `reduce_axes`) stay opaque.
    pub(super) fn lifted_vjp(
        &mut self,
        out: &mut Stmts,
        e: &Expr,
        m: &syn::ExprMacro,
    ) -> Option<Val> {
        let mut input: TransformInput = m.mac.parse_body().ok()?;
        // Which variables' cotangents the pullback returns does not change `y`.
        input.vjp_variables = None;
        let n = input.positional.len().checked_sub(3)?;
        let child = self.lifted_child(&mut input, n, false)?;
        let args = self.operands(out, &input.positional[3..]);
        let reads: Vec<Atom> = args.iter().map(|a| a.atom.clone()).collect();
        let dsts = self.push_lifted(out, e, child, LiftedKind::Vjp, 2, args);
        // A call of the pullback reads what the transform read.
        self.lifted.insert(dsts[1], reads);
        if let Some(Stmt::LetLifted(l)) = out.last() {
            self.vjps.insert(dsts[1], l.clone());
        }
        Some(vars(dsts))
    }

    /// `jacfwd!(cx, |mdl, cx, a..| mdl.call(cx, a..), Child, args..)` or `jacrev!`:
    /// the Jacobian in the first primal, a statement that can be differentiated again
    /// (one JVP-VJP of the child per input element). Other forms stay opaque.
    pub(super) fn lifted_jacobian(
        &mut self,
        out: &mut Stmts,
        e: &Expr,
        m: &syn::ExprMacro,
    ) -> Option<Val> {
        let mut input: TransformInput = m.mac.parse_body().ok()?;
        let n = input.positional.len().checked_sub(3)?;
        let child = self.lifted_child(&mut input, n, false)?;
        let args = self.operands(out, &input.positional[3..]);
        let dsts = self.push_lifted(out, e, child, LiftedKind::Jacobian, 1, args);
        Some(Val::Atom(Atom::Var(dsts[0])))
    }

    /// `vmap!(cx, |mdl, cx, a..| mdl.call(cx, a..), Child, args.., in_axes = [..])`
    /// (`axis_name` allowed): the batched output, differentiated through the child
    /// (its reverse mode run again per example). Other forms stay opaque.
    pub(super) fn lifted_vmap(
        &mut self,
        out: &mut Stmts,
        e: &Expr,
        m: &syn::ExprMacro,
    ) -> Option<Val> {
        let vmap: VmapInput = m.mac.parse_body().ok()?;
        let n = vmap.positional.len().checked_sub(3)?;
        if vmap.in_axes.len() != n {
            return None;
        }
        let mut input = TransformInput::positional(vmap.positional);
        // Forward mode's JVP of a `vmap!` maps the child's JVP: the output and its
        // tangent.
        let child = match self.lifted_child(&mut input, n, false) {
            Some(child) => child,
            None => self.lifted_child(&mut input, n, true)?,
        };
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

    /// What a lifted transform over `n` primals must be for second order to go through
    /// it: the closure exactly `|mdl, cx, a..| mdl.call(cx, a..)`, the module an
    /// expression of constants or a local bound module (`let learner = Learner;`),
    /// no options but `variables` and `rngs` (taken: the rerun restricts alike).
    fn lifted_child(
        &mut self,
        input: &mut TransformInput,
        n: usize,
        allow_jvp: bool,
    ) -> Option<LiftedChild> {
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
        let names: Vec<Ident> = c
            .inputs
            .iter()
            .map(|p| match strip_type(p) {
                Pat::Ident(i) => Some(i.ident.clone()),
                _ => None,
            })
            .collect::<Option<_>>()?;
        if n == 0 || names.len() != n + 2 {
            return None;
        }
        let (call, jvp) = match &*c.body {
            Expr::MethodCall(call) if call.method == "call" => (call, false),
            // `Child::module(&mdl).____call_body_jvp_vjp_params(&mut *cx, x.., dx..).0`: the
            // child's JVP, which forward mode writes for a `vmap!` (see
            // `forward/lifted.rs`).
            Expr::Field(f) if matches!(&f.member, syn::Member::Unnamed(i) if i.index == 0) => {
                match &*f.base {
                    Expr::MethodCall(call)
                        if call.method == crate::names::child_jvp()
                            && child_of(&call.receiver, &names[0]) =>
                    {
                        (call, true)
                    }
                    _ => return None,
                }
            }
            _ => return None,
        };
        if jvp != allow_jvp {
            return None;
        }
        let recv_ok = jvp || matches!(&*call.receiver, Expr::Path(p) if p.path.is_ident(&names[0]));
        // The JVP's scope is a reborrow, `&mut *cx` (so that module-call routing
        // leaves the call as written).
        let is = |a: &Expr, nm: &Ident| matches!(a, Expr::Path(p) if p.path.is_ident(nm));
        let scope_ok = |a: &Expr| match a {
            Expr::Reference(r) if jvp => {
                matches!(&*r.expr, Expr::Unary(u) if matches!(u.op, syn::UnOp::Deref(_)) && is(&u.expr, &names[1]))
            }
            _ => !jvp && is(a, &names[1]),
        };
        let args_ok = call.args.len() == n + 1
            && scope_ok(&call.args[0])
            && call
                .args
                .iter()
                .skip(1)
                .zip(&names[2..])
                .all(|(a, nm)| is(a, nm));
        let local = self.mentions_local(items[2].to_token_stream());
        let bound = matches!(&items[2], Expr::Path(p) if p.path.get_ident().is_some());
        if !recv_ok || !args_ok || (local && !bound) {
            return None;
        }
        let Expr::Path(sp) = &items[0] else {
            return None;
        };
        let scope = match self.lookup(&sp.path.get_ident()?.to_string())? {
            Val::Atom(a) => a,
            Val::Tuple(_) => return None,
        };
        let module = if local {
            self.verbatim(items[2].to_token_stream())
        } else {
            items[2].to_token_stream()
        };
        let keep = local || mentions_self(&module);
        Some(LiftedChild {
            jvp,
            module,
            keep,
            scope,
            visible,
            rngs,
        })
    }

    /// A macro call that reads local variables: `dbg!(x)` is `x`, printed as `dbg!`
    /// prints it; `array![..]` of scalars is the rule `from_elems`; any other is a
    /// constant, and an error if it is given a differentiated value (activity's check).
    pub(super) fn macro_call(&mut self, out: &mut Stmts, m: &syn::ExprMacro) -> Val {
        let span = m.span();
        let name = m.mac.path.segments.last().map(|s| s.ident.clone());
        let args = m
            .mac
            .parse_body_with(Punctuated::<Expr, syn::Token![,]>::parse_terminated)
            .ok();
        match (name.as_ref().map(Ident::to_string).as_deref(), args) {
            (Some("dbg"), Some(args)) if args.len() == 1 => {
                let text = args[0].to_token_stream();
                let v = self.expr(out, &args[0]);
                let value = self.val_tokens(&v);
                let print = quote::quote_spanned!(span=>
                    ::std::eprintln!(
                        "[{}:{}:{}] {} = {:#?}",
                        ::core::file!(),
                        ::core::line!(),
                        ::core::column!(),
                        ::core::stringify!(#text),
                        &#value
                    )
                );
                self.emit(out, Op::Const(print), span);
                v
            }
            (Some("array"), Some(args)) => {
                let mut shape = Vec::new();
                let mut elems = Vec::new();
                if !array_elems(&args, 0, &mut shape, &mut elems) || elems.is_empty() {
                    self.cx.error_at(m, "`array!` of differentiated values takes scalars, nested as rows of equal length: `array![[a, b], [c, d]]`");
                    return poison();
                }
                let operands = elems.iter().map(|e| self.operand(out, e)).collect();
                let shape = shape.iter().map(|n| syn::Index::from(*n));
                let shape = Atom::Lit(quote!((#(#shape,)*)));
                Val::Atom(self.prim(
                    out,
                    &ops::FROM_ELEMS,
                    operands,
                    vec![shape],
                    Native::Rule,
                    span,
                ))
            }
            _ => {
                let reads = self.mentioned_vars(m.mac.tokens.clone());
                let tokens = self.verbatim(m.to_token_stream());
                let what = Built::Macro(name.unwrap_or_else(|| Ident::new("macro", span)));
                Val::Atom(self.emit(
                    out,
                    Op::Build {
                        tokens,
                        reads,
                        what,
                    },
                    span,
                ))
            }
        }
    }

    /// A block whose statements join the current list (its scope ends after it).
    pub(super) fn inline_block(&mut self, out: &mut Stmts, stmts: &[syn::Stmt]) -> Val {
        self.push_scope();
        let mut value = Val::Tuple(vec![]);
        for (i, stmt) in stmts.iter().enumerate() {
            match stmt {
                syn::Stmt::Local(l) => self.local(out, l),
                syn::Stmt::Expr(e, semi) => {
                    if matches!(e, Expr::Return(_) | Expr::Break(_) | Expr::Continue(_))
                        || may_diverge(e)
                    {
                        self.cx.error_at(e, "`return`, `break` and `continue` inside a block expression are not supported; move them into an `if` of their own");
                        continue;
                    }
                    let v = self.expr(out, e);
                    if i + 1 == stmts.len() && semi.is_none() {
                        value = v;
                    }
                }
                syn::Stmt::Macro(m) => {
                    let tokens = self.verbatim(m.mac.to_token_stream());
                    self.emit(out, Op::Const(tokens), m.span());
                }
                syn::Stmt::Item(item) => self.nested_item(item),
            }
        }
        self.pop_scope();
        value
    }

    pub(super) fn binary(&mut self, out: &mut Stmts, b: &syn::ExprBinary) -> Val {
        let span = b.span();
        let (rule, sym, assign): (&'static Rule, TokenStream, bool) = match b.op {
            BinOp::Add(_) => (&ops::ADD, quote!(+), false),
            BinOp::Sub(_) => (&ops::SUB, quote!(-), false),
            BinOp::Mul(_) => (&ops::MUL, quote!(*), false),
            BinOp::Div(_) => (&ops::DIV, quote!(/), false),
            BinOp::AddAssign(_) => (&ops::ADD, quote!(+), true),
            BinOp::SubAssign(_) => (&ops::SUB, quote!(-), true),
            BinOp::MulAssign(_) => (&ops::MUL, quote!(*), true),
            BinOp::DivAssign(_) => (&ops::DIV, quote!(/), true),
            BinOp::Rem(_) | BinOp::RemAssign(_) if self.mentions_local(b.to_token_stream()) => {
                self.cx.error_at(b, "`%` has no derivative rule; wrap it in `no_grad(..)` if its operands are constants");
                return poison();
            }
            _ => {
                if matches!(
                    b.op,
                    BinOp::BitAndAssign(_)
                        | BinOp::BitOrAssign(_)
                        | BinOp::BitXorAssign(_)
                        | BinOp::ShlAssign(_)
                        | BinOp::ShrAssign(_)
                        | BinOp::RemAssign(_)
                ) {
                    // Integer bookkeeping such as `mask |= 1`: a constant update.
                    let e = Expr::Binary(b.clone());
                    let new = self.constant_update(out, &e, &b.left);
                    return new;
                }
                return Val::Atom(self.constant(out, &Expr::Binary(b.clone())));
            }
        };
        if assign {
            let e = Expr::Binary(syn::ExprBinary {
                attrs: vec![],
                left: b.left.clone(),
                op: match b.op {
                    BinOp::AddAssign(_) => BinOp::Add(Default::default()),
                    BinOp::SubAssign(_) => BinOp::Sub(Default::default()),
                    BinOp::MulAssign(_) => BinOp::Mul(Default::default()),
                    _ => BinOp::Div(Default::default()),
                },
                right: b.right.clone(),
            });
            self.assign_to(out, &b.left, &e, Some(span));
            return Val::Tuple(vec![]);
        }
        if !self.mentions_local(b.to_token_stream()) {
            return Val::Atom(self.constant(out, &Expr::Binary(b.clone())));
        }
        let l = self.operand(out, &b.left);
        let r = self.operand(out, &b.right);
        if rule.func == "mul"
            && matches!((&l.atom, &r.atom), (Atom::Var(a), Atom::Var(b)) if a == b)
        {
            // `x * x`: one pullback (2 x ct) instead of two and a sum.
            return Val::Atom(self.prim(out, &ops::SQUARE, vec![l], vec![], Native::Square, span));
        }
        Val::Atom(self.prim(out, rule, vec![l, r], vec![], Native::Binary(sym), span))
    }

    pub(super) fn constant_update(&mut self, out: &mut Stmts, e: &Expr, left: &Expr) -> Val {
        let Expr::Path(p) = left else {
            self.cx.error_at(
                left,
                "only local variables may be assigned in a #[differentiable] body",
            );
            return poison();
        };
        let Some(id) = p.path.get_ident() else {
            return Val::Tuple(vec![]);
        };
        // `x op= y` as `{ let mut t = x; t op= y; t }`.
        let cur = self.verbatim(left.to_token_stream());
        let Expr::Binary(b) = e else {
            return Val::Tuple(vec![]);
        };
        let op = &b.op;
        let rhs = self.verbatim(b.right.to_token_stream());
        let dst = self.emit(
            out,
            Op::Const(quote!({ let mut __v = #cur; __v #op #rhs; __v })),
            e.span(),
        );
        self.assign(&id.to_string(), Val::Atom(dst), e.span());
        Val::Tuple(vec![])
    }

    pub(super) fn assign_to(
        &mut self,
        out: &mut Stmts,
        left: &Expr,
        right: &Expr,
        _span: Option<Span>,
    ) {
        match left {
            Expr::Path(p) if p.path.get_ident().is_some() => {
                let name = p.path.get_ident().expect("checked").to_string();
                let v = self.expr(out, right);
                // A fresh name for the new value, so the old one stays readable.
                if let Val::Atom(Atom::Var(var)) = &v
                    && self.is_fresh_temp(*var)
                {
                    let id = p.path.get_ident().expect("checked").clone();
                    self.rename_temp(*var, &id);
                }
                self.assign(&name, v, left.span());
            }
            Expr::Tuple(t) => {
                let v = self.expr(out, right);
                match v {
                    Val::Tuple(vs) if vs.len() == t.elems.len() => {
                        for (l, v) in t.elems.iter().zip(vs) {
                            if let Expr::Path(p) = l
                                && let Some(id) = p.path.get_ident()
                            {
                                self.assign(&id.to_string(), v, l.span());
                                continue;
                            }
                            if !matches!(l, Expr::Infer(_)) {
                                self.cx.error_at(l, "only local variables may be assigned in a #[differentiable] body");
                            }
                        }
                    }
                    _ => self
                        .cx
                        .error_at(t, "this tuple assignment does not match the value's shape"),
                }
            }
            Expr::Index(ix) => {
                self.cx.error_at(ix, "writing into an array element is not supported in a #[differentiable] body; build the array from differentiable operations (e.g. `concatenate`, `stack`, `mapv`)");
            }
            Expr::Field(f) => {
                self.cx.error_at(
                    f,
                    "assigning to a field is not supported in a #[differentiable] body",
                );
            }
            other => self.cx.error_at(
                other,
                "only local variables may be assigned in a #[differentiable] body",
            ),
        }
    }

    /// Whether `var` is a temporary just made for an expression (so it may take a
    /// user's name instead of being copied).
    pub(super) fn is_fresh_temp(&self, var: Var) -> bool {
        self.vars[var.0 as usize]
            .name
            .to_string()
            .starts_with("__t")
    }

    pub(super) fn rename_temp(&mut self, var: Var, to: &Ident) {
        let base = to.to_string();
        let mut name = base.clone();
        let mut k = 1;
        while self.taken.contains(&name) && self.vars.iter().any(|v| v.name == name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.taken.insert(name.clone());
        self.vars[var.0 as usize].name = crate::hygiene::ident(&name, to.span());
    }

    pub(super) fn prim(
        &mut self,
        out: &mut Stmts,
        rule: &'static Rule,
        operands: Vec<Arg>,
        consts: Vec<Atom>,
        native: Native,
        span: Span,
    ) -> Atom {
        let key = {
            let atom_key = |a: &Atom| match a {
                Atom::Var(v) => format!("v{}", v.0),
                Atom::Lit(t) => t.to_string(),
            };
            let ops: Vec<String> = operands.iter().map(|a| atom_key(&a.atom)).collect();
            let cs: Vec<String> = consts.iter().map(atom_key).collect();
            format!("{}({})[{}]", rule.func, ops.join(","), cs.join(","))
        };
        if let Some(v) = self.memo.iter().rev().find_map(|m| m.get(&key)) {
            return Atom::Var(*v);
        }
        let atom = self.emit(
            out,
            Op::Prim {
                rule,
                operands,
                consts,
                native,
            },
            span,
        );
        if let (Atom::Var(v), Some(m)) = (&atom, self.memo.last_mut()) {
            m.insert(key, *v);
        }
        atom
    }

    /// An operand: its atom, and whether the user wrote `&` before it.
    pub(super) fn operand(&mut self, out: &mut Stmts, e: &Expr) -> Arg {
        let by_ref = self.by_ref(e);
        let v = self.expr(out, e);
        Arg {
            atom: self.atom(v, e.span()),
            by_ref,
        }
    }

    pub(super) fn args(
        &mut self,
        out: &mut Stmts,
        args: impl IntoIterator<Item = Expr>,
    ) -> Vec<Arg> {
        args.into_iter()
            .map(|a| {
                let by_ref = self.by_ref(&a);
                // A constant argument (a shape `(3, 4)`, a name) is passed as written.
                if !self.mentions_local(a.to_token_stream()) {
                    let inner = match &a {
                        Expr::Reference(r) => &*r.expr,
                        other => other,
                    };
                    return Arg {
                        atom: self.constant(out, inner),
                        by_ref,
                    };
                }
                let span = a.span();
                let v = self.expr(out, &a);
                Arg {
                    atom: self.packed(out, v, span),
                    by_ref,
                }
            })
            .collect()
    }

    /// A value as one atom: a tuple packed by the `tuple` rule (differentiated, so
    /// that `f((c, h), x)` passes the cotangents of `c` and `h` back).
    pub(super) fn packed(&mut self, out: &mut Stmts, v: Val, span: Span) -> Atom {
        match v {
            Val::Atom(a) => a,
            Val::Tuple(vs) if vs.is_empty() => Atom::Lit(quote!(())),
            Val::Tuple(vs) => {
                let operands = vs
                    .into_iter()
                    .map(|v| Arg {
                        atom: self.packed(out, v, span),
                        by_ref: false,
                    })
                    .collect();
                self.prim(out, &ops::TUPLE, operands, vec![], Native::Tuple, span)
            }
        }
    }
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
}

/// Whether `e` is `Child::module(&mdl)` (the module `mdl` stands for).
fn child_of(e: &Expr, mdl: &Ident) -> bool {
    let Expr::Call(c) = e else { return false };
    matches!(&*c.func, Expr::Path(p) if p.path.segments.last().is_some_and(|s| s.ident == "module"))
        && c.args.len() == 1
        && matches!(&c.args[0], Expr::Reference(r) if matches!(&*r.expr, Expr::Path(p) if p.path.is_ident(mdl)))
}

/// Each variable as a value, in a tuple.
pub(super) fn vars(dsts: Vec<Var>) -> Val {
    Val::Tuple(dsts.into_iter().map(|v| Val::Atom(Atom::Var(v))).collect())
}
