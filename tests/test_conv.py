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


@pytest.mark.parametrize("size", [28, 64, 128])
def test_decoder_mirrors_encoder_exactly(getkey, size):
    enc = ConvEncoder((3, size, size), 5, 4, key=getkey())
    dec = ConvDecoder((3, size, size), 5, 4, key=getkey())
    mu, logvar = eqx.filter_eval_shape(enc, jr.uniform(getkey(), (3, size, size)))
    assert mu.shape == logvar.shape == (5,)
    assert eqx.filter_eval_shape(dec, mu).shape == (3, size, size)


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
