//! A training state in the spirit of Flax's `flax.training.train_state.TrainState`:
//! the step, the params, the optimizer and its state, and the model's other
//! collections (`batch_stats`), with `apply_gradients` and checkpoints.
//!
//! ```
//! use adjoint::prelude::*;
//! use adjoint::train::TrainState;
//! use ndarray::{Array2, array};
//!
//! let (x, y) = (array![[1.0, 2.0], [3.0, -1.0]], array![[1.0], [0.0]]);
//! let model = nn::Dense::new(1);
//! let mut state = TrainState::create(model.init(0, &x).unwrap(), optim::adam(0.1));
//! for _ in 0..300 {
//!     let grads = grad!(|p: &Variables| {
//!         let r = model.apply(p, &x).unwrap() - &y;
//!         (&r * &r).mean().unwrap()
//!     })(&state.params);
//!     state.apply_gradients(grads).unwrap();
//! }
//! assert_eq!(state.step, 300);
//! let r = model.apply(&state.params, &x).unwrap() - &y;
//! assert!((&r * &r).mean().unwrap() < 1e-3);
//! ```

use crate::checkpoint::{self, CheckpointError};
use crate::optim::{GradientTransformation, OptState};
use crate::scope::ScopeError;
use crate::variables::{Leaf, Variables};
use ndarray::{ArcArray, IxDyn};
use std::path::Path;

/// The state of a training run (see the [module](self)).
#[derive(Clone, Debug)]
pub struct TrainState<T: GradientTransformation> {
    /// Updates applied so far.
    pub step: u64,
    /// The `params` collection.
    pub params: Variables,
    /// The model's other collections (`batch_stats`, ...), updated by the caller
    /// with what a mutable `apply` returns ([`TrainState::update_collections`]).
    pub collections: Variables,
    /// The optimizer.
    pub tx: T,
    /// Its state.
    pub opt_state: T::State,
}

impl<T: GradientTransformation> TrainState<T> {
    /// The state of a model's `variables` (its `init`) before the first step: the
    /// `params` collection is optimized with `tx`, the others kept beside it.
    pub fn create(variables: Variables, tx: T) -> Self {
        let params = variables.only(&["params"]);
        let others: Vec<&str> = variables.collections().filter(|c| *c != "params").collect();
        let collections = variables.only(&others);
        let opt_state = tx.init(&params);
        TrainState {
            step: 0,
            params,
            collections,
            tx,
            opt_state,
        }
    }

    /// One optimizer step with `grads` (a tree shaped like the params): Flax's
    /// `state.apply_gradients(grads=grads)`.
    ///
    /// # Errors
    /// When `grads` is not shaped like the params (naming the first path that
    /// differs), or carries an error of its own (an incomplete gradient).
    pub fn apply_gradients(&mut self, grads: Variables) -> Result<(), ScopeError> {
        if let Some(e) = grads.error() {
            return Err(e);
        }
        let updates = self.tx.update(grads, &mut self.opt_state, &self.params)?;
        // `apply_updates`, in the params' own buffers.
        self.params.add_assign(&updates)?;
        self.step += 1;
        Ok(())
    }

    /// Every collection: the params and the others, what `apply` takes.
    pub fn variables(&self) -> Variables {
        self.params.merge(&self.collections)
    }

    /// Replaces the collections a mutable `apply` updated (`batch_stats`).
    pub fn update_collections(&mut self, updated: &Variables) {
        self.collections = self.collections.merge(updated);
    }

    /// The state as one tree: every collection, the optimizer's state under
    /// `opt_state/..`, the step as `train/step`.
    pub fn to_tree(&self) -> Variables {
        let mut tree = self.variables();
        self.opt_state.save("opt_state", "", &mut tree);
        let step = Leaf::I64(ArcArray::from_elem(IxDyn(&[]), self.step as i64));
        tree.insert("train", "step", step)
            .unwrap_or_else(|_| unreachable!("a fresh collection"));
        tree
    }

    /// Writes the state to a safetensors file (see [`TrainState::to_tree`]).
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), CheckpointError> {
        checkpoint::save(path, &self.to_tree())
    }

    /// Reads a state [`TrainState::save`] wrote into this one, checked against it:
    /// the same paths, shapes and element types.
    ///
    /// # Errors
    /// When the file cannot be read or does not match this state.
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<(), CheckpointError> {
        let tree = checkpoint::restore(&self.to_tree(), checkpoint::load(path)?)?;
        self.params = tree.only(&["params"]);
        let others: Vec<&str> = tree
            .collections()
            .filter(|c| !["params", "opt_state", "train"].contains(c))
            .collect();
        self.collections = tree.only(&others);
        self.opt_state
            .load("opt_state", "", &tree)
            .map_err(|e| CheckpointError::Data {
                path: "opt_state".into(),
                reason: e.to_string(),
            })?;
        self.step = match tree.get("train", "step") {
            Some(Leaf::I64(a)) => a.iter().next().map_or(0, |&s| s.max(0) as u64),
            _ => 0,
        };
        Ok(())
    }
}
