"""Models whose flows are the gradients of a `PotentialBank` from a Gaussian encoder on x_0: the FFVAE
(every variant) and PoFlow share this body (docs/method.md §2, §3, §5)."""

from __future__ import annotations

import abc
from typing import Literal

import equinox as eqx
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Scalar, ScalarLike

from . import distributions as dist
from .flows import FlowSettings, MapDensity, frame_times, map_density
from .interfaces import AbstractTransportModel
from .nn import AbstractDecoder, AbstractEncoder
from .potentials import AbstractPotential, PotentialBank

DensityForm = Literal["trace", "map"]


class AbstractPotentialFlowModel(AbstractTransportModel):
    """A transport model whose flows are the gradients of a `PotentialBank`, starting from a Gaussian
    encoder on x_0: the FFVAE and PoFlow. Concrete (final) here: drawing z_0, the paths, composition,
    the density solve and the importance proposal "z_0 ~ q(z_0|x_0) carried along flow k with its
    exact log-density" (docs/method.md §5). A subclass gives the encoder, decoder, bank and `flow_settings`
    (the abstract fields are declared in the order of the subclasses' PyTree leaves).
    """

    encoder: eqx.AbstractVar[AbstractEncoder]
    decoder: eqx.AbstractVar[AbstractDecoder]
    flows: eqx.AbstractVar[PotentialBank]

    @property
    @abc.abstractmethod
    def flow_settings(self) -> FlowSettings:
        """Step size and divergence methods of this model's solves."""

    @property
    def num_flows(self) -> int:
        return self.flows.num_flows

    @property
    def frame_times(self) -> Float[ArrayLike, " n"]:
        """The integer times 0, 1, …, T at which the frames sit."""
        return frame_times(self.config.num_frames)

    def encode(self, x: Float[Array, "*x"]) -> tuple[Float[Array, " d"], Float[Array, " d"]]:
        return self.encoder(x)

    def decode(self, z: Float[Array, " d"]) -> Float[Array, "*x"]:
        return self.decoder(z)

    def proposal_log_likelihood(self, z: Float[Array, " d"], x: Float[Array, "*x"]) -> Scalar:
        return self.decoder.output_log_likelihood(self.decode(z), x)

    def sample_z0(self, x0: Float[Array, "*x"], key: PRNGKeyArray):
        """(mu, logvar) of q(z_0 | x_0), a draw z_0 with its log-density, and the key for the flow's probes."""
        sample_key, probe_key = jr.split(key)
        mu, logvar = self.encode(x0)
        z0, logq0 = dist.gaussian_draw(mu, logvar, sample_key)
        return mu, logvar, z0, logq0, probe_key

    def transport_density(
        self,
        k: Int[ArrayLike, ""],
        z0: Float[Array, " d"],
        logq0: ScalarLike,
        ts: Float[ArrayLike, " n"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Float[Array, "n d"], Float[Array, " n"]]:
        """(z_t, log q_t(z_t)) at each time in ts along flow k (key: Hutchinson probes, if used).

        A model whose config asks for `density="map"` returns the Euler map's positions with its exact
        density (`map_density`; ts must then be the frame times 0…n−1): the consistent pair of
        docs/method.md §3 (i), at the cost of a Hessian and an LU factorisation per step."""
        return self.potential_density(self.flows.potential(k), z0, logq0, ts, key=key)

    def potential_density(
        self,
        pot: AbstractPotential,
        z0: Float[Array, " d"],
        logq0: ScalarLike,
        ts: Float[ArrayLike, " n"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Float[Array, "n d"], Float[Array, " n"]]:
        """(z_t, log q_t(z_t)) along any potential's flow (one of the bank's, or a combination), by
        the model's `density`: the flow settings' solve ("trace") or the Euler map's exact density
        ("map"; ts must be the frame times 0…n−1)."""
        if self.density == "map":
            path = map_density(pot, z0, logq0, ts.shape[0], self.flow_settings.steps_per_frame, eigenvalues=False)
            return path.zs, path.logqs
        return self.flow_settings.density(pot, z0, logq0, ts, key)

    @property
    @abc.abstractmethod
    def density(self) -> DensityForm:
        """How `transport_density` tracks log q_t: "trace" (the Euler step of the ODE's density, −h Δu
        per step) or "map" (the Euler map's exact −log|det(I + h∇²u)|)."""

    def transport(
        self,
        k: Int[ArrayLike, ""],
        z0: Float[Array, " d"],
        ts: Float[ArrayLike, " n"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "n d"]:
        """The latent path of flow k from z0 at times ts (default: the frame times 0…T)."""
        ts = self.frame_times if ts is None else ts
        return self.flow_settings.path(self.flows.potential(k), z0, ts, key)

    def compose(
        self,
        weights: Float[Array, " k"],
        z0: Float[Array, " d"],
        ts: Float[ArrayLike, " n"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "n d"]:
        """Several flows at once: dz/dt = Σ_k w_k ∇u^k (paper Fig. 6)."""
        ts = self.frame_times if ts is None else ts
        return self.flow_settings.path(self.flows.combined(weights), z0, ts, key)

    @property
    def proposal_steps_per_frame(self) -> int:
        """Euler steps per frame of the likelihood's proposal map: 4 (at least the model's own).

        The trained map (one step per frame) need not be invertible — on the quick preset I + ∇²u has
        eigenvalues < 0 (down to −0.38) — and then log|det| is not its density. A finer Euler map of the
        same flow is a proposal with an exact density wherever I + h∇²u stays positive definite
        (evaluation reports its smallest eigenvalue, `proposal_min_eigenvalue`); any proposal with an
        exact density gives an unbiased likelihood. Each halving of h doubles the proposal's Hessians.
        """
        return max(4, self.flow_settings.steps_per_frame)

    def map_density(
        self,
        k: Int[ArrayLike, ""],
        z0: Float[Array, " d"],
        logq0: ScalarLike,
        steps_per_frame: int | None = None,
        *,
        eigenvalues: bool = True,
    ) -> MapDensity:
        """Flow k's Euler map from z0 over the frame times with its exact log-density (docs/method.md §3): by
        default the trained map (the positions of `transport_density`, log q_t falling by
        log|det(I + h∇²u)| instead of h Δu); `steps_per_frame` refines it."""
        steps = self.flow_settings.steps_per_frame if steps_per_frame is None else steps_per_frame
        return map_density(self.flows.potential(k), z0, logq0, self.config.num_frames, steps, eigenvalues=eigenvalues)

    def importance_proposal(
        self, x_seq: Float[Array, "n ..."], k: Int[ArrayLike, ""], *, key: PRNGKeyArray
    ) -> tuple[Float[Array, "n d"], Float[Array, " n"]]:
        """One draw z_0 ~ q(z_0|x_0) carried by flow k's Euler map at `proposal_steps_per_frame` to every
        frame, with its exact log-density (`map_density`): points and density of one map."""
        _, _, z0, logq0, _ = self.sample_z0(x_seq[0], key)
        path = self.map_density(k, z0, logq0, self.proposal_steps_per_frame, eigenvalues=False)
        return path.zs, path.logqs

    def frame_proposal(self, x: Float[Array, "*x"], *, key: PRNGKeyArray) -> tuple[Float[Array, " d"], Scalar]:
        return dist.gaussian_draw(*self.encode(x), key)
