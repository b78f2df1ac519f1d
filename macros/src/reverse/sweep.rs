//! The reverse sweep, block by block: each statement's pullbacks into the adjoints
//! of its operands, branches by their recorded arm, loops walked backwards over
//! their records, calls through their companions (lifted transforms: `lifted`).

use super::*;

impl<'a> Gen<'a> {
    pub(super) fn contribute(&self, r: &mut Rev, a: &Atom, expr: TokenStream) {
        let Some(v) = a.var() else { return };
        if !self.active(v) {
            return;
        }
        let bar = self.bar(v);
        if r.owns(&v) {
            if r.init.insert(v) {
                r.code.push(quote!(let mut #bar = #expr;));
            } else {
                r.code
                    .push(quote!(::adjoint::__private::acc(&mut #bar, #expr);));
            }
        } else {
            r.outer.insert(v);
            r.code
                .push(quote!(::adjoint::__private::acc(&mut #bar, #expr);));
        }
    }

    /// Whether a contribution to `a` adds to an adjoint that exists already (rather
    /// than initialising it).
    pub(super) fn accumulates(&self, r: &Rev, a: &Atom) -> bool {
        a.var()
            .is_some_and(|v| self.active(v) && (!r.owns(&v) || r.init.contains(&v)))
    }

    /// Makes sure `v`'s adjoint exists, zero if nothing contributed yet.
    pub(super) fn ensure_init(&self, r: &mut Rev, v: Var) {
        if r.owns(&v) {
            if r.init.insert(v) {
                let bar = self.bar(v);
                let x = self.read_var(r, v);
                r.code
                    .push(quote!(let mut #bar = ::adjoint::__private::zeros(&#x);));
            }
        } else {
            r.outer.insert(v);
        }
    }

    /// Reads a primal variable in the reverse sweep: views are recomputed from their
    /// source rather than saved.
    pub(super) fn read_var(&self, r: &mut Rev, v: Var) -> TokenStream {
        let name = self.name(v).to_token_stream();
        if let Some(Op::Prim {
            rule,
            operands,
            consts,
            ..
        }) = self.defs.get(&v)
        {
            // Views are recomputed (they borrow); so are scalars in a loop: a few
            // flops beat a push and a pop per iteration.
            // (Not a sum or a mean: recomputing one reads a whole array.)
            let cheap = rule.elementwise || rule.func == "index";
            if rule.view || (r.in_loop && cheap && self.scalar[v.0 as usize]) {
                if r.remat.insert(v) {
                    let fwd = self.prim_call(r, rule, operands, consts);
                    r.code.push(quote!(let #name = #fwd;));
                }
                return name;
            }
        }
        // Index arithmetic on loop variables (`i + 1`): recomputed in a loop's
        // reverse sweep from the loop variables rather than saved.
        if let Some(Op::Const(t)) = self.defs.get(&v)
            && r.in_loop
            && let Some(vars) = self.index_arithmetic(t)
        {
            if r.remat.insert(v) {
                for u in vars {
                    self.read_var(r, u);
                }
                r.code.push(quote!(let #name = #t;));
            }
            return name;
        }
        r.reads.insert(Slot::Var(v));
        name
    }

    /// If `t` is integer arithmetic on loop variables and integer literals (`i + 1`,
    /// `2 * i - 1`), the loop variables it reads.
    pub(super) fn index_arithmetic(&self, t: &TokenStream) -> Option<Vec<Var>> {
        let mut vars = Vec::new();
        for tt in t.clone() {
            match tt {
                proc_macro2::TokenTree::Ident(i) => {
                    vars.push((*self.loop_vars.get(&i.to_string())?)?);
                }
                proc_macro2::TokenTree::Literal(l) => {
                    syn::parse2::<syn::LitInt>(l.to_token_stream()).ok()?;
                }
                proc_macro2::TokenTree::Punct(p) if "+-*/".contains(p.as_char()) => {}
                _ => return None,
            }
        }
        Some(vars)
    }

    pub(super) fn read_atom(&self, r: &mut Rev, a: &Atom) -> TokenStream {
        match a {
            Atom::Var(v) => self.read_var(r, *v),
            Atom::Lit(t) => t.clone(),
        }
    }

    /// Operand `j` in the reverse sweep; a float literal takes the type of a
    /// variable operand (`2.0` beside an `f32` array is an `f32`).
    pub(super) fn read_operand(&self, r: &mut Rev, operands: &[Arg], j: usize) -> TokenStream {
        match &operands[j].atom {
            Atom::Lit(t) if is_float_literal(t) => match operands.iter().find_map(|a| a.atom.var())
            {
                Some(v) => {
                    let like = self.read_var(r, v);
                    quote!(::adjoint::__private::lit(&#like, #t))
                }
                None => t.clone(),
            },
            a => self.read_atom(r, a),
        }
    }

    pub(super) fn read_slot(&self, r: &mut Rev, s: Slot) -> TokenStream {
        r.reads.insert(s);
        self.slot_name(s)
    }

    /// `__private::f(&x, &y, consts..)`, reading the operands in the reverse sweep.
    pub(super) fn prim_call(
        &self,
        r: &mut Rev,
        rule: &crate::ops::Rule,
        operands: &[Arg],
        consts: &[Atom],
    ) -> TokenStream {
        let f = Ident::new(rule.func, Span::call_site());
        let ops: Vec<TokenStream> = (0..operands.len())
            .map(|j| self.read_operand(r, operands, j))
            .collect();
        let cs: Vec<TokenStream> = consts.iter().map(|c| self.read_atom(r, c)).collect();
        fwd_call(rule, &f, &ops, &cs)
    }

    pub(super) fn rev_block(&mut self, r: &mut Rev, b: &'a Block, seeds: Seeds) {
        match &b.tail {
            Tail::Leaf(l) => {
                for (a, e) in seeds(l) {
                    self.contribute(r, &a, e);
                }
            }
            Tail::Branch(br) => self.rev_branch(r, br, seeds),
        }
        for s in b.stmts.iter().rev() {
            self.rev_stmt(r, s);
        }
    }

    pub(super) fn rev_stmt(&mut self, r: &mut Rev, s: &'a Stmt) {
        match s {
            Stmt::Let { dst, op, .. } => {
                if !self.active(*dst) || !r.init.contains(dst) {
                    return;
                }
                match op {
                    Op::Prim {
                        rule,
                        operands,
                        consts,
                        ..
                    } => self.rev_prim(r, *dst, rule, operands, consts),
                    Op::Call(call) if call.scoped == Scoped::Param => {
                        let at = self.read_slot(r, Slot::Pb(*dst));
                        let bar = self.bar(*dst);
                        r.code.push(
                            quote!(::adjoint::__private::add_param(&mut __vars_bar, &#at, #bar);),
                        );
                    }
                    Op::Call(call) => {
                        let pb = self.read_slot(r, Slot::Pb(*dst));
                        let bar = self.bar(*dst);
                        self.rev_call(r, call, pb, bar.to_token_stream());
                    }
                    Op::MapV {
                        recv,
                        closure,
                        captured,
                        ..
                    } => {
                        let x = self.read_atom(r, recv);
                        for (_, outer) in &closure.free {
                            self.read_var(r, *outer);
                        }
                        let bar = self.bar(*dst).clone();
                        // The enclosing values the closure reads that are differentiated.
                        let caps: Vec<usize> = (0..captured.len())
                            .filter(|&k| self.act.is_active(&captured[k]))
                            .collect();
                        if caps.is_empty() {
                            let pb = mapv_pullback(closure, &[]);
                            self.contribute(
                                r,
                                recv,
                                quote!(::adjoint::__private::mapv_pb(&#x, #bar, #pb)),
                            );
                        } else {
                            let pb = mapv_pullback(closure, &caps);
                            let zero: Vec<TokenStream> = caps
                                .iter()
                                .map(|&k| {
                                    let c = self.read_atom(r, &captured[k]);
                                    quote!(::adjoint::__private::zeros(&#c))
                                })
                                .collect();
                            let dx = if self.act.is_active(recv) {
                                format_ident!("{}_x", bar).to_token_stream()
                            } else {
                                quote!(_)
                            };
                            let dcs: Vec<Ident> = (0..caps.len())
                                .map(|i| format_ident!("{}_c{}", bar, i))
                                .collect();
                            r.code.push(quote! {
                                let (#dx, (#(#dcs,)*)) = ::adjoint::__private::mapv_pb_captured(
                                    &#x, #bar, (#(#zero,)*), #pb
                                );
                            });
                            self.contribute(r, recv, dx);
                            for (&k, dc) in caps.iter().zip(&dcs) {
                                self.contribute(r, &captured[k], dc.to_token_stream());
                            }
                        }
                    }
                    Op::Lifted { reads, .. } => self.second_order_unsupported(r, None, reads),
                    Op::Const(_) | Op::Build { .. } => {}
                }
            }
            Stmt::LetTuple {
                dsts,
                pattern,
                call,
            } => {
                if !dsts.iter().any(|d| self.active(*d) && r.init.contains(d)) {
                    return;
                }
                let mut cts = Vec::new();
                for d in dsts {
                    cts.push(self.cot_or_zero(r, *d));
                }
                let pb = self.read_slot(r, Slot::Pb(dsts[0]));
                self.rev_call(r, call, pb, pattern.render(&cts));
            }
            Stmt::If { branch, phis } => {
                let phi_seeds: Vec<Option<TokenStream>> = phis
                    .iter()
                    .map(|p| {
                        (self.active(*p) && r.init.contains(p))
                            .then(|| self.bar(*p).to_token_stream())
                    })
                    .collect();
                let seeds = |l: &Leaf| -> Vec<(Atom, TokenStream)> {
                    let mut atoms = Vec::new();
                    if let Some(v) = &l.value {
                        v.flatten(&mut atoms);
                    }
                    atoms.extend(l.carries.iter().cloned());
                    atoms
                        .into_iter()
                        .zip(&phi_seeds)
                        .filter_map(|(a, s)| s.clone().map(|s| (a, s)))
                        .collect()
                };
                self.rev_branch(r, branch, &seeds);
            }
            Stmt::Loop(lp) => self.rev_loop(r, lp),
            Stmt::LetLifted(l) => self.rev_lifted(r, l),
        }
    }

    /// A computation second order does not go through (an opaque lifted transform,
    /// a closure forward mode does not cover): the parameters' gradients say so, and
    /// the cotangents of what it read are NaN (never a silent zero).
    pub(super) fn second_order_unsupported<'x>(
        &mut self,
        r: &mut Rev,
        at: Option<TokenStream>,
        read: impl IntoIterator<Item = &'x Atom>,
    ) {
        if self.f.params_active {
            // Where: the transform's child (`at`), else the module holding it.
            let at = at.unwrap_or_else(|| match self.f.scope {
                Some(_) => {
                    let here = self.read_slot(r, Slot::Here);
                    quote!(&#here)
                }
                None => quote!(""),
            });
            r.code
                .push(quote!(::adjoint::__private::second_order(&mut __vars_bar, #at);));
        }
        for a in read {
            if self.act.is_active(a) {
                let x = self.read_atom(r, a);
                self.contribute(r, a, quote!(::adjoint::__private::unsupported_cot(&#x)));
            }
        }
    }

    /// Whether `atom` is a parameter whose type is a reference (`&T`).
    pub(super) fn is_reference_param(&self, atom: &Atom) -> bool {
        atom.var()
            .is_some_and(|v| self.f.params.iter().any(|p| p.var == v && p.reference))
    }

    pub(super) fn rev_prim(
        &mut self,
        r: &mut Rev,
        dst: Var,
        rule: &crate::ops::Rule,
        operands: &[Arg],
        consts: &[Atom],
    ) {
        let bar = self.bar(dst).clone();
        if rule.func == "tuple" {
            // A tuple's cotangent is the tuple of its fields'.
            let pieces: Vec<Ident> = (0..operands.len())
                .map(|i| format_ident!("{}_{}", bar, i))
                .collect();
            r.code.push(quote!(let (#(#pieces,)*) = #bar;));
            for (a, p) in operands.iter().zip(&pieces) {
                self.contribute(r, &a.atom, p.to_token_stream());
            }
            return;
        }
        if rule.operands == 0 {
            // concatenate / stack: one pullback gives every piece.
            let pb = rule.pullbacks[0]
                .as_ref()
                .expect("variadic rules have a pullback");
            let f = Ident::new(pb.func, Span::call_site());
            let xs: Vec<TokenStream> = operands
                .iter()
                .map(|a| self.read_atom(r, &a.atom))
                .collect();
            let axis = self.read_atom(r, &consts[0]);
            let pieces: Vec<Ident> = (0..operands.len())
                .map(|i| format_ident!("{}_{}", bar, i))
                .collect();
            r.code.push(
                quote!(let [#(#pieces),*] = ::adjoint::__private::#f(#axis, [#(&#xs),*], #bar);),
            );
            for (a, p) in operands.iter().zip(&pieces) {
                self.contribute(r, &a.atom, p.to_token_stream());
            }
            return;
        }
        // A pullback that can add into an existing adjoint in place does so; the
        // joint pullback is for when every contribution starts an adjoint.
        let adds_in_place = |i: usize| {
            rule.pullbacks
                .get(i)
                .and_then(|p| p.as_ref())
                .is_some_and(|p| p.into.is_some())
                && self.accumulates(r, &operands[i].atom)
        };
        if let Some(joint) = &rule.joint
            && operands.iter().all(|a| self.act.is_active(&a.atom))
            && !(0..operands.len()).any(adds_in_place)
        {
            let f = Ident::new(joint.func, Span::call_site());
            let args: Vec<TokenStream> = joint
                .reads
                .iter()
                .map(|rd| self.pb_arg(r, dst, rule, operands, consts, rd, &[]))
                .collect();
            let parts: Vec<Ident> = (0..operands.len())
                .map(|i| format_ident!("{}_{}", bar, i))
                .collect();
            r.code
                .push(quote!(let (#(#parts,)*) = ::adjoint::__private::#f(#(#args,)* #bar);));
            for (a, p) in operands.iter().zip(&parts) {
                self.contribute(r, &a.atom, p.to_token_stream());
            }
            return;
        }
        let pbs: Vec<(usize, &crate::ops::Pullback)> = operands
            .iter()
            .enumerate()
            .filter(|(_, a)| self.act.is_active(&a.atom))
            .filter_map(|(i, _)| {
                rule.pullbacks
                    .get(i)
                    .and_then(|p| p.as_ref())
                    .map(|p| (i, p))
            })
            .collect();
        // In-place pullbacks borrow the cotangent: they run first, and the last of
        // the others takes it.
        let (in_place, by_value): (Vec<_>, Vec<_>) =
            pbs.into_iter().partition(|&(i, _)| adds_in_place(i));
        for (i, pb) in in_place {
            let f = Ident::new(
                pb.into.expect("in-place pullbacks have `into`"),
                Span::call_site(),
            );
            let args: Vec<TokenStream> = pb
                .reads
                .iter()
                .map(|rd| self.pb_arg(r, dst, rule, operands, consts, rd, &[]))
                .collect();
            let v = operands[i]
                .atom
                .var()
                .expect("active operands are variables");
            if !r.owns(&v) {
                r.outer.insert(v);
            }
            let acc = self.bar(v);
            r.code
                .push(quote!(::adjoint::__private::#f(&mut #acc, #(#args,)* &#bar);));
        }
        let pbs = by_value;
        let n = pbs.len();
        for (k, (i, pb)) in pbs.into_iter().enumerate() {
            let ct = if k + 1 == n {
                quote!(#bar)
            } else {
                quote!(::core::clone::Clone::clone(&#bar))
            };
            let f = Ident::new(pb.func, Span::call_site());
            // Values this pullback reads anyway give their shapes inline, without a
            // separate saved shape.
            let read_values: Vec<Var> = pb
                .reads
                .iter()
                .filter_map(|rd| match rd {
                    Read::Operand(j) => operands[*j].atom.var(),
                    Read::Out => Some(dst),
                    _ => None,
                })
                .collect();
            let args: Vec<TokenStream> = pb
                .reads
                .iter()
                .map(|rd| self.pb_arg(r, dst, rule, operands, consts, rd, &read_values))
                .collect();
            let target = &operands[i].atom;
            match pb.style {
                Style::Returns => {
                    let expr = quote!(::adjoint::__private::#f(#(#args,)* #ct));
                    self.contribute(r, target, expr);
                }
                Style::AddsInto => {
                    let v = target.var().expect("active operands are variables");
                    self.ensure_init(r, v);
                    let acc = self.bar(v);
                    r.code
                        .push(quote!(::adjoint::__private::#f(&mut #acc, #(#args,)* #ct);));
                }
            }
        }
    }

    /// One argument of a pullback call: an operand or the output by reference, an
    /// operand's shape, or a constant.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn pb_arg(
        &self,
        r: &mut Rev,
        dst: Var,
        rule: &crate::ops::Rule,
        operands: &[Arg],
        consts: &[Atom],
        read: &Read,
        read_values: &[Var],
    ) -> TokenStream {
        match read {
            Read::Operand(j) => {
                let x = self.read_operand(r, operands, *j);
                quote!(&#x)
            }
            Read::Out => {
                let y = self.read_var(r, dst);
                quote!(&#y)
            }
            Read::Shape(j) => match &operands[*j].atom {
                // A scalar operand of a scalar elementwise result has the type of the
                // result's cotangent: its shape (a zero-sized value) comes from that.
                Atom::Var(v)
                    if rule.elementwise
                        && self.scalar[v.0 as usize]
                        && self.scalar[dst.0 as usize] =>
                {
                    let bar = self.bar(dst);
                    quote!(&::adjoint::__private::shape_of(&#bar))
                }
                Atom::Var(v) if read_values.contains(v) || r.reads.contains(&Slot::Var(*v)) => {
                    let x = self.read_var(r, *v);
                    quote!(&::adjoint::__private::shape_of(&#x))
                }
                Atom::Var(v) => {
                    let s = self.read_slot(r, Slot::Shape(*v));
                    quote!(&#s)
                }
                Atom::Lit(_) => {
                    let x = self.read_operand(r, operands, *j);
                    quote!(&::adjoint::__private::shape_of(&#x))
                }
            },
            Read::Const(j) => {
                let c = self.read_atom(r, &consts[*j]);
                if rule.consts_by_ref { quote!(&#c) } else { c }
            }
        }
    }

    pub(super) fn rev_call(&mut self, r: &mut Rev, call: &Call, pb: TokenStream, ct: TokenStream) {
        let mut pats = Vec::new();
        let mut gets = Vec::new();
        for (i, a) in call.args.iter().enumerate() {
            if self.act.is_active(&a.atom) {
                let c = format_ident!("__c{}", i);
                pats.push(c.to_token_stream());
                gets.push((a.atom.clone(), c));
            } else {
                pats.push(quote!(_));
            }
        }
        if self.f.params_active && call.scoped == Scoped::Module {
            // A submodule's parameter cotangents join this module's.
            r.code.push(quote!(let (__cv, #(#pats,)*) = #pb(#ct);));
            r.code
                .push(quote!(::adjoint::__private::Accumulate::accumulate(&mut __vars_bar, __cv);));
        } else {
            r.code.push(quote!(let (#(#pats,)*) = #pb(#ct);));
        }
        for (a, c) in gets {
            self.contribute(r, &a, c.to_token_stream());
        }
    }

    /// The reverse of a branch: a `match` on its record, each arm running its
    /// block's reverse. Values of enclosing blocks that arms contribute to are
    /// zeroed before it when nothing contributed yet.
    pub(super) fn rev_branch(&mut self, r: &mut Rev, br: &'a Branching, seeds: Seeds) {
        let id = self.br_id(br);
        let mut arms_code = Vec::new();
        let mut any = false;
        let mut pre_zero = BTreeSet::new();
        // The enclosing adjoints not started yet: an arm that contributes to one
        // starts it, and the branch hands it out (zero from the arms that do not).
        let deferred: HashSet<Var> = r
            .local
            .iter()
            .chain(&r.deferred)
            .filter(|v| !r.init.contains(v))
            .copied()
            .collect();
        let mut started = BTreeSet::new();
        let mut inits = Vec::new();
        for (i, arm) in br.arms.iter().enumerate() {
            let mut local = HashSet::new();
            block_defs(arm, &mut local);
            if let BranchKind::Match { binds, .. } = &br.kind {
                local.extend(binds[i].iter().copied());
            }
            let mut sub = Rev::new(local, r.in_loop);
            sub.deferred = deferred.clone();
            self.rev_block(&mut sub, arm, seeds);
            let record = sub.split_reads(r);
            for v in &sub.outer {
                if r.owns(v) {
                    if !r.init.contains(v) {
                        pre_zero.insert(*v);
                    }
                } else {
                    r.outer.insert(*v);
                }
            }
            started.extend(sub.init.iter().filter(|v| deferred.contains(v)).copied());
            inits.push(sub.init.clone());
            any |= !sub.code.is_empty() || !record.is_empty();
            self.reads_all.extend(sub.reads.iter().copied());
            self.records.insert(arm as *const Block, record.clone());
            arms_code.push((record, sub.code));
        }
        if !any {
            return;
        }
        self.recorded.insert(id);
        for v in pre_zero {
            self.ensure_init(r, v);
        }
        // Each arm ends with the adjoints it started, or zeros.
        let started: Vec<Var> = started.into_iter().collect();
        let mut ends = Vec::new();
        for init in &inits {
            let items: Vec<TokenStream> = started
                .iter()
                .map(|v| {
                    if init.contains(v) {
                        self.bar(*v).to_token_stream()
                    } else {
                        let x = self.read_var(r, *v);
                        quote!(::adjoint::__private::zeros(&#x))
                    }
                })
                .collect();
            ends.push(items);
        }
        let n = br.arms.len();
        let enum_name = format_ident!("Branch{}", n);
        let arms = arms_code
            .into_iter()
            .zip(ends)
            .enumerate()
            .map(|(i, ((record, code), end))| {
                let variant = format_ident!("Arm{}", i);
                let names: Vec<TokenStream> = record.iter().map(|s| self.slot_name(*s)).collect();
                let end = if started.is_empty() {
                    TokenStream::new()
                } else {
                    quote!((#(#end,)*))
                };
                quote!(::adjoint::__private::#enum_name::#variant((#(#names,)*)) => { #(#code)* #end })
            });
        let rec = self.read_slot(r, Slot::Br(id));
        if started.is_empty() {
            r.code.push(quote!(match #rec { #(#arms)* }));
        } else {
            let bars = started.iter().map(|v| self.bar(*v));
            r.code
                .push(quote!(let (#(mut #bars,)*) = match #rec { #(#arms)* };));
            r.init.extend(started.iter().copied());
        }
    }

    pub(super) fn rev_loop(&mut self, r: &mut Rev, lp: &'a Loop) {
        let id = self.loop_id(lp);
        let carries: Vec<&Carry> = lp
            .carries
            .iter()
            .filter(|c| self.active(c.inner) || self.active(c.out))
            .collect();
        let carry_bars: Vec<Ident> = carries
            .iter()
            .map(|c| format_ident!("{}_carry", self.bar(c.out)))
            .collect();
        let mut local = HashSet::new();
        block_defs(&lp.body, &mut local);
        for c in &lp.carries {
            local.insert(c.inner);
        }
        if let LoopKind::For { binds, .. } = &lp.kind {
            local.extend(binds.iter().copied());
        }
        let mut sub = Rev::new(local, true);
        let seeds = |l: &Leaf| -> Vec<(Atom, TokenStream)> {
            let mut out = Vec::new();
            for (c, bar) in carries.iter().zip(&carry_bars) {
                if let Some(pos) = lp.carries.iter().position(|x| std::ptr::eq(x, *c)) {
                    out.push((l.carries[pos].clone(), bar.to_token_stream()));
                }
            }
            out
        };
        self.rev_block(&mut sub, &lp.body, &seeds);
        for (c, bar) in carries.iter().zip(&carry_bars) {
            if sub.init.contains(&c.inner) {
                let inner_bar = self.bar(c.inner);
                sub.code.push(quote!(#bar = #inner_bar;));
            } else {
                let x = self.read_var(&mut sub, c.inner);
                sub.code
                    .push(quote!(#bar = ::adjoint::__private::zeros(&#x);));
            }
        }
        if sub.code.is_empty() || (carries.is_empty() && sub.outer.is_empty()) {
            return;
        }
        let mut record = sub.split_reads(r);
        // A `for` over a range that runs every iteration (no `break`) is walked
        // backwards: its variables need no record.
        let range = match &lp.kind {
            LoopKind::For {
                pat, iter, binds, ..
            } if is_range(iter) && !breaks(&lp.body) => {
                record.retain(|s| !matches!(s, Slot::Var(v) if binds.contains(v)));
                self.reversed.insert(id);
                Some(pat)
            }
            _ => None,
        };
        // A step's carried value that the next step receives (the RNN's `h`) is kept
        // once, as the next step's input: the reverse sweep walks the steps backwards
        // and takes it from there (the last one from the loop's result).
        let mut handed = Vec::new();
        if let Tail::Leaf(l) = &lp.body.tail
            && matches!(l.kind, LeafKind::Continue | LeafKind::Fallthrough)
            && !breaks(&lp.body)
        {
            let mut defs = HashSet::new();
            block_defs(&lp.body, &mut defs);
            for (c, next) in lp.carries.iter().zip(&l.carries) {
                let Some(n) = next.var() else { continue };
                let passed_once = l.carries.iter().filter(|a| a.var() == Some(n)).count() == 1;
                if defs.contains(&n)
                    && passed_once
                    && !self.scalar[n.0 as usize]
                    && record.contains(&Slot::Var(n))
                    && record.contains(&Slot::Var(c.inner))
                {
                    record.retain(|s| *s != Slot::Var(n));
                    handed.push((n, c));
                }
            }
        }
        self.handed_on.extend(handed.iter().map(|(n, _)| *n));
        if range.is_none() || !record.is_empty() {
            self.taped.insert(id);
        }
        self.reads_all.extend(sub.reads.iter().copied());
        self.records
            .insert(&lp.body as *const Block, record.clone());
        for (c, bar) in carries.iter().zip(&carry_bars) {
            if r.init.contains(&c.out) {
                let out_bar = self.bar(c.out);
                r.code.push(quote!(let mut #bar = #out_bar;));
            } else {
                let x = self.read_var(r, c.out);
                r.code
                    .push(quote!(let mut #bar = ::adjoint::__private::zeros(&#x);));
            }
        }
        let outer: Vec<Var> = sub.outer.iter().copied().collect();
        for v in outer {
            if r.owns(&v) {
                self.ensure_init(r, v);
            } else {
                r.outer.insert(v);
            }
        }
        let mut prefix = Vec::new();
        for (k, (n, c)) in handed.iter().enumerate() {
            let next = format_ident!("__next{}_{}", id, k);
            let out = self.read_var(r, c.out);
            r.code
                .push(quote!(let mut #next = ::core::clone::Clone::clone(&#out);));
            let (n, inner) = (self.name(*n), self.name(c.inner));
            prefix.push(quote! {
                let #n = ::core::mem::replace(&mut #next, ::core::clone::Clone::clone(&#inner));
            });
        }
        let names: Vec<TokenStream> = record.iter().map(|s| self.slot_name(*s)).collect();
        let code: Vec<TokenStream> = prefix.into_iter().chain(sub.code.iter().cloned()).collect();
        let head = match range {
            Some(pat) => {
                let range = self.read_slot(r, Slot::Range(id));
                if record.is_empty() {
                    quote!(for #pat in #range.rev())
                } else {
                    let tape = self.read_slot(r, Slot::Tape(id));
                    quote!(for (#pat, (#(#names,)*)) in #range.rev().zip(#tape.into_iter().rev()))
                }
            }
            None => {
                let tape = self.read_slot(r, Slot::Tape(id));
                quote!(for (#(#names,)*) in #tape.into_iter().rev())
            }
        };
        r.code.push(quote!(#head { #(#code)* }));
        for (c, bar) in carries.iter().zip(&carry_bars) {
            self.contribute(r, &c.init, bar.to_token_stream());
        }
    }
}
