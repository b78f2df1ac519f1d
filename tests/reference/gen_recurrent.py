"""Reference results for recurrent layers beyond layers.json, computed with Flax
linen (float64): nn.RNN scanning each cell forwards, backwards (with and without
keep_order), and from a given initial carry returning the last one.

Each case gives the tree `init` builds (`init_variables_shapes`), the variables it is
run on (deterministic values), the inputs, the output (`output`; with
`return_carry`, the pair `[carry, outputs]`), `loss = sum(sin(outputs))` (plus
`sum(sin(carry leaves))` with `return_carry`) and its gradients with respect to the
params and the input sequence.

Run:  python gen_recurrent.py   (writes recurrent.json)
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


def tolist(tree):
    return jax.tree_util.tree_map(lambda v: jnp.asarray(v).tolist(), tree)


def shapes(tree):
    return jax.tree_util.tree_map(lambda v: list(jnp.shape(v)), tree)


def fill_like(tree, seed, scale=0.5):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    new = [arr(*jnp.shape(v), seed=seed + k, scale=scale) for k, v in enumerate(leaves)]
    return jax.tree_util.tree_unflatten(treedef, new)


def total(out):
    return sum(jnp.sum(jnp.sin(v)) for v in jax.tree_util.tree_leaves(out))


CASES = {}


def case(name, rnn, x, note, carry=None):
    kw = {} if carry is None else {"initial_carry": carry, "return_carry": True}
    init_vars = rnn.init(jax.random.key(0), x, **kw)
    params = fill_like(init_vars["params"], seed=len(CASES) * 10 + 1)

    def loss(params, x):
        return total(rnn.apply({"params": params}, x, **kw))

    out = rnn.apply({"params": params}, x, **kw)
    gp, gx = jax.grad(loss, argnums=(0, 1))(params, x)
    CASES[name] = {
        "flax": note,
        "init_variables_shapes": shapes(init_vars),
        "variables": tolist({"params": params}),
        "inputs": {"x": tolist(x)},
        "output": tolist(out),
        "loss": float(loss(params, x)),
        "grads": {"params": tolist(gp), "x": tolist(gx)},
    }


x = arr(2, 5, 3, seed=40)
case("simple_forward", nn.RNN(nn.SimpleCell(4, param_dtype=jnp.float64)), x,
     "nn.RNN(nn.SimpleCell(4))")
case("simple_reverse", nn.RNN(nn.SimpleCell(4, param_dtype=jnp.float64), reverse=True), x,
     "nn.RNN(nn.SimpleCell(4), reverse=True): outputs in processing order")
case("gru_reverse_keep_order",
     nn.RNN(nn.GRUCell(4, param_dtype=jnp.float64), reverse=True, keep_order=True), x,
     "nn.RNN(nn.GRUCell(4), reverse=True, keep_order=True)")
carry0 = (arr(2, 3, seed=41, scale=0.5), arr(2, 3, seed=42, scale=0.5))
case("lstm_initial_carry_return_carry", nn.RNN(nn.LSTMCell(3, param_dtype=jnp.float64)), x,
     "nn.RNN(nn.LSTMCell(3))(x, initial_carry=(c, h), return_carry=True): [(c, h), outputs]",
     carry=carry0)
CASES["lstm_initial_carry_return_carry"]["inputs"]["carry"] = tolist(carry0)

json.dump(CASES, open("recurrent.json", "w"), indent=1)
