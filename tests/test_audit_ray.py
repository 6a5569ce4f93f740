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
