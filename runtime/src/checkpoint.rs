//! Checkpoints: [`Variables`] (every collection, and optimizer states saved into
//! them) written and read as [safetensors](https://huggingface.co/docs/safetensors)
//! files, each leaf under its Flax path (`params/Conv_0/kernel`), bit for bit in
//! `f32`, `f64` and `i64`; and Flax's own msgpack format
//! (`flax.serialization.to_bytes` / `from_bytes`), read and written, so that
//! checkpoints move between Flax and Rust.
//!
//! Every read is validated: bad bytes, unsupported element types and leaves whose
//! data does not fit their shape are typed errors naming the path, never a panic.
//! [`restore`] then checks a loaded tree against the one a model builds (its
//! `init`): missing and extra paths, other shapes and element types.
//!
//! ```
//! use adjoint::checkpoint;
//! use adjoint::prelude::*;
//!
//! let x = ndarray::Array2::<f32>::ones((2, 3));
//! let vars = nn::Dense::new(4).init(0, &x).unwrap();
//! let bytes = checkpoint::to_safetensors(&vars).unwrap();
//! let back = checkpoint::from_safetensors(&bytes).unwrap();
//! assert_eq!(back, vars);
//! // Checked against what the model expects, as a load would be.
//! assert_eq!(checkpoint::restore(&vars, back).unwrap(), vars);
//! ```

use crate::variables::{Leaf, Variables};
use ndarray::{ArcArray, IxDyn};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Why a checkpoint could not be written, read or restored.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file could not be read or written.
    #[error("checkpoint `{path}`: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a checkpoint of the format.
    #[error("not a {format} checkpoint: {reason}")]
    Format {
        format: &'static str,
        reason: String,
    },
    /// A leaf of an element type this crate does not hold.
    #[error("`{path}` has element type {dtype}; checkpoints hold float32, float64 and integers")]
    Dtype { path: String, dtype: String },
    /// A leaf whose data does not fit its shape.
    #[error("`{path}`: {reason}")]
    Data { path: String, reason: String },
    /// A path the model has that the checkpoint lacks.
    #[error("`{path}` is missing from the checkpoint")]
    Missing { path: String },
    /// A path the checkpoint has that the model lacks.
    #[error("`{path}` is in the checkpoint but not in the model")]
    Unexpected { path: String },
    /// A leaf of another shape than the model's.
    #[error("`{path}` has shape {found:?} in the checkpoint, but the model's is {expected:?}")]
    Shape {
        path: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A leaf of another element type than the model's.
    #[error("`{path}` holds {found} values in the checkpoint, but the model's holds {expected}")]
    Type {
        path: String,
        expected: &'static str,
        found: &'static str,
    },
}

/// `collection/path`: a leaf's name in a checkpoint.
fn name(collection: &str, path: &str) -> String {
    if path.is_empty() {
        collection.to_string()
    } else {
        format!("{collection}/{path}")
    }
}

/// `collection` and `path` of a name (the first segment is the collection).
fn split(name: &str) -> (&str, &str) {
    name.split_once('/').unwrap_or((name, ""))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `tree` to the file `path` as safetensors.
///
/// # Errors
/// When the file cannot be written.
pub fn save(path: impl AsRef<Path>, tree: &Variables) -> Result<(), CheckpointError> {
    let path = path.as_ref();
    std::fs::write(path, to_safetensors(tree)?).map_err(io(path))
}

/// Reads the safetensors file `path` (see [`from_safetensors`]).
///
/// # Errors
/// When the file cannot be read or is not a valid checkpoint.
pub fn load(path: impl AsRef<Path>) -> Result<Variables, CheckpointError> {
    let path = path.as_ref();
    from_safetensors(&std::fs::read(path).map_err(io(path))?)
}

/// A leaf's safetensors element type, shape and little-endian bytes.
type Encoded = (safetensors::Dtype, Vec<usize>, Vec<u8>);

/// The little-endian bytes of a leaf, its safetensors element type and shape.
fn leaf_bytes(leaf: &Leaf) -> Encoded {
    fn bytes<T: Copy, const N: usize>(
        a: &ArcArray<T, IxDyn>,
        le: impl Fn(T) -> [u8; N],
    ) -> Vec<u8> {
        a.iter().flat_map(|&v| le(v)).collect()
    }
    match leaf {
        Leaf::F32(a) => (
            safetensors::Dtype::F32,
            a.shape().to_vec(),
            bytes(a, f32::to_le_bytes),
        ),
        Leaf::F64(a) => (
            safetensors::Dtype::F64,
            a.shape().to_vec(),
            bytes(a, f64::to_le_bytes),
        ),
        Leaf::I64(a) => (
            safetensors::Dtype::I64,
            a.shape().to_vec(),
            bytes(a, i64::to_le_bytes),
        ),
    }
}

/// `tree` as safetensors bytes: one tensor per leaf, named `collection/path`.
///
/// # Errors
/// Only if the safetensors writer refuses a tensor (it does not for these).
pub fn to_safetensors(tree: &Variables) -> Result<Vec<u8>, CheckpointError> {
    let leaves: Vec<(String, Encoded)> = tree
        .leaves()
        .map(|(c, p, l)| (name(c, p), leaf_bytes(l)))
        .collect();
    let mut views = Vec::with_capacity(leaves.len());
    for (n, (dtype, shape, data)) in &leaves {
        let view =
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).map_err(|e| {
                CheckpointError::Data {
                    path: n.clone(),
                    reason: e.to_string(),
                }
            })?;
        views.push((n.clone(), view));
    }
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "adjoint".to_string());
    safetensors::tensor::serialize(views, Some(meta)).map_err(|e| CheckpointError::Format {
        format: "safetensors",
        reason: e.to_string(),
    })
}

/// A leaf from little-endian bytes of element type `dtype` and `shape`.
fn leaf_from(
    path: &str,
    dtype: &str,
    shape: &[usize],
    data: &[u8],
) -> Result<Leaf, CheckpointError> {
    let count: usize = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| CheckpointError::Data {
            path: path.to_string(),
            reason: format!("shape {shape:?} overflows"),
        })?;
    fn read<T: Clone, const N: usize>(
        path: &str,
        shape: &[usize],
        data: &[u8],
        count: usize,
        from: impl Fn([u8; N]) -> T,
    ) -> Result<ArcArray<T, IxDyn>, CheckpointError> {
        if data.len() != count.saturating_mul(N) {
            return Err(CheckpointError::Data {
                path: path.to_string(),
                reason: format!(
                    "{} bytes of data for shape {shape:?} ({count} elements of {N} bytes)",
                    data.len()
                ),
            });
        }
        let values: Vec<T> = data
            .chunks_exact(N)
            .map(|c| from(c.try_into().unwrap_or([0; N])))
            .collect();
        ndarray::Array::from_shape_vec(IxDyn(shape), values)
            .map(|a| a.into_shared())
            .map_err(|e| CheckpointError::Data {
                path: path.to_string(),
                reason: e.to_string(),
            })
    }
    Ok(match dtype {
        "float32" | "F32" => Leaf::F32(read(path, shape, data, count, f32::from_le_bytes)?),
        "float64" | "F64" => Leaf::F64(read(path, shape, data, count, f64::from_le_bytes)?),
        "int64" | "I64" => Leaf::I64(read(path, shape, data, count, i64::from_le_bytes)?),
        "int32" | "I32" => Leaf::I64(
            read(path, shape, data, count, i32::from_le_bytes)?
                .mapv(i64::from)
                .into_shared(),
        ),
        other => {
            return Err(CheckpointError::Dtype {
                path: path.to_string(),
                dtype: other.to_string(),
            });
        }
    })
}

/// The tree of safetensors bytes written by [`to_safetensors`] (or any
/// safetensors file of float32, float64, int32 or int64 tensors named
/// `collection/path`).
///
/// # Errors
/// [`CheckpointError::Format`] for bytes that are not safetensors,
/// [`CheckpointError::Dtype`] for another element type, naming the tensor.
pub fn from_safetensors(bytes: &[u8]) -> Result<Variables, CheckpointError> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| CheckpointError::Format {
        format: "safetensors",
        reason: e.to_string(),
    })?;
    let mut tree = Variables::new();
    for (n, view) in st.tensors() {
        let dtype = format!("{:?}", view.dtype());
        let leaf = leaf_from(&n, &dtype, view.shape(), view.data())?;
        let (c, p) = split(&n);
        tree.insert(c, p, leaf).map_err(|e| CheckpointError::Data {
            path: n.clone(),
            reason: e.to_string(),
        })?;
    }
    Ok(tree)
}

/// `loaded` checked against `template` (what the model's `init` builds): the same
/// collections, paths, shapes and element types, or an error naming the first
/// difference. Returns `loaded`.
///
/// # Errors
/// [`CheckpointError::Missing`], [`CheckpointError::Unexpected`],
/// [`CheckpointError::Shape`] or [`CheckpointError::Type`], naming the path.
pub fn restore(template: &Variables, loaded: Variables) -> Result<Variables, CheckpointError> {
    for (c, p, want) in template.leaves() {
        let path = name(c, p);
        let got = loaded
            .get(c, p)
            .ok_or_else(|| CheckpointError::Missing { path: path.clone() })?;
        if got.shape() != want.shape() {
            return Err(CheckpointError::Shape {
                path,
                expected: want.shape().to_vec(),
                found: got.shape().to_vec(),
            });
        }
        if got.kind() != want.kind() {
            return Err(CheckpointError::Type {
                path,
                expected: want.kind(),
                found: got.kind(),
            });
        }
    }
    if let Some((c, p, _)) = loaded
        .leaves()
        .find(|(c, p, _)| template.get(c, p).is_none())
    {
        return Err(CheckpointError::Unexpected { path: name(c, p) });
    }
    Ok(loaded)
}

// ----- Flax's msgpack -----

/// Flax's msgpack extension type of an ndarray (`_MsgpackExtType.ndarray`).
const EXT_NDARRAY: i8 = 1;
/// Flax's msgpack extension type of a numpy scalar.
const EXT_NPSCALAR: i8 = 3;
/// How deep a Flax tree may nest.
const MAX_DEPTH: usize = 256;

fn msgpack_error(reason: impl Into<String>) -> CheckpointError {
    CheckpointError::Format {
        format: "Flax msgpack",
        reason: reason.into(),
    }
}

/// The tree of a Flax checkpoint (`flax.serialization.to_bytes(variables)`, or
/// `msgpack_serialize`): its top-level keys are the collections, the nested keys
/// below them the paths. Arrays of float32, float64, int32 and int64, numpy
/// scalars, plain numbers and Flax's chunked arrays are read.
///
/// ```
/// // Flax's bytes for {"params": {"w": np.float64(2.0)}}.
/// let bytes = adjoint::checkpoint::to_flax_msgpack(
///     &adjoint::Variables::new().with("params", "w", 2.0).unwrap()).unwrap();
/// let tree = adjoint::checkpoint::from_flax_msgpack(&bytes).unwrap();
/// assert_eq!(tree.to_string(), r#"{"params": {"w": 2.0}}"#);
/// ```
///
/// # Errors
/// [`CheckpointError::Format`] for bytes that are not such a tree (naming what
/// was found), [`CheckpointError::Dtype`] or [`CheckpointError::Data`] for a
/// leaf, naming its path.
pub fn from_flax_msgpack(bytes: &[u8]) -> Result<Variables, CheckpointError> {
    let mut rd = bytes;
    let value = rmpv::decode::read_value_with_max_depth(&mut rd, MAX_DEPTH)
        .map_err(|e| msgpack_error(e.to_string()))?;
    if !rd.is_empty() {
        return Err(msgpack_error(format!("{} bytes after the tree", rd.len())));
    }
    let rmpv::Value::Map(top) = value else {
        return Err(msgpack_error("the top level is not a map of collections"));
    };
    let mut tree = Variables::new();
    for (k, v) in top {
        let collection = key(&k, "")?;
        let mut leaves = Vec::new();
        flatten(&collection, "", v, &mut leaves)?;
        for (path, leaf) in leaves {
            tree.insert(&collection, &path, leaf)
                .map_err(|e| CheckpointError::Data {
                    path: name(&collection, &path),
                    reason: e.to_string(),
                })?;
        }
    }
    Ok(tree)
}

/// A map key as a string (Flax writes strings; lists' indices too).
fn key(k: &rmpv::Value, at: &str) -> Result<String, CheckpointError> {
    match k {
        rmpv::Value::String(s) => s
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| msgpack_error(format!("a key under `{at}` is not UTF-8"))),
        rmpv::Value::Integer(i) => Ok(i.to_string()),
        other => Err(msgpack_error(format!(
            "a key under `{at}` is {other}, not a string"
        ))),
    }
}

/// The leaves of a Flax subtree at `collection/prefix`.
fn flatten(
    collection: &str,
    prefix: &str,
    v: rmpv::Value,
    out: &mut Vec<(String, Leaf)>,
) -> Result<(), CheckpointError> {
    let here = name(collection, prefix);
    match v {
        rmpv::Value::Map(entries) => {
            if entries
                .iter()
                .any(|(k, _)| k.as_str() == Some("__msgpack_chunked_array__"))
            {
                out.push((prefix.to_string(), unchunk(&here, entries)?));
                return Ok(());
            }
            for (k, child) in entries {
                let k = key(&k, &here)?;
                let path = if prefix.is_empty() {
                    k
                } else {
                    format!("{prefix}/{k}")
                };
                flatten(collection, &path, child, out)?;
            }
            Ok(())
        }
        rmpv::Value::Ext(EXT_NDARRAY | EXT_NPSCALAR, data) => {
            out.push((prefix.to_string(), ndarray_leaf(&here, &data)?));
            Ok(())
        }
        rmpv::Value::F64(x) => {
            out.push((
                prefix.to_string(),
                Leaf::F64(ArcArray::from_elem(IxDyn(&[]), x)),
            ));
            Ok(())
        }
        rmpv::Value::F32(x) => {
            out.push((
                prefix.to_string(),
                Leaf::F32(ArcArray::from_elem(IxDyn(&[]), x)),
            ));
            Ok(())
        }
        rmpv::Value::Integer(i) => {
            let x = i
                .as_i64()
                .ok_or_else(|| msgpack_error(format!("`{here}` is an integer beyond i64")))?;
            out.push((
                prefix.to_string(),
                Leaf::I64(ArcArray::from_elem(IxDyn(&[]), x)),
            ));
            Ok(())
        }
        other => Err(msgpack_error(format!(
            "`{here}` is {}, not an array or a map",
            kind_of(&other)
        ))),
    }
}

fn kind_of(v: &rmpv::Value) -> &'static str {
    match v {
        rmpv::Value::Nil => "nil",
        rmpv::Value::Boolean(_) => "a boolean",
        rmpv::Value::String(_) => "a string",
        rmpv::Value::Binary(_) => "binary data",
        rmpv::Value::Array(_) => "a list",
        rmpv::Value::Ext(..) => "an unknown extension",
        _ => "a value",
    }
}

/// Flax's ndarray payload: msgpack of `(shape, dtype name, C-order bytes)`.
fn ndarray_leaf(path: &str, data: &[u8]) -> Result<Leaf, CheckpointError> {
    let bad = |what: &str| CheckpointError::Data {
        path: path.to_string(),
        reason: format!("an array's encoding: {what}"),
    };
    let mut rd = data;
    let v =
        rmpv::decode::read_value_with_max_depth(&mut rd, 16).map_err(|e| bad(&e.to_string()))?;
    let rmpv::Value::Array(parts) = v else {
        return Err(bad("not (shape, dtype, data)"));
    };
    let [shape, dtype, buffer] = parts.as_slice() else {
        return Err(bad("not (shape, dtype, data)"));
    };
    let rmpv::Value::Array(dims) = shape else {
        return Err(bad("the shape is not a list"));
    };
    let shape = dims
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| bad("the shape is not a list of sizes"))?;
    let dtype = match dtype {
        rmpv::Value::String(s) => s.as_str().unwrap_or("").to_string(),
        rmpv::Value::Binary(b) => String::from_utf8_lossy(b).into_owned(),
        _ => return Err(bad("the element type is not a name")),
    };
    let rmpv::Value::Binary(bytes) = buffer else {
        return Err(bad("the data are not bytes"));
    };
    // numpy names little-endian types plainly; big-endian checkpoints are not read.
    leaf_from(path, &dtype, &shape, bytes)
}

/// Flax's chunked form of a large array: `{shape: {"0": .., ..}, chunks: {"0": ..}}`.
fn unchunk(path: &str, entries: Vec<(rmpv::Value, rmpv::Value)>) -> Result<Leaf, CheckpointError> {
    let bad = |what: &str| CheckpointError::Data {
        path: path.to_string(),
        reason: format!("a chunked array: {what}"),
    };
    let field = |name: &str| {
        entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(name))
            .map(|(_, v)| v.clone())
    };
    let indexed = |v: rmpv::Value| -> Result<Vec<rmpv::Value>, CheckpointError> {
        let rmpv::Value::Map(m) = v else {
            return Err(bad("not an indexed map"));
        };
        let mut items: BTreeMap<usize, rmpv::Value> = BTreeMap::new();
        for (k, v) in m {
            let i = k
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad("an index that is not a number"))?;
            items.insert(i, v);
        }
        Ok(items.into_values().collect())
    };
    let shape: Vec<usize> = indexed(field("shape").ok_or_else(|| bad("no shape"))?)?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<_>>()
        .ok_or_else(|| bad("the shape is not a list of sizes"))?;
    let mut flat: Option<Leaf> = None;
    let mut values: Vec<f64> = Vec::new();
    let mut ints: Vec<i64> = Vec::new();
    for chunk in indexed(field("chunks").ok_or_else(|| bad("no chunks"))?)? {
        let rmpv::Value::Ext(EXT_NDARRAY, data) = chunk else {
            return Err(bad("a chunk that is not an array"));
        };
        let leaf = ndarray_leaf(path, &data)?;
        match &leaf {
            Leaf::I64(a) => ints.extend(a.iter()),
            other => values.extend(other.to_f64_vec()),
        }
        flat.get_or_insert(leaf);
    }
    let shaped = |n: usize| -> Result<IxDyn, CheckpointError> {
        (shape.iter().product::<usize>() == n)
            .then(|| IxDyn(&shape))
            .ok_or_else(|| bad("the chunks do not fill the shape"))
    };
    Ok(match flat {
        Some(Leaf::F32(_)) => Leaf::F32(
            ndarray::Array::from_shape_vec(
                shaped(values.len())?,
                values.iter().map(|&v| v as f32).collect(),
            )
            .map_err(|e| bad(&e.to_string()))?
            .into_shared(),
        ),
        Some(Leaf::I64(_)) => Leaf::I64(
            ndarray::Array::from_shape_vec(shaped(ints.len())?, ints)
                .map_err(|e| bad(&e.to_string()))?
                .into_shared(),
        ),
        _ => Leaf::F64(
            ndarray::Array::from_shape_vec(shaped(values.len())?, values)
                .map_err(|e| bad(&e.to_string()))?
                .into_shared(),
        ),
    })
}

/// `tree` as Flax's msgpack bytes (what `flax.serialization.to_bytes` writes, and
/// `from_bytes` / `msgpack_restore` read): nested maps from the collections and
/// paths, each leaf an ndarray.
///
/// # Errors
/// When two paths clash (a leaf where another path needs a map).
pub fn to_flax_msgpack(tree: &Variables) -> Result<Vec<u8>, CheckpointError> {
    // The nested maps, built from the paths.
    enum Node {
        Leaf(rmpv::Value),
        Map(BTreeMap<String, Node>),
    }
    fn insert(
        node: &mut BTreeMap<String, Node>,
        keys: &[&str],
        leaf: rmpv::Value,
        full: &str,
    ) -> Result<(), CheckpointError> {
        let clash = || CheckpointError::Data {
            path: full.to_string(),
            reason: "a leaf where another path has a subtree".into(),
        };
        match keys {
            [] => Err(clash()),
            [last] => match node.insert(last.to_string(), Node::Leaf(leaf)) {
                Some(_) => Err(clash()),
                None => Ok(()),
            },
            [first, rest @ ..] => match node
                .entry(first.to_string())
                .or_insert_with(|| Node::Map(BTreeMap::new()))
            {
                Node::Map(m) => insert(m, rest, leaf, full),
                Node::Leaf(_) => Err(clash()),
            },
        }
    }
    fn value(node: Node) -> rmpv::Value {
        match node {
            Node::Leaf(v) => v,
            Node::Map(m) => rmpv::Value::Map(
                m.into_iter()
                    .map(|(k, v)| (rmpv::Value::from(k), value(v)))
                    .collect(),
            ),
        }
    }
    let mut root = BTreeMap::new();
    for (c, p, leaf) in tree.leaves() {
        let (_, shape, data) = leaf_bytes(leaf);
        let dtype = match leaf {
            Leaf::F32(_) => "float32",
            Leaf::F64(_) => "float64",
            Leaf::I64(_) => "int64",
        };
        let payload = rmpv::Value::Array(vec![
            rmpv::Value::Array(shape.iter().map(|&d| rmpv::Value::from(d as u64)).collect()),
            rmpv::Value::from(dtype),
            rmpv::Value::Binary(data),
        ]);
        let mut buf = Vec::new();
        rmpv::encode::write_value(&mut buf, &payload).map_err(|e| msgpack_error(e.to_string()))?;
        let mut keys = vec![c];
        keys.extend(p.split('/').filter(|s| !s.is_empty()));
        insert(
            &mut root,
            &keys,
            rmpv::Value::Ext(EXT_NDARRAY, buf),
            &name(c, p),
        )?;
    }
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &value(Node::Map(root)))
        .map_err(|e| msgpack_error(e.to_string()))?;
    Ok(out)
}
