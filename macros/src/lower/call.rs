//! Calls: methods (rules, a module's `call`, a parameter read), paths (functions
//! and their companions), `mapv` and the variadic rules.

use super::*;

impl Lowerer<'_> {
    pub(super) fn method_call(&mut self, out: &mut Stmts, m: &syn::ExprMethodCall) -> Val {
        let name = m.method.to_string();
        if !self.mentions_local(m.to_token_stream()) {
            return Val::Atom(self.constant(out, &Expr::MethodCall(m.clone())));
        }
        // A call given a closure (`ids.map(|i| ..)`, `iter().map(..)`) other than
        // `mapv`: one constant expression as written, so that the closure's types come
        // from the call; a differentiated value in it is an error (see `Built`).
        if name != "mapv" && m.args.iter().any(is_closure) {
            return self.closure_call(out, &Expr::MethodCall(m.clone()));
        }
        let recv_is_self = matches!(&*m.receiver, Expr::Path(p) if p.path.is_ident("self"));
        if (name == "unwrap" || name == "expect") && !recv_is_self {
            if let Expr::MethodCall(inner) = &*m.receiver
                && let Some(rule) = ops::unwrapped_method(&inner.method.to_string())
            {
                let suffix = m.method.to_token_stream();
                let args = m.args.iter().map(|a| self.verbatim(a.to_token_stream()));
                let suffix = quote!(.#suffix(#(#args),*));
                return self.method_prim(out, inner, rule, suffix);
            }
            if let Expr::Call(c) = &*m.receiver
                && let Some(v) = self.variadic(out, c)
            {
                return v;
            }
            if let Expr::MethodCall(inner) = &*m.receiver
                && (inner.method == "apply" || inner.method == "apply_with")
                && self.mentions_local(inner.args.to_token_stream())
            {
                // `model.apply(vars, x).unwrap()`, `model.apply_with(vars, options,
                // x).unwrap()`: the module applied to variables.
                return self.applied(out, inner);
            }
        }
        if matches!(
            name.as_str(),
            "__apply_jvp_all"
                | "__apply_with_jvp_all"
                | "__apply_tjvp_all"
                | "__apply_with_tjvp_all"
        ) && !recv_is_self
        {
            // What forward mode writes for `model.apply(vars, x..).unwrap()`: the
            // module's forward mode, applied to variables, differentiated as `apply`.
            return self.applied(out, m);
        }
        if recv_is_self {
            return self.method_companion(out, m);
        }
        if (!is_param_read(&m.method) && self.is_scope(&m.receiver))
            || (self.is_scope_effect(&m.receiver) && !self.mentions_local(m.args.to_token_stream()))
        {
            // State and randomness (`cx.variable`, `cx.put`, `cx.sow`, `cx.make_rng`,
            // `cx.bind`): effects whose values carry no derivative, as Flax's mutable
            // collections are not differentiated.
            return Val::Atom(self.constant(out, &Expr::MethodCall(m.clone())));
        }
        if ops::IDENTITY_METHODS.contains(&name.as_str()) && m.args.is_empty() {
            return self.expr(out, &m.receiver);
        }
        if ops::CONSTANT_METHODS.contains(&name.as_str()) {
            return Val::Atom(self.constant(out, &Expr::MethodCall(m.clone())));
        }
        if name == "iter" && m.args.is_empty() {
            return self.iterator(out, m);
        }
        if name == "mapv" {
            return self.mapv(out, m);
        }
        if ops::unwrapped_method(&name).is_some() {
            self.cx.error_at(&m.method, format!("`{name}` returns an Option or Result: call `.unwrap()` on it directly, as in `x.{name}(..).unwrap()`"));
            return poison();
        }
        // (With a turbofish it is another type's method: `iter().sum::<f64>()`.)
        if let Some(rule) = ops::method(&name).filter(|_| m.turbofish.is_none()) {
            return self.method_prim(out, m, rule, TokenStream::new());
        }
        self.method_companion(out, m)
    }

    /// `x.iter()`: an iterator, emitted as written (`let mut`: its adaptors take it by
    /// `&mut`, `x.iter().position(..)`); where it feeds a derivative of a
    /// differentiated `x`, an error (see `Built::Iter`), never a silent constant.
    fn iterator(&mut self, out: &mut Stmts, m: &syn::ExprMethodCall) -> Val {
        let receiver = self.expr(out, &m.receiver);
        let mut reads = Vec::new();
        receiver.flatten(&mut reads);
        let base = self.val_tokens(&receiver);
        let op = Op::Build {
            tokens: quote!(#base.iter()),
            reads: reads.iter().filter_map(Atom::var).collect(),
            what: Built::Iter,
        };
        let value = self.emit(out, op, m.span());
        if let Atom::Var(v) = value {
            self.vars[v.0 as usize].mutable = true;
        }
        Val::Atom(value)
    }

    pub(super) fn method_prim(
        &mut self,
        out: &mut Stmts,
        m: &syn::ExprMethodCall,
        rule: &'static Rule,
        suffix: TokenStream,
    ) -> Val {
        let span = m.method.span();
        let n_operand_args = rule.operands.saturating_sub(1);
        let n_args = n_operand_args + rule.const_args();
        if m.args.len() != n_args {
            self.cx.error_at(
                m,
                format!("`{}` takes {} argument(s) here", m.method, n_args),
            );
            return poison();
        }
        let mut operands = vec![self.operand(out, &m.receiver)];
        for a in m.args.iter().take(n_operand_args) {
            operands.push(self.operand(out, a));
        }
        let consts = m
            .args
            .iter()
            .skip(n_operand_args)
            .map(|a| self.const_atom(out, a))
            .collect();
        let native = Native::Method {
            name: m.method.clone(),
            suffix,
        };
        Val::Atom(self.prim(out, rule, operands, consts, native, span))
    }

    /// Whether `e` is a call of the scope's state or randomness methods
    /// (`cx.make_rng("dropout")`), so that a method on its result
    /// (`cx.make_rng(..).random()`) is a constant as a whole.
    pub(super) fn is_scope_effect(&mut self, e: &Expr) -> bool {
        match e {
            Expr::MethodCall(m) => {
                (!is_param_read(&m.method) && self.is_scope(&m.receiver))
                    || (self.is_scope_effect(&m.receiver)
                        && !self.mentions_local(m.args.to_token_stream()))
            }
            Expr::Paren(p) => self.is_scope_effect(&p.expr),
            _ => false,
        }
    }

    /// Whether `e` names the module's scope.
    pub(super) fn is_scope(&mut self, e: &Expr) -> bool {
        let Expr::Path(p) = e else { return false };
        let Some(id) = p.path.get_ident() else {
            return false;
        };
        matches!(self.lookup(&id.to_string()), Some(Val::Atom(Atom::Var(v))) if self.scopes_vars.contains(&v))
    }

    /// How a call involves the scope: `cx.param(..)`, or a submodule's call taking `cx`.
    pub(super) fn scoped(&self, receiver: Option<&Arg>, name: &Ident, args: &[Arg]) -> Scoped {
        let is_scope = |a: &Arg| a.atom.var().is_some_and(|v| self.scopes_vars.contains(&v));
        if receiver.is_some_and(is_scope) {
            return if is_param_read(name) {
                Scoped::Param
            } else {
                Scoped::No
            };
        }
        if args.iter().any(is_scope) {
            return Scoped::Module;
        }
        Scoped::No
    }

    /// `model.apply(vars, x..)` (and `apply_with`, and forward mode's
    /// `__apply_jvp_all`, `__apply_with_jvp_all`, `__apply_tjvp_all`): a call of the
    /// module applied to variables, differentiated through its companion with the
    /// variables' cotangents.
    fn applied(&mut self, out: &mut Stmts, m: &syn::ExprMethodCall) -> Val {
        let span = m.method.span();
        let receiver = self.receiver(out, &m.receiver, span);
        let args = self.args(out, m.args.iter().cloned());
        let call = Call {
            callee: Callee::Method {
                receiver,
                name: m.method.clone(),
                generics: m.turbofish.to_token_stream(),
            },
            args,
            span,
            scoped: Scoped::Apply,
        };
        Val::Atom(self.emit(out, Op::Call(call), span))
    }

    /// A method's receiver as an operand (`&x` passes `x` by reference).
    pub(super) fn receiver(&mut self, out: &mut Stmts, recv: &Expr, span: Span) -> Arg {
        let by_ref = matches!(recv, Expr::Reference(_));
        let val = self.expr(out, recv);
        Arg {
            atom: self.atom(val, span),
            by_ref,
        }
    }

    pub(super) fn method_companion(&mut self, out: &mut Stmts, m: &syn::ExprMethodCall) -> Val {
        let span = m.method.span();
        let receiver = self.receiver(out, &m.receiver, span);
        let args = self.args(out, m.args.iter().cloned());
        let generics = m.turbofish.to_token_stream();
        let scoped = self.scoped(Some(&receiver), &m.method, &args);
        let call = Call {
            callee: Callee::Method {
                receiver,
                name: m.method.clone(),
                generics,
            },
            args,
            span,
            scoped,
        };
        Val::Atom(self.emit(out, Op::Call(call), span))
    }

    /// `pb(ct)` where `pb` is the pullback of a lifted `vjp!` (in this block or an
    /// enclosing one): a statement second order goes through (see
    /// [`LiftedKind::Pull`]).
    fn pullback_call(&mut self, out: &mut Stmts, c: &syn::ExprCall) -> Option<Val> {
        let Expr::Path(p) = &*c.func else {
            return None;
        };
        let Some(Val::Atom(Atom::Var(pb))) = self.lookup(&p.path.get_ident()?.to_string()) else {
            return None;
        };
        let vjp = self.vjps.get(&pb)?.clone();
        if c.args.len() != 1 {
            return None;
        }
        let ct = self.operand(out, &c.args[0]);
        let dsts: Vec<Var> = (0..=vjp.args.len()).map(|_| self.temp(c.span())).collect();
        let tokens = self.verbatim(c.to_token_stream());
        out.push(Stmt::LetLifted(Lifted {
            kind: LiftedKind::Pull {
                y: vjp.dsts[0],
                aux: matches!(vjp.kind, LiftedKind::Vjp { aux: Some(_) }),
            },
            dsts: dsts.clone(),
            tokens,
            args: std::iter::once(ct)
                .chain(vjp.args.iter().cloned())
                .collect(),
            ..vjp
        }));
        Some(super::lifted::vars(dsts))
    }

    /// Whether `c` calls a value an opaque lifted op made (`pb` of a `vjp!`).
    pub(super) fn calls_lifted(&mut self, c: &syn::ExprCall) -> bool {
        let Expr::Path(p) = &*c.func else {
            return false;
        };
        let Some(id) = p.path.get_ident() else {
            return false;
        };
        self.is_local(&id.to_string())
            && matches!(self.lookup(&id.to_string()), Some(Val::Atom(Atom::Var(v))) if self.lifted.contains_key(&v))
    }

    pub(super) fn call_target(&mut self, out: &mut Stmts, e: &Expr) -> Option<Call> {
        match e {
            Expr::Call(c) if self.calls_lifted(c) => None,
            Expr::Call(c) => {
                if let Expr::Macro(m) = &*c.func {
                    let (rewritten, check) = companion_call(m, c)?;
                    if let Some(check) = check {
                        self.emit(out, Op::Const(check), c.span());
                    }
                    return Some(self.path_call(out, &rewritten, Some(true)));
                }
                let Expr::Path(p) = &*c.func else { return None };
                let last = p.path.segments.last()?;
                let name = last.ident.to_string();
                if name == "no_grad"
                    || ops::function(&p.path).is_some()
                    || ops::elementwise_function(&name).is_some()
                {
                    return None;
                }
                Some(self.path_call(out, c, None))
            }
            Expr::MethodCall(m) => {
                let name = m.method.to_string();
                if ops::method(&name).is_some()
                    && !matches!(&*m.receiver, Expr::Path(p) if p.path.is_ident("self"))
                {
                    return None;
                }
                if name == "unwrap" || name == "expect" {
                    // `apply(..).unwrap()` and fused primitives: lowered as expressions.
                    return None;
                }
                let recv_by_ref = matches!(&*m.receiver, Expr::Reference(_));
                let recv = self.expr(out, &m.receiver);
                let receiver = Arg {
                    atom: self.atom(recv, m.span()),
                    by_ref: recv_by_ref,
                };
                let args = self.args(out, m.args.iter().cloned());
                let generics = m.turbofish.to_token_stream();
                let scoped = self.scoped(Some(&receiver), &m.method, &args);
                Some(Call {
                    callee: Callee::Method {
                        receiver,
                        name: m.method.clone(),
                        generics,
                    },
                    args,
                    span: m.method.span(),
                    scoped,
                })
            }
            _ => None,
        }
    }

    /// A call of a function by path; `assoc` overrides whether it is an associated
    /// function (else: the segment before its name is `Self` or a type's name).
    pub(super) fn path_call(
        &mut self,
        out: &mut Stmts,
        c: &syn::ExprCall,
        assoc: Option<bool>,
    ) -> Call {
        let Expr::Path(p) = &*c.func else {
            unreachable!("checked by the caller")
        };
        let mut path = p.path.clone();
        let last = path
            .segments
            .pop()
            .expect("a path has a segment")
            .into_value();
        // `f::jvp_all` (what forward mode calls) lives on the struct `f`, as do the
        // companions of its own companions (`f::__jvp_jvp_all`, third order).
        let assoc = assoc.unwrap_or_else(|| {
            last.ident == "jvp_all"
                || last.ident.to_string().starts_with("__")
                || path.segments.last().is_some_and(|s| {
                    s.ident == "Self"
                        || s.ident
                            .to_string()
                            .starts_with(|c: char| c.is_ascii_uppercase())
                })
        });
        let leading = path.leading_colon;
        let segs = path.segments.iter();
        let prefix = quote!(#leading #(#segs ::)*);
        let generics = last.arguments.to_token_stream();
        let args = self.args(out, c.args.iter().cloned());
        let scoped = self.scoped(None, &last.ident, &args);
        Call {
            callee: Callee::Path {
                prefix,
                name: last.ident,
                generics,
                assoc,
            },
            args,
            span: c.span(),
            scoped,
        }
    }

    pub(super) fn call(&mut self, out: &mut Stmts, c: &syn::ExprCall) -> Val {
        let span = c.span();
        if c.args.iter().any(is_closure) && self.mentions_local(c.to_token_stream()) {
            return self.closure_call(out, &Expr::Call(c.clone()));
        }
        if let Expr::Macro(m) = &*c.func {
            // `jvp!(f)(args..)`, `grad!(f)(args..)`: a call of the companion `f::jvp`,
            // `f::grad_fn`.
            if let Some((rewritten, check)) = companion_call(m, c) {
                if let Some(check) = check {
                    self.emit(out, Op::Const(check), span);
                }
                if !self.mentions_local(c.args.to_token_stream()) {
                    return Val::Atom(self.constant(out, &Expr::Call(rewritten)));
                }
                let call = self.path_call(out, &rewritten, Some(true));
                return Val::Atom(self.emit(out, Op::Call(call), span));
            }
        }
        let Expr::Path(p) = &*c.func else {
            self.cx.error_at(
                &c.func,
                "only calls of named functions can be differentiated",
            );
            return poison();
        };
        if let Some(id) = p.path.get_ident()
            && let Some(def) = self.inlined_fn(&id.to_string())
        {
            match &def.unsupported {
                None => return self.inline_call(out, c, &id.to_string(), &def),
                Some(why) if self.mentions_local(c.args.to_token_stream()) => {
                    self.cx.error_at(c, why);
                    return poison();
                }
                Some(_) => {}
            }
        }
        let segs: Vec<String> = p
            .path
            .segments
            .iter()
            .map(|s| s.ident.to_string())
            .collect();
        let name = segs.last().cloned().unwrap_or_default();
        if name == "no_grad" {
            if c.args.len() != 1 {
                self.cx.error_at(c, "`no_grad` takes one argument");
            }
            // The first argument alone: `no_grad(x,)` (rustfmt's trailing comma) is
            // still `x`, not the tuple `(x,)`.
            let arg = c
                .args
                .first()
                .map(|a| a.to_token_stream())
                .unwrap_or_default();
            let tokens = self.verbatim(arg);
            return Val::Atom(self.emit(out, Op::Const(quote!((#tokens))), span));
        }
        // A call of what a lifted transform returned (`pb(ct)` of a `vjp!` in this
        // block: differentiated again; else opaque).
        if self.calls_lifted(c) {
            if let Some(v) = self.pullback_call(out, c) {
                return v;
            }
            return Val::Atom(self.opaque_lifted(out, c.to_token_stream(), span));
        }
        if !self.mentions_local(c.args.to_token_stream()) {
            return Val::Atom(self.constant(out, &Expr::Call(c.clone())));
        }
        // `f64::sin(x)`, `f32::max(a, b)`: a method of the table called as a function.
        if segs.len() == 2
            && (segs[0] == "f32" || segs[0] == "f64")
            && let (Some(rule), Some(first)) = (ops::method(&name), c.args.first())
        {
            let m: syn::ExprMethodCall = syn::ExprMethodCall {
                attrs: vec![],
                receiver: Box::new(first.clone()),
                dot_token: Default::default(),
                method: Ident::new(&name, p.span()),
                turbofish: None,
                paren_token: c.paren_token,
                args: c.args.iter().skip(1).cloned().collect(),
            };
            return self.method_prim(out, &m, rule, TokenStream::new());
        }
        if let Some(rule) = ops::function(&p.path).or_else(|| ops::elementwise_function(&name)) {
            let n_args = rule.operands + rule.const_args();
            if c.args.len() != n_args {
                self.cx
                    .error_at(c, format!("`{name}` takes {n_args} argument(s)"));
                return poison();
            }
            let operands = c
                .args
                .iter()
                .take(rule.operands)
                .map(|a| self.operand(out, a))
                .collect();
            // A constant the rule takes by reference is written `&c` in a call of
            // its function (`permuted_axes(&x, &axes)`): the rule adds the `&`.
            let consts = c
                .args
                .iter()
                .skip(rule.operands)
                .map(|a| match a {
                    Expr::Reference(r) if rule.consts_by_ref => self.const_atom(out, &r.expr),
                    a => self.const_atom(out, a),
                })
                .collect();
            let native = Native::Function(c.func.to_token_stream());
            return Val::Atom(self.prim(out, rule, operands, consts, native, span));
        }
        if name == "concatenate" || name == "stack" {
            self.cx.error_at(
                c,
                format!("`{name}` returns a Result: call `.unwrap()` on it directly"),
            );
            return poison();
        }
        let call = self.path_call(out, c, None);
        Val::Atom(self.emit(out, Op::Call(call), span))
    }

    /// `concatenate(axis, &[a, b, ..]).unwrap()` and `stack(..)`.
    pub(super) fn variadic(&mut self, out: &mut Stmts, c: &syn::ExprCall) -> Option<Val> {
        let Expr::Path(p) = &*c.func else { return None };
        let name = p.path.segments.last()?.ident.to_string();
        let rule = match name.as_str() {
            "concatenate" => &ops::CONCATENATE,
            "stack" => &ops::STACK,
            _ => return None,
        };
        let span = c.span();
        let (Some(axis), Some(list)) = (c.args.first(), c.args.iter().nth(1)) else {
            self.cx
                .error_at(c, format!("`{name}` takes an axis and a list of arrays"));
            return Some(poison());
        };
        let list = match list {
            Expr::Reference(r) => &*r.expr,
            other => other,
        };
        let Expr::Array(items) = list else {
            self.cx.error_at(list, format!("`{name}` is differentiated with a literal list of arrays: `{name}(axis, &[a.view(), b.view()])`"));
            return Some(poison());
        };
        let operands = items
            .elems
            .iter()
            .map(|item| self.operand(out, item))
            .collect();
        let axis = self.const_atom(out, axis);
        let native = Native::Variadic(c.func.to_token_stream());
        Some(Val::Atom(self.prim(
            out,
            rule,
            operands,
            vec![axis],
            native,
            span,
        )))
    }

    pub(super) fn mapv(&mut self, out: &mut Stmts, m: &syn::ExprMethodCall) -> Val {
        let span = m.method.span();
        // `x.mapv(f64::ln)` is `x.ln()`: the elementwise rule of that name.
        if let Some(Expr::Path(p)) = m.args.first()
            && p.path.segments.len() > 1
            && let Some(f) = p.path.segments.last()
            && ops::unary(&f.ident.to_string()).is_some()
        {
            let (recv, method) = (&m.receiver, &f.ident);
            let call: syn::ExprMethodCall = syn::parse_quote_spanned!(span=> #recv.#method());
            return self.method_call(out, &call);
        }
        let Some(Expr::Closure(cl)) = m.args.first() else {
            self.cx.error_at(
                m,
                "`mapv` is differentiated with a closure argument, `x.mapv(|v| ..)`, or an elementwise method, `x.mapv(f64::ln)`",
            );
            return poison();
        };
        if cl.inputs.len() != 1 {
            self.cx
                .error_at(&cl.inputs, "the closure of `mapv` takes one argument");
            return poison();
        }
        let recv = self.expr(out, &m.receiver);
        let recv = self.atom(recv, span);
        // The closure sees this body's variables by their current names.
        let mut env = OuterEnv::new();
        for scope in &self.scopes {
            for (k, v) in scope {
                let mut atoms = Vec::new();
                v.flatten(&mut atoms);
                let names = atoms
                    .iter()
                    .filter_map(|a| a.var())
                    .map(|var| (var, self.vars[var.0 as usize].name.clone()))
                    .collect();
                env.insert(k.clone(), (v.clone(), names));
            }
        }
        let block: syn::Block = match &*cl.body {
            Expr::Block(b) => b.block.clone(),
            other => syn::parse_quote_spanned!(other.span()=> { #other }),
        };
        let params = [ParamSpec {
            pat: &cl.inputs[0],
            active: true,
            scope: false,
            scalar: true,
            reference: false,
        }];
        let closure = lower_with(self.cx, &params, &block, env);
        let native = self.verbatim(cl.to_token_stream());
        let captured = closure
            .free
            .iter()
            .map(|(_, outer)| Atom::Var(*outer))
            .collect();
        Val::Atom(self.emit(
            out,
            Op::MapV {
                recv,
                closure: Box::new(closure),
                native,
                captured,
            },
            span,
        ))
    }
}

/// The scope's reads of differentiated values: `cx.param(..)`, and in forward mode
/// along the variables `cx.param_tangent(..)` (the tangent of a parameter, whose
/// cotangent is that of the variables' tangent: second order along them).
fn is_param_read(method: &Ident) -> bool {
    method == "param" || method == "param_tangent"
}
