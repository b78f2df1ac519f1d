//! The procedural macros of adjoint: `#[differentiable]` and the transforms
//! `grad!`, `value_and_grad!`, `vjp!`, `jvp!`, `vmap!`. Use them through the
//! `adjoint` crate, which documents each (the comments here say what each entry
//! point expands).
//!
//! The stages, in the order a body goes through them, each a module that uses only
//! those before it:
//!
//! 1. `parse`: the signature and the transforms' arguments, as written.
//! 2. `lower`: the body as an A-normal-form IR (`ir`), over the rule table (`ops`).
//! 3. `facts` and `activity`: what the IR defines and joins, and which values carry
//!    derivatives.
//! 4. `reverse` (primal and reverse sweeps) and `forward` (the JVP, as Rust that is
//!    differentiated again).
//! 5. `expand`: the items written next to the user's (companions, Jacobians,
//!    modules, the transforms' expansions, `vmap!`).
//!
//! `names` (the generated items' names), `hygiene` (generated locals kept apart
//! from the user's), `chunk` (long bodies split) and `ctxt` (errors) serve them all.

mod activity;
mod chunk;
mod ctxt;
mod expand;
mod facts;
mod forward;
mod hygiene;
mod ir;
mod lower;
mod names;
mod ops;
mod parse;
mod reverse;
#[cfg(test)]
mod tests;
mod transpose;

use proc_macro::TokenStream;

// Generates the gradient of a function, or of every method of an inherent impl.
// See the `adjoint` crate for the supported Rust and the generated items.
#[proc_macro_attribute]
pub fn differentiable(attr: TokenStream, item: TokenStream) -> TokenStream {
    hygienic(item, |item| expand::differentiable(attr.into(), item))
}

// A user-given reverse rule: `#[custom_vjp(fwd = f_fwd, bwd = f_bwd)]` on `f`.
#[proc_macro_attribute]
pub fn custom_vjp(attr: TokenStream, item: TokenStream) -> TokenStream {
    hygienic(item, |item| expand::custom_vjp(attr.into(), item))
}

// A user-given forward rule: `#[custom_jvp(jvp = f_jvp)]` on `f`.
#[proc_macro_attribute]
pub fn custom_jvp(attr: TokenStream, item: TokenStream) -> TokenStream {
    hygienic(item, |item| expand::custom_jvp(attr.into(), item))
}

// `grad!(f)`: a function returning the gradient of `f` with respect to its
// differentiated arguments. `grad!(|x, y| body, wrt = [x], has_aux)` for a closure.
#[proc_macro]
pub fn grad(input: TokenStream) -> TokenStream {
    hygienic(input, |input| {
        expand::transform::transform(parse::transform::Transform::Grad, input)
    })
}

// `value_and_grad!(f)`: like `grad!`, returning `(value, gradient)`.
#[proc_macro]
pub fn value_and_grad(input: TokenStream) -> TokenStream {
    hygienic(input, |input| {
        expand::transform::transform(parse::transform::Transform::ValueAndGrad, input)
    })
}

// `vjp!(f)`: a function returning `(value, pullback)`; the pullback maps the
// output's cotangent to the arguments' cotangents.
#[proc_macro]
pub fn vjp(input: TokenStream) -> TokenStream {
    hygienic(input, |input| {
        expand::transform::transform(parse::transform::Transform::Vjp, input)
    })
}

// `jvp!(f)(args.., tangents..)`: the value and its directional derivative, for `f`
// marked `#[differentiable(jvp)]`. Inside a module,
// `jvp!(cx, |mdl, cx, x| body, Child, (x,), (tx,), variable_tangents)` is forward mode
// along the primals and the child's variables: `(output, output_tangent)`, as
// `flax.linen.jvp`.
#[proc_macro]
pub fn jvp(input: TokenStream) -> TokenStream {
    hygienic(input, |input| {
        expand::transform::transform(parse::transform::Transform::Jvp, input)
    })
}

// `hvp!(f)(args.., tangents..)`: the Hessian of `f` times the tangents (reverse over
// forward), shaped as `grad!(f)`'s; `jacfwd!(f)(args..)`, `jacrev!(f)(args..)`: the
// Jacobian with respect to the first differentiated argument, shape `output ++
// input` as JAX's; `hessian!(f)(args..)`: the Hessian, shape `input ++ input`. For
// `f` marked `#[differentiable(jvp)]`.
#[proc_macro]
pub fn hvp(input: TokenStream) -> TokenStream {
    hygienic(input, |input| {
        expand::transform::jacobian_transform("hvp", input)
    })
}

#[proc_macro]
pub fn jacfwd(input: TokenStream) -> TokenStream {
    hygienic(input, |input| {
        expand::transform::jacobian_transform("jacfwd", input)
    })
}

#[proc_macro]
pub fn jacrev(input: TokenStream) -> TokenStream {
    hygienic(input, |input| {
        expand::transform::jacobian_transform("jacrev", input)
    })
}

#[proc_macro]
pub fn hessian(input: TokenStream) -> TokenStream {
    hygienic(input, |input| {
        expand::transform::jacobian_transform("hessian", input)
    })
}

// `sequential! { struct Mlp(x: &Array2<f64>) -> Array2<f64> [nn::Dense::new(4),
// nn::relu, nn::Dense::new(1)] }`: Flax's `nn.Sequential`, a module type whose
// `call` runs the layers in order (modules in scopes `layers_{i}`).
#[proc_macro]
pub fn sequential(input: TokenStream) -> TokenStream {
    hygienic(input, expand::sequential::sequential)
}

// `vmap!(f, in_axes = [None, 0, ..])`: `f` mapped over axis `k` of the arguments
// marked `k` (the others broadcast), outputs stacked along a new axis 0, as
// `jax.vmap`. With `grad!`, per-example gradients; with `axis_name = "batch"` and a
// `grad!` given `reduce_axes = ["batch"]`, the broadcast arguments' cotangents summed.
// Inside a module, `vmap!(cx, |mdl, cx, x| body, Child, x, in_axes = [0])` runs the
// child once per example with its variables broadcast, as `flax.linen.vmap`.
//
// The mapped function panics, as `jax.vmap` raises, when the mapped arguments'
// lengths along their axes differ, or the examples' outputs differ in shape.
#[proc_macro]
pub fn vmap(input: TokenStream) -> TokenStream {
    hygienic(input, expand::vmap::vmap)
}

// Runs an expansion with its generated locals kept apart from the user's (see
// [`hygiene`]).
fn hygienic(
    input: TokenStream,
    expand: impl FnOnce(proc_macro2::TokenStream) -> proc_macro2::TokenStream,
) -> TokenStream {
    // Every stage recurses over the expression tree; a sum of thousands of terms is
    // that deep. A stack of its own (reserved, committed as it is used) keeps rustc's.
    stacker::grow(EXPANSION_STACK, || {
        let (input, kept) = hygiene::rename_locals(input.into());
        let output = chunk::chunk_long_blocks(expand(input));
        hygiene::respan(output, &kept).into()
    })
}

/// The stack an expansion runs on: 1 GiB of address space, of which a function of a
/// few thousand statements touches a few megabytes.
const EXPANSION_STACK: usize = 1 << 30;
