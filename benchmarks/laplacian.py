"""Time the Laplacian strategies of a potential over a batch: value only, and value + parameter grads.

    python benchmarks/laplacian.py [--batch 128] [--dims 64 324] [--json PATH]

Methods: `hvp` (exact, d Hessian-vector products), `exact` (forward-mode Laplacian, the default),
`hutchinson` (one Rademacher probe). The potential is the model's: an MLP of width d, depth 2.
"""

from __future__ import annotations

import argparse

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from _util import print_table, time_call, write_json

import eqx_ffvae as ff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 324])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    rows = []
    for d in args.dims:
        pot = ff.MLPPotential(d, d, key=jr.key(0))
        zs = jr.normal(jr.key(1), (args.batch, d))
        keys = jr.split(jr.key(2), args.batch)
        exact = None
        for method in ("hvp", "exact", "hutchinson"):

            def batch_lap(pot, zs, keys, method=method):
                def one(z, k):
                    return ff.laplacian(pot, 0.5, z, method=method, key=k if method == "hutchinson" else None)

                return jax.vmap(one)(zs, keys)

            value = eqx.filter_jit(batch_lap)
            grad = eqx.filter_jit(eqx.filter_grad(lambda p, z, k: jnp.sum(batch_lap(p, z, k) ** 2)))
            compile_v, fwd = time_call(value, pot, zs, keys, repeats=args.repeats)
            compile_g, bwd = time_call(grad, pot, zs, keys, repeats=args.repeats)
            out = value(pot, zs, keys)
            if method == "hvp":
                exact = out
            err = float(jnp.max(jnp.abs(out - exact)) / jnp.max(jnp.abs(exact)))
            rows.append(
                {
                    "d": d,
                    "batch": args.batch,
                    "method": method,
                    "forward_ms": 1e3 * fwd,
                    "forward+grad_ms": 1e3 * bwd,
                    "compile_s": compile_v + compile_g,
                    "max_rel_diff_vs_hvp": err,  # Hutchinson: one probe's estimation error
                }
            )
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}")
    print_table(rows, list(rows[0]))
    write_json(rows, args.json)


if __name__ == "__main__":
    main()
