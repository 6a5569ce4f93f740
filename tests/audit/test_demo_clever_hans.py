"""``cnnlens demo --clever-hans --quick``: the audit finds the shortcut the model learned."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("sklearn")
pytest.importorskip("PIL")

from cnnlens.audit.clever_hans_demo import mark_share, on_mark  # noqa: E402
from cnnlens.cli import main  # noqa: E402


def test_mark_region_rules_on_hand_made_maps():
    corner = np.zeros((56, 56)); corner[4:8, 4:8] = 1  # on the mark's box (4..9 at 64 px)
    centre = np.zeros((56, 56)); centre[28, 28] = 1
    assert on_mark(corner, 64, "top-left") and mark_share(corner, 64, "top-left") == 1.0
    assert not on_mark(centre, 64, "top-left") and mark_share(centre, 64, "top-left") == 0.0
    assert not on_mark(corner, 64, "bottom-right")


def test_quick_clever_hans_demo_finds_the_mark(tmp_path, capsys):
    out = str(tmp_path / "demo")
    assert main(["demo", "--clever-hans", "--quick", "--out", out]) == 0
    printed = capsys.readouterr().out
    summary = json.load(open(os.path.join(out, "clever_hans_summary.json")))
    for name in ("report.html", "clusters.png", "clusters.parquet", "summary.json", "errors.csv"):
        assert os.path.exists(os.path.join(out, "audit", name)), name
    assert summary["mark_clusters"], "no cluster of 'square' maps peaks on the mark"
    inside = summary["in_mark_clusters"]
    sizes = summary["clusters"]
    assert sum(inside.values()) == sum(sizes[k] for k in summary["mark_clusters"])
    assert (inside["negative_marked"] + inside["positive_marked"]) >= 0.8 * sum(inside.values())
    assert summary["effect"]["flip_rate"] > 0.5  # the mark turns clean negatives into squares
    assert f"{sum(inside.values())} of the {summary['predicted_squares']} predicted squares" in printed
    audit_summary = json.load(open(os.path.join(out, "audit", "summary.json")))
    assert audit_summary["explained"] == audit_summary["images"] == summary["effect"]["images"]["positive"] * 2 + \
        summary["effect"]["images"]["negative"] * 2
