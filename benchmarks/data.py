"""Sequences per second from the Grain pipelines, against what the training step consumes.

    python benchmarks/data.py [--batch 128] [--batches 30] [--json PATH]

Rows: embedded MNIST and procedural shapes, 0 and 2 worker processes. `x_step_demand` compares
with the hungriest training step on this 2-core machine, the default `quick` preset's: 32 sequences
per ~0.072 s (~440 seq/s; the paper configuration's step takes 128 per ~11.7 s).
"""

from __future__ import annotations

import argparse
import gc
import time

from _util import print_table, write_json

from eqx_ffvae import data

STEP_CONSUMES = 32 / 0.072


def measure(name: str, batch: int, workers: int, batches: int, warmup: int = 3) -> float:
    ds = data.sequence_dataset(name, seed=0, num_epochs=None)
    it = data.batch_iterator(ds, batch, num_workers=workers)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * batch / (time.perf_counter() - start)
    del it
    gc.collect()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    for name in ("mnist", "procedural-shapes"):
        for workers in (0, 2):
            rate = measure(name, args.batch, workers, args.batches)
            rows.append(
                {
                    "dataset": name,
                    "workers": workers,
                    "batch": args.batch,
                    "sequences_per_s": rate,
                    "x_step_demand": rate / STEP_CONSUMES,
                }
            )
    print_table(rows, list(rows[0]))
    write_json(rows, args.json)


if __name__ == "__main__":
    main()
