//! Long blocks in pieces: rustc overflows its stack on a block of a few thousand
//! `let` statements (each opens a scope the rest of the block nests in), and a
//! function of a thousand operations generates that many. Such a block is cut into
//! sub-blocks of [`CHUNK`] statements, each giving the names the rest of the block
//! reads as a tuple: `let (a, mut b) = { ..; (a, b) };`. Shorter blocks, what nearly
//! every function generates, are left as they are.
//!
//! A piece cannot hand out a borrow of its own value (forward mode's
//! `let d = operand(&t);`, a view `t.view()`): such a statement is written again
//! after the piece, which hands out what it borrows instead (see [`Piece::lend`]).

use crate::hygiene::idents;
use proc_macro2::{TokenStream, TokenTree};
use quote::{ToTokens, quote};
use std::collections::{HashMap, HashSet};
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
        stmts.iter().map(|s| idents(&s.to_token_stream())).collect();
    let mut after: Vec<HashSet<String>> = vec![HashSet::new(); stmts.len() + 1];
    if let Some(t) = &tail {
        after[stmts.len()] = idents(&t.to_token_stream());
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
        let piece = Piece::new(piece);
        // Every name bound in the piece that a later statement reads.
        let mut wanted: Vec<String> = piece
            .last_binding
            .keys()
            .filter(|n| after[end].contains(*n))
            .cloned()
            .collect();
        wanted.sort_by_key(|n| piece.last_binding[n]);
        let (exported, again) = piece.lend(wanted);
        let live: Vec<(syn::Ident, bool)> = exported.iter().map(|n| piece.binding(n)).collect();
        let names: Vec<&syn::Ident> = live.iter().map(|(id, _)| id).collect();
        let pats = live
            .iter()
            .map(|(id, m)| if *m { quote!(mut #id) } else { quote!(#id) });
        let stmts = piece.stmts;
        let stmt: syn::Stmt = syn::parse_quote! {
            #[allow(unused_mut)]
            let (#(#pats,)*) = { #(#stmts)* (#(#names,)*) };
        };
        out.push(stmt);
        out.extend(again.into_iter().map(|i| stmts[i].clone()));
        start = end;
    }
    out.extend(tail);
    out
}

/// A piece of a long block: its statements and, for each name it binds, the last
/// statement binding it.
struct Piece<'a> {
    stmts: &'a [syn::Stmt],
    last_binding: HashMap<String, usize>,
}

impl<'a> Piece<'a> {
    fn new(stmts: &'a [syn::Stmt]) -> Self {
        let mut last_binding = HashMap::new();
        for (i, s) in stmts.iter().enumerate() {
            if let syn::Stmt::Local(l) = s {
                let mut bound = Vec::new();
                bindings(&l.pat, &mut bound);
                for (id, _) in bound {
                    last_binding.insert(id.to_string(), i);
                }
            }
        }
        Piece {
            stmts,
            last_binding,
        }
    }

    /// The identifier binding `name` last, and whether it is `mut`.
    fn binding(&self, name: &str) -> (syn::Ident, bool) {
        let syn::Stmt::Local(l) = &self.stmts[self.last_binding[name]] else {
            unreachable!("a binding is a `let`");
        };
        let mut bound = Vec::new();
        bindings(&l.pat, &mut bound);
        bound
            .into_iter()
            .find(|(id, _)| id == name)
            .expect("the `let` binds the name")
    }

    /// The names the piece hands out for `wanted`, and the statements written again
    /// after it (in order): a wanted name bound to a borrow of the piece's own
    /// values (`let d = operand(&t);`) is bound again after the piece, which hands
    /// out what the borrow reads instead. Only where that reads the same values:
    /// what it reads is bound without `mut` and not bound again after it.
    fn lend(&self, wanted: Vec<String>) -> (Vec<String>, Vec<usize>) {
        let mut exported: Vec<String> = Vec::new();
        let mut again: Vec<usize> = Vec::new();
        let mut todo = wanted;
        while let Some(name) = todo.pop() {
            if exported.contains(&name) || again.iter().any(|&i| self.binds(i, &name)) {
                continue;
            }
            let at = self.last_binding[&name];
            match self.borrowed(at) {
                Some(reads) => {
                    again.push(at);
                    todo.extend(reads);
                }
                None => exported.push(name),
            }
        }
        again.sort_unstable();
        exported.sort_by_key(|n| self.last_binding[n]);
        (exported, again)
    }

    fn binds(&self, at: usize, name: &str) -> bool {
        self.last_binding.get(name) == Some(&at)
    }

    /// For a statement `let name = <borrow>;` whose borrow may be taken again after
    /// the piece: the piece's names it reads.
    fn borrowed(&self, at: usize) -> Option<Vec<String>> {
        let syn::Stmt::Local(l) = &self.stmts[at] else {
            return None;
        };
        let (syn::Pat::Ident(_), Some(init), None) = (&l.pat, &l.init, &l.init.as_ref()?.diverge)
        else {
            return None;
        };
        if !is_borrow(&init.expr) {
            return None;
        }
        let reads: Vec<String> = idents(&init.expr.to_token_stream())
            .into_iter()
            .filter(|n| self.last_binding.contains_key(n))
            .collect();
        let stable = reads
            .iter()
            .all(|n| self.last_binding[n] < at && !self.binding(n).1);
        stable.then_some(reads)
    }
}

/// Whether `e` borrows a place and computes nothing: `&x`, forward mode's
/// `operand(..)` of such, a view method (`x.view()`, `x.t()`).
fn is_borrow(e: &syn::Expr) -> bool {
    match e {
        syn::Expr::Paren(p) => is_borrow(&p.expr),
        syn::Expr::Reference(r) => r.mutability.is_none() && is_place(&r.expr),
        syn::Expr::Call(c) => {
            let syn::Expr::Path(f) = &*c.func else {
                return false;
            };
            f.path.segments.last().is_some_and(|s| s.ident == "operand")
                && c.args.iter().all(is_borrow)
        }
        syn::Expr::MethodCall(m) => {
            matches!(m.method.to_string().as_str(), "view" | "t")
                && m.args.is_empty()
                && (is_place(&m.receiver) || is_borrow(&m.receiver))
        }
        _ => false,
    }
}

/// A local's name, maybe in parentheses.
fn is_place(e: &syn::Expr) -> bool {
    match e {
        syn::Expr::Paren(p) => is_place(&p.expr),
        syn::Expr::Path(p) => p.qself.is_none() && p.path.get_ident().is_some(),
        _ => false,
    }
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
