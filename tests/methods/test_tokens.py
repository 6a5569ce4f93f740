"""``core.tokens``: how a layer's output reads as (N, K, h, w) maps, in NumPy only.

Each layout is checked against an element-by-element construction (no reshape in the reference),
the inference against the token counts real models emit (ViT, DeiT's distillation token, DINOv2's
register tokens, non-square images, Swin's channels-last maps, a conv flattened to (N, C, T)), and
every way a user can state the layout, with the errors when it cannot be told."""

from __future__ import annotations

import numpy as np
import pytest

from cnnlens.core.errors import InvalidInputError, LayerError
from cnnlens.core.tokens import MapReading, Reshape, parse_reshape, read_as_maps

RNG = np.random.default_rng(0)


def reference_maps(value: np.ndarray, layout: str, grid, drop: int = 0) -> np.ndarray:
    """(N, K, h, w) built one element at a time: row-major tokens, position t = drop + i * w + j."""
    h, w = grid
    n = value.shape[0]
    k = value.shape[{"NCHW": 1, "NHWC": 3, "NTC": 2, "NCT": 1}[layout]]
    out = np.empty((n, k, h, w), dtype=value.dtype)
    for b in range(n):
        for c in range(k):
            for i in range(h):
                for j in range(w):
                    t = drop + i * w + j
                    out[b, c, i, j] = {"NCHW": lambda: value[b, c, i, j], "NHWC": lambda: value[b, i, j, c],
                                       "NTC": lambda: value[b, t, c], "NCT": lambda: value[b, c, t]}[layout]()
    return out


@pytest.mark.parametrize("layout, shape, grid, drop", [
    ("NCHW", (2, 5, 3, 4), (3, 4), 0),
    ("NHWC", (2, 3, 4, 5), (3, 4), 0),
    ("NTC", (2, 1 + 12, 5), (3, 4), 1),
    ("NTC", (2, 2 + 12, 5), (3, 4), 2),
    ("NCT", (2, 5, 12), (3, 4), 0),
    ("NCT", (2, 5, 1 + 12), (3, 4), 1),
])
def test_each_layout_reads_as_the_element_by_element_maps(layout, shape, grid, drop):
    value = RNG.standard_normal(shape).astype(np.float32)
    reading = MapReading(layout, grid, drop)
    got = reading.read(value)
    np.testing.assert_array_equal(got, reference_maps(value, layout, grid, drop))
    assert got.flags.c_contiguous
    assert reading.map_shape(shape) == got.shape


@pytest.mark.parametrize("layout, shape, grid, drop", [
    ("NCHW", (3, 5, 3, 4), (3, 4), 0), ("NHWC", (3, 3, 4, 5), (3, 4), 0),
    ("NTC", (3, 2 + 12, 5), (3, 4), 2), ("NCT", (3, 5, 1 + 12), (3, 4), 1)])
def test_zero_channels_zeroes_the_maps_channel_and_nothing_else(layout, shape, grid, drop):
    values = RNG.standard_normal(shape).astype(np.float32) + 5.0  # no zero anywhere
    before = values.copy()
    channels = np.array([4, 0, 2])
    reading = MapReading(layout, grid, drop)
    reading.zero_channels(values, channels)
    maps, original = reading.read(values), reading.read(before)
    for i, c in enumerate(channels):
        assert (maps[i, c] == 0).all()
        others = np.delete(np.arange(shape[1] if layout in ("NCHW", "NCT") else shape[-1]), c)
        np.testing.assert_array_equal(maps[i, others], original[i, others])
    changed = values != before
    assert changed.sum() == len(channels) * grid[0] * grid[1]  # the dropped tokens are untouched


@pytest.mark.parametrize("shape, image, layout, grid, drop", [
    ((2, 197, 768), (224, 224), "NTC", (14, 14), 1),     # ViT-B/16: class token
    ((2, 198, 192), (224, 224), "NTC", (14, 14), 2),     # DeiT distilled: class + distillation tokens
    ((2, 261, 384), (224, 224), "NTC", (16, 16), 5),     # DINOv2-reg at patch 14: class + 4 registers
    ((2, 577, 192), (384, 384), "NTC", (24, 24), 1),     # tokens outnumber channels
    ((2, 196, 768), (224, 224), "NTC", (14, 14), 0),     # pooled (no class token), e.g. a GAP ViT
    ((2, 768, 196), (224, 224), "NCT", (14, 14), 0),     # a patch conv flattened: (N, C, T)
    ((2, 7, 7, 768), (224, 224), "NHWC", (7, 7), 0),     # Swin's last stage
    ((2, 56, 56, 96), (224, 224), "NHWC", (56, 56), 0),  # Swin's first stage: (56, 96) is no grid
    ((2, 5, 7, 768), (160, 224), "NHWC", (5, 7), 0),     # Swin on a non-square image
    ((2, 512, 7, 7), (224, 224), "NCHW", (7, 7), 0),     # a CNN
    ((2, 64, 56, 56), (224, 224), "NCHW", (56, 56), 0),
    ((2, 512, 2, 3), (64, 96), "NCHW", (2, 3), 0),
    ((2, 8, 4, 8), (32, 32), "NCHW", (4, 8), 0),         # neither reading fits: NCHW, as always
])
def test_inferred_reading(shape, image, layout, grid, drop):
    reading = read_as_maps("layer", shape, image, None, "gradcam")
    assert (reading.layout, reading.grid, reading.drop) == (layout, grid, drop)


def test_non_square_vit_grid_is_found_and_disambiguated_by_the_models_own_grids():
    # 96 x 160 at patch 16: 6 x 10 + a class token (61 tokens) of 192 channels. 192 - 5 = 187 = 11 x 17
    # is also close to 3:5, so both axes fit: the model's patch-embedding grid (6, 10) decides.
    asked = []
    reading = read_as_maps("blocks.11.norm1", (2, 61, 192), (96, 160), None, "gradcam",
                           model_grids=lambda: asked.append(1) or {(6, 10), (1, 1)})
    assert (reading.layout, reading.grid, reading.drop) == ("NTC", (6, 10), 1)
    assert asked == [1]
    # where both still fit, (N, T, C): 17 tokens of 16 channels on a 4 x 4 grid of a 32 px image
    reading = read_as_maps("b", (2, 17, 16), (32, 32), None, "gradcam", model_grids=lambda: {(4, 4)})
    assert (reading.layout, reading.grid, reading.drop) == ("NTC", (4, 4), 1)
    assert read_as_maps("b", (2, 17, 16), (32, 32), "channels=first", "gradcam").layout == "NCT"
    # an unambiguous shape never asks for the model's grids (they cost a trace)
    read_as_maps("x", (2, 197, 768), (224, 224), None, "gradcam", model_grids=lambda: asked.append(2) or set())
    assert asked == [1]


@pytest.mark.parametrize("reshape, shape, image, expected", [
    ("14x14", (2, 197, 768), (224, 224), ("NTC", (14, 14), 1)),
    ("drop=1", (2, 197, 768), (224, 224), ("NTC", (14, 14), 1)),
    ("6x10,drop=1,channels=last", (2, 61, 192), (96, 160), ("NTC", (6, 10), 1)),
    ("channels=last", (2, 61, 192), (96, 160), ("NTC", (6, 10), 1)),
    ({"grid": (6, 10), "drop": 1}, (2, 61, 192), (96, 160), ("NTC", (6, 10), 1)),
    ({"grid": [7, 7], "channels": "last"}, (2, 7, 7, 768), (224, 224), ("NHWC", (7, 7), 0)),
    ("channels=first", (2, 7, 7, 768), (224, 224), ("NCHW", (7, 768), 0)),  # stated, obeyed
    ("4x3", (2, 12, 5), (40, 40), ("NTC", (4, 3), 0)),  # a grid no image shape suggests, stated
    (" 3x4 , drop = 0 ", (2, 5, 12), (30, 40), ("NCT", (3, 4), 0)),
])
def test_stated_reading(reshape, shape, image, expected):
    reading = read_as_maps("layer", shape, image, reshape, "gradcam")
    assert (reading.layout, reading.grid, reading.drop) == expected


@pytest.mark.parametrize("reshape, message", [
    ("14", "two positive sizes"), ("0x14", "two positive sizes"), ("axb", "two positive sizes"),
    ("drop=-1", "count of leading tokens"), ("drop=one", "count of leading tokens"),
    ("channels=middle", "'first' or 'last'"), ("size=3", "unknown part size"),
    ({"grid": (14, 14), "tokens": 1}, "unknown part tokens"), (3.5, "reshape must be"),
])
def test_bad_reshape_is_a_clear_error(reshape, message):
    with pytest.raises(InvalidInputError, match=message):
        parse_reshape(reshape)


@pytest.mark.parametrize("shape, image, reshape, message", [
    ((2, 197, 768), (224, 224), "15x15", "the stated grid does not match"),
    ((2, 197, 768), (224, 224), "14x14,drop=2", "the stated grid does not match"),
    ((2, 3, 3), (224, 224), None, "no grid of patches of the 224x224 image"),
    ((2, 512, 7, 7), (224, 224), "drop=1", "drop= applies to token tensors"),
    ((2, 512, 7, 7), (224, 224), "8x8", "not the 8x8 given"),
    ((2, 1000), (224, 224), None, "not a \\(N, K, h, w\\) map or a token tensor"),
])
def test_what_cannot_be_read_is_a_layer_error_saying_what_to_do(shape, image, reshape, message):
    with pytest.raises(LayerError, match=message) as error:
        read_as_maps("layer", shape, image, reshape, "gradcam")
    assert "layer" in str(error.value)


def test_a_default_layer_that_is_no_map_is_refused_not_read():
    # a ViT's (N, heads, T, d) attention tensor is 4-D but no grid of the image: as the backend's
    # default it is refused (with the layer to name instead); named by the user it is read as asked
    with pytest.raises(LayerError, match="blocks.11.norm1"):
        read_as_maps("blocks.11.attn.k_norm", (2, 3, 197, 64), (224, 224), None, "gradcam", defaulted=True)
    assert read_as_maps("blocks.11.attn.k_norm", (2, 3, 197, 64), (224, 224), None, "gradcam").plain
    # small CNN maps whose rounding moves the aspect ratio stay the default
    assert read_as_maps("layer4", (2, 512, 1, 2), (32, 48), None, "gradcam", defaulted=True).plain


def test_a_reshape_function_is_applied_and_checked():
    value = RNG.standard_normal((2, 197, 8)).astype(np.float32)
    reading = read_as_maps("x", value.shape, (224, 224), lambda t: t[:, 1:].reshape(2, 14, 14, 8).transpose(0, 3, 1, 2),
                           "gradcam")
    np.testing.assert_array_equal(reading.read(value), reference_maps(value, "NTC", (14, 14), 1))
    assert "reshape function" in reading.describe("x", value.shape)
    with pytest.raises(LayerError, match="must return \\(N, K, h, w\\) maps"):
        MapReading("NCHW", (0, 0), function=lambda t: t[:, 0]).read(value)
    with pytest.raises(LayerError, match="reshape function failed.*ValueError"):
        MapReading("NCHW", (0, 0), function=lambda t: t.reshape(3, -1, 5, 5)).read(value)
    with pytest.raises(LayerError, match="state the layout instead"):
        MapReading("NCHW", (0, 0), function=lambda t: t).zero_channels(value, np.array([0, 1]))


def test_descriptions_say_what_was_dropped():
    assert read_as_maps("b", (1, 198, 192), (224, 224), None, "m").describe("b", (1, 198, 192)) == (
        "layer 'b': tokens (N, T, K) (1, 198, 192) read as a 14x14 grid; the first 2 tokens (class / "
        "distillation / register) dropped")
    assert read_as_maps("s", (1, 7, 7, 96), (224, 224), None, "m").describe("s", (1, 7, 7, 96)) == (
        "layer 's': a channels-last (N, h, w, K) map (1, 7, 7, 96) read as a 7x7 grid")
    assert parse_reshape(None) == Reshape() and parse_reshape("2x3").grid == (2, 3)
