"""Backward rules of matrix products (Gemm, MatMul) and of the ops that move values (Reshape,
Flatten, Squeeze, Unsqueeze, Transpose, Concat, Split, Slice, Pad, Gather, Expand), against
PyTorch autograd and the adjoint identity on ONNX Runtime's own forward; and what happens when an
op has no rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx import helper

from cnnlens.backends.onnx.autodiff import GradientRequest, UnsupportedOp, build
from cnnlens.backends.onnx.graph import Graph
from cnnlens.backends.onnx.shapes import infer
from tests.onnx_vjp import OneOp, adjoint_gap, check_against_torch

RNG = np.random.default_rng(0)


def _rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


check = check_against_torch


# ---------------------------------------------------------------- matrix products


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("opset", [9, 13])
def test_gemm_every_transpose_with_alpha_beta_and_a_broadcast_bias(trans_a, trans_b, opset):
    a = _rand(*((5, 3) if trans_a else (3, 5)))
    b = _rand(*((4, 5) if trans_b else (5, 4)))
    c = _rand(4)

    def fn(x, y, z):
        x = x.T if trans_a else x
        y = y.T if trans_b else y
        return 0.5 * x @ y + 2.0 * z
    check(OneOp("Gemm", {"a": a, "b": b, "c": c}, ["a", "b", "c"], opset=opset, alpha=0.5, beta=2.0,
                transA=trans_a, transB=trans_b), fn)


def test_gemm_with_constant_weights_as_a_linear_layer():
    x, w, bias = _rand(2, 6), _rand(4, 6), _rand(4)
    check(OneOp("Gemm", {"x": x}, ["x", "w", "b"], constants={"w": w, "b": bias}, transB=1),
          lambda t: F.linear(t, torch.from_numpy(w.astype(np.float64)), torch.from_numpy(bias.astype(np.float64))))


@pytest.mark.parametrize("a_shape,b_shape", [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (6, 4, 5)),
                                             ((3, 4), (2, 4, 5)), ((2, 6, 3, 1), (2, 6, 1, 3))])
def test_matmul_batched_with_broadcasting(a_shape, b_shape):
    check(OneOp("MatMul", {"a": _rand(*a_shape), "b": _rand(*b_shape)}, ["a", "b"]), torch.matmul)


def test_matmul_with_constant_right_operand():
    w = _rand(5, 3)
    check(OneOp("MatMul", {"x": _rand(2, 4, 5)}, ["x", "w"], constants={"w": w}),
          lambda t: t @ torch.from_numpy(w.astype(np.float64)))


@pytest.mark.parametrize("equation,shapes", [("bghid,bghjd->bghij", [(1, 2, 3, 4, 5), (1, 2, 3, 6, 5)]),
                                             ("bghij,bghjd->bghid", [(1, 2, 3, 4, 6), (1, 2, 3, 6, 5)]),
                                             ("ij,jk->ik", [(3, 4), (4, 5)]), ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)])])
def test_einsum_both_operands(equation, shapes):
    check(OneOp("Einsum", {"a": _rand(*shapes[0]), "b": _rand(*shapes[1])}, ["a", "b"], opset=12, equation=equation),
          lambda x, y: torch.einsum(equation, x, y))


def test_einsum_that_sums_an_index_away_alone_has_no_rule():
    op = OneOp("Einsum", {"a": _rand(3, 4)}, ["a"], opset=12, equation="ij->i")
    with pytest.raises(UnsupportedOp, match="sums one away alone"):
        op.built


# ---------------------------------------------------------------- moving values


def test_reshape_flatten_squeeze_unsqueeze():
    x = _rand(2, 3, 1, 4)
    check(OneOp("Reshape", {"x": x}, ["x", "s"], constants={"s": np.array([2, -1], np.int64)}), lambda t: t.reshape(2, -1))
    check(OneOp("Flatten", {"x": x}, ["x"], axis=2), lambda t: t.reshape(6, 4))
    check(OneOp("Squeeze", {"x": x}, ["x"], opset=11, axes=[2]), lambda t: t.squeeze(2))
    check(OneOp("Squeeze", {"x": x}, ["x", "a"], constants={"a": np.array([2], np.int64)}), lambda t: t.squeeze(2))
    check(OneOp("Unsqueeze", {"x": x}, ["x"], opset=11, axes=[0, 4]), lambda t: t[None].unsqueeze(4))
    check(OneOp("Unsqueeze", {"x": x}, ["x", "a"], constants={"a": np.array([-1], np.int64)}), lambda t: t.unsqueeze(-1))


@pytest.mark.parametrize("perm", [[0, 2, 3, 1], [3, 1, 0, 2], None])
def test_transpose(perm):
    fn = (lambda t: t.permute(*perm)) if perm else (lambda t: t.permute(3, 2, 1, 0))
    check(OneOp("Transpose", {"x": _rand(2, 3, 4, 5)}, ["x"], **({"perm": perm} if perm else {})), fn)


def test_concat_of_data_and_constants_along_channels():
    a, b, c = _rand(2, 3, 4), _rand(2, 1, 4), _rand(2, 2, 4)
    check(OneOp("Concat", {"a": a, "b": b}, ["a", "c", "b"], constants={"c": c}, axis=1),
          lambda x, y: torch.cat([x, torch.from_numpy(c.astype(np.float64)), y], 1))


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_split_with_an_unused_part(opset):
    x = _rand(2, 7, 3)
    kwargs = {"split": [2, 4, 1]} if opset < 13 else {}
    inputs = ["x"] if opset < 13 else ["x", "sizes"]
    constants = {} if opset < 13 else {"sizes": np.array([2, 4, 1], np.int64)}
    # only parts 0 and 2 reach the output; part 1 gets no gradient
    post = lambda outs: [helper.make_node("Concat", [outs[2], outs[0]], ["joined"], axis=1)]  # noqa: E731
    op = OneOp("Split", {"x": x}, inputs, constants=constants, opset=opset, outputs=3, post=post, axis=1, **kwargs)
    check(op, lambda t: torch.cat([t[:, 6:], t[:, :2]], 1))


SLICES = [([1], [3], [1], None), ([0, 2], [-1, 100], [1, 2], None), ([5], [0], [2], [-2]), ([-1], [-100], [1], [-1]),
          ([0], [7], [-1], [3]), ([1, 0], [2, 3], [0, 3], [1, 2])]


@pytest.mark.parametrize("starts,ends,axes,steps", SLICES)
def test_slice_with_steps_negative_indices_and_clamping(starts, ends, axes, steps):
    x = _rand(3, 6, 7, 4)
    constants = {"s": np.array(starts, np.int64), "e": np.array(ends, np.int64), "a": np.array(axes, np.int64)}
    inputs = ["x", "s", "e", "a"]
    if steps is not None:
        constants["p"] = np.array(steps, np.int64)
        inputs.append("p")
    op = OneOp("Slice", {"x": x}, inputs, constants=constants)
    assert adjoint_gap(op, RNG) < 1e-6
    assert np.abs(op.vjp(op.seed(RNG))["x"]).sum() > 0


def test_slice_opset9_attributes():
    op = OneOp("Slice", {"x": _rand(3, 6)}, ["x"], opset=9, starts=[1, 2], ends=[3, 5], axes=[0, 1])
    check(op, lambda t: t[1:3, 2:5])


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad_every_mode(mode):
    x = _rand(2, 3, 5, 6)
    pads = np.array([0, 0, 2, 1, 0, 0, 1, 3], np.int64)
    op = OneOp("Pad", {"x": x}, ["x", "p"], constants={"p": pads}, opset=19, mode=mode)
    assert adjoint_gap(op, RNG) < 1e-6
    if mode != "wrap":
        torch_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}[mode]
        check(op, lambda t: F.pad(t, (1, 3, 2, 1), mode=torch_mode))


def test_pad_negative_amounts_crop_and_opset9_attributes():
    x = _rand(2, 3, 5, 6)
    crop = OneOp("Pad", {"x": x}, ["x", "p"], constants={"p": np.array([0, 0, -1, 2, 0, 0, 1, -2], np.int64)})
    assert adjoint_gap(crop, RNG) < 1e-6
    old = OneOp("Pad", {"x": x}, ["x"], opset=9, pads=[0, 0, 1, 1, 0, 0, 2, 0], value=3.0)
    check(old, lambda t: F.pad(t, (1, 0, 1, 2), value=3.0))


def test_pad_with_axes_input_opset18():
    x = _rand(2, 3, 5)
    op = OneOp("Pad", {"x": x}, ["x", "p", "", "a"],
               constants={"p": np.array([1, 2, 0, 1], np.int64), "a": np.array([2, 1], np.int64)}, opset=18)
    check(op, lambda t: F.pad(t, (1, 0, 2, 1)))


def test_gather_with_constant_indices_repeats_add_up():
    x = _rand(2, 5, 3)
    idx = np.array([4, 0, 4, -1], np.int64)
    check(OneOp("Gather", {"x": x}, ["x", "i"], constants={"i": idx}, axis=1), lambda t: t[:, [4, 0, 4, 4]])
    scalar = np.array(2, np.int64)
    check(OneOp("Gather", {"x": x}, ["x", "i"], constants={"i": scalar}, axis=2), lambda t: t[:, :, 2])


def test_expand():
    x = _rand(3, 1, 4)
    check(OneOp("Expand", {"x": x}, ["x", "s"], constants={"s": np.array([2, 3, 5, 4], np.int64)}),
          lambda t: t.expand(2, 3, 5, 4))


# ---------------------------------------------------------------- ops without a rule


def test_an_op_without_a_rule_is_named_with_its_node():
    x = _rand(2, 3)
    op = OneOp("CumSum", {"x": x}, ["x", "axis"], constants={"axis": np.array(1, np.int64)})
    with pytest.raises(UnsupportedOp, match=r"op CumSum \(node 'op'\) has no gradient rule"):
        op.built


def test_a_pool_whose_output_size_onnx_runtime_and_shape_inference_disagree_on_is_refused():
    x = _rand(1, 1, 4, 3)
    op = OneOp("MaxPool", {"x": x}, ["x"], kernel_shape=[1, 1], strides=[2, 1], ceil_mode=1)
    assert op.forward().shape[2] == 2  # the last window would start at row 4, beyond the input: dropped
    with pytest.raises(UnsupportedOp, match="ONNX shape inference gives its output the spatial size"):
        op.built


def test_nodes_off_the_path_need_no_rule():
    """A CumSum on a side branch that does not reach the scores does not stop the gradient."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("CumSum", ["x", "ax"], ["side"]),
             helper.make_node("Mul", ["r", "two"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [2, 3])],
                              [helper.make_tensor_value_info("y", 1, None), helper.make_tensor_value_info("side", 1, None)],
                              [helper.make_tensor("ax", 7, [], [1]), helper.make_tensor("two", 1, [], [2.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    types = infer(model)
    built = build(model, Graph(model), "y", GradientRequest(), types.shapes, types.dtypes)
    assert "CumSum" in [n.op_type for n in built.model.graph.node]  # still there, not differentiated
