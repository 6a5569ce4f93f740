"""RISE (Petsiuk et al. 2018): ``sum_m y_c(x * M_m) M_m / (masks * p)``, options masks, cell, p, seed.

On models whose answer is known: a score that is the mean of the pixels inside a fixed square (the
map is highest inside the square) and a linear model ``y = sum(W * x)`` (the map follows W's
pattern). The same seed gives the same map; the map depends neither on ``batch_size`` nor on the
other images of the batch; a hand re-implementation with ``cnnlens.core.rise.RiseMasks`` gives the
same numbers; bad options raise InvalidInputError.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import cnnlens
from cnnlens.core.rise import RiseMasks

SIZE = 32
SQUARE = (slice(6, 18), slice(14, 26))  # rows, cols


class SquareMean(nn.Module):
    """Output 0: the mean of the pixels (all channels) inside SQUARE; output 1: minus the mean outside."""

    def __init__(self):
        super().__init__()
        inside = torch.zeros(1, 1, SIZE, SIZE)
        inside[..., SQUARE[0], SQUARE[1]] = 1.0
        self.register_buffer("inside", inside)

    def forward(self, x):
        c = x.shape[1]
        a = (x * self.inside).sum(dim=(1, 2, 3)) / (self.inside.sum() * c)
        b = -(x * (1 - self.inside)).sum(dim=(1, 2, 3)) / ((1 - self.inside).sum() * c)
        return torch.stack([a, b], dim=1)


class Linear(nn.Module):
    """y_k = sum(W_k * x): output 0 uses a smooth pattern, output 1 its negative."""

    def __init__(self, pattern: np.ndarray):
        super().__init__()
        w = torch.from_numpy(np.stack([pattern, -pattern]).astype(np.float32))  # (2, C, H, W)
        self.register_buffer("w", w)

    def forward(self, x):
        return torch.einsum("nchw,kchw->nk", x, self.w)


def smooth_pattern(channels=3, seed=0):
    """A low-frequency pattern over the image (what RISE's smooth masks can resolve)."""
    rng = np.random.default_rng(seed)
    i, j = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
    base = (np.sin(2 * np.pi * i / SIZE + rng.uniform(0, 6)) + np.cos(2 * np.pi * j / SIZE + rng.uniform(0, 6))
            + 0.7 * np.exp(-((i - 10) ** 2 + (j - 22) ** 2) / 40.0))
    return np.broadcast_to(base, (channels, SIZE, SIZE)).astype(np.float32) * np.array([1.0, 0.5, 0.25])[:, None, None]


def ones(n=1, channels=3):
    return np.ones((n, channels, SIZE, SIZE), dtype=np.float32)


def images(n=3, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, SIZE, SIZE)).astype(np.float32)


def corr(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


# ---------------------------------------------------------------- the answer is known


def test_square_model_map_is_highest_inside_the_square():
    exp = cnnlens.explain(SquareMean(), ones(), "rise", target=0, masks=2000, seed=1)
    assert exp.maps.shape == (1, SIZE, SIZE) and exp.maps.dtype == np.float32
    m = exp.maps[0]
    inside = np.zeros((SIZE, SIZE), bool)
    inside[SQUARE] = True
    assert m[inside].mean() > m[~inside].mean() + 3 * m[~inside].std()
    peak = np.unravel_index(np.argmax(m), m.shape)
    assert inside[peak], peak
    # the masks are smooth over a grid cell (~5 px), so the map is the square blurred by that much:
    # every pixel of the square's core beats every pixel 6 px or more away from it
    core = np.zeros((SIZE, SIZE), bool)
    core[SQUARE[0].start + 3:SQUARE[0].stop - 3, SQUARE[1].start + 3:SQUARE[1].stop - 3] = True
    far = np.ones((SIZE, SIZE), bool)
    far[SQUARE[0].start - 6:SQUARE[0].stop + 6, SQUARE[1].start - 6:SQUARE[1].stop + 6] = False
    assert m[core].min() > m[far].max()
    assert corr(m, inside) > 0.8
    # the other output (minus the mean outside the square): keeping outside pixels lowers it, so the
    # map is lower (more negative) outside than on the square
    other = cnnlens.explain(SquareMean(), ones(), "rise", target=1, masks=2000, seed=1).maps[0]
    assert other.max() < 0 and other[far].mean() < other[core].mean()


def test_linear_model_map_follows_the_weights():
    pattern = smooth_pattern()
    model = Linear(pattern)
    exp = cnnlens.explain(model, ones(), "rise", target=0, masks=2000, seed=2)
    # y(x * M) = sum_q W_q M_q for x = 1, so the map is sum over channels of W, blurred by the masks
    assert corr(exp.maps[0], pattern.sum(axis=0)) > 0.9
    negative = cnnlens.explain(model, ones(), "rise", target=1, masks=2000, seed=2)
    np.testing.assert_allclose(negative.maps, -exp.maps, rtol=1e-5, atol=1e-6 * np.abs(exp.maps).max())


# ---------------------------------------------------------------- against a re-implementation


def hand_rise(model, x, target, masks, cell, p, seed):
    generator = RiseMasks(x.shape[2:], masks, cell, p, seed)
    every = generator.batch(np.arange(masks))  # (masks, H, W)
    maps = np.zeros((len(x), SIZE, SIZE), dtype=np.float64)
    with torch.no_grad():
        for n in range(len(x)):
            scores = model(torch.from_numpy(x[n][None] * every[:, None])).numpy()[:, target[n]].astype(np.float64)
            maps[n] = np.tensordot(scores, every, axes=1)
    return (maps / (masks * p)).astype(np.float32)


@pytest.mark.parametrize("masks,cell,p,seed", [(64, 7, 0.5, 0), (100, 4, 0.3, 9), (37, 9, 0.8, 123)])
def test_equals_a_hand_reimplementation(masks, cell, p, seed):
    model = Linear(smooth_pattern())
    x = images(2, seed=seed)
    exp = cnnlens.explain(model, x, "rise", masks=masks, cell=cell, p=p, seed=seed)
    want = hand_rise(model, x, exp.target, masks, cell, p, seed)
    np.testing.assert_array_equal(exp.maps, want)
    assert exp.options == {"masks": masks, "cell": cell, "p": p, "seed": seed, "batch_size": None}


def test_masks_depend_on_the_seed_only():
    a = RiseMasks((SIZE, SIZE), 20, 7, 0.5, 4)
    b = RiseMasks((SIZE, SIZE), 20, 7, 0.5, 4)
    np.testing.assert_array_equal(a.batch(np.arange(20)), b.batch(np.arange(20)))
    np.testing.assert_array_equal(a.batch(np.array([3, 17])), a.batch(np.arange(20))[[3, 17]])
    masks = a.batch(np.arange(20))
    assert masks.shape == (20, SIZE, SIZE) and masks.dtype == np.float32
    assert masks.min() >= 0 and masks.max() <= 1
    many = RiseMasks((SIZE, SIZE), 400, 7, 0.3, 3).batch(np.arange(400))
    assert abs(many.mean() - 0.3) < 0.03  # a mask keeps a fraction p of the image on average
    c = RiseMasks((SIZE, SIZE), 20, 7, 0.5, 5)
    assert not np.array_equal(masks, c.batch(np.arange(20)))


# ---------------------------------------------------------------- determinism and independence


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()


def test_same_seed_same_map_other_seed_other_map(model):
    x = images(2)
    a = cnnlens.explain(model, x, "rise", masks=64, seed=7).maps
    b = cnnlens.explain(model, x, "rise", masks=64, seed=7).maps
    np.testing.assert_array_equal(a, b)
    c = cnnlens.explain(model, x, "rise", masks=64, seed=8).maps
    assert not np.allclose(a, c)
    default = cnnlens.explain(model, x, "rise", masks=64).maps
    np.testing.assert_array_equal(default, cnnlens.explain(model, x, "rise", masks=64, seed=0).maps)


def test_independent_of_batch_size_and_of_the_other_images():
    model = Linear(smooth_pattern())  # its forward pass is exactly the same for an image alone or in a batch
    x = images(3, seed=11)
    ref = cnnlens.explain(model, x, "rise", masks=96, seed=5, target=0).maps
    for batch_size in (1, 5, 64, 1000):
        got = cnnlens.explain(model, x, "rise", masks=96, seed=5, target=0, batch_size=batch_size).maps
        np.testing.assert_array_equal(got, ref, err_msg=f"batch_size={batch_size}")
    alone = cnnlens.explain(model, x[:1], "rise", masks=96, seed=5, target=0).maps
    np.testing.assert_array_equal(alone[0], ref[0])
    others = np.concatenate([x[:1], images(2, seed=99)])
    np.testing.assert_array_equal(cnnlens.explain(model, others, "rise", masks=96, seed=5, target=0).maps[0], ref[0])


def test_independent_of_batching_on_a_cnn(model):
    """On a CNN whose PyTorch forward moves by an ulp with the batch size, the maps agree to rounding."""
    x = images(3, seed=12)
    ref = cnnlens.explain(model, x, "rise", masks=64, seed=5).maps
    for batch_size in (1, 7):
        got = cnnlens.explain(model, x, "rise", masks=64, seed=5, batch_size=batch_size).maps
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
    alone = cnnlens.explain(model, x[1:2], "rise", masks=64, seed=5).maps
    np.testing.assert_allclose(alone[0], ref[1], rtol=1e-5, atol=1e-6 * np.abs(ref).max())


# ---------------------------------------------------------------- bad options


@pytest.mark.parametrize("options", [
    dict(masks=0), dict(masks=-5), dict(masks=2.5), dict(masks="100"), dict(masks=True),
    dict(p=0), dict(p=0.0), dict(p=1.5), dict(p=-0.2), dict(p=float("nan")), dict(p="half"),
    dict(cell=0), dict(cell=-1), dict(cell=3.0), dict(cell=SIZE + 1),
    dict(seed=-1), dict(seed=1.5), dict(seed="x"),
    dict(batch_size=0),
])
def test_bad_options_raise_invalid_input(model, options):
    with pytest.raises(cnnlens.InvalidInputError):
        cnnlens.explain(model, images(1), "rise", **{"masks": 8, **options})


def test_edge_options_are_accepted(model):
    x = images(1)
    for options in (dict(p=1.0), dict(cell=1), dict(cell=SIZE), dict(masks=1), dict(seed=None)):
        exp = cnnlens.explain(model, x, "rise", **{"masks": 8, **options})
        assert exp.maps.shape == (1, SIZE, SIZE) and np.isfinite(exp.maps).all()
