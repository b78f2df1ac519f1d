use adjoint::prelude::*;

fn use_it() {
    let _ = grad!(|x: f64, y: f64| x * y, wrt = [z])(1.0, 2.0);
}

fn main() {}
