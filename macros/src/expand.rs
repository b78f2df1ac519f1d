//! Expansion: the items `#[differentiable]` writes next to a function or an impl
//! (`__f_vjp`, `__f_grad`, `__f_value_and_grad`), and the closure forms of `grad!`,
//! `value_and_grad!` and `vjp!`.

use crate::activity;
use crate::adjoint::{self, companion_ident};
use crate::ctxt::Ctxt;
use crate::ir::{Func, Tail, Val};
use crate::lower::{self, ParamSpec};
use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident, quote};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::visit_mut::VisitMut;
use syn::{
    FnArg, Ident, ImplItem, Item, ItemFn, ItemImpl, Pat, ReturnType, Signature, Token, Type,
};

/// `#[differentiable]` on a function or an inherent impl.
pub fn differentiable(attr: TokenStream, item: TokenStream) -> TokenStream {
    let cx = Ctxt::default();
    // `#[differentiable(jvp)]` also writes the forward-mode companion `__f_jvp`.
    let jvp = attr.to_string() == "jvp";
    if !attr.is_empty() && !jvp {
        cx.error_at(
            &attr,
            "#[differentiable] takes no arguments, or `jvp` for a forward-mode companion",
        );
    }
    let item: Item = match syn::parse2(item.clone()) {
        Ok(i) => i,
        Err(e) => return e.into_compile_error(),
    };
    let out = match item {
        Item::Fn(f) => expand_fn(&cx, f, jvp),
        Item::Impl(i) => expand_impl(&cx, i),
        other => {
            cx.error_at(
                &other,
                "#[differentiable] applies to a function or an inherent `impl` block",
            );
            other.into_token_stream()
        }
    };
    let errors = cx.into_compile_errors();
    quote!(#out #errors)
}

/// A parameter of a differentiated signature.
#[derive(Clone)]
pub(crate) struct ParamInfo {
    pub(crate) pat: Pat,
    pub(crate) ty: Type,
    pub(crate) active: bool,
    /// The module's scope (`cx: &mut Scope`).
    pub(crate) scope: bool,
}

impl ParamInfo {
    /// `pat: ty`, as it stands in a signature.
    pub(crate) fn input(&self) -> TokenStream {
        let (pat, ty) = (&self.pat, &self.ty);
        quote!(#pat: #ty)
    }

    /// What lowering needs to know of it.
    pub(crate) fn spec(&self) -> ParamSpec<'_> {
        ParamSpec {
            pat: &self.pat,
            active: self.active,
            scope: self.scope,
            scalar: is_float_scalar(&self.ty),
            reference: matches!(self.ty, Type::Reference(_)),
        }
    }
}

/// Of `n` cotangents `__g0..`: the pattern that binds the `chosen` ones (`_` for the
/// rest), and the chosen ones in `chosen`'s order (alone, or as a tuple).
fn pick_cotangents(n: usize, chosen: &[usize]) -> (Vec<TokenStream>, TokenStream) {
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

/// Strips `#[no_grad]` from the parameters (it is not a real attribute) and says
/// which parameters are differentiated.
pub(crate) fn params(cx: &Ctxt, sig: &mut Signature) -> Vec<ParamInfo> {
    let mut generics = float_params(&sig.generics);
    generics.extend(IMPL_FLOATS.with(|p| p.borrow().clone()));
    let mut out = Vec::new();
    for (k, arg) in sig.inputs.iter_mut().enumerate() {
        let FnArg::Typed(pt) = arg else { continue };
        let before = pt.attrs.len();
        pt.attrs.retain(|a| !a.path().is_ident("no_grad"));
        let no_grad = pt.attrs.len() != before;
        let active = !no_grad && differentiable_type(&pt.ty, &generics);
        let pat = match &*pt.pat {
            Pat::Ident(p) => {
                let mut p = p.clone();
                p.mutability = None;
                Pat::Ident(p)
            }
            // An unnamed parameter gets a name the generated code can pass on.
            Pat::Wild(_) => {
                let name = crate::hygiene::generated(&format!("__unnamed{k}"));
                syn::parse_quote!(#name)
            }
            other => {
                cx.error_at(
                    other,
                    "differentiable parameters must be plain names; destructure in the body",
                );
                other.clone()
            }
        };
        let scope = mentions_scope(&pt.ty);
        out.push(ParamInfo {
            pat,
            ty: (*pt.ty).clone(),
            active,
            scope,
        });
    }
    out
}

/// The type parameters bounded by `Real` (or `Float`), inline or in the `where`
/// clause: float types, so arguments mentioning them are differentiated. So are
/// those whose bounds name one (`S: Data<Elem = A>`, an array's storage of floats).
fn float_params(generics: &syn::Generics) -> Vec<String> {
    let mut out = real_params(generics);
    let names_float =
        |bounds: &syn::punctuated::Punctuated<syn::TypeParamBound, syn::Token![+]>,
         floats: &[String]| {
            bounds
                .iter()
                .any(|b| mentions_float(b.to_token_stream(), floats))
        };
    let floats = out.clone();
    for t in generics.type_params() {
        if !floats.contains(&t.ident.to_string()) && names_float(&t.bounds, &floats) {
            out.push(t.ident.to_string());
        }
    }
    if let Some(w) = &generics.where_clause {
        for p in &w.predicates {
            if let syn::WherePredicate::Type(t) = p
                && let Type::Path(tp) = &t.bounded_ty
                && let Some(id) = tp.path.get_ident()
                && !floats.contains(&id.to_string())
                && names_float(&t.bounds, &floats)
            {
                out.push(id.to_string());
            }
        }
    }
    out
}

/// The type parameters bounded by `Real` (or `Float`).
fn real_params(generics: &syn::Generics) -> Vec<String> {
    let is_float_bound = |b: &syn::TypeParamBound| {
        matches!(b, syn::TypeParamBound::Trait(t)
            if t.path.segments.last().is_some_and(|s| s.ident == "Real" || s.ident == "Float"))
    };
    let mut out: Vec<String> = generics
        .type_params()
        .filter(|t| t.bounds.iter().any(is_float_bound))
        .map(|t| t.ident.to_string())
        .collect();
    if let Some(w) = &generics.where_clause {
        for p in &w.predicates {
            if let syn::WherePredicate::Type(t) = p
                && t.bounds.iter().any(is_float_bound)
                && let Type::Path(tp) = &t.bounded_ty
                && let Some(id) = tp.path.get_ident()
            {
                out.push(id.to_string());
            }
        }
    }
    out
}

/// Whether a parameter of this type is differentiated: it mentions `f32`, `f64`,
/// `Variables` (a tree of parameters, Flax's `loss_fn(params, ..)`) or one of the
/// function's float type parameters (bounded by `Real`). Integers, shapes, models and scopes are constants;
/// `#[no_grad]` makes any parameter one.
fn differentiable_type(ty: &Type, generics: &[String]) -> bool {
    mentions_float(ty.to_token_stream(), generics)
}

/// Whether tokens name `f32`, `f64`, `Variables` or one of `generics`.
fn mentions_float(t: TokenStream, generics: &[String]) -> bool {
    t.into_iter().any(|tt| match tt {
        proc_macro2::TokenTree::Ident(i) => {
            let s = i.to_string();
            s == "f32" || s == "f64" || s == "Variables" || generics.contains(&s)
        }
        proc_macro2::TokenTree::Group(g) => mentions_float(g.stream(), generics),
        _ => false,
    })
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
}

pub(crate) fn generate(
    cx: &Ctxt,
    params: &[ParamInfo],
    body: &syn::Block,
    options: Options,
) -> Option<(Func, adjoint::Generated)> {
    let Options {
        has_aux: aux,
        params_active,
        local_pullback,
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
    let generated = adjoint::generate(&func, &act);
    Some((func, generated))
}

fn output_shape(f: &Func) -> Option<Val> {
    fn first(b: &crate::ir::Block) -> Option<Val> {
        match &b.tail {
            Tail::Leaf(l) => l.value.clone(),
            Tail::Branch(br) => br.arms.iter().find_map(first),
        }
    }
    first(&f.body)
}

fn expand_fn(cx: &Ctxt, mut f: ItemFn, jvp: bool) -> TokenStream {
    check_signature(cx, &f.sig);
    let params = params(cx, &mut f.sig);
    let scopes = crate::module::scope_names(&params);
    crate::module::route_module_calls(&scopes, &mut f.block);
    let mut items = TokenStream::new();
    for which in Companions::for_scope(!scopes.is_empty()) {
        if cx.has_errors() {
            break;
        }
        items.extend(companions(
            cx,
            &f.vis,
            &f.sig,
            &params,
            &f.block,
            Owner::Function,
            *which,
        ));
    }
    let jvp = if jvp && !cx.has_errors() {
        jvp_item(cx, &f, &params)
    } else {
        None
    };
    let owner = companion_struct(&f.vis, &f.sig.ident);
    quote!(#f #owner #items #jvp)
}

/// `fn __f_jvp(args.., tangents..) -> (R, R)`: the value and its directional
/// derivative, as ordinary Rust, itself `#[differentiable]` (so `grad!` of it gives
/// Hessian-vector products). One tangent per differentiated argument, same type.
fn jvp_item(cx: &Ctxt, f: &ItemFn, params: &[ParamInfo]) -> Option<TokenStream> {
    let ReturnType::Type(_, ret) = &f.sig.output else {
        return None;
    };
    let specs: Vec<ParamSpec> = params.iter().map(ParamInfo::spec).collect();
    let func = lower::lower(cx, &specs, &f.block);
    let act = activity::analyze(cx, &func);
    let reference_params: Vec<bool> = params
        .iter()
        .map(|p| matches!(p.ty, Type::Reference(_)))
        .collect();
    let Some(body) = crate::tangent::jvp_body(
        &func,
        &|v| act.varied(v),
        &reference_params,
        crate::tangent::Mode::Inputs,
    ) else {
        cx.error_at(
            &f.sig.ident,
            "#[differentiable(jvp)]: forward mode covers branches, loops, arithmetic, elementwise maths, reductions, products, layers' rules and module calls so far; not yet `mapv` closures or calls to other functions",
        );
        return None;
    };
    let owner = &f.sig.ident;
    let vis = &f.vis;
    let generics = &f.sig.generics;
    let where_clause = &f.sig.generics.where_clause;
    let args = params.iter().map(ParamInfo::input);
    let tangents = params.iter().filter(|p| p.active).map(|p| {
        let n = crate::tangent::dot_name(
            &syn::parse2::<Ident>(param_name(&p.pat)).unwrap_or_else(|_| format_ident!("_")),
        );
        let ty = &p.ty;
        quote!(#n: #ty)
    });
    let doc = format!(
        "The value of [`{}`] and its derivative along the tangents (generated by `#[differentiable(jvp)]`).",
        f.sig.ident
    );
    let ret_cot = cot_type(ret);
    let jacobians = jacobian_items(f, params);
    Some(quote! {
        #[::adjoint::differentiable]
        impl #owner {
            #[doc = #doc]
            #[doc(hidden)]
            #[allow(clippy::all)]
            #vis fn jvp #generics (#(#args,)* #(#tangents),*) -> (#ret, #ret_cot) #where_clause {
                #body
            }
        }
        #jacobians
    })
}

/// The companions built on `jvp` and `vjp` that `hvp!`, `jacfwd!`, `jacrev!` and
/// `hessian!` call: `hvp(args.., tangents..)` (reverse over forward: the gradient of
/// `<grad f, v>`, shaped as `grad!(f)`'s), and the Jacobians and the Hessian with
/// respect to the first differentiated argument, shaped as JAX's (`O ++ I`, `I ++
/// I`), the other arguments held.
fn jacobian_items(f: &ItemFn, params: &[ParamInfo]) -> TokenStream {
    let owner = &f.sig.ident;
    let (vis, generics) = (&f.vis, &f.sig.generics);
    let where_clause = &generics.where_clause;
    let Some(w) = params.iter().position(|p| p.active) else {
        return TokenStream::new();
    };
    let reference = |p: &ParamInfo| matches!(p.ty, Type::Reference(_));
    let owned = |p: &ParamInfo| {
        let mut ty = p.ty.clone();
        StaticLifetimes.visit_type_mut(&mut ty);
        ty
    };
    let names: Vec<TokenStream> = params.iter().map(|p| param_name(&p.pat)).collect();
    // Each call gets the arguments anew: references as they are, values cloned.
    let pass: Vec<TokenStream> = params
        .iter()
        .zip(&names)
        .map(|(p, n)| {
            if reference(p) {
                quote!(#n)
            } else {
                quote!(::core::clone::Clone::clone(&#n))
            }
        })
        .collect();
    let active: Vec<usize> = (0..params.len()).filter(|&i| params[i].active).collect();
    // The tangents of the active arguments: `e` along argument `w`, zero elsewhere.
    let unit_tangents: Vec<TokenStream> = active
        .iter()
        .map(|&i| {
            let (p, n) = (&params[i], &names[i]);
            match (i == w, reference(p)) {
                (true, true) => quote!(&__e),
                (true, false) => quote!(__e),
                (false, true) => quote!(&::adjoint::__private::zeros(#n)),
                (false, false) => quote!(::adjoint::__private::zeros(&#n)),
            }
        })
        .collect();
    let (wname, wty) = (&names[w], owned(&params[w]));
    let jacobian = quote!(::adjoint::__private::Jacobian<#wty>);
    // `grad!` of the JVP's tangent output over the closure's copies of the arguments
    // (`__a0..`) and tangents (`__t0..`), with respect to `wrt`.
    let arg_names: Vec<Ident> = (0..params.len())
        .map(|i| format_ident!("__a{}", i))
        .collect();
    let tan_names: Vec<Ident> = (0..active.len())
        .map(|k| format_ident!("__t{}", k))
        .collect();
    let closure_params = params
        .iter()
        .zip(&arg_names)
        .map(|(p, a)| {
            let ty = &p.ty;
            quote!(#a: #ty)
        })
        .chain(active.iter().zip(&tan_names).map(|(&i, t)| {
            let ty = &params[i].ty;
            quote!(#t: #ty)
        }));
    let closure_params: Vec<TokenStream> = closure_params.collect();
    let grad_of_jvp = |wrt: &[&Ident], tangents: &[TokenStream]| {
        quote! {
            ::adjoint::grad!(
                |#(#closure_params),*| {
                    let (_, __d) = ::adjoint::jvp!(#owner)(#(#arg_names,)* #(#tan_names),*);
                    __d
                },
                wrt = [#(#wrt),*]
            )(#(#pass,)* #(#tangents),*)
        }
    };
    let all_active: Vec<&Ident> = active.iter().map(|&i| &arg_names[i]).collect();
    let dnames: Vec<Ident> = active
        .iter()
        .map(|&i| {
            crate::tangent::dot_name(&format_ident!("{}", param_name(&params[i].pat).to_string()))
        })
        .collect();
    let dargs = active.iter().zip(&dnames).map(|(&i, d)| {
        let ty = &params[i].ty;
        quote!(#d: #ty)
    });
    let dpass: Vec<TokenStream> = dnames.iter().map(|d| quote!(#d)).collect();
    let hvp_body = grad_of_jvp(&all_active, &dpass);
    let hvp_ret = match active.as_slice() {
        [i] => cot_type(&owned(&params[*i])),
        many => {
            let items = many.iter().map(|&i| cot_type(&owned(&params[i])));
            quote!((#(#items,)*))
        }
    };
    let hessian_column = grad_of_jvp(&[&arg_names[w]], &unit_tangents);
    let at = syn::Index::from(w);
    let args: Vec<TokenStream> = params.iter().map(ParamInfo::input).collect();
    // Second order needs a scalar output: `f32`, `f64` or a float type parameter.
    let scalar_output = match &f.sig.output {
        ReturnType::Type(_, t) => match &**t {
            Type::Path(p) => p.path.get_ident().is_some_and(|i| {
                i == "f32" || i == "f64" || generics.type_params().any(|g| g.ident == *i)
            }),
            _ => false,
        },
        ReturnType::Default => false,
    };
    let name = owner.to_string();
    let doc_hvp = format!("The Hessian of [`{name}`] times the tangents (`hvp!({name})`).");
    let doc_jacfwd = format!("The Jacobian of [`{name}`] by forward mode (`jacfwd!({name})`).");
    let doc_jacrev = format!("The Jacobian of [`{name}`] by reverse mode (`jacrev!({name})`).");
    let doc_hessian = format!("The Hessian of [`{name}`] (`hessian!({name})`).");
    let second = scalar_output.then(|| {
        quote! {
            #[doc = #doc_hvp]
            #[doc(hidden)]
            #vis fn hvp #generics (#(#args,)* #(#dargs),*) -> #hvp_ret #where_clause {
                #hvp_body
            }

            #[doc = #doc_hessian]
            #[doc(hidden)]
            #vis fn hessian #generics (#(#args),*) -> #jacobian #where_clause {
                ::adjoint::__private::jacfwd(&#wname, |__e| #hessian_column)
            }
        }
    });
    quote! {
        #[allow(clippy::all, unused_parens, unused_variables)]
        impl #owner {
            #second

            #[doc = #doc_jacfwd]
            #[doc(hidden)]
            #vis fn jacfwd #generics (#(#args),*) -> #jacobian #where_clause {
                ::adjoint::__private::jacfwd(&#wname, |__e| #owner::jvp(#(#pass,)* #(#unit_tangents),*).1)
            }

            #[doc = #doc_jacrev]
            #[doc(hidden)]
            #vis fn jacrev #generics (#(#args),*) -> #jacobian #where_clause {
                let __y = #owner(#(#pass),*);
                ::adjoint::__private::jacrev(&#wname, &__y, |__e| {
                    let (_, __pullback) = #owner::vjp(#(#pass),*);
                    __pullback(__e).#at
                })
            }

        }
    }
}

pub(crate) fn check_signature(cx: &Ctxt, sig: &Signature) {
    if let Some(u) = &sig.unsafety {
        cx.error_at(u, "an `unsafe fn` cannot be #[differentiable]");
    }
    if let Some(a) = &sig.asyncness {
        cx.error_at(a, "an `async fn` cannot be #[differentiable]");
    }
    match &sig.output {
        ReturnType::Default => cx.error_at(
            &sig.ident,
            "a #[differentiable] function must return the value to differentiate",
        ),
        ReturnType::Type(_, ty) if borrows(ty) => cx.error_at(
            ty,
            "a #[differentiable] function returns an owned value: a reference or a view borrows from the arguments, which the generated pullbacks may own; return `.to_owned()` of it",
        ),
        ReturnType::Type(..) => {}
    }
}

/// Whether a type borrows: a reference, a lifetime, or an ndarray view.
fn borrows(ty: &Type) -> bool {
    struct V(bool);
    impl<'ast> syn::visit::Visit<'ast> for V {
        fn visit_type_reference(&mut self, _: &'ast syn::TypeReference) {
            self.0 = true;
        }
        fn visit_lifetime(&mut self, _: &'ast syn::Lifetime) {
            self.0 = true;
        }
        fn visit_path_segment(&mut self, s: &'ast syn::PathSegment) {
            let n = s.ident.to_string();
            if n.starts_with("ArrayView") || n.starts_with("CowArray") {
                self.0 = true;
            }
            syn::visit::visit_path_segment(self, s);
        }
    }
    let mut v = V(false);
    syn::visit::Visit::visit_type(&mut v, ty);
    v.0
}

/// The companions of one function or method.
pub(crate) fn companions(
    cx: &Ctxt,
    vis: &syn::Visibility,
    sig: &Signature,
    params: &[ParamInfo],
    body: &syn::Block,
    owner: Owner,
    which: Companions,
) -> Option<TokenStream> {
    let params_active = which == Companions::Params;
    let options = Options {
        params_active,
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
    fn for_scope(takes_scope: bool) -> &'static [Companions] {
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

/// Whether a parameter type is `f32` or `f64`, or a reference to one.
fn is_float_scalar(ty: &Type) -> bool {
    match ty {
        Type::Reference(r) => is_float_scalar(&r.elem),
        Type::Path(p) => p.path.is_ident("f32") || p.path.is_ident("f64"),
        _ => false,
    }
}

/// Whether a parameter type borrows (`&T`, a view): the owning companion copies it.
fn is_borrowed_type(ty: &Type) -> bool {
    match ty {
        Type::Reference(_) => true,
        Type::Path(p) => p.path.segments.last().is_some_and(|s| {
            let n = s.ident.to_string();
            n.starts_with("ArrayView") || n.starts_with("CowArray")
        }),
        _ => false,
    }
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
    let cots: Vec<TokenStream> = params
        .iter()
        .map(|p| {
            if p.active {
                let mut ty = p.ty.clone();
                StaticLifetimes.visit_type_mut(&mut ty);
                cot_type(&ty)
            } else {
                quote!(())
            }
        })
        .collect();
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

/// `#[custom_vjp(fwd = f_fwd, bwd = f_bwd)]`: the user's rule for a function the
/// transform does not see into, like `jax.custom_vjp`. `f_fwd` takes `f`'s
/// arguments and returns `(output, residuals)`; `f_bwd(residuals, cotangent)`
/// returns one cotangent per argument (`()` for `#[no_grad]` ones).
pub fn custom_vjp(attr: TokenStream, item: TokenStream) -> TokenStream {
    let cx = Ctxt::default();
    let mut f: ItemFn = match syn::parse2(item) {
        Ok(f) => f,
        Err(e) => return e.into_compile_error(),
    };
    let rule = match syn::parse2::<CustomRule>(attr) {
        Ok(r) => Some(r),
        Err(e) => {
            cx.syn_error(e);
            None
        }
    };
    check_signature(&cx, &f.sig);
    let params = params(&cx, &mut f.sig);
    let items = match (&rule, cx.has_errors()) {
        (Some(rule), false) => {
            let (fwd, bwd) = (&rule.fwd, &rule.bwd);
            let names: Vec<TokenStream> = params.iter().map(|p| param_name(&p.pat)).collect();
            let ReturnType::Type(_, ret) = &f.sig.output else {
                unreachable!("checked by check_signature")
            };
            let ret_cot = cot_type(ret);
            let body = quote! {
                let (__out, __res) = #fwd(#(#names),*);
                (__out, move |__ct: #ret_cot| #bwd(__res, __ct))
            };
            let mut out = companion_items(
                &f.vis,
                &f.sig,
                &params,
                body.clone(),
                Owner::Function,
                Flavor::Borrowing,
            );
            out.extend(companion_items(
                &f.vis,
                &f.sig,
                &params,
                body,
                Owner::Function,
                Flavor::Owned,
            ));
            out
        }
        _ => TokenStream::new(),
    };
    let errors = cx.into_compile_errors();
    let owner = companion_struct(&f.vis, &f.sig.ident);
    quote!(#f #owner #items #errors)
}

/// `fwd = path, bwd = path`.
struct CustomRule {
    fwd: syn::Path,
    bwd: syn::Path,
}

impl Parse for CustomRule {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut fwd = None;
        let mut bwd = None;
        while !input.is_empty() {
            let key: Ident = input.parse()?;
            input.parse::<Token![=]>()?;
            let path: syn::Path = input.parse()?;
            match key.to_string().as_str() {
                "fwd" => fwd = Some(path),
                "bwd" => bwd = Some(path),
                other => {
                    return Err(syn::Error::new(
                        key.span(),
                        format!("unknown key `{other}`: expected `fwd = ..` and `bwd = ..`"),
                    ));
                }
            }
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        match (fwd, bwd) {
            (Some(fwd), Some(bwd)) => Ok(CustomRule { fwd, bwd }),
            _ => Err(input.error(
                "#[custom_vjp] needs both rules: `#[custom_vjp(fwd = f_fwd, bwd = f_bwd)]`",
            )),
        }
    }
}

/// Gives every elided lifetime of a type a name: `&T`, `'_`, and ndarray's view
/// types written without their lifetime (`ArrayView2<f64>`).
pub(crate) struct NameLifetimes {
    pub(crate) fresh: Vec<syn::Lifetime>,
}

impl NameLifetimes {
    fn next(&mut self) -> syn::Lifetime {
        let lt = syn::Lifetime::new(&format!("'__l{}", self.fresh.len()), Span::call_site());
        self.fresh.push(lt.clone());
        lt
    }
}

impl syn::visit_mut::VisitMut for NameLifetimes {
    fn visit_type_reference_mut(&mut self, r: &mut syn::TypeReference) {
        if r.lifetime.is_none() {
            r.lifetime = Some(self.next());
        }
        syn::visit_mut::visit_type_reference_mut(self, r);
    }

    fn visit_lifetime_mut(&mut self, lt: &mut syn::Lifetime) {
        if lt.ident == "_" {
            *lt = self.next();
        }
    }

    fn visit_path_segment_mut(&mut self, seg: &mut syn::PathSegment) {
        let name = seg.ident.to_string();
        let is_view =
            name.starts_with("ArrayView") || name.starts_with("CowArray") || name == "Scope";
        if is_view {
            match &mut seg.arguments {
                syn::PathArguments::AngleBracketed(args) => {
                    if !args
                        .args
                        .iter()
                        .any(|a| matches!(a, syn::GenericArgument::Lifetime(_)))
                    {
                        let lt = self.next();
                        args.args.insert(0, syn::GenericArgument::Lifetime(lt));
                    }
                }
                syn::PathArguments::None if name == "Scope" => {
                    let lt = self.next();
                    seg.arguments = syn::PathArguments::AngleBracketed(syn::parse_quote!(<#lt>));
                }
                syn::PathArguments::None => {}
                syn::PathArguments::Parenthesized(_) => {}
            }
        }
        syn::visit_mut::visit_path_segment_mut(self, seg);
    }
}

/// Rewrites a type into one with the same cotangent and no borrowed lifetime:
/// references are dropped (`Cot<&T>` is `Cot<T>`) and the lifetimes of views
/// become `'static` (`Cot<ArrayView2<'a, f64>>` is `Array2<f64>` for any `'a`).
pub(crate) struct StaticLifetimes;

impl syn::visit_mut::VisitMut for StaticLifetimes {
    fn visit_type_mut(&mut self, ty: &mut Type) {
        while let Type::Reference(r) = ty {
            *ty = (*r.elem).clone();
        }
        syn::visit_mut::visit_type_mut(self, ty);
    }

    fn visit_lifetime_mut(&mut self, lt: &mut syn::Lifetime) {
        *lt = syn::Lifetime::new("'static", lt.span());
    }

    // ndarray's views written without their lifetime (`ArrayView2<f64>`).
    fn visit_path_segment_mut(&mut self, seg: &mut syn::PathSegment) {
        let name = seg.ident.to_string();
        if (name.starts_with("ArrayView") || name.starts_with("CowArray"))
            && let syn::PathArguments::AngleBracketed(args) = &mut seg.arguments
            && !args
                .args
                .iter()
                .any(|a| matches!(a, syn::GenericArgument::Lifetime(_)))
        {
            let lt = syn::Lifetime::new("'static", Span::call_site());
            args.args.insert(0, syn::GenericArgument::Lifetime(lt));
        }
        syn::visit_mut::visit_path_segment_mut(self, seg);
    }
}

/// Whether a type mentions `Scope` (a module's scope parameter).
pub(crate) fn mentions_scope(ty: &Type) -> bool {
    fn walk(t: TokenStream) -> bool {
        t.into_iter().any(|tt| match tt {
            proc_macro2::TokenTree::Ident(i) => i == "Scope",
            proc_macro2::TokenTree::Group(g) => walk(g.stream()),
            _ => false,
        })
    }
    walk(ty.to_token_stream())
}

/// The cotangent type of `ty`, written out where it is plain: the type itself for
/// `f32`, `f64` and ndarray's owned arrays (`Array2<A>`, `Array<A, D>`), a tuple's
/// of its elements', else `::adjoint::Cot<ty>`. Writing it out spares rustc the
/// projection, which its code generation in release builds fails to normalize in
/// some generic closures' signatures (an internal compiler error, "SignatureMismatch
/// .. during codegen", for `Cot<Array<A, D>>`). Types with projections of their own
/// (`Array<A, D::Smaller>`) keep `Cot<..>`, which type checking needs there.
pub(crate) fn cot_type(ty: &Type) -> TokenStream {
    const OWNED: &[&str] = &[
        "f32", "f64", "Array", "Array0", "Array1", "Array2", "Array3", "Array4", "Array5",
        "Array6", "ArrayD",
    ];
    fn has_projection(t: TokenStream) -> bool {
        let mut prev_colon = false;
        t.into_iter().any(|tt| match tt {
            proc_macro2::TokenTree::Punct(p) if p.as_char() == ':' => {
                let two = prev_colon;
                prev_colon = true;
                two
            }
            proc_macro2::TokenTree::Group(g) => has_projection(g.stream()),
            _ => {
                prev_colon = false;
                false
            }
        })
    }
    match ty {
        Type::Tuple(t) if !t.elems.is_empty() => {
            let items = t.elems.iter().map(cot_type);
            quote!((#(#items,)*))
        }
        Type::Paren(p) => cot_type(&p.elem),
        Type::Group(g) => cot_type(&g.elem),
        Type::Path(p)
            if p.qself.is_none()
                && p.path.segments.len() == 1
                && p.path
                    .segments
                    .last()
                    .is_some_and(|s| OWNED.contains(&s.ident.to_string().as_str()))
                && !has_projection(p.path.segments.to_token_stream()) =>
        {
            ty.to_token_stream()
        }
        _ => quote!(::adjoint::Cot<#ty>),
    }
}

pub(crate) fn param_name(p: &Pat) -> TokenStream {
    match p {
        Pat::Ident(i) => i.ident.to_token_stream(),
        other => other.to_token_stream(),
    }
}

thread_local! {
    /// The type and const parameters of the impl whose methods are being expanded
    /// (`impl<const N: usize> Conv<N>`): a precise-capture list (`use<..>`) in a
    /// method's companion must name them too.
    static IMPL_PARAMS: std::cell::RefCell<Vec<Ident>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The impl's float type parameters (`impl<A: Real> Embed<A>`): a method's
    /// argument mentioning one is differentiated.
    static IMPL_FLOATS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Sets [`IMPL_PARAMS`] and [`IMPL_FLOATS`] for the expansion of one impl, and
/// clears them after.
struct ImplParams;

impl ImplParams {
    fn enter(generics: &syn::Generics) -> Self {
        let names = generics
            .type_params()
            .map(|t| t.ident.clone())
            .chain(generics.const_params().map(|c| c.ident.clone()))
            .collect();
        IMPL_PARAMS.with(|p| *p.borrow_mut() = names);
        IMPL_FLOATS.with(|p| *p.borrow_mut() = float_params(generics));
        ImplParams
    }
}

impl Drop for ImplParams {
    fn drop(&mut self) {
        IMPL_PARAMS.with(|p| p.borrow_mut().clear());
        IMPL_FLOATS.with(|p| p.borrow_mut().clear());
    }
}

fn expand_impl(cx: &Ctxt, mut item: ItemImpl) -> TokenStream {
    if let Some((_, path, _)) = &item.trait_ {
        cx.error_at(path, "#[differentiable] applies to inherent impls; put the differentiable methods in an `impl Type` block");
        return item.into_token_stream();
    }
    let _impl_params = ImplParams::enter(&item.generics);
    let mut extra = Vec::new();
    let mut module = false;
    let is_module = item
        .items
        .iter()
        .any(|it| matches!(it, ImplItem::Fn(m) if crate::module::is_module_call(&m.sig)));
    let self_ty = item.self_ty.clone();
    for it in item.items.iter_mut() {
        let ImplItem::Fn(m) = it else { continue };
        check_signature(cx, &m.sig);
        match m.sig.receiver() {
            Some(r) if r.reference.is_some() && r.mutability.is_none() => {}
            Some(r) => cx.error_at(r, "a #[differentiable] method takes `&self`"),
            None => {}
        }
        let params = params(cx, &mut m.sig);
        if cx.has_errors() {
            continue;
        }
        let scopes = crate::module::scope_names(&params);
        crate::module::route_module_calls(&scopes, &mut m.block);
        if crate::module::is_module_call(&m.sig) {
            module = true;
            extra.push(crate::module::module_items(cx, &self_ty, m, &params));
            continue;
        }
        for which in Companions::for_scope(!scopes.is_empty()) {
            if let Some(c) = companions(
                cx,
                &m.vis,
                &m.sig,
                &params,
                &m.block,
                if m.sig.receiver().is_some() {
                    Owner::Method
                } else {
                    Owner::Associated
                },
                *which,
            ) {
                extra.push(c);
            }
        }
        if is_module && !scopes.is_empty() {
            extra.push(crate::module::method_in_items(&m.sig, &params));
        }
    }
    if extra.is_empty() {
        return item.into_token_stream();
    }
    let child = module.then(|| crate::module::child_impl(&item));
    let (impl_generics, _, where_clause) = item.generics.split_for_impl();
    let self_ty = &item.self_ty;
    quote! {
        #item
        impl #impl_generics #self_ty #where_clause {
            #(#extra)*
        }
        #child
    }
}

// ----- grad!, value_and_grad!, vjp! -----

/// Which transform a macro call asks for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    Grad,
    ValueAndGrad,
    Vjp,
    Jvp,
}

/// `hvp!(f)`, `jacfwd!(f)`, `jacrev!(f)`, `hessian!(f)`: the companion of that name,
/// which `#[differentiable(jvp)]` writes.
pub fn jacobian_transform(which: &str, input: TokenStream) -> TokenStream {
    match syn::parse2::<syn::Path>(input.clone()) {
        Ok(path) => crate::adjoint::companion_path(&path, which, false).into_token_stream(),
        Err(_) => syn::Error::new_spanned(
            input,
            format!("{which}! takes a function marked `#[differentiable(jvp)]`: `{which}!(f)`"),
        )
        .into_compile_error(),
    }
}

/// `grad!(f)`, `grad!(path::f)`, `grad!(|x, y| body, wrt = [x], has_aux)`, or the
/// lifted form inside a module: `grad!(cx, |mdl, cx, x| body, Module, x)`.
pub(crate) struct TransformInput {
    pub(crate) positional: Vec<syn::Expr>,
    pub(crate) wrt: Option<Vec<Ident>>,
    pub(crate) has_aux: bool,
    /// The collections a lifted `vjp!` returns cotangents for (Flax's `vjp_variables`).
    vjp_variables: Option<Vec<syn::LitStr>>,
    /// The collections visible inside a lifted transform (Flax's `variables`).
    variables: Option<Vec<syn::LitStr>>,
    /// The random streams that pass into a lifted transform (Flax's `rngs`).
    rngs: Option<Vec<syn::LitStr>>,
    /// Named axes of an enclosing `vmap!` over which cotangents of broadcast values
    /// are summed (`reduce_axes`).
    pub(crate) reduce_axes: Option<Vec<syn::LitStr>>,
}

impl TransformInput {
    /// No option was given: no `wrt`, `has_aux`, `vjp_variables`, `variables`, `rngs`.
    pub(crate) fn plain(&self) -> bool {
        !self.has_aux
            && self.reduce_axes.is_none()
            && self.wrt.is_none()
            && self.vjp_variables.is_none()
            && self.variables.is_none()
            && self.rngs.is_none()
    }
}

impl Parse for TransformInput {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let items: Punctuated<syn::Expr, Token![,]> = Punctuated::parse_terminated(input)?;
        let mut out = TransformInput {
            positional: Vec::new(),
            wrt: None,
            has_aux: false,
            vjp_variables: None,
            variables: None,
            rngs: None,
            reduce_axes: None,
        };
        for item in items {
            match &item {
                syn::Expr::Path(p) if p.path.is_ident("has_aux") => out.has_aux = true,
                syn::Expr::Assign(a) => {
                    let key = match &*a.left {
                        syn::Expr::Path(p) => p.path.get_ident().cloned(),
                        _ => None,
                    };
                    let Some(key) = key else {
                        return Err(syn::Error::new_spanned(
                            &a.left,
                            "expected an option name: `wrt` or `has_aux`",
                        ));
                    };
                    match key.to_string().as_str() {
                        "wrt" => {
                            let syn::Expr::Array(arr) = &*a.right else {
                                return Err(syn::Error::new_spanned(
                                    &a.right,
                                    "`wrt` takes a list of parameter names: `wrt = [x, y]`",
                                ));
                            };
                            let mut names = Vec::new();
                            for e in &arr.elems {
                                match e {
                                    syn::Expr::Path(p) if p.path.get_ident().is_some() => {
                                        names.push(p.path.get_ident().cloned().expect("checked"))
                                    }
                                    other => {
                                        return Err(syn::Error::new_spanned(
                                            other,
                                            "`wrt` takes parameter names",
                                        ));
                                    }
                                }
                            }
                            out.wrt = Some(names);
                        }
                        "vjp_variables" | "variables" | "rngs" | "reduce_axes" => {
                            let items: Vec<syn::Expr> = match &*a.right {
                                syn::Expr::Array(arr) => arr.elems.iter().cloned().collect(),
                                other => vec![other.clone()],
                            };
                            let mut names = Vec::new();
                            for e in items {
                                match e {
                                    syn::Expr::Lit(syn::ExprLit {
                                        lit: syn::Lit::Str(s),
                                        ..
                                    }) => names.push(s),
                                    other => {
                                        return Err(syn::Error::new_spanned(
                                            other,
                                            format!("`{key}` takes names: `{key} = [\"params\"]`"),
                                        ));
                                    }
                                }
                            }
                            match key.to_string().as_str() {
                                "vjp_variables" => out.vjp_variables = Some(names),
                                "variables" => out.variables = Some(names),
                                "reduce_axes" => out.reduce_axes = Some(names),
                                _ => out.rngs = Some(names),
                            }
                        }
                        "has_aux" => match &*a.right {
                            syn::Expr::Lit(syn::ExprLit {
                                lit: syn::Lit::Bool(b),
                                ..
                            }) => out.has_aux = b.value,
                            other => {
                                return Err(syn::Error::new_spanned(
                                    other,
                                    "`has_aux` takes `true` or `false`",
                                ));
                            }
                        },
                        other => {
                            return Err(syn::Error::new(
                                key.span(),
                                format!(
                                    "unknown option `{other}`: expected `wrt = [..]`, `has_aux`, `reduce_axes = [..]`, or in a module `variables`, `rngs`, `vjp_variables`"
                                ),
                            ));
                        }
                    }
                }
                _ => out.positional.push(item),
            }
        }
        if out.positional.is_empty() {
            return Err(input.error(
                "expected a function path, a closure, or `cx, |mdl, cx, ..| .., Module, args..`",
            ));
        }
        Ok(out)
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
        crate::adjoint::companion_path(&p.path, "jvp", false).into_token_stream()
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
                    crate::adjoint::companion_path(&p.path, what, false).into_token_stream()
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
fn lifted_transform(cx: &Ctxt, which: Transform, input: &TransformInput) -> TokenStream {
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
        quote! {
            #reduce_check
            #primal
            let #out = #output;
            let __pb = move |__ct| {
                let (__vars_bar, _, _, #(#grads,)*) = { #reverse };
                (#vars_out, #(#grads,)*)
            };
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
    let option = |names: &Option<Vec<syn::LitStr>>| match names {
        Some(n) => quote!(::core::option::Option::Some(&[#(#n),*][..])),
        None => quote!(::core::option::Option::None),
    };
    let (visible, rngs) = (option(&input.variables), option(&input.rngs));
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
        crate::module::route_module_calls(&scopes, &mut body);
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
    let field = match module {
        syn::Expr::Field(f) => match (&*f.base, &f.member) {
            (syn::Expr::Path(p), syn::Member::Named(n)) if p.path.is_ident("self") => {
                let lit = syn::LitStr::new(&n.to_string(), n.span());
                quote!(::core::option::Option::Some(#lit))
            }
            _ => quote!(::core::option::Option::None),
        },
        _ => quote!(::core::option::Option::None),
    };
    (
        quote! {
            let __module = &(#module);
            #cxn.enter_child(::adjoint::scope::Child::child_name(__module, #field));
            let #mdl = ::adjoint::scope::Here(::adjoint::scope::Child::module(__module));
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
/// running their own forward mode (`__call_tjvp`).
fn lifted_jvp(cx: &Ctxt, input: &TransformInput) -> TokenStream {
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
    let Some(jvp) = crate::tangent::jvp_body(
        &func,
        &|v| act.varied(v),
        &refs,
        crate::tangent::Mode::Variables,
    ) else {
        cx.error_at(
            &c.body,
            "jvp!: forward mode covers module calls, branches, loops, arithmetic, elementwise maths, reductions, products and layers' rules so far; not yet `mapv` closures or calls to other functions",
        );
        return TokenStream::new();
    };
    let (mdl, cxn) = (&names[0], &names[1]);
    let primals = &names[2..];
    let dots: Vec<Ident> = primals.iter().map(crate::tangent::dot_name).collect();
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

fn closure_transform(
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
