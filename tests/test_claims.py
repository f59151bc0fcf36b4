"""`claims`: verdicts from paired intervals on synthetic records whose answers are known."""

import json

import numpy as np
import pytest

from eqx_ffvae import cli
from eqx_ffvae.reporting import claims, claims_text
from eqx_ffvae.runs import RunError

TRANSFORMS = ("scale", "rotation", "hue")
PER_FLOW = 40


def record(errors: np.ndarray, log_likelihood: np.ndarray, identity: float = 2000.0, drift: float = 1.0) -> dict:
    """An eval.json with only what `claims` reads: `errors` (K, PER_FLOW) per-sequence E_k, the
    extrapolation at twice that, one composition pair at three times, per-sequence log p(x), the
    identity score of every transformation and the likelihood estimator's drift."""
    k = np.repeat(np.arange(len(TRANSFORMS)), PER_FLOW)
    flat = errors.reshape(-1)
    comp = 3 * flat[:, None]
    return {
        "dataset": "mnist",
        "transformations": {
            t: {
                "equivariance_error": float(errors[i].mean()),
                "equivariance_error_extrapolation": float(2 * errors[i].mean()),
                "equivariance_error_identity": identity,
            }
            for i, t in enumerate(TRANSFORMS)
        },
        "equivariance_error_composition": {"scale+rotation": {"equivariance_error": float(comp.mean())}},
        "log_likelihood": float(log_likelihood.mean()),
        "likelihood_drift": {"mean_abs_difference": drift},
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
    claims.decide(tvae_vs_vae)
    assert {r["verdict"] for r in tvae_vs_vae} == {"not separated"}
    # the FFVAE is 500 below the VAE on every sequence: the difference is exact, not estimated
    rows = claims.compare_columns(records, claims.Comparison("ffvae", "vae", "equivariance_error/", "less"))
    for r in rows:
        assert r["difference"] == pytest.approx(-500) and r["ci95"] == pytest.approx([-500, -500])
    # a reversed claim fails on the same records
    rows = claims.compare_columns(records, claims.Comparison("vae", "ffvae", "equivariance_error/", "less"))
    claims.decide(rows)
    assert {r["verdict"] for r in rows} == {"fails"}
    assert claims._overall([r["verdict"] for r in rows]) == "fails"
    likelihood = {r["b"]: r["verdict"] for r in out["claims"]["ffvae-highest-likelihood"]["rows"]}
    assert likelihood["vae"] == "holds" and likelihood["ffvae-weak"] == "holds"
    # log p(x) is negative: −195 / −200 = 0.975 would read as "lower"; no ratio is given, and the table says so
    assert {r["ratio"] for r in out["claims"]["ffvae-highest-likelihood"]["rows"] if r["verdict"] != "missing"} == {
        None
    }
    ffvae_vs_vae = next(r for r in out["claims"]["ffvae-highest-likelihood"]["rows"] if r["b"] == "vae")
    assert claims_text._row_md(ffvae_vs_vae, paper=False).split(" | ")[6] == "—"
    ablation = out["ablations"]["ffvae − poflow, beyond the horizon"]
    assert [r["difference"] for r in ablation] == pytest.approx([-200] * 3)


def test_weak_far_from_supervised_fails_the_equivalence():
    ll = np.zeros(len(TRANSFORMS) * PER_FLOW)
    records = {
        "ffvae": [record(noisy(500, s, 5), ll) for s in range(3)],
        "ffvae-weak": [record(noisy(800, s, 5), ll) for s in range(3)],
    }
    rows = claims.compare_columns(records, claims.Comparison("ffvae-weak", "ffvae", "equivariance_error/", "equal"))
    claims.decide(rows)
    assert {r["verdict"] for r in rows} == {"fails"}


def test_cli_writes_claims_and_names_bad_folders(tmp_path, capsys):
    ll = np.full(len(TRANSFORMS) * PER_FLOW, -200.0)
    write(tmp_path, "vae", [record(noisy(1000, s), ll) for s in range(2)])
    write(tmp_path, "ffvae", [record(noisy(600, s), ll + 1) for s in range(2)])
    assert cli.main(["claims", "--results", str(tmp_path)]) == 0
    text = (tmp_path / "claims.md").read_text()
    assert "FFVAE has a lower E_k than every baseline without a flow" in text
    assert json.loads((tmp_path / "claims.json").read_text())["seeds"] == {"ffvae": 2, "vae": 2}
    aside = tmp_path / "runs" / "vae" / "seed1.superseded-20261206T000000Z"
    aside.mkdir()
    (aside / "eval.json").write_text("{}")
    assert claims.load_records(tmp_path)["vae"] == [
        json.loads((tmp_path / "runs" / "vae" / f"seed{s}" / "eval.json").read_text()) for s in range(2)
    ]
    (tmp_path / "runs" / "vae" / "seed1" / "eval.json").unlink()
    (tmp_path / "runs" / "vae" / "seed2").mkdir()
    (tmp_path / "runs" / "vae" / "seed2" / "eval.json").write_text("{}")
    with pytest.raises(RunError, match=r"vae has seeds \[0, 2\] but not \[1\]"):
        claims.load_records(tmp_path)
    with pytest.raises(RunError, match="nowhere/runs does not exist"):
        claims.load_records(tmp_path / "nowhere")


def test_ratio_and_equivalence_band_use_the_paired_seeds():
    """A one-seed variant against a three-seed reference: the ratio pairs the same seed as the
    difference, so the two agree in sign even when the reference's other seeds lie far off; with one
    paired seed there is no interval (the seed spread is unknown), so no verdict."""
    ll = np.zeros(len(TRANSFORMS) * PER_FLOW)
    reference = [record(np.full((len(TRANSFORMS), PER_FLOW), level), ll) for level in (500.0, 200.0, 200.0)]
    variant = [record(np.full((len(TRANSFORMS), PER_FLOW), 520.0), ll)]
    records = {"ffvae": reference, "ffvae-weak": variant}
    rows = claims.compare_columns(records, claims.Comparison("ffvae-weak", "ffvae", "equivariance_error/", "less"))
    claims.decide(rows)
    for r in rows:
        assert r["seeds_paired"] == 1 and r["difference"] == pytest.approx(20)
        assert r["ratio"] == pytest.approx(520 / 500)  # not 520 / 300, the all-seed mean
        assert r["mean_b"] == pytest.approx(300) and r["ci95"] is None and r["verdict"] == "not separated"
        assert "+20.0 (1 seed: no interval)" in claims_text._row_md(r, paper=False)
    # three seeds each, +40 on every one: outside ±10% of the all-seed mean (30) but inside ±10% of 500
    # for the first seed only; the band is that of the paired seeds' mean (300): +40 > 30, so it fails
    records["ffvae-weak"] = [
        record(np.full((len(TRANSFORMS), PER_FLOW), level + 40.0), ll) for level in (500.0, 200.0, 200.0)
    ]
    rows = claims.compare_columns(records, claims.Comparison("ffvae-weak", "ffvae", "equivariance_error/", "equal"))
    claims.decide(rows)
    assert {r["verdict"] for r in rows} == {"fails"}


def test_holm_corrects_a_claims_fails_and_every_row_must_hold_on_its_own():
    """Holm's step-down: p = (0.01, 0.04, 0.03) adjusts to (0.03, 0.06, 0.06). A claim fails when any of its
    rows fails (a union), so the opposite direction's p-values are corrected together: only the first
    row fails. A claim holds only when every row holds (an intersection–union test, at 5% as it is), so
    the claimed direction's p-values are not corrected: p_holds = 0.04 holds."""
    assert claims.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    rows = [{"p_holds": 1.0, "p_fails": p} for p in (0.01, 0.04, 0.03)]
    claims.decide(rows)
    assert [r["verdict"] for r in rows] == ["fails", "not separated", "not separated"]
    assert [r["p_fails_holm"] for r in rows] == pytest.approx([0.03, 0.06, 0.06])
    assert claims._overall([r["verdict"] for r in rows]) == "fails"
    rows = [{"p_holds": p, "p_fails": 1.0} for p in (0.04, 0.049, 0.001)]
    claims.decide(rows)
    assert claims._overall([r["verdict"] for r in rows]) == "holds"
    rows = [{"p_holds": 0.001, "p_fails": 1.0}, {"p_holds": 0.2, "p_fails": 0.4}, {"p_holds": None, "p_fails": None}]
    claims.decide(rows)
    assert [r["verdict"] for r in rows] == ["holds", "not separated", "not separated"]


def test_p_values_match_the_interval():
    """p_holds < 0.05 exactly when the 95% interval lies on the claimed side, for every relation."""
    from eqx_ffvae.reporting.table import seed_interval

    rng = np.random.default_rng(3)
    for shift in (-30.0, -8.0, 0.0, 8.0, 30.0):
        b = [rng.normal(100, 5, 40) for _ in range(3)]
        a = [x + shift + rng.normal(0, 4) for x in b]
        diff = seed_interval(a, b)
        lo, hi = diff["ci95"]
        for relation, on_side in (("less", hi < 0), ("greater", lo > 0), ("equal", -10 < lo and hi < 10)):
            p_holds, p_fails = claims.p_values(diff, relation, 100.0)
            assert (p_holds < 0.05) == on_side, (shift, relation)
            opposite = {"less": lo > 0, "greater": hi < 0, "equal": hi < -10 or lo > 10}[relation]
            assert (p_fails < 0.05) == opposite, (shift, relation)


def test_a_column_near_every_methods_identity_score_gets_no_verdict():
    """When every method's E_k on a column is at 0.9 of its own identity score or above, the column ranks
    reconstruction: it is named, its rows say "not discriminating", and a claim judged on such columns
    only says so instead of holding or failing."""
    ll = np.full(len(TRANSFORMS) * PER_FLOW, -200.0)
    near = [record(noisy(1000, s), ll, identity=1050.0) for s in range(3)]
    records = {"ffvae": near, "vae": [record(noisy(1010, 5 + s), ll, identity=1050.0) for s in range(3)]}
    records["vae"][0]["transformations"]["hue"]["equivariance_error_identity"] = 1500.0  # vae at 0.67 on hue
    out = claims.assess(records)
    assert set(out["not_discriminating"]) == {"equivariance_error/scale", "equivariance_error/rotation"}
    rows = out["claims"]["ffvae-beats-baselines"]["rows"]
    verdicts = {r["column"]: r["verdict"] for r in rows if r["b"] == "vae"}
    assert verdicts["equivariance_error/scale"] == verdicts["equivariance_error/rotation"] == "not discriminating"
    assert verdicts["equivariance_error/hue"] != "not discriminating"
    assert claims._overall(["not discriminating"] * 2) == "not discriminating"
    assert "equivariance_error/scale: E_k / identity" in claims_text.to_markdown(out)


def test_a_comparison_of_two_methods_near_their_identity_scores_gets_no_verdict():
    """On hue the VAE beats its identity score by half, so the column discriminates; but the FFVAE and
    PoFlow sit at 0.95 and 0.975 of theirs, so their difference there (50 on every sequence, which an
    interval would call) ranks reconstruction: that row alone is not discriminating, with both ratios
    shown, and the claim is decided by the other columns."""
    ll = np.full(len(TRANSFORMS) * PER_FLOW, -200.0)
    levels = {"ffvae": (500.0, 500.0, 1900.0), "poflow": (600.0, 600.0, 1950.0), "vae": (900.0, 900.0, 1000.0)}
    records = {
        name: [record(np.asarray(level)[:, None] + noisy(0, s), ll) for s in range(3)] for name, level in levels.items()
    }
    out = claims.assess(records)
    assert out["not_discriminating"] == {}
    verdicts = {(r["b"], r["column"]): r for r in out["claims"]["ffvae-beats-poflow"]["rows"]}
    hue = verdicts[("poflow", "equivariance_error/hue")]
    assert hue["verdict"] == "not discriminating" and hue["verdict_uncorrected"] == "holds"
    assert hue["identity_ratio"] == pytest.approx([0.95, 0.975], abs=0.01)
    assert verdicts[("poflow", "equivariance_error/scale")]["verdict"] == "holds"
    ffvae_vae = {r["column"]: r["verdict"] for r in out["claims"]["ffvae-beats-baselines"]["rows"] if r["b"] == "vae"}
    assert ffvae_vae["equivariance_error/hue"] == "fails"  # 0.95 against the VAE's 0.5: judged, and worse
    ratio_a, ratio_b = hue["identity_ratio"]
    assert f"(E_k / identity {ratio_a:.2f}, {ratio_b:.2f})" in claims_text.to_markdown(out)


def test_a_likelihood_gap_within_the_estimators_drift_is_unresolved():
    """+5 nats on every sequence is decided by the interval; with a drift of 1 nat it holds, with a drift
    of 6 (or none measured) it is unresolved by the estimator, and the claim says so."""
    errors = [noisy(1000, s) for s in range(3)]
    ll = np.full(len(TRANSFORMS) * PER_FLOW, -200.0)
    for drift, expected in (
        (1.0, "holds"),
        (6.0, "unresolved by the estimator"),
        (None, "unresolved by the estimator"),
    ):
        records = {
            "ffvae": [record(e, ll + 5, drift=drift or 0.0) for e in errors],
            "vae": [record(e + 10, ll, drift=drift or 0.0) for e in errors],
        }
        if drift is None:
            for r in records["vae"]:
                del r["likelihood_drift"]
        out = claims.assess(records)
        (row,) = [r for r in out["claims"]["ffvae-highest-likelihood"]["rows"] if r["b"] == "vae"]
        assert row["verdict"] == expected, drift
        if drift == 6.0:
            assert "(drift 6.0)" in claims_text._row_md(row, paper=False)


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
        m: [in_range_only(noisy(level, 20 + 3 * i + s)) for s in range(3)]
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
        in claims_text.to_markdown(out)
    )
    with_probes = claims.assess(
        {m: [record(noisy(500, 30), np.full(3 * PER_FLOW, -200.0))] for m in ("ffvae", "poflow")}
    )
    assert with_probes["ablation_places_not_measured"] == []


def test_the_readmes_claim_summaries_are_generated_from_the_committed_claims():
    """Every verdict word, tally and ratio range in the README's claim summaries is claims.json's: each
    marked block equals `summary` of its folder's committed claims.json (rewrite it with `claims --readme`)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    folders = re.findall(r"<!-- claims (\S+): written by", readme)
    assert set(folders) >= {"results/mnist", "results/shapes3d"}
    for folder in folders:
        begin, end = claims_text.readme_block(folder)
        block = readme.split(begin, 1)[1].split(end, 1)[0].strip("\n")
        expected = claims_text.summary(json.loads((root / folder / "claims.json").read_text()))
        assert block == expected, f"README's summary of {folder} differs from its claims.json: rerun claims --readme"


def test_the_readme_summary_is_rewritten_between_its_markers_only(tmp_path):
    ll = np.full(len(TRANSFORMS) * PER_FLOW, -200.0)
    write(tmp_path, "vae", [record(noisy(1000, s), ll) for s in range(3)])
    write(tmp_path, "ffvae", [record(noisy(600, 3 + s), ll + 5) for s in range(3)])
    readme = tmp_path / "README.md"
    begin, end = claims_text.readme_block(tmp_path)
    readme.write_text(f"before\n{begin}\nold text\n{end}\nafter\n")
    assert cli.main(["claims", "--results", str(tmp_path), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith(f"before\n{begin}\n- ") and text.endswith(f"\n{end}\nafter\n") and "old text" not in text
    assert (
        "- FFVAE < every flow-less baseline: **incomplete** (3 holds of 3 comparisons; a / b 0.60–0.60×; no records yet:"
        in text
    )
    with pytest.raises(RunError, match="has no block for"):
        claims_text.write_readme_summary(tmp_path / "claims.md", tmp_path)
