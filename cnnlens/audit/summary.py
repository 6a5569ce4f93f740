"""What an audit found, per (method, explained class): the numbers and pictures the report
shows and ``summary.json`` counts. Built by :mod:`cnnlens.audit.clusters` while it streams
through the results; read by :mod:`cnnlens.audit.report`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np


@dataclass
class Example:
    """One explained image shown in the report.

    ``path``: as in the results (the manifest's string, or the path relative to the data
    folder); ``file``: where to read it; ``map``: its (S, S) map in [0, 1]; ``value``: the
    statistic it was picked by (``energy_in_box``, ``border_share``), if any.
    """

    path: str
    file: str
    map: np.ndarray
    label: Optional[int] = None
    label_name: Optional[str] = None
    predicted: Optional[int] = None
    probability: Optional[float] = None
    predicted_name: Optional[str] = None
    value: Optional[float] = None


@dataclass
class ClusterSummary:
    """One SpRAy cluster: its number (0 = the largest), size, mean map, a few members."""

    cluster: int
    size: int
    mean_map: np.ndarray
    examples: List[Example] = field(default_factory=list)


@dataclass
class GroupSummary:
    """Every map of one method explaining one class.

    ``eigenvalues``: the smallest eigenvalues of the normalised graph Laplacian the number of
    clusters was read from (eigengap); ``clustered``: how many maps went into the spectral
    clustering (the rest joined their nearest cluster); ``outside_box``: the members whose maps
    have the least energy in their object box (lowest first, only rows with a box);
    ``on_border``: the largest shares of the map on the image border (highest first).
    """

    method: str
    target: int
    target_name: Optional[str]
    count: int
    mean_map: np.ndarray
    clusters: List[ClusterSummary]
    eigenvalues: List[float]
    clustered: int
    outside_box: List[Example] = field(default_factory=list)
    on_border: List[Example] = field(default_factory=list)

    @property
    def title(self) -> str:
        """"gradcam, class 3 (cat)" style heading."""
        name = f" ({self.target_name})" if self.target_name else ""
        return f"{self.method}, class {self.target}{name}"
