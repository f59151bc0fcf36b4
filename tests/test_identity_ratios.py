"""benchmarks/identity_ratios.py: the figure and table of E_k / identity read from a compare.json."""

import json
import runpy
from pathlib import Path

import pytest

from eqx_ffvae.reporting.claim_sets import DISCRIMINATION

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "identity_ratios.py"


def _compare(means: dict[str, dict[str, tuple[float, float]]]) -> dict:
    """A compare.json with, per method, (every pixel, changed pixels) mean ratios per transformation."""
    methods = {}
    for name, per_t in means.items():
        columns = {f"equivariance_error/{t}": {"mean": 1.0} for t in per_t}
        for t, (every, changed) in per_t.items():
            columns[f"equivariance_ratio/{t}"] = {"mean": every, "std": 0.0, "values": [every]}
            columns[f"equivariance_ratio_changed/{t}"] = {"mean": changed, "std": 0.0, "values": [changed]}
        methods[name] = {"label": name.upper(), "columns": columns}
    return {"setup": {}, "methods": methods, "runs": {}}


def _main():
    return runpy.run_path(str(SCRIPT))["main"]


def test_the_table_and_json_carry_each_methods_mean_ratios_in_order(tmp_path, capsys):
    means = {"ffvae": {"hue": (0.25, 0.1), "scale": (1.01, 0.97)}, "vae": {"hue": (0.45, 0.35), "scale": (0.88, 0.6)}}
    path = tmp_path / "compare.json"
    path.write_text(json.dumps(_compare(means)))
    table = _main()(["--compare", str(path), "--out", str(tmp_path / "out" / "ratios")])
    assert table["methods"] == ["FFVAE", "VAE"] and table["transformations"] == ["hue", "scale"]
    assert table["equivariance_ratio"] == [[0.25, 1.01], [0.45, 0.88]]
    assert table["equivariance_ratio_changed"] == [[0.1, 0.97], [0.35, 0.6]]
    written = json.loads((tmp_path / "out" / "ratios.json").read_text())
    assert written["discrimination"] == DISCRIMINATION and written["equivariance_ratio"] == table["equivariance_ratio"]
    text = (tmp_path / "out" / "ratios.md").read_text()
    assert "| FFVAE | 0.25 / 0.10 | 1.01 / 0.97 |" in text and "| VAE | 0.45 / 0.35 | 0.88 / 0.60 |" in text
    assert text in capsys.readouterr().out
    assert (tmp_path / "out" / "ratios.png").stat().st_size > 0


def test_a_compare_json_without_ratio_columns_names_the_method_and_column(tmp_path):
    compare = _compare({"ffvae": {"hue": (0.25, 0.1)}, "tvae": {"hue": (1.4, 1.0)}})
    del compare["methods"]["tvae"]["columns"]["equivariance_ratio_changed/hue"]
    path = tmp_path / "compare.json"
    path.write_text(json.dumps(compare))
    with pytest.raises(ValueError, match=r"equivariance_ratio_changed/hue for method 'tvae'.*rerun `compare`"):
        _main()(["--compare", str(path), "--out", str(tmp_path / "ratios")])
    for method in compare["methods"].values():
        method["columns"] = {c: v for c, v in method["columns"].items() if not c.startswith("equivariance_ratio")}
    path.write_text(json.dumps(compare))
    with pytest.raises(ValueError, match="no equivariance_ratio/<t> columns"):
        _main()(["--compare", str(path), "--out", str(tmp_path / "ratios")])


def test_a_missing_compare_json_is_named(tmp_path):
    missing = tmp_path / "nowhere" / "compare.json"
    with pytest.raises(SystemExit, match=str(missing)):
        _main()(["--compare", str(missing), "--out", str(tmp_path / "ratios")])
