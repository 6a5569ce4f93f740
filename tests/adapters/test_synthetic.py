"""The demo's data (cnnlens.adapters.synthetic) and model (cnnlens.adapters.demo_model)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from cnnlens.adapters.synthetic import MEAN, STD, make_shapes, normalize, to_tensor_range


def _square(shapes):
    found = [s for s in shapes if s.kind == "square"]
    assert len(found) <= 1
    return found[0] if found else None


# ---------------------------------------------------------------- the generator


def test_same_seed_same_bytes_different_seed_different():
    a, b = make_shapes(40, seed=3), make_shapes(40, seed=3)
    assert a.images.dtype == np.uint8 and a.images.shape == (40, 64, 64, 3)
    assert a.labels.dtype == np.int64 and a.boxes.shape == (40, 4)
    assert a.images.tobytes() == b.images.tobytes()
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    assert a.shapes == b.shapes
    c = make_shapes(40, seed=4)
    assert not np.array_equal(a.images, c.images)
    assert not np.array_equal(a.boxes, c.boxes)


def test_other_image_sizes():
    d = make_shapes(6, size=96, seed=0)
    assert d.images.shape == (6, 96, 96, 3)
    pos = d.boxes[d.labels == 1]
    assert (pos >= 0).all() and (pos <= 96).all()


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.5, 1.0])
def test_class_balance_matches_positive_fraction(fraction):
    d = make_shapes(50, seed=1, positive_fraction=fraction)
    assert int(d.labels.sum()) == round(50 * fraction)
    assert set(np.unique(d.labels)) <= {0, 1}
    # Positives are shuffled, not a block at the front.
    if 0 < fraction < 1:
        assert not np.array_equal(d.labels, np.sort(d.labels)[::-1])


def test_negatives_have_no_square_and_minus_one_boxes():
    d = make_shapes(200, seed=5)
    for label, box, shapes in zip(d.labels, d.boxes, d.shapes):
        square = _square(shapes)
        if label == 0:
            assert square is None
            assert (box == -1).all()
        else:
            assert square is not None
            assert tuple(box) == tuple(square.params)
        circles = [s for s in shapes if s.kind == "circle"]
        assert 1 <= len(circles) <= 5  # (2, 5), rarely one fewer beside a square


def test_squares_are_square_and_fully_inside_the_image():
    for size in (32, 64, 100):
        d = make_shapes(100, size=size, seed=size)
        top, left, bottom, right = d.boxes[d.labels == 1].T
        assert (top >= 0).all() and (left >= 0).all()
        assert (bottom <= size).all() and (right <= size).all()
        side = bottom - top
        np.testing.assert_array_equal(side, right - left)
        assert side.min() >= round(0.12 * size) and side.max() <= round(0.28 * size)


def test_boxes_are_exactly_the_squares_pixels():
    """Rendered without noise: the box's border is the square's colour all round (the whole box
    when filled, only a ring of the drawn thickness when outlined), and the one-pixel ring just
    outside the box is plain background: no circle touches the square."""
    d = make_shapes(120, seed=7, noise=0.0)
    checked = 0
    for image, label, box, shapes in zip(d.images, d.labels, d.boxes, d.shapes):
        if not label:
            continue
        square = _square(shapes)
        colour = np.rint(np.asarray(square.colour) * 255).astype(np.uint8)
        top, left, bottom, right = box
        inside = image[top:bottom, left:right].reshape(-1, 3)
        t = square.thickness
        mask = np.zeros((bottom - top, right - left), dtype=bool)
        if square.filled:
            mask[:] = True
        else:
            mask[:t] = mask[-t:] = True
            mask[:, :t] = mask[:, -t:] = True
        drawn = inside[mask.reshape(-1)]
        assert (drawn == colour).all()
        # Outside the box, one pixel wide (clipped to the image): all one background colour.
        padded = np.pad(np.ones((bottom - top, right - left), bool), 1)
        ring = np.zeros(image.shape[:2], dtype=bool)
        r0, c0 = top - 1, left - 1
        rows = slice(max(r0, 0), min(bottom + 1, image.shape[0]))
        cols = slice(max(c0, 0), min(right + 1, image.shape[1]))
        ring[rows, cols] = ~padded[rows.start - r0:rows.stop - r0, cols.start - c0:cols.stop - c0]
        outside = image[ring]
        assert len(outside) > 0
        assert (outside == outside[0]).all(), "something else touches the square"
        assert not (outside[0] == colour).all()
        if not square.filled:  # the hole of an outlined square is background too
            assert (inside[~mask.reshape(-1)] == outside[0]).all()
        checked += 1
    assert checked > 40


def test_noise_changes_pixels_but_not_the_layout():
    clean, noisy = make_shapes(10, seed=2, noise=0.0), make_shapes(10, seed=2)
    np.testing.assert_array_equal(clean.boxes, noisy.boxes)
    diff = np.abs(clean.images.astype(int) - noisy.images.astype(int))
    assert 0 < diff.mean() < 15


def test_invalid_arguments_raise():
    with pytest.raises(ValueError):
        make_shapes(4, positive_fraction=1.5)
    with pytest.raises(ValueError):
        make_shapes(4, size=8)
    with pytest.raises(ValueError):
        make_shapes(4, circles=(3, 2))


def test_subset_keeps_everything_aligned():
    d = make_shapes(20, seed=0)
    pos = d.subset(d.labels == 1)
    assert len(pos) == 10 and (pos.labels == 1).all()
    np.testing.assert_array_equal(pos.images, d.images[d.labels == 1])
    assert [tuple(b) for b in pos.boxes] == [tuple(_square(s).params) for s in pos.shapes]


def test_to_tensor_range_and_normalize():
    d = make_shapes(3, seed=0)
    x = to_tensor_range(d.images)
    assert x.dtype == np.float32 and x.shape == (3, 3, 64, 64)
    assert 0.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_allclose(x[1, 2, 5, 7], d.images[1, 5, 7, 2] / 255.0, rtol=1e-6)
    assert to_tensor_range(d.images[0]).shape == (1, 3, 64, 64)
    edge = to_tensor_range(np.array([[[[0, 255, 51]]]], dtype=np.uint8))
    np.testing.assert_allclose(edge.reshape(-1), [0.0, 1.0, 0.2], rtol=1e-6)
    z = normalize(d.images)
    expected = (x - np.asarray(MEAN, np.float32)[:, None, None]) / np.asarray(STD, np.float32)[:, None, None]
    np.testing.assert_allclose(z, expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError):
        to_tensor_range(np.zeros((2, 3, 8, 8), np.uint8))


def test_mean_is_the_background_and_std_the_datas():
    """MEAN is the background's level, so 0 in model space (occlusion's baseline) is background."""
    d = make_shapes(400, seed=11, noise=0.0)
    x = to_tensor_range(d.images)
    background = x[:, :, 0, 0]  # a corner: background unless a shape covers it
    covered = np.array([any(s.kind == "circle" and np.hypot(s.params[0], s.params[1]) < s.params[2] + 1
                            for s in shapes) for shapes in d.shapes])
    background = background[~covered]
    assert 0.05 - 1e-6 <= background.min() and background.max() <= 0.15 + 1e-6
    assert abs(background.mean() - MEAN[0]) < 0.01
    assert abs(normalize(d.images)[~covered][:, :, 0, 0].mean()) < 0.05
    assert abs(STD[0] - x.std()) < 0.02


def test_synthetic_needs_no_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from cnnlens.adapters.synthetic import make_shapes, normalize\n"
        "d = make_shapes(4, seed=0); x = normalize(d.images)\n"
        "assert x.shape == (4, 3, 64, 64)\n"
        "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
        "print('ok')\n"
    )
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))  # the repository
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# ---------------------------------------------------------------- the model


def test_build_model_shapes_and_seeded_init():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from cnnlens.adapters.demo_model import build_model

    model = build_model(seed=0)
    assert isinstance(model, torchvision.models.DenseNet)
    model.eval()
    with torch.no_grad():
        x = torch.zeros(2, 3, 64, 64)
        assert model(x).shape == (2, 2)
        assert model.features(x).shape[2:] == (8, 8)  # the last spatial layer the CAMs use
    state = torch.random.get_rng_state()
    again = build_model(seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    for p, q in zip(model.parameters(), again.parameters()):
        assert torch.equal(p, q)
    other = build_model(seed=1)
    assert not torch.equal(next(model.parameters()), next(other.parameters()))


def test_training_smoke_learns_and_is_deterministic():
    torch = pytest.importorskip("torch")
    from cnnlens.adapters.demo_model import build_model, evaluate, train

    data = make_shapes(640, seed=0)
    calls = []
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    runs = []
    for _ in range(2):
        model = build_model(seed=0)
        result = train(model, data, epochs=4, batch_size=32, lr=4e-3, seed=0,
                       progress=lambda step, total: calls.append((step, total)))
        runs.append((model, result))
    assert torch.are_deterministic_algorithms_enabled() == deterministic_before
    (model, result), (model2, result2) = runs
    steps = 4 * -(-len(result["train_indices"]) // 32)
    assert calls[:steps] == [(i, steps) for i in range(1, steps + 1)]
    assert len(result["train_indices"]) + len(result["val_indices"]) == 640
    assert not set(result["train_indices"]) & set(result["val_indices"])
    history = result["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["loss"] < 0.7 * history[0]["loss"]  # about 0.65 -> 0.3
    assert result["accuracy"] > 0.7  # chance is 0.5; 0.92-0.98 (128 validation images, seeds 0-4)
    # Same seed, same machine: the same weights and the same numbers.
    assert [h["loss"] for h in history] == [h["loss"] for h in result2["history"]]
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
    # Validation accuracy is what evaluate() says on the held-out images, uint8 or normalised.
    val = data.subset(result["val_indices"])
    assert result["accuracy"] == evaluate(model, val.images, val.labels)
    assert evaluate(model, normalize(val.images), val.labels) == result["accuracy"]
    assert not model.training
