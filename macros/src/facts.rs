//! What a lowered body says about itself, for the stages after lowering: where each
//! variable is defined, where values join (loop carries, branch values), the leaves
//! of a block, which variables are float scalars and which integers.

use crate::ir::*;
use proc_macro2::TokenStream;
use std::collections::{HashMap, HashSet};

/// Whether `t` is a float literal such as `2.0` or `-1.5e3`, or an expression of
/// literals with one (`1.5 + 2.0`): its type comes from the operand beside it.
pub(crate) fn is_float_literal(t: &TokenStream) -> bool {
    syn::parse2::<syn::Expr>(t.clone()).is_ok_and(|e| {
        crate::lower::is_literal_expr(&e) && {
            let mut floats = false;
            crate::lower::each_literal(&e, &mut |l| floats |= matches!(l, syn::Lit::Float(_)));
            floats
        }
    })
}

/// The variables that are float scalars: scalar parameters and `let x: f64`, element
/// reads, elementwise primitives of scalars, and the loop carries and branch values
/// that are scalars on every path.
///
/// Carries and branch values are assumed scalar when they start from one, and the
/// assumption is dropped where some path gives a non-scalar, until nothing changes
/// (a greatest fixed point, so a loop-carried sum `s = s + x[i]` is a scalar).
pub(crate) fn scalars(f: &Func, defs: &HashMap<Var, &Op>) -> Vec<bool> {
    let mut known = vec![false; f.vars.len()];
    for p in &f.params {
        known[p.var.0 as usize] = p.scalar;
    }
    for (i, v) in f.vars.iter().enumerate() {
        // `let p: f64 = ..`
        if let Some(syn::Type::Path(t)) = &v.ty
            && (t.path.is_ident("f64") || t.path.is_ident("f32"))
        {
            known[i] = true;
        }
    }
    let mut joins = Vec::new();
    collect_joins(&f.body, &mut joins);
    let mut assumed: HashSet<Var> = joins.iter().map(|j| j.0).collect();
    loop {
        let mut scalar = known.clone();
        for v in &assumed {
            scalar[v.0 as usize] = true;
        }
        derive_scalars(defs, &mut scalar);
        let is = |a: &Atom| match a {
            Atom::Var(v) => scalar[v.0 as usize],
            Atom::Lit(t) => is_float_literal(t),
        };
        let before = assumed.len();
        assumed.retain(|v| {
            joins
                .iter()
                .filter(|j| j.0 == *v)
                .all(|j| j.1.iter().all(&is))
        });
        if assumed.len() == before {
            return scalar;
        }
    }
}

/// The variables that hold integers (loop counters): `let k: usize`, integer
/// literals, what an elementwise primitive computes from one (`k + 1`: an array or a
/// float plus an integer literal does not type-check), and loop carries and branch
/// values that an integer flows into (to a fixed point). Written by value, since an
/// integer's type may still be an inference variable (`let mut k = 0`) that a
/// generic helper could not resolve.
pub(crate) fn integers(f: &Func, defs: &HashMap<Var, &Op>) -> Vec<bool> {
    const INTS: [&str; 12] = [
        "usize", "isize", "u8", "u16", "u32", "u64", "u128", "i8", "i16", "i32", "i64", "i128",
    ];
    let mut int: Vec<bool> = f
        .vars
        .iter()
        .map(|v| matches!(&v.ty, Some(syn::Type::Path(t)) if INTS.iter().any(|i| t.path.is_ident(i))))
        .collect();
    let mut joins = Vec::new();
    collect_joins(&f.body, &mut joins);
    let mut changed = true;
    while changed {
        changed = false;
        let is = |int: &[bool], a: &Atom| match a {
            Atom::Var(v) => int[v.0 as usize],
            Atom::Lit(t) => is_int_literal(t),
        };
        let mut found = Vec::new();
        for (v, op) in defs {
            let yes = match op {
                Op::Const(t) => is_int_literal(t),
                Op::Prim { rule, operands, .. } => {
                    rule.elementwise && operands.iter().any(|a| is(&int, &a.atom))
                }
                _ => false,
            };
            if yes && !int[v.0 as usize] {
                found.push(*v);
            }
        }
        for (v, atoms) in &joins {
            if !int[v.0 as usize] && atoms.iter().any(|a| is(&int, a)) {
                found.push(*v);
            }
        }
        for v in found {
            changed |= !std::mem::replace(&mut int[v.0 as usize], true);
        }
    }
    int
}

/// An integer literal, or an expression of integer literals only.
pub(crate) fn is_int_literal(t: &TokenStream) -> bool {
    syn::parse2::<syn::Expr>(t.clone()).is_ok_and(|e| {
        crate::lower::is_literal_expr(&e) && {
            let mut ints = true;
            crate::lower::each_literal(&e, &mut |l| ints &= matches!(l, syn::Lit::Int(_)));
            ints
        }
    })
}

/// Elementwise primitives of scalars are scalars (to a fixed point). Variables are
/// numbered in the order they are defined, so one pass in that order settles
/// straight-line code; loops and branches may take another.
pub(crate) fn derive_scalars(defs: &HashMap<Var, &Op>, scalar: &mut [bool]) {
    let mut ordered: Vec<(&Var, &&Op)> = defs.iter().collect();
    ordered.sort_by_key(|(v, _)| **v);
    let mut changed = true;
    while changed {
        changed = false;
        for &(v, op) in &ordered {
            if scalar[v.0 as usize] {
                continue;
            }
            let Op::Prim { rule, operands, .. } = op else {
                continue;
            };
            // An element read and a full reduction give a scalar whatever the operand.
            let is_scalar = matches!(rule.func, "index" | "sum" | "mean")
                || (rule.elementwise
                    && operands.iter().any(|a| a.atom.var().is_some())
                    && operands
                        .iter()
                        .all(|a| a.atom.var().is_none_or(|o| scalar[o.0 as usize])));
            if is_scalar {
                scalar[v.0 as usize] = true;
                changed = true;
            }
        }
    }
}

/// Every variable where values join (a loop carry, a branch's value), with the
/// atoms that flow into it.
pub(crate) fn collect_joins(b: &Block, out: &mut Vec<(Var, Vec<Atom>)>) {
    let leaf_atoms = |blk: &Block, k: usize, carries_only: bool| {
        let mut atoms = Vec::new();
        each_leaf(blk, &mut |l| {
            let mut all = Vec::new();
            if !carries_only && let Some(v) = &l.value {
                v.flatten(&mut all);
            }
            all.extend(l.carries.iter().cloned());
            if let Some(a) = all.get(k) {
                atoms.push(a.clone());
            }
        });
        atoms
    };
    for s in &b.stmts {
        match s {
            Stmt::If { branch, phis } => {
                for (k, phi) in phis.iter().enumerate() {
                    let atoms = branch
                        .arms
                        .iter()
                        .flat_map(|a| leaf_atoms(a, k, false))
                        .collect();
                    out.push((*phi, atoms));
                }
                branch.arms.iter().for_each(|a| collect_joins(a, out));
            }
            Stmt::Loop(lp) => {
                for (k, c) in lp.carries.iter().enumerate() {
                    let mut atoms = leaf_atoms(&lp.body, k, true);
                    atoms.push(c.init.clone());
                    out.push((c.inner, atoms));
                    out.push((c.out, vec![Atom::Var(c.inner)]));
                }
                collect_joins(&lp.body, out);
            }
            _ => {}
        }
    }
    if let Tail::Branch(br) = &b.tail {
        br.arms.iter().for_each(|a| collect_joins(a, out));
    }
}

pub(crate) fn each_leaf(b: &Block, f: &mut dyn FnMut(&Leaf)) {
    match &b.tail {
        Tail::Leaf(l) => f(l),
        Tail::Branch(br) => br.arms.iter().for_each(|a| each_leaf(a, f)),
    }
}

pub(crate) fn collect_defs<'a>(b: &'a Block, defs: &mut HashMap<Var, &'a Op>) {
    for s in &b.stmts {
        match s {
            Stmt::Let { dst, op, .. } => {
                defs.insert(*dst, op);
            }
            Stmt::If { branch, .. } => branch.arms.iter().for_each(|a| collect_defs(a, defs)),
            Stmt::Loop(lp) => collect_defs(&lp.body, defs),
            Stmt::LetTuple { .. } | Stmt::LetLifted(_) => {}
        }
    }
    if let Tail::Branch(br) = &b.tail {
        br.arms.iter().for_each(|a| collect_defs(a, defs));
    }
}

/// The variables a block defines at its own level (not inside nested blocks).
pub(crate) fn block_defs(b: &Block, out: &mut HashSet<Var>) {
    out.extend(stmt_defs(&b.stmts));
}

/// The variables `stmts` define at their level.
pub(crate) fn stmt_defs(stmts: &[Stmt]) -> HashSet<Var> {
    let mut out = HashSet::new();
    for s in stmts {
        match s {
            Stmt::Let { dst, .. } => {
                out.insert(*dst);
            }
            Stmt::LetTuple { dsts, .. } => out.extend(dsts.iter().copied()),
            Stmt::LetLifted(l) => out.extend(l.defined()),
            Stmt::If { phis, .. } => out.extend(phis.iter().copied()),
            Stmt::Loop(lp) => {
                out.extend(lp.carries.iter().map(|c| c.out));
                out.extend(lp.value);
            }
        }
    }
    out
}

/// The part of an output that is differentiated: all of it, or with `has_aux`
/// the first half of the pair.
pub fn differentiated(v: &Val, aux: bool) -> &Val {
    match (aux, v) {
        (true, Val::Tuple(vs)) if vs.len() == 2 => &vs[0],
        _ => v,
    }
}
