"""cnnlens.adapters.render: the values behind every picture, and atomic PNG output."""

from __future__ import annotations

import io
import pathlib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from cnnlens.adapters import render  # noqa: E402
from cnnlens.adapters.render import (  # noqa: E402
    colorize, explanation_figure, feature_map_grid, filter_grid, gradient_figure, layer_grid, method_panel, overlay, png_bytes,
    roi_figure, save_npy, save_png,
)
from cnnlens.core import scaling  # noqa: E402
from cnnlens.core.errors import InvalidInputError  # noqa: E402
from cnnlens.core.resize import resize_bilinear  # noqa: E402
from cnnlens.core.types import Explanation, Layer  # noqa: E402

ROOT = pathlib.Path(render.__file__).parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _image(h=8, w=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _data(ax):
    return np.asarray(ax.images[0].get_array())


def _suptitle(figure):
    return figure._suptitle.get_text() if figure._suptitle is not None else ""


def _panels(figure):
    """title -> axes, for the visible axes of a figure."""
    return {ax.get_title(): ax for ax in figure.axes if ax.get_visible() and ax.axison}


# --- colorize / overlay ------------------------------------------------------------------


def test_colorize_endpoints_are_the_colormaps():
    for name in ("jet", "viridis", "gray"):
        cmap = matplotlib.colormaps[name]
        out = colorize(np.array([[0.0, 1.0, -3.0, 7.0, np.nan]]), name)
        assert out.dtype == np.uint8 and out.shape == (1, 5, 3)
        low, high = cmap(0.0, bytes=True)[:3], cmap(1.0, bytes=True)[:3]
        np.testing.assert_array_equal(out[0], [low, high, low, high, low])
    np.testing.assert_array_equal(colorize(np.array([[0.0, 1.0]]), "jet")[0], [[0, 0, 127], [127, 0, 0]])


def test_colorize_unknown_colormap():
    with pytest.raises(InvalidInputError, match="viridis"):
        colorize(np.zeros((2, 2)), "viridiss")


def test_overlay_alpha_endpoints():
    image = _image(6, 5)
    heat = np.random.default_rng(1).standard_normal((6, 5)).astype(np.float32)
    np.testing.assert_array_equal(overlay(image, heat, alpha=0.0), image)
    expected = colorize(scaling.normalize_minmax(heat[None])[0], "jet")
    np.testing.assert_array_equal(overlay(image, heat, alpha=1.0), expected)


def test_overlay_hand_computed_blend():
    image = np.full((1, 2, 3), 100, np.uint8)
    heat = np.array([[0.0, 5.0]], np.float32)  # min-max -> [0, 1]: jet's two ends
    out = overlay(image, heat, alpha=0.5)
    # round(0.5 * 100 + 0.5 * c): jet(0) = (0, 0, 127) -> (50, 50, 114 (113.5 rounds to even)); jet(1) = (127, 0, 0)
    np.testing.assert_array_equal(out[0], [[50, 50, 114], [114, 50, 50]])


def test_overlay_resizes_a_small_map_to_the_image():
    image = _image(8, 12)
    heat = np.array([[0.0, 1.0, 2.0], [3.0, 4.0, 9.0]], np.float32)
    expected = colorize(scaling.normalize_minmax(resize_bilinear(heat, (8, 12))[None])[0], "viridis")
    np.testing.assert_array_equal(overlay(image, heat, alpha=1.0, cmap="viridis"), expected)


def test_overlay_percentile_caps_outliers():
    image = _image(10, 10)
    heat = np.tile(np.linspace(0.0, 1.0, 10, dtype=np.float32), (10, 1))
    heat[0, 0] = 1000.0  # one outlier: with min-max everything else would be near 0
    capped = overlay(image, heat, alpha=1.0, scale="percentile")
    expected = colorize(scaling.normalize_percentile(heat[None], 99.0)[0], "jet")
    np.testing.assert_array_equal(capped, expected)
    plain = overlay(image, heat, alpha=1.0)
    jet_low = np.array(matplotlib.colormaps["jet"](0.0, bytes=True)[:3])
    assert np.abs(plain[5, 9].astype(int) - jet_low).max() <= 2  # 1 / 1000 is nearly jet(0)
    assert not np.array_equal(capped[5, 9], plain[5, 9])


def test_overlay_errors():
    with pytest.raises(InvalidInputError, match="alpha"):
        overlay(_image(), np.zeros((8, 8)), alpha=1.5)
    with pytest.raises(InvalidInputError, match="denormalize"):
        overlay(np.zeros((8, 8, 3), np.float32), np.zeros((8, 8)))
    with pytest.raises(InvalidInputError, match="scale"):
        overlay(_image(), np.zeros((8, 8)), scale="log")
    with pytest.raises(InvalidInputError, match=r"\(H, W\)"):
        overlay(_image(), np.zeros((1, 8, 8)))


# --- gradient figure ---------------------------------------------------------------------


def test_gradient_figure_hand_computed_parts():
    g = np.zeros((3, 4, 4), np.float32)
    g[0, 0, 0], g[1, 1, 1], g[2, 2, 2] = 2.0, -4.0, 1.0
    figure = gradient_figure(_image(4, 4), g, title="hand")
    panels = _panels(figure)
    positive = _data(panels["positive gradient"])
    negative = _data(panels["negative gradient"])
    absolute = _data(panels["all |gradient|"])
    assert positive.shape == (4, 4, 3)
    assert positive[0, 0, 0] == 1.0 and positive[2, 2, 2] == 0.5 and positive.sum() == 1.5
    assert negative[1, 1, 1] == 1.0 and negative.sum() == 1.0
    assert absolute[1, 1, 1] == 1.0 and absolute[0, 0, 0] == 0.5 and absolute[2, 2, 2] == 0.25
    signed = _data(panels["gradient (min-max)"])  # (g + 4) / 6
    assert signed[0, 0, 0] == 1.0 and signed[1, 1, 1] == 0.0 and np.isclose(signed[3, 3, 0], 4 / 6)
    gray = _data(panels["grayscale: sum |g| (99th pct)"])
    assert gray.shape == (4, 4) and gray[1, 1] == 1.0 and gray[3, 3] == 0.0
    assert _suptitle(figure) == "hand"


def test_gradient_figure_panels_equal_the_core_scaling():
    rng = np.random.default_rng(2)
    image = _image(12, 10)
    g = rng.standard_normal((3, 12, 10)).astype(np.float32) * rng.exponential(1.0, (3, 12, 10)).astype(np.float32)
    figure = gradient_figure(image, g)
    panels = _panels(figure)
    assert len(panels) == 9
    positive, negative, absolute = (p[0] for p in scaling.split_sign(g[None]))
    hwc = lambda a: a.transpose(1, 2, 0)  # noqa: E731
    np.testing.assert_array_equal(_data(panels["image"]), image)
    np.testing.assert_array_equal(_data(panels["gradient (min-max)"]), hwc(scaling.normalize_minmax(g[None])[0]))
    np.testing.assert_array_equal(_data(panels["grayscale: sum |g| (99th pct)"]),
                                  scaling.normalize_percentile(scaling.grayscale(g[None]), 99.0)[0])
    for name, part in [("all |gradient|", absolute), ("positive gradient", positive), ("negative gradient", negative)]:
        np.testing.assert_array_equal(_data(panels[name]), hwc(part))
        capped = _data(panels[f"{name} (99th pct)"])
        np.testing.assert_array_equal(capped, hwc(scaling.normalize_percentile(part[None], 99.0)[0]))
        assert capped.max() == 1.0 and (capped == 1.0).sum() > (hwc(part) == 1.0).sum()  # outliers saturate
    for ax in panels.values():
        assert len(ax.get_xticks()) == 0 and len(ax.get_yticks()) == 0


def test_gradient_figure_one_channel_is_gray():
    g = np.random.default_rng(3).standard_normal((1, 1, 6, 6)).astype(np.float32)
    panels = _panels(gradient_figure(_image(6, 6), g))
    ax = panels["positive gradient"]
    assert _data(ax).shape == (6, 6) and ax.images[0].get_cmap().name == "gray"
    np.testing.assert_array_equal(_data(ax), scaling.split_sign(g)[0][0, 0])


def test_gradient_figure_errors():
    with pytest.raises(InvalidInputError, match=r"\(C, H, W\)"):
        gradient_figure(_image(), np.zeros((8, 8)))


# --- grids -------------------------------------------------------------------------------


def test_layer_grid_overlays_and_titles():
    rng = np.random.default_rng(4)
    image = _image(16, 16)
    maps = rng.random((5, 16, 16)).astype(np.float32)
    maps[4] = 0.0
    names = [Layer("layer1", "Sequential"), ("layer2", "Sequential"), "layer3", Layer("conv", "Conv2d"),
             Layer("dead", "ReLU")]
    figure = layer_grid(image, maps[None], names, title="Grad-CAM")
    visible = [ax for ax in figure.axes if ax.axison]
    assert len(figure.axes) == 8 and len(visible) == 5  # 2 rows of 4, three cells hidden
    assert [ax.get_title() for ax in visible] == [
        "layer1\n(Sequential)", "layer2\n(Sequential)", "layer3", "conv\n(Conv2d)", "dead\n(ReLU) [map all 0]"]
    for ax, heat in zip(visible, maps):
        np.testing.assert_array_equal(_data(ax), overlay(image, heat))


def test_layer_grid_needs_one_name_per_map():
    with pytest.raises(InvalidInputError, match="one name per layer"):
        layer_grid(_image(), np.zeros((2, 8, 8)), ["a"])


def test_feature_map_grid_shows_the_first_maps_min_max():
    maps = np.random.default_rng(5).standard_normal((70, 5, 7)).astype(np.float32)
    figure = feature_map_grid(maps, max_maps=64)
    visible = [ax for ax in figure.axes if ax.axison]
    assert len(visible) == 64 and len(figure.axes) == 64  # 8 x 8
    expected = scaling.normalize_minmax(maps[:64])
    for i, ax in enumerate(visible):
        assert ax.get_title() == f"#{i}"
        np.testing.assert_array_equal(_data(ax), expected[i])
        assert _data(ax).min() == 0.0 and _data(ax).max() == 1.0
    assert "first 64 of 70" in _suptitle(figure)
    assert len(feature_map_grid(maps[:3]).axes) == 4  # 2 x 2, one hidden


def test_filter_grid_rgb_bank_scaling():
    w = np.random.default_rng(6).standard_normal((8, 3, 3, 3)).astype(np.float32)
    figure = filter_grid(w)
    visible = [ax for ax in figure.axes if ax.axison]
    assert len(visible) == 8
    low, high = w.min(), w.max()
    for i, ax in enumerate(visible):
        np.testing.assert_allclose(_data(ax), ((w[i] - low) / (high - low)).transpose(1, 2, 0), atol=1e-6)
    per_filter = [ax for ax in filter_grid(w, scale="filter").axes if ax.axison]
    for i, ax in enumerate(per_filter):
        assert _data(ax).min() == 0.0 and _data(ax).max() == 1.0


def test_filter_grid_other_channels_show_the_mean_in_gray():
    w = np.random.default_rng(7).standard_normal((20, 5, 3, 3)).astype(np.float32)
    visible = [ax for ax in filter_grid(w, max_filters=4).axes if ax.axison]
    assert len(visible) == 4
    mean = w[:4].mean(axis=1)
    scaled = (mean - mean.min()) / (mean.max() - mean.min())
    for i, ax in enumerate(visible):
        assert ax.images[0].get_cmap().name == "gray"
        np.testing.assert_allclose(_data(ax), scaled[i], atol=1e-6)
    with pytest.raises(InvalidInputError, match="out, in, kh, kw"):
        filter_grid(np.zeros((4, 4)))


def test_roi_figure_box_and_crop():
    image = _image(20, 30)
    cam = np.zeros((20, 30), np.float32)
    cam[5:9, 10:21] = 1.0
    cam[0, 0] = 0.4  # below the threshold: not in the box
    figure = roi_figure(image, cam, threshold=0.5)
    left, right = figure.axes
    rect = left.patches[0]
    assert (rect.get_x(), rect.get_y(), rect.get_width(), rect.get_height()) == (9.5, 4.5, 11, 4)
    np.testing.assert_array_equal(_data(right), image[5:9, 10:21])
    np.testing.assert_array_equal(_data(left), overlay(image, cam))
    # a low-resolution CAM is resized to the image first
    small = roi_figure(image, cam[::2, ::3], threshold=0.5)
    assert _data(small.axes[1]).shape[0] > 0


def test_roi_figure_constant_map():
    figure = roi_figure(_image(), np.ones((8, 8)))
    assert "constant" in figure.axes[1].get_title() and not figure.axes[1].images


# --- method panels -----------------------------------------------------------------------


def test_method_panel_cam_family():
    image = _image(16, 16)
    maps = np.random.default_rng(8).random((2, 3, 4, 4)).astype(np.float32)  # (N, L, h, w)
    np.testing.assert_array_equal(method_panel(image, maps[:, 0], "gradcam"), overlay(image, maps[0, 0]))
    np.testing.assert_array_equal(method_panel(image, maps, "gradcam"), overlay(image, maps[0, -1]))
    np.testing.assert_array_equal(method_panel(image, maps[0, 1], "occlusion"), overlay(image, maps[0, 1]))


def test_method_panel_gradient():
    image = _image(6, 6)
    g = np.random.default_rng(9).standard_normal((2, 3, 6, 6)).astype(np.float32)
    gray = scaling.normalize_percentile(scaling.grayscale(g[:1]), 99.0)[0]
    expected = colorize(gray, render.GRADIENT_CMAP)
    np.testing.assert_array_equal(method_panel(image, g, "saliency"), expected)
    np.testing.assert_array_equal(method_panel(image, g[0], "guided_gradcam"), expected)
    assert method_panel(_image(12, 12), g[0], "smoothgrad").shape == (12, 12, 3)


def test_method_panel_feature_mosaic():
    image = _image(9, 9)
    maps = np.zeros((1, 4, 2, 2), np.float32)
    maps[0, 0] = [[0, 1], [2, 3]]
    maps[0, 3] = [[5, 5], [5, 6]]
    out = method_panel(image, maps, "feature_maps")
    assert out.shape == (9, 9, 3) and out.dtype == np.uint8
    # 4 maps -> 2 x 2 tiles of 4 x 4 pixels (each map pixel a 2 x 2 block), 1-pixel white gaps
    viridis = colorize(np.array([[0, 1 / 3], [2 / 3, 1]]), "viridis")
    np.testing.assert_array_equal(out[0:4, 0:4], viridis.repeat(2, axis=0).repeat(2, axis=1))
    np.testing.assert_array_equal(out[4, :], 255)
    np.testing.assert_array_equal(out[:, 4], 255)
    np.testing.assert_array_equal(out[0:4, 5:9], colorize(np.zeros((4, 4)), "viridis"))  # a constant map is 0
    np.testing.assert_array_equal(out[5:9, 5:9], colorize(np.kron([[0, 0], [0, 1]], np.ones((2, 2))), "viridis"))


def test_method_panel_feature_mosaic_keeps_aspect_and_centres():
    maps = np.random.default_rng(11).random((5, 2, 2)).astype(np.float32)
    out = method_panel(_image(9, 9), maps, "feature_maps")
    # 5 maps -> 2 rows of 3; zoom min(8 / 4, 7 / 6) -> square 2 x 2 tiles; mosaic 5 x 8 centred at row 2
    white = np.all(out == 255, axis=2)
    assert white[:2].all() and white[7:].all() and white[:, 8].all()
    tiles = colorize(scaling.normalize_minmax(maps), "viridis")
    np.testing.assert_array_equal(out[2:4, 0:2], tiles[0])
    np.testing.assert_array_equal(out[5:7, 3:5], tiles[4])
    assert white[5:7, 6:8].all()  # the sixth cell is empty


def test_method_panel_unknown_method():
    with pytest.raises(InvalidInputError, match="gradcam"):
        method_panel(_image(), np.zeros((8, 8)), "gradcma")


def _explanation(method, maps, layer=None):
    n = len(maps)
    return Explanation(method, np.asarray(maps, np.float32), np.arange(n) + 3, np.zeros((n, 5), np.float32), layer)


def test_explanation_figure_picks_the_figure_for_the_method():
    rng = np.random.default_rng(12)
    image = _image(8, 8)
    grads = _explanation("saliency", rng.standard_normal((2, 3, 8, 8)))
    panels = _panels(explanation_figure(image, grads, 1))
    assert len(panels) == 9 and _suptitle(panels["image"].figure) == "saliency, class 4"
    np.testing.assert_array_equal(_data(panels["positive gradient"]),
                                  scaling.split_sign(grads.maps[1:2])[0][0].transpose(1, 2, 0))
    multi = _explanation("gradcam", rng.random((1, 2, 8, 8)), ["layer3", "layer4"])
    figure = explanation_figure(image, multi)
    assert [ax.get_title() for ax in figure.axes] == ["layer3", "layer4"]
    np.testing.assert_array_equal(_data(figure.axes[1]), overlay(image, multi.maps[0, 1]))
    single = _explanation("occlusion", rng.random((1, 8, 8)))
    left, right = explanation_figure(image, single).axes
    np.testing.assert_array_equal(_data(left), image)
    np.testing.assert_array_equal(_data(right), overlay(image, single.maps[0]))
    features = _explanation("feature_maps", rng.random((1, 6, 4, 4)), "layer1")
    assert len([ax for ax in explanation_figure(image, features).axes if ax.axison]) == 6


def test_save_npy(tmp_path):
    values = np.random.default_rng(13).standard_normal((2, 3)).astype(np.float32)
    path = save_npy(values, tmp_path / "m.npy")
    np.testing.assert_array_equal(np.load(path), values)
    assert [p.name for p in tmp_path.iterdir()] == ["m.npy"]
    with pytest.raises(ValueError):
        save_npy(np.array([object()]), tmp_path / "bad.npy")
    assert [p.name for p in tmp_path.iterdir()] == ["m.npy"]


# --- output ------------------------------------------------------------------------------


def test_save_png_array_round_trips(tmp_path):
    image = _image(7, 11)
    path = save_png(image, tmp_path / "sub" / "a.png")
    np.testing.assert_array_equal(np.asarray(Image.open(path)), image)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["a.png"]


def test_save_png_figure_has_the_expected_size(tmp_path):
    figure = gradient_figure(_image(8, 8), np.zeros((3, 8, 8), np.float32))
    path = save_png(figure, tmp_path / "g.png", dpi=40)
    width, height = figure.get_size_inches() * 40
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == (round(width), round(height))
        pixels = np.asarray(png.convert("RGB"))
    assert pixels.std() > 0  # something was drawn


class _Boom(matplotlib.artist.Artist):
    def draw(self, renderer):
        raise RuntimeError("boom")


def test_save_png_failure_leaves_nothing(tmp_path):
    figure = render.new_figure((2, 2))
    figure.add_subplot().add_artist(_Boom())
    with pytest.raises(RuntimeError, match="boom"):
        save_png(figure, tmp_path / "bad.png")
    assert list(tmp_path.iterdir()) == []
    old = tmp_path / "old.png"
    old.write_bytes(b"previous")
    with pytest.raises(RuntimeError, match="boom"):
        save_png(figure, old)
    assert old.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["old.png"]
    with pytest.raises(InvalidInputError, match="uint8"):
        save_png(np.zeros((4, 4, 3), np.float64), tmp_path / "float.png")
    assert [p.name for p in tmp_path.iterdir()] == ["old.png"]


def test_png_bytes():
    image = _image(5, 4)
    data = png_bytes(image)
    assert data.startswith(PNG_SIGNATURE)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), image)
    figure_data = png_bytes(layer_grid(image, np.ones((1, 5, 4)), ["x"]), dpi=30)
    assert figure_data.startswith(PNG_SIGNATURE)


def test_rendering_in_threads_matches_serial():
    rng = np.random.default_rng(10)
    jobs = [(_image(16, 16, seed=i), rng.standard_normal((3, 16, 16)).astype(np.float32)) for i in range(6)]
    draw = lambda job: png_bytes(gradient_figure(*job), dpi=30)  # noqa: E731
    serial = [draw(job) for job in jobs]
    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(draw, jobs)) == serial


def test_render_uses_no_pyplot_torch_or_onnx():
    code = (
        "import sys\n"
        "for name in ('torch', 'torchvision', 'onnx', 'onnxruntime'): sys.modules[name] = None\n"
        "import numpy as np\n"
        "from cnnlens.adapters import render\n"
        "img = np.zeros((8, 8, 3), np.uint8)\n"
        "render.png_bytes(render.gradient_figure(img, np.ones((3, 8, 8), np.float32)))\n"
        "render.png_bytes(render.roi_figure(img, np.eye(8)))\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
