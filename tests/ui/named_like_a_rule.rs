use adjoint::prelude::*;

// A leaky `relu` of one's own: a call `relu(x)` in a differentiated body would be
// taken for adjoint's (a silently wrong gradient), so the name is refused.
#[differentiable]
fn relu(x: f64) -> f64 {
    if x > 0.0 { x } else { 0.01 * x }
}

fn main() {}
