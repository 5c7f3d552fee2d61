"""Prometheus metrics: the counters the app moves, and the text exposition of ``/metrics``.

Two modes, chosen by the process environment (prometheus_client reads it once, on import):

* ``PROMETHEUS_MULTIPROC_DIR`` set (gunicorn, see ``gunicorn.conf.py``): every worker writes
  its counts to files in that directory and a scrape sums them over all workers, so whichever
  worker answers ``/metrics`` reports the whole server.
* unset (``flask run``, commands, tests): each app keeps its counts in a registry of its own.

The database gauges are computed at scrape time (:mod:`vault.observability.gauges`), never
summed over workers. Labels hold provider keys, service key names, outcomes and error codes:
never a secret, an account or an e-mail address.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from flask import Flask, current_app
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy.orm import Session

from vault.observability.gauges import DatabaseCollector

MULTIPROCESS_DIRECTORY = "PROMETHEUS_MULTIPROC_DIR"
# A refresh is one provider round trip: tens of milliseconds to the provider timeout (10 s).
REFRESH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The counters and histograms of one app."""

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get(MULTIPROCESS_DIRECTORY))
        self.registry = CollectorRegistry()
        self.refreshes = Counter(
            "token_vault_refresh",
            "Refresh attempts that asked a provider, by how they ended.",
            ["provider", "outcome"],
            registry=self.registry,
        )
        self.refresh_seconds = Histogram(
            "token_vault_refresh_duration_seconds",
            "Time a refresh spent asking the provider.",
            ["provider"],
            buckets=REFRESH_BUCKETS,
            registry=self.registry,
        )
        self.handouts = Counter(
            "token_vault_handouts",
            "Access tokens handed out by the token API, by service key name.",
            ["service_key"],
            registry=self.registry,
        )
        self.api_errors = Counter(
            "token_vault_api_errors",
            "Error answers of the token API, by error code.",
            ["error"],
            registry=self.registry,
        )

    def exposition(self, session: Session) -> bytes:
        """The text format of every metric: the counters (all workers') and the gauges."""
        registry = CollectorRegistry(auto_describe=False)
        if self.multiprocess:
            MultiProcessCollector(registry)
        else:
            registry.register(self.registry)
        registry.register(DatabaseCollector(session))
        return generate_latest(registry)


def init_metrics(app: Flask) -> None:
    """Give ``app`` its metrics (``app.extensions["metrics"]``)."""
    app.extensions["metrics"] = Metrics()


def _metrics() -> Metrics:
    return current_app.extensions["metrics"]


def count_handout(service_key: str) -> None:
    """A token was handed out to the service key named ``service_key``."""
    _metrics().handouts.labels(service_key).inc()


def count_api_error(error: str) -> None:
    """The token API answered with the error code ``error``."""
    _metrics().api_errors.labels(error).inc()


@contextmanager
def refresh_attempt(
    provider: str,
    *,
    needs_reconnect: type[BaseException],
    transient: type[BaseException],
) -> Iterator[None]:
    """Time and count one provider call of a refresh around the block it wraps.

    No exception: ``refreshed``; ``needs_reconnect`` or ``transient`` (the caller names the
    exception classes, which live above this layer): that outcome. Anything else is a bug,
    not a refresh outcome, and is not counted.
    """
    metrics = _metrics()
    started = time.perf_counter()
    outcome: str | None = None
    try:
        yield
        outcome = "refreshed"
    except needs_reconnect:
        outcome = "needs_reconnect"
        raise
    except transient:
        outcome = "transient"
        raise
    finally:
        if outcome is not None:
            metrics.refresh_seconds.labels(provider).observe(time.perf_counter() - started)
            metrics.refreshes.labels(provider, outcome).inc()
