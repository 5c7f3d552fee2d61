"""Small timing helpers shared by the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_per_call(
    functions: dict[str, Callable[[], object]], *, calls: int, rounds: int = 7
) -> dict[str, float]:
    """Best seconds per call of each function, measured in interleaved rounds.

    Interleaving means a burst of load from elsewhere on the machine hits every candidate
    alike instead of skewing whichever happened to run at that moment.
    """
    best = {name: float("inf") for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            started = time.perf_counter()
            for _ in range(calls):
                function()
            best[name] = min(best[name], (time.perf_counter() - started) / calls)
    return best


def verdict(ok: bool) -> str:
    """'met' or 'MISSED', for the last column of a report line."""
    return "met" if ok else "MISSED"
