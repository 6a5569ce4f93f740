"""Dataset-scale explanation: ``cnnlens.audit`` explains every image of a folder or manifest,
writes the maps as a Parquet dataset, clusters them per class with SpRAy and writes a report.

Needs the ``audit`` extra (pyarrow, scikit-learn, Pillow); the Ray engine the ``ray`` extra.
"""

from .run import AuditResult, NothingExplained, audit

__all__ = ["audit", "AuditResult", "NothingExplained"]
