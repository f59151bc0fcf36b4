"""`ffvae-authors` checked against the authors' own PyTorch code on identical weights and batch.

The same potentials, forces, prior scales, encoder outputs (μ, log σ²), noise ε, frames and decoder go
into both: ours through `eqx_ffvae.ffvae_authors.authors_batch_terms`, theirs through their unmodified
`HJPDE` and `DiffPDE` classes (KingJamesSong/latent-flow, models/HJPDE.py, models/DiffPDE.py) and the
loop body of `TrainerOTScratch.train` (trainers/trainer_ot_scratch.py:239–275, replicated line by line
below, as ../shared/bench/ref_step.py does: the trainer module itself starts TensorBoard and
torchvision at import). The generator is a stand-in on both sides — a linear decoder z → sigmoid(Wz + b)
and given encoder outputs — because the check is of the objective; the conv nets are ours for every
method (docs/method.md §6).

Two processes: this script (our environment) draws the inputs, computes our terms, and runs itself
under a Python that has torch (`--torch-python`, default /tmp/ref-venv/bin/python; setup in
../shared/bench/README.md) with `--theirs IN.npz OUT.json`. CI does not run it.

    python benchmarks/authors_objective_check.py --out results/authors-objective-check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import numpy as np

REPO = os.environ.get("LATENT_FLOW_REPO", "/tmp/refbench/latent-flow")
CASES = [  # (seed, latent d, frames T+1, batch B, K)
    (0, 8, 5, 4, 3),
    (1, 8, 9, 4, 3),
    (2, 16, 9, 6, 3),
    (3, 32, 9, 8, 5),
]
IMAGE = (3, 6, 6)


def draw_inputs(seed: int, d: int, n: int, b: int, k: int) -> dict[str, np.ndarray]:
    """Weights and batch of one case (NumPy, float32), from our model's own initialisation."""
    import equinox as eqx
    import jax
    import jax.random as jr

    from eqx_ffvae.ffvae_authors import AuthorsFFVAE, AuthorsFFVAEConfig

    model_key, data_key = jr.split(jr.key(seed))
    model = AuthorsFFVAE(AuthorsFFVAEConfig(num_frames=n, latent_dim=d, num_flows=k), key=model_key)
    keys = jr.split(data_key, 7)
    pixels = int(np.prod(IMAGE))
    out = {
        "mu": jr.normal(keys[0], (b, d)),
        "logvar": 0.3 * jr.normal(keys[1], (b, d)) - 0.5,
        "eps": jr.normal(keys[2], (b, d)),
        "frames": jr.uniform(keys[3], (b, n, *IMAGE)),
        "dec_w": jr.normal(keys[4], (pixels, d)) / np.sqrt(d),
        "dec_b": 0.1 * jr.normal(keys[5], (pixels,)),
        "prior_scale": jr.uniform(keys[6], (k, n - 1), minval=0.5, maxval=2.0),
        "index": np.asarray(seed % k),
    }
    params = eqx.filter(model.flows, eqx.is_array)
    for role, stacked in (("pot", params.potentials.mlp), ("force", params.forces.mlp)):
        for layer in ("layer_x", "layer_time", "layer_time2", "layer_fusion", "layer_out"):
            linear = getattr(stacked, layer)
            out[f"{role}.{layer}.weight"] = linear.weight
            out[f"{role}.{layer}.bias"] = linear.bias
    return {name: np.asarray(jax.device_get(v), np.float32) for name, v in out.items()}


def ours(inputs: dict[str, np.ndarray]) -> dict[str, float]:
    """Our terms on the inputs: the bank and prior rebuilt from the arrays, the linear decoder."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    from eqx_ffvae import distributions as dist
    from eqx_ffvae.ffvae_authors import AuthorsFFVAE, AuthorsFFVAEConfig, authors_batch_terms

    jax.config.update("jax_enable_x64", False)
    b, n = inputs["frames"].shape[:2]
    d, k = inputs["mu"].shape[1], inputs["prior_scale"].shape[0]
    model = AuthorsFFVAE(AuthorsFFVAEConfig(num_frames=n, latent_dim=d, num_flows=k), key=jr.key(0))
    flows = model.flows
    for role, field in (("pot", lambda f: f.potentials.mlp), ("force", lambda f: f.forces.mlp)):
        for layer in ("layer_x", "layer_time", "layer_time2", "layer_fusion", "layer_out"):
            for part in ("weight", "bias"):
                flows = eqx.tree_at(
                    lambda f, layer=layer, part=part, field=field: getattr(getattr(field(f), layer), part),
                    flows,
                    jnp.asarray(inputs[f"{role}.{layer}.{part}"]),
                )
    w, bias = jnp.asarray(inputs["dec_w"]), jnp.asarray(inputs["dec_b"])

    def frame_lls(zs, frames):
        logits = jnp.einsum("bnd,pd->bnp", zs, w) + bias
        flat = frames.reshape(frames.shape[0], frames.shape[1], -1)
        return jax.vmap(jax.vmap(dist.bernoulli_log_likelihood))(logits, flat)

    ks = jnp.full((b,), int(inputs["index"]), jnp.int32)
    index = int(inputs["index"])

    def loss(params):
        flows, prior_scale, mu, logvar = params
        terms = authors_batch_terms(
            flows, prior_scale, frame_lls, mu, logvar, jnp.asarray(inputs["eps"]), jnp.asarray(inputs["frames"]), ks
        )
        return terms["loss"], terms

    params = (flows, jnp.asarray(inputs["prior_scale"]), jnp.asarray(inputs["mu"]), jnp.asarray(inputs["logvar"]))
    grads, terms = eqx.filter_grad(loss, has_aux=True)(params)
    out = {name: float(v) for name, v in terms.items()}
    g_flows, g_prior, g_mu, g_logvar = grads
    out["grad:mu"], out["grad:logvar"] = np.asarray(g_mu), np.asarray(g_logvar)
    out["grad:prior_scale"] = np.asarray(g_prior[index])
    for role, field in (("pot", lambda f: f.potentials.mlp), ("force", lambda f: f.forces.mlp)):
        for layer in ("layer_x", "layer_time", "layer_time2", "layer_fusion", "layer_out"):
            linear = getattr(field(g_flows), layer)
            out[f"grad:{role}.{layer}"] = np.concatenate([np.ravel(linear.weight[index]), np.ravel(linear.bias[index])])
    return out


def theirs(inputs: dict[str, np.ndarray]) -> dict[str, float]:
    """Their terms: their classes, weights copied in, their loop body (trainer :239–275). Runs in the
    torch process, whose PYTHONPATH holds their repository."""
    import torch
    from latent_flow.models.DiffPDE import DiffPDE
    from latent_flow.models.HJPDE import HJPDE
    from torch.distributions.normal import Normal

    torch.set_num_threads(1)
    t_ = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    frames = t_(inputs["frames"])
    b, n = frames.shape[:2]
    d, k = inputs["mu"].shape[1], inputs["prior_scale"].shape[0]
    num_timesteps = 2 * (n - 1)  # their --num-timesteps; the loop runs num_timesteps // 2 = T steps
    S = HJPDE(num_support_sets=k, num_timesteps=num_timesteps, support_vectors_dim=d)
    S_Prior = DiffPDE(num_support_sets=k, num_timesteps=num_timesteps, support_vectors_dim=d)
    with torch.no_grad():
        for role, bank in (("pot", S.MLP_SET), ("force", S.FORCE_SET)):
            for j in range(k):
                for layer in ("layer_x", "layer_time", "layer_time2", "layer_fusion", "layer_out"):
                    module = getattr(bank[j], layer)
                    module.weight.copy_(t_(inputs[f"{role}.{layer}.weight"][j]))
                    module.bias.copy_(t_(inputs[f"{role}.{layer}.bias"][j]))
            for j in range(k):
                S_Prior.MLP_SET[j].sigma.copy_(t_(inputs["prior_scale"][j])[:, None])
    dec_w, dec_b = t_(inputs["dec_w"]), t_(inputs["dec_b"])
    mean, log_var = t_(inputs["mu"]).requires_grad_(), t_(inputs["logvar"]).requires_grad_()

    def inference(z):  # the stand-in generator's decoder
        return torch.sigmoid(z @ dec_w.T + dec_b).view(b, *frames.shape[2:])

    kl_div = torch.nn.KLDivLoss(reduction="batchmean", log_target=True)

    def bce(recon_x, x):  # trainer :118–122
        return torch.nn.functional.binary_cross_entropy(recon_x.view(b, -1), x.view(b, -1), reduction="sum") / b

    x = frames[:, 0]
    index = torch.tensor([[int(inputs["index"])]])
    half_range = num_timesteps // 2
    z = mean + t_(inputs["eps"]) * torch.exp(0.5 * log_var)  # ConvVAE.reparameterize
    recon_x = inference(z)
    std = torch.exp(log_var / 2.0)
    rho = Normal(0.0, 1.0).log_prob(z)
    rho_t = Normal(mean, std).log_prob(z)
    kld = -0.5 * torch.sum(1 + log_var - mean.pow(2) - log_var.exp()) / b  # loss_fn :115–116
    recon = bce(recon_x, x)
    out = {}
    for t in range(1, half_range + 1):
        x_t = frames[:, t]
        time_stamp = t * torch.ones(1, 1, requires_grad=True)
        energy, loss_pde_tmp, uz, uzz = S(index, z, time_stamp)
        _, _, _, uzz_prior = S_Prior(index, z, time_stamp, rho)
        rho_t = rho_t - (uzz + 1).abs().log()
        rho = rho - (uzz_prior + 1).abs().log()
        z = z + uz
        rho_loss1_tmp = kl_div(
            torch.nn.functional.log_softmax(rho_t.exp(), dim=-1),
            torch.nn.functional.log_softmax(rho.exp(), dim=-1),
        )
        recon = recon + bce(inference(z), x_t)
        out[f"rho_kl_t{t}"] = rho_loss1_tmp.item()
        loss_pde = loss_pde_tmp if t == 1 else loss_pde + loss_pde_tmp
        rho_loss1 = rho_loss1_tmp if t == 1 else rho_loss1 + rho_loss1_tmp
    loss = recon + kld + rho_loss1 + loss_pde
    out.update(loss=loss.item(), recon=-recon.item(), kl0=kld.item(), rho_kl=rho_loss1.item(), hj=loss_pde.item())
    loss.backward()
    j = int(inputs["index"])
    out["grad:mu"], out["grad:logvar"] = mean.grad.tolist(), log_var.grad.tolist()
    out["grad:prior_scale"] = S_Prior.MLP_SET[j].sigma.grad[:, 0].tolist()
    for role, bank in (("pot", S.MLP_SET), ("force", S.FORCE_SET)):
        for layer in ("layer_x", "layer_time", "layer_time2", "layer_fusion", "layer_out"):
            module = getattr(bank[j], layer)
            out[f"grad:{role}.{layer}"] = module.weight.grad.ravel().tolist() + module.bias.grad.ravel().tolist()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for check.json and check.md")
    parser.add_argument("--torch-python", default="/tmp/ref-venv/bin/python")
    parser.add_argument("--theirs", nargs=2, metavar=("IN_NPZ", "OUT_JSON"), help=argparse.SUPPRESS)
    parser.add_argument("--tolerance", type=float, default=1e-4, help="relative tolerance per term")
    args = parser.parse_args()
    if args.theirs:
        with np.load(args.theirs[0], allow_pickle=False) as blob:
            inputs = dict(blob)
        Path(args.theirs[1]).write_text(json.dumps(theirs(inputs)))
        return
    if not Path(args.torch_python).exists():
        raise SystemExit(
            f"--torch-python {args.torch_python} does not exist: set it up as ../shared/bench/README.md says"
        )
    if not Path(REPO, "latent_flow", "models", "HJPDE.py").exists():
        raise SystemExit(f"the authors' repository is not at {REPO}: set LATENT_FLOW_REPO (../shared/bench/README.md)")
    rows, worst = [], 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for seed, d, n, b, k in CASES:
            inputs = draw_inputs(seed, d, n, b, k)
            npz, js = Path(tmp, f"in{seed}.npz"), Path(tmp, f"out{seed}.json")
            np.savez(npz, **inputs)
            subprocess.run(
                [args.torch_python, __file__, "--theirs", str(npz), str(js)],
                check=True,
                env={**os.environ, "PYTHONPATH": REPO},
            )
            theirs_terms, ours_terms = json.loads(js.read_text()), ours(inputs)
            for term, value in theirs_terms.items():
                mine = ours_terms[term]
                if term.startswith("grad:"):  # a gradient: ‖ours − theirs‖ / ‖theirs‖, norms in the columns
                    value, mine = np.ravel(value), np.ravel(mine)
                    rel = float(np.linalg.norm(mine - value) / max(np.linalg.norm(value), 1e-12))
                    value, mine = float(np.linalg.norm(value)), float(np.linalg.norm(mine))
                else:
                    rel = abs(mine - value) / max(abs(value), 1e-12)
                worst = max(worst, rel)
                rows.append(
                    {
                        "seed": seed,
                        "d": d,
                        "frames": n,
                        "batch": b,
                        "K": k,
                        "term": term,
                        "theirs": value,
                        "ours": mine,
                        "rel_diff": rel,
                    }
                )
    passed = worst <= args.tolerance
    lines = [
        f"# ffvae-authors against the authors' code (identical weights and batch): {'PASS' if passed else 'FAIL'}",
        "",
        f"Largest relative difference {worst:.2e} (tolerance {args.tolerance:g}). Terms: the value; `grad:X`: the "
        "gradient of the total loss with respect to X (flow `index`'s parameters, the encoder outputs μ and "
        "log σ², the prior scales), compared as ‖ours − theirs‖ / ‖theirs‖ with the norms in the value columns.",
        "",
        "| seed | d | T+1 | B | K | term | theirs | ours | rel. diff |",
        "|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    lines += [
        f"| {r['seed']} | {r['d']} | {r['frames']} | {r['batch']} | {r['K']} | {r['term']} | {r['theirs']:.7g} | {r['ours']:.7g} | {r['rel_diff']:.1e} |"
        for r in rows
    ]
    table = "\n".join(lines)
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        torch_version = subprocess.run(
            [args.torch_python, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True
        ).stdout.strip()
        meta = {"passed": passed, "worst_rel_diff": worst, "tolerance": args.tolerance, "torch": torch_version}
        meta["python"], meta["machine"] = platform.python_version(), platform.processor() or platform.machine()
        (args.out / "check.json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
        (args.out / "check.md").write_text(table + "\n")
    if not passed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
