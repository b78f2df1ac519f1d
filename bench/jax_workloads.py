"""W1-W10 in JAX, `jit(value_and_grad)` (W8, W9: `jit(jvp(grad))`; W10: `jit(jvp)`), one thread, with the Rust bench's inputs: W1-W5 and W8 in
float64, the layer workloads W6 and W7 in float32 as Flax trains them.

Run by `cargo run --release --manifest-path bench/Cargo.toml` when `python3 -c "import jax"`
works (`pip install "jax[cpu]"`): the Rust side checks the gradients' checksums against
adjoint's, then asks for timing rounds in turn with its own implementations.
"""
import os

# One thread, as every Rust implementation runs. XLA's flag keeps Eigen's pool to one
# thread, but the CPU runtime still runs parts of a computation (W3's products) on
# other threads: unpinned, W3's gradient used 1.6 cores (CPU time 4.7 ms per 2.9 ms
# of wall time). Pinning the process to one CPU, before JAX starts its threads, makes
# it one core's worth of work like the others.
os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

jax.config.update("jax_enable_x64", True)


def pattern2(r, c, seed, scale):
    return jnp.array(
        [[((((i * c + j) * 7919 + seed * 104729) % 1000) / 500.0 - 1.0) * scale for j in range(c)] for i in range(r)],
        dtype=jnp.float64,
    )


def pattern1(n, seed, scale):
    return jnp.array([(((i * 7919 + seed * 104729) % 1000) / 500.0 - 1.0) * scale for i in range(n)], dtype=jnp.float64)


def pattern(shape, seed, scale):
    """The bench's pattern in float32, as `layer_workloads::pattern` makes it."""
    i = np.arange(int(np.prod(shape)), dtype=np.int64)
    v = (((i * 7919 + seed * 104729) % 1000) / 500.0 - 1.0) * scale
    return jnp.asarray(v.astype(np.float32).reshape(shape))


def rosenbrock(x):
    a = x[1:] - x[:-1] ** 2
    b = 1.0 - x[:-1]
    return jnp.sum(100.0 * a * a + b * b)


def mlp_tanh(w1, b1, w2, b2, w3, b3, x, t):
    h1 = jnp.tanh(x @ w1 + b1)
    h2 = jnp.tanh(h1 @ w2 + b2)
    d = h2 @ w3 + b3 - t
    return jnp.mean(d * d)


def mlp_xent(w1, b1, w2, b2, w3, b3, x, onehot):
    h1 = jax.nn.relu(x @ w1 + b1)
    h2 = jax.nn.relu(h1 @ w2 + b2)
    logp = jax.nn.log_softmax(h2 @ w3 + b3, axis=1)
    return -jnp.sum(logp * onehot) / x.shape[0]


def rnn(w, u, b, xs):
    h = jnp.zeros((xs.shape[1], w.shape[0]))

    def step(h, xt):
        return jnp.tanh(h @ w + xt @ u + b), None

    h, _ = jax.lax.scan(step, h, xs)
    return jnp.sum(h * h)


def rnn_hvp(w, u, b, xs, dw, du, db):
    """W8: `jvp(grad(rnn))`, the Hessian of W4's loss along `(dw, du, db)`; returned as
    `(gradient, H d)` so that it times like the value-and-gradient workloads."""
    return jax.jvp(lambda w, u, b: jax.grad(rnn, argnums=(0, 1, 2))(w, u, b, xs), (w, u, b), (dw, du, db))


def regressor_hvp(w1, b1, w2, b2, w3, b3, x, t, d1, e1, d2, e2, d3, e3):
    """W9: `jvp(grad(loss))` in a tanh MLP's parameters along `(d1, e1, ..)`, the loss
    the mean squared error of `Dense(64), tanh, Dense(64), tanh, Dense(1)` (the
    parameters as Flax's `params` leaves, in order); returned as `(gradient, H d)`."""

    def loss(w1, b1, w2, b2, w3, b3):
        h1 = jnp.tanh(x @ w1 + b1)
        h2 = jnp.tanh(h1 @ w2 + b2)
        d = h2 @ w3 + b3 - t
        return jnp.mean(d * d)

    return jax.jvp(jax.grad(loss, argnums=(0, 1, 2, 3, 4, 5)), (w1, b1, w2, b2, w3, b3), (d1, e1, d2, e2, d3, e3))


def regressor_jvp(w1, b1, w2, b2, w3, b3, x, dx):
    """W10: `jvp` of the W9 MLP's output in its input along `dx`, the parameters held;
    returned as `(output, (tangent,))`."""

    def out(x):
        h1 = jnp.tanh(x @ w1 + b1)
        h2 = jnp.tanh(h1 @ w2 + b2)
        return h2 @ w3 + b3

    y, dy = jax.jvp(out, (x,), (dx,))
    return y, (dy,)


def field(w1, b1, w2, b2, w3, b3, x):
    h1 = jnp.tanh(x @ w1 + b1)
    h2 = jnp.tanh(h1 @ w2 + b2)
    return jnp.sum(h2 @ w3 + b3)


def pinn(w1, b1, w2, b2, w3, b3, x):
    du = jax.grad(field, argnums=6)(w1, b1, w2, b2, w3, b3, x)
    r = du - jnp.cos(x)
    return jnp.mean(r * r)


def avg_pool(x):
    """Flax's `nn.avg_pool(x, (2, 2), strides=(2, 2))`."""
    return lax.reduce_window(x, 0.0, lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4.0


def conv(x, k, b):
    """Flax's `nn.Conv(features, (3, 3))`: NHWC, HWIO, 'SAME'."""
    return lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) + b


def mnist_cnn(k1, b1, k2, b2, w3, b3, w4, b4, x, labels):
    """Flax's MNIST-tutorial CNN and `softmax_cross_entropy_with_integer_labels(..).mean()`."""
    h = avg_pool(jax.nn.relu(conv(x, k1, b1)))
    h = avg_pool(jax.nn.relu(conv(h, k2, b2)))
    h = h.reshape((h.shape[0], -1))
    h = jax.nn.relu(h @ w3 + b3)
    logp = jax.nn.log_softmax(h @ w4 + b4)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


def layer_norm(x, scale, bias):
    """Flax's `nn.LayerNorm()`: the fast variance `E[x²] - E[x]²`, epsilon 1e-6."""
    mean = jnp.mean(x, -1, keepdims=True)
    var = jnp.maximum(jnp.mean(x * x, -1, keepdims=True) - mean * mean, 0.0)
    return (x - mean) * lax.rsqrt(var + 1e-6) * scale + bias
def attention(x, qk, qb, kk, kb, vk, vb, ok, ob, mask):
    """Flax's `MultiHeadDotProductAttention` with `inputs_q = inputs_kv = x`."""
    q = jnp.einsum("btd,dhk->bthk", x, qk) + qb
    k = jnp.einsum("btd,dhk->bthk", x, kk) + kb
    v = jnp.einsum("btd,dhk->bthk", x, vk) + vb
    logits = jnp.einsum("bqhk,bshk->bhqs", q / jnp.sqrt(q.shape[-1]).astype(q.dtype), k)
    logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bhqs,bshk->bqhk", weights, v)
    return jnp.einsum("bqhk,hko->bqo", out, ok) + ob
def transformer(params, x, y, mask):
    """Two pre-norm blocks and a final LayerNorm, `mean((out - y)²)`."""
    for b in range(2):
        p = params[16 * b : 16 * (b + 1)]
        x = x + attention(layer_norm(x, p[0], p[1]), *p[2:10], mask)
        h = jax.nn.gelu(layer_norm(x, p[10], p[11]) @ p[12] + p[13], approximate=True)
        x = x + h @ p[14] + p[15]
    out = layer_norm(x, params[32], params[33])
    return jnp.mean((out - y) ** 2)
# `layer_workloads::BLOCK_LEAVES`: shape and scale of each leaf of a block (None: a
# LayerNorm scale, one plus a small pattern).
BLOCK_LEAVES = [
    ((64,), None), ((64,), 0.05),
    ((64, 4, 16), 0.125), ((4, 16), 0.02),
    ((64, 4, 16), 0.125), ((4, 16), 0.02),
    ((64, 4, 16), 0.125), ((4, 16), 0.02),
    ((4, 16, 64), 0.125), ((64,), 0.02),
    ((64,), None), ((64,), 0.05),
    ((64, 256), 0.125), ((256,), 0.02),
    ((256, 64), 0.0625), ((64,), 0.02),
]
def w7_params():
    leaves = BLOCK_LEAVES * 2 + [((64,), None), ((64,), 0.05)]
    return [
        pattern(shape, k + 1, scale) if scale is not None else pattern(shape, k + 1, 0.1) + jnp.float32(1.0)
        for k, (shape, scale) in enumerate(leaves)
    ]


def workloads():
    x1 = pattern1(1000, 1, 1.5)
    yield "W1", rosenbrock, (0,), (x1,), 2000
    p2 = (pattern2(2, 32, 1, 0.7), pattern1(32, 2, 0.1), pattern2(32, 32, 3, 0.2), pattern1(32, 4, 0.1), pattern2(32, 1, 5, 0.2), pattern1(1, 6, 0.1))
    yield "W2", mlp_tanh, (0, 1, 2, 3, 4, 5), p2 + (pattern2(1, 2, 7, 1.0), pattern2(1, 1, 8, 1.0)), 20000
    p3 = (pattern2(784, 256, 1, 0.05), pattern1(256, 2, 0.1), pattern2(256, 256, 3, 0.1), pattern1(256, 4, 0.1), pattern2(256, 10, 5, 0.1), pattern1(10, 6, 0.1))
    onehot = jnp.array([[1.0 if (i * 7) % 10 == j else 0.0 for j in range(10)] for i in range(128)])
    yield "W3", mlp_xent, (0, 1, 2, 3, 4, 5), p3 + (pattern2(128, 784, 7, 1.0), onehot), 60
    xs = jnp.array(
        [[[((((t * 16 + i) * 32 + j) * 7919 % 1000) / 500.0 - 1.0) for j in range(32)] for i in range(16)] for t in range(50)]
    )
    yield "W4", rnn, (0, 1, 2), (pattern2(64, 64, 1, 0.15), pattern2(32, 64, 2, 0.2), pattern1(64, 3, 0.1), xs), 200
    # W8 computes its derivatives itself (argnums None): jit(rnn_hvp).
    p4 = (pattern2(64, 64, 1, 0.15), pattern2(32, 64, 2, 0.2), pattern1(64, 3, 0.1), xs)
    d4 = (pattern2(64, 64, 11, 1.0), pattern2(32, 64, 12, 1.0), pattern1(64, 13, 1.0))
    yield "W8", rnn_hvp, None, p4 + d4, 100
    p9 = (pattern2(16, 64, 1, 0.25), pattern1(64, 2, 0.1), pattern2(64, 64, 3, 0.125), pattern1(64, 4, 0.1), pattern2(64, 1, 5, 0.125), pattern1(1, 6, 0.1))
    d9 = (pattern2(16, 64, 11, 1.0), pattern1(64, 12, 1.0), pattern2(64, 64, 13, 1.0), pattern1(64, 14, 1.0), pattern2(64, 1, 15, 1.0), pattern1(1, 16, 1.0))
    yield "W9", regressor_hvp, None, p9 + (pattern2(128, 16, 7, 1.0), pattern2(128, 1, 8, 1.0)) + d9, 200
    yield "W10", regressor_jvp, None, p9 + (pattern2(128, 16, 7, 1.0), pattern2(128, 16, 9, 1.0)), 400
    p5 = (pattern2(1, 32, 1, 0.8), pattern1(32, 2, 0.2), pattern2(32, 32, 3, 0.25), pattern1(32, 4, 0.1), pattern2(32, 1, 5, 0.3), pattern1(1, 6, 0.1))
    x5 = jnp.array([[i * 3.0 / 127.0 - 1.5] for i in range(128)])
    yield "W5", pinn, (0, 1, 2, 3, 4, 5), p5 + (x5,), 400
    p6 = (
        pattern((3, 3, 1, 32), 1, 0.33),
        pattern((32,), 2, 0.1),
        pattern((3, 3, 32, 64), 3, 0.06),
        pattern((64,), 4, 0.1),
        pattern((3136, 256), 5, 0.018),
        pattern((256,), 6, 0.1),
        pattern((256, 10), 7, 0.0625),
        pattern((10,), 8, 0.1),
    )
    labels = jnp.array([(i * 7) % 10 for i in range(32)])
    yield "W6", mnist_cnn, tuple(range(8)), p6 + (pattern((32, 28, 28, 1), 9, 1.0), labels), 60
    mask = jnp.tril(jnp.ones((64, 64), dtype=bool))[None, None]
    x7, y7 = pattern((8, 64, 64), 100, 1.0), pattern((8, 64, 64), 101, 1.0)
    yield "W7", transformer, 0, (w7_params(), x7, y7, mask), 60


def main():
    """Compiles the workloads, prints each one's gradient checksums as a JSON line,
    then serves timing requests from stdin, one per line: `NAME BATCH` runs BATCH
    gradients of NAME and prints the seconds per gradient. The Rust bench interleaves
    these rounds with its own, so machine drift touches every implementation alike."""
    only = sys.argv[1] if len(sys.argv) > 1 else ""
    compiled = {}
    for name, f, argnums, args, _runs in workloads():
        if only and only not in name:
            continue
        g = jax.jit(f if argnums is None else jax.value_and_grad(f, argnums=argnums))
        _, grads = g(*args)
        jax.block_until_ready(grads)
        checksums = [[float(np.sum(g)), float(np.sum(g * g)), float(np.sum(np.abs(g)))] for g in (np.asarray(x, dtype=np.float64) for x in grads)]
        compiled[name] = (g, args)
        print(json.dumps({"name": name, "checksums": checksums}), flush=True)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        name, batch = line.split()
        g, args = compiled[name]
        batch = int(batch)
        start = time.perf_counter()
        for _ in range(batch):
            jax.block_until_ready(g(*args))
        print((time.perf_counter() - start) / batch, flush=True)


if __name__ == "__main__":
    main()
