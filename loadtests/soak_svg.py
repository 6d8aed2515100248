"""The soak's picture: one panel per figure over time, the phases shaded (a plain SVG)."""

from __future__ import annotations

from html import escape
from typing import Any

PANELS = [
    ("rss_kib", "RSS (MiB)", 1 / 1024),
    ("fds", "open fds", 1.0),
    ("tasks", "asyncio tasks", 1.0),
    ("streams", "open streams", 1.0),
    ("store_streams", "store: streams kept", 1.0),
]
WIDTH, PANEL, TOP, LEFT, RIGHT = 760, 110, 40, 60, 20
SHADES = {"warm-up": "#f3f3f3", "baseline": "#e8f0fe", "traffic": "#ffffff", "after": "#e8f0fe"}


def svg(result: dict[str, Any]) -> str:
    rows = result["samples"]
    height = TOP + PANEL * len(PANELS) + 20
    end = max((r["t"] for r in rows), default=1.0) or 1.0
    plot = WIDTH - LEFT - RIGHT

    def x(t: float) -> float:
        return LEFT + plot * t / end

    title = (
        f"sse-bridge soak: {result['store']} store, {result['minutes']:g} min, "
        f"{sum(result['streams'].values())} streams; RSS slope "
        f"{result['rss_slope_mib_per_minute']} MiB/min"
    )
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        f'<text x="{LEFT}" y="18" font-size="13">{escape(title)}</text>',
    ]
    # The phases, as bands behind every panel.
    start = 0.0
    for i, row in enumerate(rows):
        last = i == len(rows) - 1 or rows[i + 1]["phase"] != row["phase"]
        if last:
            parts.append(
                f'<rect x="{x(start):.1f}" y="{TOP - 10}" width="{x(row["t"]) - x(start):.1f}" '
                f'height="{PANEL * len(PANELS)}" fill="{SHADES.get(row["phase"], "#fff")}"/>'
            )
            parts.append(
                f'<text x="{x(start) + 2:.1f}" y="{TOP - 12}" fill="#666">{row["phase"]}</text>'
            )
            start = row["t"]
    for n, (key, label, scale) in enumerate(PANELS):
        top = TOP + n * PANEL
        values = [(r["t"], r[key] * scale) for r in rows if key in r]
        parts.append(f'<text x="4" y="{top + 12}">{escape(label)}</text>')
        if not values:
            continue
        low = min(v for _, v in values)
        high = max(v for _, v in values)
        span = (high - low) or 1.0

        def y(v: float, top: int = top, low: float = low, span: float = span) -> float:
            return top + PANEL - 20 - (PANEL - 35) * (v - low) / span

        points = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in values)
        parts.append(
            f'<polyline fill="none" stroke="#1a5fb4" stroke-width="1.5" points="{points}"/>'
        )
        parts.append(f'<text x="4" y="{top + 26}" fill="#666">{high:.1f} max</text>')
        parts.append(f'<text x="4" y="{top + 40}" fill="#666">{low:.1f} min</text>')
    parts.append(f'<text x="{WIDTH - RIGHT - 60}" y="{height - 4}">{end:.0f} s</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
