"""Reference results for second order and Jacobians through Flax's lifted transforms,
computed with Flax linen and JAX (float64): `jax.grad` of a loss that calls `nn.grad`
or `nn.value_and_grad` inside a module, and the Jacobians a lifted `jacrev!`/`jacfwd!`
gives, as the Rust tests write them (`tests/tests/lifted_second_order.rs`).

- `loop_branch_call`: a child whose body has a loop, a branch (`lax.cond` on the data;
  Rust's `if`), a call of a plain function and a deterministic Dropout, under
  `nn.value_and_grad(.., variables="params", rngs="dropout")`; the loss is the value plus
  the squared input gradient. Its gradient in the parameters, for two inputs (one per
  arm of the branch), and three steps of SGD at learning rate 0.01 (the loss before each step).
- `pinn_loop`: a physics-informed loss, `mean((du/dx - cos x)^2)`, of a field whose
  network applies a shared residual layer in a loop.
- `pinn_mlp`: the same loss of a field of `Dense` layers with `tanh`, `sigmoid`, products,
  quotients, `exp`, sums and means, which the child's input gradient written back as
  source differentiates again (reverse over reverse).
- `pinn_nested`: the same loss of a field whose own submodule loops (that submodule's input
  gradient is its reverse mode; second order runs the field's JVP-VJP again).
- `gradient_penalty_dropout`: WGAN-GP's penalty `mean((|grad_x D(x_i)| - 1)^2)` of a
  critic with a deterministic Dropout between its layers.
- `maml_inner`: MAML: a loop of inner SGD steps on fast weights, each a `nn.grad`
  of a learner's loss, then the learner's loss on held-out data at the adapted weights,
  differentiated with respect to the initial weights and the learner's own scale.
- `jvp_loss`: second order through `nn.jvp` (zero variable tangents): a loss on the
  directional derivative of a field (whose network loops) and on its value.
- `jvp_along_variables`: the same with nonzero variable tangents (a kernel's and a
  bias's): second order along the variables' tangents; gradients in the parameters
  and the input.
- `lifted_jacobian`: `jax.jacrev` and `jax.jacfwd` of a child (a loop and a branch in its
  body) in its input, its variables held, for one input and for a batch (shape
  `output ++ input`); Flax has no lifted Jacobians (flax#735), so the reference is what a
  user writes over `apply`.
- `vjp_pullback`: through `nn.vjp`: its output and its pullback applied to a cotangent
  that depends on the output, in the loss; gradients in the parameters and the input.
- `vjp_aux`: the same through `nn.vjp(.., has_aux=True)`, the aux (a mean of the child's
  last hidden layer squared) in the cotangent and in the loss.
- `vjp_params`: through the variables' cotangents the pullback returns, applied as
  the variables of another field in the loss.
- `jacobian_penalty`: second order through a lifted Jacobian: `sum(J^2) + sum(y^2)` of
  the same child, its gradient in the child's parameters.
- `closure_body`: closures that are more than `mdl(x)` (the PINN idiom for a field
  with one value per point, `lambda mdl, x: jnp.sum(mdl(x))`): a loss on the
  gradients of a closure that calls the module twice (sharing its parameters) and
  takes a second primal, and on `nn.value_and_grad` of a sum; gradients in the
  parameters and the input.
- `jvp_closure`: second order through `nn.jvp` of such a closure (zero variable
  tangents).
- `closure_captures`: a closure that reads values of the enclosing method (a
  constant weight `stop_gradient(cos x)`, a number, the target input `t`) besides
  its arguments.
- `closure_differentiated_captures`: a closure that reads differentiated values of the
  enclosing method: a parameter `s` of the enclosing module and a weight computed
  from the input and `s`; their cotangents come out of the closure's rerun.
- `vjp_closure_pullback`: second order through the pullback of `nn.vjp` of a closure
  that is more than `mdl(x)` and reads a parameter `s` of the enclosing module,
  applied to a cotangent that depends on the output.
- `vjp_closure_value`: first order through the output (and the aux) of `nn.vjp`
  of a closure that is more than `mdl(x)`; its pullback's results held constant.
- `lifted_hessian`: `jax.hessian` of a scalar child (a loop and a branch) in its
  first input, the second held, for one input and a batch (shape `input ++ input`),
  and the Hessian-vector products in both inputs (`jax.jvp` of `jax.grad`), what the
  lifted `hessian!` and `hvp!` give (Flax has neither).

Variables are given explicitly (no random generator must match). Each case lists its
inputs, the variables, the loss and `grads` (same tree as the variables).

Run:  python gen_lifted_second_order.py   (writes lifted_second_order.json)
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


OUT = {}


# 1. A loop, a branch and a call in the child; value_and_grad with variables and rngs.
def shift(h, s):
    """The plain function the child calls."""
    return jnp.sin(h) * s + h


class Body(nn.Module):
    @nn.compact
    def __call__(self, x):
        w = self.param("w", nn.initializers.zeros, (3, 3))
        s = self.param("s", nn.initializers.zeros, ())
        h = x
        for _ in range(3):
            h = jnp.tanh(w @ h + x)
        h = jax.lax.cond(jnp.sum(h) > 0.0, lambda h: h * 2.0, lambda h: h * h, h)
        h = shift(h, s)
        h = nn.Dropout(0.5, deterministic=True)(h)
        return jnp.sum(nn.Dense(2)(h) ** 2)


class Trained(nn.Module):
    @nn.compact
    def __call__(self, x):
        v, (gx,) = nn.value_and_grad(
            lambda mdl, x: mdl(x), Body(), x, variables="params", rngs="dropout"
        )
        return v + jnp.sum(gx * gx)


def case_loop_branch_call():
    variables = {
        "params": {
            "Body_0": {
                "w": arr(3, 3, seed=1, scale=0.6),
                "s": jnp.array(0.7),
                "Dense_0": {"kernel": arr(3, 2, seed=2, scale=0.8), "bias": arr(2, seed=3, scale=0.1)},
            }
        }
    }
    out = {"variables": tolist(variables), "inputs": {}}
    model = Trained()
    for name, x in [("x_pos", jnp.array([0.5, 0.9, -0.2])), ("x_neg", jnp.array([-0.8, -0.4, 0.3]))]:
        loss_fn = lambda v: model.apply(v, x, rngs={"dropout": jax.random.PRNGKey(0)})
        loss, grads = jax.value_and_grad(loss_fn)(variables)
        # which arm ran
        h = x
        w = variables["params"]["Body_0"]["w"]
        for _ in range(3):
            h = jnp.tanh(w @ h + x)
        losses = []
        v = variables
        for _ in range(3):
            l, g = jax.value_and_grad(loss_fn)(v)
            losses.append(float(l))
            v = jax.tree_util.tree_map(lambda p, g: p - 0.01 * g, v, g)
        out["inputs"][name] = {
            "x": x.tolist(),
            "positive_arm": bool(jnp.sum(h) > 0.0),
            "loss": float(loss),
            "grads": tolist(grads),
            "sgd_losses": losses,
            "after_sgd": tolist(v),
        }
    return out


OUT["loop_branch_call"] = case_loop_branch_call()


# 2. A PINN whose field applies a shared residual layer in a loop.
class Field(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = jnp.tanh(nn.Dense(6)(x))
        r = self.param("r", nn.initializers.zeros, (6, 6))
        for _ in range(3):
            h = h + jnp.tanh(h @ r)
        return jnp.sum(nn.Dense(1)(h))


class Pinn(nn.Module):
    """The residual loss of `u' = cos x`, `u` the field `field()` builds."""

    field: type = Field

    @nn.compact
    def __call__(self, x):
        (du,) = nn.grad(lambda mdl, x: mdl(x), self.field(), x)
        res = du - jnp.cos(x)
        return jnp.mean(res * res)


def pinn_case(field, params, x):
    """The loss of `Pinn(field)` and its gradient in the field's parameters `params`."""
    variables = {"params": {f"{field.__name__}_0": params}}
    loss, grads = jax.value_and_grad(lambda v: Pinn(field).apply(v, x))(variables)
    return {"x": x.tolist(), "variables": tolist(variables), "loss": float(loss), "grads": tolist(grads)}


def case_pinn():
    params = {
        "Dense_0": {"kernel": arr(2, 6, seed=5, scale=0.9), "bias": arr(6, seed=6, scale=0.2)},
        "r": arr(6, 6, seed=7, scale=0.4),
        "Dense_1": {"kernel": arr(6, 1, seed=8, scale=0.7), "bias": arr(1, seed=9, scale=0.1)},
    }
    return pinn_case(Field, params, arr(5, 2, seed=4, scale=1.5))


OUT["pinn_loop"] = case_pinn()


# 3. WGAN-GP's gradient penalty through a critic with a deterministic Dropout.
class Critic(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.gelu(nn.Dense(8)(x))
        h = nn.Dropout(0.3, deterministic=True)(h)
        return jnp.sum(nn.Dense(1)(h))


class Penalty(nn.Module):
    @nn.compact
    def __call__(self, x):
        (g,) = nn.grad(lambda mdl, x: mdl(x), Critic(), x)
        norms = jnp.sqrt(jnp.sum(g * g, axis=1))
        return jnp.mean((norms - 1.0) ** 2)


def case_penalty():
    x = arr(4, 3, seed=10)
    variables = {
        "params": {
            "Critic_0": {
                "Dense_0": {"kernel": arr(3, 8, seed=11, scale=0.8), "bias": arr(8, seed=12, scale=0.2)},
                "Dense_1": {"kernel": arr(8, 1, seed=13, scale=0.9), "bias": arr(1, seed=14, scale=0.1)},
            }
        }
    }
    loss, grads = jax.value_and_grad(lambda v: Penalty().apply(v, x))(variables)
    return {"x": x.tolist(), "variables": tolist(variables), "loss": float(loss), "grads": tolist(grads)}


OUT["gradient_penalty_dropout"] = case_penalty()


# 4. MAML: inner SGD steps on fast weights (a nn.grad each), then the held-out loss.
class Learner(nn.Module):
    @nn.compact
    def __call__(self, w, x, y):
        scale = self.param("scale", nn.initializers.ones, ())
        pred = jnp.tanh(x @ w) * scale
        return jnp.mean((pred - y) ** 2)


class Maml(nn.Module):
    steps: int = 3
    lr: float = 0.5

    @nn.compact
    def __call__(self, xs, ys, xq, yq):
        w = self.param("w0", nn.initializers.zeros, (3,))
        learner = Learner()
        for _ in range(self.steps):
            (gw, _, _) = nn.grad(lambda mdl, w, x, y: mdl(w, x, y), learner, w, xs, ys)
            w = w - self.lr * gw
        return learner(w, xq, yq)


def case_maml():
    xs, ys = arr(6, 3, seed=15), arr(6, seed=16)
    xq, yq = arr(4, 3, seed=17), arr(4, seed=18)
    variables = {"params": {"w0": arr(3, seed=19, scale=0.5), "Learner_0": {"scale": jnp.array(1.3)}}}
    loss, grads = jax.value_and_grad(lambda v: Maml().apply(v, xs, ys, xq, yq))(variables)
    return {
        "xs": xs.tolist(), "ys": ys.tolist(), "xq": xq.tolist(), "yq": yq.tolist(),
        "variables": tolist(variables), "loss": float(loss), "grads": tolist(grads),
    }


OUT["maml_inner"] = case_maml()

# 5. Second order through nn.jvp (zero variable tangents): a directional derivative of
# a field (per point) in the loss, trained with respect to the field's parameters.
class Field2(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = jnp.tanh(nn.Dense(5)(x))
        for _ in range(2):
            h = jnp.sin(nn.Dense(5)(h)) + h
        return nn.Dense(1)(h)


class JvpLoss(nn.Module):
    @nn.compact
    def __call__(self, x, v):
        y, dy = nn.jvp(lambda mdl, x: mdl(x), Field2(), (x,), (v,), {})
        r = dy[:, 0] - jnp.cos(x[:, 0])
        return jnp.mean(r * r) + 0.1 * jnp.mean(y * y)


def case_jvp_child():
    child = {"Dense_0": {"kernel": arr(2, 5, seed=32, scale=0.8), "bias": arr(5, seed=33, scale=0.2)}}
    for k in range(1, 3):
        child[f"Dense_{k}"] = {"kernel": arr(5, 5, seed=33 + 2 * k, scale=0.5), "bias": arr(5, seed=34 + 2 * k, scale=0.1)}
    child["Dense_3"] = {"kernel": arr(5, 1, seed=40, scale=0.7), "bias": arr(1, seed=41, scale=0.1)}
    return child


def case_jvp():
    x, v = arr(6, 2, seed=30, scale=1.2), arr(6, 2, seed=31)
    variables = {"params": {"Field2_0": case_jvp_child()}}
    loss, grads = jax.value_and_grad(lambda vs: JvpLoss().apply(vs, x, v))(variables)
    return {"x": x.tolist(), "v": v.tolist(), "variables": tolist(variables), "loss": float(loss), "grads": tolist(grads)}


OUT["jvp_loss"] = case_jvp()


# 5b. The same with nonzero variable tangents (the first layer's kernel and the last
# bias): second order along the variables' tangents, which are constants.
def jvp_variable_tangents():
    t = jax.tree_util.tree_map(jnp.zeros_like, case_jvp_child())
    t["Dense_0"]["kernel"] = arr(2, 5, seed=42, scale=0.6)
    t["Dense_3"]["bias"] = jnp.array([1.0])
    return {"params": t}


class JvpAlongVariables(nn.Module):
    @nn.compact
    def __call__(self, x, v):
        y, dy = nn.jvp(lambda mdl, x: mdl(x), Field2(), (x,), (v,), jvp_variable_tangents())
        r = dy[:, 0] - jnp.cos(x[:, 0])
        return jnp.mean(r * r) + 0.1 * jnp.mean(y * y)


def case_jvp_along_variables():
    x, v = arr(6, 2, seed=30, scale=1.2), arr(6, 2, seed=31)
    variables = {"params": {"Field2_0": case_jvp_child()}}
    model = JvpAlongVariables()
    loss, grads = jax.value_and_grad(lambda vs: model.apply(vs, x, v))(variables)
    gx = jax.grad(lambda x: model.apply(variables, x, v))(x)
    return {
        "x": x.tolist(), "v": v.tolist(), "variables": tolist(variables),
        "variable_tangents": tolist(jvp_variable_tangents()),
        "loss": float(loss), "grads": tolist(grads), "grad_x": gx.tolist(),
    }


OUT["jvp_along_variables"] = case_jvp_along_variables()


# 6. Lifted Jacobians (Flax has none, flax#735): what a user writes with jax.jacrev and
# jax.jacfwd over the child's apply, its variables held; the child loops and branches.
class Curve(nn.Module):
    @nn.compact
    def __call__(self, x, t):
        h = jnp.tanh(nn.Dense(3)(x))
        r = self.param("r", nn.initializers.zeros, (3, 3))
        for _ in range(2):
            h = jnp.sin(h @ r) * t + h
        h = jax.lax.cond(jnp.sum(h) > 0.0, lambda h: h * h, lambda h: -h, h)
        return nn.Dense(2)(h)


def case_jacobian():
    x, t = arr(4, seed=20), jnp.array(0.8)
    xb = arr(2, 4, seed=21)
    child = case_jacobian_child()
    return case_jacobian_rest(x, t, xb, child)


def case_jacobian_child():
    return {
        "Dense_0": {"kernel": arr(4, 3, seed=22, scale=0.7), "bias": arr(3, seed=23, scale=0.2)},
        "r": arr(3, 3, seed=24, scale=0.6),
        "Dense_1": {"kernel": arr(3, 2, seed=25, scale=0.9), "bias": arr(2, seed=26, scale=0.1)},
    }


def case_jacobian_rest(x, t, xb, child):
    f = lambda x: Curve().apply({"params": child}, x, t)
    return {
        "x": x.tolist(), "t": float(t), "x_batch": xb.tolist(),
        "variables": tolist({"params": {"Curve_0": child}}),
        "value": f(x).tolist(),
        "jacobian": jax.jacrev(f)(x).tolist(),
        "jacobian_fwd": jax.jacfwd(f)(x).tolist(),
        "jacobian_batch": jax.jacrev(f)(xb).tolist(),
    }


OUT["lifted_jacobian"] = case_jacobian()


# 7. Second order through a lifted Jacobian: a contractive penalty `|J|^2` plus the
# output's square, trained with respect to the child's parameters (those of case 6).
def case_jacobian_penalty():
    x, t = arr(4, seed=20), jnp.array(0.8)
    child = case_jacobian_child()

    def loss(params):
        f = lambda x: Curve().apply({"params": params["params"]["Curve_0"]}, x, t)
        j = jax.jacrev(f)(x)
        y = f(x)
        return jnp.sum(j * j) + jnp.sum(y * y)

    variables = {"params": {"Curve_0": child}}
    value, grads = jax.value_and_grad(loss)(variables)
    return {"x": x.tolist(), "t": float(t), "variables": tolist(variables), "loss": float(value), "grads": tolist(grads)}

OUT["jacobian_penalty"] = case_jacobian_penalty()


# 8. Lifted Hessians: the same child's squared output, a scalar.
class Energy(nn.Module):
    @nn.compact
    def __call__(self, x, t):
        return jnp.sum(Curve()(x, t) ** 2)


def case_hessian():
    x, t = arr(4, seed=20), jnp.array(0.8)
    xb = arr(2, 4, seed=21)
    v, vt = arr(4, seed=27), jnp.array(-0.6)
    child = {"Curve_0": case_jacobian_child()}
    f = lambda x, t: Energy().apply({"params": child}, x, t)
    hv = jax.jvp(jax.grad(f, argnums=(0, 1)), (x, t), (v, vt))[1]
    return {
        "x": x.tolist(), "t": float(t), "x_batch": xb.tolist(), "v": v.tolist(), "v_t": float(vt),
        "variables": tolist({"params": {"Energy_0": child}}),
        "hessian": jax.hessian(f)(x, t).tolist(),
        "hessian_batch": jax.hessian(f)(xb, t).tolist(),
        "hvp_x": hv[0].tolist(),
        "hvp_t": float(hv[1]),
    }


OUT["lifted_hessian"] = case_hessian()


# 8. Through nn.vjp: its output, and its pullback applied to a cotangent that depends on
# the output (the pullback's cotangent, the output and the primal all differentiated).
class VjpLoss(nn.Module):
    @nn.compact
    def __call__(self, x):
        y, bwd = nn.vjp(lambda mdl, x: mdl(x), Field2(), x)
        ct = jnp.cos(y)
        _, gx = bwd(ct)
        return jnp.sum(gx * gx) + jnp.sum(y)


def case_loss(model, child, seed):
    """A loss module over the `case_jvp_child` variables (as `child`), at an input
    drawn with `seed`: the loss, its gradients in the variables and in the input."""
    x = arr(6, 2, seed=seed, scale=1.1)
    variables = {"params": {child: case_jvp_child()}}
    loss, grads = jax.value_and_grad(lambda vs: model.apply(vs, x))(variables)
    gx = jax.grad(lambda x: model.apply(variables, x))(x)
    return {"x": x.tolist(), "variables": tolist(variables), "loss": float(loss), "grads": tolist(grads), "grad_x": gx.tolist()}

OUT["vjp_pullback"] = case_loss(VjpLoss(), "Field2_0", 50)


# 9. Through nn.vjp with has_aux: the child returns (y, aux); the aux enters the
# cotangent given to the pullback and the loss.
class Field2Aux(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = jnp.tanh(nn.Dense(5)(x))
        for _ in range(2):
            h = jnp.sin(nn.Dense(5)(h)) + h
        return nn.Dense(1)(h), jnp.mean(h * h)


class VjpAuxLoss(nn.Module):
    @nn.compact
    def __call__(self, x):
        y, bwd, aux = nn.vjp(lambda mdl, x: mdl(x), Field2Aux(), x, has_aux=True)
        ct = jnp.cos(y) * aux
        _, gx = bwd(ct)
        return jnp.sum(gx * gx) + jnp.sum(y) + 0.5 * aux


OUT["vjp_aux"] = case_loss(VjpAuxLoss(), "Field2Aux_0", 51)


# 10. Through the variables' cotangents nn.vjp's pullback returns: they are applied as
# another field's variables (second order along them: the child's forward mode along
# its variables).
class VjpParamsLoss(nn.Module):
    @nn.compact
    def __call__(self, x):
        y, bwd = nn.vjp(lambda mdl, x: mdl(x), Field2(), x)
        params_ct, gx = bwd(jnp.cos(y))
        probe = Field2(parent=None).apply(params_ct, x)
        return jnp.sum(gx * gx) + jnp.sum(y) + jnp.sum(probe)


OUT["vjp_params"] = case_loss(VjpParamsLoss(), "Field2_0", 52)


# 11. Closures that are more than `mdl(x)`: a field with one value per point, its
# output summed in the closure; the module called twice (its parameters shared, as a
# compact method's are), a second primal; and `nn.value_and_grad` of a sum.
class PointField(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = jnp.tanh(nn.Dense(6)(x))
        return nn.Dense(1)(h)


class ClosureLoss(nn.Module):
    @nn.compact
    def __call__(self, x, t):
        gx, gt = nn.grad(
            lambda mdl, x, t: jnp.sum((mdl(x) - t) ** 2) + jnp.mean(nn.softplus(mdl(2.0 * x))),
            PointField(),
            x,
            t,
        )
        v, (g,) = nn.value_and_grad(lambda mdl, x: jnp.sum(mdl(x)), PointField(), x)
        return jnp.sum(gx * gx) + jnp.sum(gt * gt) + v + jnp.sum(jnp.cos(x) * g)


def case_closure_body():
    x, t = arr(5, 2, seed=53), arr(5, 1, seed=54, scale=0.5)

    def field(seed):
        return {
            "Dense_0": {"kernel": arr(2, 6, seed=seed, scale=0.9), "bias": arr(6, seed=seed + 1, scale=0.2)},
            "Dense_1": {"kernel": arr(6, 1, seed=seed + 2, scale=0.7), "bias": arr(1, seed=seed + 3, scale=0.1)},
        }

    variables = {"params": {"PointField_0": field(55), "PointField_1": field(59)}}
    shapes = jax.tree_util.tree_map(jnp.shape, ClosureLoss().init(jax.random.PRNGKey(0), x, t))
    assert shapes == jax.tree_util.tree_map(jnp.shape, variables), shapes
    loss, grads = jax.value_and_grad(lambda v: ClosureLoss().apply(v, x, t))(variables)
    gx = jax.grad(lambda x: ClosureLoss().apply(variables, x, t))(x)
    return {
        "x": x.tolist(),
        "t": t.tolist(),
        "variables": tolist(variables),
        "loss": float(loss),
        "grads": tolist(grads),
        "grad_x": gx.tolist(),
    }


OUT["closure_body"] = case_closure_body()


# 12. `nn.jvp` of a closure that is more than `mdl(x)` (zero variable tangents): the
# field's output squared and summed, its tangent along `v` in the loss.
class JvpClosureLoss(nn.Module):
    @nn.compact
    def __call__(self, x, v):
        y, dy = nn.jvp(lambda mdl, x: jnp.sum(mdl(x) ** 2), PointField(), (x,), (v,), {})
        return dy * dy + jnp.sin(y)


def case_jvp_closure():
    x, v = arr(5, 2, seed=63), arr(5, 2, seed=64)
    field = {
        "Dense_0": {"kernel": arr(2, 6, seed=65, scale=0.9), "bias": arr(6, seed=66, scale=0.2)},
        "Dense_1": {"kernel": arr(6, 1, seed=67, scale=0.7), "bias": arr(1, seed=68, scale=0.1)},
    }
    variables = {"params": {"PointField_0": field}}
    loss, grads = jax.value_and_grad(lambda vs: JvpClosureLoss().apply(vs, x, v))(variables)
    gx = jax.grad(lambda x: JvpClosureLoss().apply(variables, x, v))(x)
    return {
        "x": x.tolist(),
        "v": v.tolist(),
        "variables": tolist(variables),
        "loss": float(loss),
        "grads": tolist(grads),
        "grad_x": gx.tolist(),
    }


OUT["jvp_closure"] = case_jvp_closure()

# 13. A closure that reads values of the enclosing method besides its arguments: a
# constant weight, a number and the target input (none differentiated).
class CapturingLoss(nn.Module):
    @nn.compact
    def __call__(self, x, t):
        w = jax.lax.stop_gradient(jnp.cos(x))
        k = 0.5
        (g,) = nn.grad(
            lambda mdl, x: jnp.sum(w * mdl(x)) * k + jnp.sum((mdl(x) - t) ** 2),
            PointField(),
            x,
        )
        return jnp.sum(g * g) + jnp.sum(jnp.sin(x) * g)


def case_closure_captures():
    x, t = arr(5, 2, seed=71), arr(5, 2, seed=72, scale=0.5)
    field = {
        "Dense_0": {"kernel": arr(2, 6, seed=73, scale=0.9), "bias": arr(6, seed=74, scale=0.2)},
        "Dense_1": {"kernel": arr(6, 1, seed=75, scale=0.7), "bias": arr(1, seed=76, scale=0.1)},
    }
    variables = {"params": {"PointField_0": field}}
    loss, grads = jax.value_and_grad(lambda vs: CapturingLoss().apply(vs, x, t))(variables)
    gx = jax.grad(lambda x: CapturingLoss().apply(variables, x, t))(x)
    return {
        "x": x.tolist(),
        "t": t.tolist(),
        "variables": tolist(variables),
        "loss": float(loss),
        "grads": tolist(grads),
        "grad_x": gx.tolist(),
    }


OUT["closure_captures"] = case_closure_captures()

# 13b. A closure that reads differentiated values of the enclosing method: its
# parameter `s` and a weight computed from the input and `s`.
class DiffCapturingLoss(nn.Module):
    @nn.compact
    def __call__(self, x, t):
        s = self.param("s", nn.initializers.ones, ())
        w = jnp.cos(x) * s
        (g,) = nn.grad(
            lambda mdl, x: jnp.sum(w * mdl(x)) * s + jnp.sum((mdl(x) - t) ** 2),
            PointField(),
            x,
        )
        return jnp.sum(g * g) + jnp.sum(jnp.sin(x) * g) * s


def case_closure_differentiated_captures():
    x, t = arr(5, 2, seed=91), arr(5, 2, seed=92, scale=0.5)
    field = {
        "Dense_0": {"kernel": arr(2, 6, seed=93, scale=0.9), "bias": arr(6, seed=94, scale=0.2)},
        "Dense_1": {"kernel": arr(6, 1, seed=95, scale=0.7), "bias": arr(1, seed=96, scale=0.1)},
    }
    variables = {"params": {"s": jnp.asarray(0.8), "PointField_0": field}}
    loss, grads = jax.value_and_grad(lambda vs: DiffCapturingLoss().apply(vs, x, t))(variables)
    gx = jax.grad(lambda x: DiffCapturingLoss().apply(variables, x, t))(x)
    return {
        "x": x.tolist(),
        "t": t.tolist(),
        "variables": tolist(variables),
        "loss": float(loss),
        "grads": tolist(grads),
        "grad_x": gx.tolist(),
    }


OUT["closure_differentiated_captures"] = case_closure_differentiated_captures()

# 14. First order through the output and aux of `nn.vjp` of a closure that is more
# than `mdl(x)`; the pullback's results are used under `stop_gradient`.
class VjpClosureValue(nn.Module):
    @nn.compact
    def __call__(self, x):
        w = jax.lax.stop_gradient(jnp.cos(x))

        def f(mdl, x):
            y = mdl(x)
            return jnp.sum(y * w) * 2.0, jnp.tanh(y)

        v, bwd, aux = nn.vjp(f, PointField(), x, has_aux=True)
        _, gx = bwd(jnp.ones_like(v))
        return v * v + jnp.sum(aux ** 2) + jnp.sum(jax.lax.stop_gradient(gx) * x)


def case_vjp_closure_value():
    x = arr(5, 2, seed=81)
    field = {
        "Dense_0": {"kernel": arr(2, 6, seed=83, scale=0.9), "bias": arr(6, seed=84, scale=0.2)},
        "Dense_1": {"kernel": arr(6, 1, seed=85, scale=0.7), "bias": arr(1, seed=86, scale=0.1)},
    }
    variables = {"params": {"PointField_0": field}}
    loss, grads = jax.value_and_grad(lambda vs: VjpClosureValue().apply(vs, x))(variables)
    gx = jax.grad(lambda x: VjpClosureValue().apply(variables, x))(x)
    return {
        "x": x.tolist(),
        "variables": tolist(variables),
        "loss": float(loss),
        "grads": tolist(grads),
        "grad_x": gx.tolist(),
    }


OUT["vjp_closure_value"] = case_vjp_closure_value()

# 14b. Second order through the pullback of `nn.vjp` of a closure that is more than
# `mdl(x)` and reads a parameter of the enclosing module.
class VjpClosurePull(nn.Module):
    @nn.compact
    def __call__(self, x):
        s = self.param("s", nn.initializers.ones, ())
        y, bwd = nn.vjp(lambda mdl, x: jnp.tanh(mdl(x) * s), PointField(), x)
        _, gx = bwd(jnp.cos(y))
        return jnp.sum(gx * gx) + jnp.sum(y) * s


def case_vjp_closure_pullback():
    x = arr(5, 2, seed=101)
    field = {
        "Dense_0": {"kernel": arr(2, 6, seed=103, scale=0.9), "bias": arr(6, seed=104, scale=0.2)},
        "Dense_1": {"kernel": arr(6, 1, seed=105, scale=0.7), "bias": arr(1, seed=106, scale=0.1)},
    }
    variables = {"params": {"s": jnp.asarray(0.7), "PointField_0": field}}
    loss, grads = jax.value_and_grad(lambda vs: VjpClosurePull().apply(vs, x))(variables)
    gx = jax.grad(lambda x: VjpClosurePull().apply(variables, x))(x)
    return {
        "x": x.tolist(),
        "variables": tolist(variables),
        "loss": float(loss),
        "grads": tolist(grads),
        "grad_x": gx.tolist(),
    }


OUT["vjp_closure_pullback"] = case_vjp_closure_pullback()

# A PINN of plain layers: what reverse over reverse covers.
class MlpField(nn.Module):
    @nn.compact
    def __call__(self, x):
        h1 = jnp.tanh(nn.Dense(6)(x))
        h2 = nn.sigmoid(nn.Dense(6)(h1)) * h1 - 0.3 * h1
        h3 = h2 / (1.5 + h1 * h1) + jnp.exp(-h2)
        return jnp.sum(nn.Dense(1)(h3)) + jnp.mean(h2 * h2)


def case_pinn_mlp():
    params = {
        "Dense_0": {"kernel": arr(2, 6, seed=92, scale=0.9), "bias": arr(6, seed=93, scale=0.2)},
        "Dense_1": {"kernel": arr(6, 6, seed=94, scale=0.6), "bias": arr(6, seed=95, scale=0.2)},
        "Dense_2": {"kernel": arr(6, 1, seed=96, scale=0.7), "bias": arr(1, seed=97, scale=0.1)},
    }
    return pinn_case(MlpField, params, arr(5, 2, seed=91, scale=1.5))


OUT["pinn_mlp"] = case_pinn_mlp()


# A PINN whose field holds a submodule that loops.
class Residual(nn.Module):
    @nn.compact
    def __call__(self, h):
        r = self.param("r", nn.initializers.zeros, (6, 6))
        for _ in range(2):
            h = h + jnp.tanh(h @ r)
        return h


class NestedField(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = jnp.tanh(nn.Dense(6)(x))
        return jnp.sum(nn.Dense(1)(Residual()(h)))


def case_pinn_nested():
    params = {
        "Dense_0": {"kernel": arr(2, 6, seed=102, scale=0.9), "bias": arr(6, seed=103, scale=0.2)},
        "Residual_0": {"r": arr(6, 6, seed=104, scale=0.4)},
        "Dense_1": {"kernel": arr(6, 1, seed=105, scale=0.7), "bias": arr(1, seed=106, scale=0.1)},
    }
    return pinn_case(NestedField, params, arr(5, 2, seed=101, scale=1.5))


OUT["pinn_nested"] = case_pinn_nested()

with open("lifted_second_order.json", "w") as f:
    json.dump(OUT, f, indent=1)
