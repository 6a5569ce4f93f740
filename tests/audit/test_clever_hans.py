"""The Clever Hans data and model (cnnlens.adapters.clever_hans): the mark, the marked data,
the held-out groups, and the shortcut measures against a model whose answers are known."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from cnnlens.adapters import clever_hans as ch
from cnnlens.adapters.synthetic import MEAN, STD, make_shapes

torch = pytest.importorskip("torch")

from tests.helpers import one_torch_thread  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _threads():
    yield from one_torch_thread()


# ---------------------------------------------------------------- the mark


def test_mark_box_values_and_scaling():
    assert ch.MARK_BOX == (4, 4, 9, 9) == ch.mark_box(64, "top-left")
    assert ch.mark_box(64, "top-right") == (4, 55, 9, 60)
    assert ch.mark_box(64, "bottom-left") == (55, 4, 60, 9)
    assert ch.mark_box(64, "bottom-right") == (55, 55, 60, 60)
    assert ch.mark_box(128) == (8, 8, 18, 18)
    with pytest.raises(ValueError):
        ch.mark_box(64, "centre")


@pytest.mark.parametrize("corner,size", [("top-left", 64), ("bottom-right", 64), ("top-right", 128)])
def test_mark_changes_exactly_its_box(corner, size):
    images = np.random.default_rng(0).integers(0, 256, size=(3, size, size, 3), dtype=np.uint8)
    before = images.copy()
    marked = ch.add_mark(images, corner)
    np.testing.assert_array_equal(images, before)          # a copy: the input is untouched
    top, left, bottom, right = ch.mark_box(size, corner)
    inside = np.zeros((size, size), dtype=bool)
    inside[top:bottom, left:right] = True
    assert (marked[:, inside] == np.array(ch.MARK_COLOUR, dtype=np.uint8)).all()
    np.testing.assert_array_equal(marked[:, ~inside], images[:, ~inside])
    one = ch.add_mark(images[1], corner)                    # one (H, W, 3) image
    np.testing.assert_array_equal(one, marked[1])


def test_mark_only_the_chosen_images():
    images = np.zeros((4, 64, 64, 3), dtype=np.uint8)
    marked = ch.add_mark(images, which=np.array([False, True, False, True]))
    assert marked[[0, 2]].max() == 0
    assert (marked[[1, 3], 4:9, 4:9] == ch.MARK_COLOUR).all() and marked[[1, 3]].sum() == 2 * 25 * (255 + 255)


# ---------------------------------------------------------------- the marked data


def test_marked_fractions_are_exact_and_seeded():
    data, marked = ch.make_clever_hans(200, seed=5, marked_positive_fraction=0.9, marked_negative_fraction=0.2)
    positives, negatives = data.labels == 1, data.labels == 0
    assert marked.dtype == bool and marked[positives].sum() == round(0.9 * positives.sum())
    assert marked[negatives].sum() == round(0.2 * negatives.sum())
    colour = np.array(ch.MARK_COLOUR, dtype=np.uint8)
    painted = (data.images[:, 4:9, 4:9] == colour).all(axis=(1, 2, 3))
    np.testing.assert_array_equal(painted, marked)          # the mark is on the marked ones only
    again, marked_again = ch.make_clever_hans(200, seed=5, marked_positive_fraction=0.9, marked_negative_fraction=0.2)
    assert again.images.tobytes() == data.images.tobytes()
    np.testing.assert_array_equal(marked_again, marked)
    _, other = ch.make_clever_hans(200, seed=6, marked_positive_fraction=0.9, marked_negative_fraction=0.2)
    assert not np.array_equal(other, marked)
    with pytest.raises(ValueError):
        ch.make_clever_hans(10, marked_positive_fraction=1.5)


def test_squares_keep_clear_of_the_mark_and_boxes_stay_exact():
    n = 300
    data, marked = ch.make_clever_hans(n, seed=2, marked_positive_fraction=1.0)
    plain = make_shapes(n, seed=2)
    np.testing.assert_array_equal(data.labels, plain.labels)
    top, left, bottom, right = ch.MARK_BOX
    turned = 0
    for i in np.flatnonzero(data.labels == 1):
        t, l, b, r = data.boxes[i]
        assert t >= bottom + 2 or l >= right + 2                # at least 2 px from the mark
        (square,) = [s for s in data.shapes[i] if s.kind == "square"]
        assert square.params == tuple(data.boxes[i])
        was_turned = not (plain.boxes[i] == data.boxes[i]).all()
        expected = plain.images[i, ::-1, ::-1] if was_turned else plain.images[i]
        unmarked = data.images[i].copy()
        unmarked[top:bottom, left:right] = expected[top:bottom, left:right]
        np.testing.assert_array_equal(unmarked, expected)      # the mark aside, the same image
        if was_turned:                                          # turned by 180 degrees, shapes too
            turned += 1
            for a, b_ in zip(data.shapes[i], plain.shapes[i]):
                if a.kind == "circle":
                    np.testing.assert_allclose(a.params, (64 - b_.params[0], 64 - b_.params[1], b_.params[2]))
    assert turned > 0                                           # this seed has squares near the corner


def test_held_out_groups_are_the_same_images_with_and_without_the_mark():
    config = dataclasses.replace(ch.QUICK, held_out=40)
    groups = ch.held_out(config)
    assert tuple(groups) == ch.GROUPS
    assert sum(len(g) for g in groups.values()) == 2 * 40
    top, left, bottom, right = ch.MARK_BOX
    for name, label in (("positive", 1), ("negative", 0)):
        plain, marked = groups[name], groups[name + "_marked"]
        assert (plain.labels == label).all() and len(plain) > 5
        np.testing.assert_array_equal(plain.labels, marked.labels)
        np.testing.assert_array_equal(plain.boxes, marked.boxes)
        assert (marked.images[:, top:bottom, left:right] == ch.MARK_COLOUR).all()
        assert not (plain.images[:, top:bottom, left:right] == ch.MARK_COLOUR).all(axis=(1, 2, 3)).any()
        outside = marked.images.copy()
        outside[:, top:bottom, left:right] = plain.images[:, top:bottom, left:right]
        np.testing.assert_array_equal(outside, plain.images)
    assert (groups["positive"].boxes >= 0).all() and (groups["negative"].boxes == -1).all()
    assert ch.held_out(config)["positive"].images.tobytes() == groups["positive"].images.tobytes()


# ---------------------------------------------------------------- the shortcut measures


class MarkDetector(torch.nn.Module):
    """Says "square" (class 1) exactly when the mark's magenta fills its box: in normalised
    units the mark's red minus green is (1 - 0) / 0.2 = 5, and no shape's exceeds (1 - 0.4) / 0.2 = 3."""

    def forward(self, x):
        top, left, bottom, right = ch.MARK_BOX
        patch = x[:, 0, top:bottom, left:right] - x[:, 1, top:bottom, left:right]
        score = patch.mean(dim=(1, 2)) - 4.0
        return torch.stack([torch.zeros_like(score), score], dim=1)


def test_shortcut_effect_of_a_pure_mark_detector():
    assert MEAN[0] == MEAN[1] and STD[0] == STD[1] == 0.2
    groups = ch.held_out(dataclasses.replace(ch.QUICK, held_out=40))
    effect = ch.shortcut_effect(MarkDetector(), groups)
    assert effect["positive_accuracy"] == 0.0 and effect["positive_marked_accuracy"] == 1.0
    assert effect["negative_accuracy"] == 1.0 and effect["negative_marked_accuracy"] == 0.0
    assert effect["accuracy"] == 0.5 and effect["flip_rate"] == 1.0 and effect["positive_drop"] == 1.0
    assert effect["false_positive_rate"] == 0.0 and effect["false_positive_rate_marked"] == 1.0
    assert effect["images"] == {name: len(groups[name]) for name in ch.GROUPS}


def test_shortcut_effect_of_a_model_that_always_says_square():
    class Always(torch.nn.Module):
        def forward(self, x):
            return torch.tensor([[0.0, 1.0]]).repeat(len(x), 1)

    groups = ch.held_out(dataclasses.replace(ch.QUICK, held_out=40))
    effect = ch.shortcut_effect(Always(), groups)
    n_pos, n_neg = len(groups["positive"]), len(groups["negative"])
    assert effect["accuracy"] == n_pos / (n_pos + n_neg) and effect["positive_drop"] == 0.0
    assert effect["false_positive_rate_marked"] == 1.0 and np.isnan(effect["flip_rate"])  # no clean negative to flip


# ---------------------------------------------------------------- training


def test_quick_training_learns_the_shortcut_and_caches(tmp_path):
    messages = []
    model, accuracy = ch.train_or_load(str(tmp_path), ch.QUICK, say=messages.append)
    assert 0.6 < accuracy <= 1.0 and not model.training
    with open(os.path.join(tmp_path, "clever_hans.json")) as handle:
        assert json.load(handle)["key"] == ch.QUICK.key()
    effect = ch.shortcut_effect(model, ch.held_out(ch.QUICK))
    assert effect["flip_rate"] > 0.5                           # the mark alone makes a negative "square"
    assert effect["positive_marked_accuracy"] > effect["positive_accuracy"]
    again, cached = ch.train_or_load(str(tmp_path), ch.QUICK, say=messages.append)
    assert cached == accuracy and "loaded" in messages[-1]
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
    assert ch.QUICK.key() != dataclasses.replace(ch.QUICK, marked_positive_fraction=0.5).key()
    assert ch.QUICK.key() == dataclasses.replace(ch.QUICK, held_out=7).key()   # explaining settings don't retrain
