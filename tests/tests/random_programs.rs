//! Random differentiable programs (written by `build.rs` from a fixed seed with
//! `adjoint-fuzz`): every `grad!` against central differences, and every `jvp!` (all
//! but calls of helpers forward mode does not cover) against the gradient. `cargo run -p adjoint-fuzz --release --
//! --programs 3000` runs many more.

#![allow(unused_parens, unused_variables)]
// Generated programs are written the way a random generator writes them.
#![allow(clippy::all)]

include!(concat!(env!("OUT_DIR"), "/random_programs.rs"));
