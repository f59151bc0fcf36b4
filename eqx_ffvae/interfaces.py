"""What a model of transformation sequences declares, so training and evaluation never probe it.

Equinox's abstract/final pattern: these classes hold only abstract methods and abstract attributes
(`eqx.AbstractVar`); every concrete model is a final class that implements all of them (a test walks
the registry and checks that no concrete method is overridden and that every non-final class is
abstract). What a model can do is its type: `isinstance(model, AbstractTransportModel)`, never
probing for attributes by name.

* `AbstractSequenceModel`: encode / decode one image, the loss of one sequence, the training
  objective of a batch, and the proposal, decoder likelihood and prior that importance sampling needs.
* `AbstractTransportModel`: also moves a latent along its own transformation k (`transport`), several
  at once (`compose`), and says how many it has (`num_flows`).
* `AbstractFlowInferenceModel`: a transport model that does not observe k: it carries q(k | x̄)
  (`flow_posterior_logits`) and is scored by the flow it infers.
* `AbstractSparseControlModel`: a flow-inference model whose flows act together in sparse,
  step-by-step combinations (`controls`), e.g. STA.
* `AbstractAdversarialModel`: also carries a discriminator with its own objective and optimiser,
  updated by the training step after the model (FactorVAE).
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Scalar, ScalarLike

from .layout import Layout

Terms = dict[str, Scalar]


class AbstractSequenceModel(eqx.Module):
    """A generative model of sequences x̄ = (x_0, …, x_T) of one transformation k.

    Single example in, single example out (callers `jax.vmap`), except `batch_loss`, which is the
    training objective of a whole batch. Keys are keyword-only. Every model also carries `config`,
    its frozen, hashable configuration dataclass (a static field, declared last by each final class:
    abstract fields would come first in the PyTree and reorder the leaves that checkpoints store).
    """

    @abc.abstractmethod
    def encode(self, x: Float[Array, "*x"]) -> tuple[Float[Array, " d"], Float[Array, " d"]]:
        """(mu, logvar) of the Gaussian posterior of one image's latent."""

    @abc.abstractmethod
    def decode(self, z: Float[Array, " d"]) -> Float[Array, "*x"]:
        """Bernoulli logits of every pixel of the image of latent z."""

    @abc.abstractmethod
    def loss(self, x_seq: Float[Array, "n ..."], k: Int[ArrayLike, ""], *, key: PRNGKeyArray) -> tuple[Scalar, Terms]:
        """The objective of ONE sequence of transformation k (lower is better) and its named terms."""

    @abc.abstractmethod
    def batch_loss(
        self,
        frames: Float[Array, "b n *x"],
        ks: Int[Array, " b"],
        *,
        key: PRNGKeyArray,
        step: Int[ArrayLike, ""] | None,
        layout: Layout | None = None,
    ) -> tuple[Scalar, Terms]:
        """The training objective of a batch: `mean_sequence_loss` for a per-sequence objective; a model
        whose objective couples the batch (a total-correlation estimate, an E-step over the batch, a
        batch-agreement term) defines it here. `ks` is ignored by a model that does not observe k;
        `step` is the training step, for objectives with a schedule (None where there is none).
        `layout` (the training step's `layout.Layout`) lays the computation out in memory where the model
        has a laid-out form; it never changes the numbers (None: the plain definition)."""

    @abc.abstractmethod
    def importance_proposal(
        self, x_seq: Float[Array, "n ..."], k: Int[ArrayLike, ""], *, key: PRNGKeyArray
    ) -> tuple[Float[Array, "n e"], Float[Array, " n"]]:
        """One proposal draw per frame (possibly in a larger space than the decoder's input) and its
        log-density, for importance-sampled log-likelihoods (docs/method.md §5)."""

    @abc.abstractmethod
    def frame_proposal(self, x: Float[Array, "*x"], *, key: PRNGKeyArray) -> tuple[Float[Array, " e"], Scalar]:
        """One draw from the image encoder on this frame alone, in `importance_proposal`'s space, and its
        log-density: the encoder half of docs/method.md §5's mixture proposal."""

    @abc.abstractmethod
    def proposal_log_likelihood(self, z: Float[Array, " e"], x: Float[Array, "*x"]) -> Scalar:
        """log p(x | z) of one frame, for a draw z of `importance_proposal`."""

    @abc.abstractmethod
    def prior_log_prob(self, k: Int[ArrayLike, ""], t: ScalarLike, z: Float[Array, " e"]) -> Scalar:
        """log p_t(z) of a proposal draw at frame time t under transformation k."""


class AbstractTransportModel(AbstractSequenceModel):
    """A sequence model that learns its transformations: latents move along flow k."""

    @property
    @abc.abstractmethod
    def num_flows(self) -> int:
        """How many transformations the model carries."""

    @abc.abstractmethod
    def transport(
        self,
        k: Int[ArrayLike, ""],
        z0: Float[Array, " d"],
        ts: Float[ArrayLike, " n"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "n d"]:
        """The latent path of transformation k from z0 at times ts (default: the frame times 0…T)."""

    @abc.abstractmethod
    def compose(
        self,
        weights: Float[Array, " k"],
        z0: Float[Array, " d"],
        ts: Float[ArrayLike, " n"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "n d"]:
        """The latent path under several transformations at once, weighted (one-hot: `transport`)."""


class AbstractFlowInferenceModel(AbstractTransportModel):
    """A transport model that infers which transformation a sequence holds: q(k | x̄)."""

    @abc.abstractmethod
    def flow_posterior_logits(self, x_seq: Float[Array, "n ..."]) -> Float[Array, " k"]:
        """Logits of q(k | x̄) over the model's flows."""


class AbstractSparseControlModel(AbstractFlowInferenceModel):
    """A transport model whose flows act in sparse combinations that change from step to step: at step
    t → t+1 flow k runs at control c_t^k (0 when it is off), inferred from the two frames. Its
    `flow_posterior_logits` say which flow a sequence uses most (how it is matched to transformations);
    its E_k follows the controls it infers (`controls`, `controlled_path`)."""

    @abc.abstractmethod
    def spike_probabilities(self, x_seq: Float[Array, "n ..."]) -> Float[Array, "t k"]:
        """q(s_t^k = 1 | x_t, x_{t+1}): the probability that flow k acts at step t → t+1."""

    @abc.abstractmethod
    def controls(self, x_seq: Float[Array, "n ..."]) -> Float[Array, "t k"]:
        """The controls the model reads off a sequence: flow k on at step t where its spike probability
        is above ½, at the speed its posterior expects; 0 elsewhere."""

    @abc.abstractmethod
    def controlled_path(self, z0: Float[Array, " d"], controls: Float[Array, "t k"]) -> Float[Array, "n d"]:
        """The latent path from z0 under the given controls, frames 0…T."""


class AbstractAdversarialModel(AbstractSequenceModel):
    """A sequence model with a discriminator that its training step updates after the model.

    The model's own update (by the run's optimiser) holds the discriminator fixed; then the
    discriminator takes one step of `discriminator_optimizer()` on `discriminator_loss`.
    """

    discriminator: eqx.AbstractVar[eqx.Module]

    @abc.abstractmethod
    def discriminator_loss(self, frames: Float[Array, "b n *x"], *, key: PRNGKeyArray) -> Scalar:
        """The discriminator's objective on a batch (the rest of the model held fixed)."""

    @abc.abstractmethod
    def discriminator_optimizer(self) -> optax.GradientTransformation:
        """The discriminator's own optimiser."""


def mean_sequence_loss(
    model: AbstractSequenceModel, frames: Float[Array, "b n *x"], ks: Int[Array, " b"], *, key: PRNGKeyArray
) -> tuple[Scalar, Terms]:
    """The mean of `model.loss` over a batch, one key per sequence (`jr.split(key, b)`), and of its terms."""
    keys = jr.split(key, frames.shape[0])
    losses, terms = jax.vmap(lambda x, k, kk: model.loss(x, k, key=kk))(frames, ks, keys)
    return jnp.mean(losses), jax.tree.map(jnp.mean, terms)
