"""Money safety: captured provider charges that have no recorded order in Postgres, and
orders charged twice.

The provider keeps its own charge log (``GET <provider_url>/charges?since=<unix ts>``);
checkout records orders in Postgres (``orders.order_ref``, a uuid). A charge older than
a grace period (longer than any in-flight checkout) whose ``order_ref`` has no order row
means money was taken without an order: the invariant is "0 such charges".

URLs: configuration ``provider_url`` / ``database_url``, else the registry's
``extra.provider_url`` / ``extra.database_url`` (the stack's is a read-only role). Every
call has a timeout (HTTP timeout, psycopg ``connect_timeout`` and ``statement_timeout``).

Charged twice: two or more captured charges (different idempotency keys, since the
provider replays a key) for one ``order_ref`` in the provider's log. That is wrong the
moment it exists, so no grace period applies; checkout's idempotency key is the order
reference, so a second charge means someone retried with a fresh key.

A check that judged nothing says so (``judged`` False): when every charge in the window is
still within the grace period, it waits (at most ``grace_s``) for the oldest to leave it
and looks again, so a charge present at the call is judged; a window with no captured
charge at all is "not judged", never "0 charges without an order".
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
from chaoslib.exceptions import ActivityFailed

from chaoscheckout.config import finite_number
from chaoscheckout.context import ActivityContext, ConfigOrContext, activity_context
from chaoscheckout.errors import ChaosCheckoutError, InvalidFaultArgument
from chaoscheckout.httpclient import http_get

__all__ = ["Charge", "MoneyCheck", "DoubleChargeCheck", "find_charges_without_order",
           "find_double_charges", "check_window_arguments", "MAX_GRACE_S", "MAX_LOOKBACK_S"]

MAX_GRACE_S = 600.0
MAX_LOOKBACK_S = 30 * 86400.0

logger = logging.getLogger("chaostoolkit")


@dataclass(frozen=True)
class Charge:
    charge_id: str
    order_ref: str
    amount_cents: int
    captured_at: float


@dataclass(frozen=True)
class MoneyCheck:
    checked: int  # captured charges older than the grace period
    in_grace: int  # younger charges, not judged yet
    orphans: list[Charge]

    @property
    def judged(self) -> bool:
        """False when no charge was judged: the count then proves nothing."""
        return self.checked > 0

    def to_dict(self, max_refs: int = 20) -> dict[str, Any]:
        return {
            "count": len(self.orphans),
            "judged": self.judged,
            "checked": self.checked,
            "in_grace": self.in_grace,
            "order_refs": [c.order_ref for c in self.orphans[:max_refs]],
            "amount_cents": sum(c.amount_cents for c in self.orphans),
        }


@dataclass(frozen=True)
class DoubleChargeCheck:
    checked: int  # captured charges in the window
    doubled: dict[str, list[Charge]]  # order_ref -> its captured charges (two or more)

    @property
    def judged(self) -> bool:
        """False when the window held no captured charge: the count then proves nothing."""
        return self.checked > 0

    def to_dict(self, max_refs: int = 20) -> dict[str, Any]:
        refs = list(self.doubled)[:max_refs]
        return {
            "count": len(self.doubled),
            "judged": self.judged,
            "checked": self.checked,
            "order_refs": refs,
            "charges": {ref: [c.charge_id for c in self.doubled[ref]] for ref in refs},
            "extra_amount_cents": sum(c.amount_cents for charges in self.doubled.values()
                                      for c in charges[1:]),
        }


def check_window_arguments(grace_s: Any, since_s: Any,
                           since: Any = None) -> tuple[float, float | None, float]:
    """Validate the money window; returns ``(grace_s, since, since_s)`` as floats.

    ``grace_s`` in [0, 600], ``since_s`` in (grace_s, 30 days], ``since`` a finite unix
    timestamp not in the future (NaN, inf, bools and negatives are refused)."""
    for name, value in (("grace_s", grace_s), ("since_s", since_s), ("since", since)):
        if isinstance(value, str) or isinstance(value, bool):
            raise InvalidFaultArgument(f"{name} must be a number, got {value!r}")
    grace = finite_number("grace_s", grace_s, 0, MAX_GRACE_S, low_inclusive=True)
    lookback = finite_number("since_s", since_s, 0, MAX_LOOKBACK_S)
    if lookback <= grace:
        raise InvalidFaultArgument(f"since_s must be > grace_s ({grace:g}), got {since_s!r}")
    start = None
    if since is not None:
        start = finite_number("since", since, 0, time.time() + 60)
    return grace, start, lookback


def find_charges_without_order(grace_s: float, since_s: float, configuration: ConfigOrContext = None,
                               since: float | None = None) -> MoneyCheck:
    """Join the provider's captured charges since ``since`` (a unix timestamp), else of the
    last ``since_s`` seconds, to ``orders``."""
    grace_s, since, since_s = check_window_arguments(grace_s, since_s, since)
    ctx = activity_context(configuration)
    settings = ctx.settings
    provider_url, database_url = _endpoints(ctx)
    now = time.time()
    start = since if since is not None else now - since_s
    charges = _fetch_charges(provider_url, start, settings.io_timeout_s)
    if _waited_out_grace(charges, grace_s, now):
        now = time.time()
        charges = _fetch_charges(provider_url, start, settings.io_timeout_s)
    judged = [c for c in charges if c.captured_at <= now - grace_s]
    recorded = _recorded_refs(database_url, judged, settings.io_timeout_s)
    orphans = [c for c in judged if c.order_ref not in recorded]
    check = MoneyCheck(checked=len(judged), in_grace=len(charges) - len(judged), orphans=orphans)
    if check.judged:
        logger.info(f"money safety: {len(orphans)} of {check.checked} captured charge(s) have no order "
                    f"({check.in_grace} within the {grace_s:g}s grace period)")
    else:
        logger.warning(f"money safety NOT judged: no captured charge older than {grace_s:g}s since "
                       f"{start:.0f} ({check.in_grace} within the grace period)")
    return check


def find_double_charges(since_s: float, configuration: ConfigOrContext = None,
                        since: float | None = None) -> DoubleChargeCheck:
    """Group the provider's captured charges since ``since`` (else of the last ``since_s``
    seconds) by ``order_ref``; an order with two or more is charged twice."""
    _, since, since_s = check_window_arguments(0, since_s, since)
    ctx = activity_context(configuration)
    settings = ctx.settings
    provider_url, _ = _endpoints(ctx)
    start = since if since is not None else time.time() - since_s
    charges = _fetch_charges(provider_url, start, settings.io_timeout_s)
    by_order: dict[str, list[Charge]] = {}
    for charge in charges:
        by_order.setdefault(charge.order_ref, []).append(charge)
    check = DoubleChargeCheck(checked=len(charges),
                              doubled={ref: cs for ref, cs in by_order.items() if len(cs) > 1})
    if check.judged:
        logger.info(f"money safety: {len(check.doubled)} order(s) charged more than once among "
                    f"{check.checked} captured charge(s)")
    else:
        logger.warning(f"double charges NOT judged: no captured charge since {start:.0f}")
    return check


# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------
def _endpoints(ctx: ActivityContext) -> tuple[str, str]:
    configuration = ctx.configuration or {}
    provider_url = configuration.get("provider_url")
    database_url = configuration.get("database_url")
    if not (provider_url and database_url):
        extra = ctx.registry.extra
        provider_url = provider_url or extra.get("provider_url")
        database_url = database_url or extra.get("database_url")
    if not provider_url or not database_url:
        raise ChaosCheckoutError("money safety needs 'provider_url' and 'database_url' "
                                 "(configuration, or the registry's extra section)")
    return str(provider_url), str(database_url)


def _fetch_charges(provider_url: str, since: float, timeout_s: float) -> list[Charge]:
    """The captured charges with ``captured_at >= since``, exactly: the query sends ``since``
    floored to the millisecond (never later than asked) and the excess is dropped here."""
    url = provider_url.rstrip("/") + "/charges"
    try:
        resp = http_get(url, timeout_s, params={"since": f"{math.floor(since * 1000) / 1000:.3f}"})
        resp.raise_for_status()
        raw = resp.json()["charges"]
    except httpx.HTTPError as exc:
        raise ActivityFailed(f"payment provider charge log {url} unreachable: {exc!r}") from None
    except (ValueError, KeyError, TypeError):
        raise ActivityFailed(f"payment provider {url} returned no 'charges' list") from None
    charges = []
    for item in raw:
        if item.get("status", "captured") != "captured":
            continue
        try:
            charge = Charge(str(item["charge_id"]), str(item["order_ref"]),
                            int(item.get("amount_cents", 0)), float(item["captured_at"]))
        except (KeyError, TypeError, ValueError):
            raise ActivityFailed(f"payment provider returned a malformed charge: {item!r}") from None
        if charge.captured_at >= since:
            charges.append(charge)
    return charges


def _waited_out_grace(charges: list[Charge], grace_s: float, now: float) -> bool:
    """When there are charges but none is old enough to judge yet, sleep until the oldest
    leaves the grace period (at most ``grace_s``) and say so: the caller reads again."""
    if not charges or any(c.captured_at <= now - grace_s for c in charges):
        return False
    wait_s = min(c.captured_at for c in charges) + grace_s - now + 0.05
    time.sleep(max(0.0, min(wait_s, grace_s)))
    return True


def _recorded_refs(database_url: str, charges: list[Charge], timeout_s: float) -> set[str]:
    """The order_refs of ``charges`` that have an order row (as given by the provider)."""
    by_uuid: dict[str, str] = {}
    for c in charges:
        try:
            by_uuid[str(uuid.UUID(c.order_ref))] = c.order_ref
        except ValueError:
            continue  # not a uuid: orders.order_ref is a uuid, so it has no order
    if not by_uuid:
        return set()
    options = f"-c statement_timeout={int(timeout_s * 1000)}"
    try:
        with psycopg.connect(database_url, connect_timeout=max(1, int(timeout_s)),
                             options=options, autocommit=True) as conn:
            rows = conn.execute("SELECT order_ref::text FROM orders WHERE order_ref = ANY(%s::uuid[])",
                                (list(by_uuid),)).fetchall()
    except psycopg.Error as exc:
        raise ActivityFailed(f"cannot read orders from Postgres ({_redact(database_url)}): "
                             f"{str(exc).strip() or type(exc).__name__}; money safety unknown") from None
    return {by_uuid[r[0]] for r in rows}


def _redact(dsn: str) -> str:
    if "@" in dsn and "://" in dsn:
        scheme, rest = dsn.split("://", 1)
        return f"{scheme}://…@{rest.split('@', 1)[1]}"
    return dsn
