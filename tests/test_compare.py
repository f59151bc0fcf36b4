"""`train/run.py compare`: the table's arithmetic and layout, and an end-to-end run that resumes."""

import dataclasses
import json
import math
import shutil
import threading
import time

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from eqx_ffvae import cli as run
from eqx_ffvae import runs
from eqx_ffvae.reporting.compare import run_compare
from eqx_ffvae.reporting.records import choose_learning_rate, claim, kept_path, one_run
from eqx_ffvae.reporting.table import seed_interval, summarise, to_markdown
from eqx_ffvae.runs import RunError, read_spec


def _result(errors, ll, transformation="own"):
    """An eval.json of two transformations from per-sequence values: `errors[t]` and `ll` are arrays
    over the (same) held-out sequences, half of each transformation."""
    n = len(ll)
    ks = np.repeat([0, 1], n // 2)
    own = np.where(ks == 0, errors[0], errors[1])
    return {
        "transformation": transformation,
        "transformations": {
            t: {"equivariance_error": float(own[ks == k].mean()), "num_sequences": int((ks == k).sum())}
            for k, t in enumerate(("scale", "rotation"))
        },
        "log_likelihood": float(np.mean(ll)),
        "per_sequence": {"k": ks.tolist(), "equivariance_error": own.tolist(), "log_likelihood": list(map(float, ll))},
    }


def _methods(rng, n=200):
    """FFVAE clearly better on scale (every sequence 2 lower), tied on rotation (0.1 apart, noise 5),
    the VAE clearly better in log-likelihood (3 nats, paired noise 1); two seeds."""
    base = rng.normal(20.0, 5.0, size=(2, n))
    noise = rng.normal(0.0, 5.0, size=(2, n))
    ll, ll_noise = rng.normal(-100.0, 1.0, size=(2, n)), rng.normal(0.0, 1.0, size=(2, n))
    vae = [
        _result([base[s] + 2.0, base[s] + noise[s] + 0.1], ll[s] + ll_noise[s] + 3.0, "linear shift") for s in range(2)
    ]
    ffvae = [_result([base[s], base[s] + noise[s][::-1]], ll[s]) for s in range(2)]
    return {"vae": vae, "ffvae": ffvae}


def test_summary_holds_every_column_over_seeds_and_the_difference_to_ffvae():
    results = _methods(np.random.default_rng(0))
    rows = summarise(results)
    scale = rows["vae"]["columns"]["equivariance_error/scale"]
    values = [r["transformations"]["scale"]["equivariance_error"] for r in results["vae"]]
    assert scale["values"] == values and scale["mean"] == pytest.approx(np.mean(values))
    np.testing.assert_allclose(scale["std"], np.std(values, ddof=1))
    diff = scale["difference_to_ffvae"]
    assert diff["mean"] == pytest.approx(2.0) and diff["ci95"] == pytest.approx([2.0, 2.0])
    assert "difference_to_ffvae" not in rows["ffvae"]["columns"]["equivariance_error/scale"]
    lo, hi = rows["vae"]["columns"]["log_likelihood"]["difference_to_ffvae"]["ci95"]
    assert 2.5 < lo < 3.0 < hi < 3.5
    assert rows["ffvae"]["supervision"] == "full" and rows["vae"]["supervision"] == "none"


def test_bold_only_where_the_interval_excludes_the_runner_up():
    results = _methods(np.random.default_rng(1))
    table = to_markdown(summarise(results), results, ["scale", "rotation"], "header")
    first = table.split("\n\n")[1]  # the paper's table
    lines = {line.split("|")[1].strip(): line.split("|")[3:6] for line in first.splitlines() if line.startswith("| ")}
    scale, rotation, ll = lines["FFVAE"]
    assert scale.strip().startswith("**") and "**" not in rotation and "**" not in ll
    assert "**" in lines["VAE †"][2] and "**" not in lines["VAE †"][1]
    assert "Paired difference to FFVAE" in table and "+2.0 [+2.0, +2.0]" in table


def test_identity_ratios_over_every_pixel_and_over_the_changed_pixels():
    """E_k / identity and the same over the changed pixels are each run's own quotients, and the probe
    table names the changed-pixel threshold the records were scored with."""
    from eqx_ffvae.reporting.table import run_columns

    results = _methods(np.random.default_rng(2))
    for seeds in results.values():
        for i, r in enumerate(seeds):
            r["changed_pixel_threshold"] = 0.1
            for entry in r["transformations"].values():
                entry["equivariance_error_identity"] = 40.0 + i
                entry["equivariance_error_changed"] = entry["equivariance_error"] / 4
                entry["equivariance_error_identity_changed"] = 20.0 + i
    cols = run_columns(results["vae"][1])
    entry = results["vae"][1]["transformations"]["rotation"]
    assert cols["equivariance_ratio/rotation"][0] == pytest.approx(entry["equivariance_error"] / 41.0)
    assert cols["equivariance_ratio_changed/rotation"][0] == pytest.approx(entry["equivariance_error"] / 4 / 21.0)
    table = to_markdown(summarise(results), results, ["scale", "rotation"], "header")
    assert "E rotation / identity, changed px" in table and "by more than 0.1)" in table


def test_seed_interval_is_the_wider_of_the_seed_and_the_seed_and_sequence_t_intervals():
    """Seed i of a against seed i of b over every seed both have. Where the seeds differ far more than the
    sequences, the interval is scipy's t-interval over the per-seed mean differences (S − 1 degrees of
    freedom, its p the one-sample t-test's); where the seeds agree and the sequences spread, it is the
    Welch interval that adds the per-sequence means' variance."""
    from scipy import stats

    rng = np.random.default_rng(0)
    b = [rng.normal(size=50) for _ in range(3)]
    a = [x + shift + rng.normal(0, 0.1, size=50) for x, shift in zip(b, (1.0, 2.0, 4.0))] + [rng.normal(size=50)]
    out = seed_interval(a, b)
    d = [float(np.mean(x - y)) for x, y in zip(a, b)]
    lo, hi = stats.t.interval(0.95, 2, loc=np.mean(d), scale=stats.sem(d))
    assert out["seeds"] == 3 and out["per_seed"] == pytest.approx(d) and out["df"] == 2
    assert out["ci95"] == pytest.approx([lo, hi]) and out["mean"] == pytest.approx(np.mean(d))
    assert out["p"] == pytest.approx(stats.ttest_1samp(d, 0.0).pvalue)
    spread = rng.normal(0, 3.0, size=50)  # each sequence's own offset, the same for every seed
    a2 = [y + 0.5 + spread + rng.normal(0, 0.01, size=50) for y in b]
    out2 = seed_interval(a2, b)
    diff = np.stack([x - y for x, y in zip(a2, b)])
    var_a, var_b = diff.mean(1).var(ddof=1) / 3, diff.mean(0).var(ddof=1) / 50
    nu = (var_a + var_b) ** 2 / (var_a**2 / 2 + var_b**2 / 49)
    half = stats.t.ppf(0.975, nu) * np.sqrt(var_a + var_b)
    assert out2["ci95"] == pytest.approx([diff.mean() - half, diff.mean() + half]) and out2["df"] == pytest.approx(nu)
    assert out2["ci95"][0] < 0 < out2["ci95"][1]  # the seed-only interval is ±0.01 wide: the seeds agree
    one = seed_interval(a[:1], b)
    assert one["seeds"] == 1 and one["ci95"] is None and one["p"] is None
    with pytest.raises(RunError, match="seed 0 of the two rows scored different sequences \\(50 against 20"):
        seed_interval(a, [x[:20] for x in b])


@pytest.mark.slow
def test_compare_runs_every_method_and_resumes(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = [
        "compare",
        "--models",
        "vae",
        "tvae",
        "--seeds",
        "2",
        "--steps",
        "2",
        "--latent-dim",
        "9",
        "--width",
        "4",
        "--eval-sequences",
        "10",
        "--ll-samples",
        "2",
        "--out",
        str(out),
        "--results",
        str(tmp_path / "results"),
    ]
    assert run.main(args) == 0
    summary = json.loads((out / "compare.json").read_text())
    assert list(summary["methods"]) == ["vae", "tvae"] and summary["setup"]["steps"] == 2
    for row in summary["methods"].values():
        assert len(row["columns"]["log_likelihood"]["values"]) == 2
        assert {c for c in row["columns"] if c.startswith("equivariance_error/")} == {
            f"equivariance_error/{t}" for t in ("scale", "rotation", "hue")
        }
    assert summary["methods"]["vae"]["transformation"] == "linear shift"
    assert summary["methods"]["tvae"]["transformation"] == "own"
    for name in ("vae", "tvae"):
        for seed in (0, 1):
            assert (out / name / f"seed{seed}" / "checkpoints").is_dir()
    table = (out / "compare.md").read_text()
    assert "| VAE † | none |" in table and "| TVAE | weak |" in table
    capsys.readouterr()
    assert run.main(args) == 0
    assert capsys.readouterr().out.count("(reused)") == 4
    assert (out / "compare.md").read_text() == table
    # the committed records alone rebuild the table: no run directory, no training
    kept = tmp_path / "results"
    assert (kept / "compare.md").read_text() == table
    for name in ("vae", "tvae"):
        for seed in (0, 1):
            files = {p.name for p in (kept / "runs" / name / f"seed{seed}").iterdir()}
            assert files == {"eval.json", "config.json", "metrics_summary.json"}
    assert json.loads((kept / "runs" / "vae" / "seed0" / "metrics_summary.json").read_text())["final_step"] == 2
    # the training time is the loop's over the run's whole metrics.jsonl, in the record and the table
    for name in ("vae", "tvae"):
        rows = runs.read_metrics(out / name / "seed0" / "metrics.jsonl")
        loop = sum(summary["setup"]["batch_size"] / r["sequences_per_s"] for r in rows)
        record = json.loads((kept / "runs" / name / "seed0" / "eval.json").read_text())
        brief = json.loads((kept / "runs" / name / "seed0" / "metrics_summary.json").read_text())
        assert record["training_seconds"] == pytest.approx(loop) == brief["training_seconds"] and loop > 0
        column = summary["methods"][name]["columns"]["training_seconds_per_run"]["values"]
        assert column[0] == record["training_seconds"]
    shutil.copytree(out, tmp_path / "cmp-kept")
    shutil.rmtree(out)
    assert run.main(args) == 0
    assert capsys.readouterr().out.count("(reused)") == 4
    assert (kept / "compare.md").read_text() == table and not (out / "vae").exists()
    out = tmp_path / "cmp-kept"
    # single-run commands on a baseline's run: figures by the linear shift / TVAE's roll; no sampling
    for name in ("vae", "tvae"):
        assert run.main(["eval", "--run", str(out / name / "seed0")]) == 0
        assert (out / name / "seed0" / "figures" / "flow_rotation.png").exists()
    assert run.main(["sample", "--run", str(out / "vae" / "seed0")]) == 2
    assert "learns no transformation" in capsys.readouterr().err


def test_choose_learning_rate_takes_the_lowest_finite_validation_loss():
    records = [
        {"learning_rate": 3e-3, "validation_loss": math.inf, "failed": "non-finite loss at step 7"},
        {"learning_rate": 1e-3, "validation_loss": 10.0},
        {"learning_rate": 3e-4, "validation_loss": 12.0},
    ]
    assert choose_learning_rate(records) == 1e-3
    with pytest.raises(RunError, match=r"every learning rate of the grid failed \(0.003: non-finite loss at step 7"):
        choose_learning_rate(records[:1])


def test_compare_chooses_the_learning_rate_on_validation_and_recomputes_only_a_deleted_run(tmp_path, capsys):
    out, kept = tmp_path / "cmp", tmp_path / "results"
    args = ["compare", "--preset", "mnist-medium", "--models", "vae", "--seeds", "2", "--steps", "2"]
    args += ["--latent-dim", "4", "--width", "2", "--eval-sequences", "10", "--ll-samples", "2", "--drift-samples", "0"]
    args += ["--lr-grid", "1e-3", "3e-3", "--out", str(out), "--results", str(kept)]
    assert run.main(args) == 0
    grid = {p.stem: json.loads(p.read_text()) for p in (kept / "grid" / "vae").glob("lr*.json")}
    assert set(grid) == {"lr0.001", "lr0.003"}
    best = min(grid.values(), key=lambda r: r["validation_loss"])["learning_rate"]
    row = json.loads((kept / "compare.json").read_text())["methods"]["vae"]
    assert row["learning_rate"] == best and set(row["learning_rate_grid"]) == set(grid)
    for seed in (0, 1):
        assert read_spec(kept / "runs" / "vae" / f"seed{seed}").learning_rate == best
    # seed 0 of the table is the grid's run at the chosen rate: trained once, then evaluated
    assert len((out / "vae" / f"lr{best:g}" / "seed0" / "metrics.jsonl").read_text().splitlines()) == 2
    capsys.readouterr()
    shutil.rmtree(out)
    shutil.rmtree(kept / "runs" / "vae" / "seed1")
    assert run.main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count("(reused)") == 3 and "vae seed 1: E" in printed  # 2 grid points + seed 0
    assert (
        not (out / "vae" / f"lr{best:g}" / "seed0").exists()
        and (kept / "runs" / "vae" / "seed1" / "eval.json").exists()
    )
    with pytest.raises(RunError, match="--validation-fraction"):
        run_compare(["vae"], 1, out, lambda m, s: runs.resolve("quick", method=m, seed=s), learning_rates=(1e-3,))


@pytest.mark.parametrize(("cap", "expected"), [(500, 65), (60, 60)])
def test_validation_loss_is_the_mean_own_loss_over_the_validation_sequences(cap, expected):
    """65 validation sequences in batches of 50 and 15: the size-weighted mean of the batches is the
    mean of the per-sequence loss (a VAE's batch loss is the mean of its sequences'). With
    eval_sequences 60 only the first 60 of the same order count (the second batch cut to 10)."""
    spec = runs.resolve(
        "mnist-medium", method="vae", latent_dim=4, width=2, validation_fraction=0.013, eval_sequences=cap
    )
    model = runs.build(spec)[0]
    result = runs.validation_loss(spec, model)
    assert result["num_sequences"] == expected
    ds = runs.sequences(spec, split="validation", seed=runs.EVAL_SEED, num_epochs=1)
    one = eqx.filter_jit(lambda m, x, k, key: m.loss(x, k, key=key)[0])
    losses = []
    for i, start in enumerate((0, 50)):
        items = [ds[j] for j in range(start, min(start + 50, expected))]
        keys = jr.split(jr.fold_in(jr.key(runs.EVAL_SEED), i), len(items))
        for item, key in zip(items, keys):
            losses.append(float(one(model, jnp.asarray(item["frames"]), jnp.asarray(item["k"]), key)))
    np.testing.assert_allclose(result["validation_loss"], np.mean(losses), rtol=1e-5)
    with pytest.raises(RunError, match="no validation split.*--validation-fraction"):
        runs.validation_loss(runs.resolve("quick", method="vae"), model)


def test_a_grid_record_made_before_a_config_field_existed_is_still_its_configuration():
    """A committed grid record stores its identity as written then; a model field added later with a
    default that keeps the old behaviour must not make it stale (it would retrain a table's grid)."""
    from eqx_ffvae.reporting.records import same_identity

    spec = runs.resolve("mnist-medium", method="ffvae")
    stored = json.loads(json.dumps(spec.identity()))
    for later in ("objective", "kl0_per_frame"):
        stored["model"].pop(later)
    assert same_identity(stored, spec)
    stored["model"]["flow_kl_weight"] = 0.5  # a real difference still counts
    assert not same_identity(stored, spec)
    assert not same_identity(None, spec) and not same_identity({"method": "ffvae"}, spec)
    taxed = json.loads(json.dumps(runs.resolve("mnist-medium", method="ffvae-rollout-kl0").identity()))
    assert not same_identity(taxed, spec)


def _finished_run(tiny_run, run_dir):
    """A copy of the tiny run whose eval.json is compare's (it names the steps it was trained for)."""
    shutil.copytree(tiny_run, run_dir)
    spec = runs.read_spec(run_dir)
    result = json.loads((run_dir / "eval.json").read_text()) | {"trained_steps": spec.steps}
    (run_dir / "eval.json").write_text(json.dumps(result))
    return spec, result


def test_a_damaged_record_is_named_in_one_line_moved_aside_and_made_again(tiny_run, tmp_path):
    """A kept record whose eval.json was cut short is not silently replaced: one line names it and what
    is wrong, and it is moved aside intact (never deleted) before the record is made again (here from
    the finished run directory). A whole record of another configuration is moved aside the same way."""
    spec, result = _finished_run(tiny_run, tmp_path / "run")
    kept = tmp_path / "results" / "runs" / spec.method / "seed0"
    kept.mkdir(parents=True)
    (kept / "config.json").write_text((tiny_run / "config.json").read_text())
    cut = json.dumps(result)[:200]
    (kept / "eval.json").write_text(cut)
    lines = []
    got, reused = one_run(spec, tmp_path / "run", kept, lines.append)
    assert reused and got == result and json.loads((kept / "eval.json").read_text()) == result
    (aside,) = kept.parent.glob("seed0.damaged-*")
    assert (aside / "eval.json").read_text() == cut
    assert len(lines) == 1 and str(kept) in lines[0] and "is damaged (eval.json:" in lines[0] and aside.name in lines[0]
    other = dataclasses.replace(spec, eval=dataclasses.replace(spec.eval, ll_samples=3))
    lines.clear()
    got, reused = one_run(other, tmp_path / "run", kept, lines.append)  # evaluated again, at S = 3
    assert not reused and got["num_importance_samples"] == 3
    (superseded,) = kept.parent.glob("seed0.superseded-*")
    assert json.loads((superseded / "eval.json").read_text()) == result
    assert len(lines) == 1 and "was made for another configuration" in lines[0]


def test_a_record_claimed_by_another_comparison_is_left_for_last_then_read_not_trained(tiny_run, tmp_path):
    """Two comparisons on one record store: while one holds a (method, seed) record's claim, the other
    does not train it; it goes on with its plan, then waits for the claim and reuses the record."""
    spec, result = _finished_run(tiny_run, tmp_path / "elsewhere")
    results = tmp_path / "results"
    kept = kept_path(results, spec.method, 0)
    passed_over, released = threading.Event(), threading.Event()

    def other_comparison():
        with claim(kept, wait=False) as mine:
            assert mine
            passed_over.wait(60)
            kept.mkdir(parents=True)
            for name in ("config.json", "eval.json"):
                (kept / name).write_text((tmp_path / "elsewhere" / name).read_text())
        released.set()

    holder = threading.Thread(target=other_comparison)
    holder.start()
    while not (kept.parent / f".{kept.name}.lock").exists():
        time.sleep(0.01)
    lines = []

    def log(line):  # the holder lets go only once this comparison has passed over and come back to wait
        lines.append(line)
        if "waiting for it" in line:
            passed_over.set()

    with claim(kept, wait=False) as mine:
        assert not mine  # held by the other "process" (its own open file)
    summary = run_compare([spec.method], 1, tmp_path / "out", lambda m, s: spec, log=log, results_dir=results)
    holder.join()
    assert released.is_set() and not (tmp_path / "out" / spec.method).exists()
    passed = [i for i, line in enumerate(lines) if "another comparison is making it" in line]
    waited = [i for i, line in enumerate(lines) if "waiting for it" in line]
    assert passed and waited and passed[0] < waited[0] and any("(reused)" in line for line in lines)
    assert summary["methods"][spec.method]["columns"]["log_likelihood"]["values"] == [result["log_likelihood"]]
