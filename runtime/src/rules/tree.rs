//! Rules on trees of variables: what a Flax training step does to its variables
//! before applying the model, `{'params': params, **state}` (`merge`) and
//! `variables['params']` (`only`). The cotangent of a tree is a tree; each
//! collection's cotangent goes back to the tree it came from.

use crate::value::Value;
use crate::variables::Variables;

/// `a.merge(&b)`: the collections of both trees (`b`'s win where both have one).
pub fn merge<X: Value<Primal = Variables>, Y: Value<Primal = Variables>>(
    a: &X,
    b: &Y,
) -> Variables {
    a.primal().merge(b.primal())
}

/// Pullback of [`merge`] for `a`: the cotangents of `a`'s collections that `b` did
/// not replace.
pub fn merge_pb_lhs<X: Value<Primal = Variables>, Y: Value<Primal = Variables>>(
    a: &X,
    b: &Y,
    ct: Variables,
) -> Variables {
    let theirs: Vec<&str> = b.primal().collections().collect();
    let mine: Vec<&str> = a
        .primal()
        .collections()
        .filter(|c| !theirs.contains(c))
        .collect();
    ct.only(&mine)
}

/// Pullback of [`merge`] for `b`: the cotangents of `b`'s collections.
pub fn merge_pb_rhs<Y: Value<Primal = Variables>>(b: &Y, ct: Variables) -> Variables {
    let theirs: Vec<&str> = b.primal().collections().collect();
    ct.only(&theirs)
}

/// `x.only(&["params"])`: the listed collections.
pub fn only<X: Value<Primal = Variables>>(x: &X, collections: &[&str]) -> Variables {
    x.primal().only(collections)
}

/// Pullback of [`only`]: the cotangent already holds only those collections.
pub fn only_pb(_collections: &[&str], ct: Variables) -> Variables {
    ct
}
