"""Targets for dense outputs (``cnnlens.targets``): a segmentation class over a mask or its
predicted region, against hand-computed weights, PyTorch autograd of the same sum, an independent
plain-torch Grad-CAM, and the same maps from the model's ONNX export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import cnnlens
from cnnlens.targets import segmentation
from tests.helpers import images, rel_err


class Segmenter(nn.Module):
    """conv-ReLU-conv(stride 2)-ReLU, a 1x1 classifier over 3 classes, upsampled back: (N, 3, H, W)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                                  nn.ReLU())
        self.classes = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        return nn.functional.interpolate(self.classes(self.body(x)), size=x.shape[2:], mode="bilinear",
                                         align_corners=False)


X = images(3, 3, 16, 16, seed=4)


def test_the_weights_are_the_mask_at_the_class():
    model = Segmenter().eval()
    mask = np.zeros((16, 16), np.float32)
    mask[4:9, 2:12] = 1
    exp = cnnlens.explain(model, X, "saliency", target=segmentation(2, mask))
    expected = np.zeros((3, 3, 16, 16), np.float32)
    expected[:, 2] = mask
    np.testing.assert_array_equal(exp.target, expected)
    xt = torch.from_numpy(X).requires_grad_(True)
    score = (model(xt)[:, 2] * torch.from_numpy(mask)).sum()
    grad, = torch.autograd.grad(score, [xt])
    assert rel_err(exp.maps, grad.numpy()) < 1e-6  # saliency: the input gradient of the explained sum


def test_by_default_the_predicted_region_and_gradcam_as_plain_torch_computes_it():
    model = Segmenter().eval()
    with torch.no_grad():
        out = model(torch.from_numpy(X)).numpy()
    category = int(np.bincount(out.argmax(axis=1).ravel()).argmax())  # a class predicted in every image
    region = (out.argmax(axis=1) == category).astype(np.float32)
    assert all(region[i].any() for i in range(len(X)))
    exp = cnnlens.explain(model, X, "gradcam", layer="body.3", target=segmentation(category))
    np.testing.assert_array_equal(exp.target[:, category], region)
    # Grad-CAM by hand on the same sum: ReLU(sum_k mean_ij(d score / dA_k) A_k), bilinear to the input
    kept = {}
    hook = model.body[3].register_forward_hook(lambda m, i, o: kept.__setitem__("a", o))
    xt = torch.from_numpy(X)
    score = (model(xt)[:, category] * torch.from_numpy(region)).sum()
    hook.remove()
    grad, = torch.autograd.grad(score, [kept["a"]])
    cam = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * kept["a"]).sum(1, keepdim=True))
    cam = nn.functional.interpolate(cam, size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    assert rel_err(exp.maps, cam.detach().numpy()) < 1e-5


def test_the_same_maps_from_the_onnx_export(tmp_path):
    pytest.importorskip("onnxruntime")
    from cnnlens.adapters.export import to_onnx

    model = Segmenter().eval()
    path = to_onnx(model, str(tmp_path / "segmenter.onnx"), (3, 16, 16), exporter="legacy")
    target = segmentation(1, np.ones((16, 16)))
    for method in ("gradcam", "saliency", "occlusion"):
        options = {"window": 4, "stride": 4} if method == "occlusion" else {}
        a = cnnlens.explain(model, X, method, target=target, **options)
        b = cnnlens.explain(path, X, method, target=target, **options)
        np.testing.assert_array_equal(a.target, b.target)
        assert rel_err(b.maps, a.maps) < 1e-4, method


def test_refusals_say_what_to_do():
    model = Segmenter().eval()
    with pytest.raises(cnnlens.TargetError, match="predicted nowhere"):
        blank = np.zeros((1, 3, 16, 16), np.float32)
        cnnlens.explain(class_zero_everywhere(model), blank, "saliency", target=segmentation(2))
    with pytest.raises(cnnlens.TargetError, match="spatial size is"):
        cnnlens.explain(model, X, "saliency", target=segmentation(1, np.ones((8, 8))))
    with pytest.raises(cnnlens.TargetError, match="out of range"):
        cnnlens.explain(model, X, "saliency", target=segmentation(5))
    with pytest.raises(cnnlens.TargetError, match="per-pixel output"):
        cnnlens.explain(nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4)).eval(), X, "saliency",
                        target=segmentation(1))


def class_zero_everywhere(model: nn.Module) -> nn.Module:
    """``model`` with class 0 everywhere: a constant large score for class 0 (so class 2 is predicted nowhere)."""
    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            out = self.inner(x)
            return out + torch.tensor([100.0, 0.0, 0.0]).view(1, 3, 1, 1)
    return Fixed().eval()


def test_the_metrics_take_the_same_target():
    """deletion / insertion scores perturbed images with the weights the target stands for."""
    from cnnlens.metrics import deletion_insertion

    model = Segmenter().eval()
    target = segmentation(1, np.ones((16, 16)))
    exp = cnnlens.explain(model, X, "saliency", target=target)
    by_target = deletion_insertion(model, X, exp.maps, target=target, steps=4)
    by_weights = deletion_insertion(model, X, exp.maps, target=exp.target, steps=4)
    for key in ("deletion", "insertion"):
        np.testing.assert_allclose(by_target[key], by_weights[key], rtol=1e-6)


def test_the_command_line_takes_a_class_over_a_mask_or_its_region(tmp_path, capsys):
    from PIL import Image

    from cnnlens.adapters.images import prepare
    from cnnlens.cli import main

    rng = np.random.default_rng(5)
    paths = []
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / name)
        paths.append(str(tmp_path / name))
    mask = np.zeros((16, 16), np.float32)
    mask[2:10, 4:14] = 1
    np.save(tmp_path / "mask.npy", mask)
    Image.fromarray((mask * 255).astype(np.uint8)).save(tmp_path / "mask.png")
    flat = ["--size", "16", "16", "--mean", "0", "0", "0", "--std", "1", "1", "1"]
    x, _ = prepare(paths, (16, 16), mean=(0, 0, 0), std=(1, 1, 1))
    model = "tests.methods.test_targets_dense:Segmenter"
    for given in ("mask.npy", "mask.png"):
        out = tmp_path / given.replace(".", "_")
        assert main(["explain", model, *paths, "-m", "gradcam", "--target-class", "1", "--target-mask",
                     str(tmp_path / given), "--out", str(out), "--save-maps", *flat]) == 0
        want = cnnlens.explain(Segmenter().eval(), x, "gradcam", target=segmentation(1, mask)).maps
        np.testing.assert_allclose(np.load(out / "a_gradcam.npy"), want[0], rtol=1e-5, atol=1e-7)
    capsys.readouterr()
    assert main(["explain", model, *paths, "-m", "saliency", "--target", "1", "--target-class", "1", *flat]) == 2
    assert "give one of --target, --target-weights and --target-class" in capsys.readouterr().err
    assert main(["explain", model, *paths, "-m", "saliency", "--target-mask", str(tmp_path / "mask.npy"), *flat]) == 2
    assert "go with --target-class" in capsys.readouterr().err


def test_pytorch_grad_cams_semantic_segmentation_target_gives_the_same_maps():
    """torchvision's LR-ASPP (seeded random weights, BN statistics drawn) through its ``out`` output:
    cnnlens's ``segmentation(c)`` against pytorch-grad-cam's ``SemanticSegmentationTarget(c, region)``
    with the same predicted region, Grad-CAM and HiResCAM at a backbone block (its raw CAM taken
    before its min-max and cv2 resize, as in test_methods_cam_variants.py)."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    torchvision = pytest.importorskip("torchvision")
    import pytorch_grad_cam.base_cam as pgc_base
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    from tests.helpers import randomise_batchnorm
    from tests.methods.test_methods_cam_variants import upsample

    torch.manual_seed(0)
    net = randomise_batchnorm(torchvision.models.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=4), 3).eval()

    class Out(nn.Module):  # pytorch-grad-cam takes a tensor output; cnnlens picks it with output="out"
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x)["out"]

    model = Out().eval()
    x = images(2, 3, 64, 96, seed=9)
    with torch.no_grad():
        out = model(torch.from_numpy(x)).numpy()
    category = int(np.bincount(out.argmax(axis=1).ravel()).argmax())
    regions = (out.argmax(axis=1) == category).astype(np.float32)
    assert all(r.any() for r in regions)
    backend = cnnlens.load(net, output="out")
    layer = "backbone.14"  # (at backbone.12 the Grad-CAM of this random net is all zero: nothing to compare)
    recorded = []

    def record(cam, target_size=None):
        if target_size is not None:
            recorded.append(np.array(cam, dtype=np.float32, copy=True))
        return cam

    original = pgc_base.scale_cam_image
    pgc_base.scale_cam_image = record
    try:
        for method, peer in (("gradcam", pgc.GradCAM), ("hirescam", pgc.HiResCAM)):
            exp = cnnlens.explain(backend, x, method, layer=layer, target=segmentation(category))
            np.testing.assert_array_equal(exp.target[:, category], regions)
            recorded.clear()
            cam = peer(model, [net.backbone[layer.split(".")[1]]])
            try:
                cam(torch.from_numpy(x), [SemanticSegmentationTarget(category, r) for r in regions])
            finally:
                cam.activations_and_grads.release()
            ref = upsample(recorded[0], (64, 96))
            for i in range(len(x)):
                assert np.abs(ref[i]).max() > 0
                assert rel_err(exp.maps[i], ref[i]) <= 1e-5, (method, i)
    finally:
        pgc_base.scale_cam_image = original
