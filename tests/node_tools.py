"""Node.js for the tests that run the examples under examples/node (ONNX Runtime for Node.js) and examples/web.

``require_node()`` skips when node or npm is missing (and fails on CI, which must install them);
``ensure_npm_packages("node")`` runs the offline-safe ``npm ci`` in examples/node when its node_modules is missing;
``run_node_example(model, x)`` runs examples/node/explain.js and returns its outputs as NumPy arrays.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
NODE_EXAMPLE = EXAMPLES / "node"
MIN_NODE_MAJOR = 18  # explain.js uses util.parseArgs

# onnxruntime-node's postinstall script downloads the CUDA provider from NuGet on linux/x64 (and fails offline);
# ONNXRUNTIME_NODE_INSTALL=skip turns it off (the CPU binaries ship inside the npm package).
NPM_CI = ["npm", "ci", "--no-audit", "--no-fund"]
NPM_ENV = {"ONNXRUNTIME_NODE_INSTALL": "skip"}


def node_path() -> str | None:
    return shutil.which("node")


def npm_path() -> str | None:
    return shutil.which("npm")


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI must install Node.js {MIN_NODE_MAJOR}+ and npm: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require_node() -> None:
    """Skip when node or npm is missing or too old (fail on CI, which must install them)."""
    node = node_path()
    if not node or not npm_path():
        _missing("Node.js and npm are not installed (https://nodejs.org, or apt-get install nodejs npm)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    major = re.match(r"v(\d+)", version)
    if not major or int(major.group(1)) < MIN_NODE_MAJOR:
        _missing(f"Node.js {version or '?'} is too old; the examples need {MIN_NODE_MAJOR} or newer")


@contextmanager
def _file_lock(key: Path):
    """An exclusive lock between processes (pytest-xdist workers) while one of them runs npm ci."""
    digest = hashlib.sha1(str(key).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"cnnlens-npm-ci-{digest}.lock"
    try:
        import fcntl
    except ImportError:  # Windows: no lock, at worst two npm ci runs race
        yield
        return
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_npm_packages(folder: str | Path = "node") -> Path:
    """Install examples/<folder>'s locked npm packages (``npm ci``) unless they are already there.

    ``folder`` is "node", "web" or a path. npm writes node_modules/.package-lock.json last, so a folder without
    it (no install, or an interrupted one) is installed afresh. Returns the folder.
    """
    require_node()
    folder = Path(folder)
    if not folder.is_absolute():
        folder = EXAMPLES / folder
    done = folder / "node_modules" / ".package-lock.json"
    if done.exists():
        return folder
    with _file_lock(folder.resolve()):
        if done.exists():  # another process installed them while we waited
            return folder
        env = {**os.environ, **NPM_ENV}
        try:
            proc = subprocess.run([npm_path(), *NPM_CI[1:]], cwd=folder, env=env, capture_output=True, text=True,
                                  timeout=600, check=False)
        except subprocess.TimeoutExpired:
            proc = None
        if proc is None or proc.returncode != 0 or not done.exists():
            tail = "timed out after 600 s" if proc is None else (proc.stdout + proc.stderr).strip()[-1500:]
            _missing(f"`{' '.join(NPM_CI)}` failed in {folder} (is the npm registry reachable?): {tail}")
    return folder


def run_node(args: Sequence[str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``node`` with ``args`` in examples/node (its packages installed first); output captured as text."""
    ensure_npm_packages(NODE_EXAMPLE)
    return subprocess.run([node_path(), *map(str, args)], cwd=NODE_EXAMPLE, capture_output=True, text=True,
                          timeout=timeout, check=False)


class NodeExampleError(RuntimeError):
    """explain.js exited with a non-zero status; the message is its stderr."""


def _output_names(model_path: Path, out_dir: Path) -> dict[str, str]:
    """Output name -> file stem, by the rule of explain.js's fileStem (ONNX names may contain '/')."""
    try:
        import onnx
    except ImportError:
        return {p.stem: p.stem for p in out_dir.glob("*.npy")}
    graph = onnx.load(str(model_path), load_external_data=False).graph
    return {o.name: re.sub(r"[^A-Za-z0-9._-]", "_", o.name) for o in graph.output}


def run_node_example(model_path: str | Path, input_array: np.ndarray,
                     target: int | Sequence[int] | np.ndarray | None = None,
                     target_weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Run examples/node/explain.js on ``input_array`` and return {output name: array} as it wrote them.

    ``target`` is one class for every image or one per image (``--target 3`` / ``--target 3,1,4``);
    ``target_weights`` is saved to a .npy and passed as ``--target-weights``. Raises NodeExampleError
    (with explain.js's one-line message) when it fails.
    """
    model_path = Path(model_path).resolve()
    with tempfile.TemporaryDirectory(prefix="cnnlens-node-") as tmp:
        tmp = Path(tmp)
        np.save(tmp / "input.npy", np.ascontiguousarray(input_array))
        args = [NODE_EXAMPLE / "explain.js", model_path, tmp / "input.npy", "--out", tmp / "out"]
        if target is not None:
            classes = np.atleast_1d(np.asarray(target)).astype(np.int64)
            args += ["--target", ",".join(str(int(c)) for c in classes)]
        if target_weights is not None:
            np.save(tmp / "weights.npy", np.ascontiguousarray(target_weights))
            args += ["--target-weights", tmp / "weights.npy"]
        proc = run_node(args)
        if proc.returncode != 0:
            raise NodeExampleError(proc.stderr.strip() or f"explain.js exited with status {proc.returncode}")
        names: Mapping[str, str] = _output_names(model_path, tmp / "out")
        return {name: np.load(tmp / "out" / f"{stem}.npy") for name, stem in names.items()}
