"""URL converters of this app's routes."""

from __future__ import annotations

from werkzeug.routing import BaseConverter

# The largest id a route's <int:...> matches (IdConverter): ids are 32-bit INTEGER columns.
MAX_ID = 2**31 - 1


class IdConverter(BaseConverter):
    """``<int:...>`` in this app's routes: an id that can exist, 1 to 2³¹-1 in ASCII digits.

    Werkzeug's own matches any Unicode digit ("١٢٣" is 123) and any size (SQLite raises
    OverflowError). Anything else falls through to the next route (the token API's JSON 404)
    or is a 404: the range is in the pattern, as a refusal after matching ends the routing.
    """

    # No leading zeros; below 10 digits anything, then the limit's digits one at a time.
    regex = (
        r"(?:[1-9][0-9]{0,8}|1[0-9]{9}|20[0-9]{8}|21[0-3][0-9]{7}|214[0-6][0-9]{6}"
        r"|2147[0-3][0-9]{5}|21474[0-7][0-9]{4}|214748[0-2][0-9]{3}|2147483[0-5][0-9]{2}"
        r"|21474836[0-3][0-9]|214748364[0-7])"
    )
    weight = 50  # as Werkzeug's numbers: a literal path segment still wins

    def to_python(self, value: str) -> int:
        """The id."""
        return int(value)
