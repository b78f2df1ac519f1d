//! The rerun of a lifted transform whose closure is more than `mdl.call(cx, x..)`
//! (see [`Rerun`]): for a `grad!` (and the other transforms second order goes
//! through) the closure's forward mode along its primals, written as the body of a
//! closure that takes the tangents too, and that differentiated again; for a
//! `vjp!`'s output, the closure's reverse mode. Its parameters' cotangents included;
//! inline, since the closure's argument types are not known.

use super::companions::{Options, generate};
use super::module::forward::forward_body;
use super::transform::lifted_closure;
use crate::ctxt::Ctxt;
use crate::hygiene::rename;
use crate::ir::{Block, LiftedKind, Rerun, RerunCode, Stmt, Tail, Var, VarInfo};
use crate::parse::signature::{ParamInfo, param_name};
use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use std::collections::HashMap;

/// Writes the code of every general closure's rerun in `b` (see [`Rerun`](crate::ir::Rerun)):
/// the values of the enclosing code it reads that are `varied` (named in `vars`)
/// become its parameters after its own, so that the rerun differentiates them too.
pub(crate) fn write_reruns(
    b: &mut Block,
    vars: &[VarInfo],
    varied: &dyn Fn(Var) -> bool,
    calls: bool,
) {
    for_each_closure(b, &mut |kind, r| {
        let closure = with_passed(r, vars, varied);
        r.code = match kind {
            LiftedKind::Vjp { .. } | LiftedKind::Vmap { .. } => vjp(&closure),
            // `grad!`, `jvp!`, Jacobians, a `vjp!`'s pullback.
            _ => jvp_vjp(&closure, calls),
        };
    });
}

/// Writes the forward mode of every `vmap!`'s closure in `b` (see
/// [`Rerun::forward`](crate::ir::Rerun)), for the enclosing body's forward mode.
pub(crate) fn write_forward_closures(
    b: &mut Block,
    vars: &[VarInfo],
    varied: &dyn Fn(Var) -> bool,
    calls: bool,
) {
    for_each_closure(b, &mut |kind, r| {
        if let LiftedKind::Vmap { jvp: false, .. } = kind {
            r.forward = jvp_closure(&with_passed(r, vars, varied), calls);
        }
    });
}

/// `f` on every lifted transform's closure in `b`, at any depth.
fn for_each_closure(b: &mut Block, f: &mut dyn FnMut(&LiftedKind, &mut Rerun)) {
    for s in &mut b.stmts {
        match s {
            Stmt::LetLifted(l) => {
                if let Some(r) = &mut l.closure {
                    f(&l.kind, r);
                }
            }
            Stmt::If { branch, .. } => branch.arms.iter_mut().for_each(|a| for_each_closure(a, f)),
            Stmt::Loop(lp) => for_each_closure(&mut lp.body, f),
            Stmt::Let { .. } | Stmt::LetTuple { .. } => {}
        }
    }
    if let Tail::Branch(br) = &mut b.tail {
        br.arms.iter_mut().for_each(|a| for_each_closure(a, f));
    }
}

/// Sets which captured values are `varied` (passed to the rerun) and returns the
/// closure with them as parameters after its own.
fn with_passed(r: &mut Rerun, vars: &[VarInfo], varied: &dyn Fn(Var) -> bool) -> syn::ExprClosure {
    r.passed = r.captured.iter().copied().filter(|v| varied(*v)).collect();
    let mut closure = r.closure.clone();
    for v in &r.passed {
        let name = &vars[v.0 as usize].name;
        closure.inputs.push(syn::parse_quote!(#name));
    }
    closure
}

/// The forward mode of closure `c` along every parameter but the module and the
/// scope, as a closure taking the tangents after them and giving `(y, dy)`.
///
/// Its `__` names (the tangents, the temporaries) are renamed apart (`__d_x_fw`):
/// the `vmap!` is passed the enclosing code's own (`__d_x`), and renames every
/// `__` name its input binds, wherever it appears.
fn jvp_closure(c: &syn::ExprClosure, calls: bool) -> Option<TokenStream> {
    let (names, infos, body) = lifted_closure(&Ctxt::default(), c)?;
    let jvp = forward_body(&infos, &body, crate::forward::Mode::Inputs, calls)?;
    let dots: Vec<syn::Pat> = infos[2..].iter().map(|p| p.tangent().pat).collect();
    let closure = quote!(|#(#names,)* #(#dots),*| { #jvp });
    let block: syn::Block = syn::parse2(quote!({ #jvp })).ok()?;
    let renames: HashMap<String, String> = bound_names(&block)
        .into_iter()
        .chain(dots.iter().map(|d| param_name(d).to_string()))
        .filter(|n| n.starts_with("__"))
        .map(|n| (n.clone(), format!("{n}_fw")))
        .collect();
    Some(rename(closure, &renames))
}

/// The JVP-VJP of closure `c` (see [`RerunCode`]). Its errors are not the user's: the
/// closure compiled as written already.
fn jvp_vjp(c: &syn::ExprClosure, calls: bool) -> Option<RerunCode> {
    let (_, infos, body) = lifted_closure(&Ctxt::default(), c)?;
    let jvp = forward_body(&infos, &body, crate::forward::Mode::Inputs, calls)?;
    let mut params = infos.clone();
    params.extend(infos[2..].iter().map(ParamInfo::tangent));
    let block: syn::Block = syn::parse2(quote!({ #jvp })).ok()?;
    rerun_code(&params, &block)
}

/// The VJP of closure `c` (see [`RerunCode`]), its parameters' cotangents included:
/// what a `vjp!`'s output differentiates (with `has_aux`, the aux too: the code
/// after the transform may differentiate it).
fn vjp(c: &syn::ExprClosure) -> Option<RerunCode> {
    let (_, params, body) = lifted_closure(&Ctxt::default(), c)?;
    rerun_code(&params, &body)
}

/// The reverse mode of `body` over `params`, the variables' cotangents included, as a
/// rerun's code.
fn rerun_code(params: &[ParamInfo], body: &syn::Block) -> Option<RerunCode> {
    let options = Options {
        has_aux: false,
        params_active: true,
        local_pullback: true,
        calls: false,
    };
    let (_, g) = generate(&Ctxt::default(), params, body, options)?;
    Some(renamed_apart(params, g))
}

/// `g` as a rerun's code: its locals renamed apart (`x_rr`), since the pullback runs
/// it among the enclosing body's own names (the seeds it reads after the primal).
fn renamed_apart(params: &[ParamInfo], g: crate::reverse::Generated) -> RerunCode {
    let mut names: Vec<String> = params
        .iter()
        .map(|p| param_name(&p.pat).to_string())
        .collect();
    let primal = &g.primal;
    if let Ok(primal_block) = syn::parse2::<syn::Block>(quote!({ #primal })) {
        names.extend(bound_names(&primal_block));
    }
    let renames: HashMap<String, String> = names
        .iter()
        .map(|n| (n.clone(), format!("{n}_rr")))
        .collect();
    let params = params
        .iter()
        .map(|p| format_ident!("{}_rr", param_name(&p.pat).to_string()))
        .collect();
    RerunCode {
        params,
        primal: rename(g.primal, &renames),
        output: rename(g.output, &renames),
        reverse: rename(g.reverse, &renames),
    }
}

/// The names `b`'s statements bind (`let` patterns, at any depth).
fn bound_names(b: &syn::Block) -> Vec<String> {
    struct Names(Vec<String>);
    impl<'ast> syn::visit::Visit<'ast> for Names {
        fn visit_pat_ident(&mut self, p: &'ast syn::PatIdent) {
            self.0.push(p.ident.to_string());
            syn::visit::visit_pat_ident(self, p);
        }
    }
    let mut v = Names(Vec::new());
    syn::visit::Visit::visit_block(&mut v, b);
    v.0
}
