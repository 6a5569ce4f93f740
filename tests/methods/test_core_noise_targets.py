"""SmoothGrad noise and statistics; targets and one-hot weights."""

import numpy as np
import pytest

from cnnlens.core.errors import TargetError
from cnnlens.core.noise import RunningStats, image_generators, noise_sigma
from cnnlens.core.targets import one_hot, pick, resolve_targets


def test_sigma_is_fraction_of_each_images_range():
    x = np.zeros((2, 1, 2, 2), dtype=np.float32)
    x[0, 0, 0, 0], x[0, 0, 1, 1] = -1, 3
    x[1, 0, 0, 1] = 0.5
    np.testing.assert_allclose(noise_sigma(x, 0.25), [1.0, 0.125])


def test_generators_are_seeded_and_independent():
    a = [g.standard_normal(4) for g in image_generators(7, 3)]
    b = [g.standard_normal(4) for g in image_generators(7, 3)]
    c = [g.standard_normal(4) for g in image_generators(8, 3)]
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert not np.allclose(a[0], a[1])


def test_draws_in_chunks_concatenate_to_one_stream():
    whole = image_generators(3, 1)[0].standard_normal((5, 2), dtype=np.float32)
    g = image_generators(3, 1)[0]
    parts = np.concatenate([g.standard_normal((2, 2), dtype=np.float32), g.standard_normal((3, 2), dtype=np.float32)])
    np.testing.assert_array_equal(whole, parts)


@pytest.mark.parametrize("chunks", [[6], [1, 5], [2, 2, 2], [1] * 6])
def test_running_stats_match_direct_statistics(chunks):
    values = np.random.default_rng(0).standard_normal((6, 3, 4)) * 10 + 50
    stats = RunningStats((2, 3, 4))
    start = 0
    for k in chunks:
        stats.update(1, values[start:start + k])
        start += k
    np.testing.assert_allclose(stats.mean[1], values.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.mean_sq[1], (values ** 2).mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.variance()[1], values.var(0), rtol=1e-9)
    assert (stats.mean[0] == 0).all() and stats.count.tolist() == [0, 6]


def test_identical_samples_give_their_value_exactly():
    v = np.random.default_rng(1).standard_normal((3, 5)).astype(np.float32)
    stats = RunningStats((1, 3, 5))
    stats.update(0, np.stack([v] * 3))
    stats.update(0, np.stack([v] * 4))
    np.testing.assert_array_equal(stats.mean[0].astype(np.float32), v)
    np.testing.assert_array_equal(stats.variance()[0], 0)


LOGITS = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]], dtype=np.float32)


def test_targets():
    assert resolve_targets(None, LOGITS).tolist() == [1, 0]
    assert resolve_targets(2, LOGITS).tolist() == [2, 2]
    assert resolve_targets(np.int64(1), LOGITS).tolist() == [1, 1]
    assert resolve_targets([0, 2], LOGITS).tolist() == [0, 2]
    assert resolve_targets(np.array([2, 1]), LOGITS).tolist() == [2, 1]
    np.testing.assert_array_equal(one_hot(np.array([1, 0]), 3), [[0, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(pick(LOGITS, np.array([2, 0])), [-1.0, 3.0])


@pytest.mark.parametrize("bad,message", [
    (3, "out of range"), (-1, "out of range"), ([0], "2 images"), ([0, 1, 2], "2 images"),
    ([0, 5], "out of range"), (1.5, "int"), ("1", "int"), (True, "int"),
])
def test_bad_targets(bad, message):
    with pytest.raises(TargetError, match=message):
        resolve_targets(bad, LOGITS)
