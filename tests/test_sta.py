"""STA (docs/method.md §8): the divergence-free fields, the spike-and-slab objective, the likelihood's
proposal, the composed data and the evaluation of sparse controls."""

import itertools
import json
import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from eqx_ffvae import data, runs
from eqx_ffvae.data import compositions, device
from eqx_ffvae.data.transforms import colourise, mnist_transform
from eqx_ffvae.distributions import kl_gaussians
from eqx_ffvae.potentials import select_stacked
from eqx_ffvae.sparse_evaluation import evaluate_sparse_controls, spike_scores
from eqx_ffvae.sta import DivergenceFreeField, SparseTransformationVAE, STAConfig

CONFIG = STAConfig(latent_dim=6, width=4, potential_width=8, curl_width=8, curl_rank=3, num_frames=4)


@pytest.fixture(scope="module")
def model():
    return SparseTransformationVAE(CONFIG, key=jr.key(0))


@pytest.fixture(scope="module")
def sequence():
    return jr.uniform(jr.key(1), (CONFIG.num_frames, *CONFIG.image_shape))


def test_the_divergence_free_field_has_zero_divergence_and_keeps_volume():
    """∇·r = trace of its Jacobian is 0 to float tolerance at random points, while r itself and its
    Jacobian are not small; the time-1 map of dz/dt = r(z) has log|det| = 0 (slogdet of `jacrev` of the
    solve): the density it carries is unchanged."""
    field = DivergenceFreeField(5, 16, 3, key=jr.key(2))
    field = eqx.tree_at(lambda f: f.mixing, field, field.mixing * 5)  # a strong field
    zs = jr.normal(jr.key(3), (8, 5))
    jac = jax.vmap(jax.jacfwd(field))(zs)
    assert np.max(np.abs(jnp.trace(jac, axis1=1, axis2=2))) < 1e-5
    assert (
        np.min(np.max(np.abs(jac), axis=(1, 2))) > 0.05 and np.min(np.linalg.norm(jax.vmap(field)(zs), axis=1)) > 0.05
    )

    def flow_map(z):
        term = diffrax.ODETerm(lambda t, y, args: field(y))
        solution = diffrax.diffeqsolve(term, diffrax.Tsit5(), 0.0, 1.0, 0.05, z, max_steps=20)
        return solution.ys[-1]

    moved, (sign, logdet) = jax.jit(jax.vmap(lambda z: (flow_map(z), jnp.linalg.slogdet(jax.jacrev(flow_map)(z)))))(
        zs[:2]
    )
    assert np.all(sign == 1) and np.max(np.abs(logdet)) < 1e-4
    assert np.min(np.linalg.norm(moved - zs[:2], axis=1)) > 0.05  # it does move points


def _bernoulli_chain_log_prob(s: np.ndarray, c: STAConfig) -> float:
    """log p(s) of one flow's spikes (T,) under the Markov prior, by its definition."""
    logp, prev = 0.0, None
    for v in s:
        p_on = c.spike_initial if prev is None else (c.spike_stay if prev else c.spike_start)
        logp += math.log(p_on if v else 1 - p_on)
        prev = v
    return logp


def test_spike_kl_is_the_exact_kl_of_the_mean_field_posterior_to_the_markov_prior(model):
    """`spike_kl` equals Σ_s q(s) log q(s)/p(s) enumerated over every spike pattern (T = 3, K = 2)."""
    logits = jr.normal(jr.key(4), (3, 2)) * 2
    q = np.asarray(jax.nn.sigmoid(logits), np.float64)
    exact = 0.0
    for pattern in itertools.product([0, 1], repeat=6):
        s = np.array(pattern).reshape(3, 2)
        q_s = np.prod(np.where(s == 1, q, 1 - q))
        log_p = sum(_bernoulli_chain_log_prob(s[:, k], CONFIG) for k in range(2))
        exact += q_s * (math.log(q_s) - log_p)
    np.testing.assert_allclose(float(model.spike_kl(logits)), exact, rtol=1e-5)


def test_slab_kl_is_the_gaussian_kl_and_is_weighted_by_the_spike(model):
    """`kl_gaussians` against the KL integrated on a grid; `slab_kl` weights it by q(s = 1)."""
    grid = np.linspace(-6, 8, 200001)
    for mu, logvar in ((1.3, -3.0), (0.2, 0.5)):
        q = np.exp(-0.5 * (grid - mu) ** 2 / np.exp(logvar)) / np.sqrt(2 * np.pi * np.exp(logvar))
        p = np.exp(-0.5 * (grid - 1.0) ** 2 / 0.09) / np.sqrt(2 * np.pi * 0.09)
        numeric = np.trapezoid(q * (np.log(q + 1e-300) - np.log(p + 1e-300)), grid)
        np.testing.assert_allclose(float(kl_gaussians(jnp.array(mu), jnp.array(logvar), 1.0, 0.3)), numeric, rtol=1e-4)
    logits, mu, logvar = jnp.array([[0.0, -50.0]]), jnp.array([[2.0, 2.0]]), jnp.array([[-1.0, -1.0]])
    per = kl_gaussians(mu, logvar, CONFIG.slab_mean, CONFIG.slab_std)
    np.testing.assert_allclose(float(model.slab_kl(logits, mu, logvar)), 0.5 * float(per[0, 0]), rtol=1e-5)


def test_controlled_path_is_the_stated_update_and_one_hot_controls_are_transport(model):
    z0 = jr.normal(jr.key(5), (CONFIG.latent_dim,))
    controls = jr.normal(jr.key(6), (CONFIG.num_frames - 1, CONFIG.num_flows))
    zs = model.controlled_path(z0, controls)
    z = z0
    for t in range(CONFIG.num_frames - 1):
        pots = [model.flows.potential(k) for k in range(CONFIG.num_flows)]
        grads = jnp.stack([jax.grad(lambda x, u=u, t=float(t): u(t, x))(z) for u in pots])
        curls = jnp.stack([select_stacked(model.curls, k)(z) for k in range(CONFIG.num_flows)])
        z = z + controls[t] @ (grads + curls)
        np.testing.assert_allclose(zs[t + 1], z, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(model.controlled_path(z0, jnp.zeros_like(controls)), jnp.broadcast_to(z0, zs.shape))
    np.testing.assert_allclose(
        model.transport(1, z0), model.controlled_path(z0, jnp.zeros_like(controls).at[:, 1].set(1))
    )


def test_batch_loss_is_the_mean_of_the_sequence_losses_and_bounds_with_its_terms(model, sequence):
    """`batch_loss` is the mean of `loss` over the batch (one key per sequence), in value; −loss is the
    ELBO minus λ_HJ · HJ and the ELBO is recon − the three KLs, each KL ≥ 0."""
    frames = jnp.stack([sequence, sequence[::-1]])

    @eqx.filter_jit
    def both(m):
        keys = jr.split(jr.key(8), 2)
        per = jax.vmap(lambda x, kk: m.loss(x, 0, key=kk))(frames, keys)
        return per, m.batch_loss(frames, jnp.zeros(2, jnp.int32), key=jr.key(8), step=None)

    (losses, terms), (loss, batch_terms) = both(model)
    np.testing.assert_allclose(loss, jnp.mean(losses), rtol=1e-6)
    np.testing.assert_allclose(
        terms["elbo"], terms["recon"] - terms["kl0"] - terms["kl_spike"] - terms["kl_slab"], rtol=1e-5
    )
    np.testing.assert_allclose(losses, -terms["elbo"] + CONFIG.hj_weight * terms["hj"], rtol=1e-5)
    assert all(float(jnp.min(terms[name])) >= 0 for name in ("kl0", "kl_spike", "kl_slab"))
    assert set(batch_terms) == set(terms)


def test_the_likelihood_proposal_moves_z0_by_the_controls_before_each_frame(model, sequence):
    """Each frame's point decodes z_0 moved by the controls of the steps before it; its log-density
    and the prior's count only those steps (frame 0: z_0's alone)."""
    points, logqs = eqx.filter_jit(lambda m, x: m.importance_proposal(x, 0, key=jr.key(7)))(model, sequence)
    t0, z0, spikes, slabs = model._unpack(points[0])
    assert set(np.unique(spikes).tolist()) <= {0.0, 1.0}
    path = model.controlled_path(z0, spikes * slabs)
    mu, logvar = model.encode(sequence[0])
    got = eqx.filter_jit(jax.vmap(SparseTransformationVAE.proposal_log_likelihood, in_axes=(None, 0, 0)))(
        model, points, sequence
    )
    want = jax.vmap(model.decoder.frame_log_likelihood)(path, sequence)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    log_q0 = float(-0.5 * jnp.sum(jnp.log(2 * jnp.pi) + logvar + (z0 - mu) ** 2 * jnp.exp(-logvar)))
    np.testing.assert_allclose(float(logqs[0]), log_q0, rtol=1e-5)
    prior0 = model.prior_log_prob(0, 0.0, points[0])
    np.testing.assert_allclose(float(prior0), float(-0.5 * jnp.sum(jnp.log(2 * jnp.pi) + z0**2)), rtol=1e-5)
    assert float(model.prior_log_prob(0, 2.0, points[2])) != float(prior0)


def test_composed_sequences_follow_their_active_sets_on_host_and_device():
    """Every step has exactly one (mnist-single) or two (mnist-double) transformations on; frame t shows
    each at its count of active steps; the device's frames equal the host's; the model never sees k; each
    names the single-transformation dataset whose transformations and frames it composes (where its model
    is scored: `runs.scoring`)."""
    for name, active in (("mnist-single", 1), ("mnist-double", 2)):
        info = data.dataset_info(name)
        source = data.dataset_info(info.composed_from)
        assert source.composed_from is None and source.labelled
        assert (info.transforms, info.num_frames, info.image_shape) == (
            source.transforms,
            source.num_frames,
            source.image_shape,
        )
        host = data.sequence_dataset(name, split="test", seed=4)
        compact = data.sequence_dataset(name, split="test", seed=4, compact=True)
        for i in range(3):
            a, b = host[i], compact[i]
            assert a["k"] == -1 and a["active"].shape == (8, 3) and np.all(a["active"].sum(1) == active)
            np.testing.assert_array_equal(a["active"], b["active"])
            counts = np.concatenate([np.zeros((1, 3)), np.cumsum(a["active"], 0)])
            np.testing.assert_allclose(b["values"], np.array([1, 0, 0]) + counts * [0.1, 10, 20], rtol=1e-6)
            x0 = colourise(b["digits"].astype(np.float32) / 255)
            np.testing.assert_allclose(a["frames"], mnist_transform(x0, dict(enumerate(b["values"].T))), atol=1e-6)
            made = device.frames({key: jnp.asarray(v)[None] for key, v in b.items()}, 9)[0]
            np.testing.assert_allclose(made, a["frames"], atol=1e-5)
    assert "active" not in runs.STEP_INPUTS


def test_active_sets_stay_with_the_stated_probability():
    rng = np.random.default_rng(0)
    sets = [compositions.active_sets(rng, 50, 3, 1) for _ in range(200)]
    switches = np.mean([np.any(s[1:] != s[:-1], axis=1).mean() for s in sets])
    assert abs(switches - (1 - compositions.STAY)) < 0.02
    firsts = np.array([s[0].argmax() for s in sets])
    assert np.all(np.bincount(firsts, minlength=3) > 40)


def test_spike_scores_count_true_and_false_positives():
    truth = np.array([[1, 0, 0], [0, 1, 0]], bool)
    predicted = np.array([[1, 1, 0], [0, 0, 0]], bool)
    got = spike_scores(predicted, truth)
    assert got["precision"] == 0.5 and got["recall"] == 0.5 and got["f1"] == 0.5


def _permuted(model: SparseTransformationVAE, perm: np.ndarray) -> SparseTransformationVAE:
    """The same model with flow j renamed perm⁻¹(j): stacked flows, fields and the pair encoder's
    three K-blocks of outputs permuted alike."""
    k = model.num_flows
    take = lambda tree: jax.tree.map(lambda a: a[perm] if eqx.is_array(a) else a, tree)  # noqa: E731
    rows = np.concatenate([perm + i * k for i in range(3)])
    head = model.pair_encoder.heads[-1]
    head = eqx.tree_at(lambda h: (h.weight, h.bias), head, (head.weight[..., rows], head.bias[rows]))
    return eqx.tree_at(
        lambda m: (m.flows, m.curls, m.pair_encoder.heads[-1]), model, (take(model.flows), take(model.curls), head)
    )


def test_a_permuted_sta_model_scores_the_same_on_composed_sequences(model):
    """Renaming the flows changes nothing a researcher reads: the matching follows the flows, spike
    precision/recall and the composition errors are the same."""
    ds = data.sequence_dataset("mnist-double", split="test", seed=0, num_frames=CONFIG.num_frames)
    batch = data.batch_iterator(ds, 6, drop_remainder=False)
    batches = [{key: next(batch)[key] for key in ("frames", "active")}]
    perm = np.array([2, 0, 1])
    before = evaluate_sparse_controls(model, batches, [0, 1, 2], ("scale", "rotation", "hue"))
    after = evaluate_sparse_controls(
        _permuted(model, perm), batches, [int(j) for j in np.argsort(perm)], ("scale", "rotation", "hue")
    )
    assert before["spikes"]["true_positives"] + before["spikes"]["false_positives"] > 0
    for part in ("spikes", "composition_error"):
        for name, value in before[part].items():
            if isinstance(value, float):
                np.testing.assert_allclose(after[part][name], value, rtol=1e-5, err_msg=name)


def test_model_sta_trains_on_composed_sequences_by_default_with_a_note():
    notes: list[str] = []
    spec = runs.resolve("quick", method="sta", notes=notes)
    assert spec.dataset == "mnist-single" and any("mnist-double" in n for n in notes)
    assert runs.resolve("quick", method="sta", dataset="mnist-double").dataset == "mnist-double"
    assert runs.resolve("quick", method="ffvae").dataset == "mnist"
    with pytest.raises(runs.RunError, match="no labels k"):
        runs.resolve("quick", method="ffvae", dataset="mnist-double")


@pytest.mark.slow
def test_model_sta_trains_evaluates_and_draws_on_the_command_line_and_its_table_reads_it(tmp_path):
    """`--model sta` (tiny): eval.json scores the single-transformation sequences (E_k, the flows matched
    to transformations, log p(x) from its own proposal) and its composed ones (`sparse_controls`); a
    sequence is drawn decomposed into its flows; the comparison table shows the sparse-control columns
    and the claims assess STA against the FFVAE rows, naming the ones without records."""
    from conftest import TINY_ARGS, TINY_EVAL

    from eqx_ffvae import cli
    from eqx_ffvae.reporting.claims import assess
    from eqx_ffvae.reporting.table import summarise, to_markdown

    out = tmp_path / "sta"
    assert (
        cli.main(
            ["--model", "sta", "--dataset", "mnist-double", "--steps", "2", *TINY_ARGS, *TINY_EVAL, "--out", str(out)]
        )
        == 0
    )
    result = json.loads((out / "eval.json").read_text())
    assert result["dataset"] == "mnist-double" and result["model"] == "sta"
    assert set(result["transformations"]) == {"scale", "rotation", "hue"}
    assert result["likelihood_proposal"].startswith("the model's own proposal")
    sparse = result["sparse_controls"]
    assert sparse["active_per_step"] == 2.0 and sparse["matching"] == result["flow_assignment"]["matching"]
    assert 0 <= sparse["spikes"]["recall"] <= 1 and math.isfinite(sparse["composition_error"]["equivariance_error"])
    assert (out / "figures" / "decompose_0.png").stat().st_size > 0
    records = {"sta": [result, result]}
    rows = summarise(records)
    assert rows["sta"]["columns"]["spike_f1"]["mean"] == sparse["spikes"]["f1"]
    table = to_markdown(rows, records, ["scale", "rotation", "hue"], "# t")
    assert "spike F1 ↑" in table and "E along inferred controls ↓" in table
    claims = assess(records, claims=())["claims"]
    assert set(claims) == {"sta-equals-weak", "sta-equals-supervised"}
    assert claims["sta-equals-weak"]["missing"] == ["ffvae-weak"]


def test_a_spike_precision_undefined_for_a_seed_is_averaged_over_the_others_and_says_so():
    """A seed that never switches a flow on has no precision (NaN in its eval.json): the sparse-control
    table averages the seeds that have one and says how many did not, instead of printing nan."""
    from eqx_ffvae.reporting.table import _defined_cell, seed_stats

    assert (
        _defined_cell(seed_stats([0.8, float("nan"), 0.7]), "spike_precision")
        == "0.750 ± 0.071 (1 of 3 seeds undefined)"
    )
    assert _defined_cell(seed_stats([float("nan")]), "spike_precision") == "— (1 of 1 seeds undefined)"
    assert _defined_cell(seed_stats([0.5, 0.7]), "spike_precision") == "0.600 ± 0.141"
