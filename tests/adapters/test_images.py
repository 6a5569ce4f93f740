"""cnnlens.adapters.images: loading every colour mode, fitting, normalising, errors."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np
import pytest

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from cnnlens.adapters import images  # noqa: E402
from cnnlens.adapters.images import (  # noqa: E402
    IMAGENET_MEAN, IMAGENET_STD, denormalize, fit, input_size, load_image, normalize, prepare,
)
from cnnlens.core.errors import InvalidInputError  # noqa: E402

ROOT = pathlib.Path(images.__file__).parents[2]

BILINEAR = getattr(Image, "Resampling", Image).BILINEAR


def _save(img, tmp_path, name, **kwargs):
    path = tmp_path / name
    img.save(path, **kwargs)
    return path


# --- loading -----------------------------------------------------------------------------


def test_rgb_is_read_as_is(tmp_path):
    pixels = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [12, 34, 56]]], np.uint8)
    out = load_image(_save(Image.fromarray(pixels), tmp_path, "rgb.png"))
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out, pixels)


def test_grayscale_is_replicated(tmp_path):
    gray = np.array([[0, 17], [128, 255]], np.uint8)
    out = load_image(_save(Image.fromarray(gray, "L"), tmp_path, "l.png"))
    np.testing.assert_array_equal(out, np.stack([gray] * 3, axis=2))


def test_16_bit_grayscale_is_scaled_to_8_bit(tmp_path):
    wide = np.array([[0, 65535], [25700, 1000]], np.uint16)  # 25700 = 100 * 257
    img = Image.fromarray(wide)
    assert img.mode.startswith("I")
    out = load_image(_save(img, tmp_path, "i16.png"))
    expected = np.array([[0, 255], [100, 4]], np.uint8)  # round(1000 * 255 / 65535) = 4
    np.testing.assert_array_equal(out, np.stack([expected] * 3, axis=2))


def test_one_bit_is_black_and_white(tmp_path):
    img = Image.new("1", (3, 1))
    img.putpixel((1, 0), 1)
    out = load_image(_save(img, tmp_path, "bits.png"))
    np.testing.assert_array_equal(out[0, :, 0], [0, 255, 0])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_rgba_is_composited_over_white(tmp_path):
    rgba = np.array([[[200, 0, 100, 0], [200, 0, 100, 255], [200, 0, 100, 128]]], np.uint8)
    out = load_image(_save(Image.fromarray(rgba, "RGBA"), tmp_path, "rgba.png"))
    # c * a + 255 * (1 - a), a = 128 / 255: 200 -> 227.4, 0 -> 127.0, 100 -> 177.2
    np.testing.assert_array_equal(out[0], [[255, 255, 255], [200, 0, 100], [227, 127, 177]])


def test_gray_with_alpha_is_composited_over_white(tmp_path):
    la = Image.merge("LA", [Image.new("L", (2, 1), 50), Image.frombytes("L", (2, 1), bytes([0, 255]))])
    out = load_image(_save(la, tmp_path, "la.png"))
    np.testing.assert_array_equal(out[0], [[255, 255, 255], [50, 50, 50]])


def test_palette_with_transparency_is_composited_over_white(tmp_path):
    img = Image.new("P", (3, 1))
    img.putpalette([255, 0, 0, 0, 0, 255, 0, 128, 0])
    img.putdata([0, 1, 2])
    out = load_image(_save(img, tmp_path, "p.png", transparency=0))
    np.testing.assert_array_equal(out[0], [[255, 255, 255], [0, 0, 255], [0, 128, 0]])


def test_palette_without_transparency(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([10, 20, 30, 40, 50, 60])
    img.putdata([1, 0])
    out = load_image(_save(img, tmp_path, "p.png"))
    np.testing.assert_array_equal(out[0], [[40, 50, 60], [10, 20, 30]])


def test_exif_orientation_is_applied(tmp_path):
    # Stored 40 wide x 20 high, left half red, right half blue. Orientation 6 means "rotate 90
    # degrees clockwise to display": the picture becomes 20 wide x 40 high, red on top.
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(Image.fromarray(stored), tmp_path, "rot.jpg", exif=exif.tobytes(), quality=95)
    assert Image.open(path).size == (40, 20)
    out = load_image(path)
    assert out.shape == (40, 20, 3)
    top, bottom = out[2:18].astype(int), out[22:38].astype(int)
    assert np.abs(top - [255, 0, 0]).max() <= 8, "the left (red) half must end up on top"
    assert np.abs(bottom - [0, 0, 255]).max() <= 8


def test_missing_file(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(InvalidInputError, match="nope.png.*does not exist"):
        load_image(path)


def test_folder_is_not_an_image(tmp_path):
    with pytest.raises(InvalidInputError, match="folder"):
        load_image(tmp_path)


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not a picture")
    with pytest.raises(InvalidInputError, match=r"notes\.png.*re-save or re-download"):
        load_image(path)


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_truncated_file(tmp_path, fmt):
    rng = np.random.default_rng(0)
    full = _save(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), tmp_path, f"full.{fmt}")
    data = full.read_bytes()
    cut = tmp_path / f"cut.{fmt}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidInputError, match=rf"cut\.{fmt}.*truncated or corrupt"):
        load_image(cut)


# --- fit ---------------------------------------------------------------------------------


def _columns(h, w):
    """uint8 (h, w, 3) whose value is the column index (red), row index (green)."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.arange(w)[None, :]
    img[..., 1] = np.arange(h)[:, None]
    return img


def test_fit_crops_the_centre_without_resizing_when_one_side_matches():
    img = _columns(10, 20)
    np.testing.assert_array_equal(fit(img, 10), img[:, 5:15])
    tall = _columns(20, 10)
    np.testing.assert_array_equal(fit(tall, 10), tall[5:15])


@pytest.mark.parametrize("w, left", [(13, 2), (15, 2), (17, 4), (11, 0)])
def test_fit_crop_offset_rounds_like_torchvision(w, left):
    # offset = round((w - 10) / 2), Python's round: 1.5 -> 2, 2.5 -> 2, 3.5 -> 4, 0.5 -> 0
    img = _columns(10, w)
    out = fit(img, 10)
    np.testing.assert_array_equal(out[0, :, 0], np.arange(left, left + 10))


def test_fit_non_square_targets():
    img = _columns(30, 40)
    # target (30, 20): scale max(30/30, 20/40) = 1, no resize, 10 columns cut on each side
    np.testing.assert_array_equal(fit(img, (30, 20)), img[:, 10:30])
    # target (20, 40): scale 1, 5 rows cut on each side
    np.testing.assert_array_equal(fit(img, (20, 40)), img[5:25])


def test_fit_resizes_the_binding_side_then_crops():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    # target (20, 10): scale max(20/40, 10/40) = 0.5 -> 20 x 20, then columns 5..14
    resized = np.asarray(Image.fromarray(img).resize((20, 20), BILINEAR))
    np.testing.assert_array_equal(fit(img, (20, 10)), resized[:, 5:15])
    # upscaling: 8 x 16 to 16 x 16 -> 16 x 32, columns 8..23
    small = rng.integers(0, 256, (8, 16, 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(small).resize((32, 16), BILINEAR))
    np.testing.assert_array_equal(fit(small, 16), big[:, 8:24])


def test_fit_keeps_a_horizontal_gradient_centred():
    # a ramp along the width, shrunk by 2: the kept middle must hold the middle values
    ramp = np.repeat(np.repeat(np.arange(0, 240, 2, dtype=np.uint8)[None, :, None], 60, 0), 3, 2)  # 60 x 120
    out = fit(ramp, 30)  # -> 30 x 60, then columns 15..44 of the half-size ramp
    assert out.shape == (30, 30, 3)
    centre = out[15, :, 0].astype(int)
    assert np.all(np.diff(centre) > 0)
    assert abs(centre.mean() - 119) <= 2  # the ramp's middle value


def test_fit_matches_torchvision_resize_and_centre_crop():
    transforms = pytest.importorskip("torchvision.transforms")
    rng = np.random.default_rng(2)
    for h, w, size in [(37, 53, 24), (53, 37, 24), (300, 451, 224), (17, 9, 32)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        reference = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size)])
        np.testing.assert_array_equal(fit(img, size), np.asarray(reference(Image.fromarray(img))))


def test_fit_rejects_bad_input():
    with pytest.raises(InvalidInputError, match="size"):
        fit(np.zeros((4, 4, 3), np.uint8), (0, 4))
    with pytest.raises(InvalidInputError, match="size"):
        fit(np.zeros((4, 4, 3), np.uint8), (4, 4, 4))
    with pytest.raises(InvalidInputError, match="uint8"):
        fit(np.zeros((4, 4, 3), np.float32), 2)


# --- normalize / denormalize -------------------------------------------------------------


def test_normalize_hand_computed():
    pixel = np.array([[[255, 0, 128]]], np.uint8)
    x = normalize(pixel)
    assert x.dtype == np.float32 and x.shape == (1, 3, 1, 1)
    expected = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    np.testing.assert_allclose(x[0, :, 0, 0], expected, rtol=1e-6)


def test_normalize_batch_layout():
    batch = np.zeros((2, 3, 4, 3), np.uint8)
    batch[1, 2, 3] = (255, 255, 255)
    x = normalize(batch, mean=0.0, std=1.0)
    assert x.shape == (2, 3, 3, 4)
    assert x.sum() == 3 and np.all(x[1, :, 2, 3] == 1)


def test_normalize_one_channel_uses_luminance():
    pixel = np.array([[[255, 0, 0], [0, 0, 255]]], np.uint8)
    x = normalize(pixel, mean=0.5, std=0.25, channels=1)
    assert x.shape == (1, 1, 1, 2)
    np.testing.assert_allclose(x[0, 0, 0], [(0.299 - 0.5) / 0.25, (0.114 - 0.5) / 0.25], rtol=1e-6)
    # the default RGB statistics become the gray of the mean / std
    gray_mean = 0.299 * 0.485 + 0.587 * 0.456 + 0.114 * 0.406
    gray_std = 0.299 * 0.229 + 0.587 * 0.224 + 0.114 * 0.225
    np.testing.assert_allclose(normalize(pixel, channels=1)[0, 0, 0], (np.array([0.299, 0.114]) - gray_mean) / gray_std,
                               rtol=1e-5)


def test_round_trip_within_one_grey_level():
    rng = np.random.default_rng(3)
    batch = rng.integers(0, 256, (3, 17, 11, 3), dtype=np.uint8)
    back = denormalize(normalize(batch))
    assert back.dtype == np.uint8 and back.shape == batch.shape
    assert np.abs(back.astype(int) - batch).max() <= 1
    custom = denormalize(normalize(batch, mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7)), (0.1, 0.2, 0.3), (0.5, 0.6, 0.7))
    assert np.abs(custom.astype(int) - batch).max() <= 1


def test_round_trip_one_channel_is_gray_rgb():
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    back = denormalize(normalize(img, channels=1))
    assert back.shape == (1, 9, 7, 3)
    np.testing.assert_array_equal(back[..., 0], back[..., 2])
    pil_gray = np.asarray(Image.fromarray(img).convert("L")).astype(int)
    assert np.abs(back[0, ..., 0].astype(int) - pil_gray).max() <= 1


def test_denormalize_clips():
    x = np.array([[[[100.0, -100.0]]]] * 3, np.float32).reshape(1, 3, 1, 2)
    out = denormalize(x)
    np.testing.assert_array_equal(out[0, 0], [[255, 255, 255], [0, 0, 0]])


def test_normalize_errors():
    with pytest.raises(InvalidInputError, match="uint8"):
        normalize(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(InvalidInputError, match="channels"):
        normalize(np.zeros((4, 4, 3), np.uint8), channels=2)
    with pytest.raises(InvalidInputError, match="2 values"):
        normalize(np.zeros((4, 4, 3), np.uint8), mean=(0.1, 0.2))
    with pytest.raises(InvalidInputError, match="zeros"):
        normalize(np.zeros((4, 4, 3), np.uint8), std=0)
    with pytest.raises(InvalidInputError, match="C = 1 or 3"):
        denormalize(np.zeros((1, 4, 2, 2), np.float32))


# --- prepare / input_size ----------------------------------------------------------------


def test_prepare_loads_fits_and_normalises(tmp_path):
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (41, 20), dtype=np.uint8)
    paths = [_save(Image.fromarray(a), tmp_path, "a.png"), _save(Image.fromarray(b, "L"), tmp_path, "b.png")]
    x, display = prepare(paths, 16)
    assert x.shape == (2, 3, 16, 16) and x.dtype == np.float32
    assert display.shape == (2, 16, 16, 3) and display.dtype == np.uint8
    np.testing.assert_array_equal(display[0], fit(a, 16))
    np.testing.assert_array_equal(display[1], fit(np.stack([b] * 3, axis=2), 16))
    np.testing.assert_array_equal(x, normalize(display, IMAGENET_MEAN, IMAGENET_STD))
    x1, _ = prepare(str(paths[0]), (8, 12), mean=0.5, std=0.5, channels=1)
    assert x1.shape == (1, 1, 8, 12)


def test_prepare_errors(tmp_path):
    with pytest.raises(InvalidInputError, match="no image files"):
        prepare([], 8)
    with pytest.raises(InvalidInputError, match="missing.png"):
        prepare([tmp_path / "missing.png"], 8)


class _Fake:
    def __init__(self, shape):
        self.image_shape = shape


def test_input_size_from_shapes():
    assert input_size(_Fake((3, 224, 224))) == (3, 224, 224)
    assert input_size(_Fake((1, 28, 28))) == (1, 28, 28)
    assert input_size(_Fake((3, "height", "width"))) == (3, None, None)
    assert input_size(_Fake((3, None, None))) == (3, None, None)
    assert input_size(_Fake((3, 0, 0))) == (3, None, None)
    assert input_size(_Fake((10,))) is None


def test_input_size_of_an_onnx_backend():
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import cnnlens
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 32, 48])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    assert input_size(cnnlens.load(model.SerializeToString(), device="cpu")) == (3, 32, 48)
    dynamic = onnx.ModelProto()
    dynamic.CopyFrom(model)
    dims = dynamic.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "h", "w"
    assert input_size(cnnlens.load(dynamic.SerializeToString(), device="cpu")) == (3, None, None)


def test_images_module_works_without_torch_or_onnx():
    code = (
        "import sys\n"
        "for name in ('torch', 'torchvision', 'onnx', 'onnxruntime'): sys.modules[name] = None\n"
        "import numpy as np\n"
        "from cnnlens.adapters import images\n"
        "x = images.normalize(images.fit(np.zeros((10, 20, 3), np.uint8), 8))\n"
        "assert x.shape == (1, 3, 8, 8)\n"
        "import cnnlens\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_import_cnnlens_imports_neither_pillow_nor_matplotlib():
    code = "import sys, cnnlens; print(sorted(m for m in ('PIL', 'matplotlib') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.stdout.strip() == "[]", result.stderr
    assert images.LUMA.shape == (3,)
