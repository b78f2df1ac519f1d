//! The primal and adjoint code of a lowered body.
//!
//! The reverse sweep is generated first, block by block, so each block knows what
//! its reverse reads; the primal then saves exactly that: straight-line values stay
//! locals the pullback closure captures, an `if` returns the taken arm's values in a
//! `Branch` enum, a loop pushes one tuple per iteration. Adjoints are plain locals:
//! the first contribution initialises one, later ones add into it, and a value whose
//! adjoint was never initialised contributes nothing, so no pullback runs for it.
//!
//! `sweep` writes the reverse sweep (`lifted` that of lifted transforms: second
//! order), `primal` the primal pass that records what it reads, `grad_primal` the
//! trimmed primal of a gradient alone; this module drives them (`run`) and holds
//! what they share.

use crate::activity::Activity;
use crate::facts::*;
use crate::ir::*;
use crate::names::companion_ident;
use crate::ops::{Read, Style};
use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident, quote};
use std::collections::{BTreeSet, HashMap, HashSet};
use syn::Ident;

mod grad_primal;
mod lifted;
mod primal;
mod sweep;

/// Something the reverse sweep reads from the primal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Slot {
    Var(Var),
    /// The pullback of the call defining this variable.
    Pb(Var),
    /// The per-iteration records of loop `k`.
    Tape(usize),
    /// The arm record of branch `k`.
    Br(usize),
    /// The shape of this variable.
    Shape(Var),
    /// The range loop `k` iterates over, which its reverse sweep walks backwards.
    Range(usize),
    /// The module's path (where a report of second order names it).
    Here,
}

/// The generated code of one body.
pub struct Generated {
    /// Statements computing the primal.
    pub primal: TokenStream,
    /// The output value, after `primal`.
    pub output: TokenStream,
    /// The pullback's body: reads `__ct`, evaluates to the tuple of parameter
    /// cotangents (`()` for constant parameters).
    pub reverse: TokenStream,
    /// The parameters the pullback reads (and so captures).
    pub captured_params: Vec<Ident>,
    /// The primal for `grad!` when it can skip work whose result only the value needs
    /// (then `reverse` follows it directly, seeded with one).
    pub grad_primal: Option<TokenStream>,
}

pub fn generate(f: &Func, act: &Activity) -> Generated {
    let mut g = Gen::new(f, act);
    g.run()
}

struct Gen<'a> {
    f: &'a Func,
    act: &'a Activity,
    defs: HashMap<Var, &'a Op>,
    loop_ids: HashMap<*const Loop, usize>,
    br_ids: HashMap<*const Branching, usize>,
    /// Record slots of each block whose reverse reads something it defines.
    records: HashMap<*const Block, Vec<Slot>>,
    /// Branches and loops with a reverse sweep (others run plain).
    recorded: HashSet<usize>,
    taped: HashSet<usize>,
    /// Loops over a range whose reverse sweep walks the range backwards, so their
    /// index is not saved.
    reversed: HashSet<usize>,
    /// The variables `for` loops bind, by name (`None` where two loops share a name).
    loop_vars: HashMap<String, Option<Var>>,
    reads_all: BTreeSet<Slot>,
    /// Operands the primal hands over by value (statement, operand index): see
    /// `plan_moves`.
    moves: HashSet<(*const Stmt, usize)>,
    /// Values a loop's step passes on as a carry that its record does not keep: the
    /// reverse sweep takes them from the next step's record (see `rev_loop`).
    handed_on: HashSet<Var>,
    bars: Vec<Ident>,
    /// Variables known to be float scalars computed elementwise (cheap to recompute).
    scalar: Vec<bool>,
    next_id: usize,
    payloads: usize,
    /// The zero cotangents of the parameters no cotangent reached, made in the primal
    /// (see `generate`).
    zeros: TokenStream,
}

/// The state of one block's reverse sweep.
struct Rev {
    local: HashSet<Var>,
    /// Variables of an enclosing block whose adjoints a branch arm may start: the
    /// arm initialises them like its own, and the branch hands them out (so that
    /// `if use_bias { .. }` does not zero an adjoint before the branch to add to it
    /// in an arm).
    deferred: HashSet<Var>,
    init: HashSet<Var>,
    reads: BTreeSet<Slot>,
    outer: BTreeSet<Var>,
    code: Vec<TokenStream>,
    remat: HashSet<Var>,
    /// Inside a loop's reverse sweep, where recomputing a scalar beats saving it.
    in_loop: bool,
}

impl Rev {
    /// Of a nested sweep's reads: the slots it defines itself (returned: the record
    /// its region must keep) and the rest, which become reads of the enclosing `outer`.
    fn split_reads(&self, outer: &mut Rev) -> Vec<Slot> {
        let (record, rest): (Vec<Slot>, Vec<Slot>) =
            self.reads.iter().partition(|s| slot_local(s, &self.local));
        outer.reads.extend(rest);
        record
    }

    /// Whether this sweep starts `v`'s adjoint (its own variable, or a deferred one).
    fn owns(&self, v: &Var) -> bool {
        self.local.contains(v) || self.deferred.contains(v)
    }

    fn new(local: HashSet<Var>, in_loop: bool) -> Self {
        Rev {
            local,
            deferred: HashSet::new(),
            init: HashSet::new(),
            reads: BTreeSet::new(),
            outer: BTreeSet::new(),
            code: Vec::new(),
            remat: HashSet::new(),
            in_loop,
        }
    }
}

type Seeds<'s> = &'s dyn Fn(&Leaf) -> Vec<(Atom, TokenStream)>;

/// What a leaf passes on: given the leaf and how to write an atom moved out of
/// its block.
type Payload<'p> = &'p dyn Fn(&Gen, &Leaf, &dyn Fn(&Atom) -> TokenStream) -> Vec<TokenStream>;

impl<'a> Gen<'a> {
    fn new(f: &'a Func, act: &'a Activity) -> Self {
        let names: HashSet<String> = f.vars.iter().map(|v| v.name.to_string()).collect();
        let bars = f
            .vars
            .iter()
            .map(|v| {
                let name = crate::hygiene::plain(&v.name);
                let plain = format!("{name}_bar");
                if names.contains(&plain) {
                    format_ident!("__{}_bar", name)
                } else {
                    crate::hygiene::generated(&plain)
                }
            })
            .collect();
        let mut defs = HashMap::new();
        collect_defs(&f.body, &mut defs);
        let scalar = scalars(f, &defs);
        let mut loop_vars = HashMap::new();
        collect_loop_vars(&f.body, &mut |v| {
            let name = f.name(v).to_string();
            loop_vars
                .entry(name)
                .and_modify(|e| *e = None)
                .or_insert(Some(v));
        });
        Gen {
            f,
            act,
            defs,
            loop_ids: HashMap::new(),
            br_ids: HashMap::new(),
            records: HashMap::new(),
            recorded: HashSet::new(),
            taped: HashSet::new(),
            reversed: HashSet::new(),
            loop_vars,
            reads_all: BTreeSet::new(),
            moves: HashSet::new(),
            handed_on: HashSet::new(),
            bars,
            scalar,
            next_id: 0,
            payloads: 0,
            zeros: TokenStream::new(),
        }
    }

    fn name(&self, v: Var) -> &Ident {
        self.f.name(v)
    }

    fn bar(&self, v: Var) -> &Ident {
        &self.bars[v.0 as usize]
    }

    fn active(&self, v: Var) -> bool {
        self.act.active[v.0 as usize]
    }

    fn slot_name(&self, s: Slot) -> TokenStream {
        match s {
            Slot::Var(v) => self.name(v).to_token_stream(),
            // `t1_pb` and `__t1_pb` for the variables `t1` and `__t1`: one name per
            // variable, kept apart from the user's by hygiene.
            Slot::Pb(v) => {
                crate::hygiene::generated(&format!("{}_pb", crate::hygiene::plain(self.name(v))))
                    .to_token_stream()
            }
            Slot::Tape(k) => format_ident!("__tape{}", k).to_token_stream(),
            Slot::Br(k) => format_ident!("__br{}", k).to_token_stream(),
            Slot::Shape(v) => {
                crate::hygiene::generated(&format!("{}_shape", crate::hygiene::plain(self.name(v))))
                    .to_token_stream()
            }
            Slot::Range(k) => format_ident!("__range{}", k).to_token_stream(),
            Slot::Here => format_ident!("__here").to_token_stream(),
        }
    }

    fn loop_id(&mut self, lp: &Loop) -> usize {
        let key = lp as *const Loop;
        if let Some(id) = self.loop_ids.get(&key) {
            return *id;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.loop_ids.insert(key, id);
        id
    }

    fn br_id(&mut self, br: &Branching) -> usize {
        let key = br as *const Branching;
        if let Some(id) = self.br_ids.get(&key) {
            return *id;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.br_ids.insert(key, id);
        id
    }

    /// Operand `j` in the primal; a float literal takes the type of a variable operand.
    fn operand(&self, operands: &[Arg], j: usize) -> TokenStream {
        match &operands[j].atom {
            Atom::Lit(t) if is_float_literal(t) => match operands.iter().find_map(|a| a.atom.var())
            {
                Some(v) => {
                    let like = self.name(v);
                    quote!(::adjoint::__private::lit(&#like, #t))
                }
                None => t.clone(),
            },
            a => self.atom(a),
        }
    }

    fn atom(&self, a: &Atom) -> TokenStream {
        match a {
            Atom::Var(v) => self.name(*v).to_token_stream(),
            Atom::Lit(t) => t.clone(),
        }
    }

    // ----- the whole body -----

    fn run(&mut self) -> Generated {
        let f = self.f;
        // Reverse first: it decides what the primal saves.
        let mut top_local = HashSet::new();
        for p in &f.params {
            top_local.insert(p.var);
        }
        block_defs(&f.body, &mut top_local);
        let mut rev = Rev::new(top_local, false);
        let out_shape = first_value(&f.body);
        let mut out_atoms = Vec::new();
        if let Some(v) = &out_shape {
            v.flatten(&mut out_atoms);
        }
        // With `has_aux`, only the value (the pair's first half) has a cotangent.
        let ct_shape = out_shape.as_ref().map(|v| differentiated(v, f.aux).clone());
        let mut ct_atoms = Vec::new();
        if let Some(v) = &ct_shape {
            v.flatten(&mut ct_atoms);
        }
        let cts: Vec<Ident> = (0..ct_atoms.len())
            .map(|j| format_ident!("__ct{}", j))
            .collect();
        let aux = f.aux;
        let seeds = |l: &Leaf| -> Vec<(Atom, TokenStream)> {
            let mut atoms = Vec::new();
            if let Some(v) = &l.value {
                differentiated(v, aux).flatten(&mut atoms);
            }
            atoms
                .into_iter()
                .zip(&cts)
                .map(|(a, c)| (a, c.to_token_stream()))
                .collect()
        };
        self.rev_block(&mut rev, &f.body, &seeds);
        // A parameter no cotangent reached gets a zero, made in the primal unless the
        // pullback keeps the parameter anyway (no copy of it for its shape).
        let mut zeros = TokenStream::new();
        let cots: Vec<TokenStream> = f
            .params
            .iter()
            .map(|p| {
                let x = self.name(p.var);
                if !p.active {
                    quote!(())
                } else if rev.init.contains(&p.var) {
                    self.bar(p.var).to_token_stream()
                } else if rev.reads.contains(&Slot::Var(p.var)) {
                    quote!(::adjoint::__private::zeros(&#x))
                } else {
                    let zero =
                        crate::hygiene::generated(&format!("{}_zero", crate::hygiene::plain(x)));
                    zeros.extend(quote!(let #zero = ::adjoint::__private::zeros(&#x);));
                    zero.to_token_stream()
                }
            })
            .collect();
        self.zeros = zeros;
        self.reads_all.extend(rev.reads.iter().copied());
        let code = &rev.code;
        let ct_pat = match &ct_shape {
            Some(shape) => shape_pattern(shape, &mut cts.iter()),
            None => quote!(_),
        };
        // With parameters differentiated, their cotangents come first, as `Variables`.
        let (vars_bar, vars_cot) = if f.params_active {
            (
                quote!(let mut __vars_bar = ::adjoint::Variables::new();),
                quote!(__vars_bar,),
            )
        } else {
            (TokenStream::new(), TokenStream::new())
        };
        let reverse = quote! {
            let #ct_pat = __ct;
            #vars_bar
            #(#code)*
            (#vars_cot #(#cots,)*)
        };

        // Then the primal.
        self.plan_moves(&f.body);
        let params: Vec<Var> = f.params.iter().map(|p| p.var).collect();
        let items = &f.items;
        let mut primal = quote!(#(#items)*);
        if let (true, Some(scope)) = (self.reads_all.contains(&Slot::Here), f.scope) {
            let (here, scope) = (self.slot_name(Slot::Here), self.name(scope));
            primal.extend(quote!(let #here = #scope.path();));
        }
        primal.extend(self.shapes_of(&params));
        primal.extend(self.zeros.clone());
        primal.extend(self.primal_stmts(&f.body.stmts));
        let output_atoms: Vec<TokenStream> = match &f.body.tail {
            Tail::Leaf(l) => {
                let mut atoms = Vec::new();
                if let Some(v) = &l.value {
                    v.flatten(&mut atoms);
                }
                atoms.iter().map(|a| self.by_value(a, false, &[])).collect()
            }
            Tail::Branch(br) => {
                let (names, expr) = self.output_branch(br, out_atoms.len());
                primal.extend(expr);
                names.into_iter().map(|n| n.to_token_stream()).collect()
            }
        };
        let output = match &out_shape {
            Some(shape) => rebuild_tokens(shape, &mut output_atoms.into_iter()),
            None => quote!(()),
        };
        let captured_params = f
            .params
            .iter()
            .filter(|p| self.reads_all.contains(&Slot::Var(p.var)))
            .map(|p| self.name(p.var).clone())
            .collect();
        let grad_primal = self.grad_primal();
        Generated {
            primal,
            output,
            reverse,
            captured_params,
            grad_primal,
        }
    }

    /// The branch that ends the body: `let (names..) = if .. { .. } else { .. };`
    /// giving the `n` atoms of the output.
    fn output_branch(&mut self, br: &'a Branching, n: usize) -> (Vec<Ident>, TokenStream) {
        let payload =
            |_: &Gen, l: &Leaf, moved: &dyn Fn(&Atom) -> TokenStream| -> Vec<TokenStream> {
                let mut atoms = Vec::new();
                if let Some(v) = &l.value {
                    v.flatten(&mut atoms);
                }
                atoms.iter().map(moved).collect()
            };
        self.branch_expr(br, n, &payload)
    }
}
/// `__private::f(&x, &y, c..)`, with the special forms of casts and variadics.
fn fwd_call(
    rule: &crate::ops::Rule,
    f: &Ident,
    ops: &[TokenStream],
    consts: &[TokenStream],
) -> TokenStream {
    match rule.func {
        "cast" => {
            let (x, t) = (&ops[0], &consts[0]);
            quote!(::adjoint::__private::cast::<#t, _>(&#x))
        }
        // Owned copies: the tuple is passed by value.
        "tuple" => quote!((#(::adjoint::__private::own(&#ops),)*)),
        "concatenate" | "stack" | "from_elems" => {
            let axis = &consts[0];
            quote!(::adjoint::__private::#f(#axis, [#(&#ops),*]))
        }
        _ => {
            let cs = consts.iter().map(|c| {
                if rule.consts_by_ref {
                    quote!(&#c)
                } else {
                    c.clone()
                }
            });
            quote!(::adjoint::__private::#f(#(&#ops,)* #(#cs),*))
        }
    }
}

/// The pullback closure of a `mapv` element function: `|v, g| dv`, recomputing the
/// element's primal then running its reverse sweep.
///
/// With `captured` (indices into the closure's free variables, the enclosing values
/// it reads that are differentiated), `|v, g| (dv, (dc..))`: those become inputs of
/// the element function too, and their partials come out beside `dv`.
fn mapv_pullback(closure: &Func, captured: &[usize]) -> TokenStream {
    let mut f = closure.clone();
    for &k in captured {
        f.params.push(Param {
            var: f.free[k].0,
            active: true,
            scalar: false,
            reference: false,
        });
    }
    // Errors of the closure were reported with the enclosing body.
    let act = crate::activity::analyze(&crate::ctxt::Ctxt::default(), &f);
    let g = generate(&f, &act);
    let param = f.name(f.params[0].var);
    let (primal, reverse) = (&g.primal, &g.reverse);
    if captured.is_empty() {
        return quote!(|#param, __ct| {
            #primal
            let (__dv,) = { #reverse };
            __dv
        });
    }
    let dcs: Vec<Ident> = (0..captured.len())
        .map(|i| format_ident!("__dc{}", i))
        .collect();
    quote!(|#param, __ct| {
        #primal
        let (__dv, #(#dcs,)*) = { #reverse };
        (__dv, (#(#dcs,)*))
    })
}

/// Whether `iter` is a range (`a..b`, `a..=b`): cloned, it can be walked again,
/// backwards.
fn is_range(iter: &TokenStream) -> bool {
    let mut e = match syn::parse2::<syn::Expr>(iter.clone()) {
        Ok(e) => e,
        Err(_) => return false,
    };
    while let syn::Expr::Paren(p) = e {
        e = *p.expr;
    }
    matches!(e, syn::Expr::Range(r) if r.start.is_some() && r.end.is_some())
}

/// Whether a loop body may `break`.
fn breaks(b: &Block) -> bool {
    match &b.tail {
        Tail::Leaf(l) => l.kind == LeafKind::Break,
        Tail::Branch(br) => br.arms.iter().any(breaks),
    }
}

/// Calls `f` with every variable a `for` loop binds.
fn collect_loop_vars(b: &Block, f: &mut dyn FnMut(Var)) {
    for s in &b.stmts {
        match s {
            Stmt::If { branch, .. } => branch.arms.iter().for_each(|a| collect_loop_vars(a, f)),
            Stmt::Loop(lp) => {
                if let LoopKind::For { binds, .. } = &lp.kind {
                    binds.iter().for_each(|v| f(*v));
                }
                collect_loop_vars(&lp.body, f);
            }
            _ => {}
        }
    }
    if let Tail::Branch(br) = &b.tail {
        br.arms.iter().for_each(|a| collect_loop_vars(a, f));
    }
}

/// Whether a slot belongs to the block whose locals are `local`. A tape or a branch
/// record is only ever read by the block that defines it.
fn slot_local(s: &Slot, local: &HashSet<Var>) -> bool {
    match s {
        Slot::Var(v) | Slot::Pb(v) | Slot::Shape(v) => local.contains(v),
        Slot::Tape(_) | Slot::Br(_) | Slot::Range(_) => true,
        // Bound once, before the body.
        Slot::Here => false,
    }
}

fn first_value(b: &Block) -> Option<Val> {
    match &b.tail {
        Tail::Leaf(l) => l.value.clone(),
        Tail::Branch(br) => br.arms.iter().find_map(first_value),
    }
}

fn shape_pattern(v: &Val, names: &mut std::slice::Iter<Ident>) -> TokenStream {
    match v {
        Val::Atom(_) => names
            .next()
            .map(|n| n.to_token_stream())
            .unwrap_or(quote!(_)),
        Val::Tuple(vs) => {
            let items = vs.iter().map(|v| shape_pattern(v, names));
            quote!((#(#items,)*))
        }
    }
}

fn rebuild_tokens(v: &Val, atoms: &mut impl Iterator<Item = TokenStream>) -> TokenStream {
    match v {
        Val::Atom(_) => atoms.next().unwrap_or(quote!(())),
        Val::Tuple(vs) => {
            let items = vs.iter().map(|v| rebuild_tokens(v, atoms));
            quote!((#(#items,)*))
        }
    }
}
