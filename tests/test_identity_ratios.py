"""benchmarks/identity_ratios.py: the figure and table of E_k / identity read from a table's records."""

import json
import runpy
from pathlib import Path

import numpy as np
import pytest

from eqx_ffvae.reporting.claim_sets import DISCRIMINATION
from eqx_ffvae.runs import RunError

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "identity_ratios.py"


def _records(root: Path, scores: dict[str, list[dict[str, tuple[float, float, float, float]]]]) -> Path:
    """runs/<method>/seed<i>/eval.json with, per transformation, (E_k, identity, E_k changed px,
    identity changed px)."""
    for method, seeds in scores.items():
        for i, per_t in enumerate(seeds):
            entry = {
                t: {
                    "equivariance_error": e,
                    "equivariance_error_identity": ident,
                    "equivariance_error_changed": ec,
                    "equivariance_error_identity_changed": ic,
                }
                for t, (e, ident, ec, ic) in per_t.items()
            }
            folder = root / "runs" / method / f"seed{i}"
            folder.mkdir(parents=True)
            (folder / "eval.json").write_text(json.dumps({"transformations": entry}))
    return root


def _main():
    return runpy.run_path(str(SCRIPT))["main"]


def test_the_table_and_json_carry_each_methods_ratio_of_seed_means_in_registry_order(tmp_path, capsys):
    """FFVAE's hue: seed means 25 over 150 (not the mean of the per-seed ratios, 0.175), the quantity the
    claims' rule reads; the VAE, first in the registry, comes first."""
    results = _records(
        tmp_path / "table",
        {
            "vae": [{"hue": (40.0, 100.0, 10.0, 20.0), "scale": (90.0, 100.0, 30.0, 50.0)}],
            "ffvae": [
                {"hue": (20.0, 100.0, 1.0, 10.0), "scale": (100.0, 100.0, 9.0, 10.0)},
                {"hue": (30.0, 200.0, 3.0, 20.0), "scale": (102.0, 100.0, 10.4, 10.0)},
            ],
        },
    )
    table = _main()(["--results", str(results), "--out", str(tmp_path / "out" / "ratios")])
    assert table["methods"] == ["VAE", "FFVAE"] and table["transformations"] == ["hue", "scale"]
    assert np.allclose(table["every pixel"], [[0.4, 0.9], [25 / 150, 1.01]])
    assert np.allclose(table["changed pixels"], [[0.5, 0.6], [2 / 15, 0.97]])
    written = json.loads((tmp_path / "out" / "ratios.json").read_text())
    assert written["discrimination"] == DISCRIMINATION and written["every pixel"] == table["every pixel"]
    text = (tmp_path / "out" / "ratios.md").read_text()
    assert "| FFVAE | 0.17 / 0.13 | 1.01 / 0.97 |" in text and "| VAE | 0.40 / 0.50 | 0.90 / 0.60 |" in text
    assert text in capsys.readouterr().out
    assert (tmp_path / "out" / "ratios.png").stat().st_size > 0


def test_records_without_a_changed_pixel_score_name_the_method_and_transformation(tmp_path):
    results = _records(tmp_path / "table", {"tvae": [{"hue": (140.0, 100.0, 10.0, 10.0)}]})
    path = results / "runs" / "tvae" / "seed0" / "eval.json"
    record = json.loads(path.read_text())
    del record["transformations"]["hue"]["equivariance_error_identity_changed"]
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"tvae's records have no identity score for hue over changed pixels.*rerun"):
        _main()(["--results", str(results), "--out", str(tmp_path / "ratios")])


def test_a_missing_results_folder_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(RunError, match=str(missing)):
        _main()(["--results", str(missing), "--out", str(tmp_path / "ratios")])
