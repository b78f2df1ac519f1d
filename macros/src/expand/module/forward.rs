//! A module's forward mode (see [`crate::forward`]): along its inputs, whose
//! parameter-differentiating VJP (`__call_body_jvp`'s) a parent's second-order
//! pullback runs, and along its inputs and variables (`__call_body_tjvp`, for a
//! lifted `jvp!` and a module applied to variables with a tangent) with its VJP
//! (second order along the variables); each with the wrappers that run it in the
//! module's auto-named or named scope.

use super::scope_wrappers;
use crate::ctxt::Ctxt;
use crate::expand::companions::{Companions, Flavor, Owner, companion_items, companions};
use crate::parse::signature::{ParamInfo, param_name};
use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::{Signature, Type};

/// A module body in forward mode (see [`crate::forward`]), or `None` where forward
/// mode does not reach it (its errors are not the user's: the body compiled as
/// written). Along the variables, parameter reads vary too.
pub(crate) fn forward_body(
    params: &[ParamInfo],
    body: &syn::Block,
    mode: crate::forward::Mode,
    calls: bool,
) -> Option<TokenStream> {
    let params_active = mode != crate::forward::Mode::Inputs;
    let (func, act, reference) = lowered(params, body, params_active, calls)?;
    crate::forward::jvp_body(&func, &|v| act.varied(v), &reference, mode, calls)
}

/// A module body lowered and analysed again for code written from it (its errors
/// are not the user's: the body compiled as written), with which parameters are
/// references; `None` if it has errors.
pub(super) fn lowered(
    params: &[ParamInfo],
    body: &syn::Block,
    params_active: bool,
    calls: bool,
) -> Option<(crate::ir::Func, crate::activity::Activity, Vec<bool>)> {
    let quiet = Ctxt::default();
    let specs: Vec<crate::lower::ParamSpec> = params.iter().map(ParamInfo::spec).collect();
    let mut func = crate::lower::lower(&quiet, &specs, body);
    func.params_active = params_active;
    let act = crate::activity::analyze(&quiet, &func);
    crate::expand::rerun::write_forward_closures(
        &mut func.body,
        &func.vars,
        &|v| act.varied(v),
        calls,
    );
    let reference: Vec<bool> = specs.iter().map(|s| s.reference).collect();
    if quiet.has_errors() {
        return None;
    }
    Some((func, act, reference))
}

/// A module's forward-mode companions: along its inputs (`__call_body_jvp` and its
/// wrappers `__call_jvp`, `__call_in_jvp`, with their parameter-differentiating VJPs,
/// what a parent's second-order pullback runs), and along its inputs and variables
/// (`__call_body_tjvp`, whose tangents the scope holds, for a lifted `jvp!` or a
/// module applied to variables with a tangent; with its VJPs, the parameters'
/// cotangents and their tangents': second order along the variables). Every
/// argument but the scope takes a tangent as `jvp_all` does (`NoTangent` where it is
/// not differentiated). Where forward mode does not cover the body, its VJPs are
/// stubs (second order through the module reports `SecondOrderUnsupported`) and the
/// forward mode along the variables records `ForwardModeUnsupported`.
pub(super) fn forward_items(
    sig: &Signature,
    params: &[ParamInfo],
    body: &syn::Block,
    ret: &Type,
    type_name: &str,
    calls: bool,
) -> TokenStream {
    use crate::forward::Mode;
    let names: Vec<TokenStream> = params.iter().map(|p| param_name(&p.pat)).collect();
    let scope = &names[0];
    let mut fparams: Vec<ParamInfo> = params.to_vec();
    fparams.extend(params[1..].iter().map(ParamInfo::tangent));
    let all: Vec<TokenStream> = fparams.iter().map(|p| param_name(&p.pat)).collect();

    // Along the inputs: the body itself where forward mode covers it (a parent's
    // forward mode, and the forward mode along the variables when the scope holds
    // none, call it), and its VJP.
    let jvp = forward_body(params, body, Mode::Inputs, calls);
    let jvp_sig = forward_sig(sig, "__call_body_jvp", &fparams, ret);
    let run = quote! {
        let __y = self.__call_body(#(#names),*);
        let __dy = ::adjoint::__private::zeros(&__y);
    };
    // Where forward mode does not cover the body, running it says so.
    let unsupported = quote!({
        #scope.forward_mode_unsupported();
        #run
        (__y, __dy)
    });
    let block = match &jvp {
        Some(source) => quote!({ #source }),
        None => unsupported.clone(),
    };
    let mut out = primal_entries(&jvp_sig, &fparams, block, type_name, "jvp");
    let pair = quote!((__y, __dy));
    out.extend(forward_vjp(
        &jvp_sig,
        &fparams,
        jvp.clone(),
        &run,
        &pair,
        type_name,
        calls,
    ));

    // Along the variables too.
    let tangent = forward_body(params, body, Mode::Variables, calls);
    let tjvp_sig = forward_sig(sig, "__call_body_tjvp", &fparams, ret);
    let block = match (&tangent, &jvp) {
        // No tangent set: the parameters' are zero, and the forward mode along the
        // inputs alone does less (no products with zero).
        (Some(t), Some(_)) => quote!({
            if !#scope.has_tangents() {
                return self.__call_body_jvp(#(#all),*);
            }
            #t
        }),
        (Some(t), None) => quote!({ #t }),
        (None, _) => unsupported,
    };
    out.extend(primal_entries(
        &tjvp_sig, &fparams, block, type_name, "tjvp",
    ));
    out.extend(any_tangent_entries(sig, params, &tjvp_sig.output));
    let run = quote!(let (__y, __dy) = self.__call_body_tjvp(#(#all),*););
    out.extend(forward_vjp(
        &tjvp_sig, &fparams, tangent, &run, &pair, type_name, calls,
    ));
    out
}

/// A module body's forward mode `sig` (`__call_body_jvp`, `__call_body_tjvp`) with
/// body `block`, and its wrappers `__call_{which}` and `__call_in_{which}` that run it
/// in the module's auto-named and named scope.
pub(super) fn primal_entries(
    sig: &Signature,
    params: &[ParamInfo],
    block: TokenStream,
    type_name: &str,
    which: &str,
) -> TokenStream {
    let names: Vec<TokenStream> = params.iter().map(|p| param_name(&p.pat)).collect();
    let scope = &names[0];
    let inputs: Vec<TokenStream> = params.iter().map(ParamInfo::input).collect();
    let rest_inputs = &inputs[1..];
    let (generics, where_clause, out) = (&sig.generics, &sig.generics.where_clause, &sig.output);
    let body = &sig.ident;
    let (auto, named) = (
        format_ident!("__call_{}", which),
        format_ident!("__call_in_{}", which),
    );
    quote! {
        #[doc(hidden)]
        #[allow(clippy::all, unused_parens, unused_variables, unused_mut)]
        pub fn #body #generics (&self, #(#inputs),*) #out #where_clause #block

        #[allow(clippy::too_many_arguments)]
        #[doc(hidden)]
        #[inline]
        pub fn #auto #generics (&self, #(#inputs),*) #out #where_clause {
            #scope.enter_auto(#type_name);
            let __out = self.#body(#(#names),*);
            #scope.exit();
            __out
        }

        #[allow(clippy::too_many_arguments)]
        #[doc(hidden)]
        #[inline]
        pub fn #named #generics (&self, #scope: &mut ::adjoint::Scope, __child: ::adjoint::scope::ChildName<'_>, #(#rest_inputs),*) #out #where_clause {
            #scope.enter_child(__child);
            let __out = self.#body(#(#names),*);
            #scope.exit();
            __out
        }
    }
}

/// `__call_tjvp_any` and `__call_in_tjvp_any`: `__call_tjvp`'s and `__call_in_tjvp`'s
/// generic entries, for a lifted `jvp!`'s closure, whose arguments' types the macro
/// does not know: each tangent anything that converts to the argument's (an owned
/// value, a reference, `NoTangent` for zero), passed on as the argument is.
fn any_tangent_entries(
    sig: &Signature,
    params: &[ParamInfo],
    out: &syn::ReturnType,
) -> TokenStream {
    let names: Vec<TokenStream> = params.iter().map(|p| param_name(&p.pat)).collect();
    let scope = &names[0];
    let inputs: Vec<TokenStream> = params.iter().map(ParamInfo::input).collect();
    let (rest_inputs, rest) = (&inputs[1..], &names[1..]);
    let dnames: Vec<syn::Ident> = params[1..].iter().map(ParamInfo::tangent_name).collect();
    let dtypes: Vec<syn::Ident> = (0..dnames.len())
        .map(|i| format_ident!("__D{}", i))
        .collect();
    let mut generics = sig.generics.clone();
    for d in &dtypes {
        generics.params.push(syn::parse_quote!(#d));
    }
    let mut convert = TokenStream::new();
    let mut passed = Vec::new();
    for ((p, d), t) in params[1..].iter().zip(&dnames).zip(&dtypes) {
        let by_ref = matches!(p.ty, Type::Reference(_));
        if !p.active {
            passed.push(if by_ref {
                quote!(&::adjoint::NoTangent)
            } else {
                quote!(::adjoint::NoTangent)
            });
            continue;
        }
        let ty = p.owned_type();
        generics
            .make_where_clause()
            .predicates
            .push(syn::parse_quote!(#t: ::adjoint::__private::IntoTangent<::adjoint::Cot<#ty>>));
        let x = param_name(&p.pat);
        convert.extend(quote!(let #d = ::adjoint::__private::tangent(#d, &#x);));
        // A view of the owned tangent for a view.
        let view = !by_ref && crate::parse::signature::is_borrowed_type(&p.ty);
        passed.push(match (by_ref, view) {
            (true, _) => quote!(&#d),
            (false, true) => quote!((&#d).into()),
            (false, false) => quote!(#d),
        });
    }
    let where_clause = &generics.where_clause;
    let tangents = quote!(#(#dnames: #dtypes),*);
    quote! {
        #[allow(clippy::too_many_arguments)]
        #[doc(hidden)]
        #[inline]
        pub fn __call_tjvp_any #generics (&self, #(#inputs,)* #tangents) #out #where_clause {
            #convert
            self.__call_tjvp(#(#names,)* #(#passed),*)
        }

        #[allow(clippy::too_many_arguments)]
        #[doc(hidden)]
        #[inline]
        pub fn __call_in_tjvp_any #generics (&self, #scope: &mut ::adjoint::Scope, __child: ::adjoint::scope::ChildName<'_>, #(#rest_inputs,)* #tangents) #out #where_clause {
            #convert
            self.__call_in_tjvp(#scope, __child, #(#rest,)* #(#passed),*)
        }
    }
}

/// The signature of a module body's forward mode `name(&self, params..) -> (R,
/// Cot<R>)`, `sig`'s generics kept.
fn forward_sig(sig: &Signature, name: &str, params: &[ParamInfo], ret: &Type) -> Signature {
    let mut fsig = sig.clone();
    fsig.ident = format_ident!("{}", name);
    let ret_cot = crate::parse::signature::cot_type(ret);
    fsig.output = syn::parse_quote!(-> (#ret, #ret_cot));
    let inputs: Vec<TokenStream> = params.iter().map(ParamInfo::input).collect();
    fsig.inputs = syn::parse_quote!(&self, #(#inputs),*);
    fsig
}

/// The parameter-differentiating VJP of a module body's forward mode `sig` (whose
/// source is `source`) and its scope wrappers (`__call_jvp_vjp_params`,
/// `__call_in_jvp_vjp_params` for `__call_body_jvp`). Where forward mode does not
/// cover the body (`source` is `None`), or its output should not differentiate, a
/// stub running `run` (which binds `__y` and `__dy`), whose pullback marks parameter
/// gradients unusable (`SecondOrderUnsupported`) and inputs' NaN: a parent
/// differentiating through it still compiles, and never gets a silent zero.
pub(super) fn forward_vjp(
    sig: &Signature,
    params: &[ParamInfo],
    source: Option<TokenStream>,
    run: &TokenStream,
    output: &TokenStream,
    type_name: &str,
    calls: bool,
) -> TokenStream {
    let quiet = Ctxt::default();
    let public: syn::Visibility = syn::parse_quote!(pub);
    let stub = || {
        let zero = |p: &ParamInfo| {
            let n = param_name(&p.pat);
            quote!(::adjoint::__private::unsupported_cot(&#n))
        };
        let zeros: Vec<TokenStream> = params
            .iter()
            .map(|p| if p.active { zero(p) } else { quote!(()) })
            .collect();
        let zn: Vec<proc_macro2::Ident> = (0..zeros.len())
            .map(|i| format_ident!("__z{}", i))
            .collect();
        // Named by this module's path.
        let here = match params.iter().find(|p| p.scope) {
            Some(p) => {
                let cx = param_name(&p.pat);
                quote!(#cx.path())
            }
            None => quote!(::std::string::String::new()),
        };
        let body = quote! {
            let (#(#zn,)*) = (#(#zeros,)*);
            let __here = #here;
            #run
            (#output, move |_| {
                let mut __v = ::adjoint::Variables::new();
                ::adjoint::__private::second_order(&mut __v, &__here);
                (__v, #(#zn,)*)
            })
        };
        companion_items(&public, sig, params, body, Owner::Hidden, Flavor::Params)
    };
    let vjp = source
        .and_then(|source| {
            // Forward mode's output is valid Rust by construction; should it not be,
            // the module keeps the stub (second order reports it) instead of panicking.
            let block: syn::Block = syn::parse2(quote!({ #source })).ok()?;
            companions(
                &quiet,
                &public,
                sig,
                params,
                &block,
                Owner::Hidden,
                Companions::Params,
                calls,
            )
        })
        .unwrap_or_else(stub);
    let inner = crate::names::companion_ident(&sig.ident, "vjp_params");
    let wrappers = scope_wrappers(
        sig,
        params,
        type_name,
        &inner,
        Flavor::Params,
        Owner::Hidden,
    );
    quote!(#vjp #wrappers)
}
