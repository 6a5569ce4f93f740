"""cnnlens as a long-running process uses it: interrupted calls, many calls, threads, big images, files.

* A KeyboardInterrupt in the middle of a call (occlusion and Score-CAM batches, guided
  backprop's backward pass, the layer trace) leaves the model exactly as it was, no ReLU rule
  active, and the next call gives the maps a fresh copy of the model gives.
* 1000 calls on one model grow neither the process's memory nor the hooks nor the trace cache,
  and cnnlens keeps no reference to the model.
* Two threads explaining with one model get the maps of one call after the other, while a third
  thread's plain forward and backward pass on the same model stays plain.
* On a 1024 x 1024 image the NumPy memory of occlusion, SmoothGrad and Score-CAM is bounded by
  the batch (tracemalloc sees NumPy's allocations), not by the number of windows, samples or
  channels.
* PNG, .npy and HTML files are written atomically: a write that fails half-way (OSError or
  KeyboardInterrupt) leaves no file, or the previous file byte for byte, and no temporary.
* Names from a model or a file name are escaped in the HTML report (the browser test in
  test_report_browser.py loads an escaped page; this one checks the markup itself, through the
  CLI with a real file whose name is markup).
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import gc
import html
import html.parser
import os
import sys
import textwrap
import threading
import tracemalloc
import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch.nn.modules.module as torch_module
from PIL import Image
from torch import nn

import cnnlens
from cnnlens.adapters import render
from cnnlens.adapters import report as report_module
from cnnlens.backends import torch as torch_backend
from cnnlens.backends.torch import eval_state, tracing
from cnnlens.cli import main
from cnnlens.core import progress
from tests.backends.test_model_safety import assert_relu_is_plain, assert_unchanged, prepare, snapshot
from tests.cli.test_cli import workdir  # noqa: F401  (the CLI's fixture: smallnet.py and two PNGs in a tmp cwd)
from tests.helpers import randomise_batchnorm

NUM_CLASSES = 10


def images(n, size, seed, channels=3):
    return np.random.default_rng(seed).standard_normal((n, channels, size, size)).astype(np.float32)


# ================================================================ 1. KeyboardInterrupt half-way


class Tripwire(nn.Module):
    """The identity, raising KeyboardInterrupt on its ``at``-th call after ``arm``."""

    def __init__(self):
        super().__init__()
        self.at = None
        self.calls = 0

    def arm(self, at):
        self.at, self.calls = at, 0

    def disarm(self):
        self.at = None

    def forward(self, x):
        self.calls += 1
        if self.at is not None and self.calls == self.at:
            raise KeyboardInterrupt
        return x


class BackwardTripwire(torch.autograd.Function):
    """The identity, whose backward raises KeyboardInterrupt on its ``at``-th call while armed."""

    at = None
    calls = 0

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        BackwardTripwire.calls += 1
        if BackwardTripwire.at is not None and BackwardTripwire.calls == BackwardTripwire.at:
            raise KeyboardInterrupt
        return g


class InterruptNet(nn.Module):
    """conv-BN-ReLU(inplace)-Dropout2d, a tripwire half-way (forward and backward), conv, F.relu, GAP, fc."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU(inplace=True)
        self.drop = nn.Dropout2d(0.5)
        self.tripwire = Tripwire()
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, NUM_CLASSES)

    def forward(self, x):
        h = self.drop(self.relu1(self.bn1(self.conv1(x))))
        h = BackwardTripwire.apply(self.tripwire(h))
        h = F.relu(self.conv2(h))
        return self.fc(h.mean(dim=(2, 3)))


def interrupt_net():
    torch.manual_seed(0)
    model = randomise_batchnorm(InterruptNet(), mean_scale=0.2)
    return prepare(model, "train")  # train mode, some frozen parameters, some with a .grad


class Recorder:
    """A progress reporter that records the task, the steps done, and whether its bar was closed."""

    def __init__(self):
        self.tasks = []

    @contextlib.contextmanager
    def __call__(self, name, total, unit="pass"):
        entry = {"name": name, "total": total, "done": 0, "closed": False}
        self.tasks.append(entry)

        def advance(steps=1):
            entry["done"] += steps

        try:
            yield advance
        finally:
            entry["closed"] = True


# case: (method, options, images, where the tripwire fires, at which call)
INTERRUPTS = {
    # forward calls: 1 = the clean logits, 2 = the first batch of 4 windows, 3 = the second: interrupted
    # brute force: its passes are the model's forward calls the tripwire counts
    "occlusion": ("occlusion", dict(window=8, stride=4, batch_size=4, incremental=False), 1, "forward", 3),
    # forward calls: 1 = the activations, 2 = the first 4 masked images, 3 = the next 4: interrupted
    "scorecam": ("scorecam", dict(layer="conv2", batch_size=4), 2, "forward", 3),
    # backward passes over 2 + 2 images: the second is interrupted
    "guided_backprop": ("guided_backprop", dict(batch_size=2), 4, "backward", 2),
    # the second image's forward, with the capture hooks on both layers installed
    "gradcam_layers": ("gradcam", dict(layer=["conv1", "conv2"], batch_size=1), 2, "forward", 2),
    # the second image's guided backward pass, after the plain one to the layer, inside the capture
    "guided_gradcam": ("guided_gradcam", dict(layer="conv2", batch_size=1), 2, "backward", 2),
    # the first forward of a fresh model is the layer trace (default layer, automatic batch size)
    "gradcam_trace": ("gradcam", dict(), 2, "forward", 1),
}


@pytest.mark.parametrize("case", list(INTERRUPTS))
def test_keyboard_interrupt_half_way_leaves_the_model_as_it_was(case):
    method, options, n, where, at = INTERRUPTS[case]
    model = interrupt_net()
    fresh = copy.deepcopy(model)
    x = images(n, 32, seed=1)
    target = [3, 7, 1, 5][:n]
    before = snapshot(model)
    recorder = Recorder()
    if case == "gradcam_trace":
        assert model not in tracing._TRACES  # so the first forward really is the trace
    try:
        if where == "forward":
            model.tripwire.arm(at)
        else:
            BackwardTripwire.at, BackwardTripwire.calls = at, 0
        with progress.reporting(recorder), pytest.raises(KeyboardInterrupt):
            cnnlens.explain(model, x, method, target=target, **options)
        # the interrupt came where it was meant to
        if where == "forward":
            assert model.tripwire.calls == at
        else:
            assert BackwardTripwire.calls == at
    finally:
        model.tripwire.disarm()
        BackwardTripwire.at = None
    if method in ("occlusion", "scorecam"):  # half-way through the batches, and the progress bar was closed
        (task,) = recorder.tasks
        assert task["name"] == method and 0 < task["done"] < task["total"] and task["closed"]
        assert task["done"] == 4
    assert_unchanged(before, model)  # hooks, training flags, requires_grad, .grad, parameters, buffers
    assert_relu_is_plain()
    assert id(model) not in eval_state._EvalState._active  # no call is counted as still running

    # the model explains as a fresh copy of it does, and is still left untouched
    got = cnnlens.explain(model, x, method, target=target, **options)
    assert_unchanged(before, model)
    want = cnnlens.explain(fresh, x, method, target=target, **options)
    assert np.abs(want.maps).max() > 0
    np.testing.assert_array_equal(got.maps, want.maps)
    np.testing.assert_array_equal(got.logits, want.logits)
    # and a plain torch gradient through the model is the plain one (no guided ReLU left behind)
    xt = torch.tensor(x, requires_grad=True)
    ref = copy.deepcopy(fresh).eval()
    (plain,) = torch.autograd.grad(ref(xt)[:, 3].sum(), xt)
    with torch_backend.evaluating(model):
        xt = torch.tensor(x, requires_grad=True)
        (again,) = torch.autograd.grad(model(xt)[:, 3].sum(), xt)
    assert torch.equal(again, plain)
    assert_unchanged(before, model)


# ================================================================ 2. 1000 calls


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        h = self.relu(self.conv2(self.relu(self.conv1(x))))
        return self.fc(h.mean(dim=(2, 3)))


def rss_bytes():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


CORE_HOOK_DICTS = {"_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"}


def hook_count(model):
    """Every hook on every module (all of the module's ``*hook*`` dicts: forward, forward-pre,
    backward, full-backward-pre, with-kwargs, state-dict...), every parameter's tensor hooks,
    and torch's global module hooks."""
    total = 0
    for module in model.modules():
        dicts = {k: v for k, v in vars(module).items() if "hook" in k and isinstance(v, dict)}
        assert CORE_HOOK_DICTS <= set(dicts), sorted(dicts)  # the count looks where torch keeps them
        total += sum(len(v) for v in dicts.values())
    total += sum(len(p._backward_hooks or {}) for p in model.parameters())
    total += sum(len(v) for k, v in vars(torch_module).items()
                 if k.startswith("_global") and "hook" in k and isinstance(v, dict))
    return total


def _cycle(model, x, count):
    for i in range(count):
        if i % 3 == 0:
            exp = cnnlens.explain(model, x, "gradcam")  # default layer
        elif i % 3 == 1:
            exp = cnnlens.explain(model, x, "occlusion", window=4, stride=2)
        else:
            exp = cnnlens.explain(model, x, "guided_backprop")
        assert exp.maps.shape[0] == len(x)
    return exp


def test_1000_calls_grow_neither_memory_nor_hooks_and_keep_no_reference(record_property):
    torch.manual_seed(0)
    model = TinyNet().train()
    x = images(2, 8, seed=2)
    assert hook_count(model) == 0
    handle = model.conv1.register_forward_hook(lambda *args: None)
    assert hook_count(model) == 1  # the count sees hooks
    handle.remove()

    first = cnnlens.explain(model, x, "guided_backprop", target=[1, 2]).maps
    _cycle(model, x, 50)
    gc.collect()  # models of earlier tests, if any are still waiting to be freed
    traces = len(tracing._TRACES)
    assert len(tracing._TRACES[model]) == 1  # one input shape: one trace
    gc.collect()
    rss_before = rss_bytes()
    last = _cycle(model, x, 1000)
    gc.collect()
    growth = rss_bytes() - rss_before
    record_property("rss_growth_mb", growth / 2**20)
    print(f"RSS growth over 1000 calls: {growth / 2**20:.2f} MiB")
    assert growth < 20 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB over 1000 calls"
    assert hook_count(model) == 0
    assert len(tracing._TRACES) == traces
    assert len(tracing._TRACES[model]) == 1
    assert all(m.training for m in model.modules())
    assert torch._C._len_torch_function_stack() == 0
    assert eval_state._EvalState._active == {}
    # still the same answers after 1000 calls
    np.testing.assert_array_equal(cnnlens.explain(model, x, "guided_backprop", target=[1, 2]).maps, first)

    # cnnlens keeps no reference to the model: it is freed, and its trace with it
    alive = weakref.ref(model)
    del model, last
    gc.collect()
    assert alive() is None, f"the model is still referenced by {[type(r) for r in gc.get_referrers(alive())]}"
    assert len(tracing._TRACES) == traces - 1


# ================================================================ 3. threads


class Rendezvous:
    """Makes the third thread's plain pass happen inside the explaining threads' passes.

    The model calls :meth:`wait` after its last convolution (the default Grad-CAM layer, whose
    capture hook has fired by then) and before its ReLUs' backward. In an explaining thread it
    blocks until the plain thread has finished a whole forward + backward pass that started
    after it got there: that pass runs while this thread's hooks are installed and its ReLU
    rule is active, so anything not thread-local would show -- every time, not by luck of timing.
    """

    def __init__(self):
        self.condition = threading.Condition()
        self.passes = 0
        self.explaining = set()
        self.waits = 0

    def wait(self):
        if threading.get_ident() not in self.explaining:
            return
        with self.condition:
            wanted = self.passes + 2  # the pass under way may have started before
            if not self.condition.wait_for(lambda: self.passes >= wanted, timeout=60):
                raise RuntimeError("the plain thread stopped making passes")
            self.waits += 1

    def plain_pass_done(self):
        with self.condition:
            self.passes += 1
            self.condition.notify_all()


class ThreadNet(nn.Module):
    """No BatchNorm or dropout, so its output does not depend on the training flags that concurrent
    calls switch; nn.ReLU (in place) and F.relu, so guided backprop differs from the plain gradient."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(12, 12, 3, padding=1)
        self.fc = nn.Linear(12, NUM_CLASSES)
        self.rendezvous = None  # a plain attribute, not a module: not a layer

    def forward(self, x):
        h = self.relu(self.conv1(x))
        h = F.relu(self.conv2(h))
        h = self.conv3(h)
        if self.rendezvous is not None:
            self.rendezvous.wait()
        h = F.relu(h - 0.05)
        return self.fc(h.mean(dim=(2, 3)))


THREAD_CALLS = {
    "gradcam": dict(),
    "guided_backprop": dict(),
    "saliency": dict(),
    "occlusion": dict(window=4, stride=4),
}
THREAD_TARGET = [2, 5]
ITERATIONS = 3


def _plain_gradient(model, x):
    xt = torch.tensor(x, requires_grad=True)
    logits = model(xt)
    (grad,) = torch.autograd.grad(logits[0, THREAD_TARGET[0]] + logits[1, THREAD_TARGET[1]], xt)
    return grad


def test_two_threads_explaining_one_model_agree_with_one_after_the_other():
    torch.manual_seed(0)
    model = ThreadNet()
    prepare(model, "train")  # training flags that must come back, frozen parameters, some .grad
    x = images(2, 16, seed=3)
    sequential = {m: cnnlens.explain(model, x, m, target=THREAD_TARGET, **o).maps for m, o in THREAD_CALLS.items()}
    assert cnnlens.load(model).default_layer(x.shape) == "conv3"
    plain = _plain_gradient(model, x)
    np.testing.assert_allclose(sequential["saliency"], plain.numpy(), rtol=1e-5, atol=1e-6 * plain.abs().max().item())
    # the checks have teeth: a guided rule or a hook leaking into another thread would show
    gap = np.abs(sequential["guided_backprop"] - sequential["saliency"]).max()
    assert gap > 0.05 * np.abs(sequential["saliency"]).max()
    for maps in sequential.values():
        assert np.abs(maps).max() > 0
    # the third thread uses other images, so an activation captured from its pass would be wrong
    other = images(2, 16, seed=30)
    plain_other = _plain_gradient(model, other)

    tracing._TRACES.pop(model, None)  # both threads trace the model at the same time too
    before = snapshot(model)
    rendezvous = Rendezvous()
    barrier = threading.Barrier(3)
    explainers_done = threading.Event()
    errors = []
    results = {0: [], 1: []}
    plain_grads = []

    def explainer(index):
        try:
            rendezvous.explaining.add(threading.get_ident())
            barrier.wait(timeout=60)
            order = list(THREAD_CALLS) if index == 0 else list(reversed(THREAD_CALLS))
            for _ in range(ITERATIONS):
                for method in order:
                    exp = cnnlens.explain(model, x, method, target=THREAD_TARGET, **THREAD_CALLS[method])
                    results[index].append((method, exp.maps))
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    def plain_user():
        try:
            barrier.wait(timeout=60)
            while not explainers_done.is_set():
                plain_grads.append(_plain_gradient(model, other))
                rendezvous.plain_pass_done()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=explainer, args=(i,)) for i in range(2)]
    user = threading.Thread(target=plain_user)
    model.rendezvous = rendezvous
    try:
        for t in threads + [user]:
            t.start()
        for t in threads:
            t.join(timeout=120)
        explainers_done.set()
        user.join(timeout=60)
    finally:
        explainers_done.set()
        model.rendezvous = None
    assert not any(t.is_alive() for t in threads + [user])
    if errors:
        raise errors[0]

    for index in (0, 1):
        assert len(results[index]) == ITERATIONS * len(THREAD_CALLS)
        for method, maps in results[index]:
            want = sequential[method]
            np.testing.assert_allclose(maps, want, rtol=1e-5, atol=1e-6, err_msg=f"thread {index}, {method}")
    # every explaining forward pass (traces included) had a plain pass inside it
    assert rendezvous.waits >= 2 * ITERATIONS * len(THREAD_CALLS)
    assert len(plain_grads) >= 2
    for grad in plain_grads:
        torch.testing.assert_close(grad, plain_other, rtol=1e-5, atol=1e-6)
    assert_unchanged(before, model)  # every training flag back to train(), nothing left installed
    assert all(m.training for m in model.modules())
    assert_relu_is_plain()
    assert eval_state._EvalState._active == {}
    assert len(tracing._TRACES[model]) == 1


# ================================================================ 4. memory on a 1024 x 1024 image


class BigImageNet(nn.Module):
    """3 -> 4 channels, a strided convolution, GAP, linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, stride=4, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        h = self.relu(self.conv2(self.relu(self.conv1(x))))
        return self.fc(h.mean(dim=(2, 3)))


SIDE = 1024
IMAGE_BYTES = 3 * SIDE * SIDE * 4
SLACK = 2**20  # small arrays: logits, scores, interpolation matrices, index vectors


@pytest.fixture(scope="module")
def big():
    torch.manual_seed(0)
    model = BigImageNet().eval()
    x = images(1, SIDE, seed=4)
    assert x.nbytes == IMAGE_BYTES
    return model, x


def numpy_peak(call):
    """(result, peak bytes of traced allocations during the call): NumPy registers its array data with
    tracemalloc (torch's allocator does not, so this is NumPy's memory only)."""
    gc.collect()
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        result = call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        if started:
            tracemalloc.stop()
    return result, peak - base


def _measure(big, method, **options):
    model, x = big
    exp, peak = numpy_peak(lambda: cnnlens.explain(model, x, method, target=1, **options))
    assert np.isfinite(exp.maps).all() and np.abs(exp.maps).max() > 0
    key = f"{method} " + " ".join(f"{k}={v}" for k, v in options.items())
    print(f"{key}: NumPy peak {peak / 2**20:.1f} MiB = {peak / IMAGE_BYTES:.2f} images")
    return exp, peak


def test_occlusion_memory_is_bounded_by_the_batch(big, record_property):
    # 64 windows in 16 batches of 4: all 64 occluded images at once would be 64 images
    exp, peak = _measure(big, "occlusion", window=128, stride=128, batch_size=4, incremental=False)
    record_property("occlusion_b4_peak_images", peak / IMAGE_BYTES)
    assert exp.maps.shape == (1, SIDE, SIDE)
    assert peak < (4 + 6) * IMAGE_BYTES + SLACK
    # each batch costs two batch-sized arrays (the gathered images and the occluded copy) and a mask
    assert peak < (2 * 4 + 1) * IMAGE_BYTES + SLACK


def test_occlusion_memory_follows_batch_size(big, record_property):
    """The measurement sees the batches: 16 windows in batches of 2 or of 8 (brute force's occluded
    copies are NumPy arrays; the incremental way holds its regions in torch, not NumPy)."""
    _, small = _measure(big, "occlusion", window=256, stride=256, batch_size=2, incremental=False)
    _, large = _measure(big, "occlusion", window=256, stride=256, batch_size=8, incremental=False)
    record_property("occlusion_b2_peak_images", small / IMAGE_BYTES)
    record_property("occlusion_b8_peak_images", large / IMAGE_BYTES)
    assert large > small + 6 * IMAGE_BYTES  # at least one image per extra batch item
    for batch, peak in ((2, small), (8, large)):
        assert peak < (2 * batch + 1) * IMAGE_BYTES + SLACK


def test_smoothgrad_memory_is_bounded_by_the_batch_not_the_samples(big, record_property):
    """SmoothGrad keeps float64 running statistics (mean, mean of squares, M2: 6 images) and its
    per-batch update works in float64 (about 6 images per noisy sample at its peak), so its constant
    factors are larger than occlusion's; but nothing grows with the number of samples."""
    exp8, peak8 = _measure(big, "smoothgrad", samples=8, batch_size=2)
    exp16, peak16 = _measure(big, "smoothgrad", samples=16, batch_size=2)
    record_property("smoothgrad_s8_b2_peak_images", peak8 / IMAGE_BYTES)
    record_property("smoothgrad_s16_b2_peak_images", peak16 / IMAGE_BYTES)
    assert exp8.maps.shape == (1, 3, SIDE, SIDE)
    assert peak8 < (6 * 2 + 16) * IMAGE_BYTES + SLACK
    assert abs(peak16 - peak8) < 0.5 * IMAGE_BYTES  # twice the samples, the same memory


def test_scorecam_memory_is_bounded_by_the_batch(big, record_property):
    exp, peak = _measure(big, "scorecam", batch_size=4)
    record_property("scorecam_b4_peak_images", peak / IMAGE_BYTES)
    assert exp.maps.shape == (1, SIDE, SIDE)
    assert peak < (4 + 6) * IMAGE_BYTES + SLACK


# ================================================================ 5. atomic files


class Failure:
    """A replacement writer: writes some bytes where it was asked to, then raises ``error``."""

    def __init__(self, error, after=0):
        self.error = error
        self.after = after  # calls to let through to the real writer first
        self.calls = 0
        self.wrote_to = []

    def partial(self, target, data):
        if isinstance(target, (str, os.PathLike)):
            with open(target, "wb") as handle:
                handle.write(data)
            self.wrote_to.append(os.path.abspath(os.fspath(target)))
        else:
            target.write(data)
            target.flush()
            self.wrote_to.append(os.path.abspath(getattr(target, "name", "?")))
        raise self.error("failed half-way on purpose")


def _pil_save_failing(monkeypatch, failure):
    real = Image.Image.save

    def save(self, fp, format=None, **params):
        failure.calls += 1
        if failure.calls <= failure.after:
            return real(self, fp, format, **params)
        failure.partial(fp, b"\x89PNG\r\n\x1a\n" + b"half a picture" * 64)

    monkeypatch.setattr(Image.Image, "save", save)


def _no_temporaries(folder):
    left = [name for name in os.listdir(folder) if name.startswith(".cnnlens-") or name.endswith(".tmp")]
    assert left == [], f"temporary files left: {left}"


def _check_outcome(path, previous, failure):
    folder = os.path.dirname(path)
    assert failure.wrote_to, "the failing writer was never called"
    for written in failure.wrote_to:  # it wrote to a temporary beside the target, now gone
        assert os.path.dirname(written) == folder and written != path and not os.path.exists(written)
    if previous is None:
        assert not os.path.exists(path)
    else:
        with open(path, "rb") as handle:
            assert handle.read() == previous
    _no_temporaries(folder)
    assert sorted(os.listdir(folder)) == sorted(["keep.txt"] + ([os.path.basename(path)] if previous else []))


ERRORS = [OSError, KeyboardInterrupt]


def _folder(tmp_path, previous_name=None, previous=None):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "keep.txt").write_text("unrelated")
    if previous is not None:
        (folder / previous_name).write_bytes(previous)
    return folder


@pytest.mark.parametrize("had_previous", [False, True], ids=["new", "replacing"])
@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.__name__)
@pytest.mark.parametrize("what", ["array", "figure"])
def test_save_png_failing_half_way(tmp_path, monkeypatch, error, had_previous, what):
    array = np.random.default_rng(5).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    # a good write first: the real thing round-trips
    good = render.save_png(array, str(tmp_path / "good.png"))
    with Image.open(good) as png:
        np.testing.assert_array_equal(np.asarray(png.convert("RGB")), array)
    previous = (tmp_path / "good.png").read_bytes() if had_previous else None
    folder = _folder(tmp_path, "map.png", previous)
    path = str(folder / "map.png")
    data = array if what == "array" else render.gradient_figure(array, np.ones((3, 20, 30), np.float32))
    failure = Failure(error)
    _pil_save_failing(monkeypatch, failure)
    with pytest.raises(error):
        render.save_png(data, path)
    _check_outcome(path, previous, failure)


@pytest.mark.parametrize("had_previous", [False, True], ids=["new", "replacing"])
@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.__name__)
def test_save_npy_failing_half_way(tmp_path, monkeypatch, error, had_previous):
    array = np.arange(600, dtype=np.float32).reshape(20, 30)
    good = render.save_npy(array, str(tmp_path / "good.npy"))
    np.testing.assert_array_equal(np.load(good), array)
    previous = (tmp_path / "good.npy").read_bytes() if had_previous else None
    folder = _folder(tmp_path, "map.npy", previous)
    path = str(folder / "map.npy")
    failure = Failure(error)
    monkeypatch.setattr(np, "save", lambda file, arr, *a, **k: failure.partial(file, b"\x93NUMPY" + b"\0" * 100))
    with pytest.raises(error):
        render.save_npy(array * 2, path)
    _check_outcome(path, previous, failure)


@pytest.fixture(scope="module")
def report_inputs():
    torch.manual_seed(0)
    backend = cnnlens.load(TinyNet().eval())
    x = images(1, 8, seed=6)
    display = np.random.default_rng(6).integers(0, 255, (1, 8, 8, 3), dtype=np.uint8)
    results = report_module.explain_all(backend, x, ["saliency"])
    return backend, x, display, results


@pytest.mark.parametrize("had_previous", [False, True], ids=["new", "replacing"])
@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.__name__)
def test_write_report_failing_half_way(tmp_path, monkeypatch, report_inputs, error, had_previous):
    backend, x, display, results = report_inputs
    kwargs = dict(names=["a.png"], methods=["saliency"], results=results)
    good = str(tmp_path / "good.html")
    report_module.write_report(good, backend, x, display, **kwargs)
    with open(good, encoding="utf-8") as handle:
        page = handle.read()
    assert page.startswith("<!DOCTYPE html>") and page.endswith("</html>")
    previous = page.encode("utf-8") if had_previous else None
    folder = _folder(tmp_path, "report.html", previous)
    path = str(folder / "report.html")
    failure = Failure(error)
    real_open = builtins.open

    class HalfWriter:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, text):
            self.handle.close()
            failure.partial(self.handle.name, text[: len(text) // 2].encode("utf-8"))

    def opening(file, mode="r", *args, **kwargs):
        return HalfWriter(real_open(file, mode, *args, **kwargs))

    monkeypatch.setattr(report_module, "open", opening, raising=False)  # write_report's own open()
    with pytest.raises(error):
        report_module.write_report(path, backend, x, display, title="second", **kwargs)
    _check_outcome(path, previous, failure)


@pytest.mark.parametrize("had_previous", [False, True], ids=["new", "replacing"])
@pytest.mark.parametrize("error,status", [(OSError, 2), (KeyboardInterrupt, 130)], ids=["OSError", "KeyboardInterrupt"])
def test_cli_explain_failing_half_way(workdir, monkeypatch, capsys, error, status, had_previous):  # noqa: F811
    argv = ["explain", "smallnet:build", "one.png", "two.png", "-m", "gradcam,saliency", "--size", "32", "32",
            "--out", "out", "--save-maps"]
    files = sorted(f"{s}_{m}.{e}" for s in ("one", "two") for m in ("gradcam", "saliency") for e in ("png", "npy"))
    previous = {}
    if had_previous:
        assert main(argv) == 0
        assert sorted(os.listdir("out")) == files
        previous = {name: (workdir / "out" / name).read_bytes() for name in files}
    capsys.readouterr()
    # PNGs are written in the order one_gradcam, two_gradcam, one_saliency, two_saliency: the third fails
    failure = Failure(error, after=2)
    _pil_save_failing(monkeypatch, failure)
    assert main(argv) == status
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    if error is KeyboardInterrupt:
        assert "interrupted" in err
    assert failure.calls == 3 and len(failure.wrote_to) == 1
    failed = workdir / "out" / "one_saliency.png"
    assert os.path.dirname(failure.wrote_to[0]) == str(workdir / "out") and not os.path.exists(failure.wrote_to[0])
    _no_temporaries("out")
    done = ["one_gradcam.png", "one_gradcam.npy", "two_gradcam.png", "two_gradcam.npy"]
    for name in done:  # what was written before the failure is complete
        if name.endswith(".png"):
            with Image.open(workdir / "out" / name) as png:
                png.load()
                assert png.size[0] > 100
        else:
            assert np.load(workdir / "out" / name).shape == (32, 32)
    if had_previous:
        assert sorted(os.listdir("out")) == files
        assert failed.read_bytes() == previous["one_saliency.png"]  # byte for byte
        for name in ("two_saliency.png", "one_saliency.npy", "two_saliency.npy"):  # never reached
            assert (workdir / "out" / name).read_bytes() == previous[name]
    else:
        assert sorted(os.listdir("out")) == sorted(done)
        assert not failed.exists()


def test_atomic_writes_never_change_the_process_umask(tmp_path, monkeypatch):
    """The umask is process-wide: every thread's new files take it. Whenever cnnlens sets it, a file
    created at that very moment (as another thread could) is probed; it must get the usual mode."""
    real_umask = os.umask
    probes = []

    def umask(mask):
        previous = real_umask(mask)
        probe = str(tmp_path / f"probe{len(probes)}")
        os.close(os.open(probe, os.O_CREAT | os.O_WRONLY, 0o666))  # what another thread might do now
        probes.append(os.stat(probe).st_mode & 0o777)
        return previous

    saved = real_umask(0o022)
    try:
        monkeypatch.setattr(os, "umask", umask)
        render.save_npy(np.zeros(3, np.float32), str(tmp_path / "out" / "a.npy"))
        render.save_png(np.zeros((4, 4, 3), np.uint8), str(tmp_path / "out" / "a.png"))
        monkeypatch.undo()
    finally:
        real_umask(saved)
    assert np.load(tmp_path / "out" / "a.npy").shape == (3,)
    assert all(mode == 0o644 for mode in probes), [oct(m) for m in probes]


# ================================================================ 6. HTML escaping


EVIL = "<script>alert(1)</script>"
EVIL_FILE = "\"'><img src=x onerror=alert(1)>"

EVIL_MODEL = textwrap.dedent(f'''
    import torch
    import torch.nn.functional as F
    from torch import nn

    EVIL = {EVIL!r}

    class Evil(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
            self.relu = nn.ReLU()
            self.add_module(EVIL, nn.Conv2d(6, 8, 3, stride=2, padding=1))
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            x = F.relu(getattr(self, EVIL)(self.relu(self.conv1(x))))  # the last spatial layer: the default
            return self.fc(x.mean(dim=(2, 3)))

    def build():
        torch.manual_seed(0)
        return Evil()
''')


class TagCollector(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_report_escapes_names_from_the_model_and_the_file_names(workdir, capsys):  # noqa: F811
    (workdir / "evilnet.py").write_text(EVIL_MODEL)
    try:
        Image.open("one.png").copy().save(EVIL_FILE + ".png")
    except OSError:
        pytest.skip("the filesystem does not take such a file name")
    (workdir / "labels.txt").write_text(f"cat\n{EVIL}\n{EVIL_FILE}\n")
    try:
        code = main(["report", "evilnet:build", EVIL_FILE + ".png", "one.png", "--size", "24", "24",
                     "--out", "r.html", "-m", "gradcam,feature_maps,saliency", "--labels", "labels.txt",
                     "--title", EVIL])
    finally:
        sys.modules.pop("evilnet", None)
    assert code == 0, capsys.readouterr().err
    page = (workdir / "r.html").read_text(encoding="utf-8")
    # the markup never appears raw ...
    assert EVIL not in page
    assert "<img src=x" not in page and "onerror=alert" not in page.replace("onerror=alert(1)&gt;", "")
    assert page.count("<script") == 1 and page.count("</script>") == 1  # the page's own script only
    # ... but escaped, where the model's layer and the file name are shown
    escaped_layer = html.escape(EVIL)
    assert escaped_layer.startswith("&lt;script&gt;")
    assert page.count(escaped_layer) >= 4  # title, heading, a top-5 label, layer browser, Grad-CAM caption
    assert f"gradcam @ {escaped_layer}" in page  # the default layer is the evil one
    assert f">{escaped_layer} (Conv2d)</option>" in page
    escaped_file = html.escape(EVIL_FILE + ".png")
    assert escaped_file.startswith("&quot;&#x27;&gt;&lt;img src=x")
    assert f"<h2>{escaped_file}</h2>" in page
    # the parsed page: every image is embedded data, no event handler, only the page's own script
    parser = TagCollector()
    parser.feed(page)
    tags = parser.tags
    assert [t for t, _ in tags].count("script") == 1
    for tag, attrs in tags:
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        if tag == "img":
            assert set(attrs) == {"src", "alt"} and attrs["src"].startswith("data:image/png;base64,")
    alts = [attrs["alt"] for tag, attrs in tags if tag == "img"]
    assert EVIL_FILE + ".png: Grad-CAM" in alts  # the name survives as text inside the attribute
