//! optax's optimizers against `reference/optim.json` (real optax, from
//! `gen_layers.py`): each runs 6 steps from the same params with the same gradient
//! sequence, and the params after every step must match at 1e-12 relative.

use adjoint::optim::{self, GradientTransformation};
use adjoint::prelude::*;
use adjoint_tests::{assert_tree_close, reference};
use serde_json::{Value as Json, json};

const RTOL: f64 = 1e-12;

/// An optax tree (no collection level) as the `params` collection.
fn tree(t: &Json) -> Variables {
    adjoint_tests::variables(&json!({ "params": t }))
}

fn check<T: GradientTransformation>(name: &str, tx: T) {
    check_in("optim.json", name, tx, RTOL);
}

/// A trajectory of `file`'s case `name`, within `rtol`.
fn check_in<T: GradientTransformation>(file: &str, name: &str, tx: T, rtol: f64) {
    let inputs = reference("optim.json", "_inputs");
    let case = reference(file, name);
    let mut params = tree(&inputs["params"]);
    let mut state = tx.init(&params);
    let mut worst = 0.0f64;
    for (t, g) in inputs["grads"].as_array().unwrap().iter().enumerate() {
        let updates = tx.update(tree(g), &mut state, &params).unwrap();
        params = optim::apply_updates(&params, &updates).unwrap();
        let want = json!({ "params": case["trajectory"][t] });
        worst = worst.max(assert_tree_close(
            &format!("{name} step {t}"),
            &params,
            &want,
            rtol,
        ));
    }
    eprintln!("{name}: normwise relative error {worst:.1e}");
}

#[test]
fn optax_trajectories() {
    check("sgd", optim::sgd(0.1, None, false));
    check("sgd_momentum", optim::sgd(0.1, Some(0.9), false));
    check("sgd_nesterov", optim::sgd(0.1, Some(0.9), true));
    check("adam", optim::adam(0.01));
    check("adamw", optim::adamw(0.01, 0.1, None));
    check("rmsprop", optim::rmsprop(0.01));
    check("adagrad", optim::adagrad(0.1));
    check("lion", optim::lion(0.01));
    // Its schedule computes in float32, as optax's does (see optim::schedule).
    let sched = optim::warmup_cosine_decay_schedule(0.0, 0.05, 2, 6, 0.001, 1.0);
    check(
        "clip_then_adam_warmup_cosine",
        optim::chain((optim::clip_by_global_norm(1.0), optim::adam(sched.clone()))),
    );
    check_in(
        "optim_schedules.json",
        "adamw_warmup_cosine_decay_schedule",
        optim::adamw(sched, optim::cosine_decay_schedule(0.1, 4, 0.0, 1.0), None),
        RTOL,
    );
    let expo = optim::exponential_decay(0.1, 2, 0.5, 1, true, None);
    check_in(
        "optim_schedules.json",
        "sgd_momentum_exponential_decay",
        optim::sgd(expo, Some(0.9), false),
        RTOL,
    );
    check(
        "adamw_masked_decay",
        optim::adamw(0.01, 0.1, Some(optim::matrices_only())),
    );
}

#[test]
fn schedules_match_optax() {
    let want = reference("optim_schedules.json", "schedules");
    let cases = [
        ("constant", optim::constant_schedule(0.3)),
        ("linear", optim::linear_schedule(1.0, 0.1, 5, 2)),
        (
            "polynomial",
            optim::polynomial_schedule(1.0, 0.1, 2.0, 5, 1),
        ),
        (
            "piecewise_constant",
            optim::piecewise_constant_schedule(1.0, &[(2, 0.5), (5, 0.1)]),
        ),
        (
            "exponential_decay",
            optim::exponential_decay(1.0, 3, 0.7, 1, false, None),
        ),
        (
            "exponential_decay_staircase_end",
            optim::exponential_decay(1.0, 2, 0.5, 0, true, Some(0.2)),
        ),
        (
            "cosine_decay",
            optim::cosine_decay_schedule(1.0, 7, 0.1, 2.0),
        ),
        (
            "warmup_cosine_decay",
            optim::warmup_cosine_decay_schedule(0.0, 0.05, 2, 6, 0.001, 1.0),
        ),
    ];
    // Bit for bit: the same operations in the same precision (float32 where
    // optax's int32 counts make it float32).
    for (name, schedule) in cases {
        for (step, w) in want[name]["values"].as_array().unwrap().iter().enumerate() {
            let (got, w) = (schedule.at(step as u64), w.as_f64().unwrap());
            assert_eq!(got, w, "{name} at {step} ({})", want[name]["dtype"]);
        }
    }
}
