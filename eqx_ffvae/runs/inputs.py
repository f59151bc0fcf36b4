"""What a run reads and builds: its sequences (train, validation, test, in the evaluation order), a
check of its data files, and its fresh model, optimiser and keys."""

from __future__ import annotations

import itertools

import jax
import jax.random as jr

from .. import data, methods
from ..training import init_opt_state, make_optimizer
from .spec import EVAL_SEED, RunError, RunSpec


def sequences(
    spec: RunSpec,
    *,
    split: str = "train",
    seed: int | None = None,
    num_epochs: int | None = None,
    grouped: bool = False,
    probes: bool = False,
    compact: bool = False,
):
    """The run's sequences of `split`; `grouped`: a group-supervised run's training order (one k per
    batch); `probes`: with the ground truth of the extrapolation and composition probes (MNIST);
    `compact`: as the training step takes them (uint8, finished on the device by `data.device.frames`)."""
    try:
        return data.sequence_dataset(
            spec.dataset,
            split=split,
            seed=spec.seed if seed is None else seed,
            data_dir=spec.data_dir,
            num_epochs=num_epochs,
            num_frames=spec.model.num_frames,
            factor_sizes=spec.factor_sizes,
            group_size=spec.batch_size if grouped else None,
            probes=probes,
            validation_fraction=spec.validation_fraction,
            compact=compact,
        )
    except (FileNotFoundError, ValueError, OSError, EOFError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise RunError(message.replace("factor_sizes=", "--factor-sizes")) from None


def check_data(spec: RunSpec) -> None:
    """Open the train and test splits and build one sequence of each, so a missing, truncated or
    malformed data file is reported (one line naming it) before anything is written or trained."""
    for split in ("train", "test") + (("validation",) if spec.validation_fraction else ()):
        ds = sequences(spec, split=split, seed=EVAL_SEED, num_epochs=1)
        if len(ds) == 0:
            raise RunError(f"the {split} split of {spec.dataset} is empty; check --data-dir and --factor-sizes")
        try:
            ds[0]
        except (OSError, ValueError, EOFError, KeyError) as err:
            raise RunError(f"cannot read the {split} split of {spec.dataset} ({spec.data_dir}): {err}") from None


def has_probes(spec: RunSpec) -> bool:
    """Whether the run's data has the analytic transformations that extrapolation and composition need."""
    return data.dataset_info(spec.dataset).source == "mnist"


def eval_batches(spec: RunSpec, split: str, count: int) -> list[dict]:
    """`count` batches of the run's evaluation order (fixed seed) of `split`; the test split of MNIST
    carries the extrapolation and composition ground truth too."""
    bs = spec.eval.eval_batch_size
    probes = split == "test" and has_probes(spec)
    ds = sequences(spec, split=split, seed=EVAL_SEED, num_epochs=1 if split == "test" else None, probes=probes)
    it = data.batch_iterator(ds, bs, drop_remainder=False)
    keys = ("frames", "k", "extrapolation", "composition") if probes else ("frames", "k")
    if data.dataset_info(spec.dataset).source == "composition":
        keys = (*keys, "active")
    return [{name: b[name] for name in keys} for b in itertools.islice(it, count)]


def build(spec: RunSpec):
    """Model, optimiser and optimiser state of a fresh run (keys from the seed, by role)."""
    model_key, _, _ = jr.split(jr.key(spec.seed), 3)
    model = methods.make_model(spec.method, spec.model, key=model_key)
    optimizer = make_optimizer(spec.learning_rate)
    return model, optimizer, init_opt_state(model, optimizer)


def train_key(spec: RunSpec) -> jax.Array:
    return jr.split(jr.key(spec.seed), 3)[2]
