"""Display scaling: values in range, per image, no NaN, and the seeds' formulas by hand."""

import numpy as np
from hypothesis import given, settings, strategies as st

from cnnlens.core import scaling


def test_minmax_per_image_by_hand():
    maps = np.array([[[1.0, 3.0], [5.0, 9.0]], [[-2.0, -2.0], [0.0, 2.0]]], dtype=np.float32)
    out = scaling.normalize_minmax(maps)
    np.testing.assert_allclose(out[0], [[0, 0.25], [0.5, 1]])
    np.testing.assert_allclose(out[1], [[0, 0], [0.5, 1]])


def test_percentile_caps_outliers_like_the_seeds():
    # seed 000: grayscale = sum |g|; clip((g - min) / (p99 - min), 0, 1)
    rng = np.random.default_rng(1)
    g = rng.standard_normal((2, 3, 20, 20)).astype(np.float32)
    g[0, 0, 0, 0] = 1000.0
    gray = scaling.grayscale(g)
    np.testing.assert_allclose(gray, np.abs(g).sum(axis=1), rtol=1e-6)
    out = scaling.normalize_percentile(gray, 99)
    for i in range(2):
        lo, hi = gray[i].min(), np.percentile(gray[i], 99)
        np.testing.assert_allclose(out[i], np.clip((gray[i] - lo) / (hi - lo), 0, 1), rtol=1e-5, atol=1e-6)
    assert out[0, 0, 0] == 1.0  # the outlier saturates instead of washing the rest out
    assert np.median(out[0]) > 0.2


def test_split_sign_by_hand():
    g = np.array([[[-4.0, 2.0], [1.0, 0.0]]], dtype=np.float32)
    pos, neg, mag = scaling.split_sign(g)
    np.testing.assert_allclose(pos[0], [[0, 1], [0.5, 0]])
    np.testing.assert_allclose(neg[0], [[1, 0], [0, 0]])
    np.testing.assert_allclose(mag[0], [[1, 0.5], [0.25, 0]])


@settings(max_examples=50, deadline=None)
@given(value=st.floats(-1e6, 1e6, allow_nan=False), shape=st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9)))
def test_constant_maps_scale_to_zero_without_nan(value, shape):
    maps = np.full(shape, value, dtype=np.float32)
    for fn in (scaling.normalize_minmax, scaling.normalize_percentile):
        out = fn(maps)
        assert np.isfinite(out).all()
    assert (scaling.normalize_minmax(maps) == 0).all()
    assert (scaling.normalize_percentile(maps) == 0).all()


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2 ** 16), scale=st.floats(1e-6, 1e6))
def test_outputs_in_range(seed, scale):
    maps = (np.random.default_rng(seed).standard_normal((2, 3, 8, 8)) * scale).astype(np.float32)
    for out in (scaling.normalize_minmax(maps), scaling.normalize_percentile(maps), *scaling.split_sign(maps)):
        assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
