//! The primal of a gradient alone: when only the gradient is wanted, statements
//! that neither reach the output nor what the reverse sweep reads are left out.

use super::*;

impl<'a> Gen<'a> {
    /// The primal for `grad!`, which discards the value: without the top-level loops
    /// and branches whose results only the value needs (a loop summing a loss, whose
    /// reverse sweep recomputes what it reads). `None` when there are none, so that
    /// the gradient runs the ordinary primal.
    pub(super) fn grad_primal(&mut self) -> Option<TokenStream> {
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
        out.extend(self.zeros.clone());
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
    pub(super) fn dead_for_grad(&self) -> HashSet<*const Stmt> {
        let mut live: HashSet<Var> = HashSet::new();
        for s in &self.reads_all {
            match s {
                Slot::Var(v) | Slot::Shape(v) | Slot::Pb(v) => {
                    live.insert(*v);
                }
                Slot::Tape(_) | Slot::Br(_) | Slot::Range(_) | Slot::Here => {}
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
    pub(super) fn pure(&self, op: &Op) -> bool {
        match op {
            Op::Prim { .. }
            | Op::MapV { .. }
            | Op::Build {
                what: Built::Literal | Built::Field,
                ..
            } => true,
            Op::Build { .. } => false,
            Op::Const(t) => self.index_arithmetic(t).is_some(),
            Op::Call(_) | Op::Lifted { .. } => false,
        }
    }

    /// Whether a block has a statement that must run.
    pub(super) fn effects(&self, b: &Block) -> bool {
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
    pub(super) fn reads_of_stmt(&self, s: &Stmt, live: &mut HashSet<Var>) {
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
                Op::Const(t) | Op::Lifted { tokens: t, .. } => self.reads_of_tokens(t, live),
                Op::Build { reads, what, .. } => {
                    live.extend(reads.iter().copied());
                    if let Built::ClosureCall { captured } = what {
                        live.extend(captured.iter().copied());
                    }
                }
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

    pub(super) fn reads_of_call(&self, c: &Call, live: &mut HashSet<Var>) {
        if let Callee::Method { receiver, .. } = &c.callee
            && let Some(v) = receiver.atom.var()
        {
            live.insert(v);
        }
        live.extend(c.args.iter().filter_map(|a| a.atom.var()));
    }

    pub(super) fn reads_of_branching(&self, br: &Branching, live: &mut HashSet<Var>) {
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

    pub(super) fn reads_of_block(&self, b: &Block, live: &mut HashSet<Var>) {
        b.stmts.iter().for_each(|s| self.reads_of_stmt(s, live));
        self.reads_of_tail(b, live);
    }

    /// What the end of a block reads: the values its leaves pass on, and the
    /// branch that ends it.
    pub(super) fn reads_of_tail(&self, b: &Block, live: &mut HashSet<Var>) {
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
    pub(super) fn reads_of_tokens(&self, t: &TokenStream, live: &mut HashSet<Var>) {
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
}
