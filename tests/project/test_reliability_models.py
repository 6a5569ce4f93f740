"""Model files and outputs a user may hand over: pickled files (never unpickled unless trusted),
models with several outputs (the class scores chosen with ``output=``), and caches that stay
bounded in a long-running process."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import cnnlens
from cnnlens.adapters.export import to_onnx
from cnnlens.backends import onnx as onnx_backend
from cnnlens.backends.torch import tracing
from cnnlens.cli import main
from tests.helpers import images

X = images(2, 3, 16, 16, seed=21)


def small(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3)).eval()


class TwoHeads(nn.Module):
    """Returns auxiliary features first and the class scores second, as a tuple or a dict."""

    def __init__(self, as_dict: bool):
        super().__init__()
        self.body = small()
        self.aux = nn.Linear(3, 5)
        self.as_dict = as_dict

    def forward(self, x):
        logits = self.body(x)
        aux = self.aux(logits.detach()) * 0  # no gradient reaches the input through it
        return {"aux": aux, "logits": logits} if self.as_dict else (aux, logits)


def input_gradient(model: nn.Module, x: np.ndarray, pick, classes) -> np.ndarray:
    xt = torch.tensor(x, requires_grad=True)
    scores = pick(model(xt))
    (grad,) = torch.autograd.grad(scores[torch.arange(len(x)), torch.as_tensor(classes)].sum(), xt)
    return grad.numpy()


# ---------------------------------------------------------------- pickled files


@pytest.fixture()
def pickled(tmp_path):
    model = small()
    path = tmp_path / "model.pt"
    torch.save(model, path)
    weights = tmp_path / "weights.pt"
    torch.save(model.state_dict(), weights)
    return model, str(path), str(weights)


def test_pickled_model_is_refused_with_the_reason_and_the_way_out(pickled):
    _, path, weights = pickled
    for p in (path, weights):
        with pytest.raises(cnnlens.ModelError, match=r"pickled.*runs whatever code.*trust_pickle=True.*--trust-pickle"):
            cnnlens.load(p)
        with pytest.raises(cnnlens.ModelError, match="trust_pickle"):
            cnnlens.explain(p, X, "saliency")


def test_refusal_happens_before_any_unpickling(pickled, monkeypatch):
    _, path, _ = pickled

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(cnnlens.ModelError, match="trust_pickle"):
        cnnlens.load(path)


def test_trusted_pickle_explains_like_the_module(pickled):
    model, path, weights = pickled
    backend = cnnlens.load(path, trust_pickle=True)
    a = cnnlens.explain(backend, X, "saliency")
    b = cnnlens.explain(model, X, "saliency")
    np.testing.assert_array_equal(a.maps, b.maps)
    with pytest.raises(cnnlens.ModelError, match=r"state_dict.*load_state_dict"):
        cnnlens.load(weights, trust_pickle=True)


def test_cli_trust_pickle(pickled, capsys):
    _, path, _ = pickled
    assert main(["layers", path, "--input-shape", "3", "16", "16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "--trust-pickle" in err[0]
    assert main(["layers", path, "--input-shape", "3", "16", "16", "--trust-pickle"]) == 0
    assert "Conv2d" in capsys.readouterr().out


def test_torchscript_needs_no_trust(tmp_path):
    path = str(tmp_path / "m.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(small(), torch.zeros(1, 3, 16, 16)), path)
    np.testing.assert_allclose(cnnlens.explain(path, X, "saliency").maps,
                               cnnlens.explain(small(), X, "saliency").maps, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- several outputs


@pytest.mark.parametrize("as_dict", [False, True], ids=["tuple", "dict"])
def test_output_choice_explains_the_chosen_scores(as_dict):
    model = TwoHeads(as_dict).eval()
    choice = "logits" if as_dict else 1
    exp = cnnlens.explain(cnnlens.load(model, output=choice), X, "saliency", target=[2, 0])
    expected = input_gradient(model, X, lambda out: out[choice], [2, 0])
    np.testing.assert_allclose(exp.maps, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    assert exp.logits.shape == (2, 3)


@pytest.mark.parametrize("as_dict", [False, True], ids=["tuple", "dict"])
def test_default_is_the_first_tensor_with_a_warning_that_says_how_to_choose(as_dict):
    model = TwoHeads(as_dict).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exp = cnnlens.explain(model, X, "feature_maps", layer="body.0")  # forward only: the aux output has no gradient
        cnnlens.explain(model, X, "feature_maps", layer="body.0")
    messages = [str(w.message) for w in caught if "output=" in str(w.message)]
    assert len(messages) == 1  # once per model
    assert "explains the first" in messages[0] and "cnnlens.load(model, output=" in messages[0]
    assert exp.logits.shape == (2, 5)  # the first tensor: aux
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saliency = cnnlens.explain(model, X, "saliency")
    assert saliency.logits.shape == (2, 5) and (saliency.maps == 0).all()  # aux does not depend on the input


def test_unknown_output_lists_the_entries():
    with pytest.raises(cnnlens.ModelError, match=r"no entry 'scores' \(it has: 'aux', 'logits'\)"):
        cnnlens.explain(cnnlens.load(TwoHeads(True), output="scores"), X, "saliency")
    with pytest.raises(cnnlens.ModelError, match=r"no entry 5 \(it has: 0, 1\)"):
        cnnlens.explain(cnnlens.load(TwoHeads(False), output=5), X, "saliency")


def test_onnx_output_choice(tmp_path):
    model = TwoHeads(False).eval()
    path = str(tmp_path / "two.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, 3, 16, 16), path, dynamo=False, input_names=["input"],
                          output_names=["aux", "scores"], dynamic_axes={"input": {0: "n"}})
    with torch.no_grad():
        expected = model(torch.from_numpy(X))[1].numpy()
    for choice in ("scores", 1, -1):
        exp = cnnlens.explain(cnnlens.load(path, output=choice), X, "occlusion", window=4)
        np.testing.assert_allclose(exp.logits, expected, rtol=1e-4, atol=1e-5)
    with pytest.warns(UserWarning, match=r"2 outputs \(aux, scores\).*output=NAME"):
        assert cnnlens.load(path).output == "aux"
    with pytest.raises(cnnlens.ModelError, match=r"no output 'logits': its outputs are aux, scores"):
        cnnlens.load(path, output="logits")
    assert main(["explain", path, "x.png", "--output", "nope"]) == 2


# ---------------------------------------------------------------- bounded caches


def test_trace_cache_per_model_is_bounded():
    model = small()
    for size in range(8, 8 + 2 * tracing.TRACES_PER_MODEL, 1):
        cnnlens.explain(model, images(1, 3, size, size, seed=size), "gradcam")
    assert len(tracing._TRACES[model]) == tracing.TRACES_PER_MODEL


def test_onnx_sessions_per_backend_are_bounded(tmp_path):
    """Forward sessions (one per set of extra outputs) and gradient sessions (one per layers, rule and
    image size) share one bound; the plain forward session is always kept."""
    path = to_onnx(small(), str(tmp_path / "s.onnx"), input_shape=(3, 16, 16))
    backend = cnnlens.load(path)
    layers = backend.layers((3, 16, 16))
    names = [l.name for l in layers]
    spatial = [l.name for l in layers if l.spatial]
    first = cnnlens.explain(backend, X, "feature_maps", layer=names[0]).maps
    first_cam = cnnlens.explain(backend, X, "gradcam", layer=spatial[0]).maps
    for _ in range(2):
        for name in names:
            cnnlens.explain(backend, X, "feature_maps", layer=name)
        for name in spatial:
            cnnlens.explain(backend, X, "gradcam", layer=name)
            cnnlens.explain(backend, X, "guided_gradcam", layer=name)
    assert len(backend._sessions) <= onnx_backend.runtime.SESSIONS_KEPT + 1
    # an evicted session is simply made again, with the same result
    np.testing.assert_array_equal(cnnlens.explain(backend, X, "feature_maps", layer=names[0]).maps, first)
    np.testing.assert_array_equal(cnnlens.explain(backend, X, "gradcam", layer=spatial[0]).maps, first_cam)
