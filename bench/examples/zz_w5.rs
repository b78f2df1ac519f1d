use adjoint::nn::Dense;
use adjoint::prelude::*;
use ndarray::Array2;
use std::hint::black_box;
use std::time::Instant;

struct Field;
#[differentiable]
impl Field {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> f64 {
        let h1 = Dense::new(32).call(cx, x).tanh();
        let h2 = Dense::new(32).call(cx, &h1).tanh();
        Dense::new(1).call(cx, &h2).sum()
    }
}
struct Pinn;
#[differentiable]
impl Pinn {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> f64 {
        let (du,) = grad!(cx, |mdl, cx, x| mdl.call(cx, x), Field, x);
        let r = &du - &no_grad(x.cos());
        (&r * &r).mean().unwrap()
    }
}

fn time(name: &str, mut f: impl FnMut()) {
    let mut best = f64::MAX;
    for _ in 0..15 {
        let t = Instant::now();
        for _ in 0..200 {
            f();
        }
        best = best.min(t.elapsed().as_secs_f64() / 200.0);
    }
    println!("{name:30} {:8.2} us", best * 1e6);
}

fn main() {
    let x = Array2::from_shape_fn((128, 1), |(i, _)| i as f64 * 3.0 / 127.0 - 1.5);
    let vars = Pinn.init(0, &x).unwrap();
    let fvars = Field.init(0, &x).unwrap();
    if std::env::args().nth(1).as_deref() == Some("spin") {
        let t = Instant::now();
        while t.elapsed().as_secs_f64() < 6.0 {
            black_box(value_and_grad!(|v: &Variables| Pinn.apply(v, &x).unwrap())(black_box(&vars)));
        }
        return;
    }
    time("Field.apply", || { black_box(Field.apply(black_box(&fvars), &x).unwrap()); });
    time("Field value_and_grad params", || { black_box(value_and_grad!(|v: &Variables| Field.apply(v, &x).unwrap())(black_box(&fvars))); });
    time("Pinn.apply", || { black_box(Pinn.apply(black_box(&vars), &x).unwrap()); });
    time("Pinn value_and_grad", || { black_box(value_and_grad!(|v: &Variables| Pinn.apply(v, &x).unwrap())(black_box(&vars))); });
}
#[allow(dead_code)]
fn spin() {}
