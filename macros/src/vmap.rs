//! `vmap!`: the batching transform, as `jax.vmap`. `vmap!(f, in_axes = [None, 0])`
//! maps `f` over axis 0 of the arguments marked `0` (the others are broadcast) and
//! stacks the outputs along a new axis 0.

use crate::ctxt::Ctxt;
use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::parse::{Parse, ParseStream};
use syn::{Expr, Token};

struct VmapInput {
    f: Expr,
    in_axes: Vec<Option<usize>>,
    axes_expr: Expr,
}

impl Parse for VmapInput {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let f: Expr = input.parse()?;
        input.parse::<Token![,]>()?;
        let key: syn::Ident = input.parse()?;
        if key != "in_axes" {
            return Err(syn::Error::new(
                key.span(),
                "expected `in_axes = [..]`: `None` or an axis per argument",
            ));
        }
        input.parse::<Token![=]>()?;
        let axes_expr: Expr = input.parse()?;
        let _ = input.parse::<Option<Token![,]>>()?;
        let Expr::Array(arr) = &axes_expr else {
            return Err(syn::Error::new_spanned(
                &axes_expr,
                "`in_axes` takes a list: `in_axes = [None, 0]`",
            ));
        };
        let mut in_axes = Vec::new();
        for e in &arr.elems {
            match e {
                Expr::Path(p) if p.path.is_ident("None") => in_axes.push(None),
                Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Int(i),
                    ..
                }) => in_axes.push(Some(i.base10_parse()?)),
                other => {
                    return Err(syn::Error::new_spanned(
                        other,
                        "each axis is `None` (broadcast) or an integer",
                    ));
                }
            }
        }
        Ok(VmapInput {
            f,
            in_axes,
            axes_expr,
        })
    }
}

pub fn vmap(input: TokenStream) -> TokenStream {
    let input: VmapInput = match syn::parse2(input) {
        Ok(i) => i,
        Err(e) => return e.into_compile_error(),
    };
    let cx = Ctxt::default();
    if input.in_axes.iter().all(Option::is_none) {
        cx.error_at(
            &input.axes_expr,
            "`vmap!` needs at least one mapped argument (an integer axis in `in_axes`)",
        );
        return cx.into_compile_errors();
    }
    let f = &input.f;
    let args: Vec<proc_macro2::Ident> = (0..input.in_axes.len())
        .map(|i| format_ident!("__a{}", i))
        .collect();
    let lens = input
        .in_axes
        .iter()
        .zip(&args)
        .filter_map(|(ax, a)| ax.map(|k| quote!(::adjoint::__private::batch_len(&#a, #k))));
    let per_example = input.in_axes.iter().zip(&args).map(|(ax, a)| match ax {
        Some(k) => quote!(::adjoint::__private::unbatch(&#a, #k, __i)),
        None => quote!(#a),
    });
    quote!({
        let __f = #f;
        move |#(#args),*| {
            let __n = ::adjoint::__private::common_len(&[#(#lens),*]);
            let mut __outs = ::std::vec::Vec::with_capacity(__n);
            for __i in 0..__n {
                __outs.push(__f(#(#per_example),*));
            }
            ::adjoint::__private::stack_outputs(__outs)
        }
    })
}
