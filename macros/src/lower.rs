//! Lowering: a function or closure body (syn) to the A-normal-form IR.
//!
//! Every subexpression gets a name; shadowing and assignment make new names; tuples
//! that are built and taken apart in the body exist only at compile time; `while`
//! becomes `loop { if !cond { break } .. }`; and a branch that may `return`, `break`
//! or `continue` takes the rest of its block into its arms, so every leaf of the
//! IR knows where control goes next.

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

/// Lowers a body with the given parameters.
pub fn lower(cx: &Ctxt, params: &[ParamSpec], body: &syn::Block) -> Func {
    lower_with(cx, params, body, OuterEnv::new())
}

fn lower_with(cx: &Ctxt, params: &[ParamSpec], body: &syn::Block, outer: OuterEnv) -> Func {
    let mut taken = HashSet::new();
    collect_idents(body.to_token_stream(), &mut taken);
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
        let mut idents = HashSet::new();
        collect_idents(tokens, &mut idents);
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
        let mut reads = Vec::new();
        // A closure bound with `let` or a nested `fn` is inlined where it is called:
        // it does not exist for a closure written as is to call.
        let inlined = self.visible_fns();
        let mut idents = HashSet::new();
        collect_idents(e.to_token_stream(), &mut idents);
        if let Some(name) = idents.iter().find(|n| inlined.contains_key(*n)) {
            self.cx.error_at(
                e,
                format!("`{name}` is inlined where it is called, so a closure given to this call cannot call it; write it as a #[differentiable] function, or use `mapv`"),
            );
            return poison();
        }
        let mut operand = |this: &mut Self, out: &mut Stmts, a: &Expr| -> TokenStream {
            if is_closure(a) {
                reads.extend(this.mentioned_vars(a.to_token_stream()));
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
            what: Built::ClosureCall,
        };
        Val::Atom(self.emit(out, op, e.span()))
    }

    /// A constant expression: inline if it is a literal, an expression of literals or
    /// a path (so that literals take their type where they are used), else bound once.
    fn constant(&mut self, out: &mut Stmts, e: &Expr) -> Atom {
        match e {
            Expr::Lit(_) | Expr::Path(_) => Atom::Lit(self.verbatim(e.to_token_stream())),
            _ if is_literal_expr(e) => Atom::Lit(e.to_token_stream()),
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

    // ----- blocks and statements -----

    /// Lowers `stmts` in a new scope. The block's value (its last expression) goes
    /// to a leaf of kind `end`.
    fn block(&mut self, stmts: &[syn::Stmt], region: &Region, end: LeafKind) -> Block {
        self.push_scope();
        let mut out = Vec::new();
        let tail = self.stmts(&mut out, stmts, region, end);
        self.pop_scope();
        Block { stmts: out, tail }
    }

    fn stmts(
        &mut self,
        out: &mut Stmts,
        stmts: &[syn::Stmt],
        region: &Region,
        end: LeafKind,
    ) -> Tail {
        for (i, stmt) in stmts.iter().enumerate() {
            let last = i + 1 == stmts.len();
            match stmt {
                syn::Stmt::Local(local) => self.local(out, local),
                syn::Stmt::Item(item) => self.nested_item(item),
                syn::Stmt::Macro(m) => {
                    // A statement macro (`println!`, `assert!`): emitted as written,
                    // as an expression (without its `;`).
                    let tokens = self.verbatim(m.mac.to_token_stream());
                    self.emit(out, Op::Const(tokens), m.span());
                }
                syn::Stmt::Expr(e, semi) => {
                    if let Some(tail) = self.diverging(e, &stmts[i + 1..], region, end) {
                        return tail;
                    }
                    match e {
                        Expr::Return(r) => {
                            let value = match &r.expr {
                                Some(e) => self.expr(out, e),
                                None => Val::Tuple(vec![]),
                            };
                            return self.leaf(LeafKind::Return, Some(value), region);
                        }
                        Expr::Break(b) => {
                            if b.label.is_some() {
                                self.cx.error_at(
                                    b,
                                    "labelled `break` is not supported in a #[differentiable] body",
                                );
                            }
                            let value = b.expr.as_ref().map(|e| self.expr(out, e));
                            return self.leaf(LeafKind::Break, value, region);
                        }
                        Expr::Continue(c) => {
                            if c.label.is_some() {
                                self.cx.error_at(c, "labelled `continue` is not supported in a #[differentiable] body");
                            }
                            return self.leaf(LeafKind::Continue, None, region);
                        }
                        _ => {}
                    }
                    if last && semi.is_none() {
                        let value = self.expr(out, e);
                        return self.leaf(end, Some(value), region);
                    }
                    self.expr(out, e);
                }
            }
        }
        self.leaf(end, None, region)
    }

    fn leaf(&mut self, kind: LeafKind, value: Option<Val>, region: &Region) -> Tail {
        let carries = region
            .carries
            .iter()
            .map(|(depth, name)| match self.scopes[*depth].get(name) {
                Some(Val::Atom(a)) => a.clone(),
                _ => Atom::Lit(quote!(())),
            })
            .collect();
        Tail::Leaf(Leaf {
            kind,
            value,
            carries,
        })
    }

    /// An `if` or `match` that may leave its block early: its arms take the rest of
    /// the block, and it ends the block.
    fn diverging(
        &mut self,
        e: &Expr,
        rest: &[syn::Stmt],
        region: &Region,
        end: LeafKind,
    ) -> Option<Tail> {
        if !matches!(e, Expr::If(_) | Expr::Match(_)) || !may_diverge(e) {
            return None;
        }
        let with_rest = |mut arm: Vec<syn::Stmt>| {
            if let Some(syn::Stmt::Expr(e, None)) = arm.last().cloned()
                && !rest.is_empty()
            {
                let n = arm.len();
                arm[n - 1] = syn::Stmt::Expr(e, Some(Default::default()));
            }
            arm.extend(rest.iter().cloned());
            arm
        };
        // Each arm starts from the outer variables as they are here: what one arm
        // assigns must not leak into the next.
        let mut tokens = e.to_token_stream();
        tokens.extend(rest.iter().map(|s| s.to_token_stream()));
        let outer = Region {
            carries: self.assigned_outer(tokens),
        };
        let before: Vec<Val> = outer
            .carries
            .iter()
            .map(|(d, n)| self.scopes[*d][n].clone())
            .collect();
        let branch = match e {
            Expr::If(i) => {
                let cond = self.condition(&i.cond);
                let then = self.block(&with_rest(i.then_branch.stmts.clone()), region, end);
                self.restore(&outer, &before);
                let els = self.block(&with_rest(else_stmts(&i.else_branch)), region, end);
                self.restore(&outer, &before);
                Branching {
                    kind: BranchKind::If { cond },
                    arms: vec![then, els],
                }
            }
            Expr::Match(m) => {
                let (scrutinee, pats) = self.match_head(m);
                let mut arms = Vec::new();
                let mut binds = Vec::new();
                for arm in &m.arms {
                    self.push_scope();
                    binds.push(self.bind_pattern_names(&arm.pat));
                    arms.push(self.block(&with_rest(arm_stmts(&arm.body)), region, end));
                    self.pop_scope();
                    self.restore(&outer, &before);
                }
                Branching {
                    kind: BranchKind::Match {
                        scrutinee,
                        pats,
                        binds,
                    },
                    arms,
                }
            }
            _ => return None,
        };
        Some(Tail::Branch(Box::new(branch)))
    }

    fn condition(&mut self, cond: &Expr) -> TokenStream {
        if let Expr::Let(l) = cond {
            self.cx.error_at(
                l,
                "`if let` is not supported in a #[differentiable] body; use `match`",
            );
        }
        self.verbatim(cond.to_token_stream())
    }

    fn match_head(&mut self, m: &syn::ExprMatch) -> (TokenStream, Vec<TokenStream>) {
        let scrutinee = self.verbatim(m.expr.to_token_stream());
        let pats = m
            .arms
            .iter()
            .map(|arm| {
                let pat = &arm.pat;
                match &arm.guard {
                    Some((_, g)) => {
                        let g = self.verbatim(g.to_token_stream());
                        quote!(#pat if #g)
                    }
                    None => quote!(#pat),
                }
            })
            .collect();
        (scrutinee, pats)
    }

    /// Binds the names a pattern (`match` arm, `for` loop) introduces: constants,
    /// named exactly as the user wrote them since the pattern is emitted as written.
    fn bind_pattern_names(&mut self, pat: &Pat) -> Vec<Var> {
        let mut names = Vec::new();
        pattern_names(pat, &mut names);
        names
            .into_iter()
            .map(|n| {
                let id = Var(self.vars.len() as u32);
                self.vars.push(VarInfo {
                    name: n.clone(),
                    ty: None,
                    mutable: false,
                });
                self.taken.insert(n.to_string());
                self.bind(n.to_string(), Val::Atom(Atom::Var(id)));
                id
            })
            .collect()
    }

    fn local(&mut self, out: &mut Stmts, local: &syn::Local) {
        let Some(init) = &local.init else {
            self.cx.error_at(
                local,
                "a `let` without a value is not supported in a #[differentiable] body",
            );
            return;
        };
        if let Some((_, diverge)) = &init.diverge {
            self.cx.error_at(
                diverge,
                "`let .. else` is not supported in a #[differentiable] body",
            );
        }
        let pat = strip_type(&local.pat);
        if let (Pat::Ident(id), Expr::Closure(c)) = (pat, &*init.expr) {
            self.local_closure(out, id, c);
            return;
        }
        if let (Pat::Tuple(pt), Expr::Call(_) | Expr::MethodCall(_)) = (pat, &*init.expr)
            && let Some(call) = self.call_target(out, &init.expr)
        {
            // `let (a, b) = f(x);`: one statement with a name per field.
            let mut dsts = Vec::new();
            let mut binds = Vec::new();
            let mut nested = Vec::new();
            for p in &pt.elems {
                match strip_type(p) {
                    Pat::Ident(id) => {
                        let v = self.fresh_user(&id.ident);
                        dsts.push(v);
                        binds.push(Some(id.ident.to_string()));
                    }
                    Pat::Wild(w) => {
                        dsts.push(self.temp(w.span()));
                        binds.push(None);
                    }
                    // A nested pattern: the field, then taken apart by the `field`
                    // rule (`let ((c, h), y) = cell.call(..);`).
                    other => {
                        dsts.push(self.temp(other.span()));
                        binds.push(None);
                        nested.push((dsts.len() - 1, other.clone()));
                    }
                }
            }
            out.push(Stmt::LetTuple {
                dsts: dsts.clone(),
                call,
            });
            for (d, b) in dsts.iter().zip(binds) {
                if let Some(name) = b {
                    self.bind(name, Val::Atom(Atom::Var(*d)));
                }
            }
            for (k, p) in nested {
                self.bind_pat(out, &p, Val::Atom(Atom::Var(dsts[k])));
            }
            return;
        }
        let val = self.expr(out, &init.expr);
        self.bind_pat(out, &local.pat, val);
        if let (Expr::Reference(_), Pat::Ident(id)) = (&*init.expr, strip_type(&local.pat))
            && let Some(refs) = self.ref_bound.last_mut()
        {
            refs.insert(id.ident.to_string());
        }
    }

    /// `let g = |v| ..;`: the closure is inlined where it is called, seeing the
    /// variables it captures as they are here. It is also bound as written, for
    /// expressions emitted as written that name it.
    fn local_closure(&mut self, out: &mut Stmts, id: &syn::PatIdent, c: &syn::ExprClosure) {
        if contains_return(&[syn::Stmt::Expr((*c.body).clone(), None)]) {
            self.cx.error_at(c, "a closure with `return` is not differentiated: give it one value at its end, or write it as a #[differentiable] function");
            return;
        }
        let mut names = HashSet::new();
        collect_idents(c.body.to_token_stream(), &mut names);
        let mut env = HashMap::new();
        let mut env_refs = HashSet::new();
        for name in names {
            if self.is_local(&name)
                && let Some(v) = self.lookup(&name)
            {
                if self.by_ref(&syn::parse_quote!(#name)) {
                    env_refs.insert(name.clone());
                }
                env.insert(name, v);
            }
        }
        let def = Inlined {
            params: c.inputs.iter().cloned().collect(),
            body: (*c.body).clone(),
            env,
            env_refs,
            fns: Some(self.visible_fns()),
            unsupported: None,
        };
        let tokens = self.verbatim(c.to_token_stream());
        let v = self.emit(out, Op::Const(tokens), c.span());
        if let Atom::Var(var) = v {
            self.rename_temp(var, &id.ident);
        }
        self.bind(id.ident.to_string(), Val::Atom(v));
        if let Some(fns) = self.inlined.last_mut() {
            fns.insert(id.ident.to_string(), std::rc::Rc::new(def));
        }
    }

    /// An item declared in the body: kept as written (at the top of the generated
    /// bodies); a nested `fn` is also inlined where it is called.
    fn nested_item(&mut self, item: &syn::Item) {
        if self.inlining.is_empty() {
            // Each generated body holds a copy; calls of a nested `fn` are inlined, so
            // a copy may go unused.
            self.items
                .push(quote!(#[allow(dead_code, unused_imports)] #item));
        }
        let syn::Item::Fn(f) = item else {
            return;
        };
        let params: Option<Vec<Pat>> = f
            .sig
            .inputs
            .iter()
            .map(|a| match a {
                syn::FnArg::Typed(t) => Some((*t.pat).clone()),
                syn::FnArg::Receiver(_) => None,
            })
            .collect();
        let generic = f
            .sig
            .generics
            .params
            .iter()
            .any(|p| !matches!(p, syn::GenericParam::Lifetime(_)));
        let unsupported = (generic || contains_return(&f.block.stmts) || params.is_none())
            .then(|| format!("the nested function `{}` is not differentiated (it is generic, takes `self` or has `return`): move it outside and mark it #[differentiable]", f.sig.ident));
        let def = Inlined {
            params: params.unwrap_or_default(),
            unsupported,
            body: Expr::Block(syn::ExprBlock {
                attrs: vec![],
                label: None,
                block: (*f.block).clone(),
            }),
            env: HashMap::new(),
            env_refs: HashSet::new(),
            fns: None,
        };
        if let Some(fns) = self.inlined.last_mut() {
            fns.insert(f.sig.ident.to_string(), std::rc::Rc::new(def));
        }
    }

    /// Every inlined function visible here, innermost binding winning.
    fn visible_fns(&self) -> HashMap<String, std::rc::Rc<Inlined>> {
        let mut all = HashMap::new();
        for level in &self.inlined {
            for (k, v) in level {
                all.insert(k.clone(), v.clone());
            }
        }
        all
    }

    /// The inlined function `name` if it is one here (a local of the same name
    /// declared later hides it).
    fn inlined_fn(&self, name: &str) -> Option<std::rc::Rc<Inlined>> {
        let fn_depth = (0..self.inlined.len())
            .rev()
            .find(|&d| self.inlined[d].contains_key(name))?;
        // A closure is bound as a variable too, at the same depth; a later `let`
        // of the same name hides it.
        match self.scope_of(name) {
            Some(d) if d > fn_depth => None,
            _ => self.inlined[fn_depth].get(name).cloned(),
        }
    }

    /// A call of a closure or nested function: its body, lowered here with its
    /// parameters bound to the arguments, in the environment it was made in.
    fn inline_call(
        &mut self,
        out: &mut Stmts,
        c: &syn::ExprCall,
        name: &str,
        def: &Inlined,
    ) -> Val {
        if self.inlining.iter().any(|n| n == name) {
            self.cx.error_at(c, format!("`{name}` calls itself: a recursive nested function is not differentiated; move it outside and mark it #[differentiable]"));
            return poison();
        }
        if c.args.len() != def.params.len() {
            self.cx.error_at(
                c,
                format!("`{name}` takes {} argument(s)", def.params.len()),
            );
            return poison();
        }
        let args: Vec<(Val, bool)> = c
            .args
            .iter()
            .map(|a| (self.expr(out, a), self.by_ref(a)))
            .collect();
        let mut env: HashMap<String, Val> = def.env.clone();
        let fns = def.fns.clone().unwrap_or_else(|| self.visible_fns());
        // The module's scope and loop variables of the environment stay as they are.
        let saved = (
            std::mem::replace(&mut self.scopes, vec![std::mem::take(&mut env)]),
            std::mem::replace(&mut self.ref_bound, vec![def.env_refs.clone()]),
            std::mem::replace(&mut self.inlined, vec![fns]),
            std::mem::replace(&mut self.memo, vec![HashMap::new()]),
            std::mem::take(&mut self.outer),
        );
        self.inlining.push(name.to_string());
        self.push_scope();
        for (pat, (val, by_ref)) in def.params.iter().zip(args) {
            self.bind_pat(out, pat, val);
            if let (true, Pat::Ident(id)) = (by_ref, strip_type(pat))
                && let Some(refs) = self.ref_bound.last_mut()
            {
                refs.insert(id.ident.to_string());
            }
        }
        let v = self.expr(out, &def.body);
        self.pop_scope();
        self.inlining.pop();
        (
            self.scopes,
            self.ref_bound,
            self.inlined,
            self.memo,
            self.outer,
        ) = saved;
        v
    }

    /// Whether `e` is passed by reference: written `&x`, or a name bound to one.
    fn by_ref(&self, e: &Expr) -> bool {
        if matches!(e, Expr::Reference(_)) {
            return true;
        }
        let Expr::Path(p) = e else { return false };
        let Some(id) = p.path.get_ident() else {
            return false;
        };
        let name = id.to_string();
        self.scope_of(&name)
            .is_some_and(|d| self.ref_bound.get(d).is_some_and(|r| r.contains(&name)))
    }

    fn bind_pat(&mut self, out: &mut Stmts, pat: &Pat, val: Val) {
        if let (Pat::Type(t), Val::Atom(Atom::Var(v))) = (pat, &val) {
            // `let p: f32 = ..`: the annotation may be what fixes the type.
            if self.is_fresh_temp(*v) {
                self.vars[v.0 as usize].ty = Some((*t.ty).clone());
            }
        }
        match strip_type(pat) {
            Pat::Ident(id) => {
                if id.by_ref.is_some() || id.subpat.is_some() {
                    self.cx.error_at(
                        id,
                        "`ref` and `@` patterns are not supported in a #[differentiable] body",
                    );
                }
                if let (Some(_), Val::Atom(Atom::Var(v))) = (&id.mutability, &val) {
                    self.vars[v.0 as usize].mutable = true;
                }
                // A fresh name, so the reverse sweep can still read the value it shadows.
                // A value just computed takes the user's name; an existing one is shared.
                if let Val::Atom(Atom::Var(v)) = &val
                    && self.is_fresh_temp(*v)
                {
                    self.rename_temp(*v, &id.ident);
                }
                let _ = &out;
                self.bind(id.ident.to_string(), val);
            }
            Pat::Wild(_) => {}
            Pat::Tuple(pt) => match val {
                Val::Tuple(vs) if vs.len() == pt.elems.len() => {
                    for (p, v) in pt.elems.iter().zip(vs) {
                        self.bind_pat(out, p, v);
                    }
                }
                Val::Atom(Atom::Var(v)) => {
                    // A tuple computed at run time: a call's result is destructured by
                    // the call itself; a constant's by its fields.
                    let fields = self.split_runtime_tuple(out, v, pt.elems.len(), pt);
                    for (p, f) in pt.elems.iter().zip(fields) {
                        self.bind_pat(out, p, f);
                    }
                }
                _ => self
                    .cx
                    .error_at(pt, "this tuple pattern does not match the value's shape"),
            },
            Pat::Paren(p) => self.bind_pat(out, &p.pat, val),
            other => self.cx.error_at(
                other,
                "only names, `_` and tuples may be bound in a #[differentiable] body",
            ),
        }
    }

    /// The fields of variable `v`, a tuple of `n` values produced at run time.
    fn split_runtime_tuple(
        &mut self,
        out: &mut Stmts,
        v: Var,
        n: usize,
        at: &dyn ToTokens,
    ) -> Vec<Val> {
        let last_is_call =
            matches!(out.last(), Some(Stmt::Let { dst, op: Op::Call(_), .. }) if *dst == v);
        if last_is_call {
            let Some(Stmt::Let {
                op: Op::Call(call), ..
            }) = out.pop()
            else {
                unreachable!("checked")
            };
            let dsts: Vec<Var> = (0..n).map(|_| self.temp(at.span())).collect();
            out.push(Stmt::LetTuple {
                dsts: dsts.clone(),
                call,
            });
            return dsts.into_iter().map(|d| Val::Atom(Atom::Var(d))).collect();
        }
        let is_const = self.defined_as_const(out, v);
        if !is_const {
            // A tuple made elsewhere (a parameter, a carry): its fields by the rule.
            let span = at.span();
            return (0..n)
                .map(|i| Val::Atom(self.tuple_field(out, v, i, span)))
                .collect();
        }
        let lifted = out
            .iter()
            .rev()
            .any(|s| matches!(s, Stmt::Let { dst, op: Op::Lifted(_), .. } if *dst == v));
        let name = self.vars[v.0 as usize].name.clone();
        (0..n)
            .map(|i| {
                let idx = syn::Index::from(i);
                let field = quote!(#name.#idx);
                let op = if lifted {
                    Op::Lifted(field)
                } else {
                    Op::Const(field)
                };
                Val::Atom(self.emit(out, op, at.span()))
            })
            .collect()
    }

    /// Field `i` of the tuple `v`, by the `field` rule.
    fn tuple_field(&mut self, out: &mut Stmts, v: Var, i: usize, span: Span) -> Atom {
        let index = syn::Index::from(i);
        let at = quote!(::adjoint::__private::At::<#index>);
        let operand = Arg {
            atom: Atom::Var(v),
            by_ref: true,
        };
        let native = Native::Function(quote!(::adjoint::__private::field));
        self.prim(
            out,
            &ops::FIELD,
            vec![operand],
            vec![Atom::Lit(at)],
            native,
            span,
        )
    }

    /// `v` taken apart, where it is a tuple made at run time, to the tuple structure
    /// of `shape`.
    fn conform(&mut self, out: &mut Stmts, v: Val, shape: &Val, at: &dyn ToTokens) -> Val {
        match (v, shape) {
            (Val::Atom(Atom::Var(var)), Val::Tuple(parts)) => {
                let fields = self.split_runtime_tuple(out, var, parts.len(), at);
                let conformed = fields
                    .into_iter()
                    .zip(parts)
                    .map(|(f, p)| self.conform(out, f, p, at))
                    .collect();
                Val::Tuple(conformed)
            }
            (Val::Tuple(vs), Val::Tuple(parts)) if vs.len() == parts.len() => Val::Tuple(
                vs.into_iter()
                    .zip(parts)
                    .map(|(v, p)| self.conform(out, v, p, at))
                    .collect(),
            ),
            (v, _) => v,
        }
    }

    fn defined_as_const(&self, out: &Stmts, v: Var) -> bool {
        out.iter().rev().any(
            |s| matches!(s, Stmt::Let { dst, op: Op::Const(_) | Op::Lifted(_) | Op::Build { .. }, .. } if *dst == v),
        )
    }

    // ----- expressions -----

    fn expr(&mut self, out: &mut Stmts, e: &Expr) -> Val {
        let span = e.span();
        match e {
            Expr::Paren(p) => self.expr(out, &p.expr),
            Expr::Group(g) => self.expr(out, &g.expr),
            Expr::Lit(_) => Val::Atom(Atom::Lit(e.to_token_stream())),
            Expr::Path(p) => {
                if let Some(id) = p.path.get_ident()
                    && let Some(v) = self.lookup(&id.to_string())
                {
                    return v;
                }
                Val::Atom(Atom::Lit(e.to_token_stream()))
            }
            Expr::Reference(r) => self.expr(out, &r.expr),
            Expr::Unary(u) => match u.op {
                UnOp::Deref(_) => self.expr(out, &u.expr),
                UnOp::Neg(_) => {
                    if let Expr::Lit(_) = &*u.expr {
                        return Val::Atom(Atom::Lit(e.to_token_stream()));
                    }
                    let x = self.operand(out, &u.expr);
                    Val::Atom(self.prim(out, &ops::NEG, vec![x], vec![], Native::Neg, span))
                }
                _ => Val::Atom(self.constant(out, e)),
            },
            Expr::Binary(b) => self.binary(out, b),
            Expr::Assign(a) => {
                self.assign_to(out, &a.left, &a.right, None);
                Val::Tuple(vec![])
            }
            // `()` is a constant like any literal.
            Expr::Tuple(t) if t.elems.is_empty() => Val::Atom(Atom::Lit(quote!(()))),
            Expr::Tuple(t) => Val::Tuple(t.elems.iter().map(|e| self.expr(out, e)).collect()),
            Expr::Field(f) => {
                let base = match &*f.base {
                    // A module's field (a hyperparameter): a copy, so nothing borrows `self`.
                    Expr::Path(p) if p.path.is_ident("self") => {
                        return Val::Atom(self.emit(
                            out,
                            Op::Const(quote!(::core::clone::Clone::clone(&#e))),
                            e.span(),
                        ));
                    }
                    other => self.expr(out, other),
                };
                match (&f.member, base) {
                    (syn::Member::Unnamed(i), Val::Tuple(vs)) if (i.index as usize) < vs.len() => {
                        vs[i.index as usize].clone()
                    }
                    (_, Val::Atom(Atom::Lit(_))) => Val::Atom(self.constant(out, e)),
                    // A tuple's field: a rule, differentiated.
                    (syn::Member::Unnamed(i), Val::Atom(Atom::Var(v))) => {
                        Val::Atom(self.tuple_field(out, v, i.index as usize, e.span()))
                    }
                    // A field of a local: constant, unless the local is differentiated
                    // (then an error: see `Built::Field`).
                    (member, Val::Atom(Atom::Var(v))) => {
                        let base = self.val_tokens(&Val::Atom(Atom::Var(v)));
                        let op = Op::Build {
                            tokens: quote!(#base.#member),
                            reads: vec![v],
                            what: Built::Field,
                        };
                        Val::Atom(self.emit(out, op, e.span()))
                    }
                    _ => {
                        if self.mentions_local(f.base.to_token_stream()) {
                            self.cx.error_at(f, "field access on a differentiated value is not supported; take tuples apart with `let (a, b) = ..`");
                        }
                        Val::Atom(self.constant(out, e))
                    }
                }
            }
            Expr::Block(b) => {
                if b.label.is_some() {
                    self.cx.error_at(
                        b,
                        "labelled blocks are not supported in a #[differentiable] body",
                    );
                }
                self.inline_block(out, &b.block.stmts)
            }
            Expr::Unsafe(u) => {
                self.cx.error_at(u, "`unsafe` blocks cannot be differentiated; move the unsafe code into a function with a #[custom_vjp] rule");
                poison()
            }
            Expr::If(i) => self.branch_stmt(out, e, Some(i), None),
            Expr::Match(m) => self.branch_stmt(out, e, None, Some(m)),
            Expr::ForLoop(_) | Expr::While(_) | Expr::Loop(_) => self.loop_stmt(out, e),
            Expr::MethodCall(m) => self.method_call(out, m),
            Expr::Call(c) => self.call(out, c),
            Expr::Index(ix) => {
                if !self.mentions_local(ix.expr.to_token_stream()) {
                    return Val::Atom(self.constant(out, e));
                }
                let base = self.operand(out, &ix.expr);
                // Integer literals index with `usize`, as rustc infers them in `x[1]`
                // (the rule's index type is generic).
                let idx = match usize_literals(&ix.index) {
                    Some(t) => Atom::Lit(t),
                    None => self.const_atom(out, &ix.index),
                };
                Val::Atom(self.prim(out, &ops::INDEX, vec![base], vec![idx], Native::Index, span))
            }
            Expr::Cast(c) => {
                let ty = c.ty.to_token_stream().to_string();
                if (ty == "f32" || ty == "f64") && self.mentions_local(c.expr.to_token_stream()) {
                    let x = self.operand(out, &c.expr);
                    let t = c.ty.to_token_stream();
                    Val::Atom(self.prim(
                        out,
                        &ops::CAST,
                        vec![x],
                        vec![Atom::Lit(t.clone())],
                        Native::Cast(t),
                        span,
                    ))
                } else {
                    Val::Atom(self.constant(out, e))
                }
            }
            Expr::Closure(c) => {
                self.cx.error_at(c, "closures are only differentiated as the argument of `mapv`; write a #[differentiable] function instead");
                poison()
            }
            Expr::Return(_) | Expr::Break(_) | Expr::Continue(_) => {
                self.cx.error_at(e, "`return`, `break` and `continue` must be statements of their own in a #[differentiable] body");
                poison()
            }
            Expr::Try(t) => {
                self.cx.error_at(
                    t,
                    "the `?` operator is not supported in a #[differentiable] body",
                );
                poison()
            }
            Expr::Macro(m)
                if ["grad", "value_and_grad", "vjp", "jvp", "vmap"]
                    .iter()
                    .any(|n| m.mac.path.is_ident(n))
                    && !self.scopes_vars.is_empty() =>
            {
                if (m.mac.path.is_ident("grad") || m.mac.path.is_ident("value_and_grad"))
                    && let Some(v) = self.lifted_grad(out, e, m)
                {
                    return v;
                }
                let tokens = self.verbatim(e.to_token_stream());
                Val::Atom(self.emit(out, Op::Lifted(tokens), e.span()))
            }
            Expr::Array(_) | Expr::Struct(_) if self.mentions_local(e.to_token_stream()) => {
                // A module built from locals (`Outer { inner }`), a list of indices.
                let reads = self.mentioned_vars(e.to_token_stream());
                let tokens = self.verbatim(e.to_token_stream());
                let what = Built::Literal;
                Val::Atom(self.emit(
                    out,
                    Op::Build {
                        tokens,
                        reads,
                        what,
                    },
                    e.span(),
                ))
            }
            Expr::Macro(m) if self.mentions_local(m.mac.tokens.clone()) => self.macro_call(out, m),
            Expr::Macro(_)
            | Expr::Array(_)
            | Expr::Repeat(_)
            | Expr::Range(_)
            | Expr::Struct(_) => Val::Atom(self.constant(out, e)),
            Expr::Async(_)
            | Expr::Await(_)
            | Expr::Yield(_)
            | Expr::TryBlock(_)
            | Expr::Const(_) => {
                self.cx.error_at(
                    e,
                    "this expression is not supported in a #[differentiable] body",
                );
                poison()
            }
            Expr::Let(l) => {
                self.cx.error_at(
                    l,
                    "`let` expressions are not supported in a #[differentiable] body",
                );
                poison()
            }
            _ => {
                self.cx.error_at(
                    e,
                    "this expression is not supported in a #[differentiable] body",
                );
                poison()
            }
        }
    }

    /// `grad!(cx, |mdl, cx, a..| mdl.call(cx, a..), Child, args..)` (or
    /// `value_and_grad!`) with a constant child: a statement that can be differentiated
    /// again. Other forms stay opaque.
    fn lifted_grad(&mut self, out: &mut Stmts, e: &Expr, m: &syn::ExprMacro) -> Option<Val> {
        let mut input: crate::parse::transform::TransformInput = m.mac.parse_body().ok()?;
        // `has_aux` is covered: the aux is one more output of the child's forward mode.
        let has_aux = std::mem::take(&mut input.has_aux);
        let items = &input.positional;
        if items.len() < 4 || !input.plain() {
            return None;
        }
        let Expr::Closure(c) = &items[1] else {
            return None;
        };
        let names: Vec<Ident> = c
            .inputs
            .iter()
            .map(|p| match strip_type(p) {
                Pat::Ident(i) => Some(i.ident.clone()),
                _ => None,
            })
            .collect::<Option<_>>()?;
        let n = items.len() - 3;
        if names.len() != n + 2 {
            return None;
        }
        // The body must be exactly `mdl.call(cx, a..)` with the closure's parameters.
        let Expr::MethodCall(call) = &*c.body else {
            return None;
        };
        let recv_ok = matches!(&*call.receiver, Expr::Path(p) if p.path.is_ident(&names[0]));
        let args_ok = call.method == "call"
            && call.args.len() == n + 1
            && call
                .args
                .iter()
                .zip(&names[1..])
                .all(|(a, nm)| matches!(a, Expr::Path(p) if p.path.is_ident(nm)));
        if !recv_ok || !args_ok || self.mentions_local(items[2].to_token_stream()) {
            return None;
        }
        let Expr::Path(sp) = &items[0] else {
            return None;
        };
        let scope = match self.lookup(&sp.path.get_ident()?.to_string())? {
            Val::Atom(a) => a,
            Val::Tuple(_) => return None,
        };
        let args: Vec<Arg> = items[3..].iter().map(|a| self.operand(out, a)).collect();
        let value = m
            .mac
            .path
            .is_ident("value_and_grad")
            .then(|| self.temp(e.span()));
        let aux = has_aux.then(|| self.temp(e.span()));
        let dsts: Vec<Var> = (0..n).map(|_| self.temp(e.span())).collect();
        let tokens = self.verbatim(e.to_token_stream());
        let module = items[2].to_token_stream();
        out.push(Stmt::LetLifted(Lifted {
            value,
            aux,
            dsts: dsts.clone(),
            tokens,
            module,
            scope,
            args,
        }));
        let var = |v: Var| Val::Atom(Atom::Var(v));
        let grads = Val::Tuple(dsts.into_iter().map(var).collect());
        // grad!: `grads` or `(grads, aux)`; value_and_grad!: `(value, grads)` or
        // `((value, aux), grads)`.
        Some(match (value, aux) {
            (None, None) => grads,
            (None, Some(a)) => Val::Tuple(vec![grads, var(a)]),
            (Some(v), None) => Val::Tuple(vec![var(v), grads]),
            (Some(v), Some(a)) => Val::Tuple(vec![Val::Tuple(vec![var(v), var(a)]), grads]),
        })
    }

    /// A macro call that reads local variables: `dbg!(x)` is `x`, printed as `dbg!`
    /// prints it; `array![..]` of scalars is the rule `from_elems`; any other is a
    /// constant, and an error if it is given a differentiated value (activity's check).
    fn macro_call(&mut self, out: &mut Stmts, m: &syn::ExprMacro) -> Val {
        let span = m.span();
        let name = m.mac.path.segments.last().map(|s| s.ident.clone());
        let args = m
            .mac
            .parse_body_with(Punctuated::<Expr, syn::Token![,]>::parse_terminated)
            .ok();
        match (name.as_ref().map(Ident::to_string).as_deref(), args) {
            (Some("dbg"), Some(args)) if args.len() == 1 => {
                let text = args[0].to_token_stream();
                let v = self.expr(out, &args[0]);
                let value = self.val_tokens(&v);
                let print = quote::quote_spanned!(span=>
                    ::std::eprintln!(
                        "[{}:{}:{}] {} = {:#?}",
                        ::core::file!(),
                        ::core::line!(),
                        ::core::column!(),
                        ::core::stringify!(#text),
                        &#value
                    )
                );
                self.emit(out, Op::Const(print), span);
                v
            }
            (Some("array"), Some(args)) => {
                let mut shape = Vec::new();
                let mut elems = Vec::new();
                if !array_elems(&args, 0, &mut shape, &mut elems) || elems.is_empty() {
                    self.cx.error_at(m, "`array!` of differentiated values takes scalars, nested as rows of equal length: `array![[a, b], [c, d]]`");
                    return poison();
                }
                let operands = elems.iter().map(|e| self.operand(out, e)).collect();
                let shape = shape.iter().map(|n| syn::Index::from(*n));
                let shape = Atom::Lit(quote!((#(#shape,)*)));
                Val::Atom(self.prim(
                    out,
                    &ops::FROM_ELEMS,
                    operands,
                    vec![shape],
                    Native::Rule,
                    span,
                ))
            }
            _ => {
                let reads = self.mentioned_vars(m.mac.tokens.clone());
                let tokens = self.verbatim(m.to_token_stream());
                let what = Built::Macro(name.unwrap_or_else(|| Ident::new("macro", span)));
                Val::Atom(self.emit(
                    out,
                    Op::Build {
                        tokens,
                        reads,
                        what,
                    },
                    span,
                ))
            }
        }
    }

    /// A block whose statements join the current list (its scope ends after it).
    fn inline_block(&mut self, out: &mut Stmts, stmts: &[syn::Stmt]) -> Val {
        self.push_scope();
        let mut value = Val::Tuple(vec![]);
        for (i, stmt) in stmts.iter().enumerate() {
            match stmt {
                syn::Stmt::Local(l) => self.local(out, l),
                syn::Stmt::Expr(e, semi) => {
                    if matches!(e, Expr::Return(_) | Expr::Break(_) | Expr::Continue(_))
                        || may_diverge(e)
                    {
                        self.cx.error_at(e, "`return`, `break` and `continue` inside a block expression are not supported; move them into an `if` of their own");
                        continue;
                    }
                    let v = self.expr(out, e);
                    if i + 1 == stmts.len() && semi.is_none() {
                        value = v;
                    }
                }
                syn::Stmt::Macro(m) => {
                    let tokens = self.verbatim(m.mac.to_token_stream());
                    self.emit(out, Op::Const(tokens), m.span());
                }
                syn::Stmt::Item(item) => self.nested_item(item),
            }
        }
        self.pop_scope();
        value
    }

    fn binary(&mut self, out: &mut Stmts, b: &syn::ExprBinary) -> Val {
        let span = b.span();
        let (rule, sym, assign): (&'static Rule, TokenStream, bool) = match b.op {
            BinOp::Add(_) => (&ops::ADD, quote!(+), false),
            BinOp::Sub(_) => (&ops::SUB, quote!(-), false),
            BinOp::Mul(_) => (&ops::MUL, quote!(*), false),
            BinOp::Div(_) => (&ops::DIV, quote!(/), false),
            BinOp::AddAssign(_) => (&ops::ADD, quote!(+), true),
            BinOp::SubAssign(_) => (&ops::SUB, quote!(-), true),
            BinOp::MulAssign(_) => (&ops::MUL, quote!(*), true),
            BinOp::DivAssign(_) => (&ops::DIV, quote!(/), true),
            BinOp::Rem(_) | BinOp::RemAssign(_) if self.mentions_local(b.to_token_stream()) => {
                self.cx.error_at(b, "`%` has no derivative rule; wrap it in `no_grad(..)` if its operands are constants");
                return poison();
            }
            _ => {
                if matches!(
                    b.op,
                    BinOp::BitAndAssign(_)
                        | BinOp::BitOrAssign(_)
                        | BinOp::BitXorAssign(_)
                        | BinOp::ShlAssign(_)
                        | BinOp::ShrAssign(_)
                        | BinOp::RemAssign(_)
                ) {
                    // Integer bookkeeping such as `mask |= 1`: a constant update.
                    let e = Expr::Binary(b.clone());
                    let new = self.constant_update(out, &e, &b.left);
                    return new;
                }
                return Val::Atom(self.constant(out, &Expr::Binary(b.clone())));
            }
        };
        if assign {
            let e = Expr::Binary(syn::ExprBinary {
                attrs: vec![],
                left: b.left.clone(),
                op: match b.op {
                    BinOp::AddAssign(_) => BinOp::Add(Default::default()),
                    BinOp::SubAssign(_) => BinOp::Sub(Default::default()),
                    BinOp::MulAssign(_) => BinOp::Mul(Default::default()),
                    _ => BinOp::Div(Default::default()),
                },
                right: b.right.clone(),
            });
            self.assign_to(out, &b.left, &e, Some(span));
            return Val::Tuple(vec![]);
        }
        if !self.mentions_local(b.to_token_stream()) {
            return Val::Atom(self.constant(out, &Expr::Binary(b.clone())));
        }
        let l = self.operand(out, &b.left);
        let r = self.operand(out, &b.right);
        if rule.func == "mul"
            && matches!((&l.atom, &r.atom), (Atom::Var(a), Atom::Var(b)) if a == b)
        {
            // `x * x`: one pullback (2 x ct) instead of two and a sum.
            return Val::Atom(self.prim(out, &ops::SQUARE, vec![l], vec![], Native::Square, span));
        }
        Val::Atom(self.prim(out, rule, vec![l, r], vec![], Native::Binary(sym), span))
    }

    fn constant_update(&mut self, out: &mut Stmts, e: &Expr, left: &Expr) -> Val {
        let Expr::Path(p) = left else {
            self.cx.error_at(
                left,
                "only local variables may be assigned in a #[differentiable] body",
            );
            return poison();
        };
        let Some(id) = p.path.get_ident() else {
            return Val::Tuple(vec![]);
        };
        // `x op= y` as `{ let mut t = x; t op= y; t }`.
        let cur = self.verbatim(left.to_token_stream());
        let Expr::Binary(b) = e else {
            return Val::Tuple(vec![]);
        };
        let op = &b.op;
        let rhs = self.verbatim(b.right.to_token_stream());
        let dst = self.emit(
            out,
            Op::Const(quote!({ let mut __v = #cur; __v #op #rhs; __v })),
            e.span(),
        );
        self.assign(&id.to_string(), Val::Atom(dst), e.span());
        Val::Tuple(vec![])
    }

    fn assign_to(&mut self, out: &mut Stmts, left: &Expr, right: &Expr, _span: Option<Span>) {
        match left {
            Expr::Path(p) if p.path.get_ident().is_some() => {
                let name = p.path.get_ident().expect("checked").to_string();
                let v = self.expr(out, right);
                // A fresh name for the new value, so the old one stays readable.
                if let Val::Atom(Atom::Var(var)) = &v
                    && self.is_fresh_temp(*var)
                {
                    let id = p.path.get_ident().expect("checked").clone();
                    self.rename_temp(*var, &id);
                }
                self.assign(&name, v, left.span());
            }
            Expr::Tuple(t) => {
                let v = self.expr(out, right);
                match v {
                    Val::Tuple(vs) if vs.len() == t.elems.len() => {
                        for (l, v) in t.elems.iter().zip(vs) {
                            if let Expr::Path(p) = l
                                && let Some(id) = p.path.get_ident()
                            {
                                self.assign(&id.to_string(), v, l.span());
                                continue;
                            }
                            if !matches!(l, Expr::Infer(_)) {
                                self.cx.error_at(l, "only local variables may be assigned in a #[differentiable] body");
                            }
                        }
                    }
                    _ => self
                        .cx
                        .error_at(t, "this tuple assignment does not match the value's shape"),
                }
            }
            Expr::Index(ix) => {
                self.cx.error_at(ix, "writing into an array element is not supported in a #[differentiable] body; build the array from differentiable operations (e.g. `concatenate`, `stack`, `mapv`)");
            }
            Expr::Field(f) => {
                self.cx.error_at(
                    f,
                    "assigning to a field is not supported in a #[differentiable] body",
                );
            }
            other => self.cx.error_at(
                other,
                "only local variables may be assigned in a #[differentiable] body",
            ),
        }
    }

    /// Whether `var` is a temporary just made for an expression (so it may take a
    /// user's name instead of being copied).
    fn is_fresh_temp(&self, var: Var) -> bool {
        self.vars[var.0 as usize]
            .name
            .to_string()
            .starts_with("__t")
    }

    fn rename_temp(&mut self, var: Var, to: &Ident) {
        let base = to.to_string();
        let mut name = base.clone();
        let mut k = 1;
        while self.taken.contains(&name) && self.vars.iter().any(|v| v.name == name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.taken.insert(name.clone());
        self.vars[var.0 as usize].name = crate::hygiene::ident(&name, to.span());
    }

    fn prim(
        &mut self,
        out: &mut Stmts,
        rule: &'static Rule,
        operands: Vec<Arg>,
        consts: Vec<Atom>,
        native: Native,
        span: Span,
    ) -> Atom {
        let key = {
            let atom_key = |a: &Atom| match a {
                Atom::Var(v) => format!("v{}", v.0),
                Atom::Lit(t) => t.to_string(),
            };
            let ops: Vec<String> = operands.iter().map(|a| atom_key(&a.atom)).collect();
            let cs: Vec<String> = consts.iter().map(atom_key).collect();
            format!("{}({})[{}]", rule.func, ops.join(","), cs.join(","))
        };
        if let Some(v) = self.memo.iter().rev().find_map(|m| m.get(&key)) {
            return Atom::Var(*v);
        }
        let atom = self.emit(
            out,
            Op::Prim {
                rule,
                operands,
                consts,
                native,
            },
            span,
        );
        if let (Atom::Var(v), Some(m)) = (&atom, self.memo.last_mut()) {
            m.insert(key, *v);
        }
        atom
    }

    /// An operand: its atom, and whether the user wrote `&` before it.
    fn operand(&mut self, out: &mut Stmts, e: &Expr) -> Arg {
        let by_ref = self.by_ref(e);
        let v = self.expr(out, e);
        Arg {
            atom: self.atom(v, e.span()),
            by_ref,
        }
    }

    fn args(&mut self, out: &mut Stmts, args: impl IntoIterator<Item = Expr>) -> Vec<Arg> {
        args.into_iter()
            .map(|a| {
                let by_ref = self.by_ref(&a);
                // A constant argument (a shape `(3, 4)`, a name) is passed as written.
                if !self.mentions_local(a.to_token_stream()) {
                    let inner = match &a {
                        Expr::Reference(r) => &*r.expr,
                        other => other,
                    };
                    return Arg {
                        atom: self.constant(out, inner),
                        by_ref,
                    };
                }
                let span = a.span();
                let v = self.expr(out, &a);
                Arg {
                    atom: self.packed(out, v, span),
                    by_ref,
                }
            })
            .collect()
    }

    /// A value as one atom: a tuple packed by the `tuple` rule (differentiated, so
    /// that `f((c, h), x)` passes the cotangents of `c` and `h` back).
    fn packed(&mut self, out: &mut Stmts, v: Val, span: Span) -> Atom {
        match v {
            Val::Atom(a) => a,
            Val::Tuple(vs) if vs.is_empty() => Atom::Lit(quote!(())),
            Val::Tuple(vs) => {
                let operands = vs
                    .into_iter()
                    .map(|v| Arg {
                        atom: self.packed(out, v, span),
                        by_ref: false,
                    })
                    .collect();
                self.prim(out, &ops::TUPLE, operands, vec![], Native::Tuple, span)
            }
        }
    }

    fn method_call(&mut self, out: &mut Stmts, m: &syn::ExprMethodCall) -> Val {
        let name = m.method.to_string();
        if !self.mentions_local(m.to_token_stream()) {
            return Val::Atom(self.constant(out, &Expr::MethodCall(m.clone())));
        }
        // A call given a closure (`ids.map(|i| ..)`, `iter().map(..)`) other than
        // `mapv`: one constant expression as written, so that the closure's types come
        // from the call; a differentiated value in it is an error (see `Built`).
        if name != "mapv" && m.args.iter().any(is_closure) {
            return self.closure_call(out, &Expr::MethodCall(m.clone()));
        }
        let recv_is_self = matches!(&*m.receiver, Expr::Path(p) if p.path.is_ident("self"));
        if (name == "unwrap" || name == "expect") && !recv_is_self {
            if let Expr::MethodCall(inner) = &*m.receiver
                && let Some(rule) = ops::unwrapped_method(&inner.method.to_string())
            {
                let suffix = m.method.to_token_stream();
                let args = m.args.iter().map(|a| self.verbatim(a.to_token_stream()));
                let suffix = quote!(.#suffix(#(#args),*));
                return self.method_prim(out, inner, rule, suffix);
            }
            if let Expr::Call(c) = &*m.receiver
                && let Some(v) = self.variadic(out, c)
            {
                return v;
            }
            if let Expr::MethodCall(inner) = &*m.receiver
                && (inner.method == "apply" || inner.method == "apply_with")
                && self.mentions_local(inner.args.to_token_stream())
            {
                // `model.apply(vars, x).unwrap()`, `model.apply_with(vars, options,
                // x).unwrap()`: the module applied to variables.
                let span = inner.method.span();
                let receiver = self.receiver(out, &inner.receiver, span);
                let args = self.args(out, inner.args.iter().cloned());
                let generics = inner.turbofish.to_token_stream();
                let call = Call {
                    callee: Callee::Method {
                        receiver,
                        name: inner.method.clone(),
                        generics,
                    },
                    args,
                    span,
                    scoped: Scoped::Apply,
                };
                return Val::Atom(self.emit(out, Op::Call(call), span));
            }
        }
        if recv_is_self {
            return self.method_companion(out, m);
        }
        if (m.method != "param" && self.is_scope(&m.receiver))
            || (self.is_scope_effect(&m.receiver) && !self.mentions_local(m.args.to_token_stream()))
        {
            // State and randomness (`cx.variable`, `cx.put`, `cx.sow`, `cx.make_rng`,
            // `cx.bind`): effects whose values carry no derivative, as Flax's mutable
            // collections are not differentiated.
            return Val::Atom(self.constant(out, &Expr::MethodCall(m.clone())));
        }
        if ops::IDENTITY_METHODS.contains(&name.as_str()) && m.args.is_empty() {
            return self.expr(out, &m.receiver);
        }
        if ops::CONSTANT_METHODS.contains(&name.as_str()) {
            return Val::Atom(self.constant(out, &Expr::MethodCall(m.clone())));
        }
        if name == "mapv" {
            return self.mapv(out, m);
        }
        if ops::unwrapped_method(&name).is_some() {
            self.cx.error_at(&m.method, format!("`{name}` returns an Option or Result: call `.unwrap()` on it directly, as in `x.{name}(..).unwrap()`"));
            return poison();
        }
        // (With a turbofish it is another type's method: `iter().sum::<f64>()`.)
        if let Some(rule) = ops::method(&name).filter(|_| m.turbofish.is_none()) {
            return self.method_prim(out, m, rule, TokenStream::new());
        }
        self.method_companion(out, m)
    }

    fn method_prim(
        &mut self,
        out: &mut Stmts,
        m: &syn::ExprMethodCall,
        rule: &'static Rule,
        suffix: TokenStream,
    ) -> Val {
        let span = m.method.span();
        let n_operand_args = rule.operands.saturating_sub(1);
        let n_args = n_operand_args + rule.const_args();
        if m.args.len() != n_args {
            self.cx.error_at(
                m,
                format!("`{}` takes {} argument(s) here", m.method, n_args),
            );
            return poison();
        }
        let mut operands = vec![self.operand(out, &m.receiver)];
        for a in m.args.iter().take(n_operand_args) {
            operands.push(self.operand(out, a));
        }
        let consts = m
            .args
            .iter()
            .skip(n_operand_args)
            .map(|a| self.const_atom(out, a))
            .collect();
        let native = Native::Method {
            name: m.method.clone(),
            suffix,
        };
        Val::Atom(self.prim(out, rule, operands, consts, native, span))
    }

    /// Whether `e` is a call of the scope's state or randomness methods
    /// (`cx.make_rng("dropout")`), so that a method on its result
    /// (`cx.make_rng(..).random()`) is a constant as a whole.
    fn is_scope_effect(&mut self, e: &Expr) -> bool {
        match e {
            Expr::MethodCall(m) => {
                (m.method != "param" && self.is_scope(&m.receiver))
                    || (self.is_scope_effect(&m.receiver)
                        && !self.mentions_local(m.args.to_token_stream()))
            }
            Expr::Paren(p) => self.is_scope_effect(&p.expr),
            _ => false,
        }
    }

    /// Whether `e` names the module's scope.
    fn is_scope(&mut self, e: &Expr) -> bool {
        let Expr::Path(p) = e else { return false };
        let Some(id) = p.path.get_ident() else {
            return false;
        };
        matches!(self.lookup(&id.to_string()), Some(Val::Atom(Atom::Var(v))) if self.scopes_vars.contains(&v))
    }

    /// How a call involves the scope: `cx.param(..)`, or a submodule's call taking `cx`.
    fn scoped(&self, receiver: Option<&Arg>, name: &Ident, args: &[Arg]) -> Scoped {
        let is_scope = |a: &Arg| a.atom.var().is_some_and(|v| self.scopes_vars.contains(&v));
        if receiver.is_some_and(is_scope) {
            return if name == "param" {
                Scoped::Param
            } else {
                Scoped::No
            };
        }
        if args.iter().any(is_scope) {
            return Scoped::Module;
        }
        Scoped::No
    }

    /// A method's receiver as an operand (`&x` passes `x` by reference).
    fn receiver(&mut self, out: &mut Stmts, recv: &Expr, span: Span) -> Arg {
        let by_ref = matches!(recv, Expr::Reference(_));
        let val = self.expr(out, recv);
        Arg {
            atom: self.atom(val, span),
            by_ref,
        }
    }

    fn method_companion(&mut self, out: &mut Stmts, m: &syn::ExprMethodCall) -> Val {
        let span = m.method.span();
        let receiver = self.receiver(out, &m.receiver, span);
        let args = self.args(out, m.args.iter().cloned());
        let generics = m.turbofish.to_token_stream();
        let scoped = self.scoped(Some(&receiver), &m.method, &args);
        let call = Call {
            callee: Callee::Method {
                receiver,
                name: m.method.clone(),
                generics,
            },
            args,
            span,
            scoped,
        };
        Val::Atom(self.emit(out, Op::Call(call), span))
    }

    fn call_target(&mut self, out: &mut Stmts, e: &Expr) -> Option<Call> {
        match e {
            Expr::Call(c) => {
                if let Expr::Macro(m) = &*c.func
                    && is_jvp_macro(&m.mac.path)
                {
                    let path = syn::parse2::<syn::Path>(m.mac.tokens.clone()).ok()?;
                    let rewritten = jvp_call(&path, c);
                    return Some(self.path_call(out, &rewritten, Some(true)));
                }
                let Expr::Path(p) = &*c.func else { return None };
                let last = p.path.segments.last()?;
                let name = last.ident.to_string();
                if name == "no_grad"
                    || ops::function(&name).is_some()
                    || ops::elementwise_function(&name).is_some()
                {
                    return None;
                }
                Some(self.path_call(out, c, None))
            }
            Expr::MethodCall(m) => {
                let name = m.method.to_string();
                if ops::method(&name).is_some()
                    && !matches!(&*m.receiver, Expr::Path(p) if p.path.is_ident("self"))
                {
                    return None;
                }
                if name == "unwrap" || name == "expect" {
                    // `apply(..).unwrap()` and fused primitives: lowered as expressions.
                    return None;
                }
                let recv_by_ref = matches!(&*m.receiver, Expr::Reference(_));
                let recv = self.expr(out, &m.receiver);
                let receiver = Arg {
                    atom: self.atom(recv, m.span()),
                    by_ref: recv_by_ref,
                };
                let args = self.args(out, m.args.iter().cloned());
                let generics = m.turbofish.to_token_stream();
                let scoped = self.scoped(Some(&receiver), &m.method, &args);
                Some(Call {
                    callee: Callee::Method {
                        receiver,
                        name: m.method.clone(),
                        generics,
                    },
                    args,
                    span: m.method.span(),
                    scoped,
                })
            }
            _ => None,
        }
    }

    /// A call of a function by path; `assoc` overrides whether it is an associated
    /// function (else: the segment before its name is `Self` or a type's name).
    fn path_call(&mut self, out: &mut Stmts, c: &syn::ExprCall, assoc: Option<bool>) -> Call {
        let Expr::Path(p) = &*c.func else {
            unreachable!("checked by the caller")
        };
        let mut path = p.path.clone();
        let last = path
            .segments
            .pop()
            .expect("a path has a segment")
            .into_value();
        // `f::jvp_all` (what forward mode calls) lives on the struct `f`.
        let assoc = assoc.unwrap_or_else(|| {
            last.ident == "jvp_all"
                || path.segments.last().is_some_and(|s| {
                    s.ident == "Self"
                        || s.ident
                            .to_string()
                            .starts_with(|c: char| c.is_ascii_uppercase())
                })
        });
        let leading = path.leading_colon;
        let segs = path.segments.iter();
        let prefix = quote!(#leading #(#segs ::)*);
        let generics = last.arguments.to_token_stream();
        let args = self.args(out, c.args.iter().cloned());
        let scoped = self.scoped(None, &last.ident, &args);
        Call {
            callee: Callee::Path {
                prefix,
                name: last.ident,
                generics,
                assoc,
            },
            args,
            span: c.span(),
            scoped,
        }
    }

    fn call(&mut self, out: &mut Stmts, c: &syn::ExprCall) -> Val {
        let span = c.span();
        if c.args.iter().any(is_closure) && self.mentions_local(c.to_token_stream()) {
            return self.closure_call(out, &Expr::Call(c.clone()));
        }
        if let Expr::Macro(m) = &*c.func {
            // `jvp!(f)(args..)`: a call of the forward-mode companion `f::jvp`.
            if is_jvp_macro(&m.mac.path)
                && let Ok(path) = syn::parse2::<syn::Path>(m.mac.tokens.clone())
            {
                let rewritten = jvp_call(&path, c);
                if !self.mentions_local(c.args.to_token_stream()) {
                    return Val::Atom(self.constant(out, &Expr::Call(rewritten)));
                }
                let call = self.path_call(out, &rewritten, Some(true));
                return Val::Atom(self.emit(out, Op::Call(call), span));
            }
        }
        let Expr::Path(p) = &*c.func else {
            self.cx.error_at(
                &c.func,
                "only calls of named functions can be differentiated",
            );
            return poison();
        };
        if let Some(id) = p.path.get_ident()
            && let Some(def) = self.inlined_fn(&id.to_string())
        {
            match &def.unsupported {
                None => return self.inline_call(out, c, &id.to_string(), &def),
                Some(why) if self.mentions_local(c.args.to_token_stream()) => {
                    self.cx.error_at(c, why);
                    return poison();
                }
                Some(_) => {}
            }
        }
        let segs: Vec<String> = p
            .path
            .segments
            .iter()
            .map(|s| s.ident.to_string())
            .collect();
        let name = segs.last().cloned().unwrap_or_default();
        if name == "no_grad" {
            if c.args.len() != 1 {
                self.cx.error_at(c, "`no_grad` takes one argument");
            }
            // The first argument alone: `no_grad(x,)` (rustfmt's trailing comma) is
            // still `x`, not the tuple `(x,)`.
            let arg = c
                .args
                .first()
                .map(|a| a.to_token_stream())
                .unwrap_or_default();
            let tokens = self.verbatim(arg);
            return Val::Atom(self.emit(out, Op::Const(quote!((#tokens))), span));
        }
        if !self.mentions_local(c.args.to_token_stream()) {
            return Val::Atom(self.constant(out, &Expr::Call(c.clone())));
        }
        // `f64::sin(x)`, `f32::max(a, b)`: a method of the table called as a function.
        if segs.len() == 2
            && (segs[0] == "f32" || segs[0] == "f64")
            && let (Some(rule), Some(first)) = (ops::method(&name), c.args.first())
        {
            let m: syn::ExprMethodCall = syn::ExprMethodCall {
                attrs: vec![],
                receiver: Box::new(first.clone()),
                dot_token: Default::default(),
                method: Ident::new(&name, p.span()),
                turbofish: None,
                paren_token: c.paren_token,
                args: c.args.iter().skip(1).cloned().collect(),
            };
            return self.method_prim(out, &m, rule, TokenStream::new());
        }
        if let Some(rule) = ops::function(&name).or_else(|| ops::elementwise_function(&name)) {
            let n_args = rule.operands + rule.const_args();
            if c.args.len() != n_args {
                self.cx
                    .error_at(c, format!("`{name}` takes {n_args} argument(s)"));
                return poison();
            }
            let operands = c
                .args
                .iter()
                .take(rule.operands)
                .map(|a| self.operand(out, a))
                .collect();
            let consts = c
                .args
                .iter()
                .skip(rule.operands)
                .map(|a| self.const_atom(out, a))
                .collect();
            let native = Native::Function(c.func.to_token_stream());
            return Val::Atom(self.prim(out, rule, operands, consts, native, span));
        }
        if name == "concatenate" || name == "stack" {
            self.cx.error_at(
                c,
                format!("`{name}` returns a Result: call `.unwrap()` on it directly"),
            );
            return poison();
        }
        let call = self.path_call(out, c, None);
        Val::Atom(self.emit(out, Op::Call(call), span))
    }

    /// `concatenate(axis, &[a, b, ..]).unwrap()` and `stack(..)`.
    fn variadic(&mut self, out: &mut Stmts, c: &syn::ExprCall) -> Option<Val> {
        let Expr::Path(p) = &*c.func else { return None };
        let name = p.path.segments.last()?.ident.to_string();
        let rule = match name.as_str() {
            "concatenate" => &ops::CONCATENATE,
            "stack" => &ops::STACK,
            _ => return None,
        };
        let span = c.span();
        let (Some(axis), Some(list)) = (c.args.first(), c.args.iter().nth(1)) else {
            self.cx
                .error_at(c, format!("`{name}` takes an axis and a list of arrays"));
            return Some(poison());
        };
        let list = match list {
            Expr::Reference(r) => &*r.expr,
            other => other,
        };
        let Expr::Array(items) = list else {
            self.cx.error_at(list, format!("`{name}` is differentiated with a literal list of arrays: `{name}(axis, &[a.view(), b.view()])`"));
            return Some(poison());
        };
        let operands = items
            .elems
            .iter()
            .map(|item| self.operand(out, item))
            .collect();
        let axis = self.const_atom(out, axis);
        let native = Native::Variadic(c.func.to_token_stream());
        Some(Val::Atom(self.prim(
            out,
            rule,
            operands,
            vec![axis],
            native,
            span,
        )))
    }

    fn mapv(&mut self, out: &mut Stmts, m: &syn::ExprMethodCall) -> Val {
        let span = m.method.span();
        let Some(Expr::Closure(cl)) = m.args.first() else {
            self.cx.error_at(
                m,
                "`mapv` is differentiated with a closure argument: `x.mapv(|v| ..)`",
            );
            return poison();
        };
        if cl.inputs.len() != 1 {
            self.cx
                .error_at(&cl.inputs, "the closure of `mapv` takes one argument");
            return poison();
        }
        let recv = self.expr(out, &m.receiver);
        let recv = self.atom(recv, span);
        // The closure sees this body's variables by their current names.
        let mut env = OuterEnv::new();
        for scope in &self.scopes {
            for (k, v) in scope {
                let mut atoms = Vec::new();
                v.flatten(&mut atoms);
                let names = atoms
                    .iter()
                    .filter_map(|a| a.var())
                    .map(|var| (var, self.vars[var.0 as usize].name.clone()))
                    .collect();
                env.insert(k.clone(), (v.clone(), names));
            }
        }
        let block: syn::Block = match &*cl.body {
            Expr::Block(b) => b.block.clone(),
            other => syn::parse_quote_spanned!(other.span()=> { #other }),
        };
        let params = [ParamSpec {
            pat: &cl.inputs[0],
            active: true,
            scope: false,
            scalar: true,
            reference: false,
        }];
        let closure = lower_with(self.cx, &params, &block, env);
        let native = self.verbatim(cl.to_token_stream());
        let captured = closure
            .free
            .iter()
            .map(|(_, outer)| Atom::Var(*outer))
            .collect();
        Val::Atom(self.emit(
            out,
            Op::MapV {
                recv,
                closure: Box::new(closure),
                native,
                captured,
            },
            span,
        ))
    }

    // ----- control flow -----

    /// The outer variables that `stmts` assign, by the scope they live in.
    fn assigned_outer(&self, tokens: TokenStream) -> Vec<(usize, String)> {
        let mut names = Vec::new();
        assigned_names(tokens, &mut names);
        let mut seen = HashSet::new();
        names
            .into_iter()
            .filter(|n| seen.insert(n.clone()))
            .filter_map(|n| self.scope_of(&n).map(|d| (d, n)))
            .filter(|(_, n)| {
                matches!(
                    self.scopes.iter().rev().find_map(|s| s.get(n)),
                    Some(Val::Atom(_))
                )
            })
            .collect()
    }

    /// An `if` or `match` in expression position: its arms give the value and the
    /// new values of the outer variables they assign.
    fn branch_stmt(
        &mut self,
        out: &mut Stmts,
        e: &Expr,
        i: Option<&syn::ExprIf>,
        m: Option<&syn::ExprMatch>,
    ) -> Val {
        if may_diverge(e) {
            self.cx.error_at(
                e,
                "a branch that may `return`, `break` or `continue` must be a statement of its own",
            );
            return poison();
        }
        let region = Region {
            carries: self.assigned_outer(e.to_token_stream()),
        };
        let before: Vec<Val> = region
            .carries
            .iter()
            .map(|(d, n)| self.scopes[*d][n].clone())
            .collect();
        let mut arm_blocks = Vec::new();
        let kind = if let Some(i) = i {
            let cond = self.condition(&i.cond);
            arm_blocks.push(self.block(&i.then_branch.stmts, &region, LeafKind::Fallthrough));
            self.restore(&region, &before);
            arm_blocks.push(self.block(
                &else_stmts(&i.else_branch),
                &region,
                LeafKind::Fallthrough,
            ));
            self.restore(&region, &before);
            BranchKind::If { cond }
        } else {
            let m = m.expect("an if or a match");
            let (scrutinee, pats) = self.match_head(m);
            let mut binds = Vec::new();
            for arm in &m.arms {
                self.push_scope();
                binds.push(self.bind_pattern_names(&arm.pat));
                arm_blocks.push(self.block(&arm_stmts(&arm.body), &region, LeafKind::Fallthrough));
                self.pop_scope();
                self.restore(&region, &before);
            }
            BranchKind::Match {
                scrutinee,
                pats,
                binds,
            }
        };
        if arm_blocks.len() > 8 {
            self.cx
                .error_at(e, "a differentiated `match` may have at most 8 arms");
        }
        // An arm whose value is a tuple made at run time (a call's result, a constant)
        // takes the shape of the arms that spell their tuples out.
        let spelled = leaf_values(&arm_blocks)
            .into_iter()
            .flatten()
            .reduce(|a, b| most_spelled(&a, &b));
        if let Some(shape) = spelled.filter(|s| matches!(s, Val::Tuple(_))) {
            for arm in arm_blocks.iter_mut() {
                let Block { stmts, tail } = arm;
                if let Tail::Leaf(l) = tail
                    && matches!(l.kind, LeafKind::Fallthrough | LeafKind::Break)
                    && let Some(v) = l.value.take()
                {
                    l.value = Some(self.conform(stmts, v, &shape, e));
                }
            }
        }
        // The value's shape comes from the first arm; every arm must agree.
        let shape = leaf_values(&arm_blocks).into_iter().next().flatten();
        let mut value_atoms = Vec::new();
        if let Some(shape) = &shape {
            shape.flatten(&mut value_atoms);
        }
        let n_value = value_atoms.len();
        for v in leaf_values(&arm_blocks) {
            let mut atoms = Vec::new();
            if let Some(v) = v {
                v.flatten(&mut atoms);
            }
            if atoms.len() != n_value {
                self.cx
                    .error_at(e, "the arms of this branch give values of different shapes");
                return poison();
            }
        }
        let mut phis = Vec::new();
        for _ in 0..n_value {
            phis.push(self.temp(e.span()));
        }
        for (depth, name) in &region.carries {
            let id = crate::hygiene::ident(name, Span::call_site());
            let v = self.fresh_user(&id);
            phis.push(v);
            self.scopes[*depth].insert(name.clone(), Val::Atom(Atom::Var(v)));
        }
        let value = match shape {
            Some(shape) => shape.rebuild(&mut phis[..n_value].iter().map(|v| Atom::Var(*v))),
            None => Val::Tuple(vec![]),
        };
        out.push(Stmt::If {
            branch: Branching {
                kind,
                arms: arm_blocks,
            },
            phis,
        });
        value
    }

    fn restore(&mut self, region: &Region, before: &[Val]) {
        for ((d, n), v) in region.carries.iter().zip(before) {
            self.scopes[*d].insert(n.clone(), v.clone());
        }
    }

    fn loop_stmt(&mut self, out: &mut Stmts, e: &Expr) -> Val {
        let span = e.span();
        let (kind, body_stmts, label): (LoopKind, Vec<syn::Stmt>, _) = match e {
            Expr::ForLoop(f) => {
                let pat = f.pat.to_token_stream();
                let iter = self.verbatim(f.expr.to_token_stream());
                (
                    LoopKind::For {
                        pat,
                        iter,
                        binds: Vec::new(),
                    },
                    f.body.stmts.clone(),
                    &f.label,
                )
            }
            Expr::While(w) => {
                let cond = &w.cond;
                if let Expr::Let(l) = &**cond {
                    self.cx.error_at(
                        l,
                        "`while let` is not supported in a #[differentiable] body",
                    );
                }
                let mut stmts: Vec<syn::Stmt> =
                    vec![syn::parse_quote_spanned!(cond.span()=> if !(#cond) { break; })];
                stmts.extend(w.body.stmts.iter().cloned());
                (LoopKind::Loop, stmts, &w.label)
            }
            Expr::Loop(l) => (LoopKind::Loop, l.body.stmts.clone(), &l.label),
            _ => unreachable!("a loop"),
        };
        if let Some(label) = label {
            self.cx.error_at(
                label,
                "labelled loops are not supported in a #[differentiable] body",
            );
        }
        if contains_return(&body_stmts) {
            self.cx.error_at(e, "`return` inside a loop is not supported in a #[differentiable] body; `break` with a value instead");
            return poison();
        }
        let body_tokens = quote!(#(#body_stmts)*);
        let region = Region {
            carries: self.assigned_outer(body_tokens),
        };
        let mut carries = Vec::new();
        for (depth, name) in &region.carries {
            let Some(Val::Atom(init)) = self.scopes[*depth].get(name).cloned() else {
                continue;
            };
            let id = crate::hygiene::ident(name, Span::call_site());
            let inner = self.fresh_user(&id);
            self.scopes[*depth].insert(name.clone(), Val::Atom(Atom::Var(inner)));
            carries.push((init, inner));
        }
        self.push_scope();
        let mut kind = kind;
        if let LoopKind::For { pat, binds, .. } = &mut kind {
            // The loop variable: a constant, named as the user wrote it.
            let p = Pat::parse_single
                .parse2(pat.clone())
                .unwrap_or(Pat::Verbatim(pat.clone()));
            *binds = self.bind_pattern_names(&p);
        }
        let body = self.block(&body_stmts, &region, LeafKind::Continue);
        self.pop_scope();
        let mut carries_ir = Vec::new();
        for ((depth, name), (init, inner)) in region.carries.iter().zip(carries) {
            let id = crate::hygiene::ident(name, Span::call_site());
            let out_var = self.fresh_user(&id);
            self.scopes[*depth].insert(name.clone(), Val::Atom(Atom::Var(out_var)));
            carries_ir.push(Carry {
                init,
                inner,
                out: out_var,
            });
        }
        let has_value = leaf_values(std::slice::from_ref(&body))
            .into_iter()
            .any(|v| v.is_some());
        let value = has_value.then(|| self.temp(span));
        out.push(Stmt::Loop(Loop {
            kind,
            carries: carries_ir,
            body,
            value,
            span,
        }));
        match value {
            Some(v) => Val::Atom(Atom::Var(v)),
            None => Val::Tuple(vec![]),
        }
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
fn collect_idents(tokens: TokenStream, out: &mut HashSet<String>) {
    for tt in tokens {
        match tt {
            TokenTree::Ident(i) => {
                out.insert(i.to_string());
            }
            TokenTree::Group(g) => collect_idents(g.stream(), out),
            _ => {}
        }
    }
}

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
/// `jvp!`, also as `adjoint::jvp!` or `::adjoint::jvp!` (how generated code names it).
fn is_jvp_macro(path: &syn::Path) -> bool {
    path.is_ident("jvp")
        || (path.segments.len() == 2
            && path.segments[0].ident == "adjoint"
            && path.segments[1].ident == "jvp")
}

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

/// `jvp!(f)(args..)` as the call it stands for: `f::jvp(args..)`, the forward-mode
/// companion `#[differentiable(jvp)]` writes beside `f`'s others.
fn jvp_call(f: &syn::Path, c: &syn::ExprCall) -> syn::ExprCall {
    syn::ExprCall {
        attrs: vec![],
        func: Box::new(Expr::Path(syn::ExprPath {
            attrs: vec![],
            qself: None,
            path: crate::names::companion_path(f, "jvp", false),
        })),
        paren_token: c.paren_token,
        args: c.args.clone(),
    }
}
