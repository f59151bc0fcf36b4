"""`train/run.py compare`: the table's arithmetic and layout, and an end-to-end run that resumes."""

import json
import shutil

import numpy as np
import pytest

from eqx_ffvae import cli as run
from eqx_ffvae.compare import paired_bootstrap, summarise, to_markdown


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


def test_paired_bootstrap_interval():
    rng = np.random.default_rng(0)
    a = [rng.normal(size=400)]
    same = paired_bootstrap(a, a)
    assert same["mean"] == 0.0 and same["ci95"] == [0.0, 0.0]
    d = rng.normal(1.0, 2.0, size=400)
    out = paired_bootstrap([a[0] + d], a)
    lo, hi = out["ci95"]
    assert out["mean"] == pytest.approx(d.mean()) and lo < d.mean() < hi
    assert hi - lo == pytest.approx(2 * 1.96 * d.std() / np.sqrt(400), rel=0.15)


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
