"""Host time to dispatch one training step, three ways, at a preset (default `quick`).

    python benchmarks/dispatch.py [--preset quick] [--calls 40] [--json PATH]

The host's share of a training step on a CPU is the Python between steps; on 2 cores the step's
own threads wait for it. Each call is timed from the call to its return (the step itself runs on
afterwards, asynchronously), after the previous step has finished, so it measures the host work of
dispatch alone:

* `equinox`: `make_step(...).lower(...).compile()`, Equinox's compiled step, on (model, opt_state)
  and a batch already on the device (how the loop called it before `FlatStep`);
* `flat`: `training.FlatStep` on the flat leaves, a batch already on the device;
* `flat, host batch`: `FlatStep` given the host's numpy batch, which it puts on the device itself
  (how the loop calls it now, in one process);

and for scale, `device_put` of the host batch (`shard_batch`). Reported: the median in ms.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import jax
    import jax.random as jr

    from eqx_ffvae import data, runs
    from eqx_ffvae.data import device
    from eqx_ffvae.training import FlatStep, make_mesh, make_step, replicate, shard_batch, trace_and_compile, with_step

    spec = runs.resolve(args.preset)
    on_device = runs.frames_made_on_device(spec)
    model, optimizer, opt_state = runs.build(spec)
    mesh = make_mesh()
    model, opt_state = replicate((model, opt_state), mesh)
    make_frames = functools.partial(device.frames, num_frames=spec.model.num_frames) if on_device else None
    step = make_step(optimizer, slice_size=spec.slice_size, mesh=mesh, make_frames=make_frames)
    batches = data.batch_iterator(runs.sequences(spec, compact=on_device), spec.batch_size)
    host = with_step({name: v for name, v in next(batches).items() if name in runs.STEP_INPUTS}, 0)
    key = jr.key(0)
    compiled, _, _ = trace_and_compile(step, model, opt_state, shard_batch(host, mesh), key)
    flat = FlatStep(step, model, opt_state, shard_batch(host, mesh), key)
    # Each way steps its own copy: a step donates the state it is given.
    state = {"equinox": (model, opt_state), "flat": [leaf.copy() for leaf in flat.leaves(model, opt_state)]}

    def equinox():
        model, opt_state, _, terms = compiled(*state["equinox"], batch(), key)
        state["equinox"] = (model, opt_state)
        return terms

    def flat_device():
        state["flat"], _, terms = flat(state["flat"], batch(), key)
        return terms

    def flat_host():
        state["flat"], _, terms = flat(state["flat"], host, key)
        return terms

    def timed(call, prepare) -> float:
        seconds, out = [], None
        for _ in range(args.calls):
            jax.block_until_ready((out, jax.tree.leaves(state)))
            prepared = prepare()
            jax.block_until_ready(prepared)
            batch.value = prepared
            start = time.perf_counter()
            out = call()
            seconds.append(time.perf_counter() - start)
        jax.block_until_ready(out)
        return 1e3 * statistics.median(seconds[2:])

    def batch():
        return batch.value

    def put():
        return shard_batch(host, mesh)

    rows = {
        "equinox": timed(equinox, put),
        "flat": timed(flat_device, put),
        "flat, host batch": timed(flat_host, lambda: None),
        "device_put of the batch": timed(put, lambda: None),
    }
    print(f"host ms per dispatch at {args.preset} ({len(state['flat'])} array leaves in model + optimiser state)")
    for name, ms in rows.items():
        print(f"  {name:<26} {ms:7.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"preset": args.preset, "calls": args.calls, "leaves": len(state["flat"]), "ms": rows}, f, indent=2
            )


if __name__ == "__main__":
    main()
