"""Audit exports as CSV or JSON Lines, streamed a batch at a time, and audited themselves."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any, Protocol

from vault import audit
from vault.extensions import db
from vault.models import User

# format name -> (media type, file extension)
FORMATS = {
    "csv": ("text/csv; charset=utf-8", "csv"),
    "jsonl": ("application/x-ndjson; charset=utf-8", "jsonl"),
}
# A spreadsheet runs a cell starting with one of these as a formula (CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class Selection(Protocol):
    """What is exported (``vault.queries.audit.select_for_export`` makes one)."""

    @property
    def description(self) -> str: ...
    @property
    def count(self) -> int: ...
    @property
    def field_names(self) -> tuple[str, ...]: ...
    @property
    def batches(self) -> Iterator[Sequence[Sequence[Any]]]: ...


@dataclass(frozen=True)
class Export:
    """An export under way: what it holds and its body, produced as it is read."""

    format: str
    count: int
    chunks: Iterator[str]

    @property
    def media_type(self) -> str:
        """The body's Content-Type."""
        return FORMATS[self.format][0]

    def filename(self, today: date) -> str:
        """``audit-YYYY-MM-DD.csv`` (or ``.jsonl``) for the day it was made."""
        return f"audit-{today.isoformat()}.{FORMATS[self.format][1]}"


def start_export(
    selection: Selection, format: str, *, actor: User | str | None = None
) -> Export:
    """Record (and commit) the export in the audit trail: who, which filters, how many rows.

    The rows are read as the returned :attr:`Export.chunks` is consumed: one batch in memory
    at a time. ``format`` is a key of :data:`FORMATS` (the caller checks it).
    """
    audit.record(
        "audit.exported",
        actor=actor,
        detail=f"format={format} {selection.description} rows={selection.count}",
    )
    db.session.commit()
    body = _csv(selection) if format == "csv" else _jsonl(selection)
    return Export(format, selection.count, body)


def _csv(selection: Selection) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(selection.field_names)
    yield _drain(buffer)
    for batch in selection.batches:
        writer.writerows([_csv_cell(value) for value in row] for row in batch)
        yield _drain(buffer)


def _jsonl(selection: Selection) -> Iterator[str]:
    names = selection.field_names
    for batch in selection.batches:
        yield "".join(_json_line(names, row) for row in batch)


def _drain(buffer: io.StringIO) -> str:
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return text


def _csv_cell(value: Any) -> Any:
    if isinstance(value, datetime):
        return _timestamp(value)
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def _json_line(names: Sequence[str], row: Sequence[Any]) -> str:
    values = {
        name: _timestamp(value) if isinstance(value, datetime) else value
        for name, value in zip(names, row, strict=True)
    }
    return json.dumps(values, ensure_ascii=False, separators=(",", ":")) + "\n"


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat()
