"""MNIST sequences in which transformations compose: at every step one (`mnist-single`) or two
(`mnist-double`) of scale, rotation and hue act, which ones following a Markov chain (docs/method.md §8).

Step t → t+1 moves each active transformation one notch of its grid (scale +0.1, rotation +10°, hue
+20°, the single-transformation sequences' notches), so frame t shows each transformation k at its
count of active steps so far: `values_from_active`. The active sets are drawn per sequence:
`active_sets` — the first set uniform among the sets of that size, then at each step the same set
with probability `stay`, else another set of the same size, uniform. The sets are recorded with each
sequence ("active", (T, K)) for evaluation only: the model trained on them never sees them (the
elements' "k" is `UNLABELLED`).

Frames are made like `MnistSequence`'s: on the host (`transforms.mnist_transform`, float frames for
evaluation) or on the device from the uint8 digit and the per-frame values (`compact`:
`device.mnist_composed_frames`, equal to the host's to float32 rounding).
"""

from __future__ import annotations

import itertools

import grain
import numpy as np

from .arrays import UNLABELLED
from .transforms import MNIST_TRANSFORMS, colourise, mnist_transform

NOTCHES = np.array([0.1, 10.0, 20.0])
"""One step of scale, rotation (degrees) and hue (degrees): the grid of the single-transformation sequences."""

STAY = 0.8
"""The probability that a step's active set is the previous step's."""


def active_sets(
    rng: np.random.Generator, num_steps: int, num_flows: int, num_active: int, stay: float = STAY
) -> np.ndarray:
    """(num_steps, num_flows) booleans: which transformations act at each step (exactly `num_active`)."""
    if not 1 <= num_active <= num_flows:
        raise ValueError(f"num_active must be in [1, {num_flows}], got {num_active}")
    sets = [np.array(s) for s in itertools.combinations(range(num_flows), num_active)]
    current = int(rng.integers(len(sets)))
    out = np.zeros((num_steps, num_flows), bool)
    for t in range(num_steps):
        if t and len(sets) > 1 and rng.random() >= stay:
            current = (current + 1 + int(rng.integers(len(sets) - 1))) % len(sets)
        out[t, sets[current]] = True
    return out


def values_from_active(active: np.ndarray) -> np.ndarray:
    """(T, 3) active sets → (T+1, 3) per-frame values (scale, rotation°, hue°): each transformation at
    its number of active steps before the frame, in notches from the identity (1, 0°, 0°)."""
    counts = np.concatenate([np.zeros((1, active.shape[1])), np.cumsum(active, axis=0)])
    return (np.array([1.0, 0.0, 0.0]) + counts * NOTCHES).astype(np.float32)


class MnistComposition(grain.transforms.RandomMap):
    """Index of a digit → its sequence under the drawn active sets: {"frames" (or "digits" and
    "values" when `compact`), "active" (T, 3) uint8, "k": UNLABELLED, "index"}."""

    def __init__(self, images: np.ndarray, num_frames: int, num_active: int, *, compact: bool = False):
        self.images, self.num_frames, self.num_active, self.compact = images, num_frames, num_active, compact

    def random_map(self, element, rng: np.random.Generator):
        index = int(element)
        active = active_sets(rng, self.num_frames - 1, len(MNIST_TRANSFORMS), self.num_active)
        values = values_from_active(active)
        out = {"active": active.astype(np.uint8), "k": np.int32(UNLABELLED), "index": np.int64(index)}
        if self.compact:
            return {**out, "digits": np.asarray(self.images[index], np.uint8), "values": values}
        x0 = colourise(self.images[index].astype(np.float32) / 255.0)
        frames = mnist_transform(x0, {k: values[:, k] for k in range(len(MNIST_TRANSFORMS))})
        return {**out, "frames": frames}
