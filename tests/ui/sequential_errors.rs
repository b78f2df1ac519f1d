use adjoint::prelude::*;
use ndarray::Array2;

nn::sequential! {
    struct Empty(x: &Array2<f64>) -> Array2<f64> []
}

nn::sequential! {
    struct TwoInputs(x: &Array2<f64>, y: &Array2<f64>) -> Array2<f64> [nn::relu]
}

nn::sequential! {
    struct TwoArgClosure(x: &Array2<f64>) -> Array2<f64> [|a, b| a + b]
}

fn main() {}
