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
                let (__v, _, #(#cs,)*) = __pb(__ct);
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

/// What the forward-mode companions of `apply` and `apply_with` share: the inputs
/// after the scope, a tangent for each (as `jvp_all` takes them: `NoTangent` where
/// an input is not differentiated), and how the JVP-VJP's cotangents map back.
struct Forward {
    /// The inputs' names, and the parameters declaring them.
    names: Vec<TokenStream>,
    inputs: Vec<TokenStream>,
    /// A tangent per input, and the parameters declaring them.
    tangent_params: Vec<ParamInfo>,
    tangents: Vec<TokenStream>,
    all_tangents: Vec<TokenStream>,
    /// The tangents the module's forward mode takes (the differentiated inputs').
    passed: Vec<Ident>,
    /// The JVP-VJP's cotangents: the inputs' (`__c`), the passed tangents' (`__e`),
    /// and per input its tangent's, `()` for a `NoTangent`.
    cs: Vec<Ident>,
    ds: Vec<Ident>,
    tangent_cots: Vec<TokenStream>,
}

impl Forward {
    fn new(rest: &[ParamInfo]) -> Forward {
        let names = rest.iter().map(|p| param_name(&p.pat)).collect();
        let inputs = rest.iter().map(ParamInfo::input).collect();
        let mut tangent_params = Vec::new();
        let mut passed = Vec::new();
        for p in rest {
            tangent_params.push(p.tangent());
            if p.active {
                passed.push(p.tangent_name());
            }
        }
        let tangents = tangent_params.iter().map(ParamInfo::input).collect();
        let all_tangents = tangent_params.iter().map(|p| param_name(&p.pat)).collect();
        let cs = (0..rest.len()).map(|i| format_ident!("__c{}", i)).collect();
        let ds: Vec<Ident> = (0..passed.len())
            .map(|i| format_ident!("__e{}", i))
            .collect();
        let mut ds_iter = ds.iter();
        let tangent_cots = rest
            .iter()
            .map(|p| match p.active.then(|| ds_iter.next()).flatten() {
                Some(d) => quote!(#d),
                None => quote!(()),
            })
            .collect();
        Forward {
            names,
            inputs,
            tangent_params,
            tangents,
            all_tangents,
            passed,
            cs,
            ds,
            tangent_cots,
        }
    }

    /// The module's JVP-VJP in the scope `__cx` (which `scope` opens), finished;
    /// `__out` and `__pb` hold its value and pullback.
    fn jvp_vjp(&self, scope: &TokenStream) -> TokenStream {
        let (names, passed, finish) = (&self.names, &self.passed, apply_finish());
        quote! {
            #scope
            let (__out, __pb) = self.____call_body_jvp_vjp_params(&mut __cx, #(#names,)* #(#passed),*);
            #finish
        }
    }

    /// The pullback's result from the JVP-VJP's (`__pb(..)` bound to `__v`, `__c..`,
    /// `__e..`): the variables', `extra` (the options' `()`), the inputs', the
    /// tangents'.
    fn cotangents(&self, extra: Option<TokenStream>) -> (TokenStream, TokenStream) {
        let (cs, ds, tangent_cots) = (&self.cs, &self.ds, &self.tangent_cots);
        let extra = extra.into_iter();
        (
            quote!((__v, _, #(#cs,)* #(#ds,)*)),
            quote!((__v, #(#extra,)* #(#cs,)* #(#tangent_cots,)*)),
        )
    }
}

/// `model.apply(variables, x..).unwrap()` in forward mode (a `(jvp)` function, a
/// `jvp!`, `hvp!` or `hessian!` of a closure), and `apply_with(variables, options,
/// x..)` when `options` is given: `__apply_jvp_all(variables, x.., tangents..)`
/// (`__apply_with_jvp_all(variables, options, ..)`), a tangent per input (`NoTangent`
/// where it has none), the module's forward mode along the inputs, in the scope
/// `apply` (`apply_with`) opens; its VJP (`____apply_jvp_all_vjp_owned`, the
/// module's JVP-VJP with the variables' cotangents), what the reverse mode over that
/// forward mode calls; and the same along the variables too (`__apply_tjvp_all`,
/// `__apply_with_tjvp_all`: the variables' tangents given after them), whose VJP
/// gives the variables' cotangents and their tangents' (second order along the
/// variables: a Hessian-vector product in the parameters). `apply_with`'s value is `(value, mutated
/// collections)`, the collections' tangent an empty tree (constants, as in reverse
/// mode).
fn forward_items(
    sig: &Signature,
    params: &[ParamInfo],
    ret: &Type,
    variables: &Ident,
    options: Option<&Ident>,
) -> TokenStream {
    let rest = &params[1..];
    let fw = Forward::new(rest);
    let (names, inputs, tangents, all_tangents) =
        (&fw.names, &fw.inputs, &fw.tangents, &fw.all_tangents);
    let ret_cot = crate::parse::signature::cot_type(ret);
    // What `apply_with` adds: the options' parameter, its scope, its value.
    let (prefix, opt_input, scope, out_ty, wrap) = match options {
        None => (
            "__apply",
            TokenStream::new(),
            apply_scope(variables),
            quote!((#ret, #ret_cot)),
            quote!((__y, __dy)),
        ),
        Some(options) => (
            "__apply_with",
            quote!(#options: &::adjoint::scope::ApplyOptions,),
            apply_with_scope(variables, options),
            quote!(((#ret, ::adjoint::Variables), (#ret_cot, ::adjoint::Variables))),
            quote!(((__y, #options.mutated(&__vars)), (__dy, ::adjoint::Variables::new()))),
        ),
    };
    let finish = apply_finish();
    let jvp_name = format_ident!("{}_jvp_all", prefix);
    let jvp_sig = renamed(
        sig,
        &jvp_name.to_string(),
        quote!(&self, #variables: &::adjoint::Variables, #opt_input #(#inputs,)* #(#tangents),*),
        Some(out_ty.clone()),
    );
    let mut jvp_params = vec![variables_param(variables)];
    jvp_params.extend(options.map(options_param));
    jvp_params.extend(rest.iter().cloned());
    jvp_params.extend(fw.tangent_params.iter().cloned());
    let (generics, where_clause) = (&sig.generics, &sig.generics.where_clause);
    let run = fw.jvp_vjp(&scope);
    let (given, gives) = fw.cotangents(options.map(|_| quote!(())));
    // The cotangent of the value and its tangent (`apply_with`'s collections' none).
    let ct_pat = match options {
        None => quote!((__ct, __dct)),
        Some(_) => quote!(((__ct, _), (__dct, _))),
    };
    let vjp = companion_items(
        &syn::parse_quote!(pub),
        &jvp_sig,
        &jvp_params,
        quote! {
            #run
            let (__y, __dy) = __out;
            (#wrap, move |#ct_pat| {
                let #given = __pb((__ct, __dct));
                #gives
            })
        },
        Owner::Method,
        Flavor::Owned,
    );
    let var_tangents = crate::hygiene::generated("variable_tangents");
    let tjvp_name = format_ident!("{}_tjvp_all", prefix);
    let tjvp_sig = renamed(
        &jvp_sig,
        &tjvp_name.to_string(),
        quote!(&self, #variables: &::adjoint::Variables, #var_tangents: &::adjoint::Variables, #opt_input #(#inputs,)* #(#tangents),*),
        None,
    );
    let mut tjvp_params = jvp_params.clone();
    tjvp_params.insert(1, variables_param(&var_tangents));
    let along_variables = quote! {
        #scope
        __cx.set_tangents(::core::option::Option::Some(#var_tangents));
    };
    // Its VJP: the module's forward mode along the variables differentiated, whose
    // tree of cotangents holds the variables' and their tangents' apart.
    let ts: Vec<Ident> = (0..names.len())
        .map(|i| format_ident!("__t{}", i))
        .collect();
    let cs = &fw.cs;
    let extra = options.map(|_| quote!((),));
    let tjvp_vjp = companion_items(
        &syn::parse_quote!(pub),
        &tjvp_sig,
        &tjvp_params,
        quote! {
            #along_variables
            let (__out, __pb) = self.____call_body_tjvp_vjp_params(&mut __cx, #(#names,)* #(#all_tangents),*);
            #finish
            let (__y, __dy) = __out;
            (#wrap, move |#ct_pat| {
                let (__v, _, #(#cs,)* #(#ts,)*) = __pb((__ct, __dct));
                let (__v, __dv) = ::adjoint::__private::split_tangent_cotangents(__v);
                (__v, __dv, #extra #(#cs,)* #(#ts,)*)
            })
        },
        Owner::Method,
        Flavor::Owned,
    );
    quote! {
        #[doc(hidden)]
        #[allow(clippy::all, clippy::too_many_arguments, unused_variables)]
        pub fn #jvp_name #generics (&self, #variables: &::adjoint::Variables, #opt_input #(#inputs,)* #(#tangents),*) -> #out_ty #where_clause {
            #scope
            let (__y, __dy) = self.__call_body_tjvp(&mut __cx, #(#names,)* #(#all_tangents),*);
            #finish
            #wrap
        }
        #vjp

        #[doc(hidden)]
        #[allow(clippy::all, clippy::too_many_arguments, unused_variables)]
        pub fn #tjvp_name #generics (&self, #variables: &::adjoint::Variables, #var_tangents: &::adjoint::Variables, #opt_input #(#inputs,)* #(#tangents),*) -> #out_ty #where_clause {
            #along_variables
            let (__y, __dy) = self.__call_body_tjvp(&mut __cx, #(#names,)* #(#all_tangents),*);
            #finish
            #wrap
        }
        #tjvp_vjp
    }
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
