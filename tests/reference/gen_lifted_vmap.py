"""Reference results for derivatives through Flax's lifted `nn.vmap` inside a module,
computed with Flax linen and JAX (float64), as the Rust tests write them
(`tests/tests/lifted_vmap.rs`). The mapped module's variables are broadcast
(`variable_axes={"params": None}`, `split_rngs={"params": False}`): what
`vmap!(cx, |mdl, cx, x..| mdl.call(cx, x..), Child, x.., in_axes = [..])` does.

- `trained_through_vmap`: a per-example net (a Dense, a deterministic Dropout, a loop,
  a branch: `lax.cond` under `vmap` is a select, Rust's `if` per example) mapped over
  the rows of `x` with a broadcast scale `s`; the loss is the sum of the squared
  outputs (`positive_arm`: which arm each example takes). Its gradient in the parameters, `x` and `s`, and three steps of SGD at
  learning rate 0.05 (the loss before each step, the parameters after).
- `pinn_per_point`: a physics-informed loss written per point: a child takes one point,
  takes the gradient of a field there (`nn.grad`) and returns its squared residual
  `(du/dx - cos x)^2`; `nn.vmap` maps it over the points and the loss is the mean. Its
  gradient in the field's parameters (second order inside, first order through the
  `vmap`).
- `grad_of_vmap`: second order through `nn.vmap`: the gradient penalty of a critic that
  scores each row of its input through `nn.vmap` and sums the scores; the loss is the
  sum of the squared input gradients (`nn.grad` of the critic), differentiated in the
  parameters.
- `closure_per_example`: `nn.vmap` of a closure that is more than `mdl(x)` (it calls
  the module twice and weights the output by a constant of the enclosing method);
  the loss is the sum of the squared per-example values; gradients in the
  parameters and the input.
- `closure_penalty`: second order through `nn.vmap` of a closure that is more than
  `mdl(x)` and reads a parameter `s` of the enclosing module: the gradient penalty of
  a critic mapping its rows through it, differentiated in the parameters and the
  input.

Variables are given explicitly (no random generator must match). Each case lists its
inputs, the variables, the loss and `grads` (same tree as the variables).

Run:  python gen_lifted_vmap.py   (writes lifted_vmap.json)
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


def broadcast_vmap(fn, in_axes):
    """`nn.vmap` with the variables broadcast, as `vmap!` inside a module does."""
    return nn.vmap(
        fn,
        in_axes=in_axes,
        variable_axes={"params": None},
        split_rngs={"params": False},
    )


OUT = {}


# 1. A per-example net with a loop and a branch, trained through nn.vmap.
class PointNet(nn.Module):
    raw: bool = False  # the value before the branch, to see which arm each example takes

    @nn.compact
    def __call__(self, x, s):
        h = jnp.tanh(nn.Dense(3)(x))
        h = nn.Dropout(0.5, deterministic=True)(h)
        acc = h
        for _ in range(2):
            acc = jnp.sin(acc * h) + h
        y = jnp.sum(nn.Dense(1)(acc))
        if self.raw:
            return y
        return jax.lax.cond(y > 0.0, lambda y: y * s, lambda y: y * y, y)


class Batched(nn.Module):
    @nn.compact
    def __call__(self, x, s):
        ys = broadcast_vmap(lambda mdl, x, s: mdl(x, s), (0, None))(PointNet(), x, s)
        return jnp.sum(ys * ys)


def case_trained():
    x = arr(5, 2, seed=1, scale=1.2)
    s = 1.5
    variables = {
        "params": {
            "PointNet_0": {
                "Dense_0": {"kernel": arr(2, 3, seed=2, scale=0.9), "bias": arr(3, seed=3, scale=0.3)},
                "Dense_1": {"kernel": arr(3, 1, seed=4, scale=0.8), "bias": arr(1, seed=5, scale=0.2)},
            }
        }
    }
    model = Batched()
    loss, (grads, gx, gs) = jax.value_and_grad(
        lambda v, x, s: model.apply(v, x, s), argnums=(0, 1, 2)
    )(variables, x, s)
    net = PointNet(raw=True)
    ys = jax.vmap(lambda x: net.apply({"params": variables["params"]["PointNet_0"]}, x, s))(x)
    opt = optax.sgd(0.05)
    v = variables
    state = opt.init(v)
    losses = []
    for _ in range(3):
        l, g = jax.value_and_grad(lambda v: model.apply(v, x, s))(v)
        losses.append(float(l))
        updates, state = opt.update(g, state, v)
        v = optax.apply_updates(v, updates)
    return {
        "x": x.tolist(),
        "s": s,
        "variables": tolist(variables),
        "positive_arm": [bool(y > 0.0) for y in ys],
        "loss": float(loss),
        "grads": tolist(grads),
        "x_grad": gx.tolist(),
        "s_grad": float(gs),
        "sgd_losses": losses,
        "after_sgd": tolist(v),
    }


OUT["trained_through_vmap"] = case_trained()


# 2. A PINN written per point: nn.grad inside the mapped child.
class Field(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = jnp.tanh(nn.Dense(5)(x))
        return jnp.sum(nn.Dense(1)(h))


class Residual(nn.Module):
    @nn.compact
    def __call__(self, x):
        (du,) = nn.grad(lambda mdl, x: mdl(x), Field(), x)
        r = du - jnp.cos(x)
        return jnp.sum(r * r)


class PerPoint(nn.Module):
    @nn.compact
    def __call__(self, x):
        rs = broadcast_vmap(lambda mdl, x: mdl(x), (0,))(Residual(), x)
        return jnp.mean(rs)


def case_pinn():
    x = arr(6, 2, seed=6, scale=1.5)
    variables = {
        "params": {
            "Residual_0": {
                "Field_0": {
                    "Dense_0": {"kernel": arr(2, 5, seed=7, scale=0.9), "bias": arr(5, seed=8, scale=0.2)},
                    "Dense_1": {"kernel": arr(5, 1, seed=9, scale=0.7), "bias": arr(1, seed=10, scale=0.1)},
                }
            }
        }
    }
    loss, grads = jax.value_and_grad(lambda v: PerPoint().apply(v, x))(variables)
    return {"x": x.tolist(), "variables": tolist(variables), "loss": float(loss), "grads": tolist(grads)}


OUT["pinn_per_point"] = case_pinn()


# 3. Second order through nn.vmap: a gradient penalty of a critic that maps its rows.
class Scorer(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.gelu(nn.Dense(4)(x))
        return jnp.sum(nn.Dense(1)(h))


class Critic(nn.Module):
    @nn.compact
    def __call__(self, x):
        scores = broadcast_vmap(lambda mdl, x: mdl(x), (0,))(Scorer(), x)
        return jnp.sum(scores)


class Penalty(nn.Module):
    @nn.compact
    def __call__(self, x):
        (g,) = nn.grad(lambda mdl, x: mdl(x), Critic(), x)
        return jnp.sum(g * g)


def case_grad_of_vmap():
    x = arr(3, 2, seed=11)
    variables = {
        "params": {
            "Critic_0": {
                "Scorer_0": {
                    "Dense_0": {"kernel": arr(2, 4, seed=12, scale=0.8), "bias": arr(4, seed=13, scale=0.2)},
                    "Dense_1": {"kernel": arr(4, 1, seed=14, scale=0.9), "bias": arr(1, seed=15, scale=0.1)},
                }
            }
        }
    }
    loss, grads = jax.value_and_grad(lambda v: Penalty().apply(v, x))(variables)
    return {"x": x.tolist(), "variables": tolist(variables), "loss": float(loss), "grads": tolist(grads)}


OUT["grad_of_vmap"] = case_grad_of_vmap()


# 4. nn.vmap of a closure that is more than `mdl(x)`.
class Bend(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = jnp.tanh(nn.Dense(4)(x))
        return nn.Dense(2)(h)


class ClosurePerExample(nn.Module):
    @nn.compact
    def __call__(self, xs):
        w = jax.lax.stop_gradient(jnp.array([1.5, -0.5]))

        def per_example(mdl, x):
            y = mdl(x)
            return jnp.sum(y * y * w) + jnp.sum(mdl(x))

        ys = broadcast_vmap(per_example, (0,))(Bend(), xs)
        return jnp.sum(ys * ys)


def case_closure_per_example():
    x = arr(4, 3, seed=21)
    variables = {
        "params": {
            "Bend_0": {
                "Dense_0": {"kernel": arr(3, 4, seed=22, scale=0.8), "bias": arr(4, seed=23, scale=0.2)},
                "Dense_1": {"kernel": arr(4, 2, seed=24, scale=0.9), "bias": arr(2, seed=25, scale=0.1)},
            }
        }
    }
    loss, grads = jax.value_and_grad(lambda v: ClosurePerExample().apply(v, x))(variables)
    gx = jax.grad(lambda x: ClosurePerExample().apply(variables, x))(x)
    return {"x": x.tolist(), "variables": tolist(variables), "loss": float(loss),
            "grads": tolist(grads), "grad_x": gx.tolist()}


OUT["closure_per_example"] = case_closure_per_example()



# 5. Second order through nn.vmap of a closure reading a parameter of the enclosing
# module.
class ClosureCritic(nn.Module):
    @nn.compact
    def __call__(self, xs):
        s = self.param("s", nn.initializers.ones, ())

        def per_example(mdl, x):
            return jnp.sum(jnp.tanh(mdl(x) * s))

        scores = broadcast_vmap(per_example, (0,))(Bend(), xs)
        return jnp.sum(scores * scores)


class ClosurePenalty(nn.Module):
    @nn.compact
    def __call__(self, x):
        (g,) = nn.grad(lambda mdl, x: mdl(x), ClosureCritic(), x)
        return jnp.sum(g * g)


def case_closure_penalty():
    x = arr(4, 3, seed=31)
    variables = {
        "params": {
            "ClosureCritic_0": {
                "s": jnp.asarray(0.8),
                "Bend_0": {
                    "Dense_0": {"kernel": arr(3, 4, seed=32, scale=0.8), "bias": arr(4, seed=33, scale=0.2)},
                    "Dense_1": {"kernel": arr(4, 2, seed=34, scale=0.9), "bias": arr(2, seed=35, scale=0.1)},
                },
            }
        }
    }
    loss, grads = jax.value_and_grad(lambda v: ClosurePenalty().apply(v, x))(variables)
    gx = jax.grad(lambda x: ClosurePenalty().apply(variables, x))(x)
    return {"x": x.tolist(), "variables": tolist(variables), "loss": float(loss),
            "grads": tolist(grads), "grad_x": gx.tolist()}


OUT["closure_penalty"] = case_closure_penalty()


if __name__ == "__main__":
    with open("lifted_vmap.json", "w") as f:
        json.dump(OUT, f, indent=1)
