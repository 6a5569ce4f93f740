"""Incremental occlusion (opt-in, ``incremental=True``): the maps of brute force on ResNet, a
DenseNet, VGG and MobileNet for several windows, strides and baselines; batch size never changes
them; a model torch.fx cannot trace falls back to brute force and says why."""

import weakref

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import cnnlens
from cnnlens.adapters.demo_model import build_model
from cnnlens.backends.torch import incremental as _torch_incremental
from tests.helpers import images, randomise_batchnorm, rel_err


@pytest.fixture(autouse=True)
def always_incremental(monkeypatch):
    """The guard may pick brute force (a busy machine, a small image); these tests check the
    incremental path, each with fresh traces and no decision remembered."""
    monkeypatch.setattr(_torch_incremental, "_TRACED", weakref.WeakKeyDictionary())
    monkeypatch.setattr(_torch_incremental, "_decide", lambda traced, key, cache: "incremental")


REAL_DECIDE = _torch_incremental._decide


def _models():
    torch.manual_seed(0)
    return {
        "resnet18": randomise_batchnorm(torchvision.models.resnet18(num_classes=5)).eval(),
        "densenet": randomise_batchnorm(build_model(num_classes=3, seed=1)).eval(),
        "vgg11": torchvision.models.vgg11(num_classes=4).eval(),
        "mobilenet_v3_small": randomise_batchnorm(torchvision.models.mobilenet_v3_small(num_classes=4)).eval(),
    }


MODELS = _models()


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("window, stride, baseline", [(8, 4, 0.0), (12, 8, "channels"), (16, 16, "image")])
def test_incremental_maps_equal_brute_force(name, window, stride, baseline):
    size = 64 if name != "vgg11" else 48
    x = images(2, 3, size, size, seed=3)
    fill = {0.0: 0.0, "channels": np.array([0.5, -0.2, 0.1], np.float32),
            "image": np.random.default_rng(1).standard_normal((3, size, size)).astype(np.float32)}[baseline]
    model = MODELS[name]
    brute = cnnlens.explain(model, x, "occlusion", window=window, stride=stride, baseline=fill, incremental=False)
    fast = cnnlens.explain(model, x, "occlusion", window=window, stride=stride, baseline=fill, incremental=True)
    assert list(fast.extras["occlusion_engine"]) == ["incremental", "incremental"]
    assert list(brute.extras["occlusion_engine"]) == ["brute force", "brute force"]
    assert rel_err(fast.maps, brute.maps) <= 1e-4
    assert fast.options["window"] == brute.options["window"] and fast.options["incremental"] is True


def test_batch_size_never_changes_the_maps():
    model, x = MODELS["resnet18"], images(1, 3, 64, 64, seed=5)
    maps = [cnnlens.explain(model, x, "occlusion", window=8, stride=4, incremental=True, batch_size=b).maps
            for b in (1, 7, 64)]
    assert rel_err(maps[1], maps[0]) <= 1e-4 and rel_err(maps[2], maps[0]) <= 1e-4  # float rounding only


class Untraceable(nn.Module):
    """Control flow on a tensor's value: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.conv(x)
        if h.mean() > 100:  # never true here, but fx cannot know
            h = -h
        return self.fc(torch.relu(h).mean(dim=(2, 3)))


def test_an_untraceable_model_falls_back_to_brute_force_and_says_why():
    x = images(2, 3, 32, 32, seed=1)
    fast = cnnlens.explain(Untraceable().eval(), x, "occlusion", window=8, stride=4, incremental=True)
    brute = cnnlens.explain(Untraceable().eval(), x, "occlusion", window=8, stride=4, incremental=False)
    assert all(e.startswith("brute force: torch.fx cannot trace the model") for e in fast.extras["occlusion_engine"])
    np.testing.assert_array_equal(fast.maps, brute.maps)


def test_the_cost_model_decides_once_per_model_and_size_from_a_dry_run(monkeypatch):
    monkeypatch.setattr(_torch_incremental, "_decide", REAL_DECIDE)
    model, x = MODELS["resnet18"], images(2, 3, 64, 64, seed=2)
    runs = []  # True for a dry run (the cost model's), False for a real one
    real, dry = _torch_incremental.IncrementalModel.run, _torch_incremental.IncrementalModel.flop_counts
    monkeypatch.setattr(_torch_incremental.IncrementalModel, "run", lambda self, *a: runs.append(False) or real(self, *a))
    monkeypatch.setattr(_torch_incremental.IncrementalModel, "flop_counts",
                        lambda self, *a: runs.append(True) or dry(self, *a))
    monkeypatch.setattr(_torch_incremental, "MIN_FLOP_SAVING", 1.0)
    monkeypatch.setattr(_torch_incremental, "MIN_WORK", 1e12)  # more multiply-adds than any window here costs
    small = cnnlens.explain(model, x, "occlusion", window=8, stride=4, incremental=True)
    assert runs == [True]  # one dry run decided for both images
    assert all(e.startswith("brute force (a window costs only") for e in small.extras["occlusion_engine"])
    monkeypatch.setattr(_torch_incremental, "MIN_WORK", 0.0)
    _torch_incremental._TRACED[model].decisions.clear()
    fast = cnnlens.explain(model, x, "occlusion", window=8, stride=4, incremental=True)
    assert runs[1] is True and not any(runs[2:]) and len(runs) > 2
    assert list(fast.extras["occlusion_engine"]) == ["incremental"] * 2
    again = cnnlens.explain(model, x, "occlusion", window=8, stride=4, incremental=True)
    np.testing.assert_array_equal(again.maps, fast.maps)  # the same way, the same maps, every call


def test_little_flop_saving_means_brute_force(monkeypatch):
    monkeypatch.setattr(_torch_incremental, "_decide", REAL_DECIDE)
    monkeypatch.setattr(_torch_incremental, "MIN_FLOP_SAVING", 1e9)
    model, x = MODELS["vgg11"], images(1, 3, 48, 48, seed=2)
    fast = cnnlens.explain(model, x, "occlusion", window=8, stride=4, incremental=True)
    assert fast.extras["occlusion_engine"][0].startswith("brute force (incremental saves only")  # dry run: 1.x
    assert rel_err(fast.maps, cnnlens.explain(model, x, "occlusion", window=8, stride=4, incremental=False).maps) <= 1e-4


def test_an_nhwc_model_runs_brute_force_and_says_why():
    class Permuting(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = MODELS["resnet18"]

        def forward(self, x):  # (N, H, W, C) in
            return self.inner(x.permute(0, 3, 1, 2))

    x = images(1, 3, 64, 64, seed=4)
    backend = cnnlens.load(Permuting().eval(), layout="NHWC")
    fast = cnnlens.explain(backend, x, "occlusion", window=8, stride=4, incremental=True)
    assert fast.extras["occlusion_engine"][0] == "brute force: the model takes NHWC images"
    brute = cnnlens.explain(MODELS["resnet18"], x, "occlusion", window=8, stride=4, incremental=False)
    assert rel_err(fast.maps, brute.maps) <= 1e-5  # the layout never changes the map
