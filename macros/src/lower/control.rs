//! Control flow: `if` and `match` in expression position, with the outer
//! variables their arms assign, and loops with their carried values.

use super::*;

impl Lowerer<'_> {
    /// The outer variables that `stmts` assign, by the scope they live in.
    pub(super) fn assigned_outer(&self, tokens: TokenStream) -> Vec<(usize, String)> {
        let mut names = Vec::new();
        assigned_names(tokens, &mut names);
        let mut seen = HashSet::new();
        names
            .into_iter()
            .filter(|n| seen.insert(n.clone()))
            .filter_map(|n| self.scope_of(&n).map(|d| (d, n)))
            .filter(|(_, n)| {
                matches!(
                    self.scopes.iter().rev().find_map(|s| s.get(n)),
                    Some(Val::Atom(_))
                )
            })
            .collect()
    }

    /// An `if` or `match` in expression position: its arms give the value and the
    /// new values of the outer variables they assign.
    pub(super) fn branch_stmt(
        &mut self,
        out: &mut Stmts,
        e: &Expr,
        i: Option<&syn::ExprIf>,
        m: Option<&syn::ExprMatch>,
    ) -> Val {
        if may_diverge(e) {
            self.cx.error_at(
                e,
                "a branch that may `return`, `break` or `continue` must be a statement of its own",
            );
            return poison();
        }
        let region = Region {
            carries: self.assigned_outer(e.to_token_stream()),
        };
        let before: Vec<Val> = region
            .carries
            .iter()
            .map(|(d, n)| self.scopes[*d][n].clone())
            .collect();
        let mut arm_blocks = Vec::new();
        let kind = if let Some(i) = i {
            let cond = self.condition(&i.cond);
            arm_blocks.push(self.block(&i.then_branch.stmts, &region, LeafKind::Fallthrough));
            self.restore(&region, &before);
            arm_blocks.push(self.block(
                &else_stmts(&i.else_branch),
                &region,
                LeafKind::Fallthrough,
            ));
            self.restore(&region, &before);
            BranchKind::If { cond }
        } else {
            let m = m.expect("an if or a match");
            let (scrutinee, pats) = self.match_head(m);
            let mut binds = Vec::new();
            for arm in &m.arms {
                self.push_scope();
                binds.push(self.bind_pattern_names(&arm.pat));
                arm_blocks.push(self.block(&arm_stmts(&arm.body), &region, LeafKind::Fallthrough));
                self.pop_scope();
                self.restore(&region, &before);
            }
            BranchKind::Match {
                scrutinee,
                pats,
                binds,
            }
        };
        if arm_blocks.len() > 8 {
            self.cx
                .error_at(e, "a differentiated `match` may have at most 8 arms");
        }
        // An arm whose value is a tuple made at run time (a call's result, a constant)
        // takes the shape of the arms that spell their tuples out.
        let spelled = leaf_values(&arm_blocks)
            .into_iter()
            .flatten()
            .reduce(|a, b| most_spelled(&a, &b));
        if let Some(shape) = spelled.filter(|s| matches!(s, Val::Tuple(_))) {
            for arm in arm_blocks.iter_mut() {
                let Block { stmts, tail } = arm;
                if let Tail::Leaf(l) = tail
                    && matches!(l.kind, LeafKind::Fallthrough | LeafKind::Break)
                    && let Some(v) = l.value.take()
                {
                    l.value = Some(self.conform(stmts, v, &shape, e));
                }
            }
        }
        // The value's shape comes from the first arm; every arm must agree.
        let shape = leaf_values(&arm_blocks).into_iter().next().flatten();
        let mut value_atoms = Vec::new();
        if let Some(shape) = &shape {
            shape.flatten(&mut value_atoms);
        }
        let n_value = value_atoms.len();
        for v in leaf_values(&arm_blocks) {
            let mut atoms = Vec::new();
            if let Some(v) = v {
                v.flatten(&mut atoms);
            }
            if atoms.len() != n_value {
                self.cx
                    .error_at(e, "the arms of this branch give values of different shapes");
                return poison();
            }
        }
        let mut phis = Vec::new();
        for _ in 0..n_value {
            phis.push(self.temp(e.span()));
        }
        for (depth, name) in &region.carries {
            let id = crate::hygiene::ident(name, Span::call_site());
            let v = self.fresh_user(&id);
            phis.push(v);
            self.scopes[*depth].insert(name.clone(), Val::Atom(Atom::Var(v)));
        }
        let value = match shape {
            Some(shape) => shape.rebuild(&mut phis[..n_value].iter().map(|v| Atom::Var(*v))),
            None => Val::Tuple(vec![]),
        };
        out.push(Stmt::If {
            branch: Branching {
                kind,
                arms: arm_blocks,
            },
            phis,
        });
        value
    }

    pub(super) fn restore(&mut self, region: &Region, before: &[Val]) {
        for ((d, n), v) in region.carries.iter().zip(before) {
            self.scopes[*d].insert(n.clone(), v.clone());
        }
    }

    /// The variables whose elements an iterator over `e` yields: the locals at the
    /// root of its method chain and in its arguments (`x` of `x.iter()`, `x` and
    /// `y` of `x.iter().zip(y)`, what a closure in the chain reads), none of a range
    /// (`0..x.len()`), a field of `self` or a literal.
    fn item_sources(&mut self, e: &Expr) -> Vec<Var> {
        match e {
            Expr::Paren(p) => self.item_sources(&p.expr),
            Expr::Group(g) => self.item_sources(&g.expr),
            Expr::Reference(r) => self.item_sources(&r.expr),
            Expr::Index(i) => self.item_sources(&i.expr),
            Expr::Field(f) => self.item_sources(&f.base),
            Expr::Path(_) | Expr::Closure(_) => self.mentioned_vars(e.to_token_stream()),
            Expr::MethodCall(m) => {
                let mut vars = self.item_sources(&m.receiver);
                for a in &m.args {
                    vars.extend(self.item_sources(a));
                }
                vars
            }
            Expr::Call(c) => c.args.iter().flat_map(|a| self.item_sources(a)).collect(),
            Expr::Tuple(t) => t.elems.iter().flat_map(|a| self.item_sources(a)).collect(),
            Expr::Array(a) => a.elems.iter().flat_map(|a| self.item_sources(a)).collect(),
            _ => Vec::new(),
        }
    }

    pub(super) fn loop_stmt(&mut self, out: &mut Stmts, e: &Expr) -> Val {
        let span = e.span();
        let (kind, body_stmts, label): (LoopKind, Vec<syn::Stmt>, _) = match e {
            Expr::ForLoop(f) => {
                let pat = f.pat.to_token_stream();
                let iter = self.verbatim(f.expr.to_token_stream());
                let sources = self.item_sources(&f.expr);
                (
                    LoopKind::For {
                        pat,
                        iter,
                        binds: Vec::new(),
                        sources,
                        iter_span: f.expr.span(),
                    },
                    f.body.stmts.clone(),
                    &f.label,
                )
            }
            Expr::While(w) => {
                let cond = &w.cond;
                if let Expr::Let(l) = &**cond {
                    self.cx.error_at(
                        l,
                        "`while let` is not supported in a #[differentiable] body",
                    );
                }
                let mut stmts: Vec<syn::Stmt> =
                    vec![syn::parse_quote_spanned!(cond.span()=> if !(#cond) { break; })];
                stmts.extend(w.body.stmts.iter().cloned());
                (LoopKind::Loop, stmts, &w.label)
            }
            Expr::Loop(l) => (LoopKind::Loop, l.body.stmts.clone(), &l.label),
            _ => unreachable!("a loop"),
        };
        if let Some(label) = label {
            self.cx.error_at(
                label,
                "labelled loops are not supported in a #[differentiable] body",
            );
        }
        if contains_return(&body_stmts) {
            self.cx.error_at(e, "`return` inside a loop is not supported in a #[differentiable] body; `break` with a value instead");
            return poison();
        }
        let body_tokens = quote!(#(#body_stmts)*);
        let region = Region {
            carries: self.assigned_outer(body_tokens),
        };
        let mut carries = Vec::new();
        for (depth, name) in &region.carries {
            let Some(Val::Atom(init)) = self.scopes[*depth].get(name).cloned() else {
                continue;
            };
            let id = crate::hygiene::ident(name, Span::call_site());
            let inner = self.fresh_user(&id);
            self.scopes[*depth].insert(name.clone(), Val::Atom(Atom::Var(inner)));
            carries.push((init, inner));
        }
        self.push_scope();
        let mut kind = kind;
        if let LoopKind::For { pat, binds, .. } = &mut kind {
            // The loop variable: a constant, named as the user wrote it.
            let p = Pat::parse_single
                .parse2(pat.clone())
                .unwrap_or(Pat::Verbatim(pat.clone()));
            *binds = self.bind_pattern_names(&p);
        }
        let body = self.block(&body_stmts, &region, LeafKind::Continue);
        self.pop_scope();
        let mut carries_ir = Vec::new();
        for ((depth, name), (init, inner)) in region.carries.iter().zip(carries) {
            let id = crate::hygiene::ident(name, Span::call_site());
            let out_var = self.fresh_user(&id);
            self.scopes[*depth].insert(name.clone(), Val::Atom(Atom::Var(out_var)));
            carries_ir.push(Carry {
                init,
                inner,
                out: out_var,
            });
        }
        let has_value = leaf_values(std::slice::from_ref(&body))
            .into_iter()
            .any(|v| v.is_some());
        let value = has_value.then(|| self.temp(span));
        out.push(Stmt::Loop(Loop {
            kind,
            carries: carries_ir,
            body,
            value,
            span,
        }));
        match value {
            Some(v) => Val::Atom(Atom::Var(v)),
            None => Val::Tuple(vec![]),
        }
    }
}
