"""The process's log output: one handler, text or JSON lines, each line with its request id.

Secrets are scrubbed before any formatter sees a record (:mod:`vault.redact` installs a log
record factory that redacts every record at birth); the formatters here only lay it out.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

from flask.logging import wsgi_errors_stream

from vault.observability.request_ids import current_request_id

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, message, request_id, exception.

    JSON escapes line breaks and control characters, so a message cannot forge another line.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "timestamp": datetime.fromtimestamp(record.created, timezone.utc)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        # The redacting record factory has already turned a traceback into exc_text; a record
        # made some other way still gets its exception formatted here.
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry)


class _VaultLogHandler(logging.StreamHandler):
    """The vault's handler on the root logger; writes where Flask's default handler would
    (the server's error stream during a request, else stderr)."""


class _RequestIdRecordFactory:
    """Wraps the log record factory: records made during a request carry its id."""

    def __init__(self, wrapped):
        self.wrapped = wrapped

    def __call__(self, *args, **kwargs) -> logging.LogRecord:
        record = self.wrapped(*args, **kwargs)
        request_id = current_request_id()
        if request_id is not None:
            record.request_id = request_id
        return record


def _installed(factory) -> bool:
    # Other wrappers (vault.redact's) may sit on top of ours: look down the whole chain, so
    # each create_app of the process does not add one more layer.
    while factory is not None:
        if isinstance(factory, _RequestIdRecordFactory):
            return True
        factory = getattr(factory, "wrapped", None)
    return False


def formatter_for(log_format: str) -> logging.Formatter:
    """The formatter of ``VAULT_LOG_FORMAT`` (``text`` or ``json``)."""
    if log_format == "json":
        return JsonFormatter()
    return logging.Formatter(TEXT_FORMAT, defaults={"request_id": "-"})


def install_logging(log_format: str) -> None:
    """Send every logger's records through one handler in ``log_format``, with request ids.

    Replaces the handler an earlier app of this process installed (tests build many apps),
    so each line is written once. Levels are left as they are. Call it before
    :func:`vault.redact.install_log_redaction`, whose factory then stays on top of the chain
    (it only looks at the top one to avoid wrapping itself twice).
    """
    if not _installed(logging.getLogRecordFactory()):
        logging.setLogRecordFactory(_RequestIdRecordFactory(logging.getLogRecordFactory()))
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _VaultLogHandler)]:
        root.removeHandler(handler)
    handler = _VaultLogHandler(wsgi_errors_stream)
    handler.setFormatter(formatter_for(log_format))
    root.addHandler(handler)
