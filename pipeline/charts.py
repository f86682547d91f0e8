"""Inline SVG charts for the report: bars (histograms, rates) and lines (loss curves).

Plain strings, no plotting dependency and no script: each mark carries a ``<title>``, which
browsers show as a tooltip. Sizes are in SVG user units; the stylesheet scales the charts to
their column.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import numpy as np

W, H = 440, 230
LEFT, RIGHT, TOP, BOTTOM = 54, 14, 12, 42


def fmt(v: float) -> str:
    """A tick or tooltip number, short: 0, 0.25, 12, 1.5k, 2M, 3e-05."""
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1e6:
        return f"{v / 1e6:.3g}M"
    if a >= 1e4:
        return f"{v / 1e3:.3g}k"
    if a >= 1:
        return f"{v:,.4g}"
    if a >= 1e-3:
        return f"{v:.3g}"
    return sci(v, 2)


def sci(v: float, digits: int = 3) -> str:
    """``v`` in scientific notation without padding: 1.2e7, 3e-5."""
    mantissa, _, exponent = f"{v:.{digits}g}".partition("e")
    return f"{mantissa}e{int(exponent)}" if exponent else mantissa


def fmt_log(t: float) -> str:
    """The label of ``10**t`` (losses span decades: scientific from 1e3)."""
    v = 10**t
    return sci(v) if v >= 1e3 or v < 1e-2 else fmt(v)


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round values (1, 2, 2.5, 5 times a power of ten apart) covering [lo, hi]."""
    span = hi - lo
    if not span > 0 or not math.isfinite(span):
        return [lo]
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + k * step for k in range(int((hi - first) / step + 1e-9) + 1)]


def log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks of a log10 axis over [lo, hi] (log10 units), three to seven of them where that
    can be had: whole decades, else 1-2-5 or 1-3 times powers of ten, else round values."""
    decades = range(math.floor(lo) - 1, math.ceil(hi) + 1)

    def times(mantissas: Sequence[float]) -> list[float]:
        return [
            t
            for t in (math.log10(m) + k for k in decades for m in mantissas)
            if lo - 1e-9 <= t <= hi + 1e-9
        ]

    whole = times((1,))
    if len(whole) >= 3:
        return whole[:: math.ceil(len(whole) / 7)]
    for ticks in (times((1, 2, 5)), times((1, 3))):
        if 3 <= len(ticks) <= 5:
            return ticks
    if len(whole) == 2:
        return whole
    ticks = [math.log10(v) for v in nice_ticks(10**lo, 10**hi, 4) if v > 0]
    return ticks if len(ticks) >= 2 else times(range(1, 10))


class _Frame:
    """Axes, grid and labels of one chart; maps data to pixels."""

    def __init__(self, x0: float, x1: float, y0: float, y1: float):
        self.x0, self.x1, self.y0, self.y1 = x0, x1, y0, y1
        self.pw, self.ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def x(self, v: float) -> float:
        return LEFT + (v - self.x0) / ((self.x1 - self.x0) or 1) * self.pw

    def y(self, v: float) -> float:
        return TOP + self.ph - (v - self.y0) / ((self.y1 - self.y0) or 1) * self.ph

    def axes(
        self,
        xticks: Sequence[float],
        yticks: Sequence[float],
        xlabel: str,
        ylabel: str,
        xfmt=fmt,
        yfmt=fmt,
    ) -> str:
        out = []
        for t in yticks:
            y = self.y(t)
            out.append(
                f'<line class="grid" x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" '
                f'y2="{y:.1f}"/><text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" '
                f'text-anchor="end">{_e(yfmt(t))}</text>'
            )
        base = TOP + self.ph
        for t in xticks:
            x = self.x(t)
            out.append(
                f'<line class="axis" x1="{x:.1f}" x2="{x:.1f}" y1="{base}" '
                f'y2="{base + 4}"/><text class="tick" x="{x:.1f}" y="{base + 16}" '
                f'text-anchor="middle">{_e(xfmt(t))}</text>'
            )
        out.append(f'<line class="axis" x1="{LEFT}" x2="{W - RIGHT}" y1="{base}" y2="{base}"/>')
        out.append(
            f'<text class="label" x="{LEFT + self.pw / 2:.1f}" y="{H - 6}" '
            f'text-anchor="middle">{_e(xlabel)}</text>'
        )
        out.append(
            f'<text class="label" transform="translate(13 {TOP + self.ph / 2:.1f}) '
            f'rotate(-90)" text-anchor="middle">{_e(ylabel)}</text>'
        )
        return "".join(out)


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)


def _svg(body: str, label: str) -> str:
    return (
        f'<svg class="plot" viewBox="0 0 {W} {H}" role="img" aria-label="{_e(label)}" '
        f'xmlns="http://www.w3.org/2000/svg">{body}</svg>'
    )


def bar_chart(
    edges: np.ndarray,
    heights: np.ndarray,
    xlabel: str,
    ylabel: str,
    log_x: bool = False,
    fill: str = "#0072b2",
    integer: bool = False,
) -> str:
    """Bars over the bins ``edges`` (n + 1 values) with ``heights`` (n values); ``log_x``:
    the edges are log10 values, labelled as powers of ten; ``integer``: whole x ticks."""
    heights = np.asarray(heights, dtype=float)
    top = float(heights.max()) if len(heights) and heights.max() > 0 else 1.0
    yticks = nice_ticks(0.0, top, 4)
    frame = _Frame(float(edges[0]), float(edges[-1]), 0.0, max(top, yticks[-1]) * 1.04)
    xfmt = fmt_log if log_x else fmt
    xticks = log_ticks(frame.x0, frame.x1) if log_x else nice_ticks(frame.x0, frame.x1, 5)
    xticks = [
        t
        for t in xticks
        if frame.x0 - 1e-9 <= t <= frame.x1 + 1e-9 and (not integer or abs(t - round(t)) < 1e-9)
    ]
    bars = []
    for lo, hi, n in zip(edges[:-1], edges[1:], heights):
        if n <= 0:
            continue
        x0, x1 = frame.x(float(lo)), frame.x(float(hi))
        y = frame.y(float(n))
        tip = f"{xfmt(float(lo))} to {xfmt(float(hi))}: {fmt(float(n))}"
        bars.append(
            f'<rect x="{x0 + 0.5:.1f}" y="{y:.1f}" width="{max(x1 - x0 - 1, 1):.1f}" '
            f'height="{TOP + frame.ph - y:.1f}" fill="{fill}"><title>{_e(tip)}</title>'
            f"</rect>"
        )
    if not bars:
        bars.append(
            f'<text class="empty" x="{W / 2}" y="{H / 2}" text-anchor="middle">no data</text>'
        )
    return _svg(
        frame.axes(xticks, yticks, xlabel, ylabel, xfmt) + "".join(bars), f"{ylabel} by {xlabel}"
    )


def line_chart(
    series: Sequence[tuple[Sequence[float], Sequence[float], str, str]],
    xlabel: str,
    ylabel: str,
    log_y: bool = False,
) -> str:
    """Lines ``(xs, ys, label, colour)``; ``log_y``: ys are log10 values."""
    xs = [v for s in series for v in s[0]]
    ys = [v for s in series for v in s[1]]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.05 or 0.5
    frame = _Frame(x0, x1 if x1 > x0 else x0 + 1, y0 - pad, y1 + pad)
    yticks = log_ticks(frame.y0, frame.y1) if log_y else nice_ticks(frame.y0, frame.y1, 4)
    yticks = [t for t in yticks if frame.y0 <= t <= frame.y1]
    lines = []
    for sx, sy, label, colour in series:
        points = " ".join(f"{frame.x(a):.1f},{frame.y(b):.1f}" for a, b in zip(sx, sy))
        last = fmt_log(sy[-1]) if log_y else fmt(sy[-1])
        lines.append(
            f'<polyline points="{points}" fill="none" stroke="{colour}" '
            f'stroke-width="1.8" stroke-linejoin="round"><title>{_e(label)}: '
            f"{_e(last)} at the end</title></polyline>"
        )
    return _svg(
        frame.axes(
            nice_ticks(frame.x0, frame.x1, 5),
            yticks,
            xlabel,
            ylabel,
            yfmt=fmt_log if log_y else fmt,
        )
        + "".join(lines),
        f"{ylabel} by {xlabel}",
    )
