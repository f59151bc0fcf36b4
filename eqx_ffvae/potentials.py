"""Scalar potentials u^k(t, z), forces f^k(t, z) and the bank of K of each (docs/method.md §3).

A potential returns one scalar for one latent; its gradient is the velocity of flow k and its
Laplacian the rate at which log-density falls along it. `MLPPotential` also computes
(∇u, Δu) in a single forward-mode pass — value, Jacobian and Laplacian of each layer pushed
forward together — which is exact and cheaper than d Hessian-vector products.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Scalar, ScalarLike


def hvp_grad_and_laplacian(
    u: Callable[[Float[Array, " d"]], Scalar], z: Float[Array, " d"]
) -> tuple[Float[Array, " d"], Scalar]:
    """(∇u, Δu) with Δu = Σ_i e_iᵀ H e_i from d Hessian-vector products (forward-over-reverse)."""
    basis = jnp.eye(z.shape[0], dtype=z.dtype)
    grads, hvps = jax.vmap(lambda e: jax.jvp(jax.grad(u), (z,), (e,)))(basis)
    return grads[0], jnp.trace(hvps)


def autodiff_grad_and_hessian(
    u: Callable[[Float[Array, " d"]], Scalar], z: Float[Array, " d"]
) -> tuple[Float[Array, " d"], Float[Array, "d d"]]:
    """(∇u, ∇²u) by `jax.grad` and `jax.hessian`."""
    return jax.grad(u)(z), jax.hessian(u)(z)


class AbstractPotential(eqx.Module):
    """A scalar field u(t, z) with its exact derivatives in z: every final potential gives all three.

    `AbstractAutodiffPotential` gives the derivatives by automatic differentiation, so that a new
    potential needs only `__call__`; `MLPPotential` computes them in closed form.
    """

    @abc.abstractmethod
    def __call__(self, t: ScalarLike, z: Float[Array, " d"]) -> Scalar:
        """u(t, z)."""

    @abc.abstractmethod
    def grad_and_laplacian(self, t: ScalarLike, z: Float[Array, " d"]) -> tuple[Float[Array, " d"], Scalar]:
        """(∇_z u, Δ_z u), exactly."""

    @abc.abstractmethod
    def grad_and_hessian(self, t: ScalarLike, z: Float[Array, " d"]) -> tuple[Float[Array, " d"], Float[Array, "d d"]]:
        """(∇_z u, ∇²_z u), exactly."""


class AbstractAutodiffPotential(AbstractPotential):
    """A potential whose subclass gives only `__call__`: the Laplacian by d Hessian-vector products
    (`hvp_grad_and_laplacian`), the Hessian by `jax.hessian`."""

    def grad_and_laplacian(self, t: ScalarLike, z: Float[Array, " d"]) -> tuple[Float[Array, " d"], Scalar]:
        return hvp_grad_and_laplacian(lambda x: self(t, x), z)

    def grad_and_hessian(self, t: ScalarLike, z: Float[Array, " d"]) -> tuple[Float[Array, " d"], Float[Array, "d d"]]:
        return autodiff_grad_and_hessian(lambda x: self(t, x), z)


class SinusoidalEmbedding(eqx.Module):
    """Scalar time → `[sin(t ω_i), cos(t ω_i)]` with geometric frequencies ω_i ∈ (1/max_period, 1]."""

    dim: int = eqx.field(static=True)
    max_period: float = eqx.field(static=True)

    def __init__(self, dim: int, max_period: float = 100.0):
        if dim % 2:
            raise ValueError(f"time embedding dim must be even, got {dim}")
        self.dim, self.max_period = dim, max_period

    def __call__(self, t: Scalar | float) -> Float[Array, " e"]:
        half = self.dim // 2
        freqs = jnp.exp(-math.log(self.max_period) * jnp.arange(half, dtype=jnp.float32) / half)
        angles = jnp.asarray(t, jnp.result_type(float)) * freqs
        return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)])


def _activation_derivatives(act: Callable, a: Array) -> tuple[Array, Array, Array]:
    """σ(a), σ'(a), σ''(a) elementwise, for any elementwise activation."""
    ones = jnp.ones_like(a)

    def first(x):
        return jax.jvp(act, (x,), (ones,))

    (s0, s1), (_, s2) = jax.jvp(first, (a,), (ones,))
    return s0, s1, s2


class _TimeMLP(eqx.Module):
    """MLP on `[z; emb(t)]` with a scalar output; shared by potentials and forces."""

    layers: tuple[eqx.nn.Linear, ...]
    embed: SinusoidalEmbedding
    activation: Callable = eqx.field(static=True)

    def __init__(
        self, latent_dim: int, width: int, depth: int, time_dim: int, activation: Callable, out_bias: bool, *, key
    ):
        sizes = [latent_dim + time_dim] + [width] * depth + [1]
        keys = jr.split(key, len(sizes) - 1)
        biases = [True] * (len(sizes) - 2) + [out_bias]
        self.layers = tuple(
            eqx.nn.Linear(i, o, use_bias=b, key=k) for i, o, b, k in zip(sizes[:-1], sizes[1:], biases, keys)
        )
        self.embed = SinusoidalEmbedding(time_dim)
        self.activation = activation

    def __call__(self, t: ScalarLike, z: Float[Array, " d"]) -> Scalar:
        x = jnp.concatenate([z, self.embed(t).astype(z.dtype)])
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.layers[-1](x)[0]


class MLPPotential(AbstractPotential):
    """u(t, z) = MLP([z; sinusoidal(t)]) with a smooth activation (tanh by default).

    The output layer has no bias: a constant shift of u changes neither ∇u, Δu nor the HJ residual.
    """

    mlp: _TimeMLP

    def __init__(
        self,
        latent_dim: int,
        width: int,
        *,
        depth: int = 2,
        time_dim: int = 16,
        activation: Callable = jnp.tanh,
        key: PRNGKeyArray,
    ):
        self.mlp = _TimeMLP(latent_dim, width, depth, time_dim, activation, False, key=key)

    def __call__(self, t: ScalarLike, z: Float[Array, " d"]) -> Scalar:
        return self.mlp(t, z)

    def grad_and_laplacian(self, t: ScalarLike, z: Float[Array, " d"]) -> tuple[Float[Array, " d"], Scalar]:
        """Forward Laplacian: push (a, ∂a/∂z, Δa) through each layer; the first Jacobian is W[:, :d]."""
        d = z.shape[0]
        first, *rest = self.mlp.layers
        x = jnp.concatenate([z, self.mlp.embed(t).astype(z.dtype)])
        a = first(x)
        jac = first.weight[:, :d]
        lap = jnp.zeros_like(a)
        for layer in rest:
            s0, s1, s2 = _activation_derivatives(self.mlp.activation, a)
            lap = s1 * lap + s2 * jnp.sum(jac**2, axis=1)
            jac = s1[:, None] * jac
            a = layer(s0)
            jac = layer.weight @ jac
            lap = layer.weight @ lap
        return jac[0], lap[0]

    def grad_and_hessian(self, t: ScalarLike, z: Float[Array, " d"]) -> tuple[Float[Array, " d"], Float[Array, "d d"]]:
        """Exact Hessian of the MLP, Σ_l J_lᵀ diag(σ''(a_l) ⊙ ∂u/∂h_l) J_l over its hidden layers (a_l the
        pre-activation, h_l = σ(a_l), J_l = ∂a_l/∂z pushed forward): a few d×width matmuls instead of
        d Hessian-vector products."""
        d = z.shape[0]
        first, *rest = self.mlp.layers
        a = first(jnp.concatenate([z, self.mlp.embed(t).astype(z.dtype)]))
        jac = first.weight[:, :d]
        hidden = []
        for layer in rest:
            s0, s1, s2 = _activation_derivatives(self.mlp.activation, a)
            hidden.append((jac, s1, s2, layer.weight))
            jac = layer.weight @ (s1[:, None] * jac)
            a = layer(s0)
        upstream = jnp.ones((1,), z.dtype)
        hess = jnp.zeros((d, d), z.dtype)
        for jac_l, s1, s2, weight in reversed(hidden):
            dh = weight.T @ upstream
            hess = hess + jac_l.T @ ((s2 * dh)[:, None] * jac_l)
            upstream = s1 * dh
        return jac[0], hess


class Force(eqx.Module):
    """f(t, z) = -(MLP([z; sinusoidal(t)]))², non-positive by construction (docs/method.md §3)."""

    mlp: _TimeMLP

    def __init__(
        self,
        latent_dim: int,
        width: int,
        *,
        depth: int = 2,
        time_dim: int = 16,
        activation: Callable = jnp.tanh,
        key: PRNGKeyArray,
    ):
        self.mlp = _TimeMLP(latent_dim, width, depth, time_dim, activation, True, key=key)

    def __call__(self, t: ScalarLike, z: Float[Array, " d"]) -> Scalar:
        return -(self.mlp(t, z) ** 2)


def select_stacked(stacked: eqx.Module, k: Int[ArrayLike, ""]) -> eqx.Module:
    """Member k of a module built with `eqx.filter_vmap` (every array leaf has a leading K axis).

    Plain indexing: under `vmap` over k (each sequence its own flow) it is a gather of whole
    members and its gradient a scatter-add of whole members (a one-hot product or a masked sum is
    an order of magnitude slower: docs/performance.md, "Where the numbers in the code come from").
    """
    params, static = eqx.partition(stacked, eqx.is_array)
    return eqx.combine(jax.tree.map(lambda p: p[k], params), static)


def _weighted_sum(stacked: eqx.Module, weights: Float[Array, " k"], t: ScalarLike, z: Float[Array, " d"]) -> Scalar:
    """Σ_k w_k m^k(t, z) over the K members of a stacked module, in one vmapped call."""
    return jnp.dot(weights, eqx.filter_vmap(lambda m: m(t, z))(stacked))


class WeightedPotential(AbstractPotential):
    """u(t, z) = Σ_k w_k u^k(t, z): K stacked potentials evaluated in one vmapped call.

    With one-hot weights it is flow k; with two or three ones it composes flows (paper Fig. 6),
    dz/dt = Σ_k w_k ∇u^k. Gradient and Laplacian are linear in u, so they combine the same way.
    """

    stacked: AbstractPotential
    weights: Float[Array, " k"]

    def __call__(self, t: ScalarLike, z: Float[Array, " d"]) -> Scalar:
        return _weighted_sum(self.stacked, self.weights, t, z)

    def grad_and_laplacian(self, t: ScalarLike, z: Float[Array, " d"]) -> tuple[Float[Array, " d"], Scalar]:
        grads, laps = eqx.filter_vmap(lambda p: p.grad_and_laplacian(t, z))(self.stacked)
        return self.weights @ grads, jnp.dot(self.weights, laps)

    def grad_and_hessian(self, t: ScalarLike, z: Float[Array, " d"]) -> tuple[Float[Array, " d"], Float[Array, "d d"]]:
        return autodiff_grad_and_hessian(lambda x: self(t, x), z)


class WeightedForce(eqx.Module):
    """f(t, z) = Σ_k w_k f^k(t, z): K stacked forces in one vmapped call (one-hot weights: force k)."""

    stacked: eqx.Module
    weights: Float[Array, " k"]

    def __call__(self, t: ScalarLike, z: Float[Array, " d"]) -> Scalar:
        return _weighted_sum(self.stacked, self.weights, t, z)


class PotentialBank(eqx.Module):
    """K potentials and (optionally) K forces, each stored once with a leading axis of size K.

    `with_forces=False` (a model with no Hamilton–Jacobi term, e.g. PoFlow) keeps no forces; the
    potentials are drawn from the same key either way. `make_potential(key)` / `make_force(key)` build
    one member of another form (default: `MLPPotential` / `Force` of the given sizes); a force returns
    f(t, z) ≤ 0 as `Force` does.
    """

    potentials: AbstractPotential
    forces: eqx.Module | None
    num_flows: int = eqx.field(static=True)

    def __init__(
        self,
        num_flows: int,
        latent_dim: int,
        width: int,
        *,
        depth: int = 2,
        time_dim: int = 16,
        with_forces: bool = True,
        make_potential: Callable[[PRNGKeyArray], AbstractPotential] | None = None,
        make_force: Callable[[PRNGKeyArray], eqx.Module] | None = None,
        key: PRNGKeyArray,
    ):
        pkey, fkey = jr.split(key)
        if make_potential is None:
            make_potential = lambda k: MLPPotential(latent_dim, width, depth=depth, time_dim=time_dim, key=k)  # noqa: E731
        if make_force is None:
            make_force = lambda k: Force(latent_dim, width, depth=depth, time_dim=time_dim, key=k)  # noqa: E731
        self.potentials = eqx.filter_vmap(make_potential)(jr.split(pkey, num_flows))
        self.forces = eqx.filter_vmap(make_force)(jr.split(fkey, num_flows)) if with_forces else None
        self.num_flows = num_flows

    def potential(self, k: Int[ArrayLike, ""]) -> AbstractPotential:
        return select_stacked(self.potentials, k)

    def force(self, k: Int[ArrayLike, ""]) -> eqx.Module:
        return select_stacked(self._forces(), k)

    def _forces(self) -> eqx.Module:
        if self.forces is None:
            raise ValueError("this PotentialBank was built with with_forces=False: it has no forces")
        return self.forces

    def combined(self, weights: Float[Array, " k"]) -> WeightedPotential:
        """The potential Σ_k w_k u^k (composition of flows)."""
        return WeightedPotential(self.potentials, weights)

    def combined_force(self, weights: Float[Array, " k"]) -> WeightedForce:
        """The force Σ_k w_k f^k (with one-hot weights: force k, evaluated with all K weights)."""
        return WeightedForce(self._forces(), weights)
