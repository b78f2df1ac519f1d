//! Forward mode of control flow: loops carry each value's tangent beside it, a
//! branch's arms end in their values and tangents.

use super::*;

impl Tangent<'_> {
    /// A loop with its tangents carried beside its values: each carry `c` that
    /// varies has a tangent carry, zero where it starts constant; every leaf of the
    /// body hands both on (`break` too, so that they are set after the loop).
    pub(super) fn looping(&mut self, lp: &Loop) -> Option<TokenStream> {
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
    pub(super) fn copied(&self, a: &Atom, tangent: bool) -> TokenStream {
        let Some(v) = a.var() else {
            return self.atom(a);
        };
        let name = if tangent {
            dot_name(self.f.name(v))
        } else {
            self.f.name(v).clone()
        };
        if self.scalar[v.0 as usize] || self.refs.contains(&v) {
            quote!(#name)
        } else {
            quote!(#name.clone())
        }
    }

    /// A block's tail: its leaf as `leaf` writes it, or its branch. Leaves that leave
    /// the block otherwise (`break`, `continue`; `return` unless the block is the
    /// function's, `output`) are not covered.
    pub(super) fn tail(
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
    pub(super) fn branching(
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
    pub(super) fn output(&self, v: &Val, tangent: bool) -> TokenStream {
        match v {
            Val::Tuple(vs) => {
                let items = vs.iter().map(|v| self.output(v, tangent));
                quote!((#(#items,)*))
            }
            Val::Atom(a) if !tangent => self.atom(a),
            Val::Atom(a) => match a.var().filter(|v| self.has_dot.contains(v)) {
                Some(v) if self.refs.contains(&v) => {
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
}
