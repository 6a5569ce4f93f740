"""ONNX Runtime: execution providers, quiet sessions, runs (with IO binding on CUDA), and the
bounded cache of sessions a backend keeps, one per kind of request."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Dict, Hashable, List, Optional, Sequence, Tuple

import numpy as np
import onnx
import onnxruntime as ort

from ...core.errors import ModelError

#: Sessions kept per backend besides the plain forward one: enough for a method's calls (a
#: forward with activations, a gradient model, Guided Grad-CAM's), bounded for a process that
#: browses many layers.
SESSIONS_KEPT = 8
#: ONNX Runtime's log levels: 3 = errors only, 4 = fatal only (for trial runs whose failure
#: cnnlens expects and handles).
_ERRORS, _FATAL = 3, 4


def choose_providers(device: Optional[str]) -> Tuple[List, str]:
    """(providers to ask for, "cuda" or "cpu"): CUDA first when available and not refused."""
    available = ort.get_available_providers()
    if device is not None and not isinstance(device, str):
        raise ModelError(f"device must be a string ('cpu', 'cuda' or 'cuda:N'), got {device!r}")
    wants = (device or "auto").strip().lower()
    if wants == "cuda" or wants.startswith("cuda:"):
        index_text = wants.partition(":")[2] or "0"
        if not index_text.isdigit():
            raise ModelError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N' with N the GPU's number")
        if "CUDAExecutionProvider" not in available:
            raise ModelError(
                f"device {device!r} asked for CUDA, but this onnxruntime has no CUDA provider "
                f"(available: {', '.join(available)}): install cnnlens[gpu] (onnxruntime-gpu) instead of onnxruntime"
            )
        return [("CUDAExecutionProvider", {"device_id": int(index_text)}), "CPUExecutionProvider"], "cuda"
    if wants == "cpu":
        return ["CPUExecutionProvider"], "cpu"
    if wants != "auto":
        raise ModelError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'")
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"], "cuda"
    return ["CPUExecutionProvider"], "cpu"


def session_options(quiet: bool = False, spin: bool = False) -> ort.SessionOptions:
    """Session options. Idle threads do not spin by default: a backend keeps several sessions, and a
    spinning one steals the cores from the next (measured: two alternating forward sessions ran
    1.7x slower with spinning, and no faster alone). ``spin`` lets them, for gradient models:
    their hundreds of small backward ops run 6-8% faster so (SmoothGrad and saliency on the demo
    DenseNet, two cores), and a mix of every method runs no slower. ``quiet``: not even errors are
    logged (trial runs)."""
    options = ort.SessionOptions()
    options.log_severity_level = _FATAL if quiet else _ERRORS
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return options


def run_options(quiet: bool) -> Optional[ort.RunOptions]:
    if not quiet:
        return None
    options = ort.RunOptions()
    options.log_severity_level = _FATAL
    return options


def new_session(model: onnx.ModelProto, providers: Sequence, quiet: bool = False,
                spin: bool = False) -> ort.InferenceSession:
    """A session on ``model``, or a ModelError saying onnxruntime cannot run it."""
    try:
        return ort.InferenceSession(model.SerializeToString(), sess_options=session_options(quiet, spin),
                                    providers=list(providers))
    except Exception as error:
        raise ModelError(f"onnxruntime cannot run this model: {str(error).strip().splitlines()[0]}") from None


def run(session: ort.InferenceSession, feeds: Dict[str, np.ndarray], outputs: Sequence[str],
        device: str, binding: bool, quiet: bool = False) -> List[np.ndarray]:
    """Run ``session``; with ``binding``, inputs and outputs go through IO binding on ``device``."""
    if not binding:
        return session.run(list(outputs), feeds, run_options(quiet))
    bound = session.io_binding()
    for name, value in feeds.items():
        bound.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, device, 0))
    for name in outputs:
        bound.bind_output(name, device)
    session.run_with_iobinding(bound, run_options(quiet))
    return bound.copy_outputs_to_cpu()


class SessionCache:
    """Sessions keyed by request, the oldest dropped beyond ``SESSIONS_KEPT`` (the plain forward
    session, key ``None``, is always kept). Thread-safe; a session is built once per key."""

    def __init__(self) -> None:
        self._sessions: "OrderedDict[Hashable, object]" = OrderedDict()
        self.lock = threading.RLock()

    def get(self, key: Hashable, make: Callable[[], object]) -> object:
        with self.lock:
            if key in self._sessions:
                self._sessions.move_to_end(key)
                return self._sessions[key]
            value = make()
            extra = [k for k in self._sessions if k is not None]
            if len(extra) >= SESSIONS_KEPT:
                del self._sessions[extra[0]]
            self._sessions[key] = value
            return value

    def clear(self) -> None:
        with self.lock:
            self._sessions.clear()

    def __len__(self) -> int:
        return len(self._sessions)
