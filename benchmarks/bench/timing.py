"""Wall-clock timing: one warm-up call, then repeated calls, reporting the median."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional


@dataclass
class Timing:
    """Seconds per call: the median and every repeat."""

    median: float
    times: List[float]
    result: Any = None


def synchronizer(device: str) -> Callable[[], None]:
    """A function that waits for the device's queued work (a no-op on the CPU)."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return lambda: None


def measure(fn: Callable[[], Any], sync: Callable[[], None], repeats: int, budget: float,
            warmup: bool = True) -> Timing:
    """Median time of ``fn()`` over ``repeats`` calls after one warm-up call (whose result is
    kept). Stops early once the repeats have used ``budget`` seconds, keeping at least one."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    result: Optional[Any] = None
    if warmup:
        sync()
        result = fn()
        sync()
    times: List[float] = []
    spent = 0.0
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        elapsed = time.perf_counter() - start
        if result is None:
            result = out
        times.append(elapsed)
        spent += elapsed
        if spent >= budget:
            break
    return Timing(statistics.median(times), times, result)


def measure_interleaved(runners: Dict[str, Callable[[], Any]], sync: Callable[[], None], repeats: int,
                        budget: float) -> Dict[str, Timing]:
    """Median times of several implementations of the same work, timed in rounds (one call of each
    per round, after one warm-up round, the order rotating from round to round) so that drifts in
    the machine's speed, and what one implementation leaves running for the next, hit them all alike.
    Stops after ``repeats`` rounds, or once the rounds have used ``budget`` seconds (at least two)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    results: Dict[str, Any] = {}
    for name, fn in runners.items():
        sync()
        results[name] = fn()
        sync()
    times: Dict[str, List[float]] = {name: [] for name in runners}
    names = list(runners)
    spent = 0.0
    for round_ in range(repeats):
        shift = round_ % len(names)  # each round starts with the next one, so none always follows the same
        for name in names[shift:] + names[:shift]:
            fn = runners[name]
            sync()
            start = time.perf_counter()
            fn()
            sync()
            elapsed = time.perf_counter() - start
            times[name].append(elapsed)
            spent += elapsed
        if spent >= budget and round_ >= 1:
            break
    return {name: Timing(statistics.median(times[name]), times[name], results[name]) for name in runners}
