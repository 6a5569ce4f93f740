"""Models shared by the ONNX test files: a hand-built ONNX graph (opset 9, batch fixed at 1, weights made by
Constant / Identity / ConstantOfShape nodes, initializers listed as inputs, slashed names, a Softmax end)
and its computation re-done in torch."""

from __future__ import annotations

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper


def hand_weights():
    rng = np.random.default_rng(7)
    w = lambda *s: (0.4 * rng.standard_normal(s)).astype(np.float32)  # noqa: E731
    return dict(w1=w(4, 3, 3, 3), b1=w(4), w2=w(6, 4, 3, 3), b2=0.1, wfc=w(5, 6), bfc=w(5))


def hand_model():
    """opset 9, batch fixed at 1, initializers also listed as inputs, a Constant weight, an Identity
    weight, a ConstantOfShape bias, slashed names, and Softmax at the end."""
    p = hand_weights()
    inits = [
        numpy_helper.from_array(p["b1"], "features.conv1.bias"),
        numpy_helper.from_array(p["w2"], "features.conv2.weight"),
        numpy_helper.from_array(np.array([6], np.int64), "/features/conv2/bias_shape"),
        numpy_helper.from_array(p["wfc"], "classifier.weight"),
        numpy_helper.from_array(p["bfc"], "classifier.bias"),
    ]
    nodes = [
        helper.make_node("Constant", [], ["/features/conv1/weight"], name="/features/conv1/Constant",
                         value=numpy_helper.from_array(p["w1"], "w1")),
        helper.make_node("Identity", ["features.conv2.weight"], ["/features/conv2/weight"],
                         name="/features/conv2/Identity"),
        helper.make_node("ConstantOfShape", ["/features/conv2/bias_shape"], ["/features/conv2/bias"],
                         name="/features/conv2/ConstantOfShape",
                         value=numpy_helper.from_array(np.array([p["b2"]], np.float32), "v")),
        helper.make_node("Conv", ["input", "/features/conv1/weight", "features.conv1.bias"],
                         ["/features/conv1/Conv_output_0"], name="/features/conv1/Conv",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["/features/conv1/Conv_output_0"], ["/features/relu1/Relu_output_0"],
                         name="/features/relu1/Relu"),
        helper.make_node("Conv", ["/features/relu1/Relu_output_0", "/features/conv2/weight", "/features/conv2/bias"],
                         ["/features/conv2/Conv_output_0"], name="/features/conv2/Conv",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["/features/conv2/Conv_output_0"], ["/features/relu2/Relu_output_0"],
                         name="/features/relu2/Relu"),
        helper.make_node("GlobalAveragePool", ["/features/relu2/Relu_output_0"], ["/pool/GlobalAveragePool_output_0"],
                         name="/pool/GlobalAveragePool"),
        helper.make_node("Flatten", ["/pool/GlobalAveragePool_output_0"], ["/Flatten_output_0"], name="/Flatten",
                         axis=1),
        helper.make_node("Gemm", ["/Flatten_output_0", "classifier.weight", "classifier.bias"],
                         ["/classifier/Gemm_output_0"], name="/classifier/Gemm", transB=1),
        helper.make_node("Softmax", ["/classifier/Gemm_output_0"], ["probs"], name="/Softmax", axis=1),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])] + [
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    graph = helper.make_graph(nodes, "hand", inputs, [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 5])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], producer_name="hand")
    model.ir_version = 4
    onnx.checker.check_model(model)
    return model


def hand_forward(t: torch.Tensor):
    """The hand-built graph's computation in torch, differentiable: (probabilities, logits, relu1, relu2)."""
    p = {k: torch.as_tensor(v, dtype=t.dtype) for k, v in hand_weights().items()}
    a1 = torch.relu(F.conv2d(t, p["w1"], p["b1"], padding=1))
    a2 = torch.relu(F.conv2d(a1, p["w2"], torch.full((6,), float(p["b2"]), dtype=t.dtype), padding=1, stride=2))
    logits = a2.mean(dim=(2, 3)) @ p["wfc"].T + p["bfc"]
    return torch.softmax(logits, 1), logits, a1, a2


def hand_torch(x):
    """The hand-built graph's computation in torch: (probabilities, logits, relu2 activations) as arrays."""
    with torch.no_grad():
        probs, logits, _, a2 = hand_forward(torch.from_numpy(np.asarray(x, dtype=np.float32)))
    return probs.numpy(), logits.numpy(), a2.numpy()


def lrn_net_weights():
    rng = np.random.default_rng(17)
    w = lambda *s: (0.3 * rng.standard_normal(s)).astype(np.float32)  # noqa: E731
    return dict(w1=w(8, 3, 5, 5), b1=w(8), w2=w(12, 4, 3, 3), b2=w(12), wfc=w(6, 108), bfc=w(6))


def lrn_net_model():
    """The ONNX model zoo's AlexNet pattern, built by hand as its Caffe2 converter wrote it: opset 9, batch
    fixed at 1 (a Reshape to [1, -1]), native LRN nodes, a grouped convolution, Dropout and a Softmax end."""
    p = lrn_net_weights()
    inits = [numpy_helper.from_array(v, k) for k, v in p.items()]
    inits.append(numpy_helper.from_array(np.array([1, -1], np.int64), "flat_shape"))
    nodes = [
        helper.make_node("Conv", ["data_0", "w1", "b1"], ["conv1"], name="conv1", kernel_shape=[5, 5], strides=[2, 2],
                         pads=[2, 2, 2, 2]),
        helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
        helper.make_node("LRN", ["relu1"], ["norm1"], name="norm1", size=5, alpha=1e-3, beta=0.75, bias=2.0),
        helper.make_node("MaxPool", ["norm1"], ["pool1"], name="pool1", kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("Conv", ["pool1", "w2", "b2"], ["conv2"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                         group=2),
        helper.make_node("Relu", ["conv2"], ["relu2"], name="relu2"),
        helper.make_node("LRN", ["relu2"], ["norm2"], name="norm2", size=3, alpha=1e-4, beta=0.75, bias=1.0),
        helper.make_node("MaxPool", ["norm2"], ["pool2"], name="pool2", kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("Reshape", ["pool2", "flat_shape"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wfc", "bfc"], ["fc"], name="fc", transB=1),
        helper.make_node("Dropout", ["fc"], ["drop"], name="drop", ratio=0.5),
        helper.make_node("Softmax", ["drop"], ["prob_1"], name="prob", axis=1),
    ]
    graph = helper.make_graph(nodes, "lrn_net", [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("prob_1", TensorProto.FLOAT, [1, 6])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], producer_name="hand")
    model.ir_version = 4
    onnx.checker.check_model(model)
    return model


def lrn_net_forward(t: torch.Tensor, relu=torch.relu):
    """The LRN network in torch, image by image as its fixed batch demands: (probabilities, relu2)."""
    p = {k: torch.as_tensor(v, dtype=t.dtype) for k, v in lrn_net_weights().items()}
    a1 = F.local_response_norm(relu(F.conv2d(t, p["w1"], p["b1"], stride=2, padding=2)), 5, 1e-3, 0.75, 2.0)
    a2 = relu(F.conv2d(F.max_pool2d(a1, 3, 2), p["w2"], p["b2"], padding=1, groups=2))
    flat = F.max_pool2d(F.local_response_norm(a2, 3, 1e-4, 0.75, 1.0), 3, 2).reshape(len(t), -1)
    return torch.softmax(flat @ p["wfc"].T + p["bfc"], 1), a2
