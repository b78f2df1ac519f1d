//! Activity analysis: a variable is active when it depends on a differentiated
//! input (varied) and the output depends on it (useful). Only active variables get
//! an adjoint; everything else is a constant of the reverse sweep.
//!
//! Both directions run to a fixed point, so loop-carried values (an RNN's hidden
//! state) become active however late in the loop the dependence appears.

use crate::ctxt::Ctxt;
use crate::ir::*;

/// The active variables of `f`, indexed by [`Var`].
pub struct Activity {
    pub active: Vec<bool>,
    varied: Vec<bool>,
    useful: Vec<bool>,
    /// Varied, or computed from a varied value by something that carries no
    /// derivative (an iterator over it, a method on it, a call given a closure
    /// reading it): what the checks report where it feeds a derivative.
    tainted: Vec<bool>,
}

impl Activity {
    pub fn is_active(&self, a: &Atom) -> bool {
        a.var().is_some_and(|v| self.active[v.0 as usize])
    }

    /// Whether variable `v` depends on a differentiated input.
    pub fn varied(&self, v: Var) -> bool {
        self.varied[v.0 as usize]
    }

    /// Whether `a` depends on a differentiated input, through anything (see
    /// `tainted`), whether or not the output depends on it.
    fn is_tainted(&self, a: &Atom) -> bool {
        a.var().is_some_and(|v| self.tainted(v))
    }

    /// Whether `a` depends on a differentiated input through rules (a derivative
    /// that flows).
    fn is_varied(&self, a: &Atom) -> bool {
        a.var().is_some_and(|v| self.varied[v.0 as usize])
    }

    fn tainted(&self, v: Var) -> bool {
        self.tainted[v.0 as usize]
    }

    fn is_useful(&self, v: Var) -> bool {
        self.useful[v.0 as usize]
    }
}

/// Runs the analysis, reporting uses the transform cannot differentiate (an active
/// operand without a pullback, a closure of `mapv` that reads an active value).
pub fn analyze(cx: &Ctxt, f: &Func) -> Activity {
    let n = f.vars.len();
    let mut varied = vec![false; n];
    for p in &f.params {
        varied[p.var.0 as usize] = p.active;
    }
    while forward(&f.body, f.params_active, false, &mut varied) {}
    let mut tainted = varied.clone();
    while forward(&f.body, f.params_active, true, &mut tainted) {}
    let mut useful = vec![false; n];
    mark_output(&f.body, f.aux, &mut useful);
    while backward(&f.body, &mut useful) {}
    let active = (0..n).map(|i| varied[i] && useful[i]).collect();
    let act = Activity {
        active,
        varied,
        useful,
        tainted,
    };
    check(cx, &f.body, &act, &f.vars);
    act
}

fn is(set: &[bool], a: &Atom) -> bool {
    a.var().is_some_and(|v| set[v.0 as usize])
}

fn set(set: &mut [bool], v: Var) -> bool {
    let old = set[v.0 as usize];
    set[v.0 as usize] = true;
    !old
}

/// Operands of a statement that carry derivatives into its results.
fn inputs(op: &Op) -> Vec<&Atom> {
    match op {
        Op::Prim { rule, operands, .. } => {
            if rule.operands == 0 {
                operands.iter().map(|a| &a.atom).collect()
            } else {
                operands
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| rule.pullbacks.get(*i).is_some_and(|p| p.is_some()))
                    .map(|(_, a)| &a.atom)
                    .collect()
            }
        }
        Op::Call(c) if c.scoped == Scoped::Param => Vec::new(),
        Op::Call(c) => call_inputs(c),
        Op::Lifted { reads, .. } => reads.iter().collect(),
        Op::Const(_) | Op::Build { .. } => Vec::new(),
        Op::MapV { recv, captured, .. } => std::iter::once(recv).chain(captured).collect(),
    }
}

/// What else an operation's value depends on, though no derivative flows back to
/// it: a method's receiver (`x.y()`), what an iterator (`x.iter()`) or a call given
/// a closure reads. A differentiated value here makes the result tainted (not
/// varied: code generation asks nothing of it), so that a use of it that needs a
/// derivative is reported (see `check`) rather than dropped.
fn depends(op: &Op) -> impl Iterator<Item = Var> + '_ {
    let (receiver, reads): (Option<&Atom>, &[Var]) = match op {
        Op::Call(Call {
            callee: Callee::Method { receiver, .. },
            scoped: Scoped::No,
            ..
        }) => (Some(&receiver.atom), &[]),
        Op::Build { reads, .. } => (None, reads),
        _ => (None, &[]),
    };
    receiver
        .and_then(Atom::var)
        .into_iter()
        .chain(reads.iter().copied())
}

fn call_inputs(c: &Call) -> Vec<&Atom> {
    c.args.iter().map(|a| &a.atom).collect()
}

fn leaves(b: &Block, out: &mut Vec<*const Leaf>) {
    match &b.tail {
        Tail::Leaf(l) => out.push(l as *const Leaf),
        Tail::Branch(br) => br.arms.iter().for_each(|a| leaves(a, out)),
    }
}

fn each_leaf(b: &Block, f: &mut dyn FnMut(&Leaf)) {
    match &b.tail {
        Tail::Leaf(l) => f(l),
        Tail::Branch(br) => br.arms.iter().for_each(|a| each_leaf(a, f)),
    }
}

/// One pass of variedness over `b`; with `taint`, also through what carries no
/// derivative (see [`depends`]).
fn forward(b: &Block, params: bool, taint: bool, varied: &mut Vec<bool>) -> bool {
    let mut changed = false;
    for s in &b.stmts {
        match s {
            Stmt::Let { dst, op, .. } => {
                // With parameters differentiated, a parameter read and a submodule's
                // output vary whatever their arguments.
                let from_params = params
                    && (matches!(op, Op::Lifted { .. })
                        || matches!(op, Op::Call(c) if matches!(c.scoped, Scoped::Param | Scoped::Module)));
                if from_params
                    || inputs(op).iter().any(|a| is(varied, a))
                    || (taint && depends(op).any(|v| varied[v.0 as usize]))
                {
                    changed |= set(varied, *dst);
                }
            }
            Stmt::LetLifted(l) => {
                // Gradients of the child depend on its parameters and on the primals.
                if params
                    || l.args.iter().any(|a| is(varied, &a.atom))
                    || l.captured().iter().any(|v| varied[v.0 as usize])
                {
                    for d in l.defined() {
                        changed |= set(varied, d);
                    }
                }
            }
            Stmt::LetTuple { dsts, call, .. } => {
                if (params && call.scoped == Scoped::Module)
                    || call_inputs(call).iter().any(|a| is(varied, a))
                {
                    for d in dsts {
                        changed |= set(varied, *d);
                    }
                }
            }
            Stmt::If { branch, phis } => {
                for arm in &branch.arms {
                    changed |= forward(arm, params, taint, varied);
                    each_leaf(arm, &mut |l| {
                        for (phi, a) in phis.iter().zip(l.atoms()) {
                            if is(varied, &a) {
                                changed |= set(varied, *phi);
                            }
                        }
                    });
                }
            }
            Stmt::Loop(lp) => {
                for c in &lp.carries {
                    if is(varied, &c.init) {
                        changed |= set(varied, c.inner);
                    }
                }
                changed |= forward(&lp.body, params, taint, varied);
                each_leaf(&lp.body, &mut |l| {
                    for (c, a) in lp.carries.iter().zip(&l.carries) {
                        if is(varied, a) {
                            changed |= set(varied, c.inner);
                        }
                    }
                    if let (Some(v), Some(val)) = (lp.value, &l.value) {
                        let mut atoms = Vec::new();
                        val.flatten(&mut atoms);
                        if atoms.iter().any(|a| is(varied, a)) {
                            changed |= set(varied, v);
                        }
                    }
                });
                for c in &lp.carries {
                    if varied[c.inner.0 as usize] {
                        changed |= set(varied, c.out);
                    }
                }
            }
        }
    }
    if let Tail::Branch(br) = &b.tail {
        for arm in &br.arms {
            changed |= forward(arm, params, taint, varied);
        }
    }
    changed
}

/// The function's output values are useful.
fn mark_output(b: &Block, aux: bool, useful: &mut [bool]) {
    each_leaf(b, &mut |l| {
        if !matches!(l.kind, LeafKind::Return | LeafKind::Fallthrough) {
            return;
        }
        if let Some(v) = &l.value {
            let mut atoms = Vec::new();
            crate::facts::differentiated(v, aux).flatten(&mut atoms);
            for a in atoms {
                if let Some(v) = a.var() {
                    useful[v.0 as usize] = true;
                }
            }
        }
    });
}

fn backward(b: &Block, useful: &mut Vec<bool>) -> bool {
    let mut changed = false;
    if let Tail::Branch(br) = &b.tail {
        for arm in &br.arms {
            changed |= backward(arm, useful);
        }
    }
    for s in b.stmts.iter().rev() {
        match s {
            Stmt::Let { dst, op, .. } => {
                if useful[dst.0 as usize] {
                    for a in inputs(op) {
                        if let Some(v) = a.var() {
                            changed |= set(useful, v);
                        }
                    }
                }
            }
            Stmt::LetLifted(l) => {
                if l.defined().iter().any(|d| useful[d.0 as usize]) {
                    for a in &l.args {
                        if let Some(v) = a.atom.var() {
                            changed |= set(useful, v);
                        }
                    }
                    for v in l.captured() {
                        changed |= set(useful, *v);
                    }
                }
            }
            Stmt::LetTuple { dsts, call, .. } => {
                if dsts.iter().any(|d| useful[d.0 as usize]) {
                    for a in call_inputs(call) {
                        if let Some(v) = a.var() {
                            changed |= set(useful, v);
                        }
                    }
                }
            }
            Stmt::If { branch, phis } => {
                for arm in &branch.arms {
                    each_leaf(arm, &mut |l| {
                        for (phi, a) in phis.iter().zip(l.atoms()) {
                            if useful[phi.0 as usize]
                                && let Some(v) = a.var()
                            {
                                changed |= set(useful, v);
                            }
                        }
                    });
                    changed |= backward(arm, useful);
                }
            }
            Stmt::Loop(lp) => {
                for c in &lp.carries {
                    if useful[c.out.0 as usize] {
                        changed |= set(useful, c.inner);
                    }
                }
                let mut ls = Vec::new();
                leaves(&lp.body, &mut ls);
                each_leaf(&lp.body, &mut |l| {
                    for (c, a) in lp.carries.iter().zip(&l.carries) {
                        if (useful[c.inner.0 as usize] || useful[c.out.0 as usize])
                            && let Some(v) = a.var()
                        {
                            changed |= set(useful, v);
                        }
                    }
                    if let (Some(v), Some(val)) = (lp.value, &l.value)
                        && useful[v.0 as usize]
                    {
                        let mut atoms = Vec::new();
                        val.flatten(&mut atoms);
                        for a in atoms {
                            if let Some(v) = a.var() {
                                changed |= set(useful, v);
                            }
                        }
                    }
                });
                changed |= backward(&lp.body, useful);
                for c in &lp.carries {
                    if useful[c.inner.0 as usize]
                        && let Some(v) = c.init.var()
                    {
                        changed |= set(useful, v);
                    }
                }
            }
        }
    }
    changed
}

fn check(cx: &Ctxt, b: &Block, act: &Activity, vars: &[VarInfo]) {
    for s in &b.stmts {
        match s {
            Stmt::Let { dst, op, span } if vars[dst.0 as usize].discarded => {
                // A call or closure call made for its effect (`parts.push(x);`,
                // `h.mapv_inplace(..);`): what it changes would hold a derivative
                // that nothing carries.
                let (what, reads): (String, Vec<Var>) = match op {
                    Op::Call(c) if c.scoped == Scoped::No => {
                        let mut atoms: Vec<&Atom> = call_inputs(c);
                        if let Callee::Method { receiver, .. } = &c.callee {
                            atoms.push(&receiver.atom);
                        }
                        (
                            format!("`{}`", c.callee.name()),
                            atoms.into_iter().filter_map(Atom::var).collect(),
                        )
                    }
                    Op::Build {
                        tokens,
                        reads,
                        what: Built::ClosureCall { captured },
                    } => (
                        match syn::parse2::<syn::Expr>(tokens.clone()) {
                            Ok(syn::Expr::MethodCall(m)) => format!("`{}`", m.method),
                            _ => "this call".to_string(),
                        },
                        reads.iter().chain(captured).copied().collect(),
                    ),
                    _ => continue,
                };
                if reads.iter().any(|v| act.tainted(*v)) {
                    cx.error(*span, format!("{what} is given a differentiated value and its result is dropped: a call made for its effect (`push`, `assign`, `fill`, `mapv_inplace`) changes a value the derivative cannot follow; compute a new value instead (`let y = ..`, `stack`/`concatenate` for lists of arrays), or wrap the value in `no_grad(..)` if it is meant to be constant"));
                }
            }
            Stmt::Let { dst, op, span } => match op {
                // A derivative the rules cannot give, flowing into a used result.
                Op::Prim {
                    rule,
                    operands,
                    consts,
                    native,
                } => {
                    if !act.is_useful(*dst) {
                        continue;
                    }
                    let what = match native {
                        Native::Method { name, .. } => format!("`{name}`"),
                        Native::Function(_) => format!("`{}`", rule.func),
                        _ => "this operation".to_string(),
                    };
                    // Operands without a pullback, and the constants (an activation's
                    // `alpha`): a derivative with respect to them would be lost.
                    let without_pullback = operands.iter().enumerate().filter(|(i, a)| {
                        act.is_varied(&a.atom)
                            && rule.pullbacks.get(*i).is_some_and(|p| p.is_none())
                    });
                    // Of the constants, only an elementwise rule's may carry a derivative
                    // (`elu`'s `alpha`); the others are positions, axes, shapes and
                    // masks (`x[i]` with `i` found among `x`'s elements), which have none.
                    let varied_consts = consts
                        .iter()
                        .enumerate()
                        .filter(|(_, c)| rule.elementwise && act.is_varied(c));
                    for i in without_pullback
                        .map(|(i, _)| i)
                        .chain(varied_consts.map(|(j, _)| operands.len() + j))
                    {
                        cx.error(*span, format!("{what} is not differentiated with respect to argument {i}; make it a constant or wrap it in `no_grad(..)`"));
                    }
                }
                Op::Call(c) => {
                    if let Callee::Method { receiver, name, .. } = &c.callee
                        && act.is_useful(*dst)
                        && act.is_tainted(&receiver.atom)
                    {
                        cx.error(c.span, format!("no derivative rule for the method `{name}` on a differentiated value; use a supported operation, a #[differentiable] function, or `no_grad(..)`"));
                    }
                }
                Op::Build { reads, what, .. } => {
                    let captured = match what {
                        Built::ClosureCall { captured } => captured.as_slice(),
                        _ => &[],
                    };
                    if act.is_useful(*dst) && reads.iter().chain(captured).any(|v| act.tainted(*v))
                    {
                        let msg = match what {
                            Built::Literal => "arrays and structs of differentiated values are not supported; use ndarray arrays or tuples".to_string(),
                            Built::Macro(m) if m == "vec" => "a `vec!` of differentiated values is not differentiated; build an array with `ndarray::array![..]`, or use a tuple".to_string(),
                            Built::Field => "field access on a differentiated value is not supported; take tuples apart with `let (a, b) = ..`".to_string(),
                            Built::Iter => "an iterator over a differentiated array's elements is not differentiated: use the array's own operations (`x.sum()`, `x.mapv(..)`, `x.dot(..)`), or index it in a loop over `0..x.len()`; wrap it in `no_grad(..)` if it is meant to be constant".to_string(),
                            Built::ClosureCall { .. } => "a call given a closure is not differentiated, and this one reads a differentiated value: only `mapv`'s closures are differentiated; use `mapv`, or wrap the value in `no_grad(..)` if it is meant to be constant".to_string(),
                            Built::Macro(m) => format!("the macro `{m}!` is given a differentiated value, and its result would be a constant: only `dbg!` and `array!` are differentiated; compute the value outside the macro, or wrap it in `no_grad(..)` if it is meant to be constant"),
                        };
                        cx.error(*span, msg);
                    }
                }
                Op::Const(_) | Op::Lifted { .. } | Op::MapV { .. } => {}
            },
            Stmt::LetTuple { dsts, call, .. } => {
                if let Callee::Method { receiver, name, .. } = &call.callee
                    && dsts.iter().any(|d| act.is_useful(*d))
                    && act.is_tainted(&receiver.atom)
                {
                    cx.error(
                        call.span,
                        format!(
                            "no derivative rule for the method `{name}` on a differentiated value"
                        ),
                    );
                }
            }
            Stmt::LetLifted(_) => {}
            Stmt::If { branch, .. } => branch.arms.iter().for_each(|a| check(cx, a, act, vars)),
            Stmt::Loop(lp) => {
                check(cx, &lp.body, act, vars);
                if let LoopKind::For {
                    binds,
                    sources,
                    iter_span,
                    ..
                } = &lp.kind
                    && sources.iter().any(|v| act.tainted(*v))
                    && binds.iter().any(|v| act.is_useful(*v))
                {
                    cx.error(*iter_span, "a loop over the elements of a differentiated value: its loop variables are constants, so the derivative would be lost; loop over the indices (`for i in 0..x.len()`, reading `x[i]`) or use array operations, or wrap the value in `no_grad(..)` if it is meant to be constant");
                }
                if let Some(v) = lp.value
                    && act.active[v.0 as usize]
                {
                    cx.error(lp.span, "a loop whose `break` value is differentiated is not supported; assign the value to a variable before `break`");
                }
            }
        }
    }
    if let Tail::Branch(br) = &b.tail {
        br.arms.iter().for_each(|a| check(cx, a, act, vars));
    }
}
