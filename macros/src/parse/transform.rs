//! The arguments of the transform macros: a function path, a closure with its
//! options (`wrt`, `has_aux`, `reduce_axes`), or the lifted form inside a module.

use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Ident, Token};

/// The transform macros that have a lifted form inside a module
/// (`name!(cx, |mdl, cx, ..| .., Module, ..)`).
pub(crate) const LIFTED: [&str; 9] = [
    "grad",
    "value_and_grad",
    "vjp",
    "jvp",
    "vmap",
    "jacfwd",
    "jacrev",
    "hvp",
    "hessian",
];

/// Which transform a macro call asks for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    Grad,
    ValueAndGrad,
    Vjp,
    Jvp,
}

/// `grad!(f)`, `grad!(path::f)`, `grad!(|x, y| body, wrt = [x], has_aux)`, or the
/// lifted form inside a module: `grad!(cx, |mdl, cx, x| body, Module, x)`.
pub(crate) struct TransformInput {
    pub(crate) positional: Vec<syn::Expr>,
    pub(crate) wrt: Option<Vec<Ident>>,
    pub(crate) has_aux: bool,
    /// The collections a lifted `vjp!` returns cotangents for (Flax's `vjp_variables`).
    pub(crate) vjp_variables: Option<Vec<syn::LitStr>>,
    /// The collections visible inside a lifted transform (Flax's `variables`).
    pub(crate) variables: Option<Vec<syn::LitStr>>,
    /// The random streams that pass into a lifted transform (Flax's `rngs`).
    pub(crate) rngs: Option<Vec<syn::LitStr>>,
    /// Named axes of an enclosing `vmap!` over which cotangents of broadcast values
    /// are summed (`reduce_axes`).
    pub(crate) reduce_axes: Option<Vec<syn::LitStr>>,
}

impl TransformInput {
    /// Only positional arguments, no option.
    pub(crate) fn positional(positional: Vec<syn::Expr>) -> Self {
        TransformInput {
            positional,
            wrt: None,
            has_aux: false,
            vjp_variables: None,
            variables: None,
            rngs: None,
            reduce_axes: None,
        }
    }

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

/// `variables = [..]` or `rngs = [..]` as an `Option<&[&str]>` expression (`None`:
/// everything passes), what `Scope::restrict` takes.
pub(crate) fn names_option(names: &Option<Vec<syn::LitStr>>) -> proc_macro2::TokenStream {
    match names {
        Some(n) => quote::quote!(::core::option::Option::Some(&[#(#n),*][..])),
        None => quote::quote!(::core::option::Option::None),
    }
}

impl Parse for TransformInput {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let items: Punctuated<syn::Expr, Token![,]> = Punctuated::parse_terminated(input)?;
        let mut out = TransformInput::positional(Vec::new());
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
