//! What a module gets for `model.apply(variables, x..)` and `apply_with` inside the
//! transforms: their VJPs (the gradient with respect to the variables, the training
//! path, and the inputs), and `apply`'s forward mode (`__apply_jvp_all` along the
//! inputs, `__apply_tjvp_all` along the variables too) with the VJP of the first.

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
    let mut apply_sig = sig.clone();
    apply_sig.ident = format_ident!("apply");
    apply_sig.inputs =
        syn::parse_quote!(&self, #variables: &::adjoint::Variables, #(#rest_inputs),*);
    let mut apply_params: Vec<ParamInfo> = vec![ParamInfo {
        pat: syn::parse_quote!(#variables),
        ty: syn::parse_quote!(&::adjoint::Variables),
        active: true,
        scope: false,
    }];
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
                let (__v, _, #(#cs,)*) = __pb(__ct);
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
    let mut apply_with_sig = sig.clone();
    apply_with_sig.ident = format_ident!("apply_with");
    apply_with_sig.inputs = syn::parse_quote!(&self, #variables: &::adjoint::Variables, #options: &::adjoint::scope::ApplyOptions, #(#rest_inputs),*);
    apply_with_sig.output = syn::parse_quote!(-> (#ret, ::adjoint::Variables));
    let mut apply_with_params = apply_params.clone();
    apply_with_params.insert(
        1,
        ParamInfo {
            pat: syn::parse_quote!(#options),
            ty: syn::parse_quote!(&::adjoint::scope::ApplyOptions),
            active: false,
            scope: false,
        },
    );
    let apply_with_vjp = companion_items(
        &public,
        &apply_with_sig,
        &apply_with_params,
        quote! {
            let mut __vars = #variables.clone();
            let mut __cx = ::adjoint::Scope::for_apply(&mut __vars, #options.mutability(), #options.rng_seeds());
            let (__out, __pb) = self.#body_vjp_params(&mut __cx, #(#rest),*);
            #finish
            let __mutated = #options.mutated(&__vars);
            ((__out, __mutated), move |(__ct, _)| {
                let (__v, _, #(#cs,)*) = __pb(__ct);
                (__v, (), #(#cs,)*)
            })
        },
        Owner::Method,
        Flavor::Owned,
    );

    let apply_jvp = apply_jvp_items(sig, params, ret, variables);
    quote! {
        #apply_vjp
        #apply_with_vjp
        #apply_jvp
    }
}

/// `model.apply(variables, x..).unwrap()` in forward mode (a `(jvp)` function, a
/// `jvp!`, `hvp!` or `hessian!` of a closure), the variables without a tangent:
/// `__apply_jvp_all(variables, x.., tangents..)`, a tangent per input (`NoTangent`
/// where it has none), the module's forward mode along the inputs; and its VJP
/// (`____apply_jvp_all_vjp_owned`, the module's JVP-VJP with the variables'
/// cotangents), what the reverse mode over that forward mode calls.
fn apply_jvp_items(
    sig: &Signature,
    params: &[ParamInfo],
    ret: &Type,
    variables: &Ident,
) -> TokenStream {
    let rest = &params[1..];
    let names: Vec<TokenStream> = rest.iter().map(|p| param_name(&p.pat)).collect();
    let inputs: Vec<TokenStream> = rest.iter().map(ParamInfo::input).collect();
    // One tangent per input, as `jvp_all` takes them; the module's forward mode takes
    // those of the differentiated inputs.
    let mut tangent_params = Vec::new();
    let mut passed = Vec::new();
    for p in rest {
        let (d, ty) = (p.tangent_name(), &p.ty);
        let ty: Type = match (p.active, ty) {
            (true, _) => ty.clone(),
            (false, Type::Reference(_)) => syn::parse_quote!(&::adjoint::NoTangent),
            (false, _) => syn::parse_quote!(::adjoint::NoTangent),
        };
        tangent_params.push(ParamInfo {
            pat: syn::parse_quote!(#d),
            ty,
            active: p.active,
            scope: false,
        });
        if p.active {
            passed.push(d);
        }
    }
    let tangents: Vec<TokenStream> = tangent_params.iter().map(ParamInfo::input).collect();
    let ret_cot = crate::parse::signature::cot_type(ret);
    let mut jvp_sig = sig.clone();
    jvp_sig.ident = format_ident!("__apply_jvp_all");
    jvp_sig.inputs =
        syn::parse_quote!(&self, #variables: &::adjoint::Variables, #(#inputs,)* #(#tangents),*);
    jvp_sig.output = syn::parse_quote!(-> (#ret, #ret_cot));
    let mut jvp_params = vec![ParamInfo {
        pat: syn::parse_quote!(#variables),
        ty: syn::parse_quote!(&::adjoint::Variables),
        active: true,
        scope: false,
    }];
    jvp_params.extend(rest.iter().cloned());
    jvp_params.extend(tangent_params.iter().cloned());
    // The cotangents the JVP-VJP gives: the inputs' (`__c`), then the differentiated
    // inputs' tangents' (`__e`), `()` for a tangent that is `NoTangent`.
    let cs: Vec<Ident> = (0..rest.len()).map(|i| format_ident!("__c{}", i)).collect();
    let ds: Vec<Ident> = (0..passed.len())
        .map(|i| format_ident!("__e{}", i))
        .collect();
    let mut ds_iter = ds.iter();
    let tangent_cots: Vec<TokenStream> = rest
        .iter()
        .map(|p| match p.active.then(|| ds_iter.next()).flatten() {
            Some(d) => quote!(#d),
            None => quote!(()),
        })
        .collect();
    let (scope, finish) = (apply_scope(variables), apply_finish());
    let generics = &sig.generics;
    let where_clause = &sig.generics.where_clause;
    let all_tangents: Vec<TokenStream> =
        tangent_params.iter().map(|p| param_name(&p.pat)).collect();
    let vjp = companion_items(
        &syn::parse_quote!(pub),
        &jvp_sig,
        &jvp_params,
        quote! {
            #scope
            let (__out, __pb) = self.____call_body_jvp_vjp_params(&mut __cx, #(#names,)* #(#passed),*);
            #finish
            (__out, move |__ct| {
                let (__v, _, #(#cs,)* #(#ds,)*) = __pb(__ct);
                (__v, #(#cs,)* #(#tangent_cots,)*)
            })
        },
        Owner::Method,
        Flavor::Owned,
    );
    // Along the variables too (`__apply_tjvp_all(variables, variable tangents, ..)`):
    // the module's forward mode with the scope holding the variables' tangents. Its
    // VJP (second order along the variables) is not written: its pullback gives NaN
    // for the inputs and trees poisoned with `SecondOrderUnsupported`.
    let var_tangents = crate::hygiene::generated("variable_tangents");
    let mut tjvp_sig = jvp_sig.clone();
    tjvp_sig.ident = format_ident!("__apply_tjvp_all");
    tjvp_sig.inputs = syn::parse_quote!(&self, #variables: &::adjoint::Variables, #var_tangents: &::adjoint::Variables, #(#inputs,)* #(#tangents),*);
    let mut tjvp_params = jvp_params.clone();
    tjvp_params.insert(
        1,
        ParamInfo {
            pat: syn::parse_quote!(#var_tangents),
            ty: syn::parse_quote!(&::adjoint::Variables),
            active: true,
            scope: false,
        },
    );
    let unsupported: Vec<TokenStream> = tjvp_params
        .iter()
        .map(|p| {
            let n = param_name(&p.pat);
            if p.active {
                quote!(::adjoint::__private::unsupported_cot(&#n))
            } else {
                quote!(())
            }
        })
        .collect();
    let zs: Vec<Ident> = (0..unsupported.len())
        .map(|i| format_ident!("__z{}", i))
        .collect();
    let along_variables = quote! {
        #scope
        __cx.set_tangents(::core::option::Option::Some(#var_tangents));
        let __out = self.__call_body_tjvp(&mut __cx, #(#names,)* #(#all_tangents),*);
        #finish
    };
    let tjvp_vjp = companion_items(
        &syn::parse_quote!(pub),
        &tjvp_sig,
        &tjvp_params,
        quote! {
            let (#(#zs,)*) = (#(#unsupported,)*);
            #along_variables
            (__out, move |_| (#(#zs,)*))
        },
        Owner::Method,
        Flavor::Owned,
    );
    quote! {
        #[doc(hidden)]
        #[allow(clippy::all, clippy::too_many_arguments, unused_variables)]
        pub fn __apply_jvp_all #generics (&self, #variables: &::adjoint::Variables, #(#inputs,)* #(#tangents),*) -> (#ret, #ret_cot) #where_clause {
            #scope
            let __out = self.__call_body_tjvp(&mut __cx, #(#names,)* #(#all_tangents),*);
            #finish
            __out
        }
        #vjp

        #[doc(hidden)]
        #[allow(clippy::all, clippy::too_many_arguments, unused_variables)]
        pub fn __apply_tjvp_all #generics (&self, #variables: &::adjoint::Variables, #var_tangents: &::adjoint::Variables, #(#inputs,)* #(#tangents),*) -> (#ret, #ret_cot) #where_clause {
            #along_variables
            __out
        }
        #tjvp_vjp
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
