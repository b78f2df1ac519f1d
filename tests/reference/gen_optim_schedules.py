"""Reference results for optax's schedules, at the int32 counts optax uses, and
optimizer runs with schedules (optax, float64 params).

optax counts steps in int32, so JAX's promotion computes linear, polynomial and
exponential schedules in float32 even with `jax_enable_x64`
(`linear_schedule(0.0, 0.05, 2)(jnp.int32(1))` is 0.02500000037252903), and a join
is float32 if one part is; cosine and piecewise schedules are float64. The table
records each schedule's value (as a float64) and dtype at counts 0..9, so a port can
follow optax's precision exactly.

Run:  python gen_optim_schedules.py   (writes optim_schedules.json)
"""
import json
import jax
import jax.numpy as jnp
import optax

jax.config.update("jax_enable_x64", True)

layers = json.load(open("optim.json"))["_inputs"]
params0 = jax.tree_util.tree_map(jnp.asarray, layers["params"])
grads = [jax.tree_util.tree_map(jnp.asarray, g) for g in layers["grads"]]


def run(tx):
    state = tx.init(params0)
    p = params0
    traj = []
    for g in grads:
        upd, state = tx.update(g, state, p)
        p = optax.apply_updates(p, upd)
        traj.append(jax.tree_util.tree_map(lambda v: jnp.asarray(v).tolist(), p))
    return traj


OUT = {}
warm = optax.warmup_cosine_decay_schedule(0.0, 0.05, warmup_steps=2, decay_steps=6, end_value=0.001)
OUT["adamw_warmup_cosine_decay_schedule"] = {
    "optax": "adamw(warmup_cosine_decay_schedule(0.0, 0.05, 2, 6, 0.001), weight_decay=cosine_decay_schedule(0.1, 4))",
    "trajectory": run(optax.adamw(warm, weight_decay=optax.cosine_decay_schedule(0.1, 4))),
}
expo = optax.exponential_decay(0.1, transition_steps=2, decay_rate=0.5, transition_begin=1, staircase=True)
OUT["sgd_momentum_exponential_decay"] = {
    "optax": "sgd(exponential_decay(0.1, 2, 0.5, transition_begin=1, staircase=True), momentum=0.9)",
    "trajectory": run(optax.sgd(expo, momentum=0.9)),
}

SCHEDULES = {
    "constant": optax.constant_schedule(0.3),
    "linear": optax.linear_schedule(1.0, 0.1, transition_steps=5, transition_begin=2),
    "polynomial": optax.polynomial_schedule(1.0, 0.1, power=2.0, transition_steps=5, transition_begin=1),
    "piecewise_constant": optax.piecewise_constant_schedule(1.0, {2: 0.5, 5: 0.1}),
    "exponential_decay": optax.exponential_decay(1.0, transition_steps=3, decay_rate=0.7, transition_begin=1),
    "exponential_decay_staircase_end": optax.exponential_decay(1.0, 2, 0.5, staircase=True, end_value=0.2),
    "cosine_decay": optax.cosine_decay_schedule(1.0, decay_steps=7, alpha=0.1, exponent=2.0),
    "warmup_cosine_decay": warm,
}
OUT["schedules"] = {name: {"values": [float(s(jnp.asarray(c, jnp.int32))) for c in range(10)],
                           "dtype": str(jnp.asarray(s(jnp.asarray(0, jnp.int32))).dtype)}
                    for name, s in SCHEDULES.items()}
json.dump(OUT, open("optim_schedules.json", "w"), indent=1)
