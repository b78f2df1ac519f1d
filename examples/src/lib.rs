//! Runnable examples of adjoint: see the `[[example]]` targets.
