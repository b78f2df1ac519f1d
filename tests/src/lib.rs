//! Helpers shared by the integration tests: the JAX/Flax reference results and
//! approximate comparison.

use ndarray::{ArrayD, IxDyn};
use serde_json::Value as Json;

/// One case of `reference/engine.json` or `reference/modules.json`.
pub fn reference(file: &str, case: &str) -> Json {
    let path = format!("{}/reference/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let all: Json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {path}: {e}"));
    all.get(case)
        .cloned()
        .unwrap_or_else(|| panic!("no case {case} in {file}"))
}

/// A nested JSON list (or number) as an array of the given shape.
pub fn array(value: &Json) -> ArrayD<f64> {
    fn flat(v: &Json, out: &mut Vec<f64>, shape: &mut Vec<usize>, depth: usize) {
        match v {
            Json::Array(items) => {
                if shape.len() == depth {
                    shape.push(items.len());
                }
                for i in items {
                    flat(i, out, shape, depth + 1);
                }
            }
            Json::Number(n) => out.push(n.as_f64().expect("a number")),
            Json::Bool(b) => out.push(if *b { 1.0 } else { 0.0 }),
            other => panic!("not a number: {other}"),
        }
    }
    let mut out = Vec::new();
    let mut shape = Vec::new();
    flat(value, &mut out, &mut shape, 0);
    ArrayD::from_shape_vec(IxDyn(&shape), out).expect("a rectangular list")
}

/// A Flax variables tree (`{"params": {"Dense_0": {"kernel": [[..]]}}}`) as
/// [`Variables`](adjoint::Variables): every leaf an `f64` array (scalars of shape `[]`).
pub fn variables(tree: &Json) -> adjoint::Variables {
    fn walk(v: &Json, collection: &str, path: &str, out: &mut adjoint::Variables) {
        match v {
            Json::Object(items) => {
                for (k, child) in items {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}/{k}")
                    };
                    walk(child, collection, &p, out);
                }
            }
            leaf => {
                let leaf = adjoint::scope::Stored::into_leaf(array(leaf));
                out.insert(collection, path, leaf).expect("a tree of names");
            }
        }
    }
    let mut out = adjoint::Variables::new();
    for (collection, tree) in tree.as_object().expect("collections") {
        walk(tree, collection, "", &mut out);
    }
    out
}

/// A Flax tree of the reference (`{"params": {"Bar_0": {"test": 0.5}}}`, or shapes)
/// written as [`Variables`](adjoint::Variables) prints itself, to compare with
/// `to_string()` and `shapes()`.
pub fn tree_text(tree: &Json) -> String {
    tree.to_string().replace(':', ": ").replace(',', ", ")
}

/// The input `name` of a case.
pub fn input(case: &Json, name: &str) -> ArrayD<f64> {
    array(&case["inputs"][name]["value"])
}

/// The reference gradient for input `name` of an engine case.
pub fn grad(case: &Json, name: &str) -> ArrayD<f64> {
    array(&case["grads"][name]["value"])
}

/// A JSON list as a vector.
pub fn vector(value: &Json) -> ndarray::Array1<f64> {
    array(value).into_dimensionality().expect("a vector")
}

/// A JSON list of lists as a matrix.
pub fn matrix(value: &Json) -> ndarray::Array2<f64> {
    array(value).into_dimensionality().expect("a matrix")
}

/// Asserts that the scalar `got` is within `rtol` of `want` (relative to `want`),
/// and prints both with the error.
pub fn assert_scalar_close(what: &str, got: f64, want: f64, rtol: f64) {
    let err = (got - want).abs() / want.abs().max(1e-300);
    println!("{what}: {got} (JAX {want}, relative error {err:.1e})");
    assert!(err <= rtol, "{what}: got {got}, want {want}");
}

/// Asserts `|a - b| <= rtol * max(|a|, |b|)` elementwise (with a tiny absolute floor
/// for exact zeros).
pub fn assert_close(what: &str, got: &ArrayD<f64>, want: &ArrayD<f64>, rtol: f64) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
        let tol = rtol * g.abs().max(w.abs()) + 1e-15;
        assert!(
            (g - w).abs() <= tol,
            "{what}[{i}]: got {g:e}, want {w:e} (rtol {rtol:e})"
        );
    }
}

/// The normwise relative error `max |a - b| / max |b|` between two arrays of one
/// shape (zero for two zero arrays): what a report prints. (Elementwise relative
/// errors say little for elements that are zero in exact arithmetic, which both
/// sides compute as round-off.)
pub fn max_rel_err(got: &ArrayD<f64>, want: &ArrayD<f64>) -> f64 {
    let scale = want.iter().fold(0.0f64, |m, w| m.max(w.abs()));
    let diff = got
        .iter()
        .zip(want.iter())
        .fold(0.0f64, |m, (g, w)| m.max((g - w).abs()));
    if scale == 0.0 { diff } else { diff / scale }
}

/// A scalar as a 0-dimensional array, for [`assert_close`].
pub fn scalar(v: f64) -> ArrayD<f64> {
    ArrayD::from_elem(IxDyn(&[]), v)
}

/// Asserts that `got` holds exactly the leaves of the Flax tree `want` (every
/// collection, path and shape), each within `rtol` as [`assert_close`]; returns the
/// tree's normwise relative error (the largest difference over the largest value of
/// the whole tree: a leaf that is zero in exact arithmetic, such as attention's key
/// bias gradient, is round-off on both sides).
pub fn assert_tree_close(what: &str, got: &adjoint::Variables, want: &Json, rtol: f64) -> f64 {
    let want = variables(want);
    assert_eq!(got.shapes(), want.shapes(), "{what}: the trees differ");
    let (mut diff, mut scale) = (0.0f64, 0.0f64);
    for collection in want.collections() {
        for (path, leaf) in want.iter(collection) {
            let g = got
                .get(collection, path)
                .unwrap_or_else(|| panic!("{what}: no {collection}/{path}"));
            let as_array = |l: &adjoint::scope::Leaf| {
                ArrayD::from_shape_vec(IxDyn(l.shape()), l.to_f64_vec()).expect("a leaf's shape")
            };
            let (g, w) = (as_array(g), as_array(leaf));
            assert_close(&format!("{what} {collection}/{path}"), &g, &w, rtol);
            for (g, w) in g.iter().zip(w.iter()) {
                diff = diff.max((g - w).abs());
                scale = scale.max(w.abs());
            }
        }
    }
    if scale == 0.0 { diff } else { diff / scale }
}
