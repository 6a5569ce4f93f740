"""The CAM family and feature_maps on transformers: token tensors and channels-last maps, on torch,
``.pt2`` and ONNX, and in the explainer file.

Parity with pytorch-grad-cam 1.5 given its documented ``reshape_transform`` (its raw layer-resolution
CAM taken before its min-max and cv2 resize, as in test_methods_cam_variants.py): timm's ViT-Tiny
(class token) on a non-square 96 x 160 image (a 6 x 10 grid, so a transposed grid cannot pass),
DeiT-Tiny distilled (class + distillation tokens), torchvision's Swin-T (channels-last (N, h, w, C)
blocks). Score-CAM and Ablation-CAM, which pytorch-grad-cam defines differently on tokens (its
ablation writes min - 1e7 on signed layers), are checked against plain-torch reimplementations of
cnnlens's definitions. Seeded random weights throughout.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")
pgc = pytest.importorskip("pytorch_grad_cam")
pytest.importorskip("onnxruntime")

import pytorch_grad_cam.base_cam as pgc_base  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

import cnnlens  # noqa: E402
from cnnlens.adapters.export import to_onnx  # noqa: E402
from cnnlens.core.errors import LayerError  # noqa: E402
from tests.helpers import check_per_image, images, one_torch_thread, rel_err  # noqa: E402
from tests.methods.test_methods_cam_variants import GRADIENT_PEERS, eigen_reference, upsample  # noqa: E402

H, W = 96, 160           # ViT: a 6 x 10 patch grid
SWIN_H, SWIN_W = 160, 224  # Swin-T: a 5 x 7 last stage
VIT_LAYER = "blocks.11.norm1"  # pytorch-grad-cam's recommended ViT layer: the last block's first norm
RTOL = 1e-5
MEASURED: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _threads():
    yield from one_torch_thread()


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=(H, W)).eval()


@pytest.fixture(scope="module")
def x():
    return images(2, 3, H, W, seed=5)


@pytest.fixture(scope="module")
def vit_files(vit, x, tmp_path_factory):
    """The ViT as an ONNX file and as a ``.pt2`` program with a dynamic batch."""
    folder = tmp_path_factory.mktemp("vit")
    onnx_path = to_onnx(vit, str(folder / "vit.onnx"), input_shape=(3, H, W))
    program = torch.export.export(vit, (torch.from_numpy(x),),
                                  dynamic_shapes=({0: torch.export.Dim("n", min=1, max=64)},))
    torch.export.save(program, str(folder / "vit.pt2"))
    return {"onnx": onnx_path, "pt2": str(folder / "vit.pt2")}


@pytest.fixture
def raw_peer(monkeypatch):
    """pytorch-grad-cam's per-layer CAM as handed to ``scale_cam_image`` (no min-max, no cv2)."""
    recorded = []

    def record(cam, target_size=None):
        if target_size is not None:
            recorded.append(np.array(cam, dtype=np.float32, copy=True))
        return cam

    monkeypatch.setattr(pgc_base, "scale_cam_image", record)
    return recorded


def vit_transform(grid, drop):
    """pytorch-grad-cam's documented ``vit_reshape_transform``, for any grid and token count."""
    def transform(tensor):
        return tensor[:, drop:, :].reshape(tensor.size(0), grid[0], grid[1], tensor.size(2)).permute(0, 3, 1, 2)
    return transform


def swin_transform(tensor):
    """pytorch-grad-cam's ``swinT_reshape_transform`` for a channels-last block output."""
    return tensor.permute(0, 3, 1, 2)


def peer_cam(model, peer_cls, module, x, classes, recorded, transform):
    """pytorch-grad-cam's layer-resolution CAM and the activations (reshaped) it saw."""
    recorded.clear()
    cam = peer_cls(model, [module], reshape_transform=transform)
    try:
        cam(torch.from_numpy(x), [ClassifierOutputTarget(int(c)) for c in classes])
        activations = cam.activations_and_grads.activations[0].numpy().copy()
    finally:
        cam.activations_and_grads.release()
    return (recorded[0] if recorded else None), activations


# ---------------------------------------------------------------- against pytorch-grad-cam


@pytest.mark.parametrize("method", [m for m in GRADIENT_PEERS if m != "xgradcam"] + ["eigencam"])
def test_vit_cams_match_pytorch_grad_cam(vit, x, raw_peer, method):
    # (XGrad-CAM divides by sum_ij A_k, which on LayerNorm's signed outputs nearly cancels: float32
    # and float64 legitimately differ there, as on densenet121's denseblock3)
    # Eigen-CAM at the residual stream: its sign follows the channel sum, which on a LayerNorm output
    # with untrained affine parameters (weight 1, bias 0) is zero at every token, so undefined there
    layer = "blocks.10" if method == "eigencam" else VIT_LAYER
    exp = cnnlens.explain(vit, x, method, layer=layer)
    assert "6x10 grid; the first 1 token" in str(exp.extras["layer_reading"][0])
    peer = pgc.EigenCAM if method == "eigencam" else GRADIENT_PEERS[method]
    module = dict(vit.named_modules())[layer]
    raw, activations = peer_cam(vit, peer, module, x, exp.target, raw_peer, vit_transform((6, 10), 1))
    assert activations.shape == (2, 192, 6, 10)
    ref = eigen_reference(activations) if method == "eigencam" else raw
    check_per_image(("vit", method), exp.maps, upsample(ref, (H, W)), RTOL, MEASURED)


def test_deit_distilled_drops_both_extra_tokens(raw_peer):
    torch.manual_seed(1)
    deit = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, num_classes=10, img_size=(64, 96))
    deit.eval()
    x = images(2, 3, 64, 96, seed=2)
    exp = cnnlens.explain(deit, x, "gradcam", layer="blocks.11.norm1")
    assert "4x6 grid; the first 2 tokens" in str(exp.extras["layer_reading"][0])
    raw, _ = peer_cam(deit, pgc.GradCAM, deit.blocks[11].norm1, x, exp.target, raw_peer, vit_transform((4, 6), 2))
    check_per_image(("deit", "gradcam"), exp.maps, upsample(raw, (64, 96)), RTOL, MEASURED)


@pytest.fixture(scope="module")
def swin():
    torch.manual_seed(0)
    return torchvision.models.swin_t(weights=None, num_classes=10).eval()


@pytest.mark.parametrize("layer, grid", [("features.7.1.norm2", (5, 7)), ("features.5", (10, 14))])
def test_swin_channels_last_blocks_match_pytorch_grad_cam(swin, raw_peer, layer, grid):
    x = images(2, 3, SWIN_H, SWIN_W, seed=3)
    exp = cnnlens.explain(swin, x, "gradcam", layer=layer)
    assert f"channels-last (N, h, w, K) map (2, {grid[0]}, {grid[1]}" in str(exp.extras["layer_reading"][0])
    module = dict(swin.named_modules())[layer]
    raw, _ = peer_cam(swin, pgc.GradCAM, module, x, exp.target, raw_peer, swin_transform)
    assert raw.shape == (2,) + grid
    check_per_image(("swin", layer), exp.maps, upsample(raw, (SWIN_H, SWIN_W)), RTOL, MEASURED)


def test_swin_default_layer_is_its_channels_first_map_and_is_plain(swin):
    x = images(1, 3, SWIN_H, SWIN_W, seed=3)
    exp = cnnlens.explain(swin, x, "gradcam")
    assert exp.layer == "permute" and "layer_reading" not in exp.extras


# ---------------------------------------------------------------- every backend, the same maps


@pytest.mark.parametrize("method", ["gradcam", "layercam", "eigencam", "feature_maps"])
@pytest.mark.parametrize("kind", ["onnx", "pt2"])
def test_vit_maps_are_the_same_on_onnx_and_pt2(vit, x, vit_files, kind, method):
    layer = "blocks.10" if method == "eigencam" else VIT_LAYER  # see test_vit_cams_match_pytorch_grad_cam
    ref = cnnlens.explain(vit, x, method, layer=layer)
    backend = cnnlens.load(vit_files[kind])
    exp = cnnlens.explain(backend, x, method, layer=layer, target=ref.target)
    assert exp.maps.shape == ref.maps.shape
    assert rel_err(exp.maps, ref.maps) <= RTOL
    assert "6x10 grid; the first 1 token" in str(exp.extras["layer_reading"][0])


def test_the_explainer_file_lays_tokens_out_too(vit, x, vit_files, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path = str(tmp_path / "explainer.onnx")
    cnnlens.export_explainer(cnnlens.load(vit_files["onnx"]), path, methods="gradcam,feature_maps",
                             layer=VIT_LAYER, target="input", reshape="6x10,drop=1")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    classes = np.array([3, 7], dtype=np.int64)
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(None, {session.get_inputs()[0].name: x, "target": classes})))
    for method in ("gradcam", "feature_maps"):
        ref = cnnlens.explain(vit, x, method, layer=VIT_LAYER, target=classes).maps
        assert out[f"map_{method}"].shape == ref.shape
        assert rel_err(out[f"map_{method}"], ref) <= RTOL


def test_a_reshape_function_cannot_go_into_an_explainer_file(vit_files, tmp_path):
    with pytest.raises(cnnlens.UnsupportedError, match="reshape function"):
        cnnlens.export_explainer(cnnlens.load(vit_files["onnx"]), str(tmp_path / "e.onnx"), methods="gradcam",
                                 layer=VIT_LAYER, reshape=lambda a: a)
    assert not os.path.exists(tmp_path / "e.onnx")


# ---------------------------------------------------------------- forward-only CAMs, own references


def _hooked(model, module, x, edit=None):
    """(the module's output, the model's outputs), with ``edit(output)`` replacing it when given."""
    seen = {}

    def hook(_, __, output):
        seen["a"] = output.detach().clone()
        return edit(output) if edit is not None else None

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            out = model(torch.from_numpy(x))
    finally:
        handle.remove()
    return seen["a"], out


def test_vit_scorecam_matches_a_plain_torch_score_cam(vit, x):
    exp = cnnlens.explain(vit, x, "scorecam", layer=VIT_LAYER)
    tokens, _ = _hooked(vit, vit.blocks[11].norm1, x)
    maps = tokens[:, 1:].reshape(2, 6, 10, -1).permute(0, 3, 1, 2).double()  # (N, K, 6, 10)
    ref = []
    for i, c in enumerate(exp.target):
        up = F.interpolate(maps[i:i + 1].float(), size=(H, W), mode="bilinear", align_corners=False)[0].double()
        low, high = up.amin(dim=(1, 2), keepdim=True), up.amax(dim=(1, 2), keepdim=True)
        masks = torch.where(high > low, (up - low) / (high - low).clamp_min(1e-300), torch.zeros_like(up))
        with torch.no_grad():
            scores = vit(torch.from_numpy(x[i:i + 1]) * masks[:, None].float())[:, int(c)].double()
        beta = torch.softmax(scores, 0)
        cam = torch.relu((beta[:, None, None] * maps[i]).sum(0))
        ref.append(F.interpolate(cam[None, None].float(), size=(H, W), mode="bilinear", align_corners=False)[0, 0])
    check_per_image(("vit", "scorecam"), exp.maps, torch.stack(ref).numpy(), 1e-4, MEASURED)


def test_vit_ablationcam_zeroes_the_grid_tokens_of_one_channel(vit, x):
    exp = cnnlens.explain(vit, x[:1], "ablationcam", layer=VIT_LAYER)
    c = int(exp.target[0])
    tokens, clean = _hooked(vit, vit.blocks[11].norm1, x[:1])
    y = clean[0, c].double()
    drops = []
    for k in range(tokens.shape[2]):
        def zero(output, k=k):
            output = output.clone()
            output[:, 1:, k] = 0  # the map's channel k; the class token is no part of the map
            return output
        _, out = _hooked(vit, vit.blocks[11].norm1, x[:1], zero)
        drops.append((y - out[0, c].double()) / y)
    weights = torch.stack(drops)
    maps = tokens[0, 1:].reshape(6, 10, -1).permute(2, 0, 1).double()
    cam = torch.relu((weights[:, None, None] * maps).sum(0))
    ref = F.interpolate(cam[None, None].float(), size=(H, W), mode="bilinear", align_corners=False)[0]
    check_per_image(("vit", "ablationcam"), exp.maps, ref.numpy(), 1e-4, MEASURED)


# ---------------------------------------------------------------- stating the layout


def test_a_stated_reshape_equals_the_inferred_one_and_a_function_too(vit, x):
    inferred = cnnlens.explain(vit, x, "gradcam", layer=VIT_LAYER)
    for reshape in ("6x10", "6x10,drop=1,channels=last", {"grid": (6, 10), "drop": 1}, vit_transform_np((6, 10), 1)):
        stated = cnnlens.explain(vit, x, "gradcam", layer=VIT_LAYER, reshape=reshape)
        np.testing.assert_array_equal(stated.maps, inferred.maps)
    assert stated.options["reshape"] is not None


def vit_transform_np(grid, drop):
    return lambda a: a[:, drop:].reshape(a.shape[0], grid[0], grid[1], -1).transpose(0, 3, 1, 2)


def test_layouts_that_cannot_be_read_are_clear_errors(vit, x):
    with pytest.raises(LayerError, match="the stated grid does not match"):
        cnnlens.explain(vit, x, "gradcam", layer=VIT_LAYER, reshape="7x10")
    with pytest.raises(LayerError, match="not a \\(N, K, h, w\\) map or a token tensor"):
        cnnlens.explain(vit, x, "gradcam", layer="head")
    with pytest.raises(LayerError, match="name the layer gradcam should use"):
        cnnlens.explain(vit, x, "gradcam")  # the default layer is an attention tensor: not silently used
    with pytest.raises(LayerError, match="state the layout instead"):
        cnnlens.explain(vit, x[:1], "ablationcam", layer=VIT_LAYER, reshape=vit_transform_np((6, 10), 1))
    with pytest.raises(cnnlens.InvalidInputError, match="reshape"):
        cnnlens.explain(vit, x, "saliency", reshape="6x10")
    assert not vit.training


def test_feature_maps_keep_returning_layers_that_are_no_maps(vit, x):
    exp = cnnlens.explain(vit, x, "feature_maps", layer="head")
    assert exp.maps.shape == (2, 10) and "layer_reading" not in exp.extras


def test_the_command_line_takes_reshape(vit, vit_files, tmp_path, monkeypatch):
    from PIL import Image

    from cnnlens.adapters import images as image_io
    from cnnlens.cli import main

    monkeypatch.chdir(tmp_path)
    pixels = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    Image.fromarray(pixels).save("one.png")
    assert main(["explain", vit_files["onnx"], "one.png", "-m", "gradcam", "-l", VIT_LAYER, "--reshape",
                 "6x10,drop=1", "--size", str(H), str(W), "--out", "o", "--save-maps"]) == 0
    x = image_io.prepare(["one.png"], (H, W))[0]
    ref = cnnlens.explain(vit, x, "gradcam", layer=VIT_LAYER).maps[0]
    assert rel_err(np.load("o/one_gradcam.npy"), ref) <= RTOL


def test_a_list_of_token_layers_is_one_pass_and_equals_each_alone(vit, x):
    """``layer=[...]`` over token layers (and a 4-D one beside them): (N, L, H, W), each layer read on
    its own, every reading said in exp.extras."""
    layers = ["blocks.10.norm1", VIT_LAYER, "patch_embed.proj"]
    together = cnnlens.explain(vit, x, "layercam", layer=layers)
    assert together.maps.shape == (2, 3, H, W)
    for k, layer in enumerate(layers):
        alone = cnnlens.explain(vit, x, "layercam", layer=layer)
        np.testing.assert_allclose(together.maps[:, k], alone.maps, rtol=1e-6, atol=1e-7 * np.abs(alone.maps).max())
    readings = [str(r) for r in together.extras["layer_reading"]]
    assert len(readings) == 3 and "blocks.10.norm1" in readings[0] and "patch_embed.proj" in readings[2]
    features = cnnlens.explain(vit, x, "feature_maps", layer=layers[:2])
    assert features.maps.shape == (2, 2, 192, 6, 10)


def test_the_layers_table_says_how_each_output_reads_as_maps(vit, vit_files, capsys):
    """``cnnlens layers`` on the ViT's ONNX file: token layers as their grid with the class token
    dropped, the patch embedding as a map, attention scores (N, heads, T, T) as none."""
    from cnnlens.cli import main
    from cnnlens.cli.layers import as_maps

    layers = cnnlens.layers(vit, (3, H, W))
    readings = dict(zip([layer.name for layer in layers], as_maps(layers, (H, W))))
    assert readings[VIT_LAYER] == "grid 6x10, 1 token dropped"
    assert readings["patch_embed.proj"] == "map 6x10"
    assert readings["blocks.0.attn.k_norm"] == "" and readings["head"] == ""
    assert main(["layers", vit_files["onnx"]]) == 0
    printed = capsys.readouterr().out
    assert "grid 6x10, 1 token dropped" in printed and "as maps (CAMs)" in printed.splitlines()[0]


def test_swin_channels_last_maps_are_the_same_on_onnx_and_pt2(tmp_path):
    """A small torchvision Swin (embed 24, 160 x 224): its channels-last block outputs read the same
    way on the module, its ``.pt2`` program and its ONNX export, with the same Grad-CAM."""
    from torchvision.models.swin_transformer import SwinTransformer

    from cnnlens.adapters.export import to_exported

    torch.manual_seed(0)
    swin = SwinTransformer(patch_size=[4, 4], embed_dim=24, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4],
                           window_size=[7, 7], num_classes=5).eval()
    x = images(2, 3, SWIN_H, SWIN_W, seed=6)
    files = [to_onnx(swin, str(tmp_path / "swin.onnx"), (3, SWIN_H, SWIN_W), exporter="legacy"),
             to_exported(swin, str(tmp_path / "swin.pt2"), (3, SWIN_H, SWIN_W))]
    for layer, grid in (("features.7.1.norm2", "5x7"), ("features.5", "10x14")):
        ref = cnnlens.explain(swin, x, "gradcam", layer=layer)
        for path in files:
            exp = cnnlens.explain(path, x, "gradcam", layer=layer, target=ref.target)
            assert "channels-last (N, h, w, K) map" in str(exp.extras["layer_reading"][0])
            assert f"read as a {grid} grid" in str(exp.extras["layer_reading"][0])
            assert rel_err(exp.maps, ref.maps) <= RTOL
