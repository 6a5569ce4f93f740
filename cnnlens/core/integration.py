"""Quadrature on [0, 1] for Integrated Gradients: the points and weights of Captum 0.9's rules."""

from __future__ import annotations

from typing import Tuple

import numpy as np

INTEGRATION_RULES = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")


def integration_points(rule: str, steps: int) -> Tuple[np.ndarray, np.ndarray]:
    """(alphas, weights), float64 (steps,): ``integral_0^1 f ~ sum_i weights_i f(alphas_i)``.

    ``gausslegendre``: Gauss-Legendre nodes t mapped to (1 + t) / 2, weights halved. Riemann rules:
    weights 1/steps (``riemann_trapezoid``: both ends halved) at ``linspace(0, 1, steps)``
    (trapezoid), ``linspace(0, 1 - 1/steps)`` (left), ``linspace(1/steps, 1)`` (right) or the
    midpoints (middle). Captum computes the Riemann points with float32 ``torch.linspace``; so does
    this, so the two agree to the last digit.
    """
    if rule not in INTEGRATION_RULES:
        raise ValueError(f"rule must be one of {INTEGRATION_RULES}, got {rule!r}")
    if steps < 2:
        raise ValueError("steps must be at least 2")
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return 0.5 * (1 + nodes), 0.5 * weights
    n = steps
    start, stop = {"riemann_trapezoid": (0.0, 1.0), "riemann_left": (0.0, 1 - 1 / n),
                   "riemann_right": (1 / n, 1.0), "riemann_middle": (1 / (2 * n), 1 - 1 / (2 * n))}[rule]
    alphas = _linspace32(start, stop, n)
    weights = np.full(n, 1 / n)
    if rule == "riemann_trapezoid":
        weights[0] /= 2
        weights[-1] /= 2
    return alphas, weights


def _linspace32(start: float, stop: float, n: int) -> np.ndarray:
    """``torch.linspace(start, stop, n)`` in float32 (as Captum's points are), as float64."""
    step = (np.float32(stop) - np.float32(start)) / np.float32(n - 1)
    i = np.arange(n, dtype=np.float32)
    half = n // 2
    # torch fills the first half from the start and the second half back from the end
    values = np.where(i < half, np.float32(start) + step * i, np.float32(stop) - step * (np.float32(n - 1) - i))
    return values.astype(np.float32).astype(np.float64)
