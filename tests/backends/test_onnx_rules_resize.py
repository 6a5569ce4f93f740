"""Backward rules of resampling (Resize in every mode the exporters emit, Upsample), Tile,
GatherElements, ScatterND / ScatterElements, GroupNormalization and TopK: against PyTorch autograd where
PyTorch has the same op (F.interpolate's modes, repeat, gather, index assignment, group_norm), and
the adjoint identity on ONNX Runtime's own forward for every mode (the rule must be the exact
adjoint of what runs); and a detector's NonMaxSuppression, refused with the raw output to explain."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.onnx_vjp import OneOp, adjoint_gap, check_against_torch

RNG = np.random.default_rng(0)


def _rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


check = check_against_torch


def resize(x, opset=13, scales=None, sizes=None, **attrs) -> OneOp:
    """A Resize of data ``x`` (N, C, H, W) by constant ``scales`` or ``sizes``."""
    constants = {"roi": np.zeros(0, np.float32)}
    inputs = ["x", "roi"]
    if scales is not None:
        constants["scales"] = np.asarray(scales, np.float32)
        inputs.append("scales")
    else:
        constants["scales"] = np.zeros(0, np.float32)
        constants["sizes"] = np.asarray(sizes, np.int64)
        inputs += ["scales", "sizes"]
    if opset == 10:
        inputs, constants = ["x", "scales"], {"scales": constants["scales"]}
    return OneOp("Resize", {"x": x}, inputs, constants=constants, opset=opset, **attrs)


# ---------------------------------------------------------------- Resize, against F.interpolate


@pytest.mark.parametrize("opset", [11, 13, 18])
@pytest.mark.parametrize("factor", [2.0, 0.5, 1.5])
def test_resize_linear_half_pixel_by_scales_is_bilinear(opset, factor):
    x = _rand(2, 3, 6, 8)
    op = resize(x, opset, scales=[1, 1, factor, factor], mode="linear", coordinate_transformation_mode="half_pixel")
    check(op, lambda t: F.interpolate(t, scale_factor=factor, mode="bilinear", align_corners=False))


@pytest.mark.parametrize("size", [(7, 9), (3, 4), (6, 8)])
def test_resize_linear_align_corners_by_sizes(size):
    x = _rand(1, 2, 5, 6)
    op = resize(x, 13, sizes=[1, 2, *size], mode="linear", coordinate_transformation_mode="align_corners")
    check(op, lambda t: F.interpolate(t, size=size, mode="bilinear", align_corners=True))


@pytest.mark.parametrize("opset", [10, 13])
def test_resize_nearest_asymmetric_floor_is_nearest(opset):
    x = _rand(2, 3, 4, 5)
    attrs = dict(mode="nearest") if opset == 10 else dict(mode="nearest", coordinate_transformation_mode="asymmetric",
                                                           nearest_mode="floor")
    check(resize(x, opset, scales=[1, 1, 2, 3], **attrs), lambda t: F.interpolate(t, scale_factor=(2, 3), mode="nearest"))


def test_resize_nearest_by_sizes_with_repeats_and_skips():
    x = _rand(1, 2, 5, 7)  # 5 -> 8 repeats rows, 7 -> 4 skips columns
    op = resize(x, 13, sizes=[1, 2, 8, 4], mode="nearest", coordinate_transformation_mode="asymmetric",
                nearest_mode="floor")
    check(op, lambda t: F.interpolate(t, size=(8, 4), mode="nearest"))


def test_resize_nearest_exact_is_half_pixel_rounding_half_up():
    x = _rand(1, 2, 5, 7)
    op = resize(x, 13, sizes=[1, 2, 8, 3], mode="nearest", coordinate_transformation_mode="half_pixel",
                nearest_mode="round_prefer_ceil")
    check(op, lambda t: F.interpolate(t, size=(8, 3), mode="nearest-exact"))


@pytest.mark.parametrize("factor", [2.0, 0.75])
def test_resize_cubic_is_bicubic(factor):
    x = _rand(1, 2, 8, 8)
    op = resize(x, 13, scales=[1, 1, factor, factor], mode="cubic", cubic_coeff_a=-0.75,
                coordinate_transformation_mode="half_pixel")
    check(op, lambda t: F.interpolate(t, scale_factor=factor, mode="bicubic", align_corners=False))


def test_resize_with_axes_resizes_those_axes_only():
    x = _rand(2, 3, 4, 6)
    op = OneOp("Resize", {"x": x}, ["x", "", "scales"], constants={"scales": np.array([2, 0.5], np.float32)},
               opset=18, axes=[2, 3], mode="linear")
    check(op, lambda t: F.interpolate(t, scale_factor=(2, 0.5), mode="bilinear", align_corners=False))


# ---------------------------------------------------------------- every mode: the adjoint of the forward that runs
# (antialiasing included, where ONNX Runtime's forward is not PyTorch's: its rows differ by up to 0.13)


MODES = [dict(mode="nearest", coordinate_transformation_mode=c, nearest_mode=n)
         for c in ("half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel", "tf_half_pixel_for_nn")
         for n in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")] + \
        [dict(mode=m, coordinate_transformation_mode=c) for m in ("linear", "cubic")
         for c in ("half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel")] + \
        [dict(mode="cubic", exclude_outside=1, cubic_coeff_a=-0.5), dict(mode="linear", antialias=1),
         dict(mode="cubic", antialias=1)]


@pytest.mark.parametrize("attrs", MODES, ids=lambda a: "-".join(str(v) for v in a.values()))
@pytest.mark.parametrize("given", ["scales", "sizes"])
def test_resize_every_mode_is_the_adjoint_of_its_forward(attrs, given):
    x = _rand(1, 2, 5, 6)
    opset = 18 if attrs.get("antialias") else 13
    op = resize(x, opset, **({"scales": [1, 1, 1.6, 0.7]} if given == "scales" else {"sizes": [1, 2, 9, 4]}), **attrs)
    assert adjoint_gap(op, np.random.default_rng(2)) < 1e-6


@pytest.mark.parametrize("opset,mode", [(9, "nearest"), (9, "linear"), (7, "nearest"), (8, "linear")])
def test_upsample_of_opsets_7_to_9(opset, mode):
    x = _rand(1, 2, 3, 4)
    if opset == 9:
        op = OneOp("Upsample", {"x": x}, ["x", "scales"], constants={"scales": np.array([1, 1, 2, 3], np.float32)},
                   opset=9, mode=mode)
    else:
        op = OneOp("Upsample", {"x": x}, ["x"], opset=opset, mode=mode, scales=[1.0, 1.0, 2.0, 3.0])
    assert adjoint_gap(op, np.random.default_rng(3)) < 1e-6
    if mode == "nearest":
        check(op, lambda t: F.interpolate(t, scale_factor=(2, 3), mode="nearest"))


# ---------------------------------------------------------------- Tile, GatherElements, scatters, GroupNormalization


def test_tile_adds_each_copys_gradient_back():
    x = _rand(2, 3, 4)
    op = OneOp("Tile", {"x": x}, ["x", "repeats"], constants={"repeats": np.array([1, 2, 3], np.int64)})
    check(op, lambda t: t.repeat(1, 2, 3))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_gather_elements_adds_repeated_picks(axis):
    x = _rand(3, 4, 5)
    index = np.random.default_rng(axis).integers(0, x.shape[axis], size=(3, 4, 5)).astype(np.int64)
    op = OneOp("GatherElements", {"x": x}, ["x", "index"], constants={"index": index}, axis=axis)
    check(op, lambda t: torch.gather(t, axis, torch.from_numpy(index)))


def test_scatter_nd_routes_the_gradient_to_the_updates_where_written():
    data, updates = _rand(4, 3, 5), _rand(2, 3, 5)
    indices = np.array([[3], [1]], np.int64)

    def fn(d, u):
        out = d.clone()
        out[torch.tensor([3, 1])] = u
        return out
    check(OneOp("ScatterND", {"data": data, "updates": updates}, ["data", "indices", "updates"],
                constants={"indices": indices}), fn)


@pytest.mark.parametrize("reduction", ["none", "add"])
def test_scatter_elements_with_and_without_adding(reduction):
    data, updates = _rand(3, 6), _rand(3, 2)
    index = np.array([[0, 4], [5, 1], [2, 3]], np.int64)

    def fn(d, u):
        idx = torch.from_numpy(index)
        return d.scatter_add(1, idx, u) if reduction == "add" else d.scatter(1, idx, u)
    check(OneOp("ScatterElements", {"data": data, "updates": updates}, ["data", "index", "updates"],
                constants={"index": index}, opset=16, axis=1, reduction=reduction), fn)


@pytest.mark.parametrize("opset", [18, 21])
def test_group_normalization_per_group_and_per_channel_scale(opset):
    x = _rand(2, 6, 4, 5)
    groups = 3
    scale = _rand(groups if opset == 18 else 6) + 1.5
    bias = _rand(groups if opset == 18 else 6)
    op = OneOp("GroupNormalization", {"x": x}, ["x", "scale", "bias"], constants={"scale": scale, "bias": bias},
               opset=opset, num_groups=groups, epsilon=1e-5)
    per_channel = (np.repeat(scale, 2), np.repeat(bias, 2)) if opset == 18 else (scale, bias)
    weight, shift = (torch.from_numpy(v.astype(np.float64)) for v in per_channel)
    check(op, lambda t: F.group_norm(t, groups, weight, shift, eps=1e-5), tol=1e-4)


# ---------------------------------------------------------------- selections


@pytest.mark.parametrize("axis,largest", [(-1, 1), (1, 0)])
def test_top_k_values_take_the_gradient_back_to_the_chosen_elements(axis, largest):
    x = _rand(2, 6, 5)
    op = OneOp("TopK", {"x": x}, ["x", "k"], constants={"k": np.array([3], np.int64)}, outputs=2, axis=axis,
               largest=largest)
    check(op, lambda t: torch.topk(t, 3, dim=axis, largest=bool(largest)).values)


def test_a_detector_with_nms_is_told_which_raw_output_to_explain():
    """NonMaxSuppression selects: the input gradient is refused with the reason, and the error names
    the model's outputs computed before it (the raw scores) and how to explain one."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import cnnlens

    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["image", "w"], ["features"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["features"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["scores"]),  # (N, 4): one score per box
        helper.make_node("Unsqueeze", ["scores", "axis1"], ["class_scores"]),  # (N, 1, 4)
        helper.make_node("NonMaxSuppression", ["boxes", "class_scores", "top"], ["picked"]),
        helper.make_node("Cast", ["picked"], ["picked_f"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes, "detector", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("picked_f", TensorProto.FLOAT, ["k", 3]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 4])],
        [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
         numpy_helper.from_array(np.array([1], np.int64), "axis1"),
         numpy_helper.from_array(rng.uniform(0, 1, (1, 4, 4)).astype(np.float32), "boxes"),
         numpy_helper.from_array(np.array([2], np.int64), "top")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    raw = model.SerializeToString()
    picked = cnnlens.load(raw, output="picked_f")
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    with pytest.raises(cnnlens.UnsupportedError) as refused:
        cnnlens.explain(picked, x, "saliency")
    message = str(refused.value)
    assert "NonMaxSuppression selects boxes" in message and "'scores'" in message and "output=NAME" in message
    scores = cnnlens.load(raw, output="scores")  # the raw head: every method runs
    assert "input_gradients" in scores.capabilities
    assert np.abs(cnnlens.explain(scores, x, "saliency", target=1).maps).max() > 0
