"""Bilinear resize against F.interpolate(mode="bilinear", align_corners=False)."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from cnnlens.core.resize import interpolation_matrix, resize_bilinear

torch = pytest.importorskip("torch")
F = torch.nn.functional


def reference(x: np.ndarray, size) -> np.ndarray:
    return F.interpolate(torch.from_numpy(x), size=size, mode="bilinear", align_corners=False).numpy()


@pytest.mark.parametrize("src,dst", [
    ((7, 7), (224, 224)),     # Grad-CAM upsampling, ratio 32
    ((7, 7), (32, 32)),       # non-integer ratio up
    ((13, 5), (3, 17)),       # down on one axis, up on the other
    ((224, 224), (7, 7)),     # integer ratio down
    ((39, 25), (31, 18)),     # non-integer ratio down (float32 rounding of the source index matters)
    ((1, 1), (5, 4)),         # a single pixel
    ((6, 6), (6, 6)),         # identity
])
def test_resize_matches_interpolate(src, dst):
    x = np.random.default_rng(0).standard_normal((2, 3) + src).astype(np.float32)
    got = resize_bilinear(x, dst)
    assert got.dtype == np.float32 and got.shape == (2, 3) + dst
    np.testing.assert_allclose(got, reference(x, dst), rtol=1e-5, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 48), w=st.integers(1, 48), H=st.integers(1, 64), W=st.integers(1, 64),
       seed=st.integers(0, 2 ** 16))
def test_resize_property_random_sizes(h, w, H, W, seed):
    x = np.random.default_rng(seed).uniform(-5, 5, (1, 2, h, w)).astype(np.float32)
    np.testing.assert_allclose(resize_bilinear(x, (H, W)), reference(x, (H, W)), rtol=1e-5, atol=5e-6)


@pytest.mark.parametrize("n_in,n_out", [(7, 224), (39, 31), (5, 5), (1, 9), (224, 7)])
def test_interpolation_weights_equal_torch_weights(n_in, n_out):
    """Each row holds PyTorch's own two weights: interpolate the identity matrix with torch."""
    eye = torch.eye(n_in).reshape(n_in, 1, 1, n_in)
    torch_rows = F.interpolate(eye, size=(1, n_out), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(interpolation_matrix(n_in, n_out), torch_rows.reshape(n_in, n_out).T.numpy(),
                               rtol=0, atol=1e-7)


def test_rows_are_convex_combinations():
    m = interpolation_matrix(17, 50)
    assert (m >= 0).all() and np.allclose(m.sum(axis=1), 1, atol=1e-6)
    assert ((m > 0).sum(axis=1) <= 2).all()


def test_constant_map_stays_constant():
    x = np.full((3, 5, 9), 2.5, dtype=np.float32)
    np.testing.assert_allclose(resize_bilinear(x, (40, 13)), 2.5, rtol=1e-6)
