"""The occlusion grid: coverage, the flush last window, no wrap-around, accumulation."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from cnnlens.core.errors import InvalidInputError
from cnnlens.core.occlusion import OcclusionGrid, as_baseline, window_starts


def test_window_starts_by_hand():
    assert window_starts(10, 4, 3).tolist() == [0, 3, 6]          # 6 + 4 = 10: reaches the edge
    assert window_starts(11, 4, 3).tolist() == [0, 3, 6, 7]       # one more, flush with the edge
    assert window_starts(5, 5, 2).tolist() == [0]
    assert window_starts(7, 1, 1).tolist() == list(range(7))


@settings(max_examples=100, deadline=None)
@given(h=st.integers(1, 40), w=st.integers(1, 40), wh=st.integers(1, 40), ww=st.integers(1, 40),
       sh=st.integers(1, 12), sw=st.integers(1, 12))
def test_every_pixel_covered_and_nothing_wraps(h, w, wh, ww, sh, sw):
    if wh > h or ww > w or sh > wh or sw > ww:
        with pytest.raises(InvalidInputError):
            OcclusionGrid((h, w), (wh, ww), (sh, sw))
        return
    grid = OcclusionGrid((h, w), (wh, ww), (sh, sw))
    counts = np.zeros((h, w), dtype=int)
    for p in range(len(grid)):
        rows, cols = grid.box(p)
        assert rows.stop <= h and cols.stop <= w and rows.start >= 0 and cols.start >= 0
        counts[rows, cols] += 1
    assert (counts > 0).all()
    # accumulate with drop 1 everywhere gives exactly 1 (mean of ones); with drop = window index
    # it gives the brute-force mean over the covering windows
    drops = np.arange(len(grid), dtype=np.float64)[None]
    expected = np.zeros((h, w))
    for p in range(len(grid)):
        rows, cols = grid.box(p)
        expected[rows, cols] += p
    np.testing.assert_allclose(grid.accumulate(drops)[0], expected / counts, rtol=1e-5)


def test_occluded_copies():
    x = np.arange(2 * 2 * 5 * 5, dtype=np.float32).reshape(2, 2, 5, 5)
    grid = OcclusionGrid((5, 5), 2, 2)  # starts 0, 2, 3 on both axes
    assert grid.shape == (3, 3)
    baseline = as_baseline([-1.0, -2.0], x.shape[1:])
    batch = grid.occlude(x, np.array([1, 0]), np.array([8, 0]), baseline)
    expected = x[[1, 0]].copy()
    expected[0, 0, 3:5, 3:5], expected[0, 1, 3:5, 3:5] = -1, -2
    expected[1, 0, 0:2, 0:2], expected[1, 1, 0:2, 0:2] = -1, -2
    np.testing.assert_array_equal(batch, expected)
    assert x[1, 0, 4, 4] == 74  # the source images are untouched


@pytest.mark.parametrize("bad", [0, -1, (2, 0), 2.5, "3", (1, 2, 3)])
def test_bad_window_or_stride(bad):
    with pytest.raises(InvalidInputError):
        OcclusionGrid((8, 8), bad, 2)
    with pytest.raises(InvalidInputError):
        OcclusionGrid((8, 8), 3, bad)


def test_stride_larger_than_window_would_leave_gaps():
    with pytest.raises(InvalidInputError, match="stride"):
        OcclusionGrid((8, 8), 2, 3)


def test_window_larger_than_image():
    with pytest.raises(InvalidInputError, match="larger than the image"):
        OcclusionGrid((8, 8), 9, 1)


def test_baseline_shapes():
    assert as_baseline(0.5, (3, 4, 4)).shape == ()
    assert as_baseline(np.zeros(3), (3, 4, 4)).shape == (3, 1, 1)
    with pytest.raises(InvalidInputError):
        as_baseline(np.zeros(2), (3, 4, 4))
