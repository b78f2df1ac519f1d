//! The reverse sweep of lifted transforms (second order): each pullback runs the
//! child again from the scope's state before the transform (`Scope::rerun_point`):
//! its JVP-VJP for `grad!`, `value_and_grad!` and `jvp!`, one per input element for
//! `jacfwd!`/`jacrev!`, its reverse mode for a `vjp!`'s output, its JVP-VJP along the
//! cotangents of what a `vjp!`'s pullback returned.

use super::*;

impl Gen<'_> {
    /// The pullback of a lifted gradient `g = grad_x f(params, x)` (second order):
    /// with cotangent `c`, the parameters' and `x`'s cotangents are the gradient of
    /// `<grad_x f, c>`, the child's JVP along `c`; so the child's JVP-VJP runs, on a
    /// snapshot of the variables, in the child's scope. For `value_and_grad!` the
    /// value's cotangent `c_v` adds `c_v f`: it seeds the JVP's value.
    pub(super) fn rev_lifted(&mut self, r: &mut Rev, l: &Lifted) {
        if !l
            .defined()
            .iter()
            .any(|d| self.active(*d) && r.init.contains(d))
        {
            return;
        }
        match l.kind {
            LiftedKind::Jacobian => return self.rev_lifted_jacobian(r, l),
            LiftedKind::Vjp { aux } => return self.rev_lifted_vjp(r, l, aux),
            LiftedKind::Pull { y, aux } => return self.rev_lifted_pull(r, l, y, aux),
            LiftedKind::Vmap { .. } => return self.rev_lifted_vmap(r, l),
            _ => {}
        }
        let snap = self.read_slot(r, Slot::Pb(l.dsts[0]));
        let (seeds, tangents, n) = match &l.kind {
            // The value's and the aux's cotangents seed the child's outputs; the
            // tangent of the value is seeded with one, the aux's tangent with zero.
            // The tangents are the gradients' cotangents.
            LiftedKind::Grad { value, aux } => {
                let seeds = match aux {
                    Some(a) => {
                        let (v, x) = (
                            self.seed(r, *value, quote!(__o.0.0)),
                            self.seed(r, Some(*a), quote!(__o.0.1)),
                        );
                        quote!(((#v, #x), (::adjoint::__private::grad_seed(&__o.1.0), ::adjoint::__private::zeros(&__o.1.1))))
                    }
                    None => {
                        let v = self.seed(r, *value, quote!(__o.0));
                        quote!((#v, ::adjoint::__private::grad_seed(&__o.1)))
                    }
                };
                // A tangent has its primal's type: a reference for a reference.
                let mut tangents = Vec::new();
                for (d, a) in l.dsts.iter().zip(&l.args) {
                    let g = self.cot_or_zero(r, *d);
                    tangents.push(if a.by_ref || self.is_reference_param(&a.atom) {
                        quote!(&#g)
                    } else {
                        g
                    });
                }
                (seeds, tangents, l.args.len())
            }
            LiftedKind::Jacobian
            | LiftedKind::Vjp { .. }
            | LiftedKind::Pull { .. }
            | LiftedKind::Vmap { .. } => {
                unreachable!("handled above")
            }
            // The output's and its tangent's cotangents seed the JVP's; its tangents
            // are the transform's own (the second half of the arguments).
            LiftedKind::Jvp { .. } => {
                let (y, ty) = (
                    self.cot_or_zero(r, l.dsts[0]),
                    self.cot_or_zero(r, l.dsts[1]),
                );
                let n = l.args.len() / 2;
                // Each tangent as its primal is passed.
                let mut tangents = Vec::new();
                for k in 0..n {
                    tangents.push(self.rerun_arg(r, &l.args[n + k], &l.args[k], n + k));
                }
                (quote!((#y, #ty)), tangents, n)
            }
        };
        let mut primals = Vec::new();
        for (k, a) in l.args[..n].iter().enumerate() {
            primals.push(self.rerun_arg(r, a, a, k));
        }
        let kept = self.kept_pattern(&l.args);
        // Cotangents of the primals, and for `jvp!` of its tangents (`grad!` has none
        // to give: its tangents were the gradients' cotangents).
        let jvp = matches!(l.kind, LiftedKind::Jvp { .. });
        let cots: Vec<Ident> = (0..l.args.len())
            .map(|i| format_ident!("__c{}", i))
            .collect();
        let skip: Vec<TokenStream> = if jvp {
            Vec::new()
        } else {
            l.args.iter().map(|_| quote!(_)).collect()
        };
        // The cotangents of the values of the enclosing code a closure reads.
        let mut contributions = Vec::new();
        let run = match l.closure.as_deref() {
            None => {
                // The variables' tangents a `jvp!` was given, if any were nonzero.
                let rerun = |along: Option<TokenStream>| {
                    let (companion, set, split) = forward_rerun(along);
                    quote! {
                        #set
                        let (__o, __pb2) = ::adjoint::scope::Child::module(__module).#companion(&mut __cx2, #(#primals,)* #(#tangents,)*);
                        let (__cv, _, #(#cots,)* #(#skip,)*) = __pb2(#seeds);
                        #split
                    }
                };
                let along_inputs = rerun(None);
                if jvp {
                    let along_variables = rerun(Some(quote!(__t)));
                    quote! {
                        let (mut __cv, #(#cots,)*) = match __tangents {
                            ::core::option::Option::None => {
                                #along_inputs
                                (__cv, #(#cots,)*)
                            }
                            ::core::option::Option::Some(__t) => {
                                #along_variables
                                (__cv, #(#cots,)*)
                            }
                        };
                    }
                } else {
                    quote!(#along_inputs let mut __cv = __cv;)
                }
            }
            // A closure that is more than `mdl.call(cx, x..)`: its own JVP-VJP,
            // inline, or (where forward mode does not cover it) the report that
            // second order does not go through it.
            Some(closure) => {
                let Some((code, captured)) = self.closure_rerun(r, l, closure) else {
                    return;
                };
                let (primal_cots, tangent_cots) = cots.split_at(n);
                let tangent_cots = jvp.then_some(tangent_cots);
                let inline = closure_jvp_vjp(
                    code,
                    &primals,
                    &tangents,
                    &seeds,
                    primal_cots,
                    tangent_cots,
                    &captured,
                );
                // The forward mode written is along the primals: with variable
                // tangents (`jvp!`), second order is reported.
                let args = primals
                    .iter()
                    .chain(tangents.iter().filter(|_| jvp))
                    .chain(&captured.primals);
                let outs = cots.iter().chain(&captured.cots);
                let all = outs.clone();
                contributions.extend(captured.contributions(closure));
                quote! {
                    let (mut __cv, #(#outs,)*) = if __tangents.is_none() {
                        #inline
                        (__cv, #(#all,)*)
                    } else {
                        let mut __cv = ::adjoint::Variables::new();
                        ::adjoint::__private::second_order(&mut __cv, __child);
                        (__cv, #(::adjoint::__private::unsupported_cot(&(#args)),)*)
                    };
                }
            }
        };
        let cots: Vec<Ident> = cots
            .into_iter()
            .chain(contributions.iter().map(|(_, c)| c.clone()))
            .collect();
        let outs = quote!((#(#cots,)*));
        if l.input_gradient() {
            // The primal kept the child's input gradient's pullback where it could:
            // reverse over reverse; else the rerun.
            let grads: Vec<TokenStream> = l.dsts.iter().map(|d| self.cot_or_zero(r, *d)).collect();
            let merge = self.f.params_active.then(
                || quote!(::adjoint::__private::Accumulate::accumulate(&mut __vars_bar, __cv);),
            );
            let rerun = self.in_rerun_scope(l, &quote!(__rec), &kept, outs.clone(), run);
            r.code.push(quote! {
                let #outs = match #snap {
                    ::core::result::Result::Ok(__pb) => {
                        let (__cv, _, #(#cots,)* _) = __pb((#(#grads,)*));
                        #merge
                        #outs
                    }
                    ::core::result::Result::Err(__rec) => {
                        #rerun
                        #outs
                    }
                };
            });
        } else {
            r.code.push(self.in_rerun_scope(l, &snap, &kept, outs, run));
        }
        for (a, c) in l.args.iter().zip(&cots) {
            self.contribute(r, &a.atom, c.to_token_stream());
        }
        for (v, c) in contributions {
            self.contribute(r, &Atom::Var(v), c.to_token_stream());
        }
    }

    /// The code of the rerun of `l`'s closure and the values of the enclosing code it
    /// reads, passed to it (see [`Captured`]); `None`, reported, where forward mode
    /// does not cover its body.
    fn closure_rerun<'c>(
        &mut self,
        r: &mut Rev,
        l: &Lifted,
        closure: &'c Rerun,
    ) -> Option<(&'c RerunCode, Captured)> {
        match &closure.code {
            Some(code) => {
                for v in &closure.captured {
                    self.read_var(r, *v);
                }
                let mut captured = Captured::default();
                for (j, v) in closure.passed.iter().enumerate() {
                    let x = self.read_var(r, *v);
                    // A reference argument is borrowed from the owning companion's
                    // copy; any other value is copied (a rerun may run again).
                    let (primal, tangent, zero) = if self.is_reference_param(&Atom::Var(*v)) {
                        let x = quote!(::adjoint::__private::Value::primal(&#x));
                        let zero = quote!(::adjoint::__private::zeros(#x));
                        (x, quote!(&#zero), zero)
                    } else {
                        let zero = quote!(::adjoint::__private::zeros(&#x));
                        (quote!(::core::clone::Clone::clone(&#x)), zero.clone(), zero)
                    };
                    captured.primals.push(primal);
                    captured.zeros.push(tangent);
                    captured.owned_zeros.push(zero);
                    captured.cots.push(format_ident!("__k{}", j));
                }
                Some((code, captured))
            }
            None => {
                self.closure_unsupported(r, l, l.dsts[0]);
                None
            }
        }
    }

    /// Reports that a derivative does not go through `l`'s closure, naming the
    /// transform's child (which the snapshot of the transform defining `at` holds);
    /// what the closure read gets NaN cotangents.
    fn closure_unsupported(&mut self, r: &mut Rev, l: &Lifted, at: Var) {
        let snap = self.read_slot(r, Slot::Pb(at));
        let captured: Vec<Atom> = l.captured().iter().map(|v| Atom::Var(*v)).collect();
        let reads = l.args.iter().map(|a| &a.atom).chain(&captured);
        self.second_order_unsupported(r, Some(quote!(&#snap.1)), reads);
    }

    /// The pullback of a lifted `vjp!`'s output `y` and aux (first order through the
    /// child): the child's reverse mode run again, its parameters differentiated, on
    /// the scope's state before the transform, seeded with their cotangents.
    pub(super) fn rev_lifted_vjp(&mut self, r: &mut Rev, l: &Lifted, aux: Option<Var>) {
        let y = l.dsts[0];
        let has_bar = |v: &Var| self.active(*v) && r.init.contains(v);
        if !std::iter::once(y).chain(aux).any(|v| has_bar(&v)) {
            return;
        }
        let ybar = match aux {
            Some(a) => {
                let (yb, ab) = (
                    self.seed(r, Some(y), quote!(__o.0)),
                    self.seed(r, Some(a), quote!(__o.1)),
                );
                quote!((#yb, #ab))
            }
            None => self.seed(r, Some(y), quote!(__o)),
        };
        let snap = self.read_slot(r, Slot::Pb(y));
        let n = l.args.len();
        let kept = self.kept_pattern(&l.args);
        let cots: Vec<Ident> = (0..n).map(|k| format_ident!("__c{}", k)).collect();
        let mut primals = Vec::new();
        for (k, a) in l.args.iter().enumerate() {
            primals.push(self.rerun_arg(r, a, a, k));
        }
        let mut contributions = Vec::new();
        let run = match l.closure.as_deref() {
            None => {
                let companion = companion_ident(&format_ident!("__call_body"), "vjp_params");
                quote! {
                    let (__o, __pb2) = ::adjoint::scope::Child::module(__module)
                        .#companion(&mut __cx2, #(#primals,)*);
                    let (mut __cv, _, #(#cots,)*) = __pb2(#ybar);
                }
            }
            // A closure that is more than `mdl.call(cx, x..)`: its own reverse mode,
            // inline.
            Some(closure) => match self.closure_rerun(r, l, closure) {
                Some((code, captured)) => {
                    contributions = captured.contributions(closure);
                    closure_vjp(code, &primals, &ybar, &cots, &captured, None)
                }
                None => return,
            },
        };
        let outs = cots.iter().chain(contributions.iter().map(|(_, c)| c));
        r.code
            .push(self.in_rerun_scope(l, &snap, &kept, quote!((#(#outs,)*)), run));
        for (a, c) in l.args.iter().zip(&cots) {
            self.contribute(r, &a.atom, c.to_token_stream());
        }
        for (v, c) in contributions {
            self.contribute(r, &Atom::Var(v), c.to_token_stream());
        }
    }

    /// The pullback of a lifted `vmap!`'s batched output `y` (first order through the
    /// child): the examples run again in order through the child's reverse mode, from
    /// the scope's state before the transform (so each reads the same variables and
    /// draws the same keys as the first time), each seeded with its slice of `y`'s
    /// cotangent. A mapped argument's cotangent gets each example's at its index, a
    /// broadcast one their sum (as `jax.vmap`'s transpose).
    fn rev_lifted_vmap(&mut self, r: &mut Rev, l: &Lifted) {
        let LiftedKind::Vmap {
            in_axes,
            axis_name,
            jvp,
        } = &l.kind
        else {
            return;
        };
        let snap = self.read_slot(r, Slot::Pb(l.dsts[0]));
        // Each example's pullback is seeded with its slice of the output's cotangent
        // (and of its tangent's, for the child's JVP).
        let (mut cts, mut seeds) = (Vec::new(), Vec::new());
        for (k, d) in l.dsts.iter().enumerate() {
            let (c, ct) = (self.cot_or_zero(r, *d), format_ident!("__ct{}", k));
            cts.push(quote!(let #ct = &#c;));
            seeds.push(quote!(::adjoint::__private::example(#ct, __i)));
        }
        let seed = match seeds.as_slice() {
            [one] => one.clone(),
            _ => quote!((#(#seeds,)*)),
        };
        let kept = self.kept_pattern(&l.args);
        let (refs, bind) = self.bound_args(r, &l.args);
        let mut items = Vec::new();
        let mut lens = Vec::new();
        // Only the differentiated arguments gather cotangents (an integer label has
        // none to gather into).
        let (mut accs, mut zeros, mut cots, mut adds) = (vec![], vec![], vec![], vec![]);
        for (k, (a, axis)) in l.args.iter().zip(in_axes).enumerate() {
            let x = &refs[k];
            items.push(match axis {
                Some(ax) => {
                    lens.push(quote!(::adjoint::__private::batch_len::<#ax, _>(#x)));
                    quote!(::adjoint::__private::unbatch::<#ax, _>(#x, __i))
                }
                None if self.passed_by_ref(a) => quote!(#x),
                None => quote!(::core::clone::Clone::clone(#x)),
            });
            let (acc, c) = (format_ident!("__acc{}", k), format_ident!("__c{}", k));
            if !a.atom.var().is_some_and(|v| self.active(v)) {
                cots.push(quote!(_));
                continue;
            }
            zeros.push(quote!(::adjoint::__private::zeros(#x)));
            adds.push(match axis {
                Some(ax) => {
                    quote!(::adjoint::__private::add_example::<#ax, _>(&mut #acc, __i, #c);)
                }
                None => quote!(::adjoint::__private::Accumulate::accumulate(&mut #acc, #c);),
            });
            cots.push(c.to_token_stream());
            accs.push((a.atom.clone(), acc));
        }
        // A closure's rerun; the differentiated values of the enclosing code it reads
        // gather the examples' cotangents as broadcast arguments do.
        let rerun = match l.closure.as_deref() {
            Some(closure) => {
                let Some((code, captured)) = self.closure_rerun(r, l, closure) else {
                    return;
                };
                let pairs = captured.contributions(closure).into_iter();
                for ((v, k), zero) in pairs.zip(&captured.owned_zeros) {
                    let acc = format_ident!("{}_acc", k);
                    zeros.push(zero.clone());
                    adds.push(quote!(::adjoint::__private::Accumulate::accumulate(&mut #acc, #k);));
                    accs.push((Atom::Var(v), acc));
                }
                Some((code, captured))
            }
            None => None,
        };
        let acc_names: Vec<&Ident> = accs.iter().map(|(_, acc)| acc).collect();
        let (push, pop) = match axis_name {
            Some(name) => (quote!(__cx2.push_axis(#name);), quote!(__cx2.pop_axis();)),
            None => (TokenStream::new(), TokenStream::new()),
        };
        let companion = if *jvp {
            crate::names::child_jvp()
        } else {
            companion_ident(&format_ident!("__call_body"), "vjp_params")
        };
        // Each example through the child's reverse mode, or a closure's, inline.
        let example = match rerun {
            None => quote! {
                let (_, __pb2) = ::adjoint::scope::Child::module(__module)
                    .#companion(&mut __cx2, #(#items,)*);
                let (mut __cv, _, #(#cots,)*) = __pb2(#seed);
            },
            // Its output's type is known from its value (`__o`): where its cotangent
            // cannot be taken apart per example (a tree of per-example gradients),
            // the rerun reports that it does not go through.
            Some((code, captured)) => {
                let seed = quote!({
                    use ::adjoint::__private::{ExampleNone as _, ExampleUnstacked as _};
                    (&&::adjoint::__private::ExampleOf(&__o)).example(__ct0, __i)
                });
                let nans = items
                    .iter()
                    .chain(&captured.primals)
                    .map(|x| quote!(::adjoint::__private::unsupported_cot(&#x)));
                let fallback = quote! {{
                    let mut __cv = ::adjoint::Variables::new();
                    ::adjoint::__private::second_order(&mut __cv, __child);
                    (__cv, (), (), #(#nans,)*)
                }};
                closure_vjp(code, &items, &seed, &cots, &captured, Some(fallback))
            }
        };
        let merge = self.merge_rerun();
        let (visible, rngs) = (&l.visible, &l.rngs);
        r.code.push(quote! {
            let (#(#acc_names,)*) = {
                let (__rerun, __child, __module, _, (#(#kept,)*)) = &#snap;
                #(#bind)*
                #(#cts)*
                let (#(mut #acc_names,)*) = (#(#zeros,)*);
                let __n = ::adjoint::__private::common_len(&[#(#lens),*]);
                let mut __snapshot = __rerun.variables();
                let mut __cx2 = __rerun.scope(&mut __snapshot, __child);
                __cx2.restrict(#visible, #rngs);
                #push
                let __mark = __cx2.mark();
                for __i in 0..__n {
                    __cx2.reset_names_to(&__mark);
                    #example
                    #merge
                    #(#adds)*
                }
                #pop
                (#(#acc_names,)*)
            };
        });
        for (atom, acc) in &accs {
            self.contribute(r, atom, acc.to_token_stream());
        }
    }

    /// The pullback of `(vars_ct, g..) = pb(ct)`, `pb` a lifted `vjp!`'s (second
    /// order): `g = J' ct`, so with `g`'s cotangents `gbar` the cotangent of `ct` is
    /// `J gbar` (the child's JVP along `gbar`), and those of the parameters and the
    /// primals are the gradient of `<ct, J gbar>`: the child's JVP-VJP along `gbar`,
    /// run again from the `vjp!`'s snapshot, seeded with `ct` on the tangent output.
    /// Where the variables' cotangents (`vars_ct`) have cotangents too, those are the
    /// variables' tangents of that JVP (the child's forward mode along its variables).
    fn rev_lifted_pull(&mut self, r: &mut Rev, l: &Lifted, y: Var, aux: bool) {
        let n = l.args.len() - 1;
        let (ct, primal_args) = (&l.args[0], &l.args[1..]);
        let has_bar = |d: &Var| self.active(*d) && r.init.contains(d);
        if !l.dsts.iter().any(has_bar) {
            return;
        }
        let along_variables = has_bar(&l.dsts[0]).then(|| self.bar(l.dsts[0]).clone());
        // Through a closure that is more than `mdl.call(cx, x..)`: its forward mode is
        // written along its primals only; second order along its variables (the
        // variables' cotangents the pullback returns, differentiated) is reported,
        // naming the child.
        if l.closure.is_some() && along_variables.is_some() {
            return self.closure_unsupported(r, l, y);
        }
        let snap = self.read_slot(r, Slot::Pb(y));
        let kept = self.kept_pattern(primal_args);
        let cots: Vec<Ident> = (0..n).map(|k| format_ident!("__c{}", k)).collect();
        let mut primals = Vec::new();
        for (k, a) in primal_args.iter().enumerate() {
            primals.push(self.rerun_arg(r, a, a, k));
        }
        let mut tangents = Vec::new();
        for (k, a) in primal_args.iter().enumerate() {
            let g = self.cot_or_zero(r, l.dsts[1 + k]);
            tangents.push(if self.passed_by_ref(a) {
                quote!(&#g)
            } else {
                g
            });
        }
        let ctv = self.read_slot(r, Slot::Pb(l.dsts[0]));
        // The child's JVP gives `(y, J gbar)` (with the aux, `((y, aux), (J gbar,
        // its tangent))`): the cotangent seeds `J gbar` only.
        let (seeds, ct_bar) = if aux {
            (
                quote!((
                    (
                        ::adjoint::__private::zeros(&__o.0.0),
                        ::adjoint::__private::zeros(&__o.0.1)
                    ),
                    (__seed, ::adjoint::__private::zeros(&__o.1.1)),
                )),
                quote!(__o.1.0),
            )
        } else {
            (
                quote!((::adjoint::__private::zeros(&__o.0), __seed)),
                quote!(__o.1),
            )
        };
        let skip = (0..n).map(|_| quote!(_));
        let mut contributions = Vec::new();
        let run = match l.closure.as_deref() {
            None => {
                let (companion, set, split) =
                    forward_rerun(along_variables.map(|bar| quote!(&#bar)));
                quote! {
                    #set
                    let (__o, __pb2) = ::adjoint::scope::Child::module(__module)
                        .#companion(&mut __cx2, #(#primals,)* #(#tangents,)*);
                    let __seed = #ctv;
                    let (__cv, _, #(#cots,)* #(#skip,)*) = __pb2(#seeds);
                    #split
                    let mut __cv = __cv;
                    let __ct_bar = #ct_bar;
                }
            }
            // The closure's own JVP-VJP along `gbar`, inline.
            Some(closure) => {
                let Some((code, captured)) = self.closure_rerun(r, l, closure) else {
                    return;
                };
                let inline =
                    closure_jvp_vjp(code, &primals, &tangents, &seeds, &cots, None, &captured);
                contributions = captured.contributions(closure);
                quote! {
                    let __seed = #ctv;
                    #inline
                    let __ct_bar = #ct_bar;
                }
            }
        };
        let captured_cots = contributions.iter().map(|(_, c)| c);
        let outs = quote!((__ct_bar, #(#cots,)* #(#captured_cots,)*));
        r.code.push(self.in_rerun_scope(l, &snap, &kept, outs, run));
        self.contribute(r, &ct.atom, quote!(__ct_bar));
        for (a, c) in primal_args.iter().zip(&cots) {
            self.contribute(r, &a.atom, c.to_token_stream());
        }
        for (v, c) in contributions {
            self.contribute(r, &Atom::Var(v), c.to_token_stream());
        }
    }

    /// The pullback of a lifted Jacobian `J = d child / d x` (second order): with
    /// cotangent `C` (shaped as `J`), the cotangents are those of `sum_i <J e_i, C e_i>`:
    /// for each input element `i`, the child's JVP along `e_i` run again and its VJP
    /// seeded with the column `C e_i` on the tangent output.
    pub(super) fn rev_lifted_jacobian(&mut self, r: &mut Rev, l: &Lifted) {
        let snap = self.read_slot(r, Slot::Pb(l.dsts[0]));
        let cj = self.bar(l.dsts[0]).clone();
        let n = l.args.len();
        let kept = self.kept_pattern(&l.args);
        let cots: Vec<Ident> = (0..n).map(|k| format_ident!("__c{}", k)).collect();
        let accs: Vec<Ident> = (0..n).map(|k| format_ident!("__acc{}", k)).collect();
        // A reference to each argument (`__x{k}`), passed as it was (a copy per run
        // for one passed by value); the unit tangent along the first, zero along the
        // others, each of its primal's type.
        let (refs, bind) = self.bound_args(r, &l.args);
        let mut pass = Vec::new();
        let mut tangents = Vec::new();
        for (k, a) in l.args.iter().enumerate() {
            let x = &refs[k];
            let t = if k == 0 {
                quote!(::adjoint::__private::unit(#x, __i))
            } else {
                quote!(::adjoint::__private::zeros(#x))
            };
            if self.passed_by_ref(a) {
                pass.push(quote!(#x));
                tangents.push(quote!(&#t));
            } else {
                pass.push(quote!(::core::clone::Clone::clone(#x)));
                tangents.push(t);
            }
        }
        let skip = (0..n).map(|_| quote!(_));
        let companion = companion_ident(&format_ident!("__call_body_jvp"), "vjp_params");
        let column = quote!(::adjoint::__private::jacobian_column(&#cj, &__o.1, __i, __n));
        let seeds = quote!((::adjoint::__private::zeros(&__o.0), #column));
        // The child's JVP-VJP along the unit tangent, or a closure's, inline.
        // The differentiated values of the enclosing code a closure reads: each
        // column's cotangents summed, as the arguments'.
        let mut zeros: Vec<TokenStream> = refs
            .iter()
            .map(|x| quote!(::adjoint::__private::zeros(#x)))
            .collect();
        let mut contributions = Vec::new();
        let (mut accs, mut cots) = (accs, cots);
        let run = match l.closure.as_deref() {
            None => quote! {
                let (__o, __pb2) = ::adjoint::scope::Child::module(__module)
                    .#companion(&mut __cx2, #(#pass,)* #(#tangents,)*);
                let (mut __cv, _, #(#cots,)* #(#skip,)*) = __pb2(#seeds);
            },
            Some(closure) => match self.closure_rerun(r, l, closure) {
                Some((code, captured)) => {
                    let run =
                        closure_jvp_vjp(code, &pass, &tangents, &seeds, &cots, None, &captured);
                    for ((v, k), zero) in captured
                        .contributions(closure)
                        .into_iter()
                        .zip(captured.owned_zeros)
                    {
                        let acc = format_ident!("{}_acc", k);
                        zeros.push(zero);
                        cots.push(k);
                        contributions.push((v, acc.clone()));
                        accs.push(acc);
                    }
                    run
                }
                None => return,
            },
        };
        let merge = self.merge_rerun();
        let (visible, rngs) = (&l.visible, &l.rngs);
        let first = &refs[0];
        r.code.push(quote! {
            let (#(#accs,)*) = {
                let (__rerun, __child, __module, _, (#(#kept,)*)) = &#snap;
                #(#bind)*
                let (#(mut #accs,)*) = (#(#zeros,)*);
                let __n = ::adjoint::__private::basis_len(#first);
                for __i in 0..__n {
                    let mut __snapshot = __rerun.variables();
                    let mut __cx2 = __rerun.scope(&mut __snapshot, __child);
                    __cx2.restrict(#visible, #rngs);
                    #run
                    #merge
                    #(::adjoint::__private::Accumulate::accumulate(&mut #accs, #cots);)*
                }
                (#(#accs,)*)
            };
        });
        for (a, c) in l.args.iter().zip(&accs) {
            self.contribute(r, &a.atom, c.to_token_stream());
        }
        for (v, c) in contributions {
            self.contribute(r, &Atom::Var(v), c.to_token_stream());
        }
    }

    /// The cotangent of `v`, or a zero of its value's shape where none reached it.
    /// The cotangent of `v` if it has one, else zeros shaped as `like` (a part of
    /// the rerun's output, `__o..`): what seeds a rerun's output.
    fn seed(&self, r: &Rev, v: Option<Var>, like: TokenStream) -> TokenStream {
        match v {
            Some(v) if r.init.contains(&v) => self.bar(v).to_token_stream(),
            _ => quote!(::adjoint::__private::zeros(&#like)),
        }
    }

    pub(super) fn cot_or_zero(&mut self, r: &mut Rev, v: Var) -> TokenStream {
        if r.init.contains(&v) {
            self.bar(v).to_token_stream()
        } else {
            let x = self.read_var(r, v);
            quote!(::adjoint::__private::zeros(&#x))
        }
    }

    /// With parameters differentiated, what a rerun gives the parameters (`__cv`,
    /// poisoned if the rerun failed) added into theirs.
    /// `let outs = { .. };` running `run` in the child's scope as it was before the
    /// transform (its snapshot `snap`: the variables, the random streams, the child's
    /// path, the module, the variables' tangents, the kept arguments), then merging
    /// the variables' cotangents `run` leaves in `__cv`; `outs` the tuple of names
    /// `run` binds (`(__c0, ..)`).
    fn in_rerun_scope(
        &self,
        l: &Lifted,
        snap: &TokenStream,
        kept: &[TokenStream],
        outs: TokenStream,
        run: TokenStream,
    ) -> TokenStream {
        let merge = self.merge_rerun();
        let (visible, rngs) = (&l.visible, &l.rngs);
        quote! {
            let #outs = {
                let (__rerun, __child, __module, __tangents, (#(#kept,)*)) = &#snap;
                let mut __snapshot = __rerun.variables();
                let mut __cx2 = __rerun.scope(&mut __snapshot, __child);
                __cx2.restrict(#visible, #rngs);
                #run
                #merge
                #outs
            };
        }
    }

    fn merge_rerun(&self) -> Option<TokenStream> {
        self.f.params_active.then(|| {
            quote! {
                ::adjoint::__private::rerun_failed(&mut __cv, __cx2.error());
                ::adjoint::__private::Accumulate::accumulate(&mut __vars_bar, __cv);
            }
        })
    }

    /// Whether the transform was given `a` by reference (`&x`, or a parameter that is
    /// a reference).
    fn passed_by_ref(&self, a: &Arg) -> bool {
        a.by_ref || self.is_reference_param(&a.atom)
    }

    /// The pattern binding the copies in a snapshot (see `primal.rs`): `__a{k}` for an
    /// argument passed by value, which the transform may have moved; `_` for one
    /// passed by reference, read as any value the sweep reads.
    fn kept_pattern(&self, args: &[Arg]) -> Vec<TokenStream> {
        args.iter()
            .enumerate()
            .map(|(k, a)| {
                if self.passed_by_ref(a) {
                    quote!(_)
                } else {
                    format_ident!("__a{}", k).to_token_stream()
                }
            })
            .collect()
    }

    /// A reference to argument `k` of a lifted transform for its rerun (the snapshot
    /// bound by reference): read from the primal if it was passed by reference, its
    /// kept copy if by value.
    fn rerun_arg_ref(&mut self, r: &mut Rev, a: &Arg, k: usize) -> TokenStream {
        if self.passed_by_ref(a) {
            let x = self.read_atom(r, &a.atom);
            if a.by_ref {
                quote!(&#x)
            } else {
                // The owning companion holds its own copy: borrow either way.
                quote!(::adjoint::__private::Value::primal(&#x))
            }
        } else {
            format_ident!("__a{}", k).to_token_stream()
        }
    }

    /// A reference to each argument of a lifted transform for its reruns, bound as
    /// `__x{k}` (see [`Self::rerun_arg_ref`]): the names and the statements.
    fn bound_args(&mut self, r: &mut Rev, args: &[Arg]) -> (Vec<Ident>, Vec<TokenStream>) {
        let refs: Vec<Ident> = (0..args.len()).map(|k| format_ident!("__x{}", k)).collect();
        let bind = args
            .iter()
            .zip(&refs)
            .enumerate()
            .map(|(k, (a, x))| {
                let value = self.rerun_arg_ref(r, a, k);
                quote!(let #x = #value;)
            })
            .collect();
        (refs, bind)
    }

    /// Argument `k` passed to the rerun as `like` was passed to the transform: by
    /// reference where it was, else a copy (the rerun may run more than once).
    fn rerun_arg(&mut self, r: &mut Rev, a: &Arg, like: &Arg, k: usize) -> TokenStream {
        let x = self.rerun_arg_ref(r, a, k);
        if self.passed_by_ref(like) {
            x
        } else {
            quote!(::core::clone::Clone::clone(#x))
        }
    }
}

/// The child's forward mode a second-order pullback runs again, differentiated:
/// along the inputs (`__call_body_jvp`'s VJP), or with the variables' tangents
/// `tangents` set in the scope `__cx2` too (`__call_body_tjvp`'s, whose cotangents
/// for the tangents are dropped: the transform's variable tangents are constants).
/// Its VJP's name, what goes before the call, and what follows the pullback's result
/// bound to `__cv`.
/// The values of the enclosing code a closure reads, as its rerun is given them
/// after its arguments (see [`Rerun::closure`]): each as it was (a reference passed
/// on, a copy of any other: a rerun may run more than once), a zero tangent of its
/// type, and the name its cotangent is bound to (`__k{j}`).
#[derive(Default)]
struct Captured {
    primals: Vec<TokenStream>,
    zeros: Vec<TokenStream>,
    /// Owned zeros of each (a cotangent's), for sums over reruns.
    owned_zeros: Vec<TokenStream>,
    cots: Vec<Ident>,
}

impl Captured {
    /// Each variable passed with its cotangent's name.
    fn contributions(&self, closure: &Rerun) -> Vec<(Var, Ident)> {
        closure
            .passed
            .iter()
            .copied()
            .zip(self.cots.iter().cloned())
            .collect()
    }
}

/// A closure's JVP-VJP (see [`Rerun`]) run inline in the rerun scope `__cx2`: its
/// parameters bound (the module, the scope, `primals` and the `captured` values,
/// `tangents` and their zero tangents), its forward mode, then its reverse seeded
/// with `seeds` (which read its output as `__o`), binding `mut __cv`, `cots` (one
/// per primal), the captured values' cotangents and, given `tangent_cots`, one per
/// tangent.
fn closure_jvp_vjp(
    code: &RerunCode,
    primals: &[TokenStream],
    tangents: &[TokenStream],
    seeds: &TokenStream,
    cots: &[Ident],
    tangent_cots: Option<&[Ident]>,
    captured: &Captured,
) -> TokenStream {
    let n = (code.params.len() - 2) / 2;
    let (mdl, cxn) = (&code.params[0], &code.params[1]);
    let (xs, dots) = (&code.params[2..2 + n], &code.params[2 + n..]);
    let tangent_cots: Vec<TokenStream> = match tangent_cots {
        Some(t) => t.iter().map(ToTokens::to_token_stream).collect(),
        None => primals.iter().map(|_| quote!(_)).collect(),
    };
    let skip = captured.cots.iter().map(|_| quote!(_));
    let (kcots, kprimals, kzeros) = (&captured.cots, &captured.primals, &captured.zeros);
    let (primal, output, reverse) = (&code.primal, &code.output, &code.reverse);
    quote! {
        let #mdl = ::adjoint::scope::Entered(::adjoint::scope::Child::module(__module));
        let #cxn: &mut ::adjoint::Scope = &mut __cx2;
        let (#(#xs,)*) = (#(#primals,)* #(#kprimals,)*);
        let (#(#dots,)*) = (#(#tangents,)* #(#kzeros,)*);
        #primal
        let __o = #output;
        let __ct = #seeds;
        let (mut __cv, _, _, #(#cots,)* #(#kcots,)* #(#tangent_cots,)* #(#skip,)*) = { #reverse };
    }
}

/// A closure's reverse mode (see [`Rerun`]; a `vjp!`'s or a `vmap!`'s) run inline in
/// the rerun scope `__cx2` on `primals` and the `captured` values, seeded with
/// `seed`: the variables' cotangents (`__cv`), the primals' (`cots`) and the captured
/// values'. With a `fallback`, `seed` is an `Option` and the fallback gives the same
/// results where it is `None`.
fn closure_vjp<C: quote::ToTokens>(
    code: &RerunCode,
    primals: &[TokenStream],
    seed: &TokenStream,
    cots: &[C],
    captured: &Captured,
    fallback: Option<TokenStream>,
) -> TokenStream {
    let (mdl, cxn, xs) = (&code.params[0], &code.params[1], &code.params[2..]);
    let (kcots, kprimals) = (&captured.cots, &captured.primals);
    let (primal, output, reverse) = (&code.primal, &code.output, &code.reverse);
    let run = match fallback {
        None => quote!({ let __ct = #seed; #reverse }),
        Some(fallback) => quote! {
            match #seed {
                ::core::option::Option::Some(__ct) => { #reverse }
                ::core::option::Option::None => #fallback,
            }
        },
    };
    quote! {
        let #mdl = ::adjoint::scope::Entered(::adjoint::scope::Child::module(__module));
        let #cxn: &mut ::adjoint::Scope = &mut __cx2;
        let (#(#xs,)*) = (#(#primals,)* #(#kprimals,)*);
        #primal
        let __o = #output;
        let (mut __cv, _, _, #(#cots,)* #(#kcots,)*) = #run;
    }
}

fn forward_rerun(tangents: Option<TokenStream>) -> (Ident, TokenStream, TokenStream) {
    match tangents {
        None => (
            companion_ident(&format_ident!("__call_body_jvp"), "vjp_params"),
            TokenStream::new(),
            TokenStream::new(),
        ),
        Some(t) => (
            companion_ident(&format_ident!("__call_body_tjvp"), "vjp_params"),
            quote!(__cx2.set_tangents(::core::option::Option::Some(#t));),
            quote!(let (__cv, _) = ::adjoint::__private::split_tangent_cotangents(__cv);),
        ),
    }
}
