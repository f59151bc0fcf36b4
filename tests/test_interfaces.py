"""Every registered method honours the declared interface; the package's structure stays layered.

The registry (`methods.METHODS`) is the list of methods: a new one is tested here by being registered.
"""

import ast
import importlib
import math
import pkgutil
import re
import runpy
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqx_ffvae as ff
from eqx_ffvae import methods, runs
from eqx_ffvae.checkpoint import Checkpointer
from eqx_ffvae.evaluation import evaluate, fit_linear_shifts
from eqx_ffvae.interfaces import AbstractAdversarialModel, AbstractSequenceModel, AbstractTransportModel
from eqx_ffvae.runs import RunError
from eqx_ffvae.training import init_opt_state, make_optimizer, make_step, with_step

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "eqx_ffvae"
SHAPE, FRAMES, FLOWS = (3, 28, 28), 3, 3
TINY = {
    "image_shape": SHAPE,
    "num_frames": FRAMES,
    "num_flows": FLOWS,
    "latent_dim": 6,
    "width": 2,
    "potential_width": 8,
    "classifier_width": 8,
    "disc_width": 8,
}


def _own_classes(cls: type) -> list[type]:
    return [c for c in cls.__mro__ if c.__module__.startswith("eqx_ffvae")]


def _is_abstract(value) -> bool:
    target = value.fget if isinstance(value, property) else value
    return bool(getattr(target, "__isabstractmethod__", False))


def _package_modules() -> list[type]:
    """Every `eqx.Module` class the package defines (all of its modules imported)."""
    for info in pkgutil.walk_packages(ff.__path__, prefix="eqx_ffvae."):
        importlib.import_module(info.name)
    seen, todo = set(), [eqx.Module]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in seen:
                seen.add(sub)
                todo.append(sub)
    return sorted((c for c in seen if c.__module__.startswith("eqx_ffvae.")), key=lambda c: c.__qualname__)


def test_every_module_class_is_abstract_or_final_and_never_overrides_a_concrete_method():
    """Equinox's abstract/final pattern over every `eqx.Module` class of the package (models, potentials,
    networks, priors): a class with subclasses is an `Abstract…` class with something abstract in it,
    and no method (or property) that a class defines concretely is redefined below it."""
    classes = _package_modules()
    assert {ff.FlowFactorizedVAE, ff.WeakFFVAE, ff.MLPPotential, ff.AbstractPotential} <= set(classes)
    for cls in classes:
        subs = [c for c in classes if c is not cls and issubclass(c, cls)]
        if subs:
            assert cls.__name__.startswith("Abstract"), f"{cls.__qualname__} is subclassed by {subs[0].__qualname__}"
            assert cls.__abstractmethods__ or eqx_abstract_vars(cls), f"{cls.__qualname__} declares nothing abstract"
        else:
            assert not cls.__name__.startswith("Abstract") or cls.__abstractmethods__, cls.__qualname__
        own = _own_classes(cls)
        for i, base in enumerate(own):
            for attr, value in vars(base).items():
                if attr.startswith("__") or not (callable(value) or isinstance(value, property)) or _is_abstract(value):
                    continue
                for sub in own[:i]:
                    assert attr not in vars(sub), (
                        f"{sub.__qualname__}.{attr} overrides the concrete {base.__qualname__}.{attr}"
                    )


def eqx_abstract_vars(cls: type) -> list[str]:
    return [name for name, hint in vars(cls).get("__annotations__", {}).items() if "AbstractVar" in str(hint)]


@pytest.mark.parametrize("name", list(methods.METHODS))
def test_every_registered_model_is_a_sequence_model(name):
    own = _own_classes(methods.get_method(name).model_cls)
    assert issubclass(own[0], AbstractSequenceModel) and not own[0].__name__.startswith("Abstract")


@pytest.fixture(scope="module")
def batch():
    key = jr.key(0)
    return {"frames": jr.uniform(key, (4, FRAMES, *SHAPE)), "k": jnp.array([0, 1, 2, 0], jnp.int32)}


def _tiny_config(name: str, **overrides):
    fields = {k: v for k, v in {**TINY, **overrides}.items() if k in methods.config_fields(name)}
    return methods.make_config(name, **fields)


ONE_PER_CLASS = list({m.model_cls: n for n, m in reversed(methods.METHODS.items())}.values())[::-1]
"""The first registered method of each model class: the rest differ from it in config values only."""
OTHER_METHODS = [n for n, m in methods.METHODS.items() if not m.ablation_of and n not in ONE_PER_CLASS]


SLOW_SMOKE = {"sta", "ffvae-group"}
"""Classes whose training step the slow set's end-to-end tests already compile and run (test_sta.py,
test_weak.py); their maths is tested in the default set."""


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_SMOKE else n for n in ONE_PER_CLASS]
    + [pytest.param(n, marks=pytest.mark.slow) for n in OTHER_METHODS],
)
def test_every_method_compiles_no_host_callback_trains_two_steps_and_evaluates(name, batch):
    """The smoke test of every registered method, through the interface only: build from the registry,
    lower `make_step` once (a host callback, i.e. a run-time check, would block the host at every step
    and keep the persistent compilation cache from storing the step), two steps that train its encoder
    and decoder (every mean and every logit moves), held-out metrics. (The FFVAE's ablations differ from it only in `fixed` weights: see
    `test_ffvae_ablations_drop_exactly_their_terms`.)"""
    model = methods.make_model(name, _tiny_config(name), key=jr.key(1))
    assert isinstance(model, AbstractSequenceModel)
    optimizer = make_optimizer(1e-3)
    opt_state = init_opt_state(model, optimizer)
    step = make_step(optimizer, slice_size=2)
    assert "callback" not in step.lower(model, opt_state, with_step(dict(batch), 0), jr.key(10)).as_text()
    x0 = batch["frames"][0, 0]
    encoded, decoded = eqx.filter_jit(lambda m: (m.encode(x0)[0], m.decode(m.encode(x0)[0])))(model)
    losses = []
    for i in range(2):
        model, opt_state, loss, terms = step(model, opt_state, with_step(dict(batch), i), jr.key(10 + i))
        losses.append(float(loss))
        # the authors' objective bounds nothing, so it reports its terms and no ELBO
        assert ({"loss", "recon", "kl0", "rho_kl"} if name == "ffvae-authors" else {"loss", "elbo"}) <= set(terms)
    assert all(map(math.isfinite, losses)), losses
    encoded_after, decoded_after = eqx.filter_jit(lambda m: (m.encode(x0)[0], m.decode(encoded)))(model)
    assert np.all(encoded_after != encoded) and np.all(decoded_after != decoded), "encoder or decoder did not train"
    if isinstance(model, AbstractAdversarialModel):
        assert "discriminator" in terms
    shifts = fit_linear_shifts(model, [batch], FLOWS)
    result = evaluate(model, [batch], shifts, transform_names=("a", "b", "c"), key=jr.key(2), num_samples=2)
    assert result["transformation"] == ("own" if isinstance(model, AbstractTransportModel) else "linear shift")
    assert math.isfinite(result["log_likelihood"])
    for entry in result["transformations"].values():
        assert math.isfinite(entry["equivariance_error"])


PRESET_SHAPES = {  # (image_shape, frames, K) of each image size the presets use (docs/method.md §1)
    "shapes3d": ((3, 64, 64), 8, 5),
    "isaac3d": ((3, 128, 128), 4, 8),  # falcor3d differs only in T and K (5, 7): the same layers
}


@pytest.mark.parametrize("name", ONE_PER_CLASS)
def test_every_model_class_steps_at_every_preset_image_size(name):
    """The training step of every model class traced (`eqx.filter_eval_shape`, nothing compiled) at the other
    image sizes, frame counts and flow counts the presets use: shapes agree and the loss is a scalar."""
    optimizer = make_optimizer(1e-3)
    step = make_step(optimizer, slice_size=2)
    for dataset, (shape, frames, num_flows) in PRESET_SHAPES.items():
        config = _tiny_config(name, image_shape=shape, num_frames=frames, num_flows=num_flows, latent_dim=8)
        model = eqx.filter_eval_shape(methods.get_method(name).model_cls, config, key=jr.key(1))
        opt_state = eqx.filter_eval_shape(init_opt_state, model, optimizer)
        frames_batch = jax.ShapeDtypeStruct((4, frames, *shape), jnp.float32)
        batch = with_step({"frames": frames_batch, "k": jnp.array([0, 1, num_flows - 1, 0], jnp.int32)}, 0)
        new_model, _, loss, terms = eqx.filter_eval_shape(step, model, opt_state, batch, jr.key(0))
        assert loss.shape == () and all(t.shape == () for t in terms.values()), dataset
        assert jax.tree.structure(new_model) == jax.tree.structure(model), dataset


@pytest.mark.parametrize(
    "name", [n for n in ONE_PER_CLASS if issubclass(methods.get_method(n).model_cls, AbstractTransportModel)]
)
def test_transport_models_compose_one_hot_as_transport(name):
    model = methods.make_model(name, _tiny_config(name), key=jr.key(3))
    z0 = jr.normal(jr.key(4), (model.config.latent_dim,))
    ks = jnp.arange(model.num_flows)
    both = eqx.filter_jit(
        eqx.filter_vmap(
            lambda m, k: (m.compose(jax.nn.one_hot(k, m.num_flows), z0), m.transport(k, z0)), in_axes=(None, 0)
        )
    )
    composed, transported = both(model, ks)
    np.testing.assert_allclose(composed, transported, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", [n for n, m in methods.METHODS.items() if m.fixed])
def test_variants_keep_their_fixed_settings_under_any_preset(name):
    """A variant's defining settings survive every preset's shared values; asking for another value
    is an error naming the setting; an ablation's base is a main method."""
    method = methods.get_method(name)
    for preset in ("quick", "mnist-medium"):
        config = runs.resolve(preset, method=name).model
        assert {k: getattr(config, k) for k in method.fixed} == method.fixed
    key, value = next(iter(method.fixed.items()))
    other = "sequence" if value == "authors" else 0.5
    with pytest.raises(RunError, match=f"{key}="):
        runs.resolve("quick", method=name, **{key: other})
    if method.ablation_of:
        assert not methods.get_method(method.ablation_of).ablation_of


def test_ffvae_ablations_drop_exactly_their_terms():
    """Each ablation's objective is the FFVAE's minus exactly its dropped terms (the same terms in)."""
    fields = {k: v for k, v in TINY.items() if k in methods.config_fields("ffvae")}
    full = methods.make_model("ffvae", methods.make_config("ffvae", **fields), key=jr.key(5))
    x = jr.uniform(jr.key(6), (FRAMES, *SHAPE))
    loss, terms = eqx.filter_jit(lambda m, x, key: m.loss(x, 1, key=key))(full, x, jr.key(7))
    latent = {k: v for k, v in terms.items() if k not in ("loss", "elbo", "recon")}
    np.testing.assert_allclose(full.objective(terms["recon"], latent)[0], loss, rtol=1e-6)
    dropped = {"ffvae-no-hj": ("hj",), "ffvae-no-flow-kl": ("kl_flow",), "ffvae-rollout": ("hj", "kl_flow")}
    for name, gone in dropped.items():
        ablated = methods.make_model(name, methods.make_config(name, **fields), key=jr.key(5))
        ablated_loss, ablated_terms = ablated.objective(terms["recon"], latent)
        np.testing.assert_allclose(ablated_loss, loss - sum(terms[t] for t in gone), rtol=1e-5)
        np.testing.assert_allclose(ablated_terms["elbo"], terms["elbo"], rtol=1e-6)  # the ELBO it is scored on


def test_make_config_lets_the_caller_win_and_names_unknown_fields():
    assert methods.make_config("beta-vae").beta == 4.0
    assert methods.make_config("beta-vae", beta=8.0).beta == 8.0
    with pytest.raises(ValueError, match=r"'latent_dmi'.*valid fields: .*latent_dim"):
        methods.make_config("vae", latent_dmi=3)


# ---- structure -----------------------------------------------------------------------------------


def _python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def test_no_probing_dispatch_and_no_path_edits():
    pattern = re.compile(r"hasattr|getattr\(model|sys\.path")
    files = _python_files("eqx_ffvae", "train", "benchmarks", "tests") + [ROOT / "notebooks" / "explore.ipynb"]
    hits = [
        f"{path.relative_to(ROOT)}:{i}"
        for path in files
        if path != Path(__file__)
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not hits, hits


def test_capabilities_are_read_from_abstract_classes_only():
    """`isinstance` in the package tests an `Abstract…` interface, never a concrete module class (what a
    model can do is its type, not its name)."""
    concrete = {c.__name__ for c in _package_modules() if not c.__name__.startswith("Abstract")}
    hits = []
    for path in _python_files("eqx_ffvae"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" and len(node.args) == 2:
                names = {n.id if isinstance(n, ast.Name) else getattr(n, "attr", "") for n in ast.walk(node.args[1])}
                hits += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names & concrete]
    assert not hits, hits


def _imports(path: Path) -> tuple[set[str], list[int]]:
    """(modules of eqx_ffvae this file imports at top level, lines of imports inside functions)."""
    tree = ast.parse(path.read_text())
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    targets, local = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            local += [n.lineno for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom)]
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            stem = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                candidate = f"{stem}.{alias.name}"
                targets.add(
                    candidate
                    if (ROOT / (candidate.replace(".", "/") + ".py")).exists()
                    or (ROOT / candidate.replace(".", "/")).is_dir()
                    else stem
                )
    return {t.removesuffix(".__init__") for t in targets}, local


def test_no_import_cycle_and_no_function_local_imports():
    graph, local = {}, {}
    for path in _python_files("eqx_ffvae"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        graph[module], lines = _imports(path)
        if lines:
            local[module] = lines
    assert not local, f"function-local imports: {local}"
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in graph.get(node, ()):
            if nxt == node or nxt not in graph or nxt == "eqx_ffvae":
                continue
            if state.get(nxt) == 1:
                raise AssertionError(f"import cycle: {' → '.join([*trail, nxt])}")
            if not state.get(nxt):
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for module in graph:
        if module != "eqx_ffvae" and not state.get(module):
            visit(module, [module])


FLOORS = {  # docs/architecture.md: a module imports from its own floor and those below, never above
    "ground: maths, networks, data and I/O": [
        "_version", "distributions", "conv", "potentials", "prior", "flows", "sde", "objectives", "layout", "nn", "pixels",
        "data", "checkpoint", "compile_cache", "tensorboard", "provenance",
    ],
    "models": ["interfaces", "flow_model", "model", "ffvae_inference", "ffvae_authors", "sta", "baselines", "metrics",
               "evaluation", "sparse_evaluation", "methods", "presets"],
    "training step": ["training"],
    "runs": ["runs"],
    "reporting": ["reporting"],
    "command line": ["cli_options", "cli"],
}  # fmt: skip


def _floor(module: str) -> int:
    name = module.removeprefix("eqx_ffvae.").split(".")[0]
    floor = next((i for i, names in enumerate(FLOORS.values()) if name in names), None)
    if floor is None:
        pytest.fail(f"eqx_ffvae.{name} is on no floor: add it to FLOORS here and to docs/architecture.md's table")
    return floor


def test_every_module_imports_only_from_its_floor_and_below():
    """maths → models → training step → runs → reporting → command line (docs/architecture.md)."""
    upward = []
    for path in _python_files("eqx_ffvae"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        if module == "eqx_ffvae":
            continue  # the package's face re-exports from every floor
        floor = _floor(module)
        upward += [f"{module} → {t}" for t in _imports(path)[0] if t != "eqx_ffvae" and _floor(t) > floor]
    assert not upward, upward


def test_importing_the_package_loads_no_run_machinery():
    """`import eqx_ffvae` is the maths and the models: orbax, grain and tensorboardX load on first use of
    the submodules that need them (lazy attributes), which then work."""
    code = (
        "import sys, eqx_ffvae as ff; "
        "heavy = [m for m in ('orbax.checkpoint', 'grain', 'tensorboardX') if m in sys.modules]; "
        "assert not heavy, heavy; "
        "assert callable(ff.load_run) and callable(ff.data.sequence_dataset) and 'grain' in sys.modules"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    with pytest.raises(AttributeError, match="no attribute 'absent'"):
        ff.absent  # noqa: B018


def test_distributions_is_the_ground_floor():
    imported, _ = _imports(PACKAGE / "distributions.py")
    assert not imported


def test_no_file_shadows_an_installed_package():
    import importlib.util

    for path in _python_files("train", "benchmarks"):
        spec = importlib.util.find_spec(path.stem) if path.stem != "run" else None
        assert spec is None or Path(spec.origin or "") == path, f"{path} shadows the installed {path.stem}"


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "benchmarks").glob("[!_]*.py")))
def test_every_benchmark_script_parses_its_options(script, monkeypatch, capsys):
    """Each benchmark runs its module body and `--help` against the current package (no measurement)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.setattr("sys.argv", [script, "--help"])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(ROOT / "benchmarks" / script), run_name="__main__")
    assert stop.value.code == 0 and "usage" in capsys.readouterr().out


def test_a_finished_run_loads_without_train(tiny_run):
    """`load_run` restores the spec and the newest checkpoint's model of a run directory (the session's
    tiny run, conftest.py): the arrays orbax wrote, read back with nothing from the loop."""
    model, loaded = ff.load_run(tiny_run)
    assert loaded == ff.runs.read_spec(tiny_run) and loaded.steps == 4
    template, _, opt_state = ff.runs.build(loaded)
    (saved, _), _, _, step = Checkpointer(tiny_run / "checkpoints").restore((template, opt_state))
    assert step == 4
    for a, b in zip(
        jax.tree.leaves(eqx.filter(model, eqx.is_array)), jax.tree.leaves(eqx.filter(saved, eqx.is_array)), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
