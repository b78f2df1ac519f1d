//! Forward mode of the operations: each primal as the user writes it, and each
//! rule's tangent (a template in terms of other differentiable operations, so that
//! the JVP is differentiated again).

use super::*;

impl Tangent<'_> {
    /// The primal operation as the user would write it, on references.
    pub(super) fn native(
        &self,
        native: &Native,
        operands: &[Arg],
        consts: &[Atom],
    ) -> Option<TokenStream> {
        let cs: Vec<TokenStream> = consts.iter().map(|c| self.atom(c)).collect();
        Some(match native {
            Native::Binary(op) => {
                let (a, b) = (self.r(&operands[0].atom), self.r(&operands[1].atom));
                quote!((#a #op #b))
            }
            Native::Neg => {
                let a = self.r(&operands[0].atom);
                quote!((-#a))
            }
            Native::Square => {
                let a = self.r(&operands[0].atom);
                quote!((#a * #a))
            }
            Native::Method { name, suffix } => {
                let recv = self.atom(&operands[0].atom);
                let args = operands[1..].iter().map(|a| self.r(&a.atom)).chain(cs);
                quote!(#recv.#name(#(#args),*) #suffix)
            }
            Native::Index => {
                let (a, i) = (self.atom(&operands[0].atom), &cs[0]);
                quote!(#a[#i])
            }
            // A rule's operands by reference, whatever they hold (ids are integers).
            Native::Function(path) => {
                let ops = operands.iter().map(|a| match &a.atom {
                    Atom::Var(v) if self.refs.contains(v) => self.atom(&a.atom),
                    other => {
                        let x = self.atom(other);
                        quote!(&#x)
                    }
                });
                quote!(#path(#(#ops,)* #(#cs),*))
            }
            Native::Tuple => {
                let items = operands.iter().map(|a| self.atom(&a.atom));
                quote!((#(#items,)*))
            }
            Native::Cast { ty, deref } => {
                let (a, star) = (self.atom(&operands[0].atom), deref.then(|| quote!(*)));
                quote!((#star #a as #ty))
            }
            // `concatenate(axis, &[a.view(), ..]).unwrap()`, `stack(..)`.
            Native::Variadic(path) => {
                let items: Vec<TokenStream> = operands.iter().map(|o| self.atom(&o.atom)).collect();
                variadic(path, &items, &cs[0])
            }
            // `array![..]` (the only rule written as its own function).
            Native::Rule => {
                let items: Vec<TokenStream> = operands.iter().map(|o| self.r(&o.atom)).collect();
                array_macro(&items, consts.first()?)?
            }
        })
    }

    /// An elementwise method of a value that moves (`h.tanh()`) as the rule's own
    /// function (`__private::tanh(&h)`), as reverse mode's primal computes it: the
    /// runtime's vectorising kernels where it has them, and the same value forward
    /// and reverse mode give. `None` for the other operations, and for a method
    /// that is not the rule's (`x.abs()` of an integer never moves).
    pub(super) fn kernel(
        &self,
        rule: &ops::Rule,
        native: &Native,
        operands: &[Arg],
    ) -> Option<TokenStream> {
        let Native::Method { name, suffix } = native else {
            return None;
        };
        if !suffix.is_empty()
            || !ops::unary(&name.to_string()).is_some_and(|r| std::ptr::eq(r, rule))
        {
            return None;
        }
        let func = format_ident!("{}", rule.func);
        let x = match &operands[0].atom {
            Atom::Var(v) if self.refs.contains(v) => self.atom(&operands[0].atom),
            other => {
                let x = self.atom(other);
                quote!(&#x)
            }
        };
        Some(quote!(::adjoint::__private::#func(#x)))
    }

    /// The tangent of `concatenate`/`stack` (`path`): the same of the operands'
    /// tangents (a zero for a constant one).
    pub(super) fn variadic(
        &self,
        path: &TokenStream,
        operands: &[Arg],
        consts: &[Atom],
    ) -> TokenStream {
        let items: Vec<TokenStream> = operands.iter().map(|o| self.dot_or_zero(&o.atom)).collect();
        variadic(path, &items, &self.atom(&consts[0]))
    }

    /// The tangent `d` broadcast to the shape of a sum with `other` (which has no
    /// tangent, read for its shape only): the `widen` rule.
    fn widened(&self, d: &TokenStream, other: &Atom) -> TokenStream {
        let o = self.r(other);
        quote!(::adjoint::__private::widen(&(#d), &::adjoint::no_grad(#o)))
    }

    /// The tangent of `y = func(operands, consts)`.
    pub(super) fn template(
        &self,
        func: &str,
        y: &Ident,
        scalar: bool,
        operands: &[Arg],
        consts: &[Atom],
    ) -> Option<TokenStream> {
        let a = &operands[0].atom;
        let ar = self.r(a);
        // A method's receiver is written bare: auto-referencing takes care of it.
        let an = self.atom(a);
        let da = self.dot(a);
        let y_name = y.clone();
        // A scalar by value (its type may be a type parameter, which has no arithmetic
        // on references), an array by reference.
        let yv = if scalar { quote!(#y) } else { quote!(&#y) };
        let y = quote!(&#y);
        let cs: Vec<TokenStream> = consts.iter().map(|c| self.atom(c)).collect();
        let unary = |deriv: TokenStream| {
            da.as_ref().map(|d| {
                if scalar {
                    quote!((#d * (#deriv)))
                } else {
                    quote!((#d * &(#deriv)))
                }
            })
        };
        // Constants in the element type of the result, which may be a type parameter
        // (a bare `2.0` is `f64`); `no_grad` keeps them constants when this is lowered
        // again.
        let one = quote!(::adjoint::no_grad(::adjoint::__private::lit(#y, 1.0)));
        // A product of two owned values of the result's type.
        let times = |a: TokenStream, b: TokenStream| {
            if scalar {
                quote!((#a * #b))
            } else {
                quote!((#a * &#b))
            }
        };
        match func {
            "add" | "sub" => {
                let b = &operands[1].atom;
                // One tangent: it alone, broadcast to the result's shape (no zero
                // of the other operand's shape added to it).
                match (&da, self.dot(b), b) {
                    (Some(d), None, Atom::Var(_)) => return Some(self.widened(d, b)),
                    (None, Some(e), _) if func == "add" && a.var().is_some() => {
                        return Some(self.widened(&e, a));
                    }
                    _ => {}
                }
                let (dao, dbo) = (self.dot_or_zero(a), self.dot_or_zero(b));
                Some(if func == "add" {
                    quote!((#dao + #dbo))
                } else {
                    quote!((#dao - #dbo))
                })
            }
            "mul" => {
                let b = &operands[1].atom;
                let br = self.r(b);
                let terms: Vec<TokenStream> = [
                    da.as_ref().map(|d| quote!((#d * #br))),
                    self.dot(b).map(|d| quote!((#ar * #d))),
                ]
                .into_iter()
                .flatten()
                .collect();
                Some(quote!((#(#terms)+*)))
            }
            "div" => {
                let b = &operands[1].atom;
                let br = self.r(b);
                let num = match (da.as_ref(), self.dot(b)) {
                    (Some(d), Some(e)) => quote!(&(#d - &(#yv * #e))),
                    (Some(d), None) => quote!(#d),
                    (None, Some(e)) => quote!(&(-(#yv * #e))),
                    (None, None) => return None,
                };
                Some(quote!((#num / #br)))
            }
            // Piecewise linear: each tangent weighted by the rule's own pullback at a
            // unit cotangent (one, zero, or a half at a tie), constant where defined.
            "max" | "min" => {
                let b = &operands[1].atom;
                let bn = self.atom(b);
                let (lhs, rhs) = (format_ident!("{}_pb_lhs", func), format_ident!("{}_pb_rhs", func));
                let weight = |pb: &Ident| {
                    quote!(::adjoint::no_grad(::adjoint::__private::#pb(&#an, &#bn, #one)))
                };
                let terms: Vec<TokenStream> = [
                    da.as_ref().map(|d| {
                        let w = weight(&lhs);
                        quote!((#d * #w))
                    }),
                    self.dot(b).map(|d| {
                        let w = weight(&rhs);
                        quote!((#d * #w))
                    }),
                ]
                .into_iter()
                .flatten()
                .collect();
                (!terms.is_empty()).then(|| quote!((#(#terms)+*)))
            }
            // The bounds are constants (as in reverse mode).
            "clamp" => da.map(|d| {
                let (lo, hi) = (self.atom(&operands[1].atom), self.atom(&operands[2].atom));
                quote!((#d * ::adjoint::no_grad(::adjoint::__private::clamp_pb(&#an, &#lo, &#hi, #one))))
            }),
            // `a.atan2(b)`: (b da - a db) / (a² + b²).
            "atan2" => {
                let b = &operands[1].atom;
                let bn = self.atom(b);
                let num = match (da.as_ref(), self.dot(b)) {
                    (Some(d), Some(e)) => quote!((#d * #bn - #an * #e)),
                    (Some(d), None) => quote!((#d * #bn)),
                    (None, Some(e)) => quote!((-(#an * #e))),
                    (None, None) => return None,
                };
                Some(quote!((#num / (#an * #an + #bn * #bn))))
            }
            // `a.hypot(b)`: (a da + b db) / y.
            "hypot" => {
                let b = &operands[1].atom;
                let bn = self.atom(b);
                let terms: Vec<TokenStream> = [
                    da.as_ref().map(|d| quote!((#an * #d))),
                    self.dot(b).map(|e| quote!((#bn * #e))),
                ]
                .into_iter()
                .flatten()
                .collect();
                (!terms.is_empty()).then(|| quote!(((#(#terms)+*) / #y_name)))
            }
            // `a.mul_add(b, c)` = a b + c.
            "mul_add" => {
                let (b, c) = (&operands[1].atom, &operands[2].atom);
                let bn = self.atom(b);
                let terms: Vec<TokenStream> = [
                    da.as_ref().map(|d| quote!((#d * #bn))),
                    self.dot(b).map(|e| quote!((#an * #e))),
                    self.dot(c),
                ]
                .into_iter()
                .flatten()
                .collect();
                (!terms.is_empty()).then(|| quote!((#(#terms)+*)))
            }
            // `x.powf(p)`: p x^(p-1) dx + y ln(x) dp (the exponent a scalar).
            "powf" => {
                let p = &operands[1].atom;
                let pn = self.atom(p);
                let ln = if scalar {
                    quote!((#yv * #an.ln()))
                } else {
                    quote!((#yv * &#an.ln()))
                };
                let terms: Vec<TokenStream> = [
                    unary(quote!(#an.powf(#pn - #one) * #pn)),
                    self.dot(p).map(|e| quote!((#ln * #e))),
                ]
                .into_iter()
                .flatten()
                .collect();
                (!terms.is_empty()).then(|| quote!((#(#terms)+*)))
            }
            "neg" => da.map(|d| quote!((-#d))),
            // Between float types: the tangent converted alike.
            "cast" => da.map(|d| {
                let t = &cs[0];
                quote!((#d as #t))
            }),
            "exp" => unary(quote!(#y_name)),
            // Derivatives in terms of the output (its rules' pullbacks are the
            // derivatives in `y`): one pass each, and a type rustc knows where the
            // element type is not yet inferred (a literal's `y + 1` would leave an
            // array plus an unknown scalar, whose sum's type it cannot pick).
            "exp_m1" | "sqrt" | "tan" => {
                let d1 = format_ident!("{}_d1", func);
                unary(quote!(::adjoint::__private::#d1(#y)))
            }
            "ln" => unary(quote!(#an.recip())),
            // The tangents of those derivative rules (third order), in rules that
            // have pullbacks: `(2x)' = 2`, `(y + 1)' = 1`, `(1 / 2y)' = -1 / 2y^2`,
            // `(1 + y^2)' = 2y`, `(1 / (1 + x))' = -(1 / (1 + x))^2`, `(1 / (1 + x^2))'
            // = -2x (1 / (1 + x^2))^2`, `(n x^(n - 1))' = n (n - 1) x^(n - 2)`.
            "square_d1" => da.map(|d| quote!(::adjoint::__private::square_d1(&(#d)))),
            "exp_m1_d1" => da.map(|d| quote!((#d).to_owned())),
            "sqrt_d1" => unary(times(
                quote!(-::adjoint::__private::sqrt_d1(&#an)),
                quote!(#an.recip()),
            )),
            "tan_d1" => unary(quote!(::adjoint::__private::square_d1(&#an))),
            "ln_1p_d1" => unary(quote!(-::adjoint::__private::ln_1p_d1(&#an).powi(2))),
            "atan_d1" => unary(times(
                quote!(-::adjoint::__private::square_d1(&#an)),
                quote!(::adjoint::__private::atan_d1(&#an).powi(2)),
            )),
            "powi_d1" => {
                let n = &cs[0];
                let nf = quote!(::adjoint::no_grad(::adjoint::__private::lit(#y, (#n) as f64)));
                unary(quote!((::adjoint::__private::powi_d1(&#an, #n - 1) * #nf)))
            }
            "recip" => unary(quote!(-(#yv * #yv))),
            "sin" => unary(quote!(#an.cos())),
            "cos" => unary(quote!(-#an.sin())),
            "sinh" => unary(quote!(#an.cosh())),
            "cosh" => unary(quote!(#an.sinh())),
            // One fused operation each, with its own pullbacks.
            "tanh" => da.map(|d| quote!(::adjoint::__private::tanh_tangent(#y, &(#d)))),
            // The tangents forward mode writes for them, differentiated again (`jvp =
            // 2`): `t = dx (1 - y^2)` gives `ddx (1 - y^2) - 2 y dy dx`, `t = dx y (1 -
            // y)` gives `ddx y (1 - y) + dy dx (1 - 2 y)`.
            "tanh_tangent" | "sigmoid_tangent" => {
                let (x, dx) = (&operands[1].atom, self.dot(&operands[1].atom));
                let (xr, dy) = (self.r(x), da.clone());
                let f = format_ident!("{}", func);
                let two = quote!(::adjoint::no_grad(::adjoint::__private::lit(&#an, 2.0)));
                let along_y = dy.map(|dy| {
                    let p = quote!((#dy * #xr));
                    if func == "tanh_tangent" {
                        quote!(-(((#p * #ar)) * #two))
                    } else {
                        quote!((#p - ((#p * #ar) * #two)))
                    }
                });
                let terms: Vec<TokenStream> = [
                    dx.map(|d| quote!(::adjoint::__private::#f(&#an, &(#d)))),
                    along_y,
                ]
                .into_iter()
                .flatten()
                .collect();
                Some(quote!((#(#terms)+*)))
            }
            "sigmoid" => da.map(|d| quote!(::adjoint::__private::sigmoid_tangent(#y, &(#d)))),
            // `n x^(n - 1)`: a literal exponent as literals, another as the integer
            // expression it is (`lit` converts it to the element type).
            // `n x^(n - 1)`, a rule of its own (`powi_d1`), the exponent constant.
            "powi" => {
                let n = &cs[0];
                unary(quote!(::adjoint::__private::powi_d1(&#an, #n)))
            }
            // `array![..]` of the elements' tangents.
            "from_elems" => {
                let items: Vec<TokenStream> = operands.iter().map(|o| self.dot_or_zero(&o.atom)).collect();
                array_macro(&items, consts.first()?)
            }
            "sum" => da.map(|d| quote!((#d).sum())),
            "mean" => da.map(|d| quote!((#d).mean().unwrap())),
            "sum_axis" => da.map(|d| {
                let ax = &cs[0];
                quote!((#d).sum_axis(#ax))
            }),
            "t" => da.map(|d| quote!((#d).t())),
            // Views and means along an axis are linear: the same operation on the
            // tangent (a view borrows the tangent variable, as the primal's does).
            "row" | "column" | "index_axis" | "slice" => self.dot_ref(a).map(|d| {
                let m = Ident::new(func, proc_macro2::Span::call_site());
                quote!((#d).#m(#(#cs),*))
            }),
            // ndarray's `insert_axis` and `reversed_axes` take the array by value: the
            // rules' functions give the tangent the primal's kind of array.
            "insert_axis" => self
                .dot_ref(a)
                .map(|d| quote!(::adjoint::__private::insert_axis(#d, #(#cs),*))),
            "reversed_axes" => self
                .dot_ref(a)
                .map(|d| quote!(::adjoint::__private::reversed_axes(#d))),
            "mean_axis" => da.map(|d| {
                let ax = &cs[0];
                quote!((#d).mean_axis(#ax).unwrap())
            }),
            // Ownership and layout conversions carry the tangent the same way.
            // How forward mode reads an operand (`jvp = 2` reads its own output).
            "operand" => da.map(|d| quote!(::adjoint::__private::operand(#d))),
            "widen" => da.map(|d| self.widened(&d, &operands[1].atom)),
            "to_owned" | "clone" | "view" | "as_standard_layout" | "to_shared" => da.map(|d| {
                let m = Ident::new(func, proc_macro2::Span::call_site());
                quote!((#d).#m())
            }),
            "index" => da.map(|d| {
                let i = &cs[0];
                quote!((#d)[#i])
            }),
            "dot" => {
                let b = &operands[1].atom;
                let br = self.r(b);
                let terms: Vec<TokenStream> = [
                    da.as_ref().map(|d| quote!((#d).dot(#br))),
                    self.dot(b).map(|e| quote!((#ar).dot(#e))),
                ]
                .into_iter()
                .flatten()
                .collect();
                Some(quote!((#(#terms)+*)))
            }
            // Bilinear: the rule once per active operand.
            "conv" | "dot_last" | "batch_matmul" => {
                let (b, f) = (&operands[1].atom, format_ident!("{}", func));
                let br = self.r(b);
                let terms: Vec<TokenStream> = [
                    da.as_ref()
                        .map(|d| quote!(::adjoint::__private::#f(&(#d), #br #(, #cs)*))),
                    self.dot(b)
                        .map(|e| quote!(::adjoint::__private::#f(#ar, &(#e) #(, #cs)*))),
                ]
                .into_iter()
                .flatten()
                .collect();
                Some(quote!((#(#terms)+*)))
            }
            // The tangent reshaped to the result's shape.
            "reshape" | "into_shape" => self.dot_ref(a).map(|d| {
                let f = format_ident!("{}", func);
                quote!(::adjoint::__private::#f(#d, #y_name.raw_dim()))
            }),
            // Linear in the table; the ids are constant.
            "take" => da.map(|d| {
                let ids = self.atom(&operands[1].atom);
                quote!(::adjoint::__private::take(&(#d), &#ids))
            }),
            // Along an axis: rules of their own, differentiated again by second order.
            "softmax" | "log_softmax" => da.map(|d| {
                let (f, axis) = (format_ident!("{}_tangent", func), &cs[0]);
                quote!(::adjoint::__private::#f(#y, &(#d), #axis))
            }),
            // optax's fused cross entropies over the last axis: `-sum(l * lsm)` with
            // `lsm = log_softmax(x)`, its tangent `-sum(dl * lsm + l * dlsm)`; integer
            // labels as a constant one-hot (NaN for a label out of range, as the loss).
            "softmax_cross_entropy" | "softmax_cross_entropy_with_integer_labels" => {
                let axis = quote!(::adjoint::no_grad(::adjoint::__private::last_axis(#ar)));
                let lsm = quote!(::adjoint::__private::log_softmax(#ar, #axis));
                let l = &operands[1].atom;
                let labels = if func == "softmax_cross_entropy" {
                    self.r(l)
                } else {
                    let l = self.atom(l);
                    quote!(&::adjoint::no_grad(::adjoint::__private::one_hot_like(#ar, &#l)))
                };
                let terms: Vec<TokenStream> = [
                    da.as_ref().map(|d| quote!((#labels * &::adjoint::__private::log_softmax_tangent(&#lsm, &(#d), #axis)).sum_axis(#axis))),
                    self.dot(l).map(|dl| quote!((#dl * &#lsm).sum_axis(#axis))),
                ]
                .into_iter()
                .flatten()
                .collect();
                Some(quote!((-(#(#terms)+*))))
            }
            "logsumexp" => da.map(|d| {
                let axis = &cs[0];
                quote!((::adjoint::__private::softmax(#ar, #axis) * &(#d)).sum_axis(#axis))
            }),
            // Linear in both: the tangents put alike (a zero for a constant one).
            "put_index_axis" => {
                let (dx, dy) = (self.dot_or_zero(a), self.dot_or_zero(&operands[1].atom));
                let (axis, i) = (&cs[0], &cs[1]);
                Some(quote!(::adjoint::__private::put_index_axis(#dx, #dy, #axis, #i)))
            }
            // A copy of the tangent, of its own type (as the primal's).
            "dup" => a.var().filter(|v| self.has_dot.contains(v)).map(|v| {
                let dn = dot_name(self.f.name(v));
                quote!(::adjoint::__private::dup(&#dn))
            }),
            // Each part's tangent owned, by `to_owned` (a rule: the JVP is
            // differentiated again).
            "tuple" => {
                let items = operands.iter().map(|o| {
                    let d = self.dot_or_zero(&o.atom);
                    quote!((#d).to_owned())
                });
                Some(quote!((#(#items,)*)))
            }
            // A tuple's tangent is the tuple of its fields' tangents.
            "field" => self.dot_ref(a).map(|d| {
                let at = &cs[0];
                quote!(::adjoint::__private::field(#d, #at))
            }),
            "permuted_axes" => self.dot_ref(a).map(|d| {
                let axes = &cs[0];
                quote!(::adjoint::__private::permuted_axes(#d, &#axes))
            }),
            // Linear in `x`; the mask is constant and the fill's tangent zero.
            "where_" => self.dot(&operands[1].atom).map(|d| {
                let (mask, fill) = (self.atom(&operands[0].atom), &cs[0]);
                quote!(::adjoint::__private::where_(&#mask, &(#d), #fill - #fill))
            }),
            "avg_pool" => da.map(|d| quote!(::adjoint::__private::avg_pool(&(#d) #(, #cs)*))),
            // The tangents forward mode writes, differentiated again (`jvp = 2`).
            // Pooling's is linear in `dx` (the window's pick is piecewise constant).
            "max_pool_tangent" | "min_pool_tangent" => self.dot(&operands[1].atom).map(|d| {
                let f = format_ident!("{}", func);
                quote!(::adjoint::__private::#f(#ar, &(#d) #(, #cs)*))
            }),
            // `t = y (dx - sum(y dx))`: `softmax_tangent(y, ddx)` along `dx`, and
            // `dy dx - dy sum(y dx) - y sum(dy dx)` along `y`.
            "softmax_tangent" => {
                let (x, axis) = (&operands[1].atom, &cs[0]);
                let xr = self.r(x);
                let sum = |t: TokenStream| quote!((#t).sum_axis(#axis).insert_axis(#axis));
                let along_y = da.as_ref().map(|dy| {
                    let (s, sd) = (sum(quote!(#ar * #xr)), sum(quote!(#dy * #xr)));
                    quote!(((#dy * #xr) - &(#dy * &#s) - &(#ar * &#sd)))
                });
                let terms: Vec<TokenStream> = [
                    self.dot(x).map(|d| quote!(::adjoint::__private::softmax_tangent(&#an, &(#d), #axis))),
                    along_y,
                ]
                .into_iter()
                .flatten()
                .collect();
                Some(quote!((#(#terms)+*)))
            }
            // `t = dx - sum(exp(y) dx)`: `log_softmax_tangent(y, ddx)` along `dx`, and
            // `-sum(exp(y) dy dx)` (broadcast over the axis) along `y`.
            "log_softmax_tangent" => {
                let (x, axis) = (&operands[1].atom, &cs[0]);
                let xr = self.r(x);
                let along_dx = self
                    .dot(x)
                    .map(|d| quote!(::adjoint::__private::log_softmax_tangent(&#an, &(#d), #axis)));
                let along_y = da.as_ref().map(|dy| {
                    quote!(((#ar.exp() * #dy) * #xr).sum_axis(#axis).insert_axis(#axis))
                });
                match (along_dx, along_y) {
                    (Some(t), Some(s)) => Some(quote!((#t - &#s))),
                    (Some(t), None) => Some(t),
                    // The full shape, as the tangent's.
                    (None, Some(s)) => Some(quote!((&::adjoint::no_grad(::adjoint::__private::zeros(&#an)) - &#s))),
                    (None, None) => None,
                }
            }
            "max_pool" | "min_pool" => da.map(|d| {
                let f = format_ident!("{}_tangent", func);
                quote!(::adjoint::__private::#f(#ar, &(#d) #(, #cs)*))
            }),
            // An activation or a function with a derivative rule (`square`, `atan`):
            // the tangent times that rule (`gelu_d1`, `square_d1`).
            _ => {
                let d1 = Ident::new(
                    ops::activation_derivative(func)?,
                    proc_macro2::Span::call_site(),
                );
                unary(quote!(::adjoint::__private::#d1(&#an #(, #cs)*)))
            }
        }
    }
}

/// `path(axis, &[item.view(), ..]).unwrap()`, as the user writes it (lowering reads it
/// back).
fn variadic(path: &TokenStream, items: &[TokenStream], axis: &TokenStream) -> TokenStream {
    quote!(#path(#axis, &[#((#items).view()),*]).unwrap())
}

/// `array![..]` of `items` (row-major) nested as `shape` (the `from_elems` constant,
/// a tuple of lengths), written so that lowering reads it back as `from_elems`.
fn array_macro(items: &[TokenStream], shape: &Atom) -> Option<TokenStream> {
    let Atom::Lit(t) = shape else { return None };
    let lens: Vec<usize> = match syn::parse2::<syn::Expr>(t.clone()).ok()? {
        syn::Expr::Tuple(tuple) => tuple
            .elems
            .iter()
            .map(|e| match e {
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Int(i),
                    ..
                }) => i.base10_parse().ok(),
                _ => None,
            })
            .collect::<Option<_>>()?,
        _ => return None,
    };
    /// One level of nesting: its `lens[0]` parts, each an element or a row.
    fn level(
        items: &mut std::slice::Iter<'_, TokenStream>,
        lens: &[usize],
    ) -> Option<Vec<TokenStream>> {
        let (&n, rest) = lens.split_first()?;
        (0..n)
            .map(|_| match rest {
                [] => items.next().cloned(),
                _ => level(items, rest).map(|row| quote!([#(#row),*])),
            })
            .collect()
    }
    let top = level(&mut items.iter(), &lens)?;
    Some(quote!(::adjoint::__private::array![#(#top),*]))
}
