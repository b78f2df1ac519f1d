//! The arguments of the transform macros: a function path, a closure with its
//! options (`wrt`, `has_aux`, `reduce_axes`), or the lifted form inside a module.

use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Ident, Token};

/// The transform macros that have a lifted form inside a module
/// (`name!(cx, |mdl, cx, ..| .., Module, ..)`).
pub(crate) const LIFTED: [&str; 9] = [
    "grad",
    "value_and_grad",
    "vjp",
    "jvp",
    "vmap",
    "jacfwd",
    "jacrev",
    "hvp",
    "hessian",
];

/// How a lifted transform's closure calls its module, when it is nothing but that
/// call with the closure's own parameters in order: `|mdl, cx, x..| mdl.call(cx,
/// x..)`, or the child's JVP that forward mode writes for a `vmap!`
/// (`|mdl, cx, x..| Child::module(&mdl).____call_body_jvp_vjp_params(&mut *cx, x..).0`,
/// the scope a reborrow so that module-call routing leaves the call as written).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum ChildCall {
    Call,
    Jvp,
}

/// The closure's form (see [`ChildCall`]) and its number of primals; `None` for any
/// other closure.
pub(crate) fn child_call(c: &syn::ExprClosure) -> Option<(ChildCall, usize)> {
    use syn::{Expr, Pat};
    fn name(p: &Pat) -> Option<&Ident> {
        match p {
            Pat::Ident(i) => Some(&i.ident),
            Pat::Type(t) => name(&t.pat),
            Pat::Paren(p) => name(&p.pat),
            _ => None,
        }
    }
    let names: Vec<&Ident> = c.inputs.iter().map(name).collect::<Option<_>>()?;
    let n = names.len().checked_sub(2).filter(|n| *n > 0)?;
    let is = |e: &Expr, nm: &Ident| matches!(e, Expr::Path(p) if p.path.is_ident(nm));
    let (call, form) = match &*c.body {
        Expr::MethodCall(m) if m.method == "call" && is(&m.receiver, names[0]) => {
            (m, ChildCall::Call)
        }
        Expr::Field(f) if matches!(&f.member, syn::Member::Unnamed(i) if i.index == 0) => {
            let Expr::MethodCall(m) = &*f.base else {
                return None;
            };
            // `Child::module(&mdl)`.
            let module_of = matches!(&*m.receiver, Expr::Call(c)
                if matches!(&*c.func, Expr::Path(p) if p.path.segments.last().is_some_and(|s| s.ident == "module"))
                    && c.args.len() == 1
                    && matches!(&c.args[0], Expr::Reference(r) if is(&r.expr, names[0])));
            if m.method != crate::names::child_jvp() || !module_of {
                return None;
            }
            (m, ChildCall::Jvp)
        }
        _ => return None,
    };
    let scope_ok = match (form, call.args.first()?) {
        (ChildCall::Call, a) => is(a, names[1]),
        (ChildCall::Jvp, Expr::Reference(r)) => {
            matches!(&*r.expr, Expr::Unary(u) if matches!(u.op, syn::UnOp::Deref(_)) && is(&u.expr, names[1]))
        }
        (ChildCall::Jvp, _) => false,
    };
    let args_ok = call.args.len() == n + 1
        && call
            .args
            .iter()
            .skip(1)
            .zip(&names[2..])
            .all(|(a, nm)| is(a, nm));
    (scope_ok && args_ok).then_some((form, n))
}

/// Which transform a macro call asks for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    Grad,
    ValueAndGrad,
    Vjp,
    Jvp,
}

/// `grad!(f)`, `grad!(path::f)`, `grad!(|x, y| body, wrt = [x], has_aux)`, or the
/// lifted form inside a module: `grad!(cx, |mdl, cx, x| body, Module, x)`.
pub(crate) struct TransformInput {
    pub(crate) positional: Vec<syn::Expr>,
    pub(crate) wrt: Option<Vec<Ident>>,
    pub(crate) has_aux: bool,
    /// The collections a lifted `vjp!` returns cotangents for (Flax's `vjp_variables`).
    pub(crate) vjp_variables: Option<Vec<syn::LitStr>>,
    /// The collections visible inside a lifted transform (Flax's `variables`).
    pub(crate) variables: Option<Vec<syn::LitStr>>,
    /// The random streams that pass into a lifted transform (Flax's `rngs`).
    pub(crate) rngs: Option<Vec<syn::LitStr>>,
    /// Named axes of an enclosing `vmap!` over which cotangents of broadcast values
    /// are summed (`reduce_axes`).
    pub(crate) reduce_axes: Option<Vec<syn::LitStr>>,
}

impl TransformInput {
    /// Only positional arguments, no option.
    pub(crate) fn positional(positional: Vec<syn::Expr>) -> Self {
        TransformInput {
            positional,
            wrt: None,
            has_aux: false,
            vjp_variables: None,
            variables: None,
            rngs: None,
            reduce_axes: None,
        }
    }

    /// No option was given: no `wrt`, `has_aux`, `vjp_variables`, `variables`, `rngs`.
    pub(crate) fn plain(&self) -> bool {
        !self.has_aux
            && self.reduce_axes.is_none()
            && self.wrt.is_none()
            && self.vjp_variables.is_none()
            && self.variables.is_none()
            && self.rngs.is_none()
    }
}

/// `variables = [..]` or `rngs = [..]` as an `Option<&[&str]>` expression (`None`:
/// everything passes), what `Scope::restrict` takes.
pub(crate) fn names_option(names: &Option<Vec<syn::LitStr>>) -> proc_macro2::TokenStream {
    match names {
        Some(n) => quote::quote!(::core::option::Option::Some(&[#(#n),*][..])),
        None => quote::quote!(::core::option::Option::None),
    }
}

impl Parse for TransformInput {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let items: Punctuated<syn::Expr, Token![,]> = Punctuated::parse_terminated(input)?;
        let mut out = TransformInput::positional(Vec::new());
        for item in items {
            match &item {
                syn::Expr::Path(p) if p.path.is_ident("has_aux") => out.has_aux = true,
                syn::Expr::Assign(a) => {
                    let key = match &*a.left {
                        syn::Expr::Path(p) => p.path.get_ident().cloned(),
                        _ => None,
                    };
                    let Some(key) = key else {
                        return Err(syn::Error::new_spanned(
                            &a.left,
                            "expected an option name: `wrt` or `has_aux`",
                        ));
                    };
                    match key.to_string().as_str() {
                        "wrt" => {
                            let syn::Expr::Array(arr) = &*a.right else {
                                return Err(syn::Error::new_spanned(
                                    &a.right,
                                    "`wrt` takes a list of parameter names: `wrt = [x, y]`",
                                ));
                            };
                            let mut names = Vec::new();
                            for e in &arr.elems {
                                match e {
                                    syn::Expr::Path(p) if p.path.get_ident().is_some() => {
                                        names.push(p.path.get_ident().cloned().expect("checked"))
                                    }
                                    other => {
                                        return Err(syn::Error::new_spanned(
                                            other,
                                            "`wrt` takes parameter names",
                                        ));
                                    }
                                }
                            }
                            out.wrt = Some(names);
                        }
                        "vjp_variables" | "variables" | "rngs" | "reduce_axes" => {
                            let items: Vec<syn::Expr> = match &*a.right {
                                syn::Expr::Array(arr) => arr.elems.iter().cloned().collect(),
                                other => vec![other.clone()],
                            };
                            let mut names = Vec::new();
                            for e in items {
                                match e {
                                    syn::Expr::Lit(syn::ExprLit {
                                        lit: syn::Lit::Str(s),
                                        ..
                                    }) => names.push(s),
                                    other => {
                                        return Err(syn::Error::new_spanned(
                                            other,
                                            format!("`{key}` takes names: `{key} = [\"params\"]`"),
                                        ));
                                    }
                                }
                            }
                            match key.to_string().as_str() {
                                "vjp_variables" => out.vjp_variables = Some(names),
                                "variables" => out.variables = Some(names),
                                "reduce_axes" => out.reduce_axes = Some(names),
                                _ => out.rngs = Some(names),
                            }
                        }
                        "has_aux" => match &*a.right {
                            syn::Expr::Lit(syn::ExprLit {
                                lit: syn::Lit::Bool(b),
                                ..
                            }) => out.has_aux = b.value,
                            other => {
                                return Err(syn::Error::new_spanned(
                                    other,
                                    "`has_aux` takes `true` or `false`",
                                ));
                            }
                        },
                        other => {
                            return Err(syn::Error::new(
                                key.span(),
                                format!(
                                    "unknown option `{other}`: expected `wrt = [..]`, `has_aux`, `reduce_axes = [..]`, or in a module `variables`, `rngs`, `vjp_variables`"
                                ),
                            ));
                        }
                    }
                }
                _ => out.positional.push(item),
            }
        }
        if out.positional.is_empty() {
            return Err(input.error(
                "expected a function path, a closure, or `cx, |mdl, cx, ..| .., Module, args..`",
            ));
        }
        Ok(out)
    }
}
