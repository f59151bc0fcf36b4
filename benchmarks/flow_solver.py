"""The latent flow's solve with its gradient: Diffrax, as the training step runs it, against the same Euler
updates written as a plain `lax.scan`, on one slice of sequences as `layout.flow_rows` solves it (one
potential per row, T = 8 steps of dt = 1, exact Laplacian).

    python benchmarks/flow_solver.py [--configs quick a] [--rounds 5] [--json PATH]

DESIGN.md measured a Diffrax Euler solve ~20% slower than `lax.scan` at d = 64 and asked whether
Diffrax's options explain it. Rows:
  diffrax-ts     `layout.flow_rows`: Euler, SaveAt(ts=0…T), RecursiveCheckpointAdjoint, max_steps = T
  diffrax-steps  the same with SaveAt(t0=True, steps=True): no interpolating save loop
  scan           `lax.scan` over the T updates; reverse mode stores every step's residuals
`max_rel_diff` compares each variant's value and gradients with diffrax-ts. Rounds are interleaved, because this VM's speed drifts over
minutes; `ms` is the median over rounds of each round's median.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from _util import print_table, write_json

import eqx_ffvae as ff
from eqx_ffvae import layout
from eqx_ffvae.flows import FlowSettings

# (latent d, potential width, rows per slice): slices of 16 sequences, as the library's default.
CONFIGS = {"quick": (32, 128, 16), "a": (324, 324, 16)}
T, K = 8, 3


def _row_field(pot):
    one_row = eqx.filter_vmap(lambda p, t, z: p.grad_and_laplacian(t, z), in_axes=(0, None, 0))

    def field(t, y, args):
        grad, lap = one_row(pot, t, y[0])
        return grad, -lap

    return field


def solve_diffrax_ts(pot, z0, logq0, ts):
    return layout.flow_rows(pot, z0, logq0, ts, settings=FlowSettings())


def solve_diffrax_steps(pot, z0, logq0, ts):
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(_row_field(pot)),
        diffrax.Euler(),
        t0=ts[0],
        t1=ts[-1],
        dt0=1.0,
        y0=(z0, logq0),
        saveat=diffrax.SaveAt(t0=True, steps=True),
        max_steps=ts.shape[0] - 1,
    )
    zs, logqs = sol.ys
    return jnp.swapaxes(zs, 0, 1), jnp.swapaxes(logqs, 0, 1)


def solve_scan(pot, z0, logq0, ts):
    field = _row_field(pot)

    def euler(y, t):
        grad, rate = field(t, y, None)
        y = (y[0] + grad, y[1] + rate)
        return y, y

    _, (zs, logqs) = jax.lax.scan(euler, (z0, logq0), ts[:-1])
    zs, logqs = jnp.concatenate([z0[None], zs]), jnp.concatenate([logq0[None], logqs])
    return jnp.swapaxes(zs, 0, 1), jnp.swapaxes(logqs, 0, 1)


VARIANTS = {"diffrax-ts": solve_diffrax_ts, "diffrax-steps": solve_diffrax_steps, "scan": solve_scan}


def _max_rel_diff(ref, out) -> float:
    return max(
        float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(a)) + 1e-30))
        for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(out))
    )


def _interleaved(calls: dict[str, Callable[[], Any]], rounds: int, repeats: int) -> dict[str, float]:
    """Median over rounds of each variant's median seconds per call, the variants interleaved per round."""
    medians = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                jax.block_until_ready(call())
                times.append(time.perf_counter() - start)
            medians[name].append(statistics.median(times))
    return {name: statistics.median(m) for name, m in medians.items()}


def _rows(level: str, config: str, d: int, rows: int, seconds: dict, compile_s: dict, diffs: dict) -> list[dict]:
    ref = seconds["diffrax-ts"]
    return [
        {
            "level": level,
            "config": config,
            "d": d,
            "rows": rows,
            "solver": name,
            "ms": 1e3 * seconds[name],
            "vs_diffrax_ts": seconds[name] / ref,
            "compile_s": compile_s[name],
            "max_rel_diff": diffs[name],
        }
        for name in VARIANTS
    ]


def measure(config: str, rounds: int, calls: int) -> list[dict]:
    d, width, rows = CONFIGS[config]
    bank_key, z_key, w_key = jr.split(jr.key(0), 3)
    bank = ff.PotentialBank(K, d, width, key=bank_key)
    ks = jnp.arange(rows) % K
    z0 = jr.normal(z_key, (rows, d))
    logq0 = jnp.zeros(rows)
    weights = jr.normal(w_key, (rows, T + 1, d))
    ts = jnp.arange(T + 1, dtype=jnp.float32)

    def make(solve):
        def loss(bank, z0):
            zs, logqs = solve(layout.row_potentials(bank, ks), z0, logq0, ts)
            return jnp.sum(weights * zs) + jnp.sum(logqs)

        return eqx.filter_jit(eqx.filter_value_and_grad(loss))

    fns, outs, compile_s = {}, {}, {}
    for name, solve in VARIANTS.items():
        fns[name] = make(solve)
        start = time.perf_counter()
        outs[name] = jax.block_until_ready(fns[name](bank, z0))
        compile_s[name] = time.perf_counter() - start
    seconds = _interleaved({name: functools.partial(fn, bank, z0) for name, fn in fns.items()}, rounds, calls)
    diffs = {name: _max_rel_diff(outs["diffrax-ts"], out) for name, out in outs.items()}
    return _rows("flow", config, d, rows, seconds, compile_s, diffs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=["quick"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20, help="timed calls per variant per round")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = [row for config in args.configs for row in measure(config, args.rounds, args.calls)]
    print(f"jax {jax.__version__}, diffrax {diffrax.__version__} on {jax.devices()[0].device_kind}")
    print_table(rows, list(rows[0]))
    write_json(rows, args.json)


if __name__ == "__main__":
    main()
