//! `sequential!`: Flax's `nn.Sequential`, as a module type whose `call` runs its
//! layers in order, each on the output of the one before. A module layer runs in a
//! scope named `layers_{i}` (`i` its index in the list, functions counted, as
//! Flax's); a function (`nn::relu`) is applied to the output; a closure (`|h|
//! h.tanh()`) is inlined. The module is then `#[differentiable]` like any other.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Attribute, Expr, Ident, Pat, Token, Type, Visibility};

/// `#[attrs] vis struct Name(x: &In) -> Out [layer, ..]`.
struct Sequential {
    attrs: Vec<Attribute>,
    vis: Visibility,
    name: Ident,
    input: Ident,
    input_ty: Type,
    output_ty: Type,
    layers: Punctuated<Expr, Token![,]>,
    bracket: proc_macro2::Span,
}

impl Parse for Sequential {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis: Visibility = input.parse()?;
        input.parse::<Token![struct]>()?;
        let name: Ident = input.parse()?;
        let args;
        syn::parenthesized!(args in input);
        let param: Ident = args.parse()?;
        args.parse::<Token![:]>()?;
        let input_ty: Type = args.parse()?;
        if !args.is_empty() {
            return Err(args.error("a Sequential takes one input: `(x: &Array2<f64>)`"));
        }
        input.parse::<Token![->]>()?;
        let output_ty: Type = input.parse()?;
        let list;
        let bracket = syn::bracketed!(list in input);
        let layers = list.parse_terminated(Expr::parse, Token![,])?;
        Ok(Sequential {
            attrs,
            vis,
            name,
            input: param,
            input_ty,
            output_ty,
            layers,
            bracket: bracket.span.join(),
        })
    }
}

/// The module type and its `call`.
pub fn sequential(input: TokenStream) -> TokenStream {
    let s: Sequential = match syn::parse2(input) {
        Ok(s) => s,
        Err(e) => return e.into_compile_error(),
    };
    if s.layers.is_empty() {
        return syn::Error::new(
            s.bracket,
            "a Sequential needs at least one layer (Flax raises `Empty Sequential module`)",
        )
        .into_compile_error();
    }
    let mut body = TokenStream::new();
    let x = &s.input;
    let mut current = quote!(#x);
    for (i, layer) in s.layers.iter().enumerate() {
        let out = format_ident!("__layer{}", i);
        let step = match layer {
            // A function of the previous output.
            Expr::Path(f) => quote!(let #out = #f(#current);),
            // A closure: its body, with its parameter bound to the previous output.
            Expr::Closure(c) => {
                let [p] = c.inputs.iter().collect::<Vec<_>>()[..] else {
                    return syn::Error::new(
                        c.inputs.span(),
                        "a closure layer takes one argument: `|h| h.tanh()`",
                    )
                    .into_compile_error();
                };
                let p = match p {
                    Pat::Type(t) => &*t.pat,
                    other => other,
                };
                let b = &c.body;
                quote!(let #out = { let #p = #current; #b };)
            }
            // A module, in the scope `layers_{i}`.
            module => {
                let bound = format_ident!("__bound{}", i);
                let name = format!("layers_{i}");
                quote! {
                    let #bound = cx.bind_as(#name, #module);
                    let #out = #bound.call(cx, #current);
                }
            }
        };
        body.extend(step);
        current = quote!(&#out);
    }
    let last = format_ident!("__layer{}", s.layers.len() - 1);
    let (attrs, vis, name) = (&s.attrs, &s.vis, &s.name);
    let (in_ty, out_ty) = (&s.input_ty, &s.output_ty);
    let doc = format!("Runs the {} layers of `{name}` in order.", s.layers.len());
    quote! {
        #(#attrs)*
        #[derive(Clone, Copy, Debug, Default)]
        #vis struct #name;

        #[::adjoint::differentiable]
        impl #name {
            #[doc = #doc]
            #vis fn call(&self, cx: &mut ::adjoint::Scope, #x: #in_ty) -> #out_ty {
                #body
                #last
            }
        }
    }
}
