"""Integrated Gradients as a Loop: each pass takes ``batch_size`` of the batch's (image, path point)
pairs, runs a copy of the model and its plain backward chain on them, and adds their weighted
gradients to each image's running total; the map is ``(x - baseline) * total`` (METHODS.md)."""

from __future__ import annotations

import numpy as np
from onnx import helper

from ....core.integration import integration_points
from ....core.occlusion import as_baseline
from .context import Build, MethodRequest
from .loops import Body, Schedule


def _baseline(build: Build, baseline) -> np.ndarray:
    """The reference image as a float32 constant that broadcasts against images in the model's layout."""
    reference = as_baseline(baseline, build.image)  # () , (C, 1, 1) or (C, H, W), NCHW
    if reference.ndim == 3 and build.view.layout != (0, 1, 2, 3):
        reference = reference.transpose([build.view.layout[i] - 1 for i in (1, 2, 3)])
    return np.ascontiguousarray(reference, dtype=np.float32)


def integrated_gradients(build: Build, request: MethodRequest) -> str:
    """(N, C, H, W): ``delta * sum_i w_i grad(baseline + a_i delta)`` with ``delta = x - baseline``."""
    e, view = build.e, build.view
    options = request.options
    steps, rule = int(options["steps"]), str(options["rule"])
    alphas, weights = integration_points(rule, steps)
    alphas = e.const(alphas.astype(np.float32), "ig_alphas")
    weights = e.const(weights.astype(np.float32), "ig_weights")
    x = build.x if view.input_dtype == np.float32 else e.op("Cast", [build.x], to=1)
    reference = e.const(_baseline(build, options["baseline"]), "ig_baseline")
    delta = e.op("Sub", [x, reference])
    image = list(view.image)
    # a model whose batch is fixed at 1 takes one point at a time
    schedule = Schedule(e, build.x, steps, 1 if view.per_image else int(options["batch_size"]))

    body = Body(view, e, "cnnlens_ig/")
    b = body.e
    total = body.carry()
    owner, step, live = schedule.pairs(body)
    a = b.op("Reshape", [b.op("Gather", [alphas, step], axis=0), b.ints([-1] + [1] * len(image))])
    points = b.op("Add", [reference, b.mul(a, b.op("Gather", [delta, owner], axis=0))])  # (P, ...) model layout
    if view.input_dtype != np.float32:
        points = b.op("Cast", [points], to=helper.np_dtype_to_tensor_dtype(view.input_dtype))
    body.forward(points)
    gradient = body.backward(b.op("Gather", [build.seed, owner], axis=0))  # pair p explains its image's target
    if view.input_dtype != np.float32:
        gradient = b.op("Cast", [gradient], to=1)
    rows = b.op("Reshape", [gradient, b.ints([0, -1])])
    w = b.mul(b.op("Gather", [weights, step], axis=0), live)
    updated = b.op("Add", [total, schedule.scatter(b, rows, owner, w)])
    start = e.op("Reshape", [e.zeros_like(x, np.dtype(np.float32)), e.ints([0, -1])])
    total_final = body.loop(e, schedule.trips, [start], [updated])[0]
    return build.like(e.mul(delta, e.reshape_like(total_final, x)), build.x)
