import sys, json
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "train"))
import jax, jax.numpy as jnp, jax.random as jr, equinox as eqx, numpy as np
from pathlib import Path
from loop import RunSpec, restore_model
from eqx_ffvae import data, objectives
run = Path(sys.argv[1])
spec = RunSpec.from_json(json.loads((run / "config.json").read_text()))
model, step = restore_model(spec, run)
match = json.loads((run / "eval.json").read_text())["flow_assignment"]["matching"]
ds = data.sequence_dataset("mnist", seed=5, num_epochs=None)
it = data.batch_iterator(ds, 32, prefetch_buffer=0)
f = eqx.filter_jit(lambda m, x, k: m.assignment_scores(x, key=k))
tot = {"balanced": 0, "posterior": 0, "q": 0}; n = 0; gaps = []
for i in range(20):
    b = next(it); x = jnp.asarray(b["frames"]); true = np.array(match)[b["k"]]
    s = f(model, x, jr.key(i))
    bal = np.asarray(jnp.argmax(objectives.balanced_assignment(s), 1))
    post = np.asarray(jnp.argmax(s, 1))
    q = np.asarray(jnp.argmax(jax.vmap(model.flow_posterior_logits)(x), 1))
    tot["balanced"] += (bal != true).sum(); tot["posterior"] += (post != true).sum(); tot["q"] += (q != true).sum(); n += 32
    srt = np.sort(np.asarray(s), 1); gaps += list(srt[:, -1] - srt[:, -2])
print({k: v / n for k, v in tot.items()}, "median gap best-second", np.median(gaps), np.percentile(gaps, 10))
