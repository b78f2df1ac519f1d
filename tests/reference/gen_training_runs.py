"""Reference training runs, step by step, with Flax and optax (float64): the loss at
every step and the variables after every step, from fixed initial variables (filled
deterministically, so no random generator has to match).

- `mlp_adamw`: Dense(16) -> relu -> Dense(8) -> gelu -> Dense(3), softmax cross entropy
  with integer labels, optax.chain(clip_by_global_norm(1.0), adamw(warmup cosine
  schedule, weight_decay=1e-2)), 12 steps over 3 fixed minibatches of 8.
- `cnn_batchnorm_sgd`: Conv(4, (3, 3)) -> BatchNorm (train mode, momentum 0.9) ->
  relu -> avg_pool -> Dense(3), sgd(0.05, momentum=0.9), 8 full-batch steps; the
  batch_stats after each step too. Flax creates batch_stats in float32 whatever the
  input's type (so its first update multiplies by momentum in float32); they are
  made float64 here (0 and 1, as Flax's), so the run is float64 throughout.

Run:  python gen_training_runs.py   (writes training_runs.json)
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


def fill_like(tree, seed, scale=0.5):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    new = [arr(*jnp.shape(v), seed=seed + k, scale=scale) for k, v in enumerate(leaves)]
    return jax.tree_util.tree_unflatten(treedef, new)


def tolist(tree):
    return jax.tree_util.tree_map(lambda v: jnp.asarray(v).tolist(), tree)


class Mlp(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(16)(x))
        x = nn.gelu(nn.Dense(8)(x))
        return nn.Dense(3)(x)


class Cnn(nn.Module):
    @nn.compact
    def __call__(self, x, train):
        x = nn.Conv(4, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = nn.avg_pool(nn.relu(x), (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(3)(x)


RUNS = {}

# The MLP with adamw, clipping and a schedule.
x = arr(24, 5, seed=1, scale=2.0)
y = jnp.array([(i * 7) % 3 for i in range(24)])
mlp = Mlp()
params = fill_like(mlp.init(jax.random.key(0), x)["params"], seed=10)
sched = optax.warmup_cosine_decay_schedule(0.0, 0.05, warmup_steps=3, decay_steps=12, end_value=0.005)
tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=1e-2))
state = tx.init(params)
losses, traj = [], []
for t in range(12):
    b = slice((t % 3) * 8, (t % 3) * 8 + 8)

    def loss_fn(p):
        logits = mlp.apply({"params": p}, x[b])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y[b]).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    losses.append(float(loss))
    traj.append(tolist({"params": params}))
RUNS["mlp_adamw"] = {"x": x.tolist(), "labels": y.tolist(),
                     "initial": tolist({"params": fill_like(mlp.init(jax.random.key(0), x)["params"], seed=10)}),
                     "losses": losses, "variables": traj}

# The CNN with BatchNorm and sgd momentum.
xc = arr(6, 6, 6, 2, seed=2)
yc = jnp.array([i % 3 for i in range(6)])
cnn = Cnn()
init = cnn.init(jax.random.key(0), xc, train=False)
params = fill_like(init["params"], seed=20)
stats = jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float64), init["batch_stats"])
initial = tolist({"params": params, "batch_stats": stats})
tx = optax.sgd(0.05, momentum=0.9)
state = tx.init(params)
losses, traj = [], []
for t in range(8):
    def loss_fn(p):
        logits, upd = cnn.apply({"params": p, "batch_stats": stats}, xc, train=True,
                                mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, yc).mean(), upd

    (loss, upd), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    stats = upd["batch_stats"]
    losses.append(float(loss))
    traj.append(tolist({"params": params, "batch_stats": stats}))
RUNS["cnn_batchnorm_sgd"] = {"x": xc.tolist(), "labels": yc.tolist(), "initial": initial,
                             "losses": losses, "variables": traj,
                             "eval_logits": tolist(cnn.apply({"params": params, "batch_stats": stats}, xc, train=False))}

json.dump(RUNS, open("training_runs.json", "w"), indent=1)
print({k: v["losses"][-1] for k, v in RUNS.items()})
