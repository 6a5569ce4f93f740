"""Map statistics, area resizing and box mapping: hand-computed cases and invariants."""

import numpy as np
import pytest

from cnnlens.core import mapstats
from cnnlens.core.resize import area_matrix, resize_area


def test_area_resize_by_an_integer_factor_is_the_block_mean():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 224, 224)).astype(np.float32)
    got = resize_area(maps, (56, 56))
    blocks = maps.reshape(3, 56, 4, 56, 4).mean(axis=(2, 4))
    np.testing.assert_allclose(got, blocks, rtol=1e-6, atol=1e-7)


def test_area_resize_at_odd_ratios_is_the_mean_over_each_cells_exact_span():
    # repeat every pixel `out` times: each output cell is then exactly `in` consecutive values
    rng = np.random.default_rng(1)
    for (h, w), (oh, ow) in (((100, 70), (56, 56)), ((57, 230), (56, 56)), ((64, 64), (10, 3))):
        values = rng.random((h, w))
        fine = np.repeat(np.repeat(values, oh, axis=0), ow, axis=1)
        ref = fine.reshape(oh, h, ow, w).mean(axis=(1, 3))
        np.testing.assert_allclose(resize_area(values[None].astype(np.float32), (oh, ow))[0], ref, rtol=1e-5, atol=1e-6)


def test_area_weights_keep_mass_and_upsizing_is_bilinear():
    matrix = area_matrix(10, 3)
    np.testing.assert_allclose(matrix.sum(axis=1), 1)
    np.testing.assert_allclose(matrix[0, :4], [0.3, 0.3, 0.3, 0.1])  # cell 0 spans [0, 3.33)
    small = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    from cnnlens.core.resize import resize_bilinear
    np.testing.assert_allclose(resize_area(small, (8, 8)), resize_bilinear(small, (8, 8)), atol=1e-6)


def test_statistics_of_hand_made_maps():
    one = np.zeros((1, 10, 10)); one[0, 4, 7] = 2.0
    uniform = np.ones((1, 10, 10))
    corner = np.zeros((1, 10, 10)); corner[0, 0, 0] = 1; corner[0, 5, 5] = 3
    negative = -np.ones((1, 10, 10))
    maps = np.concatenate([one, uniform, corner, negative])
    boxes = np.array([[4, 7, 5, 8], [0, 0, 5, 10], [np.nan] * 4, [0, 0, 10, 10]])
    s = mapstats.statistics(maps, boxes, size=10)  # entropy on a small map the size of these
    assert s["peak_y"].tolist() == [4, 0, 5, -1] and s["peak_x"].tolist() == [7, 0, 5, -1]
    np.testing.assert_allclose(s["border_share"][:3], [0.0, 0.36, 0.25])  # band 1 px: 36 of 100 pixels
    assert np.isnan(s["border_share"][3])  # the ReLU leaves nothing of an all-negative map
    np.testing.assert_allclose(s["entropy"][:3], [0.0, 1.0, -(0.25 * np.log(0.25) + 0.75 * np.log(0.75)) / np.log(100)])
    np.testing.assert_allclose(s["energy_in_box"][:2], [1.0, 0.5])
    assert mapstats.statistics(maps, boxes, size=5)["entropy"][1] == pytest.approx(1.0)  # uniform at any size
    assert np.isnan(s["energy_in_box"][2]) and np.isnan(s["energy_in_box"][3])


def test_gradient_maps_count_absolute_values_over_channels():
    g = np.zeros((1, 3, 8, 8)); g[0, 0, 2, 2] = -5; g[0, 1, 2, 2] = 1; g[0, 2, 6, 6] = 2
    s = mapstats.statistics(g, np.array([[2, 2, 3, 3]]))
    assert (s["peak_y"][0], s["peak_x"][0]) == (2, 2)
    np.testing.assert_allclose(s["energy_in_box"], [6 / 8])


def test_small_maps_are_the_relu_heat_scaled_to_one():
    rng = np.random.default_rng(2)
    maps = rng.standard_normal((4, 64, 64)).astype(np.float32)
    maps[3] = -1  # all negative: stays zero
    small = mapstats.small_maps(maps, 16)
    ref = np.maximum(maps, 0).reshape(4, 16, 4, 16, 4).mean(axis=(2, 4))
    ref[:3] /= ref[:3].reshape(3, -1).max(axis=1)[:, None, None]
    np.testing.assert_allclose(small, ref, rtol=1e-5, atol=1e-6)
    assert small.dtype == np.float32 and small[:3].max(axis=(1, 2)).tolist() == [1, 1, 1] and not small[3].any()


def test_a_box_follows_the_resize_and_crop_of_its_image():
    from cnnlens.adapters.images import fit, fit_box

    # hand-computed: 100 x 200 to 50 x 50 halves the image to 50 x 100 and crops 25 columns off the left
    assert fit_box((10, 60, 30, 100), (100, 200), (50, 50)) == (5, 5, 15, 25)
    assert fit_box((0, 0, 100, 40), (100, 200), (50, 50)) == (0, 0, 50, 0)  # cropped away: empty
    # against the pixels: a white box on black, fitted like the image, lands where fit_box says
    rng = np.random.default_rng(3)
    for _ in range(20):
        h, w = rng.integers(40, 300, size=2)
        top, left = rng.integers(0, h - 20), rng.integers(0, w - 20)
        bottom, right = top + rng.integers(16, h - top + 1), left + rng.integers(16, w - left + 1)
        image = np.zeros((h, w, 3), np.uint8)
        image[top:bottom, left:right] = 255
        size = tuple(int(v) for v in rng.integers(24, 128, size=2))
        t, l, b, r = fit_box((top, left, bottom, right), (h, w), size)
        mask = fit(image, size)[..., 0] > 127
        expected = np.zeros(size, bool)
        expected[t:b, l:r] = True
        grown, shrunk = np.zeros(size, bool), np.zeros(size, bool)
        grown[max(t - 1, 0):b + 1, max(l - 1, 0):r + 1] = True
        shrunk[t + 1:max(b - 1, 0), l + 1:max(r - 1, 0)] = True
        wrong = mask != expected
        assert not (wrong & ~(grown & ~shrunk)).any(), (h, w, size)  # disagreements only on the box's edge pixels
        assert mask[shrunk].all() and not mask[~grown].any()


def test_energy_in_box_is_one_definition_for_the_metric_and_the_audit():
    """The audit's statistic and ``cnnlens.metrics.energy_in_box`` are one computation: equal on
    any maps and boxes (float and partly outside boxes included), differing only where declared —
    a map with no heat scores 0 as a metric, NaN as an audit statistic; no box: NaN."""
    from cnnlens.metrics import energy_in_box

    rng = np.random.default_rng(3)
    maps = rng.normal(size=(6, 2, 9, 11))
    maps[4] = 0.0
    boxes = np.array([[0, 0, 4, 4], [-3, 2, 5, 20], [1.5, 2.5, 7.2, 9.9], [3, 3, 3, 8], [0, 0, 9, 11], [2, 2, 6, 6]])
    audit = mapstats.statistics(maps, boxes)["energy_in_box"]
    metric = energy_in_box(maps, boxes)
    np.testing.assert_allclose(audit[[0, 1, 2, 3, 5]], metric[[0, 1, 2, 3, 5]], rtol=1e-6)
    assert metric[3] == 0.0 and metric[4] == 0.0 and np.isnan(audit[4])
    heat = np.abs(maps).sum(axis=1)  # by hand: the share of |g| summed over channels inside rows 1..6, cols 2..9
    np.testing.assert_allclose(metric[2], heat[2, 2:8, 3:10].sum() / heat[2].sum(), rtol=1e-12)
    boxes[0] = np.nan
    assert np.isnan(mapstats.statistics(maps, boxes)["energy_in_box"][0])
