//! A module's input gradient written back as Rust source: its body's primal, then
//! each statement's transpose in reverse order, in primitives that have rules, so
//! that `#[differentiable]` differentiates it again. Reverse over reverse: a lifted
//! `grad!` differentiated again keeps the forward and backward values of its child's
//! input gradient, as a hand-written second-order gradient does, instead of running
//! the child's JVP-VJP again (see `Scope::is_pure`).
//!
//! It covers straight-line code and `if`/`else` on constants whose arms are
//! straight-line, sums, differences, products and quotients, `tanh`, `sigmoid`,
//! `exp`, `ln`, `sin`, `cos`, `sum`, `mean`, `dot_last` (`Dense`), copies and views,
//! and submodules' calls, through their own input gradients (`__call_vjpx`). Where a
//! body uses anything else there is no source: the module's input gradient is its
//! first-order reverse mode, and second order runs the JVP-VJP again.

use crate::forward::Primal;
use crate::ir::*;
use proc_macro2::TokenStream;
use quote::{ToTokens, format_ident, quote};
use std::collections::{BTreeMap, HashMap, HashSet};
use syn::Ident;

/// The body of `fn __call_body_vjpx(&self, cx, x.., __xct: &R) -> (cotangents..)`:
/// the cotangents of the parameters after the scope (each differentiated) given
/// the output's, `__xct`. `None` where the body uses what this does not cover.
pub fn vjp_body(
    f: &Func,
    varied: &dyn Fn(Var) -> bool,
    reference_params: &[bool],
) -> Option<TokenStream> {
    let inputs: Vec<&Param> = f.params.iter().filter(|p| Some(p.var) != f.scope).collect();
    if inputs.iter().any(|p| !p.active) {
        return None;
    }
    let mut w = Writer {
        f,
        varied,
        p: Primal::new(f, reference_params),
        fresh: 0,
        reads: HashSet::new(),
        conds: HashMap::new(),
        recomputes: HashSet::new(),
        names: f
            .vars
            .iter()
            .enumerate()
            .map(|(i, v)| (v.name.to_string(), Var(i as u32)))
            .collect(),
        shapes: HashSet::new(),
    };
    let seed = Bar {
        name: format_ident!("__xct"),
        by_ref: true,
    };
    let (back, mut bars) = w.back_block(&f.body, &[Some(seed)], true)?;
    let mut needed = std::mem::take(&mut w.reads);
    let forward = w.forward_block(&f.body, &mut needed)?;
    let mut out = TokenStream::new();
    let mut cots = Vec::new();
    for p in inputs {
        let x = f.name(p.var);
        cots.push(match bars.remove(&p.var) {
            Some(terms) => {
                let g = w.sum_terms(p.var, terms, &mut out);
                w.owned(&g)
            }
            None if w.p.is_ref(p.var) => {
                quote!(::adjoint::no_grad(::adjoint::__private::zeros(#x)))
            }
            None => quote!(::adjoint::no_grad(::adjoint::__private::zeros(&#x))),
        });
    }
    let items = &f.items;
    let body = quote! {
        #(#items)*
        #forward
        #back
        #out
        (#(#cots,)*)
    };
    Some(apart_from_temporaries(body))
}

/// `body` with the first lowering's temporaries (`__t45`) renamed `__v45`: lowering
/// this source again takes a `__t` name for a temporary of its own (one it may name
/// after the user's binding, or reuse), and a value the source names so would then
/// not be bound where a constant of the source (`shape_of(&__t45)`) reads it.
fn apart_from_temporaries(body: TokenStream) -> TokenStream {
    let renames: HashMap<String, String> = crate::hygiene::idents(&body)
        .into_iter()
        .filter_map(|n| {
            let rest = n.strip_prefix("__t")?;
            rest.starts_with(|c: char| c.is_ascii_digit())
                .then(|| (n.clone(), format!("__v{rest}")))
        })
        .collect();
    crate::hygiene::rename(body, &renames)
}

/// A cotangent's name, and whether it is a reference (the seed) rather than owned.
#[derive(Clone)]
struct Bar {
    name: Ident,
    by_ref: bool,
}

/// The cotangents reaching each variable, to be added up where it is defined.
type Bars = BTreeMap<Var, Vec<Bar>>;

struct Writer<'a> {
    f: &'a Func,
    varied: &'a dyn Fn(Var) -> bool,
    p: Primal<'a>,
    fresh: usize,
    /// The values the reverse statements written so far read.
    reads: HashSet<Var>,
    /// The name of each branch's condition, evaluated once where the branch was.
    conds: HashMap<*const Branching, Ident>,
    /// The branches whose reverse computes a parameter read of an arm again: the
    /// forward pass must not read it too (a name is read once per call).
    recomputes: HashSet<*const Branching>,
    /// Each variable by its name, for what a constant's tokens read.
    names: HashMap<String, Var>,
    /// The values whose shapes the reverse statements read (`__xs_{name}`).
    shapes: HashSet<Var>,
}

/// What the forward pass writes of a statement (see [`Writer::plan`]).
enum Write {
    Stmt(usize),
    /// A branch, written (see [`Writer::forward_if`]).
    Code(TokenStream),
    /// The shape of a value computed before.
    Shape(Var),
    /// The shape of a product (`dot_last`) from its operands'.
    ProductShape(usize),
}

/// The name of the path the submodule call defining `v` ran at.
fn path_name(f: &Func, v: Var) -> Ident {
    format_ident!("__xp_{}", f.name(v))
}

/// The name of the shape of `v` the forward pass records.
fn shape_name(f: &Func, v: Var) -> Ident {
    format_ident!("__xs_{}", f.name(v))
}

impl<'a> Writer<'a> {
    fn varied(&self, a: &Atom) -> Option<Var> {
        a.var().filter(|v| (self.varied)(*v))
    }

    fn bar(&mut self) -> Ident {
        self.fresh += 1;
        format_ident!("__xb{}", self.fresh)
    }

    /// The cotangent as an operand: an array by reference, a scalar by value.
    fn operand(&self, g: &Bar, scalar: bool) -> TokenStream {
        let n = &g.name;
        match (g.by_ref, scalar) {
            (true, true) => quote!((*#n)),
            (true, false) => quote!(::adjoint::__private::operand(#n)),
            (false, true) => quote!(#n),
            (false, false) => quote!(::adjoint::__private::operand(&#n)),
        }
    }

    /// A reference to the cotangent.
    fn reference(&self, g: &Bar) -> TokenStream {
        let n = &g.name;
        if g.by_ref { quote!(#n) } else { quote!(&#n) }
    }

    /// The cotangent as an owned value (the seed copied).
    fn owned(&self, g: &Bar) -> TokenStream {
        let n = &g.name;
        if g.by_ref {
            quote!((#n).to_owned())
        } else {
            quote!(#n)
        }
    }

    /// The cotangent of `v`: its one term, or their sum bound to a new name.
    fn sum_terms(&mut self, v: Var, terms: Vec<Bar>, out: &mut TokenStream) -> Bar {
        if let [one] = terms.as_slice() {
            return one.clone();
        }
        let scalar = self.p.scalar(v);
        let parts: Vec<TokenStream> = terms.iter().map(|t| self.operand(t, scalar)).collect();
        let name = self.bar();
        out.extend(quote!(let #name = #(#parts)+*;));
        Bar {
            name,
            by_ref: false,
        }
    }

    /// Binds `expr`, a cotangent of `to`, and records it.
    fn contribute(&mut self, bars: &mut Bars, to: Var, expr: TokenStream, out: &mut TokenStream) {
        let name = self.bar();
        out.extend(quote!(let #name = #expr;));
        bars.entry(to).or_default().push(Bar {
            name,
            by_ref: false,
        });
    }

    /// The reverse of block `b`, whose leaves' values (flattened, then the carried
    /// values) have the cotangents `outs`: its code and the cotangents it leaves for
    /// values defined outside it. `ends_body`: its leaves return from the function.
    fn back_block(
        &mut self,
        b: &'a Block,
        outs: &[Option<Bar>],
        ends_body: bool,
    ) -> Option<(TokenStream, Bars)> {
        let mut bars = Bars::new();
        let mut code = TokenStream::new();
        match &b.tail {
            Tail::Leaf(leaf) => {
                let end = if ends_body {
                    LeafKind::Return
                } else {
                    LeafKind::Fallthrough
                };
                if leaf.kind != end && leaf.kind != LeafKind::Fallthrough {
                    return None;
                }
                // The seed is the cotangent of one value (not of a tuple's parts).
                if ends_body && !matches!(leaf.value, Some(Val::Atom(_))) {
                    return None;
                }
                let atoms = leaf.atoms();
                for (a, g) in atoms.iter().zip(outs) {
                    if let (Some(v), Some(g)) = (self.varied(a), g) {
                        bars.entry(v).or_default().push(g.clone());
                    }
                }
            }
            Tail::Branch(br) => {
                let (c, escaped) = self.back_branch(br, outs, ends_body)?;
                code.extend(c);
                merge(&mut bars, escaped);
            }
        }
        for s in b.stmts.iter().rev() {
            self.back_stmt(s, &mut bars, &mut code)?;
        }
        Some((code, bars))
    }

    fn back_stmt(&mut self, s: &'a Stmt, bars: &mut Bars, out: &mut TokenStream) -> Option<()> {
        match s {
            Stmt::Let { dst, op, .. } => {
                let Some(terms) = bars.remove(dst) else {
                    return Some(());
                };
                let g = self.sum_terms(*dst, terms, out);
                match op {
                    Op::Prim {
                        rule,
                        operands,
                        consts,
                        ..
                    } if consts.is_empty() => {
                        for (to, expr) in self.transpose(rule.func, operands, *dst, &g)? {
                            self.contribute(bars, to, expr, out);
                        }
                        Some(())
                    }
                    Op::Call(call) if call.scoped == Scoped::Module => {
                        self.back_module_call(*dst, call, &g, bars, out)
                    }
                    _ => None,
                }
            }
            Stmt::If { branch, phis } => {
                let mut outs = Vec::new();
                for p in phis {
                    outs.push(bars.remove(p).map(|terms| self.sum_terms(*p, terms, out)));
                }
                if outs.iter().all(Option::is_none) {
                    return Some(());
                }
                let (c, escaped) = self.back_branch(branch, &outs, false)?;
                out.extend(c);
                merge(bars, escaped);
                Some(())
            }
            // Nothing varied flows back through these.
            Stmt::Loop(_) | Stmt::LetLifted(_) | Stmt::LetTuple { .. } => {
                crate::facts::stmt_defs(std::slice::from_ref(s))
                    .iter()
                    .all(|v| !(self.varied)(*v))
                    .then_some(())
            }
        }
    }

    /// `let (cotangents..) = child.__call_in_vjpx(cx, path, args.., &g);`: the
    /// child's own input gradient, at the path its call `y` ran at (an auto name is
    /// taken once), each argument's cotangent added to it.
    fn back_module_call(
        &mut self,
        y: Var,
        call: &Call,
        g: &Bar,
        bars: &mut Bars,
        out: &mut TokenStream,
    ) -> Option<()> {
        let skip = match call.callee.name().to_string().as_str() {
            "call" => 1,
            "__call_in" => 2,
            _ => return None,
        };
        // The scope first, as a module's `call` takes it.
        if call.args.len() < skip || call.args[0].atom.var() != self.f.scope {
            return None;
        }
        let mut cots = Vec::new();
        for a in &call.args[skip..] {
            if let Some(v) = a.atom.var() {
                // The forward pass passed it: an array it moved cannot be passed again.
                if !a.by_ref && !self.p.scalar(v) && !self.p.is_ref(v) {
                    return None;
                }
                self.reads.insert(v);
            }
            cots.push(self.bar());
        }
        let scope = self.p.arg(&call.args[0]);
        let path = path_name(self.f, y);
        let args = call.args[skip..].iter().map(|a| self.p.arg(a));
        let vjpx = format_ident!("__call_in_vjpx");
        let f = call.callee.render(|_| vjpx, |r| self.p.arg(r));
        let seed = self.reference(g);
        out.extend(quote! {
            let (#(#cots,)*) = #f(#scope, ::adjoint::scope::ChildName::Bound(&#path), #(#args,)* #seed);
        });
        for (a, c) in call.args[skip..].iter().zip(cots) {
            if let Some(v) = self.varied(&a.atom) {
                bars.entry(v).or_default().push(Bar {
                    name: c,
                    by_ref: false,
                });
            }
        }
        Some(())
    }

    /// The reverse of an `if`/`else` whose values (`phis`) have cotangents `outs`:
    /// `let (cotangents..) = if cond { .. } else { .. };`, each arm computing again
    /// what its reverse reads and giving the cotangent of every value of the
    /// enclosing code any arm reads (a zero where it does not).
    fn back_branch(
        &mut self,
        br: &'a Branching,
        outs: &[Option<Bar>],
        ends_body: bool,
    ) -> Option<(TokenStream, Bars)> {
        if !matches!(br.kind, BranchKind::If { .. }) {
            return None;
        }
        let outer_reads = std::mem::take(&mut self.reads);
        let mut arms = Vec::new();
        let mut escaped_vars = std::collections::BTreeSet::new();
        for arm in &br.arms {
            // Arms are straight-line, without submodules (whose paths the reverse
            // would not see).
            if !matches!(arm.tail, Tail::Leaf(_))
                || arm.stmts.iter().any(|s| {
                    !matches!(s, Stmt::Let { op, .. } if !matches!(op, Op::Call(c) if c.scoped == Scoped::Module))
                })
            {
                return None;
            }
            let (code, escaped) = self.back_block(arm, outs, ends_body)?;
            let mut needed = std::mem::take(&mut self.reads);
            let recompute = self.recompute(br, arm, &mut needed)?;
            self.reads.extend(needed);
            escaped_vars.extend(escaped.keys().copied());
            arms.push((recompute, code, escaped));
        }
        self.reads.extend(outer_reads);
        let escaped_vars: Vec<Var> = escaped_vars.into_iter().collect();
        let names: Vec<Ident> = escaped_vars.iter().map(|_| self.bar()).collect();
        let mut arm_code = Vec::new();
        for (recompute, mut code, mut escaped) in arms {
            let mut items = Vec::new();
            for v in &escaped_vars {
                items.push(match escaped.remove(v) {
                    Some(terms) => {
                        let g = self.sum_terms(*v, terms, &mut code);
                        self.owned(&g)
                    }
                    None => {
                        let x = self.p.r(&Atom::Var(*v));
                        self.reads.insert(*v);
                        if self.p.scalar(*v) {
                            quote!(::adjoint::no_grad(::adjoint::__private::zeros(&#x)))
                        } else {
                            quote!(::adjoint::no_grad(::adjoint::__private::zeros(#x)))
                        }
                    }
                });
            }
            arm_code.push(quote!({ #recompute #code (#(#items,)*) }));
        }
        let cond = self.cond(br);
        let [then, otherwise] = arm_code.as_slice() else {
            return None;
        };
        let code = quote!(let (#(#names,)*) = if #cond #then else #otherwise;);
        let mut bars = Bars::new();
        for (v, name) in escaped_vars.into_iter().zip(names) {
            bars.entry(v).or_default().push(Bar {
                name,
                by_ref: false,
            });
        }
        Some((code, bars))
    }

    fn cond(&mut self, br: &'a Branching) -> Ident {
        let n = self.conds.len() + 1;
        self.conds
            .entry(br as *const Branching)
            .or_insert_with(|| format_ident!("__xc{}", n))
            .clone()
    }

    /// What arm `arm` of `br` computes that its reverse reads (`needed`, which
    /// then holds what the recomputation reads of the enclosing code): only what is
    /// needed, constants too. A parameter read is recorded (the forward pass must not
    /// read it as well); anything else touching the scope is not computed twice.
    fn recompute(
        &mut self,
        br: &'a Branching,
        arm: &'a Block,
        needed: &mut HashSet<Var>,
    ) -> Option<TokenStream> {
        for s in &arm.stmts {
            if let Stmt::Let { dst, op, .. } = s
                && (needed.contains(dst) || self.shapes.contains(dst))
            {
                match op {
                    Op::Call(c) if c.scoped == Scoped::Param => {
                        self.recomputes.insert(br as *const Branching);
                    }
                    _ if self.touches_scope(op) => return None,
                    _ => {}
                }
            }
        }
        let plan = self.plan(&arm.stmts, needed, false)?;
        self.write(&arm.stmts, &plan)
    }

    /// Whether `op` reads or changes the scope (other than through its operands).
    fn touches_scope(&self, op: &Op) -> bool {
        let Some(scope) = self.f.scope else {
            return false;
        };
        let name = self.f.name(scope).to_string();
        match op {
            Op::Const(t) | Op::Build { tokens: t, .. } | Op::Lifted { tokens: t, .. } => {
                crate::hygiene::idents(t).contains(&name)
            }
            Op::Call(c) => c.scoped != Scoped::No || self.reads_of(op).contains(&scope),
            Op::Prim { .. } | Op::MapV { .. } => false,
        }
    }

    /// What to write of the straight-line `stmts`: the constant ones when
    /// `constants` (all of them, in order: their effects on the scope are), and those
    /// whose values are `needed`, which then holds what they read of the enclosing
    /// code. A value whose shape the reverse reads gets it as `__xs_{name}` after it;
    /// a product's shape comes from its operands', and the product itself is not
    /// computed unless its value is needed.
    fn plan(
        &mut self,
        stmts: &'a [Stmt],
        needed: &mut HashSet<Var>,
        constants: bool,
    ) -> Option<Vec<Write>> {
        let mut plan = Vec::new();
        for (i, s) in stmts.iter().enumerate().rev() {
            let (dst, op) = match s {
                Stmt::Let { dst, op, .. } => (dst, op),
                Stmt::If { branch, phis } if constants => {
                    plan.push(Write::Code(self.forward_if(branch, phis, needed)?));
                    continue;
                }
                // A loop, a tuple or a lifted transform: constant, written as is.
                _ => {
                    let defs = crate::facts::stmt_defs(std::slice::from_ref(s));
                    if defs
                        .iter()
                        .any(|v| (self.varied)(*v) || !constants && needed.contains(v))
                    {
                        return None;
                    }
                    if constants {
                        plan.push(Write::Stmt(i));
                    }
                    continue;
                }
            };
            // A submodule's call runs in order (its auto name is taken once), its
            // path recorded for its input gradient's call.
            let module = matches!(op, Op::Call(c) if c.scoped == Scoped::Module);
            let value = needed.remove(dst) || (constants && (module || !(self.varied)(*dst)));
            let shape = self.shapes.contains(dst);
            if shape {
                match op {
                    Op::Prim { rule, operands, .. } if rule.func == "dot_last" && !value => {
                        plan.push(Write::ProductShape(i));
                        needed.extend(operands.iter().filter_map(|a| a.atom.var()));
                        continue;
                    }
                    _ => plan.push(Write::Shape(*dst)),
                }
            }
            if value || shape {
                plan.push(Write::Stmt(i));
                needed.extend(self.reads_of(op));
            }
        }
        plan.reverse();
        Some(plan)
    }

    /// The statements `plan` chose of `stmts`.
    fn write(&mut self, stmts: &'a [Stmt], plan: &[Write]) -> Option<TokenStream> {
        let mut out = TokenStream::new();
        for w in plan {
            match *w {
                Write::Code(ref code) => out.extend(code.clone()),
                Write::Stmt(i) => {
                    out.extend(self.p.stmt(&stmts[i])?);
                    if let Stmt::Let {
                        dst,
                        op: Op::Call(c),
                        ..
                    } = &stmts[i]
                        && c.scoped == Scoped::Module
                        && (self.varied)(*dst)
                    {
                        let (path, scope) = (path_name(self.f, *dst), self.p.arg(&c.args[0]));
                        out.extend(
                            quote!(let #path = ::adjoint::no_grad(#scope.last_child_path());),
                        );
                    }
                }
                Write::Shape(v) => out.extend(self.take_shape(v)),
                Write::ProductShape(i) => {
                    let Stmt::Let {
                        dst,
                        op: Op::Prim { operands, .. },
                        ..
                    } = &stmts[i]
                    else {
                        return None;
                    };
                    let (x, w) = (self.p.r(&operands[0].atom), self.p.r(&operands[1].atom));
                    let xs = shape_name(self.f, *dst);
                    out.extend(quote!(let #xs = ::adjoint::no_grad(::adjoint::__private::dot_last_shape(#x, #w));));
                }
            }
        }
        Some(out)
    }

    /// `let __xs_v = shape_of(&v);`: the shape of `v`, borrowed whatever its type
    /// (a scalar temporary's type is not known here).
    fn take_shape(&self, v: Var) -> TokenStream {
        let (xs, x) = (shape_name(self.f, v), self.f.name(v));
        let x = if self.p.is_ref(v) {
            quote!(#x)
        } else {
            quote!(&#x)
        };
        quote!(let #xs = ::adjoint::no_grad(::adjoint::__private::shape_of(#x));)
    }

    /// The forward pass of the body `b`: the shapes of the parameters the reverse
    /// reads, every constant statement, and of the varied ones those whose values
    /// (or shapes) the reverse reads; each branch's condition, once.
    fn forward_block(&mut self, b: &'a Block, needed: &mut HashSet<Var>) -> Option<TokenStream> {
        // A branch ending the body tests values the statements compute.
        if let Tail::Branch(br) = &b.tail
            && let BranchKind::If { cond } = &br.kind
        {
            needed.extend(self.reads_of(&Op::Const(cond.clone())));
        }
        let plan = self.plan(&b.stmts, needed, true)?;
        let body = self.write(&b.stmts, &plan)?;
        let mut out = TokenStream::new();
        for p in &self.f.params {
            if self.shapes.contains(&p.var) {
                out.extend(self.take_shape(p.var));
            }
        }
        out.extend(body);
        // A branch ending the body: its condition, for its reverse.
        if let Tail::Branch(br) = &b.tail {
            let c = self.cond(br);
            let BranchKind::If { cond } = &br.kind else {
                return None;
            };
            out.extend(quote!(let #c = ::adjoint::no_grad(#cond);));
        }
        Some(out)
    }

    /// `let __xcN = cond;` and, if any of its values (or their shapes) is needed,
    /// the branch computing them: each arm's constants, and what the needed values
    /// and shapes read; `needed` then holds what it reads of the enclosing code.
    fn forward_if(
        &mut self,
        br: &'a Branching,
        phis: &[Var],
        needed: &mut HashSet<Var>,
    ) -> Option<TokenStream> {
        let BranchKind::If { cond } = &br.kind else {
            return None;
        };
        // The test is evaluated where the branch was: what it reads first.
        needed.extend(self.reads_of(&Op::Const(cond.clone())));
        let c = self.cond(br);
        let mut out = quote!(let #c = ::adjoint::no_grad(#cond););
        // A value kept (a constant one always), or only its shape.
        let values: Vec<bool> = phis
            .iter()
            .map(|p| !(self.varied)(*p) | needed.remove(p))
            .collect();
        let shapes: Vec<bool> = phis.iter().map(|p| self.shapes.contains(p)).collect();
        if !values.iter().chain(&shapes).any(|k| *k) {
            return Some(out);
        }
        if self.recomputes.contains(&(br as *const Branching)) {
            return None;
        }
        let mut arms = Vec::new();
        let mut outer = HashSet::new();
        for arm in &br.arms {
            let Tail::Leaf(leaf) = &arm.tail else {
                return None;
            };
            let atoms = leaf.atoms();
            let local: HashSet<Var> = crate::facts::stmt_defs(&arm.stmts);
            let mut inner: HashSet<Var> = HashSet::new();
            for (a, (v, s)) in atoms.iter().zip(values.iter().zip(&shapes)) {
                match a.var() {
                    Some(u) if *v => {
                        inner.insert(u);
                    }
                    // Only the shape: of the leaf's value, which itself may not be
                    // computed (a product's).
                    Some(u) if *s => {
                        self.shapes.insert(u);
                    }
                    _ => {}
                }
            }
            let plan = self.plan(&arm.stmts, &mut inner, true)?;
            outer.extend(inner);
            let mut code = self.write(&arm.stmts, &plan)?;
            let mut items = Vec::new();
            for (a, (v, s)) in atoms.iter().zip(values.iter().zip(&shapes)) {
                let x = self.p.atom(a);
                if *v {
                    // A value of the enclosing code is copied: the reverse may read it.
                    // (As a method the macro differentiates: `clone` is a rule.)
                    items.push(match a.var() {
                        Some(u)
                            if !local.contains(&u) && !self.p.scalar(u) && !self.p.is_ref(u) =>
                        {
                            quote!(#x.clone())
                        }
                        _ => x.clone(),
                    });
                }
                if *s {
                    items.push(match a.var() {
                        Some(u) if !*v => shape_name(self.f, u).to_token_stream(),
                        // Taken before the tuple moves the value.
                        Some(u) => {
                            code.extend(self.take_shape(u));
                            shape_name(self.f, u).to_token_stream()
                        }
                        None => {
                            let r = self.p.r(a);
                            quote!(::adjoint::no_grad(::adjoint::__private::shape_of(&#r)))
                        }
                    });
                }
            }
            arms.push(quote!({ #code (#(#items,)*) }));
        }
        needed.extend(outer);
        let mut pats = Vec::new();
        for (p, (v, s)) in phis.iter().zip(values.iter().zip(&shapes)) {
            if *v {
                let name = self.f.name(*p);
                pats.push(if self.f.vars[p.0 as usize].mutable {
                    quote!(mut #name)
                } else {
                    name.to_token_stream()
                });
            }
            if *s {
                pats.push(shape_name(self.f, *p).to_token_stream());
            }
        }
        let [then, otherwise] = arms.as_slice() else {
            return None;
        };
        out.extend(quote!(let (#(#pats,)*) = if #c #then else #otherwise;));
        Some(out)
    }

    /// The cotangents `y = func(operands..)`'s cotangent `g` gives its varied
    /// operands, as expressions in primitives with rules; `None` for a rule this
    /// does not transpose (or one with constant arguments: an axis, an exponent).
    fn transpose(
        &mut self,
        func: &str,
        operands: &[Arg],
        y: Var,
        g: &Bar,
    ) -> Option<Vec<(Var, TokenStream)>> {
        let scalar = self.p.scalar(y);
        let gv = self.operand(g, scalar);
        let gref = self.reference(g);
        let yn = self.f.name(y).clone();
        let yr = self.p.r(&Atom::Var(y));
        let atoms: Vec<&Atom> = operands.iter().map(|a| &a.atom).collect();
        let r: Vec<TokenStream> = atoms.iter().map(|a| self.p.r(a)).collect();
        let n: Vec<TokenStream> = atoms.iter().map(|a| self.p.atom(a)).collect();
        let mut out = Vec::new();
        let varied: Vec<Option<Var>> = atoms.iter().map(|a| self.varied(a)).collect();
        // The cotangent of an operand of a broadcasting operation: summed to its
        // shape, which the forward pass records.
        let shape_of = |a: &Atom| a.var().map(|v| shape_name(self.f, v));
        let like = |t: TokenStream, i: usize| {
            let xs = shape_of(atoms[i]);
            quote!(::adjoint::__private::sum_to(&(#t), &#xs))
        };
        let mut reads = Vec::new();
        let mut shapes = Vec::new();
        match func {
            "add" | "sub" => {
                for (i, v) in varied.iter().enumerate() {
                    let Some(v) = v else { continue };
                    let t = if func == "sub" && i == 1 {
                        quote!((-#gv))
                    } else {
                        gv.clone()
                    };
                    shapes.push(atoms[i]);
                    out.push((*v, like(t, i)));
                }
            }
            "mul" => {
                for (i, v) in varied.iter().enumerate() {
                    let Some(v) = v else { continue };
                    let other = &r[1 - i];
                    let t = if i == 0 {
                        quote!((#gv * #other))
                    } else {
                        quote!((#other * #gv))
                    };
                    reads.push(atoms[1 - i]);
                    shapes.push(atoms[i]);
                    out.push((*v, like(t, i)));
                }
            }
            "div" => {
                let b = &r[1];
                reads.push(atoms[1]);
                if let Some(v) = varied[0] {
                    shapes.push(atoms[0]);
                    out.push((v, like(quote!((#gv / #b)), 0)));
                }
                if let Some(v) = varied[1] {
                    self.reads.insert(y);
                    shapes.push(atoms[1]);
                    out.push((v, like(quote!((-(#gv * #yr) / #b)), 1)));
                }
            }
            "neg" => out.extend(varied[0].map(|v| (v, quote!((-#gv))))),
            "square" => {
                let (x, xn) = (&r[0], &n[0]);
                reads.push(atoms[0]);
                let two = quote!(::adjoint::no_grad(::adjoint::__private::lit(&#xn, 2.0)));
                out.extend(varied[0].map(|v| (v, quote!(((#gv * #x) * #two)))));
            }
            "tanh" | "sigmoid" => {
                let f = format_ident!("{}_tangent", func);
                self.reads.insert(y);
                out.extend(varied[0].map(|v| (v, quote!(::adjoint::__private::#f(&#yn, &(#gv))))));
            }
            "exp" => {
                self.reads.insert(y);
                out.extend(varied[0].map(|v| (v, quote!((#gv * #yr)))));
            }
            "ln" => {
                reads.push(atoms[0]);
                let x = &r[0];
                out.extend(varied[0].map(|v| (v, quote!((#gv / #x)))));
            }
            "sin" | "cos" => {
                reads.push(atoms[0]);
                let x = &n[0];
                let d = if func == "sin" {
                    quote!((#gv * #x.cos()))
                } else {
                    quote!((-(#gv * #x.sin())))
                };
                out.extend(varied[0].map(|v| (v, d)));
            }
            "sum" | "mean" => {
                let xs = shape_of(atoms[0]);
                let d = if func == "sum" {
                    quote!(::adjoint::__private::broadcast_to(#gref, &#xs))
                } else {
                    let n = quote!(::adjoint::no_grad(::adjoint::__private::lit(#gref, #xs.size() as f64)));
                    quote!(::adjoint::__private::broadcast_to(&(#gv / #n), &#xs))
                };
                shapes.push(atoms[0]);
                out.extend(varied[0].map(|v| (v, d)));
            }
            // `x · w` over `x`'s last axis: `g · wᵀ` for `x` (the kernel is a
            // parameter, constant in an input gradient).
            "dot_last" => {
                if varied[1].is_some() {
                    return None;
                }
                reads.push(atoms[1]);
                let w = &n[1];
                out.extend(
                    varied[0].map(|v| (v, quote!(::adjoint::__private::dot_last(#gref, &#w.t())))),
                );
            }
            "operand" | "to_owned" | "clone" | "view" | "as_standard_layout" | "to_shared" => {
                out.extend(varied[0].map(|v| (v, self.owned(g))));
            }
            _ => return None,
        }
        for a in reads {
            self.read(a);
        }
        for a in shapes {
            if let Some(v) = a.var() {
                self.shapes.insert(v);
            }
        }
        Some(out)
    }

    fn reads_of(&self, op: &Op) -> Vec<Var> {
        reads_of(op, &self.names)
    }

    fn read(&mut self, a: &Atom) {
        if let Some(v) = a.var() {
            self.reads.insert(v);
        }
    }
}

fn merge(into: &mut Bars, from: Bars) {
    for (v, terms) in from {
        into.entry(v).or_default().extend(terms);
    }
}

/// The variables an operation reads (a constant's, by the names in its tokens).
fn reads_of(op: &Op, names: &HashMap<String, Var>) -> Vec<Var> {
    let arg = |a: &Arg| a.atom.var();
    let named = |t: &TokenStream| -> Vec<Var> {
        let mut found: Vec<Var> = crate::hygiene::idents(t)
            .iter()
            .filter_map(|n| names.get(n).copied())
            .collect();
        found.sort();
        found
    };
    match op {
        Op::Prim {
            operands, consts, ..
        } => operands
            .iter()
            .filter_map(arg)
            .chain(consts.iter().filter_map(Atom::var))
            .collect(),
        Op::Call(c) => {
            let receiver = match &c.callee {
                Callee::Method { receiver, .. } => arg(receiver),
                Callee::Path { .. } => None,
            };
            c.args.iter().filter_map(arg).chain(receiver).collect()
        }
        Op::Build { reads, tokens, .. } => reads.iter().copied().chain(named(tokens)).collect(),
        Op::Lifted { reads, .. } => reads.iter().filter_map(Atom::var).collect(),
        Op::MapV { recv, captured, .. } => recv
            .var()
            .into_iter()
            .chain(captured.iter().filter_map(Atom::var))
            .collect(),
        Op::Const(t) => named(t),
    }
}
