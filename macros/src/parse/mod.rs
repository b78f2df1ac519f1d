//! The first stage: what the user wrote, as the later stages need it. A function's
//! signature (its parameters, which are differentiated, the types the generated
//! items spell) and the arguments of the transform macros (`grad!(f)`,
//! `grad!(|x| .., wrt = [x])`, `grad!(cx, |mdl, cx, x| .., Child, x)`).

pub mod signature;
pub mod transform;
pub mod vmap;
