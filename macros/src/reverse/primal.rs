//! The primal pass: each statement as the user wrote it or through its rule, with
//! what the reverse sweep reads recorded (a branch's arm and values, a loop's tape)
//! and temporaries handed over to the rule that reads them last.

use super::*;

impl<'a> Gen<'a> {
    /// An atom used by value: a variable the reverse sweep also reads, one that
    /// belongs to an enclosing block, or one lowering reused for a later occurrence of
    /// its computation, is cloned (free for `Copy` scalars).
    pub(super) fn by_value(&self, a: &Atom, outer: bool, also_moved: &[Slot]) -> TokenStream {
        match a {
            Atom::Var(v) => {
                let name = self.name(*v);
                if outer
                    || also_moved.contains(&Slot::Var(*v))
                    || self.reads_all.contains(&Slot::Var(*v))
                    || self.f.vars[v.0 as usize].shared
                {
                    quote!(::core::clone::Clone::clone(&#name))
                } else {
                    quote!(#name)
                }
            }
            Atom::Lit(t) => t.clone(),
        }
    }

    /// An argument as the user wrote it (`&x` or `x`); a moved variable the reverse
    /// sweep reads is cloned.
    pub(super) fn arg(&self, a: &Arg) -> TokenStream {
        if a.by_ref {
            let x = self.atom(&a.atom);
            quote!(&#x)
        } else {
            self.by_value(&a.atom, false, &[])
        }
    }

    /// Finds the operands the primal can hand over by value: a temporary that an
    /// active rule with reusing forms reads last (it was computed by a rule, earlier
    /// in the same block, and neither the rest of the block nor the reverse sweep
    /// reads it), so that `(x.dot(w) + b).tanh()` computes the sum and the `tanh` in
    /// the product's buffer instead of allocating twice.
    pub(super) fn plan_moves(&mut self, b: &'a Block) {
        // Temporaries of this block that a rule computed (owned values).
        let computed_here: HashSet<Var> = b
            .stmts
            .iter()
            .filter_map(|s| match s {
                Stmt::Let {
                    dst,
                    op: Op::Prim { rule, .. },
                    ..
                } if !rule.view && (rule.elementwise || rule.func == "dot") => Some(*dst),
                _ => None,
            })
            .collect();
        // Walking backwards, `later` holds what the rest of the block reads.
        let mut later = HashSet::new();
        self.reads_of_tail(b, &mut later);
        for s in b.stmts.iter().rev() {
            match s {
                Stmt::If { branch, .. } => branch.arms.iter().for_each(|a| self.plan_moves(a)),
                Stmt::Loop(lp) => self.plan_moves(&lp.body),
                _ => {}
            }
            if let Stmt::Let {
                dst,
                op:
                    Op::Prim {
                        rule,
                        operands,
                        consts,
                        ..
                    },
                ..
            } = s
                && rule.reusing
                && self.active(*dst)
                && consts.is_empty()
            {
                let movable = |j: usize| {
                    // (A scalar is copied anyway: only arrays gain.)
                    operands[j].atom.var().is_some_and(|v| {
                        self.active(v)
                            && !self.scalar[v.0 as usize]
                            && computed_here.contains(&v)
                            && operands.iter().filter(|a| a.atom.var() == Some(v)).count() == 1
                            && !self.reads_all.contains(&Slot::Var(v))
                            && !later.contains(&v)
                    })
                };
                if let Some(j) = (0..operands.len()).find(|&j| movable(j)) {
                    self.moves.insert((s as *const Stmt, j));
                }
            }
            self.reads_of_stmt(s, &mut later);
        }
        if let Tail::Branch(br) = &b.tail {
            br.arms.iter().for_each(|a| self.plan_moves(a));
        }
    }

    pub(super) fn primal_stmts(&mut self, stmts: &'a [Stmt]) -> TokenStream {
        let mut out = TokenStream::new();
        for s in stmts {
            out.extend(self.primal_stmt(s));
            let defined: Vec<Var> = match s {
                Stmt::Let { dst, .. } => vec![*dst],
                Stmt::LetTuple { dsts, .. } => dsts.clone(),
                Stmt::LetLifted(l) => l.defined(),
                Stmt::If { phis, .. } => phis.clone(),
                Stmt::Loop(lp) => lp.carries.iter().map(|c| c.out).chain(lp.value).collect(),
            };
            out.extend(self.shapes_of(&defined));
        }
        out
    }

    /// `let x_shape = shape_of(&x);` for the variables whose shape the reverse reads.
    pub(super) fn shapes_of(&self, vars: &[Var]) -> TokenStream {
        let mut out = TokenStream::new();
        for v in vars {
            if self.reads_all.contains(&Slot::Shape(*v)) {
                let (name, shape) = (self.name(*v), self.slot_name(Slot::Shape(*v)));
                out.extend(quote!(let #shape = ::adjoint::__private::shape_of(&#name);));
            }
        }
        out
    }

    pub(super) fn primal_stmt(&mut self, s: &'a Stmt) -> TokenStream {
        match s {
            Stmt::Let { dst, op, .. } => {
                let name = self.name(*dst).clone();
                let info = &self.f.vars[dst.0 as usize];
                let mutability = info.mutable.then(|| quote!(mut));
                let plain_name = quote!(#mutability #name);
                let pair_ty = info.ty.as_ref().map(|ty| quote!(: (#ty, _)));
                let name = match &info.ty {
                    Some(ty) => quote!(#mutability #name: #ty),
                    None => quote!(#mutability #name),
                };
                let active = self.active(*dst);
                match op {
                    Op::Prim {
                        rule,
                        operands,
                        consts,
                        native,
                    } => {
                        if active || matches!(native, Native::Rule) {
                            let f = Ident::new(rule.func, Span::call_site());
                            let ops: Vec<TokenStream> = (0..operands.len())
                                .map(|j| self.operand(operands, j))
                                .collect();
                            let cs: Vec<TokenStream> = consts
                                .iter()
                                .map(|c| self.by_value(c, false, &[]))
                                .collect();
                            let moved = (0..operands.len())
                                .find(|&j| self.moves.contains(&(s as *const Stmt, j)));
                            let call = match moved {
                                Some(j) => {
                                    let side = if j == 0 { "" } else { "_rhs" };
                                    let f = format_ident!("{}_reusing{}", rule.func, side);
                                    let args = ops.iter().enumerate().map(|(i, x)| {
                                        if i == j { quote!(#x) } else { quote!(&#x) }
                                    });
                                    if operands.iter().any(
                                        |a| matches!(&a.atom, Atom::Lit(t) if is_float_literal(t)),
                                    ) {
                                        // A literal takes its type from the operand handed
                                        // over: it is made first.
                                        let (lets, args): (Vec<_>, Vec<_>) = args
                                            .enumerate()
                                            .map(|(i, a)| {
                                                let n = format_ident!("__o{}", i);
                                                if i == j {
                                                    (quote!(), a)
                                                } else {
                                                    (quote!(let #n = #a;), quote!(#n))
                                                }
                                            })
                                            .unzip();
                                        quote!({ #(#lets)* ::adjoint::__private::#f(#(#args),*) })
                                    } else {
                                        quote!(::adjoint::__private::#f(#(#args),*))
                                    }
                                }
                                None => fwd_call(rule, &f, &ops, &cs),
                            };
                            quote!(let #name = #call;)
                        } else {
                            let e = self.native(native, operands, consts);
                            quote!(let #name = #e;)
                        }
                    }
                    Op::Call(call) => {
                        let args: Vec<TokenStream> =
                            call.args.iter().map(|a| self.arg(a)).collect();
                        if active {
                            let f = self.companion_for(call);
                            let pb = self.slot_name(Slot::Pb(*dst));
                            quote!(let (#plain_name, #pb) #pair_ty = #f(#(#args),*);)
                        } else {
                            let e = self.inactive_call(call, &args);
                            quote!(let #name = #e;)
                        }
                    }
                    Op::Const(t) | Op::Lifted { tokens: t, .. } | Op::Build { tokens: t, .. } => {
                        quote!(let #name = #t;)
                    }
                    Op::MapV { recv, native, .. } => {
                        let x = self.atom(recv);
                        if active {
                            quote!(let #name = ::adjoint::__private::mapv(&#x, #native);)
                        } else {
                            quote!(let #name = #x.mapv(#native);)
                        }
                    }
                }
            }
            Stmt::LetTuple {
                dsts,
                pattern,
                call,
            } => {
                let names: Vec<TokenStream> = dsts
                    .iter()
                    .map(|d| self.name(*d).to_token_stream())
                    .collect();
                let pat = pattern.render(&names);
                let args: Vec<TokenStream> = call.args.iter().map(|a| self.arg(a)).collect();
                if dsts.iter().any(|d| self.active(*d)) {
                    let f = self.companion_for(call);
                    let pb = self.slot_name(Slot::Pb(dsts[0]));
                    quote!(let (#pat, #pb) = #f(#(#args),*);)
                } else {
                    let e = self.inactive_call(call, &args);
                    quote!(let #pat = #e;)
                }
            }
            Stmt::If { branch, phis } => {
                let payload =
                    |_: &Gen, l: &Leaf, moved: &dyn Fn(&Atom) -> TokenStream| -> Vec<TokenStream> {
                        let mut atoms = Vec::new();
                        if let Some(v) = &l.value {
                            v.flatten(&mut atoms);
                        }
                        atoms.extend(l.carries.iter().cloned());
                        atoms.iter().map(moved).collect()
                    };
                let (names, expr) = self.branch_expr(branch, phis.len(), &payload);
                let phi_names: Vec<&Ident> = phis.iter().map(|p| self.name(*p)).collect();
                quote!(#expr let (#(#phi_names,)*) = (#(#names,)*);)
            }
            Stmt::Loop(lp) => self.primal_loop(lp),
            Stmt::LetLifted(l) => {
                let names: Vec<&Ident> = l.dsts.iter().map(|d| self.name(*d)).collect();
                let tokens = &l.tokens;
                let grads = quote!((#(#names,)*));
                let none = quote!(::core::option::Option::None::<::adjoint::Variables>);
                let (pat, tangents) = match &l.kind {
                    LiftedKind::Grad { value, aux } => {
                        let pat = match (value.map(|v| self.name(v)), aux.map(|a| self.name(a))) {
                            (None, None) => grads,
                            (None, Some(a)) => quote!((#grads, #a)),
                            (Some(v), None) => quote!((#v, #grads)),
                            (Some(v), Some(a)) => quote!(((#v, #a), #grads)),
                        };
                        (pat, none.clone())
                    }
                    // `(y, ty)`; the variables' tangents, unless all are zero (then the
                    // rerun is along the inputs only).
                    LiftedKind::Jvp { var_tangents } => (
                        grads,
                        quote!(::adjoint::__private::kept_tangents(&(#var_tangents))),
                    ),
                    LiftedKind::Vjp { aux: Some(a) } => {
                        let (y, pb, a) = (&names[0], &names[1], self.name(*a));
                        (quote!((#y, #pb, #a)), none)
                    }
                    LiftedKind::Vjp { aux: None } | LiftedKind::Pull { .. } => (grads, none),
                    LiftedKind::Vmap { jvp: true, .. } => (grads, none),
                    LiftedKind::Jacobian | LiftedKind::Vmap { .. } => {
                        let y = &names[0];
                        (quote!(#y), none)
                    }
                };
                if !self.reads_all.contains(&Slot::Pb(l.dsts[0])) {
                    return quote!(let #pat = #tokens;);
                }
                // A pullback's call keeps a copy of its cotangent (the call may move it);
                // the rest it reads is its `vjp!`'s snapshot.
                if matches!(l.kind, LiftedKind::Pull { .. }) {
                    let snap = self.slot_name(Slot::Pb(l.dsts[0]));
                    let ct = self.atom(&l.args[0].atom);
                    return quote! {
                        let #snap = ::adjoint::__private::own(&#ct);
                        let #pat = #tokens;
                    };
                }
                // What the second-order pullback reruns the child on: the scope's state
                // before the transform (variables, random streams), the child's path,
                // and the module (a copy if it is a field of `self`, which the pullback
                // may not borrow).
                let snap = self.slot_name(Slot::Pb(l.dsts[0]));
                let scope = self.atom(&l.scope);
                let module = &l.module;
                let module = if l.keep {
                    quote!(::adjoint::__private::keep_module(&(#module)))
                } else {
                    quote!(#module)
                };
                // Copies of the arguments passed by value (the transform may move
                // them); those passed by reference the sweep reads as any value.
                let args = l.args.iter().map(|a| {
                    if a.by_ref || self.is_reference_param(&a.atom) {
                        quote!(())
                    } else {
                        let x = self.atom(&a.atom);
                        quote!(::adjoint::__private::own(&#x))
                    }
                });
                if !l.input_gradient() {
                    return quote! {
                        let #snap = #scope.rerun_point();
                        let __args = (#(#args,)*);
                        let #pat = #tokens;
                        let #snap = (#snap, #scope.last_child_path(), #module, #tangents, __args);
                    };
                }
                // In a pure scope, the child's input gradient and its VJP (reverse over
                // reverse where the child's body is written back as source: see
                // `__call_body_vjpx`); the rerun stays for where it is not.
                let passed: Vec<TokenStream> = l
                    .args
                    .iter()
                    .map(|a| {
                        let x = self.atom(&a.atom);
                        if a.by_ref { quote!(&#x) } else { quote!(#x) }
                    })
                    .collect();
                // The record is `Ok(pullback)` or `Err(rerun)`. In a pure scope the
                // child's run changes nothing but names, which a rerun sets itself: the
                // rerun point is taken after it, and only where a submodule fell back.
                let child = &l.module;
                quote! {
                    let __args = (#(#args,)*);
                    let (#pat, #snap) = if #scope.is_pure() {
                        let __module = &(#child);
                        #scope.enter_child(::adjoint::scope::Child::child_name(
                            __module,
                            ::core::option::Option::None,
                        ));
                        let (__o, __pb) = ::adjoint::scope::Child::module(__module)
                            .____call_body_vjpx_vjp_params(#scope, #(#passed,)* &::adjoint::__private::unit_seed());
                        #scope.exit();
                        if #scope.take_vjpx_fallback() {
                            let __point = #scope.rerun_point();
                            (__o, ::core::result::Result::Err((__point, #scope.last_child_path(), #module, #tangents, __args)))
                        } else {
                            (__o, ::core::result::Result::Ok(__pb))
                        }
                    } else {
                        let __point = #scope.rerun_point();
                        let __o = #tokens;
                        (__o, ::core::result::Result::Err((__point, #scope.last_child_path(), #module, #tangents, __args)))
                    };
                }
            }
        }
    }

    /// Emits `let (payload.., record) = if .. { .. } else { .. };` and returns the
    /// payload's names and the statement.
    pub(super) fn branch_expr(
        &mut self,
        br: &'a Branching,
        n_payload: usize,
        payload: Payload,
    ) -> (Vec<Ident>, TokenStream) {
        let id = self.br_id(br);
        let recorded = self.recorded.contains(&id);
        let n = br.arms.len();
        let mut arm_exprs = Vec::new();
        for (i, arm) in br.arms.iter().enumerate() {
            let record = recorded.then_some((n, i));
            let bound: &[Var] = match &br.kind {
                BranchKind::Match { binds, .. } => &binds[i],
                BranchKind::If { .. } => &[],
            };
            arm_exprs.push(self.arm_expr(arm, n_payload, payload, record, bound));
        }
        let names: Vec<Ident> = (0..n_payload)
            .map(|_| {
                self.payloads += 1;
                format_ident!("__p{}", self.payloads)
            })
            .collect();
        let rec = recorded.then(|| self.slot_name(Slot::Br(id)));
        let rec_pat = rec.iter();
        let expr = match &br.kind {
            BranchKind::If { cond } => {
                let (a, b) = (&arm_exprs[0], &arm_exprs[1]);
                quote!(if #cond #a else #b)
            }
            BranchKind::Match {
                scrutinee, pats, ..
            } => {
                quote!(match #scrutinee { #(#pats => #arm_exprs)* })
            }
        };
        (
            names.clone(),
            quote!(let (#(#names,)* #(#rec_pat,)*) = #expr;),
        )
    }

    /// An arm as a block expression: its statements, then `(payload.., record)`,
    /// what its pattern bound (`bound`) copied into the record.
    pub(super) fn arm_expr(
        &mut self,
        b: &'a Block,
        n_payload: usize,
        payload: Payload,
        record: Option<(usize, usize)>,
        bound: &[Var],
    ) -> TokenStream {
        let stmts = self.primal_stmts(&b.stmts);
        let slots = self
            .records
            .get(&(b as *const Block))
            .cloned()
            .unwrap_or_default();
        let mut local = HashSet::new();
        block_defs(b, &mut local);
        let (pre, values) = match &b.tail {
            Tail::Leaf(l) => {
                // A value that is also recorded, or that belongs to an enclosing block, is cloned.
                let moved = |a: &Atom| match a.var() {
                    Some(v) => self.by_value(a, !local.contains(&v), &slots),
                    None => self.by_value(a, false, &[]),
                };
                (TokenStream::new(), payload(self, l, &moved))
            }
            Tail::Branch(br) => {
                let (names, expr) = self.branch_expr(br, n_payload, payload);
                (
                    expr,
                    names.into_iter().map(|n| n.to_token_stream()).collect(),
                )
            }
        };
        let rec = record.map(|(n, i)| {
            let names: Vec<TokenStream> = slots
                .iter()
                .map(|s| self.recorded_value(*s, bound))
                .collect();
            let enum_name = format_ident!("Branch{}", n);
            let variant = format_ident!("Arm{}", i);
            quote!(::adjoint::__private::#enum_name::#variant((#(#names,)*)))
        });
        let rec = rec.iter();
        quote!({ #stmts #pre (#(#values,)* #(#rec,)*) })
    }

    /// Slot `s` as a record holds it: what a pattern bound (`bound`) as a copy,
    /// since it may borrow from an argument (`Some(m)` of an `Option<&Array>`, `w`
    /// of `for w in ws.iter()`), which an owning pullback may not; the rest moved.
    fn recorded_value(&self, s: Slot, bound: &[Var]) -> TokenStream {
        let name = self.slot_name(s);
        match s {
            Slot::Var(v) if bound.contains(&v) => quote!({
                use ::adjoint::__private::{KeepCloned as _, KeepOwned as _};
                (&&::adjoint::__private::Keep(&#name)).keep()
            }),
            _ => name,
        }
    }

    pub(super) fn primal_loop(&mut self, lp: &'a Loop) -> TokenStream {
        let id = self.loop_id(lp);
        let taped = self.taped.contains(&id);
        let tape = self.slot_name(Slot::Tape(id));
        let carry_vars: Vec<Ident> = (0..lp.carries.len())
            .map(|k| format_ident!("__carry{}_{}", id, k))
            .collect();
        let mut out = TokenStream::new();
        for (c, cv) in lp.carries.iter().zip(&carry_vars) {
            let init = self.by_value(&c.init, true, &[]);
            out.extend(quote!(let mut #cv = #init;));
        }
        let mut body = TokenStream::new();
        for (c, cv) in lp.carries.iter().zip(&carry_vars) {
            let inner = self.name(c.inner);
            body.extend(quote!(let #inner = #cv;));
        }
        let inners: Vec<Var> = lp.carries.iter().map(|c| c.inner).collect();
        body.extend(self.shapes_of(&inners));
        body.extend(self.primal_stmts(&lp.body.stmts));
        let record = self
            .records
            .get(&(&lp.body as *const Block))
            .cloned()
            .unwrap_or_default();
        let has_value = lp.value.is_some();
        let bound: &[Var] = match &lp.kind {
            LoopKind::For { binds, .. } => binds,
            LoopKind::Loop => &[],
        };
        // The leaf: save the record, pass the carries on, leave if it breaks.
        let leaf_code = |g: &Gen, nexts: Vec<TokenStream>, exit: TokenStream| -> TokenStream {
            let names: Vec<TokenStream> =
                record.iter().map(|s| g.recorded_value(*s, bound)).collect();
            let push = if taped {
                quote!(#tape.push((#(#names,)*));)
            } else {
                TokenStream::new()
            };
            // Carries first: a value also recorded is cloned into the carry, then moved.
            let assigns = carry_vars
                .iter()
                .zip(nexts)
                .map(|(cv, n)| quote!(#cv = #n;));
            quote!(#(#assigns)* #push #exit)
        };
        match &lp.body.tail {
            Tail::Leaf(l) => {
                let mut local = HashSet::new();
                block_defs(&lp.body, &mut local);
                local.extend(lp.carries.iter().map(|c| c.inner));
                let nexts = l
                    .carries
                    .iter()
                    .map(|a| match a.var() {
                        // Not recorded: the carry is its only copy.
                        Some(v) if self.handed_on.contains(&v) => self.atom(a),
                        _ => {
                            self.by_value(a, a.var().is_some_and(|v| !local.contains(&v)), &record)
                        }
                    })
                    .collect();
                let exit = match (l.kind, &l.value) {
                    (LeafKind::Break, Some(v)) if has_value => {
                        let v = self.val_tokens(v);
                        quote!(break #v;)
                    }
                    (LeafKind::Break, _) => quote!(break;),
                    _ => TokenStream::new(),
                };
                body.extend(leaf_code(self, nexts, exit));
            }
            Tail::Branch(br) => {
                let n = lp.carries.len();
                let payload = |g: &Gen,
                               l: &Leaf,
                               moved: &dyn Fn(&Atom) -> TokenStream|
                 -> Vec<TokenStream> {
                    let mut v: Vec<TokenStream> = l.carries.iter().map(moved).collect();
                    v.push(match (l.kind, &l.value) {
                        (LeafKind::Break, Some(val)) if has_value => {
                            let t = g.val_tokens(val);
                            quote!(::core::option::Option::Some(#t))
                        }
                        (LeafKind::Break, _) if has_value => quote!(::core::option::Option::None),
                        (LeafKind::Break, _) => quote!(true),
                        _ if has_value => quote!(::core::option::Option::None),
                        _ => quote!(false),
                    });
                    v
                };
                let (names, expr) = self.branch_expr(br, n + 1, &payload);
                body.extend(expr);
                let nexts = names[..n].iter().map(|n| n.to_token_stream()).collect();
                let flag = &names[n];
                let exit = if has_value {
                    quote!(if let ::core::option::Option::Some(__v) = #flag { break __v; })
                } else {
                    quote!(if #flag { break; })
                };
                body.extend(leaf_code(self, nexts, exit));
            }
        }
        let value = lp.value.map(|v| self.name(v).clone());
        let head = match &lp.kind {
            LoopKind::For { pat, iter, .. } if self.reversed.contains(&id) => {
                let range = self.slot_name(Slot::Range(id));
                out.extend(quote!(let #range = #iter;));
                if taped {
                    out.extend(quote! {
                        let mut #tape = ::std::vec::Vec::with_capacity(::core::iter::Iterator::size_hint(&#range).0);
                    });
                }
                quote!(for #pat in ::core::clone::Clone::clone(&#range))
            }
            LoopKind::For { pat, iter, .. } => {
                if taped {
                    let it = format_ident!("__iter{}", id);
                    out.extend(quote! {
                        let #it = ::core::iter::IntoIterator::into_iter(#iter);
                        let mut #tape = ::std::vec::Vec::with_capacity(::core::iter::Iterator::size_hint(&#it).0);
                    });
                    quote!(for #pat in #it)
                } else {
                    quote!(for #pat in #iter)
                }
            }
            LoopKind::Loop => {
                if taped {
                    out.extend(quote!(let mut #tape = ::std::vec::Vec::new();));
                }
                quote!(loop)
            }
        };
        match value {
            Some(v) => out.extend(quote!(let #v = #head { #body };)),
            None => out.extend(quote!(#head { #body })),
        }
        for (c, cv) in lp.carries.iter().zip(&carry_vars) {
            let o = self.name(c.out);
            out.extend(quote!(let #o = #cv;));
        }
        out
    }

    pub(super) fn val_tokens(&self, v: &Val) -> TokenStream {
        match v {
            Val::Atom(a) => self.by_value(a, false, &[]),
            Val::Tuple(vs) => {
                let items = vs.iter().map(|v| self.val_tokens(v));
                quote!((#(#items,)*))
            }
        }
    }

    pub(super) fn native(&self, native: &Native, operands: &[Arg], consts: &[Atom]) -> TokenStream {
        let ops: Vec<TokenStream> = operands.iter().map(|a| self.arg(a)).collect();
        let cs: Vec<TokenStream> = consts
            .iter()
            .map(|c| self.by_value(c, false, &[]))
            .collect();
        match native {
            Native::Method { name, suffix } => {
                let recv = self.atom(&operands[0].atom);
                let args = ops[1..].iter().chain(&cs);
                quote!(#recv.#name(#(#args),*) #suffix)
            }
            Native::Binary(op) => {
                let (a, b) = (&ops[0], &ops[1]);
                quote!(#a #op #b)
            }
            Native::Neg => {
                let a = &ops[0];
                quote!(-#a)
            }
            Native::Square => {
                // As written: `x * x`, or `&x * &x`.
                let a = &ops[0];
                quote!(#a * #a)
            }
            Native::Index => {
                let a = self.atom(&operands[0].atom);
                let i = &cs[0];
                quote!(#a[#i])
            }
            Native::Cast { ty, deref } => {
                let (a, star) = (&ops[0], deref.then(|| quote!(*)));
                quote!((#star #a as #ty))
            }
            Native::Function(path) => quote!(#path(#(#ops,)* #(#cs),*)),
            Native::Rule => unreachable!("a rule's own function is called as when active"),
            Native::Tuple => quote!((#(#ops,)*)),
            Native::Variadic(path) => {
                let axis = &cs[0];
                let views = operands.iter().map(|a| {
                    let x = self.atom(&a.atom);
                    quote!(#x.view())
                });
                quote!(#path(#axis, &[#(#views),*]).unwrap())
            }
        }
    }

    /// What an active call calls: the callee's companion, `param_at` for a parameter
    /// read (`param_tangent_at` for its tangent's), the parameter-differentiating
    /// companion of a submodule.
    pub(super) fn companion_for(&self, call: &Call) -> TokenStream {
        match (call.scoped, &call.callee) {
            (
                Scoped::Param,
                Callee::Method {
                    receiver,
                    name,
                    generics,
                },
            ) => {
                let r = self.arg(receiver);
                let at = format_ident!("{}_at", name);
                quote!(#r.#at #generics)
            }
            (Scoped::Module, callee) if self.f.params_active => {
                self.companion(callee, "vjp_params")
            }
            // A plain call whose pullback runs in this block may borrow its arguments.
            (Scoped::No, callee) if self.f.local_pullback => self.companion(callee, "vjp"),
            // Otherwise a nested call's pullback must not borrow this body's locals.
            (_, callee) => self.companion(callee, "vjp_owned"),
        }
    }

    pub(super) fn companion(&self, callee: &Callee, what: &str) -> TokenStream {
        match callee {
            Callee::Path {
                prefix,
                name,
                generics,
                assoc: false,
            } => {
                let what = Ident::new(what, name.span());
                quote!(#prefix #name :: #what #generics)
            }
            _ => callee.render(|n| companion_ident(n, what), |r| self.arg(r)),
        }
    }

    /// A call nothing is differentiated through, as written (a submodule's too: its
    /// parameters get no cotangent through it, so its value is all it gives); `apply`'s
    /// result unwrapped.
    fn inactive_call(&self, call: &Call, args: &[TokenStream]) -> TokenStream {
        let f = self.plain(&call.callee);
        let unwrap = call.unwraps().then(|| quote!(.unwrap()));
        quote!(#f(#(#args),*) #unwrap)
    }

    pub(super) fn plain(&self, callee: &Callee) -> TokenStream {
        callee.render(Ident::clone, |r| self.arg(r))
    }
}
