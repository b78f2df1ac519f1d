//! `vmap!`: the batching transform, as `jax.vmap` and Flax's `nn.vmap`.
//!
//! - `vmap!(f, in_axes = [None, 0])` maps `f` over axis 0 of the arguments marked
//!   `0` (the others are broadcast) and stacks the outputs along a new axis 0.
//! - With `axis_name = "batch"`, a `grad!` of it given `reduce_axes = ["batch"]` sums
//!   the cotangents of the broadcast arguments over the batch instead of giving one
//!   per example.
//! - Inside a module, `vmap!(cx, |mdl, cx, x| .., Module, x, in_axes = [0])` runs the
//!   module once per example in one scope, its variables broadcast; a `vjp!` in it
//!   with `reduce_axes` sums the variable cotangents over the batch.
//!
//! Outputs are gathered as they come ([`Batch`](adjoint::batch::Batch)): one
//! allocation for a stacked output, a running sum for a reduced one.

use crate::ctxt::Ctxt;
use crate::parse::transform::TransformInput;
use crate::parse::vmap::VmapInput;
use proc_macro2::TokenStream;
use quote::{ToTokens, format_ident, quote};
use syn::punctuated::Punctuated;
use syn::{Expr, Ident, Token};

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
    let lifted = input.positional.len() >= 3 && matches!(input.positional[1], Expr::Closure(_));
    let out = if lifted {
        lifted_vmap(&cx, &input)
    } else if input.positional.len() == 1 {
        free_vmap(&cx, &input)
    } else {
        cx.error_at(
            &input.positional[1],
            "expected `vmap!(f, in_axes = [..])`, or inside a module `vmap!(cx, |mdl, cx, x| .., Module, x, in_axes = [..])`",
        );
        TokenStream::new()
    };
    let errors = cx.into_compile_errors();
    if errors.is_empty() { out } else { errors }
}

/// The batch of a `vmap!`: its size, each argument as the function sees it for
/// example `__i` (example `i` of a mapped one, a broadcast one as is), and for an
/// empty batch the statements binding one example of zeros per mapped argument with
/// the arguments as the function sees that one (what it is traced on, for the
/// output's shape).
struct Examples {
    n: TokenStream,
    items: Vec<TokenStream>,
    probes: TokenStream,
    probe_items: Vec<TokenStream>,
}

fn examples(in_axes: &[Option<syn::LitInt>], args: &[Ident]) -> Examples {
    // An axis the argument lacks is a trait error at the axis as written.
    let axis = |k: &syn::LitInt| syn::LitInt::new(k.base10_digits(), k.span());
    let lens = in_axes.iter().zip(args).filter_map(|(ax, a)| {
        ax.as_ref().map(|k| {
            let k = axis(k);
            quote::quote_spanned!(k.span()=> ::adjoint::__private::batch_len::<#k, _>(&#a))
        })
    });
    let n = quote!(::adjoint::__private::common_len(&[#(#lens),*]));
    let mut items = Vec::new();
    let mut probes = TokenStream::new();
    let mut probe_items = Vec::new();
    for (i, (ax, a)) in in_axes.iter().zip(args).enumerate() {
        match ax {
            Some(k) => {
                let k = axis(k);
                let p = format_ident!("__probe{}", i);
                items.push(quote!(::adjoint::__private::unbatch::<#k, _>(&#a, __i)));
                probes.extend(quote!(let #p = ::adjoint::__private::probe::<#k, _>(&#a);));
                probe_items.push(quote!(::adjoint::__private::unbatch::<#k, _>(&#p, 0)));
            }
            None => {
                items.push(quote!(#a));
                probe_items.push(quote!(#a));
            }
        }
    }
    Examples {
        n,
        items,
        probes,
        probe_items,
    }
}

/// `vmap!(f, in_axes = [..])`: `f` called per example, its outputs gathered.
fn free_vmap(cx: &Ctxt, input: &VmapInput) -> TokenStream {
    let (f, adapt) = match reducing_transform(cx, input) {
        Some(pair) => pair,
        None => (input.positional[0].to_token_stream(), quote!(__y)),
    };
    let args: Vec<Ident> = (0..input.in_axes.len())
        .map(|i| format_ident!("__a{}", i))
        .collect();
    let Examples {
        n,
        items,
        probes,
        probe_items,
    } = examples(&input.in_axes, &args);
    quote!({
        let __f = #f;
        move |#(#args),*| {
            let __n = #n;
            let mut __out = ::adjoint::__private::Batch::new(__n);
            if __n == 0 {
                #probes
                let __y = __f(#(#probe_items),*);
                __out.shape_like(#adapt);
            }
            for __i in 0..__n {
                let __y = __f(#(#items),*);
                __out.push(#adapt);
            }
            __out.finish()
        }
    })
}

/// For `vmap!(grad!(|w, x| .., wrt = [w], reduce_axes = ["batch"]), in_axes = [None,
/// 0], axis_name = "batch")`: the transform without `reduce_axes`, and how to wrap
/// its output `__y` so that the cotangents of broadcast arguments are summed
/// ([`Reduced`](adjoint::batch::Reduced)). `None` for any other function.
fn reducing_transform(cx: &Ctxt, input: &VmapInput) -> Option<(TokenStream, TokenStream)> {
    let Expr::Macro(m) = &input.positional[0] else {
        return None;
    };
    let which = m.mac.path.get_ident()?.to_string();
    if !["grad", "value_and_grad", "vjp"].contains(&which.as_str()) {
        return None;
    }
    let t: TransformInput = m.mac.parse_body().ok()?;
    let axes = t.reduce_axes.as_ref()?;
    for a in axes {
        if input
            .axis_name
            .as_ref()
            .is_none_or(|n| n.value() != a.value())
        {
            cx.error_at(
                a,
                format!(
                    "`reduce_axes` names the axis `{}`, which this vmap! does not bind: give it `axis_name = \"{}\"`",
                    a.value(),
                    a.value()
                ),
            );
            return None;
        }
    }
    let closure = match t.positional.as_slice() {
        [Expr::Closure(c)] if which != "vjp" => c,
        _ => {
            cx.error_at(
                &input.positional[0],
                "`reduce_axes` inside vmap! takes `grad!` or `value_and_grad!` of a closure, whose arguments say which cotangents belong to broadcast values: `grad!(|w, x| loss(w, x), wrt = [w], reduce_axes = [\"batch\"])`",
            );
            return None;
        }
    };
    let names: Vec<String> = closure
        .inputs
        .iter()
        .map(|p| match p {
            syn::Pat::Type(t) => t.pat.to_token_stream().to_string(),
            other => other.to_token_stream().to_string(),
        })
        .collect();
    if names.len() != input.in_axes.len() {
        cx.error_at(
            &input.axes_expr,
            format!(
                "`in_axes` has {} entries for a function of {} arguments",
                input.in_axes.len(),
                names.len()
            ),
        );
        return None;
    }
    // The cotangents in output order, and whether each belongs to a broadcast argument.
    let order: Vec<usize> = match &t.wrt {
        Some(w) => w
            .iter()
            .filter_map(|w| names.iter().position(|n| w == n))
            .collect(),
        None => (0..names.len()).collect(),
    };
    let gs: Vec<Ident> = (0..order.len())
        .map(|k| format_ident!("__g{}", k))
        .collect();
    let wrapped: Vec<TokenStream> = order
        .iter()
        .zip(&gs)
        .map(|(&p, g)| {
            if input.in_axes[p].is_none() {
                quote!(::adjoint::__private::Reduced(#g))
            } else {
                quote!(#g)
            }
        })
        .collect();
    let (grads_pat, grads) = match (gs.as_slice(), wrapped.as_slice()) {
        ([g], [w]) => (quote!(#g), w.clone()),
        _ => (quote!((#(#gs,)*)), quote!((#(#wrapped,)*))),
    };
    let adapt = match (which.as_str(), t.has_aux) {
        ("grad", false) => quote!({ let #grads_pat = __y; #grads }),
        ("grad", true) => quote!({ let (#grads_pat, __aux) = __y; (#grads, __aux) }),
        (_, _) => quote!({ let (__v, #grads_pat) = __y; (__v, #grads) }),
    };
    // The transform as written, without `reduce_axes`.
    let items: Punctuated<Expr, Token![,]> =
        m.mac.parse_body_with(Punctuated::parse_terminated).ok()?;
    let kept = items.into_iter().filter(|e| {
        !matches!(e, Expr::Assign(a) if matches!(&*a.left, Expr::Path(p) if p.path.is_ident("reduce_axes")))
    });
    let path = &m.mac.path;
    Some((quote!(#path!(#(#kept),*)), adapt))
}

/// `vmap!(cx, |mdl, cx, x..| body, Module, x.., in_axes = [..])` inside a module: the
/// body once per example, in the module's scope (entered once, so every example reads
/// the same variables), with the axis named for `reduce_axes`. Children get the same
/// names in every example; random streams go on, so each example draws its own.
fn lifted_vmap(cx: &Ctxt, input: &VmapInput) -> TokenStream {
    let scope = &input.positional[0];
    let Expr::Closure(c) = &input.positional[1] else {
        return TokenStream::new();
    };
    let module = &input.positional[2];
    let args = &input.positional[3..];
    if c.inputs.len() != args.len() + 2 || input.in_axes.len() != args.len() {
        cx.error_at(
            &c.inputs,
            format!(
                "the closure takes the module, the scope and one argument per entry of `in_axes` ({}): `|mdl, cx, ..|`",
                input.in_axes.len()
            ),
        );
        return TokenStream::new();
    }
    let Some((names, _, body)) = crate::expand::transform::lifted_closure(cx, c) else {
        return TokenStream::new();
    };
    let (mdl, cxn, params) = (&names[0], &names[1], &names[2..]);
    let temps: Vec<Ident> = (0..args.len()).map(|i| format_ident!("__a{}", i)).collect();
    let Examples {
        n,
        items,
        probes,
        probe_items,
    } = examples(&input.in_axes, &temps);
    let (enter, exit) = crate::expand::transform::lifted_module(module, mdl, cxn);
    let (push, pop) = match &input.axis_name {
        Some(a) => (quote!(#cxn.push_axis(#a);), quote!(#cxn.pop_axis();)),
        None => (TokenStream::new(), TokenStream::new()),
    };
    quote!({
        let (#(#temps,)*) = (#(#args,)*);
        let #cxn: &mut ::adjoint::Scope = &mut *(#scope);
        #enter
        #push
        let __mark = #cxn.mark();
        let __n = #n;
        let mut __out = ::adjoint::__private::Batch::new(__n);
        if __n == 0 {
            #probes
            #(let #params = #probe_items;)*
            #[allow(unused_mut, unused_variables, unused_parens)]
            let __y = #body;
            __out.shape_like(__y);
        }
        for __i in 0..__n {
            #cxn.reset_names_to(&__mark);
            #(let #params = #items;)*
            #[allow(unused_mut, unused_variables, unused_parens)]
            let __y = #body;
            __out.push(__y);
        }
        #pop
        #exit
        __out.finish()
    })
}
