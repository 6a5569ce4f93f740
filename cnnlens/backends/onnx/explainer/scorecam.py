"""Score-CAM as a Loop: each pass takes ``batch_size`` of the batch's (image, channel) pairs, masks
the image with the channel (upsampled, min-max scaled), runs a copy of the model on the masked
images and keeps the explained scores; the channel weights are their softmax over channels
(METHODS.md)."""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from . import heads
from .context import Build, MethodRequest
from .loops import Body, Schedule


def scorecam(build: Build, request: MethodRequest) -> str:
    """(N, H, W): ``resize(ReLU(sum_k softmax_k(y(x * M_k)) A_k))``."""
    e, view = build.e, build.view
    layer = request.layers[0]
    channels, h, w = build.layer_shape(layer)
    _, height, width = build.image
    activations = build.nchw(build.tensor(layer))
    maps = e.op("Reshape", [activations, e.ints([-1, h, w])])  # (N * K, h, w): pair (n, k) is row n * K + k
    images = build.nchw(build.x)
    rows = e.op("Reshape", [build.seed, e.ints([0, -1])])  # (N, outputs): the explained score's weights
    # a model whose batch is fixed at 1 takes one masked image at a time
    schedule = Schedule(e, build.x, channels, 1 if view.per_image else int(request.options["batch_size"]))

    body = Body(view, e, "cnnlens_scorecam/")
    b = body.e
    found = body.carry()
    owner, channel, live = schedule.pairs(body)
    pair = b.op("Add", [b.mul(owner, b.ints([channels])), channel])
    masks = heads.normalize_masks(b, heads.resize_bilinear(b, b.op("Gather", [maps, pair], axis=0), (h, w),
                                                           (height, width)), rank=3)  # (P, H, W)
    masked = b.mul(b.op("Gather", [images, owner], axis=0), b.unsqueeze(masks, [1]))  # (P, C, H, W)
    outputs = body.forward(build.to_model_layout(masked, b))
    outputs = b.op("Reshape", [outputs, b.ints([0, -1])])
    if view.dtype(view.output_name) != np.float32:
        outputs = b.op("Cast", [outputs], to=1)
    scores = b.reduce("ReduceSum", b.mul(outputs, b.op("Gather", [rows, owner], axis=0)), [1], keepdims=True)
    hot = b.op("OneHot", [channel, b.ints([channels]), b.const(np.asarray([0.0, 1.0], dtype=np.float32), "one_hot")])
    updated = b.op("Add", [found, schedule.scatter(b, b.mul(hot, scores), owner, live)])  # (N, K)
    start = e.op("ConstantOfShape", [e.op("Concat", [schedule.count, e.ints([channels])], axis=0)],
                 value=numpy_helper.from_array(np.zeros(1, dtype=np.float32), "value"))
    scores = body.loop(e, schedule.trips, [start], [updated])[0]
    beta = heads.softmax(e, scores, axis=1)
    return heads.resize_bilinear(e, heads.weighted_sum(e, activations, beta), (h, w), (height, width))
