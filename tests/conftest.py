"""Fixtures shared by test files in several folders.

The tests are grouped by subject: ``methods/`` (the maths of each method and the NumPy core, against
independent references), ``backends/`` (torch, TorchScript, torch.export and ONNX Runtime, ONNX
gradients, the exported explainer in Python, Node.js and the browser), ``audit/`` (the dataset audit,
SpRAy, Clever Hans), ``cli/`` (the command end to end), ``adapters/`` (images, pictures, the HTML
report, the demo's data, the browser's preprocessing) and ``project/`` (the public API, errors and
long-running use, the import graph, types). Helpers shared across folders are modules of this folder,
imported as ``tests.<module>`` (``pythonpath = ["."]`` in pyproject.toml): ``helpers`` (images, seeded
models, tolerances, fixture bodies), ``onnx_models``, ``onnx_vjp``, ``explainer_cases``,
``audit_helpers``, ``browser``, ``node_tools``. Test files are imported by their base name (pytest's
default import mode; there is no ``__init__.py``), so each test file's name is unique in the tree.
"""

import pytest

from tests.browser import headless_chromium


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium per test module (skipped where Chromium or Selenium is missing)."""
    yield from headless_chromium()
