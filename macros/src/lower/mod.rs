//! Lowering: a function or closure body (syn) to the A-normal-form IR.
//!
//! Every subexpression gets a name; shadowing and assignment make new names; tuples
//! that are built and taken apart in the body exist only at compile time; `while`
//! becomes `loop { if !cond { break } .. }`; and a branch that may `return`, `break`
//! or `continue` takes the rest of its block into its arms, so every leaf of the
//! IR knows where control goes next.
//!
//! `stmt` lowers blocks and statements, `expr` expressions, `call` calls, `control`
//! branches and loops; this module holds the lowerer's names and environment.

use crate::ctxt::Ctxt;
use crate::ir::*;
use crate::ops::{self, Rule};
pub use crate::parse::signature::ParamSpec;
use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{ToTokens, quote};
use std::collections::{HashMap, HashSet};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{BinOp, Expr, Pat, UnOp};

/// The variables of an enclosing body that a closure may read.
pub type OuterEnv = HashMap<String, (Val, Vec<(Var, Ident)>)>;
use syn::Ident;

mod call;
mod control;
mod expr;
mod lifted;
mod stmt;

/// Lowers a body with the given parameters.
pub fn lower(cx: &Ctxt, params: &[ParamSpec], body: &syn::Block) -> Func {
    lower_with(cx, params, body, OuterEnv::new())
}

fn lower_with(cx: &Ctxt, params: &[ParamSpec], body: &syn::Block, outer: OuterEnv) -> Func {
    let body = &if_let_as_match(body);
    let mut taken = crate::hygiene::idents(&body.to_token_stream());
    for (_, names) in outer.values() {
        taken.extend(names.iter().map(|(_, n)| n.to_string()));
    }
    let mut l = Lowerer {
        cx,
        vars: Vec::new(),
        scopes: vec![HashMap::new()],
        ref_bound: vec![HashSet::new()],
        inlined: vec![HashMap::new()],
        inlining: Vec::new(),
        items: Vec::new(),
        taken,
        temps: 0,
        outer,
        free: Vec::new(),
        scopes_vars: Vec::new(),
        lifted: HashMap::new(),
        vjps: HashMap::new(),
        fields: HashSet::new(),
        memo: vec![HashMap::new()],
    };
    let params = params
        .iter()
        .filter_map(|p| {
            let mut param = l.bind_param(p.pat, p.active)?;
            param.scalar = p.scalar;
            param.reference = p.reference;
            if p.scope {
                l.scopes_vars.push(param.var);
            }
            Some(param)
        })
        .collect();
    let body_ir = l.block(&body.stmts, &Region::default(), LeafKind::Return);
    Func {
        scope: l.scopes_vars.first().copied(),
        vars: l.vars,
        params,
        body: body_ir,
        free: l.free,
        aux: false,
        params_active: false,
        local_pullback: false,
        items: l.items,
    }
}

/// `body` with every `if let P = e { a } else { b }` written as `match e { P => a, _
/// => b }` (the `else` an empty block where there is none), which lowering follows.
fn if_let_as_match(body: &syn::Block) -> syn::Block {
    struct IfLet;
    impl syn::visit_mut::VisitMut for IfLet {
        fn visit_expr_mut(&mut self, e: &mut Expr) {
            syn::visit_mut::visit_expr_mut(self, e);
            let Expr::If(i) = e else { return };
            let Expr::Let(l) = &*i.cond else { return };
            let (pat, scrutinee, then) = (&l.pat, &l.expr, &i.then_branch);
            let other = match &i.else_branch {
                Some((_, b)) => quote!(#b),
                None => quote!({}),
            };
            *e = syn::parse_quote_spanned!(i.if_token.span=>
                match #scrutinee { #pat => #then, _ => #other }
            );
        }
        // A nested item is not this body's.
        fn visit_item_mut(&mut self, _: &mut syn::Item) {}
    }
    let mut body = body.clone();
    syn::visit_mut::VisitMut::visit_block_mut(&mut IfLet, &mut body);
    body
}

/// A region's carried variables: the outer variables its leaves report, named by
/// the depth of the scope they live in.
#[derive(Default, Clone)]
struct Region {
    carries: Vec<(usize, String)>,
}

struct Lowerer<'c> {
    cx: &'c Ctxt,
    vars: Vec<VarInfo>,
    scopes: Vec<HashMap<String, Val>>,
    taken: HashSet<String>,
    temps: u32,
    outer: OuterEnv,
    free: Vec<(Var, Var)>,
    /// The variables holding the module's scope.
    scopes_vars: Vec<Var>,
    /// The values opaque lifted ops made ([`Op::Lifted`]), with what each read.
    lifted: HashMap<Var, Vec<Atom>>,
    /// The lifted `vjp!`s second order goes through, by their pullback: a call of
    /// one (`pb(ct)`, in any block after it) is differentiated too.
    vjps: HashMap<Var, Lifted>,
    /// The fields of tuples taken by the `field` rule (references into the tuple).
    fields: HashSet<Var>,
    /// Per scope, the names bound to a reference (`let v = &x;`): passed on as
    /// references, since the IR drops the `&`.
    ref_bound: Vec<HashSet<String>>,
    /// Per scope, the closures bound with `let` and the nested `fn` items, whose
    /// calls are inlined (as JAX traces a `def h(v)` inside a function).
    inlined: Vec<HashMap<String, std::rc::Rc<Inlined>>>,
    /// The names being inlined, innermost last (a recursive call is an error).
    inlining: Vec<String>,
    /// The items declared in the body, as written.
    items: Vec<TokenStream>,
    /// Primitives already computed in each enclosing block, by operation and
    /// operands: the same pure operation on the same values is computed once.
    memo: Vec<HashMap<String, Var>>,
}

type Stmts = Vec<Stmt>;

/// A closure bound with `let`, or a nested `fn` item: inlined where it is called.
struct Inlined {
    params: Vec<Pat>,
    body: Expr,
    /// The enclosing variables it sees, as they were where it was made (a closure's
    /// captures; none for a `fn` item).
    env: HashMap<String, Val>,
    env_refs: HashSet<String>,
    /// The nested functions a closure may call (a `fn` item sees those of the block
    /// it is called in, itself included).
    fns: Option<HashMap<String, std::rc::Rc<Inlined>>>,
    /// Why it cannot be inlined (a generic `fn`, a `return`), for calls that need it.
    unsupported: Option<String>,
}

/// The value of an expression that was reported as an error: usable anywhere, so
/// one mistake makes one message.
fn poison() -> Val {
    Val::Atom(Atom::Lit(quote!(())))
}

impl Lowerer<'_> {
    // ----- names and environment -----

    fn push_scope(&mut self) {
        self.scopes.push(HashMap::new());
        self.ref_bound.push(HashSet::new());
        self.inlined.push(HashMap::new());
        self.memo.push(HashMap::new());
    }

    fn pop_scope(&mut self) {
        self.scopes.pop();
        self.ref_bound.pop();
        self.inlined.pop();
        self.memo.pop();
    }

    /// A new variable named `base` (or `base_k` if taken). User names keep the
    /// user's span, so they resolve like the user's own tokens (also inside
    /// `macro_rules!`); generated names are the macro's.
    fn fresh_named(&mut self, base: &str, span: Span, user: bool) -> Var {
        let mut name = base.to_string();
        let mut k = 1;
        while self.taken.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.taken.insert(name.clone());
        let id = Var(self.vars.len() as u32);
        let ident_span = if user { span } else { Span::call_site() };
        self.vars.push(VarInfo {
            name: crate::hygiene::ident(&name, ident_span),
            ty: None,
            mutable: false,
            shared: false,
            discarded: false,
        });
        id
    }

    fn fresh_user(&mut self, ident: &Ident) -> Var {
        // The first binding keeps the user's name; later ones get a suffix.
        let base = ident.to_string();
        if !self.vars.iter().any(|v| v.name == base) {
            self.taken.remove(&base);
        }
        self.fresh_named(&base, ident.span(), true)
    }

    fn temp(&mut self, span: Span) -> Var {
        let n = self.temps;
        self.temps += 1;
        self.fresh_named(&format!("__t{n}"), span, false)
    }

    fn lookup(&mut self, name: &str) -> Option<Val> {
        for scope in self.scopes.iter().rev() {
            if let Some(v) = scope.get(name) {
                return Some(v.clone());
            }
        }
        let (val, names) = self.outer.get(name)?.clone();
        // A closure reads an enclosing variable: give it a variable here, same name.
        let mut map = HashMap::new();
        for (outer_var, ident) in names {
            let id = Var(self.vars.len() as u32);
            self.vars.push(VarInfo {
                name: ident,
                ty: None,
                mutable: false,
                shared: false,
                discarded: false,
            });
            self.free.push((id, outer_var));
            map.insert(outer_var, id);
        }
        let val = remap(&val, &map);
        self.scopes[0].insert(name.to_string(), val.clone());
        Some(val)
    }

    fn is_local(&self, name: &str) -> bool {
        self.scopes.iter().any(|s| s.contains_key(name)) || self.outer.contains_key(name)
    }

    fn bind(&mut self, name: String, val: Val) {
        if let Some(refs) = self.ref_bound.last_mut() {
            refs.remove(&name);
        }
        self.scopes.last_mut().expect("a scope").insert(name, val);
    }

    /// Rebinds an existing variable (assignment) in the scope that holds it.
    fn assign(&mut self, name: &str, val: Val, span: Span) {
        for scope in self.scopes.iter_mut().rev() {
            if let Some(slot) = scope.get_mut(name) {
                *slot = val;
                return;
            }
        }
        self.cx.error(
            span,
            format!("cannot assign to `{name}`: it is not a local variable of this function"),
        );
    }

    fn scope_of(&self, name: &str) -> Option<usize> {
        (0..self.scopes.len())
            .rev()
            .find(|&d| self.scopes[d].contains_key(name))
    }

    fn bind_param(&mut self, pat: &Pat, active: bool) -> Option<Param> {
        match pat {
            Pat::Ident(p) => {
                let var = self.fresh_user(&p.ident);
                self.bind(p.ident.to_string(), Val::Atom(Atom::Var(var)));
                Some(Param {
                    var,
                    active,
                    scalar: false,
                    reference: false,
                })
            }
            Pat::Type(t) => self.bind_param(&t.pat, active),
            Pat::Wild(w) => {
                let var = self.temp(w.span());
                Some(Param {
                    var,
                    active,
                    scalar: false,
                    reference: false,
                })
            }
            other => {
                self.cx.error_at(
                    other,
                    "differentiable parameters must be plain names; destructure in the body",
                );
                None
            }
        }
    }

    fn atom(&mut self, v: Val, span: Span) -> Atom {
        match v {
            Val::Atom(a) => a,
            Val::Tuple(_) => {
                self.cx.error(
                    span,
                    "a tuple cannot be used here; take its fields apart first",
                );
                Atom::Lit(quote!(()))
            }
        }
    }

    fn emit(&mut self, out: &mut Stmts, op: Op, span: Span) -> Atom {
        let dst = self.temp(span);
        if let Op::Lifted { reads, .. } = &op {
            self.lifted.insert(dst, reads.clone());
        }
        out.push(Stmt::Let { dst, op, span });
        Atom::Var(dst)
    }

    /// The tokens of `e` with local variables renamed to their current names: for
    /// expressions emitted as written (constants, conditions, indices).
    fn verbatim(&mut self, tokens: TokenStream) -> TokenStream {
        let mut out = TokenStream::new();
        let mut prev_dot = false;
        let trees: Vec<TokenTree> = tokens.into_iter().collect();
        for (i, tt) in trees.iter().enumerate() {
            match tt {
                TokenTree::Ident(id) => {
                    let next_is_path = matches!(trees.get(i + 1), Some(TokenTree::Punct(p)) if p.as_char() == ':' || p.as_char() == '!');
                    let name = id.to_string();
                    if !prev_dot && !next_is_path && self.is_local(&name) {
                        let val = self.lookup(&name).expect("is_local");
                        let renamed = self.val_tokens(&val);
                        // The same name keeps the user's token (its span), so that a
                        // mistake inside copies of this expression reports once.
                        if renamed.to_string() == name {
                            out.extend(std::iter::once(tt.clone()));
                        } else {
                            out.extend(renamed);
                        }
                    } else {
                        out.extend(std::iter::once(tt.clone()));
                    }
                    prev_dot = false;
                }
                TokenTree::Group(g) => {
                    let inner = self.verbatim(g.stream());
                    let mut ng = proc_macro2::Group::new(g.delimiter(), inner);
                    ng.set_span(g.span());
                    out.extend(std::iter::once(TokenTree::Group(ng)));
                    prev_dot = false;
                }
                TokenTree::Punct(p) => {
                    prev_dot = p.as_char() == '.';
                    out.extend(std::iter::once(tt.clone()));
                }
                TokenTree::Literal(_) => {
                    prev_dot = false;
                    out.extend(std::iter::once(tt.clone()));
                }
            }
        }
        out
    }

    fn val_tokens(&self, v: &Val) -> TokenStream {
        match v {
            Val::Atom(Atom::Var(var)) => self.vars[var.0 as usize].name.to_token_stream(),
            Val::Atom(Atom::Lit(t)) => t.clone(),
            Val::Tuple(vs) => {
                let items = vs.iter().map(|v| self.val_tokens(v));
                quote!((#(#items,)*))
            }
        }
    }

    /// Whether `e` reads a local variable (else it is a constant).
    fn mentions_local(&self, tokens: TokenStream) -> bool {
        let trees: Vec<TokenTree> = tokens.into_iter().collect();
        let mut prev_dot = false;
        for (i, tt) in trees.iter().enumerate() {
            match tt {
                TokenTree::Ident(id) => {
                    let next_is_path = matches!(trees.get(i + 1), Some(TokenTree::Punct(p)) if p.as_char() == ':' || p.as_char() == '!');
                    if !prev_dot && !next_is_path && self.is_local(&id.to_string()) {
                        return true;
                    }
                    prev_dot = false;
                }
                TokenTree::Group(g) => {
                    if self.mentions_local(g.stream()) {
                        return true;
                    }
                    prev_dot = false;
                }
                TokenTree::Punct(p) => prev_dot = p.as_char() == '.',
                TokenTree::Literal(_) => prev_dot = false,
            }
        }
        false
    }

    /// The variables `tokens` mention.
    fn mentioned_vars(&mut self, tokens: TokenStream) -> Vec<Var> {
        // Sorted: lookups may make variables, in an order that must not vary.
        let mut idents: Vec<String> = crate::hygiene::idents(&tokens).into_iter().collect();
        idents.sort();
        let mut vars = Vec::new();
        for name in idents {
            if self.is_local(&name)
                && let Some(v) = self.lookup(&name)
            {
                let mut atoms = Vec::new();
                v.flatten(&mut atoms);
                vars.extend(atoms.iter().filter_map(Atom::var));
            }
        }
        vars
    }

    /// A call given a closure, as one expression: its other operands lowered first
    /// (so that `x.len()` reads no differentiated value), the closure as written,
    /// reading the locals it captures.
    fn closure_call(&mut self, out: &mut Stmts, e: &Expr) -> Val {
        let (mut reads, mut captured) = (Vec::new(), Vec::new());
        // A closure bound with `let` or a nested `fn` is inlined where it is called:
        // it does not exist for a closure written as is to call.
        let inlined = self.visible_fns();
        let idents = crate::hygiene::idents(&e.to_token_stream());
        if let Some(name) = idents.iter().find(|n| inlined.contains_key(*n)) {
            self.cx.error_at(
                e,
                format!("`{name}` is inlined where it is called, so a closure given to this call cannot call it; write it as a #[differentiable] function, or use `mapv`"),
            );
            return poison();
        }
        let mut operand = |this: &mut Self, out: &mut Stmts, a: &Expr| -> TokenStream {
            if is_closure(a) {
                captured.extend(this.mentioned_vars(a.to_token_stream()));
                return this.verbatim(a.to_token_stream());
            }
            let arg = this.args(out, [a.clone()]).remove(0);
            reads.extend(arg.atom.var());
            let x = this.val_tokens(&Val::Atom(arg.atom));
            if arg.by_ref { quote!(&#x) } else { x }
        };
        let tokens = match e {
            Expr::MethodCall(m) => {
                let recv = operand(self, out, &m.receiver);
                let args: Vec<TokenStream> = m.args.iter().map(|a| operand(self, out, a)).collect();
                let (method, turbofish) = (&m.method, &m.turbofish);
                quote!(#recv.#method #turbofish(#(#args),*))
            }
            Expr::Call(c) => {
                let func = self.verbatim(c.func.to_token_stream());
                let args: Vec<TokenStream> = c.args.iter().map(|a| operand(self, out, a)).collect();
                quote!(#func(#(#args),*))
            }
            other => {
                reads.extend(self.mentioned_vars(other.to_token_stream()));
                self.verbatim(other.to_token_stream())
            }
        };
        let op = Op::Build {
            tokens,
            reads,
            what: Built::ClosureCall { captured },
        };
        Val::Atom(self.emit(out, op, e.span()))
    }

    /// A constant expression: inline if it is a literal, an expression of literals or
    /// a path (so that literals take their type where they are used), else bound once.
    fn constant(&mut self, out: &mut Stmts, e: &Expr) -> Atom {
        match e {
            Expr::Lit(_) | Expr::Path(_) => Atom::Lit(self.verbatim(e.to_token_stream())),
            _ if is_inline_constant(e) => Atom::Lit(e.to_token_stream()),
            _ => {
                let tokens = self.verbatim(e.to_token_stream());
                self.emit(out, Op::Const(tokens), e.span())
            }
        }
    }

    /// A constant argument (an axis, an index, an exponent): a local variable by
    /// name, else a constant expression.
    fn const_atom(&mut self, out: &mut Stmts, e: &Expr) -> Atom {
        if let Expr::Path(p) = e
            && let Some(id) = p.path.get_ident()
            && let Some(Val::Atom(a)) = self.lookup(&id.to_string())
        {
            return a;
        }
        if let Expr::Lit(_) = e {
            return Atom::Lit(e.to_token_stream());
        }
        let tokens = self.verbatim(e.to_token_stream());
        self.emit(out, Op::Const(tokens), e.span())
    }
}

/// The elements of `array![..]`'s rows at nesting `depth`, flattened in row-major
/// order into `elems`, and the length of each level into `shape`; `false` when the
/// rows are ragged.
fn array_elems<'e>(
    items: &'e Punctuated<Expr, syn::Token![,]>,
    depth: usize,
    shape: &mut Vec<usize>,
    elems: &mut Vec<&'e Expr>,
) -> bool {
    match shape.get(depth) {
        Some(&n) if n != items.len() => return false,
        Some(_) => {}
        None => shape.push(items.len()),
    }
    let rows = items.iter().filter(|e| matches!(e, Expr::Array(_))).count();
    if rows == 0 {
        elems.extend(items.iter());
        return shape.len() == depth + 1;
    }
    rows == items.len()
        && items.iter().all(|e| match e {
            Expr::Array(row) => array_elems(&row.elems, depth + 1, shape, elems),
            _ => false,
        })
}

/// The values at the fallthrough (or break) leaves of blocks, in order.
/// The shape with the most tuple structure of two arms' values: a tuple wherever
/// either spells one out.
fn most_spelled(a: &Val, b: &Val) -> Val {
    match (a, b) {
        (Val::Tuple(x), Val::Tuple(y)) if x.len() == y.len() => {
            Val::Tuple(x.iter().zip(y).map(|(x, y)| most_spelled(x, y)).collect())
        }
        (Val::Tuple(_), _) => a.clone(),
        (_, Val::Tuple(_)) => b.clone(),
        _ => a.clone(),
    }
}

/// Whether `e` is a closure (in parentheses or not).
fn is_closure(e: &Expr) -> bool {
    match e {
        Expr::Closure(_) => true,
        Expr::Paren(p) => is_closure(&p.expr),
        _ => false,
    }
}

fn leaf_values(blocks: &[Block]) -> Vec<Option<Val>> {
    fn walk(b: &Block, out: &mut Vec<Option<Val>>) {
        match &b.tail {
            Tail::Leaf(l) => {
                if matches!(l.kind, LeafKind::Fallthrough | LeafKind::Break) {
                    out.push(l.value.clone());
                }
            }
            Tail::Branch(br) => br.arms.iter().for_each(|a| walk(a, out)),
        }
    }
    let mut out = Vec::new();
    blocks.iter().for_each(|b| walk(b, &mut out));
    out
}

fn remap(v: &Val, map: &HashMap<Var, Var>) -> Val {
    match v {
        Val::Atom(Atom::Var(x)) => Val::Atom(Atom::Var(*map.get(x).unwrap_or(x))),
        Val::Atom(a) => Val::Atom(a.clone()),
        Val::Tuple(vs) => Val::Tuple(vs.iter().map(|v| remap(v, map)).collect()),
    }
}

fn strip_type(p: &Pat) -> &Pat {
    match p {
        Pat::Type(t) => strip_type(&t.pat),
        Pat::Paren(p) => strip_type(&p.pat),
        other => other,
    }
}

fn else_stmts(e: &Option<(syn::token::Else, Box<Expr>)>) -> Vec<syn::Stmt> {
    match e {
        None => Vec::new(),
        Some((_, e)) => match &**e {
            Expr::Block(b) => b.block.stmts.clone(),
            other => vec![syn::Stmt::Expr(other.clone(), None)],
        },
    }
}

fn arm_stmts(body: &Expr) -> Vec<syn::Stmt> {
    match body {
        Expr::Block(b) if b.label.is_none() => b.block.stmts.clone(),
        other => vec![syn::Stmt::Expr(other.clone(), None)],
    }
}

fn pattern_names(p: &Pat, out: &mut Vec<Ident>) {
    match p {
        Pat::Ident(i) => {
            // A lone capitalised name is a constant or variant, not a binding.
            if !i.ident.to_string().starts_with(char::is_uppercase) {
                out.push(i.ident.clone());
            }
            if let Some((_, sub)) = &i.subpat {
                pattern_names(sub, out);
            }
        }
        Pat::Tuple(t) => t.elems.iter().for_each(|p| pattern_names(p, out)),
        Pat::TupleStruct(t) => t.elems.iter().for_each(|p| pattern_names(p, out)),
        Pat::Struct(s) => s.fields.iter().for_each(|f| pattern_names(&f.pat, out)),
        Pat::Or(o) => {
            if let Some(first) = o.cases.first() {
                pattern_names(first, out)
            }
        }
        Pat::Type(t) => pattern_names(&t.pat, out),
        Pat::Paren(p) => pattern_names(&p.pat, out),
        Pat::Reference(r) => pattern_names(&r.pat, out),
        Pat::Slice(s) => s.elems.iter().for_each(|p| pattern_names(p, out)),
        _ => {}
    }
}

/// Every identifier in `tokens`, so generated names avoid the user's.
/// Names assigned with `=` or `op=` in `tokens` (conservatively: `name =`,
/// `name +=`, ...), outside closures' own bindings.
fn assigned_names(tokens: TokenStream, out: &mut Vec<String>) {
    let file: Result<syn::Block, _> = syn::parse2(quote!({ #tokens }));
    if let Ok(block) = file {
        struct V<'a>(&'a mut Vec<String>);
        impl<'ast> syn::visit::Visit<'ast> for V<'_> {
            fn visit_expr_assign(&mut self, a: &'ast syn::ExprAssign) {
                collect_lhs(&a.left, self.0);
                syn::visit::visit_expr_assign(self, a);
            }
            fn visit_expr_binary(&mut self, b: &'ast syn::ExprBinary) {
                use BinOp::*;
                if matches!(
                    b.op,
                    AddAssign(_)
                        | SubAssign(_)
                        | MulAssign(_)
                        | DivAssign(_)
                        | RemAssign(_)
                        | BitAndAssign(_)
                        | BitOrAssign(_)
                        | BitXorAssign(_)
                        | ShlAssign(_)
                        | ShrAssign(_)
                ) {
                    collect_lhs(&b.left, self.0);
                }
                syn::visit::visit_expr_binary(self, b);
            }
            fn visit_expr_closure(&mut self, _: &'ast syn::ExprClosure) {}
        }
        fn collect_lhs(e: &Expr, out: &mut Vec<String>) {
            match e {
                Expr::Path(p) => {
                    if let Some(id) = p.path.get_ident() {
                        out.push(id.to_string());
                    }
                }
                Expr::Tuple(t) => t.elems.iter().for_each(|e| collect_lhs(e, out)),
                Expr::Paren(p) => collect_lhs(&p.expr, out),
                _ => {}
            }
        }
        syn::visit::Visit::visit_block(&mut V(out), &block);
    }
}

/// Whether `e` may leave its enclosing block early: a `return`, or a `break` or
/// `continue` that is not inside a loop of its own.
pub fn may_diverge(e: &Expr) -> bool {
    struct V {
        found: bool,
        loops: usize,
    }
    impl<'ast> syn::visit::Visit<'ast> for V {
        fn visit_expr_return(&mut self, _: &'ast syn::ExprReturn) {
            self.found = true;
        }
        fn visit_expr_break(&mut self, b: &'ast syn::ExprBreak) {
            if self.loops == 0 {
                self.found = true;
            }
            syn::visit::visit_expr_break(self, b);
        }
        fn visit_expr_continue(&mut self, _: &'ast syn::ExprContinue) {
            if self.loops == 0 {
                self.found = true;
            }
        }
        fn visit_expr_for_loop(&mut self, f: &'ast syn::ExprForLoop) {
            self.loops += 1;
            syn::visit::visit_expr_for_loop(self, f);
            self.loops -= 1;
        }
        fn visit_expr_while(&mut self, w: &'ast syn::ExprWhile) {
            self.loops += 1;
            syn::visit::visit_expr_while(self, w);
            self.loops -= 1;
        }
        fn visit_expr_loop(&mut self, l: &'ast syn::ExprLoop) {
            self.loops += 1;
            syn::visit::visit_expr_loop(self, l);
            self.loops -= 1;
        }
        fn visit_expr_closure(&mut self, _: &'ast syn::ExprClosure) {}
    }
    let mut v = V {
        found: false,
        loops: 0,
    };
    syn::visit::Visit::visit_expr(&mut v, e);
    v.found
}

fn contains_return(stmts: &[syn::Stmt]) -> bool {
    struct V(bool);
    impl<'ast> syn::visit::Visit<'ast> for V {
        fn visit_expr_return(&mut self, _: &'ast syn::ExprReturn) {
            self.0 = true;
        }
        fn visit_expr_closure(&mut self, _: &'ast syn::ExprClosure) {}
    }
    let mut v = V(false);
    for s in stmts {
        syn::visit::Visit::visit_stmt(&mut v, s);
    }
    v.0
}

/// Whether `e` is made of literals alone: `2.0`, `-1.5`, `(1.0 + 2.0) * 3.0`.
pub fn is_literal_expr(e: &Expr) -> bool {
    match e {
        Expr::Lit(_) => true,
        Expr::Paren(p) => is_literal_expr(&p.expr),
        Expr::Group(g) => is_literal_expr(&g.expr),
        Expr::Unary(u) => matches!(u.op, UnOp::Neg(_)) && is_literal_expr(&u.expr),
        Expr::Binary(b) => {
            matches!(
                b.op,
                BinOp::Add(_) | BinOp::Sub(_) | BinOp::Mul(_) | BinOp::Div(_) | BinOp::Rem(_)
            ) && is_literal_expr(&b.left)
                && is_literal_expr(&b.right)
        }
        _ => false,
    }
}

/// Calls `f` with every literal of `e`.
pub fn each_literal(e: &Expr, f: &mut impl FnMut(&syn::Lit)) {
    match e {
        Expr::Lit(l) => f(&l.lit),
        Expr::Paren(p) => each_literal(&p.expr, f),
        Expr::Group(g) => each_literal(&g.expr, f),
        Expr::Unary(u) => each_literal(&u.expr, f),
        Expr::Binary(b) => {
            each_literal(&b.left, f);
            each_literal(&b.right, f);
        }
        _ => {}
    }
}

/// An index made of integer literals (`1`, `[0, 2]`, `(1, 2)`), with every literal
/// typed `usize`; `None` for any other index.
fn usize_literals(e: &Expr) -> Option<TokenStream> {
    match e {
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Int(i),
            ..
        }) if i.suffix().is_empty() => {
            let v = syn::LitInt::new(&format!("{}usize", i.base10_digits()), i.span());
            Some(quote!(#v))
        }
        Expr::Array(a) => {
            let items: Option<Vec<TokenStream>> = a.elems.iter().map(usize_literals).collect();
            let items = items?;
            Some(quote!([#(#items),*]))
        }
        Expr::Tuple(t) => {
            let items: Option<Vec<TokenStream>> = t.elems.iter().map(usize_literals).collect();
            let items = items?;
            Some(quote!((#(#items,)*)))
        }
        Expr::Paren(p) => usize_literals(&p.expr),
        _ => None,
    }
}

/// `jvp!(f)(args..)`, `grad!(f)(args..)` and `value_and_grad!(f)(args..)` as the
/// calls they stand for, of companions `#[differentiable(jvp)]` writes beside `f`'s
/// others: `f::jvp(args..)`, and `f::grad_fn(args..)` (`value_and_grad_fn`), the
/// gradient as a function whose pullback is `f`'s Hessian-vector product (second
/// order, as `jax.grad` inside a function `jax.grad` differentiates). `None` for
/// another macro, or a `grad!` of a closure or with options. With a gradient, also
/// the check that `f` has those companions (`grad_fn_of::<f>()`), whose error says
/// why where rustc's would only say they are missing.
fn companion_call(
    m: &syn::ExprMacro,
    c: &syn::ExprCall,
) -> Option<(syn::ExprCall, Option<TokenStream>)> {
    // Also as `adjoint::jvp!` or `::adjoint::jvp!` (how generated code names it).
    let path = &m.mac.path;
    let named = |what: &str| {
        path.is_ident(what)
            || (path.segments.len() == 2
                && path.segments[0].ident == "adjoint"
                && path.segments[1].ident == what)
    };
    let companion = if named("jvp") {
        "jvp"
    } else if named("grad") {
        "grad_fn"
    } else if named("value_and_grad") {
        "value_and_grad_fn"
    } else {
        return None;
    };
    let f = syn::parse2::<syn::Path>(m.mac.tokens.clone()).ok()?;
    let check = (companion != "jvp").then(|| {
        let span = f.span();
        quote::quote_spanned!(span=> ::adjoint::__private::grad_fn_of::<#f>())
    });
    let call = syn::ExprCall {
        attrs: vec![],
        func: Box::new(Expr::Path(syn::ExprPath {
            attrs: vec![],
            qself: None,
            path: crate::names::companion_path(&f, companion, false),
        })),
        paren_token: c.paren_token,
        args: c.args.clone(),
    };
    Some((call, check))
}

/// Whether [`Lowerer::constant`] writes `e` inline (a literal, a path) rather than
/// binding it to a variable.
pub(super) fn is_inline_constant(e: &Expr) -> bool {
    matches!(e, Expr::Lit(_) | Expr::Path(_)) || is_literal_expr(e)
}
