"""Who owns what: the rules for connection tags (a minimal version, see docs/architecture.md,
"Service keys and users in the dashboard").

Service-key tag restrictions and connection tags follow the same rule, decided here once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

TAG_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
MAX_TAGS = 10


class OwnershipError(ValueError):
    """An owner or a tag is not acceptable; the message says why."""


def normalise_tags(tags: Iterable[str]) -> list[str]:
    """``tags`` lower-cased, stripped, without blanks or duplicates, sorted.

    Raises :class:`OwnershipError` for a tag that is not 1 to 32 letters, digits, ``-`` or
    ``_`` (starting with a letter or digit), or for more than :data:`MAX_TAGS` tags.
    """
    cleaned = {tag.strip().lower() for tag in tags} - {""}
    for tag in sorted(cleaned):
        if not TAG_PATTERN.match(tag):
            raise OwnershipError(
                f"tag {tag[:40]!r} is not valid: use 1 to 32 lower-case letters, digits, '-' "
                "or '_', starting with a letter or digit"
            )
    if len(cleaned) > MAX_TAGS:
        raise OwnershipError(f"at most {MAX_TAGS} tags, not {len(cleaned)}")
    return sorted(cleaned)
