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
/// mode does not reach it. Along the variables, parameter reads vary too.
fn forward_body(
    params: &[ParamInfo],
    body: &syn::Block,
    mode: crate::forward::Mode,
    calls: bool,
) -> Option<TokenStream> {
    let quiet = Ctxt::default();
    let specs: Vec<crate::lower::ParamSpec> = params.iter().map(ParamInfo::spec).collect();
    let mut func = crate::lower::lower(&quiet, &specs, body);
    func.params_active = mode != crate::forward::Mode::Inputs;
    let act = crate::activity::analyze(&quiet, &func);
    let reference: Vec<bool> = specs.iter().map(|s| s.reference).collect();
    if quiet.has_errors() {
        return None;
    }
    crate::forward::jvp_body(&func, &|v| act.varied(v), &reference, mode, calls)
}

/// `__call_body_jvp(&self, cx, xs.., dxs..) -> (R, R)`'s parameter-differentiating
/// VJP (the JVP itself is not needed: a parent's forward mode calls the VJP) and its
/// wrappers `__call_jvp`, `__call_in_jvp`, when forward mode covers the body (else a
/// stub: second order through this module then reports `SecondOrderUnsupported`).
pub(super) fn body_jvp(
    sig: &Signature,
    params: &[ParamInfo],
    body: &syn::Block,
    ret: &Type,
    type_name: &str,
    calls: bool,
) -> TokenStream {
    let jvp = forward_body(params, body, crate::forward::Mode::Inputs, calls);
    let mut jvp_params: Vec<ParamInfo> = params.to_vec();
    jvp_params.extend(params[1..].iter().map(ParamInfo::tangent));
    let jvp_sig = forward_sig(sig, "__call_body_jvp", &jvp_params, ret);
    let names: Vec<TokenStream> = params.iter().map(|p| param_name(&p.pat)).collect();
    let run = quote! {
        let __y = self.__call_body(#(#names),*);
        let __dy = ::adjoint::__private::zeros(&__y);
    };
    forward_vjp(&jvp_sig, &jvp_params, jvp, &run, type_name)
}

/// `__call_body_tjvp(&self, cx, xs.., dxs..) -> (R, Cot<R>)`, forward mode along the
/// inputs and the variables (whose tangents the scope holds) for a lifted `jvp!` or
/// a module applied to variables with a tangent, with its wrappers `__call_tjvp` and
/// `__call_in_tjvp` that run it in the module's scope; and their VJPs, with the
/// parameters' cotangents and those of their tangents (second order along the
/// variables). Every argument but the scope takes a tangent as `jvp_all` does
/// (`NoTangent` where it is not differentiated). Where forward mode does not cover
/// the body, the scope records `ForwardModeUnsupported`.
pub(super) fn body_tjvp(
    sig: &Signature,
    params: &[ParamInfo],
    body: &syn::Block,
    ret: &Type,
    type_name: &str,
    calls: bool,
) -> TokenStream {
    let tangent = forward_body(params, body, crate::forward::Mode::Variables, calls);
    let names: Vec<TokenStream> = params.iter().map(|p| param_name(&p.pat)).collect();
    let scope = &names[0];
    let mut tjvp_params: Vec<ParamInfo> = params.to_vec();
    tjvp_params.extend(params[1..].iter().map(ParamInfo::tangent));
    let tjvp_sig = forward_sig(sig, "__call_body_tjvp", &tjvp_params, ret);
    let all: Vec<TokenStream> = tjvp_params.iter().map(|p| param_name(&p.pat)).collect();
    let inputs: Vec<TokenStream> = tjvp_params.iter().map(ParamInfo::input).collect();
    let rest_inputs = &inputs[1..];
    let block = match &tangent {
        Some(t) => quote!({ #t }),
        None => quote!({
            #scope.forward_mode_unsupported();
            let __y = self.__call_body(#(#names),*);
            let __dy = ::adjoint::__private::zeros(&__y);
            (__y, __dy)
        }),
    };
    let run = quote!(let (__y, __dy) = self.__call_body_tjvp(#(#all),*););
    let vjp = forward_vjp(&tjvp_sig, &tjvp_params, tangent, &run, type_name);
    let (generics, where_clause) = (&sig.generics, &sig.generics.where_clause);
    let out = &tjvp_sig.output;
    let any = any_tangent_entries(sig, params, out);
    quote! {
        #[doc(hidden)]
        #[allow(clippy::all, unused_parens, unused_variables, unused_mut)]
        pub fn __call_body_tjvp #generics (&self, #(#inputs),*) #out #where_clause #block

        #[allow(clippy::too_many_arguments)]
        #[doc(hidden)]
        #[inline]
        pub fn __call_tjvp #generics (&self, #(#inputs),*) #out #where_clause {
            #scope.enter_auto(#type_name);
            let __out = self.__call_body_tjvp(#(#all),*);
            #scope.exit();
            __out
        }

        #[allow(clippy::too_many_arguments)]
        #[doc(hidden)]
        #[inline]
        pub fn __call_in_tjvp #generics (&self, #scope: &mut ::adjoint::Scope, __child: ::adjoint::scope::ChildName<'_>, #(#rest_inputs),*) #out #where_clause {
            #scope.enter_child(__child);
            let __out = self.__call_body_tjvp(#(#all),*);
            #scope.exit();
            __out
        }

        #any
        #vjp
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
fn forward_vjp(
    sig: &Signature,
    params: &[ParamInfo],
    source: Option<TokenStream>,
    run: &TokenStream,
    type_name: &str,
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
        let body = quote! {
            let (#(#zn,)*) = (#(#zeros,)*);
            #run
            ((__y, __dy), move |_| {
                let mut __v = ::adjoint::Variables::new();
                ::adjoint::__private::second_order(&mut __v);
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
