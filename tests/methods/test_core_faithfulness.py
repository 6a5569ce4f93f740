"""Faithfulness measures: pixel orders, deletion/insertion on a linear model computed by hand,
baselines, areas, energy in a box, SSIM and the rank correlation of absolute values."""

import contextlib
import types

import numpy as np
import pytest

from cnnlens.core import progress
from cnnlens.core.errors import InvalidInputError
from cnnlens.core.faithfulness import (
    auc,
    baseline_image,
    blend_by_rank,
    deletion_insertion,
    energy_in_box,
    importance,
    normalise_unit,
    pixel_order,
    ranks_of,
    rank_correlation_abs,
    ssim,
    step_counts,
)


class LinearBackend:
    """logit 0 = sum(weights * x) over (C, H, W); logit 1 = 0. Records every batch it scores."""

    def __init__(self, weights: np.ndarray, default_batch: int = 5):
        self.weights = np.asarray(weights, dtype=np.float64)
        self.default_batch = default_batch
        self.batches = []

    def batch_size(self, kind, shape):
        assert kind == "forward" and tuple(shape) == self.weights.shape
        return self.default_batch

    def forward(self, x):
        assert x.dtype == np.float32 and x.shape[1:] == self.weights.shape
        self.batches.append(len(x))
        first = (x.astype(np.float64) * self.weights).sum(axis=(1, 2, 3))
        return types.SimpleNamespace(logits=np.stack([first, np.zeros_like(first)], axis=1))


def softmax0(logits0):
    """Probability of class 0 for logits [s, 0], by NumPy."""
    z = np.stack([logits0, np.zeros_like(logits0)], axis=-1)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True))[..., 0]


def positive_problem(n=3, c=2, h=4, w=5, seed=0):
    """Positive images and weights, and each pixel's contribution to logit 0 (N, H, W)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.1, 1.0, (n, c, h, w)).astype(np.float32)
    weights = rng.uniform(0.5, 2.0, (c, h, w))
    contribution = (x.astype(np.float64) * weights).sum(axis=1)
    return x, weights, contribution


def expected_curves(contribution, counts):
    """Deletion / insertion of logit 0 by hand: running totals of the contributions, largest first."""
    flat = np.sort(contribution.reshape(len(contribution), -1), axis=1)[:, ::-1]
    removed = np.concatenate([np.zeros((len(flat), 1)), np.cumsum(flat, axis=1)], axis=1)[:, counts]
    total = flat.sum(axis=1, keepdims=True)
    return total - removed, removed


# ---------------------------------------------------------------- orders and perturbations


def test_importance_of_gradient_maps_sums_absolute_channels():
    g = np.array([[[[1.0, -2.0]], [[-3.0, 0.5]]]])  # (1, 2, 1, 2)
    np.testing.assert_array_equal(importance(g), [[[4.0, 2.5]]])
    m = np.array([[[1.0, -2.0]]])
    np.testing.assert_array_equal(importance(m), m)  # (N, H, W) kept as it is, signs too
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        importance(np.zeros((2, 2)))


def test_pixel_order_with_ties():
    imp = np.array([[[1.0, 3.0, 0.0],
                     [3.0, -1.0, 1.0]]])
    # 3 at 1 and 3 (lower index first), 1 at 0 and 5, then 0 at 2, -1 at 4
    assert pixel_order(imp).tolist() == [[1, 3, 0, 5, 2, 4]]
    assert pixel_order(np.zeros((2, 2, 2))).tolist() == [[0, 1, 2, 3]] * 2
    assert pixel_order(imp).dtype == np.int64


def test_step_counts_values():
    assert step_counts(12, 5).tolist() == [0, 2, 5, 7, 10, 12]  # 2.4, 4.8, 7.2, 9.6 rounded
    assert step_counts(4, 4).tolist() == [0, 1, 2, 3, 4]
    assert step_counts(3, 1).tolist() == [0, 3]
    assert step_counts(2, 4).tolist() == [0, 0, 1, 2, 2]  # 0.5 -> 0 and 1.5 -> 2: half to even
    assert step_counts(7, 3).dtype == np.int64


def test_blend_by_rank_matches_a_loop_over_pixels():
    rng = np.random.default_rng(1)
    start, end = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    order = rng.permutation(20)
    counts = np.array([0, 1, 7, 20, 13])
    out = blend_by_rank(start[None], end[None], ranks_of(order)[None], counts)
    assert out.shape == (5, 3, 4, 5) and out.dtype == np.float32
    for b, k in enumerate(counts):
        expected = start.copy()
        for p in order[:k]:
            r, c = divmod(p, 5)
            expected[:, r, c] = end[:, r, c]
        np.testing.assert_array_equal(out[b], expected)


# ---------------------------------------------------------------- baselines


def test_numeric_baselines():
    x = np.ones((2, 3, 2, 2), dtype=np.float32)
    np.testing.assert_array_equal(baseline_image(x, 0.5), np.full(x.shape, 0.5, np.float32))
    per_channel = baseline_image(x, [1.0, 2.0, 3.0])
    assert per_channel.shape == x.shape and per_channel.dtype == np.float32
    np.testing.assert_array_equal(per_channel[1, :, 1, 0], [1.0, 2.0, 3.0])
    full = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    np.testing.assert_array_equal(baseline_image(x, full)[0], full)
    np.testing.assert_array_equal(baseline_image(x, full)[1], full)


def test_blur_of_a_constant_image_is_the_constant():
    x = np.full((1, 2, 9, 13), 0.7, dtype=np.float32)
    np.testing.assert_allclose(baseline_image(x, "blur"), x, rtol=1e-6)
    np.testing.assert_allclose(baseline_image(x, "blur", sigma=6.0), x, rtol=1e-6)  # kernel wider than image


def test_blur_of_a_bright_pixel_keeps_its_mass_and_is_symmetric():
    x = np.zeros((1, 1, 41, 41), dtype=np.float32)
    x[0, 0, 20, 20] = 1.0
    out = baseline_image(x, "blur", sigma=2.0)[0, 0].astype(np.float64)  # radius 8: away from the edges
    np.testing.assert_allclose(out.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out, out[::-1], atol=1e-8)
    np.testing.assert_allclose(out, out[:, ::-1], atol=1e-8)
    np.testing.assert_allclose(out, out.T, atol=1e-8)
    g = np.exp(-0.5 * (np.arange(-8, 9) / 2.0) ** 2)
    np.testing.assert_allclose(out[20, 20], (1 / g.sum()) ** 2, rtol=1e-5)  # separable peak: g(0)^2 / (sum g)^2
    np.testing.assert_allclose(out[20, 22], np.exp(-0.5) / g.sum() ** 2, rtol=1e-5)


def test_blur_default_sigma_is_five_percent_of_the_shorter_side():
    x = np.random.default_rng(2).uniform(size=(2, 1, 40, 60)).astype(np.float32)
    np.testing.assert_array_equal(baseline_image(x, "blur"), baseline_image(x, "blur", sigma=2.0))
    assert not np.allclose(baseline_image(x, "blur"), baseline_image(x, "blur", sigma=3.0))


def test_blur_matches_scipy_reflect():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = np.random.default_rng(3).uniform(size=(2, 3, 12, 17)).astype(np.float32)
    ours = baseline_image(x, "blur", sigma=1.7)
    theirs = ndimage.gaussian_filter(x.astype(np.float64), (0, 0, 1.7, 1.7), mode="reflect")
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


# ---------------------------------------------------------------- areas


def test_auc_of_known_curves():
    np.testing.assert_allclose(auc(np.full(11, 0.3)), 0.3)
    np.testing.assert_allclose(auc(np.linspace(0, 1, 21)), 0.5)
    np.testing.assert_allclose(auc(np.array([1.0, 0.0, 0.5])), 0.5 * (0.5 * (1 + 0) + 0.5 * (0 + 0.5)))  # 0.375
    curves = np.array([[0.0, 1.0], [2.0, 2.0]])
    np.testing.assert_allclose(auc(curves), [0.5, 2.0])
    np.testing.assert_allclose(auc(curves.T, axis=0), [0.5, 2.0])


# ---------------------------------------------------------------- deletion and insertion


def test_deletion_insertion_logits_by_hand_one_channel():
    x = np.array([[[[0.5, 0.1, 0.9, 0.3],
                    [0.2, 0.8, 0.4, 0.7],
                    [0.6, 0.05, 0.35, 0.15]]]], dtype=np.float32)
    backend = LinearBackend(np.ones((1, 3, 4)))
    out = deletion_insertion(backend, x, x[:, 0], steps=12, score="logit")
    values = np.sort(x.astype(np.float64).ravel())[::-1]
    removed = np.r_[0.0, np.cumsum(values)]  # one pixel per step, largest first
    total = values.sum()
    np.testing.assert_allclose(out["deletion"][0], total - removed, rtol=1e-12)
    np.testing.assert_allclose(out["insertion"][0], removed, rtol=1e-12)
    np.testing.assert_allclose(out["insertion"] + out["deletion"], total, rtol=1e-12)  # mirror images
    np.testing.assert_allclose(out["deletion_auc"], auc(total - removed))
    assert out["target"].tolist() == [0]
    assert out["deletion"].dtype == np.float64 and out["target"].dtype == np.int64


def test_deletion_insertion_logits_and_probabilities_many_images():
    x, weights, contribution = positive_problem()
    counts = [0, 2, 5, 8, 10, 12, 15, 18, 20]  # round(linspace(0, 20, 9)): 2.5 -> 2, 7.5 -> 8 (half to even)
    deletion, insertion = expected_curves(contribution, counts)
    gradient_times_input = x * weights  # (N, C, H, W), positive: |.| summed over C = contribution
    logit = deletion_insertion(LinearBackend(weights), x, gradient_times_input, steps=8, score="logit")
    np.testing.assert_allclose(logit["deletion"], deletion, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(logit["insertion"], insertion, rtol=1e-6)
    prob = deletion_insertion(LinearBackend(weights), x, contribution, steps=8, score="probability")
    np.testing.assert_allclose(prob["deletion"], softmax0(deletion), rtol=1e-6)
    np.testing.assert_allclose(prob["insertion"], softmax0(insertion), rtol=1e-6)
    np.testing.assert_allclose(prob["insertion_auc"], auc(softmax0(insertion)), rtol=1e-6)


def test_baseline_value_and_per_channel_baseline():
    x, weights, contribution = positive_problem(n=2)
    fill = np.array([0.25, -0.5])
    out = deletion_insertion(LinearBackend(weights), x, contribution, steps=20, baseline=fill, score="logit")
    # replacing pixel p changes logit 0 by sum_c w[c, p] * (fill[c] - x[c, p])
    change = ((fill[:, None, None] - x.astype(np.float64)) * weights).sum(axis=1).reshape(2, -1)
    order = np.argsort(-contribution.reshape(2, -1), axis=1, kind="stable")
    steps = np.take_along_axis(change, order, axis=1)
    clean = contribution.reshape(2, -1).sum(axis=1, keepdims=True)
    expected = clean + np.concatenate([np.zeros((2, 1)), np.cumsum(steps, axis=1)], axis=1)
    np.testing.assert_allclose(out["deletion"], expected, rtol=1e-6)
    np.testing.assert_allclose(out["insertion"][:, 0], expected[:, -1], rtol=1e-6)  # the baseline image
    np.testing.assert_allclose(out["insertion"][:, -1], clean[:, 0], rtol=1e-6)


def test_batch_size_does_not_change_results_and_is_respected():
    x, weights, contribution = positive_problem(n=3)
    results = {}
    for size in (1, 7, None):
        backend = LinearBackend(weights, default_batch=4)
        results[size] = deletion_insertion(backend, x, contribution, steps=5, batch_size=size)
        limit = 4 if size is None else size
        assert max(backend.batches) <= limit
        assert sum(backend.batches) == 3 + 3 * 2 * 5  # clean images once, then 2 * steps perturbed each
    for key in ("deletion", "insertion", "deletion_auc", "insertion_auc", "target"):
        np.testing.assert_array_equal(results[1][key], results[7][key])
        np.testing.assert_array_equal(results[1][key], results[None][key])


def test_progress_reports_every_perturbed_image():
    x, weights, contribution = positive_problem(n=2)
    seen = []

    @contextlib.contextmanager
    def reporter(name, total, unit="pass"):
        seen.append([name, total, 0])
        yield lambda k=1: seen[-1].__setitem__(2, seen[-1][2] + k)

    with progress.reporting(reporter):
        deletion_insertion(LinearBackend(weights), x, contribution, steps=4, batch_size=3)
    assert seen == [["deletion/insertion", 16, 16]]


def test_the_true_order_beats_the_reversed_order():
    x, weights, contribution = positive_problem(n=3, seed=4)
    backend = LinearBackend(weights)
    best = deletion_insertion(backend, x, contribution, steps=10)
    worst = deletion_insertion(backend, x, -contribution, steps=10)
    assert (best["deletion_auc"] < worst["deletion_auc"]).all()
    assert (best["insertion_auc"] > worst["insertion_auc"]).all()


def test_targets_int_and_list():
    x, weights, contribution = positive_problem(n=3)
    counts = list(range(0, 21, 5))
    deletion, _ = expected_curves(contribution, counts)
    backend = LinearBackend(weights)
    one = deletion_insertion(backend, x, contribution, target=1, steps=4, score="logit")
    assert one["target"].tolist() == [1, 1, 1]
    np.testing.assert_array_equal(one["deletion"], 0.0)  # logit 1 is always 0
    listed = deletion_insertion(backend, x, contribution, target=[0, 1, 0], steps=4)
    assert listed["target"].tolist() == [0, 1, 0]
    np.testing.assert_allclose(listed["deletion"][[0, 2]], softmax0(deletion[[0, 2]]), rtol=1e-6)
    np.testing.assert_allclose(listed["deletion"][1], softmax0(-deletion[1]), rtol=1e-6)  # 1 / (1 + e^s)
    predicted = deletion_insertion(backend, x, contribution, steps=4)
    assert predicted["target"].tolist() == [0, 0, 0]  # positive logit 0 beats logit 1 = 0


def test_blur_baseline_in_deletion():
    x, weights, contribution = positive_problem(n=1, h=6, w=6)
    out = deletion_insertion(LinearBackend(weights), x, contribution, steps=3, baseline="blur", score="logit")
    blurred = baseline_image(x, "blur")
    np.testing.assert_allclose(out["deletion"][0, -1], (blurred.astype(np.float64) * weights).sum(), rtol=1e-6)
    np.testing.assert_allclose(out["insertion"][0, 0], out["deletion"][0, -1], rtol=1e-12)


# ---------------------------------------------------------------- energy in a box


def test_energy_in_box():
    maps = np.zeros((4, 4, 6))
    maps[0, 1:3, 2:4] = 1.0                    # all energy inside
    maps[1, 1, 2], maps[1, 0, 0] = 2.0, 2.0    # half inside, half outside
    maps[2, 1, 2], maps[2, 0, 0] = 1.0, -5.0   # negative values ignored
    boxes = np.array([[1, 2, 3, 4]] * 4)       # rows 1..2, columns 2..3
    np.testing.assert_allclose(energy_in_box(maps, boxes), [1.0, 0.5, 1.0, 0.0])
    maps[0, 3, 4] = 1.0                        # row 3 / column 4: just outside (exclusive)
    np.testing.assert_allclose(energy_in_box(maps[:1], boxes[:1]), [0.8])


def test_energy_in_box_of_gradient_maps_uses_absolute_values():
    g = np.zeros((1, 3, 2, 2))
    g[0, 0, 0, 0], g[0, 1, 0, 0], g[0, 2, 1, 1] = -1.0, 2.0, 1.0  # importance 3 at (0, 0), 1 at (1, 1)
    np.testing.assert_allclose(energy_in_box(g, [[0, 0, 1, 1]]), [0.75])


# ---------------------------------------------------------------- similarity


def test_ssim_of_identical_shifted_and_swapped_maps():
    rng = np.random.default_rng(5)
    a = rng.uniform(0, 0.8, (2, 32, 40))
    np.testing.assert_allclose(ssim(a, a), [1.0, 1.0], rtol=1e-12)
    shifted = ssim(a, a + 0.2)
    assert ((shifted > 0) & (shifted < 1)).all()
    b = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1)
    np.testing.assert_allclose(ssim(a, b), ssim(b, a), rtol=1e-12)


def test_ssim_of_unrelated_noise_is_near_zero():
    rng = np.random.default_rng(6)
    a, b = rng.uniform(size=(2, 3, 64, 64))
    values = ssim(a, b)
    assert (np.abs(values) < 0.1).all(), values


def test_ssim_by_hand_on_one_window():
    a = np.array([[[0.0, 0.5], [0.5, 1.0]]])
    b = np.array([[[0.0, 0.0], [1.0, 1.0]]])
    # means 0.5 and 0.5; variances 0.125 and 0.25; covariance 0.125; C1 = 1e-4, C2 = 9e-4
    expected = (2 * 0.25 + 1e-4) * (2 * 0.125 + 9e-4) / ((0.25 + 0.25 + 1e-4) * (0.125 + 0.25 + 9e-4))
    np.testing.assert_allclose(ssim(a, b), [expected], rtol=1e-12)
    np.testing.assert_allclose(ssim(a * 255, b * 255, data_range=255), [expected], rtol=1e-12)


def test_ssim_window_is_gaussian_valid_region():
    """A 12x11 image has 2x1 valid 11x11 windows; check one position against the weights directly."""
    rng = np.random.default_rng(7)
    a, b = rng.uniform(size=(2, 1, 12, 11))
    g = np.exp(-0.5 * (np.arange(-5, 6) / 1.5) ** 2)
    w = np.outer(g, g) / g.sum() ** 2
    values = []
    for top in (0, 1):
        pa, pb = a[0, top:top + 11], b[0, top:top + 11]
        ma, mb = (w * pa).sum(), (w * pb).sum()
        va, vb = (w * pa * pa).sum() - ma ** 2, (w * pb * pb).sum() - mb ** 2
        cov = (w * pa * pb).sum() - ma * mb
        values.append((2 * ma * mb + 1e-4) * (2 * cov + 9e-4) / ((ma ** 2 + mb ** 2 + 1e-4) * (va + vb + 9e-4)))
    np.testing.assert_allclose(ssim(a, b), [np.mean(values)], rtol=1e-10)


def test_normalise_unit():
    maps = np.array([[[-4.0, 2.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    np.testing.assert_array_equal(normalise_unit(maps), [[[1.0, 0.5], [0.25, 0.0]], [[0, 0], [0, 0]]])
    g = np.array([[[[1.0]], [[-2.0]]]])  # (1, 2, 1, 1): the maximum is over all of the image's values
    np.testing.assert_array_equal(normalise_unit(g), [[[[0.5]], [[1.0]]]])


def test_rank_correlation_abs():
    rng = np.random.default_rng(8)
    a = rng.standard_normal((2, 5, 5))
    signs = rng.choice([-1.0, 1.0], size=a.shape)
    np.testing.assert_allclose(rank_correlation_abs(a, a * signs), [1.0, 1.0])
    ordered = np.array([[[1.0, -2.0], [3.0, 4.0]]])
    reversed_ = np.array([[[-4.0, 3.0], [2.0, -1.0]]])
    np.testing.assert_allclose(rank_correlation_abs(ordered, reversed_), [-1.0])
    b = rng.standard_normal((2, 5, 5))
    np.testing.assert_allclose(rank_correlation_abs(a, b), rank_correlation_abs(b, a))


# ---------------------------------------------------------------- bad arguments


@pytest.mark.parametrize("steps", [0, -3, 2.5, True, "10"])
def test_bad_steps(steps):
    with pytest.raises(InvalidInputError, match="steps must be a positive int"):
        step_counts(10, steps)
    x, weights, contribution = positive_problem(n=1)
    with pytest.raises(InvalidInputError, match="steps must be a positive int"):
        deletion_insertion(LinearBackend(weights), x, contribution, steps=steps)


def test_bad_deletion_insertion_arguments():
    x, weights, contribution = positive_problem(n=2)
    backend = LinearBackend(weights)
    with pytest.raises(InvalidInputError, match="do not fit images"):
        deletion_insertion(backend, x, contribution[:1])
    with pytest.raises(InvalidInputError, match="do not fit images"):
        deletion_insertion(backend, x, contribution[:, :, :-1])
    with pytest.raises(InvalidInputError, match=r"\(N, H, W\) or \(N, C, H, W\)"):
        deletion_insertion(backend, x, contribution[0])
    with pytest.raises(InvalidInputError, match="probability, logit"):
        deletion_insertion(backend, x, contribution, score="prob")
    with pytest.raises(InvalidInputError, match="NaN"):
        deletion_insertion(backend, x, np.full_like(contribution, np.nan))
    with pytest.raises(InvalidInputError, match="batch_size must be a positive int"):
        deletion_insertion(backend, x, contribution, batch_size=0)
    assert backend.batches == []  # nothing was scored before the arguments were checked


def test_bad_baselines():
    x = np.zeros((1, 3, 8, 8), dtype=np.float32)
    with pytest.raises(InvalidInputError, match="'blur'"):
        baseline_image(x, "gaussian")
    with pytest.raises(InvalidInputError, match=r"one value per channel \(3,\)"):
        baseline_image(x, [0.0, 1.0])
    with pytest.raises(InvalidInputError, match="sigma must be a positive number"):
        baseline_image(x, "blur", sigma=-1.0)
    with pytest.raises(InvalidInputError, match="only used with baseline='blur'"):
        baseline_image(x, 0.0, sigma=2.0)
    with pytest.raises(InvalidInputError, match="finite"):
        baseline_image(x, np.nan)


def test_bad_measure_arguments():
    with pytest.raises(InvalidInputError, match="at least 2 points"):
        auc(np.array([1.0]))
    with pytest.raises(InvalidInputError, match=r"boxes must have shape \(2, 4\)"):
        energy_in_box(np.zeros((2, 3, 3)), [[0, 0, 1, 1]])
    with pytest.raises(InvalidInputError, match="equal shape"):
        ssim(np.zeros((1, 4, 4)), np.zeros((1, 4, 5)))
    with pytest.raises(InvalidInputError, match="reduce channels"):
        ssim(np.zeros((1, 2, 4, 4)), np.zeros((1, 2, 4, 4)))
    with pytest.raises(InvalidInputError, match="data_range must be a positive number"):
        ssim(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)), data_range=0)
    with pytest.raises(InvalidInputError, match="equal shape"):
        rank_correlation_abs(np.zeros((2, 3)), np.zeros((3, 3)))
