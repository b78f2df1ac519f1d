//! What a module gets for `model.apply(variables, x..)` and `apply_with` inside the
//! transforms: their VJPs (the gradient with respect to the variables, the training
//! path, and the inputs), and their forward modes (`__apply_jvp_all` and
//! `__apply_with_jvp_all` along the inputs, `__apply_tjvp_all` along the variables
//! too) with their VJPs.

use crate::expand::companions::{Flavor, Owner, companion_items};
use crate::parse::signature::{ParamInfo, param_name};
use proc_macro2::{Ident, TokenStream};
use quote::{format_ident, quote};
use syn::{Signature, Type};

/// The `apply` companions of the module whose `call` has signature `sig` and
/// parameters `params` (the scope first), returning `ret`; `variables` and
/// `options` name the parameters they add, `body_vjp_params` the body's VJP with
/// the parameters differentiated.
pub(crate) fn apply_items(
    sig: &Signature,
    params: &[ParamInfo],
    ret: &Type,
    variables: &Ident,
    options: &Ident,
    body_vjp_params: &Ident,
) -> TokenStream {
    let public: syn::Visibility = syn::parse_quote!(pub);
    let rest_inputs: Vec<TokenStream> = params[1..].iter().map(ParamInfo::input).collect();
    let rest: Vec<TokenStream> = params[1..].iter().map(|p| param_name(&p.pat)).collect();
    // `model.apply(variables, ..).unwrap()` inside a transform: the gradient with
    // respect to the variables (the training path) and the inputs.
    let apply_sig = renamed(
        sig,
        "apply",
        quote!(&self, #variables: &::adjoint::Variables, #(#rest_inputs),*),
        None,
    );
    let mut apply_params: Vec<ParamInfo> = vec![variables_param(variables)];
    apply_params.extend(params[1..].iter().cloned());
    let cs: Vec<proc_macro2::Ident> = (0..rest.len()).map(|i| format_ident!("__c{}", i)).collect();
    let (applied, finish) = (apply_scope(variables), apply_finish());
    let apply_vjp = companion_items(
        &public,
        &apply_sig,
        &apply_params,
        quote! {
            #applied
            let (__out, __pb) = self.#body_vjp_params(&mut __cx, #(#rest),*);
            #finish
            (__out, move |__ct| {
                let (mut __v, _, #(#cs,)*) = __pb(__ct);
                __v.complete_params(&__vars);
                (__v, #(#cs,)*)
            })
        },
        Owner::Method,
        Flavor::Owned,
    );

    // `model.apply_with(variables, options, ..).unwrap()` inside a transform: the
    // training step of a model with state and randomness (Flax's `apply(..,
    // mutable=[..], rngs={..})` inside `value_and_grad`): the gradient with respect
    // to the variables and the inputs; the mutated collections come out as constants.
    let apply_with_sig = renamed(
        sig,
        "apply_with",
        quote!(&self, #variables: &::adjoint::Variables, #options: &::adjoint::scope::ApplyOptions, #(#rest_inputs),*),
        Some(quote!((#ret, ::adjoint::Variables))),
    );
    let mut apply_with_params = apply_params.clone();
    apply_with_params.insert(1, options_param(options));
    let with_scope = apply_with_scope(variables, options);
    let apply_with_vjp = companion_items(
        &public,
        &apply_with_sig,
        &apply_with_params,
        quote! {
            #with_scope
            let (__out, __pb) = self.#body_vjp_params(&mut __cx, #(#rest),*);
            #finish
            let __mutated = #options.mutated(&__vars);
            ((__out, __mutated), move |(__ct, _)| {
                let (mut __v, _, #(#cs,)*) = __pb(__ct);
                __v.complete_params(&__vars);
                (__v, (), #(#cs,)*)
            })
        },
        Owner::Method,
        Flavor::Owned,
    );

    let apply_jvp = forward_items(sig, params, ret, variables, None);
    let apply_with_jvp = forward_items(sig, params, ret, variables, Some(options));
    quote! {
        #apply_vjp
        #apply_with_vjp
        #apply_jvp
        #apply_with_jvp
    }
}

/// `model.apply(variables, x..).unwrap()` in forward mode (a `(jvp)` function, a
/// `jvp!`, `hvp!` or `hessian!` of a closure), and `apply_with(variables, options,
/// x..)` when `options` is given: `__apply_jvp_all(variables, x.., tangents..)`
/// (`__apply_with_jvp_all(variables, options, ..)`), a tangent per input as
/// `jvp_all` takes them (`NoTangent` where it has none), the module's forward mode
/// along the inputs, in the scope `apply` (`apply_with`) opens; and along the
/// variables too (`__apply_tjvp_all`, `__apply_with_tjvp_all`: the variables'
/// tangents given after them). Each with its VJP, what reverse mode over that forward
/// mode calls: the module's forward mode differentiated (`__call_body_jvp`'s or
/// `__call_body_tjvp`'s), with the variables' cotangents, and along the variables
/// their tangents' (second order in the parameters). `apply_with`'s value is
/// `(value, mutated collections)`, the collections' tangent an empty tree
/// (constants, as in reverse mode).
fn forward_items(
    sig: &Signature,
    params: &[ParamInfo],
    ret: &Type,
    variables: &Ident,
    options: Option<&Ident>,
) -> TokenStream {
    let rest = &params[1..];
    let names: Vec<TokenStream> = rest.iter().map(|p| param_name(&p.pat)).collect();
    let inputs: Vec<TokenStream> = rest.iter().map(ParamInfo::input).collect();
    let tangent_params: Vec<ParamInfo> = rest.iter().map(ParamInfo::tangent).collect();
    let tangents: Vec<TokenStream> = tangent_params.iter().map(ParamInfo::input).collect();
    let all_tangents: Vec<TokenStream> =
        tangent_params.iter().map(|p| param_name(&p.pat)).collect();
    let ret_cot = crate::parse::signature::cot_type(ret);
    // What `apply_with` adds: the options' parameter, its scope, its value, and the
    // options' (and collections') cotangents.
    let (prefix, opt_input, scope, out_ty, wrap, ct_pat, extra) = match options {
        None => (
            "__apply",
            TokenStream::new(),
            apply_scope(variables),
            quote!((#ret, #ret_cot)),
            quote!((__y, __dy)),
            quote!((__ct, __dct)),
            TokenStream::new(),
        ),
        Some(options) => (
            "__apply_with",
            quote!(#options: &::adjoint::scope::ApplyOptions,),
            apply_with_scope(variables, options),
            quote!(((#ret, ::adjoint::Variables), (#ret_cot, ::adjoint::Variables))),
            quote!(((__y, #options.mutated(&__vars)), (__dy, ::adjoint::Variables::new()))),
            quote!(((__ct, _), (__dct, _))),
            quote!((),),
        ),
    };
    let finish = apply_finish();
    let (generics, where_clause) = (&sig.generics, &sig.generics.where_clause);
    let mut base_params = vec![variables_param(variables)];
    base_params.extend(options.map(options_param));
    base_params.extend(rest.iter().cloned());
    base_params.extend(tangent_params);
    // The inputs' cotangents and their tangents' (`()` for a `NoTangent`).
    let cs: Vec<Ident> = (0..rest.len()).map(|i| format_ident!("__c{}", i)).collect();
    let ts: Vec<Ident> = (0..rest.len()).map(|i| format_ident!("__t{}", i)).collect();
    let var_tangents = crate::hygiene::generated("variable_tangents");
    let mut out = TokenStream::new();
    for along_variables in [false, true] {
        let (name, forward, given, set, split, dv) = if along_variables {
            (
                format_ident!("{}_tjvp_all", prefix),
                "tjvp",
                quote!(#var_tangents: &::adjoint::Variables,),
                quote!(__cx.set_tangents(::core::option::Option::Some(#var_tangents));),
                quote!(let (__v, __dv) = ::adjoint::__private::split_tangent_cotangents(__v);),
                quote!(__dv,),
            )
        } else {
            let none = TokenStream::new();
            let name = format_ident!("{}_jvp_all", prefix);
            (name, "jvp", none.clone(), none.clone(), none.clone(), none)
        };
        let fn_sig = renamed(
            sig,
            &name.to_string(),
            quote!(&self, #variables: &::adjoint::Variables, #given #opt_input #(#inputs,)* #(#tangents),*),
            Some(out_ty.clone()),
        );
        let mut fn_params = base_params.clone();
        if along_variables {
            fn_params.insert(1, variables_param(&var_tangents));
        }
        let companion = format_ident!("____call_body_{}_vjp_params", forward);
        let vjp = companion_items(
            &syn::parse_quote!(pub),
            &fn_sig,
            &fn_params,
            quote! {
                #scope
                #set
                let (__out, __pb) = self.#companion(&mut __cx, #(#names,)* #(#all_tangents),*);
                #finish
                let (__y, __dy) = __out;
                (#wrap, move |#ct_pat| {
                    let (__v, _, #(#cs,)* #(#ts,)*) = __pb((__ct, __dct));
                    #split
                    let mut __v = __v;
                    __v.complete_params(&__vars);
                    (__v, #dv #extra #(#cs,)* #(#ts,)*)
                })
            },
            Owner::Method,
            Flavor::Owned,
        );
        // The value: the module's forward mode itself.
        let body = format_ident!("__call_body_{}", forward);
        out.extend(quote! {
            #[doc(hidden)]
            #[allow(clippy::all, clippy::too_many_arguments, unused_variables)]
            pub fn #name #generics (&self, #variables: &::adjoint::Variables, #given #opt_input #(#inputs,)* #(#tangents),*) -> #out_ty #where_clause {
                #scope
                #set
                let (__y, __dy) = self.#body(&mut __cx, #(#names,)* #(#all_tangents),*);
                #finish
                #wrap
            }
            #vjp
        });
    }
    out
}

/// `sig` renamed `name`, with parameters `inputs` and (if given) the result `output`:
/// a companion's signature, the module's generics kept.
fn renamed(
    sig: &Signature,
    name: &str,
    inputs: TokenStream,
    output: Option<TokenStream>,
) -> Signature {
    let mut sig = sig.clone();
    sig.ident = format_ident!("{}", name);
    sig.inputs = syn::parse_quote!(#inputs);
    if let Some(output) = output {
        sig.output = syn::parse_quote!(-> #output);
    }
    sig
}

/// The variables a module is applied to: differentiated (the training path).
fn variables_param(variables: &Ident) -> ParamInfo {
    ParamInfo {
        pat: syn::parse_quote!(#variables),
        ty: syn::parse_quote!(&::adjoint::Variables),
        active: true,
        scope: false,
    }
}

/// `apply_with`'s options: constant.
fn options_param(options: &Ident) -> ParamInfo {
    ParamInfo {
        pat: syn::parse_quote!(#options),
        ty: syn::parse_quote!(&::adjoint::scope::ApplyOptions),
        active: false,
        scope: false,
    }
}

/// The scope `apply_with` runs a module in: the variables, its options' mutable
/// collections and random streams.
fn apply_with_scope(variables: &Ident, options: &Ident) -> TokenStream {
    quote! {
        let mut __vars = #variables.clone();
        let mut __cx = ::adjoint::Scope::for_apply(&mut __vars, #options.mutability(), #options.rng_seeds());
    }
}

/// The scope `apply` runs a module in: the variables (a copy of the tree, whose
/// leaves are shared arrays: no parameter data is copied), no collection mutable.
fn apply_scope(variables: &Ident) -> TokenStream {
    quote! {
        let mut __vars = #variables.clone();
        let mut __cx = ::adjoint::Scope::for_apply(&mut __vars, ::adjoint::scope::Mutable::Only(::core::default::Default::default()), ::core::default::Default::default());
    }
}

/// The end of a run inside `apply(..).unwrap()`: the caller unwrapped the result.
fn apply_finish() -> TokenStream {
    quote! {
        if let ::core::result::Result::Err(e) = __cx.finish() {
            ::core::panic!("called `Result::unwrap()` on an `Err` value: {e}");
        }
    }
}
