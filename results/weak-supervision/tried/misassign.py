"""How often a weak run's E-step sends a training sequence to a flow other than its transformation's.

`python results/weak-supervision/tried/misassign.py RUN_DIR [--batches 20] [--batch-size 32]` scores
batches of training sequences with the run's newest checkpoint and prints the share of sequences that
the balanced assignment (the E-step), the plain posterior (argmax of the scores) and argmax q(k | x̄)
put on a flow other than the one `eval.json`'s flow matching gives their transformation.
"""

import argparse
import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import eqx_ffvae as ff
from eqx_ffvae import data, objectives


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a finished weak run's directory (it holds eval.json)")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    model, spec = ff.load_run(args.run)
    if not isinstance(model, ff.AbstractFlowInferenceModel):
        raise SystemExit(f"{args.run} holds a {type(model).__name__}, which infers no flow: give a weak run")
    matching = np.asarray(json.loads((args.run / "eval.json").read_text())["flow_assignment"]["matching"])
    dataset = data.sequence_dataset(spec.dataset, seed=5, num_epochs=None)
    batches = data.batch_iterator(dataset, args.batch_size, prefetch_buffer=0)
    scores_of = eqx.filter_jit(lambda m, x, key: m.assignment_scores(x, key=key))
    wrong = {"balanced": 0, "posterior": 0, "q": 0}
    gaps = []
    for i in range(args.batches):
        batch = next(batches)
        frames, true = jnp.asarray(batch["frames"]), matching[batch["k"]]
        scores = scores_of(model, frames, jr.key(i))
        picks = {
            "balanced": jnp.argmax(objectives.balanced_assignment(scores, model.config.min_flow_share), axis=1),
            "posterior": jnp.argmax(scores, axis=1),
            "q": jnp.argmax(jax.vmap(model.flow_posterior_logits)(frames), axis=1),
        }
        for name, pick in picks.items():
            wrong[name] += int(np.sum(np.asarray(pick) != true))
        ordered = np.sort(np.asarray(scores), axis=1)
        gaps += list(ordered[:, -1] - ordered[:, -2])
    total = args.batches * args.batch_size
    print({name: count / total for name, count in wrong.items()})
    print(f"best − second score: median {np.median(gaps):.3g}, 10th percentile {np.percentile(gaps, 10):.3g}")


if __name__ == "__main__":
    main()
