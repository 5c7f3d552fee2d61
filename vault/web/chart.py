"""The health page's expiry chart: server-rendered SVG, its geometry worked out here.

``templates/health/_chart.html`` draws what :func:`expiry_chart` returns; no script runs in
the browser.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from vault.queries.health import Bucket
from vault.queries.keyset import AtLeast

WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 720, 240, 48, 8, 16, 52


@dataclass(frozen=True)
class Bar:
    """One bucket's bars, in SVG user units: expiries, and beside them reconnect-by dates."""

    x: float
    y: float
    width: float
    height: float
    bucket: Bucket
    reconnect_x: float = 0.0
    reconnect_y: float = 0.0
    reconnect_height: float = 0.0


def _add(total: int, number: int) -> int:
    # A slot counted up to its cap makes every sum it is in a lower bound ("1,200+").
    added = total + number
    return AtLeast(added) if isinstance(total, AtLeast) or isinstance(number, AtLeast) else added


def _sum(numbers) -> int:
    total = 0
    for number in numbers:
        total = _add(total, number)
    return total


def expiry_chart(buckets: list[Bucket], now: datetime) -> dict:
    """Bars, y-axis ticks, day labels and the "now" line for ``health/_chart.html``.

    Two series share the axis: credentials expiring (a refresh renews most of them) and
    connections whose reconnect-by date falls in the slot (only a person can).
    """
    top = _nice_ceiling(
        max((max(bucket.count, bucket.reconnect) for bucket in buckets), default=0)
    )
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_width / max(1, len(buckets))
    baseline = TOP + plot_height
    bars = []
    for index, bucket in enumerate(buckets):
        height = plot_height * bucket.count / top
        reconnect = plot_height * bucket.reconnect / top
        x = LEFT + index * slot + slot * 0.1
        bars.append(Bar(x, baseline - height, slot * 0.4, height, bucket,
                        x + slot * 0.4, baseline - reconnect, reconnect))
    days: dict[str, dict] = {}
    for bar in bars:
        start = bar.bucket.start
        day = days.setdefault(f"{start:%a} {start.day} {start:%b}", {"xs": [], "total": 0})
        day["xs"].append(bar.x + bar.width)
        day["total"] = _add(day["total"], bar.bucket.count)
    span = (buckets[-1].end - buckets[0].start) if buckets else timedelta(days=1)
    coming = [bucket for bucket in buckets if not bucket.past]
    busiest = max(coming, key=lambda bucket: bucket.count, default=None)
    return {
        "width": WIDTH,
        "height": HEIGHT,
        "left": LEFT,
        "right": WIDTH - RIGHT,
        "top": TOP,
        "baseline": baseline,
        "bars": bars,
        "ticks": [
            (value, baseline - plot_height * value / top)
            for value in ((0, top) if top == 1 else (0, top // 2, top))
        ],
        "days": [
            (sum(day["xs"]) / len(day["xs"]), label, day["total"]) for label, day in days.items()
        ],
        "now_x": LEFT + plot_width * ((now - buckets[0].start) / span) if buckets else LEFT,
        "total": _sum(bucket.count for bucket in coming),
        "reconnect_total": _sum(bucket.reconnect for bucket in coming),
        "busiest": busiest if busiest is not None and busiest.count else None,
    }


def _nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 4, 6, 8, 10, 20, ... at least ``value``: its half is whole."""
    magnitude = 1
    while True:
        for step in (1, 2, 4, 6, 8):
            if step * magnitude >= value:
                return step * magnitude
        magnitude *= 10
