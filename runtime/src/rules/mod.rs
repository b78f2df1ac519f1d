//! The rule table: every primitive's forward function beside its pullback, grouped
//! by family. The code `#[differentiable]` generates calls these by name.

pub mod activation;
pub mod conv;
pub mod elementwise;
pub mod gather;
pub mod kernels;
pub mod linalg;
pub mod nn;
pub mod pool;
pub mod reduce;
pub mod reuse;
pub mod shape;
pub mod tree;
