"""Measuring one workload on one device: cnnlens's rows, their floors and the peers."""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from . import floors, peers
from .cases import Case, FloorKind, cases
from .timing import measure, measure_interleaved, synchronizer
from .workloads import Workload, spread


class TimedBackend:
    """A backend whose model calls are timed, to split a call's time into the model's and the rest
    (cnnlens's NumPy work, host copies and Python)."""

    def __init__(self, inner: Any, sync: Callable[[], None]):
        self._inner, self._sync, self.seconds = inner, sync, 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _timed(self, name: str, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return getattr(self._inner, name)(*args, **kwargs)
        finally:
            self._sync()
            self.seconds += time.perf_counter() - start

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed("forward", *args, **kwargs)

    def backward(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed("backward", *args, **kwargs)

    def linear_head(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed("linear_head", *args, **kwargs)

    def replaced(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed("replaced", *args, **kwargs)

    def output_shape(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed("output_shape", *args, **kwargs)


def agreement(ours: np.ndarray, theirs: Any, method: str, peer: str) -> Optional[float]:
    """Mean per-image Pearson correlation between two sets of maps; None when their shapes do not
    match or every image's map is constant in one of them (correlation undefined)."""
    if hasattr(theirs, "detach"):
        theirs = theirs.detach().float().cpu().numpy()
    theirs = np.asarray(theirs, dtype=np.float64)
    ours = np.asarray(ours, dtype=np.float64)
    if method == "guided_backprop" and peer == "pytorch-grad-cam":
        theirs = theirs.transpose(0, 3, 1, 2)  # it returns (H, W, C) per image
    if ours.ndim == 3 and theirs.ndim == 4:  # one map per image against (N, 1 or C, H, W)
        theirs = theirs.mean(axis=1)  # Captum's occlusion repeats its map over the channels
    if theirs.shape != ours.shape:
        return None
    values = []
    for u, v in zip(ours.reshape(len(ours), -1), theirs.reshape(len(ours), -1)):
        u, v = u - u.mean(), v - v.mean()
        denominator = np.sqrt((u * u).sum() * (v * v).sum())
        if denominator > 0:
            values.append(float((u * v).sum() / denominator))
    return float(np.mean(values)) if values else None


class WorkloadRun:
    """Everything measured for one workload on one device."""

    def __init__(self, w: Workload, device: str, log: Callable[[str], None], skip_peers: bool):
        import torch

        import cnnlens

        self.w, self.device, self.log, self.skip_peers = w, device, log, skip_peers
        self.sync = synchronizer(device)
        self.gpu = device.startswith("cuda")
        self.x = torch.from_numpy(w.images).to(device)
        self.t = torch.as_tensor(np.asarray(w.targets), device=device)  # classes (int64) or output weights
        self.torch_backend = cnnlens.load(w.model)
        shape = tuple(w.images.shape[1:])
        layer = {l.name: l for l in cnnlens.layers(w.model, shape)}[w.layer]
        self.channels = int(layer.shape[1])
        self._floors: Dict[Tuple, int] = {}
        self._settings: Dict[Tuple, Any] = {}

    # ------------------------------------------------------------ backends

    def backends(self) -> List[Tuple[str, Any]]:
        """(name, what to pass to cnnlens.explain): the torch model, and the loaded ONNX model."""
        import cnnlens

        found: List[Tuple[str, Any]] = [("torch", self.w.model)]
        if self.w.onnx is None or peers.available("onnxruntime") is None:
            return found
        onnx_backend = cnnlens.load(self.w.onnx, device=self.device)
        if onnx_backend.device != ("cuda" if self.gpu else "cpu"):
            self.log(f"  onnx: no {self.device} provider in this onnxruntime; skipped")
            return found
        found.append(("onnx", onnx_backend))
        return found

    def batches(self, backend: Any) -> Dict[str, int]:
        shape = tuple(self.w.images.shape[1:])
        return {kind: int(backend.batch_size(kind, shape)) for kind in ("forward", "backward")}

    # ------------------------------------------------------------ floors

    def _candidates(self, chosen: int) -> List[int]:
        extra = (32, 128) if self.gpu else (1, 8)
        return sorted({chosen, *extra})

    def _floor_runner(self, backend: str, kind: FloorKind, images: int, batch: int) -> Callable[[], None]:
        if backend == "onnx":
            return floors.onnx_forward(self._plain_session(), floors.tile(self.w.images, images), batch)
        x = floors.tile(self.x, images)
        if kind[0] == "forward":
            return floors.torch_forward(self.w.model, x, batch)
        modules = None if kind[0] == "input" else [self.w.model.get_submodule(n) for n in kind[1]]
        return floors.torch_backward(self.w.model, x, floors.tile(self.t, images), batch, modules)

    def floor_batch(self, backend: str, kind: FloorKind, chosen: int) -> int:
        """The batch size at which the plain model does this work fastest (of a few, measured once)."""
        key = (backend,) + tuple(kind)
        if key not in self._floors:
            best = (float("inf"), chosen)
            for b in self._candidates(chosen):
                images = max(b, 16 if self.gpu else 8)
                timing = measure(self._floor_runner(backend, kind, images, b), self.sync, 2, self.w.budget / 4)
                best = min(best, (timing.median / images, b))
            self._floors[key] = best[1]
        return self._floors[key]

    def floor(self, backend: str, case: Case, chosen: int) -> Tuple[Callable[[], None], float, int]:
        """(a runner doing part of the case's work on the plain model, the factor that scales its time
        to all of it, its batch size)."""
        batch = self.floor_batch(backend, case.floor, chosen)
        images = min(case.passes, max(batch, 2 * (16 if self.gpu else 8)))
        if case.floor[0] == "layers":
            images = case.passes
        return self._floor_runner(backend, case.floor, images, batch), case.passes / images, batch

    def _plain_session(self) -> Any:
        if not hasattr(self, "_session"):
            import onnxruntime as ort

            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if self.gpu else ["CPUExecutionProvider"]
            from cnnlens.backends.onnx import session_options

            # plain ONNX Runtime, with cnnlens's session options: idle threads that spin would
            # steal the cores from whichever implementation is timed next
            self._session = ort.InferenceSession(self.w.onnx, sess_options=session_options(), providers=providers)
        return self._session

    # ------------------------------------------------------------ peers

    def peer_runners(self, case: Case) -> Dict[str, Callable[[], Any]]:
        """Each installed peer doing the case's work on the same images, targets and settings."""
        if self.skip_peers or case.peer_method is None:
            return {}
        n = case.images
        x, t = self.x[:n], self.t[:n]
        found: Dict[str, Callable[[], Any]] = {}
        for name, factory in peers.PEERS.items():
            settings = dict(case.peer_settings)
            if case.peer_method == "occlusion" and name == "captum":
                settings["perturbations_per_eval"] = self._tune_occlusion(x, t, settings)
            runner = factory(case.peer_method, self.w.model, x, t, self.w.layer, settings)
            if runner is not None:
                found[name] = runner
                self._settings[(case.peer_method, name)] = settings
        return found

    def _tune_occlusion(self, x: Any, t: Any, settings: Dict[str, Any]) -> int:
        """Captum's fastest ``perturbations_per_eval`` among a few, one call each (measured once)."""
        key = ("occlusion-ppe", len(x))
        if key in self._settings:
            return self._settings[key]
        choices = (16, 64, 256) if self.gpu else (1, 8, 32)
        best = (float("inf"), choices[0])
        for ppe in choices:
            runner = peers.captum("occlusion", self.w.model, x, t, self.w.layer, dict(settings, perturbations_per_eval=ppe))
            if runner is None:
                return choices[0]
            timing = measure(runner, self.sync, repeats=1, budget=0.0, warmup=False)
            best = min(best, (timing.median, ppe))
        self._settings[key] = best[1]
        self.log(f"    captum occlusion: perturbations_per_eval={best[1]} is fastest")
        return best[1]

    # ------------------------------------------------------------ rows

    def rows(self, methods: Optional[List[str]]) -> List[Dict[str, Any]]:
        import cnnlens

        out: List[Dict[str, Any]] = []
        for backend_name, target in self.backends():
            backend = self.torch_backend if backend_name == "torch" else target
            batch = self.batches(backend)
            layer, ten = self.layers(backend_name, backend)
            for case in cases(self.w, backend_name, backend.capabilities, self.channels, batch, layer, ten):
                if methods and case.explain not in methods:
                    continue
                self.log(f"  {backend_name} {case.method} ({case.images} images)")
                kind = "forward" if case.floor[0] == "forward" else "backward"
                floor_run, scale, floor_batch = self.floor(backend_name, case, batch[kind])
                others = self.peer_runners(case)
                runners = {"cnnlens": lambda: case.ours(target), "floor": floor_run, **others}
                timings = measure_interleaved(runners, self.sync, self.w.repeats, self.w.budget)
                ours = timings["cnnlens"]
                floor_seconds = timings["floor"].median * scale
                timed = TimedBackend(cnnlens.load(target), self.sync)
                start = time.perf_counter()
                case.ours(timed)
                total = time.perf_counter() - start
                found = {}
                for name in others:
                    tm = timings[name]
                    found[name] = dict(
                        seconds=tm.median, times=tm.times, ratio=tm.median / ours.median,
                        settings=self._settings.get((case.peer_method, name), {}),
                        agreement=None if case.peer_method == "smoothgrad" else
                        agreement(ours.result.maps, tm.result, case.peer_method, name))
                self.log(f"    cnnlens {ours.median:.3f} s, floor {floor_seconds:.3f} s"
                         + "".join(f", {n} {e['seconds']:.3f} s" for n, e in found.items()))
                out.append(dict(
                    workload=self.w.name, backend=backend_name, device=self.device, method=case.method,
                    images=case.images, seconds=ours.median, times=ours.times,
                    images_per_s=case.images / ours.median, batch=batch[kind],
                    floor_seconds=floor_seconds, floor_batch=floor_batch, floor_ratio=ours.median / floor_seconds,
                    numpy_share=max(0.0, 1.0 - timed.seconds / total), peers=found,
                ))
        _relate_layers(out)
        _relate_backends(out)
        _relate_relevance(out)
        return out

    def layers(self, name: str, backend: Any) -> Tuple[str, List[str]]:
        """The CAM layer and ten spatial layers as ``backend`` names them: the workload's module paths
        for torch; for ONNX the node the CAM layer's module path names, and ten of its own spatial
        nodes (module paths of BatchNorms folded into convolutions have no node of their own)."""
        if name == "torch":
            return self.w.layer, list(self.w.ten_layers)
        shape = tuple(self.w.images.shape[1:])
        spatial = [l.name for l in backend.layers(shape) if l.spatial]
        return backend.resolve_layer(self.w.layer), spread(spatial, 10)


def _relate_backends(rows: List[Dict[str, Any]]) -> None:
    """Give each ONNX row the torch backend's time for the same method over its own (above 1: ONNX
    Runtime explains faster than the torch backend)."""
    for row in rows:
        if row["backend"] == "torch":
            continue
        for other in rows:
            if (other["backend"], other["workload"], other["device"], other["method"]) == \
                    ("torch", row["workload"], row["device"], row["method"]):
                row["vs_torch"] = other["seconds"] / row["seconds"]


def _relate_relevance(rows: List[Dict[str, Any]]) -> None:
    """Give each LRP and DeepLIFT row its time over guided backprop's on the same backend (one
    backward pass to the input each, under other rules)."""
    for row in rows:
        if row["method"] not in ("lrp", "deeplift"):
            continue
        for other in rows:
            if (other["backend"], other["workload"], other["device"], other["method"]) == \
                    (row["backend"], row["workload"], row["device"], "guided_backprop"):
                row["vs_guided_backprop"] = row["seconds"] / other["seconds"]


def _relate_layers(rows: List[Dict[str, Any]]) -> None:
    """Give the 10-layer Grad-CAM row its time over the one-layer row at the same depth and over the default layer."""
    for row in rows:
        if row["method"] != "gradcam (10 layers)":
            continue
        for other in rows:
            if other["backend"] != row["backend"]:
                continue
            if other["method"].startswith("gradcam (1 layer"):
                row["vs_one_layer"] = row["seconds"] / other["seconds"]
            elif other["method"] == "gradcam":
                row["vs_default_layer"] = row["seconds"] / other["seconds"]
