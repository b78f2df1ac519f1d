//! A `#[differentiable]` function's signature: its parameters and which of them are
//! differentiated, and the types generated items spell from it (cotangent types,
//! lifetimes made explicit or `'static`).

use crate::ctxt::Ctxt;
use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident, quote};
use syn::spanned::Spanned;

/// A parameter to lower: its pattern and whether it is differentiated.
pub struct ParamSpec<'a> {
    pub pat: &'a Pat,
    pub active: bool,
    /// The module's scope (`cx: &mut Scope`).
    pub scope: bool,
    /// A float scalar (`f32`, `f64`, or a reference to one).
    pub scalar: bool,
    /// A reference (`&T`).
    pub reference: bool,
}
use syn::{FnArg, Ident, Pat, ReturnType, Signature, Type};

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
    /// Its type without references or borrowed lifetimes (see [`StaticLifetimes`]):
    /// what names its cotangent.
    pub(crate) fn owned_type(&self) -> Type {
        let mut ty = self.ty.clone();
        syn::visit_mut::VisitMut::visit_type_mut(&mut StaticLifetimes, &mut ty);
        ty
    }

    /// The type of its cotangent in a pullback's result: `()` where it is not
    /// differentiated.
    pub(crate) fn cot_or_unit(&self) -> TokenStream {
        if self.active {
            cot_type(&self.owned_type())
        } else {
            quote!(())
        }
    }

    /// `pat: ty`, as it stands in a signature.
    pub(crate) fn input(&self) -> TokenStream {
        let (pat, ty) = (&self.pat, &self.ty);
        quote!(#pat: #ty)
    }

    /// `pat: ty` as a parameter of a generated function that is differentiated again
    /// (a JVP): `#[no_grad]` kept where it was given, so that it stays constant.
    pub(crate) fn input_kept(&self) -> TokenStream {
        let (pat, ty) = (&self.pat, &self.ty);
        if self.active || self.scope {
            quote!(#pat: #ty)
        } else {
            quote!(#[no_grad] #pat: #ty)
        }
    }

    /// The name of its tangent in forward mode (`__d_x`).
    pub(crate) fn tangent_name(&self) -> Ident {
        let name =
            syn::parse2::<Ident>(param_name(&self.pat)).unwrap_or_else(|_| format_ident!("_"));
        crate::names::dot_name(&name)
    }

    /// Its tangent's parameter as a caller's forward mode passes it (`jvp_all`, a
    /// module's `__call_tjvp`): of its type where it is differentiated, else
    /// `NoTangent` (by reference for a reference), so that the caller need not know
    /// which are.
    pub(crate) fn tangent(&self) -> ParamInfo {
        let d = self.tangent_name();
        let ty: Type = match (self.active, &self.ty) {
            (true, ty) => ty.clone(),
            (false, Type::Reference(_)) => syn::parse_quote!(&::adjoint::NoTangent),
            (false, _) => syn::parse_quote!(::adjoint::NoTangent),
        };
        ParamInfo {
            pat: syn::parse_quote!(#d),
            ty,
            active: self.active,
            scope: false,
        }
    }

    /// It passed on once more, to a call that may be made again: a reference as it
    /// is, a value cloned.
    pub(crate) fn passed_again(&self) -> TokenStream {
        let n = param_name(&self.pat);
        if matches!(self.ty, Type::Reference(_)) {
            quote!(#n)
        } else {
            quote!(::core::clone::Clone::clone(&#n))
        }
    }

    /// A copy of it that a pullback keeps, so that the pullback borrows nothing
    /// from its caller: a reference's referent owned (`own`), an optional
    /// reference's likewise (a mask, `Option<&Array2<f64>>`), anything else cloned.
    pub(crate) fn kept(&self) -> TokenStream {
        let n = param_name(&self.pat);
        match keeping(&self.ty) {
            Keeping::Reference => quote!(::adjoint::__private::own(#n)),
            Keeping::OptionalReference => {
                quote!(::core::option::Option::map(#n, ::adjoint::__private::own))
            }
            Keeping::Clone => quote!(::core::clone::Clone::clone(&#n)),
        }
    }

    /// Its kept copy `k` (see [`ParamInfo::kept`]) passed as the parameter is.
    pub(crate) fn lent(&self, k: &Ident) -> TokenStream {
        match keeping(&self.ty) {
            Keeping::Reference => quote!(&#k),
            Keeping::OptionalReference => quote!(::core::option::Option::map(
                ::core::option::Option::as_ref(&#k),
                ::core::borrow::Borrow::borrow
            )),
            Keeping::Clone => quote!(::core::clone::Clone::clone(&#k)),
        }
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
pub(crate) fn float_params(generics: &syn::Generics) -> Vec<String> {
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
pub(crate) fn real_params(generics: &syn::Generics) -> Vec<String> {
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
pub(crate) fn differentiable_type(ty: &Type, generics: &[String]) -> bool {
    mentions_float(ty.to_token_stream(), generics)
}

/// Whether tokens name `f32`, `f64`, `Variables` or one of `generics`.
pub(crate) fn mentions_float(t: TokenStream, generics: &[String]) -> bool {
    t.into_iter().any(|tt| match tt {
        proc_macro2::TokenTree::Ident(i) => {
            let s = i.to_string();
            s == "f32" || s == "f64" || s == "Variables" || generics.contains(&s)
        }
        proc_macro2::TokenTree::Group(g) => mentions_float(g.stream(), generics),
        _ => false,
    })
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
pub(crate) fn borrows(ty: &Type) -> bool {
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

/// Whether a parameter type is `f32` or `f64`, or a reference to one.
pub(crate) fn is_float_scalar(ty: &Type) -> bool {
    match ty {
        Type::Reference(r) => is_float_scalar(&r.elem),
        Type::Path(p) => p.path.is_ident("f32") || p.path.is_ident("f64"),
        _ => false,
    }
}

/// Whether a parameter type borrows (`&T`, a view): the owning companion copies it.
/// How a pullback keeps a parameter of type `ty` (see [`ParamInfo::kept`]).
enum Keeping {
    Reference,
    OptionalReference,
    Clone,
}

fn keeping(ty: &Type) -> Keeping {
    match ty {
        Type::Reference(_) => Keeping::Reference,
        Type::Path(p) => {
            let Some(last) = p.path.segments.last() else {
                return Keeping::Clone;
            };
            let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
                return Keeping::Clone;
            };
            match args.args.first() {
                Some(syn::GenericArgument::Type(Type::Reference(_)))
                    if last.ident == "Option" && args.args.len() == 1 =>
                {
                    Keeping::OptionalReference
                }
                _ => Keeping::Clone,
            }
        }
        _ => Keeping::Clone,
    }
}

pub(crate) fn is_borrowed_type(ty: &Type) -> bool {
    match ty {
        Type::Reference(_) => true,
        Type::Path(p) => p.path.segments.last().is_some_and(|s| {
            let n = s.ident.to_string();
            n.starts_with("ArrayView") || n.starts_with("CowArray")
        }),
        _ => false,
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
    pub(crate) static IMPL_PARAMS: std::cell::RefCell<Vec<Ident>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The impl's float type parameters (`impl<A: Real> Embed<A>`): a method's
    /// argument mentioning one is differentiated.
    pub(crate) static IMPL_FLOATS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Sets [`IMPL_PARAMS`] and [`IMPL_FLOATS`] for the expansion of one impl, and
/// clears them after.
pub(crate) struct ImplParams;

impl ImplParams {
    pub(crate) fn enter(generics: &syn::Generics) -> Self {
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
