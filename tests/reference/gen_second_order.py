"""Reference results for second order and Jacobians, computed with JAX (float64):
`jax.hessian`, `jax.jacfwd`, `jax.jacrev` and Hessian-vector products
(`jax.jvp(jax.grad(f), ..)`) of functions written with loops and branches, and the
HVPs of the benchmark losses' shapes (W2, W3, W4, small), as the Rust tests write
them (`tests/tests/second_order.rs`), and `grad_penalty`, `value_and_grad_loss`:
`jax.grad` of a function that calls `jax.grad` (an input-gradient penalty) or
`jax.value_and_grad` (a residual on a network's value and input gradient): what
`grad!(f)(..)` and `value_and_grad!(f)(..)` inside a `#[differentiable]` body give.

And Hessian-vector products in a Flax model's parameters (`jax.jvp(jax.grad(loss),
(params, ..), (v, ..))` of a loss over `model.apply`), what `hvp!` of a function
applying a module to its variables gives: `hvp_params_loop` (a shared parameter
applied in a loop, a branch on the data; in the parameters and the input together)
and `hvp_params_batchnorm` (BatchNorm on the batch's statistics, its `batch_stats`
mutable, as `apply(.., mutable=["batch_stats"])`; in the parameters).

Each case gives its inputs, the function's value, and the requested derivatives, each
as a flat list with its shape (JAX's: `output ++ input` for Jacobians, `input ++
input` for Hessians).

Run:  python gen_second_order.py   (writes second_order.json)
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


def flat(v):
    v = jnp.asarray(v)
    return {"shape": list(v.shape), "data": [float(x) for x in jnp.ravel(v)]}


def rosenbrock(x):
    """The extended Rosenbrock function, as a loop over consecutive pairs."""
    s = 0.0
    for i in range(x.shape[0] - 1):
        a = x[i + 1] - x[i] * x[i]
        b = 1.0 - x[i]
        s = s + 100.0 * a * a + b * b
    return s


def rnn(h0, w, u, xs):
    """A tanh RNN over the rows of `xs`, its last state's squared norm; differentiated
    in `h0` (the other inputs held)."""
    h = h0
    for t in range(xs.shape[0]):
        h = jnp.tanh(w @ h + u * xs[t])
    return jnp.sum(h * h)


def piecewise(x, s):
    """A branch on the data and a loop whose trip count is fixed."""
    y = jnp.where(s > 0.0, jnp.tanh(x * s), (x * s) ** 2)
    z = jnp.sum(y)
    for _ in range(3):
        z = jnp.sin(z) + 0.5 * jnp.sum(x * y)
    return z


def field(x, k):
    """A vector function: elementwise maths and a reduction broadcast back."""
    return jnp.sin(x) * k + x * jnp.sum(x * x)


CASES = {}

x_r = jnp.array([0.3, -0.7, 1.1, 0.4])
v_r = jnp.array([1.0, 0.5, -2.0, 0.25])
CASES["rosenbrock"] = {
    "x": flat(x_r),
    "v": flat(v_r),
    "value": float(rosenbrock(x_r)),
    "hessian": flat(jax.hessian(rosenbrock)(x_r)),
    "hvp": flat(jax.jvp(jax.grad(rosenbrock), (x_r,), (v_r,))[1]),
}

h0 = arr(3, seed=1, scale=0.5)
w = arr(3, 3, seed=2, scale=0.6)
u = arr(3, seed=3, scale=0.4)
xs = arr(5, seed=4)
v_h = arr(3, seed=5)
f_rnn = lambda h: rnn(h, w, u, xs)
CASES["rnn"] = {
    "h0": flat(h0),
    "w": flat(w),
    "u": flat(u),
    "xs": flat(xs),
    "v": flat(v_h),
    "value": float(f_rnn(h0)),
    "hessian": flat(jax.hessian(f_rnn)(h0)),
    "hvp": flat(jax.jvp(jax.grad(f_rnn), (h0,), (v_h,))[1]),
}

x_p = jnp.array([0.3, 0.7, -1.1])
for name, s in [("piecewise_pos", 0.8), ("piecewise_neg", -0.6)]:
    f_p = lambda x: piecewise(x, s)
    CASES[name] = {
        "x": flat(x_p),
        "s": s,
        "value": float(f_p(x_p)),
        "hessian": flat(jax.hessian(f_p)(x_p)),
    }

x_f = jnp.array([0.2, -0.5, 0.9])
k_f = 1.7
f_f = lambda x: field(x, k_f)
CASES["field"] = {
    "x": flat(x_f),
    "k": k_f,
    "value": flat(f_f(x_f)),
    "jacfwd": flat(jax.jacfwd(f_f)(x_f)),
    "jacrev": flat(jax.jacrev(f_f)(x_f)),
}

# HVPs of the benchmark losses' shapes, small: W2's tanh MLP with MSE, W3's relu MLP
# with softmax cross-entropy, W4's RNN in its weights. The direction is a pattern
# of every parameter's shape; the HVP is `jvp(grad(loss))` over all of them.
def mlp_tanh(w1, b1, w2, b2, w3, b3, x, t):
    h1 = jnp.tanh(x @ w1 + b1)
    h2 = jnp.tanh(h1 @ w2 + b2)
    d = h2 @ w3 + b3 - t
    return jnp.mean(d * d)


def mlp_xent(w1, b1, w2, b2, x, onehot):
    h = jax.nn.relu(x @ w1 + b1)
    logp = jax.nn.log_softmax(h @ w2 + b2, axis=1)
    return -jnp.sum(logp * onehot) / x.shape[0]


def rnn_weights(w, u, b, xs):
    h = jnp.zeros((xs.shape[1], w.shape[0]))
    for t in range(xs.shape[0]):
        h = jnp.tanh(h @ w + xs[t] @ u + b)
    return jnp.sum(h * h)


def hvp_case(f, params, consts, seed):
    v = tuple(arr(*p.shape, seed=seed + k) for k, p in enumerate(params))
    g = lambda *ps: jax.grad(f, argnums=tuple(range(len(ps))))(*ps, *consts)
    _, hv = jax.jvp(g, params, v)
    return {
        "params": [flat(p) for p in params],
        "consts": [flat(c) for c in consts],
        "v": [flat(d) for d in v],
        "value": float(f(*params, *consts)),
        "hvp": [flat(h) for h in hv],
    }


p2 = (arr(2, 4, seed=1, scale=0.7), arr(4, seed=2, scale=0.1), arr(4, 4, seed=3, scale=0.5),
      arr(4, seed=4, scale=0.1), arr(4, 1, seed=5, scale=0.5), arr(1, seed=6, scale=0.1))
CASES["hvp_mlp_tanh"] = hvp_case(mlp_tanh, p2, (arr(3, 2, seed=7), arr(3, 1, seed=8)), 20)
p3 = (arr(6, 5, seed=1, scale=0.4), arr(5, seed=2, scale=0.1), arr(5, 3, seed=3, scale=0.4),
      arr(3, seed=4, scale=0.1))
onehot = jnp.array([[1.0 if (i * 7) % 3 == j else 0.0 for j in range(3)] for i in range(4)])
CASES["hvp_mlp_xent"] = hvp_case(mlp_xent, p3, (arr(4, 6, seed=7), onehot), 30)
p4 = (arr(3, 3, seed=1, scale=0.4), arr(2, 3, seed=2, scale=0.4), arr(3, seed=3, scale=0.1))
CASES["hvp_rnn"] = hvp_case(rnn_weights, p4, (arr(4, 2, 2, seed=4),), 40)

# `jax.grad` inside a function `jax.grad` differentiates (free functions, no module):
# an input-gradient penalty of a small tanh network, `|grad_x f|^2 + sum(grad_w f) *
# sum(x)`, differentiated in `x` and `w` (second order through the inner gradient).
def net(x, w):
    h = jnp.tanh(w[:3] * x + w[3:])
    return jnp.sum(h * h * x) + jnp.sum(jnp.sin(x * w[:3]))


def grad_penalty(x, w):
    gx, gw = jax.grad(net, argnums=(0, 1))(x, w)
    return jnp.sum(gx * gx) + jnp.sum(gw) * jnp.sum(x)


x_g = jnp.array([0.5, -0.6, 0.9])
w_g = jnp.array([0.3, -0.2, 0.7, 0.1, -0.4, 0.25])


def loss_case(loss):
    """`loss` at (x_g, w_g): its value and its gradients in both."""
    gx, gw = jax.grad(loss, argnums=(0, 1))(x_g, w_g)
    return {
        "x": flat(x_g),
        "w": flat(w_g),
        "value": float(loss(x_g, w_g)),
        "grad_x": flat(gx),
        "grad_w": flat(gw),
    }


CASES["grad_penalty"] = loss_case(grad_penalty)

# `jax.value_and_grad` inside: a residual on the value and the input gradient of the
# same network (a physics-informed loss written with free functions).
def value_grad_loss(x, w):
    v, gx = jax.value_and_grad(net)(x, w)
    return (v - 1.0) ** 2 + jnp.sum((gx - jnp.cos(x)) ** 2)


CASES["value_and_grad_loss"] = loss_case(value_grad_loss)



def tolist(tree):
    return jax.tree_util.tree_map(lambda v: jnp.asarray(v).tolist(), tree)


def pattern_like(tree, seed):
    """A direction shaped as `tree`, a pattern per leaf."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return jax.tree_util.tree_unflatten(
        treedef, [arr(*l.shape, seed=seed + k, scale=0.5) for k, l in enumerate(leaves)]
    )


# Hessian-vector products in a model's parameters.
class Resid(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = jnp.tanh(nn.Dense(4)(x))
        r = self.param("r", nn.initializers.zeros, (4, 4))
        for _ in range(2):
            h = h + jnp.tanh(h @ r)
        h = jax.lax.cond(jnp.sum(h) > 0.0, lambda h: h * 1.5, lambda h: h * h, h)
        return nn.Dense(1)(h)


def case_hvp_params_loop():
    x, t = arr(5, 3, seed=60, scale=0.9), arr(5, 1, seed=61)
    variables = {
        "params": {
            "Dense_0": {"kernel": arr(3, 4, seed=62, scale=0.7), "bias": arr(4, seed=63, scale=0.2)},
            "r": arr(4, 4, seed=64, scale=0.5),
            "Dense_1": {"kernel": arr(4, 1, seed=65, scale=0.8), "bias": arr(1, seed=66, scale=0.1)},
        }
    }
    loss = lambda v, x: jnp.mean((Resid().apply(v, x) - t) ** 2)
    dv, dx = pattern_like(variables, 70), arr(5, 3, seed=80, scale=0.3)
    hv, hx = jax.jvp(jax.grad(loss, argnums=(0, 1)), (variables, x), (dv, dx))[1]
    h = jnp.tanh(x @ variables["params"]["Dense_0"]["kernel"] + variables["params"]["Dense_0"]["bias"])
    for _ in range(2):
        h = h + jnp.tanh(h @ variables["params"]["r"])
    return {
        "x": tolist(x), "t": tolist(t), "variables": tolist(variables),
        "dv": tolist(dv), "dx": tolist(dx),
        "positive_arm": bool(jnp.sum(h) > 0.0),
        "loss": float(loss(variables, x)),
        "hvp_variables": tolist(hv), "hvp_x": tolist(hx),
    }


CASES["hvp_params_loop"] = case_hvp_params_loop()


class Normed(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(4)(x)
        h = nn.BatchNorm(use_running_average=False, momentum=0.9)(h)
        return nn.Dense(1)(jnp.tanh(h))


def case_hvp_params_batchnorm():
    x, t = arr(6, 2, seed=90, scale=1.2), arr(6, 1, seed=91)
    params = {
        "Dense_0": {"kernel": arr(2, 4, seed=92, scale=0.8), "bias": arr(4, seed=93, scale=0.2)},
        "BatchNorm_0": {"scale": 1.0 + arr(4, seed=94, scale=0.3), "bias": arr(4, seed=95, scale=0.2)},
        "Dense_1": {"kernel": arr(4, 1, seed=96, scale=0.8), "bias": arr(1, seed=97, scale=0.1)},
    }
    stats = {"BatchNorm_0": {"mean": jnp.zeros(4), "var": jnp.ones(4)}}

    def loss(p):
        y, _ = Normed().apply({"params": p, "batch_stats": stats}, x, mutable=["batch_stats"])
        return jnp.mean((y - t) ** 2)

    dv = pattern_like({"params": params}, 100)
    hv = jax.jvp(jax.grad(loss), (params,), (dv["params"],))[1]
    return {
        "x": tolist(x), "t": tolist(t),
        "variables": tolist({"params": params, "batch_stats": stats}),
        "dv": tolist(dv), "loss": float(loss(params)),
        "hvp_variables": tolist({"params": hv}),
    }


CASES["hvp_params_batchnorm"] = case_hvp_params_batchnorm()

with open("second_order.json", "w") as out:
    json.dump(CASES, out, indent=1)
    out.write("\n")
print("wrote", len(CASES), "cases")
