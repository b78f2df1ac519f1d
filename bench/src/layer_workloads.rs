//! The layer workloads, W6 (the MNIST-tutorial CNN) and W7 (a pre-norm transformer),
//! in float32 as Flax users train: adjoint's modules from `adjoint::nn`, the limit
//! written by hand over the same kernels, and the peers.

use crate::Workload;
use crate::{burn_peer, candle_peer};
use adjoint::prelude::*;
use adjoint::rules::conv::{ConvSpec, conv, conv_pb_k, conv_pb_x};
use adjoint::rules::linalg::matmul;
use adjoint::rules::pool::{avg_pool as pool, avg_pool_pb};
use ndarray::{Array1, Array2, Array3, Array4, ArrayD, Axis, Ix1, Ix2};
use std::hint::black_box;

/// `n` elements of the bench's pattern (`((i * 7919 + seed * 104729) mod 1000) / 500
/// - 1`, times `scale`), computed in f64 and rounded to f32, shaped `shape`: the same
/// numbers `jax_workloads.py` makes.
pub fn pattern(shape: &[usize], seed: usize, scale: f64) -> ArrayD<f32> {
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|i| ((((i * 7919 + seed * 104_729) % 1000) as f64 / 500.0 - 1.0) * scale) as f32)
        .collect();
    ArrayD::from_shape_vec(shape, data).expect("pattern shape")
}

fn fixed<D: ndarray::Dimension>(a: ArrayD<f32>) -> ndarray::Array<f32, D> {
    a.into_dimensionality().expect("pattern rank")
}

/// The parameter tree `vars` holds under `paths`, as `(path, array)` pairs.
fn variables(leaves: &[(&str, ArrayD<f32>)]) -> Variables {
    leaves
        .iter()
        .try_fold(Variables::new(), |v, (p, a)| v.with("params", p, a.clone()))
        .expect("bench variables")
}

fn read_all(grads: &Variables, paths: &[&str]) -> Vec<ArrayD<f32>> {
    paths
        .iter()
        .map(|p| grads.read::<ArrayD<f32>>("params", p).expect("gradient"))
        .collect()
}

/// Normwise agreement of two gradients computed in float32 in different orders, to
/// 1e-4 of `b`'s norm, or of `floor` where that is larger (see `NOISE_FLOOR`).
fn assert_close32(what: &str, a: &ArrayD<f32>, b: &ArrayD<f32>, floor: f64) {
    assert_eq!(a.shape(), b.shape(), "{what}: shapes");
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum();
    let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    let scale = norm.sqrt().max(floor).max(1e-30);
    assert!(
        diff.sqrt() <= 1e-4 * scale,
        "{what}: normwise difference {:.2e}",
        diff.sqrt() / scale
    );
}

/// `NOISE_FLOOR` of the largest gradient's norm.
fn noise_floor(grads: &[ArrayD<f32>]) -> f64 {
    let largest = grads
        .iter()
        .map(|g| g.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt())
        .fold(0.0, f64::max);
    crate::NOISE_FLOOR * largest
}

// ----- W6: the MNIST-tutorial CNN, batch 32 -----

/// Flax's MNIST tutorial network.
struct MnistCnn;

#[differentiable]
impl MnistCnn {
    fn call(&self, cx: &mut Scope, x: &Array4<f32>) -> Array2<f32> {
        let x = nn::relu(&nn::Conv::new(32, [3, 3]).call(cx, x));
        let x = nn::avg_pool(&x, [2, 2], [2, 2], nn::Padding::Valid);
        let x = nn::relu(&nn::Conv::new(64, [3, 3]).call(cx, &x));
        let x = nn::avg_pool(&x, [2, 2], [2, 2], nn::Padding::Valid);
        let (n, len) = (x.shape()[0], x.len());
        let x = x.into_shape_with_order((n, len / n)).unwrap();
        let x = nn::relu(&nn::Dense::new(256).call(cx, &x));
        nn::Dense::new(10).call(cx, &x)
    }
}

pub const W6_PATHS: [&str; 8] = [
    "Conv_0/kernel",
    "Conv_0/bias",
    "Conv_1/kernel",
    "Conv_1/bias",
    "Dense_0/kernel",
    "Dense_0/bias",
    "Dense_1/kernel",
    "Dense_1/bias",
];

/// The parameters, in `W6_PATHS` order, and the batch.
pub fn w6_inputs() -> (Vec<ArrayD<f32>>, Array4<f32>, Array1<usize>) {
    let params = vec![
        pattern(&[3, 3, 1, 32], 1, 0.33),
        pattern(&[32], 2, 0.1),
        pattern(&[3, 3, 32, 64], 3, 0.06),
        pattern(&[64], 4, 0.1),
        pattern(&[3136, 256], 5, 0.018),
        pattern(&[256], 6, 0.1),
        pattern(&[256, 10], 7, 0.0625),
        pattern(&[10], 8, 0.1),
    ];
    let x = fixed(pattern(&[32, 28, 28, 1], 9, 1.0));
    let labels = Array1::from_shape_fn(32, |i| (i * 7) % 10);
    (params, x, labels)
}

fn cnn_loss(vars: &Variables, x: &Array4<f32>, labels: &Array1<usize>) -> (f32, Variables) {
    value_and_grad!(|p: &Variables| {
        let logits = MnistCnn.apply(p, x).unwrap();
        losses::softmax_cross_entropy_with_integer_labels(&logits, labels)
            .mean()
            .unwrap()
    })(vars)
}

/// `relu` in place.
fn relu_in_place<D: ndarray::Dimension>(a: ndarray::Array<f32, D>) -> ndarray::Array<f32, D> {
    a.mapv_into(|v| v.max(0.0))
}

/// Zeroes `g` where the relu's output `h` is not positive.
fn relu_mask<D: ndarray::Dimension>(g: &mut ndarray::Array<f32, D>, h: &ndarray::Array<f32, D>) {
    g.zip_mut_with(h, |g, &h| {
        if h <= 0.0 {
            *g = 0.0
        }
    });
}

/// The CNN's parameter gradients by hand, over adjoint's kernels (`conv` and its
/// pullbacks, `avg_pool` and its pullback, `matmul`).
fn cnn_grad_by_hand(
    p: &[ArrayD<f32>],
    x: &Array4<f32>,
    labels: &Array1<usize>,
) -> Vec<ArrayD<f32>> {
    let same = nn::Padding::Same;
    let valid = nn::Padding::Valid;
    let spec1 = ConvSpec::new([1, 1], same, [28, 28], [3, 3]).expect("spec");
    let spec2 = ConvSpec::new([1, 1], same, [14, 14], [3, 3]).expect("spec");
    let (k1, k2) = (&p[0], &p[2]);
    let vector = |i: usize| p[i].view().into_dimensionality::<Ix1>().expect("bias");
    let (b1, b2, b3, b4) = (vector(1), vector(3), vector(5), vector(7));
    let w3 = p[4].view().into_dimensionality::<Ix2>().expect("w3");
    let w4 = p[6].view().into_dimensionality::<Ix2>().expect("w4");
    let r1: Array4<f32> = relu_in_place(conv(x, k1, spec1) + b1);
    let p1: Array4<f32> = pool(&r1, [2, 2], [2, 2], valid);
    let r2: Array4<f32> = relu_in_place(conv(&p1, k2, spec2) + b2);
    let p2: Array4<f32> = pool(&r2, [2, 2], [2, 2], valid);
    let n = x.shape()[0];
    let f = p2.into_shape_with_order((n, 3136)).expect("flatten");
    let h = relu_in_place(matmul(&f, &w3) + b3);
    let logits = matmul(&h, &w4) + b4;
    // Softmax minus the one-hot labels, over the batch size.
    let mut gl = logits;
    for (mut row, &label) in gl.rows_mut().into_iter().zip(labels) {
        let m = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        row.mapv_inplace(|v| (v - m).exp());
        let s = row.sum();
        row /= s;
        row[label] -= 1.0;
    }
    gl /= n as f32;
    let gw4 = matmul(&h.t(), &gl);
    let gb4 = gl.sum_axis(Axis(0));
    let mut gh = matmul(&gl, &w4.t());
    relu_mask(&mut gh, &h);
    let gw3 = matmul(&f.t(), &gh);
    let gb3 = gh.sum_axis(Axis(0));
    let gf = matmul(&gh, &w3.t());
    let gp2 = gf.into_shape_with_order((n, 7, 7, 64)).expect("unflatten");
    let mut gr2 = avg_pool_pb(&r2, [2, 2], [2, 2], valid, gp2);
    relu_mask(&mut gr2, &r2);
    let gk2: ArrayD<f32> = conv_pb_k(&p1, k2, spec2, gr2.clone());
    let gb2 = gr2.sum_axis(Axis(0)).sum_axis(Axis(0)).sum_axis(Axis(0));
    let gp1 = conv_pb_x(&p1, k2, spec2, gr2);
    let mut gr1 = avg_pool_pb(&r1, [2, 2], [2, 2], valid, gp1);
    relu_mask(&mut gr1, &r1);
    let gb1 = gr1.sum_axis(Axis(0)).sum_axis(Axis(0)).sum_axis(Axis(0));
    let gk1: ArrayD<f32> = conv_pb_k(x, k1, spec1, gr1);
    vec![
        gk1,
        gb1.into_dyn(),
        gk2,
        gb2.into_dyn(),
        gw3.into_dyn(),
        gb3.into_dyn(),
        gw4.into_dyn(),
        gb4.into_dyn(),
    ]
}

pub fn w6() -> Workload {
    let (params, x, labels) = w6_inputs();
    let leaves: Vec<(&str, ArrayD<f32>)> = W6_PATHS.iter().copied().zip(params.clone()).collect();
    let vars = variables(&leaves);
    assert_eq!(
        vars.shapes(),
        MnistCnn.init(0, &x).expect("W6 init").shapes()
    );
    let (_, grads) = cnn_loss(&vars, &x, &labels);
    let ours = read_all(&grads, &W6_PATHS);
    let floor = noise_floor(&ours);
    let hand = cnn_grad_by_hand(&params, &x, &labels);
    for ((path, a), h) in W6_PATHS.iter().zip(&ours).zip(&hand) {
        assert_close32(&format!("W6 {path}"), a, h, floor);
    }
    let onehot = Array2::from_shape_fn((32, 10), |(i, j)| f32::from(labels[i] == j));
    let candle = candle_peer::Cnn::new(&params, &x, &onehot).expect("candle W6");
    for ((path, a), c) in W6_PATHS
        .iter()
        .zip(&ours)
        .zip(candle.grad().expect("candle W6"))
    {
        assert_close32(&format!("W6 candle {path}"), &c, a, floor);
    }
    let burn = burn_peer::Cnn::new(&params, &x, &onehot);
    for ((path, a), b) in W6_PATHS.iter().zip(&ours).zip(burn.grad()) {
        assert_close32(&format!("W6 burn {path}"), &b, a, floor);
    }
    let checksums = ours.iter().map(crate::checksum).collect();
    let (va, vc) = (vars.clone(), vars);
    let (xa, xb, xc) = (x.clone(), x.clone(), x);
    let (la, lb, lc) = (labels.clone(), labels.clone(), labels);
    Workload {
        name: "W6 MNIST CNN (Conv32-pool-Conv64-pool-Dense256-Dense10), batch 32, f32",
        key: "W6",
        checksums,
        tolerance: 1e-4,
        runs: 60,
        adjoint: Box::new(move || {
            black_box(cnn_loss(black_box(&va), &xa, &la));
        }),
        hand: Some(Box::new(move || {
            black_box(cnn_grad_by_hand(&params, black_box(&xb), &lb));
        })),
        primal: Some(Box::new(move || {
            let logits = MnistCnn.apply(black_box(&vc), &xc).expect("W6");
            black_box(losses::softmax_cross_entropy_with_integer_labels(&logits, &lc).mean());
        })),
        candle: Some(Box::new(move || {
            black_box(candle.grad().expect("candle W6"));
        })),
        burn: Some(Box::new(move || {
            black_box(burn.grad());
        })),
    }
}

// ----- W7: a 2-layer pre-norm transformer, batch 8, sequence 64, causal -----

/// One pre-norm block: `x + attention(LayerNorm(x))`, then `x + mlp(LayerNorm(x))`
/// with a 256-wide `gelu` MLP.
struct Block;

#[differentiable]
impl Block {
    fn call(&self, cx: &mut Scope, x: &Array3<f32>, mask: &Array4<bool>) -> Array3<f32> {
        let h = nn::LayerNorm::new().call(cx, x);
        let a = nn::MultiHeadDotProductAttention::new(4).call(cx, &h, &h, &h, Some(mask));
        let x = x + &a;
        let h = nn::LayerNorm::new().call(cx, &x);
        let h = nn::gelu(&nn::Dense::new(256).call(cx, &h));
        let h = nn::Dense::new(64).call(cx, &h);
        &x + &h
    }
}

/// Two blocks and a final `LayerNorm`.
struct Transformer;

#[differentiable]
impl Transformer {
    fn call(&self, cx: &mut Scope, x: &Array3<f32>, mask: &Array4<bool>) -> Array3<f32> {
        let x = Block.call(cx, x, mask);
        let x = Block.call(cx, &x, mask);
        nn::LayerNorm::new().call(cx, &x)
    }
}

/// The leaves of one block under `Block_{i}/`, in the order the peers take them:
/// `(path, shape, scale)`; a scale of `None` marks a LayerNorm scale, `1 +` a
/// small pattern.
const BLOCK_LEAVES: [(&str, &[usize], Option<f64>); 16] = [
    ("LayerNorm_0/scale", &[64], None),
    ("LayerNorm_0/bias", &[64], Some(0.05)),
    (
        "MultiHeadDotProductAttention_0/query/kernel",
        &[64, 4, 16],
        Some(0.125),
    ),
    (
        "MultiHeadDotProductAttention_0/query/bias",
        &[4, 16],
        Some(0.02),
    ),
    (
        "MultiHeadDotProductAttention_0/key/kernel",
        &[64, 4, 16],
        Some(0.125),
    ),
    (
        "MultiHeadDotProductAttention_0/key/bias",
        &[4, 16],
        Some(0.02),
    ),
    (
        "MultiHeadDotProductAttention_0/value/kernel",
        &[64, 4, 16],
        Some(0.125),
    ),
    (
        "MultiHeadDotProductAttention_0/value/bias",
        &[4, 16],
        Some(0.02),
    ),
    (
        "MultiHeadDotProductAttention_0/out/kernel",
        &[4, 16, 64],
        Some(0.125),
    ),
    ("MultiHeadDotProductAttention_0/out/bias", &[64], Some(0.02)),
    ("LayerNorm_1/scale", &[64], None),
    ("LayerNorm_1/bias", &[64], Some(0.05)),
    ("Dense_0/kernel", &[64, 256], Some(0.125)),
    ("Dense_0/bias", &[256], Some(0.02)),
    ("Dense_1/kernel", &[256, 64], Some(0.0625)),
    ("Dense_1/bias", &[64], Some(0.02)),
];

/// W7's parameters as `(path, array)`, in the peers' order: both blocks' leaves,
/// then the final LayerNorm's; leaf `k` is `pattern(.., k + 1, ..)`.
pub fn w7_params() -> Vec<(String, ArrayD<f32>)> {
    let blocks = (0..2).flat_map(|b| {
        BLOCK_LEAVES
            .iter()
            .map(move |&(p, shape, scale)| (format!("Block_{b}/{p}"), shape, scale))
    });
    let last = [
        ("LayerNorm_0/scale".to_string(), &[64][..], None),
        ("LayerNorm_0/bias".to_string(), &[64][..], Some(0.05)),
    ];
    blocks
        .chain(last)
        .enumerate()
        .map(|(k, (path, shape, scale))| {
            let leaf = match scale {
                Some(s) => pattern(shape, k + 1, s),
                None => pattern(shape, k + 1, 0.1).mapv(|v| v + 1.0),
            };
            (path, leaf)
        })
        .collect()
}

/// The batch `x` and the regression target `y`, both `(8, 64, 64)`.
pub fn w7_batch() -> (Array3<f32>, Array3<f32>) {
    (
        fixed(pattern(&[8, 64, 64], 100, 1.0)),
        fixed(pattern(&[8, 64, 64], 101, 1.0)),
    )
}

fn transformer_loss(
    vars: &Variables,
    x: &Array3<f32>,
    y: &Array3<f32>,
    mask: &Array4<bool>,
) -> (f32, Variables) {
    value_and_grad!(|p: &Variables| {
        let out = Transformer.apply(p, x, mask).unwrap();
        losses::squared_error(&out, y).mean().unwrap()
    })(vars)
}

pub fn w7() -> Workload {
    let params = w7_params();
    let (x, y) = w7_batch();
    let mask = nn::make_causal_mask(8, 64);
    let leaves: Vec<(&str, ArrayD<f32>)> = params
        .iter()
        .map(|(p, a)| (p.as_str(), a.clone()))
        .collect();
    let vars = variables(&leaves);
    assert_eq!(
        vars.shapes(),
        Transformer.init(0, &x, &mask).expect("W7 init").shapes()
    );
    let paths: Vec<&str> = params.iter().map(|(p, _)| p.as_str()).collect();
    let (_, grads) = transformer_loss(&vars, &x, &y, &mask);
    let ours = read_all(&grads, &paths);
    // The key projections' biases have zero gradient in exact arithmetic (a
    // query's logits all shift by `q · bias`, which softmax ignores): noise.
    let floor = noise_floor(&ours);
    let arrays: Vec<ArrayD<f32>> = params.iter().map(|(_, a)| a.clone()).collect();
    let candle = candle_peer::Transformer::new(&arrays, &x, &y).expect("candle W7");
    for ((path, a), c) in paths
        .iter()
        .zip(&ours)
        .zip(candle.grad().expect("candle W7"))
    {
        assert_close32(&format!("W7 candle {path}"), &c, a, floor);
    }
    let burn = burn_peer::Transformer::new(&arrays, &x, &y);
    for ((path, a), b) in paths.iter().zip(&ours).zip(burn.grad()) {
        assert_close32(&format!("W7 burn {path}"), &b, a, floor);
    }
    let checksums = ours.iter().map(crate::checksum).collect();
    let va = vars.clone();
    let (xa, ya, ma) = (x.clone(), y.clone(), mask.clone());
    Workload {
        name: "W7 transformer: 2 pre-norm blocks, d 64, 4 heads, seq 64, batch 8, causal, f32",
        key: "W7",
        checksums,
        tolerance: 1e-4,
        runs: 60,
        adjoint: Box::new(move || {
            black_box(transformer_loss(black_box(&va), &xa, &ya, &ma));
        }),
        hand: None,
        primal: Some(Box::new(move || {
            let out = Transformer.apply(black_box(&vars), &x, &mask).expect("W7");
            black_box(losses::squared_error(&out, &y).mean());
        })),
        candle: Some(Box::new(move || {
            black_box(candle.grad().expect("candle W7"));
        })),
        burn: Some(Box::new(move || {
            black_box(burn.grad());
        })),
    }
}

pub fn all() -> Vec<Workload> {
    vec![w6(), w7()]
}
