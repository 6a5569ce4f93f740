"""The census (issue 22): the models people export — torchvision's classifiers, transformers,
segmenters and detectors (at their raw heads), segmentation-models-pytorch, timm's hybrids —
exported by both torch.onnx exporters at a current opset and an older one. For each: every op on
the explained path has a backward rule, and the input gradient and a mid-network layer's gradient
equal PyTorch autograd on the original module in float64 (<= 1e-4 relative, or no further than
PyTorch's own float32 gradient is where the float32 reference is not stable: a deep ResNet's input
gradient, where a ReLU or MaxPool tie flips with rounding). CI runs ``QUICK`` (one member per
family and exporter quirk); ``CNNLENS_CENSUS=all`` runs all of it (``benchmarks/census.py`` writes
the table of docs/census.md from the same function)."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("torchvision")

from tests.census_models import CENSUS, EXPORTS, QUICK, examine  # noqa: E402

NAMES = list(CENSUS) if os.environ.get("CNNLENS_CENSUS") == "all" else list(QUICK)


def _needs(name: str) -> None:
    if name.startswith("smp."):
        pytest.importorskip("segmentation_models_pytorch")
    if name.startswith("timm."):
        pytest.importorskip("timm")


@pytest.mark.parametrize("exporter,opset", EXPORTS, ids=lambda v: str(v))
@pytest.mark.parametrize("name", NAMES)
def test_every_op_has_a_rule_and_gradients_equal_autograd(name, exporter, opset, tmp_path):
    _needs(name)
    row = examine(name, exporter, opset, str(tmp_path))
    assert row["missing"] == [], row["missing"]
    assert row["output_error"] <= 1e-4, row
    allowed = max(1e-4, 2 * row["torch_float32_error"])  # float32 itself is not stable beyond that
    assert row["input_error"] <= allowed, row
    assert row["layer_error"] <= allowed, row
