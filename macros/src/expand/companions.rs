//! A function's reverse-mode companions: the primal and reverse code of its body
//! (from the stages before) written out as `vjp`, `vjp_owned`, `grad` and
//! `value_and_grad`, for a free function, a method, or a module's body.

use crate::activity;
use crate::ctxt::Ctxt;
use crate::ir::{Func, Tail, Val};
use crate::lower::{self, ParamSpec};
use crate::names::companion_ident;
use crate::parse::signature::*;
use crate::reverse;
use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident, quote};
use syn::spanned::Spanned;
use syn::{Ident, ReturnType, Signature};

/// Of `n` cotangents `__g0..`: the pattern that binds the `chosen` ones (`_` for the
/// rest), and the chosen ones in `chosen`'s order (alone, or as a tuple).
pub(crate) fn pick_cotangents(n: usize, chosen: &[usize]) -> (Vec<TokenStream>, TokenStream) {
    let name = |i: usize| format_ident!("__g{}", i);
    let picks = (0..n)
        .map(|i| {
            if chosen.contains(&i) {
                name(i).to_token_stream()
            } else {
                quote!(_)
            }
        })
        .collect();
    let picked: Vec<Ident> = chosen.iter().map(|&i| name(i)).collect();
    let picked = match picked.as_slice() {
        [one] => one.to_token_stream(),
        _ => quote!((#(#picked,)*)),
    };
    (picks, picked)
}

/// Lowers, analyses and generates one function body.
/// What kind of body [`generate`] differentiates.
#[derive(Clone, Copy, Default)]
pub(crate) struct Options {
    /// The body returns `(value, aux)` and only `value` is differentiated.
    pub(crate) has_aux: bool,
    /// Parameters read through the scope are differentiated.
    pub(crate) params_active: bool,
    /// The pullback runs where the primal does (`grad!`, `value_and_grad!` of a
    /// closure): nested calls may borrow this body's locals.
    pub(crate) local_pullback: bool,
    /// Forward mode written from the body (a lifted closure's rerun) may call
    /// functions and methods, through their forward-mode companions: the enclosing
    /// function or impl is `#[differentiable(jvp)]`, so theirs must be too.
    pub(crate) calls: bool,
}

pub(crate) fn generate(
    cx: &Ctxt,
    params: &[ParamInfo],
    body: &syn::Block,
    options: Options,
) -> Option<(Func, reverse::Generated)> {
    let Options {
        has_aux: aux,
        params_active,
        local_pullback,
        calls,
    } = options;
    let specs: Vec<ParamSpec> = params.iter().map(ParamInfo::spec).collect();
    // With `has_aux` the body returns a pair, perhaps from a call: take it apart.
    let aux_body: syn::Block;
    let body = if aux {
        aux_body = syn::parse_quote!({ let (__value, __aux) = #body; (__value, __aux) });
        &aux_body
    } else {
        body
    };
    let mut func = lower::lower(cx, &specs, body);
    func.aux = aux;
    func.params_active = params_active;
    func.local_pullback = local_pullback;
    if aux && !matches!(output_shape(&func), Some(Val::Tuple(v)) if v.len() == 2) {
        cx.error(
            body.span(),
            "with `has_aux`, the function must return a pair `(value, aux)`",
        );
        return None;
    }
    if cx.has_errors() {
        return None;
    }
    let act = activity::analyze(cx, &func);
    if cx.has_errors() {
        return None;
    }
    super::rerun::write_reruns(&mut func.body, &func.vars, &|v| act.varied(v), calls);
    let generated = reverse::generate(&func, &act);
    Some((func, generated))
}

pub(crate) fn output_shape(f: &Func) -> Option<Val> {
    fn first(b: &crate::ir::Block) -> Option<Val> {
        match &b.tail {
            Tail::Leaf(l) => l.value.clone(),
            Tail::Branch(br) => br.arms.iter().find_map(first),
        }
    }
    first(&f.body)
}

/// The companions of one function or method; `calls` as [`Options::calls`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn companions(
    cx: &Ctxt,
    vis: &syn::Visibility,
    sig: &Signature,
    params: &[ParamInfo],
    body: &syn::Block,
    owner: Owner,
    which: Companions,
    calls: bool,
) -> Option<TokenStream> {
    let params_active = which == Companions::Params;
    let options = Options {
        params_active,
        calls,
        ..Options::default()
    };
    let (_, g) = generate(cx, params, body, options)?;
    let ReturnType::Type(_, ret) = &sig.output else {
        return None;
    };
    let (primal, output, reverse) = (&g.primal, &g.output, &g.reverse);
    let ret_cot = cot_type(ret);
    let closure = quote!(move |__ct: #ret_cot| { #reverse });
    // The owning variant copies the reference arguments its pullback reads, so the
    // pullback borrows nothing from its caller: what a nested call needs.
    let owned_refs: Vec<&Ident> = g
        .captured_params
        .iter()
        .filter(|n| {
            params
                .iter()
                .any(|p| param_name(&p.pat).to_string() == n.to_string() && is_borrowed_type(&p.ty))
        })
        .collect();
    let owned_body = quote! {
        #primal
        #(let #owned_refs = ::adjoint::__private::own(&#owned_refs);)*
        (#output, #closure)
    };
    if params_active {
        return Some(companion_items(
            vis,
            sig,
            params,
            owned_body,
            owner,
            Flavor::Params,
        ));
    }
    if which == Companions::Owned {
        return Some(companion_items(
            vis,
            sig,
            params,
            owned_body,
            owner,
            Flavor::Owned,
        ));
    }
    let borrowing = Bodies {
        vjp: quote! {
            #primal
            (#output, #closure)
        },
        grad: g.grad_primal.clone().map(|p| (p, reverse.clone())),
    };
    let mut out = companion_items(vis, sig, params, borrowing, owner, Flavor::Borrowing);
    out.extend(companion_items(
        vis,
        sig,
        params,
        owned_body,
        owner,
        Flavor::Owned,
    ));
    Some(out)
}

/// Which companions `companions` writes for a body.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Companions {
    /// A function's or method's: the borrowing ones (`__f_vjp`, `__f_grad`,
    /// `__f_value_and_grad`) and the owning `__f_vjp_owned`.
    All,
    /// A module body's, called only from other generated code: `__f_vjp_owned`.
    Owned,
    /// A module body's with parameters differentiated: `__f_vjp_params`.
    Params,
}

impl Companions {
    /// What a function or method gets: a function taking the scope is called by
    /// modules, with parameters constant (inside `grad!`) or differentiated (`vjp!`,
    /// training); any other, all of them.
    pub(crate) fn for_scope(takes_scope: bool) -> &'static [Companions] {
        if takes_scope {
            &[Companions::Owned, Companions::Params]
        } else {
            &[Companions::All]
        }
    }
}

/// Which companion `companion_items` writes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// `__f_vjp`, `__f_grad`, `__f_value_and_grad`: the pullback may borrow the
    /// arguments (no copies; what `grad!(f)` calls).
    Borrowing,
    /// `__f_vjp_owned`: the pullback owns what it reads (what nested calls call).
    Owned,
    /// `__f_vjp_params`: owned, and parameter cotangents come first as `Variables`.
    Params,
}

/// The bodies of a function's companions.
pub(crate) struct Bodies {
    /// `__f_vjp`'s: the value and its pullback.
    vjp: TokenStream,
    /// `__f_grad`'s, when the gradient skips work only the value needs: its primal
    /// and the reverse sweep (else `__f_grad` calls `__f_vjp`).
    grad: Option<(TokenStream, TokenStream)>,
}

impl From<TokenStream> for Bodies {
    fn from(vjp: TokenStream) -> Self {
        Bodies { vjp, grad: None }
    }
}

/// What companions belong to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    /// A free function: its companions are associated functions of the struct of its
    /// name (`f::vjp`, `f::grad`), which `#[differentiable]` declares beside it, so
    /// that `use path::f;` brings them along.
    Function,
    /// An associated function without `self` (`Self::__f_vjp(..)`).
    Associated,
    /// A method (`self.__f_vjp(..)`).
    Method,
    /// A method that exists only as its companions (a module body's JVP).
    Hidden,
}

/// `__f_vjp` with the given body, and `__f_grad`, `__f_value_and_grad` on top of it.
pub(crate) fn companion_items(
    vis: &syn::Visibility,
    sig: &Signature,
    params: &[ParamInfo],
    bodies: impl Into<Bodies>,
    owner: Owner,
    flavor: Flavor,
) -> TokenStream {
    let bodies = bodies.into();
    let method = owner != Owner::Function && owner != Owner::Associated;
    let free = owner == Owner::Function;
    let vjp_body = bodies.vjp;
    let var_cots = flavor == Flavor::Params;
    let owned = flavor != Flavor::Borrowing;
    let ReturnType::Type(_, ret) = &sig.output else {
        return TokenStream::new();
    };
    let ret_cot = cot_type(ret);
    let name = &sig.ident;
    let companion = |what: &str| {
        if free {
            Ident::new(what, name.span())
        } else {
            companion_ident(name, what)
        }
    };
    let vjp = companion(match flavor {
        Flavor::Borrowing => "vjp",
        Flavor::Owned => "vjp_owned",
        Flavor::Params => "vjp_params",
    });
    let (grad, vg) = (companion("grad"), companion("value_and_grad"));
    // Elided lifetimes would be ambiguous in the companions' return types (which
    // name the parameters' cotangents): name each one. The pullback does not borrow
    // the scope (`cx: &mut Scope`), so it says exactly what it captures.
    let mut generics = sig.generics.clone();
    let mut named = NameLifetimes { fresh: Vec::new() };
    let mut scope_lifetimes = Vec::new();
    let params: Vec<ParamInfo> = params
        .iter()
        .map(|p| {
            let mut ty = p.ty.clone();
            let before = named.fresh.len();
            syn::visit_mut::VisitMut::visit_type_mut(&mut named, &mut ty);
            if mentions_scope(&ty) {
                scope_lifetimes.extend(named.fresh[before..].iter().cloned());
            }
            ParamInfo {
                pat: p.pat.clone(),
                ty,
                active: p.active,
                scope: p.scope,
            }
        })
        .collect();
    let params = &params[..];
    let receiver_lt = syn::Lifetime::new("'__s", Span::call_site());
    if method {
        named.fresh.push(receiver_lt.clone());
    }
    for (k, lt) in named.fresh.iter().enumerate() {
        generics.params.insert(
            k,
            syn::GenericParam::Lifetime(syn::LifetimeParam::new(lt.clone())),
        );
    }
    // An owning pullback captures no lifetime; a borrowing one all but the scope's.
    let precise = (owned || !scope_lifetimes.is_empty()).then(|| {
        let lts = generics
            .lifetimes()
            .map(|l| &l.lifetime)
            .filter(|l| !owned && !scope_lifetimes.contains(l));
        let outer = IMPL_PARAMS.with(|p| p.borrow().clone());
        let tys = outer.iter().chain(generics.type_params().map(|t| &t.ident));
        let cs = generics.const_params().map(|c| &c.ident);
        quote!(+ use<#(#lts,)* #(#tys,)* #(#cs,)*>)
    });
    let generics = &generics;
    let where_clause = &generics.where_clause;
    let receiver = sig.receiver().map(|_| quote!(&#receiver_lt self,));
    let args: Vec<TokenStream> = params.iter().map(ParamInfo::input).collect();
    let names: Vec<TokenStream> = params.iter().map(|p| param_name(&p.pat)).collect();
    // A cotangent type does not depend on the argument's lifetimes (`Cot<&'a
    // Array2<f64>>` is `Array2<f64>`): writing them `'static` keeps them out of the
    // pullback's captures.
    let cots: Vec<TokenStream> = params.iter().map(ParamInfo::cot_or_unit).collect();
    let active: Vec<usize> = params
        .iter()
        .enumerate()
        .filter(|(_, p)| p.active)
        .map(|(i, _)| i)
        .collect();
    let grad_ty: Vec<&TokenStream> = active.iter().map(|i| &cots[*i]).collect();
    let grad_ty = if grad_ty.len() == 1 {
        grad_ty[0].clone()
    } else {
        quote!((#(#grad_ty,)*))
    };
    let (picks, picked) = pick_cotangents(params.len(), &active);
    let call = if method {
        quote!(self.#vjp)
    } else {
        quote!(Self::#vjp)
    };
    // `__f_grad` is generic over the output it seeds, so a function with a
    // non-scalar output still compiles and only a call to `grad!` reports it.
    let mut grad_generics = generics.clone();
    grad_generics.params.push(syn::parse_quote!(__O));
    grad_generics
        .make_where_clause()
        .predicates
        .push(syn::parse_quote!(#ret: ::adjoint::__private::GradOf<__O, Seed = #ret_cot>));
    let grad_where = &grad_generics.where_clause;
    let var_cot_ty = var_cots.then(|| quote!(::adjoint::Variables,));
    let doc_vjp =
        format!("The value of [`{name}`] and its pullback (generated by `#[differentiable]`).");
    let doc_grad = format!(
        "The gradient of [`{name}`] with respect to its differentiated arguments (generated by `#[differentiable]`)."
    );
    let doc_vg =
        format!("The value and gradient of [`{name}`] (generated by `#[differentiable]`).");
    let grad_body = match &bodies.grad {
        Some((primal, reverse)) => quote! {
            #primal
            let __ct = <#ret as ::adjoint::__private::GradOf<__O>>::seed();
            let (#(#picks,)*) = { #reverse };
            #picked
        },
        None => quote! {
            let (__out, __pb) = #call(#(#names),*);
            let (#(#picks,)*) = __pb(::adjoint::__private::GradOf::<__O>::grad_seed(&__out));
            #picked
        },
    };
    // The companions stand for the function: a function only ever differentiated is
    // not dead code.
    let mention = (owner != Owner::Hidden).then(|| {
        let tys = sig.generics.type_params().map(|t| &t.ident);
        let cs = sig.generics.const_params().map(|c| &c.ident);
        let args: Vec<&Ident> = tys.chain(cs).collect();
        let turbofish = (!args.is_empty()).then(|| quote!(::<#(#args),*>));
        if free {
            quote!(let _ = #name #turbofish;)
        } else {
            quote!(let _ = Self::#name #turbofish;)
        }
    });
    // Only the borrowing flavor has grad and value_and_grad: what `grad!(f)` calls.
    let grads = (flavor == Flavor::Borrowing).then(|| {
        quote! {
            #[doc = #doc_grad]
            #[doc(hidden)]
            #[inline]
            #[allow(clippy::all)]
            #vis fn #grad #grad_generics (#receiver #(#args),*) -> #grad_ty
                #grad_where
            {
                #mention
                #grad_body
            }

            #[doc = #doc_vg]
            #[doc(hidden)]
            #[inline]
            #[allow(clippy::all)]
            #vis fn #vg #grad_generics (#receiver #(#args),*) -> (#ret, #grad_ty)
                #grad_where
            {
                #mention
                let (__out, __pb) = #call(#(#names),*);
                let (#(#picks,)*) = __pb(::adjoint::__private::GradOf::<__O>::grad_seed(&__out));
                (__out, #picked)
            }
        }
    });
    let items = quote! {
        #[doc = #doc_vjp]
        #[doc(hidden)]
        // Inline: code is generated where a companion is used, so the ones a crate
        // never calls cost it type checking only.
        #[inline]
        #[allow(unused_mut, unused_variables, unused_parens, clippy::all)]
        #vis fn #vjp #generics (#receiver #(#args),*)
            -> (#ret, impl ::core::ops::FnOnce(#ret_cot) -> (#var_cot_ty #(#cots,)*) #precise)
            #where_clause
        {
            #mention
            #vjp_body
        }

        #grads
    };
    if free {
        quote!(impl #name { #items })
    } else {
        items
    }
}

/// The struct a free function's companions are associated functions of, named like
/// the function (a type, so it shares the name without clashing): `use path::f;`
/// imports both.
pub(crate) fn companion_struct(vis: &syn::Visibility, name: &Ident) -> TokenStream {
    let doc = format!("The gradient companions of [`{name}`] (generated by `#[differentiable]`).");
    quote! {
        #[doc = #doc]
        #[doc(hidden)]
        #[allow(non_camel_case_types, dead_code)]
        #vis struct #name {}
    }
}
