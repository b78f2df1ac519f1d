//! The workloads in candle (`candle-core`, CPU, f64), written the way its users
//! would: tensors, vectorised ops, `Var`s and `backward()`.

use candle_core::{DType, Device, Result, Tensor, Var};
use ndarray::{Array1, Array2, Array3};

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
