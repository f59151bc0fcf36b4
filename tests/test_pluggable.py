"""The FFVAE with a user's own parts: MLP encoder/decoder on vector sequences, a user-written potential."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jaxtyping import Array, Float, Scalar

import eqx_ffvae as ff
from eqx_ffvae import nn, pixels
from eqx_ffvae.ffvae_inference import WeakFFVAE
from eqx_ffvae.layout import Layout
from eqx_ffvae.potentials import AbstractAutodiffPotential, PotentialBank
from eqx_ffvae.training import init_opt_state, make_optimizer, make_step

D, LATENT, K, T = 6, 3, 2, 4


class QuadraticPotential(AbstractAutodiffPotential):
    """A user's potential: u(t, z) = b·z + ½ zᵀ A z with a learned symmetric A (gradient and
    Laplacian by autodiff, from `AbstractAutodiffPotential`)."""

    a: Float[Array, "d d"]
    b: Float[Array, " d"]

    def __init__(self, dim: int, *, key):
        a_key, b_key = jr.split(key)
        self.a = 0.1 * jr.normal(a_key, (dim, dim))
        self.b = 0.1 * jr.normal(b_key, (dim,))

    def __call__(self, t, z: Float[Array, " d"]) -> Scalar:
        sym = 0.5 * (self.a + self.a.T)
        return jnp.dot(self.b, z) + 0.5 * z @ sym @ z


def _vector_sequences(key, n: int = 16):
    """Vectors in [0, 1] that drift up (k = 0) or down (k = 1) in every coordinate over T+1 frames."""
    x0_key, k_key = jr.split(key)
    x0 = jr.uniform(x0_key, (n, 1, D), minval=0.3, maxval=0.7)
    ks = jr.randint(k_key, (n,), 0, K)
    steps = jnp.arange(T + 1)[None, :, None] * 0.05 * jnp.where(ks == 0, 1.0, -1.0)[:, None, None]
    return jnp.clip(x0 + steps, 0, 1), ks


def _model(key, pixels=None, weak=False, potential=False):
    enc_key, dec_key, flow_key, model_key = jr.split(key, 4)
    config = ff.FFVAEConfig(num_frames=T + 1, latent_dim=LATENT, num_flows=K, potential_width=8, weakly_supervised=weak)
    parts = {
        "encoder": nn.MLPEncoder(D, LATENT, 16, key=enc_key),
        "decoder": nn.MLPDecoder(D, LATENT, 16, pixels=pixels, key=dec_key),
    }
    if potential:
        parts["flows"] = PotentialBank(
            K, LATENT, 8, make_potential=lambda k: QuadraticPotential(LATENT, key=k), key=flow_key
        )
    if weak:
        parts["sequence_encoder"] = eqx.nn.Sequential(
            [eqx.nn.Lambda(jnp.ravel), eqx.nn.Linear((T + 1) * D, K, key=flow_key)]
        )
        return WeakFFVAE(config, key=model_key, **parts)
    return ff.FlowFactorizedVAE(config, key=model_key, **parts)


@pytest.mark.parametrize(
    "pixels, weak, potential",
    [(None, False, False), (pixels.GaussianPixels(D), False, True), (None, True, True)],
    ids=["mlp-bernoulli", "mlp-gaussian-own-potential", "weak-own-potential"],
)
def test_own_parts_train_on_vector_sequences(getkey, pixels, weak, potential):
    model = _model(getkey(), pixels, weak, potential)
    assert isinstance(model.encoder, nn.MLPEncoder) and isinstance(model.decoder, nn.MLPDecoder)
    if potential:
        assert isinstance(model.flows.potential(0), QuadraticPotential)
    frames, ks = _vector_sequences(getkey())
    optimizer = make_optimizer(3e-3)
    opt_state = init_opt_state(model, optimizer)
    step = make_step(optimizer, slice_size=8)
    start = jax.tree.map(lambda a: jnp.array(a, copy=True), eqx.filter(model, eqx.is_array))  # the step donates
    losses = []
    for i in range(30):
        batch = {"frames": jnp.array(frames, copy=True), "k": jnp.array(ks, copy=True)}
        model, opt_state, loss, _ = step(model, opt_state, batch, jr.fold_in(getkey(), i))
        losses.append(float(loss))
    assert np.all(np.isfinite(losses)) and np.mean(losses[-5:]) < np.mean(losses[:5])
    moved = jax.tree.map(
        lambda a, b: bool(jnp.any(a != b)), eqx.filter(start, eqx.is_array), eqx.filter(model, eqx.is_array)
    )
    assert all(jax.tree.leaves(moved.encoder)) and all(jax.tree.leaves(moved.decoder.mlp))
    if potential:
        assert all(jax.tree.leaves(moved.flows.potentials))


def test_own_decoder_batched_forms_equal_the_frame_by_frame_likelihood(getkey):
    """`AbstractFrameDecoder` derives every batched form from one frame's likelihood: laid out or not,
    the FFVAE's batch loss equals the vmap of its per-sequence loss, in values and gradients."""
    model = _model(getkey(), pixels.GaussianPixels(D), potential=True)
    frames, ks = _vector_sequences(getkey(), 8)
    key = getkey()

    def laid_out(m):
        return m.batch_loss(frames, ks, key=key, step=None, layout=Layout(4))[0]

    def per_sequence(m):
        return jnp.mean(jax.vmap(lambda x, k, kk: m.loss(x, k, key=kk)[0])(frames, ks, jr.split(key, 8)))

    (v1, g1), (v2, g2) = (eqx.filter_jit(eqx.filter_value_and_grad(f))(model) for f in (laid_out, per_sequence))
    np.testing.assert_allclose(v1, v2, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_a_bank_of_the_wrong_size_is_named(getkey):
    bank = eqx.filter_eval_shape(lambda key: PotentialBank(3, LATENT, 8, key=key), getkey())
    config = ff.FFVAEConfig(num_frames=T + 1, latent_dim=LATENT, num_flows=K)
    with pytest.raises(ValueError, match="has 3 flows, the config num_flows=2"):
        eqx.filter_eval_shape(lambda key: ff.FlowFactorizedVAE(config, key=key, flows=bank), getkey())
