"""SpRAy clustering (cnnlens.audit.spray): planted strategies are found exactly, the
spectrum matches a dense reference, the eigengap rule on graphs whose spectrum is known,
sampling, numbering, votes, determinism and bad input."""

from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("scipy")
from scipy import sparse  # noqa: E402
from sklearn.metrics import adjusted_rand_score  # noqa: E402

from cnnlens.audit import spray  # noqa: E402

S = 32
TOP_LEFT, CENTRE, BOTTOM_RIGHT = (0.2, 0.2), (0.5, 0.5), (0.8, 0.75)


def blobs(centres, sizes, seed, jitter=0.03, noise=0.7):
    """Maps (n, S, S) in [0, 1]: per strategy a Gaussian blob at its centre (position
    jittered, width 0.08..0.12 of the side) plus uniform noise; shuffled. -> (maps, truth)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:S, 0:S] / S
    maps, truth = [], []
    for c, ((cy, cx), n) in enumerate(zip(centres, sizes)):
        for _ in range(n):
            y, x = cy + rng.uniform(-jitter, jitter), cx + rng.uniform(-jitter, jitter)
            w = rng.uniform(0.08, 0.12)
            m = np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * w * w)) + noise * rng.random((S, S))
            maps.append((m - m.min()) / (m.max() - m.min()))
            truth.append(c)
    order = rng.permutation(len(maps))
    return np.stack(maps).astype(np.float32)[order], np.array(truth)[order]


def laplacian_eigenvalues(A: np.ndarray) -> np.ndarray:
    """Reference: all eigenvalues of I - D^-1/2 A D^-1/2, dense numpy, ascending."""
    s = 1 / np.sqrt(A.sum(axis=1))
    return np.linalg.eigvalsh(np.eye(len(A)) - s[:, None] * A * s[None, :])


def cliques(sizes, ring=False) -> np.ndarray:
    """Adjacency of disjoint cliques; ring=True joins clique i to clique i+1 by one edge."""
    A = np.zeros((sum(sizes), sum(sizes)))
    starts = np.cumsum([0] + list(sizes))
    for a, b in zip(starts[:-1], starts[1:]):
        A[a:b, a:b] = 1 - np.eye(b - a)
    if ring:
        for i in range(len(sizes)):
            u, v = starts[i], starts[(i + 1) % len(sizes)] + 1
            A[u, v] = A[v, u] = 1
    return A


def test_two_planted_strategies_found_exactly():
    maps, truth = blobs([TOP_LEFT, CENTRE], [60, 60], seed=0)
    labels, model = spray.cluster(maps)
    assert model.n_clusters == 2 and labels.dtype == np.int64
    assert adjusted_rand_score(truth, labels) == 1.0
    np.testing.assert_array_equal(labels, model.labels)  # 120 <= max_maps: all fitted
    assert model.eigenvalues.shape == (9,) and np.all(np.diff(model.eigenvalues) >= 0)
    np.testing.assert_allclose(model.eigenvalues[:2], 0, atol=1e-9)  # two components
    assert model.eigenvalues[2] > 0.1


def test_three_strategies_and_one_strategy():
    maps, truth = blobs([TOP_LEFT, CENTRE, BOTTOM_RIGHT], [40, 50, 30], seed=1)
    labels, model = spray.cluster(maps)
    assert model.n_clusters == 3 and adjusted_rand_score(truth, labels) == 1.0
    maps, _ = blobs([CENTRE], [60], seed=2)
    labels, model = spray.cluster(maps)
    assert model.n_clusters == 1 and np.all(labels == 0)
    assert model.eigenvalues[0] < 1e-9 and np.argmax(np.diff(model.eigenvalues)) == 0


def test_connected_graph_goes_through_embedding_and_kmeans():
    """Four maps halfway between the strategies join the kNN graph into one component
    (lambda_2 > 0); the eigengap still says 2 and NJW + KMeans recover the strategies."""
    maps, truth = blobs([TOP_LEFT, CENTRE], [60, 60], seed=3)
    half = (blobs([TOP_LEFT], [4], seed=103)[0] + blobs([CENTRE], [4], seed=203)[0]) / 2
    labels, model = spray.cluster(np.concatenate([maps, half]))  # 124 maps > DENSE_MAX: eigsh
    assert model.eigenvalues[0] < 1e-9 < model.eigenvalues[1]
    assert model.n_clusters == 2 and adjusted_rand_score(truth, labels[:120]) == 1.0


@pytest.mark.parametrize("dense_max", [0, 10_000])  # ARPACK and dense LAPACK
def test_spectrum_matches_dense_reference(monkeypatch, dense_max):
    monkeypatch.setattr(spray, "DENSE_MAX", dense_max)
    A = cliques([30, 25, 35], ring=True)  # connected; three dense blocks
    lam, V, comp, c = spray._spectrum(sparse.csr_matrix(A), 9, seed=0)
    assert c == 1 and V.shape == (90, 9)
    np.testing.assert_allclose(lam, laplacian_eigenvalues(A)[:9], atol=1e-10)
    assert spray._eigengap(lam, 8) == 3
    L = np.eye(90) - A / np.sqrt(np.outer(A.sum(1), A.sum(1)))
    np.testing.assert_allclose(L @ V, V * lam, atol=1e-8)  # they are eigenvectors of L


def test_disconnected_cliques_eigenvalues_and_count():
    A = cliques([5, 6, 7])  # K_s: eigenvalues 0 and s/(s-1) (s-1 times)
    lam, V, comp, c = spray._spectrum(sparse.csr_matrix(A), 9, seed=0)
    assert c == 3 and V is None
    np.testing.assert_allclose(lam, laplacian_eigenvalues(A)[:9], atol=1e-10)
    np.testing.assert_allclose(lam, [0, 0, 0] + [7 / 6] * 6, atol=1e-10)
    assert spray._eigengap(lam, 8) == 3
    assert spray._eigengap(np.array([0, 0.1, 0.15, 0.9, 1.0]), 8) == 3
    assert spray._eigengap(np.array([0, 0.1, 0.15, 0.9, 1.0]), 2) == 1  # capped at max_clusters


def test_fit_on_tight_groups_gives_cliques():
    """Groups of 11 near-identical maps with k=10: the graph is c copies of K_11, whose
    normalised Laplacian has eigenvalues 0 (c times) then 11/10."""
    rng = np.random.default_rng(4)
    centres = rng.random((4, 50))
    maps = np.repeat(centres, 11, axis=0) + 1e-3 * rng.random((44, 50))
    model = spray.fit(maps.astype(np.float32), neighbours=10)
    np.testing.assert_allclose(model.eigenvalues, [0] * 4 + [1.1] * 5, atol=1e-9)
    assert model.n_clusters == 4
    np.testing.assert_array_equal(np.bincount(model.labels), [11] * 4)
    assert adjusted_rand_score(np.repeat(np.arange(4), 11), model.labels) == 1.0
    many = spray.fit(maps.astype(np.float32), max_clusters=2)  # 4 components > 2: merged whole
    assert many.n_clusters == 2 and np.all(many.eigenvalues == 0)
    assert all(len(set(many.labels[i * 11 : i * 11 + 11])) == 1 for i in range(4))


def test_sample_then_assign_recovers_all():
    maps, truth = blobs([TOP_LEFT, CENTRE], [150, 150], seed=5)
    labels, model = spray.cluster(maps, max_maps=100)
    idx = spray.sample_indices(300, 100, seed=0)
    assert len(model.labels) == 100 and len(model.maps) == 100
    np.testing.assert_array_equal(labels[idx], model.labels)
    np.testing.assert_array_equal(model.maps, maps[idx].reshape(100, -1))
    assert adjusted_rand_score(truth, labels) == 1.0
    np.testing.assert_array_equal(model.assign(maps), labels)  # the fitted maps vote for themselves


def test_sample_indices():
    a = spray.sample_indices(1000, 50, seed=7)
    np.testing.assert_array_equal(a, spray.sample_indices(1000, 50, seed=7))
    assert a.dtype == np.int64 and len(a) == 50 and len(np.unique(a)) == 50
    assert np.all(np.diff(a) > 0) and a[0] >= 0 and a[-1] < 1000
    assert not np.array_equal(a, spray.sample_indices(1000, 50, seed=8))
    np.testing.assert_array_equal(spray.sample_indices(30, 50, seed=7), np.arange(30))
    assert len(spray.sample_indices(0, 5, seed=0)) == 0
    with pytest.raises(ValueError):
        spray.sample_indices(10, 0, seed=0)


def test_numbering_largest_first():
    maps, truth = blobs([TOP_LEFT, CENTRE], [30, 70], seed=6)
    labels, model = spray.cluster(maps)
    np.testing.assert_array_equal(np.bincount(labels), [70, 30])
    np.testing.assert_array_equal(labels, (truth == 0).astype(np.int64))  # the 70 are cluster 0
    # ties keep the lower original id first: sizes {0: 2, 1: 1, 2: 2} -> 0->0, 2->1, 1->2
    np.testing.assert_array_equal(spray._by_size(np.array([2, 2, 0, 0, 1])), [1, 1, 0, 0, 2])


def test_assign_vote_and_ties():
    fitted = np.array([[0.0], [1.0], [1.1], [3.0], [3.2]], dtype=np.float32)
    model = spray.SprayModel(3, np.zeros(4), np.array([2, 0, 0, 1, 1]), neighbours=2, maps=fitted)
    # k=2: 0.4 -> {2 (0.4), 0 (0.6)} tie -> nearest, 2; 0.9 -> {0, 0}; 3.1 -> {1, 1}
    np.testing.assert_array_equal(model.assign(np.array([[0.4], [0.9], [3.1]])), [2, 0, 1])
    model.neighbours = 5  # every point votes: 0 and 1 tie with 2 votes; 0's member is nearer
    np.testing.assert_array_equal(model.assign(np.array([[1.9], [2.2], [-5.0]])), [0, 1, 0])
    model.neighbours = 3  # -5: {2, 0, 0} -> 0 by majority although 2 is nearest
    np.testing.assert_array_equal(model.assign(np.array([[-5.0]])), [0])
    assert model.assign(np.zeros((0, 1))).shape == (0,)
    with pytest.raises(ValueError, match="fitted on 1"):
        model.assign(np.zeros((2, 2)))


def test_deterministic_for_a_seed():
    maps, _ = blobs([TOP_LEFT, CENTRE, BOTTOM_RIGHT], [40, 40, 40], seed=7)
    maps[:5] = (maps[:5] + maps[40:45]) / 2  # ambiguous maps, so KMeans has something to decide
    a, ma = spray.cluster(maps, max_maps=90, seed=3)
    b, mb = spray.cluster(maps.copy(), max_maps=90, seed=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ma.eigenvalues, mb.eigenvalues)


def test_degenerate_inputs():
    empty = spray.fit(np.zeros((0, 8, 8), np.float32))
    assert empty.n_clusters == 0 and empty.labels.shape == (0,) and empty.eigenvalues.shape == (0,)
    labels, model = spray.cluster(np.zeros((0, 8, 8), np.float32))
    assert labels.shape == (0,) and model.n_clusters == 0
    for n in (1, 2):
        m = spray.fit(np.random.default_rng(0).random((n, 8, 8)))
        assert m.n_clusters == 1 and np.array_equal(m.labels, np.zeros(n))
    same = np.ones((20, 8, 8), np.float32) * 0.5
    labels, model = spray.cluster(same)
    assert model.n_clusters == 1 and np.all(labels == 0)
    assert np.all(model.assign(np.random.default_rng(0).random((3, 8, 8))) == 0)


def test_nan_and_inf_raise_value_error():
    maps, _ = blobs([TOP_LEFT, CENTRE], [30, 30], seed=8)
    bad = maps.copy()
    bad[7, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or inf .first: map 7"):
        spray.cluster(bad)
    bad = maps.copy()
    bad[57, 0, 0] = np.inf  # not in the sample: found when the rest are assigned
    idx = spray.sample_indices(60, 20, seed=0)
    assert 57 not in idx
    with pytest.raises(ValueError, match="map 57"):
        spray.cluster(bad, max_maps=20)
    with pytest.raises(ValueError, match="shape"):
        spray.fit(np.zeros(5))


def test_missing_sklearn_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.cluster", None)
    with pytest.raises(ImportError, match=r"pip install 'cnnlens\[audit\]'"):
        spray.fit(np.random.default_rng(0).random((10, 4, 4)))
