//! What the transform macros expand to: `grad!(f)` and its siblings as calls of
//! companions, their closure forms (differentiated in place), and their lifted
//! forms inside a module (Flax's `nn.grad`, `nn.vjp`, `nn.jvp`).

use super::companions::*;
use crate::activity;
use crate::ctxt::Ctxt;
use crate::lower::{self, ParamSpec};
use crate::parse::signature::*;
use crate::parse::transform::{Transform, TransformInput, names_option};
use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident, quote};
use syn::spanned::Spanned;
use syn::{Ident, Pat, Type};

/// `hvp!(f)`, `jacfwd!(f)`, `jacrev!(f)`, `hessian!(f)`: the companion of that name,
/// which `#[differentiable(jvp)]` writes.
pub fn jacobian_transform(which: &str, input: TokenStream) -> TokenStream {
    if let Ok(lifted) = syn::parse2::<TransformInput>(input.clone())
        && lifted.positional.len() >= 3
        && matches!(lifted.positional[1], syn::Expr::Closure(_))
    {
        return match which {
            "hvp" | "hessian" => lifted_hessian(which, &lifted),
            _ => lifted_jacobian(which, &lifted),
        };
    }
    match syn::parse2::<syn::Path>(input.clone()) {
        Ok(path) => crate::names::companion_path(&path, which, false).into_token_stream(),
        Err(_) => syn::Error::new_spanned(
            input,
            format!("{which}! takes a function marked `#[differentiable(jvp)]`: `{which}!(f)`"),
        )
        .into_compile_error(),
    }
}

/// The lifted Jacobians inside a module (which Flax lacks, flax#735):
/// `jacrev!(cx, |mdl, cx, x, ..| body, Child, x, ..)` and `jacfwd!(..)` give the
/// Jacobian of the closure's output with respect to its first primal, shaped as JAX's
/// (`output ++ input`), the child's variables held constant as in `grad!`.
///
/// `jacrev!` runs a lifted `vjp!` per output element, `jacfwd!` a lifted `jvp!` per
/// input element. The first runs in the module's scope (what the child writes stays
/// written); the others run again from the scope's state before it (the same
/// variables, the same random keys), so every row or column sees the same function.
fn lifted_jacobian(which: &str, input: &TransformInput) -> TokenStream {
    let cx = Ctxt::default();
    let forward = which == "jacfwd";
    if input.positional.len() < 4 {
        cx.error_at(
            &input.positional[1],
            format!("{which}! takes `cx, |mdl, cx, x, ..| body, Module, x, ..` inside a module: at least one primal"),
        );
    }
    if !input.plain() {
        cx.error(
            Span::call_site(),
            format!("{which}! inside a module takes no options: it differentiates with respect to the first primal, the variables held constant"),
        );
    }
    let errors = cx.into_compile_errors();
    if !errors.is_empty() {
        return errors;
    }
    let (scope, closure, module) = (
        &input.positional[0],
        &input.positional[1],
        &input.positional[2],
    );
    let args = &input.positional[3..];
    let names: Vec<Ident> = (0..args.len())
        .map(|i| format_ident!("__arg{}", i))
        .collect();
    let pass: Vec<TokenStream> = names
        .iter()
        .map(|n| quote!(::core::clone::Clone::clone(&#n)))
        .collect();
    let first = &names[0];
    // One derivative of the closure, in the scope `$cx`, along `$dir` (a unit tangent
    // of the first primal, or a unit cotangent of the output).
    let pass_rest = &pass[1..];
    let derivative = |cxn: TokenStream, dir: TokenStream| {
        if forward {
            quote! {
                ::adjoint::jvp!(
                    #cxn, #closure, #module,
                    (#(#pass,)*),
                    (#dir, #(::adjoint::__private::zeros(&#pass_rest),)*),
                    ::adjoint::Variables::new()
                )
            }
        } else {
            quote!(::adjoint::vjp!(#cxn, #closure, #module, #(#pass),*))
        }
    };
    let body = if forward {
        forward_columns(first, |cxn| {
            let d = derivative(cxn, quote!(__e));
            quote!(#d.1)
        })
    } else {
        let real = derivative(quote!(__cx), TokenStream::new());
        let rerun = derivative(quote!(&mut __cx2), TokenStream::new());
        let again = rerun_scope();
        quote! {
            let (__y, __pb) = #real;
            let mut __first = ::core::option::Option::Some(__pb);
            ::adjoint::jacobian::jacrev(&#first, &__y, |__e| match __first.take() {
                ::core::option::Option::Some(__pb) => __pb(__e).1,
                ::core::option::Option::None => {
                    #again
                    let (_, __pb) = #rerun;
                    __pb(__e).1
                }
            })
        }
    };
    quote!({
        let (#(#names,)*) = (#(#args,)*);
        let __cx: &mut ::adjoint::Scope = &mut *(#scope);
        let __point = __cx.rerun_point();
        let __path = __cx.path();
        #body
    })
}

/// The lifted second derivatives inside a module (which Flax lacks, flax#735), of a
/// child with a scalar output, the child's variables held constant as in `grad!`:
/// `hvp!(cx, |mdl, cx, x, ..| mdl.call(cx, x, ..), Child, x, .., v, ..)` gives the
/// Hessian times the tangents (one per primal, a tuple for more than one), and
/// `hessian!(cx, |mdl, cx, x, ..| mdl.call(cx, x, ..), Child, x, ..)` the Hessian in
/// the first primal (the others held), shaped `input ++ input` as `jax.hessian`.
///
/// Each product is the child's JVP differentiated in reverse (its JVP-VJP, as a
/// lifted `grad!` differentiated again runs it), seeded with one on the tangent
/// output; `hessian!` runs it once per input element, the first in the module's scope
/// and the others again from the scope's state before it (the same variables and
/// random keys), so every column sees the same function. The closure must be
/// `mdl.call(..)`: the child's forward mode is what is differentiated.
fn lifted_hessian(which: &str, input: &TransformInput) -> TokenStream {
    let cx = Ctxt::default();
    let (scope, module) = (&input.positional[0], &input.positional[2]);
    let syn::Expr::Closure(c) = &input.positional[1] else {
        return TokenStream::new();
    };
    // The child's forward mode is what is differentiated: the closure must be its call
    // with the closure's own parameters, in order.
    let child = crate::parse::transform::child_call(c);
    let n = c.inputs.len().saturating_sub(2);
    let calls_child = child == Some((crate::parse::transform::ChildCall::Call, n));
    let given = input.positional.len() - 3;
    let want = if which == "hvp" { 2 * n } else { n };
    if n == 0 || !calls_child {
        cx.error_at(
            c,
            format!("{which}! inside a module differentiates a child's forward mode: its closure is `|mdl, cx, x, ..| mdl.call(cx, x, ..)`"),
        );
    } else if given != want {
        cx.error_at(
            &input.positional[1],
            format!(
                "{which}! takes the scope, the closure, the module and {}: {want} argument(s) after the module, {given} given",
                if which == "hvp" { "the primals then their tangents" } else { "the primals" }
            ),
        );
    }
    if !input.plain() {
        cx.error(
            Span::call_site(),
            format!("{which}! inside a module takes no options: the variables are held constant"),
        );
    }
    let errors = cx.into_compile_errors();
    if !errors.is_empty() {
        return errors;
    }
    let args = &input.positional[3..];
    let names: Vec<Ident> = (0..args.len())
        .map(|i| format_ident!("__arg{}", i))
        .collect();
    let pass = |k: usize| {
        let a = &names[k];
        quote!(::core::clone::Clone::clone(&#a))
    };
    let primals: Vec<TokenStream> = (0..n).map(pass).collect();
    let hs: Vec<Ident> = (0..n).map(|i| format_ident!("__h{}", i)).collect();
    // The child's JVP-VJP in the scope `$cxn` along the tangents `$tangents`: the
    // cotangents of the primals for a one on the tangent output.
    let companion = crate::names::child_jvp();
    let product = |cxn: TokenStream, tangents: &[TokenStream]| {
        let (enter, exit) = lifted_module(module, &format_ident!("__mdl"), &format_ident!("__cxh"));
        quote! {{
            let __cxh: &mut ::adjoint::Scope = #cxn;
            #enter
            let (__o, __pb) = ::adjoint::scope::Child::module(&__mdl)
                .#companion(&mut *__cxh, #(#primals,)* #(#tangents,)*);
            let (_, _, #(#hs,)* ..) = __pb((
                ::adjoint::__private::zeros(&__o.0),
                ::adjoint::__private::grad_seed(&__o.1),
            ));
            #exit
            (#(#hs,)*)
        }}
    };
    let body = if which == "hvp" {
        let tangents: Vec<TokenStream> = (n..2 * n).map(pass).collect();
        let p = product(quote!(__cx), &tangents);
        if n == 1 { quote!(#p.0) } else { p }
    } else {
        // The first primal along a unit tangent, the others along zeros, each passed
        // as its primal is.
        let zeros: Vec<Ident> = (1..n).map(|k| format_ident!("__zero{}", k)).collect();
        let mut tangents = vec![quote!(::adjoint::__private::passed_like(&__arg0, &__e))];
        tangents.extend(
            zeros
                .iter()
                .zip(&names[1..n])
                .map(|(z, a)| quote!(::adjoint::__private::passed_like(&#a, &#z))),
        );
        let columns = forward_columns(&names[0], |cxn| {
            let p = product(cxn, &tangents);
            quote!(#p.0)
        });
        let held = &names[1..n];
        quote! {
            let __point = __cx.rerun_point();
            let __path = __cx.path();
            #(let #zeros = ::adjoint::__private::zeros(&#held);)*
            #columns
        }
    };
    quote!({
        let (#(#names,)*) = (#(#args,)*);
        let __cx: &mut ::adjoint::Scope = &mut *(#scope);
        #body
    })
}

/// A scope `__cx2` in the state a lifted Jacobian started from (`__point`, at
/// `__path`): where its rows or columns after the first run, so that all see the same
/// variables and random keys.
fn rerun_scope() -> TokenStream {
    quote! {
        let mut __vars = __point.variables();
        let mut __cx2 = __point.scope(&mut __vars, &__path);
    }
}

/// `jacfwd` of `first` by columns, `column(scope)` along the unit tangent `__e`: the
/// first in the module's scope `__cx`, the others again in a [`rerun_scope`].
fn forward_columns(first: &Ident, column: impl Fn(TokenStream) -> TokenStream) -> TokenStream {
    let (real, rerun) = (column(quote!(&mut *__cx)), column(quote!(&mut __cx2)));
    let again = rerun_scope();
    quote! {
        let mut __first = true;
        ::adjoint::jacobian::jacfwd(&#first, |__e| {
            if ::core::mem::take(&mut __first) {
                #real
            } else {
                #again
                #rerun
            }
        })
    }
}

pub fn transform(which: Transform, input: TokenStream) -> TokenStream {
    let input: TransformInput = match syn::parse2(input) {
        Ok(i) => i,
        Err(e) => return e.into_compile_error(),
    };
    let cx = Ctxt::default();
    let lifted =
        input.positional.len() >= 3 && matches!(input.positional[1], syn::Expr::Closure(_));
    if let Some(axes) = &input.reduce_axes {
        let at = axes
            .first()
            .map(|a| a.span())
            .unwrap_or_else(Span::call_site);
        if !lifted {
            cx.error(at, "`reduce_axes` names the axis of an enclosing `vmap!`: write `vmap!(grad!(|w, x| .., wrt = [w], reduce_axes = [\"batch\"]), in_axes = [None, 0], axis_name = \"batch\")`");
        } else if which != Transform::Vjp {
            cx.error(at, "`reduce_axes` sums variable cotangents over a `vmap!` axis: only `vjp!` computes them inside a module");
        }
    }
    let out = if which == Transform::Jvp
        && input.positional.len() == 1
        && matches!(input.positional[0], syn::Expr::Path(_))
    {
        let syn::Expr::Path(p) = &input.positional[0] else {
            unreachable!("checked")
        };
        crate::names::companion_path(&p.path, "jvp", false).into_token_stream()
    } else if which == Transform::Jvp {
        if lifted && input.positional.len() == 6 {
            lifted_jvp(&cx, &input)
        } else {
            cx.error(
                Span::call_site(),
                "jvp! takes `cx, |mdl, cx, x..| body, Module, (primals..), (tangents..), variable_tangents` inside a module",
            );
            TokenStream::new()
        }
    } else if lifted {
        lifted_transform(&cx, which, &input)
    } else if input.positional.len() > 1 {
        cx.error_at(&input.positional[1], "expected options after the function (`wrt = [..]`, `has_aux`); inside a module write `grad!(cx, |mdl, cx, x| .., Module, x)`");
        TokenStream::new()
    } else {
        match &input.positional[0] {
            syn::Expr::Path(p) => {
                if input.wrt.is_some() || input.has_aux {
                    cx.error_at(p, "`wrt` and `has_aux` take the closure form: `grad!(|x, y| f(x, y), wrt = [x])`");
                    TokenStream::new()
                } else {
                    let what = match which {
                        Transform::Grad => "grad",
                        Transform::ValueAndGrad => "value_and_grad",
                        Transform::Vjp | Transform::Jvp => "vjp",
                    };
                    crate::names::companion_path(&p.path, what, false).into_token_stream()
                }
            }
            syn::Expr::Closure(c) => closure_transform(&cx, which, c, &input),
            other => {
                cx.error_at(
                    other,
                    "expected a function path (`grad!(f)`) or a closure (`grad!(|x| ..)`)",
                );
                TokenStream::new()
            }
        }
    };
    let errors = cx.into_compile_errors();
    if errors.is_empty() { out } else { errors }
}

/// The lifted transform of a module, as `flax.linen.grad`: inside `call`,
/// `grad!(cx, |mdl, cx, x, y| mdl.call(cx, x, y), Child, x, y)` differentiates the
/// child with respect to the primals only; the child's variables are read from the
/// scope as constants, and what it writes to mutable collections stays written.
/// The result has one cotangent per primal (a 1-tuple for one primal).
pub(crate) fn lifted_transform(cx: &Ctxt, which: Transform, input: &TransformInput) -> TokenStream {
    let scope = &input.positional[0];
    let syn::Expr::Closure(c) = &input.positional[1] else {
        return TokenStream::new();
    };
    let module = &input.positional[2];
    let args = &input.positional[3..];
    if c.inputs.len() != args.len() + 2 {
        cx.error_at(
            &c.inputs,
            format!(
                "the closure takes the module, the scope and {} primal(s): `|mdl, cx, ..|`",
                args.len()
            ),
        );
        return TokenStream::new();
    }
    let Some((names, infos, body)) = lifted_closure(cx, c) else {
        return TokenStream::new();
    };
    // vjp! differentiates the child's parameters too; grad! treats them as constants.
    let params_active = which == Transform::Vjp;
    let options = Options {
        has_aux: input.has_aux,
        params_active,
        local_pullback: which != Transform::Vjp,
        calls: false,
    };
    let Some((_, g)) = generate(cx, &infos, &body, options) else {
        return TokenStream::new();
    };
    let (primal, output, reverse) = (&g.primal, &g.output, &g.reverse);
    let temps: Vec<Ident> = (0..args.len())
        .map(|i| format_ident!("__primal{}", i))
        .collect();
    let (mdl, cxn) = (&names[0], &names[1]);
    let primals = &names[2..];
    let grads: Vec<Ident> = (0..args.len()).map(|i| format_ident!("__g{}", i)).collect();
    let (value_pat, result) = match (which, input.has_aux) {
        (Transform::Grad, false) => (quote!(__value), quote!((#(#grads,)*))),
        (Transform::Grad, true) => (quote!((__value, __aux)), quote!(((#(#grads,)*), __aux))),
        (_, false) => (quote!(__value), quote!((__value, (#(#grads,)*)))),
        (_, true) => (
            quote!((__value, __aux)),
            quote!(((__value, __aux), (#(#grads,)*))),
        ),
    };
    let computation = if which == Transform::Vjp {
        let collections = match &input.vjp_variables {
            Some(names) => quote!(&[#(#names),*]),
            None => quote!(&["params"]),
        };
        let (out, ret) = if input.has_aux {
            (quote!((__value, __aux)), quote!((__value, __pb, __aux)))
        } else {
            (quote!(__value), quote!((__value, __pb)))
        };
        // Summed over a vmap! axis: the scope checks that the axis is bound.
        let vars_out =
            quote!(::adjoint::__private::vjp_variables(&__vars_bar, &__child, #collections));
        let (reduce_check, vars_out) = match &input.reduce_axes {
            Some(axes) => (
                quote!(#cxn.check_axes(&[#(#axes),*]);),
                quote!(::adjoint::__private::Reduced(#vars_out)),
            ),
            None => (TokenStream::new(), vars_out),
        };
        // The pullback takes copies of the enclosing code's values it reads, so that
        // the transform may run again (a `jacrev!` row each) and the values stay the
        // caller's.
        let reverse_idents = crate::hygiene::idents(reverse);
        let copied: Vec<Ident> = free_locals(&body, &names)
            .into_iter()
            .filter(|n| reverse_idents.contains(&n.to_string()))
            .collect();
        quote! {
            #reduce_check
            #primal
            let #out = #output;
            #(let #copied = ::core::clone::Clone::clone(&#copied);)*
            let __pb = ::adjoint::__private::pullback_of(&__value, move |__ct| {
                let (__vars_bar, _, _, #(#grads,)*) = { #reverse };
                (#vars_out, #(#grads,)*)
            });
            #ret
        }
    } else {
        quote! {
            #primal
            let #value_pat = #output;
            let __ct = ::adjoint::__private::grad_seed(&__value);
            let (_, _, #(#grads,)*) = { #reverse };
            #result
        }
    };
    let (visible, rngs) = (names_option(&input.variables), names_option(&input.rngs));
    let (enter, exit) = lifted_module(module, mdl, cxn);
    quote!({
        let (#(#temps,)*) = (#(#args,)*);
        let #cxn: &mut ::adjoint::Scope = &mut *(#scope);
        #enter
        let __child = #cxn.path();
        #(let #primals = #temps;)*
        let __restriction = #cxn.restrict(#visible, #rngs);
        #[allow(unused_mut, unused_variables, unused_parens)]
        let __result = { #computation };
        #cxn.unrestrict(__restriction);
        #exit
        __result
    })
}

/// The local variables of the enclosing code a closure's `body` reads: names used as
/// values (`w` of `&w * y`) that the body and `params` do not bind; not a callee,
/// nor a capitalised name (a constant, a unit struct).
fn free_locals(body: &syn::Block, params: &[Ident]) -> Vec<Ident> {
    #[derive(Default)]
    struct Names {
        used: Vec<Ident>,
        bound: Vec<String>,
    }
    impl<'ast> syn::visit::Visit<'ast> for Names {
        fn visit_expr_path(&mut self, p: &'ast syn::ExprPath) {
            if let Some(id) = p.path.get_ident()
                && p.qself.is_none()
                && !id.to_string().starts_with(|c: char| c.is_ascii_uppercase())
                && id != "self"
                && !self.used.contains(id)
            {
                self.used.push(id.clone());
            }
        }
        fn visit_expr_call(&mut self, c: &'ast syn::ExprCall) {
            if !matches!(&*c.func, syn::Expr::Path(_)) {
                self.visit_expr(&c.func);
            }
            c.args.iter().for_each(|a| self.visit_expr(a));
        }
        fn visit_pat_ident(&mut self, p: &'ast syn::PatIdent) {
            self.bound.push(p.ident.to_string());
            syn::visit::visit_pat_ident(self, p);
        }
        fn visit_macro(&mut self, m: &'ast syn::Macro) {
            // Its tokens may name values too (`dbg!(w)`).
            if let Ok(args) = m.parse_body_with(
                syn::punctuated::Punctuated::<syn::Expr, syn::Token![,]>::parse_terminated,
            ) {
                args.iter().for_each(|a| self.visit_expr(a));
            }
        }
    }
    let mut names = Names::default();
    syn::visit::Visit::visit_block(&mut names, body);
    names
        .used
        .into_iter()
        .filter(|n| {
            let s = n.to_string();
            !names.bound.contains(&s) && !params.iter().any(|p| p == n)
        })
        .collect()
}

/// The closure of a lifted transform, `|mdl, cx, primals..| body`: its parameter
/// names, their roles (the module and the scope constant, the primals
/// differentiated) and its body as a block.
pub(crate) fn lifted_closure(
    cx: &Ctxt,
    c: &syn::ExprClosure,
) -> Option<(Vec<Ident>, Vec<ParamInfo>, syn::Block)> {
    let mut infos = Vec::new();
    let mut names = Vec::new();
    for (i, p) in c.inputs.iter().enumerate() {
        let pat = match p {
            Pat::Type(t) => (*t.pat).clone(),
            other => other.clone(),
        };
        let Pat::Ident(id) = &pat else {
            cx.error_at(p, "closure parameters must be plain names");
            return None;
        };
        names.push(id.ident.clone());
        infos.push(ParamInfo {
            pat: pat.clone(),
            ty: Type::Verbatim(quote!(_)),
            active: i >= 2,
            scope: i == 1,
        });
    }
    let mut body: syn::Block = match &*c.body {
        syn::Expr::Block(b) => b.block.clone(),
        other => syn::parse_quote_spanned!(other.span()=> { #other }),
    };
    if names.len() >= 2 {
        let scopes = [names[1].to_string()];
        crate::expand::module::route_module_calls(&scopes, &mut body);
    }
    Some((names, infos, body))
}

/// Where a lifted transform's module runs: `self` in the current scope; any other
/// module in the scope its [`Child`](adjoint::scope::Child) impl names (a field's
/// name for `self.field`, a bound path, else the next auto name), entered before the
/// transform runs and left after. Returns the statements that bind the closure's
/// module parameter `mdl` and enter, and those that leave.
pub(crate) fn lifted_module(
    module: &syn::Expr,
    mdl: &Ident,
    cxn: &Ident,
) -> (TokenStream, TokenStream) {
    if matches!(module, syn::Expr::Path(p) if p.path.is_ident("self")) {
        return (
            quote!(let #mdl = ::adjoint::scope::Here(self);),
            TokenStream::new(),
        );
    }
    let field = match crate::expand::module::self_field(module) {
        Some(lit) => quote!(::core::option::Option::Some(#lit)),
        None => quote!(::core::option::Option::None),
    };
    (
        quote! {
            let __module = &(#module);
            #cxn.enter_child(::adjoint::scope::Child::child_name(__module, #field));
            let #mdl = ::adjoint::scope::Entered(::adjoint::scope::Child::module(__module));
        },
        quote!(#cxn.exit();),
    )
}

/// The lifted forward-mode transform, as `flax.linen.jvp`:
/// `jvp!(cx, |mdl, cx, x| body, Child, (x,), (tx,), variable_tangents)` gives
/// `(output, output_tangent)` for tangents of the primals and of the child's
/// variables (`variable_tangents`, a `Variables` tree relative to the child).
///
/// Forward mode proper: the closure's body with a tangent after each statement, the
/// child's parameter reads taking their tangents from the scope, and submodules
/// running their own forward mode (`__call_tjvp_any`).
pub(crate) fn lifted_jvp(cx: &Ctxt, input: &TransformInput) -> TokenStream {
    let scope = &input.positional[0];
    let syn::Expr::Closure(c) = &input.positional[1] else {
        return TokenStream::new();
    };
    let module = &input.positional[2];
    let (primals_tuple, tangents_tuple, var_tangents) = (
        &input.positional[3],
        &input.positional[4],
        &input.positional[5],
    );
    let n = c.inputs.len().saturating_sub(2);
    let tuple_len = |e: &syn::Expr| match e {
        syn::Expr::Tuple(t) => Some(t.elems.len()),
        _ => None,
    };
    if tuple_len(primals_tuple) != Some(n) || tuple_len(tangents_tuple) != Some(n) {
        cx.error_at(
            primals_tuple,
            format!("jvp! takes the primals and the tangents as tuples of {n}: `(x,), (tx,)`"),
        );
        return TokenStream::new();
    }
    let Some((names, infos, body)) = lifted_closure(cx, c) else {
        return TokenStream::new();
    };
    let specs: Vec<ParamSpec> = infos.iter().map(ParamInfo::spec).collect();
    let mut func = lower::lower(cx, &specs, &body);
    func.params_active = true;
    let act = activity::analyze(cx, &func);
    if cx.has_errors() {
        return TokenStream::new();
    }
    let refs = vec![false; specs.len()];
    let Some(jvp) = crate::forward::jvp_body(
        &func,
        &|v| act.varied(v),
        &refs,
        crate::forward::Mode::Lifted,
        true,
    ) else {
        cx.error_at(
            &c.body,
            format!("jvp!: {}", crate::expand::jacobian::FORWARD_COVERS),
        );
        return TokenStream::new();
    };
    let (mdl, cxn) = (&names[0], &names[1]);
    let primals = &names[2..];
    let dots: Vec<Ident> = primals.iter().map(crate::names::dot_name).collect();
    let temps: Vec<Ident> = (0..n).map(|i| format_ident!("__primal{}", i)).collect();
    let tangents: Vec<Ident> = (0..n).map(|i| format_ident!("__tangent{}", i)).collect();
    let (enter, exit) = lifted_module(module, mdl, cxn);
    quote!({
        let (#(#temps,)*) = #primals_tuple;
        let (#(#tangents,)*) = #tangents_tuple;
        let __var_tangents: &::adjoint::Variables = &(#var_tangents);
        let #cxn: &mut ::adjoint::Scope = &mut *(#scope);
        #enter
        let __old = #cxn.set_tangents(::core::option::Option::Some(__var_tangents));
        #(let #primals = #temps;)*
        #(let #dots = ::adjoint::__private::own(&#tangents);)*
        #[allow(unused_mut, unused_variables, unused_parens)]
        let __result = { #jvp };
        #cxn.restore_tangents(__old);
        #exit
        __result
    })
}

pub(crate) fn closure_transform(
    cx: &Ctxt,
    which: Transform,
    c: &syn::ExprClosure,
    input: &TransformInput,
) -> TokenStream {
    let mut params = Vec::new();
    for p in &c.inputs {
        let (pat, ty) = match p {
            Pat::Type(t) => ((*t.pat).clone(), Some((*t.ty).clone())),
            other => (other.clone(), None),
        };
        let name = match &pat {
            Pat::Ident(i) => i.ident.to_string(),
            other => {
                cx.error_at(other, "closure parameters must be plain names");
                return TokenStream::new();
            }
        };
        let active = input
            .wrt
            .as_ref()
            .is_none_or(|w| w.iter().any(|i| *i == name));
        params.push((pat, ty, active, name));
    }
    if let Some(wrt) = &input.wrt {
        for w in wrt {
            if !params.iter().any(|p| *w == p.3) {
                cx.error_at(w, format!("`{w}` is not a parameter of the closure"));
            }
        }
    }
    let infos: Vec<ParamInfo> = params
        .iter()
        .map(|(pat, ty, active, _)| ParamInfo {
            pat: pat.clone(),
            ty: ty.clone().unwrap_or(Type::Verbatim(quote!(_))),
            active: *active,
            scope: ty.as_ref().is_some_and(mentions_scope),
        })
        .collect();
    let body: syn::Block = match &*c.body {
        syn::Expr::Block(b) => b.block.clone(),
        other => syn::parse_quote_spanned!(other.span()=> { #other }),
    };
    let options = Options {
        has_aux: input.has_aux,
        params_active: false,
        local_pullback: which != Transform::Vjp,
        calls: false,
    };
    let Some((_, g)) = generate(cx, &infos, &body, options) else {
        return TokenStream::new();
    };
    let closure_params = c.inputs.iter();
    let (primal, output, reverse) = (&g.primal, &g.output, &g.reverse);
    // The cotangents of the differentiated parameters, in `wrt` order.
    let order: Vec<usize> = match &input.wrt {
        Some(w) => w
            .iter()
            .filter_map(|w| params.iter().position(|p| *w == p.3))
            .collect(),
        None => (0..params.len()).collect(),
    };
    let (picks, picked) = pick_cotangents(params.len(), &order);
    let (value_pat, seed) = if input.has_aux {
        (
            quote!((__value, __aux)),
            quote!(::adjoint::__private::grad_seed(&__value)),
        )
    } else {
        (
            quote!(__value),
            quote!(::adjoint::__private::grad_seed(&__value)),
        )
    };
    let body = match which {
        Transform::Grad | Transform::ValueAndGrad => {
            let result = match (which, input.has_aux) {
                (Transform::Grad, false) => quote!(#picked),
                (Transform::Grad, true) => quote!((#picked, __aux)),
                (_, false) => quote!((__value, #picked)),
                (_, true) => quote!(((__value, __aux), #picked)),
            };
            quote!({
                #primal
                let #value_pat = #output;
                let __ct = #seed;
                let (#(#picks,)*) = { #reverse };
                #result
            })
        }
        Transform::Vjp | Transform::Jvp => {
            let (out, ret) = if input.has_aux {
                (quote!((__value, __aux)), quote!((__value, __pb, __aux)))
            } else {
                (quote!(__value), quote!((__value, __pb)))
            };
            // The pullback owns the arguments it reads: a closure cannot return
            // something that borrows its own arguments.
            let owned = &g.captured_params;
            quote!({
                #primal
                let #out = #output;
                #(let #owned = ::adjoint::__private::own(&#owned);)*
                let __pb = move |__ct| {
                    let (#(#picks,)*) = { #reverse };
                    #picked
                };
                #ret
            })
        }
    };
    // grad! and value_and_grad! borrow the environment; vjp!'s pullback owns it.
    let mover = (which == Transform::Vjp).then(|| quote!(move));
    quote!({
        #[allow(unused_mut, unused_variables, unused_parens)]
        let __f = #mover |#(#closure_params),*| #body;
        __f
    })
}
