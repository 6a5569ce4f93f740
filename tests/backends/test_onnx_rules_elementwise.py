"""Backward rules of element-wise ops, activations, reductions and softmax, each against PyTorch
autograd of the equivalent op (or central differences in float64 where ONNX's op has no PyTorch
twin), on random shapes with broadcasting and with inputs on the points where derivatives are
not unique (ReLU's 0, Clip's bounds, tied maxima)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx import helper

from tests.helpers import assert_close
from tests.onnx_vjp import OneOp, reference_directional, torch_vjp

RNG = np.random.default_rng(0)


def _rand(*shape, low=None):
    x = RNG.standard_normal(shape).astype(np.float32)
    return np.abs(x) + low if low is not None else x


def check(op: OneOp, fn, tol=1e-5, seed_rng=None):
    seed = op.seed(seed_rng or np.random.default_rng(1))
    want = torch_vjp(fn, op.data, seed)
    got = op.vjp(seed)
    np.testing.assert_allclose(op.forward(), fn(*[torch.from_numpy(v.astype(np.float64)) for v in op.data.values()])
                               .detach().numpy(), rtol=1e-4, atol=1e-5)
    for name in op.data:
        if not np.abs(want[name]).max():  # a zero derivative (x**0, floor, sign): exactly zero too
            np.testing.assert_array_equal(got[name], 0)
        else:
            assert_close(got[name], want[name], tol)


# ---------------------------------------------------------------- arithmetic with broadcasting

BROADCASTS = [((2, 3, 4, 5), (2, 3, 4, 5)), ((2, 3, 4, 5), (3, 1, 1)), ((2, 1, 4, 1), (3, 1, 5)), ((4, 5), (2, 3, 4, 5)),
              ((2, 3, 4, 5), ())]


@pytest.mark.parametrize("a_shape,b_shape", BROADCASTS)
@pytest.mark.parametrize("op_type,fn", [("Add", torch.add), ("Sub", torch.sub), ("Mul", torch.mul),
                                        ("Div", torch.div)])
def test_binary_arithmetic_with_broadcasting(op_type, fn, a_shape, b_shape):
    a, b = _rand(*a_shape), _rand(*b_shape, low=0.5) if op_type == "Div" else _rand(*b_shape)
    check(OneOp(op_type, {"a": a, "b": b}, ["a", "b"]), fn)


def test_same_tensor_twice_adds_both_gradients():
    a = _rand(2, 3)
    check(OneOp("Mul", {"a": a}, ["a", "a"]), lambda t: t * t)


def test_constant_operand_gets_no_gradient_but_data_does():
    a, w = _rand(2, 3, 4, 4), _rand(3, 1, 1)
    check(OneOp("Mul", {"a": a}, ["a", "w"], constants={"w": w}), lambda t: t * torch.from_numpy(w.astype(np.float64)))


@pytest.mark.parametrize("exponent", [2.0, 3.0, 0.5, 0.0, 1.0, -1.5])
def test_pow_constant_exponent(exponent):
    a = _rand(2, 3, 4, low=0.2)
    e = np.array(exponent, dtype=np.float32)
    check(OneOp("Pow", {"a": a}, ["a", "e"], constants={"e": e}), lambda t: t ** exponent)


def test_pow_data_exponent():
    a, e = _rand(2, 3, low=0.2), _rand(2, 3)
    check(OneOp("Pow", {"a": a, "e": e}, ["a", "e"]), torch.pow)


@pytest.mark.parametrize("op_type", ["Sum", "Mean"])
def test_variadic_sum_and_mean(op_type):
    a, b, c = _rand(2, 3, 4), _rand(3, 1), _rand(4)
    scale = 1 / 3 if op_type == "Mean" else 1.0
    check(OneOp(op_type, {"a": a, "b": b, "c": c}, ["a", "b", "c"]), lambda x, y, z: (x + y + z) * scale)


@pytest.mark.parametrize("op_type,fn", [("Max", torch.maximum), ("Min", torch.minimum)])
@pytest.mark.parametrize("opset", [9, 13])
def test_max_min_split_ties_evenly_like_pytorch(op_type, fn, opset):
    a = RNG.integers(-2, 3, (3, 4, 5)).astype(np.float32)  # many exact ties
    b = RNG.integers(-2, 3, (4, 5)).astype(np.float32)
    check(OneOp(op_type, {"a": a, "b": b}, ["a", "b"], opset=opset), fn)


def test_where_routes_gradients_by_the_condition():
    a, b = _rand(2, 3, 4), _rand(3, 1)
    condition = RNG.random((2, 3, 4)) > 0.5
    c = torch.from_numpy(condition)
    check(OneOp("Where", {"a": a, "b": b}, ["c", "a", "b"], constants={"c": condition}),
          lambda x, y: torch.where(c, x, y))


UNARY = [
    ("Neg", torch.neg, None), ("Exp", torch.exp, None), ("Log", torch.log, 0.1), ("Sqrt", torch.sqrt, 0.1),
    ("Reciprocal", torch.reciprocal, 0.3), ("Abs", torch.abs, None), ("Identity", lambda t: t, None),
    ("Sigmoid", torch.sigmoid, None), ("Tanh", torch.tanh, None), ("Erf", torch.erf, None),
    ("Softplus", F.softplus, None), ("Softsign", F.softsign, None), ("Elu", F.elu, None), ("Selu", F.selu, None),
    ("Floor", torch.floor, None), ("Sign", torch.sign, None),
]


@pytest.mark.parametrize("op_type,fn,low", UNARY, ids=[u[0] for u in UNARY])
def test_unary_math(op_type, fn, low):
    check(OneOp(op_type, {"x": _rand(2, 3, 4, 5, low=low)}, ["x"]), fn)


# ---------------------------------------------------------------- activations


def _with_zeros(*shape):
    x = _rand(*shape)
    x.reshape(-1)[::7] = 0.0  # exactly on the kink
    return x


def test_relu_plain_is_pytorchs_including_zero():
    check(OneOp("Relu", {"x": _with_zeros(2, 3, 6, 6)}, ["x"]), torch.relu)


@pytest.mark.parametrize("rule", ["guided", "deconv"])
def test_relu_rules_as_in_the_lecture(rule):
    x = _with_zeros(2, 3, 6, 6)
    op = OneOp("Relu", {"x": x}, ["x"], relu=rule)
    seed = op.seed(np.random.default_rng(3))
    got = op.vjp(seed)["x"]
    positive_grad = np.maximum(seed, 0)
    want = positive_grad * (x > 0) if rule == "guided" else positive_grad
    np.testing.assert_array_equal(got, want)
    assert (seed < 0).any() and (want != seed * (x > 0)).any()  # the rule changed something


@pytest.mark.parametrize("alpha", [0.01, 0.2])
def test_leaky_relu(alpha):
    check(OneOp("LeakyRelu", {"x": _with_zeros(2, 3, 4)}, ["x"], alpha=alpha), lambda t: F.leaky_relu(t, alpha))


def test_prelu_with_per_channel_slope():
    slope = np.array([0.1, 0.25, -0.3], dtype=np.float32).reshape(3, 1, 1)
    check(OneOp("PRelu", {"x": _with_zeros(2, 3, 4, 4)}, ["x", "s"], constants={"s": slope}),
          lambda t: F.prelu(t, torch.from_numpy(slope.reshape(-1).astype(np.float64))))


def _relu6_input():
    x = _rand(2, 3, 5, 5) * 4
    x.reshape(-1)[::5] = 0.0
    x.reshape(-1)[1::9] = 6.0  # both bounds hit exactly
    return x


def test_clip_as_relu6_opset9_attributes():
    check(OneOp("Clip", {"x": _relu6_input()}, ["x"], opset=9, min=0.0, max=6.0), F.relu6)


def test_clip_as_relu6_opset13_inputs():
    lo, hi = np.array(0.0, np.float32), np.array(6.0, np.float32)
    check(OneOp("Clip", {"x": _relu6_input()}, ["x", "lo", "hi"], constants={"lo": lo, "hi": hi}), F.relu6)


def test_clip_with_only_a_minimum():
    lo = np.array(0.5, np.float32)
    check(OneOp("Clip", {"x": _relu6_input()}, ["x", "lo"], constants={"lo": lo}),
          lambda t: F.threshold(t, 0.5, 0.5))


def test_hard_sigmoid_and_hard_swish_like_pytorch():
    x = _rand(2, 3, 5, 5) * 4
    x.reshape(-1)[::6] = 3.0
    x.reshape(-1)[1::6] = -3.0
    check(OneOp("HardSigmoid", {"x": x}, ["x"], alpha=1 / 6, beta=0.5), F.hardsigmoid)
    check(OneOp("HardSwish", {"x": x}, ["x"], opset=14), F.hardswish)


def test_hard_sigmoid_default_slope_against_central_differences():
    op = OneOp("HardSigmoid", {"x": _rand(2, 3, 4) * 3}, ["x"], alpha=0.2, beta=0.5)
    assert reference_directional(op, op.seed(RNG), RNG) < 1e-5


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_opset20(approximate):
    check(OneOp("Gelu", {"x": _rand(2, 3, 4, 5)}, ["x"], opset=20, approximate=approximate),
          lambda t: F.gelu(t, approximate=approximate))


def test_celu_mish_thresholded_relu():
    x = _rand(2, 3, 4, 5)
    check(OneOp("Celu", {"x": x}, ["x"], opset=12, alpha=1.5), lambda t: F.celu(t, 1.5))
    check(OneOp("Mish", {"x": x}, ["x"], opset=18), F.mish)
    check(OneOp("ThresholdedRelu", {"x": x}, ["x"], alpha=0.5), lambda t: torch.where(t > 0.5, t, 0 * t))


# ---------------------------------------------------------------- reductions and softmax


@pytest.mark.parametrize("opset", [11, 13, 18])
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("op_type,fn", [("ReduceSum", torch.sum), ("ReduceMean", torch.mean)])
def test_sum_and_mean_reductions(op_type, fn, keepdims, opset):
    x = _rand(2, 3, 4, 5)
    axes = [1, -1]
    takes_input = opset >= (13 if op_type == "ReduceSum" else 18)
    if takes_input:
        op = OneOp(op_type, {"x": x}, ["x", "axes"], constants={"axes": np.array(axes, np.int64)}, opset=opset,
                   keepdims=keepdims)
    else:
        op = OneOp(op_type, {"x": x}, ["x"], opset=opset, axes=axes, keepdims=keepdims)
    check(op, lambda t: fn(t, dim=(1, 3), keepdim=bool(keepdims)))


def test_reduce_over_all_axes_and_noop_with_empty_axes():
    x = _rand(2, 3, 4)
    check(OneOp("ReduceMean", {"x": x}, ["x"], keepdims=0), lambda t: t.mean())
    check(OneOp("ReduceSum", {"x": x}, ["x"], opset=18, noop_with_empty_axes=1), lambda t: t)


@pytest.mark.parametrize("op_type,fn", [("ReduceMax", torch.amax), ("ReduceMin", torch.amin)])
def test_reduce_max_min_split_ties_like_amax(op_type, fn):
    x = RNG.integers(-2, 3, (2, 3, 4, 4)).astype(np.float32)
    check(OneOp(op_type, {"x": x}, ["x"], axes=[2, 3], keepdims=1), lambda t: fn(t, dim=(2, 3), keepdim=True))


def test_reduce_l2_and_sum_square():
    x = _rand(2, 3, 4)
    check(OneOp("ReduceL2", {"x": x}, ["x"], axes=[1], keepdims=0), lambda t: t.norm(dim=1))
    check(OneOp("ReduceSumSquare", {"x": x}, ["x"], axes=[2], keepdims=1), lambda t: (t * t).sum(2, keepdim=True))


@pytest.mark.parametrize("op_type,fn", [("Softmax", F.softmax), ("LogSoftmax", F.log_softmax)])
@pytest.mark.parametrize("axis", [1, -1])
def test_softmax_opset13_over_one_axis(op_type, fn, axis):
    check(OneOp(op_type, {"x": _rand(2, 5, 3, 4)}, ["x"], opset=13, axis=axis), lambda t: fn(t, dim=axis))


@pytest.mark.parametrize("op_type", ["Softmax", "LogSoftmax"])
def test_softmax_before_opset13_normalises_the_flattened_tail(op_type):
    op = OneOp(op_type, {"x": _rand(2, 5, 3, 4)}, ["x"], opset=11, axis=1)
    fn = F.softmax if op_type == "Softmax" else F.log_softmax
    check(op, lambda t: fn(t.reshape(2, -1), dim=1).reshape(t.shape))


def test_cast_between_float_types_passes_the_gradient_back():
    op = OneOp("Cast", {"x": _rand(2, 3)}, ["x"], to=helper.np_dtype_to_tensor_dtype(np.dtype(np.float64)))
    seed = np.random.default_rng(2).standard_normal((2, 3))
    np.testing.assert_allclose(op.vjp(seed)["x"], seed.astype(np.float32))


def test_erf_constant_matches_two_over_root_pi():
    op = OneOp("Erf", {"x": np.zeros((1, 1), np.float32)}, ["x"])
    assert op.vjp(np.ones((1, 1), np.float32))["x"][0, 0] == pytest.approx(2 / math.sqrt(math.pi), rel=1e-6)
