//! Recurrent layers, as Flax's `flax.linen.recurrent`: the cells `SimpleCell`,
//! `LSTMCell` and `GRUCell` (`(carry, x) -> (carry, y)`, Flax's parameter names
//! `ii`, `hf`, ...) and `RNN`, which scans a cell over the time axis with one set
//! of weights (Flax's `nn.RNN`: the cell's parameters under `cell`, the carry
//! threaded from step to step).
//!
//! The time loop is an ordinary `for` loop of a `#[differentiable]` body: its
//! reverse sweep saves per step only what the cell's pullback reads.

use crate::init::{self, Init, Initializer};
use crate::nn::{Dense, sigmoid};
use crate::rules::shape::put_index_axis;
use crate::scope::Scope;
use crate::value::Real;
use adjoint_macros::differentiable;
use ndarray::{Array2, Array3, Axis};

/// The initializers and features every cell has.
macro_rules! cell_config {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub struct $name {
            /// Features of the carry and the output.
            pub features: usize,
            /// The input kernels' initializer (LeCun normal).
            pub kernel_init: Init,
            /// The hidden kernels' initializer (orthogonal).
            pub recurrent_kernel_init: Init,
            /// The biases' initializer (zeros).
            pub bias_init: Init,
        }

        impl $name {
            /// A cell of `features`, with Flax's initializers.
            ///
            /// ```
            #[doc = concat!("let cell = adjoint::nn::", stringify!($name), "::new(3);")]
            /// assert_eq!(cell.features, 3);
            /// ```
            pub fn new(features: usize) -> Self {
                $name {
                    features,
                    kernel_init: Init::new(init::lecun_normal()),
                    recurrent_kernel_init: Init::new(init::orthogonal(1.0)),
                    bias_init: Init::new(init::zeros),
                }
            }

            /// Sets `kernel_init`.
            ///
            /// ```
            #[doc = concat!("let _cell = adjoint::nn::", stringify!($name), "::new(3).kernel_init(adjoint::init::zeros);")]
            /// ```
            pub fn kernel_init(mut self, init: impl Initializer + Send + Sync + 'static) -> Self {
                self.kernel_init = Init::new(init);
                self
            }

            /// Sets `recurrent_kernel_init`.
            ///
            /// ```
            #[doc = concat!("let _cell = adjoint::nn::", stringify!($name), "::new(3).recurrent_kernel_init(adjoint::init::zeros);")]
            /// ```
            pub fn recurrent_kernel_init(
                mut self,
                init: impl Initializer + Send + Sync + 'static,
            ) -> Self {
                self.recurrent_kernel_init = Init::new(init);
                self
            }

            /// Sets `bias_init`.
            ///
            /// ```
            #[doc = concat!("let _cell = adjoint::nn::", stringify!($name), "::new(3).bias_init(adjoint::init::zeros);")]
            /// ```
            pub fn bias_init(mut self, init: impl Initializer + Send + Sync + 'static) -> Self {
                self.bias_init = Init::new(init);
                self
            }

            /// A `Dense` on the input (`use_bias` as given).
            fn input_dense(&self, use_bias: bool) -> Dense {
                Dense::new(self.features)
                    .use_bias(use_bias)
                    .kernel_init(self.kernel_init.clone())
                    .bias_init(self.bias_init.clone())
            }

            /// A `Dense` on the hidden state (`use_bias` as given).
            fn hidden_dense(&self, use_bias: bool) -> Dense {
                Dense::new(self.features)
                    .use_bias(use_bias)
                    .kernel_init(self.recurrent_kernel_init.clone())
                    .bias_init(self.bias_init.clone())
            }
        }
    };
}

cell_config! {
    /// Elman's cell, as Flax's `nn.SimpleCell`: `h' = tanh(i(x) + h(h))`, `i` a
    /// `Dense` with bias, `h` one without; the output is `h'`.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let cell = nn::SimpleCell::new(3);
    /// let (h, x) = (cell.initialize_carry::<f64>(2), ndarray::Array2::<f64>::ones((2, 4)));
    /// let vars = cell.init(0, &h, &x).unwrap();
    /// assert_eq!(vars.shapes(), r#"{"params": {"h": {"kernel": [3, 3]}, "i": {"bias": [3], "kernel": [4, 3]}}}"#);
    /// let (h2, y) = cell.apply(&vars, &h, &x).unwrap();
    /// assert_eq!(h2, y);
    /// ```
    SimpleCell
}

cell_config! {
    /// The long short-term memory cell, as Flax's `nn.LSTMCell`: the carry is
    /// `(c, h)`; gates `i = σ(ii(x) + hi(h))`, `f = σ(if(x) + hf(h))`,
    /// `g = tanh(ig(x) + hg(h))`, `o = σ(io(x) + ho(h))`; `c' = f c + i g`,
    /// `h' = o tanh(c')`, the output `h'`. The input `Dense`s have no bias, the
    /// hidden ones do.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let cell = nn::LSTMCell::new(3);
    /// let (carry, x) = (cell.initialize_carry::<f64>(2), ndarray::Array2::<f64>::ones((2, 4)));
    /// let vars = cell.init(0, &carry, &x).unwrap();
    /// assert!(vars.shapes().contains(r#""ii": {"kernel": [4, 3]}"#));
    /// let ((c, h), y) = cell.apply(&vars, &carry, &x).unwrap();
    /// assert_eq!((c.shape(), h), (&[2, 3][..], y));
    /// ```
    LSTMCell
}

cell_config! {
    /// The gated recurrent unit, as Flax's `nn.GRUCell`: `r = σ(ir(x) + hr(h))`,
    /// `z = σ(iz(x) + hz(h))`, `n = tanh(in(x) + r hn(h))`, `h' = (1 - z) n + z h`,
    /// the output `h'`. The input `Dense`s and `hn` have biases.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let cell = nn::GRUCell::new(3);
    /// let (h, x) = (cell.initialize_carry::<f64>(2), ndarray::Array2::<f64>::ones((2, 4)));
    /// let vars = cell.init(0, &h, &x).unwrap();
    /// assert!(vars.shapes().contains(r#""hn": {"bias": [3], "kernel": [3, 3]}"#));
    /// ```
    GRUCell
}

impl SimpleCell {
    /// The initial carry for a batch of `batch`: zeros (Flax's `carry_init`).
    ///
    /// ```
    /// let carry = adjoint::nn::SimpleCell::new(4).initialize_carry::<f32>(2);
    /// assert_eq!(carry.shape(), &[2, 4]);
    /// ```
    pub fn initialize_carry<A: Real>(&self, batch: usize) -> Array2<A> {
        Array2::zeros((batch, self.features))
    }
}

impl GRUCell {
    /// The initial carry for a batch of `batch`: zeros.
    ///
    /// ```
    /// let carry = adjoint::nn::GRUCell::new(4).initialize_carry::<f32>(2);
    /// assert_eq!(carry.shape(), &[2, 4]);
    /// ```
    pub fn initialize_carry<A: Real>(&self, batch: usize) -> Array2<A> {
        Array2::zeros((batch, self.features))
    }
}

impl LSTMCell {
    /// The initial carry `(c, h)` for a batch of `batch`: zeros.
    ///
    /// ```
    /// let carry = adjoint::nn::LSTMCell::new(4).initialize_carry::<f32>(2);
    /// assert_eq!(carry.0.shape(), &[2, 4]);
    /// ```
    pub fn initialize_carry<A: Real>(&self, batch: usize) -> (Array2<A>, Array2<A>) {
        (
            Array2::zeros((batch, self.features)),
            Array2::zeros((batch, self.features)),
        )
    }
}

#[differentiable]
impl SimpleCell {
    /// One step: the new carry and the output, from the carry and the input `x`
    /// (`(batch, features)`).
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let cell = nn::SimpleCell::new(3);
    /// let (carry, x) = (cell.initialize_carry::<f64>(2), ndarray::Array2::<f64>::ones((2, 4)));
    /// let vars = cell.init(0, &carry, &x).unwrap();
    /// let (h, y) = cell.apply(&vars, &carry, &x).unwrap();
    /// assert_eq!(y.shape(), &[2, 3]);
    /// ```
    pub fn call<A: Real>(
        &self,
        cx: &mut Scope,
        carry: &Array2<A>,
        x: &Array2<A>,
    ) -> (Array2<A>, Array2<A>) {
        let i = cx.bind_as("i", self.input_dense(true));
        let h = cx.bind_as("h", self.hidden_dense(false));
        let new_h = (i.call(cx, x) + h.call(cx, carry)).tanh();
        (new_h.clone(), new_h)
    }
}

#[differentiable]
impl LSTMCell {
    /// One step: the new carry and the output, from the carry and the input `x`
    /// (`(batch, features)`).
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let cell = nn::LSTMCell::new(3);
    /// let (carry, x) = (cell.initialize_carry::<f64>(2), ndarray::Array2::<f64>::ones((2, 4)));
    /// let vars = cell.init(0, &carry, &x).unwrap();
    /// let ((c, h), y) = cell.apply(&vars, &carry, &x).unwrap();
    /// assert_eq!(y.shape(), &[2, 3]);
    /// ```
    pub fn call<A: Real>(
        &self,
        cx: &mut Scope,
        carry: &(Array2<A>, Array2<A>),
        x: &Array2<A>,
    ) -> ((Array2<A>, Array2<A>), Array2<A>) {
        let (c, h) = carry;
        let ii = cx.bind_as("ii", self.input_dense(false));
        let hi = cx.bind_as("hi", self.hidden_dense(true));
        let i = sigmoid(&(ii.call(cx, x) + hi.call(cx, h)));
        let if_ = cx.bind_as("if", self.input_dense(false));
        let hf = cx.bind_as("hf", self.hidden_dense(true));
        let f = sigmoid(&(if_.call(cx, x) + hf.call(cx, h)));
        let ig = cx.bind_as("ig", self.input_dense(false));
        let hg = cx.bind_as("hg", self.hidden_dense(true));
        let g = (ig.call(cx, x) + hg.call(cx, h)).tanh();
        let io = cx.bind_as("io", self.input_dense(false));
        let ho = cx.bind_as("ho", self.hidden_dense(true));
        let o = sigmoid(&(io.call(cx, x) + ho.call(cx, h)));
        let new_c = f * c + i * g;
        let new_h = o * new_c.tanh();
        ((new_c, new_h.clone()), new_h)
    }
}

#[differentiable]
impl GRUCell {
    /// One step: the new carry and the output, from the carry and the input `x`
    /// (`(batch, features)`).
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let cell = nn::GRUCell::new(3);
    /// let (carry, x) = (cell.initialize_carry::<f64>(2), ndarray::Array2::<f64>::ones((2, 4)));
    /// let vars = cell.init(0, &carry, &x).unwrap();
    /// let (h, y) = cell.apply(&vars, &carry, &x).unwrap();
    /// assert_eq!(y.shape(), &[2, 3]);
    /// ```
    pub fn call<A: Real>(
        &self,
        cx: &mut Scope,
        carry: &Array2<A>,
        x: &Array2<A>,
    ) -> (Array2<A>, Array2<A>) {
        let ir = cx.bind_as("ir", self.input_dense(true));
        let hr = cx.bind_as("hr", self.hidden_dense(false));
        let r = sigmoid(&(ir.call(cx, x) + hr.call(cx, carry)));
        let iz = cx.bind_as("iz", self.input_dense(true));
        let hz = cx.bind_as("hz", self.hidden_dense(false));
        let z = sigmoid(&(iz.call(cx, x) + hz.call(cx, carry)));
        let in_ = cx.bind_as("in", self.input_dense(true));
        let hn = cx.bind_as("hn", self.hidden_dense(true));
        let n = (in_.call(cx, x) + r * hn.call(cx, carry)).tanh();
        let new_h = &z * carry + &n - &z * &n;
        (new_h.clone(), new_h)
    }
}

/// A cell scanned over time, as Flax's `nn.RNN`: inputs `(batch, time, features)`
/// (`time_major = false`), the cell run at each step with the same parameters
/// (under `cell`) from a zero carry, the outputs stacked along time. With
/// `reverse`, from the last step to the first, the outputs in that order unless
/// `keep_order`. [`RNN::scan`] also takes the initial carry and returns the last
/// (Flax's `initial_carry` and `return_carry=True`).
///
/// ```
/// use adjoint::prelude::*;
/// let x = ndarray::Array3::<f64>::ones((2, 6, 3));
/// let rnn = nn::RNN::new(nn::LSTMCell::new(5));
/// let vars = rnn.init(0, &x).unwrap();
/// assert!(vars.shapes().starts_with(r#"{"params": {"cell": {"hf": {"bias": [5], "kernel": [5, 5]}"#));
/// assert_eq!(rnn.apply(&vars, &x).unwrap().shape(), &[2, 6, 5]);
/// ```
#[derive(Clone, Debug)]
pub struct RNN<C> {
    /// The cell.
    pub cell: C,
    /// From the last step to the first.
    pub reverse: bool,
    /// With `reverse`, the outputs in the inputs' order.
    pub keep_order: bool,
}

impl<C> RNN<C> {
    /// `cell` scanned forwards.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let layer = nn::RNN::new(nn::GRUCell::new(3));
    /// assert!(!layer.reverse);
    /// ```
    pub fn new(cell: C) -> Self {
        RNN {
            cell,
            reverse: false,
            keep_order: false,
        }
    }

    /// Sets `reverse`.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let layer = nn::RNN::new(nn::GRUCell::new(3)).reverse(true);
    /// assert_eq!(layer.reverse, true);
    /// ```
    pub fn reverse(mut self, reverse: bool) -> Self {
        self.reverse = reverse;
        self
    }

    /// Sets `keep_order`.
    ///
    /// ```
    /// use adjoint::prelude::*;
    /// let layer = nn::RNN::new(nn::GRUCell::new(3)).keep_order(true);
    /// assert_eq!(layer.keep_order, true);
    /// ```
    pub fn keep_order(mut self, keep_order: bool) -> Self {
        self.keep_order = keep_order;
        self
    }

    /// The time step of scan step `s` of `steps`, and where its output goes.
    fn step(&self, s: usize, steps: usize) -> (usize, usize) {
        let t = if self.reverse { steps - 1 - s } else { s };
        let slot = if self.reverse && !self.keep_order {
            s
        } else {
            t
        };
        (t, slot)
    }
}

/// `RNN<cell>`'s `call` and `scan`, for a cell whose carry is `$carry`.
macro_rules! rnn_for {
    ($cell:ident, $carry:ty) => {
        #[differentiable]
        impl RNN<$cell> {
            /// The layer in the scope `cx`: what a parent module's `call` runs, and
            /// `init` and `apply` at the root.
            ///
            /// ```
            /// use adjoint::prelude::*;
            /// let x = ndarray::Array3::<f64>::ones((2, 4, 3));
            /// let layer = nn::RNN::new(nn::SimpleCell::new(5));
            /// let vars = layer.init(0, &x).unwrap();
            /// assert_eq!(layer.apply(&vars, &x).unwrap().shape(), &[2, 4, 5]);
            /// ```
            pub fn call<A: Real>(&self, cx: &mut Scope, inputs: &Array3<A>) -> Array3<A> {
                let carry = self.cell.initialize_carry::<A>(inputs.shape()[0]);
                let (_, out) = self.scan(cx, &carry, inputs);
                out
            }

            /// The last carry and the outputs, from `carry` (Flax's `initial_carry`
            /// and `return_carry=True`).
            ///
            /// ```
            /// use adjoint::prelude::*;
            /// struct Scan;
            /// #[differentiable]
            /// impl Scan {
            ///     fn call(&self, cx: &mut Scope, h: &ndarray::Array2<f64>, x: &ndarray::Array3<f64>) -> ndarray::Array2<f64> {
            ///         let rnn = cx.bind_as("rnn", nn::RNN::new(nn::GRUCell::new(3)));
            ///         let (last, _) = rnn.scan(cx, h, x);
            ///         last
            ///     }
            /// }
            /// let (h, x) = (ndarray::Array2::zeros((2, 3)), ndarray::Array3::ones((2, 5, 4)));
            /// let vars = Scan.init(0, &h, &x).unwrap();
            /// assert_eq!(Scan.apply(&vars, &h, &x).unwrap().shape(), &[2, 3]);
            /// ```
            pub fn scan<A: Real>(
                &self,
                cx: &mut Scope,
                carry: &$carry,
                inputs: &Array3<A>,
            ) -> ($carry, Array3<A>) {
                let (batch, steps) = (inputs.shape()[0], inputs.shape()[1]);
                let cell = cx.bind_as("cell", self.cell.clone());
                let mut carry = carry.clone();
                let mut out = Array3::zeros((batch, steps, self.cell.features));
                for s in 0..steps {
                    let (t, slot) = self.step(s, steps);
                    let x_t = inputs.index_axis(Axis(1), t).to_owned();
                    let (next, y) = cell.call(cx, &carry, &x_t);
                    carry = next;
                    out = put_index_axis(&out, &y, Axis(1), slot);
                }
                (carry, out)
            }
        }
    };
}

rnn_for!(SimpleCell, Array2<A>);
rnn_for!(GRUCell, Array2<A>);
rnn_for!(LSTMCell, (Array2<A>, Array2<A>));
