"""Charts and the hospital map drawn as SVG on the server: no script, no library to ship, no internet.

Why SVG from Python rather than a bundled JavaScript chart library: the console's charts are a ranking
(bars), a few lines over time and dots on a map; drawing them is ~150 lines, they render with the page
(no script to fail or to wait for, nothing to vendor or keep patched), print, and test as text. Every
label is escaped (``markupsafe``); numbers are formatted here, never taken as markup.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from markupsafe import Markup, escape

__all__ = ["COLOURS", "bar_chart", "line_chart", "risk_map"]

COLOURS = {"red": "#d32f2f", "yellow": "#f9a825", "green": "#388e3c", None: "#9e9e9e"}
SERIES = ("#1565c0", "#c62828", "#2e7d32", "#6a1b9a", "#ef6c00", "#00838f")


def _num(value: float) -> str:
    return f"{value:.1f}"


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"


def bar_chart(
    rows: Sequence[tuple[str, float | None]],
    *,
    reference: float | None = 1.0,
    width: int = 640,
    label: str = "",
) -> Markup:
    """Horizontal bars, one per (label, value), with a dashed reference line (the peers' median = 1)."""
    rows = [(name, v) for name, v in rows if v is not None]
    if not rows:
        return Markup("")
    bar_h, gap, left, right = 18, 6, 170, 60
    height = len(rows) * (bar_h + gap) + 30
    top = max([v for _, v in rows] + ([reference] if reference else []))
    scale = (width - left - right) / (top or 1)
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="100%" '
        f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">'
    ]
    for i, (name, value) in enumerate(rows):
        y = 10 + i * (bar_h + gap)
        w = max(1.0, value * scale)
        fill = "#d32f2f" if reference and value >= 1.5 * reference else "#1565c0"
        parts.append(
            f'<text x="{left - 6}" y="{y + 13}" text-anchor="end" font-size="11">{escape(name[:28])}</text>'
            f'<rect x="{left}" y="{y}" width="{_num(w)}" height="{bar_h}" fill="{fill}">'
            f"<title>{escape(name)}: {_fmt(value)}</title></rect>"
            f'<text x="{_num(left + w + 4)}" y="{y + 13}" font-size="11">{_fmt(value)}</text>'
        )
    if reference:
        x = left + reference * scale
        parts.append(
            f'<line x1="{_num(x)}" y1="4" x2="{_num(x)}" y2="{height - 18}" stroke="#555" '
            f'stroke-dasharray="4 3"/><text x="{_num(x)}" y="{height - 4}" font-size="10" '
            f'text-anchor="middle">{_fmt(reference)}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def line_chart(
    periods: Sequence[str],
    series: dict[str, Sequence[float | None]],
    *,
    width: int = 640,
    height: int = 260,
    label: str = "",
) -> Markup:
    """One line per series over ``periods`` (x labels); gaps where a value is None; a legend below."""
    values = [v for vs in series.values() for v in vs if v is not None]
    if not values or not periods:
        return Markup("")
    left, right, top_pad, bottom = 60, 20, 10, 40 + 16 * ((len(series) + 2) // 3)
    plot_w, plot_h = width - left - right, height - top_pad - bottom
    hi, lo = max(values), min(0.0, min(values))
    span = (hi - lo) or 1.0

    def xy(i: int, v: float) -> tuple[float, float]:
        x = left + (plot_w * i / max(1, len(periods) - 1))
        return x, top_pad + plot_h - (v - lo) / span * plot_h

    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="100%" '
        f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">',
        f'<line x1="{left}" y1="{top_pad + plot_h}" x2="{width - right}" y2="{top_pad + plot_h}" '
        f'stroke="#999"/>',
        f'<text x="{left - 4}" y="{top_pad + 8}" text-anchor="end" font-size="10">{_fmt(hi)}</text>',
        f'<text x="{left - 4}" y="{top_pad + plot_h}" text-anchor="end" font-size="10">{_fmt(lo)}</text>',
    ]
    for i, period in enumerate(periods):
        x, _ = xy(i, lo)
        parts.append(
            f'<text x="{_num(x)}" y="{top_pad + plot_h + 14}" text-anchor="middle" '
            f'font-size="10">{escape(period)}</text>'
        )
    for n, (name, vs) in enumerate(series.items()):
        colour = SERIES[n % len(SERIES)]
        points = [xy(i, v) for i, v in enumerate(vs) if v is not None]
        if len(points) > 1:
            path = " ".join(f"{_num(x)},{_num(y)}" for x, y in points)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for (x, y), v in zip(points, [v for v in vs if v is not None], strict=True):
            parts.append(
                f'<circle cx="{_num(x)}" cy="{_num(y)}" r="3" fill="{colour}">'
                f"<title>{escape(name)}: {_fmt(v)}</title></circle>"
            )
        lx = left + (n % 3) * (plot_w / 3)
        ly = top_pad + plot_h + 30 + 16 * (n // 3)
        parts.append(
            f'<rect x="{_num(lx)}" y="{ly - 9}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{_num(lx + 14)}" y="{ly}" font-size="11">{escape(name[:30])}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def risk_map(
    hospitals: Sequence[dict[str, Any]], *, width: int = 640, height: int = 420, label: str = ""
) -> Markup:
    """Hospitals at their lat/lon (an equirectangular projection of their bounding box, corrected for
    latitude), a dot each coloured by its worst open light and sized by its open suspicions."""
    placed = [h for h in hospitals if h.get("lat") is not None and h.get("lon") is not None]
    if not placed:
        return Markup("")
    import math

    lats = [float(h["lat"]) for h in placed]
    lons = [float(h["lon"]) for h in placed]
    mid = math.cos(math.radians(sum(lats) / len(lats)))
    pad = 30
    span_x = max((max(lons) - min(lons)) * mid, 0.01)
    span_y = max(max(lats) - min(lats), 0.01)
    scale = min((width - 2 * pad) / span_x, (height - 2 * pad) / span_y)
    parts = [
        f'<svg class="map" role="img" viewBox="0 0 {width} {height}" width="100%" '
        f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#f4f7fb" stroke="#ccd"/>',
    ]
    for h in sorted(placed, key=lambda h: h.get("open", 0)):
        x = pad + (float(h["lon"]) - min(lons)) * mid * scale
        y = height - pad - (float(h["lat"]) - min(lats)) * scale
        r = 5 + min(12.0, math.sqrt(h.get("open", 0)))
        colour = COLOURS.get(h.get("light"), COLOURS[None])
        name = h.get("name") or h["fixmedins_code"]
        tip = f"{name} ({h['fixmedins_code']}): {h.get('open', 0)}"
        parts.append(
            f'<circle class="hospital" data-code="{escape(h["fixmedins_code"])}" '
            f'data-light="{escape(h.get("light") or "none")}" cx="{_num(x)}" cy="{_num(y)}" '
            f'r="{_num(r)}" fill="{colour}" fill-opacity="0.8" stroke="#333">'
            f"<title>{escape(tip)}</title></circle>"
            f'<text x="{_num(x + r + 2)}" y="{_num(y + 4)}" font-size="10">{escape(str(name)[:20])}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))
