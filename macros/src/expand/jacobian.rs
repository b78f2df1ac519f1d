//! A `#[differentiable(jvp)]` function's forward-mode companions: `jvp` (the body's
//! JVP, itself differentiable) and what is built on it: `hvp` (reverse over
//! forward), `jacfwd`, `jacrev` and `hessian`.

use crate::activity;
use crate::ctxt::Ctxt;
use crate::lower::{self, ParamSpec};
use crate::parse::signature::*;
use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::{Ident, ItemFn, ReturnType, Type};

/// `fn __f_jvp(args.., tangents..) -> (R, R)`: the value and its directional
/// derivative, as ordinary Rust, itself `#[differentiable]` (so `grad!` of it gives
/// Hessian-vector products). One tangent per differentiated argument, same type.
pub(crate) fn jvp_item(
    cx: &Ctxt,
    f: &ItemFn,
    params: &[ParamInfo],
    depth: u32,
) -> Option<TokenStream> {
    let ReturnType::Type(..) = &f.sig.output else {
        return None;
    };
    let body = jvp_of(cx, params, &f.block, &f.sig.ident)?;
    Some(forward_items(f, params, body, depth))
}

/// The JVP of a function's or a method's body (calls followed), or the error saying
/// what forward mode covers, at `name`.
fn jvp_of(
    cx: &Ctxt,
    params: &[ParamInfo],
    block: &syn::Block,
    name: &Ident,
) -> Option<TokenStream> {
    let specs: Vec<ParamSpec> = params.iter().map(ParamInfo::spec).collect();
    let func = lower::lower(cx, &specs, block);
    let act = activity::analyze(cx, &func);
    let reference_params: Vec<bool> = params
        .iter()
        .map(|p| matches!(p.ty, Type::Reference(_)))
        .collect();
    let body = crate::forward::jvp_body(
        &func,
        &|v| act.varied(v),
        &reference_params,
        crate::forward::Mode::Inputs,
        true,
    );
    if body.is_none() {
        cx.error_at(name, format!("#[differentiable(jvp)]: {FORWARD_COVERS}"));
    }
    body
}

/// For a method or an associated function `m` of a `#[differentiable(jvp)]` impl:
/// `__m_jvp(args.., tangents..)` and `__m_jvp_all` (a tangent for every argument, what
/// a caller's forward mode calls: `self.__m_jvp_all(..)`), in an impl of their own
/// that is `#[differentiable]` (so second order goes through them). `self` is held.
pub(crate) fn method_forward_items(
    cx: &Ctxt,
    item: &syn::ItemImpl,
    m: &syn::ImplItemFn,
    params: &[ParamInfo],
) -> Option<TokenStream> {
    let ReturnType::Type(_, ret) = &m.sig.output else {
        return None;
    };
    let body = jvp_of(cx, params, &m.block, &m.sig.ident)?;
    let (jvp, jvp_all) = (
        crate::names::companion_ident(&m.sig.ident, "jvp"),
        crate::names::companion_ident(&m.sig.ident, "jvp_all"),
    );
    let (vis, generics) = (&m.vis, &m.sig.generics);
    let where_clause = &generics.where_clause;
    let receiver = m.sig.receiver().map(|_| quote!(&self,));
    let call = if receiver.is_some() {
        quote!(self.#jvp)
    } else {
        quote!(Self::#jvp)
    };
    let JvpInputs {
        args,
        tangents,
        all_tangents,
        forwarded,
    } = JvpInputs::of(params);
    let ret_cot = cot_type(ret);
    let (impl_generics, _, impl_where) = item.generics.split_for_impl();
    let self_ty = &item.self_ty;
    Some(quote! {
        #[::adjoint::differentiable]
        impl #impl_generics #self_ty #impl_where {
            #[doc(hidden)]
            #[allow(clippy::all)]
            #vis fn #jvp #generics (#receiver #(#args,)* #(#tangents),*) -> (#ret, #ret_cot) #where_clause {
                #body
            }

            #[doc(hidden)]
            #[allow(clippy::all, unused_variables)]
            #vis fn #jvp_all #generics (#receiver #(#args,)* #(#all_tangents),*) -> (#ret, #ret_cot) #where_clause {
                #call(#(#forwarded),*)
            }
        }
    })
}

/// What forward mode covers, for the error where it does not.
pub(crate) const FORWARD_COVERS: &str = "forward mode covers branches, loops, `mapv` closures, calls of `#[differentiable(jvp)]` functions and of methods of `#[differentiable(jvp)]` impls, arithmetic, elementwise maths, reductions, products, arrays built with `concatenate`, `stack` or `array![..]`, the fused cross entropies, layers' rules, module calls, a module applied to variables (`model.apply(v, x)`, `model.apply_with(v, options, x)`) and lifted `vmap!`s (along the inputs); not the other lifted transforms (`grad!`, `vjp!`, `jvp!`, Jacobians: forward mode over them is third order through modules)";

/// The parameters of a JVP (`jvp`) and of what a caller's forward mode calls
/// (`jvp_all`), for a function whose parameters are `params`.
struct JvpInputs {
    /// The arguments (`#[no_grad]` kept: the JVP is differentiated again).
    args: Vec<TokenStream>,
    /// `jvp`'s tangents: one per differentiated argument, of its type.
    tangents: Vec<TokenStream>,
    /// `jvp_all`'s: one per argument, `NoTangent` (by reference for a reference)
    /// where it is not differentiated, so that a caller need not know which are.
    all_tangents: Vec<TokenStream>,
    /// What `jvp_all` passes on to `jvp`: the arguments, then the tangents it takes.
    forwarded: Vec<TokenStream>,
}

impl JvpInputs {
    fn of(params: &[ParamInfo]) -> JvpInputs {
        let mut inputs = JvpInputs {
            args: params.iter().map(ParamInfo::input_kept).collect(),
            tangents: Vec::new(),
            all_tangents: Vec::new(),
            forwarded: params.iter().map(|p| param_name(&p.pat)).collect(),
        };
        for p in params {
            let tangent = p.tangent();
            inputs.all_tangents.push(tangent.input());
            if p.active {
                inputs.tangents.push(tangent.input());
                inputs.forwarded.push(param_name(&tangent.pat));
            }
        }
        inputs
    }
}

/// `jvp` for a function given its rule by `#[custom_jvp(jvp = rule)]`: the rule
/// called with the arguments and the tangents, as `jvp` takes them.
pub(crate) fn custom_jvp_item(f: &ItemFn, params: &[ParamInfo], rule: &syn::Path) -> TokenStream {
    let forwarded = JvpInputs::of(params).forwarded;
    forward_items(f, params, quote!(#rule(#(#forwarded),*)), 1)
}

/// `jvp` with `body`, `jvp_all` (what a caller's forward mode calls) and the
/// Jacobian companions, for a function whose parameters are `params`. With `depth`
/// 2 (`jvp = 2`), `jvp` and `jvp_all` get forward mode of their own (`f::__jvp_jvp`),
/// so that a `(jvp)` function calling `jvp!(f)` has one: third order.
fn forward_items(f: &ItemFn, params: &[ParamInfo], body: TokenStream, depth: u32) -> TokenStream {
    let ReturnType::Type(_, ret) = &f.sig.output else {
        return TokenStream::new();
    };
    let owner = &f.sig.ident;
    let vis = &f.vis;
    let generics = &f.sig.generics;
    let where_clause = &f.sig.generics.where_clause;
    let JvpInputs {
        args,
        tangents,
        all_tangents,
        forwarded,
    } = JvpInputs::of(params);
    let doc = format!(
        "The value of [`{}`] and its derivative along the tangents (generated by `#[differentiable(jvp)]`).",
        f.sig.ident
    );
    let ret_cot = cot_type(ret);
    let jacobians = jacobian_items(f, params);
    // The forward-mode companions stand for the function: one only ever run through
    // `jvp!` or `hessian!` is not dead code.
    let turbofish = {
        let tys = generics.type_params().map(|t| &t.ident);
        let cs = generics.const_params().map(|c| &c.ident);
        let args: Vec<&Ident> = tys.chain(cs).collect();
        (!args.is_empty()).then(|| quote!(::<#(#args),*>))
    };
    let mention = quote!(let _ = #owner #turbofish;);
    let attr = if depth > 1 {
        quote!(#[::adjoint::differentiable(jvp)])
    } else {
        quote!(#[::adjoint::differentiable])
    };
    quote! {
        #attr
        impl #owner {
            #[doc = #doc]
            #[doc(hidden)]
            #[allow(clippy::all)]
            #vis fn jvp #generics (#(#args,)* #(#tangents),*) -> (#ret, #ret_cot) #where_clause {
                #mention
                #body
            }

            #[doc(hidden)]
            #[allow(clippy::all, unused_variables)]
            #vis fn jvp_all #generics (#(#args,)* #(#all_tangents),*) -> (#ret, #ret_cot) #where_clause {
                Self::jvp(#(#forwarded),*)
            }
        }
        #jacobians
    }
}

/// The companions built on `jvp` and `vjp` that `hvp!`, `jacfwd!`, `jacrev!` and
/// `hessian!` call: `hvp(args.., tangents..)` (reverse over forward: the gradient of
/// `<grad f, v>`, shaped as `grad!(f)`'s), and the Jacobians and the Hessian with
/// respect to the first differentiated argument, shaped as JAX's (`O ++ I`, `I ++
/// I`), the other arguments held.
pub(crate) fn jacobian_items(f: &ItemFn, params: &[ParamInfo]) -> TokenStream {
    let owner = &f.sig.ident;
    let (vis, generics) = (&f.vis, &f.sig.generics);
    let where_clause = &generics.where_clause;
    let Some(w) = params.iter().position(|p| p.active) else {
        return TokenStream::new();
    };
    let reference = |p: &ParamInfo| matches!(p.ty, Type::Reference(_));
    let owned = ParamInfo::owned_type;
    let names: Vec<TokenStream> = params.iter().map(|p| param_name(&p.pat)).collect();
    // Each call gets the arguments anew.
    let pass: Vec<TokenStream> = params.iter().map(ParamInfo::passed_again).collect();
    let active: Vec<usize> = (0..params.len()).filter(|&i| params[i].active).collect();
    // The tangents of the active arguments: `e` along argument `w`, zero elsewhere.
    let unit_tangents: Vec<TokenStream> = active
        .iter()
        .map(|&i| {
            let (p, n) = (&params[i], &names[i]);
            match (i == w, reference(p)) {
                (true, true) => quote!(&__e),
                (true, false) => quote!(__e),
                (false, true) => quote!(&::adjoint::__private::zeros(#n)),
                (false, false) => quote!(::adjoint::__private::zeros(&#n)),
            }
        })
        .collect();
    let (wname, wty) = (&names[w], owned(&params[w]));
    let jacobian = quote!(::adjoint::__private::Jacobian<#wty>);
    // `grad!` of the JVP's tangent output over the closure's copies of the arguments
    // (`__a0..`) and tangents (`__t0..`), with respect to `wrt`.
    let arg_names: Vec<Ident> = (0..params.len())
        .map(|i| format_ident!("__a{}", i))
        .collect();
    let tan_names: Vec<Ident> = (0..active.len())
        .map(|k| format_ident!("__t{}", k))
        .collect();
    let closure_params = params
        .iter()
        .zip(&arg_names)
        .map(|(p, a)| {
            let ty = &p.ty;
            quote!(#a: #ty)
        })
        .chain(active.iter().zip(&tan_names).map(|(&i, t)| {
            let ty = &params[i].ty;
            quote!(#t: #ty)
        }));
    let closure_params: Vec<TokenStream> = closure_params.collect();
    let grad_of_jvp = |wrt: &[&Ident], tangents: &[TokenStream]| {
        quote! {
            ::adjoint::grad!(
                |#(#closure_params),*| {
                    let (_, __d) = ::adjoint::jvp!(#owner)(#(#arg_names,)* #(#tan_names),*);
                    __d
                },
                wrt = [#(#wrt),*]
            )(#(#pass,)* #(#tangents),*)
        }
    };
    let all_active: Vec<&Ident> = active.iter().map(|&i| &arg_names[i]).collect();
    let dnames: Vec<Ident> = active.iter().map(|&i| params[i].tangent_name()).collect();
    let dargs = active.iter().zip(&dnames).map(|(&i, d)| {
        let ty = &params[i].ty;
        quote!(#d: #ty)
    });
    let dpass: Vec<TokenStream> = dnames.iter().map(|d| quote!(#d)).collect();
    let hvp_body = grad_of_jvp(&all_active, &dpass);
    let hvp_ret = match active.as_slice() {
        [i] => cot_type(&owned(&params[*i])),
        many => {
            let items = many.iter().map(|&i| cot_type(&owned(&params[i])));
            quote!((#(#items,)*))
        }
    };
    let hessian_column = grad_of_jvp(&[&arg_names[w]], &unit_tangents);
    let at = syn::Index::from(w);
    let args: Vec<TokenStream> = params.iter().map(ParamInfo::input).collect();
    // Jacobians are of a float scalar or an array, from one (as written: a tuple or a
    // tree has none; a scalar of a type parameter has no `Basis`); second order
    // needs a scalar output.
    let ident_is = |t: &Type, pick: &dyn Fn(&Ident) -> bool| match t {
        Type::Path(p) => p.path.get_ident().is_some_and(pick),
        _ => false,
    };
    let concrete_float = |i: &Ident| i == "f32" || i == "f64";
    let float = |i: &Ident| concrete_float(i) || generics.type_params().any(|g| g.ident == *i);
    let has_basis = |t: &Type| {
        let mut t = t;
        while let Type::Reference(r) = t {
            t = &r.elem;
        }
        ident_is(t, &concrete_float)
            || matches!(t, Type::Path(p) if p.path.segments.last().is_some_and(|s| {
                let s = s.ident.to_string();
                s == "Array" || s == "ArrayD" || (s.starts_with("Array") && s[5..].parse::<u8>().is_ok())
            }))
    };
    let output = match &f.sig.output {
        ReturnType::Type(_, t) => Some(&**t),
        ReturnType::Default => None,
    };
    let scalar_output = output.is_some_and(|t| ident_is(t, &float));
    let wrt_basis = has_basis(&params[w].ty);
    let jacobians = wrt_basis && output.is_some_and(has_basis);
    let hessian = wrt_basis && scalar_output;
    let name = owner.to_string();
    let doc_hvp = format!("The Hessian of [`{name}`] times the tangents (`hvp!({name})`).");
    let doc_jacfwd = format!("The Jacobian of [`{name}`] by forward mode (`jacfwd!({name})`).");
    let doc_jacrev = format!("The Jacobian of [`{name}`] by reverse mode (`jacrev!({name})`).");
    let doc_hessian = format!("The Hessian of [`{name}`] (`hessian!({name})`).");
    let hvp = scalar_output.then(|| {
        quote! {
            #[doc = #doc_hvp]
            #[doc(hidden)]
            #vis fn hvp #generics (#(#args,)* #(#dargs),*) -> #hvp_ret #where_clause {
                #hvp_body
            }
        }
    });
    let grad_fn = (scalar_output && params.iter().all(kept_by_pullback))
        .then(|| grad_fn_items(f, params, &hvp_ret));
    let hessian = hessian.then(|| {
        quote! {
            #[doc = #doc_hessian]
            #[doc(hidden)]
            #vis fn hessian #generics (#(#args),*) -> #jacobian #where_clause {
                ::adjoint::__private::jacfwd(&#wname, |__e| #hessian_column)
            }
        }
    });
    let jacobians = jacobians.then(|| {
        quote! {
            #[doc = #doc_jacfwd]
            #[doc(hidden)]
            #vis fn jacfwd #generics (#(#args),*) -> #jacobian #where_clause {
                ::adjoint::__private::jacfwd(&#wname, |__e| #owner::jvp(#(#pass,)* #(#unit_tangents),*).1)
            }

            #[doc = #doc_jacrev]
            #[doc(hidden)]
            #vis fn jacrev #generics (#(#args),*) -> #jacobian #where_clause {
                let __y = #owner(#(#pass),*);
                ::adjoint::__private::jacrev(&#wname, &__y, |__e| {
                    let (_, __pullback) = #owner::vjp(#(#pass),*);
                    __pullback(__e).#at
                })
            }
        }
    });
    let grad_fn_marker = grad_fn
        .is_some()
        .then(|| quote!(impl ::adjoint::__private::GradFn for #owner {}));
    quote! {
        #[allow(clippy::all, unused_parens, unused_variables)]
        impl #owner {
            #hvp
            #grad_fn
            #hessian
            #jacobians
        }
        #grad_fn_marker
    }
}

/// Whether `grad_fn`'s pullback can keep its own copy of the parameter: one taken
/// by value (cloned, as every companion passes it again), or a reference to a float,
/// an owned array or a tree of variables (`adjoint::__private::own`).
fn kept_by_pullback(p: &ParamInfo) -> bool {
    let Type::Reference(r) = &p.ty else {
        return true;
    };
    let Type::Path(t) = &*r.elem else {
        return false;
    };
    t.qself.is_none()
        && t.path.segments.last().is_some_and(|s| {
            let s = s.ident.to_string();
            matches!(s.as_str(), "f32" | "f64" | "Variables" | "Array" | "ArrayD")
                || (s.starts_with("Array") && s[5..].parse::<u8>().is_ok())
        })
}

/// `grad!(f)(args..)` inside a `#[differentiable]` body: `f::grad_fn(args..)`, the
/// gradient (shaped as `grad!(f)`'s, `grad` its type), and its VJP: with cotangent
/// `c` the cotangents are those of `<grad f, c>`, the Hessian times `c` (`hvp`),
/// from the pullback's own copies of the arguments.
fn grad_fn_items(f: &ItemFn, params: &[ParamInfo], grad: &TokenStream) -> TokenStream {
    let owner = &f.sig.ident;
    let (vis, generics) = (&f.vis, &f.sig.generics);
    let where_clause = &generics.where_clause;
    let args: Vec<TokenStream> = params.iter().map(ParamInfo::input).collect();
    let pass: Vec<TokenStream> = params.iter().map(ParamInfo::passed_again).collect();
    let reference = |p: &ParamInfo| matches!(p.ty, Type::Reference(_));
    // The pullback's copies, passed as the parameters are.
    let kept: Vec<Ident> = (0..params.len())
        .map(|i| format_ident!("__k{}", i))
        .collect();
    let keep = params.iter().zip(&kept).map(|(p, k)| {
        let copy = p.kept();
        quote!(let #k = #copy;)
    });
    let kept_pass = params.iter().zip(&kept).map(|(p, k)| p.lent(k));
    // The cotangent's parts (one per differentiated parameter), each passed as its
    // parameter is; the Hessian's parts likewise; `()` for the others.
    let active: Vec<&ParamInfo> = params.iter().filter(|p| p.active).collect();
    let parts: Vec<Ident> = (0..active.len())
        .map(|k| format_ident!("__c{}", k))
        .collect();
    let hs: Vec<Ident> = (0..active.len())
        .map(|k| format_ident!("__h{}", k))
        .collect();
    let (split, joined, joined_mut) = match (parts.as_slice(), hs.as_slice()) {
        ([c], [h]) => (quote!(let #c = __ct;), quote!(#h), quote!(mut #h)),
        _ => (
            quote!(let (#(#parts,)*) = __ct;),
            quote!((#(#hs,)*)),
            quote!((#(mut #hs,)*)),
        ),
    };
    let tangents = active.iter().zip(&parts).map(|(p, c)| {
        if reference(p) {
            quote!(&#c)
        } else {
            quote!(#c)
        }
    });
    let mut hs_iter = hs.iter();
    let cots: Vec<TokenStream> = params
        .iter()
        .map(|p| match p.active.then(|| hs_iter.next()).flatten() {
            Some(h) => quote!(#h),
            None => quote!(()),
        })
        .collect();
    let cot_types: Vec<TokenStream> = params.iter().map(ParamInfo::cot_or_unit).collect();
    let keep: Vec<TokenStream> = keep.collect();
    let kept_pass: Vec<TokenStream> = kept_pass.collect();
    let tangents: Vec<TokenStream> = tangents.collect();
    // `value_and_grad_fn`'s value adds `c_v` times the gradient (a copy the
    // pullback keeps, `__g..` its parts) to each part.
    let gs: Vec<Ident> = (0..active.len())
        .map(|k| format_ident!("__g{}", k))
        .collect();
    let split_g = match gs.as_slice() {
        [g] => quote!(let #g = &__kept_g;),
        _ => quote!(let (#(#gs,)*) = &__kept_g;),
    };
    let value = match &f.sig.output {
        ReturnType::Type(_, t) => quote!(#t),
        ReturnType::Default => quote!(()),
    };
    let captured: Vec<&Ident> = generics.type_params().map(|t| &t.ident).collect();
    let name = owner.to_string();
    let doc = format!(
        "The gradient of [`{name}`] as a differentiable function: what `grad!({name})(..)` inside a `#[differentiable]` body calls."
    );
    let doc_vg = format!(
        "The value and gradient of [`{name}`] as a differentiable function: what `value_and_grad!({name})(..)` inside a `#[differentiable]` body calls."
    );
    quote! {
        #[doc = #doc]
        #[doc(hidden)]
        #vis fn grad_fn #generics (#(#args),*) -> #grad #where_clause {
            ::adjoint::grad!(#owner)(#(#pass),*)
        }

        #[doc(hidden)]
        #vis fn __grad_fn_vjp_owned #generics (#(#args),*) -> (#grad, impl ::core::ops::FnOnce(#grad) -> (#(#cot_types,)*) + use<#(#captured),*>) #where_clause {
            let __g = ::adjoint::grad!(#owner)(#(#pass),*);
            #(#keep)*
            (__g, move |__ct: #grad| {
                #split
                let #joined = Self::hvp(#(#kept_pass,)* #(#tangents),*);
                (#(#cots,)*)
            })
        }

        #[doc = #doc_vg]
        #[doc(hidden)]
        #vis fn value_and_grad_fn #generics (#(#args),*) -> (#value, #grad) #where_clause {
            ::adjoint::value_and_grad!(#owner)(#(#pass),*)
        }

        #[doc(hidden)]
        #vis fn __value_and_grad_fn_vjp_owned #generics (#(#args),*) -> ((#value, #grad), impl ::core::ops::FnOnce((#value, #grad)) -> (#(#cot_types,)*) + use<#(#captured),*>) #where_clause {
            let (__v, __g) = ::adjoint::value_and_grad!(#owner)(#(#pass),*);
            #(#keep)*
            let __kept_g = ::core::clone::Clone::clone(&__g);
            ((__v, __g), move |(__cv, __ct): (#value, #grad)| {
                #split
                let #joined_mut = Self::hvp(#(#kept_pass,)* #(#tangents),*);
                #split_g
                #(::adjoint::__private::AddScaled::add_scaled(&mut #hs, #gs, __cv);)*
                (#(#cots,)*)
            })
        }
    }
}
