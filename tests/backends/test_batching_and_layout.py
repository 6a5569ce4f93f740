"""How the torch backend runs passes fast without changing results: cache-sized CPU batches,
channels-last (NHWC) convolutions with a fallback, layer traces cached per model, Score-CAM's
shared zero image, vectorised occlusion batches."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnnlens
from cnnlens.backends import base
from cnnlens.backends.torch import tracing
from cnnlens.core.occlusion import OcclusionGrid
from tests.helpers import assert_close, images, rel_err


class Net(nn.Module):
    """conv-relu-conv-relu-GAP-linear, counting its forward calls."""

    def __init__(self, width: int = 8, classes: int = 5, flatten_with_view: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(width, classes)
        self.flatten_with_view = flatten_with_view
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        a = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        if self.flatten_with_view:  # .view needs contiguous memory: fails on a channels-last tensor
            flat = a.view(a.shape[0], -1).reshape(a.shape[0], a.shape[1], -1).mean(2)
        else:
            flat = F.adaptive_avg_pool2d(a, 1).flatten(1)
        return self.fc(flat)


def make(seed: int = 0, **kwargs) -> Net:
    torch.manual_seed(seed)
    return Net(**kwargs).eval()


X = images(3, 3, 16, 16, seed=4)


# ---------------------------------------------------------------- batch sizes


@pytest.mark.parametrize("largest, expected", [(802_816, 5), (24_576, 128), (2 ** 22, 1), (2 ** 30, 1), (2 ** 16, 64)])
def test_cache_sized_batch(largest, expected):
    assert base.cache_sized_batch(largest) == expected


def test_cpu_batch_follows_the_largest_layer():
    model = make()
    backend = cnnlens.load(model)
    largest = max(int(np.prod(l.shape[1:])) for l in cnnlens.layers(model, (3, 16, 16)) if l.shape)
    assert largest == 8 * 16 * 16
    for kind in ("forward", "backward"):
        assert backend.batch_size(kind, (3, 16, 16)) == base.cache_sized_batch(largest)
    # four times the pixels: a quarter of the batch (down to the cap)
    big = max(int(np.prod(l.shape[1:])) for l in cnnlens.layers(model, (3, 256, 256)) if l.shape)
    assert backend.batch_size("forward", (3, 256, 256)) == base.cache_sized_batch(big) == 2 ** 22 // big


def test_onnx_batch_follows_the_largest_node(tmp_path):
    from cnnlens.adapters.export import to_onnx

    path = to_onnx(make(), str(tmp_path / "net.onnx"), input_shape=(3, 16, 16))
    backend = cnnlens.load(path)
    largest = max(int(np.prod(l.shape[1:])) for l in backend.layers((3, 16, 16)) if l.shape and all(l.shape[1:]))
    assert largest == 8 * 16 * 16
    assert backend.batch_size("forward", (3, 16, 16)) == base.cache_sized_batch(largest)


# ---------------------------------------------------------------- channels-last


def plain(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def test_channels_last_on_cpu_matches_contiguous():
    model = make()
    fast = cnnlens.load(model)
    exact = cnnlens.load(model)
    exact.channels_last = False
    assert fast.channels_last
    for method, options in [("saliency", {}), ("gradcam", {"layer": "conv2"}), ("feature_maps", {"layer": "relu1"}),
                            ("occlusion", {"window": 4, "stride": 2}), ("guided_backprop", {})]:
        a = cnnlens.explain(fast, X, method, **options)
        b = cnnlens.explain(exact, X, method, **options)
        assert_close(a.maps, b.maps, 1e-5)
        assert a.maps.flags.c_contiguous
    # contiguous is plain PyTorch to the last bit
    np.testing.assert_array_equal(cnnlens.explain(exact, X, "feature_maps", layer="relu1").logits, plain(model, X))


def test_channels_last_falls_back_for_a_model_that_needs_contiguous_memory():
    model = make(flatten_with_view=True)
    with pytest.raises(RuntimeError):  # the model itself cannot take channels-last input
        model(torch.from_numpy(X).contiguous(memory_format=torch.channels_last))
    backend = cnnlens.load(model)
    assert backend.channels_last
    exp = cnnlens.explain(backend, X, "gradcam", layer="conv2")
    assert not backend.channels_last  # retried contiguous, and stays so
    reference = make(flatten_with_view=False)
    np.testing.assert_allclose(exp.logits, plain(reference, X), rtol=1e-5, atol=1e-6)
    again = cnnlens.explain(backend, X, "saliency")
    assert rel_err(again.logits, exp.logits) == 0
    assert not cnnlens.load(model).channels_last  # remembered for the model: no failed attempt per call
    calls = model.calls
    cnnlens.explain(model, X, "feature_maps", layer="conv1")
    assert model.calls == calls + 1


def test_scripted_and_convolution_free_models_stay_contiguous():
    scripted = torch.jit.script(make())
    assert not cnnlens.load(scripted).channels_last
    no_conv = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4)).eval()
    assert not cnnlens.load(no_conv).channels_last


# ---------------------------------------------------------------- layer traces


def test_traces_are_shared_across_calls_and_redone_when_the_model_changes():
    model = make()
    cnnlens.explain(model, X, "gradcam")  # default layer: traced once
    after_first = model.calls
    cnnlens.explain(model, X, "gradcam")
    assert model.calls - after_first == 1  # one pass for the batch, no second trace
    model.conv2 = nn.Conv2d(8, 8, 3, padding=1)  # the structure changed: traced again
    before = model.calls
    cnnlens.explain(model, X, "gradcam")
    assert model.calls - before == 2


def test_trace_cache_does_not_keep_models_alive():
    gc.collect()  # models of earlier tests that only a collection frees (fx graphs hold cycles)
    model = make()
    cnnlens.explain(model, X, "gradcam")
    assert model in tracing._TRACES
    count = len(tracing._TRACES)
    del model
    gc.collect()
    assert len(tracing._TRACES) == count - 1


# ---------------------------------------------------------------- Score-CAM's zero image


class CountingBackend:
    """A backend that counts the images its forward passes see."""

    def __init__(self, inner):
        self._inner, self.images = inner, []

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def forward(self, x, layers=()):
        self.images.append(len(x))
        return self._inner.forward(x, layers)


def test_scorecam_scores_all_constant_channels_with_one_zero_image():
    model = make(width=6)
    with torch.no_grad():
        model.conv2.bias[[0, 3]] = -1e4  # two dead channels after relu2
    counting = CountingBackend(cnnlens.load(model))
    exp = cnnlens.explain(counting, X, "scorecam", layer="relu2", batch_size=4)
    # the first pass (activations), the zero image, then the live channels only
    assert sum(counting.images) == len(X) + 1 + len(X) * (6 - 2)
    full = cnnlens.explain(model, X, "scorecam", layer="relu2", batch_size=4)
    np.testing.assert_array_equal(exp.maps, full.maps)
    # and the result is Score-CAM's: masked passes for every channel, a dead one masked to zero
    xt = torch.from_numpy(X)
    with torch.no_grad():
        acts = model.relu2(model.conv2(model.relu1(model.conv1(xt))))
        lo, hi = acts.amin((2, 3), keepdim=True), acts.amax((2, 3), keepdim=True)
        masks = torch.where(hi > lo, (acts - lo) / torch.where(hi > lo, hi - lo, torch.ones_like(hi)), torch.zeros_like(acts))
        classes = torch.from_numpy(exp.target)
        scores = torch.stack([model(xt[i][None] * masks[i][:, None])[:, classes[i]] for i in range(len(X))])
        beta = torch.softmax(scores.double(), 1).float()
        ref = torch.relu((beta[:, :, None, None] * acts).sum(1))
    assert_close(exp.maps, ref.numpy(), 1e-4)


# ---------------------------------------------------------------- occlusion batches


@pytest.mark.parametrize("size, window, stride", [((16, 16), 4, 2), ((13, 9), (5, 3), (2, 3)), ((7, 7), 7, 1)])
def test_occlude_matches_window_by_window(size, window, stride):
    grid = OcclusionGrid(size, window, stride)
    x = images(2, 3, *size, seed=9)
    baseline = np.array([0.5, -1.0, 2.0], dtype=np.float32).reshape(3, 1, 1)
    owners = np.repeat([0, 1], len(grid))
    where = np.tile(np.arange(len(grid)), 2)
    batch = grid.occlude(x, owners, where, baseline)
    for b, (n, p) in enumerate(zip(owners, where)):
        expected = x[n].copy()
        rows, cols = grid.box(p)
        expected[:, rows, cols] = np.broadcast_to(baseline, x.shape[1:])[:, rows, cols]
        np.testing.assert_array_equal(batch[b], expected)
    assert batch.dtype == np.float32


def test_a_model_error_unrelated_to_layout_keeps_channels_last():
    class Failing(Net):
        def forward(self, x):
            raise RuntimeError("broken whatever the layout")

    torch.manual_seed(0)
    model = Failing().eval()
    backend = cnnlens.load(model)
    with pytest.raises(cnnlens.InvalidInputError, match="broken whatever the layout"):
        cnnlens.explain(backend, X, "saliency")
    assert backend.channels_last and cnnlens.load(model).channels_last
