"""The Ray engine: a real local Ray instance (2 CPUs) runs the same job as the local engine; the
rows and maps are equal, and the instance it started leaves no process behind."""

import os

import numpy as np
import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("sklearn")
ray = pytest.importorskip("ray")

from cnnlens.audit import audit  # noqa: E402
from tests.audit_helpers import MEAN, STD, SmallNet, read_results, write_images  # noqa: E402

KW = dict(size=(32, 32), mean=MEAN, std=STD, batch_size=3, shard_size=4, map_size=8)


def ray_processes():
    """Pids of Ray's daemons and workers on this machine."""
    found = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmd = handle.read().replace(b"\0", b" ")
        except OSError:
            continue
        if any(name in cmd for name in (b"raylet", b"gcs_server", b"ray::", b"default_worker.py")):
            found.add(int(pid))
    return found


def test_ray_engine_equals_the_local_engine_and_leaves_no_process(tmp_path):
    import time

    root = str(tmp_path / "data")
    write_images(root, count=10)
    (tmp_path / "data" / "bee" / "broken.png").write_bytes(b"broken")
    model = SmallNet().eval()
    local = audit(model, root, str(tmp_path / "local"), ["gradcam", "saliency"], **KW)
    before = ray_processes()
    assert not ray.is_initialized()
    remote = audit(model, root, str(tmp_path / "ray"), ["gradcam", "saliency"], engine="ray", ray_cpus=2, **KW)
    assert not ray.is_initialized()
    table_l, maps_l = read_results(str(tmp_path / "local"))
    table_r, maps_r = read_results(str(tmp_path / "ray"))
    assert table_r.num_rows == 20 and table_r.schema.equals(table_l.schema)
    assert table_r.drop_columns(["map"]).equals(table_l.drop_columns(["map"]))
    np.testing.assert_allclose(maps_r, maps_l, atol=1e-5)  # the same batches: in practice identical
    assert open(tmp_path / "ray" / "errors.csv").read() == open(tmp_path / "local" / "errors.csv").read()
    assert remote.summary["engine"] == "ray" and remote.summary["explained"] == local.summary["explained"] == 10
    deadline = time.time() + 20
    while ray_processes() - before and time.time() < deadline:
        time.sleep(0.2)
    assert not ray_processes() - before


def test_joining_a_running_cluster_leaves_it_running(tmp_path):
    """``ray_address="auto"`` joins the cluster `ray start --head` started (2 CPUs), gives the local
    engine's rows, and does not shut the cluster down: that is its owner's to do."""
    import subprocess
    import sys

    from cnnlens.adapters.demo_model import build_model  # importable on every worker, unlike the tests

    root = str(tmp_path / "data")
    write_images(root, count=6)
    model = build_model(num_classes=2, seed=0).eval()
    ray_cli = [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()"]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    subprocess.run(ray_cli + ["start", "--head", "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats"],
                   check=True, capture_output=True, env=env, timeout=120)
    try:
        local = audit(model, root, str(tmp_path / "local"), ["gradcam"], **KW)
        audit(model, root, str(tmp_path / "ray"), ["gradcam"], engine="ray", ray_address="auto", **KW)
        assert not ray.is_initialized()  # the driver disconnected...
        status = subprocess.run(ray_cli + ["status"], capture_output=True, text=True, env=env, timeout=60)
        assert status.returncode == 0, status.stderr  # ...and the cluster is still up
        table_l, maps_l = read_results(str(tmp_path / "local"))
        table_r, maps_r = read_results(str(tmp_path / "ray"))
        assert table_r.drop_columns(["map"]).equals(table_l.drop_columns(["map"])) and local.summary["explained"] == 6
        np.testing.assert_allclose(maps_r, maps_l, atol=1e-5)
    finally:
        subprocess.run(ray_cli + ["stop", "--force"], capture_output=True, env=env, timeout=120)
