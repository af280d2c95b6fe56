"""Money safety for guards that poll every second: each poll reads only the new charges.

:func:`chaoscheckout.sli.money.find_charges_without_order` reads the provider's whole
charge log since the run started, and looks every charge up in Postgres, at every call.
That is right for a steady-state probe (once before, once after), and wrong for a guard
polling every second at a flash sale's rate: after 75 s at 84 checkouts/s each poll asked
the provider (one Python process, the one checkout's payments depend on) for 6,000
charges, about 1.5 MB of JSON, and Postgres for 6,000 order rows. The provider's event
loop stalled for tens of milliseconds every second, payments calls waited behind it, and
checkout's 80 ms payments attempts timed out: the guard watching for harm caused it.

A :class:`ChargeWatch` keeps, per window (a fixed ``since``, the run's start), what earlier
polls already judged:

- charges without an order: the cutoff up to which every charge was judged (captured at or
  before ``poll time - grace_s``); a poll reads charges captured after that cutoff (a small
  overlap absorbs the ``since`` parameter's rounding), judges the ones now out of the
  grace period, and looks up in Postgres only those and the orphans found so far (an order
  row written late clears its charge, as in the full check). Same counts as the full check
  at the same moment: ``checked`` is every judged charge of the window, ``orphans`` the
  judged charges with no order now.
- double charges: every charge id seen and the charges per order reference; a poll reads
  charges captured since the newest one seen (same overlap) and adds the new ones.

Every money check given a fixed ``since`` uses the watch of its window (:func:`watch_for`):
the guards polling every second and the steady-state probes (whose full read of 5,000
charges before a peak run's method took 0.3 s and stalled the provider just as the fault
went in). With a sliding window (``since_s`` only) there is nothing to keep, and they read it
all. The safety control forgets the watches before each experiment (``guards.reset``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from chaoscheckout.context import ActivityContext
from chaoscheckout.sli.money import (
    Charge,
    DoubleChargeCheck,
    MoneyCheck,
    _endpoints,
    _fetch_charges,
    _recorded_refs,
    _waited_out_grace,
)

__all__ = ["ChargeWatch", "watch_charges_without_order", "watch_double_charges", "watch_for",
           "forget_watches"]

OVERLAP_S = 0.05  # re-read this much before the last cutoff: ``since`` is sent rounded to 1 ms


@dataclass
class ChargeWatch:
    """What earlier polls of one window judged (see the module docstring)."""

    start: float
    grace_s: float = 0.0
    cutoff: float | None = None  # money: every charge captured at or before it is judged
    checked: int = 0
    orphans: dict[str, Charge] = field(default_factory=dict)
    newest: float | None = None  # double charges: the newest charge seen
    seen: set[str] = field(default_factory=set)
    by_order: dict[str, list[Charge]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def watch_charges_without_order(watch: ChargeWatch, ctx: ActivityContext) -> MoneyCheck:
    """The money check of ``watch``'s window as of now, reading only what is new."""
    with watch.lock:
        provider_url, database_url = _endpoints(ctx)
        timeout_s = ctx.settings.io_timeout_s
        after = watch.start - OVERLAP_S if watch.cutoff is None else watch.cutoff

        def fresh_charges() -> list[Charge]:
            return [c for c in _fetch_charges(provider_url, after - OVERLAP_S, timeout_s)
                    if c.captured_at > after and c.captured_at >= watch.start]

        now = time.time()
        fresh = fresh_charges()
        if not watch.checked and _waited_out_grace(fresh, watch.grace_s, now):  # as the full check
            now = time.time()
            fresh = fresh_charges()
        cutoff = now - watch.grace_s
        judged = [c for c in fresh if c.captured_at <= cutoff]
        earlier = list(watch.orphans.values())
        recorded = _recorded_refs(database_url, judged + earlier, timeout_s) if judged or earlier else set()
        watch.orphans = {c.charge_id: c for c in earlier + judged if c.order_ref not in recorded}
        watch.checked += len(judged)
        watch.cutoff = max(cutoff, after)
        return MoneyCheck(checked=watch.checked, in_grace=len(fresh) - len(judged),
                          orphans=list(watch.orphans.values()))


def watch_double_charges(watch: ChargeWatch, ctx: ActivityContext) -> DoubleChargeCheck:
    """The double-charge check of ``watch``'s window as of now, reading only what is new."""
    with watch.lock:
        provider_url, _ = _endpoints(ctx)
        since = watch.start if watch.newest is None else watch.newest - OVERLAP_S
        for charge in _fetch_charges(provider_url, since, ctx.settings.io_timeout_s):
            if charge.charge_id in watch.seen or charge.captured_at < watch.start:
                continue
            watch.seen.add(charge.charge_id)
            watch.by_order.setdefault(charge.order_ref, []).append(charge)
            watch.newest = max(watch.newest or charge.captured_at, charge.captured_at)
        return DoubleChargeCheck(checked=len(watch.seen),
                                 doubled={ref: cs for ref, cs in watch.by_order.items() if len(cs) > 1})


def watch_for(kind: str, since: float, grace_s: float = 0.0) -> ChargeWatch:
    """This process's watch of ``kind`` ("money" or "double") over the window from ``since``."""
    key = (kind, float(since), float(grace_s))
    with _WATCHES_LOCK:
        return _WATCHES.setdefault(key, ChargeWatch(start=float(since), grace_s=float(grace_s)))


def forget_watches() -> None:
    """Drop every watch (a new run judges its own window from scratch)."""
    with _WATCHES_LOCK:
        _WATCHES.clear()


_WATCHES_LOCK = threading.Lock()
_WATCHES: dict[tuple[str, float, float], ChargeWatch] = {}
