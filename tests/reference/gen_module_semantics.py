"""Reference results for how Flax names and shares submodules, computed with Flax linen.

Each case names the Flax program it runs; the Rust port must build the same
variables tree (collections, paths, shapes) and, for the explicit variables given,
the same output and gradients of `loss = sum(sin(output))`.
- a cell made once and called once per time step (a Python loop, as a user writes
  an RNN by hand) has one set of parameters: `Cell_0/Dense_0`, not `Dense_0..23`;
- the same held in a setup attribute (`cell`);
- a module made inside a loop is a new module per iteration (`Dense_0..2`);
- two inline instances in a block called twice through a field: `block/Dense_0`
  and `block/Dense_1`, one set for both calls;
- methods share their module's scope: a helper method called from `__call__`
  continues its auto names, `self(x)` from another method runs in the module's own
  scope, and a submodule's method runs in the submodule's scope;
- a list attribute of modules names them `layers_0`, `layers_1`, iterated or indexed;
- `names_in_use`: in one call of a compact module a name holds one parameter, one
  variable per collection, or one submodule; for each program, `init`'s variables'
  shapes or the name of the error it raises.
Run:  python gen_module_semantics.py > module_semantics.json
"""
import json
import jax
import jax.numpy as jnp
import flax.linen as nn

jax.config.update("jax_enable_x64", True)


def arr(*shape, seed):
    n = 1
    for s in shape:
        n *= s
    vals = [((i * 7919 + seed * 104729) % 1000) / 500.0 - 1.0 for i in range(n)]
    return jnp.array(vals, dtype=jnp.float64).reshape(shape)


def tolist(tree):
    return jax.tree_util.tree_map(lambda v: jnp.asarray(v).tolist(), tree)


def shapes(tree):
    return jax.tree_util.tree_map(lambda v: list(jnp.shape(v)), tree)


def explicit(tree, seed):
    """The tree with every leaf replaced by fixed values of its shape."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return jax.tree_util.tree_unflatten(
        treedef, [arr(*l.shape, seed=seed + k) for k, l in enumerate(leaves)])


def case(model, inputs, seed, init_kwargs=None, apply_kwargs=None):
    """The tree init builds, then for explicit variables the output, the loss
    sum(sin(output)) and its gradients with respect to the params and the inputs."""
    init_kwargs = init_kwargs or {}
    apply_kwargs = apply_kwargs or {}
    init = model.init(jax.random.key(0), *inputs, **init_kwargs)
    variables = explicit(init, seed)

    def loss(params, *xs):
        out = model.apply({'params': params}, *xs, **apply_kwargs)
        return jnp.sum(jnp.sin(out))

    out = model.apply(variables, *inputs, **apply_kwargs)
    value, grads = jax.value_and_grad(loss, argnums=tuple(range(len(inputs) + 1)))(
        variables['params'], *inputs)
    return {
        "init_variables_shapes": shapes(init),
        "variables": tolist(variables),
        "inputs": [tolist(x) for x in inputs],
        "output": tolist(out),
        "loss": tolist(value),
        "params_grad": tolist(grads[0]),
        "inputs_grad": [tolist(g) for g in grads[1:]],
    }


OUT = {}


class Cell(nn.Module):
    """An LSTM-style cell written with inline Dense layers."""
    features: int

    @nn.compact
    def __call__(self, c, h, x):
        g = nn.Dense(4 * self.features)(x) + nn.Dense(4 * self.features)(h)
        f = self.features
        i, fg, o, u = g[:, :f], g[:, f:2 * f], g[:, 2 * f:3 * f], g[:, 3 * f:]
        c = nn.sigmoid(fg) * c + nn.sigmoid(i) * jnp.tanh(u)
        h = nn.sigmoid(o) * jnp.tanh(c)
        return c, h


class ScanByHand(nn.Module):
    """The cell made once, called once per step in a loop."""
    @nn.compact
    def __call__(self, xs):
        cell = Cell(3)
        c = h = jnp.zeros((xs.shape[1], 3))
        for t in range(xs.shape[0]):
            c, h = cell(c, h, xs[t])
        return h


class ScanField(nn.Module):
    """The same cell as a setup attribute."""
    def setup(self):
        self.cell = Cell(3)

    def __call__(self, xs):
        c = h = jnp.zeros((xs.shape[1], 3))
        for t in range(xs.shape[0]):
            c, h = self.cell(c, h, xs[t])
        return h


xs = arr(12, 2, 4, seed=41)
OUT["cell_called_per_step"] = case(ScanByHand(), [xs], 100)
OUT["cell_in_a_field"] = case(ScanField(), [xs], 200)


class NewPerIteration(nn.Module):
    """A module made inside the loop: a new one per iteration."""
    @nn.compact
    def __call__(self, x):
        for _ in range(3):
            x = jnp.tanh(nn.Dense(2)(x))
        return x


OUT["made_per_iteration"] = case(NewPerIteration(), [arr(2, 2, seed=42)], 300)


class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(2)(jnp.tanh(nn.Dense(2)(x)))


class TwiceThroughField(nn.Module):
    def setup(self):
        self.block = Block()

    def __call__(self, x):
        return self.block(self.block(x))


OUT["inline_pair_called_twice"] = case(TwiceThroughField(), [arr(3, 2, seed=43)], 400)


class Model(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(self.encode(x))

    def encode(self, x):
        return jnp.tanh(nn.Dense(3)(x))

    def loss(self, x):
        y = self(x)
        return jnp.sum(y * y)


class UsesModel(nn.Module):
    """The submodule's methods, called from its parent: its own scope (Model_0)."""
    @nn.compact
    def __call__(self, x):
        m = Model()
        return m.loss(x) + jnp.sum(m(x))


OUT["methods_share_scope"] = case(
    Model(), [arr(2, 2, seed=44)], 500,
    init_kwargs={"method": Model.loss}, apply_kwargs={"method": Model.loss})
OUT["submodule_methods"] = case(UsesModel(), [arr(2, 2, seed=45)], 600)



class ListOfLayers(nn.Module):
    """A list attribute of modules: `layers_0`, `layers_1` (iterated, then indexed)."""
    def setup(self):
        self.layers = [nn.Dense(3), nn.Dense(3)]

    def __call__(self, x):
        h = x
        for layer in self.layers:
            h = jnp.tanh(layer(h))
        return self.layers[0](h)


OUT["list_attribute"] = case(ListOfLayers(), [arr(2, 3, seed=46)], 700)



def names_in_use():
    x = arr(1, 2, seed=47)

    class ParamTwice(nn.Module):
        @nn.compact
        def __call__(self, x):
            a = self.param("w", nn.initializers.ones, ())
            b = self.param("w", nn.initializers.zeros, ())
            return jnp.sum(x * a) + b

    class VariableTwice(nn.Module):
        @nn.compact
        def __call__(self, x):
            self.variable("state", "count", lambda: 0.0)
            self.variable("state", "count", lambda: 1.0)
            return jnp.sum(x)

    class ParamAndVariable(nn.Module):
        @nn.compact
        def __call__(self, x):
            self.variable("state", "w", lambda: 0.0)
            self.variable("stats", "w", lambda: 0.0)
            return jnp.sum(x * self.param("w", nn.initializers.ones, ()))

    class ParamNamedLikeAChild(nn.Module):
        @nn.compact
        def __call__(self, x):
            a = self.param("Dense_0", nn.initializers.ones, ())
            return jnp.sum(nn.Dense(1)(x)) * a

    class ChildrenNamedAlike(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.Dense(2, name="out")(x)
            return jnp.sum(nn.Dense(1, name="out")(h))

    out = {}
    for name, model in [("param_twice", ParamTwice()), ("variable_twice", VariableTwice()),
                        ("param_and_variables", ParamAndVariable()),
                        ("param_named_like_a_child", ParamNamedLikeAChild()),
                        ("children_named_alike", ChildrenNamedAlike())]:
        try:
            out[name] = {"shapes": shapes(model.init(jax.random.key(0), x))}
        except Exception as e:
            out[name] = {"error": type(e).__name__}
    return {"x": x.tolist(), "programs": out}


OUT["names_in_use"] = names_in_use()

print(json.dumps(OUT))
