//! Modules: what `#[differentiable]` adds to an impl whose `call` takes a scope
//! (`fn call(&self, cx: &mut Scope, ..)`), as Flax's linen modules.
//!
//! `call` runs in the module's own child scope (`TypeName_k`, or the field's name for
//! a submodule held in a field), the body moves to `__call_body`, and the module
//! gets `init`, `apply` and `apply_with`, plus the companions the transforms call.

pub(crate) mod forward;
mod vjpx;

use crate::ctxt::Ctxt;
use crate::expand::companions::{Companions, Flavor, Owner, companion_items, companions};
use crate::parse::signature::{ParamInfo, param_name};
use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::visit_mut::VisitMut;
use syn::{FnArg, ImplItemFn, ReturnType, Signature, Type};

/// Whether `sig` is a module's `call`: named `call`, with a `Scope` parameter.
pub fn is_module_call(sig: &Signature) -> bool {
    sig.ident == "call"
        && sig
            .inputs
            .iter()
            .any(|a| matches!(a, FnArg::Typed(t) if crate::parse::signature::mentions_scope(&t.ty)))
}

/// The module's items; `m` (the user's `call`) becomes the wrapper that enters the
/// module's scope.
pub fn module_items(
    cx: &Ctxt,
    self_ty: &Type,
    m: &mut ImplItemFn,
    params: &[ParamInfo],
    calls: bool,
) -> TokenStream {
    let Some(type_name) = type_name(self_ty) else {
        cx.error_at(self_ty, "a module must be a named type");
        return TokenStream::new();
    };
    let scope_pos = params
        .iter()
        .position(|p| crate::parse::signature::mentions_scope(&p.ty));
    let Some(scope_pos) = scope_pos else {
        return TokenStream::new();
    };
    if scope_pos != 0 {
        cx.error_at(
            &m.sig.inputs,
            "a module's `call` takes the scope first: `fn call(&self, cx: &mut Scope, ..)`",
        );
        return TokenStream::new();
    }
    let ReturnType::Type(_, ret) = &m.sig.output else {
        return TokenStream::new();
    };
    let ret = ret.clone();

    let body = m.block.clone();
    // The inputs `init`, `apply` and `apply_with` add, apart from the user's.
    let (variables, seed, options) = (
        crate::hygiene::generated("variables"),
        crate::hygiene::generated("seed"),
        crate::hygiene::generated("options"),
    );

    let names: Vec<TokenStream> = params.iter().map(|p| param_name(&p.pat)).collect();
    let scope = &names[0];
    let inputs: Vec<TokenStream> = params.iter().map(ParamInfo::input).collect();
    let rest_inputs = &inputs[1..];
    let rest = &names[1..];
    let vis = &m.vis;

    let mut body_sig = m.sig.clone();
    body_sig.ident = format_ident!("__call_body");
    let public: syn::Visibility = syn::parse_quote!(pub);
    // Two flavors of the body's vjp: parameters constant (inside `grad!`), and
    // parameters differentiated (their cotangents returned as `Variables`).
    let Some(body_inputs_vjp) = companions(
        cx,
        &public,
        &body_sig,
        params,
        &body,
        Owner::Method,
        Companions::Owned,
        calls,
    ) else {
        return TokenStream::new();
    };
    let Some(body_params_vjp) = companions(
        cx,
        &public,
        &body_sig,
        params,
        &body,
        Owner::Method,
        Companions::Params,
        calls,
    ) else {
        return TokenStream::new();
    };
    let body_ident = format_ident!("__call_body");
    let (body_vjp, body_vjp_params) = (
        crate::names::companion_ident(&body_ident, "vjp_owned"),
        crate::names::companion_ident(&body_ident, "vjp_params"),
    );

    // `call` itself: the body in the module's auto-named child scope. A module run
    // only through lifted transforms never has `call` itself called (their generated
    // code runs the companions): not dead code to its author.
    m.attrs.push(syn::parse_quote!(#[allow(dead_code)]));
    m.block = syn::parse_quote!({
        #scope.enter_auto(#type_name);
        let __out = self.__call_body(#(#names),*);
        #scope.exit();
        __out
    });

    let mut wrappers = TokenStream::new();
    for (flavor, companion) in [
        (Flavor::Owned, &body_vjp),
        (Flavor::Params, &body_vjp_params),
    ] {
        wrappers.extend(scope_wrappers(
            &m.sig,
            params,
            &type_name,
            companion,
            flavor,
            Owner::Method,
        ));
    }

    // Forward mode, along the inputs and along the variables, with its VJPs.
    let forward_items = forward::forward_items(&m.sig, params, &body, &ret, &type_name, calls);

    // The input gradient, with its VJP (second order through a lifted `grad!`).
    let vjpx_items = vjpx::vjpx_items(&m.sig, params, &body, &ret, &type_name);

    // `apply` and `apply_with` inside transforms, and `apply` in forward mode.
    let apply_items =
        super::apply::apply_items(&m.sig, params, &ret, &variables, &options, &body_vjp_params);

    let body_block = &body;
    let generics = &m.sig.generics;
    let where_clause = &m.sig.generics.where_clause;
    let body_inputs = &m.sig.inputs;
    quote! {
        #[doc(hidden)]
        #[allow(clippy::all)]
        pub fn __call_body #generics (#body_inputs) -> #ret #where_clause #body_block

        #[allow(clippy::too_many_arguments)]
        #[doc(hidden)]
        pub fn __call_in #generics (&self, #scope: &mut ::adjoint::Scope, __child: ::adjoint::scope::ChildName<'_>, #(#rest_inputs),*) -> #ret #where_clause {
            #scope.enter_child(__child);
            let __out = self.__call_body(#(#names),*);
            #scope.exit();
            __out
        }

        #body_inputs_vjp
        #body_params_vjp
        #forward_items
        #vjpx_items
        #wrappers
        #apply_items

        /// Creates the module's variables by running it once on example inputs, as
        /// Flax's `Module.init`: parameters from their initializers (random streams
        /// derived from `seed`), every collection writable.
        #[allow(clippy::too_many_arguments)]
        #vis fn init #generics (&self, #seed: u64, #(#rest_inputs),*) -> ::core::result::Result<::adjoint::Variables, ::adjoint::ScopeError> #where_clause {
            let mut __vars = ::adjoint::Variables::new();
            let mut __cx = ::adjoint::Scope::for_init(&mut __vars, #seed);
            let _ = self.__call_body(&mut __cx, #(#rest),*);
            __cx.finish()?;
            ::core::result::Result::Ok(__vars)
        }

        /// Runs the module on `variables`, as Flax's `Module.apply`: nothing is
        /// written and no random stream is available.
        #[allow(clippy::too_many_arguments)]
        #vis fn apply #generics (&self, #variables: &::adjoint::Variables, #(#rest_inputs),*) -> ::core::result::Result<#ret, ::adjoint::ScopeError> #where_clause {
            // Leaves are shared arrays: this clone copies no parameter data.
            let mut __vars = #variables.clone();
            let mut __cx = ::adjoint::Scope::for_apply(&mut __vars, ::adjoint::scope::Mutable::Only(::core::default::Default::default()), ::core::default::Default::default());
            let __out = self.__call_body(&mut __cx, #(#rest),*);
            __cx.finish()?;
            ::core::result::Result::Ok(__out)
        }

        /// Runs the module with writable collections and random streams, returning the
        /// output and the mutable collections after the run (Flax's
        /// `apply(.., mutable=[..], rngs={..})`).
        #[allow(clippy::too_many_arguments)]
        #vis fn apply_with #generics (&self, #variables: &::adjoint::Variables, #options: &::adjoint::scope::ApplyOptions, #(#rest_inputs),*) -> ::core::result::Result<(#ret, ::adjoint::Variables), ::adjoint::ScopeError> #where_clause {
            let mut __vars = #variables.clone();
            let mut __cx = ::adjoint::Scope::for_apply(&mut __vars, #options.mutability(), #options.rng_seeds());
            let __out = self.__call_body(&mut __cx, #(#rest),*);
            __cx.finish()?;
            let __mutated = #options.mutated(&__vars);
            ::core::result::Result::Ok((__out, __mutated))
        }
    }
}

/// The companions of `call` and `__call_in` of the given flavor, around the body's
/// companion `inner`: `call` runs it in the module's next auto-named scope,
/// `__call_in(cx, child, ..)` in the scope `child` names (see [`ModuleCalls`]).
/// `sig` and `params` are `call`'s (or its JVP's), whose name is replaced.
fn scope_wrappers(
    sig: &Signature,
    params: &[ParamInfo],
    type_name: &str,
    inner: &syn::Ident,
    flavor: Flavor,
    owner: Owner,
) -> TokenStream {
    let public: syn::Visibility = syn::parse_quote!(pub);
    let names: Vec<TokenStream> = params.iter().map(|p| param_name(&p.pat)).collect();
    let scope = &names[0];
    // `call`'s own name stays; a JVP's wrappers are named after it (`__call_jvp`).
    let suffix = sig
        .ident
        .to_string()
        .strip_prefix("__call_body")
        .map(str::to_string);
    let mut auto_sig = sig.clone();
    let named = match &suffix {
        Some(suffix) => {
            auto_sig.ident = format_ident!("__call{}", suffix);
            format_ident!("__call_in{}", suffix)
        }
        None => format_ident!("__call_in"),
    };
    let mut out = companion_items(
        &public,
        &auto_sig,
        params,
        quote! {
            #scope.enter_auto(#type_name);
            let __out = self.#inner(#(#names),*);
            #scope.exit();
            __out
        },
        owner,
        flavor,
    );
    out.extend(named_scope_wrapper(
        sig, params, &named, inner, flavor, owner,
    ));
    out
}

/// The companion of flavor `flavor` of `named(cx, child, ..)`, which runs the
/// companion `inner` of the method `sig` in the scope `child` names.
fn named_scope_wrapper(
    sig: &Signature,
    params: &[ParamInfo],
    named: &syn::Ident,
    inner: &syn::Ident,
    flavor: Flavor,
    owner: Owner,
) -> TokenStream {
    let public: syn::Visibility = syn::parse_quote!(pub);
    let names: Vec<TokenStream> = params.iter().map(|p| param_name(&p.pat)).collect();
    let scope = &names[0];
    let mut named_sig = sig.clone();
    named_sig.ident = named.clone();
    named_sig.inputs.insert(
        2,
        syn::parse_quote!(__child: ::adjoint::scope::ChildName<'_>),
    );
    let mut named_params: Vec<ParamInfo> = params.to_vec();
    named_params.insert(
        1,
        ParamInfo {
            pat: syn::parse_quote!(__child),
            ty: syn::parse_quote!(::adjoint::scope::ChildName<'_>),
            active: false,
            scope: false,
        },
    );
    // The body's pullback, with a `()` cotangent for the child's name.
    let cs: Vec<proc_macro2::Ident> = (0..names.len())
        .map(|i| format_ident!("__c{}", i))
        .collect();
    let (first, others) = (&cs[0], &cs[1..]);
    let vars = (flavor == Flavor::Params).then(|| quote!(__v,));
    companion_items(
        &public,
        &named_sig,
        &named_params,
        quote! {
            #scope.enter_child(__child);
            let (__out, __pb) = self.#inner(#(#names),*);
            #scope.exit();
            (__out, move |__ct| {
                let (#vars #(#cs,)*) = __pb(__ct);
                (#vars #first, (), #(#others,)*)
            })
        },
        owner,
        flavor,
    )
}

/// For a module's method `m` that takes the scope (other than `call`):
/// `__m_in(cx, child, ..)`, which runs `m` in the scope `child` names (a submodule's
/// method runs in the submodule's scope, as in Flax), and its companions.
pub fn method_in_items(sig: &Signature, params: &[ParamInfo]) -> TokenStream {
    let Some(scope_pos) = params.iter().position(|p| p.scope) else {
        return TokenStream::new();
    };
    let ReturnType::Type(_, ret) = &sig.output else {
        return TokenStream::new();
    };
    if scope_pos != 0 || sig.receiver().is_none() {
        return TokenStream::new();
    }
    let m = &sig.ident;
    let named = in_name(m);
    let names: Vec<TokenStream> = params.iter().map(|p| param_name(&p.pat)).collect();
    let scope = &names[0];
    let inputs: Vec<TokenStream> = params.iter().map(ParamInfo::input).collect();
    let rest_inputs = &inputs[1..];
    let generics = &sig.generics;
    let where_clause = &sig.generics.where_clause;
    let mut out = quote! {
        #[allow(clippy::too_many_arguments)]
        #[doc(hidden)]
        pub fn #named #generics (&self, #scope: &mut ::adjoint::Scope, __child: ::adjoint::scope::ChildName<'_>, #(#rest_inputs),*) -> #ret #where_clause {
            #scope.enter_child(__child);
            let __out = self.#m(#(#names),*);
            #scope.exit();
            __out
        }
    };
    for (flavor, what) in [(Flavor::Owned, "vjp_owned"), (Flavor::Params, "vjp_params")] {
        let inner = crate::names::companion_ident(m, what);
        out.extend(named_scope_wrapper(
            sig,
            params,
            &named,
            &inner,
            flavor,
            Owner::Method,
        ));
    }
    out
}

/// The method that runs `m` in a child's scope: `__m_in`.
pub(crate) fn in_name(m: &syn::Ident) -> syn::Ident {
    let raw = m.to_string();
    format_ident!("__{}_in", raw.trim_start_matches("r#"))
}

/// The name auto names start with: the type's last path segment (`Dense`).
fn type_name(self_ty: &Type) -> Option<String> {
    match self_ty {
        Type::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
        _ => None,
    }
}

/// `impl Child for Module`: called from a field, a module runs in the scope named
/// by the field; from anywhere else, in the next auto name of its type.
pub fn child_impl(item: &syn::ItemImpl) -> TokenStream {
    let Some(type_name) = type_name(&item.self_ty) else {
        return TokenStream::new();
    };
    let (impl_generics, _, where_clause) = item.generics.split_for_impl();
    let self_ty = &item.self_ty;
    quote! {
        impl #impl_generics ::adjoint::scope::Child for #self_ty #where_clause {
            type Module = Self;
            fn module(&self) -> &Self {
                self
            }
            fn child_name<'__a>(
                &'__a self,
                field: ::core::option::Option<&'__a str>,
            ) -> ::adjoint::scope::ChildName<'__a> {
                match field {
                    ::core::option::Option::Some(f) => ::adjoint::scope::ChildName::Field(f),
                    ::core::option::Option::None => ::adjoint::scope::ChildName::Auto(#type_name),
                }
            }
        }

        impl #impl_generics ::adjoint::scope::IntoBound for #self_ty #where_clause {
            type Module = Self;
            fn into_bound(self, cx: &mut ::adjoint::Scope<'_>) -> ::adjoint::scope::Bound<Self> {
                cx.bind(self)
            }
        }
    }
}

/// Routes the module calls of a body as Flax names modules: see [`ModuleCalls`] and
/// [`LocalModules`].
pub(crate) fn route_module_calls(scopes: &[String], block: &mut syn::Block) {
    let Some(scope) = scopes.first() else { return };
    let mut receivers = Receivers {
        scopes,
        names: Vec::new(),
    };
    syn::visit::Visit::visit_block(&mut receivers, block);
    if !receivers.names.is_empty() {
        let scope = syn::Ident::new(scope, proc_macro2::Span::call_site());
        LocalModules {
            scope: &scope,
            names: &receivers.names,
        }
        .visit_block_mut(block);
    }
    ModuleCalls {
        scopes,
        elements: Vec::new(),
    }
    .visit_block_mut(block);
}

/// Whether `args` starts with one of the scope parameters (a module call's `cx`).
fn takes_scope(
    args: &syn::punctuated::Punctuated<syn::Expr, syn::Token![,]>,
    scopes: &[String],
) -> bool {
    matches!(args.first(), Some(syn::Expr::Path(p))
        if p.path.get_ident().is_some_and(|i| scopes.iter().any(|s| i == s)))
}

/// The local variables a body calls as modules: `name.call(cx, ..)`, or the module
/// of a lifted transform (`grad!(cx, |mdl, cx, x| .., name, x)`).
struct Receivers<'a> {
    scopes: &'a [String],
    names: Vec<String>,
}

impl<'ast> syn::visit::Visit<'ast> for Receivers<'_> {
    fn visit_expr_method_call(&mut self, m: &'ast syn::ExprMethodCall) {
        // (A generated companion's call, `__call_in_jvp`, was routed already: code
        // written from a routed body, as a `vmap!`'s closure's forward mode, is
        // routed again.)
        if takes_scope(&m.args, self.scopes)
            && !m.method.to_string().starts_with("__")
            && let syn::Expr::Path(p) = &*m.receiver
            && let Some(id) = p.path.get_ident()
            && id != "self"
        {
            self.names.push(id.to_string());
        }
        syn::visit::visit_expr_method_call(self, m);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        let lifted = crate::parse::transform::LIFTED
            .iter()
            .any(|n| m.path.is_ident(n));
        let args = m.parse_body_with(
            syn::punctuated::Punctuated::<syn::Expr, syn::Token![,]>::parse_terminated,
        );
        if let (true, Ok(args)) = (lifted, args)
            && takes_scope(&args, self.scopes)
            && let Some(syn::Expr::Path(p)) = args.iter().nth(2)
            && let Some(id) = p.path.get_ident()
            && id != "self"
        {
            self.names.push(id.to_string());
        }
    }

    // A closure or item inside the body has its own scopes.
    fn visit_item(&mut self, _: &'ast syn::Item) {}
}

/// Binds the modules a body makes with `let` and calls with the scope where they
/// are made: `let cell = LstmCell::new(8);` becomes `let cell =
/// cx.bind_local(LstmCell::new(8));`, so the cell is named once (Flax names a
/// submodule at construction) and every call of it reads the same parameters, in a
/// loop too. A module made in a loop's body is made, and named, once per iteration,
/// as in Flax.
struct LocalModules<'a> {
    scope: &'a syn::Ident,
    names: &'a [String],
}

impl VisitMut for LocalModules<'_> {
    fn visit_local_mut(&mut self, local: &mut syn::Local) {
        syn::visit_mut::visit_local_mut(self, local);
        let (ident, ty) = match &local.pat {
            syn::Pat::Ident(p) => (&p.ident, None),
            syn::Pat::Type(t) => match &*t.pat {
                syn::Pat::Ident(p) => (&p.ident, Some((*t.ty).clone())),
                _ => return,
            },
            _ => return,
        };
        if !self.names.iter().any(|n| ident == n) {
            return;
        }
        let Some(init) = &mut local.init else { return };
        if init.diverge.is_some() {
            return;
        }
        let ident = ident.clone();
        let expr = &init.expr;
        let scope = self.scope;
        let ty = ty.as_ref().map(|t| quote!(: #t));
        // The module first: making it may use the scope too (`cx.bind(..)`).
        *init.expr = syn::parse_quote_spanned!(expr.span()=> {
            let __module #ty = #expr;
            #scope.bind_local(__module)
        });
        local.pat = syn::parse_quote!(#ident);
    }

    fn visit_item_mut(&mut self, _: &mut syn::Item) {}
}

/// Routes the module calls of a body through [`Child`](adjoint::scope::Child), so
/// each runs in the scope its receiver names: `recv.call(cx, ..)` with `cx` a scope
/// becomes
/// `Child::module(&recv).__call_in(cx, Child::child_name(&recv, field), ..)`, where
/// `field` is `Some("bar")` for `self.bar` (Flax's setup attributes) and `None`
/// otherwise (the next auto name, a bound module's path, or for a lifted transform's
/// module the scope the transform entered). `self.call(cx, ..)` from another method
/// runs in the module's own scope. Receivers that are neither a field of `self` nor
/// a local keep their `call` (an auto name).
struct ModuleCalls<'a> {
    /// The names of the scope parameters.
    scopes: &'a [String],
    /// The loops over a field of modules being visited: the loop variable, the
    /// field's name and the element's index (see `visit_expr_for_loop_mut`).
    elements: Vec<(String, syn::LitStr, TokenStream)>,
}

impl VisitMut for ModuleCalls<'_> {
    fn visit_expr_mut(&mut self, e: &mut syn::Expr) {
        syn::visit_mut::visit_expr_mut(self, e);
        let syn::Expr::MethodCall(m) = e else { return };
        // A generated companion's call was routed already (see `Receivers`).
        if !takes_scope(&m.args, self.scopes) || m.method.to_string().starts_with("__") {
            return;
        }
        let recv = &*m.receiver;
        let span = m.method.span();
        let is_call = m.method == "call";
        let named = if is_call {
            format_ident!("__call_in", span = span)
        } else {
            let mut n = in_name(&m.method);
            n.set_span(span);
            n
        };
        let mut args = m.args.iter();
        let scope = args.next();
        let rest: Vec<&syn::Expr> = args.collect();
        if matches!(recv, syn::Expr::Path(p) if p.path.is_ident("self")) {
            // Another method of this module: its own scope (another than `call`
            // already runs there).
            if is_call {
                *e = syn::parse_quote_spanned!(span=>
                    self.__call_in(#scope, ::adjoint::no_grad(::adjoint::scope::ChildName::Here), #(#rest),*)
                );
            }
            return;
        }
        // An element of a field holding modules, by index or as a loop over the
        // field goes: `layers_i`, as Flax names a list attribute's.
        let element = match recv {
            syn::Expr::Index(ix) => self_field(&ix.expr).map(|f| {
                let i = &ix.index;
                (f, quote!((#i) as usize))
            }),
            syn::Expr::Path(p) => p.path.get_ident().and_then(|id| {
                let id = id.to_string();
                self.elements
                    .iter()
                    .rev()
                    .find(|(v, _, _)| *v == id)
                    .map(|(_, f, i)| (f.clone(), i.clone()))
            }),
            _ => None,
        };
        if let Some((f, i)) = element {
            *e = syn::parse_quote_spanned!(span=>
                ::adjoint::scope::Child::module(&#recv).#named(
                    #scope,
                    ::adjoint::no_grad(::adjoint::scope::Child::element_name(&#recv, #f, #i)),
                    #(#rest),*
                )
            );
            return;
        }
        let field = match recv {
            syn::Expr::Field(f) if matches!(&*f.base, syn::Expr::Path(p) if p.path.is_ident("self")) =>
            {
                // A tuple field (`self.0`) is left as written.
                let Some(lit) = self_field(recv) else { return };
                quote!(::core::option::Option::Some(#lit))
            }
            syn::Expr::Path(p) if p.path.get_ident().is_some() => {
                quote!(::core::option::Option::None)
            }
            // A module made where it is called, `Dense::new(3).call(cx, x)`: named
            // before its arguments run, as Flax names it at construction.
            _ => {
                *e = syn::parse_quote_spanned!(span=> {
                    let __module = #scope.bind_local(#recv);
                    ::adjoint::scope::Child::module(&__module).#named(
                        #scope,
                        ::adjoint::no_grad(::adjoint::scope::Child::child_name(&__module, ::core::option::Option::None)),
                        #(#rest),*
                    )
                });
                return;
            }
        };
        *e = syn::parse_quote_spanned!(span=>
            ::adjoint::scope::Child::module(&#recv).#named(
                #scope,
                ::adjoint::no_grad(::adjoint::scope::Child::child_name(&#recv, #field)),
                #(#rest),*
            )
        );
    }

    /// `for layer in self.layers.iter()` (or `&self.layers`, or `for (i, layer) in
    /// self.layers.iter().enumerate()`): calls of `layer` in the body are element
    /// `i` of the field, counted by `enumerate` (added where the loop has none).
    fn visit_expr_for_loop_mut(&mut self, f: &mut syn::ExprForLoop) {
        let found = match (&*f.pat, over_field(&f.expr)) {
            (syn::Pat::Ident(v), Some((field, false))) => {
                // One counter per enclosing loop: an outer loop's element may be
                // called inside an inner one.
                let counter = format_ident!("__element{}", self.elements.len());
                let v = v.ident.clone();
                let iter = &f.expr;
                *f.pat = syn::parse_quote!((#counter, #v));
                *f.expr =
                    syn::parse_quote!(::core::iter::IntoIterator::into_iter(#iter).enumerate());
                Some((v.to_string(), field, quote!(#counter)))
            }
            (syn::Pat::Tuple(t), Some((field, true))) if t.elems.len() == 2 => {
                match (&t.elems[0], &t.elems[1]) {
                    (syn::Pat::Ident(i), syn::Pat::Ident(v)) => {
                        let i = &i.ident;
                        Some((v.ident.to_string(), field, quote!(#i)))
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        let pushed = found.is_some();
        if let Some(element) = found {
            self.elements.push(element);
        }
        syn::visit_mut::visit_expr_for_loop_mut(self, f);
        if pushed {
            self.elements.pop();
        }
    }

    // A closure or item inside the body has its own scopes.
    fn visit_item_mut(&mut self, _: &mut syn::Item) {}
}

/// `self.name`: the field's name as a literal.
pub(crate) fn self_field(e: &syn::Expr) -> Option<syn::LitStr> {
    match e {
        syn::Expr::Field(f) if matches!(&*f.base, syn::Expr::Path(p) if p.path.is_ident("self")) => {
            match &f.member {
                syn::Member::Named(n) => Some(syn::LitStr::new(&n.to_string(), n.span())),
                syn::Member::Unnamed(_) => None,
            }
        }
        _ => None,
    }
}

/// A loop's iterable over a field of `self`: `self.f.iter()` or `&self.f` (false),
/// `self.f.iter().enumerate()` (true), with the field's name.
fn over_field(e: &syn::Expr) -> Option<(syn::LitStr, bool)> {
    match e {
        syn::Expr::Reference(r) => self_field(&r.expr).map(|f| (f, false)),
        syn::Expr::MethodCall(m) if m.method == "iter" && m.args.is_empty() => {
            self_field(&m.receiver).map(|f| (f, false))
        }
        syn::Expr::MethodCall(m) if m.method == "enumerate" && m.args.is_empty() => {
            over_field(&m.receiver)
                .filter(|(_, e)| !e)
                .map(|(f, _)| (f, true))
        }
        _ => None,
    }
}

/// The names of the scope parameters (`cx: &mut Scope`) of a signature.
pub(crate) fn scope_names(params: &[ParamInfo]) -> Vec<String> {
    params
        .iter()
        .filter(|p| p.scope)
        .map(|p| param_name(&p.pat).to_string())
        .collect()
}
