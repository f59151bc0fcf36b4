"""The fast convolutions compute exactly what `lax` convolutions compute, values and gradients."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from eqx_ffvae.conv import Conv2d, ConvTranspose2d
from eqx_ffvae.nn import ConvDecoder, ConvEncoder


@pytest.mark.parametrize("layer", [Conv2d, ConvTranspose2d])
@pytest.mark.parametrize(
    "kernel,stride,padding,size", [(4, 2, 1, 14), (4, 2, 1, 7), (3, 1, 1, 9), (7, 1, 0, 7), (7, 1, 0, 1), (1, 1, 0, 5)]
)
def test_fast_matches_lax(getkey, layer, kernel, stride, padding, size):
    key = getkey()
    fast = layer(3, 5, kernel, stride, padding, impl="fast", key=key)
    ref = layer(3, 5, kernel, stride, padding, impl="lax", key=key)
    x = jr.normal(getkey(), (size, size, 3))
    np.testing.assert_allclose(fast(x), ref(x), rtol=1e-4, atol=1e-5)
    loss = lambda m, x: jnp.sum(jnp.sin(m(x)))  # noqa: E731
    g_fast, gx_fast = eqx.filter_grad(loss)(fast, x), jax.grad(loss, argnums=1)(fast, x)
    g_ref, gx_ref = eqx.filter_grad(loss)(ref, x), jax.grad(loss, argnums=1)(ref, x)
    np.testing.assert_allclose(g_fast.weight, g_ref.weight, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gx_fast, gx_ref, rtol=1e-4, atol=1e-4)


def test_transpose_is_adjoint_of_conv(getkey):
    key = getkey()
    conv = Conv2d(5, 3, 4, 2, 1, key=key)
    deconv = ConvTranspose2d(3, 5, 4, 2, 1, key=key)
    deconv = eqx.tree_at(lambda d: d.weight, deconv, conv.weight.transpose(3, 0, 1, 2))
    x, y = jr.normal(getkey(), (28, 28, 5)), jr.normal(getkey(), (14, 14, 3))
    lhs = jnp.vdot(conv(x) - conv.bias[None, None], y)
    rhs = jnp.vdot(x, deconv(y) - deconv.bias[None, None])
    np.testing.assert_allclose(lhs, rhs, rtol=1e-4)


@pytest.mark.parametrize("layer", [Conv2d, ConvTranspose2d])
@pytest.mark.parametrize(
    "kernel,stride,padding,shape",
    [(4, 2, 1, (8, 12)), ((8, 12), 1, 0, (8, 12)), ((8, 12), 1, 0, (1, 1)), ((3, 5), 1, 1, (6, 9))],
)
def test_fast_matches_lax_on_rectangles(getkey, layer, kernel, stride, padding, shape):
    """Non-square images and kernels (the stack of a 32 × 48 dataset): the same functions as `lax`."""
    key = getkey()
    fast = layer(3, 5, kernel, stride, padding, impl="fast", key=key)
    ref = layer(3, 5, kernel, stride, padding, impl="lax", key=key)
    x = jr.normal(getkey(), (*shape, 3))
    np.testing.assert_allclose(fast(x), ref(x), rtol=1e-4, atol=1e-5)
    loss = lambda m, x: jnp.sum(jnp.sin(m(x)))  # noqa: E731
    g_fast, g_ref = eqx.filter_grad(loss)(fast, x), eqx.filter_grad(loss)(ref, x)
    np.testing.assert_allclose(g_fast.weight, g_ref.weight, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        jax.grad(loss, argnums=1)(fast, x), jax.grad(loss, argnums=1)(ref, x), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("shape", [(28, 28), (64, 64), (128, 128), (32, 48), (128, 96), (8, 64)])
def test_decoder_mirrors_encoder_exactly(getkey, shape):
    enc = ConvEncoder((3, *shape), 5, 4, key=getkey())
    dec = ConvDecoder((3, *shape), 5, 4, key=getkey())
    mu, logvar = eqx.filter_eval_shape(enc, jr.uniform(getkey(), (3, *shape)))
    assert mu.shape == logvar.shape == (5,)
    assert eqx.filter_eval_shape(dec, mu).shape == (3, *shape)


def test_the_paper_sizes_keep_their_layers(getkey):
    """28, 64 and 128 px build the layers they always had (square kernels of the same sizes)."""
    for size, kernels in [(28, [4, 4, 7]), (64, [4, 4, 16]), (128, [4, 4, 4, 4, 8])]:
        enc = ConvEncoder((3, size, size), 5, 4, key=getkey())
        assert [c.weight.shape[:2] for c in enc.net.convs] == [(k, k) for k in kernels]


def test_gaussian_pixels_are_the_normal_density(getkey):
    from scipy.stats import norm

    from eqx_ffvae.pixels import GaussianPixels, pixel_likelihood

    out, x = jr.normal(getkey(), (3, 4, 5)), jr.uniform(getkey(), (3, 4, 5))
    learned = pixel_likelihood("gaussian", 3)
    learned = eqx.tree_at(lambda p: p.log_scale, learned, jnp.log(jnp.array([0.1, 0.2, 0.5])))
    sigma = np.array([0.1, 0.2, 0.5])[:, None, None]
    expected = norm.logpdf(np.asarray(x), np.asarray(jax.nn.sigmoid(out)), sigma).sum()
    np.testing.assert_allclose(learned(out, x, 0), expected, rtol=1e-5)
    np.testing.assert_allclose(learned(jnp.moveaxis(out, 0, -1), jnp.moveaxis(x, 0, -1), -1), expected, rtol=1e-5)
    fixed = GaussianPixels(3, 0.2)
    assert eqx.filter_grad(lambda p: p(out, x, 0))(fixed).log_scale.tolist() == [0.0, 0.0, 0.0]
    assert np.all(np.asarray(eqx.filter_grad(lambda p: p(out, x, 0))(learned).log_scale) != 0)


def test_a_gaussian_decoder_sums_the_same_laid_out_or_frame_by_frame(getkey):
    from eqx_ffvae.layout import Layout
    from eqx_ffvae.pixels import GaussianPixels

    dec = ConvDecoder((3, 32, 48), 5, 4, pixels=GaussianPixels(3), key=getkey())
    zs, xs = jr.normal(getkey(), (2, 4, 5)), jr.uniform(getkey(), (2, 4, 3, 32, 48))

    def by_frame(d):
        return jnp.sum(jax.vmap(jax.vmap(d.frame_log_likelihood))(zs, xs))

    def laid_out(d):
        return d.summed_log_likelihood(zs, xs, Layout(2))

    np.testing.assert_allclose(laid_out(dec), by_frame(dec), rtol=1e-5)
    g1, g2 = eqx.filter_grad(laid_out)(dec), eqx.filter_grad(by_frame)(dec)
    np.testing.assert_allclose(g1.pixels.log_scale, g2.pixels.log_scale, rtol=1e-4)
    np.testing.assert_allclose(g1.deconvs[-1].weight, g2.deconvs[-1].weight, rtol=1e-4, atol=1e-4)


def test_patch_custom_vjps_are_autodiffs_own_transposes(getkey):
    """`_col2im` and `_im2col` are each other's custom VJPs: each must equal JAX's own transpose
    of the other's forward computation (odd and even sizes, several channels)."""
    from eqx_ffvae.conv import _col2im, _im2col

    for h, w in [(7, 7), (4, 6)]:
        u = jr.normal(getkey(), (h, w, 4, 4, 3))
        g = jr.normal(getkey(), (2 * h, 2 * w, 3))
        (via_autodiff,) = jax.linear_transpose(_col2im.fun, u)(g)
        np.testing.assert_allclose(_im2col(g), via_autodiff, rtol=1e-6, atol=1e-6)
        (via_autodiff,) = jax.linear_transpose(_im2col.fun, g)(u)
        np.testing.assert_allclose(_col2im(u), via_autodiff, rtol=1e-6, atol=1e-6)
        _, vjp = jax.vjp(_col2im, u)
        np.testing.assert_allclose(vjp(g)[0], _im2col(g), rtol=1e-6, atol=1e-6)
