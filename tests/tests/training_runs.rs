//! Whole training runs against Flax and optax, step by step
//! (`reference/training_runs.json`, from `gen_training_runs.py`): the loss at every
//! step and every variable after every step, to 1e-9 relative in f64. Also the IDX
//! reader on small files written here.

use adjoint::prelude::*;
use adjoint::scope::ApplyOptions;
use adjoint::train::TrainState;
use adjoint_tests::{array, assert_close, assert_tree_close, reference, scalar};
use ndarray::{Array1, Array2, Array4, s};

const RTOL: f64 = 1e-9;

struct Mlp;

#[differentiable]
impl Mlp {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> Array2<f64> {
        let x = nn::relu(&nn::Dense::new(16).call(cx, x));
        let x = nn::gelu(&nn::Dense::new(8).call(cx, &x));
        nn::Dense::new(3).call(cx, &x)
    }
}

struct Cnn;

#[differentiable]
impl Cnn {
    fn call(&self, cx: &mut Scope, x: &Array4<f64>, train: bool) -> Array2<f64> {
        let x = nn::Conv::new(4, [3, 3]).call(cx, x);
        let x = nn::BatchNorm::new()
            .use_running_average(!train)
            .momentum(0.9)
            .call(cx, &x);
        let x = nn::avg_pool(&nn::relu(&x), [2, 2], [2, 2], nn::Padding::Valid);
        let n = x.shape()[0];
        let len = x.len();
        let x = x.into_shape_with_order((n, len / n)).unwrap();
        nn::Dense::new(3).call(cx, &x)
    }
}

fn labels(run: &serde_json::Value) -> Array1<usize> {
    array(&run["labels"])
        .mapv(|v| v as usize)
        .into_dimensionality()
        .unwrap()
}

#[test]
fn mlp_with_adamw_clipping_and_a_schedule() {
    let run = reference("training_runs.json", "mlp_adamw");
    let x: Array2<f64> = array(&run["x"]).into_dimensionality().unwrap();
    let y = labels(&run);
    let vars = adjoint_tests::variables(&run["initial"]);
    assert_eq!(vars.shapes(), Mlp.init(0, &x).unwrap().shapes());
    let sched = optim::warmup_cosine_decay_schedule(0.0, 0.05, 3, 12, 0.005, 1.0);
    let tx = optim::chain((
        optim::clip_by_global_norm(1.0),
        optim::adamw(sched, 1e-2, None),
    ));
    let mut state = TrainState::create(vars, tx);
    let mut worst = 0.0f64;
    for t in 0..12 {
        let (xb, yb) = (
            x.slice(s![(t % 3) * 8..(t % 3) * 8 + 8, ..]).to_owned(),
            y.slice(s![(t % 3) * 8..(t % 3) * 8 + 8]).to_owned(),
        );
        let (loss, grads) = value_and_grad!(|p: &Variables| {
            let logits = Mlp.apply(p, &xb).unwrap();
            losses::softmax_cross_entropy_with_integer_labels(&logits, &yb)
                .mean()
                .unwrap()
        })(&state.params);
        state.apply_gradients(grads).unwrap();
        let what = format!("mlp step {t}");
        assert_close(&what, &scalar(loss), &array(&run["losses"][t]), RTOL);
        worst = worst.max(assert_tree_close(
            &what,
            &state.variables(),
            &run["variables"][t],
            RTOL,
        ));
    }
    eprintln!("mlp_adamw: 12 steps, normwise relative error {worst:.1e}");
}

#[test]
fn cnn_with_batchnorm_and_sgd_momentum() {
    let run = reference("training_runs.json", "cnn_batchnorm_sgd");
    let x: Array4<f64> = array(&run["x"]).into_dimensionality().unwrap();
    let y = labels(&run);
    let vars = adjoint_tests::variables(&run["initial"]);
    assert_eq!(vars.shapes(), Cnn.init(0, &x, false).unwrap().shapes());
    let mut state = TrainState::create(vars, optim::sgd(0.05, Some(0.9), false));
    let opts = ApplyOptions::new().mutable(["batch_stats"]);
    let mut worst = 0.0f64;
    for t in 0..8 {
        let collections = state.collections.clone();
        let ((loss, updated), grads) = value_and_grad!(
            |p: &Variables| {
                let (logits, updated) = Cnn
                    .apply_with(&p.merge(&collections), &opts, &x, true)
                    .unwrap();
                (
                    losses::softmax_cross_entropy_with_integer_labels(&logits, &y)
                        .mean()
                        .unwrap(),
                    updated,
                )
            },
            has_aux
        )(&state.params);
        state.apply_gradients(grads).unwrap();
        state.update_collections(&updated);
        let what = format!("cnn step {t}");
        assert_close(&what, &scalar(loss), &array(&run["losses"][t]), RTOL);
        worst = worst.max(assert_tree_close(
            &what,
            &state.variables(),
            &run["variables"][t],
            RTOL,
        ));
    }
    let logits = Cnn.apply(&state.variables(), &x, false).unwrap();
    assert_close(
        "eval logits",
        &logits.into_dyn(),
        &array(&run["eval_logits"]),
        RTOL,
    );
    eprintln!("cnn_batchnorm_sgd: 8 steps, normwise relative error {worst:.1e}");
}

#[test]
fn idx_files_read_as_mnist_writes_them() {
    // A 3-image, 2x2 "MNIST" and its labels, as the IDX format lays them out.
    let dir = std::env::temp_dir().join(format!("adjoint-idx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut images = vec![0, 0, 0x08, 3, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 2];
    images.extend((0..12u8).map(|v| v * 20));
    let mut labels = vec![0, 0, 0x08, 1, 0, 0, 0, 3];
    labels.extend([7u8, 2, 1]);
    std::fs::write(dir.join("images-idx3-ubyte"), &images).unwrap();
    std::fs::write(dir.join("labels-idx1-ubyte"), &labels).unwrap();
    let x = adjoint::data::read_idx_file(dir.join("images-idx3-ubyte")).unwrap();
    let y = adjoint::data::read_idx_file(dir.join("labels-idx1-ubyte")).unwrap();
    assert_eq!(x.shape(), &[3, 2, 2]);
    assert_eq!(x[[2, 1, 1]], 220);
    assert_eq!(y.as_slice().unwrap(), &[7, 2, 1]);
    // Cut short, another element type, a missing file: typed errors.
    assert_eq!(
        adjoint::data::read_idx(&images[..20])
            .unwrap_err()
            .to_string(),
        "not an IDX file of bytes: 4 bytes of data for shape [3, 2, 2] (12)"
    );
    let mut floats = images.clone();
    floats[2] = 0x0D;
    assert_eq!(
        adjoint::data::read_idx(&floats).unwrap_err().to_string(),
        "not an IDX file of bytes: element type 0x0d; only unsigned bytes (0x08) are read"
    );
    assert!(adjoint::data::read_idx_file(dir.join("missing")).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
