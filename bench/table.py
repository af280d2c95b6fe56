"""The rows every benchmark module contributes, the context they run in, and the table.

A benchmark module (``bench/<name>.py``) plugs into ``bench/run.py`` by exposing::

    NEEDS_STACK = True            # False: it starts what it needs itself (default True)

    def rows(ctx: BenchContext) -> list[Row]:
        ...                       # measure, then return one Row per figure

``ctx.smoke`` asks for tiny sizes (the smoke run in ``make test``: seconds, not minutes);
``ctx.registry`` is the stack's registry when ``NEEDS_STACK`` (the stack is up, its
``CHAOSCHECKOUT_STATE_DIR`` / ``CHAOSCHECKOUT_PORT_BASE`` are in ``os.environ``);
``ctx.port(offset)`` gives a free port for processes the module starts itself (offsets
51..59 are reserved below, outside the stack's +0..+50). Every loop is bounded; everything
the module starts it stops. A figure with no published anchor has ``reference=None`` and
says what it is compared with in ``reference_label`` (or nothing).
"""

from __future__ import annotations

import errno
import os
import platform
import socket
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from chaoscheckout.runtime.registry import Registry

__all__ = ["Row", "BenchContext", "PORT_OFFSETS", "render_console", "render_markdown", "median",
           "wait_ports_free"]

# Ports (port base + offset) that benchmark modules may start their own processes on.
PORT_OFFSETS = {
    "checkout_direct": 51,  # capacity: a checkout that calls catalog/payments directly
    "payments_direct": 52,  # capacity: a payments that calls the provider directly
    "proxy_upstream": 57,   # proxy: the minimal upstream
    "proxy_route": 58,      # proxy: the proxy's route
    "proxy_control": 59,    # proxy: the proxy's control API
}


@dataclass(frozen=True)
class Row:
    """One figure: our value beside its reference (a published anchor or a same-run path).

    ``ratio`` is value / reference when both are numbers. ``target`` is the goal the
    figure is held to (text, e.g. ``"<= 0.3 ms"``) and ``met`` whether it held (None:
    no target). ``error`` replaces the value when the measurement failed.
    """

    section: str
    figure: str
    value: float | None
    unit: str = ""
    reference: float | None = None
    reference_label: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""
    error: str = ""

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.reference:
            return None
        return self.value / self.reference


@dataclass
class BenchContext:
    port_base: int
    state_dir: Path
    smoke: bool
    registry: Registry | None = None
    log: Callable[[str], None] = print
    extra: dict = field(default_factory=dict)

    def port(self, name: str) -> int:
        return self.port_base + PORT_OFFSETS[name]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def wait_ports_free(ports: Sequence[int], timeout_s: float = 75.0,
                    log: Callable[[str], None] = print) -> None:
    """Wait (bounded) until every port can be bound on 127.0.0.1.

    Every port here is inside Linux's ephemeral range (32768-60999): a client connection
    of an earlier benchmark may have used one as its local port, and while that socket is
    in TIME_WAIT (60 s) a server cannot bind it. Waiting it out beats a failed run.
    """
    deadline = time.monotonic() + timeout_s
    busy = _busy(ports)
    if busy:
        log(f"waiting up to {timeout_s:.0f} s for port(s) {', '.join(map(str, busy))} (TIME_WAIT?)")
    while busy and time.monotonic() < deadline:
        time.sleep(1)
        busy = _busy(ports)
    if busy:
        raise RuntimeError(f"port(s) {', '.join(map(str, busy))} still in use after {timeout_s:.0f} s")


def machine_line() -> str:
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return f"{os.cpu_count()} cores, load average {load} (1/5/15 min), {platform.platform(terse=True)}"


def render_console(rows: Sequence[Row]) -> str:
    cells = [("figure", "ours", "reference", "ratio", "target")]
    cells += [(f"{r.section}: {r.figure}", _value(r), _reference(r), _ratio(r), _target(r)) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(5)]
    lines = ["  ".join(c[i].ljust(widths[i]) if i == 0 else c[i].rjust(widths[i]) for i in range(5))
             for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  [{r.section}: {r.figure}] {r.note}" for r in rows if r.note]
    return "\n".join(lines + ([""] + notes if notes else []))


def render_markdown(rows: Sequence[Row], title: str, header_lines: Sequence[str]) -> str:
    out = [f"# {title}", "", *header_lines, "",
           "| section | figure | ours | reference | ratio | target |",
           "| --- | --- | ---: | --- | ---: | --- |"]
    for r in rows:
        cells = (r.section, r.figure, _value(r), _reference(r), _ratio(r), _target(r))
        out.append("| " + " | ".join(cells) + " |")
    notes = [r for r in rows if r.note]
    if notes:
        out += ["", "Notes:", ""]
        out += [f"- **{r.section}: {r.figure}**: {r.note}" for r in notes]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------


def _busy(ports: Sequence[int]) -> list[int]:
    busy = []
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                busy.append(port)
    return busy


def _num(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _value(r: Row) -> str:
    if r.error:
        return f"error: {r.error}"
    if r.value is None:
        return "n/a"
    return f"{_num(r.value)} {r.unit}".strip()


def _reference(r: Row) -> str:
    if r.reference is None:
        return r.reference_label or "—"
    text = f"{_num(r.reference)} {r.unit}".strip()
    return f"{text} ({r.reference_label})" if r.reference_label else text


def _ratio(r: Row) -> str:
    ratio = r.ratio
    return "—" if ratio is None else f"×{ratio:.2f}"


def _target(r: Row) -> str:
    if not r.target:
        return ""
    if r.met is None:
        return r.target
    return f"{r.target} {'met' if r.met else 'MISSED'}"
