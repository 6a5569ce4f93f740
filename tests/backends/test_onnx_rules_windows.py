"""Backward rules of window ops (Conv, ConvTranspose, MaxPool, AveragePool, the global pools) and
normalisations (BatchNormalization, LRN, LayerNormalization, InstanceNormalization).

Against PyTorch autograd where PyTorch has the same op, with random shapes and attributes drawn
by hypothesis; against the adjoint identity on ONNX Runtime's own forward where ONNX means
something PyTorch cannot say (auto_pad, asymmetric pads); MaxPool with many exact ties, since
where a tie's gradient goes is a convention (PyTorch's: the first maximum).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cnnlens.backends.onnx.shapes import infer
from tests.helpers import assert_close
from tests.onnx_vjp import OneOp, adjoint_gap, torch_vjp

PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check(op: OneOp, fn, seed_rng, tol=1e-5):
    seed = op.seed(seed_rng)
    want = torch_vjp(fn, op.data, seed)
    torch_y = fn(*[torch.from_numpy(v.astype(np.float64)) for v in op.data.values()]).detach().numpy()
    np.testing.assert_allclose(op.forward(), torch_y, rtol=1e-4, atol=1e-4)
    got = op.vjp(seed)
    for name in op.data:
        assert_close(got[name], want[name], tol)


# ---------------------------------------------------------------- convolutions


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 2, 3]))
    depthwise = draw(st.booleans())
    c_in = groups * draw(st.integers(1, 3))
    c_out = c_in if depthwise else groups * draw(st.integers(1, 3))
    groups = c_in if depthwise else groups
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pad = (draw(st.integers(0, k[0] // 2 + 1)), draw(st.integers(0, k[1] // 2 + 1)))
    size = (draw(st.integers(max(k[0] * dilation[0], 3), 11)), draw(st.integers(max(k[1] * dilation[1], 3), 11)))
    return dict(groups=groups, c_in=c_in, c_out=c_out, k=k, stride=stride, dilation=dilation, pad=pad, size=size,
                bias=draw(st.booleans()), seed=draw(st.integers(0, 2 ** 16)))


@PROPERTY
@given(conv_cases())
def test_conv_input_gradient_equals_pytorch(case):
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((2, case["c_in"]) + case["size"]).astype(np.float32)
    w = rng.standard_normal((case["c_out"], case["c_in"] // case["groups"]) + case["k"]).astype(np.float32)
    b = rng.standard_normal(case["c_out"]).astype(np.float32)
    constants = {"w": w, "b": b} if case["bias"] else {"w": w}
    op = OneOp("Conv", {"x": x}, ["x", "w"] + (["b"] if case["bias"] else []), constants=constants,
               kernel_shape=list(case["k"]), strides=list(case["stride"]), dilations=list(case["dilation"]),
               pads=list(case["pad"]) * 2, group=case["groups"])
    wt, bt = torch.from_numpy(w.astype(np.float64)), torch.from_numpy(b.astype(np.float64)) if case["bias"] else None
    _check(op, lambda t: F.conv2d(t, wt, bt, case["stride"], case["pad"], case["dilation"], case["groups"]), rng)


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("stride,k,groups", [(1, 3, 1), (2, 3, 1), (2, 4, 1), (1, 3, 4), (2, 3, 4), (3, 2, 2)])
def test_conv_auto_pad_is_the_adjoint_of_onnx_runtimes_forward(auto_pad, stride, k, groups):
    rng = np.random.default_rng(stride * 10 + k + groups)
    x = rng.standard_normal((2, 4, 9, 10)).astype(np.float32)
    w = rng.standard_normal((4, 4 // groups, k, k)).astype(np.float32)
    op = OneOp("Conv", {"x": x}, ["x", "w"], constants={"w": w}, auto_pad=auto_pad, strides=[stride, stride],
               group=groups)
    assert adjoint_gap(op, rng) < 1e-6


def test_conv_asymmetric_pads_and_no_kernel_shape_attribute():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 2, 8, 7)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 2)).astype(np.float32)
    op = OneOp("Conv", {"x": x}, ["x", "w"], constants={"w": w}, pads=[0, 1, 2, 0], strides=[2, 1])
    assert adjoint_gap(op, rng) < 1e-6


@pytest.mark.parametrize("rank", [1, 3])
def test_conv_of_other_ranks(rank):
    rng = np.random.default_rng(rank)
    size = (7,) * rank
    x = rng.standard_normal((2, 3) + size).astype(np.float32)
    w = rng.standard_normal((4, 3) + (3,) * rank).astype(np.float32)
    op = OneOp("Conv", {"x": x}, ["x", "w"], constants={"w": w}, strides=[2] * rank, pads=[1] * 2 * rank)
    conv = F.conv1d if rank == 1 else F.conv3d
    _check(op, lambda t: conv(t, torch.from_numpy(w.astype(np.float64)), None, 2, 1), rng)


@pytest.mark.parametrize("stride,pad,output_padding", [(1, 0, 0), (2, 1, 1), (2, 0, 0), (3, 1, 2)])
def test_conv_transpose_input_gradient(stride, pad, output_padding):
    rng = np.random.default_rng(stride + pad)
    x = rng.standard_normal((2, 4, 5, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    op = OneOp("ConvTranspose", {"x": x}, ["x", "w"], constants={"w": w}, strides=[stride] * 2, pads=[pad] * 4,
               output_padding=[output_padding] * 2)
    wt = torch.from_numpy(w.astype(np.float64))
    _check(op, lambda t: F.conv_transpose2d(t, wt, None, stride, pad, output_padding), rng)


# ---------------------------------------------------------------- pooling


def _runtime_agrees_with_inference(op: OneOp) -> bool:
    """Whether ONNX Runtime's output shape is the one ONNX shape inference gives. With ceil_mode, a
    last window that would start in the end padding is dropped by ONNX Runtime (and PyTorch) but
    counted by ONNX's shape inference, and ONNX Runtime then rewrites reshapes with the wrong
    shape: such graphs fail in ONNX Runtime itself, whatever cnnlens does."""
    inferred = infer(op.model).shapes.get(op.output)
    return inferred is not None and tuple(inferred) == op.forward().shape


@st.composite
def pool_cases(draw):
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pad = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    size = (draw(st.integers(k[0] + 1, 10)), draw(st.integers(k[1] + 1, 10)))
    return dict(k=k, stride=stride, pad=pad, size=size, ceil=draw(st.booleans()), seed=draw(st.integers(0, 2 ** 16)))


@PROPERTY
@given(pool_cases(), st.integers(1, 2), st.sampled_from([12, 17]))
def test_max_pool_gradient_goes_where_pytorchs_goes_ties_included(case, dilation, opset):
    """Both scatters: the one-hot ConvTranspose (before opset 16) and ScatterElements (from 16)."""
    rng = np.random.default_rng(case["seed"])
    x = rng.integers(0, 3, (2, 3) + case["size"]).astype(np.float32)  # ties in almost every window
    reach = [(k - 1) * dilation + 1 for k in case["k"]]
    if any(r > s + 2 * p for r, s, p in zip(reach, case["size"], case["pad"])) or any(
            p > r // 2 for p, r in zip(case["pad"], reach)):
        return
    op = OneOp("MaxPool", {"x": x}, ["x"], opset=opset, kernel_shape=list(case["k"]), strides=list(case["stride"]),
               pads=list(case["pad"]) * 2, dilations=[dilation] * 2, ceil_mode=int(case["ceil"]))
    assume(_runtime_agrees_with_inference(op))
    _check(op, lambda t: F.max_pool2d(t, case["k"], case["stride"], case["pad"], dilation, case["ceil"]), rng)


@pytest.mark.parametrize("opset", [9, 12, 17, 20])
def test_max_pool_overlapping_windows_add_up(opset):
    rng = np.random.default_rng(opset)
    x = np.maximum(rng.standard_normal((2, 4, 9, 9)), 0).astype(np.float32)  # post-ReLU zeros
    op = OneOp("MaxPool", {"x": x}, ["x"], opset=opset, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    _check(op, lambda t: F.max_pool2d(t, 3, 2, 1), rng)


def test_max_pool_same_upper_auto_pad():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 2, 7, 8)).astype(np.float32)
    op = OneOp("MaxPool", {"x": x}, ["x"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")
    # SAME_UPPER pads rows 1 + 1 and columns 0 + 1 (the odd one at the end): PyTorch's padding is
    # symmetric, so pad by hand
    _check(op, lambda t: F.max_pool2d(F.pad(t, (0, 1, 1, 1), value=-np.inf), 3, 2), rng)


@PROPERTY
@given(pool_cases(), st.booleans())
def test_average_pool_equals_pytorch(case, count_include_pad):
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((2, 3) + case["size"]).astype(np.float32)
    op = OneOp("AveragePool", {"x": x}, ["x"], opset=19, kernel_shape=list(case["k"]), strides=list(case["stride"]),
               pads=list(case["pad"]) * 2, ceil_mode=int(case["ceil"]), count_include_pad=int(count_include_pad))
    assume(_runtime_agrees_with_inference(op))
    assert adjoint_gap(op, rng) < 1e-6  # the adjoint of what ONNX Runtime computes, in every case
    if not case["ceil"]:  # PyTorch and ONNX Runtime agree on windows that stay inside the padded input
        _check(op, lambda t: F.avg_pool2d(t, case["k"], case["stride"], case["pad"], False, count_include_pad), rng)


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
def test_average_pool_same_padding_counts_only_real_pixels(auto_pad):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1, 2, 7, 6)).astype(np.float32)
    op = OneOp("AveragePool", {"x": x}, ["x"], kernel_shape=[3, 2], strides=[2, 2], auto_pad=auto_pad)
    assert adjoint_gap(op, rng) < 1e-6


def test_global_pools():
    rng = np.random.default_rng(9)
    x = rng.integers(0, 3, (2, 3, 4, 5)).astype(np.float32)  # tied maxima
    _check(OneOp("GlobalAveragePool", {"x": x}, ["x"]), lambda t: F.adaptive_avg_pool2d(t, 1), rng)
    _check(OneOp("GlobalMaxPool", {"x": x}, ["x"]), lambda t: F.adaptive_max_pool2d(t, 1), rng)


# ---------------------------------------------------------------- normalisation


def test_batch_norm_inference():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    scale, bias = rng.random(3).astype(np.float32) + 0.5, rng.standard_normal(3).astype(np.float32)
    mean, var = rng.standard_normal(3).astype(np.float32), rng.random(3).astype(np.float32) + 0.5
    op = OneOp("BatchNormalization", {"x": x}, ["x", "s", "b", "m", "v"],
               constants={"s": scale, "b": bias, "m": mean, "v": var}, epsilon=1e-3)
    t64 = [torch.from_numpy(a.astype(np.float64)) for a in (mean, var, scale, bias)]
    _check(op, lambda t: F.batch_norm(t, t64[0], t64[1], t64[2], t64[3], False, 0.0, 1e-3), rng)


def test_batch_norm_on_flat_features():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    p = [rng.random(5).astype(np.float32) + 0.5 for _ in range(4)]
    op = OneOp("BatchNormalization", {"x": x}, ["x", "s", "b", "m", "v"], constants=dict(zip("sbmv", p)))
    t = [torch.from_numpy(a.astype(np.float64)) for a in p]
    _check(op, lambda v: F.batch_norm(v, t[2], t[3], t[0], t[1], False, 0.0, 1e-5), rng)


@pytest.mark.parametrize("size,opset", [(3, 9), (5, 13), (5, 17)])
def test_lrn_equals_pytorch(size, opset):
    rng = np.random.default_rng(size)
    x = rng.standard_normal((2, 7, 4, 4)).astype(np.float32)
    op = OneOp("LRN", {"x": x}, ["x"], opset=opset, size=size, alpha=1e-2, beta=0.75, bias=2.0)
    _check(op, lambda t: F.local_response_norm(t, size, 1e-2, 0.75, 2.0), rng)


@pytest.mark.parametrize("axis", [-1, 1])
def test_layer_norm(axis):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    shape = x.shape[axis:] if axis > 0 else x.shape[-1:]
    scale, bias = rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape).astype(np.float32)
    op = OneOp("LayerNormalization", {"x": x}, ["x", "s", "b"], constants={"s": scale, "b": bias}, axis=axis)
    s64, b64 = torch.from_numpy(scale.astype(np.float64)), torch.from_numpy(bias.astype(np.float64))
    _check(op, lambda t: F.layer_norm(t, shape, s64, b64, 1e-5), rng, tol=1e-4)


def test_instance_norm():
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    scale, bias = rng.standard_normal(3).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    op = OneOp("InstanceNormalization", {"x": x}, ["x", "s", "b"], constants={"s": scale, "b": bias})
    s64, b64 = torch.from_numpy(scale.astype(np.float64)), torch.from_numpy(bias.astype(np.float64))
    _check(op, lambda t: F.instance_norm(t, weight=s64, bias=b64, eps=1e-5), rng, tol=1e-4)
