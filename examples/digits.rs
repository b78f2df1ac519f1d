//! Handwritten digits (UCI, 1797 8x8 images; `data/README.md`) with the Flax
//! tutorial's kind of CNN, BatchNorm and Dropout included: a seeded train/test
//! split, minibatches, adam, a progress bar, the loss and accuracy curves as a PNG,
//! and the trained state saved, reloaded and evaluated again.
//!
//! ```sh
//! cargo run --release -p adjoint-examples --example digits
//! ```

use adjoint::data;
use adjoint::prelude::*;
use adjoint::scope::ApplyOptions;
use adjoint::train::TrainState;
use ndarray::{Array1, Array2, Array4, Axis};
use std::io::BufReader;
use std::path::PathBuf;

/// Conv-BatchNorm-relu-pool, Conv-relu-pool, Dropout, Dense-relu-Dense.
struct Cnn;

#[differentiable]
impl Cnn {
    fn call(&self, cx: &mut Scope, x: &Array4<f32>, train: bool) -> Array2<f32> {
        let x = nn::Conv::new(16, [3, 3]).call(cx, x);
        let x = nn::BatchNorm::new()
            .use_running_average(!train)
            .momentum(0.9)
            .call(cx, &x);
        let x = nn::avg_pool(&nn::relu(&x), [2, 2], [2, 2], nn::Padding::Valid);
        let x = nn::relu(&nn::Conv::new(32, [3, 3]).call(cx, &x));
        let x = nn::avg_pool(&x, [2, 2], [2, 2], nn::Padding::Valid);
        let n = x.shape()[0];
        let x = x.into_shape_with_order((n, 128)).unwrap();
        let x = nn::Dropout::new(0.1).deterministic(!train).call(cx, &x);
        let x = nn::relu(&nn::Dense::new(64).call(cx, &x));
        nn::Dense::new(10).call(cx, &x)
    }
}

/// The images (pixels scaled to [0, 1], NHWC) and labels of `digits.csv.gz`.
fn load_digits() -> (Array4<f32>, Array1<usize>) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/digits.csv.gz");
    let file = std::fs::File::open(&path).expect("examples/data/digits.csv.gz");
    let table = data::read_csv(BufReader::new(flate2::read::GzDecoder::new(file))).unwrap();
    let images = table
        .slice(ndarray::s![.., ..64])
        .mapv(|v| (v / 16.0) as f32);
    let images = images
        .into_shape_with_order((table.nrows(), 8, 8, 1))
        .unwrap();
    (images, table.column(64).mapv(|v| v as usize))
}

/// The fraction of `indices` the model labels right.
fn accuracy(state_vars: &Variables, x: &Array4<f32>, y: &Array1<usize>, indices: &[usize]) -> f64 {
    let logits = Cnn
        .apply(state_vars, &x.select(Axis(0), indices), false)
        .unwrap();
    let right = logits
        .outer_iter()
        .zip(indices)
        .filter(|(row, i)| {
            let best = row
                .iter()
                .enumerate()
                .fold(0, |b, (k, &v)| if v > row[b] { k } else { b });
            best == y[**i]
        })
        .count();
    right as f64 / indices.len() as f64
}

fn main() {
    let started = std::time::Instant::now();
    let (x, y) = load_digits();
    let (train, test) = data::train_test_split(x.shape()[0], 0.2, 0);
    let vars = Cnn.init(0, &x.select(Axis(0), &train[..2]), true).unwrap();
    let mut state = TrainState::create(vars, optim::adam(3e-3));
    let epochs = 30;
    let bar = indicatif::ProgressBar::new(epochs);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} epoch {pos}/{len} {msg}").unwrap(),
    );
    let mut curve = Vec::new();

    for epoch in 0..epochs {
        let mut total = 0.0;
        for batch in data::batches(&data::shuffled(&train, epoch), 32) {
            let (xb, yb) = (x.select(Axis(0), batch), y.select(Axis(0), batch));
            let opts = ApplyOptions::new()
                .mutable(["batch_stats"])
                .rng("dropout", state.step);
            let collections = state.collections.clone();
            let ((loss, updated), grads) = value_and_grad!(
                |params: &Variables| {
                    let vars = params.merge(&collections);
                    let (logits, updated) = Cnn.apply_with(&vars, &opts, &xb, true).unwrap();
                    let loss = losses::softmax_cross_entropy_with_integer_labels(&logits, &yb);
                    (loss.mean().unwrap(), updated)
                },
                has_aux
            )(&state.params);
            state.apply_gradients(grads).unwrap();
            state.update_collections(&updated);
            total += loss as f64 * batch.len() as f64;
        }
        let (loss, acc) = (
            total / train.len() as f64,
            accuracy(&state.variables(), &x, &y, &test),
        );
        curve.push((loss, acc));
        bar.set_message(format!("loss {loss:.4}  test accuracy {:.2}%", 100.0 * acc));
        bar.inc(1);
    }
    bar.finish();

    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/digits");
    std::fs::create_dir_all(&out).unwrap();
    let out = out.canonicalize().unwrap();
    let png = out.join("curve.png");
    plot(&curve, &png);
    let ckpt = out.join("digits.safetensors");
    state.save(&ckpt).unwrap();
    let acc = accuracy(&state.variables(), &x, &y, &test);

    // A fresh state, restored from the file, evaluates the same.
    let vars = Cnn.init(1, &x.select(Axis(0), &train[..2]), true).unwrap();
    let mut restored = TrainState::create(vars, optim::adam(3e-3));
    restored.load(&ckpt).unwrap();
    let restored_acc = accuracy(&restored.variables(), &x, &y, &test);
    println!(
        "test accuracy {:.2}% ({} of {} held out), restored from {}: {:.2}%",
        100.0 * acc,
        (acc * test.len() as f64).round(),
        test.len(),
        ckpt.display(),
        100.0 * restored_acc,
    );
    println!(
        "curves: {}; {:.1} s",
        png.display(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(acc, restored_acc, "the restored state evaluates the same");
}

/// The training loss and the test accuracy by epoch, as a PNG.
fn plot(curve: &[(f64, f64)], path: &std::path::Path) {
    use plotters::prelude::*;
    let font: &'static [u8] = include_bytes!("data/DejaVuSansMono.ttf");
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| "the font")
        .unwrap();
    let root = BitMapBackend::new(path, (800, 400)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    let (left, right) = root.split_horizontally(400);
    let n = curve.len() as f64;
    let max_loss = curve.iter().map(|c| c.0).fold(0.0, f64::max);
    for (area, title, ys, top) in [
        (
            &left,
            "training loss",
            curve.iter().map(|c| c.0).collect::<Vec<_>>(),
            max_loss * 1.05,
        ),
        (
            &right,
            "test accuracy",
            curve.iter().map(|c| c.1).collect(),
            1.0,
        ),
    ] {
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(45)
            .build_cartesian_2d(1.0..n, 0.0..top)
            .unwrap();
        chart.configure_mesh().x_desc("epoch").draw().unwrap();
        chart
            .draw_series(LineSeries::new(
                ys.iter().enumerate().map(|(k, &v)| (k as f64 + 1.0, v)),
                &BLUE,
            ))
            .unwrap();
    }
    root.present().unwrap();
}
