"""gunicorn's settings for Token Vault; gunicorn reads ./gunicorn.conf.py by itself when
started from the project directory (else pass ``-c /path/to/gunicorn.conf.py``).

Prometheus metrics in multiprocess mode (docs/architecture.md, "Observability"): each worker
writes its counters to files in ``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` sums them, so
the counts of every worker add up whichever one is scraped. The directory must be set before
the workers start (it is read when prometheus_client is imported) and hold nothing from an
earlier run. Set it yourself (e.g. ``/run/token-vault/metrics``, writable by the service
user, one directory per gunicorn instance) or leave it unset and a private temporary
directory is made for this instance and removed when it stops.
"""

import glob
import os
import shutil
import tempfile

_DIRECTORY_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# Names the directory made here, so on_exit removes it even after a reload (HUP) re-read this.
_TEMPORARY_MARKER = "TOKEN_VAULT_TEMPORARY_METRICS_DIR"
if not os.environ.get(_DIRECTORY_VARIABLE):
    os.environ[_DIRECTORY_VARIABLE] = tempfile.mkdtemp(prefix="token-vault-metrics-")
    os.environ[_TEMPORARY_MARKER] = os.environ[_DIRECTORY_VARIABLE]


def on_starting(server):
    """Start from zero: counts left by an earlier run of this instance would be added in."""
    directory = os.environ[_DIRECTORY_VARIABLE]
    os.makedirs(directory, exist_ok=True)
    for leftover in glob.glob(os.path.join(directory, "*.db")):
        os.remove(leftover)


def child_exit(server, worker):
    """A worker ended: its counters stay counted, its live gauges are dropped."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """Remove the temporary directory this file made (one set by the operator stays)."""
    directory = os.environ[_DIRECTORY_VARIABLE]
    if os.environ.get(_TEMPORARY_MARKER) == directory:
        shutil.rmtree(directory, ignore_errors=True)
