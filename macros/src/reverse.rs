//! The primal and adjoint code of a lowered body.
//!
//! The reverse sweep is generated first, block by block, so each block knows what
//! its reverse reads; the primal then saves exactly that: straight-line values stay
//! locals the pullback closure captures, an `if` returns the taken arm's values in a
//! `Branch` enum, a loop pushes one tuple per iteration. Adjoints are plain locals:
//! the first contribution initialises one, later ones add into it, and a value whose
//! adjoint was never initialised contributes nothing, so no pullback runs for it.

use crate::activity::Activity;
use crate::facts::*;
use crate::ir::*;
use crate::names::companion_ident;
use crate::ops::{Read, Style};
use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident, quote};
use std::collections::{BTreeSet, HashMap, HashSet};
use syn::Ident;

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
        let cots: Vec<TokenStream> = f
            .params
            .iter()
            .map(|p| {
                if !p.active {
                    quote!(())
                } else if rev.init.contains(&p.var) {
                    self.bar(p.var).to_token_stream()
                } else {
                    let x = self.name(p.var);
                    rev.reads.insert(Slot::Var(p.var));
                    quote!(::adjoint::__private::zeros(&#x))
                }
            })
            .collect();
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
        primal.extend(self.shapes_of(&params));
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

    // ----- the primal of a gradient alone -----

    /// The primal for `grad!`, which discards the value: without the top-level loops
    /// and branches whose results only the value needs (a loop summing a loss, whose
    /// reverse sweep recomputes what it reads). `None` when there are none, so that
    /// the gradient runs the ordinary primal.
    fn grad_primal(&mut self) -> Option<TokenStream> {
        let dead = self.dead_for_grad();
        let stmts = &self.f.body.stmts;
        if !stmts.iter().any(|s| {
            matches!(s, Stmt::Loop(_) | Stmt::If { .. }) && dead.contains(&(s as *const Stmt))
        }) {
            return None;
        }
        let params: Vec<Var> = self.f.params.iter().map(|p| p.var).collect();
        let items = &self.f.items;
        let mut out = quote!(#(#items)*);
        out.extend(self.shapes_of(&params));
        for s in stmts {
            if !dead.contains(&(s as *const Stmt)) {
                out.extend(self.primal_stmts(std::slice::from_ref(s)));
            } else if let Stmt::Loop(lp) = s
                && let LoopKind::For { iter, .. } = &lp.kind
                && let id = self.loop_id(lp)
                && self.reversed.contains(&id)
            {
                // The reverse sweep walks its range.
                let range = self.slot_name(Slot::Range(id));
                out.extend(quote!(let #range = #iter;));
            }
        }
        if let Tail::Branch(br) = &self.f.body.tail {
            let n = first_value(&self.f.body).map_or(0, |v| {
                let mut atoms = Vec::new();
                v.flatten(&mut atoms);
                atoms.len()
            });
            out.extend(self.output_branch(br, n).1);
        }
        Some(out)
    }

    /// The top-level statements the gradient does not need: pure ones (primitives,
    /// index arithmetic) and whole loops and branches of them, whose results neither
    /// the reverse sweep nor a needed statement reads. Calls, constants and lifted
    /// transforms always run (they may have effects).
    fn dead_for_grad(&self) -> HashSet<*const Stmt> {
        let mut live: HashSet<Var> = HashSet::new();
        for s in &self.reads_all {
            match s {
                Slot::Var(v) | Slot::Shape(v) | Slot::Pb(v) => {
                    live.insert(*v);
                }
                Slot::Tape(_) | Slot::Br(_) | Slot::Range(_) => {}
            }
        }
        if let Tail::Branch(br) = &self.f.body.tail {
            self.reads_of_branching(br, &mut live);
        }
        let mut dead = HashSet::new();
        for s in self.f.body.stmts.iter().rev() {
            let needed = match s {
                Stmt::Let { dst, op, .. } => live.contains(dst) || !self.pure(op),
                Stmt::If { branch, phis } => {
                    phis.iter().any(|p| live.contains(p))
                        || self
                            .br_ids
                            .get(&(branch as *const _))
                            .is_none_or(|id| self.reads_all.contains(&Slot::Br(*id)))
                        || branch.arms.iter().any(|a| self.effects(a))
                }
                Stmt::Loop(lp) => {
                    lp.carries.iter().any(|c| live.contains(&c.out))
                        || lp.value.is_some_and(|v| live.contains(&v))
                        || self
                            .loop_ids
                            .get(&(lp as *const _))
                            .is_none_or(|id| self.taped.contains(id))
                        || self.effects(&lp.body)
                }
                Stmt::LetTuple { .. } | Stmt::LetLifted(_) => true,
            };
            if needed {
                self.reads_of_stmt(s, &mut live);
            } else {
                dead.insert(s as *const Stmt);
            }
        }
        dead
    }

    /// Whether an operation is pure, so the gradient may skip it.
    fn pure(&self, op: &Op) -> bool {
        match op {
            Op::Prim { .. }
            | Op::MapV { .. }
            | Op::Build {
                what: Built::Literal | Built::Field,
                ..
            } => true,
            Op::Build { .. } => false,
            Op::Const(t) => self.index_arithmetic(t).is_some(),
            Op::Call(_) | Op::Lifted(_) => false,
        }
    }

    /// Whether a block has a statement that must run.
    fn effects(&self, b: &Block) -> bool {
        let stmt = |s: &Stmt| match s {
            Stmt::Let { op, .. } => !self.pure(op),
            Stmt::If { branch, .. } => branch.arms.iter().any(|a| self.effects(a)),
            Stmt::Loop(lp) => self.effects(&lp.body),
            Stmt::LetTuple { .. } | Stmt::LetLifted(_) => true,
        };
        b.stmts.iter().any(stmt)
            || matches!(&b.tail, Tail::Branch(br) if br.arms.iter().any(|a| self.effects(a)))
    }

    /// Marks every variable a statement reads (all of it, nested blocks included).
    fn reads_of_stmt(&self, s: &Stmt, live: &mut HashSet<Var>) {
        let atom = |a: &Atom, live: &mut HashSet<Var>| {
            if let Some(v) = a.var() {
                live.insert(v);
            }
        };
        match s {
            Stmt::Let { op, .. } => match op {
                Op::Prim {
                    operands, consts, ..
                } => {
                    operands.iter().for_each(|a| atom(&a.atom, live));
                    consts.iter().for_each(|c| atom(c, live));
                }
                Op::Call(c) => self.reads_of_call(c, live),
                Op::Const(t) | Op::Lifted(t) => self.reads_of_tokens(t, live),
                Op::Build { reads, .. } => live.extend(reads.iter().copied()),
                Op::MapV { recv, closure, .. } => {
                    atom(recv, live);
                    live.extend(closure.free.iter().map(|(_, outer)| *outer));
                }
            },
            Stmt::LetTuple { call, .. } => self.reads_of_call(call, live),
            Stmt::LetLifted(l) => {
                self.reads_of_tokens(&l.tokens, live);
                atom(&l.scope, live);
                l.args.iter().for_each(|a| atom(&a.atom, live));
            }
            Stmt::If { branch, .. } => self.reads_of_branching(branch, live),
            Stmt::Loop(lp) => {
                if let LoopKind::For { iter, .. } = &lp.kind {
                    self.reads_of_tokens(iter, live);
                }
                lp.carries.iter().for_each(|c| atom(&c.init, live));
                self.reads_of_block(&lp.body, live);
            }
        }
    }

    fn reads_of_call(&self, c: &Call, live: &mut HashSet<Var>) {
        if let Callee::Method { receiver, .. } = &c.callee
            && let Some(v) = receiver.atom.var()
        {
            live.insert(v);
        }
        live.extend(c.args.iter().filter_map(|a| a.atom.var()));
    }

    fn reads_of_branching(&self, br: &Branching, live: &mut HashSet<Var>) {
        match &br.kind {
            BranchKind::If { cond } => self.reads_of_tokens(cond, live),
            BranchKind::Match {
                scrutinee, pats, ..
            } => {
                self.reads_of_tokens(scrutinee, live);
                pats.iter().for_each(|p| self.reads_of_tokens(p, live));
            }
        }
        br.arms.iter().for_each(|a| self.reads_of_block(a, live));
    }

    fn reads_of_block(&self, b: &Block, live: &mut HashSet<Var>) {
        b.stmts.iter().for_each(|s| self.reads_of_stmt(s, live));
        self.reads_of_tail(b, live);
    }

    /// What the end of a block reads: the values its leaves pass on, and the
    /// branch that ends it.
    fn reads_of_tail(&self, b: &Block, live: &mut HashSet<Var>) {
        each_leaf(b, &mut |l| {
            let mut atoms = Vec::new();
            if let Some(v) = &l.value {
                v.flatten(&mut atoms);
            }
            atoms.extend(l.carries.iter().cloned());
            live.extend(atoms.iter().filter_map(Atom::var));
        });
        if let Tail::Branch(br) = &b.tail {
            self.reads_of_branching(br, live);
        }
    }

    /// The variables that tokens emitted as written name (every variable of that
    /// name: a conservative answer).
    fn reads_of_tokens(&self, t: &TokenStream, live: &mut HashSet<Var>) {
        for tt in t.clone() {
            match tt {
                proc_macro2::TokenTree::Ident(i) => {
                    for (k, info) in self.f.vars.iter().enumerate() {
                        if info.name == i {
                            live.insert(Var(k as u32));
                        }
                    }
                }
                proc_macro2::TokenTree::Group(g) => self.reads_of_tokens(&g.stream(), live),
                _ => {}
            }
        }
    }

    // ----- reverse -----

    fn contribute(&self, r: &mut Rev, a: &Atom, expr: TokenStream) {
        let Some(v) = a.var() else { return };
        if !self.active(v) {
            return;
        }
        let bar = self.bar(v);
        if r.owns(&v) {
            if r.init.insert(v) {
                r.code.push(quote!(let mut #bar = #expr;));
            } else {
                r.code
                    .push(quote!(::adjoint::__private::acc(&mut #bar, #expr);));
            }
        } else {
            r.outer.insert(v);
            r.code
                .push(quote!(::adjoint::__private::acc(&mut #bar, #expr);));
        }
    }

    /// Whether a contribution to `a` adds to an adjoint that exists already (rather
    /// than initialising it).
    fn accumulates(&self, r: &Rev, a: &Atom) -> bool {
        a.var()
            .is_some_and(|v| self.active(v) && (!r.owns(&v) || r.init.contains(&v)))
    }

    /// Makes sure `v`'s adjoint exists, zero if nothing contributed yet.
    fn ensure_init(&self, r: &mut Rev, v: Var) {
        if r.owns(&v) {
            if r.init.insert(v) {
                let bar = self.bar(v);
                let x = self.read_var(r, v);
                r.code
                    .push(quote!(let mut #bar = ::adjoint::__private::zeros(&#x);));
            }
        } else {
            r.outer.insert(v);
        }
    }

    /// Reads a primal variable in the reverse sweep: views are recomputed from their
    /// source rather than saved.
    fn read_var(&self, r: &mut Rev, v: Var) -> TokenStream {
        let name = self.name(v).to_token_stream();
        if let Some(Op::Prim {
            rule,
            operands,
            consts,
            ..
        }) = self.defs.get(&v)
        {
            // Views are recomputed (they borrow); so are scalars in a loop: a few
            // flops beat a push and a pop per iteration.
            // (Not a sum or a mean: recomputing one reads a whole array.)
            let cheap = rule.elementwise || rule.func == "index";
            if rule.view || (r.in_loop && cheap && self.scalar[v.0 as usize]) {
                if r.remat.insert(v) {
                    let fwd = self.prim_call(r, rule, operands, consts);
                    r.code.push(quote!(let #name = #fwd;));
                }
                return name;
            }
        }
        // Index arithmetic on loop variables (`i + 1`): recomputed in a loop's
        // reverse sweep from the loop variables rather than saved.
        if let Some(Op::Const(t)) = self.defs.get(&v)
            && r.in_loop
            && let Some(vars) = self.index_arithmetic(t)
        {
            if r.remat.insert(v) {
                for u in vars {
                    self.read_var(r, u);
                }
                r.code.push(quote!(let #name = #t;));
            }
            return name;
        }
        r.reads.insert(Slot::Var(v));
        name
    }

    /// If `t` is integer arithmetic on loop variables and integer literals (`i + 1`,
    /// `2 * i - 1`), the loop variables it reads.
    fn index_arithmetic(&self, t: &TokenStream) -> Option<Vec<Var>> {
        let mut vars = Vec::new();
        for tt in t.clone() {
            match tt {
                proc_macro2::TokenTree::Ident(i) => {
                    vars.push((*self.loop_vars.get(&i.to_string())?)?);
                }
                proc_macro2::TokenTree::Literal(l) => {
                    syn::parse2::<syn::LitInt>(l.to_token_stream()).ok()?;
                }
                proc_macro2::TokenTree::Punct(p) if "+-*/".contains(p.as_char()) => {}
                _ => return None,
            }
        }
        Some(vars)
    }

    fn read_atom(&self, r: &mut Rev, a: &Atom) -> TokenStream {
        match a {
            Atom::Var(v) => self.read_var(r, *v),
            Atom::Lit(t) => t.clone(),
        }
    }

    /// Operand `j` in the reverse sweep; a float literal takes the type of a
    /// variable operand (`2.0` beside an `f32` array is an `f32`).
    fn read_operand(&self, r: &mut Rev, operands: &[Arg], j: usize) -> TokenStream {
        match &operands[j].atom {
            Atom::Lit(t) if is_float_literal(t) => match operands.iter().find_map(|a| a.atom.var())
            {
                Some(v) => {
                    let like = self.read_var(r, v);
                    quote!(::adjoint::__private::lit(&#like, #t))
                }
                None => t.clone(),
            },
            a => self.read_atom(r, a),
        }
    }

    fn read_slot(&self, r: &mut Rev, s: Slot) -> TokenStream {
        r.reads.insert(s);
        self.slot_name(s)
    }

    /// `__private::f(&x, &y, consts..)`, reading the operands in the reverse sweep.
    fn prim_call(
        &self,
        r: &mut Rev,
        rule: &crate::ops::Rule,
        operands: &[Arg],
        consts: &[Atom],
    ) -> TokenStream {
        let f = Ident::new(rule.func, Span::call_site());
        let ops: Vec<TokenStream> = (0..operands.len())
            .map(|j| self.read_operand(r, operands, j))
            .collect();
        let cs: Vec<TokenStream> = consts.iter().map(|c| self.read_atom(r, c)).collect();
        fwd_call(rule, &f, &ops, &cs)
    }

    fn rev_block(&mut self, r: &mut Rev, b: &'a Block, seeds: Seeds) {
        match &b.tail {
            Tail::Leaf(l) => {
                for (a, e) in seeds(l) {
                    self.contribute(r, &a, e);
                }
            }
            Tail::Branch(br) => self.rev_branch(r, br, seeds),
        }
        for s in b.stmts.iter().rev() {
            self.rev_stmt(r, s);
        }
    }

    fn rev_stmt(&mut self, r: &mut Rev, s: &'a Stmt) {
        match s {
            Stmt::Let { dst, op, .. } => {
                if !self.active(*dst) || !r.init.contains(dst) {
                    return;
                }
                match op {
                    Op::Prim {
                        rule,
                        operands,
                        consts,
                        ..
                    } => self.rev_prim(r, *dst, rule, operands, consts),
                    Op::Call(call) if call.scoped == Scoped::Param => {
                        let at = self.read_slot(r, Slot::Pb(*dst));
                        let bar = self.bar(*dst);
                        r.code.push(
                            quote!(::adjoint::__private::add_param(&mut __vars_bar, &#at, #bar);),
                        );
                    }
                    Op::Call(call) => {
                        let pb = self.read_slot(r, Slot::Pb(*dst));
                        let bar = self.bar(*dst);
                        self.rev_call(r, call, pb, bar.to_token_stream());
                    }
                    Op::MapV {
                        recv,
                        closure,
                        captured,
                        ..
                    } => {
                        let x = self.read_atom(r, recv);
                        for (_, outer) in &closure.free {
                            self.read_var(r, *outer);
                        }
                        let bar = self.bar(*dst).clone();
                        // The enclosing values the closure reads that are differentiated.
                        let caps: Vec<usize> = (0..captured.len())
                            .filter(|&k| self.act.is_active(&captured[k]))
                            .collect();
                        if caps.is_empty() {
                            let pb = mapv_pullback(closure, &[]);
                            self.contribute(
                                r,
                                recv,
                                quote!(::adjoint::__private::mapv_pb(&#x, #bar, #pb)),
                            );
                        } else {
                            let pb = mapv_pullback(closure, &caps);
                            let zero: Vec<TokenStream> = caps
                                .iter()
                                .map(|&k| {
                                    let c = self.read_atom(r, &captured[k]);
                                    quote!(::adjoint::__private::zeros(&#c))
                                })
                                .collect();
                            let dx = if self.act.is_active(recv) {
                                format_ident!("{}_x", bar).to_token_stream()
                            } else {
                                quote!(_)
                            };
                            let dcs: Vec<Ident> = (0..caps.len())
                                .map(|i| format_ident!("{}_c{}", bar, i))
                                .collect();
                            r.code.push(quote! {
                                let (#dx, (#(#dcs,)*)) = ::adjoint::__private::mapv_pb_captured(
                                    &#x, #bar, (#(#zero,)*), #pb
                                );
                            });
                            self.contribute(r, recv, dx);
                            for (&k, dc) in caps.iter().zip(&dcs) {
                                self.contribute(r, &captured[k], dc.to_token_stream());
                            }
                        }
                    }
                    Op::Lifted(_) => {
                        r.code
                            .push(quote!(::adjoint::__private::second_order(&mut __vars_bar);));
                    }
                    Op::Const(_) | Op::Build { .. } => {}
                }
            }
            Stmt::LetTuple { dsts, call, .. } => {
                if !dsts.iter().any(|d| self.active(*d) && r.init.contains(d)) {
                    return;
                }
                let cts: Vec<TokenStream> = dsts
                    .iter()
                    .map(|d| {
                        if r.init.contains(d) {
                            self.bar(*d).to_token_stream()
                        } else {
                            let x = self.read_var(r, *d);
                            quote!(::adjoint::__private::zeros(&#x))
                        }
                    })
                    .collect();
                let pb = self.read_slot(r, Slot::Pb(dsts[0]));
                self.rev_call(r, call, pb, quote!((#(#cts,)*)));
            }
            Stmt::If { branch, phis } => {
                let phi_seeds: Vec<Option<TokenStream>> = phis
                    .iter()
                    .map(|p| {
                        (self.active(*p) && r.init.contains(p))
                            .then(|| self.bar(*p).to_token_stream())
                    })
                    .collect();
                let seeds = |l: &Leaf| -> Vec<(Atom, TokenStream)> {
                    let mut atoms = Vec::new();
                    if let Some(v) = &l.value {
                        v.flatten(&mut atoms);
                    }
                    atoms.extend(l.carries.iter().cloned());
                    atoms
                        .into_iter()
                        .zip(&phi_seeds)
                        .filter_map(|(a, s)| s.clone().map(|s| (a, s)))
                        .collect()
                };
                self.rev_branch(r, branch, &seeds);
            }
            Stmt::Loop(lp) => self.rev_loop(r, lp),
            Stmt::LetLifted(l) => self.rev_lifted(r, l),
        }
    }

    /// Whether `atom` is a parameter whose type is a reference (`&T`).
    fn is_reference_param(&self, atom: &Atom) -> bool {
        atom.var()
            .is_some_and(|v| self.f.params.iter().any(|p| p.var == v && p.reference))
    }

    /// The pullback of a lifted gradient `g = grad_x f(params, x)` (second order):
    /// with cotangent `c`, the parameters' and `x`'s cotangents are the gradient of
    /// `<grad_x f, c>`, the child's JVP along `c`; so the child's JVP-VJP runs, on a
    /// snapshot of the variables, in the child's scope. For `value_and_grad!` the
    /// value's cotangent `c_v` adds `c_v f`: it seeds the JVP's value.
    fn rev_lifted(&mut self, r: &mut Rev, l: &Lifted) {
        if !l
            .defined()
            .iter()
            .any(|d| self.active(*d) && r.init.contains(d))
        {
            return;
        }
        // The value's and the aux's cotangents seed the child's outputs; the tangent of
        // the value is seeded with one, the aux's tangent with zero.
        let seed = |v: Option<Var>, out: TokenStream| match v {
            Some(v) if r.init.contains(&v) => self.bar(v).to_token_stream(),
            _ => quote!(::adjoint::__private::zeros(&#out)),
        };
        let seeds = match l.aux {
            Some(a) => {
                let (v, x) = (
                    seed(l.value, quote!(__o.0.0)),
                    seed(Some(a), quote!(__o.0.1)),
                );
                quote!(((#v, #x), (::adjoint::__private::grad_seed(&__o.1.0), ::adjoint::__private::zeros(&__o.1.1))))
            }
            None => {
                let v = seed(l.value, quote!(__o.0));
                quote!((#v, ::adjoint::__private::grad_seed(&__o.1)))
            }
        };
        let snap = self.read_slot(r, Slot::Pb(l.dsts[0]));
        let tangents: Vec<TokenStream> = l
            .dsts
            .iter()
            .zip(&l.args)
            .map(|(d, a)| {
                let g = if r.init.contains(d) {
                    self.bar(*d).to_token_stream()
                } else {
                    let x = self.read_var(r, *d);
                    quote!(::adjoint::__private::zeros(&#x))
                };
                // A tangent has its primal's type: a reference for a reference.
                if a.by_ref || self.is_reference_param(&a.atom) {
                    quote!(&#g)
                } else {
                    g
                }
            })
            .collect();
        let primals: Vec<TokenStream> = l
            .args
            .iter()
            .map(|a| {
                let x = self.read_atom(r, &a.atom);
                if a.by_ref {
                    quote!(&#x)
                } else if self.is_reference_param(&a.atom) {
                    // The owning companion holds its own copy: borrow either way.
                    quote!(::adjoint::__private::Value::primal(&#x))
                } else {
                    x
                }
            })
            .collect();
        let companion = companion_ident(&format_ident!("__call_body_jvp"), "vjp_params");
        let cots: Vec<Ident> = (0..l.args.len())
            .map(|i| format_ident!("__c{}", i))
            .collect();
        let skip = l.args.iter().map(|_| quote!(_));
        let merge = if self.f.params_active {
            quote!(::adjoint::__private::Accumulate::accumulate(&mut __vars_bar, __cv);)
        } else {
            TokenStream::new()
        };
        r.code.push(quote! {
            let (#(#cots,)*) = {
                let (mut __snapshot, __child, __module) = #snap;
                let mut __cx2 = ::adjoint::Scope::for_apply(
                    &mut __snapshot,
                    ::adjoint::scope::Mutable::Only(::core::default::Default::default()),
                    ::core::default::Default::default(),
                );
                __cx2.enter_path(&__child);
                let (__o, __pb2) = ::adjoint::scope::Child::module(&__module).#companion(&mut __cx2, #(#primals,)* #(#tangents,)*);
                let (__cv, _, #(#cots,)* #(#skip,)*) =
                    __pb2(#seeds);
                #merge
                (#(#cots,)*)
            };
        });
        for (a, c) in l.args.iter().zip(&cots) {
            self.contribute(r, &a.atom, c.to_token_stream());
        }
    }

    fn rev_prim(
        &mut self,
        r: &mut Rev,
        dst: Var,
        rule: &crate::ops::Rule,
        operands: &[Arg],
        consts: &[Atom],
    ) {
        let bar = self.bar(dst).clone();
        if rule.func == "tuple" {
            // A tuple's cotangent is the tuple of its fields'.
            let pieces: Vec<Ident> = (0..operands.len())
                .map(|i| format_ident!("{}_{}", bar, i))
                .collect();
            r.code.push(quote!(let (#(#pieces,)*) = #bar;));
            for (a, p) in operands.iter().zip(&pieces) {
                self.contribute(r, &a.atom, p.to_token_stream());
            }
            return;
        }
        if rule.operands == 0 {
            // concatenate / stack: one pullback gives every piece.
            let pb = rule.pullbacks[0]
                .as_ref()
                .expect("variadic rules have a pullback");
            let f = Ident::new(pb.func, Span::call_site());
            let xs: Vec<TokenStream> = operands
                .iter()
                .map(|a| self.read_atom(r, &a.atom))
                .collect();
            let axis = self.read_atom(r, &consts[0]);
            let pieces: Vec<Ident> = (0..operands.len())
                .map(|i| format_ident!("{}_{}", bar, i))
                .collect();
            r.code.push(
                quote!(let [#(#pieces),*] = ::adjoint::__private::#f(#axis, [#(&#xs),*], #bar);),
            );
            for (a, p) in operands.iter().zip(&pieces) {
                self.contribute(r, &a.atom, p.to_token_stream());
            }
            return;
        }
        // A pullback that can add into an existing adjoint in place does so; the
        // joint pullback is for when every contribution starts an adjoint.
        let adds_in_place = |i: usize| {
            rule.pullbacks
                .get(i)
                .and_then(|p| p.as_ref())
                .is_some_and(|p| p.into.is_some())
                && self.accumulates(r, &operands[i].atom)
        };
        if let Some(joint) = &rule.joint
            && operands.iter().all(|a| self.act.is_active(&a.atom))
            && !(0..operands.len()).any(adds_in_place)
        {
            let f = Ident::new(joint.func, Span::call_site());
            let args: Vec<TokenStream> = joint
                .reads
                .iter()
                .map(|rd| self.pb_arg(r, dst, rule, operands, consts, rd, &[]))
                .collect();
            let parts: Vec<Ident> = (0..operands.len())
                .map(|i| format_ident!("{}_{}", bar, i))
                .collect();
            r.code
                .push(quote!(let (#(#parts,)*) = ::adjoint::__private::#f(#(#args,)* #bar);));
            for (a, p) in operands.iter().zip(&parts) {
                self.contribute(r, &a.atom, p.to_token_stream());
            }
            return;
        }
        let pbs: Vec<(usize, &crate::ops::Pullback)> = operands
            .iter()
            .enumerate()
            .filter(|(_, a)| self.act.is_active(&a.atom))
            .filter_map(|(i, _)| {
                rule.pullbacks
                    .get(i)
                    .and_then(|p| p.as_ref())
                    .map(|p| (i, p))
            })
            .collect();
        // In-place pullbacks borrow the cotangent: they run first, and the last of
        // the others takes it.
        let (in_place, by_value): (Vec<_>, Vec<_>) =
            pbs.into_iter().partition(|&(i, _)| adds_in_place(i));
        for (i, pb) in in_place {
            let f = Ident::new(
                pb.into.expect("in-place pullbacks have `into`"),
                Span::call_site(),
            );
            let args: Vec<TokenStream> = pb
                .reads
                .iter()
                .map(|rd| self.pb_arg(r, dst, rule, operands, consts, rd, &[]))
                .collect();
            let v = operands[i]
                .atom
                .var()
                .expect("active operands are variables");
            if !r.owns(&v) {
                r.outer.insert(v);
            }
            let acc = self.bar(v);
            r.code
                .push(quote!(::adjoint::__private::#f(&mut #acc, #(#args,)* &#bar);));
        }
        let pbs = by_value;
        let n = pbs.len();
        for (k, (i, pb)) in pbs.into_iter().enumerate() {
            let ct = if k + 1 == n {
                quote!(#bar)
            } else {
                quote!(::core::clone::Clone::clone(&#bar))
            };
            let f = Ident::new(pb.func, Span::call_site());
            // Values this pullback reads anyway give their shapes inline, without a
            // separate saved shape.
            let read_values: Vec<Var> = pb
                .reads
                .iter()
                .filter_map(|rd| match rd {
                    Read::Operand(j) => operands[*j].atom.var(),
                    Read::Out => Some(dst),
                    _ => None,
                })
                .collect();
            let args: Vec<TokenStream> = pb
                .reads
                .iter()
                .map(|rd| self.pb_arg(r, dst, rule, operands, consts, rd, &read_values))
                .collect();
            let target = &operands[i].atom;
            match pb.style {
                Style::Returns => {
                    let expr = quote!(::adjoint::__private::#f(#(#args,)* #ct));
                    self.contribute(r, target, expr);
                }
                Style::AddsInto => {
                    let v = target.var().expect("active operands are variables");
                    self.ensure_init(r, v);
                    let acc = self.bar(v);
                    r.code
                        .push(quote!(::adjoint::__private::#f(&mut #acc, #(#args,)* #ct);));
                }
            }
        }
    }

    /// One argument of a pullback call: an operand or the output by reference, an
    /// operand's shape, or a constant.
    #[allow(clippy::too_many_arguments)]
    fn pb_arg(
        &self,
        r: &mut Rev,
        dst: Var,
        rule: &crate::ops::Rule,
        operands: &[Arg],
        consts: &[Atom],
        read: &Read,
        read_values: &[Var],
    ) -> TokenStream {
        match read {
            Read::Operand(j) => {
                let x = self.read_operand(r, operands, *j);
                quote!(&#x)
            }
            Read::Out => {
                let y = self.read_var(r, dst);
                quote!(&#y)
            }
            Read::Shape(j) => match &operands[*j].atom {
                // A scalar operand of a scalar elementwise result has the type of the
                // result's cotangent: its shape (a zero-sized value) comes from that.
                Atom::Var(v)
                    if rule.elementwise
                        && self.scalar[v.0 as usize]
                        && self.scalar[dst.0 as usize] =>
                {
                    let bar = self.bar(dst);
                    quote!(&::adjoint::__private::shape_of(&#bar))
                }
                Atom::Var(v) if read_values.contains(v) || r.reads.contains(&Slot::Var(*v)) => {
                    let x = self.read_var(r, *v);
                    quote!(&::adjoint::__private::shape_of(&#x))
                }
                Atom::Var(v) => {
                    let s = self.read_slot(r, Slot::Shape(*v));
                    quote!(&#s)
                }
                Atom::Lit(_) => {
                    let x = self.read_operand(r, operands, *j);
                    quote!(&::adjoint::__private::shape_of(&#x))
                }
            },
            Read::Const(j) => {
                let c = self.read_atom(r, &consts[*j]);
                if rule.consts_by_ref { quote!(&#c) } else { c }
            }
        }
    }

    fn rev_call(&mut self, r: &mut Rev, call: &Call, pb: TokenStream, ct: TokenStream) {
        let mut pats = Vec::new();
        let mut gets = Vec::new();
        for (i, a) in call.args.iter().enumerate() {
            if self.act.is_active(&a.atom) {
                let c = format_ident!("__c{}", i);
                pats.push(c.to_token_stream());
                gets.push((a.atom.clone(), c));
            } else {
                pats.push(quote!(_));
            }
        }
        if self.f.params_active && call.scoped == Scoped::Module {
            // A submodule's parameter cotangents join this module's.
            r.code.push(quote!(let (__cv, #(#pats,)*) = #pb(#ct);));
            r.code
                .push(quote!(::adjoint::__private::Accumulate::accumulate(&mut __vars_bar, __cv);));
        } else {
            r.code.push(quote!(let (#(#pats,)*) = #pb(#ct);));
        }
        for (a, c) in gets {
            self.contribute(r, &a, c.to_token_stream());
        }
    }

    /// The reverse of a branch: a `match` on its record, each arm running its
    /// block's reverse. Values of enclosing blocks that arms contribute to are
    /// zeroed before it when nothing contributed yet.
    fn rev_branch(&mut self, r: &mut Rev, br: &'a Branching, seeds: Seeds) {
        let id = self.br_id(br);
        let mut arms_code = Vec::new();
        let mut any = false;
        let mut pre_zero = BTreeSet::new();
        // The enclosing adjoints not started yet: an arm that contributes to one
        // starts it, and the branch hands it out (zero from the arms that do not).
        let deferred: HashSet<Var> = r
            .local
            .iter()
            .chain(&r.deferred)
            .filter(|v| !r.init.contains(v))
            .copied()
            .collect();
        let mut started = BTreeSet::new();
        let mut inits = Vec::new();
        for (i, arm) in br.arms.iter().enumerate() {
            let mut local = HashSet::new();
            block_defs(arm, &mut local);
            if let BranchKind::Match { binds, .. } = &br.kind {
                local.extend(binds[i].iter().copied());
            }
            let mut sub = Rev::new(local, r.in_loop);
            sub.deferred = deferred.clone();
            self.rev_block(&mut sub, arm, seeds);
            let record = sub.split_reads(r);
            for v in &sub.outer {
                if r.owns(v) {
                    if !r.init.contains(v) {
                        pre_zero.insert(*v);
                    }
                } else {
                    r.outer.insert(*v);
                }
            }
            started.extend(sub.init.iter().filter(|v| deferred.contains(v)).copied());
            inits.push(sub.init.clone());
            any |= !sub.code.is_empty() || !record.is_empty();
            self.reads_all.extend(sub.reads.iter().copied());
            self.records.insert(arm as *const Block, record.clone());
            arms_code.push((record, sub.code));
        }
        if !any {
            return;
        }
        self.recorded.insert(id);
        for v in pre_zero {
            self.ensure_init(r, v);
        }
        // Each arm ends with the adjoints it started, or zeros.
        let started: Vec<Var> = started.into_iter().collect();
        let mut ends = Vec::new();
        for init in &inits {
            let items: Vec<TokenStream> = started
                .iter()
                .map(|v| {
                    if init.contains(v) {
                        self.bar(*v).to_token_stream()
                    } else {
                        let x = self.read_var(r, *v);
                        quote!(::adjoint::__private::zeros(&#x))
                    }
                })
                .collect();
            ends.push(items);
        }
        let n = br.arms.len();
        let enum_name = format_ident!("Branch{}", n);
        let arms = arms_code
            .into_iter()
            .zip(ends)
            .enumerate()
            .map(|(i, ((record, code), end))| {
                let variant = format_ident!("Arm{}", i);
                let names: Vec<TokenStream> = record.iter().map(|s| self.slot_name(*s)).collect();
                let end = if started.is_empty() {
                    TokenStream::new()
                } else {
                    quote!((#(#end,)*))
                };
                quote!(::adjoint::__private::#enum_name::#variant((#(#names,)*)) => { #(#code)* #end })
            });
        let rec = self.read_slot(r, Slot::Br(id));
        if started.is_empty() {
            r.code.push(quote!(match #rec { #(#arms)* }));
        } else {
            let bars = started.iter().map(|v| self.bar(*v));
            r.code
                .push(quote!(let (#(mut #bars,)*) = match #rec { #(#arms)* };));
            r.init.extend(started.iter().copied());
        }
    }

    fn rev_loop(&mut self, r: &mut Rev, lp: &'a Loop) {
        let id = self.loop_id(lp);
        let carries: Vec<&Carry> = lp
            .carries
            .iter()
            .filter(|c| self.active(c.inner) || self.active(c.out))
            .collect();
        let carry_bars: Vec<Ident> = carries
            .iter()
            .map(|c| format_ident!("{}_carry", self.bar(c.out)))
            .collect();
        let mut local = HashSet::new();
        block_defs(&lp.body, &mut local);
        for c in &lp.carries {
            local.insert(c.inner);
        }
        if let LoopKind::For { binds, .. } = &lp.kind {
            local.extend(binds.iter().copied());
        }
        let mut sub = Rev::new(local, true);
        let seeds = |l: &Leaf| -> Vec<(Atom, TokenStream)> {
            let mut out = Vec::new();
            for (c, bar) in carries.iter().zip(&carry_bars) {
                if let Some(pos) = lp.carries.iter().position(|x| std::ptr::eq(x, *c)) {
                    out.push((l.carries[pos].clone(), bar.to_token_stream()));
                }
            }
            out
        };
        self.rev_block(&mut sub, &lp.body, &seeds);
        for (c, bar) in carries.iter().zip(&carry_bars) {
            if sub.init.contains(&c.inner) {
                let inner_bar = self.bar(c.inner);
                sub.code.push(quote!(#bar = #inner_bar;));
            } else {
                let x = self.read_var(&mut sub, c.inner);
                sub.code
                    .push(quote!(#bar = ::adjoint::__private::zeros(&#x);));
            }
        }
        if sub.code.is_empty() || (carries.is_empty() && sub.outer.is_empty()) {
            return;
        }
        let mut record = sub.split_reads(r);
        // A `for` over a range that runs every iteration (no `break`) is walked
        // backwards: its variables need no record.
        let range = match &lp.kind {
            LoopKind::For { pat, iter, binds } if is_range(iter) && !breaks(&lp.body) => {
                record.retain(|s| !matches!(s, Slot::Var(v) if binds.contains(v)));
                self.reversed.insert(id);
                Some(pat)
            }
            _ => None,
        };
        // A step's carried value that the next step receives (the RNN's `h`) is kept
        // once, as the next step's input: the reverse sweep walks the steps backwards
        // and takes it from there (the last one from the loop's result).
        let mut handed = Vec::new();
        if let Tail::Leaf(l) = &lp.body.tail
            && matches!(l.kind, LeafKind::Continue | LeafKind::Fallthrough)
            && !breaks(&lp.body)
        {
            let mut defs = HashSet::new();
            block_defs(&lp.body, &mut defs);
            for (c, next) in lp.carries.iter().zip(&l.carries) {
                let Some(n) = next.var() else { continue };
                let passed_once = l.carries.iter().filter(|a| a.var() == Some(n)).count() == 1;
                if defs.contains(&n)
                    && passed_once
                    && !self.scalar[n.0 as usize]
                    && record.contains(&Slot::Var(n))
                    && record.contains(&Slot::Var(c.inner))
                {
                    record.retain(|s| *s != Slot::Var(n));
                    handed.push((n, c));
                }
            }
        }
        self.handed_on.extend(handed.iter().map(|(n, _)| *n));
        if range.is_none() || !record.is_empty() {
            self.taped.insert(id);
        }
        self.reads_all.extend(sub.reads.iter().copied());
        self.records
            .insert(&lp.body as *const Block, record.clone());
        for (c, bar) in carries.iter().zip(&carry_bars) {
            if r.init.contains(&c.out) {
                let out_bar = self.bar(c.out);
                r.code.push(quote!(let mut #bar = #out_bar;));
            } else {
                let x = self.read_var(r, c.out);
                r.code
                    .push(quote!(let mut #bar = ::adjoint::__private::zeros(&#x);));
            }
        }
        let outer: Vec<Var> = sub.outer.iter().copied().collect();
        for v in outer {
            if r.owns(&v) {
                self.ensure_init(r, v);
            } else {
                r.outer.insert(v);
            }
        }
        let mut prefix = Vec::new();
        for (k, (n, c)) in handed.iter().enumerate() {
            let next = format_ident!("__next{}_{}", id, k);
            let out = self.read_var(r, c.out);
            r.code
                .push(quote!(let mut #next = ::core::clone::Clone::clone(&#out);));
            let (n, inner) = (self.name(*n), self.name(c.inner));
            prefix.push(quote! {
                let #n = ::core::mem::replace(&mut #next, ::core::clone::Clone::clone(&#inner));
            });
        }
        let names: Vec<TokenStream> = record.iter().map(|s| self.slot_name(*s)).collect();
        let code: Vec<TokenStream> = prefix.into_iter().chain(sub.code.iter().cloned()).collect();
        let head = match range {
            Some(pat) => {
                let range = self.read_slot(r, Slot::Range(id));
                if record.is_empty() {
                    quote!(for #pat in #range.rev())
                } else {
                    let tape = self.read_slot(r, Slot::Tape(id));
                    quote!(for (#pat, (#(#names,)*)) in #range.rev().zip(#tape.into_iter().rev()))
                }
            }
            None => {
                let tape = self.read_slot(r, Slot::Tape(id));
                quote!(for (#(#names,)*) in #tape.into_iter().rev())
            }
        };
        r.code.push(quote!(#head { #(#code)* }));
        for (c, bar) in carries.iter().zip(&carry_bars) {
            self.contribute(r, &c.init, bar.to_token_stream());
        }
    }

    // ----- primal -----

    /// An atom used by value: a variable the reverse sweep also reads, or one that
    /// belongs to an enclosing block, is cloned (free for `Copy` scalars).
    fn by_value(&self, a: &Atom, outer: bool, also_moved: &[Slot]) -> TokenStream {
        match a {
            Atom::Var(v) => {
                let name = self.name(*v);
                if outer
                    || also_moved.contains(&Slot::Var(*v))
                    || self.reads_all.contains(&Slot::Var(*v))
                {
                    quote!(::core::clone::Clone::clone(&#name))
                } else {
                    quote!(#name)
                }
            }
            Atom::Lit(t) => t.clone(),
        }
    }

    /// An argument as the user wrote it (`&x` or `x`); a moved variable the reverse
    /// sweep reads is cloned.
    fn arg(&self, a: &Arg) -> TokenStream {
        if a.by_ref {
            let x = self.atom(&a.atom);
            quote!(&#x)
        } else {
            self.by_value(&a.atom, false, &[])
        }
    }

    /// Finds the operands the primal can hand over by value: a temporary that an
    /// active rule with reusing forms reads last (it was computed by a rule, earlier
    /// in the same block, and neither the rest of the block nor the reverse sweep
    /// reads it), so that `(x.dot(w) + b).tanh()` computes the sum and the `tanh` in
    /// the product's buffer instead of allocating twice.
    fn plan_moves(&mut self, b: &'a Block) {
        // Temporaries of this block that a rule computed (owned values).
        let computed_here: HashSet<Var> = b
            .stmts
            .iter()
            .filter_map(|s| match s {
                Stmt::Let {
                    dst,
                    op: Op::Prim { rule, .. },
                    ..
                } if !rule.view && (rule.elementwise || rule.func == "dot") => Some(*dst),
                _ => None,
            })
            .collect();
        // Walking backwards, `later` holds what the rest of the block reads.
        let mut later = HashSet::new();
        self.reads_of_tail(b, &mut later);
        for s in b.stmts.iter().rev() {
            match s {
                Stmt::If { branch, .. } => branch.arms.iter().for_each(|a| self.plan_moves(a)),
                Stmt::Loop(lp) => self.plan_moves(&lp.body),
                _ => {}
            }
            if let Stmt::Let {
                dst,
                op:
                    Op::Prim {
                        rule,
                        operands,
                        consts,
                        ..
                    },
                ..
            } = s
                && rule.reusing
                && self.active(*dst)
                && consts.is_empty()
            {
                let movable = |j: usize| {
                    // (A scalar is copied anyway: only arrays gain.)
                    operands[j].atom.var().is_some_and(|v| {
                        self.active(v)
                            && !self.scalar[v.0 as usize]
                            && computed_here.contains(&v)
                            && operands.iter().filter(|a| a.atom.var() == Some(v)).count() == 1
                            && !self.reads_all.contains(&Slot::Var(v))
                            && !later.contains(&v)
                    })
                };
                if let Some(j) = (0..operands.len()).find(|&j| movable(j)) {
                    self.moves.insert((s as *const Stmt, j));
                }
            }
            self.reads_of_stmt(s, &mut later);
        }
        if let Tail::Branch(br) = &b.tail {
            br.arms.iter().for_each(|a| self.plan_moves(a));
        }
    }

    fn primal_stmts(&mut self, stmts: &'a [Stmt]) -> TokenStream {
        let mut out = TokenStream::new();
        for s in stmts {
            out.extend(self.primal_stmt(s));
            let defined: Vec<Var> = match s {
                Stmt::Let { dst, .. } => vec![*dst],
                Stmt::LetTuple { dsts, .. } => dsts.clone(),
                Stmt::LetLifted(l) => l.defined(),
                Stmt::If { phis, .. } => phis.clone(),
                Stmt::Loop(lp) => lp.carries.iter().map(|c| c.out).chain(lp.value).collect(),
            };
            out.extend(self.shapes_of(&defined));
        }
        out
    }

    /// `let x_shape = shape_of(&x);` for the variables whose shape the reverse reads.
    fn shapes_of(&self, vars: &[Var]) -> TokenStream {
        let mut out = TokenStream::new();
        for v in vars {
            if self.reads_all.contains(&Slot::Shape(*v)) {
                let (name, shape) = (self.name(*v), self.slot_name(Slot::Shape(*v)));
                out.extend(quote!(let #shape = ::adjoint::__private::shape_of(&#name);));
            }
        }
        out
    }

    fn primal_stmt(&mut self, s: &'a Stmt) -> TokenStream {
        match s {
            Stmt::Let { dst, op, .. } => {
                let name = self.name(*dst).clone();
                let info = &self.f.vars[dst.0 as usize];
                let mutability = info.mutable.then(|| quote!(mut));
                let plain_name = quote!(#mutability #name);
                let pair_ty = info.ty.as_ref().map(|ty| quote!(: (#ty, _)));
                let name = match &info.ty {
                    Some(ty) => quote!(#mutability #name: #ty),
                    None => quote!(#mutability #name),
                };
                let active = self.active(*dst);
                match op {
                    Op::Prim {
                        rule,
                        operands,
                        consts,
                        native,
                    } => {
                        if active || matches!(native, Native::Rule) {
                            let f = Ident::new(rule.func, Span::call_site());
                            let ops: Vec<TokenStream> = (0..operands.len())
                                .map(|j| self.operand(operands, j))
                                .collect();
                            let cs: Vec<TokenStream> = consts
                                .iter()
                                .map(|c| self.by_value(c, false, &[]))
                                .collect();
                            let moved = (0..operands.len())
                                .find(|&j| self.moves.contains(&(s as *const Stmt, j)));
                            let call = match moved {
                                Some(j) => {
                                    let side = if j == 0 { "" } else { "_rhs" };
                                    let f = format_ident!("{}_reusing{}", rule.func, side);
                                    let args = ops.iter().enumerate().map(|(i, x)| {
                                        if i == j { quote!(#x) } else { quote!(&#x) }
                                    });
                                    if operands.iter().any(
                                        |a| matches!(&a.atom, Atom::Lit(t) if is_float_literal(t)),
                                    ) {
                                        // A literal takes its type from the operand handed
                                        // over: it is made first.
                                        let (lets, args): (Vec<_>, Vec<_>) = args
                                            .enumerate()
                                            .map(|(i, a)| {
                                                let n = format_ident!("__o{}", i);
                                                if i == j {
                                                    (quote!(), a)
                                                } else {
                                                    (quote!(let #n = #a;), quote!(#n))
                                                }
                                            })
                                            .unzip();
                                        quote!({ #(#lets)* ::adjoint::__private::#f(#(#args),*) })
                                    } else {
                                        quote!(::adjoint::__private::#f(#(#args),*))
                                    }
                                }
                                None => fwd_call(rule, &f, &ops, &cs),
                            };
                            quote!(let #name = #call;)
                        } else {
                            let e = self.native(native, operands, consts);
                            quote!(let #name = #e;)
                        }
                    }
                    Op::Call(call) => {
                        let args: Vec<TokenStream> =
                            call.args.iter().map(|a| self.arg(a)).collect();
                        if active {
                            let f = self.companion_for(call);
                            let pb = self.slot_name(Slot::Pb(*dst));
                            quote!(let (#plain_name, #pb) #pair_ty = #f(#(#args),*);)
                        } else if call.scoped == Scoped::Apply {
                            let f = self.plain(&call.callee);
                            quote!(let #name = #f(#(#args),*).unwrap();)
                        } else {
                            let f = self.plain(&call.callee);
                            quote!(let #name = #f(#(#args),*);)
                        }
                    }
                    Op::Const(t) | Op::Lifted(t) | Op::Build { tokens: t, .. } => {
                        quote!(let #name = #t;)
                    }
                    Op::MapV { recv, native, .. } => {
                        let x = self.atom(recv);
                        if active {
                            quote!(let #name = ::adjoint::__private::mapv(&#x, #native);)
                        } else {
                            quote!(let #name = #x.mapv(#native);)
                        }
                    }
                }
            }
            Stmt::LetTuple { dsts, call, .. } => {
                let names: Vec<&Ident> = dsts.iter().map(|d| self.name(*d)).collect();
                let args: Vec<TokenStream> = call.args.iter().map(|a| self.arg(a)).collect();
                if dsts.iter().any(|d| self.active(*d)) {
                    let f = self.companion_for(call);
                    let pb = self.slot_name(Slot::Pb(dsts[0]));
                    quote!(let ((#(#names,)*), #pb) = #f(#(#args),*);)
                } else {
                    let f = self.plain(&call.callee);
                    let unwrap = (call.scoped == Scoped::Apply).then(|| quote!(.unwrap()));
                    quote!(let (#(#names,)*) = #f(#(#args),*) #unwrap;)
                }
            }
            Stmt::If { branch, phis } => {
                let payload =
                    |_: &Gen, l: &Leaf, moved: &dyn Fn(&Atom) -> TokenStream| -> Vec<TokenStream> {
                        let mut atoms = Vec::new();
                        if let Some(v) = &l.value {
                            v.flatten(&mut atoms);
                        }
                        atoms.extend(l.carries.iter().cloned());
                        atoms.iter().map(moved).collect()
                    };
                let (names, expr) = self.branch_expr(branch, phis.len(), &payload);
                let phi_names: Vec<&Ident> = phis.iter().map(|p| self.name(*p)).collect();
                quote!(#expr let (#(#phi_names,)*) = (#(#names,)*);)
            }
            Stmt::Loop(lp) => self.primal_loop(lp),
            Stmt::LetLifted(l) => {
                let names: Vec<&Ident> = l.dsts.iter().map(|d| self.name(*d)).collect();
                let tokens = &l.tokens;
                let grads = quote!((#(#names,)*));
                let pat = match (l.value.map(|v| self.name(v)), l.aux.map(|a| self.name(a))) {
                    (None, None) => grads,
                    (None, Some(a)) => quote!((#grads, #a)),
                    (Some(v), None) => quote!((#v, #grads)),
                    (Some(v), Some(a)) => quote!(((#v, #a), #grads)),
                };
                let mut out = quote!(let #pat = #tokens;);
                if self.reads_all.contains(&Slot::Pb(l.dsts[0])) {
                    // What the second-order pullback reruns the child on: the variables,
                    // the child's path, and the module (a copy if it is a field of
                    // `self`, which the pullback may not borrow).
                    let snap = self.slot_name(Slot::Pb(l.dsts[0]));
                    let scope = self.atom(&l.scope);
                    let module = &l.module;
                    let module = if mentions_self(module) {
                        quote!(::adjoint::__private::keep_module(&(#module)))
                    } else {
                        quote!(#module)
                    };
                    out.extend(
                        quote!(let #snap = (#scope.snapshot(), #scope.last_child_path(), #module);),
                    );
                }
                out
            }
        }
    }

    /// Emits `let (payload.., record) = if .. { .. } else { .. };` and returns the
    /// payload's names and the statement.
    fn branch_expr(
        &mut self,
        br: &'a Branching,
        n_payload: usize,
        payload: Payload,
    ) -> (Vec<Ident>, TokenStream) {
        let id = self.br_id(br);
        let recorded = self.recorded.contains(&id);
        let n = br.arms.len();
        let mut arm_exprs = Vec::new();
        for (i, arm) in br.arms.iter().enumerate() {
            let record = recorded.then_some((n, i));
            arm_exprs.push(self.arm_expr(arm, n_payload, payload, record));
        }
        let names: Vec<Ident> = (0..n_payload)
            .map(|_| {
                self.payloads += 1;
                format_ident!("__p{}", self.payloads)
            })
            .collect();
        let rec = recorded.then(|| self.slot_name(Slot::Br(id)));
        let rec_pat = rec.iter();
        let expr = match &br.kind {
            BranchKind::If { cond } => {
                let (a, b) = (&arm_exprs[0], &arm_exprs[1]);
                quote!(if #cond #a else #b)
            }
            BranchKind::Match {
                scrutinee, pats, ..
            } => {
                quote!(match #scrutinee { #(#pats => #arm_exprs)* })
            }
        };
        (
            names.clone(),
            quote!(let (#(#names,)* #(#rec_pat,)*) = #expr;),
        )
    }

    /// An arm as a block expression: its statements, then `(payload.., record)`.
    fn arm_expr(
        &mut self,
        b: &'a Block,
        n_payload: usize,
        payload: Payload,
        record: Option<(usize, usize)>,
    ) -> TokenStream {
        let stmts = self.primal_stmts(&b.stmts);
        let slots = self
            .records
            .get(&(b as *const Block))
            .cloned()
            .unwrap_or_default();
        let mut local = HashSet::new();
        block_defs(b, &mut local);
        let (pre, values) = match &b.tail {
            Tail::Leaf(l) => {
                // A value that is also recorded, or that belongs to an enclosing block, is cloned.
                let moved = |a: &Atom| match a.var() {
                    Some(v) => self.by_value(a, !local.contains(&v), &slots),
                    None => self.by_value(a, false, &[]),
                };
                (TokenStream::new(), payload(self, l, &moved))
            }
            Tail::Branch(br) => {
                let (names, expr) = self.branch_expr(br, n_payload, payload);
                (
                    expr,
                    names.into_iter().map(|n| n.to_token_stream()).collect(),
                )
            }
        };
        let rec = record.map(|(n, i)| {
            let names: Vec<TokenStream> = slots.iter().map(|s| self.slot_name(*s)).collect();
            let enum_name = format_ident!("Branch{}", n);
            let variant = format_ident!("Arm{}", i);
            quote!(::adjoint::__private::#enum_name::#variant((#(#names,)*)))
        });
        let rec = rec.iter();
        quote!({ #stmts #pre (#(#values,)* #(#rec,)*) })
    }

    fn primal_loop(&mut self, lp: &'a Loop) -> TokenStream {
        let id = self.loop_id(lp);
        let taped = self.taped.contains(&id);
        let tape = self.slot_name(Slot::Tape(id));
        let carry_vars: Vec<Ident> = (0..lp.carries.len())
            .map(|k| format_ident!("__carry{}_{}", id, k))
            .collect();
        let mut out = TokenStream::new();
        for (c, cv) in lp.carries.iter().zip(&carry_vars) {
            let init = self.by_value(&c.init, true, &[]);
            out.extend(quote!(let mut #cv = #init;));
        }
        let mut body = TokenStream::new();
        for (c, cv) in lp.carries.iter().zip(&carry_vars) {
            let inner = self.name(c.inner);
            body.extend(quote!(let #inner = #cv;));
        }
        let inners: Vec<Var> = lp.carries.iter().map(|c| c.inner).collect();
        body.extend(self.shapes_of(&inners));
        body.extend(self.primal_stmts(&lp.body.stmts));
        let record = self
            .records
            .get(&(&lp.body as *const Block))
            .cloned()
            .unwrap_or_default();
        let has_value = lp.value.is_some();
        // The leaf: save the record, pass the carries on, leave if it breaks.
        let leaf_code = |g: &Gen, nexts: Vec<TokenStream>, exit: TokenStream| -> TokenStream {
            let names: Vec<TokenStream> = record.iter().map(|s| g.slot_name(*s)).collect();
            let push = if taped {
                quote!(#tape.push((#(#names,)*));)
            } else {
                TokenStream::new()
            };
            // Carries first: a value also recorded is cloned into the carry, then moved.
            let assigns = carry_vars
                .iter()
                .zip(nexts)
                .map(|(cv, n)| quote!(#cv = #n;));
            quote!(#(#assigns)* #push #exit)
        };
        match &lp.body.tail {
            Tail::Leaf(l) => {
                let mut local = HashSet::new();
                block_defs(&lp.body, &mut local);
                local.extend(lp.carries.iter().map(|c| c.inner));
                let nexts = l
                    .carries
                    .iter()
                    .map(|a| match a.var() {
                        // Not recorded: the carry is its only copy.
                        Some(v) if self.handed_on.contains(&v) => self.atom(a),
                        _ => {
                            self.by_value(a, a.var().is_some_and(|v| !local.contains(&v)), &record)
                        }
                    })
                    .collect();
                let exit = match (l.kind, &l.value) {
                    (LeafKind::Break, Some(v)) if has_value => {
                        let v = self.val_tokens(v);
                        quote!(break #v;)
                    }
                    (LeafKind::Break, _) => quote!(break;),
                    _ => TokenStream::new(),
                };
                body.extend(leaf_code(self, nexts, exit));
            }
            Tail::Branch(br) => {
                let n = lp.carries.len();
                let payload = |g: &Gen,
                               l: &Leaf,
                               moved: &dyn Fn(&Atom) -> TokenStream|
                 -> Vec<TokenStream> {
                    let mut v: Vec<TokenStream> = l.carries.iter().map(moved).collect();
                    v.push(match (l.kind, &l.value) {
                        (LeafKind::Break, Some(val)) if has_value => {
                            let t = g.val_tokens(val);
                            quote!(::core::option::Option::Some(#t))
                        }
                        (LeafKind::Break, _) if has_value => quote!(::core::option::Option::None),
                        (LeafKind::Break, _) => quote!(true),
                        _ if has_value => quote!(::core::option::Option::None),
                        _ => quote!(false),
                    });
                    v
                };
                let (names, expr) = self.branch_expr(br, n + 1, &payload);
                body.extend(expr);
                let nexts = names[..n].iter().map(|n| n.to_token_stream()).collect();
                let flag = &names[n];
                let exit = if has_value {
                    quote!(if let ::core::option::Option::Some(__v) = #flag { break __v; })
                } else {
                    quote!(if #flag { break; })
                };
                body.extend(leaf_code(self, nexts, exit));
            }
        }
        let value = lp.value.map(|v| self.name(v).clone());
        let head = match &lp.kind {
            LoopKind::For { pat, iter, .. } if self.reversed.contains(&id) => {
                let range = self.slot_name(Slot::Range(id));
                out.extend(quote!(let #range = #iter;));
                if taped {
                    out.extend(quote! {
                        let mut #tape = ::std::vec::Vec::with_capacity(::core::iter::Iterator::size_hint(&#range).0);
                    });
                }
                quote!(for #pat in ::core::clone::Clone::clone(&#range))
            }
            LoopKind::For { pat, iter, .. } => {
                if taped {
                    let it = format_ident!("__iter{}", id);
                    out.extend(quote! {
                        let #it = ::core::iter::IntoIterator::into_iter(#iter);
                        let mut #tape = ::std::vec::Vec::with_capacity(::core::iter::Iterator::size_hint(&#it).0);
                    });
                    quote!(for #pat in #it)
                } else {
                    quote!(for #pat in #iter)
                }
            }
            LoopKind::Loop => {
                if taped {
                    out.extend(quote!(let mut #tape = ::std::vec::Vec::new();));
                }
                quote!(loop)
            }
        };
        match value {
            Some(v) => out.extend(quote!(let #v = #head { #body };)),
            None => out.extend(quote!(#head { #body })),
        }
        for (c, cv) in lp.carries.iter().zip(&carry_vars) {
            let o = self.name(c.out);
            out.extend(quote!(let #o = #cv;));
        }
        out
    }

    fn val_tokens(&self, v: &Val) -> TokenStream {
        match v {
            Val::Atom(a) => self.by_value(a, false, &[]),
            Val::Tuple(vs) => {
                let items = vs.iter().map(|v| self.val_tokens(v));
                quote!((#(#items,)*))
            }
        }
    }

    fn native(&self, native: &Native, operands: &[Arg], consts: &[Atom]) -> TokenStream {
        let ops: Vec<TokenStream> = operands.iter().map(|a| self.arg(a)).collect();
        let cs: Vec<TokenStream> = consts
            .iter()
            .map(|c| self.by_value(c, false, &[]))
            .collect();
        match native {
            Native::Method { name, suffix } => {
                let recv = self.atom(&operands[0].atom);
                let args = ops[1..].iter().chain(&cs);
                quote!(#recv.#name(#(#args),*) #suffix)
            }
            Native::Binary(op) => {
                let (a, b) = (&ops[0], &ops[1]);
                quote!(#a #op #b)
            }
            Native::Neg => {
                let a = &ops[0];
                quote!(-#a)
            }
            Native::Square => {
                // As written: `x * x`, or `&x * &x`.
                let a = &ops[0];
                quote!(#a * #a)
            }
            Native::Index => {
                let a = self.atom(&operands[0].atom);
                let i = &cs[0];
                quote!(#a[#i])
            }
            Native::Cast(t) => {
                let a = &ops[0];
                quote!((#a as #t))
            }
            Native::Function(path) => quote!(#path(#(#ops,)* #(#cs),*)),
            Native::Rule => unreachable!("a rule's own function is called as when active"),
            Native::Tuple => quote!((#(#ops,)*)),
            Native::Variadic(path) => {
                let axis = &cs[0];
                let views = operands.iter().map(|a| {
                    let x = self.atom(&a.atom);
                    quote!(#x.view())
                });
                quote!(#path(#axis, &[#(#views),*]).unwrap())
            }
        }
    }

    /// What an active call calls: the callee's companion, `param_at` for a parameter
    /// read, the parameter-differentiating companion of a submodule.
    fn companion_for(&self, call: &Call) -> TokenStream {
        match (call.scoped, &call.callee) {
            (
                Scoped::Param,
                Callee::Method {
                    receiver, generics, ..
                },
            ) => {
                let r = self.arg(receiver);
                quote!(#r.param_at #generics)
            }
            (Scoped::Module, callee) if self.f.params_active => {
                self.companion(callee, "vjp_params")
            }
            // A plain call whose pullback runs in this block may borrow its arguments.
            (Scoped::No, callee) if self.f.local_pullback => self.companion(callee, "vjp"),
            // Otherwise a nested call's pullback must not borrow this body's locals.
            (_, callee) => self.companion(callee, "vjp_owned"),
        }
    }

    fn companion(&self, callee: &Callee, what: &str) -> TokenStream {
        match callee {
            Callee::Path {
                prefix,
                name,
                generics,
                assoc: false,
            } => {
                let what = Ident::new(what, name.span());
                quote!(#prefix #name :: #what #generics)
            }
            _ => callee.render(|n| companion_ident(n, what), |r| self.arg(r)),
        }
    }

    fn plain(&self, callee: &Callee) -> TokenStream {
        callee.render(Ident::clone, |r| self.arg(r))
    }
}

/// Whether `t` mentions `self`.
fn mentions_self(t: &TokenStream) -> bool {
    t.clone().into_iter().any(|tt| match tt {
        proc_macro2::TokenTree::Ident(i) => i == "self",
        proc_macro2::TokenTree::Group(g) => mentions_self(&g.stream()),
        _ => false,
    })
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
