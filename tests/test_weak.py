"""Weak supervision (docs/method.md §4, §5): the balanced assignment it trains with, and scoring by inference."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqx_ffvae as ff
from eqx_ffvae import data, objectives
from eqx_ffvae.evaluation import evaluate, fit_linear_shifts, flow_assignment

CONFIG = ff.FFVAEConfig(
    image_shape=(3, 28, 28),
    num_frames=4,
    latent_dim=6,
    num_flows=3,
    width=4,
    potential_width=16,
    weakly_supervised=True,
    flow_kl_weight=0.5,
)
NAMES = ("scale", "rotation", "hue")


@pytest.fixture(scope="module")
def weak_model():
    model = ff.WeakFFVAE(CONFIG, key=jr.key(2))
    # a trained q is not uniform: give the zero-initialised logits layer weights, so argmax q varies
    head = model.sequence_encoder.net.heads[-1]
    return eqx.tree_at(
        lambda m: m.sequence_encoder.net.heads[-1].weight, model, 3.0 * jr.normal(jr.key(5), head.weight.shape)
    )


@pytest.fixture(scope="module")
def test_batches():
    ds = data.sequence_dataset("mnist", split="test", seed=1, num_frames=CONFIG.num_frames)
    it = data.batch_iterator(ds, 8, prefetch_buffer=0)
    return [{"frames": b["frames"], "k": b["k"]} for b in (next(it), next(it))]


@pytest.mark.parametrize("share", [1.0, 0.5])
def test_balanced_assignment_gives_every_flow_its_share_even_against_huge_scores(share):
    scores = 300.0 * jr.normal(jr.key(0), (30, 3))
    scores = scores.at[:, 0].add(5000.0)  # the plain posterior would send everything to flow 0
    p = np.exp(objectives.balanced_assignment(scores, share))
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(p.sum(0)[1:], [10.0 * share] * 2, atol=0.05)


def test_minimum_share_leaves_a_batchs_natural_imbalance_alone():
    """Specialised flows, a batch of 14/10/8 sequences: exact balance must move 3⅓ sequences' worth of
    assignment to wrong flows; a minimum of half the fair share (5.3) moves none."""
    truth = np.array([0] * 14 + [1] * 10 + [2] * 8)
    scores = jnp.asarray(-500.0 * (1 - np.eye(3)[truth]) + jr.normal(jr.key(2), (32, 3)))
    half = np.exp(objectives.balanced_assignment(scores, 0.5))
    np.testing.assert_array_equal(half.argmax(1), truth)
    np.testing.assert_allclose(half, np.exp(jax.nn.log_softmax(scores, axis=1)), atol=1e-5)
    exact = np.exp(objectives.balanced_assignment(scores, 1.0))
    wrong = exact[np.arange(32), :].sum() - exact[np.arange(32), truth].sum()
    assert wrong == pytest.approx(14 - 32 / 3, abs=0.05)


def test_balanced_assignment_is_the_posterior_when_that_is_balanced():
    prefer = jnp.repeat(jnp.eye(3), 4, axis=0)  # 4 items prefer each flow by 2 nats
    scores = 2.0 * prefer + 0.1 * jr.normal(jr.key(1), (12, 3))
    balanced = objectives.balanced_assignment(scores)
    posterior = jax.nn.log_softmax(scores, axis=1)
    np.testing.assert_allclose(np.exp(balanced).sum(0), 4.0, atol=1e-3)
    np.testing.assert_allclose(balanced, posterior, atol=0.1)


def test_usage_kl_is_nonnegative_zero_at_balance_and_log_k_at_collapse():
    assert float(objectives.usage_kl(jnp.full(4, 0.25))) == pytest.approx(0.0, abs=1e-7)
    assert float(objectives.usage_kl(jnp.array([1.0, 0.0, 0.0, 0.0]))) == pytest.approx(np.log(4), rel=1e-6)
    usages = jr.dirichlet(jr.key(3), jnp.ones(4), (200,))
    assert bool(jnp.all(jax.vmap(objectives.usage_kl)(usages) >= 0))


def test_assignment_scores_are_each_flows_single_example_objective(weak_model, test_batches, getkey):
    frames, key = jnp.asarray(test_batches[0]["frames"][:4]), getkey()
    scores = eqx.filter_jit(lambda m, x, key: m.assignment_scores(x, key=key))(weak_model, frames, key)

    @eqx.filter_jit
    def by_definition(m):
        def one(x, kk):
            _, terms = jax.vmap(lambda k: m.loss(x, k, key=kk))(jnp.arange(3))
            return terms["recon"] - CONFIG.flow_kl_weight * terms["kl_flow"]

        return jax.vmap(one)(frames, jr.split(key, frames.shape[0]))

    expected = by_definition(weak_model)  # scores leave out what every flow shares (frame 0's likelihood)
    np.testing.assert_allclose(scores - scores[:, :1], expected - expected[:, :1], rtol=1e-4, atol=2e-2)
    assert float(jnp.max(jnp.abs(scores - expected))) > 1.0  # (that constant is not zero: the test can tell)


def test_weak_batch_loss_trains_q_towards_the_assignment_and_logs_usage(weak_model, test_batches, getkey):
    frames = jnp.asarray(test_batches[0]["frames"])
    fresh = ff.WeakFFVAE(CONFIG, key=jr.key(2))

    @eqx.filter_jit
    def loss_and_grads(m, key):
        return eqx.filter_value_and_grad(lambda m: m.weak_batch_loss(frames, key=key), has_aux=True)(m)

    (loss, terms), grads = loss_and_grads(fresh, getkey())
    usage = [float(terms[f"usage_{k}"]) for k in range(3)]
    np.testing.assert_allclose(usage, [1 / 3] * 3, rtol=1e-6)  # q starts exactly uniform
    assert float(terms["q_entropy"]) == pytest.approx(np.log(3), rel=1e-6)
    assert float(terms["usage_kl"]) == pytest.approx(0.0, abs=1e-6)
    supervised = -(terms["recon"] - terms["kl0"] - CONFIG.flow_kl_weight * terms["kl_flow"]) + terms["hj"]
    np.testing.assert_allclose(loss, supervised + terms["q_distill"], rtol=1e-5)
    head = grads.sequence_encoder.net.heads[-1]
    assert bool(jnp.any(head.weight != 0)) and float(terms["q_distill"]) > 0
    assert bool(jnp.any(grads.flows.potentials.mlp.layers[0].weight != 0))


class _ProjectionQ(eqx.Module):
    """q(k | x̄) from a fixed projection of the last frame's change: varied argmax across sequences."""

    weight: jax.Array

    def __call__(self, x_seq):
        return self.weight @ (x_seq[-1] - x_seq[0]).ravel()


def _permuted(model, perm):
    """The same model with its flows relabelled: new flow j is old flow perm[j] (potentials, forces,
    prior diffusion and q's logits together)."""
    take = lambda tree: jax.tree.map(lambda a: a[perm] if eqx.is_array(a) else a, tree)  # noqa: E731
    return eqx.tree_at(
        lambda m: (m.flows.potentials, m.flows.forces, m.prior, m.sequence_encoder),
        model,
        (take(model.flows.potentials), take(model.flows.forces), take(model.prior), take(model.sequence_encoder)),
    )


def test_permuted_weak_model_scores_the_same(weak_model, test_batches):
    perm = np.array([2, 0, 1])
    q = _ProjectionQ(jr.normal(jr.key(7), (3, int(np.prod(CONFIG.image_shape)))))
    model = eqx.tree_at(lambda m: m.sequence_encoder, weak_model, q)
    shifts = fit_linear_shifts(model, test_batches, 3)
    run = lambda m: evaluate(m, test_batches, shifts, transform_names=NAMES, key=jr.key(0), num_samples=3)  # noqa: E731
    before, after = run(model), run(_permuted(model, perm))
    for name in NAMES:
        b, a = before["transformations"][name], after["transformations"][name]
        for metric in ("equivariance_error", "equivariance_error_linear", "log_likelihood"):
            np.testing.assert_allclose(a[metric], b[metric], rtol=1e-5, err_msg=f"{name} {metric}")
    fb, fa = before["flow_assignment"], after["flow_assignment"]
    assert fa["accuracy"] == fb["accuracy"]
    np.testing.assert_array_equal(np.asarray(fa["confusion"]), np.asarray(fb["confusion"])[:, perm])
    assert len(set(np.asarray(fb["confusion"]).argmax(1))) > 1, "q sends every sequence to one flow: weak test"


class _Oracle(eqx.Module):
    """A perfect q(k | x̄): reads the transformation from a marker pixel the test writes."""

    flows: tuple[int, ...] = eqx.field(static=True)

    def __call__(self, x_seq):
        return 10.0 * jax.nn.one_hot(jnp.asarray(self.flows)[jnp.round(x_seq[0, 1, 0, 0] * 4).astype(int)], 3)


def test_a_perfect_q_scores_accuracy_one_under_any_labelling(weak_model, test_batches):
    marked = []
    for b in test_batches:
        frames = np.array(b["frames"])
        frames[:, 0, 1, 0, 0] = b["k"] / 4  # the green channel of MNIST frames is 0 but under hue
        marked.append({"frames": frames, "k": b["k"]})
    perm = [1, 2, 0]
    oracle = eqx.tree_at(lambda m: m.sequence_encoder, weak_model, _Oracle(tuple(perm)))
    shifts = fit_linear_shifts(oracle, marked, 3)
    result = evaluate(oracle, marked, shifts, transform_names=NAMES, key=jr.key(0), num_samples=2)
    assert result["flow_assignment"]["accuracy"] == 1.0
    assert result["flow_assignment"]["matching"] == perm


def test_flow_assignment_matches_flows_to_transformations():
    ks = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2])
    perfect = flow_assignment(ks, np.array([2, 1, 0])[ks], 3)
    assert perfect["accuracy"] == 1.0 and perfect["matching"] == [2, 1, 0]
    assert perfect["confusion"] == [[0, 0, 2], [0, 3, 0], [4, 0, 0]]
    collapsed = flow_assignment(ks, np.zeros_like(ks), 3)
    assert collapsed["accuracy"] == pytest.approx(4 / 9) and collapsed["usage"] == [1.0, 0.0, 0.0]


def test_grouped_sampler_puts_one_transformation_in_each_batch_and_resumes():
    ds = data.sequence_dataset("mnist", seed=3, num_epochs=None, group_size=4, num_frames=2)
    it = data.batch_iterator(ds, 4, prefetch_buffer=0)
    batches = [next(it) for _ in range(3)]
    state = it.get_state()
    later = [next(it) for _ in range(5)]
    ks = [b["k"] for b in batches + later]
    assert all(len(set(k.tolist())) == 1 for k in ks)
    assert len({int(k[0]) for k in ks}) > 1
    resumed = data.batch_iterator(ds, 4, prefetch_buffer=0)
    resumed.set_state(state)
    for b in later:
        again = next(resumed)
        np.testing.assert_array_equal(again["frames"], b["frames"])
        np.testing.assert_array_equal(again["k"], b["k"])


def test_group_size_excludes_a_fixed_k():
    with pytest.raises(ValueError, match="group_size"):
        data.sequence_dataset("mnist", k=1, group_size=4)


def _run_cli():
    from eqx_ffvae import cli

    return cli


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ffvae-weak", "ffvae-group"])
def test_models_that_infer_k_train_evaluate_and_name_their_flows(name, tmp_path):
    import json

    cli = _run_cli()
    out = tmp_path / "run"
    tiny = ["--latent-dim", "4", "--width", "4", "--potential-width", "8", "--batch-size", "6"]
    assert (
        cli.main(
            ["--model", name, "--steps", "3", *tiny, "--eval-sequences", "24", "--ll-samples", "2", "--out", str(out)]
        )
        == 0
    )
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(
        abs(sum(r[f"usage_{k}"] for k in range(3)) - 1) < 1e-5 and "q_entropy" in r for r in records
    )
    if name == "ffvae-group":  # the authors' temperature schedule, from the step the loop passes in
        np.testing.assert_allclose([r["temperature"] for r in records], np.exp(-3e-5 * np.arange(3)), rtol=1e-6)
    result = json.loads((out / "eval.json").read_text())
    fa = result["flow_assignment"]
    assert sorted(fa["matching"]) == [0, 1, 2] and np.asarray(fa["confusion"]).sum() == result["num_sequences"]
    assert (out / "figures" / "flow_usage.png").exists()
    assert cli.main(["sample", "--run", str(out), "--num", "2"]) == 0
    assert {p.name for p in (out / "figures").glob("samples_*.png")} == {
        "samples_scale.png",
        "samples_rotation.png",
        "samples_hue.png",
    }
