//! Forward mode of lifted transforms: a `vmap!` maps the child's JVP, or its
//! closure's.

use super::*;

impl Tangent<'_> {
    /// `y = vmap!(cx, |mdl, cx, x..| mdl.call(cx, x..), Child, x.., in_axes = [..])`:
    /// as written where nothing varies; else its JVP, a `vmap!` of the child's JVP
    /// (or of a closure's own forward mode, `Rerun::forward`) over the arguments and
    /// their tangents (each mapped as its primal), giving the
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
        if self.mode != Mode::Inputs {
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
        let mut axes: Vec<TokenStream> = in_axes
            .iter()
            .map(|a| match a {
                Some(k) => k.to_token_stream(),
                None => quote!(None),
            })
            .collect();
        let mapped = match l.closure.as_deref() {
            None => {
                let params: Vec<Ident> = (0..2 * l.args.len())
                    .map(|k| format_ident!("__p{}", k))
                    .collect();
                let companion = crate::names::child_jvp();
                quote!(|__mdl, __cx, #(#params),*| ::adjoint::scope::Child::module(&__mdl).#companion(&mut *__cx, #(#params),*).0)
            }
            // A closure that is more than `mdl.call(cx, x..)`: its own forward mode
            // (see `Rerun::forward`), the differentiated values of the enclosing code
            // it reads passed after the arguments, broadcast, with their tangents:
            // by reference (every example reads them), a scalar by value.
            Some(closure) => {
                let forward = closure.forward.clone()?;
                for v in &closure.passed {
                    let a = Arg {
                        atom: Atom::Var(*v),
                        by_ref: !self.scalar[v.0 as usize] && !self.refs.contains(v),
                    };
                    primals.push(self.arg(&a));
                    tangents.push(self.call_tangent(&a));
                    axes.push(quote!(None));
                }
                forward
            }
        };
        let axes = axes.iter().chain(&axes);
        let (scope, module) = (self.atom(&l.scope), &l.module);
        let name = axis_name.as_ref().map(|n| quote!(, axis_name = #n));
        self.has_dot.insert(l.dsts[0]);
        Some(quote! {
            #zeros
            let (#y, #dy) = vmap!(
                #scope,
                #mapped,
                #module,
                #(#primals,)*
                #(#tangents,)*
                in_axes = [#(#axes),*]
                #name
            );
        })
    }
}
