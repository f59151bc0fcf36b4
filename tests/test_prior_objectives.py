"""The heat-equation prior and the Hamilton–Jacobi residual against their defining PDEs."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jaxtyping import Array, Float, Scalar, ScalarLike

import eqx_ffvae as ff
from eqx_ffvae import objectives as obj


@pytest.mark.parametrize("k", [0, 2])
def test_prior_solves_heat_equation(x64, getkey, k):
    prior = ff.DiffusionPrior(3, init=0.7)
    prior = prior.__class__.__new__(prior.__class__)
    object.__setattr__(prior, "raw_diffusion", jr.normal(getkey(), (3,), jnp.float64))
    z = jr.normal(getkey(), (3,))
    t, h = 1.3, 1e-5
    density = lambda t, z: jnp.exp(prior.log_prob(k, t, z))  # noqa: E731
    dp_dt = (density(t + h, z) - density(t - h, z)) / (2 * h)
    laplacian_p = jnp.trace(jax.hessian(lambda x: density(t, x))(z))
    np.testing.assert_allclose(dp_dt, prior.diffusion[k] * laplacian_p, rtol=1e-6)


def test_prior_starts_at_standard_normal(getkey):
    prior = ff.DiffusionPrior(2)
    z = jr.normal(getkey(), (5,))
    expected = -0.5 * (5 * jnp.log(2 * jnp.pi) + jnp.sum(z**2))
    np.testing.assert_allclose(prior.log_prob(1, 0.0, z), expected, rtol=1e-6)
    np.testing.assert_allclose(prior.diffusion, [1.0, 1.0], rtol=1e-6)


def test_prior_rejects_non_positive_init():
    with pytest.raises(ValueError, match="-1.0"):
        ff.DiffusionPrior(2, init=-1.0)


class QuadraticPotential(ff.AbstractAutodiffPotential):
    """u = ‖z‖² / (2(t + 1)) + ε Σ sin(z): solves ∂_t u + ½‖∇u‖² = 0 exactly when ε = 0."""

    eps: float = 0.0

    def __call__(self, t: ScalarLike, z: Float[Array, " d"]) -> Scalar:
        return jnp.sum(z**2) / (2 * (t + 1)) + self.eps * jnp.sum(jnp.sin(z))


def zero_force(t, z):
    return jnp.zeros((), z.dtype)


def test_hj_residual_vanishes_for_analytic_solution(x64, getkey):
    ts = jr.uniform(getkey(), (16,), maxval=8.0)
    zs = jr.normal(getkey(), (16, 7))
    res = jax.vmap(obj.hj_residual, in_axes=(None, None, 0, 0))(QuadraticPotential(), zero_force, ts, zs)
    np.testing.assert_allclose(res, 0.0, atol=1e-12)
    assert obj.hj_loss(QuadraticPotential(), zero_force, ts, zs) < 1e-24
    assert obj.hj_loss(QuadraticPotential(eps=0.1), zero_force, ts, zs) > 1e-4


def test_hj_residual_is_per_sample(getkey):
    """Another sample in the batch must not change a sample's residual (no batch statistics)."""
    pot, force = ff.MLPPotential(4, 8, key=getkey()), ff.Force(4, 8, key=getkey())
    z = jr.normal(getkey(), (4,))
    alone = obj.hj_residual(pot, force, 0.5, z)
    zs = jnp.stack([z, 10 * jr.normal(getkey(), (4,))])
    batched = jax.vmap(obj.hj_residual, in_axes=(None, None, None, 0))(pot, force, 0.5, zs)
    np.testing.assert_allclose(batched[0], alone, rtol=1e-6)


def test_force_is_non_positive(getkey):
    force = ff.Force(4, 8, key=getkey())
    values = jax.vmap(force, in_axes=(None, 0))(0.2, 3 * jr.normal(getkey(), (100, 4)))
    assert jnp.all(values <= 0)


def test_kl_terms_against_monte_carlo(getkey):
    mu, logvar = jr.normal(getkey(), (3,)), 0.3 * jr.normal(getkey(), (3,))
    z = mu[None] + jnp.exp(0.5 * logvar)[None] * jr.normal(getkey(), (200_000, 3))
    std_normal = -0.5 * jnp.sum(jnp.log(2 * jnp.pi) + z**2, axis=-1)
    mc = jnp.mean(jax.vmap(obj.gaussian_log_prob, in_axes=(0, None, None))(z, mu, logvar) - std_normal)
    np.testing.assert_allclose(obj.kl_to_standard_normal(mu, logvar), mc, rtol=2e-2)
    logits = jnp.array([2.0, 0.0, -1.0])
    q = jax.nn.softmax(logits)
    np.testing.assert_allclose(obj.kl_to_uniform(logits), jnp.sum(q * jnp.log(3 * q)), rtol=1e-6)


def test_bernoulli_log_likelihood_and_its_derivatives_match_the_definition(x64, getkey):
    """The shared-exponential rule against log p = x log σ(l) + (1 − x) log(1 − σ(l)), written out,
    at logits from −60 to 60: value, ∂/∂(logits, x) and the Hessian in the logits."""
    logits = jnp.concatenate([jnp.array([-60.0, -1e-3, 0.0, 1e-3, 60.0]), 4 * jr.normal(getkey(), (19,))])
    x = jr.uniform(getkey(), logits.shape)

    def definition(logits, x):
        return jnp.sum(x * jax.nn.log_sigmoid(logits) + (1 - x) * jax.nn.log_sigmoid(-logits))

    np.testing.assert_allclose(obj.bernoulli_log_likelihood(logits, x), definition(logits, x), rtol=1e-12)
    for got, want in zip(
        jax.grad(obj.bernoulli_log_likelihood, (0, 1))(logits, x), jax.grad(definition, (0, 1))(logits, x)
    ):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(
        jax.hessian(obj.bernoulli_log_likelihood)(logits, x), jax.hessian(definition)(logits, x), atol=1e-14
    )
