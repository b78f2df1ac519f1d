use adjoint::prelude::*;

#[custom_jvp]
fn no_rule(x: f64) -> f64 {
    x * x
}

#[custom_jvp(fwd = rule)]
fn wrong_key(x: f64) -> f64 {
    x * x
}

fn main() {}
