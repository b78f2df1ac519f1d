//! The last stage: the items `#[differentiable]` writes next to a function or an
//! impl, and what the transform macros expand to. `companions` writes a function's
//! reverse-mode companions (`f::vjp`, `f::grad`, ..), `jacobian` its forward-mode
//! ones (`f::jvp`, `f::hvp`, `f::jacfwd`, ..), `module` what a Flax-style module gets,
//! `transform` the transforms' closure and lifted forms (`rerun` the second-order
//! rerun of a lifted closure), `vmap` the vectorising map.

mod apply;
pub mod companions;
mod jacobian;
pub mod module;
mod rerun;
pub mod sequential;
pub mod transform;
pub mod vmap;

use self::companions::{Companions, Flavor, Owner, companion_items, companion_struct};
use self::jacobian::{custom_jvp_item, jvp_item, method_forward_items};
use crate::ctxt::Ctxt;
use crate::parse::signature::*;
use proc_macro2::TokenStream;
use quote::{ToTokens, quote};
use syn::parse::{Parse, ParseStream};
use syn::{Ident, ImplItem, Item, ItemFn, ItemImpl, ReturnType, Token};

/// `#[differentiable]` on a function or an inherent impl.
pub fn differentiable(attr: TokenStream, item: TokenStream) -> TokenStream {
    let cx = Ctxt::default();
    // `#[differentiable(jvp)]` also writes a function's forward-mode companions
    // (`f::jvp`, ..); on an impl, its methods' (`__m_jvp`), and a module's forward
    // mode (second order, `jvp!`) follows the calls in its body, whose callees must
    // then be `(jvp)` too. `jvp = 2` makes `f::jvp` itself `(jvp)`: third order.
    let depth = jvp_depth(&attr);
    if depth.is_none() {
        cx.error_at(
            &attr,
            "#[differentiable] takes no arguments, `jvp` for forward-mode companions, or `jvp = 2` for forward mode of those too (third order)",
        );
    }
    let depth = depth.unwrap_or(0);
    let jvp = depth > 0;
    let item: Item = match syn::parse2(item.clone()) {
        Ok(i) => i,
        Err(e) => return e.into_compile_error(),
    };
    let out = match item {
        Item::Fn(f) => expand_fn(&cx, f, depth),
        Item::Impl(i) => expand_impl(&cx, i, jvp),
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

/// How deep forward mode nests: `0` without arguments, `1` for `jvp`, `n` for
/// `jvp = n` (`None` for anything else).
fn jvp_depth(attr: &TokenStream) -> Option<u32> {
    if attr.is_empty() {
        return Some(0);
    }
    match syn::parse2::<syn::Expr>(attr.clone()).ok()? {
        syn::Expr::Path(p) if p.path.is_ident("jvp") => Some(1),
        syn::Expr::Assign(a) => {
            let key_ok = matches!(&*a.left, syn::Expr::Path(p) if p.path.is_ident("jvp"));
            let syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Int(n),
                ..
            }) = &*a.right
            else {
                return None;
            };
            let n: u32 = n.base10_parse().ok()?;
            (key_ok && (1..=2).contains(&n)).then_some(n)
        }
        _ => None,
    }
}

fn expand_fn(cx: &Ctxt, mut f: ItemFn, depth: u32) -> TokenStream {
    check_signature(cx, &f.sig);
    // A call `relu(..)` in a differentiated body is taken for adjoint's rule of that
    // name: a function of one's own so named would not be the one differentiated.
    let name = &f.sig.ident;
    if crate::ops::is_rule_name(&name.to_string()) {
        cx.error_at(
            name,
            format!("`{name}` is the name of adjoint's rule: a call `{name}(..)` in a differentiated body is taken for adjoint's, not this function; name it otherwise"),
        );
    }
    let params = params(cx, &mut f.sig);
    let scopes = crate::expand::module::scope_names(&params);
    crate::expand::module::route_module_calls(&scopes, &mut f.block);
    let mut items = TokenStream::new();
    for which in Companions::for_scope(!scopes.is_empty()) {
        if cx.has_errors() {
            break;
        }
        items.extend(companions::companions(
            cx,
            &f.vis,
            &f.sig,
            &params,
            &f.block,
            Owner::Function,
            *which,
            depth > 0,
        ));
    }
    let jvp = if depth > 0 && !cx.has_errors() {
        jvp_item(cx, &f, &params, depth)
    } else {
        None
    };
    let owner = companion_struct(&f.vis, &f.sig.ident);
    quote!(#f #owner #items #jvp)
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
    let owner_ident = f.sig.ident.clone();
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
            // What a caller's forward mode calls: a bound no tangent meets, whose
            // message says to give a forward rule.
            let vis = &f.vis;
            let inputs = params.iter().map(ParamInfo::input);
            let dts: Vec<Ident> = (0..params.len())
                .map(|i| quote::format_ident!("__T{}", i))
                .collect();
            let dns: Vec<Ident> = (0..params.len())
                .map(|i| quote::format_ident!("__t{}", i))
                .collect();
            let mut generics = f.sig.generics.clone();
            for t in &dts {
                generics
                    .params
                    .push(syn::parse_quote!(#t: ::adjoint::__private::OnlyVjp));
            }
            let where_clause = &generics.where_clause;
            out.extend(quote! {
                impl #owner_ident {
                    #[doc(hidden)]
                    #[allow(clippy::all, unused_variables)]
                    #vis fn jvp_all #generics (#(#inputs,)* #(#dns: #dts),*) -> (#ret, #ret_cot) #where_clause {
                        ::core::unreachable!("no tangent type implements OnlyVjp")
                    }
                }
            });
            out
        }
        _ => TokenStream::new(),
    };
    let errors = cx.into_compile_errors();
    let owner = companion_struct(&f.vis, &f.sig.ident);
    quote!(#f #owner #items #errors)
}

/// `#[custom_jvp(jvp = f_jvp)]`: the user's forward rule, like `jax.custom_jvp`.
/// `f_jvp` takes `f`'s arguments, then one tangent per differentiated argument (of
/// its type), and returns `(output, output tangent)`; it must be `#[differentiable]`
/// itself. Forward mode calls it; reverse mode transposes it (its VJP with respect
/// to the tangents), as JAX does, so `f`'s body is never differentiated.
pub fn custom_jvp(attr: TokenStream, item: TokenStream) -> TokenStream {
    let cx = Ctxt::default();
    let f: ItemFn = match syn::parse2(item) {
        Ok(f) => f,
        Err(e) => return e.into_compile_error(),
    };
    let rule = match syn::parse2::<CustomJvp>(attr) {
        Ok(r) => r.0,
        Err(e) => {
            cx.syn_error(e);
            let errors = cx.into_compile_errors();
            return quote!(#f #errors);
        }
    };
    check_signature(&cx, &f.sig);
    let mut f = f;
    let params = params(&cx, &mut f.sig);
    let mut items = TokenStream::new();
    if !cx.has_errors() {
        // Reverse mode transposes the rule, as JAX's does: the cotangent of each
        // argument is the cotangent of its tangent in the rule's VJP, seeded with the
        // output cotangent on the tangent output (the rule is linear in the tangents,
        // so zero tangents do).
        let body = transposed_rule(&f, &params, &rule);
        for flavor in [Flavor::Borrowing, Flavor::Owned] {
            items.extend(companion_items(
                &f.vis,
                &f.sig,
                &params,
                body.clone(),
                Owner::Function,
                flavor,
            ));
        }
        items.extend(custom_jvp_item(&f, &params, &rule));
    }
    let owner = companion_struct(&f.vis, &f.sig.ident);
    let errors = cx.into_compile_errors();
    quote!(#f #owner #items #errors)
}

/// The VJP body of a `#[custom_jvp]` function: its value, and a pullback that runs
/// the rule's own VJP with respect to the tangents.
fn transposed_rule(f: &ItemFn, params: &[ParamInfo], rule: &syn::Path) -> TokenStream {
    let name = &f.sig.ident;
    let ReturnType::Type(_, ret) = &f.sig.output else {
        return TokenStream::new();
    };
    let ret_cot = cot_type(ret);
    let reference = |p: &ParamInfo| matches!(p.ty, syn::Type::Reference(_));
    let owned: Vec<Ident> = (0..params.len())
        .map(|i| quote::format_ident!("__arg{}", i))
        .collect();
    // Owned copies of the arguments, which the pullback keeps.
    let copies = params.iter().map(ParamInfo::kept);
    let pass = params.iter().zip(&owned).map(|(p, o)| p.lent(o));
    let zeros = params
        .iter()
        .zip(&owned)
        .filter(|(p, _)| p.active)
        .map(|(p, o)| {
            if reference(p) {
                quote!(&::adjoint::__private::zeros(&#o))
            } else {
                quote!(::adjoint::__private::zeros(&#o))
            }
        });
    let n = params.len();
    let mut k = 0;
    let picks = params
        .iter()
        .map(|p| {
            if p.active {
                let at = syn::Index::from(n + k);
                k += 1;
                quote!(__cots.#at)
            } else {
                quote!(())
            }
        })
        .collect::<Vec<_>>();
    // Zero cotangents for a zero output cotangent (see `IsZero`).
    let zero_picks: Vec<TokenStream> = params
        .iter()
        .zip(&owned)
        .map(|(p, o)| {
            if p.active {
                quote!(::adjoint::__private::zeros(&#o))
            } else {
                quote!(())
            }
        })
        .collect();
    let rule_vjp = crate::names::companion_path(rule, "vjp_owned", false);
    let args_pass: Vec<TokenStream> = params.iter().map(ParamInfo::passed_again).collect();
    quote! {
        let __out = #name(#(#args_pass),*);
        let __seed = ::adjoint::__private::zeros(&__out);
        let (#(#owned,)*) = (#(#copies,)*);
        (__out, move |__ct: #ret_cot| {
            if ::adjoint::__private::IsZero::is_zero(&__ct) {
                return (#(#zero_picks,)*);
            }
            let (_, __pb) = #rule_vjp(#(#pass,)* #(#zeros),*);
            let __cots = __pb((__seed, __ct));
            (#(#picks,)*)
        })
    }
}

/// `jvp = path`, or the path alone.
struct CustomJvp(syn::Path);

impl Parse for CustomJvp {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        if input.is_empty() {
            return Err(
                input.error("#[custom_jvp] needs the forward rule: `#[custom_jvp(jvp = f_jvp)]`")
            );
        }
        if input.peek(Ident) && input.peek2(Token![=]) {
            let key: Ident = input.parse()?;
            if key != "jvp" {
                return Err(syn::Error::new(
                    key.span(),
                    format!("unknown key `{key}`: expected `jvp = ..`"),
                ));
            }
            input.parse::<Token![=]>()?;
        }
        let path: syn::Path = input.parse()?;
        if !input.is_empty() {
            return Err(input.error("#[custom_jvp] takes one rule: `#[custom_jvp(jvp = f_jvp)]`"));
        }
        Ok(CustomJvp(path))
    }
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

fn expand_impl(cx: &Ctxt, mut item: ItemImpl, jvp: bool) -> TokenStream {
    if let Some((_, path, _)) = &item.trait_ {
        cx.error_at(path, "#[differentiable] applies to inherent impls; put the differentiable methods in an `impl Type` block");
        return item.into_token_stream();
    }
    let _impl_params = ImplParams::enter(&item.generics);
    let original = item.clone();
    let mut extra = Vec::new();
    let mut forward = TokenStream::new();
    let mut module = false;
    let is_module = item
        .items
        .iter()
        .any(|it| matches!(it, ImplItem::Fn(m) if crate::expand::module::is_module_call(&m.sig)));
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
        let scopes = crate::expand::module::scope_names(&params);
        crate::expand::module::route_module_calls(&scopes, &mut m.block);
        if crate::expand::module::is_module_call(&m.sig) {
            module = true;
            extra.push(crate::expand::module::module_items(
                cx, &self_ty, m, &params, jvp,
            ));
            continue;
        }
        for which in Companions::for_scope(!scopes.is_empty()) {
            if let Some(c) = companions::companions(
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
                jvp,
            ) {
                extra.push(c);
            }
        }
        if is_module && !scopes.is_empty() {
            extra.push(crate::expand::module::method_in_items(&m.sig, &params));
        }
        // A method without a scope gets forward mode too: a `(jvp)` body calls it.
        if jvp && scopes.is_empty() && !cx.has_errors() {
            forward.extend(method_forward_items(cx, &original, m, &params));
        }
    }
    if extra.is_empty() {
        return quote!(#item #forward);
    }
    let child = module.then(|| crate::expand::module::child_impl(&item));
    let (impl_generics, _, where_clause) = item.generics.split_for_impl();
    let self_ty = &item.self_ty;
    quote! {
        #item
        impl #impl_generics #self_ty #where_clause {
            #(#extra)*
        }
        #child
        #forward
    }
}

// ----- grad!, value_and_grad!, vjp! -----
