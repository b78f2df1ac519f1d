"""W1-W5 in JAX, `jit(value_and_grad)`, float64, one thread, with the Rust bench's inputs.

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

jax.config.update("jax_enable_x64", True)


def pattern2(r, c, seed, scale):
    return jnp.array(
        [[((((i * c + j) * 7919 + seed * 104729) % 1000) / 500.0 - 1.0) * scale for j in range(c)] for i in range(r)],
        dtype=jnp.float64,
    )


def pattern1(n, seed, scale):
    return jnp.array([(((i * 7919 + seed * 104729) % 1000) / 500.0 - 1.0) * scale for i in range(n)], dtype=jnp.float64)


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


def field(w1, b1, w2, b2, w3, b3, x):
    h1 = jnp.tanh(x @ w1 + b1)
    h2 = jnp.tanh(h1 @ w2 + b2)
    return jnp.sum(h2 @ w3 + b3)


def pinn(w1, b1, w2, b2, w3, b3, x):
    du = jax.grad(field, argnums=6)(w1, b1, w2, b2, w3, b3, x)
    r = du - jnp.cos(x)
    return jnp.mean(r * r)


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
    p5 = (pattern2(1, 32, 1, 0.8), pattern1(32, 2, 0.2), pattern2(32, 32, 3, 0.25), pattern1(32, 4, 0.1), pattern2(32, 1, 5, 0.3), pattern1(1, 6, 0.1))
    x5 = jnp.array([[i * 3.0 / 127.0 - 1.5] for i in range(128)])
    yield "W5", pinn, (0, 1, 2, 3, 4, 5), p5 + (x5,), 400


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
        g = jax.jit(jax.value_and_grad(f, argnums=argnums))
        _, grads = g(*args)
        jax.block_until_ready(grads)
        checksums = [[float(jnp.sum(x)), float(jnp.sum(x * x))] for x in grads]
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
