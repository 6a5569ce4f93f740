"""Whether a method can run on a backend, decided in one place: ``require`` is the only writer of
the "this backend cannot run this method" error (``explain``, the audit, SmoothGrad's base, the
explainer export and the sanity test all ask it), and ``runs`` the only test."""

from __future__ import annotations

from typing import FrozenSet, Optional, Sequence

from ..backend import CAPABILITIES, Backend
from ..errors import UnsupportedError
from .registry import Method, lookup, supported_methods


def missing(backend: Backend, method: str) -> FrozenSet[str]:
    """The capabilities ``method`` needs that ``backend`` lacks (empty: it runs)."""
    return frozenset(lookup(method).needs - backend.capabilities)


def runs(backend: Backend, method: str) -> bool:
    """Whether ``backend`` can run ``method``."""
    return not missing(backend, method)


def _why(backend: Backend, lacking: FrozenSet[str]) -> str:
    known = backend.limits
    reasons = list(dict.fromkeys(known[c] for c in sorted(lacking) if c in known))
    return f" for this model ({'; '.join(reasons)})" if reasons else ""


def require(backend: Backend, method: str, among: Optional[Sequence[str]] = None, instead: str = "",
            context: str = "") -> Method:
    """The method ``method`` if ``backend`` can run it, else an UnsupportedError that names what it
    lacks, why (the backend's ``limits``), and the methods that do run there (of ``among``, e.g. the
    ones that export; ``instead``: a specific suggestion to use in their place). ``context``
    prefixes the message (what asked for the method)."""
    lacking = missing(backend, method)
    if not lacking:
        return lookup(method)
    can = [m for m in supported_methods(backend.capabilities) if among is None or m in among]
    advice = instead or f"On this backend use one of: {', '.join(can) or 'no method'}"
    raise UnsupportedError(f"{context}{method} needs {', '.join(sorted(lacking))}, which the {backend.name} backend "
                           f"does not provide{_why(backend, lacking)}. {advice}")


def require_capability(backend: Backend, capability: str, purpose: str) -> None:
    """An UnsupportedError unless ``backend`` has ``capability`` (``purpose``: what needs it)."""
    if capability not in backend.capabilities:
        raise UnsupportedError(f"{purpose} needs {capability} ({CAPABILITIES[capability]}), which the "
                               f"{backend.name} backend does not provide{_why(backend, frozenset({capability}))}")
