"""MNIST transformations against independent computations (docs/method.md §1)."""

import colorsys

import numpy as np
import pytest

from eqx_ffvae import data
from eqx_ffvae.data.transforms import HUES_DEG, ROTATIONS_DEG, SCALES, adjust_hue, affine, mnist_frames


@pytest.fixture(scope="module")
def digit():
    images, _ = data.load_embedded_mnist()
    return data.colourise(images[123] / 255.0)


def test_embedded_mnist_is_real_and_small():
    images, labels = data.load_embedded_mnist()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert sorted(np.unique(labels)) == list(range(10))
    assert images.max() == 255 and images.mean() > 20


def test_grids_are_specs():
    np.testing.assert_allclose(SCALES, [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8])
    np.testing.assert_allclose(ROTATIONS_DEG, np.arange(0, 81, 10))
    np.testing.assert_allclose(HUES_DEG, np.arange(0, 161, 20))


def test_colourise_puts_digit_in_red(digit):
    assert digit.shape == (3, 28, 28)
    assert digit[0].max() == 1.0 and not digit[1:].any()


@pytest.mark.parametrize("quarter", [1, 2, 3])
def test_right_angle_rotation_is_rot90_about_spec_centre(rng_image, quarter):
    """About (W/2, H/2) = (14, 14) rather than the array centre (13.5, 13.5): rot90 plus a 1-px shift."""
    out = affine(rng_image, np.array([90.0 * quarter]), np.ones(1))[0]
    ref = np.rot90(rng_image, quarter, axes=(1, 2))
    shift = {1: (1, 0), 2: (1, 1), 3: (0, 1)}[quarter]
    ref = np.roll(ref, shift, axis=(1, 2))
    interior = (slice(None), slice(2, -2), slice(2, -2))
    np.testing.assert_allclose(out[interior], ref[interior], atol=1e-5)


@pytest.fixture
def rng_image():
    img = np.zeros((3, 28, 28), np.float32)
    img[:, 4:24, 4:24] = np.random.default_rng(0).uniform(size=(3, 20, 20))
    return img


def test_rotation_direction_is_counter_clockwise(rng_image):
    """A pixel right of the centre moves up (to smaller row index) under +90°."""
    img = np.zeros((3, 28, 28), np.float32)
    img[0, 14, 20] = 1.0
    out = affine(img, np.array([90.0]), np.ones(1))[0]
    assert out[0, 8, 14] == pytest.approx(1.0)


def test_scale_about_centre(rng_image):
    img = np.zeros((1, 28, 28), np.float32)
    img[0, 14, 18] = 1.0
    out = affine(img, np.zeros(1), np.array([2.0]))[0]
    # (18 - 14) * 2 + 14 = 22: the point moves away from the centre by the scale factor
    assert out[0, 14, 22] == pytest.approx(1.0)
    assert out[0, 14, 14 + 8 - 1] == pytest.approx(0.5)


def test_identities(digit, rng_image):
    np.testing.assert_allclose(data.apply_transform("mnist", digit, 0, 0), digit, atol=1e-6)
    np.testing.assert_allclose(data.apply_transform("mnist", digit, 1, 0), digit, atol=1e-6)
    np.testing.assert_allclose(data.apply_transform("mnist", rng_image, 2, 0), rng_image, atol=1e-5)
    np.testing.assert_allclose(adjust_hue(rng_image, np.array([360.0]))[0], rng_image, atol=1e-5)


def test_hue_rotation_matches_colorsys(rng_image):
    out = adjust_hue(rng_image, np.array([100.0]))[0]
    for y, x in [(5, 5), (10, 17), (20, 8)]:
        h, s, v = colorsys.rgb_to_hsv(*rng_image[:, y, x])
        expected = colorsys.hsv_to_rgb((h + 100 / 360) % 1.0, s, v)
        np.testing.assert_allclose(out[:, y, x], expected, atol=1e-5)


def test_red_rotated_by_120_degrees_is_green():
    red = np.zeros((3, 2, 2), np.float32)
    red[0] = 1.0
    np.testing.assert_allclose(adjust_hue(red, np.array([120.0]))[0][:, 0, 0], [0, 1, 0], atol=1e-6)


def test_frames_are_x0_transformed_not_composed(digit):
    frames = mnist_frames(digit, 1, np.arange(9))
    direct = data.apply_transform("mnist", digit, 1, 8)
    np.testing.assert_allclose(frames[8], direct, atol=1e-6)
    np.testing.assert_allclose(frames[0], digit, atol=1e-6)
    assert np.abs(frames[8] - digit).sum() > 10


def test_apply_transform_errors(digit):
    with pytest.raises(ValueError, match="'shapes3d'"):
        data.apply_transform("shapes3d", digit, 0, 1)
    with pytest.raises(ValueError, match="k = 3"):
        data.apply_transform("mnist", digit, 3, 1)
    with pytest.raises(ValueError, match=r"\(28, 28\)"):
        data.apply_transform("mnist", digit[0], 0, 1)
    with pytest.raises(ValueError, match=r"t = \[9\]"):
        data.apply_transform("mnist", digit, 0, 9)


def test_device_frames_equal_the_host_frames_to_float32_rounding():
    """`data.device.mnist_frames` (JAX, in the training step) against `MnistSequence` (NumPy, host):
    every k, every frame, real digits; and a compact batch carries ≤ 1 KB per sequence."""
    import jax.numpy as jnp

    from eqx_ffvae.data import device

    full = data.sequence_dataset("mnist", split="test", k=None, seed=3)
    compact = data.sequence_dataset("mnist", split="test", k=None, seed=3, compact=True)
    rows = [full[i] for i in range(12)]
    small = [compact[i] for i in range(12)]
    assert {int(r["k"]) for r in rows} == {0, 1, 2}
    assert [int(r["k"]) for r in rows] == [int(r["k"]) for r in small]
    digits = np.stack([r["digits"] for r in small])
    made = device.mnist_frames(jnp.asarray(digits), jnp.asarray([int(r["k"]) for r in small]))
    expected = np.stack([r["frames"] for r in rows])
    assert made.shape == expected.shape and made.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(made), expected, rtol=0, atol=2e-6)
    assert max(sum(np.asarray(v).nbytes for v in r.values()) for r in small) <= 1024
    assert sum(np.asarray(v).nbytes for v in rows[0].values()) > 80_000


def test_device_frames_of_uint8_factor_frames_are_the_hosts_bit_for_bit():
    import jax.numpy as jnp

    from eqx_ffvae.data import device

    full = data.sequence_dataset("procedural-shapes", split="test", seed=1, num_frames=3)[0]
    compact = data.sequence_dataset("procedural-shapes", split="test", seed=1, num_frames=3, compact=True)[0]
    assert compact["frames"].dtype == np.uint8
    made = device.frames({"frames": jnp.asarray(compact["frames"][None]), "k": jnp.zeros(1, jnp.int32)}, 3)
    np.testing.assert_array_equal(np.asarray(made)[0], full["frames"])
