use adjoint::prelude::*;

fn use_it() {
    let _ = grad!(|x: f64| x * x, argnums = [0])(1.0);
}

fn main() {}
