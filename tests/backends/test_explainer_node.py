"""The explainer in Node.js: examples/node/explain.js (onnxruntime-node, installed from npm) runs every model of
``explainer_cases`` and gives the maps cnnlens.explain gives in Python, to 1e-5 relative; the class fed as the
``target`` input too. Skipped where Node.js is missing (CI installs it)."""

from __future__ import annotations

import numpy as np
import pytest

from tests import explainer_cases as cases
from tests.node_tools import require_node, run_node_example

require_node()


@pytest.mark.parametrize("name", cases.case_names())
def test_node_gives_the_maps_of_cnnlens_explain(name):
    built = cases.built(name)
    (fed,) = built.feeds(built.x).values()
    cases.compare(built, run_node_example(built.path, fed))


def test_node_explains_the_classes_fed(tmp_path):
    import cnnlens

    built = cases.built("demo_densenet")
    path = str(tmp_path / "target.onnx")
    cnnlens.export_explainer(built.plain, path, ["gradcam", "guided_backprop"], target="input")
    classes = [1, 0, 0, 1, 1]
    outputs = run_node_example(path, built.x, target=classes)
    for method in ("gradcam", "guided_backprop"):
        want = cnnlens.explain(built.plain, built.x, method, target=classes).maps
        assert np.abs(outputs[f"map_{method}"] - want).max() <= cases.TOLERANCE * np.abs(want).max()
