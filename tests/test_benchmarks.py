"""The benchmark's own arithmetic (benchmarks/bench), checked value by value.

Occlusion positions against cnnlens's own grid, layer spreading, the agreement measure, the
interleaved timer (on a fake clock), the targets and the results files; then one tiny real run
of the demo DenseNet on the CPU whose ratios, agreements and cleanup are checked.
"""

from __future__ import annotations

import json
import statistics
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from cnnlens.core.occlusion import OcclusionGrid

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from bench import cases, floors, measure, peers, results, timing, workloads  # noqa: E402

from tests.helpers import images  # noqa: E402


# ---------------------------------------------------------------- cases.positions


@st.composite
def _grid(draw):
    size = draw(st.integers(1, 96))
    window = draw(st.integers(1, size))
    stride = draw(st.integers(1, window))
    return size, window, stride


@settings(max_examples=300, deadline=None)
@given(_grid())
def test_positions_matches_the_occlusion_grid(args):
    size, window, stride = args
    assert cases.positions(size, window, stride) == OcclusionGrid((size, size), window, stride).shape[0]


def test_positions_by_hand():
    assert cases.positions(224, 56, 28) == 7     # 0, 28, ..., 168: the last reaches the edge
    assert cases.positions(11, 4, 3) == 4        # 0, 3, 6 and one flush at 7
    assert cases.positions(64, 8, 4) == 15
    assert cases.positions(5, 5, 2) == 1


# ---------------------------------------------------------------- workloads.spread


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 60), count=st.integers(2, 15))
def test_spread_is_even_and_keeps_both_ends(n, count):
    names = [f"layer{i}" for i in range(n)]
    picked = workloads.spread(names, count)
    if n <= count:
        assert picked == names
        return
    idx = [names.index(p) for p in picked]
    assert len(picked) == count
    assert idx[0] == 0 and idx[-1] == n - 1
    assert all(a < b for a, b in zip(idx, idx[1:]))          # order kept, no name twice
    step = (n - 1) / (count - 1)
    assert all(abs((b - a) - step) < 1 for a, b in zip(idx, idx[1:]))  # evenly spaced, up to rounding


def test_spread_by_hand():
    names = list("abcdefghijk")  # 11 names
    assert workloads.spread(names, 6) == list("acegik")
    assert workloads.spread(names, 2) == ["a", "k"]
    assert workloads.spread(list("abc"), 10) == list("abc")


# ---------------------------------------------------------------- measure.agreement


def test_agreement_values():
    maps = images(3, 1, 8, 8, seed=0)[:, 0]                       # (N, H, W)
    scale = np.array([2.0, 0.5, 7.0])[:, None, None]
    shift = np.array([3.0, -1.0, 100.0])[:, None, None]
    assert measure.agreement(maps, maps.copy(), "gradcam", "captum") == pytest.approx(1.0, abs=1e-12)
    assert measure.agreement(maps, 2 * maps + 3, "gradcam", "captum") == pytest.approx(1.0, abs=1e-12)
    assert measure.agreement(maps, scale * maps + shift, "gradcam", "captum") == pytest.approx(1.0, abs=1e-12)
    assert measure.agreement(maps, -maps, "gradcam", "captum") == pytest.approx(-1.0, abs=1e-12)
    # the mean over images: +1, -1 and +1
    mixed = maps * np.array([1.0, -1.0, 1.0])[:, None, None]
    assert measure.agreement(maps, mixed, "gradcam", "captum") == pytest.approx(1 / 3, abs=1e-12)
    # a peer's (N, 1, H, W) layout is the same maps
    assert measure.agreement(maps, maps[:, None], "gradcam", "torchcam") == pytest.approx(1.0, abs=1e-12)


def test_agreement_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    maps = images(2, 3, 6, 6, seed=1)
    assert measure.agreement(maps, -torch.from_numpy(maps), "saliency", "captum") == pytest.approx(-1.0, abs=1e-6)


def test_agreement_shape_mismatch_is_none():
    maps = images(2, 1, 8, 8, seed=2)[:, 0]
    assert measure.agreement(maps, np.zeros((2, 3, 8, 8)), "gradcam", "captum") is None
    assert measure.agreement(maps, np.zeros((2, 4, 4)), "gradcam", "captum") is None


def test_agreement_transposes_pytorch_grad_cam_guided_backprop():
    ours = images(2, 3, 8, 8, seed=3)                             # (N, C, H, W)
    theirs = ours.transpose(0, 2, 3, 1).copy()                    # (N, H, W, C), as pytorch-grad-cam returns
    assert measure.agreement(ours, theirs, "guided_backprop", "pytorch-grad-cam") == pytest.approx(1.0, abs=1e-12)
    # only for that peer and method: anywhere else an (N, H, W, C) array does not match (N, C, H, W)
    assert measure.agreement(ours, theirs, "guided_backprop", "captum") is None
    assert measure.agreement(ours, theirs, "saliency", "pytorch-grad-cam") is None


# ---------------------------------------------------------------- timing.measure_interleaved


class _Clock:
    """A fake time module: perf_counter reads a number that the fake runners advance."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


def _runners(clock, calls, costs):
    """Runners that log their name, advance the clock by their cost, and return (name, call number)."""
    def make(name, cost):
        def run():
            calls.append(name)
            clock.now += cost
            return (name, calls.count(name))
        return run
    return {name: make(name, cost) for name, cost in costs.items()}


@pytest.mark.parametrize("repeats, budget, rounds", [
    (3, 1e9, 3),    # budget never reached: all the repeats
    (5, 0.0, 2),    # budget spent at once: still two rounds
    (1, 0.0, 1),    # ... but never more than the repeats
    (10, 7.5, 3),   # 3 s per round: 3, 6, then 9 >= 7.5 after the third round
    (10, 6.0, 2),   # 6 >= 6 after the second round
])
def test_measure_interleaved_rounds(monkeypatch, repeats, budget, rounds):
    clock = _Clock()
    monkeypatch.setattr(timing, "time", clock)
    calls = []
    costs = {"a": 1.0, "b": 1.5, "c": 0.5}
    got = timing.measure_interleaved(_runners(clock, calls, costs), lambda: None, repeats, budget)
    names = list(costs)
    # one warm-up round, then each round calls every runner once, starting one further each round
    expected = list(names)
    for r in range(rounds):
        expected += names[r % 3:] + names[:r % 3]
    assert calls == expected
    for name, cost in costs.items():
        t = got[name]
        assert t.result == (name, 1)                  # the warm-up's result is kept
        assert t.times == pytest.approx([cost] * rounds)
        assert t.median == pytest.approx(cost)


def test_measure_interleaved_median_of_varying_times(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(timing, "time", clock)
    costs = iter([9.0, 9.0, 5.0, 1.0, 2.0, 4.0, 3.0, 3.0])   # warm-up a, b; then (a, b), (b, a), (a, b)
    calls = []

    def make(name):
        def run():
            calls.append(name)
            clock.now += next(costs)
            return name
        return run
    got = timing.measure_interleaved({"a": make("a"), "b": make("b")}, lambda: None, 3, 1e9)
    assert got["a"].times == [5.0, 4.0, 3.0] and got["a"].median == 4.0
    assert got["b"].times == [1.0, 2.0, 3.0] and got["b"].median == 2.0
    assert got["a"].median == statistics.median(got["a"].times)


def test_measure_calls_sync_around_every_call(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(timing, "time", clock)
    log = []
    timing.measure_interleaved({"a": lambda: log.append("a")}, lambda: log.append("sync"), 2, 1e9)
    assert log == ["sync", "a", "sync"] * 3


# ---------------------------------------------------------------- floors helpers


def test_floor_slices_and_tile():
    assert floors._slices(10, 4) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    x = np.arange(3, dtype=np.float32)[:, None]
    assert floors.tile(x, 7)[:, 0].tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert floors.tile(x, 2)[:, 0].tolist() == [0, 1]
    torch = pytest.importorskip("torch")
    assert floors.tile(torch.arange(3), 5).tolist() == [0, 1, 2, 0, 1]


# ---------------------------------------------------------------- cases.cases: which rows, charged how much


def _fake_workload(**over):
    base = dict(name="fake", model=None, images=np.zeros((6, 3, 20, 20), np.float32), targets=[0] * 6,
                layer="block", ten_layers=[f"l{i}" for i in range(10)], occlusion=dict(window=8, stride=4),
                occlusion_images=2, smoothgrad=dict(samples=5, noise=0.1), scorecam_images=3,
                repeats=1, budget=0.0)
    base.update(over)
    return workloads.Workload(**base)


def test_cases_rows_and_passes_per_capability():
    w = _fake_workload()
    batch = {"forward": 16, "backward": 4}
    torch_caps = frozenset({"forward", "activations", "input_gradients", "layer_gradients", "relu_rules",
                            "weights", "linear_head"})
    got = {c.method: c for c in cases.cases(w, "torch", torch_caps, channels=12, batch=batch)}
    assert list(got) == ["saliency", "guided_backprop", "smoothgrad", "gradcam", "gradcam (1 layer: l0)",
                         "gradcam (10 layers)", "input_x_gradient", "gradcampp", "xgradcam", "layercam", "hirescam",
                         "guided_gradcam", "cam", "feature_maps", "scorecam", "eigencam", "occlusion"]
    assert got["gradcampp"].floor == ("layers", ("block",)) and got["gradcampp"].peer_method == "gradcampp"
    p = cases.positions(20, 8, 4) ** 2                                  # 16 windows
    assert got["smoothgrad"].passes == 6 * 5 and got["smoothgrad"].peer_settings == dict(samples=5, noise=0.1, batch=4)
    assert got["scorecam"].passes == 3 * 13 and got["scorecam"].images == 3
    assert got["occlusion"].passes == 2 * (p + 1) == 34 and got["occlusion"].floor == ("forward", None)
    assert got["gradcam (10 layers)"].floor == ("layers", tuple(w.ten_layers))
    assert got["gradcam"].floor == ("layers", ("block",)) and got["gradcam"].peer_method == "gradcam"
    assert got["gradcam (1 layer: l0)"].peer_method is None

    forward_only = frozenset({"forward", "activations", "weights", "linear_head"})
    assert [c.method for c in cases.cases(w, "onnx", forward_only, 12, batch)] == ["cam", "feature_maps", "scorecam",
                                                                                  "eigencam", "occlusion"]
    no_scorecam = _fake_workload(scorecam_images=0)
    assert "scorecam" not in [c.method for c in cases.cases(no_scorecam, "onnx", forward_only, 12, batch)]
    # ONNX with gradients: the same rows under its own layer names, every floor the forward passes,
    # the gradient rows compared with the torch backend rather than the peers
    onnx = {c.method: c for c in cases.cases(w, "onnx", torch_caps, 12, batch, layer="/block/Relu",
                                              ten_layers=[f"/n{i}" for i in range(10)])}
    assert list(onnx) == ["saliency", "guided_backprop", "smoothgrad", "gradcam", "gradcam (1 layer: /n0)",
                          "gradcam (10 layers)", "input_x_gradient", "gradcampp", "xgradcam", "layercam",
                          "hirescam", "guided_gradcam", "cam", "feature_maps", "scorecam", "eigencam", "occlusion"]
    assert {c.floor for c in onnx.values()} == {("forward", None)}
    assert [m for m, c in onnx.items() if c.peer_method] == ["scorecam", "eigencam", "occlusion"]
    assert onnx["smoothgrad"].passes == 6 * 5 and onnx["gradcam"].passes == 6


# ---------------------------------------------------------------- results: targets and machine names


def _row(method, backend="torch", device="cpu", floor_ratio=1.0, peers_=None, **extra):
    return dict(workload="w", backend=backend, device=device, method=method, floor_ratio=floor_ratio,
                peers=peers_ or {}, **extra)


def test_target_passed_direction():
    le = results.Target("le", lambda r: True, lambda r: 0.0, "<=", 1.1)
    ge = results.Target("ge", lambda r: True, lambda r: 0.0, ">=", 2.0)
    assert le.passed(1.1) and le.passed(0.3) and not le.passed(1.1001)
    assert ge.passed(2.0) and ge.passed(5.0) and not ge.passed(1.999)


def test_check_targets_selects_rows_and_directions():
    texts = [t.text for t in results.TARGETS]
    rows = [
        _row("gradcam", floor_ratio=1.05, peers_={"captum": {"ratio": 0.9}, "pytorch-grad-cam": {"ratio": 2.5},
                                                  "torchcam": {"ratio": 0.1}}),
        _row("gradcam", backend="onnx", floor_ratio=9.0, peers_={"captum": {"ratio": 0.1}}),   # not the torch backend
        _row("gradcam (10 layers)", vs_one_layer=1.4),
        _row("gradcam (1 layer: x)", floor_ratio=9.0),                                          # no target
        _row("guided_backprop", floor_ratio=1.15),                                              # exactly the bound
        _row("occlusion", backend="onnx", floor_ratio=1.2, peers_={"captum": {"ratio": 2.5}}),
        _row("occlusion", floor_ratio=9.0, peers_={"captum": {"ratio": 0.1}}),                 # torch: no target
        _row("occlusion", backend="onnx", device="cuda", floor_ratio=9.0, numpy_share=0.05,  # onnx targets: CPU only
             peers_={"captum": {"ratio": 0.1}}),
        _row("scorecam", device="cuda:0", numpy_share=0.2),                                     # torchcam missing
        _row("scorecam", backend="onnx", peers_={"torchcam": {"ratio": 1.5}}),
        _row("saliency", backend="onnx", vs_torch=1.3),
        _row("saliency", backend="onnx", device="cuda", vs_torch=0.5),                      # CPU only
        _row("saliency", vs_torch=9.0),                                                     # the torch row itself
    ]
    got = [(c["target"], c["method"], c["backend"], c["device"], c["value"], c["passed"])
           for c in results.check_targets(rows)]
    expected = [
        (texts[0], "gradcam", "torch", "cpu", 1.05, True),
        (texts[1], "gradcam", "torch", "cpu", 2.5, True),
        (texts[2], "gradcam", "torch", "cpu", 0.9, False),
        (texts[3], "gradcam (10 layers)", "torch", "cpu", 1.4, False),
        (texts[4], "guided_backprop", "torch", "cpu", 1.15, True),
        (texts[5], "occlusion", "onnx", "cpu", 2.5, True),
        (texts[6], "occlusion", "onnx", "cpu", 1.2, False),
        (texts[7], "scorecam", "torch", "cuda:0", None, None),
        (texts[7], "scorecam", "onnx", "cpu", 1.5, True),
        (texts[8], "gradcam", "onnx", "cpu", None, None),                                   # vs_torch not computed
        (texts[9], "saliency", "onnx", "cpu", 1.3, True),
        (texts[-1], "occlusion", "onnx", "cuda", 0.05, True),
        (texts[-1], "scorecam", "torch", "cuda:0", 0.2, False),
        (texts[-1], "saliency", "onnx", "cuda", None, None),
    ]
    assert got == expected


def test_check_targets_missing_peer_is_none():
    rows = [_row("gradcam", floor_ratio=1.0, peers_={"captum": None}),
            _row("gradcam (10 layers)")]                                  # vs_one_layer never computed
    checks = results.check_targets(rows)
    by_target = {c["target"]: c for c in checks}
    assert len(checks) == 4
    for text in (results.TARGETS[1].text, results.TARGETS[2].text, results.TARGETS[3].text):
        assert by_target[text]["value"] is None and by_target[text]["passed"] is None
    assert by_target[results.TARGETS[0].text]["passed"] is True


def test_machine_name():
    assert results.machine_name({"gpu": "NVIDIA H200", "cores": 16}) == "nvidia-h200"
    assert results.machine_name({"gpu": "NVIDIA H100 80GB HBM3"}) == "nvidia-h100-80gb-hbm3"
    assert results.machine_name({"cores": 2}) == "cpu-2core"


# ---------------------------------------------------------------- results: files and the speed page


def _info(**over):
    info = dict(cpu="Test CPU", cores=2, torch_threads=2, python="3.x", platform="test",
                versions={"cnnlens": "dev", "captum": "0.9"})
    info.update(over)
    return info


def _full_row(method, seconds, peers_=None):
    return dict(workload="w", backend="torch", device="cpu", method=method, images=4, seconds=seconds,
                times=[seconds], images_per_s=4 / seconds, batch=4, floor_seconds=seconds / 2, floor_batch=8,
                floor_ratio=2.0, numpy_share=0.25, peers=peers_ or {})


def test_write_results_files(tmp_path):
    rows = [_full_row("gradcam", 0.5, {"captum": dict(seconds=1.0, times=[1.0], ratio=2.0, settings={},
                                                      agreement=0.99995)}),
            _full_row("saliency", 0.25)]
    checks = results.check_targets(rows)
    settings_ = dict(mode="quick", repeats=3, seconds=1.5)
    text = results.write(str(tmp_path / "out"), _info(), settings_, rows, checks, ["captum"], "python run.py")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["cpu-2core.json", "cpu-2core.md"]   # no .tmp left
    assert (out / "cpu-2core.md").read_text() == text
    data = json.loads((out / "cpu-2core.json").read_text())
    assert data["rows"] == rows and data["targets"] == checks
    assert data["settings"] == settings_ and data["command"] == "python run.py" and data["machine"] == _info()
    lines = text.splitlines()
    assert lines[0] == "# Benchmark: cpu-2core"
    assert "| w | torch | cpu | gradcam | 8 | 2.00x | 25% | - | 2.00x |" in lines
    assert "| w | torch | cpu | saliency | 16 | 2.00x | 25% | - | - |" in lines
    assert "- w / gradcam vs captum: Pearson r = 1.0000" in lines

    results.write(str(out), _info(gpu="NVIDIA H200", gpu_memory_gib=139.8), settings_, rows, checks, [], "x")
    assert sorted(p.name for p in out.iterdir()) == ["cpu-2core.json", "cpu-2core.md", "nvidia-h200.json",
                                                     "nvidia-h200.md"]


def test_update_readme_replaces_only_the_section(tmp_path):
    readme = tmp_path / "README.md"
    before = "# Project\n\nintro text\n\n## Benchmarks\n\n"
    after = "\n\n## License\n\nMIT, <!-- not a marker -->\n"
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    readme.write_text(before + start + "\nold table\n| a | b |\n" + end + after)
    text = "# Benchmark: cpu-2core\n\nMachine: x.\n\n| t |\n|---|\n"
    results.update_readme(str(readme), text, "cpu-2core")
    assert readme.read_text() == (before + start + "\n<!-- written by benchmarks/run.py --update-readme from "
                                  "results/cpu-2core.md -->\nMachine: x.\n\n| t |\n|---|\n" + end + after)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]     # no .tmp left
    # a second update replaces the first one's block, not appends
    results.update_readme(str(readme), "# title\n\nnew body\n\n## Targets\n\nt\n", "nvidia-h200")
    assert readme.read_text() == (before + start + "\n<!-- written by benchmarks/run.py --update-readme from "
                                  "results/nvidia-h200.md -->\nnew body\n\n### Targets\n\nt\n" + end + after)


@pytest.mark.parametrize("content", ["no markers\n", "<!-- bench:start -->\nonly the start\n",
                                     "only the end\n<!-- bench:end -->\n"])
def test_update_readme_without_markers_exits(tmp_path, content):
    readme = tmp_path / "README.md"
    readme.write_text(content)
    with pytest.raises(SystemExit):
        results.update_readme(str(readme), "# t\n\nbody\n", "cpu-2core")
    assert readme.read_text() == content


# ---------------------------------------------------------------- a tiny real run


@pytest.fixture(scope="module")
def tiny_run():
    """Rows of one real run: the demo DenseNet, 4 images of 32 x 32, one repeat, every peer installed."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("captum")
    from cnnlens.adapters.demo_model import build_model

    model = build_model(seed=0).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = images(4, 3, 32, 32, seed=0)
    with torch.inference_mode():
        targets = model(torch.from_numpy(x)).argmax(1).tolist()
    try:
        onnx = workloads._export(model, 32, "cpu")
    except ImportError:
        onnx = None
    w = workloads.Workload(
        name="tiny", model=model, images=x, targets=targets, layer="features.denseblock2",
        ten_layers=workloads._ten_layers(model, 32), occlusion=dict(window=16, stride=16), occlusion_images=2,
        smoothgrad=dict(samples=2, noise=0.15), scorecam_images=1, repeats=1, budget=0.0, onnx=onnx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = measure.WorkloadRun(w, "cpu", log=lambda m: None, skip_peers=False)
        rows = run.rows(["gradcam", "occlusion", "saliency"])
    return dict(w=w, model=model, before=before, rows=rows, run=run)


def _get(rows, method, backend="torch"):
    found = [r for r in rows if r["method"] == method and r["backend"] == backend]
    assert len(found) == 1, (method, backend, [(r["backend"], r["method"]) for r in rows])
    return found[0]


def _installed(*names):
    return {n for n in names if peers.available(peers.PACKAGES[n]) is not None}


def test_tiny_run_rows(tiny_run):
    rows, w = tiny_run["rows"], tiny_run["w"]
    shallow = w.ten_layers[0]
    expected = {("torch", m) for m in ("saliency", "gradcam", f"gradcam (1 layer: {shallow})",
                                       "gradcam (10 layers)", "occlusion")}
    if w.onnx is not None and peers.available("onnxruntime") is not None:
        onnx_shallow = [r["method"] for r in rows if r["backend"] == "onnx" and "1 layer" in r["method"]]
        assert len(onnx_shallow) == 1
        expected |= {("onnx", m) for m in ("saliency", "gradcam", onnx_shallow[0], "gradcam (10 layers)", "occlusion")}
        for r in rows:
            if r["backend"] == "onnx" and r["method"] in ("saliency", "gradcam", "occlusion"):
                torch_row = _get(rows, r["method"])
                assert r["vs_torch"] == pytest.approx(torch_row["seconds"] / r["seconds"], rel=1e-12)
    assert {(r["backend"], r["method"]) for r in rows} == expected
    assert w.ten_layers == workloads.spread(w.ten_layers, 10) and len(w.ten_layers) == 10
    for r in rows:
        assert r["seconds"] > 0 and r["floor_seconds"] > 0
        assert r["floor_ratio"] == pytest.approx(r["seconds"] / r["floor_seconds"], rel=1e-12)
        assert r["images"] == (2 if r["method"] == "occlusion" else 4)
        assert r["images_per_s"] == pytest.approx(r["images"] / r["seconds"], rel=1e-12)
        assert r["times"] == [r["seconds"]]                               # one repeat: its median is itself
        assert 0.0 <= r["numpy_share"] <= 1.0
        assert (r["workload"], r["device"]) == ("tiny", "cpu")
        for name, e in r["peers"].items():
            assert e["ratio"] == pytest.approx(e["seconds"] / r["seconds"], rel=1e-12), name


def test_tiny_run_peers_agree(tiny_run):
    rows = tiny_run["rows"]
    gradcam = _get(rows, "gradcam")
    assert set(gradcam["peers"]) == _installed("captum", "pytorch-grad-cam", "torchcam")
    for name, e in gradcam["peers"].items():   # the same Grad-CAM, up to an affine map
        assert e["agreement"] > 0.999, (name, e["agreement"])
    saliency = _get(rows, "saliency")
    assert set(saliency["peers"]) == {"captum"}
    assert saliency["peers"]["captum"]["agreement"] > 0.999
    occlusion = _get(rows, "occlusion")
    assert set(occlusion["peers"]) == {"captum"}
    settings_ = occlusion["peers"]["captum"]["settings"]
    assert settings_["window"] == 16 and settings_["stride"] == 16
    assert settings_["perturbations_per_eval"] in (1, 8, 32)   # the fastest of the CPU choices
    for name in ("1 layer", "10 layers"):
        assert [r for r in rows if name in r["method"]][0]["peers"] == {}
    assert all(r["peers"] == {} for r in rows if r["backend"] == "onnx" and r["method"] != "occlusion")


def test_tiny_run_relates_layers(tiny_run):
    rows, w = tiny_run["rows"], tiny_run["w"]
    ten = _get(rows, "gradcam (10 layers)")
    one = _get(rows, f"gradcam (1 layer: {w.ten_layers[0]})")
    assert ten["vs_one_layer"] == pytest.approx(ten["seconds"] / one["seconds"], rel=1e-12)
    assert ten["vs_default_layer"] == pytest.approx(ten["seconds"] / _get(rows, "gradcam")["seconds"], rel=1e-12)
    checks = [c for c in results.check_targets(rows) if c["method"] == "gradcam (10 layers)"]
    assert [c["value"] for c in checks] == [ten["vs_one_layer"]]


def test_tiny_run_onnx_layers_are_the_graphs_own(tiny_run):
    rows, run = tiny_run["rows"], tiny_run["run"]
    if not any(r["backend"] == "onnx" for r in rows):
        pytest.skip("onnxruntime is not installed")
    backend = dict(run.backends())["onnx"]
    layer, ten = run.layers("onnx", backend)
    assert layer == backend.resolve_layer("features.denseblock2") and len(ten) == 10
    spatial = [l.name for l in backend.layers(tuple(tiny_run["w"].images.shape[1:])) if l.spatial]
    assert ten == workloads.spread(spatial, 10)
    checks = {(c["target"].split(" on ")[0], c["method"]) for c in results.check_targets(rows) if c["backend"] == "onnx"}
    assert ("Grad-CAM", "gradcam") in checks and ("Saliency", "saliency") in checks


def test_tiny_run_leaves_the_model_as_it_was(tiny_run):
    model = tiny_run["model"]
    assert not any(m.training for m in model.modules())
    for name, m in model.named_modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks, name
    after = model.state_dict()
    assert after.keys() == tiny_run["before"].keys()
    for k, v in tiny_run["before"].items():
        assert (after[k] == v).all(), k


# ---------------------------------------------------------------- edge cases fixed after review


def test_agreement_reads_captum_occlusion_channels_as_one_map():
    ours = images(2, 1, 8, 8, seed=5)[:, 0]                        # (N, H, W)
    theirs = np.repeat(ours[:, None], 3, axis=1)                   # Captum: the map repeated per channel
    assert measure.agreement(ours, theirs, "occlusion", "captum") == pytest.approx(1.0, abs=1e-12)


def test_agreement_skips_constant_maps_instead_of_calling_them_equal():
    ours = images(2, 1, 8, 8, seed=6)[:, 0]
    theirs = ours.copy()
    theirs[0] = 0.0                                                # image 0: correlation undefined
    assert measure.agreement(ours, theirs, "gradcam", "captum") == pytest.approx(1.0, abs=1e-12)
    assert measure.agreement(ours, np.zeros_like(ours), "gradcam", "captum") is None
    # same size but another shape: no silent comparison
    assert measure.agreement(ours, ours.reshape(2, 4, 16), "gradcam", "captum") is None


def test_spread_of_one_is_the_last():
    assert workloads.spread(["a", "b", "c"], 1) == ["c"]


def test_zero_repeats_is_refused():
    with pytest.raises(ValueError, match="repeats"):
        timing.measure_interleaved({"a": lambda: 1}, lambda: None, repeats=0, budget=1.0)
    with pytest.raises(ValueError, match="repeats"):
        timing.measure(lambda: 1, lambda: None, repeats=0, budget=1.0)


def test_update_readme_refuses_markers_in_the_wrong_order(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- bench:end -->\ny\n<!-- bench:start -->\n")
    with pytest.raises(SystemExit):
        results.update_readme(str(readme), "# t\n\nbody\n", "cpu-2core")
    assert readme.read_text() == "x\n<!-- bench:end -->\ny\n<!-- bench:start -->\n"


def test_the_speed_page_holds_every_section_the_scripts_write():
    """``--update-readme`` writes into docs/speed.md (the README is the short front page): each script's
    section is there once, start before end, and no section sits inside another (a rerun of one script
    would wipe what lies inside its block)."""
    root = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").exists())
    page = (root / "docs" / "speed.md").read_text()
    spans = []
    for section in ("bench", "occlusion-bench", "formats-bench", "explainer-bench", "audit-bench"):
        start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
        assert page.count(start) == 1 and page.count(end) == 1, section
        assert page.index(start) < page.index(end), section
        spans.append((page.index(start), page.index(end)))
    spans.sort()
    assert all(a_end < b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
    assert ":start -->" not in (root / "README.md").read_text()


# ---------------------------------------------------------------- LRP and DeepLIFT rows


def test_relevance_rows_their_peers_and_targets():
    w = _fake_workload()
    batch = {"forward": 16, "backward": 4}
    caps = frozenset({"forward", "input_gradients", "relu_rules", "relevance_rules"})
    got = {c.method: c for c in cases.cases(w, "torch", caps, channels=12, batch=batch)}
    assert [m for m in got if m in ("lrp", "deeplift")] == ["lrp", "deeplift"]
    assert got["lrp"].floor == ("input", None) and got["lrp"].passes == 6 and got["lrp"].peer_method == "lrp"
    assert got["lrp"].peer_settings == dict(composite="epsilon_plus_flat")
    assert got["deeplift"].peer_method == "deeplift" and got["deeplift"].peer_settings == dict(baseline=0.0)
    onnx = {c.method: c for c in cases.cases(w, "onnx", caps, 12, batch)}
    assert onnx["lrp"].peer_method is None and onnx["deeplift"].floor == ("forward", None)
    # no relevance rules, no rows
    assert "lrp" not in [c.method for c in cases.cases(w, "torch", caps - {"relevance_rules"}, 12, batch)]
    assert peers.zennit("saliency", None, None, None, "", {}) is None      # zennit answers LRP only

    rows = [dict(_full_row(m, s), backend=b) for m, s, b in (
        ("guided_backprop", 1.0, "onnx"), ("lrp", 1.2, "onnx"), ("deeplift", 2.0, "onnx"), ("lrp", 3.0, "torch"))]
    rows[-1]["peers"] = {"zennit": {"ratio": 1.6}}
    measure._relate_relevance(rows)
    assert rows[1]["vs_guided_backprop"] == pytest.approx(1.2) and rows[2]["vs_guided_backprop"] == pytest.approx(2.0)
    assert "vs_guided_backprop" not in rows[3]                            # no torch guided_backprop row
    got = [(c["method"], c["backend"], c["value"], c["passed"]) for c in results.check_targets(rows)
           if c["method"] in ("lrp", "deeplift")]
    assert got == [("lrp", "torch", 1.6, True), ("lrp", "onnx", pytest.approx(1.2), True),
                   ("deeplift", "onnx", pytest.approx(2.0), False)]
