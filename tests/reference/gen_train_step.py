"""Reference results for Flax's training step with state, computed with Flax and optax.

The pattern every Flax user writes for a model with BatchNorm and Dropout:

    def loss_fn(params):
        logits, updates = model.apply({'params': params, 'batch_stats': batch_stats},
                                      x, train=True, mutable=['batch_stats'],
                                      rngs={'dropout': key})
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates
    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)

run for two steps of SGD (each step's batch_stats come from the step before), from
explicit variables. Dropout's mask comes from JAX's random generator, which no other
implementation reproduces, so the model's Dropout is deterministic here; the Rust
tests check the dropout stream itself against central differences.
Run:  python gen_train_step.py > train_step.json
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


def tolist(tree):
    return jax.tree_util.tree_map(lambda v: jnp.asarray(v).tolist(), tree)


def shapes(tree):
    return jax.tree_util.tree_map(lambda v: list(jnp.shape(v)), tree)


class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train):
        x = nn.Dense(6)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = nn.relu(x)
        x = nn.Dropout(0.5, deterministic=True)(x)
        return nn.Dense(3)(x)


model = Net()
x = arr(8, 4, seed=71)
y = jnp.array([0, 2, 1, 1, 0, 2, 2, 0])
init = model.init(jax.random.key(0), x, train=False)
leaves, treedef = jax.tree_util.tree_flatten(init["params"])
params = jax.tree_util.tree_unflatten(
    treedef, [arr(*l.shape, seed=80 + k, scale=0.7) for k, l in enumerate(leaves)])
# Flax keeps batch statistics in float32 by default; here they are float64 like the
# rest, so the reference is about the step, not about float32 rounding.
batch_stats = jax.tree_util.tree_map(lambda v: v.astype(jnp.float64), init["batch_stats"])
key = jax.random.key(1)


def loss_fn(params, batch_stats):
    logits, updates = model.apply({'params': params, 'batch_stats': batch_stats}, x,
                                  train=True, mutable=['batch_stats'], rngs={'dropout': key})
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, updates


tx = optax.sgd(0.1)
opt_state = tx.init(params)
steps = []
for _ in range(2):
    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats)
    steps.append({"loss": float(loss), "grads": tolist(grads), "batch_stats": tolist(updates["batch_stats"])})
    upd, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, upd)
    batch_stats = updates["batch_stats"]

eval_logits = model.apply({'params': params, 'batch_stats': batch_stats}, x, train=False)
print(json.dumps({
    "flax": "Dense(6) -> BatchNorm(use_running_average=not train, momentum=0.9) -> relu -> "
            "Dropout(0.5, deterministic=True) -> Dense(3); softmax_cross_entropy_with_integer_labels; "
            "2 steps of optax.sgd(0.1)",
    "init_variables_shapes": shapes(init),
    "inputs": {"x": tolist(x), "labels": tolist(y)},
    "initial_params": tolist(jax.tree_util.tree_unflatten(
        treedef, [arr(*l.shape, seed=80 + k, scale=0.7) for k, l in enumerate(leaves)])),
    "initial_batch_stats": tolist(jax.tree_util.tree_map(lambda v: v.astype(jnp.float64), init["batch_stats"])),
    "steps": steps,
    "final_params": tolist(params),
    "eval_logits": tolist(eval_logits),
}))
