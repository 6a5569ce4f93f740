"""Dataset-scale explanation: ``cnnlens.audit`` explains every image of a folder or manifest,
writes the maps as a Parquet dataset, clusters them per class with SpRAy and writes a report.

``cnnlens.audit`` is this package and, called, the function ``audit.run.audit``: so both
``cnnlens.audit(model, data, out)`` and ``import cnnlens.audit.job`` work (were the name the
function, Python could not import the package's modules through it).

Needs the ``audit`` extra (pyarrow, scikit-learn, Pillow); the Ray engine the ``ray`` extra.
"""

import sys
import types
from typing import Any

from .run import AuditResult, NothingExplained, audit

__all__ = ["audit", "AuditResult", "NothingExplained"]


class _CallablePackage(types.ModuleType):
    """This package, callable as :func:`audit.run.audit`."""

    def __call__(self, *args: Any, **kwargs: Any) -> AuditResult:
        return audit(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
