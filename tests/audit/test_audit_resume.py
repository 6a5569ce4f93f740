"""Nothing lost, nothing twice: an audit interrupted (Ctrl-C) or killed mid-run continues where it
stopped, never rewrites a finished shard, and ends with the rows and maps of an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("sklearn")

from cnnlens.audit import audit  # noqa: E402
from cnnlens.audit.explainer import BatchExplainer  # noqa: E402
from tests.audit_helpers import MEAN, STD, SmallNet, read_results, write_images  # noqa: E402

KW = dict(size=(32, 32), mean=MEAN, std=STD, batch_size=2, shard_size=2, map_size=8)

SLOW_MODEL = """
import os
import time
from tests.audit_helpers import SmallNet

class Slow(SmallNet):
    def forward(self, x):
        time.sleep(float(os.environ.get("SLOW_SECONDS", "0.05")))  # long in the run to be cut: no race
        return super().forward(x)

def build():
    return Slow().eval()
"""


def shard_files(out):
    folder = os.path.join(out, "results")
    return {n: (os.stat(os.path.join(folder, n)).st_ino, os.stat(os.path.join(folder, n)).st_mtime_ns)
            for n in os.listdir(folder) if not n.startswith(".")}


def assert_same_results(a, b):
    table_a, maps_a = read_results(a)
    table_b, maps_b = read_results(b)
    assert table_a.num_rows == table_b.num_rows > 0
    assert table_a.drop_columns(["map"]).equals(table_b.drop_columns(["map"]))
    np.testing.assert_array_equal(maps_a, maps_b)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("resume-data"))
    write_images(root, count=8)
    return root


def test_ctrl_c_then_rerun_equals_an_uninterrupted_run(data, tmp_path, monkeypatch):
    model = SmallNet().eval()
    audit(model, data, str(tmp_path / "whole"), ["gradcam", "saliency"], **KW)
    real, calls = BatchExplainer.explain, []

    def interrupted(self, batch):
        calls.append(1)
        if len(calls) == 3:  # the third batch: shards 0 and 1 are done
            raise KeyboardInterrupt
        return real(self, batch)

    monkeypatch.setattr(BatchExplainer, "explain", interrupted)
    out = str(tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        audit(model, data, out, ["gradcam", "saliency"], **KW)
    before = shard_files(out)
    assert sorted(before) == ["part-00000.parquet", "part-00001.parquet"]
    assert not os.path.exists(os.path.join(out, "clusters.parquet"))
    monkeypatch.setattr(BatchExplainer, "explain", real)
    result = audit(model, data, out, ["gradcam", "saliency"], **KW)
    assert result.summary["shards_resumed"] == 2 and result.summary["shards"] == 4
    after = shard_files(out)
    assert {k: after[k] for k in before} == before  # finished shards never rewritten
    assert_same_results(out, str(tmp_path / "whole"))


def _cli(data, out, cwd):
    return [sys.executable, "-m", "cnnlens.cli", "audit", "slowmodel:build", data, "--out", out, "--size", "32", "32",
            "--mean", *map(str, MEAN), "--std", *map(str, STD), "--batch-size", "2", "--shard-size", "2", "--map-size", "8",
            "--no-report"]


def _wait_for_first_shard(process, out):
    deadline = time.time() + 60
    while time.time() < deadline and process.poll() is None:
        if os.path.exists(os.path.join(out, "results", "part-00000.parquet")):
            return
        time.sleep(0.05)
    pytest.fail("the first shard never appeared")


@pytest.fixture
def slow_cwd(tmp_path):
    (tmp_path / "slowmodel.py").write_text(SLOW_MODEL)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    return tmp_path, env


@pytest.mark.parametrize("how", ["kill", "interrupt"])
def test_killed_or_interrupted_process_then_rerun_equals_an_uninterrupted_run(data, slow_cwd, how):
    cwd, env = slow_cwd
    whole, out = str(cwd / "whole"), str(cwd / "cut")
    subprocess.run(_cli(data, whole, cwd), cwd=cwd, env=env, check=True, capture_output=True)
    # SIGINT at its default in the child, so Python turns it into KeyboardInterrupt even when the tests
    # run where SIGINT is ignored (a shell's background job: Python keeps an inherited SIG_IGN)
    process = subprocess.Popen(_cli(data, out, cwd), cwd=cwd, env=dict(env, SLOW_SECONDS="2"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for_first_shard(process, out)
    process.send_signal(signal.SIGKILL if how == "kill" else signal.SIGINT)
    _, err = process.communicate(timeout=60)
    if how == "kill":
        assert process.returncode == -signal.SIGKILL
    else:
        assert process.returncode == 130 and err.strip().splitlines() == ["error: interrupted"]
    before = shard_files(out)
    assert 1 <= len(before) < 4
    import pyarrow.parquet as pq
    for name in before:  # every file a reader sees is complete
        assert pq.read_metadata(os.path.join(out, "results", name)).num_rows == 2
    rerun = subprocess.run(_cli(data, out, cwd), cwd=cwd, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    after = shard_files(out)
    assert {k: after[k] for k in before} == before
    assert_same_results(out, whole)
