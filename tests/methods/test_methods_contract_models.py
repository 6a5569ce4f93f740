"""The contract on the models people export besides classifiers: a segmenter (explained for one class
over its predicted region), a raw YOLO-style detection head (one class at one box) and a small
vision transformer (Grad-CAM and friends at a block's tokens), each on torch, ``.pt2`` and ONNX.

For every registered method: it runs where the backend's capabilities and the model allow, or it is
refused with a CnnlensError that names what is missing (``cam`` needs a GAP -> linear head, which
none of these has); the maps have the shape the method's kind says, are finite and not all zero;
``exp.target`` is the weights the target stood for (the same on every backend); and the ``.pt2`` and
ONNX maps equal the module's to 1e-4 relative (1e-3 where a method sums many forward passes of
float32 rounding, as occlusion and RISE on a transformer do)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
pytest.importorskip("onnxruntime")

import cnnlens  # noqa: E402
from cnnlens.adapters.export import to_exported, to_onnx  # noqa: E402
from cnnlens.core.methods import CAM, INPUT, LAYER_MAP, METHODS  # noqa: E402
from cnnlens.targets import detection, segmentation  # noqa: E402
from tests.helpers import images, one_torch_thread, rel_err  # noqa: E402
from tests.methods.test_targets_dense import Segmenter  # noqa: E402
from tests.methods.test_targets_detection import TinyYolo  # noqa: E402

FAST = {"rise": dict(masks=64), "smoothgrad": dict(samples=3), "integrated_gradients": dict(steps=4),
        "occlusion": dict(window=8, stride=8)}
KINDS = ["torch", "pt2", "onnx"]


def tiny_vit():
    torch.manual_seed(0)
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=3).eval()


#: name -> (model factory, input size, target, layer the CAMs and feature_maps use)
MODELS = {
    "segmenter": (Segmenter, 16, segmentation(1, np.ones((16, 16), np.float32)), "body.3"),
    "yolo": (TinyYolo, 32, detection((6.0, 6.0, 18.0, 18.0), 1, iou=0.2), "body.3"),
    "vit": (tiny_vit, 32, 2, "blocks.1.norm1"),
}


@pytest.fixture(scope="module", autouse=True)
def _threads():
    yield from one_torch_thread()


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("contract-models")
    found = {}
    for name, (factory, size, _, _) in MODELS.items():
        model = factory().eval()
        found[(name, "torch")] = cnnlens.load(model)
        found[(name, "pt2")] = cnnlens.load(to_exported(model, str(folder / f"{name}.pt2"), (3, size, size)))
        found[(name, "onnx")] = cnnlens.load(to_onnx(model, str(folder / f"{name}.onnx"), (3, size, size),
                                                     exporter="legacy"))
    return found


def _run(loaded, name, kind, method):
    _, size, target, layer = MODELS[name]
    x = images(2, 3, size, size, seed=7)
    options = dict(FAST.get(method, {}))
    if METHODS[method].layered and method != "cam":
        options["layer"] = layer
    return cnnlens.explain(loaded[(name, kind)], x, method, target=target, **options), x


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("name", list(MODELS))
def test_every_method_on_segmenters_detectors_and_transformers(loaded, name, method):
    results = {}
    for kind in KINDS:
        try:
            results[kind] = _run(loaded, name, kind, method)
        except cnnlens.CnnlensError as error:  # refused: by name, with what is missing
            assert method == "cam", f"{method} on {name} ({kind}) was refused: {error}"
            assert "linear" in str(error).lower() or "head" in str(error).lower(), str(error)
            results[kind] = None
    if method == "cam":
        return
    (ref, x), kind_of = results["torch"], METHODS[method].kind
    n, c, h, w = x.shape
    maps = ref.maps
    if kind_of == INPUT:
        assert maps.shape == (n, c, h, w)
    elif kind_of == CAM:
        assert maps.shape == (n, h, w)
    elif kind_of == LAYER_MAP and method == "feature_maps":
        assert maps.ndim == 4 and maps.shape[0] == n
    assert maps.dtype == np.float32 and np.isfinite(maps).all() and np.abs(maps).max() > 0
    if name == "vit" and method in ("gradcam", "feature_maps", "scorecam", "eigencam"):
        assert "4x4 grid; the first 1 token" in str(ref.extras["layer_reading"][0])
    # the ViT's LRP: the epsilon rule (1e-6) divides by its dense layers' outputs, some near 0, where the
    # runtimes' float32 matrix products round apart
    tolerance = 1e-3 if (name == "vit" and method in ("occlusion", "rise", "lrp")) else 1e-4
    for kind in ("pt2", "onnx"):
        other, _ = results[kind]
        np.testing.assert_array_equal(np.asarray(other.target), np.asarray(ref.target))
        assert other.maps.shape == maps.shape
        assert rel_err(other.maps, maps) <= tolerance, (kind, rel_err(other.maps, maps))
