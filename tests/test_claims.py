"""`claims`: verdicts from paired intervals on synthetic records whose answers are known."""

import json

import numpy as np
import pytest

from eqx_ffvae import cli
from eqx_ffvae.reporting import claims
from eqx_ffvae.runs import RunError

TRANSFORMS = ("scale", "rotation", "hue")
PER_FLOW = 40


def record(errors: np.ndarray, log_likelihood: np.ndarray) -> dict:
    """An eval.json with only what `claims` reads: `errors` (K, PER_FLOW) per-sequence E_k, the
    extrapolation at twice that, one composition pair at three times, and per-sequence log p(x)."""
    k = np.repeat(np.arange(len(TRANSFORMS)), PER_FLOW)
    flat = errors.reshape(-1)
    comp = 3 * flat[:, None]
    return {
        "dataset": "mnist",
        "transformations": {
            t: {
                "equivariance_error": float(errors[i].mean()),
                "equivariance_error_extrapolation": float(2 * errors[i].mean()),
            }
            for i, t in enumerate(TRANSFORMS)
        },
        "equivariance_error_composition": {"scale+rotation": {"equivariance_error": float(comp.mean())}},
        "log_likelihood": float(log_likelihood.mean()),
        "per_sequence": {
            "k": k.tolist(),
            "equivariance_error": flat.tolist(),
            "equivariance_error_extrapolation": (2 * flat).tolist(),
            "equivariance_error_composition": comp.tolist(),
            "log_likelihood": log_likelihood.tolist(),
        },
    }


def noisy(level: float, seed: int, scale: float = 30.0) -> np.ndarray:
    return level + scale * np.random.default_rng(seed).standard_normal((len(TRANSFORMS), PER_FLOW))


def write(root, name: str, records: list[dict]) -> None:
    for s, r in enumerate(records):
        (root / "runs" / name / f"seed{s}").mkdir(parents=True)
        (root / "runs" / name / f"seed{s}" / "eval.json").write_text(json.dumps(r))


@pytest.mark.parametrize(
    ("lo", "hi", "relation", "expected"),
    [
        (-5, -1, "less", "holds"),
        (1, 5, "less", "fails"),
        (-1, 1, "less", "not separated"),
        (1, 5, "greater", "holds"),
        (-5, -1, "greater", "fails"),
        (-9, 9, "equal", "holds"),  # inside ±10% of 100
        (11, 20, "equal", "fails"),
        (5, 15, "equal", "not separated"),
    ],
)
def test_judge_reads_the_interval(lo, hi, relation, expected):
    assert claims.judge((float(lo), float(hi)), relation, 100.0) == expected


def test_verdicts_on_records_with_known_answers():
    ll = np.full(len(TRANSFORMS) * PER_FLOW, -200.0)
    base = [noisy(1000, s) for s in range(3)]
    records = {
        "vae": [record(e, ll) for e in base],
        "poflow": [record(e - 400, ll - 5) for e in base],  # lower on every sequence
        "ffvae": [record(e - 500, ll + 5) for e in base],
        "ffvae-weak": [record(e - 500 + 2, ll) for e in base],  # ~0.4% of FFVAE's ~500
        "tvae": [record(noisy(1000, 10 + s), ll) for s in range(3)],  # same level as the VAE: unseparated
    }
    out = claims.assess(records)
    assert out["claims"]["ffvae-beats-poflow"]["verdict"] == "incomplete"  # poflow-authors has no record
    rows = out["claims"]["ffvae-beats-poflow"]["rows"]
    assert [r["verdict"] for r in rows if r["b"] == "poflow"] == ["holds"] * 3
    assert {r["b"] for r in rows if r["verdict"] == "missing"} == {"poflow-authors"}
    assert out["claims"]["weak-equals-supervised"]["verdict"] == "holds"
    ordering = {(r["a"], r["b"]): r["verdict"] for r in out["claims"]["baseline-ordering"]["rows"]}
    assert ordering[("tvae", "factorvae")] == "missing"
    tvae_vs_vae = claims.compare_columns(records, claims.Comparison("tvae", "vae", "equivariance_error/", "less"))
    assert {r["verdict"] for r in tvae_vs_vae} == {"not separated"}
    # the FFVAE is 500 below the VAE on every sequence: the difference is exact, not estimated
    rows = claims.compare_columns(records, claims.Comparison("ffvae", "vae", "equivariance_error/", "less"))
    for r in rows:
        assert r["difference"] == pytest.approx(-500) and r["ci95"] == pytest.approx([-500, -500])
    # a reversed claim fails on the same records
    rows = claims.compare_columns(records, claims.Comparison("vae", "ffvae", "equivariance_error/", "less"))
    assert {r["verdict"] for r in rows} == {"fails"}
    assert claims._overall([r["verdict"] for r in rows]) == "fails"
    likelihood = {r["b"]: r["verdict"] for r in out["claims"]["ffvae-highest-likelihood"]["rows"]}
    assert likelihood["vae"] == "holds" and likelihood["ffvae-weak"] == "holds"
    # log p(x) is negative: −195 / −200 = 0.975 would read as "lower"; no ratio is given, and the table says so
    assert {r["ratio"] for r in out["claims"]["ffvae-highest-likelihood"]["rows"] if r["verdict"] != "missing"} == {
        None
    }
    ffvae_vs_vae = next(r for r in out["claims"]["ffvae-highest-likelihood"]["rows"] if r["b"] == "vae")
    assert claims._row_md(ffvae_vs_vae, paper=False).split(" | ")[5] == "—"
    ablation = out["ablations"]["ffvae − poflow, beyond the horizon"]
    assert [r["difference"] for r in ablation] == pytest.approx([-200] * 3)


def test_weak_far_from_supervised_fails_the_equivalence():
    ll = np.zeros(len(TRANSFORMS) * PER_FLOW)
    records = {
        "ffvae": [record(noisy(500, s, 5), ll) for s in range(3)],
        "ffvae-weak": [record(noisy(800, s, 5), ll) for s in range(3)],
    }
    rows = claims.compare_columns(records, claims.Comparison("ffvae-weak", "ffvae", "equivariance_error/", "equal"))
    assert {r["verdict"] for r in rows} == {"fails"}


def test_cli_writes_claims_and_names_bad_folders(tmp_path, capsys):
    ll = np.full(len(TRANSFORMS) * PER_FLOW, -200.0)
    write(tmp_path, "vae", [record(noisy(1000, s), ll) for s in range(2)])
    write(tmp_path, "ffvae", [record(noisy(600, s), ll + 1) for s in range(2)])
    assert cli.main(["claims", "--results", str(tmp_path)]) == 0
    text = (tmp_path / "claims.md").read_text()
    assert "FFVAE has a lower E_k than every baseline without a flow" in text
    assert json.loads((tmp_path / "claims.json").read_text())["seeds"] == {"ffvae": 2, "vae": 2}
    (tmp_path / "runs" / "vae" / "seed1" / "eval.json").unlink()
    (tmp_path / "runs" / "vae" / "seed2").mkdir()
    (tmp_path / "runs" / "vae" / "seed2" / "eval.json").write_text("{}")
    with pytest.raises(RunError, match=r"vae has seeds \[0, 2\] but not \[1\]"):
        claims.load_records(tmp_path)
    with pytest.raises(RunError, match="nowhere/runs does not exist"):
        claims.load_records(tmp_path / "nowhere")


def test_ratio_and_equivalence_band_use_the_paired_seeds():
    """A one-seed variant against a three-seed reference: the ratio pairs the same seed as the
    difference, so the two agree in sign even when the reference's other seeds lie far off."""
    ll = np.zeros(len(TRANSFORMS) * PER_FLOW)
    reference = [record(np.full((len(TRANSFORMS), PER_FLOW), level), ll) for level in (500.0, 200.0, 200.0)]
    variant = [record(np.full((len(TRANSFORMS), PER_FLOW), 520.0), ll)]
    records = {"ffvae": reference, "ffvae-weak": variant}
    rows = claims.compare_columns(records, claims.Comparison("ffvae-weak", "ffvae", "equivariance_error/", "less"))
    for r in rows:
        assert r["seeds_paired"] == 1 and r["difference"] == pytest.approx(20)
        assert r["ratio"] == pytest.approx(520 / 500)  # not 520 / 300, the all-seed mean
        assert r["mean_b"] == pytest.approx(300) and r["verdict"] == "fails"
    # +40 lies outside ±10% of the all-seed mean (30) but inside ±10% of the paired seed's (50)
    records["ffvae-weak"] = [record(np.full((len(TRANSFORMS), PER_FLOW), 540.0), ll)]
    rows = claims.compare_columns(records, claims.Comparison("ffvae-weak", "ffvae", "equivariance_error/", "equal"))
    assert {r["verdict"] for r in rows} == {"holds"}


def test_places_a_dataset_does_not_probe_are_named_not_raised():
    """Shapes3D's records have no extrapolation or composition probe: the ablation table compares in
    range only and says which places were not measured (before, `claims` raised on them)."""

    def in_range_only(errors: np.ndarray) -> dict:
        r = record(errors, np.full(errors.size, -200.0))
        for t in r["transformations"].values():
            del t["equivariance_error_extrapolation"]
        del r["equivariance_error_composition"]
        del r["per_sequence"]["equivariance_error_extrapolation"], r["per_sequence"]["equivariance_error_composition"]
        return r

    records = {
        m: [in_range_only(noisy(level, 20 + i))]
        for i, (m, level) in enumerate([("ffvae", 500), ("poflow", 600), ("ffvae-rollout", 450)])
    }
    out = claims.assess(records)
    assert out["ablation_places_not_measured"] == ["beyond the horizon", "in composition"]
    assert set(out["ablations"]) == {
        "ffvae − poflow, in range",
        "ffvae-rollout − poflow, in range",
        "ffvae-rollout − ffvae, in range",
        *(
            f"{v} − {b}, in range"
            for v in ("ffvae-no-flow-kl", "ffvae-no-hj", "ffvae-0.1")
            for b in ("poflow", "ffvae")
        ),
    }
    assert [r["verdict"] for r in out["ablations"]["ffvae − poflow, in range"]] == ["holds"] * len(TRANSFORMS)
    assert (
        "Not measured on this dataset (its records have no such probe): beyond the horizon, in composition."
        in claims.to_markdown(out)
    )
    with_probes = claims.assess(
        {m: [record(noisy(500, 30), np.full(3 * PER_FLOW, -200.0))] for m in ("ffvae", "poflow")}
    )
    assert with_probes["ablation_places_not_measured"] == []
