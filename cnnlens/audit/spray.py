"""Spectral Relevance Analysis (SpRAy): cluster one class's explanation maps into strategies.

Lapuschkin et al., "Unmasking Clever Hans predictors and assessing what machines really
learn", Nat. Commun. 10, 1096 (2019). The algorithm, exactly:

1. Maps (n, S, S) (or (n, D)), each already scaled to [0, 1], are flattened to (n, D)
   float32. NaN or inf raises :class:`InvalidInputError` (a ``ValueError``).
2. Affinity: binary k-nearest-neighbour graph, Euclidean distance, k = ``neighbours``
   capped at n - 1, a map not its own neighbour, symmetrised A = max(A, A^T).
3. Normalised Laplacian L = I - D^-1/2 A D^-1/2. Its smallest m = min(max_clusters + 1, n)
   eigenvalues are 1 - the largest eigenvalues of D^-1/2 A D^-1/2: dense LAPACK
   (``scipy.linalg.eigh`` with an index subset) for a graph of at most ``DENSE_MAX`` maps,
   ARPACK (``scipy.sparse.linalg.eigsh``, seeded start vector) above. A graph with several
   connected components is solved per component and the spectra merged (L is block
   diagonal), so the repeated eigenvalue 0 is exact.
4. Number of clusters: a graph with c components, 1 < c <= max_clusters, gives c, the
   components themselves (the NJW embedding of the c zero eigenvalues is their indicator
   vectors). More than max_clusters components: KMeans(max_clusters) on the components'
   mean maps (weighted by size), each map taking its component's cluster. A connected
   graph: the eigengap, the k in 1..max_clusters maximising lambda_{k+1} - lambda_k
   (ascending, lambda_1 = 0; the first k on ties).
5. Embedding (Ng, Jordan & Weiss 2002): the k eigenvectors of D^-1/2 A D^-1/2 for those
   eigenvalues, rows normalised to unit length (the Shi-Malik D^-1/2 rescaling would
   scale each row by a positive number, so after normalising it is the same embedding),
   then ``KMeans(k, n_init=10, random_state=seed)``. k = 1: all in cluster 0.
6. Clusters renumbered by size, 0 the largest (ties: lower KMeans id first).

Degenerate: n = 0 gives no labels and 0 clusters; n < 3 or all maps identical give one
cluster (eigenvalues ``[0.]``). Deterministic for a seed. New maps are assigned by a vote
of their k nearest fitted maps (ties: the tied cluster whose member is nearest).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

import numpy as np

from ..core.errors import InvalidInputError

DENSE_MAX = 100  # largest graph (component) solved by dense LAPACK; ARPACK above, faster from ~100
CHUNK = 1024  # maps per kNN query in assign()/cluster(), so memory stays bounded

_NEEDS = "clustering maps needs scikit-learn: pip install 'cnnlens[audit]'"


def _deps():
    """(KMeans, NearestNeighbors, scipy.sparse, scipy.sparse.csgraph, scipy.linalg, eigsh)."""
    try:
        import scipy.linalg as linalg
        import scipy.sparse as sparse
        from scipy.sparse import csgraph
        from scipy.sparse.linalg import eigsh
        from sklearn.cluster import KMeans
        from sklearn.neighbors import NearestNeighbors
    except ImportError:
        raise ImportError(_NEEDS) from None
    return KMeans, NearestNeighbors, sparse, csgraph, linalg, eigsh


def _flat(maps: np.ndarray, copy: bool = False, index: Optional[np.ndarray] = None) -> np.ndarray:
    """(n, S, S) or (n, D) -> (n, D) float32, checked finite (``index``: the maps' numbers)."""
    maps = np.asarray(maps)
    if maps.ndim not in (2, 3):
        raise InvalidInputError(f"maps must be (n, S, S) or (n, D), got shape {maps.shape}")
    x = (np.array if copy else np.asarray)(maps, dtype=np.float32)
    x = x.reshape(len(x), int(np.prod(x.shape[1:])))
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        first = int(np.argmax(bad)) if index is None else int(index[np.argmax(bad)])
        raise InvalidInputError(
            f"{int(bad.sum())} map(s) contain NaN or inf (first: map {first});"
            " clean or drop them before clustering"
        )
    return x


@dataclass(eq=False)
class SprayModel:
    """A fitted clustering: assigns new maps to their nearest cluster."""

    n_clusters: int
    eigenvalues: np.ndarray  # smallest eigenvalues of the normalised Laplacian, ascending
    labels: np.ndarray  # (n,) int64, 0 = the largest cluster
    neighbours: int = 10  # the k of the graph (capped at n - 1), also the vote's k
    maps: Optional[np.ndarray] = field(default=None, repr=False)  # (n, D) float32 fitted maps

    def assign(self, maps: np.ndarray) -> np.ndarray:
        """(m, S, S) or (m, D) -> (m,) int64: the cluster of each, by a k-nearest-neighbour
        vote among the fitted maps (ties: the tied cluster with the nearest member)."""
        maps = np.asarray(maps)
        out = np.zeros(len(maps), dtype=np.int64)
        if len(maps) == 0:
            return out
        if self.maps is None or len(self.maps) == 0:
            raise InvalidInputError("this SprayModel was fitted on no maps; it cannot assign any")
        nn = None
        if self.n_clusters > 1:
            _, NearestNeighbors, *_ = _deps()
            k = max(1, min(self.neighbours, len(self.maps)))
            nn = NearestNeighbors(n_neighbors=k).fit(self.maps)
        for s in range(0, len(maps), CHUNK):
            x = _flat(maps[s : s + CHUNK], index=np.arange(s, s + CHUNK))
            if x.shape[1] != self.maps.shape[1]:
                raise InvalidInputError(
                    f"maps have {x.shape[1]} values each, the model was fitted on {self.maps.shape[1]}"
                )
            if nn is not None:
                out[s : s + len(x)] = self._vote(self.labels[nn.kneighbors(x, return_distance=False)])
        return out

    def _vote(self, lab: np.ndarray) -> np.ndarray:
        """(m, k) neighbour clusters, nearest first -> (m,) winners."""
        hit = lab[:, :, None] == np.arange(self.n_clusters)  # (m, k, K)
        votes = hit.sum(axis=1)
        first = np.where(hit.any(axis=1), hit.argmax(axis=1), lab.shape[1])  # nearest member
        score = np.where(votes == votes.max(axis=1, keepdims=True), first, lab.shape[1] + 1)
        return score.argmin(axis=1).astype(np.int64)


def _eigenpairs(A, m: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Smallest m eigenvalues (ascending) of L = I - D^-1/2 A D^-1/2, and the eigenvectors."""
    _, _, sparse, _, linalg, eigsh = _deps()
    from scipy.sparse.linalg import ArpackNoConvergence

    n = A.shape[0]
    s = 1.0 / np.sqrt(np.asarray(A.sum(axis=1), dtype=np.float64).ravel())
    M = (sparse.diags(s) @ A @ sparse.diags(s)).tocsr()
    if n <= DENSE_MAX or m >= n - 1:
        mu, V = linalg.eigh(M.toarray(), subset_by_index=[n - m, n - 1])
    else:
        try:
            mu, V = eigsh(M, k=m, which="LA", v0=np.random.default_rng(seed).uniform(0.5, 1.5, n))
        except ArpackNoConvergence:  # never seen on kNN graphs; dense is slow but sure
            mu, V = linalg.eigh(M.toarray(), subset_by_index=[n - m, n - 1])
    order = np.argsort(-mu, kind="stable")
    return np.clip(1.0 - mu[order], 0.0, 2.0), V[:, order]


def _spectrum(A, m: int, seed: int) -> Tuple[np.ndarray, Optional[np.ndarray], np.ndarray, int]:
    """(smallest m eigenvalues, their eigenvectors (n, m) or None when the graph has several
    components, the component of each node, the number of components)."""
    _, _, _, csgraph, _, _ = _deps()
    c, comp = csgraph.connected_components(A, directed=False)
    if c == 1:
        lam, V = _eigenpairs(A, m, seed)
        return lam, V, comp, 1
    lams = []  # L is block diagonal: its spectrum is the union of the components' spectra
    for j in range(c):
        idx = np.flatnonzero(comp == j)
        lams.append(_eigenpairs(A[idx][:, idx], min(m, len(idx)), seed)[0])
    return np.sort(np.concatenate(lams), kind="stable")[:m], None, comp, c


def _eigengap(lam: np.ndarray, max_clusters: int) -> int:
    """The k in 1..max_clusters maximising lam[k] - lam[k-1] (1-based: lambda_{k+1} - lambda_k)."""
    top = min(max_clusters, len(lam) - 1)
    if top < 1:
        return 1
    return int(np.argmax(np.diff(lam[: top + 1]))) + 1


def _by_size(raw: np.ndarray) -> np.ndarray:
    """Renumber cluster ids so 0 is the largest (ties: lower id first)."""
    ids, counts = np.unique(raw, return_counts=True)
    order = ids[np.lexsort((ids, -counts))]
    new = np.empty(int(ids.max()) + 1, dtype=np.int64)
    new[order] = np.arange(len(order))
    return new[raw]


def fit(maps: np.ndarray, max_clusters: int = 8, neighbours: int = 10, seed: int = 0) -> SprayModel:
    """Cluster maps (n, S, S) or (n, D) by SpRAy (see the module docstring) -> SprayModel."""
    if max_clusters < 1 or neighbours < 1:
        raise InvalidInputError(
            f"max_clusters and neighbours must be >= 1, got {max_clusters} and {neighbours}"
        )
    x = _flat(maps, copy=True)
    n = len(x)
    k = max(0, min(neighbours, n - 1))
    if n == 0:
        return SprayModel(0, np.zeros(0), np.zeros(0, dtype=np.int64), k, x)
    if n < 3 or bool((x == x[0]).all()):
        return SprayModel(1, np.zeros(1), np.zeros(n, dtype=np.int64), k, x)
    KMeans, NearestNeighbors, _, _, _, _ = _deps()
    A = NearestNeighbors(n_neighbors=k).fit(x).kneighbors_graph(mode="connectivity")
    A = A.maximum(A.T).tocsr().astype(np.float64)
    lam, V, comp, c = _spectrum(A, min(max_clusters + 1, n), seed)
    if c > max_clusters:  # more components than clusters allowed: merge similar components
        sizes = np.bincount(comp, minlength=c)
        means = np.zeros((c, x.shape[1]))
        np.add.at(means, comp, x)
        means /= sizes[:, None]
        km = KMeans(max_clusters, n_init=10, random_state=seed)
        raw = km.fit_predict(means, sample_weight=sizes)[comp]
    elif c > 1:  # c zero eigenvalues; the NJW embedding is the components' indicators
        raw = comp
    elif _eigengap(lam, max_clusters) == 1:
        raw = np.zeros(n, dtype=np.int64)
    else:  # Ng-Jordan-Weiss: top eigenvectors of D^-1/2 A D^-1/2, rows to unit length
        E = V[:, : _eigengap(lam, max_clusters)]
        E = E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-12)
        raw = KMeans(E.shape[1], n_init=10, random_state=seed).fit_predict(E)
    labels = _by_size(raw)
    return SprayModel(int(labels.max()) + 1, lam, labels, k, x)


def sample_indices(n: int, max_maps: int, seed: int) -> np.ndarray:
    """Sorted int64 indices of the maps fit() is given: all when n <= max_maps, else a
    seeded random sample of max_maps without repeats."""
    if n < 0 or max_maps < 1:
        raise InvalidInputError(f"need n >= 0 and max_maps >= 1, got n={n}, max_maps={max_maps}")
    if n <= max_maps:
        return np.arange(n, dtype=np.int64)
    pick = np.random.default_rng(seed).choice(n, size=max_maps, replace=False)
    return np.sort(pick).astype(np.int64)


def cluster(
    maps: np.ndarray, max_maps: int = 5000, max_clusters: int = 8, neighbours: int = 10, seed: int = 0
) -> Tuple[np.ndarray, SprayModel]:
    """All in one: fit on at most max_maps maps (a seeded random sample when there are more),
    the rest assigned; returns (labels for every map (n,) int64, model)."""
    maps = np.asarray(maps)  # no copy: of a memmap only the sample and one chunk are read at once
    if maps.ndim not in (2, 3):
        raise InvalidInputError(f"maps must be (n, S, S) or (n, D), got shape {maps.shape}")
    n = len(maps)
    idx = sample_indices(n, max_maps, seed)
    sample = maps if len(idx) == n else maps[idx]
    model = fit(_flat(sample, index=idx), max_clusters, neighbours, seed)  # NaN: number in maps
    labels = np.zeros(n, dtype=np.int64)
    labels[idx] = model.labels
    rest = np.setdiff1d(np.arange(n), idx)
    for s in range(0, len(rest), CHUNK):
        part = rest[s : s + CHUNK]
        labels[part] = model.assign(_flat(maps[part], index=part))
    return labels, model
