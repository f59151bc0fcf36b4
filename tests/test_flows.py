"""Potentials, Laplacians and the latent flow: each checked against an independent computation."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqx_ffvae as ff
from eqx_ffvae.flows import hutchinson_probes
from eqx_ffvae.potentials import hvp_grad_and_laplacian


@pytest.mark.parametrize("d", [2, 17, 64], ids=lambda d: f"d={d}")
@pytest.mark.parametrize("method", ["exact", "hvp"])
def test_exact_laplacian_is_hessian_trace(x64, getkey, d, method):
    pot = ff.MLPPotential(d, 32, depth=3, key=getkey())
    z, t = jr.normal(getkey(), (d,)), jr.uniform(getkey(), (), minval=0.0, maxval=8.0)
    expected = jnp.trace(jax.hessian(lambda x: pot(t, x))(z))
    got = ff.laplacian(pot, t, z, method=method)
    assert z.dtype == jnp.float64
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_forward_laplacian_gradient_is_velocity(x64, getkey):
    pot = ff.MLPPotential(9, 16, key=getkey())
    z = jr.normal(getkey(), (9,))
    grad, _ = pot.grad_and_laplacian(0.7, z)
    np.testing.assert_allclose(grad, ff.velocity(pot, 0.7, z), rtol=1e-10)


def test_forward_laplacian_gradients_match_hvp_reference(x64, getkey):
    """Reverse mode through the forward Laplacian against the d-HVP reference, in the weights and in
    z, with one set of weights per row as the batched flow uses them."""
    pots = eqx.filter_vmap(lambda k: ff.MLPPotential(7, 16, key=k))(jr.split(getkey(), 3))
    zs = jr.normal(getkey(), (3, 7))

    def objective(pots, zs, method):
        def one(pot, z):
            grad, lap = (
                pot.grad_and_laplacian(0.4, z) if method == "fast" else hvp_grad_and_laplacian(lambda x: pot(0.4, x), z)
            )
            return jnp.sum(jnp.sin(grad)) + lap**2

        return jnp.sum(eqx.filter_vmap(one)(pots, zs))

    fast = eqx.filter_grad(lambda pz: objective(*pz, "fast"))((pots, zs))
    reference = eqx.filter_grad(lambda pz: objective(*pz, "hvp"))((pots, zs))
    for got, want in zip(jax.tree.leaves(fast), jax.tree.leaves(reference)):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_hutchinson_is_unbiased(x64, getkey):
    d, n = 12, 4000
    pot = ff.MLPPotential(d, 32, key=getkey())
    z = jr.normal(getkey(), (d,))
    exact = ff.laplacian(pot, 0.5, z)
    keys = jr.split(getkey(), n)
    draws = jax.vmap(lambda k: ff.laplacian(pot, 0.5, z, method="hutchinson", key=k))(keys)
    stderr = jnp.std(draws) / jnp.sqrt(n)
    assert stderr > 0
    assert abs(jnp.mean(draws) - exact) < 3 * stderr


def test_hutchinson_probes_are_rademacher(getkey):
    eps = hutchinson_probes(getkey(), 64, 10)
    assert set(np.unique(np.asarray(eps))) == {-1.0, 1.0}


def test_euler_one_step_is_paper_update(getkey):
    pot = ff.MLPPotential(6, 16, key=getkey())
    z0 = jr.normal(getkey(), (6,))
    zs, logqs = ff.flow(pot, z0, 0.0, jnp.array([0.0, 1.0]))
    np.testing.assert_allclose(zs[0], z0)
    np.testing.assert_allclose(zs[1], z0 + ff.velocity(pot, 0.0, z0), rtol=1e-6)
    np.testing.assert_allclose(logqs[1], -ff.laplacian(pot, 0.0, z0), rtol=1e-6)


def test_log_density_change_matches_jacobian_determinant(x64, getkey):
    pot = ff.MLPPotential(3, 16, key=getkey())
    z0 = jr.normal(getkey(), (3,))
    ts = jnp.array([0.0, 1.0])

    def flow_map(z):
        zs, logqs = ff.flow(pot, z, 0.0, ts, solver=diffrax.Tsit5(), dt0=0.01)
        return zs[-1], logqs[-1]

    jac = jax.jacrev(lambda z: flow_map(z)[0])(z0)
    _, logdet = jnp.linalg.slogdet(jac)
    assert abs(logdet) > 1e-3, "the test potential must change volume for the check to mean anything"
    np.testing.assert_allclose(flow_map(z0)[1], -logdet, rtol=1e-3)


def test_flow_saves_every_requested_time(getkey):
    pot = ff.MLPPotential(4, 8, key=getkey())
    zs, logqs = ff.flow(pot, jr.normal(getkey(), (4,)), 1.5, jnp.arange(6.0), dt0=0.25)
    assert zs.shape == (6, 4) and logqs.shape == (6,)
    assert logqs[0] == 1.5


def test_flow_rejects_unknown_divergence(getkey):
    pot = ff.MLPPotential(4, 8, key=getkey())
    with pytest.raises(ValueError, match="'trace'"):
        ff.flow(pot, jnp.zeros(4), 0.0, jnp.arange(3.0), divergence="trace")


def test_hutchinson_flow_needs_key(getkey):
    pot = ff.MLPPotential(4, 8, key=getkey())
    with pytest.raises(ValueError, match="key"):
        ff.flow(pot, jnp.zeros(4), 0.0, jnp.arange(3.0), divergence="hutchinson")


def test_weighted_potential_composes_flows(getkey):
    bank = ff.PotentialBank(3, 5, 16, key=getkey())
    z = jr.normal(getkey(), (5,))
    w = jnp.array([1.0, 0.0, 1.0])
    combined = bank.combined(w)
    np.testing.assert_allclose(combined(0.3, z), bank.potential(0)(0.3, z) + bank.potential(2)(0.3, z), rtol=1e-5)
    grad, lap = combined.grad_and_laplacian(0.3, z)
    np.testing.assert_allclose(grad, ff.velocity(combined, 0.3, z), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(lap, jnp.trace(jax.hessian(lambda x: combined(0.3, x))(z)), rtol=1e-4)


def test_public_flow_functions_jit_and_vmap(getkey):
    pot = ff.MLPPotential(4, 8, key=getkey())
    zs = jr.normal(getkey(), (7, 4))
    keys = jr.split(getkey(), 7)
    vel = jax.jit(jax.vmap(ff.velocity, in_axes=(None, None, 0)))(pot, 0.5, zs)
    lap = eqx.filter_jit(jax.vmap(lambda z: ff.laplacian(pot, 0.5, z)))(zs)
    hut = eqx.filter_jit(jax.vmap(lambda z, k: ff.laplacian(pot, 0.5, z, method="hutchinson", key=k)))(zs, keys)
    paths, logqs = eqx.filter_jit(jax.vmap(lambda z: ff.flow(pot, z, 0.0, jnp.arange(4.0))))(zs)
    assert vel.shape == (7, 4) and lap.shape == hut.shape == (7,) and paths.shape == (7, 4, 4)
    assert logqs.shape == (7, 4)
