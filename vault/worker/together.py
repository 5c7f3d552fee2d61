"""``python -m vault.worker.together --host H --port P``: the web server and one worker, as one.

What ``make run`` starts last: ``flask run`` and ``flask vault worker`` as two child
processes. One Ctrl-C (SIGINT) or a SIGTERM stops both; when either child exits, the other
is stopped too, and this process exits with the first failure's code (0 when both stopped
cleanly). On Linux each child also gets SIGTERM should this process itself die, so neither
is ever left behind. Imports nothing from the app: it only starts processes.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import signal
import subprocess
import sys
import time
from types import FrameType

# How long a child may take to stop after SIGTERM (the worker finishes a refresh in hand,
# bounded by the provider timeout) before it is killed.
STOP_GRACE_SECONDS = 30
_PR_SET_PDEATHSIG = 1


def commands(host: str, port: int) -> dict[str, list[str]]:
    """The two children by name: the development web server and one worker."""
    flask = [sys.executable, "-m", "flask", "--app", "app"]
    return {
        "web server": [*flask, "run", "--host", host, "--port", str(port)],
        "worker": [*flask, "vault", "worker"],
    }


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, before exec
    # Not Linux: no prctl, and the signal handlers of run() alone stop the children.
    with contextlib.suppress(AttributeError, OSError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def run(named: dict[str, list[str]]) -> int:
    """Start every command, wait until one exits or a signal comes, stop the rest.

    The children run in process groups of their own, so a terminal's Ctrl-C reaches them
    once, as this process's SIGTERM: the worker's first signal finishes the refresh in hand,
    a second (a second Ctrl-C) stops it at once.
    """
    children = [
        subprocess.Popen(command, process_group=0, preexec_fn=_die_with_parent)
        for command in named.values()
    ]
    print(  # noqa: T201 - a command-line tool
        "Started " + ", ".join(
            f"{name} (pid {child.pid})" for name, child in zip(named, children, strict=True)
        ),
        file=sys.stderr,
        flush=True,
    )
    stopping = False

    def stop_all(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop_all) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes: list[int] = []
        while not codes:
            codes = [code for child in children if (code := child.poll()) is not None]
            if not codes:
                time.sleep(0.2)
        if not stopping:  # one child ended by itself: take the other down with it
            stop_all(signal.SIGTERM, None)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for child in children:
            try:
                child.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    # A child stopped by our signal reports -SIGTERM (or -SIGINT): a clean stop, not a failure.
    clean = (0, -signal.SIGTERM, -signal.SIGINT)
    failures = [child.returncode for child in children if child.returncode not in clean]
    return abs(failures[0]) if failures else 0


def main() -> None:
    """Parse ``--host``/``--port`` and run the web server and a worker together."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    options = parser.parse_args()
    print(  # noqa: T201 - a command-line tool
        f"Starting the web server on http://{options.host}:{options.port} and a worker; "
        "Ctrl-C stops both.",
        file=sys.stderr,
        flush=True,
    )
    sys.exit(run(commands(options.host, options.port)))


if __name__ == "__main__":
    main()
