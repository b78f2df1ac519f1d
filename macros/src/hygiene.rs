//! Hygiene: the locals an expansion introduces never meet the user's names.
//!
//! Generated locals are named `__…` (`__ct`, `__t0`, `__x_pb`) or derived from the
//! user's names (`x_bar`). Every entry point runs its input through [`rename_locals`]
//! and its output through [`respan`]:
//!
//! - [`rename_locals`] renames the user's own locals that start with `__` (a
//!   parameter `__ct`) to names without that prefix, so no user local is ever
//!   spelled like a generated one;
//! - [`respan`] gives every `__…` identifier the expansion wrote
//!   `Span::mixed_site()` hygiene: a generated local resolves only to a binding of
//!   the same expansion, whatever the user's code is called. Items, methods and
//!   paths (`__f_vjp`, `::adjoint::__private`) resolve at the call site as before.
//!   `__…` identifiers that came in with the input (a temporary an enclosing
//!   expansion passed into a nested `grad!`) keep their spans.
//!
//! Generated locals whose names derive from the user's (`x_bar`, `x_shape`) are made
//! with `Span::mixed_site()` where they are created (see [`generated`]).

use proc_macro2::{Group, Spacing, Span, TokenStream, TokenTree};
use std::collections::{HashMap, HashSet};
use syn::visit::Visit;

/// A name the expansion makes for a local: resolved only within the expansion.
pub fn generated(name: &str) -> syn::Ident {
    syn::Ident::new(name, Span::mixed_site())
}

/// An identifier for `name`, which may be raw (`r#type`, as a user's name prints)
/// or a name made from one (`r#type_1`): raw where it must be, plain otherwise.
pub fn ident(name: &str, span: Span) -> syn::Ident {
    match name.strip_prefix("r#") {
        Some(rest) if syn::parse_str::<syn::Ident>(rest).is_err() => {
            syn::Ident::new_raw(rest, span)
        }
        Some(rest) => syn::Ident::new(rest, span),
        None => syn::Ident::new(name, span),
    }
}

/// A user's name without its raw prefix, to make other names from (`type_bar`).
pub fn plain(name: &syn::Ident) -> String {
    let s = name.to_string();
    s.strip_prefix("r#").map(str::to_string).unwrap_or(s)
}

/// The input with the user's locals named `__…` renamed (`__ct` to `_ct`, or
/// `_ct_1` if that is taken), and the `__…` names it still mentions (paths,
/// items, temporaries of an enclosing expansion), which [`respan`] leaves alone.
pub fn rename_locals(input: TokenStream) -> (TokenStream, HashSet<String>) {
    let mut all = idents(&input);
    let bound = bound_locals(&input);
    let mut renames = HashMap::new();
    for name in bound {
        let base = format!("_{}", name.trim_start_matches('_'));
        let base = if base == "_" { "_u".to_string() } else { base };
        let mut new = base.clone();
        let mut k = 1;
        while all.contains(&new) {
            new = format!("{base}_{k}");
            k += 1;
        }
        all.insert(new.clone());
        renames.insert(name, new);
    }
    let out = if renames.is_empty() {
        input
    } else {
        rename(input, &renames)
    };
    let mut kept = HashSet::new();
    free_names(&out, &mut kept);
    (out, kept)
}

/// Every `__…` identifier of `output` not in `kept` gets mixed-site hygiene.
pub fn respan(output: TokenStream, kept: &HashSet<String>) -> TokenStream {
    output
        .into_iter()
        .map(|tt| match tt {
            TokenTree::Ident(mut i) => {
                let name = i.to_string();
                if name.starts_with("__") && !kept.contains(&name) {
                    i.set_span(Span::mixed_site().located_at(i.span()));
                }
                TokenTree::Ident(i)
            }
            TokenTree::Group(g) => {
                let mut ng = Group::new(g.delimiter(), respan(g.stream(), kept));
                ng.set_span(g.span());
                TokenTree::Group(ng)
            }
            other => other,
        })
        .collect()
}

/// The `__…` identifiers that may name a local (not after `.`): what an enclosing
/// expansion may have passed in.
fn free_names(tokens: &TokenStream, out: &mut HashSet<String>) {
    let mut after_dot = false;
    for tt in tokens.clone() {
        match tt {
            TokenTree::Ident(i) => {
                let name = i.to_string();
                if !after_dot && name.starts_with("__") {
                    out.insert(name);
                }
                after_dot = false;
            }
            TokenTree::Group(g) => {
                free_names(&g.stream(), out);
                after_dot = false;
            }
            TokenTree::Punct(p) => after_dot = p.as_char() == '.',
            TokenTree::Literal(_) => after_dot = false,
        }
    }
}

/// Every identifier in `tokens` (at any depth), as text.
pub(crate) fn idents(tokens: &TokenStream) -> HashSet<String> {
    fn walk(tokens: &TokenStream, out: &mut HashSet<String>) {
        for tt in tokens.clone() {
            match tt {
                TokenTree::Ident(i) => {
                    out.insert(i.to_string());
                }
                TokenTree::Group(g) => walk(&g.stream(), out),
                _ => {}
            }
        }
    }
    let mut out = HashSet::new();
    walk(tokens, &mut out);
    out
}

/// The names starting with `__` that the input binds as locals: parameters, `let`,
/// closure, `for` and `match` bindings. Parsed as an item, else as a list of
/// expressions (a transform's arguments).
fn bound_locals(input: &TokenStream) -> HashSet<String> {
    struct Binds(HashSet<String>);
    impl<'ast> Visit<'ast> for Binds {
        fn visit_pat_ident(&mut self, p: &'ast syn::PatIdent) {
            let name = p.ident.to_string();
            if name.starts_with("__") {
                self.0.insert(name);
            }
            syn::visit::visit_pat_ident(self, p);
        }
        fn visit_macro(&mut self, m: &'ast syn::Macro) {
            // The locals a nested transform's closure binds are its own; only
            // expressions are looked into.
            let exprs = m.parse_body_with(
                syn::punctuated::Punctuated::<syn::Expr, syn::Token![,]>::parse_terminated,
            );
            if let Ok(exprs) = exprs {
                exprs.iter().for_each(|e| self.visit_expr(e));
            }
        }
    }
    let mut v = Binds(HashSet::new());
    if !mentions_prefixed(input) {
        return v.0;
    }
    if let Ok(item) = syn::parse2::<syn::Item>(input.clone()) {
        v.visit_item(&item);
    } else if let Ok(exprs) = syn::parse::Parser::parse2(
        syn::punctuated::Punctuated::<syn::Expr, syn::Token![,]>::parse_terminated,
        input.clone(),
    ) {
        exprs.iter().for_each(|e| v.visit_expr(e));
    }
    v.0
}

fn mentions_prefixed(tokens: &TokenStream) -> bool {
    tokens.clone().into_iter().any(|tt| match tt {
        TokenTree::Ident(i) => i.to_string().starts_with("__"),
        TokenTree::Group(g) => mentions_prefixed(&g.stream()),
        _ => false,
    })
}

/// Renames the identifiers in `renames` where they name a local: not after `.`
/// (a field or method) and not next to `::` or before `!` (a path or a macro).
pub fn rename(tokens: TokenStream, renames: &HashMap<String, String>) -> TokenStream {
    let trees: Vec<TokenTree> = tokens.into_iter().collect();
    let punct =
        |i: usize, c: char| matches!(trees.get(i), Some(TokenTree::Punct(p)) if p.as_char() == c);
    // `::` starting at `i`: a joint `:` then `:` (`x: ::T`'s colons are not one).
    let path_sep = |i: usize| {
        matches!(trees.get(i), Some(TokenTree::Punct(p)) if p.as_char() == ':' && p.spacing() == Spacing::Joint)
            && punct(i + 1, ':')
    };
    let mut out = Vec::with_capacity(trees.len());
    for (i, tt) in trees.iter().enumerate() {
        match tt {
            TokenTree::Ident(id) => {
                let after_dot = i > 0 && punct(i - 1, '.') && !(i > 1 && punct(i - 2, '.'));
                let after_path = i > 1 && path_sep(i - 2);
                let before_path = path_sep(i + 1);
                let before_bang = punct(i + 1, '!');
                match renames.get(&id.to_string()) {
                    Some(new) if !(after_dot || after_path || before_path || before_bang) => {
                        out.push(TokenTree::Ident(syn::Ident::new(new, id.span())));
                    }
                    _ => out.push(tt.clone()),
                }
            }
            TokenTree::Group(g) => {
                let mut ng = Group::new(g.delimiter(), rename(g.stream(), renames));
                ng.set_span(g.span());
                out.push(TokenTree::Group(ng));
            }
            other => out.push(other.clone()),
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    #[test]
    fn renames_user_locals_only() {
        let (out, kept) = rename_locals(quote! {
            fn f(x: f64, __ct: f64) -> f64 { let __t0 = x * __ct; __t0 + __helper(x) + self.__ct }
        });
        assert_eq!(
            out.to_string(),
            quote! {
                fn f(x: f64, _ct: f64) -> f64 { let _t0 = x * _ct; _t0 + __helper(x) + self.__ct }
            }
            .to_string()
        );
        assert!(kept.contains("__helper") && !kept.contains("__ct"));
    }

    #[test]
    fn a_parameter_typed_by_a_leading_path_is_renamed() {
        // `__d_n: ::adjoint::NoTangent`: the colons after the name are not a path's.
        let (out, _) = rename_locals(quote::quote! {
            fn f(__d_n: ::adjoint::NoTangent, x: f64) -> f64 { g(__d_n, x) }
        });
        let want = quote::quote! {
            fn f(_d_n: ::adjoint::NoTangent, x: f64) -> f64 { g(_d_n, x) }
        };
        assert_eq!(out.to_string(), want.to_string());
    }

    #[test]
    fn renamed_locals_avoid_taken_names() {
        let (out, _) = rename_locals(quote!(
            fn f(_ct: f64, __ct: f64) -> f64 {
                _ct * __ct
            }
        ));
        assert_eq!(
            out.to_string(),
            quote!(
                fn f(_ct: f64, _ct_1: f64) -> f64 {
                    _ct * _ct_1
                }
            )
            .to_string()
        );
    }
}
