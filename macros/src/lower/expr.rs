//! Expressions: operators, literals, macro calls, assignments, and the operands
//! and arguments they name.

use super::*;

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
                    let mut inner = &*c.expr;
                    while let Expr::Paren(p) = inner {
                        inner = &p.expr;
                    }
                    let deref = matches!(inner, Expr::Unary(u) if matches!(u.op, UnOp::Deref(_)));
                    Val::Atom(self.prim(
                        out,
                        &ops::CAST,
                        vec![x],
                        vec![Atom::Lit(t.clone())],
                        Native::Cast { ty: t, deref },
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
                self.lifted(out, e, m)
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

    /// An expression whose value the code drops (`parts.push(x);`): its variable, if
    /// it makes one, is marked (see `VarInfo::discarded`).
    pub(super) fn discarded_expr(&mut self, out: &mut Stmts, e: &Expr) {
        let before = self.vars.len();
        if let Val::Atom(Atom::Var(v)) = self.expr(out, e)
            && v.0 as usize >= before
        {
            self.vars[v.0 as usize].discarded = true;
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
                    if i + 1 == stmts.len() && semi.is_none() {
                        value = self.expr(out, e);
                    } else {
                        self.discarded_expr(out, e);
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
        if let Some(v) = self.memo.iter().rev().find_map(|m| m.get(&key)).copied() {
            self.vars[v.0 as usize].shared = true;
            return Atom::Var(v);
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
                // A constant argument (a shape `(3, 4)`, a name) is passed as written;
                // a reference to a place (`&self.ids`) is bound as the reference
                // (binding the place would move it), passed on by reference again.
                if !self.mentions_local(a.to_token_stream()) {
                    let inner = match &a {
                        Expr::Reference(r) if is_place(&r.expr) && !is_inline_constant(&r.expr) => {
                            &a
                        }
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

/// Whether `e` names a place (`self.ids`, `self.table[0]`): borrowing it borrows
/// what outlives the statement, unlike a temporary's (`&array![..]`).
fn is_place(e: &Expr) -> bool {
    match e {
        Expr::Path(_) => true,
        Expr::Field(f) => is_place(&f.base),
        Expr::Index(i) => is_place(&i.expr),
        Expr::Paren(p) => is_place(&p.expr),
        _ => false,
    }
}
