"""The FFVAE under its authors' supervised trainer (`ffvae-authors`; docs/method.md §4, objective 2).

Every term, weight, time grid, potential form, prior and Laplacian of `TrainerOTScratch.train` in
KingJamesSong/latent-flow (`latent_flow/trainers/trainer_ot_scratch.py`, with `models/HJPDE.py` and
`models/DiffPDE.py`), on our encoder/decoder family (docs/method.md §6: the same nets for every method).
File:line references are to that repository at 6952c93. Labelled as theirs wherever it is reported:
it is not the ELBO of docs/method.md §4 and not a bound on anything.

Per batch of B sequences that share one k (their sampler: one `index` per batch, trainer :234; our
data order for this method, `Method.batch_shares_k`), with z_0 = μ + σ ⊙ ε (ε ~ N(0, I)):
* reconstruction: Σ_{t=0..T} BCE(dec(z_t), x_t) summed over pixels, / B (:247, :266; frame 0 decodes
  the sample z_0); the decoder is ours (Bernoulli logits, the same BCE without torch's −100 log clamp);
* KL[q(z_0|x_0) ‖ N(0, I)] summed, / B (:115);
* the flow: T = `num_frames` − 1 Euler steps z_t = z_{t−1} + ∇u^k(z_{t−1}, t) at their time τ = t
  (:248–258); u^k is their MLP (HJPDE.py:22–54: width d, tanh output, sinusoidal time embedding of
  size d with base 10000, exact-erf GELU);
* the "Laplacian": Hessian row sums H·1 per latent dimension (`grad(u_z.sum(), z)`, HJPDE.py:89),
  entering each dimension's log-density as −log|1 + (H·1)_i| (:256);
* the prior (DiffPDE.py:168–185): per dimension log N(z_0,i; 0, 1) − Σ_{s≤t} log(1 + c_s) with c_1 = D = 1
  (not trained: it is not a Parameter) and c_s = D / (σ_{k,s−1}² + 10⁻⁵) for s ≥ 2; the free per-step
  means μ_{k,s} never enter the loss, get no gradient and stay 0 (omitted here);
* the flow term (:260–263): Σ_t KL[softmax_i(exp ρ^prior_t) ‖ softmax_i(exp ρ^post_t)] over the d
  dimensions, averaged over the batch (`KLDivLoss(batchmean, log_target=True)`);
* the HJ term (HJPDE.py:79–95, :121): Σ_t mean_b (Σ_{b'} ∂_τ u(z_{b'}, τ) + ½ mean_{b,i} (∂_i u)² + g(z_b, τ)²)²
  with g the force MLP's output: the time derivative is summed over the batch (one shared τ) and the
  kinetic term averaged over batch × d, as their code does; plus at t = 1 the initial-condition term
  mean_{b,i} (∂_i u(z_0, 0))² + mean_b g(z_0, 0)² (HJPDE.py:68–76). Gradients flow through z into the
  encoder in every term (no detach in their code);
* loss = reconstruction + KL + flow term + HJ term, all weights 1 (:275); Adam at one learning rate for
  every parameter (their two Adams share lr 1e-4 and defaults, which is one Adam).

Paths for evaluation (E_k, likelihood proposals) are the same Euler steps: `AuthorsPotential` evaluates
their MLP at τ = t + 1, so our flow's step from frame t to t + 1 is theirs. The likelihood's prior is
the generative reading of their prior: the push-forward of N(0, I) by the affine maps z ↦ (1 + c_s) z,
i.e. p^k_t = N(0, s_t² I), s_t = Π_{s≤t} (1 + c_s).
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Scalar, ScalarLike

from . import distributions as dist
from .baselines.base import BaselineConfig, conv_pair
from .flow_model import AbstractPotentialFlowModel
from .flows import FlowSettings
from .interfaces import Terms
from .layout import Layout
from .nn import ConvDecoder, ConvEncoder
from .potentials import AbstractAutodiffPotential, PotentialBank, select_stacked

PRIOR_EPS = 1e-5
"""The 1e-5 of DiffPDE.py:182–183 (σ² + 1e-5)."""


def authors_time_embedding(tau: ScalarLike, dim: int) -> Float[Array, " e"]:
    """Their sinusoidal embedding (HJPDE.py:12–19): [sin(τ ω_j), cos(τ ω_j)], ω_j = 10000^(−j/(dim/2 − 1))."""
    half = dim // 2
    freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(math.log(10000.0) / (half - 1)))
    angles = jnp.asarray(tau, jnp.float32) * freqs
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)])


class AuthorsMLP(eqx.Module):
    """Their `MLP(n_in=d, n_out=1)` (HJPDE.py:22–54) as a function of (τ, z) for one latent."""

    layer_x: eqx.nn.Linear
    layer_time: eqx.nn.Linear
    layer_time2: eqx.nn.Linear
    layer_fusion: eqx.nn.Linear
    layer_out: eqx.nn.Linear

    def __init__(self, dim: int, *, key: PRNGKeyArray):
        if dim % 2 or dim < 4:
            raise ValueError(f"the authors' potential needs an even latent size ≥ 4 (its time embedding), got {dim}")
        kx, kt, kt2, kf, ko = jr.split(key, 5)
        self.layer_x = eqx.nn.Linear(dim, dim, key=kx)
        self.layer_time = eqx.nn.Linear(dim, dim, key=kt)
        self.layer_time2 = eqx.nn.Linear(dim, dim, key=kt2)
        self.layer_fusion = eqx.nn.Linear(dim, dim, key=kf)
        self.layer_out = eqx.nn.Linear(dim, 1, key=ko)

    def __call__(self, tau: ScalarLike, z: Float[Array, " d"]) -> Scalar:
        x = jnp.tanh(self.layer_x(z))
        time = authors_time_embedding(tau, z.shape[0]).astype(z.dtype)
        time = self.layer_time2(jax.nn.gelu(self.layer_time(time), approximate=False))
        x = jnp.tanh(self.layer_fusion(x + time))
        return jnp.tanh(self.layer_out(x))[0]


class AuthorsPotential(AbstractAutodiffPotential):
    """u(t, z) = their MLP at τ = t + 1: our Euler step from frame t is their step t + 1 (trainer :251)."""

    mlp: AuthorsMLP

    def __init__(self, dim: int, *, key: PRNGKeyArray):
        self.mlp = AuthorsMLP(dim, key=key)

    def __call__(self, t: ScalarLike, z: Float[Array, " d"]) -> Scalar:
        return self.mlp(jnp.asarray(t, z.dtype) + 1.0, z)


class AuthorsForce(eqx.Module):
    """f(t, z) = −g(z, t + 1)² with g their force MLP (the same form as the potential): their residual's
    +g² is our −f, so the force is non-positive as in docs/method.md §3."""

    mlp: AuthorsMLP

    def __init__(self, dim: int, *, key: PRNGKeyArray):
        self.mlp = AuthorsMLP(dim, key=key)

    def __call__(self, t: ScalarLike, z: Float[Array, " d"]) -> Scalar:
        return -(self.mlp(jnp.asarray(t, z.dtype) + 1.0, z) ** 2)


@dataclasses.dataclass(frozen=True)
class AuthorsFFVAEConfig(BaselineConfig):
    """The comparison's shared fields only: the potentials' width is the latent size (as theirs), and
    every weight of the objective is theirs (1)."""

    def __post_init__(self):
        super().__post_init__()
        if self.latent_dim % 2 or self.latent_dim < 4:
            raise ValueError(
                f"ffvae-authors needs an even latent_dim ≥ 4 (their time embedding), got {self.latent_dim}"
            )


def prior_increments(prior_scale: Float[Array, " t"]) -> Float[Array, " t"]:
    """c_1 … c_T of their prior (DiffPDE.py:178–183): c_1 = D = 1, c_s = 1 / (σ_{s−1}² + 10⁻⁵)."""
    rest = 1.0 / (prior_scale[1:] ** 2 + PRIOR_EPS)
    return jnp.concatenate([jnp.ones((1,), prior_scale.dtype), rest])


def _row_step(pot: AuthorsMLP, force: AuthorsMLP, tau: Scalar, z: Float[Array, " d"]):
    """∂_τ u, ∇_z u, the Hessian row sums H·1 and the force output g at (z, τ), one row."""
    du_dtau = jax.grad(pot, argnums=0)(tau, z)
    grad, row_sums = jax.jvp(jax.grad(lambda x: pot(tau, x)), (z,), (jnp.ones_like(z),))
    return du_dtau, grad, row_sums, force(tau, z)


def authors_batch_terms(
    flows: PotentialBank,
    prior_scale: Float[Array, "k t"],
    frame_log_likelihoods,
    mu: Float[Array, "b d"],
    logvar: Float[Array, "b d"],
    eps: Float[Array, "b d"],
    frames: Float[Array, "b n c h w"],
    ks: Int[Array, " b"],
) -> Terms:
    """Every term of their trainer's loss for one batch (module docstring), given the encoder's outputs,
    the noise ε of z_0 and `frame_log_likelihoods(zs (b, n, d), frames) -> (b, n)` (the decoder).

    A batch whose rows have different k is computed with each row's own potential and the batch
    couplings taken over all rows (their sampler never makes one)."""
    b, d = mu.shape
    num_steps = frames.shape[1] - 1
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    z0 = mu + jnp.exp(0.5 * logvar) * eps
    rho_post = -half_log_2pi - 0.5 * logvar - 0.5 * eps**2
    rho_prior = -half_log_2pi - 0.5 * z0**2
    kl0 = -0.5 * jnp.sum(1.0 + logvar - mu**2 - jnp.exp(logvar)) / b
    pots = eqx.filter_vmap(lambda k: select_stacked(flows.potentials, k).mlp)(ks)
    forces = eqx.filter_vmap(lambda k: select_stacked(flows.forces, k).mlp)(ks)
    log_prior_steps = jnp.log1p(jax.vmap(prior_increments)(prior_scale[ks]))  # (b, T)
    rows = eqx.filter_vmap(_row_step, in_axes=(0, 0, None, 0))

    grad0 = eqx.filter_vmap(lambda p, z: jax.grad(lambda x: p(0.0, x))(z))(pots, z0)
    g0 = eqx.filter_vmap(lambda f, z: f(0.0, z))(forces, z0)
    initial = jnp.mean(grad0**2) + jnp.mean(g0**2)

    def step(carry, t):
        z, post, prior = carry
        du_dtau, grad, row_sums, g = rows(pots, forces, t.astype(z.dtype), z)
        residual = jnp.sum(du_dtau) + 0.5 * jnp.mean(grad**2) + g**2
        post = post - jnp.log(jnp.abs(row_sums + 1.0))
        prior = prior - log_prior_steps[:, t - 1][:, None]
        z = z + grad
        log_p, log_q = jax.nn.log_softmax(jnp.exp(prior), axis=-1), jax.nn.log_softmax(jnp.exp(post), axis=-1)
        rho_kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q)) / b
        return (z, post, prior), (z, jnp.mean(residual**2), rho_kl)

    times = jnp.arange(1, num_steps + 1)
    _, (zs, hj_steps, rho_kls) = jax.lax.scan(step, (z0, rho_post, rho_prior), times)
    zs = jnp.concatenate([z0[:, None], jnp.swapaxes(zs, 0, 1)], axis=1)
    recon = jnp.sum(frame_log_likelihoods(zs, frames)) / b
    hj = jnp.sum(hj_steps) + initial
    rho_kl = jnp.sum(rho_kls)
    loss = -recon + kl0 + rho_kl + hj
    return {
        "loss": loss,
        "recon": recon,
        "kl0": kl0,
        "rho_kl": rho_kl,
        "hj": hj,
        "hj_initial": initial,
        **{f"rho_kl_t{t + 1}": rho_kls[t] for t in range(num_steps)},
    }


class AuthorsFFVAE(AbstractPotentialFlowModel):
    """The FFVAE trained by its authors' objective (module docstring); evaluated like every model."""

    encoder: ConvEncoder
    decoder: ConvDecoder
    flows: PotentialBank
    prior_scale: Float[Array, "k t"]
    config: AuthorsFFVAEConfig = eqx.field(static=True)

    def __init__(self, config: AuthorsFFVAEConfig, *, key: PRNGKeyArray):
        pair_key, flow_key = jr.split(key)
        c = config
        self.encoder, self.decoder = conv_pair(c, c.latent_dim, key=pair_key)
        self.flows = PotentialBank(
            c.num_flows,
            c.latent_dim,
            c.latent_dim,
            make_potential=lambda k: AuthorsPotential(c.latent_dim, key=k),
            make_force=lambda k: AuthorsForce(c.latent_dim, key=k),
            key=flow_key,
        )
        self.prior_scale = jnp.ones((c.num_flows, c.num_frames - 1), jnp.float32)
        self.config = config

    @property
    def flow_settings(self) -> FlowSettings:
        """Euler, dt = 1 (their z = z + u_z); paths move z only."""
        return FlowSettings(1.0, "exact", path_divergence="none")

    @property
    def density(self) -> str:
        """Training tracks no consistent density (their per-dimension row sums); the proposal uses the map."""
        return "trace"

    def prior_log_prob(self, k: Int[ArrayLike, ""], t: ScalarLike, z: Float[Array, " d"]) -> Scalar:
        """log N(z; 0, s_t² I), s_t = Π_{s≤t} (1 + c_s): their prior maps applied to N(0, I)."""
        log_scales = jnp.concatenate([jnp.zeros((1,)), jnp.cumsum(jnp.log1p(prior_increments(self.prior_scale[k])))])
        index = jnp.clip(jnp.round(jnp.asarray(t)).astype(jnp.int32), 0, log_scales.shape[0] - 1)
        log_s = log_scales[index].astype(z.dtype)
        return dist.standard_normal_log_prob(z * jnp.exp(-log_s)) - z.shape[0] * log_s

    def loss(self, x_seq: Float[Array, "n c h w"], k: Int[ArrayLike, ""], *, key: PRNGKeyArray) -> tuple[Scalar, Terms]:
        """Their objective on a batch of this one sequence (the batch couplings reduce to the row's own)."""
        return self.batch_loss(x_seq[None], jnp.asarray(k)[None], key=key, step=None)

    def batch_loss(
        self,
        frames: Float[Array, "b n c h w"],
        ks: Int[Array, " b"],
        *,
        key: PRNGKeyArray,
        step: Int[ArrayLike, ""] | None,
        layout: Layout | None = None,
    ) -> tuple[Scalar, Terms]:
        """Their loss of a batch (couples the batch: not the mean of `loss`)."""
        del step, layout
        mu, logvar = jax.vmap(self.encode)(frames[:, 0])
        eps = jr.normal(key, mu.shape, mu.dtype)
        terms = authors_batch_terms(
            self.flows, self.prior_scale, jax.vmap(self.decoder.log_likelihoods), mu, logvar, eps, frames, ks
        )
        return terms["loss"], terms
