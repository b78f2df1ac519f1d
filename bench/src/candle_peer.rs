//! The workloads in candle (`candle-core`, CPU, f64), written the way its users
//! would: tensors, vectorised ops, `Var`s and `backward()`.

use candle_core::{D, DType, Device, Result, Tensor, Var};
use ndarray::{Array1, Array2, Array3, Array4, ArrayD};

fn dev() -> Device {
    Device::Cpu
}

fn t1(a: &Array1<f64>) -> Result<Tensor> {
    Tensor::from_vec(a.to_vec(), a.len(), &dev())
}

fn t2(a: &Array2<f64>) -> Result<Tensor> {
    Tensor::from_vec(a.iter().copied().collect::<Vec<_>>(), a.dim(), &dev())
}

fn t3(a: &Array3<f64>) -> Result<Tensor> {
    Tensor::from_vec(a.iter().copied().collect::<Vec<_>>(), a.dim(), &dev())
}

fn var1(a: &Array1<f64>) -> Result<Var> {
    Var::from_tensor(&t1(a)?)
}

fn var2(a: &Array2<f64>) -> Result<Var> {
    Var::from_tensor(&t2(a)?)
}

fn flat(t: &Tensor) -> Result<Vec<f64>> {
    t.flatten_all()?.to_vec1::<f64>()
}

/// Gradients of the listed variables, flattened, in order.
fn grads(loss: &Tensor, vars: &[&Var]) -> Result<Vec<Vec<f64>>> {
    let store = loss.backward()?;
    vars.iter()
        .map(|v| match store.get(v.as_tensor()) {
            Some(g) => flat(g),
            None => Ok(vec![0.0; v.as_tensor().elem_count()]),
        })
        .collect()
}

/// W1: `sum 100 (x[1:] - x[:-1]^2)^2 + (1 - x[:-1])^2`, vectorised.
pub struct Rosenbrock {
    x: Var,
}

impl Rosenbrock {
    pub fn new(x: &Array1<f64>) -> Result<Self> {
        Ok(Rosenbrock { x: var1(x)? })
    }

    pub fn grad(&self) -> Result<Vec<Vec<f64>>> {
        let n = self.x.as_tensor().elem_count();
        let x0 = self.x.narrow(0, 0, n - 1)?;
        let x1 = self.x.narrow(0, 1, n - 1)?;
        let a = (x1 - x0.sqr()?)?;
        let b = x0.affine(-1.0, 1.0)?;
        let f = ((a.sqr()? * 100.0)? + b.sqr()?)?.sum_all()?;
        grads(&f, &[&self.x])
    }
}

/// W2 and W3: a three-layer MLP with tanh (MSE) or relu (softmax cross-entropy).
pub struct Mlp {
    w: [Var; 3],
    b: [Var; 3],
    x: Tensor,
    target: Tensor,
    classify: bool,
}

impl Mlp {
    pub fn new(
        w: [&Array2<f64>; 3],
        b: [&Array1<f64>; 3],
        x: &Array2<f64>,
        target: &Array2<f64>,
        classify: bool,
    ) -> Result<Self> {
        Ok(Mlp {
            w: [var2(w[0])?, var2(w[1])?, var2(w[2])?],
            b: [var1(b[0])?, var1(b[1])?, var1(b[2])?],
            x: t2(x)?,
            target: t2(target)?,
            classify,
        })
    }

    pub fn grad(&self) -> Result<Vec<Vec<f64>>> {
        let act = |t: Tensor| if self.classify { t.relu() } else { t.tanh() };
        let h1 = act(self.x.matmul(&self.w[0])?.broadcast_add(&self.b[0])?)?;
        let h2 = act(h1.matmul(&self.w[1])?.broadcast_add(&self.b[1])?)?;
        let out = h2.matmul(&self.w[2])?.broadcast_add(&self.b[2])?;
        let loss = if self.classify {
            let m = out.max_keepdim(1)?;
            let shifted = out.broadcast_sub(&m)?;
            let lse = shifted.exp()?.sum_keepdim(1)?.log()?;
            let logp = shifted.broadcast_sub(&lse)?;
            let rows = self.x.dims()[0] as f64;
            (logp * &self.target)?.sum_all()?.affine(-1.0 / rows, 0.0)?
        } else {
            (out - &self.target)?.sqr()?.mean_all()?
        };
        grads(
            &loss,
            &[
                &self.w[0], &self.b[0], &self.w[1], &self.b[1], &self.w[2], &self.b[2],
            ],
        )
    }
}

/// W4: `h <- tanh(h W + x_t U + b)` for every step, loss `sum(h^2)`.
pub struct Rnn {
    w: Var,
    u: Var,
    b: Var,
    xs: Tensor,
}

impl Rnn {
    pub fn new(
        w: &Array2<f64>,
        u: &Array2<f64>,
        b: &Array1<f64>,
        xs: &Array3<f64>,
    ) -> Result<Self> {
        Ok(Rnn {
            w: var2(w)?,
            u: var2(u)?,
            b: var1(b)?,
            xs: t3(xs)?,
        })
    }

    pub fn grad(&self) -> Result<Vec<Vec<f64>>> {
        let (steps, batch, _) = self.xs.dims3()?;
        let hidden = self.w.dims()[0];
        let mut h = Tensor::zeros((batch, hidden), DType::F64, &dev())?;
        for t in 0..steps {
            let xt = self.xs.get(t)?;
            h = (h.matmul(&self.w)? + xt.matmul(&self.u)?)?
                .broadcast_add(&self.b)?
                .tanh()?;
        }
        let loss = h.sqr()?.sum_all()?;
        grads(&loss, &[&self.w, &self.u, &self.b])
    }
}

fn tensor32(a: &ArrayD<f32>) -> Result<Tensor> {
    Tensor::from_vec(a.iter().copied().collect::<Vec<_>>(), a.shape(), &dev())
}

/// A gradient back in Flax's layout: `perm` reorders candle's axes to Flax's.
fn array32(t: &Tensor, perm: Option<[usize; 4]>) -> Result<ArrayD<f32>> {
    let t = match perm {
        Some(p) => t.permute(p)?.contiguous()?,
        None => t.clone(),
    };
    let data = t.flatten_all()?.to_vec1::<f32>()?;
    Ok(ArrayD::from_shape_vec(t.dims(), data).expect("candle gradient shape"))
}

/// Flax's `HWIO` kernel as candle's `OIHW`.
const FROM_HWIO: [usize; 4] = [3, 2, 0, 1];
/// Candle's `OIHW` kernel as Flax's `HWIO`.
const TO_HWIO: [usize; 4] = [2, 3, 1, 0];

/// W6: the MNIST-tutorial CNN in candle's `NCHW` layout, flattened in Flax's
/// `NHWC` order before the dense layers so that the parameters are Flax's.
pub struct Cnn {
    p: Vec<Var>,
    x: Tensor,
    onehot: Tensor,
}

impl Cnn {
    pub fn new(params: &[ArrayD<f32>], x: &Array4<f32>, onehot: &Array2<f32>) -> Result<Self> {
        let p = params
            .iter()
            .map(|a| {
                let t = tensor32(a)?;
                let t = if a.ndim() == 4 {
                    t.permute(FROM_HWIO)?.contiguous()?
                } else {
                    t
                };
                Var::from_tensor(&t)
            })
            .collect::<Result<_>>()?;
        Ok(Cnn {
            p,
            x: tensor32(&x.clone().into_dyn())?
                .permute((0, 3, 1, 2))?
                .contiguous()?,
            onehot: tensor32(&onehot.clone().into_dyn())?,
        })
    }

    pub fn grad(&self) -> Result<Vec<ArrayD<f32>>> {
        let p = &self.p;
        let conv = |x: &Tensor, i: usize| -> Result<Tensor> {
            x.conv2d(&p[i], 1, 1, 1, 1)?
                .broadcast_add(&p[i + 1].reshape((1, (), 1, 1))?)
        };
        let h = conv(&self.x, 0)?.relu()?.avg_pool2d(2)?;
        let h = conv(&h, 2)?.relu()?.avg_pool2d(2)?;
        let rows = h.dims()[0];
        let h = h.permute((0, 2, 3, 1))?.reshape((rows, ()))?;
        let h = h.matmul(&p[4])?.broadcast_add(&p[5])?.relu()?;
        let out = h.matmul(&p[6])?.broadcast_add(&p[7])?;
        let m = out.max_keepdim(1)?;
        let shifted = out.broadcast_sub(&m)?;
        let lse = shifted.exp()?.sum_keepdim(1)?.log()?;
        let logp = shifted.broadcast_sub(&lse)?;
        let loss = (logp * &self.onehot)?
            .sum_all()?
            .affine(-1.0 / rows as f64, 0.0)?;
        let store = loss.backward()?;
        p.iter()
            .map(|v| {
                let g = store.get(v.as_tensor()).expect("candle W6 gradient");
                array32(g, (g.rank() == 4).then_some(TO_HWIO))
            })
            .collect()
    }
}

/// W7: the pre-norm transformer with Flax's parameters (`layer_workloads::w7_params`
/// order), attention written out as candle users do: batched `matmul`s, an additive
/// causal mask, softmax over the last axis.
pub struct Transformer {
    p: Vec<Var>,
    x: Tensor,
    y: Tensor,
    mask: Tensor,
}

/// Flax's `LayerNorm` (epsilon 1e-6) over the last axis.
fn layer_norm(x: &Tensor, scale: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    centred
        .broadcast_div(&(var + 1e-6)?.sqrt()?)?
        .broadcast_mul(scale)?
        .broadcast_add(bias)
}

fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let e = x.broadcast_sub(&x.max_keepdim(D::Minus1)?)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

impl Transformer {
    pub fn new(params: &[ArrayD<f32>], x: &Array3<f32>, y: &Array3<f32>) -> Result<Self> {
        let t = x.shape()[1];
        let mask: Vec<f32> = (0..t * t)
            .map(|k| if k % t <= k / t { 0.0 } else { -1e30 })
            .collect();
        Ok(Transformer {
            p: params
                .iter()
                .map(|a| Var::from_tensor(&tensor32(a)?))
                .collect::<Result<_>>()?,
            x: tensor32(&x.clone().into_dyn())?,
            y: tensor32(&y.clone().into_dyn())?,
            mask: Tensor::from_vec(mask, (1, 1, t, t), &dev())?,
        })
    }

    pub fn grad(&self) -> Result<Vec<ArrayD<f32>>> {
        let p = &self.p;
        let (b, t, d) = self.x.dims3()?;
        let (heads, depth) = (4, d / 4);
        let dense = |x: &Tensor, i: usize, out: usize| -> Result<Tensor> {
            let inputs = p[i].as_tensor().elem_count() / out;
            x.matmul(&p[i].reshape((inputs, out))?)?
                .broadcast_add(&p[i + 1].reshape(out)?)
        };
        let mut x = self.x.clone();
        for block in 0..2 {
            let o = 16 * block;
            let z = layer_norm(&x, &p[o], &p[o + 1])?.reshape((b * t, d))?;
            let split = |i: usize| -> Result<Tensor> {
                dense(&z, i, d)?
                    .reshape((b, t, heads, depth))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let q = (split(o + 2)? * (1.0 / (depth as f64).sqrt()))?;
            let (k, v) = (split(o + 4)?, split(o + 6)?);
            let logits = q.matmul(&k.t()?.contiguous()?)?.broadcast_add(&self.mask)?;
            let a = softmax_last(&logits)?.matmul(&v)?;
            let a = a.transpose(1, 2)?.contiguous()?.reshape((b * t, d))?;
            x = (x + dense(&a, o + 8, d)?.reshape((b, t, d))?)?;
            let z = layer_norm(&x, &p[o + 10], &p[o + 11])?.reshape((b * t, d))?;
            let z = dense(&dense(&z, o + 12, 4 * d)?.gelu()?, o + 14, d)?;
            x = (x + z.reshape((b, t, d))?)?;
        }
        let out = layer_norm(&x, &p[32], &p[33])?;
        let loss = (out - &self.y)?.sqr()?.mean_all()?;
        let store = loss.backward()?;
        p.iter()
            .map(|v| {
                let g = store.get(v.as_tensor()).expect("candle W7 gradient");
                array32(g, None)
            })
            .collect()
    }
}
