//! The workloads in burn (`Autodiff<NdArray<f64>>`), written the way its users would:
//! tensors, vectorised ops, `require_grad()` and `backward()`.

use burn::backend::{Autodiff, NdArray};
use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::{Tensor, TensorData};
use ndarray::{Array1, Array2, Array3};

type B = Autodiff<NdArray<f64>>;

fn dev() -> <B as burn::tensor::backend::Backend>::Device {
    Default::default()
}

fn t1(a: &Array1<f64>) -> Tensor<B, 1> {
    Tensor::from_data(TensorData::new(a.to_vec(), [a.len()]), &dev())
}

fn t2(a: &Array2<f64>) -> Tensor<B, 2> {
    let (r, c) = a.dim();
    Tensor::from_data(
        TensorData::new(a.iter().copied().collect::<Vec<_>>(), [r, c]),
        &dev(),
    )
}

fn t3(a: &Array3<f64>) -> Tensor<B, 3> {
    let (s, r, c) = a.dim();
    Tensor::from_data(
        TensorData::new(a.iter().copied().collect::<Vec<_>>(), [s, r, c]),
        &dev(),
    )
}

fn grad_of<const D: usize>(
    t: &Tensor<B, D>,
    g: &<B as burn::tensor::backend::AutodiffBackend>::Gradients,
) -> Vec<f64> {
    match t.grad(g) {
        Some(g) => g.into_data().to_vec::<f64>().unwrap_or_default(),
        None => vec![0.0; t.shape().num_elements()],
    }
}

/// W1, vectorised.
pub struct Rosenbrock {
    x: Tensor<B, 1>,
}

impl Rosenbrock {
    pub fn new(x: &Array1<f64>) -> Self {
        Rosenbrock {
            x: t1(x).require_grad(),
        }
    }

    pub fn grad(&self) -> Vec<Vec<f64>> {
        let n = self.x.shape().num_elements();
        let x0 = self.x.clone().narrow(0, 0, n - 1);
        let x1 = self.x.clone().narrow(0, 1, n - 1);
        let a = x1 - x0.clone().powi_scalar(2);
        let b = x0.neg().add_scalar(1.0);
        let f = (a.powi_scalar(2).mul_scalar(100.0) + b.powi_scalar(2)).sum();
        let g = f.backward();
        vec![grad_of(&self.x, &g)]
    }
}

/// W2 and W3.
pub struct Mlp {
    w: [Tensor<B, 2>; 3],
    b: [Tensor<B, 1>; 3],
    x: Tensor<B, 2>,
    target: Tensor<B, 2>,
    classify: bool,
}

impl Mlp {
    pub fn new(
        w: [&Array2<f64>; 3],
        b: [&Array1<f64>; 3],
        x: &Array2<f64>,
        target: &Array2<f64>,
        classify: bool,
    ) -> Self {
        Mlp {
            w: [
                t2(w[0]).require_grad(),
                t2(w[1]).require_grad(),
                t2(w[2]).require_grad(),
            ],
            b: [
                t1(b[0]).require_grad(),
                t1(b[1]).require_grad(),
                t1(b[2]).require_grad(),
            ],
            x: t2(x),
            target: t2(target),
            classify,
        }
    }

    pub fn grad(&self) -> Vec<Vec<f64>> {
        let layer = |h: Tensor<B, 2>, i: usize| {
            h.matmul(self.w[i].clone()) + self.b[i].clone().unsqueeze::<2>()
        };
        let act = |t: Tensor<B, 2>| if self.classify { relu(t) } else { t.tanh() };
        let h1 = act(layer(self.x.clone(), 0));
        let h2 = act(layer(h1, 1));
        let out = layer(h2, 2);
        let loss = if self.classify {
            let rows = self.x.dims()[0] as f64;
            (log_softmax(out, 1) * self.target.clone())
                .sum()
                .mul_scalar(-1.0 / rows)
        } else {
            (out - self.target.clone()).powi_scalar(2).mean()
        };
        let g = loss.backward();
        vec![
            grad_of(&self.w[0], &g),
            grad_of(&self.b[0], &g),
            grad_of(&self.w[1], &g),
            grad_of(&self.b[1], &g),
            grad_of(&self.w[2], &g),
            grad_of(&self.b[2], &g),
        ]
    }
}

/// W4.
pub struct Rnn {
    w: Tensor<B, 2>,
    u: Tensor<B, 2>,
    b: Tensor<B, 1>,
    xs: Tensor<B, 3>,
}

impl Rnn {
    pub fn new(w: &Array2<f64>, u: &Array2<f64>, b: &Array1<f64>, xs: &Array3<f64>) -> Self {
        Rnn {
            w: t2(w).require_grad(),
            u: t2(u).require_grad(),
            b: t1(b).require_grad(),
            xs: t3(xs),
        }
    }

    pub fn grad(&self) -> Vec<Vec<f64>> {
        let [steps, batch, _] = self.xs.dims();
        let hidden = self.w.dims()[0];
        let mut h = Tensor::<B, 2>::zeros([batch, hidden], &dev());
        for t in 0..steps {
            let xt: Tensor<B, 2> = self.xs.clone().narrow(0, t, 1).squeeze(0);
            h = (h.matmul(self.w.clone())
                + xt.matmul(self.u.clone())
                + self.b.clone().unsqueeze::<2>())
            .tanh();
        }
        let loss = h.powi_scalar(2).sum();
        let g = loss.backward();
        vec![
            grad_of(&self.w, &g),
            grad_of(&self.u, &g),
            grad_of(&self.b, &g),
        ]
    }
}
