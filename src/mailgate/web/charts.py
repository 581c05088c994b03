"""Charts as inline SVG, drawn on the server: they need no JavaScript and no library.

`overview_chart` draws the last hour of the sample ring: the queue length (blue, left
scale), the delivery rate (green, right scale), and a red band wherever a sample saw a
stalled thread or connector, so a backlog building behind a wedged destination is one
picture. `sparkline` is a thread's % CPU over the last minute. Only numbers and fixed
strings reach the markup (labels go through markupsafe), so nothing here can inject.
"""

from __future__ import annotations

import itertools

from markupsafe import Markup, escape

from mailgate.web.samples import Sample

WIDTH, HEIGHT = 720, 200
PAD_L, PAD_R, PAD_T, PAD_B = 48, 48, 12, 24
HOUR = 3600.0
SHORTEST = 60.0  # a young service's chart spans at least a minute


def _ago(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"


def _scale(peak: float) -> float:
    """A round upper bound of the scale (1, 2, 5 times a power of ten)."""
    bound = 1.0
    while bound < peak:
        for step in (2.0, 2.5, 2.0):
            bound *= step
            if bound >= peak:
                break
    return bound


def _points(series: list[tuple[float, float]], start: float, span: float, top: float) -> str:
    span_x, span_y = WIDTH - PAD_L - PAD_R, HEIGHT - PAD_T - PAD_B
    return " ".join(
        f"{PAD_L + (t - start) / span * span_x:.1f},{PAD_T + span_y - v / top * span_y:.1f}"
        for t, v in series
    )


def overview_chart(samples: list[Sample], rates: list[tuple[float, float]], now: float) -> Markup:
    """The last hour, or (a younger ring) the time since the first sample, at least
    SHORTEST: the chart is readable from the first minutes on."""
    oldest = samples[0].when if samples else now
    span = min(HOUR, max(SHORTEST, now - oldest))
    start = now - span
    shown = [s for s in samples if s.when >= start]
    queued = [(s.when, float(s.queued)) for s in shown]
    rate = [(t, r) for t, r in rates if t >= start]
    q_top = _scale(max((v for _, v in queued), default=0.0))
    r_top = _scale(max((v for _, v in rate), default=0.0))
    span_x, span_y = WIDTH - PAD_L - PAD_R, HEIGHT - PAD_T - PAD_B
    parts = [
        f'<svg class="chart" id="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
        f'height="{HEIGHT}" role="img" aria-label="queue length and delivery rate, last hour">',
        f'<rect x="{PAD_L}" y="{PAD_T}" width="{span_x}" height="{span_y}" class="frame"/>',
    ]
    stalls = 0
    for a, b in itertools.pairwise(shown):
        if a.stalled or b.stalled:
            x0 = PAD_L + (a.when - start) / span * span_x
            x1 = PAD_L + (b.when - start) / span * span_x
            parts.append(
                f'<rect class="stall" x="{x0:.1f}" y="{PAD_T}" width="{max(x1 - x0, 1.5):.1f}" '
                f'height="{span_y}"><title>stalled</title></rect>'
            )
            stalls += 1
    if queued:
        parts.append(f'<polyline class="queued" points="{_points(queued, start, span, q_top)}"/>')
    if rate:
        parts.append(f'<polyline class="rate" points="{_points(rate, start, span, r_top)}"/>')
    bottom = HEIGHT - PAD_B
    parts += [
        f'<text x="{PAD_L - 4}" y="{PAD_T + 10}" class="axis q" text-anchor="end">{q_top:g}</text>',
        f'<text x="{PAD_L - 4}" y="{bottom}" class="axis" text-anchor="end">0</text>',
        f'<text x="{WIDTH - PAD_R + 4}" y="{PAD_T + 10}" class="axis r">{r_top:g}/s</text>',
        f'<text x="{PAD_L}" y="{HEIGHT - 6}" class="axis">-{_ago(span)}</text>',
        f'<text x="{WIDTH - PAD_R}" y="{HEIGHT - 6}" class="axis" text-anchor="end">now</text>',
        f'<text x="{WIDTH / 2:.0f}" y="{HEIGHT - 6}" class="axis" text-anchor="middle">'
        f'<tspan class="q">queued</tspan> · <tspan class="r">delivered/s</tspan>'
        + (' · <tspan class="s">stalled</tspan>' if stalls else "")
        + "</text>",
        "</svg>",
    ]
    return Markup("".join(parts))  # noqa: S704 - numbers and fixed strings only


def sparkline(values: list[float], label: str = "") -> Markup:
    """A 100 x 20 line of % CPU values (0-100); empty before there are two samples."""
    width, height = 100, 20
    title = f"<title>{escape(label)}</title>" if label else ""
    if len(values) < 2:
        return Markup(  # noqa: S704 - fixed strings and an escaped label
            f'<svg class="spark" width="{width}" height="{height}">{title}</svg>'
        )
    step = width / (len(values) - 1)
    points = " ".join(
        f"{n * step:.1f},{height - 1 - min(v, 100.0) / 100 * (height - 2):.1f}"
        for n, v in enumerate(values)
    )
    return Markup(  # noqa: S704 - numbers, fixed strings and an escaped label
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
        f'{title}<polyline points="{points}"/></svg>'
    )
