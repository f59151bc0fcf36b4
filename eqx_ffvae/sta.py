"""Sparse Transformation Analysis (STA; Song, Keller, Yue, Perona, Welling, arXiv 2410.05564): K latent
flows found without any label, acting in sparse step-by-step combinations (docs/method.md §8).

Flow k's velocity is a curl-free part ∇u^k (a potential with the FFVAE's Hamilton–Jacobi regulariser)
plus a divergence-free part r^k (`DivergenceFreeField`, divergence-free by construction). At step
t → t+1 flow k runs at control c_t^k = s_t^k g_t^k: a spike s ∈ {0, 1} (whether it acts) times a slab
g (how fast), z_{t+1} = z_t + Σ_k c_t^k v^k(t, z_t). The spikes follow a Markov prior per flow, the
slabs N(slab_mean, slab_std²); q(s_t, g_t | x_t, x_{t+1}) comes from the pair of frames
(`pair_encoder`), q(z_0 | x_0) from the image encoder.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Scalar, ScalarLike

from . import distributions as dist
from . import objectives as obj
from .conv import ConvImpl
from .flows import frame_times
from .interfaces import AbstractSparseControlModel, Terms, mean_sequence_loss
from .layout import Layout
from .nn import ConvDecoder, ConvEncoder, ConvNet
from .pixels import PixelLikelihoodName, pixel_likelihood
from .potentials import PotentialBank


@dataclasses.dataclass(frozen=True)
class STAConfig:
    """Every architectural and objective choice of STA; hashable, so it is static under jit.

    Spike prior per flow: p(s_0 = 1) = `spike_initial`, p(s_{t+1} = 1 | s_t = 1) = `spike_stay`,
    p(s_{t+1} = 1 | s_t = 0) = `spike_start` (the defaults' stationary rate is 1/3: one of three flows on
    per step); slab prior N(`slab_mean`, `slab_std`²). Training draws spikes from the binary concrete
    relaxation at `spike_temperature`. `curl_rank` antisymmetric matrices make each divergence-free
    field (`divergence_free=False` drops it: curl-free flows only).
    """

    image_shape: tuple[int, int, int] = (3, 28, 28)
    num_frames: int = 9
    latent_dim: int = 32
    num_flows: int = 3
    width: int = 32
    potential_width: int = 128
    potential_depth: int = 2
    time_dim: int = 16
    curl_width: int = 64
    curl_rank: int = 4
    divergence_free: bool = True
    hj_weight: float = 1.0
    spike_temperature: float = 0.5
    spike_initial: float = 1.0 / 3.0
    spike_stay: float = 0.8
    spike_start: float = 0.1
    slab_mean: float = 1.0
    slab_std: float = 0.1
    conv_impl: ConvImpl = "fast"
    likelihood: PixelLikelihoodName = "bernoulli"
    pixel_scale: float | None = None

    def __post_init__(self):
        if self.num_frames < 2:
            raise ValueError(f"num_frames must be ≥ 2 (x_0 and at least one transformed frame), got {self.num_frames}")
        for name in ("spike_initial", "spike_stay", "spike_start"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} is a probability strictly between 0 and 1, got {value}")
        if self.spike_temperature <= 0 or self.slab_std <= 0:
            raise ValueError(
                f"spike_temperature and slab_std must be > 0, got {self.spike_temperature} and {self.slab_std}"
            )
        if self.curl_rank < 1:
            raise ValueError(f"curl_rank must be ≥ 1, got {self.curl_rank}")
        pixel_likelihood(self.likelihood, self.image_shape[0], self.pixel_scale)  # raises on a bad choice


class DivergenceFreeField(eqx.Module):
    """r(z) = Σ_m S_m ∇φ_m(z) with S_m = B_m − B_mᵀ antisymmetric and φ: R^d → R^M an MLP: the row-wise
    divergence of the antisymmetric matrix field A(z) = Σ_m φ_m(z) S_m, so ∇·r = Σ_m Σ_ij S_m,ij ∂_i∂_j φ_m
    = 0 by construction (an antisymmetric matrix against a symmetric Hessian): it moves points without
    changing the density it carries."""

    mlp: eqx.nn.MLP
    mixing: Float[Array, "m d d"]

    def __init__(self, latent_dim: int, width: int, rank: int, *, key: PRNGKeyArray):
        mlp_key, mix_key = jr.split(key)
        self.mlp = eqx.nn.MLP(latent_dim, rank, width, depth=1, activation=jnp.tanh, key=mlp_key)
        self.mixing = jr.normal(mix_key, (rank, latent_dim, latent_dim)) / latent_dim

    def __call__(self, z: Float[Array, " d"]) -> Float[Array, " d"]:
        jac = jax.jacrev(self.mlp)(z)  # (M, d): ∇φ_m in row m
        antisymmetric = self.mixing - jnp.swapaxes(self.mixing, 1, 2)
        return jnp.einsum("mij,mj->i", antisymmetric, jac)


def _kl_bernoulli(logit: Array, p: ArrayLike) -> Array:
    """KL[Bernoulli(sigmoid(logit)) ‖ Bernoulli(p)], elementwise."""
    q = jax.nn.sigmoid(logit)
    return q * (jax.nn.log_sigmoid(logit) - jnp.log(p)) + (1 - q) * (jax.nn.log_sigmoid(-logit) - jnp.log1p(-p))


class SparseTransformationVAE(AbstractSparseControlModel):
    """STA: `loss` of one sequence is −ELBO + λ_HJ · HJ residual (docs/method.md §8); no label is read (`k`
    is ignored everywhere). `batch_loss` is the mean of `loss` over the batch."""

    encoder: ConvEncoder
    decoder: ConvDecoder
    flows: PotentialBank
    curls: DivergenceFreeField
    pair_encoder: ConvNet
    config: STAConfig = eqx.field(static=True)

    def __init__(self, config: STAConfig, *, key: PRNGKeyArray):
        enc_key, dec_key, flow_key, curl_key, pair_key = jr.split(key, 5)
        c = config
        self.encoder = ConvEncoder(c.image_shape, c.latent_dim, c.width, impl=c.conv_impl, key=enc_key)
        self.decoder = ConvDecoder(
            c.image_shape,
            c.latent_dim,
            c.width,
            pixels=pixel_likelihood(c.likelihood, c.image_shape[0], c.pixel_scale),
            impl=c.conv_impl,
            key=dec_key,
        )
        self.flows = PotentialBank(
            c.num_flows, c.latent_dim, c.potential_width, depth=c.potential_depth, time_dim=c.time_dim, key=flow_key
        )
        self.curls = eqx.filter_vmap(lambda k: DivergenceFreeField(c.latent_dim, c.curl_width, c.curl_rank, key=k))(
            jr.split(curl_key, c.num_flows)
        )
        channels, h, w = c.image_shape
        self.pair_encoder = ConvNet(2 * channels, (h, w), c.width, 3 * c.num_flows, impl=c.conv_impl, key=pair_key)
        self.config = config

    # --- the parts -------------------------------------------------------------------------------

    @property
    def num_flows(self) -> int:
        return self.config.num_flows

    def encode(self, x: Float[Array, "*x"]) -> tuple[Float[Array, " d"], Float[Array, " d"]]:
        return self.encoder(x)

    def decode(self, z: Float[Array, " d"]) -> Float[Array, "*x"]:
        return self.decoder(z)

    def velocities(self, t: ScalarLike, z: Float[Array, " d"]) -> Float[Array, "k d"]:
        """v^k(t, z) = ∇u^k(t, z) + r^k(z) of every flow."""
        grads = eqx.filter_vmap(lambda pot: jax.grad(lambda x: pot(t, x))(z))(self.flows.potentials)
        if not self.config.divergence_free:
            return grads
        return grads + eqx.filter_vmap(lambda field: field(z))(self.curls)

    def controlled_path(self, z0: Float[Array, " d"], controls: Float[Array, "t k"]) -> Float[Array, "n d"]:
        """z_{t+1} = z_t + Σ_k c_t^k v^k(t, z_t) from z0: frames 0…T (one step per frame, the paper's update)."""

        def step(z, tc):
            t, c = tc
            z = z + c @ self.velocities(t, z)
            return z, z

        ts = jnp.arange(controls.shape[0], dtype=z0.dtype)
        _, zs = jax.lax.scan(step, z0, (ts, controls))
        return jnp.concatenate([z0[None], zs])

    def pair_posterior(self, x_seq: Float[Array, "n c h w"]) -> tuple[Array, Array, Array]:
        """(spike logits, slab means, slab log-variances), each (T, K): q(s_t, g_t | x_t, x_{t+1})."""
        pairs = jnp.concatenate([x_seq[:-1], x_seq[1:]], axis=1)
        out = jax.vmap(self.pair_encoder)(pairs)
        k = self.config.num_flows
        # the slab posterior starts at the prior (mean and width)
        return (
            out[:, :k],
            self.config.slab_mean + out[:, k : 2 * k],
            2 * jnp.log(self.config.slab_std) + out[:, 2 * k :],
        )

    def spike_probabilities(self, x_seq: Float[Array, "n ..."]) -> Float[Array, "t k"]:
        return jax.nn.sigmoid(self.pair_posterior(x_seq)[0])

    def controls(self, x_seq: Float[Array, "n ..."]) -> Float[Array, "t k"]:
        logits, slab_mu, _ = self.pair_posterior(x_seq)
        return jnp.where(logits > 0, slab_mu, 0.0)

    def flow_posterior_logits(self, x_seq: Float[Array, "n ..."]) -> Float[Array, " k"]:
        """log of each flow's mean spike probability over the steps: the flow a sequence uses most."""
        return jnp.log(jnp.mean(self.spike_probabilities(x_seq), axis=0) + 1e-6)

    def transport(
        self,
        k: Int[ArrayLike, ""],
        z0: Float[Array, " d"],
        ts: Float[ArrayLike, " n"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "n d"]:
        """Flow k alone at control 1 from z0, at the frame times 0…n−1 (`ts`, default 0…T: STA moves in
        whole steps)."""
        return self.compose(jax.nn.one_hot(k, self.num_flows), z0, ts, key=key)

    def compose(
        self,
        weights: Float[Array, " k"],
        z0: Float[Array, " d"],
        ts: Float[ArrayLike, " n"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "n d"]:
        """The flows at constant controls `weights` at every step from z0, at the frame times 0…n−1."""
        del key
        n = self.config.num_frames if ts is None else len(ts)
        return self.controlled_path(z0, jnp.broadcast_to(weights, (n - 1, self.num_flows)))

    # --- the objective ---------------------------------------------------------------------------

    def spike_kl(self, logits: Float[Array, "t k"]) -> Scalar:
        """KL[q(s) ‖ p(s)] of the mean-field q against the Markov prior, exactly:
        Σ_t E_{q(s_{t−1})} KL[q(s_t) ‖ p(s_t | s_{t−1})], the first step against p(s_0)."""
        c = self.config
        q_prev = jax.nn.sigmoid(logits[:-1])
        later = q_prev * _kl_bernoulli(logits[1:], c.spike_stay) + (1 - q_prev) * _kl_bernoulli(
            logits[1:], c.spike_start
        )
        return jnp.sum(_kl_bernoulli(logits[0], c.spike_initial)) + jnp.sum(later)

    def slab_kl(self, logits: Float[Array, "t k"], slab_mu: Array, slab_logvar: Array) -> Scalar:
        """Σ q(s = 1) KL[q(g) ‖ p(g)]: a slab is drawn only where its spike is on (off, q(g) is the prior)."""
        c = self.config
        return jnp.sum(jax.nn.sigmoid(logits) * dist.kl_gaussians(slab_mu, slab_logvar, c.slab_mean, c.slab_std))

    def hj(self, zs: Float[Array, "n d"]) -> Scalar:
        """The HJ residual of every flow's potential at the path's points (no gradient into the path), averaged."""
        ts, colloc = frame_times(zs.shape[0])[:-1], jax.lax.stop_gradient(zs[:-1])
        return jnp.mean(
            jax.vmap(lambda k: obj.hj_loss(self.flows.potential(k), self.flows.force(k), ts, colloc))(
                jnp.arange(self.num_flows)
            )
        )

    def loss(self, x_seq: Float[Array, "n ..."], k: Int[ArrayLike, ""], *, key: PRNGKeyArray) -> tuple[Scalar, Terms]:
        """−ELBO + λ_HJ · HJ of one sequence (k ignored), with a relaxed spike draw (binary concrete at
        `spike_temperature`) and a reparameterised slab draw; the KLs are those of the binary spikes."""
        del k
        c = self.config
        z_key, spike_key, slab_key = jr.split(key, 3)
        mu, logvar = self.encode(x_seq[0])
        z0 = dist.gaussian_sample(mu, logvar, z_key)
        logits, slab_mu, slab_logvar = self.pair_posterior(x_seq)
        u = jr.uniform(spike_key, logits.shape, minval=1e-6, maxval=1 - 1e-6)
        spikes = jax.nn.sigmoid((logits + jnp.log(u) - jnp.log1p(-u)) / c.spike_temperature)
        slabs = dist.gaussian_sample(slab_mu, slab_logvar, slab_key)
        zs = self.controlled_path(z0, spikes * slabs)
        recon = jnp.sum(self.decoder.log_likelihoods(zs, x_seq))
        kl0 = dist.kl_to_standard_normal(mu, logvar)
        kl_spike, kl_slab = self.spike_kl(logits), self.slab_kl(logits, slab_mu, slab_logvar)
        hj = self.hj(zs)
        elbo = recon - kl0 - kl_spike - kl_slab
        loss = -elbo + c.hj_weight * hj
        return loss, {
            "loss": loss,
            "elbo": elbo,
            "recon": recon,
            "kl0": kl0,
            "kl_spike": kl_spike,
            "kl_slab": kl_slab,
            "hj": hj,
            "spike_rate": jnp.mean(jax.nn.sigmoid(logits)),
        }

    def batch_loss(
        self,
        frames: Float[Array, "b n *x"],
        ks: Int[Array, " b"],
        *,
        key: PRNGKeyArray,
        step: Int[ArrayLike, ""] | None,
        layout: Layout | None = None,
    ) -> tuple[Scalar, Terms]:
        del step, layout
        return mean_sequence_loss(self, frames, ks, key=key)

    # --- the likelihood's proposal (docs/method.md §8) -----------------------------------------------
    # A proposal point of frame t is e = [t, z_0, s (T·K), g (T·K)]: z_t is z_0 moved by the controls of the
    # steps before t, so p(x_t) = E_{p(z_0, s, g)} p(x_t | z_t) is estimated by importance sampling over e.
    # Slabs of steps that are off are drawn from their prior, so their density ratio is exactly 1.

    def _pack(self, t: ScalarLike, z0: Array, spikes: Array, slabs: Array) -> Float[Array, " e"]:
        t = jnp.reshape(jnp.asarray(t, z0.dtype), (1,))
        return jnp.concatenate([t, z0, spikes.ravel(), slabs.ravel()])

    def _unpack(self, e: Float[Array, " e"]) -> tuple[Scalar, Array, Array, Array]:
        d, steps, k = self.config.latent_dim, self.config.num_frames - 1, self.num_flows
        t, z0, rest = e[0], e[1 : 1 + d], e[1 + d :]
        return t, z0, rest[: steps * k].reshape(steps, k), rest[steps * k :].reshape(steps, k)

    def _before(self, t: ScalarLike) -> Float[Array, "t 1"]:
        """1 for the steps before frame t (those that move z_t), 0 for the others."""
        return (jnp.arange(self.config.num_frames - 1) < t).astype(jnp.float32)[:, None]

    def _slab_prior(self, shape: tuple[int, ...]) -> tuple[Array, Array]:
        c = self.config
        return jnp.full(shape, c.slab_mean), jnp.full(shape, 2 * jnp.log(c.slab_std))

    def _control_log_prior(self, spikes: Array, slabs: Array) -> Float[Array, "t k"]:
        """log p(s_t^k | s_{t−1}^k) + log p(g_t^k) of every step and flow."""
        c = self.config
        prev = jnp.concatenate([jnp.full((1, spikes.shape[1]), -1.0), spikes[:-1]])
        p_on = jnp.where(prev < 0, c.spike_initial, jnp.where(prev > 0, c.spike_stay, c.spike_start))
        log_s = jnp.where(spikes > 0, jnp.log(p_on), jnp.log1p(-p_on))
        return log_s + dist.gaussian_log_density(slabs, *self._slab_prior(slabs.shape))

    def importance_proposal(
        self, x_seq: Float[Array, "n ..."], k: Int[ArrayLike, ""], *, key: PRNGKeyArray
    ) -> tuple[Float[Array, "n e"], Float[Array, " n"]]:
        """One draw of z_0 ~ q(z_0|x_0) and of hard spikes and slabs from q(s, g | x̄) (slabs of steps
        that are off from their prior), as each frame's point e with its log-density: z_0's and that of
        the controls of the steps before the frame."""
        del k
        z_key, spike_key, post_key, prior_key = jr.split(key, 4)
        z0, logq0 = dist.gaussian_draw(*self.encode(x_seq[0]), z_key)
        logits, slab_mu, slab_logvar = self.pair_posterior(x_seq)
        spikes = jr.bernoulli(spike_key, jax.nn.sigmoid(logits)).astype(z0.dtype)
        prior = self._slab_prior(logits.shape)
        slabs = jnp.where(
            spikes > 0, dist.gaussian_sample(slab_mu, slab_logvar, post_key), dist.gaussian_sample(*prior, prior_key)
        )
        log_s = jnp.where(spikes > 0, jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits))
        log_g = jnp.where(
            spikes > 0, dist.gaussian_log_density(slabs, slab_mu, slab_logvar), dist.gaussian_log_density(slabs, *prior)
        )
        ts = frame_times(x_seq.shape[0])
        points = jax.vmap(lambda t: self._pack(t, z0, spikes, slabs))(ts)
        logqs = jax.vmap(lambda t: logq0 + jnp.sum(self._before(t) * (log_s + log_g)))(ts)
        return points, logqs

    def frame_proposal(self, x: Float[Array, "*x"], *, key: PRNGKeyArray) -> tuple[Float[Array, " e"], Scalar]:
        """The point of `x` taken as a sequence's first frame (t = 0): z_0 from the image encoder, the
        controls from their prior (they do not move z_0), and its log-density. The likelihood's
        mixture proposal leaves this half out for STA (`metrics.log_likelihood`): at t > 0 it would need
        the marginal density of z_t, which STA does not have in closed form."""
        z_key, spike_key, slab_key = jr.split(key, 3)
        z0, logq0 = dist.gaussian_draw(*self.encode(x), z_key)
        shape = (self.config.num_frames - 1, self.num_flows)
        spikes = jr.bernoulli(spike_key, self.config.spike_initial, shape).astype(z0.dtype)
        slabs = dist.gaussian_sample(*self._slab_prior(shape), slab_key)
        return self._pack(0.0, z0, spikes, slabs), logq0

    def proposal_log_likelihood(self, z: Float[Array, " e"], x: Float[Array, "*x"]) -> Scalar:
        """log p(x | z_t) of the frame of point e: z_0 moved by the controls of the steps before e's t."""
        t, z0, spikes, slabs = self._unpack(z)
        z_t = self.controlled_path(z0, self._before(t) * spikes * slabs)[-1]
        return self.decoder.output_log_likelihood(self.decode(z_t), x)

    def prior_log_prob(self, k: Int[ArrayLike, ""], t: ScalarLike, z: Float[Array, " e"]) -> Scalar:
        """log p(z_0) + log p(controls of the steps before t) of point e (k ignored)."""
        del k
        _, z0, spikes, slabs = self._unpack(z)
        return dist.standard_normal_log_prob(z0) + jnp.sum(self._before(t) * self._control_log_prior(spikes, slabs))
