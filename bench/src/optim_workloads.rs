//! O1: one Adam step (optax's `adam`) over a 1M-parameter float32 tree, as a
//! training loop takes it (`TrainState::apply_gradients`), against the limit: one
//! fused loop over the parameters and both moments, in place.

use crate::Workload;
use crate::layer_workloads::pattern;
use adjoint::Variables;
use adjoint::optim;
use adjoint::train::TrainState;
use ndarray::ArrayD;
use std::hint::black_box;

/// An MLP's leaves, 784-1024-192 with biases: 1,000,640 parameters.
const LEAVES: [(&str, &[usize]); 4] = [
    ("Dense_0/kernel", &[784, 1024]),
    ("Dense_0/bias", &[1024]),
    ("Dense_1/kernel", &[1024, 192]),
    ("Dense_1/bias", &[192]),
];

const LEARNING_RATE: f64 = 1e-3;
const STEPS: usize = 3;

fn tree(seed: usize) -> Variables {
    LEAVES
        .iter()
        .enumerate()
        .try_fold(Variables::new(), |v, (k, (path, shape))| {
            v.with("params", path, pattern(shape, seed + k, 0.1))
        })
        .expect("O1 tree")
}

/// The leaves of `vars`, flattened, in `LEAVES` order.
fn flat(vars: &Variables) -> Vec<f32> {
    LEAVES
        .iter()
        .flat_map(|(path, _)| {
            let a: ArrayD<f32> = vars.read("params", path).expect("O1 leaf");
            a.into_iter()
        })
        .collect()
}

/// Adam by hand: the parameters and both moments updated in one pass.
struct FusedAdam {
    params: Vec<f32>,
    mu: Vec<f32>,
    nu: Vec<f32>,
    step: i32,
}

impl FusedAdam {
    fn new(params: Vec<f32>) -> Self {
        let n = params.len();
        FusedAdam {
            params,
            mu: vec![0.0; n],
            nu: vec![0.0; n],
            step: 0,
        }
    }

    fn step(&mut self, grads: &[f32]) {
        let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        self.step += 1;
        let c1 = 1.0 - 0.9f64.powi(self.step);
        let c2 = 1.0 - 0.999f64.powi(self.step);
        let (c1, c2, lr) = (c1 as f32, c2 as f32, LEARNING_RATE as f32);
        let moments = self.mu.iter_mut().zip(self.nu.iter_mut());
        for ((p, &g), (m, v)) in self.params.iter_mut().zip(grads).zip(moments) {
            *m = (1.0 - b1) * g + b1 * *m;
            *v = (1.0 - b2) * (g * g) + b2 * *v;
            *p -= lr * ((*m / c1) / ((*v / c2).sqrt() + eps));
        }
    }
}

pub fn o1() -> Workload {
    let (params, grads) = (tree(1), tree(11));
    // Both agree after a few steps, to float32's rounding of the same formulas.
    let mut state = TrainState::create(params.clone(), optim::adam(LEARNING_RATE));
    let mut fused = FusedAdam::new(flat(&params));
    let g = flat(&grads);
    for _ in 0..STEPS {
        state.apply_gradients(grads.clone()).expect("O1 step");
        fused.step(&g);
    }
    // Each weight moved by about the learning rate per step; the two moves agree to
    // float32's rounding of the weights (about 1e-8).
    let ours = flat(&state.params);
    let worst = ours
        .iter()
        .zip(&fused.params)
        .map(|(a, b)| f64::from((a - b).abs()))
        .fold(0.0, f64::max);
    let moved = LEARNING_RATE * STEPS as f64;
    assert!(
        worst < 1e-3 * moved,
        "O1: adam and the fused loop differ by {worst:.2e} after moving {moved:.0e}"
    );
    let checksums = vec![crate::checksum(&ndarray::Array1::from(ours))];
    let (ga, gh) = (grads.clone(), g);
    Workload {
        name: "O1 adam step (TrainState::apply_gradients), 1M f32 params in 4 leaves",
        key: "O1",
        checksums,
        tolerance: 1e-4,
        runs: 200,
        adjoint: Box::new(move || {
            // The step consumes its gradients, as after `grad!`: both sides copy them.
            state
                .apply_gradients(black_box(ga.clone()))
                .expect("O1 step");
            black_box(&state.params);
        }),
        hand: Some(Box::new(move || {
            let g = black_box(gh.clone());
            fused.step(&g);
            black_box(&fused.params);
        })),
        primal: None,
        candle: None,
        burn: None,
    }
}

pub fn all() -> Vec<Workload> {
    vec![o1()]
}
