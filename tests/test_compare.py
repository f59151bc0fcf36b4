"""`train/run.py compare`: the table's arithmetic and layout, and an end-to-end run that resumes."""

import json

import numpy as np
import pytest

from eqx_ffvae import cli as run
from eqx_ffvae.compare import summarise, to_markdown


def _result(errors, ll, transformation="own"):
    return {
        "transformation": transformation,
        "transformations": {t: {"equivariance_error": e} for t, e in zip(("scale", "rotation"), errors)},
        "log_likelihood": ll,
    }


def test_summary_and_table_pick_the_best_per_column():
    results = {
        "vae": [_result([10.0, 20.0], -50.0, "linear shift"), _result([12.0, 22.0], -52.0, "linear shift")],
        "ffvae": [_result([8.0, 30.0], -60.0), _result([9.0, 31.0], -58.0)],
    }
    rows = summarise(results, ["scale", "rotation"])
    scale = rows["vae"]["equivariance_error"]["scale"]
    assert scale["mean"] == 11.0 and scale["values"] == [10.0, 12.0]
    np.testing.assert_allclose(scale["std"], np.std([10.0, 12.0], ddof=1))
    assert rows["ffvae"]["supervision"] == "full" and rows["vae"]["supervision"] == "none"
    table = to_markdown(rows, ["scale", "rotation"], "header")
    lines = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert "**8.5 ± 0.7**" in lines["FFVAE"] and "**21.0 ± 1.4**" in lines["VAE †"]
    assert "**-51.0 ± 1.4**" in lines["VAE †"] and "**" not in lines["FFVAE"].split("|")[4]
    assert table.count("**") == 2 * 3


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
    ]
    assert run.main(args) == 0
    summary = json.loads((out / "compare.json").read_text())
    assert list(summary["methods"]) == ["vae", "tvae"] and summary["setup"]["steps"] == 2
    for row in summary["methods"].values():
        assert len(row["log_likelihood"]["values"]) == 2
        assert set(row["equivariance_error"]) == {"scale", "rotation", "hue"}
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
    # single-run commands on a baseline's run: figures by the linear shift / TVAE's roll; no sampling
    for name in ("vae", "tvae"):
        assert run.main(["eval", "--run", str(out / name / "seed0")]) == 0
        assert (out / name / "seed0" / "figures" / "flow_rotation.png").exists()
    assert run.main(["sample", "--run", str(out / "vae" / "seed0")]) == 2
    assert "learns no transformation" in capsys.readouterr().err
