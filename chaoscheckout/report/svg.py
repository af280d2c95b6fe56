"""A small SVG line chart of a run's SLI timeline (no plotting library).

Panels share the time axis: availability, p95 latency and, for runs whose money guard
sampled, charges without an order. Each panel shows its SLO (dashed orange), the guard's
abort threshold beside it (dashed red; the latency guard judges p99, said so), the fault
window (shaded red), the before/after steady-state checks' measurement windows (shaded
grey), samples that still measure the previous run (hatched, never marked as breaches) and
every sample of this run outside its SLO (red marks, at any series length).

Long series are downsampled to one column per pixel keeping each column's first, last,
lowest and highest sample, so extremes and breaches survive and an 800k-sample series
renders as a few thousand points.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape
from itertools import compress, islice
from operator import sub

from chaoscheckout.report import keys
from chaoscheckout.report.analysis import fault_window, threshold_number
from chaoscheckout.report.model import GuardSample, Run, Series, compact, parse_time

__all__ = ["sli_chart", "downsample"]

WIDTH = 880
PANEL_H = 150
TOP = 80
GAP = 54
LEFT = 64
RIGHT = 24
BOTTOM = 46
COLOURS = {"line": "#1f5fa8", "slo": "#d9822b", "fault": "#e5484d", "abort": "#b3001b", "grid": "#e4e7eb",
           "check": "#6b7280", "tail": "#9aa0a6"}


def sli_chart(run: Run) -> str:
    """An inline <svg> (class "sli-chart") of the run's SLI panels (see the module docstring)."""
    panels = [s for s in (run.availability, run.latency) if s is not None and s.times]
    money = _money_series(run)
    if money is not None:
        panels.append(money)
    label = f"SLI timeline of {run.title} ({run.run_id})"
    if not panels:
        height = 70
        why = (f"SLI timeline missing: {run.timeline_error}" if run.timeline_error else
               "No SLI timeline in this journal (no load/SLI record stored at the end of the run)")
        why = why if len(why) <= 120 else why[:119] + "…"
        return (
            f'<svg class="sli-chart" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{escape(label)}">'
            f'<rect x="0.5" y="0.5" width="{WIDTH - 1}" height="{height - 1}" fill="#fafafa" stroke="#ccc"/>'
            f'<text x="{WIDTH / 2}" y="40" text-anchor="middle" font-size="14" fill="#555">'
            f"{escape(why)}</text></svg>"
        )
    t0, t1 = _time_range(run, panels)
    height = TOP + len(panels) * PANEL_H + (len(panels) - 1) * GAP + BOTTOM
    out = [
        f'<svg class="sli-chart" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{escape(label)}" '
        'font-family="Helvetica, Arial, sans-serif">',
        f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        _legend(run),
        _fault_caption(run),
    ]
    for index, series in enumerate(panels):
        top = TOP + index * (PANEL_H + GAP)
        out.append(_panel(run, series, top, t0, t1))
    stamp = datetime.fromtimestamp(t0, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    out.append(
        f'<text x="{LEFT + (WIDTH - LEFT - RIGHT) / 2}" y="{height - 8}" text-anchor="middle" font-size="12" '
        f'fill="#333">seconds since run start (t = 0 at {stamp})</text>'
    )
    out.append("</svg>")
    return "".join(out)


def downsample(times: Sequence[float], values: Sequence[float], t0: float, t1: float,
               columns: int) -> list[tuple[float, float]]:
    """The samples (sorted ``times`` and their ``values``) as (t, v) pairs, at most 4 per column
    of ``columns`` over [t0, t1]: each column's first, lowest, highest and last sample in time
    order (short series are returned whole)."""
    if len(times) <= 4 * columns or t1 <= t0:
        return list(zip(times, values, strict=True))
    out: list[tuple[float, float]] = []
    width = (t1 - t0) / columns
    lo = bisect_left(times, t0)
    for column in range(columns + 1):
        hi = bisect_left(times, t0 + (column + 1) * width, lo) if column < columns else len(times)
        if hi - lo <= 4:
            out.extend(zip(times[lo:hi], values[lo:hi], strict=True))
        elif hi > lo:
            chunk = values[lo:hi]
            low = lo + chunk.index(min(chunk))
            high = lo + chunk.index(max(chunk))
            out.extend((times[i], values[i]) for i in sorted({lo, low, high, hi - 1}))
        lo = hi
    return out


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------


def _money_series(run: Run) -> Series | None:
    samples: list[GuardSample] = [s for s in run.guard_samples if s.guard == keys.MONEY_GUARD
                                  and s.value is not None]
    if not samples:
        return None
    return Series(name="money_guard", label="charges without an order (money guard)", unit="charges",
                  times=[s.at for s in samples], values=[float(s.value or 0.0) for s in samples],
                  objective=0.0, direction="max")


def _time_range(run: Run, panels: list[Series]) -> tuple[float, float]:
    t0 = min([s.times[0] for s in panels] + ([run.start] if run.start else []))
    ends = [s.times[-1] for s in panels] + [x for x in (run.end, run.aborted_at) if x]
    window = fault_window(run)
    if window:
        ends.append(window[1])
    t1 = max(ends)
    return t0, t1 if t1 > t0 else t0 + 1.0


def _scale(value: float, lo: float, hi: float, out_lo: float, out_hi: float) -> float:
    return out_lo + (value - lo) / (hi - lo) * (out_hi - out_lo)


def _nice_ticks(hi: float, count: int = 5) -> list[float]:
    if hi <= 0:
        return [0.0, 1.0]
    raw = hi / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return [i * step for i in range(int(math.ceil(hi / step)) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v - round(v)) < 1e-9 or abs(v) >= 100 else f"{v:g}"


def _abort_line(run: Run, series: Series) -> tuple[float, str] | None:
    """(value in the panel's unit, label) of the guard's abort threshold for this panel."""
    if series.unit == "%":
        guard, factor, prefix = keys.AVAILABILITY_GUARD, 100.0, "abort <"
    elif series.unit == "ms":
        guard, factor, prefix = keys.LATENCY_GUARD, 1.0, "abort (p99) >"
    else:
        return None
    bound = threshold_number(run.guard_thresholds.get(guard, ""))
    if bound is None:
        return None
    return bound * factor, f"{prefix} {_fmt(bound * factor)} {series.unit}"


def _check_windows(run: Run) -> list[tuple[str, float, float]]:
    """(label, start, end) of the before/after steady-state checks' measurement windows."""
    found = []
    for phase, state in (("before", run.before), ("after", run.after)):
        spans = [(p.end - p.window_s, p.end) for p in (state.probes if state else [])
                 if p.end is not None and p.window_s]
        if spans:
            found.append((f"{phase} check", min(a for a, _ in spans), max(b for _, b in spans)))
    return found


def _panel(run: Run, series: Series, top: float, t0: float, t1: float) -> str:
    x0, x1 = LEFT, WIDTH - RIGHT
    y0, y1 = top + PANEL_H, top  # bottom, top
    factor = 100.0 if series.unit == "%" else 1.0
    points = downsample(series.times, series.values, t0, t1, int(x1 - x0))
    values = [v * factor for _, v in points]
    objective = series.objective * factor
    abort = _abort_line(run, series)
    if series.unit == "%":
        ticks = [0.0, 25.0, 50.0, 75.0, 100.0]
    else:
        top_value = max(values + [objective, 1.0])
        if abort is not None and abort[0] <= top_value * 3:
            top_value = max(top_value, abort[0])
        ticks = _nice_ticks(top_value * 1.1)
    lo, hi = 0.0, ticks[-1]

    def sx(t: float) -> float:
        return _scale(t, t0, t1, x0, x1)

    def sy(v: float) -> float:
        return _scale(min(max(v, lo), hi), lo, hi, y0, y1)

    parts = [f'<g class="panel" data-series="{escape(series.name)}">']
    parts.append(f'<text x="{x0}" y="{top - 8}" font-size="13" font-weight="bold" fill="#222">'
                 f"{escape(f'{series.label} ({series.name})')}</text>")
    for label, start, end in _check_windows(run):
        cx0, cx1 = sx(max(start, t0)), sx(min(end, t1))
        parts.append(f'<rect class="check-window" x="{cx0:.1f}" y="{y1}" width="{max(cx1 - cx0, 1.0):.1f}" '
                     f'height="{PANEL_H}" fill="{COLOURS["check"]}" fill-opacity="0.10"/>')
        parts.append(f'<text x="{cx0 + 3:.1f}" y="{y0 - 18}" font-size="10" fill="{COLOURS["check"]}">'
                     f"{escape(label)}</text>")
    if series.fresh_from is not None and series.fresh_from > t0:
        tx = sx(min(series.fresh_from, t1))
        parts.append(f'<rect class="previous-run-tail" x="{x0}" y="{y1}" width="{max(tx - x0, 0):.1f}" '
                     f'height="{PANEL_H}" fill="{COLOURS["tail"]}" fill-opacity="0.18"/>')
        parts.append(f'<text x="{x0 + 3}" y="{y0 - 6}" font-size="10" fill="#555">'
                     "previous run's tail</text>")
    window = fault_window(run)
    if window:
        wx0, wx1 = sx(max(window[0], t0)), sx(min(window[1], t1))
        parts.append(f'<rect class="fault-window" x="{wx0:.1f}" y="{y1}" width="{max(wx1 - wx0, 1.5):.1f}" '
                     f'height="{PANEL_H}" fill="{COLOURS["fault"]}" fill-opacity="0.13"/>')
    for tick in ticks:
        y = sy(tick)
        parts.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="{COLOURS["grid"]}"/>')
        parts.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" fill="#444">'
                     f"{_fmt(tick)}</text>")
    parts.append(f'<text x="14" y="{(y0 + y1) / 2:.1f}" font-size="11" fill="#444" text-anchor="middle" '
                 f'transform="rotate(-90 14 {(y0 + y1) / 2:.1f})">{escape(series.unit)}</text>')
    for tick in _nice_ticks(t1 - t0, 8):
        if tick > t1 - t0 + 1e-9:
            continue
        x = sx(t0 + tick)
        parts.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y0 + 4}" stroke="#444"/>')
        parts.append(f'<text x="{x:.1f}" y="{y0 + 16}" font-size="11" text-anchor="middle" fill="#444">'
                     f"{_fmt(tick)}</text>")
    parts.append(f'<rect x="{x0}" y="{y1}" width="{x1 - x0}" height="{PANEL_H}" fill="none" stroke="#888"/>')
    slo_y = sy(objective)
    sign = "≥" if series.direction == "min" else "≤"
    parts.append(f'<line class="slo" x1="{x0}" y1="{slo_y:.1f}" x2="{x1}" y2="{slo_y:.1f}" '
                 f'stroke="{COLOURS["slo"]}" stroke-width="1.5" stroke-dasharray="6 4"/>')
    label_y = slo_y + 13 if slo_y - y1 < 16 else slo_y - 5  # below the line when it hugs the top
    parts.append(f'<text x="{x0 + 4}" y="{label_y:.1f}" font-size="11" font-weight="bold" '
                 f'fill="{COLOURS["slo"]}">SLO {sign} {_fmt(objective)} {escape(series.unit)}</text>')
    if abort is not None and lo <= abort[0] <= hi:
        ay = sy(abort[0])
        parts.append(f'<line class="abort-threshold" x1="{x0}" y1="{ay:.1f}" x2="{x1}" y2="{ay:.1f}" '
                     f'stroke="{COLOURS["abort"]}" stroke-width="1.2" stroke-dasharray="2 3"/>')
        parts.append(f'<text x="{x1 - 4}" y="{ay - 4:.1f}" font-size="11" text-anchor="end" '
                     f'fill="{COLOURS["abort"]}">{escape(abort[1])}</text>')
    elif abort is not None:
        parts.append(f'<text x="{x1 - 4}" y="{y1 + 12}" font-size="11" text-anchor="end" '
                     f'fill="{COLOURS["abort"]}">{escape(abort[1])} (off scale)</text>')
    for segment in _segments(points, _gaps(series.times)):
        coords = " ".join(f"{sx(t):.1f},{sy(v * factor):.1f}" for t, v in segment)
        parts.append(f'<polyline class="sli" points="{coords}" fill="none" stroke="{COLOURS["line"]}" '
                     'stroke-width="1.6" stroke-linejoin="round"/>')
    parts.extend(_breach_marks(series, points, sx, sy, factor))
    breach = run.abort.get("first_breach") if isinstance(run.abort.get("first_breach"), dict) else {}
    breach_at = parse_time(breach.get("at")) if breach else None
    if breach_at is not None and t0 <= breach_at <= t1:
        bx = sx(breach_at)
        parts.append(f'<line class="breach" x1="{bx:.1f}" y1="{y1}" x2="{bx:.1f}" y2="{y0}" '
                     f'stroke="{COLOURS["slo"]}" stroke-width="1.5" stroke-dasharray="2 2"/>')
        parts.append(f'<text x="{bx - 4:.1f}" y="{y1 + 28}" font-size="11" text-anchor="end" '
                     f'fill="{COLOURS["slo"]}">guard breach</text>')
    if run.aborted_at is not None:
        ax = sx(min(run.aborted_at, t1))
        parts.append(f'<line class="abort" x1="{ax:.1f}" y1="{y1}" x2="{ax:.1f}" y2="{y0}" '
                     f'stroke="{COLOURS["abort"]}" stroke-width="2" stroke-dasharray="3 3"/>')
        left = ax > x1 - 40  # near the right edge: label on the left of the line
        lx, anchor = (ax - 4, "end") if left else (ax + 4, "start")
        parts.append(f'<text x="{lx:.1f}" y="{y0 - 6}" font-size="11" font-weight="bold" '
                     f'text-anchor="{anchor}" fill="{COLOURS["abort"]}">abort</text>')
    parts.append("</g>")
    return "".join(parts)


def _breach_marks(series: Series, points: list[tuple[float, float]], sx, sy, factor: float) -> list[str]:
    """A red mark for every sample of this run outside its SLO (one per pixel column: the worst);
    the previous run's tail is drawn grey, never as a breach."""
    marks: dict[int, tuple[float, float]] = {}
    tail: dict[int, tuple[float, float]] = {}
    worse = (lambda a, b: a < b) if series.direction == "min" else (lambda a, b: a > b)
    for t, v in points:
        if series.good(v):
            continue
        column = int(sx(t))
        bucket = marks if series.own(t) else tail
        if column not in bucket or worse(v, bucket[column][1]):
            bucket[column] = (t, v)
    out = [f'<circle class="outside-slo" cx="{sx(t):.1f}" cy="{sy(v * factor):.1f}" r="2.4" '
           f'fill="{COLOURS["fault"]}"/>' for t, v in marks.values()]
    out += [f'<circle class="previous-run" cx="{sx(t):.1f}" cy="{sy(v * factor):.1f}" r="2.2" '
            f'fill="{COLOURS["tail"]}"/>' for t, v in tail.values()]
    return out


def _gaps(times: Sequence[float]) -> list[float]:
    """Start times of the gaps in the raw series (no sample for over 2.5 times its usual step);
    C-level passes (map, max, compress) over the steps, however long the series."""
    if len(times) < 3:
        return []
    stride = max(1, (len(times) - 1) // 10_000)  # the usual step: a median of <= 10k steps
    sample = sorted(times[i + 1] - times[i] for i in range(0, len(times) - 1, stride))
    limit = 2.5 * sample[len(sample) // 2]
    if not limit > 0:
        return []
    if max(map(sub, islice(times, 1, None), times)) <= limit:  # the common case: no gap at all
        return []
    return list(compress(times, map(limit.__lt__, map(sub, islice(times, 1, None), times))))


def _segments(points: list[tuple[float, float]], gaps: list[float]) -> list[list[tuple[float, float]]]:
    """Split a (downsampled) series where the raw series has a gap between two kept samples."""
    if not points:
        return []
    segments = [[points[0]]]
    index = 0
    for previous, point in zip(points, points[1:], strict=False):
        while index < len(gaps) and gaps[index] < previous[0]:
            index += 1
        if index < len(gaps) and gaps[index] < point[0]:
            segments.append([])
        segments[-1].append(point)
    return segments


def _fault_caption(run: Run) -> str:
    """The faults with their parameters in full (scope included), under the legend."""
    if not run.faults:
        return ""
    text = "; ".join(f"fault: {f.kind} {f.target} {compact(_shown(f.parameters), None)}" for f in run.faults)
    lines = [text[i:i + 150] for i in range(0, len(text), 150)][:2]
    return "".join(f'<text class="fault-parameters" x="{LEFT}" y="{38 + 13 * n}" font-size="10" '
                   f'fill="{COLOURS["abort"]}">{escape(line)}</text>' for n, line in enumerate(lines))


# a remote fault's parameters also carry its host's copy and keeper details: left out of the
# chart's two lines (the journal and the report's fault table have them)
REMOTE_DETAIL_KEYS = ("remote_parameters", "remote_lease", "remote_fault_id", "keeper_pid")


def _shown(parameters: dict) -> dict:
    return {k: v for k, v in parameters.items() if k not in REMOTE_DETAIL_KEYS}


def _legend(run: Run) -> str:
    x = LEFT
    items = [("line", "SLI sample (red dot: outside SLO)"), ("slo", "SLO"), ("abort", "abort threshold")]
    if run.faults:
        items.append(("fault", "fault window"))
    items.append(("check", "before/after check window"))
    parts = []
    for key, text in items:
        if key in ("fault", "check"):
            parts.append(f'<rect x="{x}" y="10" width="18" height="12" fill="{COLOURS[key]}" '
                         'fill-opacity="0.2"/>')
        else:
            dash = {"slo": ' stroke-dasharray="6 4"', "abort": ' stroke-dasharray="2 3"'}.get(key, "")
            parts.append(f'<line x1="{x}" y1="16" x2="{x + 18}" y2="16" stroke="{COLOURS[key]}" '
                         f'stroke-width="2"{dash}/>')
        parts.append(f'<text x="{x + 24}" y="20" font-size="11" fill="#333">{escape(text)}</text>')
        x += 34 + 6.0 * len(text)
    return "".join(parts)
