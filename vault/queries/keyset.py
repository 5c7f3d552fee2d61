"""Keyset pagination: a list's next page starts after the last row shown, found through an
index, instead of skipping rows with OFFSET (which reads every skipped row).

A page's "Next" link carries an opaque cursor: the last row's sort key and id, and how many
rows came before it (for "Showing 51–100"), as URL-safe base64 of a JSON list. It is not a
secret and not signed: a cursor someone edits only moves where the list starts, and one that
cannot be read starts the list from the beginning, as an unreadable page number did.
Where an exact total would need a full count, the total is counted up to :data:`TOTAL_CAP`
and shown as "10,000+" past it.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, and_, false, func, or_, select

from vault.extensions import db

T = TypeVar("T")
TOTAL_CAP = 10_000


class AtLeast(int):
    """A count known to be this or more (a count stopped at its cap): shown as ``10,000+``."""


class AtMost(int):
    """A count known to be this or fewer: shown as ``≤ 1,000``."""


@dataclass(frozen=True)
class Key:
    """One sort key: a column or expression, its direction, whether it can be NULL (NULLs
    always come last), and how its values travel in a cursor (``datetime``, ``int``, ``str``)."""

    expression: Any
    descending: bool = False
    nullable: bool = False
    kind: type = str

    def order(self) -> Any:
        """The ORDER BY element."""
        ordered = self.expression.desc() if self.descending else self.expression.asc()
        return ordered.nulls_last() if self.nullable else ordered

    def beyond(self, value: Any) -> ColumnElement[bool]:
        """Rows this key puts after ``value``."""
        if value is None:
            return false()  # NULLs come last: nothing but other NULLs follows
        after = self.expression < value if self.descending else self.expression > value
        return or_(after, self.expression.is_(None)) if self.nullable else after

    def equal(self, value: Any) -> ColumnElement[bool]:
        """Rows with this key's ``value``."""
        return self.expression.is_(None) if value is None else self.expression == value


@dataclass(frozen=True)
class Cursor:
    """Where a page starts: after the row with these key ``values``, ``before`` rows in."""

    values: tuple
    before: int

    def encode(self) -> str:
        """The opaque string a "Next" link carries."""
        values = [value.isoformat() if isinstance(value, datetime) else value
                  for value in self.values]
        raw = json.dumps([self.before, *values], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str | None, keys: Sequence[Key]) -> Cursor | None:
        """The cursor in ``text`` for ``keys``, or None when it is missing or unreadable."""
        if not text or len(text) > 2000:
            return None
        try:
            raw = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        except (binascii.Error, ValueError, UnicodeDecodeError):
            return None
        if not isinstance(raw, list) or len(raw) != len(keys) + 1:
            return None
        before, *encoded = raw
        if not isinstance(before, int) or before < 0:
            return None
        values = []
        for key, value in zip(keys, encoded, strict=True):
            try:
                values.append(_value(key, value))
            except (TypeError, ValueError):
                return None
        return cls(tuple(values), before)


def _value(key: Key, value: Any) -> Any:
    if value is None:
        if not key.nullable:
            raise ValueError("a NULL where the key has none")
        return None
    if key.kind is datetime:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            raise ValueError("a naive datetime")
        return moment
    if key.kind is int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
            raise ValueError("not an integer")
        return value
    if not isinstance(value, str):
        raise ValueError("not a string")
    return value


def after(keys: Sequence[Key], cursor: Cursor) -> ColumnElement[bool]:
    """Rows that ``keys`` order after the cursor's row (the last key must be unique)."""
    branches = []
    for index, key in enumerate(keys):
        equal = [earlier.equal(value) for earlier, value in zip(keys, cursor.values[:index],
                                                                strict=False)]
        branches.append(and_(*equal, key.beyond(cursor.values[index])))
    return or_(*branches)


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a longer list; ``total`` may be an :class:`AtLeast` ("10,000+")."""

    items: list[T]
    total: int
    before: int = 0  # rows on the pages before this one
    next_cursor: str | None = None

    @property
    def first_item(self) -> int:
        """1-based position of this page's first item (0 when there is none)."""
        return self.before + 1 if self.items else 0

    @property
    def last_item(self) -> int:
        """1-based position of this page's last item."""
        return self.before + len(self.items)

    @property
    def is_first(self) -> bool:
        """Whether this is the list's first page."""
        return self.before == 0


def distinct_values(column) -> Any:
    """The recursive CTE of ``column``'s distinct values, smallest first, found by skipping
    through an index on it (a loose index scan): the smallest value, then the next one above
    it, and so on, a few index probes per value instead of reading every row. Its column is
    ``value``; the last row is a NULL, which a statement using it filters out."""
    first = select(func.min(column).label("value")).cte(
        f"distinct_{column.name}", recursive=True)
    following = select(
        select(func.min(column)).where(column > first.c.value).scalar_subquery()
    ).where(first.c.value.is_not(None))
    return first.union_all(following)


def capped_count(statement, params: dict | None = None) -> int:
    """How many rows ``statement`` selects, up to :data:`TOTAL_CAP`; past it an
    :class:`AtLeast` (reads at most that many rows)."""
    limited = statement.limit(TOTAL_CAP + 1).subquery()
    number = db.session.scalar(select(func.count()).select_from(limited), params) or 0
    return AtLeast(TOTAL_CAP) if number > TOTAL_CAP else number


def page_of(rows: list, cursor: Cursor | None, total: int, size: int, values) -> Page:
    """The page made of ``rows`` (fetched ``size + 1``): the extra row says there is a next
    page, whose cursor is the last shown row's key ``values(row)``."""
    before = cursor.before if cursor else 0
    shown = rows[:size]
    following = None
    if len(rows) > size:
        following = Cursor(tuple(values(shown[-1])), before + size).encode()
    return Page(shown, total, before, following)
