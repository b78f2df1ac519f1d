"""Reference results for `nn.Sequential`, computed with Flax (float64): the tree that
`init` builds for a top-level Sequential of modules and functions (layers named
`layers_{index in the list}`, functions counted), its output, and the gradients of
`loss = sum(sin(output))` with respect to the params and the input.

Run:  python gen_sequential.py   (writes sequential.json)
"""
import json
import jax
import jax.numpy as jnp
import flax.linen as nn

jax.config.update("jax_enable_x64", True)


def arr(*shape, seed, scale=1.0):
    n = 1
    for s in shape:
        n *= s
    vals = [(((i * 7919 + seed * 104729) % 1000) / 500.0 - 1.0) * scale for i in range(n)]
    return jnp.array(vals, dtype=jnp.float64).reshape(shape)


def tree(t):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a).tolist(), t)


model = nn.Sequential([nn.Dense(4), nn.relu, nn.Dense(3), nn.tanh, nn.Dense(2)])
x = arr(5, 3, seed=1)
shapes = jax.tree_util.tree_map(lambda a: list(a.shape), model.init(jax.random.PRNGKey(0), x))
params = {"params": {
    "layers_0": {"kernel": arr(3, 4, seed=2, scale=0.6), "bias": arr(4, seed=3, scale=0.1)},
    "layers_2": {"kernel": arr(4, 3, seed=4, scale=0.6), "bias": arr(3, seed=5, scale=0.1)},
    "layers_4": {"kernel": arr(3, 2, seed=6, scale=0.6), "bias": arr(2, seed=7, scale=0.1)},
}}
assert jax.tree_util.tree_map(lambda a: list(a.shape), params) == shapes
loss = lambda p, x: jnp.sum(jnp.sin(model.apply(p, x)))
gp, gx = jax.grad(loss, argnums=(0, 1))(params, x)
# The layout of layers.json's cases (`check_layer!` in tests/tests/layers.rs reads it).
out = {
    "mlp": {
        "note": "nn.Sequential([nn.Dense(4), nn.relu, nn.Dense(3), nn.tanh, nn.Dense(2)])",
        "init_variables_shapes": shapes,
        "inputs": {"x": x.tolist()},
        "variables": tree(params),
        "output": model.apply(params, x).tolist(),
        "loss": float(loss(params, x)),
        "grads": {"params": tree(gp["params"]), "x": gx.tolist()},
        "updated": {},
    }
}
with open("sequential.json", "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")
print("wrote sequential.json")
