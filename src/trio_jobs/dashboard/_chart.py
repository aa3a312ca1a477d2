"""The throughput chart: jobs completed and failed per minute, as server-rendered SVG.

Only numbers and fixed words go into the markup, so it needs no escaping; it is
plain SVG, readable without JavaScript and swapped whole by the live updates.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..storage._browse import MinuteCount

WIDTH = 720
HEIGHT = 180
_LEFT = 40
_BOTTOM = 22
_TOP = 12


def _nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 5 x 10^k that is >= ``value`` (at least 1)."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def throughput_svg(series: Sequence[MinuteCount]) -> str:
    """Return an SVG bar chart of ``series``: completed (green) over failed (red) per minute."""
    peak = _nice_ceiling(max((m.completed + m.failed for m in series), default=0))
    plot_w = WIDTH - _LEFT - 8
    plot_h = HEIGHT - _BOTTOM - _TOP
    n = max(len(series), 1)
    slot = plot_w / n
    bar = max(slot * 0.75, 1.0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        'class="chart" role="img" aria-label="jobs completed and failed per minute">',
        f'<line x1="{_LEFT}" y1="{_TOP + plot_h}" x2="{WIDTH - 8}" y2="{_TOP + plot_h}" '
        'class="axis"/>',
    ]
    for fraction in (0.5, 1.0):
        y = _TOP + plot_h * (1 - fraction)
        parts.append(
            f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{WIDTH - 8}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">'
            f"{round(peak * fraction)}</text>"
        )
    parts.append(
        f'<text x="{_LEFT - 6}" y="{_TOP + plot_h + 4}" class="tick" text-anchor="end">0</text>'
    )
    for i, minute in enumerate(series):
        x = _LEFT + i * slot + (slot - bar) / 2
        ok_h = plot_h * minute.completed / peak
        bad_h = plot_h * minute.failed / peak
        base = _TOP + plot_h
        label = f"{minute.minute:%H:%M} UTC: {minute.completed} completed, {minute.failed} failed"
        parts.append(f"<g><title>{label}</title>")
        if ok_h:
            parts.append(
                f'<rect x="{x:.1f}" y="{base - ok_h:.1f}" width="{bar:.1f}" '
                f'height="{ok_h:.1f}" class="ok"/>'
            )
        if bad_h:
            parts.append(
                f'<rect x="{x:.1f}" y="{base - ok_h - bad_h:.1f}" width="{bar:.1f}" '
                f'height="{bad_h:.1f}" class="bad"/>'
            )
        parts.append("</g>")
    if series:
        for i in (0, len(series) // 2, len(series) - 1):
            x = _LEFT + i * slot + slot / 2
            parts.append(
                f'<text x="{x:.1f}" y="{HEIGHT - 6}" class="tick" text-anchor="middle">'
                f"{series[i].minute:%H:%M}</text>"
            )
    parts.append("</svg>")
    return "".join(parts)
