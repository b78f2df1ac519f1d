//! The workloads in burn (`Autodiff<NdArray<f64>>`), written the way its users would:
//! tensors, vectorised ops, `require_grad()` and `backward()`.

use burn::backend::{Autodiff, NdArray};
use burn::tensor::activation::{log_softmax, relu, softmax};
use burn::tensor::module::{avg_pool2d, conv2d};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorData};
use ndarray::{Array1, Array2, Array3, Array4, ArrayD};

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

type B32 = Autodiff<NdArray<f32>>;

fn tensor32<const D: usize>(a: &ArrayD<f32>) -> Tensor<B32, D> {
    let shape: [usize; D] = a.shape().try_into().expect("burn tensor rank");
    Tensor::from_data(
        TensorData::new(a.iter().copied().collect::<Vec<_>>(), shape),
        &Default::default(),
    )
}

/// A gradient back in Flax's layout.
fn array32<const D: usize>(
    t: &Tensor<B32, D>,
    g: &<B32 as burn::tensor::backend::AutodiffBackend>::Gradients,
    perm: Option<[isize; D]>,
) -> ArrayD<f32> {
    let g = t.grad(g).expect("burn gradient");
    let g = match perm {
        Some(p) => g.permute(p),
        None => g,
    };
    let shape = g.dims().to_vec();
    let data = g.into_data().to_vec::<f32>().expect("burn f32 data");
    ArrayD::from_shape_vec(shape, data).expect("burn gradient shape")
}

/// W6: the MNIST-tutorial CNN in burn's `NCHW` layout, flattened in Flax's `NHWC`
/// order before the dense layers so that the parameters are Flax's.
pub struct Cnn {
    kernels: [Tensor<B32, 4>; 2],
    vectors: [Tensor<B32, 1>; 4],
    matrices: [Tensor<B32, 2>; 2],
    x: Tensor<B32, 4>,
    onehot: Tensor<B32, 2>,
}

impl Cnn {
    pub fn new(p: &[ArrayD<f32>], x: &Array4<f32>, onehot: &Array2<f32>) -> Self {
        let kernel = |a: &ArrayD<f32>| tensor32::<4>(a).permute([3, 2, 0, 1]).require_grad();
        let vector = |a: &ArrayD<f32>| tensor32::<1>(a).require_grad();
        let matrix = |a: &ArrayD<f32>| tensor32::<2>(a).require_grad();
        Cnn {
            kernels: [kernel(&p[0]), kernel(&p[2])],
            vectors: [vector(&p[1]), vector(&p[3]), vector(&p[5]), vector(&p[7])],
            matrices: [matrix(&p[4]), matrix(&p[6])],
            x: tensor32::<4>(&x.clone().into_dyn()).permute([0, 3, 1, 2]),
            onehot: tensor32(&onehot.clone().into_dyn()),
        }
    }

    pub fn grad(&self) -> Vec<ArrayD<f32>> {
        let options = || ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        let conv = |x: Tensor<B32, 4>, i: usize| {
            conv2d(
                x,
                self.kernels[i].clone(),
                Some(self.vectors[i].clone()),
                options(),
            )
        };
        let pool = |x| avg_pool2d(x, [2, 2], [2, 2], [0, 0], true);
        let h = pool(relu(conv(self.x.clone(), 0)));
        let h = pool(relu(conv(h, 1)));
        let rows = h.dims()[0];
        let h: Tensor<B32, 2> = h.permute([0, 2, 3, 1]).reshape([rows as i32, -1]);
        let h = relu(h.matmul(self.matrices[0].clone()) + self.vectors[2].clone().unsqueeze());
        let out = h.matmul(self.matrices[1].clone()) + self.vectors[3].clone().unsqueeze();
        let loss = (log_softmax(out, 1) * self.onehot.clone())
            .sum()
            .mul_scalar(-1.0 / rows as f64);
        let g = loss.backward();
        let hwio = Some([2, 3, 1, 0]);
        vec![
            array32(&self.kernels[0], &g, hwio),
            array32(&self.vectors[0], &g, None),
            array32(&self.kernels[1], &g, hwio),
            array32(&self.vectors[1], &g, None),
            array32(&self.matrices[0], &g, None),
            array32(&self.vectors[2], &g, None),
            array32(&self.matrices[1], &g, None),
            array32(&self.vectors[3], &g, None),
        ]
    }
}

/// W7: the pre-norm transformer with Flax's parameters (`layer_workloads::w7_params`
/// order), attention written out as burn users do: batched `matmul`s, an additive
/// causal mask, `softmax`; burn's `gelu` is the exact one, so Flax's tanh
/// approximation is spelled out.
pub struct Transformer {
    p: Vec<Tensor<B32, 1>>,
    shapes: Vec<Vec<usize>>,
    x: Tensor<B32, 3>,
    y: Tensor<B32, 3>,
    mask: Tensor<B32, 4>,
}

/// Flax's `LayerNorm` (epsilon 1e-6) over the last axis.
fn layer_norm(x: Tensor<B32, 3>, scale: Tensor<B32, 1>, bias: Tensor<B32, 1>) -> Tensor<B32, 3> {
    let centred = x.clone() - x.mean_dim(2);
    let var = centred.clone().powi_scalar(2).mean_dim(2);
    centred / (var + 1e-6).sqrt() * scale.unsqueeze::<3>() + bias.unsqueeze::<3>()
}

/// `gelu` with Flax's (and candle's) tanh approximation.
fn gelu_tanh(x: Tensor<B32, 2>) -> Tensor<B32, 2> {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let inner = (x.clone() + x.clone().powi_scalar(3) * 0.044715) * c;
    x * (inner.tanh() + 1.0) * 0.5
}

impl Transformer {
    pub fn new(params: &[ArrayD<f32>], x: &Array3<f32>, y: &Array3<f32>) -> Self {
        let t = x.shape()[1];
        let mask: Vec<f32> = (0..t * t)
            .map(|k| if k % t <= k / t { 0.0 } else { -1e30 })
            .collect();
        Transformer {
            p: params
                .iter()
                .map(|a| {
                    tensor32::<1>(
                        &a.clone()
                            .into_shape_with_order(a.len())
                            .expect("flat")
                            .into_dyn(),
                    )
                    .require_grad()
                })
                .collect(),
            shapes: params.iter().map(|a| a.shape().to_vec()).collect(),
            x: tensor32(&x.clone().into_dyn()),
            y: tensor32(&y.clone().into_dyn()),
            mask: Tensor::from_data(TensorData::new(mask, [1, 1, t, t]), &Default::default()),
        }
    }

    pub fn grad(&self) -> Vec<ArrayD<f32>> {
        let p = |i: usize| self.p[i].clone();
        let [b, t, d] = self.x.dims();
        let (heads, depth) = (4, d / 4);
        let dense = |x: Tensor<B32, 2>, i: usize, out: usize| {
            let inputs = self.p[i].dims()[0] / out;
            x.matmul(p(i).reshape([inputs, out])) + p(i + 1).unsqueeze::<2>()
        };
        let mut x = self.x.clone();
        for block in 0..2 {
            let o = 16 * block;
            let z: Tensor<B32, 2> = layer_norm(x.clone(), p(o), p(o + 1)).reshape([b * t, d]);
            let split = |i: usize| -> Tensor<B32, 4> {
                dense(z.clone(), i, d)
                    .reshape([b, t, heads, depth])
                    .swap_dims(1, 2)
            };
            let q = split(o + 2) * (1.0 / (depth as f64).sqrt());
            let (k, v) = (split(o + 4), split(o + 6));
            let logits = q.matmul(k.swap_dims(2, 3)) + self.mask.clone();
            let a = softmax(logits, 3).matmul(v);
            let a: Tensor<B32, 2> = a.swap_dims(1, 2).reshape([b * t, d]);
            x = x + dense(a, o + 8, d).reshape([b, t, d]);
            let z: Tensor<B32, 2> = layer_norm(x.clone(), p(o + 10), p(o + 11)).reshape([b * t, d]);
            let z = dense(gelu_tanh(dense(z, o + 12, 4 * d)), o + 14, d);
            x = x + z.reshape([b, t, d]);
        }
        let out = layer_norm(x, p(32), p(33));
        let loss = (out - self.y.clone()).powi_scalar(2).mean();
        let g = loss.backward();
        self.p
            .iter()
            .zip(&self.shapes)
            .map(|(t, shape)| {
                array32(t, &g, None)
                    .into_shape_with_order(shape.as_slice())
                    .expect("burn W7 gradient shape")
            })
            .collect()
    }
}
