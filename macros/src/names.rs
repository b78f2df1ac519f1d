//! The names of the generated items: a function's companions (`f::vjp`, `f::grad`,
//! `f::jvp`, ..) and a method's (`Self::__f_vjp`), which every stage that writes or
//! calls one agrees on.

use syn::Ident;

/// The path of companion `what` (`vjp`, `vjp_owned`, `grad`, `jvp`, ..) of the
/// function at `f`: a free function's lives on the struct of its name
/// (`losses::xent::vjp_owned`), so that `use losses::xent;` brings it along; an
/// associated function's (`Self::f`, `Type::f`, or `assoc`) beside it
/// (`Self::__f_vjp_owned`). A turbofish moves to the companion.
pub fn companion_path(f: &syn::Path, what: &str, assoc: bool) -> syn::Path {
    let mut path = f.clone();
    let n = path.segments.len();
    let assoc = assoc
        || (n >= 2 && {
            let owner = path.segments[n - 2].ident.to_string();
            owner == "Self" || owner.starts_with(|c: char| c.is_ascii_uppercase())
        });
    let Some(last) = path.segments.last_mut() else {
        return path;
    };
    if assoc {
        last.ident = companion_ident(&last.ident, what);
        return path;
    }
    let arguments = std::mem::take(&mut last.arguments);
    let span = last.ident.span();
    path.segments.push(syn::PathSegment {
        ident: Ident::new(what, span),
        arguments,
    });
    path
}

/// The companion of `name`: `__name_vjp`, `__name_grad`, ...
pub fn companion_ident(name: &Ident, what: &str) -> Ident {
    let raw = name.to_string();
    let raw = raw.trim_start_matches("r#");
    Ident::new(&format!("__{raw}_{what}"), name.span())
}

/// The name of `x`'s tangent in forward mode.
pub fn dot_name(x: &Ident) -> Ident {
    quote::format_ident!("__d_{}", crate::hygiene::plain(x), span = x.span())
}

/// What a lifted `vmap!` in forward mode's output calls per example: a module body's
/// JVP, taken from its JVP-VJP (`____call_body_jvp_vjp_params`: a module's forward
/// mode exists only as that); lowering recognises the form
/// (`Child::module(&mdl).____call_body_jvp_vjp_params(&mut *cx, ..).0`).
pub fn child_jvp() -> Ident {
    companion_ident(&quote::format_ident!("__call_body_jvp"), "vjp_params")
}
