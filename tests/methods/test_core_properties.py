"""Property-based tests (hypothesis) of the NumPy core: resize, occlusion grid, display scaling, Score-CAM masks.

These complement the example tests in test_core_resize.py / test_core_occlusion.py /
test_core_scaling.py with randomly drawn shapes, batch layouts, magnitudes and degenerate maps.
"""

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from cnnlens.core import scaling
from cnnlens.core.cam import normalize_masks
from cnnlens.core.occlusion import OcclusionGrid, as_baseline
from cnnlens.core.resize import resize_bilinear

torch = pytest.importorskip("torch")
F = torch.nn.functional

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FLOAT32_MAX = float(np.finfo(np.float32).max)
finite_f32 = st.floats(-FLOAT32_MAX, FLOAT32_MAX, width=32, allow_nan=False, allow_infinity=False)


# --------------------------------------------------------------------------- resize_bilinear

def _torch_resize(x: np.ndarray, size) -> np.ndarray:
    h, w = x.shape[-2:]
    flat = torch.from_numpy(np.ascontiguousarray(x).reshape(-1, 1, h, w))
    out = F.interpolate(flat, size=tuple(size), mode="bilinear", align_corners=False).numpy()
    return out.reshape(x.shape[:-2] + tuple(size))


@PROPERTY
@given(lead=st.lists(st.integers(0, 3), min_size=0, max_size=2),
       h=st.integers(1, 40), w=st.integers(1, 40), H=st.integers(1, 80), W=st.integers(1, 80),
       seed=st.integers(0, 2 ** 32 - 1), scale=st.sampled_from([1e-3, 1.0, 37.5, 1e3, 1e6]),
       positive=st.booleans())
def test_resize_matches_torch_interpolate(lead, h, w, H, W, seed, scale, positive):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(tuple(lead) + (h, w)) * scale).astype(np.float32)
    if positive:
        x = np.abs(x)
    got = resize_bilinear(x, (H, W))
    assert got.dtype == np.float32
    assert got.shape == tuple(lead) + (H, W)
    if x.size == 0:
        return
    ref = _torch_resize(x, (H, W))
    bound = 1e-5 * max(1.0, float(np.abs(x).max()))
    assert float(np.abs(got.astype(np.float64) - ref).max()) <= bound


@PROPERTY
@given(lead=st.lists(st.integers(1, 3), min_size=0, max_size=2),
       h=st.integers(1, 40), w=st.integers(1, 40), H=st.integers(1, 80), W=st.integers(1, 80),
       value=finite_f32)
def test_resize_constant_map_stays_constant(lead, h, w, H, W, value):
    x = np.full(tuple(lead) + (h, w), value, dtype=np.float32)
    got = resize_bilinear(x, (H, W))
    assert got.dtype == np.float32 and got.shape == tuple(lead) + (H, W)
    assert np.isfinite(got).all()
    c = np.float32(value)
    # the two weights of each row sum to 1 up to float32 rounding: a few ulps per axis
    ulp = float(np.spacing(np.nextafter(np.abs(c), np.float32(0))))  # no overflow at float32 max
    tol = 4 * ulp
    assert float(np.abs(got.astype(np.float64) - float(c)).max()) <= tol


@PROPERTY
@given(lead=st.lists(st.integers(1, 3), min_size=0, max_size=2),
       h=st.integers(1, 40), w=st.integers(1, 40), seed=st.integers(0, 2 ** 32 - 1),
       dtype=st.sampled_from([np.float32, np.float64, np.int32]), transposed=st.booleans())
def test_resize_identity_is_an_equal_copy(lead, h, w, seed, dtype, transposed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(tuple(lead) + (h, w)) * 100).astype(dtype)
    if transposed:  # a non-contiguous view, same (h, w) size after swapping back below
        x = np.swapaxes(np.swapaxes(x, -1, -2).copy(), -1, -2)
    before = x.copy()
    got = resize_bilinear(x, (h, w))
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_array_equal(got, x.astype(np.float32))
    assert not np.shares_memory(got, x)
    got[...] = 12345  # writing into the result never touches the input
    np.testing.assert_array_equal(x, before)


# --------------------------------------------------------------------------- occlusion grid

@st.composite
def grid_specs(draw):
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    wh, ww = draw(st.integers(1, h)), draw(st.integers(1, w))
    sh, sw = draw(st.integers(1, wh)), draw(st.integers(1, ww))
    window = wh if wh == ww and draw(st.booleans()) else (wh, ww)
    stride = sh if sh == sw and draw(st.booleans()) else (sh, sw)
    return (h, w), (wh, ww), (sh, sw), window, stride


def _coverage(grid: OcclusionGrid) -> np.ndarray:
    counts = np.zeros(grid.size, dtype=np.int64)
    for p in range(len(grid)):
        rows, cols = grid.box(p)
        counts[rows, cols] += 1
    return counts


@PROPERTY
@given(spec=grid_specs())
def test_occlusion_grid_structure_and_coverage(spec):
    (h, w), (wh, ww), (sh, sw), window, stride = spec
    grid = OcclusionGrid((h, w), window, stride)
    assert grid.window == (wh, ww) and grid.stride == (sh, sw)
    for starts, side, win, step in ((grid.rows, h, wh, sh), (grid.cols, w, ww, sw)):
        starts = np.asarray(starts)
        assert starts[0] == 0
        assert (np.diff(starts) > 0).all()                  # strictly increasing
        assert (np.diff(starts) <= step).all()              # no step larger than the stride: no gaps
        assert (np.diff(starts)[:-1] == step).all()         # regular steps, only the last may be shorter
        assert starts[-1] + win == side                     # the last window ends exactly at the edge
    assert grid.shape == (len(grid.rows), len(grid.cols)) and len(grid) == grid.shape[0] * grid.shape[1]
    boxes = set()
    for p in range(len(grid)):
        rows, cols = grid.box(p)
        assert 0 <= rows.start and rows.stop <= h and 0 <= cols.start and cols.stop <= w  # never leaves the image
        assert rows.stop - rows.start == wh and cols.stop - cols.start == ww              # never clipped
        boxes.add((rows.start, cols.start))
    assert len(boxes) == len(grid)  # all positions distinct
    assert (_coverage(grid) >= 1).all()


@PROPERTY
@given(spec=grid_specs(), n=st.integers(1, 3), c=finite_f32)
def test_occlusion_accumulate_constants(spec, n, c):
    _, _, _, window, stride = spec
    grid = OcclusionGrid(spec[0], window, stride)
    ones = grid.accumulate(np.ones((n, len(grid))))
    assert ones.dtype == np.float32 and ones.shape == (n,) + grid.size
    np.testing.assert_array_equal(ones, 1.0)
    const = grid.accumulate(np.full((n, len(grid)), np.float32(c), dtype=np.float32))
    np.testing.assert_array_equal(const, np.float32(c))


@PROPERTY
@given(spec=grid_specs())
def test_occlusion_accumulate_one_hot_is_inverse_coverage(spec):
    _, _, _, window, stride = spec
    grid = OcclusionGrid(spec[0], window, stride)
    counts = _coverage(grid)
    maps = grid.accumulate(np.eye(len(grid)))  # one one-hot drop per window position
    assert maps.shape == (len(grid),) + grid.size
    for p in range(len(grid)):
        rows, cols = grid.box(p)
        expected = np.zeros(grid.size, dtype=np.float32)
        expected[rows, cols] = (1.0 / counts[rows, cols]).astype(np.float32)
        np.testing.assert_allclose(maps[p], expected, rtol=1e-7, atol=0)


@PROPERTY
@given(spec=grid_specs(), n=st.integers(1, 3), channels=st.integers(1, 3), batch=st.integers(1, 5),
       kind=st.sampled_from(["scalar", "per-channel", "full"]), seed=st.integers(0, 2 ** 32 - 1))
def test_occlude_sets_exactly_the_window(spec, n, channels, batch, kind, seed):
    (h, w), _, _, window, stride = spec
    grid = OcclusionGrid((h, w), window, stride)
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((n, channels, h, w)).astype(np.float32)
    original = images.copy()
    if kind == "scalar":
        raw = float(rng.uniform(-3, 3))
    elif kind == "per-channel":
        raw = rng.uniform(-3, 3, channels)
    else:
        raw = rng.uniform(-3, 3, (channels, h, w))
    baseline = as_baseline(raw, (channels, h, w))
    full = np.broadcast_to(baseline, (channels, h, w))
    image_index = rng.integers(0, n, batch)
    positions = rng.integers(0, len(grid), batch)
    out = grid.occlude(images, image_index, positions, baseline)
    assert out.shape == (batch, channels, h, w) and out.dtype == np.float32
    for b in range(batch):
        inside = np.zeros((h, w), dtype=bool)
        inside[grid.box(positions[b])] = True
        np.testing.assert_array_equal(out[b][:, inside], full[:, inside])
        np.testing.assert_array_equal(out[b][:, ~inside], images[image_index[b]][:, ~inside])
    np.testing.assert_array_equal(images, original)  # the source batch is untouched


# --------------------------------------------------------------------------- scaling and masks

SCALES = [1e-30, 1e-3, 1.0, 1e3, 1e30]
KINDS = ["normal", "positive", "zeros", "constant", "negative-constant", "single", "ties", "mixed-magnitude"]


def _make_map(kind: str, scale: float, shape, rng) -> np.ndarray:
    if kind == "normal":
        m = rng.standard_normal(shape) * scale
    elif kind == "positive":
        m = np.abs(rng.standard_normal(shape)) * scale
    elif kind == "zeros":
        m = np.zeros(shape)
    elif kind == "constant":
        m = np.full(shape, rng.uniform(-1, 1) * scale)
    elif kind == "negative-constant":
        m = np.full(shape, -rng.uniform(0.1, 1) * scale)
    elif kind == "single":
        m = np.zeros(shape)
        m.flat[rng.integers(0, m.size)] = rng.choice([-1, 1]) * rng.uniform(0.5, 1) * scale
    elif kind == "ties":
        m = rng.integers(-2, 3, shape) * scale
    else:  # per-pixel magnitudes from 1e-30 to 1e30 in one map
        m = rng.standard_normal(shape) * 10.0 ** rng.uniform(-30, 30, shape)
    return m.astype(np.float32)


@st.composite
def batches(draw, max_batch=3, max_side=12, channel_axis=True):
    """A batch-first float32 stack (N, H, W) or (N, C, H, W); each image of its own kind and scale."""
    n = draw(st.integers(1, max_batch))
    middle = (draw(st.integers(1, 2)),) if channel_axis and draw(st.booleans()) else ()
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    images = [_make_map(draw(st.sampled_from(KINDS)), draw(st.sampled_from(SCALES)), middle + (h, w), rng)
              for _ in range(n)]
    return np.stack(images)


def _assert_monotone(x: np.ndarray, y: np.ndarray, increasing: bool = True):
    """Within one image: a larger input never gives a smaller output (equal inputs, equal outputs)."""
    order = np.argsort(x.ravel(), kind="stable")
    xs, ys = x.ravel()[order], y.ravel()[order]
    steps = np.diff(ys.astype(np.float64))
    assert (steps >= 0).all() if increasing else (steps <= 0).all()
    ties = np.diff(xs) == 0
    assert (steps[ties] == 0).all()


@PROPERTY
@given(maps=batches())
def test_normalize_minmax_properties(maps):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        out = scaling.normalize_minmax(maps)
    assert out.shape == maps.shape and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    for x, y in zip(maps, out):
        _assert_monotone(x, y)
        if x.min() == x.max():
            assert (y == 0).all()
        else:
            assert y.min() == 0 and y.max() == 1
    # the Score-CAM mask normalisation is the same per-(H, W) min-max formula
    if maps.ndim == 3:
        np.testing.assert_allclose(normalize_masks(maps), out, rtol=1e-6, atol=1e-7)  # float32 vs float64 scaling


@PROPERTY
@given(maps=batches(), upper=st.floats(50, 100))
def test_normalize_percentile_properties(maps, upper):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        out = scaling.normalize_percentile(maps, upper)
    assert out.shape == maps.shape and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    for x, y in zip(maps, out):
        _assert_monotone(x, y)
        low, p = x.min(), np.percentile(x.reshape(-1), upper)
        if x.min() == x.max():
            assert (y == 0).all()
        else:
            assert y[x == low].max() == 0
        if p > low:  # outliers above the percentile saturate
            assert (y[x > p] == 1).all()


@PROPERTY
@given(maps=batches())
def test_split_sign_properties(maps):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        pos, neg, mag = scaling.split_sign(maps)
    for part in (pos, neg, mag):
        assert part.shape == maps.shape and part.dtype == np.float32
        assert np.isfinite(part).all() and part.min() >= 0 and part.max() <= 1
    assert (pos[maps <= 0] == 0).all() and (neg[maps >= 0] == 0).all()
    for x, p, n, m in zip(maps, pos, neg, mag):
        _assert_monotone(x, p, increasing=True)
        _assert_monotone(x, n, increasing=False)
        _assert_monotone(np.abs(x), m, increasing=True)
        assert p.max() == (1 if (x > 0).any() else 0)
        assert n.max() == (1 if (x < 0).any() else 0)
        assert m.max() == (1 if (x != 0).any() else 0)


@PROPERTY
@given(maps=batches(channel_axis=False), channels=st.integers(1, 3), seed=st.integers(0, 2 ** 32 - 1))
def test_grayscale_then_percentile_is_a_valid_picture(maps, channels, seed):
    # the gradient-picture path: (N, C, H, W) -> sum |g| -> 99th-percentile scaling
    rng = np.random.default_rng(seed)
    gradients = (maps[:, None] * rng.uniform(-1, 1, (1, channels, 1, 1))).astype(np.float32)
    gray = scaling.grayscale(gradients)
    assert gray.shape == maps.shape and np.isfinite(gray).all() and (gray >= 0).all()
    out = scaling.normalize_percentile(gray, 99.0)
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@st.composite
def mask_stacks(draw):
    lead = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=2)))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    count = int(np.prod(lead, dtype=np.int64))
    channels = [_make_map(draw(st.sampled_from(KINDS)), draw(st.sampled_from(SCALES)), (h, w), rng)
                for _ in range(count)]
    return np.stack(channels).reshape(lead + (h, w))


@PROPERTY
@given(masks=mask_stacks())
def test_normalize_masks_properties(masks):
    before = masks.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        out = normalize_masks(masks)
    assert out.shape == masks.shape and out.dtype == np.float32
    assert not np.isnan(out).any() and np.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1
    np.testing.assert_array_equal(masks, before)
    for x, y in zip(masks.reshape((-1,) + masks.shape[-2:]), out.reshape((-1,) + masks.shape[-2:])):
        _assert_monotone(x, y)
        if x.min() == x.max():
            assert (y == 0).all()
        else:
            assert y.min() == 0 and y.max() == 1


# --------------------------------------------------------------------------- edge cases these properties found (fixed)

@pytest.mark.parametrize("fn", [scaling.normalize_minmax, scaling.normalize_percentile, normalize_masks],
                         ids=["normalize_minmax", "normalize_percentile", "normalize_masks"])
def test_minmax_scaling_of_a_range_wider_than_float32_max_is_finite(fn):
    maps = np.array([[[-3e38, 0.0, 3e38]]], dtype=np.float32)  # finite float32 input, shape (1, 1, 3)
    with np.errstate(all="raise"):  # no overflow on the way either
        out = fn(maps)
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    top = 3e38 if fn is not scaling.normalize_percentile else np.percentile(maps.astype(np.float64), 99.0)
    np.testing.assert_allclose(out.reshape(-1), [0, 3e38 / (top + 3e38), 1], atol=1e-6)


def test_normalize_percentile_sparse_spike_saturates():
    maps = np.zeros((1, 10, 15), dtype=np.float32)  # 150 pixels: the 99th percentile is 0 = min
    maps[0, 4, 7] = 5.0
    out = scaling.normalize_percentile(maps, 99.0)
    assert out[0, 4, 7] == 1.0
