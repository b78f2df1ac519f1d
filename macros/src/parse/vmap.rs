//! The arguments of `vmap!`: the function (or, inside a module, the scope, a closure
//! and the module), its arguments, `in_axes` and `axis_name`.

use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Expr, Ident, Token};

/// `vmap!(f, in_axes = [None, 0], axis_name = "batch")`, or the lifted form
/// `vmap!(cx, |mdl, cx, x| .., Module, x, in_axes = [0])`.
pub(crate) struct VmapInput {
    pub(crate) positional: Vec<Expr>,
    /// `None` (broadcast) or the axis, as written (its span marks a wrong axis).
    pub(crate) in_axes: Vec<Option<syn::LitInt>>,
    pub(crate) axes_expr: Expr,
    pub(crate) axis_name: Option<syn::LitStr>,
}

impl Parse for VmapInput {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let items: Punctuated<Expr, Token![,]> = Punctuated::parse_terminated(input)?;
        let mut positional = Vec::new();
        let mut in_axes = None;
        let mut axis_name = None;
        for item in items {
            let Expr::Assign(a) = &item else {
                positional.push(item);
                continue;
            };
            let key = match &*a.left {
                Expr::Path(p) => p.path.get_ident().map(Ident::to_string),
                _ => None,
            };
            match key.as_deref() {
                Some("in_axes") => in_axes = Some(parse_axes(&a.right)?),
                Some("axis_name") => match &*a.right {
                    Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(s),
                        ..
                    }) => axis_name = Some(s.clone()),
                    other => {
                        return Err(syn::Error::new_spanned(
                            other,
                            "`axis_name` takes a name: `axis_name = \"batch\"`",
                        ));
                    }
                },
                _ => {
                    return Err(syn::Error::new_spanned(
                        &a.left,
                        "unknown option: expected `in_axes = [..]` or `axis_name = \"..\"`",
                    ));
                }
            }
        }
        let Some((in_axes, axes_expr)) = in_axes else {
            return Err(input.error("expected `in_axes = [..]`: `None` or an axis per argument"));
        };
        if positional.is_empty() {
            return Err(input.error("expected the function to map"));
        }
        Ok(VmapInput {
            positional,
            in_axes,
            axes_expr,
            axis_name,
        })
    }
}

fn parse_axes(e: &Expr) -> syn::Result<(Vec<Option<syn::LitInt>>, Expr)> {
    let Expr::Array(arr) = e else {
        return Err(syn::Error::new_spanned(
            e,
            "`in_axes` takes a list: `in_axes = [None, 0]`",
        ));
    };
    let mut axes = Vec::new();
    for e in &arr.elems {
        match e {
            Expr::Path(p) if p.path.is_ident("None") => axes.push(None),
            Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Int(i),
                ..
            }) => {
                i.base10_parse::<usize>()?;
                axes.push(Some(i.clone()));
            }
            other => {
                return Err(syn::Error::new_spanned(
                    other,
                    "each axis is `None` (broadcast) or an integer",
                ));
            }
        }
    }
    Ok((axes, e.clone()))
}
