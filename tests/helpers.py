"""Helpers shared by the test files: seeded images, BatchNorm statistics worth testing, relative error."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def images(n: int, c: int, h: int, w: int, seed: int) -> np.ndarray:
    """Seeded standard-normal float32 images (n, c, h, w)."""
    return np.random.default_rng(seed).standard_normal((n, c, h, w)).astype(np.float32)


def randomise_batchnorm(model: nn.Module, seed: int = 1, mean_scale: float = 0.1) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so eval-mode BN is not the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                k = m.num_features
                m.running_mean.copy_(mean_scale * torch.randn(k, generator=g))
                m.running_var.copy_(0.5 + torch.rand(k, generator=g))
                m.weight.copy_(0.5 + torch.rand(k, generator=g))
                m.bias.copy_(0.1 * torch.randn(k, generator=g))
                m.num_batches_tracked.fill_(7)
    return model


def rel_err(a, b, scale=None) -> float:
    """max|a - b| / max|b| (or / scale); the reference must not be all zero (that would prove nothing)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = np.abs(b).max() if scale is None else float(scale)
    assert scale > 0, "reference is identically zero: the comparison would prove nothing"
    return float(np.abs(a - b).max() / scale)


def assert_close(a, b, tol: float = 1e-4) -> None:
    """Relative error (see rel_err) at most ``tol``."""
    err = rel_err(a, b)
    assert err <= tol, f"relative error {err:.3g} > {tol:g}"


def check_per_image(name, got: np.ndarray, ref: np.ndarray, tol: float, measured: dict) -> float:
    """Float32 maps of ``ref``'s shape, each image's within ``tol`` relative error on its own scale (and
    its reference not all zero); the whole batch's error is recorded in ``measured[name]`` and returned."""
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert got.dtype == np.float32
    for i in range(len(ref)):
        assert np.abs(ref[i]).max() > 0, f"{name}: image {i}'s reference is all zero"
        err_i = rel_err(got[i], ref[i])
        assert err_i <= tol, f"{name}: image {i} relative error {err_i:.3g} > {tol:g}"
    err = rel_err(got, ref)
    measured[name] = err
    return err


def module_workdir(tmp_path, monkeypatch, module: str, source: str, images=("one", "two"), size=(40, 50)):
    """A fixture body (``yield from``): ``tmp_path`` made the working folder, holding ``module``.py
    (importable, dropped from ``sys.modules`` before and after) and random RGB images ``NAME.png``."""
    import sys

    from PIL import Image

    (tmp_path / f"{module}.py").write_text(source)
    rng = np.random.default_rng(0)
    for name in images:
        Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(module, None)
    yield tmp_path
    sys.modules.pop(module, None)


def one_torch_thread():
    """A fixture body (``yield from``): torch on one thread while it runs. On a shared 2-core machine
    two spinning OpenMP threads were measured 100-200x slower per small backward pass whenever
    another process held a core."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
