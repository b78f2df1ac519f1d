//! A module's input gradient, `__call_body_vjpx(cx, x.., __xct) -> (cotangents..)`:
//! its inputs' cotangents given its output's, its variables held, as `grad!` over
//! the module gives them. Where [`crate::transpose`] covers the body it is written
//! back as source, and its parameter-differentiating VJP (`__call_vjpx`'s,
//! `__call_in_vjpx`'s) is what a lifted `grad!` differentiated again runs: reverse
//! over reverse, the input gradient's forward and backward values kept. Elsewhere it
//! is the module's first-order reverse mode, which records that its VJP cannot
//! differentiate it (`Scope::vjpx_fallback`): the lifted `grad!` then runs its
//! child's JVP-VJP again, as before.

use super::forward::{forward_vjp, lowered, primal_entries};
use crate::parse::signature::{ParamInfo, param_name};
use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::{Signature, Type};

pub(super) fn vjpx_items(
    sig: &Signature,
    params: &[ParamInfo],
    body: &syn::Block,
    ret: &Type,
    type_name: &str,
) -> TokenStream {
    let source = lowered(params, body, false, false).and_then(|(func, act, reference)| {
        crate::transpose::vjp_body(&func, &|v| act.varied(v), &reference)
    });
    let names: Vec<TokenStream> = params.iter().map(|p| param_name(&p.pat)).collect();
    let scope = &names[0];
    let mut vparams = params.to_vec();
    vparams.push(ParamInfo {
        pat: syn::parse_quote!(__xct),
        ty: syn::parse_quote!(&#ret),
        active: true,
        scope: false,
    });
    let vnames: Vec<TokenStream> = vparams.iter().map(|p| param_name(&p.pat)).collect();
    let cot_types = params[1..].iter().map(ParamInfo::cot_or_unit);
    let mut vsig = sig.clone();
    vsig.ident = format_ident!("__call_body_vjpx");
    vsig.output = syn::parse_quote!(-> (#(#cot_types,)*));
    let inputs: Vec<TokenStream> = vparams.iter().map(ParamInfo::input).collect();
    vsig.inputs = syn::parse_quote!(&self, #(#inputs),*);

    let cots: Vec<proc_macro2::Ident> = (1..params.len())
        .map(|i| format_ident!("__c{}", i))
        .collect();
    let block = match &source {
        Some(source) => quote!({ #source }),
        None => quote!({
            #scope.vjpx_fallback();
            let (_, __pb) = self.____call_body_vjp_owned(#(#names),*);
            let (_, #(#cots,)*) = __pb(::core::clone::Clone::clone(__xct));
            (#(#cots,)*)
        }),
    };
    let mut out = primal_entries(&vsig, &vparams, block, type_name, "vjpx");
    let run = quote!(let __out = self.__call_body_vjpx(#(#vnames),*););
    out.extend(forward_vjp(
        &vsig,
        &vparams,
        source,
        &run,
        &quote!(__out),
        type_name,
        false,
    ));
    out
}
