//! Forward mode of lifted transforms: a `vmap!` of `mdl.call` maps the child's JVP.

use super::*;

impl Tangent<'_> {
    /// `y = vmap!(cx, |mdl, cx, x..| mdl.call(cx, x..), Child, x.., in_axes = [..])`:
    /// as written where nothing varies; else its JVP, a `vmap!` of the child's JVP
    /// over the arguments and their tangents (each mapped as its primal), giving the
    /// output and its tangent stacked. The JVP-VJP differentiates that `vmap!` again
    /// (see `LiftedKind::Vmap`). The scope goes to the child as `&mut *cx`, a reborrow
    /// that module-call routing leaves alone (the `vmap!` entered the child's scope
    /// already). Other lifted transforms are not covered.
    pub(super) fn lifted(&mut self, l: &Lifted) -> Option<TokenStream> {
        let LiftedKind::Vmap {
            in_axes,
            axis_name,
            jvp: false,
        } = &l.kind
        else {
            return None;
        };
        let y = self.f.name(l.dsts[0]).clone();
        let tokens = &l.tokens;
        if !(self.varied)(l.dsts[0]) {
            return Some(quote!(let #y = #tokens;));
        }
        // A closure that is more than `mdl.call(cx, x..)`: not covered.
        if self.mode != Mode::Inputs || l.closure.is_some() {
            return None;
        }
        let dy = dot_name(&y);
        // A mapped argument without a tangent gets a zero array (`vmap!` slices it).
        let mut zeros = TokenStream::new();
        let mut primals = Vec::new();
        let mut tangents = Vec::new();
        for (k, a) in l.args.iter().enumerate() {
            primals.push(self.arg(a));
            if a.atom.var().is_some_and(|v| self.has_dot.contains(&v)) {
                tangents.push(self.call_tangent(a));
                continue;
            }
            let (z, x) = (format_ident!("{}_zero{}", dy, k), self.atom(&a.atom));
            zeros.extend(quote!(let #z = ::adjoint::no_grad(::adjoint::__private::zeros(&#x));));
            tangents.push(if a.by_ref { quote!(&#z) } else { quote!(#z) });
        }
        let params: Vec<Ident> = (0..2 * l.args.len())
            .map(|k| format_ident!("__p{}", k))
            .collect();
        let companion = crate::names::child_jvp();
        let (scope, module) = (self.atom(&l.scope), &l.module);
        let axes = in_axes.iter().chain(in_axes).map(|a| match a {
            Some(k) => k.to_token_stream(),
            None => quote!(None),
        });
        let name = axis_name.as_ref().map(|n| quote!(, axis_name = #n));
        self.has_dot.insert(l.dsts[0]);
        Some(quote! {
            #zeros
            let (#y, #dy) = vmap!(
                #scope,
                |__mdl, __cx, #(#params),*| ::adjoint::scope::Child::module(&__mdl).#companion(&mut *__cx, #(#params),*).0,
                #module,
                #(#primals,)*
                #(#tangents,)*
                in_axes = [#(#axes),*]
                #name
            );
        })
    }
}
