use adjoint::prelude::*;

#[differentiable]
fn returns_early(x: f64) -> f64 {
    let g = |v: f64| {
        if v > 0.0 {
            return v;
        }
        -v
    };
    g(x)
}

#[differentiable]
fn recursive(x: f64) -> f64 {
    fn fact(n: f64) -> f64 {
        if n <= 1.0 { 1.0 } else { n * fact(n - 1.0) }
    }
    fact(x)
}

#[differentiable]
fn passed_on(x: &ndarray::Array1<f64>) -> f64 {
    let inner = |v: f64| v * v;
    x.mapv(|v| v + 1.0).sum() + [1.0, 2.0].iter().map(|v| inner(*v)).sum::<f64>() * x[0]
}

fn main() {}

// A call given a closure is constant: reading a differentiated value is an error.
#[differentiable]
fn mapped(x: &ndarray::Array1<f64>) -> f64 {
    x.map(|v| v * 2.0).sum()
}

// `mapv` of a function: only an elementwise method of the rules (`f64::ln`) is known.
fn double(v: f64) -> f64 {
    2.0 * v
}

#[differentiable]
fn mapped_fn(x: &ndarray::Array1<f64>) -> f64 {
    x.mapv(double).sum() + x.mapv(f64::ln).sum()
}
