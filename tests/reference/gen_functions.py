"""Reference results for functions beyond layers.json, computed with JAX, Flax and
optax (float64): `nn.standardize`, `jax.nn.one_hot`, and optax losses on inputs
layers.json does not cover (logits of rank 3, integer labels counted from the end,
labels out of range, soft binary labels, Huber's default delta).

Each case gives its inputs, the value of `jnp.sum(f(inputs) * weights)` (weights of
the output's shape, so that every output element counts differently; `value`), the
raw output (`output`), and the gradient of the value with respect to the float
inputs (`grad`). Labels out of range give NaN, as optax does.

Run:  python gen_functions.py   (writes functions.json)
"""
import json
import jax
import jax.numpy as jnp
import flax.linen as nn
import optax

jax.config.update("jax_enable_x64", True)


def arr(*shape, seed, scale=1.0):
    n = 1
    for s in shape:
        n *= s
    vals = [(((i * 7919 + seed * 104729) % 1000) / 500.0 - 1.0) * scale for i in range(n)]
    return jnp.array(vals, dtype=jnp.float64).reshape(shape)


def nan_safe(v):
    return [None if jnp.isnan(x) else float(x) for x in jnp.ravel(v)]


CASES = {}


def case(name, f, x, note, **extra):
    out = f(x)
    w = arr(*out.shape, seed=len(CASES) + 50)
    value = lambda x: jnp.sum(f(x) * w)
    CASES[name] = {
        "note": note,
        "x": x.tolist(),
        "weights": w.tolist(),
        "output_shape": list(out.shape),
        "output": nan_safe(out),
        "value": nan_safe(value(x))[0],
        "grad": nan_safe(jax.grad(value)(x)),
        **extra,
    }


x2 = arr(3, 5, seed=1, scale=2.0)
x3 = arr(2, 3, 4, seed=2, scale=2.0)
case("standardize_2d", lambda x: nn.standardize(x), x2, "nn.standardize(x) over the last axis")
case("standardize_3d", lambda x: nn.standardize(x), x3, "nn.standardize(x) on rank 3")

logits3 = arr(2, 3, 4, seed=3, scale=2.0)
labels3 = jnp.array([[0, 3, 1], [2, 2, 0]])
case("xent_int_rank3", lambda l: optax.softmax_cross_entropy_with_integer_labels(l, labels3),
     logits3, "softmax_cross_entropy_with_integer_labels on (2, 3, 4) logits",
     labels=labels3.tolist())
labels_neg = jnp.array([[-1, 3, -4], [2, -2, 0]])
case("xent_int_negative", lambda l: optax.softmax_cross_entropy_with_integer_labels(l, labels_neg),
     logits3, "negative integer labels count from the end, as jnp indexing",
     labels=labels_neg.tolist())
labels_bad = jnp.array([[0, 4, 1], [2, -5, 0]])
case("xent_int_out_of_range", lambda l: optax.softmax_cross_entropy_with_integer_labels(l, labels_bad),
     logits3, "labels out of range give NaN", labels=labels_bad.tolist())
soft = jax.nn.softmax(arr(2, 3, 4, seed=4), axis=-1)
case("xent_rank3", lambda l: optax.softmax_cross_entropy(l, soft), logits3,
     "softmax_cross_entropy on (2, 3, 4) logits with soft labels", labels=soft.tolist())
soft_bin = jax.nn.sigmoid(arr(3, 5, seed=5, scale=3.0))
case("sigmoid_bce_soft", lambda l: optax.sigmoid_binary_cross_entropy(l, soft_bin), x2,
     "sigmoid_binary_cross_entropy with soft labels", labels=soft_bin.tolist())
targets = arr(3, 5, seed=6)
case("huber_default", lambda p: optax.huber_loss(p, targets), x2, "huber_loss, delta 1",
     targets=targets.tolist())
ids = jnp.array([[0, 2, 5], [4, -1, 1]])
CASES["one_hot"] = {"note": "jax.nn.one_hot(ids, 5): ids out of range give zero rows",
                    "ids": ids.tolist(), "output": jax.nn.one_hot(ids, 5).tolist()}
CASES["smooth_labels"] = {"note": "optax.smooth_labels(one_hot, 0.2)",
                          "labels": jax.nn.one_hot(jnp.array([0, 3]), 4).tolist(),
                          "output": optax.smooth_labels(jax.nn.one_hot(jnp.array([0, 3]), 4), 0.2).tolist()}

json.dump(CASES, open("functions.json", "w"), indent=1)
