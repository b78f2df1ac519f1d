//! Blocks and statements: `let` (patterns, closures and nested `fn`s bound for
//! inlining), statements, leaves, and the branches that leave a block early.

use super::*;

impl Lowerer<'_> {
    /// Lowers `stmts` in a new scope. The block's value (its last expression) goes
    /// to a leaf of kind `end`.
    pub(super) fn block(&mut self, stmts: &[syn::Stmt], region: &Region, end: LeafKind) -> Block {
        self.push_scope();
        let mut out = Vec::new();
        let tail = self.stmts(&mut out, stmts, region, end);
        self.pop_scope();
        Block { stmts: out, tail }
    }

    pub(super) fn stmts(
        &mut self,
        out: &mut Stmts,
        stmts: &[syn::Stmt],
        region: &Region,
        end: LeafKind,
    ) -> Tail {
        for (i, stmt) in stmts.iter().enumerate() {
            let last = i + 1 == stmts.len();
            match stmt {
                syn::Stmt::Local(local) => self.local(out, local),
                syn::Stmt::Item(item) => self.nested_item(item),
                syn::Stmt::Macro(m) => {
                    // A statement macro (`println!`, `assert!`): emitted as written,
                    // as an expression (without its `;`).
                    let tokens = self.verbatim(m.mac.to_token_stream());
                    self.emit(out, Op::Const(tokens), m.span());
                }
                syn::Stmt::Expr(e, semi) => {
                    if let Some(tail) = self.diverging(e, &stmts[i + 1..], region, end) {
                        return tail;
                    }
                    match e {
                        Expr::Return(r) => {
                            let value = match &r.expr {
                                Some(e) => self.expr(out, e),
                                None => Val::Tuple(vec![]),
                            };
                            let value = self.owned_output(out, value, r.span());
                            return self.leaf(LeafKind::Return, Some(value), region);
                        }
                        Expr::Break(b) => {
                            if b.label.is_some() {
                                self.cx.error_at(
                                    b,
                                    "labelled `break` is not supported in a #[differentiable] body",
                                );
                            }
                            let value = b.expr.as_ref().map(|e| self.expr(out, e));
                            return self.leaf(LeafKind::Break, value, region);
                        }
                        Expr::Continue(c) => {
                            if c.label.is_some() {
                                self.cx.error_at(c, "labelled `continue` is not supported in a #[differentiable] body");
                            }
                            return self.leaf(LeafKind::Continue, None, region);
                        }
                        _ => {}
                    }
                    if last && semi.is_none() {
                        let mut value = self.expr(out, e);
                        if end == LeafKind::Return {
                            value = self.owned_output(out, value, e.span());
                        }
                        return self.leaf(end, Some(value), region);
                    }
                    self.discarded_expr(out, e);
                }
            }
        }
        self.leaf(end, None, region)
    }

    pub(super) fn leaf(&mut self, kind: LeafKind, value: Option<Val>, region: &Region) -> Tail {
        let carries = region
            .carries
            .iter()
            .map(|(depth, name)| match self.scopes[*depth].get(name) {
                Some(Val::Atom(a)) => a.clone(),
                _ => Atom::Lit(quote!(())),
            })
            .collect();
        Tail::Leaf(Leaf {
            kind,
            value,
            carries,
        })
    }

    /// An `if` or `match` that may leave its block early: its arms take the rest of
    /// the block, and it ends the block.
    pub(super) fn diverging(
        &mut self,
        e: &Expr,
        rest: &[syn::Stmt],
        region: &Region,
        end: LeafKind,
    ) -> Option<Tail> {
        if !matches!(e, Expr::If(_) | Expr::Match(_)) || !may_diverge(e) {
            return None;
        }
        let with_rest = |mut arm: Vec<syn::Stmt>| {
            if let Some(syn::Stmt::Expr(e, None)) = arm.last().cloned()
                && !rest.is_empty()
            {
                let n = arm.len();
                arm[n - 1] = syn::Stmt::Expr(e, Some(Default::default()));
            }
            arm.extend(rest.iter().cloned());
            arm
        };
        // Each arm starts from the outer variables as they are here: what one arm
        // assigns must not leak into the next.
        let mut tokens = e.to_token_stream();
        tokens.extend(rest.iter().map(|s| s.to_token_stream()));
        let outer = Region {
            carries: self.assigned_outer(tokens),
        };
        let before: Vec<Val> = outer
            .carries
            .iter()
            .map(|(d, n)| self.scopes[*d][n].clone())
            .collect();
        let branch = match e {
            Expr::If(i) => {
                let cond = self.condition(&i.cond);
                let then = self.block(&with_rest(i.then_branch.stmts.clone()), region, end);
                self.restore(&outer, &before);
                let els = self.block(&with_rest(else_stmts(&i.else_branch)), region, end);
                self.restore(&outer, &before);
                Branching {
                    kind: BranchKind::If { cond },
                    arms: vec![then, els],
                }
            }
            Expr::Match(m) => {
                let (scrutinee, pats) = self.match_head(m);
                let mut arms = Vec::new();
                let mut binds = Vec::new();
                for arm in &m.arms {
                    self.push_scope();
                    binds.push(self.bind_pattern_names(&arm.pat));
                    arms.push(self.block(&with_rest(arm_stmts(&arm.body)), region, end));
                    self.pop_scope();
                    self.restore(&outer, &before);
                }
                Branching {
                    kind: BranchKind::Match {
                        scrutinee,
                        pats,
                        binds,
                    },
                    arms,
                }
            }
            _ => return None,
        };
        Some(Tail::Branch(Box::new(branch)))
    }

    pub(super) fn condition(&mut self, cond: &Expr) -> TokenStream {
        // `if let` alone is a `match` by now (see `if_let_as_match`); a chain of
        // `let`s with other conditions is not.
        struct Lets(Option<syn::ExprLet>);
        impl<'ast> syn::visit::Visit<'ast> for Lets {
            fn visit_expr_let(&mut self, l: &'ast syn::ExprLet) {
                self.0.get_or_insert_with(|| l.clone());
            }
        }
        let mut lets = Lets(None);
        syn::visit::Visit::visit_expr(&mut lets, cond);
        // (`while let` is reported where the loop is lowered.)
        if let (Expr::Binary(_), Some(l)) = (cond, lets.0) {
            self.cx.error_at(
                &l,
                "a chain of `let` with other conditions is not supported in a #[differentiable] body; use `match` (with a guard: `Some(n) if n > 2 =>`)",
            );
        }
        self.verbatim(cond.to_token_stream())
    }

    pub(super) fn match_head(&mut self, m: &syn::ExprMatch) -> (TokenStream, Vec<TokenStream>) {
        let scrutinee = self.verbatim(m.expr.to_token_stream());
        let pats = m
            .arms
            .iter()
            .map(|arm| {
                let pat = &arm.pat;
                match &arm.guard {
                    Some((_, g)) => {
                        let g = self.verbatim(g.to_token_stream());
                        quote!(#pat if #g)
                    }
                    None => quote!(#pat),
                }
            })
            .collect();
        (scrutinee, pats)
    }

    /// Binds the names a pattern (`match` arm, `for` loop) introduces: constants,
    /// named exactly as the user wrote them since the pattern is emitted as written.
    pub(super) fn bind_pattern_names(&mut self, pat: &Pat) -> Vec<Var> {
        let mut names = Vec::new();
        pattern_names(pat, &mut names);
        names
            .into_iter()
            .map(|n| {
                let id = Var(self.vars.len() as u32);
                self.vars.push(VarInfo {
                    name: n.clone(),
                    ty: None,
                    mutable: false,
                    shared: false,
                    discarded: false,
                });
                self.taken.insert(n.to_string());
                self.bind(n.to_string(), Val::Atom(Atom::Var(id)));
                id
            })
            .collect()
    }

    pub(super) fn local(&mut self, out: &mut Stmts, local: &syn::Local) {
        let Some(init) = &local.init else {
            self.cx.error_at(
                local,
                "a `let` without a value is not supported in a #[differentiable] body",
            );
            return;
        };
        if let Some((_, diverge)) = &init.diverge {
            self.cx.error_at(
                diverge,
                "`let .. else` is not supported in a #[differentiable] body",
            );
        }
        let pat = strip_type(&local.pat);
        if let (Pat::Ident(id), Expr::Closure(c)) = (pat, &*init.expr) {
            self.local_closure(out, id, c);
            return;
        }
        if let (Pat::Tuple(pt), Expr::Call(_) | Expr::MethodCall(_)) = (pat, &*init.expr)
            && let Some(call) = self.call_target(out, &init.expr)
        {
            // `let (a, b) = f(x);`, `let ((c, h), y) = f(x);`: one statement with a
            // name per leaf.
            let mut dsts = Vec::new();
            let mut binds = Vec::new();
            let mut nested = Vec::new();
            let pattern = self.tuple_leaves(pt, &mut dsts, &mut binds, &mut nested);
            out.push(Stmt::LetTuple {
                dsts: dsts.clone(),
                pattern,
                call,
            });
            for (d, b) in dsts.iter().zip(binds) {
                if let Some(name) = b {
                    self.bind(name, Val::Atom(Atom::Var(*d)));
                }
            }
            for (k, p) in nested {
                self.bind_pat(out, &p, Val::Atom(Atom::Var(dsts[k])));
            }
            return;
        }
        let val = self.expr(out, &init.expr);
        self.bind_pat(out, &local.pat, val);
        if let (Expr::Reference(_), Pat::Ident(id)) = (&*init.expr, strip_type(&local.pat))
            && let Some(refs) = self.ref_bound.last_mut()
        {
            refs.insert(id.ident.to_string());
        }
    }

    /// `let g = |v| ..;`: the closure is inlined where it is called, seeing the
    /// variables it captures as they are here. It is also bound as written, for
    /// expressions emitted as written that name it.
    pub(super) fn local_closure(
        &mut self,
        out: &mut Stmts,
        id: &syn::PatIdent,
        c: &syn::ExprClosure,
    ) {
        if contains_return(&[syn::Stmt::Expr((*c.body).clone(), None)]) {
            self.cx.error_at(c, "a closure with `return` is not differentiated: give it one value at its end, or write it as a #[differentiable] function");
            return;
        }
        let names = crate::hygiene::idents(&c.body.to_token_stream());
        let mut env = HashMap::new();
        let mut env_refs = HashSet::new();
        for name in names {
            if self.is_local(&name)
                && let Some(v) = self.lookup(&name)
            {
                if self.by_ref(&syn::parse_quote!(#name)) {
                    env_refs.insert(name.clone());
                }
                env.insert(name, v);
            }
        }
        let def = Inlined {
            params: c.inputs.iter().cloned().collect(),
            body: (*c.body).clone(),
            env,
            env_refs,
            fns: Some(self.visible_fns()),
            unsupported: None,
        };
        let tokens = self.verbatim(c.to_token_stream());
        let v = self.emit(out, Op::Const(tokens), c.span());
        if let Atom::Var(var) = v {
            self.rename_temp(var, &id.ident);
        }
        self.bind(id.ident.to_string(), Val::Atom(v));
        if let Some(fns) = self.inlined.last_mut() {
            fns.insert(id.ident.to_string(), std::rc::Rc::new(def));
        }
    }

    /// An item declared in the body: kept as written (at the top of the generated
    /// bodies); a nested `fn` is also inlined where it is called.
    pub(super) fn nested_item(&mut self, item: &syn::Item) {
        if self.inlining.is_empty() {
            // Each generated body holds a copy; calls of a nested `fn` are inlined, so
            // a copy may go unused.
            self.items
                .push(quote!(#[allow(dead_code, unused_imports)] #item));
        }
        let syn::Item::Fn(f) = item else {
            return;
        };
        let params: Option<Vec<Pat>> = f
            .sig
            .inputs
            .iter()
            .map(|a| match a {
                syn::FnArg::Typed(t) => Some((*t.pat).clone()),
                syn::FnArg::Receiver(_) => None,
            })
            .collect();
        let generic = f
            .sig
            .generics
            .params
            .iter()
            .any(|p| !matches!(p, syn::GenericParam::Lifetime(_)));
        let unsupported = (generic || contains_return(&f.block.stmts) || params.is_none())
            .then(|| format!("the nested function `{}` is not differentiated (it is generic, takes `self` or has `return`): move it outside and mark it #[differentiable]", f.sig.ident));
        let def = Inlined {
            params: params.unwrap_or_default(),
            unsupported,
            body: Expr::Block(syn::ExprBlock {
                attrs: vec![],
                label: None,
                block: (*f.block).clone(),
            }),
            env: HashMap::new(),
            env_refs: HashSet::new(),
            fns: None,
        };
        if let Some(fns) = self.inlined.last_mut() {
            fns.insert(f.sig.ident.to_string(), std::rc::Rc::new(def));
        }
    }

    /// Every inlined function visible here, innermost binding winning.
    pub(super) fn visible_fns(&self) -> HashMap<String, std::rc::Rc<Inlined>> {
        let mut all = HashMap::new();
        for level in &self.inlined {
            for (k, v) in level {
                all.insert(k.clone(), v.clone());
            }
        }
        all
    }

    /// The inlined function `name` if it is one here (a local of the same name
    /// declared later hides it).
    pub(super) fn inlined_fn(&self, name: &str) -> Option<std::rc::Rc<Inlined>> {
        let fn_depth = (0..self.inlined.len())
            .rev()
            .find(|&d| self.inlined[d].contains_key(name))?;
        // A closure is bound as a variable too, at the same depth; a later `let`
        // of the same name hides it.
        match self.scope_of(name) {
            Some(d) if d > fn_depth => None,
            _ => self.inlined[fn_depth].get(name).cloned(),
        }
    }

    /// A call of a closure or nested function: its body, lowered here with its
    /// parameters bound to the arguments, in the environment it was made in.
    pub(super) fn inline_call(
        &mut self,
        out: &mut Stmts,
        c: &syn::ExprCall,
        name: &str,
        def: &Inlined,
    ) -> Val {
        if self.inlining.iter().any(|n| n == name) {
            self.cx.error_at(c, format!("`{name}` calls itself: a recursive nested function is not differentiated; move it outside and mark it #[differentiable]"));
            return poison();
        }
        if c.args.len() != def.params.len() {
            self.cx.error_at(
                c,
                format!("`{name}` takes {} argument(s)", def.params.len()),
            );
            return poison();
        }
        let args: Vec<(Val, bool)> = c
            .args
            .iter()
            .map(|a| (self.expr(out, a), self.by_ref(a)))
            .collect();
        let mut env: HashMap<String, Val> = def.env.clone();
        let fns = def.fns.clone().unwrap_or_else(|| self.visible_fns());
        // The module's scope and loop variables of the environment stay as they are.
        let saved = (
            std::mem::replace(&mut self.scopes, vec![std::mem::take(&mut env)]),
            std::mem::replace(&mut self.ref_bound, vec![def.env_refs.clone()]),
            std::mem::replace(&mut self.inlined, vec![fns]),
            std::mem::replace(&mut self.memo, vec![HashMap::new()]),
            std::mem::take(&mut self.outer),
        );
        self.inlining.push(name.to_string());
        self.push_scope();
        for (pat, (val, by_ref)) in def.params.iter().zip(args) {
            self.bind_pat(out, pat, val);
            if let (true, Pat::Ident(id)) = (by_ref, strip_type(pat))
                && let Some(refs) = self.ref_bound.last_mut()
            {
                refs.insert(id.ident.to_string());
            }
        }
        let v = self.expr(out, &def.body);
        self.pop_scope();
        self.inlining.pop();
        (
            self.scopes,
            self.ref_bound,
            self.inlined,
            self.memo,
            self.outer,
        ) = saved;
        v
    }

    /// Whether `e` is passed by reference: written `&x`, or a name bound to one.
    pub(super) fn by_ref(&self, e: &Expr) -> bool {
        // `-(&w)`: a reference in parentheses is one.
        let mut e = e;
        while let Expr::Paren(syn::ExprParen { expr, .. })
        | Expr::Group(syn::ExprGroup { expr, .. }) = e
        {
            e = expr;
        }
        if matches!(e, Expr::Reference(_)) {
            return true;
        }
        let Expr::Path(p) = e else { return false };
        let Some(id) = p.path.get_ident() else {
            return false;
        };
        let name = id.to_string();
        self.scope_of(&name)
            .is_some_and(|d| self.ref_bound.get(d).is_some_and(|r| r.contains(&name)))
    }

    /// The leaves of a tuple pattern a call's result is taken apart by: a name (a
    /// fresh variable bound to it), `_`, or a tuple of such; any other pattern is a
    /// leaf taken apart after (by the `field` rule).
    fn tuple_leaves(
        &mut self,
        pt: &syn::PatTuple,
        dsts: &mut Vec<Var>,
        binds: &mut Vec<Option<String>>,
        nested: &mut Vec<(usize, Pat)>,
    ) -> Nest {
        let mut parts = Vec::new();
        for p in &pt.elems {
            match strip_type(p) {
                Pat::Ident(id) if id.subpat.is_none() => {
                    let v = self.fresh_user(&id.ident);
                    dsts.push(v);
                    binds.push(Some(id.ident.to_string()));
                    parts.push(Nest::Leaf);
                }
                Pat::Wild(w) => {
                    dsts.push(self.temp(w.span()));
                    binds.push(None);
                    parts.push(Nest::Leaf);
                }
                Pat::Tuple(inner) => parts.push(self.tuple_leaves(inner, dsts, binds, nested)),
                other => {
                    dsts.push(self.temp(other.span()));
                    binds.push(None);
                    nested.push((dsts.len() - 1, other.clone()));
                    parts.push(Nest::Leaf);
                }
            }
        }
        Nest::Tuple(parts)
    }

    pub(super) fn bind_pat(&mut self, out: &mut Stmts, pat: &Pat, val: Val) {
        if let (Pat::Type(t), Val::Atom(Atom::Var(v))) = (pat, &val) {
            // `let p: f32 = ..`: the annotation may be what fixes the type.
            if self.is_fresh_temp(*v) {
                self.vars[v.0 as usize].ty = Some((*t.ty).clone());
            }
        }
        match strip_type(pat) {
            Pat::Ident(id) => {
                if id.by_ref.is_some() || id.subpat.is_some() {
                    self.cx.error_at(
                        id,
                        "`ref` and `@` patterns are not supported in a #[differentiable] body",
                    );
                }
                if let (Some(_), Val::Atom(Atom::Var(v))) = (&id.mutability, &val) {
                    self.vars[v.0 as usize].mutable = true;
                }
                // A fresh name, so the reverse sweep can still read the value it shadows.
                // A value just computed takes the user's name; an existing one is shared.
                if let Val::Atom(Atom::Var(v)) = &val
                    && self.is_fresh_temp(*v)
                {
                    self.rename_temp(*v, &id.ident);
                }
                let _ = &out;
                self.bind(id.ident.to_string(), val);
            }
            Pat::Wild(_) => {}
            Pat::Tuple(pt) => match val {
                Val::Tuple(vs) if vs.len() == pt.elems.len() => {
                    for (p, v) in pt.elems.iter().zip(vs) {
                        self.bind_pat(out, p, v);
                    }
                }
                Val::Atom(Atom::Var(v)) => {
                    // A tuple computed at run time: a call's result is destructured by
                    // the call itself; a constant's by its fields.
                    let fields = self.split_runtime_tuple(out, v, pt.elems.len(), pt);
                    for (p, f) in pt.elems.iter().zip(fields) {
                        self.bind_pat(out, p, f);
                    }
                }
                _ => self
                    .cx
                    .error_at(pt, "this tuple pattern does not match the value's shape"),
            },
            Pat::Paren(p) => self.bind_pat(out, &p.pat, val),
            other => self.cx.error_at(
                other,
                "only names, `_` and tuples may be bound in a #[differentiable] body",
            ),
        }
    }

    /// The fields of variable `v`, a tuple of `n` values produced at run time.
    pub(super) fn split_runtime_tuple(
        &mut self,
        out: &mut Stmts,
        v: Var,
        n: usize,
        at: &dyn ToTokens,
    ) -> Vec<Val> {
        let last_is_call =
            matches!(out.last(), Some(Stmt::Let { dst, op: Op::Call(_), .. }) if *dst == v);
        if last_is_call {
            let Some(Stmt::Let {
                op: Op::Call(call), ..
            }) = out.pop()
            else {
                unreachable!("checked")
            };
            let dsts: Vec<Var> = (0..n).map(|_| self.temp(at.span())).collect();
            out.push(Stmt::LetTuple {
                dsts: dsts.clone(),
                pattern: Nest::flat(n),
                call,
            });
            return dsts.into_iter().map(|d| Val::Atom(Atom::Var(d))).collect();
        }
        let is_const = self.defined_as_const(out, v);
        if !is_const {
            // A tuple made elsewhere (a parameter, a carry): its fields by the rule.
            let span = at.span();
            return (0..n)
                .map(|i| Val::Atom(self.tuple_field(out, v, i, span)))
                .collect();
        }
        let lifted = self.lifted.get(&v).cloned();
        let name = self.vars[v.0 as usize].name.clone();
        (0..n)
            .map(|i| {
                let idx = syn::Index::from(i);
                let field = quote!(#name.#idx);
                let op = match &lifted {
                    // What the transform read, the field reads.
                    Some(reads) => Op::Lifted {
                        tokens: field,
                        reads: reads.clone(),
                    },
                    None => Op::Const(field),
                };
                Val::Atom(self.emit(out, op, at.span()))
            })
            .collect()
    }

    /// Field `i` of the tuple `v`, by the `field` rule.
    pub(super) fn tuple_field(&mut self, out: &mut Stmts, v: Var, i: usize, span: Span) -> Atom {
        let index = syn::Index::from(i);
        let at = quote!(::adjoint::__private::At::<#index>);
        let operand = Arg {
            atom: Atom::Var(v),
            by_ref: true,
        };
        let native = Native::Function(quote!(::adjoint::__private::field));
        let field = self.prim(
            out,
            &ops::FIELD,
            vec![operand],
            vec![Atom::Lit(at)],
            native,
            span,
        );
        if let Atom::Var(f) = field {
            self.fields.insert(f);
        }
        field
    }

    /// The function's output `v`, owned: a field of a tuple (`f(x).0`) is a reference
    /// into the tuple, which must not outlive it, so it is copied (`to_owned`, a rule
    /// like any other, in every mode).
    fn owned_output(&mut self, out: &mut Stmts, v: Val, span: Span) -> Val {
        match v {
            Val::Atom(Atom::Var(f)) if self.fields.contains(&f) => {
                let Some(rule) = ops::method("to_owned") else {
                    return Val::Atom(Atom::Var(f));
                };
                let native = Native::Method {
                    name: Ident::new("to_owned", span),
                    suffix: TokenStream::new(),
                };
                let operand = Arg {
                    atom: Atom::Var(f),
                    by_ref: false,
                };
                Val::Atom(self.prim(out, rule, vec![operand], vec![], native, span))
            }
            Val::Tuple(vs) => Val::Tuple(
                vs.into_iter()
                    .map(|v| self.owned_output(out, v, span))
                    .collect(),
            ),
            other => other,
        }
    }

    /// `v` taken apart, where it is a tuple made at run time, to the tuple structure
    /// of `shape`.
    pub(super) fn conform(
        &mut self,
        out: &mut Stmts,
        v: Val,
        shape: &Val,
        at: &dyn ToTokens,
    ) -> Val {
        match (v, shape) {
            (Val::Atom(Atom::Var(var)), Val::Tuple(parts)) => {
                let fields = self.split_runtime_tuple(out, var, parts.len(), at);
                let conformed = fields
                    .into_iter()
                    .zip(parts)
                    .map(|(f, p)| self.conform(out, f, p, at))
                    .collect();
                Val::Tuple(conformed)
            }
            (Val::Tuple(vs), Val::Tuple(parts)) if vs.len() == parts.len() => Val::Tuple(
                vs.into_iter()
                    .zip(parts)
                    .map(|(v, p)| self.conform(out, v, p, at))
                    .collect(),
            ),
            (v, _) => v,
        }
    }

    pub(super) fn defined_as_const(&self, out: &Stmts, v: Var) -> bool {
        out.iter().rev().any(
            |s| matches!(s, Stmt::Let { dst, op: Op::Const(_) | Op::Lifted { .. } | Op::Build { .. }, .. } if *dst == v),
        )
    }
}
