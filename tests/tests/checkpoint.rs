//! Checkpoints: a real Flax checkpoint (`reference/flax_checkpoint.msgpack`, written
//! by `flax.serialization.to_bytes`) restored to its tree and its model's output;
//! bit-exact safetensors and msgpack round trips in f32, f64 and i64; every kind of
//! bad file a typed error naming what is wrong; and thousands of mutated files read
//! without a panic.

use adjoint::checkpoint::{self, CheckpointError};
use adjoint::optim::{self, GradientTransformation, OptState};
use adjoint::prelude::*;
use adjoint_tests::{array, assert_close, reference};
use ndarray::{Array2, ArrayD};
use rand::{Rng, SeedableRng};

fn flax_bytes() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/reference/flax_checkpoint.msgpack"
    ))
    .unwrap()
}

/// Flax's `Dense(4) -> BatchNorm(use_running_average=True) -> relu -> Dense(2,
/// name='head')` (the checkpoint's variables are float64).
struct Ckpt;

#[differentiable]
impl Ckpt {
    fn call(&self, cx: &mut Scope, x: &Array2<f64>) -> Array2<f64> {
        let h = nn::Dense::new(4).call(cx, x);
        let h = nn::BatchNorm::new().use_running_average(true).call(cx, &h);
        let head = cx.bind_as("head", nn::Dense::new(2));
        head.call(cx, &nn::relu(&h))
    }
}

#[test]
fn a_flax_checkpoint_restores_to_its_tree_and_output() {
    let json = reference("flax_checkpoint.json", "variables");
    let tree = checkpoint::from_flax_msgpack(&flax_bytes()).unwrap();
    let x: Array2<f64> = array(&reference("flax_checkpoint.json", "input"))
        .into_dimensionality()
        .unwrap();
    // The tree Flax wrote is the one our model builds, leaf for leaf.
    let template = Ckpt.init(0, &x).unwrap();
    let tree = checkpoint::restore(&template, tree).unwrap();
    for (c, p, leaf) in tree.leaves() {
        assert_eq!(leaf.kind(), "f64", "{c}/{p}");
        let want = array(&json[c][p.split('/').next().unwrap()][p.split('/').nth(1).unwrap()]);
        let got = ArrayD::from_shape_vec(leaf.shape(), leaf.to_f64_vec()).unwrap();
        assert_eq!(got, want, "{c}/{p}");
    }
    let y = Ckpt.apply(&tree, &x).unwrap();
    let want = array(&reference("flax_checkpoint.json", "output"));
    assert_close("output", &y.into_dyn(), &want, 1e-12);
    // And back to Flax's format: the same tree.
    let again =
        checkpoint::from_flax_msgpack(&checkpoint::to_flax_msgpack(&tree).unwrap()).unwrap();
    assert_eq!(again, tree);
}

/// A tree with every kind of leaf, including values that round-trip only bit for
/// bit (subnormals, negative zero, infinities, NaN's payload).
fn every_kind() -> Variables {
    let f64s = ndarray::arr1(&[
        1.0 / 3.0,
        -0.0,
        f64::MIN_POSITIVE / 3.0,
        f64::INFINITY,
        f64::MAX,
    ]);
    let f32s = ndarray::arr2(&[[0.1f32, -1e-40], [f32::NEG_INFINITY, 3.5]]);
    Variables::new()
        .with("params", "Dense_0/kernel", f32s.into_shared())
        .unwrap()
        .with("params", "Dense_0/bias", f64s.into_shared())
        .unwrap()
        .with("batch_stats", "BatchNorm_0/mean", 0.25f32)
        .unwrap()
        .with("state", "step", 7i64)
        .unwrap()
}

fn bits(tree: &Variables) -> Vec<(String, String, Vec<u64>)> {
    tree.leaves()
        .map(|(c, p, l)| {
            let b = match l {
                adjoint::scope::Leaf::F32(a) => a.iter().map(|v| v.to_bits() as u64).collect(),
                adjoint::scope::Leaf::F64(a) => a.iter().map(|v| v.to_bits()).collect(),
                adjoint::scope::Leaf::I64(a) => a.iter().map(|&v| v as u64).collect(),
            };
            (c.to_string(), p.to_string(), b)
        })
        .collect()
}

#[test]
fn round_trips_are_bit_exact() {
    let tree = every_kind();
    let st = checkpoint::from_safetensors(&checkpoint::to_safetensors(&tree).unwrap()).unwrap();
    assert_eq!(bits(&st), bits(&tree));
    assert_eq!(st.shapes(), tree.shapes());
    let mp = checkpoint::from_flax_msgpack(&checkpoint::to_flax_msgpack(&tree).unwrap()).unwrap();
    assert_eq!(bits(&mp), bits(&tree));
    // Through a file, named as Flax names the leaves.
    let path =
        std::env::temp_dir().join(format!("adjoint-ckpt-{}.safetensors", std::process::id()));
    checkpoint::save(&path, &tree).unwrap();
    assert_eq!(bits(&checkpoint::load(&path).unwrap()), bits(&tree));
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn an_optimizer_state_is_saved_with_the_params() {
    let params = Variables::new()
        .with("params", "w", ndarray::arr1(&[1.0, -2.0]).into_shared())
        .unwrap();
    let tx = optim::adam(0.1);
    let mut state = tx.init(&params);
    tx.update(params.scale(2.0), &mut state, &params).unwrap();
    let mut saved = params.clone();
    state.save("opt_state", "", &mut saved);
    let names: Vec<String> = saved.leaves().map(|(c, p, _)| format!("{c}/{p}")).collect();
    assert_eq!(
        names,
        [
            "opt_state/0/count",
            "opt_state/0/mu/params/w",
            "opt_state/0/nu/params/w",
            "opt_state/1/count",
            "params/w"
        ]
    );
    let loaded =
        checkpoint::from_safetensors(&checkpoint::to_safetensors(&saved).unwrap()).unwrap();
    let mut fresh = tx.init(&params);
    fresh.load("opt_state", "", &loaded).unwrap();
    // The restored state takes the next step exactly as the original does.
    let a = tx.update(params.scale(2.0), &mut state, &params).unwrap();
    let b = tx.update(params.scale(2.0), &mut fresh, &params).unwrap();
    assert_eq!(a, b);
}

#[test]
fn bad_files_are_typed_errors() {
    let tree = every_kind();
    let good = checkpoint::to_safetensors(&tree).unwrap();
    let err = checkpoint::from_safetensors(&good[..good.len() - 3]).unwrap_err();
    assert!(
        matches!(
            err,
            CheckpointError::Format {
                format: "safetensors",
                ..
            }
        ),
        "{err}"
    );
    let err = checkpoint::from_flax_msgpack(b"\x81\xa6params\xc0").unwrap_err();
    assert_eq!(
        err.to_string(),
        "not a Flax msgpack checkpoint: `params` is nil, not an array or a map"
    );
    let err = checkpoint::load("/nonexistent/ckpt.safetensors").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("checkpoint `/nonexistent/ckpt.safetensors`: "),
        "{err}"
    );

    // Restoring into a model: missing and extra paths, other shapes and types.
    let template = every_kind();
    let missing = template.only(&["params", "batch_stats"]);
    assert_eq!(
        checkpoint::restore(&template, missing)
            .unwrap_err()
            .to_string(),
        "`state/step` is missing from the checkpoint"
    );
    let extra = template.clone().with("params", "head/kernel", 1.0).unwrap();
    assert_eq!(
        checkpoint::restore(&template, extra)
            .unwrap_err()
            .to_string(),
        "`params/head/kernel` is in the checkpoint but not in the model"
    );
    let reshaped = template.map_leaves(|_, p, l| {
        if p == "Dense_0/kernel" {
            adjoint::scope::Leaf::F32(ndarray::ArcArray::zeros(ndarray::IxDyn(&[4])))
        } else {
            l.clone()
        }
    });
    assert_eq!(
        checkpoint::restore(&template, reshaped)
            .unwrap_err()
            .to_string(),
        "`params/Dense_0/kernel` has shape [4] in the checkpoint, but the model's is [2, 2]"
    );
    let retyped = template.map_leaves(|_, p, l| {
        if p == "BatchNorm_0/mean" {
            adjoint::scope::Leaf::F64(ndarray::ArcArray::zeros(ndarray::IxDyn(&[])))
        } else {
            l.clone()
        }
    });
    assert_eq!(
        checkpoint::restore(&template, retyped)
            .unwrap_err()
            .to_string(),
        "`batch_stats/BatchNorm_0/mean` holds f64 values in the checkpoint, but the model's holds f32"
    );
}

/// Mutated files (truncated, bytes flipped or overwritten, random bytes) never
/// make a reader panic. `ADJOINT_CKPT_MUTANTS` sets the count (default 2,000 per
/// format).
#[test]
fn mutated_files_never_panic() {
    let n: usize = std::env::var("ADJOINT_CKPT_MUTANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let sources = [
        (
            "safetensors",
            checkpoint::to_safetensors(&every_kind()).unwrap(),
        ),
        ("msgpack", flax_bytes()),
        (
            "msgpack",
            checkpoint::to_flax_msgpack(&every_kind()).unwrap(),
        ),
    ];
    let (mut errors, mut read) = (0usize, 0usize);
    for (format, good) in &sources {
        for k in 0..n {
            let mut bytes = good.clone();
            match k % 4 {
                0 => bytes.truncate(rng.random_range(0..bytes.len())),
                1 => {
                    for _ in 0..rng.random_range(1..4) {
                        let i = rng.random_range(0..bytes.len());
                        bytes[i] ^= 1 << rng.random_range(0..8);
                    }
                }
                2 => {
                    let i = rng.random_range(0..bytes.len());
                    bytes[i] = rng.random();
                }
                _ => bytes = (0..rng.random_range(0..64)).map(|_| rng.random()).collect(),
            }
            let result = std::panic::catch_unwind(|| match *format {
                "safetensors" => checkpoint::from_safetensors(&bytes).map(|_| ()),
                _ => checkpoint::from_flax_msgpack(&bytes).map(|_| ()),
            });
            match result {
                Ok(Ok(())) => read += 1,
                Ok(Err(_)) => errors += 1,
                Err(_) => panic!("{format} mutant {k} panicked"),
            }
        }
    }
    eprintln!(
        "mutated checkpoints: {} files, {errors} typed errors, {read} still readable, 0 panics",
        errors + read
    );
}
