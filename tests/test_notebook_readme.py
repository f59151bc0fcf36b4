"""The notebook runs top to bottom from a fresh checkout; the README's and the documentation's code runs as written."""

import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from eqx_ffvae import cli

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "explore.ipynb"
README = (ROOT / "README.md").read_text()
DOC_PAGES = sorted((ROOT / "docs").rglob("*.md"))
"""Every page of the documentation site (mkdocs.yml's docs_dir)."""


def test_notebook_outputs_are_stripped():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "strip notebook outputs before committing"


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_without_a_run(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("EQX_FFVAE_RUNS", str(tmp_path / "runs"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    images = sum(
        1 for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs if "image/png" in out.get("data", {})
    )
    assert images >= 8, f"expected the notebook's figures, got {images} images"
    text = "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)
    assert "no run found: training a tiny one" in text and "E_k model" in text
    assert (tmp_path / "runs" / "notebook-tiny" / "eval.json").exists()


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_is_the_newcomers_page():
    """The README is what a newcomer needs first (issue 44: ≤ ~12 KB); the rest lives on the site."""
    assert len(README.encode()) <= 12 * 1024
    for page in ("docs/tutorials/quickstart.md", "docs/tutorials/own-data.md", "docs/guide/tables.md"):
        assert f"]({page}" in README and (ROOT / page).exists()


@pytest.mark.parametrize(
    "page",
    [
        pytest.param(p, marks=[pytest.mark.slow] if p.parent.name == "tutorials" or p.stem == "sta" else [], id=p.stem)
        for p in DOC_PAGES
        if _python_blocks(p.read_text())
    ],
)
def test_documentation_python_blocks_run(page, tmp_path, monkeypatch):
    """A page's blocks run in order, as written, in one namespace, in a scratch folder: what they
    write (`runs/…`, the tutorials' files) never lands in the repository. The tutorials (each trains
    and evaluates a tiny model, ~2.5 CPU-minutes together) and the STA guide (its model's conv nets run
    eagerly, ~20 s) run in the slow set, which CI runs too."""
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"docs_{page.stem}"}
    for block in _python_blocks(page.read_text()):
        exec(compile(block, str(page.relative_to(ROOT)), "exec"), namespace)


def _readme_run_commands():
    commands = []
    texts = [README] + [page.read_text() for page in DOC_PAGES]
    for block in (b for text in texts for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("python train/run.py ") and (
                "--help" in line or "--steps 2" in line or " --run " in line
            ):
                commands.append(line)
    return commands


@pytest.mark.slow
def test_readme_cheap_commands_run_as_written(tmp_path, monkeypatch):
    commands = _readme_run_commands()
    assert any("--help" in c for c in commands) and any("--steps 2" in c for c in commands)
    assert any(c.split()[2] == "eval" for c in commands) and any(c.split()[2] == "sample" for c in commands)
    monkeypatch.chdir(tmp_path)
    for command in commands:
        args = command.split()[2:]
        if "--help" in args:  # the script itself, as a user starts it (its entry point and __main__ guard)
            out = subprocess.run(
                [sys.executable, str(ROOT / "train" / "run.py"), *args], capture_output=True, text=True
            )
            assert out.returncode == 0, f"{command}\n{out.stderr[-2000:]}"
        else:
            assert cli.main(args) == 0, command
    smoke = tmp_path / "runs" / "smoke"
    assert json.loads((smoke / "eval.json").read_text())["num_sequences"] > 0
