//! Long blocks in pieces: rustc overflows its stack on a block of a few thousand
//! `let` statements (each opens a scope the rest of the block nests in), and a
//! function of a thousand operations generates that many. Such a block is cut into
//! sub-blocks of [`CHUNK`] statements, each giving the names the rest of the block
//! reads as a tuple: `let (a, mut b) = { ..; (a, b) };`. Shorter blocks, what nearly
//! every function generates, are left as they are.

use proc_macro2::{TokenStream, TokenTree};
use quote::{ToTokens, quote};
use std::collections::HashSet;
use syn::visit_mut::VisitMut;

/// The number of statements per piece, and so the longest block left whole.
const CHUNK: usize = 512;

/// `tokens` (items, or an expression) with every block longer than [`CHUNK`]
/// statements cut into pieces; as they are if no block is that long.
pub fn chunk_long_blocks(tokens: TokenStream) -> TokenStream {
    if !has_long_block(&tokens) {
        return tokens;
    }
    if let Ok(mut file) = syn::parse2::<syn::File>(tokens.clone()) {
        Chunker.visit_file_mut(&mut file);
        return file.into_token_stream();
    }
    if let Ok(mut e) = syn::parse2::<syn::Expr>(tokens.clone()) {
        Chunker.visit_expr_mut(&mut e);
        return e.into_token_stream();
    }
    tokens
}

/// Whether some brace group holds more than [`CHUNK`] statements (`;`s).
fn has_long_block(tokens: &TokenStream) -> bool {
    let mut semis = 0;
    for tt in tokens.clone() {
        match tt {
            TokenTree::Punct(p) if p.as_char() == ';' => semis += 1,
            TokenTree::Group(g) if has_long_block(&g.stream()) => return true,
            _ => {}
        }
    }
    semis > CHUNK
}

struct Chunker;

impl VisitMut for Chunker {
    fn visit_block_mut(&mut self, b: &mut syn::Block) {
        syn::visit_mut::visit_block_mut(self, b);
        if b.stmts.len() > CHUNK {
            b.stmts = chunk(std::mem::take(&mut b.stmts));
        }
    }
}

fn chunk(stmts: Vec<syn::Stmt>) -> Vec<syn::Stmt> {
    // The block's value (its last expression) stays at the end.
    let mut stmts = stmts;
    let tail = match stmts.last() {
        Some(syn::Stmt::Expr(_, None)) => stmts.pop(),
        _ => None,
    };
    // The names each statement mentions, and those of everything after it.
    let mentioned: Vec<HashSet<String>> =
        stmts.iter().map(|s| idents(s.to_token_stream())).collect();
    let mut after: Vec<HashSet<String>> = vec![HashSet::new(); stmts.len() + 1];
    if let Some(t) = &tail {
        after[stmts.len()] = idents(t.to_token_stream());
    }
    for i in (0..stmts.len()).rev() {
        let mut set = after[i + 1].clone();
        set.extend(mentioned[i].iter().cloned());
        after[i] = set;
    }
    let mut out = Vec::new();
    let mut start = 0;
    for piece in stmts.chunks(CHUNK) {
        let end = start + piece.len();
        // Every name bound in the piece that a later statement reads, and whether
        // it was bound `mut`.
        let mut live: Vec<(syn::Ident, bool)> = Vec::new();
        let mut seen = HashSet::new();
        for s in piece.iter().rev() {
            if let syn::Stmt::Local(l) = s {
                let mut bound = Vec::new();
                bindings(&l.pat, &mut bound);
                for (id, m) in bound {
                    let name = id.to_string();
                    if after[end].contains(&name) && seen.insert(name) {
                        live.push((id, m));
                    }
                }
            }
        }
        let names: Vec<&syn::Ident> = live.iter().map(|(id, _)| id).collect();
        let pats = live
            .iter()
            .map(|(id, m)| if *m { quote!(mut #id) } else { quote!(#id) });
        let stmt: syn::Stmt = syn::parse_quote! {
            #[allow(unused_mut)]
            let (#(#pats,)*) = { #(#piece)* (#(#names,)*) };
        };
        out.push(stmt);
        start = end;
    }
    out.extend(tail);
    out
}

fn bindings(p: &syn::Pat, out: &mut Vec<(syn::Ident, bool)>) {
    match p {
        syn::Pat::Ident(i) => out.push((i.ident.clone(), i.mutability.is_some())),
        syn::Pat::Type(t) => bindings(&t.pat, out),
        syn::Pat::Tuple(t) => t.elems.iter().for_each(|p| bindings(p, out)),
        syn::Pat::Paren(p) => bindings(&p.pat, out),
        _ => {}
    }
}

fn idents(tokens: TokenStream) -> HashSet<String> {
    let mut out = HashSet::new();
    fn walk(t: TokenStream, out: &mut HashSet<String>) {
        for tt in t {
            match tt {
                TokenTree::Ident(i) => {
                    out.insert(i.to_string());
                }
                TokenTree::Group(g) => walk(g.stream(), out),
                _ => {}
            }
        }
    }
    walk(tokens, &mut out);
    out
}
