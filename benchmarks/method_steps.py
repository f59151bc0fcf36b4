"""Seconds per training step of each method at one preset, side by side in one process: what a
comparison table costs (`compare` trains every method for the preset's steps).

    python benchmarks/method_steps.py --preset mnist-medium --json results/mnist/method_steps.json

Each method's step is compiled as a run compiles it, then `--rounds` rounds each time `--steps`
steps of every method in turn (interleaved, so a change in the machine's speed hits every method
alike); the median over rounds is reported, with the minutes that the preset's step count takes.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.random as jr
from _util import print_table, write_json

from eqx_ffvae import data, methods, runs
from eqx_ffvae.training import make_step, with_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mnist-medium")
    parser.add_argument("--models", nargs="+", default=list(methods.METHODS))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    state = {}
    for name in args.models:
        spec = runs.resolve(args.preset, method=name)
        model, optimizer, opt_state = runs.build(spec)
        batches = data.batch_iterator(runs.sequences(spec, grouped=spec.grouped), spec.batch_size)
        batch = next(batches)
        step = make_step(optimizer, slice_size=spec.slice_size)
        host = with_step({"frames": batch["frames"], "k": batch["k"]}, 0)
        tic = time.perf_counter()
        model, opt_state, loss, _ = step(model, opt_state, host, jr.key(0))
        jax.block_until_ready(loss)
        state[name] = [spec, step, model, opt_state, host, time.perf_counter() - tic, []]
        print(f"compiled {name} in {state[name][5]:.1f} s", flush=True)
    for _ in range(args.rounds):
        for entry in state.values():
            _, step, model, opt_state, host, _, times = entry
            tic = time.perf_counter()
            for i in range(args.steps):
                model, opt_state, loss, _ = step(model, opt_state, host, jr.key(1 + i))
            jax.block_until_ready(loss)
            times.append((time.perf_counter() - tic) / args.steps)
            entry[2], entry[3] = model, opt_state
    rows = []
    for name, (spec, *_, compile_s, times) in state.items():
        per = statistics.median(times)
        density = spec.to_json()["model"].get("density", "—")
        rows.append(
            {
                "method": name,
                "density": density,
                "s_per_step": per,
                "compile_s": compile_s,
                f"min_for_{spec.steps}_steps": per * spec.steps / 60,
            }
        )
    print_table(rows, list(rows[0]))
    write_json(rows, args.json)


if __name__ == "__main__":
    main()
